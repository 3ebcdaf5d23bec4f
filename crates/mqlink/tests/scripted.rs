//! The session against brokers scripted packet by packet from the
//! project's codec: orders and resends that real brokers produce only
//! under load or faults (deliveries before SUBACK, a SUBACK held until
//! PUBACK, QoS 2 resends before PUBREL, PUBCOMP 0x92 during recovery).

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use mqlink::codec::{decode, encode, Ack, AckKind, ConnAck, Packet, Publish, SubAck};
use mqlink::source::MqttSource;
use mqlink::{Backoff, Client, ConnectOptions, Message, Protocol, QoS, Status};
use testkit::unique_id;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

const BOTH: [Protocol; 2] = [Protocol::V311, Protocol::V5];

/// One client connection, seen from the broker's side.
struct Peer {
    sock: TcpStream,
    buf: BytesMut,
    proto: Protocol,
}

impl Peer {
    /// Accepts a client, reads its CONNECT and answers CONNACK.
    async fn accept(l: &TcpListener, proto: Protocol, session_present: bool) -> Peer {
        let (sock, _) = timeout(Duration::from_secs(10), l.accept())
            .await
            .expect("no client connected")
            .unwrap();
        let mut p = Peer {
            sock,
            buf: BytesMut::new(),
            proto,
        };
        match p.recv().await {
            Packet::Connect(_) => {}
            other => panic!("expected CONNECT, got {other:?}"),
        }
        p.send(Packet::ConnAck(ConnAck {
            session_present,
            ..Default::default()
        }))
        .await;
        p
    }

    /// The next packet other than PINGREQ (answered here).
    async fn recv(&mut self) -> Packet {
        loop {
            while let Some(p) = decode(&mut self.buf, self.proto, 1 << 20).unwrap() {
                if p == Packet::PingReq {
                    self.send(Packet::PingResp).await;
                    continue;
                }
                return p;
            }
            let n = timeout(Duration::from_secs(10), self.sock.read_buf(&mut self.buf))
                .await
                .expect("the client sent nothing for 10 s")
                .unwrap();
            assert!(n > 0, "the client closed the connection");
        }
    }

    /// The next packet, or `None` once the client closed the connection.
    async fn recv_or_eof(&mut self) -> Option<Packet> {
        loop {
            if let Some(p) = decode(&mut self.buf, self.proto, 1 << 20).unwrap() {
                return Some(p);
            }
            let n = timeout(Duration::from_secs(10), self.sock.read_buf(&mut self.buf))
                .await
                .expect("the client sent nothing for 10 s")
                .unwrap();
            if n == 0 {
                return None;
            }
        }
    }

    async fn send(&mut self, p: Packet) {
        let mut out = BytesMut::new();
        encode(&p, self.proto, &mut out);
        self.sock.write_all(&out).await.unwrap();
    }

    async fn expect_ack(&mut self, kind: AckKind, pkid: u16) {
        match self.recv().await {
            Packet::Ack(a) if a.kind == kind && a.pkid == pkid => {}
            other => panic!("expected {kind:?} {pkid}, got {other:?}"),
        }
    }
}

fn publish(topic: &str, payload: &'static str, qos: QoS, pkid: u16, dup: bool) -> Packet {
    Packet::Publish(Publish {
        topic: topic.into(),
        payload: Bytes::from_static(payload.as_bytes()),
        qos,
        retain: false,
        dup,
        pkid,
        properties: None,
    })
}

fn ack(kind: AckKind, pkid: u16, reason: u8) -> Packet {
    Packet::Ack(Ack {
        kind,
        pkid,
        reason,
        reason_string: None,
    })
}

async fn bind() -> (TcpListener, String) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("mqtt://127.0.0.1:{}", l.local_addr().unwrap().port());
    (l, url)
}

fn opts(url: &str, proto: Protocol, clean: bool) -> ConnectOptions {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let mut o = ConnectOptions::new(url).unwrap();
    o.protocol = proto;
    o.client_id = Some(unique_id("s"));
    o.clean_session = clean;
    o.keep_alive = Duration::from_secs(5);
    o.connect_timeout = Duration::from_secs(5);
    o.reconnect = Backoff {
        initial_interval: Duration::from_millis(20),
        multiplier: 1.0,
        max_interval: Duration::from_millis(20),
        max_attempts: 0,
        jitter: 0.0,
    };
    o
}

