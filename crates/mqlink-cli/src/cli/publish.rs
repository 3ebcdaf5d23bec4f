//! `mqlink pub`: publish messages and exit 0 only when the broker confirmed
//! every one. With `-l`, each line of stdin is published as it arrives.

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use clap::{ArgGroup, Args};
use mqlink::sink::Confirmations;
use mqlink::topic::validate_topic_name;
use mqlink::{Client, Message, PublishProperties, PublishToken, QoS};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::sync::mpsc;

use super::{usage, ConnArgs};

#[derive(Args, Debug)]
#[command(disable_help_flag = true)]
#[command(group(ArgGroup::new("source").required(true).args(["message", "file", "lines", "stdin", "null_message"])))]
pub struct PubArgs {
    #[command(flatten)]
    pub conn: ConnArgs,
    /// Topic to publish to (or the topic of a `-L mqtt://host/topic` URL).
    #[arg(short = 't', long = "topic")]
    pub topic: Option<String>,
    /// QoS of the messages.
    #[arg(short = 'q', long = "qos", value_parser = super::parse_qos, default_value = "0")]
    pub qos: QoS,
    /// Retain the messages.
    #[arg(short = 'r', long = "retain")]
    pub retain: bool,
    /// The message.
    #[arg(short = 'm', long = "message")]
    pub message: Option<String>,
    /// A file whose whole content is one message.
    #[arg(short = 'f', long = "file")]
    pub file: Option<PathBuf>,
    /// Each line of stdin is a message, published as it arrives.
    #[arg(short = 'l', long = "stdin-line")]
    pub lines: bool,
    /// All of stdin is one message.
    #[arg(short = 's', long = "stdin-file")]
    pub stdin: bool,
    /// An empty message.
    #[arg(short = 'n', long = "null-message")]
    pub null_message: bool,
    /// Unconfirmed QoS 1/2 messages at most.
    #[arg(short = 'M', long = "max-inflight", default_value = "1000")]
    pub max_inflight: u16,
    /// MQTT 5: content type.
    #[arg(long = "content-type")]
    pub content_type: Option<String>,
    /// MQTT 5: message expiry interval in seconds.
    #[arg(long = "message-expiry")]
    pub message_expiry: Option<u32>,
    /// MQTT 5: response topic.
    #[arg(long = "response-topic")]
    pub response_topic: Option<String>,
    /// MQTT 5: correlation data.
    #[arg(long = "correlation-data")]
    pub correlation_data: Option<String>,
    /// MQTT 5: a user property KEY=VALUE; repeat for more.
    #[arg(long = "user-property", value_name = "KEY=VALUE")]
    pub user_properties: Vec<String>,
    /// Publish the message this many times (-m, -f, -s, -n).
    #[arg(long = "repeat", default_value = "1", value_parser = clap::value_parser!(u32).range(1..))]
    pub repeat: u32,
    /// Seconds between repeated messages.
    #[arg(long = "repeat-delay", value_parser = super::parse_secs, default_value = "0")]
    pub repeat_delay: Duration,
    /// Print a summary on stderr at the end (also with -d): messages
    /// confirmed, seconds, messages per second.
    #[arg(long = "stats")]
    pub stats: bool,
}

impl PubArgs {
    fn properties(&self) -> anyhow::Result<Option<PublishProperties>> {
        let mut p = PublishProperties {
            content_type: self.content_type.clone(),
            message_expiry_interval: self.message_expiry,
            response_topic: self.response_topic.clone(),
            correlation_data: self.correlation_data.clone().map(Bytes::from),
            ..Default::default()
        };
        for kv in &self.user_properties {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| usage(format!("--user-property: {kv:?} is not KEY=VALUE")))?;
            p.user_properties.push((k.into(), v.into()));
        }
        for prop in super::properties(&self.conn.property)? {
            if prop.command != "publish" {
                continue; // connect properties are ConnArgs'
            }
            let (name, v) = (prop.name, prop.value);
            match name {
                "content-type" => p.content_type = Some(v.to_owned()),
                "response-topic" => p.response_topic = Some(v.to_owned()),
                "correlation-data" => p.correlation_data = Some(Bytes::from(v.to_owned())),
                "message-expiry-interval" => {
                    p.message_expiry_interval = Some(v.parse().map_err(|_| {
                        usage(format!(
                            "-D publish message-expiry-interval: {v:?} is not a number"
                        ))
                    })?)
                }
                "payload-format-indicator" => {
                    p.payload_format_indicator = Some(v.parse().map_err(|_| {
                        usage(format!(
                            "-D publish payload-format-indicator: {v:?} is not 0 or 1"
                        ))
                    })?)
                }
                "user-property" => p
                    .user_properties
                    .push((v.to_owned(), prop.value2.unwrap_or_default().to_owned())),
                other => return Err(usage(format!("-D publish: unknown property {other:?}"))),
            }
        }
        if p.is_empty() {
            return Ok(None);
        }
        if self.conn.protocol != mqlink::Protocol::V5 {
            return Err(usage("MQTT 5 properties need -V 5"));
        }
        Ok(Some(p))
    }
}

pub async fn run(args: PubArgs) -> anyhow::Result<()> {
    let quiet = args.conn.quiet;
    run_inner(args)
        .await
        .map_err(|e| super::quiet_error(e, quiet))
}

