"""STOMP basics: CONNECT in each version (1.0, 1.1, 1.2) and version
negotiation, logins, virtual hosts through `host`, the anonymous user,
queue SEND/MESSAGE with every mapped header, binary bodies, receipts,
topic wildcards, /exchange/ destinations, and heart-beats (the values
CONNECTED announces, the EOLs the broker sends, and the disconnection of
a silent client)."""

import time

import pytest

from broker_support import Broker
from stomp_support import (
    ALL_VERSIONS,
    assert_serves,
    build,
    stomp_clients,  # noqa: F401 (fixture)
    uid,
)


@pytest.fixture(scope="module")
def auth_broker(tmp_path_factory):
    """A broker with vhosts "/" and "v2", user alice (both vhosts), bob
    (only "/") and carol (only "/", a password with backslashes)."""
    d = tmp_path_factory.mktemp("auth")
    config = d / "junction.toml"
    config.write_text('[broker]\nvhosts = ["/", "v2"]\n')
    b = Broker(d / "data", config)
    b.add_user("alice", "s3cret", ["/", "v2"])
    b.add_user("bob", "b0b-pw", ["/"])
    b.add_user("carol", "a\\c:b\\n", ["/"])
    b.start()
    yield b
    b.stop()


# --- CONNECT and versions -----------------------------------------------------


@ALL_VERSIONS
def test_connected_names_version_server_session_and_heart_beat(module_broker, stomp_clients, version):
    a = stomp_clients.connect(module_broker, version)
    b = stomp_clients.connect(module_broker, version)
    h = a.connected_frame.headers
    assert h["version"] == version
    assert h["server"].startswith("Junction/") and len(h["server"]) > len("Junction/")
    assert h["heart-beat"] == "0,0"
    assert h["session"] and b.connected_frame.headers["session"]
    assert h["session"] != b.connected_frame.headers["session"]


@ALL_VERSIONS
def test_queue_send_and_receive_in_each_version(module_broker, stomp_clients, names, version):
    q = names("q")
    c = stomp_clients.connect(module_broker, version)
    sub = c.subscribe(f"/queue/{q}")
    for i in range(3):
        c.send(f"/queue/{q}", f"m{i}")
    c.send(f"/queue/{q}", "last", receipt=True)
    got = c.exactly(4)
    assert [m.body for m in got] == [b"m0", b"m1", b"m2", b"last"]
    for m in got:
        # 1.0 without an id: the destination stands in for it.
        assert m.headers["subscription"] == (sub if version != "1.0" else f"/queue/{q}")
        assert m.headers["destination"] == f"/queue/{q}"
        assert m.headers["redelivered"] == "false"
        assert m.headers["content-length"] == str(len(m.body))
        assert "ack" not in m.headers, "auto mode MESSAGEs have no ack header"
    ids = [m.headers["message-id"] for m in got]
    assert len(set(ids)) == 4 and all(ids)
    c.disconnect()


@pytest.mark.parametrize(
    "offer,chosen",
    [
        (None, "1.0"),
        ("1.0", "1.0"),
        ("1.1", "1.1"),
        ("1.2", "1.2"),
        ("1.0,1.1", "1.1"),
        ("1.2,1.0", "1.2"),
        ("1.1,1.0,1.2", "1.2"),
        ("2.0,1.1", "1.1"),
    ],
)
def test_version_negotiation_picks_the_highest_common_version(module_broker, stomp_clients, offer, chosen):
    raw = stomp_clients.raw(module_broker)
    f = raw.connect(version=offer, host="/" if offer is not None else None)
    assert f.cmd == "CONNECTED", f
    assert f.headers["version"] == chosen


@pytest.mark.parametrize("offer", ["2.0", "0.9,3.0", ""])
def test_no_common_version_is_an_error_listing_the_supported_ones(module_broker, stomp_clients, offer):
    raw = stomp_clients.raw(module_broker)
    raw.send_frame("CONNECT", [("accept-version", offer), ("host", "/")])
    f = raw.expect_error_and_close()
    assert f.headers["version"] == "1.0,1.1,1.2"
    assert f.headers["message"]
    assert_serves(module_broker, stomp_clients)


