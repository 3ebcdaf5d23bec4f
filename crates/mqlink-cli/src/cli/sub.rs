//! `mqlink sub`: subscribe and write messages to stdout. A message is
//! acknowledged to the broker only after it was written and flushed, so a
//! `kill -9` while draining a persistent session loses nothing.

use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use mqlink::format::{AvroSchema, ColumnType, Format as Decode, Registry, Schema};
use mqlink::source::{MqttSource, SourceConfig};
use mqlink::topic::{validate_filter, validate_topic_name};
use mqlink::{QoS, Status, Subscription};

use super::output::{self, Format};
use super::{usage, ConnArgs};

#[derive(Args, Debug)]
#[command(disable_help_flag = true)]
pub struct SubArgs {
    #[command(flatten)]
    pub conn: ConnArgs,
    /// Topic filter to subscribe to; repeat for more.
    #[arg(short = 't', long = "topic", required = true)]
    pub topics: Vec<String>,
    /// QoS of the subscriptions.
    #[arg(short = 'q', long = "qos", value_parser = super::parse_qos, default_value = "0")]
    pub qos: QoS,
    /// Exit after this many messages.
    #[arg(short = 'C', long = "count")]
    pub count: Option<u64>,
    /// Exit after this many seconds.
    #[arg(short = 'W', long = "timeout", value_parser = super::parse_secs)]
    pub timeout: Option<Duration>,
    /// Print the topic before each payload.
    #[arg(short = 'v', long = "verbose")]
    pub verbose: bool,
    /// Output format: raw (payloads) or json (one object per line).
    #[arg(short = 'F', long = "format", value_enum, default_value = "raw")]
    pub format: Format,
    /// Messages received before the driver stops reading (back-pressure).
    #[arg(long = "buffer", default_value = "4096")]
    pub buffer: usize,
    /// Decode payloads as JSON with these typed columns, e.g.
    /// `device_id:text,seq:bigint,ts:timestamp,temp:double`
    /// (text, bigint, double, boolean, timestamp, json, bytea).
    #[arg(long = "schema", value_name = "NAME:TYPE,…")]
    pub schema: Option<String>,
    /// Decode payloads as Avro with the writer schema in this file (.avsc).
    #[arg(long = "avro-schema", value_name = "FILE", conflicts_with_all = ["schema", "schema_registry_url"])]
    pub avro_schema: Option<std::path::PathBuf>,
    /// Decode payloads in the Confluent wire format, schemas from this registry.
    #[arg(
        long = "schema-registry-url",
        value_name = "URL",
        conflicts_with = "schema"
    )]
    pub schema_registry_url: Option<String>,
    /// Publish payloads that do not decode here (with the original topic and
    /// the reason) instead of printing them.
    #[arg(long = "dead-letter-topic")]
    pub dead_letter_topic: Option<String>,
}

fn parse_schema(spec: &str) -> anyhow::Result<Schema> {
    let mut cols = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, ty) = part
            .split_once([':', '='])
            .ok_or_else(|| usage(format!("--schema: {part:?} is not NAME:TYPE")))?;
        let ty: ColumnType = ty
            .parse()
            .map_err(|e| usage(format!("--schema: column {name:?}: {e}")))?;
        cols.push((name.trim().to_owned(), ty));
    }
    if cols.is_empty() {
        return Err(usage("--schema: no columns given"));
    }
    Ok(Schema::new(cols))
}

/// Deliveries written and acknowledged per stdout write.
const BATCH: usize = 1024;

