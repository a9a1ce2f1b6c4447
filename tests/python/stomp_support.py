"""Helpers shared by the STOMP tests.

- `Client`: a stomp.py connection (1.0, 1.1 or 1.2) with a `Listener`
  that collects every frame the broker sends, and bounded waits for
  CONNECTED, MESSAGE, RECEIPT, ERROR and the end of the connection.
  Bodies are bytes (stomp.py's auto_decode is off). `ack`/`nack` take the
  MESSAGE frame and use the header each version acknowledges by.
- `RawStomp`: a hand-written STOMP client on a plain socket, for what
  stomp.py will not send (malformed frames, frames before CONNECT, exact
  header bytes) and for reading exactly what the broker writes (heart-beat
  EOLs, the socket closing).
- `stomp_clients`: a fixture that makes both kinds and closes them at
  teardown (import it into a test module:
  `from stomp_support import stomp_clients`).

Every wait is bounded (`TIMEOUT` unless told); a wait that runs out fails
the test with what did arrive.

stomp.py's 1.2 connection always sends `host:<the address it connected
to>` unless the connection was made with `vhost=...` (headers passed to
`connect` cannot override it), so `Client` passes `vhost="/"` for 1.1 and
1.2 unless told otherwise.
"""

import socket
import threading
import time
import uuid
from collections import namedtuple

import pytest
import stomp

from net_support import tcp_connect, wait_until  # noqa: F401 (re-exported)

TIMEOUT = 5.0
VERSIONS = ["1.0", "1.1", "1.2"]
ALL_VERSIONS = pytest.mark.parametrize("version", VERSIONS)


def uid(prefix="t"):
    """A short word no other test uses (queue names, topic words)."""
    return prefix + uuid.uuid4().hex[:12]


# ---------------------------------------------------------------------------
# stomp.py
# ---------------------------------------------------------------------------


class Listener(stomp.ConnectionListener):
    """Collects the frames of one connection (stomp.py's receiver thread
    calls it); tests wait on it with bounded waits."""

    def __init__(self):
        self.cond = threading.Condition()
        self.frames = []  # every CONNECTED, MESSAGE, RECEIPT, ERROR, in order
        self.heartbeats = 0
        self.disconnected = False

    def _add(self, frame):
        with self.cond:
            self.frames.append(frame)
            self.cond.notify_all()

    def on_connected(self, frame):
        self._add(frame)

    def on_message(self, frame):
        self._add(frame)

    def on_receipt(self, frame):
        self._add(frame)

    def on_error(self, frame):
        self._add(frame)

    def on_heartbeat(self):
        with self.cond:
            self.heartbeats += 1
            self.cond.notify_all()

    def on_disconnected(self):
        with self.cond:
            self.disconnected = True
            self.cond.notify_all()

    def of(self, cmd):
        with self.cond:
            return [f for f in self.frames if f.cmd == cmd]

    def wait(self, predicate, timeout, what):
        with self.cond:
            ok = self.cond.wait_for(predicate, timeout)
            if not ok:
                got = [(f.cmd, f.headers, f.body) for f in self.frames]
                pytest.fail(f"no {what} within {timeout} s; frames so far: {got!r}")


