//! The MQTT source: subscriptions as a stream of decoded records, each
//! acknowledged to the broker only when the application says it is safe.
//!
//! In the spirit of Jet's `MqttSources.builder()`:
//!
//! ```no_run
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! use mqlink::format::{ColumnType, Decoder, Schema};
//! use mqlink::source::MqttSource;
//! use mqlink::{ConnectOptions, QoS};
//! let mut source = MqttSource::builder()
//!     .connection(ConnectOptions::new("mqtt://localhost:1883")?)
//!     .topic("sensors/+/telemetry", QoS::AtLeastOnce)
//!     .topic("alerts/#", QoS::ExactlyOnce)
//!     .format(Decoder::Json { schema: Some(Schema::new([("device_id", ColumnType::Text)])) })
//!     .dead_letter_topic("errors/telemetry")
//!     .start()
//!     .await?;
//! while let Some(mut record) = source.next().await {
//!     // … make record.value safe downstream, then:
//!     record.ack();
//! }
//! # Ok(()) }
//! ```
//!
//! - Overlapping filters deliver each message once: the source subscribes to
//!   a disjoint cover of the filters ([`crate::topic::disjoint_cover`]) and
//!   acknowledges, without yielding, messages that match none of the
//!   filters asked for.
//! - `parallelism = N` runs N clients (`<client_id>-0` … `-N-1`) on shared
//!   subscriptions `$share/<group>/<filter>`.
//! - A payload that does not decode goes to `dead_letter_topic` (original
//!   payload; topic and reason as MQTT 5 user properties, or a JSON envelope
//!   on 3.1.1) and is acknowledged only once the broker confirmed the dead
//!   letter. Without a dead-letter topic the record is yielded with the error.

mod buffer;
mod metrics;
mod window;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_core::Stream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::codec::ByteStr;
use crate::dead_letter::{DeadLetter, DeadLetters};
use crate::error::{Error, SubscribeError};
use crate::format::{Decoder, FormatError, Value};
use crate::options::{Backoff, ConnectOptions, OptionsError};
use crate::session::{AckHandle, Client, Delivery, Incoming, Message, Subscription};
use crate::topic::{
    disjoint_cover_groups, validate_filter, validate_topic_name, TopicError, TopicFilter,
};
use crate::types::{Protocol, QoS};
use crate::PublishProperties;
pub use buffer::{BufferMetrics, BufferOptions, BufferWhen, LogPosition, BUFFER_METRIC_NAMES};
pub use metrics::{SourceMetrics, SOURCE_METRIC_NAMES};

/// A source configuration that cannot work; names the key and value.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SourceError {
    /// The connection options cannot work.
    #[error("connection: {0}")]
    Options(#[from] OptionsError),
    /// A topic filter is invalid.
    #[error("topics: {0}")]
    Topic(TopicError),
    /// No topic filter at all.
    #[error("topics: at least one topic filter is needed")]
    NoTopics,
    /// The dead-letter topic is not a valid topic name.
    #[error("dead_letter_topic: {0}")]
    DeadLetterTopic(TopicError),
    /// `parallelism` of 0.
    #[error("parallelism must be at least 1")]
    Parallelism,
    /// A share group that cannot be part of `$share/<group>/<filter>`.
    #[error("share_group {0:?} must not be empty or contain '/', '+' or '#'")]
    ShareGroup(String),
    /// `parallelism > 1` without a client id.
    #[error("parallelism > 1 needs a client_id to derive <client_id>-0 … from")]
    ParallelNeedsClientId,
    /// `batch_size` of 0.
    #[error("batch_size must be at least 1")]
    BatchSize,
    /// Sparkplug B keeps one state per edge node: one client must see all
    /// of a node's messages, in order.
    #[error("format sparkplug_b needs parallelism = 1 and no share group (the host state must see every message of an edge node, in order)")]
    SparkplugShared,
}

/// What a source needs; build it with [`MqttSource::builder`] (the fields
/// are set and checked only there).
#[derive(Clone, Debug)]
pub struct SourceConfig {
    pub(crate) connection: ConnectOptions,
    pub(crate) subscriptions: Vec<Subscription>,
    pub(crate) format: Decoder,
    pub(crate) dead_letter_topic: Option<String>,
    /// Times [`MqttSource::retry`] hands a record back after a downstream
    /// failure before it is dead-lettered (Laminar's `max_retries`).
    pub(crate) max_retries: u32,
    /// Records per [`MqttSource::next_batch`] at most (Laminar's `batch_size`).
    pub(crate) batch_size: usize,
    /// How long [`MqttSource::next_batch`] waits to fill a batch
    /// (`batch_timeout_ms`) [default: 0: it takes what has arrived]. The
    /// batch's messages are unacknowledged meanwhile, and the broker sends
    /// no more than its window (MQTT 5: the Receive Maximum announced;
    /// 3.1.1: the broker's own limit, Mosquitto's `max_inflight_messages`
    /// = 20, observed) before they are acknowledged: so a batch stops
    /// waiting as soon as the window is full (see `next_before`).
    pub(crate) batch_timeout: Duration,
    /// Clients sharing the subscriptions (`parallelism`).
    pub(crate) parallelism: u16,
    /// Share group for `parallelism > 1` [default: the client id].
    pub(crate) share_group: Option<String>,
    /// The durable local buffer, when on ([`SourceBuilder::buffer`]).
    pub(crate) buffer: Option<BufferOptions>,
}

