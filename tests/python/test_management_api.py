"""The management HTTP API (docs/management.md), RabbitMQ's shapes, against
the running broker: credentials and tags, the objects' JSON fields, list
parameters, the writes (declare, delete, purge, get, publish, bind, users,
permissions) and their effect seen by pika, and the error bodies.
"""

import urllib.parse

import pika
import pytest

from admin_support import api
from stomp_support import uid

pytestmark = pytest.mark.deadline(60)


def q(name):
    return urllib.parse.quote(name, safe="")


@pytest.fixture
def mb(make_broker):
    """A broker with users for each tag level (their passwords are their
    names) and a second vhost."""
    b = make_broker(
        vhosts=["/", "iot"],
        users=[
            ("admin2", "admin2", ["/"]),
            ("monitor", "monitor", ["/"]),
            ("manager", "manager", ["iot"]),
            ("plain", "plain", ["/"]),
        ],
    )
    for name, tags in (("admin2", "administrator"), ("monitor", "monitoring"), ("manager", "management")):
        status, _, _ = api(b, "PUT", f"/api/users/{name}", {"tags": tags})
        assert status == 204, status
    return b


def test_credentials_and_tags(mb):
    status, body, headers = api(mb, "GET", "/api/overview", user=None)
    assert status == 401 and body["error"] == "not_authorised", body
    assert headers["WWW-Authenticate"].startswith("Basic"), dict(headers)
    status, body, _ = api(mb, "GET", "/api/overview", user="guest", password="wrong")
    assert (status, body["error"]) == (401, "not_authorised")
    status, body, _ = api(mb, "GET", "/api/overview", user="plain", password="plain")
    assert (status, body["reason"]) == (401, "Not management user")
    # Health and metrics answer without credentials.
    assert api(mb, "GET", "/api/health", user=None)[0] == 200
    assert api(mb, "GET", "/api/whoami")[1] == {"name": "guest", "tags": ["administrator"]}
    assert api(mb, "GET", "/api/whoami", user="monitor", password="monitor")[1] == {
        "name": "monitor",
        "tags": ["monitoring"],
    }
    # management: its own vhosts only; monitoring: all, read-only.
    names = lambda user: [v["name"] for v in api(mb, "GET", "/api/vhosts", user=user, password=user)[1]]
    assert names("manager") == ["iot"]
    assert names("monitor") == ["/", "iot"]
    assert api(mb, "GET", "/api/queues/%2F", user="manager", password="manager")[0] == 401
    assert api(mb, "GET", "/api/users", user="monitor", password="monitor")[1]["reason"] == (
        "Not administrator user"
    )
    assert api(mb, "GET", "/api/users", user="admin2", password="admin2")[0] == 200


