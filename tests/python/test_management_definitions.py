"""Definitions (docs/management.md): export → wipe → import gives the same
topology and users; a definitions file exported from a real RabbitMQ 3.10
node (tests/python/fixtures/) imports, and its SHA-256-hashed user logs in
over AMQP; `junction --definitions FILE` loads one at start; and Debian's
`rabbitmqadmin` drives the API: list, declare, publish, get, purge, export
and re-import.
"""

import json
import shutil
import subprocess
from pathlib import Path

import pika
import pytest

from admin_support import api

pytestmark = pytest.mark.deadline(90)

FIXTURE = Path(__file__).parent / "fixtures" / "rabbitmq-3.10-definitions.json"


def topology(defs):
    """What must survive a round trip, order aside."""
    key = lambda rows, *ks: sorted(tuple(json.dumps(r.get(k), sort_keys=True) for k in ks) for r in rows)
    return {
        "queues": key(defs["queues"], "vhost", "name", "durable", "auto_delete", "arguments"),
        "exchanges": key(defs["exchanges"], "vhost", "name", "type", "durable", "internal", "arguments"),
        "bindings": key(defs["bindings"], "vhost", "source", "destination", "destination_type", "routing_key", "arguments"),
        "users": key(defs["users"], "name", "password_hash", "hashing_algorithm", "tags"),
        "permissions": key(defs["permissions"], "user", "vhost", "configure", "write", "read"),
        "topic_permissions": key(defs["topic_permissions"], "user", "vhost", "exchange", "write", "read"),
    }


def test_export_wipe_import_gives_the_same_setup(make_broker):
    b = make_broker(users=[("ops", "ops-pw", ["/"])])
    conn = b.connect()
    ch = conn.channel()
    ch.exchange_declare("orders.x", "topic", durable=True)
    ch.exchange_declare("audit.x", "fanout", durable=True)
    ch.queue_declare("orders", durable=True, arguments={"x-max-length": 100, "x-message-ttl": 60000})
    ch.queue_declare("audit", durable=True)
    ch.queue_bind("orders", "orders.x", "eu.#")
    ch.exchange_bind("audit.x", "orders.x", "#")
    ch.queue_bind("audit", "audit.x", "")
    ch.queue_declare("", exclusive=True)  # not exported: it belongs to a connection
    api(b, "PUT", "/api/permissions/%2F/ops", {"configure": "^orders", "write": ".*", "read": ".*"})
    b.command("topic-permission", "set", "ops", "/", "orders.x", "^eu\\.", ".*")
    status, exported, _ = api(b, "GET", "/api/definitions")
    assert status == 200
    assert {q["name"] for q in exported["queues"]} == {"orders", "audit"}
    assert {x["name"] for x in exported["exchanges"]} == {"orders.x", "audit.x"}
    conn.close()
    # Wipe: a fresh broker, then import.
    fresh = make_broker()
    assert api(fresh, "POST", "/api/definitions", exported)[0] == 204
    again = api(fresh, "GET", "/api/definitions")[1]
    assert topology(again) == topology(exported)
    # The imported user logs in with its old password (its hash came along).
    c = fresh.connect(user="ops", password="ops-pw")
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        c.channel().queue_declare("not-orders")
    assert e.value.reply_code == 403
    c.close()
    # Importing twice changes nothing.
    assert api(fresh, "POST", "/api/definitions", exported)[0] == 204
    assert topology(api(fresh, "GET", "/api/definitions")[1]) == topology(exported)


def test_a_rabbitmq_export_imports_and_its_user_logs_in(make_broker):
    defs = json.loads(FIXTURE.read_text())
    hashing = {u["name"]: u["hashing_algorithm"] for u in defs["users"]}
    assert hashing["rabbit-user"] == "rabbit_password_hashing_sha256"
    b = make_broker()
    status, body, _ = api(b, "POST", "/api/definitions", defs)
    assert status == 204, body
    conn = b.connect(user="rabbit-user", password="rabbit-pw")
    ch = conn.channel()
    ch.confirm_delivery()
    ch.basic_publish("legacy.events", "orders.new", b"from a rabbit user")
    assert ch.basic_get("legacy.orders", auto_ack=True)[2] == b"from a rabbit user"
    # Its permissions came along: configure only ^legacy\.
    with pytest.raises(pika.exceptions.ChannelClosedByBroker):
        conn.channel().queue_declare("elsewhere")
    conn.close()
    with pytest.raises(pika.exceptions.ProbableAuthenticationError):
        b.connect(user="rabbit-user", password="wrong")
    q = api(b, "GET", "/api/queues/%2F/legacy.orders")[1]
    assert q["arguments"]["x-max-length"] == 1000
    user = api(b, "GET", "/api/users/rabbit-user")[1]
    assert (user["hashing_algorithm"], user["tags"]) == ("rabbit_password_hashing_sha256", ["management"])


