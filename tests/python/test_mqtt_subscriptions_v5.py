"""Subscriptions: overlapping filters (3.1.1: one copy at the highest QoS;
v5: one copy with every subscription identifier), replacing a
subscription, v5 No Local, shared subscriptions, UNSUBACK and SUBACK
reason codes. (A malformed filter is a malformed packet: test_mqtt_raw.py.)"""

import time

import pytest

from mqtt_support import (
    PUBCOMP,
    PUBLISH,
    PUBREC,
    PUBREL,
    V5,
    V311,
    ack_packet,
    clients,  # noqa: F401 (fixture)
    fence,
    uid,
    wait_until,
)


def summary(msgs):
    return sorted((m.topic, m.payload, m.qos) for m in msgs)


def test_v311_overlapping_subscriptions_give_one_copy_at_the_highest_qos(module_broker, clients):
    base = uid()
    sub = clients.connect(module_broker, version=V311)
    assert sub.subscribe((base + "/#", 0), (base + "/+", 1), (base + "/a", 2)) == [0, 1, 2]
    pub = clients.connect(module_broker, version=V311)
    pub.publish(base + "/a", b"three filters", qos=2)
    pub.publish(base + "/b", b"two filters", qos=2)
    pub.publish(base + "/b/c", b"one filter", qos=2)
    got = fence(pub, sub, base + "/a", qos=2)
    assert summary(got) == [
        (base + "/a", b"three filters", 2),
        (base + "/b", b"two filters", 1),
        (base + "/b/c", b"one filter", 0),
    ]


def test_resubscribing_replaces_the_subscription_qos(module_broker, clients):
    topic = uid() + "/t"
    sub = clients.connect(module_broker, version=V311)
    assert sub.subscribe(topic, qos=2) == [2]
    assert sub.subscribe(topic, qos=0) == [0]
    pub = clients.connect(module_broker)
    pub.publish(topic, b"once at qos 0", qos=2)
    got = fence(pub, sub, topic, qos=0)
    assert summary(got) == [(topic, b"once at qos 0", 0)]


def test_v5_overlapping_subscriptions_give_one_copy_with_every_identifier(module_broker, clients):
    base = uid()
    sub = clients.connect(module_broker, version=V5)
    assert sub.subscribe(base + "/#", qos=0, sub_id=1) == [0]
    assert sub.subscribe(base + "/+", qos=1, sub_id=2) == [1]
    assert sub.subscribe(base + "/a", qos=0) == [0]  # no identifier
    pub = clients.connect(module_broker, version=V5)
    pub.publish(base + "/a", b"three filters", qos=1)
    pub.publish(base + "/b/c", b"one filter", qos=1)
    got = fence(pub, sub, base + "/zz/fence", qos=1)
    assert [(m.topic, m.payload, m.qos) for m in got] == [
        (base + "/a", b"three filters", 1),
        (base + "/b/c", b"one filter", 0),
    ]
    assert sorted(got[0].props["SubscriptionIdentifier"]) == [1, 2]
    assert got[1].props["SubscriptionIdentifier"] == [1]


def test_v5_resubscribing_replaces_the_subscription_identifier(module_broker, clients):
    topic = uid() + "/t"
    sub = clients.connect(module_broker, version=V5)
    assert sub.subscribe(topic, qos=1, sub_id=5) == [1]
    assert sub.subscribe(topic, qos=1, sub_id=6) == [1]
    assert sub.subscribe(uid() + "/other", qos=1, sub_id=7) == [1]
    clients.connect(module_broker).publish(topic, b"x", qos=1)
    (m,) = sub.wait_messages(1)
    assert m.props["SubscriptionIdentifier"] == [6]


