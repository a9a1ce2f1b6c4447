"""Crash safety: what the broker confirmed (RabbitMQ publisher confirms on
persistent messages to a durable queue) survives kill -9, exactly once and
in order."""

import threading
import time

import pika
import pytest
from pika.exceptions import AMQPError

from amqp_support import get_all

PERSISTENT = pika.BasicProperties(delivery_mode=2)


def publish_until_stopped(params, queue, confirmed, errors):
    """Publishes 0, 1, 2, ... with confirms; appends each number once its
    basic.ack arrived; ends when the broker goes away."""
    try:
        conn = pika.BlockingConnection(params)
        ch = conn.channel()
        ch.confirm_delivery()
        for i in range(1_000_000):
            ch.basic_publish("", queue, b"%d" % i, PERSISTENT, mandatory=True)
            confirmed.append(i)
    except AMQPError as e:
        errors.append(e)
    except OSError as e:
        errors.append(e)


@pytest.mark.deadline(90)
def test_every_confirmed_message_survives_kill_9_exactly_once_in_order(broker, names):
    q = names("durable")
    setup = broker.connect()
    setup.channel().queue_declare(q, durable=True)
    setup.close()

    confirmed, errors = [], []
    publisher = threading.Thread(
        target=publish_until_stopped,
        args=(broker.params(), q, confirmed, errors),
        daemon=True,
    )
    publisher.start()
    deadline = time.monotonic() + 45
    while len(confirmed) < 250 and publisher.is_alive():
        assert time.monotonic() < deadline, f"only {len(confirmed)} confirmed in 45 s"
        time.sleep(0.01)
    assert publisher.is_alive(), f"publisher stopped early: {errors}"
    broker.kill9()
    publisher.join(timeout=20)
    assert not publisher.is_alive()
    assert len(errors) == 1, errors
    acked = list(confirmed)
    assert len(acked) >= 250

    broker.restart()
    conn = broker.connect()
    try:
        got = [int(b) for _, _, b in get_all(conn.channel(), q)]
    finally:
        conn.close()
    assert got[: len(acked)] == acked
    # At most the one publish in flight at the kill may also have made it.
    assert got[len(acked) :] in ([], [len(acked)])


def test_durable_topology_and_persistent_messages_survive_a_restart_transient_ones_do_not(
    broker, names
):
    dx, dq, tq = names("dx"), names("dq"), names("tq")
    conn = broker.connect()
    ch = conn.channel()
    ch.exchange_declare(dx, "direct", durable=True)
    ch.queue_declare(dq, durable=True)
    ch.queue_bind(dq, dx, routing_key="k")
    ch.queue_declare(tq)
    ch.confirm_delivery()
    ch.basic_publish(dx, "k", b"persistent", PERSISTENT)
    ch.basic_publish(dx, "k", b"transient", pika.BasicProperties(delivery_mode=1))
    ch.basic_publish("", tq, b"in transient queue", PERSISTENT)
    conn.close()

    assert broker.terminate() == 0
    broker.start()

    conn = broker.connect()
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        ch.basic_publish(dx, "k", b"after restart", PERSISTENT, mandatory=True)
        assert [b for _, _, b in get_all(ch, dq)] == [b"persistent", b"after restart"]
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
            ch.queue_declare(tq, passive=True)
        assert e.value.reply_code == 404
    finally:
        conn.close()
