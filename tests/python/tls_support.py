"""Certificates for the TLS tests, made with the `openssl` command (as
docs/security.md tells an operator to), and a fixture for a broker with
TLS listeners.

`certs` (session scope) holds, under one temporary directory:
- `ca.pem` / `ca.key`: the test CA;
- `server.pem` / `server.key`: signed by it, for `localhost` and 127.0.0.1;
- `client.pem` / `client.key`: signed by it, CN `tls-user`;
- `other-ca.pem` and `other-client.pem` / `other-client.key`: a second CA
  and a client it signed (the "wrong CA");
- `server-2.pem` / `server-2.key`: another server certificate from the same
  CA (CN `junction-2`), for reload tests;
- `revoked-client.pem` / `.key`: signed by the CA and revoked in `crl.pem`
  (made with `openssl ca -revoke` and `-gencrl`);
- `expired-client.pem` / `.key`: signed by the CA, valid in 2020 only;
- `stranger-client.pem` / `.key`: signed by the CA, CN `stranger` (a user
  the broker does not know);
- `san-client.pem` / `.key`: CN `san-user`, with subject alternative names
  DNS `a.plant.example`, DNS `b.plant.example`, email
  `device-7@plant.example`.

`make_tls_broker(verify=..., tls_options=[...])` starts a broker whose
`amqps`, `mqtts` and `stomps` listeners take any free port; `tls_context()`
makes a Python ssl context that trusts the test CA, with an optional
client certificate.
"""

import socket
import ssl
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from broker_support import Broker


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _ca(d, name, cn):
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-subj", f"/CN={cn}", "-keyout", f"{name}.key", "-out", f"{name}.pem",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)


def _leaf(d, name, ca, cn, ext):
    """A key and a certificate signed by `ca`; `ext` is the extensions file's
    body (SANs, key usage)."""
    (Path(d) / f"{name}.ext").write_text(ext)
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-subj", f"/CN={cn}", "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext",
             "-out", f"{name}.pem", cwd=d)


SERVER_EXT = (
    "basicConstraints=CA:FALSE\n"
    "keyUsage=critical,digitalSignature\n"
    "extendedKeyUsage=serverAuth\n"
    "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
)
CLIENT_EXT = (
    "basicConstraints=CA:FALSE\n"
    "keyUsage=critical,digitalSignature\n"
    "extendedKeyUsage=clientAuth\n"
)


CA_CONFIG = """[ ca ]
default_ca = test_ca
[ test_ca ]
dir = .
database = index.txt
new_certs_dir = .
certificate = ca.pem
private_key = ca.key
serial = ca-db.srl
crlnumber = crlnumber
default_md = sha256
default_crl_days = 2
unique_subject = no
policy = any_name
[ any_name ]
commonName = supplied
"""


def _revoke_and_crl(d, name):
    """Revokes `name`.pem in the CA's database and writes `crl.pem`."""
    (Path(d) / "ca.cnf").write_text(CA_CONFIG)
    (Path(d) / "index.txt").touch()
    (Path(d) / "crlnumber").write_text("01\n")
    # `openssl ca`'s own serials: apart from the random ones `x509 -req` gave.
    (Path(d) / "ca-db.srl").write_text("1000\n")
    _openssl("ca", "-config", "ca.cnf", "-revoke", f"{name}.pem", cwd=d)
    _openssl("ca", "-config", "ca.cnf", "-gencrl", "-out", "crl.pem", cwd=d)


def _expired_leaf(d, name, cn):
    """A client certificate from the CA that expired in 2020."""
    (Path(d) / f"{name}.ext").write_text(CLIENT_EXT)
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-subj", f"/CN={cn}", "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d)
    _openssl("ca", "-config", "ca.cnf", "-batch", "-notext", "-in", f"{name}.csr",
             "-startdate", "20200101000000Z", "-enddate", "20200102000000Z",
             "-extfile", f"{name}.ext", "-out", f"{name}.pem", cwd=d)


