"""Topics starting with `$` and the `$SYS/broker/...` tree.

Each test runs its own broker (`sys_interval` is a broker option, and the
counters must not see other tests' traffic). `$SYS` values are refreshed
every `sys_interval` seconds, so "the value after X" is read from the
second update received after X: the first may have been computed before."""

import re
import time

import pytest

from mqtt_support import (
    V5,
    V311,
    clients,  # noqa: F401 (fixture)
    uid,
    wait_until,
)

SYS_TOPICS = [
    "$SYS/broker/version",
    "$SYS/broker/uptime",
    "$SYS/broker/clients/connected",
    "$SYS/broker/messages/received",
    "$SYS/broker/messages/sent",
    "$SYS/broker/bytes/received",
    "$SYS/broker/bytes/sent",
    "$SYS/broker/subscriptions/count",
    "$SYS/broker/retained messages/count",
]
INTEGER = re.compile(rb"^(0|[1-9][0-9]*)$")


def sys_broker(make_broker, interval=1):
    return make_broker(mqtt_options=[f"sys_interval = {interval}"])


def updates(sub, topic, mark=0):
    return [m for m in sub.received()[mark:] if m.topic == topic]


def value_after(sub, topic, mark, nth=2, timeout=6):
    """The payload of the `nth` update of `topic` received after the
    inbox held `mark` messages."""
    ok = wait_until(lambda: len(updates(sub, topic, mark)) >= nth, timeout)
    got = updates(sub, topic, mark)
    assert ok, f"{len(got)} updates of {topic} within {timeout} s: {got}"
    return got[nth - 1].payload


def int_after(sub, topic, mark, nth=2):
    value = value_after(sub, topic, mark, nth)
    assert INTEGER.match(value), value
    return int(value)


def monitor(clients, broker, *topics):
    m = clients.connect(broker, version=V311)
    assert m.subscribe(*topics, qos=0) == [0] * len(topics)
    return m


@pytest.mark.deadline(30)
def test_a_sys_subscriber_gets_every_value_at_once_with_the_retain_flag(make_broker, clients):
    broker = sys_broker(make_broker, interval=60)  # no periodic update during the test
    sub = clients.connect(broker, version=V5)
    assert sub.subscribe("$SYS/#", qos=0) == [0]
    ok = wait_until(lambda: {m.topic for m in sub.received()} >= set(SYS_TOPICS), 3)
    got = sub.received()
    assert ok, got
    assert all(m.topic.startswith("$SYS/broker/") for m in got), got
    topics = [m.topic for m in got]
    assert [topics.count(t) for t in SYS_TOPICS] == [1] * len(SYS_TOPICS), topics
    assert all(m.retain and m.qos == 0 for m in got), got
    values = {m.topic: m.payload for m in got}
    assert values["$SYS/broker/version"].startswith(b"junction"), values
    for topic in SYS_TOPICS[1:]:
        assert INTEGER.match(values[topic]), (topic, values[topic])


@pytest.mark.deadline(30)
def test_sys_values_are_refreshed_every_interval(make_broker, clients):
    broker = sys_broker(make_broker)
    sub = monitor(clients, broker, "$SYS/broker/uptime")
    start = time.monotonic()
    ok = wait_until(lambda: len(sub.received()) >= 4, 6)
    elapsed = time.monotonic() - start
    got = sub.received()
    assert ok, got
    # The first is the current value (retained), then live updates.
    assert [m.retain for m in got[:4]] == [True, False, False, False]
    uptimes = [int(m.payload) for m in got]
    assert uptimes == sorted(uptimes) and uptimes[-1] > uptimes[0], uptimes
    assert 2.0 <= elapsed <= 5.0, elapsed  # three 1-second intervals


@pytest.mark.deadline(30)
def test_dollar_topics_are_not_matched_by_leading_wildcards(make_broker, clients):
    broker = sys_broker(make_broker)
    everything = monitor(clients, broker, "#")
    plus = monitor(clients, broker, "+/broker/uptime")
    plus_hash = monitor(clients, broker, "+/#")
    control = monitor(clients, broker, "$SYS/broker/uptime")
    # Two refreshes reached the explicit $SYS subscriber ...
    value_after(control, "$SYS/broker/uptime", 0, nth=3)
    # ... and none of them the wildcard subscribers.
    # A marker published after them reaches all three, as their first message.
    clients.connect(broker).publish("x/broker/uptime", b"marker", qos=1)
    for c in (everything, plus, plus_hash):
        assert [(m.topic, m.payload) for m in c.wait_messages(1)] == [
            ("x/broker/uptime", b"marker")
        ]


