"""Hostile input: what a client may legally send to make a broker do
unbounded work (topics thousands of levels deep, patterns with many `#`,
long exchange chains, a vhost filled with queues, exchanges or bindings,
extreme header values). Each attack gets the protocol's own error (AMQP
channel close with a reply code, MQTT DISCONNECT / SUBACK reason codes,
STOMP ERROR frames), nothing crashes, and a fresh well-behaved client is
served afterwards.

The limits are `[broker]` options (conf/junction.toml): max_topic_levels
(128), max_queues_per_vhost, max_exchanges_per_vhost,
max_bindings_per_vhost; exchange-to-exchange routing stops 32 hops from the
exchange published to (MAX_EXCHANGE_HOPS in crates/core/src/topology.rs).
"""

import base64
import random
import time

import pika
import pytest

from amqp_support import (
    Collector,
    channel_error,
    get_all,
    message_count,
    publish,
    wait_until,
)
from amqp_support import assert_broker_serves as assert_amqp_serves
from mqtt_support import (
    PUBACK,
    PUBLISH,
    V5,
    V311,
    assert_broker_serves,
    assert_closed_with,
    clients,  # noqa: F401 (fixture)
    connected,
    fence,
    publish_packet,
    uid,
)
from net_support import tcp_connect
from stomp_support import assert_serves as assert_stomp_serves
from stomp_support import build as stomp_build
from stomp_support import stomp_clients  # noqa: F401 (fixture)

LEVELS = pytest.mark.parametrize("level", [4, 5], ids=["v311", "v5"])
DEFAULT_MAX_LEVELS = 128
MAX_EXCHANGE_HOPS = 32
TOPIC_NAME_INVALID, TOPIC_FILTER_INVALID, QUOTA_EXCEEDED = 0x90, 0x8F, 0x97
V3_SUBACK_FAILURE = 0x80


def mqtt_topic(base, levels):
    """A topic (or filter) of exactly `levels` levels starting with `base`."""
    return "/".join([base] + ["a"] * (levels - 1))


def amqp_key(words):
    """A routing / binding key of exactly `words` words, each 'a'."""
    return ".".join(["a"] * words)


def confirmed_channel(conn):
    """A channel in confirm mode: `basic_publish` returns once the broker
    has routed the message, so a later `basic_get` sees every copy."""
    ch = conn.channel()
    ch.confirm_delivery()
    return ch


def assert_limit_refusal(error, phrase):
    """`error` = (reply_code, reply_text) is a limit's channel close: 406,
    a `PRECONDITION_FAILED - ...` text saying `phrase`. (The exact texts:
    test_limit_refusals_have_rabbitmq_style_reply_texts.)"""
    code, text = error
    assert code == 406, error
    assert text.startswith("PRECONDITION_FAILED - ") and phrase in text, error


def levels_phrase(words, limit=DEFAULT_MAX_LEVELS):
    return f"has {words} words; the limit is {limit}"


def utf8_prefix(text, max_bytes=255):
    """The longest prefix of `text`, whole characters only, that fits in
    `max_bytes` of UTF-8: an AMQP short string cut as it must be."""
    out = text
    while len(out.encode()) > max_bytes:
        out = out[:-1]
    return out


# --- topic levels ----------------------------------------------------------


@LEVELS
def test_mqtt_publish_over_128_levels_is_disconnected_with_0x90(module_broker, clients, level):
    """A PUBLISH of 129 levels: v5 DISCONNECT 0x90 then close, v3.1.1 a
    plain close; nothing is routed, 128 levels still go through."""
    base = uid()
    watcher = clients.connect(module_broker, version=V5)
    assert watcher.subscribe(base + "/#", qos=1) == [1]
    raw = connected(clients, module_broker, level)
    assert raw.publish(mqtt_topic(base, DEFAULT_MAX_LEVELS), b"128 levels", qos=1, pid=1) == 0
    raw.send(publish_packet(mqtt_topic(base, 129), b"129 levels", qos=1, pid=2, version=level))
    assert_closed_with(raw, level, TOPIC_NAME_INVALID)
    pub = clients.connect(module_broker, version=V5)
    got = fence(pub, watcher, base + "/fence")
    assert [(m.topic, m.payload) for m in got] == [
        (mqtt_topic(base, DEFAULT_MAX_LEVELS), b"128 levels")
    ]
    assert_broker_serves(clients, module_broker)


@LEVELS
def test_mqtt_subscribe_filter_over_128_levels_is_refused_alone(module_broker, clients, level):
    """One SUBSCRIBE with filters of 128 and 129 levels (and a '#' one of
    129): only the long ones fail (v5 0x8F, v3.1.1 0x80); the other is
    granted and delivers."""
    base = uid()
    ok = mqtt_topic(base, DEFAULT_MAX_LEVELS)
    raw = connected(clients, module_broker, level)
    codes = raw.subscribe(
        1, [(mqtt_topic(base, 129), 1), (ok, 1), (mqtt_topic(base, 128) + "/#", 1)]
    )
    refused = TOPIC_FILTER_INVALID if level == 5 else V3_SUBACK_FAILURE
    assert codes == [refused, 1, refused]
    raw.send(publish_packet(ok, b"granted filter delivers", qos=1, pid=7, version=level))
    # Its own PUBACK and the delivery of its message, in either order.
    got = {p.kind: raw.parse(p) for p in (raw.recv(), raw.recv())}
    assert sorted(got) == [PUBLISH, PUBACK]
    assert got[PUBACK][:2] == (7, 0)
    delivery = got[PUBLISH]
    assert (delivery.topic, delivery.payload, delivery.qos) == (ok, b"granted filter delivers", 1)
    assert_broker_serves(clients, module_broker)


