"""Will messages: published when a client goes away without DISCONNECT
(socket closed, keepalive expired, protocol error) and not after a normal
DISCONNECT; will QoS and retain; v5 will properties, Will Delay Interval
and DISCONNECT 0x04."""

import time

import pytest

from mqtt_support import (
    ALL_VERSIONS,
    DISCONNECT,
    DISCONNECT_PACKET,
    V5,
    V311,
    clients,  # noqa: F401 (fixture)
    fence,
    uid,
)

RAW_LEVELS = pytest.mark.parametrize("level", [3, 4, 5], ids=["v31", "v311", "v5"])


def will_watcher(clients, broker, version=V5):
    """A subscriber (QoS 2) to a fresh will topic; returns (it, topic)."""
    topic = uid() + "/will"
    sub = clients.connect(broker, version=version)
    assert sub.subscribe(topic, qos=2) == [2]
    return sub, topic


def summary(msgs):
    return [(m.topic, m.payload, m.qos, m.retain) for m in msgs]


@ALL_VERSIONS
def test_will_is_published_when_the_connection_drops(module_broker, clients, version):
    sub, topic = will_watcher(clients, module_broker)
    c = clients.connect(
        module_broker, version=version, will={"topic": topic, "payload": b"gone \x00\xff", "qos": 1}
    )
    c.drop()
    got = sub.wait_messages(1)
    assert summary(got) == [(topic, b"gone \x00\xff", 1, False)]
    assert fence(clients.connect(module_broker), sub, topic) == got


@RAW_LEVELS
def test_no_will_after_a_normal_disconnect(module_broker, clients, level):
    sub, topic = will_watcher(clients, module_broker)
    raw = clients.raw(module_broker, level)
    ack = raw.connect(uid("c"), will={"topic": topic, "payload": b"must not appear", "qos": 1})
    assert ack.reason == 0
    raw.send(DISCONNECT_PACKET)
    assert raw.recv_until_closed() == []  # the broker has handled it
    assert fence(clients.connect(module_broker), sub, topic) == []
    sub.assert_quiet(1)  # the marker only, even a little later


@RAW_LEVELS
def test_will_is_published_when_the_keepalive_expires(module_broker, clients, level):
    sub, topic = will_watcher(clients, module_broker)
    raw = clients.raw(module_broker, level)
    start = time.monotonic()
    ack = raw.connect(
        uid("c"), keepalive=1, will={"topic": topic, "payload": b"timed out", "qos": 1}
    )
    assert ack.reason == 0
    got = sub.wait_messages(1, timeout=6)
    elapsed = time.monotonic() - start
    assert summary(got) == [(topic, b"timed out", 1, False)]
    assert 1.4 <= elapsed <= 4.0, elapsed
    packets = raw.recv_until_closed()
    assert all(p.kind == DISCONNECT for p in packets), packets  # at most a v5 DISCONNECT


@RAW_LEVELS
def test_will_is_published_when_the_broker_closes_on_a_protocol_error(
    module_broker, clients, level
):
    sub, topic = will_watcher(clients, module_broker)
    raw = clients.raw(module_broker, level)
    assert raw.connect(uid("c"), will={"topic": topic, "payload": b"broken", "qos": 1}).reason == 0
    raw.send(b"\x36\x03\x00\x01a")  # PUBLISH with QoS 3 (both QoS bits set): malformed
    raw.recv_until_closed()
    assert summary(sub.wait_messages(1)) == [(topic, b"broken", 1, False)]


@pytest.mark.parametrize("will_qos", [0, 1, 2])
@pytest.mark.parametrize("version", [V311, V5], ids=["v311", "v5"])
def test_will_qos_and_retain_are_honoured(module_broker, clients, version, will_qos):
    sub, topic = will_watcher(clients, module_broker)
    c = clients.connect(
        module_broker,
        version=version,
        will={"topic": topic, "payload": b"retained will", "qos": will_qos, "retain": True},
    )
    c.drop()
    # An existing subscriber: a normal delivery, retain flag 0.
    assert summary(sub.wait_messages(1)) == [(topic, b"retained will", will_qos, False)]
    late = clients.connect(module_broker, version=version)
    assert late.subscribe(topic, qos=2) == [2]
    assert summary(late.wait_messages(1)) == [(topic, b"retained will", will_qos, True)]


