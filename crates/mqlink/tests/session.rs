//! The session layer against real Mosquitto brokers started per test:
//! confirmations, ordered acknowledgements, persistent sessions, broker
//! restarts and kills, cut connections, credentials, TLS and WebSocket.

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use mqlink::{
    Backoff, Client, ConnectError, ConnectOptions, Delivery, Error, Incoming, LastWill, Message,
    Protocol, PublishError, PublishProperties, QoS, Refusal, Status, SubscribeError, Subscription,
    TlsKeys, TlsOptions,
};
use testkit::{unique_id, CutProxy, Mosquitto, MosquittoConfig};
use tokio::time::timeout;

const BOTH: [Protocol; 2] = [Protocol::V311, Protocol::V5];

fn opts(url: &str, protocol: Protocol) -> ConnectOptions {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let mut o = ConnectOptions::new(url).unwrap();
    o.protocol = protocol;
    o.client_id = Some(unique_id("t"));
    o.keep_alive = Duration::from_secs(5);
    o.connect_timeout = Duration::from_secs(5);
    o.reconnect = Backoff {
        initial_interval: Duration::from_millis(50),
        multiplier: 1.5,
        max_interval: Duration::from_millis(400),
        max_attempts: 0,
        jitter: 0.1,
    };
    o
}

fn persistent(mut o: ConnectOptions, client_id: &str) -> ConnectOptions {
    o.client_id = Some(client_id.to_owned());
    o.clean_session = false;
    o
}

/// Receives deliveries until `n` distinct payloads were seen, acknowledging each.
async fn collect_distinct(
    inc: &mut Incoming,
    n: usize,
    within: Duration,
) -> (BTreeSet<Bytes>, usize) {
    let mut seen = BTreeSet::new();
    let mut total = 0;
    let r = timeout(within, async {
        while seen.len() < n {
            let mut d: Delivery = inc.recv().await.expect("session ended");
            d.ack();
            total += 1;
            seen.insert(d.payload.clone());
        }
    })
    .await;
    assert!(
        r.is_ok(),
        "only {} of {n} distinct messages arrived ({total} in all); missing: {:?}",
        seen.len(),
        payloads(n).difference(&seen).take(10).collect::<Vec<_>>()
    );
    (seen, total)
}

fn payloads(n: usize) -> BTreeSet<Bytes> {
    (0..n).map(|i| Bytes::from(format!("m{i:06}"))).collect()
}