impl SourceConfig {
    /// The connection options.
    pub fn connection(&self) -> &ConnectOptions {
        &self.connection
    }
    /// The topic filters asked for.
    pub fn subscriptions(&self) -> &[Subscription] {
        &self.subscriptions
    }

    /// Checks the configuration without touching the network.
    pub fn validate(&self) -> Result<(), SourceError> {
        self.connection.validate()?;
        if self.subscriptions.is_empty() {
            return Err(SourceError::NoTopics);
        }
        for s in &self.subscriptions {
            validate_filter(&s.filter).map_err(SourceError::Topic)?;
        }
        if let Some(t) = &self.dead_letter_topic {
            validate_topic_name(t).map_err(SourceError::DeadLetterTopic)?;
        }
        if self.parallelism == 0 {
            return Err(SourceError::Parallelism);
        }
        if self.batch_size == 0 {
            return Err(SourceError::BatchSize);
        }
        if matches!(self.format, Decoder::SparkplugB(_))
            && (self.parallelism > 1 || self.share_group.is_some())
        {
            return Err(SourceError::SparkplugShared);
        }
        if self.parallelism > 1 && self.connection.client_id.is_none() {
            return Err(SourceError::ParallelNeedsClientId);
        }
        if let Some(g) = &self.share_group {
            if g.is_empty() || g.contains(['/', '+', '#']) {
                return Err(SourceError::ShareGroup(g.clone()));
            }
        }
        Ok(())
    }

    /// The subscriptions one client makes: a disjoint cover of the filters,
    /// each at the highest QoS of the filters it overlaps, shared when
    /// `parallelism > 1` or a share group is set.
    pub fn broker_subscriptions(&self) -> Vec<Subscription> {
        let filters: Vec<String> = self
            .subscriptions
            .iter()
            .map(|s| s.filter.clone())
            .collect();
        let group = match (&self.share_group, self.parallelism) {
            (Some(g), _) => Some(g.clone()),
            (None, n) if n > 1 => self.connection.client_id.clone(),
            _ => None,
        };
        disjoint_cover_groups(&filters)
            .into_iter()
            .map(|(f, members)| {
                // The filters it covers are the only ones it intersects.
                let covered = members.iter().map(|&i| &self.subscriptions[i]);
                let mut options = covered
                    .clone()
                    .find(|s| s.filter == f)
                    .map(|s| s.options)
                    .unwrap_or(crate::SubscribeOptions::qos(QoS::AtMostOnce));
                options.qos = covered
                    .map(|s| s.options.qos)
                    .max()
                    .unwrap_or(QoS::AtLeastOnce);
                let filter = match &group {
                    Some(g) => format!("$share/{g}/{f}"),
                    None => f,
                };
                Subscription { filter, options }
            })
            .collect()
    }
}

/// Builds an [`MqttSource`]: the connection (whole, with
/// [`connection`](Self::connection), or piece by piece, Jet-style, with
/// [`broker`](Self::broker), [`client_id`](Self::client_id),
/// [`auth`](Self::auth), [`keep_session`](Self::keep_session)), topics,
/// format, dead letters, batching and parallelism. Problems are reported by
/// [`build`](Self::build) / [`start`](Self::start).
pub struct SourceBuilder {
    config: SourceConfig,
    /// Connection settings given piece by piece, applied at `build`.
    connect: Option<crate::options::ConnectOptionsBuilder>,
}

impl SourceBuilder {
    crate::options::connection_setters!();