def test_connect_frame_and_stomp_frame_both_open_a_session(module_broker, stomp_clients):
    for cmd in ["CONNECT", "STOMP"]:
        raw = stomp_clients.raw(module_broker)
        raw.send_frame(cmd, [("accept-version", "1.2"), ("host", "/"), ("login", "guest"), ("passcode", "guest")])
        f = raw.expect("CONNECTED")
        assert f.headers["version"] == "1.2"


# --- logins and virtual hosts ---------------------------------------------------


@ALL_VERSIONS
def test_a_user_logs_in_with_login_and_passcode(auth_broker, stomp_clients, version):
    c = stomp_clients(auth_broker, version)
    f = c.connect(login="alice", passcode="s3cret")
    assert f.cmd == "CONNECTED", (f.headers, f.body)
    q = uid("q")
    c.subscribe(f"/queue/{q}")
    c.send(f"/queue/{q}", "from alice", {"user-id": "alice"}, receipt=True)
    (m,) = c.exactly(1)
    assert (m.body, m.headers["user-id"]) == (b"from alice", "alice")


@pytest.mark.parametrize(
    "login,passcode",
    [("alice", "wrong"), ("alice", ""), ("nobody", "s3cret"), ("guest", "nope")],
    ids=["bad-password", "empty-password", "unknown-user", "guest-bad-password"],
)
def test_a_refused_login_is_an_error_and_a_close(auth_broker, stomp_clients, login, passcode):
    raw = stomp_clients.raw(auth_broker)
    f = raw.connect(login=login, passcode=passcode)
    assert f.cmd == "ERROR", f
    assert f.headers["message"] == "access_refused"
    assert raw.wait_closed() == []
    stomp_clients.connect(auth_broker, login="alice", passcode="s3cret").disconnect()


def test_without_login_the_anonymous_user_is_guest(module_broker, stomp_clients, names):
    q = names("q")
    c = stomp_clients.connect(module_broker, "1.2", login=None)
    c.subscribe(f"/queue/{q}")
    c.send(f"/queue/{q}", "anon", {"user-id": "guest"}, receipt=True)
    (m,) = c.exactly(1)
    assert (m.body, m.headers["user-id"]) == (b"anon", "guest")


def test_user_id_other_than_the_login_is_refused(auth_broker, stomp_clients):
    q = uid("q")
    c = stomp_clients.connect(auth_broker, login="bob", passcode="b0b-pw")
    c.send(f"/queue/{q}", "spoof", {"user-id": "alice", "receipt": "r-spoof"})
    e = c.wait_error()
    assert e.headers["message"] == "access_refused"
    assert e.headers["receipt-id"] == "r-spoof"
    c.wait_disconnected()
    # nothing reached the queue
    w = stomp_clients.connect(auth_broker, login="alice", passcode="s3cret")
    w.subscribe(f"/queue/{q}")
    w.exactly(0)


def test_host_header_selects_the_virtual_host(auth_broker, stomp_clients):
    q = uid("q")
    in_v2 = stomp_clients(auth_broker, "1.2", vhost="v2").connected(login="alice", passcode="s3cret")
    in_root = stomp_clients(auth_broker, "1.2", vhost="/").connected(login="alice", passcode="s3cret")
    in_root.subscribe(f"/queue/{q}")
    in_v2.subscribe(f"/queue/{q}")
    in_v2.send(f"/queue/{q}", "for v2", receipt=True)
    in_root.send(f"/queue/{q}", "for root", receipt=True)
    assert [m.body for m in in_v2.exactly(1)] == [b"for v2"]
    assert [m.body for m in in_root.exactly(1)] == [b"for root"]


def test_connect_headers_are_not_unescaped_in_1_2(auth_broker, stomp_clients):
    # STOMP 1.2: "CONNECT and CONNECTED frames do not escape" (a password
    # may hold backslashes and colons as they are)
    raw = stomp_clients.raw(auth_broker)
    f = raw.connect(version="1.2", login="carol", passcode="a\\c:b\\n")
    assert f.cmd == "CONNECTED", f


