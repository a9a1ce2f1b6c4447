"""Hostile connections: clients that attack the broker through the way
they connect rather than through what they publish - floods of logins,
first packets announcing megabytes, more connections than allowed,
clients that stop reading, sessions asking to live forever or hold
endless subscriptions, and clients that keep writing after the broker has
said no. Each attack gets the protocol's own answer (MQTT CONNACK /
SUBACK / DISCONNECT reason codes, AMQP connection.close reply codes, STOMP
ERROR frames, or a close at accept where nothing can be said yet), nothing
crashes, and a fresh well-behaved client is served afterwards.

The limits are options of conf/junction.toml: `[broker]`
max_pending_logins (64), max_handshake_size (65536), max_connections
(100000), max_connections_per_ip (20000), write_timeout_secs (15);
`[mqtt]` max_session_expiry (604800), max_subscriptions_per_session
(10000), receive_maximum (1024). Refusals at accept and slow-consumer
disconnects are counted in /metrics. After a refusal the broker shuts
its write side and keeps reading for a short grace (2 s, 1 MiB), so a
client still writing reads the reason instead of a broken pipe.
"""

import itertools
import socket
import struct
import threading
import time
from pathlib import Path

import pika
import pytest

import amqp_raw
from admin_support import metric
from amqp_raw import RawClient as AmqpRawClient
from amqp_support import LOGIN_REFUSED, Collector, get_all, login_refusal, publish
from amqp_support import assert_broker_serves as assert_amqp_serves
from amqp_support import wait_until as amqp_wait_until
from mqtt_support import (
    CONNACK,
    CONNECT,
    DISCONNECT,
    PUBLISH,
    PUBREC,
    UNSUBACK,
    V5,
    V311,
    Closed,
    assert_broker_serves,
    clients,  # noqa: F401 (fixture)
    connect_packet,
    connected,
    encode_props,
    packet,
    publish_packet,
    uid,
    unsubscribe_packet,
    utf8,
    varint,
)
from mqtt_support import wait_until as poll_until
from net_support import tcp_connect, unread_bytes
from stomp_support import CLOSED
from stomp_support import assert_serves as assert_stomp_serves
from stomp_support import build as stomp_build
from stomp_support import stomp_clients  # noqa: F401 (fixture)

LEVELS = pytest.mark.parametrize("level", [4, 5], ids=["v311", "v5"])

# MQTT 5 reason codes (section 2.4) and MQTT 3.1.1 CONNACK return codes.
BAD_CREDENTIALS, SERVER_BUSY, RECEIVE_MAXIMUM_EXCEEDED = 0x86, 0x89, 0x93
PACKET_TOO_LARGE, QUOTA_EXCEEDED = 0x95, 0x97
V3_SERVER_UNAVAILABLE, V3_BAD_CREDENTIALS = 3, 4
V3_SUBACK_FAILURE = 0x80

# AMQP 0-9-1 reply codes.
ACCESS_REFUSED, FRAME_ERROR, RESOURCE_ERROR = 403, 501, 506
LOGINS_BUSY = "RESOURCE_ERROR - too many logins waiting for a password check; try again later"

REFUSED_METRIC = "junction_connections_refused_total"
SLOW_METRIC = "junction_slow_consumer_disconnects_total"

KiB, MiB = 1 << 10, 1 << 20
DEFAULT_HANDSHAKE_MAX = 65536
ANNOUNCED = 16 * MiB  # what the oversized first packets claim to carry
SEVEN_DAYS = 604800
WAIT = 30.0  # bound on waits for events that take a while (argon2, drains)

USER, PASSWORD = "alice", "alice-password"
FLOOD = 40


# --- raw-socket helpers ------------------------------------------------------


def keep_writing(sock, limit, chunk=64 * KiB, timeout=5.0):
    """Writes zeros on `sock` until the broker ends the connection or
    `limit` bytes went out; returns (bytes written, the error that stopped
    it or None). A write blocked for `timeout` raises: the broker neither
    read nor closed."""
    data = bytes(chunk)
    written = 0
    sock.settimeout(timeout)
    while written < limit:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError) as e:
            return written, e
        written += chunk
    return written, None


def assert_write_refused(sock):
    """Keeps writing after the broker's refusal: the broker stops taking
    bytes long before the 16 MiB it was promised (its grace drains at most
    1 MiB), so the writes end in a broken pipe / reset."""
    written, error = keep_writing(sock, ANNOUNCED)
    assert isinstance(error, (BrokenPipeError, ConnectionResetError)), (
        f"the broker took all {written} bytes of an oversized first packet"
    )


def drain_until_closed(sock, limit=64 * MiB, timeout=WAIT):
    """Reads and discards until the broker's close arrives: 'eof' or
    'reset'. Fails if the socket is still open after `timeout` or more
    than `limit` bytes came."""
    deadline = time.monotonic() + timeout
    total = 0
    while total <= limit:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        sock.settimeout(left)
        try:
            chunk = sock.recv(256 * KiB)
        except ConnectionResetError:
            return "reset"
        except socket.timeout:
            break
        if not chunk:
            return "eof"
        total += len(chunk)
    raise AssertionError(f"socket still open after {total} bytes")


def amqp_frames_until_closed(c, timeout=10.0):
    """Every frame the broker sends until it closes the socket (the raw
    client's buffered bytes first)."""
    try:
        return c.read_until_eof(timeout=timeout)
    except TimeoutError:
        raise AssertionError(f"AMQP socket still open after {timeout} s") from None


def only_connection_close(frames):
    """`frames` must be exactly one connection.close; returns it parsed."""
    methods = [
        (f.channel, struct.unpack_from(">HH", f.payload, 0), f.payload[4:])
        for f in frames
        if f.type == amqp_raw.FRAME_METHOD
    ]
    assert frames, "the broker closed the socket without sending connection.close"
    assert len(methods) == len(frames) == 1, f"expected one connection.close, got {frames}"
    channel, method, args = methods[0]
    assert (channel, method) == (0, amqp_raw.CONNECTION_CLOSE), frames
    return amqp_raw.parse_close(args)


# --- login flood ---------------------------------------------------------------


@pytest.fixture
def login_broker(make_broker):
    """A broker with user alice and room for one login waiting for argon2."""
    return make_broker(users=[(USER, PASSWORD, ["/"])], broker_options=["max_pending_logins = 1"])


def connack_then_close(raw, timeout=WAIT):
    """The one CONNACK the broker sends before closing: its reason code."""
    packets = raw.recv_until_closed(timeout)
    assert [p.kind for p in packets] == [CONNACK], packets
    return raw.parse(packets[0]).reason


