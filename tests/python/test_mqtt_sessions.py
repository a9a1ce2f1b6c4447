"""Persistent sessions: subscriptions and QoS >= 1 messages kept while the
client is away (also across a restart and kill -9), clean sessions
discarding them, v5 session expiry, the v3 session expiry option and the
offline queue limits (drop-head)."""

import time

import pytest

from mqtt_support import (
    ALL_VERSIONS,
    CONNACK,
    DISCONNECT_PACKET,
    PUBACK,
    PUBLISH,
    SUBACK,
    V5,
    V31,
    V311,
    ack_packet,
    clients,  # noqa: F401 (fixture)
    connect_packet,
    subscribe_packet,
    fence,
    persistent,
    uid,
)

BOTH = pytest.mark.parametrize("version", [V311, V5], ids=["v311", "v5"])


def offline_session(clients, broker, version, filters, **kw):
    """Creates a persistent session subscribed to `filters` ((filter, qos)
    pairs) and disconnects; returns its client id."""
    cid = uid("c")
    c = clients.connect(broker, client_id=cid, version=version, **persistent(version, **kw))
    assert c.subscribe(*filters) == [q for _, q in filters]
    c.disconnect()
    return cid


def publish_offline(clients, broker, topic, bodies, qos):
    """A v5 publisher sends `bodies`; every PUBACK/PUBCOMP must say 0x00:
    the offline session is a matching subscriber."""
    pub = clients.connect(broker, version=V5)
    for b in bodies:
        assert pub.publish(topic, b, qos=qos) == 0
    return pub


def assert_still_subscribed(pub, c, t1, t2, got):
    """`c` (which has received `got`) still gets t1 (QoS 1) and t2 (QoS 2),
    and nothing else arrives."""
    assert fence(pub, c, t1) == got
    assert fence(pub, c, t2, qos=2)[len(got) + 1 :] == []


def resume(clients, broker, cid, version, **kw):
    return clients.connect(broker, client_id=cid, version=version, **persistent(version, **kw))


@ALL_VERSIONS
def test_persistent_session_keeps_subscriptions_and_queues_messages_while_offline(
    module_broker, clients, version
):
    base = uid()
    t1, t2 = base + "/one", base + "/two"
    cid = offline_session(clients, module_broker, version, [(t1, 1), (t2, 2)])
    q1 = [b"qos1-%d" % i for i in range(5)]
    q2 = [b"qos2-%d" % i for i in range(3)]
    pub = publish_offline(clients, module_broker, t1, q1, 1)
    publish_offline(clients, module_broker, t2, q2, 2)

    c = resume(clients, module_broker, cid, version)
    if version != V31:  # 3.1 has no session-present flag
        assert c.connack.session_present is True
    got = c.wait_messages(8)
    assert [(m.payload, m.qos) for m in got if m.topic == t1] == [(b, 1) for b in q1]
    assert [(m.payload, m.qos) for m in got if m.topic == t2] == [(b, 2) for b in q2]
    # The subscriptions are still there without subscribing again.
    assert_still_subscribed(pub, c, t1, t2, got)


def test_a_first_subscribe_sent_with_the_disconnect_keeps_its_deliveries(module_broker, clients):
    """A persistent session's first SUBSCRIBE and its DISCONNECT in one
    write: the serving loop ends in the turn that made the session's
    delivery channel. It once put back the channel it held before (none)
    over the new one, so the parked session's consumer failed at its first
    delivery and the session got nothing after it resumed."""
    cid, topic = uid("c"), uid() + "/t"
    raw = clients.raw(module_broker)
    raw.send(connect_packet(cid, clean=False))
    assert raw.expect(CONNACK).reason == 0
    raw.send(subscribe_packet(1, [(topic, 1)]) + DISCONNECT_PACKET)
    assert [p.kind for p in raw.recv_until_closed()] == [SUBACK]
    pub = publish_offline(clients, module_broker, topic, [b"while-away"], 1)
    c = resume(clients, module_broker, cid, V311)
    assert c.connack.session_present is True
    got = c.wait_messages(1)
    assert [(m.topic, m.payload) for m in got] == [(topic, b"while-away")]
    # Still subscribed, and nothing else arrives.
    assert fence(pub, c, topic) == got


