"""Permissions like RabbitMQ's (docs/security.md), with real clients: pika,
paho-mqtt and stomp.py against users whose permissions `junction
permission set` and `junction topic-permission set` gave them.

Each protocol refuses in its own way and nothing else is disturbed:
AMQP closes the channel with 403 ACCESS_REFUSED, MQTT refuses one filter in
SUBACK (0x87, or 0x80 in 3.1.1) and a publish with PUBACK/PUBREC 0x87 in
MQTT 5 (3.1.1 disconnects), STOMP sends ERROR access_refused and closes.
A running broker picks up a change of the users file without a restart.
"""

import re

import pika
import pytest

from mqtt_support import PUBREC, V5, V311, publish_packet
from mqtt_support import clients  # noqa: F401 (fixture)
from stomp_support import Client as StompClient
from stomp_support import uid

BOB = ("bob", "bob-secret-pw", ["/"])


def refused(callable_, *args, **kw):
    """Runs an AMQP operation that must close its channel with 403; returns
    the reply text."""
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        callable_(*args, **kw)
    assert e.value.reply_code == 403, e.value
    return e.value.reply_text


def bob_broker(make_broker, configure, write, read, topic=None, **kw):
    """A broker with guest and bob; bob has these patterns on "/", and
    `topic` = (exchange, write, read) topic patterns when given."""
    commands = [["permission", "set", "bob", "/", configure, write, read]]
    if topic is not None:
        commands.append(["topic-permission", "set", "bob", "/", *topic])
    return make_broker(users=[BOB], commands=commands, **kw)


def bob(b, **kw):
    return b.connect(user="bob", password="bob-secret-pw", **kw)


# --------------------------------------------------------------------------
# AMQP
# --------------------------------------------------------------------------


def test_amqp_configure_write_and_read_each_refused_with_403(make_broker):
    b = bob_broker(make_broker, r"^bob\.", r"^(bob\.|amq\.default$)", r"^bob\.")
    guest = b.connect()
    gch = guest.channel()
    gch.queue_declare("guest.q")
    conn = bob(b)
    ch = conn.channel()
    ch.queue_declare("bob.q")
    ch.exchange_declare("bob.x", "fanout")
    assert refused(conn.channel().queue_declare, "other.q") == (
        "ACCESS_REFUSED - configure access to queue 'other.q' in vhost '/' refused for user 'bob'"
    )
    assert refused(conn.channel().exchange_declare, "other.x", "fanout") == (
        "ACCESS_REFUSED - configure access to exchange 'other.x' in vhost '/' refused for user 'bob'"
    )
    # A server-named queue is checked under the name it would get.
    text = refused(conn.channel().queue_declare, "")
    assert text.startswith("ACCESS_REFUSED - configure access to queue 'amq.gen-"), text
    # Write: the default exchange is `amq.default`; amq.direct is not ours.
    ch.confirm_delivery()
    ch.basic_publish("", "bob.q", b"to bob.q")
    pub = conn.channel()
    pub.confirm_delivery()
    assert refused(pub.basic_publish, "amq.direct", "k", b"no") == (
        "ACCESS_REFUSED - write access to exchange 'amq.direct' in vhost '/' refused for user 'bob'"
    )
    # Read: our queue yes, guest's queue no (get and consume).
    m = ch.basic_get("bob.q", auto_ack=True)
    assert m[2] == b"to bob.q"
    assert refused(conn.channel().basic_get, "guest.q") == (
        "ACCESS_REFUSED - read access to queue 'guest.q' in vhost '/' refused for user 'bob'"
    )
    c = conn.channel()
    assert "read access to queue 'guest.q'" in refused(
        c.basic_consume, "guest.q", lambda *a: None
    )
    # Binding bob.q to amq.fanout: write on bob.q is there, read on the
    # source exchange is not.
    assert refused(conn.channel().queue_bind, "bob.q", "amq.fanout") == (
        "ACCESS_REFUSED - read access to exchange 'amq.fanout' in vhost '/' refused for user 'bob'"
    )
    # Deleting and purging are configure and read.
    assert "configure access to queue 'guest.q'" in refused(conn.channel().queue_delete, "guest.q")
    assert "read access to queue 'guest.q'" in refused(conn.channel().queue_purge, "guest.q")
    # The connection itself, and everyone else, go on.
    assert conn.is_open
    ch.basic_publish("", "bob.q", b"still here")
    assert ch.basic_get("bob.q", auto_ack=True)[2] == b"still here"
    gch.basic_publish("", "guest.q", b"guest works")
    assert gch.basic_get("guest.q", auto_ack=True)[2] == b"guest works"
    conn.close()
    guest.close()


