//! `mqlink run FILE`: sources and sinks from a pipeline file, with
//! end-to-end acknowledgements, metrics and health over HTTP, a live
//! status, and a draining shutdown.
//!
//! - `config.rs`: the file, validated with key paths (`mqlink validate`).
//! - `batch.rs`: records in flight and the fan-out acknowledgement.
//! - `status.rs`: per-component counters, /metrics, /status, /ready.
//! - `http.rs`: the four endpoints.
//! - the sources and sinks themselves are in `crate::connectors`.
//!
//! Shutdown (SIGINT/SIGTERM): sources stop taking messages, sinks drain
//! and confirm what is in flight, the sources' acknowledgements go out,
//! then the clients disconnect — within `run.shutdown_timeout`.

pub mod batch;
pub mod config;
pub mod http;
pub mod status;

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use mqlink::source::MqttSource;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::cli::usage;
use crate::connectors::{self, Outputs};
use config::{SinkKind, SourceConfig};
use status::{Component, Kind, Registry, State};

/// `mqlink run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// The pipeline file: TOML, or YAML when it ends in .yaml or .yml.
    pub file: PathBuf,
    /// No live status, no periodic status lines, no summary; errors only.
    #[arg(short, long)]
    pub quiet: bool,
    /// Log format on stderr: text or json.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
    /// Stop (draining, as on SIGTERM) once every finite source is done and
    /// nothing moved for SECS seconds: for demos, tests and benchmarks.
    #[arg(long, value_name = "SECS")]
    pub until_idle: Option<f64>,
}

/// `mqlink validate`.
#[derive(Args, Debug)]
pub struct ValidateArgs {
    /// The pipeline file to check (nothing is connected to).
    pub file: PathBuf,
}

pub fn validate(args: ValidateArgs) -> anyhow::Result<()> {
    let p = config::load(&args.file).map_err(|e| usage(e.to_string()))?;
    println!(
        "{}: valid: {} connection(s), {} source(s), {} sink(s)",
        args.file.display(),
        p.connections.len(),
        p.sources.len(),
        p.sinks.len()
    );
    for (path, id) in p.client_ids() {
        println!("  {path}: MQTT client id {id}");
    }
    Ok(())
}