@ALL_VERSIONS
def test_clean_session_discards_the_stored_session(module_broker, clients, version):
    topic = uid() + "/gone"
    cid = offline_session(clients, module_broker, version, [(topic, 1)])
    pub = publish_offline(clients, module_broker, topic, [b"queued 1", b"queued 2"], 1)

    clean = clients.connect(module_broker, client_id=cid, version=version, clean=True)
    assert clean.connack.session_present is False
    assert clean.subscribe(topic, qos=1) == [1]
    assert fence(pub, clean, topic) == []  # nothing queued came along
    clean.disconnect()

    # The clean session ended at its disconnect: nothing to resume.
    again = resume(clients, module_broker, cid, version)
    assert again.connack.session_present is False
    other = uid() + "/other"
    assert again.subscribe(other, qos=1) == [1]
    pub.publish(topic, b"no subscription left", qos=1)
    assert fence(pub, again, other) == []


def test_v5_clean_start_0_without_session_expiry_ends_the_session_at_disconnect(
    module_broker, clients
):
    topic = uid() + "/s"
    cid = offline_session(clients, module_broker, V5, [(topic, 1)], expiry=None)
    pub = clients.connect(module_broker, version=V5)
    assert pub.publish(topic, b"nobody", qos=1) == 0x10  # no matching subscribers
    c = clients.connect(module_broker, client_id=cid, version=V5, clean=False)
    assert c.connack.session_present is False
    assert c.subscribe(topic, qos=1) == [1]
    assert fence(pub, c, topic) == []


def test_v5_disconnect_with_session_expiry_0_discards_the_session(module_broker, clients):
    topic = uid() + "/s"
    cid = uid("c")
    c = resume(clients, module_broker, cid, V5)
    assert c.subscribe(topic, qos=1) == [1]
    c.disconnect(props={"SessionExpiryInterval": 0})
    c = resume(clients, module_broker, cid, V5)
    assert c.connack.session_present is False


def test_takeover_of_a_persistent_session_resumes_it(module_broker, clients):
    topic = uid() + "/s"
    cid = uid("c")
    first = resume(clients, module_broker, cid, V311)
    assert first.subscribe(topic, qos=1) == [1]
    second = resume(clients, module_broker, cid, V311)
    assert second.connack.session_present is True
    first.wait_disconnected()
    pub = clients.connect(module_broker)
    pub.publish(topic, b"to the new connection", qos=1)
    got = second.wait_messages(1)
    assert [(m.topic, m.payload) for m in got] == [(topic, b"to the new connection")]


def stop_restart(broker, how):
    if how == "restart":
        broker.restart()
    else:
        broker.kill9()
        broker.start()


@pytest.mark.deadline(60)
@pytest.mark.parametrize("how", ["restart", "kill9"])
@BOTH
def test_session_and_queued_messages_survive_the_broker_going_down(broker, clients, version, how):
    base = uid()
    t1, t2 = base + "/one", base + "/two"
    cid = offline_session(clients, broker, version, [(t1, 1), (t2, 2)])
    q1 = [b"qos1-%d" % i for i in range(5)]
    q2 = [b"qos2-%d \x00\xff" % i for i in range(3)]
    publish_offline(clients, broker, t1, q1, 1)  # PUBACK = on disk
    publish_offline(clients, broker, t2, q2, 2)
    clients.close_all()

    stop_restart(broker, how)
    c = resume(clients, broker, cid, version)
    assert c.connack.session_present is True
    got = c.wait_messages(8)
    assert [(m.payload, m.qos) for m in got if m.topic == t1] == [(b, 1) for b in q1]
    assert [(m.payload, m.qos) for m in got if m.topic == t2] == [(b, 2) for b in q2]
    assert_still_subscribed(clients.connect(broker), c, t1, t2, got)


