//! The MQTT source and sink of a pipeline, on the library's `MqttSource`
//! and `MqttSink`.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use mqlink::sink::{DeliveryHandle, MqttSink, RecordValue, Retain, SinkRecord};
use mqlink::source::{dead_letter_message, MqttSource, Record};
use mqlink::{ConnectOptions, Protocol, PublishError, PublishToken, QoS};
use tokio::sync::mpsc;

use super::Outputs;
use crate::pipeline::batch::{Batch, Item};
use crate::pipeline::config::{MqttSinkConfig, MqttSourceConfig};
use crate::pipeline::status::{Component, Mqtt, State};

/// Runs until shutdown; returns the source, to be closed once the sinks
/// have confirmed (closing sends the acknowledgements given so far).
pub async fn run_source(
    path: String,
    cfg: MqttSourceConfig,
    mut opts: ConnectOptions,
    comp: Arc<Component>,
    mut out: Outputs,
) -> Option<MqttSource> {
    let format = cfg
        .decoder(&path)
        .expect("checked when the file was loaded");
    let qos = QoS::from_u8(cfg.qos).expect("checked when the file was loaded");
    // The broker may send a full window; acknowledgements follow the sinks.
    opts.receive_maximum = 65_535;
    let mut attempt = 0;
    let mut source = loop {
        let mut b = MqttSource::builder()
            .connection(opts.clone())
            .format(format.clone())
            .parallelism(cfg.parallelism);
        for t in cfg.topics.to_vec() {
            b = b.topic(t, qos);
        }
        if let Some(d) = &cfg.dead_letter_topic {
            b = b.dead_letter_topic(d.clone());
        }
        if let Some(g) = &cfg.share_group {
            b = b.share_group(g.clone());
        }
        let started = tokio::select! {
            r = b.start() => r,
            _ = out.stop.wait_for(|s| *s) => return None,
        };
        match started {
            Ok(s) => break s,
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
    };
    let linger = Duration::from_millis(cfg.batch_timeout_ms);
    let _ = comp.mqtt.set(Mqtt::Source(source.monitor()));
    comp.set_state(State::Running);
    tracing::info!(component = %path, clients = ?source.clients().iter().map(|c| c.client_id().to_owned()).collect::<Vec<_>>(), "Subscribed.");
    while !out.stopping() {
        let first = tokio::select! {
            r = source.next() => r,
            _ = out.stop.wait_for(|s| *s) => break,
        };
        let Some(first) = first else {
            comp.set_error("every client of the source stopped");
            comp.set_state(State::Failed);
            break;
        };
        let mut items = Vec::with_capacity(cfg.batch_size.min(1024));
        let mut acks = Vec::with_capacity(cfg.batch_size.min(1024));
        take(first, &mut items, &mut acks, &path);
        // Whatever else has arrived, then (with batch_timeout_ms) what
        // arrives before the deadline.
        let deadline = tokio::time::Instant::now() + linger;
        while items.len() < cfg.batch_size {
            let next = match source.try_next().await {
                Some(r) => Some(r),
                None if linger.is_zero() => None,
                None => tokio::time::timeout_at(deadline, source.next())
                    .await
                    .ok()
                    .flatten(),
            };
            match next {
                Some(r) => take(r, &mut items, &mut acks, &path),
                None => break,
            }
        }
        comp.records.fetch_add(items.len() as u64, Relaxed);
        if !out.send(items, acks, &comp).await {
            break;
        }
    }
    Some(source)
}

/// Moves a record into the batch. Without a dead-letter topic an
/// undecodable record is counted (`mqlink_source_decode_errors_total`),
/// logged and acknowledged; with one the source never yields it.
fn take(
    mut r: Record,
    items: &mut Vec<Item>,
    acks: &mut Vec<mqlink::source::RecordAck>,
    path: &str,
) {
    let ack = r.take_ack();
    match r.value {
        Ok(value) => {
            items.push(Item {
                topic: Some(r.topic),
                payload: r.payload,
                value,
            });
            acks.extend(ack);
        }
        Err(e) => {
            tracing::warn!(component = %path, topic = %r.topic, error = %e, "Undecodable payload dropped (set dead_letter_topic to keep it).");
            if let Some(a) = ack {
                a.ack();
            }
        }
    }
}

pub async fn run_sink(
    path: String,
    cfg: MqttSinkConfig,
    opts: ConnectOptions,
    comp: Arc<Component>,
    mut rx: mpsc::Receiver<Arc<Batch>>,
) -> Result<(), String> {
    let qos = QoS::from_u8(cfg.qos).expect("checked when the file was loaded");
    let sink = MqttSink::builder()
        .connection(opts)
        .topic(&cfg.topic)
        .qos(qos)
        .retain(Retain::Fixed(cfg.retain))
        .parallelism(cfg.parallelism)
        .start()
        .await
        .map_err(|e| e.to_string())?;
    let _ = comp
        .mqtt
        .set(Mqtt::Sink(sink.clients().to_vec(), sink.metrics_handle()));
    comp.set_state(State::Running);
    let raw = cfg.format == "raw";
    // Confirmations are awaited by a second task so that the next batch is
    // published while the broker confirms this one.
    let (ctx, crx) = mpsc::channel(64);
    let confirmer = tokio::spawn(confirm(crx, comp.clone(), path.clone()));
    while let Some(batch) = rx.recv().await {
        comp.records.fetch_add(batch.len() as u64, Relaxed);
        let mut handles = Vec::with_capacity(batch.len());
        for item in &batch.items {
            let value = if raw && item.topic.is_some() {
                RecordValue::Bytes(item.payload.clone())
            } else {
                RecordValue::Json(item.value.to_json())
            };
            let record = SinkRecord {
                key: None,
                value,
                namespace: None,
                stream: item.topic.as_ref().map(|t| t.to_string()),
                headers: Vec::new(),
                timestamp: None,
            };
            match sink.send(record).await {
                Ok(h) => handles.push(Pending::Record(h)),
                Err(e) => {
                    // A record this sink can never publish (its topic does
                    // not render): dead-lettered when configured, else
                    // counted and named, never retried forever.
                    comp.errors.fetch_add(1, Relaxed);
                    comp.set_error(e.to_string());
                    match &cfg.dead_letter_topic {
                        Some(dlq) => {
                            let client = &sink.clients()[0];
                            let payload = if item.payload.is_empty() {
                                let mut b = Vec::new();
                                item.value.write_json(&mut b);
                                bytes::Bytes::from(b)
                            } else {
                                item.payload.clone()
                            };
                            let from = item.topic.as_deref().unwrap_or("");
                            let msg = dead_letter_message(
                                from,
                                &payload,
                                qos,
                                None,
                                dlq,
                                &e.to_string(),
                                client.protocol() == Protocol::V5,
                            );
                            match client.publish(msg).await {
                                Ok(t) => handles.push(Pending::DeadLetter(t)),
                                Err(e) => handles.push(Pending::Failed(e)),
                            }
                        }
                        None => {
                            tracing::error!(component = %path, error = %e, "Record not publishable; skipped by this sink (set dead_letter_topic to keep it).")
                        }
                    }
                }
            }
        }
        if ctx.send((batch, handles)).await.is_err() {
            break;
        }
    }
    drop(ctx);
    let _ = confirmer.await;
    let _ = sink.close(Duration::from_secs(1)).await;
    Ok(())
}

/// What a batch waits for: its records' confirmations, and those of the
/// dead letters sent in place of records that could not be published.
enum Pending {
    Record(DeliveryHandle),
    DeadLetter(PublishToken),
    Failed(PublishError),
}

impl Pending {
    async fn confirmed(self) -> Result<(), PublishError> {
        match self {
            Pending::Record(h) => h.await.map(|_| ()),
            Pending::DeadLetter(t) => t.await.map(|_| ()),
            Pending::Failed(e) => Err(e),
        }
    }
}

async fn confirm(
    mut rx: mpsc::Receiver<(Arc<Batch>, Vec<Pending>)>,
    comp: Arc<Component>,
    path: String,
) {
    while let Some((batch, handles)) = rx.recv().await {
        let mut all = true;
        for h in handles {
            match h.confirmed().await {
                Ok(_) => {
                    comp.confirmed.fetch_add(1, Relaxed);
                }
                Err(e) => {
                    // Never acknowledged upstream: redelivered after a restart.
                    all = false;
                    comp.errors.fetch_add(1, Relaxed);
                    comp.set_error(e.to_string());
                    comp.set_state(State::Failed);
                    tracing::error!(component = %path, error = %e, "Publish not confirmed; its batch stays unacknowledged.");
                }
            }
        }
        if all {
            batch.confirm();
        }
    }
}
