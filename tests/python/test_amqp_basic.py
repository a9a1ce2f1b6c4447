"""AMQP 0-9-1 basic class: qos, consume/cancel, exclusive and priority
consumers, publish with mandatory, get, ack/nack/reject, recover, and what
happens to unacknowledged messages when a consumer goes away."""

import socket
import struct

import pika
import pytest
from pika.exceptions import UnroutableError

import amqp_raw
from amqp_raw import RawClient
from amqp_support import (
    Collector,
    bodies,
    channel_error,
    get_all,
    message_count,
    publish,
    settle,
    wait_until,
)


def fill(ch, queue, n, prefix=b"m"):
    ch.queue_declare(queue)
    for i in range(n):
        publish(ch, queue, prefix + b"%d" % i)
    return [prefix + b"%d" % i for i in range(n)]


def test_prefetch_3_holds_back_deliveries_until_one_is_acked(amqp_channel, names):
    q = names("q")
    sent = fill(amqp_channel, q, 10)
    amqp_channel.basic_qos(prefetch_count=3)
    got = Collector()
    amqp_channel.basic_consume(q, got)
    conn = amqp_channel.connection
    assert wait_until(conn, lambda: len(got) >= 3)
    settle(conn, 0.4)
    assert got.bodies == sent[:3]
    amqp_channel.basic_ack(got.deliveries[0][0].delivery_tag)
    assert wait_until(conn, lambda: len(got) >= 4)
    settle(conn, 0.4)
    assert got.bodies == sent[:4]


def test_global_prefetch_is_shared_by_the_consumers_of_a_channel(amqp_channel, names):
    q1, q2 = names("q1"), names("q2")
    fill(amqp_channel, q1, 5, b"a")
    fill(amqp_channel, q2, 5, b"b")
    amqp_channel.basic_qos(prefetch_count=4, global_qos=True)
    got = Collector()
    amqp_channel.basic_consume(q1, got)
    amqp_channel.basic_consume(q2, got)
    conn = amqp_channel.connection
    assert wait_until(conn, lambda: len(got) >= 4)
    settle(conn, 0.4)
    assert len(got) == 4
    amqp_channel.basic_ack(got.deliveries[0][0].delivery_tag)
    assert wait_until(conn, lambda: len(got) >= 5)
    settle(conn, 0.4)
    assert len(got) == 5
    assert message_count(amqp_channel, q1) + message_count(amqp_channel, q2) == 5


def test_consume_without_a_tag_gets_a_server_generated_amq_ctag(
    module_broker, amqp_channel, names
):
    # pika always makes its own tag, so the empty one goes out by hand.
    q = names("q")
    fill(amqp_channel, q, 1)
    with RawClient(module_broker.amqp_port) as c:
        c.handshake()
        c.open_channel(1)
        c.send(amqp_raw.consume_frame(1, q, consumer_tag="", no_ack=True))
        tag, _ = amqp_raw.parse_shortstr(c.expect(1, amqp_raw.BASIC_CONSUME_OK))
        assert tag.startswith("amq.ctag-"), tag
        assert len(tag) > len("amq.ctag-")
        deliver = c.expect(1, amqp_raw.BASIC_DELIVER)
        assert amqp_raw.parse_shortstr(deliver)[0] == tag


def test_deliveries_carry_the_consumer_tag_and_channel_wide_delivery_tags(amqp_channel, names):
    q = names("q")
    sent = fill(amqp_channel, q, 2)
    got = Collector()
    tag = amqp_channel.basic_consume(q, got, consumer_tag="my-tag")
    assert tag == "my-tag"
    assert wait_until(amqp_channel.connection, lambda: len(got) == 2)
    assert got.bodies == sent
    assert [(m.consumer_tag, m.delivery_tag, m.redelivered) for m, _, _ in got.deliveries] == [
        ("my-tag", 1, False),
        ("my-tag", 2, False),
    ]


def test_no_ack_deliveries_are_gone_when_the_channel_closes(amqp_channel, shared_amqp, names):
    q = names("q")
    sent = fill(amqp_channel, q, 3)
    got = Collector()
    amqp_channel.basic_consume(q, got, auto_ack=True)
    assert wait_until(amqp_channel.connection, lambda: len(got) == 3)
    assert got.bodies == sent
    amqp_channel.close()
    assert message_count(shared_amqp.get().channel(), q) == 0


def test_second_consumer_on_a_queue_with_an_exclusive_consumer_is_refused_with_403(
    amqp_channel, shared_amqp, names
):
    q = names("q")
    amqp_channel.queue_declare(q)
    amqp_channel.basic_consume(q, Collector(), exclusive=True)
    code, text = channel_error(shared_amqp.get().channel().basic_consume, q, Collector())
    assert code == 403
    assert text.startswith("ACCESS_REFUSED - "), text


