//! Cybus Connectware service commissioning files run by `mqlink run` and
//! checked by `mqlink validate`, against real Mosquitto instances started
//! by the tests (TLS and passwords for the seed file, a restart of the far
//! broker for the mapping).

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::Duration;

use testkit::{free_port, unique_id, wait_until, Mosquitto, MosquittoConfig};
use testkit::{mosquitto_sub, signal, wait_output, write};

/// The seed document's `mqtt-example.yml`
/// (`shared/reference/cybus-connectware-mqtt.md`), byte for byte.
const SEED: &str = include_str!("../../../examples/cybus/mqtt-example.yml");

/// A password that must never be printed.
const SECRET: &str = "pw-cybus-3e9d-never-printed";

fn mqlink() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mqlink"));
    c.env_remove("MQLINK_PASSWORD").env_remove("MQLINK_LOG");
    c
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Publishes lines at QoS 1 with `mqlink pub -l` (every one confirmed).
fn publish(port: u16, auth: Option<(&str, &str)>, topic: &str, lines: &[String]) {
    let mut cmd = mqlink();
    cmd.args(["pub", "-p", &port.to_string(), "-t", topic, "-q", "1", "-l"]);
    if let Some((u, p)) = auth {
        cmd.args(["-u", u]).env("MQLINK_PASSWORD", p);
    }
    let mut p = cmd
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
    assert!(p.wait().unwrap().success(), "mqlink pub to {topic}");
}

