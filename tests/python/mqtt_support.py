"""Helpers shared by the MQTT tests.

- `Client`: a paho-mqtt 2.x client on its own network thread, with bounded
  waits for CONNACK, SUBACK, UNSUBACK and publish acknowledgements and a
  thread-safe inbox of received messages (`wait_messages(n)`).
- `RawClient`: a hand-written MQTT client on a plain socket, for what paho
  will not do (or hides): exact CONNACK return codes, packets the broker
  must refuse, stopping between PUBREC and PUBREL, not acknowledging a
  delivery, resolving broker-assigned topic aliases. Packets are built from
  the layouts of MQTT 3.1.1 section 2-3 and MQTT 5.0 section 2-3.
- `clients`: a fixture that makes both kinds and closes them at teardown
  (import it into a test module: `from mqtt_support import clients`).
- `assert_broker_serves`, `connected`, `assert_closed_with`: a fresh client
  is still served; a connected `RawClient`; how the broker closed one.

Every wait is bounded (`TIMEOUT` unless told); a wait that runs out fails
the test with what did arrive.
"""

import socket
import struct
import threading
import time
import uuid
from collections import namedtuple

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from net_support import tcp_connect, wait_until  # noqa: F401 (re-exported)

V31, V311, V5 = mqtt.MQTTv31, mqtt.MQTTv311, mqtt.MQTTv5
VERSION_NAMES = {V31: "v31", V311: "v311", V5: "v5"}
ALL_VERSIONS = pytest.mark.parametrize("version", [V31, V311, V5], ids=lambda v: VERSION_NAMES[v])
TIMEOUT = 5.0


def uid(prefix="t"):
    """A short name no other test uses (topic levels, client ids: MQTT 3.1
    allows at most 23 characters in a client id)."""
    return prefix + uuid.uuid4().hex[:14]


def props_dict(p):
    """paho `Properties` → {"ContentType": ..., "UserProperty": [(k, v)...]}
    with only the properties present; {} for None."""
    if p is None:
        return {}
    out = {}
    for name in p.names:
        attr = name.replace(" ", "")
        if hasattr(p, attr):
            out[attr] = getattr(p, attr)
    return out


def make_props(packet_type, props):
    """{"ContentType": "x", "UserProperty": [("k", "v")]} → paho
    `Properties` of `packet_type`; None for an empty dict."""
    if not props:
        return None
    p = Properties(packet_type)
    for name, value in props.items():
        setattr(p, name, value)
    return p


def persistent(version, expiry=300):
    """`Client` arguments for a session that outlives the connection: clean
    session 0 (v3), clean start 0 with Session Expiry Interval (v5)."""
    return {"clean": False, "session_expiry": expiry if version == V5 else None}


Msg = namedtuple("Msg", "topic payload qos retain dup props")
Connack = namedtuple("Connack", "session_present reason props")
Disconnected = namedtuple("Disconnected", "by_server reason props")


