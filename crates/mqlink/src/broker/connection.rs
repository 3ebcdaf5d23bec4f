//! One client connection: CONNECT, then a loop that reads packets, writes
//! deliveries from the session's queue, and waits — on the socket, on the
//! session's notifications, on room in subscribers' queues, on keep-alive
//! — never on a polling timer.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::{sleep_until, timeout};

use super::budget::Held;
use super::router::{split_shared, Router, Waiting};
use super::session::{Delivery, Inflight, Message, Offer, Session, SessionState};
use super::shown::Shown;
use super::tree::too_deep;
use super::wire::{self, ConnectError};
use crate::codec::{
    self, encode, encode_ack, encode_publish, publish_size, Ack, AckKind, ByteStr,
    ConnAckProperties, Connect, DecodeError, Disconnect, Packet, Publish, SubAck, SubscribeOptions,
    UnsubAck,
};
use crate::topic::{validate_filter, validate_topic_name};
use crate::types::{Protocol, QoS};

/// Deliveries are written while less than this is waiting to go out.
const OUT_HIGH: usize = 256 * 1024;
/// Read in steps of this much (a buffer only grows with what a client sent).
const READ_STEP: usize = 8 * 1024;

/// Why a connection ended.
#[derive(Debug)]
enum End {
    /// DISCONNECT; `true` when the will is to be published (reason 0x04).
    Disconnect(bool),
    /// Closed, timed out, broke the protocol or was told to go.
    Abnormal(&'static str),
}

/// A client's byte stream: TCP, or TLS over TCP.
pub(super) trait Io: AsyncRead + AsyncWrite + Unpin + Send {
    type Rd<'a>: AsyncRead + Unpin + Send
    where
        Self: 'a;
    type Wr<'a>: AsyncWrite + Unpin + Send
    where
        Self: 'a;
    /// Read and write halves, used at the same time by one task.
    fn halves(&mut self) -> (Self::Rd<'_>, Self::Wr<'_>);
}

impl Io for TcpStream {
    type Rd<'a> = tokio::net::tcp::ReadHalf<'a>;
    type Wr<'a> = tokio::net::tcp::WriteHalf<'a>;
    fn halves(&mut self) -> (Self::Rd<'_>, Self::Wr<'_>) {
        self.split()
    }
}

#[cfg(feature = "tls")]
impl Io for tokio_rustls::server::TlsStream<TcpStream> {
    // A TLS stream has one state for both directions: tokio's split
    // shares it behind a lock that is never contended (one task).
    type Rd<'a> = tokio::io::ReadHalf<&'a mut Self>;
    type Wr<'a> = tokio::io::WriteHalf<&'a mut Self>;
    fn halves(&mut self) -> (Self::Rd<'_>, Self::Wr<'_>) {
        tokio::io::split(self)
    }
}

/// Reads until a whole CONNECT is in `buf` (within the connect timeout).
async fn read_connect<S: Io>(
    sock: &mut S,
    buf: &mut BytesMut,
    held: &mut Held,
    router: &Router,
) -> io::Result<()> {
    let max_packet = router.config.max_packet_size as usize;
    let read = async {
        loop {
            let header = codec::read_fixed_header(buf).map_err(|_| invalid("malformed length"))?;
            if let Some((h, len)) = header {
                if buf[0] != 0x10 {
                    return Err(invalid("first packet is not CONNECT"));
                }
                if h + len > max_packet {
                    return Err(invalid("CONNECT over the maximum packet size"));
                }
                if buf.len() >= h + len {
                    return Ok(());
                }
            }
            if !make_room(buf, held) {
                return Err(invalid("incomplete packets over max_incomplete_bytes"));
            }
            if sock.read_buf(buf).await? == 0 {
                return Err(invalid("closed before CONNECT"));
            }
        }
    };
    timeout(router.config.connect_timeout, read)
        .await
        .map_err(|_| invalid("no CONNECT within the connect timeout"))?
}

/// Decodes the CONNECT in `buf` with the codec; a refusal is answered.
async fn accept_connect<S: Io>(
    sock: &mut S,
    buf: &mut BytesMut,
    max_packet: usize,
) -> io::Result<Connect> {
    let connect = match wire::decode_connect(buf, max_packet) {
        Ok(c) => c,
        Err(ConnectError::UnsupportedLevel) => {
            // [MQTT-3.1.2-2]: 0x01 unacceptable protocol version, in 3.1.1's format.
            sock.write_all(&[0x20, 0x02, 0x00, 0x01]).await?;
            return Err(invalid("unsupported protocol level"));
        }
        Err(ConnectError::AuthMethod(protocol)) => {
            let why = "enhanced authentication is not supported";
            refuse(sock, protocol, 0x8C, why).await?;
            return Err(invalid(why));
        }
        Err(ConnectError::Malformed(what, Protocol::V5)) => {
            refuse(sock, Protocol::V5, 0x81, &what).await?;
            return Err(invalid(&what));
        }
        Err(ConnectError::Malformed(what, _)) => return Err(invalid(&what)),
    };
    if let Some(w) = &connect.will {
        if validate_topic_name(&w.topic).is_err() || too_deep(&w.topic) {
            // 0x90 Topic Name invalid; 3.1.1 has no code for it: closed.
            if connect.protocol == Protocol::V5 {
                refuse(sock, connect.protocol, 0x90, "invalid will topic").await?;
            }
            return Err(invalid("invalid will topic"));
        }
    }
    Ok(connect)
}

/// Serves one client connection until it ends.
pub(super) async fn serve<S: Io>(mut sock: S, router: Arc<Router>, conn_id: u64) -> io::Result<()> {
    let cfg = &router.config;
    let mut buf = BytesMut::new();
    let mut held = Held::new(router.incomplete.clone());
    read_connect(&mut sock, &mut buf, &mut held, &router).await?;
    let connect = accept_connect(&mut sock, &mut buf, cfg.max_packet_size as usize).await?;
    let protocol = connect.protocol;
    let v5 = protocol == Protocol::V5;
    let password = connect.password.as_ref().map(|p| p.expose().as_bytes());
    if !cfg.authenticate(connect.username.as_deref(), password) {
        tracing::info!(client_id = %Shown(&connect.client_id), username = %Shown(connect.username.as_deref().unwrap_or("")), "Embedded broker: authentication failed.");
        // Anonymous: not authorized (0x87 / 0x05); else bad user name or password.
        let code = match (v5, connect.username.is_some()) {
            (true, true) => 0x86,
            (true, false) => 0x87,
            (false, true) => 0x04,
            (false, false) => 0x05,
        };
        refuse(&mut sock, protocol, code, "bad user name or password").await?;
        return Err(invalid("authentication failed"));
    }
    let mut server_keep_alive = None;
    let keep_alive = match connect.keep_alive {
        0 if cfg.allow_zero_keep_alive => None,
        0 if v5 => {
            server_keep_alive = Some(cfg.server_keep_alive);
            Some(cfg.server_keep_alive)
        }
        0 => {
            // 3.1.1 cannot be told another keep-alive: refused, as Mosquitto
            // does when configured with a maximum keep-alive.
            refuse(&mut sock, protocol, 0x02, "keep-alive 0 is not allowed").await?;
            return Err(invalid("keep-alive 0"));
        }
        k => Some(k),
    };
    let mut assigned = None;
    let client_id = if connect.client_id.is_empty() {
        if !v5 && !connect.clean_start {
            // [MQTT-3.1.3-8]: 0x02 identifier rejected.
            refuse(&mut sock, protocol, 0x02, "empty client id").await?;
            return Err(invalid("empty client id with a persistent session"));
        }
        let id = format!("mqlink-{}", router.key());
        assigned = v5.then(|| id.clone());
        id
    } else {
        connect.client_id.clone()
    };
    let expiry = match (v5, connect.clean_start) {
        (true, _) => connect.properties.session_expiry_interval.unwrap_or(0),
        (false, true) => 0,
        (false, false) => u32::MAX,
    };
    let kick = Arc::new(Notify::new());
    let attached = router.attach(&client_id, connect.clean_start, conn_id, kick.clone());
    let mut conn = Conn {
        router: router.clone(),
        session: attached.session,
        protocol,
        conn_id,
        out: BytesMut::new(),
        window: match connect.properties.receive_maximum {
            Some(n) if v5 => (n as usize).min(cfg.max_inflight_messages),
            _ => cfg.max_inflight_messages,
        },
        client_max_packet: connect.properties.maximum_packet_size.map(|n| n as usize),
        aliases: HashMap::new(),
        pending: VecDeque::new(),
        routing: None,
        expiry,
        connect_expiry: expiry,
        held,
    };
    let ack = ConnAckProperties {
        maximum_packet_size: Some(cfg.max_packet_size),
        receive_maximum: Some(cfg.receive_maximum),
        assigned_client_identifier: assigned,
        topic_alias_maximum: Some(cfg.topic_alias_maximum).filter(|n| *n > 0),
        server_keep_alive,
        ..Default::default()
    };
    wire::encode_connack(attached.present, 0, ack, protocol, &mut conn.out);
    tracing::debug!(client_id = %Shown(&client_id), ?protocol, present = attached.present, "Embedded broker: client connected.");
    conn.resend();
    let (end, sock) = conn.run(sock, buf, keep_alive, kick).await;
    let linger = !matches!(
        end,
        End::Abnormal("closed without DISCONNECT" | "read error")
    );
    let will = match end {
        End::Disconnect(will) => {
            tracing::debug!(client_id = %Shown(&client_id), "Embedded broker: client disconnected.");
            connect.will.filter(|_| will).map(wire::Will::from)
        }
        End::Abnormal(why) => {
            tracing::debug!(client_id = %Shown(&client_id), why, "Embedded broker: connection lost.");
            connect.will.map(wire::Will::from)
        }
    };
    router.detach(&conn.session, conn_id, conn.expiry);
    if let Some(will) = will {
        router.publish_will(&conn.session, will, conn.expiry);
    }
    if linger {
        half_close(sock).await;
    }
    Ok(())
}

/// Room to read into (a buffer only grows with what a client sent),
/// charged to the incomplete-packet budget; false when it is spent.
fn make_room(buf: &mut BytesMut, held: &mut Held) -> bool {
    crate::codec::reserve_for_read(buf, 1024, READ_STEP);
    held.resize(buf.capacity())
}

/// When the broker ends a connection, it half-closes and reads what the
/// client still sends (briefly): closing with unread bytes would reset the
/// connection and lose the DISCONNECT just written.
async fn half_close<S: Io>(mut sock: S) {
    let _ = sock.shutdown().await;
    let _ = timeout(Duration::from_secs(1), async {
        let mut sink = [0u8; 4096];
        while matches!(sock.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}

/// CONNACK with a refusal.
async fn refuse<S: Io>(sock: &mut S, protocol: Protocol, code: u8, reason: &str) -> io::Result<()> {
    let mut out = BytesMut::new();
    let ack = ConnAckProperties {
        reason_string: (protocol == Protocol::V5).then(|| reason.to_owned()),
        ..Default::default()
    };
    wire::encode_connack(false, code, ack, protocol, &mut out);
    sock.write_all(&out).await
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_owned())
}

struct Conn {
    router: Arc<Router>,
    session: Arc<Session>,
    protocol: Protocol,
    conn_id: u64,
    out: BytesMut,
    /// Deliveries in flight at most (the client's receive maximum).
    window: usize,
    /// The client's Maximum Packet Size: larger deliveries are dropped for it.
    client_max_packet: Option<usize>,
    /// Topic aliases the client set (client → broker).
    aliases: HashMap<u16, ByteStr>,
    /// Retained messages for new subscriptions, sent before the queue.
    pending: VecDeque<Delivery>,
    /// A publish waiting for room in subscribers' queues, and its acknowledgement.
    routing: Option<(Vec<Waiting>, Option<AckKind>, u16)>,
    /// Session expiry in seconds when this connection ends (DISCONNECT may change it).
    expiry: u32,
    connect_expiry: u32,
    /// The read buffer's charge to `max_incomplete_bytes`.
    held: Held,
}

/// A protocol error: DISCONNECT with `code` on MQTT 5, then close.
struct Violation(u8, &'static str);

impl Conn {
    fn v5(&self) -> bool {
        self.protocol == Protocol::V5
    }

    /// Sends again what the session has in flight, with the original
    /// packet ids: PUBLISH with DUP, or PUBREL where PUBREC came ([MQTT-4.4.0-1]).
    fn resend(&mut self) {
        let session = self.session.clone();
        let s = session.lock();
        for f in &s.inflight {
            if f.released {
                encode_ack(AckKind::PubRel, f.pkid, &mut self.out);
            } else {
                let p = self.publish_for(&f.delivery, f.pkid, true, Instant::now());
                encode_publish(&p, self.protocol, &mut self.out);
            }
        }
    }

    /// The PUBLISH for a delivery: its QoS and retain flag, subscription
    /// identifiers and the message expiry left.
    fn publish_for(&self, d: &Delivery, pkid: u16, dup: bool, now: Instant) -> Publish {
        let m = &d.msg;
        let properties = if self.v5()
            && (m.properties.is_some() || !d.sub_ids.is_empty() || m.expires.is_some())
        {
            let mut p = m.properties.as_deref().cloned().unwrap_or_default();
            p.subscription_identifiers = d.sub_ids.clone();
            p.message_expiry_interval = m
                .expires
                .map(|e| e.saturating_duration_since(now).as_secs_f64().ceil() as u32);
            Some(Box::new(p))
        } else {
            None
        };
        Publish {
            topic: m.topic.clone(),
            payload: m.payload.clone(),
            qos: d.qos,
            retain: d.retain,
            dup: dup && d.qos != QoS::AtMostOnce,
            pkid,
            properties,
        }
    }

    /// Writes deliveries (retained first, then the session's queue) while
    /// the window has room and the output buffer is short.
    fn fill(&mut self) {
        let now = Instant::now();
        let session = self.session.clone();
        let mut s = session.lock();
        if !matches!(s.owner, Some((c, _)) if c == self.conn_id) {
            return;
        }
        let full_before = s.is_full();
        let mut took = false;
        while self.out.len() < OUT_HIGH && s.inflight.len() < self.window {
            let d = match self.pending.pop_front() {
                Some(d) => d,
                None => match s.pop() {
                    Some(d) => {
                        s.taken += 1;
                        took = true;
                        d
                    }
                    None => break,
                },
            };
            self.write_delivery(&mut s, d, now);
        }
        if took {
            s.last_taken = now;
        }
        drop(s);
        if took && full_before {
            session.room.notify_waiters();
        }
    }

    fn write_delivery(&mut self, s: &mut SessionState, d: Delivery, now: Instant) {
        if d.msg.expired(now) {
            return;
        }
        let pkid = if d.qos == QoS::AtMostOnce {
            0
        } else {
            s.next_pkid()
        };
        let p = self.publish_for(&d, pkid, false, now);
        if let Some(max) = self.client_max_packet {
            if publish_size(&p, self.protocol) > max {
                // [MQTT-3.1.2-25]: not sent, as if delivered.
                tracing::debug!(client_id = %Shown(&self.session.client_id), topic = %Shown(&p.topic), max, "Embedded broker: message over the client's maximum packet size; not sent to it.");
                return;
            }
        }
        encode_publish(&p, self.protocol, &mut self.out);
        if d.qos != QoS::AtMostOnce {
            s.inflight.push_back(Inflight {
                pkid,
                delivery: d,
                released: false,
            });
        }
    }

    async fn run<S: Io>(
        &mut self,
        mut sock: S,
        mut buf: BytesMut,
        keep_alive: Option<u16>,
        kick: Arc<Notify>,
    ) -> (End, S) {
        let grace = keep_alive.map(|k| Duration::from_millis(k as u64 * 1500));
        let mut last_read = Instant::now();
        let max_packet = self.router.config.max_packet_size as usize;
        let (mut rd, mut wr) = sock.halves();
        let end = loop {
            // Packets already read, unless a publish waits for room.
            if self.routing.is_none() {
                match self.handle_buffered(&mut buf, max_packet) {
                    Ok(None) => {}
                    Ok(Some(end)) => break end,
                    Err(Violation(code, what)) => {
                        self.disconnect(code);
                        break End::Abnormal(what);
                    }
                }
            }
            self.fill();
            let can_take = {
                let s = self.session.lock();
                s.inflight.len() < self.window && self.out.len() < OUT_HIGH
            };
            let blocked = self.routing.is_some();
            let deadline = grace.map(|g| last_read + g);
            let out = &self.out;
            tokio::select! {
                _ = kick.notified() => break End::Abnormal("taken over or disconnected by the broker"),
                n = rd.read_buf(&mut buf), if !blocked => {
                    match n {
                        Ok(0) => break End::Abnormal("closed without DISCONNECT"),
                        Ok(_) => last_read = Instant::now(),
                        Err(_) => break End::Abnormal("read error"),
                    }
                }
                n = wr.write(out), if !out.is_empty() => match n {
                    Ok(0) | Err(_) => break End::Abnormal("write error"),
                    Ok(n) => self.out.advance(n),
                },
                _ = self.session.ready.notified(), if can_take => {}
                _ = wait_for_room(self.routing.as_ref().map(|r| &r.0[..]), self.router.config.slow_subscriber_timeout), if blocked => {
                    if self.retry_routing() {
                        last_read = Instant::now();
                    }
                }
                _ = sleep_until(deadline.unwrap_or_else(Instant::now).into()), if deadline.is_some() && !blocked => {
                    self.disconnect(0x8D);
                    break End::Abnormal("keep-alive expired");
                }
            }
            if !make_room(&mut buf, &mut self.held) {
                tracing::warn!(client_id = %Shown(&self.session.client_id), max_incomplete_bytes = self.router.incomplete.max(), "Embedded broker: incomplete packets of all connections at their limit; this one's is not taken (closed, MQTT 5: 0x97).");
                self.disconnect(0x97);
                break End::Abnormal("incomplete packets over max_incomplete_bytes");
            }
        };
        // What is left to send (a DISCONNECT, acknowledgements), briefly.
        if !self.out.is_empty() {
            let _ = timeout(Duration::from_secs(1), wr.write_all(&self.out)).await;
        }
        drop((rd, wr));
        (end, sock)
    }

    /// MQTT 5: DISCONNECT with a reason code before the broker closes.
    fn disconnect(&mut self, code: u8) {
        if self.v5() {
            encode(
                &Packet::Disconnect(Disconnect {
                    reason: code,
                    ..Default::default()
                }),
                self.protocol,
                &mut self.out,
            );
        }
    }

    /// Handles the whole packets in `buf`; `Some` when the connection ends.
    fn handle_buffered(
        &mut self,
        buf: &mut BytesMut,
        max_packet: usize,
    ) -> Result<Option<End>, Violation> {
        while self.routing.is_none() {
            // Checked before decoding: a declared length is never allocated.
            match codec::read_fixed_header(buf) {
                Err(_) => return Err(Violation(0x81, "malformed remaining length")),
                Ok(None) => return Ok(None),
                Ok(Some((h, len))) if h + len > max_packet => {
                    return Err(Violation(0x95, "packet over the maximum packet size"))
                }
                Ok(Some((h, len))) if buf.len() < h + len => return Ok(None),
                Ok(Some(_)) => {}
            }
            let packet = match codec::decode(buf, self.protocol, max_packet) {
                Ok(Some(p)) => p,
                Ok(None) => return Ok(None),
                Err(DecodeError::PacketTooLarge { .. }) => {
                    return Err(Violation(0x95, "packet over the maximum packet size"))
                }
                Err(
                    DecodeError::InvalidPacketType(1)
                    | DecodeError::UnsupportedProtocolLevel(_)
                    | DecodeError::InvalidConnect(_),
                ) => return Err(Violation(0x82, "a second CONNECT")),
                Err(DecodeError::AuthNotSupported) => {
                    return Err(Violation(0x82, "AUTH is not supported"))
                }
                Err(_) => return Err(Violation(0x81, "malformed packet")),
            };
            if let Some(end) = self.handle(packet)? {
                return Ok(Some(end));
            }
        }
        Ok(None)
    }

    fn handle(&mut self, p: Packet) -> Result<Option<End>, Violation> {
        match p {
            Packet::Publish(p) => self.publish(p)?,
            Packet::Ack(a) => self.ack(a),
            Packet::Subscribe(s) => {
                if s.filters.is_empty() {
                    return Err(Violation(0x82, "SUBSCRIBE without a filter"));
                }
                if s.subscription_identifier == Some(0) {
                    return Err(Violation(0x82, "subscription identifier 0"));
                }
                let mut codes = Vec::with_capacity(s.filters.len());
                for (filter, opts) in s.filters {
                    let opts = if self.v5() {
                        opts
                    } else {
                        SubscribeOptions::qos(opts.qos)
                    };
                    let valid = split_shared(&filter).is_some_and(|(g, f)| {
                        validate_filter(f).is_ok()
                            && !too_deep(f)
                            && !(g.is_some() && opts.no_local)
                    }) && opts.retain_handling < 3;
                    if !valid {
                        codes.push(if self.v5() { 0x8F } else { 0x80 });
                        continue;
                    }
                    let id = s.subscription_identifier.filter(|_| self.v5());
                    let Ok(retained) = self.router.subscribe(&self.session, &filter, opts, id)
                    else {
                        // 0x97 Quota exceeded.
                        codes.push(if self.v5() { 0x97 } else { 0x80 });
                        continue;
                    };
                    let now = Instant::now();
                    self.pending
                        .extend(retained.into_iter().filter(|m| !m.expired(now)).map(|msg| {
                            Delivery {
                                qos: msg.qos.min(opts.qos),
                                msg,
                                retain: true,
                                sub_ids: id.into_iter().collect(),
                            }
                        }));
                    codes.push(opts.qos as u8);
                }
                self.send(&Packet::SubAck(SubAck {
                    pkid: s.pkid,
                    codes,
                    reason_string: None,
                }));
            }
            Packet::Unsubscribe(u) => {
                if u.filters.is_empty() {
                    return Err(Violation(0x82, "UNSUBSCRIBE without a filter"));
                }
                let codes = u
                    .filters
                    .iter()
                    .map(|f| {
                        // Too deep to have been subscribed.
                        if !too_deep(f) && self.router.unsubscribe(&self.session, f) {
                            0x00
                        } else {
                            0x11
                        }
                    })
                    .collect();
                self.send(&Packet::UnsubAck(UnsubAck {
                    pkid: u.pkid,
                    codes,
                }));
            }
            Packet::PingReq => self.send(&Packet::PingResp),
            Packet::Connect(_) => return Err(Violation(0x82, "a second CONNECT")),
            Packet::Disconnect(d) => {
                if let Some(e) = d.session_expiry_interval {
                    if self.connect_expiry == 0 && e != 0 {
                        // [MQTT-3.14.2-2]
                        return Err(Violation(
                            0x82,
                            "session expiry set at DISCONNECT after 0 at CONNECT",
                        ));
                    }
                    self.expiry = e;
                }
                return Ok(Some(End::Disconnect(d.reason == 0x04)));
            }
            _ => return Err(Violation(0x82, "a packet a client does not send")),
        }
        Ok(None)
    }

    fn send(&mut self, p: &Packet) {
        encode(p, self.protocol, &mut self.out);
    }

    fn publish(&mut self, mut p: Publish) -> Result<(), Violation> {
        let mut properties = p.properties.take().map(|b| *b).unwrap_or_default();
        if let Some(alias) = properties.topic_alias.take() {
            if alias == 0 || alias > self.router.config.topic_alias_maximum {
                return Err(Violation(0x94, "topic alias out of range"));
            }
            if p.topic.is_empty() {
                match self.aliases.get(&alias) {
                    Some(t) => p.topic = t.clone(),
                    None => return Err(Violation(0x82, "unknown topic alias")),
                }
            } else {
                self.aliases.insert(alias, p.topic.clone());
            }
        }
        if validate_topic_name(&p.topic).is_err() {
            return Err(Violation(0x90, "invalid topic name"));
        }
        if too_deep(&p.topic) {
            return Err(Violation(0x90, "topic name over 200 levels"));
        }
        properties.subscription_identifiers.clear();
        let expires = properties
            .message_expiry_interval
            .take()
            .map(|e| Instant::now() + Duration::from_secs(e as u64));
        let fresh = match p.qos {
            QoS::ExactlyOnce => {
                let mut s = self.session.lock();
                if !s.qos2_in.contains(&p.pkid)
                    && s.qos2_in.len() >= self.router.config.receive_maximum as usize
                {
                    return Err(Violation(0x93, "receive maximum exceeded"));
                }
                s.qos2_in.insert(p.pkid)
            }
            _ => true,
        };
        let ack = match p.qos {
            QoS::AtMostOnce => None,
            QoS::AtLeastOnce => Some(AckKind::PubAck),
            QoS::ExactlyOnce => Some(AckKind::PubRec),
        };
        let waiting = if fresh {
            let msg = Arc::new(Message {
                topic: p.topic,
                payload: p.payload,
                qos: p.qos,
                retain: p.retain,
                properties: (!properties.is_empty()).then(|| Box::new(properties)),
                expires,
                origin: self.session.key,
            });
            self.router.route(&msg)
        } else {
            Vec::new()
        };
        if waiting.is_empty() {
            if let Some(kind) = ack {
                encode_ack(kind, p.pkid, &mut self.out);
            }
        } else {
            self.routing = Some((waiting, ack, p.pkid));
        }
        Ok(())
    }

    fn ack(&mut self, a: Ack) {
        let session = self.session.clone();
        let mut s = session.lock();
        match a.kind {
            AckKind::PubAck | AckKind::PubComp => {
                let want_released = a.kind == AckKind::PubComp;
                if let Some(i) = s.inflight_pos(a.pkid) {
                    if s.inflight[i].released == want_released {
                        s.inflight.remove(i);
                    }
                }
            }
            AckKind::PubRec => match s.inflight_pos(a.pkid) {
                Some(i) if a.reason >= 0x80 => {
                    s.inflight.remove(i);
                }
                Some(i) => {
                    s.inflight[i].released = true;
                    encode_ack(AckKind::PubRel, a.pkid, &mut self.out);
                }
                None => self.ack_not_found(AckKind::PubRel, a.pkid),
            },
            AckKind::PubRel => {
                if s.qos2_in.remove(&a.pkid) {
                    encode_ack(AckKind::PubComp, a.pkid, &mut self.out);
                } else {
                    self.ack_not_found(AckKind::PubComp, a.pkid);
                }
            }
        }
    }

    /// An acknowledgement for a packet id the broker does not know: 0x92 on MQTT 5.
    fn ack_not_found(&mut self, kind: AckKind, pkid: u16) {
        let reason = if self.v5() { 0x92 } else { 0 };
        encode(
            &Packet::Ack(Ack {
                kind,
                pkid,
                reason,
                reason_string: None,
            }),
            self.protocol,
            &mut self.out,
        );
    }

    /// Offers the waiting publish again; true when it went everywhere
    /// (then acknowledged). A subscriber that has taken nothing from its
    /// full queue for the slow-subscriber timeout is disconnected.
    fn retry_routing(&mut self) -> bool {
        let Some((waiting, ack, pkid)) = self.routing.take() else {
            return true;
        };
        let stall = self.router.config.slow_subscriber_timeout;
        let now = Instant::now();
        let mut still = Vec::new();
        for w in waiting {
            match w.session.offer(w.delivery) {
                Offer::Queued | Offer::Dropped => {}
                Offer::Full(delivery, seen) => {
                    let kick = {
                        let mut s = w.session.lock();
                        let idle_since = s.last_taken.max(w.since);
                        let stalled = now.duration_since(idle_since) >= stall && !s.overflowed;
                        s.overflowed |= stalled;
                        stalled
                            .then(|| s.owner.as_ref().map(|(_, k)| k.clone()))
                            .flatten()
                    };
                    if let Some(k) = kick {
                        self.router
                            .counters
                            .slow_disconnects
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        tracing::warn!(client_id = %Shown(&w.session.client_id), timeout = ?stall, "Embedded broker: a subscriber took nothing from its full queue; disconnected (max_queued_messages).");
                        k.notify_one();
                    }
                    still.push(Waiting {
                        session: w.session,
                        delivery,
                        seen,
                        since: w.since,
                    });
                }
            }
        }
        if still.is_empty() {
            if let Some(kind) = ack {
                encode_ack(kind, pkid, &mut self.out);
            }
            true
        } else {
            self.routing = Some((still, ack, pkid));
            false
        }
    }
}

/// Completes when the first waiting session took something from its
/// queue or went offline, or when it has been idle for `stall`.
async fn wait_for_room(waiting: Option<&[Waiting]>, stall: Duration) {
    let Some(w) = waiting.and_then(|w| w.first()) else {
        return std::future::pending().await;
    };
    let notified = w.session.room.notified();
    tokio::pin!(notified);
    notified.as_mut().enable();
    let idle_since = {
        let s = w.session.lock();
        if s.taken != w.seen || s.owner.is_none() || s.closed || !s.is_full() {
            return;
        }
        // Told to go already: wait for it to go offline.
        (!s.overflowed).then(|| s.last_taken.max(w.since))
    };
    match idle_since {
        Some(idle_since) => tokio::select! {
            _ = notified => {}
            _ = sleep_until((idle_since + stall).into()) => {}
        },
        None => notified.await,
    }
}
