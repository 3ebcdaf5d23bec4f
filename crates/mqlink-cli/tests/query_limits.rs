//! /query cannot take a running pipeline down: expressions too deep, values
//! too large, too many or too slow queries and abandoned ones are answered
//! with errors while the pipeline keeps moving and its memory stays within
//! the budget; off loopback a bearer token is required (by the console
//! too) and never printed;
//! `mqlink run` serves HTTP on loopback by default and `mqlink query` finds
//! it with no flags.
#![cfg(feature = "sql")]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use testkit::{free_port, http_get, wait_until, TempDir};

fn mqlink() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mqlink"));
    c.env_remove("MQLINK_LOG")
        .env_remove("MQLINK_URL")
        .env_remove("MQLINK_HTTP_TOKEN");
    c
}

/// `mqlink run` killed when the test ends, however it ends.
struct Running {
    child: Child,
    log: std::path::PathBuf,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Running {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
    /// Resident memory in KiB.
    fn rss_kib(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }
}

/// A generator (200 records/s, forever) into a file: no broker needed.
const PIPELINE: &str = "[sources.g]\ntype = \"generator\"\nrate = 200\n\n[sinks.out]\ntype = \"file\"\ninputs = [\"g\"]\npath = \"out.jsonl\"\n";

fn start(dir: &Path, file: &str, args: &[&str], env: &[(&str, &str)]) -> Running {
    let log = dir.join(format!("run-{}.log", free_port()));
    let mut c = mqlink();
    c.args(["run", file])
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    for (k, v) in env {
        c.env(k, v);
    }
    Running {
        child: c.spawn().unwrap(),
        log,
    }
}

fn ready(run: &mut Running, http: u16) {
    wait_until(30, "the pipeline to be ready", || {
        assert!(run.alive(), "{}", run.log());
        http_get(http, "/ready").is_some_and(|(c, _)| c == 200)
    });
}

/// A raw HTTP exchange: the status code and the body.
fn exchange(port: u16, request: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    let text = String::from_utf8_lossy(&resp).into_owned();
    let code = text.split(' ').nth(1).unwrap().parse().unwrap();
    let body = text.split_once("\r\n\r\n").unwrap().1.to_string();
    (code, body)
}

fn post(port: u16, sql: &str, token: Option<&str>) -> (u16, String) {
    let auth = token.map_or(String::new(), |t| format!("authorization: Bearer {t}\r\n"));
    exchange(
        port,
        &format!(
            "POST /query HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n{auth}connection: close\r\n\r\n{sql}",
            sql.len()
        ),
    )
}

fn get(port: u16, sql: &str) -> (u16, String) {
    let encoded: String = sql
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    exchange(
        port,
        &format!("GET /query?sql={encoded} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"),
    )
}

fn records(http: u16) -> u64 {
    let (code, body) = post(
        http,
        "SELECT records FROM system.connector_status WHERE name = 'g'",
        None,
    );
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["rows"][0][0].as_u64().unwrap()
}

#[test]
fn bad_queries_are_errors_and_the_pipeline_keeps_moving_within_its_memory() {
    let dir = TempDir::new().unwrap();
    std::fs::write(dir.path().join("p.toml"), PIPELINE).unwrap();
    let http = free_port();
    let listen = format!("127.0.0.1:{http}");
    let mut run = start(dir.path(), "p.toml", &["--http-listen", &listen], &[]);
    ready(&mut run, http);
    let before = records(http);
    let rss_before = run.rss_kib();

    // 1,000 terms: refused before planning, GET and POST alike.
    let deep = format!("SELECT {}", vec!["1"; 1000].join("+"));
    for (code, body) in [post(http, &deep, None), get(http, &deep)] {
        assert_eq!(code, 400, "{body}");
        assert!(body.contains("nests more than 256 levels"), "{body}");
        assert!(body.len() < 600, "the error echoes the query: {body}");
    }
    // 2 GB of 'x': refused before it is made; a folded constant alike.
    for sql in [
        "SELECT length(repeat('x', 2000000000))",
        "SELECT length(repeat('x', CAST('2000000000' AS BIGINT)))",
        "SELECT length(lpad('x', 2000000000))",
        "SELECT length(c || c || c || c) FROM (SELECT repeat('x', 30000000) AS c)",
    ] {
        for (code, body) in [post(http, sql, None), get(http, sql)] {
            assert_eq!(code, 400, "{sql}: {body}");
            assert!(body.contains("at most 64 MiB"), "{sql}: {body}");
        }
    }
    // Within the budget it answers.
    let (code, body) = post(http, "SELECT length(repeat('ab', 1000000))", None);
    assert_eq!((code, body.contains("2000000")), (200, true), "{body}");
    // An error quoting a long query is cut; a long name is refused.
    let x = "x".repeat(20_000);
    let long = format!("SELECT * FROM system.connector_status WHERE '{x}'");
    let (code, body) = post(http, &long, None);
    assert_eq!(code, 400, "{body}");
    assert!(body.len() < 600 && body.contains("bytes more"), "{body}");
    let (code, body) = post(
        http,
        &format!("SELECT no_such_{x} FROM system.connector_status"),
        None,
    );
    assert_eq!(code, 400, "{body}");
    assert!(body.len() < 600 && body.contains("at most 255"), "{body}");

    assert!(run.alive(), "{}", run.log());
    let grown = run.rss_kib().saturating_sub(rss_before);
    assert!(grown < 64 * 1024, "RSS grew by {grown} KiB");
    wait_until(10, "records to keep coming", || {
        records(http) > before + 200
    });
}

/// A query of `n` branches, each a call of levenshtein that takes a
/// fraction of a second.
fn slow(n: usize) -> String {
    (0..n)
        .map(|i| {
            format!(
                "SELECT levenshtein(repeat('a', 2000), repeat('b', {}))",
                2000 + i
            )
        })
        .collect::<Vec<_>>()
        .join(" UNION ALL ")
}

/// `mqlink_queries_running` of /metrics: evaluations whose work has not stopped.
fn running(http: u16) -> u64 {
    let (_, text) = http_get(http, "/metrics").unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("mqlink_queries_running ")?.parse().ok())
        .unwrap()
}

