//! The MQTT source of a pipeline, on the library's `MqttSource`: its
//! options (Laminar's names) and its task.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use mqlink::format::sparkplug::{self, Host, HostOptions};
use mqlink::format::{AvroSchema, Decoder, Registry, Schema, Value};
use mqlink::source::{BufferOptions, BufferWhen, MqttSource, Record};
use mqlink::topic::{validate_filter, validate_topic_name};
use mqlink::{ConnectOptions, QoS};
use serde::Deserialize;
use serde_json::Value as Json;

use crate::batch::{Item, Origin};
use crate::connectors::{Closing, Connector, Shape, SourceConfig, SourceSpec, SourceStart};
use crate::sink::Outputs;
use crate::spec::{
    at_most, batch_size, connection, err, json_format, one_u16, qos, qos1, schema, typed,
    ConfigError, ConnectionConfig, Context, OneOrMany, MAX_BATCH_SIZE, MAX_BATCH_TIMEOUT_MS,
};
use crate::status::{Component, Mqtt, State};

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct MqttSourceConfig {
    /// The `[connections.NAME]` to subscribe through (required).
    pub connection: String,
    /// Topic filters; overlapping filters still deliver each message once.
    pub topics: OneOrMany,
    /// 0, 1 or 2 [default: 1].
    #[serde(default = "qos1", deserialize_with = "qos")]
    pub qos: QoS,
    /// `json`, `raw_bytes`, `avro` or `sparkplug_b` (one record per metric,
    /// docs/guides/sparkplug.md) [default: json].
    #[serde(default = "json_format")]
    pub format: String,
    /// Typed columns for `json`: `{ name = "text" | "bigint" | "double" |
    /// "boolean" | "timestamp" | "json" | "bytea" }`, in order. A missing
    /// field or `null` reads as NULL, unless the type says `"… not null"`.
    #[serde(default, deserialize_with = "schema")]
    pub schema: Option<Schema>,
    /// `raw_bytes.include_topic = true`: records of topic and payload.
    pub raw_bytes: Option<RawBytesOptions>,
    /// Avro writer schema file (`format = "avro"`).
    pub avro_schema: Option<PathBuf>,
    /// Confluent schema registry (`format = "avro"`, wire format with schema ids).
    pub schema_registry_url: Option<String>,
    /// The Sparkplug B host application (`format = "sparkplug_b"`).
    pub sparkplug: Option<SparkplugOptions>,
    /// Undecodable payloads are published here, then acknowledged.
    pub dead_letter_topic: Option<String>,
    /// What an undecodable payload does (Arroyo's `bad_data`):
    /// `dead_letter` (needs dead_letter_topic), `drop` (counted, logged,
    /// acknowledged) or `fail` (the source fails; the message is not
    /// acknowledged) [default: dead_letter with a dead_letter_topic, else drop].
    pub bad_data: Option<BadData>,
    /// Records handed to the sinks at once at most [default: 1000]; never
    /// more than the broker's window (see `batch_timeout_ms`).
    #[serde(default = "batch_size")]
    pub batch_size: usize,
    /// How long a batch may wait for more records after its first
    /// [default: 0: it takes what has arrived and goes]. Its messages stay
    /// unacknowledged meanwhile, and the broker sends at most its window of
    /// unacknowledged messages (MQTT 5: the Receive Maximum mqlink
    /// announces, 65535; 3.1.1: the broker's limit, Mosquitto's
    /// `max_inflight_messages` = 20, observed): so the batch goes as soon as
    /// that window is full instead of waiting for a message that cannot
    /// come, and on 3.1.1 a batch is never larger than the window. Time at
    /// a full window is `mqlink_source_window_full_seconds_total`.
    #[serde(default)]
    pub batch_timeout_ms: u64,
    /// Clients on a shared subscription [default: 1].
    #[serde(default = "one_u16")]
    pub parallelism: u16,
    /// Share group: the filters are subscribed as `$share/<group>/…` when
    /// it is set (other processes with the same group share the messages)
    /// or with parallelism > 1 [default: the client id].
    pub share_group: Option<String>,
    /// The durable local buffer the source acknowledges into
    /// (docs/guides/local-buffer.md).
    #[serde(default)]
    pub buffer: BufferConfig,
    /// How payloads are decoded, built when loaded.
    #[serde(skip)]
    pub decoder: Decoder,
}