def test_exclusive_consume_on_a_queue_with_consumers_is_refused_with_403(
    amqp_channel, shared_amqp, names
):
    q = names("q")
    amqp_channel.queue_declare(q)
    amqp_channel.basic_consume(q, Collector())
    code, text = channel_error(
        shared_amqp.get().channel().basic_consume, q, Collector(), exclusive=True
    )
    assert code == 403
    assert text.startswith("ACCESS_REFUSED - "), text


def test_higher_x_priority_consumer_gets_messages_while_it_has_credit(
    amqp_channel, shared_amqp, names
):
    q = names("q")
    amqp_channel.queue_declare(q)
    low_ch = shared_amqp.get().channel()
    low = Collector()
    low_ch.basic_consume(q, low)
    amqp_channel.basic_qos(prefetch_count=2)
    high = Collector()
    amqp_channel.basic_consume(q, high, arguments={"x-priority": 10})
    sent = [b"m%d" % i for i in range(6)]
    for body in sent:
        publish(amqp_channel, q, body)
    conn = amqp_channel.connection
    assert wait_until(conn, lambda: len(high) + len(low) == 6)
    assert high.bodies == sent[:2]
    assert low.bodies == sent[2:]


def test_cancel_stops_deliveries_and_unacked_messages_stay_ackable(
    amqp_channel, shared_amqp, names
):
    q = names("q")
    sent = fill(amqp_channel, q, 2)
    got = Collector()
    tag = amqp_channel.basic_consume(q, got)
    conn = amqp_channel.connection
    assert wait_until(conn, lambda: len(got) == 2)
    amqp_channel.basic_cancel(tag)
    assert tag not in amqp_channel.consumer_tags
    publish(amqp_channel, q, b"after cancel")
    settle(conn, 0.3)
    assert got.bodies == sent
    for method, _, _ in got.deliveries:
        amqp_channel.basic_ack(method.delivery_tag)
    amqp_channel.close()
    assert bodies(shared_amqp.get().channel(), q) == [b"after cancel"]


def test_deleting_the_queue_sends_basic_cancel_to_its_consumers(amqp_channel, shared_amqp, names):
    q = names("q")
    amqp_channel.queue_declare(q)
    cancelled = []
    amqp_channel.add_on_cancel_callback(cancelled.append)
    tag = amqp_channel.basic_consume(q, Collector())
    assert shared_amqp.get().channel().queue_delete(q).method.message_count == 0
    assert wait_until(amqp_channel.connection, lambda: cancelled)
    assert [f.method.consumer_tag for f in cancelled] == [tag]
    assert amqp_channel.consumer_tags == []
    assert amqp_channel.is_open


def test_mandatory_unroutable_publish_comes_back_as_basic_return_312(amqp_channel, names):
    returned = []
    amqp_channel.add_on_return_callback(lambda ch, m, p, b: returned.append((m, p, b)))
    key = names("nowhere")
    amqp_channel.basic_publish(
        "", key, b"bounce", pika.BasicProperties(message_id="r1"), mandatory=True
    )
    assert wait_until(amqp_channel.connection, lambda: returned)
    method, props, body = returned[0]
    assert (method.reply_code, method.reply_text, method.exchange, method.routing_key) == (
        312,
        "NO_ROUTE",
        "",
        key,
    )
    assert (props.message_id, body) == ("r1", b"bounce")
    assert len(returned) == 1


def test_mandatory_unroutable_publish_on_a_confirm_channel_raises_unroutable(amqp_channel, names):
    amqp_channel.confirm_delivery()
    with pytest.raises(UnroutableError) as e:
        amqp_channel.basic_publish("", names("nowhere"), b"bounce", mandatory=True)
    assert [m.body for m in e.value.messages] == [b"bounce"]
    assert [m.method.reply_code for m in e.value.messages] == [312]


def test_non_mandatory_unroutable_publish_is_dropped_silently(amqp_channel, names):
    returned = []
    amqp_channel.add_on_return_callback(lambda *a: returned.append(a))
    amqp_channel.confirm_delivery()
    amqp_channel.basic_publish("", names("nowhere"), b"dropped")
    assert returned == []


def test_get_returns_messages_with_the_remaining_count_then_get_empty(amqp_channel, names):
    q = names("q")
    sent = fill(amqp_channel, q, 3)
    results = []
    for _ in range(3):
        method, _, body = amqp_channel.basic_get(q)
        results.append((method.delivery_tag, method.redelivered, method.message_count, body))
    assert results == [(1, False, 2, sent[0]), (2, False, 1, sent[1]), (3, False, 0, sent[2])]
    assert amqp_channel.basic_get(q) == (None, None, None)


