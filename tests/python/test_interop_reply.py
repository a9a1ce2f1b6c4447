"""Request and reply across MQTT 5, AMQP 0-9-1 and STOMP (docs/interop.md,
*Request and reply*): every requester's reply address reaches every
responder in that responder's own form, the responder replies the way its
protocol usually does, and the reply arrives at the requester with the
body and the correlation exact. Also RabbitMQ's direct reply-to
(`amq.rabbitmq.reply-to`): its refusals and the reply queue's lifetime."""

import base64
import re

import pika
import pytest
from pika.exceptions import ChannelClosedByBroker, UnroutableError

from amqp_support import Collector, channel_error, take_exactly
from amqp_support import wait_until as amqp_wait_until
from mqtt_support import (
    V5,
    clients,  # noqa: F401 (fixture)
    uid,
)
from stomp_support import stomp_clients  # noqa: F401 (fixture)

DIRECT = "amq.rabbitmq.reply-to"
DIRECT_QUEUE = re.compile(r"^amq\.rabbitmq\.reply-to\.(.{22})$")
SERVER_NAMED = re.compile(r"^amq\.gen-.+$")

# Correlation Data: UTF-8 (≤ 255 bytes) travels as correlation_id; any
# other data as the byte-array header x-mqtt-correlation-data.
UTF8_CORRELATION = "req-42-°C".encode()
BINARY_CORRELATION = b"\x00\xffreq\x00\x80\xfe"
CORRELATIONS = pytest.mark.parametrize(
    "correlation", [UTF8_CORRELATION, BINARY_CORRELATION], ids=["utf8", "binary"]
)
REQUEST = b"what is the setpoint? \x00\xff"
REPLY = b"21.5 \x00\xff\x01"


def service_queue(ch, names, pattern):
    """A queue bound to amq.topic with `pattern` (where requests go)."""
    q = names("svc")
    ch.queue_declare(q, auto_delete=False)
    ch.queue_bind(q, "amq.topic", routing_key=pattern)
    return q


def consume_until(conn, collector, n, timeout=5):
    """Runs pika's event loop until `collector` holds `n` deliveries; then
    a little longer, and checks that no more came."""
    ok = amqp_wait_until(conn, lambda: len(collector) >= n, timeout)
    assert ok, f"{len(collector)} of {n} deliveries: {collector.deliveries}"
    amqp_wait_until(conn, lambda: False, 0.3)
    assert len(collector) == n, collector.deliveries
    return collector.deliveries


# --- MQTT 5 requester ------------------------------------------------------------


@CORRELATIONS
def test_mqtt5_requester_amqp_responder(module_broker, clients, amqp_channel, names, correlation):
    p = uid("p")
    svc = service_queue(amqp_channel, names, p + ".req.*")
    dev = clients.connect(module_broker, version=V5)
    assert dev.subscribe(p + "/reply/dev7", qos=1) == [1]
    assert (
        dev.publish(
            p + "/req/dev7",
            REQUEST,
            qos=1,
            props={"ResponseTopic": p + "/reply/dev7", "CorrelationData": correlation},
        )
        == 0
    )

    ((m, props, body),) = take_exactly(amqp_channel, svc, 1)
    assert (m.routing_key, body) == (p + ".req.dev7", REQUEST)
    assert props.reply_to == "/topic/" + p + ".reply.dev7"
    assert props.headers["x-reply-to-topic"] == p + ".reply.dev7"
    if correlation == UTF8_CORRELATION:
        assert props.correlation_id == correlation.decode()
        assert "x-mqtt-correlation-data" not in props.headers
    else:
        assert props.correlation_id is None
        assert props.headers["x-mqtt-correlation-data"] == correlation

    # The usual AMQP RPC reply: default exchange, reply_to as the key, the
    # correlation copied back (the binary one is in the header).
    echo = {}
    if "x-mqtt-correlation-data" in props.headers:
        echo["x-mqtt-correlation-data"] = props.headers["x-mqtt-correlation-data"]
    amqp_channel.basic_publish(
        "",
        props.reply_to,
        REPLY,
        pika.BasicProperties(
            correlation_id=props.correlation_id, headers=echo or None, delivery_mode=2
        ),
    )
    dev.wait_messages(1)
    dev.assert_quiet(1, within=0.3)
    (r,) = dev.received()
    assert (r.topic, r.payload, r.qos) == (p + "/reply/dev7", REPLY, 1)
    assert r.props["CorrelationData"] == correlation
    amqp_channel.queue_delete(svc)


