"""A hand-written AMQP 0-9-1 client on a plain socket, for what a real
client library will not send: wrong protocol headers, oversized or
malformed frames, methods on unopened channels, `immediate=true`, silence
after the handshake.

Frames are built with `struct` from the spec's layout (AMQP 0-9-1 section
4.2.3, "General Frame Format"): type(1) channel(2) size(4) payload 0xCE.
Only the methods the tests need are encoded or decoded.
"""

import struct
import time
from collections import namedtuple

from net_support import tcp_connect

PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"
FRAME_METHOD, FRAME_HEADER, FRAME_BODY, FRAME_HEARTBEAT = 1, 2, 3, 8
FRAME_END = 0xCE

# (class id, method id) pairs, AMQP 0-9-1 "Class and method ids".
CONNECTION_START = (10, 10)
CONNECTION_START_OK = (10, 11)
CONNECTION_TUNE = (10, 30)
CONNECTION_TUNE_OK = (10, 31)
CONNECTION_OPEN = (10, 40)
CONNECTION_OPEN_OK = (10, 41)
CONNECTION_CLOSE = (10, 50)
CONNECTION_CLOSE_OK = (10, 51)
CHANNEL_OPEN = (20, 10)
CHANNEL_OPEN_OK = (20, 11)
QUEUE_DECLARE = (50, 10)
QUEUE_DECLARE_OK = (50, 11)
BASIC_CONSUME = (60, 20)
BASIC_CONSUME_OK = (60, 21)
BASIC_PUBLISH = (60, 40)
BASIC_DELIVER = (60, 60)

Frame = namedtuple("Frame", "type channel payload")
Close = namedtuple("Close", "reply_code reply_text class_id method_id")


class Eof(Exception):
    """The broker closed the socket."""


def shortstr(s):
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("B", len(b)) + b


def longstr(s):
    b = s.encode() if isinstance(s, str) else s
    return struct.pack(">I", len(b)) + b


def empty_table():
    return struct.pack(">I", 0)


def frame(kind, channel, payload, end=FRAME_END):
    return struct.pack(">BHI", kind, channel, len(payload)) + payload + bytes([end])


def method_frame(channel, method, args=b""):
    return frame(FRAME_METHOD, channel, struct.pack(">HH", *method) + args)


def publish_frame(channel, exchange, routing_key, mandatory=False, immediate=False):
    bits = (1 if mandatory else 0) | (2 if immediate else 0)
    args = struct.pack(">H", 0) + shortstr(exchange) + shortstr(routing_key) + bytes([bits])
    return method_frame(channel, BASIC_PUBLISH, args)


def consume_frame(channel, queue, consumer_tag="", no_ack=False):
    bits = 2 if no_ack else 0
    args = struct.pack(">H", 0) + shortstr(queue) + shortstr(consumer_tag) + bytes([bits])
    return method_frame(channel, BASIC_CONSUME, args + empty_table())


def start_ok_frame(user="guest", password="guest", client_properties=None):
    """connection.start-ok with SASL PLAIN; `client_properties`: the
    encoded field table (default empty)."""
    response = b"\x00" + user.encode() + b"\x00" + password.encode()
    table = empty_table() if client_properties is None else client_properties
    args = table + shortstr("PLAIN") + longstr(response) + shortstr("en_US")
    return method_frame(0, CONNECTION_START_OK, args)


def parse_shortstr(args, offset=0):
    """(string, next offset)."""
    n = args[offset]
    return args[offset + 1 : offset + 1 + n].decode(), offset + 1 + n


def content_header_frame(channel, body_size):
    """A basic-class content header with no properties."""
    return frame(FRAME_HEADER, channel, struct.pack(">HHQH", 60, 0, body_size, 0))


def body_frame(channel, body):
    return frame(FRAME_BODY, channel, body)


def parse_close(args):
    (code,) = struct.unpack_from(">H", args, 0)
    n = args[2]
    text = args[3 : 3 + n].decode()
    class_id, method_id = struct.unpack_from(">HH", args, 3 + n)
    return Close(code, text, class_id, method_id)


