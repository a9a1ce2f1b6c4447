"""Vhosts made and deleted at run time through the management API
(`PUT`/`DELETE /api/vhosts/{name}`), as Terraform's RabbitMQ provider and
rabbitmqadmin do: a new vhost serves pika and stomp.py at once, survives
kill -9 with its description, tags and confirmed messages, and deleting it
closes its connections and takes its queues, policies and permissions with
it. The configured vhosts cannot be deleted.
"""

import time

import pika
import pytest

from admin_support import api
from stomp_support import stomp_clients, uid  # noqa: F401  (fixture)

pytestmark = pytest.mark.deadline(90)


def wait_for(cond, what, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_vhost_made_at_run_time_serves_and_survives_kill9(make_broker, stomp_clients):
    b = make_broker(users=[("plain", "plain", ["/"])])
    body = {"description": "plant floor", "tags": "iot,production", "default_queue_type": "classic"}
    assert api(b, "PUT", "/api/vhosts/plant")[0] == 201
    assert api(b, "PUT", "/api/vhosts/plant", body)[0] == 204
    status, v, _ = api(b, "GET", "/api/vhosts/plant")
    assert status == 200
    assert (v["name"], v["description"], v["tags"], v["default_queue_type"]) == (
        "plant",
        "plant floor",
        ["iot", "production"],
        "classic",
    )
    assert [x["name"] for x in api(b, "GET", "/api/vhosts")[1]] == ["/", "plant"]
    # Only administrators make vhosts.
    status, err, _ = api(b, "PUT", "/api/vhosts/other", user="plain", password="plain")
    assert (status, err["error"]) == (401, "not_authorised")
    # Nobody may use it before a permission names it.
    with pytest.raises(pika.exceptions.ProbableAccessDeniedError):
        b.connect(vhost="plant")
    assert api(b, "PUT", "/api/permissions/plant/guest", {"configure": ".*", "write": ".*", "read": ".*"})[0] == 201

    conn = b.connect(vhost="plant")
    ch = conn.channel()
    ch.queue_declare("readings", durable=True)
    ch.confirm_delivery()
    for i in range(5):
        ch.basic_publish("", "readings", f"r{i}".encode(), pika.BasicProperties(delivery_mode=2))
    conn.close()
    # STOMP names the vhost in `host`.
    s = stomp_clients.connect(b, vhost="plant")
    s.send("/amq/queue/readings", b"from stomp", headers={"persistent": "true"}, receipt=True)
    s.disconnect()
    assert api(b, "GET", "/api/queues/plant/readings")[1]["messages"] == 6
    # The same queue name in "/" is another queue.
    assert api(b, "GET", "/api/queues/%2F/readings")[0] == 404

    b.kill9()
    b.start()
    v = api(b, "GET", "/api/vhosts/plant")[1]
    assert (v["description"], v["tags"]) == ("plant floor", ["iot", "production"])
    conn = b.connect(vhost="plant")
    ch = conn.channel()
    got = []
    for _ in range(6):
        _, _, body_ = ch.basic_get("readings", auto_ack=True)
        got.append(body_)
    assert got == [b"r0", b"r1", b"r2", b"r3", b"r4", b"from stomp"]
    conn.close()


def test_deleting_a_vhost_closes_its_connections_and_takes_everything(make_broker, stomp_clients):
    b = make_broker(vhosts=["/"], users=[("app", "app", ["/"])])
    assert api(b, "PUT", "/api/vhosts/tenant", {"description": "to go"})[0] == 201
    for user in ("guest", "app"):
        perms = {"configure": ".*", "write": ".*", "read": ".*"}
        assert api(b, "PUT", f"/api/permissions/tenant/{user}", perms)[0] == 201
    tp = {"exchange": "amq.topic", "write": ".*", "read": ".*"}
    assert api(b, "PUT", "/api/topic-permissions/tenant/app", tp)[0] == 201
    policy = {"pattern": ".*", "apply-to": "queues", "definition": {"max-length": 100}}
    assert api(b, "PUT", "/api/policies/tenant/cap", policy)[0] == 201
    assert api(b, "PUT", "/api/exchanges/tenant/events", {"type": "topic", "durable": True})[0] == 201
    conn = b.connect(vhost="tenant", user="app", password="app")
    ch = conn.channel()
    ch.queue_declare("jobs", durable=True)
    ch.queue_bind("jobs", "events", "job.#")
    ch.confirm_delivery()
    ch.basic_publish("events", "job.1", b"work", pika.BasicProperties(delivery_mode=2))
    # A queue of the same name in "/" must not be touched.
    keep = b.connect()
    keep.channel().queue_declare("jobs", durable=True)
    s = stomp_clients.connect(b, vhost="tenant")
    wait_for(lambda: len([c for c in api(b, "GET", "/api/vhosts/tenant/connections")[1]]) == 2, "2 connections")

    # The configured vhosts stay; an unknown one is 404.
    status, err, _ = api(b, "DELETE", "/api/vhosts/%2F")
    assert status == 400 and "[broker] vhosts" in err["reason"], err
    assert api(b, "DELETE", "/api/vhosts/nowhere")[0] == 404
    assert api(b, "DELETE", "/api/vhosts/tenant", user="app", password="app")[0] == 401

    assert api(b, "DELETE", "/api/vhosts/tenant")[0] == 204
    # Its connections are closed with the reason (AMQP 320 CONNECTION_FORCED).
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as e:
        for _ in range(50):
            conn.process_data_events(time_limit=0.1)
    assert e.value.reply_code == 320 and "tenant" in e.value.reply_text, e.value
    wait_for(lambda: not s.is_connected, "the STOMP connection closed")
    assert api(b, "GET", "/api/vhosts/tenant")[0] == 404
    assert api(b, "GET", "/api/queues/tenant")[0] == 404
    assert [x["name"] for x in api(b, "GET", "/api/vhosts")[1]] == ["/"]
    assert [p for p in api(b, "GET", "/api/permissions")[1] if p["vhost"] == "tenant"] == []
    assert [p for p in api(b, "GET", "/api/topic-permissions")[1] if p["vhost"] == "tenant"] == []
    assert [p for p in api(b, "GET", "/api/policies")[1] if p["vhost"] == "tenant"] == []
    assert api(b, "GET", "/api/queues/%2F/jobs")[0] == 200
    keep.close()

    # Made again, it is empty: nothing of the old one comes back, before
    # or after a restart.
    b.kill9()
    b.start()
    assert [x["name"] for x in api(b, "GET", "/api/vhosts")[1]] == ["/"]
    assert api(b, "PUT", "/api/vhosts/tenant")[0] == 201
    assert api(b, "GET", "/api/queues/tenant")[1] == []
    names = [x["name"] for x in api(b, "GET", "/api/exchanges/tenant")[1]]
    assert "events" not in names and "amq.topic" in names
    assert api(b, "GET", "/api/vhosts/tenant")[1]["description"] == ""
    with pytest.raises(pika.exceptions.ProbableAccessDeniedError):
        b.connect(vhost="tenant", user="app", password="app")


def test_bad_vhost_names_and_the_limit(make_broker):
    b = make_broker(broker_options=["max_vhosts = 3"])
    status, err, _ = api(b, "PUT", "/api/vhosts/" + "v" * 256)
    assert status == 400 and "255" in err["reason"], err
    assert api(b, "PUT", "/api/vhosts/a")[0] == 201
    assert api(b, "PUT", "/api/vhosts/b")[0] == 201
    status, err, _ = api(b, "PUT", "/api/vhosts/c")
    assert status == 400 and "vhost limit (3)" in err["reason"], err
    # Updating one that exists is not a new one.
    assert api(b, "PUT", "/api/vhosts/b", {"description": "x"})[0] == 204
    status, err, _ = api(b, "PUT", "/api/vhosts/a", b"{not json")
    assert (status, err["error"]) == (400, "bad_request"), err
    assert api(b, "DELETE", "/api/vhosts/a")[0] == 204
    assert api(b, "PUT", "/api/vhosts/c")[0] == 201


def test_definitions_make_their_vhosts(make_broker):
    b = make_broker()
    defs = {
        "vhosts": [
            {"name": "/"},
            # RabbitMQ 3.x's export: metadata beside the top-level fields.
            {"name": "imported", "limits": [], "metadata": {"description": "from rabbit", "tags": ["a"]}},
        ],
        "queues": [{"name": "q1", "vhost": "imported", "durable": True, "auto_delete": False, "arguments": {}}],
        "permissions": [{"user": "guest", "vhost": "imported", "configure": ".*", "write": ".*", "read": ".*"}],
    }
    assert api(b, "POST", "/api/definitions", defs)[0] in (200, 201, 204)
    v = api(b, "GET", "/api/vhosts/imported")[1]
    assert (v["description"], v["tags"]) == ("from rabbit", ["a"])
    exported = api(b, "GET", "/api/definitions")[1]
    mine = [x for x in exported["vhosts"] if x["name"] == "imported"][0]
    assert mine["metadata"]["description"] == "from rabbit" and mine["tags"] == ["a"]
    conn = b.connect(vhost="imported")
    conn.channel().queue_declare("q1", passive=True)
    conn.close()


def test_one_vhosts_definitions_copy_into_another(make_broker):
    """`GET /api/definitions/{vhost}` exports one vhost's topology without
    `vhost` fields; `POST` of it into another vhost rebuilds it there, and
    pika sees it route."""
    b = make_broker()
    for v in ("src", "dst"):
        assert api(b, "PUT", f"/api/vhosts/{v}")[0] == 201
        assert api(b, "PUT", f"/api/permissions/{v}/guest", {"configure": ".*", "write": ".*", "read": ".*"})[0] == 201
    assert api(b, "PUT", "/api/exchanges/src/orders", {"type": "topic", "durable": True})[0] == 201
    assert api(b, "PUT", "/api/queues/src/eu", {"durable": True, "arguments": {"x-max-length": 7}})[0] == 201
    assert api(b, "POST", "/api/bindings/src/e/orders/q/eu", {"routing_key": "eu.#"})[0] == 201
    policy = {"pattern": "^eu$", "apply-to": "queues", "priority": 0, "definition": {"message-ttl": 60000}}
    assert api(b, "PUT", "/api/policies/src/eu-ttl", policy)[0] == 201
    # Something in "/" that must not leak into the export.
    assert api(b, "PUT", "/api/queues/%2F/elsewhere", {"durable": True})[0] == 201

    status, defs, _ = api(b, "GET", "/api/definitions/src")
    assert status == 200
    assert sorted(k for k in defs if isinstance(defs[k], list)) == [
        "bindings",
        "exchanges",
        "parameters",
        "policies",
        "queues",
    ]
    assert defs["queues"] == [{"name": "eu", "durable": True, "auto_delete": False, "arguments": {"x-max-length": 7}}]
    assert [x["name"] for x in defs["exchanges"]] == ["orders"]
    assert [(x["source"], x["destination"], x["routing_key"]) for x in defs["bindings"]] == [("orders", "eu", "eu.#")]
    assert defs["policies"] == [{"name": "eu-ttl", **policy}]
    assert api(b, "GET", "/api/definitions/nowhere")[0] == 404

    assert api(b, "POST", "/api/definitions/dst", defs)[0] == 204
    q = api(b, "GET", "/api/queues/dst/eu")[1]
    assert (q["arguments"], q["policy"]) == ({"x-max-length": 7}, "eu-ttl")
    conn = b.connect(vhost="dst")
    ch = conn.channel()
    ch.confirm_delivery()
    ch.basic_publish("orders", "eu.fr", b"bonjour")
    _, _, body = ch.basic_get("eu", auto_ack=True)
    assert body == b"bonjour"
    conn.close()
    assert api(b, "GET", "/api/queues/dst/elsewhere")[0] == 404
