"""Malformed and hostile STOMP input on raw sockets: every bad frame gets
an ERROR frame (with a `message` header, and `receipt-id` when the bad
frame asked for a receipt) and the connection closes, while other clients
go on being served. Also the configurable limits ([stomp] max_frame_size,
max_headers, max_header_length, max_body_size, max_subscriptions,
max_transactions, connect_timeout; [broker] max_handshake_size) and a
STOMP session typed from a shell with nothing but bash."""

import subprocess
import threading
import time

import pytest

from broker_support import Broker
from stomp_support import (
    CLOSED,
    assert_serves,
    build,
    stomp_clients,  # noqa: F401 (fixture)
    uid,
)

CONNECT_12 = build("CONNECT", {"accept-version": "1.2", "host": "/", "login": "guest", "passcode": "guest"})


def refused(raw, message, receipt=None, startswith=False):
    """The next frame is an ERROR with this `message` (and `receipt-id`),
    then the connection closes. Returns the ERROR frame."""
    f = raw.expect_error_and_close()
    if startswith:
        assert f.headers["message"].startswith(message), f
    else:
        assert f.headers["message"] == message, f
    assert f.headers.get("receipt-id") == receipt, f
    return f


def connected_raw(clients, broker, version="1.2"):
    return clients.raw(broker).connected(version=version)


# --- before CONNECT ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "data,message",
    [
        (b"HELLO\n\n\0", 'unknown command "HELLO"'),
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "unknown command"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(64), "NUL octet before the end of the frame headers"),
        (b"connect\naccept-version:1.2\n\n\0", 'unknown command "connect"'),
    ],
    ids=["word", "http", "tls-hello", "lower-case-connect"],
)
def test_garbage_instead_of_connect_is_an_error(module_broker, stomp_clients, data, message):
    raw = stomp_clients.raw(module_broker)
    raw.send(data)
    refused(raw, message, startswith=True)
    assert_serves(module_broker, stomp_clients)


@pytest.mark.parametrize("cmd", ["SEND", "SUBSCRIBE", "DISCONNECT"])
def test_a_frame_before_connect_is_an_error(module_broker, stomp_clients, names, cmd):
    q = names("q")
    raw = stomp_clients.raw(module_broker)
    raw.send_frame(cmd, {"destination": f"/queue/{q}", "id": "s"}, b"early")
    refused(raw, "expected CONNECT")
    c = stomp_clients.connect(module_broker)
    c.subscribe(f"/queue/{q}")
    c.exactly(0, settle=0.3)


@pytest.mark.deadline(60)
@pytest.mark.parametrize(
    "sized,message",
    [(True, "body larger than 65536 bytes"), (False, "frame larger than 65536 bytes")],
    ids=["content-length", "nul-terminated"],
)
def test_a_16_mib_first_frame_without_connect_is_cut_off_at_the_handshake_limit(
    module_broker, stomp_clients, sized, message
):
    raw = stomp_clients.raw(module_broker, timeout=10)
    body = b"x" * (16 * 1024 * 1024)
    length = b"content-length:%d\n" % len(body) if sized else b""
    frame = b"SEND\ndestination:/queue/x\n" + length + b"\n" + body + b"\0"
    sent = []

    def pump():
        view = memoryview(frame)
        try:
            while view:
                n = raw.sock.send(view[:65536])
                sent.append(n)
                view = view[n:]
        except OSError:
            pass

    t = threading.Thread(target=pump, daemon=True)
    t.start()
    f = raw.read_frame(timeout=10)
    t.join(timeout=15)
    assert not t.is_alive(), "the broker kept reading a 16 MiB frame"
    assert f is not CLOSED, "closed without an ERROR frame"
    assert f.cmd == "ERROR", f
    assert f.headers["message"] == message, f
    raw.wait_closed()
    assert sum(sent) < len(frame), "the broker read the whole frame"
    assert_serves(module_broker, stomp_clients)