    /// Adds a topic filter with its QoS.
    pub fn topic(mut self, filter: impl Into<String>, qos: QoS) -> Self {
        self.config
            .subscriptions
            .push(Subscription::new(filter, qos));
        self
    }
    /// Adds a subscription with MQTT 5 options.
    pub fn subscription(mut self, s: Subscription) -> Self {
        self.config.subscriptions.push(s);
        self
    }
    /// How payloads are decoded into [`Record::value`] [default: raw bytes].
    pub fn format(mut self, f: Decoder) -> Self {
        self.config.format = f;
        self
    }
    /// Maps each message to a value with a function of yours, as Jet's
    /// `mapToItemFn(topic, message)`; an `Err` is dead-lettered like a
    /// decode error. Replaces `format`.
    pub fn map_to_item_fn(
        mut self,
        f: impl Fn(&str, &Bytes) -> Result<Value, String> + Send + Sync + 'static,
    ) -> Self {
        self.config.format = Decoder::Map(crate::format::MapFn(Arc::new(f)));
        self
    }
    /// Where payloads that do not decode go (and records that exhausted
    /// [`max_retries`](Self::max_retries)); acknowledged only once the
    /// broker confirmed the dead letter. Without it they are yielded with
    /// the error in [`Record::value`].
    pub fn dead_letter_topic(mut self, t: impl Into<String>) -> Self {
        self.config.dead_letter_topic = Some(t.into());
        self
    }
    /// Times [`MqttSource::retry`] hands a record back before it is
    /// dead-lettered (Laminar's `max_retries`) [default: 3].
    pub fn max_retries(mut self, n: u32) -> Self {
        self.config.max_retries = n;
        self
    }
    /// Records per [`MqttSource::next_batch`] at most [default: 1000] (and
    /// 4 MiB of payloads: a batch ends at the record that reaches them), and
    /// how long it waits to fill one [default: 0: it takes what has
    /// arrived]. The batch's messages are unacknowledged meanwhile; a batch
    /// goes before `timeout` as soon as the broker's window is full, as
    /// nothing more can arrive until it is acknowledged (on 3.1.1 the
    /// window is observed: a count that stops growing at its highest).
    pub fn batch(mut self, size: usize, timeout: Duration) -> Self {
        self.config.batch_size = size;
        self.config.batch_timeout = timeout;
        self
    }
    /// Clients sharing the subscriptions through `$share/<group>/…`
    /// (`<client_id>-0` …) [default: 1].
    pub fn parallelism(mut self, n: u16) -> Self {
        self.config.parallelism = n;
        self
    }
    /// The share group of `parallelism > 1` [default: the client id]; set
    /// it alone to share the subscriptions with other processes.
    pub fn share_group(mut self, g: impl Into<String>) -> Self {
        self.config.share_group = Some(g.into());
        self
    }
    /// Acknowledges each message once it is in a local log on disk (see
    /// [`BufferOptions`]) and yields records from the log at the
    /// application's pace; acknowledging a record confirms its entry.
    /// Against a broker whose window is small (Mosquitto lets 20 messages
    /// out per MQTT 3.1.1 client and drops what its queue cannot hold), a
    /// slow consumer then loses nothing: the broker is acknowledged at disk
    /// speed. [default: off]
    pub fn buffer(mut self, options: BufferOptions) -> Self {
        self.config.buffer = Some(options);
        self
    }
    /// The configuration, or the first problem found.
    pub fn build(mut self) -> Result<SourceConfig, SourceError> {
        if let Some(b) = self.connect.take() {
            self.config.connection = b.build()?;
        }
        self.config.validate()?;
        Ok(self.config)
    }
    /// Builds and starts the source.
    pub async fn start(self) -> Result<MqttSource, Error> {
        MqttSource::start(self.build()?).await
    }
}

/// Payload bytes in one [`MqttSource::next_batch`] at most (the record
/// that reaches them ends the batch): with the session's
/// `incoming_bytes`, what a source holds follows bytes, not only counts.
pub const MAX_BATCH_BYTES: usize = 4 << 20;

/// A received message with its decoded value and acknowledgement.
#[derive(Debug)]
pub struct Record {
    /// The topic it was published to.
    pub topic: ByteStr,
    /// The payload as received.
    pub payload: Bytes,
    /// The QoS it was delivered at.
    pub qos: QoS,
    /// Whether it is a retained message (sent on subscribing).
    pub retain: bool,
    /// Whether the broker marked it as a redelivery.
    pub dup: bool,
    /// The PUBLISH packet's id as the broker sent it (0 for QoS 0).
    pub packet_id: u16,
    /// Which of the source's clients received it (0 to `parallelism` − 1):
    /// packet ids are per client session.
    pub client: u16,
    /// MQTT 5 properties, when there are any.
    pub properties: Option<Box<PublishProperties>>,
    /// When it arrived.
    pub received_at: SystemTime,
    /// The decoded payload, or why it could not be decoded (only yielded
    /// when no dead-letter topic is configured).
    pub value: Result<Value, FormatError>,
    /// How often [`MqttSource::retry`] handed this record back.
    pub attempts: u32,
    /// Its place in the local buffer's log, when it was read from one.
    pub log_position: Option<LogPosition>,
    ack: Option<Ack>,
    metrics: Arc<SourceMetrics>,
}

/// What acknowledging a record does: the session's PUBACK/PUBREC, or,
/// with the local buffer, the confirmation of its log entry.
#[derive(Debug)]
pub(crate) enum Ack {
    Session(AckHandle),
    Log(buffer::LogAck),
}

impl Ack {
    fn ack(self) {
        match self {
            Ack::Session(a) => a.ack(),
            Ack::Log(a) => a.ack(),
        }
    }
}

impl Record {
    /// Acknowledges the record; the broker hears of it once every earlier
    /// record of the same connection is acknowledged too.
    pub fn ack(&mut self) {
        if let Some(a) = self.take_ack() {
            a.ack();
        }
    }

    /// Takes the acknowledgement, to give after the record was consumed.
    pub fn take_ack(&mut self) -> Option<RecordAck> {
        self.ack.take().map(|ack| RecordAck {
            ack,
            metrics: self.metrics.clone(),
        })
    }

    /// Puts back an acknowledgement taken by [`take_ack`](Self::take_ack).
    pub(crate) fn give_back_ack(&mut self, ack: Option<RecordAck>) {
        if let Some(a) = ack {
            self.ack = Some(a.ack);
        }
    }
}

/// The acknowledgement of one [`Record`].
#[derive(Debug)]
pub struct RecordAck {
    ack: Ack,
    metrics: Arc<SourceMetrics>,
}

