//! `mqlink run file.sql` and `mqlink validate file.sql` as a user runs
//! them: the example files, a real Mosquitto started by the test, results
//! checked row for row against what the test computes itself, and every
//! message acknowledged (a row the WHERE drops counts as done).
#![cfg(feature = "sql")]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use testkit::{lines_of, metric, write};
use testkit::{unique_id, wait_until, Mosquitto, MosquittoConfig};

fn mqlink() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mqlink"));
    c.env_remove("MQLINK_LOG");
    c
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn example(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../examples/sql")
            .join(name),
    )
    .unwrap()
}

/// A running `mqlink run`: its stdout and stderr lines as they come.
struct Run {
    child: Child,
    stdout: Receiver<String>,
    stderr: Receiver<String>,
    err_lines: Vec<String>,
}

fn start(file: &Path, dir: &Path, env: &[(&str, String)]) -> Run {
    start_with(file, dir, env, &[])
}

/// `mqlink run file` with more arguments.
fn start_with(file: &Path, dir: &Path, env: &[(&str, String)], args: &[&str]) -> Run {
    let mut c = mqlink();
    c.arg("run").arg(file).args(args).current_dir(dir);
    for (k, v) in env {
        c.env(k, v);
    }
    let mut child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = lines_of(child.stdout.take().unwrap());
    let stderr = lines_of(child.stderr.take().unwrap());
    Run {
        child,
        stdout,
        stderr,
        err_lines: Vec::new(),
    }
}

impl Run {
    /// Waits for `n` "Subscribed." log lines (one per MQTT source).
    fn wait_subscribed(&mut self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self
            .err_lines
            .iter()
            .filter(|l| l.contains("Subscribed."))
            .count()
            < n
        {
            if let Ok(l) = self.stderr.recv_timeout(Duration::from_millis(100)) {
                self.err_lines.push(l);
            }
            if Instant::now() > deadline || self.child.try_wait().unwrap().is_some() {
                let _ = self.child.kill();
                panic!("not subscribed:\n{}", self.err_lines.join("\n"));
            }
        }
    }

