//! The MQTT sink with `format = "sparkplug_b"`: mqlink publishes its
//! records as a Sparkplug B edge node (and its devices), on the library's
//! I/O-free [`EdgeNode`].
//!
//! ```toml
//! [sinks.edge]
//! type = "mqtt"
//! connection = "plant"
//! format = "sparkplug_b"
//! sparkplug = { group_id = "plant", edge_node_id = "mqlink", device_id = "{device_id}", timestamp = "ts" }
//! ```
//!
//! Each record is one NDATA (no `device_id`) or DDATA message; its fields
//! are the metrics (see [`EdgeConfig`]). The connection's will is the
//! node's NDEATH, its `bdSeq` one more at each connection; after every
//! (re)connection and on an NCMD `Node Control/Rebirth` the node is born
//! again (with the will's `bdSeq`) with the last value of
//! every metric. A record is confirmed when the broker confirmed its DATA
//! (and any BIRTH it caused), at the sink's `qos` [default: 1; Sparkplug
//! 3.0 asks for 0 on BIRTH and DATA, which `qos = 0` gives, at the cost of
//! confirming on write].

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use mqlink::format::sparkplug::edge::{time_ms, EdgeNode, Outgoing};
use mqlink::sink::SinkError;
use mqlink::sink::SinkMetrics;
use mqlink::{Client, ConnectOptions, LastWill, Message, QoS, Status, Subscription, WillPayload};
use serde::Deserialize;
use serde_json::Value as Json;
use tokio::sync::Mutex;

use super::sink::classify;
use super::MqttSinkConfig;
use crate::sink::{Confirmation, DeadLetters, Job, RecordFault, Sink, WriteError};
use crate::spec::{err, ConfigError};
use crate::status::{Component, Mqtt};

/// `sparkplug = { … }` of an MQTT sink with `format = "sparkplug_b"`: the
/// edge node mqlink publishes as, and how records become metrics.
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct EdgeConfig {
    /// The Sparkplug group id (required).
    pub group_id: String,
    /// The edge node id (required).
    pub edge_node_id: String,
    /// The device a record's metrics belong to: a field in braces
    /// (`"{device_id}"`) or a constant; without it they are the node's
    /// own (NDATA).
    pub device_id: Option<String>,
    /// The field holding the record's time (ms since the epoch, or RFC
    /// 3339 text), the metrics' timestamp [default: the time of publishing].
    pub timestamp: Option<String>,
    /// The fields that are metrics [default: every field but the device's
    /// and the timestamp's]. Nested objects are folders: `{"motor": {"rpm":
    /// 1}}` is the metric `motor/rpm`.
    pub metrics: Option<Vec<String>>,
}

impl EdgeConfig {
    pub fn validate(&self, path: &str) -> Result<(), ConfigError> {
        let ids = [
            ("group_id", Some(&self.group_id)),
            ("edge_node_id", Some(&self.edge_node_id)),
            ("device_id", self.device_id.as_ref()),
        ];
        for (key, id) in ids {
            let Some(id) = id else { continue };
            if id.is_empty() || id.contains(['/', '+', '#']) {
                return Err(err(
                    format!("{path}.sparkplug.{key}"),
                    format!("{id:?}: a Sparkplug id is one topic level: not empty, without '/', '+' or '#'"),
                ));
            }
        }
        Ok(())
    }

    /// The field a device id is read from (`{name}`), if it is one.
    fn device_field(&self) -> Option<&str> {
        let d = self.device_id.as_deref()?;
        d.strip_prefix('{')?.strip_suffix('}')
    }
}

/// A running edge node.
pub struct EdgeNodeRuntime {
    cfg: EdgeConfig,
    qos: QoS,
    client: Client,
    node: Arc<Mutex<EdgeNode>>,
    metrics: Arc<SinkMetrics>,
    watcher: tokio::task::JoinHandle<()>,
    dead_letters: Option<DeadLetters>,
}

