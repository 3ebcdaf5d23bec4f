//! The MQTT session layer: one task (the driver) owns the connection; the
//! application talks to it through a cloneable [`Client`] and receives
//! messages from [`Incoming`].
//!
//! - [`Client::publish`] waits for room in the in-flight window
//!   (back-pressure), then returns a [`PublishToken`] that completes when
//!   the broker confirmed (PUBACK for QoS 1, PUBCOMP for QoS 2, written to
//!   the socket for QoS 0).
//! - Each incoming QoS 1/2 [`Delivery`] carries an [`AckHandle`]; PUBACK or
//!   PUBREC is sent only after the application acknowledged, in arrival order.
//!   A session with a [`Journal`] (the source's local buffer) instead appends
//!   each read's deliveries to it and acknowledges them once it returned.
//! - The driver reconnects with backoff, resends unconfirmed publishes (DUP
//!   set, original order) and subscribes again when the broker lost the session.

mod driver;
mod queued;
mod state;
mod transport;

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::SystemTime;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch, Semaphore};

use crate::codec::{check_publish, ByteStr, Publish};
pub use crate::codec::{PublishProperties, SubscribeOptions};
use crate::error::{Error, PublishError, SubscribeError};
use crate::options::ConnectOptions;
use crate::topic::{validate_filter, validate_topic_name};
use crate::types::{Protocol, QoS};
pub use state::Confirmed;

/// Builds the TLS client configuration from `opts` without connecting.
pub(crate) fn check_tls(
    opts: &crate::options::TlsOptions,
) -> Result<(), crate::options::OptionsError> {
    transport::TlsSetup::new(opts).map(|_| ())
}
use state::Waiter;

/// A message to publish.
#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    /// The topic name (no wildcards).
    pub topic: String,
    /// The payload.
    pub payload: Bytes,
    /// The QoS to publish at.
    pub qos: QoS,
    /// Whether the broker keeps it for later subscribers.
    pub retain: bool,
    /// MQTT 5 properties; ignored on 3.1.1.
    pub properties: Option<PublishProperties>,
}

impl Message {
    /// A message, not retained, without properties.
    pub fn new(topic: impl Into<String>, payload: impl Into<Bytes>, qos: QoS) -> Self {
        Message {
            topic: topic.into(),
            payload: payload.into(),
            qos,
            retain: false,
            properties: None,
        }
    }
    /// The message with its retain flag set to `retain`.
    pub fn retain(mut self, retain: bool) -> Self {
        self.retain = retain;
        self
    }
    /// The message with MQTT 5 properties.
    pub fn properties(mut self, p: PublishProperties) -> Self {
        self.properties = Some(p);
        self
    }
}

/// A subscription: a filter and its options (QoS, and MQTT 5 no-local,
/// retain-as-published, retain handling).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscription {
    /// The topic filter (`a/+/c`, `a/#`, `$share/group/a/#`).
    pub filter: String,
    /// QoS and the MQTT 5 subscription options.
    pub options: SubscribeOptions,
}

impl Subscription {
    /// A subscription at `qos` with default options.
    pub fn new(filter: impl Into<String>, qos: QoS) -> Self {
        Subscription {
            filter: filter.into(),
            options: SubscribeOptions::qos(qos),
        }
    }
}

/// Where the session is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    /// Before the first CONNACK.
    Connecting,
    /// Connected to a broker.
    Connected {
        /// The broker connected to.
        broker: String,
        /// Whether the broker had kept this client's session.
        session_present: bool,
    },
    /// Lost or failed; reconnecting after a backoff.
    Reconnecting {
        /// Why.
        error: String,
        /// Attempts in a row so far.
        attempt: u32,
    },
    /// Over: closed by the application, or a fatal error.
    Stopped {
        /// Why.
        error: Option<String>,
    },
}

impl Status {
    /// Whether the session is connected to a broker.
    pub fn is_connected(&self) -> bool {
        matches!(self, Status::Connected { .. })
    }
}

/// The one text form of a status: logs, `/status`, flush errors and
/// Python all show it.
impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Status::Connecting => f.write_str("connecting"),
            Status::Connected { broker, .. } => write!(f, "connected to {broker}"),
            Status::Reconnecting { error, attempt } => {
                write!(f, "reconnecting (attempt {attempt}): {error}")
            }
            Status::Stopped { error: Some(e) } => write!(f, "stopped: {e}"),
            Status::Stopped { error: None } => f.write_str("stopped"),
        }
    }
}

