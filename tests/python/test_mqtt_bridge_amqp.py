"""MQTT and AMQP 0-9-1 on one broker: MQTT topics are routing keys on
`amq.topic` with `/` and `.` swapped (`+` is `*`, `#` is `#`); bodies pass
byte for byte; MQTT 5 request/response, content type and user properties
map to AMQP reply-to, correlation-id, content-type and headers, and back;
QoS maps to and from AMQP persistence."""

import pika
import pytest

from admin_support import memory_alarm
from amqp_support import take_exactly
from mqtt_support import (
    PUBACK,
    PUBLISH,
    V5,
    V311,
    ack_packet,
    clients,  # noqa: F401 (fixture)
    fence_all,
    publish_packet,
    uid,
    wait_until,
)

BINARY = bytes([0x00, 0xFF, 0x7F, 0x80, 0x0A, 0x0D]) + "°C".encode() + b"\x00"
PERSISTENT = pika.BasicProperties(delivery_mode=2)


def bound_queue(ch, names, pattern):
    """A durable queue bound to amq.topic with `pattern`."""
    q = names("q")
    ch.queue_declare(q, durable=True)
    ch.queue_bind(q, "amq.topic", routing_key=pattern)
    return q


@pytest.mark.parametrize("version", [V311, V5], ids=["v311", "v5"])
def test_mqtt_device_publishes_reach_an_amqp_queue_byte_for_byte(
    module_broker, clients, amqp_channel, names, version
):
    p = uid("p")
    q = bound_queue(amqp_channel, names, p + ".plant.*.temp")
    dev = clients.connect(module_broker, version=version)
    for qos in (0, 1, 2):
        dev.publish(f"{p}/plant/7/temp", BINARY + bytes([qos]), qos=qos)
    dev.publish(f"{p}/plant/7/8/temp", b"two levels: no match", qos=1)
    dev.publish(f"{p}/plant/7/temp2", b"other word: no match", qos=1)

    got = take_exactly(amqp_channel, q, 3)
    assert [(m.exchange, m.routing_key, body) for m, _, body in got] == [
        ("amq.topic", p + ".plant.7.temp", BINARY + bytes([qos])) for qos in (0, 1, 2)
    ]
    assert [props.headers["x-mqtt-publish-qos"] for _, props, _ in got] == [0, 1, 2]
    # QoS 1 and 2 messages are persistent.
    assert [props.delivery_mode for _, props, _ in got] in ([None, 2, 2], [1, 2, 2])
    amqp_channel.queue_delete(q)


def test_dots_in_mqtt_topics_become_slashes_in_routing_keys(
    module_broker, clients, amqp_channel, names
):
    p = uid("p")
    q = bound_queue(amqp_channel, names, p + ".v1/2.#")
    clients.connect(module_broker).publish(f"{p}/v1.2/x", b"dotted", qos=1)
    ((m, _, body),) = take_exactly(amqp_channel, q, 1)
    assert (m.routing_key, body) == (p + ".v1/2.x", b"dotted")
    amqp_channel.queue_delete(q)


def amqp_publish(ch, key, body, **props):
    ch.basic_publish("amq.topic", key, body, pika.BasicProperties(**props))


def test_amqp_publish_reaches_mqtt_subscribers_with_the_topic_translated(
    module_broker, clients, amqp_channel
):
    p = uid("p")
    plus = clients.connect(module_broker, version=V311)
    assert plus.subscribe(p + "/cmd/+", qos=1) == [1]
    hash_ = clients.connect(module_broker, version=V5)
    assert hash_.subscribe(p + "/cmd/#", qos=1) == [1]
    amqp_publish(amqp_channel, p + ".cmd.7", BINARY, delivery_mode=2)
    amqp_publish(amqp_channel, p + ".cmd.7.extra", b"deeper", delivery_mode=2)
    amqp_publish(amqp_channel, p + ".cmd", b"parent", delivery_mode=2)
    amqp_publish(amqp_channel, p + ".other.7", b"no match", delivery_mode=2)
    got_plus, got_hash = fence_all(clients.connect(module_broker), [plus, hash_], p + "/cmd/fence")
    assert [(m.topic, m.payload, m.qos) for m in got_plus] == [(p + "/cmd/7", BINARY, 1)]
    # `a/#` also matches `a` itself (MQTT 4.7.1.2; AMQP `a.#` too).
    assert [(m.topic, m.payload) for m in got_hash] == [
        (p + "/cmd/7", BINARY),
        (p + "/cmd/7/extra", b"deeper"),
        (p + "/cmd", b"parent"),
    ]


