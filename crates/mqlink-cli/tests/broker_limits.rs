//! Bursts against a Mosquitto with its default limits (issue 23): the
//! broker lets 20 unacknowledged messages out to a 3.1.1 client (MQTT 5:
//! the Receive Maximum the client announced), queues 1,000 more, then
//! drops. `mqlink run` with default settings — into PostgreSQL, and into a
//! file with Laminar's batch options — beside a live `mosquitto_sub -q 1`
//! (the control): wherever the control gets every message, so does every
//! mqlink sink, and none gets fewer than the control.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use testkit::{
    free_port, http_get, signal, unique_id, wait_output, write, Mosquitto, MosquittoConfig,
    Postgres,
};

/// One protocol setting of the pipelines: `None` is the default (MQTT 5,
/// falling back to 3.1.1), `Some("3.1.1")` as a user writes it.
type Case = Option<&'static str>;

/// The bursts: (messages, rate per second, 0 = as fast as the broker takes them).
const BURSTS: [(usize, u32); 2] = [(20_000, 40_000), (200_000, 0)];
/// The first of them alone.
const BURST: [(usize, u32); 1] = [BURSTS[0]];

/// MQTT 5 by default (the announced window is larger than any burst's
/// backlog) and MQTT 3.1.1 as written (Mosquitto's window of 20 and queue
/// of 1,000; the local buffer, on by default there, acknowledges at the
/// broker's pace): the bursts arrive whole whatever the sinks' pace.
///
/// One pipeline at a time, each with its own broker, beside the control:
/// several pipelines at once on 2 cores measure the machine's load more
/// than mqlink. MQTT 5 (the default) takes both bursts whole; MQTT 3.1.1
/// (the local buffer) the first.
#[test]
fn bursts_at_mosquitto_defaults_lose_nothing() {
    for sink in [Sink::Postgres, Sink::File] {
        bursts(&[None], sink, &BURSTS);
        bursts(&[Some("3.1.1")], sink, &BURST);
    }
}

/// 200,000 at the publisher's full speed (~15,000/s here) on MQTT 3.1.1,
/// where Mosquitto lets 20 messages out at a time: the broker drops what
/// a consumer leaves more than 1,000 behind, even for the control on a
/// loaded machine. The session's driver appends each read to the local
/// buffer and acknowledges it in the same pass, on its own thread, as
/// mosquitto_sub acknowledges each message as it reads it; so mqlink keeps
/// up at least as well as the control.
#[test]
fn full_speed_on_mqtt311_loses_no_more_than_mosquitto_sub() {
    for sink in [Sink::Postgres, Sink::File] {
        bursts(&[Some("3.1.1")], sink, &BURSTS[1..]);
    }
}

