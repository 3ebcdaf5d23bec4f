#!/usr/bin/env bash
# Measures mqlink next to the C clients, in one run, against one Mosquitto
# on loopback (see docs/design/benchmarks.md):
#   1. draining 200,000 queued QoS 1 messages (~110 bytes) from a persistent
#      session: mqlink sub vs mosquitto_sub;
#   2. publishing 200,000 QoS 1 messages, every PUBACK awaited: mqlink pub
#      vs libmosquitto (bench/cpub.c: threaded loop, 1,000 in flight — the
#      fastest C reference we have), and paho-mqtt for Python for scale
#      (BENCH_PAHO=0 skips it);
#   3. `mqlink run` pipelines draining the same queue: MQTT → JSON-lines file
#      and MQTT → PostgreSQL (a private server, initdb'd here; primary key
#      with ON CONFLICT DO NOTHING), typed JSON decoding, every message
#      acknowledged only after the sink confirmed it;
#   4. drains from brokers configured as deployments are: Mosquitto with
#      max_inflight_messages 1 and 10 (20,000 queued), and with no in-flight
#      cap (max_inflight_messages 0: the whole backlog arrives before SUBACK,
#      MQTT 3.1.1), mqlink sub vs mosquitto_sub;
#   5. the embedded broker (`mqlink broker`, max_queued_messages 0 as the
#      Mosquitto above): the same drain and publish with the same C clients,
#      next to Mosquitto, and the quickstart pipeline unthrottled (generator
#      -> embedded broker -> MQTT source -> file + republish);
#   6. latency: 50,000 QoS 1 messages at 5,000/s and at 20,000/s from
#      bench/stamppub.c (libmosquitto, each stamped just before it is handed
#      over), read at once by mosquitto_sub, mqlink sub and a pipeline
#      (mqlink run, MQTT -> MQTT, read by mosquitto_sub); p50/p99/p999
#      (bench/latency.py; LAT_N, LAT_RATES change them; BENCH_ONLY=latency);
#   7. bridges: the same queue republished to another topic, each message
#      acknowledged upstream only after the broker confirmed its copy:
#      `mqlink run` with an MQTT source and an MQTT sink, and the library's
#      `crates/mqlink/examples/bridge.rs` (`MqttSink::forward`);
#   8. Quix Streams: N records through Quix's own MQTTSink (paho-mqtt) and
#      through mqlink.quix.MQTTSink (python/), each counted at the broker
#      (bench/quix_sink.py): Mosquitto, then the embedded broker. On its own: `bash scripts/bench.sh python`
#      (BENCH_PYTHON=0 skips it);
#   9. SQL pipelines (`mqlink run file.sql`, built with DataFusion in the
#      bench-sql profile: release without LTO): the same queue through
#      `SELECT … WHERE` into a JSON-lines file, and through a 1-minute
#      tumbling window (WATERMARK on the readings' ts, checkpoints under a
#      state_dir) into a file, each message acknowledged end to end; busy
#      time and peak RSS (BENCH_SQL=0 skips it);
#  10. broker limits: a burst from cpub at full speed into a Mosquitto with
#      its default settings (20 in flight, 1,000 queued, then dropped),
#      received live on MQTT 3.1.1 by mosquitto_sub -q 1, and by `mqlink
#      run` into PostgreSQL with the local buffer (the default there) and
#      without it, and into Parquet files (the buffer on by default; rows
#      counted by pyarrow from the committed files' footers, in
#      $CARGO_TARGET_DIR/pyarrow-venv), and into an HTTP endpoint that answers each
#      request after 100 ms (NDJSON batches of 5,000, 4 requests at once),
#      with the buffer and without; each consumer
#      alone: messages received and the rate to the last one
#      (BENCH_LIMITS=0 skips it);
#  11. Sparkplug B: a queue of NDATA by alias drained by `mqlink run`
#      (format = "sparkplug_b" into a file, a line per metric) and by
#      pysparkplug's decoder over paho-mqtt (bench/sparkplug.py), metrics
#      per second (BENCH_SPARKPLUG=0 skips it);
#  12. brokers of other makes, started by testkit's recipes (ejabberd from
#      Debian, amqtt from PyPI; BENCH_BROKERS="ejabberd amqtt" picks them):
#      20,000 queued QoS 1 messages drained by mosquitto_sub and mqlink sub,
#      and bridged into Mosquitto by `mqlink run` and by a Mosquitto bridge.
# Installs what it needs on Debian. N=... changes the message count;
# BENCH_ONLY=latency runs only the latency runs (6), BENCH_ONLY=bridge only
# the bridges (7), BENCH_ONLY=sql only the SQL
# pipelines (9) next to a mosquitto_sub drain, BENCH_ONLY=limits only the
# broker-limits bursts (10), BENCH_ONLY=sparkplug only the Sparkplug B
# decoding (11), BENCH_ONLY=brokers only the other makes (12).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-200000}
ROUNDS=${ROUNDS:-3}

# Run 8: the Python sinks, in the test command's virtualenv (target/pyenv),
# mqlink's package built in release mode.
bench_python() {
  local pyenv=target/pyenv
  command -v mosquitto_sub >/dev/null || {
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq mosquitto mosquitto-clients >/dev/null
  }
  [ -x "$pyenv/bin/python" ] || python3 -m venv "$pyenv"
  "$pyenv/bin/pip" install -q --disable-pip-version-check 'maturin>=1.5,<2' 'quixstreams==3.28.1' 'paho-mqtt>=2,<3'
  PATH="$PWD/$pyenv/bin:$PATH" "$pyenv/bin/pip" install -q --disable-pip-version-check --no-build-isolation ./python
  echo
  echo "Quix Streams MQTTSink (paho-mqtt) vs mqlink.quix.MQTTSink: $N records"
  echo "timed to the last PUBACK, checked against the broker's \$SYS count:"
  "$pyenv/bin/python" -W ignore bench/quix_sink.py --n "$N" --rounds "${QUIX_ROUNDS:-1}" --count sys
  echo
  echo "timed until a mosquitto_sub (QoS 0) received every message (the broker routes each twice as much):"
  "$pyenv/bin/python" -W ignore bench/quix_sink.py --n "$N" --rounds "${QUIX_ROUNDS:-1}" --count sub
  # Against Mosquitto the broker is the bottleneck for mqlink's sink (one
  # core busy); the same sinks through the embedded broker (`mqlink
  # broker`, no $SYS: counted by the subscriber).
  cargo build --release -q -p mqlink-cli --no-default-features
  local bport bdir
  bport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  bdir=$(mktemp -d)
  printf 'listener %s 127.0.0.1\nmax_queued_messages 0\nmax_queued_bytes 0\n' "$bport" > "$bdir/broker.conf"
  "${CARGO_TARGET_DIR:-$PWD/target}/release/mqlink" broker -c "$bdir/broker.conf" 2>/dev/null & local bpid=$!
  for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$bport) 2>/dev/null && break; sleep 0.1; done
  echo
  echo "the same through mqlink's embedded broker (mqlink broker), timed until a mosquitto_sub (QoS 0) received every message:"
  "$pyenv/bin/python" -W ignore bench/quix_sink.py --n "$N" --rounds "${QUIX_ROUNDS:-1}" --count sub --port "$bport" || true
  kill "$bpid"; rm -rf "$bdir"
}
if [ "${1:-}" = python ]; then
  bench_python
  exit 0
