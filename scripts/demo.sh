#!/usr/bin/env bash
# The first run: builds mqlink, starts a private Mosquitto on a free port
# (installing it on Debian when missing), then shows what mqlink guarantees:
# a subscriber that acknowledges only what it wrote, killed with SIGKILL
# while draining a persistent session, loses nothing; a publisher exits 0
# only when the broker confirmed every message.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! [ -x /usr/sbin/mosquitto ] && ! command -v mosquitto >/dev/null; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq mosquitto >/dev/null
fi
MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
cargo build --release -q -p mqlink-cli --no-default-features  # no SQL run here yet: DataFusion builds long
M=$PWD/target/release/mqlink
work=$(mktemp -d)
trap 'kill $(cat "$work/pid" 2>/dev/null) 2>/dev/null || true; rm -rf "$work"' EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null || echo 18830)
printf 'user root\nlistener %s 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\n' "$port" > "$work/mosquitto.conf"
"$MOSQUITTO" -c "$work/mosquitto.conf" >/dev/null 2>&1 & echo $! > "$work/pid"
sleep 0.5

echo "== a persistent session for client 'demo-sub', then 50,000 sensor readings published at QoS 1"
"$M" sub -p "$port" -t 'sensors/+/telemetry' -q 1 -c -i demo-sub -W 0.2
seq 0 49999 | awk '{printf "{\"device_id\":\"dev-%03d\",\"seq\":%d,\"temperature\":%.1f}\n", $1 % 100, $1, 20 + ($1 % 50) / 10}' \
  | "$M" pub -p "$port" -t sensors/dev-001/telemetry -q 1 -l

echo "== draining it, killing the subscriber with SIGKILL twice on the way"
: > "$work/out"
for round in 1 2; do
  "$M" sub -p "$port" -t 'sensors/+/telemetry' -q 1 -c -i demo-sub >> "$work/out" &
  pid=$!; sleep 0.15; kill -9 "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true
  echo "   after kill $round: $(wc -l < "$work/out") lines written so far"
done
"$M" sub -p "$port" -t 'sensors/+/telemetry' -q 1 -c -i demo-sub -W 2 >> "$work/out"
echo "   written: $(wc -l < "$work/out") lines, distinct: $(sort -u "$work/out" | wc -l) of 50000 (the extra lines are redeliveries: written, but their PUBACK had not reached the broker when the subscriber died)"
echo "== one message, formatted as JSON"
"$M" sub -p "$port" -t demo/json -C 1 --format json &
sleep 0.3
"$M" pub -p "$port" -t demo/json -m '{"hello":"mqlink"}' -q 1
wait
