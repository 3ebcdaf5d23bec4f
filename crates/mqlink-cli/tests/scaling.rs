//! Several `mqlink run` processes of one file sharing a broker's messages
//! (docs/guides/scaling.md): each an instance (`MQLINK_INSTANCE`,
//! `--instance`) with its own client ids and state, in one share group on
//! a real Mosquitto, one of them SIGKILLed mid-stream and restarted.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use testkit::{
    free_port, http_get, mosquitto_pub_lines, signal, unique_id, wait_until, write, Mosquitto,
};

fn mqlink() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mqlink"));
    c.env_remove("MQLINK_LOG").env_remove("MQLINK_INSTANCE");
    c
}

/// `mqlink run file` as instance `instance`, from the environment
/// (`MQLINK_INSTANCE`, as a pod gets it) or from `--instance`.
fn start(file: &Path, dir: &Path, instance: &str, by_env: bool, http: u16) -> Child {
    let mut c = mqlink();
    c.arg("run")
        .arg(file)
        .args(["--quiet", "--http-listen", &format!("127.0.0.1:{http}")])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if instance.is_empty() {
        // One process alone.
    } else if by_env {
        c.env("MQLINK_INSTANCE", instance);
    } else {
        c.args(["--instance", instance]);
    }
    c.spawn().unwrap()
}

/// Waits for /ready, the process alive.
fn wait_ready(http: u16, child: &mut Child) {
    wait_until(30, "/ready", || {
        assert!(child.try_wait().unwrap().is_none(), "mqlink run exited");
        http_get(http, "/ready").is_some_and(|(c, _)| c == 200)
    });
}

/// Publishes in chunks from a thread (QoS 1, each confirmed).
fn publish_all(port: u16, topic: String, lines: Vec<String>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for chunk in lines.chunks(2000) {
            mosquitto_pub_lines(port, &topic, 1, chunk);
        }
    })
}

/// Every `"seq":N` in the files, with how often it was written.
fn seqs(files: &[PathBuf]) -> BTreeMap<u64, u32> {
    let mut seen = BTreeMap::new();
    for f in files {
        for l in std::fs::read_to_string(f).unwrap_or_default().lines() {
            // A line cut by the SIGKILL is not a record.
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(l) {
                if let Some(n) = v["seq"].as_u64() {
                    *seen.entry(n).or_insert(0) += 1;
                }
            }
        }
    }
    seen
}

