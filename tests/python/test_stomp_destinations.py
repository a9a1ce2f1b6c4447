"""STOMP destinations beyond the basics: RabbitMQ's queue-shaping
SUBSCRIBE headers (x-queue-name, x-message-ttl into a dead-letter
exchange, x-max-length, x-max-priority, auto-delete), durable topic
subscriptions across a disconnection and across a broker restart,
/temp-queue/ request/reply between two STOMP clients, /amq/queue/ and
/reply-queue/, and destinations the broker refuses."""

import time

import pika.exceptions
import pytest

from stomp_support import (
    stomp_clients,  # noqa: F401 (fixture)
    uid,
    wait_until,
)


LOCKED = "exclusive to another connection"


def queue_exists(broker, name):
    """Whether queue `name` exists in "/", by a passive declare on a fresh
    pika connection: its message count, None (404), or LOCKED (405: an
    exclusive queue of another connection)."""
    conn = broker.connect()
    try:
        ch = conn.channel()
        try:
            ok = ch.queue_declare(name, passive=True)
            return ok.method.message_count
        except pika.exceptions.ChannelClosedByBroker as e:
            assert e.reply_code in (404, 405), e
            return None if e.reply_code == 404 else LOCKED
    finally:
        if conn.is_open:
            conn.close()


# --- queue-shaping headers ---------------------------------------------------------


def test_x_queue_name_names_the_subscription_queue(module_broker, stomp_clients):
    k, qname = uid("k"), uid("named")
    c = stomp_clients.connect(module_broker)
    c.subscribe(f"/topic/{k}", id="s", headers={"x-queue-name": qname})
    assert queue_exists(module_broker, qname) == LOCKED
    c.send(f"/topic/{k}", "via topic")
    c.send(f"/amq/queue/{qname}", "via amq queue", receipt=True)
    got = c.exactly(2)
    assert [(m.body, m.headers["destination"]) for m in got] == [
        (b"via topic", f"/topic/{k}"),
        (b"via amq queue", f"/queue/{qname}"),
    ]


def test_a_plain_topic_subscription_queue_goes_away_with_the_subscription(module_broker, stomp_clients):
    k, qname = uid("k"), uid("named")
    c = stomp_clients.connect(module_broker)
    c.subscribe(f"/topic/{k}", id="s", headers={"x-queue-name": qname})
    assert queue_exists(module_broker, qname) == LOCKED
    c.unsubscribe("s")
    assert wait_until(lambda: queue_exists(module_broker, qname) is None)


def test_exclusive_and_auto_delete_headers_shape_the_subscription_queue(module_broker, stomp_clients):
    k, qname = uid("k"), uid("shared")
    c = stomp_clients.connect(module_broker)
    c.subscribe(
        f"/topic/{k}",
        id="s",
        headers={"x-queue-name": qname, "exclusive": "false", "auto-delete": "false"},
    )
    assert queue_exists(module_broker, qname) == 0
    c.unsubscribe("s")
    c.send(f"/topic/{k}", "kept while nobody listens", receipt=True)
    assert queue_exists(module_broker, qname) == 1
    other = stomp_clients.connect(module_broker)
    other.subscribe(f"/amq/queue/{qname}")
    assert [m.body for m in other.exactly(1)] == [b"kept while nobody listens"]


def test_x_message_ttl_expires_into_the_dead_letter_exchange(module_broker, stomp_clients, names):
    src, dlq = names("src"), names("dlq")
    shape = {
        "x-message-ttl": "300",
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": dlq,
    }
    c = stomp_clients.connect(module_broker)
    c.subscribe(f"/queue/{dlq}", id="dead")
    c.subscribe(f"/queue/{src}", id="shape", headers=shape)
    c.unsubscribe("shape")  # the durable queue stays, with its arguments
    c.send(f"/queue/{src}", "short-lived", {"x-n": "1"}, receipt=True)
    (d,) = c.wait_messages(1, timeout=5)
    assert (d.headers["subscription"], d.body, d.headers["x-n"]) == ("dead", b"short-lived", "1")
    assert d.headers["destination"] == f"/queue/{dlq}"
    assert queue_exists(module_broker, src) == 0
    c.subscribe(f"/queue/{src}", id="again", headers=shape)
    assert len(c.exactly(1)) == 1


