"""MQTT features reached from AMQP 0-9-1 and STOMP (docs/interop.md):
retained messages set and cleared by any publisher (and kept across a
restart); a shared subscription's queue drained by AMQP and STOMP
consumers; the QoS an MQTT subscriber gets for AMQP and STOMP messages,
QoS 2's exactly-once handshake included; `$queue/` topics; routing keys
that are no MQTT topic name."""

from collections import Counter

import pika
import pytest

from amqp_support import Collector, take_exactly
from amqp_support import wait_until as amqp_wait_until
from mqtt_support import (
    PUBCOMP,
    PUBLISH,
    PUBREC,
    PUBREL,
    V5,
    V311,
    Publish,
    ack_packet,
    clients,  # noqa: F401 (fixture)
    fence,
    uid,
    wait_until,
)
from stomp_support import stomp_clients  # noqa: F401 (fixture)

MQTT_VERSIONS = pytest.mark.parametrize("version", [V311, V5], ids=["v311", "v5"])
BINARY = b"\x00\xff retained \x80\x00"


def summary(msgs):
    return [(m.topic, m.payload, m.qos, m.retain) for m in msgs]


def amqp_topic(ch, key, body, headers=None, delivery_mode=2):
    ch.basic_publish(
        "amq.topic",
        key,
        body,
        pika.BasicProperties(delivery_mode=delivery_mode, headers=headers),
    )


# --- retained messages from AMQP and STOMP --------------------------------------------


@MQTT_VERSIONS
def test_amqp_and_stomp_publishes_with_x_mqtt_retain_set_the_retained_message(
    module_broker, clients, stomp_clients, amqp_channel, version
):
    p = uid("p")
    amqp_channel.confirm_delivery()  # basic_publish returns once confirmed
    amqp_topic(amqp_channel, p + ".amqp.bool", BINARY + b"1", {"x-mqtt-retain": True})
    amqp_topic(amqp_channel, p + ".amqp.int", BINARY + b"2", {"x-mqtt-retain": 1})
    amqp_topic(amqp_channel, p + ".amqp.off", b"not retained", {"x-mqtt-retain": False})
    amqp_topic(amqp_channel, p + ".amqp.none", b"not retained")
    amqp_topic(
        amqp_channel, p + ".amqp.transient", b"qos 0", {"x-mqtt-retain": True}, delivery_mode=1
    )
    s = stomp_clients.connect(module_broker)
    s.send(
        f"/topic/{p}.stomp.lower",
        BINARY + b"3",
        {"x-mqtt-retain": "true", "persistent": "true"},
        receipt=True,
    )
    s.send(
        f"/topic/{p}.stomp.upper",
        BINARY + b"4",
        {"x-mqtt-retain": "TRUE", "persistent": "true"},
        receipt=True,
    )
    s.send(f"/topic/{p}.stomp.none", b"not retained", {"persistent": "true"}, receipt=True)

    sub = clients.connect(module_broker, version=version)
    assert sub.subscribe(p + "/#", qos=1) == [1]
    got = sub.wait_messages(5)
    assert sorted(summary(got)) == [
        (p + "/amqp/bool", BINARY + b"1", 1, True),
        (p + "/amqp/int", BINARY + b"2", 1, True),
        (p + "/amqp/transient", b"qos 0", 0, True),
        (p + "/stomp/lower", BINARY + b"3", 1, True),
        (p + "/stomp/upper", BINARY + b"4", 1, True),
    ]
    assert fence(clients.connect(module_broker), sub, p + "/fence") == got


@MQTT_VERSIONS
def test_empty_body_with_x_mqtt_retain_clears_the_retained_message(
    module_broker, clients, stomp_clients, amqp_channel, version
):
    p = uid("p")
    amqp_channel.confirm_delivery()
    s = stomp_clients.connect(module_broker)
    for word in ("a", "s"):
        amqp_topic(amqp_channel, f"{p}.{word}", b"old " + word.encode(), {"x-mqtt-retain": True})
    amqp_topic(amqp_channel, p + ".kept", b"kept", {"x-mqtt-retain": True})
    # Cleared from AMQP and from STOMP (no body at all).
    amqp_topic(amqp_channel, p + ".a", b"", {"x-mqtt-retain": True})
    s.send(f"/topic/{p}.s", b"", {"x-mqtt-retain": "true"}, receipt=True)

    sub = clients.connect(module_broker, version=version)
    assert sub.subscribe(p + "/+", qos=1) == [1]
    got = fence(clients.connect(module_broker), sub, p + "/fence")
    assert summary(got) == [(p + "/kept", b"kept", 1, True)]


