"""MQTT connection lifecycle: CONNECT/CONNACK for 3.1, 3.1.1 and 5.0,
authentication, client identifiers, session takeover, the session-present
flag, keepalive (and its cap) and SIGTERM."""

import time

import pytest

from mqtt_support import (
    ALL_VERSIONS,
    CONNACK,
    DISCONNECT,
    PINGREQ_PACKET,
    PINGRESP,
    PUBACK,
    PUBLISH,
    V5,
    V311,
    Packet,
    clients,  # noqa: F401 (fixture)
    ack_packet,
    connect_packet,
    uid,
)

# v3 CONNACK return codes (3.1.1 section 3.2.2.3) and their v5 reason codes.
REFUSED_BAD_LOGIN = {3: 4, 4: 4, 5: 0x86}
REFUSED_NOT_AUTHORIZED = {3: 5, 4: 5, 5: 0x87}
RAW_VERSIONS = pytest.mark.parametrize("level", [3, 4, 5], ids=["v31", "v311", "v5"])


def refused_connack(raw, level, code):
    """The exact refusal: one CONNACK with session present 0 and `code`
    (v3: 0x20 0x02 0x00 code; v5 may add properties), then the close."""
    packets = raw.recv_until_closed()
    assert len(packets) == 1, packets
    if level == 5:
        assert raw.parse(packets[0])[:2] == (False, code), packets
    else:
        assert packets == [Packet(CONNACK, 0, bytes([0, code]))]


def round_trip(client, qos=1):
    topic = uid() + "/rt"
    assert client.subscribe(topic, qos=qos) == [qos]
    client.publish(topic, b"hi \x00\xff", qos=qos)
    got = client.wait_messages(1)
    assert [(m.topic, m.payload, m.qos, m.retain) for m in got] == [
        (topic, b"hi \x00\xff", qos, False)
    ]


@ALL_VERSIONS
def test_each_protocol_version_connects_anonymously_and_round_trips(
    module_broker, clients, version
):
    c = clients.connect(module_broker, version=version)
    assert c.connack.reason == 0
    assert c.connack.session_present is False
    round_trip(c)


@ALL_VERSIONS
def test_guest_login_is_accepted(module_broker, clients, version):
    c = clients.connect(module_broker, version=version, username="guest", password="guest")
    assert c.connack.reason == 0
    round_trip(c)


@RAW_VERSIONS
@pytest.mark.parametrize("user,password", [("guest", "wrong"), ("nobody", "guest")])
def test_bad_credentials_are_refused(module_broker, clients, level, user, password):
    raw = clients.raw(module_broker, level)
    raw.send(connect_packet(uid("c"), version=level, username=user, password=password))
    refused_connack(raw, level, REFUSED_BAD_LOGIN[level])


def test_anonymous_refused_when_disabled_and_users_still_log_in(make_broker, clients):
    broker = make_broker(mqtt_options=["allow_anonymous = false"])
    for level in (3, 4, 5):
        raw = clients.raw(broker, level)
        raw.send(connect_packet(uid("c"), version=level))
        refused_connack(raw, level, REFUSED_NOT_AUTHORIZED[level])
    # paho sees the same v5 reason code.
    c = clients.new(broker, version=V5)
    assert c.connect().reason == 0x87
    assert c.wait_disconnected().by_server is False
    round_trip(clients.connect(broker, version=V311, username="guest", password="guest"))


def test_added_user_logs_in_and_a_wrong_password_is_refused(make_broker, clients):
    broker = make_broker(users=[("alice", "s3cret pw", ["/"])])
    round_trip(clients.connect(broker, version=V5, username="alice", password="s3cret pw"))
    raw = clients.raw(broker, 4)
    raw.send(connect_packet(uid("c"), version=4, username="alice", password="s3cret"))
    refused_connack(raw, 4, 4)


def test_v5_empty_client_id_gets_a_distinct_assigned_identifier_that_is_a_real_id(
    module_broker, clients
):
    a = clients.connect(module_broker, client_id="", version=V5)
    b = clients.connect(module_broker, client_id="", version=V5)
    ida = a.connack.props["AssignedClientIdentifier"]
    idb = b.connack.props["AssignedClientIdentifier"]
    assert ida and idb and ida != idb
    round_trip(a)
    # The assigned id names a.s session: connecting with it takes a over.
    clients.connect(module_broker, client_id=ida, version=V5)
    gone = a.wait_disconnected()
    assert (gone.by_server, gone.reason) == (True, 0x8E)
    round_trip(b)


