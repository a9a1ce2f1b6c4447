"""QoS 0, 1 and 2 in both directions: delivered QoS, order on one topic,
and the QoS 1 / QoS 2 flows surviving a dropped connection (and a broker
restart) without loss or duplicates."""

import pytest

from mqtt_support import (
    ALL_VERSIONS,
    PUBACK,
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
    publish_packet,
    uid,
)

RAW_LEVELS = pytest.mark.parametrize("level", [3, 4, 5], ids=["v31", "v311", "v5"])


@ALL_VERSIONS
def test_delivered_qos_is_the_minimum_of_publish_and_subscription_qos(
    module_broker, clients, version
):
    topic = uid() + "/q"
    subs = {}
    for sub_qos in (0, 1, 2):
        subs[sub_qos] = clients.connect(module_broker, version=version)
        assert subs[sub_qos].subscribe(topic, qos=sub_qos) == [sub_qos]
    pub = clients.connect(module_broker, version=version)
    for pub_qos in (0, 1, 2):
        pub.publish(topic, b"published at %d" % pub_qos, qos=pub_qos)
    for sub_qos, sub in subs.items():
        got = sub.wait_messages(3)
        # Order is promised per topic and QoS only (3.1.1 section 4.6).
        assert sorted((m.payload, m.qos) for m in got) == [
            (b"published at %d" % q, min(q, sub_qos)) for q in (0, 1, 2)
        ]
        assert all(m.topic == topic and not m.retain and not m.dup for m in got)


@pytest.mark.parametrize("qos", [0, 1, 2])
@pytest.mark.parametrize("version", [V311, V5], ids=["v311", "v5"])
def test_messages_on_one_topic_arrive_once_each_in_publish_order(
    module_broker, clients, version, qos
):
    topic = uid() + "/order"
    sub = clients.connect(module_broker, version=version)
    assert sub.subscribe(topic, qos=2) == [2]
    pub = clients.connect(module_broker, version=version)
    sent = [b"%04d" % i for i in range(300)]
    mids = [pub.publish(topic, body, qos=qos, wait=False) for body in sent]
    pub.wait_acked(mids, timeout=20)
    got = sub.wait_messages(len(sent), timeout=20)
    assert [m.payload for m in got] == sent
    assert {m.qos for m in got} == {qos}
    assert fence(pub, sub, topic, qos=qos) == got


def connect_raw(clients, broker, level, cid):
    """A raw client resuming (or creating) the persistent session `cid`;
    returns (client, CONNACK)."""
    raw = clients.raw(broker, level)
    return raw, raw.connect_persistent(cid)


@RAW_LEVELS
def test_qos2_publisher_that_drops_between_pubrec_and_pubrel_completes_after_reconnect(
    module_broker, clients, level
):
    topic = uid() + "/once"
    sub = clients.connect(module_broker, version=V311)
    assert sub.subscribe(topic, qos=2) == [2]
    cid = uid("c")
    raw, ack = connect_raw(clients, module_broker, level, cid)
    assert ack.reason == 0
    raw.send(publish_packet(topic, b"exactly once", qos=2, pid=7, version=level))
    assert raw.expect(PUBREC)[:2] == (7, 0)
    raw.close()  # gone before sending PUBREL

    raw, ack = connect_raw(clients, module_broker, level, cid)
    assert ack.reason == 0 and (level == 3 or ack.session_present)
    raw.send(ack_packet(PUBREL, 7, level))
    # v5: reason 0x00, not 0x92 "packet identifier not found".
    assert raw.expect(PUBCOMP)[:2] == (7, 0)
    got = fence(clients.connect(module_broker), sub, topic, qos=2)
    assert [(m.payload, m.qos) for m in got] == [(b"exactly once", 2)]