def test_v5_a_session_with_many_subscriptions_matches_each_delivery_exactly(module_broker, clients):
    """Past 16 subscriptions a session finds what a delivery matches through
    an index of its filters (made at its first delivery, then kept up to
    date): the same copies, QoS, identifiers and No Local as the scan."""
    base = uid()
    sub = clients.connect(module_broker, version=V5)
    for i in range(30):
        assert sub.subscribe(f"{base}/dev/{i}", qos=0, sub_id=i + 1) == [0]
    assert sub.subscribe(base + "/dev/+", qos=1, sub_id=100) == [1]
    assert sub.subscribe(base + "/#", qos=0, sub_id=101) == [0]
    assert sub.subscribe(base + "/dev/7/#", qos=2, sub_id=102) == [2]
    assert sub.subscribe(base + "/own", qos=1, sub_id=103, no_local=True) == [1]
    # The marker at QoS 2, so that it cannot overtake a QoS 2 delivery.
    assert sub.subscribe(base + "/fence", qos=2, sub_id=105) == [2]
    pub = clients.connect(module_broker, version=V5)
    pub.publish(base + "/dev/7", b"four filters", qos=2)
    pub.publish(base + "/dev/99", b"two filters", qos=2)
    pub.publish(base + "/other/x", b"one filter", qos=2)
    sub.publish(base + "/own", b"mine", qos=1)
    got = fence(pub, sub, base + "/fence", qos=2)
    seen = [(m.topic, m.payload, m.qos, sorted(m.props["SubscriptionIdentifier"])) for m in got]
    assert sorted(seen) == sorted([
        (base + "/dev/7", b"four filters", 2, [8, 100, 101, 102]),
        (base + "/dev/99", b"two filters", 1, [100, 101]),
        (base + "/other/x", b"one filter", 0, [101]),
        # Its own message reaches it through `#` only (No Local on /own).
        (base + "/own", b"mine", 0, [101]),
    ]), seen
    before = len(sub.received())  # with the fence
    # Changes after the first delivery are seen by the next one.
    assert sub.unsubscribe(base + "/dev/+") == [0]
    assert sub.subscribe(base + "/new/+", qos=1, sub_id=104) == [1]
    pub.publish(base + "/dev/99", b"one filter now", qos=1)
    pub.publish(base + "/new/x", b"two filters", qos=1)
    got = fence(pub, sub, base + "/fence", qos=2)[before:]
    seen = [(m.topic, m.payload, m.qos, sorted(m.props["SubscriptionIdentifier"])) for m in got]
    assert sorted(seen) == sorted([
        (base + "/dev/99", b"one filter now", 0, [101]),
        (base + "/new/x", b"two filters", 1, [101, 104]),
    ]), seen


@pytest.mark.parametrize("no_local,own_copies", [(True, 0), (False, 1)], ids=["no-local", "local"])
def test_v5_no_local(module_broker, clients, no_local, own_copies):
    topic = uid() + "/t"
    me = clients.connect(module_broker, version=V5)
    assert me.subscribe(topic, qos=1, no_local=no_local) == [1]
    me.publish(topic, b"mine", qos=1)
    other = clients.connect(module_broker, version=V5)
    got = fence(other, me, topic)
    assert [m.payload for m in got] == [b"mine"] * own_copies


SHARED_MEMBERS = pytest.mark.parametrize(
    "versions", [(V5, V5), (V311, V311), (V311, V5)], ids=["v5", "v311", "mixed"]
)


@SHARED_MEMBERS
def test_shared_subscription_gives_each_message_to_exactly_one_member(
    module_broker, clients, versions
):
    base = uid()
    group = uid("g")
    members = [clients.connect(module_broker, version=v) for v in versions]
    for m in members:
        assert m.subscribe(f"$share/{group}/{base}/#", qos=1) == [1]
    other_group = clients.connect(module_broker, version=V5)
    assert other_group.subscribe(f"$share/{uid('g')}/{base}/#", qos=1) == [1]
    plain = clients.connect(module_broker, version=V311)
    assert plain.subscribe(base + "/#", qos=1) == [1]

    pub = clients.connect(module_broker, version=V5)
    sent = [b"%02d" % i for i in range(20)]
    pub.wait_acked([pub.publish(base + "/x", body, qos=1, wait=False) for body in sent])
    total = lambda: sum(len(m.received()) for m in members)  # noqa: E731
    assert wait_until(lambda: total() >= 20), [m.payloads() for m in members]
    for m in members:
        m.assert_quiet(len(m.received()), within=0.3)
    shares = [m.payloads() for m in members]
    assert all(shares), shares  # load-balanced: every member got some
    assert sorted(shares[0] + shares[1]) == sent  # each message exactly once
    for share in shares:  # and each member in publish order
        assert share == sorted(share)
    # A second group and a plain subscriber each get all of them, in order.
    assert [m.payload for m in other_group.wait_messages(20)] == sent
    assert [m.payload for m in plain.wait_messages(20)] == sent