class Client:
    """One paho connection. Construct, then `connect()`; or use
    `clients.connect(broker, ...)`. A client object is one connection: to
    reconnect a client id, make a new `Client` with that id.

    `version`: V31, V311 or V5. `clean`: clean session (v3) / clean start
    (v5). `session_expiry`: v5 Session Expiry Interval (None: absent).
    `will`: dict(topic, payload, qos, retain, props) where props is a dict
    of v5 will properties. `connect_props`: other v5 CONNECT properties."""

    def __init__(
        self,
        broker,
        client_id=None,
        version=V311,
        clean=True,
        username=None,
        password=None,
        keepalive=60,
        will=None,
        session_expiry=None,
        connect_props=None,
        port=None,
        tls=None,
        ws_path=None,
        ws_headers=None,
    ):
        self.broker = broker
        # `port`: another listener than the broker's MQTT one (mqtts);
        # `tls`: an ssl.SSLContext for it. `ws_path`: MQTT over WebSocket
        # at that path (the broker's mqtt-ws listener unless `port` says
        # otherwise), with `ws_headers` in the upgrade request.
        self.ws_path = ws_path
        if port is None and ws_path is not None:
            port = broker.ports["mqtt-ws"]
        self.port = port
        self.client_id = uid("c") if client_id is None else client_id
        self.version = version
        self.clean = clean
        self.keepalive = keepalive
        self.session_expiry = session_expiry
        self.connect_props = dict(connect_props or {})
        self.messages = []
        self.connack = None
        self.disconnected = None
        self._cond = threading.Condition()
        self._subacks, self._unsubacks, self._acks = {}, {}, {}
        kw = {} if version == V5 else {"clean_session": clean}
        self.paho = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=version,
            reconnect_on_failure=False,
            transport="tcp" if ws_path is None else "websockets",
            **kw,
        )
        if ws_path is not None:
            self.paho.ws_set_options(path=ws_path, headers=ws_headers)
        if tls is not None:
            self.paho.tls_set_context(tls)
        self.paho.on_connect = self._on_connect
        self.paho.on_disconnect = self._on_disconnect
        self.paho.on_message = self._on_message
        self.paho.on_subscribe = self._on_subscribe
        self.paho.on_unsubscribe = self._on_unsubscribe
        self.paho.on_publish = self._on_publish
        if username is not None:
            self.paho.username_pw_set(username, password)
        if will is not None:
            w = dict(will)
            self.paho.will_set(
                w["topic"],
                w.get("payload"),
                w.get("qos", 0),
                w.get("retain", False),
                make_props(PacketTypes.WILLMESSAGE, w.get("props")),
            )
        self._started = False

    # paho callbacks (network thread) ---------------------------------------

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        with self._cond:
            self.connack = Connack(
                bool(flags.session_present), reason_code.value, props_dict(properties)
            )
            self._cond.notify_all()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        with self._cond:
            self.disconnected = Disconnected(
                flags.is_disconnect_packet_from_server,
                reason_code.value if reason_code is not None else None,
                props_dict(properties),
            )
            self._cond.notify_all()

    def _on_message(self, client, userdata, m):
        msg = Msg(m.topic, m.payload, m.qos, bool(m.retain), bool(m.dup), props_dict(m.properties))
        with self._cond:
            self.messages.append(msg)
            self._cond.notify_all()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        with self._cond:
            self._subacks[mid] = [rc.value for rc in reason_codes]
            self._cond.notify_all()

    def _on_unsubscribe(self, client, userdata, mid, reason_codes, properties):
        with self._cond:
            self._unsubacks[mid] = [rc.value for rc in reason_codes]
            self._cond.notify_all()

    def _on_publish(self, client, userdata, mid, reason_code, properties):
        with self._cond:
            self._acks[mid] = reason_code.value if reason_code is not None else None
            self._cond.notify_all()

    # waiting ------------------------------------------------------------------

    def _wait(self, predicate, timeout, what):
        with self._cond:
            ok = self._cond.wait_for(predicate, timeout)
        assert ok, f"{self.client_id}: no {what} within {timeout} s"

    # connection ---------------------------------------------------------------

    def connect(self, timeout=TIMEOUT):
        """Sends CONNECT and waits for CONNACK (or for the broker closing
        the connection); returns the `Connack` (None if the broker closed
        without one)."""
        kw = {}
        if self.version == V5:
            props = dict(self.connect_props)
            if self.session_expiry is not None:
                props["SessionExpiryInterval"] = self.session_expiry
            kw = {"clean_start": self.clean, "properties": make_props(PacketTypes.CONNECT, props)}
        port = self.port or self.broker.mqtt_port
        self.paho.connect("127.0.0.1", port, keepalive=self.keepalive, **kw)
        self.paho.loop_start()
        self._started = True
        self._wait(
            lambda: self.connack is not None or self.disconnected is not None,
            timeout,
            "CONNACK",
        )
        return self.connack

    def wait_disconnected(self, timeout=TIMEOUT):
        """Waits until the connection is gone; returns `Disconnected`."""
        self._wait(lambda: self.disconnected is not None, timeout, "disconnection")
        return self.disconnected

    def disconnect(self, reason=None, props=None, timeout=TIMEOUT):
        """A normal DISCONNECT (v5: with `reason`, e.g. 0x04, and a dict of
        DISCONNECT properties), then waits until the BROKER has closed the
        connection: it has handled the DISCONNECT, so a client reconnecting
        with this id next finds the session as the DISCONNECT left it.
        (paho's own disconnect() closes the socket itself at once.)"""
        body = b""
        if self.version == V5 and (reason is not None or props):
            body = bytes([reason or 0]) + encode_props(props)
        if self.ws_path is None:
            self.paho.socket().sendall(packet(DISCONNECT, 0, body))
        else:
            # paho's WebSocket wrapper keeps a frame buffer its network
            # thread also writes through (a PUBACK, say): a DISCONNECT
            # framed from this thread could be lost in between. paho's own
            # disconnect goes through its queue; it closes after writing.
            assert not body, "a v5 DISCONNECT reason over WebSocket is not supported here"
            self.paho.disconnect()
        self.wait_disconnected(timeout)
        self._stop()

    def drop(self, timeout=TIMEOUT):
        """Closes the TCP connection without DISCONNECT (an abnormal
        disconnection: the broker publishes the will)."""
        self._shutdown_socket()
        self.wait_disconnected(timeout)
        self._stop()

    def _shutdown_socket(self):
        sock = self.paho.socket()
        # Under paho's WebSocket wrapper: its TCP socket.
        sock = getattr(sock, "_socket", sock)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _stop(self):
        if self._started:
            self._started = False
            self.paho.loop_stop()

    def close(self):
        """Teardown: DISCONNECT if still connected, then stop the thread."""
        if not self._started:
            return
        if self.disconnected is None:
            try:
                self.paho.disconnect()
                with self._cond:
                    self._cond.wait_for(lambda: self.disconnected is not None, 2.0)
            except Exception:
                pass
        if self.disconnected is None:
            self._shutdown_socket()
        self._stop()

    # subscriptions ------------------------------------------------------------

    def subscribe(
        self,
        *filters,
        qos=0,
        no_local=False,
        retain_as_published=False,
        retain_handling=0,
        sub_id=None,
        timeout=TIMEOUT,
    ):
        """One SUBSCRIBE with every filter (a string, at `qos`, or a
        (filter, qos) pair); waits for SUBACK and returns its reason codes
        as ints (v3: granted QoS or 0x80)."""
        items = []
        for f in filters:
            f, q = (f, qos) if isinstance(f, str) else f
            if self.version == V5:
                opts = SubscribeOptions(
                    qos=q,
                    noLocal=no_local,
                    retainAsPublished=retain_as_published,
                    retainHandling=retain_handling,
                )
                items.append((f, opts))
            else:
                items.append((f, q))
        props = None
        if sub_id is not None:
            props = make_props(PacketTypes.SUBSCRIBE, {"SubscriptionIdentifier": sub_id})
        rc, mid = self.paho.subscribe(items, properties=props)
        assert rc == mqtt.MQTT_ERR_SUCCESS, rc
        self._wait(lambda: mid in self._subacks, timeout, "SUBACK")
        return self._subacks[mid]

    def unsubscribe(self, *filters, timeout=TIMEOUT):
        """One UNSUBSCRIBE; waits for UNSUBACK and returns its reason codes
        (meaningful on v5 only: a v3 UNSUBACK carries none)."""
        rc, mid = self.paho.unsubscribe(list(filters))
        assert rc == mqtt.MQTT_ERR_SUCCESS, rc
        self._wait(lambda: mid in self._unsubacks, timeout, "UNSUBACK")
        return self._unsubacks[mid]

    # publishing ---------------------------------------------------------------

    def publish(self, topic, payload, qos=0, retain=False, props=None, wait=True, timeout=TIMEOUT):
        """PUBLISH; with `wait`, waits for PUBACK / PUBCOMP (QoS 0: until
        written) and returns the v5 reason code (v3: 0). Without `wait`
        returns the message id for `wait_acked`."""
        info = self.paho.publish(
            topic, payload, qos, retain, make_props(PacketTypes.PUBLISH, props)
        )
        assert info.rc == mqtt.MQTT_ERR_SUCCESS, info.rc
        if not wait:
            return info.mid
        return self.wait_acked([info.mid], timeout)[0]

    def publish_refused(self, topic, payload, qos=1, timeout=TIMEOUT):
        """PUBLISH that the broker answers by closing the connection (MQTT
        3: a refused publish); waits for the close. paho may report "not
        connected" although the packet went out: its loop thread writes
        it, reads the broker's close and ends, and `publish()` then finds
        neither thread nor socket. The caller proves the refusal from the
        broker's side (its log, a subscriber that gets nothing)."""
        info = self.paho.publish(topic, payload, qos)
        assert info.rc in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN), info.rc
        return self.wait_disconnected(timeout)

    def wait_acked(self, mids, timeout=TIMEOUT):
        """Waits for the acknowledgement of every message id; returns
        their reason codes in order."""
        self._wait(
            lambda: all(m in self._acks for m in mids), timeout, f"ack of {len(mids)} publishes"
        )
        return [self._acks[m] for m in mids]

    # inbox --------------------------------------------------------------------

    def wait_messages(self, n, timeout=TIMEOUT):
        """Waits until at least `n` messages arrived; returns every message
        received so far (so a test comparing with an exact list also
        catches extra copies)."""
        with self._cond:
            ok = self._cond.wait_for(lambda: len(self.messages) >= n, timeout)
            got = list(self.messages)
        assert ok, f"{self.client_id}: {len(got)} of {n} messages within {timeout} s: {got}"
        return got

    def received(self):
        with self._cond:
            return list(self.messages)

    def payloads(self):
        return [m.payload for m in self.received()]

    def assert_quiet(self, count, within=0.5):
        """For what must NOT arrive and has no later event to wait for:
        waits `within` seconds and checks that still exactly `count`
        messages arrived."""
        time.sleep(within)
        got = self.received()
        assert len(got) == count, f"{self.client_id}: expected {count} messages, got {got}"


