"""Consumers across the nodes of a cluster (docs/cluster.md "Consumers
across nodes"), with three real `junction` processes: a client consuming
on one node from a durable queue another node holds gets that queue's
messages, in order, within its prefetch, from AMQP (pika: basic.consume,
basic.get, acks, requeues) and STOMP (stomp.py); the queue's node counts
it as a consumer and refuses it as it would a local one (an exclusive
consumer holds the queue); what a consumer leaves unacknowledged goes
back when its connection closes, when its node is killed (kill -9: the
holder's lease lapses) or cut off from the queue's node (every link
between the two black-holed through fault_proxy.py), and the consumer is
cancelled (basic.cancel to the client) when the queue's node goes away or
cannot be reached."""

import time

import pika
import pika.exceptions
import pytest

from stomp_support import Client as StompClient
from test_cluster import proxied_cluster, settled, wait_for  # noqa: F401 (a fixture)
from test_cluster_topology import amqp, formed


def queue_on(b, name, n=0):
    """Declares durable `name` on `b` and publishes `n` persistent
    messages `m0`.. there with confirms; returns once the other nodes
    know it."""
    conn = amqp(b)
    ch = conn.channel()
    ch.queue_declare(name, durable=True)
    ch.confirm_delivery()
    for i in range(n):
        ch.basic_publish("", name, f"m{i}".encode(), pika.BasicProperties(delivery_mode=2))
    conn.close()


def counts(b, name):
    """(ready, consumers) of `name` as node `b` tells them (its own, or
    asked of the queue's node)."""
    conn = amqp(b)
    try:
        m = conn.channel().queue_declare(name, passive=True).method
        return m.message_count, m.consumer_count
    finally:
        conn.close()


def known_on(brokers, name):
    """Waits until a passive declare of `name` succeeds on every broker."""

    def everywhere():
        for b in brokers:
            conn = amqp(b)
            try:
                conn.channel().queue_declare(name, passive=True)
            except pika.exceptions.ChannelClosedByBroker as e:
                return f"{b.name}: {e}"
            finally:
                if conn.is_open:
                    conn.close()
        return True

    wait_for(f"{name} known everywhere", everywhere)


def with_queue(make_broker, tmp_path, name, n=0):
    """Three formed nodes, with durable `name` on n1 holding `n`
    messages, known on every node."""
    brokers, _ = formed(make_broker, tmp_path)
    queue_on(brokers[0], name, n)
    known_on(brokers, name)
    return brokers


