"""Users, permissions and policies across the nodes of a cluster
(docs/cluster.md "Users, permissions and policies"), with three real
`junction` processes: a user made through the management API of one node
logs in on every node (pika) and is listed there; a permission changed on
another node is enforced on the third; a user deleted on one node is
refused on the others; `junction user` run against one node's users file
reaches every node; a policy made on one node caps a queue living on
another; all of it survives kill -9 of a node. Refusals on a minority
node: test_cluster_topology.py."""

import time

import pika
import pika.exceptions
import pytest

from admin_support import api
from test_cluster import agreed_leader, wait_for
from test_cluster_topology import amqp, formed

ALL = {"configure": ".*", "write": ".*", "read": ".*"}


def login(b, user, password):
    """True when `user` logs in over AMQP on node `b`; the refusal's text
    otherwise."""
    try:
        conn = pika.BlockingConnection(b.params(user=user, password=password))
    except pika.exceptions.ProbableAuthenticationError as e:
        return f"refused: {e}"
    conn.close()
    return True


def declare_as(b, user, password, queue):
    """The reply code of declaring `queue` on `b` as `user` (200: made)."""
    conn = pika.BlockingConnection(b.params(user=user, password=password))
    try:
        conn.channel().queue_declare(queue, durable=True)
        return 200
    except pika.exceptions.ChannelClosedByBroker as e:
        return e.reply_code
    finally:
        if conn.is_open:
            conn.close()


def ok(result):
    status, body, _ = result
    assert status in (201, 204), (status, body)


@pytest.mark.deadline(300)
def test_users_permissions_and_policies_are_the_clusters(make_broker, tmp_path):
    brokers, names = formed(make_broker, tmp_path)
    n1, n2, n3 = brokers

    # Made on n1: alice logs in everywhere, and every node lists her.
    ok(api(n1, "PUT", "/api/users/alice", {"password": "alice-secret", "tags": "management"}))
    ok(api(n1, "PUT", "/api/permissions/%2F/alice", ALL))
    for b in brokers:
        wait_for(f"alice logs in on {b.name}", lambda b=b: login(b, "alice", "alice-secret"))
        status, body, _ = api(b, "GET", "/api/users/alice")
        assert (status, body["name"], body["tags"]) == (200, "alice", ["management"]), (b.name, body)
    assert declare_as(n3, "alice", "alice-secret", "alice.q1") == 200

    # Her permissions narrowed on n2: n3 refuses her a declare (403).
    ok(api(n2, "PUT", "/api/permissions/%2F/alice", {"configure": "^$", "write": ".*", "read": ".*"}))
    wait_for("n3 refuses alice a declare", lambda: declare_as(n3, "alice", "alice-secret", "alice.q2") == 403)
    status, body, _ = api(n1, "GET", "/api/permissions/%2F/alice")
    assert (status, body["configure"]) == (200, "^$"), body

    # `junction user add` against n3's users file (the file changed on
    # one node is the cluster's): bob logs in on n1.
    n3.command("user", "add", "bob", "--password", "bob-secret", "--vhost", "/")
    wait_for("bob logs in on n1", lambda: login(n1, "bob", "bob-secret"))
    # A users file removed on one node changes nothing anywhere (it
    # would lock every node out).
    (n1.data_dir / "users.toml").unlink()
    time.sleep(2.5)
    assert login(n2, "bob", "bob-secret") is True
    assert login(n1, "bob", "bob-secret") is True

    # A policy made on n1 caps a queue that lives on n2.
    ok(
        api(
            n1,
            "PUT",
            "/api/policies/%2F/cap",
            {"pattern": "^capped\\.", "definition": {"max-length": 2}, "apply-to": "queues"},
        )
    )
    wait_for("n2 has the policy", lambda: [p["name"] for p in api(n2, "GET", "/api/policies")[1]] == ["cap"])
    conn = amqp(n2)
    ch = conn.channel()
    ch.queue_declare("capped.x", durable=True)
    ch.confirm_delivery()
    for i in range(5):
        ch.basic_publish("", "capped.x", f"m{i}".encode())
    assert ch.queue_declare("capped.x", passive=True).method.message_count == 2
    conn.close()

    # alice deleted on n3 while n2 is down (kill -9): refused on n1 at
    # once, and on n2 once it is back (it takes the group's users at its
    # start); what n2 had applied before (bob, the policy) is in force.
    n2.kill9()
    status, _, _ = api(n3, "DELETE", "/api/users/alice")
    assert status == 204
    wait_for("n1 refuses alice", lambda: login(n1, "alice", "alice-secret") is not True)
    n2.start()
    wait_for("the cluster together", lambda: agreed_leader(brokers, names))
    assert login(n2, "alice", "alice-secret") is not True
    assert login(n2, "bob", "bob-secret") is True
    assert [p["name"] for p in api(n2, "GET", "/api/policies")[1]] == ["cap"]
    # A policy deleted on n2 is gone from every node.
    status, _, _ = api(n2, "DELETE", "/api/policies/%2F/cap")
    assert status == 204
    for b in brokers:
        wait_for(f"no policy on {b.name}", lambda b=b: api(b, "GET", "/api/policies")[1] == [])
