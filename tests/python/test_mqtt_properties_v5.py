"""MQTT 5 properties end to end (MQTT to MQTT): the PUBLISH properties,
Message Expiry counted down while stored, topic aliases from the client
and from the broker, Maximum Packet Size, and PUBACK reason codes."""

import time

import pytest

from mqtt_support import (
    PUBACK,
    PUBLISH,
    V5,
    V311,
    clients,  # noqa: F401 (fixture)
    fence,
    persistent,
    publish_packet,
    uid,
)

ALL_PUBLISH_PROPS = {
    "PayloadFormatIndicator": 1,
    "MessageExpiryInterval": 60,
    "ContentType": "application/json; charset=utf-8",
    "ResponseTopic": "replies/here",
    "CorrelationData": b"\x00\x01corr\xfe\xff",
    "UserProperty": [("zeta", "1"), ("alpha", "2"), ("zeta", "3"), ("empty", "")],
}


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_publish_properties_are_carried_mqtt_to_mqtt(module_broker, clients, qos):
    topic = uid() + "/p"
    sub = clients.connect(module_broker, version=V5)
    assert sub.subscribe(topic, qos=2) == [2]
    pub = clients.connect(module_broker, version=V5)
    pub.publish(topic, b'{"v": 1}', qos=qos, props=ALL_PUBLISH_PROPS)
    (m,) = sub.wait_messages(1)
    assert (m.topic, m.payload, m.qos) == (topic, b'{"v": 1}', qos)
    expected = dict(ALL_PUBLISH_PROPS)
    got = {k: m.props.get(k) for k in expected}
    # Counted down while in the broker: at most what was sent.
    assert 0 < got.pop("MessageExpiryInterval") <= 60
    expected.pop("MessageExpiryInterval")
    assert got == expected  # user properties in their order, duplicates kept


def test_v3_subscriber_gets_the_payload_of_a_v5_publish_with_properties(module_broker, clients):
    topic = uid() + "/p"
    sub = clients.connect(module_broker, version=V311)
    assert sub.subscribe(topic, qos=1) == [1]
    clients.connect(module_broker, version=V5).publish(
        topic, b"body", qos=1, props=ALL_PUBLISH_PROPS
    )
    assert [(m.payload, m.qos, m.props) for m in sub.wait_messages(1)] == [(b"body", 1, {})]


def test_a_message_without_properties_arrives_without_them(module_broker, clients):
    topic = uid() + "/p"
    sub = clients.connect(module_broker, version=V5)
    assert sub.subscribe(topic, qos=1) == [1]
    clients.connect(module_broker, version=V311).publish(topic, b"plain", qos=1)
    (m,) = sub.wait_messages(1)
    assert m.payload == b"plain"
    assert m.props == {}


@pytest.mark.deadline(30)
def test_message_expiry_is_counted_down_while_the_message_waits(module_broker, clients):
    base = uid()
    cid = uid("c")
    sub = clients.connect(module_broker, client_id=cid, version=V5, **persistent(V5))
    assert sub.subscribe(base + "/#", qos=1) == [1]
    sub.disconnect()
    pub = clients.connect(module_broker, version=V5)
    pub.publish(base + "/short", b"expires", qos=1, props={"MessageExpiryInterval": 2})
    pub.publish(base + "/long", b"kept", qos=1, props={"MessageExpiryInterval": 60})
    pub.publish(base + "/none", b"no expiry", qos=1)
    time.sleep(3)

    sub = clients.connect(module_broker, client_id=cid, version=V5, **persistent(V5))
    got = sub.wait_messages(2)
    assert [(m.topic, m.payload) for m in got] == [
        (base + "/long", b"kept"),
        (base + "/none", b"no expiry"),
    ]
    # 5.0 section 3.3.2.3.3: the received value minus the time waited (3 s).
    assert 0 < got[0].props["MessageExpiryInterval"] <= 58
    assert "MessageExpiryInterval" not in got[1].props
    assert fence(pub, sub, base + "/none") == got


