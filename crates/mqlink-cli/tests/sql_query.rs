//! `mqlink query` against a running `mqlink run file.sql` and a real
//! Mosquitto: Laminar's two monitoring queries as its documentation writes
//! them, an ERROR row caused by a payload the query cannot compute, the
//! source's connection cut by killing the broker, and Laminar's metric
//! names on /metrics with the values of ours.
#![cfg(feature = "sql")]

use std::process::{Child, Command, Output, Stdio};

use serde_json::{json, Value};
use testkit::{free_port, http_get, mosquitto_pub_lines, unique_id, wait_until, Mosquitto};

fn mqlink() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mqlink"));
    c.env_remove("MQLINK_LOG").env_remove("MQLINK_URL");
    c
}

/// `mqlink run` killed when the test ends, however it ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn query(http: u16, args: &[&str]) -> Output {
    mqlink()
        .arg("query")
        .args(["--url", &format!("http://127.0.0.1:{http}")])
        .args(args)
        .output()
        .unwrap()
}

/// The rows of a query, through `mqlink query --json`.
fn rows(http: u16, sql: &str) -> Vec<Value> {
    let out = query(http, &["--json", sql]);
    assert!(
        out.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `name{labels} value` of a Prometheus text.
fn metric(text: &str, series: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

const STATUS: &str = "SELECT * FROM system.connector_status
WHERE connector_name = 'mqtt_source';";
const LOGS: &str = "SELECT * FROM system.connector_logs
WHERE connector = 'mqtt_source'
AND level = 'ERROR'
ORDER BY timestamp DESC
LIMIT 10;";

#[test]
fn the_monitoring_queries_of_a_running_pipeline() {
    let mut broker = Mosquitto::start();
    let dir = testkit::TempDir::new().unwrap();
    let http = free_port();
    let sql = format!(
        "CREATE CONNECTION mqtt_connection FROM mqtt_source WITH (broker = 'tcp://127.0.0.1:{}', client_id = '{}', reconnect_interval = 0.2);
CREATE TABLE iot_telemetry (device_id TEXT, timestamp TIMESTAMP, temperature TEXT, meta JSON) WITH (
    connector = 'mqtt_source', connection = 'mqtt_connection', topics = '[\"q/+/r\"]', qos = 1, format = 'json');
CREATE TABLE out WITH (connector = 'file', path = 'out.jsonl');
INSERT INTO out SELECT device_id, CAST(temperature AS DOUBLE) AS temp,
    meta -> 'loc' ->> 'room' AS room, json_get_int(meta, 'n') AS n, meta -> 'loc' AS loc
FROM iot_telemetry;
",
        broker.port,
        unique_id("query")
    );
    std::fs::write(dir.path().join("p.sql"), sql).unwrap();
    let log = std::fs::File::create(dir.path().join("run.log")).unwrap();
    let mut run = Running(
        mqlink()
            .args([
                "run",
                "p.sql",
                "--http-listen",
                &format!("127.0.0.1:{http}"),
            ])
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let run_log = || std::fs::read_to_string(dir.path().join("run.log")).unwrap_or_default();
    wait_until(30, "the pipeline to be ready", || {
        assert!(run.0.try_wait().unwrap().is_none(), "{}", run_log());
        http_get(http, "/ready").is_some_and(|(c, _)| c == 200)
    });

    // Two readings and one whose temperature is no number: the query
    // cannot compute it (a record fault, logged as an ERROR).
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let messages = [
        format!(
            r#"{{"device_id":"d1","timestamp":{},"temperature":"21.5","meta":{{"loc":{{"room":"hall"}},"n":3}}}}"#,
            ms - 2000
        ),
        format!(
            r#"{{"device_id":"d2","timestamp":{},"temperature":"hot","meta":{{"loc":{{"room":"lab"}},"n":4}}}}"#,
            ms - 1000
        ),
        format!(
            r#"{{"device_id":"d3","timestamp":{ms},"temperature":"19","meta":{{"loc":{{"room":"attic"}}}}}}"#
        ),
    ];
    let bytes: usize = messages.iter().map(|m| m.len()).sum();
    mosquitto_pub_lines(broker.port, "q/dev/r", 1, &messages);
    wait_until(30, "every message acknowledged", || {
        rows(
            http,
            "SELECT confirmed FROM system.connector_status WHERE name = 'iot_telemetry'",
        ) == [json!({"confirmed": 3})]
    });
    let written: Vec<Value> = std::fs::read_to_string(dir.path().join("out.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        written,
        [
            json!({"device_id":"d1","temp":21.5,"room":"hall","n":3,"loc":{"room":"hall"}}),
            json!({"device_id":"d3","temp":19.0,"room":"attic","n":null,"loc":{"room":"attic"}}),
        ]
    );

    // The health check, as written: a table as psql prints it.
    let out = query(http, &[STATUS]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].contains(" connector_name | ") && lines[0].contains("reconnect_attempts"),
        "{table}"
    );
    assert!(
        lines[1].starts_with("----") && lines[1].contains("-+-"),
        "{table}"
    );
    assert!(
        lines[2].starts_with(" mqtt_source    | iot_telemetry"),
        "{table}"
    );
    assert_eq!(lines[3], "(1 row)", "{table}");
    // Aligned: the header's and the row's separators where the rule's are.
    let at = |l: &str, c: char| l.match_indices(c).map(|(i, _)| i).collect::<Vec<_>>();
    assert_eq!(at(lines[0], '|'), at(lines[1], '+'), "{table}");
    assert_eq!(at(lines[2], '|'), at(lines[1], '+'), "{table}");

    let status = rows(http, STATUS);
    assert_eq!(status.len(), 1, "{status:?}");
    let s = &status[0];
    for (k, v) in [
        ("connector_name", json!("mqtt_source")),
        ("name", json!("iot_telemetry")),
        ("kind", json!("source")),
        ("status", json!("running")),
        ("connected", json!(true)),
        ("messages_received", json!(3)),
        ("bytes_received", json!(bytes)),
        ("records", json!(3)),
        ("confirmed", json!(3)),
        ("unconfirmed", json!(0)),
        ("skipped", json!(1)),
        ("subscription_count", json!(1)),
        ("reconnect_attempts", json!(0)),
    ] {
        assert_eq!(s[k], v, "{k} in {s}");
    }
    assert!(s["last_error"].as_str().unwrap().contains("hot"), "{s}");
    let sink = rows(http, "SELECT connector_name, kind, status, records, confirmed FROM system.connector_status WHERE kind = 'sink'");
    assert_eq!(
        sink,
        [
            json!({"connector_name":"file","kind":"sink","status":"running","records":2,"confirmed":2})
        ]
    );

    // The troubleshooting query, as written: the record fault's ERROR.
    let errors = rows(http, LOGS);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0]["level"], "ERROR");
    assert_eq!(errors[0]["connector"], "mqtt_source");
    assert_eq!(errors[0]["name"], "iot_telemetry");
    let msg = errors[0]["message"].as_str().unwrap();
    assert!(
        msg.starts_with("Record skipped") && msg.contains("hot") && msg.contains("topic=q/dev/r"),
        "{msg}"
    );
    let out = query(http, &[LOGS]);
    assert!(String::from_utf8_lossy(&out.stdout).ends_with("(1 row)\n"));

    // The rate query, as written: over the source table's recent rows.
    let rate = rows(
        http,
        "SELECT 
    COUNT(*) as messages_per_minute,
    MIN(timestamp) as window_start,
    MAX(timestamp) as window_end
FROM iot_telemetry
WHERE timestamp > NOW() - INTERVAL '1 minute';",
    );
    assert_eq!(rate.len(), 1, "{rate:?}");
    assert_eq!(rate[0]["messages_per_minute"], 3, "{rate:?}");
    let (start, end) = (
        rate[0]["window_start"].as_str().unwrap(),
        rate[0]["window_end"].as_str().unwrap(),
    );
    assert!(start < end && start.ends_with('Z'), "{rate:?}");
    let devices = rows(http, "SELECT device_id, meta -> 'loc' ->> 'room' AS room FROM iot_telemetry WHERE json_get_int(meta, 'n') > 3");
    assert_eq!(devices, [json!({"device_id":"d2","room":"lab"})]);

    // Laminar's metric names: the values of ours.
    let (_, m) = http_get(http, "/metrics").unwrap();
    let ours = |name: &str| {
        metric(
            &m,
            &format!("{name}{{component=\"iot_telemetry\",type=\"mqtt\"}}"),
        )
    };
    let laminar = |name: &str| metric(&m, &format!("{name}{{source=\"iot_telemetry\"}}"));
    for (alias, value, of) in [
        (
            "laminar_mqtt_messages_received",
            3,
            "mqlink_source_messages_received_total",
        ),
        (
            "laminar_mqtt_bytes_received",
            bytes as u64,
            "mqlink_source_bytes_received_total",
        ),
        (
            "laminar_mqtt_connection_status",
            1,
            "mqlink_source_connection_status",
        ),
        (
            "laminar_mqtt_subscription_count",
            1,
            "mqlink_source_subscriptions",
        ),
        (
            "laminar_mqtt_reconnect_attempts",
            0,
            "mqlink_source_reconnect_attempts_total",
        ),
    ] {
        assert_eq!(laminar(alias), Some(value), "{alias}:\n{m}");
        assert_eq!(ours(of), Some(value), "{of}:\n{m}");
    }

    // The broker dies: the source is disconnected, then reconnects.
    broker.kill();
    let scrape = || {
        http_get(http, "/metrics")
            .map(|(_, m)| m)
            .unwrap_or_default()
    };
    wait_until(30, "connection status 0", || {
        metric(
            &scrape(),
            "laminar_mqtt_connection_status{source=\"iot_telemetry\"}",
        ) == Some(0)
    });
    let down = rows(http, "SELECT status, connected FROM system.connector_status WHERE connector_name = 'mqtt_source'");
    assert_eq!(down, [json!({"status":"reconnecting","connected":false})]);
    broker.restart();
    wait_until(30, "connected again", || {
        let m = scrape();
        metric(
            &m,
            "laminar_mqtt_connection_status{source=\"iot_telemetry\"}",
        ) == Some(1)
            && metric(
                &m,
                "laminar_mqtt_reconnect_attempts{source=\"iot_telemetry\"}",
            )
            .is_some_and(|n| n >= 1)
    });
    let lost = rows(http, "SELECT level, name, message FROM system.connector_logs WHERE connector = 'mqtt_source' AND message LIKE 'Connection lost.%'");
    assert!(
        !lost.is_empty() && lost[0]["level"] == "WARN" && lost[0]["name"] == "iot_telemetry",
        "{lost:?}"
    );
    let n = rows(
        http,
        "SELECT reconnect_attempts FROM system.connector_status WHERE name = 'iot_telemetry'",
    );
    assert!(n[0]["reconnect_attempts"].as_u64().unwrap() >= 1, "{n:?}");

    // Errors: 400 naming the problem; `mqlink query` exits 1 with it.
    let (code, body) =
        http_get(http, "/query?sql=SELECT+nope+FROM+system.connector_status").unwrap();
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("nope"), "{body}");
    let (code, body) = http_get(
        http,
        "/query?sql=SELECT%20COUNT(*)%20AS%20n%20FROM%20system.connector_status",
    )
    .unwrap();
    assert_eq!(
        (code, serde_json::from_str::<Value>(&body).unwrap()),
        (200, json!({"columns":["n"],"rows":[[2]]}))
    );
    let out = query(http, &["SELECT * FROM mqtt_raw"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no table named mqtt_raw")
            && err.contains("iot_telemetry, system.connector_logs, system.connector_status"),
        "{err}"
    );
    let out = mqlink()
        .args([
            "query",
            "--url",
            &format!("http://127.0.0.1:{}", free_port()),
            "SELECT 1",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot query"));

    assert!(run.0.try_wait().unwrap().is_none(), "{}", run_log());
    assert!(!run_log().contains("panicked"), "{}", run_log());
}
