"""A fault-injecting TCP proxy for the cluster tests (docs/cluster.md
"Tests"): it listens on 127.0.0.1, forwards every connection to one
target port, and on command delays what crosses it, black-holes it (holds
every byte, both ways, while connections stay open: a partition), or cuts
it (closes every connection and refuses new ones: a node gone from the
network). `heal()` returns to plain forwarding; what a black hole held is
then delivered, as TCP would after a partition heals.

Threads, not asyncio, so a test can drive it between blocking client
calls; every wait is bounded and `close()` stops everything."""

import socket
import threading
import time

POLL = 0.05


class FaultProxy:
    def __init__(self, target_port, host="127.0.0.1"):
        self.target = (host, target_port)
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((host, 0))
        self.listener.listen(64)
        self.listener.settimeout(POLL)
        self.port = self.listener.getsockname()[1]
        self.mode = "pass"  # pass | blackhole | cut
        self.delay = 0.0
        self.accepted = 0
        self._lock = threading.Lock()
        self._sockets = []
        self._stopped = threading.Event()
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    # --- commands -------------------------------------------------------

    def blackhole(self):
        """Hold every byte both ways; connections stay open."""
        self.mode = "blackhole"

    def cut(self):
        """Close every connection and refuse new ones."""
        self.mode = "cut"
        self._close_connections()

    def slow(self, seconds):
        """Delay every chunk by `seconds` before forwarding it."""
        self.delay = seconds

    def heal(self):
        """Forward plainly again."""
        self.delay = 0.0
        self.mode = "pass"

    def close(self):
        self._stopped.set()
        with self._lock:
            threads = list(self._threads)
        self._close_connections()
        for t in threads:
            t.join(timeout=2)
        self.listener.close()

    # --- workings -------------------------------------------------------

    def _close_connections(self):
        with self._lock:
            sockets = list(self._sockets)
        # Shut down only: each pump ends on it and the later of a pair's
        # two closes both sockets.
        for s in sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _accept(self):
        while not self._stopped.is_set():
            try:
                client, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            if self.mode == "cut":
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=2)
            except OSError:
                client.close()
                continue
            for s in (client, upstream):
                s.settimeout(POLL)
            with self._lock:
                # A cut (or close) that came while connecting wins.
                if self.mode == "cut" or self._stopped.is_set():
                    client.close()
                    upstream.close()
                    continue
                self.accepted += 1
                self._sockets += [client, upstream]
                self._threads = [t for t in self._threads if t.is_alive()]
                for src, dst in ((client, upstream), (upstream, client)):
                    t = threading.Thread(target=self._pump, args=(src, dst), daemon=True)
                    t.start()
                    self._threads.append(t)

    def _pump(self, src, dst):
        try:
            while not self._stopped.is_set():
                # A black hole reads nothing more: the sender's buffers fill
                # and it blocks, as across a real partition.
                if self.mode == "blackhole":
                    time.sleep(POLL)
                    continue
                try:
                    data = src.recv(65536)
                except socket.timeout:
                    continue
                if not data:
                    break
                while self.mode == "blackhole" and not self._stopped.is_set():
                    time.sleep(POLL)
                if self.delay:
                    time.sleep(self.delay)
                view = memoryview(data)
                while view and not self._stopped.is_set():
                    try:
                        view = view[dst.send(view):]
                    except socket.timeout:
                        continue
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            # The other direction's pump ends on the shutdown; whichever
            # ends second closes for good.
            with self._lock:
                for s in (src, dst):
                    if s in self._sockets:
                        self._sockets.remove(s)
                    else:
                        s.close()
