"""Membership changes (docs/cluster.md "Membership changes"), with real
`junction` processes, pika and paho-mqtt: a fourth node started with
`[cluster] join = true` (with an id below every member's, listing one
member only) stays out until `junction cluster join` on a member adds
it; it then has the whole topology, votes, and every quorum
queue's group takes it as a member (`members` in the management API).
`junction cluster leave` refuses a running node, and forgets a stopped
one: it leaves the metadata group and every quorum queue's group, and
its classic queues and MQTT client-id claims go with it. Each step is
shown by what a majority can do after it: with the forgotten node and
one more killed, the two left of three still confirm publishes; and the
joined node, restarted while the only member its config lists is down,
links to the others from the membership it kept."""

import json
import time

import pytest

from admin_support import api
from mqtt_support import V311, clients, persistent  # noqa: F401 (a fixture)
from test_cluster import cluster_toml, free_ports, nodes, wait_for
from test_cluster_messages import depth
from test_cluster_mqtt_sessions import connect_ok, leave_session
from test_cluster_quorum import (
    consume_all,
    declare_quorum,
    leader_everywhere,
    lowest_id,
    publish_confirmed,
    queue_info,
)
from test_cluster_topology import amqp, formed


def member_names(b):
    """The members `/api/nodes` on `b` lists, sorted."""
    return sorted(n["name"] for n in nodes(b))


def voters(b):
    return sorted(n["name"] for n in nodes(b) if n["raft"]["voter"])


def jq_members(b):
    return sorted(queue_info(b, "jq")["members"])


def same_everywhere(what, brokers, read, want):
    """Waits until `read(b)` is `want` on every broker of `brokers`."""
    wait_for(
        f"{what} on every node",
        lambda: all(read(b) == want for b in brokers) or {b.name: read(b) for b in brokers},
    )


def running_on(b, name):
    entry = [n for n in nodes(b) if n["name"] == f"junction@{name}"]
    return bool(entry) and (entry[0].get("running") is not False)


def api_url(b):
    return ["--url", f"http://127.0.0.1:{b.admin_port}"]


@pytest.mark.deadline(300)
def test_a_node_joins_takes_every_quorum_queue_and_a_stopped_node_is_forgotten(
    make_broker, tmp_path, clients
):
    brokers, _ = formed(make_broker, tmp_path)
    n1, n2, n3 = brokers
    p1 = n1.ports["cluster"]

    # Before the join: a quorum queue with 20 confirmed messages; on n3, a
    # classic queue with 5 and an MQTT persistent session (its claim and
    # its queue live on n3).
    declare_quorum(n1, "jq")
    leader_everywhere(brokers, "jq")
    publish_confirmed(n2, "jq", [f"before-{i}".encode() for i in range(20)])
    conn = amqp(n3)
    conn.channel().queue_declare("c3", durable=True)
    conn.close()
    publish_confirmed(n3, "c3", [f"c3-{i}".encode() for i in range(5)])
    leave_session(clients, brokers, n3, "dev-3", "plant/+/temp")

    # n34 starts to join: it lists n1 and itself. Its id is below every
    # member's, so no member dials it as the lower id, and it knows none
    # but n1: the leader reaches it by the fallback dial. Until it is
    # added it has none of the cluster's topology.
    assert lowest_id(["n1", "n2", "n3", "n34"]) == "n34"
    (p4,) = free_ports(1)
    secret = tmp_path / "cluster.secret"
    n4 = make_broker(
        extra_config=cluster_toml("n34", [("n1", p1), ("n34", p4)], secret) + "join = true\n"
    )
    n4.name = "n34"
    assert api_get_status(n4, "/api/queues/%2F/jq") == 404
    assert member_names(n1) == ["junction@n1", "junction@n2", "junction@n3"]

    # Added with the CLI on n2 (not necessarily the leader).
    out = n2.command("cluster", "join", f"n34@127.0.0.1:{p4}", *api_url(n2)).stdout
    assert out.strip() == f"n34@127.0.0.1:{p4} joined the cluster"
    everyone = ["junction@n1", "junction@n2", "junction@n3", "junction@n34"]
    all4 = [n1, n2, n3, n4]
    same_everywhere("four voters", all4, voters, everyone)
    # The quorum queue's group took n34, as every node reports it.
    same_everywhere("jq's group has all four", all4, jq_members, everyone)
    # n34 serves the cluster's queues: it counts jq's messages and c3's, and
    # takes confirmed publishes for jq.
    wait_for("n34 counts jq and c3", lambda: (depth(n4, "jq"), depth(n4, "c3")) == (20, 5) or (depth(n4, "jq"), depth(n4, "c3")))
    publish_confirmed(n4, "jq", [f"on-n4-{i}".encode() for i in range(10)])
    wait_for("30 in jq everywhere", lambda: all(depth(b, "jq") == 30 for b in all4) or [depth(b, "jq") for b in all4])

    # A running node cannot be forgotten.
    refused = n1.command("cluster", "leave", "n3", *api_url(n1), check=False)
    assert refused.returncode != 0
    assert "n3 may be running (linked to junction@n1): stop it first" in refused.stderr + refused.stdout

    # n3 stops (kill -9) and is forgotten, with what lived on it only.
    n3.kill9()
    wait_for("n1 sees n3 down", lambda: not running_on(n1, "n3"))
    left = json.loads(n1.command("cluster", "leave", "n3", *api_url(n1), "--json").stdout)
    assert left == {"left": "junction@n3", "client_ids": 1, "routes": 0, "queues": 2}, left
    rest = [n1, n2, n4]
    three = ["junction@n1", "junction@n2", "junction@n34"]
    same_everywhere("three members", rest, member_names, three)
    same_everywhere("jq's group without n3", rest, jq_members, three)
    for q in ("c3", "mqtt-session-dev-3"):
        same_everywhere(f"{q} gone", rest, lambda b, q=q: api_get_status(b, f"/api/queues/%2F/{q}"), 404)
    # The device's session went with n3: it starts afresh on n1.
    dev = clients.new(n1, client_id="dev-3", version=V311, **persistent(V311))
    assert connect_ok(dev).session_present is False
    dev.disconnect()

    # n1 is killed too: n2 and n34 are two of three voters, a majority (of
    # the four before the leave they would not be), and still confirm.
    n1.kill9()
    leader_everywhere([n2, n4], "jq")
    publish_confirmed(n2, "jq", [f"after-{i}".encode() for i in range(5)])

    # n34 restarts while n1, the only other member its config lists, is
    # down: it finds n2 from the membership it keeps, and serves again.
    n4.kill9()
    n4.start()
    wait_for("n34 links to n2", lambda: running_on(n4, "n2") and own_role(n4) in ("leader", "follower"))
    leader_everywhere([n2, n4], "jq")
    publish_confirmed(n4, "jq", [f"back-{i}".encode() for i in range(5)])
    got = consume_all(n4, "jq", 40)
    bodies = sorted(body.decode() for body, _ in got)
    expected = sorted(
        [f"before-{i}" for i in range(20)]
        + [f"on-n4-{i}" for i in range(10)]
        + [f"after-{i}" for i in range(5)]
        + [f"back-{i}" for i in range(5)]
    )
    assert bodies == expected


