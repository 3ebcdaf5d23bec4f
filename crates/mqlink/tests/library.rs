//! The library's user-facing API against real Mosquitto brokers: the
//! bridge step (`MqttSink::forward`) acknowledges upstream only after the far
//! broker confirmed, through a frozen far broker and a bridge restart; the
//! source as a `Stream` of records and of batches; `message_fn` making
//! topic, QoS and retain per record.

use std::time::Duration;

use futures_util::StreamExt;
use mqlink::sink::SinkError;
use mqlink::{Client, Message, MqttSink, MqttSource, QoS, SinkRecord, Subscription};
use serde_json::json;
use testkit::{unique_id, Mosquitto};
use tokio::time::timeout;

const T: Duration = Duration::from_secs(10);

async fn publish_n(url: &str, topic: &str, n: usize) {
    let sink = MqttSink::builder()
        .broker(url)
        .topic(topic)
        .start()
        .await
        .unwrap();
    for i in 0..n {
        let _h = sink.send(SinkRecord::json(json!({"i": i}))).await.unwrap();
    }
    sink.close(T).await.unwrap();
}

async fn subscriber(url: &str, filter: &str) -> mqlink::Incoming {
    let (c, inc) = Client::connect(mqlink::ConnectOptions::new(url).unwrap())
        .await
        .unwrap();
    c.subscribe(vec![Subscription::new(filter, QoS::ExactlyOnce)])
        .await
        .unwrap();
    // The client lives as long as the session task; `inc` ends with it.
    std::mem::forget(c);
    inc
}

fn unacknowledged(source: &MqttSource) -> u64 {
    source
        .metrics()
        .get("mqlink_source_unacknowledged")
        .unwrap()
}

