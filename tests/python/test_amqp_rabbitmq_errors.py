"""AMQP error paths as RabbitMQ answers them.

Each case was run side by side against Debian's RabbitMQ 3.10 and Junction
with the same raw frames (issue 11); these are the ones where Junction
used to answer differently and now answers as RabbitMQ does. The
deliberate differences that remain are listed in docs/amqp.md.
"""

import struct

import pika

import amqp_raw
from amqp_raw import RawClient
from amqp_support import channel_error, publish
from test_amqp_robustness import close_then_eof


def test_ack_multiple_names_a_tag_that_must_be_outstanding(shared_amqp, names):
    conn = shared_amqp.get()
    ch = conn.channel()
    q = names("q")
    ch.queue_declare(q)
    publish(ch, q, b"one")
    method, _, body = ch.basic_get(q)
    assert (method.delivery_tag, body) == (1, b"one")
    # Tag 5 was never delivered: RabbitMQ refuses, even with tag 1 below it.
    code, text = channel_error(lambda: (ch.basic_ack(5, multiple=True), ch.basic_qos()))
    assert code == 406
    assert text == "PRECONDITION_FAILED - unknown delivery tag 5", text
    # The refused ack settled nothing: the message is back for a new get.
    ch2 = conn.channel()
    method, _, body = ch2.basic_get(q, auto_ack=True)
    assert body == b"one"


def test_inside_a_transaction_a_missing_exchange_is_refused_at_publish(shared_amqp, names):
    ch = shared_amqp.get().channel()
    ch.tx_select()
    ch.basic_publish(names("missing-x"), "k", b"x")
    # The error comes before any commit: a rollback now finds the channel closed.
    code, text = channel_error(ch.tx_rollback)
    assert code == 404
    assert text.startswith("NOT_FOUND - no exchange"), text


def test_inside_a_transaction_an_unknown_tag_is_refused_at_ack(shared_amqp):
    ch = shared_amqp.get().channel()
    ch.tx_select()
    ch.basic_ack(7)
    code, text = channel_error(ch.tx_rollback)
    assert (code, text) == (406, "PRECONDITION_FAILED - unknown delivery tag 7")


def test_exclusivity_of_an_existing_queue_cannot_change(broker, names):
    owner, other = broker.connect(), broker.connect()
    try:
        shared = names("shared")
        other.channel().queue_declare(shared)
        code, text = channel_error(owner.channel().queue_declare, shared, exclusive=True)
        assert code == 405
        assert text.startswith("RESOURCE_LOCKED - cannot obtain exclusive access"), text
        mine = names("mine")
        ch = owner.channel()
        ch.queue_declare(mine, exclusive=True)
        code, _ = channel_error(ch.queue_declare, mine, exclusive=False)
        assert code == 405
        # Same flags again, and passive declares, are fine.
        ch = owner.channel()
        assert ch.queue_declare(mine, exclusive=True).method.queue == mine
        assert ch.queue_declare(mine, passive=True).method.queue == mine
    finally:
        owner.close()
        other.close()


def test_queue_types_follow_rabbitmq_rules(amqp_channel, shared_amqp, names):
    conn = shared_amqp.get()
    code, text = channel_error(
        conn.channel().queue_declare, names("q"), arguments={"x-queue-type": "bogus"}
    )
    assert (code, text) == (
        406,
        "PRECONDITION_FAILED - invalid arg 'x-queue-type': unsupported queue type 'bogus'",
    )
    for kind in ("quorum", "stream"):
        q = names(kind)
        code, text = channel_error(
            conn.channel().queue_declare, q, arguments={"x-queue-type": kind}
        )
        assert (code, text) == (
            406,
            f"PRECONDITION_FAILED - invalid property 'non-durable' for queue '{q}' in vhost '/'",
        )
        ch = conn.channel()
        ch.queue_declare(q, durable=True, arguments={"x-queue-type": kind})
        code, text = channel_error(ch.queue_declare, q, durable=True)
        assert code == 406
        assert text == (
            f"PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue '{q}' "
            f"in vhost '/': received none but current is '{kind}'"
        ), text
        conn.channel().queue_delete(q)
    # classic is the same as saying nothing.
    q = names("classic")
    ch = conn.channel()
    ch.queue_declare(q)
    ch.queue_declare(q, arguments={"x-queue-type": "classic"})


def test_queue_inequivalence_is_worded_as_rabbitmq_words_it(shared_amqp, names):
    conn = shared_amqp.get()
    q = names("q")
    conn.channel().queue_declare(q)
    code, text = channel_error(conn.channel().queue_declare, q, durable=True)
    assert (code, text) == (
        406,
        f"PRECONDITION_FAILED - inequivalent arg 'durable' for queue '{q}' in vhost '/': "
        "received 'true' but current is 'false'",
    )
    code, text = channel_error(
        conn.channel().queue_declare, q, arguments={"x-message-ttl": 2000}
    )
    assert (code, text) == (
        406,
        f"PRECONDITION_FAILED - inequivalent arg 'x-message-ttl' for queue '{q}' in vhost '/': "
        "received '2000' but current is none",
    )


def test_exchange_redeclare_compares_only_the_alternate_exchange_argument(
    shared_amqp, names
):
    conn = shared_amqp.get()
    x = names("x")
    ch = conn.channel()
    ch.exchange_declare(x, "direct", arguments={"x-foo": 1})
    # Another unknown argument: equivalent for RabbitMQ.
    ch.exchange_declare(x, "direct", arguments={"x-foo": 2, "x-bar": True})
    code, text = channel_error(
        ch.exchange_declare, x, "direct", arguments={"alternate-exchange": "ae"}
    )
    assert (code, text) == (
        406,
        f"PRECONDITION_FAILED - inequivalent arg 'alternate-exchange' for exchange '{x}': "
        "received 'ae' but current is none",
    )


def test_a_channel_method_on_channel_0_is_a_channel_error(module_broker):
    with RawClient(module_broker.amqp_port) as c:
        c.handshake()
        c.send(
            amqp_raw.method_frame(
                0,
                amqp_raw.QUEUE_DECLARE,
                struct.pack(">H", 0) + amqp_raw.shortstr("q") + b"\x00" + amqp_raw.empty_table(),
            )
        )
        close = close_then_eof(c)
    assert (close.reply_code, close.class_id, close.method_id) == (504, 50, 10)
    assert close.reply_text.startswith("CHANNEL_ERROR - "), close.reply_text


def test_the_broker_still_serves_after_these(module_broker, names):
    conn = pika.BlockingConnection(
        pika.ConnectionParameters("127.0.0.1", module_broker.amqp_port)
    )
    try:
        ch = conn.channel()
        q = names("q")
        ch.queue_declare(q)
        publish(ch, q, b"ok")
        assert ch.basic_get(q, auto_ack=True)[2] == b"ok"
    finally:
        conn.close()
