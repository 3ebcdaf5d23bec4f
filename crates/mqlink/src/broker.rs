//! An MQTT broker inside the process, for first runs and local development
//! (`broker = "embedded"` in a pipeline file): nothing to install.
//!
//! It speaks MQTT 3.1.1 and 5 over TCP with the library's own codec: QoS 0,
//! 1 and 2 (incoming QoS 2 deduplicated by packet id), wildcards, retained
//! messages, last wills, keep-alive, and persistent sessions kept in memory
//! while the process lives (queued messages and unacknowledged deliveries
//! are sent again, with DUP, when the client comes back). Each client gets
//! at most its receive maximum of unacknowledged messages.
//!
//! What it is not: durable (nothing survives the process), secured (no TLS,
//! no authentication: it listens where you tell it, 127.0.0.1 by default),
//! or complete (no shared subscriptions, no topic aliases). Use Mosquitto,
//! EMQX, HiveMQ or VerneMQ for anything else.
//!
//! Flow control: a publisher's message is acknowledged once it was queued
//! for every online subscriber. A subscriber's queue is bounded; while it is
//! full the publisher gets no acknowledgement and is not read from (its
//! messages wait in TCP), so a slow subscriber slows publishers down instead
//! of losing messages. (A publisher held up longer than its keep-alive is
//! disconnected and resends: duplicates, nothing lost.) An offline
//! persistent session queues up to the same bound; beyond it a message is
//! dropped for that session with a warning, as brokers with queue limits do.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::codec::{
    self, encode, encode_ack, encode_publish, AckKind, ByteStr, ConnAck, Connect, Packet, Publish,
    SubAck, UnsubAck,
};
use crate::topic::{validate_filter, validate_topic_name, TopicFilter};
use crate::types::{Protocol, QoS};
use crate::PublishProperties;

/// Messages a session queues (while online: before the window; offline: all).
const QUEUE: usize = 10_000;
const MAX_PACKET: usize = 16 << 20;

/// A running embedded broker; stops when dropped.
pub struct EmbeddedBroker {
    addr: SocketAddr,
    task: JoinHandle<()>,
    router: Arc<Mutex<Router>>,
}