async fn run_inner(args: PubArgs) -> anyhow::Result<()> {
    let topic = match (&args.topic, args.conn.url_topics().first()) {
        (Some(t), _) => t.clone(),
        (None, Some(t)) => t.clone(),
        (None, None) => return Err(usage("-t: a topic is required (or -L mqtt://host/topic)")),
    };
    validate_topic_name(&topic).map_err(|e| usage(format!("-t: {e}")))?;
    let properties = args.properties()?;
    let opts = args.conn.options(args.max_inflight)?;
    let protocol = opts.protocol;
    // SIGINT/SIGTERM stops reading and waiting at any point, connecting
    // included; what was not confirmed by then is counted as such (exit
    // 1), never claimed.
    let mut stop = crate::shutdown_signal();
    let (client, _incoming) = tokio::select! {
        c = Client::connect(opts) => c.map_err(|e| super::start_error(e, protocol, args.conn.quiet))?,
        _ = &mut stop => anyhow::bail!("interrupted before connecting"),
    };

    // Confirmations are awaited in order by a second task, so reading
    // input and publishing never wait on the broker beyond the window.
    let (tx, rx) = mpsc::channel::<PublishToken>(4096);
    let counts = Arc::new(Confirmations::default());
    let mut collector = tokio::spawn(confirm(rx, counts.clone()));
    let started = Instant::now();
    let message = |payload: Bytes| Message {
        topic: topic.clone(),
        payload,
        qos: args.qos,
        retain: args.retain,
        properties: properties.clone(),
    };

    let single = if let Some(m) = &args.message {
        Some(Bytes::from(m.clone()))
    } else if let Some(f) = &args.file {
        Some(Bytes::from(std::fs::read(f).with_context(|| {
            format!("-f: cannot read {}", f.display())
        })?))
    } else if args.stdin {
        let mut all = Vec::new();
        tokio::io::stdin()
            .read_to_end(&mut all)
            .await
            .context("reading stdin")?;
        Some(Bytes::from(all))
    } else if args.null_message {
        Some(Bytes::new())
    } else {
        None
    };

    let mut signalled = false;
    if let Some(payload) = single {
        for n in 0..args.repeat {
            if n > 0 && !args.repeat_delay.is_zero() {
                tokio::select! {
                    _ = tokio::time::sleep(args.repeat_delay) => {}
                    _ = &mut stop => {
                        signalled = true;
                        break;
                    }
                }
            }
            let token = tokio::select! {
                t = client.publish(message(payload.clone())) => t?,
                _ = &mut stop => {
                    if n == 0 {
                        client.disconnect().await;
                        anyhow::bail!("interrupted before the message was sent");
                    }
                    signalled = true;
                    break;
                }
            };
            counts.sent();
            let _ = tx.send(token).await;
        }
    } else {
        let mut lines = BufReader::with_capacity(256 * 1024, tokio::io::stdin()).split(b'\n');
        loop {
            let line = tokio::select! {
                l = lines.next_segment() => l.context("reading stdin")?,
                _ = &mut stop => {
                    signalled = true;
                    break;
                }
            };
            let Some(mut line) = line else { break };
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            // Waiting for room in the window is interruptible too.
            let published = tokio::select! {
                p = client.publish(message(Bytes::from(line))) => p,
                _ = &mut stop => {
                    signalled = true;
                    break;
                }
            };
            counts.sent();
            match published {
                Ok(token) => {
                    if tx.send(token).await.is_err() {
                        break;
                    }
                }
                // The session is over (gave up reconnecting): count it and stop.
                Err(e) => {
                    tracing::error!(error = %e, "Publish not accepted.");
                    counts.record(&Err(e));
                    break;
                }
            }
        }
    }
    drop(tx);
    if signalled {
        collector.abort();
    } else {
        tokio::select! {
            _ = &mut collector => {}
            _ = &mut stop => {
                signalled = true;
                collector.abort();
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    if signalled {
        // Told to stop: a frozen broker does not get the usual grace.
        let _ = tokio::time::timeout(Duration::from_millis(500), client.disconnect()).await;
    } else {
        client.disconnect().await;
    }
    // Refused, lost with a session that gave up, or not confirmed before a
    // signal: all count as not confirmed.
    let sent = counts.published();
    let failed = sent - counts.confirmed().min(sent);
    if signalled {
        tracing::warn!(unconfirmed = failed, "Interrupted.");
    }
    if args.stats || args.conn.debug {
        let _ = writeln!(
            std::io::stderr(),
            "mqlink pub: {} messages confirmed in {secs:.3} s ({:.0} messages/s){}",
            sent - failed,
            (sent - failed) as f64 / secs.max(1e-9),
            if failed > 0 {
                format!(", {failed} NOT confirmed")
            } else {
                String::new()
            }
        );
    }
    if failed > 0 {
        anyhow::bail!("{failed} of {sent} messages were not confirmed by the broker");
    }
    // Exit 0 means exactly once for QoS 2: a clean session that the broker
    // lost between PUBREL and PUBCOMP cannot say that.
    let maybe_twice = client.stats().qos2_maybe_duplicated();
    if maybe_twice > 0 {
        anyhow::bail!(
            "all {sent} messages were confirmed, but {maybe_twice} QoS 2 messages may have been delivered twice: the broker lost the session while they awaited PUBCOMP (use -c -i ID so that QoS 2 stays exactly once across reconnects)"
        );
    }
    Ok(())
}

/// Awaits confirmations in send order, logging the first failure.
async fn confirm(mut rx: mpsc::Receiver<PublishToken>, counts: Arc<Confirmations>) {
    let mut first_error = true;
    while let Some(token) = rx.recv().await {
        if let Err(e) = counts.confirm(token).await {
            if first_error {
                tracing::error!(error = %e, "Publish not confirmed.");
                first_error = false;
            }
        }
    }
}
