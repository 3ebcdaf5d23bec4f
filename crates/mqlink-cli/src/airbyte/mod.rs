//! `mqlink airbyte`: a drop-in for Airbyte's destination-mqtt, speaking the
//! Airbyte protocol (one JSON message per line on stdout).
//!
//! Unlike the original, the options the spec names are the ones read
//! (`client`, with `client_id` as an alias; `topic_test`), `check` really
//! connects, and a STATE is echoed once, only after every record before it
//! was confirmed by the broker.

mod config;

use std::collections::HashSet;
use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use mqlink::secret::redact;
use mqlink::sink::{DeliveryHandle, MqttSink, SinkRecord};
use mqlink::{Client, Message, QoS, Status};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;

pub use config::{spec, AirbyteConfig};

#[derive(clap::Subcommand, Debug)]
pub enum AirbyteCommand {
    /// Print the connector's SPEC message.
    Spec,
    /// Check the connection (and publish to topic_test when set).
    Check {
        #[arg(long)]
        config: std::path::PathBuf,
    },
    /// Read Airbyte messages from stdin and publish the records.
    Write {
        #[arg(long)]
        config: std::path::PathBuf,
        #[arg(long)]
        catalog: std::path::PathBuf,
    },
}

/// Prints one Airbyte message on stdout.
fn emit(msg: &Value) {
    let mut out = std::io::stdout().lock();
    let _ = serde_json::to_writer(&mut out, msg);
    let _ = out.write_all(b"\n");
    let _ = out.flush();
}

fn log(level: &str, message: impl Into<String>) {
    let message = message.into();
    emit(&json!({"type": "LOG", "log": {"level": level, "message": redact(&message)}}));
}

/// A failure that may pass by itself (the broker is unreachable, records
/// were not confirmed): Airbyte's `transient_error`, so the sync is retried.
/// Everything else is a `config_error` the user has to fix.
#[derive(Debug)]
struct Transient(String);

impl std::fmt::Display for Transient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for Transient {}

fn transient(msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Transient(msg.into()))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Prints a TRACE of type ERROR; the caller exits non-zero.
fn trace_error(message: &str, failure_type: &str) {
    emit(&json!({
        "type": "TRACE",
        "trace": {"type": "ERROR", "emitted_at": now_ms() as f64,
                  "error": {"message": redact(message), "failure_type": failure_type}}
    }));
}

pub async fn run(cmd: AirbyteCommand) -> anyhow::Result<()> {
    let result = match cmd {
        AirbyteCommand::Spec => {
            emit(&json!({"type": "SPEC", "spec": spec()}));
            Ok(())
        }
        AirbyteCommand::Check { config } => check(&config).await,
        AirbyteCommand::Write { config, catalog } => write(&config, &catalog).await,
    };
    if let Err(e) = &result {
        let failure_type = if e.chain().any(|c| c.downcast_ref::<Transient>().is_some()) {
            "transient_error"
        } else {
            "config_error"
        };
        trace_error(&format!("{e:#}"), failure_type);
    }
    result
}

fn read_config(path: &std::path::Path) -> anyhow::Result<AirbyteConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("--config: cannot read {}", path.display()))?;
    let v: Value = serde_json::from_str(&text)
        .with_context(|| format!("--config {}: not JSON", path.display()))?;
    AirbyteConfig::from_json(&v).map_err(|e| anyhow::anyhow!("config: {e}"))
}

async fn check(path: &std::path::Path) -> anyhow::Result<()> {
    let cfg = match read_config(path) {
        Ok(c) => c,
        Err(e) => {
            emit(
                &json!({"type": "CONNECTION_STATUS", "connectionStatus": {"status": "FAILED", "message": redact(&format!("{e:#}"))}}),
            );
            return Ok(());
        }
    };
    let status = match try_check(&cfg).await {
        Ok(()) => json!({"status": "SUCCEEDED"}),
        Err(e) => json!({"status": "FAILED", "message": redact(&e)}),
    };
    emit(&json!({"type": "CONNECTION_STATUS", "connectionStatus": status}));
    Ok(())
}