@LEVELS
@pytest.mark.deadline(120)
def test_mqtt_login_flood_past_max_pending_logins_is_refused_busy(login_broker, clients, level):
    """40 CONNECTs with wrong passwords at once, max_pending_logins = 1:
    each is answered, none hangs - Server busy (v5 0x89, v3.1.1 3) for
    those finding the one slot taken, bad credentials (0x86 / 4) for the
    others. Then the right password logs in, and once it is known, 40 at
    once all log in (the cache needs no slot)."""
    if level == 5:
        busy, bad = SERVER_BUSY, BAD_CREDENTIALS
    else:
        busy, bad = V3_SERVER_UNAVAILABLE, V3_BAD_CREDENTIALS
    raws = [clients.raw(login_broker, level) for _ in range(FLOOD)]
    # Every CONNECT is written before any answer is read: they arrive together.
    for i, raw in enumerate(raws):
        raw.send(connect_packet(uid("f"), version=level, username=USER, password=f"wrong-{i}"))
    codes = [connack_then_close(raw) for raw in raws]
    assert set(codes) <= {busy, bad}, codes
    assert codes.count(busy) >= 1, codes
    assert codes.count(bad) >= 1, codes  # the first one took the free slot

    version = V5 if level == 5 else V311
    alice = clients.connect(login_broker, version=version, username=USER, password=PASSWORD)
    topic = uid() + "/alice"
    assert alice.subscribe(topic, qos=1) == [1]
    assert alice.publish(topic, b"logged in", qos=1) == 0
    assert [m.payload for m in alice.wait_messages(1)] == [b"logged in"]

    raws = [clients.raw(login_broker, level) for _ in range(FLOOD)]
    for raw in raws:
        raw.send(connect_packet(uid("g"), version=level, username=USER, password=PASSWORD))
    assert [raw.expect(CONNACK, timeout=WAIT).reason for raw in raws] == [0] * FLOOD
    assert_broker_serves(clients, login_broker, version)


def concurrent_pika_logins(broker, passwords, timeout=60.0):
    """One pika connection attempt per password, all released at once from
    their own threads; returns per attempt "opened" or the broker's
    (reply_code, reply_text). Every thread is joined within `timeout`."""
    outcomes = [None] * len(passwords)
    barrier = threading.Barrier(len(passwords), timeout=timeout)

    def attempt(i):
        try:
            barrier.wait()
            conn = broker.connect(user=USER, password=passwords[i])
        except pika.exceptions.AMQPConnectionError as e:
            try:
                outcomes[i] = login_refusal(e)
            except AssertionError as not_a_close:
                outcomes[i] = not_a_close
        except Exception as e:  # reported by the test, not lost in a thread
            outcomes[i] = e
        else:
            outcomes[i] = "opened"
            conn.close()

    threads = [
        threading.Thread(target=attempt, args=(i,), daemon=True) for i in range(len(passwords))
    ]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), f"logins still waiting: {outcomes}"
    return outcomes


@pytest.mark.deadline(150)
def test_amqp_login_flood_past_max_pending_logins_gets_506(login_broker, names):
    """40 pika logins with wrong passwords at once, max_pending_logins = 1:
    connection.close 506 RESOURCE_ERROR for those finding the slot taken,
    403 ACCESS_REFUSED for the others; the right password opens, and then
    40 at once all open."""
    outcomes = concurrent_pika_logins(login_broker, [f"wrong-{i}" for i in range(FLOOD)])
    busy = [o for o in outcomes if o == (RESOURCE_ERROR, LOGINS_BUSY)]
    refused = [o for o in outcomes if o == (ACCESS_REFUSED, LOGIN_REFUSED)]
    assert len(busy) + len(refused) == FLOOD, outcomes
    assert len(busy) >= 1 and len(refused) >= 1, outcomes

    conn = login_broker.connect(user=USER, password=PASSWORD)
    ch = conn.channel()
    q = names("q")
    ch.queue_declare(q)
    publish(ch, q, b"alice is in")
    assert [b for _, _, b in get_all(ch, q)] == [b"alice is in"]
    conn.close()
    assert concurrent_pika_logins(login_broker, [PASSWORD] * FLOOD) == ["opened"] * FLOOD
    assert_amqp_serves(login_broker, names("q2"))


def stomp_connect_headers(login="guest", passcode="guest", extra=()):
    """CONNECT headers of a STOMP 1.2 client for vhost "/"."""
    return [
        ("accept-version", "1.2"),
        ("host", "/"),
        ("login", login),
        ("passcode", passcode),
        *extra,
    ]


@pytest.mark.deadline(150)
def test_stomp_login_flood_past_max_pending_logins_gets_error_server_busy(
    login_broker, stomp_clients
):
    """40 STOMP CONNECTs with wrong passcodes at once, max_pending_logins =
    1: each gets one ERROR and the close, none hangs - `server busy` for
    those finding the one slot taken, `access_refused` for the others.
    Then the right passcode logs in, and once it is known, 40 at once all
    get CONNECTED (the cache needs no slot)."""
    raws = [stomp_clients.raw(login_broker) for _ in range(FLOOD)]
    # Every CONNECT is written before any answer is read: they arrive together.
    for i, raw in enumerate(raws):
        raw.send_frame("CONNECT", stomp_connect_headers(USER, f"wrong-{i}"))
    messages = []
    for raw in raws:
        error = raw.expect("ERROR", timeout=WAIT)
        assert raw.wait_closed(timeout=WAIT) == []
        messages.append(error.headers.get("message"))
    assert set(messages) <= {"server busy", "access_refused"}, messages
    assert messages.count("server busy") >= 1, messages
    assert messages.count("access_refused") >= 1, messages  # the first one took the slot

    alice = stomp_clients.connect(login_broker, login=USER, passcode=PASSWORD)
    q = uid("alice")
    alice.subscribe(f"/queue/{q}")
    alice.send(f"/queue/{q}", b"logged in", receipt=True)
    assert [m.body for m in alice.wait_messages(1)] == [b"logged in"]

    raws = [stomp_clients.raw(login_broker) for _ in range(FLOOD)]
    for raw in raws:
        raw.send_frame("CONNECT", stomp_connect_headers(USER, PASSWORD))
    assert [raw.read_frame(timeout=WAIT).cmd for raw in raws] == ["CONNECTED"] * FLOOD
    assert_stomp_serves(login_broker, stomp_clients)


# --- the first packet --------------------------------------------------------


def oversized_connect_head(level, announced=ANNOUNCED):
    """The start of a CONNECT whose fixed header announces `announced`
    remaining bytes: protocol name, level, flags, keepalive (v5: and an
    empty property block)."""
    body = utf8("MQTT") + bytes([level, 0x02]) + struct.pack(">H", 60)
    if level == 5:
        body += encode_props(None)
    return bytes([CONNECT << 4]) + varint(announced) + body


@pytest.mark.parametrize("level", [4, 5, None], ids=["v311", "v5", "header-only"])
def test_mqtt_connect_announcing_16_mib_is_refused_before_its_body(module_broker, clients, level):
    """A CONNECT announcing 16 MiB, sent as its first 4 KB: refused at once
    - v5 CONNACK 0x95 Packet too large, v3.1.1 (or a fixed header alone,
    no level to read) a plain close - without waiting for the rest; a
    client that keeps writing is cut off long before 16 MiB."""
    raw = clients.raw(module_broker, level or 4)
    if level is None:
        raw.send(bytes([CONNECT << 4]) + varint(ANNOUNCED))
    else:
        raw.send(oversized_connect_head(level) + bytes(4 * KiB))
    packets = raw.recv_until_closed()
    if level == 5:
        assert [(p.kind, raw.parse(p).reason) for p in packets] == [(CONNACK, PACKET_TOO_LARGE)]
    else:
        assert packets == []
    assert_write_refused(raw.sock)
    assert_broker_serves(clients, module_broker)


