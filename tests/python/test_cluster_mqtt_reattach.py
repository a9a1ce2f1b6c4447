"""An MQTT client that stays connected through the loss of its session
queue's quorum leader (docs/cluster.md "MQTT sessions across nodes", "A
consumer that ends while its queue stays", and "Replicated (quorum)
queues"), with three real `junction` processes and paho-mqtt (3.1.1 and
5). With `[mqtt] replicated_sessions = true` a persistent session's queue
`mqtt-session-<client id>` is a quorum queue; the client is connected to
a node that does not lead that queue, so its consumer is attached to the
leader across a link. kill -9 of the leader ends that consumer while the
queue stays: the client's connection makes it again on the new leader
(one try a second, at most five, the connection served meanwhile), so
every QoS 1 message published on a survivor after the kill reaches the
client (at least once: what was delivered before may come again), the
client is never disconnected and its own QoS 1 publishes are acknowledged
meanwhile, and once the killed node has rejoined a message published on
it reaches the client too. The client is on each of the two nodes that
do not lead the queue in turn, so the new leader is sometimes its own
node (the consumer made again is local) and sometimes the third (across
a link again); which one the election picks is not controlled."""

import threading
import time

import pytest

from mqtt_support import V5, V311, VERSION_NAMES, clients, fence  # noqa: F401 (a fixture)
from test_cluster import settled, wait_for
from test_cluster_mqtt_sessions import (
    bodies,
    bound_everywhere,
    connect_ok,
    formed_with,
    payloads,
    publish_all,
    queued,
    replicated_everywhere,
    session_client,
    session_queue,
    without_fences,
)
from test_cluster_quorum import leader_everywhere

N = 30
TOPIC = "plant/12/temp"
FILTER = "plant/12/#"
PROBE_TOPIC = "probe/12"


class Probe:
    """Publishes QoS 1 from client `c` to `PROBE_TOPIC` (nobody
    subscribes to it) every `every` seconds on a thread of its own, and
    records how long each PUBACK took: its connection is served while
    its consumer is being made again. `stop()` returns the latencies,
    and fails the test when a probe was refused or not acknowledged
    within `timeout`."""

    def __init__(self, c, every=0.2, timeout=10.0):
        self.c, self.every, self.timeout = c, every, timeout
        self.latencies, self.errors = [], []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.done.is_set():
            started = time.monotonic()
            try:
                rc = self.c.publish(PROBE_TOPIC, b"probe", qos=1, timeout=self.timeout)
            except BaseException as e:  # reported by stop(), in the test's thread
                self.errors.append(repr(e))
                return
            # MQTT 5: 0x10, no matching subscribers; MQTT 3.1.1: 0.
            if rc not in (0, 0x10):
                self.errors.append(f"PUBACK {rc:#x}")
            self.latencies.append(time.monotonic() - started)
            self.done.wait(self.every)

    def stop(self):
        self.done.set()
        self.thread.join(self.timeout + 5)
        assert not self.thread.is_alive(), "a probe never returned"
        assert not self.errors, self.errors
        assert self.latencies, "no probe"
        return self.latencies


def arrived(c, expected):
    """A `wait_for` check: every payload of `expected` reached `c`."""

    def check():
        if c.disconnected is not None:
            return f"{c.client_id} disconnected: {c.disconnected}"
        got = set(payloads(c.received()))
        missing = sorted(set(expected) - got)
        return not missing or f"{len(missing)} of {len(expected)} missing: {missing}"

    return check


@pytest.mark.deadline(180)
@pytest.mark.parametrize("home_index", [0, 1], ids=["home-first", "home-second"])
@pytest.mark.parametrize("version", [V311, V5], ids=lambda v: VERSION_NAMES[v])
def test_a_connected_client_keeps_its_qos1_messages_through_kill9_of_its_queues_leader(
    make_broker, tmp_path, clients, version, home_index
):
    brokers = formed_with(make_broker, tmp_path, ["replicated_sessions = true"])
    client_id = f"reattach-{VERSION_NAMES[version]}"
    queue = session_queue(client_id)

    # A persistent session on n1 subscribes: its queue is a new quorum
    # queue, with a member on every node and one leader.
    x = session_client(clients, brokers[0], client_id, version)
    assert connect_ok(x).session_present is False
    assert x.subscribe(FILTER, qos=1, timeout=15) == [1]
    bound_everywhere(brokers, queue, ["plant.12.#"])
    replicated_everywhere(brokers, queue)
    leader = leader_everywhere(brokers, queue)

    # The client must be on a node that does not lead its queue (the
    # first or the second of those two, in node order): elsewhere, the
    # session moves there (a clean DISCONNECT, then a CONNECT there, which
    # is handed the session with its subscription).
    others = [b for b in brokers if b is not leader]
    home, third = others[home_index], others[1 - home_index]
    if x.broker is not home:
        x.disconnect()
        x = session_client(clients, home, client_id, version)
        assert connect_ok(x).session_present is True
    assert len({leader.name, home.name, third.name}) == 3

    # Live end to end from the third node, then N messages from there,
    # each once (no fault yet).
    pub = publish_all(clients, third, TOPIC, [])
    assert fence(pub, x, TOPIC) == []
    before = bodies("before-", N)
    publish_all(clients, third, TOPIC, before)
    wait_for(f"the first {N} on {home.name}", arrived(x, before))
    got = without_fences(fence(pub, x, TOPIC))
    assert payloads(got) == sorted(before), got
    assert all((m.topic, m.qos) == (TOPIC, 1) for m in got), got
    # Every one of them settled on the leader.
    wait_for(
        f"{queue} empty on {leader.name}",
        lambda: queued(leader, queue) == 0 or queued(leader, queue),
    )
    pub.disconnect()

    # kill -9 of the queue's leader: the two others elect one of
    # themselves (for the metadata group and for the queue). The client's
    # own publishes are answered all along.
    probe = Probe(x)
    try:
        leader.kill9()
        survivors = [home, third]
        settled(survivors)
        assert leader_everywhere(survivors, queue) is not leader

        # N more from the surviving node the client is not on: every one
        # reaches the still-connected client within 30 s (at least once;
        # copies of what came before are allowed).
        after = bodies("after-", N)
        publish_all(clients, third, TOPIC, after)
        wait_for(f"the {N} published after the kill on {home.name}", arrived(x, after), timeout=30)
        assert x.disconnected is None, x.disconnected
    finally:
        probe.done.set()
    # Every probe was acknowledged (within the probe's 10 s wait).
    probe.stop()
    got = without_fences(x.received())
    assert set(payloads(got)) == set(before + after), got
    counts = {p: payloads(got).count(p) for p in before + after}
    assert all(n >= 1 for n in counts.values()), counts
    assert all((m.topic, m.qos) == (TOPIC, 1) for m in got), got

    # The killed node comes back on its data directory and rejoins; a
    # message published on it reaches the client, still connected.
    leader.restart()
    settled(brokers)
    leader_everywhere(brokers, queue)
    publish_all(clients, leader, TOPIC, [b"after-rejoin"])
    wait_for(f"the message published on the rejoined {leader.name}", arrived(x, [b"after-rejoin"]))
    got = without_fences(x.received())
    assert set(payloads(got)) == set(before + after + [b"after-rejoin"]), got
    assert x.disconnected is None, x.disconnected
