#!/usr/bin/env python3
"""Feeds jobs into the persistent work queue `jobs` over STOMP (stomp.py).

Each job is a SEND to /queue/jobs (AMQP's default exchange, routing key
`jobs`; the durable queue `jobs` is declared if missing) with
`persistent:true` (AMQP delivery_mode 2) and a `receipt` header. A job is
safe once its RECEIPT arrives: Junction answers a persistent SEND to a
durable queue only after the message is on disk (WAL synced), so a broker
restart or crash after that loses nothing. A job without `persistent:true`
would live in memory only and be gone after a restart.

Prints one line per job the broker confirmed:

    feed_stomp: job stomp-001 stored

Exit status 0 when every job got its receipt, 1 otherwise.
"""

import argparse
import os
import sys
import threading
import time

import stomp


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default=os.environ.get("JUNCTION_HOST", "127.0.0.1"))
    p.add_argument(
        "--stomp-port", type=int, default=int(os.environ.get("JUNCTION_STOMP_PORT", "61613"))
    )
    p.add_argument("--user", default=os.environ.get("JUNCTION_USER", "guest"))
    p.add_argument("--password", default=os.environ.get("JUNCTION_PASSWORD", "guest"))
    p.add_argument("--count", type=int, default=5, help="jobs to feed (default 5)")
    p.add_argument("--prefix", default="stomp", help="job ids are PREFIX-001... (default stomp)")
    p.add_argument(
        "--timeout", type=float, default=10.0, help="give up after this many seconds (default 10)"
    )
    return p.parse_args()


class Frames(stomp.ConnectionListener):
    """Remembers CONNECTED, RECEIPT and ERROR frames so the main thread can
    wait for them with a timeout."""

    def __init__(self):
        self.cond = threading.Condition()
        self.connected = False
        self.receipts = set()
        self.errors = []

    def on_connected(self, frame):
        with self.cond:
            self.connected = True
            self.cond.notify_all()

    def on_receipt(self, frame):
        with self.cond:
            self.receipts.add(frame.headers["receipt-id"])
            self.cond.notify_all()

    def on_error(self, frame):
        with self.cond:
            self.errors.append(f"{frame.headers.get('message')}: {frame.body}")
            self.cond.notify_all()

    def wait(self, predicate, deadline):
        with self.cond:
            return self.cond.wait_for(
                lambda: predicate() or self.errors, max(0.0, deadline - time.monotonic())
            ) and not self.errors


def main():
    args = parse_args()
    deadline = time.monotonic() + args.timeout
    # vhost="/": the `host` header names the vhost (stomp.py 1.2 would send
    # the host name otherwise).
    conn = stomp.Connection12(
        [(args.host, args.stomp_port)],
        vhost="/",
        reconnect_attempts_max=1,
        try_loopback_connect=False,
    )
    frames = Frames()
    conn.set_listener("frames", frames)
    conn.connect(args.user, args.password, wait=False)
    if not frames.wait(lambda: frames.connected, deadline):
        print(f"feed_stomp: not connected {frames.errors}", flush=True)
        return 1
    try:
        # All SENDs go out at once and the receipts are awaited after: they
        # come back in order, and the broker writes many jobs per disk sync.
        jobs = [f"{args.prefix}-{n:03d}" for n in range(1, args.count + 1)]
        for job in jobs:
            conn.send(
                "/queue/jobs",
                job,
                content_type="text/plain",
                headers={"persistent": "true", "receipt": job},
            )
        for job in jobs:
            if not frames.wait(lambda: job in frames.receipts, deadline):
                print(f"feed_stomp: no receipt for job {job} {frames.errors}", flush=True)
                return 1
            print(f"feed_stomp: job {job} stored", flush=True)
        conn.disconnect(receipt="bye")
        frames.wait(lambda: "bye" in frames.receipts, deadline)
        return 0
    finally:
        if conn.is_connected():
            conn.transport.disconnect_socket()


if __name__ == "__main__":
    sys.exit(main())