/// A resumed session's queued message comes before the SUBACK, and the
/// broker holds the SUBACK until that message is acknowledged (rumqttd,
/// amqtt do this): the source must start and yield it at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_before_a_held_suback_is_delivered_within_a_second() {
    for proto in BOTH {
        let (l, url) = bind().await;
        let broker = tokio::spawn(async move {
            let mut c = Peer::accept(&l, proto, true).await;
            let Packet::Subscribe(s) = c.recv().await else {
                panic!("expected SUBSCRIBE")
            };
            c.send(publish("q/1", "queued", QoS::AtLeastOnce, 1, false))
                .await;
            c.expect_ack(AckKind::PubAck, 1).await;
            c.send(Packet::SubAck(SubAck {
                pkid: s.pkid,
                codes: vec![1],
                reason_string: None,
            }))
            .await;
        });
        let started = Instant::now();
        let mut source = timeout(
            Duration::from_secs(1),
            MqttSource::builder()
                .connection(opts(&url, proto, false))
                .topic("q/#", QoS::AtLeastOnce)
                .start(),
        )
        .await
        .expect("start waited for a SUBACK the broker holds back")
        .unwrap();
        let mut r = timeout(Duration::from_secs(1), source.next())
            .await
            .expect("the queued message was not delivered")
            .unwrap();
        assert_eq!(&r.payload[..], b"queued");
        r.ack();
        timeout(Duration::from_secs(1), broker)
            .await
            .expect("the PUBACK did not reach the broker")
            .unwrap();
        assert!(started.elapsed() < Duration::from_secs(1), "{proto}");
        assert!(matches!(
            *source.clients()[0].status().borrow(),
            Status::Connected { .. } | Status::Reconnecting { .. }
        ));
        drop(source);
    }
}

/// [MQTT-4.3.3-10]: a QoS 2 PUBLISH resent before PUBREL is acknowledged
/// with PUBREC and not delivered again, also after a reconnect of the same
/// session; PUBREL frees the id; a lost session forgets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos2_resent_before_pubrel_is_delivered_once_across_reconnects() {
    for proto in BOTH {
        let (l, url) = bind().await;
        let q2 = QoS::ExactlyOnce;
        let broker = tokio::spawn(async move {
            let mut c = Peer::accept(&l, proto, false).await;
            c.send(publish("t", "a", q2, 7, false)).await;
            c.expect_ack(AckKind::PubRec, 7).await;
            c.send(publish("t", "a", q2, 7, true)).await;
            c.expect_ack(AckKind::PubRec, 7).await;
            drop(c);
            // The same session: the resend of "a" is still a duplicate.
            let mut c = Peer::accept(&l, proto, true).await;
            c.send(publish("t", "a", q2, 7, true)).await;
            c.expect_ack(AckKind::PubRec, 7).await;
            c.send(ack(AckKind::PubRel, 7, 0)).await;
            c.expect_ack(AckKind::PubComp, 7).await;
            // Released: id 7 carries a new message.
            c.send(publish("t", "b", q2, 7, false)).await;
            c.expect_ack(AckKind::PubRec, 7).await;
            drop(c);
            // The session is gone: id 7 is new again.
            let mut c = Peer::accept(&l, proto, false).await;
            c.send(publish("t", "c", q2, 7, false)).await;
            c.expect_ack(AckKind::PubRec, 7).await;
            c
        });
        let (client, mut inc) = Client::connect(opts(&url, proto, false)).await.unwrap();
        let mut got = Vec::new();
        while got.len() < 3 {
            let mut d = timeout(Duration::from_secs(5), inc.recv())
                .await
                .unwrap_or_else(|_| panic!("{proto}: only {got:?} arrived"))
                .unwrap();
            d.ack();
            got.push(String::from_utf8(d.payload.to_vec()).unwrap());
        }
        let c = timeout(Duration::from_secs(5), broker)
            .await
            .unwrap()
            .unwrap();
        if let Ok(Some(d)) = timeout(Duration::from_millis(300), inc.recv()).await {
            got.push(String::from_utf8(d.payload.to_vec()).unwrap());
        }
        assert_eq!(got, ["a", "b", "c"], "{proto}");
        drop(c);
        drop(client);
    }
}

