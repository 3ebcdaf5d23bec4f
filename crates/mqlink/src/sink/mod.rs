//! The MQTT sink: records published with the broker's confirmation.
//!
//! In the spirit of Jet's `MqttSinks.builder()` and Quix's `MQTTSink`:
//! a topic template (`{topic_root}/{key}` is just a template), a value
//! serializer, QoS 0/1/2, retain fixed or per record, MQTT 5 properties.
//! `send` returns a [`DeliveryHandle`] that completes on PUBACK/PUBCOMP;
//! `flush(timeout)` completes when everything sent so far is confirmed, or
//! fails saying how many are not — a timeout that really fires.
//! Many records are in flight at once (the session's window); with
//! `publisher_sync` each `send` waits for its own confirmation.

mod confirmations;
mod spool;
mod template;

use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::error::{Error, PublishError};
use crate::options::{Backoff, ConnectOptions};
use crate::session::{Client, Confirmed, Message, PublishToken};
use crate::source::{Record, RecordAck};
use crate::types::QoS;
use crate::PublishProperties;
pub use confirmations::Confirmations;
pub use template::{TemplateError, TopicTemplate};

/// A record's value: JSON, or bytes passed through.
#[derive(Clone, Debug, PartialEq)]
pub enum RecordValue {
    /// A JSON value: fields for topic templates, JSON text as payload.
    Json(serde_json::Value),
    /// Bytes, published as they are.
    Bytes(Bytes),
}

impl RecordValue {
    /// The JSON value, if the record has one.
    pub fn as_json(&self) -> Option<&serde_json::Value> {
        match self {
            RecordValue::Json(v) => Some(v),
            RecordValue::Bytes(_) => None,
        }
    }
}

/// One record to publish (the shape the source's records and Airbyte's
/// RECORD messages map to).
#[derive(Clone, Debug, PartialEq)]
pub struct SinkRecord {
    /// Routes the record to one of the `parallelism` clients (same key,
    /// same client, same order); `{key}` in templates.
    pub key: Option<String>,
    /// What is published.
    pub value: RecordValue,
    /// `{namespace}` in templates (Airbyte's namespace).
    pub namespace: Option<String>,
    /// `{stream}` in templates (Airbyte's stream; the source topic of a
    /// record that came from an [`MqttSource`](crate::MqttSource)).
    pub stream: Option<String>,
    /// MQTT 5 user properties added to the publish.
    pub headers: Vec<(String, String)>,
    /// When the record was made or received.
    pub timestamp: Option<SystemTime>,
}

impl SinkRecord {
    /// A record with a JSON value.
    pub fn json(value: serde_json::Value) -> Self {
        SinkRecord {
            key: None,
            value: RecordValue::Json(value),
            namespace: None,
            stream: None,
            headers: Vec::new(),
            timestamp: None,
        }
    }
    /// A record whose bytes are published as they are.
    pub fn bytes(value: impl Into<Bytes>) -> Self {
        SinkRecord {
            value: RecordValue::Bytes(value.into()),
            ..SinkRecord::json(serde_json::Value::Null)
        }
    }
    /// The record with a key (see [`SinkRecord::key`]).
    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }
}

/// A source record as a sink record: the decoded value as JSON (raw bytes
/// stay bytes), MQTT 5 user properties as headers, the arrival time, and the
/// topic it came from as `stream` — so a bridge can template on `{stream}`.
impl From<&crate::source::Record> for SinkRecord {
    fn from(r: &crate::source::Record) -> Self {
        let value = match &r.value {
            Ok(crate::format::Value::Bytes(_)) | Err(_) => RecordValue::Bytes(r.payload.clone()),
            Ok(v) => RecordValue::Json(v.to_json()),
        };
        SinkRecord {
            key: None,
            value,
            namespace: None,
            stream: Some(r.topic.to_string()),
            headers: r
                .properties
                .as_ref()
                .map(|p| p.user_properties.clone())
                .unwrap_or_default(),
            timestamp: Some(r.received_at),
        }
    }
}

/// How a record's value becomes a payload.
#[derive(Clone, Debug, PartialEq, Default)]
pub enum Serializer {
    /// JSON text of the value (bytes values pass through).
    #[default]
    Json,
    /// Bytes as they are; a JSON string as its text; other JSON as JSON text.
    Raw,
    /// Text from a template over the record (`{key}`, `{field}`, `{a.b}` …),
    /// built with [`TopicTemplate::parse_text`].
    Template(TopicTemplate),
}

/// The retain flag: fixed, or read per record from a boolean field.
#[derive(Clone, Debug, PartialEq)]
pub enum Retain {
    /// The same for every record.
    Fixed(bool),
    /// This boolean field of the record's JSON value; a record without it fails.
    Field(String),
}