def test_per_message_expiration_header_expires_it(module_broker, stomp_clients, names):
    q = names("q")
    c = stomp_clients.connect(module_broker)
    c.send(f"/queue/{q}", "gone", {"expiration": "100"})
    c.send(f"/queue/{q}", "kept", {"expiration": "60000"}, receipt=True)
    assert wait_until(lambda: queue_exists(module_broker, q) == 1, timeout=5)
    c.subscribe(f"/queue/{q}")
    assert [m.body for m in c.exactly(1)] == [b"kept"]


def test_x_max_length_drops_from_the_head(module_broker, stomp_clients, names):
    q = names("q")
    c = stomp_clients.connect(module_broker)
    c.subscribe(f"/queue/{q}", id="shape", headers={"x-max-length": "3"})
    c.unsubscribe("shape")
    for i in range(5):
        c.send(f"/queue/{q}", f"m{i}", receipt=True)
    assert queue_exists(module_broker, q) == 3
    c.subscribe(f"/queue/{q}", id="read", headers={"x-max-length": "3"})
    assert [m.body for m in c.exactly(3)] == [b"m2", b"m3", b"m4"]


def test_x_max_length_bytes_drops_from_the_head(module_broker, stomp_clients, names):
    q = names("q")
    c = stomp_clients.connect(module_broker)
    c.subscribe(f"/queue/{q}", id="shape", headers={"x-max-length-bytes": "10"})
    c.unsubscribe("shape")
    for i in range(4):
        c.send(f"/queue/{q}", f"abcd{i}", receipt=True)  # 5 bytes each
    c.subscribe(f"/queue/{q}", id="read", headers={"x-max-length-bytes": "10"})
    assert [m.body for m in c.exactly(2)] == [b"abcd2", b"abcd3"]


def test_x_overflow_reject_publish_refuses_the_send_with_an_error(module_broker, stomp_clients, names):
    # The refused SEND's ERROR names its receipt (STOMP 1.2: an ERROR
    # caused by a frame with a receipt carries its receipt-id).
    q = names("q")
    shape = {"x-max-length": "2", "x-overflow": "reject-publish"}
    c = stomp_clients.connect(module_broker)
    c.subscribe(f"/queue/{q}", id="shape", headers=shape)
    c.unsubscribe("shape")
    raw = stomp_clients.raw(module_broker).connected()
    for i in range(3):
        raw.send_frame("SEND", {"destination": f"/queue/{q}", "receipt": f"r{i}"}, b"m%d" % i)
    assert raw.expect("RECEIPT").headers["receipt-id"] == "r0"
    assert raw.expect("RECEIPT").headers["receipt-id"] == "r1"
    f = raw.expect_error_and_close()
    assert f.headers["message"] == "message not stored"
    assert f.headers.get("receipt-id") == "r2", f
    c.subscribe(f"/queue/{q}", id="read", headers=shape)
    assert [m.body for m in c.exactly(2)] == [b"m0", b"m1"]


def test_x_expires_deletes_an_unused_queue(module_broker, stomp_clients, names):
    q = names("q")
    c = stomp_clients.connect(module_broker)
    c.subscribe(f"/queue/{q}", id="s", headers={"x-expires": "500"})
    c.unsubscribe("s")
    assert queue_exists(module_broker, q) == 0  # (a declare renews the lease)
    time.sleep(1.5)
    assert queue_exists(module_broker, q) is None


def test_x_queue_type_classic_is_accepted(module_broker, stomp_clients, names):
    q = names("q")
    c = stomp_clients.connect(module_broker)
    c.subscribe(f"/queue/{q}", headers={"x-queue-type": "classic"})
    c.send(f"/queue/{q}", "typed", receipt=True)
    assert [m.body for m in c.exactly(1)] == [b"typed"]


def test_x_max_priority_delivers_higher_priorities_first(module_broker, stomp_clients, names):
    q = names("q")
    c = stomp_clients.connect(module_broker)
    c.subscribe(f"/queue/{q}", id="shape", headers={"x-max-priority": "10"})
    c.unsubscribe("shape")
    for body, prio in [("low", "1"), ("high", "9"), ("mid", "5"), ("none", None)]:
        c.send(f"/queue/{q}", body, {"priority": prio} if prio else {}, receipt=True)
    c.subscribe(f"/queue/{q}", id="read", headers={"x-max-priority": "10"})
    got = c.exactly(4)
    assert [m.body for m in got] == [b"high", b"mid", b"low", b"none"]
    assert [m.headers.get("priority") for m in got] == ["9", "5", "1", None]