def fence(publisher, subscriber, topic, qos=1):
    """Publishes a unique marker on `topic` (which `subscriber` must be
    subscribed to) and waits until it arrives: whatever the broker routed
    to `subscriber` before the marker is then in its inbox. Returns the
    messages received before the marker (the marker itself excluded).

    Send the marker at the QoS of what it fences: paho hands a QoS 2
    message to `on_message` only at PUBREL, so a QoS 1 marker can overtake
    a QoS 2 message."""
    return fence_all(publisher, [subscriber], topic, qos)[0]


def fence_all(publisher, subscribers, topic, qos=1):
    """`fence` for several subscribers of `topic` at once: one marker;
    returns one list per subscriber."""
    marker = uid("fence-").encode()
    publisher.publish(topic, marker, qos=qos)
    out = []
    for sub in subscribers:
        ok = wait_until(lambda: any(m.payload == marker for m in sub.received()))
        got = sub.received()
        assert ok, f"fence {marker!r} on {topic} never reached {sub.client_id}: {got}"
        i = [m.payload for m in got].index(marker)
        assert i == len(got) - 1, f"messages after the fence: {got[i + 1:]}"
        out.append(got[:i])
    return out


# --- raw MQTT --------------------------------------------------------------

# Control packet types (MQTT 3.1.1 / 5.0 section 2.1.2).
CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT, AUTH = range(8, 16)