def cancels_of(conn, cancelled, timeout):
    """Runs pika's loop until `cancelled` (filled by an on-cancel
    callback) is not empty, at most `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not cancelled and time.monotonic() < deadline:
        conn.process_data_events(0.1)
    return cancelled


def take(conn, got, n, timeout=10.0):
    """Runs pika's loop until `got` (from `collect`) holds `n`
    deliveries; returns the first `n`."""
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        conn.process_data_events(0.05)
    assert len(got) >= n, f"{len(got)} of {n} deliveries"
    return got[:n]


def collect(ch, queue, prefetch):
    """Consumes `queue` on `ch` with `prefetch`; returns the list the
    deliveries, (method, body), are collected into."""
    got = []
    ch.basic_qos(prefetch_count=prefetch)
    ch.basic_consume(queue, lambda c, m, p, body: got.append((m, body)))
    return got


@pytest.mark.deadline(240)
def test_amqp_and_stomp_consumers_on_other_nodes_take_a_queues_messages(make_broker, tmp_path):
    n1, n2, n3 = with_queue(make_broker, tmp_path, "jobs", 30)

    # pika on n2, prefetch 10: ten come, in order, and no more until acks.
    conn = amqp(n2)
    ch = conn.channel()
    got = collect(ch, "jobs", 10)
    first = take(conn, got, 10)
    assert [b for _, b in first] == [f"m{i}".encode() for i in range(10)]
    assert not any(m.redelivered for m, _ in first)
    conn.process_data_events(0.5)
    assert len(got) == 10, "deliveries past the prefetch"
    # n1 counts the consumer and the ten it holds; a passive declare on
    # another node tells n1's counts.
    assert counts(n1, "jobs") == (20, 1)
    assert counts(n3, "jobs") == (20, 1)

    # Ack five (one multiple ack), requeue one: it comes back redelivered.
    ch.basic_ack(first[4][0].delivery_tag, multiple=True)
    ch.basic_nack(first[5][0].delivery_tag, requeue=True)
    more = take(conn, got, 16)[10:]
    bodies = [b for _, b in more]
    assert b"m5" in bodies and [m.redelivered for m, b in more if b == b"m5"] == [True]
    assert bodies[0] in (b"m5", b"m10")

    # The connection closes with deliveries unacked: all go back.
    conn.close()
    wait_for("n1 has 25 ready and no consumer", lambda: counts(n1, "jobs") == (25, 0) or counts(n1, "jobs"))

    # STOMP on n3, client-individual acks, prefetch 25: all 25, each acked
    # with a receipt.
    stomp = StompClient(n3)
    stomp.connected()
    # (/queue/ declares the queue as stomp.py's users expect: durable,
    # equivalent to n1's declaration, so the subscription takes n1's.)
    stomp.subscribe("/queue/jobs", ack="client-individual", headers={"prefetch-count": "25"})
    frames = stomp.exactly(25)
    assert sorted(int(m.body[1:]) for m in frames) == list(range(5, 30))
    for m in frames:
        stomp.ack(m)
    stomp.close()
    wait_for("n1's queue empty", lambda: counts(n1, "jobs") == (0, 0) or counts(n1, "jobs"))

    # A channel-wide prefetch raised after basic.consume reaches n1: one
    # delivery, then three.
    queue_on(n1, "jobs", 5)
    conn = amqp(n2)
    ch = conn.channel()
    ch.basic_qos(prefetch_count=1, global_qos=True)
    got = []
    ch.basic_consume("jobs", lambda c, m, p, body: got.append((m, body)))
    take(conn, got, 1)
    conn.process_data_events(0.5)
    assert len(got) == 1, "deliveries past the channel's prefetch"
    ch.basic_qos(prefetch_count=3, global_qos=True)
    assert [b for _, b in take(conn, got, 3)] == [b"m0", b"m1", b"m2"]
    conn.process_data_events(0.5)
    assert len(got) == 3, "deliveries past the raised prefetch"
    conn.close()
    wait_for("all five back on n1", lambda: counts(n1, "jobs") == (5, 0) or counts(n1, "jobs"))
    drain_all = amqp(n1)
    drain_all.channel().queue_purge("jobs")
    drain_all.close()

    # basic.get from n2: the head, then empty.
    queue_on(n1, "jobs", 2)
    conn = amqp(n2)
    ch = conn.channel()
    method, _, body = ch.basic_get("jobs")
    assert (body, method.message_count) == (b"m0", 1)
    ch.basic_ack(method.delivery_tag)
    method, _, body = ch.basic_get("jobs", auto_ack=True)
    assert body == b"m1"
    assert ch.basic_get("jobs") == (None, None, None)
    conn.close()
    wait_for("m0's ack on n1", lambda: counts(n1, "jobs") == (0, 0) or counts(n1, "jobs"))


@pytest.mark.deadline(240)
def test_a_remote_consumer_is_refused_as_a_local_one_and_cancelled_when_the_queue_goes(make_broker, tmp_path):
    n1, n2, n3 = with_queue(make_broker, tmp_path, "solo")

    # An exclusive consumer on n1 holds the queue: n2's consumer gets 403.
    owner = amqp(n1)
    och = owner.channel()
    och.basic_consume("solo", lambda *a: None, exclusive=True)
    conn = amqp(n2)
    ch = conn.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
        ch.basic_consume("solo", lambda *a: None)
        conn.process_data_events(1)
    assert refused.value.reply_code == 403
    conn.close()
    owner.close()

    # A consumer on n3 of n1's queue; the queue is deleted on n2: the
    # consumer gets basic.cancel (consumer_cancel_notify).
    conn = amqp(n3)
    ch = conn.channel()
    cancelled = []
    ch.add_on_cancel_callback(lambda frame: cancelled.append(frame.method.consumer_tag))
    tag = ch.basic_consume("solo", lambda *a: None)
    admin = amqp(n2)
    admin.channel().queue_delete("solo")
    admin.close()
    assert cancels_of(conn, cancelled, 20) == [tag]
    conn.close()


@pytest.mark.deadline(300)
def test_what_a_killed_nodes_consumer_held_goes_back_and_a_dead_queue_node_cancels(make_broker, tmp_path):
    n1, n2, n3 = with_queue(make_broker, tmp_path, "held", 10)

    # A consumer on n2 holds five unacked; n2 is killed. n1 gives them
    # back once n2's lease lapses (docs/cluster.md: 30 s).
    conn = amqp(n2)
    ch = conn.channel()
    take(conn, collect(ch, "held", 5), 5)
    assert counts(n1, "held") == (5, 1)
    n2.kill9()
    started = time.monotonic()
    wait_for("the five back on n1", lambda: counts(n1, "held") == (10, 0) or counts(n1, "held"), timeout=60)
    lapsed = time.monotonic() - started
    assert lapsed < 45, lapsed

    # A consumer on n3 of n1's queue is cancelled when n1 is killed.
    conn = amqp(n3)
    ch = conn.channel()
    cancelled = []
    ch.add_on_cancel_callback(lambda frame: cancelled.append(frame.method.consumer_tag))
    take(conn, collect(ch, "held", 3), 3)
    n1.kill9()
    assert len(cancels_of(conn, cancelled, 40)) == 1
    conn.close()

    # n1 back: the queue kept all ten (none was acked).
    n1.start()
    wait_for("n1's queue back", lambda: counts(n1, "held") == (10, 0) or counts(n1, "held"), timeout=60)


@pytest.mark.deadline(300)
def test_a_consumer_cut_off_from_its_queues_node_is_cancelled_and_its_messages_go_back(proxied_cluster):
    brokers, proxies = proxied_cluster
    settled(brokers)
    n1, n2, _ = brokers
    queue_on(n1, "far", 10)
    known_on(brokers, "far")
    conn = amqp(n2)
    ch = conn.channel()
    cancelled = []
    ch.add_on_cancel_callback(lambda frame: cancelled.append(frame.method.consumer_tag))
    held = take(conn, collect(ch, "far", 5), 5)
    assert counts(n1, "far") == (5, 1)

    # n1 and n2 cannot hear each other (n3 hears both): n2's consumer is
    # cancelled (its fetches fail), and n1 gives back what it held once
    # n2's lease lapses.
    proxies["n1", "n2"].blackhole()
    proxies["n2", "n1"].blackhole()
    started = time.monotonic()
    assert len(cancels_of(conn, cancelled, 120)) == 1
    wait_for("the five back on n1", lambda: counts(n1, "far") == (10, 0) or counts(n1, "far"), timeout=90)
    lapsed = time.monotonic() - started
    # Acks of what the cancelled consumer held are no error (the
    # channel stays open) and change nothing on n1.
    ch.basic_ack(held[-1][0].delivery_tag, multiple=True)
    conn.process_data_events(0.5)
    assert ch.is_open
    conn.close()

    # Healed: a consumer on n2 gets all ten, the five flagged redelivered.
    proxies["n1", "n2"].heal()
    proxies["n2", "n1"].heal()
    settled(brokers)
    conn = amqp(n2)
    ch = conn.channel()
    got = take(conn, collect(ch, "far", 10), 10, timeout=30)
    assert sorted(int(b[1:]) for _, b in got) == list(range(10))
    assert sum(m.redelivered for m, _ in got) == 5
    for m, _ in got:
        ch.basic_ack(m.delivery_tag)
    conn.close()
    wait_for("n1's queue empty", lambda: counts(n1, "far") == (0, 0) or counts(n1, "far"))
    print(f"messages back on n1 {lapsed:.1f} s after the partition")