def first_publish_of(raws, timeout=5.0):
    """Waits on several raw clients at once for a PUBLISH; returns (index
    of the client that got it, the parsed PUBLISH)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for i, raw in enumerate(raws):
            try:
                p = raw.recv(0.05)
            except AssertionError:  # nothing yet
                continue
            assert p.kind == PUBLISH, f"member {i}: expected PUBLISH, got {p}"
            return i, raw.parse(p)
    raise AssertionError(f"no member got a PUBLISH within {timeout} s")


def test_v5_shared_qos2_message_stays_with_the_member_that_got_it(module_broker, clients):
    """[MQTT-4.8.2-4]: a QoS 2 message sent to one member of a shared
    subscription is completed with that member (resent on its reconnect,
    same packet id, DUP=1), never given to another member, even while the
    first is disconnected."""
    topic = uid() + "/t"
    share = f"$share/{uid('g')}/{topic}"
    cids = [uid("a"), uid("b")]
    members = []
    for cid in cids:
        raw = clients.raw(module_broker, 5)
        ack = raw.connect_persistent(cid)  # clean start 0, expiry 300
        assert (ack.session_present, ack.reason) == (False, 0)
        assert raw.subscribe(1, [(share, 2)]) == [2]
        members.append(raw)
    pub = clients.connect(module_broker, version=V5)
    pub.publish(topic, b"exactly one member", qos=2)

    i, first = first_publish_of(members)
    assert (first.topic, first.payload, first.qos, first.dup) == (
        topic,
        b"exactly one member",
        2,
        False,
    )
    got, other = members[i], members[1 - i]
    got.close()  # no PUBREC: the message is still in flight with this member
    assert other.is_open_after(1.0)  # the other member gets nothing

    again = clients.raw(module_broker, 5)
    ack = again.connect_persistent(cids[i])
    assert (ack.session_present, ack.reason) == (True, 0)
    p = again.expect(PUBLISH)
    assert (p.topic, p.payload, p.qos, p.dup, p.pid) == (
        topic,
        b"exactly one member",
        2,
        True,
        first.pid,
    )
    again.send(ack_packet(PUBREC, p.pid, 5))
    assert again.expect(PUBREL)[:2] == (p.pid, 0)
    again.send(ack_packet(PUBCOMP, p.pid, 5))
    assert again.is_open_after(0.3)
    assert other.is_open_after(0.5)  # still nothing


def test_v5_unsubscribe_reason_codes(module_broker, clients):
    base = uid()
    sub = clients.connect(module_broker, version=V5)
    assert sub.subscribe(base + "/a", base + "/c", qos=1) == [1, 1]
    # 0x00 success, 0x11 no subscription existed.
    assert sub.unsubscribe(base + "/a", base + "/b") == [0x00, 0x11]
    assert sub.unsubscribe(base + "/a") == [0x11]
    pub = clients.connect(module_broker)
    pub.publish(base + "/a", b"unsubscribed", qos=1)
    assert fence(pub, sub, base + "/c") == []


def test_v311_unsubscribe_stops_delivery(module_broker, clients):
    base = uid()
    sub = clients.connect(module_broker, version=V311)
    assert sub.subscribe(base + "/a", base + "/c", qos=1) == [1, 1]
    sub.unsubscribe(base + "/a")
    pub = clients.connect(module_broker)
    pub.publish(base + "/a", b"unsubscribed", qos=1)
    assert fence(pub, sub, base + "/c") == []