fi

need=()
[ -x /usr/sbin/mosquitto ] || command -v mosquitto >/dev/null || need+=(mosquitto)
command -v mosquitto_sub >/dev/null || need+=(mosquitto-clients)
[ -f /usr/include/mosquitto.h ] || need+=(libmosquitto-dev)
command -v gcc >/dev/null || need+=(gcc)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
if [ "${BENCH_PAHO:-1}" = 1 ] && ! python3 -c 'import paho.mqtt' 2>/dev/null; then
  python3 -m pip install -q 'paho-mqtt>=2,<3' || BENCH_PAHO=0
fi

ONLY=${BENCH_ONLY:-}
case "$ONLY" in limits|sparkplug|latency) BENCH_SQL=0 ;; brokers) BENCH_SQL=0 BENCH_LIMITS=0 ;; esac
if [ "$ONLY" != sql ]; then
  cargo build --release -q -p mqlink-cli --no-default-features --features parquet  # the SQL runs use the bench-sql build below
  case "$ONLY" in limits|sparkplug|brokers|latency) ;; *) cargo build --release -q -p mqlink --example sink_bench --example bridge ;; esac
fi
case "$ONLY" in ""|brokers) cargo build -q -p testkit --bin other-broker ;; esac
TARGET=${CARGO_TARGET_DIR:-$PWD/target}
MQLINK=$TARGET/release/mqlink
if [ "${BENCH_SQL:-1}" = 1 ]; then
  cargo build --profile bench-sql -q -p mqlink-cli
  MQLINK_SQL=$TARGET/bench-sql/mqlink
fi
SINK_BENCH=$TARGET/release/examples/sink_bench
BRIDGE=$TARGET/release/examples/bridge
OTHER=$TARGET/debug/other-broker
work=$(mktemp -d)
trap 'kill $(cat "$work/pid" 2>/dev/null) 2>/dev/null || true; kill -QUIT $(cat "$work/pgpid" 2>/dev/null) 2>/dev/null || true; sleep 0.5; rm -rf "$work"' EXIT
gcc -O2 -o "$work/cpub" bench/cpub.c -lmosquitto
gcc -O2 -o "$work/stamppub" bench/stamppub.c -lmosquitto

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$work/mosquitto.conf" <<CONF
user root
listener $port 127.0.0.1
allow_anonymous true
max_queued_messages 0
max_queued_bytes 0
CONF
/usr/sbin/mosquitto -c "$work/mosquitto.conf" >/dev/null 2>&1 & echo $! > "$work/pid"
for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
# Brokers with a small window, and one without any in-flight cap.
declare -A wport
for w in 1 10 0; do
  wport[$w]=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  printf 'user root\nlistener %s 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\nmax_queued_bytes 0\nmax_inflight_messages %s\n' \
    "${wport[$w]}" "$w" > "$work/mosquitto-$w.conf"
  /usr/sbin/mosquitto -c "$work/mosquitto-$w.conf" >/dev/null 2>&1 & echo $! >> "$work/pid"
  for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/${wport[$w]}) 2>/dev/null && break; sleep 0.1; done
done
# The embedded broker on its own, set up as the Mosquitto above.
eport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
printf 'listener %s 127.0.0.1\nmax_queued_messages 0\nmax_queued_bytes 0\n' "$eport" > "$work/mqlink-broker.conf"
if [ "$ONLY" != sql ]; then
  "$MQLINK" broker -c "$work/mqlink-broker.conf" 2>/dev/null & echo $! >> "$work/pid"
  for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$eport) 2>/dev/null && break; sleep 0.1; done
fi
# The quickstart, unthrottled and without its HTTP port.
sed -e 's/^rate = 20000 .*/rate = 0/' -e "s/^count = 100000/count = $N/" -e '/^\[http\]/,$d' \
  -e "s#out/telemetry.jsonl#$work/quickstart.jsonl#" examples/quickstart.toml > "$work/quickstart.toml"

# ~110-byte JSON telemetry messages.
python3 - "$N" > "$work/msgs" <<'PY'
import sys, json
for i in range(int(sys.argv[1])):
    print(json.dumps({"device_id": f"dev-{i % 100:03d}", "seq": i, "ts": 1790000000000 + i,
                      "temperature": round(20 + (i % 50) / 10, 1), "humidity": 40.5, "site": "plant-7", "ok": True}, separators=(",", ":")))
PY
bytes=$(head -1 "$work/msgs" | wc -c)
# The same readings as Airbyte RECORD messages, with a STATE every 10,000.
python3 - "$work/msgs" "$port" "$work" <<'PY'
import sys, json
msgs, port, work = sys.argv[1], int(sys.argv[2]), sys.argv[3]
with open(f"{work}/airbyte.jsonl", "w") as out:
    for i, line in enumerate(open(msgs)):
        out.write(json.dumps({"type": "RECORD", "record": {"stream": "telemetry", "namespace": "plant",
                  "data": json.loads(line), "emitted_at": 1790000000000 + i}}) + "\n")
        if i % 10000 == 9999:
            out.write(json.dumps({"type": "STATE", "state": {"data": {"seq": i}}}) + "\n")
json.dump({"broker_host": "127.0.0.1", "broker_port": port, "use_tls": False, "topic_pattern": "bench/{namespace}/{stream}",
           "publisher_sync": False, "connect_timeout": 10, "automatic_reconnect": True, "clean_session": True,
           "message_retained": False, "message_qos": "AT_LEAST_ONCE"}, open(f"{work}/airbyte-config.json", "w"))
json.dump({"streams": [{"stream": {"name": "telemetry", "namespace": "plant", "json_schema": {}},
           "sync_mode": "incremental", "destination_sync_mode": "append"}]}, open(f"{work}/airbyte-catalog.json", "w"))
PY
SCHEMA="device_id:text,seq:bigint,ts:timestamp,temperature:double,humidity:double,site:text,ok:boolean"

# A private PostgreSQL (default settings) for the PostgreSQL pipeline.
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
pgport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
AS_PG=(); [ "$(id -u)" -eq 0 ] && { chown -R postgres:postgres "$work"; chmod 755 "$work"; AS_PG=(setpriv --reuid=postgres --regid=postgres --clear-groups); }
"${AS_PG[@]}" "$PGBIN/initdb" -U postgres --auth=trust -D "$work/pg" >/dev/null
"${AS_PG[@]}" "$PGBIN/postgres" -D "$work/pg" -p "$pgport" -k "$work" -c listen_addresses=127.0.0.1 >"$work/pg.log" 2>&1 & echo $! > "$work/pgpid"
for _ in $(seq 100); do grep -q "ready to accept connections" "$work/pg.log" 2>/dev/null && break; sleep 0.1; done