@pytest.mark.deadline(60)
@pytest.mark.parametrize("how", ["restart", "kill9"])
def test_unacknowledged_delivery_is_resent_after_the_broker_went_down(broker, clients, how):
    topic = uid() + "/in"
    cid = uid("c")
    raw = clients.raw(broker, 4)
    raw.connect_persistent(cid)
    assert raw.subscribe(1, [(topic, 1)]) == [1]
    clients.connect(broker).publish(topic, b"unacked", qos=1)
    first = raw.expect(PUBLISH)
    assert (first.payload, first.dup) == (b"unacked", False)
    clients.close_all()

    stop_restart(broker, how)
    raw = clients.raw(broker, 4)
    assert raw.connect_persistent(cid).session_present is True
    again = raw.expect(PUBLISH)
    assert (again.topic, again.payload, again.qos) == (topic, b"unacked", 1)
    # 3.1.1 section 4.4: re-sent with DUP and its original packet id.
    assert (again.dup, again.pid) == (True, first.pid)
    raw.send(ack_packet(PUBACK, again.pid))
    clients.connect(broker).publish(topic, b"next", qos=1)
    following = raw.expect(PUBLISH)
    assert (following.payload, following.dup) == (b"next", False)


@pytest.mark.deadline(30)
def test_v5_session_expiry_ends_the_session_after_the_interval(module_broker, clients):
    short_topic, long_topic = uid() + "/short", uid() + "/long"
    short = offline_session(clients, module_broker, V5, [(short_topic, 1)], expiry=1)
    long = offline_session(clients, module_broker, V5, [(long_topic, 1)], expiry=60)
    pub = publish_offline(clients, module_broker, short_topic, [b"expires with the session"], 1)
    publish_offline(clients, module_broker, long_topic, [b"kept"], 1)
    time.sleep(3)  # the 1 s session must be gone by now; the 60 s one not

    c = resume(clients, module_broker, short, V5)
    assert c.connack.session_present is False
    assert c.subscribe(short_topic, qos=1) == [1]
    assert fence(pub, c, short_topic) == []

    c = resume(clients, module_broker, long, V5)
    assert c.connack.session_present is True
    got = c.wait_messages(1)
    assert [(m.topic, m.payload) for m in got] == [(long_topic, b"kept")]


@pytest.mark.deadline(30)
def test_v3_persistent_sessions_expire_after_persistent_session_expiry(make_broker, clients):
    broker = make_broker(mqtt_options=["persistent_session_expiry = 2"])
    topic = uid() + "/s"
    old = offline_session(clients, broker, V311, [(topic, 1)])
    pub = publish_offline(clients, broker, topic, [b"expires with the session"], 1)
    time.sleep(4)
    fresh = offline_session(clients, broker, V311, [(uid() + "/f", 1)])
    assert resume(clients, broker, fresh, V311).connack.session_present is True
    c = resume(clients, broker, old, V311)
    assert c.connack.session_present is False
    assert c.subscribe(topic, qos=1) == [1]
    assert fence(pub, c, topic) == []


@BOTH
def test_offline_queue_count_limit_drops_the_oldest(make_broker, clients, version):
    broker = make_broker(mqtt_options=["max_queued_messages = 5"])
    topic = uid() + "/q"
    cid = offline_session(clients, broker, version, [(topic, 1)])
    pub = clients.connect(broker, version=V5)
    for i in range(1, 9):
        pub.publish(topic, b"%d" % i, qos=1)
    c = resume(clients, broker, cid, version)
    c.wait_messages(5)
    got = fence(pub, c, topic)
    assert [m.payload for m in got] == [b"4", b"5", b"6", b"7", b"8"]


@BOTH
def test_offline_queue_byte_limit_drops_the_oldest(make_broker, clients, version):
    # 1000-byte payloads, limit 4500: four fit (with room for any per-message
    # overhead the broker counts), the fifth does not.
    broker = make_broker(mqtt_options=["max_queued_bytes = 4500"])
    topic = uid() + "/q"
    cid = offline_session(clients, broker, version, [(topic, 1)])
    pub = clients.connect(broker, version=V5)
    bodies = [bytes([i]) * 1000 for i in range(1, 11)]
    for b in bodies:
        pub.publish(topic, b, qos=1)
    c = resume(clients, broker, cid, version)
    c.wait_messages(4)
    got = fence(pub, c, topic)
    assert [(m.payload[0], len(m.payload)) for m in got] == [(i, 1000) for i in range(7, 11)]
    assert [m.payload for m in got] == bodies[6:]
