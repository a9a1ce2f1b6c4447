"""Replicated (quorum) queues (docs/cluster.md "Replicated (quorum)
queues"), with three real `junction` processes: a queue declared with
`x-queue-type: quorum` has a consensus group on every node; publishes on
any node, from AMQP (pika, confirms), MQTT (paho, QoS 1) and STOMP
(stomp.py, receipts), are confirmed once a majority has them on disk; the
group's leader delivers them to consumers on any node; kill -9 of the
leader loses no confirmed message (the other two elect a leader that
holds them all, and the killed node catches up when it returns); a node
cut off from the other two cannot confirm a publish (pika gets a nack).
Each queue's declaring node leads it first, and a queue declared while
the node with the lowest id is down has a leader at once. `junction
cluster rebalance` spreads leaders two per node while a publisher goes
on, keeping every confirmed message; a move to a paused node fails and
leaves its queue led and writable."""

import hashlib
import json
import os
import signal
import threading
import time

import pika
import pika.exceptions
import pytest

from mqtt_support import Client as MqttClient
from stomp_support import Client as StompClient
from test_cluster import api, proxied_cluster, settled, wait_for  # noqa: F401 (a fixture)
from test_cluster_messages import depth
from test_cluster_topology import amqp, formed

PERSISTENT = pika.BasicProperties(delivery_mode=2)


def declare_quorum(b, name, bind_topic=None):
    conn = amqp(b)
    ch = conn.channel()
    ch.queue_declare(name, durable=True, arguments={"x-queue-type": "quorum"})
    if bind_topic:
        ch.queue_bind(name, "amq.topic", routing_key=bind_topic)
    conn.close()


def queue_info(b, name):
    status, body, _ = api(b, "GET", f"/api/queues/%2F/{name}")
    assert status == 200, (status, body)
    return body


def leader_everywhere(brokers, name):
    """Waits until every node in `brokers` names the same leader for the
    queue, one of `brokers`; returns that broker."""
    found = {}

    def agreed():
        leaders = {b.name: queue_info(b, name).get("leader") for b in brokers}
        names = set(leaders.values())
        if len(names) != 1:
            return leaders
        (leader,) = names
        match = [b for b in brokers if f"junction@{b.name}" == leader]
        if not match:
            return leaders
        found["b"] = match[0]
        return True

    wait_for(f"one leader of {name} on every node", agreed)
    return found["b"]


def publish_confirmed(b, queue, bodies):
    """Publishes `bodies` persistent to `queue` on `b` with confirms;
    each publish returns once confirmed (pika raises on a nack)."""
    conn = amqp(b)
    ch = conn.channel()
    ch.confirm_delivery()
    for body in bodies:
        ch.basic_publish("", queue, body, PERSISTENT, mandatory=True)
    conn.close()


def consume_all(b, queue, n, timeout=20.0):
    """Consumes `queue` on `b` with manual acks until `n` deliveries came
    (and then half a second more, to see any extra); returns (body,
    redelivered) in delivery order."""
    conn = amqp(b)
    ch = conn.channel()
    ch.basic_qos(prefetch_count=100)
    got = []

    def on(c, m, p, body):
        got.append((body, m.redelivered))
        c.basic_ack(m.delivery_tag)

    ch.basic_consume(queue, on)
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        conn.process_data_events(0.05)
    conn.process_data_events(0.5)
    conn.close()
    assert len(got) >= n, f"{len(got)} of {n} deliveries"
    return got