def test_amqp_topic_binding_key_over_128_words_closes_the_channel_with_406(
    shared_amqp, amqp_channel, names
):
    """queue.bind to amq.topic with a 129-word key: 406; 128 words bind
    and route."""
    q = names("q")
    amqp_channel.queue_declare(q)
    key128 = amqp_key(DEFAULT_MAX_LEVELS)  # 255 bytes: the longest short string
    amqp_channel.queue_bind(q, "amq.topic", routing_key=key128)
    error = channel_error(
        amqp_channel.queue_bind,
        q,
        "amq.topic",
        routing_key="." * 128,  # 129 empty words
    )
    assert_limit_refusal(error, levels_phrase(129))
    ch = confirmed_channel(shared_amqp.get())
    ch.basic_publish("amq.topic", key128, b"128 words")
    assert [b for _, _, b in get_all(ch, q)] == [b"128 words"]
    ch.close()


@pytest.mark.parametrize("exchange", ["", "amq.topic", "amq.direct"])
def test_amqp_publish_with_a_routing_key_over_128_words_closes_the_channel_with_406(
    module_broker, shared_amqp, amqp_channel, names, exchange
):
    """basic.publish with a 129-word routing key, to any exchange: 406,
    the connection stays open."""
    amqp_channel.basic_publish(exchange, "." * 128, b"129 words")
    error = channel_error(amqp_channel.queue_declare, "", exclusive=True)
    assert_limit_refusal(error, levels_phrase(129))
    assert shared_amqp.get().is_open
    assert_amqp_serves(module_broker, names("q"))


def test_configured_max_topic_levels_is_enforced_by_both_protocols(make_broker, clients):
    """max_topic_levels = 8: 8 words / levels pass, 9 are refused over AMQP
    (406 on bind and publish) and MQTT (SUBACK 0x8F, DISCONNECT 0x90)."""
    b = make_broker(broker_options=["max_topic_levels = 8"])
    conn = b.connect()
    ch = conn.channel()
    ch.queue_declare("q")
    ch.queue_bind("q", "amq.topic", routing_key=amqp_key(8))
    error = channel_error(ch.queue_bind, "q", "amq.topic", routing_key=amqp_key(9))
    assert_limit_refusal(error, levels_phrase(9, 8))
    ch = confirmed_channel(conn)
    ch.basic_publish("amq.topic", amqp_key(8), b"8 words")
    assert [body for _, _, body in get_all(ch, "q")] == [b"8 words"]
    ch = conn.channel()
    error = channel_error(
        lambda: (
            ch.basic_publish("amq.topic", amqp_key(9), b"9 words"),
            ch.queue_declare("q", passive=True),
        )
    )
    assert_limit_refusal(error, levels_phrase(9, 8))
    assert message_count(conn.channel(), "q") == 0
    conn.close()
    raw = connected(clients, b, 5)
    base = uid()
    assert raw.subscribe(1, [(mqtt_topic(base, 8), 1), (mqtt_topic(base, 9), 1)]) == [
        1,
        TOPIC_FILTER_INVALID,
    ]
    raw.send(publish_packet(mqtt_topic(base, 9), b"9 levels", qos=0, version=5))
    assert_closed_with(raw, 5, TOPIC_NAME_INVALID)
    assert_broker_serves(clients, b, V5)
    assert_amqp_serves(b, "q2")


# --- topic matching cost ---------------------------------------------------


def test_pattern_of_many_hashes_matches_in_polynomial_time(
    module_broker, shared_amqp, amqp_channel, names
):
    """A binding '#.a.#.a...#.a.#.b' (13 '#'): a key of 40 'a' words does
    not route, the same key plus '.b' routes once; a fresh connection works."""
    pattern = "#.a." * 12 + "#.b"
    q = names("q")
    amqp_channel.queue_declare(q)
    amqp_channel.queue_bind(q, "amq.topic", routing_key=pattern)
    ch = confirmed_channel(shared_amqp.get())
    ch.basic_publish("amq.topic", amqp_key(40), b"no trailing b")
    ch.basic_publish("amq.topic", amqp_key(40) + ".b", b"ends in b")
    assert [b for _, _, b in get_all(ch, q)] == [b"ends in b"]
    ch.close()
    fresh = module_broker.connect()
    try:
        fch = confirmed_channel(fresh)
        fch.basic_publish("amq.topic", amqp_key(11) + ".b", b"eleven a: too few")
        fch.basic_publish("amq.topic", amqp_key(12) + ".b", b"twelve a: enough")
        assert [b for _, _, b in get_all(fch, q)] == [b"twelve a: enough"]
    finally:
        fresh.close()


# --- deep topics -------------------------------------------------------------

DEEP = 30_000
DEEP_TOPIC = "x/" * (DEEP - 1) + "x"  # 30,000 levels, 59,999 bytes
DEEP_HASH_FILTER = "x/" * (DEEP - 1) + "#"  # 30,000 levels


