#!/usr/bin/env bash
# Sends one message to the STOMP queue /queue/inbox with nothing but printf
# and netcat: STOMP is a text protocol, a frame is a command line, header
# lines, a blank line, a body and a NUL byte (\0).
#
#   examples/stomp_to_amqp/send.sh ['message body']
#
# JUNCTION_HOST (default 127.0.0.1) and JUNCTION_STOMP_PORT (default 61613)
# say where the broker is. Needs the OpenBSD netcat (Debian's
# netcat-openbsd) for -N: close our sending side after the last frame, and
# exit when the broker closes the connection.
#
# The frames:
# - CONNECT: STOMP 1.2, vhost "/" (the `host` header); no login, so the
#   broker's anonymous user (guest, allowed from loopback only).
# - SEND to /queue/inbox: the default exchange with routing key `inbox`,
#   which declares the durable queue `inbox` if it does not exist yet (an
#   AMQP consumer then reads it by that name). persistent:true is AMQP's
#   delivery_mode 2: the message is written to disk in the durable queue.
# - DISCONNECT with a receipt: the broker answers RECEIPT only after every
#   earlier frame's work is done (the SEND stored), then closes. Seeing
#   receipt-id:bye is the proof the message was taken.
set -euo pipefail
host="${JUNCTION_HOST:-127.0.0.1}"
port="${JUNCTION_STOMP_PORT:-61613}"
body="${1:-hello}"

# The one-liner; `tr` makes the broker's NUL frame ends readable. A failure
# (nothing listening) shows as a missing receipt below.
reply="$(printf 'CONNECT\naccept-version:1.2\nhost:/\n\n\0SEND\ndestination:/queue/inbox\ncontent-type:text/plain\npersistent:true\n\n%s\0DISCONNECT\nreceipt:bye\n\n\0' "$body" | nc -N -w 5 "$host" "$port" | tr '\0' '\n')" || true

if [ -n "$reply" ]; then printf '%s\n' "$reply"; fi
if [[ "$reply" == *"receipt-id:bye"* ]]; then
  echo "send.sh: sent '$body' to /queue/inbox"
else
  echo "send.sh: no RECEIPT from $host:$port: the message may not have been taken" >&2
  exit 1
fi