# Pipeline files: the same typed schema as --schema above, one source each.
pipeline() { # $1 = client id, $2 = sink table
  cat <<TOML
[connections.b]
broker = "mqtt://127.0.0.1:$port"
client_id = "$1"
clean_session = false
[sources.telemetry]
type = "mqtt"
connection = "b"
topics = ["bench/$1"]
schema = { device_id = "text", seq = "bigint", ts = "timestamp", temperature = "double", humidity = "double", site = "text", ok = "boolean" }
[sinks.out]
$2
TOML
}
# Runs a pipeline until it is idle; prints "busy_seconds wall user sys".
run_pipeline() { # $1 = pipeline file
  local out busy
  out=$( { TIMEFORMAT='%R %U %S'; time "$MQLINK" run "$1" --until-idle 0.3 >/dev/null 2>"$work/err"; } 2>&1 ) || { cat "$work/err" >&2; return 1; }
  busy=$(sed -n 's/.* acknowledged in \([0-9.]*\) s .*/\1/p' "$work/err")
  echo "$busy $out"
}

# Runs a command, prints "wall user sys" in seconds.
timed() {
  local out
  out=$( { TIMEFORMAT='%R %U %S'; time "$@" >/dev/null 2>"$work/err"; } 2>&1 ) || { cat "$work/err" >&2; return 1; }
  echo "$out"
}

# SQL pipeline files over the same queue: $1 = client id, $2 = query.
sql_pipeline() {
  cat <<SQL
CREATE CONNECTION b FROM mqtt_source WITH (broker = 'tcp://127.0.0.1:$port', client_id = '$1', clean_session = 'false');
CREATE TABLE telemetry (device_id TEXT, seq BIGINT, ts TIMESTAMP, temperature DOUBLE, humidity DOUBLE, site TEXT, ok BOOLEAN,
  WATERMARK FOR ts AS ts - INTERVAL '5 seconds')
WITH (connector = 'mqtt_source', connection = 'b', topics = '["bench/$1"]', qos = '1'${3:-});
CREATE TABLE out WITH (connector = 'file', path = '$work/$1.jsonl');
INSERT INTO out $2;
SQL
}
# Runs an SQL pipeline until idle; prints "busy_seconds wall user sys peak_rss_kb".
run_sql() { # $1 = pipeline file
  local out busy
  out=$( { TIMEFORMAT='%R %U %S'; time /usr/bin/time -f '%M' -o "$work/rss" "$MQLINK_SQL" run "$1" --until-idle 0.3 >/dev/null 2>"$work/err"; } 2>&1 ) || { cat "$work/err" >&2; return 1; }
  grep -q " $N records acknowledged" "$work/err" || { echo "$1: not every message acknowledged:" >&2; cat "$work/err" >&2; return 1; }
  busy=$(sed -n 's/.* acknowledged in \([0-9.]*\) s .*/\1/p' "$work/err")
  echo "$busy $out $(tail -1 "$work/rss")"
}
bench_sql_round() { # $1 = round
  local id round=$1
  id="sq-$round-$$"; sql_pipeline "$id" "SELECT device_id, seq, temperature, humidity FROM telemetry WHERE ok AND temperature >= 20.5" > "$work/$id.sql"
  "$MQLINK_SQL" run "$work/$id.sql" --until-idle 0.2 >/dev/null 2>&1   # creates the session
  fill_queue "$id"; rm -f "$work/$id.jsonl"
  set -- $(run_sql "$work/$id.sql")
  [ "$(wc -l < "$work/$id.jsonl")" -eq $((N * 45 / 50)) ] || { echo "SELECT wrote $(wc -l < "$work/$id.jsonl") rows" >&2; exit 1; }
  report "sql: SELECT ... WHERE -> file, busy" "$1 $3 $4"
  echo "sql: SELECT ... WHERE -> file $5" >> "$work/rss_results"
  id="sw-$round-$$"
  sql_pipeline "$id" "SELECT TUMBLE(INTERVAL '1 minute') AS window, device_id, COUNT(*) AS n, AVG(temperature) AS avg_t, MAX(temperature) AS max_t FROM telemetry GROUP BY window, device_id" \
    ", state_dir = '$work/state-$id', checkpoint_interval = '10 s'" > "$work/$id.sql"
  "$MQLINK_SQL" run "$work/$id.sql" --until-idle 0.2 >/dev/null 2>&1
  fill_queue "$id"; rm -f "$work/$id.jsonl"
  set -- $(run_sql "$work/$id.sql")
  # 100 devices, 200 s of readings (ts: one per ms) over 4 windows, the last
  # still open: 300 rows.
  [ "$(wc -l < "$work/$id.jsonl")" -eq 300 ] || { echo "the window query wrote $(wc -l < "$work/$id.jsonl") rows" >&2; exit 1; }
  report "sql: 1-minute tumbling window -> file, busy" "$1 $3 $4"
  echo "sql: 1-minute tumbling window -> file $5" >> "$work/rss_results"
}

