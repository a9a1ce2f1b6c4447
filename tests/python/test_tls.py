"""TLS listeners (`amqps`, `mqtts`, `stomps`) with real clients: pika,
paho-mqtt and stomp.py over TLS against certificates made with openssl
(tls_support.py), client certificates under `verify = optional` and
`required`, refusals of the wrong CA and of a missing certificate, the
minimum version, and hostile handshakes (garbage, a client that never
finishes), after each of which the broker still serves everyone.
"""

import socket
import ssl
import time

import pika
import pytest

from mqtt_support import V5, V311
from mqtt_support import clients  # noqa: F401 (fixture)
from net_support import wait_until
from stomp_support import Client as StompClient
from stomp_support import uid
from tls_support import certs, make_tls_broker, tls_connect, tls_context  # noqa: F401 (fixtures)


def amqps(broker, ctx, **kw):
    params = pika.ConnectionParameters(
        "127.0.0.1",
        broker.ports["amqps"],
        ssl_options=pika.SSLOptions(ctx, server_hostname="127.0.0.1"),
        connection_attempts=1,
        socket_timeout=5,
        **kw,
    )
    return pika.BlockingConnection(params)


def stomps(broker, certs, client=None, key=None):
    ssl_args = {"ca_certs": str(certs.ca)}
    if client is not None:
        ssl_args.update(cert_file=str(client), key_file=str(key))
    return StompClient(broker, port=broker.ports["stomps"], ssl=ssl_args)


def round_trip_amqps(broker, ctx):
    conn = amqps(broker, ctx)
    try:
        ch = conn.channel()
        q = uid("q")
        ch.queue_declare(q)
        ch.basic_publish("", q, b"over tls \x00\xff")
        method, _, body = ch.basic_get(q, auto_ack=True)
        assert body == b"over tls \x00\xff"
    finally:
        conn.close()


def test_ready_line_names_the_tls_listeners(make_tls_broker):
    b = make_tls_broker()
    assert set(b.ports) == {
        "amqp", "mqtt", "stomp", "admin", "mqtt-ws", "stomp-ws",
        "amqps", "mqtts", "stomps", "https", "mqtt-wss", "stomp-wss",
    }
    assert len(set(b.ports.values())) == 12


def test_pika_over_amqps_and_plain_amqp_side_by_side(make_tls_broker, certs):
    b = make_tls_broker()
    round_trip_amqps(b, tls_context(certs))
    # The plain listener is unchanged.
    conn = b.connect()
    try:
        ch = conn.channel()
        ch.queue_declare("plain")
        ch.basic_publish("", "plain", b"x")
        assert ch.basic_get("plain", auto_ack=True)[2] == b"x"
    finally:
        conn.close()


@pytest.mark.parametrize("version", [V311, V5])
def test_paho_over_mqtts_publishes_and_receives(make_tls_broker, certs, clients, version):
    b = make_tls_broker()
    topic = uid("t") + "/tls"
    sub = clients.connect(b, version=version, port=b.ports["mqtts"], tls=tls_context(certs))
    assert sub.subscribe(topic, qos=1) == [1]
    pub = clients.connect(b, version=version, port=b.ports["mqtts"], tls=tls_context(certs))
    assert pub.publish(topic, b"\x00secure\xff", qos=1) == 0
    (m,) = sub.wait_messages(1)
    assert (m.topic, m.payload, m.qos) == (topic, b"\x00secure\xff", 1)


def test_stomp_py_over_stomps_sends_and_receives(make_tls_broker, certs):
    b = make_tls_broker()
    c = stomps(b, certs)
    try:
        assert c.connect().cmd == "CONNECTED"
        q = uid("q")
        c.subscribe(f"/queue/{q}")
        c.send(f"/queue/{q}", b"stomp over tls", receipt=True)
        (m,) = c.exactly(1)
        assert m.body == b"stomp over tls"
    finally:
        c.close()


def test_an_mqtts_publish_reaches_an_amqps_consumer(make_tls_broker, certs, clients):
    b = make_tls_broker()
    conn = amqps(b, tls_context(certs))
    try:
        ch = conn.channel()
        q = uid("q")
        ch.queue_declare(q)
        ch.queue_bind(q, "amq.topic", routing_key="plant.7.temp")
        dev = clients.connect(b, port=b.ports["mqtts"], tls=tls_context(certs))
        assert dev.publish("plant/7/temp", b"21.5", qos=1) == 0
        assert wait_until(lambda: ch.queue_declare(q, passive=True).method.message_count == 1)
        method, _, body = ch.basic_get(q, auto_ack=True)
        assert (method.routing_key, body) == ("plant.7.temp", b"21.5")
    finally:
        conn.close()