/// QoS 2 is confirmed by PUBCOMP only: a publish PUBREC'd by a broker that
/// then loses the session is sent again (Mosquitto forwards a QoS 2
/// message only on PUBREL, so it would be gone); and PUBCOMP 0x92 for a
/// PUBREL resent during recovery is a confirmation, not a refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos2_is_confirmed_by_pubcomp_and_resent_after_session_loss() {
    for proto in BOTH {
        let (l, url) = bind().await;
        let broker = tokio::spawn(async move {
            let recv_publish = |p: Packet| match p {
                Packet::Publish(p) => p,
                other => panic!("expected PUBLISH, got {other:?}"),
            };
            let mut c = Peer::accept(&l, proto, false).await;
            let x = recv_publish(c.recv().await);
            c.send(ack(AckKind::PubRec, x.pkid, 0)).await;
            c.expect_ack(AckKind::PubRel, x.pkid).await;
            drop(c); // no PUBCOMP; the session is lost with the connection
            let mut c = Peer::accept(&l, proto, false).await;
            let again = recv_publish(c.recv().await);
            assert_eq!(
                &again.payload[..],
                b"x",
                "not sent again after the session was lost"
            );
            c.send(ack(AckKind::PubRec, again.pkid, 0)).await;
            c.expect_ack(AckKind::PubRel, again.pkid).await;
            c.send(ack(AckKind::PubComp, again.pkid, 0)).await;
            let y = recv_publish(c.recv().await);
            c.send(ack(AckKind::PubRec, y.pkid, 0)).await;
            c.expect_ack(AckKind::PubRel, y.pkid).await;
            drop(c);
            // Session kept: PUBREL again, answered "packet identifier not found".
            let mut c = Peer::accept(&l, proto, true).await;
            c.expect_ack(AckKind::PubRel, y.pkid).await;
            c.send(ack(AckKind::PubComp, y.pkid, 0x92)).await;
            c
        });
        let (client, _inc) = Client::connect(opts(&url, proto, false)).await.unwrap();
        let x = client
            .publish(Message::new("t", "x", QoS::ExactlyOnce))
            .await
            .unwrap();
        timeout(Duration::from_secs(10), x)
            .await
            .expect("x not confirmed")
            .unwrap();
        let y = client
            .publish(Message::new("t", "y", QoS::ExactlyOnce))
            .await
            .unwrap();
        let y = timeout(Duration::from_secs(10), y)
            .await
            .expect("y not confirmed");
        assert!(y.is_ok(), "{proto}: {y:?}");
        let c = timeout(Duration::from_secs(10), broker)
            .await
            .unwrap()
            .unwrap();
        drop(c);
    }
}

/// A broker without QoS 2 (RabbitMQ) answers a QoS 2 publish with PUBACK:
/// that publish fails alone, saying so, and the session stays up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qos2_publish_answered_with_puback_fails_alone() {
    let (l, url) = bind().await;
    let broker = tokio::spawn(async move {
        let mut c = Peer::accept(&l, Protocol::V311, false).await;
        for _ in 0..2 {
            let Packet::Publish(p) = c.recv().await else {
                panic!("expected PUBLISH")
            };
            c.send(ack(AckKind::PubAck, p.pkid, 0)).await;
        }
        c
    });
    let (client, _inc) = Client::connect(opts(&url, Protocol::V311, true))
        .await
        .unwrap();
    let e = client
        .publish(Message::new("t/2", "x", QoS::ExactlyOnce))
        .await
        .unwrap()
        .await
        .unwrap_err();
    assert!(e.to_string().contains("does not support QoS 2"), "{e}");
    client
        .publish(Message::new("t/1", "y", QoS::AtLeastOnce))
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(matches!(
        *client.status().borrow(),
        Status::Connected { .. }
    ));
    assert_eq!(client.stats().reconnects(), 0);
    drop(broker);
}

/// A broker that ends every connection right after CONNACK: the
/// reconnect attempts are bounded by max_attempts like failed connects
/// (two here: from the fourth such connection on, 3.1.1 reads it as a
/// client id taken over, which `hangups.rs` in the CLI's tests covers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_dropped_after_connack_count_as_attempts() {
    let (l, url) = bind().await;
    tokio::spawn(async move {
        loop {
            let c = Peer::accept(&l, Protocol::V311, false).await;
            drop(c);
        }
    });
    let mut o = opts(&url, Protocol::V311, true);
    o.reconnect.max_attempts = 2;
    let (client, _inc) = Client::connect(o).await.unwrap();
    let mut st = client.status();
    let stopped = timeout(
        Duration::from_secs(10),
        st.wait_for(|s| matches!(s, Status::Stopped { .. })),
    )
    .await;
    assert!(
        stopped.is_ok(),
        "still looping: {:?}",
        *client.status().borrow()
    );
    if let Status::Stopped { error: Some(e) } = &*client.status().borrow() {
        assert!(e.contains("gave up after 2 reconnect attempts"), "{e}");
    } else {
        panic!("stopped without a reason");
    }
}