def connect_of_size(size, level, client_id, will_topic):
    """A CONNECT of exactly `size` bytes, padded with its will payload;
    returns (packet, will payload)."""

    def build(n):
        will = {"topic": will_topic, "payload": b"w" * n, "qos": 1}
        return connect_packet(client_id, version=level, will=will)

    n = size - len(build(0))
    while len(build(n)) > size:
        n -= 1
    p = build(n)
    assert len(p) == size
    return p, b"w" * n


@LEVELS
def test_mqtt_connect_of_exactly_max_handshake_size_is_accepted(module_broker, clients, level):
    """A 65,536-byte CONNECT (a 65 KB will) is accepted with the default
    max_handshake_size; after login max_packet_size applies (a 200 KB
    PUBLISH goes through), and the will arrives whole."""
    topic = uid() + "/will"
    watcher = clients.connect(module_broker, version=V5)
    assert watcher.subscribe(topic, qos=1) == [1]
    raw = clients.raw(module_broker, level)
    connect, will = connect_of_size(DEFAULT_HANDSHAKE_MAX, level, uid("c"), topic)
    raw.send(connect)
    assert raw.expect(CONNACK).reason == 0
    assert raw.publish(topic, b"p" * 200_000, qos=1, pid=1) == 0
    raw.close()  # no DISCONNECT: the will goes out
    got = watcher.wait_messages(2)
    assert [(m.topic, m.payload) for m in got] == [(topic, b"p" * 200_000), (topic, will)]
    assert_broker_serves(clients, module_broker)


@LEVELS
def test_mqtt_connect_one_byte_over_max_handshake_size_is_refused(module_broker, clients, level):
    """A 65,537-byte CONNECT: v5 CONNACK 0x95, v3.1.1 a plain close; its
    will is not published."""
    topic = uid() + "/will"
    watcher = clients.connect(module_broker, version=V5)
    assert watcher.subscribe(topic, qos=1) == [1]
    raw = clients.raw(module_broker, level)
    raw.send(connect_of_size(DEFAULT_HANDSHAKE_MAX + 1, level, uid("c"), topic)[0])
    packets = raw.recv_until_closed()
    if level == 5:
        assert [(p.kind, raw.parse(p).reason) for p in packets] == [(CONNACK, PACKET_TOO_LARGE)]
    else:
        assert packets == []
    pub = clients.connect(module_broker, version=V5)
    pub.publish(topic, b"fence", qos=1)
    assert [m.payload for m in watcher.wait_messages(1)] == [b"fence"]
    assert_broker_serves(clients, module_broker)


def expected_frame_error(frame_size, limit=DEFAULT_HANDSHAKE_MAX):
    return (FRAME_ERROR, f"FRAME_ERROR - frame of {frame_size} bytes exceeds frame_max {limit}")


@pytest.mark.parametrize("stage", ["before-start-ok", "before-tune-ok"])
def test_amqp_frame_announcing_16_mib_before_tune_ok_is_refused_with_501(
    module_broker, names, stage
):
    """After the protocol header (or after start-ok), a frame whose header
    announces 16 MiB: connection.close 501 FRAME_ERROR naming the
    handshake limit (max_handshake_size, not frame_max), then the close;
    the broker does not wait for the 16 MiB and a client that keeps
    writing is cut off."""
    with AmqpRawClient(module_broker.amqp_port) as c:
        if stage == "before-start-ok":
            c.send(amqp_raw.PROTOCOL_HEADER)
            c.expect(0, amqp_raw.CONNECTION_START)
        else:
            c.start()
            c.expect(0, amqp_raw.CONNECTION_TUNE)
        c.send(struct.pack(">BHI", amqp_raw.FRAME_METHOD, 0, ANNOUNCED) + bytes(4 * KiB))
        close = only_connection_close(amqp_frames_until_closed(c))
        assert (close.reply_code, close.reply_text) == expected_frame_error(ANNOUNCED + 8)
        assert_write_refused(c.sock)
    assert_amqp_serves(module_broker, names("q"))


def start_ok_of_size(size):
    """A PLAIN guest start-ok frame of exactly `size` bytes, padded with a
    long-string client property."""

    def build(n):
        prop = amqp_raw.shortstr("pad") + b"S" + amqp_raw.longstr(b"p" * n)
        return amqp_raw.start_ok_frame(client_properties=struct.pack(">I", len(prop)) + prop)

    frame = build(size - len(build(0)))
    assert len(frame) == size
    return frame


def test_amqp_start_ok_of_exactly_max_handshake_size_is_accepted(module_broker):
    """A 65,536-byte start-ok (big client properties) gets tune; the
    connection opens and works."""
    with AmqpRawClient(module_broker.amqp_port) as c:
        c.send(amqp_raw.PROTOCOL_HEADER)
        c.expect(0, amqp_raw.CONNECTION_START)
        c.send(start_ok_of_size(DEFAULT_HANDSHAKE_MAX))
        c.tune()
        c.open()
        c.expect(0, amqp_raw.CONNECTION_OPEN_OK)
        c.open_channel(1)


def test_amqp_start_ok_one_byte_over_max_handshake_size_is_refused_with_501(module_broker, names):
    with AmqpRawClient(module_broker.amqp_port) as c:
        c.send(amqp_raw.PROTOCOL_HEADER)
        c.expect(0, amqp_raw.CONNECTION_START)
        c.send(start_ok_of_size(DEFAULT_HANDSHAKE_MAX + 1))
        close = only_connection_close(amqp_frames_until_closed(c))
        assert (close.reply_code, close.reply_text) == expected_frame_error(
            DEFAULT_HANDSHAKE_MAX + 1
        )
    assert_amqp_serves(module_broker, names("q"))