def test_required_client_certificates(make_tls_broker, certs, clients):
    # tls-user exists: the MQTT and STOMP clients below give no password,
    # so they log in as their certificate's user (test_tls_login.py).
    b = make_tls_broker(verify="required", users=[("tls-user", "pw", ["/"])])
    # With the CA's client certificate: served.
    round_trip_amqps(b, tls_context(certs, certs.client, certs.client_key))
    dev = clients.connect(
        b, port=b.ports["mqtts"], tls=tls_context(certs, certs.client, certs.client_key)
    )
    assert dev.publish(uid("t"), b"x", qos=1) == 0
    s = stomps(b, certs, certs.client, certs.client_key)
    try:
        assert s.connect().cmd == "CONNECTED"
    finally:
        s.close()
    # Without one, or with one from another CA: refused in the handshake.
    for ctx in (tls_context(certs), tls_context(certs, certs.other_client, certs.other_client_key)):
        for port in (b.ports["amqps"], b.ports["mqtts"], b.ports["stomps"]):
            assert_refused_in_handshake(port, ctx)
    # Everyone else goes on.
    round_trip_amqps(b, tls_context(certs, certs.client, certs.client_key))


def assert_refused_in_handshake(port, ctx):
    """TLS 1.3 finishes the client's side of the handshake before the server
    has checked its certificate, so the refusal may arrive as an alert on
    the first read; either way no byte of the protocol gets through."""
    try:
        s = tls_connect(port, ctx)
    except (ssl.SSLError, ConnectionError):
        return
    try:
        s.settimeout(5)
        with pytest.raises((ssl.SSLError, ConnectionError)):
            # An AMQP header, an MQTT CONNECT or a STOMP frame would all
            # need the handshake to have passed.
            s.sendall(b"AMQP\x00\x00\x09\x01")
            data = s.recv(1)
            if data == b"":
                raise ConnectionResetError("closed")
    finally:
        s.close()


def test_optional_client_certificates(make_tls_broker, certs, clients):
    b = make_tls_broker(verify="optional")
    # No certificate: a password login as usual.
    round_trip_amqps(b, tls_context(certs))
    # The CA's certificate: accepted.
    round_trip_amqps(b, tls_context(certs, certs.client, certs.client_key))
    # Another CA's certificate: refused.
    ctx = tls_context(certs, certs.other_client, certs.other_client_key)
    assert_refused_in_handshake(b.ports["amqps"], ctx)
    assert_refused_in_handshake(b.ports["mqtts"], ctx)


def test_a_client_that_does_not_trust_the_server_certificate_fails(make_tls_broker, certs):
    b = make_tls_broker()
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(certs.other_ca))
    with pytest.raises(ssl.SSLCertVerificationError):
        tls_connect(b.ports["amqps"], ctx)
    round_trip_amqps(b, tls_context(certs))


def test_minimum_version_refuses_older_clients(make_tls_broker, certs):
    b = make_tls_broker(tls_options=['min_version = "1.3"'])
    with pytest.raises(ssl.SSLError):
        tls_connect(b.ports["amqps"], tls_context(certs, maximum=ssl.TLSVersion.TLSv1_2))
    s = tls_connect(b.ports["amqps"], tls_context(certs))
    assert s.version() == "TLSv1.3"
    s.close()
    b2 = make_tls_broker()
    s = tls_connect(b2.ports["amqps"], tls_context(certs, maximum=ssl.TLSVersion.TLSv1_2))
    assert s.version() == "TLSv1.2"
    s.close()


def test_garbage_on_a_tls_port_closes_that_connection_only(make_tls_broker, certs):
    b = make_tls_broker()
    keep = amqps(b, tls_context(certs))
    try:
        for port in (b.ports["amqps"], b.ports["mqtts"], b.ports["stomps"]):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + bytes(range(256)) * 4)
            s.settimeout(5)
            # An alert, then the close; never a protocol answer.
            data = b""
            while True:
                try:
                    chunk = s.recv(4096)
                except ConnectionResetError:
                    break
                if not chunk:
                    break
                data += chunk
            assert not data.startswith(b"HTTP") and b"AMQP" not in data
            s.close()
        ch = keep.channel()
        ch.queue_declare("still")
        ch.basic_publish("", "still", b"ok")
        assert ch.basic_get("still", auto_ack=True)[2] == b"ok"
    finally:
        keep.close()


def test_a_handshake_that_never_finishes_is_dropped_after_the_timeout(make_tls_broker, certs):
    b = make_tls_broker(tls_options=["handshake_timeout_secs = 1"])
    silent = socket.create_connection(("127.0.0.1", b.ports["mqtts"]), timeout=5)
    half = socket.create_connection(("127.0.0.1", b.ports["amqps"]), timeout=5)
    # The first bytes of a ClientHello, then nothing.
    half.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
    started = time.monotonic()
    for s in (silent, half):
        s.settimeout(5)
        assert s.recv(4096) == b""
    assert time.monotonic() - started < 4
    silent.close()
    half.close()
    round_trip_amqps(b, tls_context(certs))