/// `[sources.NAME.buffer]`: messages are acknowledged once in a local log
/// on disk, and the sinks read them from there at their own pace.
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct BufferConfig {
    /// `auto` (on for MQTT 3.1.1 connections at QoS 1/2 to an external
    /// broker, which may drop what its queue cannot hold; on any protocol
    /// at QoS 1/2 to an external broker when a sink it feeds commits in big
    /// batches (Parquet files); and while the log holds entries of an
    /// earlier run), `always` or `off` [default: auto].
    #[serde(default)]
    pub mode: BufferMode,
    /// Bytes on disk at most; when full the source stops acknowledging
    /// and the broker holds the rest [default: 1073741824 (1 GiB)].
    #[serde(default = "buffer_max_bytes")]
    pub max_bytes: u64,
    /// `fdatasync` each batch before acknowledging it, so it survives a
    /// power loss [default: false: a write() that survives a crash of
    /// mqlink, and fdatasync every 100 ms].
    #[serde(default)]
    pub fsync: bool,
    /// The log's directory [default: `<run.state_dir>/buffer/<client id>`].
    pub dir: Option<PathBuf>,
}

impl Default for BufferConfig {
    fn default() -> Self {
        BufferConfig {
            mode: BufferMode::Auto,
            max_bytes: buffer_max_bytes(),
            fsync: false,
            dir: None,
        }
    }
}

fn buffer_max_bytes() -> u64 {
    BufferOptions::DEFAULT_MAX_BYTES
}

/// When the local buffer is used.
#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum BufferMode {
    #[default]
    Auto,
    Always,
    Off,
}

impl MqttSourceConfig {
    /// The buffer's options, or `None` when it is off; `state_dir` is the
    /// pipeline's, `client_id` the source's session. `auto` leaves it off
    /// on the embedded broker: it never drops, it holds its publishers back.
    /// `wants_buffer`: a sink it feeds wants the buffer (it confirms only
    /// at commits far apart, or writes each record once through a crash by
    /// its positions), so it is on whatever the protocol.
    pub fn buffer_options(
        &self,
        state_dir: &Path,
        client_id: &str,
        embedded: bool,
        wants_buffer: bool,
    ) -> Option<BufferOptions> {
        let when = match self.buffer.mode {
            BufferMode::Off => return None,
            BufferMode::Auto if self.qos == QoS::AtMostOnce || embedded => return None,
            BufferMode::Auto if wants_buffer => BufferWhen::Always,
            BufferMode::Auto => BufferWhen::V311,
            BufferMode::Always => BufferWhen::Always,
        };
        // One directory per session: the name is the client id, with what
        // a file name cannot hold replaced.
        let name: String = client_id
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        Some(BufferOptions {
            dir: self
                .buffer
                .dir
                .clone()
                .unwrap_or_else(|| state_dir.join("buffer").join(name)),
            max_bytes: self.buffer.max_bytes,
            fsync: self.buffer.fsync,
            when,
        })
    }
}

/// What an undecodable payload does.
#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BadData {
    DeadLetter,
    Drop,
    Fail,
}

pub fn parse_source(ctx: &Context, body: Json) -> Result<SourceConfig, ConfigError> {
    let mut m: MqttSourceConfig = typed(ctx.path, body)?;
    m.validate(ctx.path, ctx.connections)?;
    m.decoder = m.decoder(ctx.path)?;
    Ok(Arc::new(m))
}