def test_ack_multiple_settles_every_tag_up_to_the_one_given(amqp_channel, shared_amqp, names):
    q = names("q")
    sent = fill(amqp_channel, q, 5)
    tags = [amqp_channel.basic_get(q)[0].delivery_tag for _ in range(5)]
    assert tags == [1, 2, 3, 4, 5]
    amqp_channel.basic_ack(3, multiple=True)
    amqp_channel.close()
    got = get_all(shared_amqp.get().channel(), q)
    assert [(m.redelivered, b) for m, _, b in got] == [(True, sent[3]), (True, sent[4])]


def test_reject_with_requeue_redelivers_the_same_message_first(amqp_channel, names):
    q = names("q")
    sent = fill(amqp_channel, q, 2)
    method, _, body = amqp_channel.basic_get(q)
    assert (body, method.redelivered) == (sent[0], False)
    amqp_channel.basic_reject(method.delivery_tag, requeue=True)
    got = get_all(amqp_channel, q)
    assert [(m.redelivered, b) for m, _, b in got] == [(True, sent[0]), (False, sent[1])]


def test_nack_multiple_with_requeue_puts_every_message_back_in_order(amqp_channel, names):
    q = names("q")
    sent = fill(amqp_channel, q, 4)
    for _ in range(3):
        amqp_channel.basic_get(q)
    amqp_channel.basic_nack(3, multiple=True, requeue=True)
    got = get_all(amqp_channel, q)
    assert [(m.redelivered, b) for m, _, b in got] == [
        (True, sent[0]),
        (True, sent[1]),
        (True, sent[2]),
        (False, sent[3]),
    ]


def test_nack_without_requeue_dead_letters_to_the_dlx(amqp_channel, names):
    q, dead = names("q"), names("dead")
    amqp_channel.queue_declare(dead)
    amqp_channel.queue_declare(
        q, arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dead}
    )
    publish(amqp_channel, q, b"nacked")
    method, _, _ = amqp_channel.basic_get(q)
    amqp_channel.basic_nack(method.delivery_tag, requeue=False)
    got = get_all(amqp_channel, dead)
    assert [b for _, _, b in got] == [b"nacked"]
    death = got[0][1].headers["x-death"][0]
    assert (death["reason"], death["queue"], death["count"]) == ("rejected", q, 1)
    assert message_count(amqp_channel, q) == 0


def test_recover_redelivers_every_unacked_message_flagged_redelivered(amqp_channel, names):
    q = names("q")
    sent = fill(amqp_channel, q, 3)
    got = Collector()
    amqp_channel.basic_consume(q, got)
    conn = amqp_channel.connection
    assert wait_until(conn, lambda: len(got) == 3)
    amqp_channel.basic_recover(requeue=True)
    assert wait_until(conn, lambda: len(got) == 6)
    assert [(m.redelivered, b) for m, _, b in got.deliveries] == [
        (False, sent[0]),
        (False, sent[1]),
        (False, sent[2]),
        (True, sent[0]),
        (True, sent[1]),
        (True, sent[2]),
    ]


def test_ack_of_an_unknown_delivery_tag_closes_the_channel_with_406(amqp_channel, names):
    amqp_channel.basic_ack(99)
    assert channel_error(amqp_channel.queue_declare, "", exclusive=True) == (
        406,
        "PRECONDITION_FAILED - unknown delivery tag 99",
    )


def test_publish_with_immediate_closes_the_connection_with_540(module_broker, names):
    with RawClient(module_broker.amqp_port) as c:
        c.handshake()
        c.open_channel(1)
        c.send(
            amqp_raw.publish_frame(1, "", names("q"), immediate=True)
            + amqp_raw.content_header_frame(1, 2)
            + amqp_raw.body_frame(1, b"hi")
        )
        close = c.expect_connection_close()
        assert close == (540, "NOT_IMPLEMENTED - immediate=true", 60, 40)
        c.send_close_ok()
        assert c.read_until_eof(timeout=5) == []


def test_unacked_messages_of_a_killed_consumer_are_redelivered_to_another(
    module_broker, shared_amqp, names
):
    q = names("q")
    ch = shared_amqp.get().channel()
    sent = fill(ch, q, 3)
    doomed = module_broker.connect()
    got = Collector()
    doomed.channel().basic_consume(q, got)
    assert wait_until(doomed, lambda: len(got) == 3)
    assert got.bodies == sent
    # Abort the TCP connection (RST, no connection.close) as a crash would.
    sock = doomed._impl._transport._sock
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
    again = Collector()
    ch.basic_consume(q, again)
    assert wait_until(ch.connection, lambda: len(again) == 3)
    assert [(m.redelivered, b) for m, _, b in again.deliveries] == [(True, b) for b in sent]