async fn try_check(cfg: &AirbyteConfig) -> Result<(), String> {
    let opts = cfg.connect_options();
    let timeout = opts.connect_timeout;
    let (client, _) = Client::connect(opts).await.map_err(|e| e.to_string())?;
    if let Some(topic) = &cfg.topic_test {
        let payload = json!({"_airbyte_check": "mqlink", "emitted_at": now_ms()}).to_string();
        let token = client
            .publish(Message::new(topic, payload, cfg.qos))
            .await
            .map_err(|e| format!("test topic {topic:?}: {e}"))?;
        match tokio::time::timeout(timeout.max(Duration::from_secs(1)), token).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(format!("test topic {topic:?}: {e}")),
            Err(_) => {
                return Err(format!(
                    "test topic {topic:?}: no confirmation within {timeout:?}"
                ))
            }
        }
    }
    client.disconnect().await;
    Ok(())
}

/// Streams of the configured catalog: (namespace, name).
fn catalog_streams(path: &std::path::Path) -> anyhow::Result<HashSet<(Option<String>, String)>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("--catalog: cannot read {}", path.display()))?;
    let v: Value = serde_json::from_str(&text)
        .with_context(|| format!("--catalog {}: not JSON", path.display()))?;
    let streams = v["streams"]
        .as_array()
        .ok_or_else(|| anyhow::anyhow!("--catalog {}: no \"streams\" array", path.display()))?;
    Ok(streams
        .iter()
        .filter_map(|s| {
            let st = &s["stream"];
            Some((
                st["namespace"].as_str().map(str::to_owned),
                st["name"].as_str()?.to_owned(),
            ))
        })
        .collect())
}

/// A STATE waits for the delivery handles of every record before it.
struct PendingState {
    handles: Vec<DeliveryHandle>,
    state: Value,
}

