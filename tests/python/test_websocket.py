"""MQTT and STOMP over WebSocket (docs/websocket.md) with clients nobody
here wrote: paho-mqtt's `websockets` transport (3.1.1 and 5), stomp.py's
WebSocket connection, and websocket-client for what the others hide (the
subprotocol echoed, frame types, close codes, pings). Each case runs
against the real broker on its mqtt-ws / stomp-ws listeners; the
WebSocket clients share sessions, queues and topics with TCP ones.
"""

import socket
import struct
import time

import pika
import pytest
import stomp
import websocket

from admin_support import api
from mqtt_support import V5, V311, Client, clients, connect_packet, packet, publish_packet, uid  # noqa: F401
from net_support import wait_until
from stomp_support import stomp_clients  # noqa: F401

pytestmark = pytest.mark.deadline(60)

TIMEOUT = 5.0


def ws_url(broker, listener, path="/ws"):
    return f"ws://127.0.0.1:{broker.ports[listener]}{path}"


def raw_ws(broker, listener, path="/ws", subprotocols=None, header=None, origin=None):
    """A websocket-client connection (it checks the echoed subprotocol).
    `origin`: the Origin header (else websocket-client sends its own)."""
    return websocket.create_connection(
        ws_url(broker, listener, path),
        timeout=TIMEOUT,
        subprotocols=subprotocols,
        header=header,
        origin=origin,
    )


def refused(broker, listener, path="/ws", subprotocols=None, header=None, origin=None):
    """The HTTP status of a refused upgrade."""
    with pytest.raises(websocket.WebSocketBadStatusException) as e:
        raw_ws(broker, listener, path, subprotocols, header, origin).close()
    return e.value.status_code


