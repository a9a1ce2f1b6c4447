"""STOMP acknowledgements and transactions: auto, client (cumulative) and
client-individual modes in each version, NACK (requeue with
redelivered:true, dead-lettering), prefetch-count windows, unacknowledged
messages returning to the queue when a connection ends, and BEGIN /
COMMIT / ABORT of SENDs and ACKs."""

import pytest

from stomp_support import (
    ALL_VERSIONS,
    build,
    uid,
    stomp_clients,  # noqa: F401 (fixture)
)


def fill(client, queue, n, prefix="m", headers=None):
    """SENDs n messages to /queue/`queue`; returns their bodies."""
    bodies = [f"{prefix}{i}".encode() for i in range(n)]
    for i, b in enumerate(bodies):
        client.send(f"/queue/{queue}", b, headers, receipt=(i == n - 1))
    return bodies


def drain(clients, broker, queue, n, version="1.2"):
    """A new auto-ack subscriber's view of the queue: exactly n messages."""
    c = clients.connect(broker, version)
    c.subscribe(f"/queue/{queue}")
    got = c.exactly(n)
    return [(m.body, m.headers["redelivered"]) for m in got]


# --- modes ---------------------------------------------------------------------


@ALL_VERSIONS
def test_auto_mode_consumes_on_delivery(module_broker, stomp_clients, names, version):
    q = names("q")
    c = stomp_clients.connect(module_broker, version)
    sent = fill(c, q, 3)
    c.subscribe(f"/queue/{q}", ack="auto")
    got = c.exactly(3)
    assert [m.body for m in got] == sent
    assert all("ack" not in m.headers for m in got)
    c.drop()
    assert drain(stomp_clients, module_broker, q, 0) == []


@ALL_VERSIONS
def test_client_individual_acks_one_message(module_broker, stomp_clients, names, version):
    q = names("q")
    c = stomp_clients.connect(module_broker, version)
    sent = fill(c, q, 3)
    c.subscribe(f"/queue/{q}", ack="client-individual")
    got = c.exactly(3)
    assert [m.body for m in got] == sent
    if version == "1.2":
        acks = [m.headers["ack"] for m in got]
        assert len(set(acks)) == 3 and all(acks)
    else:
        assert all("ack" not in m.headers for m in got), "only 1.2 MESSAGEs carry ack"
    c.ack(got[1])
    c.drop()
    assert drain(stomp_clients, module_broker, q, 2) == [(b"m0", "true"), (b"m2", "true")]


@ALL_VERSIONS
def test_client_mode_acks_cumulatively(module_broker, stomp_clients, names, version):
    q = names("q")
    c = stomp_clients.connect(module_broker, version)
    sent = fill(c, q, 5)
    c.subscribe(f"/queue/{q}", ack="client")
    got = c.exactly(5)
    assert [m.body for m in got] == sent
    c.ack(got[2])  # m0, m1 and m2
    c.drop()
    assert drain(stomp_clients, module_broker, q, 2) == [(b"m3", "true"), (b"m4", "true")]


def test_client_mode_ack_covers_only_its_own_subscription(module_broker, stomp_clients, names):
    qa, qb = names("a"), names("b")
    c = stomp_clients.connect(module_broker)
    fill(c, qa, 2, "a")
    c.subscribe(f"/queue/{qa}", id="sa", ack="client")
    c.wait_messages(2)
    fill(c, qb, 2, "b")
    c.subscribe(f"/queue/{qb}", id="sb", ack="client")
    got = c.exactly(4)
    b_msgs = [m for m in got if m.headers["subscription"] == "sb"]
    c.ack(b_msgs[1])  # both of sb, none of sa
    c.drop()
    assert drain(stomp_clients, module_broker, qa, 2) == [(b"a0", "true"), (b"a1", "true")]
    assert drain(stomp_clients, module_broker, qb, 0) == []


def test_acked_messages_are_gone_after_all_are_acked(module_broker, stomp_clients, names):
    q = names("q")
    c = stomp_clients.connect(module_broker)
    fill(c, q, 3)
    c.subscribe(f"/queue/{q}", ack="client-individual")
    for m in c.exactly(3):
        c.ack(m)
    c.disconnect()
    assert drain(stomp_clients, module_broker, q, 0) == []


# --- NACK ----------------------------------------------------------------------


@pytest.mark.parametrize("version", ["1.1", "1.2"])
def test_nack_requeues_and_the_message_comes_back_redelivered(module_broker, stomp_clients, names, version):
    q = names("q")
    c = stomp_clients.connect(module_broker, version)
    fill(c, q, 1, "poison")
    c.subscribe(f"/queue/{q}", ack="client-individual")
    (first,) = c.wait_messages(1)
    assert (first.body, first.headers["redelivered"]) == (b"poison0", "false")
    c.nack(first)
    second = c.wait_messages(2)[1]
    assert (second.body, second.headers["redelivered"]) == (b"poison0", "true")
    c.ack(second)
    assert len(c.exactly(2)) == 2
    c.drop()
    assert drain(stomp_clients, module_broker, q, 0) == []