impl SourceSpec for MqttSourceConfig {
    fn connector(&self) -> &'static Connector {
        &super::CONNECTOR
    }
    fn schema(&self) -> Option<Schema> {
        match self.decoder {
            Decoder::SparkplugB(_) => Some(sparkplug::schema()),
            _ => self.schema.clone(),
        }
    }
    fn shape(&self) -> Shape {
        match &self.decoder {
            Decoder::RawBytes {
                include_topic: false,
            } => Shape::Payload,
            Decoder::RawBytes {
                include_topic: true,
            } => Shape::TopicAndPayload,
            _ => Shape::Decoded(self.schema()),
        }
    }
    fn connection(&self) -> Option<(&str, u16)> {
        Some((&self.connection, self.parallelism))
    }
    /// Raw payloads only: the library never dead-letters them out of the
    /// pipeline's sight (a decoding source's dead letters would never be
    /// settled).
    fn settles_relayed(&self) -> Option<Vec<String>> {
        matches!(self.decoder, Decoder::RawBytes { .. }).then(|| self.topics.to_vec())
    }
    fn staged(&self, schema: &Schema) -> Option<SourceConfig> {
        let mut m = self.clone();
        m.schema = Some(schema.clone());
        m.decoder = Decoder::Json {
            schema: Some(schema.clone()),
        };
        Some(Arc::new(m))
    }
    fn run(&self, s: SourceStart) -> Pin<Box<dyn Future<Output = Option<Closing>> + Send>> {
        let options = s.options.unwrap_or_default();
        let client_id = options.client_id.clone().unwrap_or_else(|| s.name.clone());
        let buffer = self.buffer_options(&s.state_dir, &client_id, s.embedded, s.wants_buffer);
        let cfg = self.clone();
        Box::pin(async move {
            let source = run_source(s.path, cfg, options, s.comp, s.out, buffer).await?;
            Some(Box::pin(async move { source.close().await }) as Closing)
        })
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// `[sources.NAME.sparkplug]`: how mqlink acts as a Sparkplug B host
/// application.
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct SparkplugOptions {
    /// Primary host id: mqlink publishes `spBv1.0/STATE/<host_id>`
    /// `{"online":true,…}` (retained) on each connection, with the offline
    /// message as its will [default: none: not a primary host].
    pub host_id: Option<String>,
    /// Rebirth requests (NCMD `Node Control/Rebirth`) to one edge node at
    /// most this often [default: 5000].
    #[serde(default = "rebirth_interval_ms")]
    pub rebirth_interval_ms: u64,
}

fn rebirth_interval_ms() -> u64 {
    5000
}

#[derive(Deserialize, Debug, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct RawBytesOptions {
    /// Records of `{topic, payload}` instead of the payload alone
    /// [default: false].
    #[serde(default)]
    pub include_topic: bool,
}

impl MqttSourceConfig {
    fn validate(
        &self,
        path: &str,
        connections: &BTreeMap<String, ConnectionConfig>,
    ) -> Result<(), ConfigError> {
        connection(path, &self.connection, connections)?;
        if self.bad_data == Some(BadData::DeadLetter) && self.dead_letter_topic.is_none() {
            return Err(err(
                format!("{path}.bad_data"),
                "dead_letter needs a dead_letter_topic",
            ));
        }
        let topics = self.topics.to_vec();
        if topics.is_empty() {
            return Err(err(
                format!("{path}.topics"),
                "at least one topic filter is needed",
            ));
        }
        for (i, t) in topics.iter().enumerate() {
            validate_filter(t).map_err(|e| err(format!("{path}.topics[{i}]"), e.to_string()))?;
        }
        if let Some(t) = &self.dead_letter_topic {
            validate_topic_name(t)
                .map_err(|e| err(format!("{path}.dead_letter_topic"), e.to_string()))?;
        }
        match self.format.as_str() {
            "json" => {}
            "raw_bytes" | "raw" => {
                if self.schema.is_some() {
                    return Err(err(
                        format!("{path}.schema"),
                        "a schema goes with format = \"json\"",
                    ));
                }
            }
            "sparkplug_b" => {
                let wrong = match () {
                    _ if self.schema.is_some() => Some(("schema", "the columns are Sparkplug's own (docs/guides/sparkplug.md)")),
                    _ if self.parallelism > 1 => Some(("parallelism", "must be 1: the host state must see every message of an edge node, in order")),
                    _ if self.share_group.is_some() => Some(("share_group", "cannot be shared: the host state must see every message of an edge node")),
                    _ => None,
                };
                if let Some((key, why)) = wrong {
                    return Err(err(
                        format!("{path}.{key}"),
                        format!("with format = \"sparkplug_b\": {why}"),
                    ));
                }
            }
            "avro" => {
                if self.avro_schema.is_none() == self.schema_registry_url.is_none() {
                    return Err(err(
                        format!("{path}.format"),
                        "avro needs exactly one of avro_schema (a file) and schema_registry_url",
                    ));
                }
            }
            other => {
                return Err(err(
                    format!("{path}.format"),
                    format!("unknown format {other:?}: use json, raw_bytes, avro or sparkplug_b"),
                ))
            }
        }
        if self.sparkplug.is_some() && self.format != "sparkplug_b" {
            return Err(err(
                format!("{path}.sparkplug"),
                "goes with format = \"sparkplug_b\"",
            ));
        }
        if self.raw_bytes.is_some() && !matches!(self.format.as_str(), "raw_bytes" | "raw") {
            return Err(err(
                format!("{path}.raw_bytes"),
                "goes with format = \"raw_bytes\"",
            ));
        }
        if self.batch_size == 0 {
            return Err(err(format!("{path}.batch_size"), "must be at least 1"));
        }
        at_most(
            path,
            "batch_size",
            self.batch_size,
            MAX_BATCH_SIZE,
            "records",
        )?;
        at_most(
            path,
            "batch_timeout_ms",
            self.batch_timeout_ms,
            MAX_BATCH_TIMEOUT_MS,
            "ms (a day)",
        )?;
        if self.parallelism == 0 {
            return Err(err(format!("{path}.parallelism"), "must be at least 1"));
        }
        if self.buffer.max_bytes < 1 << 20 {
            return Err(err(
                format!("{path}.buffer.max_bytes"),
                format!(
                    "{} is below the minimum of 1048576 (1 MiB)",
                    self.buffer.max_bytes
                ),
            ));
        }
        if let Some(g) = &self.share_group {
            if g.is_empty() || g.contains(['/', '+', '#']) {
                return Err(err(
                    format!("{path}.share_group"),
                    format!("{g:?} must not be empty or contain '/', '+' or '#'"),
                ));
            }
        }
        Ok(())
    }
}

