"""The cross-protocol matrix of docs/interop.md with real clients: every
(publisher, consumer) pair of MQTT (paho, 3.1.1 and 5), AMQP 0-9-1 (pika)
and STOMP 1.2 (stomp.py), transient and persistent, with empty, binary
(NUL and 0xFF), UTF-8 and 1 MiB bodies.

For each message the publisher side builds the core message
docs/interop.md says the publish makes (`Core`); the consumer side says
what its protocol must show of it (`expect`) and compares that with what
it got (`view`), whole: every mapped field, and no field the consumer
protocol must not have. Batches are compared as exact lists, in publish order (one
publisher), and a fence message after the batch shows nothing came twice.

- `test_matrix`: the fields, the value texts of typed AMQP headers, the
  MQTT QoS a persistent or transient message gets.
- `test_publish_qos_header`: `x-mqtt-publish-qos` from AMQP and STOMP.
- `test_persistent_messages_survive`: persistent messages published
  (and confirmed) while a durable consumer is away, then a clean restart
  or a kill -9, then every message exactly once.
"""

import base64
import hashlib
import math
import random
import re
import time
from collections import namedtuple
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal

import pika
import pytest

import amqp_support
from amqp_support import Collector, Typed
from mqtt_support import V5, V311, persistent as mqtt_persistent, uid
from mqtt_support import clients as mqtt_clients  # noqa: F401 (fixture)
from stomp_support import stomp_clients  # noqa: F401 (fixture)

WAIT = 10.0  # bound on every wait for messages

BINARY = b"\x00\xff\x00binary\xff"
TEXT = "grüße aus Köln: 21,5 °C, 温度 ✓".encode()
BIG = random.Random(20240611).randbytes(1 << 20)
JSON = b'{"t": 21.5, "unit": "C"}'
BODIES = [b"", BINARY, TEXT, JSON]
FENCE = b"fence"

PROTOCOLS = ["mqtt311", "mqtt5", "amqp", "stomp"]


def text_headers(i):
    """User headers as MQTT and STOMP publish them: text, some of it
    looking like numbers and flags (it reaches AMQP as long strings)."""
    return [
        ("x-seq", str(i)),
        ("site", "north"),
        ("unit", "°C"),
        ("flag", "true"),
        ("count", "42"),
        ("ratio", "0.5"),
        ("empty", ""),
    ]


# --- matchers for values known only within bounds --------------------------------


class Between:
    """An integer (or, with `text`, its decimal text) in [lo, hi]."""

    def __init__(self, lo, hi, text=False):
        self.lo, self.hi, self.text = lo, hi, text

    def __eq__(self, other):
        if self.text:
            if not isinstance(other, str) or not re.fullmatch(r"-?[0-9]+", other):
                return False
            other = int(other)
        elif not isinstance(other, int) or isinstance(other, bool):
            return False
        return self.lo <= other <= self.hi

    def __repr__(self):
        return f"<{'text ' if self.text else ''}{self.lo}..{self.hi}>"


class Like:
    """A string matching `pattern` (fullmatch)."""

    def __init__(self, pattern):
        self.pattern = pattern

    def prefixed(self, prefix):
        return Like(re.escape(prefix) + self.pattern)

    def __eq__(self, other):
        return isinstance(other, str) and re.fullmatch(self.pattern, other) is not None

    def __repr__(self):
        return f"<like {self.pattern}>"


class AnyOrder:
    """The same items as `items`, in any order (for headers whose order
    docs/interop.md does not promise: an AMQP table's, a STOMP frame's)."""

    def __init__(self, items):
        self.items = list(items)

    def __eq__(self, other):
        return isinstance(other, list) and sorted(other) == sorted(self.items)

    def __repr__(self):
        return f"<any order {self.items!r}>"


class NaN:
    def __eq__(self, other):
        return isinstance(other, float) and math.isnan(other)

    def __repr__(self):
        return "<NaN>"


def prefixed(prefix, name):
    return name.prefixed(prefix) if isinstance(name, Like) else prefix + name


def short(body):
    """Bodies in comparisons: small ones as they are, large ones as length
    and digest (so a failing 1 MiB comparison stays readable)."""
    if len(body) <= 64:
        return body
    return f"<{len(body)} bytes sha256 {hashlib.sha256(body).hexdigest()[:16]}>"


