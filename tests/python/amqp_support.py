"""Small pika helpers shared by the AMQP tests: bounded event loops,
draining a queue with basic.get, catching a broker-closed channel,
checking that a broker still serves a fresh connection, and
`ConfirmPublisher`, a publisher whose confirms the test waits for (or
does not) on its own terms.

Also `Typed`: header values of the AMQP field types pika cannot choose
(it writes every int as long-int or long-long-int and has no float).
Importing this module teaches pika's field-table codec (`pika.data`, for
the whole process) to write `Typed` values and Python floats (as double),
and to read float and double values as floats (pika 1.x truncates them
to ints)."""

import re
import struct
import time

import pika
import pika.data
import pika.exceptions
import pytest
from pika.exceptions import ChannelClosedByBroker


class Typed:
    """One AMQP field value of an explicit type, for pika's `headers`:
    `Typed(tag, value)` with the field-type tag as RabbitMQ reads it:
    "b" short-short-int, "B" short-short-uint, "s" short-int, "u"
    short-uint, "I" long-int, "i" long-uint, "l" long-long-int, "f" float,
    "d" double, "T" timestamp (seconds), "D" decimal (value: (scale,
    unscaled)), "S" long string (value: bytes, need not be UTF-8), "x" byte
    array. Nests in dicts and lists like any pika header value."""

    FORMATS = {
        "b": ">b", "B": ">B", "s": ">h", "u": ">H", "I": ">i", "i": ">I",
        "l": ">q", "f": ">f", "d": ">d", "T": ">Q",
    }

    def __init__(self, tag, value):
        assert tag in self.FORMATS or tag in "DSx", tag
        self.tag, self.value = tag, value

    def encode(self):
        tag = self.tag.encode()
        if self.tag == "D":
            scale, unscaled = self.value
            return tag + struct.pack(">BI", scale, unscaled)
        if self.tag in "Sx":
            data = self.value.encode() if isinstance(self.value, str) else self.value
            return tag + struct.pack(">I", len(data)) + data
        return tag + struct.pack(self.FORMATS[self.tag], self.value)

    def __repr__(self):
        return f"Typed({self.tag!r}, {self.value!r})"


_pika_encode_value = pika.data.encode_value
_pika_decode_value = pika.data.decode_value


def _encode_value(pieces, value):
    if isinstance(value, float):
        value = Typed("d", value)
    if isinstance(value, Typed):
        data = value.encode()
        pieces.append(data)
        return len(data)
    return _pika_encode_value(pieces, value)


def _decode_value(encoded, offset):
    kind = encoded[offset : offset + 1]
    if kind in (b"f", b"d"):
        fmt = ">f" if kind == b"f" else ">d"
        return struct.unpack_from(fmt, encoded, offset + 1)[0], offset + 1 + struct.calcsize(fmt)
    return _pika_decode_value(encoded, offset)


if getattr(pika.data.encode_value, "__module__", None) != __name__:
    # pika.data's table codec looks both names up as module globals, so
    # nested tables and arrays go through these too.
    pika.data.encode_value = _encode_value
    pika.data.decode_value = _decode_value


class Collector:
    """A basic_consume callback that records (method, properties, body)."""

    def __init__(self):
        self.deliveries = []

    def __call__(self, ch, method, properties, body):
        self.deliveries.append((method, properties, body))

    @property
    def bodies(self):
        return [d[2] for d in self.deliveries]

    def __len__(self):
        return len(self.deliveries)


def wait_until(conn, predicate, timeout=5.0, step=0.05):
    """Processes pika events until `predicate()` holds or `timeout` passes;
    returns whether it held."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        conn.process_data_events(time_limit=step)
    return True


def settle(conn, seconds=0.3):
    """Processes events for a fixed time: lets anything that should not
    arrive have its chance to arrive."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.05)


def get_all(ch, queue, limit=10_000):
    """Every message left in `queue`, by basic.get with auto-ack:
    [(method, properties, body)]."""
    out = []
    for _ in range(limit):
        method, props, body = ch.basic_get(queue, auto_ack=True)
        if method is None:
            return out
        out.append((method, props, body))
    raise AssertionError(f"{queue} still not empty after {limit} gets")



def take_exactly(ch, queue, n, timeout=5):
    """Takes `n` messages from `queue` (basic.get, auto ack), waiting up to
    `timeout` for them, and checks that no more are there; returns
    [(method, properties, body)]."""
    from net_support import wait_until

    got = []

    def take():
        while True:
            method, props, body = ch.basic_get(queue, auto_ack=True)
            if method is None:
                return len(got) >= n
            got.append((method, props, body))

    assert wait_until(take, timeout, step=0.05), f"{len(got)} of {n} messages: {got}"
    assert len(got) == n, got
    return got

def bodies(ch, queue):
    return [b for _, _, b in get_all(ch, queue)]


def message_count(ch, queue):
    """Ready messages, from a passive queue.declare."""
    return ch.queue_declare(queue, passive=True).method.message_count


def channel_error(fn, *args, **kwargs):
    """Calls `fn`, which must make the broker close the channel; returns
    (reply_code, reply_text)."""
    with pytest.raises(ChannelClosedByBroker) as e:
        fn(*args, **kwargs)
    return e.value.reply_code, e.value.reply_text


def publish(ch, queue, body, **props):
    """Publishes `body` to the default exchange for `queue`."""
    ch.basic_publish(
        "", queue, body, properties=pika.BasicProperties(**props) if props else None
    )


