//! QoS 2 end to end through cut connections: `mqlink pub -q 2` through a
//! proxy that cuts every connection several times, into Mosquitto, read by
//! a persistent `mqlink sub -q 2`. Every message arrives exactly once, and
//! pub's exit 0 means exactly that.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use testkit::{unique_id, CutProxy, Mosquitto};

fn mqlink() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mqlink"));
    c.env_remove("MQLINK_PASSWORD");
    c
}

#[test]
fn qos2_through_cut_connections_arrives_exactly_once() {
    qos2_through_cuts(true);
}

/// With a clean publisher session, a message whose PUBREL was sent when the
/// broker lost the session may or may not have been released: mqlink sends
/// it again (nothing is lost) and `mqlink pub` does not exit 0 claiming
/// exactly once when that happened.
#[test]
fn a_clean_session_never_claims_exactly_once_it_cannot_know() {
    qos2_through_cuts(false);
}

fn qos2_through_cuts(persistent: bool) {
    const N: usize = 20_000;
    let broker = Mosquitto::start();
    let proxy = CutProxy::new(broker.port);
    let topic = unique_id("eo");
    let id = unique_id("eo-sub");
    let mut sub = mqlink()
        .args([
            "sub",
            "-p",
            &broker.port.to_string(),
            "-t",
            &topic,
            "-q",
            "2",
            "-c",
            "-i",
            &id,
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = BufReader::new(sub.stdout.take().unwrap());
    // Killed even when an assertion fails, so no subscriber outlives the test.
    let sub = KillOnDrop(sub);
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for l in out.lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    // The subscription is in place once a probe comes through.
    loop {
        testkit::mosquitto_pub(&[
            "-p",
            &broker.port.to_string(),
            "-t",
            &topic,
            "-m",
            "probe",
            "-q",
            "1",
        ]);
        if rx.recv_timeout(Duration::from_millis(300)).is_ok() {
            break;
        }
    }
    let port = proxy.port.to_string();
    // Exactly once across reconnects needs the publisher's session to
    // survive them: the broker keeps the QoS 2 state of what it received.
    let pub_id = unique_id("eo-pub");
    let mut args = vec![
        "pub".to_string(),
        "-p".into(),
        port.clone(),
        "-t".into(),
        topic.clone(),
        "-q".into(),
        "2".into(),
        "-l".into(),
        "--reconnect-interval".into(),
        "0.05".into(),
    ];
    if persistent {
        args.extend(["-c".into(), "-i".into(), pub_id.clone()]);
    }
    let mut publisher = mqlink()
        .args(&args)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = publisher.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        // 10,000 lines a second, in bursts.
        for chunk in 0..N / 500 {
            for i in chunk * 500..(chunk + 1) * 500 {
                writeln!(stdin, "m{i:06}").unwrap();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let mut cuts = 0;
    let started = Instant::now();
    while cuts < 5 && started.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(300));
        if proxy.cut() > 0 {
            cuts += 1;
        }
    }
    writer.join().unwrap();
    let out = publisher.wait_with_output().unwrap();
    let pub_err = String::from_utf8_lossy(&out.stderr).into_owned();
    let claimed_exactly_once = out.status.success();
    if persistent {
        assert!(claimed_exactly_once, "pub: {pub_err}");
    } else if !claimed_exactly_once {
        assert!(
            pub_err.contains("may have been delivered twice"),
            "pub: {pub_err}"
        );
    }
    assert!(cuts >= 3, "only {cuts} cuts happened");

    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.len() < N && Instant::now() < deadline {
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
            if l != "probe" {
                *seen.entry(l).or_default() += 1;
            }
        }
    }
    // Anything late would be a duplicate: give it a moment.
    while let Ok(l) = rx.recv_timeout(Duration::from_millis(500)) {
        *seen.entry(l).or_default() += 1;
    }
    drop(sub);
    let missing: Vec<String> = (0..N)
        .map(|i| format!("m{i:06}"))
        .filter(|m| !seen.contains_key(m))
        .take(10)
        .collect();
    let dups: Vec<(&String, &usize)> = seen.iter().filter(|(_, n)| **n > 1).take(10).collect();
    assert!(missing.is_empty(), "missing after {cuts} cuts: {missing:?}");
    if claimed_exactly_once {
        assert!(
            dups.is_empty(),
            "pub exited 0, yet duplicates after {cuts} cuts: {dups:?}"
        );
    }
    assert_eq!(seen.len(), N);
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