# MQTT 5.0 section 2.2.2.2: identifier → (name, type).
PROPERTIES = {
    0x01: ("PayloadFormatIndicator", "byte"),
    0x02: ("MessageExpiryInterval", "u32"),
    0x03: ("ContentType", "utf8"),
    0x08: ("ResponseTopic", "utf8"),
    0x09: ("CorrelationData", "bin"),
    0x0B: ("SubscriptionIdentifier", "varint"),
    0x11: ("SessionExpiryInterval", "u32"),
    0x12: ("AssignedClientIdentifier", "utf8"),
    0x13: ("ServerKeepAlive", "u16"),
    0x15: ("AuthenticationMethod", "utf8"),
    0x16: ("AuthenticationData", "bin"),
    0x17: ("RequestProblemInformation", "byte"),
    0x18: ("WillDelayInterval", "u32"),
    0x19: ("RequestResponseInformation", "byte"),
    0x1A: ("ResponseInformation", "utf8"),
    0x1C: ("ServerReference", "utf8"),
    0x1F: ("ReasonString", "utf8"),
    0x21: ("ReceiveMaximum", "u16"),
    0x22: ("TopicAliasMaximum", "u16"),
    0x23: ("TopicAlias", "u16"),
    0x24: ("MaximumQoS", "byte"),
    0x25: ("RetainAvailable", "byte"),
    0x26: ("UserProperty", "pair"),
    0x27: ("MaximumPacketSize", "u32"),
    0x28: ("WildcardSubscriptionAvailable", "byte"),
    0x29: ("SubscriptionIdentifierAvailable", "byte"),
    0x2A: ("SharedSubscriptionAvailable", "byte"),
}
PROPERTY_IDS = {name: (ident, kind) for ident, (name, kind) in PROPERTIES.items()}
MULTIPLE = {"UserProperty", "SubscriptionIdentifier"}


