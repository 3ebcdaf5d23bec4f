//! `mqlink airbyte` with Airbyte protocol fixtures against real Mosquitto.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{json, Value};
use testkit::{unique_id, Mosquitto, MosquittoConfig};

fn mqlink() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mqlink"))
}

fn config(dir: &std::path::Path, port: u16, extra: Value) -> std::path::PathBuf {
    let mut c = json!({"broker_host": "127.0.0.1", "broker_port": port, "use_tls": false,
        "topic_pattern": "ab/{namespace}/{stream}", "publisher_sync": false, "connect_timeout": 3,
        "automatic_reconnect": true, "clean_session": true, "message_retained": false,
        "message_qos": "AT_LEAST_ONCE"});
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    let p = dir.join(format!("config-{}.json", unique_id("c")));
    std::fs::write(&p, c.to_string()).unwrap();
    p
}

fn catalog(dir: &std::path::Path) -> std::path::PathBuf {
    let c = json!({"streams": [
        {"stream": {"name": "users", "namespace": "public", "json_schema": {}}, "sync_mode": "incremental", "destination_sync_mode": "append"},
        {"stream": {"name": "events", "json_schema": {}}, "sync_mode": "incremental", "destination_sync_mode": "append"}
    ]});
    let p = dir.join("catalog.json");
    std::fs::write(&p, c.to_string()).unwrap();
    p
}

/// `mqlink airbyte write` with stdin and stdout piped.
fn write(cfg: &std::path::Path, cat: &std::path::Path) -> std::process::Child {
    mqlink()
        .args(["airbyte", "write", "--config"])
        .arg(cfg)
        .arg("--catalog")
        .arg(cat)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

fn messages(out: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line {l:?}: {e}")))
        .collect()
}

#[test]
fn spec_and_check() {
    let broker = Mosquitto::with(MosquittoConfig {
        users: vec![("ab".into(), "pw".into())],
        ..Default::default()
    });
    let dir = broker.dir.path();
    let out = mqlink().args(["airbyte", "spec"]).output().unwrap();
    let spec = &messages(&out.stdout)[0];
    assert_eq!(spec["type"], "SPEC");
    assert_eq!(
        spec["spec"]["connectionSpecification"]["properties"]["password"]["airbyte_secret"],
        true
    );
    let check = |cfg: &std::path::Path| {
        let out = mqlink()
            .args(["airbyte", "check", "--config"])
            .arg(cfg)
            .output()
            .unwrap();
        assert!(out.status.success());
        messages(&out.stdout).pop().unwrap()["connectionStatus"].clone()
    };
    // Closed port.
    let closed = config(dir, testkit::free_port(), json!({}));
    let s = check(&closed);
    assert_eq!(s["status"], "FAILED");
    assert!(
        s["message"].as_str().unwrap().contains("cannot reach"),
        "{s}"
    );
    // Wrong password: says so, and does not print it.
    let wrong = config(
        dir,
        broker.port,
        json!({"username": "ab", "password": "nope-123"}),
    );
    let s = check(&wrong);
    assert_eq!(s["status"], "FAILED");
    let m = s["message"].as_str().unwrap();
    assert!(
        m.contains("not authorized") || m.contains("bad user name"),
        "{m}"
    );
    assert!(!m.contains("nope-123"));
    // Live broker: connects with the configured client id and publishes to topic_test.
    let client = unique_id("ab-client");
    let live = config(
        dir,
        broker.port,
        json!({"username": "ab", "password": "pw", "client": client, "topic_test": "ab/check"}),
    );
    let s = check(&live);
    assert_eq!(s["status"], "SUCCEEDED", "{s}");
    assert!(
        broker.log().contains(&format!("as {client}")),
        "client id not used"
    );
    assert!(broker.log().contains("Received PUBLISH") || broker.log().contains(&client));
}

/// Reads stdout lines on a thread, so a test can wait for one with a timeout.
fn line_reader(stdout: std::process::ChildStdout) -> mpsc::Receiver<Value> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines() {
            let Ok(l) = l else { return };
            let _ = tx.send(serde_json::from_str::<Value>(&l).unwrap());
        }
    });
    rx
}