def test_client_mode_nack_is_cumulative_too(module_broker, stomp_clients, names):
    q = names("q")
    c = stomp_clients.connect(module_broker)
    fill(c, q, 3)
    c.subscribe(f"/queue/{q}", ack="client", headers={"prefetch-count": "3"})
    got = c.exactly(3)
    c.nack(got[1])  # m0 and m1 go back
    again = c.wait_messages(5)[3:]
    assert [(m.body, m.headers["redelivered"]) for m in again] == [(b"m0", "true"), (b"m1", "true")]


def test_nack_dead_letters_when_the_queue_has_a_dead_letter_exchange(module_broker, stomp_clients, names):
    src, dead = names("src"), names("dead")
    dlx = {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dead}
    watcher = stomp_clients.connect(module_broker)
    watcher.subscribe(f"/queue/{dead}")
    c = stomp_clients.connect(module_broker)
    c.subscribe(f"/queue/{src}", ack="client-individual", headers=dlx)
    c.send(f"/queue/{src}", "bad", {"x-trace": "t1"}, receipt=True)
    (m,) = c.wait_messages(1)
    c.nack(m)
    (d,) = watcher.exactly(1)
    assert d.body == b"bad"
    assert d.headers["x-trace"] == "t1"
    assert d.headers["destination"] == f"/queue/{dead}"
    assert d.headers["redelivered"] == "false"
    assert len(c.exactly(1)) == 1, "a dead-lettered message is not redelivered"


def test_nack_with_requeue_false_drops_the_message_without_a_dlx(module_broker, stomp_clients, names):
    q = names("q")
    c = stomp_clients.connect(module_broker)
    fill(c, q, 2)
    c.subscribe(f"/queue/{q}", ack="client-individual")
    got = c.exactly(2)
    c.nack(got[0], requeue="false")
    c.drop()
    assert drain(stomp_clients, module_broker, q, 1) == [(b"m1", "true")]


def test_nack_with_requeue_false_dead_letters(module_broker, stomp_clients, names):
    src, dead = names("src"), names("dead")
    c = stomp_clients.connect(module_broker)
    c.subscribe(
        f"/queue/{src}",
        ack="client-individual",
        headers={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dead},
    )
    c.subscribe(f"/queue/{dead}", id="dead")
    c.send(f"/queue/{src}", "x", receipt=True)
    (m,) = c.wait_messages(1)
    c.nack(m, requeue="false")
    got = c.exactly(2)
    assert (got[1].headers["subscription"], got[1].body) == ("dead", b"x")


# --- prefetch --------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["client-individual", "client"])
def test_prefetch_count_limits_unacked_messages(module_broker, stomp_clients, names, mode):
    q = names("q")
    c = stomp_clients.connect(module_broker)
    sent = fill(c, q, 5)
    c.subscribe(f"/queue/{q}", ack=mode, headers={"prefetch-count": "2"})
    got = c.exactly(2)
    assert [m.body for m in got] == sent[:2]
    c.ack(got[0])
    got = c.exactly(3)
    assert [m.body for m in got] == sent[:3]
    c.ack(got[2])  # client: m1 and m2; client-individual: m2
    if mode == "client":
        assert [m.body for m in c.exactly(5)] == sent
    else:
        assert [m.body for m in c.exactly(4)] == sent[:4]
        c.ack(got[1])
        assert [m.body for m in c.exactly(5)] == sent


def test_prefetch_does_not_limit_auto_mode(module_broker, stomp_clients, names):
    q = names("q")
    c = stomp_clients.connect(module_broker)
    sent = fill(c, q, 10)
    c.subscribe(f"/queue/{q}", ack="auto", headers={"prefetch-count": "2"})
    assert [m.body for m in c.exactly(10)] == sent


def test_two_subscribers_with_prefetch_one_share_a_queue(module_broker, stomp_clients, names):
    q = names("q")
    a = stomp_clients.connect(module_broker)
    b = stomp_clients.connect(module_broker)
    a.subscribe(f"/queue/{q}", ack="client-individual", headers={"prefetch-count": "1"})
    b.subscribe(f"/queue/{q}", ack="client-individual", headers={"prefetch-count": "1"})
    fill(a, q, 4)
    (ma,) = a.exactly(1)
    (mb,) = b.exactly(1)
    assert sorted([ma.body, mb.body]) == [b"m0", b"m1"]
    a.ack(ma)
    b.ack(mb)
    got = a.exactly(2), b.exactly(2)
    assert sorted(m.body for g in got for m in g) == [b"m0", b"m1", b"m2", b"m3"]