/// DISCONNECT 0x9e (shared subscriptions not supported, as ejabberd sends
/// for `$share/…`) ends the session with that reason instead of a loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsupported_feature_disconnect_ends_the_session() {
    let (l, url) = bind().await;
    let broker = tokio::spawn(async move {
        let mut c = Peer::accept(&l, Protocol::V5, false).await;
        let Packet::Subscribe(_) = c.recv().await else {
            panic!("expected SUBSCRIBE")
        };
        c.send(Packet::Disconnect(mqlink::codec::Disconnect {
            reason: 0x9e,
            ..Default::default()
        }))
        .await;
        // A reconnect would be accepted here: none must come.
        timeout(Duration::from_secs(2), l.accept()).await.is_err()
    });
    let (client, _inc) = Client::connect(opts(&url, Protocol::V5, true))
        .await
        .unwrap();
    let e = client
        .subscribe(vec![mqlink::Subscription::new(
            "$share/g/a",
            QoS::AtLeastOnce,
        )])
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("stopped") || e.to_string().contains("shared"),
        "{e}"
    );
    let mut st = client.status();
    timeout(
        Duration::from_secs(5),
        st.wait_for(|s| matches!(s, Status::Stopped { .. })),
    )
    .await
    .unwrap()
    .unwrap();
    if let Status::Stopped { error: Some(e) } = &*client.status().borrow() {
        assert!(e.contains("does not support shared subscriptions"), "{e}");
    }
    assert!(broker.await.unwrap(), "the session reconnected");
}

/// An MQTT 5 CONNECT to a 3.1.1-only broker (CONNACK 0x01 in 3.1.1's
/// terms) says what to do, not "refused with code 0x01".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_against_a_311_broker_says_so() {
    let (l, url) = bind().await;
    tokio::spawn(async move {
        let (sock, _) = l.accept().await.unwrap();
        let mut p = Peer {
            sock,
            buf: BytesMut::new(),
            proto: Protocol::V5,
        };
        let _ = p.recv().await;
        // A 3.1.1 CONNACK: fixed header, 2 bytes, code 0x01.
        p.sock.write_all(&[0x20, 0x02, 0x00, 0x01]).await.unwrap();
    });
    let Err(e) = Client::connect(opts(&url, Protocol::V5, true)).await else {
        panic!("connected")
    };
    let text = e.to_string();
    assert!(
        text.contains("does not speak this MQTT version") && text.contains("-V 311"),
        "{text}"
    );
}

/// A failover list is tried through at start: the first broker down, the
/// second up, `connect` succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_works_at_start() {
    let down = testkit::free_port();
    let (l, url) = bind().await;
    tokio::spawn(async move {
        let _c = Peer::accept(&l, Protocol::V311, false).await;
        tokio::time::sleep(Duration::from_secs(5)).await;
    });
    let mut o = opts(&format!("mqtt://127.0.0.1:{down}"), Protocol::V311, true);
    o.brokers.push(url.parse().unwrap());
    o.reconnect.max_attempts = 5;
    let t = Instant::now();
    let (client, _inc) = Client::connect(o).await.unwrap();
    assert!(t.elapsed() < Duration::from_secs(3));
    assert!(matches!(
        *client.status().borrow(),
        Status::Connected { .. }
    ));
}

/// How a 3.1.1-only broker meets an MQTT 5 CONNECT.
#[derive(Clone, Copy, Debug)]
enum NoV5 {
    /// Closes the connection (RabbitMQ 3.x).
    HangUp,
    /// Never answers (amqtt 0.12).
    Silent,
    /// A 3.1.1 CONNACK 0x01, unacceptable protocol version (Mosquitto 1.x).
    Refuse311,
    /// An MQTT 5 CONNACK 0x84, unsupported protocol version.
    Refuse5,
}