@RAW_LEVELS
def test_qos2_publish_resent_with_dup_after_reconnect_is_delivered_once(
    module_broker, clients, level
):
    topic = uid() + "/once"
    sub = clients.connect(module_broker, version=V311)
    assert sub.subscribe(topic, qos=2) == [2]
    cid = uid("c")
    raw, _ = connect_raw(clients, module_broker, level, cid)
    raw.send(publish_packet(topic, b"exactly once", qos=2, pid=9, version=level))
    assert raw.expect(PUBREC)[:2] == (9, 0)
    raw.close()  # as if the PUBREC had been lost with the connection

    raw, _ = connect_raw(clients, module_broker, level, cid)
    raw.send(publish_packet(topic, b"exactly once", qos=2, pid=9, dup=True, version=level))
    assert raw.expect(PUBREC)[:2] == (9, 0)
    raw.send(ack_packet(PUBREL, 9, level))
    assert raw.expect(PUBCOMP)[:2] == (9, 0)
    got = fence(clients.connect(module_broker), sub, topic, qos=2)
    assert [(m.payload, m.qos) for m in got] == [(b"exactly once", 2)]


@RAW_LEVELS
def test_qos2_publish_resent_on_the_same_connection_before_pubrel_is_delivered_once(
    module_broker, clients, level
):
    topic = uid() + "/once"
    sub = clients.connect(module_broker, version=V311)
    assert sub.subscribe(topic, qos=2) == [2]
    raw, _ = connect_raw(clients, module_broker, level, uid("c"))
    for dup in (False, True):
        raw.send(publish_packet(topic, b"exactly once", qos=2, pid=3, dup=dup, version=level))
        assert raw.expect(PUBREC)[:2] == (3, 0)
    raw.send(ack_packet(PUBREL, 3, level))
    assert raw.expect(PUBCOMP)[:2] == (3, 0)
    got = fence(clients.connect(module_broker), sub, topic, qos=2)
    assert [m.payload for m in got] == [b"exactly once"]


@pytest.mark.deadline(60)
@pytest.mark.parametrize("level", [4, 5], ids=["v311", "v5"])
def test_qos2_inbound_state_survives_a_broker_restart(broker, clients, level):
    topic = uid() + "/once"
    scid = uid("s")
    sub = clients.connect(broker, client_id=scid, version=V311, clean=False)
    assert sub.subscribe(topic, qos=2) == [2]
    sub.disconnect()
    cid = uid("c")
    raw, _ = connect_raw(clients, broker, level, cid)
    raw.send(publish_packet(topic, b"exactly once", qos=2, pid=5, version=level))
    assert raw.expect(PUBREC)[:2] == (5, 0)
    raw.close()

    broker.restart()
    raw, ack = connect_raw(clients, broker, level, cid)
    assert ack.session_present is True
    raw.send(publish_packet(topic, b"exactly once", qos=2, pid=5, dup=True, version=level))
    assert raw.expect(PUBREC)[:2] == (5, 0)
    raw.send(ack_packet(PUBREL, 5, level))
    assert raw.expect(PUBCOMP)[:2] == (5, 0)
    assert raw.publish(topic, b"after", qos=2, pid=6) == 0

    sub = clients.connect(broker, client_id=scid, version=V311, clean=False)
    assert sub.connack.session_present is True
    got = sub.wait_messages(2)
    assert [(m.payload, m.qos) for m in got] == [(b"exactly once", 2), (b"after", 2)]
    assert fence(clients.connect(broker), sub, topic, qos=2) == got


def subscribed_raw(clients, broker, level, topic, qos):
    cid = uid("c")
    raw, ack = connect_raw(clients, broker, level, cid)
    assert ack.reason == 0
    assert raw.subscribe(1, [(topic, qos)]) == [qos]
    return raw, cid


def next_publish(raw):
    p = raw.expect(PUBLISH)
    assert isinstance(p, Publish)
    return p


@RAW_LEVELS
def test_qos2_subscriber_that_drops_before_pubcomp_gets_pubrel_again_not_the_message(
    module_broker, clients, level
):
    topic = uid() + "/in"
    raw, cid = subscribed_raw(clients, module_broker, level, topic, 2)
    pub = clients.connect(module_broker)
    pub.publish(topic, b"exactly once", qos=2)
    p = next_publish(raw)
    assert (p.topic, p.payload, p.qos, p.dup) == (topic, b"exactly once", 2, False)
    raw.send(ack_packet(PUBREC, p.pid, level))
    assert raw.expect(PUBREL)[0] == p.pid
    raw.close()  # gone before sending PUBCOMP

    raw, ack = connect_raw(clients, module_broker, level, cid)
    assert level == 3 or ack.session_present is True
    # 3.1.1 section 4.4 / 5.0 section 4.4: PUBREL is re-sent, same id.
    assert raw.expect(PUBREL)[0] == p.pid
    raw.send(ack_packet(PUBCOMP, p.pid, level))
    pub.publish(topic, b"next", qos=1)
    q = next_publish(raw)
    assert (q.payload, q.qos) == (b"next", 1)
    raw.send(ack_packet(PUBACK, q.pid, level))


