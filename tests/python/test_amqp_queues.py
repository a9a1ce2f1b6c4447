"""AMQP 0-9-1 queue class and the RabbitMQ queue arguments: declare
(server-named, passive, equivalence), exclusive and auto-delete queues,
bind/unbind, purge, conditional delete, TTL, max-length, dead-lettering
and priorities."""

import time

import pika

from amqp_support import (
    Collector,
    bodies,
    channel_error,
    get_all,
    message_count,
    publish,
    wait_until,
)


def wait_gone(ch_factory, queue, timeout=3.0):
    """Polls a passive declare (each on a fresh channel) until the broker
    answers 404; returns that (code, text), or the last outcome if the
    queue is still there at `timeout`. Deletion may trail the event that
    causes it (a connection's close-ok), and meanwhile another
    connection's passive declare of an exclusive queue gets 405."""
    deadline = time.monotonic() + timeout
    outcome = None
    while time.monotonic() < deadline:
        ch = ch_factory()
        try:
            ch.queue_declare(queue, passive=True)
            outcome = "exists"
            ch.close()
        except pika.exceptions.ChannelClosedByBroker as e:
            outcome = (e.reply_code, e.reply_text)
            if e.reply_code == 404:
                return outcome
        time.sleep(0.05)
    return outcome


def test_declare_with_empty_name_creates_a_server_named_queue(amqp_channel):
    ok = amqp_channel.queue_declare("", exclusive=True).method
    assert ok.queue.startswith("amq.gen-"), ok.queue
    assert len(ok.queue) > len("amq.gen-")
    assert (ok.message_count, ok.consumer_count) == (0, 0)
    publish(amqp_channel, ok.queue, b"to the generated name")
    assert bodies(amqp_channel, ok.queue) == [b"to the generated name"]


def test_passive_declare_of_a_missing_queue_closes_the_channel_with_404(amqp_channel, names):
    q = names("missing")
    assert channel_error(amqp_channel.queue_declare, q, passive=True) == (
        404,
        f"NOT_FOUND - no queue '{q}' in vhost '/'",
    )


def test_declare_ok_counts_ready_messages_and_consumers(amqp_channel, names):
    q = names("q")
    amqp_channel.queue_declare(q)
    for i in range(3):
        publish(amqp_channel, q, b"%d" % i)
    ok = amqp_channel.queue_declare(q, passive=True).method
    assert (ok.queue, ok.message_count, ok.consumer_count) == (q, 3, 0)
    got = Collector()
    amqp_channel.basic_consume(q, got)
    assert wait_until(amqp_channel.connection, lambda: len(got) == 3)
    ok = amqp_channel.queue_declare(q, passive=True).method
    # Delivered but unacknowledged messages are not "ready".
    assert (ok.queue, ok.message_count, ok.consumer_count) == (q, 0, 1)


def test_redeclare_with_other_arguments_closes_the_channel_with_406(amqp_channel, names):
    q = names("q")
    amqp_channel.queue_declare(q, arguments={"x-max-length": 10})
    code, text = channel_error(amqp_channel.queue_declare, q, arguments={"x-max-length": 20})
    assert code == 406
    assert text.startswith("PRECONDITION_FAILED - "), text


def test_exclusive_queue_is_locked_to_its_connection_and_deleted_with_it(
    module_broker, shared_amqp, names
):
    q = names("excl")
    owner = module_broker.connect()
    owner.channel().queue_declare(q, exclusive=True)
    other = shared_amqp.get()
    code, text = channel_error(other.channel().queue_declare, q)
    assert code == 405
    assert text.startswith("RESOURCE_LOCKED - "), text
    code, _ = channel_error(other.channel().basic_consume, q, Collector())
    assert code == 405
    owner.close()
    assert wait_gone(other.channel, q) == (404, f"NOT_FOUND - no queue '{q}' in vhost '/'")


def test_auto_delete_queue_goes_when_its_last_consumer_cancels(amqp_channel, shared_amqp, names):
    q = names("auto")
    amqp_channel.queue_declare(q, auto_delete=True)
    first = amqp_channel.basic_consume(q, Collector())
    second = amqp_channel.basic_consume(q, Collector())
    amqp_channel.basic_cancel(first)
    assert amqp_channel.queue_declare(q, passive=True).method.consumer_count == 1
    amqp_channel.basic_cancel(second)
    assert wait_gone(shared_amqp.get().channel, q) == (
        404,
        f"NOT_FOUND - no queue '{q}' in vhost '/'",
    )


def test_bound_queue_receives_until_unbound(amqp_channel, names):
    q = names("q")
    amqp_channel.queue_declare(q)
    amqp_channel.queue_bind(q, "amq.direct", routing_key="rk")
    amqp_channel.basic_publish("amq.direct", "rk", b"bound")
    amqp_channel.basic_publish("amq.direct", "other", b"other key")
    assert bodies(amqp_channel, q) == [b"bound"]
    amqp_channel.queue_unbind(q, "amq.direct", routing_key="rk")
    amqp_channel.basic_publish("amq.direct", "rk", b"after unbind")
    assert bodies(amqp_channel, q) == []