@pytest.fixture
def deep_broker(make_broker):
    return make_broker(broker_options=["max_topic_levels = 40000"])


@pytest.mark.deadline(120)
def test_30000_level_subscriptions_receive_one_copy_and_the_broker_survives(deep_broker, clients):
    """v5 subscriptions to a 30,000-level filter and its '/#' form, QoS 1
    publish: one copy with both subscription ids (overlapping rule);
    unsubscribe works; the broker process is still alive and serving."""
    sub = clients.connect(deep_broker, version=V5)
    assert sub.subscribe(DEEP_TOPIC, qos=1, sub_id=1) == [1]
    assert sub.subscribe(DEEP_HASH_FILTER, qos=1, sub_id=2) == [1]
    pub = clients.connect(deep_broker, version=V5)
    assert pub.publish(DEEP_TOPIC, b"deep", qos=1) == 0
    got = fence(pub, sub, DEEP_TOPIC)
    assert [(m.topic, m.payload, m.qos) for m in got] == [(DEEP_TOPIC, b"deep", 1)]
    assert sorted(got[0].props["SubscriptionIdentifier"]) == [1, 2]
    assert sub.unsubscribe(DEEP_TOPIC, DEEP_HASH_FILTER) == [0, 0]
    other = uid() + "/other"
    assert sub.subscribe(other, qos=1) == [1]
    assert pub.publish(DEEP_TOPIC, b"after unsubscribe", qos=1) == 0x10  # no subscribers
    before = sub.received()
    assert fence(pub, sub, other) == before
    sub.disconnect()
    assert deep_broker.proc.poll() is None
    assert_broker_serves(clients, deep_broker, V5)


@pytest.mark.deadline(120)
def test_30000_level_durable_binding_survives_shutdown_and_restart(deep_broker, clients):
    """A persistent v5 session holding a 30,000-level subscription: SIGTERM
    exits 0, the restarted broker recovers it and delivers a deep publish."""
    cid = uid("c")
    sub = clients.connect(deep_broker, client_id=cid, version=V5, clean=False, session_expiry=300)
    assert sub.subscribe(DEEP_HASH_FILTER, qos=1) == [1]
    sub.disconnect()
    assert deep_broker.terminate() == 0
    deep_broker.start()
    back = clients.new(deep_broker, client_id=cid, version=V5, clean=False, session_expiry=300)
    ack = back.connect()
    assert (ack.reason, ack.session_present) == (0, True)
    pub = clients.connect(deep_broker, version=V5)
    assert pub.publish(DEEP_TOPIC, b"after restart", qos=1) == 0
    got = back.wait_messages(1)
    assert [(m.topic, m.payload, m.qos) for m in got] == [(DEEP_TOPIC, b"after restart", 1)]
    assert_broker_serves(clients, deep_broker, V5)


def test_30000_level_filter_under_the_default_limit_gets_0x8f(module_broker, clients):
    """The same deep SUBSCRIBE against the default 128-level limit: SUBACK
    0x8F for both filters, and the connection stays usable."""
    sub = clients.connect(module_broker, version=V5)
    assert sub.subscribe(DEEP_TOPIC, DEEP_HASH_FILTER, qos=1) == [
        TOPIC_FILTER_INVALID,
        TOPIC_FILTER_INVALID,
    ]
    topic = uid() + "/still"
    assert sub.subscribe(topic, qos=1) == [1]
    assert sub.publish(topic, b"same connection", qos=1) == 0
    assert [(m.topic, m.payload) for m in sub.wait_messages(1)] == [(topic, b"same connection")]
    assert_broker_serves(clients, module_broker, V5)


# --- exchange chains ---------------------------------------------------------


def test_exchange_chain_routes_at_most_32_hops(shared_amqp, amqp_channel, names):
    """Fanout e0 -> e1 -> ... -> e39: a publish to e0 reaches the queue on
    e32 exactly once and not the one on e33."""
    ex = [names(f"e{i}") for i in range(40)]
    for e in ex:
        amqp_channel.exchange_declare(e, "fanout", auto_delete=True)
    for a, b in zip(ex, ex[1:]):
        amqp_channel.exchange_bind(destination=b, source=a)
    q32, q33 = names("q32"), names("q33")
    for q, e in ((q32, ex[MAX_EXCHANGE_HOPS]), (q33, ex[MAX_EXCHANGE_HOPS + 1])):
        amqp_channel.queue_declare(q, exclusive=True)
        amqp_channel.queue_bind(q, e)
    ch = confirmed_channel(shared_amqp.get())
    ch.basic_publish(ex[0], "", b"from e0")
    ch.basic_publish(ex[1], "", b"from e1")
    assert [b for _, _, b in get_all(ch, q32)] == [b"from e0", b"from e1"]
    assert [b for _, _, b in get_all(ch, q33)] == [b"from e1"]
    ch.close()