/// Why the pipeline stopped.
enum Stop {
    Signal,
    SourcesDone,
    Idle,
    Failed(String),
}

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let p = config::load(&args.file).map_err(|e| usage(e.to_string()))?;
    let started = Instant::now();

    let broker = if p.wants_embedded_broker() {
        let listen = p.embedded_broker.listen.as_deref().unwrap_or("127.0.0.1:0");
        let b = mqlink::broker::EmbeddedBroker::start(listen)
            .await
            .with_context(|| format!("embedded_broker.listen: cannot listen on {listen}"))?;
        tracing::info!(address = %b.local_addr(), "Embedded broker listening (for development: memory only).");
        Some(b)
    } else {
        None
    };
    let embedded = broker
        .as_ref()
        .map(|b| format!("mqtt://{}", b.local_addr()));

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut components = Vec::new();
    let mut senders: HashMap<String, Vec<mpsc::Sender<Arc<batch::Batch>>>> = HashMap::new();
    let (failed_tx, mut failed_rx) = mpsc::unbounded_channel::<String>();
    let mut sink_tasks: Vec<JoinHandle<()>> = Vec::new();

    for (name, sink) in &p.sinks {
        let comp = Component::new(name, Kind::Sink, sink.kind.type_name());
        components.push(comp.clone());
        let (tx, rx) = mpsc::channel(16);
        for input in &sink.inputs {
            senders.entry(input.clone()).or_default().push(tx.clone());
        }
        let path = format!("sinks.{name}");
        let task = match &sink.kind {
            SinkKind::Mqtt(m) => {
                let opts = p.options_for(&m.connection, name, embedded.as_deref());
                tokio::spawn(connectors::mqtt::run_sink(
                    path.clone(),
                    m.clone(),
                    opts,
                    comp.clone(),
                    rx,
                ))
            }
            SinkKind::File(f) => tokio::spawn(connectors::file::run(
                path.clone(),
                f.clone(),
                comp.clone(),
                rx,
            )),
            SinkKind::Postgres(pg) => {
                let schema = p
                    .sources
                    .iter()
                    .find(|(n, _)| *n == sink.inputs[0])
                    .and_then(|(_, s)| s.schema())
                    .expect("checked when the file was loaded");
                tokio::spawn(connectors::postgres::run(
                    path.clone(),
                    pg.clone(),
                    schema,
                    comp.clone(),
                    rx,
                ))
            }
        };
        let failed = failed_tx.clone();
        sink_tasks.push(tokio::spawn(async move {
            let r = task.await.unwrap_or_else(|e| Err(format!("panicked: {e}")));
            match r {
                Ok(()) => comp.set_state(State::Finished),
                Err(e) => {
                    tracing::error!(component = %path, error = %e, "Sink stopped.");
                    comp.set_error(e.clone());
                    comp.set_state(State::Failed);
                    let _ = failed.send(format!("{path}: {e}"));
                }
            }
        }));
    }

    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Option<MqttSource>>();
    let sources: Vec<Arc<Component>> = p
        .sources
        .iter()
        .map(|(name, s)| {
            let type_name = match s {
                SourceConfig::Mqtt(_) => "mqtt",
                SourceConfig::Generator(_) => "generator",
            };
            Component::new(name, Kind::Source, type_name)
        })
        .collect();
    let subscribers: Arc<Vec<Arc<Component>>> = Arc::new(
        sources
            .iter()
            .filter(|c| c.type_name == "mqtt")
            .cloned()
            .collect(),
    );
    for ((name, source), comp) in p.sources.iter().zip(sources) {
        components.push(comp.clone());
        let out = Outputs {
            senders: senders.remove(name).unwrap_or_default(),
            stop: stop_rx.clone(),
        };
        let done = done_tx.clone();
        let path = format!("sources.{name}");
        match source {
            SourceConfig::Mqtt(m) => {
                let opts = p.options_for(&m.connection, name, embedded.as_deref());
                let m = m.clone();
                tokio::spawn(async move {
                    let _ = done.send(connectors::mqtt::run_source(path, m, opts, comp, out).await);
                });
            }
            SourceConfig::Generator(g) => {
                let g = g.clone();
                let subscribers = subscribers.clone();
                tokio::spawn(async move {
                    // Generated records are published only once every MQTT
                    // source has subscribed: a clean session that subscribes
                    // late would miss the first ones.
                    while subscribers.iter().any(|c| c.state() == State::Starting) {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    connectors::generator::run(g, 1000, comp, out).await;
                    let _ = done.send(None);
                });
            }
        }
    }
    drop(done_tx);
    let registry = Registry(Arc::new(components));

    if let Some(h) = &p.http {
        let listener = http::bind(&h.listen)
            .await
            .with_context(|| format!("http.listen: cannot listen on {}", h.listen))?;
        tracing::info!(address = %h.listen, "Serving /metrics, /health, /ready and /status.");
        tokio::spawn(http::serve(listener, registry.clone()));
    }

    let display = Display::new(&args, p.run.status_interval);
    let mut tick = tokio::time::interval(display.every);
    tick.tick().await;
    let mut control = tokio::time::interval(Duration::from_millis(100));
    let mut signal = crate::shutdown_signal();
    let mut finished: Vec<Option<MqttSource>> = Vec::new();
    let mut idle = Idle::default();
    let stop = loop {
        tokio::select! {
            _ = &mut signal => break Stop::Signal,
            Some(s) = done_rx.recv() => {
                finished.push(s);
                if finished.len() == p.sources.len() {
                    break Stop::SourcesDone;
                }
            }
            Some(e) = failed_rx.recv() => break Stop::Failed(e),
            _ = tick.tick() => display.show(&registry),
            _ = control.tick() => {
                if let Some(c) = registry.0.iter().find(|c| c.state() == State::Failed) {
                    break Stop::Failed(format!("{}: {}", c.path(), c.last_error().unwrap_or_default()));
                }
                if let Some(secs) = args.until_idle {
                    if idle.reached(&registry, secs) {
                        break Stop::Idle;
                    }
                }
            }
        }
    };
    display.clear();
    let why = match &stop {
        Stop::Signal => "signal received".to_string(),
        Stop::SourcesDone => "every source is done".to_string(),
        Stop::Idle => "idle".to_string(),
        Stop::Failed(e) => format!("failed: {e}"),
    };
    tracing::info!(reason = %why, "Stopping: taking no new messages, draining what is in flight.");

    // Drain: sources stop and drop their senders, so each sink's channel
    // ends once it took every batch; the sinks confirm and finish.
    let _ = stop_tx.send(true);
    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(p.run.shutdown_timeout);
    while finished.len() < p.sources.len() {
        match tokio::time::timeout_at(deadline, done_rx.recv()).await {
            Ok(Some(s)) => finished.push(s),
            _ => break,
        }
    }
    let mut drained = true;
    for t in sink_tasks {
        if tokio::time::timeout_at(deadline, t).await.is_err() {
            drained = false;
        }
    }
    // Acknowledgements given so far are written before DISCONNECT.
    for s in finished.into_iter().flatten() {
        s.close().await;
    }
    for c in registry.0.iter().filter(|c| c.state() == State::Running) {
        c.set_state(State::Finished);
    }
    drop(broker);

    let unconfirmed: u64 = registry
        .0
        .iter()
        .filter(|c| c.kind == Kind::Sink)
        .map(|c| c.unconfirmed())
        .sum();
    if !args.quiet {
        let mut prev = Vec::new();
        let elapsed = started.elapsed().as_secs_f64();
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "mqlink run: stopped ({why}) after {elapsed:.1} s");
        for line in registry.lines(&mut prev, elapsed) {
            let _ = writeln!(err, "  {line}");
        }
        if let Some(secs) = batch::busy_seconds() {
            let acked: u64 = registry
                .0
                .iter()
                .filter(|c| c.kind == Kind::Source)
                .map(|c| c.confirmed.load(Relaxed))
                .sum();
            let _ = writeln!(
                err,
                "  {acked} records acknowledged in {secs:.3} s from the first record to the last acknowledgement ({:.0} records/s)",
                acked as f64 / secs.max(1e-9)
            );
        }
    }
    if !drained || unconfirmed > 0 {
        anyhow::bail!(
            "{unconfirmed} records were not confirmed within run.shutdown_timeout = {} s; they were not acknowledged and will be delivered again",
            p.run.shutdown_timeout
        );
    }
    if let Stop::Failed(e) = stop {
        anyhow::bail!("{e}");
    }
    // A source that could not start (refused credentials, say) ends the
    // pipeline too: say so, and exit non-zero.
    if let Some(c) = registry.0.iter().find(|c| c.state() == State::Failed) {
        anyhow::bail!("{}: {}", c.path(), c.last_error().unwrap_or_default());
    }
    Ok(())
}