# --- the typed AMQP headers and their text forms (docs/interop.md, Header values) ---

T_1700000000 = datetime.fromtimestamp(1700000000, timezone.utc)

# (name, value pika publishes, text for MQTT 5 / STOMP, what pika decodes)
TYPED = [
    ("t-bool", True, "true", True),
    ("t-false", False, "false", False),
    ("t-i8", Typed("b", -8), "-8", -8),
    ("t-u8", Typed("B", 200), "200", 200),
    ("t-i16", Typed("s", -300), "-300", -300),
    ("t-u16", Typed("u", 60000), "60000", 60000),
    ("t-i32", -70000, "-70000", -70000),
    ("t-u32", Typed("i", 4000000000), "4000000000", 4000000000),
    ("t-i64", -9000000000, "-9000000000", -9000000000),
    ("t-f32", Typed("f", 0.5), "0.5", 0.5),
    ("t-f64", 2.5e-300, "2.5e-300", 2.5e-300),
    ("t-f64-one", 1.0, "1.0", 1.0),
    ("t-nan", float("nan"), "NaN", NaN()),
    ("t-neg-inf", float("-inf"), "-inf", float("-inf")),
    ("t-decimal", Typed("D", (2, 150)), "1.50", Decimal("1.50")),
    ("t-str", "héllo", "héllo", "héllo"),
    ("t-str-bin", Typed("S", b"\x00\xff"), "AP8=", b"\x00\xff"),
    ("t-timestamp", T_1700000000, "1700000000", T_1700000000),
    ("t-bytes", b"\x01\x02\x03", "AQID", b"\x01\x02\x03"),
    ("t-void", None, "", None),
    ("t-array", [1, "a", True], '[1,"a",true]', [1, "a", True]),
    ("t-table", {"s": "x", "n": 1}, '{"n":1,"s":"x"}', {"s": "x", "n": 1}),
    (
        "t-nested",
        {
            "v": None,
            "d": Typed("D", (2, 150)),
            "b": b"\x01\x02\x03",
            "f": float("nan"),
            "a": [Typed("S", b"\x00\xff"), 0.1, T_1700000000],
            "t": {"z": True},
        },
        '{"a":["AP8=",0.1,1700000000],"b":"AQID","d":"1.50","f":"NaN","t":{"z":true},"v":null}',
        {
            "v": None,
            "d": Decimal("1.50"),
            "b": b"\x01\x02\x03",
            "f": NaN(),
            "a": [b"\x00\xff", 0.1, T_1700000000],
            "t": {"z": True},
        },
    ),
]


# --- the core message ---------------------------------------------------------------

# One header of the core message: its text form (MQTT 5 user property,
# STOMP header) and what pika decodes from its AMQP form.
H = namedtuple("H", "text amqp")


def text_header(value):
    """A header published as text (MQTT user property, STOMP header): a
    long string everywhere."""
    return H(value, value)


@dataclass
class Core:
    """What docs/interop.md says the core holds after a publish."""

    body: bytes
    persistent: bool
    qos: int  # the published QoS (MQTT subscribers get min(this, granted))
    content_type: str = None
    content_encoding: str = None
    correlation_id: str = None
    reply_to: object = None  # the core address (str, or Like)
    expiration: tuple = None  # TTL in ms: (lo, hi)
    timestamp: object = None  # seconds (int, or Between)
    priority: int = None
    message_id: str = None
    type: str = None
    user_id: str = None
    app_id: str = None
    headers: list = field(default_factory=list)  # [(name, H)], in order
    # MQTT user properties keep their order through the core; AMQP tables
    # and STOMP frames promise none.
    ordered: bool = False

    def header(self, name):
        return next((h for n, h in self.headers if n == name), None)


@dataclass
class Route:
    """Where a test's messages go and how each protocol names that place."""

    mqtt_topic: str  # what MQTT publishes to (and subscribes to, for topics)
    exchange: str  # AMQP publish exchange
    key: str  # AMQP routing key
    stomp_dest: str  # STOMP SEND destination = delivered destination
    queue: str = None  # set for queue routes


def topic_route(p):
    return Route(f"{p}/m", "amq.topic", f"{p}.m", f"/topic/{p}.m")


def queue_route(q):
    return Route(f"$queue/{q}", "", q, f"/queue/{q}", queue=q)


