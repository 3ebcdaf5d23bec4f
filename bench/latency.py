"""Latency of one paced QoS 1 stream, seen by three consumers at once.

usage: latency.py PORT N RATES MQLINK STAMPPUB
For each rate in RATES (comma-separated, messages/s), bench/stamppub.c
(libmosquitto) publishes N messages {"seq":i,"ts":<unix s>}, each stamped
with the wall clock just before it is handed to libmosquitto, its network
loop run between sends (nothing waits in the publisher). Consumers:
mosquitto_sub, `mqlink sub`, and a pipeline (`mqlink run`, MQTT source →
MQTT sink to <topic>/out) read by a second mosquitto_sub, so the pipeline's
figure holds one more broker hop than the others (the mosquitto_sub line is
that hop's cost). Each consumer prints payloads; this process stamps each
line as it reads it (the same pipe hop for all). Prints p50/p99/p999 in ms.
"""
import os, subprocess, sys, tempfile, threading, time

port, n, rates, mqlink, stamppub = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]


def consumers(topic, pipeline_file):
    sub = lambda t: ["mosquitto_sub", "-p", port, "-t", t, "-q", "1"]
    return {
        "mosquitto_sub": (sub(topic), None),
        "mqlink sub": ([mqlink, "sub", "-p", port, "-t", topic, "-q", "1"], None),
        "mqlink run (mqtt->mqtt)": (sub(topic + "/out"), [mqlink, "run", pipeline_file]),
    }


def pipeline(topic, path):
    with open(path, "w") as f:
        f.write(f"""[connections.b]
broker = "mqtt://127.0.0.1:{port}"
[sources.in]
type = "mqtt"
connection = "b"
topics = ["{topic}"]
[sinks.out]
type = "mqtt"
inputs = ["in"]
connection = "b"
topic = "{topic}/out"
format = "raw"
[http]
listen = ""
""")


def one_rate(rate, tmp):
    topic = f"latency/{os.getpid()}/{rate}"
    pfile = os.path.join(tmp, f"latency-{rate}.toml")
    pipeline(topic, pfile)
    lat, procs = {}, []
    for name, (cmd, helper) in consumers(topic, pfile).items():
        lat[name] = []
        if helper:
            procs.append(subprocess.Popen(helper, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE)
        procs.append(p)

        def read(v=lat[name], p=p):
            for line in p.stdout:
                now = time.time()
                try:  # {"seq":i,"ts":T}: the number after the last ':' (no JSON parser in the hop)
                    v.append((now - float(line[line.rindex(b":") + 1:].rstrip(b"}\r\n"))) * 1e3)
                except ValueError:
                    pass
        threading.Thread(target=read, daemon=True).start()
    time.sleep(1.5)  # every consumer subscribed, the pipeline started
    subprocess.run([stamppub, port, topic, "1", str(n), str(rate)], check=True, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(len(v) < n for v in lat.values()):
        time.sleep(0.1)
    for p in procs:
        p.kill()
    for name, v in lat.items():
        v.sort()
        q = lambda f: v[min(len(v) - 1, int(f * len(v)))] if v else float("nan")
        print(f"latency {rate}/s: {name:24s} {len(v)} of {n}  p50 {q(0.5):.3f} ms  p99 {q(0.99):.3f} ms  p999 {q(0.999):.3f} ms")


with tempfile.TemporaryDirectory() as tmp:
    for rate in rates.split(","):
        one_rate(int(rate), tmp)