class Client:
    """One stomp.py connection. `version`: "1.0", "1.1" or "1.2".
    `vhost`: the `host` header for 1.1/1.2 ("/" unless told; None: what
    stomp.py sends by default, the address)."""

    def __init__(self, broker, version="1.2", heartbeats=(0, 0), vhost="/", port=None, ssl=None):
        """`port`: another listener than the broker's STOMP one (stomps);
        `ssl`: stomp.py's set_ssl arguments for it (ca_certs, cert_file,
        key_file)."""
        self.broker = broker
        self.version = version
        self.listener = Listener()
        host_and_ports = [("127.0.0.1", port or broker.stomp_port)]
        kw = dict(
            host_and_ports=host_and_ports,
            auto_decode=False,
            reconnect_attempts_max=1,
            try_loopback_connect=False,
        )
        if version == "1.0":
            self.conn = stomp.Connection10(**kw)
        elif version == "1.1":
            self.conn = stomp.Connection11(heartbeats=heartbeats, vhost=vhost, **kw)
        else:
            self.conn = stomp.Connection12(heartbeats=heartbeats, vhost=vhost, **kw)
        if ssl is not None:
            self.conn.set_ssl(for_hosts=host_and_ports, **ssl)
        self.conn.set_listener("collector", self.listener)
        self.connected_frame = None

    # connection ---------------------------------------------------------------

    def connect(self, login="guest", passcode="guest", headers=None, timeout=TIMEOUT):
        """Sends CONNECT (1.0) or STOMP (1.1, 1.2) and waits for CONNECTED
        or ERROR; returns that frame. `login=None`: no login/passcode."""
        if login is None:
            passcode = None
        self.conn.connect(login, passcode, wait=False, headers=dict(headers or {}))
        self.listener.wait(
            lambda: any(f.cmd in ("CONNECTED", "ERROR") for f in self.listener.frames),
            timeout,
            "CONNECTED or ERROR",
        )
        frame = [f for f in self.listener.frames if f.cmd in ("CONNECTED", "ERROR")][0]
        if frame.cmd == "CONNECTED":
            self.connected_frame = frame
        return frame

    def connected(self, **kw):
        """`connect` that must succeed."""
        f = self.connect(**kw)
        assert f.cmd == "CONNECTED", (f.cmd, f.headers, f.body)
        return self

    @property
    def is_connected(self):
        return self.conn.is_connected() and not self.listener.disconnected

    def disconnect(self, receipt=None, timeout=TIMEOUT):
        """DISCONNECT with a receipt; waits for the RECEIPT and for the
        broker closing the connection. Returns the RECEIPT frame."""
        rid = receipt or uid("disc")
        self.conn.send_frame("DISCONNECT", {"receipt": rid})
        r = self.wait_receipt(rid, timeout)
        self.wait_disconnected(timeout)
        self._close_socket()
        return r

    def drop(self, timeout=TIMEOUT):
        """Closes the TCP connection without DISCONNECT."""
        self._close_socket()
        self.wait_disconnected(timeout)

    def _close_socket(self):
        try:
            self.conn.transport.disconnect_socket()
        except Exception:
            pass

    def close(self):
        """Teardown: DISCONNECT if still connected, else just the socket."""
        if self.is_connected:
            try:
                self.disconnect(timeout=2.0)
            except BaseException:
                pass
        self._close_socket()

    def wait_disconnected(self, timeout=TIMEOUT):
        self.listener.wait(lambda: self.listener.disconnected, timeout, "disconnection")

    # frames out ---------------------------------------------------------------

    def frame(self, cmd, headers=None, body=b""):
        """Any frame, as given (stomp.py escapes headers for 1.1/1.2)."""
        self.conn.send_frame(cmd, dict(headers or {}), body)

    def send(self, destination, body, headers=None, receipt=False, content_length=True):
        """SEND `body` (bytes or str) with `headers` (a dict); a
        `content-length` header unless `content_length=False`.
        `receipt=True` waits for the RECEIPT and returns it."""
        h = dict(headers or {})
        h["destination"] = destination
        if isinstance(body, str):
            body = body.encode()
        if content_length and body and "content-length" not in h:
            h["content-length"] = len(body)
        rid = None
        if receipt:
            rid = uid("send")
            h["receipt"] = rid
        self.conn.send_frame("SEND", h, body)
        if receipt:
            return self.wait_receipt(rid)
        return None

    def subscribe(self, destination, id=None, ack="auto", headers=None, receipt=True):
        """SUBSCRIBE (waits for its RECEIPT unless `receipt=False`, so the
        queue and its bindings exist when it returns). Returns the id
        (1.1/1.2: a new one unless given; 1.0: None unless given)."""
        h = dict(headers or {})
        h["destination"] = destination
        if id is None and self.version != "1.0":
            id = uid("sub")
        if id is not None:
            h["id"] = id
        if ack is not None:
            h["ack"] = ack
        rid = None
        if receipt:
            rid = uid("subr")
            h["receipt"] = rid
        self.conn.send_frame("SUBSCRIBE", h)
        if receipt:
            self.wait_receipt(rid)
        return id

    def unsubscribe(self, id, headers=None, receipt=True):
        h = dict(headers or {})
        h["id"] = id
        rid = None
        if receipt:
            rid = uid("unsr")
            h["receipt"] = rid
        self.conn.send_frame("UNSUBSCRIBE", h)
        if receipt:
            self.wait_receipt(rid)

    def ack_headers(self, msg):
        """The headers that name `msg` in ACK/NACK for this version."""
        if self.version == "1.2":
            return {"id": msg.headers["ack"]}
        h = {"message-id": msg.headers["message-id"]}
        if self.version == "1.1":
            h["subscription"] = msg.headers["subscription"]
        return h

    def _settle(self, cmd, msg, transaction, receipt, extra):
        h = self.ack_headers(msg)
        h.update(extra)
        if transaction is not None:
            h["transaction"] = transaction
        rid = None
        if receipt:
            rid = uid("ackr")
            h["receipt"] = rid
        self.conn.send_frame(cmd, h)
        if receipt:
            self.wait_receipt(rid)

    def ack(self, msg, transaction=None, receipt=True, **extra):
        self._settle("ACK", msg, transaction, receipt, extra)

    def nack(self, msg, transaction=None, receipt=True, **extra):
        self._settle("NACK", msg, transaction, receipt, extra)

    def _tx(self, cmd, tx, receipt):
        h = {"transaction": tx}
        rid = None
        if receipt:
            rid = uid(cmd.lower())
            h["receipt"] = rid
        self.conn.send_frame(cmd, h)
        if receipt:
            self.wait_receipt(rid)

    def begin(self, tx, receipt=True):
        self._tx("BEGIN", tx, receipt)

    def commit(self, tx, receipt=True):
        self._tx("COMMIT", tx, receipt)

    def abort(self, tx, receipt=True):
        self._tx("ABORT", tx, receipt)

    # frames in ----------------------------------------------------------------

    @property
    def messages(self):
        return self.listener.of("MESSAGE")

    @property
    def bodies(self):
        return [m.body for m in self.messages]

    @property
    def errors(self):
        return self.listener.of("ERROR")

    def wait_messages(self, n, timeout=TIMEOUT):
        """Waits until at least `n` MESSAGE frames arrived; returns the
        first `n`."""
        self.listener.wait(lambda: len(self.listener.of("MESSAGE")) >= n, timeout, f"{n} MESSAGEs")
        return self.messages[:n]

    def exactly(self, n, settle=0.3, timeout=TIMEOUT):
        """Waits for `n` MESSAGEs, then `settle` seconds more, and checks
        that no more came; returns them."""
        self.wait_messages(n, timeout)
        time.sleep(settle)
        got = self.messages
        assert len(got) == n, [(m.headers, m.body) for m in got]
        return got

    def wait_receipt(self, rid, timeout=TIMEOUT):
        def seen():
            return any(
                f.cmd in ("RECEIPT", "ERROR") and f.headers.get("receipt-id") == rid
                for f in self.listener.frames
            ) or any(f.cmd == "ERROR" for f in self.listener.frames)

        self.listener.wait(seen, timeout, f"RECEIPT {rid}")
        for f in self.listener.frames:
            if f.cmd == "RECEIPT" and f.headers.get("receipt-id") == rid:
                return f
        e = self.listener.of("ERROR")[0]
        pytest.fail(f"ERROR instead of RECEIPT {rid}: {e.headers!r} {e.body!r}")

    def wait_error(self, timeout=TIMEOUT):
        self.listener.wait(lambda: bool(self.listener.of("ERROR")), timeout, "ERROR")
        return self.listener.of("ERROR")[0]