/// The old spelling of the sink's retries, now a [`Backoff`]
/// ([`SinkBuilder::retry`]): `Fixed` is [`Backoff::fixed`], `Exponential`
/// [`Backoff::exponential`], `Indefinitely` [`Backoff::indefinitely`],
/// `None` no `retry` at all.
#[deprecated(since = "0.2.0", note = "use SinkBuilder::retry with a Backoff")]
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RetryStrategy {
    /// A failed publish fails its record.
    None,
    /// Up to `attempts` more tries, `interval` apart.
    Fixed {
        /// The wait before each retry.
        interval: Duration,
        /// Retries at most.
        attempts: u32,
    },
    /// Up to `attempts` more tries, the wait growing by `multiplier` to `max`.
    Exponential {
        /// The wait before the first retry.
        initial: Duration,
        /// Factor by which each wait grows.
        multiplier: f64,
        /// The longest wait.
        max: Duration,
        /// Retries at most.
        attempts: u32,
    },
    /// Forever, `interval` apart.
    Indefinitely {
        /// The wait before each retry.
        interval: Duration,
    },
}

#[allow(deprecated)]
impl RetryStrategy {
    /// The same retries as a [`Backoff`]; `None` for no retries.
    pub fn backoff(self) -> Option<Backoff> {
        match self {
            RetryStrategy::Fixed { attempts: 0, .. }
            | RetryStrategy::Exponential { attempts: 0, .. }
            | RetryStrategy::None => None,
            RetryStrategy::Fixed { interval, attempts } => Some(Backoff::fixed(interval, attempts)),
            RetryStrategy::Exponential {
                initial,
                multiplier,
                max,
                attempts,
            } => Some(Backoff::exponential(initial, multiplier, max, attempts)),
            RetryStrategy::Indefinitely { interval } => Some(Backoff::indefinitely(interval)),
        }
    }

    /// The wait before retry `n` (1-based), or `None` when out of tries.
    pub fn delay(&self, n: u32) -> Option<Duration> {
        self.backoff().and_then(|b| b.retry_delay(n))
    }
}

/// A sink configuration; build it with [`MqttSink::builder`] (the fields
/// are set and checked only there).
#[derive(Clone, Debug)]
pub struct SinkConfig {
    pub(crate) connection: ConnectOptions,
    pub(crate) topic: TopicTemplate,
    pub(crate) qos: QoS,
    pub(crate) retain: Retain,
    /// MQTT 5 properties on every publish (records' headers are added).
    pub(crate) properties: Option<PublishProperties>,
    pub(crate) serializer: Serializer,
    /// Makes the whole message per record instead of `topic`, `qos`,
    /// `retain`, `properties` and `serializer`.
    pub(crate) message_fn: Option<MessageFn>,
    /// Wait for each record's confirmation inside `send` (Airbyte's `publisher_sync`).
    pub(crate) publisher_sync: bool,
    /// Publishing clients, `<client_id>-0` …; records are routed by key.
    pub(crate) parallelism: u16,
    /// The wait before retry `n` of a failed publish, or `None` to give up.
    pub(crate) retry: Option<RetryFn>,
    /// The key serializer: a record without a key takes this field of its
    /// value, as text (strings as they are, numbers and booleans printed).
    pub(crate) key_field: Option<String>,
    /// Crash-safe spool: records are on disk before `send` returns, and
    /// those not confirmed are published again after a restart.
    pub(crate) spool_dir: Option<std::path::PathBuf>,
    /// `send` waits while the spool holds more than this.
    pub(crate) spool_max_bytes: u64,
}

impl SinkConfig {
    /// The connection options.
    pub fn connection(&self) -> &ConnectOptions {
        &self.connection
    }
    /// The topic template (unused when a [`SinkBuilder::message_fn`] makes the messages).
    pub fn topic(&self) -> &TopicTemplate {
        &self.topic
    }
}

/// The function of [`SinkBuilder::message_fn`].
#[derive(Clone)]
pub(crate) struct MessageFn(Arc<MakeMessage>);

type MakeMessage = dyn Fn(&SinkRecord) -> Result<Message, String> + Send + Sync;

impl std::fmt::Debug for MessageFn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MessageFn(..)")
    }
}

/// The function of [`SinkBuilder::retry_fn`] (a [`Backoff`] is one).
#[derive(Clone)]
pub(crate) struct RetryFn(Arc<RetryDelay>);

type RetryDelay = dyn Fn(u32, &PublishError) -> Option<Duration> + Send + Sync;

impl RetryFn {
    fn delay(&self, attempt: u32, error: &PublishError) -> Option<Duration> {
        (self.0)(attempt, error)
    }
}

impl std::fmt::Debug for RetryFn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RetryFn(..)")
    }
}

