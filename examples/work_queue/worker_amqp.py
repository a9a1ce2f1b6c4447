#!/usr/bin/env python3
"""A worker taking jobs from the work queue `jobs` over AMQP 0-9-1 (pika),
competing with any other worker on the same queue (worker_stomp.py, or more
copies of this one): the broker hands each job to one consumer only.

- prefetch 1 (basic.qos): the broker sends this worker its next job only
  after it acknowledged the previous one, so a slow worker holds one job
  and the others take the rest (fair dispatch, not round-robin in
  advance).
- manual acks: a job is acknowledged after it is done. If the worker dies
  first, the job goes back to the queue (flagged redelivered) for another
  worker: at-least-once, so real jobs should be idempotent.

Prints one line per finished job and a summary, and stops once no job came
for --idle seconds (or at --timeout):

    worker amqp-1: done stomp-001
    worker amqp-1: idle, 7 jobs done
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
    p.add_argument("--name", default="amqp-1", help="printed with every line (default amqp-1)")
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
    ch.queue_declare("jobs", durable=True)  # the same queue the feeders use
    ch.basic_qos(prefetch_count=1)
    done = 0
    stopped = "idle"
    try:
        for method, props, body in ch.consume("jobs", inactivity_timeout=args.idle):
            if method is None:
                break
            time.sleep(args.work_seconds)  # the work
            ch.basic_ack(method.delivery_tag)
            done += 1
            print(f"worker {args.name}: done {body.decode()}", flush=True)
            if time.monotonic() >= deadline:
                stopped = "timeout"
                break
    finally:
        # Anything delivered and not acknowledged returns to the queue.
        ch.cancel()
        conn.close()
    print(f"worker {args.name}: {stopped}, {done} jobs done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
