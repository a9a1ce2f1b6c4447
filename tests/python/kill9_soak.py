#!/usr/bin/env python3
"""Bounded kill -9 soak: what the broker confirmed survives SIGKILL, round
after round, on one data dir.

One run starts the real broker (`Broker` from broker_support.py) on a
persistent data dir and repeats, `--rounds` times:

1. Publisher workers run concurrently (one thread each, see `PROTOCOLS`):
   AMQP publishers with publisher confirms (BlockingChannel, one publish in
   flight; and SelectConnection, up to 64 in flight), MQTT 3.1.1 and 5
   publishers at QoS 1 (some QoS 2, up to 64 in flight), and STOMP 1.2
   publishers (stomp.py) sending `persistent:true` with a `receipt` on
   every SEND (up to 64 in flight). At random moments they declare new
   durable queues (AMQP; STOMP by its first SEND to `/queue/<name>`) or
   new durable queues bound to new topics on `amq.topic` (MQTT, the
   binding made with pika), and publish to those and to long-lived ones
   (two AMQP ones behind a durable fanout exchange, and MQTT topics that
   reach two queues each; STOMP reaches them as `/amq/queue/<name>`,
   `/exchange/<fanout>/` and `/topic/<key>`).
   Every body is unique: `worker|round|seq#padding`, the padding derived
   from the rest (so a corrupted body is caught too). A message counts as
   confirmed only once its basic.ack / PUBACK / PUBCOMP / RECEIPT arrived.
2. At a random moment the broker gets SIGKILL. Workers end on the lost
   connection.
3. The broker restarts on the same data dir (time to its ready line is
   recorded). The check: every queue that got declare-ok is there; every
   queue deleted (delete-ok) is still gone; every binding that got bind-ok
   still routes (a confirmed probe per binding); then every queue is drained
   (basic.consume, ack) and:
   - every confirmed message is in each of its queues (missing = 0);
   - no body that was never sent, is corrupted, or sits in a queue it was
     not routed to (phantoms = 0);
   - no body twice in one queue (duplicates = 0: nothing consumed before
     the kill, so nothing could be redelivered);
   - no body from an earlier round (stale = 0: the earlier check drained
     and acked it, or never found it);
   - per worker, queue and QoS, bodies come out in publish order.
   Unconfirmed messages may or may not be there.
4. The queues stay drained; old dynamic queues are deleted to keep the
   number of queues under `--max-queues`; next round.

Everything is bounded: messages per worker per round, queues, the time of a
round (the kill comes within `--seconds-per-round`; joins, restarts and
drains have timeouts) and of the run (`--max-seconds`).

Run on demand (exit 0 only when every round ran and every check held):

    JUNCTION_BIN=/path/to/junction .venv/bin/python tests/python/kill9_soak.py \\
        --rounds 100 --seconds-per-round 3

test_kill9_soak.py runs the same code in the suite at a small count. The
JSON report (--report; by default beside the data dir) has per-round
figures and, on a failure, the details (round, worker, message, what its
queue held) and the broker log's tail; a failed run keeps the data dir and
the broker log (`<data dir>.log`). A clean run in a temporary dir removes
it, report included.
"""

import argparse
import hashlib
import json
import logging
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
import pika
import pytest
import stomp
from pika.exceptions import ChannelClosedByBroker

sys.path.insert(0, str(Path(__file__).resolve().parent))

from broker_support import Broker  # noqa: E402
from mqtt_support import V5, V311, Client, uid  # noqa: E402

PERSISTENT = pika.BasicProperties(delivery_mode=2)
JOIN_TIMEOUT = 20.0  # for every worker to notice the kill
DRAIN_IDLE = 5.0  # a drain waits at most this long for the next delivery
DRAIN_BATCH = 1000  # deliveries per consumer (and prefetch) while draining
MQTT_WINDOW = 64  # QoS 1/2 publishes in flight per MQTT worker
AMQP_WINDOW = 64  # unconfirmed publishes per pipelining AMQP worker
STOMP_WINDOW = 64  # SENDs awaiting their RECEIPT per STOMP worker
ACK_TIMEOUT = 10.0  # a live broker acknowledges within this
LONG_AMQP_QUEUES = 4
LONG_MQTT_TOPICS = 3
FANOUT = "soak.fanout"
FIGURES = (
    "sent", "confirmed", "recovered", "unconfirmed", "unconfirmed_present", "probes", "drained"
)


# --- bodies ------------------------------------------------------------------