impl EmbeddedBroker {
    /// Listens on `listen` (`127.0.0.1:0` picks a free port).
    pub async fn start(listen: &str) -> std::io::Result<EmbeddedBroker> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let router = Arc::new(Mutex::new(Router::default()));
        let routes = router.clone();
        let task = tokio::spawn(async move {
            let mut next_id = 0u64;
            loop {
                let Ok((sock, peer)) = listener.accept().await else {
                    continue;
                };
                let _ = sock.set_nodelay(true);
                next_id += 1;
                let router = router.clone();
                let id = next_id;
                tokio::spawn(async move {
                    if let Err(e) = Conn::run(sock, router, id).await {
                        tracing::debug!(%peer, error = %e, "Embedded broker: connection ended.");
                    }
                });
            }
        });
        Ok(EmbeddedBroker {
            addr,
            task,
            router: routes,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Messages the broker accepted (acknowledged to their publishers) and
    /// has not delivered yet: queued for a session, or sent and not
    /// acknowledged by the subscriber. A pipeline drains this to zero
    /// before its sources stop, so nothing it was handed is lost.
    pub fn undelivered(&self) -> usize {
        let r = self.router.lock().expect("router lock");
        let queued: usize = r
            .sessions
            .values()
            .map(|s| s.tx.max_capacity() - s.tx.capacity() + s.unacked.len())
            .sum();
        queued + r.inflight.load(Ordering::Relaxed)
    }
}

impl Drop for EmbeddedBroker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A message on its way to one subscriber.
#[derive(Clone, Debug)]
struct Outbound {
    topic: ByteStr,
    payload: Bytes,
    qos: QoS,
    retain: bool,
    properties: Option<Box<PublishProperties>>,
}

struct Session {
    subs: Vec<(TopicFilter, QoS)>,
    tx: mpsc::Sender<Outbound>,
    /// Held here while no connection owns the session.
    rx: Option<mpsc::Receiver<Outbound>>,
    /// Deliveries not acknowledged when the last connection ended.
    unacked: VecDeque<Outbound>,
    /// The connection that owns the session, and how to make it let go.
    owner: Option<(u64, Option<oneshot::Sender<()>>)>,
    clean: bool,
}

#[derive(Default)]
struct Router {
    sessions: HashMap<String, Session>,
    retained: HashMap<String, Outbound>,
    /// Deliveries sent on a connection and not acknowledged yet, all
    /// connections together (kept by the connections, read by `undelivered`).
    inflight: Arc<AtomicUsize>,
}

impl Router {
    /// Every session that wants `topic`, each once, at the highest QoS of
    /// its matching filters (capped by the message's).
    fn targets(&self, topic: &str, qos: QoS) -> Vec<(String, mpsc::Sender<Outbound>, QoS, bool)> {
        self.sessions
            .iter()
            .filter_map(|(id, s)| {
                let q = s
                    .subs
                    .iter()
                    .filter(|(f, _)| f.matches(topic))
                    .map(|(_, q)| *q)
                    .max()?;
                Some((id.clone(), s.tx.clone(), q.min(qos), s.owner.is_some()))
            })
            .collect()
    }
}

/// Queues a message for every matching session, keeping it if retained.
/// Returns the online sessions whose queue is full: the publish waits for
/// them ([`Routing`]). An offline session's full queue drops the message
/// for it (its limit, as brokers have one).
fn route(router: &Mutex<Router>, msg: &Outbound) -> Vec<Waiting> {
    let targets = {
        let mut r = router.lock().expect("router lock");
        if msg.retain {
            if msg.payload.is_empty() {
                r.retained.remove(msg.topic.as_str());
            } else {
                r.retained.insert(msg.topic.to_string(), msg.clone());
            }
        }
        r.targets(&msg.topic, msg.qos)
    };
    targets
        .into_iter()
        .filter_map(|(client_id, tx, qos, online)| {
            let w = Waiting { client_id, tx, qos };
            w.offer(msg, online).then_some(w)
        })
        .collect()
}

/// A session that has not taken a message yet because its queue is full.
struct Waiting {
    client_id: String,
    tx: mpsc::Sender<Outbound>,
    qos: QoS,
}

impl Waiting {
    /// Tries to queue the message; true while it must still wait.
    fn offer(&self, msg: &Outbound, online: bool) -> bool {
        let m = Outbound {
            qos: self.qos,
            retain: false,
            ..msg.clone()
        };
        match self.tx.try_send(m) {
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => false,
            Err(mpsc::error::TrySendError::Full(_)) if online => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(client_id = %self.client_id, topic = %msg.topic, "Embedded broker: an offline session's queue is full; message dropped for it.");
                false
            }
        }
    }
}

/// A publish waiting for room in subscribers' queues. Its publisher gets
/// no acknowledgement and is not read from meanwhile (back-pressure), while
/// the connection keeps delivering its own messages, so two clients
/// publishing to each other cannot block one another.
struct Routing {
    msg: Outbound,
    waiting: Vec<Waiting>,
    /// PUBACK or PUBREC to send once every subscriber has it.
    ack: Option<(AckKind, u16)>,
}

impl Routing {
    /// Offers the message again; true when every subscriber has it.
    fn retry(&mut self, router: &Mutex<Router>) -> bool {
        let online: HashSet<String> = {
            let r = router.lock().expect("router lock");
            self.waiting
                .iter()
                .filter(|w| {
                    r.sessions
                        .get(&w.client_id)
                        .is_some_and(|s| s.owner.is_some())
                })
                .map(|w| w.client_id.clone())
                .collect()
        };
        let msg = &self.msg;
        self.waiting
            .retain(|w| w.offer(msg, online.contains(&w.client_id)));
        self.waiting.is_empty()
    }
}

/// A session taken over by a new connection.
struct Attached {
    client_id: String,
    session_present: bool,
    /// The session's queue, now read by this connection.
    rx: mpsc::Receiver<Outbound>,
    /// Deliveries the last connection left unacknowledged, sent again first.
    resend: VecDeque<Outbound>,
    /// Fires when another connection takes the session over.
    kicked: oneshot::Receiver<()>,
}

/// One client connection.
struct Conn {
    sock: TcpStream,
    protocol: Protocol,
    out: BytesMut,
    /// Deliveries waiting for PUBACK/PUBCOMP, by packet id, in send order.
    inflight: VecDeque<(u16, Outbound)>,
    /// The broker-wide count of `inflight`s.
    inflight_total: Arc<AtomicUsize>,
    next_pkid: u16,
    window: usize,
    /// A publish waiting for room in subscribers' queues.
    routing: Option<Routing>,
}

impl Conn {
    async fn run(sock: TcpStream, router: Arc<Mutex<Router>>, id: u64) -> std::io::Result<()> {
        let mut conn = Conn {
            sock,
            protocol: Protocol::V311,
            out: BytesMut::with_capacity(64 * 1024),
            inflight: VecDeque::new(),
            inflight_total: router.lock().expect("router lock").inflight.clone(),
            next_pkid: 0,
            window: 1000,
            routing: None,
        };
        let mut buf = BytesMut::with_capacity(64 * 1024);
        let connect = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match codec::decode(&mut buf, Protocol::V311, MAX_PACKET) {
                    Ok(Some(Packet::Connect(c))) => return Ok(c),
                    Ok(Some(_)) | Err(_) => return Err(invalid("expected CONNECT")),
                    Ok(None) => {}
                }
                if conn.sock.read_buf(&mut buf).await? == 0 {
                    return Err(invalid("closed before CONNECT"));
                }
            }
        })
        .await
        .map_err(|_| invalid("no CONNECT within 10 s"))??;
        conn.protocol = connect.protocol;
        if conn.protocol == Protocol::V5 {
            conn.window = connect.properties.receive_maximum.unwrap_or(u16::MAX) as usize;
        }
        let Some(Attached {
            client_id,
            session_present,
            mut rx,
            resend,
            kicked,
        }) = Self::attach(&router, &connect, id).await
        else {
            // 3.1.1: 0x02 identifier rejected; 5: 0x85.
            let code = if conn.protocol == Protocol::V5 {
                0x85
            } else {
                0x02
            };
            conn.send(&Packet::ConnAck(ConnAck {
                code,
                ..Default::default()
            }));
            conn.sock.write_all(&conn.out).await?;
            return Ok(());
        };
        conn.send(&Packet::ConnAck(ConnAck {
            session_present,
            ..Default::default()
        }));
        for m in resend {
            conn.deliver(m, true);
        }
        let result = conn
            .serve(&router, &connect, &client_id, &mut buf, &mut rx, kicked)
            .await;
        // Hand the session back: a persistent one keeps its queue and the
        // deliveries still unacknowledged (sent again with DUP next time).
        conn.inflight_total
            .fetch_sub(conn.inflight.len(), Ordering::Relaxed);
        let clean_exit = matches!(result, Ok(true));
        let will = connect.will.as_ref().filter(|_| !clean_exit).cloned();
        {
            let mut r = router.lock().expect("router lock");
            let owned = r
                .sessions
                .get(&client_id)
                .is_some_and(|s| matches!(s.owner, Some((o, _)) if o == id));
            if owned {
                let s = r.sessions.get_mut(&client_id).expect("checked");
                if s.clean {
                    r.sessions.remove(&client_id);
                } else {
                    s.owner = None;
                    s.rx = Some(rx);
                    s.unacked = conn.inflight.drain(..).map(|(_, m)| m).collect();
                }
            }
        }
        if let Some(w) = will {
            let will = Outbound {
                topic: ByteStr::from(w.topic),
                payload: w.payload,
                qos: w.qos,
                retain: w.retain,
                properties: None,
            };
            // Nobody waits for a will: it goes where there is room.
            for full in route(&router, &will) {
                tracing::warn!(client_id = %full.client_id, topic = %will.topic, "Embedded broker: a subscriber's queue is full; last will dropped for it.");
            }
        }
        result.map(|_| ())
    }

    /// Takes over (or creates) the client's session. `None`: empty client
    /// id with a persistent session, which MQTT refuses.
    async fn attach(router: &Mutex<Router>, c: &Connect, id: u64) -> Option<Attached> {
        let client_id = if c.client_id.is_empty() {
            if !c.clean_start {
                return None;
            }
            format!("embedded-{id}")
        } else {
            c.client_id.clone()
        };
        // A connection that still owns the session is told to let go; its
        // queue comes back when it has.
        for _ in 0..200 {
            if let Some(attached) = Self::try_attach(router, c, id, &client_id) {
                return Some(attached);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        None
    }

    /// `None` while another connection still owns the session (it was told to let go).
    fn try_attach(
        router: &Mutex<Router>,
        c: &Connect,
        id: u64,
        client_id: &str,
    ) -> Option<Attached> {
        let mut r = router.lock().expect("router lock");
        let (kick_tx, kick_rx) = oneshot::channel();
        match r.sessions.get_mut(client_id) {
            Some(s) if s.owner.is_some() => {
                if let Some(kick) = s.owner.as_mut().and_then(|(_, k)| k.take()) {
                    let _ = kick.send(());
                }
                None
            }
            Some(s) if !c.clean_start => {
                s.owner = Some((id, Some(kick_tx)));
                s.clean = false;
                let rx = s.rx.take().expect("an unowned session holds its queue");
                Some(Attached {
                    client_id: client_id.to_owned(),
                    session_present: true,
                    rx,
                    resend: std::mem::take(&mut s.unacked),
                    kicked: kick_rx,
                })
            }
            _ => {
                let (tx, rx) = mpsc::channel(QUEUE);
                r.sessions.insert(
                    client_id.to_owned(),
                    Session {
                        subs: Vec::new(),
                        tx,
                        rx: None,
                        unacked: VecDeque::new(),
                        owner: Some((id, Some(kick_tx))),
                        clean: c.clean_start,
                    },
                );
                Some(Attached {
                    client_id: client_id.to_owned(),
                    session_present: false,
                    rx,
                    resend: VecDeque::new(),
                    kicked: kick_rx,
                })
            }
        }
    }

    fn send(&mut self, p: &Packet) {
        encode(p, self.protocol, &mut self.out);
    }

    fn deliver(&mut self, m: Outbound, dup: bool) {
        let pkid = if m.qos == QoS::AtMostOnce {
            0
        } else {
            self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
            self.next_pkid
        };
        let p = Publish {
            topic: m.topic.clone(),
            payload: m.payload.clone(),
            qos: m.qos,
            retain: m.retain,
            dup: dup && m.qos != QoS::AtMostOnce,
            pkid,
            properties: if self.protocol == Protocol::V5 {
                m.properties.clone()
            } else {
                None
            },
        };
        encode_publish(&p, self.protocol, &mut self.out);
        if m.qos != QoS::AtMostOnce {
            self.inflight.push_back((pkid, m));
            self.inflight_total.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Serves until the connection ends; `Ok(true)` for a DISCONNECT.
    async fn serve(
        &mut self,
        router: &Mutex<Router>,
        connect: &Connect,
        client_id: &str,
        buf: &mut BytesMut,
        rx: &mut mpsc::Receiver<Outbound>,
        mut kicked: oneshot::Receiver<()>,
    ) -> std::io::Result<bool> {
        let keep_alive = match connect.keep_alive {
            0 => Duration::from_secs(24 * 3600),
            k => Duration::from_secs(k as u64) * 3 / 2,
        };
        // QoS 2 packet ids received and not yet released (PUBREL).
        let mut qos2_in: HashSet<u16> = HashSet::new();
        loop {
            // Packets already read, unless a publish waits for room.
            while self.routing.is_none() {
                match codec::decode(buf, self.protocol, MAX_PACKET)
                    .map_err(|e| invalid(&e.to_string()))?
                {
                    Some(p) => {
                        if !self.handle(p, router, client_id, &mut qos2_in).await? {
                            return Ok(true);
                        }
                    }
                    None => break,
                }
            }
            if !self.out.is_empty() {
                let out = self.out.split();
                self.sock.write_all(&out).await?;
            }
            let room = self.inflight.len() < self.window;
            let blocked = self.routing.is_some();
            tokio::select! {
                n = tokio::time::timeout(keep_alive, self.sock.read_buf(buf)), if !blocked => {
                    match n {
                        Err(_) => return Err(invalid("keep-alive expired")),
                        Ok(Err(e)) => return Err(e),
                        Ok(Ok(0)) => return Err(invalid("closed without DISCONNECT")),
                        Ok(Ok(_)) => {}
                    }
                }
                m = rx.recv(), if room => match m {
                    Some(m) => {
                        self.deliver(m, false);
                        // Fill the window without a syscall per message.
                        while self.inflight.len() < self.window && self.out.len() < 256 * 1024 {
                            match rx.try_recv() {
                                Ok(m) => self.deliver(m, false),
                                Err(_) => break,
                            }
                        }
                    }
                    None => return Err(invalid("session queue closed")),
                },
                _ = tokio::time::sleep(Duration::from_millis(2)), if blocked => {
                    let routing = self.routing.as_mut().expect("blocked");
                    if routing.retry(router) {
                        if let Some((kind, pkid)) = routing.ack {
                            encode_ack(kind, pkid, &mut self.out);
                        }
                        self.routing = None;
                    }
                }
                _ = &mut kicked => return Err(invalid("taken over by a new connection")),
            }
        }
    }

    /// One packet from the client; `Ok(false)` on DISCONNECT.
    async fn handle(
        &mut self,
        p: Packet,
        router: &Mutex<Router>,
        client_id: &str,
        qos2_in: &mut HashSet<u16>,
    ) -> std::io::Result<bool> {
        match p {
            Packet::Publish(p) => {
                validate_topic_name(&p.topic).map_err(|e| invalid(&e.to_string()))?;
                let fresh = p.qos != QoS::ExactlyOnce || qos2_in.insert(p.pkid);
                let ack = match p.qos {
                    QoS::AtMostOnce => None,
                    QoS::AtLeastOnce => Some((AckKind::PubAck, p.pkid)),
                    QoS::ExactlyOnce => Some((AckKind::PubRec, p.pkid)),
                };
                let mut waiting = Vec::new();
                let mut msg = None;
                if fresh {
                    let mut properties = p.properties;
                    if let Some(props) = properties.as_mut() {
                        props.topic_alias = None;
                        props.subscription_identifiers.clear();
                    }
                    let m = Outbound {
                        topic: p.topic,
                        payload: p.payload,
                        qos: p.qos,
                        retain: p.retain,
                        properties,
                    };
                    waiting = route(router, &m);
                    msg = Some(m);
                }
                match msg {
                    Some(msg) if !waiting.is_empty() => {
                        self.routing = Some(Routing { msg, waiting, ack });
                    }
                    _ => {
                        if let Some((kind, pkid)) = ack {
                            encode_ack(kind, pkid, &mut self.out);
                        }
                    }
                }
            }
            Packet::Ack(a) => match a.kind {
                AckKind::PubRel => {
                    qos2_in.remove(&a.pkid);
                    encode_ack(AckKind::PubComp, a.pkid, &mut self.out);
                }
                AckKind::PubRec => encode_ack(AckKind::PubRel, a.pkid, &mut self.out),
                AckKind::PubAck | AckKind::PubComp => {
                    if let Some(i) = self.inflight.iter().position(|(id, _)| *id == a.pkid) {
                        self.inflight.remove(i);
                        self.inflight_total.fetch_sub(1, Ordering::Relaxed);
                    }
                }
            },
            Packet::Subscribe(s) => {
                let mut codes = Vec::with_capacity(s.filters.len());
                let mut retained = Vec::new();
                {
                    let mut r = router.lock().expect("router lock");
                    for (filter, opts) in &s.filters {
                        let ok = validate_filter(filter).is_ok() && !filter.starts_with("$share/");
                        let tf = TopicFilter::new(filter.clone()).ok().filter(|_| ok);
                        let Some(tf) = tf else {
                            // 0x80 failure; 5: 0x9E shared subscriptions not supported / 0x8F invalid.
                            codes.push(match (self.protocol, filter.starts_with("$share/")) {
                                (Protocol::V5, true) => 0x9E,
                                (Protocol::V5, false) => 0x8F,
                                _ => 0x80,
                            });
                            continue;
                        };
                        if opts.retain_handling != 2 {
                            retained.extend(
                                r.retained
                                    .values()
                                    .filter(|m| tf.matches(&m.topic))
                                    .map(|m| Outbound {
                                        qos: m.qos.min(opts.qos),
                                        ..m.clone()
                                    }),
                            );
                        }
                        let session = r.sessions.get_mut(client_id).expect("attached");
                        session.subs.retain(|(f, _)| f.as_str() != filter);
                        session.subs.push((tf, opts.qos));
                        codes.push(opts.qos as u8);
                    }
                }
                self.send(&Packet::SubAck(SubAck {
                    pkid: s.pkid,
                    codes,
                    reason_string: None,
                }));
                for m in retained {
                    self.deliver(m, false);
                }
            }
            Packet::Unsubscribe(u) => {
                {
                    let mut r = router.lock().expect("router lock");
                    let session = r.sessions.get_mut(client_id).expect("attached");
                    session
                        .subs
                        .retain(|(f, _)| !u.filters.iter().any(|x| x == f.as_str()));
                }
                self.send(&Packet::UnsubAck(UnsubAck {
                    pkid: u.pkid,
                    codes: vec![0; u.filters.len()],
                }));
            }
            Packet::PingReq => self.send(&Packet::PingResp),
            Packet::Disconnect(_) => {
                if !self.out.is_empty() {
                    let out = self.out.split();
                    self.sock.write_all(&out).await?;
                }
                return Ok(false);
            }
            _ => return Err(invalid("unexpected packet from a client")),
        }
        Ok(true)
    }
}

fn invalid(msg: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Client, ConnectOptions, Message, Subscription};

    fn opts(addr: SocketAddr, id: &str, protocol: Protocol) -> ConnectOptions {
        let mut o = ConnectOptions::new(&format!("mqtt://{addr}")).unwrap();
        o.client_id = Some(id.into());
        o.protocol = protocol;
        o
    }

    #[tokio::test]
    async fn routes_every_qos_with_wildcards_and_retained() {
        let b = EmbeddedBroker::start("127.0.0.1:0").await.unwrap();
        for protocol in [Protocol::V311, Protocol::V5] {
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
}