impl RecordAck {
    /// Acknowledges the record (see [`Record::ack`]).
    pub fn ack(self) {
        self.ack.ack();
        self.metrics.unacknowledged_dec();
    }
}

/// The metrics and clients of a running source, readable from another task.
#[derive(Clone)]
pub struct SourceMonitor {
    clients: Vec<Client>,
    metrics: Arc<SourceMetrics>,
    buffer: Option<Arc<BufferMetrics>>,
}

impl SourceMonitor {
    /// The source's metrics, refreshed.
    pub fn metrics(&self) -> &SourceMetrics {
        self.metrics.refresh(&self.clients);
        &self.metrics
    }
    /// The source's clients.
    pub fn clients(&self) -> &[Client] {
        &self.clients
    }
    /// The local buffer's metrics, when the source uses one.
    pub fn buffer(&self) -> Option<&BufferMetrics> {
        self.buffer.as_deref()
    }
}

impl std::fmt::Debug for SourceMonitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceMonitor")
            .field("clients", &self.clients)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for MqttSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttSource")
            .field("clients", &self.clients())
            .finish_non_exhaustive()
    }
}

/// A running source.
pub struct MqttSource {
    clients: Vec<Client>,
    inner: Inner,
    metrics: Arc<SourceMetrics>,
    tasks: Vec<JoinHandle<()>>,
    batch_size: usize,
    batch_timeout: Duration,
    pending: std::collections::VecDeque<Delivery>,
    retries: std::collections::VecDeque<Record>,
    max_retries: u32,
    dead_letters: Option<DeadLetters>,
    /// A delivery being processed for [`Stream::poll_next`] (dead letter or
    /// schema fetch under way). The mutex is only ever used through
    /// `get_mut`: it keeps `MqttSource` `Sync` around a future that is not.
    processing: Option<std::sync::Mutex<Processing>>,
    /// The local buffer, when on.
    buffer: Option<Arc<buffer::Shared>>,
}

type Processing = Pin<Box<dyn Future<Output = Option<Record>> + Send>>;

/// One client is read directly (no extra hop per message); several are
/// merged through a channel fed by one task each.
enum Inner {
    Direct(Arc<Worker>, Incoming),
    Merged(mpsc::Receiver<Record>),
}

struct Worker {
    /// Its place among the source's clients ([`Record::client`]).
    index: u16,
    /// The filters asked for, when the broker may send more (merged
    /// filters, see the module docs); empty when it cannot.
    filters: Vec<TopicFilter>,
    format: Decoder,
    dead_letters: Option<DeadLetters>,
    metrics: Arc<SourceMetrics>,
    /// Its client: Sparkplug B rebirth requests go out through it.
    client: Client,
}

impl MqttSource {
    /// Starts building a source, as Jet's `MqttSources.builder()`.
    pub fn builder() -> SourceBuilder {
        SourceBuilder {
            connect: None,
            config: SourceConfig {
                connection: ConnectOptions::default(),
                subscriptions: Vec::new(),
                format: Decoder::default(),
                dead_letter_topic: None,
                max_retries: 3,
                batch_size: 1000,
                // Natural batching: what has arrived goes at once. A linger
                // holds the batch's acknowledgements; it ends early when the
                // broker's window is full (RabbitMQ: 10).
                batch_timeout: Duration::ZERO,
                parallelism: 1,
                share_group: None,
                buffer: None,
            },
        }
    }

