"""A subscriber process for the SIGKILL test: writes each message to a file
(flushed and fsync'd), then acknowledges it, except the message whose
payload is ``--hold`` (never acknowledged: the broker must send it again,
and every later one with it, since acknowledgements go in arrival order)."""

import argparse
import os
import sys

import mqlink

ap = argparse.ArgumentParser()
ap.add_argument("broker")
ap.add_argument("client_id")
ap.add_argument("topic")
ap.add_argument("out")
ap.add_argument("--hold", default=None)
ap.add_argument("--protocol", default="3.1.1")
args = ap.parse_args()

sub = mqlink.Subscriber(
    args.broker, args.topic, qos=1, client_id=args.client_id, clean_session=False,
    protocol=args.protocol,
)
with open(args.out, "ab") as f:
    f.write(b"START\n")
    f.flush()
    os.fsync(f.fileno())
    for msg in sub:
        f.write(msg.payload + (b" dup\n" if msg.dup else b"\n"))
        f.flush()
        os.fsync(f.fileno())
        if msg.payload.decode() != args.hold:
            msg.ack()
sys.exit(0)