#[test]
fn write_round_trips_types_routes_streams_and_orders_states() {
    let mut broker = Mosquitto::start();
    let dir = broker.dir.path().to_owned();
    let cfg = config(&dir, broker.port, json!({}));
    let cat = catalog(&dir);
    // An independent subscriber records what reached the broker; a retained
    // probe it must print first tells us it is subscribed.
    let mut sub = Command::new("mosquitto_sub")
        .args([
            "-p",
            &broker.port.to_string(),
            "-t",
            "ab/#",
            "-v",
            "-q",
            "1",
            "-C",
            "5",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    testkit::mosquitto_pub(&[
        "-p",
        &broker.port.to_string(),
        "-t",
        "ab/probe",
        "-m",
        "{}",
        "-r",
        "-q",
        "1",
    ]);
    let (sub_tx, sub_lines) = mpsc::channel::<String>();
    let sub_stdout = sub.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(sub_stdout).lines().map_while(Result::ok) {
            let _ = sub_tx.send(l);
        }
    });
    let probe = sub_lines
        .recv_timeout(Duration::from_secs(10))
        .expect("subscriber ready");
    assert!(probe.starts_with("ab/probe "), "{probe}");
    let mut child = write(&cfg, &cat);
    let mut stdin = child.stdin.take().unwrap();
    let out = line_reader(child.stdout.take().unwrap());
    let data = json!({"int": 1, "neg": -9007199254740993i64, "float": 1.5e300, "small": 1e-7, "s": "ü\"\\n\u{1F600}",
                      "t": true, "f": false, "null": null, "arr": [1, "a", {"k": [null]}], "obj": {"nested": {"x": 0}}});
    let rec = |stream: &str, ns: Option<&str>, d: &Value| {
        let mut r = json!({"type": "RECORD", "record": {"stream": stream, "data": d, "emitted_at": 1700000000000u64}});
        if let Some(ns) = ns {
            r["record"]["namespace"] = json!(ns);
        }
        r.to_string()
    };
    writeln!(stdin, "{}", rec("users", Some("public"), &data)).unwrap();
    writeln!(stdin, "this is not json").unwrap();
    writeln!(stdin, "{}", rec("events", None, &json!({"e": 1}))).unwrap();
    writeln!(
        stdin,
        "{}",
        json!({"type": "STATE", "state": {"data": {"cursor": 1}}})
    )
    .unwrap();
    stdin.flush().unwrap();
    let mut got = Vec::new();
    while !got.iter().any(|m: &Value| m["type"] == "STATE") {
        got.push(
            out.recv_timeout(Duration::from_secs(10))
                .expect("first STATE"),
        );
    }
    let log = got
        .iter()
        .find(|m| m["type"] == "LOG")
        .expect("a LOG for the bad line");
    assert!(
        log["log"]["message"].as_str().unwrap().contains("line 2"),
        "{log}"
    );
    // The broker stops acknowledging: a STATE after new records must wait.
    broker.pause();
    writeln!(stdin, "{}", rec("events", None, &json!({"e": 2}))).unwrap();
    writeln!(stdin, "{}", rec("users", Some("public"), &json!({"u": 2}))).unwrap();
    let global = json!({"type": "STATE", "state": {"type": "GLOBAL", "global": {"shared_state": {"lsn": 2}, "stream_states": []}}});
    writeln!(stdin, "{global}").unwrap();
    stdin.flush().unwrap();
    assert!(
        out.recv_timeout(Duration::from_millis(1500)).is_err(),
        "a STATE was printed before its records were confirmed"
    );
    broker.resume();
    let state = out
        .recv_timeout(Duration::from_secs(20))
        .expect("second STATE after resume");
    assert_eq!(state, global, "echoed exactly, once");
    drop(stdin);
    let status = child.wait().unwrap();
    assert!(status.success());
    let rest: Vec<Value> = out.iter().collect();
    assert!(rest.iter().all(|m| m["type"] == "LOG"), "{rest:?}");
    // What reached the broker: topics and data exactly as given.
    assert!(sub.wait().unwrap().success());
    let lines: Vec<(String, Value)> = sub_lines
        .iter()
        .map(|l| {
            let (t, p) = l.split_once(' ').unwrap();
            (t.to_owned(), serde_json::from_str(p).unwrap())
        })
        .collect();
    assert_eq!(lines[0].0, "ab/public/users");
    assert_eq!(lines[0].1["_airbyte_data"], data);
    assert_eq!(lines[0].1["_airbyte_stream"], "users");
    assert_eq!(lines[0].1["_airbyte_emitted_at"], 1700000000000u64);
    assert_eq!(lines[0].1["_airbyte_ab_id"].as_str().unwrap().len(), 36);
    assert_eq!(
        lines[1].0, "ab//events",
        "an absent namespace renders empty"
    );
}

