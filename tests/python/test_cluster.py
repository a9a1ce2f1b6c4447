"""Three real `junction` processes as one cluster on 127.0.0.1
(docs/cluster.md): the metadata group forms from the config alone,
`/api/nodes` and `junction cluster status` show every member and the
leader, the group survives kill -9 of its leader and takes the killed node
back from its own data directory, replaces a paused (SIGSTOP) leader that
then follows when it resumes, survives a partition and a cut link (through
fault proxies), and a node without the secret never links. What the
cluster shares (topology, queues, sessions) is tested in the other
`test_cluster_*` files."""

import json
import os
import signal
import socket
import subprocess
import time

import pytest

from admin_support import api
from broker_support import junction_bin
from fault_proxy import FaultProxy

SECRET = "a-shared-secret-of-32-characters\n"


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def cluster_toml(name, members, secret_file):
    """`members`: (name, port) pairs as this node reaches them."""
    listed = ", ".join(f'"{n}@127.0.0.1:{p}"' for n, p in members)
    return (
        "[cluster]\n"
        "enabled = true\n"
        f'node_name = "{name}"\n'
        f"nodes = [{listed}]\n"
        f'secret_file = "{secret_file}"\n'
        "heartbeat_ms = 100\n"
        "election_timeout_min_ms = 500\n"
        "election_timeout_max_ms = 1000\n"
    )


def nodes(b):
    status, body, _ = api(b, "GET", "/api/nodes")
    assert status == 200, (status, body)
    return body


def own(b):
    """This node's own entry of /api/nodes."""
    mine = [n for n in nodes(b) if "cluster" in n]
    assert len(mine) == 1, mine
    return mine[0]


def wait_for(what, check, timeout=20.0):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (OSError, AssertionError) as e:
            last = e
        if last is True:
            return
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}; last: {last!r}")


def agreed_leader(brokers, names):
    """True when every broker names the same leader among `names`, and
    that leader reports every member of `names` linked and caught up."""
    views = {b.name: own(b) for b in brokers}
    leaders = {v["cluster"]["leader"] for v in views.values()}
    if len(leaders) != 1 or None in leaders:
        return f"leaders {leaders}"
    (leader,) = leaders
    if leader not in {f"junction@{n}" for n in names}:
        return f"leader {leader} not among {names}"
    on_leader = [b for b in brokers if views[b.name]["name"] == leader]
    if not on_leader:
        return f"leader {leader} not running"
    seen = {n["name"]: n for n in nodes(on_leader[0])}
    for n in names:
        entry = seen[f"junction@{n}"]
        if not entry["running"] or entry["raft"]["lag"] != 0:
            return f"{n} on the leader: {entry}"
    return True


def leader_of(b):
    return own(b)["cluster"]["leader"]


def three_nodes(make_broker, tmp_path, mqtt_options=()):
    """Three started nodes n1, n2, n3 on 127.0.0.1, each listening for
    its peers on the port its config names; `b.name` is each one's name.
    `mqtt_options`: lines for every node's [mqtt] table."""
    secret = tmp_path / "cluster.secret"
    secret.write_text(SECRET)
    names = ["n1", "n2", "n3"]
    members = list(zip(names, free_ports(3)))
    brokers = []
    for name, port in members:
        b = make_broker(mqtt_options=mqtt_options, extra_config=cluster_toml(name, members, secret))
        b.name = name
        assert b.ports["cluster"] == port, b.ports
        brokers.append(b)
    return brokers