def varint(n):
    """Variable Byte Integer (section 1.5.5 / 2.2.3)."""
    out = bytearray()
    while True:
        n, b = divmod(n, 128)
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def utf8(s):
    """UTF-8 string / binary data: two-byte length then the bytes."""
    b = s.encode() if isinstance(s, str) else bytes(s)
    return struct.pack(">H", len(b)) + b


def encode_props(props):
    """A v5 property block (length + properties) from a dict; list values
    of UserProperty / SubscriptionIdentifier become one property each, in
    order."""
    body = bytearray()
    for name, value in (props or {}).items():
        ident, kind = PROPERTY_IDS[name]
        values = value if name in MULTIPLE and isinstance(value, list) else [value]
        for v in values:
            body += bytes([ident])
            if kind == "byte":
                body += bytes([v])
            elif kind == "u16":
                body += struct.pack(">H", v)
            elif kind == "u32":
                body += struct.pack(">I", v)
            elif kind == "varint":
                body += varint(v)
            elif kind in ("utf8", "bin"):
                body += utf8(v)
            else:
                body += utf8(v[0]) + utf8(v[1])
    return varint(len(body)) + bytes(body)


def packet(kind, flags, body):
    """Fixed header (type << 4 | flags, Remaining Length) + body."""
    return bytes([kind << 4 | flags]) + varint(len(body)) + body


def connect_packet(
    client_id,
    version=4,
    clean=True,
    keepalive=60,
    username=None,
    password=None,
    will=None,
    props=None,
):
    """CONNECT (section 3.1). `version` is the protocol level: 3 (3.1,
    "MQIsdp"), 4 (3.1.1) or 5. `will`: dict(topic, payload, qos, retain,
    props)."""
    name = "MQIsdp" if version == 3 else "MQTT"
    flags = 0x02 if clean else 0
    payload = utf8(client_id)
    if will is not None:
        flags |= 0x04 | will.get("qos", 0) << 3 | (0x20 if will.get("retain") else 0)
        if version == 5:
            payload += encode_props(will.get("props"))
        payload += utf8(will["topic"]) + utf8(will.get("payload", b""))
    if username is not None:
        flags |= 0x80
        payload += utf8(username)
    if password is not None:
        flags |= 0x40
        payload += utf8(password)
    body = utf8(name) + bytes([version, flags]) + struct.pack(">H", keepalive)
    if version == 5:
        body += encode_props(props)
    return packet(CONNECT, 0, body + payload)


