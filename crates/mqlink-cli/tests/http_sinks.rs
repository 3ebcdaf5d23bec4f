//! The InfluxDB and HTTP sinks as a user runs them: `mqlink run` with a
//! real Mosquitto, a real InfluxDB (Debian's `influxdb`, 1.x) and an HTTP
//! server of the test's own that refuses, throttles and goes away. Faults
//! are real: the server killed or closed mid-stream and started again.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use testkit::{free_port, http_get, metric, signal, unique_id, wait_output, wait_until, write};
use testkit::{Influx, Mosquitto, MosquittoConfig};

fn mqlink() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mqlink"));
    c.env_remove("MQLINK_LOG");
    c
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A token and a password that must never be printed.
const SECRET: &str = "tok-9d2e-never-printed";

fn start(file: &Path, dir: &Path) -> Child {
    mqlink()
        .arg("run")
        .arg(file)
        .env("SINK_SECRET", SECRET)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Publishes lines with `mqlink pub -l` at QoS 1 (every one confirmed).
fn publish(port: u16, topic: &str, lines: &[String]) {
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

fn wait_ready(http: u16, run: &mut Child) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while http_get(http, "/ready").map(|(c, _)| c) != Some(200) {
        if std::time::Instant::now() > deadline || run.try_wait().unwrap().is_some() {
            let _ = run.kill();
            let out = wait_output(run, 5);
            panic!("not ready: {}", text(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A reading with its own time (microsecond `i`), so each is one point.
fn reading(i: usize) -> String {
    format!(
        r#"{{"device_id":"dev {:02}","seq":{i},"timestamp":"2026-11-23T10:00:00.{i:06}Z","temperature":21.5,"label":"a \"quoted\", spaced=label"}}"#,
        i % 20
    )
}

fn acked(http: u16, source: &str) -> u64 {
    let (_, m) = http_get(http, "/metrics").unwrap_or_default();
    m.lines()
        .find(|l| {
            l.starts_with(&format!(
                "mqlink_source_records_acknowledged_total{{component=\"{source}\""
            ))
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

/// MQTT → InfluxDB 1.x with a password, bodies gzipped: every reading one
/// point, read back exactly; a point of another field type (InfluxDB's "partial write" 400)
/// dead-lettered alone; InfluxDB SIGKILLed mid-stream and restarted:
/// nothing lost, nothing doubled, nothing acknowledged while it is down.
#[test]
fn influxdb_points_arrive_exactly_through_a_kill_and_a_refused_point() {
    let broker = Mosquitto::start();
    let mut influx = Influx::start();
    influx.query("", "CREATE DATABASE plant");
    let dir = testkit::TempDir::new().unwrap();
    let topic = unique_id("influx");
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
protocol = "3.1.1"
[sources.telemetry]
type = "mqtt"
connection = "b"
topics = ["{topic}/in"]
[sinks.tsdb]
type = "influxdb"
inputs = ["telemetry"]
url = "{url}"
database = "plant"
username = "writer"
password = "${{SINK_SECRET}}"
measurement = "telemetry"
tags = ["device_id"]
timestamp = "timestamp"
batch_size = 500
compression = "gzip"
connection = "b"
dead_letter_topic = "{topic}/refused"
[http]
listen = "127.0.0.1:{http}"
"#,
            port = broker.port,
            url = influx.url()
        ),
    );
    let (mut sub, dead) = testkit::mosquitto_sub(&[
        "-p",
        &broker.port.to_string(),
        "-t",
        &format!("{topic}/refused"),
        "-q",
        "1",
    ]);
    let mut run = start(&cfg, dir.path());
    wait_ready(http, &mut run);
    let all: Vec<String> = (0..4000).map(reading).collect();
    publish(broker.port, &format!("{topic}/in"), &all[..2000]);
    wait_until(30, "the first 2000 points", || {
        influx.count("plant", "telemetry", "temperature") == 2000
    });
    // Text where the field is a float: InfluxDB refuses that point only.
    let bad =
        r#"{"device_id":"dev 01","seq":-1,"timestamp":"2026-11-23T11:00:00Z","temperature":"hot"}"#;
    publish(
        broker.port,
        &format!("{topic}/in"),
        &[bad.to_string(), reading(2000)],
    );
    let letter = dead
        .recv_timeout(Duration::from_secs(30))
        .expect("a dead letter");
    let letter: serde_json::Value = serde_json::from_str(&letter).unwrap();
    assert_eq!(letter["payload"], bad);
    let why = letter["error"].as_str().unwrap();
    assert!(why.contains("400") && why.contains("temperature"), "{why}");

    influx.kill();
    let before = acked(http, "telemetry");
    publish(broker.port, &format!("{topic}/in"), &all[2001..]);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        acked(http, "telemetry"),
        before,
        "nothing acknowledged while InfluxDB is down"
    );
    wait_until(10, "/ready 503", || {
        http_get(http, "/ready").is_some_and(|(c, _)| c == 503)
    });
    influx.restart();
    wait_until(60, "every point after InfluxDB came back", || {
        influx.count("plant", "telemetry", "temperature") == 4000
    });
    wait_until(20, "every message acknowledged", || {
        acked(http, "telemetry") == 4001
    });
    signal(&run, "-TERM");
    let out = wait_output(&mut run, 30);
    let log = text(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(!log.contains(SECRET), "{log}");
    assert_eq!(influx.count("plant", "telemetry", "temperature"), 4000);
    // Escaped tags and strings read back as written.
    let a = influx.query(
        "plant",
        "SELECT label FROM telemetry WHERE device_id = 'dev 07' LIMIT 1",
    );
    assert!(a.contains(r#"a \"quoted\", spaced=label"#), "{a}");
    let _ = sub.kill();
}

/// A database that does not exist is fatal: the run exits 1 with
/// InfluxDB's reason, never the password.
#[test]
fn a_missing_influxdb_database_ends_the_run() {
    let broker = Mosquitto::start();
    let influx = Influx::start();
    let dir = testkit::TempDir::new().unwrap();
    let topic = unique_id("nodb");
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
[sinks.tsdb]
type = "influxdb"
inputs = ["in"]
url = "{url}"
database = "nowhere"
username = "u"
password = "${{SINK_SECRET}}"
measurement = "m"
[http]
listen = "127.0.0.1:{http}"
"#,
            port = broker.port,
            url = influx.url()
        ),
    );
    let mut run = start(&cfg, dir.path());
    wait_ready(http, &mut run);
    publish(
        broker.port,
        &format!("{topic}/in"),
        &[r#"{"v":1}"#.to_string()],
    );
    let out = wait_output(&mut run, 30);
    let log = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(
        log.contains("sinks.tsdb") && log.contains("database not found"),
        "{log}"
    );
    assert!(!log.contains(SECRET), "{log}");
}

/// What the test's HTTP server does with a request.
#[derive(Default)]
struct Script {
    /// Requests answered so far.
    requests: AtomicU64,
    /// Every 23rd request: 500; every 37th: 429 with Retry-After: 1.
    flaky: AtomicBool,
    /// Records the server took (answered 2xx), by seq, with counts.
    taken: Mutex<BTreeMap<i64, u32>>,
    /// Authorization headers seen.
    auth: Mutex<Vec<String>>,
    /// Milliseconds each request takes to answer.
    delay_ms: AtomicU64,
    /// Requests whose body came gzipped.
    gzipped: AtomicU64,
    /// Requests being answered now, and the most at once.
    open: AtomicU64,
    most_open: AtomicU64,
}

/// An HTTP/1.1 server on `port`, a thread per connection: NDJSON batches
/// (a record with `"bad": true` makes the request 400), closed when `stop`
/// is set (answering what it accepted).
fn serve(port: u16, script: Arc<Script>, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let mut open = Vec::new();
        while !stop.load(SeqCst) {
            match listener.accept() {
                Ok((s, _)) => {
                    s.set_nonblocking(false).unwrap();
                    let script = script.clone();
                    open.push(std::thread::spawn(move || answer(s, &script)));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        open.into_iter().for_each(|t| t.join().unwrap());
    })
}

fn answer(s: TcpStream, script: &Script) {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let (mut len, mut gzip) = (0, false);
    let mut first = String::new();
    if r.read_line(&mut first).is_err() {
        return;
    }
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
            break;
        }
        let (k, v) = h.split_once(':').unwrap_or_default();
        if k.eq_ignore_ascii_case("content-length") {
            len = v.trim().parse().unwrap();
        }
        if k.eq_ignore_ascii_case("content-encoding") {
            gzip = v.trim() == "gzip";
        }
        if k.eq_ignore_ascii_case("authorization") {
            script.auth.lock().unwrap().push(v.trim().to_string());
        }
    }
    let mut body = vec![0; len];
    if r.read_exact(&mut body).is_err() {
        return;
    }
    if gzip {
        script.gzipped.fetch_add(1, SeqCst);
        let mut plain = Vec::new();
        flate2::read::GzDecoder::new(&body[..])
            .read_to_end(&mut plain)
            .unwrap();
        body = plain;
    }
    let open = script.open.fetch_add(1, SeqCst) + 1;
    script.most_open.fetch_max(open, SeqCst);
    std::thread::sleep(Duration::from_millis(script.delay_ms.load(SeqCst)));
    script.open.fetch_sub(1, SeqCst);
    let n = script.requests.fetch_add(1, SeqCst) + 1;
    let records: Vec<serde_json::Value> = text(&body)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let (status, extra) = if script.flaky.load(SeqCst) && n % 23 == 0 {
        ("500 Internal Server Error", "")
    } else if script.flaky.load(SeqCst) && n % 37 == 0 {
        ("429 Too Many Requests", "retry-after: 1\r\n")
    } else if records.iter().any(|r| r["bad"] == true) {
        ("400 Bad Request", "")
    } else {
        let mut taken = script.taken.lock().unwrap();
        for r in &records {
            *taken.entry(r["seq"].as_i64().unwrap()).or_default() += 1;
        }
        ("204 No Content", "")
    };
    let mut s = s;
    let _ = write!(
        s,
        "HTTP/1.1 {status}\r\n{extra}connection: close\r\ncontent-length: 0\r\n\r\n"
    );
}

/// MQTT → HTTP (NDJSON batches, a bearer token from the environment) into
/// a server that answers 500s and 429s, refuses records with 400 and is
/// closed for a while: every record arrives at least once, the refused
/// ones are dead-lettered, and nothing is acknowledged before a 2xx.
#[test]
fn webhook_records_survive_500s_429s_400s_and_a_stopped_server() {
    let broker = Mosquitto::start();
    let dir = testkit::TempDir::new().unwrap();
    let topic = unique_id("hook");
    let (http, port) = (free_port(), free_port());
    let cfg = write(
        dir.path(),
        "p.toml",
        &format!(
            r#"
[connections.b]
broker = "mqtt://127.0.0.1:{mqtt}"
client_id = "{topic}"
clean_session = false
protocol = "3.1.1"
[sources.in]
type = "mqtt"
connection = "b"
topics = ["{topic}/in"]
[sinks.hook]
type = "webhook"
inputs = ["in"]
url = "http://127.0.0.1:{port}/ingest"
batch = "ndjson"
batch_size = 50
bearer_token = "${{SINK_SECRET}}"
timeout_ms = 2000
connection = "b"
dead_letter_topic = "{topic}/refused"
[http]
listen = "127.0.0.1:{http}"
"#,
            mqtt = broker.port
        ),
    );
    let script = Arc::new(Script::default());
    script.flaky.store(true, SeqCst);
    let stop = Arc::new(AtomicBool::new(false));
    let server = serve(port, script.clone(), stop.clone());
    let (mut sub, dead) = testkit::mosquitto_sub(&[
        "-p",
        &broker.port.to_string(),
        "-t",
        &format!("{topic}/refused"),
        "-q",
        "1",
    ]);
    let mut run = start(&cfg, dir.path());
    wait_ready(http, &mut run);
    let record = |i: usize| {
        let bad = i % 500 == 250;
        format!(r#"{{"seq":{i},"bad":{bad},"v":"x"}}"#)
    };
    let all: Vec<String> = (0..3000).map(record).collect();
    publish(broker.port, &format!("{topic}/in"), &all[..1500]);
    let good = |to: usize| (0..to).filter(|i| i % 500 != 250).count();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while script.taken.lock().unwrap().len() != good(1500) {
        if std::time::Instant::now() > deadline {
            let _ = run.kill();
            let out = wait_output(&mut run, 5);
            panic!(
                "{} of {} records taken after {} requests: {}",
                script.taken.lock().unwrap().len(),
                good(1500),
                script.requests.load(SeqCst),
                text(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    // The server goes away: nothing is acknowledged meanwhile.
    stop.store(true, SeqCst);
    server.join().unwrap();
    wait_until(20, "the first 1500 settled (three dead-lettered)", || {
        acked(http, "in") == 1500
    });
    publish(broker.port, &format!("{topic}/in"), &all[1500..]);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        acked(http, "in"),
        1500,
        "nothing acknowledged while the server is down"
    );
    assert!(metric(http, "mqlink_sink_errors_total") > 0);

    let stop = Arc::new(AtomicBool::new(false));
    let server = serve(port, script.clone(), stop.clone());
    wait_until(60, "every record after the server came back", || {
        script.taken.lock().unwrap().len() == good(3000)
    });
    wait_until(20, "every message acknowledged", || {
        acked(http, "in") == 3000
    });
    let letters: Vec<serde_json::Value> = (0..6)
        .map(|_| {
            serde_json::from_str(&dead.recv_timeout(Duration::from_secs(10)).unwrap()).unwrap()
        })
        .collect();
    let mut bad: Vec<String> = letters
        .iter()
        .map(|l| l["payload"].as_str().unwrap().to_string())
        .collect();
    bad.sort();
    let mut want: Vec<String> = (0..3000).filter(|i| i % 500 == 250).map(record).collect();
    want.sort();
    assert_eq!(bad, want);
    assert!(
        letters[0]["error"].as_str().unwrap().contains("400"),
        "{}",
        letters[0]
    );
    let taken = script.taken.lock().unwrap();
    assert!(taken.keys().all(|s| s % 500 != 250));
    assert!(script
        .auth
        .lock()
        .unwrap()
        .iter()
        .all(|a| a == &format!("Bearer {SECRET}")));
    drop(taken);
    signal(&run, "-TERM");
    let out = wait_output(&mut run, 30);
    let log = text(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(!log.contains(SECRET), "{log}");
    stop.store(true, SeqCst);
    server.join().unwrap();
    let _ = sub.kill();
}

/// One MQTT source into InfluxDB and an HTTP endpoint at once, on MQTT 5
/// with the broker's session as the only store (no local buffer), while
/// `mqlink run` is SIGKILLed twice mid-stream and started again: every
/// reading is one point in InfluxDB (a resent point overwrites itself) and
/// reaches the endpoint at least once; nothing is lost.
#[test]
fn influxdb_and_webhook_lose_nothing_when_mqlink_is_sigkilled_twice() {
    let broker = Mosquitto::start();
    let influx = Influx::start();
    influx.query("", "CREATE DATABASE plant");
    let dir = testkit::TempDir::new().unwrap();
    let topic = unique_id("killed");
    let (http, port) = (free_port(), free_port());
    let cfg = write(
        dir.path(),
        "p.toml",
        &format!(
            r#"
[connections.b]
broker = "mqtt://127.0.0.1:{mqtt}"
client_id = "{topic}"
clean_session = false
reconnect_interval = 0.2
[sources.telemetry]
type = "mqtt"
connection = "b"
topics = ["{topic}/in"]
buffer.mode = "off"
[sinks.tsdb]
type = "influxdb"
inputs = ["telemetry"]
url = "{url}"
database = "plant"
measurement = "telemetry"
tags = ["device_id"]
timestamp = "timestamp"
batch_size = 500
[sinks.hook]
type = "webhook"
inputs = ["telemetry"]
url = "http://127.0.0.1:{port}/ingest"
batch = "ndjson"
batch_size = 200
[http]
listen = "127.0.0.1:{http}"
"#,
            mqtt = broker.port,
            url = influx.url()
        ),
    );
    let script = Arc::new(Script::default());
    let stop = Arc::new(AtomicBool::new(false));
    let server = serve(port, script.clone(), stop.clone());
    let mut run = start(&cfg, dir.path());
    wait_ready(http, &mut run);
    const N: usize = 12_000;
    let (mqtt, t) = (broker.port, format!("{topic}/in"));
    let publisher = std::thread::spawn(move || {
        let all: Vec<String> = (0..N).map(reading).collect();
        for chunk in all.chunks(1_000) {
            publish(mqtt, &t, chunk);
        }
    });
    let points = || influx.count("plant", "telemetry", "temperature") as usize;
    for kill in 1..=2 {
        wait_until(60, "points to arrive", || points() >= kill * N / 4);
        signal(&run, "-KILL");
        run.wait().unwrap();
        run = start(&cfg, dir.path());
    }
    publisher.join().unwrap();
    wait_until(90, "every reading in InfluxDB", || points() >= N);
    wait_until(60, "every reading at the endpoint", || {
        script.taken.lock().unwrap().len() >= N
    });
    wait_ready(http, &mut run);
    signal(&run, "-TERM");
    let out = wait_output(&mut run, 30);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(points(), N, "one point per reading");
    let taken = script.taken.lock().unwrap();
    let seqs: Vec<i64> = taken.keys().copied().collect();
    assert_eq!(seqs, (0..N as i64).collect::<Vec<_>>());
    let again: u32 = taken.values().map(|n| n - 1).sum();
    eprintln!("the endpoint took {again} records again after the kills");
    drop(taken);
    stop.store(true, SeqCst);
    server.join().unwrap();
}

/// A burst at Mosquitto's default limits (20 messages in flight on MQTT
/// 3.1.1, 1,000 queued, then dropped) into an endpoint that takes 500 ms a
/// request and into InfluxDB, bodies gzipped. With the local buffer
/// (`buffer.mode = "always"`) every message arrives, exactly once in
/// InfluxDB and at least once at the endpoint, with requests in flight at
/// once; the same endpoint behind a run without the buffer, beside it,
/// loses what the broker dropped (the burst is one that overflows it).
#[test]
fn a_burst_at_the_brokers_limits_arrives_whole_through_the_local_buffer() {
    let broker = Mosquitto::with(MosquittoConfig {
        queue_defaults: true,
        ..Default::default()
    });
    let influx = Influx::start();
    influx.query("", "CREATE DATABASE burst");
    let dir = testkit::TempDir::new().unwrap();
    let topic = unique_id("burst");
    let tsdb = format!(
        r#"
[sinks.tsdb]
type = "influxdb"
inputs = ["telemetry"]
url = "{}"
database = "burst"
measurement = "telemetry"
tags = ["device_id"]
timestamp = "timestamp"
compression = "gzip"
"#,
        influx.url()
    );
    let pipeline = |name: &str, mode: &str, port: u16, http: u16, more: &str| {
        write(
            dir.path(),
            &format!("{name}.toml"),
            &format!(
                r#"
[connections.b]
broker = "mqtt://127.0.0.1:{mqtt}"
client_id = "{topic}-{name}"
clean_session = false
protocol = "3.1.1"
[sources.telemetry]
type = "mqtt"
connection = "b"
topics = ["{topic}/in"]
buffer.mode = "{mode}"
[sinks.hook]
type = "webhook"
inputs = ["telemetry"]
url = "http://127.0.0.1:{port}/ingest"
batch = "ndjson"
batch_size = 1000
compression = "gzip"
{more}
[http]
listen = "127.0.0.1:{http}"
"#,
                mqtt = broker.port
            ),
        )
    };
    let mut runs = Vec::new();
    let mut scripts = Vec::new();
    let mut servers = Vec::new();
    let stop = Arc::new(AtomicBool::new(false));
    for (name, mode, more) in [("on", "always", tsdb.as_str()), ("off", "off", "")] {
        let (port, http) = (free_port(), free_port());
        let script = Arc::new(Script::default());
        script.delay_ms.store(500, SeqCst);
        servers.push(serve(port, script.clone(), stop.clone()));
        let cfg = pipeline(name, mode, port, http, more);
        let mut run = start(&cfg, dir.path());
        wait_ready(http, &mut run);
        runs.push((run, http));
        scripts.push(script);
    }
    const N: usize = 20_000;
    let all: Vec<String> = (0..N).map(reading).collect();
    // In chunks: a publisher at full speed on a loaded machine outruns
    // even mosquitto_sub (see broker_limits.rs); this pace a consumer that
    // acknowledges on arrival keeps up with, one that waits for the
    // endpoint does not.
    for chunk in all.chunks(1_000) {
        publish(broker.port, &format!("{topic}/in"), chunk);
    }
    let (on, off) = (&scripts[0], &scripts[1]);
    let taken = |s: &Script| s.taken.lock().unwrap().len();
    let points = || influx.count("burst", "telemetry", "temperature") as usize;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while taken(on) != N || points() != N {
        assert!(
            std::time::Instant::now() < deadline,
            "{} at the endpoint, {} points of {N}; acknowledged {}",
            taken(on),
            points(),
            acked(runs[0].1, "telemetry")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    wait_until(30, "every message acknowledged", || {
        acked(runs[0].1, "telemetry") == N as u64
    });
    // The run without the buffer: what the broker did not drop, settled.
    let mut last = (taken(off), std::time::Instant::now());
    while last.1.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(200));
        if taken(off) != last.0 {
            last = (taken(off), std::time::Instant::now());
        }
    }
    eprintln!(
        "with the buffer: {} of {N} at the endpoint in {} requests, {} at once at most, {} points; without: {} of {N}",
        taken(on),
        on.requests.load(SeqCst),
        on.most_open.load(SeqCst),
        points(),
        last.0
    );
    assert!(
        last.0 < N,
        "the burst must overflow the broker without the buffer"
    );
    assert!(on.most_open.load(SeqCst) >= 2, "requests in flight at once");
    assert_eq!(on.gzipped.load(SeqCst), on.requests.load(SeqCst));
    for (mut run, _) in runs {
        signal(&run, "-TERM");
        let out = wait_output(&mut run, 30);
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    assert_eq!(points(), N, "one point per message");
    stop.store(true, SeqCst);
    servers.into_iter().for_each(|s| s.join().unwrap());
}
