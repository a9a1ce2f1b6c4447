"""Retained messages: set, replace, clear; delivery on subscribe (exact and
wildcard filters) with the retain flag; the flag on normal delivery (v3
and v5 Retain As Published); v5 Retain Handling; survival of a restart."""

import pytest

from mqtt_support import (
    ALL_VERSIONS,
    V5,
    V311,
    clients,  # noqa: F401 (fixture)
    fence,
    uid,
)


def summary(msgs):
    return [(m.topic, m.payload, m.qos, m.retain) for m in msgs]


@ALL_VERSIONS
@pytest.mark.parametrize("sub_qos", [0, 1, 2])
def test_retained_message_is_sent_on_subscribe_with_the_retain_flag(
    module_broker, clients, version, sub_qos
):
    topic = uid() + "/r"
    pub = clients.connect(module_broker, version=version)
    pub.publish(topic, b"last \x00\xff value", qos=1, retain=True)
    sub = clients.connect(module_broker, version=version)
    assert sub.subscribe(topic, qos=sub_qos) == [sub_qos]
    got = sub.wait_messages(1)
    assert summary(got) == [(topic, b"last \x00\xff value", min(1, sub_qos), True)]
    assert fence(pub, sub, topic, qos=sub_qos) == got


def test_qos0_retained_message_is_kept_too(module_broker, clients):
    topic = uid() + "/r"
    pub = clients.connect(module_broker)
    pub.publish(topic, b"qos 0 retained", qos=0, retain=True)
    fence_sub = clients.connect(module_broker)  # the publish has been routed
    assert fence_sub.subscribe(topic + "/x", qos=1) == [1]
    fence(pub, fence_sub, topic + "/x")
    sub = clients.connect(module_broker)
    assert sub.subscribe(topic, qos=1) == [1]
    assert summary(sub.wait_messages(1)) == [(topic, b"qos 0 retained", 0, True)]


def test_a_new_retained_message_replaces_the_old_one(module_broker, clients):
    topic = uid() + "/r"
    pub = clients.connect(module_broker)
    for body in (b"first", b"second", b"third"):
        pub.publish(topic, body, qos=1, retain=True)
    sub = clients.connect(module_broker)
    assert sub.subscribe(topic, qos=1) == [1]
    got = sub.wait_messages(1)
    assert summary(got) == [(topic, b"third", 1, True)]
    assert fence(pub, sub, topic) == got


@pytest.mark.parametrize("version", [V311, V5], ids=["v311", "v5"])
def test_empty_retained_publish_clears_and_is_delivered_as_a_normal_message(
    module_broker, clients, version
):
    topic = uid() + "/r"
    pub = clients.connect(module_broker, version=version)
    pub.publish(topic, b"to be cleared", qos=1, retain=True)
    existing = clients.connect(module_broker, version=version)
    assert existing.subscribe(topic, qos=1) == [1]
    assert summary(existing.wait_messages(1)) == [(topic, b"to be cleared", 1, True)]

    pub.publish(topic, b"", qos=1, retain=True)
    got = existing.wait_messages(2)
    assert summary(got) == [(topic, b"to be cleared", 1, True), (topic, b"", 1, False)]

    late = clients.connect(module_broker, version=version)
    assert late.subscribe(topic, qos=1) == [1]
    assert fence(pub, late, topic) == []


@pytest.mark.parametrize(
    "pattern,expected",
    [("#", ["a", "b/c", "d"]), ("+", ["a", "d"]), ("b/+", ["b/c"]), ("+/c", ["b/c"])],
    ids=["hash", "plus", "prefix-plus", "plus-suffix"],
)
def test_wildcard_subscribers_get_every_matching_retained_message(
    module_broker, clients, pattern, expected
):
    base = uid()
    pub = clients.connect(module_broker)
    for sub_topic in ("a", "b/c", "d"):
        pub.publish(f"{base}/{sub_topic}", b"retained " + sub_topic.encode(), qos=1, retain=True)
    pub.publish(uid() + "/a", b"elsewhere", qos=1, retain=True)
    pub.publish(base + "x/a", b"sibling prefix", qos=1, retain=True)

    sub = clients.connect(module_broker)
    assert sub.subscribe(f"{base}/{pattern}", qos=2) == [2]
    got = sub.wait_messages(len(expected))
    want = [(f"{base}/{t}", b"retained " + t.encode(), 1, True) for t in expected]
    assert sorted(summary(got)) == want
    # Exactly these: nothing more follows (the fence is on a matching topic).
    fence_topic = f"{base}/{expected[0]}"
    assert sorted(summary(fence(pub, sub, fence_topic))) == want


