"""The real `junction` binary as a process: where the binary is, starting it
on a data dir, reading its ready line, stopping it (SIGTERM, SIGKILL) and
restarting it on the same data dir.

Shared by the pytest fixtures (conftest.py) and by scripts run on their own
(kill9_soak.py). A broker that cannot start fails with `pytest.fail` (an
exception a script can catch as `pytest.fail.Exception`).
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

# `junction ready amqp=127.0.0.1:N mqtt=... stomp=... admin=...`, then the
# TLS listeners (`amqps=`, `mqtts=`, `stomps=`) when TLS is configured.
READY_RE = re.compile(r"^junction ready((?: [a-z-]+=127\.0\.0\.1:\d+)+)$")
PLAIN_LISTENERS = ("amqp", "mqtt", "stomp", "admin")
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0


def junction_bin():
    """The binary under test: $JUNCTION_BIN, else the cargo target dir's."""
    if os.environ.get("JUNCTION_BIN"):
        return Path(os.environ["JUNCTION_BIN"])
    target = os.environ.get("CARGO_TARGET_DIR") or os.path.expanduser("~/.cache/junction/target")
    return Path(target) / "release" / "junction"


def _broker_env():
    """The broker's environment: MQTT connection ends are logged (debug)
    unless RUST_LOG says otherwise, so a failed test's log tail (printed
    by conftest) shows why a connection ended."""
    env = dict(os.environ)
    env.setdefault("RUST_LOG", "info,junction_mqtt=debug")
    return env


class Broker:
    """One junction process over one data dir; `restart` keeps the dir."""

    def __init__(self, data_dir, config=None, extra_args=()):
        self.data_dir = Path(data_dir)
        self.config = config
        # More flags for every start (TLS files and ports, say).
        self.extra_args = list(extra_args)
        # Every listener of the last start, by name (`amqps` too with TLS).
        self.ports = {}
        self.log_path = self.data_dir.parent / (self.data_dir.name + ".log")
        self.proc = None
        self.amqp_port = None
        self.mqtt_port = None
        self.stomp_port = None
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

    def command(self, *args, check=True):
        """`junction <args>` on this broker's config and data dir (a
        `user`, `permission` or `topic-permission` command); returns the
        CompletedProcess, text. A running broker notices the users file
        changing (see `wait_users_reloaded`)."""
        return subprocess.run(
            self._args() + [str(a) for a in args],
            check=check,
            timeout=60,
            capture_output=True,
            text=True,
        )

    def users_reloads(self):
        """How many times this broker has read its users file again."""
        try:
            return self.log_path.read_text(errors="replace").count("users file read again")
        except FileNotFoundError:
            return 0

    def change_users(self, *args, timeout=10.0):
        """Runs `junction <args>` against the running broker and waits until
        the broker has read the changed users file (it checks every second)."""
        before = self.users_reloads()
        out = self.command(*args)
        deadline = time.monotonic() + timeout
        while self.users_reloads() <= before:
            if time.monotonic() > deadline:
                pytest.fail(f"users file not read again within {timeout}s; log:\n{self.log_tail()}")
            time.sleep(0.05)
        return out

    def start(self):
        binary = junction_bin()
        if not binary.exists():
            pytest.fail(f"junction binary not found at {binary}; build it or set JUNCTION_BIN")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(
                self._args()
                + ["--amqp-port", "0", "--mqtt-port", "0", "--stomp-port", "0", "--admin-port", "0"]
                + ["--mqtt-ws-port", "0", "--stomp-ws-port", "0"]
                + self.extra_args,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                env=_broker_env(),
            )
        finally:
            log.close()
        line = self._read_ready_line()
        m = READY_RE.match(line)
        ports = {}
        if m:
            for item in m.group(1).split():
                name, addr = item.split("=", 1)
                ports[name] = int(addr.rsplit(":", 1)[1])
        if not all(name in ports for name in PLAIN_LISTENERS):
            self.kill9()
            pytest.fail(f"unexpected ready line {line!r}; log:\n{self.log_tail()}")
        self.ports = ports
        self.amqp_port, self.mqtt_port, self.stomp_port, self.admin_port = (
            ports[name] for name in PLAIN_LISTENERS
        )
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