impl MqttSourceConfig {
    /// What an undecodable payload does.
    pub fn bad_data(&self) -> BadData {
        self.bad_data.unwrap_or(match self.dead_letter_topic {
            Some(_) => BadData::DeadLetter,
            None => BadData::Drop,
        })
    }

    /// How payloads are decoded; reads the Avro schema file.
    fn decoder(&self, path: &str) -> Result<Decoder, ConfigError> {
        Ok(match self.format.as_str() {
            "raw_bytes" | "raw" => Decoder::RawBytes {
                include_topic: self.raw_bytes.as_ref().is_some_and(|r| r.include_topic),
            },
            "sparkplug_b" => {
                let o = self.sparkplug.as_ref();
                Decoder::SparkplugB(Arc::new(Host::new(HostOptions {
                    host_id: o.and_then(|o| o.host_id.clone()),
                    rebirth_interval: Duration::from_millis(
                        o.map_or(rebirth_interval_ms(), |o| o.rebirth_interval_ms),
                    ),
                })))
            }
            "avro" => match (&self.avro_schema, &self.schema_registry_url) {
                (Some(file), _) => {
                    let text = std::fs::read_to_string(file).map_err(|e| {
                        err(
                            format!("{path}.avro_schema"),
                            format!("cannot read {}: {e}", file.display()),
                        )
                    })?;
                    let schema = AvroSchema::parse(&text).map_err(|e| {
                        err(
                            format!("{path}.avro_schema"),
                            format!("{}: {e}", file.display()),
                        )
                    })?;
                    Decoder::Avro {
                        schema: Arc::new(schema),
                    }
                }
                (None, Some(url)) => Decoder::AvroRegistry {
                    registry: Arc::new(
                        Registry::new(url)
                            .map_err(|e| err(format!("{path}.schema_registry_url"), e))?,
                    ),
                },
                (None, None) => {
                    return Err(err(
                        format!("{path}.format"),
                        "avro needs avro_schema or schema_registry_url",
                    ))
                }
            },
            _ => Decoder::Json {
                schema: self.schema.clone(),
            },
        })
    }
}

