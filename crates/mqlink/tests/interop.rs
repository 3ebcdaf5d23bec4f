//! The library against brokers of other makes, each started by the test on
//! free ports with its own data directory (`testkit::OtherBroker`):
//! RabbitMQ's MQTT plugin, NATS' MQTT listener, rumqttd, aedes (Node.js),
//! ejabberd's mod_mqtt (Erlang) and amqtt (Python).
//!
//! For each: a roundtrip at every QoS the broker takes (3.1.1, and 5 where it
//! speaks it), retained messages, the last will, refused credentials, a
//! persistent session draining 100,000 queued QoS 1 messages through
//! `MqttSource`, shared subscriptions where the broker has them, and what
//! the broker lacks — which must end in an error within seconds, never a
//! reconnect loop. `docs/design/interop.md` holds the matrix these tests measure,
//! with mosquitto_pub/mosquitto_sub as the control.
//!
//! A broker that is not installed fails the test with the install hint
//! (`scripts/test.sh` installs them all); `MQLINK_INTEROP_SKIP=1` skips
//! instead, saying so.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mqlink::sink::{MqttSink, SinkRecord};
use mqlink::source::MqttSource;
use mqlink::{
    Backoff, Client, ConnectError, ConnectOptions, Error, Incoming, LastWill, Message, Protocol,
    QoS, Refusal, SubscribeError, Subscription,
};
use testkit::{unique_id, CutProxy, Make, OtherBroker};
use tokio::time::timeout;

/// How long an unsupported feature may take to fail.
const FAIL_WITHIN: Duration = Duration::from_secs(10);

/// Messages queued for the persistent-session drain.
const DRAIN: usize = 100_000;

fn start(make: Make) -> Option<OtherBroker> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    match OtherBroker::start(make) {
        Ok(b) => {
            eprintln!(
                "{make} listening on {} (v5: {:?}) after {:.1} s",
                b.port,
                b.v5_port,
                b.startup.as_secs_f64()
            );
            Some(b)
        }
        Err(e) if std::env::var_os("MQLINK_INTEROP_SKIP").is_some() => {
            eprintln!("SKIPPED (MQLINK_INTEROP_SKIP): {e}");
            None
        }
        Err(e) => panic!("{e}; `bash scripts/test.sh` installs it (MQLINK_INTEROP_SKIP=1 skips)"),
    }
}

/// The versions each broker speaks, and whether it takes QoS 2 publishes.
fn protocols(make: Make) -> &'static [Protocol] {
    match make {
        Make::Rumqttd | Make::Ejabberd => &[Protocol::V311, Protocol::V5],
        _ => &[Protocol::V311],
    }
}

fn takes_qos2(make: Make) -> bool {
    matches!(
        make,
        Make::Rumqttd | Make::Aedes | Make::Ejabberd | Make::Amqtt
    )
}

fn opts(b: &OtherBroker, protocol: Protocol) -> ConnectOptions {
    let url = match protocol {
        Protocol::V5 => b.v5_url(),
        _ => b.url(),
    };
    opts_at(&url, b, protocol)
}

fn opts_at(url: &str, b: &OtherBroker, protocol: Protocol) -> ConnectOptions {
    let mut o = ConnectOptions::new(url).unwrap();
    o.protocol = protocol;
    o.client_id = Some(unique_id("io"));
    o.username = Some(b.user.clone());
    o.password = Some(b.password.clone().into());
    o.keep_alive = Duration::from_secs(10);
    o.connect_timeout = Duration::from_secs(5);
    o.reconnect = Backoff {
        initial_interval: Duration::from_millis(100),
        multiplier: 2.0,
        max_interval: Duration::from_millis(500),
        max_attempts: 3,
        jitter: 0.1,
    };
    o
}

fn payloads(prefix: &str, n: usize) -> BTreeSet<Bytes> {
    (0..n)
        .map(|i| Bytes::from(format!("{prefix}{i:06}")))
        .collect()
}

