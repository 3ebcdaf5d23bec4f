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
            f"user root\nlistener {port} 127.0.0.1\nallow_anonymous true\nsys_interval 1\n"
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
    """mosquitto_sub counting the run's messages at the broker. QoS 0 costs
    the broker least; a lost message would show as a short count, never as
    a false success."""
    p = subprocess.Popen(
        ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-q", "0",
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


def broker_received(port: int) -> int:
    """The broker's own count of PUBLISH packets received
    ($SYS/broker/publish/messages/received, refreshed every second)."""
    out = subprocess.run(
        ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-C", "1", "-W", "5",
         "-t", "$SYS/broker/publish/messages/received"],
        check=True, capture_output=True,
    ).stdout
    return int(out.split()[0])


def cpu_of(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads)."""
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def run(sink_cls, port: int, n: int, label: str, tmp: str, commit_every: int, broker_pid: int,
        mode: str) -> dict:
    root = f"bench-{uuid.uuid4().hex[:8]}"
    out = os.path.join(tmp, f"{root}.txt")
    open(out, "wb").close()
    if mode == "sub":
        count = counter(port, root, out)
    else:
        time.sleep(1.2)  # a fresh $SYS value
        base = broker_received(port)
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
    counter_cpu = (lambda: cpu_of(count.pid)) if mode == "sub" else (lambda: 0.0)
    cpu0 = (cpu_of(os.getpid()), cpu_of(broker_pid) if broker_pid else 0.0, counter_cpu())
    t0 = time.perf_counter()
    for i, v in enumerate(values):
        sink.add(value=v, key=keys[i % 10], timestamp=v["ts"], headers=[],
                 topic="input", partition=0, offset=i)
        if (i + 1) % commit_every == 0:
            sink.flush()  # Checkpoint.commit()
    t_added = time.perf_counter()
    sink.flush()
    t_flushed = time.perf_counter()
    if mode == "sub":
        # The counter writes one line (the topic) per message; probes aside.
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            with open(out, "rb") as f:
                got = sum(1 for line in f if not line.endswith(b"/probe\n"))
            if got >= n:
                break
            time.sleep(0.01)
        t_counted = time.perf_counter()
        cpu1 = (cpu_of(os.getpid()), cpu_of(broker_pid) if broker_pid else 0.0, counter_cpu())
        count.kill()
        count.wait()
        with open(out, "rb") as f:
            got = sum(1 for line in f if not line.endswith(b"/probe\n"))
    else:
        # Timed to the last PUBACK (the broker's confirmation), then checked
        # against the broker's own count.
        t_counted = t_flushed
        cpu1 = (cpu_of(os.getpid()), cpu_of(broker_pid) if broker_pid else 0.0, 0.0)
        deadline = time.monotonic() + 10
        while True:
            got = broker_received(port) - base
            if got >= n or time.monotonic() > deadline:
                break
            time.sleep(0.2)
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
        "cpu_s": [b - a for a, b in zip(cpu0, cpu1)],
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=int(os.environ.get("N", 200_000)))
    ap.add_argument("--rounds", type=int, default=int(os.environ.get("QUIX_ROUNDS", 1)))
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--commit-every", type=int, default=50_000)
    ap.add_argument("--count", choices=["sys", "sub"], default="sys",
                    help="sys: timed to the last PUBACK, checked against the broker's "
                         "$SYS received count; sub: timed until a mosquitto_sub received all")
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
    broker_pid = broker.pid if broker is not None else 0
    try:
        best: dict = {}
        for r in range(args.rounds):
            for cls, label in ((QuixMQTTSink, "quix (paho)"), (MqlinkMQTTSink, "mqlink")):
                res = run(cls, port, args.n, label, tmp, args.commit_every, broker_pid, args.count)
                if res["counted"] < args.n:
                    print(f"{label}: the broker counted {res['counted']} of {args.n}", file=sys.stderr)
                    return 1
                print(
                    f"round {r + 1} {label:12} adds done {res['add_s']:7.3f} s  last flush done {res['flush_s']:7.3f} s  "
                    f"all {args.n} at the broker {res['total_s']:7.3f} s  {args.n / res['total_s']:>9,.0f} msg/s  "
                    "CPU s: python %.2f, broker %.2f, counter %.2f" % tuple(res["cpu_s"]),
                    flush=True,
                )
                if label not in best or res["total_s"] < best[label]["total_s"]:
                    best[label] = res
        q, m = best["quix (paho)"], best["mqlink"]
        print()
        how = "to the last PUBACK, $SYS-counted" if args.count == "sys" else "until a subscriber had all"
        print(f"| sink | s ({args.n:,}, {how}) | messages/s | CPU s: Python process | broker | counter |")
        print("|---|---:|---:|---:|---:|---:|")
        for res in (q, m):
            print(f"| {res['label']} | {res['total_s']:.3f} | {args.n / res['total_s']:,.0f} | "
                  "%.2f | %.2f | %.2f |" % tuple(res["cpu_s"]))
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
