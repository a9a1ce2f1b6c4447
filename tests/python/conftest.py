"""Runs the real `junction` binary for the end-to-end tests.

Owns the broker processes (`Broker`, from broker_support.py: starting the
binary in a temporary data dir, reading its ready line, stopping it with
SIGTERM or SIGKILL and restarting it on the same data dir). Also bounds
every test in time: a test that hangs (a client waiting for a reply that
never comes) fails with `DeadlineExceeded` instead of blocking the suite.

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

import re
import signal

import pytest

from broker_support import Broker

DEFAULT_TEST_DEADLINE = 40.0


class DeadlineExceeded(Exception):
    """A test ran past its deadline (see the `deadline` marker)."""


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


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """Keeps each phase's report on the test item, so fixtures can tell at
    teardown whether the test failed (`_failed`)."""
    report = yield
    setattr(item, "rep_" + report.when, report)
    return report


def _failed(request):
    return any(
        getattr(getattr(request.node, "rep_" + when, None), "failed", False)
        for when in ("setup", "call")
    )


def _show_logs(brokers):
    """Prints the end of each broker's log (pytest shows it under the
    failed test's "Captured stdout teardown"): a failure seen only in CI
    can then be read from its output."""
    for b in brokers:
        print(f"--- broker log {b.log_path} (last 80 lines) ---")
        print(b.log_tail(80))


@pytest.fixture
def make_broker(tmp_path, request):
    """`make_broker(vhosts=[...], users=[(name, password, [vhosts])],
    broker_options=["key = value"], mqtt_options=["key = value"],
    stomp_options=["key = value"], amqp_options=["key = value"],
    data_dir=path)` returns a started
    broker; every one is stopped at teardown."""
    made = []

    def make(
        vhosts=None, users=(), broker_options=(), mqtt_options=(), stomp_options=(), data_dir=None,
        amqp_options=(), extra_config="", commands=(),
    ):
        """`broker_options` / `mqtt_options` / `stomp_options`: extra
        `key = value` lines for the [broker] / [mqtt] / [stomp] tables.
        `data_dir`: where the broker keeps its store (default: a fresh dir
        under the test's tmp_path); its log goes
        beside it, `<data_dir>.log`, so a data dir that is a mount point
        (a small tmpfs) keeps the log off that file system.
        `extra_config`: more TOML after those tables (`[auth]`, say).
        `commands`: `junction` commands (argument lists) run before the
        start, after the users are added (`["permission", "set", ...]`)."""
        n = len(made)
        config = None
        lines = list(broker_options)
        if vhosts is not None:
            listed = ", ".join('"%s"' % v for v in vhosts)
            lines.append(f"vhosts = [{listed}]")
        if lines or mqtt_options or stomp_options or amqp_options or extra_config:
            config = tmp_path / f"junction-{n}.toml"
            text = "[broker]\n" + "\n".join(lines) + "\n"
            if mqtt_options:
                text += "[mqtt]\n" + "\n".join(mqtt_options) + "\n"
            if stomp_options:
                text += "[stomp]\n" + "\n".join(stomp_options) + "\n"
            if amqp_options:
                text += "[amqp]\n" + "\n".join(amqp_options) + "\n"
            config.write_text(text + extra_config)
        b = Broker(data_dir if data_dir is not None else tmp_path / f"data-{n}", config)
        made.append(b)
        for name, password, user_vhosts in users:
            b.add_user(name, password, user_vhosts)
        for args in commands:
            b.command(*args)
        return b.start()

    yield make
    if _failed(request):
        _show_logs(made)
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