@pytest.mark.parametrize("version", [V311, V5], ids=["v311", "v5"])
def test_normal_delivery_of_a_retained_publish_has_retain_flag_0(module_broker, clients, version):
    topic = uid() + "/r"
    sub = clients.connect(module_broker, version=version)
    assert sub.subscribe(topic, qos=1) == [1]
    pub = clients.connect(module_broker, version=version)
    pub.publish(topic, b"live", qos=1, retain=True)
    assert summary(sub.wait_messages(1)) == [(topic, b"live", 1, False)]


def test_v5_retain_as_published_keeps_the_retain_flag(module_broker, clients):
    topic = uid() + "/r"
    rap = clients.connect(module_broker, version=V5)
    assert rap.subscribe(topic, qos=1, retain_as_published=True) == [1]
    plain = clients.connect(module_broker, version=V5)
    assert plain.subscribe(topic, qos=1) == [1]
    pub = clients.connect(module_broker, version=V5)
    pub.publish(topic, b"retained", qos=1, retain=True)
    pub.publish(topic, b"not retained", qos=1, retain=False)
    assert [(m.payload, m.retain) for m in rap.wait_messages(2)] == [
        (b"retained", True),
        (b"not retained", False),
    ]
    assert [(m.payload, m.retain) for m in plain.wait_messages(2)] == [
        (b"retained", False),
        (b"not retained", False),
    ]


@pytest.mark.parametrize(
    "handling,copies",
    [(0, 2), (1, 1), (2, 0)],
    ids=["0-always", "1-if-new", "2-never"],
)
def test_v5_retain_handling(module_broker, clients, handling, copies):
    topic = uid() + "/r"
    pub = clients.connect(module_broker, version=V5)
    pub.publish(topic, b"retained", qos=1, retain=True)
    sub = clients.connect(module_broker, version=V5)
    # Subscribe twice to the same filter: the second one is not new.
    assert sub.subscribe(topic, qos=1, retain_handling=handling) == [1]
    if handling != 2:
        sub.wait_messages(1)
    assert sub.subscribe(topic, qos=1, retain_handling=handling) == [1]
    got = fence(pub, sub, topic)
    assert summary(got) == [(topic, b"retained", 1, True)] * copies


@pytest.mark.deadline(60)
@pytest.mark.parametrize("how", ["restart", "kill9"])
def test_retained_messages_and_clears_survive_the_broker_going_down(broker, clients, how):
    base = uid()
    pub = clients.connect(broker)
    pub.publish(base + "/kept", b"kept \x00\xff", qos=1, retain=True)
    pub.publish(base + "/replaced", b"old", qos=1, retain=True)
    pub.publish(base + "/replaced", b"new", qos=2, retain=True)
    pub.publish(base + "/cleared", b"gone", qos=1, retain=True)
    pub.publish(base + "/cleared", b"", qos=1, retain=True)
    clients.close_all()
    if how == "restart":
        broker.restart()
    else:
        broker.kill9()
        broker.start()

    sub = clients.connect(broker)
    assert sub.subscribe(base + "/#", qos=2) == [2]
    got = sub.wait_messages(2)
    assert sorted(summary(got)) == [
        (base + "/kept", b"kept \x00\xff", 1, True),
        (base + "/replaced", b"new", 2, True),
    ]
    assert sorted(summary(fence(clients.connect(broker), sub, base + "/kept", qos=2))) == sorted(
        summary(got)
    )