/// Counters kept by the driver, readable at any time (read-only: the
/// driver alone counts).
#[derive(Debug, Default)]
pub struct Stats {
    pub(crate) messages_received: AtomicU64,
    pub(crate) bytes_received: AtomicU64,
    pub(crate) publishes_sent: AtomicU64,
    pub(crate) publishes_confirmed: AtomicU64,
    pub(crate) reconnects: AtomicU64,
    pub(crate) unacknowledged: AtomicU64,
    pub(crate) oldest_unacknowledged_ms: AtomicU64,
    pub(crate) qos2_maybe_duplicated: AtomicU64,
    /// The broker refused MQTT 5; the session speaks 3.1.1.
    pub(crate) fell_back: std::sync::atomic::AtomicBool,
}

impl Stats {
    /// PUBLISH packets received from the broker.
    pub fn messages_received(&self) -> u64 {
        self.messages_received.load(Ordering::Relaxed)
    }
    /// Payload bytes received.
    pub fn bytes_received(&self) -> u64 {
        self.bytes_received.load(Ordering::Relaxed)
    }
    /// PUBLISH packets sent (first sends, not resends).
    pub fn publishes_sent(&self) -> u64 {
        self.publishes_sent.load(Ordering::Relaxed)
    }
    /// QoS 1/2 publishes the broker confirmed (PUBACK/PUBCOMP).
    pub fn publishes_confirmed(&self) -> u64 {
        self.publishes_confirmed.load(Ordering::Relaxed)
    }
    /// Reconnects after the first connection.
    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }
    /// Incoming QoS 1/2 messages not yet acknowledged to the broker.
    pub fn unacknowledged(&self) -> u64 {
        self.unacknowledged.load(Ordering::Relaxed)
    }
    /// Arrival (ms since the Unix epoch) of the oldest unacknowledged
    /// message; 0 if none.
    pub fn oldest_unacknowledged_ms(&self) -> u64 {
        self.oldest_unacknowledged_ms.load(Ordering::Relaxed)
    }
    /// QoS 2 publishes sent again after the broker lost the session between
    /// PUBREL and PUBCOMP: they may have been delivered twice.
    pub fn qos2_maybe_duplicated(&self) -> u64 {
        self.qos2_maybe_duplicated.load(Ordering::Relaxed)
    }
}

/// A received message. Acknowledge QoS 1/2 deliveries with [`Delivery::ack`]
/// (or take the handle with [`Delivery::take_ack`]) once they are safe.
#[derive(Debug)]
pub struct Delivery {
    /// The topic it was published to.
    pub topic: ByteStr,
    /// The payload as received.
    pub payload: Bytes,
    /// The QoS it was delivered at.
    pub qos: QoS,
    /// Whether it is a retained message.
    pub retain: bool,
    /// Whether the broker marked it as a redelivery.
    pub dup: bool,
    /// The PUBLISH packet's id as the broker sent it (0 for QoS 0).
    pub packet_id: u16,
    /// MQTT 5 properties, when there are any.
    pub properties: Option<Box<PublishProperties>>,
    /// When it arrived.
    pub received_at: SystemTime,
    ack: Option<AckHandle>,
}

impl Delivery {
    /// Acknowledges the message (no-op for QoS 0). The PUBACK/PUBREC leaves
    /// once every earlier message is acknowledged too.
    pub fn ack(&mut self) {
        if let Some(a) = self.ack.take() {
            a.ack();
        }
    }
    /// Takes the acknowledgement to use after the delivery is consumed.
    pub fn take_ack(&mut self) -> Option<AckHandle> {
        self.ack.take()
    }

    /// A delivery of `p`, without an acknowledgement handle: the driver
    /// gives one to QoS 1/2 messages it reads; one read back from the
    /// source's local buffer was acknowledged to the broker already.
    pub(crate) fn from_publish(p: crate::codec::Publish, received_at: SystemTime) -> Delivery {
        Delivery {
            topic: p.topic,
            payload: p.payload,
            qos: p.qos,
            retain: p.retain,
            dup: p.dup,
            packet_id: p.pkid,
            properties: p.properties,
            received_at,
            ack: None,
        }
    }
}

