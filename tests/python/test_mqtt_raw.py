"""Bad input on a raw socket: what no client library sends. The broker
closes that one connection (v5: DISCONNECT with a reason code first, or a
CONNACK with one for a bad CONNECT; v3: a plain close) and goes on serving
everybody else, which every test checks with a fresh client.

Packets are written out byte by byte (MQTT 3.1.1 / 5.0 section 2 and 3):
fixed header (type << 4 | flags, Remaining Length varint), then the
variable header and payload."""

import time

import pytest

from mqtt_support import (
    CONNACK,
    PINGRESP,
    PUBACK,
    PUBLISH,
    SUBACK,
    Packet,
    assert_broker_serves,
    assert_closed_with,
    clients,  # noqa: F401 (fixture)
    connect_packet,
    connected,
    publish_packet,
    subscribe_packet,
    uid,
)

LEVELS = pytest.mark.parametrize("level", [4, 5], ids=["v311", "v5"])
MALFORMED, PROTOCOL_ERROR, PACKET_TOO_LARGE = 0x81, 0x82, 0x95

# CONNECT, protocol level 4, clean session, keepalive 60, client id "c1":
# 10 0e | 00 04 "MQTT" | 04 | 02 | 00 3c | 00 02 "c1"
GOOD_CONNECT_V311 = b"\x10\x0e\x00\x04MQTT\x04\x02\x00\x3c\x00\x02c1"


# Bad packets after a good CONNECT: (v3 bytes, v5 bytes, v5 DISCONNECT reason).
BAD_AFTER_CONNECT = {
    # PUBLISH QoS 0 whose Remaining Length has five bytes (at most four).
    "remaining-length-5-bytes": (
        b"\x30\xff\xff\xff\xff\x01",
        b"\x30\xff\xff\xff\xff\x01",
        MALFORMED,
    ),
    # SUBSCRIBE with fixed-header flags 0000 (must be 0010): packet id 1,
    # [v5: no properties], filter "a/b", QoS 1.
    "subscribe-flags-0": (
        b"\x80\x08\x00\x01\x00\x03a/b\x01",
        b"\x80\x09\x00\x01\x00\x00\x03a/b\x01",
        MALFORMED,
    ),
    # PUBREL with flags 0000 (must be 0010), packet id 1.
    "pubrel-flags-0": (b"\x60\x02\x00\x01", b"\x60\x02\x00\x01", MALFORMED),
    # PUBLISH with both QoS bits set (QoS 3): topic "a/b", packet id 1.
    "publish-qos-3": (
        b"\x36\x08\x00\x03a/b\x00\x01x",
        b"\x36\x09\x00\x03a/b\x00\x01\x00x",
        MALFORMED,
    ),
    # PUBLISH QoS 0, topic "a<NUL>b": U+0000 is not allowed in a string.
    "topic-with-nul": (b"\x30\x06\x00\x03a\x00bx", b"\x30\x07\x00\x03a\x00b\x00x", MALFORMED),
    # PUBLISH QoS 0, topic "a" + 0xFF: not UTF-8.
    "topic-not-utf8": (b"\x30\x05\x00\x02a\xffx", b"\x30\x06\x00\x02a\xff\x00x", MALFORMED),
    # PUBLISH QoS 1, topic "a/b", packet id 0: [MQTT-2.2.1-3] wants it
    # non-zero without naming the error kind.
    "packet-id-0": (
        b"\x32\x08\x00\x03a/b\x00\x00x",
        b"\x32\x09\x00\x03a/b\x00\x00\x00x",
        (MALFORMED, PROTOCOL_ERROR),
    ),
    # SUBSCRIBE (flags 0010) with packet id 1 and no topic filter: 5.0
    # [MQTT-3.8.3-2] calls a SUBSCRIBE without payload a Protocol Error.
    "subscribe-without-filters": (b"\x82\x02\x00\x01", b"\x82\x03\x00\x01\x00", PROTOCOL_ERROR),
}


@LEVELS
@pytest.mark.parametrize("case", sorted(BAD_AFTER_CONNECT))
def test_bad_packet_after_connect(module_broker, clients, level, case):
    raw = connected(clients, module_broker, level)
    v3_bytes, v5_bytes, v5_reason = BAD_AFTER_CONNECT[case]
    raw.send(v5_bytes if level == 5 else v3_bytes)
    assert_closed_with(raw, level, v5_reason)
    assert_broker_serves(clients, module_broker)


@LEVELS
@pytest.mark.parametrize("topic", ["a/+", "a/#", "+", "#", "a/b+"])
def test_wildcard_in_a_publish_topic_closes_the_connection(module_broker, clients, level, topic):
    raw = connected(clients, module_broker, level)
    raw.send(publish_packet(topic, b"x", qos=0, version=level))
    # 5.0 [MQTT-3.3.2-2] names no reason code: malformed, protocol error
    # or the specific 0x90 "Topic Name invalid".
    assert_closed_with(raw, level, (MALFORMED, PROTOCOL_ERROR, 0x90))
    assert_broker_serves(clients, module_broker)