def test_purge_reports_and_removes_the_ready_messages(amqp_channel, names):
    q = names("q")
    amqp_channel.queue_declare(q)
    for i in range(3):
        publish(amqp_channel, q, b"%d" % i)
    assert amqp_channel.queue_purge(q).method.message_count == 3
    assert message_count(amqp_channel, q) == 0
    assert get_all(amqp_channel, q) == []


def test_delete_if_unused_refuses_a_queue_with_a_consumer_with_406(
    amqp_channel, shared_amqp, names
):
    q = names("q")
    amqp_channel.queue_declare(q)
    amqp_channel.basic_consume(q, Collector())
    other = shared_amqp.get().channel()
    code, text = channel_error(other.queue_delete, q, if_unused=True)
    assert code == 406
    assert text.startswith("PRECONDITION_FAILED - "), text
    assert amqp_channel.queue_declare(q, passive=True).method.consumer_count == 1


def test_delete_if_empty_refuses_a_queue_with_messages_with_406(
    amqp_channel, shared_amqp, names
):
    q = names("q")
    amqp_channel.queue_declare(q)
    publish(amqp_channel, q, b"keep me")
    code, text = channel_error(amqp_channel.queue_delete, q, if_empty=True)
    assert code == 406
    assert text.startswith("PRECONDITION_FAILED - "), text
    ch = shared_amqp.get().channel()
    assert message_count(ch, q) == 1
    assert ch.queue_delete(q).method.message_count == 1
    assert channel_error(ch.queue_declare, q, passive=True)[0] == 404


def test_message_ttl_expires_messages_left_in_the_queue(amqp_channel, names):
    q = names("ttl")
    amqp_channel.queue_declare(q, arguments={"x-message-ttl": 1000})
    publish(amqp_channel, q, b"short-lived")
    assert message_count(amqp_channel, q) == 1
    time.sleep(1.5)
    assert message_count(amqp_channel, q) == 0
    assert amqp_channel.basic_get(q, auto_ack=True) == (None, None, None)


def test_max_length_with_drop_head_keeps_the_newest_messages(amqp_channel, names):
    q = names("maxlen")
    amqp_channel.queue_declare(q, arguments={"x-max-length": 2, "x-overflow": "drop-head"})
    for body in (b"a", b"b", b"c"):
        publish(amqp_channel, q, body)
    assert message_count(amqp_channel, q) == 2
    assert bodies(amqp_channel, q) == [b"b", b"c"]


def test_rejected_message_is_dead_lettered_with_an_x_death_header(amqp_channel, names):
    q, dlx, dead = names("q"), names("dlx"), names("dead")
    amqp_channel.exchange_declare(dlx, "fanout")
    amqp_channel.queue_declare(dead)
    amqp_channel.queue_bind(dead, dlx)
    amqp_channel.queue_declare(q, arguments={"x-dead-letter-exchange": dlx})
    publish(amqp_channel, q, b"doomed", headers={"mine": "kept"})
    method, _, _ = amqp_channel.basic_get(q)
    amqp_channel.basic_reject(method.delivery_tag, requeue=False)
    got = get_all(amqp_channel, dead)
    assert [b for _, _, b in got] == [b"doomed"]
    method, props, _ = got[0]
    assert (method.exchange, method.routing_key) == (dlx, q)
    headers = dict(props.headers)
    deaths = headers.pop("x-death")
    assert len(deaths) == 1
    death = dict(deaths[0])
    assert death.pop("time") is not None
    assert death == {
        "count": 1,
        "reason": "rejected",
        "queue": q,
        "exchange": "",
        "routing-keys": [q],
    }
    assert headers == {
        "mine": "kept",
        "x-first-death-reason": "rejected",
        "x-first-death-queue": q,
        "x-first-death-exchange": "",
        "x-last-death-reason": "rejected",
        "x-last-death-queue": q,
        "x-last-death-exchange": "",
    }
    assert get_all(amqp_channel, q) == []


def test_expired_message_is_dead_lettered_with_reason_expired(amqp_channel, names):
    q, dead = names("q"), names("dead")
    amqp_channel.queue_declare(dead)
    amqp_channel.queue_declare(
        q,
        arguments={
            "x-message-ttl": 100,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": dead,
        },
    )
    publish(amqp_channel, q, b"expires")
    deadline = time.monotonic() + 3
    got = []
    while not got and time.monotonic() < deadline:
        time.sleep(0.05)
        got = get_all(amqp_channel, dead)
    assert [b for _, _, b in got] == [b"expires"]
    death = got[0][1].headers["x-death"][0]
    assert (death["reason"], death["queue"], death["count"]) == ("expired", q, 1)


def test_priority_queue_delivers_higher_priorities_first(amqp_channel, names):
    q = names("prio")
    amqp_channel.queue_declare(q, arguments={"x-max-priority": 10})
    for prio in (1, 5, 9, 3, 5):
        publish(amqp_channel, q, b"p%d" % prio, priority=prio)
    publish(amqp_channel, q, b"none")
    assert bodies(amqp_channel, q) == [b"p9", b"p5", b"p5", b"p3", b"p1", b"none"]