def publish_packet(topic, payload, qos=0, pid=None, retain=False, dup=False, version=4, props=None):
    """PUBLISH (section 3.3); `pid` is required for QoS 1 and 2."""
    flags = (0x08 if dup else 0) | qos << 1 | (0x01 if retain else 0)
    body = utf8(topic)
    if qos:
        body += struct.pack(">H", pid)
    if version == 5:
        body += encode_props(props)
    return packet(PUBLISH, flags, body + payload)


def ack_packet(kind, pid, version=4, reason=None):
    """PUBACK / PUBREC / PUBREL (flags 0b0010) / PUBCOMP."""
    body = struct.pack(">H", pid)
    if version == 5 and reason is not None:
        body += bytes([reason])
    return packet(kind, 0x02 if kind == PUBREL else 0, body)


def subscribe_packet(pid, filters, version=4, props=None):
    """SUBSCRIBE (flags 0b0010); `filters`: [(filter, options byte)] where
    the options byte is the requested QoS on v3 and the v5 option bits."""
    body = struct.pack(">H", pid)
    if version == 5:
        body += encode_props(props)
    for f, opts in filters:
        body += utf8(f) + bytes([opts])
    return packet(SUBSCRIBE, 0x02, body)


def unsubscribe_packet(pid, filters, version=4):
    body = struct.pack(">H", pid) + (encode_props(None) if version == 5 else b"")
    for f in filters:
        body += utf8(f)
    return packet(UNSUBSCRIBE, 0x02, body)


PINGREQ_PACKET = b"\xc0\x00"  # PINGREQ, remaining length 0
DISCONNECT_PACKET = b"\xe0\x00"  # DISCONNECT, remaining length 0 (v5: reason 0x00)


class Reader:
    """Decodes the fields of one packet body in order."""

    def __init__(self, data):
        self.data, self.pos = bytes(data), 0

    def take(self, n):
        assert self.pos + n <= len(self.data), f"truncated packet {self.data!r}"
        b = self.data[self.pos : self.pos + n]
        self.pos += n
        return b

    def byte(self):
        return self.take(1)[0]

    def u16(self):
        return struct.unpack(">H", self.take(2))[0]

    def u32(self):
        return struct.unpack(">I", self.take(4))[0]

    def varint(self):
        n, shift = 0, 0
        for _ in range(4):
            b = self.byte()
            n |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return n
        raise AssertionError("malformed variable byte integer from the broker")

    def bin(self):
        return self.take(self.u16())

    def utf8(self):
        return self.bin().decode()

    def rest(self):
        return self.take(len(self.data) - self.pos)

    def at_end(self):
        return self.pos == len(self.data)

    def props(self):
        end = self.varint()
        end += self.pos
        out = {}
        while self.pos < end:
            name, kind = PROPERTIES[self.byte()]
            if kind == "pair":
                v = (self.utf8(), self.utf8())
            else:
                v = getattr(self, kind)() if kind != "bin" else self.bin()
            if name in MULTIPLE:
                out.setdefault(name, []).append(v)
            else:
                assert name not in out, f"property {name} twice"
                out[name] = v
        assert self.pos == end, "property block overran"
        return out


Packet = namedtuple("Packet", "kind flags body")
Publish = namedtuple("Publish", "topic payload qos retain dup pid props")


class Closed(Exception):
    """The broker closed the connection."""