/// Why a record was not sent, or a sink could not start.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SinkError {
    /// The topic template is invalid, or cannot be rendered for this record.
    #[error(transparent)]
    Template(#[from] TemplateError),
    /// The record lacks the boolean field of [`Retain::Field`].
    #[error("retain field {field:?} is missing or not a boolean")]
    RetainField {
        /// The field.
        field: String,
    },
    /// The session would not take the publish.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// `parallelism` of 0.
    #[error("parallelism must be at least 1")]
    Parallelism,
    /// The spool could not be written.
    #[error("spool: {0}")]
    Spool(String),
    /// `parallelism > 1` without a client id.
    #[error("parallelism > 1 needs a client_id to derive <client_id>-0 … from")]
    ParallelNeedsClientId,
    /// The connection options cannot work.
    #[error("connection: {0}")]
    Options(String),
    /// The [`SinkBuilder::message_fn`] refused the record.
    #[error("message_fn: {0}")]
    MessageFn(String),
}

/// `flush` did not see everything confirmed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlushError {
    /// Records were still unconfirmed when the timeout fired.
    #[error("flush timed out after {after:?}: {unconfirmed} records not confirmed yet{}", cause.as_deref().map(|c| format!(" ({c})")).unwrap_or_default())]
    Timeout {
        /// The timeout.
        after: Duration,
        /// Records sent and not confirmed yet.
        unconfirmed: u64,
        /// What the sessions say: not connected, and why.
        cause: Option<String>,
    },
    /// Records sent since the previous flush that failed.
    #[error("{failed} records sent since the previous flush were not confirmed by the broker{}", last_error.as_deref().map(|c| format!(": {c}")).unwrap_or_default())]
    Failed {
        /// How many.
        failed: u64,
        /// The last of their errors.
        last_error: Option<String>,
    },
}

/// Completes when the broker confirmed the record.
#[must_use = "a record is delivered when its handle completes; drop it only if flush() covers it"]
pub struct DeliveryHandle(oneshot::Receiver<Result<Confirmed, PublishError>>);

impl std::fmt::Debug for DeliveryHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeliveryHandle").finish_non_exhaustive()
    }
}

impl std::future::Future for DeliveryHandle {
    type Output = Result<Confirmed, PublishError>;
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx).map(|r| {
            r.unwrap_or_else(|_| Err(PublishError::Stopped("the sink was dropped".into())))
        })
    }
}

/// Metric names, as exported by `mqlink run`.
pub const SINK_METRIC_NAMES: [&str; 6] = [
    "mqlink_sink_published_total",
    "mqlink_sink_confirmed_total",
    "mqlink_sink_failed_total",
    "mqlink_sink_in_flight",
    "mqlink_sink_spool_bytes",
    "mqlink_sink_spool_records",
];

/// A sink's counters (read-only; see [`SINK_METRIC_NAMES`]).
#[derive(Debug, Default)]
pub struct SinkMetrics {
    confirmations: Confirmations,
    spool_bytes: AtomicU64,
    spool_records: AtomicU64,
}

impl SinkMetrics {
    fn spool_usage(&self, spool: &spool::Spool) {
        self.spool_bytes.store(spool.bytes(), Relaxed);
        self.spool_records.store(spool.records(), Relaxed);
    }

    /// Every metric with its name, in [`SINK_METRIC_NAMES`] order.
    pub fn snapshot(&self) -> [(&'static str, u64); 6] {
        let c = &self.confirmations;
        [
            (SINK_METRIC_NAMES[0], c.published()),
            (SINK_METRIC_NAMES[1], c.confirmed()),
            (SINK_METRIC_NAMES[2], c.failed()),
            (SINK_METRIC_NAMES[3], c.in_flight()),
            (SINK_METRIC_NAMES[4], self.spool_bytes.load(Relaxed)),
            (SINK_METRIC_NAMES[5], self.spool_records.load(Relaxed)),
        ]
    }
    /// The confirmation counters, for a publisher of its own (the
    /// Sparkplug edge node) that reports as a sink.
    pub fn confirmations(&self) -> &Confirmations {
        &self.confirmations
    }
    /// One metric by name.
    pub fn get(&self, name: &str) -> Option<u64> {
        self.snapshot()
            .into_iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v)
    }
}

/// Builds an [`MqttSink`]: the connection (whole, or piece by piece with
/// [`broker`](Self::broker), [`client_id`](Self::client_id),
/// [`auth`](Self::auth), [`keep_session`](Self::keep_session)), the topic
/// template, QoS, retain, serializer, parallelism, retries and the spool.
/// Problems are reported by [`build`](Self::build) / [`start`](Self::start).
pub struct SinkBuilder {
    config: SinkConfig,
    error: Option<SinkError>,
    /// Connection settings given piece by piece, applied at `build`.
    connect: Option<crate::options::ConnectOptionsBuilder>,
}

impl SinkBuilder {
    crate::options::connection_setters!();