/// Runs the bursts through a control and, for each case, a pipeline into
/// `sink`, all on one broker, and asserts.
fn bursts(cases: &[Case], sink: Sink, sizes: &[(usize, u32)]) {
    let broker = Mosquitto::with(MosquittoConfig {
        queue_defaults: true,
        ..Default::default()
    });
    let pg = Postgres::start();
    let dir = testkit::TempDir::new().unwrap();
    let cpub = build_cpub(dir.path());
    let prefix = unique_id("limits");
    let control_out = dir.path().join("control.txt");
    let mut control = Command::new("mosquitto_sub")
        .args(["-p", &broker.port.to_string(), "-q", "1", "-t"])
        .arg(format!("{prefix}/#"))
        .stdout(std::fs::File::create(&control_out).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut runs = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        {
            runs.push(Pipeline::start(
                dir.path(),
                &broker,
                &pg,
                &prefix,
                *case,
                sink,
                i,
            ));
        }
    }
    for r in &mut runs {
        r.wait_ready();
    }
    // The control is subscribed once it received a probe.
    wait_subscribed(&broker, &prefix, &control_out);
    let mut failures = Vec::new();
    for (b, &(n, rate)) in sizes.iter().enumerate() {
        let b = b + 1;
        let file = dir.path().join(format!("burst{b}.txt"));
        let body: String = (0..n)
            .map(|i| format!("{{\"b\":{b},\"seq\":{i}}}\n"))
            .collect();
        std::fs::write(&file, body).unwrap();
        let started = Instant::now();
        let out = Command::new(&cpub)
            .arg(broker.port.to_string())
            .arg(format!("{prefix}/b{b}"))
            .args(["1"])
            .arg(&file)
            .args(["1000", &rate.to_string()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let published = started.elapsed();
        let counts = settle(n, || {
            let mut c = vec![count_lines(&control_out, b)];
            c.extend(runs.iter().map(|r| r.count(&pg, b)));
            c
        });
        eprintln!(
            "burst {b}: {n} messages published in {:.2} s; control {}; {}",
            published.as_secs_f64(),
            counts[0],
            runs.iter()
                .zip(&counts[1..])
                .map(|(r, c)| format!("{} {c}", r.name))
                .collect::<Vec<_>>()
                .join("; ")
        );
        // Where the broker dropped even for the control, mqlink drops no more.
        for (r, &c) in runs.iter().zip(&counts[1..]) {
            if c < counts[0].min(n) {
                failures.push(format!(
                    "burst {b}: {} got {c} of {n}, the control {}",
                    r.name, counts[0]
                ));
            }
        }
    }
    for r in runs {
        let (name, stderr) = r.stop();
        // The summary names the window the source met (MQTT 5) or, on
        // 3.1.1, the local buffer it acknowledged into (the broker's
        // window never fills then).
        let want = if name.contains("3.1.1") {
            "buffered "
        } else {
            "window "
        };
        if !stderr.contains(want) {
            failures.push(format!("{name}: no {want:?} in the summary:\n{stderr}"));
        }
    }
    let _ = control.kill();
    let _ = control.wait();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[derive(Clone, Copy, PartialEq)]
enum Sink {
    Postgres,
    File,
}

struct Pipeline {
    name: String,
    sink: Sink,
    child: Child,
    http: u16,
    table: String,
    out: PathBuf,
}

impl Pipeline {
    fn start(
        dir: &Path,
        broker: &Mosquitto,
        pg: &Postgres,
        prefix: &str,
        case: Case,
        sink: Sink,
        i: usize,
    ) -> Pipeline {
        let kind = if sink == Sink::Postgres { "pg" } else { "file" };
        let name = format!("{kind} (protocol {})", case.unwrap_or("default"));
        let http = free_port();
        let table = format!("t_{kind}_{i}");
        let out = dir.join(format!("{kind}_{i}.jsonl"));
        let protocol = case.map_or(String::new(), |p| format!("    protocol: \"{p}\"\n"));
        // Laminar's documented batch options for the file case.
        let batching = match sink {
            Sink::File => "    batch_size: 1000\n    batch_timeout_ms: 100\n",
            Sink::Postgres => "",
        };
        let sink_cfg = match sink {
            Sink::Postgres => format!(
                "    type: postgres\n    url: \"{}\"\n    table: {table}\n    create_table: true\n    primary_key: [b, seq]\n",
                pg.url()
            ),
            Sink::File => format!("    type: file\n    path: \"{}\"\n", out.display()),
        };
        let cfg = write(
            dir,
            &format!("{kind}_{i}.yaml"),
            &format!(
                r#"
connections:
  m:
    broker: "mqtt://127.0.0.1:{port}"
    client_id: "{prefix}-{kind}-{i}"
    clean_session: false
{protocol}sources:
  s:
    type: mqtt
    connection: m
    topics: ["{prefix}/#"]
    schema: {{ b: bigint, seq: bigint }}
{batching}sinks:
  out:
    inputs: [s]
{sink_cfg}http:
  listen: "127.0.0.1:{http}"
"#,
                port = broker.port,
            ),
        );
        let child = Command::new(env!("CARGO_BIN_EXE_mqlink"))
            .arg("run")
            .arg(&cfg)
            .env_remove("MQLINK_LOG")
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        Pipeline {
            name,
            sink,
            child,
            http,
            table,
            out,
        }
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while http_get(self.http, "/ready").map(|(c, _)| c) != Some(200) {
            if Instant::now() > deadline || self.child.try_wait().unwrap().is_some() {
                let _ = self.child.kill();
                let out = wait_output(&mut self.child, 5);
                panic!(
                    "{} not ready: {}",
                    self.name,
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Distinct messages of burst `b` written.
    fn count(&self, pg: &Postgres, b: usize) -> usize {
        match self.sink {
            Sink::Postgres => pg
                .psql(&format!(
                    "SELECT count(*) FROM {} WHERE b = {b}",
                    self.table
                ))
                .parse()
                .unwrap_or(0),
            Sink::File => count_lines(&self.out, b),
        }
    }

    /// SIGTERM; its name and stderr (the summary).
    fn stop(mut self) -> (String, String) {
        signal(&self.child, "-TERM");
        let out = wait_output(&mut self.child, 60);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        (self.name, stderr)
    }
}

/// Distinct messages of burst `b` in a file of JSON lines.
fn count_lines(path: &Path, b: usize) -> usize {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut seen = HashSet::new();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["b"] == b {
            seen.insert(v["seq"].as_u64());
        }
    }
    seen.len()
}

/// Waits until every count is `n`, or none moved for 5 s; the counts.
fn settle(n: usize, mut counts: impl FnMut() -> Vec<usize>) -> Vec<usize> {
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut last = counts();
    let mut since = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let now = counts();
        if now.iter().all(|&c| c == n) {
            return now;
        }
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() > Duration::from_secs(5) || Instant::now() > deadline {
            return now;
        }
    }
}

/// Publishes a probe (burst 0) until the control has one.
fn wait_subscribed(broker: &Mosquitto, prefix: &str, control: &Path) {
    testkit::wait_until(30, "the control to subscribe", || {
        testkit::mosquitto_pub(&[
            "-p",
            &broker.port.to_string(),
            "-t",
            &format!("{prefix}/probe"),
            "-m",
            "{\"b\":0,\"seq\":0}",
        ]);
        std::thread::sleep(Duration::from_millis(100));
        count_lines(control, 0) > 0
    });
}

/// Builds the libmosquitto publisher (bench/cpub.c; needs libmosquitto-dev).
fn build_cpub(dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/cpub.c");
    let bin = dir.join("cpub");
    let out = Command::new("gcc")
        .args(["-O2", "-o"])
        .arg(&bin)
        .arg(&src)
        .arg("-lmosquitto")
        .output()
        .expect("gcc (scripts/test.sh installs it)");
    assert!(
        out.status.success(),
        "building bench/cpub.c (needs libmosquitto-dev): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    bin
}