/// Acknowledges one incoming message. Dropping it unacknowledged holds back
/// every later acknowledgement of the connection, as it must: the broker
/// redelivers the message after a reconnect.
#[derive(Debug)]
pub struct AckHandle {
    tx: mpsc::UnboundedSender<driver::AckMsg>,
    epoch: u32,
    seq: u64,
}

impl AckHandle {
    /// Acknowledges the delivery (see [`Delivery::ack`]).
    pub fn ack(self) {
        let _ = self.tx.send(driver::AckMsg {
            epoch: self.epoch,
            seq: self.seq,
        });
    }
}

/// Where a session writes what it receives before acknowledging it (the
/// source's durable local buffer). The driver appends each read's
/// deliveries and sends their PUBACK/PUBREC as soon as `append` returned,
/// in its own task: the broker's window (20 messages on a default
/// Mosquitto with 3.1.1) turns over at the speed of a `write()`, not of a
/// round trip through the application's tasks.
pub(crate) trait Journal: Send + Sync {
    /// Whether a connection speaking `protocol` journals (decided per
    /// connection, after CONNACK); one that does not delivers to
    /// [`Incoming`] with acknowledgement handles.
    fn on(&self, protocol: Protocol) -> bool;
    /// Appends `batch` in arrival order; `Ok` once it survives a crash of
    /// the process (and a power loss, when the journal syncs).
    fn append(&self, batch: &[Delivery]) -> io::Result<()>;
    /// Whether the journal is at its size limit: appending waits.
    fn is_full(&self) -> bool;
    /// Completes when the journal may have room again.
    fn room(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
    /// An append failed: the journal records why; the session ends.
    fn fail(&self, error: &io::Error);
}

/// Runs a journaled session's driver on a thread of its own: its PUBACKs
/// then wait for the OS to schedule that thread, as `mosquitto_sub`'s do,
/// not for the application's tasks (decoding, sinks) to yield a worker;
/// at a broker window of 20 that wait is the rate. An `fsync` per append
/// blocks only this thread.
fn run_on_own_thread(d: driver::Driver) -> Result<(), Error> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Buffer(format!("a runtime for the session: {e}")))?;
    std::thread::Builder::new()
        .name("mqlink-session".into())
        .spawn(move || rt.block_on(d.run()))
        .map_err(|e| Error::Buffer(format!("a thread for the session: {e}")))?;
    Ok(())
}

/// Completes when the broker confirmed the publish (see [`Client::publish`]).
#[must_use = "a publish is only known delivered when its token completes"]
pub struct PublishToken(oneshot::Receiver<state::Outcome>);

impl Future for PublishToken {
    type Output = Result<Confirmed, PublishError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx).map(|r| {
            r.unwrap_or_else(|_| Err(PublishError::Stopped("the session task ended".into())))
        })
    }
}

/// The stream of incoming deliveries.
pub struct Incoming {
    rx: mpsc::Receiver<Delivery>,
    queued: Arc<queued::Queued>,
}

impl Incoming {
    /// The next delivery; `None` once the session has stopped.
    pub async fn recv(&mut self) -> Option<Delivery> {
        let d = self.rx.recv().await;
        self.taken(d)
    }
    /// A delivery if one is ready now.
    pub fn try_recv(&mut self) -> Option<Delivery> {
        let d = self.rx.try_recv().ok();
        self.taken(d)
    }
    /// Moves up to `limit` ready deliveries into `buf`, waiting for at least one.
    /// Returns 0 once the session has stopped.
    pub async fn recv_many(&mut self, buf: &mut Vec<Delivery>, limit: usize) -> usize {
        let n = self.rx.recv_many(buf, limit).await;
        for d in &buf[buf.len() - n..] {
            self.queued.take(d);
        }
        n
    }
    /// Polls for the next delivery (for the source's `Stream`).
    pub(crate) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Delivery>> {
        self.rx.poll_recv(cx).map(|d| self.taken(d))
    }
    fn taken(&self, d: Option<Delivery>) -> Option<Delivery> {
        if let Some(d) = &d {
            self.queued.take(d);
        }
        d
    }
}