    /// The topic template, e.g. `sensors/{device_id}/telemetry` or `{topic_root}/{key}`.
    pub fn topic(mut self, template: impl AsRef<str>) -> Self {
        match TopicTemplate::parse(template.as_ref()) {
            Ok(t) => self.config.topic = t,
            Err(e) => self.error = Some(e.into()),
        }
        self
    }
    /// The QoS of every publish [default: 1, at least once].
    pub fn qos(mut self, q: QoS) -> Self {
        self.config.qos = q;
        self
    }
    /// The retain flag, fixed or per record [default: not retained].
    pub fn retain(mut self, r: Retain) -> Self {
        self.config.retain = r;
        self
    }
    /// MQTT 5 properties on every publish (each record's headers are added
    /// as user properties).
    pub fn properties(mut self, p: PublishProperties) -> Self {
        self.config.properties = Some(p);
        self
    }
    /// How a record's value becomes the payload [default: JSON].
    pub fn serializer(mut self, s: Serializer) -> Self {
        self.config.serializer = s;
        self
    }
    /// Each [`send`](MqttSink::send) waits for its own confirmation
    /// (Airbyte's `publisher_sync`) instead of pipelining.
    pub fn publisher_sync(mut self, sync: bool) -> Self {
        self.config.publisher_sync = sync;
        self
    }
    /// Publishing clients `<client_id>-0` …; records are routed by key so
    /// that one key keeps its order [default: 1].
    pub fn parallelism(mut self, n: u16) -> Self {
        self.config.parallelism = n;
        self
    }
    /// Turns the crash-safe spool on: records are on disk in `dir` before
    /// [`send`](MqttSink::send) returns, those not confirmed are published
    /// again after a restart, and `send` waits while the spool holds more
    /// than `max_bytes`.
    pub fn spool(mut self, dir: impl Into<std::path::PathBuf>, max_bytes: u64) -> Self {
        self.config.spool_dir = Some(dir.into());
        self.config.spool_max_bytes = max_bytes;
        self
    }
    /// Keys from a value field for records that have none: the field's text
    /// (strings as they are, numbers and booleans printed).
    pub fn key_field(mut self, field: impl Into<String>) -> Self {
        self.config.key_field = Some(field.into());
        self
    }
    /// Retries of failed publishes paced by `backoff` (Jet's
    /// `RetryStrategies`: [`Backoff::fixed`], [`Backoff::exponential`],
    /// [`Backoff::indefinitely`]); the default is none. See
    /// [`retry_fn`](Self::retry_fn).
    pub fn retry(mut self, backoff: Backoff) -> Self {
        self.config.retry = Some(RetryFn(Arc::new(move |n, _| backoff.retry_delay(n))));
        self
    }
    /// The old spelling of [`retry`](Self::retry).
    #[deprecated(since = "0.2.0", note = "use retry(Backoff::…)")]
    #[allow(deprecated)]
    pub fn retry_strategy(mut self, r: RetryStrategy) -> Self {
        self.config.retry = None;
        match r.backoff() {
            Some(b) => self.retry(b),
            None => self,
        }
    }
    /// Retries of failed publishes decided by a function of yours, as Jet's
    /// `retryFn`: given the attempt (1 for the first retry) and the error,
    /// the wait before retrying, or `None` to give up (the record's handle
    /// then fails with that error). The record keeps its place in the order
    /// of confirmations while it is retried; it is never reported delivered
    /// without the broker's confirmation.
    ///
    /// ```
    /// # fn f() -> Result<(), mqlink::sink::SinkError> {
    /// use std::time::Duration;
    /// use mqlink::{MqttSink, PublishError};
    ///
    /// let config = MqttSink::builder()
    ///     .broker("mqtt://localhost")
    ///     .topic("out")
    ///     // A refusal by the broker (not authorized, quota) stays a refusal.
    ///     .retry_fn(|attempt, error| match error {
    ///         PublishError::Rejected { .. } => None,
    ///         _ if attempt <= 5 => Some(Duration::from_millis(100) * attempt),
    ///         _ => None,
    ///     })
    ///     .build()?;
    /// # Ok(()) }
    /// ```
    pub fn retry_fn(
        mut self,
        f: impl Fn(u32, &PublishError) -> Option<Duration> + Send + Sync + 'static,
    ) -> Self {
        self.config.retry = Some(RetryFn(Arc::new(f)));
        self
    }
    /// Makes each record's message (topic, payload, QoS, retain, MQTT 5
    /// properties) with a function of yours, as Jet's `messageFn`. It
    /// replaces [`topic`](Self::topic), [`qos`](Self::qos),
    /// [`retain`](Self::retain), [`properties`](Self::properties) and
    /// [`serializer`](Self::serializer); an `Err` fails that record's
    /// [`send`](MqttSink::send) with [`SinkError::MessageFn`]. Records are
    /// still routed by key when `parallelism > 1`.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let broker = mqlink::broker::EmbeddedBroker::start("127.0.0.1:0").await?;
    /// # let url = format!("mqtt://{}", broker.local_addr());
    /// use mqlink::{Message, MqttSink, QoS, SinkRecord};
    /// use serde_json::json;
    ///
    /// let sink = MqttSink::builder()
    ///     .broker(&url)
    ///     .message_fn(|record| {
    ///         let v = record.value.as_json().ok_or("not JSON")?;
    ///         let device = v["device"].as_str().ok_or("no device")?;
    ///         let alarm = v["t"].as_f64().is_some_and(|t| t > 80.0);
    ///         let qos = if alarm { QoS::ExactlyOnce } else { QoS::AtMostOnce };
    ///         Ok(Message::new(format!("devices/{device}/t"), v["t"].to_string(), qos).retain(true))
    ///     })
    ///     .start()
    ///     .await?;
    /// sink.send(SinkRecord::json(json!({"device": "d1", "t": 91.5}))).await?.await?;
    /// # Ok(()) }
    /// ```
    pub fn message_fn(
        mut self,
        f: impl Fn(&SinkRecord) -> Result<Message, String> + Send + Sync + 'static,
    ) -> Self {
        self.config.message_fn = Some(MessageFn(Arc::new(f)));
        self
    }
    /// The configuration, or the first problem found.
    pub fn build(mut self) -> Result<SinkConfig, SinkError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        if let Some(b) = self.connect.take() {
            self.config.connection = b.build().map_err(|e| SinkError::Options(e.to_string()))?;
        }
        if self.config.parallelism == 0 {
            return Err(SinkError::Parallelism);
        }
        if self.config.parallelism > 1 && self.config.connection.client_id.is_none() {
            return Err(SinkError::ParallelNeedsClientId);
        }
        self.config
            .connection
            .validate()
            .map_err(|e| SinkError::Options(e.to_string()))?;
        Ok(self.config)
    }
    /// Builds and starts the sink (see [`MqttSink::start`]). Not `async`
    /// in what it does; it is for symmetry with [`SourceBuilder::start`](crate::source::SourceBuilder::start).
    pub async fn start(self) -> Result<MqttSink, Error> {
        MqttSink::start(self.build()?)
    }
}

