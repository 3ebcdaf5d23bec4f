//! The MQTT source against real Mosquitto brokers: overlapping filters give
//! each message once, shared subscriptions split the load, bad payloads go
//! to the dead-letter topic and are counted.

use std::collections::BTreeMap;
use std::time::Duration;

use mqlink::format::{ColumnType, Decoder, Schema, Value};
use mqlink::source::MqttSource;
use mqlink::{Client, ConnectOptions, Message, Protocol, QoS, Subscription};
use testkit::{unique_id, Mosquitto};
use tokio::time::timeout;

fn opts(url: &str, protocol: Protocol) -> ConnectOptions {
    let mut o = ConnectOptions::new(url).unwrap();
    o.protocol = protocol;
    o.client_id = Some(unique_id("src"));
    o
}

async fn publish_all(client: &Client, msgs: impl IntoIterator<Item = (String, String)>) {
    let mut tokens = Vec::new();
    for (topic, payload) in msgs {
        tokens.push(
            client
                .publish(Message::new(topic, payload, QoS::AtLeastOnce))
                .await
                .unwrap(),
        );
    }
    for t in tokens {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_filters_deliver_each_message_once() {
    let broker = Mosquitto::start();
    for proto in [Protocol::V311, Protocol::V5] {
        let root = unique_id("factory");
        let mut source = MqttSource::builder()
            .connection(opts(&broker.url(), proto))
            .topic(format!("{root}/machine1/temperature"), QoS::AtLeastOnce)
            .topic(format!("{root}/#"), QoS::AtLeastOnce)
            .topic(format!("{root}/+/pressure"), QoS::AtLeastOnce)
            .topic(format!("{root}/machine1/+"), QoS::AtLeastOnce)
            .start()
            .await
            .unwrap();
        let (publ, _) = Client::connect(opts(&broker.url(), proto)).await.unwrap();
        if proto == Protocol::V5 {
            // What a plain client subscribed to the same filters gets: two copies.
            let (plain, mut inc) = Client::connect(opts(&broker.url(), proto)).await.unwrap();
            plain
                .subscribe(vec![
                    Subscription::new(format!("{root}/machine1/temperature"), QoS::AtLeastOnce),
                    Subscription::new(format!("{root}/#"), QoS::AtLeastOnce),
                ])
                .await
                .unwrap();
            publish_all(
                &publ,
                [(format!("{root}/machine1/temperature"), "probe".into())],
            )
            .await;
            for _ in 0..2 {
                let mut d = timeout(Duration::from_secs(5), inc.recv())
                    .await
                    .unwrap()
                    .unwrap();
                d.ack();
            }
            plain.disconnect().await;
            // The source got the probe once.
            let mut r = timeout(Duration::from_secs(5), source.next())
                .await
                .unwrap()
                .unwrap();
            r.ack();
            assert_eq!(&r.payload[..], b"probe");
        }
        let msgs: Vec<(String, String)> = (0..300)
            .map(|i| {
                let leaf = [
                    "machine1/temperature",
                    "machine2/pressure",
                    "machine1/pressure",
                ][i % 3];
                (format!("{root}/{leaf}"), format!("m{i}"))
            })
            .collect();
        publish_all(&publ, msgs).await;
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        while counts.values().sum::<usize>() < 300 {
            let mut r = timeout(Duration::from_secs(5), source.next())
                .await
                .unwrap()
                .unwrap();
            r.ack();
            *counts
                .entry(String::from_utf8(r.payload.to_vec()).unwrap())
                .or_default() += 1;
        }
        assert!(
            timeout(Duration::from_millis(500), source.next())
                .await
                .is_err(),
            "{proto}: a duplicate arrived"
        );
        assert_eq!(counts.len(), 300);
        assert!(counts.values().all(|&n| n == 1));
        source.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partly_overlapping_filters_are_merged_and_extras_dropped() {
    let broker = Mosquitto::start();
    let root = unique_id("m");
    let mut source = MqttSource::builder()
        .connection(opts(&broker.url(), Protocol::V5))
        .topic(format!("{root}/+/c"), QoS::AtLeastOnce)
        .topic(format!("{root}/b/+"), QoS::AtLeastOnce)
        .start()
        .await
        .unwrap();
    let (publ, _) = Client::connect(opts(&broker.url(), Protocol::V5))
        .await
        .unwrap();
    // b/c matches both filters; x/y matches neither (but the merged a/+/+).
    let msgs = ["b/c", "x/y", "q/c", "b/z"].map(|l| (format!("{root}/{l}"), l.to_string()));
    publish_all(&publ, msgs).await;
    let mut got = Vec::new();
    while got.len() < 3 {
        let mut r = timeout(Duration::from_secs(5), source.next())
            .await
            .unwrap()
            .unwrap();
        r.ack();
        got.push(String::from_utf8(r.payload.to_vec()).unwrap());
    }
    assert!(timeout(Duration::from_millis(500), source.next())
        .await
        .is_err());
    got.sort();
    assert_eq!(got, ["b/c", "b/z", "q/c"]);
    let m = source.metrics();
    assert_eq!(m.get("mqlink_source_filtered_total"), Some(1));
    assert_eq!(m.get("mqlink_source_messages_received_total"), Some(4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_clients_in_a_shared_group_receive_each_message_once() {
    let broker = Mosquitto::start();
    let topic = format!("shared/{}", unique_id("s"));
    let mut o = opts(&broker.url(), Protocol::V5);
    o.client_id = Some(unique_id("grp"));
    let mut source = MqttSource::builder()
        .connection(o)
        .topic(format!("{topic}/#"), QoS::AtLeastOnce)
        .parallelism(3)
        .start()
        .await
        .unwrap();
    let ids: Vec<String> = source
        .clients()
        .iter()
        .map(|c| c.client_id().to_owned())
        .collect();
    assert!(ids[0].ends_with("-0") && ids[2].ends_with("-2"), "{ids:?}");
    let (publ, _) = Client::connect(opts(&broker.url(), Protocol::V5))
        .await
        .unwrap();
    let n = 3000;
    publish_all(
        &publ,
        (0..n).map(|i| (format!("{topic}/{}", i % 7), format!("m{i}"))),
    )
    .await;
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    while counts.values().sum::<usize>() < n {
        for mut r in timeout(Duration::from_secs(5), source.next_batch())
            .await
            .unwrap()
        {
            r.ack();
            *counts
                .entry(String::from_utf8(r.payload.to_vec()).unwrap())
                .or_default() += 1;
        }
    }
    assert!(timeout(Duration::from_millis(500), source.next())
        .await
        .is_err());
    assert_eq!(counts.len(), n);
    assert!(counts.values().all(|&c| c == 1));
    let per_client: Vec<u64> = source
        .clients()
        .iter()
        .map(|c| c.stats().messages_received())
        .collect();
    assert!(
        per_client.iter().all(|&c| c > 0),
        "the load was not split: {per_client:?}"
    );
    source.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_payloads_reach_the_dead_letter_topic_and_are_counted() {
    let broker = Mosquitto::start();
    for proto in [Protocol::V311, Protocol::V5] {
        let topic = format!("tele/{}", unique_id("d"));
        let dlq = format!("errors/{}", unique_id("dlq"));
        let (watch, mut dead) = Client::connect(opts(&broker.url(), proto)).await.unwrap();
        watch
            .subscribe(vec![Subscription::new(&dlq, QoS::AtLeastOnce)])
            .await
            .unwrap();
        let schema = Schema::new([("device_id", ColumnType::Text), ("seq", ColumnType::BigInt)]);
        let mut source = MqttSource::builder()
            .connection(opts(&broker.url(), proto))
            .topic(&topic, QoS::AtLeastOnce)
            .format(Decoder::Json {
                schema: Some(schema),
            })
            .dead_letter_topic(&dlq)
            .start()
            .await
            .unwrap();
        let (publ, _) = Client::connect(opts(&broker.url(), proto)).await.unwrap();
        let payloads = [
            r#"{"device_id":"d1","seq":1}"#,
            r#"{"device_id":"d1","seq":"two"}"#,
            "not json",
            r#"{"device_id":"d1","seq":3}"#,
        ];
        publish_all(
            &publ,
            payloads.iter().map(|p| (topic.clone(), p.to_string())),
        )
        .await;
        let mut good = Vec::new();
        for _ in 0..2 {
            let mut r = timeout(Duration::from_secs(5), source.next())
                .await
                .unwrap()
                .unwrap();
            r.ack();
            let Ok(Value::Row(row)) = &r.value else {
                panic!("{:?}", r.value)
            };
            good.push(row[1].1.clone());
        }
        assert_eq!(good, [Value::BigInt(1), Value::BigInt(3)]);
        for want in [payloads[1], payloads[2]] {
            let mut d = timeout(Duration::from_secs(5), dead.recv())
                .await
                .unwrap()
                .unwrap();
            d.ack();
            match proto {
                Protocol::V5 => {
                    assert_eq!(d.payload, want.as_bytes());
                    let props = d.properties.unwrap();
                    let get = |k: &str| {
                        props
                            .user_properties
                            .iter()
                            .find(|(n, _)| n == k)
                            .map(|(_, v)| v.clone())
                    };
                    assert_eq!(
                        get("mqlink_original_topic").as_deref(),
                        Some(topic.as_str())
                    );
                    assert!(get("mqlink_error").is_some());
                }
                Protocol::V31 | Protocol::V311 => {
                    let v: serde_json::Value = serde_json::from_slice(&d.payload).unwrap();
                    assert_eq!(v["original_topic"], topic.as_str());
                    assert_eq!(v["payload"], want);
                    assert!(v["error"].as_str().unwrap().len() > 5);
                }
            }
        }
        let m = source.metrics();
        assert_eq!(m.get("mqlink_source_decode_errors_total"), Some(2));
        // The dead-letter confirmation is counted just after it arrives.
        timeout(Duration::from_secs(5), async {
            while source.metrics().get("mqlink_source_dead_lettered_total") != Some(2) {
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap();
        assert_eq!(
            source.metrics().get("mqlink_source_unacknowledged"),
            Some(0)
        );
        source.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_downstream_failure_is_retried_then_dead_lettered() {
    let broker = Mosquitto::start();
    let topic = format!("retry/{}", unique_id("r"));
    let dlq = format!("retry-errors/{}", unique_id("d"));
    let (watch, mut dead) = Client::connect(opts(&broker.url(), Protocol::V5))
        .await
        .unwrap();
    watch
        .subscribe(vec![Subscription::new(&dlq, QoS::AtLeastOnce)])
        .await
        .unwrap();
    let mut source = MqttSource::builder()
        .connection(opts(&broker.url(), Protocol::V5))
        .topic(&topic, QoS::AtLeastOnce)
        // Jet's mapToItemFn: (topic, message) -> item.
        .map_to_item_fn(|topic, payload| {
            Ok(Value::Text(format!(
                "{topic}:{}",
                String::from_utf8_lossy(payload)
            )))
        })
        .dead_letter_topic(&dlq)
        .max_retries(2)
        .start()
        .await
        .unwrap();
    let (publ, _) = Client::connect(opts(&broker.url(), Protocol::V5))
        .await
        .unwrap();
    publish_all(&publ, [(topic.clone(), "poison".to_string())]).await;
    // The sink fails every time: seen 1 + 2 retries, then dead-lettered.
    for attempt in 0..3 {
        let r = timeout(Duration::from_secs(5), source.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(r.attempts, attempt);
        assert_eq!(r.value, Ok(Value::Text(format!("{topic}:poison"))));
        assert!(source.retry(r, "database is down").await.is_ok());
    }
    let mut d = timeout(Duration::from_secs(5), dead.recv())
        .await
        .unwrap()
        .unwrap();
    d.ack();
    assert_eq!(&d.payload[..], b"poison");
    let reason = d
        .properties
        .unwrap()
        .user_properties
        .iter()
        .find(|(k, _)| k == "mqlink_error")
        .unwrap()
        .1
        .clone();
    assert!(reason.contains("3 times: database is down"), "{reason}");
    assert_eq!(
        source.metrics().get("mqlink_source_dead_lettered_total"),
        Some(1)
    );
    assert_eq!(
        source.metrics().get("mqlink_source_unacknowledged"),
        Some(0)
    );
}

fn zigzag(v: i64, out: &mut Vec<u8>) {
    let mut n = ((v << 1) ^ (v >> 63)) as u64;
    loop {
        let b = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

/// `{device_id: string, seq: long}` in Avro binary, behind the Confluent header.
fn confluent_avro(schema_id: u32, device: &str, seq: i64) -> Vec<u8> {
    let mut b = vec![0];
    b.extend(schema_id.to_be_bytes());
    zigzag(device.len() as i64, &mut b);
    b.extend(device.as_bytes());
    zigzag(seq, &mut b);
    b
}

/// A schema registry answering `GET /schemas/ids/7`, counting requests.
async fn registry_server(hits: std::sync::Arc<std::sync::atomic::AtomicUsize>) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            hits.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut req = vec![0u8; 4096];
            let n = s.read(&mut req).await.unwrap();
            let req = String::from_utf8_lossy(&req[..n]).to_string();
            let schema = r#"{"type":"record","name":"T","fields":[{"name":"device_id","type":"string"},{"name":"seq","type":"long"}]}"#;
            let (status, body) = if req.starts_with("GET /schemas/ids/7 ") {
                (
                    "200 OK",
                    serde_json::json!({ "schema": schema }).to_string(),
                )
            } else {
                ("404 Not Found", r#"{"error_code":40403}"#.to_string())
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            let _ = s.write_all(resp.as_bytes()).await;
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn avro_from_a_schema_registry_and_from_a_schema_file() {
    use mqlink::format::{AvroSchema, Registry};
    let broker = Mosquitto::start();
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let port = registry_server(hits.clone()).await;
    let topic = format!("avro/{}", unique_id("a"));
    let dlq = format!("avro-errors/{}", unique_id("d"));
    let (watch, mut dead) = Client::connect(opts(&broker.url(), Protocol::V5))
        .await
        .unwrap();
    watch
        .subscribe(vec![Subscription::new(&dlq, QoS::AtLeastOnce)])
        .await
        .unwrap();
    let registry = Registry::new(&format!("http://127.0.0.1:{port}")).unwrap();
    let mut source = MqttSource::builder()
        .connection(opts(&broker.url(), Protocol::V5))
        .topic(&topic, QoS::AtLeastOnce)
        .format(Decoder::AvroRegistry {
            registry: std::sync::Arc::new(registry),
        })
        .dead_letter_topic(&dlq)
        .start()
        .await
        .unwrap();
    let (publ, _) = Client::connect(opts(&broker.url(), Protocol::V5))
        .await
        .unwrap();
    let mut tokens = Vec::new();
    for payload in [
        confluent_avro(7, "d1", 1),
        confluent_avro(7, "d2", -2),
        confluent_avro(9, "d3", 3), // unknown schema id: dead letter
        b"plain text".to_vec(),     // not the wire format: dead letter
        confluent_avro(7, "d4", 4),
    ] {
        tokens.push(
            publ.publish(Message::new(&topic, payload, QoS::AtLeastOnce))
                .await
                .unwrap(),
        );
    }
    for t in tokens {
        t.await.unwrap();
    }
    let mut got = Vec::new();
    while got.len() < 3 {
        let mut r = timeout(Duration::from_secs(10), source.next())
            .await
            .unwrap()
            .unwrap();
        r.ack();
        let Ok(Value::Row(row)) = &r.value else {
            panic!("{:?}", r.value)
        };
        got.push((row[0].1.clone(), row[1].1.clone()));
    }
    assert_eq!(
        got,
        [
            (Value::Text("d1".into()), Value::BigInt(1)),
            (Value::Text("d2".into()), Value::BigInt(-2)),
            (Value::Text("d4".into()), Value::BigInt(4)),
        ]
    );
    for _ in 0..2 {
        let mut d = timeout(Duration::from_secs(10), dead.recv())
            .await
            .unwrap()
            .unwrap();
        d.ack();
    }
    // Schema 7 fetched once, then cached; schema 9 asked three times (404).
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 4);
    source.close().await;

    // The same bytes with the schema given as a file.
    let schema = AvroSchema::parse(
        r#"{"type":"record","name":"T","fields":[{"name":"device_id","type":"string"},{"name":"seq","type":"long"}]}"#,
    )
    .unwrap();
    let f = Decoder::Avro {
        schema: std::sync::Arc::new(schema),
    };
    let body = &confluent_avro(7, "d9", 9)[5..];
    let Value::Row(row) = f.decode("t", &bytes::Bytes::copy_from_slice(body)).unwrap() else {
        panic!()
    };
    assert_eq!(row[1].1, Value::BigInt(9));
}
