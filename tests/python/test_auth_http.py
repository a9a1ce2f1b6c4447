"""The HTTP authentication back-end (docs/security.md), in the style of
RabbitMQ's rabbitmq_auth_backend_http, against a small HTTP service this
test starts: what the broker asks (paths, parameters, GET and POST), allow
and deny, the answer cache, a chain of users file then HTTP, and a service
that is down or failing (fail closed). Clients are pika, paho-mqtt and
stomp.py.
"""

import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pika
import pytest

from mqtt_support import V5
from mqtt_support import clients  # noqa: F401 (fixture)
from stomp_support import Client as StompClient


class AuthService:
    """Answers like a rabbitmq_auth_backend_http service: `users` maps a
    name to its password, `vhosts` the vhosts every user may use, and
    `allow_resource(params)` / `allow_topic(params)` decide the rest.
    Every question is recorded as (path, params)."""

    def __init__(self):
        self.users = {"dev": "dev-pw"}
        self.vhosts = {"/"}
        self.allow_resource = lambda p: p["name"].startswith("dev.") or p["name"] in (
            "amq.default",
            "amq.topic",
        )
        self.allow_topic = lambda p: p["routing_key"].startswith(
            "devices." + p.get("variable_map.client_id", "")
        )
        self.status = 200
        self.asked = []
        self.lock = threading.Lock()
        service = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, params):
                path = urllib.parse.urlparse(self.path).path
                with service.lock:
                    service.asked.append((path, params))
                    status = service.status
                allow = service.decide(path, params)
                body = b"allow" if allow else b"deny"
                if path == "/auth/user" and allow:
                    body = b"allow management"
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                query = urllib.parse.urlparse(self.path).query
                self._answer(dict(urllib.parse.parse_qsl(query, keep_blank_values=True)))

            def do_POST(self):
                n = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(n).decode()
                assert self.headers.get("Content-Type") == "application/x-www-form-urlencoded"
                self._answer(dict(urllib.parse.parse_qsl(body, keep_blank_values=True)))

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def decide(self, path, p):
        if path == "/auth/user":
            return self.users.get(p.get("username")) == p.get("password")
        if path == "/auth/vhost":
            return p.get("vhost") in self.vhosts
        if path == "/auth/resource":
            return self.allow_resource(p)
        if path == "/auth/topic":
            return self.allow_topic(p)
        return False

    def questions(self, path):
        with self.lock:
            return [p for (q, p) in self.asked if q == path]

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def service():
    s = AuthService()
    yield s
    s.stop()


def auth_config(service, backends='["http"]', method="get", ttl=0, topic=True):
    url = f"http://127.0.0.1:{service.port}/auth"
    return (
        f"[auth]\nbackends = {backends}\n"
        f"[auth.http]\n"
        f'user_path = "{url}/user"\n'
        f'vhost_path = "{url}/vhost"\n'
        f'resource_path = "{url}/resource"\n'
        + (f'topic_path = "{url}/topic"\n' if topic else "")
        + f'method = "{method}"\ncache_ttl_secs = {ttl}\ntimeout_ms = 2000\n'
    )


def refused(callable_, *args, **kw):
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        callable_(*args, **kw)
    assert e.value.reply_code == 403, e.value
    return e.value.reply_text


@pytest.mark.parametrize("method", ["get", "post"])
def test_allow_and_deny_with_the_questions_rabbitmq_asks(make_broker, service, method):
    b = make_broker(extra_config=auth_config(service, method=method))
    conn = b.connect(user="dev", password="dev-pw")
    ch = conn.channel()
    ch.queue_declare("dev.q")
    assert "configure access to queue 'other.q'" in refused(conn.channel().queue_declare, "other.q")
    ch.confirm_delivery()
    ch.basic_publish("", "dev.q", b"hello")
    assert ch.basic_get("dev.q", auto_ack=True)[2] == b"hello"
    conn.close()
    assert service.questions("/auth/user") == [{"username": "dev", "password": "dev-pw"}]
    assert service.questions("/auth/vhost") == [
        {"username": "dev", "vhost": "/", "ip": "127.0.0.1"}
    ]
    resource = service.questions("/auth/resource")
    assert {
        "username": "dev",
        "vhost": "/",
        "resource": "queue",
        "name": "other.q",
        "permission": "configure",
    } in resource
    assert {
        "username": "dev",
        "vhost": "/",
        "resource": "exchange",
        "name": "amq.default",
        "permission": "write",
    } in resource
    assert {
        "username": "dev",
        "vhost": "/",
        "resource": "queue",
        "name": "dev.q",
        "permission": "read",
    } in resource
    # A wrong password and an unknown user are refused at login.
    for user, pw in (("dev", "wrong"), ("nobody", "x")):
        with pytest.raises(pika.exceptions.ProbableAuthenticationError):
            b.connect(user=user, password=pw)


