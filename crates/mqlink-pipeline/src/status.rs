//! What each component is doing: counters, state and last error, rendered
//! as Prometheus text (/metrics), JSON (/status, Laminar's
//! `system.connector_status`), readiness reasons (/ready), and the live
//! status on a terminal or in periodic log lines.
//!
//! Nothing here reads a secret: connection details are client ids and
//! broker addresses only.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};

use mqlink::format::{ColumnType, Value};
use mqlink::sink::SinkMetrics;
use mqlink::source::SourceMonitor;
use mqlink::Client;
use tokio::sync::watch;

use crate::connectors::{self, Reaches};

/// Metric names the pipeline adds to the library's (labels: `component`, `type`).
pub const SOURCE_ACKNOWLEDGED: &str = "mqlink_source_records_acknowledged_total";
pub const SINK_RECEIVED: &str = "mqlink_sink_received_total";
pub const SINK_CONFIRMED: &str = "mqlink_sink_confirmed_total";
pub const SINK_ERRORS: &str = "mqlink_sink_errors_total";
/// Record faults without a dead-letter topic: acknowledged, not written.
pub const SINK_SKIPPED: &str = "mqlink_sink_skipped_total";
pub const SINK_DEAD_LETTERED: &str = "mqlink_sink_dead_lettered_total";
pub const SOURCE_DEAD_LETTERED: &str = "mqlink_source_dead_lettered_total";
/// Rows a windowed query received behind its watermark.
pub const SOURCE_LATE: &str = "mqlink_source_late_rows_total";
/// Messages the broker sent again that a window's state already held
/// (see `redelivery`): acknowledged, not counted twice.
pub const SOURCE_REDELIVERED: &str = "mqlink_source_redeliveries_skipped_total";
/// 1 while the component has made no progress for `run.stall_timeout`
/// with work waiting.
pub const STALLED: &str = "mqlink_component_stalled";
pub const SINK_IN_FLIGHT: &str = "mqlink_sink_in_flight";
pub const SINK_CONNECTION: &str = "mqlink_sink_connection_status";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Source,
    Sink,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Starting,
    Running,
    /// A finite source that made all its records, or a drained sink.
    Finished,
    Failed,
}

impl State {
    fn as_str(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Running => "running",
            State::Finished => "finished",
            State::Failed => "failed",
        }
    }
}

/// The MQTT side of a component, once it has started.
pub enum Mqtt {
    Source(SourceMonitor),
    Sink(Vec<Client>, Arc<SinkMetrics>),
}

pub struct Component {
    pub name: String,
    pub kind: Kind,
    pub type_name: &'static str,
    /// Watched by the run (start order, drain) instead of polled.
    state: watch::Sender<State>,
    last_error: Mutex<Option<String>>,
    /// Source: records made or received; sink: records it took off its channel.
    pub records: AtomicU64,
    /// Sink: records put into its channel (some may wait there still).
    pub handed: AtomicU64,
    /// Source: records acknowledged after every sink confirmed them
    /// (shared with its batches); sink: records it confirmed.
    pub confirmed: Arc<AtomicU64>,
    /// Sink: failed writes (retried). Sources count decode errors in the
    /// library's `mqlink_source_decode_errors_total`.
    pub errors: AtomicU64,
    /// Sink: record faults (dead-lettered or skipped).
    pub record_faults: AtomicU64,
    /// Sink: record faults without a dead-letter topic, acknowledged unwritten.
    pub skipped: AtomicU64,
    /// Record faults published to the dead-letter topic (sink: its own;
    /// source: a stage's faults and late rows).
    pub dead_lettered: AtomicU64,
    /// Source: rows behind the watermark, not aggregated.
    pub late: AtomicU64,
    /// Source: redeliveries a stage's state already held.
    pub redelivered: AtomicU64,
    /// Why the component is stalled, while it is (see `run.stall_timeout`).
    stalled: Mutex<Option<String>>,
    /// Non-MQTT sinks (PostgreSQL): whether the connection is up.
    pub connected: AtomicBool,
    pub mqtt: OnceLock<Mqtt>,
}

