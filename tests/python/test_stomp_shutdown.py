"""SIGTERM with STOMP clients connected: each gets an ERROR frame
(`message:broker shutting down`) and its connection closes; the broker
exits cleanly; unacknowledged persistent messages are back in their queue
after the restart, and so are durable subscriptions' messages."""

import pytest

from stomp_support import (
    CLOSED,
    stomp_clients,  # noqa: F401 (fixture)
    uid,
)


@pytest.mark.deadline(60)
def test_sigterm_sends_broker_shutting_down_to_every_client(broker, stomp_clients):
    clients = [stomp_clients.connect(broker, v) for v in ("1.0", "1.1", "1.2")]
    raw = stomp_clients.raw(broker).connected()
    for c in clients:
        c.subscribe(f"/queue/{uid('q')}")
    assert broker.terminate() == 0
    for c in clients:
        e = c.wait_error()
        assert e.headers["message"] == "broker shutting down"
        c.wait_disconnected()
    f = raw.read_frame()
    assert f is not CLOSED and f.cmd == "ERROR", f
    assert f.headers["message"] == "broker shutting down"
    assert raw.wait_closed() == []


@pytest.mark.deadline(60)
def test_unacked_messages_survive_a_sigterm_and_restart(broker, stomp_clients):
    q = uid("q")
    c = stomp_clients.connect(broker)
    for i in range(4):
        c.send(f"/queue/{q}", f"p{i}", {"persistent": "true"}, receipt=True)
    c.subscribe(f"/queue/{q}", ack="client-individual")
    got = c.exactly(4)
    c.ack(got[0])
    broker.terminate()
    assert c.wait_error().headers["message"] == "broker shutting down"
    broker.start()
    again = stomp_clients.connect(broker)
    again.subscribe(f"/queue/{q}", ack="client-individual")
    back = again.exactly(3)
    assert [(m.body, m.headers["redelivered"]) for m in back] == [
        (b"p1", "true"),
        (b"p2", "true"),
        (b"p3", "true"),
    ]


@pytest.mark.deadline(60)
def test_transient_messages_do_not_survive_a_restart(broker, stomp_clients):
    q = uid("q")
    c = stomp_clients.connect(broker)
    c.send(f"/queue/{q}", "transient", receipt=True)
    c.send(f"/queue/{q}", "persistent", {"persistent": "true"}, receipt=True)
    c.disconnect()
    broker.restart()
    again = stomp_clients.connect(broker)
    again.subscribe(f"/queue/{q}")
    assert [m.body for m in again.exactly(1)] == [b"persistent"]


@pytest.mark.deadline(60)
def test_a_connection_in_a_transaction_at_sigterm_commits_nothing(broker, stomp_clients):
    q = uid("q")
    c = stomp_clients.connect(broker)
    c.begin("t")
    c.send(f"/queue/{q}", "in tx", {"transaction": "t", "persistent": "true"}, receipt=True)
    c.send(f"/queue/{q}", "outside", {"persistent": "true"}, receipt=True)
    broker.terminate()
    c.wait_disconnected()
    broker.start()
    again = stomp_clients.connect(broker)
    again.subscribe(f"/queue/{q}")
    assert [m.body for m in again.exactly(1)] == [b"outside"]