@pytest.mark.deadline(180)
def test_three_nodes_form_report_survive_kill9_of_the_leader_and_rejoin(make_broker, tmp_path):
    brokers = three_nodes(make_broker, tmp_path)
    names = [b.name for b in brokers]
    by_name = {b.name: b for b in brokers}

    # Formed from the config alone: one leader every node agrees on, every
    # member linked and caught up on it, each node naming itself and its
    # role the same way everywhere. (Checked as one snapshot, again until
    # it holds, so a spurious election on a loaded machine is waited out.)
    def formed():
        agreed = agreed_leader(brokers, names)
        if agreed is not True:
            return agreed
        leader = leader_of(brokers[0])
        listed = sorted(n["name"] for n in nodes(brokers[1]))
        if listed != ["junction@n1", "junction@n2", "junction@n3"]:
            return f"listed {listed}"
        for b in brokers:
            view = own(b)
            role = "leader" if view["name"] == leader else "follower"
            if view["name"] != f"junction@{b.name}" or view["cluster"]["role"] != role:
                return f"{b.name} sees itself as {view}"
            if view["cluster"]["peer_address"] != f"127.0.0.1:{b.ports['cluster']}":
                return f"{b.name} peer address {view['cluster']['peer_address']}"
            status, overview, _ = api(b, "GET", "/api/overview")
            if overview["node"] != view["name"]:
                return f"overview names {overview['node']}"
        return True

    wait_for("the cluster formed", formed)
    status, one, _ = api(brokers[2], "GET", "/api/nodes/junction@n1")
    assert status == 200 and one["name"] == "junction@n1"
    assert api(brokers[2], "GET", "/api/nodes/junction@n9")[0] == 404

    # `junction cluster status` against the leader: every member, linked,
    # with no lag; as JSON, exactly one member leads.
    def cli_agrees():
        leader = leader_of(brokers[0])
        first = by_name[leader.split("@")[1]]
        url = ["--url", f"http://127.0.0.1:{first.admin_port}"]
        table = first.command("cluster", "status", *url).stdout
        lines = table.splitlines()
        assert lines[0].split() == ["name", "running", "leader", "lag", "role", "term", "applied"]
        rows = {line.split()[0]: line.split() for line in lines[1:]}
        assert sorted(rows) == ["junction@n1", "junction@n2", "junction@n3"], table
        if not all(r[1] == "true" and r[3] == "0" for r in rows.values()):
            return table
        if [n for n, r in rows.items() if r[2] == "true"] != [leader] or rows[leader][4] != "leader":
            return table
        as_json = json.loads(first.command("cluster", "status", *url, "--json").stdout)
        if [n["name"] for n in as_json if n["raft"]["leader"]] != [leader]:
            return as_json
        return True

    wait_for("junction cluster status to show the cluster", cli_agrees)
    leader = leader_of(brokers[0])
    first = by_name[leader.split("@")[1]]

    # kill -9 of the leader: the other two elect one of themselves.
    first.kill9()
    survivors = [b for b in brokers if b is not first]
    survivor_names = [b.name for b in survivors]
    wait_for("a new leader among the survivors", lambda: agreed_leader(survivors, survivor_names))
    second = leader_of(survivors[0])
    assert second != leader
    on_second = next(b for b in survivors if f"junction@{b.name}" == second)
    lost = next(n for n in nodes(on_second) if n["name"] == leader)
    assert lost["running"] is False, lost

    # The killed node comes back on its own data directory and follows,
    # in the leader's term.
    first.start()

    def back():
        agreed = agreed_leader(brokers, names)
        if agreed is not True:
            return agreed
        mine, theirs = own(first)["cluster"], own(on_second)["cluster"]
        if mine["role"] != "follower" or mine["term"] != theirs["term"]:
            return f"{mine} against {theirs}"
        return True

    wait_for("all three together again", back)


@pytest.mark.deadline(120)
def test_a_node_without_the_secret_never_links(make_broker, tmp_path):
    good = tmp_path / "good.secret"
    good.write_text(SECRET)
    bad = tmp_path / "bad.secret"
    bad.write_text("a-different-secret-0123456789abc\n")
    members = list(zip(["n1", "n2"], free_ports(2)))
    one = make_broker(extra_config=cluster_toml("n1", members, good))
    two = make_broker(extra_config=cluster_toml("n2", members, bad))
    # Three seconds of redials (about a dozen handshakes), none accepted.
    time.sleep(3)
    for b in (one, two):
        others = [n for n in nodes(b) if "cluster" not in n]
        assert [n["running"] for n in others] == [False], others
        assert own(b)["cluster"]["leader"] is None
    logs = one.log_tail(400) + two.log_tail(400)
    assert "does not hold the cluster secret" in logs