# --- unacked messages when the connection ends --------------------------------------


@pytest.mark.parametrize("how", ["drop", "disconnect", "unsubscribe"])
def test_unacked_messages_return_to_the_queue(module_broker, stomp_clients, names, how):
    q = names("q")
    c = stomp_clients.connect(module_broker)
    sent = fill(c, q, 3)
    sub = c.subscribe(f"/queue/{q}", ack="client-individual")
    got = c.exactly(3)
    c.ack(got[0])
    if how == "drop":
        c.drop()
    elif how == "disconnect":
        c.disconnect()
    else:
        c.unsubscribe(sub)
    assert drain(stomp_clients, module_broker, q, 2) == [(sent[1], "true"), (sent[2], "true")]


def test_unacked_messages_go_to_another_waiting_subscriber(module_broker, stomp_clients, names):
    q = names("q")
    a = stomp_clients.connect(module_broker)
    sent = fill(a, q, 3)
    a.subscribe(f"/queue/{q}", ack="client")
    a.exactly(3)
    b = stomp_clients.connect(module_broker)
    b.subscribe(f"/queue/{q}", ack="client")
    b.exactly(0, settle=0.3)
    a.drop()
    got = b.exactly(3)
    assert [(m.body, m.headers["redelivered"]) for m in got] == [(s, "true") for s in sent]


def test_an_ack_just_before_disconnect_is_applied(module_broker, stomp_clients, names):
    q = names("q")
    c = stomp_clients.connect(module_broker)
    fill(c, q, 2)
    raw = stomp_clients.raw(module_broker).connected()
    raw.send_frame("SUBSCRIBE", {"destination": f"/queue/{q}", "id": "s", "ack": "client-individual"})
    m0, m1 = raw.expect("MESSAGE"), raw.expect("MESSAGE")
    raw.send(
        build("ACK", {"id": m0.headers["ack"]})
        + build("ACK", {"id": m1.headers["ack"]})
        + build("DISCONNECT", {"receipt": "bye"})
    )
    assert raw.expect("RECEIPT").headers["receipt-id"] == "bye"
    assert raw.wait_closed() == []
    assert drain(stomp_clients, module_broker, q, 0) == []


def test_unacked_messages_of_a_durable_subscription_stay_in_it(module_broker, stomp_clients):
    k, cid = uid("k"), uid("cid")
    c = stomp_clients.connect(module_broker, headers={"client-id": cid})
    c.subscribe(f"/topic/{k}", id="d", ack="client-individual", headers={"durable": "true"})
    for i in range(3):
        c.send(f"/topic/{k}", f"d{i}", {"persistent": "true"}, receipt=True)
    got = c.exactly(3)
    c.ack(got[1])
    c.drop()
    back = stomp_clients.connect(module_broker, headers={"client-id": cid})
    back.subscribe(f"/topic/{k}", id="d", ack="client-individual", headers={"durable": "true"})
    again = back.exactly(2)
    assert [(m.body, m.headers["redelivered"]) for m in again] == [(b"d0", "true"), (b"d2", "true")]


# --- transactions --------------------------------------------------------------------


def test_commit_applies_the_sends_of_a_transaction(module_broker, stomp_clients, names):
    q = names("q")
    watcher = stomp_clients.connect(module_broker)
    watcher.subscribe(f"/queue/{q}")
    c = stomp_clients.connect(module_broker)
    c.begin("tx1")
    c.send(f"/queue/{q}", "t1", {"transaction": "tx1"})
    c.send(f"/queue/{q}", "t2", {"transaction": "tx1"}, receipt=True)
    c.send(f"/queue/{q}", "outside", receipt=True)
    assert [m.body for m in watcher.exactly(1)] == [b"outside"]
    c.commit("tx1")
    assert [m.body for m in watcher.exactly(3)] == [b"outside", b"t1", b"t2"]


def test_abort_discards_the_sends_of_a_transaction(module_broker, stomp_clients, names):
    q = names("q")
    watcher = stomp_clients.connect(module_broker)
    watcher.subscribe(f"/queue/{q}")
    c = stomp_clients.connect(module_broker)
    c.begin("tx1")
    c.send(f"/queue/{q}", "never", {"transaction": "tx1"}, receipt=True)
    c.abort("tx1")
    c.send(f"/queue/{q}", "after", receipt=True)
    assert [m.body for m in watcher.exactly(1)] == [b"after"]