def swap(s):
    return s.translate(str.maketrans({"/": ".", ".": "/"}))


def expiration_text(core):
    if core.expiration is None:
        return None
    lo, hi = core.expiration
    return str(lo) if lo == hi else Between(lo, hi, text=True)


def mqtt_response_topic(address):
    """docs/interop.md, reply-out: the MQTT Response Topic of a core
    `reply_to` (None: not a topic)."""
    if address is None:
        return None
    if isinstance(address, str) and address.startswith("/topic/"):
        return swap(address[len("/topic/"):])
    if isinstance(address, str) and address.startswith("/"):
        return None  # /exchange/x/k
    return prefixed("$queue/", address)


def stomp_reply_to(address):
    """docs/interop.md, reply-out: the STOMP `reply-to` of a core `reply_to`."""
    if address is None:
        return None
    if isinstance(address, str) and address.startswith("/"):
        return address
    return prefixed("/reply-queue/", address)


def mqtt_own(name):
    """Headers that are the MQTT adapter's own, never user properties."""
    return name.startswith("x-mqtt-") or name == "x-reply-to-topic"


# --- publishers -----------------------------------------------------------------------


class MqttPublisher:
    """paho. QoS 0 transient, QoS 1 persistent (PUBACK awaited). MQTT 5:
    Content Type, Correlation Data (UTF-8, or binary), Response Topic (a
    topic or `$queue/`), Message Expiry Interval, Payload Format
    Indicator on the text body, user properties (one named `x-mqtt-…`,
    which must not arrive anywhere)."""

    def __init__(self, clients, broker, version):
        self.version = version
        self.client = clients.connect(broker, version=version)

    def publish(self, route, i, body, persistent, p):
        qos = 1 if persistent else 0
        core = Core(
            body, persistent, qos, headers=[("x-mqtt-publish-qos", H(str(qos), qos))], ordered=True
        )
        props = None
        if self.version == V5:
            response = [f"{p}/reply/dev7", f"$queue/{p}-replies"][i % 2]
            corr = b"\x00\xffcorr-%d" % i if i % 3 == 1 else b"corr-%d" % i
            user = text_headers(i) + [("x-mqtt-fake", "dropped")]
            props = {
                "ContentType": "text/plain; charset=utf-8",
                "CorrelationData": corr,
                "ResponseTopic": response,
                "MessageExpiryInterval": 60,
                "UserProperty": user,
            }
            if body == TEXT:
                props["PayloadFormatIndicator"] = 1
            elif body == BINARY:
                props["PayloadFormatIndicator"] = 0  # sent on as absent
            core.content_type = "text/plain; charset=utf-8"
            core.expiration = (60000, 60000)
            core.headers += [(n, text_header(v)) for n, v in user if not n.startswith("x-mqtt-")]
            if response.startswith("$queue/"):
                core.reply_to = response[len("$queue/"):]
            else:
                core.reply_to = "/topic/" + swap(response)
                core.headers.append(("x-reply-to-topic", text_header(swap(response))))
            if i % 3 == 1:
                core.headers.append(
                    ("x-mqtt-correlation-data", H(base64.b64encode(corr).decode(), corr))
                )
            else:
                core.correlation_id = corr.decode()
            if body == TEXT:
                core.headers.append(("x-mqtt-payload-format-indicator", H("1", 1)))
        before = int(time.time())
        self.client.publish(route.mqtt_topic, body, qos=qos, props=props)
        if self.version == V5:
            core.timestamp = Between(before, int(time.time()) + 1)
        return core

    def close(self):
        self.client.close()


