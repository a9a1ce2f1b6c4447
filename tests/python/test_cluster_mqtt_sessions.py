"""MQTT sessions across the nodes of a cluster (docs/cluster.md "MQTT
sessions across nodes"), with three real `junction` processes and
paho-mqtt: the client-id registry is the cluster's, so a persistent
session that a client left on one node is resumed on another (CONNACK
session present, its subscriptions kept without subscribing again) with
every QoS 1 message queued for it while it was away, each once, and live
messages published on any node after; a clean session there ends it and
its queue `mqtt-session-<client id>` goes from every node. A second
connection with the same client id on another node takes the client over
(MQTT 5: DISCONNECT 0x8E Session taken over to the first). A session
travels n1 -> n2 -> n1 keeping what changed on the way (a filter added on
n2). With `[mqtt] replicated_sessions = true` the session's queue is a
quorum queue, so its queued messages survive kill -9 of the node that
held the session (the subscriptions were that node's: the client
subscribes again and gets them all), and the killed node rejoins. A node
cut off from the majority cannot commit a claim: its CONNACK is "server
unavailable" (MQTT 5 0x88, MQTT 3.1.1 return code 3, which paho reports
as 0x88 too) until the partition heals."""

import threading

import pytest

from admin_support import api
from mqtt_support import V5, V311, clients, fence, persistent  # noqa: F401 (a fixture)
from test_cluster import (  # noqa: F401 (a fixture)
    agreed_leader,
    links_of,
    proxied_cluster,
    settled,
    three_nodes,
    wait_for,
)
from test_cluster_quorum import leader_everywhere
from test_cluster_topology import bindings_to, formed, queue_nodes

# A CONNECT that takes a session over from another node waits for the
# claim's commit and for the other node's answer (up to 8 s when that
# node is gone).
CONNECT_WITHIN = 20.0
# MQTT 5 reason codes (section 2.4).
SESSION_TAKEN_OVER = 0x8E
SERVER_UNAVAILABLE = 0x88


def session_queue(client_id):
    return f"mqtt-session-{client_id}"


def session_client(clients, b, client_id, version=V311):
    """A client (not yet connected) for `client_id`'s persistent session
    on node `b`: clean session 0 (3.1.1), clean start 0 with a session
    expiry (5)."""
    return clients.new(b, client_id=client_id, version=version, **persistent(version))


def connect_ok(c, timeout=CONNECT_WITHIN):
    """Connects `c`; the CONNACK must accept it. Returns the `Connack`."""
    ack = c.connect(timeout=timeout)
    assert ack is not None and ack.reason == 0, f"{c.client_id} refused: {ack} {c.disconnected}"
    return ack


def connect_all(clist, timeout=CONNECT_WITHIN):
    """Sends every client's CONNECT at once (one thread each) and waits
    for each one's CONNACK or close; returns their `Connack`s (None where
    the broker closed without one)."""
    acks = [None] * len(clist)
    errors = []

    def run(i, c):
        try:
            acks[i] = c.connect(timeout=timeout)
        except BaseException as e:  # reported below, in the test's thread
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i, c), daemon=True) for i, c in enumerate(clist)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout + 5)
    assert not errors, errors
    assert not any(t.is_alive() for t in threads), "a CONNECT never returned"
    return acks


def publish_all(clients, b, topic, bodies):
    """An MQTT 5 publisher on node `b` sends `bodies` at QoS 1, one at a
    time; every PUBACK must say 0x00 (routed to a matching subscriber's
    queue, and confirmed by the queue's node)."""
    pub = clients.connect(b, version=V5)
    for body in bodies:
        rc = pub.publish(topic, body, qos=1, timeout=10)
        assert rc == 0, f"PUBACK {rc:#x} for {body!r} on {b.name}"
    return pub


def bound_everywhere(brokers, queue, patterns):
    """Waits until every node lists exactly the `amq.topic` bindings
    `patterns` (AMQP topic patterns: `plant/7/#` is `plant.7.#`) to
    `queue`: a publish on any node then reaches it."""
    expected = sorted(("amq.topic", p) for p in patterns)

    def check():
        seen = {b.name: bindings_to(b, queue) for b in brokers}
        return all(v == expected for v in seen.values()) or seen

    wait_for(f"{queue} bound to {patterns} on every node", check)


