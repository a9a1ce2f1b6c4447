"""The runnable examples in examples/ (README.md, "Examples"), run as their
READMEs say: each script is a subprocess of this test against a real
broker, and what it prints is checked exactly, so the examples cannot rot.

- iot_bridge: MQTT devices publish readings, an AMQP service consumes them
  from a durable queue bound to amq.topic and answers each device.
- stomp_to_amqp: a printf | nc one-liner and a stomp.py script send to
  /queue/inbox, an AMQP worker drains it.
- work_queue: jobs fed over STOMP and AMQP survive a clean broker restart
  and are done exactly once by competing AMQP and STOMP workers.

Host and ports reach the scripts through their arguments in some tests and
through the JUNCTION_* environment variables in others, so both stay
working.
"""

import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from net_support import wait_until

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
PYTHON = sys.executable  # the venv's python: paho-mqtt, pika, stomp.py
RUN_TIMEOUT = 30.0


def port_args(broker, *protocols):
    """`--host 127.0.0.1 --amqp-port N ...` for the protocols named."""
    args = ["--host", "127.0.0.1"]
    for proto in protocols:
        args += [f"--{proto}-port", str(getattr(broker, f"{proto}_port"))]
    return args


def port_env(broker):
    """The environment with JUNCTION_HOST and every JUNCTION_*_PORT set."""
    env = dict(os.environ)
    env.update(
        JUNCTION_HOST="127.0.0.1",
        JUNCTION_AMQP_PORT=str(broker.amqp_port),
        JUNCTION_MQTT_PORT=str(broker.mqtt_port),
        JUNCTION_STOMP_PORT=str(broker.stomp_port),
    )
    return env


class Script:
    """One example script running as a subprocess; a thread collects its
    stdout lines as they come (`lines`), stderr goes to a file read on
    failure."""

    def __init__(self, argv, env=None, stderr_path=None):
        self.argv = [str(a) for a in argv]
        self.stderr_path = stderr_path
        self.stderr = open(stderr_path, "wb")
        self.proc = subprocess.Popen(
            self.argv,
            cwd=EXAMPLES.parent,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
        )
        self.lines = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:
            with self._lock:
                self.lines.append(line.rstrip("\n"))

    def output(self):
        with self._lock:
            return list(self.lines)

    def describe(self):
        err = Path(self.stderr_path).read_text(errors="replace")
        return f"{' '.join(self.argv)}\nstdout:\n" + "\n".join(self.output()) + f"\nstderr:\n{err}"

    def wait_line(self, line, timeout=10.0):
        """Waits until the script printed exactly `line`."""
        assert wait_until(lambda: line in self.output(), timeout), (
            f"no {line!r} within {timeout} s\n{self.describe()}"
        )

    def finish(self, timeout=RUN_TIMEOUT, expect=0):
        """Waits for the exit; its status must be `expect`. Returns the
        stdout lines."""
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"still running after {timeout} s\n{self.describe()}")
        self._reader.join(timeout=5)
        self.stderr.close()
        assert code == expect, f"exit {code}\n{self.describe()}"
        return self.output()

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)
        self.stderr.close()


@pytest.fixture
def scripts(tmp_path):
    """`scripts(argv, env=None)` starts an example script; any still
    running at teardown is killed."""
    started = []

    def start(argv, env=None):
        s = Script(argv, env=env, stderr_path=tmp_path / f"script-{len(started)}.stderr")
        started.append(s)
        return s

    yield start
    for s in started:
        s.kill()


def run(scripts, argv, env=None, timeout=RUN_TIMEOUT, expect=0):
    """Runs a script to its end (exit status `expect`); returns its stdout
    lines."""
    return scripts(argv, env=env).finish(timeout, expect)


def queue_depth(broker, queue):
    """Messages ready in `queue` (a passive declare)."""
    conn = broker.connect()
    try:
        return conn.channel().queue_declare(queue, passive=True).method.message_count
    finally:
        conn.close()


