//! The network driver: one task that owns the connection and `select!`s over
//! the socket, the application's requests and acknowledgements, and the
//! keep-alive timer. It never waits on the application: deliveries go into
//! a bounded channel. When that is full, QoS 1/2 deliveries wait in an
//! overflow queue (the broker's window, which we announce as receive
//! maximum, bounds it), so SUBACKs and PUBACKs behind them are still read;
//! a QoS 0 delivery makes the driver stop reading (TCP back-pressure)
//! while pings and acks keep flowing.
//!
//! With a journal (the source's local buffer), the deliveries of each read
//! are appended to it instead, and their PUBACKs/PUBRECs written right after
//! the append returned, in arrival order: the application reads them from
//! the journal. A full journal pauses reading as a full channel does.
//!
//! Reading never pauses while a SUBACK or UNSUBACK is awaited: the
//! application may be waiting for that reply before it reads anything, and
//! a broker may send a whole backlog before it (Mosquitto without an
//! in-flight cap does). Deliveries are ordinary deliveries whether they
//! come before or after the SUBACK.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use super::queued::Queued;
use super::state::{Ending, HangUp, HangUps, InAcks, Limits, Outgoing, Quota, Waiter};
use super::transport::{self, Reader, SentProbe, TlsSetup, Writer};
use super::{AckHandle, Delivery, Journal, Request, Stats, Status, Subscription};
use crate::codec::{
    decode, encode, encode_ack, AckKind, ConnAck, Connect, ConnectProperties, Disconnect, Packet,
    SubAck, Subscribe, Unsubscribe, Will,
};
use crate::error::{ConnectError, ConnectionLost, PublishError, Refusal, SubscribeError};
use crate::options::{BrokerUrl, ConnectOptions};
use crate::types::{Protocol, QoS};

/// QoS 1/2 deliveries held beyond the channel before reading pauses anyway
/// (a safety net: the broker's in-flight window normally bounds them). Not
/// applied while a control reply is awaited (see the module docs).
const MAX_OVERFLOW: usize = 70_000;
/// Bytes queued for the socket before the driver stops taking requests.
const HIGH_WATER: usize = 256 * 1024;
const READ_CHUNK: usize = 64 * 1024;
/// QoS 2 publishes in progress on MQTT 3.1.1, which has no receive maximum.
/// Mosquitto counts them against `max_inflight_messages` (20 by default)
/// until PUBREL, and answers a QoS 1 publish arriving when that is used up
/// with PUBACK 0x97 and a disconnect: so stay well below it (see [`Quota`]).
const V311_QOS2_WINDOW: usize = 10;
/// A connection the broker closes within this time after CONNACK counts
/// towards failing the publish it was not answering (see
/// [`Outgoing::dropped_by_broker`]) ...
const QUICK_DROP: Duration = Duration::from_secs(5);
/// ... once it happened this many times in a row.
const DROPS_TO_FAIL: u32 = 3;
/// MQTT 5 DISCONNECT reason: another connection took the client id.
const SESSION_TAKEN_OVER: u8 = 0x8e;

pub(crate) struct AckMsg {
    pub(crate) epoch: u32,
    pub(crate) seq: u64,
}

type SubReply = oneshot::Sender<Result<Vec<QoS>, SubscribeError>>;
type UnsubReply = oneshot::Sender<Result<(), SubscribeError>>;

/// SUBSCRIBE/UNSUBSCRIBE requests; kept until answered, resent after a reconnect.
enum Ctrl {
    /// `reply` is `None` when the driver re-subscribes after session loss.
    Sub {
        subs: Vec<Subscription>,
        reply: Option<SubReply>,
    },
    Unsub {
        filters: Vec<String>,
        reply: UnsubReply,
    },
}

struct Conn {
    rd: Reader,
    wr: Writer,
    probe: SentProbe,
    rbuf: BytesMut,
    connack: ConnAck,
}

/// How `serve` ended without error.
enum Closed {
    /// The application asked to disconnect, or dropped every handle.
    ByApplication,
}

pub(crate) struct Driver {
    opts: ConnectOptions,
    client_id: String,
    tls: Option<TlsSetup>,
    requests: mpsc::Receiver<Request>,
    requests_open: bool,
    acks_tx: mpsc::UnboundedSender<AckMsg>,
    acks_rx: mpsc::UnboundedReceiver<AckMsg>,
    deliveries: mpsc::Sender<Delivery>,
    /// Bytes of `deliveries` and `overflow` the application has not taken.
    queued: Arc<Queued>,
    /// Deliveries waiting for room in `deliveries`, in arrival order.
    overflow: VecDeque<Delivery>,
    status: watch::Sender<Status>,
    stats: Arc<Stats>,
    fail_fast: bool,
    first: Option<oneshot::Sender<Result<(), ConnectError>>>,
    out: Outgoing,
    inc: InAcks,
    /// Connections the broker ended the same way, in a row.
    hangups: HangUps,
    /// Granted subscriptions, made again when the broker lost the session.
    subscriptions: Vec<Subscription>,
    ctrl_queue: VecDeque<Ctrl>,
    ctrl_inflight: HashMap<u16, Ctrl>,
    next_ctrl_pkid: u16,
    disconnect_reply: Option<oneshot::Sender<()>>,
    stopping: bool,
    /// Why the application ended the session ([`Request::Fail`]).
    failed: Option<String>,
    journal: Option<Arc<dyn Journal>>,
    /// Whether this connection appends to `journal` (decided at CONNACK).
    journaling: bool,
    /// Deliveries read and not yet appended, in arrival order ...
    journaled: Vec<Delivery>,
    /// ... and the ack sequences of the QoS 1/2 ones among them.
    journaled_acks: Vec<u64>,
}