def assert_broker_serves(broker, queue):
    """A new pika connection can still declare, publish and get."""
    conn = broker.connect()
    try:
        ch = conn.channel()
        ch.queue_declare(queue)
        publish(ch, queue, b"still serving")
        assert [b for _, _, b in get_all(ch, queue)] == [b"still serving"]
    finally:
        conn.close()


class ConfirmPublisher:
    """A pika `SelectConnection` with one channel in confirm mode, driven
    only inside `run_until`: `publish` never waits, so a test can publish
    and then watch a confirm NOT arrive (a blocked connection), or keep a
    window of publishes outstanding. Records, by delivery tag (1, 2, ...
    in publish order): `acked`, `nacked`; and `events`: ("blocked",
    reason) / ("unblocked",) as the broker sent them; `channel_closed` /
    `connection_closed`: the (reply_code, reply_text) of a close by the
    broker (or the exception that ended the connection).

    pika's blocked-connection timeout is off (a test decides how long a
    block may last)."""

    def __init__(self, broker, timeout=10.0):
        self.acked, self.nacked = set(), set()
        self.events = []
        self.channel = None
        self.channel_closed = None
        self.connection_closed = None
        self.next_tag = 1
        self._ready = False
        self.conn = pika.SelectConnection(
            broker.params(blocked_connection_timeout=None),
            on_open_callback=self._on_open,
            on_open_error_callback=self._on_connection_closed,
            on_close_callback=self._on_connection_closed,
        )
        self.conn.add_on_connection_blocked_callback(
            lambda conn, frame: self.events.append(("blocked", frame.method.reason))
        )
        self.conn.add_on_connection_unblocked_callback(
            lambda conn, frame: self.events.append(("unblocked",))
        )
        ok = self.run_until(lambda: self._ready or self.failed, timeout)
        assert ok and self._ready, f"confirm channel not open: {self.connection_closed}"

    # pika callbacks --------------------------------------------------------

    def _on_open(self, conn):
        conn.channel(on_open_callback=self._on_channel)

    def _on_channel(self, ch):
        self.channel = ch
        ch.add_on_close_callback(self._on_channel_closed)
        ch.confirm_delivery(ack_nack_callback=self._on_confirm, callback=self._on_select_ok)

    def _on_select_ok(self, frame):
        self._ready = True

    def _on_confirm(self, frame):
        m = frame.method
        into = self.acked if isinstance(m, pika.spec.Basic.Ack) else self.nacked
        tags = [m.delivery_tag]
        if m.multiple:
            tags = [t for t in self.outstanding() if t <= m.delivery_tag]
        into.update(tags)

    @staticmethod
    def _reason(reason):
        if isinstance(reason, (pika.exceptions.ChannelClosed, pika.exceptions.ConnectionClosed)):
            return (reason.reply_code, reason.reply_text)
        return reason

    def _on_channel_closed(self, ch, reason):
        self.channel_closed = self._reason(reason)

    def _on_connection_closed(self, conn, reason):
        self.connection_closed = self._reason(reason)

    # the test's side ---------------------------------------------------------

    @property
    def failed(self):
        """The channel or the connection is gone."""
        return self.channel_closed is not None or self.connection_closed is not None

    def outstanding(self):
        """Delivery tags published but neither acked nor nacked."""
        return [
            t for t in range(1, self.next_tag) if t not in self.acked and t not in self.nacked
        ]

    def publish(self, exchange, routing_key, body, properties=None):
        """Hands one message to pika (written at the next `run_until`);
        returns its delivery tag."""
        self.channel.basic_publish(exchange, routing_key, body, properties)
        tag = self.next_tag
        self.next_tag += 1
        return tag

    def run_until(self, predicate, timeout):
        """Runs the connection's event loop until `predicate()` holds or
        `timeout` seconds pass; returns whether it held."""
        ioloop = self.conn.ioloop
        deadline = time.monotonic() + timeout
        while not predicate():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            stop = ioloop.call_later(min(left, 0.02), ioloop.stop)
            ioloop.start()
            ioloop.remove_timeout(stop)
        return True

    def run_for(self, seconds):
        """Runs the event loop for `seconds`: gives what must NOT arrive
        (a confirm while blocked) its chance to."""
        self.run_until(lambda: False, seconds)

    def close(self):
        """Closes the connection if it is still open (bounded)."""
        if self.conn.is_open:
            self.conn.close()
        if not self.conn.is_closed:
            self.run_until(lambda: self.conn.is_closed, 5.0)


# The broker's connection.close for a wrong password (RabbitMQ's text).
LOGIN_REFUSED = (
    "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN. "
    "For details see the broker logfile."
)

_CLOSED_BY_BROKER = re.compile(r"ConnectionClosedByBroker: \((\d+)\) (['\"])(.*)\2")


def login_refusal(error):
    """(reply_code, reply_text) of the connection.close that ended a pika
    connection attempt: `error` is a `ConnectionClosedByBroker`, or the
    heuristic error pika wraps one in during the handshake
    (`ProbableAuthenticationError`, `ProbableAccessDeniedError`), which
    keeps it only as text."""
    if isinstance(error, pika.exceptions.ConnectionClosedByBroker):
        return error.reply_code, error.reply_text
    m = _CLOSED_BY_BROKER.search(str(error))
    assert m, f"not a connection.close from the broker: {error!r}"
    return int(m.group(1)), m.group(3)