/// Two instances of one file in one share group: distinct client ids (no
/// session taken over), each its own output file through `${MQLINK_INSTANCE}`
/// and its own state, /status naming the instance; one SIGKILLed while
/// messages are in flight to it and restarted as the same instance (its
/// session, and the messages the broker keeps in it, found again): every
/// message written at least once, duplicates counted.
#[test]
fn two_instances_in_a_share_group_lose_nothing_when_one_is_killed() {
    let broker = Mosquitto::start();
    let dir = testkit::TempDir::new().unwrap();
    let topic = unique_id("scale");
    let file = write(
        dir.path(),
        "shared.toml",
        &format!(
            r#"
[connections.b]
broker = "mqtt://127.0.0.1:{port}"
client_id = "{topic}"
clean_session = false
reconnect_interval = 0.2

[sources.readings]
type = "mqtt"
connection = "b"
topics = ["{topic}/in"]
share_group = "{topic}"
qos = 1
format = "json"
schema = {{ seq = "bigint" }}

[sinks.out]
type = "file"
inputs = ["readings"]
path = "out-${{MQLINK_INSTANCE}}.jsonl"
"#,
            port = broker.port
        ),
    );
    // validate shows each instance's client id.
    let v = mqlink()
        .arg("validate")
        .arg(&file)
        .args(["--instance", "a"])
        .output()
        .unwrap();
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
    assert!(
        String::from_utf8_lossy(&v.stdout).contains(&format!("MQTT client id {topic}-readings-a"))
    );

    let (ha, hb) = (free_port(), free_port());
    let mut a = start(&file, dir.path(), "a", true, ha);
    let mut b = start(&file, dir.path(), "b", true, hb);
    wait_ready(ha, &mut a);
    wait_ready(hb, &mut b);
    for (http, name) in [(ha, "a"), (hb, "b")] {
        let (_, body) = http_get(http, "/status").unwrap();
        let status: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(status["instance"], name);
        let source = status["components"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "readings")
            .unwrap_or_else(|| panic!("no source in {status}"));
        let id = &source["clients"][0]["client_id"];
        assert_eq!(
            id.as_str(),
            Some(format!("{topic}-readings-{name}").as_str()),
            "{status}"
        );
    }

    const N: u64 = 20_000;
    let lines: Vec<String> = (0..N).map(|i| format!(r#"{{"seq":{i}}}"#)).collect();
    let publisher = publish_all(broker.port, format!("{topic}/in"), lines);
    let files = [
        dir.path().join("out-a.jsonl"),
        dir.path().join("out-b.jsonl"),
    ];
    wait_until(60, "a third of the messages", || {
        seqs(&files).len() as u64 >= N / 3
    });
    signal(&b, "-KILL");
    b.wait().unwrap();
    let mut b = start(&file, dir.path(), "b", false, hb);
    publisher.join().unwrap();
    wait_until(90, "every message", || seqs(&files).len() as u64 == N);
    for c in [&mut a, &mut b] {
        assert!(c.try_wait().unwrap().is_none(), "an instance exited");
        signal(c, "-TERM");
        wait_until(30, "mqlink run to exit", || c.try_wait().unwrap().is_some());
    }
    let seen = seqs(&files);
    let lost: Vec<u64> = (0..N).filter(|n| !seen.contains_key(n)).collect();
    let duplicates: u32 = seen.values().map(|c| c - 1).sum();
    eprintln!(
        "{N} messages, 2 instances, one SIGKILLed: {} lost, {duplicates} written twice",
        lost.len()
    );
    assert!(lost.is_empty(), "lost: {lost:?}");
    let per: Vec<usize> = files
        .iter()
        .map(|f| seqs(std::slice::from_ref(f)).len())
        .collect();
    assert!(
        per.iter().all(|&n| n > 0),
        "each instance took a share: {per:?}"
    );
    // Each instance's buffer and state under its own name.
    for i in ["a", "b"] {
        assert!(
            dir.path().join("mqlink-state").join(i).is_dir(),
            "state of {i}"
        );
    }
}

/// The windowed query of the stateful test: COUNT, SUM, MIN and MAX per
/// 10 s window and device, into PostgreSQL; `shared` in a share group.
#[cfg(feature = "sql")]
fn window_sql(topic: &str, port: u16, url: &str, table: &str, shared: bool) -> String {
    let (prefix, share) = match shared {
        true => (
            format!("{topic}-shared"),
            format!(", share_group = '{topic}'"),
        ),
        false => (format!("{topic}-single"), String::new()),
    };
    format!(
        r#"
CREATE TABLE readings (
    device_id TEXT,
    ts TIMESTAMP,
    temperature DOUBLE,
    WATERMARK FOR ts AS ts - INTERVAL '2 seconds'
) WITH (
    connector = 'mqtt', type = 'source', url = 'tcp://127.0.0.1:{port}',
    client_prefix = '{prefix}', clean_start = 'false', reconnect_interval = '0.2',
    topic = '{topic}/in', qos = 'AtLeastOnce', format = 'json', protocol = '5',
    checkpoint_interval = '2 s', state_dir = 'state-{table}'{share}
);
CREATE TABLE db WITH (connector = 'postgres', url = '{url}', table = '{table}', create_table = 'true',
    primary_key = 'window_start, device_id');
INSERT INTO db
SELECT TUMBLE(INTERVAL '10 seconds') AS window, device_id, COUNT(*) AS n, SUM(temperature) AS s,
       MIN(temperature) AS lo, MAX(temperature) AS hi
FROM readings GROUP BY window, device_id;
"#
    )
}

/// A relation's rows as `start_ms|device|n|s|lo|hi`, sorted.
#[cfg(feature = "sql")]
fn windows_of(pg: &testkit::Postgres, relation: &str) -> Vec<String> {
    let text = pg.psql(&format!(
        "SELECT (extract(epoch FROM window_start) * 1000)::bigint, device_id, n, s, lo, hi FROM {relation}"
    ));
    let mut rows: Vec<String> = text
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    rows.sort();
    rows
}

/// The issue's case: the same windowed `.sql` run by two processes in one
/// share group gives, in `<table>_merged`, exactly what one process over
/// the same messages writes (a third process, not sharing, reads them
/// all) and what the test computes itself, also after one of the two is
/// SIGKILLed mid-stream and restarted. (Temperatures are whole numbers:
/// partial sums add up exactly.)
#[cfg(feature = "sql")]
#[test]
fn two_instances_of_a_windowed_query_merge_to_the_single_process_result() {
    let broker = Mosquitto::start();
    let pg = testkit::Postgres::start();
    let dir = testkit::TempDir::new().unwrap();
    let topic = unique_id("scalesql");
    let shared = write(
        dir.path(),
        "shared.sql",
        &window_sql(&topic, broker.port, &pg.url(), "part", true),
    );
    let single = write(
        dir.path(),
        "single.sql",
        &window_sql(&topic, broker.port, &pg.url(), "whole", false),
    );
    // Refused in a share group with an instance: what does not combine.
    let avg = std::fs::read_to_string(&shared)
        .unwrap()
        .replace("SUM(temperature) AS s", "AVG(temperature) AS s");
    let avg = write(dir.path(), "avg.sql", &avg);
    let out = mqlink()
        .arg("validate")
        .arg(&avg)
        .args(["--instance", "a"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("AVG (column s)"),
        "{err}"
    );

    let (ha, hb, hs) = (free_port(), free_port(), free_port());
    let mut one = start(&single, dir.path(), "", false, hs);
    // (started one after the other: the first creates the table and view)
    let mut a = start(&shared, dir.path(), "a", false, ha);
    wait_ready(hs, &mut one);
    wait_ready(ha, &mut a);
    let mut b = start(&shared, dir.path(), "b", true, hb);
    wait_ready(hb, &mut b);

    // 12,000 readings 50 ms apart over 5 devices: 600 s of event time,
    // 60 windows of 10 s; then 40 that close them in both instances.
    const N: i64 = 12_000;
    const T0: i64 = 1_795_428_000_000;
    let mut reference: BTreeMap<(i64, String), (i64, i64, i64, i64)> = BTreeMap::new();
    let mut lines = Vec::new();
    for i in 0..N {
        let (dev, ts, temp) = (format!("d{}", i % 5), T0 + i * 50, (i * 37) % 400 - 100);
        lines.push(format!(
            r#"{{"device_id":"{dev}","ts":{ts},"temperature":{temp}.0}}"#
        ));
        let w = reference
            .entry((ts - ts % 10_000, dev))
            .or_insert((0, 0, i64::MAX, i64::MIN));
        *w = (w.0 + 1, w.1 + temp, w.2.min(temp), w.3.max(temp));
    }
    for i in 0..40 {
        lines.push(format!(
            r#"{{"device_id":"close","ts":{},"temperature":0.0}}"#,
            T0 + 1_000_000 + i
        ));
    }
    let expected: Vec<String> = {
        let mut rows: Vec<String> = reference
            .iter()
            .map(|((s, d), (n, sum, lo, hi))| format!("{s}|{d}|{n}|{sum}|{lo}|{hi}"))
            .collect();
        rows.sort();
        rows
    };
    assert_eq!(expected.len(), 300);

    // Half, then b is SIGKILLed after a checkpoint wrote partial rows,
    // the rest is published while it is down, and it restarts.
    let rest = lines.split_off(lines.len() / 2);
    for chunk in lines.chunks(2000) {
        mosquitto_pub_lines(broker.port, &format!("{topic}/in"), 1, chunk);
    }
    wait_until(90, "partial rows", || pg.count("part") >= 20);
    signal(&b, "-KILL");
    b.wait().unwrap();
    let publisher = publish_all(broker.port, format!("{topic}/in"), rest);
    std::thread::sleep(std::time::Duration::from_secs(1));
    let mut b = start(&shared, dir.path(), "b", false, hb);
    publisher.join().unwrap();
    wait_until(180, "every window, merged", || {
        windows_of(&pg, "part_merged").len() >= expected.len()
            && windows_of(&pg, "whole").len() >= expected.len()
    });
    // Settled: nothing more arrives.
    std::thread::sleep(std::time::Duration::from_secs(3));
    let merged = windows_of(&pg, "part_merged");
    let whole = windows_of(&pg, "whole");
    for (name, got) in [("part_merged", &merged), ("whole", &whole)] {
        let extra: Vec<&String> = got.iter().filter(|r| !expected.contains(r)).collect();
        let missing: Vec<&String> = expected.iter().filter(|r| !got.contains(r)).collect();
        assert!(
            extra.is_empty() && missing.is_empty(),
            "{name}: not in the reference: {extra:?}\nin the reference, missing: {missing:?}"
        );
    }
    assert_eq!(merged, whole, "two instances merged = one process");
    // Both instances wrote partial rows.
    let by = pg.psql("SELECT mqlink_instance, count(*) FROM part GROUP BY 1 ORDER BY 1");
    assert!(by.starts_with("a|") && by.contains("\nb|"), "{by}");
    for c in [&mut a, &mut b, &mut one] {
        signal(c, "-TERM");
        wait_until(30, "mqlink run to exit", || c.try_wait().unwrap().is_some());
    }
}