/// `--until-idle`: every finite source done, nothing moving, nothing pending.
#[derive(Default)]
struct Idle {
    last: u64,
    since: Option<Instant>,
}

impl Idle {
    fn reached(&mut self, r: &Registry, secs: f64) -> bool {
        let moved: u64 =
            r.0.iter()
                .map(|c| c.records.load(Relaxed) + c.confirmed.load(Relaxed))
                .sum();
        let settled = r.0.iter().all(|c| {
            (c.type_name != "generator" || c.state() == State::Finished) && c.unconfirmed() == 0
        });
        if moved != self.last || !settled {
            self.last = moved;
            self.since = None;
            return false;
        }
        let since = *self.since.get_or_insert_with(Instant::now);
        since.elapsed().as_secs_f64() >= secs
    }
}

/// The live status: redrawn every second on a terminal, a log line per
/// component every `status_interval` otherwise, nothing with `--quiet`.
struct Display {
    mode: Mode,
    every: Duration,
    prev: std::sync::Mutex<(Vec<u64>, Instant, usize)>,
}

#[derive(PartialEq)]
enum Mode {
    Quiet,
    Terminal,
    Log,
}

impl Display {
    fn new(args: &RunArgs, status_interval: f64) -> Display {
        let mode = if args.quiet {
            Mode::Quiet
        } else if std::io::stderr().is_terminal() && args.log_format == "text" {
            Mode::Terminal
        } else {
            Mode::Log
        };
        let every = match mode {
            Mode::Log => Duration::from_secs_f64(status_interval),
            _ => Duration::from_millis(1000),
        };
        Display {
            mode,
            every,
            prev: std::sync::Mutex::new((Vec::new(), Instant::now(), 0)),
        }
    }

    fn show(&self, r: &Registry) {
        if self.mode == Mode::Quiet {
            return;
        }
        let mut prev = self.prev.lock().expect("display lock");
        let (counts, at, drawn) = &mut *prev;
        let secs = at.elapsed().as_secs_f64();
        *at = Instant::now();
        let lines = r.lines(counts, secs);
        match self.mode {
            Mode::Terminal => {
                let mut err = std::io::stderr().lock();
                if *drawn > 0 {
                    let _ = write!(err, "\x1b[{}A\x1b[J", *drawn);
                }
                for l in &lines {
                    let _ = writeln!(err, "{l}");
                }
                *drawn = lines.len();
            }
            _ => {
                for l in &lines {
                    tracing::info!("status: {l}");
                }
            }
        }
    }

    fn clear(&self) {
        if self.mode == Mode::Terminal {
            let drawn = self.prev.lock().expect("display lock").2;
            if drawn > 0 {
                let _ = write!(std::io::stderr(), "\x1b[{drawn}A\x1b[J");
            }
        }
    }
}