@pytest.mark.parametrize("how", ["disconnect", "drop"])
def test_ending_the_connection_discards_an_open_transaction(module_broker, stomp_clients, names, how):
    q = names("q")
    watcher = stomp_clients.connect(module_broker)
    watcher.subscribe(f"/queue/{q}")
    c = stomp_clients.connect(module_broker)
    c.begin("tx1")
    c.send(f"/queue/{q}", "never", {"transaction": "tx1"}, receipt=True)
    if how == "disconnect":
        c.disconnect()
    else:
        c.drop()
    other = stomp_clients.connect(module_broker)
    other.send(f"/queue/{q}", "marker", receipt=True)
    assert [m.body for m in watcher.exactly(1)] == [b"marker"]


def test_transactions_are_independent(module_broker, stomp_clients, names):
    q = names("q")
    watcher = stomp_clients.connect(module_broker)
    watcher.subscribe(f"/queue/{q}")
    c = stomp_clients.connect(module_broker)
    c.begin("a")
    c.begin("b")
    c.send(f"/queue/{q}", "a1", {"transaction": "a"})
    c.send(f"/queue/{q}", "b1", {"transaction": "b"})
    c.send(f"/queue/{q}", "a2", {"transaction": "a"}, receipt=True)
    c.abort("b")
    c.commit("a")
    assert [m.body for m in watcher.exactly(2)] == [b"a1", b"a2"]


def test_committed_ack_settles_and_aborted_ack_does_not(module_broker, stomp_clients, names):
    q = names("q")
    c = stomp_clients.connect(module_broker)
    fill(c, q, 2)
    c.subscribe(f"/queue/{q}", ack="client-individual")
    m0, m1 = c.exactly(2)
    c.begin("keep")
    c.ack(m0, transaction="keep")
    c.commit("keep")
    c.begin("undo")
    c.ack(m1, transaction="undo")
    c.abort("undo")
    c.drop()
    assert drain(stomp_clients, module_broker, q, 1) == [(b"m1", "true")]


def test_an_ack_in_an_uncommitted_transaction_does_not_settle(module_broker, stomp_clients, names):
    q = names("q")
    c = stomp_clients.connect(module_broker)
    fill(c, q, 1)
    c.subscribe(f"/queue/{q}", ack="client-individual")
    (m,) = c.exactly(1)
    c.begin("open")
    c.ack(m, transaction="open")
    c.disconnect()
    assert drain(stomp_clients, module_broker, q, 1) == [(b"m0", "true")]


def test_a_message_acked_after_an_aborted_ack_is_settled(module_broker, stomp_clients, names):
    q = names("q")
    c = stomp_clients.connect(module_broker)
    fill(c, q, 1)
    c.subscribe(f"/queue/{q}", ack="client-individual")
    (m,) = c.exactly(1)
    c.begin("undo")
    c.ack(m, transaction="undo")
    c.abort("undo")
    c.ack(m)
    c.disconnect()
    assert drain(stomp_clients, module_broker, q, 0) == []


def test_nack_in_a_committed_transaction_requeues(module_broker, stomp_clients, names):
    q = names("q")
    c = stomp_clients.connect(module_broker)
    fill(c, q, 1)
    c.subscribe(f"/queue/{q}", ack="client-individual")
    (m,) = c.wait_messages(1)
    c.begin("t")
    c.nack(m, transaction="t")
    c.exactly(1, settle=0.3)
    c.commit("t")
    again = c.wait_messages(2)[1]
    assert (again.body, again.headers["redelivered"]) == (b"m0", "true")


def test_a_frame_naming_an_unknown_transaction_is_an_error(module_broker, stomp_clients, names):
    q = names("q")
    c = stomp_clients.connect(module_broker)
    c.send(f"/queue/{q}", "x", {"transaction": "nope", "receipt": "r-bad"})
    e = c.wait_error()
    assert "nope" in e.headers["message"] + e.body.decode()
    assert e.headers["receipt-id"] == "r-bad"
    c.wait_disconnected()
    assert drain(stomp_clients, module_broker, q, 0) == []


def test_begin_of_an_open_transaction_is_an_error(module_broker, stomp_clients):
    c = stomp_clients.connect(module_broker)
    c.begin("twice")
    c.frame("BEGIN", {"transaction": "twice"})
    e = c.wait_error()
    assert "twice" in e.headers["message"] + e.body.decode()
    c.wait_disconnected()


def test_transaction_ids_are_per_connection(module_broker, stomp_clients, names):
    q = names("q")
    watcher = stomp_clients.connect(module_broker)
    watcher.subscribe(f"/queue/{q}")
    a = stomp_clients.connect(module_broker)
    b = stomp_clients.connect(module_broker)
    a.begin("same")
    b.begin("same")
    a.send(f"/queue/{q}", "from a", {"transaction": "same"}, receipt=True)
    b.send(f"/queue/{q}", "from b", {"transaction": "same"}, receipt=True)
    b.abort("same")
    a.commit("same")
    assert [m.body for m in watcher.exactly(1)] == [b"from a"]