# Run 10: Mosquitto as installed (no limits set), a live consumer at a time.
dport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
printf 'user root\nlistener %s 127.0.0.1\nallow_anonymous true\n' "$dport" > "$work/mosquitto-defaults.conf"
/usr/sbin/mosquitto -c "$work/mosquitto-defaults.conf" >/dev/null 2>&1 & echo $! >> "$work/pid"
for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$dport) 2>/dev/null && break; sleep 0.1; done
# Polls a count ($2...) until it reaches N or stays put for 2 s; prints
# "count seconds" (from $1, a `date +%s.%N`, to the last growth).
settle_count() {
  local t0=$1 last=-1 at=$1 same=0 c now; shift
  while :; do
    c=$("$@"); now=$(date +%s.%N)
    if [ "$c" != "$last" ]; then last=$c; at=$now; same=0; else same=$((same + 1)); fi
    [ "$c" -ge "$N" ] || [ "$same" -ge 10 ] && break
    sleep 0.2
  done
  echo "$last $(awk -v a="$at" -v b="$t0" 'BEGIN{printf "%.2f", a-b}')"
}
pg_count() { "$PGBIN/psql" -h 127.0.0.1 -p "$pgport" -U postgres -Atc "SELECT count(*) FROM $1" 2>/dev/null || echo 0; }
# A 3.1.1 pipeline into a primary-key table, the buffer in a mode (auto: on).
limits_pipeline() { # $1 = client id, $2 = table, $3 = buffer mode
  cat <<TOML
[run]
state_dir = "$work/state-$1"
[connections.b]
broker = "mqtt://127.0.0.1:$dport"
client_id = "$1"
clean_session = false
protocol = "3.1.1"
[sources.telemetry]
type = "mqtt"
connection = "b"
topics = ["bench/$1"]
schema = { device_id = "text", seq = "bigint", ts = "timestamp", temperature = "double", humidity = "double", site = "text", ok = "boolean" }
buffer = { mode = "$3" }
[sinks.out]
type = "postgres"
inputs = ["telemetry"]
url = "postgres://postgres@127.0.0.1:$pgport/postgres"
table = "$2"
create_table = true
primary_key = ["device_id", "seq"]
TOML
}
# The same into Parquet files under $2 (the buffer: auto, on for this sink).
limits_parquet() { # $1 = client id, $2 = directory
  cat <<TOML
[run]
state_dir = "$work/state-$1"
[connections.b]
broker = "mqtt://127.0.0.1:$dport"
client_id = "$1"
clean_session = false
protocol = "3.1.1"
[sources.telemetry]
type = "mqtt"
connection = "b"
topics = ["bench/$1"]
schema = { device_id = "text", seq = "bigint", ts = "timestamp", temperature = "double", humidity = "double", site = "text", ok = "boolean" }
[sinks.out]
type = "parquet"
inputs = ["telemetry"]
path = "$2"
rollover_seconds = 1
TOML
}
# The same into an HTTP endpoint that takes 100 ms to answer each request
# (NDJSON batches), the buffer in a mode.
limits_http() { # $1 = client id, $2 = endpoint port, $3 = buffer mode
  cat <<TOML
[run]
state_dir = "$work/state-$1"
[connections.b]
broker = "mqtt://127.0.0.1:$dport"
client_id = "$1"
clean_session = false
protocol = "3.1.1"
[sources.telemetry]
type = "mqtt"
connection = "b"
topics = ["bench/$1"]
buffer = { mode = "$3" }
[sinks.out]
type = "webhook"
inputs = ["telemetry"]
url = "http://127.0.0.1:$2/ingest"
batch = "ndjson"
batch_size = 5000
TOML
}
# An endpoint answering each POST after 100 ms; the records it took (lines)
# are written to the file $2 after each request.
slow_endpoint() { # $1 = port, $2 = count file
  python3 - "$1" "$2" <<'PY' &
import os, sys, time, threading
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler
port, out = int(sys.argv[1]), sys.argv[2]
lock, taken = threading.Lock(), [0]
open(out, "w").write("0")
class H(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["content-length"]))
        time.sleep(0.1)
        with lock:
            taken[0] += body.count(b"\n") + (0 if body.endswith(b"\n") else 1)
            open(out + ".new", "w").write(str(taken[0]))
            os.replace(out + ".new", out)
        self.send_response(204); self.end_headers()
    def log_message(self, *a): pass
ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
PY
  echo $! >> "$work/pid"
}
PYARROW=$TARGET/pyarrow-venv/bin/python
if [ "${BENCH_LIMITS:-1}" = 1 ] && ! "$PYARROW" -c 'import pyarrow' 2>/dev/null; then
  python3 -m venv "$TARGET/pyarrow-venv" && "$TARGET/pyarrow-venv/bin/pip" install -q --disable-pip-version-check 'pyarrow>=17,<27'
fi
# Rows in the committed Parquet files under $1 (footers only).
pq_count() {
  "$PYARROW" -c 'import os, sys, pyarrow.parquet as pq
print(sum(pq.ParquetFile(os.path.join(d, f)).metadata.num_rows for d, _, fs in os.walk(sys.argv[1]) for f in fs if f.endswith(".parquet") and not f.startswith(".")))' "$1" 2>/dev/null || echo 0
}
# One burst to one live consumer ($2: its count command), started as $1.
limits_burst() { # $1 = name, $2... = count command
  local name=$1 t0 got; shift
  sleep 1   # subscribed (its session existed already: nothing is lost meanwhile but the queue's excess)
  t0=$(date +%s.%N)
  "$work/cpub" "$dport" "bench/$id" 1 "$work/msgs" 1000 0 >/dev/null
  got=$(settle_count "$t0" "$@")
  set -- $got
  printf '%-44s %8s %8s %12.0f %10s\n' "$name" "$2" "-" "$(awk -v n="$1" -v w="$2" 'BEGIN{print n/w}')" "$1/$N"
  echo "$name $1 $2" >> "$work/limits_results"
}
bench_limits_round() { # $1 = round
  local r=$1 pid
  id="ds-$r-$$"
  mosquitto_sub -p "$dport" -t "bench/$id" -q 1 -c -i "$id" -W 1 >/dev/null 2>&1 || true
  mosquitto_sub -p "$dport" -t "bench/$id" -q 1 -c -i "$id" > "$work/$id.out" 2>/dev/null & pid=$!
  limits_burst "limits: mosquitto_sub -q 1" sh -c "wc -l < '$work/$id.out'"
  kill "$pid"; wait "$pid" 2>/dev/null || true
  for mode in auto off; do
    id="d$mode-$r-$$"; limits_pipeline "$id" "l_${mode}_$r" "$mode" > "$work/$id.toml"
    "$MQLINK" run "$work/$id.toml" --until-idle 0.2 2>/dev/null   # the session and the table
    "$MQLINK" run "$work/$id.toml" 2>"$work/$id.err" & pid=$!
    limits_burst "limits: mqlink run -> postgres, buffer $mode" pg_count "l_${mode}_$r"
    kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
  done
  id="dpq-$r-$$"; limits_parquet "$id" "$work/$id-lake" > "$work/$id.toml"
  "$MQLINK" run "$work/$id.toml" --until-idle 0.2 2>/dev/null   # the session
  "$MQLINK" run "$work/$id.toml" 2>"$work/$id.err" & pid=$!
  limits_burst "limits: mqlink run -> parquet, buffer auto" pq_count "$work/$id-lake"
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
  for mode in always off; do
    id="dh$mode-$r-$$"; limits_http "$id" "$hport" "$mode" > "$work/$id.toml"
    "$MQLINK" run "$work/$id.toml" --until-idle 0.2 2>/dev/null   # the session
    slow_endpoint "$hport" "$work/$id.count"; sleep 0.5
    "$MQLINK" run "$work/$id.toml" 2>"$work/$id.err" & pid=$!
    limits_burst "limits: mqlink run -> http 100 ms, buffer $mode" cat "$work/$id.count"
    kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
    kill "$(tail -1 "$work/pid")"; wait "$(tail -1 "$work/pid")" 2>/dev/null || true
  done
}
hport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')

fill_queue() { # $1 = client id [$2 = port, $3 = message file]
  local p=${2:-$port} f=${3:-$work/msgs}
  mosquitto_sub -p "$p" -t "bench/$1" -q 1 -c -i "$1" -W 1 >/dev/null 2>&1 || true
  "$work/cpub" "$p" "bench/$1" 1 "$f" >/dev/null
}
head -20000 "$work/msgs" > "$work/msgs20k"