# --- iot_bridge -------------------------------------------------------------------------


def test_iot_bridge_each_device_gets_one_command_per_reading(broker, scripts):
    iot = EXAMPLES / "iot_bridge"
    service = scripts(
        [PYTHON, iot / "service.py", *port_args(broker, "amqp"), "--count", "6", "--timeout", "20"]
    )
    # The readings' queue must be bound before a device publishes.
    service.wait_line("service: ready, queue telemetry bound to amq.topic with plant.*.temp")
    devices = {
        "7": scripts([PYTHON, iot / "device.py", *port_args(broker, "mqtt"), "--timeout", "20"]),
        "8": scripts(
            [
                PYTHON,
                iot / "device.py",
                *port_args(broker, "mqtt"),
                "--plant",
                "8",
                "--readings",
                "30,10,26.5",
                "--timeout",
                "20",
            ]
        ),
    }
    readings = {"7": [21.5, 24.0, 27.5], "8": [30.0, 10.0, 26.5]}

    def reading(seq, celsius):
        return '{"celsius":%s,"seq":%d}' % (celsius, seq)

    def command(seq, celsius):
        return '{"fan":"%s","seq":%d}' % ("on" if celsius > 25.0 else "off", seq)

    expected_service = ["service: ready, queue telemetry bound to amq.topic with plant.*.temp"]
    for plant, device in devices.items():
        published = [
            f"device plant/{plant}: published plant/{plant}/temp {reading(seq, c)}"
            for seq, c in enumerate(readings[plant], 1)
        ]
        # Each device got exactly its own commands (plant.<id>.cmd, derived
        # from the reading's routing key), once each.
        commands = [
            f"device plant/{plant}: command plant/{plant}/cmd {command(seq, c)}"
            for seq, c in enumerate(readings[plant], 1)
        ]
        out = device.finish()
        assert sorted(out) == sorted(published + commands), out
        # Readings go out in order (one QoS 1 PUBLISH awaited at a time).
        assert [line for line in out if " published " in line] == published
        expected_service += [
            f"service: plant.{plant}.temp {reading(seq, c)} -> plant.{plant}.cmd {command(seq, c)}"
            for seq, c in enumerate(readings[plant], 1)
        ]
    assert sorted(service.finish()) == sorted(expected_service)
    # Every reading was acknowledged; the durable queue stays, empty.
    assert queue_depth(broker, "telemetry") == 0


def test_iot_bridge_readings_wait_in_the_durable_queue_across_a_restart(broker, scripts):
    iot = EXAMPLES / "iot_bridge"
    ready = "service: ready, queue telemetry bound to amq.topic with plant.*.temp"
    # --count 0: the service only declares its queue and binding.
    out = run(scripts, [PYTHON, iot / "service.py", "--count", "0"], env=port_env(broker))
    assert out == [ready]
    # No service running: the device's readings are stored (PUBACKed), its
    # commands never come.
    out = run(
        scripts,
        [PYTHON, iot / "device.py", *port_args(broker, "mqtt"), "--timeout", "1"],
        expect=1,
    )
    readings = ['{"celsius":21.5,"seq":1}', '{"celsius":24.0,"seq":2}', '{"celsius":27.5,"seq":3}']
    assert out == [f"device plant/7: published plant/7/temp {r}" for r in readings] + [
        "device plant/7: timed out with 0 of 3 commands"
    ]
    assert broker.terminate() == 0
    broker.start()
    # The readings are still there; the device is gone (its clean session
    # ended with its connection), so every command is unroutable.
    out = run(scripts, [PYTHON, iot / "service.py", "--timeout", "10"], env=port_env(broker))
    assert out == [ready] + [
        f"service: plant.7.temp {r} -> plant.7.cmd unroutable (no device subscribed)"
        for r in readings
    ]
    assert queue_depth(broker, "telemetry") == 0


# --- stomp_to_amqp ----------------------------------------------------------------------