def test_amqp_lookahead_pattern(make_broker):
    b = bob_broker(make_broker, "", r"^(?!secret\.).*", "")
    guest = b.connect()
    g = guest.channel()
    g.exchange_declare("secret.x", "fanout")
    g.exchange_declare("public.x", "fanout")
    conn = bob(b)
    ch = conn.channel()
    ch.confirm_delivery()
    ch.basic_publish("public.x", "", b"ok")
    c2 = conn.channel()
    c2.confirm_delivery()
    assert "write access to exchange 'secret.x'" in refused(c2.basic_publish, "secret.x", "", b"no")
    # "" allows nothing: not even a declare of a queue.
    assert "configure access to queue 'q'" in refused(conn.channel().queue_declare, "q")
    conn.close()
    guest.close()


def test_amqp_topic_permissions_apply_to_topic_exchanges_only(make_broker):
    b = bob_broker(make_broker, ".*", ".*", ".*", topic=("amq.topic", r"^bob\.", r"^bob\."))
    conn = bob(b)
    ch = conn.channel()
    ch.confirm_delivery()
    ch.queue_declare("bob.in")
    ch.queue_bind("bob.in", "amq.topic", "bob.#")
    ch.basic_publish("amq.topic", "bob.a", b"mine")
    assert ch.basic_get("bob.in", auto_ack=True)[2] == b"mine"
    p = conn.channel()
    p.confirm_delivery()
    assert refused(p.basic_publish, "amq.topic", "alice.a", b"no") == (
        "ACCESS_REFUSED - write access to topic 'alice.a' in exchange 'amq.topic' "
        "in vhost '/' refused for user 'bob'"
    )
    assert refused(conn.channel().queue_bind, "bob.in", "amq.topic", "alice.#") == (
        "ACCESS_REFUSED - read access to topic 'alice.#' in exchange 'amq.topic' "
        "in vhost '/' refused for user 'bob'"
    )
    # Another topic exchange has no topic rules for bob: anything goes,
    # and a direct exchange never has topic checks.
    ch.exchange_declare("other.topic", "topic")
    ch.queue_bind("bob.in", "other.topic", "alice.#")
    ch.basic_publish("other.topic", "alice.a", b"other")
    ch.basic_publish("amq.direct", "alice.a", b"direct")
    assert ch.basic_get("bob.in", auto_ack=True)[2] == b"other"
    conn.close()


def test_a_user_without_permissions_on_a_vhost_cannot_open_it(make_broker):
    b = make_broker(vhosts=["/", "iot"], users=[BOB])
    with pytest.raises(pika.exceptions.ProbableAccessDeniedError) as e:
        bob(b, vhost="iot")
    assert "ACCESS_REFUSED - access to vhost 'iot' refused for user 'bob'" in str(e.value.args[0])
    # Granted on the running broker: no restart.
    b.change_users("permission", "set", "bob", "iot", ".*", ".*", ".*")
    conn = bob(b, vhost="iot")
    ch = conn.channel()
    ch.queue_declare("q")
    # Taken away: the open connection's next operation is refused, and so
    # is a new connection.
    b.change_users("permission", "clear", "bob", "iot")
    assert "configure access to queue 'q2' in vhost 'iot'" in refused(
        conn.channel().queue_declare, "q2"
    )
    with pytest.raises(pika.exceptions.ProbableAccessDeniedError):
        bob(b, vhost="iot")
    conn.close()