    /// Connects every client, subscribes, and starts yielding records.
    pub async fn start(config: SourceConfig) -> Result<MqttSource, Error> {
        config.validate()?;
        let subs = config.broker_subscriptions();
        let asked: Vec<String> = config
            .subscriptions
            .iter()
            .map(|s| s.filter.clone())
            .collect();
        // Local matching is needed only where a merge made a filter no one asked for.
        let merged = disjoint_cover_groups(&asked)
            .iter()
            .any(|(f, m)| !m.iter().any(|&i| asked[i] == *f));
        let filters: Vec<TopicFilter> = if merged {
            asked
                .into_iter()
                .filter_map(|f| TopicFilter::new(f).ok())
                .collect()
        } else {
            Vec::new()
        };
        let metrics = Arc::new(SourceMetrics::default());
        // Opened before connecting: a log in use elsewhere fails the start
        // before anything is acknowledged into it.
        let opened = match &config.buffer {
            Some(o) => Some(
                buffer::Opened::open(o.clone())
                    .await
                    .map_err(|e| Error::Buffer(format!("{}: {e}", o.dir.display())))?,
            ),
            None => None,
        };
        let (tx, rx) = mpsc::channel(config.batch_size.max(1024));
        let mut clients = Vec::new();
        let mut sessions = Vec::new();
        let mut workers = Vec::new();
        let host_state = sparkplug_host_state(&config.format);
        for i in 0..config.parallelism {
            let mut opts = config.connection.clone();
            if config.parallelism > 1 {
                opts.client_id = opts.client_id.map(|id| format!("{id}-{i}"));
            }
            if let Some((topic, _, offline)) = &host_state {
                opts.last_will = Some(crate::options::LastWill {
                    topic: topic.clone(),
                    payload: offline.clone(),
                    qos: QoS::AtLeastOnce,
                    retain: true,
                });
            }
            // The session appends to the buffer itself (no hop before its PUBACKs).
            let journal = opened.as_ref().map(|b| b.journal(i));
            let (client, mut incoming) = Client::connect_journaled(opts, journal).await?;
            let early = subscribe_reading(&client, &mut incoming, subs.clone()).await?;
            metrics.set_subscriptions(subs.len() as u64 * config.parallelism as u64);
            workers.push(Arc::new(Worker {
                index: i,
                filters: filters.clone(),
                format: config.format.clone(),
                dead_letters: config
                    .dead_letter_topic
                    .as_ref()
                    .map(|t| DeadLetters::new(t, client.clone())),
                metrics: metrics.clone(),
                client: client.clone(),
            }));
            sessions.push((early, incoming));
            clients.push(client);
        }
        if clients[0].protocol() == Protocol::V5 {
            let rm = config.connection.receive_maximum;
            metrics.window.announced(rm, clients.len());
        }
        // The same rule as each session's (`Journal::on`).
        let opened = opened.filter(|b| {
            let on = clients.iter().any(|c| b.on(c.protocol()));
            if !on {
                tracing::debug!("MQTT 5: the broker honours our Receive Maximum; no local buffer.");
            }
            on
        });
        let mut tasks = Vec::new();
        if let Some((topic, online, _)) = host_state {
            tasks.push(tokio::spawn(announce_online(
                clients[0].clone(),
                topic,
                online,
            )));
        }
        let mut pending = std::collections::VecDeque::new();
        let mut shared = None;
        let inner = match opened {
            Some(b) => {
                shared = Some(b.shared());
                // A session that does not journal (MQTT 5 beside 3.1.1
                // ones) is read directly, acknowledged end to end.
                for (c, (w, (early, incoming))) in clients.iter().zip(workers.iter().zip(sessions))
                {
                    if !b.on(c.protocol()) {
                        tasks.push(tokio::spawn(w.clone().run(early, incoming, tx.clone())));
                    }
                }
                tasks.extend(b.start(workers, tx));
                Inner::Merged(rx)
            }
            None if config.parallelism == 1 => {
                let (early, incoming) = sessions.pop().expect("one session");
                pending.extend(early);
                Inner::Direct(workers.pop().expect("one worker"), incoming)
            }
            None => {
                for (w, (early, incoming)) in workers.into_iter().zip(sessions) {
                    tasks.push(tokio::spawn(w.run(early, incoming, tx.clone())));
                }
                Inner::Merged(rx)
            }
        };
        let dead_letters = config
            .dead_letter_topic
            .as_ref()
            .map(|t| DeadLetters::new(t, clients[0].clone()));
        Ok(MqttSource {
            clients,
            inner,
            metrics,
            tasks,
            batch_size: config.batch_size,
            batch_timeout: config.batch_timeout,
            pending,
            retries: Default::default(),
            max_retries: config.max_retries,
            dead_letters,
            processing: None,
            buffer: shared,
        })
    }

    /// The next record; `None` once every client has stopped. (The same
    /// as the [`Stream`] implementation, without needing `StreamExt`.)
    pub async fn next(&mut self) -> Option<Record> {
        if let Some(r) = self.finish_processing().await {
            return Some(r);
        }
        if let Some(r) = self.retries.pop_front() {
            return Some(r);
        }
        match &mut self.inner {
            Inner::Merged(rx) => rx.recv().await,
            Inner::Direct(worker, incoming) => loop {
                let d = match self.pending.pop_front() {
                    Some(d) => d,
                    None => {
                        let mut buf = Vec::with_capacity(256);
                        if incoming.recv_many(&mut buf, 256).await == 0 {
                            return None;
                        }
                        self.pending.extend(buf);
                        continue;
                    }
                };
                if let Some(r) = worker.process(d).await {
                    return Some(r);
                }
            },
        }
    }

    /// The record of a delivery that [`Stream::poll_next`] began to process.
    async fn finish_processing(&mut self) -> Option<Record> {
        let p = self.processing.take()?;
        let p = p.into_inner().unwrap_or_else(|e| e.into_inner());
        p.await
    }

    /// A record if one is ready without waiting.
    pub async fn try_next(&mut self) -> Option<Record> {
        if let Some(r) = self.finish_processing().await {
            return Some(r);
        }
        if let Some(r) = self.retries.pop_front() {
            return Some(r);
        }
        loop {
            let d = match &mut self.inner {
                Inner::Merged(rx) => return rx.try_recv().ok(),
                Inner::Direct(_, incoming) => match self.pending.pop_front() {
                    Some(d) => d,
                    None => incoming.try_recv()?,
                },
            };
            let Inner::Direct(worker, _) = &self.inner else {
                unreachable!()
            };
            if let Some(r) = worker.process(d).await {
                return Some(r);
            }
        }
    }