def test_v311_empty_client_id_with_clean_session_is_accepted(module_broker, clients):
    raw = clients.raw(module_broker, 4)
    assert raw.connect("", clean=True) == (False, 0, {})
    c = clients.connect(module_broker, client_id="", version=V311)
    round_trip(c)


def test_v311_empty_client_id_without_clean_session_is_rejected_with_rc_2(module_broker, clients):
    raw = clients.raw(module_broker, 4)
    raw.send(connect_packet("", version=4, clean=False))
    # 3.1.1 section 3.1.3.1: CONNACK 0x02 "identifier rejected", then close.
    refused_connack(raw, 4, 2)


@ALL_VERSIONS
def test_second_connection_with_the_same_client_id_takes_over(module_broker, clients, version):
    cid = uid("c")
    first = clients.connect(module_broker, client_id=cid, version=version)
    second = clients.connect(module_broker, client_id=cid, version=version)
    gone = first.wait_disconnected()
    if version == V5:
        # 5.0 section 3.1.4: DISCONNECT 0x8E "session taken over".
        assert (gone.by_server, gone.reason) == (True, 0x8E)
    else:
        assert gone.by_server is False
    assert second.disconnected is None
    round_trip(second)


def test_takeover_with_raw_v5_client_sends_disconnect_0x8e_then_closes(module_broker, clients):
    cid = uid("c")
    first = clients.raw(module_broker, 5)
    assert first.connect(cid)[:2] == (False, 0)
    clients.connect(module_broker, client_id=cid, version=V5)
    packets = first.recv_until_closed()
    assert [(p.kind, first.parse(p)[0]) for p in packets] == [(DISCONNECT, 0x8E)]


# docs/mqtt.md, "Parking": quiet for one to two seconds, a connection
# leaves its serving loop; this waits past that.
PARKED_AFTER_S = 2.5


def test_a_parked_connection_wakes_for_a_delivery_a_ping_and_a_takeover(module_broker, clients):
    cid, topic = uid("c"), uid() + "/t"
    raw = clients.raw(module_broker, 5)
    assert raw.connect(cid)[:2] == (False, 0)
    assert raw.subscribe(1, [(topic, 1)]) == [1]
    pub = clients.connect(module_broker, version=V5)
    # A delivery wakes it, and its PUBACK settles the message.
    time.sleep(PARKED_AFTER_S)
    assert pub.publish(topic, b"one", qos=1) == 0
    got = raw.expect(PUBLISH)
    assert (got.topic, got.payload, got.qos) == (topic, b"one", 1)
    raw.send(ack_packet(PUBACK, got.pid, version=5))
    # Bytes from the client wake it (and are answered).
    time.sleep(PARKED_AFTER_S)
    raw.send(PINGREQ_PACKET)
    assert raw.recv().kind == PINGRESP
    # So does a publish of its own, acknowledged, and routed.
    time.sleep(PARKED_AFTER_S)
    assert raw.publish(topic, b"two", qos=1, pid=7) == 0
    got = raw.expect(PUBLISH)
    assert (got.topic, got.payload) == (topic, b"two")
    raw.send(ack_packet(PUBACK, got.pid, version=5))
    # A takeover reaches it with its own reason code.
    time.sleep(PARKED_AFTER_S)
    clients.connect(module_broker, client_id=cid, version=V5)
    packets = raw.recv_until_closed()
    assert [(p.kind, raw.parse(p)[0]) for p in packets] == [(DISCONNECT, 0x8E)]


def test_sigterm_reaches_a_parked_connection_with_disconnect_0x8b(broker, clients):
    raw = clients.raw(broker, 5)
    assert raw.connect(uid("c")).reason == 0
    time.sleep(PARKED_AFTER_S)
    assert broker.terminate() == 0
    packets = raw.recv_until_closed()
    assert [(p.kind, raw.parse(p)[0]) for p in packets] == [(DISCONNECT, 0x8B)]


@pytest.mark.parametrize("version", [V311, V5], ids=["v311", "v5"])
def test_session_present_flag(module_broker, clients, version):
    cid = uid("c")
    persistent = {"clean": False, "session_expiry": 300 if version == V5 else None}
    first = clients.connect(module_broker, client_id=cid, version=version, **persistent)
    assert first.connack.session_present is False  # no session existed
    assert first.subscribe(uid() + "/s", qos=1) == [1]
    first.disconnect()
    resumed = clients.connect(module_broker, client_id=cid, version=version, **persistent)
    assert resumed.connack.session_present is True
    resumed.disconnect()
    clean = clients.connect(module_broker, client_id=cid, version=version, clean=True)
    assert clean.connack.session_present is False  # a clean session never is
    clean.disconnect()
    after = clients.connect(module_broker, client_id=cid, version=version, **persistent)
    assert after.connack.session_present is False  # the clean session discarded it