def test_a_user_without_access_to_the_vhost_is_refused(auth_broker, stomp_clients):
    raw = stomp_clients.raw(auth_broker)
    f = raw.connect(login="bob", passcode="b0b-pw", host="v2")
    assert f.cmd == "ERROR", f
    assert f.headers["message"] == "access_refused"
    assert raw.wait_closed() == []


@pytest.mark.parametrize("version", ["1.1", "1.2"])
def test_an_unknown_vhost_is_refused(module_broker, stomp_clients, version):
    c = stomp_clients(module_broker, version, vhost="no-such-vhost")
    f = c.connect()
    assert f.cmd == "ERROR"
    assert f.headers["message"] == "access_refused"
    c.wait_disconnected()


def test_stomp_py_12_default_host_header_is_not_a_vhost(module_broker, stomp_clients):
    # stomp.py's 1.2 connection sends host:127.0.0.1 unless given a vhost;
    # RabbitMQ refuses it as an unknown vhost, and so does Junction.
    c = stomp_clients(module_broker, "1.2", vhost=None)
    f = c.connect()
    assert f.cmd == "ERROR"
    assert f.headers["message"] == "access_refused"
    c.wait_disconnected()


def test_stomp_py_11_without_a_host_header_uses_the_default_vhost(module_broker, stomp_clients):
    c = stomp_clients(module_broker, "1.1", vhost=None)
    f = c.connect()
    assert f.cmd == "CONNECTED", (f.headers, f.body)


# --- headers and bodies --------------------------------------------------------


def test_every_mapped_header_reaches_the_consumer(module_broker, stomp_clients, names):
    q = names("q")
    c = stomp_clients.connect(module_broker, "1.2")
    sub = c.subscribe(f"/queue/{q}")
    sent = {
        "content-type": "application/json",
        "content-encoding": "identity",
        "correlation-id": "corr-42",
        "reply-to": "/temp-queue/replies",
        "priority": "5",
        "expiration": "60000",
        "type": "order.created",
        "app-id": "shop",
        "user-id": "guest",
        "timestamp": "1700000000000",
        "message-id": "client-msg-1",
        "persistent": "true",
        "x-custom": "custom value",
        "multi-line": "line1\nline2",
    }
    body = b'{"n":1}'
    c.send(f"/queue/{q}", body, sent, receipt=True)
    (m,) = c.exactly(1)
    assert m.body == body
    h = m.headers
    expected = {
        "subscription": sub,
        "destination": f"/queue/{q}",
        "redelivered": "false",
        "content-length": str(len(body)),
        "persistent": "true",
        "content-type": "application/json",
        "content-encoding": "identity",
        "correlation-id": "corr-42",
        "priority": "5",
        "expiration": "60000",
        "type": "order.created",
        "app-id": "shop",
        "user-id": "guest",
        "timestamp": "1700000000000",
        "amqp-message-id": "client-msg-1",
        "x-custom": "custom value",
        "multi-line": "line1\nline2",
    }
    for k, v in expected.items():
        assert h.get(k) == v, (k, h)
    assert h["message-id"] and h["message-id"] != "client-msg-1"
    # a /temp-queue/ in reply-to becomes the private queue's name
    assert h["reply-to"].startswith("/reply-queue/amq.gen-"), h["reply-to"]
    assert set(h) == set(expected) | {"message-id", "reply-to"}, sorted(h)


def test_a_reply_to_queue_destination_is_a_queue_name_in_the_core_and_still_answerable(
    module_broker, stomp_clients, names
):
    # Unlike RabbitMQ (which passes reply-to through verbatim), a /queue/
    # reply-to becomes the bare queue name in the core, so an AMQP
    # responder can publish to it through the default exchange; a STOMP
    # consumer sees it as /reply-queue/<name> (docs/stomp.md), and a SEND
    # there reaches the same queue.
    q, replies = names("q"), names("replies")
    c = stomp_clients.connect(module_broker, "1.2")
    c.subscribe(f"/queue/{q}")
    c.send(f"/queue/{q}", "r", {"reply-to": f"/queue/{replies}"}, receipt=True)
    (m,) = c.exactly(1)
    assert m.headers["reply-to"] == f"/reply-queue/{replies}"
    c.subscribe(f"/queue/{replies}", id="replies")
    c.send(m.headers["reply-to"], "answer", receipt=True)
    answer = c.exactly(2)[1]
    assert answer.body == b"answer"
    assert answer.headers["subscription"] == "replies"