def close_code(ws):
    """Reads until the server's close frame; returns its code."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        try:
            op, frame = ws.recv_data_frame(control_frame=True)
        except websocket.WebSocketConnectionClosedException:
            return None
        if op == websocket.ABNF.OPCODE_CLOSE:
            return struct.unpack("!H", frame.data[:2])[0] if len(frame.data) >= 2 else 1005
    pytest.fail("no close frame")


def mqtt_ws(clients, broker, **kw):
    kw.setdefault("ws_path", "/ws")
    return clients.connect(broker, **kw)


def assert_mqtt_ws_serves(clients, broker):
    topic = uid() + "/alive"
    c = mqtt_ws(clients, broker)
    assert c.subscribe(topic, qos=1) == [1]
    assert c.publish(topic, b"alive", qos=1) == 0
    assert [m.payload for m in c.wait_messages(1)] == [b"alive"]
    c.disconnect()


# --- MQTT ------------------------------------------------------------------


@pytest.mark.parametrize("version", [V311, V5], ids=["3.1.1", "5"])
def test_mqtt_qos_0_1_2_over_websocket(broker, clients, version):
    topic = uid("ws") + "/q"
    sub = mqtt_ws(clients, broker, version=version)
    assert sub.subscribe(topic, qos=2) == [2]
    pub = mqtt_ws(clients, broker, version=version, ws_path="/mqtt")
    for qos in (0, 1, 2):
        assert pub.publish(topic, f"qos{qos}".encode(), qos=qos) == 0
    got = sub.wait_messages(3)
    assert sorted((m.payload, m.qos) for m in got) == [(b"qos0", 0), (b"qos1", 1), (b"qos2", 2)]
    # A TCP subscriber of the same topic sees the WebSocket publisher.
    tcp = clients.connect(broker, version=version)
    assert tcp.subscribe(topic, qos=1) == [1]
    pub.publish(topic, b"to tcp", qos=1)
    assert [m.payload for m in tcp.wait_messages(1)] == [b"to tcp"]
    # Large messages span many WebSocket reads and writes.
    big = bytes(range(256)) * 2048
    pub.publish(topic, big, qos=1)
    assert tcp.wait_messages(2)[-1].payload == big


def test_mqtt_retained_and_will_over_websocket(broker, clients):
    topic = uid("ws") + "/retained"
    tcp = clients.connect(broker)
    tcp.publish(topic, b"kept", qos=1, retain=True)
    sub = mqtt_ws(clients, broker)
    assert sub.subscribe(topic, qos=1) == [1]
    m = sub.wait_messages(1)[0]
    assert (m.payload, m.retain) == (b"kept", True)
    # A WebSocket client that vanishes leaves its will.
    will_topic = uid("ws") + "/will"
    watcher = clients.connect(broker)
    assert watcher.subscribe(will_topic, qos=1) == [1]
    dying = mqtt_ws(clients, broker, will={"topic": will_topic, "payload": b"gone", "qos": 1})
    dying.drop()
    assert [m.payload for m in watcher.wait_messages(1)] == [b"gone"]


@pytest.mark.parametrize("version", [V311, V5], ids=["3.1.1", "5"])
def test_one_persistent_session_over_websocket_and_tcp(broker, clients, version):
    """A device on WebSocket and the same client id on TCP share a session:
    QoS 1 messages queued while it was away arrive on the other transport,
    and a connection on one takes over one on the other."""
    cid = uid("dev")
    topic = uid("ws") + "/cmd"
    extra = {"session_expiry": 300} if version == V5 else {}
    ws = mqtt_ws(clients, broker, client_id=cid, version=version, clean=False, **extra)
    assert ws.subscribe(topic, qos=1) == [1]
    ws.disconnect()
    pub = clients.connect(broker)
    for i in range(3):
        pub.publish(topic, f"queued{i}".encode(), qos=1)
    tcp = clients.new(broker, client_id=cid, version=version, clean=False, **extra)
    ack = tcp.connect()
    assert ack.reason == 0 and ack.session_present
    assert [m.payload for m in tcp.wait_messages(3)] == [b"queued0", b"queued1", b"queued2"]
    # Its PUBACKs are handled before the SUBACK of a later SUBSCRIBE.
    assert tcp.subscribe(uid("fence") + "/f", qos=1) == [1]
    # Take-over: the WebSocket connection ends the TCP one.
    ws2 = clients.new(broker, client_id=cid, version=version, clean=False, ws_path="/mqtt", **extra)
    ack = ws2.connect()
    assert ack.reason == 0 and ack.session_present
    tcp.wait_disconnected()
    pub.publish(topic, b"after takeover", qos=1)
    assert [m.payload for m in ws2.wait_messages(1)] == [b"after takeover"]


def test_mqtt_subprotocols_paths_and_refusals(broker, clients):
    for offered, echoed in (
        (["mqtt"], "mqtt"),
        (["mqttv3.1"], "mqttv3.1"),
        (["mqttv3.1.1"], "mqttv3.1.1"),
        (["foo", "mqttv3.1.1", "mqtt"], "mqttv3.1.1"),
    ):
        ws = raw_ws(broker, "mqtt-ws", subprotocols=offered)
        assert ws.getsubprotocol() == echoed
        ws.close()
    ws = raw_ws(broker, "mqtt-ws", path="/mqtt")
    assert ws.getsubprotocol() is None
    ws.close()
    assert refused(broker, "mqtt-ws", subprotocols=["v12.stomp"]) == 400
    assert refused(broker, "mqtt-ws", path="/stomp") == 404
    # Not an upgrade at all: HTTP's own refusal, and the listener goes on.
    with socket.create_connection(("127.0.0.1", broker.ports["mqtt-ws"]), timeout=TIMEOUT) as s:
        s.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n")
        s.settimeout(TIMEOUT)
        answer = b""
        try:
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                answer += chunk
        except socket.timeout:
            pass
    assert not answer.startswith(b"HTTP/1.1 101"), answer
    assert_mqtt_ws_serves(clients, broker)


def test_mqtt_framing_raw(broker, clients):
    """One binary message may hold several packets, or a packet in parts."""
    topic = uid("raw") + "/t"
    sub = clients.connect(broker)
    assert sub.subscribe(topic, qos=0) == [0]
    ws = raw_ws(broker, "mqtt-ws", subprotocols=["mqtt"])
    connect = connect_packet(uid("raw"))
    publish = publish_packet(topic, b"one") + publish_packet(topic, b"two")
    # CONNECT split over three messages, then two PUBLISHes in one.
    ws.send_binary(connect[:3])
    ws.send_binary(connect[3:7])
    ws.send_binary(connect[7:] + publish[:4])
    ws.send_binary(publish[4:])
    op, data = ws.recv_data()
    assert op == websocket.ABNF.OPCODE_BINARY and data == bytes([0x20, 2, 0, 0])  # CONNACK
    assert sorted(m.payload for m in sub.wait_messages(2)) == [b"one", b"two"]
    # A text message on the MQTT endpoint: close 1003, others unharmed.
    ws.send("PUBLISH?")
    assert close_code(ws) == 1003
    ws.close()
    assert_mqtt_ws_serves(clients, broker)


def test_mqtt_bad_input_over_websocket(make_broker, clients):
    b = make_broker(
        extra_config="[websocket]\nmax_message_size = 4096\n",
        mqtt_options=["connect_timeout = 1"],
    )
    # Oversized message: close 1009.
    ws = raw_ws(b, "mqtt-ws", subprotocols=["mqtt"])
    ws.send_binary(connect_packet(uid("big")))
    assert ws.recv_data()[1][:1] == bytes([0x20])
    ws.send_binary(publish_packet("big/t", b"x" * 8192))
    assert close_code(ws) == 1009
    ws.close()
    # A client that never sends CONNECT is closed after the connect timeout.
    ws = raw_ws(b, "mqtt-ws", subprotocols=["mqtt"])
    started = time.monotonic()
    ws.settimeout(10)
    with pytest.raises((websocket.WebSocketConnectionClosedException, ConnectionError)):
        while True:
            op, _ = ws.recv_data(control_frame=True)
            if op == websocket.ABNF.OPCODE_CLOSE:
                raise websocket.WebSocketConnectionClosedException("closed")
    assert time.monotonic() - started < 8
    # An abrupt close mid-packet (half a PUBLISH, then the TCP socket
    # goes): the broker drops that one connection and serves on.
    ws = raw_ws(b, "mqtt-ws", subprotocols=["mqtt"])
    ws.send_binary(connect_packet(uid("cut")))
    ws.recv_data()
    ws.send_binary(publish_packet("cut/t", b"y" * 100)[:20])
    ws.sock.shutdown(socket.SHUT_RDWR)
    ws.sock.close()
    assert_mqtt_ws_serves(clients, b)
    assert wait_until(lambda: [c for c in api(b, "GET", "/api/connections")[1] if "MQTT" in c["protocol"]] == [])


def test_websocket_pings_both_ways(make_broker):
    b = make_broker(extra_config="[websocket]\nping_interval_secs = 1\n")
    ws = raw_ws(b, "mqtt-ws", subprotocols=["mqtt"])
    ws.send_binary(connect_packet(uid("ping"), keepalive=0))
    assert ws.recv_data()[1][:1] == bytes([0x20])
    # The client's ping is answered.
    ws.ping(b"hello")
    op, frame = ws.recv_data_frame(control_frame=True)
    assert (op, frame.data) == (websocket.ABNF.OPCODE_PONG, b"hello")
    # The server pings an idle client, and one that never answers is cut
    # off after two unanswered pings (websocket-client answers on recv;
    # here the frames are read raw, so the pongs are sent by hand first).
    ws.settimeout(5)
    op, frame = ws.recv_data_frame(control_frame=True)
    assert op == websocket.ABNF.OPCODE_PING
    ws.pong(frame.data)
    # Now silent: the broker gives up on it within a few intervals.
    ws.sock.settimeout(8)
    deadline = time.monotonic() + 8
    closed = False
    while time.monotonic() < deadline and not closed:
        try:
            chunk = ws.sock.recv(4096)
        except (socket.timeout, OSError):
            break
        # Pings are 0x89 0x00; a close frame starts 0x88.
        closed = chunk == b"" or b"\x88" in chunk
    assert closed, "the broker kept a silent client"
    ws.close()


def test_origins_and_forwarded_clients(make_broker, clients):
    b = make_broker(
        users=[("app", "app", ["/"])],
        extra_config=(
            "[websocket]\n"
            'allowed_origins = ["http://app.example:8080"]\n'
            'trusted_proxies = ["127.0.0.0/8"]\n'
        )
    )
    assert refused(b, "mqtt-ws", origin="http://evil.example") == 403
    assert refused(b, "stomp-ws", origin="http://evil.example") == 403
    raw_ws(b, "mqtt-ws", origin="http://app.example:8080").close()
    raw_ws(b, "stomp-ws", origin="http://APP.example:8080").close()
    # Behind a trusted proxy, the connections list shows the real client.
    # (paho sends an Origin of its own: the allowed one here.)
    headers = {"X-Forwarded-For": "198.51.100.23", "Origin": "http://app.example:8080"}
    # The checks after the upgrade see the real client too: guest is for
    # loopback only (CONNACK 0x87 Not authorized).
    g = clients.new(b, ws_path="/ws", ws_headers=headers, version=V5)
    assert g.connect().reason == 0x87
    c = mqtt_ws(clients, b, ws_headers=headers, username="app", password="app")
    conns = [x for x in api(b, "GET", "/api/connections")[1] if x.get("client_id") == c.client_id]
    assert [(x["peer_host"], x["protocol"]) for x in conns] == [("198.51.100.23", "Web MQTT 3.1.1")], conns
    # STOMP over WebSocket is listed as RabbitMQ lists it too.
    s = raw_ws(b, "stomp-ws", origin="http://app.example:8080", header=["X-Forwarded-For: 198.51.100.24"])
    s.send("CONNECT\naccept-version:1.2\nhost:/\nlogin:app\npasscode:app\n\n\x00")
    assert s.recv_data()[1].startswith(b"CONNECTED")
    stomps = [x for x in api(b, "GET", "/api/connections")[1] if x["protocol"].endswith("STOMP 1.2")]
    assert [(x["peer_host"], x["protocol"]) for x in stomps] == [("198.51.100.24", "Web STOMP 1.2")]
    s.close()
    # From a peer that is not a trusted proxy the header is ignored.
    plain = make_broker()
    d = mqtt_ws(clients, plain, ws_headers={"X-Forwarded-For": "198.51.100.23"})
    conns = [x for x in api(plain, "GET", "/api/connections")[1] if x.get("client_id") == d.client_id]
    assert [x["peer_host"] for x in conns] == ["127.0.0.1"]


# --- STOMP -----------------------------------------------------------------


def stomp_ws(broker, path="/ws", binary=False):
    conn = stomp.WSStompConnection(
        [("127.0.0.1", broker.ports["stomp-ws"])],
        ws_path=path,
        vhost="/",
        reconnect_attempts_max=1,
        timeout=TIMEOUT,
        binary_mode=binary,
    )
    return conn


class Collect(stomp.ConnectionListener):
    def __init__(self):
        self.frames = []

    def on_message(self, frame):
        self.frames.append(frame)

    def on_receipt(self, frame):
        self.frames.append(frame)

    def on_error(self, frame):
        self.frames.append(frame)


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
def test_stomp_send_subscribe_ack_receipt_over_websocket(broker, binary):
    q = uid("wsq")
    conn = stomp_ws(broker, binary=binary)
    got = Collect()
    conn.set_listener("got", got)
    conn.connect("guest", "guest", wait=True)
    conn.subscribe(f"/queue/{q}", id="s1", ack="client-individual")
    conn.send(f"/queue/{q}", "héllo over websocket", receipt="r1")
    assert wait_until(lambda: any(f.cmd == "RECEIPT" for f in got.frames))
    assert wait_until(lambda: any(f.cmd == "MESSAGE" for f in got.frames))
    m = [f for f in got.frames if f.cmd == "MESSAGE"][0]
    assert m.body == "héllo over websocket"
    conn.ack(m.headers["ack"])
    conn.disconnect()
    # Acked: nothing left for a pika consumer.
    pc = broker.connect()
    ch = pc.channel()
    assert ch.queue_declare(q, passive=True).method.message_count == 0
    # A pika publisher reaches a WebSocket subscriber.
    conn = stomp_ws(broker, binary=binary)
    got = Collect()
    conn.set_listener("got", got)
    conn.connect("guest", "guest", wait=True)
    conn.subscribe(f"/queue/{q}", id="s2", ack="auto")
    ch.basic_publish("", q, b"from pika")
    assert wait_until(lambda: any(f.cmd == "MESSAGE" for f in got.frames))
    assert [f.body for f in got.frames if f.cmd == "MESSAGE"] == ["from pika"]
    conn.disconnect()
    pc.close()


def test_stomp_subprotocols_frames_and_heartbeats(broker):
    ws = raw_ws(broker, "stomp-ws", subprotocols=["v10.stomp", "v11.stomp", "v12.stomp"])
    assert ws.getsubprotocol() == "v12.stomp"
    ws.close()
    ws = raw_ws(broker, "stomp-ws", subprotocols=["v10.stomp", "v11.stomp"])
    assert ws.getsubprotocol() == "v11.stomp"
    ws.close()
    assert refused(broker, "stomp-ws", subprotocols=["mqtt"]) == 400
    assert refused(broker, "stomp-ws", path="/mqtt") == 404
    # Text by default; heart-beat newlines arrive as messages of their own.
    ws = raw_ws(broker, "stomp-ws")
    ws.send("CONNECT\naccept-version:1.2\nhost:/\nlogin:guest\npasscode:guest\nheart-beat:0,300\n\n\x00")
    op, data = ws.recv_data()
    assert op == websocket.ABNF.OPCODE_TEXT and data.startswith(b"CONNECTED\n"), data
    op, data = ws.recv_data()
    assert (op, data) == (websocket.ABNF.OPCODE_TEXT, b"\n")
    # Client heart-beats as messages are taken too.
    ws.send("\n")
    ws.send("DISCONNECT\nreceipt:bye\n\n\x00")
    while True:
        op, data = ws.recv_data()
        if data != b"\n":
            break
    assert data.startswith(b"RECEIPT\nreceipt-id:bye"), data
    ws.close()
    # A client sending binary gets binary.
    ws = raw_ws(broker, "stomp-ws", subprotocols=["v12.stomp"])
    ws.send_binary(b"CONNECT\naccept-version:1.2\nhost:/\nlogin:guest\npasscode:guest\n\n\x00")
    op, data = ws.recv_data()
    assert op == websocket.ABNF.OPCODE_BINARY and data.startswith(b"CONNECTED\n"), data
    ws.close()


def test_stomp_errors_and_limits_over_websocket(make_broker, stomp_clients):
    b = make_broker(extra_config="[websocket]\nmax_message_size = 4096\n")
    # A wrong password: STOMP's own ERROR, then the close.
    ws = raw_ws(b, "stomp-ws")
    ws.send("CONNECT\naccept-version:1.2\nhost:/\nlogin:guest\npasscode:nope\n\n\x00")
    op, data = ws.recv_data()
    assert data.startswith(b"ERROR\n"), data
    ws.close()
    # An oversized message: close 1009.
    ws = raw_ws(b, "stomp-ws")
    ws.send("CONNECT\naccept-version:1.2\nhost:/\nlogin:guest\npasscode:guest\n\n\x00")
    assert ws.recv_data()[1].startswith(b"CONNECTED")
    ws.send("SEND\ndestination:/queue/big\n\n" + "x" * 8000 + "\x00")
    assert close_code(ws) == 1009
    ws.close()
    # A frame cut off by an abrupt close.
    ws = raw_ws(b, "stomp-ws")
    ws.send("CONNECT\naccept-version:1.2\nhost:/\nlogin:guest\npasscode:guest\n\n\x00")
    ws.recv_data()
    ws.send("SEND\ndestination:/queue/cut\ncontent-length:100\n\nabc")
    ws.sock.shutdown(socket.SHUT_RDWR)
    ws.sock.close()
    from stomp_support import assert_serves

    assert_serves(b, stomp_clients)
    pc = b.connect()
    assert pc.channel().queue_declare("cut", passive=False).method.message_count == 0
    pc.close()


def test_permissions_apply_over_websocket(make_broker, clients):
    """bob may publish only on bob/…: over WebSocket a denied MQTT 5 publish
    gets PUBACK 0x87, and a denied STOMP SEND gets ERROR access_refused,
    as over TCP (tests/python/test_permissions.py)."""
    b = make_broker(
        users=[("bob", "bob-secret-pw", ["/"])],
        commands=[["topic-permission", "set", "bob", "/", "amq.topic", r"^bob\.", ".*"]],
    )
    watcher = clients.connect(b, version=V5)
    assert watcher.subscribe("#", qos=1) == [1]
    c = mqtt_ws(clients, b, version=V5, username="bob", password="bob-secret-pw")
    assert c.publish("alice/x", b"denied", qos=1) == 0x87
    assert c.publish("bob/x", b"allowed", qos=1) == 0
    assert [(m.topic, m.payload) for m in watcher.wait_messages(1)] == [("bob/x", b"allowed")]
    ws = raw_ws(b, "stomp-ws", subprotocols=["v12.stomp"])
    ws.send("CONNECT\naccept-version:1.2\nhost:/\nlogin:bob\npasscode:bob-secret-pw\n\n\x00")
    assert ws.recv_data()[1].startswith(b"CONNECTED")
    ws.send("SEND\ndestination:/topic/alice.x\n\ndenied\x00")
    op, data = ws.recv_data()
    assert data.startswith(b"ERROR\n") and b"access_refused" in data, data
    ws.close()


def test_a_stalled_or_oversized_upgrade_is_closed(make_broker, clients):
    """The HTTP upgrade is bounded: a client that never finishes it is
    closed after `handshake_timeout_secs`, and an upgrade request past 64 KiB
    of headers is refused; the listener serves on."""
    b = make_broker(extra_config="[websocket]\nhandshake_timeout_secs = 1\n")

    def closed_within(s, seconds):
        s.settimeout(seconds)
        started = time.monotonic()
        try:
            while s.recv(4096):
                pass
        except (ConnectionError, socket.timeout):
            pass
        return time.monotonic() - started

    port = b.ports["mqtt-ws"]
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as s:
        s.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n")
        assert closed_within(s, 8) < 4
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as s:
        try:
            s.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: " + b"a" * 100_000 + b"\r\n\r\n")
        except ConnectionError:
            pass
        assert closed_within(s, 8) < 4
    assert_mqtt_ws_serves(clients, b)