def test_queue_arguments_that_differ_from_the_existing_queue_are_refused(module_broker, stomp_clients, names):
    q = names("q")
    c = stomp_clients.connect(module_broker)
    c.subscribe(f"/queue/{q}", id="a", headers={"x-max-length": "3"})
    other = stomp_clients.connect(module_broker)
    other.subscribe(f"/queue/{q}", id="b", headers={"x-max-length": "4"}, receipt=False)
    e = other.wait_error()
    assert e.headers["message"]
    other.wait_disconnected()
    c.send(f"/queue/{q}", "still fine", receipt=True)
    assert [m.body for m in c.exactly(1)] == [b"still fine"]


def test_a_non_integer_queue_argument_is_an_error(module_broker, stomp_clients, names):
    c = stomp_clients.connect(module_broker)
    c.subscribe(f"/queue/{names('q')}", headers={"x-max-length": "many"}, receipt=False)
    e = c.wait_error()
    assert e.headers["message"] == "invalid header"
    c.wait_disconnected()


# --- durable topic subscriptions -------------------------------------------------------


@pytest.mark.parametrize("flag", ["durable", "persistent"])
def test_durable_subscription_keeps_messages_while_the_subscriber_is_away(
    module_broker, stomp_clients, flag
):
    k, cid = uid("k"), uid("cid")
    sub = stomp_clients.connect(module_broker, headers={"client-id": cid})
    sub.subscribe(f"/topic/{k}", id="d1", headers={flag: "true"})
    sub.disconnect()
    qname = f"stomp-subscription-{cid}-d1"
    assert queue_exists(module_broker, qname) == 0
    pub = stomp_clients.connect(module_broker)
    for i in range(3):
        pub.send(f"/topic/{k}", f"away{i}", {"persistent": "true"}, receipt=True)
    assert queue_exists(module_broker, qname) == 3
    back = stomp_clients.connect(module_broker, headers={"client-id": cid})
    back.subscribe(f"/topic/{k}", id="d1", headers={flag: "true"})
    got = back.exactly(3)
    assert [m.body for m in got] == [b"away0", b"away1", b"away2"]
    assert [m.headers["destination"] for m in got] == [f"/topic/{k}"] * 3
    assert [m.headers["subscription"] for m in got] == ["d1"] * 3
    # UNSUBSCRIBE with durable:true ends it
    back.unsubscribe("d1", headers={"durable": "true"})
    assert queue_exists(module_broker, qname) is None


def test_durable_subscription_without_client_id_is_named_after_the_login(module_broker, stomp_clients):
    k, sid = uid("k"), uid("s")
    c = stomp_clients.connect(module_broker)
    c.subscribe(f"/topic/{k}", id=sid, headers={"durable": "true"})
    assert queue_exists(module_broker, f"stomp-subscription-guest-{sid}") == 0
    c.unsubscribe(sid, headers={"durable": "true"})
    assert queue_exists(module_broker, f"stomp-subscription-guest-{sid}") is None


def test_activemq_subscription_name_makes_a_durable_subscription(module_broker, stomp_clients):
    k, cid, name = uid("k"), uid("cid"), uid("nm")
    c = stomp_clients.connect(module_broker, headers={"client-id": cid})
    c.subscribe(f"/topic/{k}", id="x", headers={"activemq.subscriptionName": name})
    c.disconnect()
    pub = stomp_clients.connect(module_broker)
    pub.send(f"/topic/{k}", "kept", {"persistent": "true"}, receipt=True)
    back = stomp_clients.connect(module_broker, headers={"client-id": cid})
    back.subscribe(f"/topic/{k}", id="x", headers={"activemq.subscriptionName": name})
    assert [m.body for m in back.exactly(1)] == [b"kept"]


def test_plain_unsubscribe_keeps_a_durable_subscription(module_broker, stomp_clients):
    k, cid = uid("k"), uid("cid")
    c = stomp_clients.connect(module_broker, headers={"client-id": cid})
    c.subscribe(f"/topic/{k}", id="d", headers={"durable": "true"})
    c.unsubscribe("d")
    c.send(f"/topic/{k}", "while unsubscribed", receipt=True)
    assert queue_exists(module_broker, f"stomp-subscription-{cid}-d") == 1