@pytest.mark.deadline(180)
@pytest.mark.parametrize("how", ["unbind", "queue-delete"])
def test_1000_auto_delete_exchange_chain_unwinds_when_its_queue_goes(module_broker, names, how):
    """a0 -> ... -> a999 -> queue, all auto-delete: a publish to a0 stops
    after 32 hops; dropping the queue's binding (or the queue) deletes all
    1000 exchanges; the broker keeps serving."""
    chain = [names(f"a{i}") for i in range(1000)]
    q = names("q")
    conn = module_broker.connect()
    try:
        ch = conn.channel()
        for e in chain:
            ch.exchange_declare(e, "fanout", auto_delete=True)
        for a, b in zip(chain, chain[1:]):
            ch.exchange_bind(destination=b, source=a)
        ch.queue_declare(q)
        ch.queue_bind(q, chain[-1])
        pub = confirmed_channel(conn)
        pub.basic_publish(chain[0], "", b"1000 hops away")
        pub.basic_publish(chain[-1 - MAX_EXCHANGE_HOPS], "", b"32 hops away")
        assert [b for _, _, b in get_all(pub, q)] == [b"32 hops away"]
        if how == "unbind":
            ch.queue_unbind(q, chain[-1])
        else:
            ch.queue_delete(q)
        for e in (chain[0], chain[500], chain[-1]):
            error = channel_error(conn.channel().exchange_declare, e, passive=True)
            assert error == (404, f"NOT_FOUND - no exchange '{e}'")
    finally:
        if conn.is_open:
            conn.close()
    assert_amqp_serves(module_broker, names("q-after"))


# --- multi-byte error text -----------------------------------------------------


@pytest.mark.parametrize(
    "name", ["é" * 127, "€" * 85, "😀" * 63], ids=["2-byte", "3-byte", "4-byte"]
)
def test_404_for_a_multibyte_queue_name_has_a_valid_utf8_reply_text(
    module_broker, shared_amqp, amqp_channel, names, name
):
    """Passive queue.declare of a ~255-byte multi-byte name: 404 whose
    reply text is valid UTF-8 of at most 255 bytes; the connection works."""
    code, text = channel_error(amqp_channel.queue_declare, name, passive=True)
    assert code == 404
    assert isinstance(text, str), text  # pika leaves invalid UTF-8 as bytes
    assert text.startswith("NOT_FOUND - no queue"), text
    assert len(text.encode()) <= 255
    # Cut after the last whole character that fits, not before the name.
    assert text == utf8_prefix(f"NOT_FOUND - no queue '{name}"), text
    assert shared_amqp.get().is_open
    assert_amqp_serves(module_broker, names("q"))


def test_404_for_a_multibyte_exchange_name_has_a_valid_utf8_reply_text(
    module_broker, shared_amqp, amqp_channel, names
):
    """Passive exchange.declare of 'é' * 127: 404 whose reply text is valid
    UTF-8 of at most 255 bytes; the connection works."""
    name = "é" * 127
    code, text = channel_error(amqp_channel.exchange_declare, name, passive=True)
    assert code == 404
    assert isinstance(text, str), text
    assert text.startswith("NOT_FOUND - no exchange"), text
    assert len(text.encode()) <= 255
    assert text == utf8_prefix(f"NOT_FOUND - no exchange '{name}"), text
    assert shared_amqp.get().is_open
    assert_amqp_serves(module_broker, names("q"))


# --- header tables -------------------------------------------------------------


def base64_heavy(n_bytes, seed):
    """Base64 text of about `n_bytes` with long runs of 'A' and 'F'."""
    rnd = random.Random(seed)
    raw = bytearray()
    while len(raw) * 4 // 3 < n_bytes:
        raw += bytes(3 * rnd.randint(50, 400))  # 'AAAA...'
        raw += b"\x14\x51\x45" * rnd.randint(50, 400)  # 'FFFF...'
        raw += rnd.randbytes(rnd.randint(10, 200))
    return base64.b64encode(bytes(raw)).decode()[:n_bytes]


def test_base64_heavy_headers_round_trip(module_broker, shared_amqp, amqp_channel, names):
    """Ten messages whose headers hold ~96 KB of base64 text and a nested
    table are consumed with identical headers and bodies."""
    q = names("q")
    amqp_channel.queue_declare(q)
    sent = []
    for i in range(10):
        headers = {
            "blob": base64_heavy(64 * 1024, seed=i),
            "blob2": base64_heavy(32 * 1024, seed=100 + i),
            "nested": {
                "inner": {"b64": "A" * 2000 + "F" * 2000, "n": i, "flag": True},
                "list": ["AAAA", "FFFF", 7, {"deeper": "AF" * 500}],
            },
        }
        body = base64_heavy(1000, seed=200 + i).encode()
        amqp_channel.basic_publish("", q, body, pika.BasicProperties(headers=headers))
        sent.append((headers, body))
    got = Collector()
    amqp_channel.basic_consume(q, got, auto_ack=True)
    assert wait_until(shared_amqp.get(), lambda: len(got) >= 10)
    assert [(p.headers, b) for _, p, b in got.deliveries] == sent
    assert_amqp_serves(module_broker, names("q2"))


# --- x-death count -------------------------------------------------------------