def leave_session(clients, brokers, b, client_id, filter_, version=V311, timeout=10):
    """A persistent session of `client_id` on node `b`, subscribed to
    `filter_` at QoS 1, then away (a clean DISCONNECT); returns once every
    node knows its queue's binding."""
    c = session_client(clients, b, client_id, version)
    assert connect_ok(c).session_present is False
    assert c.subscribe(filter_, qos=1, timeout=timeout) == [1]
    c.disconnect()
    pattern = filter_.replace("/", ".").replace("+", "*")
    bound_everywhere(brokers, session_queue(client_id), [pattern])


def queued(b, queue):
    """Messages in `queue` as its own node counts them."""
    status, body, _ = api(b, "GET", f"/api/queues/%2F/{queue}")
    assert status == 200, (status, body)
    return body["messages"]


def gone_everywhere(brokers, queue):
    """Waits until no node knows `queue` (404 from the management API)."""

    def check():
        statuses = {b.name: api(b, "GET", f"/api/queues/%2F/{queue}")[0] for b in brokers}
        return all(s == 404 for s in statuses.values()) or statuses

    wait_for(f"{queue} gone from every node", check)


def replicated_everywhere(brokers, queue):
    """Waits until every node lists `queue` as a durable quorum queue
    with a member on each of the three nodes."""

    def check():
        seen = {}
        for b in brokers:
            status, info, _ = api(b, "GET", f"/api/queues/%2F/{queue}")
            if status != 200:
                return f"{b.name}: {status} {info}"
            seen[b.name] = (info["type"], sorted(info.get("members", [])), info["durable"])
        want = ("quorum", ["junction@n1", "junction@n2", "junction@n3"], True)
        return all(v == want for v in seen.values()) or seen

    wait_for(f"{queue} a quorum queue on every node", check)


def payloads(msgs):
    return sorted(m.payload for m in msgs)


def without_fences(msgs):
    """`msgs` without fence markers: a marker whose PUBACK had not left
    the client when it disconnected comes again after the session moves
    (QoS 1 allows it)."""
    return [m for m in msgs if not m.payload.startswith(b"fence-")]


def bodies(prefix, n):
    return [f"{prefix}{i}".encode() for i in range(n)]


def formed_with(make_broker, tmp_path, mqtt_options):
    """Like test_cluster_topology.formed, with `mqtt_options` lines in
    every node's [mqtt] table."""
    brokers = three_nodes(make_broker, tmp_path, mqtt_options)
    wait_for("the cluster formed", lambda: agreed_leader(brokers, [b.name for b in brokers]))
    return brokers


@pytest.mark.deadline(120)
def test_a_persistent_session_moves_to_another_node_with_its_queued_qos1_messages(
    make_broker, tmp_path, clients
):
    brokers, _ = formed(make_broker, tmp_path)
    n1, n2, n3 = brokers
    queue = session_queue("dev-7")

    # A persistent session on n1, subscribed, then away. Its queue is
    # durable, n1's, and known (with its binding) on every node.
    leave_session(clients, brokers, n1, "dev-7", "plant/7/#")
    wait_for(
        f"{queue} listed everywhere as n1's",
        lambda: all(queue_nodes(b).get(queue) == "junction@n1" for b in brokers)
        or {b.name: queue_nodes(b).get(queue) for b in brokers},
    )

    # 20 QoS 1 messages published on n3 while it is away: queued on n1.
    offline = bodies("m", 20)
    publish_all(clients, n3, "plant/7/temp", offline)
    wait_for("20 queued on n1", lambda: queued(n1, queue) == 20 or queued(n1, queue))

    # Resumed on n2: session present, every queued message once, at QoS 1,
    # without subscribing again.
    c = session_client(clients, n2, "dev-7")
    assert connect_ok(c).session_present is True
    got = c.wait_messages(20, timeout=20)
    assert payloads(got) == sorted(offline)
    assert len(got) == 20
    assert all((m.topic, m.qos) == ("plant/7/temp", 1) for m in got), got

    # Live delivery across nodes: published on n1 (the queue's node),
    # delivered on n2; nothing else comes before the fence.
    live = bodies("live", 5)
    pub = publish_all(clients, n1, "plant/7/temp", live)
    before = fence(pub, c, "plant/7/temp")
    assert payloads(before) == sorted(offline + live)
    assert len(before) == 25

    # A clean session on n2 ends the stored one: no session present, and
    # its queue (n1's) goes from every node with its binding.
    c.disconnect()
    clean = clients.new(n2, client_id="dev-7", version=V311, clean=True)
    assert connect_ok(clean).session_present is False
    clean.disconnect()
    gone_everywhere(brokers, queue)
    assert pub.publish("plant/7/temp", b"nobody", qos=1) == 0x10  # no matching subscribers