def test_a_non_durable_topic_subscription_misses_messages_sent_while_away(module_broker, stomp_clients):
    k = uid("k")
    c = stomp_clients.connect(module_broker)
    c.subscribe(f"/topic/{k}", id="s")
    c.disconnect()
    pub = stomp_clients.connect(module_broker)
    pub.send(f"/topic/{k}", "lost", {"persistent": "true"}, receipt=True)
    back = stomp_clients.connect(module_broker)
    back.subscribe(f"/topic/{k}", id="s")
    back.exactly(0)


@pytest.mark.deadline(60)
def test_durable_subscription_survives_a_broker_restart(broker, stomp_clients):
    k, cid = uid("k"), uid("cid")
    c = stomp_clients.connect(broker, headers={"client-id": cid})
    c.subscribe(f"/topic/{k}", id="d", headers={"durable": "true"})
    c.disconnect()
    pub = stomp_clients.connect(broker)
    for i in range(3):
        pub.send(f"/topic/{k}", f"before-restart-{i}", {"persistent": "true"}, receipt=True)
    pub.disconnect()
    broker.restart()
    back = stomp_clients.connect(broker, headers={"client-id": cid})
    back.subscribe(f"/topic/{k}", id="d", headers={"durable": "true"})
    got = back.exactly(3)
    assert [m.body for m in got] == [b"before-restart-0", b"before-restart-1", b"before-restart-2"]
    assert [m.headers["persistent"] for m in got] == ["true"] * 3
    # and the binding survived: new messages still reach it
    back.send(f"/topic/{k}", "after-restart", receipt=True)
    assert [m.body for m in back.exactly(4)][3:] == [b"after-restart"]


# --- temp queues -------------------------------------------------------------------------


def test_temp_queue_request_reply_between_two_stomp_clients(module_broker, stomp_clients, names):
    service = names("svc")
    responder = stomp_clients.connect(module_broker)
    responder.subscribe(f"/queue/{service}")
    requester = stomp_clients.connect(module_broker)
    requester.send(
        f"/queue/{service}",
        "what time is it?",
        {"reply-to": "/temp-queue/answers", "correlation-id": "c-1"},
        receipt=True,
    )
    (req,) = responder.exactly(1)
    reply_to = req.headers["reply-to"]
    assert reply_to.startswith("/reply-queue/amq.gen-"), reply_to
    assert req.headers["correlation-id"] == "c-1"
    responder.send(reply_to, "noon", {"correlation-id": "c-1"}, receipt=True)
    (rep,) = requester.exactly(1)
    assert rep.body == b"noon"
    assert rep.headers["subscription"] == "/temp-queue/answers"
    assert rep.headers["destination"] == "/temp-queue/answers"
    assert rep.headers["correlation-id"] == "c-1"


def test_one_temp_queue_serves_many_requests(module_broker, stomp_clients, names):
    service = names("svc")
    responder = stomp_clients.connect(module_broker)
    responder.subscribe(f"/queue/{service}")
    requester = stomp_clients.connect(module_broker)
    for i in range(3):
        requester.send(f"/queue/{service}", f"q{i}", {"reply-to": "/temp-queue/r"}, receipt=True)
    reqs = responder.exactly(3)
    assert len({m.headers["reply-to"] for m in reqs}) == 1
    for m in reqs:
        responder.send(m.headers["reply-to"], b"a" + m.body[1:], receipt=True)
    got = requester.exactly(3)
    assert [m.body for m in got] == [b"a0", b"a1", b"a2"]
    assert {m.headers["subscription"] for m in got} == {"/temp-queue/r"}


def test_different_temp_queue_names_are_different_queues(module_broker, stomp_clients, names):
    service = names("svc")
    responder = stomp_clients.connect(module_broker)
    responder.subscribe(f"/queue/{service}")
    requester = stomp_clients.connect(module_broker)
    requester.send(f"/queue/{service}", "a", {"reply-to": "/temp-queue/one"}, receipt=True)
    requester.send(f"/queue/{service}", "b", {"reply-to": "/temp-queue/two"}, receipt=True)
    ra, rb = responder.exactly(2)
    assert ra.headers["reply-to"] != rb.headers["reply-to"]
    responder.send(rb.headers["reply-to"], "to two", receipt=True)
    responder.send(ra.headers["reply-to"], "to one", receipt=True)
    got = requester.exactly(2)
    assert [(m.body, m.headers["subscription"]) for m in got] == [
        (b"to two", "/temp-queue/two"),
        (b"to one", "/temp-queue/one"),
    ]