pub async fn run(args: SubArgs) -> anyhow::Result<()> {
    for t in &args.topics {
        validate_filter(t).map_err(|e| usage(format!("-t: {e}")))?;
    }
    if let Some(t) = &args.dead_letter_topic {
        validate_topic_name(t).map_err(|e| usage(format!("--dead-letter-topic: {e}")))?;
    }
    let decode = if let Some(spec) = &args.schema {
        Decode::Json {
            schema: Some(parse_schema(spec)?),
        }
    } else if let Some(path) = &args.avro_schema {
        let text = std::fs::read_to_string(path).map_err(|e| {
            usage(format!(
                "--avro-schema: cannot read {}: {e}",
                path.display()
            ))
        })?;
        let schema = AvroSchema::parse(&text)
            .map_err(|e| usage(format!("--avro-schema {}: {e}", path.display())))?;
        Decode::Avro {
            schema: std::sync::Arc::new(schema),
        }
    } else if let Some(url) = &args.schema_registry_url {
        let registry =
            Registry::new(url).map_err(|e| usage(format!("--schema-registry-url: {e}")))?;
        Decode::AvroRegistry {
            registry: std::sync::Arc::new(registry),
        }
    } else {
        Decode::RawBytes {
            include_topic: false,
        }
    };
    let mut opts = args.conn.options(1000)?;
    opts.incoming_buffer = args.buffer.max(1);
    // Let the broker send a full window; acknowledgements go out as
    // batches are written.
    opts.receive_maximum = 65_535;
    // Overlapping -t filters deliver each message once (see mqlink::source).
    let config = SourceConfig {
        connection: opts,
        subscriptions: args
            .topics
            .iter()
            .map(|t| Subscription::new(t, args.qos))
            .collect(),
        format: decode,
        dead_letter_topic: args.dead_letter_topic.clone(),
        max_retries: 0,
        batch_size: BATCH,
        batch_timeout: Duration::ZERO,
        parallelism: 1,
        share_group: None,
    };
    // -W bounds everything, connecting and subscribing included.
    let deadline = args.timeout.map(|d| tokio::time::Instant::now() + d);
    let mut source = match deadline {
        Some(at) => match tokio::time::timeout_at(at, MqttSource::start(config)).await {
            Ok(s) => s?,
            Err(_) => anyhow::bail!(
                "-W: timed out after {} s before the subscription was in place",
                args.timeout.unwrap_or_default().as_secs_f64()
            ),
        },
        None => MqttSource::start(config).await?,
    };
    let client = source.clients()[0].clone();

    let sleep = tokio::time::sleep_until(
        deadline.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(86_400 * 365)),
    );
    tokio::pin!(sleep);
    let mut stop = crate::shutdown_signal();
    let stdout = std::io::stdout();
    let mut buf = Vec::with_capacity(256 * 1024);
    let mut acks = Vec::with_capacity(BATCH);
    let mut seen: u64 = 0;
    let limit = args.count.unwrap_or(u64::MAX);
    let mut stopped_with: Option<String> = None;

    while seen < limit {
        let batch = tokio::select! {
            b = source.next_batch() => b,
            _ = &mut sleep, if deadline.is_some() => break,
            _ = &mut stop => break,
        };
        if batch.is_empty() {
            if let Status::Stopped { error } = &*client.status().borrow() {
                stopped_with = error.clone();
            }
            break;
        }
        for mut d in batch {
            if seen == limit {
                // Not written, so not acknowledged: the broker keeps it.
                continue;
            }
            if let Err(e) = &d.value {
                tracing::warn!(topic = %d.topic, error = %e, "Payload does not match the schema.");
            }
            output::write(&mut buf, &d, args.format, args.verbose);
            acks.extend(d.take_ack());
            seen += 1;
        }
        let mut lock = stdout.lock();
        let written = lock.write_all(&buf).and_then(|_| lock.flush());
        drop(lock);
        buf.clear();
        match written {
            Ok(()) => acks.drain(..).for_each(|a| a.ack()),
            // A closed pipe (`| head`): stop without acknowledging.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                acks.clear();
                break;
            }
            Err(e) => return Err(e).context("writing to stdout"),
        }
    }
    source.close().await;
    if let Some(e) = stopped_with {
        anyhow::bail!("{e}");
    }
    Ok(())
}
