//! `mqlink run` and `mqlink validate` as a user runs them: pipeline files,
//! a real Mosquitto and a real PostgreSQL started by the tests, faults that
//! are real (SIGKILL of mqlink, a broker stopped and restarted, SIGTERM).

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use testkit::{free_port, http_get, unique_id, wait_until, Mosquitto, MosquittoConfig, Postgres};
use testkit::{metric, mosquitto_sub, signal, wait_output, write};

fn mqlink() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mqlink"));
    c.env_remove("MQLINK_PASSWORD").env_remove("MQLINK_LOG");
    c
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn start(file: &Path, dir: &Path, extra: &[&str]) -> Child {
    mqlink()
        .arg("run")
        .arg(file)
        .args(extra)
        .env("RUN_TEST_PW", SECRET)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Publishes lines with `mqlink pub -l` at QoS 1 (every one confirmed).
fn publish(port: u16, topic: &str, lines: &[String]) {
    use std::io::Write;
    let mut p = mqlink()
        .args(["pub", "-p", &port.to_string(), "-t", topic, "-q", "1", "-l"])
        .stdin(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    {
        let mut stdin = p.stdin.take().unwrap();
        for l in lines {
            writeln!(stdin, "{l}").unwrap();
        }
    }
    assert!(p.wait().unwrap().success());
}

/// A password that must never be printed.
const SECRET: &str = "pw-6f1c-never-printed";

fn reading(i: usize) -> String {
    format!(
        r#"{{"device_id":"dev-{:03}","seq":{i},"timestamp":"2026-11-23T10:00:00Z","temperature":21.5,"humidity":40}}"#,
        i % 50
    )
}

#[test]
fn validate_names_the_key_path_and_never_prints_secrets() {
    let dir = testkit::TempDir::new().unwrap();
    let bad = write(
        dir.path(),
        "bad.toml",
        r#"
[connections.c]
broker = "mqtt://127.0.0.1:1883"
password = "${PW}"
[sources.s]
type = "mqtt"
connection = "c"
topics = ["a/#"]
schema = { id = "bigint" }
[sinks.db]
type = "postgres"
inputs = ["s"]
url = "postgres://u:hunter2@127.0.0.1:notaport/db"
table = "t"
"#,
    );
    let out = mqlink()
        .arg("validate")
        .arg(&bad)
        .env("PW", "pw-in-env")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("sinks.db.url: not a PostgreSQL URL"), "{err}");
    assert!(
        !err.contains("hunter2") && !err.contains("pw-in-env"),
        "{err}"
    );

    let unknown = write(
        dir.path(),
        "unknown.yaml",
        "connections:\n  c: { broker: \"mqtt://h\", colour: red }\n",
    );
    let out = mqlink().arg("validate").arg(&unknown).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("connections.c.colour: unknown field `colour`"),
        "{}",
        text(&out.stderr)
    );

    // TLS files are read by validate: a missing CA names the key as written.
    let tls = write(
        dir.path(),
        "tls.toml",
        r#"
[connections.c]
broker = "mqtts://127.0.0.1:8883"
tls_ca_cert = "/nonexistent/ca.pem"
[sources.s]
type = "mqtt"
connection = "c"
topics = ["a/#"]
[sinks.out]
type = "file"
inputs = ["s"]
path = "out.jsonl"
"#,
    );
    let out = mqlink().arg("validate").arg(&tls).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("connections.c.tls_ca_cert") && err.contains("/nonexistent/ca.pem"),
        "{err}"
    );

    // Every shipped example is valid, and ids are derived per component
    // (the commissioning files of examples/cybus/ are checked by
    // tests/cybus.rs and the pipeline crate's unit tests: they take --param).
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut n = 0;
    for e in std::fs::read_dir(&examples).unwrap().flatten() {
        if e.path().is_dir() {
            continue;
        }
        let out = mqlink().arg("validate").arg(e.path()).output().unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            e.path().display(),
            text(&out.stderr)
        );
        n += 1;
    }
    assert!(n >= 3, "examples: {n}");
    let out = mqlink()
        .arg("validate")
        .arg(examples.join("quickstart.toml"))
        .output()
        .unwrap();
    assert!(
        text(&out.stdout).contains("sources.telemetry: MQTT client id quickstart-telemetry"),
        "{}",
        text(&out.stdout)
    );
}

/// MQTT → file with typed JSON: undecodable payloads reach the dead-letter
/// topic and /metrics; /ready is 503 while the broker is down and 200 after;
/// SIGTERM drains and exits 0.
#[test]
fn dead_letters_metrics_readiness_and_a_draining_sigterm() {
    let mut broker = Mosquitto::with(MosquittoConfig {
        persistence: true,
        ..Default::default()
    });
    let dir = testkit::TempDir::new().unwrap();
    let http = free_port();
    let topic = unique_id("run");
    let cfg = write(
        dir.path(),
        "p.toml",
        &format!(
            r#"
[connections.b]
broker = "mqtt://127.0.0.1:{port}"
client_id = "{topic}"
protocol = "5"
clean_session = false
reconnect_interval = 0.2
username = "reader"
password = "${{RUN_TEST_PW}}"

[sources.telemetry]
type = "mqtt"
connection = "b"
topics = ["{topic}/+/telemetry"]
schema = {{ device_id = "text", seq = "bigint", timestamp = "timestamp", temperature = "double", humidity = "double" }}
dead_letter_topic = "{topic}/errors"

[sinks.archive]
type = "file"
inputs = ["telemetry"]
path = "out/archive.jsonl"

[http]
listen = "127.0.0.1:{http}"
"#,
            port = broker.port
        ),
    );
    // An independent subscriber on the dead-letter topic.
    let dlq = Command::new("mosquitto_sub")
        .args([
            "-p",
            &broker.port.to_string(),
            "-t",
            &format!("{topic}/errors"),
            "-q",
            "1",
            "-C",
            "3",
            "-W",
            "60",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut run = start(&cfg, dir.path(), &[]);
    wait_ready(http, &mut run);

    let good: Vec<String> = (0..2000).map(reading).collect();
    publish(
        broker.port,
        &format!("{topic}/dev-1/telemetry"),
        &good[..1000],
    );
    publish(
        broker.port,
        &format!("{topic}/dev-2/telemetry"),
        &[
            "not json".into(),
            r#"{"device_id":"d","seq":"seven"}"#.into(),
            // Valid JSON but not an object. (`{}` is a row of NULLs: columns
            // are nullable, as in Laminar's tables.)
            "[1,2]".into(),
        ],
    );
    publish(
        broker.port,
        &format!("{topic}/dev-1/telemetry"),
        &good[1000..],
    );
    let archive = dir.path().join("out/archive.jsonl");
    wait_until(30, "2000 lines in the file", || {
        lines(&archive).len() >= 2000
    });

    let dead = dlq.wait_with_output().unwrap();
    assert_eq!(
        text(&dead.stdout).lines().count(),
        3,
        "dead letters: {}",
        text(&dead.stdout)
    );
    wait_until(10, "metrics", || {
        let (_, m) = http_get(http, "/metrics").unwrap();
        m.contains("mqlink_source_dead_lettered_total{component=\"telemetry\",type=\"mqtt\"} 3")
    });
    let (_, m) = http_get(http, "/metrics").unwrap();
    for want in [
        "mqlink_source_decode_errors_total{component=\"telemetry\",type=\"mqtt\"} 3",
        "mqlink_source_messages_received_total{component=\"telemetry\",type=\"mqtt\"} 2003",
        "mqlink_source_records_acknowledged_total{component=\"telemetry\",type=\"mqtt\"} 2000",
        "mqlink_sink_confirmed_total{component=\"archive\",type=\"file\"} 2000",
        "# TYPE mqlink_source_unacknowledged gauge",
    ] {
        assert!(m.contains(want), "{want} not in\n{m}");
    }
    let (code, status) = http_get(http, "/status").unwrap();
    assert_eq!(code, 200);
    assert!(
        !status.contains(SECRET) && !m.contains(SECRET),
        "a password in /status or /metrics"
    );
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["components"][1]["name"], "telemetry");
    assert_eq!(status["components"][1]["state"], "running");
    assert_eq!(
        status["components"][1]["errors"], 3,
        "/status counts the decode errors the metrics count"
    );
    let row: serde_json::Value = serde_json::from_str(&lines(&archive)[0]).unwrap();
    assert_eq!(row["seq"], 0);
    assert_eq!(row["timestamp"], "2026-11-23T10:00:00.000000Z");

    // The broker goes away: not ready, naming the client; back: ready.
    broker.stop();
    wait_until(10, "/ready 503", || {
        http_get(http, "/ready").is_some_and(|(c, _)| c == 503)
    });
    let (_, why) = http_get(http, "/ready").unwrap();
    assert!(
        why.contains(&format!("sources.telemetry: client {topic}-telemetry is ")),
        "{why}"
    );
    assert_eq!(http_get(http, "/health").unwrap().0, 200);
    broker.restart();
    wait_until(20, "/ready 200 again", || {
        http_get(http, "/ready").is_some_and(|(c, _)| c == 200)
    });

    // SIGTERM in the middle of a stream: what was taken is drained, the
    // process exits 0, and nothing is lost across the restart.
    let more: Vec<String> = (2000..12000).map(reading).collect();
    let port = broker.port;
    let t = topic.clone();
    let publisher =
        std::thread::spawn(move || publish(port, &format!("{t}/dev-3/telemetry"), &more));
    wait_until(30, "the stream to start arriving", || {
        lines(&archive).len() > 2500
    });
    signal(&run, "-TERM");
    let out = wait_output(&mut run, 30);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("mqlink run: stopped (signal received)"),
        "{}",
        text(&out.stderr)
    );
    publisher.join().unwrap();
    let mut again = mqlink()
        .args(["run", "--until-idle", "1"])
        .arg(&cfg)
        .env("RUN_TEST_PW", SECRET)
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_output(&mut again, 60);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let seqs: BTreeSet<i64> = lines(&archive)
        .iter()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"]
                .as_i64()
                .unwrap()
        })
        .collect();
    assert_eq!(
        seqs.len(),
        12000,
        "every message once or more after the drain and restart"
    );
}