@pytest.mark.deadline(60)
@pytest.mark.parametrize("how", ["restart", "kill9"])
def test_retained_messages_from_amqp_and_stomp_survive_the_broker_going_down(
    broker, clients, stomp_clients, how
):
    p = uid("p")
    conn = broker.connect()
    ch = conn.channel()
    ch.confirm_delivery()
    amqp_topic(ch, p + ".amqp", BINARY + b"a", {"x-mqtt-retain": True})
    amqp_topic(ch, p + ".cleared", b"to clear", {"x-mqtt-retain": True})
    s = stomp_clients.connect(broker)
    s.send(f"/topic/{p}.stomp", BINARY + b"s", {"x-mqtt-retain": "true"}, receipt=True)
    s.send(f"/topic/{p}.cleared", b"", {"x-mqtt-retain": "true"}, receipt=True)
    # Confirmed / receipted: stored. Nothing else is waited for.
    if how == "restart":
        broker.restart()
    else:
        broker.kill9()
        broker.start()

    for version in (V311, V5):
        sub = clients.connect(broker, version=version)
        assert sub.subscribe(p + "/+", qos=1) == [1]
        got = sub.wait_messages(2)
        assert sorted(summary(got)) == [
            (p + "/amqp", BINARY + b"a", 1, True),
            (p + "/stomp", BINARY + b"s", 0, True),
        ]
        assert fence(clients.connect(broker), sub, p + "/fence") == got


# --- shared subscriptions ----------------------------------------------------------


@pytest.mark.deadline(60)
def test_shared_subscription_queue_is_drained_by_amqp_and_stomp_consumers(
    module_broker, clients, stomp_clients, shared_amqp
):
    p = uid("p")
    group = uid("g")
    filt = f"{p}/plant/+/temp"
    member_id = uid("m")
    member = clients.connect(
        module_broker, client_id=member_id, version=V5, clean=False, session_expiry=300
    )
    assert member.subscribe(f"$share/{group}/{filt}", qos=1) == [1]
    member.disconnect()  # parked: its consumer on the shared queue is paused

    queue = f"mqtt-shared-{group}/{filt}"
    destination = "/amq/queue/" + queue.replace("/", "%2F")
    assert destination == f"/amq/queue/mqtt-shared-{group}%2F{p}%2Fplant%2F+%2Ftemp"

    pub = clients.connect(module_broker, version=V311)
    sent = [f"m{i}".encode() for i in range(20)]
    for body in sent[:10]:
        assert pub.publish(f"{p}/plant/{body.decode()}/temp", body, qos=1) == 0
    pub.publish(f"{p}/plant/7/8/temp", b"two levels: no match", qos=1)

    conn = shared_amqp.get()
    ch = conn.channel()
    ch.basic_qos(prefetch_count=1)
    amqp_got = Collector()

    def on_message(channel, method, properties, body):
        amqp_got(channel, method, properties, body)
        channel.basic_ack(method.delivery_tag)

    tag = ch.basic_consume(queue, on_message)
    s = stomp_clients.connect(module_broker)
    sub_id = s.subscribe(destination, ack="auto")
    for body in sent[10:]:
        assert pub.publish(f"{p}/plant/{body.decode()}/temp", body, qos=1) == 0

    def total():
        return len(amqp_got) + len(s.messages)

    ok = amqp_wait_until(conn, lambda: total() >= len(sent), timeout=10)
    assert ok, (amqp_got.bodies, s.bodies)
    amqp_wait_until(conn, lambda: False, 0.5)  # nothing more, nothing twice
    amqp_bodies, stomp_bodies = amqp_got.bodies, s.bodies
    assert Counter(amqp_bodies + stomp_bodies) == Counter(sent), (amqp_bodies, stomp_bodies)
    # Both competed for the queue.
    assert amqp_bodies and stomp_bodies, (amqp_bodies, stomp_bodies)
    assert [m.routing_key for m, _, _ in amqp_got.deliveries] == [
        f"{p}.plant.{b.decode()}.temp" for b in amqp_bodies
    ]
    assert [f.headers["subscription"] for f in s.messages] == [sub_id] * len(stomp_bodies)

    ch.basic_cancel(tag)
    ch.close()
    s.unsubscribe(sub_id)
    # The MQTT member comes back to an empty queue: nothing was left or
    # delivered twice, and the queue is still its shared subscription.
    member = clients.connect(
        module_broker, client_id=member_id, version=V5, clean=False, session_expiry=0
    )
    assert member.connack.session_present is True
    assert pub.publish(f"{p}/plant/last/temp", b"last", qos=1) == 0
    got = member.wait_messages(1)
    member.assert_quiet(1, within=0.3)
    assert [(m.topic, m.payload) for m in got] == [(f"{p}/plant/last/temp", b"last")]


# --- QoS for AMQP- and STOMP-origin messages ------------------------------------------