@pytest.mark.parametrize(
    "delivery_mode,sub_qos,expected_qos",
    [(2, 2, 1), (2, 1, 1), (2, 0, 0), (1, 2, 0), (None, 1, 0)],
    ids=["persistent-sub2", "persistent-sub1", "persistent-sub0", "transient", "no-mode"],
)
def test_amqp_persistence_becomes_mqtt_qos_capped_by_the_subscription(
    module_broker, clients, amqp_channel, delivery_mode, sub_qos, expected_qos
):
    p = uid("p")
    sub = clients.connect(module_broker, version=V5)
    assert sub.subscribe(p + "/q", qos=sub_qos) == [sub_qos]
    props = {} if delivery_mode is None else {"delivery_mode": delivery_mode}
    amqp_publish(amqp_channel, p + ".q", b"from amqp", **props)
    assert [(m.topic, m.payload, m.qos) for m in sub.wait_messages(1)] == [
        (p + "/q", b"from amqp", expected_qos)
    ]


def test_mqtt5_request_and_amqp_reply_with_correlation(module_broker, clients, amqp_channel, names):
    p = uid("p")
    service_q = bound_queue(amqp_channel, names, p + ".req.#")
    dev = clients.connect(module_broker, version=V5)
    assert dev.subscribe(p + "/reply/dev7", qos=1) == [1]
    dev.publish(
        p + "/req/dev7",
        b"what is the setpoint?",
        qos=1,
        props={"ResponseTopic": p + "/reply/dev7", "CorrelationData": b"req-42"},
    )
    ((m, props, body),) = take_exactly(amqp_channel, service_q, 1)
    assert (m.routing_key, body) == (p + ".req.dev7", b"what is the setpoint?")
    # reply_to is an address the default exchange resolves; the header is
    # RabbitMQ's MQTT plugin's name for the same topic.
    assert props.reply_to == "/topic/" + p + ".reply.dev7"
    assert props.headers["x-reply-to-topic"] == p + ".reply.dev7"
    assert props.correlation_id == "req-42"

    # The usual AMQP RPC reply, and the RabbitMQ way, both arrive.
    amqp_channel.basic_publish(
        "",
        props.reply_to,
        b"21.5",
        pika.BasicProperties(correlation_id=props.correlation_id, delivery_mode=2),
    )
    amqp_channel.basic_publish(
        "amq.topic",
        props.headers["x-reply-to-topic"],
        b"21.6",
        pika.BasicProperties(correlation_id=props.correlation_id, delivery_mode=2),
    )
    replies = dev.wait_messages(2)
    assert [(r.topic, r.payload, r.qos) for r in replies] == [
        (p + "/reply/dev7", b"21.5", 1),
        (p + "/reply/dev7", b"21.6", 1),
    ]
    assert [r.props.get("CorrelationData") for r in replies] == [b"req-42", b"req-42"]
    amqp_channel.queue_delete(service_q)


def test_mqtt5_content_type_and_user_properties_become_amqp_properties(
    module_broker, clients, amqp_channel, names
):
    p = uid("p")
    q = bound_queue(amqp_channel, names, p + ".#")
    dev = clients.connect(module_broker, version=V5)
    user = [("site", "berlin"), ("unit", "°C"), ("empty", "")]
    dev.publish(
        p + "/t",
        b'{"t": 21.5}',
        qos=1,
        props={"ContentType": "application/json", "UserProperty": user},
    )
    ((_, props, body),) = take_exactly(amqp_channel, q, 1)
    assert body == b'{"t": 21.5}'
    assert props.content_type == "application/json"
    own = {k: v for k, v in props.headers.items() if not k.startswith("x-mqtt-")}
    assert own == dict(user)  # string values
    assert props.headers["x-mqtt-publish-qos"] == 1
    amqp_channel.queue_delete(q)


def test_amqp_content_type_and_string_headers_become_mqtt5_properties(
    module_broker, clients, amqp_channel
):
    p = uid("p")
    sub = clients.connect(module_broker, version=V5)
    assert sub.subscribe(p + "/t", qos=1) == [1]
    amqp_publish(
        amqp_channel,
        p + ".t",
        b"<t>21.5</t>",
        content_type="application/xml",
        headers={"site": "berlin", "unit": "°C"},
        delivery_mode=2,
    )
    (m,) = sub.wait_messages(1)
    assert (m.topic, m.payload) == (p + "/t", b"<t>21.5</t>")
    assert m.props.get("ContentType") == "application/xml"
    assert sorted(m.props.get("UserProperty", [])) == [("site", "berlin"), ("unit", "°C")]