def test_a_permission_change_reaches_a_running_connection(make_broker):
    b = bob_broker(make_broker, ".*", r"^(amq\.default|bob\..*)$", ".*")
    conn = bob(b)
    ch = conn.channel()
    ch.queue_declare("bob.q")
    ch.queue_bind("bob.q", "amq.fanout")
    p = conn.channel()
    p.confirm_delivery()
    assert "write access to exchange 'amq.fanout'" in refused(p.basic_publish, "amq.fanout", "", b"x")
    b.change_users("permission", "set", "bob", "/", ".*", ".*", ".*")
    p = conn.channel()
    p.confirm_delivery()
    p.basic_publish("amq.fanout", "", b"now allowed")
    assert ch.basic_get("bob.q", auto_ack=True)[2] == b"now allowed"
    conn.close()


def test_each_denial_is_logged_once_and_no_password_is(make_broker):
    b = bob_broker(make_broker, "", "", "")
    conn = bob(b)
    for _ in range(3):
        refused(conn.channel().queue_declare, "denied.q")
    refused(conn.channel().queue_declare, "other.q")
    conn.close()
    log = re.sub(r"\x1b\[[0-9;]*m", "", b.log_path.read_text(errors="replace"))
    lines = [line for line in log.splitlines() if "access refused user=bob" in line]
    assert len([x for x in lines if "queue 'denied.q'" in x]) == 1, lines
    assert len([x for x in lines if "queue 'other.q'" in x]) == 1, lines
    assert "bob-secret-pw" not in log


def test_permission_commands_list_and_refuse_bad_input(make_broker):
    b = make_broker(users=[BOB])
    b.change_users("permission", "set", "bob", "/", "", r"^(?!secret\.).*", ".*")
    b.change_users("topic-permission", "set", "bob", "/", "amq.topic", r"^{client_id}\.", ".*")
    assert b.command("permission", "list", "bob").stdout == "bob\t/\t\t^(?!secret\\.).*\t.*\n"
    assert b.command("permission", "list", "--vhost", "/").stdout == (
        "bob\t/\t\t^(?!secret\\.).*\t.*\nguest\t/\t.*\t.*\t.*\n"
    )
    assert b.command("topic-permission", "list").stdout == (
        "bob\t/\tamq.topic\t^{client_id}\\.\t.*\n"
    )
    bad = b.command("permission", "set", "bob", "/", "(", ".*", ".*", check=False)
    assert bad.returncode != 0 and 'invalid pattern "("' in bad.stderr, bad
    bad = b.command("permission", "set", "bob", "nope", ".*", ".*", ".*", check=False)
    assert bad.returncode != 0 and "no vhost 'nope'" in bad.stderr, bad
    bad = b.command("permission", "set", "nobody", "/", ".*", ".*", ".*", check=False)
    assert bad.returncode != 0 and "no user 'nobody'" in bad.stderr, bad
    b.change_users("topic-permission", "clear", "bob", "/")
    assert b.command("topic-permission", "list").stdout == "\n"


# --------------------------------------------------------------------------
# MQTT
# --------------------------------------------------------------------------


@pytest.mark.parametrize("version,denied", [(V5, 0x87), (V311, 0x80)])
def test_mqtt_a_denied_filter_is_refused_alone(make_broker, clients, version, denied):
    b = bob_broker(make_broker, ".*", ".*", ".*", topic=("amq.topic", ".*", r"^bob\."))
    c = clients.connect(b, version=version, username="bob", password="bob-secret-pw")
    assert c.subscribe("bob/a", ("alice/a", 1), "bob/#", qos=1) == [1, denied, 1]
    pub = clients.connect(b, version=V5)
    pub.publish("bob/a", b"for bob", qos=1)
    pub.publish("alice/a", b"not for bob", qos=1)
    # One copy: both allowed filters feed the one session.
    got = c.wait_messages(1)
    assert [(m.topic, m.payload) for m in got] == [("bob/a", b"for bob")]
    c.assert_quiet(1)
    assert c.disconnected is None


