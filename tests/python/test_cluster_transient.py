"""Transient and exclusive queues across the nodes of a cluster
(docs/cluster.md "Transient queues across nodes"), with three real
`junction` processes: such a queue and its bindings stay on its node, and
its node publishes a route in the metadata group, so a publish on any
node reaches it. The IoT round trip: a device (paho, MQTT clean session)
on n1 publishes a reading that a back-end service (pika, an exclusive
server-named queue) on n2 consumes, and the service's reply reaches the
device. Each queue gets one copy however many nodes and queues a
publish matches; the routes' stand-in bindings are not listed; a route
goes once nothing needs it (MQTT 5 PUBACK 0x10, no matching subscribers,
from another node); a node that is killed does not make publishers on the
others be refused (pika confirms are acks), and its routes go when it
returns."""

import time

import pika
import pika.exceptions
import pytest

from admin_support import api
from mqtt_support import V5, V311, clients  # noqa: F401 (a fixture)
from mqtt_support import fence, fence_all
from test_cluster import settled, wait_for
from test_cluster_topology import amqp, formed

NO_MATCHING_SUBSCRIBERS = 0x10


def exclusive_service(b, pattern):
    """A pika connection on node `b` with an exclusive server-named queue
    bound to `amq.topic` with `pattern`; returns (connection, channel,
    queue)."""
    conn = amqp(b)
    ch = conn.channel()
    queue = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(queue, "amq.topic", routing_key=pattern)
    return conn, ch, queue


def get_all(ch, queue, n, timeout=10.0):
    """Gets (and acks) messages of `queue` until `n` came; then checks for
    half a second that no more come. Returns (routing key, body) pairs."""
    got = []

    def more():
        while True:
            method, _, body = ch.basic_get(queue, auto_ack=True)
            if method is None:
                break
            got.append((method.routing_key, body))
        return len(got) >= n or f"{len(got)} of {n}: {got}"

    wait_for(f"{n} messages in {queue}", more, timeout)
    time.sleep(0.5)
    method, _, body = ch.basic_get(queue, auto_ack=True)
    assert method is None, f"one more than {n}: {body!r}"
    return got


def routes_gone(clients, b, topic):
    """Waits until a QoS 1 publish on `topic` at node `b` finds no queue
    anywhere (PUBACK 0x10)."""
    pub = clients.connect(b, version=V5)

    def check():
        rc = pub.publish(topic, b"probe", qos=1, timeout=10)
        return rc == NO_MATCHING_SUBSCRIBERS or f"PUBACK {rc:#x}"

    wait_for(f"no route left for {topic} seen from {b.name}", check)


@pytest.mark.deadline(180)
def test_a_device_and_a_service_on_different_nodes_talk_both_ways(make_broker, tmp_path, clients):
    brokers, _ = formed(make_broker, tmp_path)
    n1, n2, n3 = brokers

    # The service on n2: an exclusive queue for every plant's readings.
    conn, ch, queue = exclusive_service(n2, "plant.*.temp")
    # The device on n1: a clean session subscribed to its replies.
    device = clients.connect(n1, client_id="dev-7", version=V311, clean=True)
    assert device.subscribe("plant/7/reply", qos=1) == [1]

    # A reading published on n1 reaches the service's queue on n2 once;
    # one from n3 too.
    assert device.publish("plant/7/temp", b"21.5", qos=1) == 0
    other = clients.connect(n3, version=V5)
    assert other.publish("plant/9/temp", b"19.0", qos=1) == 0
    got = get_all(ch, queue, 2)
    assert sorted(got) == [("plant.7.temp", b"21.5"), ("plant.9.temp", b"19.0")]

    # The service's reply, published on n2 with a confirm, reaches the
    # device's session on n1, once.
    ch.confirm_delivery()
    ch.basic_publish("amq.topic", "plant.7.reply", b"ack 21.5", mandatory=True)
    msgs = device.wait_messages(1, timeout=10)
    assert [(m.topic, m.payload) for m in msgs] == [("plant/7/reply", b"ack 21.5")]
    before = fence(other, device, "plant/7/reply")
    assert [m.payload for m in before] == [b"ack 21.5"]

    # The stand-in bindings are not listed on any node.
    for b in brokers:
        status, body, _ = api(b, "GET", "/api/bindings/%2F")
        assert status == 200, (status, body)
        assert not [x for x in body if "amq.junction" in x["destination"]], body
    conn.close()