def test_v3_subscriber_gets_the_body_of_an_amqp_message_with_properties(
    module_broker, clients, amqp_channel
):
    p = uid("p")
    sub = clients.connect(module_broker, version=V311)
    assert sub.subscribe(p + "/t", qos=1) == [1]
    amqp_publish(
        amqp_channel, p + ".t", BINARY, content_type="x/y", headers={"a": "b"}, correlation_id="c"
    )
    assert [(m.topic, m.payload, m.qos) for m in sub.wait_messages(1)] == [(p + "/t", BINARY, 0)]


def test_amqp_deleting_a_session_queue_with_a_message_in_flight_does_not_starve_it(
    module_broker, clients, amqp_channel
):
    """An AMQP queue.delete of an MQTT session's queue while its only slot
    (Receive Maximum 1, MQTT 5 section 4.9) holds an unacknowledged QoS 1
    delivery: that delivery can no longer be settled, so it must not keep
    the slot; after subscribing again the session gets new messages."""
    topic = uid() + "/t1"
    cid = uid("c")
    raw = clients.raw(module_broker, 5)
    assert raw.connect(cid, clean=True, props={"ReceiveMaximum": 1}).reason == 0
    assert raw.subscribe(1, [(topic, 1)]) == [1]
    pub = clients.connect(module_broker, version=V5)
    pub.publish(topic, b"in flight", qos=1)
    first = raw.expect(PUBLISH)
    assert (first.topic, first.payload, first.qos) == (topic, b"in flight", 1)
    # No PUBACK: the one slot stays taken.

    queue = "mqtt-session-" + cid
    amqp_channel.queue_declare(queue, passive=True)  # it exists: 404 otherwise
    amqp_channel.queue_delete(queue)
    assert raw.subscribe(2, [(topic, 1)]) == [1]
    pub.publish(topic, b"after delete", qos=1)
    p = raw.expect(PUBLISH)
    assert (p.topic, p.payload, p.qos, p.dup) == (topic, b"after delete", 1, False)
    # The client never acknowledged the first id: it is not reused.
    assert p.pid != first.pid
    raw.send(ack_packet(PUBACK, p.pid, 5))
    assert raw.is_open_after(0.3)


def test_memory_alarm_stops_reading_an_mqtt_publisher_until_queues_drain(make_broker, clients):
    """Above `memory_high_watermark` the broker stops reading publishing
    connections (DESIGN: one backpressure chain): an MQTT publisher's next
    PUBLISH is neither routed nor acknowledged until an AMQP consumer drains
    the queue; then it goes through and gets its PUBACK."""
    broker = make_broker(broker_options=["memory_high_watermark = 14000"])
    conn = broker.connect()
    ch = conn.channel()
    ch.queue_declare("alarm-mqtt")
    ch.queue_bind("alarm-mqtt", "amq.topic", routing_key="alarm.t")
    raw = clients.raw(broker, 4)
    assert raw.connect(uid("c")).reason == 0
    for pid in (1, 2, 3):
        assert raw.publish("alarm/t", b"x" * 5000, qos=1, pid=pid) == 0
    # Three 5,000-byte messages count about 16,700 (body + per-message
    # footprint): over the 14,000-byte watermark, which two are not (the broker checks every
    # 250 ms; /metrics says when). The next publish then waits.
    assert wait_until(lambda: memory_alarm(broker) == 1), "alarm never raised"
    raw.send(publish_packet("alarm/t", b"during", qos=1, pid=4))
    assert raw.is_open_after(1.0)  # no PUBACK, no close
    assert ch.queue_declare("alarm-mqtt", passive=True).method.message_count == 3
    drained = [len(ch.basic_get("alarm-mqtt", auto_ack=True)[2]) for _ in range(3)]
    assert drained == [5000, 5000, 5000]
    got, reason, _ = raw.expect(PUBACK)
    assert (got, reason) == (4, 0)
    assert wait_until(
        lambda: ch.queue_declare("alarm-mqtt", passive=True).method.message_count == 1
    )
    assert ch.basic_get("alarm-mqtt", auto_ack=True)[2] == b"during"
    conn.close()