    /// Up to `batch_size` records, waiting at most `batch_timeout` after the
    /// first one (see [`SourceBuilder::batch`]). Empty once every client has
    /// stopped.
    pub async fn next_batch(&mut self) -> Vec<Record> {
        let mut batch = Vec::with_capacity(self.batch_size.min(1024));
        let Some(first) = self.next().await else {
            return batch;
        };
        let mut bytes = first.payload.len();
        batch.push(first);
        let deadline = tokio::time::Instant::now() + self.batch_timeout;
        while batch.len() < self.batch_size && bytes < MAX_BATCH_BYTES {
            if let Some(r) = self.try_next().await {
                bytes += r.payload.len();
                batch.push(r);
                continue;
            }
            // Without a linger the batch goes now: a timer, even one already
            // due, waits for the next millisecond tick — per delivery, when
            // the broker's window is small.
            if self.batch_timeout.is_zero() {
                break;
            }
            match self.next_before(deadline).await {
                Some(r) => {
                    bytes += r.payload.len();
                    batch.push(r);
                }
                None => break,
            }
        }
        self.batch_done();
        batch
    }

    /// A downstream failure: the record comes back from `next` (first),
    /// up to `max_retries` times; then it is dead-lettered and acknowledged.
    /// Without a dead-letter topic the exhausted record is returned, still
    /// unacknowledged, for the caller to decide.
    pub async fn retry(&mut self, mut record: Record, error: &str) -> Result<(), Record> {
        if record.attempts < self.max_retries {
            record.attempts += 1;
            self.retries.push_back(record);
            return Ok(());
        }
        let Some(dead_letters) = &self.dead_letters else {
            return Err(record);
        };
        let reason = format!("downstream failed {} times: {error}", record.attempts + 1);
        let letter = DeadLetter {
            qos: record.qos,
            properties: record.properties.as_deref(),
            ..DeadLetter::new(&record.topic, record.payload.clone(), &reason)
        };
        if let Err(e) = dead_letters.publish(&letter).await {
            tracing::error!(topic = %record.topic, error = %e, "The message stays unacknowledged.");
            return Err(record);
        }
        self.metrics.dead_lettered();
        record.ack();
        Ok(())
    }

    /// The batches of [`next_batch`](Self::next_batch) as a [`Stream`].
    pub fn batches(self) -> Batches {
        Batches {
            source: Some(self),
            next: None,
        }
    }

    /// The source's metrics (see [`SOURCE_METRIC_NAMES`]).
    pub fn metrics(&self) -> &SourceMetrics {
        self.metrics.refresh(&self.clients);
        &self.metrics
    }

    /// A handle to read the metrics and client states from elsewhere
    /// (a status page) while the source is being consumed.
    pub fn monitor(&self) -> SourceMonitor {
        SourceMonitor {
            clients: self.clients.clone(),
            metrics: self.metrics.clone(),
            buffer: self.buffer.as_ref().map(|b| b.metrics().clone()),
        }
    }

    /// The source's clients (one per `parallelism`).
    pub fn clients(&self) -> &[Client] {
        &self.clients
    }

    /// Disconnects every client (acknowledgements given so far go out first).
    pub async fn close(self) {
        for c in &self.clients {
            c.disconnect().await;
        }
        for t in self.tasks {
            t.abort();
        }
        if let Some(b) = &self.buffer {
            b.close();
        }
    }
}

/// The records as a [`Stream`], for `StreamExt` combinators and `select!`:
/// the same records, in the same order, as [`MqttSource::next`].
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let broker = mqlink::broker::EmbeddedBroker::start("127.0.0.1:0").await?;
/// # let url = format!("mqtt://{}", broker.local_addr());
/// use futures_util::StreamExt; // or tokio_stream::StreamExt
/// use mqlink::{MqttSource, QoS};
///
/// let source = MqttSource::builder().broker(&url).topic("t/#", QoS::AtLeastOnce).start().await?;
/// # let sink = mqlink::MqttSink::builder().broker(&url).topic("t/1").start().await?;
/// # for i in 0..3 { sink.send(mqlink::SinkRecord::json(serde_json::json!(i))).await?.await?; }
/// let mut first_three = source.take(3);
/// while let Some(mut record) = first_three.next().await {
///     record.ack();
/// }
/// # Ok(()) }
/// ```
impl Stream for MqttSource {
    type Item = Record;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Record>> {
        let this = self.get_mut();
        loop {
            if let Some(p) = &mut this.processing {
                let p = p.get_mut().unwrap_or_else(|e| e.into_inner());
                let r = std::task::ready!(p.as_mut().poll(cx));
                this.processing = None;
                match r {
                    Some(r) => return Poll::Ready(Some(r)),
                    None => continue,
                }
            }
            if let Some(r) = this.retries.pop_front() {
                return Poll::Ready(Some(r));
            }
            let (worker, d) = match &mut this.inner {
                Inner::Merged(rx) => return rx.poll_recv(cx),
                Inner::Direct(worker, incoming) => match this.pending.pop_front() {
                    Some(d) => (worker.clone(), d),
                    None => match std::task::ready!(incoming.poll_recv(cx)) {
                        Some(d) => (worker.clone(), d),
                        None => return Poll::Ready(None),
                    },
                },
            };
            // Processing may wait (a dead letter's window, a schema fetch),
            // so it is a future of its own that owns what it needs.
            this.processing = Some(std::sync::Mutex::new(Box::pin(async move {
                worker.process(d).await
            })));
        }
    }
}

