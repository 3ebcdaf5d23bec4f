//! The MQTT sink of a pipeline, on the library's `MqttSink`: its options
//! and its [`Sink`] implementation. Publishing is all it does; the runner
//! (`crate::sink`) confirms, dead-letters and fails.
//!
//! A publish the broker refused (a reason code) or a topic that does not
//! render is a record fault; a session that stopped (gave up reconnecting,
//! credentials refused) is fatal: the batch is never confirmed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use mqlink::format::{ColumnType, Schema};
use mqlink::sink::{MqttSink, RecordValue, Retain, SinkError, SinkRecord, TopicTemplate};
use mqlink::topic::validate_topic_name;
use mqlink::{ConnectOptions, PublishError, QoS};
use serde::Deserialize;
use serde_json::Value as Json;

use super::edge::{EdgeConfig, EdgeNodeRuntime};
use crate::connectors::{Connector, Shape, SinkSpec, SinkSpecRef, SinkStart};
use crate::relay::{RelayTarget, PROPERTY};
use crate::sink::{Confirmation, DeadLetters, Job, RecordFault, Sink, WriteError};
use crate::spec::{
    connection, err, one_u16, qos, qos1, typed, ConfigError, ConnectionConfig, Context, SinkFormat,
};
use crate::status::{Component, Mqtt};

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct MqttSinkConfig {
    /// The `[connections.NAME]` to publish through (required).
    pub connection: String,
    /// Topic template: `{field}`, `{a.b}`, `{stream}` (the source topic);
    /// checked against the inputs' schemas when loaded (required, but for
    /// `format = "sparkplug_b"`, whose topics are Sparkplug's).
    #[serde(default, deserialize_with = "template")]
    pub topic: Option<TopicTemplate>,
    /// 0, 1 or 2 [default: 1].
    #[serde(default = "qos1", deserialize_with = "qos")]
    pub qos: QoS,
    /// Publish with the retain flag [default: false].
    #[serde(default)]
    pub retain: bool,
    /// `json` (the record as a JSON object), `raw` (the original payload
    /// bytes of MQTT sources) or `sparkplug_b` (as a Sparkplug B edge node,
    /// with `sparkplug`) [default: json].
    #[serde(default)]
    pub format: SinkFormat,
    /// With `format = "sparkplug_b"`: the edge node, its devices and which
    /// fields are metrics ([`EdgeConfig`]).
    pub sparkplug: Option<EdgeConfig>,
    /// Clients publishing in parallel, per-key order kept [default: 1].
    #[serde(default = "one_u16")]
    pub parallelism: u16,
    /// Records this sink can never publish (the topic does not render, the
    /// broker refused that publish) are published here instead, with the
    /// reason; without it they are logged, counted
    /// (`mqlink_sink_skipped_total`) and skipped by this sink.
    pub dead_letter_topic: Option<String>,
}

