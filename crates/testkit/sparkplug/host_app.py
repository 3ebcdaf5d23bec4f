"""A Sparkplug B host application for mqlink's tests, with pysparkplug's
payload classes (decoding by an implementation no one here wrote) over
paho-mqtt: it reads an edge node's births and data and prints what it
understood, one JSON line per event:

  {"event": "birth", "kind": "NBIRTH"|"DBIRTH", "device": …, "seq": …, "bdseq": …, "metrics": {name: value}}
  {"event": "data", "device": …, "seq": …, "metrics": {name: value}}   (names resolved from the births' aliases)
  {"event": "death", "bdseq": …}
  {"event": "error", "why": …}   (a DATA by an unknown alias, a seq gap)

A line "REBIRTH" on stdin makes it publish an NCMD `Node Control/Rebirth`.

Usage: host_app.py HOST PORT GROUP EDGE
"""

import json
import sys
import time

import paho.mqtt.client as mqtt
from pysparkplug import DataType, DBirth, DData, Metric, NBirth, NCmd, NData, NDeath

host, port, group, edge = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
aliases = {}  # (device, alias) -> name
last_seq = None


def say(**event):
    print(json.dumps(event, default=str), flush=True)


def check_seq(seq):
    global last_seq
    if last_seq is not None and seq != (last_seq + 1) % 256:
        say(event="error", why=f"seq gap: {last_seq} then {seq}")
    last_seq = seq


def on_message(_client, _userdata, msg):
    global last_seq
    levels = msg.topic.split("/")
    kind, device = levels[2], (levels[4] if len(levels) > 4 else None)
    if kind in ("NBIRTH", "DBIRTH"):
        p = (NBirth if kind == "NBIRTH" else DBirth).decode(msg.payload)
        if kind == "NBIRTH":
            last_seq = p.seq
            aliases.clear()
        else:
            check_seq(p.seq)
        values = {}
        for m in p.metrics:
            if m.alias is not None:
                aliases[(device, m.alias)] = m.name
            values[m.name] = m.value
        say(event="birth", kind=kind, device=device, seq=p.seq,
            bdseq=values.get("bdSeq"), metrics=values)
    elif kind in ("NDATA", "DDATA"):
        # DATA carries no datatypes: pysparkplug needs them from the birth.
        p = (NData if kind == "NDATA" else DData).decode(msg.payload)
        check_seq(p.seq)
        values = {}
        for m in p.metrics:
            name = m.name or aliases.get((device, m.alias))
            if name is None:
                say(event="error", why=f"unknown alias {m.alias} of {device}")
                continue
            values[name] = m.value
        say(event="data", device=device, seq=p.seq, metrics=values)
    elif kind == "NDEATH":
        p = NDeath.decode(msg.payload)
        say(event="death", bdseq=p.bd_seq_metric.value)


client = mqtt.Client(client_id=f"host-{group}-{edge}", clean_session=True)
client.on_message = on_message
client.on_connect = lambda c, *_: c.subscribe(f"spBv1.0/{group}/#", qos=1)
client.on_subscribe = lambda *_: say(event="subscribed")
client.connect(host, port, keepalive=5)
client.loop_start()
for line in sys.stdin:
    if line.strip() == "REBIRTH":
        ask = Metric(timestamp=int(time.time() * 1000), name="Node Control/Rebirth",
                     datatype=DataType.BOOLEAN, value=True)
        cmd = NCmd(timestamp=int(time.time() * 1000), metrics=(ask,))
        client.publish(f"spBv1.0/{group}/NCMD/{edge}", cmd.encode(include_dtypes=True), qos=1).wait_for_publish()
client.loop_stop()