@pytest.mark.deadline(180)
def test_each_queue_gets_one_copy_whatever_matches_where(make_broker, tmp_path, clients):
    brokers, _ = formed(make_broker, tmp_path)
    n1, n2, n3 = brokers

    # On n1: a durable shared queue, an exclusive queue and an MQTT clean
    # session, all matching `grid/#`; on n2: another clean session; on
    # n3 (the publisher's node) an exclusive queue.
    c1 = amqp(n1)
    ch1 = c1.channel()
    ch1.queue_declare("grid-durable", durable=True)
    ch1.queue_bind("grid-durable", "amq.topic", routing_key="grid.#")
    ch1.queue_bind("grid-durable", "amq.topic", routing_key="grid.a.*")
    ex1 = ch1.queue_declare("", exclusive=True).method.queue
    ch1.queue_bind(ex1, "amq.topic", routing_key="grid.#")
    ch1.queue_bind(ex1, "amq.topic", routing_key="grid.a.*")
    s1 = clients.connect(n1, client_id="grid-s1", version=V5, clean=True)
    assert s1.subscribe("grid/#", qos=1) == [1]
    s2 = clients.connect(n2, client_id="grid-s2", version=V5, clean=True)
    assert s2.subscribe("grid/#", qos=1) == [1]
    c3, ch3, ex3 = exclusive_service(n3, "grid.#")

    pub = clients.connect(n3, version=V5)
    for i in range(10):
        assert pub.publish("grid/a/b", f"g{i}".encode(), qos=1) == 0
    want = [("grid.a.b", f"g{i}".encode()) for i in range(10)]
    assert sorted(get_all(ch1, ex1, 10)) == sorted(want)
    assert sorted(get_all(ch3, ex3, 10)) == sorted(want)
    assert sorted(get_all(ch1, "grid-durable", 10)) == sorted(want)
    for s, got in zip((s1, s2), fence_all(pub, [s1, s2], "grid/a/b")):
        assert sorted(m.payload for m in got) == sorted(b for _, b in want), (s.client_id, got)
    c1.close()
    c3.close()


@pytest.mark.deadline(180)
def test_a_route_goes_when_nothing_needs_it(make_broker, tmp_path, clients):
    brokers, _ = formed(make_broker, tmp_path)
    n1, n2, n3 = brokers

    sub = clients.connect(n2, client_id="lone", version=V5, clean=True)
    assert sub.subscribe("lone/#", qos=1) == [1]
    pub = clients.connect(n1, version=V5)
    assert pub.publish("lone/x", b"one", qos=1) == 0
    assert [m.payload for m in sub.wait_messages(1, timeout=10)] == [b"one"]

    # Unsubscribed: the route goes, seen from both other nodes.
    assert sub.unsubscribe("lone/#") is not None
    routes_gone(clients, n1, "lone/x")
    routes_gone(clients, n3, "lone/x")

    # Subscribed again, then the connection goes (its queue with it).
    assert sub.subscribe("lone/#", qos=1) == [1]
    assert pub.publish("lone/x", b"two", qos=1) == 0
    assert [m.payload for m in sub.wait_messages(2, timeout=10)][1:] == [b"two"]
    sub.disconnect()
    routes_gone(clients, n1, "lone/x")