def test_stomp_to_amqp_shell_and_stomp_py_messages_reach_the_amqp_worker(broker, scripts):
    if shutil.which("nc") is None:
        pytest.fail("nc not found: scripts/setup installs netcat-openbsd")
    ex = EXAMPLES / "stomp_to_amqp"
    env = port_env(broker)
    out = run(scripts, ["bash", ex / "send.sh", "hello from nc"], env=env)
    # The broker's two frames (NULs turned into newlines), then the verdict.
    assert out[0] == "CONNECTED", out
    assert out[-3:] == [
        "RECEIPT",
        "receipt-id:bye",
        "send.sh: sent 'hello from nc' to /queue/inbox",
    ], out
    assert run(scripts, [PYTHON, ex / "send.py", "--count", "3"], env=env) == [
        f"send.py: message {n} stored in /queue/inbox" for n in (1, 2, 3)
    ]
    assert queue_depth(broker, "inbox") == 4
    # One queue, one consumer: FIFO, so the exact order.
    assert run(scripts, [PYTHON, ex / "worker.py", "--idle", "1"], env=env) == [
        "worker: 'hello from nc' content_type=text/plain delivery_mode=2 headers={}",
        *(
            f"worker: 'message {n}' content_type=text/plain delivery_mode=2 "
            "headers={'x-sender': 'send.py'}"
            for n in (1, 2, 3)
        ),
        "worker: drained 4 messages from inbox",
    ]
    assert queue_depth(broker, "inbox") == 0


# --- work_queue -------------------------------------------------------------------------


@pytest.mark.deadline(90)
def test_work_queue_jobs_survive_a_restart_and_are_done_exactly_once(broker, scripts):
    ex = EXAMPLES / "work_queue"
    n = 12
    stomp_jobs = [f"stomp-{i:03d}" for i in range(1, n + 1)]
    amqp_jobs = [f"amqp-{i:03d}" for i in range(1, n + 1)]
    assert run(
        scripts, [PYTHON, ex / "feed_stomp.py", *port_args(broker, "stomp"), "--count", str(n)]
    ) == [f"feed_stomp: job {j} stored" for j in stomp_jobs]
    assert run(scripts, [PYTHON, ex / "feed_amqp.py", "--count", str(n)], env=port_env(broker)) == [
        f"feed_amqp: job {j} confirmed" for j in amqp_jobs
    ]

    # A clean stop (SIGTERM, exit 0) and a start on the same data dir; the
    # ports change, so the workers get the new ones.
    assert broker.terminate() == 0
    broker.start()
    assert queue_depth(broker, "jobs") == 2 * n

    # Two competing workers, one per protocol, started together; each job
    # takes 0.15 s, so neither can finish the 24 alone before the other
    # subscribes.
    common = ["--work-seconds", "0.15", "--idle", "1.5", "--timeout", "40"]
    workers = {
        "amqp-1": scripts(
            [PYTHON, ex / "worker_amqp.py", *port_args(broker, "amqp"), "--name", "amqp-1", *common]
        ),
        "stomp-1": scripts(
            [PYTHON, ex / "worker_stomp.py", "--name", "stomp-1", *common], env=port_env(broker)
        ),
    }
    done = {}
    for name, worker in workers.items():
        out = worker.finish(timeout=60)
        prefix = f"worker {name}: done "
        done[name] = [line[len(prefix) :] for line in out if line.startswith(prefix)]
        assert out == [prefix + j for j in done[name]] + [
            f"worker {name}: idle, {len(done[name])} jobs done"
        ], out
    every = done["amqp-1"] + done["stomp-1"]
    # Exactly once: every job done, none twice, none lost.
    assert sorted(every) == sorted(stomp_jobs + amqp_jobs), done
    # Competing consumers with prefetch 1: both took part.
    assert done["amqp-1"] and done["stomp-1"], done
    assert queue_depth(broker, "jobs") == 0
