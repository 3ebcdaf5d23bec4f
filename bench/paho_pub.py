"""paho-mqtt (the client under Quix Streams) publishing each line of a file
at QoS 1, waiting for every PUBACK, as scripts/bench.sh runs it.
Usage: paho_pub.py HOST PORT TOPIC FILE"""
import sys
import paho.mqtt.client as mqtt

host, port, topic, path = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
lines = open(path, "rb").read().splitlines()
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
c.max_inflight_messages_set(1000)
c.max_queued_messages_set(0)
c.connect(host, port)
c.loop_start()
# paho's message ids wrap at 65535 and it refuses an id still queued, so
# keep at most 30,000 unconfirmed (its own in-flight window is 1,000).
infos = []
for n, l in enumerate(lines):
    if n >= 30000:
        infos[n - 30000].wait_for_publish()
    infos.append(c.publish(topic, l, qos=1))
for i in infos:
    i.wait_for_publish()
c.disconnect()
c.loop_stop()