def test_queues_fields_and_writes_with_pika(mb):
    name = uid("q")
    assert api(mb, "PUT", f"/api/queues/%2F/{name}", {"durable": True, "arguments": {"x-max-length": 10}})[0] == 201
    assert api(mb, "PUT", f"/api/queues/%2F/{name}", {"durable": True, "arguments": {"x-max-length": 10}})[0] == 204
    conn = mb.connect()
    ch = conn.channel()
    ch.confirm_delivery()
    for i in range(3):
        ch.basic_publish("", name, f"m{i}".encode())
    status, body, _ = api(mb, "GET", f"/api/queues/%2F/{name}")
    assert status == 200
    for field, want in (
        ("name", name),
        ("vhost", "/"),
        ("durable", True),
        ("auto_delete", False),
        ("exclusive", False),
        ("arguments", {"x-max-length": 10}),
        ("messages", 3),
        ("messages_ready", 3),
        ("messages_unacknowledged", 0),
        ("consumers", 0),
        ("state", "running"),
        ("type", "classic"),
    ):
        assert body[field] == want, (field, body)
    assert body["idle_since"][:4].isdigit()
    # Peek leaves them and does not mark them redelivered.
    status, got, _ = api(mb, "POST", f"/api/queues/%2F/{name}/get", {"count": 2, "ackmode": "peek", "encoding": "auto"})
    assert status == 200
    assert [(m["payload"], m["redelivered"], m["payload_encoding"]) for m in got] == [
        ("m0", False, "string"),
        ("m1", False, "string"),
    ]
    # ack_requeue_true puts them back, redelivered.
    got = api(mb, "POST", f"/api/queues/%2F/{name}/get", {"count": 1, "ackmode": "ack_requeue_true"})[1]
    assert [(m["payload"], m["redelivered"], m["message_count"]) for m in got] == [("m0", False, 2)]
    m = ch.basic_get(name, auto_ack=True)
    assert (m[2], m[0].redelivered) == (b"m0", True)
    # ack_requeue_false takes them.
    got = api(mb, "POST", f"/api/queues/%2F/{name}/get", {"count": 5, "ackmode": "ack_requeue_false"})[1]
    assert [m["payload"] for m in got] == ["m1", "m2"]
    assert api(mb, "GET", f"/api/queues/%2F/{name}")[1]["messages"] == 0
    # Purge and delete.
    ch.basic_publish("", name, b"x")
    assert api(mb, "DELETE", f"/api/queues/%2F/{name}/contents")[0] == 204
    assert ch.queue_declare(name, passive=True).method.message_count == 0
    assert api(mb, "DELETE", f"/api/queues/%2F/{name}")[0] == 204
    with pytest.raises(pika.exceptions.ChannelClosedByBroker):
        conn.channel().queue_declare(name, passive=True)
    assert api(mb, "GET", f"/api/queues/%2F/{name}")[:2] == (
        404,
        {"error": "Object Not Found", "reason": "Not Found"},
    )
    bad = api(mb, "POST", "/api/queues/%2F/nope/get", {"ackmode": "whatever"})
    assert bad[0] in (400, 404), bad
    conn.close()


def test_list_parameters(mb):
    names = [f"page-{i:02d}" for i in range(7)]
    for n in names:
        api(mb, "PUT", f"/api/queues/%2F/{n}", {})
    conn = mb.connect()
    ch = conn.channel()
    ch.confirm_delivery()
    for i, n in enumerate(names):
        for _ in range(i):
            ch.basic_publish("", n, b"x")
    conn.close()
    status, page, _ = api(mb, "GET", "/api/queues/%2F?page=2&page_size=3&name=page-&sort=name")
    assert status == 200
    assert {k: page[k] for k in ("page", "page_size", "page_count", "item_count", "filtered_count")} == {
        "page": 2,
        "page_size": 3,
        "page_count": 3,
        "item_count": 3,
        "filtered_count": 7,
    }
    assert [i["name"] for i in page["items"]] == names[3:6]
    got = api(mb, "GET", "/api/queues?sort=messages&sort_reverse=true&columns=name,messages&name=page-")[1]
    assert got[:2] == [{"name": "page-06", "messages": 6}, {"name": "page-05", "messages": 5}]
    got = api(mb, "GET", "/api/queues?use_regex=true&name=%5Epage-0%5B12%5D%24&columns=name")[1]
    assert got == [{"name": "page-01"}, {"name": "page-02"}]
    assert api(mb, "GET", "/api/queues?page=9&page_size=3")[0] == 400
    assert api(mb, "GET", "/api/queues?page_size=501&page=1")[0] == 400