impl Component {
    pub fn new(name: &str, kind: Kind, type_name: &'static str) -> Arc<Component> {
        Arc::new(Component {
            name: name.to_owned(),
            kind,
            type_name,
            state: watch::Sender::new(State::Starting),
            last_error: Mutex::new(None),
            records: AtomicU64::new(0),
            handed: AtomicU64::new(0),
            confirmed: Arc::new(AtomicU64::new(0)),
            errors: AtomicU64::new(0),
            record_faults: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
            late: AtomicU64::new(0),
            redelivered: AtomicU64::new(0),
            stalled: Mutex::new(None),
            connected: AtomicBool::new(false),
            mqtt: OnceLock::new(),
        })
    }

    pub fn set_state(&self, s: State) {
        self.state.send_replace(s);
    }
    pub fn state(&self) -> State {
        *self.state.borrow()
    }
    /// Waits until the state satisfies `f`.
    pub async fn until(&self, f: impl FnMut(&State) -> bool) {
        let mut rx = self.state.subscribe();
        // The sender lives as long as `self`: never closed here.
        let _ = rx.wait_for(f).await;
    }

    /// A source on a broker (Laminar's metric aliases are for these).
    fn subscribes(&self) -> bool {
        self.kind == Kind::Source && self.reaches() == Reaches::Broker
    }