@CORRELATIONS
def test_mqtt5_requester_stomp_responder(module_broker, clients, stomp_clients, correlation):
    p = uid("p")
    svc = stomp_clients.connect(module_broker)
    svc.subscribe(f"/topic/{p}.req.*")
    dev = clients.connect(module_broker, version=V5)
    assert dev.subscribe(p + "/reply/dev7", qos=1) == [1]
    assert (
        dev.publish(
            p + "/req/dev7",
            REQUEST,
            qos=1,
            props={"ResponseTopic": p + "/reply/dev7", "CorrelationData": correlation},
        )
        == 0
    )

    (req,) = svc.exactly(1)
    assert req.body == REQUEST
    assert req.headers["destination"] == f"/topic/{p}.req.dev7"
    assert req.headers["reply-to"] == f"/topic/{p}.reply.dev7"
    reply_headers = {}
    if correlation == UTF8_CORRELATION:
        assert req.headers["correlation-id"] == correlation.decode()
        assert "x-mqtt-correlation-data" not in req.headers
        reply_headers["correlation-id"] = req.headers["correlation-id"]
    else:
        # Binary data reaches STOMP as the header, in base64.
        assert "correlation-id" not in req.headers
        assert req.headers["x-mqtt-correlation-data"] == base64.b64encode(correlation).decode()
        reply_headers["x-mqtt-correlation-data"] = req.headers["x-mqtt-correlation-data"]

    # The STOMP responder SENDs to the reply-to destination.
    svc.send(req.headers["reply-to"], REPLY, reply_headers, receipt=True)
    dev.wait_messages(1)
    dev.assert_quiet(1, within=0.3)
    (r,) = dev.received()
    assert (r.topic, r.payload) == (p + "/reply/dev7", REPLY)
    # Binary data echoed in x-mqtt-correlation-data is read back from
    # base64 (interop.md, "Request and reply"): the requester gets its bytes.
    assert r.props["CorrelationData"] == correlation


# --- AMQP requester --------------------------------------------------------------


def amqp_requester(conn, how):
    """A channel set up to receive replies: ("queue", name) with an
    exclusive server-named queue, or ("direct", None) with a direct
    reply-to consumer. Returns (channel, reply_to to publish with,
    collector of replies)."""
    ch = conn.channel()
    got = Collector()
    if how == "queue":
        q = ch.queue_declare("", exclusive=True).method.queue
        assert SERVER_NAMED.match(q), q
        ch.basic_consume(q, got, auto_ack=True)
        return ch, q, got
    ch.basic_consume(DIRECT, got, auto_ack=True)
    return ch, DIRECT, got


REPLY_HOW = pytest.mark.parametrize("how", ["queue", "direct"])


def check_reply_address(how, reply_to, seen):
    """The reply address a responder saw, without its protocol's prefix,
    is the queue the requester named (or, for direct reply-to, the
    channel's reply queue)."""
    if how == "queue":
        assert seen == reply_to
    else:
        assert DIRECT_QUEUE.match(seen), seen