@LEVELS
@pytest.mark.parametrize("bad", ["a/#/b", "a+/b", "a/b#", "#/a", "a/+b"])
def test_malformed_topic_filter_in_subscribe_closes_the_connection(
    module_broker, clients, level, bad
):
    # A wildcard out of place breaks [MQTT-4.7.1-1] / [MQTT-4.7.1-2]: the
    # SUBSCRIBE is malformed (not "correctly formed but not allowed", which
    # is what SUBACK 0x8F reports). Mosquitto closes these too.
    raw = connected(clients, module_broker, level)
    raw.send(subscribe_packet(1, [(uid() + "/ok", 1), (f"{uid()}/{bad}", 0)], version=level))
    assert_closed_with(raw, level, MALFORMED)
    assert_broker_serves(clients, module_broker)


@LEVELS
def test_a_second_connect_is_a_protocol_error(module_broker, clients, level):
    raw = connected(clients, module_broker, level)
    raw.send(connect_packet(uid("c"), version=level))
    # 5.0 section 3.1 [MQTT-3.1.0-2]: "a Protocol Error".
    assert_closed_with(raw, level, PROTOCOL_ERROR)
    assert_broker_serves(clients, module_broker)


@pytest.mark.parametrize(
    "first",
    [
        b"\x30\x05\x00\x03a/b",  # PUBLISH QoS 0, topic "a/b", empty payload
        b"\x82\x08\x00\x01\x00\x03a/b\x00",  # SUBSCRIBE packet id 1, "a/b" QoS 0
        b"\xc0\x00",  # PINGREQ
        b"\x10\xff\xff\xff\xff\x01",  # CONNECT with a 5-byte Remaining Length
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",  # not MQTT at all
    ],
    ids=["publish", "subscribe", "pingreq", "bad-length", "http"],
)
def test_anything_but_connect_first_is_closed_without_an_answer(module_broker, clients, first):
    raw = clients.raw(module_broker)
    raw.send(first)
    assert raw.recv_until_closed() == []
    assert_broker_serves(clients, module_broker)


def test_bad_protocol_name_is_closed_without_connack(module_broker, clients):
    raw = clients.raw(module_broker)
    # CONNECT as GOOD_CONNECT_V311 but protocol name "MQTX".
    raw.send(b"\x10\x0e\x00\x04MQTX\x04\x02\x00\x3c\x00\x02c1")
    assert raw.recv_until_closed() == []
    assert_broker_serves(clients, module_broker)


@pytest.mark.parametrize("level", [0, 2, 6, 7], ids=lambda v: f"level-{v}")
def test_unsupported_protocol_level_gets_connack_1(module_broker, clients, level):
    raw = clients.raw(module_broker)
    # GOOD_CONNECT_V311 with another protocol level byte.
    raw.send(b"\x10\x0e\x00\x04MQTT" + bytes([level]) + b"\x02\x00\x3c\x00\x02c1")
    # 3.1.1 section 3.1.2.2: CONNACK 0x01 "unacceptable protocol level".
    assert raw.recv_until_closed() == [Packet(CONNACK, 0, b"\x00\x01")]
    assert_broker_serves(clients, module_broker)


def test_v311_connect_with_the_reserved_flag_set_is_closed(module_broker, clients):
    raw = clients.raw(module_broker)
    # GOOD_CONNECT_V311 with connect flags 0x03: clean session + reserved bit 0.
    raw.send(b"\x10\x0e\x00\x04MQTT\x04\x03\x00\x3c\x00\x02c1")
    assert raw.recv_until_closed() == []
    assert_broker_serves(clients, module_broker)


# Bad v5 CONNECTs and the CONNACK reason code answering them.
V5_BAD_CONNECTS = {
    # Protocol level 5, connect flags 0x03 (reserved bit set), keepalive 60,
    # no properties, client id "c1".
    "reserved-flag": (b"\x10\x0f\x00\x04MQTT\x05\x03\x00\x3c\x00\x00\x02c1", MALFORMED),
    # Properties: Topic Alias (0x23) = 1, which CONNECT may not carry.
    "topic-alias-in-connect": (
        b"\x10\x12\x00\x04MQTT\x05\x02\x00\x3c\x03\x23\x00\x01\x00\x02c1",
        MALFORMED,
    ),
    # Properties: Session Expiry Interval (0x11) twice: 5.0 section
    # 3.1.2.11.2 calls that a Protocol Error.
    "property-twice": (
        b"\x10\x19\x00\x04MQTT\x05\x02\x00\x3c\x0a"
        b"\x11\x00\x00\x00\x0a\x11\x00\x00\x00\x0a\x00\x02c1",
        PROTOCOL_ERROR,
    ),
    # Property length 9 but only 5 bytes of properties before the client id.
    "property-length-overruns": (
        b"\x10\x14\x00\x04MQTT\x05\x02\x00\x3c\x09\x11\x00\x00\x00\x0a\x00\x02c1",
        MALFORMED,
    ),
    # Will flag 0 with will QoS 1 (flags 0x0a).
    "will-qos-without-will": (b"\x10\x0f\x00\x04MQTT\x05\x0a\x00\x3c\x00\x00\x02c1", MALFORMED),
}