@pytest.mark.deadline(120)
def test_a_second_connection_on_another_node_takes_the_client_over(make_broker, tmp_path, clients):
    brokers, _ = formed(make_broker, tmp_path)
    n1, n2, n3 = brokers

    first = clients.new(n1, client_id="dev-8", version=V5, clean=True)
    connect_ok(first)
    # The same client id on n3: the first connection (clean start: no
    # session to hand over) is told it was taken over.
    second = session_client(clients, n3, "dev-8", V5)
    assert connect_ok(second).session_present is False
    gone = first.wait_disconnected(timeout=5)
    assert gone.by_server is True, gone
    assert gone.reason == SESSION_TAKEN_OVER, gone

    # The second stays, subscribes and gets a message published on n2,
    # and publishes itself.
    assert second.subscribe("plant/8/#", qos=1) == [1]
    bound_everywhere(brokers, session_queue("dev-8"), ["plant.8.#"])
    publish_all(clients, n2, "plant/8/temp", [b"from-n2"])
    got = second.wait_messages(1, timeout=10)
    assert [(m.topic, m.payload, m.qos) for m in got] == [("plant/8/temp", b"from-n2", 1)]
    assert second.publish("plant/8/own", b"from-n3", qos=1) == 0
    got = second.wait_messages(2, timeout=10)
    assert [(m.topic, m.payload) for m in got[1:]] == [("plant/8/own", b"from-n3")]
    assert second.disconnected is None


@pytest.mark.deadline(120)
def test_a_session_round_trips_n1_n2_n1(make_broker, tmp_path, clients):
    brokers, _ = formed(make_broker, tmp_path)
    n1, n2, n3 = brokers
    queue = session_queue("dev-10")

    leave_session(clients, brokers, n1, "dev-10", "plant/10/#", V5)

    # Away from n1; back on n2 with what was queued meanwhile.
    first = bodies("a", 5)
    publish_all(clients, n3, "plant/10/a", first)
    c = session_client(clients, n2, "dev-10", V5)
    assert connect_ok(c).session_present is True
    got = c.wait_messages(5, timeout=20)
    assert payloads(got) == sorted(first) and len(got) == 5

    # A second filter, added on n2; then away again.
    assert c.subscribe("plant/8/#", qos=1) == [1]
    bound_everywhere(brokers, queue, ["plant.10.#", "plant.8.#"])
    pub = publish_all(clients, n3, "plant/8/x", [b"live-on-n2"])
    before = fence(pub, c, "plant/10/a")
    assert payloads(before) == sorted(first + [b"live-on-n2"]) and len(before) == 6
    c.disconnect()

    # Queued for both filters while away; back on n1 with both.
    second = bodies("b", 5)
    third = bodies("c", 5)
    publish_all(clients, n2, "plant/10/b", second)
    publish_all(clients, n3, "plant/8/x", third)
    c = session_client(clients, n1, "dev-10", V5)
    assert connect_ok(c).session_present is True
    wait_for(
        "the 10 queued messages on n1",
        lambda: len(without_fences(c.received())) >= 10 or c.received(),
    )
    got = without_fences(c.received())
    assert payloads(got) == sorted(second + third) and len(got) == 10
    assert sorted({m.topic for m in got}) == ["plant/10/b", "plant/8/x"]

    # Both filters still live on n1, from publishers on the other nodes.
    pub = publish_all(clients, n2, "plant/8/y", [b"back-8"])
    publish_all(clients, n3, "plant/10/z", [b"back-10"])
    before = without_fences(fence(pub, c, "plant/8/y"))
    assert payloads(before) == sorted(second + third + [b"back-8", b"back-10"])
    assert len(before) == 12