impl Driver {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        opts: ConnectOptions,
        client_id: String,
        tls: Option<TlsSetup>,
        requests: mpsc::Receiver<Request>,
        deliveries: mpsc::Sender<Delivery>,
        queued: Arc<Queued>,
        status: watch::Sender<Status>,
        stats: Arc<Stats>,
        fail_fast: bool,
        first: oneshot::Sender<Result<(), ConnectError>>,
        journal: Option<Arc<dyn Journal>>,
    ) -> Self {
        let (acks_tx, acks_rx) = mpsc::unbounded_channel();
        Driver {
            out: Outgoing::new(opts.max_inflight),
            next_ctrl_pkid: opts.max_inflight + 1,
            opts,
            client_id,
            tls,
            requests,
            requests_open: true,
            acks_tx,
            acks_rx,
            deliveries,
            queued,
            overflow: VecDeque::new(),
            status,
            stats,
            fail_fast,
            first: Some(first),
            inc: InAcks::new(),
            hangups: HangUps::default(),
            subscriptions: Vec::new(),
            ctrl_queue: VecDeque::new(),
            ctrl_inflight: HashMap::new(),
            disconnect_reply: None,
            stopping: false,
            failed: None,
            journal,
            journaling: false,
            journaled: Vec::new(),
            journaled_acks: Vec::new(),
        }
    }

    fn protocol(&self) -> Protocol {
        self.opts.protocol
    }

    pub(crate) async fn run(mut self) {
        let brokers = self.opts.brokers.clone();
        let mut attempt: u32 = 0;
        let mut broker_idx = 0usize;
        let mut last_connect_error: Option<ConnectError>;
        let fatal: Option<String> = loop {
            if self.stopping {
                break self.failed.take();
            }
            let broker = &brokers[broker_idx % brokers.len()];
            self.status.send_replace(Status::Connecting);
            let error_text = match self.connect_once(broker).await {
                Ok(conn) => {
                    last_connect_error = None;
                    // `serve` answers `first` once the status says Connected.
                    let began = Instant::now();
                    let traffic = self.traffic();
                    match self.serve(conn, broker).await {
                        Ok(Closed::ByApplication) => break self.failed.take(),
                        Err(lost) => {
                            let by_broker = matches!(
                                lost,
                                ConnectionLost::Closed
                                    | ConnectionLost::Io(_)
                                    | ConnectionLost::Disconnected { .. }
                            );
                            let quick = began.elapsed() < QUICK_DROP;
                            let ending = Ending {
                                by_broker,
                                quick,
                                taken_over: matches!(
                                    lost,
                                    ConnectionLost::Disconnected {
                                        code: SESSION_TAKEN_OVER,
                                        ..
                                    }
                                ),
                                silent: matches!(
                                    lost,
                                    ConnectionLost::Closed | ConnectionLost::Io(_)
                                ),
                                unanswered_filters: self.unanswered_filters(),
                                publishing: self.out.awaiting_answer() || self.traffic() != traffic,
                            };
                            if by_broker && quick {
                                self.out.dropped_by_broker(DROPS_TO_FAIL, self.protocol());
                            } else {
                                self.out.not_dropped();
                            }
                            // A connection the broker ends right after CONNACK
                            // counts as a failed attempt: max_attempts bounds
                            // such loops too.
                            if !quick {
                                attempt = 0;
                            }
                            self.stats.reconnects.fetch_add(1, Ordering::Relaxed);
                            // What the broker says it will never accept ends
                            // the session with that reason, not a loop.
                            if let Some(why) = lost.unsupported() {
                                error!(client_id = %self.client_id, broker = %broker, error = %lost, "The broker does not support what this session asks for.");
                                if let ConnectionLost::Disconnected { code, .. } = lost {
                                    self.refuse_unanswered(code);
                                }
                                break Some(why);
                            }
                            if let Some(h) = self.hangups.ended(ending) {
                                break Some(self.hung_up(h, broker));
                            }
                            warn!(client_id = %self.client_id, broker = %broker, error = %lost, "Connection lost.");
                            lost.to_string()
                        }
                    }
                }
                Err(e) => {
                    // At start, a failover list is tried through before
                    // `connect` fails.
                    let more_brokers = self.first.is_some() && broker_idx + 1 < brokers.len();
                    if !e.is_retryable()
                        || (self.fail_fast && self.first.is_some() && !more_brokers)
                    {
                        if self.first.is_some() {
                            // The caller of `connect` reports it.
                            debug!(broker = %broker, error = %e, "Connection failed.");
                        } else {
                            error!(client_id = %self.client_id, broker = %broker, error = %e, "Connection failed.");
                        }
                        let text = e.to_string();
                        if let Some(first) = self.first.take() {
                            let _ = first.send(Err(e));
                        }
                        break Some(text);
                    }
                    warn!(client_id = %self.client_id, broker = %broker, error = %e, "Connection attempt failed.");
                    // The broker was away: earlier drops were not a publish's doing.
                    self.out.not_dropped();
                    self.hangups.reset();
                    broker_idx += 1;
                    let text = e.to_string();
                    last_connect_error = Some(e);
                    if self.fail_fast && more_brokers {
                        // The next broker of the list, at once.
                        continue;
                    }
                    text
                }
            };
            attempt += 1;
            let max = self.opts.reconnect.max_attempts;
            if max > 0 && attempt > max {
                let text = format!("gave up after {max} reconnect attempts: {error_text}");
                error!(client_id = %self.client_id, attempts = max, error = %error_text, "Giving up reconnecting.");
                if let (Some(first), Some(e)) = (self.first.take(), last_connect_error.take()) {
                    let _ = first.send(Err(e));
                }
                break Some(text);
            }
            self.status.send_replace(Status::Reconnecting {
                error: error_text,
                attempt,
            });
            let delay = self.opts.reconnect.delay(attempt);
            debug!(?delay, attempt, "Reconnecting after a pause.");
            if !self.wait(delay).await {
                break self.failed.take();
            }
        };
        let why = fatal
            .clone()
            .unwrap_or_else(|| "the session was closed by the application".to_owned());
        // The status first: whoever a failed token or reply wakes sees the
        // session as stopped already.
        self.status.send_replace(Status::Stopped { error: fatal });
        self.out.fail_all(&why);
        for ctrl in self
            .ctrl_queue
            .drain(..)
            .chain(self.ctrl_inflight.drain().map(|(_, c)| c))
        {
            match ctrl {
                Ctrl::Sub { reply: Some(r), .. } => {
                    let _ = r.send(Err(SubscribeError::Stopped(why.clone())));
                }
                Ctrl::Unsub { reply, .. } => {
                    let _ = reply.send(Err(SubscribeError::Stopped(why.clone())));
                }
                Ctrl::Sub { reply: None, .. } => {}
            }
        }
        if let Some(r) = self.disconnect_reply.take() {
            let _ = r.send(());
        }
    }

    /// Messages received and publishes confirmed so far: a connection
    /// whose end changes it was in use.
    fn traffic(&self) -> (u64, u64) {
        (
            self.stats.messages_received.load(Ordering::Relaxed),
            self.stats.publishes_confirmed.load(Ordering::Relaxed),
        )
    }

    /// The filters of SUBSCRIBEs sent and not answered.
    fn unanswered_filters(&self) -> Vec<String> {
        self.ctrl_inflight
            .values()
            .filter_map(|c| match c {
                Ctrl::Sub { subs, .. } => Some(subs.iter().map(|s| s.filter.clone())),
                Ctrl::Unsub { .. } => None,
            })
            .flatten()
            .collect()
    }

    /// The broker ended the session with a DISCONNECT saying it does not
    /// support something a subscription asks for (MQTT 5): the SUBSCRIBEs
    /// it did not answer get that refusal, naming their filter.
    fn refuse_unanswered(&mut self, code: u8) {
        let blamed = |f: &str| match code {
            0x9e => f.starts_with("$share/"),
            0xa2 => f.contains(['+', '#']),
            0xa1 => true,
            _ => false,
        };
        let refused: Vec<(u16, String)> = self
            .ctrl_inflight
            .iter()
            .filter_map(|(&pkid, c)| match c {
                Ctrl::Sub {
                    subs,
                    reply: Some(_),
                } => subs
                    .iter()
                    .find(|s| blamed(&s.filter))
                    .map(|s| (pkid, s.filter.clone())),
                _ => None,
            })
            .collect();
        // The others are told the session stopped, as usual.
        for (pkid, filter) in refused {
            if let Some(Ctrl::Sub {
                reply: Some(reply), ..
            }) = self.ctrl_inflight.remove(&pkid)
            {
                let _ = reply.send(Err(SubscribeError::Refused { filter, code }));
            }
        }
    }

    /// The error that ends the session for a streak of hang-ups; the
    /// SUBSCRIBEs the broker hung up on fail with it.
    fn hung_up(&mut self, h: HangUp, broker: &BrokerUrl) -> String {
        match h {
            HangUp::AtSubscribe { mut filters, times } => {
                // The `$share/…` ones first: those are the usual cause.
                filters.sort_by_key(|f| !f.starts_with("$share/"));
                let e = SubscribeError::DroppedByBroker { filters, times };
                error!(client_id = %self.client_id, broker = %broker, error = %e, "Subscribing failed.");
                let subs: Vec<u16> = self
                    .ctrl_inflight
                    .iter()
                    .filter(|(_, c)| matches!(c, Ctrl::Sub { reply: Some(_), .. }))
                    .map(|(&pkid, _)| pkid)
                    .collect();
                for pkid in subs {
                    if let Some(Ctrl::Sub {
                        reply: Some(reply), ..
                    }) = self.ctrl_inflight.remove(&pkid)
                    {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
                e.to_string()
            }
            HangUp::TakenOver { times, explicit } => {
                let e = ConnectError::ClientIdInUse {
                    broker: broker.clone(),
                    client_id: self.client_id.clone(),
                    times,
                    explicit,
                };
                error!(client_id = %self.client_id, broker = %broker, error = %e, "Session taken over.");
                e.to_string()
            }
        }
    }

    /// Sleeps for `d` while still accepting requests. `false` = stop now.
    async fn wait(&mut self, d: Duration) -> bool {
        let sleep = tokio::time::sleep(d);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => return true,
                req = self.requests.recv(), if self.requests_open => match req {
                    Some(r) => {
                        if !self.accept(r) {
                            return false;
                        }
                    }
                    None => self.requests_open = false,
                },
            }
            if self.abandoned() {
                return false;
            }
        }
    }

    /// Nobody can publish or receive any more, and nothing is pending.
    fn abandoned(&self) -> bool {
        !self.requests_open && self.deliveries.is_closed() && self.out.is_idle()
    }

    /// Takes one request. `false` means the application asked to disconnect.
    fn accept(&mut self, req: Request) -> bool {
        match req {
            // Checked against the broker's limits when it is written.
            Request::Publish(p, waiter) => {
                self.stats.publishes_sent.fetch_add(1, Ordering::Relaxed);
                self.out.push(p, waiter);
            }
            Request::Subscribe(subs, reply) => self.ctrl_queue.push_back(Ctrl::Sub {
                subs,
                reply: Some(reply),
            }),
            Request::Unsubscribe(filters, reply) => {
                self.ctrl_queue.push_back(Ctrl::Unsub { filters, reply })
            }
            Request::Disconnect(reply) => {
                self.disconnect_reply = Some(reply);
                self.stopping = true;
                return false;
            }
            Request::Fail(error) => {
                error!(%error, "Session ended by the application.");
                self.failed = Some(error);
                self.stopping = true;
                return false;
            }
        }
        true
    }

    /// One attempt; with `protocol_fallback`, an MQTT 5 CONNECT the broker
    /// refuses is followed at once by a 3.1.1 one, kept if it is answered.
    async fn connect_once(&mut self, broker: &BrokerUrl) -> Result<Conn, ConnectError> {
        let (r, reached) = self.connect_timed(broker).await;
        let refused_v5 = match &r {
            Err(ConnectError::Refused { refusal, .. }) => *refusal == Refusal::UnsupportedProtocol,
            // A 3.1.1 CONNACK read as MQTT 5, or a hang-up.
            Err(ConnectError::Protocol { .. }) => true,
            Err(ConnectError::Io { error, .. }) => {
                reached && error.kind() != io::ErrorKind::TimedOut
            }
            // No answer to the CONNECT (amqtt 0.12), not an unreachable host.
            Err(ConnectError::Timeout { .. }) => reached,
            _ => false,
        };
        if !(self.opts.protocol_fallback && refused_v5) {
            self.opts.protocol_fallback &= r.is_err();
            return r;
        }
        self.opts.protocol = Protocol::V311;
        match self.connect_timed(broker).await.0 {
            Ok(conn) => {
                let why = r.err().map(|e| e.to_string()).unwrap_or_default();
                warn!(%broker, refusal = %why, "The broker does not take MQTT 5; speaking MQTT 3.1.1 (set protocol = \"3.1.1\" / -V 311 to skip the attempt). On 3.1.1 the broker's own in-flight limit is the window (docs/guides/broker-limits.md).");
                self.opts.protocol_fallback = false;
                self.stats.fell_back.store(true, Ordering::Relaxed);
                Ok(conn)
            }
            Err(_) => {
                // The MQTT 5 error says more (the broker may just be down).
                self.opts.protocol = Protocol::V5;
                r
            }
        }
    }

    /// A handshake within `connect_timeout`, and whether the transport
    /// (TCP, TLS, WebSocket) was up, so the CONNECT went out.
    async fn connect_timed(&self, broker: &BrokerUrl) -> (Result<Conn, ConnectError>, bool) {
        let after = self.opts.connect_timeout;
        let reached = AtomicBool::new(false);
        let r = match tokio::time::timeout(after, self.handshake(broker, &reached)).await {
            Ok(r) => r,
            Err(_) => Err(ConnectError::Timeout {
                broker: broker.clone(),
                after,
                v5_unanswered: self.protocol() == Protocol::V5 && reached.load(Ordering::Relaxed),
            }),
        };
        (r, reached.load(Ordering::Relaxed))
    }

    async fn handshake(
        &self,
        broker: &BrokerUrl,
        reached: &AtomicBool,
    ) -> Result<Conn, ConnectError> {
        let (mut rd, mut wr, probe) = transport::connect(broker, self.tls.as_ref()).await?;
        reached.store(true, Ordering::Relaxed);
        let o = &self.opts;
        let v5 = o.protocol == Protocol::V5;
        let connect = connect_packet(o, &self.client_id);
        let io_err = |error: io::Error| transport::read_error(broker, self.tls.as_ref(), error);
        let mut buf = BytesMut::with_capacity(128);
        encode(&Packet::Connect(Box::new(connect)), o.protocol, &mut buf);
        wr.write_all(&buf).await.map_err(io_err)?;
        wr.flush().await.map_err(io_err)?;
        let mut rbuf = BytesMut::with_capacity(READ_CHUNK);
        loop {
            let packet =
                decode(&mut rbuf, o.protocol, o.max_packet_size as usize).map_err(|e| {
                    ConnectError::Protocol {
                        broker: broker.clone(),
                        reason: e.to_string(),
                    }
                })?;
            match packet {
                Some(Packet::ConnAck(c)) if c.code == 0 => {
                    return Ok(Conn {
                        rd,
                        wr,
                        probe,
                        rbuf,
                        connack: c,
                    })
                }
                Some(Packet::ConnAck(c)) => {
                    return Err(ConnectError::Refused {
                        broker: broker.clone(),
                        refusal: Refusal::from_code(c.code, v5),
                        reason: c.properties.reason_string,
                    })
                }
                Some(other) => {
                    return Err(ConnectError::Protocol {
                        broker: broker.clone(),
                        reason: format!("expected CONNACK, got {other:?}"),
                    })
                }
                None => {}
            }
            if rd.read_buf(&mut rbuf).await.map_err(io_err)? == 0 {
                // Brokers that speak only 3.1.1 (RabbitMQ 3.x) hang up on an
                // MQTT 5 CONNECT without a word.
                let why = if self.protocol() == Protocol::V5 {
                    "the broker closed the connection before CONNACK (with MQTT 5 this usually means the broker speaks only MQTT 3.1.1: use -V 311, or protocol = \"3.1.1\")"
                } else {
                    "the broker closed the connection before CONNACK"
                };
                return Err(io_err(io::Error::new(io::ErrorKind::UnexpectedEof, why)));
            }
        }
    }

    fn ctrl_pkid(&mut self) -> u16 {
        // Publishes use ids 1..=max_inflight; control packets use the rest.
        loop {
            let id = self.next_ctrl_pkid;
            self.next_ctrl_pkid = if id == u16::MAX {
                self.opts.max_inflight + 1
            } else {
                id + 1
            };
            if !self.ctrl_inflight.contains_key(&id) {
                return id;
            }
        }
    }

    fn send_ctrl(&mut self, wbuf: &mut BytesMut) {
        while let Some(ctrl) = self.ctrl_queue.pop_front() {
            let pkid = self.ctrl_pkid();
            let packet = match &ctrl {
                Ctrl::Sub { subs, .. } => Packet::Subscribe(Subscribe {
                    pkid,
                    filters: subs.iter().map(|s| (s.filter.clone(), s.options)).collect(),
                    subscription_identifier: None,
                }),
                Ctrl::Unsub { filters, .. } => Packet::Unsubscribe(Unsubscribe {
                    pkid,
                    filters: filters.clone(),
                }),
            };
            encode(&packet, self.protocol(), wbuf);
            self.ctrl_inflight.insert(pkid, ctrl);
        }
    }

    fn on_suback(&mut self, s: SubAck) -> Result<(), ConnectionLost> {
        let Some(ctrl) = self.ctrl_inflight.remove(&s.pkid) else {
            return Ok(());
        };
        let Ctrl::Sub { subs, reply } = ctrl else {
            return Err(ConnectionLost::Protocol(format!(
                "SUBACK for UNSUBSCRIBE packet id {}",
                s.pkid
            )));
        };
        if s.codes.len() != subs.len() {
            return Err(ConnectionLost::Protocol(format!(
                "SUBACK has {} codes for {} filters",
                s.codes.len(),
                subs.len()
            )));
        }
        let mut granted = Vec::with_capacity(subs.len());
        let mut refused = None;
        // By filter: a SUBSCRIBE of 20,000 filters is not 20,000 scans.
        let mut at: std::collections::HashMap<String, usize> = self
            .subscriptions
            .iter()
            .enumerate()
            .map(|(i, x)| (x.filter.clone(), i))
            .collect();
        for (sub, &code) in subs.iter().zip(&s.codes) {
            match QoS::from_u8(code) {
                Some(q) => {
                    granted.push(q);
                    match at.get(&sub.filter) {
                        Some(&i) => self.subscriptions[i] = sub.clone(),
                        None => {
                            at.insert(sub.filter.clone(), self.subscriptions.len());
                            self.subscriptions.push(sub.clone());
                        }
                    }
                    debug!(filter = %sub.filter, granted = %q, "Subscribed.");
                }
                None => {
                    refused.get_or_insert((sub.filter.clone(), code));
                }
            }
        }
        match (reply, refused) {
            (Some(r), Some((filter, code))) => {
                let _ = r.send(Err(SubscribeError::Refused { filter, code }));
            }
            (Some(r), None) => {
                let _ = r.send(Ok(granted));
            }
            (None, Some((filter, code))) => {
                let e = SubscribeError::Refused { filter, code };
                error!(error = %e, "Re-subscribing after session loss failed.");
            }
            (None, None) => info!(count = subs.len(), "Re-subscribed after session loss."),
        }
        Ok(())
    }

    /// Handles one packet from the broker.
    fn on_packet(
        &mut self,
        packet: Packet,
        wbuf: &mut BytesMut,
        ping_sent: &mut Option<Instant>,
    ) -> Result<(), ConnectionLost> {
        match packet {
            Packet::Publish(p) => {
                self.stats.messages_received.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .bytes_received
                    .fetch_add(p.payload.len() as u64, Ordering::Relaxed);
                let received_at = SystemTime::now();
                let seq = if p.qos == QoS::AtMostOnce {
                    None
                } else {
                    let ms = received_at
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as u64);
                    let Some(seq) = self.inc.arrive(p.pkid, p.qos, ms, wbuf) else {
                        debug!(
                            pkid = p.pkid,
                            "QoS 2 resend of a message already delivered."
                        );
                        return Ok(());
                    };
                    self.publish_ack_stats();
                    Some(seq)
                };
                let mut d = Delivery::from_publish(p, received_at);
                if self.journaling {
                    self.journaled.push(d);
                    self.journaled_acks.extend(seq);
                } else {
                    d.ack = seq.map(|seq| AckHandle {
                        tx: self.acks_tx.clone(),
                        epoch: self.inc.epoch(),
                        seq,
                    });
                    self.deliver(d);
                }
            }
            Packet::Ack(a) if a.kind == AckKind::PubRel => {
                self.inc.release(a.pkid);
                encode_ack(AckKind::PubComp, a.pkid, wbuf);
            }
            Packet::Ack(a) => {
                // A reason code >= 0x80 is a refusal, not a confirmation.
                // (PUBCOMP 0x92 may confirm a recovered QoS 2 publish; not counted.)
                if matches!(a.kind, AckKind::PubAck | AckKind::PubComp) && a.reason < 0x80 {
                    self.stats
                        .publishes_confirmed
                        .fetch_add(1, Ordering::Relaxed);
                }
                self.out
                    .on_ack(&a, wbuf)
                    .map_err(ConnectionLost::Protocol)?;
            }
            Packet::SubAck(s) => self.on_suback(s)?,
            Packet::UnsubAck(u) => {
                if let Some(Ctrl::Unsub { filters, reply }) = self.ctrl_inflight.remove(&u.pkid) {
                    self.subscriptions.retain(|s| !filters.contains(&s.filter));
                    let _ = reply.send(Ok(()));
                }
            }
            Packet::PingResp => *ping_sent = None,
            Packet::Disconnect(d) => {
                return Err(ConnectionLost::Disconnected {
                    code: d.reason,
                    reason: d.reason_string,
                })
            }
            other => {
                return Err(ConnectionLost::Protocol(format!(
                    "unexpected packet from the broker: {other:?}"
                )))
            }
        }
        Ok(())
    }

    fn publish_ack_stats(&self) {
        self.stats
            .unacknowledged
            .store(self.inc.pending() as u64, Ordering::Relaxed);
        self.stats
            .oldest_unacknowledged_ms
            .store(self.inc.oldest_arrival_ms().unwrap_or(0), Ordering::Relaxed);
    }

    /// Hands a delivery to the application, or queues it behind earlier ones.
    fn deliver(&mut self, d: Delivery) {
        self.queued.add(&d);
        if self.overflow.is_empty() {
            match self.deliveries.try_send(d) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(d)) => self.overflow.push_back(d),
                // The application dropped `Incoming`: it will never acknowledge.
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    debug!("Delivery dropped: the application stopped receiving.")
                }
            }
        } else {
            self.overflow.push_back(d);
        }
    }

    /// Moves held deliveries into the channel while it has room.
    fn flush_overflow(&mut self) {
        while let Some(d) = self.overflow.pop_front() {
            match self.deliveries.try_send(d) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(d)) => {
                    self.overflow.push_front(d);
                    return;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    self.overflow.clear();
                    return;
                }
            }
        }
    }

    /// Appends the deliveries read so far to the journal and acknowledges
    /// them, in arrival order; waits (keeps them) while the journal is full.
    /// A failed append ends the session, unacknowledged.
    fn flush_journal(&mut self, wbuf: &mut BytesMut) {
        let Some(j) = self.journal.as_ref().filter(|_| !self.journaled.is_empty()) else {
            return;
        };
        if j.is_full() {
            return;
        }
        let appended = j.append(&self.journaled);
        self.journaled.clear();
        if let Err(e) = appended {
            j.fail(&e);
            self.failed = Some(format!("local buffer: {e}"));
            self.stopping = true;
            self.journaled_acks.clear();
            return;
        }
        let epoch = self.inc.epoch();
        for seq in self.journaled_acks.drain(..) {
            self.inc.ack(epoch, seq, wbuf);
        }
        self.publish_ack_stats();
    }

    /// Decodes buffered input. Returns `true` when reading must pause: the
    /// application has no room and the next packet is a QoS 0 PUBLISH (or
    /// the overflow reached its safety limit), and no SUBACK/UNSUBACK is
    /// awaited (the application may be waiting for it before reading).
    fn drain_input(
        &mut self,
        rbuf: &mut BytesMut,
        wbuf: &mut BytesMut,
        ping_sent: &mut Option<Instant>,
    ) -> Result<bool, ConnectionLost> {
        let max_in = self.opts.max_packet_size as usize;
        loop {
            let next = rbuf.first().copied();
            let is_publish = next.is_some_and(|b| b >> 4 == 3);
            let is_qos0 = next.is_some_and(|b| b & 0x06 == 0);
            if is_publish && self.ctrl_inflight.is_empty() {
                let (full, held) = match &self.journal {
                    Some(j) if self.journaling => (j.is_full(), self.journaled.len()),
                    _ => (
                        (!self.overflow.is_empty() || self.deliveries.capacity() == 0)
                            && !self.deliveries.is_closed(),
                        self.overflow.len(),
                    ),
                };
                if full && (is_qos0 || held >= MAX_OVERFLOW) {
                    return Ok(true);
                }
                // The application has `incoming_bytes` waiting: read no
                // more, unless our own publishes await acknowledgements
                // behind those bytes (the application may be waiting for
                // them before it takes anything).
                if !self.journaling
                    && self.queued.is_full()
                    && self.out.is_idle()
                    && !self.deliveries.is_closed()
                {
                    return Ok(true);
                }
            }
            match decode(rbuf, self.protocol(), max_in)? {
                Some(p) => self.on_packet(p, wbuf, ping_sent)?,
                None => return Ok(false),
            }
        }
    }

    async fn serve(&mut self, conn: Conn, broker: &BrokerUrl) -> Result<Closed, ConnectionLost> {
        let Conn {
            mut rd,
            mut wr,
            probe,
            mut rbuf,
            connack,
        } = conn;
        let props = &connack.properties;
        let session_present = connack.session_present;
        let all = (self.opts.max_inflight as usize)
            .min(props.receive_maximum.unwrap_or(u16::MAX) as usize);
        let quota = Quota {
            all,
            qos2: match self.opts.protocol {
                Protocol::V5 => all,
                Protocol::V31 | Protocol::V311 => all.min(V311_QOS2_WINDOW),
            },
        };
        let v5 = self.opts.protocol == Protocol::V5;
        self.out.set_limits(Limits {
            max_qos: props
                .maximum_qos
                .and_then(QoS::from_u8)
                .unwrap_or(QoS::ExactlyOnce),
            downgrade_qos: self.opts.downgrade_qos,
            retain_available: props.retain_available != Some(0),
            max_packet_size: (self.opts.max_packet_size as usize)
                .min(props.maximum_packet_size.map_or(usize::MAX, |m| m as usize)),
            // Absent means 0 (no aliases) on MQTT 5; 3.1.1 has none.
            topic_alias_maximum: if v5 {
                props.topic_alias_maximum.unwrap_or(0)
            } else {
                0
            },
        });
        if let Some(id) = &props.assigned_client_identifier {
            // Reconnects must use it to find the session again.
            info!(client_id = %id, "The broker assigned a client id.");
            self.client_id = id.clone();
        }
        let keep_alive = props
            .server_keep_alive
            .map_or(self.opts.keep_alive, |s| Duration::from_secs(s as u64));
        self.inc.new_epoch();
        // What the last connection read and did not append is redelivered.
        self.journaled.clear();
        self.journaled_acks.clear();
        self.journaling = self.journal.as_ref().is_some_and(|j| j.on(self.protocol()));
        if !session_present {
            self.inc.session_lost();
        }
        self.publish_ack_stats();
        info!(broker = %broker, client_id = %self.client_id, session_present, "Connected.");
        self.status.send_replace(Status::Connected {
            broker: broker.to_string(),
            session_present,
        });
        // `connect` returns only now, so its caller sees Connected.
        if let Some(first) = self.first.take() {
            let _ = first.send(Ok(()));
        }

        let mut wbuf = BytesMut::with_capacity(READ_CHUNK);
        // Requests that were sent but not answered go again, first.
        let mut unanswered: Vec<(u16, Ctrl)> = self.ctrl_inflight.drain().collect();
        unanswered.sort_by_key(|(id, _)| std::cmp::Reverse(*id));
        for (_, c) in unanswered {
            self.ctrl_queue.push_front(c);
        }
        if !session_present && !self.subscriptions.is_empty() {
            self.ctrl_queue.push_front(Ctrl::Sub {
                subs: self.subscriptions.clone(),
                reply: None,
            });
        }
        self.send_ctrl(&mut wbuf);
        let uncertain = self.out.resend(session_present, self.protocol(), &mut wbuf);
        if uncertain > 0 {
            warn!(
                messages = uncertain,
                "The broker lost the session while QoS 2 publishes awaited PUBCOMP: they are sent again and may arrive twice (a persistent session keeps QoS 2 exactly once across reconnects)."
            );
            self.stats
                .qos2_maybe_duplicated
                .fetch_add(uncertain, Ordering::Relaxed);
        }

        // QoS 0 publishes complete once their last byte is written:
        // `consumed` counts bytes taken from the front of `wbuf`.
        let mut consumed: u64 = 0;
        let mut qos0: VecDeque<(u64, Waiter)> = VecDeque::new();
        let mut unflushed = false;
        let mut last_write = Instant::now();
        let mut ping_sent: Option<Instant> = None;
        let far = Duration::from_secs(86_400 * 365);
        let ka_sleep = tokio::time::sleep(far);
        // A second handle on the delivery channel, to wait for room without borrowing `self`.
        let room = self.deliveries.clone();
        let queued = self.queued.clone();
        let journal = self.journal.clone().filter(|_| self.journaling);
        tokio::pin!(ka_sleep);

        let result: Result<Closed, ConnectionLost> = loop {
            self.flush_overflow();
            let paused = match self.drain_input(&mut rbuf, &mut wbuf, &mut ping_sent) {
                Ok(p) => p,
                Err(e) => break Err(e),
            };
            self.flush_journal(&mut wbuf);
            // Reading paused for the bytes the application has not taken.
            let bytes_full = paused && !self.journaling && self.queued.is_full();
            // Deliveries held or reading paused, for a full journal.
            let journal_full = journal.is_some() && (paused || !self.journaled.is_empty());
            self.send_ctrl(&mut wbuf);
            self.out.send_queued(
                quota,
                self.opts.protocol,
                &mut wbuf,
                HIGH_WATER,
                &mut |w, end| qos0.push_back((consumed + end as u64, w)),
            );
            if self.abandoned() || self.stopping {
                break Ok(Closed::ByApplication);
            }
            if !keep_alive.is_zero() {
                let deadline = ping_sent.unwrap_or(last_write) + keep_alive;
                if ka_sleep.deadline() != deadline {
                    ka_sleep.as_mut().reset(deadline);
                }
            }
            crate::codec::reserve_for_read(&mut rbuf, 4096, READ_CHUNK);
            tokio::select! {
                biased;
                Some(a) = self.acks_rx.recv() => {
                    self.inc.ack(a.epoch, a.seq, &mut wbuf);
                    while let Ok(a) = self.acks_rx.try_recv() {
                        self.inc.ack(a.epoch, a.seq, &mut wbuf);
                    }
                    self.publish_ack_stats();
                }
                r = write_some(&mut wr, &mut wbuf, &mut unflushed), if !wbuf.is_empty() || unflushed => {
                    match r {
                        Ok(n) => {
                            consumed += n as u64;
                            last_write = Instant::now();
                            if !unflushed {
                                while qos0.front().is_some_and(|(end, _)| *end <= consumed) {
                                    let (_, w) = qos0.pop_front().expect("front");
                                    w.complete(Ok(super::Confirmed { reason_code: 0 }));
                                }
                            }
                        }
                        Err(e) => break Err(e.into()),
                    }
                }
                r = rd.read_buf(&mut rbuf), if !paused => match r {
                    Ok(0) => break Err(ConnectionLost::Closed),
                    Ok(_) => {}
                    Err(e) => break Err(e.into()),
                },
                req = self.requests.recv(), if self.requests_open && wbuf.len() < HIGH_WATER => {
                    match req {
                        Some(r) => {
                            if self.accept(r) {
                                while let Ok(r) = self.requests.try_recv() {
                                    if !self.accept(r) {
                                        break;
                                    }
                                }
                            }
                        }
                        None => self.requests_open = false,
                    }
                }
                _ = room.reserve(), if !self.journaling && !bytes_full && (paused || !self.overflow.is_empty()) => {}
                _ = queued.room(), if bytes_full => {}
                _ = journal_room(journal.as_deref()), if journal_full => {}
                _ = &mut ka_sleep, if !keep_alive.is_zero() => {
                    match ping_sent {
                        Some(_) if !paused => break Err(ConnectionLost::KeepAliveTimeout(keep_alive)),
                        // Paused: the PINGRESP is unread behind PUBLISH packets; keep pinging
                        // so the broker does not drop us while the application is slow.
                        _ => {
                            encode(&Packet::PingReq, self.protocol(), &mut wbuf);
                            ping_sent = Some(Instant::now());
                        }
                    }
                }
            }
        };

        match result {
            Ok(closed) => {
                // Acknowledgements the application gave before closing, then DISCONNECT.
                self.flush_journal(&mut wbuf);
                while let Ok(a) = self.acks_rx.try_recv() {
                    self.inc.ack(a.epoch, a.seq, &mut wbuf);
                }
                encode(
                    &Packet::Disconnect(Disconnect::default()),
                    self.protocol(),
                    &mut wbuf,
                );
                let flush = async {
                    wr.write_all(&wbuf).await?;
                    wr.flush().await?;
                    wr.shutdown().await?;
                    drain_until_taken(&mut rd, &mut rbuf, probe).await
                };
                let _ = tokio::time::timeout(Duration::from_secs(5), flush).await;
                for (_, w) in qos0 {
                    w.complete(Ok(super::Confirmed { reason_code: 0 }));
                }
                info!(broker = %broker, "Disconnected.");
                Ok(closed)
            }
            Err(e) => {
                for (_, w) in qos0 {
                    w.complete(Err(PublishError::Stopped(format!(
                        "QoS 0 publish not written before the connection was lost: {e}"
                    ))));
                }
                Err(e)
            }
        }
    }
}