    /// `n` lines of standard output, as JSON.
    fn rows(&mut self, n: usize) -> Vec<Value> {
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while out.len() < n {
            match self.stdout.recv_timeout(Duration::from_millis(100)) {
                Ok(l) => {
                    out.push(serde_json::from_str(&l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
                }
                Err(_) if Instant::now() > deadline => {
                    let _ = self.child.kill();
                    panic!(
                        "{} of {n} rows: {out:?}\n{}",
                        out.len(),
                        self.err_lines.join("\n")
                    );
                }
                Err(_) => {}
            }
        }
        out
    }

    /// The exit status of a run that ended by itself, and its stderr.
    fn stop_exited(mut self) -> (std::process::ExitStatus, String) {
        while let Ok(l) = self.stderr.recv_timeout(Duration::from_millis(500)) {
            self.err_lines.push(l);
        }
        (self.child.wait().unwrap(), self.err_lines.join("\n"))
    }

    /// SIGTERM, then the exit status and the whole of stderr.
    fn stop(mut self) -> (std::process::ExitStatus, String) {
        let st = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
        wait_until(30, "mqlink run to exit", || {
            self.child.try_wait().unwrap().is_some()
        });
        while let Ok(l) = self.stderr.recv_timeout(Duration::from_millis(500)) {
            self.err_lines.push(l);
        }
        (self.child.wait().unwrap(), self.err_lines.join("\n"))
    }
}

/// Publishes lines at QoS 1 with `mqlink pub -l` (each one confirmed).
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

/// The SQL of Laminar's documentation, as written (examples/sql/laminar.sql):
/// three tables and a view, each row exactly as the statements say.
#[test]
fn the_laminar_reference_runs_as_written() {
    let broker = Mosquitto::start();
    let dir = testkit::TempDir::new().unwrap();
    let sql = example("laminar.sql");
    let file = write(dir.path(), "laminar.sql", &sql);
    let mut run = start(
        &file,
        dir.path(),
        &[
            ("MQTT_BROKER", format!("tcp://127.0.0.1:{}", broker.port)),
            ("MQTT_PASSWORD", "pw-laminar-never-printed".into()),
        ],
    );
    run.wait_subscribed(3);

    publish(
        broker.port,
        "sensors/s1/telemetry",
        &[r#"{"device_id":"d1","timestamp":"2026-11-23T10:00:00Z","temperature":21.5,"humidity":40,"location":"hall"}"#.into()],
    );
    let rows = run.rows(1);
    assert_eq!(
        rows[0],
        json!({"device_id":"d1","timestamp":"2026-11-23T10:00:00.000000Z","temperature":21.5,"humidity":40.0,"location":"hall"})
    );
    // A field that is missing is NULL; a status message on the second filter.
    publish(
        broker.port,
        "devices/d2/status",
        &[r#"{"device_id":"d2"}"#.into()],
    );
    assert_eq!(
        run.rows(1)[0],
        json!({"device_id":"d2","timestamp":null,"temperature":null,"humidity":null,"location":null})
    );
    // Raw bytes, with the topic; the timestamp is when the batch arrived.
    let before = chrono_like_now();
    publish(broker.port, "data/binary", &["\u{1}bin".into()]);
    let raw = run.rows(1).remove(0);
    assert_eq!(raw["topic"], "data/binary");
    assert_eq!(raw["payload"], "AWJpbg==");
    let ts = raw["timestamp"].as_str().unwrap();
    assert!(ts.starts_with(&before[..10]), "{ts} {before}");

    // The view: only anomalies, only its three columns, in order.
    let temps = [20.0, 41.5, -12.0, 40.0, -10.0, 55.0, 0.0];
    let readings: Vec<String> = temps
        .iter()
        .enumerate()
        .map(|(i, t)| format!(r#"{{"sensor_id":"s{i}","reading_time":"2026-11-23T10:00:0{i}Z","temperature":{t},"humidity":50,"pressure":1013}}"#))
        .collect();
    publish(broker.port, "sensors/s9/readings", &readings);
    let alerts = run.rows(3);
    let expected: Vec<Value> = temps
        .iter()
        .enumerate()
        .filter(|(_, t)| **t > 40.0 || **t < -10.0)
        .map(|(i, t)| json!({"sensor_id": format!("s{i}"), "temperature": t, "reading_time": format!("2026-11-23T10:00:0{i}.000000Z")}))
        .collect();
    assert_eq!(alerts, expected);
    assert!(
        run.stdout.recv_timeout(Duration::from_millis(500)).is_err(),
        "nothing more"
    );

    let (status, err) = run.stop();
    assert!(status.success(), "{err}");
    // 1 + 1 + 1 + 7 messages, all acknowledged (4 dropped by the view's WHERE).
    assert!(err.contains("10 records acknowledged"), "{err}");
    assert!(!err.contains("pw-laminar-never-printed"), "{err}");
}

/// Laminar's JSON table as printed: its lone JSON column receives the
/// whole message, whatever JSON it is (object, array, scalar).
#[test]
fn a_lone_json_column_takes_the_whole_message() {
    let broker = Mosquitto::start();
    let dir = testkit::TempDir::new().unwrap();
    let topic = unique_id("json");
    let sql = format!(
        "CREATE CONNECTION mqtt_connection FROM mqtt_source WITH (broker = 'tcp://127.0.0.1:{}');\n\
         CREATE TABLE mqtt_json (\n    payload JSON\n) WITH (\n    connector = 'mqtt_source',\n    \
         connection = 'mqtt_connection',\n    topics = '[\"{topic}\"]',\n    format = 'json'\n);\n",
        broker.port
    );
    let file = write(dir.path(), "json.sql", &sql);
    let mut run = start(&file, dir.path(), &[]);
    run.wait_subscribed(1);
    let messages = [r#"{"a":1,"b":[1,2]}"#, "[1,2]", "42", r#""text""#, "null"];
    publish(broker.port, &topic, &messages.map(String::from));
    let rows = run.rows(messages.len());
    let want: Vec<Value> = messages
        .iter()
        .map(|m| json!({"payload": serde_json::from_str::<Value>(m).unwrap()}))
        .collect();
    assert_eq!(rows, want);
    let (status, err) = run.stop();
    assert!(status.success(), "{err}");
}

fn chrono_like_now() -> String {
    let out = Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%S"])
        .output()
        .unwrap();
    text(&out.stdout).trim().to_string()
}

/// The Arroyo dialect (examples/sql/arroyo.sql): INSERT INTO a file with a
/// filter, arithmetic, CASE, CAST, string functions and the topic; every
/// row exactly what the test computes, every message acknowledged.
#[test]
fn arroyo_insert_into_filters_and_projects_exactly() {
    let broker = Mosquitto::start();
    let dir = testkit::TempDir::new().unwrap();
    let topic = unique_id("arroyo");
    let sql =
        example("arroyo.sql").replace("'sensors/+/telemetry'", &format!("'{topic}/+/telemetry'"));
    let file = write(dir.path(), "arroyo.sql", &sql);
    let mut run = start(&file, dir.path(), &[("MQTT_URL", broker.url())]);
    run.wait_subscribed(1);
    const N: usize = 2000;
    let lines: Vec<String> = (0..N)
        .map(|i| {
            format!(
                r#"{{"device_id":"dev-{}","seq":{i},"temperature":{}}}"#,
                i % 7,
                (i % 45) as f64 + 0.5
            )
        })
        .collect();
    publish(broker.port, &format!("{topic}/kitchen/telemetry"), &lines);
    let expected: Vec<Value> = (0..N)
        .filter(|i| (i % 45) as f64 + 0.5 > 25.0)
        .map(|i| {
            let t = (i % 45) as f64 + 0.5;
            json!({
                "device_id": format!("dev-{}", i % 7),
                "seq": i,
                "room": "kitchen",
                "fahrenheit": t * 9.0 / 5.0 + 32.0,
                "level": if t > 35.0 { "critical" } else { "high" },
                "tag": format!("DEV-{}-{i}", i % 7),
            })
        })
        .collect();
    let out = dir.path().join("out/hot.jsonl");
    let read = || -> Vec<Value> {
        std::fs::read_to_string(&out)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    wait_until(60, "every row", || read().len() >= expected.len());
    let (status, err) = run.stop();
    assert!(status.success(), "{err}");
    assert_eq!(read(), expected);
    assert!(err.contains(&format!("{N} records acknowledged")), "{err}");
}

/// UNION ALL of two source tables into one MQTT sink, through a view.
#[test]
fn union_all_of_two_tables_into_an_mqtt_sink() {
    let broker = Mosquitto::start();
    let dir = testkit::TempDir::new().unwrap();
    let t = unique_id("union");
    let sql = format!(
        r#"
CREATE CONNECTION b FROM mqtt WITH (url = '${{BROKER}}', client_prefix = '{t}');
CREATE TABLE a (id BIGINT, v DOUBLE) WITH (connector = 'mqtt_source', connection = 'b', topics = '["{t}/a"]');
CREATE TABLE c (id BIGINT, w DOUBLE) WITH (connector = 'mqtt_source', connection = 'b', topics = '["{t}/c"]');
CREATE VIEW both_kinds AS
  SELECT id, v AS value, 'a' AS kind FROM a WHERE v >= 0
  UNION ALL
  SELECT id, w * 10 AS value, 'c' AS kind FROM c;
CREATE SINK out AS SELECT * FROM both_kinds WHERE id % 2 = 0
WITH (connector = 'mqtt', connection = 'b', topic = '{t}/out/{{kind}}', qos = 'AtLeastOnce');
"#
    );
    let file = write(dir.path(), "u.sql", &sql);
    let check = mqlink()
        .arg("validate")
        .arg(&file)
        .env("BROKER", broker.url())
        .output()
        .unwrap();
    assert!(check.status.success(), "{}", text(&check.stderr));
    let (mut sub, rx) = {
        let mut s = Command::new("mosquitto_sub")
            .args([
                "-p",
                &broker.port.to_string(),
                "-t",
                &format!("{t}/out/#"),
                "-v",
                "-q",
                "1",
            ])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let rx = lines_of(s.stdout.take().unwrap());
        (s, rx)
    };
    std::thread::sleep(Duration::from_millis(300));
    let mut run = start(&file, dir.path(), &[("BROKER", broker.url())]);
    run.wait_subscribed(2);
    publish(
        broker.port,
        &format!("{t}/a"),
        &(0..10)
            .map(|i| format!(r#"{{"id":{i},"v":{}}}"#, i as f64 - 3.0))
            .collect::<Vec<_>>(),
    );
    publish(
        broker.port,
        &format!("{t}/c"),
        &(0..6)
            .map(|i| format!(r#"{{"id":{i},"w":{i}.5}}"#))
            .collect::<Vec<_>>(),
    );
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.len() < 6 && Instant::now() < deadline {
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(100)) {
            got.push(l);
        }
    }
    let (status, err) = run.stop();
    let _ = sub.kill();
    assert!(status.success(), "{err}");
    got.sort();
    let mut expected: Vec<String> = (0..10)
        .filter(|i| i % 2 == 0 && *i as f64 - 3.0 >= 0.0)
        .map(|i| {
            format!(
                r#"{t}/out/a {{"id":{i},"value":{:?},"kind":"a"}}"#,
                i as f64 - 3.0
            )
        })
        .chain((0..6).filter(|i| i % 2 == 0).map(|i| {
            format!(
                r#"{t}/out/c {{"id":{i},"value":{:?},"kind":"c"}}"#,
                (i as f64 + 0.5) * 10.0
            )
        }))
        .collect();
    expected.sort();
    assert_eq!(got, expected);
    assert!(err.contains("16 records acknowledged"), "{err}");
}

fn validate(sql: &str) -> (bool, String) {
    let dir = testkit::TempDir::new().unwrap();
    let file = write(dir.path(), "p.sql", sql);
    let out = mqlink()
        .arg("validate")
        .arg(&file)
        .env("PW", "pw-in-env-never-printed")
        .output()
        .unwrap();
    (
        out.status.success(),
        format!("{}{}", text(&out.stdout), text(&out.stderr)),
    )
}

const BASE: &str = "CREATE CONNECTION c FROM mqtt_source WITH (broker = 'tcp://127.0.0.1:1883', password = '${PW}');
CREATE TABLE t (id BIGINT, name TEXT, temp DOUBLE) WITH (connector = 'mqtt_source', connection = 'c', topics = '[\"a/#\"]', qos = 1);
CREATE TABLE f WITH (connector = 'file', path = 'out.jsonl');
";

/// Errors name the statement, its line and the option; nothing secret.
#[test]
fn validate_names_statement_line_and_key() {
    let ok = format!("{BASE}INSERT INTO f SELECT id, upper(name) AS name FROM t WHERE temp > 3;");
    let (valid, out) = validate(&ok);
    assert!(valid, "{out}");
    assert!(
        out.contains("valid: 1 connection(s), 1 source(s), 1 sink(s)"),
        "{out}"
    );

    for (from, to, expect) in [
        (
            "qos = 1",
            "qos = 3",
            "line 2: CREATE TABLE t: qos: 3 is not a QoS",
        ),
        (
            "qos = 1",
            "qoss = 1",
            "line 2: CREATE TABLE t: qoss: unknown option",
        ),
        (
            "tcp://127.0.0.1:1883",
            "http://x",
            "line 1: CREATE CONNECTION c: broker: ",
        ),
        (
            "'[\"a/#\"]'",
            "'[\"a/#/b\"]'",
            "line 2: CREATE TABLE t: topics[0]: ",
        ),
        (
            "connection = 'c'",
            "connection = 'd'",
            "line 2: CREATE TABLE t: connection: no connection named \"d\"",
        ),
        (
            "temp DOUBLE",
            "temp DOUBLE, temp TEXT",
            "line 2: CREATE TABLE t: temp: a second column",
        ),
        (
            "name TEXT",
            "name INTERVAL",
            "line 2: CREATE TABLE t: name: column type INTERVAL is not supported",
        ),
        (
            "connector = 'file'",
            "connector = 's3'",
            "line 3: CREATE TABLE f: connector: unknown connector \"s3\"",
        ),
    ] {
        assert!(ok.contains(from), "{from}");
        let (valid, out) = validate(&ok.replacen(from, to, 1));
        assert!(!valid, "{to}: {out}");
        assert!(out.contains(expect), "{to}: {out}");
        assert!(!out.contains("pw-in-env-never-printed"), "{out}");
    }
    let (valid, out) = validate(&format!("{BASE}INSERT INTO f SELECT idd FROM t;"));
    assert!(!valid);
    assert!(
        out.contains("line 4: INSERT INTO f: ") && out.contains("idd"),
        "{out}"
    );
    let (_, out) = validate(&format!("{BASE}INSERT INTO g SELECT * FROM t;"));
    assert!(
        out.contains("line 4: INSERT INTO g: no sink table named \"g\""),
        "{out}"
    );
    let (_, out) = validate(&format!(
        "{BASE}INSERT INTO f SELECT * FROM t;\nCREATE TABLE oops (;"
    ));
    assert!(out.contains("line 5: "), "{out}");
    let (_, out) =
        validate("CREATE CONNECTION c FROM mqtt_source WITH (broker = '${MISSING_VAR}');");
    assert!(
        out.contains(
            "line 1: CREATE CONNECTION c: broker: environment variable MISSING_VAR is not set"
        ),
        "{out}"
    );
}

/// Queries nested deeper than a planner's stack takes (long chains of
/// `+`, `OR`, `AND`, `UNION ALL`, views of views) are refused with the
/// limit, at once, instead of overflowing the stack.
#[test]
fn deep_queries_are_refused_quickly_naming_the_limit() {
    let chain = |op: &str, n: usize| vec!["temp"; n].join(op);
    let views: String = (1..=3_000)
        .map(|i| format!("CREATE VIEW v{i} AS SELECT * FROM v{};\n", i - 1))
        .collect();
    let cases = [
        ("5,000 +", format!("{BASE}INSERT INTO f SELECT {} AS x FROM t;", chain(" + ", 5_000))),
        ("5,000 OR", format!("{BASE}INSERT INTO f SELECT id FROM t WHERE {};", chain(" > 1 OR ", 5_000) + " > 1")),
        ("20,000 AND", format!("{BASE}INSERT INTO f SELECT id FROM t WHERE {};", chain(" > 1 AND ", 20_000) + " > 1")),
        ("5,000 UNION ALL", format!("{BASE}INSERT INTO f {};", vec!["SELECT id FROM t"; 5_000].join(" UNION ALL "))),
        ("3,000 views", format!("{BASE}CREATE VIEW v0 AS SELECT * FROM t;\n{views}INSERT INTO f SELECT * FROM v3000;")),
        ("a bare SELECT", format!("{BASE}SELECT {} FROM t;", chain(" + ", 5_000))),
    ];
    for (what, sql) in cases {
        let started = Instant::now();
        let (valid, out) = validate(&sql);
        let took = started.elapsed();
        assert!(!valid, "{what}: {out}");
        assert!(
            out.contains("plans at most "),
            "{what}: {}",
            &out[..out.len().min(2000)]
        );
        assert!(
            !out.contains("overflow") && !out.contains("panicked"),
            "{what}: {out}"
        );
        // A second of work at most; the bound leaves room for a loaded machine.
        assert!(took < Duration::from_secs(5), "{what}: {took:?}");
        eprintln!("{what}: refused in {took:?}");
    }
    // Moderate depth still plans: 100 terms, 50 UNION ALLs, 20 views.
    let views: String = (1..=20)
        .map(|i| format!("CREATE VIEW v{i} AS SELECT * FROM v{};\n", i - 1))
        .collect();
    for sql in [
        format!(
            "{BASE}INSERT INTO f SELECT {} AS x FROM t;",
            chain(" + ", 100)
        ),
        format!(
            "{BASE}INSERT INTO f {};",
            vec!["SELECT id FROM t"; 50].join(" UNION ALL ")
        ),
        format!(
            "{BASE}CREATE VIEW v0 AS SELECT * FROM t;\n{views}INSERT INTO f SELECT * FROM v20;"
        ),
    ] {
        let (valid, out) = validate(&sql);
        assert!(valid, "{out}");
    }
}

/// What a stream cannot compute is refused when validated, by name.
#[test]
fn unsupported_sql_is_refused_by_name() {
    for (query, expect) in [
        ("SELECT t.id FROM t JOIN t AS u ON t.id = u.id", "JOIN"),
        (
            "SELECT name, COUNT(*) AS n FROM t GROUP BY name",
            "aggregate",
        ),
        ("SELECT * FROM t ORDER BY temp DESC LIMIT 3", "Top-N"),
        ("SELECT * FROM t ORDER BY temp DESC", "ORDER BY"),
        ("SELECT * FROM t LIMIT 3", "LIMIT"),
        ("SELECT DISTINCT name FROM t", "DISTINCT"),
        (
            "SELECT id, row_number() OVER (ORDER BY id) FROM t",
            "row_number",
        ),
    ] {
        let (valid, out) = validate(&format!("{BASE}INSERT INTO f {query};"));
        assert!(!valid, "{query}: {out}");
        assert!(out.contains("line 4: INSERT INTO f: "), "{query}: {out}");
        assert!(out.contains(expect), "{query}: {out}");
    }
    let (valid, out) = validate(&format!("{BASE}INSERT INTO f SELECT * FROM t;\nSELECT * FROM system.connector_status WHERE connector_name = 'mqtt_source';"));
    assert!(!valid);
    assert!(
        out.contains("line 5: SELECT *: system tables describe a running pipeline"),
        "{out}"
    );
}

/// SIGKILL of `mqlink run` twice while a query streams into PostgreSQL:
/// every message the WHERE keeps is exactly one row with its computed
/// columns (the primary key absorbs redeliveries), none of the others.
#[test]
fn sigkill_twice_during_a_query_into_postgres_loses_nothing() {
    let broker = Mosquitto::start();
    let pg = testkit::Postgres::start();
    let dir = testkit::TempDir::new().unwrap();
    let topic = unique_id("sqlkill");
    let sql = format!(
        r#"
CREATE CONNECTION b FROM mqtt_source WITH (
    broker = 'tcp://127.0.0.1:{port}', client_id = '{topic}',
    clean_session = false, reconnect_interval = 0.2
);
CREATE TABLE readings (device_id TEXT, seq BIGINT, temperature DOUBLE, topic TEXT METADATA FROM 'topic')
WITH (connector = 'mqtt_source', connection = 'b', topics = '["{topic}/+/telemetry"]', qos = 1, format = 'json');
CREATE TABLE db WITH (connector = 'postgres', url = '{url}', table = 'kept', create_table = 'true',
    primary_key = 'device_id, seq', batch_size = 500);
INSERT INTO db
SELECT device_id, seq, SPLIT_PART(topic, '/', 2) AS site, round(temperature * 10) AS tenths
FROM readings WHERE seq % 3 <> 0;
"#,
        port = broker.port,
        url = pg.url()
    );
    let file = write(dir.path(), "k.sql", &sql);
    let mut run = start(&file, dir.path(), &[]);
    run.wait_subscribed(1);
    const N: usize = 30_000;
    let port = broker.port;
    let t = topic.clone();
    let publisher = std::thread::spawn(move || {
        let all: Vec<String> = (0..N)
            .map(|i| {
                format!(
                    r#"{{"device_id":"d{}","seq":{i},"temperature":{}}}"#,
                    i % 10,
                    i as f64 / 100.0
                )
            })
            .collect();
        for chunk in all.chunks(3000) {
            publish(port, &format!("{t}/plant-7/telemetry"), chunk);
        }
    });
    // The sink creates the table when it opens: until then, no rows.
    let count = || pg.count("kept");
    let expected = (0..N).filter(|i| i % 3 != 0).count();
    for kill in 1..=2 {
        let at = kill * expected / 4;
        wait_until(60, "rows to arrive", || count() >= at);
        let st = Command::new("kill")
            .args(["-KILL", &run.child.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
        run.child.wait().unwrap();
        run = start(&file, dir.path(), &[]);
    }
    publisher.join().unwrap();
    wait_until(60, "every row", || count() >= expected);
    let (status, err) = run.stop();
    assert!(status.success(), "{err}");
    assert_eq!(count(), expected);
    assert_eq!(pg.psql("SELECT count(*) FROM kept WHERE seq % 3 = 0"), "0");
    assert_eq!(
        pg.psql("SELECT count(DISTINCT seq) FROM kept"),
        expected.to_string()
    );
    assert_eq!(
        pg.psql("SELECT device_id || ',' || site || ',' || tenths FROM kept WHERE seq = 12346"),
        "d6,plant-7,1235"
    );
}

/// Rows a query cannot compute go to the source's dead-letter topic with
/// their payload and the reason, confirmed before their messages are
/// acknowledged; the other rows go on.
#[test]
fn rows_that_fail_go_to_the_dead_letter_topic() {
    let broker = Mosquitto::start();
    let dir = testkit::TempDir::new().unwrap();
    let topic = unique_id("sqldlq");
    let sql = format!(
        "CREATE TABLE t (seq BIGINT, code TEXT) WITH (connector = 'mqtt', type = 'source', url = '{}', topic = '{topic}/in', qos = 'AtLeastOnce', dead_letter_topic = '{topic}/dlq', protocol = '3.1.1');
         CREATE TABLE f WITH (connector = 'file', path = 'out.jsonl');
         INSERT INTO f SELECT seq, CAST(code AS BIGINT) AS code FROM t;",
        broker.url()
    );
    let file = write(dir.path(), "dlq.sql", &sql);
    let dlq = Command::new("mosquitto_sub")
        .args([
            "-p",
            &broker.port.to_string(),
            "-t",
            &format!("{topic}/dlq"),
            "-q",
            "1",
            "-C",
            "10",
            "-W",
            "60",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut run = start(&file, dir.path(), &[]);
    run.wait_subscribed(1);
    // mosquitto_sub subscribed well before: it started first.
    const N: usize = 100;
    let lines: Vec<String> = (0..N)
        .map(|i| {
            let code = if i % 10 == 3 {
                "x".to_string()
            } else {
                i.to_string()
            };
            format!(r#"{{"seq":{i},"code":"{code}"}}"#)
        })
        .collect();
    publish(broker.port, &format!("{topic}/in"), &lines);
    let dead = dlq.wait_with_output().unwrap();
    assert!(dead.status.success(), "dead letters did not arrive");
    let dead: Vec<Value> = text(&dead.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(dead.len(), 10);
    for (k, d) in dead.iter().enumerate() {
        let i = k * 10 + 3;
        assert_eq!(d["original_topic"], format!("{topic}/in"));
        assert_eq!(d["payload"], lines[i].as_str());
        assert!(d["error"].as_str().unwrap().contains("Cannot cast"), "{d}");
    }
    let out = dir.path().join("out.jsonl");
    wait_until(30, "90 rows", || {
        std::fs::read_to_string(&out)
            .unwrap_or_default()
            .lines()
            .count()
            >= 90
    });
    let (status, err) = run.stop();
    assert!(status.success(), "{err}");
    assert!(err.contains(&format!("{N} records acknowledged")), "{err}");
    let rows: Vec<Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let expected: Vec<Value> = (0..N)
        .filter(|i| i % 10 != 3)
        .map(|i| json!({"seq": i, "code": i}))
        .collect();
    assert_eq!(rows, expected);
}

/// One reading of the windowed tests: device, event time (ms), temperature.
#[derive(Clone)]
struct Reading {
    dev: String,
    ts: i64,
    temp: f64,
}

impl Reading {
    fn json(&self) -> String {
        format!(
            r#"{{"device_id":"{}","ts":{},"temperature":{:?}}}"#,
            self.dev, self.ts, self.temp
        )
    }
}

/// 2026-11-23T10:00:00Z in ms.
const T0_MS: i64 = 1_795_428_000_000;

/// `n` readings every `step` ms over 4 devices, every 97th (after the
/// first 300) 8 s in the past: behind the 2 s watermark, late.
fn readings(n: usize, step: i64) -> Vec<Reading> {
    (0..n)
        .map(|i| {
            let late = i > 300 && i % 97 == 50;
            Reading {
                dev: format!("d{}", i % 4),
                ts: T0_MS + i as i64 * step - if late { 8000 } else { 0 },
                temp: ((i * 37) % 400) as f64 / 10.0 - 10.0,
            }
        })
        .collect()
}

/// What `TUMBLE(INTERVAL '<width> ms') … GROUP BY window, device_id` with
/// a 2 s watermark gives, row by row as the stage reads them: per closed
/// window and device `start_ms|device|count|avg|min|max`, sorted; and the
/// late readings.
fn window_reference(rs: &[Reading], width: i64) -> (Vec<String>, Vec<Reading>) {
    window_reference_delayed(rs, width, 2000)
}

/// The same with the watermark `delay` ms behind.
fn window_reference_delayed(rs: &[Reading], width: i64, delay: i64) -> (Vec<String>, Vec<Reading>) {
    let mut wm = i64::MIN;
    let mut late = Vec::new();
    let mut w: std::collections::BTreeMap<(i64, String), (i64, f64, f64, f64)> =
        std::collections::BTreeMap::new();
    for r in rs {
        if r.ts < wm {
            late.push(r.clone());
            continue;
        }
        // The value as the source's JSON decoder reads the text (serde_json
        // without float_roundtrip may be one ulp off the nearest double).
        let temp: f64 = serde_json::from_str(&format!("{:?}", r.temp)).unwrap();
        let r = &Reading { temp, ..r.clone() };
        let s = r.ts.div_euclid(width) * width;
        let a = w
            .entry((s, r.dev.clone()))
            .or_insert((0, 0.0, f64::INFINITY, f64::NEG_INFINITY));
        a.0 += 1;
        a.1 += r.temp;
        a.2 = a.2.min(r.temp);
        a.3 = a.3.max(r.temp);
        wm = wm.max(r.ts - delay);
    }
    let rows = w
        .into_iter()
        .filter(|((s, _), _)| s + width <= wm)
        .map(|((s, d), (n, sum, lo, hi))| format!("{s}|{d}|{n}|{}|{lo}|{hi}", sum / n as f64))
        .collect();
    (rows, late)
}

/// The window table as `start_ms|device|count|avg|min|max` lines, sorted
/// (floats parsed and printed as Rust does, to compare exactly).
fn window_table(pg: &testkit::Postgres, table: &str) -> Vec<String> {
    let text = pg.psql(&format!(
        "SELECT (extract(epoch FROM window_start) * 1000)::bigint, device_id, n, mean, lo, hi FROM {table} \
         WHERE window_end - window_start = interval '10 seconds'"
    ));
    let mut rows: Vec<String> = text
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split('|').collect();
            let x = |s: &str| s.parse::<f64>().unwrap_or_else(|e| panic!("{l}: {e}"));
            format!(
                "{}|{}|{}|{}|{}|{}",
                f[0],
                f[1],
                f[2],
                x(f[3]),
                x(f[4]),
                x(f[5])
            )
        })
        .collect();
    rows.sort();
    rows
}

fn window_sql(topic: &str, port: u16, url: &str, extra: &str) -> String {
    format!(
        r#"
CREATE TABLE readings (
    device_id TEXT,
    ts TIMESTAMP,
    temperature DOUBLE,
    WATERMARK FOR ts AS ts - INTERVAL '2 seconds'
) WITH (
    connector = 'mqtt', type = 'source', url = 'tcp://127.0.0.1:{port}',
    client_prefix = '{topic}', clean_start = 'false', reconnect_interval = '0.2',
    topic = '{topic}/in', qos = 'AtLeastOnce', format = 'json',
    state_dir = 'state'{extra}
);
CREATE TABLE db WITH (connector = 'postgres', url = '{url}', table = 'win', create_table = 'true',
    primary_key = 'window_start, device_id');
INSERT INTO db
SELECT TUMBLE(INTERVAL '10 seconds') AS window, device_id, COUNT(*) AS n, AVG(temperature) AS mean,
       MIN(temperature) AS lo, MAX(temperature) AS hi
FROM readings GROUP BY window, device_id;
"#
    )
}

/// A tumbling window into PostgreSQL over MQTT 3.1.1: every window
/// exactly as the test computes it, late readings on the dead-letter topic
/// with their payload and counted, every message acknowledged.
#[test]
fn windowed_query_into_postgres_is_exact_and_late_rows_are_dead_lettered() {
    let broker = Mosquitto::start();
    let pg = testkit::Postgres::start();
    let dir = testkit::TempDir::new().unwrap();
    let topic = unique_id("sqlwin");
    let sql = window_sql(
        &topic,
        broker.port,
        &pg.url(),
        // The 3.1.1 dead letter: a JSON envelope (MQTT 5: user properties).
        &format!(", dead_letter_topic = '{topic}/late', protocol = '3.1.1'"),
    );
    let file = write(dir.path(), "w.sql", &sql);
    let check = mqlink().arg("validate").arg(&file).output().unwrap();
    assert!(check.status.success(), "{}", text(&check.stderr));

    const N: usize = 800;
    // 100 ms apart: 80 s of event time, 8 windows of 10 s.
    let mut rs = readings(N, 100);
    // The last one closes every window before it.
    rs.push(Reading {
        dev: "d0".into(),
        ts: T0_MS + 200_000,
        temp: 0.0,
    });
    let (expected, late) = window_reference(&rs, 10_000);
    assert_eq!(expected.len(), 32);
    assert_eq!(late.len(), 5);

    let dlq = Command::new("mosquitto_sub")
        .args([
            "-p",
            &broker.port.to_string(),
            "-t",
            &format!("{topic}/late"),
        ])
        .args(["-q", "1", "-C", &late.len().to_string(), "-W", "90"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let http = testkit::free_port();
    let listen = format!("127.0.0.1:{http}");
    let mut run = start_with(&file, dir.path(), &[], &["--http-listen", &listen]);
    run.wait_subscribed(1);
    let lines: Vec<String> = rs.iter().map(Reading::json).collect();
    publish(broker.port, &format!("{topic}/in"), &lines);
    let count = || pg.count("win");
    wait_until(90, "every window", || count() >= expected.len());
    let dead = dlq.wait_with_output().unwrap();
    assert!(dead.status.success(), "dead letters did not arrive");
    // Counted: Laminar's status table (mqlink query), the source's metric.
    let status = mqlink()
        .args(["query", "--url", &format!("http://{listen}"), "--json"])
        .arg("SELECT late, dead_lettered FROM system.connector_status WHERE kind = 'source'")
        .output()
        .unwrap();
    assert!(status.status.success(), "{}", text(&status.stderr));
    let n = late.len();
    assert_eq!(
        serde_json::from_str::<Value>(text(&status.stdout).trim()).unwrap(),
        json!({"late": n, "dead_lettered": n})
    );
    let (_, metrics) = testkit::http_get(http, "/metrics").unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("mqlink_source_late_rows_total{")
                && l.ends_with(&format!(" {n}"))),
        "{metrics}"
    );
    let (status, err) = run.stop();
    assert!(status.success(), "{err}");
    assert_eq!(window_table(&pg, "win"), expected);
    let dead: Vec<Value> = text(&dead.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let payloads: Vec<&str> = dead
        .iter()
        .map(|d| d["payload"].as_str().unwrap())
        .collect();
    let want: Vec<String> = late.iter().map(Reading::json).collect();
    assert_eq!(payloads, want);
    for d in &dead {
        assert!(d["error"].as_str().unwrap().starts_with("late: "), "{d}");
    }
    // Logged, one line each.
    let logged = err
        .lines()
        .filter(|l| l.contains("Record dead-lettered.") && l.contains("late: event time"))
        .count();
    assert_eq!(logged, late.len(), "{err}");
    // Every message acknowledged, the late ones too.
    assert!(
        err.contains(&format!("{} records acknowledged", rs.len())),
        "{err}"
    );
    assert!(
        dir.path().join("state/readings.window").exists(),
        "no state file"
    );

    // Another query on the same state: the source stops at once and names
    // the file (mqlink run fails).
    let other = write(
        dir.path(),
        "w.sql",
        &sql.replace("MAX(temperature)", "SUM(temperature)"),
    );
    let mut run = start(&other, dir.path(), &[]);
    wait_until(30, "mqlink run to stop", || {
        run.child.try_wait().unwrap().is_some()
    });
    let (status, err) = run.stop_exited();
    assert!(!status.success(), "{err}");
    assert!(
        err.contains("state/readings.window") && err.contains("another query"),
        "{err}"
    );
}

/// SIGKILL of `mqlink run` twice during a windowed query into PostgreSQL
/// (MQTT 5, persistent session): the table ends up exactly the reference's
/// windows, one row each.
///
/// Each kill comes while messages are held (sent after the last
/// checkpoint, unacknowledged) and a window is open across that checkpoint:
/// its first part comes back from the state file, its second part from the
/// broker's redelivery; the second kill lets that window be emitted first,
/// so it is emitted again after the restart with the same key. (A kill
/// right after a checkpoint, before the broker has its acknowledgements,
/// is `lost_acknowledgements` below.)
#[test]
fn sigkill_twice_during_a_windowed_query_gives_the_reference() {
    let broker = Mosquitto::start();
    let pg = testkit::Postgres::start();
    let dir = testkit::TempDir::new().unwrap();
    let topic = unique_id("sqlwinkill");
    let sql = window_sql(
        &topic,
        broker.port,
        &pg.url(),
        ", protocol = '5', checkpoint_interval = '5 s'",
    );
    let file = write(dir.path(), "k.sql", &sql);
    const N: usize = 24_000;
    // 25 ms apart: 600 s of event time, 60 windows of 10 s (400 readings),
    // 4 devices.
    let mut rs = readings(N, 25);
    rs.push(Reading {
        dev: "d0".into(),
        ts: T0_MS + 1_000_000,
        temp: 0.0,
    });
    let (expected, late) = window_reference(&rs, 10_000);
    assert_eq!(expected.len(), 240);
    assert!(late.len() > 200, "{}", late.len());
    let lines: Vec<String> = rs.iter().map(Reading::json).collect();
    let send = |from: usize, to: usize| {
        for chunk in lines[from..to].chunks(2000) {
            publish(broker.port, &format!("{topic}/in"), chunk);
        }
    };
    let count = || pg.count("win");
    let state = dir.path().join("state/readings.window");
    let age = || {
        std::fs::metadata(&state)
            .and_then(|m| m.modified())
            .ok()
            .map(|t| (t, t.elapsed().unwrap_or_default()))
    };

    let mut run = start(&file, dir.path(), &[]);
    run.wait_subscribed(1);
    let mut next = 0;
    // (end of the part before the checkpoint: mid-window; held readings:
    // 100 keep that window open, 400 close it).
    for (kill, (pause, held)) in [(8_200, 100), (16_200, 400)].into_iter().enumerate() {
        send(next, pause);
        let sent = std::time::SystemTime::now();
        // The idle checkpoint after the pause, its acknowledgements gone.
        wait_until(60, "a checkpoint after the pause", || {
            age().is_some_and(|(t, a)| t >= sent && a >= Duration::from_millis(300))
        });
        let windows = count();
        assert!(windows < pause / 100, "{windows}");
        send(pause, pause + held);
        run.child.kill().unwrap();
        run.child.wait().unwrap();
        assert!(count() < expected.len(), "kill {kill}");
        next = pause + held;
        run = start(&file, dir.path(), &[]);
    }
    send(next, lines.len());
    wait_until(120, "every window", || count() >= expected.len());
    let (status, err) = run.stop();
    assert!(status.success(), "{err}");
    let got = window_table(&pg, "win");
    let extra: Vec<&String> = got.iter().filter(|r| !expected.contains(r)).collect();
    let missing: Vec<&String> = expected.iter().filter(|r| !got.contains(r)).collect();
    assert!(
        extra.is_empty() && missing.is_empty(),
        "in the table, not the reference: {extra:?}\nin the reference, not the table: {missing:?}"
    );
}

/// A windowed query holds acknowledgements until its checkpoints; against
/// a broker set up as deployments are (a small in-flight window over MQTT
/// 3.1.1, QoS capped at 1, a packet size limit) it must still move
/// (checkpoints free the window) and give the reference's windows.
#[test]
fn windowed_query_against_a_capped_broker_is_exact() {
    let broker = Mosquitto::with(MosquittoConfig {
        extra: vec![
            "max_inflight_messages 5".into(),
            "max_qos 1".into(),
            "max_packet_size 4096".into(),
        ],
        ..Default::default()
    });
    let pg = testkit::Postgres::start();
    let dir = testkit::TempDir::new().unwrap();
    let topic = unique_id("sqlwincap");
    let file = write(
        dir.path(),
        "w.sql",
        &window_sql(&topic, broker.port, &pg.url(), ""),
    );
    let mut rs = readings(200, 100);
    rs.push(Reading {
        dev: "d0".into(),
        ts: T0_MS + 200_000,
        temp: 0.0,
    });
    let (expected, late) = window_reference(&rs, 10_000);
    assert_eq!((expected.len(), late.len()), (8, 0));
    windows_into_postgres(&file, dir.path(), broker.port, &topic, &pg, &rs, &expected);
}

/// Runs `file`, publishes `rs` to `<topic>/in`, waits for the windows in
/// table `win`, stops mqlink: the table is `expected`, every message was
/// acknowledged.
fn windows_into_postgres(
    file: &Path,
    dir: &Path,
    port: u16,
    topic: &str,
    pg: &testkit::Postgres,
    rs: &[Reading],
    expected: &[String],
) {
    let mut run = start(file, dir, &[]);
    run.wait_subscribed(1);
    let lines: Vec<String> = rs.iter().map(Reading::json).collect();
    publish(port, &format!("{topic}/in"), &lines);
    wait_until(90, "every window", || pg.count("win") >= expected.len());
    let (status, err) = run.stop();
    assert!(status.success(), "{err}");
    assert!(
        err.contains(&format!("{} records acknowledged", rs.len())),
        "{err}"
    );
    assert_eq!(window_table(pg, "win"), expected);
}

/// The crash window of a checkpoint: the state is written, then the
/// acknowledgements never reach the broker (a proxy drops what mqlink
/// sends), and mqlink is killed (`kill`) or its connection cut. The broker
/// sends that epoch's messages again, DUP set, with their packet ids; the
/// state holds them already, so they must count once: the table is the
/// reference's. `qos`: of the subscription and the publisher;
/// `parallelism`: clients of a shared subscription (packet ids are per
/// client).
fn lost_acknowledgements(protocol: &str, qos: u8, parallelism: u16, kill: bool) {
    let delay = if parallelism > 1 { 60_000 } else { 2_000 };
    let broker = Mosquitto::start();
    let proxy = testkit::CutProxy::new(broker.port);
    let pg = testkit::Postgres::start();
    let dir = testkit::TempDir::new().unwrap();
    let topic = unique_id("sqlwinack");
    let sql = window_sql(
        &topic,
        proxy.port,
        &pg.url(),
        &format!(", protocol = '{protocol}', parallelism = '{parallelism}'"),
    )
    // Two clients' streams interleave: a reading may come after later
    // ones, so the watermark allows a minute.
    .replace(
        "INTERVAL '2 seconds'",
        &format!("INTERVAL '{} seconds'", delay / 1000),
    )
    .replace(
        "'AtLeastOnce'",
        ["'AtMostOnce'", "'AtLeastOnce'", "'ExactlyOnce'"][qos as usize],
    );
    let file = write(dir.path(), "a.sql", &sql);
    // 100 ms apart: 12 windows of 10 s; the epoch ends inside one.
    let mut rs = readings(1_200, 100);
    rs.push(Reading {
        dev: "d0".into(),
        ts: T0_MS + 200_000,
        temp: 0.0,
    });
    let (expected, _) = window_reference_delayed(&rs, 10_000, delay);
    assert_eq!(expected.len(), 48);
    let lines: Vec<String> = rs.iter().map(Reading::json).collect();
    let http = testkit::free_port();
    let listen = format!("127.0.0.1:{http}");
    let args = ["--http-listen", listen.as_str()];
    let mut run = start_with(&file, dir.path(), &[], &args);
    run.wait_subscribed(1);

    proxy.mute_clients(true);
    let publish = |lines: &[String]| {
        testkit::mosquitto_pub_lines(broker.port, &format!("{topic}/in"), qos, lines)
    };
    publish(&lines[..550]);
    // Everything the broker sent (all 550 over MQTT 5; its in-flight
    // window of 20 over 3.1.1) arrived and is checkpointed: the source
    // acknowledges what a window holds only once its state is written.
    let received = "mqlink_source_messages_received_total";
    let acknowledged = "mqlink_source_records_acknowledged_total";
    let mut seen = (0, Instant::now());
    wait_until(30, "the messages checkpointed", || {
        let n = metric(http, received);
        if n != seen.0 {
            seen = (n, Instant::now());
        }
        n > 0 && seen.1.elapsed() > Duration::from_millis(500) && metric(http, acknowledged) == n
    });
    let in_state = seen.0;
    eprintln!("MQTT {protocol}, QoS {qos}, {parallelism} client(s): {in_state} messages checkpointed, their acknowledgements dropped");
    assert!(dir.path().join("state/readings.window").exists());
    let run = if kill {
        run.child.kill().unwrap();
        run.child.wait().unwrap();
        proxy.mute_clients(false);
        let mut run = start_with(&file, dir.path(), &[], &args);
        run.wait_subscribed(1);
        run
    } else {
        proxy.mute_clients(false);
        assert!(proxy.cut() > 0);
        run
    };
    // The window's redelivery check skips the epoch, or, with the local
    // buffer (on by default on 3.1.1), the buffer recognises the broker's
    // resend of what it holds and does not append it again.
    let skipped = "mqlink_source_redeliveries_skipped_total";
    let resent = "mqlink_source_buffer_resent_total";
    let absorbed = || metric(http, skipped) + metric(http, resent);
    wait_until(30, "the redelivered epoch", || absorbed() >= in_state);
    // The last reading closes every window: sent once mqlink has all the
    // others (over two clients it could overtake some, which would be late).
    let last = lines.len() - 1;
    publish(&lines[550..last]);
    // Over a cut connection the epoch is received again, unless the buffer
    // recognised it (then it is not received twice).
    let seen_before = if kill {
        0
    } else {
        (in_state - metric(http, resent)) as usize
    };
    wait_until(60, "every reading but the last", || {
        metric(http, received) as usize >= seen_before + last
    });
    publish(&lines[last..]);
    let count = || pg.count("win");
    wait_until(90, "every window", || count() >= expected.len());
    assert_eq!(absorbed(), in_state);
    let by_window = metric(http, skipped) > 0;
    let (status, err) = run.stop();
    assert!(status.success(), "{err}");
    assert!(
        !by_window || err.contains("Redelivered messages the window state already holds"),
        "{err}"
    );
    assert_eq!(window_table(&pg, "win"), expected);
}

#[test]
fn sigkill_after_a_checkpoint_before_its_acknowledgements_counts_once() {
    lost_acknowledgements("5", 1, 1, true);
}

#[test]
fn a_cut_after_a_checkpoint_before_its_acknowledgements_counts_once() {
    lost_acknowledgements("3.1.1", 1, 1, false);
}

/// QoS 2: the lost acknowledgements are PUBRECs; the broker resends the
/// PUBLISH (DUP set) of each.
#[test]
fn qos2_sigkill_after_a_checkpoint_before_its_acknowledgements_counts_once() {
    lost_acknowledgements("5", 2, 1, true);
}

/// Two clients on a shared subscription, each with its own packet ids.
#[test]
fn shared_subscription_sigkill_after_a_checkpoint_before_its_acknowledgements_counts_once() {
    lost_acknowledgements("5", 1, 2, true);
}

/// Flink's window TVF into PostgreSQL over a real broker: the windows of
/// the group-window reference, keyed on (window_start, device_id); the
/// example file of the TVF form validates.
#[test]
fn flink_window_tvf_into_postgres_is_exact() {
    let dir = testkit::TempDir::new().unwrap();
    let example = write(
        dir.path(),
        "tvf-example.sql",
        &example("flink-tvf-window.sql"),
    );
    let check = mqlink().arg("validate").arg(&example).output().unwrap();
    assert!(check.status.success(), "{}", text(&check.stderr));

    let broker = Mosquitto::start();
    let pg = testkit::Postgres::start();
    let topic = unique_id("sqltvf");
    let sql = window_sql(&topic, broker.port, &pg.url(), "");
    let (tables, _) = sql.split_once("INSERT INTO db").unwrap();
    let sql = format!(
        "{tables}INSERT INTO db
SELECT window_start, window_end, device_id, COUNT(*) AS n, AVG(temperature) AS mean,
       MIN(temperature) AS lo, MAX(temperature) AS hi
FROM TABLE(TUMBLE(TABLE readings, DESCRIPTOR(ts), INTERVAL '10' SECOND))
GROUP BY window_start, window_end, device_id;
"
    );
    let file = write(dir.path(), "tvf.sql", &sql);
    let mut rs = readings(400, 100);
    rs.push(Reading {
        dev: "d0".into(),
        ts: T0_MS + 200_000,
        temp: 0.0,
    });
    let (expected, late) = window_reference(&rs, 10_000);
    assert_eq!((expected.len(), late.len()), (16, 1));
    windows_into_postgres(&file, dir.path(), broker.port, &topic, &pg, &rs, &expected);
}

/// A dead-letter topic the broker refuses (an ACL, MQTT 5 answers the
/// PUBLISH with PUBACK 0x87): the record is neither processed nor
/// dead-lettered, so its message must not be acknowledged. The source
/// stops; a run with a dead-letter topic the broker takes then gets that
/// record again, and every good row reaches the file.
#[test]
fn a_refused_dead_letter_leaves_its_message_unacknowledged() {
    let topic = unique_id("sqldlqacl");
    let acl = testkit::TempDir::new().unwrap();
    let acl_file = write(
        acl.path(),
        "acl",
        &format!("topic readwrite {topic}/in\ntopic readwrite {topic}/taken\n"),
    );
    let broker = Mosquitto::with(MosquittoConfig {
        extra: vec![format!("acl_file {}", acl_file.display())],
        ..Default::default()
    });
    let dir = testkit::TempDir::new().unwrap();
    let sql = |dlq: &str| {
        format!(
            "CREATE TABLE t (seq BIGINT, code TEXT) WITH (connector = 'mqtt', type = 'source', url = '{}', \
             protocol = '5', client_prefix = '{topic}', clean_start = 'false', \
             topic = '{topic}/in', qos = 'AtLeastOnce', dead_letter_topic = '{topic}/{dlq}');
             CREATE TABLE f WITH (connector = 'file', path = 'out.jsonl');
             INSERT INTO f SELECT seq, CAST(code AS BIGINT) AS code FROM t;",
            broker.url()
        )
    };
    let lines: Vec<String> = (0..40)
        .map(|i| {
            let code = if i % 20 == 7 {
                "x".to_string()
            } else {
                i.to_string()
            };
            format!(r#"{{"seq":{i},"code":"{code}"}}"#)
        })
        .collect();

    // (Subscribed long before anything is dead-lettered there.)
    let (dlq, dead) = testkit::mosquitto_sub(&[
        "-p",
        &broker.port.to_string(),
        "-t",
        &format!("{topic}/taken"),
        "-q",
        "1",
        "-C",
        "2",
        "-W",
        "90",
    ]);

    // The refused topic: the source fails at the first bad row.
    let refused = write(dir.path(), "refused.sql", &sql("refused"));
    let mut run = start(&refused, dir.path(), &[]);
    run.wait_subscribed(1);
    publish(broker.port, &format!("{topic}/in"), &lines);
    wait_until(30, "mqlink run to stop", || {
        run.child.try_wait().unwrap().is_some()
    });
    let (status, err) = run.stop_exited();
    assert!(!status.success(), "{err}");
    assert!(
        err.contains("The dead-letter topic did not take a record"),
        "{err}"
    );

    // A topic the broker takes: the bad rows come again, the first one too.
    let taken = write(dir.path(), "taken.sql", &sql("taken"));
    let mut run = start(&taken, dir.path(), &[]);
    run.wait_subscribed(1);
    // MQTT 5: the payload as it was, the reason in user properties.
    let dead: Vec<String> = (0..2)
        .map(|_| {
            dead.recv_timeout(Duration::from_secs(60))
                .expect("dead letters")
        })
        .collect();
    let _ = dlq.wait_with_output();
    assert_eq!(dead, [lines[7].as_str(), lines[27].as_str()]);
    let out = dir.path().join("out.jsonl");
    let seqs = || {
        let mut s: Vec<i64> = std::fs::read_to_string(&out)
            .unwrap_or_default()
            .lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["seq"]
                    .as_i64()
                    .unwrap()
            })
            .collect();
        s.sort();
        s.dedup();
        s
    };
    wait_until(30, "every good row", || seqs().len() >= 38);
    let (status, err) = run.stop();
    assert!(status.success(), "{err}");
    let want: Vec<i64> = (0..40).filter(|i| i % 20 != 7).collect();
    assert_eq!(seqs(), want);
}