def test_x_death_count_at_i64_max_saturates_when_dead_lettered(
    module_broker, shared_amqp, amqp_channel, names
):
    """A published x-death count of 2**63-1, then a reject into the DLX:
    the dead-lettered copy carries count 2**63-1 (not wrapped)."""
    q, dlq = names("q"), names("dlq")
    amqp_channel.queue_declare(dlq)
    amqp_channel.queue_declare(
        q, arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dlq}
    )
    big = 2**63 - 1
    death = {"count": big, "queue": q, "reason": "rejected", "exchange": "", "routing-keys": [q]}
    publish(amqp_channel, q, b"old soul", headers={"x-death": [death]})
    method, _, _ = amqp_channel.basic_get(q)
    amqp_channel.basic_reject(method.delivery_tag, requeue=False)
    assert wait_until(shared_amqp.get(), lambda: message_count(amqp_channel, dlq) == 1)
    ((_, props, body),) = get_all(amqp_channel, dlq)
    assert body == b"old soul"
    (entry,) = props.headers["x-death"]
    entry = dict(entry)
    entry.pop("time")
    assert entry == death
    assert get_all(amqp_channel, q) == []
    assert module_broker.proc.poll() is None
    assert_amqp_serves(module_broker, names("q-after"))


# --- count limits ------------------------------------------------------------------


def test_queue_limit_refuses_the_next_new_queue_with_406(make_broker, clients):
    """max_queues_per_vhost = 5: five queues, the sixth new name (or a
    server-named one) gets 406 'queue limit'; redeclaring works; a freed
    slot is reusable; an MQTT subscriber needing a queue gets 0x97."""
    b = make_broker(broker_options=["max_queues_per_vhost = 5"])
    conn = b.connect()
    ch = conn.channel()
    for i in range(5):
        ch.queue_declare(f"q{i}")
    assert_limit_refusal(channel_error(ch.queue_declare, "q5"), "queue limit")
    error = channel_error(conn.channel().queue_declare, "", exclusive=True)
    assert_limit_refusal(error, "queue limit")
    ch = conn.channel()
    assert ch.queue_declare("q0").method.queue == "q0"
    assert ch.queue_declare("q4", passive=True).method.queue == "q4"
    sub = clients.connect(b, version=V5)
    assert sub.subscribe(uid() + "/t", qos=1) == [QUOTA_EXCEEDED]
    sub.disconnect()
    ch.queue_delete("q4")
    assert ch.queue_declare("q5").method.queue == "q5"
    conn.close()
    assert_amqp_serves(b, "q0")


@pytest.mark.parametrize(
    "mqtt_vhost,free", [("/", 3), ("mq", 4)], ids=["mqtt-in-default-vhost", "mqtt-elsewhere"]
)
def test_exchange_limit_counts_the_built_in_exchanges(make_broker, mqtt_vhost, free):
    """max_exchanges_per_vhost = 8 counts amq.direct/fanout/topic/headers
    (and MQTT's junction.mqtt.sys where MQTT lives), not the default '':
    exactly `free` new exchanges, then 406 'exchange limit'."""
    b = make_broker(
        vhosts=["/", "mq"],
        broker_options=["max_exchanges_per_vhost = 8"],
        mqtt_options=[f'vhost = "{mqtt_vhost}"'],
    )
    conn = b.connect()
    ch = conn.channel()
    for i in range(free):
        ch.exchange_declare(f"x{i}", "fanout")
    error = channel_error(ch.exchange_declare, f"x{free}", "fanout")
    assert_limit_refusal(error, "exchange limit")
    ch = conn.channel()
    ch.exchange_declare("x0", "fanout")  # an existing one: no new slot needed
    error = channel_error(ch.exchange_declare, f"x{free}", passive=True)
    assert error == (404, f"NOT_FOUND - no exchange 'x{free}'")
    ch = conn.channel()
    ch.exchange_delete("x0")
    ch.exchange_declare(f"x{free}", "fanout")
    conn.close()
    assert_amqp_serves(b, "q")


def test_binding_limit_refuses_new_bindings_with_406_and_mqtt_suback_0x97(make_broker, clients):
    """max_bindings_per_vhost = 3: the fourth queue.bind gets 406, an MQTT
    SUBSCRIBE needing a binding gets 0x97 (v5) / 0x80 (v3.1.1); an unbind
    frees a slot the next subscription takes."""
    b = make_broker(broker_options=["max_bindings_per_vhost = 3"])
    conn = b.connect()
    ch = conn.channel()
    ch.queue_declare("q")
    for k in ("k0", "k1", "k2"):
        ch.queue_bind("q", "amq.direct", routing_key=k)
    error = channel_error(ch.queue_bind, "q", "amq.direct", routing_key="k3")
    assert_limit_refusal(error, "binding limit")
    v5 = clients.connect(b, version=V5)
    assert v5.subscribe(uid() + "/t", qos=1) == [QUOTA_EXCEEDED]
    v3 = clients.connect(b, version=V311)
    assert v3.subscribe(uid() + "/t", qos=1) == [V3_SUBACK_FAILURE]
    ch = conn.channel()
    ch.queue_unbind("q", "amq.direct", routing_key="k2")
    topic = uid() + "/t"
    assert v5.subscribe(topic, qos=1) == [1]
    assert v5.publish(topic, b"bound in the freed slot", qos=1) == 0
    assert [m.payload for m in v5.wait_messages(1)] == [b"bound in the freed slot"]
    conn.close()
    assert_amqp_serves(b, "q")


