"""Connection limits that protect the broker (docs/limits.md): new
connections per second per source address, closed at accept, and open
connections per user, refused at login with each protocol's own answer,
all protocols counted together. Everyone else goes on.
"""

import socket
import threading
import time

import pika
import pytest

from mqtt_support import V5, V311
from mqtt_support import clients  # noqa: F401 (fixture)
from stomp_support import Client as StompClient

AMQP_HEADER = b"AMQP\x00\x00\x09\x01"


def amqp_greeting(port):
    """Sends the AMQP header; the first bytes back (connection.start), or
    b"" when the broker closed the socket instead."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        s.sendall(AMQP_HEADER)
        try:
            return s.recv(7)
        except ConnectionResetError:
            return b""
    finally:
        s.close()


def test_new_connections_per_second_from_one_address(make_broker):
    b = make_broker(broker_options=["max_connection_rate_per_ip = 5"])
    got = [amqp_greeting(b.amqp_port) for _ in range(8)]
    served = [g for g in got if g.startswith(b"\x01\x00\x00")]
    # A second's worth (5) is served at once; the rest are closed at accept
    # (a few may be served if the bucket refilled while we looped).
    assert 5 <= len(served) <= 6, got
    assert b"" in got, got
    time.sleep(1.1)
    assert amqp_greeting(b.amqp_port).startswith(b"\x01\x00\x00")


def test_open_connections_per_user_across_protocols(make_broker, clients):
    b = make_broker(broker_options=["max_connections_per_user = 2"])
    first = b.connect()
    mqtt = clients.connect(b, version=V5)
    # A third connection of guest, in each protocol, is refused at login.
    with pytest.raises(pika.exceptions.AMQPConnectionError) as e:
        b.connect()
    assert "530" in repr(e.value) and "has 2 connections open" in repr(e.value), repr(e.value)
    # paho reports 3.1.1 return code 3 as 0x88 Server unavailable.
    for version, code in ((V5, 0x97), (V311, 0x88)):
        c = clients.new(b, version=version)
        ack = c.connect()
        assert ack is not None and ack.reason == code, ack
    s = StompClient(b)
    try:
        f = s.connect()
        assert (f.cmd, f.headers["message"]) == ("ERROR", "not_allowed"), f
    finally:
        s.close()
    # A closed connection frees its place.
    first.close()
    again = b.connect()
    assert again.is_open
    again.close()
    mqtt.disconnect()


def test_refused_logins_do_not_hold_places(make_broker):
    b = make_broker(broker_options=["max_connections_per_user = 1"])
    keep = b.connect()
    for _ in range(5):
        with pytest.raises(pika.exceptions.AMQPConnectionError):
            b.connect()
    keep.close()
    # Only the one open connection ever counted: after it closes, one fits.
    conn = b.connect()
    conn.close()


def test_amqp_channel_max_is_offered_and_enforced(make_broker):
    import amqp_raw
    from test_amqp_robustness import close_then_eof

    b = make_broker(amqp_options=["channel_max = 5"])
    with amqp_raw.RawClient(b.amqp_port) as c:
        channel_max, _, _ = c.handshake()
        assert channel_max == 5
        for ch in range(1, 6):
            c.open_channel(ch)
        c.send(amqp_raw.method_frame(6, amqp_raw.CHANNEL_OPEN, amqp_raw.shortstr("")))
        close = close_then_eof(c)
    assert close.reply_code == 530, close
    # pika, told channel_max 5, keeps to it.
    conn = b.connect()
    try:
        assert conn._impl.params.channel_max == 5
    finally:
        conn.close()


# Run in a child process, so the test's own clients (paho's select()
# loop cannot watch a descriptor above 1023) keep low descriptors: opens
# N connections from 127.0.0.2 to PORT, waits a second, prints how many the
# broker still holds open (it says nothing before CONNECT, so a readable
# socket is one it closed), then holds them until stdin closes.
FLOOD_HOLDER = r"""
import resource, select, socket, sys, time
n, port = int(sys.argv[1]), int(sys.argv[2])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
want = n + 256
if soft != resource.RLIM_INFINITY and soft < want:
    if hard != resource.RLIM_INFINITY and hard < want:
        print("fd-limit", hard, flush=True)
        sys.exit(1)
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
flood = []
for _ in range(n):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(10)
    s.bind(("127.0.0.2", 0))
    s.connect(("127.0.0.1", port))
    flood.append(s)
time.sleep(1.0)
poller = select.poll()
for s in flood:
    poller.register(s, select.POLLIN)
closed = len(poller.poll(0))
print("held", n - closed, flush=True)
sys.stdin.read()
"""


@pytest.mark.deadline(90)
def test_thousands_of_connections_from_one_address(make_broker, clients):
    """One address (127.0.0.2) opens 2000 connections and holds them: the
    broker keeps its per-address cap (100) and closes the rest at accept,
    while clients from another address (127.0.0.1) are served throughout;
    once the flood lets go, the address is served again."""
    import subprocess
    import sys

    # The held connections must outlive the flood (which the client's
    # kernel may slow to seconds): a long CONNECT timeout.
    b = make_broker(
        broker_options=["max_connections_per_ip = 100"], mqtt_options=["connect_timeout = 120"]
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", FLOOD_HOLDER, "2000", str(b.mqtt_port)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = holder.stdout.readline().strip()
        assert line == "held 100", line
        # Everyone else is served meanwhile, in every protocol.
        conn = b.connect()
        ch = conn.channel()
        ch.queue_declare("during-flood")
        ch.basic_publish("", "during-flood", b"served")
        assert ch.basic_get("during-flood", auto_ack=True)[2] == b"served"
        conn.close()
        c = clients.connect(b, version=V5)
        assert c.publish("flood/ok", b"x", qos=1) == 0x10
        s = StompClient(b)
        assert s.connect().cmd == "CONNECTED"
        s.close()
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    time.sleep(0.5)
    again = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        again.settimeout(5)
        again.bind(("127.0.0.2", 0))
        again.connect(("127.0.0.1", b.amqp_port))
        again.sendall(AMQP_HEADER)
        assert again.recv(7).startswith(b"\x01\x00\x00")
    finally:
        again.close()


def test_a_fleet_sharing_one_user_logs_in_at_once_on_a_fresh_broker(make_broker, clients):
    """Forty devices with the same user and password connect at the same
    moment to a broker that has verified nothing yet, with room for one
    password check: they share that check, and none is refused as busy
    (CONNACK 3 Server unavailable) as each taking its own slot would be."""
    b = make_broker(
        users=[("fleet", "fleet-secret-pw", ["/"])],
        commands=[["permission", "set", "fleet", "/", ".*", ".*", ".*"]],
        broker_options=["max_pending_logins = 1"],
    )
    devices = [
        clients.new(b, version=V311, username="fleet", password="fleet-secret-pw")
        for _ in range(40)
    ]
    acks = [None] * len(devices)

    def connect(i):
        acks[i] = devices[i].connect()

    threads = [threading.Thread(target=connect, args=(i,)) for i in range(len(devices))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert [a.reason if a is not None else None for a in acks] == [0] * len(devices)
    # A wrong password shares nothing with the right one: refused as a bad
    # user name or password (3.1.1 return code 4, which paho reports as
    # 134), not as busy (136).
    wrong = clients.new(b, version=V311, username="fleet", password="not-it")
    ack = wrong.connect()
    assert ack is not None and ack.reason == 134, ack
