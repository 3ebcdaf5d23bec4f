//! `mqlink pub` and `mqlink sub` as a user runs them, against Mosquitto
//! brokers the tests start, with mosquitto's own clients as independent peers.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use testkit::{unique_id, Mosquitto, MosquittoConfig};

fn mqlink() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mqlink"));
    c.env_remove("MQLINK_PASSWORD");
    c
}

fn run(args: &[&str]) -> Output {
    mqlink().args(args).output().expect("run mqlink")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Starts `mqlink sub` and waits until its subscription is in place, by
/// publishing probes until one comes out (then the probe line is dropped).
fn start_sub(
    port: u16,
    topic: &str,
    extra: &[&str],
) -> (Child, BufReader<std::process::ChildStdout>) {
    let p = port.to_string();
    let mut args = vec!["sub", "-p", &p, "-t", topic];
    args.extend_from_slice(extra);
    let mut child = mqlink()
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let out = BufReader::new(child.stdout.take().unwrap());
    (child, out)
}

#[test]
fn pub_and_sub_roundtrip_in_both_versions_with_json_and_count() {
    let broker = Mosquitto::start();
    let port = broker.port.to_string();
    for v in ["311", "5"] {
        let topic = format!("cli/{}", unique_id("rt"));
        let (mut sub, mut out) = start_sub(
            broker.port,
            &format!("{topic}/#"),
            &["-V", v, "-q", "2", "--format", "json", "-C", "4"],
        );
        // Wait for the subscription: retained probe on a sub-topic.
        let probe = format!("{topic}/probe");
        testkit::mosquitto_pub(&["-p", &port, "-t", &probe, "-m", "probe", "-r", "-q", "1"]);
        let mut first = String::new();
        out.read_line(&mut first).unwrap();
        assert!(first.contains("\"probe\""), "{first}");
        let mut args = vec![
            "pub", "-p", &port, "-t", &topic, "-q", "1", "-V", v, "-l", "--stats",
        ];
        if v == "5" {
            args.extend([
                "--content-type",
                "text/plain",
                "-D",
                "publish",
                "user-property",
                "k",
                "v",
            ]);
        }
        let mut publ = mqlink()
            .args(&args)
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        publ.stdin
            .take()
            .unwrap()
            .write_all("one\ntwo\n\u{e9}\u{e8}\n".as_bytes())
            .unwrap();
        let publ = publ.wait_with_output().unwrap();
        assert!(publ.status.success(), "{}", text(&publ.stderr));
        let summary = text(&publ.stderr);
        assert!(summary.contains("3 messages confirmed"), "{summary}");
        let status = sub.wait().unwrap();
        assert!(status.success());
        let lines: Vec<serde_json::Value> = out
            .lines()
            .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
            .collect();
        let payloads: Vec<&str> = lines
            .iter()
            .map(|l| l["payload"].as_str().unwrap())
            .collect();
        assert_eq!(
            payloads,
            ["one", "two", "\u{e9}\u{e8}"],
            "-C 4 stops after 4 (probe + 3)"
        );
        for l in &lines {
            assert_eq!(l["topic"], topic.as_str());
            assert_eq!(l["qos"], 1);
            assert!(l["received_at"].as_str().unwrap().ends_with('Z'));
            if v == "5" {
                assert_eq!(l["properties"]["content_type"], "text/plain");
                assert_eq!(l["properties"]["user_properties"][0][1], "v");
            }
        }
    }
}

#[test]
fn verbose_output_binary_payloads_and_timeout() {
    let broker = Mosquitto::start();
    let port = broker.port.to_string();
    let topic = format!("cli/{}", unique_id("v"));
    testkit::mosquitto_pub(&["-p", &port, "-t", &topic, "-m", "kept", "-r"]);
    let out = run(&["sub", "-p", &port, "-t", &topic, "-v", "-W", "1"]);
    // -W ends as mosquitto_sub's does: exit 27.
    assert_eq!(out.status.code(), Some(27));
    assert_eq!(text(&out.stdout), format!("{topic} kept\n"));
    // Binary payload in JSON is base64.
    let f = broker.dir.path().join("bin");
    std::fs::write(&f, [0xff, 0x00, 0x01]).unwrap();
    let o = run(&[
        "pub",
        "-p",
        &port,
        "-t",
        &topic,
        "-f",
        f.to_str().unwrap(),
        "-r",
        "-q",
        "1",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = run(&[
        "sub", "-p", &port, "-t", &topic, "--format", "json", "-C", "1",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["payload"], "/wAB");
    assert_eq!(v["payload_encoding"], "base64");
    assert_eq!(v["retain"], true);
}

#[test]
fn usage_errors_exit_2_and_name_the_value() {
    for (args, needle) in [
        (vec!["sub", "-t", "a/#/b"], "\"a/#/b\""),
        (vec!["pub", "-t", "a/+", "-m", "x"], "\"a/+\""),
        (vec!["sub", "-t", "a", "-V", "6"], "\"6\""),
        (vec!["sub", "-t", "a", "-q", "3"], "\"3\""),
        (vec!["pub", "-t", "a"], "--message"),
        (vec!["sub", "-t", "a", "-c"], "-c"),
        (vec!["sub", "-L", "mqtt://h:1883"], "-t"),
        (
            vec!["sub", "-t", "a", "-F", "%u"],
            "Invalid format specifier 'u'",
        ),
        (
            vec!["pub", "-t", "a", "-m", "x", "--user-property", "novalue"],
            "\"novalue\"",
        ),
        (
            vec!["pub", "-t", "a", "-m", "x", "--content-type", "t"],
            "-V 5",
        ),
    ] {
        let out = run(&args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(
            text(&out.stderr).contains(needle),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
}

#[test]
fn credentials_and_tls_as_a_user_types_them() {
    let broker = Mosquitto::with(MosquittoConfig {
        users: vec![("alice".into(), "s3cret-pw".into())],
        tls: true,
        ..Default::default()
    });
    let certs = broker.certs.as_ref().unwrap();
    let port = broker.port.to_string();
    // Wrong password: exit 1, says why, never prints the password, even with -d.
    let out = run(&[
        "pub",
        "-p",
        &port,
        "-t",
        "x",
        "-m",
        "y",
        "-u",
        "alice",
        "-P",
        "wrong-pw-123",
        "-d",
    ]);
    // mosquitto_pub's exit code: the CONNACK code (5, not authorised, on 3.1.1).
    assert_eq!(out.status.code(), Some(5));
    let err = text(&out.stderr);
    assert!(
        err.contains("not authorized") || err.contains("bad user name or password"),
        "{err}"
    );
    assert!(!err.contains("wrong-pw-123"), "{err}");
    // TLS with the right password, the CA given with --cafile, password from the environment.
    let tls_port = broker.tls_port.unwrap().to_string();
    let topic = format!("tls/{}", unique_id("c"));
    let out = mqlink()
        .args([
            "pub",
            "-h",
            "localhost",
            "-p",
            &tls_port,
            "--cafile",
            certs.ca.to_str().unwrap(),
        ])
        .args([
            "-u", "alice", "-t", &topic, "-m", "over-tls", "-q", "1", "-r", "-d",
        ])
        .env("MQLINK_PASSWORD", "s3cret-pw")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!text(&out.stderr).contains("s3cret-pw"));
    let url = format!("mqtts://localhost:{tls_port}");
    let out = run(&[
        "sub",
        "-L",
        &url,
        "--cafile",
        certs.ca.to_str().unwrap(),
        "-u",
        "alice",
        "-P",
        "s3cret-pw",
        "-t",
        &topic,
        "-C",
        "1",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "over-tls\n");
    // Without the CA the system's roots do not trust the test CA.
    let out = run(&[
        "sub",
        "-L",
        &url,
        "-u",
        "alice",
        "-P",
        "s3cret-pw",
        "-t",
        &topic,
        "-C",
        "1",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).to_lowercase().contains("certificate"),
        "{}",
        text(&out.stderr)
    );
}

/// Publishes `lines` with `mqlink pub -l -q 1` and checks every one was confirmed.
fn mqlink_pub_lines(port: u16, topic: &str, lines: &[String]) {
    let mut child = mqlink()
        .args([
            "pub",
            "-p",
            &port.to_string(),
            "-t",
            topic,
            "-q",
            "1",
            "-l",
            "--stats",
        ])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        let mut stdin = std::io::BufWriter::new(child.stdin.take().unwrap());
        for l in lines {
            writeln!(stdin, "{l}").unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains(&format!("{} messages confirmed", lines.len())));
}

#[test]
fn sigkill_while_draining_a_persistent_session_loses_nothing() {
    let broker = Mosquitto::start();
    let port = broker.port.to_string();
    let id = unique_id("drain");
    let topic = format!("drain/{id}");
    // Create the session, then leave (-E: exit once subscribed).
    let out = run(&[
        "sub", "-p", &port, "-t", &topic, "-q", "1", "-c", "-i", &id, "-E",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let n = 20_000;
    let lines: Vec<String> = (0..n).map(|i| format!("{{\"seq\":{i}}}")).collect();
    mqlink_pub_lines(broker.port, &topic, &lines);

    let mut seen = BTreeSet::new();
    let mut total = 0usize;
    let mut kills = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.len() < n && Instant::now() < deadline {
        let mut child = mqlink()
            .args([
                "sub", "-p", &port, "-t", &topic, "-q", "1", "-c", "-i", &id, "-W", "5",
            ])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut got = 0;
        let mut line = String::new();
        // The first runs are killed part-way through the queue.
        let kill_after = if kills < 3 {
            2_000 + kills * 3_000
        } else {
            usize::MAX
        };
        while got < kill_after && seen.len() < n {
            line.clear();
            if out.read_line(&mut line).unwrap() == 0 {
                break;
            }
            seen.insert(line.trim_end().to_owned());
            total += 1;
            got += 1;
        }
        if got >= kill_after {
            child.kill().unwrap(); // SIGKILL
            kills += 1;
        } else {
            let _ = child.kill();
        }
        // Whatever it wrote before dying counts as received.
        for l in out.lines() {
            let l = l.unwrap();
            seen.insert(l);
            total += 1;
        }
        child.wait().unwrap();
    }
    assert_eq!(kills, 3);
    let want: BTreeSet<String> = lines.into_iter().collect();
    let missing: Vec<_> = want.difference(&seen).take(5).collect();
    assert!(
        missing.is_empty(),
        "lost after SIGKILL: {missing:?} ({} of {n})",
        seen.len()
    );
    eprintln!(
        "{n} messages, {total} lines written across {kills} kills ({} redelivered)",
        total - n
    );
}

/// 200 queued messages of 1 MiB from Mosquitto with its defaults: `mqlink
/// sub` holds what its byte limits allow, not the queue (it peaked at 97
/// MiB, 64 MiB of it one read buffer). A broker with no in-flight cap that
/// sends the whole backlog before the SUBACK is not bounded yet: what
/// arrives before the SUBACK is kept until it comes (docs/reference/limits.md).
#[test]
fn sub_of_large_messages_stays_within_its_memory() {
    let broker = Mosquitto::start();
    let port = broker.port.to_string();
    let id = unique_id("big");
    let topic = format!("big/{id}");
    let out = run(&[
        "sub", "-p", &port, "-t", &topic, "-q", "1", "-c", "-i", &id, "-E",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let n = 200;
    let lines: Vec<String> = (0..n)
        .map(|i| format!("{i:04}{}", "x".repeat((1 << 20) - 4)))
        .collect();
    mqlink_pub_lines(broker.port, &topic, &lines);

    // One more than the queue: it stays up, its peak readable, after all 200.
    let mut child = mqlink()
        .args(["sub", "-p", &port, "-t", &topic, "-q", "1", "-c", "-i", &id])
        .args(["-C", &(n + 1).to_string(), "-W", "60"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    for i in 0..n {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "ended after {i}");
        assert!(
            line.starts_with(&format!("{i:04}")),
            "message {i} out of order"
        );
    }
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    let peak_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    eprintln!("peak RSS {} MiB for {n} messages of 1 MiB", peak_kib / 1024);
    assert!(peak_kib < 64 * 1024, "peak RSS {peak_kib} KiB");
}

/// A resumed session's backlog arrives before the SUBACK (Mosquitto sends
/// it first); `-C` may be satisfied by it, and ending then is a success,
/// not a refused subscription.
#[test]
fn sub_count_met_before_the_suback_is_no_error() {
    let broker = Mosquitto::start();
    let port = broker.port.to_string();
    let id = unique_id("early");
    let topic = format!("early/{id}");
    let out = run(&[
        "sub", "-p", &port, "-t", &topic, "-q", "1", "-c", "-i", &id, "-E",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<String> = (0..500).map(|i| format!("m{i}")).collect();
    mqlink_pub_lines(broker.port, &topic, &lines);
    for _ in 0..5 {
        let out = run(&[
            "sub", "-p", &port, "-t", &topic, "-q", "1", "-c", "-i", &id, "-C", "3",
        ]);
        let err = text(&out.stderr);
        assert!(out.status.success(), "{err}");
        assert_eq!(text(&out.stdout).lines().count(), 3);
        assert!(
            !err.contains("ERROR"),
            "an ERROR on a normal -C exit: {err}"
        );
    }
}

#[test]
fn pub_rides_out_a_broker_restart() {
    let mut broker = Mosquitto::with(MosquittoConfig {
        persistence: true,
        ..Default::default()
    });
    let port = broker.port.to_string();
    let sub_id = unique_id("rs");
    let topic = format!("restart/{sub_id}");
    let out = run(&[
        "sub", "-p", &port, "-t", &topic, "-q", "1", "-c", "-i", &sub_id, "-E",
    ]);
    assert!(out.status.success());
    let n = 3_000;
    let mut child = mqlink()
        .args([
            "pub",
            "-p",
            &port,
            "-t",
            &topic,
            "-q",
            "1",
            "-l",
            "-c",
            "-i",
            &unique_id("rp"),
        ])
        .args([
            "--reconnect-interval",
            "0.05",
            "--reconnect-max-interval",
            "0.5",
            "--stats",
        ])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    for i in 0..n {
        writeln!(stdin, "m{i:06}").unwrap();
        if i % 100 == 0 {
            stdin.flush().unwrap();
            std::thread::sleep(Duration::from_millis(5));
        }
        if i == n / 2 {
            broker.stop(); // SIGTERM: the broker saves its sessions
            std::thread::sleep(Duration::from_millis(300));
            broker.restart();
        }
    }
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains(&format!("{n} messages confirmed")), "{err}");
    assert!(
        err.contains("Connection lost"),
        "the restart was noticed: {err}"
    );
    let out = run(&[
        "sub", "-p", &port, "-t", &topic, "-q", "1", "-c", "-i", &sub_id, "-W", "3",
    ]);
    let got: BTreeSet<String> = text(&out.stdout).lines().map(str::to_owned).collect();
    let want: BTreeSet<String> = (0..n).map(|i| format!("m{i:06}")).collect();
    let missing: Vec<_> = want.difference(&got).take(5).collect();
    assert!(missing.is_empty(), "missing {missing:?}");
}

#[test]
fn pub_exits_1_and_counts_what_was_not_confirmed() {
    let port = testkit::free_port().to_string();
    let out = run(&["pub", "-p", &port, "-t", "x", "-m", "y", "-q", "1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("cannot reach"),
        "{}",
        text(&out.stderr)
    );
    // Connected, then the broker goes away for good: gives up and says how many.
    let mut broker = Mosquitto::start();
    let port = broker.port.to_string();
    let mut child = mqlink()
        .args([
            "pub",
            "-p",
            &port,
            "-t",
            "x",
            "-q",
            "1",
            "-l",
            "--reconnect-interval",
            "0.05",
        ])
        .args(["--reconnect-max-attempts", "3"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "before").unwrap();
    stdin.flush().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    broker.kill();
    writeln!(stdin, "after-1\nafter-2").unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("2 of 3 messages were not confirmed"), "{err}");
}

#[test]
fn sub_rides_out_a_broker_restart() {
    let mut broker = Mosquitto::with(MosquittoConfig {
        persistence: true,
        ..Default::default()
    });
    let port = broker.port.to_string();
    let id = unique_id("subrs");
    let topic = format!("subrs/{id}");
    let mut sub = mqlink()
        .args(["sub", "-p", &port, "-t", &topic, "-q", "1", "-c", "-i", &id])
        .args([
            "--reconnect-interval",
            "0.05",
            "--reconnect-max-interval",
            "0.3",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(sub.stdout.take().unwrap());
    // Wait until the subscription is in place: a retained probe comes through.
    testkit::mosquitto_pub(&["-p", &port, "-t", &topic, "-m", "probe", "-r", "-q", "1"]);
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "probe\n");
    testkit::mosquitto_pub(&["-p", &port, "-t", &topic, "-n", "-r", "-q", "1"]); // clear it
    let lines = {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in out.lines() {
                if tx.send(l.unwrap()).is_err() {
                    return;
                }
            }
        });
        rx
    };
    let first: Vec<String> = (0..999).map(|i| format!("a{i:04}")).collect();
    mqlink_pub_lines(broker.port, &topic, &first);
    // The sub is still draining `first`: messages it wrote and acknowledged
    // whose PUBACK the broker has not read yet stay in flight in the saved
    // session, and the broker sends them again (DUP) after the restart. QoS 1
    // is at least once, so `-C` (a count of deliveries) cannot say when every
    // message arrived: read until each one did, then stop the sub.
    broker.stop();
    broker.restart();
    let second: Vec<String> = (0..1000).map(|i| format!("b{i:04}")).collect();
    mqlink_pub_lines(broker.port, &topic, &second);
    let want: BTreeSet<String> = first.iter().chain(&second).cloned().collect();
    let mut written: Vec<String> = Vec::new();
    let mut got = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !want.is_subset(&got) {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(l) => {
                got.insert(l.clone());
                written.push(l);
            }
            Err(_) => break, // the sub exited, or the deadline passed
        }
    }
    // SIGTERM: the sub stops as a user stops it, and must exit 0.
    let _ = Command::new("kill")
        .args(["-TERM", &sub.id().to_string()])
        .status();
    let status = sub.wait().unwrap();
    written.extend(lines.iter());
    let mut err = String::new();
    std::io::Read::read_to_string(&mut sub.stderr.take().unwrap(), &mut err).unwrap();
    assert!(status.success(), "{err}");
    let got: BTreeSet<&String> = written.iter().filter(|l| !l.is_empty()).collect();
    let missing: Vec<_> = want.iter().filter(|l| !got.contains(l)).take(5).collect();
    assert!(missing.is_empty(), "missing {missing:?}; stderr: {err}");
    // Only what was in flight when the broker stopped comes twice: after the
    // restart the connection holds, so nothing of `second` is redelivered.
    let twice: Vec<_> = second
        .iter()
        .filter(|b| written.iter().filter(|l| l == b).count() > 1)
        .take(5)
        .collect();
    assert!(twice.is_empty(), "written twice: {twice:?}; stderr: {err}");
    assert!(err.contains("Connection lost"), "{err}");
    eprintln!(
        "{} messages, {} redelivered after the restart",
        want.len(),
        written.iter().filter(|l| !l.is_empty()).count() - got.len()
    );
}

#[test]
fn sub_decodes_with_a_schema_dead_letters_bad_payloads_and_dedupes_filters() {
    let broker = Mosquitto::start();
    let port = broker.port.to_string();
    let root = format!("schema/{}", unique_id("s"));
    let dlq = format!("{root}-errors");
    // The dead-letter watcher is subscribed before anything is published:
    // it reads a retained probe first.
    let (mut dead, mut dead_out) = start_sub(
        broker.port,
        &dlq,
        &["-C", "2", "-V", "5", "--format", "json"],
    );
    testkit::mosquitto_pub(&["-p", &port, "-t", &dlq, "-m", "ready", "-r", "-q", "1"]);
    let mut ready = String::new();
    dead_out.read_line(&mut ready).unwrap();
    assert!(ready.contains("\"ready\""), "{ready}");
    let (mut sub, mut out) = start_sub(
        broker.port,
        &format!("{root}/#"),
        &[
            "-t",
            &format!("{root}/dev1"), // overlaps: must not double anything
            "-V",
            "5",
            "-q",
            "1",
            "--format",
            "json",
            "-C",
            "3",
            "--schema",
            "device_id:text,seq:bigint,ts:timestamp",
            "--dead-letter-topic",
            &dlq,
        ],
    );
    // A retained probe that fits the schema tells us the subscription is in place.
    let probe = r#"{"device_id":"probe","seq":0,"ts":0}"#;
    let probe_topic = format!("{root}/probe");
    testkit::mosquitto_pub(&[
        "-p",
        &port,
        "-t",
        &probe_topic,
        "-m",
        probe,
        "-r",
        "-q",
        "1",
    ]);
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    let v: serde_json::Value = serde_json::from_str(&first).unwrap();
    assert_eq!(v["value"]["device_id"], "probe");
    let dev1 = format!("{root}/dev1");
    testkit::mosquitto_pub(&[
        "-p",
        &port,
        "-t",
        &dev1,
        "-m",
        r#"{"device_id":"d1","seq":"x","ts":0}"#,
        "-q",
        "1",
    ]);
    testkit::mosquitto_pub(&[
        "-p",
        &port,
        "-t",
        &dev1,
        "-m",
        r#"{"device_id":"d1","seq":2,"ts":"2026-11-23T00:00:00Z"}"#,
        "-q",
        "1",
    ]);
    testkit::mosquitto_pub(&[
        "-p",
        &port,
        "-t",
        &dev1,
        "-m",
        r#"{"device_id":"d1","seq":3,"ts":1795392000000}"#,
        "-q",
        "1",
    ]);
    assert!(sub.wait().unwrap().success());
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "each good message once: {lines:?}");
    assert_eq!(lines[0]["value"]["seq"], 2);
    assert_eq!(lines[0]["value"]["ts"], "2026-11-23T00:00:00.000000Z");
    assert_eq!(lines[1]["value"]["ts"], "2026-11-23T00:00:00.000000Z");
    assert!(dead.wait().unwrap().success());
    let mut line = String::new();
    dead_out.read_line(&mut line).unwrap();
    let d: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(d["payload"], r#"{"device_id":"d1","seq":"x","ts":0}"#);
    let props = &d["properties"]["user_properties"];
    assert_eq!(props[0], serde_json::json!(["mqlink_original_topic", dev1]));
    assert!(props[1][1].as_str().unwrap().contains("\"seq\""), "{props}");
    // Bad schema specs are usage errors naming the column.
    let out = run(&["sub", "-t", "x", "--schema", "a:decimal"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("\"a\""), "{}", text(&out.stderr));
}

/// `mqlink pub -l` stops on SIGTERM and SIGINT even while it waits for
/// confirmations after stdin ended (a frozen broker), and says how many
/// were not confirmed.
#[test]
fn pub_stops_on_a_signal_while_waiting_for_confirmations() {
    for sig in ["-TERM", "-INT"] {
        let mut broker = Mosquitto::start();
        let mut p = mqlink()
            .args([
                "pub",
                "-p",
                &broker.port.to_string(),
                "-t",
                "sig/t",
                "-q",
                "1",
                "-l",
            ])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        {
            let mut stdin = p.stdin.take().unwrap();
            writeln!(stdin, "first").unwrap();
            std::thread::sleep(Duration::from_millis(500));
            broker.pause();
            for i in 0..10 {
                writeln!(stdin, "m{i}").unwrap();
            }
        }
        std::thread::sleep(Duration::from_millis(500));
        assert!(
            p.try_wait().unwrap().is_none(),
            "still waiting for confirmations"
        );
        let t = Instant::now();
        Command::new("kill")
            .args([sig, &p.id().to_string()])
            .status()
            .unwrap();
        let out = p.wait_with_output().unwrap();
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "{sig}: took {:?}",
            t.elapsed()
        );
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{sig}: {err}");
        assert!(
            err.contains("10 of 11 messages were not confirmed"),
            "{sig}: {err}"
        );
        broker.resume();
    }
}

/// `-W` bounds connecting and subscribing too, and absurd numbers are
/// usage errors, never a panic.
#[test]
fn deadlines_bound_everything_and_absurd_numbers_are_usage_errors() {
    // A port that accepts TCP and never answers CONNECT.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port().to_string();
    let t = Instant::now();
    let out = run(&[
        "sub",
        "-p",
        &port,
        "-t",
        "a",
        "-W",
        "1",
        "--connect-timeout",
        "30",
    ]);
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    // mosquitto_sub's exit code and message for -W.
    assert_eq!(out.status.code(), Some(27), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("Timed out"),
        "{}",
        text(&out.stderr)
    );
    drop(silent);
    for args in [
        &["sub", "-t", "a", "-W", "1e300"][..],
        &["sub", "-t", "a", "-W", "NaN"],
        &["sub", "-t", "a", "-k", "9223372036854775807"],
        &["sub", "-t", "a", "--connect-timeout", "inf"],
        &["sub", "-t", "a", "--reconnect-interval", "1e300"],
        &["sub", "-t", "a", "--reconnect-backoff", "1e300"],
        &["pub", "-t", "a", "-m", "x", "--max-inflight", "99999999"],
    ] {
        let out = run(args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(!text(&out.stderr).contains("panicked"), "{args:?}");
    }
    let long_id = "i".repeat(65_536);
    let out = run(&["sub", "-t", "a", "-i", &long_id, "-W", "1"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
}

/// Credentials in a broker URL are never echoed back.
#[test]
fn a_password_in_a_url_is_never_printed() {
    for args in [
        &[
            "sub",
            "-L",
            "mqtt://user:secretpw-77@127.0.0.1:1/x/y",
            "-t",
            "a",
            "-W",
            "1",
        ][..],
        &[
            "pub",
            "-L",
            "mqtts://user:secretpw-77@nowhere:notaport",
            "-t",
            "a",
            "-m",
            "x",
        ],
        &["sub", "-L", "bogus://secretpw-77@h", "-t", "a"],
    ] {
        let out = run(args);
        let all = text(&out.stdout) + &text(&out.stderr);
        assert_ne!(out.status.code(), Some(0), "{args:?}");
        assert!(!all.contains("secretpw-77"), "{args:?}: {all}");
    }
}

/// A reader that goes away (`mqlink validate many.toml | head -1`) ends
/// the command quietly: exit 0, no panic. The output is larger than a
/// pipe's buffer, so mqlink is still writing when the pipe closes.
#[test]
fn a_closed_stdout_ends_validate_quietly() {
    let dir = testkit::TempDir::new().unwrap();
    let mut toml = String::from("[connections.c]\nbroker = \"mqtt://127.0.0.1:1883\"\n");
    let n = 3_000;
    for i in 0..n {
        toml.push_str(&format!(
            "[sources.source_with_a_long_name_{i}]\ntype = \"mqtt\"\nconnection = \"c\"\ntopics = [\"a/{i}\"]\n"
        ));
    }
    let inputs: Vec<String> = (0..n)
        .map(|i| format!("\"source_with_a_long_name_{i}\""))
        .collect();
    toml.push_str(&format!(
        "[sinks.f]\ntype = \"file\"\ninputs = [{}]\npath = \"x.jsonl\"\n",
        inputs.join(", ")
    ));
    let file = testkit::write(dir.path(), "many.toml", &toml);
    let mut child = mqlink()
        .arg("validate")
        .arg(&file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    // The reader is dropped here: the pipe is closed.
    assert!(first.contains("valid: 1 connection(s)"), "{first}");
    let out = testkit::wait_output(&mut child, 60);
    let err = text(&out.stderr);
    assert!(
        matches!(out.status.code(), Some(0) | Some(141)),
        "{:?}: {err}",
        out.status
    );
    assert!(
        !err.contains("panicked") && !err.contains("Broken pipe"),
        "{err}"
    );
}