    /// What its connector reaches (nothing known for a name outside the
    /// registry, as in tests).
    fn reaches(&self) -> Reaches {
        connectors::named(self.type_name).map_or(Reaches::Nothing, |c| c.reaches)
    }
    /// The last error, as every status page shows it: credentials in
    /// URLs are redacted here, once.
    pub fn set_error(&self, e: impl Into<String>) {
        *self.last_error.lock().expect("error lock") = Some(redacted(e.into()));
    }
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().expect("error lock").clone()
    }
    pub fn set_stalled(&self, why: Option<String>) {
        *self.stalled.lock().expect("stall lock") = why.map(redacted);
    }
    pub fn stalled(&self) -> Option<String> {
        self.stalled.lock().expect("stall lock").clone()
    }

    /// Errors as /status and the live status count them: a source's
    /// undecodable payloads (dropped or dead-lettered), a sink's failed
    /// writes and record faults.
    pub fn error_count(&self) -> u64 {
        match (self.kind, self.mqtt.get()) {
            (Kind::Source, Some(Mqtt::Source(m))) => m
                .metrics()
                .get("mqlink_source_decode_errors_total")
                .unwrap_or(0),
            (Kind::Source, _) => 0,
            (Kind::Sink, _) => self.errors.load(Relaxed) + self.record_faults.load(Relaxed),
        }
    }

    /// `sources.NAME` or `sinks.NAME`, as in the file.
    pub fn path(&self) -> String {
        format!("{}{}", self.section(), self.name)
    }

    /// Whether `p` is [`path`](Self::path) (without building it: log
    /// events are matched against every component).
    fn has_path(&self, p: &str) -> bool {
        p.strip_prefix(self.section()) == Some(self.name.as_str())
    }

    fn section(&self) -> &'static str {
        match self.kind {
            Kind::Source => "sources.",
            Kind::Sink => "sinks.",
        }
    }

    fn clients(&self) -> &[Client] {
        match self.mqtt.get() {
            Some(Mqtt::Source(m)) => m.clients(),
            Some(Mqtt::Sink(c, _)) => c,
            None => &[],
        }
    }

    /// Why this component is not ready, if it is not.
    pub fn not_ready(&self) -> Option<String> {
        let state = self.state();
        if state == State::Failed {
            return Some(format!(
                "{}: failed: {}",
                self.path(),
                self.last_error().unwrap_or_default()
            ));
        }
        if state == State::Finished {
            return None;
        }
        if state == State::Starting {
            return Some(match self.last_error() {
                Some(e) => format!("{}: starting: {e}", self.path()),
                None => format!("{}: starting", self.path()),
            });
        }
        if let Some(why) = self.buffer_full() {
            return Some(format!("{}: {why}", self.path()));
        }
        if let Some(why) = self.stalled() {
            return Some(format!("{}: stalled: {why}", self.path()));
        }
        if let (Reaches::Database(db), false) = (self.reaches(), self.connected.load(Relaxed)) {
            return Some(format!(
                "{}: not connected to {db}: {}",
                self.path(),
                self.last_error().unwrap_or_default()
            ));
        }
        // Other sinks without a broker (a file): their writes are failing
        // (a full disk, a deleted directory) and retried.
        if self.kind == Kind::Sink && self.mqtt.get().is_none() && !self.connected.load(Relaxed) {
            return Some(format!(
                "{}: writes failing: {}",
                self.path(),
                self.last_error().unwrap_or_default()
            ));
        }
        for c in self.clients() {
            let status = c.status().borrow().clone();
            if !status.is_connected() {
                return Some(format!(
                    "{}: client {} is {status}",
                    self.path(),
                    c.client_id()
                ));
            }
        }
        None
    }

    /// Why a source's local buffer is full, when it is.
    fn buffer_full(&self) -> Option<String> {
        let Some(Mqtt::Source(m)) = self.mqtt.get() else {
            return None;
        };
        let b = m.buffer().filter(|b| b.is_full())?;
        let v = |name: &str| {
            b.snapshot()
                .into_iter()
                .find(|(n, _)| *n == name)
                .map_or(0, |x| x.1)
        };
        let window: u64 = m.clients().iter().map(|c| c.stats().unacknowledged()).sum();
        Some(format!(
            "local buffer full ({} entries, {} of buffer.max_bytes = {} bytes, oldest {} s): nothing more is acknowledged until the sinks confirm older entries; the broker's window holds {window} unacknowledged and its queue the rest",
            b.entries(),
            v("mqlink_source_buffer_bytes"),
            v("mqlink_source_buffer_max_bytes"),
            v("mqlink_source_buffer_oldest_entry_age_seconds"),
        ))
    }

    /// Entries in a source's local buffer (0 without one).
    pub fn buffered(&self) -> u64 {
        match self.mqtt.get() {
            Some(Mqtt::Source(m)) => m.buffer().map_or(0, |b| b.entries()),
            _ => 0,
        }
    }

    fn in_flight(&self) -> u64 {
        self.records
            .load(Relaxed)
            .saturating_sub(self.confirmed.load(Relaxed) + self.skipped.load(Relaxed))
    }

    /// Records received but not yet acknowledged (source), or handed to
    /// the sink and not yet confirmed, its channel included (sink).
    pub fn unconfirmed(&self) -> u64 {
        match (self.kind, self.mqtt.get()) {
            (Kind::Source, Some(Mqtt::Source(m))) => m
                .metrics()
                .get("mqlink_source_unacknowledged")
                .unwrap_or(0)
                .max(self.buffered()),
            (Kind::Sink, _) => self
                .handed
                .load(Relaxed)
                .max(self.records.load(Relaxed))
                .saturating_sub(self.confirmed.load(Relaxed) + self.skipped.load(Relaxed)),
            _ => self.in_flight(),
        }
    }

    /// Whether the component reaches what it reads or writes: every MQTT
    /// client connected, PostgreSQL connected; a file or generator always.
    pub fn is_connected(&self) -> bool {
        match self.mqtt.get() {
            Some(_) => self
                .clients()
                .iter()
                .all(|c| c.status().borrow().is_connected()),
            None => match self.reaches() {
                Reaches::Broker => false,
                Reaches::Database(_) => self.connected.load(Relaxed),
                Reaches::Nothing => true,
            },
        }
    }

    /// The connector's name in Laminar's terms (`system.connector_status`).
    pub fn connector_name(&self) -> &'static str {
        let c = connectors::named(self.type_name);
        let name = match self.kind {
            Kind::Source => c.and_then(|c| c.source.as_ref()).map(|s| s.status_name),
            Kind::Sink => c.and_then(|c| c.sink.as_ref()).map(|s| s.status_name),
        };
        name.unwrap_or(self.type_name)
    }

    /// One word for what the component is doing: `connecting`, `running`,
    /// `reconnecting` (a client or the database connection is down),
    /// `stalled`, `finished`, `failed`.
    pub fn status_word(&self) -> &'static str {
        match self.state() {
            State::Failed => "failed",
            State::Finished => "finished",
            State::Starting => "connecting",
            State::Running if self.stalled().is_some() => "stalled",
            State::Running if !self.is_connected() => "reconnecting",
            State::Running => "running",
        }
    }

    /// (metric name, value) pairs of this component.
    pub fn metrics(&self) -> Vec<(&'static str, u64)> {
        let mut out = Vec::new();
        match self.kind {
            Kind::Source => {
                match self.mqtt.get() {
                    Some(Mqtt::Source(m)) => {
                        out.extend(m.metrics().snapshot());
                        out.extend(m.buffer().map(|b| b.snapshot()).into_iter().flatten());
                    }
                    _ => out.push((
                        "mqlink_source_messages_received_total",
                        self.records.load(Relaxed),
                    )),
                }
                out.push((SOURCE_ACKNOWLEDGED, self.confirmed.load(Relaxed)));
                // A stage's dead letters count with the library's.
                let staged = self.dead_lettered.load(Relaxed);
                match out.iter_mut().find(|(n, _)| *n == SOURCE_DEAD_LETTERED) {
                    Some((_, v)) => *v += staged,
                    None => out.push((SOURCE_DEAD_LETTERED, staged)),
                }
                out.push((SOURCE_LATE, self.late.load(Relaxed)));
                out.push((SOURCE_REDELIVERED, self.redelivered.load(Relaxed)));
            }
            Kind::Sink => {
                out.push((SINK_RECEIVED, self.records.load(Relaxed)));
                out.push((SINK_CONFIRMED, self.confirmed.load(Relaxed)));
                out.push((SINK_ERRORS, self.errors.load(Relaxed)));
                out.push((SINK_SKIPPED, self.skipped.load(Relaxed)));
                out.push((SINK_DEAD_LETTERED, self.dead_lettered.load(Relaxed)));
                out.push((SINK_IN_FLIGHT, self.in_flight()));
                out.push((SINK_CONNECTION, self.is_connected() as u64));
                if let Some(Mqtt::Sink(_, m)) = self.mqtt.get() {
                    for (name, v) in m.snapshot() {
                        if !out.iter().any(|(n, _)| *n == name) {
                            out.push((name, v));
                        }
                    }
                }
            }
        }
        out.push((STALLED, self.stalled().is_some() as u64));
        out
    }

    fn status_json(&self) -> serde_json::Value {
        let metrics: serde_json::Map<String, serde_json::Value> = self
            .metrics()
            .into_iter()
            .map(|(n, v)| (n.to_string(), v.into()))
            .collect();
        let clients: Vec<serde_json::Value> = self
            .clients()
            .iter()
            .map(|c| serde_json::json!({"client_id": c.client_id(), "status": c.status().borrow().to_string()}))
            .collect();
        let metric = |n: &str| metrics.get(n).and_then(|v| v.as_u64());
        let mut status = serde_json::json!({
            "name": self.name,
            "kind": match self.kind { Kind::Source => "source", Kind::Sink => "sink" },
            "type": self.type_name,
            "state": self.state().as_str(),
            "records": self.records.load(Relaxed),
            "confirmed": self.confirmed.load(Relaxed),
            "unconfirmed": self.unconfirmed(),
            "errors": self.error_count(),
            "skipped": self.skipped.load(Relaxed),
            "dead_lettered": self.dead_lettered.load(Relaxed),
            "late": self.late.load(Relaxed),
            "redelivered": self.redelivered.load(Relaxed),
            "stalled": self.stalled(),
            "last_error": self.last_error(),
            "status": self.status_word(),
            "not_ready": self.not_ready(),
            "clients": clients,
        });
        if self.kind == Kind::Source {
            status["lag_seconds"] =
                metric("mqlink_source_oldest_unacknowledged_age_seconds").into();
            status["accounting"] = self.accounting(&metric).into();
        }
        status["metrics"] = metrics.into();
        status
    }

    /// A source's records by where they are: `received = acknowledged +
    /// dead_lettered + skipped + in_flight` once nothing is moving (each
    /// is read on its own, so while records flow they may differ by those
    /// in motion between two reads).
    fn accounting(&self, metric: &dyn Fn(&str) -> Option<u64>) -> serde_json::Value {
        serde_json::json!({
            "received": self.records.load(Relaxed),
            "acknowledged": self.confirmed.load(Relaxed),
            "dead_lettered": metric(SOURCE_DEAD_LETTERED).unwrap_or(0),
            "skipped": self.skipped.load(Relaxed),
            "in_flight": self.unconfirmed(),
        })
    }
}

