"""Malformed input on a raw socket: each ends that one connection the way
AMQP 0-9-1 prescribes (section 4.2.2 for the protocol header, 4.2.3 and
the reply codes for frame errors), and the broker keeps serving everyone
else."""

import struct

import pytest

import amqp_raw
from amqp_raw import RawClient
from amqp_support import assert_broker_serves


def close_then_eof(c):
    """Reads the broker's connection.close, answers close-ok and expects
    the socket to close with nothing more sent."""
    close = c.expect_connection_close()
    c.send_close_ok()
    assert c.read_until_eof(timeout=5) == []
    return close


@pytest.mark.parametrize(
    "header",
    [b"AMQP\x01\x01\x00\x0a", b"AMQP\x00\x00\x08\x00", b"GET / HTTP/1.1\r\n\r\n"],
    ids=["amqp-0-10", "amqp-0-8", "http"],
)
def test_wrong_protocol_header_is_answered_with_the_0_9_1_header_then_closed(
    module_broker, names, header
):
    with RawClient(module_broker.amqp_port) as c:
        c.send(header)
        assert c.read_raw_until_eof(timeout=5) == b"AMQP\x00\x00\x09\x01"
    assert_broker_serves(module_broker, names("q"))


def test_frame_larger_than_frame_max_closes_the_connection_with_501(module_broker, names):
    with RawClient(module_broker.amqp_port) as c:
        c.handshake(frame_max=131072)
        c.open_channel(1)
        # Only the 7-byte header: the size alone must be enough to refuse.
        c.send(struct.pack(">BHI", amqp_raw.FRAME_BODY, 1, 200_000))
        close = close_then_eof(c)
    assert (close.reply_code, close.reply_text) == (
        501,
        "FRAME_ERROR - frame of 200008 bytes exceeds frame_max 131072",
    )
    assert_broker_serves(module_broker, names("q"))


def test_frame_with_a_bad_frame_end_octet_closes_the_connection_with_501(module_broker, names):
    with RawClient(module_broker.amqp_port) as c:
        c.handshake()
        c.send(
            amqp_raw.frame(
                amqp_raw.FRAME_METHOD,
                1,
                struct.pack(">HH", *amqp_raw.CHANNEL_OPEN) + amqp_raw.shortstr(""),
                end=0x00,
            )
        )
        close = close_then_eof(c)
    assert (close.reply_code, close.reply_text) == (
        501,
        "FRAME_ERROR - malformed frame: missing frame-end octet",
    )
    assert_broker_serves(module_broker, names("q"))


def test_heartbeat_on_a_non_zero_channel_closes_the_connection_with_501(module_broker):
    with RawClient(module_broker.amqp_port) as c:
        c.handshake()
        c.send(amqp_raw.frame(amqp_raw.FRAME_HEARTBEAT, 3, b""))
        close = close_then_eof(c)
    assert (close.reply_code, close.reply_text) == (
        501,
        "FRAME_ERROR - heartbeat on a non-zero channel",
    )


def test_unparseable_method_arguments_close_the_connection_with_502(module_broker):
    with RawClient(module_broker.amqp_port) as c:
        c.handshake()
        c.open_channel(1)
        # queue.declare whose queue-name short string claims 200 bytes.
        c.send(amqp_raw.method_frame(1, amqp_raw.QUEUE_DECLARE, b"\x00\x00\xc8abc"))
        close = close_then_eof(c)
    assert close.reply_code == 502
    assert close.reply_text.startswith("SYNTAX_ERROR - "), close.reply_text


def test_method_on_an_unopened_channel_closes_the_connection_with_504(module_broker, names):
    with RawClient(module_broker.amqp_port) as c:
        c.handshake()
        c.send(
            amqp_raw.method_frame(
                5,
                amqp_raw.QUEUE_DECLARE,
                b"\x00\x00" + amqp_raw.shortstr("q") + b"\x00" + amqp_raw.empty_table(),
            )
        )
        close = close_then_eof(c)
    assert close == (504, "CHANNEL_ERROR - channel 5 is not open", 50, 10)
    assert_broker_serves(module_broker, names("q"))


def test_content_body_without_a_header_closes_the_connection_with_505(module_broker, names):
    with RawClient(module_broker.amqp_port) as c:
        c.handshake()
        c.open_channel(1)
        c.send(amqp_raw.body_frame(1, b"orphan body"))
        close = close_then_eof(c)
    assert (close.reply_code, close.reply_text) == (
        505,
        "UNEXPECTED_FRAME - content body on channel 1 without a content header",
    )
    assert_broker_serves(module_broker, names("q"))


def test_method_instead_of_the_announced_content_closes_the_connection_with_505(module_broker):
    with RawClient(module_broker.amqp_port) as c:
        c.handshake()
        c.open_channel(1)
        declare = amqp_raw.method_frame(
            1,
            amqp_raw.QUEUE_DECLARE,
            b"\x00\x00" + amqp_raw.shortstr("q") + b"\x00" + amqp_raw.empty_table(),
        )
        c.send(amqp_raw.publish_frame(1, "", "q") + declare)
        close = close_then_eof(c)
    assert close == (
        505,
        "UNEXPECTED_FRAME - expected content for basic.publish on channel 1, got a method",
        50,
        10,
    )