def test_escaped_header_names_and_values_round_trip_in_1_2(module_broker, stomp_clients, names):
    q = names("q")
    raw = stomp_clients.raw(module_broker).connected(version="1.2")
    raw.send_frame("SUBSCRIBE", {"destination": f"/queue/{q}", "id": "s", "receipt": "r0"})
    assert raw.expect("RECEIPT").headers["receipt-id"] == "r0"
    raw.send(
        b"SEND\ndestination:/queue/" + q.encode() + b"\n"
        b"colon\\ckey:a\\cb\n"
        b"back\\\\slash:x\\\\y\n"
        b"lines:one\\ntwo\\rthree\n"
        b"\nbody\0"
    )
    m = raw.expect("MESSAGE")
    assert m.body == b"body"
    assert m.headers["colon:key"] == "a:b"
    assert m.headers["back\\slash"] == "x\\y"
    assert m.headers["lines"] == "one\ntwo\rthree"


def test_header_values_are_not_unescaped_in_1_0(module_broker, stomp_clients, names):
    q = names("q")
    raw = stomp_clients.raw(module_broker).connected(version="1.0")
    raw.send_frame("SUBSCRIBE", {"destination": f"/queue/{q}", "receipt": "r0"})
    assert raw.expect("RECEIPT").headers["receipt-id"] == "r0"
    raw.send(b"SEND\ndestination:/queue/" + q.encode() + b"\nurl:http://x/a\\cb\n\nbody\0")
    m = raw.expect("MESSAGE")
    # 1.0 has no escapes: the value arrives as sent
    assert [v for k, v in m.header_list if k == "url"] == ["http://x/a\\cb"]


def test_amqp_message_id_header_sets_the_message_id(module_broker, stomp_clients, names):
    q = names("q")
    c = stomp_clients.connect(module_broker, "1.2")
    c.subscribe(f"/queue/{q}")
    c.send(f"/queue/{q}", "x", {"amqp-message-id": "amqp-id-7"}, receipt=True)
    (m,) = c.exactly(1)
    assert m.headers["amqp-message-id"] == "amqp-id-7"
    assert m.headers["persistent"] == "false"


@ALL_VERSIONS
def test_binary_bodies_with_nul_bytes_round_trip_exactly(module_broker, stomp_clients, names, version):
    q = names("q")
    c = stomp_clients.connect(module_broker, version)
    c.subscribe(f"/queue/{q}")
    bodies = [
        bytes(range(256)) * 4,
        b"\0",
        b"\0\0\0head\0tail\0\0",
        bytes((i * 7 + 3) % 256 for i in range(300_000)),
        b"\n\r\n\0\n",
    ]
    for b in bodies:
        c.send(f"/queue/{q}", b)
    c.send(f"/queue/{q}", b"end", receipt=True)
    got = c.exactly(len(bodies) + 1)
    assert [m.body for m in got] == bodies + [b"end"]
    assert [m.headers["content-length"] for m in got] == [str(len(b)) for b in bodies + [b"end"]]


def test_a_body_without_content_length_ends_at_the_first_nul(module_broker, stomp_clients, names):
    q = names("q")
    raw = stomp_clients.raw(module_broker).connected()
    raw.send_frame("SUBSCRIBE", {"destination": f"/queue/{q}", "id": "s"})
    raw.send_frame("SEND", {"destination": f"/queue/{q}"}, b"plain text body")
    raw.send_frame("SEND", {"destination": f"/queue/{q}", "receipt": "r"}, b"")
    frames = [raw.read_frame() for _ in range(3)]
    msgs = [f for f in frames if f.cmd == "MESSAGE"]
    assert [m.body for m in msgs] == [b"plain text body", b""]
    assert [m.headers["content-length"] for m in msgs] == ["15", "0"]
    assert [f.headers["receipt-id"] for f in frames if f.cmd == "RECEIPT"] == ["r"]