#[test]
fn concurrent_slow_and_abandoned_queries_are_capped_and_stopped() {
    let dir = TempDir::new().unwrap();
    std::fs::write(dir.path().join("p.toml"), PIPELINE).unwrap();
    let http = free_port();
    let listen = format!("127.0.0.1:{http}");
    let mut run = start(dir.path(), "p.toml", &["--http-listen", &listen], &[]);
    ready(&mut run, http);
    assert_eq!(running(http), 0);

    // 200 calls: a minute or more unless stopped.
    let slow_sql = slow(200);
    let t0 = Instant::now();
    let slow_ones: Vec<_> = (0..2)
        .map(|_| {
            let sql = slow_sql.clone();
            std::thread::spawn(move || post(http, &sql, None))
        })
        .collect();
    wait_until(5, "two queries running", || running(http) == 2);
    let (code, body) = post(http, "SELECT 1", None);
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("2 queries are running"), "{body}");
    for t in slow_ones {
        let (code, body) = t.join().unwrap();
        assert_eq!(code, 503, "{body}");
        assert!(body.contains("ran out of time"), "{body}");
    }
    assert!(t0.elapsed() < Duration::from_secs(8), "{:?}", t0.elapsed());
    // Their work stops too (within the call of levenshtein under way).
    wait_until(10, "the slow queries' work to stop", || running(http) == 0);
    assert_eq!(post(http, "SELECT 1", None).0, 200);

    // A client that leaves: its query is stopped.
    let mut s = TcpStream::connect(("127.0.0.1", http)).unwrap();
    write!(
        s,
        "POST /query HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n{slow_sql}",
        slow_sql.len()
    )
    .unwrap();
    wait_until(5, "the query to run", || running(http) == 1);
    std::thread::sleep(Duration::from_millis(500));
    drop(s);
    let left = Instant::now();
    wait_until(10, "the abandoned query's work to stop", || {
        running(http) == 0
    });
    assert!(
        left.elapsed() < Duration::from_secs(4),
        "{:?}",
        left.elapsed()
    );
    assert!(run.alive(), "{}", run.log());
}