# ---------------------------------------------------------------------------
# raw sockets
# ---------------------------------------------------------------------------

Frame = namedtuple("Frame", "cmd headers header_list body")
Frame.__doc__ = """A frame the broker sent: `headers` the first value of
each name (unescaped), `header_list` every (name, value) in order."""

CLOSED = "closed"


def escape(s):
    return s.replace("\\", "\\\\").replace("\r", "\\r").replace("\n", "\\n").replace(":", "\\c")


def unescape(s):
    out, i = [], 0
    table = {"n": "\n", "r": "\r", "c": ":", "\\": "\\"}
    while i < len(s):
        if s[i] == "\\" and i + 1 < len(s) and s[i + 1] in table:
            out.append(table[s[i + 1]])
            i += 2
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


def build(cmd, headers=(), body=b"", content_length=None, escape_headers=False):
    """The bytes of one frame. `headers`: dict or (name, value) pairs,
    written as given (escaped only with `escape_headers`).
    `content_length=True` adds the header from the body."""
    if isinstance(headers, dict):
        headers = list(headers.items())
    if isinstance(body, str):
        body = body.encode()
    out = [cmd.encode() + b"\n"]
    for k, v in headers:
        if escape_headers:
            k, v = escape(k), escape(v)
        k = k.encode() if isinstance(k, str) else k
        v = v.encode() if isinstance(v, str) else v
        out.append(k + b":" + v + b"\n")
    if content_length:
        out.append(b"content-length:%d\n" % len(body))
    out.append(b"\n")
    out.append(body)
    out.append(b"\0")
    return b"".join(out)