def test_exchanges_publish_and_bindings(mb):
    x, qn = uid("x"), uid("q")
    assert api(mb, "PUT", f"/api/exchanges/%2F/{x}", {"type": "topic", "durable": True})[0] == 201
    assert api(mb, "PUT", f"/api/exchanges/%2F/{x}", {"durable": True})[0] == 400
    assert api(mb, "GET", f"/api/exchanges/%2F/{x}")[1] == {
        "name": x,
        "vhost": "/",
        "type": "topic",
        "durable": True,
        "auto_delete": False,
        "internal": False,
        "arguments": {},
        "user_who_performed_action": "",
    }
    assert "amq.topic" in [e["name"] for e in api(mb, "GET", "/api/exchanges/%2F")[1]]
    api(mb, "PUT", f"/api/queues/%2F/{qn}", {})
    status, _, headers = api(mb, "POST", f"/api/bindings/%2F/e/{x}/q/{qn}", {"routing_key": "a.*"})
    assert status == 201
    assert headers["Location"] == f"/api/bindings/%2F/e/{x}/q/{qn}/a.*"
    listed = api(mb, "GET", f"/api/bindings/%2F/e/{x}/q/{qn}")[1]
    assert listed == [
        {
            "source": x,
            "vhost": "/",
            "destination": qn,
            "destination_type": "queue",
            "routing_key": "a.*",
            "arguments": {},
            "properties_key": "a.*",
        }
    ]
    status, body, _ = api(
        mb,
        "POST",
        f"/api/exchanges/%2F/{x}/publish",
        {"routing_key": "a.b", "payload": "hello", "payload_encoding": "string", "properties": {"delivery_mode": 2, "headers": {"h": 1}}},
    )
    assert (status, body) == (200, {"routed": True})
    assert api(mb, "POST", f"/api/exchanges/%2F/{x}/publish", {"routing_key": "zz", "payload": ""})[1] == {"routed": False}
    # The default exchange is amq.default in paths.
    assert api(mb, "POST", "/api/exchanges/%2F/amq.default/publish", {"routing_key": qn, "payload": "aGk=", "payload_encoding": "base64"})[1] == {"routed": True}
    conn = mb.connect()
    ch = conn.channel()
    first = ch.basic_get(qn, auto_ack=True)
    assert (first[2], first[1].delivery_mode, first[1].headers) == (b"hello", 2, {"h": 1})
    assert ch.basic_get(qn, auto_ack=True)[2] == b"hi"
    conn.close()
    qb = api(mb, "GET", f"/api/queues/%2F/{qn}/bindings")[1]
    assert [(b["source"], b["routing_key"]) for b in qb] == [("", qn), (x, "a.*")]
    assert api(mb, "DELETE", f"/api/bindings/%2F/e/{x}/q/{qn}/a.%2A")[0] == 204
    assert api(mb, "GET", f"/api/bindings/%2F/e/{x}/q/{qn}")[1] == []
    assert api(mb, "DELETE", f"/api/exchanges/%2F/{x}")[0] == 204
    assert api(mb, "GET", f"/api/exchanges/%2F/{x}")[0] == 404


def test_users_and_permissions_take_effect_for_amqp(mb):
    name = uid("u")
    assert api(mb, "PUT", f"/api/users/{name}", {"password": "pw1", "tags": ""})[0] == 201
    user = api(mb, "GET", f"/api/users/{name}")[1]
    assert (user["name"], user["tags"], user["hashing_algorithm"]) == (name, [], "argon2id")
    assert user["password_hash"].startswith("$argon2id$")
    # No permissions yet: the vhost is refused.
    with pytest.raises(pika.exceptions.ProbableAccessDeniedError):
        mb.connect(user=name, password="pw1")
    body = {"configure": "", "write": ".*", "read": ".*"}
    assert api(mb, "PUT", f"/api/permissions/%2F/{name}", body)[0] == 201
    assert api(mb, "GET", f"/api/permissions/%2F/{name}")[1] == {"user": name, "vhost": "/", **body}
    conn = mb.connect(user=name, password="pw1")
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        conn.channel().queue_declare("not-allowed")
    assert e.value.reply_code == 403
    conn.close()
    # A new password works at once; the old one no longer does.
    assert api(mb, "PUT", f"/api/users/{name}", {"password": "pw2"})[0] == 204
    mb.connect(user=name, password="pw2").close()
    with pytest.raises(pika.exceptions.ProbableAuthenticationError):
        mb.connect(user=name, password="pw1")
    assert api(mb, "DELETE", f"/api/permissions/%2F/{name}")[0] == 204
    assert api(mb, "DELETE", f"/api/permissions/%2F/{name}")[0] == 404
    assert api(mb, "DELETE", f"/api/users/{name}")[0] == 204
    assert api(mb, "GET", f"/api/users/{name}")[0] == 404
    rows = api(mb, "GET", "/api/permissions")[1]
    assert {"user": "guest", "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"} in rows
    assert api(mb, "GET", "/api/topic-permissions")[1] == []
    assert api(mb, "PUT", "/api/permissions/nope/guest", body)[0] == 400