@pytest.mark.deadline(30)
def test_clients_connected_counts_mqtt_clients_only(make_broker, clients):
    broker = sys_broker(make_broker)
    amqp = broker.connect()  # not an MQTT client
    try:
        mon = monitor(clients, broker, "$SYS/broker/clients/connected")
        topic = "$SYS/broker/clients/connected"
        assert value_after(mon, topic, 0) == b"1"
        others = [clients.connect(broker, version=v) for v in (V311, V5)]
        assert value_after(mon, topic, len(mon.received())) == b"3"
        for c in others:
            c.disconnect()
        assert value_after(mon, topic, len(mon.received())) == b"1"
    finally:
        amqp.close()


@pytest.mark.deadline(30)
def test_subscription_count_follows_subscribe_unsubscribe_and_disconnect(make_broker, clients):
    broker = sys_broker(make_broker)
    topic = "$SYS/broker/subscriptions/count"
    mon = monitor(clients, broker, topic)
    base = int_after(mon, topic, 0)
    c = clients.connect(broker, version=V5)
    prefix = uid()
    assert c.subscribe(prefix + "/a", prefix + "/b/#", prefix + "/+/c", qos=1) == [1, 1, 1]
    assert int_after(mon, topic, len(mon.received())) == base + 3
    assert c.unsubscribe(prefix + "/a") == [0]
    assert int_after(mon, topic, len(mon.received())) == base + 2
    c.disconnect()  # clean session: its subscriptions end with it
    assert int_after(mon, topic, len(mon.received())) == base


@pytest.mark.deadline(30)
def test_retained_count_follows_set_and_clear(make_broker, clients):
    broker = sys_broker(make_broker)
    topic = "$SYS/broker/retained messages/count"
    mon = monitor(clients, broker, topic)
    base = int_after(mon, topic, 0)
    pub = clients.connect(broker)
    prefix = uid()
    for t in ("a", "b", "c"):
        pub.publish(f"{prefix}/{t}", b"retained", qos=1, retain=True)
    pub.publish(f"{prefix}/a", b"replaced", qos=1, retain=True)
    assert int_after(mon, topic, len(mon.received())) == base + 3
    pub.publish(f"{prefix}/b", b"", qos=1, retain=True)
    assert int_after(mon, topic, len(mon.received())) == base + 2


def publish_five_of_ten_bytes(clients, broker):
    """A subscriber and a publisher; five 10-byte PUBLISHes go through."""
    topic = uid() + "/d"
    sub = clients.connect(broker)
    assert sub.subscribe(topic, qos=0) == [0]
    pub = clients.connect(broker)
    for i in range(5):
        pub.publish(topic, b"0123456789", qos=0)
    assert [m.payload for m in sub.wait_messages(5)] == [b"0123456789"] * 5


@pytest.mark.deadline(30)
def test_received_counters_count_mqtt_publishes_and_payload_bytes(make_broker, clients):
    broker = sys_broker(make_broker)
    t_msgs, t_bytes = "$SYS/broker/messages/received", "$SYS/broker/bytes/received"
    mon = monitor(clients, broker, t_msgs, t_bytes)
    assert value_after(mon, t_msgs, 0) == b"0"  # nothing published yet
    assert value_after(mon, t_bytes, 0) == b"0"
    mark = len(mon.received())
    publish_five_of_ten_bytes(clients, broker)
    assert value_after(mon, t_msgs, mark) == b"5"
    assert value_after(mon, t_bytes, mark) == b"50"


@pytest.mark.deadline(30)
def test_sent_counters_count_mqtt_deliveries_and_payload_bytes(make_broker, clients):
    broker = sys_broker(make_broker)
    publish_five_of_ten_bytes(clients, broker)
    # Nobody watches $SYS yet, so nothing else has been sent. Let one
    # refresh happen, then read the current values.
    time.sleep(1.5)
    mon = monitor(clients, broker, "$SYS/broker/messages/sent", "$SYS/broker/bytes/sent")
    got = mon.wait_messages(2)
    assert sorted((m.topic, m.payload, m.retain) for m in got[:2]) == [
        ("$SYS/broker/bytes/sent", b"50", True),
        ("$SYS/broker/messages/sent", b"5", True),
    ]