/// The largest packet MQTT can carry (remaining length 268,435,455 plus
/// the fixed header): a maximum packet size of this is no limit at all.
const NO_PACKET_LIMIT: u32 = 268_435_460;

/// The CONNECT for `o`. Maximum Packet Size is announced only when it is a
/// limit (strict brokers, such as the Eclipse Paho test broker, refuse
/// 268,435,460).
fn connect_packet(o: &ConnectOptions, client_id: &str) -> Connect {
    let v5 = o.protocol == Protocol::V5;
    Connect {
        protocol: o.protocol,
        clean_start: o.clean_session,
        keep_alive: o.keep_alive.as_secs().min(u16::MAX as u64) as u16,
        client_id: client_id.to_owned(),
        username: o.username.clone(),
        password: o.password.clone(),
        will: o.last_will.as_ref().map(|w| Will {
            topic: w.topic.clone(),
            payload: o
                .will_payload
                .as_ref()
                .map_or_else(|| w.payload.clone(), |f| (f.0)()),
            qos: w.qos,
            retain: w.retain,
            properties: Default::default(),
        }),
        properties: ConnectProperties {
            session_expiry_interval: o.effective_session_expiry(),
            receive_maximum: v5.then_some(o.receive_maximum),
            maximum_packet_size: (v5 && o.max_packet_size < NO_PACKET_LIMIT)
                .then_some(o.max_packet_size),
            topic_alias_maximum: None,
            user_properties: Vec::new(),
        },
    }
}