pub(crate) enum Request {
    Publish(Publish, Waiter),
    Subscribe(
        Vec<Subscription>,
        oneshot::Sender<Result<Vec<QoS>, SubscribeError>>,
    ),
    Unsubscribe(Vec<String>, oneshot::Sender<Result<(), SubscribeError>>),
    Disconnect(oneshot::Sender<()>),
    /// Ends the session with this error (a refusal the application cannot go on without).
    Fail(String),
}

/// Completes with the broker's SUBACK (see [`Client::subscribe_request`]).
#[must_use = "a refused subscription is only seen by awaiting its token"]
pub struct SubscribeToken(oneshot::Receiver<Result<Vec<QoS>, SubscribeError>>);

impl Future for SubscribeToken {
    type Output = Result<Vec<QoS>, SubscribeError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx).map(|r| {
            r.unwrap_or_else(|_| Err(SubscribeError::Stopped("the session task ended".into())))
        })
    }
}

/// Completes with the outcome of the first connection attempt(s).
type FirstConnect = oneshot::Receiver<Result<(), crate::error::ConnectError>>;

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("client_id", &self.client_id())
            .field("status", &*self.status().borrow())
            .finish()
    }
}

/// The application's handle to a session. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    tx: mpsc::Sender<Request>,
    window: Arc<Semaphore>,
    status: watch::Receiver<Status>,
    stats: Arc<Stats>,
    client_id: Arc<str>,
    protocol: Protocol,
}

impl Client {
    /// Starts a session and waits for the first CONNACK. A first attempt
    /// that fails returns its error (as mosquitto_pub and mosquitto_sub do);
    /// later losses are ridden out by reconnecting.
    pub async fn connect(opts: ConnectOptions) -> Result<(Client, Incoming), Error> {
        Self::connect_journaled(opts, None).await
    }

    /// [`connect`](Self::connect), the session appending what it receives
    /// to `journal` and acknowledging it there (see [`Journal`]).
    pub(crate) async fn connect_journaled(
        opts: ConnectOptions,
        journal: Option<Arc<dyn Journal>>,
    ) -> Result<(Client, Incoming), Error> {
        let (client, incoming, first) = Self::spawn(opts, true, journal)?;
        match first.await {
            Ok(Ok(())) => Ok((client, incoming)),
            Ok(Err(e)) => Err(Error::Connect(e)),
            Err(_) => Err(Error::Stopped("the session task ended".into())),
        }
    }

    /// Starts a session without waiting: the driver keeps trying to
    /// connect under the reconnect policy, and publishes wait in the window.
    pub fn start(opts: ConnectOptions) -> Result<(Client, Incoming), Error> {
        let (client, incoming, _) = Self::spawn(opts, false, None)?;
        Ok((client, incoming))
    }