def test_a_temp_queue_goes_away_with_its_connection(module_broker, stomp_clients, names):
    service = names("svc")
    responder = stomp_clients.connect(module_broker)
    responder.subscribe(f"/queue/{service}")
    requester = stomp_clients.connect(module_broker)
    requester.send(f"/queue/{service}", "q", {"reply-to": "/temp-queue/r"}, receipt=True)
    (req,) = responder.exactly(1)
    qname = req.headers["reply-to"][len("/reply-queue/"):]
    assert queue_exists(module_broker, qname) == LOCKED
    requester.disconnect()
    assert wait_until(lambda: queue_exists(module_broker, qname) is None)


def test_subscribing_to_a_temp_queue_is_an_error(module_broker, stomp_clients):
    c = stomp_clients.connect(module_broker)
    c.subscribe("/temp-queue/x", receipt=False)
    e = c.wait_error()
    assert e.headers["message"] == "invalid destination"
    c.wait_disconnected()


# --- /amq/queue/ and refused destinations ----------------------------------------------------


def test_amq_queue_uses_an_existing_queue(module_broker, stomp_clients, amqp_channel, names):
    q = names("q")
    amqp_channel.queue_declare(q, arguments={"x-max-length": 2})
    c = stomp_clients.connect(module_broker)
    for i in range(3):
        c.send(f"/amq/queue/{q}", f"m{i}", receipt=True)
    c.subscribe(f"/amq/queue/{q}")
    got = c.exactly(2)
    assert [m.body for m in got] == [b"m1", b"m2"]
    assert [m.headers["destination"] for m in got] == [f"/queue/{q}"] * 2


def test_subscribe_to_a_missing_amq_queue_is_an_error(module_broker, stomp_clients, names):
    q = names("missing")
    c = stomp_clients.connect(module_broker)
    c.subscribe(f"/amq/queue/{q}", receipt=False)
    e = c.wait_error()
    assert e.headers["message"]
    c.wait_disconnected()
    assert queue_exists(module_broker, q) is None


def test_send_to_a_missing_amq_queue_declares_nothing(module_broker, stomp_clients, names):
    # RabbitMQ: SEND publishes to the default exchange and the message is
    # unroutable; only SUBSCRIBE needs the queue.
    q = names("missing")
    c = stomp_clients.connect(module_broker)
    c.send(f"/amq/queue/{q}", "x", receipt=True)
    assert queue_exists(module_broker, q) is None


def test_a_missing_exchange_is_an_error(module_broker, stomp_clients, names):
    for frame in ["SEND", "SUBSCRIBE"]:
        c = stomp_clients.connect(module_broker)
        c.frame(frame, {"destination": f"/exchange/{names('nox')}/k", "id": "s", "receipt": "r"}, b"")
        e = c.wait_error()
        assert e.headers["message"], frame
        assert e.headers["receipt-id"] == "r"
        c.wait_disconnected()


@pytest.mark.parametrize(
    "dest",
    ["/queue/", "/queue/a/b", "orders", "/topic/", "/exchange//k", "/bogus/x", "", "/queue/" + "q" * 256],
    ids=["empty-queue", "slash-in-queue", "no-prefix", "empty-topic", "empty-exchange", "unknown-prefix", "empty", "too-long"],
)
@pytest.mark.parametrize("frame", ["SEND", "SUBSCRIBE"])
def test_malformed_destinations_are_errors(module_broker, stomp_clients, dest, frame):
    c = stomp_clients.connect(module_broker)
    c.frame(frame, {"destination": dest, "id": "s", "receipt": "r"}, b"")
    e = c.wait_error()
    assert e.headers["message"] == "invalid destination"
    assert e.headers["receipt-id"] == "r"
    c.wait_disconnected()


def test_queue_destination_declares_a_durable_queue(broker, stomp_clients):
    q = uid("q")
    c = stomp_clients.connect(broker)
    c.send(f"/queue/{q}", "kept", {"persistent": "true"}, receipt=True)
    c.disconnect()
    broker.restart()
    assert queue_exists(broker, q) == 1