def test_v31_connack_reserved_byte_is_zero_even_when_resuming(module_broker, clients):
    # MQTT 3.1 has no session-present flag: the first CONNACK byte is reserved.
    cid = uid("c")
    for _ in range(2):
        raw = clients.raw(module_broker, 3)
        raw.send(connect_packet(cid, version=3, clean=False))
        assert raw.recv() == Packet(CONNACK, 0, b"\x00\x00")
        raw.send(b"\xe0\x00")
        assert raw.recv_until_closed() == []


def silent_client_closed_after(clients, broker, level, keepalive):
    """Connects a raw client with `keepalive` that then sends nothing;
    returns (seconds from CONNECT until the broker closed, CONNACK)."""
    raw = clients.raw(broker, level)
    start = time.monotonic()
    ack = raw.connect(uid("c"), keepalive=keepalive)
    assert ack.reason == 0
    packets = raw.recv_until_closed(timeout=10)
    elapsed = time.monotonic() - start
    if level == 5:
        # 5.0 section 3.1.2.10: the server may send DISCONNECT 0x8D first.
        assert [(p.kind, raw.parse(p)[0]) for p in packets] in ([], [(DISCONNECT, 0x8D)])
    else:
        assert packets == []
    return elapsed, ack


@pytest.mark.parametrize("level", [4, 5], ids=["v311", "v5"])
def test_silent_client_is_closed_after_one_and_a_half_keepalives(module_broker, clients, level):
    elapsed, _ = silent_client_closed_after(clients, module_broker, level, keepalive=1)
    assert 1.4 <= elapsed <= 4.0, elapsed


def test_pingreq_keeps_the_connection_alive(module_broker, clients):
    raw = clients.raw(module_broker, 4)
    assert raw.connect(uid("c"), keepalive=1).reason == 0
    deadline = time.monotonic() + 3.5  # > 2 keepalive timeouts
    while time.monotonic() < deadline:
        raw.send(PINGREQ_PACKET)
        assert raw.recv(timeout=2) == Packet(PINGRESP, 0, b"")
        time.sleep(0.5)
    raw.send(PINGREQ_PACKET)
    assert raw.recv(timeout=2) == Packet(PINGRESP, 0, b"")


def test_keepalive_zero_means_no_timeout(module_broker, clients):
    raw = clients.raw(module_broker, 4)
    assert raw.connect(uid("c"), keepalive=0).reason == 0
    assert raw.is_open_after(3.0)
    raw.send(PINGREQ_PACKET)
    assert raw.recv() == Packet(PINGRESP, 0, b"")


def test_max_keepalive_caps_the_v5_keepalive_and_is_enforced(make_broker, clients):
    broker = make_broker(mqtt_options=["max_keepalive = 2"])
    # Asking for more than the cap: CONNACK Server Keep Alive = 2 ...
    elapsed, ack = silent_client_closed_after(clients, broker, 5, keepalive=60)
    assert ack.props.get("ServerKeepAlive") == 2
    # ... and the broker holds the client to it (1.5 x 2 s).
    assert 2.9 <= elapsed <= 6.0, elapsed
    # Keep alive 0 ("no limit") is more than the cap too.
    raw = clients.raw(broker, 5)
    assert raw.connect(uid("c"), keepalive=0).props.get("ServerKeepAlive") == 2
    # paho applies the server's value and stays connected.
    c = clients.connect(broker, version=V5, keepalive=60)
    assert c.connack.props["ServerKeepAlive"] == 2
    time.sleep(3.5)
    assert c.disconnected is None
    round_trip(c)


def test_sigterm_sends_v5_clients_disconnect_0x8b(broker, clients):
    v5 = clients.connect(broker, version=V5)
    v311 = clients.connect(broker, version=V311)
    raw = clients.raw(broker, 5)
    assert raw.connect(uid("c")).reason == 0
    assert broker.terminate() == 0
    gone = v5.wait_disconnected()
    assert (gone.by_server, gone.reason) == (True, 0x8B)
    assert v311.wait_disconnected().by_server is False
    packets = raw.recv_until_closed()
    assert [(p.kind, raw.parse(p)[0]) for p in packets] == [(DISCONNECT, 0x8B)]