def test_repeated_headers_the_first_one_wins(module_broker, stomp_clients, names):
    qa, qb = names("a"), names("b")
    raw = stomp_clients.raw(module_broker).connected()
    raw.send_frame("SUBSCRIBE", [("destination", f"/queue/{qa}"), ("id", "s"), ("receipt", "r1")])
    raw.expect("RECEIPT")
    raw.send_frame(
        "SEND",
        [("destination", f"/queue/{qa}"), ("destination", f"/queue/{qb}"), ("color", "blue"), ("color", "red")],
        b"first wins",
    )
    m = raw.expect("MESSAGE")
    assert (m.body, m.headers["destination"]) == (b"first wins", f"/queue/{qa}")
    assert [v for k, v in m.header_list if k == "color"] == ["blue"]


def test_send_headers_cannot_forge_message_frame_headers(module_broker, stomp_clients, names):
    q = names("q")
    raw = stomp_clients.raw(module_broker).connected()
    raw.send_frame("SUBSCRIBE", {"destination": f"/queue/{q}", "id": "real", "ack": "client", "receipt": "r1"})
    raw.expect("RECEIPT")
    forged = {
        "destination": f"/queue/{q}",
        "subscription": "forged",
        "message-id": "forged",
        "ack": "forged",
        "redelivered": "true",
        "content-length": "4",
    }
    raw.send_frame("SEND", forged, b"body")
    m = raw.expect("MESSAGE")
    names_seen = [k for k, _ in m.header_list]
    assert len(names_seen) == len(set(names_seen)), m.header_list
    assert m.headers["subscription"] == "real"
    assert m.headers["redelivered"] == "false"
    assert m.headers["ack"] != "forged"
    assert m.headers["message-id"] != "forged"
    assert m.headers["amqp-message-id"] == "forged"
    assert m.headers["destination"] == f"/queue/{q}"
    assert m.body == b"body"


def test_crlf_line_endings_are_accepted_in_1_2(module_broker, stomp_clients, names):
    q = names("q")
    raw = stomp_clients.raw(module_broker)
    raw.send(b"CONNECT\r\naccept-version:1.2\r\nhost:/\r\n\r\n\0\r\n")
    assert raw.expect("CONNECTED").headers["version"] == "1.2"
    raw.send(b"SUBSCRIBE\r\ndestination:/queue/" + q.encode() + b"\r\nid:s\r\n\r\n\0\r\n")
    raw.send(b"SEND\r\ndestination:/queue/" + q.encode() + b"\r\ncolor:red\r\n\r\nbody\r\n\0\r\n")
    m = raw.expect("MESSAGE")
    assert (m.body, m.headers["color"]) == (b"body\r\n", "red")


def test_many_messages_arrive_complete_and_in_order(module_broker, stomp_clients, names):
    q = names("q")
    c = stomp_clients.connect(module_broker)
    c.subscribe(f"/queue/{q}")
    n = 2000
    for i in range(n):
        c.send(f"/queue/{q}", b"%d" % i, receipt=(i == n - 1))
    got = c.exactly(n, timeout=20)
    assert [m.body for m in got] == [b"%d" % i for i in range(n)]
    assert len({m.headers["message-id"] for m in got}) == n


@pytest.mark.parametrize("version", ["1.1", "1.2"])
def test_unsubscribe_stops_deliveries(module_broker, stomp_clients, names, version):
    q = names("q")
    c = stomp_clients.connect(module_broker, version)
    sub = c.subscribe(f"/queue/{q}")
    c.send(f"/queue/{q}", "one", receipt=True)
    c.wait_messages(1)
    c.unsubscribe(sub)
    c.send(f"/queue/{q}", "two", receipt=True)
    assert [m.body for m in c.exactly(1)] == [b"one"]
    other = stomp_clients.connect(module_broker)
    other.subscribe(f"/queue/{q}")
    assert [m.body for m in other.exactly(1)] == [b"two"]