@pytest.mark.parametrize("case", sorted(V5_BAD_CONNECTS))
def test_v5_bad_connect_gets_connack_with_a_reason_then_close(module_broker, clients, case):
    raw = clients.raw(module_broker, 5)
    data, reason = V5_BAD_CONNECTS[case]
    raw.send(data)
    packets = raw.recv_until_closed()
    assert len(packets) == 1 and packets[0].kind == CONNACK, packets
    assert raw.parse(packets[0])[:2] == (False, reason), packets
    assert_broker_serves(clients, module_broker)


def test_v311_will_qos_without_will_flag_is_closed(module_broker, clients):
    raw = clients.raw(module_broker)
    # GOOD_CONNECT_V311 with flags 0x0a: clean session + will QoS 1, no will flag.
    raw.send(b"\x10\x0e\x00\x04MQTT\x04\x0a\x00\x3c\x00\x02c1")
    assert raw.recv_until_closed() == []
    assert_broker_serves(clients, module_broker)


def publish_of_size(topic, total):
    """A v5 QoS 0 PUBLISH (no properties) of exactly `total` bytes."""
    payload_len = total - 1 - 2 - (2 + len(topic) + 1)  # Remaining Length takes 2 bytes
    p = publish_packet(topic, b"x" * payload_len, version=5)
    assert len(p) == total
    return p


@pytest.fixture
def small_broker(make_broker):
    return make_broker(mqtt_options=["max_packet_size = 1024"])


def test_v5_maximum_packet_size_is_announced_and_enforced_to_the_byte(small_broker, clients):
    topic = uid() + "/big"
    sub = clients.raw(small_broker, 5)
    ack = sub.connect(uid("c"))
    assert ack.props.get("MaximumPacketSize") == 1024
    assert sub.subscribe(1, [(topic, 0)]) == [0]
    pub = clients.raw(small_broker, 5)
    assert pub.connect(uid("c")).reason == 0
    pub.send(publish_of_size(topic, 1024))  # the whole packet counts
    p = sub.expect(PUBLISH)
    assert (p.topic, len(p.payload)) == (topic, 1024 - 1 - 2 - (2 + len(topic) + 1))
    pub.send(publish_of_size(topic, 1025))
    assert_closed_with(pub, 5, PACKET_TOO_LARGE)
    assert sub.is_open_after(0.2)
    assert_broker_serves(clients, small_broker)


def test_v311_packet_over_the_maximum_size_closes_the_connection(small_broker, clients):
    raw = connected(clients, small_broker, 4)
    raw.send(publish_packet(uid() + "/big", b"x" * 2000))
    assert_closed_with(raw, 4, None)
    assert_broker_serves(clients, small_broker)


def test_an_oversized_packet_is_refused_from_its_header_alone(small_broker, clients):
    # Only the fixed header of a 100 MB PUBLISH: the broker must not wait
    # for (or buffer) the body to refuse it.
    raw = connected(clients, small_broker, 4)
    raw.send(b"\x30\x80\xc2\xd7\x2f")  # PUBLISH, Remaining Length 100_000_000
    assert_closed_with(raw, 4, None)
    assert_broker_serves(clients, small_broker)


def test_a_connect_split_into_single_bytes_is_reassembled(module_broker, clients):
    raw = clients.raw(module_broker)
    for b in GOOD_CONNECT_V311[:-1]:
        raw.send(bytes([b]))
        time.sleep(0.005)
    assert raw.is_open_after(0.2)  # incomplete: no answer yet, no close
    raw.send(GOOD_CONNECT_V311[-1:])
    assert raw.recv() == Packet(CONNACK, 0, b"\x00\x00")


def test_many_packets_in_one_write_are_all_handled_in_order(module_broker, clients):
    topic = uid() + "/batch"
    raw = clients.raw(module_broker)
    batch = (
        connect_packet(uid("c"))
        + subscribe_packet(1, [(topic, 1)])
        + b"".join(publish_packet(topic, b"%d" % i, qos=1, pid=10 + i) for i in range(5))
        + b"\xc0\x00"  # PINGREQ
    )
    raw.send(batch)
    packets = [raw.recv() for _ in range(1 + 1 + 5 + 1 + 5)]
    assert packets[:2] == [Packet(CONNACK, 0, b"\x00\x00"), Packet(SUBACK, 0, b"\x00\x01\x01")]
    # PUBACKs in PUBLISH order (3.1.1 section 4.6); PINGRESP once.
    assert [raw.parse(p)[0] for p in packets if p.kind == PUBACK] == [10, 11, 12, 13, 14]
    assert [p for p in packets if p.kind == PINGRESP] == [Packet(PINGRESP, 0, b"")]
    assert [raw.parse(p).payload for p in packets if p.kind == PUBLISH] == [
        b"%d" % i for i in range(5)
    ]