#[test]
fn a_record_for_an_unknown_stream_is_a_fatal_error() {
    let broker = Mosquitto::start();
    let dir = broker.dir.path();
    let cfg = config(dir, broker.port, json!({}));
    let cat = catalog(dir);
    let mut child = write(&cfg, &cat);
    let r = json!({"type": "RECORD", "record": {"stream": "nope", "data": {}, "emitted_at": 1}});
    writeln!(child.stdin.take().unwrap(), "{r}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    let msgs = messages(&out.stdout);
    let trace = msgs.iter().find(|m| m["type"] == "TRACE").expect("a TRACE");
    assert_eq!(trace["trace"]["type"], "ERROR");
    assert!(
        trace["trace"]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("\"nope\""),
        "{trace}"
    );
}

/// The broker cannot be reached when a sync starts: the write fails within
/// connect_timeout (it used to wait forever) with a transient_error, so
/// Airbyte retries the sync.
#[test]
fn an_unreachable_broker_fails_the_write_fast_and_transiently() {
    let dir = testkit::TempDir::new().unwrap();
    let cfg = config(
        dir.path(),
        testkit::free_port(),
        json!({"connect_timeout": 2}),
    );
    let cat = catalog(dir.path());
    let t = std::time::Instant::now();
    let out = mqlink()
        .args(["airbyte", "write", "--config"])
        .arg(&cfg)
        .arg("--catalog")
        .arg(&cat)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    let msgs = messages(&out.stdout);
    let trace = msgs.iter().find(|m| m["type"] == "TRACE").expect("a TRACE");
    assert_eq!(
        trace["trace"]["error"]["failure_type"], "transient_error",
        "{trace}"
    );
    assert!(
        trace["trace"]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("cannot reach"),
        "{trace}"
    );
}

/// A line that is not UTF-8 is skipped and logged like one that is not
/// JSON; the records around it are published.
#[test]
fn invalid_utf8_lines_are_skipped_not_fatal() {
    let broker = Mosquitto::start();
    let dir = broker.dir.path();
    let cfg = config(dir, broker.port, json!({}));
    let cat = catalog(dir);
    let mut child = write(&cfg, &cat);
    {
        let mut stdin = child.stdin.take().unwrap();
        let r = |i: u32| json!({"type": "RECORD", "record": {"stream": "events", "data": {"i": i}, "emitted_at": 1}});
        writeln!(stdin, "{}", r(1)).unwrap();
        stdin
            .write_all(b"{\"type\": \"RECORD\", \"x\": \"\xff\xfe\"}\n")
            .unwrap();
        writeln!(stdin, "not json").unwrap();
        writeln!(stdin, "{}", r(2)).unwrap();
        writeln!(
            stdin,
            "{}",
            json!({"type": "STATE", "state": {"data": {"n": 2}}})
        )
        .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let msgs = messages(&out.stdout);
    let logs: Vec<&str> = msgs
        .iter()
        .filter(|m| m["type"] == "LOG")
        .filter_map(|m| m["log"]["message"].as_str())
        .collect();
    assert!(
        logs.iter().any(|l| l.contains("line 2 is not UTF-8")),
        "{logs:?}"
    );
    assert!(
        logs.iter()
            .any(|l| l.contains("line 3 is not a valid Airbyte message")),
        "{logs:?}"
    );
    assert!(
        logs.iter()
            .any(|l| l.contains("2 records confirmed by the broker; 2 input lines skipped")),
        "{logs:?}"
    );
    assert!(
        msgs.iter().any(|m| m["type"] == "STATE"),
        "the STATE after both records"
    );
}

/// CA certificate, client certificate and key pasted as PEM text (Airbyte
/// runs connectors in containers), `test_topic` as the original's code
/// reads it, and no secret in any message when something is wrong.
#[test]
fn inline_pem_test_topic_and_no_secret_in_messages() {
    let broker = Mosquitto::with(MosquittoConfig {
        tls: true,
        require_certificate: true,
        ..Default::default()
    });
    let certs = broker.certs.as_ref().unwrap();
    let pem = |p: &std::path::Path| std::fs::read_to_string(p).unwrap();
    let dir = broker.dir.path();
    let check = |extra: Value| {
        let cfg = config(dir, broker.tls_port.unwrap(), extra);
        let out = mqlink()
            .args(["airbyte", "check", "--config"])
            .arg(&cfg)
            .output()
            .unwrap();
        assert!(out.status.success());
        let all = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (
            messages(&out.stdout).pop().unwrap()["connectionStatus"].clone(),
            all,
        )
    };
    let key = pem(&certs.client_key);
    let (s, _) = check(
        json!({"use_tls": true, "ca_file": pem(&certs.ca), "client_cert": pem(&certs.client_cert),
        "client_key": key, "test_topic": "ab/pem"}),
    );
    assert_eq!(s["status"], "SUCCEEDED", "{s}");
    // A key that is not a key: the error names the field, not the PEM.
    let bad_key = format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        "c2VjcmV0LWtleS1ib2R5".repeat(3)
    );
    let (s, all) = check(
        json!({"use_tls": true, "ca_file": pem(&certs.ca), "client_cert": pem(&certs.client_cert),
        "client_key": bad_key}),
    );
    assert_eq!(s["status"], "FAILED", "{s}");
    let body: String = bad_key
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    assert!(!all.contains(&body[..40]), "the key was echoed: {all}");
    // Credentials in the host are refused without being echoed.
    let (s, all) = check(json!({"broker_host": "u:hunter2-pw@127.0.0.1"}));
    assert_eq!(s["status"], "FAILED", "{s}");
    assert!(!all.contains("hunter2-pw"), "{all}");
}

/// AT_MOST_ONCE has no confirmation: the summary says "written", and the
/// last records still reach the broker (the write ends with a DISCONNECT
/// and waits for the broker to close, so nothing is cut off at exit).
#[test]
fn at_most_once_writes_every_record_and_claims_no_confirmation() {
    let broker = Mosquitto::start();
    let dir = broker.dir.path();
    let cfg = config(dir, broker.port, json!({"message_qos": "AT_MOST_ONCE"}));
    let cat = catalog(dir);
    let port = broker.port.to_string();
    let (mut sub, lines) = testkit::mosquitto_sub(&["-p", &port, "-t", "ab/#", "-q", "0"]);
    // Subscribed once a retained probe comes back.
    testkit::mosquitto_pub(&["-p", &port, "-t", "ab/probe", "-m", "p", "-r"]);
    assert_eq!(lines.recv_timeout(Duration::from_secs(10)).unwrap(), "p");
    let n = 1_100;
    let input: String = (0..n)
        .map(|i| format!("{}\n", json!({"type": "RECORD", "record": {"stream": "events", "data": {"i": i}, "emitted_at": 1}})))
        .collect();
    for run in 0..5 {
        let mut child = write(&cfg, &cat);
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "run {run}");
        let logs = String::from_utf8_lossy(&out.stdout);
        assert!(
            logs.contains(&format!(
                "{n} records written to the broker (QoS 0: not confirmed)"
            )),
            "{logs}"
        );
        assert!(!logs.contains("confirmed by the broker"), "{logs}");
        let mut got = 0;
        while got < n {
            match lines.recv_timeout(Duration::from_secs(10)) {
                Ok(_) => got += 1,
                Err(_) => panic!("run {run}: {got} of {n} records reached the subscriber"),
            }
        }
    }
    let _ = sub.kill();
}

