//! `run(spec, options, shutdown)`: sources and sinks of a pipeline spec,
//! with end-to-end acknowledgements, metrics and health over HTTP, stall
//! detection, and a draining shutdown. The caller owns signals and the
//! terminal (the `mqlink` binary draws the live status from `on_tick`).
//!
//! Shutdown (the `shutdown` future, a failed component, `until_idle`):
//! 1. with the embedded broker, generated records stop first, and the run
//!    waits until every message the embedded broker accepted reached the
//!    pipeline's sources and was acknowledged — the broker's PUBACK to a
//!    publisher is a promise the pipeline keeps;
//! 2. sources stop taking messages, sinks drain and confirm what is in
//!    flight, the sources' acknowledgements go out, the clients disconnect —
//!    all within `run.shutdown_timeout`. The [`Report`] says what was not.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mqlink::broker::EmbeddedBroker;
use mqlink::source::MqttSource;
use mqlink::BrokerUrl;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::batch::BusyTime;
use crate::connectors::file::FileSink;
use crate::connectors::mqtt::sink::RelayTarget;
use crate::connectors::mqtt::{run_source, MqttSinkRuntime};
use crate::connectors::postgres::PostgresSink;
use crate::connectors::{generator, Outputs, SinkInput};
use crate::http;
use crate::relay::Relay;
use crate::sink::{self, write_backoff};
use crate::spec::{Pipeline, SinkKind, SourceConfig};
use crate::status::{Component, Kind, Registry, State};

/// Called with the components every `tick_every` (a live status).
pub type OnTick = Box<dyn FnMut(&Registry) + Send>;

/// How a run is driven, besides its spec.
pub struct RunOptions {
    /// Stop (draining) once every finite source is done and nothing moved
    /// for this long: for demos, tests and benchmarks.
    pub until_idle: Option<Duration>,
    /// Called every `tick_every` with the components (a live status).
    pub on_tick: Option<OnTick>,
    pub tick_every: Duration,
    /// Answers /query on `http.listen` (queries over the system tables);
    /// without it /query says SQL was not built in.
    pub query: Option<crate::status::QueryHandler>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            until_idle: None,
            on_tick: None,
            tick_every: Duration::from_secs(1),
            query: None,
        }
    }
}

/// Why a run could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("embedded_broker.listen: cannot listen on {listen}: {source}")]
    EmbeddedBroker {
        listen: String,
        source: std::io::Error,
    },
    #[error("http.listen: cannot listen on {listen}: {source}")]
    Http {
        listen: String,
        source: std::io::Error,
    },
}

/// Why a run stopped.
#[derive(Debug, Clone, PartialEq)]
pub enum Stop {
    /// The shutdown future completed (SIGINT/SIGTERM in the binary).
    Shutdown,
    SourcesDone,
    Idle,
    /// A component failed: `sources.NAME: why`.
    Failed(String),
}

/// What a run did, for the caller to print and turn into an exit code.
#[derive(Debug)]
pub struct Report {
    pub stop: Stop,
    pub elapsed: Duration,
    /// The components' final status lines.
    pub lines: Vec<String>,
    /// Records the sources acknowledged after every sink had them.
    pub acknowledged: u64,
    /// Seconds from the first record to the last acknowledgement.
    pub busy_seconds: Option<f64>,
    /// Records sinks skipped (record faults without a dead-letter topic):
    /// acknowledged, and not written.
    pub skipped: u64,
    /// Records sinks had not confirmed when the drain ended: not
    /// acknowledged, so delivered again by a persistent session.
    pub unconfirmed: u64,
    /// Messages the embedded broker had accepted and not delivered when it stopped.
    pub undelivered: usize,
    /// Messages left in the sources' local buffers: acknowledged to the
    /// broker, safe on disk, and read first on the next start.
    pub buffered: u64,
    pub shutdown_timeout: f64,
    /// A component that failed: `sinks.NAME: why`.
    pub failed: Option<String>,
}