@MQTT_VERSIONS
def test_qos2_subscriber_gets_amqp_and_stomp_messages_at_their_published_qos_once(
    module_broker, clients, stomp_clients, amqp_channel, version
):
    p = uid("p")
    sub = clients.connect(module_broker, version=version)
    assert sub.subscribe(p + "/#", qos=2) == [2]
    amqp_channel.confirm_delivery()
    amqp_topic(amqp_channel, p + ".amqp.q2", b"a2", {"x-mqtt-publish-qos": 2})
    amqp_topic(amqp_channel, p + ".amqp.q2text", b"a2t", {"x-mqtt-publish-qos": "2"})
    amqp_topic(amqp_channel, p + ".amqp.q1", b"a1")
    amqp_topic(amqp_channel, p + ".amqp.q0", b"a0", delivery_mode=1)
    s = stomp_clients.connect(module_broker)
    s.send(
        f"/topic/{p}.stomp.q2",
        b"s2",
        {"persistent": "true", "x-mqtt-publish-qos": "2"},
        receipt=True,
    )
    s.send(f"/topic/{p}.stomp.q1", b"s1", {"persistent": "true"}, receipt=True)
    s.send(f"/topic/{p}.stomp.q0", b"s0", receipt=True)

    got = sub.wait_messages(7)
    assert sorted(summary(got)) == sorted(
        [
            (p + "/amqp/q2", b"a2", 2, False),
            (p + "/amqp/q2text", b"a2t", 2, False),
            (p + "/amqp/q1", b"a1", 1, False),
            (p + "/amqp/q0", b"a0", 0, False),
            (p + "/stomp/q2", b"s2", 2, False),
            (p + "/stomp/q1", b"s1", 1, False),
            (p + "/stomp/q0", b"s0", 0, False),
        ]
    )
    assert fence(clients.connect(module_broker), sub, p + "/fence", qos=2) == got


def subscribed_raw(clients, broker, level, topic):
    """A raw client with a persistent session subscribed to `topic` at
    QoS 2; returns (client, client id)."""
    cid = uid("c")
    raw = clients.raw(broker, level)
    assert raw.connect_persistent(cid).reason == 0
    assert raw.subscribe(1, [(topic, 2)]) == [2]
    return raw, cid


def reconnect_raw(clients, broker, level, cid):
    raw = clients.raw(broker, level)
    ack = raw.connect_persistent(cid)
    assert ack.reason == 0 and ack.session_present is True
    return raw


def next_publish(raw):
    p = raw.expect(PUBLISH)
    assert isinstance(p, Publish)
    return p


def publish_qos2_from(origin, broker, stomp_clients, key, body):
    if origin == "amqp":
        conn = broker.connect()
        try:
            ch = conn.channel()
            ch.confirm_delivery()
            amqp_topic(ch, key, body, {"x-mqtt-publish-qos": 2})
        finally:
            conn.close()
    else:
        s = stomp_clients.connect(broker)
        s.send(
            f"/topic/{key}",
            body,
            {"persistent": "true", "x-mqtt-publish-qos": "2"},
            receipt=True,
        )


@pytest.mark.parametrize("origin", ["amqp", "stomp"])
@pytest.mark.parametrize("level", [4, 5], ids=["v311", "v5"])
def test_qos2_delivery_of_amqp_and_stomp_messages_is_resent_with_dup_never_twice(
    module_broker, clients, stomp_clients, level, origin
):
    p = uid("p")
    topic = p + "/in"
    raw, cid = subscribed_raw(clients, module_broker, level, topic)
    publish_qos2_from(origin, module_broker, stomp_clients, p + ".in", b"exactly once")
    first = next_publish(raw)
    assert (first.topic, first.payload, first.qos, first.dup) == (
        topic,
        b"exactly once",
        2,
        False,
    )
    raw.close()  # PUBREC withheld

    # Resent, same id, DUP set.
    raw = reconnect_raw(clients, module_broker, level, cid)
    again = next_publish(raw)
    assert (again.topic, again.payload, again.qos, again.dup, again.pid) == (
        topic,
        b"exactly once",
        2,
        True,
        first.pid,
    )
    raw.send(ack_packet(PUBREC, again.pid, level))
    assert raw.expect(PUBREL)[0] == again.pid
    raw.close()  # PUBCOMP withheld

    # After PUBREC the message is the client's: only PUBREL comes again.
    raw = reconnect_raw(clients, module_broker, level, cid)
    assert raw.expect(PUBREL)[0] == again.pid
    raw.send(ack_packet(PUBCOMP, again.pid, level))
    publish_qos2_from(origin, module_broker, stomp_clients, p + ".in", b"next")
    nxt = next_publish(raw)
    assert (nxt.payload, nxt.qos, nxt.dup) == (b"next", 2, False)
    raw.send(ack_packet(PUBREC, nxt.pid, level))
    assert raw.expect(PUBREL)[0] == nxt.pid
    raw.send(ack_packet(PUBCOMP, nxt.pid, level))
    assert raw.is_open_after(0.3)