def test_a_connect_frame_over_the_handshake_limit_is_an_error(module_broker, stomp_clients):
    raw = stomp_clients.raw(module_broker)
    headers = [("accept-version", "1.2"), ("host", "/")] + [(f"pad{i}", "x" * 8000) for i in range(9)]
    raw.send_frame("CONNECT", headers)
    refused(raw, "frame larger than 65536 bytes")


def test_connect_without_a_blank_line_is_an_error(module_broker, stomp_clients):
    raw = stomp_clients.raw(module_broker)
    raw.send(b"CONNECT\naccept-version:1.2\n\0")
    refused(raw, "NUL octet before the end of the frame headers")


# --- after CONNECT: frames ------------------------------------------------------------------


def test_an_unknown_command_is_an_error(module_broker, stomp_clients):
    raw = connected_raw(stomp_clients, module_broker)
    raw.send(b"PUBLISH\ndestination:/queue/x\n\nbody\0")
    refused(raw, 'unknown command "PUBLISH"')
    assert_serves(module_broker, stomp_clients)


@pytest.mark.parametrize("cmd", ["MESSAGE", "RECEIPT", "ERROR", "CONNECTED"])
def test_a_server_frame_from_the_client_is_an_error(module_broker, stomp_clients, cmd):
    raw = connected_raw(stomp_clients, module_broker)
    raw.send_frame(cmd, {"receipt": "r"})
    refused(raw, f"unexpected frame {cmd}", receipt="r")


@pytest.mark.parametrize("cmd", ["CONNECT", "STOMP"])
def test_a_second_connect_is_an_error(module_broker, stomp_clients, cmd):
    raw = connected_raw(stomp_clients, module_broker)
    raw.send_frame(cmd, {"accept-version": "1.2", "host": "/"})
    refused(raw, "already connected")


@pytest.mark.parametrize(
    "cmd,headers,missing",
    [
        ("SEND", {}, "destination"),
        ("SUBSCRIBE", {"id": "s"}, "destination"),
        ("SUBSCRIBE", {"destination": "/queue/x"}, "id"),
        ("UNSUBSCRIBE", {}, "id"),
        ("BEGIN", {}, "transaction"),
        ("COMMIT", {}, "transaction"),
        ("ABORT", {}, "transaction"),
        ("ACK", {}, "id"),
        ("NACK", {}, "id"),
    ],
)
def test_a_missing_required_header_is_an_error(module_broker, stomp_clients, cmd, headers, missing):
    raw = connected_raw(stomp_clients, module_broker)
    raw.send_frame(cmd, dict(headers, receipt="r-missing"), b"")
    f = refused(raw, f"missing '{missing}' header", receipt="r-missing")
    assert cmd.encode() in f.body, f


def test_ack_in_1_1_needs_message_id(module_broker, stomp_clients):
    raw = connected_raw(stomp_clients, module_broker, "1.1")
    raw.send_frame("ACK", {"subscription": "s", "receipt": "r"})
    refused(raw, "missing 'message-id' header", receipt="r")


def test_a_bad_escape_in_1_2_is_an_error(module_broker, stomp_clients, names):
    q = names("q")
    raw = connected_raw(stomp_clients, module_broker)
    raw.send(b"SEND\ndestination:/queue/" + q.encode() + b"\nreceipt:r-esc\nbad:a\\xb\n\nbody\0")
    refused(raw, "undefined escape sequence \\x in a header", receipt="r-esc")
    c = stomp_clients.connect(module_broker)
    c.subscribe(f"/queue/{q}")
    c.exactly(0, settle=0.3)


def test_the_same_backslash_is_plain_text_in_1_0(module_broker, stomp_clients, names):
    q = names("q")
    raw = connected_raw(stomp_clients, module_broker, "1.0")
    raw.send_frame("SUBSCRIBE", {"destination": f"/queue/{q}", "receipt": "r0"})
    assert raw.expect("RECEIPT").headers["receipt-id"] == "r0"
    raw.send(b"SEND\ndestination:/queue/" + q.encode() + b"\nodd:a\\xb\n\nbody\0")
    m = raw.expect("MESSAGE")
    assert (m.body, m.headers["odd"]) == (b"body", "a\\xb")