def test_write_routes_follow_the_callers_permissions(mb):
    # manager may use iot only: declaring on / is refused.
    status, body, _ = api(mb, "PUT", "/api/queues/%2F/mq", {}, user="manager", password="manager")
    assert (status, body["error"]) == (401, "not_authorised")
    assert api(mb, "PUT", "/api/queues/iot/mq", {}, user="manager", password="manager")[0] == 201
    assert [x["name"] for x in api(mb, "GET", "/api/queues", user="manager", password="manager")[1]] == ["mq"]


def test_overview_nodes_and_alarms(mb):
    conn = mb.connect()
    conn.channel().queue_declare("ov")
    status, body, _ = api(mb, "GET", "/api/overview")
    assert status == 200
    assert body["object_totals"]["queues"] >= 1
    assert body["object_totals"]["connections"] >= 1
    assert set(body["queue_totals"]) == {"messages", "messages_ready", "messages_unacknowledged"}
    conn.close()
    node = api(mb, "GET", "/api/nodes")[1][0]
    assert node["running"] is True and node["mem_alarm"] is False and node["fd_used"] > 0
    assert api(mb, "GET", f"/api/nodes/{q(node['name'])}")[1]["name"] == node["name"]
    assert api(mb, "GET", "/api/health/checks/alarms")[:2] == (200, {"status": "ok"})
    assert api(mb, "GET", "/api/health/checks/local-alarms")[:2] == (200, {"status": "ok"})
    assert api(mb, "GET", "/api/vhosts/iot")[1]["name"] == "iot"
    assert api(mb, "GET", "/api/vhosts/nope")[0] == 404


def test_connections_of_every_protocol_listed_and_closed(mb):
    import time

    from mqtt_support import V5, Client as MqttClient
    from stomp_support import Client as StompClient

    amqp = mb.connect()
    amqp.channel()
    amqp.channel()
    mqtt = MqttClient(mb, client_id="dev-42", version=V5)
    assert mqtt.connect().reason == 0
    stomp = StompClient(mb)
    stomp.connected()
    try:
        conns = api(mb, "GET", "/api/connections")[1]
        by_proto = {c["protocol"]: c for c in conns}
        assert set(by_proto) == {"AMQP 0-9-1", "MQTT 5", "STOMP 1.2"}, conns
        a = by_proto["AMQP 0-9-1"]
        assert (a["user"], a["vhost"], a["channels"], a["ssl"], a["peer_host"]) == (
            "guest",
            "/",
            2,
            False,
            "127.0.0.1",
        )
        assert a["client_properties"]["product"].startswith("Pika")
        m = by_proto["MQTT 5"]
        assert (m["client_id"], m["user"], m["state"]) == ("dev-42", "guest", "running")
        assert api(mb, "GET", f"/api/connections/{q(m['name'])}")[1]["client_id"] == "dev-42"
        # A management user sees only its own connections.
        assert api(mb, "GET", "/api/connections", user="manager", password="manager")[1] == []
        assert api(mb, "GET", "/api/vhosts/%2F/connections")[1] != []
        # Closing: MQTT 5 gets DISCONNECT 0x98, AMQP 320 with the reason,
        # STOMP an ERROR.
        status, _, _ = api(mb, "DELETE", f"/api/connections/{q(m['name'])}", headers={"X-Reason": "maintenance"})
        assert status == 204
        gone = mqtt.wait_disconnected()
        assert (gone.by_server, gone.reason) == (True, 0x98), gone
        api(mb, "DELETE", f"/api/connections/{q(a['name'])}", headers={"X-Reason": "maintenance"})
        deadline = time.monotonic() + 5
        while amqp.is_open and time.monotonic() < deadline:
            try:
                amqp.process_data_events(0.1)
            except pika.exceptions.ConnectionClosedByBroker as e:
                assert (e.reply_code, e.reply_text) == (320, "CONNECTION_FORCED - maintenance")
                break
        else:
            pytest.fail("the AMQP connection was not closed")
        s = by_proto["STOMP 1.2"]
        api(mb, "DELETE", f"/api/connections/{q(s['name'])}")
        stomp.wait_disconnected()
        err = stomp.listener.of("ERROR")
        assert [e.headers["message"] for e in err] == ["connection closed by an operator"]
        assert api(mb, "GET", f"/api/connections/{q(m['name'])}")[0] == 404
    finally:
        mqtt.close()
        stomp.close()