def test_mqtt5_a_denied_publish_gets_0x87_and_the_connection_stays(make_broker, clients):
    b = bob_broker(make_broker, ".*", ".*", ".*", topic=("amq.topic", r"^bob\.", ".*"))
    watcher = clients.connect(b, version=V5)
    watcher.subscribe("#", qos=1)
    c = clients.connect(b, version=V5, username="bob", password="bob-secret-pw")
    assert c.publish("alice/x", b"denied qos1", qos=1) == 0x87
    c.publish("alice/x", b"denied qos0", qos=0)
    # QoS 2: PUBREC 0x87 ends the exchange (paho would send PUBREL anyway,
    # so a raw client reads the PUBREC itself).
    raw = clients.raw(b, 5)
    assert raw.connect("raw-bob", username="bob", password=b"bob-secret-pw").reason == 0
    raw.send(publish_packet("alice/x", b"denied qos2", 2, 7, version=5))
    pid, reason, _ = raw.expect(PUBREC)
    assert (pid, reason) == (7, 0x87)
    assert raw.publish("bob/raw", b"raw allowed", 1, 8) == 0
    assert c.publish("bob/x", b"allowed", qos=1) == 0
    got = watcher.wait_messages(2)
    assert sorted((m.topic, m.payload) for m in got) == [
        ("bob/raw", b"raw allowed"),
        ("bob/x", b"allowed"),
    ]
    watcher.assert_quiet(2)
    assert c.disconnected is None


def test_mqtt3_a_denied_publish_disconnects(make_broker, clients):
    b = bob_broker(make_broker, ".*", ".*", ".*", topic=("amq.topic", r"^bob\.", ".*"))
    watcher = clients.connect(b, version=V311)
    watcher.subscribe("#", qos=1)
    c = clients.connect(b, version=V311, username="bob", password="bob-secret-pw")
    c.publish_refused("alice/x", b"denied")
    log = re.sub(r"\x1b\[[0-9;]*m", "", b.log_path.read_text(errors="replace"))
    assert f"client_id={c.client_id} reason=0x87 (Not authorized)" in log
    other = clients.connect(b, version=V311, username="bob", password="bob-secret-pw")
    other.publish("bob/x", b"allowed", qos=1)
    got = watcher.wait_messages(1)
    assert [(m.topic, m.payload) for m in got] == [("bob/x", b"allowed")]
    watcher.assert_quiet(1)


def test_mqtt_topic_patterns_with_client_id_and_username(make_broker, clients):
    b = bob_broker(
        make_broker,
        ".*",
        ".*",
        ".*",
        topic=("amq.topic", r"^devices\.{client_id}\.", r"^users\.{username}\."),
    )
    c = clients.connect(
        b, version=V5, client_id="dev1", username="bob", password="bob-secret-pw"
    )
    assert c.subscribe("users/bob/#", "users/alice/#", "devices/dev1/#", qos=1) == [1, 0x87, 0x87]
    assert c.publish("devices/dev1/temp", b"21", qos=1) == 0x10  # no subscribers
    assert c.publish("devices/dev2/temp", b"22", qos=1) == 0x87
    # A client id with regex characters stands for itself, escaped.
    d = clients.connect(
        b, version=V5, client_id="a(b", username="bob", password="bob-secret-pw"
    )
    assert d.publish("devices/a(b/x", b"ok", qos=1) == 0x10
    assert d.publish("devices/a/x", b"no", qos=1) == 0x87


@pytest.mark.parametrize("version,code", [(V5, 0x87), (V311, 0x87)])
def test_mqtt_a_will_the_user_may_not_publish_is_refused_at_connect(
    make_broker, clients, version, code
):
    b = bob_broker(make_broker, ".*", ".*", ".*", topic=("amq.topic", r"^bob\.", ".*"))
    c = clients.new(
        b,
        version=version,
        username="bob",
        password="bob-secret-pw",
        will={"topic": "alice/will", "payload": b"gone", "qos": 1},
    )
    ack = c.connect()
    # paho reports 3.1.1 return code 5 (not authorized) as 0x87.
    assert ack is not None and ack.reason == code, ack
    ok = clients.new(
        b,
        version=version,
        username="bob",
        password="bob-secret-pw",
        will={"topic": "bob/will", "payload": b"gone", "qos": 1},
    )
    assert ok.connect().reason == 0


def test_mqtt_a_user_without_the_vhost_is_not_authorized(make_broker, clients):
    b = make_broker(users=[BOB], commands=[["permission", "clear", "bob", "/"]])
    c = clients.new(b, version=V5, username="bob", password="bob-secret-pw")
    assert c.connect().reason == 0x87


# --------------------------------------------------------------------------
# STOMP
# --------------------------------------------------------------------------


def stomp_bob(b):
    c = StompClient(b)
    c.connected(login="bob", passcode="bob-secret-pw")
    return c


