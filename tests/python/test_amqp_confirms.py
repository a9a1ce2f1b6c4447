"""Publisher confirms (RabbitMQ's confirm class) and AMQP 0-9-1
transactions (tx class)."""

import pika
import pytest
from pika.exceptions import NackError

from amqp_support import ConfirmPublisher, bodies, channel_error, get_all, message_count, publish

PERSISTENT = pika.BasicProperties(delivery_mode=2)


def test_confirmed_persistent_publishes_to_a_durable_queue_are_all_acked(amqp_channel, names):
    q = names("durable")
    amqp_channel.queue_declare(q, durable=True)
    amqp_channel.confirm_delivery()
    sent = [b"p%d" % i for i in range(50)]
    for body in sent:
        # Raises NackError (or UnroutableError) unless basic.ack came back.
        amqp_channel.basic_publish("", q, body, PERSISTENT, mandatory=True)
    assert message_count(amqp_channel, q) == 50
    got = get_all(amqp_channel, q)
    assert [b for _, _, b in got] == sent
    assert {p.delivery_mode for _, p, _ in got} == {2}


def test_publish_to_a_full_reject_publish_queue_is_nacked(amqp_channel, names):
    q = names("full")
    amqp_channel.queue_declare(q, arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
    amqp_channel.confirm_delivery()
    amqp_channel.basic_publish("", q, b"first")
    with pytest.raises(NackError):
        amqp_channel.basic_publish("", q, b"second")
    assert bodies(amqp_channel, q) == [b"first"]
    # Room again: the next publish is acked (no exception) and kept.
    amqp_channel.basic_publish("", q, b"third")
    assert bodies(amqp_channel, q) == [b"third"]


class RecordingPublisher(ConfirmPublisher):
    """Keeps every confirm frame as (method, delivery tag, multiple)."""

    def __init__(self, broker):
        self.frames = []
        super().__init__(broker)

    def _on_confirm(self, frame):
        m = frame.method
        self.frames.append((type(m).__name__, m.delivery_tag, m.multiple))
        super()._on_confirm(frame)


def test_confirms_resolved_together_are_coalesced_and_never_cover_a_nack(module_broker, names):
    """Confirms that resolve in one store commit go out as one basic.ack
    with multiple set (as RabbitMQ sends them), and a nack ends a run of
    acks: every tag is acked or nacked exactly once, the right one each
    (the queue takes 150, refuses the rest)."""
    q = names("coalesced")
    admin = module_broker.connect()
    ch = admin.channel()
    ch.queue_declare(
        q, durable=True, arguments={"x-max-length": 150, "x-overflow": "reject-publish"}
    )
    pub = RecordingPublisher(module_broker)
    frames = pub.frames
    try:
        for i in range(200):
            pub.publish("", q, b"m%d" % i, PERSISTENT)
        assert pub.run_until(lambda: len(pub.acked) + len(pub.nacked) == 200, 15), frames
        assert pub.acked == set(range(1, 151))
        assert pub.nacked == set(range(151, 201))
        assert any(multiple for kind, _, multiple in frames if kind == "Ack"), frames
        assert len(frames) < 200
        assert message_count(ch, q) == 150
    finally:
        pub.close()
        ch.queue_delete(q)
        admin.close()


def test_confirm_select_on_a_tx_channel_closes_it_with_406(amqp_channel):
    amqp_channel.tx_select()
    code, text = channel_error(amqp_channel.confirm_delivery)
    assert (code, text) == (406, "PRECONDITION_FAILED - cannot switch from tx to confirm mode")


def test_rolled_back_publish_never_reaches_the_queue(amqp_channel, shared_amqp, names):
    q = names("q")
    amqp_channel.queue_declare(q)
    observer = shared_amqp.get().channel()
    amqp_channel.tx_select()
    publish(amqp_channel, q, b"rolled back")
    assert message_count(observer, q) == 0
    amqp_channel.tx_rollback()
    assert message_count(observer, q) == 0
    publish(amqp_channel, q, b"committed")
    assert message_count(observer, q) == 0
    amqp_channel.tx_commit()
    assert bodies(observer, q) == [b"committed"]


def test_ack_in_a_rolled_back_tx_leaves_the_message_unacked(amqp_channel, shared_amqp, names):
    q = names("q")
    observer = shared_amqp.get().channel()
    observer.queue_declare(q)
    publish(observer, q, b"m")
    amqp_channel.tx_select()
    method, _, body = amqp_channel.basic_get(q)
    assert body == b"m"
    amqp_channel.basic_ack(method.delivery_tag)
    amqp_channel.tx_rollback()
    assert message_count(observer, q) == 0
    amqp_channel.close()
    got = get_all(observer, q)
    assert [(m.redelivered, b) for m, _, b in got] == [(True, b"m")]


def test_ack_in_a_committed_tx_removes_the_message(amqp_channel, shared_amqp, names):
    q = names("q")
    observer = shared_amqp.get().channel()
    observer.queue_declare(q)
    publish(observer, q, b"m")
    amqp_channel.tx_select()
    method, _, _ = amqp_channel.basic_get(q)
    amqp_channel.basic_ack(method.delivery_tag)
    amqp_channel.tx_commit()
    amqp_channel.close()
    assert get_all(observer, q) == []
