//! The embedded broker (`mqlink::broker`): limits against hostile clients,
//! and MQTT 5 behaviour, with raw packets from the codec and with the
//! library's client.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use mqlink::broker::{BrokerConfig, EmbeddedBroker};
use mqlink::codec::{self, ConnAck, Connect, Packet, Subscribe, SubscribeOptions};
use mqlink::{Client, ConnectOptions, Message, Protocol, QoS, ReconnectPolicy, Subscription};
use testkit::unique_id;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

const T: Duration = Duration::from_secs(5);

/// A client that writes and reads packets as they are, for what the
/// library's client would never send.
struct Raw {
    sock: TcpStream,
    buf: BytesMut,
    protocol: Protocol,
}

impl Raw {
    async fn tcp(addr: SocketAddr, protocol: Protocol) -> Raw {
        Raw {
            sock: TcpStream::connect(addr).await.unwrap(),
            buf: BytesMut::new(),
            protocol,
        }
    }

    fn connect_packet(protocol: Protocol, id: &str) -> Connect {
        Connect {
            protocol,
            clean_start: true,
            keep_alive: 30,
            client_id: id.to_owned(),
            username: None,
            password: None,
            will: None,
            properties: Default::default(),
        }
    }

    /// Connects with the CONNECT `edit` makes; returns the CONNACK.
    async fn connect(
        addr: SocketAddr,
        protocol: Protocol,
        edit: impl FnOnce(&mut Connect),
    ) -> (Raw, ConnAck) {
        let mut raw = Raw::tcp(addr, protocol).await;
        let mut c = Raw::connect_packet(protocol, &unique_id("raw"));
        edit(&mut c);
        raw.send(&Packet::Connect(Box::new(c))).await;
        match raw.recv().await {
            Packet::ConnAck(a) => (raw, a),
            p => panic!("expected CONNACK, got {p:?}"),
        }
    }

    async fn send(&mut self, p: &Packet) {
        let mut out = BytesMut::new();
        codec::encode(p, self.protocol, &mut out);
        self.sock.write_all(&out).await.unwrap();
    }

    async fn send_bytes(&mut self, b: &[u8]) {
        self.sock.write_all(b).await.unwrap();
    }

    /// The next packet; `None` when the broker closed the connection.
    async fn next(&mut self) -> Option<Packet> {
        loop {
            if let Some(p) = codec::decode(&mut self.buf, self.protocol, usize::MAX).unwrap() {
                return Some(p);
            }
            let n = timeout(T, self.sock.read_buf(&mut self.buf))
                .await
                .expect("a packet or close within 5 s")
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
        }
    }

    async fn recv(&mut self) -> Packet {
        self.next().await.expect("connection open")
    }

    /// Reads until the broker closes; returns the DISCONNECT reason if one came.
    async fn closed(&mut self) -> Option<u8> {
        let mut reason = None;
        while let Some(p) = self.next().await {
            if let Packet::Disconnect(d) = p {
                reason = Some(d.reason);
            }
        }
        reason
    }
}

fn opts(addr: SocketAddr, protocol: Protocol) -> ConnectOptions {
    let mut o = ConnectOptions::new(&format!("mqtt://{addr}")).unwrap();
    o.protocol = protocol;
    o.client_id = Some(unique_id("c"));
    o.keep_alive = Duration::from_secs(5);
    o.connect_timeout = T;
    o.reconnect = ReconnectPolicy {
        initial_interval: Duration::from_millis(50),
        multiplier: 1.5,
        max_interval: Duration::from_millis(400),
        max_attempts: 0,
        jitter: 0.1,
    };
    o
}

/// Resident memory of this process (broker and clients), in MiB.
fn rss_mib() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: usize = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb / 1024
}

static PANICS: AtomicUsize = AtomicUsize::new(0);

fn count_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::Relaxed);
        default(info);
    }));
}

/// A well-behaved client publishes and receives a message; returns how long it took.
async fn round_trip(p: &Client, inc: &mut mqlink::Incoming, topic: &str, body: &str) -> Duration {
    let t0 = Instant::now();
    p.publish(Message::new(topic, body.to_owned(), QoS::AtLeastOnce))
        .await
        .unwrap()
        .await
        .unwrap();
    let mut d = timeout(T, inc.recv()).await.unwrap().unwrap();
    assert_eq!(d.payload, body.as_bytes());
    d.ack();
    t0.elapsed()
}