@pytest.mark.deadline(240)
def test_a_killed_nodes_routes_refuse_nobody_and_go_when_it_returns(make_broker, tmp_path, clients):
    brokers, _ = formed(make_broker, tmp_path)
    n1, n2, n3 = brokers

    # A clean session on n3 and a durable queue on n2, both for `farm/#`.
    lost = clients.connect(n3, client_id="farm-sub", version=V5, clean=True)
    assert lost.subscribe("farm/#", qos=1) == [1]
    conn = amqp(n2)
    ch = conn.channel()
    ch.queue_declare("farm-log", durable=True)
    ch.queue_bind("farm-log", "amq.topic", routing_key="farm.#")
    conn.close()

    # n3 is killed; publishes on n1 with confirms are all acked (pika
    # raises on a nack), and the durable queue has each once.
    n3.kill9()
    settled([n1, n2])
    conn = amqp(n1)
    ch = conn.channel()
    ch.confirm_delivery()
    for i in range(20):
        ch.basic_publish(
            "amq.topic",
            "farm.field",
            f"f{i}".encode(),
            pika.BasicProperties(delivery_mode=2),
            mandatory=True,
        )
    conn.close()
    conn = amqp(n2)
    got = get_all(conn.channel(), "farm-log", 20)
    assert sorted(b for _, b in got) == sorted(f"f{i}".encode() for i in range(20))
    conn.close()

    # n3 returns without the session: its route goes, so a publish on
    # n1 for a topic only that session matched finds nobody. (The durable
    # queue's binding is `farm.#`: unbind it first.)
    conn = amqp(n1)
    conn.channel().queue_unbind("farm-log", "amq.topic", routing_key="farm.#")
    conn.close()
    n3.restart()
    settled(brokers)
    routes_gone(clients, n1, "farm/field")


@pytest.mark.deadline(180)
def test_an_rpc_reply_by_queue_name_reaches_an_exclusive_queue_on_another_node(make_broker, tmp_path):
    brokers, _ = formed(make_broker, tmp_path)
    n1, n2, n3 = brokers

    # The service's durable request queue lives on n2; the client on n1
    # waits on an exclusive server-named reply queue.
    conn = amqp(n2)
    conn.channel().queue_declare("rpc-requests", durable=True)
    conn.close()
    client = amqp(n1)
    cch = client.channel()
    reply_to = cch.queue_declare("", exclusive=True).method.queue
    cch.confirm_delivery()
    cch.basic_publish(
        "",
        "rpc-requests",
        b"2+2",
        pika.BasicProperties(reply_to=reply_to, correlation_id="c-1"),
        mandatory=True,
    )

    # The service consumes on n3 and answers through the default exchange
    # with the reply queue's name, with a confirm (an ack: n1 took it).
    service = amqp(n3)
    sch = service.channel()
    sch.confirm_delivery()

    def request():
        method, props, body = sch.basic_get("rpc-requests", auto_ack=True)
        return (method is not None and (props.reply_to, props.correlation_id, body)) or "no request yet"

    got = {}

    def take():
        r = request()
        if isinstance(r, tuple):
            got["r"] = r
            return True
        return r

    wait_for("the request on n3", take)
    assert got["r"] == (reply_to, "c-1", b"2+2")
    sch.basic_publish("", reply_to, b"4", pika.BasicProperties(correlation_id="c-1"), mandatory=True)
    (reply,) = [(r, b) for r, b in get_all(cch, reply_to, 1)]
    assert reply == (reply_to, b"4")

    # Gone with its connection: a reply by name is then unroutable (the
    # mandatory publish comes back) once the route is removed; until then
    # n1 refuses it (a nack: the queue is not there).
    client.close()

    def unroutable():
        try:
            sch.basic_publish("", reply_to, b"late", mandatory=True)
        except pika.exceptions.UnroutableError:
            return True
        except pika.exceptions.NackError:
            return "refused by n1 (the route not removed yet)"
        return "still routed and taken"

    wait_for("the reply queue's route gone", unroutable)
    service.close()