@RAW_LEVELS
def test_qos2_subscriber_that_drops_before_pubrec_gets_the_publish_again_with_dup(
    module_broker, clients, level
):
    topic = uid() + "/in"
    raw, cid = subscribed_raw(clients, module_broker, level, topic, 2)
    pub = clients.connect(module_broker)
    pub.publish(topic, b"exactly once", qos=2)
    first = next_publish(raw)
    raw.close()  # no PUBREC

    raw, _ = connect_raw(clients, module_broker, level, cid)
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
    raw.send(ack_packet(PUBCOMP, again.pid, level))
    pub.publish(topic, b"next", qos=1)
    q = next_publish(raw)
    assert (q.payload, q.qos, q.dup) == (b"next", 1, False)
    raw.send(ack_packet(PUBACK, q.pid, level))


@RAW_LEVELS
def test_unacknowledged_qos1_delivery_is_resent_with_dup_after_reconnect(
    module_broker, clients, level
):
    topic = uid() + "/in"
    raw, cid = subscribed_raw(clients, module_broker, level, topic, 1)
    pub = clients.connect(module_broker)
    pub.publish(topic, b"at least once", qos=1)
    first = next_publish(raw)
    assert (first.payload, first.qos, first.dup) == (b"at least once", 1, False)
    raw.close()  # no PUBACK

    raw, _ = connect_raw(clients, module_broker, level, cid)
    again = next_publish(raw)
    assert (again.payload, again.qos, again.dup, again.pid) == (
        b"at least once",
        1,
        True,
        first.pid,
    )
    raw.send(ack_packet(PUBACK, again.pid, level))
    raw.close()

    # Acknowledged now: a third connection gets only what comes next.
    raw, _ = connect_raw(clients, module_broker, level, cid)
    pub.publish(topic, b"next", qos=1)
    q = next_publish(raw)
    assert (q.payload, q.dup) == (b"next", False)
    raw.send(ack_packet(PUBACK, q.pid, level))


@pytest.mark.parametrize("version", [V311, V5], ids=["v311", "v5"])
def test_qos1_and_qos2_deliveries_use_distinct_nonzero_packet_ids(module_broker, clients, version):
    topic = uid() + "/ids"
    level = 5 if version == V5 else 4
    raw, _ = subscribed_raw(clients, module_broker, level, topic, 2)
    pub = clients.connect(module_broker, version=version)
    for i in range(4):
        pub.publish(topic, b"%d" % i, qos=1 + i % 2)
    got = [next_publish(raw) for _ in range(4)]
    # Order is promised per topic and QoS only.
    assert sorted((p.payload, p.qos) for p in got) == [(b"0", 1), (b"1", 2), (b"2", 1), (b"3", 2)]
    pids = [p.pid for p in got]
    assert 0 not in pids and len(set(pids)) == 4, pids
    for p in got:
        raw.send(ack_packet(PUBACK if p.qos == 1 else PUBREC, p.pid, level))
        if p.qos == 2:
            assert raw.expect(PUBREL)[0] == p.pid
            raw.send(ack_packet(PUBCOMP, p.pid, level))


@pytest.mark.parametrize("level", [4, 5], ids=["v311", "v5"])
def test_qos2_publish_resent_without_dup_before_pubrel_is_delivered_once(
    module_broker, clients, level
):
    """[MQTT-4.3.3-10]: until PUBREL the receiver acknowledges any PUBLISH
    with the same packet id by PUBREC and does not deliver it again, DUP
    set or not."""
    topic = uid() + "/once"
    sub = clients.connect(module_broker, version=V311)
    assert sub.subscribe(topic, qos=2) == [2]
    raw = clients.raw(module_broker, level)
    assert raw.connect(uid("c")).reason == 0
    for _ in range(2):  # the same PUBLISH twice, DUP=0 both times
        raw.send(publish_packet(topic, b"once", qos=2, pid=7, dup=False, version=level))
        assert raw.expect(PUBREC)[:2] == (7, 0)
    raw.send(ack_packet(PUBREL, 7, level))
    assert raw.expect(PUBCOMP)[:2] == (7, 0)
    got = fence(clients.connect(module_broker), sub, topic, qos=2)
    assert [(m.topic, m.payload, m.qos) for m in got] == [(topic, b"once", 2)]