async fn wait_status(client: &Client, want: impl Fn(&Status) -> bool) -> Status {
    let mut rx = client.status();
    timeout(Duration::from_secs(20), async {
        loop {
            let s = rx.borrow_and_update().clone();
            if want(&s) {
                return s;
            }
            rx.changed().await.expect("status channel closed");
        }
    })
    .await
    .expect("status not reached")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_is_confirmed_and_delivered_at_every_qos_and_version() {
    let broker = Mosquitto::start();
    for proto in BOTH {
        let (sub, mut inc) = Client::connect(opts(&broker.url(), proto)).await.unwrap();
        let topic = format!("t/{}", unique_id("q"));
        let granted = sub
            .subscribe(vec![Subscription::new(
                format!("{topic}/#"),
                QoS::ExactlyOnce,
            )])
            .await
            .unwrap();
        assert_eq!(granted, [QoS::ExactlyOnce]);
        let (publ, _) = Client::connect(opts(&broker.url(), proto)).await.unwrap();
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            let mut tokens = Vec::new();
            for i in 0..200 {
                let m = Message::new(format!("{topic}/{qos}"), format!("m{i:06}"), qos);
                tokens.push(publ.publish(m).await.unwrap());
            }
            for t in tokens {
                t.await.unwrap();
            }
            let (seen, _) = collect_distinct(&mut inc, 200, Duration::from_secs(10)).await;
            assert_eq!(seen, payloads(200), "{proto} {qos}");
        }
        publ.disconnect().await;
        sub.disconnect().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacknowledged_messages_are_redelivered_and_acks_go_in_order() {
    let broker = Mosquitto::start();
    for proto in BOTH {
        let id = unique_id("acks");
        let topic = format!("acks/{id}");
        let o = persistent(opts(&broker.url(), proto), &id);
        let (sub, mut inc) = Client::connect(o.clone()).await.unwrap();
        sub.subscribe(vec![Subscription::new(&topic, QoS::AtLeastOnce)])
            .await
            .unwrap();
        let (publ, _) = Client::connect(opts(&broker.url(), proto)).await.unwrap();
        for i in 0..3 {
            publ.publish(Message::new(&topic, format!("m{i}"), QoS::AtLeastOnce))
                .await
                .unwrap()
                .await
                .unwrap();
        }
        let mut ds = Vec::new();
        for _ in 0..3 {
            ds.push(
                timeout(Duration::from_secs(5), inc.recv())
                    .await
                    .unwrap()
                    .unwrap(),
            );
        }
        // Acknowledge the last two only: nothing may be PUBACKed, because
        // the first is still unacknowledged (MQTT-4.6.0-2).
        ds[2].ack();
        ds[1].ack();
        let stats = sub.stats();
        timeout(Duration::from_secs(5), async {
            while stats.unacknowledged() != 3 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("three unacknowledged");
        assert!(stats.oldest_unacknowledged_ms() > 0);
        sub.disconnect().await;
        drop(inc);
        let (sub, mut inc) = Client::connect(o.clone()).await.unwrap();
        let (seen, _) = collect_distinct(&mut inc, 3, Duration::from_secs(5)).await;
        assert_eq!(seen.len(), 3, "{proto}: all three come again");
        // Now everything was acknowledged in order: nothing comes a third time.
        sub.disconnect().await;
        drop(inc);
        let (sub, mut inc) = Client::connect(o).await.unwrap();
        assert!(
            timeout(Duration::from_millis(700), inc.recv())
                .await
                .is_err(),
            "{proto}: acknowledged messages were delivered again"
        );
        sub.disconnect().await;
        publ.disconnect().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_session_gets_what_was_published_while_away() {
    let broker = Mosquitto::start();
    for proto in BOTH {
        let id = unique_id("persist");
        let topic = format!("p/{id}");
        let o = persistent(opts(&broker.url(), proto), &id);
        let (sub, inc) = Client::connect(o.clone()).await.unwrap();
        sub.subscribe(vec![Subscription::new(&topic, QoS::ExactlyOnce)])
            .await
            .unwrap();
        sub.disconnect().await;
        drop(inc);
        let (publ, _) = Client::connect(opts(&broker.url(), proto)).await.unwrap();
        let mut tokens = Vec::new();
        for i in 0..500 {
            let qos = if i % 2 == 0 {
                QoS::AtLeastOnce
            } else {
                QoS::ExactlyOnce
            };
            tokens.push(
                publ.publish(Message::new(&topic, format!("m{i:06}"), qos))
                    .await
                    .unwrap(),
            );
        }
        for t in tokens {
            t.await.unwrap();
        }
        // Subscribing again (as an application restarting does) must not wait
        // behind the queued messages flooding in, even with a tiny buffer.
        let mut o = o;
        o.incoming_buffer = 8;
        let (sub, mut inc) = Client::connect(o).await.unwrap();
        timeout(
            Duration::from_secs(5),
            sub.subscribe(vec![Subscription::new(&topic, QoS::ExactlyOnce)]),
        )
        .await
        .expect("SUBACK stuck behind queued messages")
        .unwrap();
        let (seen, total) = collect_distinct(&mut inc, 500, Duration::from_secs(10)).await;
        assert_eq!(seen, payloads(500));
        assert_eq!(total, 500, "{proto}: no duplicates without a fault");
        sub.disconnect().await;
        publ.disconnect().await;
    }
}

/// Publishes `n` messages, running `fault` after `at` of them, and checks
/// every one is confirmed and reaches a subscriber that is not affected.
async fn publish_through_fault(
    publ: &Client,
    topic: &str,
    n: usize,
    at: &[usize],
    mut fault: impl FnMut(usize),
) {
    let mut tokens = Vec::new();
    for i in 0..n {
        if at.contains(&i) {
            fault(i);
        }
        let qos = if i % 3 == 0 {
            QoS::ExactlyOnce
        } else {
            QoS::AtLeastOnce
        };
        let m = Message::new(topic, format!("m{i:06}"), qos);
        tokens.push(publ.publish(m).await.unwrap());
    }
    for (i, t) in tokens.into_iter().enumerate() {
        timeout(Duration::from_secs(30), t)
            .await
            .unwrap_or_else(|_| panic!("publish {i} never confirmed"))
            .unwrap_or_else(|e| panic!("publish {i}: {e}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_connections_lose_nothing() {
    let broker = Mosquitto::start();
    for proto in BOTH {
        let topic = format!("cut/{}", unique_id("c"));
        let (sub, mut inc) = Client::connect(opts(&broker.url(), proto)).await.unwrap();
        sub.subscribe(vec![Subscription::new(&topic, QoS::AtLeastOnce)])
            .await
            .unwrap();
        let proxy = CutProxy::new(broker.port);
        let (publ, _) =
            Client::connect(persistent(opts(&proxy.url(), proto), &unique_id("cutpub")))
                .await
                .unwrap();
        let n = 3000;
        publish_through_fault(&publ, &topic, n, &[700, 1500, 2200], |_| {
            proxy.cut();
        })
        .await;
        assert!(publ.stats().reconnects() >= 1);
        let (seen, _) = collect_distinct(&mut inc, n, Duration::from_secs(20)).await;
        assert_eq!(seen, payloads(n), "{proto}");
        publ.disconnect().await;
        sub.disconnect().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_stopped_and_killed_then_restarted_loses_nothing() {
    for (proto, kill) in [(Protocol::V311, false), (Protocol::V5, true)] {
        let mut broker = Mosquitto::with(MosquittoConfig {
            persistence: true,
            ..Default::default()
        });
        let topic = format!("restart/{}", unique_id("r"));
        let sub_id = unique_id("rsub");
        let sub_opts = persistent(opts(&broker.url(), proto), &sub_id);
        let (sub, mut inc) = Client::connect(sub_opts).await.unwrap();
        sub.subscribe(vec![Subscription::new(&topic, QoS::AtLeastOnce)])
            .await
            .unwrap();
        // Let the broker's autosave (every second) write the subscription.
        tokio::time::sleep(Duration::from_millis(2200)).await;
        let (publ, _) = Client::connect(persistent(opts(&broker.url(), proto), &unique_id("rpub")))
            .await
            .unwrap();
        let n = 2000;
        let mut tokens: Vec<Option<mqlink::PublishToken>> = Vec::new();
        let mut unconfirmed_at_fault = BTreeSet::new();
        for i in 0..n {
            if i == 1000 {
                // Stop taking confirmations for a moment: note what is not yet confirmed.
                if kill {
                    broker.kill()
                } else {
                    broker.stop()
                }
                // Let the driver finish handling acks that arrived before the fault.
                tokio::time::sleep(Duration::from_millis(300)).await;
                for (j, slot) in tokens.iter_mut().enumerate() {
                    match slot.as_mut().map(futures_poll_now) {
                        Some(None) => {
                            unconfirmed_at_fault.insert(Bytes::from(format!("m{j:06}")));
                        }
                        Some(Some(r)) => {
                            r.unwrap();
                            *slot = None;
                        }
                        None => {}
                    }
                }
                broker.restart();
            }
            let m = Message::new(&topic, format!("m{i:06}"), QoS::AtLeastOnce);
            tokens.push(Some(publ.publish(m).await.unwrap()));
        }
        for (i, t) in tokens
            .into_iter()
            .enumerate()
            .filter_map(|(i, t)| Some((i, t?)))
        {
            timeout(Duration::from_secs(30), t)
                .await
                .unwrap_or_else(|_| panic!("publish {i} never confirmed"))
                .unwrap();
        }
        // After a clean stop the broker kept everything; after a kill it may
        // lose what it had confirmed, but never what it had not.
        let want: BTreeSet<Bytes> = if kill {
            unconfirmed_at_fault
                .into_iter()
                .chain((1000..n).map(|i| Bytes::from(format!("m{i:06}"))))
                .collect()
        } else {
            payloads(n)
        };
        let mut seen = BTreeSet::new();
        let r = timeout(Duration::from_secs(30), async {
            while !want.is_subset(&seen) {
                let mut d = inc.recv().await.unwrap();
                d.ack();
                seen.insert(d.payload.clone());
            }
        })
        .await;
        assert!(
            r.is_ok(),
            "{proto} kill={kill}: missing {:?}",
            want.difference(&seen).take(5).collect::<Vec<_>>()
        );
        publ.disconnect().await;
        sub.disconnect().await;
    }
}

/// Polls a token once without waiting: `Some` if it already completed.
fn futures_poll_now(
    t: &mut mqlink::PublishToken,
) -> Option<Result<mqlink::Confirmed, PublishError>> {
    use std::future::Future;
    use std::task::{Context, Poll, Waker};
    let mut cx = Context::from_waker(Waker::noop());
    match std::pin::Pin::new(t).poll(&mut cx) {
        Poll::Ready(r) => Some(r),
        Poll::Pending => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_lost_by_broker_resubscribes_and_resends() {
    // No persistence: a killed broker forgets every session.
    let mut broker = Mosquitto::start();
    for proto in BOTH {
        let topic = format!("lost/{}", unique_id("l"));
        let (sub, mut inc) =
            Client::connect(persistent(opts(&broker.url(), proto), &unique_id("lsub")))
                .await
                .unwrap();
        sub.subscribe(vec![Subscription::new(&topic, QoS::AtLeastOnce)])
            .await
            .unwrap();
        broker.kill();
        broker.restart();
        let s = wait_status(&sub, |s| matches!(s, Status::Connected { .. })).await;
        assert_eq!(
            s,
            Status::Connected {
                broker: format!("mqtt://127.0.0.1:{}", broker.port),
                session_present: false
            }
        );
        // The subscription was made again: a new publish arrives. Retry
        // until the SUBSCRIBE is through (it races the publisher's connect).
        let (publ, _) = Client::connect(opts(&broker.url(), proto)).await.unwrap();
        let got = timeout(Duration::from_secs(10), async {
            let mut i = 0;
            loop {
                publ.publish(Message::new(&topic, format!("after-{i}"), QoS::AtLeastOnce))
                    .await
                    .unwrap()
                    .await
                    .unwrap();
                i += 1;
                if let Ok(Some(mut d)) = timeout(Duration::from_millis(200), inc.recv()).await {
                    d.ack();
                    return d;
                }
            }
        })
        .await
        .expect("no message after the broker lost the session");
        assert!(got.payload.starts_with(b"after-"));
        publ.disconnect().await;
        sub.disconnect().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos2_with_persistent_session_has_no_duplicates() {
    let broker = Mosquitto::start();
    let id = unique_id("q2");
    let topic = format!("q2/{id}");
    let o = persistent(opts(&broker.url(), Protocol::V5), &id);
    let (sub, mut inc) = Client::connect(o.clone()).await.unwrap();
    sub.subscribe(vec![Subscription::new(&topic, QoS::ExactlyOnce)])
        .await
        .unwrap();
    let (publ, _) = Client::connect(opts(&broker.url(), Protocol::V5))
        .await
        .unwrap();
    let mut tokens = Vec::new();
    for i in 0..1000 {
        tokens.push(
            publ.publish(Message::new(&topic, format!("m{i:06}"), QoS::ExactlyOnce))
                .await
                .unwrap(),
        );
    }
    // Take half, then leave and come back: the rest arrive, nothing twice.
    let (first, n1) = collect_distinct(&mut inc, 500, Duration::from_secs(10)).await;
    sub.disconnect().await;
    drop(inc);
    for t in tokens {
        t.await.unwrap();
    }
    let (sub, mut inc) = Client::connect(o).await.unwrap();
    let (second, n2) = collect_distinct(&mut inc, 500, Duration::from_secs(10)).await;
    if let Ok(extra) = timeout(Duration::from_millis(500), inc.recv()).await {
        panic!("extra message: {extra:?}");
    }
    assert_eq!(n1 + n2, 1000, "a QoS 2 message came twice");
    assert!(first.is_disjoint(&second));
    sub.disconnect().await;
    publ.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_keeps_its_connection() {
    let broker = Mosquitto::start();
    let mut o = opts(&broker.url(), Protocol::V311);
    o.keep_alive = Duration::from_secs(1);
    o.incoming_buffer = 16;
    let topic = format!("slow/{}", unique_id("s"));
    let (sub, mut inc) = Client::connect(o).await.unwrap();
    sub.subscribe(vec![Subscription::new(&topic, QoS::AtLeastOnce)])
        .await
        .unwrap();
    let (publ, _) = Client::connect(opts(&broker.url(), Protocol::V311))
        .await
        .unwrap();
    let n = 3000;
    for i in 0..n {
        let qos = if i % 2 == 0 {
            QoS::AtMostOnce
        } else {
            QoS::AtLeastOnce
        };
        // Not awaiting the confirmations: the flood is what matters here.
        drop(
            publ.publish(Message::new(&topic, format!("m{i:06}"), qos))
                .await
                .unwrap(),
        );
    }
    // The application does not read for 4 keep-alive intervals (the broker
    // drops a client silent for 1.5).
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(matches!(*sub.status().borrow(), Status::Connected { .. }));
    let (seen, _) = collect_distinct(&mut inc, n, Duration::from_secs(20)).await;
    assert_eq!(seen.len(), n);
    assert_eq!(sub.stats().reconnects(), 0);
    assert!(
        !broker.log().contains("exceeded timeout"),
        "{}",
        broker.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_and_refused_filter_are_typed_errors() {
    let broker = Mosquitto::with(MosquittoConfig {
        users: vec![("alice".into(), "right-pw".into())],
        ..Default::default()
    });
    for proto in BOTH {
        let mut o = opts(&broker.url(), proto);
        o.username = Some("alice".into());
        o.password = Some("wrong-pw".into());
        let e = Client::connect(o.clone()).await.err().expect("must fail");
        let Error::Connect(ConnectError::Refused { refusal, .. }) = &e else {
            panic!("{e:?}")
        };
        assert!(
            matches!(refusal, Refusal::BadCredentials | Refusal::NotAuthorized),
            "{proto}: {e}"
        );
        assert!(!format!("{e} {e:?}").contains("wrong-pw"));
        // What `fn main() -> Result<(), Box<dyn Error>>` prints is a sentence.
        assert_eq!(format!("{e:?}"), e.to_string());
        assert!(!format!("{e:?}").contains("Refused {"), "{e:?}");
        o.password = Some("right-pw".into());
        let (c, _) = Client::connect(o).await.unwrap();
        c.disconnect().await;
        // Mosquitto grants every well-formed filter, so a minimal broker made
        // of our codec refuses the second filter of a SUBSCRIBE.
        let port = refusing_broker(proto).await;
        let (c, _) = Client::connect(opts(&format!("mqtt://127.0.0.1:{port}"), proto))
            .await
            .unwrap();
        let e = c
            .subscribe(vec![
                Subscription::new("allowed/x", QoS::AtLeastOnce),
                Subscription::new("forbidden/#", QoS::AtLeastOnce),
            ])
            .await
            .unwrap_err();
        let SubscribeError::Refused { filter, code } = &e else {
            panic!("{e:?}")
        };
        assert_eq!(filter, "forbidden/#", "{proto}");
        assert!(*code >= 0x80);
        assert!(e.to_string().contains("\"forbidden/#\""), "{e}");
        c.disconnect().await;
    }
}

/// Accepts one client, grants the first filter of its SUBSCRIBE and refuses
/// the rest (0x80 on 3.1.1, 0x87 "not authorized" on 5).
async fn refusing_broker(proto: Protocol) -> u16 {
    use mqlink::codec::{decode, encode, ConnAck, Packet, SubAck};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        let mut buf = bytes::BytesMut::new();
        loop {
            while let Some(p) = decode(&mut buf, proto, 1 << 20).unwrap() {
                let reply = match p {
                    Packet::Connect(_) => Packet::ConnAck(ConnAck::default()),
                    Packet::Subscribe(s) => Packet::SubAck(SubAck {
                        pkid: s.pkid,
                        codes: (0..s.filters.len())
                            .map(|i| match (i, proto) {
                                (0, _) => 1,
                                (_, Protocol::V5) => 0x87,
                                _ => 0x80,
                            })
                            .collect(),
                        reason_string: None,
                    }),
                    Packet::PingReq => Packet::PingResp,
                    _ => continue,
                };
                let mut out = bytes::BytesMut::new();
                encode(&reply, proto, &mut out);
                sock.write_all(&out).await.unwrap();
            }
            if sock.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                return;
            }
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_topics_fail_before_sending() {
    let broker = Mosquitto::start();
    let (c, _) = Client::connect(opts(&broker.url(), Protocol::V5))
        .await
        .unwrap();
    let e = c
        .publish(Message::new("a/+/b", "x", QoS::AtLeastOnce))
        .await
        .err()
        .unwrap();
    assert!(matches!(e, PublishError::InvalidTopic(_)) && e.to_string().contains("\"a/+/b\""));
    let e = c
        .subscribe(vec![Subscription::new("a/#/b", QoS::AtLeastOnce)])
        .await
        .unwrap_err();
    assert!(matches!(e, SubscribeError::InvalidFilter(_)) && e.to_string().contains("\"a/#/b\""));
    // Over the maximum packet size: refused before it is sent.
    let mut o = opts(&broker.url(), Protocol::V311);
    o.max_packet_size = 1024;
    let (small, _) = Client::connect(o).await.unwrap();
    let e = small
        .publish(Message::new("big", vec![0u8; 2000], QoS::AtLeastOnce))
        .await
        .unwrap()
        .await
        .unwrap_err();
    assert!(matches!(e, PublishError::TooLarge { max: 1024, .. }), "{e}");
    c.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_properties_travel() {
    let broker = Mosquitto::start();
    let topic = format!("props/{}", unique_id("p"));
    let (sub, mut inc) = Client::connect(opts(&broker.url(), Protocol::V5))
        .await
        .unwrap();
    sub.subscribe(vec![Subscription::new(&topic, QoS::AtLeastOnce)])
        .await
        .unwrap();
    let (publ, _) = Client::connect(opts(&broker.url(), Protocol::V5))
        .await
        .unwrap();
    let props = PublishProperties {
        content_type: Some("application/json".into()),
        message_expiry_interval: Some(300),
        response_topic: Some("reply/here".into()),
        correlation_data: Some(Bytes::from_static(b"\x01\x02")),
        user_properties: vec![("source".into(), "test".into())],
        payload_format_indicator: Some(1),
        ..Default::default()
    };
    publ.publish(Message::new(&topic, "{}", QoS::AtLeastOnce).properties(props.clone()))
        .await
        .unwrap()
        .await
        .unwrap();
    let mut d = timeout(Duration::from_secs(5), inc.recv())
        .await
        .unwrap()
        .unwrap();
    d.ack();
    let got = d.properties.expect("properties");
    assert_eq!(got.content_type, props.content_type);
    assert_eq!(got.response_topic, props.response_topic);
    assert_eq!(got.correlation_data, props.correlation_data);
    assert_eq!(got.user_properties, props.user_properties);
    assert!(got.message_expiry_interval.is_some_and(|e| e <= 300));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_will_is_published_when_the_connection_dies() {
    let broker = Mosquitto::start();
    let will_topic = format!("will/{}", unique_id("w"));
    let (sub, mut inc) = Client::connect(opts(&broker.url(), Protocol::V311))
        .await
        .unwrap();
    sub.subscribe(vec![Subscription::new(&will_topic, QoS::AtLeastOnce)])
        .await
        .unwrap();
    let proxy = CutProxy::new(broker.port);
    let mut o = opts(&proxy.url(), Protocol::V311);
    o.last_will = Some(LastWill {
        topic: will_topic.clone(),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtLeastOnce,
        retain: false,
    });
    let (_c, _i) = Client::connect(o).await.unwrap();
    proxy.cut();
    let mut d = timeout(Duration::from_secs(5), inc.recv())
        .await
        .unwrap()
        .unwrap();
    d.ack();
    assert_eq!(&d.payload[..], b"gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_mutual_tls_and_untrusted_certificates() {
    let broker = Mosquitto::with(MosquittoConfig {
        tls: true,
        require_certificate: true,
        ..Default::default()
    });
    let certs = broker.certs.as_ref().unwrap();
    let topic = format!("tls/{}", unique_id("t"));
    let mut o = opts(&broker.tls_url(), Protocol::V5);
    o.tls = TlsOptions {
        ca_file: Some(certs.ca.clone()),
        client_cert: Some(certs.client_cert.clone()),
        client_key: Some(certs.client_key.clone()),
        ..Default::default()
    };
    let (c, mut inc) = Client::connect(o.clone()).await.unwrap();
    c.subscribe(vec![Subscription::new(&topic, QoS::AtLeastOnce)])
        .await
        .unwrap();
    c.publish(Message::new(&topic, "secure", QoS::AtLeastOnce))
        .await
        .unwrap()
        .await
        .unwrap();
    let mut d = timeout(Duration::from_secs(5), inc.recv())
        .await
        .unwrap()
        .unwrap();
    d.ack();
    assert_eq!(&d.payload[..], b"secure");
    c.disconnect().await;

    // Without the client certificate the broker refuses it (a TLS 1.3
    // alert after the handshake): fatal at once, naming the user's key.
    let mut no_cert = o.clone();
    no_cert.tls.client_cert = None;
    no_cert.tls.client_key = None;
    no_cert.tls.keys = TlsKeys::PIPELINE;
    let e = Client::connect(no_cert).await.err().unwrap();
    let Error::Connect(ce @ ConnectError::Tls { reason, .. }) = &e else {
        panic!("{e:?}")
    };
    assert!(!ce.is_retryable());
    assert!(
        reason.contains("requires a client certificate") && reason.contains("tls_client_cert"),
        "{reason}"
    );

    // A CA the broker's certificate is not signed by: refused, not retried.
    let other = testkit::Certs::generate(&broker.dir.path().join("other"), "some other CA");
    let mut untrusted = o.clone();
    untrusted.tls.ca_file = Some(other.ca.clone());
    let e = Client::connect(untrusted).await.err().unwrap();
    let Error::Connect(ce @ ConnectError::Tls { reason, .. }) = &e else {
        panic!("{e:?}")
    };
    assert!(!ce.is_retryable());
    assert!(reason.to_lowercase().contains("certificate"), "{reason}");

    // The explicit opt-out accepts it.
    let mut insecure = o.clone();
    insecure.tls.ca_file = Some(other.ca);
    insecure.tls.insecure = true;
    let (c, _) = Client::connect(insecure).await.unwrap();
    c.disconnect().await;
}

/// TLS made exactly by the mosquitto-tls man page recipe (X.509 v1
/// certificates): a v1 client certificate works for mutual TLS, as with
/// mosquitto_pub; a v1 server certificate gives an error naming the cause
/// and the fix, and `insecure` connects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_made_by_the_mosquitto_tls_recipe() {
    let dir = testkit::TempDir::new().unwrap();
    let certs = testkit::Certs::mosquitto_tls_recipe(dir.path());
    let (good, v1) = (testkit::free_port(), testkit::free_port());
    let listener = |port: u16, cert: &str| {
        vec![
            format!("listener {port} 127.0.0.1"),
            format!("cafile {}", certs.ca.display()),
            format!("certfile {}", certs.dir.join(cert).display()),
            format!("keyfile {}", certs.server_key.display()),
            "require_certificate true".to_string(),
        ]
    };
    let mut extra = listener(good, "server_san.crt");
    extra.extend(listener(v1, "server.crt"));
    let _broker = Mosquitto::with(MosquittoConfig {
        extra,
        ..Default::default()
    });
    let tls = TlsOptions {
        ca_file: Some(certs.ca.clone()),
        client_cert: Some(certs.client_cert.clone()),
        client_key: Some(certs.client_key.clone()),
        ..Default::default()
    };
    let mut o = opts(&format!("mqtts://127.0.0.1:{good}"), Protocol::V311);
    o.tls = tls.clone();
    let (c, _) = Client::connect(o)
        .await
        .expect("a v1 client certificate, as mosquitto_pub takes it");
    c.disconnect().await;

    let mut o = opts(&format!("mqtts://127.0.0.1:{v1}"), Protocol::V311);
    o.tls = TlsOptions {
        keys: TlsKeys::CLI,
        ..tls
    };
    let e = Client::connect(o.clone()).await.err().unwrap().to_string();
    assert!(
        e.contains("X.509 v1") && e.contains("subjectAltName") && e.contains("--insecure"),
        "{e}"
    );
    o.tls.insecure = true;
    let (c, _) = Client::connect(o).await.unwrap();
    c.disconnect().await;
}

/// The TLS mistakes users make get the cause and the fix, in the keys
/// they wrote: TLS spoken to a plain port, a self-signed (CA) certificate
/// as the broker's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_mistakes_get_the_cause_and_the_fix() {
    let dir = testkit::TempDir::new().unwrap();
    let (crt, key) = (dir.path().join("self.crt"), dir.path().join("self.key"));
    // `req -x509` makes a CA certificate (basicConstraints CA:TRUE).
    let ok = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args([
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&crt)
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let tls_port = testkit::free_port();
    let broker = Mosquitto::with(MosquittoConfig {
        extra: vec![
            format!("listener {tls_port} 127.0.0.1"),
            format!("certfile {}", crt.display()),
            format!("keyfile {}", key.display()),
        ],
        ..Default::default()
    });
    let mut o = opts(&format!("mqtts://127.0.0.1:{tls_port}"), Protocol::V311);
    o.tls.ca_file = Some(crt);
    o.tls.keys = TlsKeys::CYBUS;
    let e = Client::connect(o.clone()).await.err().unwrap().to_string();
    assert!(
        e.contains("presents a CA certificate") && e.contains("caCert"),
        "{e}"
    );
    assert!(e.contains("trustAllCertificates: true"), "{e}");
    o.tls.insecure = true;
    let (c, _) = Client::connect(o).await.unwrap();
    c.disconnect().await;

    let mut plain = opts(
        &format!("mqtts://127.0.0.1:{}", broker.port),
        Protocol::V311,
    );
    plain.tls.keys = TlsKeys::PYTHON;
    let e = Client::connect(plain).await.err().unwrap().to_string();
    assert!(
        e.contains("does not seem to speak TLS") && e.contains("tls_enabled=False"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_transport() {
    let broker = Mosquitto::with(MosquittoConfig {
        websockets: true,
        ..Default::default()
    });
    let topic = format!("ws/{}", unique_id("w"));
    let (c, mut inc) = Client::connect(opts(&broker.ws_url(), Protocol::V311))
        .await
        .unwrap();
    c.subscribe(vec![Subscription::new(&topic, QoS::AtLeastOnce)])
        .await
        .unwrap();
    let mut tokens = Vec::new();
    for i in 0..300 {
        tokens.push(
            c.publish(Message::new(&topic, format!("m{i:06}"), QoS::AtLeastOnce))
                .await
                .unwrap(),
        );
    }
    for t in tokens {
        t.await.unwrap();
    }
    let (seen, _) = collect_distinct(&mut inc, 300, Duration::from_secs(10)).await;
    assert_eq!(seen, payloads(300));
    c.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_at_start_then_publishes_flow_and_failover_works() {
    let dead = format!("mqtt://127.0.0.1:{}", testkit::free_port());
    // connect(): the first failure is returned, like mosquitto_pub.
    let e = Client::connect(opts(&dead, Protocol::V311))
        .await
        .err()
        .unwrap();
    assert!(matches!(e, Error::Connect(ConnectError::Io { .. })), "{e}");
    // Failover: a dead broker first, a live one second.
    let broker = Mosquitto::start();
    let mut o = opts(&dead, Protocol::V311);
    o.brokers.push(broker.url().parse().unwrap());
    let (c, _) = Client::start(o).unwrap();
    c.publish(Message::new("failover/x", "y", QoS::AtLeastOnce))
        .await
        .unwrap()
        .await
        .unwrap();
    // Gives up after max_attempts.
    let mut o = opts(&dead, Protocol::V311);
    o.reconnect.max_attempts = 2;
    let (c, _) = Client::start(o).unwrap();
    let t = c
        .publish(Message::new("x", "y", QoS::AtLeastOnce))
        .await
        .unwrap();
    let e = timeout(Duration::from_secs(10), t)
        .await
        .unwrap()
        .unwrap_err();
    assert!(e.to_string().contains("gave up after 2"), "{e}");
    assert!(matches!(
        *c.status().borrow(),
        Status::Stopped { error: Some(_) }
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_subscription_options_reach_the_broker() {
    let broker = Mosquitto::start();
    let topic = format!("opts/{}", unique_id("o"));
    let (c, mut inc) = Client::connect(opts(&broker.url(), Protocol::V5))
        .await
        .unwrap();
    let mut no_local = Subscription::new(&topic, QoS::AtLeastOnce);
    no_local.options.no_local = true;
    c.subscribe(vec![no_local]).await.unwrap();
    // Our own publish does not come back; another client's does.
    c.publish(Message::new(&topic, "own", QoS::AtLeastOnce))
        .await
        .unwrap()
        .await
        .unwrap();
    let (other, _) = Client::connect(opts(&broker.url(), Protocol::V5))
        .await
        .unwrap();
    other
        .publish(Message::new(&topic, "other", QoS::AtLeastOnce))
        .await
        .unwrap()
        .await
        .unwrap();
    let mut d = timeout(Duration::from_secs(5), inc.recv())
        .await
        .unwrap()
        .unwrap();
    d.ack();
    assert_eq!(&d.payload[..], b"other");
    // retain_handling = 2: no retained message on subscribe.
    let kept = format!("{topic}/kept");
    other
        .publish(Message::new(&kept, "r", QoS::AtLeastOnce).retain(true))
        .await
        .unwrap()
        .await
        .unwrap();
    let mut rh = Subscription::new(&kept, QoS::AtLeastOnce);
    rh.options.retain_handling = 2;
    c.subscribe(vec![rh]).await.unwrap();
    assert!(timeout(Duration::from_millis(500), inc.recv())
        .await
        .is_err());
}

/// MQTT 3.1.1 against a Mosquitto without an in-flight cap: on reconnect it
/// sends the whole queue of a persistent session before the SUBACK. The
/// library source drains all 200,000 (a bounded overflow behind a SUBACK
/// the application waits for used to hang here from ~71,000).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_session_drains_200k_queued_without_inflight_cap() {
    use mqlink::source::MqttSource;
    let broker = Mosquitto::with(MosquittoConfig {
        extra: vec!["max_inflight_messages 0".into()],
        ..Default::default()
    });
    let id = unique_id("drain");
    let topic = format!("drain/{id}");
    let o = persistent(opts(&broker.url(), Protocol::V311), &id);
    let (c, _inc) = Client::connect(o.clone()).await.unwrap();
    c.subscribe(vec![Subscription::new(&topic, QoS::AtLeastOnce)])
        .await
        .unwrap();
    c.disconnect().await;
    let n = 200_000;
    let (publ, _) = Client::connect(opts(&broker.url(), Protocol::V311))
        .await
        .unwrap();
    let mut tokens = Vec::with_capacity(n);
    for i in 0..n {
        let m = Message::new(&topic, format!("{i}"), QoS::AtLeastOnce);
        tokens.push(publ.publish(m).await.unwrap());
    }
    for t in tokens {
        t.await.unwrap();
    }
    publ.disconnect().await;

    let started = std::time::Instant::now();
    let mut source = timeout(
        Duration::from_secs(20),
        MqttSource::builder()
            .connection(o)
            .topic(&topic, QoS::AtLeastOnce)
            .batch(1000, Duration::ZERO)
            .start(),
    )
    .await
    .expect("start hung behind the queued messages")
    .unwrap();
    let mut seen = vec![false; n];
    let mut distinct = 0;
    let r = timeout(Duration::from_secs(120), async {
        while distinct < n {
            let batch = source.next_batch().await;
            assert!(!batch.is_empty(), "the source ended");
            for mut rec in batch {
                let i: usize = std::str::from_utf8(&rec.payload).unwrap().parse().unwrap();
                if !std::mem::replace(&mut seen[i], true) {
                    distinct += 1;
                }
                rec.ack();
            }
        }
    })
    .await;
    assert!(r.is_ok(), "only {distinct} of {n} drained");
    eprintln!("drained {n} in {:?}", started.elapsed());
    source.close().await;
}

/// A Mosquitto that takes QoS 1 at most, no retained messages and packets
/// of 2,000 bytes at most (`max_qos 1`, `retain_available false`,
/// `max_packet_size 2000`; `message_size_limit 1500`). MQTT 5 says so in
/// CONNACK, so each such publish fails alone at once, naming the limit;
/// on 3.1.1 the broker just disconnects, and the publish fails after three
/// drops in a row instead of being resent forever. Publishes behind it
/// are confirmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_the_broker_cannot_take_fail_alone() {
    let broker = Mosquitto::with(MosquittoConfig {
        extra: vec![
            "max_qos 1".into(),
            "retain_available false".into(),
            "max_packet_size 2000".into(),
            "message_size_limit 1500".into(),
        ],
        ..Default::default()
    });
    let topic = format!("limits/{}", unique_id("l"));
    for proto in BOTH {
        let (c, _) = Client::connect(opts(&broker.url(), proto)).await.unwrap();
        let attempt = |m: Message| {
            let c = c.clone();
            async move {
                timeout(Duration::from_secs(20), c.publish(m).await.unwrap())
                    .await
                    .expect("neither confirmed nor failed: a reconnect loop")
            }
        };
        let e = attempt(Message::new(&topic, "q2", QoS::ExactlyOnce))
            .await
            .unwrap_err();
        let e2 = attempt(Message::new(&topic, "r", QoS::AtLeastOnce).retain(true))
            .await
            .unwrap_err();
        let e3 = attempt(Message::new(&topic, vec![b'x'; 5000], QoS::AtLeastOnce))
            .await
            .unwrap_err();
        attempt(Message::new(&topic, "fine", QoS::AtLeastOnce))
            .await
            .unwrap();
        let reconnects = c.stats().reconnects();
        match proto {
            Protocol::V5 => {
                assert!(
                    matches!(e, PublishError::QosNotSupported { qos: 2, max: 1, .. }),
                    "{e}"
                );
                assert!(e.to_string().contains("maximum QoS 1"), "{e}");
                assert!(
                    matches!(e2, PublishError::RetainNotSupported { .. }),
                    "{e2}"
                );
                assert!(
                    matches!(e3, PublishError::TooLarge { max: 2000, .. }),
                    "{e3}"
                );
                assert!(e3.to_string().contains("2000"), "{e3}");
                // Over message_size_limit: the broker's PUBACK refuses it, once.
                let e4 = attempt(Message::new(&topic, vec![b'x'; 1800], QoS::AtLeastOnce))
                    .await
                    .unwrap_err();
                assert!(matches!(e4, PublishError::Rejected { .. }), "{e4}");
                assert_eq!(
                    reconnects, 0,
                    "MQTT 5 needs no reconnect to learn the limits"
                );
                // Downgrading is an option.
                let mut o = opts(&broker.url(), proto);
                o.downgrade_qos = true;
                let (d, _) = Client::connect(o).await.unwrap();
                d.publish(Message::new(&topic, "down", QoS::ExactlyOnce))
                    .await
                    .unwrap()
                    .await
                    .unwrap();
                d.disconnect().await;
            }
            Protocol::V31 | Protocol::V311 => {
                for e in [&e, &e2, &e3] {
                    assert!(
                        matches!(e, PublishError::DroppedByBroker { times: 3, .. }),
                        "{e}"
                    );
                }
                assert!(
                    matches!(e3, PublishError::DroppedByBroker { size, .. } if size > 5000),
                    "{e3}"
                );
                assert_eq!(reconnects, 9, "three drops for each of three publishes");
            }
        }
        c.disconnect().await;
    }
}

/// Values longer than MQTT's 65,535-byte fields: a publish with a 70 KB
/// user property fails alone (the encoder used to wrap the length and the
/// broker disconnected in a loop); a 70 KB will payload is an options error
/// at connect (it used to be "closed the connection before CONNACK").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlong_fields_fail_alone_with_a_clear_error() {
    let broker = Mosquitto::start();
    let topic = format!("long/{}", unique_id("l"));
    let (c, _) = Client::connect(opts(&broker.url(), Protocol::V5))
        .await
        .unwrap();
    let props = PublishProperties {
        user_properties: vec![("k".into(), "v".repeat(70_000))],
        ..Default::default()
    };
    let e = c
        .publish(Message::new(&topic, "x", QoS::AtLeastOnce).properties(props))
        .await
        .err()
        .expect("a 70 KB user property must be refused");
    assert!(
        e.to_string().contains("user property value is 70000 bytes"),
        "{e}"
    );
    c.publish(Message::new(&topic, "fine", QoS::AtLeastOnce))
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(c.stats().reconnects(), 0);
    c.disconnect().await;

    let mut o = opts(&broker.url(), Protocol::V311);
    o.last_will = Some(LastWill {
        topic: topic.clone(),
        payload: vec![b'w'; 70_000].into(),
        qos: QoS::AtLeastOnce,
        retain: false,
    });
    let e = Client::connect(o).await.err().expect("must be refused");
    assert!(matches!(e, Error::Options(_)), "{e:?}");
    assert!(
        e.to_string().contains("last will payload is 70000 bytes"),
        "{e}"
    );
}