/// Receives until `n` distinct payloads arrived, acknowledging each.
async fn collect(inc: &mut Incoming, n: usize, within: Duration, what: &str) -> BTreeSet<Bytes> {
    let mut seen = BTreeSet::new();
    let r = timeout(within, async {
        while seen.len() < n {
            let mut d = inc.recv().await.expect("session ended");
            d.ack();
            seen.insert(d.payload.clone());
        }
    })
    .await;
    assert!(r.is_ok(), "{what}: {} of {n} arrived", seen.len());
    seen
}

async fn publish_all(c: &Client, topic: &str, qos: QoS, p: &BTreeSet<Bytes>) {
    let mut tokens = Vec::new();
    for m in p {
        tokens.push(
            c.publish(Message::new(topic, m.clone(), qos))
                .await
                .unwrap(),
        );
    }
    for t in tokens {
        timeout(Duration::from_secs(30), t)
            .await
            .expect("confirmation within 30 s")
            .unwrap();
    }
}

/// Every QoS the broker takes, on every version it speaks; wildcards; the
/// sink publishing and the source receiving; a retained message; the last
/// will; and a wrong password refused at once.
async fn features(make: Make) {
    let Some(b) = start(make) else { return };
    for &proto in protocols(make) {
        let root = format!("io/{}", unique_id("rt"));
        let (sub, mut inc) = Client::connect(opts(&b, proto)).await.unwrap();
        let granted = sub
            .subscribe(vec![Subscription::new(
                format!("{root}/rt/#"),
                QoS::ExactlyOnce,
            )])
            .await
            .unwrap();
        let max = if takes_qos2(make) {
            QoS::ExactlyOnce
        } else {
            QoS::AtLeastOnce
        };
        assert_eq!(granted, [max], "{make} {proto}: granted QoS");
        let (publ, _) = Client::connect(opts(&b, proto)).await.unwrap();
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            if qos > max {
                continue;
            }
            let p = payloads(&format!("q{qos}-"), 300);
            publish_all(&publ, &format!("{root}/rt/{qos}"), qos, &p).await;
            let got = collect(&mut inc, 300, Duration::from_secs(15), "roundtrip").await;
            assert_eq!(got, p, "{make} {proto} QoS {qos}");
        }

        // The sink publishes, the source reads.
        let mut source = MqttSource::builder()
            .connection(opts(&b, proto))
            .topic(format!("{root}/sink/+"), QoS::AtLeastOnce)
            .start()
            .await
            .unwrap();
        let sink = MqttSink::builder()
            .connection(opts(&b, proto))
            .topic(format!("{root}/sink/{{key}}"))
            .qos(QoS::AtLeastOnce)
            .start()
            .await
            .unwrap();
        for i in 0..100 {
            let _confirmed = sink
                .send(SinkRecord::bytes(format!("s{i:06}")).with_key(format!("k{}", i % 3)))
                .await
                .unwrap();
        }
        sink.flush(Duration::from_secs(15)).await.unwrap();
        let mut got = BTreeSet::new();
        while got.len() < 100 {
            for mut r in timeout(Duration::from_secs(15), source.next_batch())
                .await
                .expect("sink → source")
            {
                r.ack();
                got.insert(r.payload.clone());
            }
        }
        assert_eq!(got, payloads("s", 100), "{make} {proto}: sink → source");
        source.close().await;
        sink.close(Duration::from_secs(5)).await.unwrap();

        // Retained: a new subscriber gets the last one, flagged.
        let kept = format!("{root}/retained");
        publ.publish(Message::new(&kept, "r1", QoS::AtLeastOnce).retain(true))
            .await
            .unwrap()
            .await
            .unwrap();
        publ.publish(Message::new(&kept, "r2", QoS::AtLeastOnce).retain(true))
            .await
            .unwrap()
            .await
            .unwrap();
        let (late, mut late_inc) = Client::connect(opts(&b, proto)).await.unwrap();
        late.subscribe(vec![Subscription::new(&kept, QoS::AtLeastOnce)])
            .await
            .unwrap();
        let mut d = timeout(Duration::from_secs(10), late_inc.recv())
            .await
            .expect("retained message")
            .unwrap();
        d.ack();
        assert_eq!(
            (&d.payload[..], d.retain),
            (&b"r2"[..], true),
            "{make} {proto}"
        );
        late.disconnect().await;

        // The will, when the connection dies without DISCONNECT.
        let will_topic = format!("{root}/will");
        sub.subscribe(vec![Subscription::new(&will_topic, QoS::AtLeastOnce)])
            .await
            .unwrap();
        let proxy = CutProxy::new(if proto == Protocol::V5 {
            b.v5_port.unwrap_or(b.port)
        } else {
            b.port
        });
        let mut o = opts_at(&proxy.url(), &b, proto);
        o.reconnect.max_attempts = 1;
        o.last_will = Some(LastWill {
            topic: will_topic.clone(),
            payload: Bytes::from_static(b"gone"),
            qos: QoS::AtLeastOnce,
            retain: false,
        });
        let (_dying, _i) = Client::connect(o).await.unwrap();
        drop(proxy);
        let mut d = timeout(Duration::from_secs(10), inc.recv())
            .await
            .expect("the will")
            .unwrap();
        d.ack();
        assert_eq!(&d.payload[..], b"gone", "{make} {proto}: will");
        publ.disconnect().await;
        sub.disconnect().await;

        // A wrong password: refused, typed, at once, never echoed.
        let mut o = opts(&b, proto);
        o.password = Some("wrong-pw".into());
        let t = Instant::now();
        let e = timeout(FAIL_WITHIN, Client::connect(o))
            .await
            .expect("a wrong password must fail within 10 s")
            .err()
            .expect("a wrong password must be refused");
        match &e {
            Error::Connect(ConnectError::Refused { refusal, .. }) => assert!(
                matches!(refusal, Refusal::BadCredentials | Refusal::NotAuthorized),
                "{make} {proto}: {e}"
            ),
            // rumqttd closes the connection without a CONNACK (mosquitto_pub:
            // "The connection was lost."); nothing tells a client why.
            Error::Connect(ConnectError::Io { .. }) if make == Make::Rumqttd => {}
            _ => panic!("{make} {proto}: {e:?}"),
        }
        assert!(!format!("{e} {e:?}").contains("wrong-pw"));
        eprintln!("{make} {proto}: wrong password: {e} ({:?})", t.elapsed());
    }
}