echo "mqlink benchmark: $N QoS 1 messages of $bytes bytes, Mosquitto $(/usr/sbin/mosquitto -h | head -1 | awk '{print $3}') on loopback, $ROUNDS rounds"
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
echo
printf '%-44s %8s %8s %8s %12s\n' "run" "wall s" "user s" "sys s" "msgs/s"
report() { # name "wall user sys"
  set -- "$1" $2
  printf '%-44s %8s %8s %8s %12.0f\n' "$1" "$2" "$3" "$4" "$(awk -v n="$N" -v w="$2" 'BEGIN{print n/w}')"
  echo "$1 $2 $3 $4" >> "$work/results"
}
# A bridge pipeline: the queue of session $1 republished to bridged/<topic>.
bridge_pipeline() { # $1 = client id
  cat <<TOML
[connections.near]
broker = "mqtt://127.0.0.1:$port"
client_id = "$1"
clean_session = false
[connections.far]
broker = "mqtt://127.0.0.1:$port"
[sources.in]
type = "mqtt"
connection = "near"
topics = ["bench/$1"]
[sinks.out]
type = "mqtt"
inputs = ["in"]
connection = "far"
topic = "bridged/{stream}"
format = "raw"
TOML
}
# Run 12: brokers of other makes (ejabberd, amqtt), each started by testkit's
# recipe (crates/testkit/src/bin/other-broker.rs: own directory, free port,
# one user), MQTT 3.1.1: 20,000 queued for a persistent session drained by
# mosquitto_sub and by mqlink sub (the same flags), and bridged into the
# Mosquitto above by `mqlink run` (MQTT source -> MQTT sink) and by a
# Mosquitto bridge (a Mosquitto of its own, as deployed): each timed from
# start to the last message at a subscriber behind it.
other_up() { # $1 = make; writes "port user password" to $work/$1.addr, the broker up until this script exits
  local out=$work/$1.addr
  mkfifo "$work/$1.in"
  "$OTHER" "$1" < "$work/$1.in" > "$out" 2> "$work/$1.err" &
  exec {keep}> "$work/$1.in"   # its stdin: closed when the script exits, which stops it
  for _ in $(seq 1200); do [ -s "$out" ] && break; kill -0 $! 2>/dev/null || break; sleep 0.1; done
  [ -s "$out" ] || { echo "$1: $(tail -1 "$work/$1.err")" >&2; return 1; }
}
# A `mqlink run` bridge from session $1 on the other broker into Mosquitto.
other_bridge() { # $1 = client id, $2 = other broker's port, $3 user, $4 password
  cat <<TOML
[run]
state_dir = "$work/state-$1"
[connections.near]
broker = "mqtt://127.0.0.1:$2"
client_id = "$1"
clean_session = false
protocol = "3.1.1"
username = "$3"
password = "$4"
[connections.far]
broker = "mqtt://127.0.0.1:$port"
[sources.in]
type = "mqtt"
connection = "near"
topics = ["bench/$1"]
[sinks.out]
type = "mqtt"
inputs = ["in"]
connection = "far"
topic = "bridged/{stream}"
format = "raw"
TOML
}
# Seconds from $1 (`date +%s.%N`) until a subscriber (session $3 on port
# $2, made beforehand) has all 20,000 of bridged/bench/$4.
count_bridged() { # $1 = t0, $2 = port, $3 = subscriber's client id, $4 = id
  timeout 120 mosquitto_sub -p "$2" -t "bridged/bench/$4" -q 1 -c -i "$3" -C 20000 >/dev/null || { echo "bridge $4: not all 20,000 arrived" >&2; return 1; }
  awk -v a="$(date +%s.%N)" -v b="$1" 'BEGIN{printf "%.2f", a-b}'
}
bench_brokers_round() { # $1 = make, $2 = port, $3 = user, $4 = password, $5 = round
  local make=$1 op=$2 r=$5 id t0 pid mb mport s
  local auth=(-p "$op" -u "$3" -P "$4")
  queue() { # $1 = client id whose session exists: 20,000 queued for it
    timeout 120 mosquitto_pub "${auth[@]}" -t "bench/$1" -q 1 -l < "$work/msgs20k"
  }
  fill() { # $1 = client id: its session, then 20,000 queued
    # amqtt may still be busy with the last client (seconds after a drain).
    for _ in 1 2 3; do timeout 30 mosquitto_sub "${auth[@]}" -t "bench/$1" -q 1 -c -i "$1" -E >/dev/null && break; done
    queue "$1"
  }
  id="${make}s$r$$"; fill "$id"
  set -- $(timed timeout 120 mosquitto_sub "${auth[@]}" -t "bench/$id" -q 1 -c -i "$id" -C 20000)
  printf '%-44s %8s %8s %8s\n' "$make drain: mosquitto_sub" "$1" "$2" "$3"; echo "$make drain mosquitto_sub $1" >> "$work/brokers_results"
  id="${make}l$r$$"; fill "$id"
  set -- $(timed timeout 120 "$MQLINK" sub "${auth[@]}" -t "bench/$id" -q 1 -c -i "$id" -C 20000)
  printf '%-44s %8s %8s %8s\n' "$make drain: mqlink sub" "$1" "$2" "$3"; echo "$make drain mqlink $1" >> "$work/brokers_results"
  # mqlink run: the subscriber's session first, then the bridge.
  id="${make}b$r$$"
  other_bridge "$id" "$op" "${auth[3]}" "${auth[5]}" > "$work/$id.toml"
  "$MQLINK" run "$work/$id.toml" --until-idle 0.2 2>/dev/null   # its session
  queue "$id"
  timeout 30 mosquitto_sub -p "$port" -t "bridged/bench/$id" -q 1 -c -i "c$id" -E >/dev/null
  t0=$(date +%s.%N)
  "$MQLINK" run "$work/$id.toml" --until-idle 0.5 2>"$work/$id.err" & pid=$!
  s=$(count_bridged "$t0" "$port" "c$id" "$id") || { cat "$work/$id.err" >&2; return 1; }
  wait "$pid" || { cat "$work/$id.err" >&2; return 1; }
  printf '%-44s %8s\n' "$make bridge: mqlink run" "$s"; echo "$make bridge mqlink $s" >> "$work/brokers_results"
  # Mosquitto's bridge: the subscriber's session saved in its database, then
  # Mosquitto started again with the bridge.
  id="${make}m$r$$"; fill "$id"
  mb=$work/$id; mkdir -p "$mb"
  mport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  printf 'user root\nlistener %s 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\nmax_queued_bytes 0\npersistence true\npersistence_location %s/\n' \
    "$mport" "$mb" > "$mb/mosquitto.conf"
  /usr/sbin/mosquitto -c "$mb/mosquitto.conf" >/dev/null 2>&1 & pid=$!
  for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$mport) 2>/dev/null && break; sleep 0.1; done
  timeout 30 mosquitto_sub -p "$mport" -t "bridged/bench/$id" -q 1 -c -i "c$id" -E >/dev/null
  kill "$pid"; wait "$pid" || true
  # notifications off: they are $SYS topics, which amqtt refuses.
  printf 'connection b\naddress 127.0.0.1:%s\nbridge_protocol_version mqttv311\ntry_private false\nnotifications false\ncleansession false\nremote_clientid %s\nremote_username %s\nremote_password %s\ntopic bench/%s in 1 bridged/ ""\n' \
    "$op" "$id" "${auth[3]}" "${auth[5]}" "$id" >> "$mb/mosquitto.conf"
  t0=$(date +%s.%N)
  /usr/sbin/mosquitto -c "$mb/mosquitto.conf" >/dev/null 2>&1 & pid=$!
  for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$mport) 2>/dev/null && break; sleep 0.02; done
  s=$(count_bridged "$t0" "$mport" "c$id" "$id") || return 1
  kill "$pid"; wait "$pid" || true
  printf '%-44s %8s\n' "$make bridge: mosquitto bridge" "$s"; echo "$make bridge mosquitto $s" >> "$work/brokers_results"
}
if [ -z "$ONLY" ] || [ "$ONLY" = brokers ]; then
  echo "brokers of other makes: 20,000 QoS 1 messages of $bytes bytes queued for a persistent session, MQTT 3.1.1"
  printf '%-44s %8s %8s %8s\n' "run" "wall s" "user s" "sys s"
  : > "$work/brokers_results"
  for make in ${BENCH_BROKERS:-ejabberd amqtt}; do
    other_up "$make" || continue
    for r in $(seq "$ROUNDS"); do bench_brokers_round "$make" $(cat "$work/$make.addr") "$r"; done
  done
  python3 - "$work/brokers_results" <<'PY'