def test_1_0_unsubscribe_by_destination(module_broker, stomp_clients, names):
    q = names("q")
    raw = stomp_clients.raw(module_broker).connected(version="1.0")
    raw.send_frame("SUBSCRIBE", {"destination": f"/queue/{q}", "receipt": "r1"})
    raw.expect("RECEIPT")
    raw.send_frame("UNSUBSCRIBE", {"destination": f"/queue/{q}", "receipt": "r2"})
    assert raw.expect("RECEIPT").headers["receipt-id"] == "r2"
    raw.send_frame("SEND", {"destination": f"/queue/{q}", "receipt": "r3"}, b"kept")
    assert raw.expect("RECEIPT").headers["receipt-id"] == "r3"
    c = stomp_clients.connect(module_broker)
    c.subscribe(f"/queue/{q}")
    assert [m.body for m in c.exactly(1)] == [b"kept"]


# --- receipts ------------------------------------------------------------------


def test_every_frame_with_a_receipt_gets_its_receipt(module_broker, stomp_clients, names):
    q = names("q")
    raw = stomp_clients.raw(module_broker).connected()
    raw.send_frame("SUBSCRIBE", {"destination": f"/queue/{q}", "id": "s1", "ack": "client-individual", "receipt": "r-sub"})
    assert raw.expect("RECEIPT").headers["receipt-id"] == "r-sub"
    raw.send_frame("SEND", {"destination": f"/queue/{q}", "receipt": "r-send"}, b"x")
    frames = [raw.read_frame(), raw.read_frame()]
    assert sorted(f.cmd for f in frames) == ["MESSAGE", "RECEIPT"]
    msg = [f for f in frames if f.cmd == "MESSAGE"][0]
    assert [f.headers["receipt-id"] for f in frames if f.cmd == "RECEIPT"] == ["r-send"]
    for cmd, headers in [
        ("BEGIN", {"transaction": "t1", "receipt": "r-begin"}),
        ("ACK", {"id": msg.headers["ack"], "transaction": "t1", "receipt": "r-ack"}),
        ("COMMIT", {"transaction": "t1", "receipt": "r-commit"}),
        ("BEGIN", {"transaction": "t2", "receipt": "r-begin2"}),
        ("ABORT", {"transaction": "t2", "receipt": "r-abort"}),
        ("UNSUBSCRIBE", {"id": "s1", "receipt": "r-unsub"}),
        ("DISCONNECT", {"receipt": "r-disc"}),
    ]:
        raw.send_frame(cmd, headers)
        f = raw.expect("RECEIPT")
        assert f.headers == {"receipt-id": headers["receipt"]}, (cmd, f)
    assert raw.wait_closed() == []


def test_disconnect_receipt_comes_after_every_earlier_send(module_broker, stomp_clients, names):
    q = names("q")
    raw = stomp_clients.raw(module_broker)
    data = build("CONNECT", {"accept-version": "1.2", "host": "/", "login": "guest", "passcode": "guest"})
    n = 200
    for i in range(n):
        data += build("SEND", {"destination": f"/queue/{q}", "persistent": "true"}, b"m%d" % i)
    data += build("DISCONNECT", {"receipt": "bye"})
    raw.send(data)  # one write: the broker reads it all at once
    assert raw.expect("CONNECTED").headers["version"] == "1.2"
    assert raw.expect("RECEIPT").headers["receipt-id"] == "bye"
    assert raw.wait_closed() == []
    c = stomp_clients.connect(module_broker)
    c.subscribe(f"/queue/{q}")
    assert [m.body for m in c.exactly(n)] == [b"m%d" % i for i in range(n)]


def test_a_persistent_send_receipt_means_the_message_is_on_disk(broker, stomp_clients):
    q = uid("q")
    c = stomp_clients.connect(broker)
    c.send(f"/queue/{q}", "durable-1", {"persistent": "true"}, receipt=True)
    c.send(f"/queue/{q}", "durable-2", {"persistent": "true"}, receipt=True)
    broker.kill9()
    broker.start()
    c2 = stomp_clients.connect(broker)
    c2.subscribe(f"/queue/{q}")
    got = c2.exactly(2)
    assert [m.body for m in got] == [b"durable-1", b"durable-2"]
    assert [m.headers["persistent"] for m in got] == ["true", "true"]


# --- topics and exchanges ----------------------------------------------------------