/// `n` QoS 1 messages queued for an offline persistent session, then drained
/// through `MqttSource` (which subscribes again, as `mqlink sub -c` does).
async fn drain(make: Make, n: usize, batched: bool) {
    let Some(b) = start(make) else { return };
    let id = unique_id("drain");
    let topic = format!("io/{id}");
    let proto = Protocol::V311;
    let mut o = opts(&b, proto);
    o.client_id = Some(id.clone());
    o.clean_session = false;
    o.keep_alive = Duration::from_secs(30);
    let source = MqttSource::builder()
        .connection(o.clone())
        .topic(&topic, QoS::AtLeastOnce)
        .start()
        .await
        .unwrap();
    source.close().await;
    let (publ, _) = Client::connect(opts(&b, proto)).await.unwrap();
    let t = Instant::now();
    publish_all(&publ, &topic, QoS::AtLeastOnce, &payloads("d", n)).await;
    let published = t.elapsed();
    publ.disconnect().await;

    let t = Instant::now();
    let mut source = timeout(
        Duration::from_secs(30),
        MqttSource::builder()
            .connection(o)
            .topic(&topic, QoS::AtLeastOnce)
            .start(),
    )
    .await
    .expect("the source subscribes within 30 s while messages are queued")
    .unwrap();
    let mut seen = BTreeSet::new();
    let mut total = 0usize;
    // `next`, or `next_batch` (which, without a linger, takes what has
    // arrived: a linger would hold the broker's window of 10 on RabbitMQ).
    let r = timeout(Duration::from_secs(90), async {
        while seen.len() < n {
            let batch = if batched {
                source.next_batch().await
            } else {
                vec![source.next().await.expect("source ended")]
            };
            for mut r in batch {
                r.ack();
                total += 1;
                seen.insert(r.payload.clone());
            }
        }
    })
    .await;
    let drained = t.elapsed();
    assert!(r.is_ok(), "{make}: {} of {n} drained in 90 s", seen.len());
    eprintln!(
        "{make}: {n} QoS 1 published in {:.2} s, drained in {:.2} s ({total} deliveries)",
        published.as_secs_f64(),
        drained.as_secs_f64()
    );
    source.close().await;
}

