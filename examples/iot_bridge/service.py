#!/usr/bin/env python3
"""An AMQP 0-9-1 "back-end service" for MQTT devices: consumes every
plant's temperature readings from a durable queue and answers each device
with a command (turn its fan on above a threshold, off otherwise).

It speaks plain AMQP 0-9-1 (pika) and knows nothing about MQTT. Junction
publishes every MQTT PUBLISH to the exchange `amq.topic`, with the topic's
levels as the routing key's words (`/` and `.` swapped, RabbitMQ's
convention, since `.` separates AMQP topic words): the device's topic
`plant/7/temp` is the routing key `plant.7.temp` here, and `plant.*.temp`
matches every plant's readings as the MQTT filter `plant/+/temp` would.
Publishing back to `amq.topic` with the key `plant.7.cmd` reaches the MQTT
subscribers of `plant/7/cmd`.

The service runs until it has handled --count readings (or until
--timeout; with --count 0 it only declares its queue and binding) and
prints one line per reading:

    service: plant.7.temp {"celsius":27.5,"seq":3} -> plant.7.cmd {"fan":"on","seq":3}

Exit status 0 when it handled --count readings, 1 otherwise.
"""

import argparse
import json
import os
import sys
import time

import pika
import pika.exceptions


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default=os.environ.get("JUNCTION_HOST", "127.0.0.1"))
    p.add_argument(
        "--amqp-port", type=int, default=int(os.environ.get("JUNCTION_AMQP_PORT", "5672"))
    )
    p.add_argument("--user", default=os.environ.get("JUNCTION_USER", "guest"))
    p.add_argument("--password", default=os.environ.get("JUNCTION_PASSWORD", "guest"))
    p.add_argument("--queue", default="telemetry", help="the durable queue (default telemetry)")
    p.add_argument(
        "--threshold", type=float, default=25.0, help="fan on above this (default 25.0)"
    )
    p.add_argument(
        "--count",
        type=int,
        default=3,
        help="readings to handle (default 3; 0: declare the queue and its binding, and exit)",
    )
    p.add_argument(
        "--timeout", type=float, default=30.0, help="give up after this many seconds (default 30)"
    )
    return p.parse_args()


def compact(obj):
    """JSON with a stable key order, so every run prints the same bytes."""
    return json.dumps(obj, separators=(",", ":"), sort_keys=True)


def command_key(telemetry_key):
    """`plant.7.temp` -> `plant.7.cmd`: the answer goes to the device the
    reading came from, named by the routing key's words (the MQTT topic's
    levels)."""
    words = telemetry_key.split(".")
    return ".".join(words[:-1] + ["cmd"])


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

    # Durable: the queue (and its binding) survive a broker restart, and the
    # devices' QoS 1 readings routed to it are stored on disk before the
    # device gets its PUBACK. Readings keep collecting while this service is
    # down or restarting; with a non-durable (or exclusive, auto-delete)
    # queue they would be routed nowhere and lost meanwhile.
    ch.queue_declare(args.queue, durable=True)
    # `*` is one word: one plant id. MQTT's `plant/+/temp`.
    ch.queue_bind(args.queue, "amq.topic", routing_key="plant.*.temp")
    # Publisher confirms: basic_publish below returns once the broker has
    # taken the command (and raises if it could not route it, mandatory).
    ch.confirm_delivery()
    # At most 10 readings delivered and not yet acknowledged.
    ch.basic_qos(prefetch_count=10)
    print(f"service: ready, queue {args.queue} bound to amq.topic with plant.*.temp", flush=True)
    if args.count == 0:
        conn.close()
        return 0

    handled = 0
    try:
        for method, props, body in ch.consume(args.queue, inactivity_timeout=0.5):
            if method is None:  # nothing for 0.5 s
                if time.monotonic() >= deadline:
                    break
                continue
            reading = json.loads(body)
            fan = "on" if reading["celsius"] > args.threshold else "off"
            command = compact({"seq": reading["seq"], "fan": fan})
            reply_key = command_key(method.routing_key)
            try:
                # delivery_mode 2 (persistent) arrives at MQTT QoS 1 (capped
                # by the device's subscription QoS); transient would be QoS 0.
                ch.basic_publish(
                    "amq.topic",
                    reply_key,
                    command.encode(),
                    pika.BasicProperties(content_type="application/json", delivery_mode=2),
                    mandatory=True,
                )
                outcome = f"-> {reply_key} {command}"
            except pika.exceptions.UnroutableError:
                # No MQTT client is subscribed to plant/<id>/cmd right now.
                outcome = f"-> {reply_key} unroutable (no device subscribed)"
            # Acknowledge the reading only after its command was confirmed:
            # if the service dies before this line, the broker delivers the
            # reading again (flagged redelivered) to the next consumer.
            ch.basic_ack(method.delivery_tag)
            handled += 1
            print(f"service: {method.routing_key} {body.decode()} {outcome}", flush=True)
            if handled >= args.count or time.monotonic() >= deadline:
                break
    finally:
        # Cancelling returns whatever was delivered and not acked to the queue.
        ch.cancel()
        conn.close()
    if handled < args.count:
        print(f"service: timed out after {handled} of {args.count} readings", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
