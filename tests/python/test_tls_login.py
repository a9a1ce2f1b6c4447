"""Logging in with a TLS client certificate: AMQP's EXTERNAL mechanism
(pika), MQTT (paho) and STOMP (stomp.py) without a password. The user is
the certificate's Common Name (`[tls] login_name`, or the whole subject);
it must exist, and what it may do is that user's: a user allowed only
vhost `iot` gets `iot` and nothing else, which shows the broker took the
certificate's user and not the client's word.
"""

import pika
import pytest

from mqtt_support import V5, V311
from mqtt_support import clients  # noqa: F401 (fixture)
from stomp_support import Client as StompClient
from stomp_support import uid
from tls_support import certs, make_tls_broker, tls_context  # noqa: F401 (fixtures)


def amqps_external(broker, ctx, vhost="/"):
    params = pika.ConnectionParameters(
        "127.0.0.1",
        broker.ports["amqps"],
        virtual_host=vhost,
        credentials=pika.credentials.ExternalCredentials(),
        ssl_options=pika.SSLOptions(ctx, server_hostname="127.0.0.1"),
        connection_attempts=1,
        socket_timeout=5,
    )
    return pika.BlockingConnection(params)


def client_ctx(certs, name="client"):
    return tls_context(certs, getattr(certs, name), getattr(certs, name + "_key"))


def stomps(broker, certs, name="client", vhost="/"):
    ssl_args = {
        "ca_certs": str(certs.ca),
        "cert_file": str(getattr(certs, name)),
        "key_file": str(getattr(certs, name + "_key")),
    }
    return StompClient(broker, port=broker.ports["stomps"], ssl=ssl_args, vhost=vhost)


def test_amqp_external_logs_in_as_the_certificate_user(make_tls_broker, certs):
    b = make_tls_broker(verify="optional", users=[("tls-user", "secret-pw", ["/"])])
    conn = amqps_external(b, client_ctx(certs))
    try:
        ch = conn.channel()
        q = uid("q")
        ch.queue_declare(q)
        # user_id must be the logged-in user (RabbitMQ's rule): it is tls-user.
        ch.basic_publish("", q, b"mine", pika.BasicProperties(user_id="tls-user"))
        method, props, body = ch.basic_get(q, auto_ack=True)
        assert (body, props.user_id) == (b"mine", "tls-user")
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
            ch.basic_publish("", q, b"not mine", pika.BasicProperties(user_id="guest"))
            ch.basic_get(q)
        assert e.value.reply_code == 406
    finally:
        if conn.is_open:
            conn.close()


def test_amqp_external_is_refused_without_a_certificate_or_for_an_unknown_user(
    make_tls_broker, certs
):
    b = make_tls_broker(verify="optional", users=[("tls-user", "secret-pw", ["/"])])
    # No certificate: EXTERNAL is not even offered.
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        amqps_external(b, tls_context(certs))
    # A valid certificate for a user the broker does not know.
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        amqps_external(b, client_ctx(certs, "stranger_client"))
    # Passwords still work on the same listener.
    conn = pika.BlockingConnection(
        pika.ConnectionParameters(
            "127.0.0.1",
            b.ports["amqps"],
            credentials=pika.PlainCredentials("tls-user", "secret-pw"),
            ssl_options=pika.SSLOptions(tls_context(certs), server_hostname="127.0.0.1"),
        )
    )
    conn.close()


def test_the_certificate_user_gets_its_own_vhosts_only(make_tls_broker, certs, clients):
    b = make_tls_broker(
        verify="optional", users=[("tls-user", "secret-pw", ["iot"])], vhosts=["/", "iot"]
    )
    amqps_external(b, client_ctx(certs), vhost="iot").close()
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        amqps_external(b, client_ctx(certs), vhost="/")
    # STOMP: the host header picks the vhost.
    s = stomps(b, certs, vhost="iot")
    try:
        assert s.connect(login=None).cmd == "CONNECTED"
    finally:
        s.close()
    s = stomps(b, certs, vhost="/")
    try:
        f = s.connect(login=None)
        assert (f.cmd, f.headers["message"]) == ("ERROR", "access_refused"), f
        assert b"user 'tls-user' may not use virtual host '/'" in f.body, f.body
    finally:
        s.close()
    # MQTT lives in vhost "/": tls-user may not, whatever user name it gives.
    for version in (V311, V5):
        c = clients.new(
            b, version=version, port=b.ports["mqtts"], tls=client_ctx(certs), username="guest"
        )
        ack = c.connect()
        assert ack is not None and ack.reason in (5, 0x87), ack


@pytest.mark.parametrize("version", [V311, V5])
def test_mqtt_without_a_password_logs_in_by_certificate(make_tls_broker, certs, clients, version):
    b = make_tls_broker(verify="optional", users=[("tls-user", "secret-pw", ["/"])])
    topic = uid("t") + "/cert"
    dev = clients.connect(b, version=version, port=b.ports["mqtts"], tls=client_ctx(certs))
    assert dev.subscribe(topic, qos=1) == [1]
    assert dev.publish(topic, b"by certificate", qos=1) == 0
    (m,) = dev.wait_messages(1)
    assert m.payload == b"by certificate"
    stranger = clients.new(
        b, version=version, port=b.ports["mqtts"], tls=client_ctx(certs, "stranger_client")
    )
    ack = stranger.connect()
    assert ack is not None and ack.reason in (5, 0x87), ack


def test_stomp_without_a_passcode_logs_in_by_certificate(make_tls_broker, certs):
    b = make_tls_broker(verify="optional", users=[("tls-user", "secret-pw", ["/"])])
    s = stomps(b, certs)
    try:
        assert s.connect(login=None).cmd == "CONNECTED"
        q = uid("q")
        s.subscribe(f"/queue/{q}")
        s.send(f"/queue/{q}", b"stomp by certificate", receipt=True)
        (m,) = s.exactly(1)
        assert m.body == b"stomp by certificate"
    finally:
        s.close()
    s = stomps(b, certs, name="stranger_client")
    try:
        f = s.connect(login=None)
        assert f.cmd == "ERROR", f
    finally:
        s.close()


def test_login_name_distinguished_name(make_tls_broker, certs):
    b = make_tls_broker(
        verify="required",
        tls_options=['login_name = "distinguished_name"'],
        users=[("CN=tls-user", "secret-pw", ["/"])],
    )
    conn = amqps_external(b, client_ctx(certs))
    try:
        ch = conn.channel()
        ch.queue_declare("dn")
        ch.basic_publish("", "dn", b"x", pika.BasicProperties(user_id="CN=tls-user"))
        assert ch.basic_get("dn", auto_ack=True)[2] == b"x"
    finally:
        conn.close()


@pytest.mark.parametrize(
    "san_type, index, user",
    [("dns", 1, "b.plant.example"), ("email", 0, "device-7@plant.example")],
)
def test_login_name_subject_alternative_name(make_tls_broker, certs, san_type, index, user):
    b = make_tls_broker(
        verify="required",
        tls_options=[
            'login_name = "subject_alternative_name"',
            f'login_san_type = "{san_type}"',
            f"login_san_index = {index}",
        ],
        users=[(user, "secret-pw", ["/"])],
    )
    conn = amqps_external(b, client_ctx(certs, "san_client"))
    try:
        ch = conn.channel()
        ch.queue_declare("san")
        ch.basic_publish("", "san", b"x", pika.BasicProperties(user_id=user))
        assert ch.basic_get("san", auto_ack=True)[2] == b"x"
    finally:
        conn.close()
    # The Common Name is not the user here.
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        amqps_external(b, client_ctx(certs))
