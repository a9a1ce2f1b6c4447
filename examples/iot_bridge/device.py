#!/usr/bin/env python3
"""An MQTT "device": plant 7 (by default) publishes temperature readings on
`plant/7/temp` and obeys the commands the back-end sends on `plant/7/cmd`.

It speaks plain MQTT 3.1.1 (paho-mqtt) and knows nothing about AMQP: the
back-end (service.py) is an AMQP 0-9-1 program on the same broker.
Junction puts MQTT topics on the AMQP exchange `amq.topic`, with the topic
levels as routing-key words: `/` separates MQTT levels and `.` separates
AMQP words, so the two are swapped (RabbitMQ's convention). This device's
`plant/7/temp` is the routing key `plant.7.temp` for the service, and the
service's routing key `plant.7.cmd` arrives here as the topic `plant/7/cmd`.

The device runs until it has received one command per reading it sent (or
until --timeout) and prints what it did, one line per event:

    device plant/7: published plant/7/temp {"celsius":21.5,"seq":1}
    device plant/7: command plant/7/cmd {"fan":"off","seq":1}

Exit status 0 when every reading got its command, 1 otherwise.
"""

import argparse
import json
import os
import sys
import threading
import time

import paho.mqtt.client as mqtt


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default=os.environ.get("JUNCTION_HOST", "127.0.0.1"))
    p.add_argument(
        "--mqtt-port", type=int, default=int(os.environ.get("JUNCTION_MQTT_PORT", "1883"))
    )
    p.add_argument("--user", default=os.environ.get("JUNCTION_USER", "guest"))
    p.add_argument("--password", default=os.environ.get("JUNCTION_PASSWORD", "guest"))
    p.add_argument("--plant", default="7", help="the device's id, a topic level (default 7)")
    p.add_argument(
        "--readings",
        default="21.5,24.0,27.5",
        help="comma-separated temperatures to publish, in order (default 21.5,24.0,27.5)",
    )
    p.add_argument(
        "--timeout", type=float, default=30.0, help="give up after this many seconds (default 30)"
    )
    return p.parse_args()


def compact(obj):
    """JSON with a stable key order, so every run prints the same bytes."""
    return json.dumps(obj, separators=(",", ":"), sort_keys=True)


PRINT_LOCK = threading.Lock()


def say(line):
    """Prints one whole line: paho's network thread (commands) and the main
    thread (readings) both print, and print() is not atomic."""
    with PRINT_LOCK:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def main():
    args = parse_args()
    deadline = time.monotonic() + args.timeout
    telemetry_topic = f"plant/{args.plant}/temp"
    command_topic = f"plant/{args.plant}/cmd"
    readings = [float(r) for r in args.readings.split(",") if r]

    def left():
        return max(0.0, deadline - time.monotonic())

    connected = threading.Event()
    refused = []
    subscribed = threading.Event()
    done = threading.Event()
    commands = []
    lock = threading.Lock()

    def on_connect(client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            refused.append(str(reason_code))
        connected.set()

    def on_subscribe(client, userdata, mid, reason_codes, properties):
        subscribed.set()

    def on_message(client, userdata, msg):
        # paho's network thread calls this for every PUBLISH on plant/<id>/cmd.
        with lock:
            commands.append(msg.payload)
            say(f"device plant/{args.plant}: command {msg.topic} {msg.payload.decode()}")
            if len(commands) >= len(readings):
                done.set()

    # A clean session: the subscription lives as long as this connection.
    # A device that must not miss commands while offline would connect with
    # clean_session=False (a persistent session: Junction keeps a durable
    # queue for it) and a fixed client id.
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=f"plant-{args.plant}-device",
        protocol=mqtt.MQTTv311,
        clean_session=True,
    )
    client.username_pw_set(args.user, args.password)
    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.connect(args.host, args.mqtt_port, keepalive=30)
    client.loop_start()
    try:
        if not connected.wait(left()) or refused:
            say(f"device plant/{args.plant}: not connected {refused}")
            return 1
        # Subscribe before publishing: the service answers the first reading
        # at once, and a command published to amq.topic while nobody is
        # subscribed to plant/7/cmd is routed nowhere (dropped).
        client.subscribe(command_topic, qos=1)
        if not subscribed.wait(left()):
            say(f"device plant/{args.plant}: no SUBACK")
            return 1
        for seq, celsius in enumerate(readings, start=1):
            payload = compact({"seq": seq, "celsius": celsius})
            # QoS 1: the broker's PUBACK comes once the reading is on disk in
            # every durable queue it was routed to (the service's queue
            # `telemetry`), so a broker restart after this line loses nothing.
            info = client.publish(telemetry_topic, payload, qos=1)
            info.wait_for_publish(left())
            if not info.is_published():
                say(f"device plant/{args.plant}: no PUBACK for {payload}")
                return 1
            say(f"device plant/{args.plant}: published {telemetry_topic} {payload}")
        if not done.wait(left()):
            with lock:
                n = len(commands)
            say(f"device plant/{args.plant}: timed out with {n} of {len(readings)} commands")
            return 1
        return 0
    finally:
        client.disconnect()
        client.loop_stop()


if __name__ == "__main__":
    sys.exit(main())