impl Report {
    /// Everything handed to the pipeline was delivered or truthfully skipped.
    pub fn is_success(&self) -> bool {
        self.problem().is_none()
    }

    /// Why the run did not succeed, in one sentence.
    pub fn problem(&self) -> Option<String> {
        let mut parts = Vec::new();
        if let Some(f) = &self.failed {
            parts.push(f.clone());
        }
        if self.unconfirmed > 0 {
            parts.push(format!(
                "{} records were not confirmed within run.shutdown_timeout = {} s; they were not acknowledged and will be delivered again (persistent sessions)",
                self.unconfirmed, self.shutdown_timeout
            ));
        }
        if self.undelivered > 0 {
            parts.push(format!(
                "{} messages the embedded broker had accepted were not delivered before it stopped (run.shutdown_timeout = {} s)",
                self.undelivered, self.shutdown_timeout
            ));
        }
        (!parts.is_empty()).then(|| parts.join("; "))
    }
}

/// Runs the pipeline until `shutdown` completes, every finite source is
/// done, it is idle (`until_idle`), or a component fails.
pub async fn run(
    p: Pipeline,
    mut opts: RunOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<Report, RunError> {
    let started = Instant::now();
    let broker = if p.wants_embedded_broker() {
        let listen = p
            .embedded_broker
            .listen
            .clone()
            .unwrap_or_else(|| "127.0.0.1:0".into());
        // The pipeline's own subscribers are never cut off for being slow:
        // a stalled sink holds the publishers back (and is reported as
        // stalled) instead of a clean session's queue being dropped.
        let config = mqlink::broker::BrokerConfig {
            slow_subscriber_timeout: Duration::from_secs(10 * 365 * 86_400),
            ..Default::default()
        };
        let b = EmbeddedBroker::start_with(&listen, config)
            .await
            .map_err(|source| RunError::EmbeddedBroker { listen, source })?;
        tracing::info!(address = %b.local_addr(), "Embedded broker listening (for development: memory only).");
        Some(b)
    } else {
        None
    };
    let embedded: Option<BrokerUrl> = broker
        .as_ref()
        .and_then(|b| format!("mqtt://{}", b.local_addr()).parse().ok());

    // A component's session options (connection names were checked at load).
    let options_for = |connection: &str, component: &str| {
        p.connection(connection)
            .map(|c| p.options_for(c, connection, component, embedded.as_ref()))
            .unwrap_or_default()
    };

    // Generated records stop first (with the embedded broker, before the
    // MQTT sources: what the broker accepted must reach them).
    let (stop_gen_tx, stop_gen_rx) = watch::channel(false);
    let (stop_tx, stop_rx) = watch::channel(false);
    let busy = Arc::new(BusyTime::default());
    let mut components = Vec::new();
    let mut senders: HashMap<String, Vec<SinkInput>> = HashMap::new();
    let (failed_tx, mut failed_rx) = mpsc::unbounded_channel::<String>();
    let mut sink_tasks: Vec<JoinHandle<()>> = Vec::new();
    // Sinks that publish to the embedded broker: drained before it is.
    let mut into_embedded: Vec<Arc<Component>> = Vec::new();

    // Acknowledgements carried through the embedded broker: between MQTT 5
    // sinks and sources on it (the tag is a user property).
    let relayed = |connection: &str| {
        p.connection(connection)
            .is_some_and(|c| c.is_embedded() && c.options.protocol == mqlink::Protocol::V5)
    };
    // Sources that settle relayed messages: raw payloads only, which the
    // library never dead-letters out of their sight (a decoding source's
    // dead letters would never be settled).
    let consumes = |m: &crate::connectors::mqtt::MqttSourceConfig| {
        relayed(&m.connection) && matches!(m.decoder, mqlink::format::Decoder::RawBytes { .. })
    };
    let consumers: Vec<Vec<String>> = p
        .sources
        .iter()
        .filter_map(|(_, s)| match s {
            SourceConfig::Mqtt(m) if consumes(m) => Some(m.topics.to_vec()),
            _ => None,
        })
        .collect();
    let relay = (broker.is_some() && !consumers.is_empty()).then(|| Arc::new(Relay::default()));

    for (name, sink) in &p.sinks {
        let comp = Component::new(name, Kind::Sink, sink.kind.type_name());
        components.push(comp.clone());
        let (tx, rx) = mpsc::channel(16);
        for input in &sink.inputs {
            senders
                .entry(input.clone())
                .or_default()
                .push((tx.clone(), comp.clone()));
        }
        let path = format!("sinks.{name}");
        let task: JoinHandle<Result<(), String>> = match &sink.kind {
            SinkKind::Mqtt(m) => {
                let conn = p.connection(&m.connection);
                if conn.is_some_and(|c| c.is_embedded()) {
                    into_embedded.push(comp.clone());
                }
                let options = options_for(&m.connection, name);
                match MqttSinkRuntime::start(m, options, &comp) {
                    Ok(s) => tokio::spawn(sink::run(
                        match &relay {
                            Some(r) if relayed(&m.connection) => s.relaying(
                                RelayTarget {
                                    relay: r.clone(),
                                    consumers: consumers.clone(),
                                },
                                &m.topic,
                            ),
                            _ => s,
                        },
                        path.clone(),
                        comp.clone(),
                        write_backoff(),
                        rx,
                    )),
                    Err(e) => tokio::spawn(std::future::ready(Err(e))),
                }
            }
            SinkKind::File(f) => tokio::spawn(sink::run(
                FileSink::new(path.clone(), f.clone()),
                path.clone(),
                comp.clone(),
                write_backoff(),
                rx,
            )),
            SinkKind::Postgres(pg) => tokio::spawn(sink::run(
                PostgresSink::new(pg.clone()),
                path.clone(),
                comp.clone(),
                write_backoff(),
                rx,
            )),
        };
        let failed = failed_tx.clone();
        sink_tasks.push(tokio::spawn(async move {
            let r = task.await.unwrap_or_else(|e| Err(format!("panicked: {e}")));
            match r {
                Ok(()) => comp.set_state(State::Finished),
                Err(e) => {
                    tracing::error!(component = %path, error = %e, "Sink failed; its batches stay unacknowledged.");
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
        .map(|(name, s)| Component::new(name, Kind::Source, s.type_name()))
        .collect();
    let subscribers: Arc<Vec<Arc<Component>>> = Arc::new(
        sources
            .iter()
            .filter(|c| c.type_name == "mqtt")
            .cloned()
            .collect(),
    );
    let subscribers_of_embedded: Arc<Vec<Arc<Component>>> = Arc::new(
        p.sources
            .iter()
            .zip(&sources)
            .filter(|((_, s), _)| match s {
                SourceConfig::Mqtt(m) => {
                    p.connection(&m.connection).is_some_and(|c| c.is_embedded())
                }
                SourceConfig::Generator(_) => false,
            })
            .map(|(_, c)| c.clone())
            .collect(),
    );
    for ((name, source), comp) in p.sources.iter().zip(sources) {
        components.push(comp.clone());
        let done = done_tx.clone();
        let path = format!("sources.{name}");
        let mut out = Outputs::new(
            senders.remove(name).unwrap_or_default(),
            match source {
                SourceConfig::Generator(_) => stop_gen_rx.clone(),
                SourceConfig::Mqtt(_) => stop_rx.clone(),
            },
            busy.clone(),
            p.transforms.get(name).map(|t| t.make()),
        );
        if let SourceConfig::Mqtt(m) = source {
            if consumes(m) {
                out.relay = relay.clone();
            }
        }
        match source {
            SourceConfig::Mqtt(m) => {
                let options = options_for(&m.connection, name);
                let buffer = m.buffer_options(
                    &p.run.state_dir(),
                    options.client_id.as_deref().unwrap_or(name),
                    p.connection(&m.connection).is_some_and(|c| c.is_embedded()),
                );
                let m = m.clone();
                // A source on another broker starts taking messages only
                // once every source on the embedded broker has subscribed:
                // what it forwards into the embedded broker must find its
                // subscribers there (a broker drops a message nobody
                // subscribed to, after acknowledging it).
                let internal = subscribers_of_embedded.clone();
                let from_outside = !p.connection(&m.connection).is_some_and(|c| c.is_embedded());
                tokio::spawn(async move {
                    if from_outside {
                        while internal.iter().any(|c| c.state() == State::Starting)
                            && !out.stopping()
                        {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                    let _ = done.send(run_source(path, m, options, comp, out, buffer).await);
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
                    generator::run(g, 1000, comp, out).await;
                    let _ = done.send(None);
                });
            }
        }
    }
    drop(done_tx);
    let registry = Registry(Arc::new(components), broker.as_ref().map(|b| b.monitor()));

    if let Some(h) = &p.http {
        let listener = http::bind(&h.listen)
            .await
            .map_err(|source| RunError::Http {
                listen: h.listen.clone(),
                source,
            })?;
        tracing::info!(address = %h.listen, "Serving /metrics, /health, /ready, /status and /query.");
        tokio::spawn(http::serve(listener, registry.clone(), opts.query.take()));
    }

    let mut tick = tokio::time::interval(opts.tick_every);
    tick.tick().await;
    let mut control = tokio::time::interval(Duration::from_millis(100));
    let mut finished: Vec<Option<MqttSource>> = Vec::new();
    let mut idle = Idle::default();
    let mut stalls = Stalls::new(registry.0.len(), p.run.stall_timeout);
    tokio::pin!(shutdown);
    let stop = loop {
        tokio::select! {
            _ = &mut shutdown => break Stop::Shutdown,
            Some(s) = done_rx.recv() => {
                finished.push(s);
                if finished.len() == p.sources.len() {
                    break Stop::SourcesDone;
                }
            }
            Some(e) = failed_rx.recv() => break Stop::Failed(e),
            _ = tick.tick() => {
                if let Some(f) = opts.on_tick.as_mut() {
                    f(&registry);
                }
            }
            _ = control.tick() => {
                if let Some(c) = registry.0.iter().find(|c| c.state() == State::Failed) {
                    break Stop::Failed(format!("{}: {}", c.path(), c.last_error().unwrap_or_default()));
                }
                stalls.check(&registry);
                if let Some(secs) = opts.until_idle {
                    if idle.reached(&registry, secs) {
                        break Stop::Idle;
                    }
                }
            }
        }
    };
    let why = match &stop {
        Stop::Shutdown => "shutdown asked for".to_string(),
        Stop::SourcesDone => "every source is done".to_string(),
        Stop::Idle => "idle".to_string(),
        Stop::Failed(e) => format!("failed: {e}"),
    };
    tracing::info!(reason = %why, "Stopping: taking no new messages, draining what is in flight.");

    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(p.run.shutdown_timeout);
    let _ = stop_gen_tx.send(true);
    let mut undelivered = 0;
    if let Some(b) = &broker {
        // What the embedded broker accepted reaches the sources and is
        // acknowledged (so confirmed by every sink) before they stop.
        let failed = matches!(stop, Stop::Failed(_));
        while !failed && tokio::time::Instant::now() < deadline {
            // Generators first come to a stop (a batch may still be on its
            // way into a sink's channel), then what the sinks were handed
            // must be confirmed by the broker.
            let generating = registry
                .0
                .iter()
                .any(|c| c.type_name == "generator" && c.state() == State::Running);
            let publishing = into_embedded
                .iter()
                .any(|c| c.state() == State::Running && c.unconfirmed() > 0);
            if generating {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
            if !publishing && b.undelivered() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        undelivered = b.undelivered();
    }

    // Sources stop and drop their senders, so each sink's channel ends
    // once it took every batch; the sinks confirm and finish.
    let _ = stop_tx.send(true);
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

    let sinks = || registry.0.iter().filter(|c| c.kind == Kind::Sink);
    let mut unconfirmed: u64 = sinks()
        .filter(|c| c.state() != State::Failed)
        .map(|c| c.unconfirmed())
        .sum();
    if !drained && unconfirmed == 0 {
        // A sink still busy at the deadline holds at least its last job.
        unconfirmed = sinks().map(|c| c.unconfirmed()).sum::<u64>().max(1);
    }
    let failed = match &stop {
        Stop::Failed(e) => Some(e.clone()),
        // A source that could not start (refused credentials, say) ends
        // the pipeline too.
        _ => registry
            .0
            .iter()
            .find(|c| c.state() == State::Failed)
            .map(|c| format!("{}: {}", c.path(), c.last_error().unwrap_or_default())),
    };
    let elapsed = started.elapsed();
    let mut prev = Vec::new();
    Ok(Report {
        stop,
        elapsed,
        lines: registry.lines(&mut prev, elapsed.as_secs_f64()),
        acknowledged: registry
            .0
            .iter()
            .filter(|c| c.kind == Kind::Source)
            .map(|c| c.confirmed.load(Relaxed))
            .sum(),
        busy_seconds: busy.seconds(),
        // Sinks' record faults, and records a source's stage could not process.
        skipped: registry.0.iter().map(|c| c.skipped.load(Relaxed)).sum(),
        unconfirmed,
        undelivered,
        buffered: registry.0.iter().map(|c| c.buffered()).sum(),
        shutdown_timeout: p.run.shutdown_timeout,
        failed,
    })
}

/// `until_idle`: every finite source done, nothing moving, nothing pending.
#[derive(Default)]
struct Idle {
    last: u64,
    since: Option<Instant>,
}

impl Idle {
    fn reached(&mut self, r: &Registry, after: Duration) -> bool {
        let moved: u64 =
            r.0.iter()
                .map(|c| c.records.load(Relaxed) + c.confirmed.load(Relaxed))
                .sum();
        // A component still starting (a source not subscribed yet) is not idle.
        let settled = r.0.iter().all(|c| {
            (c.type_name != "generator" || c.state() == State::Finished)
                && c.state() != State::Starting
                && c.unconfirmed() == 0
        });
        if moved != self.last || !settled {
            self.last = moved;
            self.since = None;
            return false;
        }
        let since = *self.since.get_or_insert_with(Instant::now);
        since.elapsed() >= after
    }
}

/// Components that made no progress for `run.stall_timeout` while work
/// waits for them: named in a warning and in /ready until they move again.
struct Stalls {
    /// Per component: progress seen last, and since when it has not moved.
    seen: Vec<(u64, Instant)>,
    after: Duration,
}

impl Stalls {
    fn new(n: usize, after_secs: f64) -> Stalls {
        Stalls {
            seen: vec![(0, Instant::now()); n],
            after: Duration::from_secs_f64(after_secs),
        }
    }

    fn check(&mut self, r: &Registry) {
        for (c, (last, since)) in r.0.iter().zip(self.seen.iter_mut()) {
            let progress = c.confirmed.load(Relaxed) + c.skipped.load(Relaxed);
            let waiting = c.unconfirmed();
            if progress != *last || waiting == 0 || c.state() != State::Running {
                *last = progress;
                *since = Instant::now();
                if c.stalled().is_some() {
                    tracing::info!(component = %c.path(), "Moving again.");
                    c.set_stalled(None);
                }
                continue;
            }
            let idle = since.elapsed();
            if idle >= self.after {
                let why = match c.kind {
                    Kind::Source => format!(
                        "{waiting} messages unacknowledged and none acknowledged for {} s: the oldest holds back every one behind it (acknowledgements go in arrival order); a sink reading this source is not confirming",
                        idle.as_secs()
                    ),
                    Kind::Sink => format!(
                        "{waiting} records waiting and none confirmed for {} s{}",
                        idle.as_secs(),
                        c.last_error()
                            .map(|e| format!(" (last error: {e})"))
                            .unwrap_or_default()
                    ),
                };
                if c.stalled().is_none() {
                    tracing::warn!(component = %c.path(), "Stalled: {why}.");
                }
                c.set_stalled(Some(why));
            }
        }
    }
}