# --- $queue/ topics -------------------------------------------------------------------


@MQTT_VERSIONS
def test_mqtt_publish_to_dollar_queue_goes_to_the_queue(
    module_broker, clients, amqp_channel, names, version
):
    q = names("jobs")
    amqp_channel.queue_declare(q)
    pub = clients.connect(module_broker, version=version)
    assert pub.publish(f"$queue/{q}", b"job \x00\xff", qos=1) == 0
    assert pub.publish(f"$queue/{q}", b"retained flag ignored", qos=1, retain=True) == 0
    got = take_exactly(amqp_channel, q, 2)
    assert [(m.exchange, m.routing_key, body) for m, _, body in got] == [
        ("", q, b"job \x00\xff"),
        ("", q, b"retained flag ignored"),
    ]
    assert amqp_channel.queue_declare(q, passive=True).method.message_count == 0
    amqp_channel.queue_delete(q)


@MQTT_VERSIONS
def test_subscribe_to_a_dollar_queue_filter_is_refused(module_broker, clients, names, version):
    refused = 0x8F if version == V5 else 0x80
    sub = clients.connect(module_broker, version=version)
    q = names("jobs")
    assert sub.subscribe(f"$queue/{q}", qos=1) == [refused]
    assert sub.subscribe(f"$queue/{q}/#", ("ok/" + uid(), 1), qos=0) == [refused, 1]


# --- routing keys that are no MQTT topic name -----------------------------------------


def sys_updates(sub, topic, mark):
    return [m for m in sub.received()[mark:] if m.topic == topic]


def sys_value_after(sub, topic, mark, nth=2, timeout=6):
    """The payload of the `nth` update of `topic` received after the inbox
    held `mark` messages (the first may have been computed before)."""
    ok = wait_until(lambda: len(sys_updates(sub, topic, mark)) >= nth, timeout)
    got = sys_updates(sub, topic, mark)
    assert ok, f"{len(got)} updates of {topic} within {timeout} s: {got}"
    return int(got[nth - 1].payload)


UNDELIVERABLE = "$SYS/broker/messages/undeliverable"


@pytest.mark.deadline(40)
@MQTT_VERSIONS
def test_routing_keys_that_are_no_mqtt_topic_are_not_delivered_and_counted(
    make_broker, clients, stomp_clients, version
):
    broker = make_broker(mqtt_options=["sys_interval = 1"])
    monitor = clients.connect(broker, version=V311)
    assert monitor.subscribe(UNDELIVERABLE, qos=0) == [0]
    (first,) = monitor.wait_messages(1)
    assert (first.topic, first.retain) == (UNDELIVERABLE, True)
    before = int(first.payload)

    p = uid("p")
    sub = clients.connect(broker, version=version)
    assert sub.subscribe(p + "/#", qos=1) == [1]
    conn = broker.connect()
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        amqp_topic(ch, p + ".a.#", b"hash word")
        amqp_topic(ch, p + ".x+y", b"plus")
        amqp_topic(ch, p + ".n\x00ul", b"nul")
        amqp_topic(ch, p + ".ok", b"valid")
    finally:
        conn.close()
    s = stomp_clients.connect(broker)
    s.send(f"/topic/{p}.b.#", b"hash from stomp", {"persistent": "true"}, receipt=True)

    got = fence(clients.connect(broker), sub, p + "/fence")
    assert summary(got) == [(p + "/ok", b"valid", 1, False)]
    mark = len(monitor.received())
    assert sys_value_after(monitor, UNDELIVERABLE, mark) == before + 4


def test_amqp_headers_mqtt_cannot_carry_do_not_block_delivery(module_broker, clients, amqp_channel):
    """An AMQP header of 70 KB (longer than any MQTT string) or holding
    U+0000 is left out of the MQTT 5 PUBLISH; the message and the ones
    after it arrive, QoS 1, with the headers that fit."""
    topic = uid("big") + "/h"
    sub = clients.connect(module_broker, version=V5)
    assert sub.subscribe(topic, qos=1) == [1]
    key = topic.replace("/", ".")
    headers = {"big": "x" * 70_000, "nul": "a\x00b", "small": "ok"}
    for i in range(3):
        amqp_channel.basic_publish(
            "amq.topic", key, b"m%d" % i, pika.BasicProperties(delivery_mode=2, headers=headers)
        )
    got = sub.wait_messages(3)
    assert [(m.payload, m.qos) for m in got] == [(b"m0", 1), (b"m1", 1), (b"m2", 1)]
    assert [m.props.get("UserProperty") for m in got] == [[("small", "ok")]] * 3