/// A QoS 2 publish to a broker that does not take QoS 2 ends in an error
/// naming QoS 2 within seconds, delivered at most once — never a loop.
async fn qos2_publish_refused(make: Make) {
    let Some(b) = start(make) else { return };
    let topic = format!("io/{}", unique_id("q2"));
    let (sub, mut inc) = Client::connect(opts(&b, Protocol::V311)).await.unwrap();
    sub.subscribe(vec![Subscription::new(&topic, QoS::AtLeastOnce)])
        .await
        .unwrap();
    let (publ, _) = Client::connect(opts(&b, Protocol::V311)).await.unwrap();
    let t = Instant::now();
    let r = timeout(FAIL_WITHIN, async {
        publ.publish(Message::new(&topic, "q2", QoS::ExactlyOnce))
            .await?
            .await
    })
    .await
    .unwrap_or_else(|_| panic!("{make}: a QoS 2 publish neither failed nor completed in 10 s"));
    let e = r.expect_err("the broker cannot take QoS 2: the publish must fail");
    assert!(
        e.to_string().contains("QoS 2"),
        "{make}: the error must name QoS 2: {e}"
    );
    eprintln!("{make}: QoS 2 publish: {e} ({:?})", t.elapsed());
    let mut copies = 0;
    while let Ok(Some(mut d)) = timeout(Duration::from_secs(1), inc.recv()).await {
        d.ack();
        copies += 1;
    }
    assert!(copies <= 1, "{make}: {copies} copies of one QoS 2 publish");
}

/// MQTT 5 against a 3.1.1-only broker: refused at once (and, with
/// `name_it`, with an error that says the broker does not speak MQTT 5).
async fn mqtt5_refused(make: Make, name_it: bool) {
    let Some(b) = start(make) else { return };
    let t = Instant::now();
    let e = timeout(FAIL_WITHIN, Client::connect(opts(&b, Protocol::V5)))
        .await
        .unwrap_or_else(|_| panic!("{make}: an MQTT 5 connect must fail within 10 s"))
        .err()
        .expect("the broker speaks only 3.1.1");
    eprintln!("{make}: MQTT 5 connect: {e} ({:?})", t.elapsed());
    if !name_it {
        return;
    }
    let msg = e.to_string();
    assert!(
        msg.contains("MQTT 5") || msg.contains("protocol version"),
        "{make}: the error must say the broker does not speak MQTT 5: {msg}"
    );
}

/// Three sessions in one `$share` group: each message reaches exactly one.
async fn shared(make: Make, proto: Protocol) {
    let Some(b) = start(make) else { return };
    let topic = format!("io/{}", unique_id("share"));
    let mut clients = Vec::new();
    for _ in 0..3 {
        let (c, inc) = Client::connect(opts(&b, proto)).await.unwrap();
        c.subscribe(vec![Subscription::new(
            format!("$share/g/{topic}"),
            QoS::AtLeastOnce,
        )])
        .await
        .unwrap();
        clients.push((c, inc));
    }
    let (publ, _) = Client::connect(opts(&b, proto)).await.unwrap();
    let p = payloads("sh", 300);
    publish_all(&publ, &topic, QoS::AtLeastOnce, &p).await;
    let mut per_client = Vec::new();
    let mut all = Vec::new();
    for (_, inc) in &mut clients {
        let mut n = 0;
        while let Ok(Some(mut d)) = timeout(Duration::from_millis(1500), inc.recv()).await {
            d.ack();
            all.push(d.payload.clone());
            n += 1;
        }
        per_client.push(n);
    }
    eprintln!("{make} {proto}: $share deliveries per client {per_client:?}");
    assert_eq!(all.len(), 300, "{make}: each message once: {per_client:?}");
    assert_eq!(all.into_iter().collect::<BTreeSet<_>>(), p);
    assert!(per_client.iter().all(|&n| n > 0), "{per_client:?}");
}