def test_topic_alias_set_by_the_client(module_broker, clients):
    base = uid()
    sub = clients.connect(module_broker, version=V5)
    assert sub.subscribe(base + "/#", qos=1) == [1]
    pub = clients.connect(module_broker, version=V5)
    assert pub.connack.props.get("TopicAliasMaximum", 0) >= 2
    pub.publish(base + "/one", b"sets alias 1", qos=1, props={"TopicAlias": 1})
    pub.publish(base + "/two", b"sets alias 2", qos=1, props={"TopicAlias": 2})
    pub.publish("", b"alias 1 only", qos=1, props={"TopicAlias": 1})
    pub.publish("", b"alias 2 only", qos=0, props={"TopicAlias": 2})
    pub.publish(base + "/three", b"remaps alias 1", qos=1, props={"TopicAlias": 1})
    pub.publish("", b"alias 1 again", qos=1, props={"TopicAlias": 1})
    got = fence(pub, sub, base + "/fence")
    assert [(m.topic, m.payload) for m in got] == [
        (base + "/one", b"sets alias 1"),
        (base + "/two", b"sets alias 2"),
        (base + "/one", b"alias 1 only"),
        (base + "/two", b"alias 2 only"),
        (base + "/three", b"remaps alias 1"),
        (base + "/three", b"alias 1 again"),
    ]
    assert all("TopicAlias" not in m.props for m in got)  # sub announced no maximum


@pytest.mark.parametrize("maximum", [0, 2])
def test_broker_topic_aliases_stay_within_the_client_maximum(module_broker, clients, maximum):
    base = uid()
    raw = clients.raw(module_broker, 5)
    props = {"TopicAliasMaximum": maximum} if maximum else None
    assert raw.connect(uid("c"), props=props).reason == 0
    assert raw.subscribe(1, [(base + "/#", 0)]) == [0]
    pub = clients.connect(module_broker, version=V5)
    sent = []
    for i in range(4):
        for t in ("a", "b", "c", "a/long/topic/name/to/make/an/alias/worth/it"):
            sent.append((f"{base}/{t}", b"%d" % i))
            pub.publish(f"{base}/{t}", b"%d" % i, qos=0)
    aliases, received = {}, []
    for _ in sent:
        p = raw.expect(PUBLISH)
        alias = p.props.get("TopicAlias")
        if maximum == 0:
            assert alias is None, p
        if alias is not None:
            assert 1 <= alias <= maximum, p
            if p.topic:
                aliases[alias] = p.topic
            assert alias in aliases, f"alias {alias} used before being set: {p}"
        else:
            assert p.topic, p
        received.append((p.topic or aliases[alias], p.payload))
    assert received == sent


def test_maximum_packet_size_of_the_client_is_respected(module_broker, clients):
    topic = uid() + "/m"
    small = clients.connect(module_broker, version=V5, connect_props={"MaximumPacketSize": 100})
    assert small.subscribe(topic, qos=1) == [1]
    pub = clients.connect(module_broker, version=V5)
    pub.publish(topic, b"x" * 500, qos=1)
    pub.publish(topic, b"small one", qos=1)
    got = small.wait_messages(1)
    assert [m.payload for m in got] == [b"small one"]
    assert fence(pub, small, topic) == got
    assert small.disconnected is None


def test_puback_reason_code_says_when_nobody_subscribed(module_broker, clients):
    topic = uid() + "/nobody"
    pub = clients.connect(module_broker, version=V5)
    assert pub.publish(topic, b"to nobody", qos=1) == 0x10  # no matching subscribers
    raw = clients.raw(module_broker, 5)
    assert raw.connect(uid("c")).reason == 0
    assert raw.publish(topic, b"to nobody", qos=1, pid=1) == 0x10
    sub = clients.connect(module_broker, version=V5)
    assert sub.subscribe(topic, qos=1) == [1]
    assert pub.publish(topic, b"to somebody", qos=1) == 0x00
    assert raw.publish(topic, b"to somebody", qos=1, pid=2) == 0x00
    # QoS 2 to a subscriber: PUBREC 0x00 (paho reports only the PUBCOMP's).
    assert raw.publish(topic, b"to somebody", qos=2, pid=3) == 0x00
    assert [m.payload for m in sub.wait_messages(3)] == [b"to somebody"] * 3


def test_the_broker_adds_no_properties_of_its_own(module_broker, clients):
    # The broker must not invent properties: a message published with
    # exactly one user property arrives with exactly that property block.
    topic = uid() + "/exact"
    raw = clients.raw(module_broker, 5)
    assert raw.connect(uid("c")).reason == 0
    assert raw.subscribe(1, [(topic, 1)]) == [1]
    pub = clients.raw(module_broker, 5)
    assert pub.connect(uid("c")).reason == 0
    pub.send(
        publish_packet(
            topic, b"\x00body\xff", qos=1, pid=9, version=5, props={"UserProperty": [("k", "v")]}
        )
    )
    assert pub.expect(PUBACK)[:2] == (9, 0)
    p = raw.expect(PUBLISH)
    assert (p.topic, p.payload, p.qos, p.retain, p.dup) == (topic, b"\x00body\xff", 1, False, False)
    assert p.props == {"UserProperty": [("k", "v")]}
