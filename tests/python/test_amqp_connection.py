"""AMQP 0-9-1 connection life: login, vhosts, server properties,
heartbeats (AMQP 0-9-1 section 4.2.7) and graceful shutdown, with pika and
with a raw socket where pika hides the wire."""

import signal
import time

import pika
import pytest
from pika.exceptions import (
    ConnectionClosedByBroker,
    ProbableAccessDeniedError,
    ProbableAuthenticationError,
)

import amqp_raw
from amqp_raw import RawClient
from amqp_support import LOGIN_REFUSED, get_all, publish


def test_plain_login_as_guest_opens_a_working_connection(module_broker, names):
    conn = module_broker.connect()
    try:
        ch = conn.channel()
        q = names("q")
        ch.queue_declare(q)
        publish(ch, q, b"hello")
        got = get_all(ch, q)
        assert [b for _, _, b in got] == [b"hello"]
        assert conn.is_open
    finally:
        conn.close()


def test_wrong_password_is_refused_with_access_refused_403(module_broker):
    with pytest.raises(ProbableAuthenticationError) as e:
        module_broker.connect(password="not-the-password")
    # pika wraps the broker's connection.close in its heuristic error.
    assert f"ConnectionClosedByBroker: (403) '{LOGIN_REFUSED}'" in str(e.value)


def test_wrong_password_gets_connection_close_403_instead_of_tune(module_broker):
    with RawClient(module_broker.amqp_port) as c:
        c.start(password="wrong")
        close = c.expect_connection_close()
        assert (close.reply_code, close.reply_text) == (403, LOGIN_REFUSED)
        assert c.read_until_eof(timeout=5) == []


def test_user_with_vhost_other_opens_it_and_is_refused_the_default_vhost(make_broker, names):
    b = make_broker(vhosts=["/", "other"], users=[("alice", "s3cret", ["other"])])
    conn = b.connect(user="alice", password="s3cret", vhost="other")
    try:
        ch = conn.channel()
        q = names("q")
        ch.queue_declare(q)
        publish(ch, q, b"in other")
        assert [body for _, _, body in get_all(ch, q)] == [b"in other"]
    finally:
        conn.close()
    with pytest.raises(ProbableAccessDeniedError) as e:
        b.connect(user="alice", password="s3cret", vhost="/")
    assert (
        "(403) \"ACCESS_REFUSED - access to vhost '/' refused for user 'alice' "
        "(no such vhost or no permission)\""
    ) in str(e.value)


def test_queues_of_one_vhost_are_invisible_from_another(make_broker, names):
    b = make_broker(vhosts=["/", "other"], users=[("alice", "s3cret", ["/", "other"])])
    q = names("q")
    conn = b.connect(user="alice", password="s3cret", vhost="other")
    try:
        conn.channel().queue_declare(q)
    finally:
        conn.close()
    conn = b.connect(user="alice", password="s3cret", vhost="/")
    try:
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
            conn.channel().queue_declare(q, passive=True)
        assert (e.value.reply_code, e.value.reply_text) == (
            404,
            f"NOT_FOUND - no queue '{q}' in vhost '/'",
        )
    finally:
        conn.close()


def test_unknown_vhost_is_refused_with_access_refused_403(module_broker):
    with pytest.raises(ProbableAccessDeniedError) as e:
        module_broker.connect(vhost="no-such-vhost")
    assert (
        "(403) \"ACCESS_REFUSED - access to vhost 'no-such-vhost' refused for user "
        "'guest' (no such vhost or no permission)\""
    ) in str(e.value)


def test_unknown_vhost_gets_connection_close_403_instead_of_open_ok(module_broker):
    with RawClient(module_broker.amqp_port) as c:
        c.start()
        c.tune()
        c.open("nope")
        close = c.expect_connection_close()
        assert (close.reply_code, close.reply_text) == (
            403,
            "ACCESS_REFUSED - access to vhost 'nope' refused for user 'guest' "
            "(no such vhost or no permission)",
        )
        assert c.read_until_eof(timeout=5) == []


def test_server_properties_advertise_the_rabbitmq_capabilities(module_broker):
    conn = module_broker.connect()
    try:
        caps = conn._impl.server_capabilities
        wanted = [
            "publisher_confirms",
            "exchange_exchange_bindings",
            "basic.nack",
            "consumer_cancel_notify",
            "connection.blocked",
            "authentication_failure_close",
            "per_consumer_qos",
        ]
        assert {k: caps.get(k) for k in wanted} == {k: True for k in wanted}
        assert conn._impl.server_properties["product"] == "Junction"
    finally:
        conn.close()


def test_silent_client_with_heartbeat_1_is_disconnected_within_4_seconds(module_broker):
    with RawClient(module_broker.amqp_port) as c:
        server_tune = c.handshake(heartbeat=1)
        assert server_tune == (2047, 131072, 60)
        started = time.monotonic()
        frames = c.read_until_eof(timeout=8)
        elapsed = time.monotonic() - started
    # Two missed heartbeats (AMQP 0-9-1 section 4.2.7): gone after 2 s,
    # checked every half interval.
    assert 1.9 <= elapsed <= 4.0, f"disconnected after {elapsed:.2f} s"
    kinds = {(f.type, f.channel) for f in frames}
    assert kinds == {(amqp_raw.FRAME_HEARTBEAT, 0)}, f"frames before EOF: {frames}"


@pytest.mark.deadline(20)
def test_pika_connection_with_heartbeat_1_that_keeps_reading_stays_open(module_broker, names):
    conn = module_broker.connect(heartbeat=1)
    try:
        deadline = time.monotonic() + 4.5
        while time.monotonic() < deadline:
            conn.process_data_events(time_limit=0.1)
        assert conn.is_open
        ch = conn.channel()
        q = names("q")
        ch.queue_declare(q)
        publish(ch, q, b"still here")
        assert [b for _, _, b in get_all(ch, q)] == [b"still here"]
    finally:
        if conn.is_open:
            conn.close()


def test_sigterm_closes_open_connections_with_320_and_exits_0(broker):
    conn = broker.connect()
    conn.channel()
    broker.proc.send_signal(signal.SIGTERM)
    with pytest.raises(ConnectionClosedByBroker) as e:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            conn.process_data_events(time_limit=0.1)
    assert (e.value.reply_code, e.value.reply_text) == (
        320,
        "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'",
    )
    assert broker.proc.wait(timeout=10) == 0