def test_topic_wildcards_star_hash_and_greater_than(module_broker, stomp_clients):
    p = uid("w")
    c = stomp_clients.connect(module_broker)
    patterns = {
        "exact": f"{p}.b.c",
        "star": f"{p}.*.c",
        "hash": f"{p}.#",
        "gt": f"{p}.>",
        "star-end": f"{p}.b.*",
    }
    subs = {name: c.subscribe(f"/topic/{pat}", id=name) for name, pat in patterns.items()}
    keys = [f"{p}.b.c", f"{p}.x.c", f"{p}.b", f"{p}.b.c.d", f"{p}", f"zz.b.c", f"{p}.b.x"]
    for k in keys:
        c.send(f"/topic/{k}", k)
    c.send(f"/queue/{uid('sync')}", "sync", receipt=True)
    expected = {
        "exact": [f"{p}.b.c"],
        "star": [f"{p}.b.c", f"{p}.x.c"],
        "hash": [f"{p}.b.c", f"{p}.x.c", f"{p}.b", f"{p}.b.c.d", f"{p}", f"{p}.b.x"],
        "gt": [f"{p}.b.c", f"{p}.x.c", f"{p}.b", f"{p}.b.c.d", f"{p}", f"{p}.b.x"],
        "star-end": [f"{p}.b.c", f"{p}.b.x"],
    }
    total = sum(len(v) for v in expected.values())
    got = c.exactly(total)
    for name in patterns:
        mine = [m for m in got if m.headers["subscription"] == subs[name]]
        assert [m.body.decode() for m in mine] == expected[name], name
        assert [m.headers["destination"] for m in mine] == [f"/topic/{k}" for k in expected[name]]


def test_a_topic_message_reaches_every_subscriber_and_none_is_kept(module_broker, stomp_clients):
    k = uid("t")
    a = stomp_clients.connect(module_broker)
    b = stomp_clients.connect(module_broker, "1.0")
    a.subscribe(f"/topic/{k}")
    b.subscribe(f"/topic/{k}")
    a.send(f"/topic/{k}", "fan", receipt=True)
    assert [m.body for m in a.exactly(1)] == [b"fan"]
    assert [m.body for m in b.exactly(1)] == [b"fan"]
    # a topic message with no subscriber is dropped
    a.disconnect()
    b.disconnect()
    pub = stomp_clients.connect(module_broker)
    pub.send(f"/topic/{k}", "nobody listens", receipt=True)
    late = stomp_clients.connect(module_broker)
    late.subscribe(f"/topic/{k}")
    late.exactly(0)


def test_exchange_destinations_and_the_topic_rule_for_amq_topic(module_broker, stomp_clients):
    k = uid("k")
    c = stomp_clients.connect(module_broker)
    direct = c.subscribe(f"/exchange/amq.direct/{k}", id="direct")
    topic = c.subscribe(f"/topic/{k}.*", id="topic")
    via_ex = c.subscribe(f"/exchange/amq.topic/{k}.#", id="via-ex")
    c.send(f"/exchange/amq.direct/{k}", "d1")
    c.send(f"/exchange/amq.direct/{k}-other", "not routed")
    c.send(f"/exchange/amq.topic/{k}.x", "t1")
    c.send(f"/topic/{k}.y", "t2", receipt=True)
    got = c.exactly(5)
    by_sub = {}
    for m in got:
        by_sub.setdefault(m.headers["subscription"], []).append((m.body, m.headers["destination"]))
    assert by_sub == {
        direct: [(b"d1", f"/exchange/amq.direct/{k}")],
        topic: [(b"t1", f"/topic/{k}.x"), (b"t2", f"/topic/{k}.y")],
        via_ex: [(b"t1", f"/topic/{k}.x"), (b"t2", f"/topic/{k}.y")],
    }


def test_exchange_destination_without_a_key(module_broker, stomp_clients, amqp_channel, names):
    x = names("fan")
    amqp_channel.exchange_declare(x, "fanout")
    c = stomp_clients.connect(module_broker)
    c.subscribe(f"/exchange/{x}", id="s1")
    c.subscribe(f"/exchange/{x}/ignored.key", id="s2")
    c.send(f"/exchange/{x}/any.key", "to all", receipt=True)
    got = c.exactly(2)
    assert sorted((m.headers["subscription"], m.body, m.headers["destination"]) for m in got) == [
        ("s1", b"to all", f"/exchange/{x}/any.key"),
        ("s2", b"to all", f"/exchange/{x}/any.key"),
    ]


