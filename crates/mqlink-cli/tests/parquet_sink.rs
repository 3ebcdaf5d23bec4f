//! The Parquet files sink as a user runs it: a Mosquitto with its window
//! of 20 on MQTT 3.1.1 as the source broker, `mqlink run`, and the files
//! read back by pyarrow (installed from PyPI into a virtualenv kept in
//! `target/pyarrow-venv`), with SIGKILLs mid-stream.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use testkit::{free_port, http_get, signal, unique_id, wait_output, write};
use testkit::{mosquitto_pub_lines, Mosquitto, MosquittoConfig};

fn mqlink() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mqlink"));
    c.env_remove("MQLINK_PASSWORD").env_remove("MQLINK_LOG");
    c
}

fn start(file: &Path, dir: &Path) -> Child {
    mqlink()
        .arg("run")
        .arg(file)
        .arg("--quiet")
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn wait_ready(http: u16, run: &mut Child) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while http_get(http, "/ready").map(|(c, _)| c) != Some(200) {
        if std::time::Instant::now() > deadline || run.try_wait().unwrap().is_some() {
            let _ = run.kill();
            let out = wait_output(run, 5);
            panic!(
                "not ready: {:?}\n{}",
                http_get(http, "/ready"),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The virtualenv's python with pyarrow, made once and kept.
fn python() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target");
    let venv = root.join("pyarrow-venv");
    let py = venv.join("bin/python");
    let ok = |py: &Path| {
        Command::new(py)
            .args(["-c", "import pyarrow"])
            .status()
            .is_ok_and(|s| s.success())
    };
    if !ok(&py) {
        std::fs::create_dir_all(&root).unwrap();
        let made = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .unwrap();
        assert!(
            made.success(),
            "python3 -m venv (apt-get install python3-venv)"
        );
        let pip = Command::new(venv.join("bin/pip"))
            .args([
                "install",
                "-q",
                "--disable-pip-version-check",
                "pyarrow>=17,<27",
            ])
            .status()
            .unwrap();
        assert!(pip.success(), "pip install pyarrow");
    }
    py
}

/// pyarrow's summary of the files under `root` once `distinct` seqs are
/// committed (or after `secs`); fails on any unreadable visible file.
fn read_back(root: &Path, distinct: usize, secs: u64, hive: bool) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/parquet_read.py");
    let mut c = Command::new(python());
    c.arg(script)
        .arg(root)
        .arg(distinct.to_string())
        .arg(secs.to_string());
    if hive {
        c.arg("--hive");
    }
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "pyarrow could not read the files: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn reading(i: usize) -> String {
    format!(
        r#"{{"device_id":"dev-{}","seq":{i},"timestamp":"2026-12-07T{:02}:30:00Z","temperature":{}.5,"ok":{},"extra":{{"n":{i}}}}}"#,
        i % 3,
        13 + i % 2,
        i % 40,
        i % 2 == 0
    )
}

/// The broker of the issue: Mosquitto's 20 in-flight messages to a 3.1.1
/// client, and (with `queue_defaults`) its 1,000 queued, then drops.
fn broker(queue_defaults: bool) -> Mosquitto {
    Mosquitto::with(MosquittoConfig {
        queue_defaults,
        extra: vec!["max_inflight_messages 20".into()],
        ..Default::default()
    })
}

fn pipeline(dir: &Path, port: u16, topic: &str, http: u16, sink: &str) -> PathBuf {
    write(
        dir,
        "p.toml",
        &format!(
            r#"
[connections.b]
broker = "mqtt://127.0.0.1:{port}"
protocol = "3.1.1"
client_id = "{topic}"
clean_session = false
reconnect_interval = 0.2
[sources.telemetry]
type = "mqtt"
connection = "b"
topics = ["{topic}/#"]
schema = {{ device_id = "text not null", seq = "bigint", timestamp = "timestamp", temperature = "double", ok = "boolean", extra = "json" }}
[sinks.lake]
type = "parquet"
inputs = ["telemetry"]
path = "lake"
{sink}
[http]
listen = "127.0.0.1:{http}"
"#
        ),
    )
}

/// A burst of 5,000 into partitioned files: every row once, with the
/// source schema's Arrow types, in directories from its fields and event
/// time, files rolled at 1,000 rows; nothing hidden left after SIGTERM.
#[test]
fn rows_are_read_back_by_pyarrow_with_their_types_and_partitions() {
    let broker = broker(true);
    let dir = testkit::TempDir::new().unwrap();
    let topic = unique_id("pq");
    let http = free_port();
    let cfg = pipeline(
        dir.path(),
        broker.port,
        &topic,
        http,
        "partition = \"dt={%Y-%m-%d}/hour={%H}/device={device_id}\"\ntime_field = \"timestamp\"\nmax_rows = 1000\nrollover_seconds = 2",
    );
    let mut run = start(&cfg, dir.path());
    wait_ready(http, &mut run);
    const N: usize = 5000;
    let all: Vec<String> = (0..N).map(reading).collect();
    mosquitto_pub_lines(broker.port, &format!("{topic}/x"), 1, &all);
    let lake = dir.path().join("lake");
    let got = read_back(&lake, N, 60, true);
    signal(&run, "-TERM");
    let out = wait_output(&mut run, 30);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(got["distinct"], N, "{got}");
    assert_eq!(got["rows"], N, "{got}");
    assert_eq!(got["duplicates"], 0, "{got}");
    assert_eq!(
        got["schema"],
        serde_json::json!({
            "device_id": "string", "seq": "int64", "timestamp": "timestamp[us, tz=UTC]",
            "temperature": "double", "ok": "bool", "extra": "string"
        }),
        "{got}"
    );
    // 3 devices × 2 hours, files of at most 1,000 rows.
    let files: Vec<&str> = got["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    for f in &files {
        assert!(
            f.starts_with("dt=2026-12-07/hour=13/device=dev-")
                || f.starts_with("dt=2026-12-07/hour=14/device=dev-"),
            "{f}"
        );
        assert!(f.ends_with(".parquet") && f.contains("/lake-"), "{f}");
    }
    let dirs: std::collections::BTreeSet<&str> =
        files.iter().map(|f| &f[..f.rfind('/').unwrap()]).collect();
    assert_eq!(dirs.len(), 6, "{files:?}");
    assert!(got["rows_per_file"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r.as_u64().unwrap() <= 1000));
    assert_eq!(got["hive_rows"], N, "{got}");
    assert_eq!(got["hive"]["device"], "string", "{got}");
    // Every record went through its file's commit: nothing hidden left.
    let after = read_back(&lake, N, 0, false);
    assert_eq!(after["hidden"], serde_json::json!([]), "{after}");
    assert_eq!(after["rows"], N);
}

/// SIGKILL of `mqlink run` twice while 30,000 messages stream in: at no
/// time is a visible file partial or unreadable (pyarrow reads every
/// visible file whole while the run goes on), the temporary files of the
/// killed runs are deleted at restart, and every message is a row.
/// Each kill comes right after a commit's renames, before the buffer
/// hears of it, so the records of that commit are read again: exactly
/// once, every message is a row of exactly one committed file (without
/// the skip of records read again this counted 5,000+ duplicates), and
/// the commit manifest is the only hidden file left.
#[test]
fn sigkill_twice_leaves_no_partial_file_and_every_row() {
    // No queue limit: while mqlink is down the broker holds the stream.
    let broker = broker(false);
    let dir = testkit::TempDir::new().unwrap();
    let topic = unique_id("pqkill");
    let http = free_port();
    let cfg = pipeline(
        dir.path(),
        broker.port,
        &topic,
        http,
        "max_rows = 2500\nrollover_seconds = 1\ncompression = \"snappy\"",
    );
    let mut run = start(&cfg, dir.path());
    wait_ready(http, &mut run);
    const N: usize = 30_000;
    let port = broker.port;
    let t = topic.clone();
    let publisher = std::thread::spawn(move || {
        let all: Vec<String> = (0..N).map(reading).collect();
        for chunk in all.chunks(1000) {
            mosquitto_pub_lines(port, &format!("{t}/x"), 1, chunk);
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let lake = dir.path().join("lake");
    for kill in 1..=2 {
        let got = read_back(&lake, kill * N / 4, 60, false);
        if got["distinct"].as_u64().unwrap() < (kill * N / 4) as u64 {
            let _ = run.kill();
            let out = wait_output(&mut run, 5);
            panic!(
                "kill {kill}: {got}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // Right after a commit's renames, before the buffer hears of the
        // confirmation: the records of that commit are read again.
        kill_after_next_commit(&lake, &run);
        run.wait().unwrap();
        run = start(&cfg, dir.path());
    }
    publisher.join().unwrap();
    let got = read_back(&lake, N, 90, false);
    signal(&run, "-TERM");
    let out = wait_output(&mut run, 30);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "parquet after 2 SIGKILLs: {} rows, {} distinct, {} duplicates, {} files",
        got["rows"],
        got["distinct"],
        got["duplicates"],
        got["files"].as_array().unwrap().len()
    );
    assert_eq!(got["distinct"], N, "{got}");
    assert_eq!(got["duplicates"], 0, "{got}");
    assert_eq!(got["rows"], N, "{got}");
    assert_eq!(got["min"], 0);
    assert_eq!(got["max"], N - 1);
    let after = read_back(&lake, N, 0, false);
    assert_eq!(after["hidden"], serde_json::json!([]), "{after}");
}

/// The committed files below `root`.
fn committed(root: &Path) -> usize {
    let mut n = 0;
    let mut dirs = vec![root.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if e.path().is_dir() {
                dirs.push(e.path());
            } else if !name.starts_with('.') && name.ends_with(".parquet") {
                n += 1;
            }
        }
    }
    n
}

/// SIGKILL as soon as a new committed file appears (within a millisecond
/// or two of its rename).
fn kill_after_next_commit(root: &Path, run: &Child) {
    let before = committed(root);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while committed(root) == before {
        assert!(std::time::Instant::now() < deadline, "no commit in 30 s");
        std::thread::sleep(Duration::from_millis(1));
    }
    signal(run, "-KILL");
}

/// `mqlink validate` checks the partition template and the time field
/// against the input's columns, naming the key.
#[test]
fn validate_names_a_partition_column_the_input_lacks() {
    let dir = testkit::TempDir::new().unwrap();
    let cfg = pipeline(
        dir.path(),
        1883,
        "t",
        free_port(),
        "partition = \"site={site}\"",
    );
    let out = mqlink().arg("validate").arg(&cfg).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("sinks.lake.partition") && err.contains("{site} is not a column"),
        "{err}"
    );
    let cfg = pipeline(dir.path(), 1883, "t", free_port(), "time_field = \"seq\"");
    let out = mqlink().arg("validate").arg(&cfg).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("sinks.lake.time_field") && err.contains("not a timestamp column"),
        "{err}"
    );
}

/// SQL: Arroyo's `connector = 'filesystem', format = 'parquet'` is this
/// sink, with Arroyo's option names; its partition columns are checked
/// against the query's.
#[test]
fn sql_filesystem_with_format_parquet_is_the_parquet_sink() {
    let dir = testkit::TempDir::new().unwrap();
    let sql = |partition: &str| {
        format!(
            r#"CREATE CONNECTION c FROM mqtt_source WITH (broker = 'tcp://127.0.0.1:1883');
CREATE TABLE t (id BIGINT, at TIMESTAMP, name TEXT) WITH (connector = 'mqtt_source', connection = 'c', topics = '["a/#"]', qos = 1);
CREATE TABLE lake WITH (connector = 'filesystem', format = 'parquet', path = 'lake', partition = '{partition}', time_field = 'at', parquet_compression = 'snappy', target_file_size = '1000000', rollover_seconds = '5');
INSERT INTO lake SELECT * FROM t;
"#
        )
    };
    let file = write(dir.path(), "p.sql", &sql("dt={%Y-%m-%d}/n={name}"));
    let out = mqlink().arg("validate").arg(&file).output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("1 sink(s)"), "{text}");
    let file = write(dir.path(), "p.sql", &sql("site={site}"));
    let out = mqlink().arg("validate").arg(&file).output().unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(text.contains("{site} is not a column"), "{text}");
}

/// On MQTT 5 too the source's buffer is on by default for a Parquet sink
/// (its records wait for their file's commit). With files rolled only
/// every hour, the records wait in the buffer unacknowledged by the sink;
/// SIGTERM commits the open file at once: every row is in a file when
/// `mqlink run` has exited, nothing hidden is left.
#[test]
fn on_mqtt5_the_buffer_is_on_and_sigterm_commits_the_open_file() {
    let broker = broker(true);
    let dir = testkit::TempDir::new().unwrap();
    let topic = unique_id("pqterm");
    let http = free_port();
    let cfg = pipeline(
        dir.path(),
        broker.port,
        &topic,
        http,
        "rollover_seconds = 3600",
    );
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, text.replace("protocol = \"3.1.1\"\n", "")).unwrap();
    let mut run = start(&cfg, dir.path());
    wait_ready(http, &mut run);
    assert_eq!(
        testkit::metric(http, "mqlink_source_buffer_max_bytes"),
        1 << 30,
        "the buffer is on"
    );
    const N: usize = 2000;
    let all: Vec<String> = (0..N).map(reading).collect();
    mosquitto_pub_lines(broker.port, &format!("{topic}/x"), 1, &all);
    testkit::wait_until(30, "every message in the buffer", || {
        testkit::metric(http, "mqlink_source_buffer_entries") == N as u64
    });
    let lake = dir.path().join("lake");
    let before = read_back(&lake, N, 0, false);
    assert_eq!(before["rows"], 0, "{before}");
    let t0 = std::time::Instant::now();
    signal(&run, "-TERM");
    let out = wait_output(&mut run, 30);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(t0.elapsed() < Duration::from_secs(20), "{:?}", t0.elapsed());
    let got = read_back(&lake, N, 0, false);
    assert_eq!(got["rows"], N, "{got}");
    assert_eq!(got["distinct"], N, "{got}");
    assert_eq!(got["hidden"], serde_json::json!([]), "{got}");
}

/// Without a schema nothing is guessed: JSON records are `topic` and
/// `payload` (the JSON text), raw payloads `topic` and binary `payload`.
#[test]
fn schemaless_records_are_topic_and_payload() {
    let broker = broker(true);
    for (format, payload_type) in [("json", "string"), ("raw_bytes", "binary")] {
        let dir = testkit::TempDir::new().unwrap();
        let topic = unique_id("pqraw");
        let http = free_port();
        let cfg = pipeline(dir.path(), broker.port, &topic, http, "");
        let text = std::fs::read_to_string(&cfg).unwrap();
        let schema_line = text.lines().find(|l| l.starts_with("schema = ")).unwrap();
        let text = text.replace(schema_line, &format!("format = \"{format}\""));
        std::fs::write(&cfg, text).unwrap();
        let mut run = start(&cfg, dir.path());
        wait_ready(http, &mut run);
        let all: Vec<String> = (0..100).map(reading).collect();
        mosquitto_pub_lines(broker.port, &format!("{topic}/x"), 1, &all);
        testkit::wait_until(30, "every message in the buffer", || {
            testkit::metric(http, "mqlink_source_buffer_entries") == 100
        });
        signal(&run, "-TERM");
        let out = wait_output(&mut run, 30);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got = read_back(&dir.path().join("lake"), 0, 0, false);
        assert_eq!(got["rows"], 100, "{format}: {got}");
        assert_eq!(
            got["schema"],
            serde_json::json!({"topic": "string", "payload": payload_type}),
            "{format}: {got}"
        );
    }
}

/// A record whose value cannot be a directory name (longer than 255
/// bytes) is that record's fault (skipped and counted here, dead-lettered
/// with a dead_letter_topic); the other records are written.
#[test]
fn a_value_too_long_for_a_directory_is_the_records_fault() {
    let broker = broker(true);
    let dir = testkit::TempDir::new().unwrap();
    let topic = unique_id("pqlong");
    let http = free_port();
    let cfg = pipeline(
        dir.path(),
        broker.port,
        &topic,
        http,
        "partition = \"device={device_id}\"",
    );
    let mut run = start(&cfg, dir.path());
    wait_ready(http, &mut run);
    let mut all: Vec<String> = (0..10).map(reading).collect();
    all.push(reading(10).replace("dev-1", &"d".repeat(300)));
    mosquitto_pub_lines(broker.port, &format!("{topic}/x"), 1, &all);
    testkit::wait_until(30, "every message in the buffer", || {
        testkit::metric(http, "mqlink_source_buffer_entries") == 11
    });
    signal(&run, "-TERM");
    let out = wait_output(&mut run, 30);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("longer than 255 bytes"), "{err}");
    let got = read_back(&dir.path().join("lake"), 0, 0, false);
    assert_eq!(got["rows"], 10, "{got}");
    assert_eq!(got["hidden"], serde_json::json!([]), "{got}");
}