def stomp_connect_of_size(size):
    """A guest CONNECT frame of exactly `size` bytes (NUL included), padded
    with header lines of at most 8 KB (under [stomp] max_header_length)."""
    room = size - len(stomp_build("CONNECT", stomp_connect_headers()))
    names = [f"pad{i}" for i in range(-(-room // (8 * KiB)))]
    each, rest = divmod(room - sum(len(n) + 2 for n in names), len(names))  # name, ':', LF
    pads = [(n, "p" * (each + (i < rest))) for i, n in enumerate(names)]
    frame = stomp_build("CONNECT", stomp_connect_headers(extra=pads))
    assert len(frame) == size, (len(frame), size)
    return frame


def stomp_frames_until_closed(sock, timeout=10.0):
    """Every byte the broker sends until it closes `sock`."""
    deadline = time.monotonic() + timeout
    data = b""
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"STOMP socket still open after {timeout} s; read {data[:300]!r}"
        sock.settimeout(left)
        try:
            chunk = sock.recv(64 * KiB)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


def only_stomp_error(data):
    """`data` must be exactly one ERROR frame (1.0 framing: before CONNECT
    nothing is escaped); returns its `message` header."""
    assert data.startswith(b"ERROR\n") and data.endswith(b"\0"), data[:300]
    assert data.count(b"\0") == 1, data[:300]
    head, _, _ = data.partition(b"\n\n")
    headers = dict(line.split(b":", 1) for line in head.split(b"\n")[1:])
    return headers[b"message"].decode()


@pytest.mark.parametrize("framing", ["content-length", "nul-terminated"])
def test_stomp_connect_announcing_16_mib_is_refused_before_its_body(
    module_broker, stomp_clients, framing
):
    """A CONNECT whose body is 16 MiB: with `content-length:16777216` it
    is refused with an ERROR as soon as that header is read, after the
    head and 4 KB of body; without content-length once 64 KiB arrived.
    The broker does not wait for the rest, and a client that keeps writing
    is cut off long before 16 MiB."""
    sock = tcp_connect(module_broker.stomp_port, 5.0)
    try:
        extra = [("content-length", str(ANNOUNCED))] if framing == "content-length" else []
        head = stomp_build("CONNECT", stomp_connect_headers(extra=extra))[:-1]  # no NUL
        if framing == "content-length":
            sock.sendall(head + b"x" * (4 * KiB))
            limit = f"body larger than {DEFAULT_HANDSHAKE_MAX} bytes"
        else:
            sock.sendall(head + b"x" * (DEFAULT_HANDSHAKE_MAX))
            limit = f"frame larger than {DEFAULT_HANDSHAKE_MAX} bytes"
        assert only_stomp_error(stomp_frames_until_closed(sock)) == limit
        assert_write_refused(sock)
    finally:
        sock.close()
    assert_stomp_serves(module_broker, stomp_clients)


def test_stomp_connect_of_exactly_max_handshake_size_is_accepted(module_broker, stomp_clients):
    """A 65,536-byte CONNECT (long header lines) gets CONNECTED; after it
    the full frame limits apply (a 200 KB SEND goes through)."""
    q = uid("big")
    raw = stomp_clients.raw(module_broker)
    raw.send(stomp_connect_of_size(DEFAULT_HANDSHAKE_MAX))
    raw.expect("CONNECTED")
    raw.send_frame("SUBSCRIBE", {"destination": f"/queue/{q}", "id": "1", "receipt": "sub"})
    assert raw.expect("RECEIPT").headers["receipt-id"] == "sub"
    body = bytes(range(256)) * 800  # 200 KB, NULs included
    raw.send_frame("SEND", {"destination": f"/queue/{q}"}, body, content_length=True)
    msg = raw.expect("MESSAGE")
    assert msg.body == body
    assert_stomp_serves(module_broker, stomp_clients)


def test_stomp_connect_one_byte_over_max_handshake_size_is_refused(module_broker, stomp_clients):
    """A 65,537-byte CONNECT: an ERROR naming the handshake limit, then
    the close."""
    sock = tcp_connect(module_broker.stomp_port, 5.0)
    try:
        sock.sendall(stomp_connect_of_size(DEFAULT_HANDSHAKE_MAX + 1))
        message = only_stomp_error(stomp_frames_until_closed(sock))
        assert message == f"frame larger than {DEFAULT_HANDSHAKE_MAX} bytes"
    finally:
        sock.close()
    assert_stomp_serves(module_broker, stomp_clients)


# --- connection caps -----------------------------------------------------------


def mqtt_probe(clients, broker):
    """A raw MQTT 3.1.1 connection that got CONNACK 0, or None if the
    broker closed it at accept (not a byte sent back)."""
    raw = clients.raw(broker, 4)
    try:
        raw.send(connect_packet(uid("p")))
        ack = raw.expect(CONNACK)
    except (Closed, BrokenPipeError, ConnectionResetError):
        assert raw.buf == b"", f"closed after sending {raw.buf!r}"
        raw.close()
        return None
    assert ack.reason == 0, ack
    return raw


def amqp_probe(broker):
    """A raw AMQP connection that got connection.start (the caller goes on
    with `start_ok_frame`), or None if the broker closed it at accept."""
    c = AmqpRawClient(broker.amqp_port)
    try:
        c.send(amqp_raw.PROTOCOL_HEADER)
        c.expect(0, amqp_raw.CONNECTION_START)
    except (amqp_raw.Eof, BrokenPipeError, ConnectionResetError):
        assert c.buf == b"", f"closed after sending {c.buf!r}"
        c.close()
        return None
    return c


def admitted_after_a_close(probe, attempts=50):
    """Right after a client closed, its place is free once the broker has
    seen it go: probes until one is admitted; returns (connection, how
    many probes were refused meanwhile)."""
    for refused in range(attempts):
        conn = probe()
        if conn is not None:
            return conn, refused
        time.sleep(0.1)
    raise AssertionError(f"no connection admitted in {attempts} attempts")


def amqp_open(c):
    """Finishes the handshake of an `amqp_probe` connection and opens
    channel 1."""
    c.send(amqp_raw.start_ok_frame())
    c.tune()
    c.open()
    c.expect(0, amqp_raw.CONNECTION_OPEN_OK)
    c.open_channel(1)


def assert_mqtt_served(client):
    """A connected paho client still subscribes, publishes and receives."""
    before = len(client.received())
    topic = uid() + "/served"
    assert client.subscribe(topic, qos=1) == [1]
    assert client.publish(topic, b"served", qos=1) == 0
    got = client.wait_messages(before + 1)
    assert [(m.topic, m.payload) for m in got[before:]] == [(topic, b"served")]


def assert_amqp_connection_served(conn, queue):
    ch = conn.channel()
    ch.queue_declare(queue)
    publish(ch, queue, b"served")
    assert [b for _, _, b in get_all(ch, queue)] == [b"served"]
    ch.close()


def test_max_connections_per_ip_closes_the_sixth_at_accept(make_broker, clients, names):
    """max_connections_per_ip = 5 with five connections open (MQTT and
    AMQP, logged in or raw): the sixth, on either port, is closed before
    any protocol reply and counted in junction_connections_refused_total;
    the five keep working; after one closes, a new one is admitted."""
    b = make_broker(broker_options=["max_connections_per_ip = 5"])
    paho = clients.connect(b)
    raw_mqtt = connected(clients, b, 5)
    pika1, pika2 = b.connect(), b.connect()
    raw_amqp = AmqpRawClient(b.amqp_port)
    probe = None
    try:
        raw_amqp.handshake()
        assert metric(b, REFUSED_METRIC) == 0
        assert mqtt_probe(clients, b) is None
        assert metric(b, REFUSED_METRIC) == 1
        assert amqp_probe(b) is None
        assert metric(b, REFUSED_METRIC) == 2

        assert_mqtt_served(paho)
        assert raw_mqtt.subscribe(1, [(uid() + "/t", 1)]) == [1]
        assert_amqp_connection_served(pika1, names("q1"))
        raw_amqp.open_channel(1)

        pika2.close()
        probe, refused = admitted_after_a_close(lambda: amqp_probe(b))
        amqp_open(probe)
        assert metric(b, REFUSED_METRIC) == 2 + refused
        # Five again: the next one is refused.
        assert mqtt_probe(clients, b) is None
        assert metric(b, REFUSED_METRIC) == 3 + refused
    finally:
        for c in (probe, raw_amqp):
            if c is not None:
                c.close()
        for conn in (pika1, pika2):
            if conn.is_open:
                conn.close()
    paho.disconnect()
    raw_mqtt.close()
    assert_broker_serves(clients, b)


def test_max_connections_closes_connections_past_the_total_at_accept(make_broker, clients, names):
    """max_connections = 3 (all protocols together): the fourth and fifth
    are closed at accept and counted; after one closes a new one is
    admitted and served."""
    b = make_broker(broker_options=["max_connections = 3"])
    paho = clients.connect(b)
    conn = b.connect()
    raw_amqp = AmqpRawClient(b.amqp_port)
    try:
        raw_amqp.handshake()
        assert amqp_probe(b) is None
        assert mqtt_probe(clients, b) is None
        assert metric(b, REFUSED_METRIC) == 2
        assert_amqp_connection_served(conn, names("q"))
        assert_mqtt_served(paho)

        paho.disconnect()
        raw, refused = admitted_after_a_close(lambda: mqtt_probe(clients, b))
        assert metric(b, REFUSED_METRIC) == 2 + refused
        assert raw.subscribe(1, [(uid() + "/t", 1)]) == [1]
        assert amqp_probe(b) is None
        assert metric(b, REFUSED_METRIC) == 3 + refused
        raw.close()
    finally:
        raw_amqp.close()
        if conn.is_open:
            conn.close()
    assert_amqp_serves(b, names("q-after"))


def stomp_probe(stomp_clients, broker):
    """A raw STOMP connection that got CONNECTED, or None if the broker
    closed it at accept (not a byte sent back)."""
    raw = stomp_clients.raw(broker)
    try:
        raw.send_frame("CONNECT", stomp_connect_headers())
        frame = raw.read_frame()
    except (BrokenPipeError, ConnectionResetError):
        frame = CLOSED
    if frame is CLOSED:
        assert raw.buf == b"", f"closed after sending {raw.buf!r}"
        raw.close()
        return None
    assert frame.cmd == "CONNECTED", frame
    return raw


def assert_stomp_served(client):
    """A connected stomp.py client still subscribes, sends and receives."""
    before = len(client.messages)
    q = uid("served")
    client.subscribe(f"/queue/{q}")
    client.send(f"/queue/{q}", b"served", receipt=True)
    got = client.wait_messages(before + 1)
    assert [(m.headers["destination"], m.body) for m in got[before:]] == [
        (f"/queue/{q}", b"served")
    ]


def test_max_connections_per_ip_applies_to_stomp(make_broker, clients, stomp_clients, names):
    """max_connections_per_ip = 4 held by two STOMP connections (stomp.py
    and raw), one pika and one paho: a STOMP connection, and an AMQP one,
    are closed before any protocol reply and counted in
    junction_connections_refused_total; the four keep working; after the
    raw STOMP one closes, a new STOMP connection is admitted and then the
    next one is refused again."""
    b = make_broker(broker_options=["max_connections_per_ip = 4"])
    st = stomp_clients.connect(b)
    raw = stomp_probe(stomp_clients, b)
    assert raw is not None
    conn = b.connect()
    paho = clients.connect(b)
    probe = None
    try:
        assert metric(b, REFUSED_METRIC) == 0
        assert stomp_probe(stomp_clients, b) is None
        assert metric(b, REFUSED_METRIC) == 1
        assert amqp_probe(b) is None
        assert metric(b, REFUSED_METRIC) == 2

        assert_stomp_served(st)
        raw.send_frame("SUBSCRIBE", {"destination": f"/queue/{uid('q')}", "id": "1", "receipt": "r"})
        assert raw.expect("RECEIPT").headers["receipt-id"] == "r"
        assert_amqp_connection_served(conn, names("q"))
        assert_mqtt_served(paho)

        raw.close()
        probe, refused = admitted_after_a_close(lambda: stomp_probe(stomp_clients, b))
        assert metric(b, REFUSED_METRIC) == 2 + refused
        probe.send_frame("SUBSCRIBE", {"destination": f"/queue/{uid('q')}", "id": "1", "receipt": "r"})
        assert probe.expect("RECEIPT").headers["receipt-id"] == "r"
        # Four again: the next one is refused.
        assert stomp_probe(stomp_clients, b) is None
        assert metric(b, REFUSED_METRIC) == 3 + refused
    finally:
        if probe is not None:
            probe.close()
        if conn.is_open:
            conn.close()
    paho.disconnect()
    st.disconnect()
    assert_stomp_serves(b, stomp_clients)


# --- clients that stop reading ----------------------------------------------------

SMALL_RCVBUF = 4096
BIG_BODY = 64 * KiB
BIG_COUNT = 128  # 8 MiB: more than the socket buffers on both sides hold


def big_body(i):
    return struct.pack(">I", i) + bytes(BIG_BODY - 4)


def stuck_amqp_consumer(broker, queue):
    """A raw AMQP consumer (no_ack, no heartbeats) on `queue` with a small
    receive buffer, that never reads again."""
    c = AmqpRawClient(broker.amqp_port, rcvbuf=SMALL_RCVBUF)
    c.handshake(heartbeat=0)
    c.open_channel(1)
    c.send(amqp_raw.consume_frame(1, queue, "stuck", no_ack=True))
    c.expect(1, amqp_raw.BASIC_CONSUME_OK)
    return c


def stuck_mqtt_subscriber(clients, broker, topic):
    """A raw MQTT 3.1.1 subscriber (QoS 0) to `topic` with a small receive
    buffer, that never reads again."""
    raw = clients.raw(broker, 4, rcvbuf=SMALL_RCVBUF)
    assert raw.connect(uid("s")).reason == 0
    assert raw.subscribe(1, [(topic, 0)]) == [0]
    return raw


def mqtt_flood(clients, broker, topic, count=BIG_COUNT):
    """`count` QoS 0 PUBLISHes of `big_body` from a raw client, then a QoS
    1 one on another topic whose PUBACK says the broker has read them all."""
    pub = connected(clients, broker, 4)
    for i in range(count):
        pub.send(publish_packet(topic, big_body(i)))
    assert pub.publish(uid() + "/fence", b"", qos=1, pid=1) == 0
    return pub


@pytest.mark.deadline(120)
def test_amqp_consumer_that_stops_reading_is_cut_off_as_a_slow_consumer(make_broker, names):
    """write_timeout_secs = 2, a no_ack consumer that stops reading while
    8 MiB are routed to it: the broker closes it (EOF after the buffered
    bytes), junction_slow_consumer_disconnects_total is 1; a consumer of
    the same messages on another queue gets every one meanwhile."""
    b = make_broker(broker_options=["write_timeout_secs = 2"])
    conn = b.connect()
    ch = conn.channel()
    for q in ("stuck", "healthy"):
        ch.queue_declare(q)
        ch.queue_bind(q, "amq.fanout")
    stuck = stuck_amqp_consumer(b, "stuck")
    consumer = b.connect()
    got = Collector()
    consumer.channel().basic_consume("healthy", got, auto_ack=True)
    pub = conn.channel()
    pub.confirm_delivery()
    try:
        for i in range(BIG_COUNT):
            pub.basic_publish("amq.fanout", "", big_body(i))
            consumer.process_data_events(time_limit=0)
        assert amqp_wait_until(consumer, lambda: len(got) >= BIG_COUNT, timeout=WAIT)
        assert got.bodies == [big_body(i) for i in range(BIG_COUNT)]
        assert poll_until(lambda: metric(b, SLOW_METRIC) == 1, timeout=WAIT)
        assert drain_until_closed(stuck.sock) in ("eof", "reset")
        assert metric(b, SLOW_METRIC) == 1
        assert_amqp_connection_served(consumer, names("q"))
    finally:
        stuck.close()
        consumer.close()
        conn.close()
    assert_amqp_serves(b, names("q-after"))


@pytest.mark.deadline(120)
def test_mqtt_subscriber_that_stops_reading_is_cut_off_as_a_slow_consumer(make_broker, clients):
    """write_timeout_secs = 2, a QoS 0 subscriber that stops reading while
    8 MiB are published to its topic: the broker closes it, the metric is
    1; another subscriber of the same topic gets every message."""
    b = make_broker(broker_options=["write_timeout_secs = 2"])
    topic = uid() + "/flood"
    healthy = clients.connect(b)
    assert healthy.subscribe(topic, qos=0) == [0]
    stuck = stuck_mqtt_subscriber(clients, b, topic)
    mqtt_flood(clients, b, topic)
    got = healthy.wait_messages(BIG_COUNT, timeout=WAIT)
    assert [m.payload for m in got] == [big_body(i) for i in range(BIG_COUNT)]
    assert poll_until(lambda: metric(b, SLOW_METRIC) == 1, timeout=WAIT)
    assert drain_until_closed(stuck.sock) in ("eof", "reset")
    assert metric(b, SLOW_METRIC) == 1
    assert_mqtt_served(healthy)
    assert_broker_serves(clients, b)


STOMP_BODY = 8 * KiB
STOMP_COUNT = 2000  # 16 MiB, and more messages than the transport window
TRANSPORT_WINDOW = 1024  # deliveries handed to a connection and not yet written


def stomp_body(i, size=STOMP_BODY):
    return struct.pack(">I", i) + bytes(size - 4)


def kernel_send_buffer_max():
    """The most a TCP send buffer grows to (the max of tcp_wmem)."""
    try:
        return int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    except (OSError, ValueError, IndexError):
        return 4 * MiB


def stuck_stomp_subscriber(broker, destination, ack="auto", headers=()):
    """A raw STOMP 1.2 subscriber to `destination` with a small receive
    buffer, that never reads again once its SUBSCRIBE's RECEIPT came."""
    sock = tcp_connect(broker.stomp_port, 5.0, rcvbuf=SMALL_RCVBUF)
    sub = [("destination", destination), ("id", "stuck"), ("ack", ack), ("receipt", "subscribed")]
    sock.sendall(
        stomp_build("CONNECT", stomp_connect_headers())
        + stomp_build("SUBSCRIBE", sub + list(headers))
    )
    got = b""
    while not got.endswith(b"receipt-id:subscribed\n\n\0"):
        chunk = sock.recv(4096)
        assert chunk, f"closed: {got!r}"
        got += chunk
    assert got.startswith(b"CONNECTED\n"), got
    return sock


def stomp_flood(broker, destination, count=STOMP_COUNT, size=STOMP_BODY):
    """`count` persistent SENDs of `stomp_body` from a raw STOMP client,
    then one with a receipt: its RECEIPT says every earlier SEND is stored.
    Returns the (open) socket."""
    sock = tcp_connect(broker.stomp_port, WAIT)
    sock.sendall(stomp_build("CONNECT", stomp_connect_headers()))
    frames = (
        stomp_build(
            "SEND",
            {"destination": destination, "persistent": "true"},
            stomp_body(i, size),
            content_length=True,
        )
        for i in range(count)
    )
    for batch in iter(lambda: b"".join(itertools.islice(frames, 64)), b""):
        sock.sendall(batch)
    sock.sendall(stomp_build("SEND", {"destination": "/queue/fence", "receipt": "fence"}))
    got = b""
    while b"receipt-id:fence\n" not in got:
        chunk = sock.recv(64 * KiB)
        assert chunk, f"publisher closed: {got[-300:]!r}"
        got += chunk
    assert got.startswith(b"CONNECTED\n") and b"ERROR" not in got, got[:300]
    return sock


@pytest.mark.deadline(120)
@pytest.mark.parametrize("ack", ["auto", "client-individual"])
def test_stomp_subscriber_that_stops_reading_is_cut_off_as_a_slow_consumer(
    make_broker, stomp_clients, names, ack
):
    """write_timeout_secs = 2, a STOMP subscriber of a durable queue that
    stops reading while 2,000 persistent messages of 8 KB (16 MiB) are
    routed to it - ack:auto, or client-individual with a prefetch-count of
    100,000 so that only the transport window holds it: the broker closes
    it (EOF after the buffered bytes), junction_slow_consumer_disconnects_total
    is 1; a STOMP subscriber of the same messages on another queue gets
    every one meanwhile. Afterwards the stuck queue holds every message
    never handed to the connection (client-individual: all 2,000, none
    was acked; auto: those past the transport window, the tail in order)."""
    b = make_broker(broker_options=["write_timeout_secs = 2"])
    conn = b.connect()
    ch = conn.channel()
    for q in ("stuck", "healthy"):
        ch.queue_declare(q, durable=True)
        ch.queue_bind(q, "amq.fanout")
    conn.close()
    healthy = stomp_clients.connect(b)
    healthy.subscribe("/amq/queue/healthy")
    window = [] if ack == "auto" else [("prefetch-count", "100000")]
    stuck = stuck_stomp_subscriber(b, "/amq/queue/stuck", ack, window)
    publisher = None
    try:
        publisher = stomp_flood(b, "/exchange/amq.fanout/")
        got = healthy.wait_messages(STOMP_COUNT, timeout=WAIT)
        assert [m.body for m in got] == [stomp_body(i) for i in range(STOMP_COUNT)]
        assert poll_until(lambda: metric(b, SLOW_METRIC) == 1, timeout=WAIT)
        assert drain_until_closed(stuck) in ("eof", "reset")
        assert metric(b, SLOW_METRIC) == 1
        assert_stomp_served(healthy)
    finally:
        stuck.close()
        if publisher is not None:
            publisher.close()
    # The stuck subscriber's messages: back in (or never out of) its queue.
    conn = b.connect()
    try:
        ch = conn.channel()
        if ack == "auto":
            left = [body for _, _, body in get_all(ch, "stuck")]
            n = len(left)
            # Handed out: the window not yet written, and what the socket
            # buffers took (the broker's send buffer grows to tcp_wmem's max;
            # a quarter more for what the kernel packs beyond that count and
            # the peer's receive side: seen 8% over it with Nagle off).
            in_sockets = -(-(kernel_send_buffer_max() * 5 // 4 + 64 * KiB) // STOMP_BODY)
            assert n >= STOMP_COUNT - TRANSPORT_WINDOW - in_sockets, (n, in_sockets)
            assert left == [stomp_body(i) for i in range(STOMP_COUNT - n, STOMP_COUNT)]
        else:
            def requeued():
                return ch.queue_declare("stuck", passive=True).method.message_count
            assert amqp_wait_until(conn, lambda: requeued() == STOMP_COUNT, timeout=WAIT)
            left = [body for _, _, body in get_all(ch, "stuck")]
            assert sorted(left) == [stomp_body(i) for i in range(STOMP_COUNT)]
    finally:
        conn.close()
    assert_amqp_serves(b, names("q-after"))
    assert_stomp_serves(b, stomp_clients)


@pytest.mark.deadline(120)
def test_sigterm_with_clients_that_stopped_reading_exits_0(make_broker, clients):
    """An AMQP consumer and an MQTT subscriber stuck with data waiting
    (write timeout 60 s: not cut off yet): SIGTERM still exits 0 within
    the 20 s bound, and the broker starts again on its data and serves."""
    b = make_broker(broker_options=["write_timeout_secs = 60"])
    conn = b.connect()
    ch = conn.channel()
    ch.queue_declare("stuck")
    stuck_amqp = stuck_amqp_consumer(b, "stuck")
    topic = uid() + "/flood"
    stuck_mqtt = stuck_mqtt_subscriber(clients, b, topic)
    ch.confirm_delivery()
    for i in range(BIG_COUNT):
        ch.basic_publish("", "stuck", big_body(i))
    conn.close()
    mqtt_flood(clients, b, topic).close()
    try:
        assert poll_until(
            lambda: unread_bytes(stuck_amqp.sock) > 0 and unread_bytes(stuck_mqtt.sock) > 0
        )
        assert metric(b, SLOW_METRIC) == 0
        assert b.terminate(timeout=20) == 0
    finally:
        stuck_amqp.close()
    b.start()
    assert_broker_serves(clients, b)
    assert_amqp_serves(b, "after-restart")


def stuck_stomp_at_shutdown(make_broker):
    """A broker (write timeout 60 s) with a client-individual STOMP
    subscriber stuck with 8 MiB of persistent messages of a durable queue
    waiting for it (not cut off yet). Returns (broker, its socket)."""
    b = make_broker(broker_options=["write_timeout_secs = 60"])
    stuck = stuck_stomp_subscriber(
        b, "/queue/stuck", "client-individual", [("prefetch-count", "100000")]
    )
    stomp_flood(b, "/queue/stuck", BIG_COUNT, BIG_BODY).close()
    assert poll_until(lambda: unread_bytes(stuck) > 0)
    assert metric(b, SLOW_METRIC) == 0
    return b, stuck


@pytest.mark.deadline(120)
def test_sigterm_with_a_stomp_subscriber_that_stopped_reading_exits_0(
    make_broker, stomp_clients, names
):
    """SIGTERM with that stuck subscriber still exits 0 within the 20 s
    bound; the broker starts again on its data with every message (none
    was acked) in the durable queue, and serves."""
    b, stuck = stuck_stomp_at_shutdown(make_broker)
    try:
        assert b.terminate(timeout=20) == 0
    finally:
        stuck.close()
    b.start()
    conn = b.connect()
    try:
        got = [body for _, _, body in get_all(conn.channel(), "stuck")]
        assert sorted(got) == [stomp_body(i, BIG_BODY) for i in range(BIG_COUNT)]
    finally:
        conn.close()
    assert_stomp_serves(b, stomp_clients)
    assert_amqp_serves(b, names("q-after"))


@pytest.mark.deadline(120)
def test_sigterm_gives_a_stomp_subscriber_that_stopped_reading_only_a_short_grace(make_broker):
    """The same stuck subscriber does not hold the shutdown: like an AMQP
    connection (docs/amqp.md: "shutdown gives a stuck write 3 s"), its
    write gets a short grace once SIGTERM came, so the broker stops well
    before shutdown_timeout_secs (10 s) and does not log that it closed
    connections anyway at the deadline."""
    b, stuck = stuck_stomp_at_shutdown(make_broker)
    try:
        started = time.monotonic()
        assert b.terminate(timeout=20) == 0
        took = time.monotonic() - started
    finally:
        stuck.close()
    log = b.log_path.read_text(errors="replace")
    assert "connections still open at the shutdown deadline" not in log, b.log_tail(10)
    assert took < 8.0, took


# --- MQTT 5 session expiry ---------------------------------------------------------

NEVER = 0xFFFFFFFF


def disconnect_ending_session():
    """v5 DISCONNECT that sets the session expiry to 0: nothing is kept."""
    return packet(DISCONNECT, 0, bytes([0]) + encode_props({"SessionExpiryInterval": 0}))


@pytest.mark.parametrize(
    "asked,granted",
    [
        (NEVER, SEVEN_DAYS),
        (10 * 86400, SEVEN_DAYS),
        (SEVEN_DAYS + 1, SEVEN_DAYS),
        (SEVEN_DAYS, None),
        (3600, None),
        (None, None),
    ],
    ids=["never", "10-days", "7-days-plus-1", "7-days", "1-hour", "absent"],
)
def test_v5_session_expiry_is_capped_at_max_session_expiry(module_broker, clients, asked, granted):
    """The default cap is 7 days: asking more (or 'never') is granted 7
    days, said in CONNACK's Session Expiry Interval; asking up to 7 days
    is granted as asked, and CONNACK then has no such property."""
    raw = clients.raw(module_broker, 5)
    props = None if asked is None else {"SessionExpiryInterval": asked}
    ack = raw.connect(uid("c"), clean=True, props=props)
    assert ack.reason == 0
    assert ack.props.get("SessionExpiryInterval") == granted, ack.props
    raw.send(disconnect_ending_session())


def test_v5_session_expiry_cap_seen_by_paho(module_broker, clients):
    """paho asking for a session that never expires reads the 7-day grant
    from CONNACK."""
    c = clients.connect(module_broker, version=V5, clean=False, session_expiry=NEVER)
    assert c.connack.props.get("SessionExpiryInterval") == SEVEN_DAYS
    c.disconnect(props={"SessionExpiryInterval": 0})


@pytest.mark.parametrize(
    "cap,asked,granted",
    [
        (0, NEVER, None),
        (0, 10 * 86400, None),
        (100, 3600, 100),
        (100, 100, None),
        (100, None, None),
    ],
    ids=["no-cap-never", "no-cap-10-days", "100-asked-3600", "100-asked-100", "100-absent"],
)
def test_v5_configured_max_session_expiry(make_broker, clients, cap, asked, granted):
    """max_session_expiry = 0 grants whatever is asked; another cap grants
    at most itself."""
    b = make_broker(mqtt_options=[f"max_session_expiry = {cap}"])
    raw = clients.raw(b, 5)
    props = None if asked is None else {"SessionExpiryInterval": asked}
    ack = raw.connect(uid("c"), clean=True, props=props)
    assert ack.reason == 0
    assert ack.props.get("SessionExpiryInterval") == granted, ack.props
    raw.send(disconnect_ending_session())


# --- subscriptions per session -------------------------------------------------------


@LEVELS
def test_subscriptions_past_max_subscriptions_per_session_are_refused(make_broker, clients, level):
    """max_subscriptions_per_session = 3: a fourth distinct filter gets
    SUBACK 0x97 (v3.1.1 0x80) and delivers nothing; re-subscribing a held
    filter is granted (its new QoS applies); an unsubscribe frees a place."""
    b = make_broker(mqtt_options=["max_subscriptions_per_session = 3"])
    refused = QUOTA_EXCEEDED if level == 5 else V3_SUBACK_FAILURE
    base = uid()
    f = [f"{base}/{i}" for i in range(4)]
    raw = connected(clients, b, level)
    assert raw.subscribe(1, [(f[0], 1), (f[1], 1), (base + "/2/#", 1)]) == [1, 1, 1]
    assert raw.subscribe(2, [(f[3], 1), (f[0], 0)]) == [refused, 0]
    assert raw.subscribe(3, [(base + "/2/#", 0)]) == [0]
    pub = clients.connect(b, version=V5)
    pub.publish(f[3], b"to the refused filter", qos=1)
    pub.publish(f[0], b"to a held filter", qos=1)
    # One session queue: were the first routed, it would come first.
    p = raw.expect(PUBLISH)
    assert (p.topic, p.payload, p.qos) == (f[0], b"to a held filter", 0)

    raw.send(unsubscribe_packet(4, [f[1]], level))
    raw.expect(UNSUBACK)
    assert raw.subscribe(5, [(f[3], 1)]) == [1]
    pub.publish(f[3], b"now held", qos=1)
    p = raw.expect(PUBLISH)
    assert (p.topic, p.payload) == (f[3], b"now held")
    assert_broker_serves(clients, b)


def test_subscription_count_of_a_persistent_session_survives_reconnect(make_broker, clients):
    """A v5 session holding max_subscriptions_per_session = 2 filters,
    resumed on a new connection: a new filter is still refused with 0x97."""
    b = make_broker(mqtt_options=["max_subscriptions_per_session = 2"])
    cid, base = uid("c"), uid()
    raw = clients.raw(b, 5)
    assert raw.connect_persistent(cid).reason == 0
    assert raw.subscribe(1, [(base + "/a", 1), (base + "/b", 1)]) == [1, 1]
    raw.send(packet(DISCONNECT, 0, b""))
    assert raw.recv_until_closed() == []
    again = clients.raw(b, 5)
    ack = again.connect_persistent(cid)
    assert (ack.reason, ack.session_present) == (0, True)
    assert again.subscribe(2, [(base + "/c", 1), (base + "/a", 1)]) == [QUOTA_EXCEEDED, 1]
    again.send(disconnect_ending_session())


# --- refusals a writing client can read ----------------------------------------------


def test_v5_client_flooding_past_receive_maximum_reads_disconnect_0x93(make_broker, clients):
    """receive_maximum = 4 (told in CONNACK); a client sends 24 QoS 2
    PUBLISHes of 32 KB in one write without reading: its write completes
    (no broken pipe), and it then reads PUBRECs (in order, at most 4) and
    a DISCONNECT 0x93 Receive Maximum exceeded, then the close. Exactly the
    first 4 messages were routed."""
    b = make_broker(mqtt_options=["receive_maximum = 4"])
    topic = uid() + "/flood"
    watcher = clients.connect(b, version=V5)
    assert watcher.subscribe(topic, qos=1) == [1]
    raw = clients.raw(b, 5)
    ack = raw.connect(uid("c"))
    assert (ack.reason, ack.props["ReceiveMaximum"]) == (0, 4)
    flood = b"".join(
        publish_packet(topic, struct.pack(">H", pid) + bytes(32 * KiB), qos=2, pid=pid, version=5)
        for pid in range(1, 4 + 20 + 1)
    )
    raw.send(flood)  # raises on a broken pipe / reset
    *recs, last = raw.recv_until_closed()
    assert [p.kind for p in recs] == [PUBREC] * len(recs), recs
    assert [raw.parse(p)[:2] for p in recs] == [(pid, 0) for pid in range(1, len(recs) + 1)]
    assert len(recs) <= 4
    assert last.kind == DISCONNECT, last
    reason, props = raw.parse(last)
    assert (reason, props.get("ReasonString")) == (
        RECEIVE_MAXIMUM_EXCEEDED,
        "receive maximum exceeded",
    )

    pub = clients.connect(b, version=V5)
    pub.publish(topic, b"fence", qos=1)
    got = watcher.wait_messages(5)
    assert [m.payload[:2] for m in got[:4]] == [struct.pack(">H", pid) for pid in range(1, 5)]
    assert [m.payload for m in got[4:]] == [b"fence"]
    assert_broker_serves(clients, b, V5)


@LEVELS
def test_mqtt_refused_login_pipelined_with_publishes_reads_its_connack(
    module_broker, clients, level
):
    """A CONNECT with a wrong password followed at once by 512 KB of
    PUBLISHes in the same write: the write completes and the client reads
    CONNACK bad credentials (0x86 / 4), then the close."""
    data = connect_packet(uid("c"), version=level, username="guest", password="wrong")
    data += b"".join(
        publish_packet(uid() + "/t", bytes(32 * KiB), version=level) for _ in range(16)
    )
    raw = clients.raw(module_broker, level)
    raw.send(data)
    expected = BAD_CREDENTIALS if level == 5 else V3_BAD_CREDENTIALS
    assert connack_then_close(raw) == expected
    assert_broker_serves(clients, module_broker)


def test_amqp_bad_frame_followed_by_more_data_reads_connection_close_501(module_broker, names):
    """After the handshake a frame with a bad frame-end octet, then 512 KB
    of body frames in the same write: the write completes and the client
    reads connection.close 501; after close-ok the socket closes."""
    with AmqpRawClient(module_broker.amqp_port) as c:
        c.handshake()
        c.open_channel(1)
        bad = amqp_raw.frame(
            amqp_raw.FRAME_METHOD,
            1,
            struct.pack(">HH", *amqp_raw.QUEUE_DECLARE) + b"\x00\x00" + amqp_raw.shortstr("q"),
            end=0x00,
        )
        c.send(bad + b"".join(amqp_raw.body_frame(1, bytes(32 * KiB)) for _ in range(16)))
        close = c.expect_connection_close(timeout=10)
        assert (close.reply_code, close.reply_text) == (
            FRAME_ERROR,
            "FRAME_ERROR - malformed frame: missing frame-end octet",
        )
        c.send_close_ok()
        assert amqp_frames_until_closed(c) == []
    assert_amqp_serves(module_broker, names("q"))


def test_amqp_refused_login_pipelined_with_the_handshake_reads_403(module_broker, names):
    """Protocol header, start-ok with a wrong password, tune-ok, open and
    512 KB more in one write, nothing read first: the write completes and
    the client reads connection.start, then connection.close 403."""
    open_args = amqp_raw.shortstr("/") + amqp_raw.shortstr("") + b"\x00"
    with AmqpRawClient(module_broker.amqp_port) as c:
        data = (
            amqp_raw.PROTOCOL_HEADER
            + amqp_raw.start_ok_frame(password="wrong")
            + amqp_raw.method_frame(0, amqp_raw.CONNECTION_TUNE_OK, struct.pack(">HIH", 0, 0, 0))
            + amqp_raw.method_frame(0, amqp_raw.CONNECTION_OPEN, open_args)
            + b"".join(amqp_raw.frame(amqp_raw.FRAME_HEARTBEAT, 0, b"") for _ in range(8))
            + b"".join(amqp_raw.body_frame(1, bytes(32 * KiB)) for _ in range(16))
        )
        c.send(data)
        c.expect(0, amqp_raw.CONNECTION_START)
        frames = amqp_frames_until_closed(c)
        close = only_connection_close(frames)
        assert (close.reply_code, close.reply_text) == (ACCESS_REFUSED, LOGIN_REFUSED)
    assert_amqp_serves(module_broker, names("q"))