import sys, collections
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    make, what, who, secs = line.split()
    runs[(make, what, who)].append(float(secs))
for make in dict.fromkeys(k[0] for k in runs):
    d = [runs[(make, "drain", w)] for w in ("mqlink", "mosquitto_sub")]
    b = [runs[(make, "bridge", w)] for w in ("mqlink", "mosquitto")]
    if all(d):
        print(f"{make:9} drain  mqlink sub / mosquitto_sub:  wall {min(d[0])/min(d[1]):.2f}x best, {sorted(d[0])[len(d[0])//2]/sorted(d[1])[len(d[1])//2]:.2f}x median  (target: <= 1.00x)")
    if all(b):
        print(f"{make:9} bridge mqlink run / Mosquitto bridge: wall {min(b[0])/min(b[1]):.2f}x best, {sorted(b[0])[len(b[0])//2]/sorted(b[1])[len(b[1])//2]:.2f}x median  (target: <= 1.50x)")
PY
  echo
fi
[ "$ONLY" = brokers ] && exit 0
if [ "${BENCH_LIMITS:-1}" = 1 ] && { [ -z "$ONLY" ] || [ "$ONLY" = limits ]; }; then
  echo "broker limits: $N QoS 1 messages from cpub at full speed into Mosquitto with its defaults, MQTT 3.1.1, one live consumer at a time"
  printf '%-44s %8s %8s %12s %10s\n' "run" "last s" "" "msgs/s" "received"
  for r in $(seq "$ROUNDS"); do bench_limits_round "$r"; done
  python3 - "$work/limits_results" "$N" <<'PY'
import sys, collections
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    *name, got, secs = line.split()
    runs[" ".join(name)].append((int(got), float(secs)))
ms = runs["limits: mosquitto_sub -q 1"]
rate = lambda rs: max(g / max(s, 1e-9) for g, s in rs)
for mode in ("auto", "off"):
    rs = runs[f"limits: mqlink run -> postgres, buffer {mode}"]
    print(f"limits  buffer {'on ' if mode == 'auto' else 'off'} / mosquitto_sub: rate {rate(rs)/rate(ms):.2f}x (best of each),"
          f" received {min(g for g, _ in rs):,}-{max(g for g, _ in rs):,} vs {min(g for g, _ in ms):,}-{max(g for g, _ in ms):,} of {int(sys.argv[2]):,}"
          + ("  (target: >= 1.00x, no fewer received)" if mode == "auto" else ""))
rs = runs["limits: mqlink run -> parquet, buffer auto"]
print(f"limits  parquet, buffer on: {rate(rs):,.0f} msgs/s (best; target >= 100,000), {rate(rs)/rate(ms):.2f}x mosquitto_sub,"
      f" received {min(g for g, _ in rs):,}-{max(g for g, _ in rs):,} of {int(sys.argv[2]):,}")
on, off = (runs[f"limits: mqlink run -> http 100 ms, buffer {m}"] for m in ("always", "off"))
print(f"limits  http 100 ms, buffer on / off: rate {rate(on)/rate(off):.1f}x (best of each; target >= 10x),"
      f" received {min(g for g, _ in on):,}-{max(g for g, _ in on):,} vs {min(g for g, _ in off):,}-{max(g for g, _ in off):,} of {int(sys.argv[2]):,}")
PY
  echo
fi
[ "$ONLY" = limits ] && exit 0
# Run 11: Sparkplug B: a queue of NDATA by alias (NBIRTH first) drained by
# `mqlink run` (format = "sparkplug_b" into a JSON-lines file, one line per
# metric) and by pysparkplug's decoder over paho-mqtt writing the same lines
# (bench/sparkplug.py), each from its own session of the same queue.
if [ "${BENCH_SPARKPLUG:-1}" = 1 ] && { [ -z "$ONLY" ] || [ "$ONLY" = sparkplug ]; }; then
  spenv=target/sparkplug-venv
  "$spenv/bin/python" -c 'import pysparkplug' 2>/dev/null ||
    { python3 -m venv "$spenv" && "$spenv/bin/pip" install -q --disable-pip-version-check 'pysparkplug==0.6.1'; }
  SPN=${SPARKPLUG_N:-20000}; SPM=${SPARKPLUG_METRICS:-20}
  echo "sparkplug: $SPN NDATA of $SPM Double metrics by alias each ($((SPN * SPM)) metrics), queued, decoded into a file"
  for r in $(seq "$ROUNDS"); do
    g="spb$r$$"
    cat > "$work/$g.toml" <<TOML
[run]
state_dir = "$work/state-$g"
[connections.b]
broker = "mqtt://127.0.0.1:$port"
client_id = "$g-mqlink"
clean_session = false
[sources.plant]
type = "mqtt"
connection = "b"
topics = ["spBv1.0/$g/#"]
format = "sparkplug_b"
[sinks.out]
type = "file"
inputs = ["plant"]
path = "$work/$g.jsonl"
TOML
    "$MQLINK" run "$work/$g.toml" --until-idle 0.2 2>/dev/null   # the session
    "$spenv/bin/python" bench/sparkplug.py session "$port" "$g-peer" "$g"
    "$spenv/bin/python" bench/sparkplug.py feed "$port" "$g" "$SPN" "$SPM"
    rm -f "$work/$g.jsonl"
    t0=$(date +%s.%N)
    "$MQLINK" run "$work/$g.toml" --until-idle 0.5 2>"$work/$g.err"
    # To the last line written (the file's mtime), from the process's start:
    # the idle wait and the shutdown are not decoding (the peer's clock
    # stops at its last line too).
    t1=$(stat -c %.9Y "$work/$g.jsonl")
    got=$(grep -c '"NDATA"' "$work/$g.jsonl" || true)
    secs=$(awk -v a="$t1" -v b="$t0" 'BEGIN{printf "%.3f", a-b}')
    printf '%-44s %8s %8s %12.0f %10s\n' "sparkplug: mqlink run -> file" "$secs" "" "$(awk -v n="$got" -v w="$secs" 'BEGIN{print n/w}')" "$got"
    echo "mqlink $got $secs" >> "$work/spb_results"
    set -- $("$spenv/bin/python" bench/sparkplug.py drain "$port" "$g-peer" "$g" "$SPN" "$work/$g-peer.jsonl")
    printf '%-44s %8s %8s %12.0f %10s\n' "sparkplug: pysparkplug + paho -> file" "$2" "" "$(awk -v n="$1" -v w="$2" 'BEGIN{print n/w}')" "$1"
    echo "peer $1 $2" >> "$work/spb_results"
  done
  python3 - "$work/spb_results" <<'PY'