/// A publish awaiting its confirmation, with what a retry needs.
struct Pending {
    token: PublishToken,
    done: oneshot::Sender<Result<Confirmed, PublishError>>,
    retry: Option<(Client, Message)>,
    /// Spool sequence number, when the spool is on.
    seq: Option<u64>,
    /// The source record's acknowledgement, given once this is confirmed.
    upstream: Option<RecordAck>,
}

/// A spooled record on its way to a client.
struct Spooled {
    seq: u64,
    client: usize,
    msg: Message,
    done: oneshot::Sender<Result<Confirmed, PublishError>>,
    upstream: Option<RecordAck>,
}

/// The spool, shared by `send` (append) and the tracker (confirm).
struct SpoolState {
    spool: std::sync::Mutex<spool::Spool>,
    max_bytes: u64,
    room: tokio::sync::Notify,
    queue: mpsc::UnboundedSender<Spooled>,
}

impl std::fmt::Debug for MqttSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttSink")
            .field("clients", &self.clients)
            .field("topic", &self.config.topic.to_string())
            .finish_non_exhaustive()
    }
}

/// A running sink.
///
/// ```no_run
/// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
/// use mqlink::sink::{MqttSink, SinkRecord};
/// let sink = MqttSink::builder()
///     .broker("mqtt://localhost:1883")
///     .topic("sensors/{device_id}")
///     .start()
///     .await?;
/// let handle = sink.send(SinkRecord::json(serde_json::json!({"device_id": "d1", "t": 21.5}))).await?;
/// handle.await?; // the broker confirmed it (PUBACK)
/// # Ok(()) }
/// ```
pub struct MqttSink {
    clients: Vec<Client>,
    config: SinkConfig,
    tracker: mpsc::UnboundedSender<Pending>,
    metrics: Arc<SinkMetrics>,
    next_unkeyed: AtomicUsize,
    spool: Option<Arc<SpoolState>>,
}

impl MqttSink {
    /// Starts building a sink, as Jet's `MqttSinks.builder()`.
    pub fn builder() -> SinkBuilder {
        SinkBuilder {
            config: SinkConfig {
                connection: ConnectOptions::default(),
                topic: TopicTemplate::parse("mqlink").expect("a valid literal"),
                qos: QoS::AtLeastOnce,
                retain: Retain::Fixed(false),
                properties: None,
                serializer: Serializer::Json,
                message_fn: None,
                publisher_sync: false,
                parallelism: 1,
                retry: None,
                key_field: None,
                spool_dir: None,
                spool_max_bytes: 1 << 30,
            },
            error: None,
            connect: None,
        }
    }