def test_amqp_rebind_of_an_existing_binding_at_the_binding_limit_is_a_no_op(make_broker):
    """At max_bindings_per_vhost, repeating a queue.bind that already
    exists needs no new binding: it succeeds and routes one copy."""
    b = make_broker(broker_options=["max_bindings_per_vhost = 2"])
    conn = b.connect()
    ch = conn.channel()
    ch.queue_declare("q")
    ch.queue_bind("q", "amq.direct", routing_key="k0")
    ch.queue_bind("q", "amq.direct", routing_key="k1")
    ch.queue_bind("q", "amq.direct", routing_key="k0")
    ch = confirmed_channel(conn)
    ch.basic_publish("amq.direct", "k0", b"one copy")
    assert [body for _, _, body in get_all(ch, "q")] == [b"one copy"]
    conn.close()


def test_mqtt_resubscribe_at_the_binding_limit_is_granted(make_broker, clients):
    """At max_bindings_per_vhost, a v5 re-SUBSCRIBE to a filter the
    session holds (new QoS) needs no new binding: granted, and it applies."""
    b = make_broker(broker_options=["max_bindings_per_vhost = 2"])
    topic = uid() + "/t"
    sub = clients.connect(b, version=V5)
    assert sub.subscribe(topic, qos=1) == [1]
    assert sub.subscribe(uid() + "/other", qos=1) == [1]
    assert sub.subscribe(topic, qos=0) == [0]
    assert sub.publish(topic, b"still subscribed", qos=1) == 0
    assert [(m.payload, m.qos) for m in sub.wait_messages(1)] == [(b"still subscribed", 0)]


def test_limit_refusals_have_rabbitmq_style_reply_texts(make_broker):
    """Each limit's 406 reply text is 'PRECONDITION_FAILED - <detail>',
    the name once, like every other channel error."""
    b = make_broker(
        broker_options=[
            "max_topic_levels = 3",
            "max_queues_per_vhost = 1",
            "max_exchanges_per_vhost = 5",  # the 4 amq.* and junction.mqtt.sys
            "max_bindings_per_vhost = 1",
        ]
    )
    conn = b.connect()
    conn.channel().queue_declare("q")
    conn.channel().queue_bind("q", "amq.direct", routing_key="k")
    errors = [
        channel_error(conn.channel().queue_declare, "q2"),
        channel_error(conn.channel().exchange_declare, "x", "fanout"),
        channel_error(conn.channel().queue_bind, "q", "amq.direct", routing_key="k2"),
        channel_error(conn.channel().queue_bind, "q", "amq.topic", routing_key="a.b.c.d"),
    ]
    ch = conn.channel()
    errors.append(
        channel_error(
            lambda: (ch.basic_publish("", "a.b.c.d", b"4 words"), ch.queue_declare("q", True))
        )
    )
    conn.close()
    reached = "limit in vhost '/' ({}) is reached"
    assert errors == [
        (406, "PRECONDITION_FAILED - cannot declare queue 'q2': queue " + reached.format(1)),
        (406, "PRECONDITION_FAILED - cannot declare exchange 'x': exchange " + reached.format(5)),
        (406, "PRECONDITION_FAILED - binding " + reached.format(1)),
        (406, "PRECONDITION_FAILED - routing key has 4 words; the limit is 3"),
        (406, "PRECONDITION_FAILED - routing key has 4 words; the limit is 3"),
    ]


# --- STOMP destinations, patterns and error texts ------------------------------
#
# A STOMP destination names an exchange and a routing / binding key
# (`/topic/k` is amq.topic with key `k`), so the same limits apply: a
# refusal is an ERROR frame (message, text/plain detail, receipt-id), then
# the close; other connections go on.

NORMAL_TIME = 5.0  # a fresh client's round trip after an attack, at most
STOMP_DEEP_DESTINATION = "/topic/" + ".".join(["x"] * DEEP)  # 30,000 words, 59,999 bytes


def stomp_connected_socket(broker):
    """A raw STOMP 1.2 connection that got CONNECTED."""
    sock = tcp_connect(broker.stomp_port, 5.0)
    connect = [("accept-version", "1.2"), ("host", "/"), ("login", "guest"), ("passcode", "guest")]
    sock.sendall(stomp_build("CONNECT", connect))
    got = b""
    while b"\0" not in got:
        chunk = sock.recv(4096)
        assert chunk, got
        got += chunk
    assert got.startswith(b"CONNECTED\n") and got.endswith(b"\0"), got
    return sock


def read_until_closed(sock, timeout=10.0):
    """Every byte the broker sends until it closes `sock`."""
    deadline = time.monotonic() + timeout
    data = b""
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"still open after {timeout} s; read {data[:300]!r}"
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


def only_error(data):
    """`data` must be exactly one ERROR frame, as bytes that are valid
    UTF-8; returns (headers as sent, not unescaped: the texts compared have
    no `:` or `\\`; the body as text)."""
    assert data.startswith(b"ERROR\n"), data[:300]
    text = data.decode("utf-8")  # raises on invalid UTF-8
    head, sep, rest = text.partition("\n\n")
    assert sep, data[:300]
    headers = {}
    for line in head.split("\n")[1:]:
        k, _, v = line.partition(":")
        headers.setdefault(k, v)
    raw_rest = rest.encode()
    if "content-length" in headers:
        n = int(headers["content-length"])
        body, tail = raw_rest[:n], raw_rest[n:]
    else:
        body, _, tail = raw_rest.partition(b"\0")
        tail = b"\0" + tail
    assert tail == b"\0", f"more after the ERROR: {tail[:200]!r}"
    return headers, body.decode("utf-8")