#[test]
fn a_token_is_required_off_loopback_accepted_and_never_printed() {
    let dir = TempDir::new().unwrap();
    std::fs::write(dir.path().join("p.toml"), PIPELINE).unwrap();
    let http = free_port();
    let any = format!("0.0.0.0:{http}");
    // No token: refused, saying what to set.
    let out = mqlink()
        .args(["run", "p.toml", "--http-listen", &any])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("not a loopback address") && err.contains("MQLINK_HTTP_TOKEN"),
        "{err}"
    );

    let secret = "s3cret-token-4242";
    let mut run = start(
        dir.path(),
        "p.toml",
        &["--http-listen", &any],
        &[("MQLINK_HTTP_TOKEN", secret)],
    );
    wait_until(30, "/health", || {
        assert!(run.alive(), "{}", run.log());
        http_get(http, "/health").is_some_and(|(c, _)| c == 200)
    });
    // Every endpoint but /health, the console included; the console's
    // `?token=` is taken by `/` alone.
    for path in [
        "/".to_string(),
        "/?token=wrong".into(),
        format!("/?token={secret}x"),
        "/status".into(),
        format!("/status?token={secret}"),
        "/metrics".into(),
        "/query?sql=SELECT+1".into(),
    ] {
        let (code, body) = http_get(http, &path).unwrap();
        assert_eq!(code, 401, "{path}: {body}");
        assert!(!body.contains(secret));
    }
    // Probes carry no token: /ready answers them with its code and one
    // word, not its reasons.
    wait_until(30, "/ready", || {
        http_get(http, "/ready").is_some_and(|(c, _)| c == 200)
    });
    let (_, body) = http_get(http, "/ready").unwrap();
    assert_eq!(body, "ready\n");
    assert_eq!(post(http, "SELECT 1", Some("wrong")).0, 401);
    assert_eq!(post(http, "SELECT 1", Some(secret)).0, 200);
    let page = |request: String| {
        let (code, body) = exchange(http, &request);
        assert_eq!(code, 200, "{request}: {body}");
        assert!(body.contains("<title>mqlink console</title>"), "{body}");
    };
    page(format!(
        "GET / HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {secret}\r\nconnection: close\r\n\r\n"
    ));
    page(format!(
        "GET /?token={secret} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    ));

    let url = format!("http://127.0.0.1:{http}");
    let q = |token: Option<&str>| {
        let mut c = mqlink();
        c.args(["query", "--url", &url, "SELECT 1 AS one"]);
        if let Some(t) = token {
            c.env("MQLINK_HTTP_TOKEN", t);
        }
        c.output().unwrap()
    };
    let without = q(None);
    let err = String::from_utf8_lossy(&without.stderr);
    assert!(!without.status.success());
    assert!(
        err.contains("wants a token") && !err.contains(secret),
        "{err}"
    );
    let with = q(Some(secret));
    assert!(
        with.status.success(),
        "{}",
        String::from_utf8_lossy(&with.stderr)
    );
    assert!(String::from_utf8_lossy(&with.stdout).contains("(1 row)"));
    drop(run);
    let log = std::fs::read_to_string(dir.path().join("out.jsonl")).unwrap_or_default();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "log") {
            let text = std::fs::read_to_string(&p).unwrap();
            assert!(!text.contains(secret), "{}: {text}", p.display());
        }
    }
    assert!(!log.contains(secret));
}

#[test]
fn run_serves_http_by_default_and_query_finds_it_with_no_flags() {
    let mut broker = testkit::Mosquitto::start();
    let dir = TempDir::new().unwrap();
    // The default port held: the run falls back to a free one (when
    // another process holds it already, the same happens).
    let _held = TcpListener::bind("127.0.0.1:9464");
    let sql = format!(
        "CREATE CONNECTION c FROM mqtt_source WITH (broker = 'tcp://127.0.0.1:{}', client_id = '{}');
CREATE TABLE t (device_id TEXT) WITH (connector = 'mqtt_source', connection = 'c', topics = '[\"d/+\"]', qos = 1, format = 'json');
CREATE TABLE out WITH (connector = 'file', path = 'out.jsonl');
INSERT INTO out SELECT device_id FROM t;
",
        broker.port,
        testkit::unique_id("default-http")
    );
    std::fs::write(dir.path().join("p.sql"), sql).unwrap();
    let mut run = start(dir.path(), "p.sql", &[], &[]);
    let address = dir.path().join("mqlink-state/http-address");
    wait_until(30, "the address written", || {
        assert!(run.alive(), "{}", run.log());
        std::fs::read_to_string(&address).is_ok_and(|a| a.ends_with('\n'))
    });
    let addr = std::fs::read_to_string(&address).unwrap();
    let port: u16 = addr.trim().rsplit(':').next().unwrap().parse().unwrap();
    assert_ne!(port, 9464, "{addr}");
    assert!(
        run.log().contains(&format!("address={}", addr.trim())),
        "{}",
        run.log()
    );
    ready(&mut run, port);
    let out = mqlink()
        .args([
            "query",
            "SELECT name, status FROM system.connector_status WHERE name = 't'",
        ])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(" t ") && stdout.contains("(1 row)"),
        "{stdout}"
    );
    broker.stop();
}

#[test]
fn http_off_serves_nothing() {
    let dir = TempDir::new().unwrap();
    let finite = PIPELINE.replace("rate = 200", "rate = 0\ncount = 10");
    std::fs::write(dir.path().join("p.toml"), &finite).unwrap();
    std::fs::write(
        dir.path().join("q.toml"),
        format!("{finite}\n[http]\nlisten = \"\"\n"),
    )
    .unwrap();
    for args in [
        &[
            "run",
            "p.toml",
            "--http-listen",
            "off",
            "--until-idle",
            "0.2",
        ][..],
        &["run", "q.toml", "--until-idle", "0.2"][..],
    ] {
        let out = mqlink()
            .args(args)
            .current_dir(dir.path())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {err}");
        assert!(!err.contains("Serving /metrics"), "{args:?}: {err}");
        assert!(!dir.path().join("mqlink-state/http-address").exists());
    }
}
