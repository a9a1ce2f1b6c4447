"""AMQP 0-9-1 exchange class: declare, passive, delete, internal,
alternate exchanges, exchange-to-exchange bindings and the errors each
method can end in."""

import pytest
from pika.exceptions import ChannelClosedByBroker

from amqp_support import bodies, channel_error


def test_declared_exchange_passes_passive_declare_until_deleted(amqp_channel, names):
    x = names("x")
    amqp_channel.exchange_declare(x, "direct")
    assert amqp_channel.exchange_declare(x, passive=True).method.NAME == "Exchange.DeclareOk"
    assert amqp_channel.exchange_delete(x).method.NAME == "Exchange.DeleteOk"
    assert channel_error(amqp_channel.exchange_declare, x, passive=True) == (
        404,
        f"NOT_FOUND - no exchange '{x}'",
    )


def test_delete_if_unused_refuses_an_exchange_with_bindings_with_406(
    amqp_channel, shared_amqp, names
):
    x, q = names("x"), names("q")
    amqp_channel.exchange_declare(x, "fanout")
    amqp_channel.queue_declare(q)
    amqp_channel.queue_bind(q, x)
    code, text = channel_error(amqp_channel.exchange_delete, x, if_unused=True)
    assert code == 406
    assert text.startswith("PRECONDITION_FAILED - "), text
    ch = shared_amqp.get().channel()
    ch.exchange_declare(x, passive=True)
    ch.queue_unbind(q, x)
    assert ch.exchange_delete(x, if_unused=True).method.NAME == "Exchange.DeleteOk"
    assert channel_error(ch.exchange_declare, x, passive=True)[0] == 404


def test_internal_exchange_routes_from_exchanges_but_refuses_publishes_with_403(
    amqp_channel, shared_amqp, names
):
    src, internal, q = names("src"), names("internal"), names("q")
    amqp_channel.exchange_declare(src, "fanout")
    amqp_channel.exchange_declare(internal, "fanout", internal=True)
    amqp_channel.exchange_bind(destination=internal, source=src)
    amqp_channel.queue_declare(q)
    amqp_channel.queue_bind(q, internal)
    amqp_channel.basic_publish(src, "", b"via src")
    assert bodies(amqp_channel, q) == [b"via src"]
    amqp_channel.basic_publish(internal, "", b"direct")
    assert channel_error(amqp_channel.queue_declare, q, passive=True) == (
        403,
        f"ACCESS_REFUSED - cannot publish to internal exchange '{internal}'",
    )
    assert bodies(shared_amqp.get().channel(), q) == []


def test_unroutable_message_goes_to_the_alternate_exchange(amqp_channel, names):
    ae, main, q_ae, q_main = names("ae"), names("main"), names("q-ae"), names("q-main")
    amqp_channel.exchange_declare(ae, "fanout")
    amqp_channel.queue_declare(q_ae)
    amqp_channel.queue_bind(q_ae, ae)
    amqp_channel.exchange_declare(main, "direct", arguments={"alternate-exchange": ae})
    amqp_channel.queue_declare(q_main)
    amqp_channel.queue_bind(q_main, main, routing_key="known")
    amqp_channel.basic_publish(main, "known", b"routed")
    amqp_channel.basic_publish(main, "unknown", b"unroutable")
    assert bodies(amqp_channel, q_main) == [b"routed"]
    assert bodies(amqp_channel, q_ae) == [b"unroutable"]


def test_exchange_to_exchange_binding_routes_until_unbound(amqp_channel, names):
    src, dst, q = names("src"), names("dst"), names("q")
    amqp_channel.exchange_declare(src, "topic")
    amqp_channel.exchange_declare(dst, "fanout")
    amqp_channel.queue_declare(q)
    amqp_channel.queue_bind(q, dst)
    amqp_channel.exchange_bind(destination=dst, source=src, routing_key="a.*")
    amqp_channel.basic_publish(src, "a.b", b"matches")
    amqp_channel.basic_publish(src, "b.c", b"does not match")
    assert bodies(amqp_channel, q) == [b"matches"]
    amqp_channel.exchange_unbind(destination=dst, source=src, routing_key="a.*")
    amqp_channel.basic_publish(src, "a.b", b"after unbind")
    assert bodies(amqp_channel, q) == []


def test_unknown_exchange_type_closes_the_channel_with_406(module_broker, names):
    conn = module_broker.connect()
    ch = conn.channel()
    with pytest.raises(ChannelClosedByBroker) as e:
        ch.exchange_declare(names("x"), "x-no-such-type")
    assert e.value.reply_code == 406
    assert e.value.reply_text.startswith("PRECONDITION_FAILED - "), e.value.reply_text
    assert "x-no-such-type" in e.value.reply_text
    # Only the channel closed: the connection goes on.
    assert conn.is_open
    conn.channel().queue_declare(names("q"), exclusive=True)
    conn.close()


def test_redeclaring_an_exchange_with_another_type_closes_the_channel_with_406(
    amqp_channel, shared_amqp, names
):
    x = names("x")
    amqp_channel.exchange_declare(x, "direct")
    code, text = channel_error(amqp_channel.exchange_declare, x, "fanout")
    assert code == 406
    assert text == (
        f"PRECONDITION_FAILED - inequivalent arg 'type' for exchange '{x}': "
        "received 'fanout' but current is 'direct'"
    ), text
    assert shared_amqp.get().is_open


def test_publish_to_a_missing_exchange_closes_the_channel_with_404(amqp_channel, names):
    x = names("missing")
    amqp_channel.basic_publish(x, "k", b"lost")
    assert channel_error(amqp_channel.queue_declare, "", exclusive=True) == (
        404,
        f"NOT_FOUND - no exchange '{x}'",
    )


def test_deleting_and_unbinding_what_does_not_exist_is_ok_as_in_rabbitmq(module_broker, names):
    # RabbitMQ 3.x answers delete-ok / unbind-ok for an exchange or queue
    # that does not exist (checked against Debian's 3.10); cleanup code in
    # clients and their test suites relies on it.
    conn = module_broker.connect()
    ch = conn.channel()
    missing_q, missing_x = names("missing-q"), names("missing-x")
    assert ch.queue_delete(missing_q).method.message_count == 0
    ch.exchange_delete(missing_x)
    ch.queue_unbind(missing_q, "amq.topic", "k")
    # The channel is still open, and nothing was created on the way.
    assert ch.is_open
    with pytest.raises(ChannelClosedByBroker) as e:
        ch.queue_declare(missing_q, passive=True)
    assert e.value.reply_code == 404
    conn.close()