/// `$share` on a broker without shared subscriptions: mosquitto_sub sees the
/// same — the filter is granted as an ordinary one and nothing published to
/// the topic reaches it. mqlink must not loop or fail the session.
async fn shared_unsupported(make: Make) {
    let Some(b) = start(make) else { return };
    let topic = format!("io/{}", unique_id("share"));
    let (c, mut inc) = Client::connect(opts(&b, Protocol::V311)).await.unwrap();
    let r = timeout(
        FAIL_WITHIN,
        c.subscribe(vec![Subscription::new(
            format!("$share/g/{topic}"),
            QoS::AtLeastOnce,
        )]),
    )
    .await
    .expect("SUBSCRIBE to $share answered within 10 s");
    eprintln!("{make}: SUBSCRIBE $share/g/…: {r:?}");
    let (publ, _) = Client::connect(opts(&b, Protocol::V311)).await.unwrap();
    publish_all(&publ, &topic, QoS::AtLeastOnce, &payloads("sh", 10)).await;
    let got = timeout(Duration::from_secs(2), inc.recv()).await;
    assert!(got.is_err(), "{make}: a $share delivery arrived: {got:?}");
    // The session is still usable.
    c.subscribe(vec![Subscription::new(&topic, QoS::AtLeastOnce)])
        .await
        .unwrap();
    publ.publish(Message::new(&topic, "after", QoS::AtLeastOnce))
        .await
        .unwrap()
        .await
        .unwrap();
    let mut d = timeout(Duration::from_secs(5), inc.recv())
        .await
        .unwrap()
        .unwrap();
    d.ack();
    assert_eq!(&d.payload[..], b"after");
}

/// `$share` on a broker that hangs up at such a SUBSCRIBE on 3.1.1
/// (ejabberd): mosquitto_sub, the control, reconnects and subscribes again
/// and again; mqlink fails the subscription naming the filter within
/// seconds. On MQTT 5 the broker says why (DISCONNECT 0x9E), and the
/// subscription is refused with that reason.
async fn shared_hangs_up(make: Make) {
    let Some(b) = start(make) else { return };
    let filter = format!("$share/g/io/{}", unique_id("share"));
    // The control: the same SUBSCRIBE, sent again after each hang-up.
    let out = std::process::Command::new("timeout")
        .args(["3", "mosquitto_sub", "-d", "-V", "311", "-h", "127.0.0.1"])
        .args(["-p", &b.port.to_string(), "-u", &b.user, "-P", &b.password])
        .args(["-q", "1", "-t", &filter])
        .output()
        .expect("run mosquitto_sub");
    let log = String::from_utf8_lossy(&out.stdout);
    let subscribes = log.matches("sending SUBSCRIBE").count();
    assert!(
        subscribes >= 2,
        "{make}: mosquitto_sub was expected to subscribe again and again: {log}"
    );
    eprintln!("{make}: mosquitto_sub sent SUBSCRIBE {subscribes} times in 3 s");

    for proto in [Protocol::V311, Protocol::V5] {
        let t = Instant::now();
        let (c, _inc) = Client::connect(opts(&b, proto)).await.unwrap();
        let e = timeout(
            Duration::from_secs(15),
            c.subscribe(vec![Subscription::new(&filter, QoS::AtLeastOnce)]),
        )
        .await
        .unwrap_or_else(|_| panic!("{make} {proto}: $share must fail within 15 s, not loop"))
        .expect_err("the broker does not take $share");
        eprintln!("{make} {proto}: {e} ({:?})", t.elapsed());
        match (&e, proto) {
            (SubscribeError::DroppedByBroker { filters, .. }, Protocol::V311) => {
                assert_eq!(filters, std::slice::from_ref(&filter))
            }
            (SubscribeError::Refused { filter: f, code }, Protocol::V5) => {
                assert_eq!((f, *code), (&filter, 0x9e))
            }
            _ => panic!("{make} {proto}: {e:?}"),
        }
        let msg = e.to_string();
        assert!(
            msg.contains(&format!("{filter:?}")) && msg.contains("shared subscriptions"),
            "{make} {proto}: {msg}"
        );
    }
}