@REPLY_HOW
def test_amqp_requester_mqtt5_responder(module_broker, clients, shared_amqp, how):
    p = uid("p")
    responder = clients.connect(module_broker, version=V5)
    assert responder.subscribe(p + "/req/+", qos=1) == [1]
    conn = shared_amqp.get()
    ch, reply_to, replies = amqp_requester(conn, how)
    correlation = "corr-é-" + uid()
    ch.basic_publish(
        "amq.topic",
        p + ".req.dev7",
        REQUEST,
        pika.BasicProperties(reply_to=reply_to, correlation_id=correlation, delivery_mode=2),
    )

    (req,) = responder.wait_messages(1)
    assert (req.topic, req.payload) == (p + "/req/dev7", REQUEST)
    response_topic = req.props["ResponseTopic"]
    assert response_topic.startswith("$queue/"), response_topic
    check_reply_address(how, reply_to, response_topic[len("$queue/") :])
    assert req.props["CorrelationData"] == correlation.encode()

    # The MQTT 5 responder publishes to the Response Topic, echoing the data.
    assert (
        responder.publish(
            response_topic, REPLY, qos=1, props={"CorrelationData": req.props["CorrelationData"]}
        )
        == 0
    )
    ((method, props, body),) = consume_until(conn, replies, 1)
    assert body == REPLY
    assert props.correlation_id == correlation
    responder.assert_quiet(1, within=0.1)
    ch.close()


@REPLY_HOW
def test_amqp_requester_stomp_responder(module_broker, stomp_clients, shared_amqp, how):
    p = uid("p")
    svc = stomp_clients.connect(module_broker)
    svc.subscribe(f"/topic/{p}.req.*")
    conn = shared_amqp.get()
    ch, reply_to, replies = amqp_requester(conn, how)
    correlation = "corr-é-" + uid()
    ch.basic_publish(
        "amq.topic",
        p + ".req.dev7",
        REQUEST,
        pika.BasicProperties(reply_to=reply_to, correlation_id=correlation, delivery_mode=2),
    )

    (req,) = svc.exactly(1)
    assert req.body == REQUEST
    assert req.headers["correlation-id"] == correlation
    seen = req.headers["reply-to"]
    assert seen.startswith("/reply-queue/"), seen
    check_reply_address(how, reply_to, seen[len("/reply-queue/") :])

    svc.send(seen, REPLY, {"correlation-id": req.headers["correlation-id"]}, receipt=True)
    ((method, props, body),) = consume_until(conn, replies, 1)
    assert body == REPLY
    assert props.correlation_id == correlation
    ch.close()


# --- STOMP requester -------------------------------------------------------------


def test_stomp_requester_amqp_responder(module_broker, stomp_clients, amqp_channel, names):
    svc = names("svc")
    amqp_channel.queue_declare(svc)
    requester = stomp_clients.connect(module_broker)
    correlation = "corr-" + uid()
    requester.send(
        f"/amq/queue/{svc}",
        REQUEST,
        {"reply-to": "/temp-queue/x", "correlation-id": correlation},
        receipt=True,
    )

    ((m, props, body),) = take_exactly(amqp_channel, svc, 1)
    assert body == REQUEST
    assert SERVER_NAMED.match(props.reply_to), props.reply_to
    assert props.correlation_id == correlation
    amqp_channel.basic_publish(
        "", props.reply_to, REPLY, pika.BasicProperties(correlation_id=props.correlation_id)
    )

    (r,) = requester.exactly(1)
    assert r.body == REPLY
    assert r.headers["subscription"] == "/temp-queue/x"
    assert r.headers["destination"] == "/temp-queue/x"
    assert r.headers["correlation-id"] == correlation
    amqp_channel.queue_delete(svc)