# --- heart-beats -----------------------------------------------------------------


@pytest.mark.parametrize(
    "offer,answer",
    [
        ("0,0", "0,0"),
        ("4000,500", "1000,4000"),
        ("500,2000", "2000,1000"),
        ("0,3000", "3000,0"),
        ("3000,0", "0,3000"),
        ("1000,1000", "1000,1000"),
        ("10,10", "1000,1000"),
    ],
)
def test_connected_heart_beat_is_max_of_the_client_values_and_one_second(
    module_broker, stomp_clients, offer, answer
):
    raw = stomp_clients.raw(module_broker)
    f = raw.connect(heart_beat=offer)
    assert f.cmd == "CONNECTED", f
    assert f.headers["heart-beat"] == answer


def test_an_invalid_heart_beat_header_is_an_error(module_broker, stomp_clients):
    raw = stomp_clients.raw(module_broker)
    f = raw.connect(heart_beat="fast")
    assert f.cmd == "ERROR", f
    assert f.headers["message"] == "invalid heart-beat"
    assert raw.wait_closed() == []


@pytest.mark.deadline(20)
def test_the_broker_sends_heart_beats_at_the_negotiated_interval(module_broker, stomp_clients):
    raw = stomp_clients.raw(module_broker)
    f = raw.connect(heart_beat="0,1000")
    assert f.headers["heart-beat"] == "1000,0"
    start = time.monotonic()
    raw.sock.settimeout(0.2)
    while time.monotonic() - start < 3.5:
        try:
            chunk = raw.sock.recv(100)
        except TimeoutError:
            continue
        assert chunk, "broker closed a connection that promised no heart-beats"
        raw.buf += chunk
    assert raw.buf.strip(b"\r\n") == b"", raw.buf
    eols = raw.buf.count(b"\n")
    assert 2 <= eols <= 4, raw.buf


@pytest.mark.deadline(20)
def test_a_client_silent_past_its_heart_beat_promise_is_disconnected(module_broker, stomp_clients):
    raw = stomp_clients.raw(module_broker)
    f = raw.connect(heart_beat="1000,0")
    assert f.headers["heart-beat"] == "0,1000"
    start = time.monotonic()
    frames = raw.wait_closed(timeout=6.0)
    took = time.monotonic() - start
    # 1000 ms promised + max(500 ms, 1 s) of grace = 2 s
    assert 1.5 <= took <= 3.2, took
    assert all(f.cmd == "ERROR" for f in frames), frames
    assert_serves(module_broker, stomp_clients)


@pytest.mark.deadline(20)
def test_a_client_that_keeps_its_heart_beat_promise_stays_connected(module_broker, stomp_clients, names):
    raw = stomp_clients.raw(module_broker)
    f = raw.connect(heart_beat="1000,0")
    assert f.headers["heart-beat"] == "0,1000"
    deadline = time.monotonic() + 4.0
    while time.monotonic() < deadline:
        raw.send(b"\n")
        time.sleep(0.4)
    raw.send_frame("SEND", {"destination": f"/queue/{names('q')}", "receipt": "alive"}, b"x")
    assert raw.expect("RECEIPT").headers["receipt-id"] == "alive"


@pytest.mark.deadline(20)
def test_stomp_py_with_heart_beats_stays_connected(module_broker, stomp_clients, names):
    q = names("q")
    c = stomp_clients(module_broker, "1.2", heartbeats=(1000, 1000)).connected()
    assert c.connected_frame.headers["heart-beat"] == "1000,1000"
    c.subscribe(f"/queue/{q}")
    time.sleep(3.5)
    assert c.is_connected
    assert c.listener.heartbeats >= 2
    c.send(f"/queue/{q}", "after beats", receipt=True)
    assert [m.body for m in c.exactly(1)] == [b"after beats"]
