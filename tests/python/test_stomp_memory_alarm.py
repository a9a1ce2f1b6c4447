"""The memory alarm seen from STOMP: once queued message bytes pass
`memory_high_watermark`, a connection that has sent is not read any more
(its next SEND gets no RECEIPT), while consumers go on; when the queue
drains, the held-back SEND is read, stored and receipted."""

import time

from amqp_support import settle, wait_until
from stomp_support import stomp_clients, uid  # noqa: F401 (fixture)


def test_a_stomp_publisher_is_not_read_above_the_watermark_until_the_queue_drains(
    make_broker, stomp_clients
):
    broker = make_broker(broker_options=["memory_high_watermark = 14000"])
    q = uid("alarm")
    publisher = stomp_clients.connect(broker)
    for _ in range(3):
        publisher.send(f"/queue/{q}", b"x" * 5000, receipt=True)
    # Three 5,000-byte messages count about 16,600 bytes (body plus the
    # per-message footprint): over the watermark. The alarm is checked four
    # times a second; give it time to fire.
    time.sleep(1.0)
    held = uid("held")
    publisher.send(f"/queue/{q}", b"during", headers={"receipt": held})
    time.sleep(1.5)
    assert not any(
        f.cmd == "RECEIPT" and f.headers.get("receipt-id") == held
        for f in publisher.listener.frames
    ), "a SEND was read while the memory alarm was on"

    consumer = broker.connect()
    ch = consumer.channel()
    settle(consumer, 0.2)
    assert ch.queue_declare(q, durable=True, passive=True).method.message_count == 3
    drained = [len(ch.basic_get(q, auto_ack=True)[2]) for _ in range(3)]
    assert drained == [5000, 5000, 5000]

    # Drained: the alarm clears, the held-back SEND is read and receipted.
    publisher.wait_receipt(held, timeout=10)
    assert wait_until(
        consumer, lambda: ch.queue_declare(q, durable=True, passive=True).method.message_count == 1
    )
    assert ch.basic_get(q, auto_ack=True)[2] == b"during"
    consumer.close()


def test_messages_on_their_way_to_a_subscriber_that_stopped_reading_are_counted(
    make_broker, stomp_clients
):
    # An ack:auto subscriber takes messages out of their queue as soon as
    # they are handed to its connection; while it does not read, they sit
    # in the connection's window and outbound buffer, and the memory alarm
    # must still see them (docs/limits.md).
    import socket

    from admin_support import metric

    broker = make_broker(broker_options=["write_timeout_secs = 60"])
    q = uid("out")
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", broker.stomp_port))
    s.sendall(
        b"CONNECT\naccept-version:1.2\nhost:/\nlogin:guest\npasscode:guest\n\n\0"
        + f"SUBSCRIBE\nid:s\ndestination:/queue/{q}\nack:auto\nreceipt:r\n\n\0".encode()
    )
    seen = b""
    deadline = time.monotonic() + 10
    while b"RECEIPT" not in seen and time.monotonic() < deadline:
        seen += s.recv(4096)
    assert b"RECEIPT" in seen
    # From now on the subscriber reads nothing.
    consumer = broker.connect()
    ch = consumer.channel()
    body = b"x" * 65536
    for _ in range(300):
        ch.basic_publish("", q, body)
    total = 300 * len(body)

    def handed_out():
        return ch.queue_declare(q, durable=True, passive=True).method.message_count == 0

    assert wait_until(consumer, handed_out, timeout=10)
    time.sleep(0.6)  # the alarm's count runs four times a second
    counted = metric(broker, "junction_queued_message_bytes")
    # Whatever the kernel's socket buffers took is not held by the broker;
    # the rest (most of it: the client reads nothing) must be counted.
    assert counted >= total // 2, (counted, total)
    s.close()
    consumer.close()