class AmqpPublisher:
    """pika, on its own channel (in confirm mode with `confirm`: then
    every basic_publish waits for its ack). Every property, user headers
    and every typed header of TYPED; `reply_to` a topic address, a queue
    name, direct reply-to (`amq.rabbitmq.reply-to`) or another exchange's
    address."""

    def __init__(self, conn, confirm=False):
        self.conn = conn
        self.channel = conn.channel()
        if confirm:
            self.channel.confirm_delivery()
        # direct reply-to: the channel consumes its reply queue (no-ack)
        # before it may name it in reply_to
        self.channel.basic_consume(
            "amq.rabbitmq.reply-to", lambda *delivery: None, auto_ack=True
        )

    def publish(self, route, i, body, persistent, p):
        now = int(time.time())
        reply, reply_core = [
            (f"/topic/{p}.reply.dev7", f"/topic/{p}.reply.dev7"),
            (f"{p}-replies", f"{p}-replies"),
            ("amq.rabbitmq.reply-to", Like(r"amq\.rabbitmq\.reply-to\.\S{22}")),
            ("/exchange/logs/k", "/exchange/logs/k"),
        ][i % 4]
        user = [("x-seq", str(i)), ("site", "north"), ("unit", "°C")]
        headers = dict(user)
        headers.update((name, value) for name, value, _, _ in TYPED)
        self.channel.basic_publish(
            route.exchange,
            route.key,
            body,
            pika.BasicProperties(
                content_type="text/plain; charset=utf-8",
                content_encoding="identity",
                correlation_id=f"corr-{i}",
                reply_to=reply,
                priority=5,
                expiration="60000",
                message_id=f"mid-{i}",
                timestamp=now,
                type="reading",
                user_id="guest",
                app_id="matrix",
                delivery_mode=2 if persistent else 1,
                headers=headers,
            ),
        )
        return Core(
            body,
            persistent,
            1 if persistent else 0,
            content_type="text/plain; charset=utf-8",
            content_encoding="identity",
            correlation_id=f"corr-{i}",
            reply_to=reply_core,
            expiration=(60000, 60000),
            timestamp=now,
            priority=5,
            message_id=f"mid-{i}",
            type="reading",
            user_id="guest",
            app_id="matrix",
            headers=[(n, text_header(v)) for n, v in user]
            + [(name, H(text, decoded)) for name, _, text, decoded in TYPED],
        )

    def close(self):
        try:
            if self.conn.is_open:
                self.conn.close()
        except Exception:
            pass  # the broker was killed under it


class StompPublisher:
    """stomp.py 1.2, every SEND with a receipt (awaited). Every mapped
    header (`message-id` and `amqp-message-id`, `expiration` and ActiveMQ's
    `expires` alternate), `reply-to` in each STOMP form, user headers."""

    def __init__(self, clients, broker):
        self.client = clients.connect(broker)

    def publish(self, route, i, body, persistent, p):
        now_ms = int(time.time() * 1000)
        reply_sent, reply_core = [
            (f"/topic/{p}.reply.dev7", f"/topic/{p}.reply.dev7"),
            (f"/queue/{p}-replies", f"{p}-replies"),
            ("/temp-queue/rpc", Like(r"amq\.gen-\S+")),
            ("/exchange/logs/k", "/exchange/logs/k"),
        ][i % 4]
        user = text_headers(i)
        headers = {
            "persistent": "true" if persistent else "false",
            "content-type": "text/plain; charset=utf-8",
            "content-encoding": "identity",
            "correlation-id": f"corr-{i}",
            "reply-to": reply_sent,
            "priority": "5",
            "timestamp": str(now_ms),
            "type": "reading",
            "app-id": "matrix",
            "user-id": "guest",
            ("message-id" if i % 2 == 0 else "amqp-message-id"): f"mid-{i}",
        }
        if i % 3 == 1:
            headers["expires"] = str(now_ms + 60000)  # ActiveMQ's absolute form
            expiration = (50000, 60000)
        else:
            headers["expiration"] = "60000"
            expiration = (60000, 60000)
        headers.update(user)
        self.client.send(route.stomp_dest, body, headers, receipt=True)
        return Core(
            body,
            persistent,
            1 if persistent else 0,
            content_type="text/plain; charset=utf-8",
            content_encoding="identity",
            correlation_id=f"corr-{i}",
            reply_to=reply_core,
            expiration=expiration,
            timestamp=now_ms // 1000,
            priority=5,
            message_id=f"mid-{i}",
            type="reading",
            user_id="guest",
            app_id="matrix",
            # stomp.py writes a frame's headers sorted by name
            headers=[(n, text_header(v)) for n, v in sorted(user)],
        )

    def close(self):
        self.client.close()


# --- consumers --------------------------------------------------------------------------