/// A secret is never printed whatever its type: a password written as a
/// number is a password (the pipeline files' rule), one written as a list
/// is refused without being shown; a key without PEM armour is refused
/// without being shown, and PEM text is written to files removed at exit.
#[test]
fn secrets_of_any_type_and_keys_without_armour_are_never_printed() {
    let dir = testkit::TempDir::new().unwrap();
    let tmp = testkit::TempDir::new().unwrap();
    let port = testkit::free_port();
    let run = |extra: Value| {
        let cfg = config(dir.path(), port, extra);
        let out = mqlink()
            .args(["airbyte", "check", "--config"])
            .arg(&cfg)
            .env("TMPDIR", tmp.path())
            .output()
            .unwrap();
        let all = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (
            messages(&out.stdout).pop().unwrap()["connectionStatus"].clone(),
            all,
        )
    };
    for password in [
        json!(84736251907u64),
        json!([84736251907u64]),
        json!({"p": 84736251907u64}),
    ] {
        let (s, all) = run(json!({ "username": "u", "password": password }));
        assert_eq!(s["status"], "FAILED", "{s}");
        assert!(!all.contains("84736251907"), "{all}");
    }
    let body = "TUlJRXZRSUJBREFOQmdrcWhraUc5dzBCQVFFRkFBU0NCS2N3Z2dTakFnRUFBb0lCQVFD";
    let (s, all) = run(json!({"use_tls": true, "client_key": body}));
    assert_eq!(s["status"], "FAILED", "{s}");
    assert!(all.contains("client_key is neither a PEM block"), "{all}");
    assert!(!all.contains(&body[..20]), "the key was echoed: {all}");
    let pem = format!("-----BEGIN PRIVATE KEY-----\n{body}\n-----END PRIVATE KEY-----\n");
    let (s, all) = run(
        json!({"use_tls": true, "client_key": pem, "ca_file": pem.replace("PRIVATE KEY", "CERTIFICATE")}),
    );
    assert_eq!(s["status"], "FAILED", "{s}");
    assert!(!all.contains(&body[..20]), "the key was echoed: {all}");
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "temporary files left: {left:?}");
}
