"""The cluster's durable topology (docs/cluster.md "Topology"), with
three real `junction` processes and pika: a vhost, durable exchanges,
durable queues and their bindings declared on one node are seen on every
node (AMQP passive declares, the management API), a queue lives on the
node that declared it and is listed everywhere with that node, deletes
on any node reach all of them, a node killed with kill -9 catches up on
what changed while it was down, transient topology stays on its node,
and a node cut off from the majority refuses a change (and the nodes agree
on it once they are together again). Messages do not cross nodes yet; nothing here claims they do."""

import urllib.parse

import pika
import pika.exceptions
import pytest

import admin_support
from admin_support import api
from stomp_support import Client as StompClient
from test_cluster import agreed_leader, three_nodes, wait_for


def api_within(b, *args, timeout=20.0):
    """`api` with a longer wait, for a change the cluster takes 10 s to
    refuse."""
    saved = admin_support.HTTP_TIMEOUT
    admin_support.HTTP_TIMEOUT = timeout
    try:
        return api(b, *args)
    finally:
        admin_support.HTTP_TIMEOUT = saved


def amqp(b, vhost="/"):
    return pika.BlockingConnection(b.params(vhost=vhost))


def exists(b, kind, name, vhost="/"):
    """True when a passive declare of `kind` ('exchange' or 'queue')
    `name` succeeds on node `b`; False on 404 NOT_FOUND."""
    conn = amqp(b, vhost)
    try:
        ch = conn.channel()
        try:
            if kind == "exchange":
                ch.exchange_declare(name, passive=True)
            else:
                ch.queue_declare(name, passive=True)
            return True
        except pika.exceptions.ChannelClosedByBroker as e:
            assert e.reply_code == 404, e
            return False
    finally:
        if conn.is_open:
            conn.close()


def listed(b, path):
    status, body, _ = api(b, "GET", path)
    assert status == 200, (path, status, body)
    return body


def queue_nodes(b, vhost="/"):
    v = urllib.parse.quote(vhost, safe="")
    return {q["name"]: q["node"] for q in listed(b, f"/api/queues/{v}")}


def bindings_to(b, queue, vhost="/"):
    v = urllib.parse.quote(vhost, safe="")
    return sorted(
        (x["source"], x["routing_key"])
        for x in listed(b, f"/api/bindings/{v}")
        if x["destination_type"] == "queue" and x["destination"] == queue and x["source"]
    )


def formed(make_broker, tmp_path):
    """Three started nodes n1, n2, n3 once they agree on a leader."""
    brokers = three_nodes(make_broker, tmp_path)
    names = [b.name for b in brokers]
    wait_for("the cluster formed", lambda: agreed_leader(brokers, names))
    return brokers, names


def everywhere(brokers, what, check):
    wait_for(what, lambda: all(check(b) for b in brokers) or [b.name for b in brokers if not check(b)])