    /// Starts the clients without waiting for the broker: records sent
    /// while it is down wait in the window and go out once it is up.
    pub fn start(config: SinkConfig) -> Result<MqttSink, Error> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::NoRuntime);
        }
        if config.parallelism == 0 {
            return Err(SinkError::Parallelism.into());
        }
        let mut clients = Vec::new();
        for i in 0..config.parallelism {
            let mut opts = config.connection.clone();
            if config.parallelism > 1 {
                opts.client_id = opts.client_id.map(|id| format!("{id}-{i}"));
            }
            let (client, _incoming) = Client::start(opts)?;
            clients.push(client);
        }
        let metrics = Arc::new(SinkMetrics::default());
        let (tracker, rx) = mpsc::unbounded_channel();
        let spool = match &config.spool_dir {
            None => None,
            Some(dir) => {
                let (spool, pending) = spool::Spool::open(dir, config.spool_max_bytes)
                    .map_err(|e| Error::Stopped(format!("spool {}: {e}", dir.display())))?;
                metrics.spool_usage(&spool);
                let (queue, queue_rx) = mpsc::unbounded_channel();
                let state = Arc::new(SpoolState {
                    spool: std::sync::Mutex::new(spool),
                    max_bytes: config.spool_max_bytes,
                    room: tokio::sync::Notify::new(),
                    queue,
                });
                if !pending.is_empty() {
                    tracing::info!(
                        records = pending.len(),
                        "Publishing records left in the spool."
                    );
                }
                for (seq, msg) in pending {
                    let (tx, _rx) = oneshot::channel();
                    metrics.confirmations.sent();
                    let _ = state.queue.send(Spooled {
                        seq,
                        client: 0,
                        msg,
                        done: tx,
                        upstream: None,
                    });
                }
                tokio::spawn(publish_spooled(
                    queue_rx,
                    clients.clone(),
                    tracker.clone(),
                    config.retry.is_some(),
                    metrics.clone(),
                ));
                Some(state)
            }
        };
        tokio::spawn(track(
            rx,
            metrics.clone(),
            config.retry.clone(),
            spool.clone(),
        ));
        Ok(MqttSink {
            clients,
            config,
            tracker,
            metrics,
            next_unkeyed: AtomicUsize::new(0),
            spool,
        })
    }

    /// The sink's metrics.
    pub fn metrics(&self) -> &SinkMetrics {
        &self.metrics
    }

    /// The metrics, to read from another task (a status page).
    pub fn metrics_handle(&self) -> Arc<SinkMetrics> {
        self.metrics.clone()
    }

    /// The publishing clients (one per `parallelism`).
    pub fn clients(&self) -> &[Client] {
        &self.clients
    }

    /// Renders, serializes and publishes `record`. Waits while the window
    /// is full. A record whose topic cannot be rendered fails alone.
    pub async fn send(&self, record: SinkRecord) -> Result<DeliveryHandle, SinkError> {
        let (client, msg) = self.prepare(record)?;
        self.publish(client, msg, None).await.map_err(|(e, _)| e)
    }

    /// Publishes a source's record (as [`SinkRecord::from`] makes it) and
    /// acknowledges it upstream once this sink's broker confirmed it: the
    /// bridge's step. Sends are pipelined; acknowledgements follow the
    /// confirmations in send order, so upstream they leave in arrival order.
    /// A record that is never confirmed is never acknowledged, and holds
    /// back the acknowledgements of every later record (the near broker
    /// sends them again after a reconnect). On an `Err` the record keeps its
    /// acknowledgement, for the caller to decide (retry, dead letter).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let broker = mqlink::broker::EmbeddedBroker::start("127.0.0.1:0").await?;
    /// # let url = format!("mqtt://{}", broker.local_addr());
    /// use mqlink::{MqttSink, MqttSource, QoS};
    ///
    /// let mut upstream = MqttSource::builder().broker(&url).topic("in/#", QoS::AtLeastOnce).start().await?;
    /// let downstream = MqttSink::builder().broker(&url).topic("out/{stream}").start().await?;
    /// # let p = MqttSink::builder().broker(&url).topic("in/x").start().await?;
    /// # p.send(mqlink::SinkRecord::json(serde_json::json!(1))).await?.await?;
    /// if let Some(mut record) = upstream.next().await {
    ///     let confirmed = downstream.forward(&mut record).await?;
    ///     confirmed.await?; // on "out/in/x", and acknowledged on "in/x"
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn forward(&self, record: &mut Record) -> Result<DeliveryHandle, SinkError> {
        let (client, msg) = self.prepare(SinkRecord::from(&*record))?;
        let upstream = record.take_ack();
        match self.publish(client, msg, upstream).await {
            Ok(h) => Ok(h),
            Err((e, upstream)) => {
                record.give_back_ack(upstream);
                Err(e)
            }
        }
    }

    /// The client and message of a record: key, routing, message.
    fn prepare(&self, mut record: SinkRecord) -> Result<(usize, Message), SinkError> {
        if let (None, Some(field), RecordValue::Json(v)) =
            (&record.key, &self.config.key_field, &record.value)
        {
            record.key = match v.get(field) {
                Some(serde_json::Value::String(s)) => Some(s.clone()),
                Some(n @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => {
                    Some(n.to_string())
                }
                _ => None,
            };
        }
        let client_idx = self.route(record.key.as_deref());
        let msg = match &self.config.message_fn {
            Some(f) => (f.0)(&record).map_err(SinkError::MessageFn)?,
            None => self.message(record)?,
        };
        Ok((client_idx, msg))
    }

    /// Publishes through client `client_idx` (or the spool); an `Err`
    /// gives the upstream acknowledgement back.
    async fn publish(
        &self,
        client_idx: usize,
        msg: Message,
        upstream: Option<RecordAck>,
    ) -> Result<DeliveryHandle, (SinkError, Option<RecordAck>)> {
        if let Some(state) = &self.spool {
            return self.spool_send(state, client_idx, msg, upstream).await;
        }
        let client = &self.clients[client_idx];
        let retry = self
            .config
            .retry
            .is_some()
            .then(|| (client.clone(), msg.clone()));
        let token = match client.publish(msg).await {
            Ok(t) => t,
            Err(e) => return Err((e.into(), upstream)),
        };
        self.metrics.confirmations.sent();
        let (tx, rx) = oneshot::channel();
        let _ = self.tracker.send(Pending {
            token,
            done: tx,
            retry,
            seq: None,
            upstream,
        });
        Ok(self.settle(DeliveryHandle(rx)).await)
    }

    /// The message of a record: topic template, retain, properties and
    /// headers, serializer.
    fn message(&self, record: SinkRecord) -> Result<Message, SinkError> {
        let topic = self.config.topic.render(&record)?;
        let retain = match &self.config.retain {
            Retain::Fixed(r) => *r,
            Retain::Field(f) => match &record.value {
                RecordValue::Json(v) => v
                    .get(f)
                    .and_then(serde_json::Value::as_bool)
                    .ok_or_else(|| SinkError::RetainField { field: f.clone() })?,
                RecordValue::Bytes(_) => return Err(SinkError::RetainField { field: f.clone() }),
            },
        };
        let mut properties = self.config.properties.clone();
        if !record.headers.is_empty() {
            properties
                .get_or_insert_with(Default::default)
                .user_properties
                .extend(record.headers.iter().cloned());
        }
        let payload = match &self.config.serializer {
            Serializer::Template(t) => Bytes::from(t.render(&record)?),
            s => serialize(s, record.value),
        };
        Ok(Message {
            topic,
            payload,
            qos: self.config.qos,
            retain,
            properties,
        })
    }

    /// With the spool: on disk first (back-pressure at `spool_max_bytes`),
    /// then queued for its client.
    async fn spool_send(
        &self,
        state: &Arc<SpoolState>,
        client: usize,
        msg: Message,
        upstream: Option<RecordAck>,
    ) -> Result<DeliveryHandle, (SinkError, Option<RecordAck>)> {
        loop {
            let room = state.room.notified();
            if state.spool.lock().expect("spool lock").bytes() < state.max_bytes {
                break;
            }
            room.await;
        }
        let seq = {
            let mut spool = state.spool.lock().expect("spool lock");
            let seq = match spool.append(&msg) {
                Ok(seq) => seq,
                Err(e) => return Err((SinkError::Spool(e.to_string()), upstream)),
            };
            self.metrics.spool_usage(&spool);
            seq
        };
        self.metrics.confirmations.sent();
        let (tx, rx) = oneshot::channel();
        let _ = state.queue.send(Spooled {
            seq,
            client,
            msg,
            done: tx,
            upstream,
        });
        Ok(self.settle(DeliveryHandle(rx)).await)
    }

    /// With `publisher_sync`, waits for the confirmation before handing the
    /// (then completed) handle back.
    async fn settle(&self, handle: DeliveryHandle) -> DeliveryHandle {
        if !self.config.publisher_sync {
            return handle;
        }
        let r = handle.await;
        let (tx, rx) = oneshot::channel();
        let _ = tx.send(r);
        DeliveryHandle(rx)
    }

    /// Per-key order: the same key always goes through the same client.
    fn route(&self, key: Option<&str>) -> usize {
        let n = self.clients.len();
        if n == 1 {
            return 0;
        }
        match key {
            Some(k) => {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                k.hash(&mut h);
                (h.finish() % n as u64) as usize
            }
            // Unkeyed records have no order to keep across clients.
            None => self.next_unkeyed.fetch_add(1, Relaxed) % n,
        }
    }

    /// Waits until every record sent so far is confirmed, at most
    /// `timeout`. Fails when records sent since the previous flush failed
    /// (naming the last error), or on the timeout (naming why the sessions
    /// are not connected, when they are not).
    pub async fn flush(&self, timeout: Duration) -> Result<(), FlushError> {
        let confirmations = &self.metrics.confirmations;
        confirmations
            .flush(timeout, || self.session_problem())
            .await
    }

    /// Why a session is not connected, if one is not.
    fn session_problem(&self) -> Option<String> {
        self.clients.iter().find_map(|c| {
            let status = c.status().borrow().clone();
            (!status.is_connected()).then(|| format!("{}: {status}", c.client_id()))
        })
    }

    /// Flushes, then disconnects every client.
    pub async fn close(self, timeout: Duration) -> Result<(), FlushError> {
        let r = self.flush(timeout).await;
        for c in &self.clients {
            c.disconnect().await;
        }
        r
    }
}