impl EdgeNodeRuntime {
    /// Connects (in the background) with the NDEATH as the will.
    pub fn start(
        cfg: &EdgeConfig,
        sink: &MqttSinkConfig,
        mut opts: ConnectOptions,
        comp: &Arc<Component>,
    ) -> Result<EdgeNodeRuntime, String> {
        let qos = sink.qos;
        // bdSeq: from the clock at start, so the NDEATH of an earlier run
        // (its will, published late) does not kill this run's births; then
        // one more per connection, the will registered with it.
        let bdseq = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() % 256) as u8;
        let node = EdgeNode::new(&cfg.group_id, &cfg.edge_node_id, bdseq);
        let death = node.death();
        opts.last_will = Some(LastWill {
            topic: death.topic,
            payload: death.payload,
            qos: QoS::AtLeastOnce,
            retain: false,
        });
        opts.will_payload = Some(WillPayload(Arc::new(node.will_per_connection())));
        let commands = node.command_topic();
        let (client, mut incoming) = Client::start(opts).map_err(|e| e.to_string())?;
        let metrics = Arc::new(SinkMetrics::default());
        let _ = comp
            .mqtt
            .set(Mqtt::Sink(vec![client.clone()], metrics.clone()));
        let node = Arc::new(Mutex::new(node));
        let (c, n) = (client.clone(), node.clone());
        let watcher = tokio::spawn(async move {
            if let Err(e) = c
                .subscribe(vec![Subscription::new(&commands, QoS::AtLeastOnce)])
                .await
            {
                tracing::warn!(topic = %commands, error = %e, "Cannot subscribe to the edge node's commands; rebirth requests go unanswered.");
            }
            let mut status = c.status();
            loop {
                tokio::select! {
                    d = incoming.recv() => {
                        let Some(mut d) = d else { return };
                        if EdgeNode::is_rebirth_request(&d.payload) {
                            tracing::info!(topic = %d.topic, "Rebirth requested: publishing NBIRTH and DBIRTHs.");
                            rebirth(&c, &n, qos).await;
                        }
                        d.ack();
                    }
                    changed = status.changed() => {
                        if changed.is_err() { return }
                        let connected = matches!(*status.borrow_and_update(), Status::Connected { .. });
                        if connected {
                            rebirth(&c, &n, qos).await;
                        }
                    }
                }
            }
        });
        let dead_letters = sink.dead_letter_topic.as_ref().map(|topic| DeadLetters {
            topic: topic.clone(),
            client: client.clone(),
            qos,
        });
        Ok(EdgeNodeRuntime {
            dead_letters,
            cfg: cfg.clone(),
            qos,
            client,
            node,
            metrics,
            watcher,
        })
    }

    /// The device, time and metric fields of one record.
    fn split(
        &self,
        v: Json,
    ) -> Result<(Option<String>, Option<u64>, serde_json::Map<String, Json>), String> {
        let Json::Object(mut fields) = v else {
            return Err(format!(
                "a Sparkplug DATA message is made of a record's fields; {v} has none"
            ));
        };
        let device = match (self.cfg.device_field(), &self.cfg.device_id) {
            (Some(f), _) => match fields.remove(f) {
                Some(Json::String(s)) if !s.is_empty() && !s.contains(['/', '+', '#']) => Some(s),
                Some(Json::Number(n)) => Some(n.to_string()),
                other => {
                    return Err(format!(
                    "field {f:?} (the device id) is {}: it must be text without '/', '+' or '#'",
                    other.map_or("missing".into(), |v| v.to_string())
                ))
                }
            },
            (None, d) => d.clone(),
        };
        let time = match &self.cfg.timestamp {
            Some(t) => {
                let v = fields.remove(t).unwrap_or(Json::Null);
                Some(time_ms(&v).ok_or_else(|| format!("field {t:?} (the timestamp) is {v}: it must be ms since the epoch or RFC 3339 text"))?)
            }
            None => None,
        };
        if let Some(names) = &self.cfg.metrics {
            fields.retain(|k, _| names.contains(k));
        }
        Ok((device, time, fields))
    }
}

/// Publishes the node's births (after a reconnection or when asked).
async fn rebirth(client: &Client, node: &Mutex<EdgeNode>, qos: QoS) {
    let mut node = node.lock().await;
    for m in node.rebirth() {
        if let Err(e) = client.publish(Message::new(m.topic, m.payload, qos)).await {
            tracing::warn!(error = %e, "Cannot publish the edge node's births.");
            return;
        }
    }
}

impl Sink for EdgeNodeRuntime {
    fn max_records(&self) -> usize {
        1000
    }

    async fn write(&mut self, job: &Job) -> Result<Confirmation, WriteError> {
        let mut tokens = Vec::with_capacity(job.len());
        let mut faults = Vec::new();
        // Held while publishing: the seq of the messages is their order.
        let mut node = self.node.lock().await;
        for (index, item) in job.items().enumerate() {
            let made = self
                .split(item.value.to_json())
                .and_then(|(device, time, fields)| {
                    node.data(device.as_deref(), &fields, time)
                        .map_err(|e| e.to_string())
                });
            let messages: Vec<Outgoing> = match made {
                Ok(m) => m,
                Err(reason) => {
                    faults.push(RecordFault {
                        index,
                        reason,
                        class: None,
                    });
                    continue;
                }
            };
            for m in messages {
                let msg = Message::new(m.topic, m.payload, self.qos);
                self.metrics.confirmations().sent();
                match self.client.publish(msg).await {
                    Ok(t) => tokens.push((index, t)),
                    Err(e) => {
                        self.metrics.confirmations().unsent();
                        faults.push(classify(index, SinkError::Publish(e))?);
                    }
                }
            }
        }
        drop(node);
        let metrics = self.metrics.clone();
        Ok(Box::pin(async move {
            // A refusal (a reason code) fails the record whose DATA or
            // birth it was, as in the MQTT sink; a session gone fails all.
            for (index, t) in tokens {
                let r = t.await;
                metrics.confirmations().record(&r);
                if let Err(e) = r {
                    faults.push(classify(index, SinkError::Publish(e))?);
                }
            }
            faults.sort_by_key(|f| f.index);
            faults.dedup_by_key(|f| f.index);
            Ok(faults)
        }))
    }

    fn dead_letters(&self) -> Option<DeadLetters> {
        self.dead_letters.clone()
    }

    async fn close(self) {
        self.watcher.abort();
        // A clean DISCONNECT: the broker drops the will; the node says
        // goodbye itself (Sparkplug: NDEATH before disconnecting).
        let death = self.node.lock().await.death();
        if let Ok(t) = self
            .client
            .publish(Message::new(death.topic, death.payload, QoS::AtLeastOnce))
            .await
        {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(1), t).await;
        }
        self.client.disconnect().await;
    }
}