@pytest.fixture(scope="session")
def certs(tmp_path_factory):
    d = tmp_path_factory.mktemp("certs")
    _ca(d, "ca", "Junction test CA")
    _ca(d, "other-ca", "Some other CA")
    _leaf(d, "server", "ca", "junction", SERVER_EXT)
    _leaf(d, "server-2", "ca", "junction-2", SERVER_EXT)
    _leaf(d, "client", "ca", "tls-user", CLIENT_EXT)
    _leaf(d, "other-client", "other-ca", "tls-user", CLIENT_EXT)
    _leaf(d, "revoked-client", "ca", "tls-user", CLIENT_EXT)
    _revoke_and_crl(d, "revoked-client")
    _expired_leaf(d, "expired-client", "tls-user")
    _leaf(d, "stranger-client", "ca", "stranger", CLIENT_EXT)
    _leaf(d, "san-client", "ca", "san-user", CLIENT_EXT + (
        "subjectAltName=DNS:a.plant.example,DNS:b.plant.example,email:device-7@plant.example\n"
    ))
    leaves = (
        "server", "server-2", "client", "other-client", "revoked-client", "expired-client",
        "stranger-client", "san-client",
    )
    return SimpleNamespace(
        dir=d,
        crl=d / "crl.pem",
        **{n.replace("-", "_"): d / f"{n}.pem" for n in ("ca", "other-ca") + leaves},
        **{n.replace("-", "_") + "_key": d / f"{n}.key" for n in leaves},
    )


def tls_context(certs, client=None, key=None, maximum=None):
    """A client ssl context trusting the test CA (and checking the host
    name 127.0.0.1 against the server certificate); `client`/`key`: the
    client certificate to show; `maximum`: the newest TLS version."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(certs.ca))
    if client is not None:
        ctx.load_cert_chain(str(client), str(key))
    if maximum is not None:
        ctx.maximum_version = maximum
    return ctx


def tls_connect(port, ctx, timeout=5.0):
    """A TLS socket to 127.0.0.1:`port` (handshake done), or the ssl error."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        return ctx.wrap_socket(raw, server_hostname="127.0.0.1")
    except Exception:
        raw.close()
        raise


@pytest.fixture
def make_tls_broker(tmp_path, certs):
    made = []

    def make(
        verify="none", tls_options=(), cert=None, key=None, crl=None, users=(), vhosts=None,
        broker_options=(), stomp_options=(),
    ):
        """`users`: (name, password, [vhosts]) added before the start;
        `vhosts`: the broker's vhosts (default: just "/");
        `broker_options` / `stomp_options`: `key = value` lines for
        [broker] / [stomp]."""
        n = len(made)
        args = [
            "--tls-cert", str(cert or certs.server), "--tls-key", str(key or certs.server_key),
            "--tls-ca", str(certs.ca), "--tls-verify", verify,
            "--amqps-port", "0", "--mqtts-port", "0", "--stomps-port", "0",
            "--https-port", "0", "--mqtt-wss-port", "0", "--stomp-wss-port", "0",
        ]
        if crl is not None:
            args += ["--tls-crl", str(crl)]
        config = None
        broker_lines = list(broker_options)
        if vhosts:
            broker_lines.append("vhosts = [%s]" % ", ".join(f'"{v}"' for v in vhosts))
        if tls_options or broker_lines or stomp_options:
            config = tmp_path / f"tls-{n}.toml"
            text = "[tls]\n" + "\n".join(tls_options) + "\n"
            text += "[broker]\n" + "\n".join(broker_lines) + "\n"
            text += "[stomp]\n" + "\n".join(stomp_options) + "\n"
            config.write_text(text)
        b = Broker(tmp_path / f"tls-data-{n}", config, extra_args=args)
        made.append(b)
        for name, password, user_vhosts in users:
            b.add_user(name, password, user_vhosts)
        return b.start()

    yield make
    for b in made:
        b.stop()
