"""STOMP with MQTT and AMQP 0-9-1 on one broker: a STOMP /topic/a.b.c is
amq.topic key a.b.c is MQTT topic a/b/c; STOMP headers map onto AMQP
properties and headers (and MQTT 5 properties) and back; reply-to works
across protocols in both directions."""

import pika
import pytest

from amqp_support import take_exactly
from mqtt_support import V5, V311
from mqtt_support import clients as mqtt_clients  # noqa: F401 (fixture)
from stomp_support import (
    stomp_clients,  # noqa: F401 (fixture)
    uid,
)

BINARY = bytes([0x00, 0xFF, 0x7F, 0x80, 0x0A, 0x0D]) + "°C".encode() + b"\x00"


def bound_queue(ch, name, pattern, exchange="amq.topic"):
    ch.queue_declare(name, durable=True)
    ch.queue_bind(name, exchange, routing_key=pattern)
    return name


# --- STOMP → MQTT and AMQP -----------------------------------------------------------


@pytest.mark.parametrize("mqtt_version", [V311, V5], ids=["v311", "v5"])
def test_stomp_topic_send_reaches_mqtt_and_amqp_subscribers(
    module_broker, stomp_clients, mqtt_clients, amqp_channel, names, mqtt_version
):
    p = uid("p")
    q = bound_queue(amqp_channel, names("q"), f"{p}.plant.*.temp")
    exact = mqtt_clients.connect(module_broker, version=mqtt_version)
    assert exact.subscribe(f"{p}/plant/7/temp", qos=1) == [1]
    wild = mqtt_clients.connect(module_broker, version=mqtt_version)
    assert wild.subscribe(f"{p}/plant/+/temp", qos=1) == [1]
    s = stomp_clients.connect(module_broker)
    s.send(
        f"/topic/{p}.plant.7.temp",
        b"21.5",
        {
            "content-type": "text/plain",
            "correlation-id": "corr-7",
            "x-site": "north",
            "persistent": "true",
        },
        receipt=True,
    )
    for dev in (exact, wild):
        dev.wait_messages(1)
        dev.assert_quiet(1, within=0.3)
        (m,) = dev.received()
        assert (m.topic, m.payload, m.qos) == (f"{p}/plant/7/temp", b"21.5", 1)
        if mqtt_version == V5:
            assert m.props["ContentType"] == "text/plain"
            assert m.props["CorrelationData"] == b"corr-7"
            assert ("x-site", "north") in m.props["UserProperty"]
    ((method, props, body),) = take_exactly(amqp_channel, q, 1)
    assert body == b"21.5"
    assert (method.exchange, method.routing_key) == ("amq.topic", f"{p}.plant.7.temp")
    assert props.content_type == "text/plain"
    assert props.correlation_id == "corr-7"
    assert props.delivery_mode == 2
    assert props.headers == {"x-site": "north"}


def test_stomp_binary_body_reaches_mqtt_byte_for_byte(module_broker, stomp_clients, mqtt_clients):
    p = uid("p")
    dev = mqtt_clients.connect(module_broker, version=V311)
    assert dev.subscribe(f"{p}/bin", qos=0) == [0]
    s = stomp_clients.connect(module_broker, "1.0")
    s.send(f"/topic/{p}.bin", BINARY, receipt=True)
    (m,) = dev.wait_messages(1)
    assert (m.topic, m.payload) == (f"{p}/bin", BINARY)