/// Moves spooled records into their clients' windows, in spool order.
async fn publish_spooled(
    mut rx: mpsc::UnboundedReceiver<Spooled>,
    clients: Vec<Client>,
    tracker: mpsc::UnboundedSender<Pending>,
    retries: bool,
    metrics: Arc<SinkMetrics>,
) {
    while let Some(r) = rx.recv().await {
        let client = &clients[r.client.min(clients.len() - 1)];
        let retry = retries.then(|| (client.clone(), r.msg.clone()));
        match client.publish(r.msg).await {
            Ok(token) => {
                let _ = tracker.send(Pending {
                    token,
                    done: r.done,
                    retry,
                    seq: Some(r.seq),
                    upstream: r.upstream,
                });
            }
            // The session is over: the record fails (and stays in the
            // spool for the next start).
            Err(e) => {
                let failed = Err(e);
                let _ = r.done.send(failed.clone());
                metrics.confirmations.record(&failed);
            }
        }
    }
}

/// Awaits confirmations in send order, retrying failures under the
/// strategy, and completes handles and counters.
async fn track(
    mut rx: mpsc::UnboundedReceiver<Pending>,
    metrics: Arc<SinkMetrics>,
    retry: Option<RetryFn>,
    spool: Option<Arc<SpoolState>>,
) {
    // The spool checkpoint may only pass records that were confirmed: one
    // that failed because the session stopped is published again at restart.
    let mut blocked = false;
    while let Some(p) = rx.recv().await {
        let mut r = p.token.await;
        if let Some((client, msg)) = &p.retry {
            let mut attempt = 0;
            while let Err(e) = &r {
                attempt += 1;
                let Some(wait) = retry.as_ref().and_then(|f| f.delay(attempt, e)) else {
                    break;
                };
                tracing::warn!(topic = %msg.topic, attempt, error = ?r.as_ref().err(), "Publish failed; retrying.");
                tokio::time::sleep(wait).await;
                r = match client.publish(msg.clone()).await {
                    Ok(t) => t.await,
                    Err(e) => Err(e),
                };
            }
        }
        // Counted before the handle completes: with `publisher_sync`, `send`
        // returns with its record already counted.
        metrics.confirmations.record(&r);
        if let (Some(state), Some(seq)) = (&spool, p.seq) {
            blocked |= matches!(r, Err(PublishError::Stopped(_)));
            if !blocked && (rx.is_empty() || seq % 256 == 0) {
                let mut spool = state.spool.lock().expect("spool lock");
                if let Err(e) = spool.confirm(seq + 1) {
                    tracing::error!(error = %e, "Spool checkpoint failed.");
                }
                metrics.spool_usage(&spool);
                drop(spool);
                state.room.notify_waiters();
            }
        }
        if r.is_ok() {
            if let Some(ack) = p.upstream {
                ack.ack();
            }
        }
        let _ = p.done.send(r);
    }
}