def refused(broker, frame, connect=True):
    """Sends `frame` (on a connected socket unless `connect=False`) and
    reads the ERROR and the close (the broker shuts its write side right
    after the ERROR); returns (headers, body, seconds until the close)."""
    sock = stomp_connected_socket(broker) if connect else tcp_connect(broker.stomp_port, 5.0)
    try:
        started = time.monotonic()
        sock.sendall(frame)
        headers, body = only_error(read_until_closed(sock))
        return headers, body, time.monotonic() - started
    finally:
        sock.close()


def assert_stomp_serves_quickly(broker, stomp_clients):
    started = time.monotonic()
    assert_stomp_serves(broker, stomp_clients)
    took = time.monotonic() - started
    assert took < NORMAL_TIME, f"a fresh STOMP client took {took:.1f} s"


def stomp_destination_frame(cmd, destination):
    headers = {"destination": destination, "receipt": "deep"}
    if cmd == "SUBSCRIBE":
        headers["id"] = "deep"
        return stomp_build(cmd, headers)
    return stomp_build(cmd, headers, b"deep", content_length=True)


def levels_phrase_stomp(words, limit=DEFAULT_MAX_LEVELS):
    return f"routing key has {words} words; the limit is {limit}"


STOMP_CMDS = pytest.mark.parametrize("cmd", ["SEND", "SUBSCRIBE"])


@STOMP_CMDS
def test_stomp_30000_level_destination_under_default_limits_is_refused(
    module_broker, stomp_clients, cmd
):
    """A SEND / SUBSCRIBE to `/topic/` + 30,000 words: its 60 KB header
    line is past [stomp] max_header_length (10240), so it is refused while
    it arrives - ERROR, then the close; a fresh client is served."""
    headers, body, _ = refused(module_broker, stomp_destination_frame(cmd, STOMP_DEEP_DESTINATION))
    assert headers["message"] == "header line longer than 10240 bytes", headers
    assert_stomp_serves_quickly(module_broker, stomp_clients)


@pytest.fixture
def long_header_broker(make_broker):
    """Header lines up to 128 KiB, and topic levels up to 40,000 (as the
    MQTT deep-topic tests have them): a 30,000-word destination is read
    whole and reaches the routing-key checks."""
    return make_broker(
        broker_options=["max_topic_levels = 40000"],
        stomp_options=["max_header_length = 131072"],
    )


@pytest.mark.deadline(60)
@STOMP_CMDS
def test_stomp_30000_level_destination_read_whole_is_refused(long_header_broker, stomp_clients, cmd):
    """The same destination with room for its header line: refused at once
    with ERROR `invalid destination` (a routing key is a short string, at
    most 255 bytes, as in AMQP), receipt-id set, then the close; a fresh
    client is served in normal time."""
    b = long_header_broker
    headers, body, took = refused(b, stomp_destination_frame(cmd, STOMP_DEEP_DESTINATION))
    assert (headers["message"], headers.get("receipt-id"), body) == (
        "invalid destination",
        "deep",
        "routing key longer than 255 bytes",
    )
    assert took < NORMAL_TIME, took
    assert_stomp_serves_quickly(b, stomp_clients)


@STOMP_CMDS
def test_stomp_destination_over_128_words_is_refused_with_precondition_failed(
    module_broker, stomp_clients, cmd
):
    """`/topic/` + 128 dots (129 empty words, 135 bytes): ERROR
    `precondition_failed` with AMQP's text, receipt-id set, then the close;
    128 words are accepted and route. Nothing of the refused SEND is
    routed (a `#` subscriber sees only the fence after it)."""
    watcher = stomp_clients.connect(module_broker)
    watcher.subscribe("/topic/#")
    ok = stomp_clients.connect(module_broker)
    k128 = "." * (DEFAULT_MAX_LEVELS - 1)
    if cmd == "SUBSCRIBE":
        ok.subscribe("/topic/" + k128)
    ok.send("/topic/" + k128, b"128 words", receipt=True)
    headers, body, _ = refused(module_broker, stomp_destination_frame(cmd, "/topic/" + "." * 128))
    assert (headers["message"], headers.get("receipt-id"), body) == (
        "precondition_failed",
        "deep",
        "PRECONDITION_FAILED - " + levels_phrase_stomp(129),
    )
    fence = "fence." + uid()
    ok.send("/topic/" + fence, b"fence", receipt=True)
    got = watcher.wait_messages(2)
    assert [(m.headers["destination"], m.body) for m in got] == [
        ("/topic/" + k128, b"128 words"),
        ("/topic/" + fence, b"fence"),
    ]
    if cmd == "SUBSCRIBE":
        assert [m.body for m in ok.wait_messages(1)] == [b"128 words"]
    assert_stomp_serves_quickly(module_broker, stomp_clients)