def test_stomp_send_with_every_property_as_amqp_sees_it(module_broker, stomp_clients, amqp_channel, names):
    q = names("q")
    amqp_channel.queue_declare(q, durable=True)
    s = stomp_clients.connect(module_broker)
    s.send(
        f"/queue/{q}",
        b"payload",
        {
            "content-type": "application/json",
            "content-encoding": "gzip",
            "correlation-id": "c-9",
            "reply-to": "/queue/answers",
            "priority": "3",
            "expiration": "60000",
            "amqp-message-id": "m-9",
            "timestamp": "1700000000000",
            "type": "reading",
            "app-id": "sensor-app",
            "user-id": "guest",
            "persistent": "true",
            "x-a": "1",
            "x-b": "two words",
        },
        receipt=True,
    )
    ((method, props, body),) = take_exactly(amqp_channel, q, 1)
    assert body == b"payload"
    assert (method.exchange, method.routing_key) == ("", q)
    assert props.content_type == "application/json"
    assert props.content_encoding == "gzip"
    assert props.correlation_id == "c-9"
    assert props.reply_to == "answers"
    assert props.priority == 3
    assert props.expiration == "60000"
    assert props.message_id == "m-9"
    assert props.timestamp == 1700000000
    assert props.type == "reading"
    assert props.app_id == "sensor-app"
    assert props.user_id == "guest"
    assert props.delivery_mode == 2
    assert props.headers == {"x-a": "1", "x-b": "two words"}


# --- MQTT → STOMP --------------------------------------------------------------------


@pytest.mark.parametrize("mqtt_version", [V311, V5], ids=["v311", "v5"])
def test_mqtt_publish_reaches_a_stomp_wildcard_subscriber(
    module_broker, stomp_clients, mqtt_clients, mqtt_version
):
    p = uid("p")
    s = stomp_clients.connect(module_broker)
    sub = s.subscribe(f"/topic/{p}.plant.*.temp")
    dev = mqtt_clients.connect(module_broker, version=mqtt_version)
    props = None
    if mqtt_version == V5:
        props = {"ContentType": "text/plain", "UserProperty": [("unit", "celsius")]}
    dev.publish(f"{p}/plant/7/temp", b"19.0", qos=1, props=props)
    dev.publish(f"{p}/plant/7/humidity", b"40", qos=1)
    dev.publish(f"{p}/plant/8/temp", BINARY, qos=0)
    got = s.exactly(2)
    assert [(m.body, m.headers["destination"]) for m in got] == [
        (b"19.0", f"/topic/{p}.plant.7.temp"),
        (BINARY, f"/topic/{p}.plant.8.temp"),
    ]
    assert [m.headers["subscription"] for m in got] == [sub, sub]
    assert [m.headers["persistent"] for m in got] == ["true", "false"]
    assert got[1].headers["content-length"] == str(len(BINARY))
    if mqtt_version == V5:
        assert got[0].headers["content-type"] == "text/plain"
        assert got[0].headers["unit"] == "celsius"


# --- AMQP → STOMP ---------------------------------------------------------------------


def test_amqp_publish_with_properties_reaches_a_stomp_queue_subscriber(
    module_broker, stomp_clients, amqp_channel, names
):
    q = names("q")
    amqp_channel.queue_declare(q, durable=True)
    s = stomp_clients.connect(module_broker)
    sub = s.subscribe(f"/queue/{q}")
    amqp_channel.basic_publish(
        "",
        q,
        b"from amqp\x00with nul",
        pika.BasicProperties(
            content_type="application/octet-stream",
            content_encoding="identity",
            correlation_id="corr-a",
            reply_to="amqp-replies",
            priority=4,
            expiration="60000",
            message_id="amqp-mid-1",
            timestamp=1700000000,
            type="evt",
            user_id="guest",
            app_id="billing",
            delivery_mode=2,
            headers={"x-str": "hello", "x-int": 42},
        ),
    )
    (m,) = s.exactly(1)
    assert m.body == b"from amqp\x00with nul"
    h = m.headers
    expected = {
        "subscription": sub,
        "destination": f"/queue/{q}",
        "redelivered": "false",
        "content-length": str(len(m.body)),
        "content-type": "application/octet-stream",
        "content-encoding": "identity",
        "correlation-id": "corr-a",
        "reply-to": "/reply-queue/amqp-replies",
        "priority": "4",
        "expiration": "60000",
        "amqp-message-id": "amqp-mid-1",
        "timestamp": "1700000000000",
        "type": "evt",
        "user-id": "guest",
        "app-id": "billing",
        "persistent": "true",
        "x-str": "hello",
        "x-int": "42",
    }
    for k, v in expected.items():
        assert h.get(k) == v, (k, h)
    assert set(h) == set(expected) | {"message-id"}, sorted(h)