import sys
best = {}
for line in open(sys.argv[1]):
    who, n, s = line.split()
    best[who] = max(best.get(who, 0), int(n) / max(float(s), 1e-9))
print(f"sparkplug  mqlink {best['mqlink']:,.0f} metrics/s (target >= 100,000), pysparkplug {best['peer']:,.0f} metrics/s: {best['mqlink'] / best['peer']:.1f}x (target >= 10x)")
PY
  echo
fi
[ "$ONLY" = sparkplug ] && exit 0
for r in $(seq "$ROUNDS"); do
  [ "$ONLY" = latency ] && break
  if [ "$ONLY" != sql ]; then
  id="bp-$r-$$"; bridge_pipeline "$id" > "$work/$id.toml"
  "$MQLINK" run "$work/$id.toml" --until-idle 0.2 2>/dev/null   # creates the session
  "$MQLINK" pub -p "$port" -t "bench/$id" -q 1 -l < "$work/msgs" 2>/dev/null
  set -- $(run_pipeline "$work/$id.toml")
  report "bridge: mqlink run (mqtt -> mqtt), busy" "$1 $3 $4"
  id="bl-$r-$$"; fill_queue "$id"
  set -- $(timed "$BRIDGE" "mqtt://127.0.0.1:$port" "$id" "bench/$id" "mqtt://127.0.0.1:$port" "bridged/{stream}" "$N")
  busy=$(sed -n 's/^bridged [0-9]* records in \([0-9.]*\) s.*/\1/p' "$work/err")
  report "bridge: library (examples/bridge.rs), busy" "$busy $2 $3"
  fi
  [ -n "$ONLY" ] && [ "$ONLY" != sql ] && continue
  id="ms-$r-$$"; fill_queue "$id"
  report "drain: mosquitto_sub" "$(timed mosquitto_sub -p "$port" -t "bench/$id" -q 1 -c -i "$id" -C "$N")"
  [ "${BENCH_SQL:-1}" = 1 ] && bench_sql_round "$r"
  [ -n "$ONLY" ] && continue
  id="ml-$r-$$"; fill_queue "$id"
  report "drain: mqlink sub" "$(timed "$MQLINK" sub -p "$port" -t "bench/$id" -q 1 -c -i "$id" -C "$N")"
  id="mj-$r-$$"; fill_queue "$id"
  report "drain: mqlink sub --schema (typed JSON)" "$(timed "$MQLINK" sub -p "$port" -t "bench/$id" -q 1 -c -i "$id" -C "$N" \
    --schema "$SCHEMA" --format json)"
  report "publish: libmosquitto (cpub), 1000 in flight" "$(timed "$work/cpub" "$port" bench/pub 1 "$work/msgs" 1000)"
  report "publish: mqlink pub -l --max-inflight 1000" "$(timed "$MQLINK" pub -p "$port" -t bench/pub -q 1 -l --max-inflight 1000 < "$work/msgs")"
  report "publish: mqlink library sink (JSON records)" "$(timed "$SINK_BENCH" 127.0.0.1 "$port" bench/sink "$N")"
  report "airbyte write (QoS 1, STATE per 10,000)" "$(timed "$MQLINK" airbyte write --config "$work/airbyte-config.json" \
    --catalog "$work/airbyte-catalog.json" < "$work/airbyte.jsonl")"
  report "publish: mqlink library sink with spool" "$(timed "$SINK_BENCH" 127.0.0.1 "$port" bench/sink "$N" "$work/spool-$r")"
  id="pf-$r-$$"; pipeline "$id" "type = \"file\"