def test_definitions_load_at_start_and_bad_ones_are_refused(make_broker, tmp_path):
    defs = tmp_path / "defs.json"
    defs.write_text(FIXTURE.read_text())
    b = make_broker(broker_options=[f'load_definitions = "{defs}"'])
    assert api(b, "GET", "/api/exchanges/%2F/legacy.events")[0] == 200
    b.connect(user="rabbit-user", password="rabbit-pw").close()
    # A vhost without a name and parameters are refused, saying why.
    bad = json.loads(FIXTURE.read_text())
    bad["vhosts"].append({"name": ""})
    status, body, _ = api(b, "POST", "/api/definitions", bad)
    assert (status, body["error"]) == (400, "bad_request")
    assert "a vhost name must be 1 to 255 bytes long" in body["reason"], body
    bad = json.loads(FIXTURE.read_text())
    bad["parameters"] = [{"vhost": "/", "component": "shovel", "name": "s", "value": {}}]
    body = api(b, "POST", "/api/definitions", bad)[1]
    assert "1 parameters" in body["reason"]
    # Policies import and apply.
    with_policy = json.loads(FIXTURE.read_text())
    with_policy["policies"] = [
        {"vhost": "/", "name": "short", "pattern": "^legacy\\.", "apply-to": "queues", "priority": 1, "definition": {"max-length": 5}}
    ]
    assert api(b, "POST", "/api/definitions", with_policy)[0] == 204
    q = api(b, "GET", "/api/queues/%2F/legacy.orders")[1]
    assert (q["policy"], q["effective_policy_definition"]) == ("short", {"max-length": 5})
    assert api(b, "GET", "/api/definitions")[1]["policies"] == with_policy["policies"]
    # The CLI's export and import go through the same API.
    out = tmp_path / "out.json"
    url = ["--url", f"http://127.0.0.1:{b.admin_port}"]
    assert b.command("definitions", "export", out, *url).stdout == f"exported definitions to {out}\n"
    assert {x["name"] for x in json.loads(out.read_text())["exchanges"]} >= {"legacy.events"}
    assert b.command("definitions", "import", out, *url).stdout == f"imported definitions from {out}\n"


def rabbitmqadmin():
    """Debian's rabbitmqadmin (package rabbitmq-server), installed if missing."""
    found = shutil.which("rabbitmqadmin")
    if found is None:
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "rabbitmq-server"],
            check=True,
            timeout=600,
            capture_output=True,
            env={"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        )
        found = shutil.which("rabbitmqadmin")
    assert found, "rabbitmqadmin not installed"
    return found


def test_rabbitmqadmin_drives_the_api(broker, tmp_path):
    tool = rabbitmqadmin()

    def admin(*args):
        r = subprocess.run(
            [tool, "-H", "127.0.0.1", "-P", str(broker.admin_port), "-u", "guest", "-p", "guest", *args],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert r.returncode == 0, (args, r.stdout, r.stderr)
        return r.stdout

    assert "queue declared" in admin("declare", "queue", "name=ra.q", "durable=true")
    assert "exchange declared" in admin("declare", "exchange", "name=ra.x", "type=direct")
    assert "binding declared" in admin("declare", "binding", "source=ra.x", "destination=ra.q", "routing_key=k")
    assert "Message published" in admin("publish", "exchange=ra.x", "routing_key=k", "payload=hello")
    listed = json.loads(admin("-f", "raw_json", "list", "queues", "name", "messages"))
    assert {"name": "ra.q", "messages": 1} in listed
    got = json.loads(admin("-f", "raw_json", "get", "queue=ra.q", "ackmode=ack_requeue_true"))
    assert [(m["payload"], m["routing_key"]) for m in got] == [("hello", "k")]
    assert "queue purged" in admin("purge", "queue", "name=ra.q")
    assert api(broker, "GET", "/api/queues/%2F/ra.q")[1]["messages"] == 0
    out = tmp_path / "ra.json"
    assert "Exported definitions" in admin("export", str(out))
    assert {q["name"] for q in json.loads(out.read_text())["queues"]} == {"ra.q"}
    assert "queue deleted" in admin("delete", "queue", "name=ra.q")
    assert "Uploaded definitions" in admin("import", str(out))
    assert api(broker, "GET", "/api/queues/%2F/ra.q")[0] == 200
    bindings = json.loads(admin("-f", "raw_json", "list", "bindings", "source", "destination", "routing_key"))
    assert {"source": "ra.x", "destination": "ra.q", "routing_key": "k"} in bindings
    # Vhosts made and deleted at run time.
    assert "vhost declared" in admin("declare", "vhost", "name=ra.v")
    assert "permission declared" in admin("declare", "permission", "vhost=ra.v", "user=guest", "configure=.*", "write=.*", "read=.*")
    assert "queue declared" in admin("-V", "ra.v", "declare", "queue", "name=inside")
    assert "ra.v" in [v["name"] for v in json.loads(admin("-f", "raw_json", "list", "vhosts", "name"))]
    assert "vhost deleted" in admin("delete", "vhost", "name=ra.v")
    assert api(broker, "GET", "/api/vhosts/ra.v")[0] == 404


def test_big_definitions_files_and_the_body_limit(make_broker):
    """A definitions file past axum's 2 MB default imports (the limit is
    `[admin] max_body_size`, 20 MiB); past the configured limit it is 413."""
    padded = (FIXTURE.read_text() + " " * 3_000_000).encode()
    b = make_broker()
    assert api(b, "POST", "/api/definitions", padded)[0] == 204
    assert api(b, "GET", "/api/exchanges/%2F/legacy.events")[0] == 200
    small = make_broker(extra_config="[admin]\nmax_body_size = 4096\n")
    assert api(small, "POST", "/api/definitions", padded)[0] == 413
    assert api(small, "GET", "/api/exchanges/%2F/legacy.events")[0] == 404
    assert api(small, "PUT", "/api/queues/%2F/fits", {"durable": True})[0] == 201