def error_of(c):
    """The ERROR the broker sent before closing."""
    c.wait_disconnected()
    errors = c.listener.of("ERROR")
    assert len(errors) == 1, c.listener.frames
    return errors[0].headers["message"], errors[0].body.decode()


STOMP_PATTERNS = (r"^bob\.", r"^(amq\.default|amq\.topic|bob\..*)$", r"^(bob\..*|amq\.topic)$")


def test_stomp_send_and_subscribe_refusals_close_only_that_connection(make_broker):
    b = bob_broker(make_broker, *STOMP_PATTERNS, topic=("amq.topic", r"^bob\.", r"^bob\."))
    guest = StompClient(b).connected()
    guest.subscribe("/queue/guest.q")
    ok = stomp_bob(b)
    ok.send("/queue/bob.q", "to my queue", receipt=True)
    ok.send("/topic/bob.news", "to my topic", receipt=True)
    ok.subscribe("/topic/bob.#")
    ok.subscribe("/queue/bob.q")

    cases = [
        (lambda c: c.send("/queue/other.q", "x"), "configure access to queue 'other.q'"),
        (lambda c: c.send("/topic/alice.x", "x"), "write access to topic 'alice.x' in exchange 'amq.topic'"),
        (lambda c: c.send("/exchange/amq.direct/k", "x"), "write access to exchange 'amq.direct'"),
        # An existing /queue/ is not declared again: only read is asked.
        (lambda c: c.subscribe("/queue/guest.q", receipt=False), "read access to queue 'guest.q'"),
        (lambda c: c.subscribe("/amq/queue/guest.q", receipt=False), "read access to queue 'guest.q'"),
        (lambda c: c.subscribe("/topic/alice.#", receipt=False), "read access to topic 'alice.#'"),
        (
            lambda c: c.subscribe(
                "/topic/bob.x", headers={"x-queue-name": "guest.q"}, receipt=False
            ),
            "configure access to queue 'guest.q'",
        ),
    ]
    for act, words in cases:
        c = stomp_bob(b)
        act(c)
        message, body = error_of(c)
        assert message == "access_refused", (message, body)
        assert words in body and "in vhost '/' refused for user 'bob'" in body, body
        c.close()
    # bob's first connection and guest's go on.
    ok.send("/queue/bob.q", "again", receipt=True)
    assert ok.is_connected
    guest.send("/queue/guest.q", "guest works", receipt=True)
    assert [m.body for m in guest.exactly(1)] == [b"guest works"]
    ok.close()
    guest.close()


def test_stomp_a_user_without_the_vhost_is_refused(make_broker):
    b = make_broker(vhosts=["/", "iot"], users=[BOB])
    c = StompClient(b, vhost="iot")
    f = c.connect(login="bob", passcode="bob-secret-pw")
    assert (f.cmd, f.headers["message"]) == ("ERROR", "access_refused"), f
    assert "user 'bob' may not use virtual host 'iot'" in f.body.decode()
    c.close()


def test_topic_permissions_cross_protocols_through_one_name_mapping(make_broker, clients):
    """MQTT `bob/x` and STOMP `/topic/bob.x` are one routing key, so one
    topic rule covers both."""
    b = bob_broker(make_broker, ".*", ".*", ".*", topic=("amq.topic", r"^bob\.x$", ".*"))
    m = clients.connect(b, version=V5, username="bob", password="bob-secret-pw")
    assert m.publish("bob/x", b"mqtt ok", qos=1) == 0x10
    assert m.publish("bob/y", b"mqtt no", qos=1) == 0x87
    s = stomp_bob(b)
    s.send("/topic/bob.x", "stomp ok", receipt=True)
    s.send("/topic/bob.y", "stomp no")
    message, body = error_of(s)
    assert message == "access_refused" and "topic 'bob.y'" in body, body
    s.close()
    name = uid("q")
    conn = bob(b)
    ch = conn.channel()
    ch.confirm_delivery()
    ch.queue_declare(name)
    ch.basic_publish("amq.topic", "bob.x", b"amqp ok")
    p = conn.channel()
    p.confirm_delivery()
    assert "topic 'bob.y'" in refused(p.basic_publish, "amq.topic", "bob.y", b"amqp no")
    conn.close()
