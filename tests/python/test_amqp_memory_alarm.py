"""The memory alarm seen from AMQP: when queued message bytes pass
`memory_high_watermark`, connections that announced the
`connection.blocked` capability get `connection.blocked`, publishing
connections stop being read, and `connection.unblocked` follows once the
queues drain."""

import pika

from amqp_support import settle, wait_until


def test_publisher_is_blocked_above_the_watermark_and_unblocked_after_draining(make_broker):
    broker = make_broker(broker_options=["memory_high_watermark = 14000"])
    events = []
    publisher = broker.connect()
    publisher.add_on_connection_blocked_callback(lambda conn, frame: events.append("blocked"))
    publisher.add_on_connection_unblocked_callback(lambda conn, frame: events.append("unblocked"))
    pch = publisher.channel()
    pch.queue_declare("alarm-q")
    for _ in range(3):
        pch.basic_publish("", "alarm-q", b"x" * 5000)
    # Three messages of 5,000 bytes count about 16,600 (body + per-message
    # footprint): over the 14,000-byte watermark, which two (about 11,100)
    # are not.
    assert wait_until(publisher, lambda: events == ["blocked"], timeout=5.0), events
    # While blocked, what the publisher sends is not read.
    pch.basic_publish("", "alarm-q", b"during")
    consumer = broker.connect()
    cch = consumer.channel()
    settle(consumer, 0.5)
    assert cch.queue_declare("alarm-q", passive=True).method.message_count == 3
    drained = []
    for _ in range(3):
        method, _, body = cch.basic_get("alarm-q", auto_ack=True)
        assert method is not None
        drained.append(len(body))
    assert drained == [5000, 5000, 5000]
    assert wait_until(publisher, lambda: events == ["blocked", "unblocked"], timeout=5.0), events

    # Once unblocked, the held-back publish goes through, and new ones too.
    pch.basic_publish("", "alarm-q", b"after")
    assert wait_until(
        consumer, lambda: cch.queue_declare("alarm-q", passive=True).method.message_count == 2
    )
    assert [cch.basic_get("alarm-q", auto_ack=True)[2] for _ in range(2)] == [b"during", b"after"]
    consumer.close()
    publisher.close()