class RawClient:
    """One socket to the broker; every read is bounded by `timeout`."""

    def __init__(self, port, timeout=5.0, rcvbuf=None):
        """`rcvbuf`: SO_RCVBUF set before connecting (see
        net_support.tcp_connect)."""
        self.timeout = timeout
        self.sock = tcp_connect(port, timeout, rcvbuf)
        self.buf = b""

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send(self, data):
        self.sock.sendall(data)

    def _fill(self, n, deadline):
        while len(self.buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"waited for {n} bytes, have {len(self.buf)}")
            self.sock.settimeout(left)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise Eof(f"EOF with {len(self.buf)} bytes buffered")
            self.buf += chunk

    def read_exact(self, n, timeout=None):
        self._fill(n, time.monotonic() + (timeout or self.timeout))
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_frame(self, timeout=None):
        deadline = time.monotonic() + (timeout or self.timeout)
        self._fill(7, deadline)
        kind, channel, size = struct.unpack_from(">BHI", self.buf, 0)
        self._fill(7 + size + 1, deadline)
        payload = self.buf[7 : 7 + size]
        end = self.buf[7 + size]
        self.buf = self.buf[7 + size + 1 :]
        assert end == FRAME_END, f"frame-end octet {end:#x}"
        return Frame(kind, channel, payload)

    def read_method(self, timeout=None):
        """The next method frame, skipping heartbeats: (channel, (class,
        method), args)."""
        while True:
            f = self.read_frame(timeout)
            if f.type == FRAME_HEARTBEAT:
                continue
            assert f.type == FRAME_METHOD, f"expected a method frame, got {f}"
            class_id, method_id = struct.unpack_from(">HH", f.payload, 0)
            return f.channel, (class_id, method_id), f.payload[4:]

    def expect(self, channel, method, timeout=None):
        got_channel, got, args = self.read_method(timeout)
        assert (got_channel, got) == (channel, method), (
            f"expected {method} on channel {channel}, got {got} on {got_channel}: {args!r}"
        )
        return args

    def start(self, user="guest", password="guest"):
        """Protocol header, then start-ok with SASL PLAIN for start."""
        self.send(PROTOCOL_HEADER)
        self.expect(0, CONNECTION_START)
        self.send(start_ok_frame(user, password))

    def tune(self, heartbeat=0, frame_max=131072):
        """Reads tune, answers tune-ok; returns the server's (channel_max,
        frame_max, heartbeat)."""
        offered = struct.unpack(">HIH", self.expect(0, CONNECTION_TUNE))
        self.send(method_frame(0, CONNECTION_TUNE_OK, struct.pack(">HIH", 0, frame_max, heartbeat)))
        return offered

    def open(self, vhost="/"):
        """Sends connection.open (the caller reads the answer)."""
        self.send(method_frame(0, CONNECTION_OPEN, shortstr(vhost) + shortstr("") + b"\x00"))

    def handshake(self, user="guest", password="guest", vhost="/", heartbeat=0, frame_max=131072):
        """start-ok (PLAIN), tune-ok, open, open-ok; returns the server's
        tune (channel_max, frame_max, heartbeat)."""
        self.start(user, password)
        offered = self.tune(heartbeat, frame_max)
        self.open(vhost)
        self.expect(0, CONNECTION_OPEN_OK)
        return offered

    def open_channel(self, channel):
        self.send(method_frame(channel, CHANNEL_OPEN, shortstr("")))
        self.expect(channel, CHANNEL_OPEN_OK)

    def expect_connection_close(self, timeout=None):
        """Reads up to the broker's connection.close and returns it."""
        args = self.expect(0, CONNECTION_CLOSE, timeout)
        return parse_close(args)

    def send_close_ok(self):
        self.send(method_frame(0, CONNECTION_CLOSE_OK))

    def read_until_eof(self, timeout=None):
        """Every frame until the broker closes the socket; raises
        TimeoutError if it stays open past `timeout`."""
        deadline = time.monotonic() + (timeout or self.timeout)
        frames = []
        while True:
            try:
                frames.append(self.read_frame(deadline - time.monotonic()))
            except Eof:
                return frames
            except ConnectionResetError:
                return frames

    def read_raw_until_eof(self, timeout=None):
        """Every byte until the broker closes the socket."""
        deadline = time.monotonic() + (timeout or self.timeout)
        data, self.buf = self.buf, b""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"socket still open; got {data!r}")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                return data
            if not chunk:
                return data
            data += chunk