@pytest.mark.deadline(240)
def test_durable_topology_is_the_same_on_every_node(make_broker, tmp_path):
    brokers, names = formed(make_broker, tmp_path)
    n1, n2, n3 = brokers

    # Declared on n1: a durable exchange, a durable queue bound to it, and
    # a transient exchange (which stays on n1).
    conn = amqp(n1)
    ch = conn.channel()
    ch.exchange_declare("orders", "direct", durable=True)
    ch.queue_declare("q.n1", durable=True, arguments={"x-max-length": 10})
    ch.queue_bind("q.n1", "orders", routing_key="a")
    ch.exchange_declare("tmp.x", "fanout", durable=False)
    # The owner holds the messages, as before.
    ch.basic_publish("orders", "a", b"kept on n1")
    conn.close()

    # Right after the declare-ok, every node answers the same (the
    # change was applied on n1 before its answer, and reaches the others
    # as they apply the log).
    everywhere(brokers, "orders on every node", lambda b: exists(b, "exchange", "orders"))
    everywhere(brokers, "q.n1 on every node", lambda b: exists(b, "queue", "q.n1"))
    everywhere(
        brokers,
        "q.n1 listed on every node as n1's",
        lambda b: queue_nodes(b).get("q.n1") == "junction@n1",
    )
    everywhere(brokers, "the binding on every node", lambda b: bindings_to(b, "q.n1") == [("orders", "a")])
    assert exists(n1, "exchange", "tmp.x")
    assert not exists(n2, "exchange", "tmp.x")
    assert not exists(n3, "exchange", "tmp.x")
    q = listed(n1, "/api/queues/%2F/q.n1")
    assert (q["node"], q["messages"], q["arguments"]) == ("junction@n1", 1, {"x-max-length": 10})
    remote = listed(n3, "/api/queues/%2F/q.n1")
    assert (remote["node"], remote["durable"], remote["arguments"]) == ("junction@n1", True, {"x-max-length": 10})
    assert "messages" not in remote, remote

    # Another node checks a redeclare against the queue's declaration.
    conn = amqp(n3)
    ch = conn.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
        ch.queue_declare("q.n1", durable=True, arguments={"x-max-length": 11})
    assert refused.value.reply_code == 406
    assert "inequivalent arg 'x-max-length'" in refused.value.reply_text
    ch = conn.channel()
    ok = ch.queue_declare("q.n1", durable=True, arguments={"x-max-length": 10})
    assert ok.method.queue == "q.n1"
    # A queue declared on n2 lives on n2; n2 binds it to n1's exchange.
    conn.close()
    conn = amqp(n2)
    ch = conn.channel()
    ch.queue_declare("q.n2", durable=True)
    ch.queue_bind("q.n2", "orders", routing_key="b")
    # n2 binds n1's queue to a second exchange of its own.
    ch.exchange_declare("audit", "fanout", durable=True)
    ch.queue_bind("q.n1", "audit")
    conn.close()
    everywhere(brokers, "q.n2 listed as n2's", lambda b: queue_nodes(b).get("q.n2") == "junction@n2")
    everywhere(
        brokers,
        "q.n1's two bindings everywhere",
        lambda b: bindings_to(b, "q.n1") == [("audit", "q.n1"), ("orders", "a")],
    )

    # A vhost made through the API of n1, and an exchange in it from n3.
    assert api(n1, "PUT", "/api/vhosts/v2", {"description": "second"})[0] in (201, 204)
    everywhere(
        brokers,
        "v2 everywhere",
        lambda b: [v["description"] for v in listed(b, "/api/vhosts") if v["name"] == "v2"] == ["second"],
    )
    for b in brokers:
        assert api(b, "PUT", "/api/permissions/v2/guest", {"configure": ".*", "write": ".*", "read": ".*"})[0] in (201, 204)
    conn = amqp(n3, "v2")
    conn.channel().exchange_declare("in.v2", "topic", durable=True)
    conn.close()
    everywhere(brokers, "in.v2 everywhere", lambda b: exists(b, "exchange", "in.v2", "v2"))

    # kill -9 of n3; changes it misses while down reach it when it is back.
    n3.kill9()
    conn = amqp(n1)
    ch = conn.channel()
    ch.exchange_delete("orders")
    ch.queue_declare("q.late", durable=True)
    conn.close()
    n3.start()
    wait_for("all three together again", lambda: agreed_leader(brokers, names))
    everywhere(brokers, "orders gone everywhere", lambda b: not exists(b, "exchange", "orders"))
    everywhere(brokers, "q.late everywhere", lambda b: queue_nodes(b).get("q.late") == "junction@n1")
    everywhere(brokers, "only audit binds q.n1", lambda b: bindings_to(b, "q.n1") == [("audit", "q.n1")])

    # A queue deleted on a node it does not live on goes from its own
    # node too (with its messages and bindings); a conditional delete must
    # be asked of the queue's node.
    conn = amqp(n3)
    ch = conn.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
        ch.queue_delete("q.n1", if_empty=True)
    assert refused.value.reply_code == 406
    assert "lives on node n1" in refused.value.reply_text
    ch = conn.channel()
    ch.queue_delete("q.n1")
    conn.close()
    everywhere(brokers, "q.n1 gone everywhere", lambda b: "q.n1" not in queue_nodes(b))
    assert api(n1, "GET", "/api/queues/%2F/q.n1")[0] == 404
    everywhere(brokers, "no binding to q.n1", lambda b: bindings_to(b, "q.n1") == [])

    # The vhost deleted on n2 goes from every node with what it held.
    assert api(n2, "DELETE", "/api/vhosts/v2")[0] == 204
    everywhere(brokers, "v2 gone everywhere", lambda b: "v2" not in [v["name"] for v in listed(b, "/api/vhosts")])

    # Every node restarted one by one keeps the same topology.
    for b in brokers:
        b.restart()
        wait_for("the cluster together", lambda: agreed_leader(brokers, names))
    for b in brokers:
        assert queue_nodes(b) == {"q.late": "junction@n1", "q.n2": "junction@n2"}, b.name
        assert exists(b, "exchange", "audit") and not exists(b, "exchange", "orders")
        assert bindings_to(b, "q.n2") == []