@pytest.mark.parametrize(
    "body, expected",
    [
        ('node_name = "n9"\nnodes = ["n1@127.0.0.1:1"]\nsecret_file = "{secret}"', "node_name"),
        ('node_name = "n1"\nnodes = ["n1@localhost:1"]\nsecret_file = "{secret}"', "ip:port"),
        ('node_name = "n1"\nnodes = ["n1@127.0.0.1:1", "n1@127.0.0.1:2"]\nsecret_file = "{secret}"', "twice"),
        ('node_name = "n1"\nnodes = ["n1@127.0.0.1:1"]', "secret_file"),
        ('node_name = "n1"\nnodes = ["n1@127.0.0.1:1"]\nsecret_file = "{short}"', "at least 16"),
        ('node_name = "n/1"\nnodes = ["n/1@127.0.0.1:1"]\nsecret_file = "{secret}"', "letters, digits"),
        (
            'node_name = "n1"\nnodes = ["n1@127.0.0.1:1"]\nsecret_file = "{secret}"\nheartbeat_ms = 400',
            "3 × heartbeat_ms",
        ),
        ('node_name = "n1"\nnodes = ["n1@127.0.0.1:1"]\nsecret_file = "{secret}"\npeer_tls = true', "peer_tls needs [tls]"),
    ],
)
def test_a_bad_cluster_section_stops_the_start_with_its_reason(tmp_path, body, expected):
    secret = tmp_path / "ok.secret"
    secret.write_text(SECRET)
    short = tmp_path / "short.secret"
    short.write_text("too-short\n")
    config = tmp_path / "junction.toml"
    config.write_text("[cluster]\nenabled = true\n" + body.format(secret=secret, short=short) + "\n")
    done = subprocess.run(
        [str(junction_bin()), "--config", str(config), "--data-dir", str(tmp_path / "data"),
         "--amqp-port", "0", "--mqtt-port", "0", "--stomp-port", "0", "--admin-port", "0",
         "--mqtt-ws-port", "0", "--stomp-ws-port", "0"],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )
    assert done.returncode != 0
    assert "junction ready" not in done.stdout
    assert expected in done.stderr, done.stderr


@pytest.fixture
def proxied_cluster(make_broker, tmp_path):
    """Three nodes whose every peer link crosses a FaultProxy: node X
    reaches node Y at `proxies[X, Y]`, which forwards to Y's listener."""
    secret = tmp_path / "cluster.secret"
    secret.write_text(SECRET)
    names = ["n1", "n2", "n3"]
    real = dict(zip(names, free_ports(3)))
    proxies = {(x, y): FaultProxy(real[y]) for x in names for y in names if x != y}
    brokers = []
    try:
        for x in names:
            members = [(y, real[y] if y == x else proxies[x, y].port) for y in names]
            b = make_broker(extra_config=cluster_toml(x, members, secret))
            b.name = x
            brokers.append(b)
        yield brokers, proxies
    finally:
        for p in proxies.values():
            p.close()


def settled(brokers):
    """Wait for one agreed leader with every member caught up; the
    leader's name and its broker."""
    names = [b.name for b in brokers]
    wait_for("one agreed leader", lambda: agreed_leader(brokers, names))
    leader = leader_of(brokers[0])
    return leader, next(b for b in brokers if f"junction@{b.name}" == leader)


def links_of(proxies, name):
    """Every proxy on a link to or from `name`."""
    return [p for (x, y), p in proxies.items() if name in (x, y)]