/// Subscribes, retrying by the connection's reconnect policy; `None`
/// when it gave up (the component failed) or shutdown came first.
async fn start(
    path: &str,
    cfg: &MqttSourceConfig,
    opts: &ConnectOptions,
    comp: &Component,
    out: &mut Outputs,
    buffer: Option<BufferOptions>,
) -> Option<MqttSource> {
    let bad_data = cfg.bad_data();
    let mut attempt = 0;
    loop {
        let decoder = match &cfg.decoder {
            // A fresh host state for each session: what it knew is rebuilt
            // from the edge nodes' births (rebirths are asked for).
            Decoder::SparkplugB(h) => Decoder::SparkplugB(Arc::new(Host::new(h.options().clone()))),
            d => d.clone(),
        };
        let mut b = MqttSource::builder()
            .connection(opts.clone())
            .format(decoder)
            .parallelism(cfg.parallelism);
        for t in cfg.topics.to_vec() {
            b = b.topic(t, cfg.qos);
        }
        if let (BadData::DeadLetter, Some(d)) = (bad_data, &cfg.dead_letter_topic) {
            b = b.dead_letter_topic(d.clone());
        }
        if let Some(g) = &cfg.share_group {
            b = b.share_group(g.clone());
        }
        if let Some(o) = &buffer {
            b = b.buffer(o.clone());
        }
        let started = tokio::select! {
            r = b.start() => r,
            _ = out.stop.wait_for(|s| *s) => return None,
        };
        match started {
            Ok(s) => return Some(s),
            Err(e) => {
                comp.set_error(e.to_string());
                attempt += 1;
                // The connection's own reconnect policy: its interval,
                // backoff and max_reconnect_attempts (0 = forever).
                let max = opts.reconnect.max_attempts;
                if !e.is_retryable() || (max > 0 && attempt >= max) {
                    tracing::error!(component = %path, error = %e, attempts = attempt, "Source cannot start.");
                    comp.set_state(State::Failed);
                    return None;
                }
                tracing::warn!(component = %path, error = %e, "Source not started yet; retrying.");
                tokio::select! {
                    _ = tokio::time::sleep(opts.reconnect.delay(attempt)) => {}
                    _ = out.stop.wait_for(|s| *s) => return None,
                }
            }
        }
    }
}

/// Runs until shutdown; returns the source, to be closed once the sinks
/// have confirmed (closing sends the acknowledgements given so far).
pub async fn run_source(
    path: String,
    cfg: MqttSourceConfig,
    mut opts: ConnectOptions,
    comp: Arc<Component>,
    mut out: Outputs,
    buffer: Option<BufferOptions>,
) -> Option<MqttSource> {
    let bad_data = cfg.bad_data();
    // The broker may send a full window; acknowledgements follow the sinks.
    opts.receive_maximum = 65_535;
    let mut source = start(&path, &cfg, &opts, &comp, &mut out, buffer).await?;
    if let Some(topic) = &cfg.dead_letter_topic {
        out.dead_letter = Some(crate::sink::DeadLetters {
            client: source.clients()[0].clone(),
            topic: topic.clone(),
            qos: QoS::AtLeastOnce,
        });
    }
    let linger = Duration::from_millis(cfg.batch_timeout_ms);
    let _ = comp.mqtt.set(Mqtt::Source(source.monitor()));
    comp.set_state(State::Running);
    tracing::info!(component = %path, clients = ?source.clients().iter().map(|c| c.client_id().to_owned()).collect::<Vec<_>>(), "Subscribed.");
    while !out.stopping() {
        // A stage's held records (a burst) are released on time even
        // when nothing new arrives.
        let due = out.deadline();
        let first = tokio::select! {
            r = source.next() => Some(r),
            _ = out.stop.wait_for(|s| *s) => break,
            _ = tokio::time::sleep_until(due.unwrap_or_else(crate::transform::far_future)), if due.is_some() => None,
        };
        let Some(first) = first else {
            if !out.flush_due(&comp).await {
                break;
            }
            continue;
        };
        let Some(first) = first else {
            // Why, as the sessions say it (a client id in use, a broker
            // that hangs up at the SUBSCRIBE).
            let why = source
                .clients()
                .iter()
                .find_map(|c| match &*c.status().borrow() {
                    mqlink::Status::Stopped { error: Some(e) } => Some(e.clone()),
                    _ => None,
                });
            comp.set_error(match why {
                Some(e) => format!("every client of the source stopped: {e}"),
                None => "every client of the source stopped".to_owned(),
            });
            comp.set_state(State::Failed);
            break;
        };
        let mut items = Vec::with_capacity(cfg.batch_size.min(1024));
        let mut acks = Vec::with_capacity(cfg.batch_size.min(1024));
        let relay = out.relay.clone();
        let relay = relay.as_deref();
        let mut bad = take(first, &mut items, &mut acks, &path, bad_data, &comp, relay);
        // Whatever else has arrived, then (with batch_timeout_ms) what
        // arrives before the deadline — unless the broker's window is full.
        let deadline = tokio::time::Instant::now() + linger;
        while items.len() < cfg.batch_size {
            let next = match source.try_next().await {
                Some(r) => Some(r),
                None if linger.is_zero() => None,
                None => source.next_before(deadline).await,
            };
            match next {
                Some(r) => {
                    bad = bad.or(take(
                        r, &mut items, &mut acks, &path, bad_data, &comp, relay,
                    ))
                }
                None => break,
            }
            if bad.is_some() {
                break;
            }
        }
        if let Some(e) = bad {
            // bad_data = "fail": what came before it goes on and is
            // acknowledged; the bad message and everything after it are not.
            comp.records.fetch_add(items.len() as u64, Relaxed);
            out.send(items, acks, &comp).await;
            comp.set_error(e);
            comp.set_state(State::Failed);
            break;
        }
        source.batch_done();
        comp.records.fetch_add(items.len() as u64, Relaxed);
        if !out.send(items, acks, &comp).await {
            break;
        }
    }
    out.finish(&comp).await;
    Some(source)
}