class RawStomp:
    """STOMP on a plain socket."""

    def __init__(self, port, timeout=TIMEOUT):
        self.sock = tcp_connect(port, timeout)
        self.buf = b""
        self.eof = False
        self.heartbeats = 0  # EOLs read between frames
        self.escapes = True  # header escapes: not in 1.0 (set by `connect`)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def send(self, data):
        self.sock.sendall(data)

    def send_frame(self, cmd, headers=(), body=b"", **kw):
        self.send(build(cmd, headers, body, **kw))

    def connect(self, version="1.2", login="guest", passcode="guest", host="/", heart_beat=None, extra=()):
        """CONNECT with these headers (None leaves a header out); returns
        the reply frame (CONNECTED or ERROR)."""
        h = []
        if version is not None:
            h.append(("accept-version", version))
        if host is not None:
            h.append(("host", host))
        if login is not None:
            h.append(("login", login))
        if passcode is not None:
            h.append(("passcode", passcode))
        if heart_beat is not None:
            h.append(("heart-beat", heart_beat))
        h += list(extra)
        self.send_frame("CONNECT", h)
        f = self.read_frame()
        assert f is not CLOSED, "broker closed the connection without answering CONNECT"
        if f.cmd == "CONNECTED":
            self.escapes = f.headers.get("version") != "1.0"
        return f

    def connected(self, **kw):
        f = self.connect(**kw)
        assert f.cmd == "CONNECTED", f
        return self

    def _fill(self, deadline):
        """Reads more bytes; False at end of stream."""
        if self.eof:
            return False
        left = deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout()
        self.sock.settimeout(left)
        try:
            chunk = self.sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            chunk = b""
        if not chunk:
            self.eof = True
            return False
        self.buf += chunk
        return True

    def read_frame(self, timeout=TIMEOUT):
        """The next frame, or CLOSED if the broker closed the connection
        first. Fails the test if neither happens within `timeout`."""
        deadline = time.monotonic() + timeout
        try:
            return self._read_frame(deadline)
        except socket.timeout:
            pytest.fail(f"no frame within {timeout} s (buffered: {self.buf[:200]!r})")

    def _read_frame(self, deadline):
        while True:
            # heart-beat EOLs between frames
            while self.buf[:1] == b"\n" or self.buf[:2] == b"\r\n":
                self.buf = self.buf[1:] if self.buf[:1] == b"\n" else self.buf[2:]
                self.heartbeats += 1
            if self.buf == b"\r":
                if not self._fill(deadline):
                    return CLOSED
                continue
            end = self.buf.find(b"\n\n")
            end_crlf = self.buf.find(b"\r\n\r\n")
            if end < 0 and end_crlf < 0:
                if not self._fill(deadline):
                    return CLOSED
                continue
            if end < 0 or (0 <= end_crlf < end):
                head, body_start = self.buf[:end_crlf], end_crlf + 4
            else:
                head, body_start = self.buf[:end], end + 2
            lines = head.decode("utf-8", "replace").replace("\r\n", "\n").split("\n")
            cmd = lines[0]
            pairs = []
            for line in lines[1:]:
                k, _, v = line.partition(":")
                if cmd != "CONNECTED" and self.escapes:
                    k, v = unescape(k), unescape(v)
                pairs.append((k, v))
            headers = {}
            for k, v in pairs:
                headers.setdefault(k, v)
            if "content-length" in headers:
                n = int(headers["content-length"])
                while len(self.buf) < body_start + n + 1:
                    if not self._fill(deadline):
                        return CLOSED
                body = self.buf[body_start : body_start + n]
                assert self.buf[body_start + n : body_start + n + 1] == b"\0", "no NUL after body"
                self.buf = self.buf[body_start + n + 1 :]
            else:
                while self.buf.find(b"\0", body_start) < 0:
                    if not self._fill(deadline):
                        return CLOSED
                nul = self.buf.find(b"\0", body_start)
                body = self.buf[body_start:nul]
                self.buf = self.buf[nul + 1 :]
            return Frame(cmd, headers, pairs, body)

    def expect(self, cmd, timeout=TIMEOUT):
        f = self.read_frame(timeout)
        assert f is not CLOSED, f"connection closed, expected {cmd}"
        assert f.cmd == cmd, f
        return f

    def wait_closed(self, timeout=TIMEOUT):
        """Reads until the broker closes the connection; returns the frames
        read on the way. Fails the test if it stays open `timeout` s."""
        deadline = time.monotonic() + timeout
        frames = []
        try:
            while True:
                f = self._read_frame(deadline)
                if f is CLOSED:
                    return frames
                frames.append(f)
        except socket.timeout:
            pytest.fail(f"connection still open after {timeout} s; frames read: {frames!r}")

    def expect_error_and_close(self, timeout=TIMEOUT):
        """The next frame is an ERROR and then the connection closes;
        returns the ERROR."""
        f = self.read_frame(timeout)
        assert f is not CLOSED, "connection closed without an ERROR frame"
        assert f.cmd == "ERROR", f
        rest = self.wait_closed(timeout)
        assert rest == [], rest
        return f


