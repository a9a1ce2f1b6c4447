"""TLS on the cluster's peer links (`[cluster] peer_tls`, docs/cluster.md
"Peer links"), with three real `junction` processes: each node shows its
`[tls] cert` on both ends of its links and checks the other's against
`[tls] ca`. The cluster forms and a message published on one node is
consumed on another (pika, across the links); the peer listener speaks
TLS 1.3 only, refuses a client without a certificate or with one another
CA signed, and answers a caller with a good certificate with the secret
handshake's challenge inside TLS; a node whose certificate another CA
signed, or that the cluster's CA signed for another address, never
links, while the other two form a majority. Certificates are made with
the `openssl` command, as docs/security.md tells an operator."""

import socket
import ssl
import struct

import pika
import pytest

from admin_support import api
from test_cluster import SECRET, agreed_leader, cluster_toml, free_ports, nodes, own, wait_for
from test_cluster_topology import amqp
from tls_support import _ca, _leaf

# A peer's certificate: used as a server's and as a client's, and naming
# the IP address the others dial.
PEER_EXT = (
    "basicConstraints=CA:FALSE\n"
    "keyUsage=critical,digitalSignature\n"
    "extendedKeyUsage=serverAuth,clientAuth\n"
    "subjectAltName=IP:127.0.0.1\n"
)


@pytest.fixture(scope="module")
def peer_certs(tmp_path_factory):
    d = tmp_path_factory.mktemp("peer-certs")
    _ca(d, "ca", "Junction cluster CA")
    _ca(d, "rogue-ca", "Some other CA")
    for n in ("n1", "n2", "n3"):
        _leaf(d, n, "ca", f"junction-{n}", PEER_EXT)
    _leaf(d, "rogue", "rogue-ca", "junction-n3", PEER_EXT)
    # The right CA, the wrong address.
    _leaf(d, "wrong-ip", "ca", "junction-n1", PEER_EXT.replace("127.0.0.1", "127.0.0.9"))
    return d


def tls_cluster_toml(name, members, secret, cert_dir, cert):
    return (
        cluster_toml(name, members, secret)
        + "peer_tls = true\n"
        "[tls]\n"
        f'cert = "{cert_dir / (cert + ".pem")}"\n'
        f'key = "{cert_dir / (cert + ".key")}"\n'
        f'ca = "{cert_dir / "ca.pem"}"\n'
        # Client-facing TLS listeners on any free port (three nodes here).
        "amqps_port = 0\nmqtts_port = 0\nstomps_port = 0\nhttps_port = 0\n"
        "mqtt_wss_port = 0\nstomp_wss_port = 0\n"
    )


def tls_nodes(make_broker, tmp_path, peer_certs, certs=("n1", "n2", "n3")):
    """n1, n2, n3 with `peer_tls`; node i shows certificate `certs[i]`."""
    secret = tmp_path / "cluster.secret"
    secret.write_text(SECRET)
    names = ["n1", "n2", "n3"]
    members = list(zip(names, free_ports(3)))
    brokers = []
    for (name, port), cert in zip(members, certs):
        b = make_broker(extra_config=tls_cluster_toml(name, members, secret, peer_certs, cert))
        b.name = name
        assert b.ports["cluster"] == port, b.ports
        brokers.append(b)
    return brokers


def queue_names(b):
    status, body, _ = api(b, "GET", "/api/queues/%2F")
    assert status == 200, (status, body)
    return {q["name"] for q in body}


def peer_context(peer_certs, cert=None):
    """A client context for a peer listener: trusts the cluster CA, checks
    the name 127.0.0.1, shows `cert` (none: no certificate)."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(peer_certs / "ca.pem"))
    if cert is not None:
        ctx.load_cert_chain(str(peer_certs / f"{cert}.pem"), str(peer_certs / f"{cert}.key"))
    return ctx


def handshake_then_read(port, ctx, n):
    """TLS to the peer listener at `port`; then reads `n` bytes (TLS 1.3
    reports a refused client certificate on the first read)."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        tls = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
        data = b""
        while len(data) < n:
            chunk = tls.recv(n - len(data))
            if not chunk:
                break
            data += chunk
        return tls.version(), data
    finally:
        raw.close()


