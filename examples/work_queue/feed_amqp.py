#!/usr/bin/env python3
"""Feeds jobs into the persistent work queue `jobs` over AMQP 0-9-1 (pika).

Three things make a job survive a broker restart:
- the queue is durable (declared with durable=True, as STOMP's /queue/jobs
  declares it: the same queue for both protocols);
- each message is persistent (delivery_mode 2; STOMP's `persistent:true`);
- publisher confirms: the broker confirms a persistent message routed to a
  durable queue once it is on disk, so a job printed as confirmed below is
  never lost, whatever happens to the broker afterwards.
`mandatory=True` turns "routed to no queue" into an error instead of a
silent drop.

Prints one line per confirmed job:

    feed_amqp: job amqp-001 confirmed
"""

import argparse
import os
import sys

import pika


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default=os.environ.get("JUNCTION_HOST", "127.0.0.1"))
    p.add_argument(
        "--amqp-port", type=int, default=int(os.environ.get("JUNCTION_AMQP_PORT", "5672"))
    )
    p.add_argument("--user", default=os.environ.get("JUNCTION_USER", "guest"))
    p.add_argument("--password", default=os.environ.get("JUNCTION_PASSWORD", "guest"))
    p.add_argument("--count", type=int, default=5, help="jobs to feed (default 5)")
    p.add_argument("--prefix", default="amqp", help="job ids are PREFIX-001... (default amqp)")
    return p.parse_args()


def main():
    args = parse_args()
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
    try:
        ch = conn.channel()
        ch.queue_declare("jobs", durable=True)
        ch.confirm_delivery()
        for n in range(1, args.count + 1):
            job = f"{args.prefix}-{n:03d}"
            # With confirms on, pika's blocking basic_publish waits for the
            # broker's ack and raises on a nack or a return.
            ch.basic_publish(
                "",  # the default exchange: routing key = queue name
                "jobs",
                job.encode(),
                pika.BasicProperties(content_type="text/plain", delivery_mode=2),
                mandatory=True,
            )
            print(f"feed_amqp: job {job} confirmed", flush=True)
    finally:
        conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