def served_certificate_cn(port, certs):
    s = tls_connect(port, tls_context(certs))
    try:
        subject = dict(x[0] for x in s.getpeercert()["subject"])
        return subject["commonName"]
    finally:
        s.close()


def post(port, path):
    import urllib.error
    import urllib.request

    import base64

    # The reload is an administrator's call: guest is one.
    auth = "Basic " + base64.b64encode(b"guest:guest").decode()
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", method="POST", data=b"", headers={"Authorization": auth}
    )
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_reload_swaps_the_certificate_for_new_handshakes_only(make_tls_broker, certs, tmp_path):
    import shutil
    import signal

    cert, key = tmp_path / "live.pem", tmp_path / "live.key"
    shutil.copy(certs.server, cert)
    shutil.copy(certs.server_key, key)
    b = make_tls_broker(cert=cert, key=key)
    port = b.ports["amqps"]
    assert served_certificate_cn(port, certs) == "junction"
    kept = amqps(b, tls_context(certs))
    try:
        ch = kept.channel()
        ch.queue_declare("kept")
        # SIGHUP: the new files for new handshakes.
        shutil.copy(certs.server_2, cert)
        shutil.copy(certs.server_2_key, key)
        b.proc.send_signal(signal.SIGHUP)
        assert wait_until(lambda: served_certificate_cn(port, certs) == "junction-2", 5)
        assert served_certificate_cn(b.ports["mqtts"], certs) == "junction-2"
        # The admin call does the same.
        shutil.copy(certs.server, cert)
        shutil.copy(certs.server_key, key)
        assert post(b.admin_port, "/api/tls/reload") == (200, '{"status":"reloaded"}')
        assert served_certificate_cn(port, certs) == "junction"
        # Bad files: refused with the reason, the ones in use stay.
        cert.write_text("not a certificate\n")
        status, body = post(b.admin_port, "/api/tls/reload")
        assert status == 500 and '"status":"not reloaded"' in body and "cert" in body, body
        assert served_certificate_cn(port, certs) == "junction"
        # The connection opened before all this still works.
        ch.basic_publish("", "kept", b"still here")
        assert ch.basic_get("kept", auto_ack=True)[2] == b"still here"
    finally:
        kept.close()


def test_reload_without_tls_is_404(broker):
    assert post(broker.admin_port, "/api/tls/reload") == (404, '{"status":"TLS is not configured"}')


def test_revoked_and_expired_client_certificates_are_refused(make_tls_broker, certs):
    b = make_tls_broker(verify="required", crl=certs.crl)
    good = tls_context(certs, certs.client, certs.client_key)
    round_trip_amqps(b, good)
    for cert, key in (
        (certs.revoked_client, certs.revoked_client_key),
        (certs.expired_client, certs.expired_client_key),
    ):
        ctx = tls_context(certs, cert, key)
        for port in (b.ports["amqps"], b.ports["mqtts"], b.ports["stomps"]):
            assert_refused_in_handshake(port, ctx)
    round_trip_amqps(b, good)


def test_stalled_handshakes_from_one_address_hit_its_cap_and_then_time_out(make_tls_broker, certs):
    """300 sockets from one address open the mqtts port and never start
    their handshake: the address's cap (200) admits 200, closes the rest at
    accept, and the 200 are dropped at the handshake timeout, after which
    the address is served again."""
    import select

    b = make_tls_broker(
        tls_options=["handshake_timeout_secs = 6"],
        broker_options=["max_connections_per_ip = 200"],
    )
    socks = []
    try:
        started = time.monotonic()
        for _ in range(300):
            s = socket.create_connection(("127.0.0.1", b.ports["mqtts"]), timeout=5)
            socks.append(s)
        time.sleep(0.5)

        def closed(s):
            r, _, _ = select.select([s], [], [], 0)
            if not r:
                return False
            try:
                return s.recv(1) == b""
            except ConnectionResetError:
                return True

        elapsed = time.monotonic() - started
        assert elapsed < 5, f"{elapsed:.1f} s: too slow to tell accept-time closes apart"
        assert sum(closed(s) for s in socks) == 100
        # The admitted ones time out; then the address is served again.
        assert wait_until(lambda: all(closed(s) for s in socks), 10)
        round_trip_amqps(b, tls_context(certs))
    finally:
        for s in socks:
            s.close()