def test_stomp_requester_mqtt5_responder(module_broker, clients, stomp_clients):
    p = uid("p")
    responder = clients.connect(module_broker, version=V5)
    assert responder.subscribe(p + "/req/+", qos=1) == [1]
    requester = stomp_clients.connect(module_broker)
    correlation = "corr-" + uid()
    requester.send(
        f"/topic/{p}.req.dev7",
        REQUEST,
        {"reply-to": "/temp-queue/x", "correlation-id": correlation, "persistent": "true"},
        receipt=True,
    )

    (req,) = responder.wait_messages(1)
    assert (req.topic, req.payload) == (p + "/req/dev7", REQUEST)
    response_topic = req.props["ResponseTopic"]
    assert response_topic.startswith("$queue/"), response_topic
    assert SERVER_NAMED.match(response_topic[len("$queue/") :]), response_topic
    assert req.props["CorrelationData"] == correlation.encode()
    assert (
        responder.publish(
            response_topic, REPLY, qos=1, props={"CorrelationData": req.props["CorrelationData"]}
        )
        == 0
    )

    (r,) = requester.exactly(1)
    assert r.body == REPLY
    assert r.headers["subscription"] == "/temp-queue/x"
    assert r.headers["destination"] == "/temp-queue/x"
    assert r.headers["correlation-id"] == correlation


# --- direct reply-to: refusals and lifetime ----------------------------------------


def test_direct_reply_to_refuses_an_acking_consumer(shared_amqp):
    ch = shared_amqp.get().channel()
    code, text = channel_error(ch.basic_consume, DIRECT, Collector(), auto_ack=False)
    assert code == 406
    assert "reply consumer cannot acknowledge" in text, text


def test_direct_reply_to_refuses_a_second_reply_consumer(shared_amqp):
    ch = shared_amqp.get().channel()
    ch.basic_consume(DIRECT, Collector(), auto_ack=True)
    code, text = channel_error(ch.basic_consume, DIRECT, Collector(), auto_ack=True)
    assert code == 406
    assert "reply consumer already set" in text, text


def test_direct_reply_to_refuses_a_publish_without_a_reply_consumer(shared_amqp, names):
    ch = shared_amqp.get().channel()
    q = names("q")
    ch.queue_declare(q, auto_delete=True)

    def publish_then_sync():
        ch.basic_publish("", q, b"request", pika.BasicProperties(reply_to=DIRECT))
        ch.basic_qos(prefetch_count=1)  # a round trip: the close arrives first

    code, text = channel_error(publish_then_sync)
    assert code == 406
    assert "fast reply consumer does not exist" in text, text
    ch2 = shared_amqp.get().channel()
    assert ch2.queue_declare(q, passive=True).method.message_count == 0
    ch2.queue_delete(q)
    ch2.close()


def test_direct_reply_to_passive_declare_answers_ok(shared_amqp):
    ch = shared_amqp.get().channel()
    ok = ch.queue_declare(DIRECT, passive=True)
    assert isinstance(ok.method, pika.spec.Queue.DeclareOk)
    assert ch.is_open
    ch.close()


def test_direct_reply_queue_is_gone_after_the_consumer_is_cancelled(shared_amqp, names):
    conn = shared_amqp.get()
    ch = conn.channel()
    q = names("q")
    ch.queue_declare(q, auto_delete=False)
    replies = Collector()
    tag = ch.basic_consume(DIRECT, replies, auto_ack=True)
    ch.basic_publish("", q, b"request", pika.BasicProperties(reply_to=DIRECT))
    ((_, props, _),) = take_exactly(ch, q, 1)
    reply_queue = props.reply_to
    assert DIRECT_QUEUE.match(reply_queue), reply_queue

    # While the consumer lasts, the reply queue takes replies.
    other = conn.channel()
    other.confirm_delivery()
    other.basic_publish("", reply_queue, b"reply 1", mandatory=True)
    consume_until(conn, replies, 1)
    assert replies.bodies == [b"reply 1"]

    ch.basic_cancel(tag)
    # A later reply is unroutable: returned to a mandatory publisher ...
    with pytest.raises(UnroutableError) as e:
        other.basic_publish("", reply_queue, b"reply 2", mandatory=True)
    assert [m.body for m in e.value.messages] == [b"reply 2"]
    # ... and the queue does not exist.
    with pytest.raises(ChannelClosedByBroker) as e:
        other.queue_declare(reply_queue, passive=True)
    assert e.value.reply_code == 404
    assert replies.bodies == [b"reply 1"]
    ch.queue_delete(q)
    ch.close()
