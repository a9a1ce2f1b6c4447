#!/usr/bin/env python3
"""Sends messages to the STOMP destination /queue/inbox with stomp.py, for
an AMQP 0-9-1 consumer (worker.py) to read from the queue `inbox`.

`/queue/inbox` is RabbitMQ's STOMP destination for the queue `inbox`: a
SEND there publishes through AMQP's default exchange with routing key
`inbox` (and declares the durable queue `inbox` if it is missing), so any
AMQP client consuming `inbox` gets the messages. STOMP headers become AMQP
properties: `content-type` is `content_type`, `persistent:true` is
`delivery_mode` 2, any other header (here `x-sender`) is an AMQP header.

Every SEND asks for a receipt: Junction sends the RECEIPT of a persistent
SEND to a durable queue once the message is on disk (AMQP's publisher
confirm). Prints one line per message the broker confirmed:

    send.py: message 1 stored in /queue/inbox

Exit status 0 when every message got its receipt, 1 otherwise.
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
    p.add_argument("--count", type=int, default=3, help="messages to send (default 3)")
    p.add_argument(
        "--timeout", type=float, default=10.0, help="give up after this many seconds (default 10)"
    )
    return p.parse_args()


class Frames(stomp.ConnectionListener):
    """Remembers the CONNECTED, RECEIPT and ERROR frames stomp.py's receiver
    thread hands over, so the main thread can wait for them (with a
    timeout: stomp.py's own waits can block forever)."""

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
    # vhost="/": stomp.py 1.2 would otherwise send the host name as the
    # `host` header, which STOMP brokers read as the vhost.
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
        print(f"send.py: not connected {frames.errors}", flush=True)
        return 1
    try:
        for n in range(1, args.count + 1):
            receipt = f"msg-{n}"
            conn.send(
                "/queue/inbox",
                f"message {n}",
                content_type="text/plain",
                headers={"persistent": "true", "x-sender": "send.py", "receipt": receipt},
            )
            if not frames.wait(lambda: receipt in frames.receipts, deadline):
                print(f"send.py: no receipt for message {n} {frames.errors}", flush=True)
                return 1
            print(f"send.py: message {n} stored in /queue/inbox", flush=True)
        # DISCONNECT with a receipt: the broker closes once it has answered.
        conn.disconnect(receipt="bye")
        frames.wait(lambda: "bye" in frames.receipts, deadline)
        return 0
    finally:
        if conn.is_connected():
            conn.transport.disconnect_socket()


if __name__ == "__main__":
    sys.exit(main())