@pytest.mark.deadline(300)
def test_a_quorum_queue_keeps_every_confirmed_message_through_kill9_of_its_leader(make_broker, tmp_path):
    brokers, _ = formed(make_broker, tmp_path)
    n1, n2, n3 = brokers
    declare_quorum(n1, "orders")
    first = leader_everywhere(brokers, "orders")
    info = queue_info(n2, "orders")
    assert info["type"] == "quorum"
    assert sorted(info["members"]) == ["junction@n1", "junction@n2", "junction@n3"]
    # A redeclaration as a classic queue is refused, as RabbitMQ does.
    conn = amqp(n3)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
        conn.channel().queue_declare("orders", durable=True)
    assert refused.value.reply_code == 406
    conn.close()

    # 40 confirmed on each node; every node counts them all (the leader's).
    for b in brokers:
        publish_confirmed(b, "orders", [f"{b.name}-{i}".encode() for i in range(40)])
    wait_for("120 ready on every node", lambda: all(depth(b, "orders") == 120 for b in brokers) or [depth(b, "orders") for b in brokers])

    # kill -9 of the leader: the other two elect one of themselves, which
    # holds every confirmed message; publishes go on on both.
    first.kill9()
    survivors = [b for b in brokers if b is not first]
    second = leader_everywhere(survivors, "orders")
    assert second is not first
    for b in survivors:
        publish_confirmed(b, "orders", [f"{b.name}-after-{i}".encode() for i in range(30)])

    # A consumer on either survivor gets all 180, each publisher's in its
    # order, each once; those published before the kill may be flagged
    # redelivered (the new leader cannot know they were not delivered).
    other = next(b for b in survivors if b is not second)
    got = consume_all(other, "orders", 180)
    bodies = [body for body, _ in got]
    assert len(bodies) == 180, bodies[180:]
    assert len(set(bodies)) == 180
    for b in brokers:
        mine = [x for x in bodies if x.startswith(f"{b.name}-".encode()) and b"after" not in x]
        assert mine == [f"{b.name}-{i}".encode() for i in range(40)]
    for b in survivors:
        after = [x for x in bodies if x.startswith(f"{b.name}-after-".encode())]
        assert after == [f"{b.name}-after-{i}".encode() for i in range(30)]
    assert not any(redelivered for body, redelivered in got if b"after" in body)

    # The killed node returns, catches up, and knows the queue empty.
    first.start()
    leader_everywhere(brokers, "orders")
    wait_for("the queue empty on the returned node", lambda: depth(first, "orders") == 0)
    publish_confirmed(first, "orders", [b"back"])
    assert [body for body, _ in consume_all(second, "orders", 1)] == [b"back"]


@pytest.mark.deadline(240)
def test_mqtt_qos1_and_stomp_receipts_reach_a_quorum_queue_and_a_deleted_one_goes_everywhere(make_broker, tmp_path):
    brokers, _ = formed(make_broker, tmp_path)
    n1, n2, n3 = brokers
    declare_quorum(n2, "plant", bind_topic="plant.*.temp")
    leader_everywhere(brokers, "plant")

    mqtt = MqttClient(n3)
    mqtt.connect()
    for i in range(20):
        assert mqtt.publish(f"plant/{i}/temp", f"mqtt-{i}".encode(), qos=1) == 0
    mqtt.close()
    stomp = StompClient(n1)
    stomp.connected()
    for i in range(20):
        receipt = stomp.send("/amq/queue/plant", f"stomp-{i}", headers={"persistent": "true"}, receipt=True)
        assert receipt.cmd == "RECEIPT"
    stomp.close()

    got = [body for body, _ in consume_all(n3, "plant", 40)]
    assert len(got) == 40
    assert [m for m in got if m.startswith(b"mqtt-")] == [f"mqtt-{i}".encode() for i in range(20)]
    assert [m for m in got if m.startswith(b"stomp-")] == [f"stomp-{i}".encode() for i in range(20)]

    # Deleted on a node that does not lead it: gone on every node, and a
    # new queue of the name is a new, empty group.
    leader = leader_everywhere(brokers, "plant")
    other = next(b for b in brokers if b is not leader)
    conn = amqp(other)
    conn.channel().queue_delete("plant")
    conn.close()

    def gone_everywhere():
        for b in brokers:
            status, _, _ = api(b, "GET", "/api/queues/%2F/plant")
            if status != 404:
                return f"{b.name}: {status}"
        return True

    wait_for("the queue gone on every node", gone_everywhere)
    declare_quorum(n1, "plant")
    leader_everywhere(brokers, "plant")
    assert all(depth(b, "plant") == 0 for b in brokers)


@pytest.mark.deadline(240)
def test_a_node_cut_off_from_the_other_two_cannot_confirm_a_publish(proxied_cluster):
    brokers, proxies = proxied_cluster
    settled(brokers)
    n1, n2, n3 = brokers
    declare_quorum(n1, "jobs")
    leader_everywhere(brokers, "jobs")
    publish_confirmed(n3, "jobs", [b"before"])

    # Every link to and from n3 black-holed: n3 has no majority.
    for (x, y), p in proxies.items():
        if "n3" in (x, y):
            p.blackhole()
    conn = amqp(n3)
    ch = conn.channel()
    ch.confirm_delivery()
    with pytest.raises(pika.exceptions.NackError):
        ch.basic_publish("", "jobs", b"cut-off", PERSISTENT)
    conn.close()
    # The majority goes on.
    majority = [n1, n2]
    leader_everywhere(majority, "jobs")
    publish_confirmed(n2, "jobs", [b"majority"])

    for (x, y), p in proxies.items():
        if "n3" in (x, y):
            p.heal()
    leader_everywhere(brokers, "jobs")
    got = [body for body, _ in consume_all(n1, "jobs", 2)]
    # Both confirmed messages, once each, in order. The refused one may
    # still have been committed after the heal (a nack says "not
    # confirmed", not "absent"), so it alone may appear too.
    assert [m for m in got if m != b"cut-off"] == [b"before", b"majority"]
    assert got.count(b"cut-off") <= 1


