"""Plain TCP for the raw-socket clients (mqtt_support.RawClient,
amqp_raw.RawClient) and the tests that attack the broker below any
protocol: connecting on 127.0.0.1 with a chosen receive buffer, and how
many received bytes a socket has not read yet."""

import array
import fcntl
import socket
import termios
import time


def tcp_connect(port, timeout, rcvbuf=None):
    """A TCP connection to 127.0.0.1:`port` with `timeout` on every
    operation. `rcvbuf`: SO_RCVBUF in bytes, set before connecting (so the
    window announced in the handshake is small too; Linux doubles the
    value and has a floor)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.settimeout(timeout)
        sock.connect(("127.0.0.1", port))
    except BaseException:
        sock.close()
        raise
    return sock


def unread_bytes(sock):
    """Bytes the kernel holds for `sock` that it has not read (FIONREAD)."""
    n = array.array("i", [0])
    fcntl.ioctl(sock.fileno(), termios.FIONREAD, n, True)
    return n[0]


def wait_until(predicate, timeout=5.0, step=0.02):
    """Polls `predicate()` until it holds or `timeout` passes; returns
    whether it held."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(step)
    return True
