"""Small pika helpers shared by the AMQP tests: bounded event loops,
draining a queue with basic.get, catching a broker-closed channel, and
checking that a broker still serves a fresh connection."""

import time

import pika
import pytest
from pika.exceptions import ChannelClosedByBroker


class Collector:
    """A basic_consume callback that records (method, properties, body)."""

    def __init__(self):
        self.deliveries = []

    def __call__(self, ch, method, properties, body):
        self.deliveries.append((method, properties, body))

    @property
    def bodies(self):
        return [d[2] for d in self.deliveries]

    def __len__(self):
        return len(self.deliveries)


def wait_until(conn, predicate, timeout=5.0, step=0.05):
    """Processes pika events until `predicate()` holds or `timeout` passes;
    returns whether it held."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        conn.process_data_events(time_limit=step)
    return True


def settle(conn, seconds=0.3):
    """Processes events for a fixed time: lets anything that should not
    arrive have its chance to arrive."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.05)


def get_all(ch, queue, limit=10_000):
    """Every message left in `queue`, by basic.get with auto-ack:
    [(method, properties, body)]."""
    out = []
    for _ in range(limit):
        method, props, body = ch.basic_get(queue, auto_ack=True)
        if method is None:
            return out
        out.append((method, props, body))
    raise AssertionError(f"{queue} still not empty after {limit} gets")


def bodies(ch, queue):
    return [b for _, _, b in get_all(ch, queue)]


def message_count(ch, queue):
    """Ready messages, from a passive queue.declare."""
    return ch.queue_declare(queue, passive=True).method.message_count


def channel_error(fn, *args, **kwargs):
    """Calls `fn`, which must make the broker close the channel; returns
    (reply_code, reply_text)."""
    with pytest.raises(ChannelClosedByBroker) as e:
        fn(*args, **kwargs)
    return e.value.reply_code, e.value.reply_text


def publish(ch, queue, body, **props):
    """Publishes `body` to the default exchange for `queue`."""
    ch.basic_publish(
        "", queue, body, properties=pika.BasicProperties(**props) if props else None
    )


def assert_broker_serves(broker, queue):
    """A new pika connection can still declare, publish and get."""
    conn = broker.connect()
    try:
        ch = conn.channel()
        ch.queue_declare(queue)
        publish(ch, queue, b"still serving")
        assert [b for _, _, b in get_all(ch, queue)] == [b"still serving"]
    finally:
        conn.close()