@pytest.mark.deadline(180)
def test_a_partitioned_leader_loses_the_group_and_follows_after_the_heal(proxied_cluster):
    brokers, proxies = proxied_cluster
    names = [b.name for b in brokers]
    leader, old = settled(brokers)
    # Every pair's link crosses a proxy (the lower id dials, so one of the
    # two directions carries it).
    for x in names:
        for y in names:
            if x < y:
                assert proxies[x, y].accepted + proxies[y, x].accepted >= 1, (x, y)

    # Black-hole every link of the leader: the other two elect one of
    # themselves; the old leader cannot learn of it.
    for p in links_of(proxies, old.name):
        p.blackhole()
    survivors = [b for b in brokers if b is not old]
    wait_for(
        "a new leader on the majority side",
        lambda: agreed_leader(survivors, [b.name for b in survivors]),
    )
    second = leader_of(survivors[0])
    assert second != leader
    assert leader_of(old) != second
    majority_term = own(survivors[0])["cluster"]["term"]
    assert own(old)["cluster"]["term"] < majority_term

    # Healed: the old leader hears the higher term and follows.
    for p in links_of(proxies, old.name):
        p.heal()
    wait_for("all three together again", lambda: agreed_leader(brokers, names))
    assert own(old)["cluster"]["role"] == "follower"
    assert own(old)["cluster"]["term"] >= majority_term


@pytest.mark.deadline(180)
def test_a_follower_cut_off_shows_not_running_and_catches_up_after(proxied_cluster):
    brokers, proxies = proxied_cluster
    names = [b.name for b in brokers]
    leader, head = settled(brokers)
    follower = next(b for b in brokers if b is not head)

    # Cut: its links close and no new one gets through. The leader sees it
    # gone and keeps its majority with the third node.
    for p in links_of(proxies, follower.name):
        p.cut()

    def gone():
        entry = next(n for n in nodes(head) if n["name"] == f"junction@{follower.name}")
        return entry["running"] is False or entry
    wait_for("the cut node shown not running", gone)
    assert leader_of(head) == leader
    # Slow links elsewhere do not unseat the leader either.
    for p in proxies.values():
        if p.mode == "pass":
            p.slow(0.02)
    time.sleep(2)
    assert leader_of(head) == leader

    # Healed: it links again and catches up. (While cut off it stood for
    # election in ever higher terms, so its return may start one more
    # election: openraft 0.9 has no pre-vote. Any agreed leader will do.)
    for p in proxies.values():
        p.heal()
    wait_for("the follower linked and caught up", lambda: agreed_leader(brokers, names))


@pytest.mark.deadline(180)
def test_a_paused_leader_is_replaced_and_follows_when_it_resumes(make_broker, tmp_path):
    brokers = three_nodes(make_broker, tmp_path)
    names = [b.name for b in brokers]
    leader, paused = settled(brokers)
    survivors = [b for b in brokers if b is not paused]

    # SIGSTOP: the process holds its sockets but answers nothing. The
    # others stop hearing it, elect one of themselves, and drop its links.
    os.kill(paused.proc.pid, signal.SIGSTOP)
    try:
        wait_for(
            "a new leader while the old one is paused",
            lambda: agreed_leader(survivors, [b.name for b in survivors]),
        )
        second = leader_of(survivors[0])
        assert second != leader
        on_second = next(b for b in survivors if f"junction@{b.name}" == second)

        def dropped():
            entry = next(n for n in nodes(on_second) if n["name"] == leader)
            return entry["running"] is False or entry

        wait_for("the paused node's links dropped", dropped)
    finally:
        os.kill(paused.proc.pid, signal.SIGCONT)

    # SIGCONT: it wakes in its old term, hears the new one and follows.
    def rejoined():
        agreed = agreed_leader(brokers, names)
        if agreed is not True:
            return agreed
        mine = own(paused)["cluster"]
        return mine["role"] == "follower" or mine
    wait_for("the resumed node following", rejoined)