fn serialize(s: &Serializer, v: RecordValue) -> Bytes {
    match (s, v) {
        (_, RecordValue::Bytes(b)) => b,
        (Serializer::Raw, RecordValue::Json(serde_json::Value::String(s))) => Bytes::from(s),
        (_, RecordValue::Json(v)) => Bytes::from(serde_json::to_vec(&v).unwrap_or_default()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(deprecated)]
    fn the_old_retry_strategies_are_backoffs() {
        let ms = Duration::from_millis;
        assert_eq!(RetryStrategy::None.backoff(), None);
        let no_retries = RetryStrategy::Fixed {
            interval: ms(10),
            attempts: 0,
        };
        // 0 attempts was no retry, where a Backoff's 0 is forever.
        assert_eq!(no_retries.backoff(), None);
        let f = RetryStrategy::Fixed {
            interval: ms(10),
            attempts: 2,
        };
        assert_eq!(f.backoff(), Some(Backoff::fixed(ms(10), 2)));
        assert_eq!((f.delay(2), f.delay(3)), (Some(ms(10)), None));
        let e = RetryStrategy::Exponential {
            initial: ms(10),
            multiplier: 2.0,
            max: ms(25),
            attempts: 5,
        };
        assert_eq!(
            e.backoff(),
            Some(Backoff::exponential(ms(10), 2.0, ms(25), 5))
        );
        assert_eq!(
            RetryStrategy::Indefinitely { interval: ms(5) }.delay(1_000_000),
            Some(ms(5))
        );
    }
}