def api_get_status(b, path):
    return api(b, "GET", path)[0]


def own_role(b):
    mine = [n for n in nodes(b) if "cluster" in n]
    return mine[0]["cluster"]["role"] if mine else None


@pytest.mark.deadline(120)
def test_join_and_leave_refuse_what_cannot_be_done(make_broker, tmp_path):
    brokers, _ = formed(make_broker, tmp_path)
    n1 = brokers[0]

    # Not name@ip:port, a name that is no node name, a node that is not a
    # member, and this node itself.
    status, body, _ = api(n1, "POST", "/api/nodes", {"node": "n4"})
    assert (status, body["reason"]) == (400, '"n4" is not name@ip:port'), body
    status, body, _ = api(n1, "POST", "/api/nodes", {"node": "bad name@127.0.0.1:1"})
    assert status == 409 and "is not a node name" in body["reason"], body
    status, body, _ = api(n1, "DELETE", "/api/nodes/junction@n9")
    assert (status, body["reason"]) == (409, "n9 is not a member of the cluster"), body
    status, body, _ = api(n1, "DELETE", "/api/nodes/n1")
    assert status == 409 and "is this node" in body["reason"], body
    # An existing member at another address.
    status, body, _ = api(n1, "POST", "/api/nodes", {"node": "n2@127.0.0.1:1"})
    assert status == 409 and "is a member at" in body["reason"], body
    # Nothing changed.
    assert member_names(n1) == ["junction@n1", "junction@n2", "junction@n3"]


@pytest.mark.deadline(180)
def test_a_forgotten_node_is_refused_until_cleared_and_joined_again(make_broker, tmp_path):
    brokers, _ = formed(make_broker, tmp_path)
    n1, n2, n3 = brokers
    p1, p3 = n1.ports["cluster"], n3.ports["cluster"]
    declare_quorum(n1, "rq")
    leader_everywhere(brokers, "rq")
    n3.kill9()
    wait_for("n1 sees n3 down", lambda: not running_on(n1, "n3"))
    n1.command("cluster", "leave", "n3", *api_url(n1))
    two = ["junction@n1", "junction@n2"]
    same_everywhere("two members", [n1, n2], member_names, two)
    same_everywhere("rq's group without n3", [n1, n2], lambda b: sorted(queue_info(b, "rq")["members"]), two)

    # Started again on its old data, n3 is refused by both: for 4 s (past
    # the 3 s after which a higher id dials too) it is linked to neither,
    # and they do not list it.
    n3.start()
    wait_for("n3 serves its API", lambda: own_role(n3) is not None)
    for _ in range(40):
        assert member_names(n1) == two and member_names(n2) == two
        assert not running_on(n3, "n1") and not running_on(n3, "n2"), nodes(n3)
        time.sleep(0.1)
    n3.kill9()

    # Cleared and started to join, it is taken back by a join, and the
    # quorum queue's group takes it again.
    back = make_broker(
        data_dir=tmp_path / "n3-again",
        extra_config=cluster_toml("n3", [("n1", p1), ("n3", p3)], tmp_path / "cluster.secret") + "join = true\n",
    )
    back.name = "n3"
    n1.command("cluster", "join", f"n3@127.0.0.1:{p3}", *api_url(n1))
    three = ["junction@n1", "junction@n2", "junction@n3"]
    every = [n1, n2, back]
    same_everywhere("three voters", every, voters, three)
    same_everywhere("rq's group with n3", every, lambda b: sorted(queue_info(b, "rq")["members"]), three)
    publish_confirmed(back, "rq", [b"from the new n3"])
    assert [body for body, _ in consume_all(n2, "rq", 1)] == [b"from the new n3"]