@pytest.mark.parametrize(
    "data,message",
    [
        (b"SEND\ndestination:/queue/x\nno colon here\n\nbody\0", "header line without ':'"),
        (b"SEND\ndestination:/queue/x\ncontent-length:abc\n\nbody\0", 'invalid content-length "abc"'),
        (b"SEND\ndestination:/queue/x\ncontent-length:5\n\nhelloX", "body does not end with NUL after content-length bytes"),
        (b"SEND\ndestination:/queue/x\nname:\xff\xfe\n\nbody\0", "header is not valid UTF-8"),
        (b"SEND\ndestination:/queue/x\rmore\n\nbody\0", "carriage return inside the command or a header line"),
    ],
    ids=["no-colon", "bad-content-length", "no-nul-after-body", "not-utf8", "stray-cr"],
)
def test_malformed_frames_are_errors(module_broker, stomp_clients, data, message):
    raw = connected_raw(stomp_clients, module_broker)
    raw.send(data)
    refused(raw, message)
    assert_serves(module_broker, stomp_clients)


def test_header_line_limit_is_10240_bytes(module_broker, stomp_clients, names):
    q = names("q")
    raw = connected_raw(stomp_clients, module_broker)
    raw.send_frame("SUBSCRIBE", {"destination": f"/queue/{q}", "id": "s", "receipt": "r0"})
    raw.expect("RECEIPT")
    at_limit = "x" * (10240 - len("big:"))
    raw.send_frame("SEND", {"destination": f"/queue/{q}", "big": at_limit}, b"ok")
    m = raw.expect("MESSAGE")
    assert len(m.headers["big"]) == len(at_limit)
    raw.send_frame("SEND", {"destination": f"/queue/{q}", "receipt": "r-big", "big": at_limit + "x"}, b"no")
    refused(raw, "header line longer than 10240 bytes", receipt="r-big")


def test_too_many_headers(module_broker, stomp_clients, names):
    q = names("q")
    raw = connected_raw(stomp_clients, module_broker)
    raw.send_frame("SUBSCRIBE", {"destination": f"/queue/{q}", "id": "s", "receipt": "r0"})
    raw.expect("RECEIPT")
    ok = [("destination", f"/queue/{q}")] + [(f"h{i}", "v") for i in range(999)]
    raw.send_frame("SEND", ok, b"1000 headers")
    assert raw.expect("MESSAGE").body == b"1000 headers"
    bad = [("destination", f"/queue/{q}"), ("receipt", "r-many")] + [(f"h{i}", "v") for i in range(999)]
    raw.send_frame("SEND", bad, b"1001 headers")
    refused(raw, "more than 1000 headers", receipt="r-many")


def test_content_length_over_the_body_limit_is_refused_before_the_body(module_broker, stomp_clients):
    raw = connected_raw(stomp_clients, module_broker)
    raw.send(b"SEND\ndestination:/queue/x\nreceipt:r-huge\ncontent-length:16777217\n\n")
    refused(raw, "body larger than 16777216 bytes", receipt="r-huge")