/// Waits for /ready 200; if it does not come, shows what mqlink said.
fn wait_ready(http: u16, run: &mut Child) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while http_get(http, "/ready").map(|(c, _)| c) != Some(200) {
        if std::time::Instant::now() > deadline || run.try_wait().unwrap().is_some() {
            let _ = run.kill();
            let out = wait_output(run, 5);
            panic!(
                "not ready: {:?}\n{}",
                http_get(http, "/ready"),
                text(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// SIGKILL of `mqlink run` twice while a stream goes into PostgreSQL:
/// with a primary key, every message is exactly one row.
#[test]
fn sigkill_twice_into_postgres_gives_exactly_one_row_per_message() {
    let broker = Mosquitto::start();
    let pg = Postgres::start();
    let dir = testkit::TempDir::new().unwrap();
    let topic = unique_id("pg");
    let http = free_port();
    let cfg = write(
        dir.path(),
        "p.yaml",
        &format!(
            r#"
connections:
  b:
    broker: "mqtt://127.0.0.1:{port}"
    client_id: "{topic}"
    clean_session: false
    reconnect_interval: 0.2
sources:
  telemetry:
    type: mqtt
    connection: b
    topics: ["{topic}/+/telemetry"]
    schema: {{ device_id: text, seq: bigint, timestamp: timestamp, temperature: double, humidity: double }}
sinks:
  db:
    type: postgres
    inputs: [telemetry]
    url: "{url}"
    table: telemetry
    create_table: true
    primary_key: [device_id, seq]
    batch_size: 500
http:
  listen: "127.0.0.1:{http}"
"#,
            port = broker.port,
            url = pg.url()
        ),
    );
    // The first run creates the session and the table.
    let mut run = start(&cfg, dir.path(), &["--quiet"]);
    wait_ready(http, &mut run);
    const N: usize = 30_000;
    let port = broker.port;
    let t = topic.clone();
    let publisher = std::thread::spawn(move || {
        let all: Vec<String> = (0..N).map(reading).collect();
        for chunk in all.chunks(3000) {
            publish(port, &format!("{t}/x/telemetry"), chunk);
        }
    });
    let count = || {
        pg.psql("SELECT count(*) FROM telemetry")
            .parse::<usize>()
            .unwrap()
    };
    for kill in 1..=2 {
        let at = kill * N / 4;
        wait_until(60, "rows to arrive", || count() >= at);
        signal(&run, "-KILL");
        run.wait().unwrap();
        run = start(&cfg, dir.path(), &["--quiet"]);
    }
    publisher.join().unwrap();
    wait_until(60, "every row", || count() >= N);
    signal(&run, "-TERM");
    assert!(wait_output(&mut run, 30).status.success());
    assert_eq!(count(), N);
    assert_eq!(
        pg.psql("SELECT count(DISTINCT (device_id, seq)) FROM telemetry"),
        N.to_string()
    );
    assert_eq!(
        pg.psql("SELECT min(seq) || ',' || max(seq) FROM telemetry"),
        format!("0,{}", N - 1)
    );
    assert_eq!(
        pg.psql("SELECT to_char(timestamp AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') FROM telemetry WHERE seq = 7"),
        "2026-11-23 10:00:00"
    );
}

/// The README's quickstart: generator → embedded broker → MQTT source →
/// file, and republished; nothing installed, nothing lost.
#[test]
fn the_quickstart_runs_on_the_embedded_broker() {
    let dir = testkit::TempDir::new().unwrap();
    let http = free_port();
    let example = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/quickstart.toml"),
    )
    .unwrap();
    let cfg = example
        .replace("count = 100000", "count = 5000")
        .replace("rate = 20000", "rate = 0")
        .replace("127.0.0.1:9464", &format!("127.0.0.1:{http}"));
    assert_ne!(cfg, example);
    let file = write(dir.path(), "quickstart.toml", &cfg);
    let mut run = start(&file, dir.path(), &["--until-idle", "0.5"]);
    let out = wait_output(&mut run, 60);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let rows = lines(&dir.path().join("out/telemetry.jsonl"));
    let seqs: BTreeSet<String> = rows
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"].to_string())
        .collect();
    assert_eq!(seqs.len(), 5000);
    let summary = text(&out.stderr);
    assert!(summary.contains("sinks.republish"), "{summary}");
    assert!(summary.contains("10000 records acknowledged"), "{summary}");
}

/// PostgreSQL killed mid-stream: the sink holds its batch and retries, the
/// source stops acknowledging but stays connected (keep-alive of 1 s goes
/// on), /ready says why; PostgreSQL back: every message is one row.
#[test]
fn a_sink_that_is_down_holds_acknowledgements_back_and_loses_nothing() {
    let broker = Mosquitto::start();
    let mut pg = Postgres::start();
    let dir = testkit::TempDir::new().unwrap();
    let topic = unique_id("down");
    let http = free_port();
    let cfg = write(
        dir.path(),
        "p.toml",
        &format!(
            r#"
[connections.b]
broker = "mqtt://127.0.0.1:{port}"
client_id = "{topic}"
clean_session = false
keep_alive = 1
[sources.telemetry]
type = "mqtt"
connection = "b"
topics = ["{topic}/#"]
schema = {{ device_id = "text", seq = "bigint", timestamp = "timestamp", temperature = "double", humidity = "double" }}
[sinks.db]
type = "postgres"
inputs = ["telemetry"]
url = "{url}"
table = "readings"
create_table = true
primary_key = ["device_id", "seq"]
[http]
listen = "127.0.0.1:{http}"
"#,
            port = broker.port,
            url = pg.url()
        ),
    );
    let mut run = start(&cfg, dir.path(), &["--quiet"]);
    wait_ready(http, &mut run);
    let all: Vec<String> = (0..6000).map(reading).collect();
    publish(broker.port, &format!("{topic}/a"), &all[..3000]);
    let count = |pg: &Postgres| {
        pg.psql("SELECT count(*) FROM readings")
            .parse::<usize>()
            .unwrap()
    };
    wait_until(30, "the first rows", || count(&pg) == 3000);

    pg.kill();
    publish(broker.port, &format!("{topic}/a"), &all[3000..]);
    wait_until(20, "/ready 503", || {
        http_get(http, "/ready").is_some_and(|(c, _)| c == 503)
    });
    std::thread::sleep(Duration::from_secs(3));
    let (_, why) = http_get(http, "/ready").unwrap();
    assert!(
        why.contains("sinks.db: not connected to PostgreSQL"),
        "{why}"
    );
    assert!(
        !why.contains("sources.telemetry"),
        "the source stays connected: {why}"
    );
    let (_, m) = http_get(http, "/metrics").unwrap();
    let unacked: u64 = m
        .lines()
        .find(|l| l.starts_with("mqlink_source_unacknowledged{"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap();
    assert!(
        unacked > 0,
        "messages held unacknowledged while the sink is down:\n{m}"
    );
    assert!(
        m.contains(
            "mqlink_source_records_acknowledged_total{component=\"telemetry\",type=\"mqtt\"} 3000"
        ),
        "{m}"
    );
    assert!(
        m.contains("mqlink_sink_connection_status{component=\"db\",type=\"postgres\"} 0"),
        "{m}"
    );

    pg.restart();
    wait_until(30, "every row after PostgreSQL came back", || {
        count(&pg) == 6000
    });
    wait_until(10, "/ready 200 again", || {
        http_get(http, "/ready").is_some_and(|(c, _)| c == 200)
    });
    signal(&run, "-TERM");
    assert!(wait_output(&mut run, 30).status.success());
    assert_eq!(pg.psql("SELECT count(DISTINCT seq) FROM readings"), "6000");
}

/// An MQTT → MQTT bridge between two brokers, payloads unchanged, topics
/// prefixed with the original topic ({stream}), QoS 2 on both sides.
#[test]
fn a_bridge_between_two_brokers() {
    let a = Mosquitto::start();
    let b = Mosquitto::start();
    let dir = testkit::TempDir::new().unwrap();
    let topic = unique_id("br");
    let cfg = write(
        dir.path(),
        "bridge.yaml",
        &format!(
            r#"
connections:
  a: {{ broker: "mqtt://127.0.0.1:{pa}", client_id: "{topic}-a", clean_session: false }}
  b: {{ broker: "mqtt://127.0.0.1:{pb}", client_id: "{topic}-b", protocol: 5 }}
sources:
  in: {{ type: mqtt, connection: a, topics: ["{topic}/#"], format: raw_bytes, qos: 2, batch_timeout_ms: 50 }}
sinks:
  out: {{ type: mqtt, inputs: [in], connection: b, topic: "central/{{stream}}", format: raw, qos: 2 }}
"#,
            pa = a.port,
            pb = b.port
        ),
    );
    let mut run = start(&cfg, dir.path(), &["--quiet"]);
    let (mut sub, rx) = mosquitto_sub(&[
        "-p",
        &b.port.to_string(),
        "-t",
        &format!("central/{topic}/#"),
        "-q",
        "2",
        "-v",
    ]);
    // The bridge and the subscriber are both in place once a probe went through.
    let probe = format!("{topic}/probe");
    wait_until(20, "a probe through the bridge", || {
        testkit::mosquitto_pub(&[
            "-p",
            &a.port.to_string(),
            "-t",
            &probe,
            "-m",
            "p",
            "-q",
            "1",
        ]);
        rx.recv_timeout(Duration::from_millis(300)).is_ok()
    });
    let payloads: Vec<String> = (0..500).map(|i| format!("raw {i:03} {{not json")).collect();
    publish(a.port, &format!("{topic}/x/y"), &payloads);
    let mut got = Vec::new();
    while got.len() < payloads.len() {
        let l = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("bridged messages");
        if !l.contains("/probe ") {
            got.push(l);
        }
    }
    let want: Vec<String> = payloads
        .iter()
        .map(|p| format!("central/{topic}/x/y {p}"))
        .collect();
    assert_eq!(got, want, "each message once, in order, unchanged");
    signal(&run, "-TERM");
    assert!(wait_output(&mut run, 30).status.success());
    let _ = sub.kill();
    let _ = sub.wait();
}

/// A record an MQTT sink cannot route (its topic template names a field
/// the record lacks) goes to the sink's dead-letter topic with the reason;
/// the others are routed; every source message is acknowledged.
#[test]
fn a_record_a_sink_cannot_route_is_dead_lettered() {
    let broker = Mosquitto::start();
    let dir = testkit::TempDir::new().unwrap();
    let topic = unique_id("route");
    let http = free_port();
    let cfg = write(
        dir.path(),
        "p.toml",
        &format!(
            r#"
[connections.b]
broker = "mqtt://127.0.0.1:{port}"
client_id = "{topic}"
# The 3.1.1 dead letter: a JSON envelope (MQTT 5 uses user properties).
protocol = "3.1.1"
[sources.in]
type = "mqtt"
connection = "b"
topics = ["{topic}/in"]
[sinks.out]
type = "mqtt"
inputs = ["in"]
connection = "b"
topic = "{topic}/routed/{{device_id}}"
dead_letter_topic = "{topic}/unroutable"
[http]
listen = "127.0.0.1:{http}"
"#,
            port = broker.port
        ),
    );
    let sub = Command::new("mosquitto_sub")
        .args([
            "-p",
            &broker.port.to_string(),
            "-t",
            &format!("{topic}/routed/#"),
            "-t",
            &format!("{topic}/unroutable"),
            "-q",
            "1",
            "-v",
            "-C",
            "3",
            "-W",
            "30",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut run = start(&cfg, dir.path(), &["--quiet"]);
    wait_ready(http, &mut run);
    std::thread::sleep(Duration::from_millis(300)); // mosquitto_sub's subscription
    publish(
        broker.port,
        &format!("{topic}/in"),
        &[
            r#"{"device_id":"d1","v":1}"#.into(),
            r#"{"v":2}"#.into(),
            r#"{"device_id":"d3","v":3}"#.into(),
        ],
    );
    let out = text(&sub.wait_with_output().unwrap().stdout);
    let mut routed = Vec::new();
    let mut dead = Vec::new();
    for l in out.lines() {
        let (t, payload) = l.split_once(' ').unwrap();
        if t.ends_with("/unroutable") {
            dead.push(serde_json::from_str::<serde_json::Value>(payload).unwrap());
        } else {
            routed.push(l.to_owned());
        }
    }
    routed.sort();
    assert_eq!(
        routed,
        [
            format!(r#"{topic}/routed/d1 {{"device_id":"d1","v":1}}"#),
            format!(r#"{topic}/routed/d3 {{"device_id":"d3","v":3}}"#)
        ]
    );
    assert_eq!(dead.len(), 1, "{out}");
    assert_eq!(dead[0]["original_topic"], format!("{topic}/in"));
    assert_eq!(dead[0]["payload"], r#"{"v":2}"#);
    assert!(
        dead[0]["error"]
            .as_str()
            .unwrap()
            .contains("the record has no field device_id"),
        "{}",
        dead[0]
    );
    wait_until(10, "every message acknowledged", || {
        http_get(http, "/metrics").is_some_and(|(_, m)| {
            m.contains("mqlink_source_records_acknowledged_total{component=\"in\",type=\"mqtt\"} 3")
        })
    });
    let (_, m) = http_get(http, "/metrics").unwrap();
    assert!(
        m.contains("mqlink_sink_dead_lettered_total{component=\"out\",type=\"mqtt\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("mqlink_sink_skipped_total{component=\"out\",type=\"mqtt\"} 0"),
        "{m}"
    );
    signal(&run, "-TERM");
    assert!(wait_output(&mut run, 30).status.success());
}

/// Refused credentials cannot heal: `mqlink run` stops, exits 1 and names
/// the component and the refusal, never the password.
#[test]
fn refused_credentials_end_the_run_with_exit_1() {
    let broker = Mosquitto::with(MosquittoConfig {
        users: vec![("alice".into(), "right".into())],
        ..Default::default()
    });
    let dir = testkit::TempDir::new().unwrap();
    let cfg = write(
        dir.path(),
        "p.toml",
        &format!(
            r#"
[connections.c]
broker = "mqtt://127.0.0.1:{}"
username = "alice"
password = "${{RUN_TEST_PW}}"
[sources.s]
type = "mqtt"
connection = "c"
topics = ["a/#"]
[sinks.f]
type = "file"
inputs = ["s"]
path = "f.jsonl"
"#,
            broker.port
        ),
    );
    let mut run = start(&cfg, dir.path(), &[]);
    let out = wait_output(&mut run, 30);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("mqlink: sources.s: ") && err.contains("refused the connection"),
        "{err}"
    );
    assert!(!err.contains(SECRET), "{err}");
}

/// SIGKILL of a bridge twice mid-stream: the central broker still gets
/// every message (at least once — a message is acknowledged at the source
/// only after the central broker confirmed it).
#[test]
fn sigkill_twice_while_bridging_loses_nothing() {
    let a = Mosquitto::start();
    let b = Mosquitto::start();
    let dir = testkit::TempDir::new().unwrap();
    let topic = unique_id("kb");
    let http = free_port();
    let cfg = write(
        dir.path(),
        "bridge.toml",
        &format!(
            r#"
[connections.a]
broker = "mqtt://127.0.0.1:{pa}"
client_id = "{topic}-a"
clean_session = false
[connections.b]
broker = "mqtt://127.0.0.1:{pb}"
client_id = "{topic}-b"
[sources.in]
type = "mqtt"
connection = "a"
topics = ["{topic}/in"]
format = "raw_bytes"
[sinks.out]
type = "mqtt"
inputs = ["in"]
connection = "b"
topic = "{topic}/out"
format = "raw"
[http]
listen = "127.0.0.1:{http}"
"#,
            pa = a.port,
            pb = b.port
        ),
    );
    let (mut sub, rx) = mosquitto_sub(&[
        "-p",
        &b.port.to_string(),
        "-t",
        &format!("{topic}/out"),
        "-q",
        "1",
    ]);
    let mut run = start(&cfg, dir.path(), &["--quiet"]);
    wait_ready(http, &mut run);
    // The subscriber on b is in place once a probe made it through.
    wait_until(20, "a probe through the bridge", || {
        testkit::mosquitto_pub(&[
            "-p",
            &a.port.to_string(),
            "-t",
            &format!("{topic}/in"),
            "-m",
            "probe",
            "-q",
            "1",
        ]);
        rx.recv_timeout(Duration::from_millis(300)).is_ok()
    });
    const N: usize = 20_000;
    let port = a.port;
    let t = topic.clone();
    let publisher = std::thread::spawn(move || {
        let all: Vec<String> = (0..N).map(|i| format!("m{i}")).collect();
        for chunk in all.chunks(2000) {
            publish(port, &format!("{t}/in"), chunk);
        }
    });
    let mut seen = BTreeSet::new();
    let mut take = |until: usize| {
        while seen.len() < until {
            let l = rx
                .recv_timeout(Duration::from_secs(30))
                .expect("bridged messages");
            if l != "probe" {
                seen.insert(l);
            }
        }
    };
    for kill in 1..=2 {
        take(kill * N / 4);
        signal(&run, "-KILL");
        run.wait().unwrap();
        run = start(&cfg, dir.path(), &["--quiet"]);
    }
    publisher.join().unwrap();
    take(N);
    let want: BTreeSet<String> = (0..N).map(|i| format!("m{i}")).collect();
    assert_eq!(seen, want);
    signal(&run, "-TERM");
    assert!(wait_output(&mut run, 30).status.success());
    let _ = sub.kill();
    let _ = sub.wait();
}

/// SIGTERM while PostgreSQL is down: what cannot be confirmed within
/// `run.shutdown_timeout` is not acknowledged, the run exits 1 saying so,
/// and the next run delivers it: every message is one row.
#[test]
fn a_shutdown_that_cannot_confirm_exits_1_and_the_next_run_delivers() {
    let broker = Mosquitto::start();
    let mut pg = Postgres::start();
    let dir = testkit::TempDir::new().unwrap();
    let topic = unique_id("timeout");
    let http = free_port();
    let cfg = write(
        dir.path(),
        "p.toml",
        &format!(
            r#"
[connections.b]
broker = "mqtt://127.0.0.1:{port}"
client_id = "{topic}"
clean_session = false
[sources.telemetry]
type = "mqtt"
connection = "b"
topics = ["{topic}/#"]
schema = {{ device_id = "text", seq = "bigint", timestamp = "timestamp", temperature = "double", humidity = "double" }}
[sinks.db]
type = "postgres"
inputs = ["telemetry"]
url = "{url}"
table = "readings"
create_table = true
primary_key = ["device_id", "seq"]
[http]
listen = "127.0.0.1:{http}"
[run]
shutdown_timeout = 1
"#,
            port = broker.port,
            url = pg.url()
        ),
    );
    let mut run = start(&cfg, dir.path(), &[]);
    wait_ready(http, &mut run);
    pg.kill();
    let all: Vec<String> = (0..2000).map(reading).collect();
    publish(broker.port, &format!("{topic}/a"), &all);
    wait_until(20, "the sink to hold records", || {
        http_get(http, "/metrics").is_some_and(|(_, m)| {
            m.contains("mqlink_sink_in_flight{component=\"db\",type=\"postgres\"}")
                && !m.contains("mqlink_sink_in_flight{component=\"db\",type=\"postgres\"} 0\n")
        })
    });
    signal(&run, "-TERM");
    let out = wait_output(&mut run, 30);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("records were not confirmed within run.shutdown_timeout = 1 s"),
        "{err}"
    );

    pg.restart();
    let mut again = start(&cfg, dir.path(), &["--until-idle", "1"]);
    let out = wait_output(&mut again, 60);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(pg.psql("SELECT count(*) FROM readings"), "2000");
    assert_eq!(pg.psql("SELECT count(DISTINCT seq) FROM readings"), "2000");
}

/// A broker that never answers: the source retries under the connection's
/// own policy and gives up after `max_reconnect_attempts`, exit 1.
#[test]
fn a_source_gives_up_after_max_reconnect_attempts() {
    let dir = testkit::TempDir::new().unwrap();
    let cfg = write(
        dir.path(),
        "p.toml",
        &format!(
            r#"
[connections.gone]
broker = "mqtt://127.0.0.1:{}"
reconnect_interval = 0.05
max_reconnect_attempts = 3
[sources.s]
type = "mqtt"
connection = "gone"
topics = ["a/#"]
[sinks.f]
type = "file"
inputs = ["s"]
path = "f.jsonl"
"#,
            free_port()
        ),
    );
    let mut run = start(&cfg, dir.path(), &[]);
    let out = wait_output(&mut run, 30);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(
        err.matches("Source not started yet; retrying.").count(),
        2,
        "{err}"
    );
    assert!(
        err.contains("mqlink: sources.s: cannot reach mqtt://127.0.0.1:"),
        "{err}"
    );
}

/// The far broker of a bridge is gone for longer than the sink's
/// connection will try (`max_reconnect_attempts`): the sink gives up, the
/// run fails naming it, and nothing it did not deliver was acknowledged —
/// the next run delivers all of it from the near broker's session.
#[test]
fn a_far_broker_gone_past_max_reconnect_attempts_loses_nothing() {
    let a = Mosquitto::start();
    let mut b = Mosquitto::start();
    let dir = testkit::TempDir::new().unwrap();
    let topic = unique_id("far");
    let cfg = write(
        dir.path(),
        "bridge.toml",
        &format!(
            r#"
[connections.a]
broker = "mqtt://127.0.0.1:{pa}"
client_id = "{topic}-a"
clean_session = false
[connections.b]
broker = "mqtt://127.0.0.1:{pb}"
client_id = "{topic}-b"
reconnect_interval = 0.2
max_reconnect_attempts = 2
[sources.in]
type = "mqtt"
connection = "a"
topics = ["{topic}/#"]
format = "raw_bytes"
[sinks.out]
type = "mqtt"
inputs = ["in"]
connection = "b"
topic = "far/{{stream}}"
format = "raw"
"#,
            pa = a.port,
            pb = b.port
        ),
    );
    let mut run = start(&cfg, dir.path(), &["--quiet"]);
    let (mut sub, rx) = mosquitto_sub(&["-p", &b.port.to_string(), "-t", "far/#", "-q", "1"]);
    wait_until(20, "a probe through the bridge", || {
        testkit::mosquitto_pub(&[
            "-p",
            &a.port.to_string(),
            "-t",
            &format!("{topic}/probe"),
            "-m",
            "probe",
            "-q",
            "1",
        ]);
        rx.recv_timeout(Duration::from_millis(300)).is_ok()
    });
    let _ = sub.kill();
    let _ = sub.wait();
    b.stop();
    let payloads: Vec<String> = (0..100).map(|i| format!("m{i:03}")).collect();
    publish(a.port, &format!("{topic}/x"), &payloads);
    let out = wait_output(&mut run, 60);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("sinks.out"), "{err}");

    b.restart();
    let (mut sub, rx) = mosquitto_sub(&["-p", &b.port.to_string(), "-t", "far/#", "-q", "1"]);
    std::thread::sleep(Duration::from_millis(300));
    let mut again = start(&cfg, dir.path(), &["--quiet"]);
    let mut got = BTreeSet::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while got.len() < payloads.len() && std::time::Instant::now() < deadline {
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(500)) {
            if l != "probe" {
                got.insert(l);
            }
        }
    }
    assert_eq!(
        got,
        payloads.iter().cloned().collect::<BTreeSet<_>>(),
        "every message sent while the far broker was gone arrives after it is back"
    );
    signal(&again, "-TERM");
    assert!(wait_output(&mut again, 30).status.success());
    let _ = sub.kill();
    let _ = sub.wait();
}

/// SIGTERM while the quickstart runs: every record the embedded broker
/// accepted reaches the file before the run ends (its PUBACK was a promise).
#[test]
fn sigterm_through_the_embedded_broker_delivers_every_accepted_record() {
    let dir = testkit::TempDir::new().unwrap();
    let http = free_port();
    let example = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/quickstart.toml"),
    )
    .unwrap();
    let cfg = example
        .replace("count = 100000", "count = 0")
        .replace("rate = 20000", "rate = 5000")
        .replace("127.0.0.1:9464", &format!("127.0.0.1:{http}"));
    let file = write(dir.path(), "quickstart.toml", &cfg);
    let mut run = start(&file, dir.path(), &[]);
    let out_file = dir.path().join("out/telemetry.jsonl");
    wait_until(30, "records in the file", || lines(&out_file).len() > 2000);
    signal(&run, "-TERM");
    let out = wait_output(&mut run, 60);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    // The generator's record count, from the summary.
    let generated: usize = err
        .lines()
        .find(|l| l.contains("sources.devices"))
        .and_then(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let i = words.iter().position(|w| *w == "records")?;
            words[i - 1].parse().ok()
        })
        .unwrap_or_else(|| panic!("no generator line in {err}"));
    let seqs: BTreeSet<i64> = lines(&out_file)
        .iter()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"]
                .as_i64()
                .unwrap()
        })
        .collect();
    assert!(generated > 2000, "{err}");
    assert_eq!(
        seqs.len(),
        generated,
        "every generated record is in the file\n{err}"
    );
    assert_eq!(seqs.iter().next_back(), Some(&(generated as i64 - 1)));
}

/// A PostgreSQL error retrying cannot fix (no such database) is fatal at
/// once, with PostgreSQL's own message; a MQTT password is treated alike.
#[test]
fn a_missing_database_is_fatal_with_postgresql_s_message() {
    let broker = Mosquitto::start();
    let pg = Postgres::start();
    let dir = testkit::TempDir::new().unwrap();
    let url = pg.url();
    let (base, _db) = url.rsplit_once('/').unwrap();
    let cfg = write(
        dir.path(),
        "p.toml",
        &format!(
            r#"
[connections.b]
broker = "mqtt://127.0.0.1:{port}"
[sources.s]
type = "mqtt"
connection = "b"
topics = ["{topic}/#"]
schema = {{ id = "bigint" }}
[sinks.db]
type = "postgres"
inputs = ["s"]
url = "{base}/no_such_db"
table = "t"
create_table = true
"#,
            port = broker.port,
            topic = unique_id("pgfatal")
        ),
    );
    let t = std::time::Instant::now();
    let mut run = start(&cfg, dir.path(), &["--quiet"]);
    let out = wait_output(&mut run, 30);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("sinks.db"), "{err}");
    assert!(err.contains("\"no_such_db\" does not exist"), "{err}");
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "not retried for long"
    );
}

/// A stream through a bridge, into PostgreSQL and into a file while a
/// seeded schedule cuts connections, freezes brokers (SIGSTOP), kills and
/// restarts PostgreSQL, SIGKILLs `mqlink run`, adds a `NOT NULL` column
/// (fixed a moment later), rotates the file and fills its disk. At the end
/// every published message is at the far broker and in the files (JSON
/// lines, no torn line) at least once and in PostgreSQL exactly once. The
/// seed is printed; `MQLINK_FAULT_SEED=N` replays a schedule.
#[test]
fn randomized_faults_lose_nothing() {
    let seed: u64 = std::env::var("MQLINK_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    eprintln!("randomized_faults_lose_nothing: MQLINK_FAULT_SEED={seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut near = Mosquitto::start();
    let mut far = Mosquitto::start();
    let mut pg = Postgres::start();
    let near_cut = testkit::CutProxy::new(near.port);
    let far_cut = testkit::CutProxy::new(far.port);
    let dir = testkit::TempDir::new().unwrap();
    // The file sink writes on a small disk that a fault fills.
    let disk = Tmpfs::mount(&dir.path().join("disk"), "4m");
    let files = dir.path().join("disk");
    let out = files.join("out.jsonl");
    let topic = unique_id("faults");
    let http = free_port();
    let cfg = write(
        dir.path(),
        "p.toml",
        &format!(
            r#"
[connections.near]
broker = "{near_url}"
client_id = "{topic}-near"
clean_session = false
keep_alive = 2
reconnect_interval = 0.1
[connections.far]
broker = "{far_url}"
client_id = "{topic}-far"
keep_alive = 2
reconnect_interval = 0.1
[sources.telemetry]
type = "mqtt"
connection = "near"
topics = ["{topic}/#"]
schema = {{ device_id = "text not null", seq = "bigint not null", timestamp = "timestamp", temperature = "double", humidity = "double" }}
[sinks.far]
type = "mqtt"
inputs = ["telemetry"]
connection = "far"
topic = "far/{topic}/{{device_id}}"
[sinks.db]
type = "postgres"
inputs = ["telemetry"]
url = "{url}"
table = "readings"
create_table = true
primary_key = ["device_id", "seq"]
[sinks.file]
type = "file"
inputs = ["telemetry"]
path = "{out}"
[http]
listen = "127.0.0.1:{http}"
"#,
            near_url = near_cut.url(),
            far_url = far_cut.url(),
            url = pg.url(),
            out = out.display()
        ),
    );
    let (mut sub, rx) = mosquitto_sub(&[
        "-p",
        &far.port.to_string(),
        "-t",
        &format!("far/{topic}/#"),
        "-q",
        "1",
    ]);
    let mut run = start(&cfg, dir.path(), &["--quiet"]);
    wait_ready(http, &mut run);

    const N: usize = 6000;
    let near_port = near.port;
    let pub_topic = format!("{topic}/a");
    let publisher = std::thread::spawn(move || {
        let all: Vec<String> = (0..N).map(reading).collect();
        for chunk in all.chunks(300) {
            publish(near_port, &pub_topic, chunk);
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    let mut far_seen = BTreeSet::new();
    let collect = |far_seen: &mut BTreeSet<i64>| {
        while let Ok(l) = rx.try_recv() {
            let v: serde_json::Value = serde_json::from_str(&l).unwrap();
            far_seen.insert(v["seq"].as_i64().unwrap());
        }
    };
    let faults_until = std::time::Instant::now() + Duration::from_secs(25);
    let mut log = Vec::new();
    while std::time::Instant::now() < faults_until {
        std::thread::sleep(Duration::from_millis(rng.u64(800..2000)));
        collect(&mut far_seen);
        let fault = rng.u8(..9);
        log.push(fault);
        let n = log.len();
        match fault {
            0 => {
                near_cut.cut();
            }
            1 => {
                far_cut.cut();
            }
            2 => {
                far.pause();
                std::thread::sleep(Duration::from_millis(rng.u64(300..1500)));
                far.resume();
            }
            3 => {
                near.pause();
                std::thread::sleep(Duration::from_millis(rng.u64(300..1500)));
                near.resume();
            }
            4 => {
                pg.kill();
                std::thread::sleep(Duration::from_millis(rng.u64(200..1500)));
                pg.restart();
            }
            5 => {
                let _ = run.kill();
                let _ = run.wait();
                run = start(&cfg, dir.path(), &["--quiet"]);
            }
            6 => {
                // Every row refused (23502) until the column has a default.
                pg.psql(&format!("ALTER TABLE readings ADD COLUMN x{n} int NOT NULL DEFAULT 0; ALTER TABLE readings ALTER COLUMN x{n} DROP DEFAULT"));
                std::thread::sleep(Duration::from_millis(rng.u64(300..1500)));
                pg.psql(&format!(
                    "ALTER TABLE readings ALTER COLUMN x{n} SET DEFAULT 0"
                ));
            }
            7 => {
                if out.exists() {
                    std::fs::rename(&out, files.join(format!("out.jsonl.{n}"))).unwrap();
                }
            }
            _ => {
                if disk.is_some() {
                    let filler = files.join("filler");
                    fill(&filler);
                    std::thread::sleep(Duration::from_millis(rng.u64(300..1500)));
                    std::fs::remove_file(&filler).unwrap();
                }
            }
        }
    }
    publisher.join().unwrap();
    eprintln!("randomized_faults_lose_nothing: faults {log:?}");
    // Every line of every file (rotated ones too) is JSON: no torn line.
    let in_files = || {
        let paths: Vec<_> = std::fs::read_dir(&files)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("out.jsonl")
            })
            .collect();
        let paths: Vec<&Path> = paths.iter().map(|p| p.as_path()).collect();
        seqs_in(&paths).into_iter().collect::<BTreeSet<i64>>()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        collect(&mut far_seen);
        let rows: usize = pg
            .psql("SELECT count(*) FROM readings")
            .parse()
            .unwrap_or(0);
        let done = rows == N && far_seen.len() == N && in_files().len() == N;
        if done || std::time::Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let missing: Vec<i64> = (0..N as i64)
        .filter(|s| !far_seen.contains(s))
        .take(10)
        .collect();
    assert!(
        missing.is_empty(),
        "seed {seed}, faults {log:?}: missing at the far broker (first 10): {missing:?}"
    );
    assert_eq!(
        pg.psql("SELECT count(*) FROM readings"),
        N.to_string(),
        "seed {seed}, faults {log:?}"
    );
    assert_eq!(
        pg.psql("SELECT count(DISTINCT seq) FROM readings"),
        N.to_string(),
        "seed {seed}"
    );
    assert_eq!(
        in_files().len(),
        N,
        "seed {seed}, faults {log:?}: in the files"
    );
    signal(&run, "-TERM");
    let out = wait_output(&mut run, 30);
    assert!(out.status.success(), "seed {seed}: {}", text(&out.stderr));
    let _ = sub.kill();
    let _ = sub.wait();
}

/// Records a sink can never write, without a dead-letter topic: skipped,
/// counted, logged with the reason, and said so at the end — the run does
/// not wait for them forever, nor claim they will be delivered again.
#[test]
fn skipped_records_are_counted_and_the_summary_says_so() {
    let broker = Mosquitto::start();
    let dir = testkit::TempDir::new().unwrap();
    let topic = unique_id("skip");
    let http = free_port();
    let cfg = write(
        dir.path(),
        "p.toml",
        &format!(
            r#"
[connections.b]
broker = "mqtt://127.0.0.1:{port}"
client_id = "{topic}"
[sources.in]
type = "mqtt"
connection = "b"
topics = ["{topic}/in"]
[sinks.out]
type = "mqtt"
inputs = ["in"]
connection = "b"
topic = "{topic}/routed/{{device_id}}"
[http]
listen = "127.0.0.1:{http}"
"#,
            port = broker.port
        ),
    );
    let mut run = start(&cfg, dir.path(), &["--until-idle", "1"]);
    wait_ready(http, &mut run);
    publish(
        broker.port,
        &format!("{topic}/in"),
        &[
            r#"{"device_id":"d1"}"#.into(),
            r#"{"v":2}"#.into(),
            r#"{"v":3}"#.into(),
            r#"{"device_id":"d4"}"#.into(),
            r#"{"v":5}"#.into(),
        ],
    );
    wait_until(10, "every message acknowledged", || {
        http_get(http, "/metrics").is_some_and(|(_, m)| {
            m.contains("mqlink_source_records_acknowledged_total{component=\"in\",type=\"mqtt\"} 5")
                && m.contains("mqlink_sink_skipped_total{component=\"out\",type=\"mqtt\"} 3")
                && m.contains("mqlink_sink_in_flight{component=\"out\",type=\"mqtt\"} 0")
        })
    });
    let (_, status) = http_get(http, "/status").unwrap();
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["components"][0]["skipped"], 3, "{status}");
    let out = wait_output(&mut run, 30);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("the record has no field device_id"), "{err}");
    assert!(err.contains("3 records were skipped"), "{err}");
    assert!(!err.contains("will be delivered again"), "{err}");
}

/// A sink that makes no progress while records wait (its broker frozen
/// with SIGSTOP) is logged as stalled and named by /ready until it moves.
#[test]
fn a_stalled_sink_is_named_by_ready_and_the_log() {
    let near = Mosquitto::start();
    let mut far = Mosquitto::start();
    let dir = testkit::TempDir::new().unwrap();
    let topic = unique_id("stall");
    let http = free_port();
    let cfg = write(
        dir.path(),
        "p.toml",
        &format!(
            r#"
[connections.near]
broker = "mqtt://127.0.0.1:{pn}"
client_id = "{topic}-n"
clean_session = false
[connections.far]
broker = "mqtt://127.0.0.1:{pf}"
client_id = "{topic}-f"
keep_alive = 60
[sources.in]
type = "mqtt"
connection = "near"
topics = ["{topic}/in"]
format = "raw_bytes"
[sinks.out]
type = "mqtt"
inputs = ["in"]
connection = "far"
topic = "out/{{stream}}"
format = "raw"
[http]
listen = "127.0.0.1:{http}"
[run]
stall_timeout = 1
"#,
            pn = near.port,
            pf = far.port
        ),
    );
    let mut run = start(&cfg, dir.path(), &[]);
    wait_ready(http, &mut run);
    far.pause();
    publish(near.port, &format!("{topic}/in"), &["a".into(), "b".into()]);
    wait_until(10, "/ready naming the stalled sink", || {
        http_get(http, "/ready").is_some_and(|(c, body)| {
            c == 503 && body.contains("sinks.out: stalled: ") && body.contains("records waiting")
        })
    });
    let (_, m) = http_get(http, "/metrics").unwrap();
    assert!(
        m.contains("mqlink_component_stalled{component=\"out\",type=\"mqtt\"} 1"),
        "{m}"
    );
    far.resume();
    wait_until(10, "ready again", || {
        http_get(http, "/ready").is_some_and(|(c, _)| c == 200)
    });
    signal(&run, "-TERM");
    let out = wait_output(&mut run, 30);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("Stalled") && err.contains("sinks.out"),
        "{err}"
    );
    assert!(err.contains("Moving again"), "{err}");
}

/// A row PostgreSQL refuses (a CHECK constraint) is a record fault: the
/// batch is written row by row, the refused row skipped with PostgreSQL's
/// reason, every other row committed, every message acknowledged.
#[test]
fn a_row_postgresql_refuses_is_skipped_alone() {
    let broker = Mosquitto::start();
    let pg = Postgres::start();
    pg.psql("CREATE TABLE checked (device_id text, seq bigint PRIMARY KEY, timestamp timestamptz, temperature double precision CHECK (temperature < 100), humidity double precision)");
    let dir = testkit::TempDir::new().unwrap();
    let topic = unique_id("pgrow");
    let http = free_port();
    let cfg = write(
        dir.path(),
        "p.toml",
        &format!(
            r#"
[connections.b]
broker = "mqtt://127.0.0.1:{port}"
client_id = "{topic}"
[sources.telemetry]
type = "mqtt"
connection = "b"
topics = ["{topic}/#"]
batch_timeout_ms = 300
schema = {{ device_id = "text", seq = "bigint", timestamp = "timestamp", temperature = "double", humidity = "double" }}
[sinks.db]
type = "postgres"
inputs = ["telemetry"]
url = "{url}"
table = "checked"
[http]
listen = "127.0.0.1:{http}"
"#,
            port = broker.port,
            url = pg.url()
        ),
    );
    let mut run = start(&cfg, dir.path(), &["--until-idle", "1"]);
    wait_ready(http, &mut run);
    let mut rows: Vec<String> = (0..50).map(reading).collect();
    rows[17] = rows[17].replace("\"temperature\":21.5", "\"temperature\":1000");
    publish(broker.port, &format!("{topic}/a"), &rows);
    let out = wait_output(&mut run, 60);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(pg.psql("SELECT count(*) FROM checked"), "49", "{err}");
    assert_eq!(pg.psql("SELECT count(*) FROM checked WHERE seq = 17"), "0");
    assert!(
        err.contains("checked_temperature_check"),
        "PostgreSQL's reason: {err}"
    );
    assert!(err.contains("1 records were skipped"), "{err}");
}

/// The embedded broker's own state in /ready, /status and /metrics: a
/// subscriber of it that takes nothing from its full queue (the pipeline's
/// source, held back by a sink whose broker is frozen) is named after 10 s;
/// once the far broker is back everything is delivered.
#[test]
fn ready_names_an_embedded_broker_subscriber_with_a_full_queue() {
    let mut far = Mosquitto::start();
    let dir = testkit::TempDir::new().unwrap();
    let topic = unique_id("fullq");
    let http = free_port();
    let cfg = write(
        dir.path(),
        "p.toml",
        &format!(
            r#"
[connections.local]
broker = "embedded"
client_id = "{topic}-l"
[connections.far]
broker = "mqtt://127.0.0.1:{pf}"
client_id = "{topic}-f"
keep_alive = 60
[sources.gen]
type = "generator"
count = 20000
rate = 0
[sinks.to_local]
type = "mqtt"
inputs = ["gen"]
connection = "local"
topic = "{topic}/{{device_id}}"
[sources.in]
type = "mqtt"
connection = "local"
topics = ["{topic}/#"]
format = "raw_bytes"
[sinks.out]
type = "mqtt"
inputs = ["in"]
connection = "far"
topic = "{topic}/out"
format = "raw"
[http]
listen = "127.0.0.1:{http}"
"#,
            pf = far.port
        ),
    );
    far.pause();
    let mut run = start(&cfg, dir.path(), &["--until-idle", "1"]);
    wait_until(40, "/ready naming the embedded broker's full queue", || {
        http_get(http, "/ready").is_some_and(|(c, body)| {
            c == 503
                && body.contains("embedded broker: subscriber ")
                && body.contains("has taken nothing from its full queue (10000 messages)")
        })
    });
    let (_, status) = http_get(http, "/status").unwrap();
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    let broker = &status["embedded_broker"];
    assert_eq!(broker["full_queues"][0]["queued"], 10000, "{status}");
    assert!(broker["undelivered"].as_u64().unwrap() >= 10000, "{status}");
    assert_eq!(broker["subscriptions"], 1, "{status}");
    let (_, m) = http_get(http, "/metrics").unwrap();
    assert!(m.contains("mqlink_broker_full_queues 1\n"), "{m}");
    far.resume();
    let out = wait_output(&mut run, 60);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("40000 records acknowledged"), "{err}");
}

/// An outside client of a pipeline's embedded broker that subscribes to
/// `#` and never reads its socket does not hold the pipeline up: it is
/// disconnected when its queue is full, and every record arrives.
#[test]
fn a_deaf_outside_subscriber_does_not_stall_the_pipeline() {
    use std::io::Write as _;
    let dir = testkit::TempDir::new().unwrap();
    let topic = unique_id("deaf");
    let (pb, out) = (free_port(), dir.path().join("out.jsonl"));
    let cfg = write(
        dir.path(),
        "p.toml",
        &format!(
            r#"
[embedded_broker]
listen = "127.0.0.1:{pb}"
[connections.local]
broker = "embedded"
client_id = "{topic}"
[sources.gen]
type = "generator"
count = 60000
rate = 15000
[sinks.to_local]
type = "mqtt"
inputs = ["gen"]
connection = "local"
topic = "{topic}/{{device_id}}"
[sources.in]
type = "mqtt"
connection = "local"
topics = ["{topic}/#"]
[sinks.file]
type = "file"
inputs = ["in"]
path = "{out}"
"#,
            out = out.display()
        ),
    );
    let mut run = start(&cfg, dir.path(), &["--until-idle", "2"]);
    // CONNECT (3.1.1, clean, id "deaf") and SUBSCRIBE # at QoS 1; then no reads.
    let mut deaf = loop {
        if let Ok(s) = std::net::TcpStream::connect(("127.0.0.1", pb)) {
            break s;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    deaf.write_all(b"\x10\x10\x00\x04MQTT\x04\x02\x00\x3c\x00\x04deaf")
        .unwrap();
    deaf.write_all(b"\x82\x06\x00\x01\x00\x01#\x01").unwrap();
    let out_put = wait_output(&mut run, 90);
    let err = text(&out_put.stderr);
    assert!(out_put.status.success(), "{err}");
    assert!(err.contains("120000 records acknowledged"), "{err}");
    let lines = std::fs::read_to_string(&out).unwrap().lines().count();
    assert_eq!(lines, 60000);
    drop(deaf);
}

/// A pipeline from `{topic}/in` into a file sink at `out`: its file.
fn file_pipeline(dir: &Path, port: u16, topic: &str, http: u16, out: &Path) -> std::path::PathBuf {
    write(
        dir,
        "p.toml",
        &format!(
            r#"
[connections.b]
broker = "mqtt://127.0.0.1:{port}"
client_id = "{topic}"
clean_session = false
[sources.in]
type = "mqtt"
connection = "b"
topics = ["{topic}/in"]
[sinks.file]
type = "file"
inputs = ["in"]
path = "{out}"
[http]
listen = "127.0.0.1:{http}"
"#,
            out = out.display()
        ),
    )
}

/// SIGKILL of `mqlink run` twice while a stream goes into a file, as
/// configured by default (MQTT 5; `auto` turns the local buffer on for a
/// file sink): what the buffer reads again after each restart is already in
/// the file and not written twice, what the broker sends again is not
/// appended twice, a write the kill cut is cut back — every record is one
/// valid line.
#[test]
fn sigkill_twice_into_a_file_gives_each_record_once() {
    let broker = Mosquitto::start();
    let dir = testkit::TempDir::new().unwrap();
    let topic = unique_id("fileonce");
    let http = free_port();
    let out = dir.path().join("out.jsonl");
    let cfg = file_pipeline(dir.path(), broker.port, &topic, http, &out);
    let conf = std::fs::read_to_string(&cfg).unwrap().replace(
        "clean_session = false",
        "clean_session = false\nreconnect_interval = 0.2",
    );
    std::fs::write(&cfg, conf).unwrap();
    let mut run = start(&cfg, dir.path(), &["--quiet"]);
    wait_ready(http, &mut run);
    const N: usize = 40_000;
    let (port, t) = (broker.port, topic.clone());
    let publisher = std::thread::spawn(move || {
        for from in (0..N).step_by(4_000) {
            send(port, &t, from, from + 4_000);
        }
    });
    let written = || lines(&out).len();
    for kill in 1..=2 {
        wait_until(60, "lines to arrive", || written() >= kill * N / 4);
        signal(&run, "-KILL");
        run.wait().unwrap();
        run = start(&cfg, dir.path(), &["--quiet"]);
    }
    publisher.join().unwrap();
    wait_until(90, "every line", || written() >= N);
    wait_until(30, "the buffer drained", || {
        metric(http, "mqlink_source_buffer_entries") == 0
    });
    signal(&run, "-TERM");
    let done = wait_output(&mut run, 30);
    assert!(done.status.success(), "{}", text(&done.stderr));
    let seqs = seqs_in(&[&out]);
    let twice: Vec<_> = seqs
        .windows(2)
        .filter(|w| w[0] == w[1])
        .map(|w| w[0])
        .collect();
    let distinct: BTreeSet<_> = seqs.iter().collect();
    assert_eq!(
        (distinct.len(), twice.len()),
        (N, 0),
        "records in the file (distinct, twice); twice: {:?}…; positions kept: {:?}; buffer: {:?}",
        &twice[..twice.len().min(10)],
        std::fs::read_to_string(dir.path().join(".out.jsonl.written")).map(|t| t.lines().count()),
        std::fs::read_dir(dir.path().join("mqlink-state/buffer")).map(|d| d.count()),
    );
}

/// Publishes readings `from..to` to `{topic}/in`.
fn send(port: u16, topic: &str, from: usize, to: usize) {
    let rows: Vec<String> = (from..to).map(reading).collect();
    publish(port, &format!("{topic}/in"), &rows);
}

/// The `seq` of every line of these files; panics on a line that is not
/// a JSON object (a torn line).
fn seqs_in(files: &[&Path]) -> Vec<i64> {
    let mut seqs: Vec<i64> = files
        .iter()
        .flat_map(|f| lines(f))
        .map(|l| {
            let v: serde_json::Value =
                serde_json::from_str(&l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}"));
            v["seq"].as_i64().unwrap()
        })
        .collect();
    seqs.sort();
    seqs
}

/// A `NOT NULL` column added to the table mid-run (SQLSTATE 23502 for
/// every row) is the destination's fault, not 2,000 bad records: nothing
/// is skipped or acknowledged that PostgreSQL did not commit, the sink
/// retries (counted in `mqlink_sink_errors_total`, named stalled by
/// /ready) and, once the column has a default, writes everything. A row
/// that violates a CHECK among rows that do not — alone in its batch, then
/// with others — is still skipped alone.
#[test]
fn a_not_null_column_added_mid_run_stalls_the_sink_and_loses_nothing() {
    let broker = Mosquitto::start();
    let pg = Postgres::start();
    pg.psql("CREATE TABLE t (device_id text, seq bigint, timestamp timestamptz, temperature double precision CHECK (temperature < 100), humidity double precision, PRIMARY KEY (device_id, seq))");
    let dir = testkit::TempDir::new().unwrap();
    let topic = unique_id("notnull");
    let http = free_port();
    let cfg = write(
        dir.path(),
        "p.toml",
        &format!(
            r#"
[connections.b]
broker = "mqtt://127.0.0.1:{port}"
client_id = "{topic}"
clean_session = false
[sources.telemetry]
type = "mqtt"
connection = "b"
topics = ["{topic}/#"]
schema = {{ device_id = "text", seq = "bigint", timestamp = "timestamp", temperature = "double", humidity = "double" }}
[sinks.db]
type = "postgres"
inputs = ["telemetry"]
url = "{url}"
table = "t"
batch_size = 200
[http]
listen = "127.0.0.1:{http}"
[run]
stall_timeout = 1
"#,
            port = broker.port,
            url = pg.url()
        ),
    );
    let mut run = start(&cfg, dir.path(), &[]);
    wait_ready(http, &mut run);
    let count = || pg.count("t");
    let bad = |i: usize| reading(i).replace("\"temperature\":21.5", "\"temperature\":1000");
    // A bad row alone, then good ones; then a bad row among good ones.
    publish(broker.port, &format!("{topic}/a"), &[bad(0)]);
    let mut first: Vec<String> = (1..1000).map(reading).collect();
    first[500] = bad(501);
    publish(broker.port, &format!("{topic}/a"), &first);
    let acked = "mqlink_source_records_acknowledged_total";
    wait_until(60, "the first rows", || metric(http, acked) == 1000);
    assert_eq!(count(), 998);
    assert_eq!(metric(http, "mqlink_sink_skipped_total"), 2);

    pg.psql("ALTER TABLE t ADD COLUMN extra int NOT NULL DEFAULT 0; ALTER TABLE t ALTER COLUMN extra DROP DEFAULT");
    let second: Vec<String> = (1000..3000).map(reading).collect();
    publish(broker.port, &format!("{topic}/a"), &second);
    wait_until(60, "/ready naming the stalled sink", || {
        http_get(http, "/ready").is_some_and(|(c, body)| {
            c == 503 && body.contains("sinks.db: stalled") && body.contains("23502")
        })
    });
    assert!(metric(http, "mqlink_sink_errors_total") >= 1);
    assert_eq!(metric(http, "mqlink_sink_skipped_total"), 2);
    assert_eq!(
        metric(http, acked),
        1000,
        "acknowledged only what was committed"
    );
    assert_eq!(count(), 998);
    let (_, status) = http_get(http, "/status").unwrap();
    assert!(
        status.contains("23502") && status.contains("stalled"),
        "{status}"
    );

    // The operator fixes the table: the retrying sink writes everything.
    pg.psql("ALTER TABLE t ALTER COLUMN extra SET DEFAULT 0");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while count() != 2998 {
        if std::time::Instant::now() > deadline {
            let status = http_get(http, "/status");
            let _ = run.kill();
            let out = wait_output(&mut run, 10);
            panic!("rows: {}; {status:?}\n{}", count(), text(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_until(30, "every message acknowledged", || {
        metric(http, acked) == 3000
    });
    signal(&run, "-TERM");
    let out = wait_output(&mut run, 30);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(
        pg.psql("SELECT count(DISTINCT seq) FROM t WHERE seq >= 1000"),
        "2000"
    );
    assert_eq!(pg.psql("SELECT count(*) FROM t WHERE seq IN (0, 501)"), "0");
    assert!(err.contains("Every record refused the same way"), "{err}");
    assert!(err.contains("2 records were skipped"), "{err}");
}

/// A broker that refuses every publish of the sink (an ACL denying its
/// topic: PUBACK 0x87 on MQTT 5) stalls the sink: nothing is skipped or
/// acknowledged, the refusals are counted as errors and /ready says why.
#[test]
fn a_broker_refusing_every_publish_stalls_the_sink() {
    let topic = unique_id("acl");
    let acl_dir = testkit::TempDir::new().unwrap();
    let acl = write(
        acl_dir.path(),
        "acl",
        &format!("topic readwrite {topic}/in\ntopic read {topic}/out\n"),
    );
    let broker = Mosquitto::with(MosquittoConfig {
        // Mosquitto's default queue limit: with testkit's "no limit" (0),
        // Mosquitto 2.0 disconnects a client after each refused publish.
        extra: vec![
            format!("acl_file {}", acl.display()),
            "max_queued_messages 1000".into(),
        ],
        ..Default::default()
    });
    let dir = testkit::TempDir::new().unwrap();
    let http = free_port();
    let cfg = write(
        dir.path(),
        "p.toml",
        &format!(
            r#"
[connections.b]
broker = "mqtt://127.0.0.1:{port}"
client_id = "{topic}"
protocol = "5"
[sources.in]
type = "mqtt"
connection = "b"
topics = ["{topic}/in"]
[sinks.out]
type = "mqtt"
inputs = ["in"]
connection = "b"
topic = "{topic}/out"
[http]
listen = "127.0.0.1:{http}"
[run]
stall_timeout = 1
shutdown_timeout = 1
"#,
            port = broker.port
        ),
    );
    let mut run = start(&cfg, dir.path(), &[]);
    wait_ready(http, &mut run);
    let rows: Vec<String> = (0..50).map(reading).collect();
    publish(broker.port, &format!("{topic}/in"), &rows);
    wait_until(30, "/ready naming the stalled sink", || {
        http_get(http, "/ready").is_some_and(|(c, body)| {
            c == 503 && body.contains("sinks.out: stalled") && body.contains("0x87")
        })
    });
    assert!(metric(http, "mqlink_sink_errors_total") >= 1);
    assert_eq!(metric(http, "mqlink_sink_skipped_total"), 0);
    assert_eq!(metric(http, "mqlink_source_records_acknowledged_total"), 0);
    signal(&run, "-TERM");
    let out = wait_output(&mut run, 30);
    let err = text(&out.stderr);
    assert!(!err.contains("Record skipped"), "{err}");
    assert!(err.contains("Every record refused the same way"), "{err}");
}

/// A file sink whose file is renamed away (rotated) goes on in a new file
/// at the path; whose directory is deleted, waits (named by /ready) until
/// the directory is back: every record written after either is in a file
/// that exists, once.
#[test]
fn a_rotated_file_and_a_deleted_directory_lose_nothing() {
    let broker = Mosquitto::start();
    let dir = testkit::TempDir::new().unwrap();
    let topic = unique_id("rotate");
    let http = free_port();
    let logs = dir.path().join("logs");
    let out = logs.join("out.jsonl");
    let rotated = dir.path().join("out.jsonl.1");
    let cfg = file_pipeline(dir.path(), broker.port, &topic, http, &out);
    let mut run = start(&cfg, dir.path(), &[]);
    wait_ready(http, &mut run);
    let send_seqs = |from, to| send(broker.port, &topic, from, to);
    let seq = |from: usize, to: usize| (from as i64..to as i64).collect::<Vec<_>>();
    send_seqs(0, 100);
    wait_until(30, "the first lines", || lines(&out).len() == 100);
    std::fs::rename(&out, &rotated).unwrap();
    send_seqs(100, 200);
    wait_until(30, "lines after the rename", || {
        lines(&rotated).len() + lines(&out).len() == 200
    });
    send_seqs(200, 300);
    wait_until(30, "lines in a new file", || {
        lines(&rotated).len() + lines(&out).len() == 300
    });
    assert_eq!(seqs_in(&[&rotated, &out]), seq(0, 300));
    assert!(lines(&out).len() >= 100, "a new file at the path");

    std::fs::remove_dir_all(&logs).unwrap();
    send_seqs(300, 400);
    wait_until(30, "/ready naming the missing directory", || {
        http_get(http, "/ready").is_some_and(|(c, body)| {
            c == 503 && body.contains("sinks.file: writes failing") && body.contains("is gone")
        })
    });
    std::fs::create_dir(&logs).unwrap();
    wait_until(60, "the lines in the new directory", || {
        lines(&out).len() == 100
    });
    signal(&run, "-TERM");
    let o = wait_output(&mut run, 30);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(seqs_in(&[&out]), seq(300, 400));
}

/// A tmpfs, unmounted when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` at `dir`; `None` (with the reason printed)
    /// where mounting is not permitted.
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .unwrap();
        if !out.status.success() {
            eprintln!("SKIPPED: cannot mount a tmpfs: {}", text(&out.stderr));
            return None;
        }
        Some(Tmpfs(dir.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the file system of `path` with `path` until a write fails.
fn fill(path: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let block = vec![b'x'; 4096];
    while f.write_all(&block).is_ok() {}
    while f.write_all(b"x").is_ok() {}
}

/// A full disk mid-run: the file sink says so (at ERROR, in /ready),
/// confirms nothing, and after a SIGKILL and a restart with room the file
/// is JSON lines with each record once (the partial job cut back).
#[test]
fn a_full_disk_leaves_a_valid_file_with_each_record_once() {
    let broker = Mosquitto::start();
    let dir = testkit::TempDir::new().unwrap();
    let Some(disk) = Tmpfs::mount(&dir.path().join("disk"), "256k") else {
        return;
    };
    let topic = unique_id("full");
    let http = free_port();
    let out = disk.0.join("out.jsonl");
    let filler = disk.0.join("filler");
    let cfg = file_pipeline(dir.path(), broker.port, &topic, http, &out);
    let mut run = start(&cfg, dir.path(), &[]);
    wait_ready(http, &mut run);
    let send_seqs = |from, to| send(broker.port, &topic, from, to);
    send_seqs(0, 200);
    wait_until(30, "the first lines", || lines(&out).len() == 200);
    fill(&filler);
    send_seqs(200, 700);
    wait_until(30, "/ready saying the disk is full", || {
        http_get(http, "/ready").is_some_and(|(c, body)| {
            c == 503
                && body.contains("sinks.file: writes failing")
                && body.contains("No space left")
        })
    });
    // Acknowledged: only what is in the file (a record or two may have
    // fitted in the file's last page).
    let acked = metric(http, "mqlink_source_records_acknowledged_total") as usize;
    let written = lines(&out).len();
    assert!(
        acked >= 200 && acked <= written && written < 700,
        "{acked} {written}"
    );
    signal(&run, "-KILL");
    let o = wait_output(&mut run, 30);
    let err = text(&o.stderr);
    assert!(err.contains("ERROR") && err.contains("Disk full"), "{err}");
    assert_eq!(
        err.matches("Disk full").count(),
        1,
        "once per episode: {err}"
    );

    std::fs::remove_file(&filler).unwrap();
    let mut run = start(&cfg, dir.path(), &[]);
    wait_ready(http, &mut run);
    wait_until(60, "every line", || lines(&out).len() >= 700);
    signal(&run, "-TERM");
    let o = wait_output(&mut run, 30);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(seqs_in(&[&out]), (0..700).collect::<Vec<i64>>());
}

/// A partial last line (a write cut short, never confirmed) is cut off
/// when the file sink opens the file: the next record starts a line.
#[test]
fn a_partial_last_line_is_cut_off_at_open() {
    let broker = Mosquitto::start();
    let dir = testkit::TempDir::new().unwrap();
    let topic = unique_id("partial");
    let http = free_port();
    let out = write(dir.path(), "out.jsonl", "{\"seq\":-1}\n{\"seq\":-2,\"dev");
    let cfg = file_pipeline(dir.path(), broker.port, &topic, http, &out);
    let mut run = start(&cfg, dir.path(), &[]);
    wait_ready(http, &mut run);
    assert_eq!(
        std::fs::metadata(&out).unwrap().len(),
        11,
        "the line cut off"
    );
    send(broker.port, &topic, 0, 10);
    wait_until(30, "the lines", || lines(&out).len() == 11);
    signal(&run, "-TERM");
    let o = wait_output(&mut run, 30);
    let err = text(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("partial last line"), "{err}");
    let mut expected = vec![-1];
    expected.extend(0..10);
    assert_eq!(seqs_in(&[&out]), expected);
}

/// A pipeline reading 20,000 topics (as a plant's tag list gives them).
fn many_topics(broker: &str, http: u16) -> String {
    let topics: Vec<String> = (0..20_000)
        .map(|i| format!("\"plant/line{}/tag{i}\"", i % 40))
        .collect();
    format!(
        r#"
[connections.b]
broker = "{broker}"
connect_timeout = 60
[sources.s]
type = "mqtt"
connection = "b"
topics = [{}]
format = "raw_bytes"
[sinks.f]
type = "file"
inputs = ["s"]
path = "out.jsonl"
[http]
listen = "127.0.0.1:{http}"
"#,
        topics.join(", ")
    )
}

/// 20,000 topics are subscribed and the source ready within seconds (the
/// overlapping-filter cover compared every pair: minutes), and SIGTERM
/// ends the run promptly.
#[test]
fn twenty_thousand_topics_are_ready_in_seconds() {
    let broker = Mosquitto::start();
    let dir = testkit::TempDir::new().unwrap();
    let http = free_port();
    let cfg = write(
        dir.path(),
        "p.toml",
        &many_topics(&format!("mqtt://127.0.0.1:{}", broker.port), http),
    );
    let started = std::time::Instant::now();
    let mut run = start(&cfg, dir.path(), &["--quiet"]);
    wait_ready(http, &mut run);
    let took = started.elapsed();
    eprintln!("20,000 topics: ready after {took:?}");
    assert!(took < Duration::from_secs(10), "ready after {took:?}");
    let stopping = std::time::Instant::now();
    signal(&run, "-TERM");
    let out = wait_output(&mut run, 30);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        stopping.elapsed() < Duration::from_secs(10),
        "{:?}",
        stopping.elapsed()
    );
}

/// SIGTERM while a source is still starting (its broker accepted the
/// connection and never answers) ends the run at once, exit 0.
#[test]
fn sigterm_while_starting_ends_the_run() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let (accepted_tx, accepted) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in silent.incoming().flatten() {
            held.push(s);
            let _ = accepted_tx.send(());
        }
    });
    let dir = testkit::TempDir::new().unwrap();
    let cfg = write(
        dir.path(),
        "p.toml",
        &many_topics(&format!("mqtt://127.0.0.1:{port}"), free_port()),
    );
    let mut run = start(&cfg, dir.path(), &["--quiet"]);
    // Connected: the source is in its start, waiting for CONNACK.
    accepted
        .recv_timeout(Duration::from_secs(20))
        .expect("the source connects within seconds");
    assert!(run.try_wait().unwrap().is_none());
    let stopping = std::time::Instant::now();
    signal(&run, "-TERM");
    let out = wait_output(&mut run, 30);
    let took = stopping.elapsed();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(took < Duration::from_secs(5), "stopped after {took:?}");
}

/// Durations and sizes far beyond any use, topic templates deeper than
/// brokers take and keys given twice in YAML are refused when loaded,
/// naming the key (and, for YAML, the line).
#[test]
fn absurd_values_deep_templates_and_duplicate_yaml_keys_are_refused() {
    let dir = testkit::TempDir::new().unwrap();
    let refused = |name: &str, body: &str| -> String {
        let f = write(dir.path(), name, body);
        let out = mqlink().arg("validate").arg(&f).output().unwrap();
        let err = text(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{name}: {}{err}",
            text(&out.stdout)
        );
        err
    };
    let yaml = |source: &str, sink: &str| {
        format!("connections:\n  c: {{ broker: \"mqtt://127.0.0.1:1883\" }}\nsources:\n  s: {{ type: mqtt, connection: c, topics: [\"a/#\"]{source} }}\nsinks:\n  out: {{ type: mqtt, connection: c, inputs: [s], topic: \"{sink}\" }}\n")
    };
    let e = refused(
        "linger.yaml",
        &yaml(", batch_timeout_ms: 18446744073709551615", "b/{device}"),
    );
    assert!(
        e.contains(
            "sources.s.batch_timeout_ms: 18446744073709551615 is more than the maximum, 86400000"
        ),
        "{e}"
    );
    let e = refused(
        "batch.yaml",
        &yaml(", batch_size: 1000000000000", "b/{device}"),
    );
    assert!(
        e.contains("sources.s.batch_size: 1000000000000 is more than the maximum, 100000"),
        "{e}"
    );
    let deep = format!("{}/{{device}}", vec!["l"; 1_000].join("/"));
    let e = refused("deep.yaml", &yaml("", &deep));
    assert!(
        e.contains("sinks.out.topic") && e.contains("at most 201"),
        "{e}"
    );
    let twice = "connections:\n  c: { broker: \"mqtt://127.0.0.1:1883\" }\nsources:\n  s: { type: mqtt, connection: c, topics: [\"a/#\"] }\n  s: { type: mqtt, connection: c, topics: [\"b/#\"] }\nsinks:\n  f: { type: file, inputs: [s], path: x }\n";
    let e = refused("twice.yaml", twice);
    assert!(
        e.contains("twice.yaml") && e.contains("duplicate entry with key \"s\" at line 4"),
        "{e}"
    );
}

/// A pipeline from MQTT (3.1.1, the default) into PostgreSQL, as a user
/// writes it, with `connection` and `source` lines added to those tables
/// (the local buffer's settings are the defaults unless `source` says
/// otherwise).
fn pg_pipeline(
    dir: &Path,
    broker: u16,
    pg: &Postgres,
    id: &str,
    http: u16,
    connection: &str,
    source: &str,
) -> std::path::PathBuf {
    write(
        dir,
        "p.toml",
        &format!(
            r#"
[connections.b]
broker = "mqtt://127.0.0.1:{broker}"
client_id = "{id}"
clean_session = false
{connection}
[sources.telemetry]
type = "mqtt"
connection = "b"
topics = ["{id}/#"]
schema = {{ device_id = "text", seq = "bigint", timestamp = "timestamp", temperature = "double", humidity = "double" }}
{source}
[sinks.db]
type = "postgres"
inputs = ["telemetry"]
url = "{url}"
table = "readings"
create_table = true
primary_key = ["device_id", "seq"]
[http]
listen = "127.0.0.1:{http}"
"#,
            url = pg.url()
        ),
    )
}

/// Written out: the buffer tests are about MQTT 3.1.1, whatever the default.
const RECONNECT: &str = "reconnect_interval = 0.2\nprotocol = \"3.1.1\"";

/// Rows are exactly messages 0..n: none missing, none twice (the primary
/// key would refuse a second copy; the count says none is missing).
fn assert_exactly(pg: &Postgres, n: usize) {
    assert_eq!(pg.count("readings"), n);
    assert_eq!(
        pg.psql("SELECT count(DISTINCT seq) FROM readings"),
        n.to_string()
    );
    assert_eq!(
        pg.psql("SELECT min(seq) || ',' || max(seq) FROM readings"),
        format!("0,{}", n - 1)
    );
}

/// The local buffer (on by default on MQTT 3.1.1): 100,000 messages are
/// acknowledged into it while PostgreSQL is down (Mosquitto, with its
/// default window of 20 and queue of 1,000, could hold only ~1,000), then
/// `mqlink run` is SIGKILLed and a torn entry is written at the log's tail
/// (half an entry, as a crash mid-write leaves it). With PostgreSQL back,
/// the next run cuts the torn entry and delivers every message once.
#[test]
fn sigkill_with_100000_in_the_buffer_and_postgres_down_delivers_each_once() {
    let broker = Mosquitto::start();
    let mut pg = Postgres::start();
    let dir = testkit::TempDir::new().unwrap();
    let id = unique_id("buf");
    let http = free_port();
    let cfg = pg_pipeline(dir.path(), broker.port, &pg, &id, http, RECONNECT, "");
    let mut run = start(&cfg, dir.path(), &[]);
    wait_ready(http, &mut run);
    wait_until(30, "the table", || {
        pg.psql("SELECT to_regclass('readings') IS NOT NULL") == "t"
    });
    pg.kill();
    const N: usize = 100_000;
    let all: Vec<String> = (0..N).map(reading).collect();
    // In chunks the broker's queue (1,000) can hold, each acknowledged
    // into the buffer before the next: the broker drops nothing whatever
    // the machine's load, so what follows tests the buffer alone. One
    // `mqlink pub -l` takes the chunks as they are written.
    let mut publisher = mqlink()
        .args([
            "pub",
            "-p",
            &broker.port.to_string(),
            "-t",
            &format!("{id}/a"),
            "-q",
            "1",
            "-l",
        ])
        .stdin(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = publisher.stdin.take().unwrap();
    for (i, chunk) in all.chunks(1_000).enumerate() {
        use std::io::Write;
        stdin
            .write_all((chunk.join("\n") + "\n").as_bytes())
            .unwrap();
        stdin.flush().unwrap();
        let want = ((i + 1) * 1_000) as u64;
        wait_until(60, "the chunk in the buffer", || {
            metric(http, "mqlink_source_buffer_entries") >= want
        });
    }
    drop(stdin);
    assert!(publisher.wait().unwrap().success());
    assert!(metric(http, "mqlink_source_buffer_bytes") > 5_000_000);
    signal(&run, "-KILL");
    run.wait().unwrap();
    let logdir = dir
        .path()
        .join(format!("mqlink-state/buffer/{id}-telemetry"));
    let mut segs: Vec<_> = std::fs::read_dir(&logdir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    segs.sort();
    let last = segs.last().expect("a segment");
    let first_bytes = std::fs::read(&segs[0]).unwrap();
    let len = u32::from_le_bytes(first_bytes[..4].try_into().unwrap()) as usize;
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(last).unwrap();
        f.write_all(&first_bytes[..(8 + len) / 2]).unwrap();
    }
    pg.restart();
    let mut run = start(&cfg, dir.path(), &[]);
    wait_until(120, "every row", || pg.count("readings") >= N);
    wait_until(30, "the buffer drained", || {
        metric(http, "mqlink_source_buffer_entries") == 0
    });
    signal(&run, "-TERM");
    let out = wait_output(&mut run, 30);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("torn or corrupt entry"), "{err}");
    assert_exactly(&pg, N);
}

/// A full buffer (1 MiB, PostgreSQL down) stops acknowledging: the source
/// takes nothing more, the messages in its session's window stay
/// unacknowledged, `/ready` says why; nothing is dropped — with
/// PostgreSQL back every message arrives, once.
#[test]
fn a_full_buffer_back_pressures_the_broker_and_drops_nothing() {
    let broker = Mosquitto::start();
    let mut pg = Postgres::start();
    let dir = testkit::TempDir::new().unwrap();
    let id = unique_id("full");
    let http = free_port();
    let cfg = pg_pipeline(
        dir.path(),
        broker.port,
        &pg,
        &id,
        http,
        RECONNECT,
        "buffer = { max_bytes = 1048576 }",
    );
    let mut run = start(&cfg, dir.path(), &["--quiet"]);
    wait_ready(http, &mut run);
    wait_until(30, "the table", || {
        pg.psql("SELECT to_regclass('readings') IS NOT NULL") == "t"
    });
    pg.kill();
    // ~1 KiB a message: the buffer holds ~1,100; 2,000 fill it and the
    // session's window (Mosquitto 2.0 sends a 3.1.1 client far more than
    // max_inflight_messages = 20 here), the rest waits at the broker.
    const N: usize = 2_000;
    let pad = "x".repeat(900);
    let all: Vec<String> = (0..N)
        .map(|i| reading(i).replace('}', &format!(r#","pad":"{pad}"}}"#)))
        .collect();
    let port = broker.port;
    let topic = format!("{id}/a");
    let publisher = std::thread::spawn(move || {
        testkit::mosquitto_pub_lines(port, &topic, 1, &all);
    });
    let full = "sources.telemetry: local buffer full";
    wait_until(60, "/ready: the buffer is full", || {
        http_get(http, "/ready").is_some_and(|(c, b)| c == 503 && b.contains(full))
    });
    // What the source holds: entries in the buffer and messages in the
    // session's window, unacknowledged. Both stay put while it is full.
    let held = || {
        let (_, why) = http_get(http, "/ready").unwrap();
        let window: u64 = why
            .split("the broker's window holds ")
            .nth(1)
            .and_then(|w| w.split(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("{why}"));
        (metric(http, "mqlink_source_buffer_entries"), window, why)
    };
    std::thread::sleep(Duration::from_secs(1));
    let (entries, window, why) = held();
    assert!(
        (500..N as u64).contains(&entries),
        "{entries} entries: {why}"
    );
    assert!(window > 0, "the window is full: {why}");
    assert!(entries + window <= N as u64, "{entries} + {window}: {why}");
    assert!(metric(http, "mqlink_source_buffer_bytes") <= 2 * 1_048_576);
    assert_eq!(metric(http, "mqlink_source_buffer_full"), 1);
    std::thread::sleep(Duration::from_secs(2));
    let (entries2, window2, why) = held();
    assert_eq!(
        (entries2, window2),
        (entries, window),
        "nothing more taken: {why}"
    );
    pg.restart();
    publisher.join().unwrap();
    wait_until(60, "every row", || pg.count("readings") >= N);
    wait_until(20, "/ready 200 again", || {
        http_get(http, "/ready").is_some_and(|(c, _)| c == 200)
    });
    signal(&run, "-TERM");
    assert!(wait_output(&mut run, 30).status.success());
    assert_exactly(&pg, N);
}

/// Issue 23's burst with the default configuration (on MQTT 3.1.1, written
/// out whatever the default protocol is): 20,000 QoS 1 messages
/// from `mosquitto_pub -l` as fast as it goes, against a Mosquitto with its
/// defaults (window 20, queue 1,000), on MQTT 3.1.1 into PostgreSQL. Beside
/// a live `mosquitto_sub -q 1` control: wherever the control gets every
/// message, mqlink does; it never gets fewer than the control.
#[test]
fn a_burst_on_3_1_1_into_postgres_loses_nothing_by_default() {
    let broker = Mosquitto::start();
    let pg = Postgres::start();
    let dir = testkit::TempDir::new().unwrap();
    let id = unique_id("burst");
    let http = free_port();
    let cfg = pg_pipeline(
        dir.path(),
        broker.port,
        &pg,
        &id,
        http,
        r#"protocol = "3.1.1""#,
        "",
    );
    let mut run = start(&cfg, dir.path(), &["--quiet"]);
    wait_ready(http, &mut run);
    let (mut control, rx) = mosquitto_sub(&[
        "-p",
        &broker.port.to_string(),
        "-t",
        &format!("{id}/#"),
        "-t",
        &format!("{id}-probe"),
        "-q",
        "1",
    ]);
    wait_until(30, "the table", || {
        pg.psql("SELECT to_regclass('readings') IS NOT NULL") == "t"
    });
    // The control has subscribed once it gets a probe (on a topic mqlink
    // does not read).
    wait_until(30, "the control subscribed", || {
        testkit::mosquitto_pub(&[
            "-p",
            &broker.port.to_string(),
            "-t",
            &format!("{id}-probe"),
            "-m",
            "probe",
        ]);
        rx.recv_timeout(Duration::from_millis(500))
            .is_ok_and(|l| l == "probe")
    });
    while rx.recv_timeout(Duration::from_millis(300)).is_ok() {}
    const N: usize = 20_000;
    let all: Vec<String> = (0..N).map(reading).collect();
    testkit::mosquitto_pub_lines(broker.port, &format!("{id}/a"), 1, &all);
    let mut got = 0;
    while rx.recv_timeout(Duration::from_secs(5)).is_ok() {
        got += 1;
    }
    let _ = control.kill();
    let _ = control.wait();
    wait_until(60, "mqlink at least as many as the control", || {
        pg.count("readings") >= got.min(N)
    });
    std::thread::sleep(Duration::from_secs(1));
    signal(&run, "-TERM");
    assert!(wait_output(&mut run, 30).status.success());
    let rows = pg.count("readings");
    eprintln!("burst of {N}: control {got}, mqlink {rows}");
    assert!(rows >= got, "mqlink {rows} < control {got}");
    if got == N {
        assert_exactly(&pg, N);
    }
}
