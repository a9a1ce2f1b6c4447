"""Runs the real `junction` binary for the end-to-end tests.

Owns the broker process: where the binary is, starting it in a temporary
data dir, reading its ready line, stopping it (SIGTERM, SIGKILL) and
restarting it on the same data dir. Also bounds every test in time: a test
that hangs (a client waiting for a reply that never comes) fails with
`DeadlineExceeded` instead of blocking the suite.

Fixtures:
- `broker`: a fresh broker for one test (for kills, restarts, shutdowns).
- `module_broker`: one broker shared by a test module (most tests: each
  uses names of its own, see `names`).
- `make_broker`: a factory for brokers with extra vhosts or users.
- `shared_amqp`: a pika connection to `module_broker` shared by the
  module (`.get()` reopens it if a test closed it); logins are slow in a
  unoptimised build (argon2), so tests share it rather than each logging in.
- `amqp_channel`: a fresh channel on that connection.
- `names`: a factory of queue/exchange names unique to the test.
"""

import os
import re
import select
import signal
import subprocess
import time
from pathlib import Path

import pika
import pytest

READY_RE = re.compile(
    r"^junction ready amqp=127\.0\.0\.1:(\d+) mqtt=127\.0\.0\.1:(\d+) admin=127\.0\.0\.1:(\d+)$"
)
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
DEFAULT_TEST_DEADLINE = 40.0


def junction_bin():
    """The binary under test: $JUNCTION_BIN, else the cargo target dir's."""
    if os.environ.get("JUNCTION_BIN"):
        return Path(os.environ["JUNCTION_BIN"])
    target = os.environ.get("CARGO_TARGET_DIR") or os.path.expanduser("~/.cache/junction/target")
    return Path(target) / "release" / "junction"


class DeadlineExceeded(Exception):
    """A test ran past its deadline (see the `deadline` marker)."""


class Broker:
    """One junction process over one data dir; `restart` keeps the dir."""

    def __init__(self, data_dir, config=None):
        self.data_dir = Path(data_dir)
        self.config = config
        self.log_path = self.data_dir.parent / (self.data_dir.name + ".log")
        self.proc = None
        self.amqp_port = None
        self.mqtt_port = None
        self.admin_port = None

    def _args(self):
        args = [str(junction_bin()), "--data-dir", str(self.data_dir)]
        if self.config is not None:
            args += ["--config", str(self.config)]
        return args

    def add_user(self, name, password, vhosts=("/",)):
        """`junction user add`: only while the broker is stopped."""
        assert self.proc is None or self.proc.poll() is not None
        args = self._args() + ["user", "add", name, "--password", password]
        for v in vhosts:
            args += ["--vhost", v]
        subprocess.run(args, check=True, timeout=60, capture_output=True)

    def start(self):
        binary = junction_bin()
        if not binary.exists():
            pytest.fail(f"junction binary not found at {binary}; build it or set JUNCTION_BIN")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(
                self._args() + ["--amqp-port", "0", "--mqtt-port", "0", "--admin-port", "0"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
            )
        finally:
            log.close()
        line = self._read_ready_line()
        m = READY_RE.match(line)
        if not m:
            self.kill9()
            pytest.fail(f"unexpected ready line {line!r}; log:\n{self.log_tail()}")
        self.amqp_port, self.mqtt_port, self.admin_port = (int(g) for g in m.groups())
        return self

    def _read_ready_line(self):
        deadline = time.monotonic() + READY_TIMEOUT
        fd = self.proc.stdout.fileno()
        data = b""
        while b"\n" not in data:
            left = deadline - time.monotonic()
            if left <= 0:
                self.kill9()
                pytest.fail(f"no ready line within {READY_TIMEOUT}s; log:\n{self.log_tail()}")
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(fd, 4096)
            if not chunk:
                code = self.proc.wait(timeout=5)
                pytest.fail(f"broker exited ({code}) before ready; log:\n{self.log_tail()}")
            data += chunk
        return data.split(b"\n", 1)[0].decode()

    def log_tail(self, n=40):
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return ""
        return "\n".join(lines[-n:])

    def _close_pipes(self):
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()

    def kill9(self):
        """SIGKILL: no shutdown code runs (a crash)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=STOP_TIMEOUT)
        self._close_pipes()

    def terminate(self, timeout=STOP_TIMEOUT):
        """SIGTERM and wait; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill9()
            raise
        self._close_pipes()
        return code

    def restart(self):
        """Stops (gracefully if still running) and starts again on the same
        data dir; the ports change."""
        if self.proc is not None and self.proc.poll() is None:
            self.terminate()
        return self.start()

    def stop(self):
        """Teardown: graceful, then forced."""
        if self.proc is None:
            return
        try:
            if self.proc.poll() is None:
                self.terminate()
        except subprocess.TimeoutExpired:
            pass
        finally:
            self.kill9()

    def params(self, user="guest", password="guest", vhost="/", **kw):
        """pika parameters with every wait bounded."""
        kw.setdefault("socket_timeout", 5)
        kw.setdefault("stack_timeout", 15)
        kw.setdefault("blocked_connection_timeout", 10)
        kw.setdefault("connection_attempts", 1)
        return pika.ConnectionParameters(
            host="127.0.0.1",
            port=self.amqp_port,
            virtual_host=vhost,
            credentials=pika.PlainCredentials(user, password),
            **kw,
        )

    def connect(self, **kw):
        """A pika BlockingConnection (see `params` for the arguments)."""
        return pika.BlockingConnection(self.params(**kw))


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "deadline(seconds): fail the test if it runs longer (default %d s)"
        % DEFAULT_TEST_DEADLINE,
    )