/// Hostile clients all at once — oversize declared lengths, a 100,000-filter
/// SUBSCRIBE, 1,000 idle connections, a subscriber that stops reading —
/// while a well-behaved client keeps publishing and receiving. Bound: the
/// process (broker and every client) grows by less than 300 MiB, no round
/// trip takes more than 2 s, nothing panics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_do_not_stop_a_well_behaved_one() {
    count_panics();
    let config = BrokerConfig {
        max_connections: 1_100,
        connect_timeout: Duration::from_secs(60),
        max_queued_messages: 100,
        slow_subscriber_timeout: Duration::from_secs(1),
        ..Default::default()
    };
    let b = EmbeddedBroker::start_with("127.0.0.1:0", config)
        .await
        .unwrap();
    let addr = b.local_addr();
    let rss0 = rss_mib();

    let (good, mut good_in) = Client::connect(opts(addr, Protocol::V5)).await.unwrap();
    good.subscribe(vec![Subscription::new("good/#", QoS::AtLeastOnce)])
        .await
        .unwrap();
    let mut worst = round_trip(&good, &mut good_in, "good/0", "0").await;

    // 1,000 connections that never send CONNECT.
    let mut idle = Vec::new();
    for _ in 0..1_000 {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    worst = worst.max(round_trip(&good, &mut good_in, "good/1", "1").await);

    // Declared lengths over the maximum packet size: refused at the header.
    let mut huge_connect = Raw::tcp(addr, Protocol::V5).await;
    huge_connect
        .send_bytes(&[0x10, 0xff, 0xff, 0xff, 0x7f])
        .await;
    assert_eq!(huge_connect.closed().await, None);
    let (mut huge_publish, _) = Raw::connect(addr, Protocol::V5, |_| {}).await;
    huge_publish
        .send_bytes(&[0x30, 0xff, 0xff, 0xff, 0x7f, 0, 1, b'x'])
        .await;
    assert_eq!(huge_publish.closed().await, Some(0x95), "packet too large");
    // Declared lengths under the limit (15 MiB) that never arrive: nothing
    // is allocated for what was not sent.
    let mut trickles = Vec::new();
    for _ in 0..50 {
        let (mut r, _) = Raw::connect(addr, Protocol::V311, |_| {}).await;
        r.send_bytes(&[0x30, 0x80, 0x80, 0xc0, 0x07, 0, 1, b'x'])
            .await;
        trickles.push(r);
    }
    worst = worst.max(round_trip(&good, &mut good_in, "good/2", "2").await);

    // A subscriber that stops reading, on everything the good client publishes.
    let (mut deaf, _) = Raw::connect(addr, Protocol::V311, |_| {}).await;
    deaf.send(&Packet::Subscribe(Subscribe {
        pkid: 1,
        filters: vec![("good/#".into(), SubscribeOptions::qos(QoS::AtLeastOnce))],
        subscription_identifier: None,
    }))
    .await;
    assert!(matches!(deaf.recv().await, Packet::SubAck(_)));

    // A SUBSCRIBE with 100,000 filters, answered while the good client
    // keeps going.
    let (mut greedy, _) = Raw::connect(addr, Protocol::V311, |_| {}).await;
    let filters: Vec<(String, SubscribeOptions)> = (0..100_000)
        .map(|i| {
            (
                format!("greedy/{i}/+/#"),
                SubscribeOptions::qos(QoS::AtLeastOnce),
            )
        })
        .collect();
    let greedy_task = tokio::spawn(async move {
        greedy
            .send(&Packet::Subscribe(Subscribe {
                pkid: 7,
                filters,
                subscription_identifier: None,
            }))
            .await;
        match greedy.recv().await {
            Packet::SubAck(a) => assert_eq!(a.codes.len(), 100_000),
            p => panic!("expected SUBACK, got {p:?}"),
        }
        greedy
    });

    // The good client publishes 64 KiB messages: the deaf subscriber's
    // socket, window and queue fill; once it has taken nothing for 1 s it
    // is disconnected and the publisher goes on (held up at most that
    // second after the deaf one's last progress: under 3 s).
    let big = "x".repeat(64 * 1024);
    for i in 0..400 {
        let t = round_trip(&good, &mut good_in, &format!("good/big/{i}"), &big).await;
        if t > Duration::from_secs(3) {
            panic!("round trip {i} took {t:?}");
        }
    }
    // It was disconnected: what it did not read ends with EOF.
    let mut sink = vec![0u8; 1 << 20];
    timeout(Duration::from_secs(10), async {
        while deaf.sock.read(&mut sink).await.unwrap_or(0) > 0 {}
    })
    .await
    .expect("the subscriber that stopped reading was disconnected");
    let greedy = timeout(Duration::from_secs(30), greedy_task)
        .await
        .unwrap()
        .unwrap();
    assert!(b.stats().subscriptions >= 100_000);
    for i in 0..20 {
        worst = worst.max(round_trip(&good, &mut good_in, "good/after", &format!("{i}")).await);
    }
    assert!(
        worst < Duration::from_secs(2),
        "worst small round trip {worst:?}"
    );
    let grown = rss_mib().saturating_sub(rss0);
    eprintln!("RSS grew by {grown} MiB; worst small round trip {worst:?}");
    assert!(grown < 300, "RSS grew by {grown} MiB");
    assert_eq!(PANICS.load(Ordering::Relaxed), 0, "nothing panicked");
    drop((idle, trickles, greedy));
    good.disconnect().await;
}