/// The far broker is frozen (SIGSTOP): forwarded records are not
/// acknowledged upstream, and a bridge restarted meanwhile gets every one
/// of them again. Once the far broker answers, all are delivered there and
/// acknowledged upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_acknowledges_upstream_only_after_the_far_broker_confirmed() {
    let near = Mosquitto::start();
    let mut far = Mosquitto::start();
    let root = unique_id("fwd");
    let id = unique_id("bridge");
    let bridge_in = || {
        MqttSource::builder()
            .broker(&near.url())
            .client_id(&id)
            .keep_session()
            .topic(format!("{root}/in/#"), QoS::AtLeastOnce)
            .start()
    };
    let mut out = subscriber(&far.url(), &format!("{root}/out/#")).await;
    let mut upstream = bridge_in().await.unwrap();
    let downstream = MqttSink::builder()
        .broker(&far.url())
        .topic(format!("{root}/out/{{stream}}"))
        .start()
        .await
        .unwrap();
    // The sink's session is up before the freeze.
    let mut warm_up = SinkRecord::json(json!("warm-up"));
    warm_up.stream = Some("warm-up".into());
    downstream.send(warm_up).await.unwrap().await.unwrap();
    timeout(T, out.recv()).await.unwrap().unwrap().ack();

    far.pause();
    publish_n(&near.url(), &format!("{root}/in/a"), 10).await;
    let mut handles = Vec::new();
    for _ in 0..10 {
        let mut record = timeout(T, upstream.next()).await.unwrap().unwrap();
        handles.push(downstream.forward(&mut record).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        unacknowledged(&upstream),
        10,
        "nothing confirmed, nothing acknowledged"
    );

    // The bridge goes away while the far broker is frozen: the near broker
    // still holds all ten for the bridge's session.
    upstream.close().await;
    drop(handles);
    let mut upstream = bridge_in().await.unwrap();
    let mut again = Vec::new();
    for _ in 0..10 {
        let r = timeout(T, upstream.next()).await.unwrap().unwrap();
        again.push(r);
    }
    let seen: Vec<_> = again
        .iter()
        .map(|r| r.value.as_ref().ok().cloned())
        .collect();
    assert_eq!(seen.len(), 10);

    far.resume();
    // The first sink's publishes go through now; the restarted bridge
    // forwards its copies with the same sink (at least once: duplicates
    // downstream are allowed, losses are not).
    let mut confirmations = Vec::new();
    for mut r in again {
        confirmations.push(downstream.forward(&mut r).await.unwrap());
    }
    for c in confirmations {
        timeout(T, c).await.unwrap().unwrap();
    }
    assert_eq!(unacknowledged(&upstream), 0);
    let mut got = std::collections::BTreeSet::new();
    while got.len() < 10 {
        let mut d = timeout(T, out.recv()).await.unwrap().unwrap();
        d.ack();
        assert_eq!(d.topic.as_str(), format!("{root}/out/{root}/in/a"));
        got.insert(d.payload.clone());
    }
    upstream.close().await;
    // Nothing is left for the bridge's session on the near broker.
    let mut upstream = bridge_in().await.unwrap();
    assert!(
        timeout(Duration::from_millis(500), upstream.next())
            .await
            .is_err(),
        "everything was acknowledged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_source_is_a_stream_of_records_and_of_batches() {
    let broker = Mosquitto::start();
    let root = unique_id("stream");
    let source = MqttSource::builder()
        .broker(&broker.url())
        .topic(format!("{root}/#"), QoS::AtLeastOnce)
        .batch(7, Duration::from_millis(50))
        .start()
        .await
        .unwrap();
    publish_n(&broker.url(), &format!("{root}/a"), 30).await;
    // `Stream` and `next()` mixed: the same records, in order.
    let mut source = source;
    let mut seen = Vec::new();
    let mut first = timeout(T, source.next()).await.unwrap().unwrap();
    first.ack();
    seen.push(first.payload.clone());
    let rest: Vec<_> = timeout(T, (&mut source).take(19).collect::<Vec<_>>())
        .await
        .unwrap();
    for mut r in rest {
        r.ack();
        seen.push(r.payload.clone());
    }
    let expected: Vec<_> = (0..20)
        .map(|i| bytes::Bytes::from(json!({"i": i}).to_string()))
        .collect();
    assert_eq!(seen, expected);
    // The other 10 as batches of at most 7.
    let mut batches = source.batches();
    let mut n = 0;
    while n < 10 {
        let batch = timeout(T, batches.next()).await.unwrap().unwrap();
        assert!(!batch.is_empty() && batch.len() <= 7, "{}", batch.len());
        for mut r in batch {
            assert_eq!(
                r.payload,
                bytes::Bytes::from(json!({"i": 20 + n}).to_string())
            );
            r.ack();
            n += 1;
        }
    }
    assert_eq!(
        batches
            .source()
            .unwrap()
            .metrics()
            .get("mqlink_source_unacknowledged"),
        Some(0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_fn_makes_topic_qos_and_retain_per_record() {
    let broker = Mosquitto::start();
    let root = unique_id("msgfn");
    let mut inc = subscriber(&broker.url(), &format!("{root}/#")).await;
    let r2 = root.clone();
    let sink = MqttSink::builder()
        .broker(&broker.url())
        .message_fn(move |record| {
            let v = record.value.as_json().ok_or("not JSON")?;
            let device = v["device"].as_str().ok_or("no device")?;
            let alarm = v["t"].as_f64().is_some_and(|t| t > 80.0);
            let qos = if alarm {
                QoS::ExactlyOnce
            } else {
                QoS::AtMostOnce
            };
            Ok(Message::new(format!("{r2}/{device}"), v["t"].to_string(), qos).retain(alarm))
        })
        .start()
        .await
        .unwrap();
    sink.send(SinkRecord::json(json!({"device": "d1", "t": 91.5})))
        .await
        .unwrap()
        .await
        .unwrap();
    sink.send(SinkRecord::json(json!({"device": "d2", "t": 20.0})))
        .await
        .unwrap()
        .await
        .unwrap();
    let e = sink
        .send(SinkRecord::json(json!({"t": 1})))
        .await
        .unwrap_err();
    assert_eq!(e, SinkError::MessageFn("no device".into()));
    assert_eq!(e.to_string(), "message_fn: no device");
    let e = sink.send(SinkRecord::bytes("x")).await.unwrap_err();
    assert_eq!(e, SinkError::MessageFn("not JSON".into()));
    let mut got = Vec::new();
    for _ in 0..2 {
        let mut d = timeout(T, inc.recv()).await.unwrap().unwrap();
        d.ack();
        got.push((
            d.topic.to_string(),
            d.qos,
            String::from_utf8_lossy(&d.payload).into_owned(),
        ));
    }
    got.sort();
    assert_eq!(
        got,
        [
            (format!("{root}/d1"), QoS::ExactlyOnce, "91.5".to_owned()),
            (format!("{root}/d2"), QoS::AtMostOnce, "20.0".to_owned()),
        ]
    );
    // Retained as the function said: a new subscriber gets d1 only.
    let mut late = subscriber(&broker.url(), &format!("{root}/#")).await;
    let mut d = timeout(T, late.recv()).await.unwrap().unwrap();
    d.ack();
    assert!(d.retain);
    assert_eq!(d.topic.as_str(), format!("{root}/d1"));
    assert!(timeout(Duration::from_millis(300), late.recv())
        .await
        .is_err());
}

/// Starting outside a Tokio runtime is an error, not tokio's panic.
#[test]
fn starting_without_a_runtime_is_an_error() {
    let config = MqttSink::builder()
        .broker("mqtt://127.0.0.1:1")
        .topic("t")
        .build()
        .unwrap();
    assert!(matches!(
        MqttSink::start(config),
        Err(mqlink::Error::NoRuntime)
    ));
    let e = MqttSink::builder().parallelism(0).build().unwrap_err();
    assert_eq!(e, SinkError::Parallelism);
}