@pytest.fixture(autouse=True)
def _test_deadline(request):
    """Fails a test that runs past its deadline with `DeadlineExceeded`."""
    marker = request.node.get_closest_marker("deadline")
    seconds = marker.args[0] if marker else DEFAULT_TEST_DEADLINE

    def expired(signum, frame):
        raise DeadlineExceeded(f"{request.node.name} ran longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def make_broker(tmp_path):
    """`make_broker(vhosts=[...], users=[(name, password, [vhosts])],
    broker_options=["key = value"], mqtt_options=["key = value"])` returns a started broker; every one is
    stopped at teardown."""
    made = []

    def make(vhosts=None, users=(), broker_options=(), mqtt_options=()):
        """`broker_options` / `mqtt_options`: extra `key = value` lines for
        the [broker] / [mqtt] tables."""
        n = len(made)
        config = None
        lines = list(broker_options)
        if vhosts is not None:
            listed = ", ".join('"%s"' % v for v in vhosts)
            lines.append(f"vhosts = [{listed}]")
        if lines or mqtt_options:
            config = tmp_path / f"junction-{n}.toml"
            text = "[broker]\n" + "\n".join(lines) + "\n"
            if mqtt_options:
                text += "[mqtt]\n" + "\n".join(mqtt_options) + "\n"
            config.write_text(text)
        b = Broker(tmp_path / f"data-{n}", config)
        made.append(b)
        for name, password, user_vhosts in users:
            b.add_user(name, password, user_vhosts)
        return b.start()

    yield make
    for b in made:
        b.stop()


@pytest.fixture
def broker(make_broker):
    """A fresh broker for this test alone."""
    return make_broker()


@pytest.fixture(scope="module")
def module_broker(tmp_path_factory):
    """One broker for a whole test module."""
    b = Broker(tmp_path_factory.mktemp("module") / "data")
    b.start()
    yield b
    b.stop()


class _SharedConnection:
    """A pika connection reused across a module's tests; reopened when a
    test left it closed (e.g. by provoking a connection error)."""

    def __init__(self, broker):
        self.broker = broker
        self.conn = None

    def get(self):
        if self.conn is None or not self.conn.is_open:
            self.conn = self.broker.connect()
        return self.conn

    def close(self):
        if self.conn is not None and self.conn.is_open:
            self.conn.close()


@pytest.fixture(scope="module")
def shared_amqp(module_broker):
    """The module's shared pika connection: `shared_amqp.get()` returns
    it, reopened if a test closed it."""
    shared = _SharedConnection(module_broker)
    yield shared
    shared.close()


@pytest.fixture
def amqp_channel(shared_amqp):
    """A new channel on the module's shared connection."""
    ch = shared_amqp.get().channel()
    yield ch
    if ch.is_open and ch.connection.is_open:
        ch.close()


@pytest.fixture
def names(request):
    """`names("q")` -> a name no other test uses."""
    base = re.sub(r"[^A-Za-z0-9_.-]", "_", request.node.name)

    def make(suffix):
        return f"{base}.{suffix}"

    return make
