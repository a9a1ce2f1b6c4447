#!/usr/bin/env python3
"""An AMQP 0-9-1 worker (pika) that drains the queue `inbox`, which STOMP
clients (send.sh, send.py) fill through the destination /queue/inbox.

A STOMP SEND to /queue/inbox is an AMQP publish to the default exchange
with routing key `inbox`: the message lands in the queue `inbox`, which
this worker declares the same way the STOMP side does (durable, no
arguments; declaring an existing queue with the same settings is a no-op,
so whichever side comes first creates it). STOMP headers arrive as AMQP
properties: `content-type` as `content_type`, `persistent:true` as
`delivery_mode` 2, other headers in `headers`.

Prints one line per message and stops once the queue has been empty for
--idle seconds (or after --count messages, or at --timeout):

    worker: 'message 1' content_type=text/plain delivery_mode=2 headers={'x-sender': 'send.py'}
"""

import argparse
import os
import sys
import time

import pika


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default=os.environ.get("JUNCTION_HOST", "127.0.0.1"))
    p.add_argument(
        "--amqp-port", type=int, default=int(os.environ.get("JUNCTION_AMQP_PORT", "5672"))
    )
    p.add_argument("--user", default=os.environ.get("JUNCTION_USER", "guest"))
    p.add_argument("--password", default=os.environ.get("JUNCTION_PASSWORD", "guest"))
    p.add_argument(
        "--count", type=int, default=0, help="stop after this many messages (default 0: no limit)"
    )
    p.add_argument(
        "--idle", type=float, default=2.0, help="stop when nothing came for this long (default 2 s)"
    )
    p.add_argument(
        "--timeout", type=float, default=60.0, help="stop after this many seconds (default 60)"
    )
    return p.parse_args()


def main():
    args = parse_args()
    deadline = time.monotonic() + args.timeout
    conn = pika.BlockingConnection(
        pika.ConnectionParameters(
            host=args.host,
            port=args.amqp_port,
            credentials=pika.PlainCredentials(args.user, args.password),
            socket_timeout=5,
            blocked_connection_timeout=10,
            connection_attempts=1,
        )
    )
    ch = conn.channel()
    # The queue STOMP's /queue/inbox declares: durable, no arguments.
    ch.queue_declare("inbox", durable=True)
    ch.basic_qos(prefetch_count=10)
    taken = 0
    try:
        for method, props, body in ch.consume("inbox", inactivity_timeout=args.idle):
            if method is None:  # the queue stayed empty for --idle seconds
                break
            print(
                f"worker: {body.decode()!r} content_type={props.content_type} "
                f"delivery_mode={props.delivery_mode} headers={props.headers or {}}",
                flush=True,
            )
            # Acknowledged after it was handled: until then the message stays
            # in the queue (a crash here means it is delivered again).
            ch.basic_ack(method.delivery_tag)
            taken += 1
            if (args.count and taken >= args.count) or time.monotonic() >= deadline:
                break
    finally:
        ch.cancel()
        conn.close()
    print(f"worker: drained {taken} messages from inbox", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
