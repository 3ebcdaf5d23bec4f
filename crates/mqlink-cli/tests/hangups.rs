//! Brokers that hang up instead of answering, and clients that take each
//! other's session: `mqlink sub` and `mqlink run` end with an error that
//! names the cause within seconds, never a reconnect loop, and stop on a
//! signal in every state.
//!
//! - ejabberd (mod_mqtt, MQTT 3.1.1) closes the connection at a SUBSCRIBE
//!   to `$share/…`; mosquitto_sub, the control, subscribes again and again.
//! - Two processes with one client id against Mosquitto: the broker closes
//!   the older connection each time the other connects (MQTT 5: DISCONNECT
//!   0x8E), so they would take the session from each other forever.

use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use testkit::{signal, unique_id, wait_output, Make, Mosquitto, OtherBroker};

fn mqlink() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mqlink"));
    c.env_remove("RUST_LOG");
    c
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn ejabberd() -> Option<OtherBroker> {
    match OtherBroker::start(Make::Ejabberd) {
        Ok(b) => Some(b),
        Err(e) if std::env::var_os("MQLINK_INTEROP_SKIP").is_some() => {
            eprintln!("SKIPPED (MQLINK_INTEROP_SKIP): {e}");
            None
        }
        Err(e) => panic!("{e}; `bash scripts/test.sh` installs it (MQLINK_INTEROP_SKIP=1 skips)"),
    }
}

/// Runs to the end, at most `secs`; the output and how long it took.
fn run_bounded(c: &mut Command, secs: u64) -> (Output, Duration) {
    let t = Instant::now();
    let mut child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_output(&mut child, secs);
    (out, t.elapsed())
}

#[test]
fn sub_shared_on_a_broker_that_hangs_up_exits_naming_the_filter() {
    let Some(b) = ejabberd() else { return };
    let filter = format!("$share/g/{}", unique_id("x"));
    for v in ["311", "5"] {
        let (out, took) = run_bounded(
            mqlink()
                .args(["sub", "-h", "127.0.0.1", "-p", &b.port.to_string()])
                .args(["-u", &b.user, "-P", &b.password, "-V", v, "-q", "1"])
                .args(["-t", &filter]),
            20,
        );
        let err = text(&out.stderr);
        eprintln!("-V {v}: {:?} in {took:?}: {err}", out.status);
        assert!(took < Duration::from_secs(15), "-V {v}: {took:?}: {err}");
        assert_eq!(out.status.code(), Some(1), "-V {v}: {err}");
        assert!(
            err.contains(&format!("{filter:?}")) && err.contains("shared subscriptions"),
            "-V {v}: {err}"
        );
        // Three attempts, not a loop of warnings.
        assert!(err.matches("Connection lost").count() <= 3, "-V {v}: {err}");
    }
}

#[test]
fn pipeline_share_group_on_a_broker_that_hangs_up_exits_naming_the_filter() {
    let Some(b) = ejabberd() else { return };
    let dir = testkit::TempDir::new().unwrap();
    let topic = unique_id("x");
    for protocol in ["3.1.1", "5"] {
        let file = testkit::write(
            dir.path(),
            "p.toml",
            &format!(
                r#"[connections.b]
broker = "mqtt://127.0.0.1:{port}"
username = "{user}"
password = "{pw}"
protocol = "{protocol}"
client_id = "{id}"
[sources.s]
type = "mqtt"
connection = "b"
topics = ["{topic}"]
share_group = "g"
[sinks.out]
type = "file"
inputs = ["s"]
path = "out.jsonl"
"#,
                port = b.port,
                user = b.user,
                pw = b.password,
                id = unique_id("p"),
            ),
        );
        let (out, took) = run_bounded(mqlink().arg("run").arg(&file).current_dir(dir.path()), 25);
        let err = text(&out.stderr);
        eprintln!("{protocol}: {:?} in {took:?}: {err}", out.status);
        assert!(
            took < Duration::from_secs(15),
            "{protocol}: {took:?}: {err}"
        );
        assert!(!out.status.success(), "{protocol}: {err}");
        assert!(
            err.contains(&format!("\"$share/g/{topic}\"")) && err.contains("shared subscriptions"),
            "{protocol}: {err}"
        );
    }
}