@pytest.mark.deadline(180)
def test_a_node_cut_off_from_the_majority_refuses_changes_and_all_agree_after(make_broker, tmp_path):
    brokers, names = formed(make_broker, tmp_path)
    n1, n2, n3 = brokers
    n2.kill9()
    n3.kill9()

    # The write timeout (10 s) passes without a majority: 541
    # INTERNAL_ERROR (a connection error in AMQP 0-9-1), and n1 undoes
    # what it had made of the change.
    conn = amqp(n1)
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as refused:
        conn.channel().exchange_declare("lonely", "direct", durable=True)
    assert refused.value.reply_code == 541
    assert refused.value.reply_text.startswith("INTERNAL_ERROR - the cluster did not commit the change")
    conn = amqp(n1)
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as refused:
        conn.channel().queue_declare("lonely.q", durable=True)
    assert refused.value.reply_code == 541
    # STOMP (a SEND to /queue/ declares a durable queue) and the
    # management API are refused the same way.
    stomp = StompClient(n1)
    stomp.connected()
    stomp.send("/queue/lonely.s", "x")
    stomp.listener.wait(lambda: any(f.cmd == "ERROR" for f in stomp.listener.frames), 20, "ERROR")
    error = next(f for f in stomp.listener.frames if f.cmd == "ERROR")
    assert error.headers["message"] == "cluster_unavailable", error.headers
    stomp.close()
    status, body, _ = api_within(n1, "PUT", "/api/exchanges/%2F/lonely.api", {"type": "direct", "durable": True})
    assert (status, body["error"]) == (503, "unavailable"), (status, body)
    assert "did not commit the change" in body["reason"]
    # Users and policies are the cluster's too.
    status, body, _ = api_within(n1, "PUT", "/api/users/lonely", {"password": "lonely-secret", "tags": ""})
    assert (status, body["error"]) == (503, "unavailable"), (status, body)
    status, body, _ = api_within(
        n1, "PUT", "/api/policies/%2F/lonely", {"pattern": "^x$", "definition": {"max-length": 1}}
    )
    assert (status, body["error"]) == (503, "unavailable"), (status, body)
    assert api(n1, "GET", "/api/users/lonely")[0] == 404
    assert api(n1, "GET", "/api/policies")[1] == []
    # Transient topology needs no majority.
    conn = amqp(n1)
    conn.channel().exchange_declare("local.only", "fanout", durable=False)
    conn.close()
    assert not exists(n1, "exchange", "lonely")
    assert not exists(n1, "queue", "lonely.q")
    assert exists(n1, "exchange", "local.only")

    # With the others back, the three agree on each refused change: as in
    # any Raft log, an entry the old leader kept may still be committed
    # once a majority is back (the 541 said "not committed in time", not
    # "never"); then it is on every node, else on none.
    n2.start()
    n3.start()
    wait_for("the cluster together", lambda: agreed_leader(brokers, names))
    for kind, name in (
        ("exchange", "lonely"),
        ("queue", "lonely.q"),
        ("queue", "lonely.s"),
        ("exchange", "lonely.api"),
    ):
        wait_for(
            f"every node to agree on {name}",
            lambda: len({exists(b, kind, name) for b in brokers}) == 1,
        )
    assert not exists(n2, "exchange", "local.only")
    for path in ("/api/users/lonely", "/api/policies/%2F/lonely"):
        wait_for(f"every node to agree on {path}", lambda: len({api(b, "GET", path)[0] for b in brokers}) == 1)