# ---------------------------------------------------------------------------
# fixture
# ---------------------------------------------------------------------------


class Clients:
    def __init__(self):
        self.made = []

    def __call__(self, broker, version="1.2", **kw):
        """A `Client`, not connected yet."""
        c = Client(broker, version, **kw)
        self.made.append(c)
        return c

    def connect(self, broker, version="1.2", login="guest", passcode="guest", headers=None, **kw):
        """A connected `Client`."""
        return self(broker, version, **kw).connected(login=login, passcode=passcode, headers=headers)

    def raw(self, broker_or_port, timeout=TIMEOUT):
        port = getattr(broker_or_port, "stomp_port", broker_or_port)
        r = RawStomp(port, timeout)
        self.made.append(r)
        return r

    def close_all(self):
        for c in self.made:
            try:
                c.close()
            except BaseException:
                pass


@pytest.fixture
def stomp_clients():
    """Makes `Client`s (`stomp_clients(broker, "1.1")`, connected with
    `stomp_clients.connect(broker, ...)`) and `RawStomp`s
    (`stomp_clients.raw(broker)`); closes them all at teardown."""
    c = Clients()
    yield c
    c.close_all()


def assert_serves(broker, clients, queue=None):
    """A fresh stomp.py client can still send and receive."""
    q = queue or uid("alive")
    c = clients.connect(broker)
    c.subscribe(f"/queue/{q}")
    c.send(f"/queue/{q}", b"still alive", receipt=True)
    assert [m.body for m in c.wait_messages(1)] == [b"still alive"]
    c.disconnect()