@pytest.mark.deadline(60)
def test_a_body_of_exactly_16_mib_is_accepted(module_broker, stomp_clients, names):
    q = names("q")
    c = stomp_clients.connect(module_broker)
    c.subscribe(f"/queue/{q}")
    body = bytes(range(256)) * (16 * 1024 * 1024 // 256)
    c.send(f"/queue/{q}", body, receipt=True)
    (m,) = c.wait_messages(1, timeout=20)
    assert m.body == body


@pytest.mark.parametrize(
    "version,cmd", [("1.0", "ACK"), ("1.1", "ACK"), ("1.2", "ACK"), ("1.1", "NACK"), ("1.2", "NACK")]
)
def test_ack_of_an_unknown_id_is_an_error(module_broker, stomp_clients, version, cmd):
    raw = connected_raw(stomp_clients, module_broker, version)
    h = {"id": "999999"} if version == "1.2" else {"message-id": "999999", "subscription": "s"}
    raw.send_frame(cmd, dict(h, receipt="r-ack"))
    refused(raw, "unknown message id", receipt="r-ack")
    assert_serves(module_broker, stomp_clients)


def test_acking_an_auto_mode_message_is_an_error(module_broker, stomp_clients, names):
    q = names("q")
    c = stomp_clients.connect(module_broker, "1.1")
    c.subscribe(f"/queue/{q}")
    c.send(f"/queue/{q}", "x", receipt=True)
    (m,) = c.wait_messages(1)
    c.frame("ACK", {"message-id": m.headers["message-id"], "subscription": m.headers["subscription"]})
    assert c.wait_error().headers["message"] == "unknown message id"
    c.wait_disconnected()


def test_acking_twice_is_an_error(module_broker, stomp_clients, names):
    q = names("q")
    c = stomp_clients.connect(module_broker)
    c.subscribe(f"/queue/{q}", ack="client-individual")
    c.send(f"/queue/{q}", "x", receipt=True)
    (m,) = c.wait_messages(1)
    c.ack(m)
    c.frame("ACK", {"id": m.headers["ack"]})
    assert c.wait_error().headers["message"] == "unknown message id"
    c.wait_disconnected()


@pytest.mark.parametrize(
    "headers,message",
    [
        ({"ack": "bogus"}, "invalid ack mode 'bogus'"),
        ({"prefetch-count": "-1"}, "invalid header"),
    ],
)
def test_bad_subscribe_headers_are_errors(module_broker, stomp_clients, names, headers, message):
    raw = connected_raw(stomp_clients, module_broker)
    raw.send_frame("SUBSCRIBE", dict(headers, destination=f"/queue/{names('q')}", id="s", receipt="r"))
    refused(raw, message, receipt="r")


def test_a_duplicate_subscription_id_is_an_error(module_broker, stomp_clients, names):
    raw = connected_raw(stomp_clients, module_broker)
    raw.send_frame("SUBSCRIBE", {"destination": f"/queue/{names('a')}", "id": "same", "receipt": "r1"})
    raw.expect("RECEIPT")
    raw.send_frame("SUBSCRIBE", {"destination": f"/queue/{names('b')}", "id": "same", "receipt": "r2"})
    refused(raw, "duplicate subscription id", receipt="r2")


def test_unsubscribing_an_unknown_id_is_an_error(module_broker, stomp_clients):
    raw = connected_raw(stomp_clients, module_broker)
    raw.send_frame("UNSUBSCRIBE", {"id": "never", "receipt": "r"})
    refused(raw, "unknown subscription", receipt="r")


def test_an_error_on_one_connection_leaves_the_others_alone(module_broker, stomp_clients, names):
    q = names("q")
    good = stomp_clients.connect(module_broker)
    good.subscribe(f"/queue/{q}", ack="client-individual")
    good.send(f"/queue/{q}", "before", receipt=True)
    (m,) = good.wait_messages(1)
    bad = connected_raw(stomp_clients, module_broker)
    bad.send(b"NONSENSE\n\n\0")
    bad.expect_error_and_close()
    good.ack(m)
    good.send(f"/queue/{q}", "after", receipt=True)
    assert [m.body for m in good.exactly(2)] == [b"before", b"after"]


def test_default_max_transactions_is_64(module_broker, stomp_clients):
    raw = connected_raw(stomp_clients, module_broker)
    data = b"".join(build("BEGIN", {"transaction": f"t{i}"}) for i in range(64))
    raw.send(data + build("SEND", {"destination": "/queue/x", "receipt": "ok"}))
    assert raw.expect("RECEIPT").headers["receipt-id"] == "ok"
    raw.send_frame("BEGIN", {"transaction": "t64", "receipt": "r"})
    f = raw.expect_error_and_close()
    assert "too many open transactions" in f.headers["message"] + f.body.decode(), f
    assert f.headers["receipt-id"] == "r"


@pytest.mark.deadline(60)
def test_default_max_subscriptions_is_1024(module_broker, stomp_clients, names):
    q = names("q")
    raw = connected_raw(stomp_clients, module_broker)
    data = b"".join(build("SUBSCRIBE", {"destination": f"/queue/{q}", "id": f"s{i}"}) for i in range(1024))
    raw.send(data + build("SEND", {"destination": "/queue/x", "receipt": "ok"}))
    assert raw.expect("RECEIPT", timeout=20).headers["receipt-id"] == "ok"
    raw.send_frame("SUBSCRIBE", {"destination": f"/queue/{q}", "id": "s1024", "receipt": "r"})
    refused(raw, "too many subscriptions", receipt="r")


# --- shell -------------------------------------------------------------------------------------


def test_a_shell_script_speaks_stomp_with_bash_dev_tcp(module_broker, stomp_clients):
    q = uid("shell")
    script = (
        "exec 3<>/dev/tcp/127.0.0.1/%d; "
        "printf 'CONNECT\\naccept-version:1.2\\nhost:/\\nlogin:guest\\npasscode:guest\\n\\n\\0"
        "SEND\\ndestination:/queue/%s\\n\\nhello from a shell\\0"
        "DISCONNECT\\nreceipt:d\\n\\n\\0' >&3; "
        "cat <&3"
    ) % (module_broker.stomp_port, q)
    out = subprocess.run(["bash", "-c", script], capture_output=True, timeout=10)
    assert out.returncode == 0, out
    frames = out.stdout.split(b"\0")
    assert frames[0].startswith(b"CONNECTED\nversion:1.2\n"), out.stdout
    assert frames[1] == b"RECEIPT\nreceipt-id:d\n\n", out.stdout
    assert frames[2:] == [b""], out.stdout
    c = stomp_clients.connect(module_broker)
    c.subscribe(f"/queue/{q}")
    (m,) = c.exactly(1)
    assert m.body == b"hello from a shell"
    assert m.headers["content-length"] == "18"


# --- configured limits ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def limited_broker(tmp_path_factory):
    """Small [stomp] limits and a 1 s connect timeout."""
    d = tmp_path_factory.mktemp("limits")
    config = d / "junction.toml"
    config.write_text(
        "[stomp]\n"
        "max_frame_size = 4096\n"
        "max_headers = 16\n"
        "max_header_length = 256\n"
        "max_body_size = 1024\n"
        "max_subscriptions = 2\n"
        "max_transactions = 2\n"
        "connect_timeout = 1\n"
    )
    b = Broker(d / "data", config)
    b.start()
    yield b
    b.stop()


def test_the_limits_allow_a_normal_session(limited_broker, stomp_clients):
    q = uid("q")
    c = stomp_clients.connect(limited_broker)
    c.subscribe(f"/queue/{q}")
    c.send(f"/queue/{q}", "small", receipt=True)
    assert [m.body for m in c.exactly(1)] == [b"small"]


def test_configured_max_body_size(limited_broker, stomp_clients):
    q = uid("q")
    raw = connected_raw(stomp_clients, limited_broker)
    raw.send_frame("SUBSCRIBE", {"destination": f"/queue/{q}", "id": "s", "receipt": "r0"})
    raw.expect("RECEIPT")
    raw.send_frame("SEND", {"destination": f"/queue/{q}"}, b"b" * 1024, content_length=True)
    assert len(raw.expect("MESSAGE").body) == 1024
    raw.send_frame("SEND", {"destination": f"/queue/{q}"}, b"b" * 1024)  # NUL-terminated
    assert len(raw.expect("MESSAGE").body) == 1024
    raw.send_frame("SEND", {"destination": f"/queue/{q}", "receipt": "r"}, b"b" * 1025)
    refused(raw, "body larger than 1024 bytes", receipt="r")


def test_configured_max_body_size_by_content_length(limited_broker, stomp_clients):
    raw = connected_raw(stomp_clients, limited_broker)
    raw.send_frame("SEND", {"destination": "/queue/x", "receipt": "r"}, b"b" * 1025, content_length=True)
    refused(raw, "body larger than 1024 bytes", receipt="r")


def test_configured_max_headers(limited_broker, stomp_clients):
    q = uid("q")
    raw = connected_raw(stomp_clients, limited_broker)
    raw.send_frame("SEND", [("destination", f"/queue/{q}"), ("receipt", "ok")] + [(f"h{i}", "v") for i in range(14)])
    raw.expect("RECEIPT")
    raw.send_frame("SEND", [("destination", f"/queue/{q}"), ("receipt", "r")] + [(f"h{i}", "v") for i in range(15)])
    refused(raw, "more than 16 headers", receipt="r")


def test_configured_max_header_length(limited_broker, stomp_clients):
    raw = connected_raw(stomp_clients, limited_broker)
    raw.send_frame("SEND", {"destination": "/queue/x", "receipt": "r", "long": "v" * 252})
    refused(raw, "header line longer than 256 bytes", receipt="r")


def test_configured_max_frame_size(limited_broker, stomp_clients):
    raw = connected_raw(stomp_clients, limited_broker)
    headers = [("destination", "/queue/x"), ("receipt", "r")] + [(f"p{i:02}", "v" * 240) for i in range(13)]
    raw.send_frame("SEND", headers, b"b" * 1000)
    refused(raw, "frame larger than 4096 bytes", receipt="r")


def test_configured_max_subscriptions(limited_broker, stomp_clients):
    c = stomp_clients.connect(limited_broker)
    c.subscribe(f"/queue/{uid('a')}")
    c.subscribe(f"/topic/{uid('b')}")
    c.subscribe(f"/queue/{uid('c')}", receipt=False)
    assert c.wait_error().headers["message"] == "too many subscriptions"
    c.wait_disconnected()


def test_temp_queues_count_as_subscriptions(limited_broker, stomp_clients):
    c = stomp_clients.connect(limited_broker)
    c.subscribe(f"/queue/{uid('a')}")
    c.send(f"/queue/{uid('svc')}", "x", {"reply-to": "/temp-queue/one"}, receipt=True)
    c.send(f"/queue/{uid('svc')}", "y", {"reply-to": "/temp-queue/two"})
    assert c.wait_error().headers["message"] == "too many subscriptions"
    c.wait_disconnected()


def test_configured_max_transactions(limited_broker, stomp_clients):
    c = stomp_clients.connect(limited_broker)
    c.begin("t1")
    c.begin("t2")
    c.frame("BEGIN", {"transaction": "t3"})
    e = c.wait_error()
    assert "too many open transactions" in e.headers["message"] + e.body.decode(), e.headers
    c.wait_disconnected()


def test_ended_transactions_do_not_count(limited_broker, stomp_clients):
    c = stomp_clients.connect(limited_broker)
    for i in range(5):
        c.begin(f"t{i}")
        (c.commit if i % 2 else c.abort)(f"t{i}")
    c.begin("last")
    c.commit("last")


def test_configured_handshake_limit(make_broker, stomp_clients):
    b = make_broker(broker_options=["max_handshake_size = 4096"])
    raw = stomp_clients.raw(b)
    raw.send_frame("CONNECT", [("accept-version", "1.2"), ("host", "/")] + [(f"p{i:02}", "v" * 200) for i in range(20)])
    refused(raw, "frame larger than 4096 bytes")


@pytest.mark.deadline(20)
def test_a_client_that_never_sends_connect_is_closed_after_connect_timeout(limited_broker, stomp_clients):
    raw = stomp_clients.raw(limited_broker)
    start = time.monotonic()
    frames = raw.wait_closed(timeout=5)
    took = time.monotonic() - start
    assert 0.8 <= took <= 3.0, took
    assert [(f.cmd, f.headers["message"]) for f in frames] == [("ERROR", "connect timeout")]
    assert_serves(limited_broker, stomp_clients)
