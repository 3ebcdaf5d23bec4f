//! `mqlink sub`: subscribe and write messages to stdout. A message is
//! acknowledged to the broker only after it was written and flushed, so a
//! `kill -9` while draining a persistent session loses nothing.

use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use mqlink::format::{AvroSchema, ColumnType, Decoder, Registry, Schema};
use mqlink::source::{MqttSource, Record};
use mqlink::topic::{self, validate_filter, validate_topic_name};
use mqlink::{Message, QoS, Status};

use super::format::{Msg, Template};
use super::output::{self, Format};
use super::{usage, ConnArgs};

#[derive(Args, Debug)]
#[command(disable_help_flag = true)]
pub struct SubArgs {
    #[command(flatten)]
    pub conn: ConnArgs,
    /// Topic filter to subscribe to; repeat for more (or a `-L mqtt://host/filter` URL).
    #[arg(short = 't', long = "topic")]
    pub topics: Vec<String>,
    /// QoS of the subscriptions.
    #[arg(short = 'q', long = "qos", value_parser = super::parse_qos, default_value = "0")]
    pub qos: QoS,
    /// Exit after this many messages.
    #[arg(short = 'C', long = "count")]
    pub count: Option<u64>,
    /// Exit after this many seconds with "Timed out" and exit code 27,
    /// as mosquitto_sub (connecting and subscribing included).
    #[arg(short = 'W', long = "timeout", value_parser = super::parse_secs)]
    pub timeout: Option<Duration>,
    /// Print the topic before each payload (`topic (null)` for an empty one).
    #[arg(short = 'v', long = "verbose")]
    pub verbose: bool,
    /// mosquitto_sub's format string: %t topic, %p payload, %j/%J JSON, %x hex,
    /// %l %m %q %r %U %I, properties %A %C %D %E %F %P %R %S, @ time, \ escapes.
    #[arg(short = 'F', value_name = "FORMAT", conflicts_with = "output")]
    pub format: Option<String>,
    /// mqlink's own output: raw (payloads) or json (one object per line, with
    /// decoded values, properties and the receive time).
    #[arg(long = "format", id = "output", value_enum)]
    pub output: Option<Format>,
    /// Print JSON (%j, %J) indented, as mosquitto's --pretty.
    #[arg(long = "pretty")]
    pub pretty: bool,
    /// No end of line after each message.
    #[arg(short = 'N')]
    pub no_eol: bool,
    /// Do not print retained (stale) messages.
    #[arg(short = 'R', conflicts_with = "retained_only")]
    pub no_retained: bool,
    /// Only retained messages: exit at the first that is not.
    #[arg(long = "retained-only")]
    pub retained_only: bool,
    /// Clear each retained message received (an empty retained publish at QoS 1).
    #[arg(long = "remove-retained")]
    pub remove_retained: bool,
    /// Exit once the subscriptions are acknowledged.
    #[arg(short = 'E')]
    pub exit_after_subscribe: bool,
    /// Do not print messages whose topic matches this filter; repeatable.
    #[arg(short = 'T', long = "filter-out")]
    pub filter_out: Vec<String>,
    /// Unsubscribe from this filter after connecting (persistent sessions); repeatable.
    #[arg(short = 'U', long = "unsubscribe")]
    pub unsubscribe: Vec<String>,
    /// Print only this percentage of messages (0.1 to 100).
    #[arg(long = "random-filter", value_parser = parse_chance)]
    pub random_filter: Option<f64>,
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

fn parse_chance(s: &str) -> Result<f64, String> {
    s.parse::<f64>()
        .ok()
        .filter(|v| (0.1..=100.0).contains(v))
        .ok_or_else(|| format!("{s:?} is not a chance between 0.1 and 100.0"))
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
    let quiet = args.conn.quiet;
    run_inner(args)
        .await
        .map_err(|e| super::quiet_error(e, quiet))
}

/// What the output loop does with one record.
enum Step {
    Print,
    Skip,
    Stop,
}

async fn run_inner(mut args: SubArgs) -> anyhow::Result<()> {
    args.topics.extend(args.conn.url_topics());
    if args.topics.is_empty() {
        return Err(usage(
            "-t: a topic filter is required (or -L mqtt://host/filter)",
        ));
    }
    for t in args
        .topics
        .iter()
        .chain(&args.filter_out)
        .chain(&args.unsubscribe)
    {
        validate_filter(t).map_err(|e| usage(format!("-t/-T/-U: {e}")))?;
    }
    let template = args
        .format
        .as_deref()
        .map(Template::parse)
        .transpose()
        .map_err(usage)?;
    if let Some(t) = &args.dead_letter_topic {
        validate_topic_name(t).map_err(|e| usage(format!("--dead-letter-topic: {e}")))?;
    }
    let decode = if args.output == Some(Format::SparkplugB) {
        Decoder::SparkplugB(std::sync::Arc::new(
            mqlink::format::sparkplug::Host::default(),
        ))
    } else if let Some(spec) = &args.schema {
        Decoder::Json {
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
        Decoder::Avro {
            schema: std::sync::Arc::new(schema),
        }
    } else if let Some(url) = &args.schema_registry_url {
        let registry =
            Registry::new(url).map_err(|e| usage(format!("--schema-registry-url: {e}")))?;
        Decoder::AvroRegistry {
            registry: std::sync::Arc::new(registry),
        }
    } else {
        Decoder::RawBytes {
            include_topic: false,
        }
    };
    let mut opts = args.conn.options(1000)?;
    let protocol = opts.protocol;
    opts.incoming_buffer = args.buffer.max(1);
    // Let the broker send a full window; acknowledgements go out as
    // batches are written.
    opts.receive_maximum = 65_535;
    // Overlapping -t filters deliver each message once (see mqlink::source).
    let mut builder = MqttSource::builder()
        .connection(opts)
        .format(decode)
        .max_retries(0)
        .batch(BATCH, Duration::ZERO);
    for t in &args.topics {
        builder = builder.topic(t, args.qos);
    }
    if let Some(t) = &args.dead_letter_topic {
        builder = builder.dead_letter_topic(t);
    }
    let config = builder.build();
    let timed_out = || {
        anyhow::Error::new(super::Exit {
            code: super::EXIT_TIMED_OUT,
            message: Some("Timed out".to_owned()),
        })
    };
    // -W bounds everything, connecting and subscribing included.
    let deadline = args.timeout.map(|d| tokio::time::Instant::now() + d);
    // SIGINT/SIGTERM end the command in every state, reconnecting to a
    // broker that hangs up at the SUBSCRIBE included.
    let mut stop = crate::shutdown_signal();
    let started = match (config, deadline) {
        (Err(e), _) => Err(mqlink::Error::from(e)),
        (Ok(config), deadline) => {
            let far = tokio::time::Instant::now() + Duration::from_secs(86_400 * 365);
            tokio::select! {
                s = MqttSource::start(config) => s,
                _ = tokio::time::sleep_until(deadline.unwrap_or(far)) => return Err(timed_out()),
                _ = &mut stop => return Ok(()),
            }
        }
    };
    let mut source = started.map_err(|e| super::start_error(e, protocol, args.conn.quiet))?;
    let client = source.clients()[0].clone();
    if args.conn.debug {
        tracing::debug!(client_id = client.client_id(), filters = ?args.topics, "Subscribed.");
    }
    if !args.unsubscribe.is_empty() {
        client
            .unsubscribe(args.unsubscribe.clone())
            .await
            .context("-U: unsubscribing")?;
    }
    if args.exit_after_subscribe {
        source.close().await;
        return Ok(());
    }

    let sleep = tokio::time::sleep_until(
        deadline.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(86_400 * 365)),
    );
    tokio::pin!(sleep);
    let stdout = std::io::stdout();
    let mut buf = Vec::with_capacity(OUT_BYTES);
    let mut acks = Vec::with_capacity(BATCH);
    let mut removals = Vec::new();
    let mut seen: u64 = 0;
    let limit = args.count.unwrap_or(u64::MAX);
    let mut stopped_with: Option<String> = None;
    let mut hit_deadline = false;
    let mut done = false;

    while seen < limit && !done {
        let batch = tokio::select! {
            b = source.next_batch() => b,
            _ = &mut sleep, if deadline.is_some() => {
                hit_deadline = true;
                break;
            }
            _ = &mut stop => break,
        };
        if batch.is_empty() {
            if let Status::Stopped { error } = &*client.status().borrow() {
                stopped_with = error.clone();
            }
            break;
        }
        for mut d in batch {
            if seen == limit || done {
                // Not written, so not acknowledged: the broker keeps it.
                continue;
            }
            match step(&args, &d) {
                Step::Stop => {
                    done = true;
                    continue;
                }
                Step::Skip => {
                    acks.extend(d.take_ack());
                    continue;
                }
                Step::Print => {}
            }
            if let Err(e) = &d.value {
                tracing::warn!(topic = %d.topic, error = %e, "Payload does not match the schema.");
            }
            if args.remove_retained && d.retain {
                let clear = Message {
                    topic: d.topic.to_string(),
                    payload: bytes::Bytes::new(),
                    qos: QoS::AtLeastOnce,
                    retain: true,
                    properties: None,
                };
                match client.publish(clear).await {
                    Ok(token) => removals.push(token),
                    Err(e) => {
                        tracing::error!(topic = %d.topic, error = %e, "Retained message not removed.")
                    }
                }
            }
            let chance = args.random_filter.unwrap_or(100.0);
            if chance >= 100.0 || fastrand::f64() * 100.0 < chance {
                print(&args, template.as_ref(), &d, &mut buf);
            }
            acks.extend(d.take_ack());
            seen += 1;
            drop(d);
            // Large messages go out as they come: the output holds at
            // most about OUT_BYTES besides the message being printed.
            if buf.len() >= OUT_BYTES && !write_out(&stdout, &mut buf, &mut acks)? {
                done = true;
            }
        }
        if !write_out(&stdout, &mut buf, &mut acks)? {
            break;
        }
    }
    for token in removals {
        if let Err(e) = token.await {
            tracing::error!(error = %e, "Retained message not removed.");
        }
    }
    source.close().await;
    if let Some(e) = stopped_with {
        anyhow::bail!("{e}");
    }
    if hit_deadline {
        return Err(timed_out());
    }
    Ok(())
}

/// Bytes of output gathered before they are written.
const OUT_BYTES: usize = 256 * 1024;

/// Writes what was printed and acknowledges it; `false` when stdout was
/// closed (`| head`): nothing more is written or acknowledged.
fn write_out(
    stdout: &std::io::Stdout,
    buf: &mut Vec<u8>,
    acks: &mut Vec<mqlink::source::RecordAck>,
) -> anyhow::Result<bool> {
    let mut lock = stdout.lock();
    let written = lock.write_all(buf).and_then(|_| lock.flush());
    drop(lock);
    buf.clear();
    // One large message does not keep its size allocated.
    if buf.capacity() > 4 * OUT_BYTES {
        *buf = Vec::with_capacity(OUT_BYTES);
    }
    match written {
        Ok(()) => {
            acks.drain(..).for_each(|a| a.ack());
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            acks.clear();
            Ok(false)
        }
        Err(e) => Err(e).context("writing to stdout"),
    }
}

/// mosquitto_sub's checks before printing, in its order.
fn step(args: &SubArgs, d: &Record) -> Step {
    if args.retained_only && !d.retain {
        return Step::Stop;
    }
    if args.no_retained && d.retain {
        return Step::Skip;
    }
    if args.filter_out.iter().any(|f| topic::matches(f, &d.topic)) {
        return Step::Skip;
    }
    Step::Print
}

/// One message as mosquitto_sub prints it (or mqlink's `--format`).
fn print(args: &SubArgs, template: Option<&Template>, d: &Record, buf: &mut Vec<u8>) {
    let eol = !args.no_eol;
    if let Some(t) = template {
        let m = Msg {
            topic: &d.topic,
            payload: &d.payload,
            qos: d.qos as u8,
            retain: d.retain,
            mid: d.packet_id,
            properties: d.properties.as_deref(),
            received_at: d.received_at,
        };
        let quiet = args.conn.quiet;
        t.render(&m, args.pretty, buf, &mut |e| {
            if !quiet {
                let _ = writeln!(std::io::stderr(), "{e}");
            }
        });
        if eol {
            buf.push(b'\n');
        }
        return;
    }
    if let Some(format) = args.output {
        output::write(buf, d, format, args.verbose);
        return;
    }
    if args.verbose {
        if !d.payload.is_empty() {
            buf.extend_from_slice(d.topic.as_bytes());
            buf.push(b' ');
            buf.extend_from_slice(&d.payload);
            if eol {
                buf.push(b'\n');
            }
        } else if eol {
            buf.extend_from_slice(d.topic.as_bytes());
            buf.extend_from_slice(b" (null)\n");
        }
    } else if !d.payload.is_empty() {
        buf.extend_from_slice(&d.payload);
        if eol {
            buf.push(b'\n');
        }
    }
}