def test_mqtt_clients_connected_and_parked(mb):
    from mqtt_support import V5, Client as MqttClient

    parked = MqttClient(mb, client_id="parked-1", version=V5, clean=False, session_expiry=600)
    assert parked.connect().reason == 0
    assert parked.subscribe("plant/+/temp", "alerts/#", qos=1) == [1, 1]
    parked.disconnect()
    online = MqttClient(mb, client_id="online-1", version=V5)
    assert online.connect().reason == 0
    assert online.subscribe("cmd/online-1", qos=1) == [1]
    pub = MqttClient(mb, version=V5)
    pub.connect()
    pub.publish("plant/7/temp", b"21", qos=1)
    pub.publish("alerts/fire", b"!", qos=1)
    pub.close()
    try:
        clients = {c["client_id"]: c for c in api(mb, "GET", "/api/mqtt/clients")[1]}
        p = clients["parked-1"]
        assert (p["connected"], p["subscriptions"], p["queued_messages"]) == (
            False,
            ["alerts/#", "plant/+/temp"],
            2,
        )
        assert 590 <= p["session_expires_in"] <= 600
        o = clients["online-1"]
        assert (o["connected"], o["subscriptions"], o["user"], o["protocol"]) == (
            True,
            ["cmd/online-1"],
            "guest",
            "MQTT 5",
        )
        assert api(mb, "GET", "/api/mqtt/clients", user="manager", password="manager")[0] == 401
    finally:
        online.close()


@pytest.mark.deadline(90)
def test_queue_message_rates_come_from_counters(mb):
    """message_stats: exact totals now, rates from the 5 s samples."""
    import time

    name = uid("rate")
    api(mb, "PUT", f"/api/queues/%2F/{name}", {})
    conn = mb.connect()
    ch = conn.channel()
    ch.confirm_delivery()
    for _ in range(50):
        ch.basic_publish("", name, b"x")
    for _ in range(20):
        assert ch.basic_get(name, auto_ack=True)[2] == b"x"

    def stats():
        return api(mb, "GET", f"/api/queues/%2F/{name}")[1]["message_stats"]

    s = stats()
    assert (s["publish"], s["deliver_get"]) == (50, 20)
    deadline = time.monotonic() + 15
    while stats()["publish_details"]["rate"] == 0:
        assert time.monotonic() < deadline, "no publish rate within 15 s"
        time.sleep(0.5)
    s = stats()
    # 50 messages within one or two 5 s samples.
    assert 0 < s["publish_details"]["rate"] <= 10.0, s
    assert 0 < s["deliver_get_details"]["rate"] <= 4.0, s
    overview = api(mb, "GET", "/api/overview")[1]["message_stats"]
    assert overview["publish"] >= 50 and "rate" in overview["publish_details"]
    # Quiet again: back to 0 at a later sample.
    deadline = time.monotonic() + 15
    while stats()["publish_details"]["rate"] != 0:
        assert time.monotonic() < deadline, "the publish rate did not fall to 0"
        time.sleep(0.5)
    conn.close()