    fn spawn(
        opts: ConnectOptions,
        fail_fast: bool,
        journal: Option<Arc<dyn Journal>>,
    ) -> Result<(Client, Incoming, FirstConnect), Error> {
        // An error, not tokio's panic, when called outside a runtime.
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::NoRuntime);
        }
        opts.validate()?;
        let tls = if opts.brokers.iter().any(|b| b.transport.is_tls()) {
            transport::warn_if_unverified(&opts.tls);
            Some(transport::TlsSetup::new(&opts.tls)?)
        } else {
            None
        };
        let client_id: Arc<str> = opts.resolve_client_id().into();
        let (req_tx, req_rx) = mpsc::channel(256);
        let (msg_tx, msg_rx) = mpsc::channel(opts.incoming_buffer.max(1));
        let queued = Arc::new(queued::Queued::new(opts.incoming_bytes));
        let (status_tx, status_rx) = watch::channel(Status::Connecting);
        let (first_tx, first_rx) = oneshot::channel();
        let stats = Arc::new(Stats::default());
        let window = Arc::new(Semaphore::new(opts.max_inflight as usize));
        let protocol = opts.protocol;
        let journaled = journal.is_some();
        let d = driver::Driver::new(
            opts,
            client_id.to_string(),
            tls,
            req_rx,
            msg_tx,
            queued.clone(),
            status_tx,
            stats.clone(),
            fail_fast,
            first_tx,
            journal,
        );
        if journaled {
            run_on_own_thread(d)?;
        } else {
            tokio::spawn(d.run());
        }
        Ok((
            Client {
                tx: req_tx,
                window,
                status: status_rx,
                stats,
                client_id,
                protocol,
            },
            Incoming { rx: msg_rx, queued },
            first_rx,
        ))
    }

    /// The client id in use (generated when none was configured).
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The MQTT version of the session.
    pub fn protocol(&self) -> Protocol {
        if self.stats.fell_back.load(Ordering::Relaxed) {
            return Protocol::V311;
        }
        self.protocol
    }

    /// Watches the connection status.
    pub fn status(&self) -> watch::Receiver<Status> {
        self.status.clone()
    }

    /// The session's counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Publishes `msg`. Waits while the in-flight window is full, then
    /// hands the message to the session and returns a token that completes
    /// on the broker's confirmation. The topic and the lengths MQTT can
    /// express are checked first ([`PublishError::Encode`]).
    pub async fn publish(&self, msg: Message) -> Result<PublishToken, PublishError> {
        validate_topic_name(&msg.topic)?;
        let publish = Publish {
            topic: ByteStr::from(msg.topic),
            payload: msg.payload,
            qos: msg.qos,
            retain: msg.retain,
            dup: false,
            pkid: 0,
            properties: msg
                .properties
                .filter(|p| !p.is_empty() && self.protocol() == Protocol::V5)
                .map(Box::new),
        };
        check_publish(&publish, self.protocol()).map_err(|error| PublishError::Encode {
            topic: publish.topic.to_string(),
            error,
        })?;
        let permit = self
            .window
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| PublishError::Stopped("the session is closed".into()))?;
        let (tx, rx) = oneshot::channel();
        let waiter = Waiter {
            tx: Some(tx),
            _permit: Some(permit),
        };
        self.tx
            .send(Request::Publish(publish, waiter))
            .await
            .map_err(|_| PublishError::Stopped("the session is closed".into()))?;
        Ok(PublishToken(rx))
    }

    /// Subscribes and waits for the SUBACK. The subscriptions are made again
    /// whenever the broker lost the session. Fails naming the first refused filter.
    ///
    /// A broker may send messages (a resumed session's queue, or matches of
    /// the new subscription) before the SUBACK, and some hold the SUBACK
    /// until those are acknowledged: read [`Incoming`] while this runs, or
    /// use [`subscribe_request`](Self::subscribe_request) and read first.
    /// While a SUBACK is awaited the session keeps reading whatever the
    /// application does, so a broker that merely sends first never stalls it.
    pub async fn subscribe(&self, subs: Vec<Subscription>) -> Result<Vec<QoS>, SubscribeError> {
        self.subscribe_request(subs).await?.await
    }

    /// Sends SUBSCRIBE and returns at once; the token completes with the
    /// SUBACK (granted QoS per filter, or the first refused filter).
    pub async fn subscribe_request(
        &self,
        subs: Vec<Subscription>,
    ) -> Result<SubscribeToken, SubscribeError> {
        for s in &subs {
            validate_filter(&s.filter)?;
        }
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Request::Subscribe(subs, tx))
            .await
            .map_err(|_| SubscribeError::Stopped("the session is closed".into()))?;
        Ok(SubscribeToken(rx))
    }

    /// Ends the session with `error` as its reason ([`Status::Stopped`]):
    /// for a failure found outside the driver, such as a subscription
    /// refused after messages were already flowing.
    pub(crate) async fn fail(&self, error: String) {
        let _ = self.tx.send(Request::Fail(error)).await;
    }

    /// Unsubscribes from `filters`, waiting for the UNSUBACK.
    pub async fn unsubscribe(&self, filters: Vec<String>) -> Result<(), SubscribeError> {
        for f in &filters {
            validate_filter(f)?;
        }
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Request::Unsubscribe(filters, tx))
            .await
            .map_err(|_| SubscribeError::Stopped("the session is closed".into()))?;
        rx.await
            .unwrap_or_else(|_| Err(SubscribeError::Stopped("the session task ended".into())))
    }

    /// Sends pending acknowledgements and DISCONNECT, then ends the session.
    /// Publishes not yet confirmed fail with [`PublishError::Stopped`]: await
    /// their tokens first for a clean finish.
    pub async fn disconnect(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Request::Disconnect(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}