def test_v5_receive_maximum_counts_a_qos2_delivery_until_pubcomp(module_broker, clients):
    """[MQTT-4.9.0-2]: with the client's Receive Maximum used up the server
    sends no further QoS 1/2 PUBLISH; a QoS 2 delivery holds its slot until
    PUBCOMP (not PUBREC)."""
    topic = uid() + "/rm"
    raw = clients.raw(module_broker, 5)
    assert raw.connect(uid("c"), props={"ReceiveMaximum": 1}).reason == 0
    assert raw.subscribe(1, [(topic, 2)]) == [2]
    pub = clients.connect(module_broker, version=V5)
    pub.publish(topic, b"m1", qos=2)
    pub.publish(topic, b"m2", qos=2)

    m1 = next_publish(raw)
    assert (m1.topic, m1.payload, m1.qos, m1.dup) == (topic, b"m1", 2, False)
    raw.send(ack_packet(PUBREC, m1.pid, 5))
    assert raw.expect(PUBREL)[:2] == (m1.pid, 0)
    # Awaiting PUBCOMP: the window is still full, so no PUBLISH of m2.
    assert raw.is_open_after(0.5)
    raw.send(ack_packet(PUBCOMP, m1.pid, 5))
    m2 = next_publish(raw)
    assert (m2.topic, m2.payload, m2.qos, m2.dup) == (topic, b"m2", 2, False)
    raw.send(ack_packet(PUBREC, m2.pid, 5))
    assert raw.expect(PUBREL)[:2] == (m2.pid, 0)
    raw.send(ack_packet(PUBCOMP, m2.pid, 5))
    assert raw.is_open_after(0.3)


@pytest.mark.deadline(60)
def test_qos1_subscription_added_to_a_qos0_session_keeps_unacked_messages_across_a_restart(
    broker, clients
):
    """A session with only QoS 0 subscriptions consumes its queue without
    acks; the first QoS 1 subscription must switch that off before it is
    bound, or an unacknowledged QoS 1 message would be gone after a
    restart."""
    low, high = uid() + "/low", uid() + "/high"
    raw, cid = subscribed_raw(clients, broker, 4, low, 0)
    assert raw.subscribe(2, [(high, 1)]) == [1]
    pub = clients.connect(broker)
    pub.publish(high, b"keep me", qos=1)
    first = next_publish(raw)
    assert (first.topic, first.payload, first.qos) == (high, b"keep me", 1)
    clients.close_all()  # no PUBACK

    broker.kill9()
    broker.start()
    raw, ack = connect_raw(clients, broker, 4, cid)
    assert ack.session_present is True
    again = next_publish(raw)
    assert (again.topic, again.payload, again.qos, again.dup, again.pid) == (
        high,
        b"keep me",
        1,
        True,
        first.pid,
    )
    raw.send(ack_packet(PUBACK, again.pid))


def test_max_inflight_caps_unacknowledged_deliveries_to_an_mqtt3_client(make_broker, clients):
    """MQTT 3 has no Receive Maximum: `max_inflight` is the window. With 2,
    a subscriber that does not acknowledge holds exactly 2 QoS 1 messages;
    each PUBACK lets exactly one more through, in order."""
    broker = make_broker(mqtt_options=["max_inflight = 2"])
    topic = uid() + "/w"
    raw, _ = subscribed_raw(clients, broker, 4, topic, 1)
    pub = clients.connect(broker)
    for i in range(5):
        pub.publish(topic, b"m%d" % i, qos=1)
    first = [next_publish(raw) for _ in range(2)]
    assert [p.payload for p in first] == [b"m0", b"m1"]
    assert raw.is_open_after(0.5)  # and nothing else arrived meanwhile
    raw.send(ack_packet(PUBACK, first[0].pid))
    third = next_publish(raw)
    assert third.payload == b"m2"
    assert raw.is_open_after(0.5)
    for p in (first[1], third):
        raw.send(ack_packet(PUBACK, p.pid))
    assert [next_publish(raw).payload for _ in range(2)] == [b"m3", b"m4"]