fn origin_of(r: &Record) -> Option<Origin> {
    (r.qos != QoS::AtMostOnce).then_some(Origin {
        client: r.client,
        packet_id: r.packet_id,
        dup: r.dup,
        position: r.log_position,
    })
}

/// Moves a record into the batch. An undecodable one (never seen with
/// `bad_data = "dead_letter"`: the library dead-letters it) is counted and
/// logged, and with `drop` acknowledged; with `fail` the reason is returned
/// and the record is not acknowledged.
fn take(
    mut r: Record,
    items: &mut Vec<Item>,
    acks: &mut Vec<crate::sink::outputs::Settle>,
    path: &str,
    bad_data: BadData,
    comp: &Component,
    relay: Option<&crate::relay::Relay>,
) -> Option<String> {
    let ack = r.take_ack();
    // A message a pipeline sink relayed through the embedded broker.
    let relayed = relay.and_then(|relay| {
        r.properties.as_ref().and_then(|p| {
            p.user_properties
                .iter()
                .find(|(k, _)| k == crate::relay::PROPERTY)
                .and_then(|(_, v)| relay.parse(v))
        })
    });
    let origin = origin_of(&r);
    match r.value {
        Ok(Value::Rows(rows)) => {
            // Several records of one message (Sparkplug B metrics). Its
            // acknowledgement goes with its last record: a stage holding
            // the newest records holds it too. None: nothing to write.
            let n = rows.len();
            for value in rows {
                items.push(Item {
                    topic: Some(r.topic.clone()),
                    payload: r.payload.clone(),
                    value,
                    origin,
                });
                acks.push((None, None));
            }
            match (n, acks.last_mut()) {
                (0, _) | (_, None) => {
                    if let Some(a) = ack {
                        a.ack();
                    }
                    if let (Some(relay), Some(id)) = (relay, relayed) {
                        relay.done(id);
                    }
                }
                (_, Some(last)) => *last = (ack, relayed),
            }
            None
        }
        Ok(value) => {
            items.push(Item {
                topic: Some(r.topic),
                payload: r.payload,
                value,
                origin,
            });
            acks.push((ack, relayed));
            None
        }
        Err(e) => {
            // Counted by the library (mqlink_source_decode_errors_total).
            if bad_data == BadData::Fail {
                tracing::error!(component = %path, topic = %r.topic, error = %e, "Undecodable payload: the source fails (bad_data = \"fail\"); the message is not acknowledged.");
                return Some(format!("undecodable payload on {}: {e}", r.topic));
            }
            tracing::warn!(component = %path, topic = %r.topic, error = %e, "Undecodable payload dropped and acknowledged (bad_data = \"drop\"; set dead_letter_topic to keep such payloads).");
            comp.set_error(format!("undecodable payload dropped: {e}"));
            if let Some(a) = ack {
                a.ack();
            }
            if let (Some(relay), Some(id)) = (relay, relayed) {
                relay.done(id);
            }
            None
        }
    }
}