/// Batches of records as a [`Stream`], from [`MqttSource::batches`]: each
/// item is what [`MqttSource::next_batch`] returns; the stream ends when the
/// source does.
pub struct Batches {
    source: Option<MqttSource>,
    next: Option<NextBatch>,
}

type NextBatch = Pin<Box<dyn Future<Output = (MqttSource, Vec<Record>)> + Send>>;

impl std::fmt::Debug for Batches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batches")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl Batches {
    /// The source, between batches (`None` while one is being collected):
    /// for [`MqttSource::retry`] and the metrics.
    pub fn source(&mut self) -> Option<&mut MqttSource> {
        self.source.as_mut()
    }
}

impl Stream for Batches {
    type Item = Vec<Record>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Vec<Record>>> {
        let this = self.get_mut();
        if this.next.is_none() {
            let Some(mut source) = this.source.take() else {
                return Poll::Ready(None);
            };
            this.next = Some(Box::pin(async move {
                let batch = source.next_batch().await;
                (source, batch)
            }));
        }
        let next = this.next.as_mut().expect("set above");
        let (source, batch) = std::task::ready!(next.as_mut().poll(cx));
        this.next = None;
        if batch.is_empty() {
            // Every client has stopped; the source is dropped with the stream.
            return Poll::Ready(None);
        }
        this.source = Some(source);
        Poll::Ready(Some(batch))
    }
}

/// Subscribes while reading. A broker may send messages before the SUBACK
/// (a resumed session's queue; Mosquitto sends it first), and some
/// (rumqttd, amqtt) hold the SUBACK until those messages are acknowledged,
/// which only the application can do: so the source starts as soon as the
/// SUBACK or a first delivery arrives, whichever comes first. In the second
/// case the SUBACK is awaited in the background; a refusal then ends the
/// session with the refusal as its error (`Status::Stopped`), and the
/// source ends.
async fn subscribe_reading(
    client: &Client,
    incoming: &mut Incoming,
    subs: Vec<Subscription>,
) -> Result<Option<Delivery>, Error> {
    let mut suback = client.subscribe_request(subs).await?;
    let first = tokio::select! {
        biased;
        r = &mut suback => {
            r?;
            return Ok(None);
        }
        d = incoming.recv() => d,
    };
    let Some(first) = first else {
        // The session stopped; the token says why.
        suback.await?;
        return Err(Error::Stopped("the session ended before the SUBACK".into()));
    };
    let client = client.clone();
    tokio::spawn(async move {
        match suback.await {
            Ok(_) => tracing::debug!("Subscribed (SUBACK after the first messages)."),
            // The session ended first (`sub -C` done, or a fatal error its
            // own status reports): no refusal to speak of.
            Err(SubscribeError::Stopped(why)) => {
                tracing::debug!(reason = %why, "Session over before the SUBACK.")
            }
            Err(e) => {
                tracing::error!(error = %e, "Subscription refused after messages arrived.");
                client.fail(e.to_string()).await;
            }
        }
    });
    Ok(Some(first))
}

impl Worker {
    async fn run(
        self: Arc<Self>,
        early: Option<Delivery>,
        mut incoming: Incoming,
        tx: mpsc::Sender<Record>,
    ) {
        if let Some(d) = early {
            if let Some(record) = self.process(d).await {
                if tx.send(record).await.is_err() {
                    return;
                }
            }
        }
        while let Some(d) = incoming.recv().await {
            if let Some(record) = self.process(d).await {
                if tx.send(record).await.is_err() {
                    return;
                }
            }
        }
    }

    /// Filters, decodes and dead-letters one delivery; `Some` for a record
    /// to hand to the application.
    async fn process(&self, mut d: Delivery) -> Option<Record> {
        let ack = d.take_ack().map(Ack::Session);
        self.process_acked(d, ack).await
    }

    /// [`process`](Self::process) with the acknowledgement apart (a
    /// delivery read from the local buffer has its log entry's).
    async fn process_acked(&self, d: Delivery, ack: Option<Ack>) -> Option<Record> {
        self.metrics.received(d.payload.len());
        if !self.filters.is_empty() && !self.filters.iter().any(|f| f.matches(&d.topic)) {
            // Brought in by a merged filter; nobody asked for it.
            self.metrics.filtered();
            if let Some(a) = ack {
                a.ack();
            }
            return None;
        }
        let mut value = self.format.decode(&d.topic, &d.payload);
        if let (Err(FormatError::SchemaNotLoaded(id)), Decoder::AvroRegistry { registry }) =
            (&value, &self.format)
        {
            value = match fetch_schema(registry, *id).await {
                Ok(()) => self.format.decode(&d.topic, &d.payload),
                Err(e) => Err(FormatError::Registry(e)),
            };
        }
        if let Decoder::SparkplugB(host) = &self.format {
            self.request_rebirths(host).await;
        }
        if value.is_err() {
            self.metrics.decode_error();
        }
        if let (Err(e), Some(dead_letters)) = (&value, &self.dead_letters) {
            self.dead_letter(d, ack, dead_letters, e).await;
            return None;
        }
        Some(into_record(d, ack, value, self.metrics.clone(), self.index))
    }