inputs = [\"telemetry\"]
path = \"$work/$id.jsonl\"" > "$work/$id.toml"
  "$MQLINK" run "$work/$id.toml" --until-idle 0.2 2>/dev/null   # creates the session
  "$MQLINK" pub -p "$port" -t "bench/$id" -q 1 -l < "$work/msgs" 2>/dev/null; rm -f "$work/$id.jsonl"
  set -- $(run_pipeline "$work/$id.toml"); [ "$(wc -l < "$work/$id.jsonl")" -eq "$N" ] || { echo "file has $(wc -l < "$work/$id.jsonl") lines" >&2; exit 1; }
  report "pipeline: mqtt -> file (typed JSON), busy" "$1 $3 $4"
  id="pp-$r-$$"; pipeline "$id" "type = \"postgres\"
inputs = [\"telemetry\"]
url = \"postgres://postgres@127.0.0.1:$pgport/postgres\"
table = \"t_$r\"
create_table = true
primary_key = [\"device_id\", \"seq\"]" > "$work/$id.toml"
  "$MQLINK" run "$work/$id.toml" --until-idle 0.2 2>/dev/null
  "$MQLINK" pub -p "$port" -t "bench/$id" -q 1 -l < "$work/msgs" 2>/dev/null
  set -- $(run_pipeline "$work/$id.toml")
  report "pipeline: mqtt -> postgres (PK, typed), busy" "$1 $3 $4"
  for w in 1 10; do
    id="ws$w-$r-$$"; fill_queue "$id" "${wport[$w]}" "$work/msgs20k"
    report "drain window $w: mosquitto_sub (20,000)" "$(timed mosquitto_sub -p "${wport[$w]}" -t "bench/$id" -q 1 -c -i "$id" -C 20000)"
    id="wl$w-$r-$$"; fill_queue "$id" "${wport[$w]}" "$work/msgs20k"
    report "drain window $w: mqlink sub (20,000)" "$(timed "$MQLINK" sub -p "${wport[$w]}" -t "bench/$id" -q 1 -c -i "$id" -C 20000)"
  done
  id="ns-$r-$$"; fill_queue "$id" "${wport[0]}"
  report "drain no cap 3.1.1: mosquitto_sub" "$(timed mosquitto_sub -p "${wport[0]}" -t "bench/$id" -q 1 -c -i "$id" -C "$N")"
  id="nl-$r-$$"; fill_queue "$id" "${wport[0]}"
  report "drain no cap 3.1.1: mqlink sub" "$(timed timeout 120 "$MQLINK" sub -p "${wport[0]}" -t "bench/$id" -q 1 -c -i "$id" -C "$N")"
  id="es-$r-$$"; fill_queue "$id" "$eport"
  report "embedded broker drain: mosquitto_sub" "$(timed timeout 120 mosquitto_sub -p "$eport" -t "bench/$id" -q 1 -c -i "$id" -C "$N")"
  id="el-$r-$$"; fill_queue "$id" "$eport"
  report "embedded broker drain: mqlink sub" "$(timed timeout 120 "$MQLINK" sub -p "$eport" -t "bench/$id" -q 1 -c -i "$id" -C "$N")"
  report "embedded broker publish: cpub, 1000 in flight" "$(timed "$work/cpub" "$eport" bench/pub 1 "$work/msgs" 1000)"
  rm -f "$work/quickstart.jsonl"
  set -- $(run_pipeline "$work/quickstart.toml"); [ "$(wc -l < "$work/quickstart.jsonl")" -eq "$N" ] || { echo "quickstart wrote $(wc -l < "$work/quickstart.jsonl") lines" >&2; exit 1; }
  report "quickstart (embedded broker), busy" "$1 $3 $4"
done
# Latency: one stream at a steady rate, both subscribers at once.
LAT_N=${LAT_N:-50000}; LAT_RATES=${LAT_RATES:-5000,20000}
[ -n "$ONLY" ] && BENCH_PAHO=0
if [ -z "$ONLY" ] || [ "$ONLY" = latency ]; then
  python3 bench/latency.py "$port" "$LAT_N" "$LAT_RATES" "$MQLINK" "$work/stamppub" > "$work/latency"
fi
if [ "${BENCH_PAHO:-1}" = 1 ]; then
  report "publish: paho-mqtt (Python)" "$(timed python3 bench/paho_pub.py 127.0.0.1 "$port" bench/pub "$work/msgs")"
fi
echo
[ -f "$work/latency" ] && cat "$work/latency"
[ "$ONLY" = latency ] && exit 0
# Best of the rounds for each run, and the ratios the targets are stated in.
touch "$work/rss_results"
python3 - "$work/results" "$N" "$work/rss_results" <<'PY'
import sys, collections
best = collections.defaultdict(lambda: (1e9, 0, 0))
for line in open(sys.argv[1]):
    *name, wall, user, sys_ = line.split()
    name = " ".join(name)
    if float(wall) < best[name][0]:
        best[name] = (float(wall), float(user), float(sys_))
def g(k): return best[k]
n = int(sys.argv[2])
rss = collections.defaultdict(int)
for line in open(sys.argv[3]):
    *name, kb = line.split()
    rss[" ".join(name)] = max(rss[" ".join(name)], int(kb))
if "sql: SELECT ... WHERE -> file, busy" in best:
    ms = g("drain: mosquitto_sub")
    for label, key in (("SELECT ... WHERE -> file", "sql: SELECT ... WHERE -> file"),
                       ("1-minute tumbling window", "sql: 1-minute tumbling window -> file")):
        b = g(key + ", busy")
        print(f"sql {label:26} {n/b[0]:,.0f} messages/s acknowledged end to end, peak RSS {rss[key]/1024:.0f} MiB"
              f"  (target: >= 150,000/s; mosquitto_sub drain alone: {n/ms[0]:,.0f}/s)")
if "bridge: mqlink run (mqtt -> mqtt), busy" not in best:
    sys.exit(0)
bp, bl = g("bridge: mqlink run (mqtt -> mqtt), busy"), g("bridge: library (examples/bridge.rs), busy")
print(f"bridge  library / mqlink run: busy {bl[0]/bp[0]:.2f}x  ({n/bl[0]:,.0f} vs {n/bp[0]:,.0f} messages/s acknowledged after confirmation)")
if "drain: mosquitto_sub" not in best:
    sys.exit(0)
ms, ml, mj = g("drain: mosquitto_sub"), g("drain: mqlink sub"), g("drain: mqlink sub --schema (typed JSON)")
lp, mp = g("publish: libmosquitto (cpub), 1000 in flight"), g("publish: mqlink pub -l --max-inflight 1000")
print(f"drain   mqlink sub / mosquitto_sub: wall {ml[0]/ms[0]:.2f}x, CPU {(ml[1]+ml[2])/max(ms[1]+ms[2],1e-9):.2f}x  (target: wall <= 1.00x)")
n = int(sys.argv[2])
print(f"drain   with typed JSON decoding: {n/mj[0]:,.0f} messages/s, CPU {(mj[1]+mj[2])/n*1e6:.2f} us/message"
      f" (mosquitto_sub: {(ms[1]+ms[2])/n*1e6:.2f} us/message)  (target: >= 150,000/s)")
print(f"publish mqlink pub / libmosquitto:  wall {mp[0]/lp[0]:.2f}x, CPU {(mp[1]+mp[2])/max(lp[1]+lp[2],1e-9):.2f}x  (target: wall <= 1.25x)")
sk = g("publish: mqlink library sink (JSON records)")
print(f"publish library sink / libmosquitto: wall {sk[0]/lp[0]:.2f}x  (target: wall <= 1.00x)")
sp = g("publish: mqlink library sink with spool")
print(f"publish sink with spool / libmosquitto: wall {sp[0]/lp[0]:.2f}x  (target: wall <= 2.00x, at least half the speed)")
ab = g("airbyte write (QoS 1, STATE per 10,000)")
print(f"airbyte write: {n/ab[0]:,.0f} records/s  (target: >= 100,000/s)")
pf, pp = g("pipeline: mqtt -> file (typed JSON), busy"), g("pipeline: mqtt -> postgres (PK, typed), busy")
print(f"pipeline mqtt -> file:     {n/pf[0]:,.0f} messages/s acknowledged end to end  (target: >= 100,000/s; mosquitto_sub drain alone: {n/ms[0]:,.0f}/s)")
print(f"pipeline mqtt -> postgres: {n/pp[0]:,.0f} rows/s committed, then acknowledged  (target: >= 50,000/s)")
for w in (1, 10):
    a, b = g(f"drain window {w}: mosquitto_sub (20,000)"), g(f"drain window {w}: mqlink sub (20,000)")
    print(f"drain, broker window {w:>2}: mqlink sub / mosquitto_sub: wall {b[0]/a[0]:.2f}x  (target: <= 1.50x)")
a, b = g("drain no cap 3.1.1: mosquitto_sub"), g("drain no cap 3.1.1: mqlink sub")
print(f"drain, no in-flight cap, 3.1.1: mqlink sub / mosquitto_sub: wall {b[0]/a[0]:.2f}x  (target: <= 0.80x)")
es, el = g("embedded broker drain: mosquitto_sub"), g("embedded broker drain: mqlink sub")
ep = g("embedded broker publish: cpub, 1000 in flight")
print(f"embedded broker / Mosquitto, drain by mosquitto_sub: wall {es[0]/ms[0]:.2f}x ({n/es[0]:,.0f}/s vs {n/ms[0]:,.0f}/s); by mqlink sub: {el[0]/ml[0]:.2f}x")
print(f"embedded broker / Mosquitto, cpub publish:           wall {ep[0]/lp[0]:.2f}x ({n/ep[0]:,.0f}/s vs {n/lp[0]:,.0f}/s)")
qs = g("quickstart (embedded broker), busy")
print(f"quickstart unthrottled: {n/qs[0]:,.0f} readings/s through the embedded broker, archived and republished, each acknowledged after both")
if "publish: paho-mqtt (Python)" in best:
    pp = g("publish: paho-mqtt (Python)")
    print(f"publish paho-mqtt / libmosquitto:   wall {pp[0]/lp[0]:.1f}x")
PY
[ "${BENCH_PYTHON:-1}" = 1 ] && bench_python
exit 0
