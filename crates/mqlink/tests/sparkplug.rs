//! Sparkplug B from the library: an `MqttSource` with
//! `Decoder::SparkplugB` on the embedded broker. DATA before any BIRTH is
//! refused and a rebirth is requested through the source's connection;
//! after the NBIRTH, DATA by alias comes out as named rows.
//!
//! And the other direction: an edge node made of the library's
//! [`EdgeNode`] over a [`Client`] (its NDEATH as the will), read by
//! pysparkplug's host application through a real Mosquitto.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use mqlink::broker::EmbeddedBroker;
use mqlink::format::sparkplug::edge::EdgeNode;
use mqlink::format::sparkplug::{proto, Host, HostOptions};
use mqlink::format::{Decoder, Value};
use mqlink::{Client, ConnectOptions, LastWill, Message, MqttSource, QoS, Subscription};
use tokio::time::timeout;

const T: Duration = Duration::from_secs(10);

fn payload(seq: u64, metrics: &[(Option<&str>, u64, u64)]) -> Bytes {
    let mut p = proto::Writer::default();
    p.uint(1, 1_700_000_000_000);
    for (name, alias, value) in metrics {
        let mut m = proto::Writer::default();
        if let Some(n) = name {
            m.bytes(1, n.as_bytes());
            m.uint(4, 4); // Int64
        }
        m.uint(2, *alias);
        m.uint(11, *value);
        p.bytes(2, &m.buf);
    }
    p.uint(3, seq);
    Bytes::from(p.buf)
}

#[tokio::test]
async fn library_source_names_data_by_alias_and_asks_for_a_rebirth() {
    let broker = EmbeddedBroker::start("127.0.0.1:0").await.unwrap();
    let url = format!("mqtt://{}", broker.local_addr());
    let host = Arc::new(Host::new(HostOptions::default()));
    let mut source = MqttSource::builder()
        .broker(&url)
        .topic("spBv1.0/g/#", QoS::AtLeastOnce)
        .format(Decoder::SparkplugB(host))
        .start()
        .await
        .unwrap();
    let (edge, mut commands) = Client::connect(ConnectOptions::new(&url).unwrap())
        .await
        .unwrap();
    edge.subscribe(vec![Subscription::new(
        "spBv1.0/g/NCMD/e",
        QoS::AtLeastOnce,
    )])
    .await
    .unwrap();
    let send = |topic: &str, p: Bytes| {
        let edge = edge.clone();
        let topic = topic.to_owned();
        async move {
            let token = edge
                .publish(Message::new(topic, p, QoS::AtLeastOnce))
                .await
                .unwrap();
            token.await.unwrap();
        }
    };

    send("spBv1.0/g/NDATA/e", payload(1, &[(None, 1, 5)])).await;
    let mut r = timeout(T, source.next()).await.unwrap().unwrap();
    let e = r.value.as_ref().unwrap_err().to_string();
    assert!(e.contains("NDATA before the edge node's NBIRTH"), "{e}");
    r.ack();
    let cmd = timeout(T, commands.recv()).await.unwrap().unwrap();
    let cmd = proto::decode(&cmd.payload).unwrap();
    assert_eq!(cmd.metrics[0].name.as_deref(), Some("Node Control/Rebirth"));

    send("spBv1.0/g/NBIRTH/e", payload(0, &[(Some("Speed"), 1, 10)])).await;
    send("spBv1.0/g/NDATA/e", payload(1, &[(None, 1, 11)])).await;
    // Records without rows (the source's own NCMD) are acknowledged and skipped.
    let mut rows = Vec::new();
    while rows.len() < 2 {
        let mut r = timeout(T, source.next()).await.unwrap().unwrap();
        match &r.value {
            Ok(Value::Rows(v)) if v.is_empty() => {}
            Ok(Value::Rows(v)) => rows.push(v[0].to_json()),
            other => panic!("{other:?}"),
        }
        r.ack();
    }
    assert_eq!(rows[0]["message_type"], "NBIRTH");
    let row = &rows[1];
    assert_eq!(
        (row["name"].as_str(), row["int_value"].as_i64()),
        (Some("Speed"), Some(11))
    );
    assert_eq!(row["datatype"], "Int64");
    source.close().await;
}

/// Publishes an edge node's messages in order, each confirmed.
async fn publish_all(client: &Client, messages: Vec<mqlink::format::sparkplug::edge::Outgoing>) {
    for m in messages {
        let token = client
            .publish(Message::new(m.topic, m.payload, QoS::AtLeastOnce))
            .await
            .unwrap();
        token.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn library_edge_node_read_by_pysparkplug_with_names_values_and_a_rebirth() {
    let broker = testkit::Mosquitto::start();
    let group = testkit::unique_id("libedge");
    let port = broker.port;
    let g = group.clone();
    let host = tokio::task::spawn_blocking(move || testkit::SparkplugHost::start(port, &g, "lib"))
        .await
        .unwrap();
    let mut node = EdgeNode::new(&group, "lib", 7);
    let death = node.death();
    let mut opts = ConnectOptions::new(&broker.url()).unwrap();
    opts.last_will = Some(LastWill {
        topic: death.topic,
        payload: death.payload,
        qos: QoS::AtLeastOnce,
        retain: false,
    });
    let (client, mut commands) = Client::connect(opts).await.unwrap();
    client
        .subscribe(vec![Subscription::new(
            &node.command_topic(),
            QoS::AtLeastOnce,
        )])
        .await
        .unwrap();
    publish_all(&client, node.rebirth()).await;
    for i in 0..3u64 {
        let reading =
            serde_json::json!({"temperature": 20.5 + i as f64, "motor": {"rpm": 1000 + i}});
        let messages = node
            .data(Some("press"), reading.as_object().unwrap(), None)
            .unwrap();
        publish_all(&client, messages).await;
    }
    // pysparkplug's host reads the events on a thread of its own.
    let host = tokio::task::spawn_blocking(move || {
        let nbirth = host.next("birth");
        assert_eq!(nbirth["kind"], "NBIRTH");
        assert_eq!(nbirth["bdseq"], 7, "the will's bdSeq");
        let dbirth = host.next_dbirth();
        assert_eq!(dbirth["device"], "press");
        for i in 0..3u64 {
            let d = host.next("data");
            assert_eq!(d["device"], "press", "{d}");
            assert_eq!(d["metrics"]["temperature"], 20.5 + i as f64, "{d}");
            assert_eq!(d["metrics"]["motor/rpm"], 1000 + i, "{d}");
        }
        writeln!(&host.stdin, "REBIRTH").unwrap();
        host
    })
    .await
    .unwrap();

    // The host's NCMD Node Control/Rebirth, answered with every last value.
    let mut cmd = timeout(T, commands.recv()).await.unwrap().unwrap();
    assert!(EdgeNode::is_rebirth_request(&cmd.payload));
    cmd.ack();
    publish_all(&client, node.rebirth()).await;
    tokio::task::spawn_blocking(move || {
        let nbirth = host.next("birth");
        assert_eq!(nbirth["kind"], "NBIRTH");
        assert_eq!(nbirth["seq"], 0);
        let dbirth = host.next("birth");
        assert_eq!(dbirth["metrics"]["temperature"], 22.5, "{dbirth}");
        assert_eq!(dbirth["metrics"]["motor/rpm"], 1002, "{dbirth}");
    })
    .await
    .unwrap();
    client.disconnect().await;
}
