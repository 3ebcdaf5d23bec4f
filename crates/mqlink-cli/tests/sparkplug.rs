//! Sparkplug B: mqlink as a host application between an edge node that no
//! one here wrote (pysparkplug's payloads, paho-mqtt, from PyPI) and a real
//! PostgreSQL, through a real Mosquitto. DATA by alias gets its names from
//! the BIRTH; a lost DATA (a seq gap) makes mqlink ask for one rebirth,
//! which the edge node answers; no row ever carries a guessed name; the
//! edge node's NDEATH (its will, after SIGKILL) marks its metrics stale.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use testkit::{free_port, http_get, lines_of, mosquitto_sub, unique_id, wait_until, write};
use testkit::{Mosquitto, Postgres, SparkplugHost};

fn python() -> PathBuf {
    testkit::sparkplug_python()
}

fn script() -> PathBuf {
    testkit::sparkplug_script("edge_node.py")
}

fn expect_line(rx: &Receiver<String>, want: &str, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(l) if l == want => return,
            Ok(_) => {}
            Err(e) => panic!("waiting for {want}: {e}"),
        }
    }
    panic!("no {want} within {secs} s");
}

fn wait_ready(http: u16, run: &mut Child) {
    wait_until(30, "mqlink ready", || {
        assert!(run.try_wait().unwrap().is_none(), "mqlink exited");
        http_get(http, "/ready").is_some_and(|(c, _)| c == 200)
    });
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn an_edge_node_by_alias_into_postgres_with_one_rebirth_after_a_gap_and_stale_on_death() {
    let python = python();
    let broker = Mosquitto::start();
    let pg = Postgres::start();
    let dir = testkit::TempDir::new().unwrap();
    let group = unique_id("plant");
    let http = free_port();
    let cfg = write(
        dir.path(),
        "sparkplug.toml",
        &format!(
            r#"
[connections.b]
broker = "mqtt://127.0.0.1:{port}"
[sources.plant]
type = "mqtt"
connection = "b"
topics = ["spBv1.0/{group}/#"]
format = "sparkplug_b"
dead_letter_topic = "{group}/dead"
sparkplug.host_id = "{group}-host"
[sinks.db]
type = "postgres"
inputs = ["plant"]
url = "{url}"
table = "metrics"
create_table = true
[http]
listen = "127.0.0.1:{http}"
"#,
            port = broker.port,
            url = pg.url()
        ),
    );
    let (dead_sub, dead) = mosquitto_sub(&[
        "-p",
        &broker.port.to_string(),
        "-t",
        &format!("{group}/dead"),
        "-V",
        "5",
        "-F",
        "%P",
    ]);
    let _dead_sub = Killed(dead_sub);
    let mut run = Killed(
        Command::new(env!("CARGO_BIN_EXE_mqlink"))
            .arg("run")
            .arg(&cfg)
            .arg("--quiet")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_ready(http, &mut run.0);
    let state = |secs: &str| {
        let out = Command::new("mosquitto_sub")
            .args([
                "-p",
                &broker.port.to_string(),
                "-t",
                &format!("spBv1.0/STATE/{group}-host"),
                "-C",
                "1",
                "-W",
                secs,
            ])
            .output()
            .unwrap();
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap_or_default()
    };
    assert_eq!(
        state("5")["online"],
        true,
        "primary host STATE online, retained"
    );

    let mut edge = Killed(
        Command::new(&python)
            .arg(script())
            .args(["127.0.0.1", &broker.port.to_string(), &group, "edge1"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let out = lines_of(edge.0.stdout.take().unwrap());
    expect_line(&out, "BIRTH", 20);
    expect_line(&out, "REBIRTH", 30);
    expect_line(&out, "DONE", 20);
    // 5 + 5 NBIRTH rows, 5 NDATA of 4 metrics, 3 NDATA of 1.
    wait_until(20, "33 rows", || pg.count("metrics") == 33);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        out.try_iter().all(|l| l != "REBIRTH"),
        "one rebirth request"
    );

    let q = |sql: &str| pg.psql(sql);
    assert_eq!(
        q("SELECT string_agg(DISTINCT name, ',' ORDER BY name) FROM metrics"),
        "Count,Label,Running,Temperature,bdSeq",
        "every row is named from a BIRTH"
    );
    assert_eq!(
        q("SELECT string_agg(int_value::text, ',' ORDER BY timestamp, seq) FROM metrics WHERE name = 'Count' AND message_type = 'NDATA'"),
        "1,2,3,4,5,101,102,103",
        "seq 7 after the lost seq 6 is refused, not written"
    );
    assert_eq!(
        q("SELECT string_agg(int_value::text, ',' ORDER BY timestamp) FROM metrics WHERE name = 'Count' AND message_type = 'NBIRTH'"),
        "0,7"
    );
    assert_eq!(
        q("SELECT datatype, double_value, alias, seq, bdseq FROM metrics WHERE name = 'Temperature' AND message_type = 'NDATA' AND seq = 3"),
        "Double|23|1|3|3"
    );
    assert_eq!(
        q("SELECT string_agg(boolean_value::text || ':' || (value::text), ',' ORDER BY seq) FROM metrics WHERE name = 'Running' AND message_type = 'NDATA'"),
        "false:false,true:true,false:false,true:true,false:false"
    );
    assert_eq!(
        q("SELECT string_value FROM metrics WHERE name = 'Label' AND seq = 5"),
        "l5"
    );
    assert_eq!(q("SELECT count(*) FROM metrics WHERE is_stale OR timestamp IS NULL OR group_id <> '{group}'".replace("{group}", &group).as_str()), "0");
    let letter = dead
        .recv_timeout(Duration::from_secs(5))
        .expect("a dead letter");
    assert!(letter.contains("seq 7 where 6 was next"), "{letter}");

    // SIGKILL: the broker publishes the edge node's NDEATH will.
    let _ = edge.0.kill();
    wait_until(20, "stale rows", || pg.count("metrics") == 38);
    assert_eq!(
        q("SELECT string_agg(name || ':' || is_stale || ':' || is_null || ':' || coalesce(value::text, 'NULL'), ',' ORDER BY name) FROM metrics WHERE message_type = 'NDEATH'"),
        "Count:true:true:NULL,Label:true:true:NULL,Running:true:true:NULL,Temperature:true:true:NULL,bdSeq:true:true:NULL"
    );

    // mqlink killed: its will says the primary host is offline.
    let _ = run.0.kill();
    wait_until(10, "STATE offline", || state("2")["online"] == false);
}

/// The same edge node read by a SQL file: the declared columns are picked
/// from the Sparkplug B row by name.
#[test]
fn a_sql_source_table_reads_sparkplug_columns_by_name() {
    let python = python();
    let broker = Mosquitto::start();
    let dir = testkit::TempDir::new().unwrap();
    let group = unique_id("sqlplant");
    let sql = write(
        dir.path(),
        "sparkplug.sql",
        &format!(
            r#"
CREATE TABLE plant (
    int_value BIGINT,
    name TEXT,
    message_type TEXT
) WITH (
    connector = 'mqtt',
    type = 'source',
    url = 'tcp://127.0.0.1:{port}',
    topic = 'spBv1.0/{group}/#',
    format = 'sparkplug_b'
);
CREATE TABLE counts WITH (connector = 'file', path = 'out/counts.jsonl');
INSERT INTO counts SELECT name, int_value FROM plant WHERE message_type = 'NDATA' AND name = 'Count';
"#,
            port = broker.port
        ),
    );
    let mut run = Killed(
        Command::new(env!("CARGO_BIN_EXE_mqlink"))
            .arg("run")
            .arg(&sql)
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let err = lines_of(run.0.stderr.take().unwrap());
    wait_until(30, "subscribed", || {
        err.try_iter().any(|l| l.contains("Subscribed"))
    });
    let mut edge = Killed(
        Command::new(&python)
            .arg(script())
            .args(["127.0.0.1", &broker.port.to_string(), &group, "edge1"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let out = lines_of(edge.0.stdout.take().unwrap());
    expect_line(&out, "DONE", 40);
    let file = dir.path().join("out/counts.jsonl");
    let read = || std::fs::read_to_string(&file).unwrap_or_default();
    wait_until(20, "8 rows", || read().lines().count() == 8);
    let rows: Vec<serde_json::Value> = read()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let counts: Vec<i64> = rows
        .iter()
        .map(|r| r["int_value"].as_i64().unwrap())
        .collect();
    assert_eq!(counts, [1, 2, 3, 4, 5, 101, 102, 103]);
    let _ = edge.0.kill();
}

/// The host state needs one reader, and its options go with its format:
/// `mqlink validate` names the key.
#[test]
fn validate_names_the_key_of_a_sparkplug_source_that_cannot_work() {
    let dir = testkit::TempDir::new().unwrap();
    let cases = [
        (
            "parallelism = 2",
            "sources.plant.parallelism: with format = \"sparkplug_b\": must be 1",
        ),
        (
            "share_group = \"g\"",
            "sources.plant.share_group: with format = \"sparkplug_b\"",
        ),
        (
            "schema = { a = \"text\" }",
            "sources.plant.schema: with format = \"sparkplug_b\"",
        ),
    ];
    for (extra, want) in cases {
        let file = write(
            dir.path(),
            "v.toml",
            &format!(
                r#"
[connections.b]
broker = "mqtt://127.0.0.1:1883"
[sources.plant]
type = "mqtt"
connection = "b"
topics = ["spBv1.0/#"]
format = "sparkplug_b"
{extra}
[sinks.f]
type = "file"
inputs = ["plant"]
path = "out.jsonl"
"#
            ),
        );
        let out = Command::new(env!("CARGO_BIN_EXE_mqlink"))
            .arg("validate")
            .arg(&file)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{extra}: {err}");
        assert!(err.contains(want), "{extra}: {err}");
    }
    let file = write(
        dir.path(),
        "w.toml",
        "[connections.b]\nbroker = \"mqtt://127.0.0.1:1883\"\n[sources.s]\ntype = \"mqtt\"\nconnection = \"b\"\ntopics = [\"t\"]\nsparkplug.host_id = \"h\"\n[sinks.f]\ntype = \"file\"\ninputs = [\"s\"]\npath = \"o.jsonl\"\n",
    );
    let out = Command::new(env!("CARGO_BIN_EXE_mqlink"))
        .arg("validate")
        .arg(&file)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("sources.s.sparkplug: goes with format = \"sparkplug_b\""),
        "{err}"
    );
}

/// `mqlink sub --format sparkplug_b`: one JSON line per metric, of a
/// retained NBIRTH encoded by pysparkplug.
#[test]
fn sub_prints_one_json_line_per_metric() {
    let python = python();
    let broker = Mosquitto::start();
    let dir = testkit::TempDir::new().unwrap();
    let group = unique_id("subplant");
    let birth = dir.path().join("nbirth.bin");
    let ok = Command::new(&python)
        .args(["-c", "import sys\nfrom pysparkplug import DataType, Metric, NBirth\nm = lambda n, a, t, v: Metric(timestamp=1700000000000, name=n, alias=a, datatype=t, value=v)\nsys.stdout.buffer.write(NBirth(timestamp=1700000000000, seq=0, metrics=(m('Speed', 1, DataType.DOUBLE, 2.5), m('Mode', 2, DataType.STRING, 'auto'))).encode(include_dtypes=True))"])
        .stdout(std::fs::File::create(&birth).unwrap())
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let topic = format!("spBv1.0/{group}/NBIRTH/e");
    testkit::mosquitto_pub(&[
        "-p",
        &broker.port.to_string(),
        "-t",
        &topic,
        "-r",
        "-f",
        birth.to_str().unwrap(),
    ]);
    let out = Command::new(env!("CARGO_BIN_EXE_mqlink"))
        .args([
            "sub",
            "-p",
            &broker.port.to_string(),
            "-t",
            &format!("spBv1.0/{group}/#"),
            "--format",
            "sparkplug_b",
            "-C",
            "1",
            "-W",
            "10",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2);
    assert_eq!(
        (rows[0]["name"].as_str(), rows[0]["double_value"].as_f64()),
        (Some("Speed"), Some(2.5))
    );
    assert_eq!(
        (rows[1]["name"].as_str(), rows[1]["string_value"].as_str()),
        (Some("Mode"), Some("auto"))
    );
    assert_eq!(rows[1]["edge_node_id"], "e");
}

/// mqlink as an edge node: JSON readings from MQTT published as Sparkplug
/// B births and DATA by alias, read by a host application no one here
/// wrote (pysparkplug's decoder): the right names and values, seq without
/// gaps, a rebirth request answered with every last value, a reading of
/// the wrong type dead-lettered alone, and the NDEATH (the will, after
/// SIGKILL) with the births' bdSeq.
#[test]
fn an_edge_node_read_by_pysparkplug_with_names_a_rebirth_and_its_death() {
    let broker = Mosquitto::start();
    let dir = testkit::TempDir::new().unwrap();
    let group = unique_id("edge");
    let http = free_port();
    let cfg = write(
        dir.path(),
        "edge.toml",
        &format!(
            r#"
[connections.b]
broker = "mqtt://127.0.0.1:{port}"
[sources.readings]
type = "mqtt"
connection = "b"
topics = ["{group}/in"]
[sinks.edge]
type = "mqtt"
connection = "b"
inputs = ["readings"]
format = "sparkplug_b"
sparkplug = {{ group_id = "{group}", edge_node_id = "mqlink", device_id = "{{device_id}}", timestamp = "ts" }}
dead_letter_topic = "{group}/dead"
[http]
listen = "127.0.0.1:{http}"
"#,
            port = broker.port,
        ),
    );
    let host = SparkplugHost::start(broker.port, &group, "mqlink");
    let (dead_sub, dead) = mosquitto_sub(&[
        "-p",
        &broker.port.to_string(),
        "-t",
        &format!("{group}/dead"),
    ]);
    let _dead_sub = Killed(dead_sub);
    let mut run = Killed(
        Command::new(env!("CARGO_BIN_EXE_mqlink"))
            .arg("run")
            .arg(&cfg)
            .arg("--quiet")
            .spawn()
            .unwrap(),
    );
    wait_ready(http, &mut run.0);
    let reading = |i: u64, temperature: &str| {
        format!(
            r#"{{"device_id":"press","ts":{},"temperature":{temperature},"count":{i},"running":{},"motor":{{"rpm":{}}}}}"#,
            1_700_000_000_000 + i,
            i % 2 == 0,
            1000 + i
        )
    };
    let publish = |lines: Vec<String>| publish_lines(broker.port, &format!("{group}/in"), lines);
    publish(
        (0..5)
            .map(|i| reading(i, &format!("{}.5", 20 + i)))
            .collect(),
    );

    // The node is born (at connect, then with the device's metrics).
    let birth = host.next_dbirth();
    assert_eq!(birth["device"], "press");
    let names: Vec<&String> = birth["metrics"].as_object().unwrap().keys().collect();
    assert_eq!(names, ["count", "motor/rpm", "running", "temperature"]);
    for i in 0..5u64 {
        let d = host.next("data");
        assert_eq!(d["device"], "press");
        assert_eq!(d["metrics"]["count"], i, "{d}");
        assert_eq!(d["metrics"]["temperature"], 20.5 + i as f64, "{d}");
        assert_eq!(d["metrics"]["running"], i % 2 == 0, "{d}");
        assert_eq!(d["metrics"]["motor/rpm"], 1000 + i, "{d}");
    }

    // A rebirth request: NBIRTH and DBIRTH again, with the last values.
    writeln!(&host.stdin, "REBIRTH").unwrap();
    let nbirth = host.next("birth");
    assert_eq!(nbirth["kind"], "NBIRTH");
    assert_eq!(nbirth["seq"], 0);
    let bdseq = nbirth["bdseq"].clone();
    let dbirth = host.next("birth");
    assert_eq!(dbirth["kind"], "DBIRTH");
    assert_eq!(dbirth["metrics"]["count"], 4);

    // A reading of the wrong type is refused alone; the rest go on by alias.
    publish(vec![reading(5, r#""hot""#), reading(6, "26.5")]);
    assert!(dead
        .recv_timeout(Duration::from_secs(20))
        .unwrap()
        .contains("hot"));
    let d = host.next("data");
    assert_eq!(d["metrics"]["count"], 6, "{d}");
    assert_eq!(d["seq"], 2, "{d}");

    // SIGKILL: the broker publishes the will, the NDEATH with the bdSeq.
    let _ = run.0.kill();
    let death = host.next("death");
    assert_eq!(death["bdseq"], bdseq);
}

/// Lines published at QoS 1 by `mqlink pub -l`.
fn publish_lines(port: u16, topic: &str, lines: Vec<String>) {
    let mut p = Command::new(env!("CARGO_BIN_EXE_mqlink"))
        .args(["pub", "-p", &port.to_string(), "-t", topic, "-q", "1", "-l"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = p.stdin.take().unwrap();
    for l in lines {
        writeln!(stdin, "{l}").unwrap();
    }
    drop(stdin);
    assert!(p.wait().unwrap().success());
}

/// The edge node from a SQL file: a query over JSON readings (a filter
/// and a computed column) published as Sparkplug B births and DATA by
/// alias, read by pysparkplug's host application with the query's names
/// and values, in order.
#[test]
fn a_sql_query_published_as_an_edge_node_read_by_pysparkplug() {
    let broker = Mosquitto::start();
    let dir = testkit::TempDir::new().unwrap();
    let group = unique_id("sqledge");
    let sql = write(
        dir.path(),
        "edge.sql",
        &format!(
            r#"
CREATE TABLE readings (
    device_id TEXT,
    ts BIGINT,
    celsius DOUBLE,
    count BIGINT
) WITH (
    connector = 'mqtt',
    type = 'source',
    url = 'tcp://127.0.0.1:{port}',
    topic = '{group}/in',
    format = 'json'
);
CREATE TABLE scada WITH (
    connector = 'mqtt',
    type = 'sink',
    url = 'tcp://127.0.0.1:{port}',
    format = 'sparkplug_b',
    'sparkplug.group_id' = '{group}',
    'sparkplug.edge_node_id' = 'mqlink',
    'sparkplug.device_id' = '{{device_id}}',
    'sparkplug.timestamp' = 'ts'
);
INSERT INTO scada
SELECT device_id, ts, count, celsius * 9 / 5 + 32 AS fahrenheit FROM readings WHERE count > 0;
"#,
            port = broker.port
        ),
    );
    let host = SparkplugHost::start(broker.port, &group, "mqlink");
    let mut run = Killed(
        Command::new(env!("CARGO_BIN_EXE_mqlink"))
            .arg("run")
            .arg(&sql)
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let err = lines_of(run.0.stderr.take().unwrap());
    wait_until(30, "subscribed", || {
        assert!(run.0.try_wait().unwrap().is_none(), "mqlink exited");
        err.try_iter().any(|l| l.contains("Subscribed"))
    });
    let readings = (0..5)
        .map(|i| {
            format!(
                r#"{{"device_id":"oven","ts":{},"celsius":{},"count":{i}}}"#,
                1_700_000_000_000u64 + i,
                20 + 10 * i
            )
        })
        .collect();
    publish_lines(broker.port, &format!("{group}/in"), readings);

    let birth = host.next_dbirth();
    assert_eq!(birth["device"], "oven");
    let mut names: Vec<&String> = birth["metrics"].as_object().unwrap().keys().collect();
    names.sort();
    assert_eq!(names, ["count", "fahrenheit"]);
    // count 0 is filtered out by the query.
    for i in 1..5u64 {
        let d = host.next("data");
        assert_eq!(d["device"], "oven", "{d}");
        assert_eq!(d["metrics"]["count"], i, "{d}");
        assert_eq!(d["metrics"]["fahrenheit"], 68.0 + 18.0 * i as f64, "{d}");
    }
}

/// Sparkplug 3.0's bdSeq: each connection of the edge node registers an
/// NDEATH will with one more than the last, and the NBIRTH after it
/// carries the same; a cut connection's will (published by the broker)
/// matches that connection's births, and so does the last one's.
#[test]
fn each_connection_of_the_edge_node_counts_bdseq_in_its_will_and_births() {
    let broker = Mosquitto::start();
    let proxy = testkit::CutProxy::new(broker.port);
    let dir = testkit::TempDir::new().unwrap();
    let group = unique_id("bdseq");
    let cfg = write(
        dir.path(),
        "edge.toml",
        &format!(
            r#"
[connections.b]
broker = "{url}"
reconnect_interval = 0.2
[sources.readings]
type = "mqtt"
connection = "b"
topics = ["{group}/in"]
[sinks.edge]
type = "mqtt"
connection = "b"
inputs = ["readings"]
format = "sparkplug_b"
sparkplug = {{ group_id = "{group}", edge_node_id = "mqlink" }}
"#,
            url = proxy.url(),
        ),
    );
    let host = SparkplugHost::start(broker.port, &group, "mqlink");
    let mut run = Killed(
        Command::new(env!("CARGO_BIN_EXE_mqlink"))
            .arg("run")
            .arg(&cfg)
            .arg("--quiet")
            .spawn()
            .unwrap(),
    );
    let first = host.next("birth");
    assert_eq!(first["kind"], "NBIRTH");
    let b = first["bdseq"].as_u64().unwrap();
    assert!(proxy.cut() > 0);
    let death = host.next("death");
    assert_eq!(death["bdseq"], b, "the cut connection's will");
    // A resend of the cut connection's NBIRTH (QoS 1, its PUBACK lost with
    // the connection) may come first.
    let second = loop {
        let birth = host.next("birth");
        if birth["bdseq"] != b {
            break birth;
        }
    };
    assert_eq!(second["kind"], "NBIRTH");
    assert_eq!(
        second["bdseq"],
        (b + 1) % 256,
        "the next connection's births"
    );
    let _ = run.0.kill();
    let death = host.next("death");
    assert_eq!(death["bdseq"], (b + 1) % 256, "the last connection's will");
}