/// Keep-alive is enforced at 1.5 times what the client asked; 0 is refused
/// on 3.1.1 and replaced by the server's on 5, unless configured.
#[tokio::test]
async fn keep_alive_is_enforced_and_zero_only_when_allowed() {
    let b = EmbeddedBroker::start("127.0.0.1:0").await.unwrap();
    let addr = b.local_addr();
    let (mut quiet, ack) = Raw::connect(addr, Protocol::V5, |c| c.keep_alive = 1).await;
    assert_eq!(ack.code, 0);
    let t0 = Instant::now();
    assert_eq!(quiet.closed().await, Some(0x8D), "keep-alive timeout");
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(1400) && waited < Duration::from_millis(2500),
        "{waited:?}"
    );

    let (_, ack) = Raw::connect(addr, Protocol::V311, |c| c.keep_alive = 0).await;
    assert_eq!(ack.code, 0x02, "3.1.1 keep-alive 0 refused");
    let (_, ack) = Raw::connect(addr, Protocol::V5, |c| c.keep_alive = 0).await;
    assert_eq!((ack.code, ack.properties.server_keep_alive), (0, Some(60)));

    let lenient = EmbeddedBroker::start_with(
        "127.0.0.1:0",
        BrokerConfig {
            allow_zero_keep_alive: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let (_, ack) = Raw::connect(lenient.local_addr(), Protocol::V311, |c| c.keep_alive = 0).await;
    assert_eq!(ack.code, 0);
}

/// A connection that sends no CONNECT is closed after the connect
/// timeout; beyond the connection cap, connections are closed at once.
#[tokio::test]
async fn connect_timeout_and_connection_cap() {
    let b = EmbeddedBroker::start_with(
        "127.0.0.1:0",
        BrokerConfig {
            connect_timeout: Duration::from_millis(300),
            max_connections: 3,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let addr = b.local_addr();
    let mut silent = Raw::tcp(addr, Protocol::V311).await;
    let t0 = Instant::now();
    assert_eq!(silent.closed().await, None);
    assert!(t0.elapsed() < Duration::from_secs(2));

    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(Raw::connect(addr, Protocol::V311, |_| {}).await.0);
    }
    let mut extra = Raw::tcp(addr, Protocol::V311).await;
    extra
        .send(&Packet::Connect(Box::new(Raw::connect_packet(
            Protocol::V311,
            "extra",
        ))))
        .await;
    assert!(extra.next().await.is_none(), "closed without CONNACK");
    drop(held.pop());
    // A slot frees when a connection ends.
    let mut ok = None;
    for _ in 0..50 {
        let mut r = Raw::tcp(addr, Protocol::V311).await;
        r.send(&Packet::Connect(Box::new(Raw::connect_packet(
            Protocol::V311,
            "late",
        ))))
        .await;
        if let Some(Packet::ConnAck(a)) = r.next().await {
            ok = Some(a.code);
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(ok, Some(0));
}
