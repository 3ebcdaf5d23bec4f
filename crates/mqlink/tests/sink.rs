//! The MQTT sink against real Mosquitto brokers: templates, a record whose
//! topic cannot be rendered fails alone, the flush timeout fires while the
//! broker is frozen, records sent while the broker is down arrive, and
//! per-key order holds across parallel clients.

use std::collections::BTreeMap;
use std::time::Duration;

use mqlink::sink::{FlushError, MqttSink, Retain, SinkError, SinkRecord};
use mqlink::{Client, ConnectOptions, Incoming, Protocol, QoS, Subscription};
use serde_json::json;
use testkit::{unique_id, Mosquitto, MosquittoConfig};
use tokio::time::timeout;

fn opts(url: &str) -> ConnectOptions {
    let mut o = ConnectOptions::new(url).unwrap();
    o.protocol = Protocol::V5;
    o.client_id = Some(unique_id("sink"));
    o.reconnect.initial_interval = Duration::from_millis(50);
    o.reconnect.max_interval = Duration::from_millis(300);
    o
}

async fn subscriber(url: &str, filter: &str) -> (Client, Incoming) {
    let (c, inc) = Client::connect(opts(url)).await.unwrap();
    c.subscribe(vec![Subscription::new(filter, QoS::ExactlyOnce)])
        .await
        .unwrap();
    (c, inc)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn templates_retain_and_a_bad_topic_failing_alone() {
    let broker = Mosquitto::start();
    let root = unique_id("tpl");
    let (_s, mut inc) = subscriber(&broker.url(), &format!("{root}/#")).await;
    let sink = MqttSink::builder()
        .connection(opts(&broker.url()))
        .topic(format!("{root}/{{device_id}}/{{key}}"))
        .qos(QoS::ExactlyOnce)
        .retain(Retain::Field("keep".into()))
        .start()
        .await
        .unwrap();
    let mut handles = Vec::new();
    for (key, dev, keep) in [
        ("k1", "d1", false),
        ("k2", "a/#", false),
        ("k3", "d3", true),
    ] {
        let r = SinkRecord::json(json!({"device_id": dev, "keep": keep})).with_key(key);
        match sink.send(r).await {
            Ok(h) => handles.push(h),
            Err(e) => {
                assert!(matches!(e, SinkError::Template(_)), "{e}");
                assert!(e.to_string().contains("a/#"), "{e}");
            }
        }
    }
    assert_eq!(handles.len(), 2, "the bad record failed alone");
    for h in handles {
        h.await.unwrap();
    }
    sink.flush(Duration::from_secs(5)).await.unwrap();
    let mut got = BTreeMap::new();
    for _ in 0..2 {
        let mut d = timeout(Duration::from_secs(5), inc.recv())
            .await
            .unwrap()
            .unwrap();
        d.ack();
        got.insert(d.topic.to_string(), d.retain);
    }
    assert_eq!(got.len(), 2);
    assert!(got.contains_key(&format!("{root}/d1/k1")));
    // A retained message seen by a new subscriber keeps its retain flag.
    let (_s2, mut inc2) = subscriber(&broker.url(), &format!("{root}/d3/#")).await;
    let d = timeout(Duration::from_secs(5), inc2.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(d.retain);
    assert_eq!(sink.metrics().get("mqlink_sink_confirmed_total"), Some(2));
    // Misconfiguration is caught when building.
    let e = MqttSink::builder().topic("a/+/{key}").build().unwrap_err();
    assert!(e.to_string().contains("a/+/{key}"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_flush_timeout_fires_while_the_broker_is_frozen() {
    let mut broker = Mosquitto::start();
    let sink = MqttSink::builder()
        .connection(opts(&broker.url()))
        .topic("frozen/t")
        .start()
        .await
        .unwrap();
    // Connected first, then the broker stops answering.
    sink.send(SinkRecord::json(json!(0)))
        .await
        .unwrap()
        .await
        .unwrap();
    broker.pause();
    for i in 1..=50 {
        // flush() tracks these; the handles are not needed.
        drop(sink.send(SinkRecord::json(json!(i))).await.unwrap());
    }
    let started = std::time::Instant::now();
    let e = sink.flush(Duration::from_millis(500)).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(
        e,
        FlushError::Timeout {
            after: Duration::from_millis(500),
            unconfirmed: 50,
            // A frozen broker: the session still counts as connected.
            cause: None,
        }
    );
    assert!(e.to_string().contains("50 records not confirmed"));
    broker.resume();
    sink.flush(Duration::from_secs(20)).await.unwrap();
    assert_eq!(sink.metrics().get("mqlink_sink_in_flight"), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_sent_while_the_broker_is_down_arrive() {
    let mut broker = Mosquitto::with(MosquittoConfig {
        persistence: true,
        ..Default::default()
    });
    let topic = format!("down/{}", unique_id("d"));
    // A persistent subscriber session that survives the broker's stop.
    let mut sub_opts = opts(&broker.url());
    sub_opts.clean_session = false;
    let (s, inc) = Client::connect(sub_opts.clone()).await.unwrap();
    s.subscribe(vec![Subscription::new(&topic, QoS::AtLeastOnce)])
        .await
        .unwrap();
    s.disconnect().await;
    drop(inc);
    broker.stop();
    let sink = MqttSink::builder()
        .connection(opts(&broker.url()))
        .topic(&topic)
        .start()
        .await
        .unwrap();
    let mut handles = Vec::new();
    for i in 0..100 {
        handles.push(
            sink.send(SinkRecord::json(json!({"seq": i})))
                .await
                .unwrap(),
        );
    }
    assert!(
        sink.flush(Duration::from_millis(300)).await.is_err(),
        "nothing can be confirmed yet"
    );
    broker.restart();
    sink.flush(Duration::from_secs(20)).await.unwrap();
    for h in handles {
        h.await.unwrap();
    }
    let (_s, mut inc) = Client::connect(sub_opts).await.unwrap();
    let mut seqs = Vec::new();
    while seqs.len() < 100 {
        let mut d = timeout(Duration::from_secs(5), inc.recv())
            .await
            .unwrap()
            .unwrap();
        d.ack();
        let v: serde_json::Value = serde_json::from_slice(&d.payload).unwrap();
        seqs.push(v["seq"].as_i64().unwrap());
    }
    assert_eq!(seqs, (0..100).collect::<Vec<_>>(), "all, in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_clients_keep_per_key_order() {
    let broker = Mosquitto::start();
    let topic = format!("par/{}", unique_id("p"));
    let (_s, mut inc) = subscriber(&broker.url(), &format!("{topic}/#")).await;
    let sink = MqttSink::builder()
        .connection(opts(&broker.url()))
        .topic(format!("{topic}/{{key}}"))
        .key_field("device")
        .parallelism(3)
        .start()
        .await
        .unwrap();
    let ids: Vec<String> = sink
        .clients()
        .iter()
        .map(|c| c.client_id().to_owned())
        .collect();
    assert!(ids[0].ends_with("-0") && ids[2].ends_with("-2"), "{ids:?}");
    let n = 2000;
    for i in 0..n {
        let key = format!("k{}", i % 7);
        // Half carry a key; the rest get theirs from the "device" field.
        let record = if i % 2 == 0 {
            SinkRecord::json(json!({"seq": i})).with_key(key)
        } else {
            SinkRecord::json(json!({"seq": i, "device": key}))
        };
        drop(sink.send(record).await.unwrap());
    }
    sink.flush(Duration::from_secs(20)).await.unwrap();
    let mut last: BTreeMap<String, i64> = BTreeMap::new();
    for _ in 0..n {
        let mut d = timeout(Duration::from_secs(5), inc.recv())
            .await
            .unwrap()
            .unwrap();
        d.ack();
        let seq = serde_json::from_slice::<serde_json::Value>(&d.payload).unwrap()["seq"]
            .as_i64()
            .unwrap();
        let prev = last.insert(d.topic.to_string(), seq);
        assert!(
            prev.is_none_or(|p| p < seq),
            "{}: {prev:?} then {seq}",
            d.topic
        );
    }
    assert_eq!(last.len(), 7);
}

/// A broker made of our codec that rejects the first PUBLISH (PUBACK 0x97,
/// quota exceeded) and accepts the rest.
async fn rejecting_once_broker() -> u16 {
    use mqlink::codec::{decode, encode, Ack, AckKind, ConnAck, Packet};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut rejected = false;
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let mut buf = bytes::BytesMut::new();
            'conn: loop {
                while let Ok(Some(p)) = decode(&mut buf, Protocol::V5, 1 << 20) {
                    let reply = match p {
                        Packet::Connect(_) => Packet::ConnAck(ConnAck::default()),
                        Packet::Publish(p) => {
                            let reason = if rejected { 0 } else { 0x97 };
                            rejected = true;
                            Packet::Ack(Ack {
                                kind: AckKind::PubAck,
                                pkid: p.pkid,
                                reason,
                                reason_string: None,
                            })
                        }
                        Packet::PingReq => Packet::PingResp,
                        _ => continue,
                    };
                    let mut out = bytes::BytesMut::new();
                    encode(&reply, Protocol::V5, &mut out);
                    if sock.write_all(&out).await.is_err() {
                        break 'conn;
                    }
                }
                if sock.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                    break;
                }
            }
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_publish_is_retried_under_the_strategy() {
    use mqlink::Backoff;
    for (strategy, ok) in [
        (None, false),
        (Some(Backoff::fixed(Duration::from_millis(20), 3)), true),
    ] {
        let port = rejecting_once_broker().await;
        let builder = MqttSink::builder()
            .connection(opts(&format!("mqtt://127.0.0.1:{port}")))
            .topic("r/t");
        let sink = match strategy.clone() {
            Some(backoff) => builder.retry(backoff),
            None => builder,
        }
        .start()
        .await
        .unwrap();
        let r = sink.send(SinkRecord::json(json!(1))).await.unwrap().await;
        assert_eq!(r.is_ok(), ok, "{strategy:?}: {r:?}");
        if let Err(e) = r {
            assert!(e.to_string().contains("0x97"), "{e}");
            match sink.flush(Duration::from_secs(1)).await {
                Err(FlushError::Failed {
                    failed: 1,
                    last_error: Some(last),
                }) => assert!(last.contains("0x97"), "{last}"),
                other => panic!("{other:?}"),
            }
            // Only what failed since the previous flush is reported: a good
            // record after the refused one flushes cleanly.
            sink.send(SinkRecord::json(json!(2)))
                .await
                .unwrap()
                .await
                .unwrap();
            sink.flush(Duration::from_secs(1)).await.unwrap();
        } else {
            sink.flush(Duration::from_secs(1)).await.unwrap();
        }
    }
}

/// `retry_fn` sees each failure and decides: a refusal it gives up on fails
/// the record at once; one it retries is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_fn_decides_per_error() {
    use mqlink::PublishError;
    use std::sync::{Arc, Mutex};
    for give_up_on_refusal in [true, false] {
        let port = rejecting_once_broker().await;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        let sink = MqttSink::builder()
            .connection(opts(&format!("mqtt://127.0.0.1:{port}")))
            .topic("r/t")
            .retry_fn(move |attempt, error| {
                s2.lock().unwrap().push((attempt, error.to_string()));
                match error {
                    PublishError::Rejected { code: 0x97, .. } if give_up_on_refusal => None,
                    _ => Some(Duration::from_millis(10)),
                }
            })
            .start()
            .await
            .unwrap();
        let r = sink.send(SinkRecord::json(json!(1))).await.unwrap().await;
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert_eq!(seen[0].0, 1);
        assert!(seen[0].1.contains("0x97"), "{seen:?}");
        match r {
            Err(PublishError::Rejected { code: 0x97, .. }) => assert!(give_up_on_refusal),
            Ok(_) => assert!(!give_up_on_refusal),
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spooled_records_survive_sigkill_while_the_broker_is_frozen() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    let mut broker = Mosquitto::start();
    let topic = format!("spool/{}", unique_id("s"));
    let spool_dir = broker.dir.path().join("spool");
    let (_s, mut inc) = subscriber(&broker.url(), &topic).await;
    // Built by `cargo test --workspace --all-targets` (the README's test command).
    let target = std::env::var("CARGO_TARGET_DIR")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../../target").to_owned());
    // `cargo test` leaves it as `spool_writer-<hash>` (next to a test-harness
    // build of the same example); `cargo build` as `spool_writer`.
    let dir = format!("{target}/debug/examples");
    let mut candidates: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{dir}: {e}: run the tests with --all-targets"))
        .filter_map(|e| e.ok())
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            (name == "spool_writer" || name.starts_with("spool_writer-")) && !name.contains('.')
        })
        .collect();
    candidates.sort_by_key(|e| std::cmp::Reverse(e.metadata().and_then(|m| m.modified()).ok()));
    let writer = candidates
        .into_iter()
        .map(|e| e.path())
        // The harness build answers `--list` with success; the example does not.
        .find(|p| {
            !Command::new(p)
                .arg("--list")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .unwrap_or_else(|| panic!("no spool_writer in {dir}: run the tests with --all-targets"));
    // First run: some records go through, then the broker freezes, the
    // writer keeps spooling, and is killed with SIGKILL.
    let mut child = Command::new(&writer)
        .args([&broker.url(), &topic, spool_dir.to_str().unwrap(), "20000"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut last = 0u64;
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(n) = line.strip_prefix("spooled ") {
            last = n.parse().unwrap();
        }
        if last == 3000 {
            broker.pause();
        }
        if last >= 6000 {
            break;
        }
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    broker.resume();
    // Second run: publishes what the spool holds.
    let out = Command::new(&writer)
        .args([&broker.url(), &topic, spool_dir.to_str().unwrap(), "0"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("confirmed"));
    let mut seen = std::collections::BTreeSet::new();
    let mut total = 0;
    while seen.len() <= last as usize {
        let mut d = timeout(Duration::from_secs(20), inc.recv())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "only {} of {} spooled records arrived",
                    seen.len(),
                    last + 1
                )
            })
            .unwrap();
        d.ack();
        total += 1;
        let seq = serde_json::from_slice::<serde_json::Value>(&d.payload).unwrap()["seq"]
            .as_u64()
            .unwrap();
        seen.insert(seq);
    }
    assert_eq!(
        seen.range(..=last).count() as u64,
        last + 1,
        "every spooled record arrived"
    );
    eprintln!(
        "{} spooled before the kill, {total} delivered ({} duplicates)",
        last + 1,
        total - seen.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos2_through_cut_connections_gives_no_duplicates() {
    let broker = Mosquitto::start();
    let topic = format!("q2sink/{}", unique_id("q"));
    let (_s, mut inc) = subscriber(&broker.url(), &topic).await;
    let proxy = testkit::CutProxy::new(broker.port);
    let mut o = opts(&proxy.url());
    o.clean_session = false; // the broker keeps QoS 2 state across the cuts
    let sink = MqttSink::builder()
        .connection(o)
        .topic(&topic)
        .qos(QoS::ExactlyOnce)
        .serializer(mqlink::sink::Serializer::Template(
            mqlink::sink::TopicTemplate::parse_text("n={seq}").unwrap(),
        ))
        .start()
        .await
        .unwrap();
    let n = 1500;
    for i in 0..n {
        if i % 500 == 250 {
            proxy.cut();
        }
        drop(
            sink.send(SinkRecord::json(json!({"seq": i})))
                .await
                .unwrap(),
        );
    }
    sink.flush(Duration::from_secs(30)).await.unwrap();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    while counts.len() < n {
        let mut d = timeout(Duration::from_secs(10), inc.recv())
            .await
            .unwrap()
            .unwrap();
        d.ack();
        *counts
            .entry(String::from_utf8(d.payload.to_vec()).unwrap())
            .or_default() += 1;
    }
    assert!(
        timeout(Duration::from_millis(500), inc.recv())
            .await
            .is_err(),
        "a duplicate arrived"
    );
    assert!(counts.values().all(|&c| c == 1));
    assert!(counts.contains_key("n=1499"));
    assert!(sink.clients()[0].stats().reconnects() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridge_acks_the_source_only_after_the_sink_confirmed() {
    use mqlink::format::{ColumnType, Decoder, Schema};
    use mqlink::source::MqttSource;
    let broker = Mosquitto::start();
    let root = unique_id("bridge");
    let (_s, mut out) = subscriber(&broker.url(), &format!("{root}/out/#")).await;
    let mut source = MqttSource::builder()
        .connection(opts(&broker.url()))
        .topic(format!("{root}/in/+"), QoS::AtLeastOnce)
        .format(Decoder::Json {
            schema: Some(Schema::new([
                ("n", ColumnType::BigInt),
                ("ts", ColumnType::Timestamp),
            ])),
        })
        .start()
        .await
        .unwrap();
    let sink = MqttSink::builder()
        .connection(opts(&broker.url()))
        .topic(format!("{root}/out/{{stream}}"))
        .start()
        .await
        .unwrap();
    let (publ, _) = Client::connect(opts(&broker.url())).await.unwrap();
    for i in 0..20 {
        let m = mqlink::Message::new(
            format!("{root}/in/d{}", i % 2),
            format!(r#"{{"n":{i},"ts":0}}"#),
            QoS::AtLeastOnce,
        );
        publ.publish(m).await.unwrap().await.unwrap();
    }
    for _ in 0..20 {
        let mut r = timeout(Duration::from_secs(5), source.next())
            .await
            .unwrap()
            .unwrap();
        let handle = sink.send((&r).into()).await.unwrap();
        handle.await.unwrap(); // confirmed downstream…
        r.ack(); // …then acknowledged upstream
    }
    for _ in 0..20 {
        let mut d = timeout(Duration::from_secs(5), out.recv())
            .await
            .unwrap()
            .unwrap();
        d.ack();
        assert!(
            d.topic.starts_with(&format!("{root}/out/{root}/in/d")),
            "{}",
            d.topic
        );
        let v: serde_json::Value = serde_json::from_slice(&d.payload).unwrap();
        assert_eq!(v["ts"], "1970-01-01T00:00:00.000000Z");
        assert!(v["n"].is_i64());
    }
    assert_eq!(
        source.metrics().get("mqlink_source_unacknowledged"),
        Some(0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publisher_sync_waits_for_each_confirmation() {
    let broker = Mosquitto::start();
    let sink = MqttSink::builder()
        .connection(opts(&broker.url()))
        .topic("sync/t")
        .qos(QoS::ExactlyOnce)
        .publisher_sync(true)
        .start()
        .await
        .unwrap();
    for i in 1..=5u64 {
        let handle = sink.send(SinkRecord::json(json!(i))).await.unwrap();
        // Confirmed before `send` returned.
        assert_eq!(sink.metrics().get("mqlink_sink_confirmed_total"), Some(i));
        handle.await.unwrap();
    }
}

/// A sink pointed at a broker that is not there: `flush` says why the
/// records are not confirmed, not only how many.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_names_why_the_session_is_not_connected() {
    let port = testkit::free_port();
    let sink = MqttSink::builder()
        .connection(opts(&format!("mqtt://127.0.0.1:{port}")))
        .topic("r/t")
        .start()
        .await
        .unwrap();
    drop(sink.send(SinkRecord::json(json!(1))).await.unwrap());
    let e = sink.flush(Duration::from_millis(1500)).await.unwrap_err();
    let text = e.to_string();
    assert!(text.contains("1 records not confirmed yet"), "{text}");
    assert!(
        text.contains("reconnecting") || text.contains("connecting"),
        "{text}"
    );
}