def test_metrics_keep_series_for_the_deepest_queues_only(make_broker):
    import urllib.request

    b = make_broker(extra_config="[admin]\nmetrics_max_queues = 2\n")
    conn = b.connect()
    ch = conn.channel()
    ch.confirm_delivery()
    for name, depth in (("m-a", 0), ("m-b", 1), ("m-c", 5), ("m-d", 3)):
        ch.queue_declare(name)
        for _ in range(depth):
            ch.basic_publish("", name, b"x")
    conn.close()
    with urllib.request.urlopen(f"http://127.0.0.1:{b.admin_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    series = [line for line in text.splitlines() if line.startswith("junction_queue_messages{")]
    assert series == [
        'junction_queue_messages{vhost="/",queue="m-c"} 5',
        'junction_queue_messages{vhost="/",queue="m-d"} 3',
    ]
    assert "junction_metrics_queues_omitted 2" in text.splitlines()


def test_channels_and_consumers(mb):
    from stomp_support import Client as StompClient

    name = uid("cons")
    conn = mb.connect()
    ch1 = conn.channel()
    ch2 = conn.channel()
    ch1.queue_declare(name)
    ch2.basic_qos(prefetch_count=5)
    tag = ch2.basic_consume(name, lambda *a: None, consumer_tag="my-consumer")
    stomp = StompClient(mb)
    stomp.connected()
    stomp.subscribe(f"/queue/{name}", id="stomp-sub", ack="client")
    try:
        chans = api(mb, "GET", "/api/channels")[1]
        numbers = sorted(c["number"] for c in chans if c["user"] == "guest")
        assert numbers == [1, 2], chans
        assert all(c["name"].endswith(f"({c['number']})") for c in chans)
        consumers = {c["consumer_tag"]: c for c in api(mb, "GET", "/api/consumers")[1] if c["queue"]["name"] == name}
        assert set(consumers) == {tag, "stomp-sub"}
        mine = consumers[tag]
        assert (mine["ack_required"], mine["prefetch_count"], mine["queue"]["vhost"]) == (True, 5, "/")
        assert mine["channel_details"]["user"] == "guest"
        assert consumers["stomp-sub"]["ack_required"] is True
        assert api(mb, "GET", f"/api/queues/%2F/{name}")[1]["consumers"] == 2
        # A management user sees no one else's.
        assert api(mb, "GET", "/api/consumers", user="manager", password="manager")[1] == []
    finally:
        stomp.close()
        conn.close()


def test_a_policy_ttl_reaches_messages_already_queued(make_broker):
    """A message-ttl policy set on a queue with a backlog expires that
    backlog (counted from when the policy took effect) into its dead-letter
    queue; raising the TTL later lengthens no queued message's life."""
    import time

    b = make_broker()
    conn = b.connect()
    ch = conn.channel()
    ch.confirm_delivery()
    ch.queue_declare("ttl-backlog", durable=True)
    ch.queue_declare("ttl-dead", durable=True)
    for i in range(4):
        ch.basic_publish("", "ttl-backlog", f"old{i}".encode(), pika.BasicProperties(delivery_mode=2))
    policy = {
        "pattern": "^ttl-backlog$",
        "definition": {"message-ttl": 300, "dead-letter-exchange": "", "dead-letter-routing-key": "ttl-dead"},
        "apply-to": "queues",
    }
    assert api(b, "PUT", "/api/policies/%2F/expire-backlog", policy)[0] == 201
    # Not at once: 300 ms from now.
    assert ch.queue_declare("ttl-backlog", passive=True).method.message_count == 4
    deadline = time.monotonic() + 10
    while ch.queue_declare("ttl-dead", passive=True).method.message_count < 4:
        assert time.monotonic() < deadline, "the backlog did not expire"
        time.sleep(0.05)
    assert ch.queue_declare("ttl-backlog", passive=True).method.message_count == 0
    got = [ch.basic_get("ttl-dead", auto_ack=True) for _ in range(4)]
    assert [body for _, _, body in got] == [b"old0", b"old1", b"old2", b"old3"]
    assert got[0][1].headers["x-death"][0]["reason"] == "expired"
    # A longer TTL does not lengthen what is queued: a message published
    # under the 300 ms policy still expires.
    ch.basic_publish("", "ttl-backlog", b"new", pika.BasicProperties(delivery_mode=2))
    policy["definition"]["message-ttl"] = 600_000
    assert api(b, "PUT", "/api/policies/%2F/expire-backlog", policy)[0] == 204
    deadline = time.monotonic() + 10
    while ch.queue_declare("ttl-dead", passive=True).method.message_count < 1:
        assert time.monotonic() < deadline, "the message published under 300 ms did not expire"
        time.sleep(0.05)
    ch.basic_publish("", "ttl-backlog", b"kept", pika.BasicProperties(delivery_mode=2))
    time.sleep(0.5)
    assert ch.queue_declare("ttl-backlog", passive=True).method.message_count == 1
    conn.close()


def test_policies_apply_to_queues_without_redeclaring(make_broker):
    b = make_broker()
    conn = b.connect()
    ch = conn.channel()
    ch.confirm_delivery()
    ch.queue_declare("pol-q", durable=True)
    ch.queue_declare("pol-own", arguments={"x-max-length": 4})
    for i in range(5):
        ch.basic_publish("", "pol-q", f"m{i}".encode())
    policy = {"pattern": "^pol-", "definition": {"max-length": 2}, "apply-to": "queues", "priority": 0}
    assert api(b, "PUT", "/api/policies/%2F/short", policy)[0] == 201
    # Trimmed at once: drop-head keeps the newest two.
    q = api(b, "GET", "/api/queues/%2F/pol-q")[1]
    assert (q["messages"], q["policy"], q["effective_policy_definition"]) == (2, "short", {"max-length": 2})
    assert [m["payload"] for m in api(b, "POST", "/api/queues/%2F/pol-q/get", {"count": 5, "ackmode": "peek"})[1]] == ["m3", "m4"]
    # A queue made later takes it too; a queue's own argument wins.
    ch.queue_declare("pol-new")
    for i in range(5):
        ch.basic_publish("", "pol-new", b"x")
        ch.basic_publish("", "pol-own", b"x")
    assert ch.queue_declare("pol-new", passive=True).method.message_count == 2
    assert ch.queue_declare("pol-own", passive=True).method.message_count == 4
    listed = api(b, "GET", "/api/policies")[1]
    assert listed == [{"vhost": "/", "name": "short", **policy}]
    # Bad policies are refused, naming the problem.
    bad = api(b, "PUT", "/api/policies/%2F/bad", {"pattern": ".*", "definition": {"max-priority": 5}})
    assert bad[0] == 400 and "max-priority" in bad[1]["reason"]
    bad = api(b, "PUT", "/api/policies/%2F/bad", {"pattern": "(", "definition": {}})
    assert bad[0] == 400 and "invalid pattern" in bad[1]["reason"]
    conn.close()
    # Kept across a restart.
    b.restart()
    assert api(b, "GET", "/api/policies/%2F/short")[1]["definition"] == {"max-length": 2}
    conn = b.connect()
    ch = conn.channel()
    ch.confirm_delivery()
    for i in range(3):
        ch.basic_publish("", "pol-q", b"y")
    assert ch.queue_declare("pol-q", passive=True).method.message_count == 2
    # Deleted: the queues go back to their own arguments.
    assert api(b, "DELETE", "/api/policies/%2F/short")[0] == 204
    for i in range(3):
        ch.basic_publish("", "pol-q", b"z")
    assert ch.queue_declare("pol-q", passive=True).method.message_count == 5
    assert api(b, "GET", "/api/queues/%2F/pol-q")[1]["policy"] is None
    conn.close()


def test_exchange_to_exchange_bindings_and_permission_lists(mb):
    x1, x2, qn = uid("x"), uid("x"), uid("q")
    api(mb, "PUT", f"/api/exchanges/%2F/{x1}", {"type": "topic"})
    api(mb, "PUT", f"/api/exchanges/%2F/{x2}", {"type": "fanout"})
    api(mb, "PUT", f"/api/queues/%2F/{qn}", {})
    status, _, headers = api(mb, "POST", f"/api/bindings/%2F/e/{x1}/e/{x2}", {"routing_key": "a.#"})
    assert (status, headers["Location"]) == (201, f"/api/bindings/%2F/e/{x1}/e/{x2}/a.%23")
    assert api(mb, "POST", f"/api/bindings/%2F/e/{x2}/q/{qn}", {})[0] == 201
    assert api(mb, "POST", f"/api/exchanges/%2F/{x1}/publish", {"routing_key": "a.b", "payload": "via e2e"})[1] == {"routed": True}
    got = api(mb, "POST", f"/api/queues/%2F/{qn}/get", {"ackmode": "ack_requeue_false"})[1]
    assert [m["payload"] for m in got] == ["via e2e"]
    src = api(mb, "GET", f"/api/exchanges/%2F/{x1}/bindings/source")[1]
    assert [(b["destination"], b["destination_type"], b["routing_key"]) for b in src] == [(x2, "exchange", "a.#")]
    dst = api(mb, "GET", f"/api/exchanges/%2F/{x2}/bindings/destination")[1]
    assert [b["source"] for b in dst] == [x1]
    assert api(mb, "GET", f"/api/bindings/%2F/e/{x1}/x/{x2}")[0] == 404
    assert api(mb, "DELETE", f"/api/bindings/%2F/e/{x1}/e/{x2}/a.%23")[0] == 204
    assert api(mb, "POST", f"/api/exchanges/%2F/{x1}/publish", {"routing_key": "a.b", "payload": "x"})[1] == {"routed": False}
    # Permission lists by vhost and by user.
    guest_row = {"user": "guest", "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"}
    assert guest_row in api(mb, "GET", "/api/vhosts/%2F/permissions")[1]
    assert api(mb, "GET", "/api/users/guest/permissions")[1] == [guest_row]
    assert api(mb, "GET", "/api/users/nobody/permissions")[0] == 404
    # Topic permissions written through the API, in force for AMQP.
    tp = {"exchange": "amq.topic", "write": "^ok\\.", "read": ".*"}
    assert api(mb, "PUT", "/api/topic-permissions/%2F/admin2", tp)[0] == 201
    assert api(mb, "PUT", "/api/topic-permissions/%2F/admin2", tp)[0] == 204
    row = {"user": "admin2", "vhost": "/", **tp}
    assert api(mb, "GET", "/api/topic-permissions/%2F/admin2")[1] == [row]
    assert api(mb, "GET", "/api/users/admin2/topic-permissions")[1] == [row]
    assert row in api(mb, "GET", "/api/vhosts/%2F/topic-permissions")[1]
    conn = mb.connect(user="admin2", password="admin2")
    ch = conn.channel()
    ch.confirm_delivery()
    ch.basic_publish("amq.topic", "ok.1", b"allowed")
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.basic_publish("amq.topic", "no.1", b"denied")
    assert e.value.reply_code == 403
    conn.close()
    assert api(mb, "DELETE", "/api/topic-permissions/%2F/admin2")[0] == 204
    assert api(mb, "DELETE", "/api/topic-permissions/%2F/admin2")[0] == 404
    # A configured vhost exists already (test_management_vhosts.py has the rest).
    assert api(mb, "PUT", "/api/vhosts/iot")[0] == 204


def test_metrics_behind_credentials_when_configured(make_broker):
    import base64
    import urllib.error
    import urllib.request

    b = make_broker(
        users=[("mon", "mon", ["/"]), ("mgr", "mgr", ["/"])],
        extra_config="[admin]\nmetrics_need_credentials = true\n",
    )
    api(b, "PUT", "/api/users/mon", {"tags": "monitoring"})
    api(b, "PUT", "/api/users/mgr", {"tags": "management"})

    def metrics(user=None):
        h = {}
        if user:
            h["Authorization"] = "Basic " + base64.b64encode(f"{user}:{user}".encode()).decode()
        req = urllib.request.Request(f"http://127.0.0.1:{b.admin_port}/metrics", headers=h)
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    assert metrics()[0] == 401
    assert metrics("mgr")[0] == 401
    status, text = metrics("mon")
    assert status == 200 and "junction_messages_published_total" in text
    assert api(b, "GET", "/api/health", user=None)[:2] == (200, {"status": "ok"})


def test_connection_bytes_queue_memory_and_disk_free(mb):
    import time

    name = uid("bytes")
    conn = mb.connect()
    ch = conn.channel()
    ch.queue_declare(name)
    ch.confirm_delivery()
    for _ in range(10):
        ch.basic_publish("", name, b"x" * 1000)
    c = [x for x in api(mb, "GET", "/api/connections")[1] if x["protocol"] == "AMQP 0-9-1"][0]
    assert c["recv_oct"] > 10_000 and c["send_oct"] > 0, c
    q = api(mb, "GET", f"/api/queues/%2F/{name}")[1]
    assert q["memory"] >= 10_000, q
    node = api(mb, "GET", "/api/nodes")[1][0]
    assert node["disk_free"] > 0
    # The byte rates come from the 5 s samples.
    deadline = time.monotonic() + 15
    while True:
        c = [x for x in api(mb, "GET", "/api/connections")[1] if x["protocol"] == "AMQP 0-9-1"][0]
        if c["recv_oct_details"]["rate"] > 0:
            break
        assert time.monotonic() < deadline, c
        time.sleep(0.5)
    conn.close()