@pytest.mark.parametrize(
    "destination",
    ["/topic/{key}", "/exchange/amq.topic/{key}", "/exchange/amq.direct/{key}", "/queue/{key}"],
)
def test_configured_max_topic_levels_is_enforced_by_stomp_send(
    make_broker, stomp_clients, destination
):
    """max_topic_levels = 8: a SEND whose routing key has 9 words is
    refused whatever the exchange (AMQP's rule for basic.publish): ERROR
    `precondition_failed`; 8 words go through."""
    b = make_broker(broker_options=["max_topic_levels = 8"])
    c = stomp_clients.connect(b)
    assert c.send(destination.format(key=amqp_key(8)), b"8 words", receipt=True)
    headers, body, _ = refused(
        b, stomp_destination_frame("SEND", destination.format(key=amqp_key(9)))
    )
    assert (headers["message"], body) == (
        "precondition_failed",
        "PRECONDITION_FAILED - " + levels_phrase_stomp(9, 8),
    )
    assert_stomp_serves_quickly(b, stomp_clients)


@pytest.mark.deadline(60)
@pytest.mark.parametrize("hashes", [13, 41])
def test_stomp_subscription_of_many_hashes_matches_in_polynomial_time(
    module_broker, stomp_clients, hashes
):
    """SUBSCRIBE `/topic/#.a.#.a...#.b` (13 or 41 `#`; 163 bytes at most),
    then SENDs of the longest keys a destination allows (126 `a` words,
    with and without a trailing `.b`): only the one ending in `b` is
    delivered, once, and quickly; a fresh client is served in normal time
    and a key with one `a` too few does not match."""
    pattern = "#.a." * (hashes - 1) + "#.b"
    sub = stomp_clients.connect(module_broker)
    sub.subscribe("/topic/" + pattern)
    pub = stomp_clients.connect(module_broker)
    started = time.monotonic()
    pub.send("/topic/" + amqp_key(126), b"no trailing b", receipt=True)
    pub.send("/topic/" + amqp_key(125) + ".b", b"ends in b", receipt=True)
    assert [m.body for m in sub.exactly(1)] == [b"ends in b"]
    took = time.monotonic() - started
    assert took < NORMAL_TIME, took
    fresh = stomp_clients.connect(module_broker)
    fresh.send("/topic/" + amqp_key(hashes - 2) + ".b", b"too few a", receipt=True)
    fresh.send("/topic/" + amqp_key(hashes - 1) + ".b", b"enough a", receipt=True)
    got = sub.exactly(2)
    assert [m.body for m in got] == [b"ends in b", b"enough a"]
    assert_stomp_serves_quickly(module_broker, stomp_clients)


# Multi-byte text the broker echoes in an ERROR.


@pytest.mark.parametrize(
    "line,connect",
    [
        ("é" * 7, False),
        ("AB" + "€" * 4, False),
        ("😀" * 4, False),
        ("AB" + "€" * 4, True),
        ("é€😀", False),
    ],
    ids=["2-byte", "3-byte", "4-byte", "3-byte-after-connect", "short"],
)
def test_stomp_unknown_command_error_quotes_whole_characters(
    module_broker, stomp_clients, line, connect
):
    """An unknown command line of multi-byte characters (14-16 bytes; 9
    for `short`), first frame or after CONNECT: the ERROR quotes at most
    its first 13 bytes (codec: "at most 13 bytes of it"), cut after the
    last whole character that fits - no character split and replaced by
    U+FFFD, as AMQP reply texts are cut - and the frame is valid UTF-8."""
    headers, _, _ = refused(module_broker, line.encode() + b"\n\n\0", connect=connect)
    assert headers["message"] == f'unknown command "{utf8_prefix(line, 13)}"', headers
    assert_stomp_serves_quickly(module_broker, stomp_clients)


def test_stomp_bad_content_length_error_quotes_whole_characters(module_broker, stomp_clients):
    """A `content-length` of 100 multi-byte characters: the ERROR quotes
    its first 32 characters, whole."""
    value = "é€😀" * 34
    frame = stomp_build("SEND", [("destination", "/queue/x"), ("content-length", value)], b"x")
    headers, _, _ = refused(module_broker, frame)
    assert headers["message"] == f'invalid content-length "{value[:32]}"', headers
    assert_stomp_serves_quickly(module_broker, stomp_clients)


@pytest.mark.parametrize(
    "name", ["é" * 127, "€" * 85, "😀" * 63], ids=["2-byte", "3-byte", "4-byte"]
)
@pytest.mark.parametrize("what", ["queue", "exchange"])
def test_stomp_not_found_for_a_multibyte_name_has_valid_utf8_text(
    module_broker, stomp_clients, name, what
):
    """SUBSCRIBE to a missing `/amq/queue/<name>` or SEND to a missing
    `/exchange/<name>/k`, names of ~255 bytes of multi-byte characters:
    ERROR `not_found` whose text/plain body names it whole (a body has no
    255-byte cap), valid UTF-8; a fresh client is served."""
    if what == "queue":
        frame = stomp_build("SUBSCRIBE", {"destination": f"/amq/queue/{name}", "id": "1"})
        text = f"NOT_FOUND - no queue '{name}' in vhost '/'"
    else:
        frame = stomp_build("SEND", {"destination": f"/exchange/{name}/k"}, b"x")
        text = f"NOT_FOUND - no exchange '{name}'"
    headers, body, _ = refused(module_broker, frame)
    assert (headers["message"], headers.get("content-type"), body) == (
        "not_found",
        "text/plain",
        text,
    )
    assert_stomp_serves_quickly(module_broker, stomp_clients)