/// `mqlink sub` with these arguments; its output lines arrive on the channel.
fn subscribe(args: &[&str]) -> (Child, Receiver<String>) {
    let mut sub = mqlink()
        .arg("sub")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = std::io::BufReader::new(sub.stdout.take().unwrap());
    std::thread::spawn(move || {
        for l in stdout.lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    (sub, rx)
}

/// Waits until something accepts connections on `port` (the embedded broker).
fn wait_listening(port: u16, run: &mut Child) {
    wait_until(30, "the embedded broker to listen", || {
        assert!(run.try_wait().unwrap().is_none(), "mqlink run exited");
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
}

fn kill(mut c: Child) {
    let _ = c.kill();
    let _ = c.wait();
}

#[test]
fn the_seed_file_validates_unchanged_and_runs_over_tls() {
    let dir = testkit::TempDir::new().unwrap();
    let seed = write(dir.path(), "mqtt-example.yml", SEED);
    let out = mqlink()
        .arg("validate")
        .arg(&seed)
        .args([
            "--param",
            "mqttHost=localhost",
            "--param",
            "mqttUsername=reader",
        ])
        .env("MQLINK_PARAM_mqttPassword", SECRET)
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        stdout.contains("sources.temperatureEndpoint: MQTT client id mqttconnectiontest-mqttConnection-temperatureEndpoint"),
        "{stdout}"
    );
    assert!(!stdout.contains(SECRET) && !text(&out.stderr).contains(SECRET));

    // The same file against a real broker: its port is a free one instead
    // of 8883 (a fixed port would collide with parallel tests), nothing
    // else changes; the broker's certificate is verified against the
    // test's CA (trustAllCertificates: false).
    let broker = Mosquitto::with(MosquittoConfig {
        tls: true,
        users: vec![("reader".into(), SECRET.into())],
        ..Default::default()
    });
    let tls_port = broker.tls_port.unwrap();
    let copy = write(
        dir.path(),
        "copy.yml",
        &SEED.replace("port: 8883", &format!("port: {tls_port}")),
    );
    let internal = free_port();
    let mut run = mqlink()
        .arg("run")
        .arg(&copy)
        .args([
            "--param",
            "mqttHost=localhost",
            "--param",
            "mqttUsername=reader",
        ])
        .args([
            "--embedded-broker",
            &format!("127.0.0.1:{internal}"),
            "--quiet",
        ])
        .env("MQLINK_PARAM_mqttPassword", SECRET)
        .env("SSL_CERT_FILE", &broker.certs.as_ref().unwrap().ca)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_listening(internal, &mut run);
    let (sub, rx) = subscribe(&[
        "-p",
        &internal.to_string(),
        "-t",
        "services/mqttconnectiontest/temperatureEndpoint",
        "-q",
        "1",
    ]);
    // The endpoint forwards once it and the subscriber are in place.
    wait_until(30, "a probe through the endpoint", || {
        publish(
            broker.port,
            Some(("reader", SECRET)),
            "factory/line1/temperature",
            &["probe".to_string()],
        );
        rx.recv_timeout(Duration::from_millis(500)).is_ok()
    });
    while rx.recv_timeout(Duration::from_millis(300)).is_ok() {}
    let readings: Vec<String> = (0..200)
        .map(|i| format!(r#"{{"value": {}.5, "seq": {i}}}"#, 20 + i % 7))
        .collect();
    publish(
        broker.port,
        Some(("reader", SECRET)),
        "factory/line1/temperature",
        &readings,
    );
    let mut got = Vec::new();
    while got.len() < readings.len() {
        let l = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("readings on the internal topic");
        if l != "probe" {
            got.push(l);
        }
    }
    assert_eq!(got, readings, "each once, in order, unmodified");
    signal(&run, "-TERM");
    let out = wait_output(&mut run, 30);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!text(&out.stderr).contains(SECRET));
    kill(sub);
}

/// Machines publish to broker A; a subscribe endpoint per machine moves
/// the readings to internal topics; a mapping with a named wildcard
/// (`+machine`) and a transform rule sends them to a write endpoint on
/// broker B. 10,000 messages arrive each once and in order per machine,
/// while broker B is stopped and started again in the middle.
#[test]
fn a_mapping_with_a_wildcard_and_a_transform_survives_a_far_broker_restart() {
    let a = Mosquitto::start();
    let mut b = Mosquitto::with(MosquittoConfig {
        persistence: true,
        ..Default::default()
    });
    let dir = testkit::TempDir::new().unwrap();
    let id = unique_id("cy");
    const MACHINES: usize = 4;
    const PER: usize = 2500;
    let mut file = format!(
        r#"
description: Machines to the enterprise broker
metadata:
  name: Line {id}
  version: 1.0.0
resources:
  brokerA:
    type: Cybus::Connection
    properties:
      protocol: Mqtt
      connection: {{ host: 127.0.0.1, port: {pa}, clean: false, clientId: {id}-a }}
  brokerB:
    type: Cybus::Connection
    properties:
      protocol: Mqtt
      connection: {{ host: 127.0.0.1, port: {pb}, clean: false, clientId: {id}-b, reconnectPeriod: 200 }}
  toEnterprise:
    type: Cybus::Endpoint
    properties:
      protocol: Mqtt
      connection: !ref brokerB
      write: {{ topic: enterprise/{id}/temperature, qos: 2 }}
  doubled:
    type: Cybus::Mapping
    properties:
      mappings:
        - subscribe:
            topic: !sub '${{Cybus::MqttRoot}}/machines/+machine/temperature'
          publish:
            endpoint: !ref toEnterprise
          rules:
            - transform:
                expression: '{{"machine": $context.vars.machine, "seq": seq, "value": value * 2}}'
"#,
        pa = a.port,
        pb = b.port
    );
    for m in 0..MACHINES {
        file += &format!(
            r#"  machine{m}:
    type: Cybus::Endpoint
    properties:
      protocol: Mqtt
      connection: !ref brokerA
      topic: machines/m{m}/temperature
      subscribe: {{ topic: {id}/factory/m{m}/temperature, qos: 1 }}
"#
        );
    }
    let cfg = write(dir.path(), "line.yml", &file);
    let check = mqlink().arg("validate").arg(&cfg).output().unwrap();
    assert!(check.status.success(), "{}", text(&check.stderr));

    // The reader's persistent session on B is made now; the reader is
    // away while B restarts and reads afterwards what B kept for it. (A
    // reader connected through the restart could itself print a message
    // twice: one that acknowledges after printing, and B redelivers.)
    let b_port = b.port;
    let reader = || {
        mosquitto_sub(&[
            "-p",
            &b_port.to_string(),
            "-t",
            &format!("enterprise/{id}/temperature"),
            "-q",
            "2",
            "-c",
            "-i",
            &format!("{id}-reader"),
        ])
    };
    let (sub, rx) = reader();
    let mut run = mqlink()
        .arg("run")
        .arg(&cfg)
        .arg("--quiet")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until(
        30,
        "a probe through endpoint, mapping and write endpoint",
        || {
            assert!(run.try_wait().unwrap().is_none(), "mqlink run exited");
            publish(
                a.port,
                None,
                &format!("{id}/factory/m0/temperature"),
                &[r#"{"seq": -1, "value": 0}"#.to_string()],
            );
            rx.recv_timeout(Duration::from_millis(500)).is_ok()
        },
    );
    while rx.recv_timeout(Duration::from_millis(300)).is_ok() {}
    signal(&sub, "-TERM");
    kill(sub);

    let port = a.port;
    let topic = id.clone();
    let (progress, chunks) = std::sync::mpsc::channel();
    let publisher = std::thread::spawn(move || {
        for chunk in 0..5 {
            for m in 0..MACHINES {
                let lines: Vec<String> = (chunk * PER / 5..(chunk + 1) * PER / 5)
                    .map(|i| format!(r#"{{"seq": {i}, "value": {}}}"#, i % 100))
                    .collect();
                publish(
                    port,
                    None,
                    &format!("{topic}/factory/m{m}/temperature"),
                    &lines,
                );
            }
            let _ = progress.send(chunk);
        }
    });
    // The far broker goes away mid-stream and comes back.
    chunks.recv_timeout(Duration::from_secs(60)).unwrap();
    b.stop();
    std::thread::sleep(Duration::from_secs(2));
    b.restart();
    publisher.join().unwrap();
    let (sub, rx) = reader();
    let mut per_machine: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    let mut seen = 0;
    let mut take = |until: usize, per_machine: &mut BTreeMap<String, Vec<i64>>| {
        while seen < until {
            let l = rx
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|_| panic!("only {seen} of {until} arrived"));
            let v: serde_json::Value = serde_json::from_str(&l).unwrap();
            let seq = v["seq"].as_i64().unwrap();
            if seq < 0 {
                continue;
            }
            assert_eq!(v["value"].as_i64().unwrap(), (seq % 100) * 2, "{l}");
            let m = v["machine"].as_str().unwrap();
            assert!(
                per_machine.get(m).is_none_or(|s| !s.contains(&seq)),
                "arrived twice: {l} (after {seen} messages)"
            );
            per_machine
                .entry(v["machine"].as_str().unwrap().to_string())
                .or_default()
                .push(seq);
            seen += 1;
        }
    };
    take(MACHINES * PER, &mut per_machine);
    // Nothing more (no duplicate) arrives; a late probe may.
    while let Ok(l) = rx.recv_timeout(Duration::from_secs(2)) {
        assert!(l.contains("\"seq\":-1"), "arrived twice: {l}");
    }
    assert_eq!(per_machine.len(), MACHINES);
    for (m, seqs) in &per_machine {
        let want: Vec<i64> = (0..PER as i64).collect();
        assert_eq!(seqs, &want, "machine {m}: each once, in order");
    }
    signal(&run, "-TERM");
    let out = wait_output(&mut run, 30);
    assert!(out.status.success(), "{}", text(&out.stderr));
    kill(sub);
}

/// Connectware delivers a message twice to a mapping subscribed to
/// `factory/machine1/temperature` and `factory/#`; mqlink delivers once.
#[test]
fn overlapping_subscriptions_deliver_once() {
    let broker = Mosquitto::start();
    let dir = testkit::TempDir::new().unwrap();
    let id = unique_id("ov");
    let cfg = write(
        dir.path(),
        "overlap.yml",
        &format!(
            r#"
metadata: {{ name: Overlap {id} }}
resources:
  plant:
    type: Cybus::Connection
    properties:
      protocol: Mqtt
      connection: {{ host: 127.0.0.1, port: {port}, clientId: {id} }}
  everything:
    type: Cybus::Mapping
    properties:
      mappings:
        - subscribe:
            - {{ topic: {id}/factory/machine1/temperature, connection: !ref plant }}
            - {{ topic: '{id}/factory/#', connection: !ref plant }}
          publish: {{ topic: {id}/out, connection: !ref plant }}
"#,
            port = broker.port
        ),
    );
    let (sub, rx) = subscribe(&[
        "-p",
        &broker.port.to_string(),
        "-t",
        &format!("{id}/out"),
        "-q",
        "1",
    ]);
    let mut run = mqlink()
        .arg("run")
        .arg(&cfg)
        .arg("--quiet")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until(30, "a probe through the mapping", || {
        assert!(run.try_wait().unwrap().is_none(), "mqlink run exited");
        publish(
            broker.port,
            None,
            &format!("{id}/factory/probe"),
            &["probe".to_string()],
        );
        rx.recv_timeout(Duration::from_millis(500)).is_ok()
    });
    while rx.recv_timeout(Duration::from_millis(300)).is_ok() {}
    let one: Vec<String> = (0..50).map(|i| format!("m1-{i}")).collect();
    let two: Vec<String> = (0..50).map(|i| format!("m2-{i}")).collect();
    publish(
        broker.port,
        None,
        &format!("{id}/factory/machine1/temperature"),
        &one,
    );
    publish(
        broker.port,
        None,
        &format!("{id}/factory/machine2/temperature"),
        &two,
    );
    let mut got = Vec::new();
    while let Ok(l) = rx.recv_timeout(Duration::from_secs(3)) {
        got.push(l);
    }
    let want: Vec<String> = one.iter().chain(&two).cloned().collect();
    assert_eq!(got, want, "each message once");
    signal(&run, "-TERM");
    assert!(wait_output(&mut run, 30).status.success());
    kill(sub);
}

fn validate_error(dir: &Path, name: &str, body: &str, args: &[&str]) -> String {
    let f = write(dir, name, body);
    let out = mqlink()
        .arg("validate")
        .arg(&f)
        .args(args)
        .env("MQLINK_PARAM_mqttPassword", SECRET)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stdout));
    let e = text(&out.stderr);
    assert!(e.contains(name), "names the file: {e}");
    assert!(!e.contains(SECRET), "{e}");
    e
}

#[test]
fn validate_names_the_resource_and_property_and_refuses_what_mqlink_cannot_run() {
    let dir = testkit::TempDir::new().unwrap();
    let p = ["--param", "mqttHost=h", "--param", "mqttUsername=u"];
    let e = validate_error(dir.path(), "a.yml", SEED, &["--param", "mqttHost=h"]);
    assert!(e.contains("parameters.mqttUsername: required (no default): give --param mqttUsername=VALUE or set MQLINK_PARAM_mqttUsername"), "{e}");
    let e = validate_error(
        dir.path(),
        "b.yml",
        &SEED.replace("port: 8883", "port: 70000"),
        &p,
    );
    assert!(
        e.contains(
            "resources.mqttConnection.properties.connection.port: 70000 is not a port number"
        ),
        "{e}"
    );
    let e = validate_error(
        dir.path(),
        "c.yml",
        &SEED.replace(
            "topic: factory/line1/temperature",
            "topic: factory/line1/temperature\n        retain: true",
        ),
        &p,
    );
    assert!(
        e.contains("resources.temperatureEndpoint.properties.subscribe.retain: unknown property"),
        "{e}"
    );
    // A container beside the MQTT part: skipped with a warning naming it,
    // refused with --strict.
    let container = format!("{SEED}\n  grafana:\n    type: Cybus::Container\n    properties:\n      image: grafana/grafana\n");
    let f = write(dir.path(), "d.yml", &container);
    let out = mqlink()
        .arg("validate")
        .arg(&f)
        .args(p)
        .env("MQLINK_PARAM_mqttPassword", SECRET)
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("grafana (Cybus::Container)") && err.contains("--strict"),
        "{err}"
    );
    let strict = [&p[..], &["--strict"]].concat();
    let e = validate_error(dir.path(), "d.yml", &container, &strict);
    assert!(
        e.contains("resources.grafana.type: Cybus::Container is not supported: mqlink runs only the MQTT part"),
        "{e}"
    );
    let rule = format!(
        "{SEED}\n  m:\n    type: Cybus::Mapping\n    properties:\n      mappings:\n        - subscribe: {{ endpoint: !ref temperatureEndpoint }}\n          publish: {{ topic: out }}\n          rules:\n            - cov: {{ key: value }}\n"
    );
    let e = validate_error(dir.path(), "e.yml", &rule, &p);
    assert!(
        e.contains("resources.m.properties.mappings[0].rules[0].cov: the rule \"cov\" is not supported by mqlink (supported: transform, filter, collect, burst)"),
        "{e}"
    );
    let toml = "[connections.c]\nbroker = \"embedded\"\n";
    let e = validate_error(dir.path(), "f.toml", toml, &["--param", "x=1"]);
    assert!(
        e.contains("--param x: parameters belong to Cybus commissioning files"),
        "{e}"
    );
}

/// A mapping that subscribes on one broker and publishes to another is
/// one hop: a message is acknowledged to broker A only once broker B
/// confirmed it. With B stopped, mqlink is killed (SIGKILL) holding
/// messages it took from A; after B is back, the next run delivers every
/// one of them, once.
#[test]
fn a_mapping_between_two_brokers_acknowledges_nothing_early() {
    let a = Mosquitto::start();
    let mut b = Mosquitto::with(MosquittoConfig {
        persistence: true,
        ..Default::default()
    });
    let dir = testkit::TempDir::new().unwrap();
    let id = unique_id("ne");
    let cfg = write(
        dir.path(),
        "direct.yml",
        &format!(
            r#"
metadata: {{ name: Direct {id} }}
resources:
  a:
    type: Cybus::Connection
    properties:
      protocol: Mqtt
      connection: {{ host: 127.0.0.1, port: {pa}, clean: false, clientId: {id}-a }}
  b:
    type: Cybus::Connection
    properties:
      protocol: Mqtt
      connection: {{ host: 127.0.0.1, port: {pb}, clean: false, clientId: {id}-b, reconnectPeriod: 200 }}
  relay:
    type: Cybus::Mapping
    properties:
      mappings:
        - subscribe: {{ topic: '{id}/in/+device', connection: !ref a, qos: 1 }}
          publish: {{ topic: '{id}/out/$device', connection: !ref b, qos: 1 }}
          rules:
            - transform: {{ expression: '{{"device": $context.vars.device, "n": n}}' }}
"#,
            pa = a.port,
            pb = b.port
        ),
    );
    let (sub, rx) = subscribe(&[
        "-p",
        &b.port.to_string(),
        "-t",
        &format!("{id}/out/#"),
        "-q",
        "1",
        "-c",
        "-i",
        &format!("{id}-reader"),
        "-v",
    ]);
    let got = killed_while_the_far_broker_is_down(
        &cfg,
        &a,
        &mut b,
        &rx,
        &format!("{id}/in/probe"),
        &format!("{id}/in/d1"),
        |l| l.contains("/out/probe "),
    );
    let want: Vec<String> = (0..300)
        .map(|n| format!(r#"{id}/out/d1 {{"device":"d1","n":{n}}}"#))
        .collect();
    assert_eq!(got, want, "every message, once, in order");
    kill(sub);
}

/// The kill test of a file that moves messages from broker A to broker B:
/// `mqlink run cfg` is started (and a probe on `probe_topic` seen on `rx`),
/// B is stopped, 300 messages `{"n": 0..300}` are published to `topic` on A,
/// mqlink is killed (SIGKILL) while it holds them, B comes back, and a
/// second run delivers them. Returns what arrived (probes left out, as
/// `is_probe` tells them), after checking nothing else came and the second
/// run stopped cleanly.
fn killed_while_the_far_broker_is_down(
    cfg: &Path,
    a: &Mosquitto,
    b: &mut Mosquitto,
    rx: &Receiver<String>,
    probe_topic: &str,
    topic: &str,
    is_probe: impl Fn(&str) -> bool,
) -> Vec<String> {
    let start = || {
        mqlink()
            .arg("run")
            .arg(cfg)
            .arg("--quiet")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut run = start();
    wait_until(30, "a probe through the file", || {
        assert!(run.try_wait().unwrap().is_none(), "mqlink run exited");
        publish(a.port, None, probe_topic, &[r#"{"n": -1}"#.to_string()]);
        rx.recv_timeout(Duration::from_millis(500)).is_ok()
    });
    while rx.recv_timeout(Duration::from_millis(300)).is_ok() {}

    b.stop();
    let lines: Vec<String> = (0..300).map(|n| format!(r#"{{"n": {n}}}"#)).collect();
    publish(a.port, None, topic, &lines);
    // Taken from A (its window allows it) and not deliverable: killed
    // now, mqlink must not have acknowledged any of them to A.
    std::thread::sleep(Duration::from_secs(1));
    signal(&run, "-KILL");
    run.wait().unwrap();
    b.restart();
    run = start();
    let mut got = Vec::new();
    while got.len() < lines.len() {
        let l = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("only {} of {} arrived: {got:?}", got.len(), lines.len()));
        // A late probe may come too.
        if !is_probe(&l) {
            got.push(l);
        }
    }
    while let Ok(l) = rx.recv_timeout(Duration::from_secs(1)) {
        assert!(is_probe(&l), "arrived twice: {l}");
    }
    signal(&run, "-TERM");
    assert!(wait_output(&mut run, 30).status.success());
    got
}

/// The rule engine on a real broker: a filter passes only errors (a
/// payload that is not JSON is skipped, counted and reported), a burst
/// sends four readings at a time and the rest once its interval passed.
#[test]
fn filter_and_burst_rules_run_per_record() {
    let broker = Mosquitto::start();
    let dir = testkit::TempDir::new().unwrap();
    let id = unique_id("ru");
    let cfg = write(
        dir.path(),
        "rules.yml",
        &format!(
            r#"
metadata: {{ name: Rules {id} }}
resources:
  plant:
    type: Cybus::Connection
    properties:
      protocol: Mqtt
      connection: {{ host: 127.0.0.1, port: {port}, clean: false, clientId: {id} }}
  rules:
    type: Cybus::Mapping
    properties:
      mappings:
        - subscribe: {{ topic: '{id}/logs/+line', connection: !ref plant }}
          publish: {{ topic: '{id}/errors/{{line}}', connection: !ref plant }}
          rules:
            - filter: {{ expression: 'level = "ERROR"' }}
        - subscribe: {{ topic: '{id}/readings', connection: !ref plant }}
          publish: {{ topic: '{id}/batched', connection: !ref plant }}
          rules:
            - burst: {{ maxSize: 4, interval: 700 }}
            - transform: {{ expression: '$.n' }}
"#,
            port = broker.port
        ),
    );
    let (sub, rx) = subscribe(&[
        "-p",
        &broker.port.to_string(),
        "-t",
        &format!("{id}/errors/#"),
        "-t",
        &format!("{id}/batched"),
        "-q",
        "1",
        "-v",
    ]);
    let mut run = mqlink()
        .arg("run")
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until(30, "a probe through the filter", || {
        assert!(run.try_wait().unwrap().is_none(), "mqlink run exited");
        publish(
            broker.port,
            None,
            &format!("{id}/logs/probe"),
            &[r#"{"level": "ERROR"}"#.to_string()],
        );
        rx.recv_timeout(Duration::from_millis(500)).is_ok()
    });
    while rx.recv_timeout(Duration::from_millis(300)).is_ok() {}
    let logs: Vec<String> = (0..10)
        .map(|i| {
            let level = if i % 3 == 0 { "ERROR" } else { "INFO" };
            format!(r#"{{"level": "{level}", "i": {i}}}"#)
        })
        .chain(["not json".to_string()])
        .collect();
    publish(broker.port, None, &format!("{id}/logs/a"), &logs);
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(rx.recv_timeout(Duration::from_secs(10)).expect("errors"));
    }
    let want: Vec<String> = [0, 3, 6, 9]
        .iter()
        .map(|i| format!(r#"{id}/errors/a {{"level":"ERROR","i":{i}}}"#))
        .collect();
    assert_eq!(got, want, "only the errors, routed by +line");

    let readings: Vec<String> = (0..10).map(|n| format!(r#"{{"n": {n}}}"#)).collect();
    publish(broker.port, None, &format!("{id}/readings"), &readings);
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(rx.recv_timeout(Duration::from_secs(10)).expect("bursts"));
    }
    assert_eq!(
        got,
        [
            format!("{id}/batched [0,1,2,3]"),
            format!("{id}/batched [4,5,6,7]"),
            format!("{id}/batched [8,9]"),
        ],
        "four at a time, the rest after the interval"
    );
    assert!(rx.recv_timeout(Duration::from_secs(1)).is_err());
    signal(&run, "-TERM");
    let out = wait_output(&mut run, 30);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("1 records were skipped"), "{err}");
    assert!(err.contains("the payload is not JSON"), "{err}");
    kill(sub);
}

/// Through the internal broker too, nothing is acknowledged early: an
/// endpoint on A, a mapping, a write endpoint on B. With B stopped, mqlink
/// is killed (SIGKILL) while the messages sit between the hops; A still
/// has every one of them unacknowledged, and the next run delivers them.
#[test]
fn a_chain_through_the_internal_broker_acknowledges_nothing_early() {
    let a = Mosquitto::start();
    let mut b = Mosquitto::with(MosquittoConfig {
        persistence: true,
        ..Default::default()
    });
    let dir = testkit::TempDir::new().unwrap();
    let id = unique_id("ch");
    let cfg = write(
        dir.path(),
        "chain.yml",
        &format!(
            r#"
metadata: {{ name: Chain {id} }}
resources:
  a:
    type: Cybus::Connection
    properties:
      protocol: Mqtt
      connection: {{ host: 127.0.0.1, port: {pa}, clean: false, clientId: {id}-a }}
  b:
    type: Cybus::Connection
    properties:
      protocol: Mqtt
      connection: {{ host: 127.0.0.1, port: {pb}, clean: false, clientId: {id}-b, reconnectPeriod: 200 }}
  machine:
    type: Cybus::Endpoint
    properties:
      protocol: Mqtt
      connection: !ref a
      subscribe: {{ topic: {id}/in }}
  out:
    type: Cybus::Endpoint
    properties:
      protocol: Mqtt
      connection: !ref b
      write: {{ topic: {id}/out }}
  relay:
    type: Cybus::Mapping
    properties:
      mappings:
        - subscribe: {{ endpoint: !ref machine }}
          publish: {{ endpoint: !ref out }}
          rules:
            - transform: {{ expression: '{{"n": n * 10}}' }}
"#,
            pa = a.port,
            pb = b.port
        ),
    );
    let (sub, rx) = subscribe(&[
        "-p",
        &b.port.to_string(),
        "-t",
        &format!("{id}/out"),
        "-q",
        "1",
        "-c",
        "-i",
        &format!("{id}-reader"),
    ]);
    let got = killed_while_the_far_broker_is_down(
        &cfg,
        &a,
        &mut b,
        &rx,
        &format!("{id}/in"),
        &format!("{id}/in"),
        |l| l == r#"{"n":-10}"#,
    );
    let want: Vec<String> = (0..300).map(|n| format!(r#"{{"n":{}}}"#, n * 10)).collect();
    assert_eq!(got, want, "every message, once, in order");
    kill(sub);
}

/// Key material is never printed: a `clientPrivateKey` without PEM armour
/// is refused without being echoed; PEM text is written to files 0600 in a
/// private directory (0700) while the run lasts, removed when SIGTERM ends it.
#[test]
fn keys_are_never_echoed_and_their_files_are_private_and_removed() {
    use std::os::unix::fs::PermissionsExt;
    let broker = Mosquitto::with(MosquittoConfig {
        tls: true,
        require_certificate: true,
        ..Default::default()
    });
    let certs = broker.certs.as_ref().unwrap();
    let dir = testkit::TempDir::new().unwrap();
    let tmp = testkit::TempDir::new().unwrap();
    let pem = |p: &Path| serde_json::to_string(&std::fs::read_to_string(p).unwrap()).unwrap();
    let file = |ca: &str, cert: &str, key: &str| {
        format!(
            "metadata:\n  name: Keys Test\nresources:\n  conn:\n    type: Cybus::Connection\n    properties:\n      protocol: Mqtt\n      connection:\n        host: localhost\n        port: {}\n        scheme: mqtts\n        mutualAuthentication: true\n        caCert: {ca}\n        clientCert: {cert}\n        clientPrivateKey: {key}\n  ep:\n    type: Cybus::Endpoint\n    properties:\n      protocol: Mqtt\n      connection: !ref conn\n      subscribe:\n        topic: keys/test\n",
            broker.tls_port.unwrap()
        )
    };
    let body = "TUlJRXZRSUJBREFOQmdrcWhraUc5dzBCQVFFRkFBU0NCS2N3Z2dTakFnRUFBb0lCQVFD";
    let bare = write(
        dir.path(),
        "bare.yml",
        &file(&pem(&certs.ca), &pem(&certs.client_cert), body),
    );
    let out = mqlink()
        .arg("validate")
        .arg(&bare)
        .env("TMPDIR", tmp.path())
        .output()
        .unwrap();
    let all = text(&out.stdout) + &text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{all}");
    assert!(
        all.contains("clientPrivateKey is neither a PEM block")
            && all.contains("nor a readable file"),
        "{all}"
    );
    assert!(!all.contains(&body[..16]), "the key was echoed: {all}");
    let temp_entries = || -> Vec<std::path::PathBuf> {
        std::fs::read_dir(tmp.path())
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect()
    };
    assert!(
        temp_entries().is_empty(),
        "left after validate: {:?}",
        temp_entries()
    );

    let inline = write(
        dir.path(),
        "inline.yml",
        &file(
            &pem(&certs.ca),
            &pem(&certs.client_cert),
            &pem(&certs.client_key),
        ),
    );
    let internal = free_port();
    let mut run = mqlink()
        .arg("run")
        .arg(&inline)
        .args([
            "--embedded-broker",
            &format!("127.0.0.1:{internal}"),
            "--quiet",
        ])
        .env("TMPDIR", tmp.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_listening(internal, &mut run);
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let dirs = temp_entries();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    assert_eq!(mode(&dirs[0]), 0o700, "{dirs:?}");
    let files: Vec<_> = std::fs::read_dir(&dirs[0])
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(files.len(), 3, "{files:?}");
    for f in &files {
        assert_eq!(mode(f), 0o600, "{}", f.display());
    }
    signal(&run, "-TERM");
    let out = wait_output(&mut run, 30);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        temp_entries().is_empty(),
        "left after the run: {:?}",
        temp_entries()
    );
}
