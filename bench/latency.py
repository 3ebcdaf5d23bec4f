"""Latency of one QoS 1 stream seen by two subscribers at once.

usage: latency.py PORT N RATE MQLINK
Each message's payload is the time (ns) it was handed to the publisher
(`mqlink pub -l`, which publishes each line as it arrives: mosquitto_pub -l
turned out to hold lines back for up to seconds on this machine, which
measured the publisher, not the subscribers); both mosquitto_sub and
`mqlink sub` print payloads, and this process stamps each line as it reads
it (the same pipe hop for both). Prints p50/p90/p99 in ms.
"""
import os, subprocess, sys, threading, time

port, n, rate, mqlink = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
topic = f"latency/{os.getpid()}"
subs = {
    "mosquitto_sub": ["mosquitto_sub", "-p", port, "-t", topic, "-q", "1"],
    "mqlink sub": [mqlink, "sub", "-p", port, "-t", topic, "-q", "1"],
}
lat = {k: [] for k in subs}

def read(name, proc):
    for line in proc.stdout:
        now = time.time_ns()
        try:
            lat[name].append((now - int(line)) / 1e6)
        except ValueError:
            pass

procs = {}
for name, cmd in subs.items():
    procs[name] = subprocess.Popen(cmd, stdout=subprocess.PIPE)
    threading.Thread(target=read, args=(name, procs[name]), daemon=True).start()
time.sleep(1.0)  # both subscribed
pub = subprocess.Popen([mqlink, "pub", "-p", port, "-t", topic, "-q", "1", "-l"],
                       stdin=subprocess.PIPE, bufsize=0)
start = time.monotonic()
for i in range(n):
    due = start + i / rate
    while True:
        left = due - time.monotonic()
        if left <= 0:
            break
        if left > 0.0005:
            time.sleep(left - 0.0003)
    pub.stdin.write(b"%d\n" % time.time_ns())
pub.stdin.close()
pub.wait()
deadline = time.monotonic() + 10
while time.monotonic() < deadline and any(len(v) < n for v in lat.values()):
    time.sleep(0.1)
for p in procs.values():
    p.kill()
for name, v in lat.items():
    v.sort()
    q = lambda f: v[min(len(v) - 1, int(f * len(v)))] if v else float("nan")
    print(f"latency: {name:14s} {len(v)} of {n} messages  p50 {q(0.5):.3f} ms  p90 {q(0.9):.3f} ms  p99 {q(0.99):.3f} ms")
