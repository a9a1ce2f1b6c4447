"""The fault campaign (docs/cluster.md "Failure handling"): three real
`junction` processes, a replicated (quorum) queue, and publishers on every
node at once, AMQP (pika, publisher confirms), MQTT 5 (paho, QoS 1) and
STOMP (stomp.py, receipts), while the test hits the cluster with one kind
of fault twenty times, at random moments and for random lengths:

- kill -9 of the queue's leader, then its restart;
- SIGSTOP of a random node, then SIGCONT;
- every peer link of a random node black-holed (through fault_proxy.py),
  then healed;
- a rolling restart: each node stopped and started again in turn.

Publishers reconnect (to the same node) whenever their connection fails.
Afterwards a checker reads the queue back: every confirmed message is
there, nothing is there that no publisher sent (no phantoms), and the
duplicates are counted (a publisher never resends here, so none are
expected; the count is reported with the rest on stdout)."""

import os
import random
import signal
import threading
import time

import pika
import pika.exceptions
import pytest

from mqtt_support import V5
from mqtt_support import Client as MqttClient
from stomp_support import Client as StompClient
from test_cluster import proxied_cluster, settled  # noqa: F401 (a fixture)
from test_cluster_quorum import declare_quorum, leader_everywhere, queue_info
from test_cluster_topology import amqp, formed

QUEUE = "campaign"
ROUNDS = 20
PERSISTENT = pika.BasicProperties(delivery_mode=2)


class Publisher(threading.Thread):
    """Publishes `<proto>-<node>-<n>` to the campaign queue on node `b`,
    one at a time, each waiting for its confirm, until stopped; keeps
    what it sent and what was confirmed."""

    def __init__(self, proto, b, stop):
        super().__init__(daemon=True)
        self.proto, self.b, self.stop = proto, b, stop
        self.sent, self.confirmed = set(), set()
        self.failures = 0
        self.n = 0

    def body(self):
        self.n += 1
        body = f"{self.proto}-{self.b.name}-{self.n}".encode()
        self.sent.add(body)
        return body

    def run(self):
        while not self.stop.is_set():
            try:
                getattr(self, f"run_{self.proto}")()
            except BaseException:  # noqa: BLE001 (pytest.fail raises BaseException)
                self.failures += 1
                time.sleep(0.2)

    def run_amqp(self):
        conn = pika.BlockingConnection(self.b.params(socket_timeout=2, blocked_connection_timeout=15))
        try:
            ch = conn.channel()
            ch.confirm_delivery()
            while not self.stop.is_set():
                body = self.body()
                try:
                    ch.basic_publish("", QUEUE, body, PERSISTENT, mandatory=True)
                except (pika.exceptions.NackError, pika.exceptions.UnroutableError):
                    continue
                self.confirmed.add(body)
                time.sleep(0.005)
        finally:
            if conn.is_open:
                try:
                    conn.close()
                except Exception:  # noqa: BLE001
                    pass

    def run_mqtt(self):
        c = MqttClient(self.b, version=V5)
        try:
            c.connect(timeout=5)
            while not self.stop.is_set():
                body = self.body()
                if c.publish(f"fault/{self.b.name}", body, qos=1, timeout=15) == 0:
                    self.confirmed.add(body)
                time.sleep(0.005)
        finally:
            c.close()

    def run_stomp(self):
        c = StompClient(self.b)
        try:
            c.connected(timeout=5)
            # A new connection every 100 sends keeps stomp.py's frame list
            # (scanned per receipt) short.
            for _ in range(100):
                if self.stop.is_set():
                    break
                body = self.body()
                c.send(f"/amq/queue/{QUEUE}", body, headers={"persistent": "true"}, receipt=True)
                self.confirmed.add(body)
                time.sleep(0.005)
        finally:
            c.close()


