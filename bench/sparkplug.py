"""Sparkplug B for scripts/bench.sh: a queue of DATA by alias for a host
application to drain, and the reference host application (pysparkplug's
decoder over paho-mqtt) that drains it into a JSON-lines file, one line per
metric with its name resolved from the NBIRTH — what `mqlink run` with
`format = "sparkplug_b"` into a file does.

  sparkplug.py session PORT CLIENT GROUP          a persistent session subscribed to the group
  sparkplug.py feed PORT GROUP N METRICS          NBIRTH, then N NDATA of METRICS Double metrics by alias
  sparkplug.py drain PORT CLIENT GROUP N OUT      decodes the N NDATA queued for CLIENT into OUT;
                                                  prints "<metrics> <seconds>"
"""

import json
import sys
import threading
import time

import paho.mqtt.client as mqtt
from pysparkplug import DataType, Metric, NBirth, NData

cmd, port = sys.argv[1], int(sys.argv[2])


def connect(client_id, clean):
    c = mqtt.Client(client_id=client_id, clean_session=clean)
    c.max_inflight_messages_set(1000)
    c.max_queued_messages_set(0)
    c.connect("127.0.0.1", port, keepalive=60)
    return c


if cmd == "session":
    client, group = sys.argv[3], sys.argv[4]
    c = connect(client, False)
    done = threading.Event()
    c.on_subscribe = lambda *_: done.set()
    c.subscribe(f"spBv1.0/{group}/#", qos=1)
    c.loop_start()
    done.wait(10)
    c.disconnect()
    c.loop_stop()

elif cmd == "feed":
    group, n, m = sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    c = connect(f"feed-{group}", True)
    c.loop_start()
    ts = int(time.time() * 1000)
    birth = [Metric(timestamp=ts, name="bdSeq", datatype=DataType.INT64, value=0)] + [
        Metric(timestamp=ts, name=f"line/sensor{i}", alias=i + 1, datatype=DataType.DOUBLE, value=0.0)
        for i in range(m)
    ]
    infos = [c.publish(f"spBv1.0/{group}/NBIRTH/edge", NBirth(timestamp=ts, seq=0, metrics=tuple(birth)).encode(include_dtypes=True), qos=1)]
    for k in range(1, n + 1):
        metrics = tuple(
            Metric(timestamp=ts + k, name=None, alias=i + 1, datatype=DataType.DOUBLE, value=k + i / 100)
            for i in range(m)
        )
        payload = NData(timestamp=ts + k, seq=k % 256, metrics=metrics).encode(include_dtypes=True)
        infos.append(c.publish(f"spBv1.0/{group}/NDATA/edge", payload, qos=1))
    for i in infos:
        i.wait_for_publish()
    c.disconnect()
    c.loop_stop()

elif cmd == "drain":
    client, group, n, out = sys.argv[3], sys.argv[4], int(sys.argv[5]), sys.argv[6]
    aliases, seen, written = {}, [0], [0]
    done = threading.Event()
    f = open(out, "w")

    def on_message(_c, _u, msg):
        kind = msg.topic.split("/")[2]
        if kind == "NBIRTH":
            for mt in NBirth.decode(msg.payload).metrics:
                if mt.alias is not None:
                    aliases[mt.alias] = (mt.name, mt.datatype)
        elif kind == "NDATA":
            p = NData.decode(msg.payload)
            for mt in p.metrics:
                name, datatype = aliases[mt.alias]
                f.write(json.dumps({"name": name, "alias": mt.alias, "timestamp": mt.timestamp,
                                    "datatype": datatype.name, "value": mt.value, "seq": p.seq}) + "\n")
                written[0] += 1
            seen[0] += 1
            if seen[0] >= n:
                done.set()

    c = connect(client, False)
    c.on_message = on_message
    t0 = time.time()
    c.loop_start()
    done.wait(600)
    secs = time.time() - t0
    c.disconnect()
    c.loop_stop()
    f.close()
    print(written[0], f"{secs:.3f}")