@pytest.mark.parametrize("over_tls", [False, True])
def test_a_slow_loris_stomp_connect_is_cut_off_at_the_connect_timeout(
    make_tls_broker, certs, over_tls
):
    """A client that sends its CONNECT frame a byte at a time never gets
    past `[stomp] connect_timeout` (2 s here): trickling bytes does not
    extend it. It gets an ERROR `connect timeout`, then the close, and the
    broker serves others meanwhile."""
    b = make_tls_broker(stomp_options=["connect_timeout = 2"])
    port = b.ports["stomps"] if over_tls else b.stomp_port
    if over_tls:
        s = tls_connect(port, tls_context(certs))
    else:
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
    frame = b"CONNECT\naccept-version:1.2\nhost:/\nlogin:guest\npasscode:guest\n\n\x00"
    started = time.monotonic()
    got = b""
    s.settimeout(0.25)
    try:
        for byte in frame[:-1]:
            s.sendall(bytes([byte]))
            try:
                chunk = s.recv(4096)
            except (socket.timeout, ssl.SSLWantReadError):
                continue
            except (ConnectionError, ssl.SSLError):
                break
            if not chunk:
                break
            got += chunk
            if time.monotonic() - started > 6:
                break
    except (BrokenPipeError, ConnectionError, ssl.SSLError):
        pass
    elapsed = time.monotonic() - started
    s.close()
    assert got.startswith(b"ERROR\n") and b"message:connect timeout" in got, got
    assert 1.5 < elapsed < 5, elapsed
    c = StompClient(b)
    try:
        assert c.connect().cmd == "CONNECTED"
    finally:
        c.close()


def test_the_admin_listener_serves_https_with_the_same_certificate(make_tls_broker, certs):
    """`[tls] https_port`: the management API, the console and the health
    check over HTTPS, verified against the test CA; garbage on the port
    and a stalled handshake disturb nobody."""
    import base64
    import json
    import urllib.error
    import urllib.request

    b = make_tls_broker()
    port = b.ports["https"]
    ctx = tls_context(certs)
    auth = {"Authorization": "Basic " + base64.b64encode(b"guest:guest").decode()}

    def get(path, headers=None):
        req = urllib.request.Request(f"https://127.0.0.1:{port}{path}", headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=5, context=ctx) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    stalled = socket.create_connection(("127.0.0.1", port), timeout=5)
    garbage = socket.create_connection(("127.0.0.1", port), timeout=5)
    garbage.sendall(b"GET / HTTP/1.1\r\n\r\n")
    try:
        assert get("/api/health") == (200, '{"status":"ok"}')
        status, body = get("/api/whoami", auth)
        assert (status, json.loads(body)) == (200, {"name": "guest", "tags": ["administrator"]})
        assert get("/api/overview")[0] == 401
        status, page = get("/")
        assert status == 200 and "<title>Junction</title>" in page
        # Plain HTTP to the HTTPS port gets a TLS alert or a close, never
        # an HTTP answer.
        try:
            got = garbage.recv(100)
        except ConnectionResetError:
            got = b""
        assert not got.startswith(b"HTTP"), got
    finally:
        stalled.close()
        garbage.close()
    # A client that does not trust the CA is refused in the handshake.
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"https://127.0.0.1:{port}/api/health", timeout=5, context=ssl.create_default_context())


@pytest.mark.parametrize("version", [V311, V5])
def test_mqtt_and_stomp_over_wss(make_tls_broker, certs, clients, version):
    """wss:// listeners (docs/websocket.md) on the same certificate: paho's
    websockets transport and websocket-client, checking the server
    certificate against the test CA; the API lists them as TLS."""
    import websocket

    from admin_support import api

    b = make_tls_broker()
    topic = uid("t") + "/wss"
    sub = clients.connect(b, version=version, port=b.ports["mqtt-wss"], tls=tls_context(certs), ws_path="/ws")
    assert sub.subscribe(topic, qos=1) == [1]
    pub = clients.connect(b, version=version, port=b.ports["mqtt-wss"], tls=tls_context(certs), ws_path="/mqtt")
    assert pub.publish(topic, b"\x00over wss\xff", qos=1) == 0
    (m,) = sub.wait_messages(1)
    assert (m.topic, m.payload, m.qos) == (topic, b"\x00over wss\xff", 1)
    ws = websocket.create_connection(
        f"wss://127.0.0.1:{b.ports['stomp-wss']}/ws",
        subprotocols=["v12.stomp"],
        sslopt={"ca_certs": str(certs.ca), "cert_reqs": ssl.CERT_REQUIRED},
        timeout=5,
    )
    ws.send("CONNECT\naccept-version:1.2\nhost:/\nlogin:guest\npasscode:guest\n\n\x00")
    assert ws.recv_data()[1].startswith(b"CONNECTED\n")
    web = sorted((c["protocol"].split()[1], c["ssl"]) for c in api(b, "GET", "/api/connections")[1] if c["protocol"].startswith("Web "))
    assert web == [("MQTT", True), ("MQTT", True), ("STOMP", True)], web
    ws.close()
