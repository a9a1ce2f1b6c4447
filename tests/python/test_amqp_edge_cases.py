"""Edge cases found in review: what a closing channel, a cancelled
consumer, a closing connection and odd property values must not break."""

import pika
import pytest
from pika.exceptions import ChannelClosedByBroker, ConnectionClosedByBroker

from amqp_support import Collector, channel_error, message_count, settle, wait_until


def test_oversized_body_closes_only_its_channel_not_the_connection(make_broker):
    broker = make_broker(broker_options=["max_message_size = 1000"])
    conn = broker.connect()
    big = conn.channel()
    other = conn.channel()
    other.queue_declare("sized")
    # The body frames that follow the refused header must not be taken for
    # stray content (which would close the whole connection with 505).
    code, text = channel_error(
        lambda: (big.basic_publish("", "sized", b"x" * 5000), big.queue_declare("sized", passive=True))
    )
    assert code == 406 and "larger than configured max size 1000" in text
    other.basic_publish("", "sized", b"small")
    assert wait_until(conn, lambda: message_count(other, "sized") == 1)
    conn.close()


def test_deliveries_in_flight_at_cancel_are_still_delivered_and_ackable(broker):
    conn = broker.connect()
    ch = conn.channel()
    ch.queue_declare("cancelled")
    for i in range(10):
        ch.basic_publish("", "cancelled", str(i).encode())
    ch.basic_qos(prefetch_count=10)
    got = Collector()
    tag = ch.basic_consume("cancelled", got)
    assert wait_until(conn, lambda: len(got) >= 1)
    ch.basic_cancel(tag)
    settle(conn, 0.3)
    # Every delivery the broker made is on the channel and ackable...
    for method, _, _ in got.deliveries:
        ch.basic_ack(method.delivery_tag)
    settle(conn, 0.2)
    # ...and whatever was not delivered is still ready: nothing is stranded.
    remaining = message_count(ch, "cancelled")
    assert remaining + len(got) == 10, (remaining, got.bodies)
    assert got.bodies == [str(i).encode() for i in range(len(got))]
    conn.close()


def test_expiration_that_is_not_a_number_closes_the_channel_with_406(broker):
    conn = broker.connect()
    ch = conn.channel()
    ch.queue_declare("exp")
    code, text = channel_error(
        lambda: (
            ch.basic_publish("", "exp", b"x", pika.BasicProperties(expiration="soon")),
            ch.queue_declare("exp", passive=True),
        )
    )
    assert code == 406 and "invalid expiration 'soon'" in text
    conn.close()


def test_recover_without_requeue_is_not_implemented(broker):
    conn = broker.connect()
    ch = conn.channel()
    with pytest.raises((ConnectionClosedByBroker, ChannelClosedByBroker)) as e:
        ch.basic_recover(requeue=False)
        settle(conn, 0.3)
    assert e.value.reply_code == 540