/// Completes when `journal` may have room; never without one.
async fn journal_room(journal: Option<&dyn Journal>) {
    match journal {
        Some(j) => j.room().await,
        None => std::future::pending().await,
    }
}

/// After our DISCONNECT: reads until the broker closes, or until its TCP
/// has acknowledged everything we sent and nothing is unread. Closing a
/// socket with unread input sends RST, and an RST that overtakes our last
/// acks could drop them; once the broker's TCP holds them it cannot. Some
/// brokers close seconds after a DISCONNECT (amqtt, after a large drain).
async fn drain_until_taken(
    rd: &mut Reader,
    rbuf: &mut BytesMut,
    probe: SentProbe,
) -> io::Result<()> {
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    loop {
        rbuf.clear();
        tokio::select! {
            biased;
            n = rd.read_buf(rbuf) => if n? == 0 {
                return Ok(());
            },
            _ = tick.tick() => if probe.all_acknowledged() == Some(true) {
                return Ok(());
            },
        }
    }
}

/// Writes some of `wbuf`, or flushes once it is empty. Cancel-safe.
async fn write_some(
    wr: &mut Writer,
    wbuf: &mut BytesMut,
    unflushed: &mut bool,
) -> io::Result<usize> {
    if wbuf.is_empty() {
        wr.flush().await?;
        *unflushed = false;
        return Ok(0);
    }
    let n = wr.write(wbuf).await?;
    if n == 0 {
        return Err(io::ErrorKind::WriteZero.into());
    }
    wbuf.advance(n);
    *unflushed = true;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_announces_a_maximum_packet_size_only_when_there_is_one() {
        let mut o = ConnectOptions::new("mqtt://h").unwrap();
        o.protocol = Protocol::V5;
        let c = connect_packet(&o, "id");
        assert_eq!(c.properties.maximum_packet_size, None);
        assert_eq!(c.properties.receive_maximum, Some(1000));
        // On the wire too: no property 0x27 (Maximum Packet Size).
        let mut buf = BytesMut::new();
        encode(&Packet::Connect(Box::new(c)), Protocol::V5, &mut buf);
        match decode(&mut buf, Protocol::V5, usize::MAX).unwrap() {
            Some(Packet::Connect(c)) => assert_eq!(c.properties.maximum_packet_size, None),
            other => panic!("{other:?}"),
        }
        o.max_packet_size = 4096;
        let c = connect_packet(&o, "id");
        assert_eq!(c.properties.maximum_packet_size, Some(4096));
        o.protocol = Protocol::V311;
        assert_eq!(
            connect_packet(&o, "id").properties.maximum_packet_size,
            None
        );
    }
}