def test_topic_questions_carry_the_routing_key_and_variables(make_broker, service, clients):
    b = make_broker(extra_config=auth_config(service))
    c = clients.connect(b, version=V5, client_id="d7", username="dev", password="dev-pw")
    assert c.subscribe("devices/d7/#", "devices/d8/#", qos=1) == [1, 0x87]
    assert c.publish("devices/d7/temp", b"21", qos=1) == 0
    assert c.publish("devices/d8/temp", b"22", qos=1) == 0x87
    got = c.wait_messages(1)
    assert [(m.topic, m.payload) for m in got] == [("devices/d7/temp", b"21")]
    topic = service.questions("/auth/topic")
    assert {
        "username": "dev",
        "vhost": "/",
        "resource": "topic",
        "name": "amq.topic",
        "permission": "write",
        "routing_key": "devices.d8.temp",
        "variable_map.username": "dev",
        "variable_map.vhost": "/",
        "variable_map.client_id": "d7",
    } in topic
    assert {
        "username": "dev",
        "vhost": "/",
        "resource": "topic",
        "name": "amq.topic",
        "permission": "read",
        "routing_key": "devices.d7.#",
        "variable_map.username": "dev",
        "variable_map.vhost": "/",
        "variable_map.client_id": "d7",
    } in topic


def test_answers_are_cached_for_the_ttl(make_broker, service):
    b = make_broker(extra_config=auth_config(service, ttl=3))
    for _ in range(3):
        conn = b.connect(user="dev", password="dev-pw")
        conn.channel().queue_declare("dev.q")
        conn.close()
    # Three logins, three declares: one question each while cached.
    assert len(service.questions("/auth/user")) == 1
    assert len(service.questions("/auth/vhost")) == 1
    declares = [p for p in service.questions("/auth/resource") if p["name"] == "dev.q"]
    assert len(declares) == 1, declares
    # A denial is cached too: when the service changes its mind, the
    # broker's answer follows only once the entry expires.
    conn = b.connect(user="dev", password="dev-pw")
    assert "configure access to queue 'x.q'" in refused(conn.channel().queue_declare, "x.q")
    service.allow_resource = lambda p: True
    assert "configure access to queue 'x.q'" in refused(conn.channel().queue_declare, "x.q")
    asked_x = [p for p in service.questions("/auth/resource") if p["name"] == "x.q"]
    assert len(asked_x) == 1, asked_x
    time.sleep(3.2)
    conn.channel().queue_declare("x.q")
    conn.close()
    asked_x = [p for p in service.questions("/auth/resource") if p["name"] == "x.q"]
    assert len(asked_x) == 2, asked_x


def test_a_failing_or_stopped_service_denies(make_broker, service, clients):
    b = make_broker(extra_config=auth_config(service))
    conn = b.connect(user="dev", password="dev-pw")
    ch = conn.channel()
    ch.queue_declare("dev.q")
    # Anything but 200/201 is a refusal, whatever the body says.
    service.status = 500
    assert "configure access to queue 'dev.q2'" in refused(conn.channel().queue_declare, "dev.q2")
    with pytest.raises(pika.exceptions.ProbableAuthenticationError):
        b.connect(user="dev", password="dev-pw")
    service.status = 201
    conn.channel().queue_declare("dev.q3")
    # Down altogether: refused, and nothing else is disturbed.
    service.stop()
    assert "configure access to queue 'dev.q4'" in refused(conn.channel().queue_declare, "dev.q4")
    with pytest.raises(pika.exceptions.ProbableAuthenticationError):
        b.connect(user="dev", password="dev-pw")
    m = clients.new(b, version=V5, username="dev", password="dev-pw")
    assert m.connect().reason == 0x86  # bad user name or password
    assert conn.is_open
    conn.close()
    b.terminate()


def test_a_chain_asks_the_users_file_first_then_the_service(make_broker, service):
    b = make_broker(
        users=[("filed", "filed-pw", ["/"])],
        extra_config=auth_config(service, backends='["file", "http"]'),
    )
    # guest and filed are the users file's: the service is never asked
    # about them, and their permissions are the file's (.* on /).
    g = b.connect()
    g.channel().queue_declare("guest.q")
    g.close()
    f = b.connect(user="filed", password="filed-pw")
    f.channel().queue_declare("anything.q")
    f.close()
    assert service.questions("/auth/user") == []
    assert service.questions("/auth/resource") == []
    # dev is the service's: asked there, and its permissions come from
    # there too.
    d = b.connect(user="dev", password="dev-pw")
    assert "configure access to queue 'anything2.q'" in refused(
        d.channel().queue_declare, "anything2.q"
    )
    d.close()
    assert [p["username"] for p in service.questions("/auth/user")] == ["dev"]
    # STOMP logs in through the same chain.
    s = StompClient(b)
    s.connected(login="dev", passcode="dev-pw")
    s.send("/queue/dev.s", "via stomp", receipt=True)
    s.close()