@pytest.mark.deadline(240)
def test_a_vhosts_default_queue_type_makes_its_durable_queues_quorum(make_broker, tmp_path):
    brokers, _ = formed(make_broker, tmp_path)
    n1, n2, n3 = brokers
    status = api(n1, "PUT", "/api/vhosts/qv", {"default_queue_type": "quorum"})[0]
    assert status in (201, 204), status
    assert api(n1, "PUT", "/api/permissions/qv/guest", {"configure": ".*", "write": ".*", "read": ".*"})[0] in (201, 204)

    def can_open(b):
        try:
            amqp(b, "qv").close()
            return True
        except pika.exceptions.AMQPError as e:
            return repr(e)

    for b in brokers:
        wait_for(f"qv open on {b.name}", lambda: can_open(b))

    # Declared with no arguments on n2: replicated, as every node says.
    conn = amqp(n2, "qv")
    ch = conn.channel()
    ch.queue_declare("auto", durable=True)
    # A transient queue cannot be quorum: it stays classic.
    ch.queue_declare("scratch", durable=False)
    conn.close()

    def types():
        out = {}
        for b in brokers:
            status, body, _ = api(b, "GET", "/api/queues/qv/auto")
            if status != 200:
                return f"{b.name}: {status}"
            out[b.name] = (body["type"], body.get("leader"))
        leaders = {leader for _, leader in out.values()}
        return (all(t == "quorum" for t, _ in out.values()) and len(leaders) == 1 and None not in leaders) or out

    wait_for("auto a quorum queue with one leader everywhere", types)
    status, scratch, _ = api(n2, "GET", "/api/queues/qv/scratch")
    assert status == 200 and scratch["type"] == "classic", scratch

    # Redeclared without arguments on another node: equivalent (no 406).
    conn = amqp(n3, "qv")
    ch = conn.channel()
    assert ch.queue_declare("auto", durable=True).method.message_count == 0
    ch.confirm_delivery()
    ch.basic_publish("", "auto", b"by-default", PERSISTENT, mandatory=True)
    conn.close()
    conn = amqp(n1, "qv")
    ch = conn.channel()
    method, _, body = None, None, None
    deadline = time.monotonic() + 10
    while method is None and time.monotonic() < deadline:
        method, _, body = ch.basic_get("auto", auto_ack=True)
        if method is None:
            time.sleep(0.1)
    conn.close()
    assert body == b"by-default"


def lowest_id(names):
    """The member with the lowest Raft id (the first 8 bytes of
    SHA-256(name), big-endian): the one that initializes the metadata
    group."""
    return min(names, key=lambda n: int.from_bytes(hashlib.sha256(n.encode()).digest()[:8], "big"))


@pytest.mark.deadline(240)
def test_each_quorum_queue_is_led_first_by_its_declaring_node_even_with_the_lowest_id_down(make_broker, tmp_path):
    brokers, names = formed(make_broker, tmp_path)
    # One queue declared on each node: its declaring node leads it (the
    # leaders spread as the declarations do).
    for b in brokers:
        declare_quorum(b, f"placed-{b.name}")
    for b in brokers:
        assert leader_everywhere(brokers, f"placed-{b.name}") is b

    # The node with the lowest id (which used to initialize every group)
    # is killed: a queue declared now on another node has a leader at
    # once, which confirms a publish made on the third.
    low = next(b for b in brokers if b.name == lowest_id(names))
    low.kill9()
    survivors = [b for b in brokers if b is not low]
    declarer, other = survivors
    declare_quorum(declarer, "placed-late")
    assert leader_everywhere(survivors, "placed-late") is declarer
    publish_confirmed(other, "placed-late", [b"while-down"])
    assert [body for body, _ in consume_all(declarer, "placed-late", 1)] == [b"while-down"]

    # The killed node returns and follows the queue made while it was
    # down; its leader stays.
    low.start()
    assert leader_everywhere(brokers, "placed-late") is declarer
    assert sorted(queue_info(low, "placed-late")["members"]) == [f"junction@{n}" for n in sorted(names)]


