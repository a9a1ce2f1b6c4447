"""Message content through the broker unchanged: every basic property,
header tables of every type pika writes, and bodies that are empty, small
or larger than frame_max (AMQP 0-9-1 section 4.2.6, content framing)."""

import hashlib

import pika
import pytest

import amqp_raw
from amqp_raw import RawClient
from amqp_support import channel_error, get_all

FRAME_MAX = 131072


def round_trip(ch, queue, body, props):
    ch.queue_declare(queue)
    ch.basic_publish("", queue, body, props)
    got = get_all(ch, queue)
    assert len(got) == 1
    return got[0]


def big_body(n):
    """n bytes that are not a repeating pattern, so a reordered or
    duplicated frame would show."""
    out = bytearray()
    i = 0
    while len(out) < n:
        out += hashlib.sha256(b"%d" % i).digest()
        i += 1
    return bytes(out[:n])


def test_every_basic_property_round_trips(amqp_channel, names):
    props = pika.BasicProperties(
        content_type="application/json",
        content_encoding="gzip",
        headers={"h": "v"},
        delivery_mode=2,
        priority=7,
        correlation_id="corr-1",
        reply_to="reply-queue",
        expiration="60000",
        message_id="msg-1",
        timestamp=1_700_000_000,
        type="order.created",
        user_id="guest",
        app_id="tests",
    )
    method, got, body = round_trip(amqp_channel, names("q"), b"{}", props)
    assert body == b"{}"
    assert vars(got) == vars(props)


def test_header_values_of_every_type_round_trip(amqp_channel, names):
    headers = {
        "int": 42,
        "negative": -7,
        "int64": 2**40,
        "str": "héllo wörld",
        "true": True,
        "false": False,
        "bytes": b"\x00\xff\x10",
        "void": None,
        "nested": {"a": 1, "b": {"c": "deep", "d": [1, 2]}},
        "list": [1, "two", True, {"k": "v"}, [3]],
        "empty-list": [],
        "empty-table": {},
    }
    _, got, _ = round_trip(
        amqp_channel, names("q"), b"x", pika.BasicProperties(headers=headers)
    )
    assert got.headers == headers


def test_message_without_properties_comes_back_without_properties(amqp_channel, names):
    _, got, body = round_trip(amqp_channel, names("q"), b"bare", None)
    assert body == b"bare"
    assert vars(got) == vars(pika.BasicProperties())


def test_empty_body_round_trips(amqp_channel, names):
    _, _, body = round_trip(amqp_channel, names("q"), b"", pika.BasicProperties())
    assert body == b""


def test_300_kb_body_round_trips_byte_identical(amqp_channel, names):
    sent = big_body(300 * 1024)
    _, _, body = round_trip(amqp_channel, names("q"), sent, pika.BasicProperties())
    assert len(body) == len(sent)
    assert body == sent


@pytest.mark.parametrize("frame_max", [4096, FRAME_MAX])
def test_body_larger_than_frame_max_is_sent_in_frames_of_the_negotiated_size(
    module_broker, names, frame_max
):
    sent = big_body(300 * 1024)
    payload_max = frame_max - 8
    q = names("q")
    with RawClient(module_broker.amqp_port) as c:
        c.handshake(frame_max=frame_max)
        c.open_channel(1)
        c.send(
            amqp_raw.method_frame(
                1,
                amqp_raw.QUEUE_DECLARE,
                b"\x00\x00" + amqp_raw.shortstr(q) + b"\x00" + amqp_raw.empty_table(),
            )
        )
        c.expect(1, amqp_raw.QUEUE_DECLARE_OK)
        c.send(amqp_raw.publish_frame(1, "", q) + amqp_raw.content_header_frame(1, len(sent)))
        for off in range(0, len(sent), payload_max):
            c.send(amqp_raw.body_frame(1, sent[off : off + payload_max]))
        c.send(amqp_raw.consume_frame(1, q, "t", no_ack=True))
        c.expect(1, amqp_raw.BASIC_CONSUME_OK)
        c.expect(1, amqp_raw.BASIC_DELIVER)
        header = c.read_frame()
        assert (header.type, header.channel) == (amqp_raw.FRAME_HEADER, 1)
        frames = []
        while sum(len(f.payload) for f in frames) < len(sent):
            f = c.read_frame()
            assert (f.type, f.channel) == (amqp_raw.FRAME_BODY, 1)
            frames.append(f)
    full, rest = divmod(len(sent), payload_max)
    assert [len(f.payload) for f in frames] == [payload_max] * full + ([rest] if rest else [])
    assert b"".join(f.payload for f in frames) == sent


def test_user_id_other_than_the_logged_in_user_closes_the_channel_with_406(amqp_channel, names):
    q = names("q")
    amqp_channel.queue_declare(q)
    amqp_channel.basic_publish("", q, b"forged", pika.BasicProperties(user_id="mallory"))
    assert channel_error(amqp_channel.queue_declare, q, passive=True) == (
        406,
        "PRECONDITION_FAILED - user_id property set to 'mallory' but authenticated user was 'guest'",
    )