async fn write(config: &std::path::Path, catalog: &std::path::Path) -> anyhow::Result<()> {
    let cfg = read_config(config)?;
    let streams = catalog_streams(catalog)?;
    let opts = cfg.connect_options();
    let connect_timeout = opts.connect_timeout;
    let sink = MqttSink::builder()
        .connection(opts)
        .topic(&cfg.topic_pattern)
        .qos(cfg.qos)
        .retain(mqlink::sink::Retain::Fixed(cfg.message_retained))
        .publisher_sync(cfg.publisher_sync)
        .start()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    // Like the original, a sync fails at once when the broker cannot be
    // reached — within connect_timeout, not never.
    connected(&sink.clients()[0], connect_timeout).await?;
    // STATEs are printed by one task, in input order, each after its records.
    let (state_tx, mut state_rx) = mpsc::unbounded_channel::<PendingState>();
    let printer = tokio::spawn(async move {
        while let Some(p) = state_rx.recv().await {
            for h in p.handles {
                if let Err(e) = h.await {
                    return Err(transient(format!(
                        "a record was not confirmed by the broker: {e}"
                    )));
                }
            }
            emit(&p.state);
        }
        Ok(())
    });
    let mut handles = Vec::new();
    let mut input = BufReader::with_capacity(1 << 20, tokio::io::stdin());
    let mut buf = Vec::with_capacity(4096);
    let (mut line_no, mut records, mut skipped) = (0u64, 0u64, 0u64);
    loop {
        buf.clear();
        if input
            .read_until(b'\n', &mut buf)
            .await
            .context("reading stdin")?
            == 0
        {
            break;
        }
        line_no += 1;
        // A line that is not UTF-8 is skipped like one that is not JSON.
        let line = match std::str::from_utf8(&buf) {
            Ok(l) => l,
            Err(e) => {
                skipped += 1;
                log(
                    "WARN",
                    format!("line {line_no} is not UTF-8 and was skipped: {e}"),
                );
                continue;
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        let msg: Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(e) => {
                skipped += 1;
                log(
                    "WARN",
                    format!("line {line_no} is not a valid Airbyte message and was skipped: {e}"),
                );
                continue;
            }
        };
        match msg["type"].as_str() {
            Some("RECORD") => {
                let r = &msg["record"];
                let Some(stream) = r["stream"].as_str() else {
                    log(
                        "WARN",
                        format!("line {line_no}: RECORD without a stream was skipped"),
                    );
                    continue;
                };
                let namespace = r["namespace"].as_str().map(str::to_owned);
                if !streams.contains(&(namespace.clone(), stream.to_owned())) {
                    anyhow::bail!(
                        "line {line_no}: stream {} is not in the configured catalog",
                        stream_name(namespace.as_deref(), stream)
                    );
                }
                let envelope = json!({
                    "_airbyte_ab_id": uuid_v4(),
                    "_airbyte_stream": stream,
                    "_airbyte_emitted_at": r["emitted_at"],
                    "_airbyte_data": r["data"],
                });
                let mut rec = SinkRecord::json(envelope);
                rec.stream = Some(stream.to_owned());
                rec.namespace = namespace;
                let handle = sink
                    .send(rec)
                    .await
                    .with_context(|| format!("line {line_no}: record of stream {stream:?}"))?;
                handles.push(handle);
                records += 1;
                if records % 100_000 == 0 {
                    log("INFO", format!("{records} records sent"));
                }
            }
            Some("STATE") => {
                let pending = PendingState {
                    handles: std::mem::take(&mut handles),
                    state: msg,
                };
                if state_tx.send(pending).is_err() {
                    break;
                }
            }
            Some(_) => {}
            None => log(
                "WARN",
                format!("line {line_no} has no \"type\" and was skipped"),
            ),
        }
    }
    drop(state_tx);
    printer.await.context("state printer")??;
    // close, not only flush: DISCONNECT and wait for the broker to close,
    // so that the last QoS 0 records are read before the process exits.
    sink.close(Duration::from_secs(cfg.connect_timeout.max(30)))
        .await
        .map_err(|e| transient(e.to_string()))?;
    // QoS 0 has no confirmation: say only what is true of it.
    let done = match cfg.qos {
        QoS::AtMostOnce => "written to the broker (QoS 0: not confirmed)",
        _ => "confirmed by the broker",
    };
    log(
        "INFO",
        format!("{records} records {done}; {skipped} input lines skipped"),
    );
    Ok(())
}

/// A stream as Airbyte users write it: `namespace.stream`, or the bare
/// name when it has no namespace.
fn stream_name(namespace: Option<&str>, stream: &str) -> String {
    match namespace {
        Some(ns) => format!("{ns:?}.{stream:?}"),
        None => format!("{stream:?} (no namespace)"),
    }
}

/// Waits until `client` is connected; an unreachable broker is a transient
/// error after `timeout`, refused credentials a config error at once.
async fn connected(client: &Client, timeout: Duration) -> anyhow::Result<()> {
    let mut status = client.status();
    let wait = status.wait_for(|s| {
        matches!(
            s,
            Status::Connected { .. } | Status::Stopped { .. } | Status::Reconnecting { .. }
        )
    });
    let last = match tokio::time::timeout(timeout.max(Duration::from_secs(1)), wait).await {
        Ok(Ok(s)) => s.clone(),
        _ => {
            return Err(transient(format!(
                "cannot reach the broker within connect_timeout ({} s)",
                timeout.as_secs()
            )))
        }
    };
    match last {
        Status::Connected { .. } => Ok(()),
        // A failed attempt that the session would retry: the broker is down
        // or unreachable now.
        Status::Reconnecting { error, .. } => {
            Err(transient(format!("cannot reach the broker: {error}")))
        }
        // Stopped at once: refused (credentials, not authorized, protocol).
        Status::Stopped { error: Some(e) } => Err(anyhow::anyhow!("{e}")),
        Status::Stopped { error: None } | Status::Connecting => {
            Err(transient("the connection stopped before it was up"))
        }
    }
}

/// A random (version 4) UUID.
fn uuid_v4() -> String {
    let (a, b) = (fastrand::u64(..), fastrand::u64(..));
    let b = (b & 0x3fff_ffff_ffff_ffff) | 0x8000_0000_0000_0000;
    let a = (a & 0xffff_ffff_ffff_0fff) | 0x0000_0000_0000_4000;
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xffff,
        b >> 48,
        b & 0xffff_ffff_ffff
    )
}