/// Serves `n` connections as a broker that speaks only 3.1.1 would; the
/// protocol level of each CONNECT.
async fn serve_no_v5(l: TcpListener, how: NoV5, n: usize) -> Vec<u8> {
    let mut levels = Vec::new();
    let mut kept = Vec::new();
    for _ in 0..n {
        let (mut sock, _) = l.accept().await.unwrap();
        let mut buf = Vec::new();
        // The protocol level follows "MQTT" in the CONNECT's variable header.
        let level = loop {
            let mut chunk = [0u8; 256];
            let k = sock.read(&mut chunk).await.unwrap();
            assert!(k > 0, "the client closed before its CONNECT");
            buf.extend_from_slice(&chunk[..k]);
            if let Some(i) = buf.windows(4).position(|w| w == b"MQTT") {
                if buf.len() > i + 4 {
                    break buf[i + 4];
                }
            }
        };
        levels.push(level);
        if level == 4 {
            sock.write_all(&[0x20, 2, 0, 0]).await.unwrap();
            kept.push(sock);
            continue;
        }
        match how {
            NoV5::HangUp => drop(sock),
            NoV5::Silent => kept.push(sock),
            NoV5::Refuse311 => sock.write_all(&[0x20, 2, 0, 1]).await.unwrap(),
            NoV5::Refuse5 => sock.write_all(&[0x20, 3, 0, 0x84, 0]).await.unwrap(),
        }
    }
    levels
}

/// The protocol not written: MQTT 5 first, then 3.1.1 from the same
/// attempt when the broker refuses MQTT 5 in any of the ways brokers do.
#[tokio::test]
async fn an_unwritten_protocol_falls_back_to_311_when_the_broker_refuses_mqtt5() {
    for how in [NoV5::HangUp, NoV5::Silent, NoV5::Refuse311, NoV5::Refuse5] {
        let (l, url) = bind().await;
        let broker = tokio::spawn(serve_no_v5(l, how, 2));
        let mut o = opts(&url, Protocol::V311, true);
        o.protocol_or_default(None);
        o.connect_timeout = Duration::from_secs(1);
        let started = Instant::now();
        let (client, _incoming) = Client::connect(o)
            .await
            .unwrap_or_else(|e| panic!("{how:?}: {e}"));
        assert_eq!(client.protocol(), Protocol::V311, "{how:?}");
        assert!(started.elapsed() < Duration::from_secs(5), "{how:?}");
        assert_eq!(broker.await.unwrap(), [5, 4], "{how:?}");
    }
}

/// A protocol written is honoured: no fallback from 5, no MQTT 5 attempt on 3.1.1.
#[tokio::test]
async fn a_written_protocol_is_honoured() {
    let (l, url) = bind().await;
    let broker = tokio::spawn(serve_no_v5(l, NoV5::Refuse5, 1));
    let mut o = opts(&url, Protocol::V311, true);
    o.protocol_or_default(Some(Protocol::V5));
    let e = Client::connect(o).await.err().expect("MQTT 5 was refused");
    assert!(e.to_string().contains("refused"), "{e}");
    assert_eq!(broker.await.unwrap(), [5]);
    let (l, url) = bind().await;
    let broker = tokio::spawn(serve_no_v5(l, NoV5::Refuse5, 1));
    let mut o = opts(&url, Protocol::V5, true);
    o.protocol_or_default(Some(Protocol::V311));
    let (client, _incoming) = Client::connect(o).await.unwrap();
    assert_eq!(client.protocol(), Protocol::V311);
    assert_eq!(broker.await.unwrap(), [4]);
}

/// A broker that takes seconds to close after DISCONNECT (amqtt after a
/// large drain) does not hold `disconnect` up: once the broker's TCP has
/// taken the last acknowledgements and the DISCONNECT, the client closes;
/// the broker reads all of them, then the close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_does_not_wait_for_a_slow_broker_to_close() {
    for proto in BOTH {
        let (l, url) = bind().await;
        let broker = tokio::spawn(async move {
            let mut c = Peer::accept(&l, proto, false).await;
            for pkid in 1..=3 {
                c.send(publish("t", "m", QoS::AtLeastOnce, pkid, false))
                    .await;
            }
            // Nothing read until the client is gone: its acks and the
            // DISCONNECT wait in our receive buffer, as a busy broker's do.
            tokio::time::sleep(Duration::from_secs(3)).await;
            for pkid in 1..=3 {
                c.expect_ack(AckKind::PubAck, pkid).await;
            }
            assert!(matches!(c.recv_or_eof().await, Some(Packet::Disconnect(_))));
            assert_eq!(c.recv_or_eof().await, None, "the client closed");
        });
        let (client, mut inc) = Client::connect(opts(&url, proto, false)).await.unwrap();
        for _ in 0..3 {
            let mut d = timeout(Duration::from_secs(5), inc.recv())
                .await
                .expect("delivered")
                .unwrap();
            d.ack();
        }
        let t = Instant::now();
        client.disconnect().await;
        let took = t.elapsed();
        assert!(
            took < Duration::from_secs(1),
            "{proto}: disconnect took {took:?}"
        );
        timeout(Duration::from_secs(10), broker)
            .await
            .unwrap()
            .unwrap();
    }
}