def make_body(worker, rnd, seq):
    """(key, body): the key names the message, the body is the key plus a
    padding derived from it (0-255 bytes, 1 in 64 about 4-12 KB)."""
    key = b"%s|%d|%d" % (worker.encode(), rnd, seq)
    h = hashlib.sha256(key).digest()
    n = 4096 + h[2] * 32 if h[1] < 4 else h[0]
    pad = (h.hex().encode() * (n // 64 + 1))[:n]
    return key, key + b"#" + pad


def parse_body(body):
    """The key of a body made by `make_body` (or a probe), None if the body
    is not one of ours or is corrupted."""
    key, sep, _ = body.partition(b"#")
    if not sep:
        return None
    parts = key.split(b"|")
    if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
        return None
    if parts[0] == b"probe":
        expected = key + b"#probe"
    else:
        expected = make_body(parts[0].decode(errors="replace"), int(parts[1]), int(parts[2]))[1]
    return key if body == expected else None


def key_parts(key):
    w, r, s = key.split(b"|")
    return w.decode(), int(r), int(s)


def ranges(nums):
    """[1, 2, 3, 7, 9, 10] -> "1-3,7,9-10" (sorted)."""
    out, nums = [], sorted(nums)
    i = 0
    while i < len(nums):
        j = i
        while j + 1 < len(nums) and nums[j + 1] == nums[j] + 1:
            j += 1
        out.append(str(nums[i]) if i == j else f"{nums[i]}-{nums[j]}")
        i = j + 1
    return ",".join(out)


# --- the shared model of what exists ---------------------------------------


class Sent:
    """One message a worker tried to send."""

    __slots__ = ("key", "worker", "proto", "seq", "dests", "qos", "confirmed", "t_sent", "t_conf")

    def __init__(self, key, worker, proto, seq, dests, qos):
        self.key, self.worker, self.proto, self.seq = key, worker, proto, seq
        self.dests, self.qos = dests, qos
        self.confirmed = False
        self.t_sent = time.monotonic()
        self.t_conf = None


class Topology:
    """Queues, bindings and publish targets the broker confirmed (declare-ok,
    bind-ok, delete-ok), shared by the workers of a round. Thread-safe."""

    def __init__(self, max_queues):
        self.lock = threading.Lock()
        self.max_queues = max_queues
        self.queues = {}  # name -> (kind, round declared); "long" / "amqp" / "mqtt" / "stomp"
        self.amqp_targets = []  # (exchange, routing key, dests)
        self.mqtt_topics = []  # (topic, dests)
        self.bindings = []  # (exchange, routing key, dests): probed after each kill
        self.uncertain = set()  # declares in flight at a kill
        self.deleted = set()  # deleted since the last kill: must stay deleted
        self.reserved = 0

    def count(self):
        with self.lock:
            return len(self.queues) + len(self.uncertain) + self.reserved

    def reserve(self):
        """Room for one more queue? (if so, call `declaring` next)."""
        with self.lock:
            if len(self.queues) + len(self.uncertain) + self.reserved >= self.max_queues:
                return False
            self.reserved += 1
            return True

    def declaring(self, name):
        with self.lock:
            self.reserved -= 1
            self.uncertain.add(name)

    def declared(self, name, kind, rnd):
        with self.lock:
            self.uncertain.discard(name)
            self.queues[name] = (kind, rnd)
            if kind == "amqp":
                self.amqp_targets.append(("", name, (name,)))

    def bound(self, topic, queue):
        with self.lock:
            self.mqtt_topics.append((topic, (queue,)))
            self.bindings.append(("amq.topic", topic.replace("/", "."), (queue,)))

    def pick_amqp(self, rng):
        with self.lock:
            return rng.choice(self.amqp_targets)

    def pick_mqtt(self, rng):
        with self.lock:
            return rng.choice(self.mqtt_topics)

    def remove(self, name):
        """The queue got delete-ok."""
        with self.lock:
            self.queues.pop(name, None)
            self.amqp_targets = [t for t in self.amqp_targets if name not in t[2]]
            self.mqtt_topics = [t for t in self.mqtt_topics if name not in t[1]]
            self.bindings = [b for b in self.bindings if name not in b[2]]
            self.deleted.add(name)


def setup_long_lived(broker, topo):
    """Long-lived durable queues: AMQP ones (two behind a durable fanout
    exchange, so one message sits in two queues) and MQTT topics, each
    bound to its own queue and all to one more (`soak.long.#`)."""
    conn = broker.connect()
    try:
        ch = conn.channel()
        amqp = [f"soak.long.a{i}" for i in range(LONG_AMQP_QUEUES)]
        for q in amqp:
            ch.queue_declare(q, durable=True)
            topo.declared(q, "long", 0)
            topo.amqp_targets.append(("", q, (q,)))
        ch.exchange_declare(FANOUT, "fanout", durable=True)
        for q in amqp[:2]:
            ch.queue_bind(q, FANOUT)
        topo.amqp_targets.append((FANOUT, "", tuple(amqp[:2])))
        topo.bindings.append((FANOUT, "", tuple(amqp[:2])))
        every = "soak.long.m-all"
        ch.queue_declare(every, durable=True)
        ch.queue_bind(every, "amq.topic", routing_key="soak.long.#")
        topo.declared(every, "long", 0)
        for i in range(LONG_MQTT_TOPICS):
            q = f"soak.long.m{i}"
            ch.queue_declare(q, durable=True)
            ch.queue_bind(q, "amq.topic", routing_key=f"soak.long.t{i}")
            topo.declared(q, "long", 0)
            topo.mqtt_topics.append((f"soak/long/t{i}", (q, every)))
            topo.bindings.append(("amq.topic", f"soak.long.t{i}", (q, every)))
    finally:
        conn.close()


# --- workers -------------------------------------------------------------------


@dataclass
class RoundContext:
    broker: Broker
    rnd: int
    topo: Topology
    killed: threading.Event  # set just before the SIGKILL
    cfg: argparse.Namespace
    seed: int


class Worker:
    """One publisher thread for one round. Subclasses implement `publish_loop`
    (connect, publish until the connection dies or the message cap), calling
    `record` before sending a message and `confirm` when the broker
    confirmed it."""

    proto = "?"

    def __init__(self, name, ctx):
        self.name, self.ctx = name, ctx
        self.rng = random.Random(f"{ctx.seed}/{ctx.rnd}/{name}")
        self.sent = {}  # key -> Sent
        self.seq = 0
        self.new_queues = 0
        self.errors = []  # failures while the broker was alive
        self.started = time.monotonic()
        span = ctx.cfg.seconds_per_round
        n = ctx.cfg.new_queues_per_worker
        self.declare_at = sorted(self.rng.uniform(0, span) for _ in range(n))
        self.ended_by = None
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self):
        self.started = time.monotonic()
        try:
            self.publish_loop()
            self.ended_by = "message cap"
        except BaseException as e:  # noqa: BLE001 (classified below)
            self.ended_by = f"{type(e).__name__}: {e}"[:200]
            if not self.ctx.killed.is_set():
                self.errors.append(
                    f"{self.name}: {type(e).__name__} before the kill: {e}\n"
                    + traceback.format_exc(limit=6)
                )

    def more(self):
        return self.seq < self.ctx.cfg.max_messages_per_worker

    def record(self, dests, qos=None):
        key, body = make_body(self.name, self.ctx.rnd, self.seq)
        rec = Sent(key, self.name, self.proto, self.seq, dests, qos)
        self.sent[key] = rec
        self.seq += 1
        return rec, body

    def confirm(self, rec):
        rec.confirmed = True
        rec.t_conf = time.monotonic()

    def time_for_new_queue(self):
        """True once per moment in `declare_at` (drawn at random within the
        round, so some declares are cut by the kill)."""
        if self.new_queues >= len(self.declare_at):
            return False
        return time.monotonic() - self.started >= self.declare_at[self.new_queues]

    def new_queue_name(self):
        self.new_queues += 1
        return f"soak.{self.name}.r{self.ctx.rnd}.q{self.new_queues}"

    def idle_until_killed(self):
        self.ctx.killed.wait(self.ctx.cfg.seconds_per_round + JOIN_TIMEOUT)


class AmqpWorker(Worker):
    """pika with publisher confirms: persistent messages to the default
    exchange (long-lived and new durable queues) and to a durable fanout
    exchange; one publish in flight (BlockingChannel waits for its ack)."""

    proto = "amqp"

    def publish_loop(self):
        ctx = self.ctx
        conn = ctx.broker.connect()
        try:
            ch = conn.channel()
            ch.confirm_delivery()
            mine = []
            while self.more():
                if self.time_for_new_queue() and ctx.topo.reserve():
                    name = self.new_queue_name()
                    ctx.topo.declaring(name)
                    ch.queue_declare(name, durable=True)
                    ctx.topo.declared(name, "amqp", ctx.rnd)
                    mine.append(("", name, (name,)))
                if mine and self.rng.random() < 0.5:
                    exchange, rk, dests = self.rng.choice(mine)
                else:
                    exchange, rk, dests = ctx.topo.pick_amqp(self.rng)
                rec, body = self.record(dests)
                # Raises NackError / UnroutableError if not confirmed.
                ch.basic_publish(exchange, rk, body, PERSISTENT, mandatory=True)
                self.confirm(rec)
            self.idle_until_killed()
        finally:
            try:
                conn.close()
            except Exception:
                pass


class AmqpWindowWorker(Worker):
    """pika SelectConnection with publisher confirms and up to AMQP_WINDOW
    publishes in flight (acks may be `multiple`): what group commit sees
    from a pipelining client. Same targets as AmqpWorker; publishing pauses
    while one of its queue.declare is in flight."""

    proto = "amqp-window"

    def publish_loop(self):
        self.ch = None
        self.unacked = {}  # delivery tag -> Sent
        self.tag = 0
        self.mine = []
        self.declaring = False
        self.failure = None
        self.conn = pika.SelectConnection(
            self.ctx.broker.params(),
            on_open_callback=lambda conn: conn.channel(on_open_callback=self._on_channel),
            on_open_error_callback=self._on_gone,
            on_close_callback=self._on_gone,
        )
        self.conn.ioloop.call_later(
            self.ctx.cfg.seconds_per_round + JOIN_TIMEOUT, self.conn.ioloop.stop
        )
        try:
            self.conn.ioloop.start()
        finally:
            if self.conn.is_open:
                self.conn.close()
        if self.failure is not None:
            raise self.failure

    def _on_gone(self, conn, reason):
        if self.failure is None:
            self.failure = reason if isinstance(reason, BaseException) else ConnectionError(reason)
        conn.ioloop.stop()

    def _on_channel(self, ch):
        self.ch = ch
        ch.add_on_return_callback(self._on_return)
        ch.confirm_delivery(self._on_confirm, callback=lambda frame: self._pump())

    def _on_return(self, ch, method, props, body):
        self.errors.append(f"{self.name}: basic.return {method.reply_code} for {body[:40]!r}")

    def _on_confirm(self, frame):
        m = frame.method
        tags = [t for t in self.unacked if t <= m.delivery_tag] if m.multiple else [m.delivery_tag]
        for t in tags:
            rec = self.unacked.pop(t, None)
            if rec is None:
                continue
            if isinstance(m, pika.spec.Basic.Ack):
                self.confirm(rec)
            else:
                self.errors.append(f"{self.name}: basic.nack for {rec.key!r}")
        self._pump()

    def _on_declared(self, name):
        self.ctx.topo.declared(name, "amqp", self.ctx.rnd)
        self.mine.append(("", name, (name,)))
        self.declaring = False
        self._pump()

    def _pump(self):
        """Tops up the window (called on select-ok, each ack, declare-ok)."""
        topo = self.ctx.topo
        while not self.declaring and len(self.unacked) < AMQP_WINDOW and self.more():
            if self.time_for_new_queue() and topo.reserve():
                name = self.new_queue_name()
                topo.declaring(name)
                self.declaring = True
                self.ch.queue_declare(
                    name, durable=True, callback=lambda frame, n=name: self._on_declared(n)
                )
                return
            if self.mine and self.rng.random() < 0.5:
                exchange, rk, dests = self.rng.choice(self.mine)
            else:
                exchange, rk, dests = topo.pick_amqp(self.rng)
            rec, body = self.record(dests)
            self.tag += 1
            self.unacked[self.tag] = rec
            self.ch.basic_publish(exchange, rk, body, PERSISTENT, mandatory=True)


class MqttPublisher(Client):
    """mqtt_support.Client that maps PUBACK / PUBCOMP back to `Sent` records
    (paho may call on_publish before publish() returns: `early`)."""

    def __init__(self, *a, worker, **kw):
        super().__init__(*a, **kw)
        self.worker = worker
        self.inflight = {}  # mid -> Sent
        self.early = {}  # mid -> reason code
        self.refused = []
        self.paho.max_inflight_messages_set(MQTT_WINDOW)

    def _on_publish(self, client, userdata, mid, reason_code, properties):
        rc = reason_code.value if reason_code is not None else 0
        with self._cond:
            rec = self.inflight.pop(mid, None)
            if rec is None:
                self.early[mid] = rc
            else:
                self._settle(rec, rc)
            self._cond.notify_all()

    def _settle(self, rec, rc):
        if rc < 0x80:
            self.worker.confirm(rec)
        else:
            self.refused.append((rec.key, rc))

    def sent(self, mid, rec):
        with self._cond:
            rc = self.early.pop(mid, None)
            if rc is None:
                self.inflight[mid] = rec
            else:
                self._settle(rec, rc)

    def wait_room(self, timeout):
        """Waits until fewer than MQTT_WINDOW publishes are in flight;
        False when the connection is gone."""
        with self._cond:
            ok = self._cond.wait_for(
                lambda: len(self.inflight) < MQTT_WINDOW or self.disconnected is not None,
                timeout,
            )
            if self.disconnected is not None:
                return False
        assert ok, f"{self.client_id}: {len(self.inflight)} publishes unacked for {timeout} s"
        return True


class MqttWorker(Worker):
    """paho at QoS 1 (a fraction at QoS 2), up to MQTT_WINDOW in flight, into
    topics bound to durable queues; new topic bindings made with pika at
    random moments (published to only after bind-ok)."""

    def __init__(self, name, ctx, version):
        super().__init__(name, ctx)
        self.version = version
        self.proto = "mqtt5" if version == V5 else "mqtt311"

    def publish_loop(self):
        ctx = self.ctx
        client = MqttPublisher(ctx.broker, client_id=uid("k"), version=self.version, worker=self)
        conn = None
        try:
            conn = ctx.broker.connect()
            ch = conn.channel()
            connack = client.connect()
            assert connack is not None and connack.reason == 0, connack
            mine = []
            while self.more():
                if self.time_for_new_queue() and ctx.topo.reserve():
                    name = self.new_queue_name()
                    topic = f"soak/{self.name}/r{ctx.rnd}/t{self.new_queues}"
                    ctx.topo.declaring(name)
                    ch.queue_declare(name, durable=True)
                    ctx.topo.declared(name, "mqtt", ctx.rnd)
                    ch.queue_bind(name, "amq.topic", routing_key=topic.replace("/", "."))
                    ctx.topo.bound(topic, name)
                    mine.append((topic, (name,)))
                if mine and self.rng.random() < 0.5:
                    topic, dests = self.rng.choice(mine)
                else:
                    topic, dests = ctx.topo.pick_mqtt(self.rng)
                qos = 2 if self.rng.random() < ctx.cfg.qos2_fraction else 1
                if not client.wait_room(ACK_TIMEOUT):
                    raise ConnectionError("connection lost")
                rec, body = self.record(dests, qos)
                info = client.paho.publish(topic, body, qos)
                if info.rc != mqtt.MQTT_ERR_SUCCESS:
                    raise ConnectionError(f"publish rc {info.rc}")
                client.sent(info.mid, rec)
            # The cap: wait for the last acks, then for the kill.
            with client._cond:
                client._cond.wait_for(
                    lambda: not client.inflight or client.disconnected is not None, ACK_TIMEOUT
                )
            self.idle_until_killed()
        finally:
            if client.refused:
                self.errors.append(f"{self.name}: publishes refused: {client.refused[:5]}")
            client.close()
            try:
                if conn is not None:
                    conn.close()
            except Exception:
                pass


class StompPublisher(stomp.ConnectionListener):
    """A stomp.py listener that maps RECEIPTs back to `Sent` records (the
    record is registered before its SEND goes out: the RECEIPT may come
    before `send_frame` returns) and notes CONNECTED, ERROR and the end
    of the connection."""

    def __init__(self, worker):
        self.worker = worker
        self.cond = threading.Condition()
        self.inflight = {}  # receipt id -> Sent
        self.connected = False
        self.error = None  # the first ERROR frame: (headers, body)
        self.disconnected = False
        self.last_seq = -1  # RECEIPTs come in SEND order

    def on_connected(self, frame):
        with self.cond:
            self.connected = True
            self.cond.notify_all()

    def on_receipt(self, frame):
        rid = frame.headers.get("receipt-id")
        with self.cond:
            rec = self.inflight.pop(rid, None)
            if rec is None:
                self.worker.errors.append(f"{self.worker.name}: RECEIPT for unknown id {rid!r}")
            else:
                if rec.seq < self.last_seq:
                    self.worker.errors.append(
                        f"{self.worker.name}: RECEIPT of seq {rec.seq} after seq {self.last_seq}"
                    )
                self.last_seq = max(self.last_seq, rec.seq)
                self.worker.confirm(rec)
            self.cond.notify_all()

    def on_error(self, frame):
        with self.cond:
            if self.error is None:
                self.error = (dict(frame.headers), bytes(frame.body or b"")[:200])
            self.cond.notify_all()

    def on_disconnected(self):
        with self.cond:
            self.disconnected = True
            self.cond.notify_all()

    def expect(self, rid, rec):
        with self.cond:
            self.inflight[rid] = rec

    def _gone(self):
        return self.disconnected or self.error is not None

    def wait_for(self, predicate, timeout, what):
        """Waits until `predicate()` (under the lock); False when the
        connection ended (or got an ERROR) first. A live broker that
        answers nothing within `timeout` fails the worker."""
        with self.cond:
            ok = self.cond.wait_for(lambda: predicate() or self._gone(), timeout)
            if predicate():
                return True
            if self._gone():
                return False
        assert ok, f"{self.worker.name}: no {what} within {timeout} s"
        return False


class StompWorker(Worker):
    """stomp.py 1.2 (`host:/`), SENDs of `persistent:true` bodies each with
    a `receipt`, up to STOMP_WINDOW awaiting their RECEIPT. Targets: new
    durable queues it declares by SENDing to `/queue/<name>` (the queue
    counts as declared, and is published to again, once that first SEND's
    RECEIPT came; later SENDs use `/queue/` or `/amq/queue/`), the queues
    and exchanges the AMQP workers publish to (`/amq/queue/<name>`,
    `/exchange/<x>/<key>`) and the MQTT topics (`/topic/<key>`, amq.topic)."""

    proto = "stomp"

    def destination(self, exchange, rk):
        if exchange == "":
            return f"/amq/queue/{rk}"
        if exchange == "amq.topic":
            return f"/topic/{rk}"
        return f"/exchange/{exchange}/{rk}"

    def send(self, conn, pub, destination, dests):
        rec, body = self.record(dests)
        rid = str(rec.seq)
        pub.expect(rid, rec)
        conn.send_frame(
            "SEND",
            {
                "destination": destination,
                "persistent": "true",
                "receipt": rid,
                "content-length": len(body),
            },
            body,
        )
        return rec

    def publish_loop(self):
        ctx = self.ctx
        conn = stomp.Connection12(
            [("127.0.0.1", ctx.broker.stomp_port)],
            heartbeats=(0, 0),
            vhost="/",
            auto_decode=False,
            reconnect_attempts_max=1,
            try_loopback_connect=False,
        )
        pub = StompPublisher(self)
        conn.set_listener("soak", pub)
        try:
            conn.connect("guest", "guest", wait=False)
            if not pub.wait_for(lambda: pub.connected, ACK_TIMEOUT, "CONNECTED"):
                raise ConnectionError(f"no CONNECTED: {pub.error}")
            mine = []  # (destination, dests) of its own queues
            while self.more():
                if self.time_for_new_queue() and ctx.topo.reserve():
                    name = self.new_queue_name()
                    ctx.topo.declaring(name)
                    rec = self.send(conn, pub, f"/queue/{name}", (name,))
                    if not pub.wait_for(lambda: rec.confirmed, ACK_TIMEOUT, "RECEIPT"):
                        raise ConnectionError(f"connection lost ({pub.error})")
                    ctx.topo.declared(name, "stomp", ctx.rnd)
                    mine += [(f"/queue/{name}", (name,)), (f"/amq/queue/{name}", (name,))]
                r = self.rng.random()
                if mine and r < 0.5:
                    destination, dests = self.rng.choice(mine)
                elif r < 0.75:
                    exchange, rk, dests = ctx.topo.pick_amqp(self.rng)
                    destination = self.destination(exchange, rk)
                else:
                    topic, dests = ctx.topo.pick_mqtt(self.rng)
                    destination = "/topic/" + topic.replace("/", ".")
                if not pub.wait_for(lambda: len(pub.inflight) < STOMP_WINDOW, ACK_TIMEOUT, "room"):
                    raise ConnectionError(f"connection lost ({pub.error})")
                self.send(conn, pub, destination, dests)
            # The cap: wait for the last receipts, then for the kill.
            pub.wait_for(lambda: not pub.inflight, ACK_TIMEOUT, "last RECEIPTs")
            self.idle_until_killed()
        finally:
            if pub.error is not None and not ctx.killed.is_set():
                self.errors.append(f"{self.name}: ERROR frame {pub.error}")
            try:
                conn.transport.disconnect_socket()
            except Exception:
                pass


@dataclass
class Protocol:
    """One kind of publisher: `make(name, ctx)` builds its Worker."""

    name: str
    make: object


# The publishers of a round, one entry per protocol. `--workers` says how
# many of each (DEFAULT_WORKERS).
PROTOCOLS = [
    Protocol("amqp", lambda name, ctx: AmqpWorker(name, ctx)),
    Protocol("amqp-window", lambda name, ctx: AmqpWindowWorker(name, ctx)),
    Protocol("mqtt311", lambda name, ctx: MqttWorker(name, ctx, V311)),
    Protocol("mqtt5", lambda name, ctx: MqttWorker(name, ctx, V5)),
    Protocol("stomp", lambda name, ctx: StompWorker(name, ctx)),
]


DEFAULT_WORKERS = "amqp=2,amqp-window=2,mqtt311=2,mqtt5=2,stomp=2"


def parse_workers(spec):
    """"amqp=3,mqtt5=1" -> {"amqp": 3, "mqtt5": 1} (known protocols only)."""
    known = {p.name for p in PROTOCOLS}
    out = {}
    for part in filter(None, (s.strip() for s in spec.split(","))):
        name, _, n = part.partition("=")
        if name not in known or not n.isdigit():
            raise argparse.ArgumentTypeError(f"bad worker spec {part!r} (protocols: {known})")
        out[name] = int(n)
    return out


# --- the check after a restart ---------------------------------------------------


class Anomalies:
    """Failed checks, by kind; keeps the first `limit` details of each."""

    KINDS = (
        "missing",
        "phantoms",
        "duplicates",
        "stale",
        "out_of_order",
        "missing_queues",
        "resurrected_queues",
        "lost_bindings",
        "worker_errors",
    )

    def __init__(self, limit=50):
        self.limit = limit
        self.counts = dict.fromkeys(self.KINDS, 0)
        self.details = {k: [] for k in self.KINDS}

    def add(self, kind, detail):
        """`detail`: a dict, or a function making it (called only while
        fewer than `limit` are kept)."""
        self.counts[kind] += 1
        if len(self.details[kind]) < self.limit:
            self.details[kind].append(detail() if callable(detail) else detail)

    def total(self):
        return sum(self.counts.values())

    def merge(self, other):
        for k in self.KINDS:
            self.counts[k] += other.counts[k]
            room = self.limit - len(self.details[k])
            self.details[k].extend(other.details[k][: max(room, 0)])


def queue_exists(conn, name):
    """Passive declare on a channel of its own: (exists, ready count)."""
    ch = conn.channel()
    try:
        n = ch.queue_declare(name, passive=True).method.message_count
    except ChannelClosedByBroker as e:
        if e.reply_code == 404:
            return False, 0
        raise
    ch.close()
    return True, n


def drain(ch, queue, expected):
    """Consumes and acks every message of `queue` (ready count `expected`);
    returns the bodies in delivery order. Consumes in batches of at most
    DRAIN_BATCH with the prefetch set to the batch, so no delivery is in
    flight when a batch's consumer is cancelled (pika would reject and
    requeue it); then basic.get until empty, so a message the count left
    out is still found. Bounded: a consume stops after DRAIN_IDLE s without
    a delivery; at most three passes."""
    got = []
    for _ in range(3):
        while expected > 0:
            k = min(expected, DRAIN_BATCH)
            ch.basic_qos(prefetch_count=k)
            batch = []
            for method, _props, body in ch.consume(queue, inactivity_timeout=DRAIN_IDLE):
                if method is None:
                    break
                batch.append((method.delivery_tag, body))
                if len(batch) >= k:
                    break
            ch.cancel()
            if batch:
                ch.basic_ack(batch[-1][0], multiple=True)
            got.extend(body for _, body in batch)
            if len(batch) < k:
                break
            expected -= k
        method, _props, body = ch.basic_get(queue)
        if method is None:
            return got
        got.append(body)
        ch.basic_ack(method.delivery_tag)
        expected = ch.queue_declare(queue, passive=True).method.message_count
    raise AssertionError(f"{queue}: still not empty after three drains ({len(got)} taken)")


def check_round(broker, topo, rnd, workers, previous, kill_time):
    """After the restart: existence of queues, probes of bindings, drain,
    and the comparison with what the workers sent. `previous`: the keys the
    previous round's check found. Returns (Anomalies, figures); figures
    ["found_keys"] is this round's `previous` for the next."""
    bad = Anomalies()
    ledger = {}
    for w in workers:
        ledger.update(w.sent)
        for e in w.errors:
            bad.add("worker_errors", {"round": rnd, "worker": w.name, "error": e})
    conn = broker.connect()
    try:
        # Queues: declared-ok ones are there, deleted-ok ones are not,
        # uncertain ones (declare in flight at the kill) are drained and
        # deleted if there.
        counts = {}
        for name in sorted(topo.queues):
            exists, n = queue_exists(conn, name)
            if exists:
                counts[name] = n
            else:
                kind, declared_in = topo.queues[name]
                bad.add(
                    "missing_queues",
                    {"round": rnd, "queue": name, "kind": kind, "declared_in_round": declared_in},
                )
        for name in sorted(topo.deleted):
            exists, n = queue_exists(conn, name)
            if exists:
                bad.add("resurrected_queues", {"round": rnd, "queue": name, "messages": n})
                counts[name] = n
        topo.deleted.clear()
        extra = set()
        for name in sorted(topo.uncertain):
            exists, n = queue_exists(conn, name)
            if exists:
                counts[name] = n
                extra.add(name)
        topo.uncertain.clear()

        # Bindings: one confirmed probe per bind-ok binding.
        ch = conn.channel()
        ch.confirm_delivery()
        for i, (exchange, rk, dests) in enumerate(list(topo.bindings)):
            key = b"probe|%d|%d" % (rnd, i)
            rec = Sent(key, "probe", "probe", i, dests, None)
            ledger[key] = rec
            try:
                ch.basic_publish(exchange, rk, key + b"#probe", PERSISTENT, mandatory=True)
            except pika.exceptions.UnroutableError:
                bad.add(
                    "lost_bindings",
                    {"round": rnd, "exchange": exchange, "routing_key": rk, "queues": dests},
                )
                continue
            rec.confirmed = True
            for q in dests:
                counts[q] = counts.get(q, 0) + 1

        # Drain.
        found = {}
        for name in sorted(counts):
            found[name] = drain(ch, name, counts[name])
        # Queues the model does not hold (resurrected, uncertain): gone again.
        for name in sorted(extra | (set(counts) - set(topo.queues))):
            ch.queue_delete(name)
    finally:
        try:
            conn.close()
        except Exception:
            pass

    # Compare.
    seen = {}  # (key, queue) -> count
    order = {}  # (queue, worker, qos) -> [seq]
    for queue, bodies in found.items():
        for body in bodies:
            key = parse_body(body)
            if key is None:
                bad.add(
                    "phantoms",
                    {
                        "round": rnd,
                        "queue": queue,
                        "body": body[:120].decode(errors="replace"),
                        "why": "not a body we make (or corrupted)",
                    },
                )
                continue
            seen[(key, queue)] = seen.get((key, queue), 0) + 1
            rec = ledger.get(key)
            if rec is None:
                w, r, s = key_parts(key)
                if r < rnd:
                    bad.add(
                        "stale",
                        {
                            "round": rnd,
                            "queue": queue,
                            "message": key.decode(),
                            "from_round": r,
                            "found_by_that_rounds_check": (
                                key in previous if r == rnd - 1 else "not kept"
                            ),
                        },
                    )
                else:
                    bad.add(
                        "phantoms",
                        {
                            "round": rnd,
                            "queue": queue,
                            "message": key.decode(),
                            "why": "never sent",
                        },
                    )
                continue
            if queue not in rec.dests:
                bad.add(
                    "phantoms",
                    {
                        "round": rnd,
                        "queue": queue,
                        "message": key.decode(),
                        "why": f"sent to {rec.dests}, not here",
                    },
                )
                continue
            if rec.worker != "probe":
                order.setdefault((queue, rec.worker, rec.qos), []).append(rec.seq)
    for (key, queue), n in seen.items():
        if n > 1:
            bad.add(
                "duplicates", {"round": rnd, "queue": queue, "message": key.decode(), "copies": n}
            )
    for (queue, worker, qos), seqs in order.items():
        if any(b < a for a, b in zip(seqs, seqs[1:])):  # equal: a duplicate
            i = next(i for i, (a, b) in enumerate(zip(seqs, seqs[1:])) if b < a)
            bad.add(
                "out_of_order",
                {
                    "round": rnd,
                    "queue": queue,
                    "worker": worker,
                    "qos": qos,
                    "around": seqs[max(0, i - 3) : i + 4],
                },
            )

    figures = dict.fromkeys(FIGURES, 0)
    by_proto = {}
    found_keys = set()
    for key, rec in ledger.items():
        if rec.worker == "probe":
            figures["probes"] += 1
            present = all(seen.get((key, q), 0) for q in rec.dests)
            if rec.confirmed and not present:
                bad.add(
                    "lost_bindings",
                    {
                        "round": rnd,
                        "probe": key.decode(),
                        "queues": rec.dests,
                        "missing_from": [q for q in rec.dests if not seen.get((key, q))],
                    },
                )
            continue
        p = by_proto.setdefault(rec.proto, {"sent": 0, "confirmed": 0, "recovered": 0})
        figures["sent"] += 1
        p["sent"] += 1
        present_in = [q for q in rec.dests if seen.get((key, q), 0)]
        if rec.confirmed:
            figures["confirmed"] += 1
            p["confirmed"] += 1
            if len(present_in) == len(rec.dests):
                figures["recovered"] += 1
                p["recovered"] += 1
            for q in rec.dests:
                if q in present_in:
                    continue
                bad.add(
                    "missing",
                    lambda: missing_detail(rnd, rec, q, found.get(q), ledger, kill_time),
                )
        else:
            figures["unconfirmed"] += 1
            if present_in:
                figures["unconfirmed_present"] += 1
        if present_in:
            found_keys.add(key)
    figures["by_proto"] = by_proto
    figures["found_keys"] = found_keys
    figures["drained"] = sum(len(b) for b in found.values())
    return bad, figures


def missing_detail(rnd, rec, queue, bodies, ledger, kill_time):
    """What to report about a confirmed message not found in `queue`."""

    def before(t):
        return round(kill_time - t, 4) if kill_time and t else None

    held = []
    others = 0
    for b in bodies or []:
        k = parse_body(b)
        r = ledger.get(k) if k else None
        if r is not None and r.worker == rec.worker:
            held.append(r.seq)
        else:
            others += 1
    to_queue = [r for r in ledger.values() if r.worker == rec.worker and queue in r.dests]
    expected = [r.seq for r in to_queue]
    confirmed = [r.seq for r in to_queue if r.confirmed]
    return {
        "round": rnd,
        "worker": rec.worker,
        "protocol": rec.proto,
        "qos": rec.qos,
        "message": rec.key.decode(),
        "seq": rec.seq,
        "queue": queue,
        "routed_to": rec.dests,
        "confirmed_s_before_kill": before(rec.t_conf),
        "sent_s_before_kill": before(rec.t_sent),
        "worker_sent_to_queue": ranges(expected),
        "worker_confirmed_to_queue": ranges(confirmed),
        "queue_held_of_worker": ranges(held),
        "queue_held_of_others": others,
    }


def trim_queues(broker, topo, headroom):
    """Deletes the oldest dynamic queues (empty: just drained) until at most
    `max_queues - headroom` exist, so the next round has room."""
    with topo.lock:
        dynamic = sorted(
            (rnd, name) for name, (kind, rnd) in topo.queues.items() if kind != "long"
        )
        excess = len(topo.queues) - (topo.max_queues - headroom)
    if excess <= 0:
        return 0
    conn = broker.connect()
    try:
        ch = conn.channel()
        for _, name in dynamic[:excess]:
            ch.queue_delete(name)
            topo.remove(name)
    finally:
        conn.close()
    return excess


# --- the run ---------------------------------------------------------------------


@dataclass
class Result:
    rounds: int = 0
    planned: int = 0
    ok: bool = False
    stopped: str = ""
    totals: dict = field(default_factory=dict)
    by_proto: dict = field(default_factory=dict)
    ready: list = field(default_factory=list)
    anomalies: Anomalies = field(default_factory=Anomalies)
    report_path: Path = None
    data_dir: Path = None
    seconds: float = 0.0

    def summary(self):
        t, a = self.totals, self.anomalies.counts
        ready = self.ready or [0.0]
        lines = [
            f"kill9 soak: {self.rounds}/{self.planned} rounds in {self.seconds:.0f} s"
            + (f" (stopped: {self.stopped})" if self.stopped else ""),
            "  sent {sent}  confirmed {confirmed}  recovered {recovered}  "
            "unconfirmed {unconfirmed} (present after the kill: {unconfirmed_present})  "
            "probes {probes}  drained {drained}".format(**t),
            "  " + "  ".join(f"{k.replace('_', ' ')} {v}" for k, v in a.items()),
            "  by protocol: "
            + ", ".join(
                f"{p} {v['confirmed']}/{v['sent']} confirmed, {v['recovered']} recovered"
                for p, v in sorted(self.by_proto.items())
            ),
            f"  time to ready after each restart: min {min(ready):.3f} s  "
            f"median {statistics.median(ready):.3f} s  max {max(ready):.3f} s  "
            f"({len(self.ready)} restarts)",
            "RESULT: " + ("OK" if self.ok else "FAILED"),
        ]
        if self.report_path:
            lines.append(f"  details: {self.report_path}")
        if not self.ok and self.data_dir:
            lines.append(f"  data dir kept: {self.data_dir}")
        return "\n".join(lines)


def defaults(**overrides):
    """The options of a run, as parsed from the command line (for the test)."""
    ns = build_parser().parse_args([])
    for k, v in overrides.items():
        setattr(ns, k, v)
    return ns


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--seconds-per-round", type=float, default=3.0,
                   help="the kill comes at a random moment within this (default 3)")
    p.add_argument("--min-kill-fraction", type=float, default=0.1,
                   help="earliest kill, as a fraction of --seconds-per-round")
    p.add_argument("--workers", type=parse_workers, default=parse_workers(DEFAULT_WORKERS),
                   help=f"publishers per protocol (default {DEFAULT_WORKERS})")
    p.add_argument("--max-queues", type=int, default=200)
    p.add_argument("--new-queues-per-worker", type=int, default=2,
                   help="new durable queues a worker declares per round, at random moments")
    p.add_argument("--qos2-fraction", type=float, default=0.2)
    p.add_argument("--max-messages-per-worker", type=int, default=20000,
                   help="per round; a worker that reaches it waits for the kill")
    p.add_argument("--max-seconds", type=float, default=1500.0,
                   help="stop starting rounds after this (default 25 min)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--data-dir", type=Path, default=None,
                   help="default: a new temporary dir (removed after a clean run)")
    p.add_argument("--report", type=Path, default=None,
                   help="JSON details (default: next to the data dir)")
    p.add_argument("--quiet", action="store_true", help="no per-round lines")
    return p