    /// Publishes the NCMD rebirth requests the host state queued (QoS 0,
    /// as Sparkplug sends commands); a failure is logged: the next refused
    /// message asks again.
    async fn request_rebirths(&self, host: &crate::format::sparkplug::Host) {
        for (topic, payload) in host.take_requests() {
            let msg = Message::new(topic.clone(), payload, QoS::AtMostOnce);
            match self.client.publish(msg).await {
                Ok(_) => tracing::info!(%topic, "Sparkplug B rebirth requested."),
                Err(e) => {
                    tracing::warn!(%topic, error = %e, "Sparkplug B rebirth request not sent.")
                }
            }
        }
    }

    /// Publishes the dead letter and acknowledges the original only once the
    /// broker confirmed it; a failed dead letter leaves the original
    /// unacknowledged, so the broker redelivers it.
    async fn dead_letter(
        &self,
        d: Delivery,
        ack: Option<Ack>,
        dead_letters: &DeadLetters,
        error: &FormatError,
    ) {
        let reason = error.to_string();
        let letter = DeadLetter {
            qos: d.qos,
            properties: d.properties.as_deref(),
            ..DeadLetter::new(&d.topic, d.payload.clone(), &reason)
        };
        let token = match dead_letters.send(&letter).await {
            Ok(token) => token,
            Err(e) => {
                return tracing::error!(topic = %d.topic, error = %e, "The message stays unacknowledged.")
            }
        };
        // Confirmed aside: the next deliveries need not wait for it.
        let (dead_letters, metrics) = (dead_letters.clone(), self.metrics.clone());
        let topic = d.topic.to_string();
        tokio::spawn(async move {
            match dead_letters.confirmation(token).await {
                Ok(_) => {
                    metrics.dead_lettered();
                    if let Some(a) = ack {
                        a.ack();
                    }
                }
                Err(e) => tracing::error!(%topic, error = %e, "The message stays unacknowledged."),
            }
        });
    }
}

fn into_record(
    d: Delivery,
    ack: Option<Ack>,
    value: Result<Value, FormatError>,
    metrics: Arc<SourceMetrics>,
    client: u16,
) -> Record {
    if ack.is_some() {
        metrics.unacknowledged_inc();
    }
    let log_position = match &ack {
        Some(Ack::Log(a)) => Some(a.position()),
        _ => None,
    };
    Record {
        topic: d.topic,
        payload: d.payload,
        qos: d.qos,
        retain: d.retain,
        dup: d.dup,
        packet_id: d.packet_id,
        client,
        properties: d.properties,
        received_at: d.received_at,
        value,
        attempts: 0,
        log_position,
        ack,
        metrics,
    }
}

/// A Sparkplug B primary host's STATE topic, online and offline payloads.
fn sparkplug_host_state(format: &Decoder) -> Option<(String, Bytes, Bytes)> {
    match format {
        Decoder::SparkplugB(host) => host
            .options()
            .host_id
            .as_deref()
            .map(crate::format::sparkplug::host_state),
        _ => None,
    }
}

/// Publishes the primary host's STATE online (retained) on every
/// connection; its will says offline when the connection is lost.
async fn announce_online(client: Client, topic: String, online: Bytes) {
    let mut status = client.status();
    loop {
        if matches!(
            &*status.borrow_and_update(),
            crate::session::Status::Connected { .. }
        ) {
            let msg = Message::new(topic.clone(), online.clone(), QoS::AtLeastOnce).retain(true);
            match client.publish(msg).await {
                Ok(_) => tracing::info!(%topic, "Sparkplug B host online."),
                Err(e) => tracing::warn!(%topic, error = %e, "Sparkplug B STATE not published."),
            }
        }
        if status.changed().await.is_err() {
            return;
        }
    }
}

/// Retries of a failed schema fetch: a registry that is briefly away should
/// not send good messages to the dead-letter topic.
const SCHEMA_FETCH: Backoff = Backoff::exponential(
    Duration::from_millis(200),
    2.0,
    Duration::from_millis(800),
    2,
);

/// Fetches a schema, retrying under [`SCHEMA_FETCH`].
async fn fetch_schema(registry: &crate::format::Registry, id: u32) -> Result<(), String> {
    let mut attempt = 0;
    loop {
        let Err(e) = registry.fetch(id).await else {
            return Ok(());
        };
        attempt += 1;
        tracing::warn!(schema_id = id, error = %e, attempt, "Schema fetch failed.");
        let Some(wait) = SCHEMA_FETCH.retry_delay(attempt) else {
            return Err(e);
        };
        tokio::time::sleep(wait).await;
    }
}

/// The dead letter: the original payload with topic and reason as user
/// properties (MQTT 5), or a JSON envelope (3.1.1).
#[deprecated(since = "0.2.0", note = "use mqlink::dead_letter")]
pub fn dead_letter_message(
    topic: &str,
    payload: &Bytes,
    qos: QoS,
    properties: Option<&PublishProperties>,
    dlq: &str,
    reason: &str,
    v5: bool,
) -> Message {
    let letter = DeadLetter {
        qos,
        properties,
        ..DeadLetter::new(topic, payload.clone(), reason)
    };
    crate::dead_letter::message(&letter, dlq, QoS::AtLeastOnce, v5)
}
