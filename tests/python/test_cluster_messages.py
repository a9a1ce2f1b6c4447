"""Messages across the nodes of a cluster (docs/cluster.md "Messages
across nodes"), with three real `junction` processes: a publish on one
node reaches a durable queue that lives on another, from AMQP (pika, with
confirms), MQTT (paho, QoS 1) and STOMP (stomp.py, with receipts), in
publish order, confirmed only once the queue's node has it; a confirmed
persistent message survives kill -9 of that node; a queue whose node is
down makes the publisher's confirm a nack. Consumers on other nodes:
test_cluster_consumers.py."""

import pika
import pika.exceptions
import pytest

from mqtt_support import V5
from mqtt_support import Client as MqttClient
from stomp_support import Client as StompClient
from test_cluster import agreed_leader, wait_for
from test_cluster_topology import amqp, formed


def drain(b, queue, n, timeout=10.0):
    """The bodies of the first `n` messages of `queue` on node `b`, got
    (and acknowledged) one by one."""
    conn = amqp(b)
    ch = conn.channel()
    got = []

    def more():
        while len(got) < n:
            method, _, body = ch.basic_get(queue, auto_ack=True)
            if method is None:
                break
            got.append(body)
        return len(got) >= n or f"{len(got)} of {n}"

    try:
        wait_for(f"{n} messages in {queue}", more, timeout)
    finally:
        conn.close()
    return got


def depth(b, queue):
    conn = amqp(b)
    try:
        return conn.channel().queue_declare(queue, passive=True).method.message_count
    finally:
        conn.close()


@pytest.mark.deadline(240)
def test_a_publish_on_any_node_reaches_a_queue_on_another_in_order_and_survives_kill9(make_broker, tmp_path):
    brokers, names = formed(make_broker, tmp_path)
    n1, n2, n3 = brokers

    # On n1: a durable queue bound to amq.topic (an MQTT topic's exchange)
    # and to a direct exchange.
    conn = amqp(n1)
    ch = conn.channel()
    ch.exchange_declare("orders", "direct", durable=True)
    ch.queue_declare("plant", durable=True)
    ch.queue_bind("plant", "orders", routing_key="new")
    ch.queue_bind("plant", "amq.topic", routing_key="plant.*.temp")
    conn.close()
    wait_for("the queue known on n2 and n3", lambda: all(depth(b, "plant") == 0 for b in (n2, n3)))

    # AMQP with confirms on n2: the default exchange and the direct one,
    # mandatory (routed: no basic.return), persistent.
    conn = amqp(n2)
    ch = conn.channel()
    ch.confirm_delivery()
    returned = []
    ch.add_on_return_callback(lambda *a: returned.append(a))
    persistent = pika.BasicProperties(delivery_mode=2)
    for i in range(100):
        exchange, key = ("", "plant") if i % 2 == 0 else ("orders", "new")
        ch.basic_publish(exchange, key, f"amqp-{i}".encode(), persistent, mandatory=True)
    conn.process_data_events(0)
    conn.close()
    assert returned == []

    # MQTT QoS 1 on n3 (PUBACK after n1 has it), STOMP with receipts on n2.
    mqtt = MqttClient(n3)
    mqtt.connect()
    for i in range(20):
        assert mqtt.publish(f"plant/{i}/temp", f"mqtt-{i}".encode(), qos=1) == 0
    mqtt.close()
    stomp = StompClient(n2)
    stomp.connected()
    for i in range(20):
        receipt = stomp.send("/queue/plant", f"stomp-{i}", headers={"persistent": "true"}, receipt=True)
        assert receipt.cmd == "RECEIPT", receipt
    stomp.close()

    # Every confirmed message is on n1 at once, each protocol's in order.
    assert depth(n1, "plant") == 140

    # kill -9 of n1 and back: the confirmed persistent ones are there.
    n1.kill9()
    n1.start()
    wait_for("the cluster together", lambda: agreed_leader(brokers, names))
    got = drain(n1, "plant", 140)
    assert [m for m in got if m.startswith(b"amqp-")] == [f"amqp-{i}".encode() for i in range(100)]
    assert [m for m in got if m.startswith(b"stomp-")] == [f"stomp-{i}".encode() for i in range(20)]
    # MQTT QoS 1 publishes are persistent (docs/mqtt.md).
    assert [m for m in got if m.startswith(b"mqtt-")] == [f"mqtt-{i}".encode() for i in range(20)]
    assert len(got) == 140


@pytest.mark.deadline(180)
def test_a_publish_for_a_queue_whose_node_is_down_is_nacked(make_broker, tmp_path):
    brokers, names = formed(make_broker, tmp_path)
    n1, n2, n3 = brokers
    conn = amqp(n1)
    ch = conn.channel()
    ch.queue_declare("far", durable=True)
    ch.queue_bind("far", "amq.topic", routing_key="far.#")
    conn.close()
    wait_for("far known on n2", lambda: depth(n2, "far") == 0)

    # With n1 up, a confirm is an ack; with n1 down, a nack (and nothing
    # is kept on n2: the queue is n1's).
    conn = amqp(n2)
    ch = conn.channel()
    ch.confirm_delivery()
    ch.basic_publish("", "far", b"one", pika.BasicProperties(delivery_mode=2))
    n1.kill9()
    with pytest.raises(pika.exceptions.NackError):
        ch.basic_publish("", "far", b"two", pika.BasicProperties(delivery_mode=2))
    conn.close()
    # MQTT 5: the PUBACK carries an error reason code (0x80 and up).
    mqtt = MqttClient(n2, version=V5)
    mqtt.connect()
    assert mqtt.publish("far/1", b"three", qos=1) >= 0x80
    mqtt.close()
    n1.start()
    wait_for("the cluster together", lambda: agreed_leader(brokers, names))
    assert drain(n1, "far", 1) == [b"one"]
    assert depth(n1, "far") == 0