class RawClient:
    """MQTT on a plain socket: send bytes, receive decoded packets."""

    def __init__(self, port, version=4, rcvbuf=None):
        """`rcvbuf`: SO_RCVBUF set before connecting (a client that reads
        slowly, or not at all, fills a small one quickly)."""
        self.version = version
        self.sock = tcp_connect(port, TIMEOUT, rcvbuf)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.eof = False

    def send(self, data):
        self.sock.sendall(data)

    def _fill(self, deadline):
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        self.sock.settimeout(left)
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout:
            raise TimeoutError from None
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            self.eof = True
            raise Closed
        self.buf += chunk

    def _split(self):
        """One complete packet from the buffer, or None."""
        if len(self.buf) < 2:
            return None
        n, shift, i = 0, 0, 1
        while True:
            if i >= len(self.buf):
                return None
            b = self.buf[i]
            n |= (b & 0x7F) << shift
            shift += 7
            i += 1
            if not b & 0x80:
                break
            assert i < 5, "malformed remaining length from the broker"
        if len(self.buf) < i + n:
            return None
        p = Packet(self.buf[0] >> 4, self.buf[0] & 0x0F, self.buf[i : i + n])
        self.buf = self.buf[i + n :]
        return p

    def recv(self, timeout=TIMEOUT):
        """The next packet; raises `Closed` at end of stream and fails the
        test when nothing arrives within `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            p = self._split()
            if p is not None:
                return p
            if self.eof:
                raise Closed
            try:
                self._fill(deadline)
            except TimeoutError:
                raise AssertionError(f"no packet within {timeout} s") from None

    def expect(self, kind, timeout=TIMEOUT):
        """The next packet, which must be of `kind`; returns it parsed."""
        p = self.recv(timeout)
        assert p.kind == kind, f"expected packet type {kind}, got {p}"
        return self.parse(p)

    def recv_until_closed(self, timeout=TIMEOUT):
        """Every packet the broker sends until it closes the connection;
        fails the test if it is still open after `timeout`."""
        deadline = time.monotonic() + timeout
        out = []
        while True:
            p = self._split()
            if p is not None:
                out.append(p)
                continue
            if self.eof:
                assert self.buf == b"", f"broker closed mid-packet: {self.buf!r}"
                return out
            try:
                self._fill(deadline)
            except Closed:
                continue
            except TimeoutError:
                raise AssertionError(
                    f"connection still open after {timeout} s (received {out})"
                ) from None

    def is_open_after(self, seconds):
        """True if the broker neither closed the connection nor sent
        anything within `seconds`."""
        try:
            p = self.recv(seconds)
        except Closed:
            return False
        except AssertionError:
            return True
        raise AssertionError(f"unexpected packet {p}")

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    # parsed forms ---------------------------------------------------------

    def parse(self, p):
        v5 = self.version == 5
        r = Reader(p.body)
        if p.kind == CONNACK:
            flags, code = r.byte(), r.byte()
            props = r.props() if v5 and not r.at_end() else {}
            return Connack(bool(flags & 1), code, props)
        if p.kind == PUBLISH:
            qos = (p.flags >> 1) & 3
            topic = r.utf8()
            pid = r.u16() if qos else None
            props = r.props() if v5 else {}
            return Publish(topic, r.rest(), qos, bool(p.flags & 1), bool(p.flags & 8), pid, props)
        if p.kind in (PUBACK, PUBREC, PUBREL, PUBCOMP, UNSUBACK) and not (
            p.kind == UNSUBACK and v5
        ):
            pid = r.u16()
            reason = r.byte() if v5 and not r.at_end() else 0
            props = r.props() if v5 and not r.at_end() else {}
            return (pid, reason, props)
        if p.kind in (SUBACK, UNSUBACK):
            pid = r.u16()
            props = r.props() if v5 else {}
            return (pid, list(r.rest()), props)
        if p.kind == DISCONNECT:
            reason = r.byte() if not r.at_end() else 0
            props = r.props() if not r.at_end() else {}
            return (reason, props)
        return p

    # conversations --------------------------------------------------------

    def connect(self, client_id, **kw):
        """CONNECT at this client's version; returns the parsed CONNACK."""
        self.send(connect_packet(client_id, version=self.version, **kw))
        return self.expect(CONNACK)

    def connect_persistent(self, client_id, expiry=300, **kw):
        """CONNECT resuming or creating a persistent session."""
        props = {"SessionExpiryInterval": expiry} if self.version == 5 else None
        return self.connect(client_id, clean=False, props=props, **kw)

    def subscribe(self, pid, filters, props=None):
        """SUBSCRIBE and wait for its SUBACK; returns the reason codes."""
        self.send(subscribe_packet(pid, filters, self.version, props))
        got_pid, codes, _ = self.expect(SUBACK)
        assert got_pid == pid
        return codes

    def publish(self, topic, payload, qos=0, pid=None, props=None, **kw):
        """PUBLISH and complete its QoS flow (PUBACK, or PUBREC/PUBREL/
        PUBCOMP); returns the reason code of PUBACK / PUBREC (v3: 0)."""
        self.send(publish_packet(topic, payload, qos, pid, version=self.version, props=props, **kw))
        if qos == 0:
            return None
        if qos == 1:
            got, reason, _ = self.expect(PUBACK)
            assert got == pid
            return reason
        got, reason, _ = self.expect(PUBREC)
        assert got == pid
        self.send(ack_packet(PUBREL, pid, self.version))
        got, _, _ = self.expect(PUBCOMP)
        assert got == pid
        return reason