fn template<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<TopicTemplate>, D::Error> {
    let s = String::deserialize(d)?;
    TopicTemplate::parse(&s)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

pub fn parse_sink(ctx: &Context, body: Json) -> Result<SinkSpecRef, ConfigError> {
    let m: MqttSinkConfig = typed(ctx.path, body)?;
    m.validate(ctx.path, ctx.connections)?;
    m.check_template(ctx)?;
    Ok(Arc::new(m))
}

impl SinkSpec for MqttSinkConfig {
    fn connector(&self) -> &'static Connector {
        &super::CONNECTOR
    }
    fn connection(&self) -> Option<(&str, u16)> {
        Some((&self.connection, self.parallelism))
    }
    fn spawn(&self, mut s: SinkStart) -> tokio::task::JoinHandle<Result<(), String>> {
        let options = s.options.take().unwrap_or_default();
        if let Some(edge) = &self.sparkplug {
            return match EdgeNodeRuntime::start(edge, self, options, &s.comp) {
                Ok(rt) => s.run(rt),
                Err(e) => tokio::spawn(std::future::ready(Err(e))),
            };
        }
        match MqttSinkRuntime::start(self, options, &s.comp) {
            Ok(rt) => {
                let rt = match (s.relay.take(), &self.topic) {
                    (Some(target), Some(topic)) => rt.relaying(target, topic),
                    _ => rt,
                };
                s.run(rt)
            }
            Err(e) => tokio::spawn(std::future::ready(Err(e))),
        }
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

impl MqttSinkConfig {
    fn validate(
        &self,
        path: &str,
        connections: &BTreeMap<String, ConnectionConfig>,
    ) -> Result<(), ConfigError> {
        connection(path, &self.connection, connections)?;
        if self.parallelism == 0 {
            return Err(err(format!("{path}.parallelism"), "must be at least 1"));
        }
        if let Some(t) = &self.dead_letter_topic {
            validate_topic_name(t)
                .map_err(|e| err(format!("{path}.dead_letter_topic"), e.to_string()))?;
        }
        let sparkplug = self.format == SinkFormat::SparkplugB;
        match (&self.topic, &self.sparkplug) {
            (None, _) if !sparkplug => Err(err(format!("{path}.topic"), "missing: the topic to publish to (a template: {field}, {stream})")),
            (Some(_), _) if sparkplug => Err(err(format!("{path}.topic"), "format = \"sparkplug_b\" publishes to Sparkplug's topics (spBv1.0/<group_id>/NDATA/<edge_node_id>…); remove topic and set sparkplug.group_id and sparkplug.edge_node_id")),
            (_, None) if sparkplug => Err(err(format!("{path}.sparkplug"), "missing: format = \"sparkplug_b\" needs the edge node, e.g. sparkplug = { group_id = \"plant\", edge_node_id = \"mqlink\" }")),
            (_, Some(_)) if !sparkplug => Err(err(format!("{path}.sparkplug"), "only for format = \"sparkplug_b\"")),
            (_, Some(_)) if self.parallelism != 1 || self.retain => Err(err(format!("{path}.parallelism"), "a Sparkplug edge node is one client publishing in order: parallelism = 1 and retain = false")),
            (_, Some(e)) => e.validate(path),
            _ => Ok(()),
        }
    }

    /// Every placeholder of the topic template against every input: a
    /// field the records cannot have is an error now, not a skipped record
    /// at run time.
    fn check_template(&self, ctx: &Context) -> Result<(), ConfigError> {
        let key = format!("{}.topic", ctx.path);
        let Some(t) = &self.topic else {
            return Ok(());
        };
        if t.uses_key() {
            return Err(err(key, format!("{t}: {{key}}: records of a pipeline have no key; use a field, e.g. {{device_id}}")));
        }
        for input in ctx.inputs {
            let Some(source) = ctx.source(input) else {
                continue;
            };
            let shape = source.shape();
            if t.uses_stream() && matches!(shape, Shape::Made(_)) {
                let name = source.connector().name;
                return Err(err(key, format!("{t}: {{stream}} is the topic a record arrived on, and records of sources.{input} (a {name}) have none")));
            }
            let Some(field) = t.fields().next() else {
                continue;
            };
            let field = field.join(".");
            let raw = match &shape {
                Shape::Payload => true,
                Shape::TopicAndPayload | Shape::Made(_) => false,
                Shape::Decoded(_) => self.format == SinkFormat::Raw,
            };
            if raw {
                return Err(err(key, format!("{t}: {{{field}}}: records of sources.{input} are raw payload bytes without fields; only {{stream}} can be used")));
            }
            let columns = match shape {
                Shape::Payload | Shape::TopicAndPayload => Some(Schema::new([
                    ("topic", ColumnType::Text),
                    ("payload", ColumnType::Bytea),
                ])),
                Shape::Decoded(s) => s,
                Shape::Made(s) => Some(s),
            };
            // Without a schema (any JSON) the fields cannot be known before
            // the records arrive.
            let Some(schema) = columns else { continue };
            for path in t.fields() {
                let name = &path[0];
                match schema.column(name) {
                    None => {
                        let known: Vec<&str> = schema.columns.iter().map(|(n, _)| &**n).collect();
                        return Err(err(key, format!("{t}: {{{}}}: {name:?} is not a field of sources.{input} (fields: {})", path.join("."), known.join(", "))));
                    }
                    Some(ty) if path.len() > 1 && ty != ColumnType::Json => {
                        return Err(err(key, format!("{t}: {{{}}}: field {name:?} of sources.{input} is {ty}, not json, so it has no sub-fields", path.join("."))));
                    }
                    Some(_) => {}
                }
            }
        }
        Ok(())
    }
}

/// A running MQTT sink.
pub struct MqttSinkRuntime {
    sink: MqttSink,
    raw: bool,
    dead_letters: Option<DeadLetters>,
    /// With the topic when it is fixed (`None`: the record's own topic).
    relay: Option<(RelayTarget, Option<String>)>,
}

impl MqttSinkRuntime {
    /// Starts the clients (they connect in the background: records wait in
    /// the window meanwhile).
    pub fn start(
        cfg: &MqttSinkConfig,
        opts: ConnectOptions,
        comp: &Arc<Component>,
    ) -> Result<MqttSinkRuntime, String> {
        let sink = MqttSink::builder()
            .connection(opts)
            .topic(cfg.topic.as_ref().map_or(String::new(), |t| t.to_string()))
            .qos(cfg.qos)
            .retain(Retain::Fixed(cfg.retain))
            .parallelism(cfg.parallelism)
            .build()
            .and_then(|c| {
                MqttSink::start(c)
                    .map_err(|e| SinkError::Publish(PublishError::Stopped(e.to_string())))
            })
            .map_err(|e| e.to_string())?;
        let _ = comp
            .mqtt
            .set(Mqtt::Sink(sink.clients().to_vec(), sink.metrics_handle()));
        let dead_letters = cfg.dead_letter_topic.as_ref().map(|topic| DeadLetters {
            topic: topic.clone(),
            client: sink.clients()[0].clone(),
            qos: cfg.qos,
        });
        Ok(MqttSinkRuntime {
            sink,
            raw: cfg.format == SinkFormat::Raw,
            dead_letters,
            relay: None,
        })
    }

    /// Waits, for each message, until the pipeline sources it reaches in
    /// the embedded broker have settled it.
    pub fn relaying(mut self, target: RelayTarget, topic: &TopicTemplate) -> MqttSinkRuntime {
        // The topic is known before publishing when it is fixed or the
        // record's own topic; other templates are not relayed.
        let t = topic.to_string();
        if t == "{stream}" {
            self.relay = Some((target, None));
        } else if !topic.uses_stream() && topic.fields().next().is_none() && !topic.uses_key() {
            self.relay = Some((target, Some(t)));
        }
        self
    }
}

/// A record fault, or the session gone (fatal).
pub(super) fn classify(index: usize, e: SinkError) -> Result<RecordFault, WriteError> {
    match e {
        SinkError::Publish(PublishError::Stopped(why)) => Err(WriteError::Fatal(format!(
            "the session stopped before the broker confirmed: {why}"
        ))),
        SinkError::Template(_) | SinkError::RetainField { .. } | SinkError::Publish(_) => {
            // The broker's refusals have a class (its reason code); the
            // record's own faults (a topic that does not render) do not.
            let class = match &e {
                SinkError::Publish(PublishError::Rejected { code, .. }) => {
                    Some(format!("reason code {code:#04x}"))
                }
                _ => None,
            };
            Ok(RecordFault {
                index,
                reason: e.to_string(),
                class,
            })
        }
        other => Err(WriteError::Fatal(other.to_string())),
    }
}

impl Sink for MqttSinkRuntime {
    fn max_records(&self) -> usize {
        1000
    }

    async fn write(&mut self, job: &Job) -> Result<Confirmation, WriteError> {
        let mut handles = Vec::with_capacity(job.len());
        let mut faults = Vec::new();
        let mut relayed = Vec::new();
        for (index, item) in job.items().enumerate() {
            let value = if self.raw && item.topic.is_some() {
                RecordValue::Bytes(item.payload.clone())
            } else {
                RecordValue::Json(item.value.to_json())
            };
            let mut headers = Vec::new();
            if let Some((target, fixed)) = &self.relay {
                let topic = fixed.as_deref().or(item.topic.as_deref()).unwrap_or("");
                let n = target
                    .consumers
                    .iter()
                    .filter(|filters| filters.iter().any(|f| mqlink::topic::matches(f, topic)))
                    .count();
                if n > 0 {
                    let (tag, rx) = target.relay.register(n);
                    headers.push((PROPERTY.to_string(), tag));
                    relayed.push((index, rx));
                }
            }
            let record = SinkRecord {
                key: None,
                value,
                namespace: None,
                stream: item.topic.as_ref().map(|t| t.to_string()),
                headers,
                timestamp: None,
            };
            match self.sink.send(record).await {
                Ok(h) => handles.push((index, h)),
                Err(e) => faults.push(classify(index, e)?),
            }
        }
        Ok(Box::pin(async move {
            for (index, h) in handles {
                if let Err(e) = h.await {
                    faults.push(classify(index, SinkError::Publish(e))?);
                }
            }
            // Then every pipeline source that got a message settled it (a
            // message the broker refused reaches none).
            for (index, rx) in relayed {
                if !faults.iter().any(|f| f.index == index) {
                    let _ = rx.await;
                }
            }
            faults.sort_by_key(|f| f.index);
            Ok(faults)
        }))
    }

    fn dead_letters(&self) -> Option<DeadLetters> {
        self.dead_letters.clone()
    }

    async fn close(self) {
        let _ = self.sink.close(Duration::from_secs(1)).await;
    }
}