@pytest.mark.deadline(150)
def test_replicated_sessions_keep_queued_messages_through_kill9_of_the_holding_node(
    make_broker, tmp_path, clients
):
    brokers = formed_with(make_broker, tmp_path, ["replicated_sessions = true"])
    n1, n2, n3 = brokers
    queue = session_queue("dev-9")

    # The first SUBSCRIBE makes the session's queue: a new quorum queue,
    # whose group elects its first leader before the SUBACK.
    leave_session(clients, brokers, n1, "dev-9", "plant/9/#", timeout=15)

    # A quorum queue, with a member on every node.
    replicated_everywhere(brokers, queue)
    leader_everywhere(brokers, queue)

    # 10 QoS 1 messages on n2, each PUBACKed once a majority has it.
    offline = bodies("q", 10)
    publish_all(clients, n2, "plant/9/temp", offline).disconnect()

    # The node that held the session goes (kill -9). The other two elect
    # leaders for the metadata group and the queue among themselves.
    n1.kill9()
    survivors = [n2, n3]
    settled(survivors)
    leader_everywhere(survivors, queue)

    # Resumed on n2: the subscriptions were n1's, which cannot hand them
    # over (session present 0); subscribing again finds the queue and its
    # binding, and every queued message arrives (QoS 1: a copy may come
    # twice).
    c = session_client(clients, n2, "dev-9")
    assert connect_ok(c).session_present is False
    assert c.subscribe("plant/9/#", qos=1, timeout=15) == [1]

    def all_arrived():
        got = payloads(c.received())
        return set(got) == set(offline) or f"{len(got)} received, missing {sorted(set(offline) - set(got))}"

    wait_for("every queued message on n2", all_arrived, timeout=30)
    got = c.received()
    assert set(payloads(got)) == set(offline)
    counts = {p: payloads(got).count(p) for p in offline}
    assert all(n >= 1 for n in counts.values()), counts

    # n1 comes back on its data directory and rejoins; the session stays
    # on n2 and gets what is published on n1.
    n1.restart()
    settled(brokers)
    leader_everywhere(brokers, queue)
    seen = len(got)
    publish_all(clients, n1, "plant/9/temp", [b"after-rejoin"])
    later = c.wait_messages(seen + 1, timeout=20)
    assert b"after-rejoin" in [m.payload for m in later[seen:]]
    assert c.disconnected is None


@pytest.mark.deadline(150)
def test_a_node_cut_off_from_the_majority_refuses_mqtt_connects(proxied_cluster, clients):
    brokers, proxies = proxied_cluster
    _, head = settled(brokers)
    cut = next(b for b in brokers if b is not head)

    # Every link of a follower black-holed: it cannot commit a claim.
    for p in links_of(proxies, cut.name):
        p.blackhole()
    v5 = clients.new(cut, client_id="dev-cut-5", version=V5, clean=True)
    v3 = clients.new(cut, client_id="dev-cut-3", version=V311, clean=True)
    acks = connect_all([v5, v3], timeout=25)
    assert [a.reason if a else None for a in acks] == [SERVER_UNAVAILABLE, SERVER_UNAVAILABLE], (
        acks,
        v5.disconnected,
        v3.disconnected,
    )
    assert [a.session_present for a in acks] == [False, False]
    # The majority side still takes clients.
    connect_ok(clients.new(head, client_id="dev-majority", version=V5))

    # Healed: the same client ids connect on that node.
    for p in links_of(proxies, cut.name):
        p.heal()
    settled(brokers)
    connect_ok(clients.new(cut, client_id="dev-cut-5", version=V5, clean=True))
    connect_ok(clients.new(cut, client_id="dev-cut-3", version=V311, clean=True))


@pytest.mark.deadline(150)
def test_a_clean_start_elsewhere_while_the_holder_is_down_ends_the_old_session(
    make_broker, tmp_path, clients
):
    brokers, _ = formed(make_broker, tmp_path)
    n1, n2, n3 = brokers
    queue = session_queue("dev-11")

    # A persistent session on n1 with three messages queued, then n1 is
    # killed: its session cannot be handed over.
    leave_session(clients, brokers, n1, "dev-11", "plant/11/#")
    publish_all(clients, n3, "plant/11/old", bodies("old", 3)).disconnect()
    n1.kill9()
    survivors = [n2, n3]
    settled(survivors)

    # A clean session on n2: no session present, the old queue goes from
    # the cluster (its node is down), and the new session gets only what
    # is published from now on.
    clean = clients.new(n2, client_id="dev-11", version=V311, clean=True)
    assert connect_ok(clean).session_present is False
    gone_everywhere(survivors, queue)
    assert clean.subscribe("plant/11/#", qos=1) == [1]
    pub = publish_all(clients, n3, "plant/11/new", [b"new"])
    got = clean.wait_messages(1, timeout=10)
    assert [(m.topic, m.payload) for m in got] == [("plant/11/new", b"new")]
    assert fence(pub, clean, "plant/11/new") == got
