#!/usr/bin/env python3
"""A worker taking jobs from the work queue `jobs` over STOMP (stomp.py),
competing with any other worker on the same queue (worker_amqp.py, or more
copies of this one): the broker hands each job to one consumer only.

- SUBSCRIBE to /queue/jobs: the durable AMQP queue `jobs` (the feeders'
  queue; the broker declares it if missing, durable, no arguments).
- `ack:client-individual`: each MESSAGE is acknowledged on its own, after
  the job is done (with `ack:client`, one ACK would also settle every
  earlier message of the subscription). If the worker disconnects or dies
  first, the job goes back to the queue for another worker.
- `prefetch-count:1`: at most one unacknowledged job at a time, like
  AMQP's basic.qos 1 (the default window is 1,000, which would let this
  worker grab jobs it is not working on yet).

Prints one line per finished job and a summary, and stops once no job came
for --idle seconds (or at --timeout):

    worker stomp-1: done amqp-002
    worker stomp-1: idle, 5 jobs done
"""

import argparse
import os
import queue
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
    p.add_argument("--name", default="stomp-1", help="printed with every line (default stomp-1)")
    p.add_argument(
        "--work-seconds", type=float, default=0.2, help="time one job takes (default 0.2)"
    )
    p.add_argument(
        "--idle", type=float, default=3.0, help="stop when no job came for this long (default 3 s)"
    )
    p.add_argument(
        "--timeout", type=float, default=60.0, help="stop after this many seconds (default 60)"
    )
    return p.parse_args()


class Frames(stomp.ConnectionListener):
    """Hands MESSAGE frames to the main thread through a queue (stomp.py
    calls listeners on its receiver thread) and remembers CONNECTED,
    RECEIPT and ERROR frames so the main thread can wait for them with a
    timeout."""

    def __init__(self):
        self.cond = threading.Condition()
        self.connected = False
        self.receipts = set()
        self.errors = []
        self.messages = queue.Queue()

    def on_connected(self, frame):
        with self.cond:
            self.connected = True
            self.cond.notify_all()

    def on_message(self, frame):
        self.messages.put(frame)

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
    conn = stomp.Connection12(
        [(args.host, args.stomp_port)],
        vhost="/",  # the `host` header names the vhost
        reconnect_attempts_max=1,
        try_loopback_connect=False,
    )
    frames = Frames()
    conn.set_listener("frames", frames)
    conn.connect(args.user, args.password, wait=False)
    if not frames.wait(lambda: frames.connected, deadline):
        print(f"worker {args.name}: not connected {frames.errors}", flush=True)
        return 1
    done = 0
    stopped = "idle"
    try:
        conn.subscribe(
            "/queue/jobs",
            id="jobs",
            ack="client-individual",
            headers={"prefetch-count": "1", "receipt": "subscribed"},
        )
        if not frames.wait(lambda: "subscribed" in frames.receipts, deadline):
            print(f"worker {args.name}: not subscribed {frames.errors}", flush=True)
            return 1
        while True:
            try:
                msg = frames.messages.get(timeout=args.idle)
            except queue.Empty:
                break
            time.sleep(args.work_seconds)  # the work
            # STOMP 1.2 acknowledges by the MESSAGE's `ack` header. The
            # receipt makes sure the broker took the ACK before we say done.
            rid = f"ack-{msg.headers['ack']}"
            conn.ack(msg.headers["ack"], receipt=rid)
            if not frames.wait(lambda: rid in frames.receipts, deadline):
                print(f"worker {args.name}: ACK not confirmed {frames.errors}", flush=True)
                return 1
            done += 1
            print(f"worker {args.name}: done {msg.body}", flush=True)
            if time.monotonic() >= deadline:
                stopped = "timeout"
                break
        # DISCONNECT: a job delivered and not acknowledged (none, with
        # prefetch 1, once the queue is empty) goes back to the queue.
        conn.disconnect(receipt="bye")
        frames.wait(lambda: "bye" in frames.receipts, deadline)
    finally:
        if conn.is_connected():
            conn.transport.disconnect_socket()
    print(f"worker {args.name}: {stopped}, {done} jobs done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