/// A broker that never answers an MQTT 5 CONNECT (amqtt): the timeout says
/// to use 3.1.1, and with the protocol not written mqlink falls back to it.
async fn mqtt5_unanswered(make: Make) {
    let Some(b) = start(make) else { return };
    let t = Instant::now();
    let e = timeout(FAIL_WITHIN, Client::connect(opts(&b, Protocol::V5)))
        .await
        .unwrap_or_else(|_| panic!("{make}: an MQTT 5 connect must fail within 10 s"))
        .err()
        .expect("the broker speaks only 3.1.1");
    let msg = e.to_string();
    eprintln!("{make}: MQTT 5 connect: {msg} ({:?})", t.elapsed());
    assert!(
        matches!(
            e,
            Error::Connect(ConnectError::Timeout {
                v5_unanswered: true,
                ..
            })
        ) && msg.contains("did not answer an MQTT 5 CONNECT")
            && msg.contains("-V 311"),
        "{make}: {msg}"
    );
    // The default (protocol not written): MQTT 5 first, then 3.1.1.
    let mut o = opts(&b, Protocol::V5);
    o.protocol_fallback = true;
    let (c, _inc) = Client::connect(o).await.unwrap();
    assert_eq!(c.protocol(), Protocol::V311, "{make}: fell back to 3.1.1");
    c.disconnect().await;
}

mod rabbitmq {
    use super::*;
    const M: Make = Make::RabbitMq;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn roundtrip_sink_source_retained_will_and_wrong_password() {
        features(M).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn persistent_session_drains_100k() {
        drain(M, DRAIN, false).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn persistent_session_drains_100k_with_next_batch() {
        drain(M, DRAIN, true).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn qos2_publish_fails_naming_qos2() {
        qos2_publish_refused(M).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mqtt5_connect_is_refused_at_once() {
        mqtt5_refused(M, false).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mqtt5_error_says_the_broker_does_not_speak_mqtt5() {
        mqtt5_refused(M, true).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shared_subscription_is_not_supported() {
        shared_unsupported(M).await
    }
}

mod nats {
    use super::*;
    const M: Make = Make::Nats;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn roundtrip_sink_source_retained_will_and_wrong_password() {
        features(M).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn persistent_session_drains_100k() {
        drain(M, DRAIN, false).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn qos2_publish_fails_naming_qos2() {
        qos2_publish_refused(M).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mqtt5_connect_is_refused_at_once() {
        mqtt5_refused(M, false).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mqtt5_error_says_the_broker_does_not_speak_mqtt5() {
        mqtt5_refused(M, true).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shared_subscription_is_not_supported() {
        shared_unsupported(M).await
    }
}

mod rumqttd {
    use super::*;
    const M: Make = Make::Rumqttd;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn roundtrip_sink_source_retained_will_and_wrong_password() {
        features(M).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn persistent_session_drains_100k() {
        drain(M, DRAIN, false).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn persistent_session_drains_its_window_of_100() {
        drain(M, 100, false).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shared_subscription_splits_the_load_v311() {
        shared(M, Protocol::V311).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shared_subscription_splits_the_load_v5() {
        shared(M, Protocol::V5).await
    }
}

mod aedes {
    use super::*;
    const M: Make = Make::Aedes;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn roundtrip_sink_source_retained_will_and_wrong_password() {
        features(M).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn persistent_session_drains_100k() {
        drain(M, DRAIN, false).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mqtt5_connect_is_refused_at_once() {
        mqtt5_refused(M, false).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mqtt5_error_says_the_broker_does_not_speak_mqtt5() {
        mqtt5_refused(M, true).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shared_subscription_is_not_supported() {
        shared_unsupported(M).await
    }
}

mod ejabberd {
    use super::*;
    const M: Make = Make::Ejabberd;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn roundtrip_sink_source_retained_will_and_wrong_password() {
        features(M).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn persistent_session_drains_20k() {
        drain(M, 20_000, false).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shared_subscription_fails_naming_the_filter_not_a_loop() {
        shared_hangs_up(M).await
    }
}

mod amqtt {
    use super::*;
    const M: Make = Make::Amqtt;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn roundtrip_sink_source_retained_will_and_wrong_password() {
        features(M).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn persistent_session_drains_20k() {
        drain(M, 20_000, false).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mqtt5_connect_unanswered_says_use_311() {
        mqtt5_unanswered(M).await
    }
}