def six_led_by_the_first(make_broker, tmp_path, prefix):
    """Three formed nodes and six quorum queues `<prefix>-0..5`, all
    declared on n1 and so all led by it."""
    brokers, _ = formed(make_broker, tmp_path)
    names = [f"{prefix}-{i}" for i in range(6)]
    for q in names:
        declare_quorum(brokers[0], q)
    for q in names:
        assert leader_everywhere(brokers, q) is brokers[0]
    return brokers, names


@pytest.mark.deadline(240)
def test_a_rebalance_spreads_quorum_queue_leaders_and_keeps_every_message(make_broker, tmp_path):
    brokers, names = six_led_by_the_first(make_broker, tmp_path, "spread")
    n1, n2, n3 = brokers
    # Each holds 20 confirmed messages published on n2.
    for q in names:
        publish_confirmed(n2, q, [f"{q}-{i}".encode() for i in range(20)])

    # `junction cluster rebalance` on n3: two moves each to n2 and n3,
    # while a publisher on n2 goes on (each publish waits for its
    # confirm: a queue being moved takes no writes for a moment).
    errors, during, stop = [], {q: [] for q in names}, threading.Event()

    def keep_publishing():
        try:
            conn = amqp(n2)
            ch = conn.channel()
            ch.confirm_delivery()
            i = 0
            while not stop.is_set():
                for q in names:
                    body = f"{q}-during-{i}".encode()
                    ch.basic_publish("", q, body, PERSISTENT, mandatory=True)
                    during[q].append(body)
                i += 1
            conn.close()
        except Exception as e:  # reported in the test's thread
            errors.append(repr(e))

    publisher = threading.Thread(target=keep_publishing, daemon=True)
    publisher.start()
    url = ["--url", f"http://127.0.0.1:{n3.admin_port}"]
    out = n3.command("cluster", "rebalance", *url, "--json").stdout
    stop.set()
    publisher.join(60)
    assert not publisher.is_alive() and errors == [], errors
    assert json.loads(out) == {"queues": 6, "planned": 4, "moved": 4}, out
    counts = {b.name: 0 for b in brokers}
    for q in names:
        counts[leader_everywhere(brokers, q).name] += 1
    assert counts == {"n1": 2, "n2": 2, "n3": 2}, counts
    # Balanced already: nothing moves.
    out = n3.command("cluster", "rebalance", *url).stdout
    assert out.strip() == "moved 0 of 0 planned quorum queue leaders (6 quorum queues)", out

    # Every queue still takes confirmed publishes on any node and gives
    # back every message, each once, wherever its leader is now: those
    # from before the rebalance first and in order, then those published
    # while it ran (in any order: writes waiting for a move may overtake
    # each other, as across any change of leader), then the last one.
    for q in names:
        publish_confirmed(n1, q, [f"{q}-after".encode()])
    for q in names:
        n = 20 + len(during[q]) + 1
        got = [body for body, _ in consume_all(n2, q, n)]
        assert len(got) == n, got
        assert got[:20] == [f"{q}-{i}".encode() for i in range(20)], got
        assert sorted(got[20:-1]) == sorted(during[q]), got
        assert got[-1] == f"{q}-after".encode(), got


@pytest.mark.deadline(240)
def test_a_move_to_a_paused_node_fails_and_leaves_its_queue_led_and_writable(make_broker, tmp_path):
    brokers, names = six_led_by_the_first(make_broker, tmp_path, "stuck")
    n1, n2, n3 = brokers

    # n3 stops answering (SIGSTOP) just before the rebalance: it still
    # counts as reachable (its links have not timed out), so two moves go
    # to it and fail (it never stands); the two moves to n2 succeed.
    os.kill(n3.proc.pid, signal.SIGSTOP)
    try:
        url = ["--url", f"http://127.0.0.1:{n1.admin_port}"]
        out = json.loads(n1.command("cluster", "rebalance", *url, "--json").stdout)
        assert out == {"queues": 6, "planned": 4, "moved": 2}, out
        # Every queue is led by a running node and confirms a publish
        # made on n2 (n1 and n2 are a majority): a failed move left its
        # group's heartbeats and elections running.
        running = [n1, n2]
        for q in names:
            assert leader_everywhere(running, q) in running
            publish_confirmed(n2, q, [f"{q}-while-stopped".encode()])
    finally:
        os.kill(n3.proc.pid, signal.SIGCONT)

    # n3 wakes, follows every group, and each queue has its message once.
    for q in names:
        leader_everywhere(brokers, q)
        assert [body for body, _ in consume_all(n3, q, 1)] == [f"{q}-while-stopped".encode()]