def run_soak(cfg, data_dir=None, out=print):
    """One run (see the module doc); returns a Result."""
    started = time.monotonic()
    seed = cfg.seed if cfg.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    own_dir = data_dir is None and cfg.data_dir is None
    if data_dir is None:
        data_dir = cfg.data_dir or Path(tempfile.mkdtemp(prefix="junction-kill9-")) / "data"
    data_dir = Path(data_dir)
    res = Result(planned=cfg.rounds, data_dir=data_dir)
    res.report_path = cfg.report or data_dir.parent / "kill9_soak_report.json"
    totals = dict.fromkeys(FIGURES, 0)
    rounds_log = []
    topo = Topology(cfg.max_queues)
    previous = set()
    n_workers = sum(cfg.workers.values())
    headroom = n_workers * cfg.new_queues_per_worker
    if cfg.max_queues < LONG_AMQP_QUEUES + LONG_MQTT_TOPICS + 1 + headroom:
        raise SystemExit("--max-queues too small for the long-lived queues and one round")
    out(f"kill9 soak: seed {seed}, data dir {data_dir}, workers {cfg.workers}, "
        f"{cfg.rounds} rounds of <= {cfg.seconds_per_round} s")
    broker = Broker(data_dir)
    round_costs = []
    try:
        broker.start()
        setup_long_lived(broker, topo)
        for rnd in range(1, cfg.rounds + 1):
            elapsed = time.monotonic() - started
            estimate = max(round_costs[-5:], default=cfg.seconds_per_round + 5)
            if elapsed + estimate > cfg.max_seconds:
                res.stopped = f"time budget of {cfg.max_seconds:.0f} s"
                break
            t_round = time.monotonic()
            trim_queues(broker, topo, headroom)
            ctx = RoundContext(broker, rnd, topo, threading.Event(), cfg, seed)
            workers = []
            for proto in PROTOCOLS:
                for i in range(cfg.workers.get(proto.name, 0)):
                    workers.append(proto.make(f"{proto.name}-{i}", ctx))
            for w in workers:
                w.thread.start()
            kill_after = rng.uniform(cfg.min_kill_fraction, 1.0) * cfg.seconds_per_round
            time.sleep(kill_after)
            ctx.killed.set()
            kill_time = time.monotonic()
            broker.kill9()
            join_deadline = kill_time + JOIN_TIMEOUT
            for w in workers:
                w.thread.join(max(0.0, join_deadline - time.monotonic()))
            stuck = [w.name for w in workers if w.thread.is_alive()]
            if stuck:
                res.stopped = f"round {rnd}: {stuck} still running {JOIN_TIMEOUT} s after the kill"
                res.anomalies.add("worker_errors", {"round": rnd, "error": res.stopped})
                break
            t0 = time.monotonic()
            broker.start()
            ready = time.monotonic() - t0
            res.ready.append(ready)
            t_check = time.monotonic()
            bad, fig = check_round(broker, topo, rnd, workers, previous, kill_time)
            previous = fig.pop("found_keys")
            check_s = time.monotonic() - t_check
            res.anomalies.merge(bad)
            for k in totals:
                totals[k] += fig[k]
            for p, v in fig["by_proto"].items():
                agg = res.by_proto.setdefault(p, {"sent": 0, "confirmed": 0, "recovered": 0})
                for k in agg:
                    agg[k] += v[k]
            res.rounds = rnd
            round_costs.append(time.monotonic() - t_round)
            line = (
                f"round {rnd:3d}/{cfg.rounds}  kill@{kill_after:5.2f}s  sent {fig['sent']:6d}  "
                f"confirmed {fig['confirmed']:6d}  recovered {fig['recovered']:6d}  "
                f"unconfirmed {fig['unconfirmed_present']}/{fig['unconfirmed']} present  "
                f"missing {bad.counts['missing']}  phantoms {bad.counts['phantoms']}  "
                f"other {bad.total() - bad.counts['missing'] - bad.counts['phantoms']}  "
                f"queues {topo.count()}  ready {ready:.3f}s  check {check_s:.2f}s"
            )
            rounds_log.append({
                "round": rnd, "kill_after_s": round(kill_after, 3), "ready_s": round(ready, 4),
                "check_s": round(check_s, 3), "queues": topo.count(),
                **{k: fig[k] for k in totals}, "anomalies": dict(bad.counts),
                "workers_ended_by": {w.name: w.ended_by for w in workers},
            })
            if not cfg.quiet:
                out(line)
            if bad.total():
                out("  FAILED checks this round: " + json.dumps(
                    {k: v[:3] for k, v in bad.details.items() if v}, default=str)[:4000])
    except pytest.fail.Exception as e:
        res.stopped = f"broker failed: {e}"
        res.anomalies.add("worker_errors", {"round": res.rounds + 1, "error": res.stopped})
    except Exception as e:  # noqa: BLE001 (a check that could not finish: reported)
        res.stopped = f"harness error in round {res.rounds + 1}: {type(e).__name__}: {e}"
        res.anomalies.add(
            "worker_errors", {"round": res.rounds + 1, "error": traceback.format_exc(limit=8)}
        )
    finally:
        try:
            broker.stop()
        except Exception:
            broker.kill9()
    res.totals = totals
    res.seconds = time.monotonic() - started
    res.ok = res.anomalies.total() == 0 and res.rounds == cfg.rounds and not res.stopped
    report = {
        "ok": res.ok, "seed": seed, "rounds": res.rounds, "planned": cfg.rounds,
        "stopped": res.stopped, "seconds": round(res.seconds, 1), "totals": totals,
        "by_protocol": res.by_proto, "anomaly_counts": res.anomalies.counts,
        "anomalies": res.anomalies.details, "ready_s": [round(r, 4) for r in res.ready],
        "rounds_detail": rounds_log,
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(cfg).items()},
        "data_dir": str(data_dir), "broker_log": str(broker.log_path),
    }
    if not res.ok:
        report["broker_log_tail"] = broker.log_tail(200)
    res.report_path.parent.mkdir(parents=True, exist_ok=True)
    res.report_path.write_text(json.dumps(report, indent=1, default=str))
    if res.ok and own_dir:
        shutil.rmtree(data_dir.parent, ignore_errors=True)
        res.report_path = None
    return res


def main(argv=None):
    cfg = build_parser().parse_args(argv)
    # stomp.py logs every send on a socket the kill closed, with a traceback.
    logging.getLogger("stomp.py").setLevel(logging.CRITICAL)
    res = run_soak(cfg)
    print(res.summary())
    return 0 if res.ok else 1


if __name__ == "__main__":
    sys.exit(main())