def campaign(brokers, fault, rounds=ROUNDS, seed=None):
    """Runs publishers on every node while `fault(round, rng)` runs
    `rounds` times, then checks the queue; returns the counts."""
    rng = random.Random(seed)
    declare_quorum(brokers[0], QUEUE, bind_topic="fault.*")
    leader_everywhere(brokers, QUEUE)
    stop = threading.Event()
    publishers = [Publisher(p, b, stop) for b in brokers for p in ("amqp", "mqtt", "stomp")]
    for p in publishers:
        p.start()
    try:
        time.sleep(1.0)
        for r in range(rounds):
            fault(r, rng)
            leader_everywhere(brokers, QUEUE)
            time.sleep(rng.uniform(0.2, 1.0))
    finally:
        stop.set()
        for p in publishers:
            p.join(timeout=30)
    assert not any(p.is_alive() for p in publishers), "a publisher did not stop"
    leader_everywhere(brokers, QUEUE)
    received = drain(brokers[rng.randrange(len(brokers))])
    sent = set().union(*(p.sent for p in publishers))
    confirmed = set().union(*(p.confirmed for p in publishers))
    seen = set(received)
    counts = {
        "rounds": rounds,
        "sent": len(sent),
        "confirmed": len(confirmed),
        "received": len(received),
        "duplicates": len(received) - len(seen),
        "lost": len(confirmed - seen),
        "phantoms": len(seen - sent),
        "unconfirmed_present": len((seen & sent) - confirmed),
        "reconnects": sum(p.failures for p in publishers),
    }
    print(f"\ncampaign {fault.__name__}: {counts}")
    if counts["lost"]:
        print("lost:", sorted(confirmed - seen)[:20])
    assert counts["lost"] == 0, sorted(confirmed - seen)[:20]
    assert counts["phantoms"] == 0, sorted(seen - sent)[:20]
    # Every kind of publisher on every node got through the faults.
    for p in publishers:
        assert len(p.confirmed) > 0, f"{p.proto} on {p.b.name} confirmed nothing"
    return counts


def drain(b, quiet=2.0, timeout=120.0):
    """Every message of the campaign queue, consumed (and acked) on `b`
    until none has come for `quiet` seconds and the queue is empty."""
    conn = amqp(b)
    ch = conn.channel()
    ch.basic_qos(prefetch_count=500)
    got = []
    last = [time.monotonic()]

    def on(c, m, p, body):
        got.append(body)
        last[0] = time.monotonic()
        c.basic_ack(m.delivery_tag)

    ch.basic_consume(QUEUE, on)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        conn.process_data_events(0.1)
        if time.monotonic() - last[0] > quiet:
            # Nothing ready or held anywhere: the leader's own count.
            info = queue_info(b, QUEUE)
            if info.get("messages") == 0:
                break
    conn.close()
    return got


def leader_node(brokers):
    return leader_everywhere(brokers, QUEUE)


def victim_of(brokers, r, rng):
    """The node a round hits: the queue's leader every other round, a
    random node otherwise."""
    return brokers[rng.randrange(len(brokers))] if r % 2 else leader_node(brokers)


@pytest.mark.deadline(900)
def test_no_confirmed_message_is_lost_when_the_leader_is_killed_twenty_times(make_broker, tmp_path):
    brokers, _ = formed(make_broker, tmp_path)

    def kill9_leader(r, rng):
        victim = leader_node(brokers)
        time.sleep(rng.uniform(0.0, 1.0))
        victim.kill9()
        time.sleep(rng.uniform(0.3, 2.0))
        victim.start()

    campaign(brokers, kill9_leader, seed=1)


@pytest.mark.deadline(900)
def test_no_confirmed_message_is_lost_when_a_node_is_paused_twenty_times(make_broker, tmp_path):
    brokers, _ = formed(make_broker, tmp_path)

    def pause_node(r, rng):
        victim = victim_of(brokers, r, rng)
        os.kill(victim.proc.pid, signal.SIGSTOP)
        try:
            time.sleep(rng.uniform(0.5, 3.0))
        finally:
            os.kill(victim.proc.pid, signal.SIGCONT)

    campaign(brokers, pause_node, seed=2)


@pytest.mark.deadline(900)
def test_no_confirmed_message_is_lost_when_a_node_is_partitioned_twenty_times(proxied_cluster):
    brokers, proxies = proxied_cluster
    settled(brokers)

    def partition_node(r, rng):
        victim = victim_of(brokers, r, rng)
        links = [p for (x, y), p in proxies.items() if victim.name in (x, y)]
        for p in links:
            p.blackhole()
        try:
            time.sleep(rng.uniform(1.0, 3.0))
        finally:
            for p in links:
                p.heal()

    campaign(brokers, partition_node, seed=3)


@pytest.mark.deadline(900)
def test_no_confirmed_message_is_lost_through_twenty_rolling_restarts(make_broker, tmp_path):
    brokers, _ = formed(make_broker, tmp_path)

    def rolling_restart(r, rng):
        order = list(brokers)
        rng.shuffle(order)
        for b in order:
            b.restart()
            leader_everywhere(brokers, QUEUE)
            time.sleep(rng.uniform(0.0, 0.5))

    campaign(brokers, rolling_restart, seed=4)
