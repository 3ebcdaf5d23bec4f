//! The embedded broker against the library's own client.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::*;
use crate::types::{Protocol, QoS};
use crate::{Client, ConnectOptions, Message, Subscription};

const QUEUE: usize = 10_000;

fn opts(addr: SocketAddr, id: &str, protocol: Protocol) -> ConnectOptions {
    let mut o = ConnectOptions::new(&format!("mqtt://{addr}")).unwrap();
    o.client_id = Some(id.into());
    o.protocol = protocol;
    o
}

#[tokio::test]
async fn routes_every_qos_with_wildcards_and_retained() {
    let b = EmbeddedBroker::start("127.0.0.1:0").await.unwrap();
    for protocol in [Protocol::V31, Protocol::V311, Protocol::V5] {
        let (p, _) = Client::connect(opts(b.local_addr(), "pub", protocol))
            .await
            .unwrap();
        p.publish(Message::new("r/kept", "old", QoS::AtLeastOnce).retain(true))
            .await
            .unwrap()
            .await
            .unwrap();
        let (s, mut inc) = Client::connect(opts(b.local_addr(), "sub", protocol))
            .await
            .unwrap();
        s.subscribe(vec![
            Subscription::new("a/+/c", QoS::ExactlyOnce),
            Subscription::new("r/#", QoS::AtLeastOnce),
        ])
        .await
        .unwrap();
        let mut d = inc.recv().await.unwrap();
        assert_eq!(
            (d.topic.as_str(), &d.payload[..], d.retain),
            ("r/kept", &b"old"[..], true)
        );
        d.ack();
        for q in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            for i in 0..50 {
                p.publish(Message::new("a/b/c", format!("{i}"), q))
                    .await
                    .unwrap()
                    .await
                    .unwrap();
            }
            p.publish(Message::new("a/b/x", "no", q))
                .await
                .unwrap()
                .await
                .unwrap();
            for i in 0..50 {
                let mut d = inc.recv().await.unwrap();
                assert_eq!((d.topic.as_str(), d.qos), ("a/b/c", q));
                assert_eq!(d.payload, format!("{i}").as_bytes());
                d.ack();
            }
        }
        s.disconnect().await;
        p.disconnect().await;
    }
}

#[tokio::test]
async fn a_persistent_session_keeps_what_was_not_acknowledged() {
    let b = EmbeddedBroker::start("127.0.0.1:0").await.unwrap();
    let mut o = opts(b.local_addr(), "keep", Protocol::V311);
    o.clean_session = false;
    let (s, mut inc) = Client::connect(o.clone()).await.unwrap();
    s.subscribe(vec![Subscription::new("q/#", QoS::AtLeastOnce)])
        .await
        .unwrap();
    let (p, _) = Client::connect(opts(b.local_addr(), "p", Protocol::V311))
        .await
        .unwrap();
    for i in 0..10 {
        p.publish(Message::new("q/1", format!("{i}"), QoS::AtLeastOnce))
            .await
            .unwrap()
            .await
            .unwrap();
    }
    // Acknowledge the first 4 only, then leave.
    for _ in 0..4 {
        inc.recv().await.unwrap().ack();
    }
    for _ in 4..10 {
        inc.recv().await.unwrap();
    }
    s.disconnect().await;
    for i in 10..15 {
        p.publish(Message::new("q/1", format!("{i}"), QoS::AtLeastOnce))
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let (s, mut inc) = Client::connect(o).await.unwrap();
    let mut got = Vec::new();
    while got.len() < 11 {
        let mut d = tokio::time::timeout(Duration::from_secs(5), inc.recv())
            .await
            .unwrap()
            .unwrap();
        got.push(String::from_utf8(d.payload.to_vec()).unwrap());
        d.ack();
    }
    let want: Vec<String> = (4..15).map(|i| i.to_string()).collect();
    assert_eq!(
        got, want,
        "unacknowledged ones first (DUP), then the queued ones"
    );
    s.disconnect().await;
}

/// A subscriber that does not keep up slows the publisher down; no
/// message is dropped, however far behind it falls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_subscriber_holds_publishers_back_and_loses_nothing() {
    let b = EmbeddedBroker::start("127.0.0.1:0").await.unwrap();
    let mut o = opts(b.local_addr(), "slow", Protocol::V5);
    o.receive_maximum = 100;
    let (s, mut inc) = Client::connect(o).await.unwrap();
    s.subscribe(vec![Subscription::new("s/#", QoS::AtLeastOnce)])
        .await
        .unwrap();
    let (p, _) = Client::connect(opts(b.local_addr(), "fast", Protocol::V311))
        .await
        .unwrap();
    const N: usize = QUEUE + 5_000;
    let confirmed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let publisher = {
        let confirmed = confirmed.clone();
        tokio::spawn(async move {
            let (tx, mut rx) = mpsc::unbounded_channel::<crate::PublishToken>();
            let waiter = tokio::spawn(async move {
                while let Some(t) = rx.recv().await {
                    t.await.unwrap();
                    confirmed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            });
            for i in 0..N {
                let t = p
                    .publish(Message::new("s/x", format!("{i}"), QoS::AtLeastOnce))
                    .await
                    .unwrap();
                tx.send(t).unwrap();
            }
            drop(tx);
            waiter.await.unwrap();
            p.disconnect().await;
        })
    };
    // Nobody reads: the queue and the window fill, then the publisher
    // waits — longer than any timeout a broker could use to give up on a
    // subscriber (an earlier version dropped messages after 10 s).
    tokio::time::sleep(Duration::from_secs(11)).await;
    let held = confirmed.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        held < N,
        "the publisher was held back ({held} of {N} confirmed)"
    );
    for i in 0..N {
        let mut d = tokio::time::timeout(Duration::from_secs(10), inc.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            d.payload,
            format!("{i}").as_bytes(),
            "in order, none missing"
        );
        d.ack();
    }
    publisher.await.unwrap();
    assert_eq!(confirmed.load(std::sync::atomic::Ordering::Relaxed), N);
    s.disconnect().await;
}