def test_amqp_publish_to_amq_topic_shows_a_topic_destination(module_broker, stomp_clients, amqp_channel):
    k = uid("k")
    s = stomp_clients.connect(module_broker)
    s.subscribe(f"/topic/{k}.#")
    amqp_channel.basic_publish("amq.topic", f"{k}.a.b", b"x")
    amqp_channel.basic_publish("amq.direct", f"{k}.a.b", b"not routed")
    (m,) = s.exactly(1)
    assert (m.body, m.headers["destination"], m.headers["persistent"]) == (b"x", f"/topic/{k}.a.b", "false")


# --- request / reply across protocols ----------------------------------------------------


def test_amqp_request_answered_by_a_stomp_responder(module_broker, stomp_clients, amqp_channel, names):
    service = names("svc")
    amqp_channel.queue_declare(service, durable=True)
    reply_q = amqp_channel.queue_declare("", exclusive=True).method.queue
    responder = stomp_clients.connect(module_broker)
    responder.subscribe(f"/queue/{service}", ack="client-individual")
    amqp_channel.basic_publish(
        "", service, b"ping", pika.BasicProperties(reply_to=reply_q, correlation_id="rpc-1")
    )
    (req,) = responder.exactly(1)
    assert req.headers["reply-to"] == f"/reply-queue/{reply_q}"
    assert req.headers["correlation-id"] == "rpc-1"
    responder.send(req.headers["reply-to"], "pong", {"correlation-id": "rpc-1"}, receipt=True)
    responder.ack(req)
    ((method, props, body),) = take_exactly(amqp_channel, reply_q, 1)
    assert (body, props.correlation_id) == (b"pong", "rpc-1")
    assert (method.exchange, method.routing_key) == ("", reply_q)


def test_stomp_request_with_a_temp_queue_answered_by_an_amqp_responder(
    module_broker, stomp_clients, amqp_channel, names
):
    service = names("svc")
    amqp_channel.queue_declare(service, durable=True)
    requester = stomp_clients.connect(module_broker)
    requester.send(
        f"/queue/{service}",
        "ping",
        {"reply-to": "/temp-queue/rpc", "correlation-id": "rpc-2"},
        receipt=True,
    )
    ((_, props, body),) = take_exactly(amqp_channel, service, 1)
    assert body == b"ping"
    assert props.correlation_id == "rpc-2"
    assert props.reply_to.startswith("amq.gen-"), props.reply_to
    amqp_channel.basic_publish(
        "", props.reply_to, b"pong", pika.BasicProperties(correlation_id="rpc-2")
    )
    (rep,) = requester.exactly(1)
    assert rep.body == b"pong"
    assert rep.headers["correlation-id"] == "rpc-2"
    assert rep.headers["subscription"] == "/temp-queue/rpc"
    assert rep.headers["destination"] == "/temp-queue/rpc"


def test_stomp_ack_modes_settle_amqp_published_messages(module_broker, stomp_clients, amqp_channel, names):
    q = names("q")
    amqp_channel.queue_declare(q, durable=True)
    for i in range(3):
        amqp_channel.basic_publish("", q, b"a%d" % i)
    s = stomp_clients.connect(module_broker)
    s.subscribe(f"/queue/{q}", ack="client-individual")
    got = s.exactly(3)
    s.ack(got[0])
    s.ack(got[2])
    s.disconnect()
    rest = take_exactly(amqp_channel, q, 1)
    assert [(m.redelivered, b) for m, _, b in rest] == [(True, b"a1")]