/// `s` with credentials in URLs redacted (allocating only when it has any).
fn redacted(s: String) -> String {
    match mqlink::secret::redact(&s) {
        std::borrow::Cow::Borrowed(_) => s,
        std::borrow::Cow::Owned(r) => r,
    }
}

/// Laminar's metric names (`laminar_mqtt_*`, label `source`): the same
/// values as the library's source metrics they stand for.
pub const LAMINAR_ALIASES: [(&str, &str); 5] = [
    (
        "laminar_mqtt_messages_received",
        "mqlink_source_messages_received_total",
    ),
    (
        "laminar_mqtt_bytes_received",
        "mqlink_source_bytes_received_total",
    ),
    (
        "laminar_mqtt_connection_status",
        "mqlink_source_connection_status",
    ),
    (
        "laminar_mqtt_subscription_count",
        "mqlink_source_subscriptions",
    ),
    (
        "laminar_mqtt_reconnect_attempts",
        "mqlink_source_reconnect_attempts_total",
    ),
];
const LAMINAR_COUNTERS: [&str; 3] = [
    "laminar_mqtt_messages_received",
    "laminar_mqtt_bytes_received",
    "laminar_mqtt_reconnect_attempts",
];

/// A table of a running pipeline (`system.connector_status`,
/// `system.connector_logs`), as rows of values: what /query evaluates a
/// query over.
#[derive(Clone, Debug)]
pub struct SystemTable {
    /// `system.connector_status`.
    pub name: &'static str,
    pub columns: Vec<(&'static str, ColumnType)>,
    pub rows: Vec<Vec<Value>>,
}

/// Evaluates a query over a running pipeline's system tables: the rows as
/// JSON (`{"columns": [...], "rows": [[...], ...]}`), or what is wrong with
/// the query. Installed by the binary from `mqlink-sql`.
pub type QueryHandler = Arc<
    dyn Fn(&str, &[SystemTable], &QueryLimits) -> Result<serde_json::Value, String> + Send + Sync,
>;

/// What one /query may use: the evaluation stops with an error (never
/// the process) past any of them.
#[derive(Clone, Debug)]
pub struct QueryLimits {
    /// Bytes the values and rows it makes may take.
    pub memory: u64,
    /// When it must have an answer.
    pub deadline: std::time::Instant,
    /// Set when the answer is no longer wanted (the client left, the time
    /// limit passed).
    pub cancel: Arc<AtomicBool>,
}

const STATUS_COLUMNS: [(&str, ColumnType); 19] = [
    ("connector_name", ColumnType::Text),
    ("name", ColumnType::Text),
    ("kind", ColumnType::Text),
    ("status", ColumnType::Text),
    ("connected", ColumnType::Boolean),
    ("messages_received", ColumnType::BigInt),
    ("bytes_received", ColumnType::BigInt),
    ("records", ColumnType::BigInt),
    ("confirmed", ColumnType::BigInt),
    ("unconfirmed", ColumnType::BigInt),
    ("errors", ColumnType::BigInt),
    ("skipped", ColumnType::BigInt),
    ("dead_lettered", ColumnType::BigInt),
    ("late", ColumnType::BigInt),
    ("subscription_count", ColumnType::BigInt),
    ("reconnect_attempts", ColumnType::BigInt),
    ("client_ids", ColumnType::Text),
    ("stalled", ColumnType::Text),
    ("last_error", ColumnType::Text),
];

const LOG_COLUMNS: [(&str, ColumnType); 5] = [
    ("timestamp", ColumnType::Timestamp),
    ("level", ColumnType::Text),
    ("connector", ColumnType::Text),
    ("name", ColumnType::Text),
    ("message", ColumnType::Text),
];

impl Component {
    /// This component's row of `system.connector_status` (columns as
    /// [`STATUS_COLUMNS`]).
    fn status_row(&self) -> Vec<Value> {
        let metrics = self.metrics();
        let metric = |name: &str| metrics.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
        let int = |v: Option<u64>| v.map_or(Value::Null, |v| Value::BigInt(v as i64));
        // (Errors and stall reasons are redacted when they are set.)
        let text = |v: Option<String>| v.map_or(Value::Null, Value::Text);
        let mqtt_source = matches!(self.mqtt.get(), Some(Mqtt::Source(_)));
        let records = self.records.load(Relaxed);
        let (received, bytes, subscriptions) = if mqtt_source {
            (
                metric("mqlink_source_messages_received_total"),
                metric("mqlink_source_bytes_received_total"),
                metric("mqlink_source_subscriptions"),
            )
        } else if self.subscribes() {
            (Some(0), Some(0), Some(0))
        } else {
            (Some(records), None, None)
        };
        let reconnects = (self.reaches() == Reaches::Broker)
            .then(|| self.clients().iter().map(|c| c.stats().reconnects()).sum());
        let dead_lettered = match self.kind {
            Kind::Source => metric("mqlink_source_dead_lettered_total"),
            Kind::Sink => Some(self.dead_lettered.load(Relaxed)),
        };
        let ids: Vec<&str> = self.clients().iter().map(|c| c.client_id()).collect();
        vec![
            Value::Text(self.connector_name().into()),
            Value::Text(self.name.clone()),
            Value::Text(
                match self.kind {
                    Kind::Source => "source",
                    Kind::Sink => "sink",
                }
                .into(),
            ),
            Value::Text(self.status_word().into()),
            Value::Boolean(self.is_connected()),
            int(received),
            int(bytes),
            int(Some(records)),
            int(Some(self.confirmed.load(Relaxed))),
            int(Some(self.unconfirmed())),
            int(Some(self.error_count())),
            int(Some(self.skipped.load(Relaxed))),
            int(dead_lettered),
            int((self.kind == Kind::Source).then(|| self.late.load(Relaxed))),
            int(subscriptions),
            int(reconnects),
            text((!ids.is_empty()).then(|| ids.join(","))),
            text(self.stalled()),
            text(self.last_error()),
        ]
    }
}

/// All components of a pipeline, its embedded broker if it has one, and
/// the process's instance name if it has one, and how they are connected
/// (for the console's graph).
#[derive(Clone, Default)]
pub struct Registry(
    pub Arc<Vec<Arc<Component>>>,
    pub Option<mqlink::broker::BrokerMonitor>,
    pub Option<Arc<str>>,
    pub Arc<crate::console::Topology>,
);

/// A subscriber of the embedded broker that has taken nothing from its
/// full queue for this long makes the pipeline not ready: its publishers
/// are held back. (A full queue that is being taken from is back-pressure
/// doing its job, not a fault.)
const BROKER_QUEUE_STALL: std::time::Duration = std::time::Duration::from_secs(10);

impl Registry {
    /// Prometheus text exposition format, one family per metric name.
    pub fn prometheus(&self) -> String {
        let mut families: Vec<(&'static str, String)> = Vec::new();
        // Each component's metrics read once (its own families and the aliases).
        let snapshots: Vec<_> = self.0.iter().map(|c| (c, c.metrics())).collect();
        for (c, metrics) in &snapshots {
            for &(name, v) in metrics {
                let line = format!(
                    "{name}{{component=\"{}\",type=\"{}\"}} {v}\n",
                    c.name, c.type_name
                );
                match families.iter_mut().find(|(n, _)| *n == name) {
                    Some((_, lines)) => lines.push_str(&line),
                    None => families.push((name, line)),
                }
            }
        }
        for (alias, ours) in LAMINAR_ALIASES {
            let mut lines = String::new();
            for (c, metrics) in snapshots.iter().filter(|(c, _)| c.subscribes()) {
                let v = metrics
                    .iter()
                    .find(|(n, _)| *n == ours)
                    .map_or(0, |(_, v)| *v);
                let _ = writeln!(lines, "{alias}{{source=\"{}\"}} {v}", c.name);
            }
            if !lines.is_empty() {
                families.push((alias, lines));
            }
        }
        if let Some(b) = &self.1 {
            let stats = b.stats();
            for (name, v) in [
                ("mqlink_broker_sessions", stats.sessions),
                ("mqlink_broker_subscriptions", stats.subscriptions),
                ("mqlink_broker_retained_messages", stats.retained),
                ("mqlink_broker_undelivered_messages", b.undelivered()),
                ("mqlink_broker_full_queues", b.full_queues().len()),
            ] {
                families.push((name, format!("{name} {v}\n")));
            }
        }
        let mut out = String::new();
        for (name, lines) in families {
            let kind = if name.ends_with("_total") || LAMINAR_COUNTERS.contains(&name) {
                "counter"
            } else {
                "gauge"
            };
            let _ = writeln!(out, "# TYPE {name} {kind}");
            out.push_str(&lines);
        }
        out
    }

    /// `system.connector_status` (one row per source and sink) and
    /// `system.connector_logs` (the events [`crate::logs::RecentLogs`]
    /// kept, oldest first), as they are now.
    pub fn system_tables(&self) -> Vec<SystemTable> {
        let status = SystemTable {
            name: "system.connector_status",
            columns: STATUS_COLUMNS.to_vec(),
            rows: self.0.iter().map(|c| c.status_row()).collect(),
        };
        // An event names its component, or the MQTT client of one.
        let owner = |e: &crate::logs::LogEvent| {
            self.0.iter().find(|c| {
                e.component.as_deref().is_some_and(|p| c.has_path(p))
                    || e.client_id
                        .as_deref()
                        .is_some_and(|id| c.clients().iter().any(|cl| cl.client_id() == id))
            })
        };
        let logs = SystemTable {
            name: "system.connector_logs",
            columns: LOG_COLUMNS.to_vec(),
            rows: crate::logs::recent()
                .into_iter()
                .map(|e| {
                    let c = owner(&e);
                    vec![
                        Value::Timestamp(e.timestamp_us),
                        Value::Text(e.level.into()),
                        c.map_or(Value::Null, |c| Value::Text(c.connector_name().into())),
                        match (c, &e.component) {
                            (Some(c), _) => Value::Text(c.name.clone()),
                            (None, Some(p)) => Value::Text(p.clone()),
                            (None, None) => Value::Null,
                        },
                        Value::Text(e.message),
                    ]
                })
                .collect(),
        };
        vec![status, logs]
    }

    /// Reasons the pipeline is not ready; empty when it is.
    pub fn not_ready(&self) -> Vec<String> {
        let mut reasons: Vec<String> = self.0.iter().filter_map(|c| c.not_ready()).collect();
        if let Some(b) = &self.1 {
            for q in b.full_queues() {
                if q.idle >= BROKER_QUEUE_STALL {
                    reasons.push(format!(
                        "embedded broker: subscriber {} has taken nothing from its full queue ({} messages) for {} s; publishers to it wait",
                        q.client_id,
                        q.queued,
                        q.idle.as_secs()
                    ));
                }
            }
        }
        reasons
    }

    pub fn status_json(&self) -> serde_json::Value {
        let reasons = self.not_ready();
        let mut status = serde_json::json!({
            "instance": self.2.as_deref(),
            "ready": reasons.is_empty(),
            "not_ready": reasons,
            "components": self.0.iter().map(|c| c.status_json()).collect::<Vec<_>>(),
            "topology": self.3.to_json(),
        });
        if let Some(b) = &self.1 {
            let stats = b.stats();
            status["embedded_broker"] = serde_json::json!({
                "sessions": stats.sessions,
                "subscriptions": stats.subscriptions,
                "retained": stats.retained,
                "undelivered": b.undelivered(),
                "full_queues": b.full_queues().iter().map(|q| serde_json::json!({
                    "client_id": q.client_id,
                    "queued": q.queued,
                    "idle_seconds": q.idle.as_secs_f64(),
                })).collect::<Vec<_>>(),
            });
        }
        status
    }

    /// One line per component: state, total, rate since `prev`, unconfirmed, errors.
    pub fn lines(&self, prev: &mut Vec<u64>, secs: f64) -> Vec<String> {
        prev.resize(self.0.len(), 0);
        self.0
            .iter()
            .zip(prev.iter_mut())
            .map(|(c, p)| {
                let n = c.records.load(Relaxed);
                let rate = (n.saturating_sub(*p)) as f64 / secs.max(1e-3);
                *p = n;
                let (done, pending) = match c.kind {
                    Kind::Source => ("acked", "unacked"),
                    Kind::Sink => ("confirmed", "in flight"),
                };
                let mut line = format!(
                    "{:<9} {:<20} {:<9} {:>10} records {:>9.0}/s  {done} {:>10}  {pending} {:>6}  errors {}",
                    c.type_name,
                    c.path(),
                    c.state().as_str(),
                    n,
                    rate,
                    c.confirmed.load(Relaxed),
                    c.unconfirmed(),
                    c.error_count(),
                );
                if let Some(Mqtt::Source(m)) = c.mqtt.get() {
                    // Lag: how long the oldest unacknowledged message has waited.
                    let lag = m
                        .metrics()
                        .get("mqlink_source_oldest_unacknowledged_age_seconds")
                        .unwrap_or(0);
                    let _ = write!(line, "  lag {lag}s");
                    // The broker's window, and how long it was full (no
                    // message could come until the sinks confirmed).
                    let get = |n| m.metrics().get(n).unwrap_or(0);
                    let window = get("mqlink_source_window");
                    if window > 0 {
                        let full = get("mqlink_source_window_full_seconds_total");
                        let _ = write!(line, "  window {window} full {full}s");
                    }
                    if let Some(b) = m.buffer() {
                        let _ = write!(line, "  buffered {}", b.entries());
                    }
                }
                if let Some(reason) = c.not_ready().filter(|_| c.state() != State::Failed) {
                    let _ = write!(line, "  ({})", reason.split_once(": ").map_or(reason.as_str(), |x| x.1));
                } else if let Some(e) = c.last_error().filter(|_| c.state() == State::Failed) {
                    let _ = write!(line, "  ({e})");
                }
                line
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_tables_and_laminar_names_before_a_source_started() {
        let src = Component::new("iot", Kind::Source, "mqtt");
        let sink = Component::new("out", Kind::Sink, "file");
        src.set_error("connect to mqtt://user:secret@h:1883 refused");
        sink.set_state(State::Running);
        sink.records.store(4, Relaxed);
        let r = Registry(Arc::new(vec![src, sink]), None, None, Arc::default());
        // Redacted where it is set: /status, the live display and the
        // tables all read it from there.
        assert!(!r.0[0].status_json().to_string().contains("secret"));
        assert!(!r.0[0].last_error().unwrap().contains("secret"));
        let m = r.prometheus();
        for name in [
            "laminar_mqtt_messages_received",
            "laminar_mqtt_bytes_received",
            "laminar_mqtt_connection_status",
            "laminar_mqtt_subscription_count",
            "laminar_mqtt_reconnect_attempts",
        ] {
            assert!(
                m.contains(&format!("{name}{{source=\"iot\"}} 0\n")),
                "{name}:\n{m}"
            );
        }
        assert!(
            m.contains("# TYPE laminar_mqtt_messages_received counter"),
            "{m}"
        );
        assert!(
            m.contains("# TYPE laminar_mqtt_connection_status gauge"),
            "{m}"
        );
        assert!(!m.contains("source=\"out\""), "{m}");
        let t = r.system_tables();
        assert_eq!(t[0].name, "system.connector_status");
        assert_eq!(t[0].columns.len(), t[0].rows[0].len());
        let col = |row: &Vec<Value>, name: &str| {
            row[t[0].columns.iter().position(|(n, _)| *n == name).unwrap()].clone()
        };
        let (iot, out) = (&t[0].rows[0], &t[0].rows[1]);
        assert_eq!(
            col(iot, "connector_name"),
            Value::Text("mqtt_source".into())
        );
        assert_eq!(col(iot, "status"), Value::Text("connecting".into()));
        assert_eq!(col(iot, "connected"), Value::Boolean(false));
        assert_eq!(
            col(iot, "last_error"),
            Value::Text("connect to mqtt://user:***@h:1883 refused".into())
        );
        assert_eq!(col(out, "connector_name"), Value::Text("file".into()));
        assert_eq!(col(out, "status"), Value::Text("running".into()));
        assert_eq!(col(out, "messages_received"), Value::BigInt(4));
        assert_eq!(col(out, "bytes_received"), Value::Null);
        assert_eq!(col(out, "reconnect_attempts"), Value::Null);
        assert_eq!(t[1].name, "system.connector_logs");
        assert_eq!(t[1].columns[0], ("timestamp", ColumnType::Timestamp));
    }
}
