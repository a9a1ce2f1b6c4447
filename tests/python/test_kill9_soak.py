"""kill -9 soak, small: kill9_soak.py's rounds (concurrent AMQP, MQTT and
STOMP publishers, SIGKILL at a random moment, restart on the same data dir,
every queue drained) at a count that fits the suite; the long run is the script
itself. Also checks that the soak's check does catch what it looks for."""

import pika
import pytest

import kill9_soak
from amqp_support import wait_until
from kill9_soak import PERSISTENT, Sent, Topology, check_round, make_body


@pytest.mark.deadline(150)
def test_confirmed_messages_survive_repeated_kill_9_with_amqp_mqtt_and_stomp_publishers(
    tmp_path,
):
    cfg = kill9_soak.defaults(
        rounds=5,
        seconds_per_round=2.0,
        max_seconds=120.0,
        max_queues=60,
        report=tmp_path / "report.json",
        quiet=True,
    )
    lines = []
    res = kill9_soak.run_soak(cfg, data_dir=tmp_path / "data", out=lines.append)
    summary = res.summary()
    assert res.ok, "\n".join(lines) + "\n" + summary
    assert res.rounds == 5
    assert res.totals["confirmed"] > 0
    assert res.totals["recovered"] == res.totals["confirmed"], summary
    # Every protocol entry published and had messages confirmed.
    for proto in ("amqp", "amqp-window", "mqtt311", "mqtt5", "stomp"):
        assert res.by_proto.get(proto, {}).get("confirmed", 0) > 0, summary


class _Ledger:
    """Stands in for a round's workers in `check_round`."""

    def __init__(self, name):
        self.name = name
        self.sent = {}
        self.errors = []

    def add(self, rnd, seq, dests, confirmed):
        key, body = make_body(self.name, rnd, seq)
        rec = Sent(key, self.name, "amqp", seq, dests, None)
        rec.confirmed = confirmed
        self.sent[key] = rec
        return body


def test_the_soak_check_reports_missing_phantom_duplicate_stale_and_missing_queues(broker):
    q, gone = "soak.selfcheck", "soak.selfcheck.gone"
    topo = Topology(max_queues=10)
    topo.declared(q, "amqp", 1)
    topo.declared(gone, "amqp", 1)
    w = _Ledger("amqp-0")
    kept = w.add(2, 0, (q,), confirmed=True)
    w.add(2, 1, (q,), confirmed=True)  # never published: missing
    twice = w.add(2, 2, (q,), confirmed=True)
    w.add(2, 3, (q,), confirmed=False)  # unconfirmed, absent: fine
    conn = broker.connect()
    ch = conn.channel()
    ch.queue_declare(q, durable=True)
    ch.confirm_delivery()
    for body in (
        kept,
        twice,
        twice,
        make_body("amqp-0", 2, 99)[1],  # never sent
        make_body("amqp-0", 1, 5)[1],  # from an earlier round
        kept[:-1] + b"?",  # corrupted
        b"not ours",
    ):
        ch.basic_publish("", q, body, PERSISTENT)
    conn.close()

    bad, fig = check_round(broker, topo, 2, [w], set(), None)
    assert bad.counts == {
        "missing": 1,
        "phantoms": 3,
        "duplicates": 1,
        "stale": 1,
        "out_of_order": 0,
        "missing_queues": 1,
        "resurrected_queues": 0,
        "lost_bindings": 0,
        "worker_errors": 0,
    }, bad.details
    missing = bad.details["missing"][0]
    assert (missing["message"], missing["queue"]) == ("amqp-0|2|1", q)
    assert missing["queue_held_of_worker"] == "0,2,2"
    assert (fig["confirmed"], fig["recovered"], fig["unconfirmed"]) == (3, 2, 1)
    # The check drained the queue.
    conn = broker.connect()
    try:
        assert conn.channel().queue_declare(q, passive=True).method.message_count == 0
    finally:
        conn.close()


def test_the_soak_check_reports_a_lost_binding_and_a_resurrected_queue(broker):
    q, back = "soak.selfcheck.bound", "soak.selfcheck.back"
    conn = broker.connect()
    ch = conn.channel()
    ch.queue_declare(q, durable=True)
    ch.queue_declare(back, durable=True)
    conn.close()
    topo = Topology(max_queues=10)
    topo.declared(q, "mqtt", 1)
    # The model says bound and deleted; the broker has neither.
    topo.bindings.append(("amq.topic", "soak.selfcheck.t", (q,)))
    topo.deleted.add(back)

    bad, _ = check_round(broker, topo, 1, [], set(), None)
    assert bad.counts["lost_bindings"] == 1, bad.details
    assert bad.counts["resurrected_queues"] == 1, bad.details
    assert bad.total() == 2, bad.details
    conn = broker.connect()
    try:
        with pytest.raises(pika.exceptions.ChannelClosedByBroker):
            conn.channel().queue_declare(back, passive=True)
    finally:
        if conn.is_open:
            conn.close()


def test_the_soak_drain_takes_everything_across_batches(broker):
    # 2500: three consume batches (1000, 1000, 499); the drain is told 2499,
    # so the last message, one the count left out, is taken by basic.get.
    q = "soak.selfcheck.drain"
    conn = broker.connect()
    try:
        ch = conn.channel()
        ch.queue_declare(q, durable=True)
        for i in range(2500):
            ch.basic_publish("", q, b"%d" % i)
        assert wait_until(
            conn, lambda: ch.queue_declare(q, passive=True).method.message_count == 2500
        )
        got = kill9_soak.drain(ch, q, 2499)
        assert got == [b"%d" % i for i in range(2500)]
        assert ch.queue_declare(q, passive=True).method.message_count == 0
    finally:
        conn.close()