def test_v5_will_properties_are_carried(module_broker, clients):
    sub, topic = will_watcher(clients, module_broker)
    props = {
        "PayloadFormatIndicator": 1,
        "ContentType": "application/json",
        "ResponseTopic": topic + "/reply",
        "CorrelationData": b"\x00corr\xff",
        "UserProperty": [("b", "2"), ("a", "1"), ("b", "3")],
    }
    c = clients.connect(
        module_broker,
        version=V5,
        will={"topic": topic, "payload": b'{"gone": true}', "qos": 1, "props": props},
    )
    c.drop()
    (m,) = sub.wait_messages(1)
    assert (m.topic, m.payload, m.qos) == (topic, b'{"gone": true}', 1)
    assert {k: m.props.get(k) for k in props} == props


def delayed_will_client(clients, broker, topic, delay, expiry, cid=None):
    return clients.connect(
        broker,
        client_id=cid,
        version=V5,
        clean=False,
        session_expiry=expiry,
        will={
            "topic": topic,
            "payload": b"delayed",
            "qos": 1,
            "props": {"WillDelayInterval": delay},
        },
    )


@pytest.mark.deadline(30)
def test_v5_will_delay_interval_delays_the_will(module_broker, clients):
    sub, topic = will_watcher(clients, module_broker)
    c = delayed_will_client(clients, module_broker, topic, delay=2, expiry=60)
    start = time.monotonic()
    c.drop()
    got = sub.wait_messages(1, timeout=8)
    elapsed = time.monotonic() - start
    assert summary(got) == [(topic, b"delayed", 1, False)]
    assert 1.8 <= elapsed <= 5.0, elapsed


@pytest.mark.deadline(30)
def test_v5_will_is_not_sent_if_the_client_reconnects_within_the_delay(module_broker, clients):
    sub, topic = will_watcher(clients, module_broker)
    cid = uid("c")
    c = delayed_will_client(clients, module_broker, topic, delay=2, expiry=60, cid=cid)
    c.drop()
    back = clients.connect(module_broker, client_id=cid, version=V5, clean=False, session_expiry=60)
    assert back.connack.session_present is True
    time.sleep(3.5)  # past the will delay
    assert fence(clients.connect(module_broker), sub, topic) == []
    sub.assert_quiet(1)  # the marker only, even a little later


@pytest.mark.deadline(30)
def test_v5_will_is_sent_when_the_session_ends_before_the_will_delay(module_broker, clients):
    # 5.0 section 3.1.3.2.2: the will goes at the delay or the session's
    # end, whichever comes first.
    sub, topic = will_watcher(clients, module_broker)
    c = delayed_will_client(clients, module_broker, topic, delay=30, expiry=1)
    start = time.monotonic()
    c.drop()
    got = sub.wait_messages(1, timeout=8)
    elapsed = time.monotonic() - start
    assert summary(got) == [(topic, b"delayed", 1, False)]
    assert 0.8 <= elapsed <= 4.0, elapsed


@pytest.mark.deadline(30)
def test_v5_clean_start_reconnect_ends_the_session_and_sends_its_delayed_will(
    module_broker, clients
):
    # The old session ends at the clean-start CONNECT, and a delayed will
    # goes out at the latest when its session ends (5.0 section 3.1.3.2.2);
    # the rule against sending it is for a connection that resumes it.
    sub, topic = will_watcher(clients, module_broker)
    cid = uid("c")
    c = delayed_will_client(clients, module_broker, topic, delay=30, expiry=60, cid=cid)
    c.drop()
    start = time.monotonic()
    back = clients.connect(module_broker, client_id=cid, version=V5, clean=True)
    assert back.connack.session_present is False
    got = sub.wait_messages(1, timeout=5)
    assert summary(got) == [(topic, b"delayed", 1, False)]
    assert time.monotonic() - start < 5.0


def test_v5_disconnect_with_reason_0x04_publishes_the_will(module_broker, clients):
    sub, topic = will_watcher(clients, module_broker)
    c = clients.connect(
        module_broker, version=V5, will={"topic": topic, "payload": b"asked for", "qos": 1}
    )
    c.disconnect(reason=0x04)
    assert summary(sub.wait_messages(1)) == [(topic, b"asked for", 1, False)]


def test_v5_normal_disconnect_publishes_no_will_and_clears_a_delayed_one(module_broker, clients):
    sub, topic = will_watcher(clients, module_broker)
    raw = clients.raw(module_broker, 5)
    will = {
        "topic": topic,
        "payload": b"must not appear",
        "qos": 1,
        "props": {"WillDelayInterval": 1},
    }
    assert raw.connect(uid("c"), will=will, props={"SessionExpiryInterval": 60}).reason == 0
    raw.send(b"\xe0\x01\x00")  # DISCONNECT, reason 0x00 normal disconnection
    assert raw.recv_until_closed() == []
    time.sleep(2)  # past the will delay
    assert fence(clients.connect(module_broker), sub, topic) == []
    sub.assert_quiet(1)  # the marker only, even a little later