class MqttConsumer:
    """paho subscribed to the route's topic. `durable`: a persistent
    session (3.1.1 clean session 0, 5 Session Expiry Interval 300) that
    can `leave` and `rejoin`."""

    # set once the broker restarted under the messages: recovered messages
    # are flagged redelivered (docs/limits.md)
    recovered = False

    def __init__(self, clients, version, sub_qos, durable=False):
        self.clients, self.version, self.sub_qos, self.durable = clients, version, sub_qos, durable
        self.client_id = uid("c")
        self.client = None

    def _connect(self, broker):
        kw = mqtt_persistent(self.version) if self.durable else {}
        self.client = self.clients.connect(
            broker, client_id=self.client_id, version=self.version, **kw
        )
        return self.client.connack

    def subscribe(self, broker, route):
        self.route = route
        self._connect(broker)
        assert self.client.subscribe(route.mqtt_topic, qos=self.sub_qos) == [self.sub_qos]

    def leave(self):
        self.client.disconnect()

    def rejoin(self, broker):
        connack = self._connect(broker)
        assert connack.session_present, connack

    def wait(self, n):
        return self.client.wait_messages(n, WAIT)

    def received(self):
        return self.client.received()

    @staticmethod
    def body(m):
        return m.payload

    def view(self, m):
        return {
            "topic": m.topic,
            "payload": short(m.payload),
            "qos": m.qos,
            "retain": m.retain,
            "dup": m.dup,
            "props": m.props,
        }

    def expect(self, core):
        props = {}
        if self.version == V5:
            if core.content_type is not None:
                props["ContentType"] = core.content_type
            binary_corr = core.header("x-mqtt-correlation-data")
            if binary_corr is not None:
                props["CorrelationData"] = binary_corr.amqp
            elif core.correlation_id is not None:
                props["CorrelationData"] = core.correlation_id.encode()
            response = mqtt_response_topic(core.reply_to)
            if response is not None:
                props["ResponseTopic"] = response
            if core.expiration is not None:
                lo, hi = core.expiration
                # what is left, in whole seconds rounded up
                props["MessageExpiryInterval"] = Between(lo // 1000 - 10, math.ceil(hi / 1000))
            pfi = core.header("x-mqtt-payload-format-indicator")
            if pfi is not None and pfi.text == "1":
                props["PayloadFormatIndicator"] = 1
            user = [(n, h.text) for n, h in core.headers if not mqtt_own(n)]
            if user:
                props["UserProperty"] = user if core.ordered else AnyOrder(user)
        return {
            "topic": self.route.mqtt_topic,
            "payload": short(core.body),
            "qos": min(core.qos, self.sub_qos),
            "retain": False,
            "dup": False,  # never sent before (a resend would say DUP)
            "props": props,
        }

    def close(self):
        if self.client is not None:
            self.client.close()


class AmqpConsumer:
    """pika basic_consume (auto ack) on a durable queue: bound to
    `amq.topic` with the route's key, or the route's own queue."""

    # set once the broker restarted under the messages: recovered messages
    # are flagged redelivered (docs/limits.md)
    recovered = False

    def __init__(self, conn_factory, queue, own_connection):
        self.conn_factory, self.queue, self.own_connection = conn_factory, queue, own_connection
        self.conn = self.channel = None
        self.collector = Collector()

    def _declare(self, broker, route):
        self.route = route
        self.conn = self.conn_factory()
        self.channel = self.conn.channel()
        if route.queue is not None:
            self.queue = route.queue
        self.channel.queue_declare(self.queue, durable=True)
        if route.queue is None:
            self.channel.queue_bind(self.queue, route.exchange, routing_key=route.key)

    def _consume(self):
        self.channel.basic_consume(self.queue, self.collector, auto_ack=True)

    def subscribe(self, broker, route):
        self._declare(broker, route)
        self._consume()

    def prepare_durable(self, broker, route):
        """The queue exists and is bound; no consumer yet."""
        self._declare(broker, route)
        self.conn.close()

    def leave(self):
        pass  # prepare_durable left no consumer and no connection

    def rejoin(self, broker):
        self.conn = self.conn_factory()
        self.channel = self.conn.channel()
        self._consume()

    def wait(self, n):
        ok = amqp_support.wait_until(self.conn, lambda: len(self.collector) >= n, WAIT)
        got = self.received()
        assert ok, f"{len(got)} of {n} messages within {WAIT} s: {[short(b) for _, _, b in got]}"
        return got

    def received(self):
        return list(self.collector.deliveries)

    @staticmethod
    def body(d):
        return d[2]

    def view(self, d):
        method, props, body = d
        return {
            "exchange": method.exchange,
            "routing_key": method.routing_key,
            "redelivered": method.redelivered,
            "body": short(body),
            "delivery_mode": props.delivery_mode,
            "content_type": props.content_type,
            "content_encoding": props.content_encoding,
            "correlation_id": props.correlation_id,
            "reply_to": props.reply_to,
            "expiration": props.expiration,
            "timestamp": props.timestamp,
            "priority": props.priority,
            "message_id": props.message_id,
            "type": props.type,
            "user_id": props.user_id,
            "app_id": props.app_id,
            "cluster_id": props.cluster_id,
            "headers": props.headers,
        }

    def expect(self, core):
        return {
            "exchange": self.route.exchange,
            "routing_key": self.route.key,
            "redelivered": self.recovered,
            "body": short(core.body),
            "delivery_mode": 2 if core.persistent else 1,
            "content_type": core.content_type,
            "content_encoding": core.content_encoding,
            "correlation_id": core.correlation_id,
            "reply_to": core.reply_to,
            "expiration": expiration_text(core),
            "timestamp": core.timestamp,
            "priority": core.priority,
            "message_id": core.message_id,
            "type": core.type,
            "user_id": core.user_id,
            "app_id": core.app_id,
            "cluster_id": None,
            "headers": {n: h.amqp for n, h in core.headers} or None,
        }

    def close(self):
        try:
            if self.channel is not None and self.channel.is_open:
                self.channel.queue_delete(self.queue)
                self.channel.close()
            if self.own_connection and self.conn.is_open:
                self.conn.close()
        except Exception:
            pass


class StompConsumer:
    """stomp.py 1.2, ack auto: a topic subscription (durable: `durable:true`
    under a `client-id`) or a `/queue/` subscription."""

    # set once the broker restarted under the messages: recovered messages
    # are flagged redelivered (docs/limits.md)
    recovered = False

    def __init__(self, clients, durable=False):
        self.clients, self.durable = clients, durable
        self.client_id = uid("s")
        self.sub_id = "dur" if durable else None
        self.client = None

    def _subscribe(self, broker):
        headers = {"client-id": self.client_id} if self.durable else None
        self.client = self.clients.connect(broker, headers=headers)
        durable_topic = self.durable and self.route.queue is None
        sub_headers = {"durable": "true"} if durable_topic else None
        self.sub_id = self.client.subscribe(
            self.route.stomp_dest, id=self.sub_id, headers=sub_headers
        )

    def subscribe(self, broker, route):
        self.route = route
        self._subscribe(broker)

    def leave(self):
        self.client.disconnect()

    def rejoin(self, broker):
        self._subscribe(broker)

    def wait(self, n):
        self.client.wait_messages(n, WAIT)
        return self.received()

    def received(self):
        return self.client.messages

    @staticmethod
    def body(f):
        return f.body

    def view(self, f):
        h = dict(f.headers)
        return {
            "body": short(f.body),
            "message-id present": bool(h.pop("message-id", None)),
            "headers": h,
        }

    def expect(self, core):
        h = {
            "destination": self.route.stomp_dest,
            "subscription": self.sub_id,
            "redelivered": "true" if self.recovered else "false",
            "content-length": str(len(core.body)),
            "persistent": "true" if core.persistent else "false",
        }
        mapped = {
            "content-type": core.content_type,
            "content-encoding": core.content_encoding,
            "correlation-id": core.correlation_id,
            "reply-to": stomp_reply_to(core.reply_to),
            "expiration": expiration_text(core),
            "priority": None if core.priority is None else str(core.priority),
            "amqp-message-id": core.message_id,
            "timestamp": None if core.timestamp is None else ms_text(core.timestamp),
            "type": core.type,
            "user-id": core.user_id,
            "app-id": core.app_id,
        }
        h.update((k, v) for k, v in mapped.items() if v is not None)
        for name, value in core.headers:
            h.setdefault(name, value.text)
        return {"body": short(core.body), "message-id present": True, "headers": h}

    def close(self):
        if self.client is not None:
            self.client.close()


def ms_text(seconds):
    """A core timestamp (seconds) as STOMP writes it: milliseconds."""
    if isinstance(seconds, Between):
        return Between(seconds.lo * 1000, seconds.hi * 1000, text=True)
    return str(seconds * 1000)


# --- making the parties ---------------------------------------------------------------


def mqtt_version(proto):
    return V5 if proto == "mqtt5" else V311


class Parties:
    """Makes a test's publishers and consumers; closes them at teardown."""

    def __init__(self, mqtt, stomp, names):
        self.mqtt, self.stomp, self.names = mqtt, stomp, names
        self.made = []

    def publisher(self, proto, broker, amqp_conn=None, confirm=False):
        if proto.startswith("mqtt"):
            pub = MqttPublisher(self.mqtt, broker, mqtt_version(proto))
        elif proto == "amqp":
            pub = AmqpPublisher(amqp_conn or broker.connect(), confirm)
            if amqp_conn is not None:
                pub.close = pub.channel.close  # a shared connection stays open
        else:
            pub = StompPublisher(self.stomp, broker)
        self.made.append(pub)
        return pub

    def consumer(self, proto, conn_factory, sub_qos=2, durable=False, own_connection=False):
        if proto.startswith("mqtt"):
            con = MqttConsumer(self.mqtt, mqtt_version(proto), sub_qos, durable)
        elif proto == "amqp":
            con = AmqpConsumer(conn_factory, self.names("q"), own_connection)
        else:
            con = StompConsumer(self.stomp, durable)
        self.made.append(con)
        return con

    def close_all(self):
        for party in reversed(self.made):
            try:
                party.close()
            except Exception:
                pass


@pytest.fixture
def parties(mqtt_clients, stomp_clients, names):  # noqa: F811
    made = Parties(mqtt_clients, stomp_clients, names)
    yield made
    made.close_all()


def differences(got, expected, path=""):
    """Where `got` differs from `expected`: ["props.UserProperty: got ...,
    expected ..."]; dicts compared key by key, lists item by item."""
    if isinstance(got, dict) and isinstance(expected, dict):
        out = []
        for k in list(expected) + [k for k in got if k not in expected]:
            where = f"{path}.{k}" if path else str(k)
            if k not in got:
                out.append(f"{where}: missing, expected {expected[k]!r}")
            elif k not in expected:
                out.append(f"{where}: got {got[k]!r}, expected no such field")
            else:
                out += differences(got[k], expected[k], where)
        return out
    if (
        isinstance(got, list)
        and isinstance(expected, list)
        and len(got) == len(expected)
        and not got == expected
    ):
        return [
            d
            for n, (g, e) in enumerate(zip(got, expected))
            for d in differences(g, e, f"{path}[{n}]")
        ]
    if not expected == got:
        return [f"{path}: got {got!r}, expected {expected!r}"]
    return []


def check_batch(con, sent, pub, route, p):
    """Waits for the batch, compares it whole and in order with what
    docs/interop.md says, then publishes a fence and checks that it is
    the only message after the batch (nothing came twice)."""
    got = con.wait(len(sent))
    assert [short(con.body(m)) for m in got] == [short(c.body) for c in sent]
    problems = [
        f"message {n} ({short(core.body)!r}) {d}"
        for n, (m, core) in enumerate(zip(got, sent))
        for d in differences(con.view(m), con.expect(core))
    ]
    assert not problems, "\n".join(problems)
    pub.publish(route, len(sent), FENCE, sent[0].persistent, p)
    got = con.wait(len(sent) + 1)
    assert [short(con.body(m)) for m in got] == [short(c.body) for c in sent] + [FENCE]


# --- the matrix ----------------------------------------------------------------------------


@pytest.mark.parametrize("durability", ["transient", "persistent"])
@pytest.mark.parametrize("consumer", PROTOCOLS)
@pytest.mark.parametrize("publisher", PROTOCOLS)
def test_matrix(module_broker, shared_amqp, parties, publisher, consumer, durability):
    """Bodies byte for byte, every field as docs/interop.md maps it (and no
    field the consumer must not have), typed AMQP headers as text, the
    MQTT QoS (subscribed at QoS 2: persistent → 1, transient → 0)."""
    persistent = durability == "persistent"
    p = uid("p")
    route = topic_route(p)
    con = parties.consumer(consumer, shared_amqp.get, sub_qos=2)
    con.subscribe(module_broker, route)
    pub = parties.publisher(publisher, module_broker, amqp_conn=shared_amqp.get())
    bodies = list(BODIES)
    if persistent and "mqtt311" not in (publisher, consumer):
        bodies.append(BIG)
    sent = [pub.publish(route, i, body, persistent, p) for i, body in enumerate(bodies)]
    check_batch(con, sent, pub, route, p)


@pytest.mark.parametrize("version", [V311, V5], ids=["mqtt311", "mqtt5"])
@pytest.mark.parametrize("publisher", ["amqp", "stomp"])
def test_publish_qos_header(
    module_broker, shared_amqp, parties, mqtt_clients, publisher, version  # noqa: F811
):
    """`x-mqtt-publish-qos` (AMQP integer, STOMP text) is the published QoS;
    without it persistent is 1, transient 0; a subscriber gets the lower
    of that and its own QoS."""
    p = uid("p")
    route = topic_route(p)
    subs = {q: mqtt_clients.connect(module_broker, version=version) for q in (2, 1, 0)}
    for q, sub in subs.items():
        assert sub.subscribe(route.mqtt_topic, qos=q) == [q]
    cases = [  # (persistent, header, published QoS)
        (False, None, 0),
        (True, None, 1),
        (True, 2, 2),
        (False, 2, 2),
        (True, 0, 0),
        (False, 1, 1),
    ]
    if publisher == "amqp":
        ch = shared_amqp.get().channel()
        for n, (persistent, header, _) in enumerate(cases):
            headers = None if header is None else {"x-mqtt-publish-qos": header}
            ch.basic_publish(
                route.exchange,
                route.key,
                b"case-%d" % n,
                pika.BasicProperties(delivery_mode=2 if persistent else 1, headers=headers),
            )
        ch.close()
    else:
        s = parties.publisher("stomp", module_broker).client
        for n, (persistent, header, _) in enumerate(cases):
            headers = {"persistent": "true" if persistent else "false"}
            if header is not None:
                headers["x-mqtt-publish-qos"] = str(header)
            s.send(route.stomp_dest, b"case-%d" % n, headers, receipt=True)
    for q, sub in subs.items():
        got = sub.wait_messages(len(cases), WAIT)
        sub.assert_quiet(len(cases), within=0.2)
        # paho hands a QoS 2 message over at PUBREL: order only by payload
        assert sorted((m.payload, m.qos, m.props) for m in got) == [
            (b"case-%d" % n, min(pq, q), {}) for n, (_, _, pq) in enumerate(cases)
        ], f"subscription QoS {q}"


# --- persistence across a restart and a kill -9 ------------------------------------------------


@pytest.mark.parametrize("stop", ["restart", "kill9"])
@pytest.mark.parametrize("consumer", PROTOCOLS)
@pytest.mark.parametrize("publisher", PROTOCOLS)
def test_persistent_messages_survive(broker, parties, names, publisher, consumer, stop):
    """Persistent messages published while a durable consumer is away
    (durable AMQP queue; STOMP durable topic subscription or /queue/; MQTT
    persistent session subscribed at QoS 1), each confirmed (AMQP confirm,
    STOMP receipt, MQTT PUBACK), survive a clean restart and a kill -9
    (then the broker starts again on its data dir): each arrives exactly
    once, byte for byte, with its fields. After a restart the routes are
    topics; after a kill -9 AMQP and STOMP consumers read a queue the
    publishers address directly (MQTT `$queue/q`, the default exchange,
    STOMP `/queue/q`)."""
    p = uid("p")
    if stop == "kill9" and consumer in ("amqp", "stomp"):
        route = queue_route(names("q"))
    else:
        route = topic_route(p)
    con = parties.consumer(
        consumer, broker.connect, sub_qos=1, durable=True, own_connection=True
    )
    if consumer == "amqp":
        con.prepare_durable(broker, route)
    else:
        con.subscribe(broker, route)
        con.leave()

    pub = parties.publisher(publisher, broker, confirm=True)
    bodies = list(BODIES)
    if stop == "kill9" and "mqtt311" not in (publisher, consumer):
        bodies.append(BIG)
    sent = [pub.publish(route, i, body, True, p) for i, body in enumerate(bodies)]

    if stop == "restart":
        pub.close()
        broker.restart()
    else:
        broker.kill9()
        pub.close()
        broker.start()

    con.recovered = True
    con.rejoin(broker)
    pub = parties.publisher(publisher, broker, confirm=True)  # for the fence
    check_batch(con, sent, pub, route, p)