/// A broker that takes the TCP connection and never answers (stopped with
/// SIGSTOP): `mqlink sub` and `mqlink pub` are still connecting when
/// SIGINT comes, and end by their own hand, not killed by the signal (sub
/// exits 0 as on any SIGINT; pub 1, its message not sent).
#[test]
fn sub_and_pub_stop_on_sigint_while_connecting() {
    let mut m = Mosquitto::start();
    m.pause();
    let port = m.port.to_string();
    for (args, code) in [
        (vec!["sub", "-t", "a"], 0),
        (vec!["pub", "-t", "a", "-m", "x"], 1),
    ] {
        let mut child = mqlink()
            .args(&args)
            .args(["-h", "127.0.0.1", "-p", &port])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(1500));
        signal(&child, "-INT");
        let t = Instant::now();
        let out = wait_output(&mut child, 10);
        let err = text(&out.stderr);
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "{args:?}: {:?}",
            t.elapsed()
        );
        assert_eq!(
            out.status.code(),
            Some(code),
            "{args:?}: {:?}: {err}",
            out.status
        );
        if code == 1 {
            assert!(err.contains("interrupted before connecting"), "{err}");
        }
    }
    m.resume();
}

fn sub_with_id(port: u16, auth: &[&str], id: &str, v: &str) -> Child {
    mqlink()
        .args(["sub", "-h", "127.0.0.1", "-p", &port.to_string(), "-V", v])
        .args(auth)
        .args(["-i", id, "-q", "1", "-t", "takeover/x"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Two `mqlink sub` with one client id: one of them ends, saying the id is
/// in use by another process, within 30 s; the other stays. `says` is
/// what the error must also contain.
fn two_subs(port: u16, auth: &[&str], v: &str, says: &str) {
    let id = unique_id("same");
    let mut a = sub_with_id(port, auth, &id, v);
    std::thread::sleep(Duration::from_millis(500));
    let mut b = sub_with_id(port, auth, &id, v);
    let t = Instant::now();
    let (mut ended, mut stayed) = loop {
        if a.try_wait().unwrap().is_some() {
            break (a, b);
        }
        if b.try_wait().unwrap().is_some() {
            break (b, a);
        }
        if t.elapsed() > Duration::from_secs(30) {
            let _ = a.kill();
            let _ = b.kill();
            panic!("-V {v}: both still flapping after 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let took = t.elapsed();
    let out = wait_output(&mut ended, 5);
    let err = text(&out.stderr);
    eprintln!("-V {v}: one ended after {took:?}: {err}");
    assert_eq!(out.status.code(), Some(1), "-V {v}: {err}");
    assert!(
        err.contains(&format!("client id {id:?} is in use by another process"))
            && err.contains(says),
        "-V {v}: {err}"
    );
    // The other one keeps its session.
    std::thread::sleep(Duration::from_secs(3));
    let alive = stayed.try_wait().unwrap().is_none();
    signal(&stayed, "-INT");
    let out = wait_output(&mut stayed, 10);
    assert!(
        alive,
        "-V {v}: the other one ended too: {}",
        text(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "-V {v}: {}", text(&out.stderr));
}

/// Mosquitto 2.0 closes the older connection without a DISCONNECT, on
/// MQTT 5 too.
#[test]
fn two_subs_with_one_client_id_end_in_an_error_not_flapping() {
    let m = Mosquitto::start();
    for v in ["5", "311"] {
        two_subs(m.port, &[], v, "right after CONNACK 4 times in a row");
    }
}

/// ejabberd sends DISCONNECT 0x8E (session taken over) on MQTT 5.
#[test]
fn two_subs_with_one_client_id_on_mqtt5_name_the_takeover() {
    let Some(b) = ejabberd() else { return };
    let auth = ["-u", &b.user, "-P", &b.password];
    two_subs(b.port, &auth, "5", "DISCONNECT 0x8e, session taken over");
}

/// amqtt never answers an MQTT 5 CONNECT: `mqlink sub -V 5` says to use
/// 3.1.1 when the connect times out, and without -V it falls back and
/// subscribes.
#[test]
fn sub_mqtt5_on_a_broker_that_never_answers_says_use_311() {
    let b = match OtherBroker::start(Make::Amqtt) {
        Ok(b) => b,
        Err(e) if std::env::var_os("MQLINK_INTEROP_SKIP").is_some() => {
            eprintln!("SKIPPED (MQLINK_INTEROP_SKIP): {e}");
            return;
        }
        Err(e) => panic!("{e}; `bash scripts/test.sh` installs it (MQLINK_INTEROP_SKIP=1 skips)"),
    };
    let port = b.port.to_string();
    let auth = ["-u", b.user.as_str(), "-P", b.password.as_str()];
    let (out, took) = run_bounded(
        mqlink()
            .args(["sub", "-h", "127.0.0.1", "-p", &port, "-V", "5", "-t", "a"])
            .args(auth),
        30,
    );
    let err = text(&out.stderr);
    eprintln!("-V 5: {:?} in {took:?}: {err}", out.status);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("did not answer an MQTT 5 CONNECT") && err.contains("-V 311"),
        "{err}"
    );
    // The protocol not given: MQTT 5 first, then 3.1.1, subscribed.
    let (out, _) = run_bounded(
        mqlink()
            .args(["sub", "-h", "127.0.0.1", "-p", &port, "-t", "a", "-E"])
            .args(auth),
        30,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
}