class Clients:
    """Makes clients for one test and closes them all at teardown."""

    def __init__(self):
        self.made = []

    def new(self, broker, **kw):
        """A `Client`, not yet connected."""
        c = Client(broker, **kw)
        self.made.append(c)
        return c

    def connect(self, broker, **kw):
        """A connected `Client` (the CONNACK must be a success; it is in
        `client.connack`)."""
        c = self.new(broker, **kw)
        ack = c.connect()
        assert ack is not None and ack.reason == 0, f"connect refused: {ack} {c.disconnected}"
        return c

    def raw(self, broker, version=4, rcvbuf=None):
        """A `RawClient` on the broker's MQTT port (TCP only: no CONNECT)."""
        c = RawClient(broker.mqtt_port, version, rcvbuf)
        self.made.append(c)
        return c

    def close_all(self):
        for c in reversed(self.made):
            c.close()


@pytest.fixture
def clients():
    """The test's MQTT client factory: `clients.connect(broker, ...)`,
    `clients.new(...)`, `clients.raw(broker, version)`."""
    made = Clients()
    yield made
    made.close_all()


def assert_broker_serves(clients, broker, version=V311):
    """A fresh well-behaved client connects, subscribes, publishes at QoS 1
    and receives its own message: the broker still serves others."""
    topic = uid() + "/alive"
    c = clients.connect(broker, version=version)
    assert c.subscribe(topic, qos=1) == [1]
    assert c.publish(topic, b"still alive", qos=1) == 0
    got = c.wait_messages(1)
    assert [(m.topic, m.payload, m.qos) for m in got] == [(topic, b"still alive", 1)]
    c.disconnect()


def connected(clients, broker, level):
    """A `RawClient` of protocol `level` (4 or 5), connected with a fresh
    client id."""
    raw = clients.raw(broker, level)
    assert raw.connect(uid("c")).reason == 0
    return raw


def assert_closed_with(raw, level, v5_reason):
    """v5: exactly one DISCONNECT with `v5_reason` (or one of a tuple of
    reasons, where the spec names none), then the close; v3: the close and
    nothing before it."""
    packets = raw.recv_until_closed()
    if level == 5:
        allowed = v5_reason if isinstance(v5_reason, tuple) else (v5_reason,)
        assert len(packets) == 1 and packets[0].kind == DISCONNECT, packets
        assert raw.parse(packets[0])[0] in allowed, packets
    else:
        assert packets == []