@pytest.mark.deadline(180)
def test_a_cluster_with_peer_tls_forms_and_carries_messages_and_its_listener_wants_a_certificate(
    make_broker, tmp_path, peer_certs
):
    brokers = tls_nodes(make_broker, tmp_path, peer_certs)
    n1, n2, n3 = brokers
    names = [b.name for b in brokers]
    wait_for("the cluster formed over TLS", lambda: agreed_leader(brokers, names), timeout=30)

    # A durable queue declared on n1, a message published on n2 (confirmed:
    # it crossed to n1), consumed on n3 (fetched from n1).
    conn = amqp(n1)
    conn.channel().queue_declare("over-tls", durable=True)
    conn.close()
    wait_for("the queue on every node", lambda: all("over-tls" in queue_names(b) for b in brokers))
    conn = amqp(n2)
    ch = conn.channel()
    ch.confirm_delivery()
    ch.basic_publish("", "over-tls", b"sealed", pika.BasicProperties(delivery_mode=2), mandatory=True)
    conn.close()
    conn = amqp(n3)
    ch = conn.channel()
    got = []

    def fetched():
        method, _, body = ch.basic_get("over-tls", auto_ack=True)
        if method is not None:
            got.append(body)
        return got == [b"sealed"] or got

    wait_for("the message on n3", fetched)
    conn.close()

    port = n1.ports["cluster"]
    # With a certificate the CA signed: TLS 1.3, then the secret
    # handshake's first frame (a length, then a challenge) inside it.
    version, data = handshake_then_read(port, peer_context(peer_certs, "n2"), 4)
    assert version == "TLSv1.3"
    assert len(data) == 4 and 0 < struct.unpack(">I", data)[0] <= 128, data
    # Without a certificate, or with another CA's: refused.
    for cert in (None, "rogue"):
        with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
            _, data = handshake_then_read(port, peer_context(peer_certs, cert), 4)
            # A close without an alert reads as nothing.
            if not data:
                raise ConnectionResetError("closed")
    # Plain TCP is not a link either: the listener answers a plaintext
    # "Hello" with a TLS alert (or a close), never a challenge frame.
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        raw.sendall(b"\x00\x00\x00\x05hello")
        answer = raw.recv(64)
    except ConnectionResetError:
        answer = b""
    finally:
        raw.close()
    assert answer == b"" or answer[0] == 0x15, answer

    # The cluster is unmoved by those callers.
    assert agreed_leader(brokers, names) is True


@pytest.mark.deadline(120)
@pytest.mark.parametrize(
    "certs, isolated, why",
    [
        # n3 (the highest id) is dialed by both: they refuse its certificate.
        (("n1", "n2", "rogue"), "n3", "peer handshake failed"),
        # n1 dials n3, which refuses its certificate (the cluster's CA
        # signed it, but for another address); n2 dials n1 and refuses the
        # same certificate as the acceptor's. (n2, the lowest id, starts
        # the group: it must stay.)
        (("wrong-ip", "n2", "n3"), "n1", "does not name its address"),
    ],
    ids=["another-ca", "another-address"],
)
def test_a_node_whose_certificate_is_not_its_own_never_links(
    make_broker, tmp_path, peer_certs, certs, isolated, why
):
    brokers = tls_nodes(make_broker, tmp_path, peer_certs, certs=certs)
    odd = next(b for b in brokers if b.name == isolated)
    pair = [b for b in brokers if b is not odd]
    # The other two are a majority and form; the odd one (same secret) is
    # never linked and never hears a leader.
    wait_for("the other two formed", lambda: agreed_leader(pair, [b.name for b in pair]), timeout=30)
    for b in pair:
        entry = next(n for n in nodes(b) if n["name"] == f"junction@{isolated}")
        assert entry["running"] is False, entry
    assert own(odd)["cluster"]["leader"] is None
    assert [n["running"] for n in nodes(odd) if "cluster" not in n] == [False, False]
    logs = "".join(b.log_tail(400) for b in brokers)
    assert why in logs, logs[-2000:]
