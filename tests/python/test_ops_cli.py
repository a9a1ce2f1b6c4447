"""The operator commands of the `junction` binary (docs/management.md):
`queues list|purge|delete`, `exchanges list`, `bindings list`,
`connections list|close`, `mqtt clients`, `publish`, `get` and `status`,
against a running broker's management API, in table and `--json` form.
"""

import json

import pika
import pytest

from mqtt_support import V5
from mqtt_support import clients  # noqa: F401 (fixture)
from stomp_support import uid

pytestmark = pytest.mark.deadline(60)


def ops(b, *args, user=None, password=None, check=True):
    """`junction <args> --url <this broker's API>`; the CompletedProcess."""
    extra = ["--url", f"http://127.0.0.1:{b.admin_port}"]
    if user is not None:
        extra += ["--user", user, "--password", password]
    return b.command(*args, *extra, check=check)


def test_queues_list_purge_delete_in_table_and_json(broker):
    name = uid("q")
    conn = broker.connect()
    ch = conn.channel()
    ch.queue_declare(name)
    ch.confirm_delivery()
    for i in range(3):
        ch.basic_publish("", name, f"m{i}".encode())
    table = ops(broker, "queues", "list").stdout.splitlines()
    assert table[0].split() == ["vhost", "name", "messages", "ready", "unacked", "consumers"]
    assert [name, "3", "3", "0", "0"] in [line.split()[1:] for line in table[1:]], table
    listed = json.loads(ops(broker, "queues", "list", "--vhost", "/", "--json").stdout)
    mine = [q for q in listed if q["name"] == name]
    assert (mine[0]["messages"], mine[0]["vhost"]) == (3, "/")
    # get peeks by default: nothing changes.
    got = json.loads(ops(broker, "get", name, "--count", "2", "--json").stdout)
    assert [(m["payload"], m["redelivered"]) for m in got] == [("m0", False), ("m1", False)]
    lines = ops(broker, "get", name).stdout.splitlines()
    assert lines[0].split() == ["routing_key", "redelivered", "bytes", "encoding", "payload"]
    assert lines[1].split() == [name, "false", "2", "string", "m0"]
    assert ops(broker, "queues", "purge", name).stdout == f"purged queue '{name}'\n"
    assert ch.queue_declare(name, passive=True).method.message_count == 0
    assert ops(broker, "queues", "delete", name).stdout == f"deleted queue '{name}'\n"
    with pytest.raises(pika.exceptions.ChannelClosedByBroker):
        conn.channel().queue_declare(name, passive=True)
    conn.close()


def test_publish_exchanges_bindings_and_status(broker):
    name = uid("q")
    conn = broker.connect()
    ch = conn.channel()
    ch.queue_declare(name)
    ch.queue_bind(name, "amq.topic", "cli.#")
    out = ops(broker, "publish", "amq.topic", "cli.x", "hello from the cli").stdout
    assert out == "published, routed\n"
    assert ops(broker, "publish", "", "no-such-queue", "x").stdout == "published, but no queue took it\n"
    assert ch.basic_get(name, auto_ack=True)[2] == b"hello from the cli"
    exchanges = ops(broker, "exchanges", "list").stdout.splitlines()
    assert ["/", "amq.topic", "topic", "true"] in [line.split() for line in exchanges]
    bindings = ops(broker, "bindings", "list", "--vhost", "/").stdout.splitlines()
    assert ["/", "amq.topic", name, "queue", "cli.#"] in [line.split() for line in bindings]
    status = dict(line.split(None, 1) for line in ops(broker, "status").stdout.splitlines())
    assert status["alarms"] == "ok" and int(status["queues"]) >= 1
    assert json.loads(ops(broker, "status", "--json").stdout)["alarms"] == {"status": "ok"}
    conn.close()


def test_connections_and_mqtt_clients(broker, clients):
    c = clients.connect(broker, version=V5, client_id="cli-dev")
    assert c.subscribe("cli/dev/#", qos=1) == [1]
    table = ops(broker, "connections", "list").stdout.splitlines()
    assert table[0].split() == ["name", "protocol", "user", "vhost", "client_id", "ssl"]
    row = [line for line in table if "cli-dev" in line]
    assert len(row) == 1 and "MQTT 5" in row[0], table
    mqtt = json.loads(ops(broker, "mqtt", "clients", "--json").stdout)
    assert [(m["client_id"], m["connected"], m["subscriptions"]) for m in mqtt] == [
        ("cli-dev", True, ["cli/dev/#"])
    ]
    name = json.loads(ops(broker, "connections", "list", "--json").stdout)
    name = [x["name"] for x in name if x.get("client_id") == "cli-dev"][0]
    out = ops(broker, "connections", "close", name, "--reason", "bye").stdout
    assert out == f"closed connection '{name}'\n"
    assert c.wait_disconnected().reason == 0x98


def test_refusals_are_reported(make_broker):
    b = make_broker(users=[("plain", "plain", ["/"])])
    bad = ops(b, "queues", "list", user="plain", password="plain", check=False)
    assert bad.returncode == 1
    assert bad.stderr == "junction: the broker answered 401: Not management user\n"
    bad = ops(b, "queues", "purge", "nope", check=False)
    assert (bad.returncode, bad.stderr) == (1, "junction: the broker answered 404: Not Found\n")
    down = b.command("status", "--url", "http://127.0.0.1:1", check=False)
    assert down.returncode == 1 and "cannot reach the broker at http://127.0.0.1:1" in down.stderr
