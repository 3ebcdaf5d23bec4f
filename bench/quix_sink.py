"""Quix Streams' own MQTTSink (paho-mqtt) against mqlink.quix.MQTTSink.

Both sinks get the same N records (JSON dicts, 10 keys, so 10 topics) through
setup() / add() / flush(), a checkpoint every 50,000 records (Quix's
``commit_every=50000``; Quix's sink cannot hold more than 65,535 unconfirmed
messages: paho's message ids wrap and ``add()`` fails with "Message queue
full"), against
one Mosquitto on loopback that this script starts (or --port). Each run is
counted at the broker: a mosquitto_sub subscribed to the run's topics must
receive all N messages, and the run's time ends when both the flush returned
and the counter had them all. Quix's sink runs paho with its defaults (20 in
flight), as Quix configures it; mqlink's with its defaults (1,000 in flight).

    python bench/quix_sink.py [--n 200000] [--rounds 1] [--port PORT]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid


def start_mosquitto(directory: str) -> tuple[subprocess.Popen, int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf = os.path.join(directory, "mosquitto.conf")
    with open(conf, "w") as f:
        f.write(
            f"user root\nlistener {port} 127.0.0.1\nallow_anonymous true\n"
            "max_queued_messages 0\nmax_queued_bytes 0\n"
        )
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    proc = subprocess.Popen([exe, "-c", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("mosquitto did not start")


def counter(port: int, root: str, out: str) -> subprocess.Popen:
    """mosquitto_sub counting the run's messages at the broker (QoS 1)."""
    p = subprocess.Popen(
        ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-q", "1",
         "-t", f"{root}/#", "-W", "900", "-F", "%t"],
        stdout=open(out, "wb"), stderr=subprocess.DEVNULL,
    )
    # Subscribed before the first publish: a probe on the same topics comes back.
    probe = f"{root}/probe"
    for _ in range(100):
        subprocess.run(
            ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-q", "1", "-t", probe, "-m", "p"],
            check=True,
        )
        time.sleep(0.05)
        if os.path.getsize(out) > 0:
            break
    else:
        raise RuntimeError("the counting subscriber did not subscribe")
    return p


def run(sink_cls, port: int, n: int, label: str, tmp: str, commit_every: int) -> dict:
    root = f"bench-{uuid.uuid4().hex[:8]}"
    out = os.path.join(tmp, f"{root}.txt")
    open(out, "wb").close()
    count = counter(port, root, out)
    sink = sink_cls(
        client_id=f"{label}-{root}", server="127.0.0.1", port=port, topic_root=root,
        tls_enabled=False, qos=1, mqtt_flush_timeout_seconds=600,
    )
    keys = [f"dev-{i}".encode() for i in range(10)]
    values = [
        {"device_id": f"dev-{i % 10}", "seq": i, "ts": 1_700_000_000_000 + i, "temp": 21.5}
        for i in range(n)
    ]
    sink.setup()
    t0 = time.perf_counter()
    for i, v in enumerate(values):
        sink.add(value=v, key=keys[i % 10], timestamp=v["ts"], headers=[],
                 topic="input", partition=0, offset=i)
        if (i + 1) % commit_every == 0:
            sink.flush()  # Checkpoint.commit()
    t_added = time.perf_counter()
    sink.flush()
    t_flushed = time.perf_counter()
    # The counter writes one line (the topic) per message; probes aside.
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        with open(out, "rb") as f:
            got = sum(1 for line in f if not line.endswith(b"/probe\n"))
        if got >= n:
            break
        time.sleep(0.01)
    t_counted = time.perf_counter()
    count.kill()
    count.wait()
    with open(out, "rb") as f:
        got = sum(1 for line in f if not line.endswith(b"/probe\n"))
    if hasattr(sink, "close"):
        sink.close()
    else:
        sink._cleanup()
    return {
        "label": label,
        "n": n,
        "counted": got,
        "add_s": t_added - t0,
        "flush_s": t_flushed - t0,
        "total_s": max(t_flushed, t_counted) - t0,
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=int(os.environ.get("N", 200_000)))
    ap.add_argument("--rounds", type=int, default=int(os.environ.get("QUIX_ROUNDS", 1)))
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--commit-every", type=int, default=50_000)
    ap.add_argument("--json", action="store_true", help="print the results as JSON too")
    args = ap.parse_args()

    from quixstreams.sinks.community.mqtt import MQTTSink as QuixMQTTSink

    import mqlink
    from mqlink.quix import MQTTSink as MqlinkMQTTSink

    tmp = tempfile.mkdtemp()
    broker = None
    port = args.port
    if not port:
        broker, port = start_mosquitto(tmp)
    try:
        best: dict = {}
        for r in range(args.rounds):
            for cls, label in ((QuixMQTTSink, "quix (paho)"), (MqlinkMQTTSink, "mqlink")):
                res = run(cls, port, args.n, label, tmp, args.commit_every)
                if res["counted"] != args.n:
                    print(f"{label}: the broker counted {res['counted']} of {args.n}", file=sys.stderr)
                    return 1
                print(
                    f"round {r + 1} {label:12} adds done {res['add_s']:7.3f} s  last flush done {res['flush_s']:7.3f} s  "
                    f"all {args.n} at the broker {res['total_s']:7.3f} s  {args.n / res['total_s']:>9,.0f} msg/s",
                    flush=True,
                )
                if label not in best or res["total_s"] < best[label]["total_s"]:
                    best[label] = res
        q, m = best["quix (paho)"], best["mqlink"]
        print()
        print(f"| sink | s (all {args.n:,} counted at the broker) | messages/s |")
        print("|---|---:|---:|")
        for res in (q, m):
            print(f"| {res['label']} | {res['total_s']:.3f} | {args.n / res['total_s']:,.0f} |")
        ratio = q["total_s"] / m["total_s"]
        print(f"\nmqlink.quix.MQTTSink is {ratio:.1f}x Quix's MQTTSink (target: >= 10x)")
        if args.json:
            print(json.dumps({"quix": q, "mqlink": m, "ratio": ratio, "mqlink_version": mqlink.__name__}))
    finally:
        if broker is not None:
            broker.kill()
            broker.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
