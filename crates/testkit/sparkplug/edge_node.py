"""A Sparkplug B edge node for mqlink's tests, with pysparkplug's payload
classes (encoding by an implementation no one here wrote) over paho-mqtt.

It announces its metrics with aliases in the NBIRTH, then sends NDATA by
alias only (no names, no datatypes), loses one NDATA on purpose (a seq gap),
and answers an NCMD `Node Control/Rebirth` with a new NBIRTH. It prints
BIRTH, REBIRTH (each request received) and DONE; the test kills it with
SIGKILL so that the broker publishes its NDEATH will.

Usage: edge_node.py HOST PORT GROUP EDGE
"""

import sys
import threading
import time

import paho.mqtt.client as mqtt
from pysparkplug import DataType, Metric, NBirth, NCmd, NData, NDeath

host, port, group, edge = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
BD_SEQ = 3
ALIASES = {
    "Temperature": (1, DataType.DOUBLE),
    "Count": (2, DataType.INT32),
    "Running": (3, DataType.BOOLEAN),
    "Label": (4, DataType.STRING),
}
current = {"Temperature": 20.0, "Count": 0, "Running": True, "Label": "start"}
seq = 0
rebirth = threading.Event()
subscribed = threading.Event()


def ts():
    return int(time.time() * 1000)


def topic(kind):
    return f"spBv1.0/{group}/{kind}/{edge}"


def bd_seq():
    return Metric(timestamp=ts(), name="bdSeq", datatype=DataType.INT64, value=BD_SEQ)


def on_message(_client, _userdata, msg):
    for m in NCmd.decode(msg.payload).metrics:
        if m.name == "Node Control/Rebirth" and m.value:
            print("REBIRTH", flush=True)
            rebirth.set()


client = mqtt.Client(client_id=f"edge-{group}", clean_session=True)
client.will_set(topic("NDEATH"), NDeath(timestamp=ts(), bd_seq_metric=bd_seq()).encode(), qos=0)
client.on_message = on_message
client.on_subscribe = lambda *_: subscribed.set()
client.on_connect = lambda c, *_: c.subscribe(topic("NCMD"), qos=1)
client.connect(host, port, keepalive=5)
client.loop_start()
if not subscribed.wait(10):
    sys.exit("no SUBACK")


def publish(kind, payload):
    info = client.publish(topic(kind), payload.encode(include_dtypes=kind == "NBIRTH"), qos=0)
    info.wait_for_publish()


def birth():
    global seq
    seq = 0
    metrics = [bd_seq()] + [
        Metric(timestamp=ts(), name=n, alias=a, datatype=dt, value=current[n])
        for n, (a, dt) in ALIASES.items()
    ]
    publish("NBIRTH", NBirth(timestamp=ts(), seq=seq, metrics=tuple(metrics)))


def data(**values):
    """The next NDATA, by alias only."""
    global seq
    seq = (seq + 1) % 256
    current.update(values)
    metrics = tuple(
        Metric(timestamp=ts(), name=None, alias=ALIASES[n][0], datatype=ALIASES[n][1], value=v)
        for n, v in values.items()
    )
    return NData(timestamp=ts(), seq=seq, metrics=metrics)


birth()
print("BIRTH", flush=True)
for i in range(1, 6):
    publish("NDATA", data(Temperature=20.0 + i, Count=i, Running=i % 2 == 0, Label=f"l{i}"))
data(Count=6)  # lost on the way: seq 6 is never published
publish("NDATA", data(Count=7))
if not rebirth.wait(20):
    sys.exit("no rebirth request")
birth()
for i in range(1, 4):
    publish("NDATA", data(Count=100 + i))
print("DONE", flush=True)
time.sleep(3600)
