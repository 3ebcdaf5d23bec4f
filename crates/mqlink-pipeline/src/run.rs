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
use mqlink::{BrokerUrl, ConnectOptions};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::batch::BusyTime;
use crate::connectors::{Closing, SinkInput, SinkStart, SourceConfig, SourceStart};
use crate::http;
use crate::relay::{Relay, RelayTarget};
use crate::sink::Outputs;
use crate::spec::Pipeline;
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
    let broker = embedded_broker(&p).await?;
    let mut w = Wiring::new(&p, broker.as_ref());
    w.start_sinks(&p);
    w.start_sources(&p);
    let registry = Registry(
        Arc::new(std::mem::take(&mut w.components)),
        broker.as_ref().map(|b| b.monitor()),
        p.instance.as_deref().map(Arc::from),
        Arc::new(crate::console::Topology::of(&p)),
    );
    serve_http(&p, &registry, opts.query.take()).await?;
    let stop = w.supervise(&p, &registry, &mut opts, shutdown).await;
    let drained = w.drain(&p, &registry, broker, &stop).await;
    Ok(report(&p, &registry, &w, stop, drained, started.elapsed()))
}

/// Starts the embedded broker when a connection asks for it.
async fn embedded_broker(p: &Pipeline) -> Result<Option<EmbeddedBroker>, RunError> {
    if !p.wants_embedded_broker() {
        return Ok(None);
    }
    let listen = p
        .embedded_broker
        .listen
        .clone()
        .unwrap_or_else(|| "127.0.0.1:0".into());
    // The pipeline's own subscribers are never cut off for being slow: a
    // stalled sink holds the publishers back (and is reported as stalled)
    // instead of a clean session's queue being dropped. Only they: an
    // outside subscriber that stops reading is dropped for, then
    // disconnected, as on Mosquitto, and never stalls the pipeline.
    let own: std::collections::HashSet<String> =
        p.client_ids().into_iter().map(|(_, id)| id).collect();
    let config = mqlink::broker::BrokerConfig {
        hold_publishers_for: mqlink::broker::HoldPublishers::Matching(Arc::new(move |id| {
            own.contains(id)
        })),
        slow_subscriber_timeout: Duration::from_secs(10 * 365 * 86_400),
        ..Default::default()
    };
    let b = EmbeddedBroker::start_with(&listen, config)
        .await
        .map_err(|source| RunError::EmbeddedBroker { listen, source })?;
    tracing::info!(address = %b.local_addr(), "Embedded broker listening (for development: memory only).");
    Ok(Some(b))
}

/// /metrics, /health, /ready, /status and /query on `http.listen`; the
/// address served is written to `<state dir>/http-address` for `mqlink query`.
async fn serve_http(
    p: &Pipeline,
    registry: &Registry,
    query: Option<crate::status::QueryHandler>,
) -> Result<(), RunError> {
    let Some(h) = p.http.as_ref().filter(|h| !h.listen.is_empty()) else {
        return Ok(());
    };
    let http_error = |source| RunError::Http {
        listen: h.listen.clone(),
        source,
    };
    let listener = match http::bind(&h.listen).await {
        Err(e) if h.fallback && e.kind() == std::io::ErrorKind::AddrInUse => {
            tracing::info!(address = %h.listen, "The default HTTP address is taken: serving on a free loopback port.");
            http::bind("127.0.0.1:0").await
        }
        r => r,
    }
    .map_err(http_error)?;
    let addr = listener.local_addr().map_err(http_error)?;
    let env = h.token_env.as_deref().unwrap_or(http::TOKEN_ENV);
    let token = std::env::var(env)
        .ok()
        .filter(|t| !t.trim().is_empty())
        .map(|t| http::Token::new(t.trim()));
    if token.is_none() && !addr.ip().is_loopback() {
        return Err(http_error(std::io::Error::other(format!(
            "{addr} is not a loopback address and {env} is not set: set {env} to a secret token (clients send `Authorization: Bearer <token>`; `mqlink query` reads MQLINK_HTTP_TOKEN), or listen on 127.0.0.1"
        ))));
    }
    let state = p.run.state_dir();
    if std::fs::create_dir_all(&state)
        .and_then(|_| std::fs::write(state.join("http-address"), format!("{addr}\n")))
        .is_err()
    {
        tracing::warn!(dir = %state.display(), "Cannot write http-address in the state directory: `mqlink query` finds this pipeline only with --url.");
    }
    tracing::info!(address = %addr, token = token.is_some(), "Serving /metrics, /health, /ready, /status, /query and the console at /.");
    tokio::spawn(http::serve(listener, registry.clone(), query, token));
    Ok(())
}

/// What the phases of a run share: the components, the channels between
/// them, and how they are told to stop.
struct Wiring {
    components: Vec<Arc<Component>>,
    /// Each source's sinks' channels, by source name.
    senders: HashMap<String, Vec<SinkInput>>,
    sink_tasks: Vec<JoinHandle<()>>,
    failed_tx: mpsc::UnboundedSender<String>,
    failed_rx: mpsc::UnboundedReceiver<String>,
    /// Finished sources, to close once their sinks drained (the sender is
    /// dropped once every source has its clone: the channel then ends
    /// when the last source task does, even one that panicked).
    done_tx: Option<mpsc::UnboundedSender<Option<Closing>>>,
    done_rx: mpsc::UnboundedReceiver<Option<Closing>>,
    finished: Vec<Option<Closing>>,
    /// Generated records stop first (with the embedded broker, before the
    /// sources on it: what the broker accepted must reach them).
    stop_generated: watch::Sender<bool>,
    stop: watch::Sender<bool>,
    busy: Arc<BusyTime>,
    /// Sinks publishing into the embedded broker: drained before it is.
    into_embedded: Vec<Arc<Component>>,
    /// Sources whose records are made here.
    generated: Vec<Arc<Component>>,
    /// Acknowledgements carried through the embedded broker (MQTT 5), and
    /// the filters of the sources there that settle them.
    relay: Option<Arc<Relay>>,
    consumers: Vec<Vec<String>>,
    embedded: Option<BrokerUrl>,
}

impl Wiring {
    fn new(p: &Pipeline, broker: Option<&EmbeddedBroker>) -> Wiring {
        let consumers: Vec<Vec<String>> = p
            .sources
            .iter()
            .filter(|(_, s)| s.connection().is_some_and(|(c, _)| relayed(p, c)))
            .filter_map(|(_, s)| s.settles_relayed())
            .collect();
        let relay = (broker.is_some() && !consumers.is_empty()).then(|| Arc::new(Relay::default()));
        let (failed_tx, failed_rx) = mpsc::unbounded_channel();
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        Wiring {
            components: Vec::new(),
            senders: HashMap::new(),
            sink_tasks: Vec::new(),
            failed_tx,
            failed_rx,
            done_tx: Some(done_tx),
            done_rx,
            finished: Vec::new(),
            stop_generated: watch::Sender::new(false),
            stop: watch::Sender::new(false),
            busy: Arc::new(BusyTime::default()),
            into_embedded: Vec::new(),
            generated: Vec::new(),
            relay,
            consumers,
            embedded: broker.and_then(|b| format!("mqtt://{}", b.local_addr()).parse().ok()),
        }
    }

    /// A component's session options, when it has a connection (its name
    /// was checked at load).
    fn options(
        &self,
        p: &Pipeline,
        connection: Option<&str>,
        component: &str,
    ) -> Option<ConnectOptions> {
        let name = connection?;
        let c = p.connection(name)?;
        Some(p.options_for(c, name, component, self.embedded.as_ref()))
    }

    /// Every sink's runner on its channel; a failed one ends the run.
    fn start_sinks(&mut self, p: &Pipeline) {
        for (name, sink) in &p.sinks {
            let comp = Component::new(name, Kind::Sink, sink.kind.connector().name);
            self.components.push(comp.clone());
            let (tx, rx) = mpsc::channel(16);
            for input in &sink.inputs {
                let senders = self.senders.entry(input.clone()).or_default();
                senders.push((tx.clone(), comp.clone()));
            }
            let connection = sink.kind.connection().map(|(c, _)| c);
            if connection.is_some_and(|c| p.connection(c).is_some_and(|c| c.is_embedded())) {
                self.into_embedded.push(comp.clone());
            }
            let relay = match (&self.relay, connection) {
                (Some(r), Some(c)) if relayed(p, c) => Some(RelayTarget {
                    relay: r.clone(),
                    consumers: self.consumers.clone(),
                }),
                _ => None,
            };
            let path = format!("sinks.{name}");
            let task = sink.kind.spawn(SinkStart {
                path: path.clone(),
                comp: comp.clone(),
                rx,
                options: self.options(p, connection, name),
                relay,
            });
            self.sink_tasks.push(tokio::spawn(watch_sink(
                task,
                path,
                comp,
                self.failed_tx.clone(),
            )));
        }
    }

    /// Every source on its sinks' channels, through its stage. A source on
    /// another broker starts taking messages once every source on the
    /// embedded broker subscribed (what it forwards there must find its
    /// subscribers: a broker drops a message nobody subscribed to, after
    /// acknowledging it); generated records once every subscriber did (a
    /// clean session subscribing late would miss the first ones).
    fn start_sources(&mut self, p: &Pipeline) {
        // Dropped at the end: each source task holds its own clone.
        let Some(done_tx) = self.done_tx.take() else {
            return;
        };
        let embedded = |s: &SourceConfig| {
            s.connection()
                .is_some_and(|(c, _)| p.connection(c).is_some_and(|c| c.is_embedded()))
        };
        let comps: Vec<Arc<Component>> = p
            .sources
            .iter()
            .map(|(name, s)| Component::new(name, Kind::Source, s.connector().name))
            .collect();
        let on = |f: &dyn Fn(&SourceConfig) -> bool| -> Arc<Vec<Arc<Component>>> {
            let on = p.sources.iter().zip(&comps).filter(|((_, s), _)| f(s));
            Arc::new(on.map(|(_, c)| c.clone()).collect())
        };
        let subscribers = on(&|s| s.connection().is_some());
        let subscribers_of_embedded = on(&|s| embedded(s));
        for ((name, source), comp) in p.sources.iter().zip(comps) {
            self.components.push(comp.clone());
            let out = self.outputs(p, name, source);
            let first = if source.generated() {
                self.generated.push(comp.clone());
                subscribers.clone()
            } else if source.connection().is_some() && !embedded(source) {
                subscribers_of_embedded.clone()
            } else {
                Arc::default()
            };
            let start = SourceStart {
                path: format!("sources.{name}"),
                name: name.clone(),
                comp,
                out,
                options: self.options(p, source.connection().map(|(c, _)| c), name),
                embedded: embedded(source),
                state_dir: p.run.state_dir(),
                wants_buffer: p
                    .sinks
                    .iter()
                    .any(|(_, s)| s.inputs.contains(name) && s.kind.wants_local_buffer()),
            };
            let (source, done) = (source.clone(), done_tx.clone());
            let mut stop = self.stop.subscribe();
            tokio::spawn(async move {
                tokio::select! {
                    _ = all_started(&first) => {}
                    _ = stop.wait_for(|s| *s) => {}
                }
                let _ = done.send(source.run(start).await);
            });
        }
    }

    /// Where a source's batches go: its stage (a Cybus mapping's rules, a
    /// SQL query), then its sinks' channels.
    fn outputs(&mut self, p: &Pipeline, name: &str, source: &SourceConfig) -> Outputs {
        let stop = match source.generated() {
            true => &self.stop_generated,
            false => &self.stop,
        };
        let mut out = Outputs::new(
            self.senders.remove(name).unwrap_or_default(),
            stop.subscribe(),
            self.busy.clone(),
            p.transforms.get(name).map(|t| t.make()),
        );
        let settles = source.settles_relayed().is_some()
            && source.connection().is_some_and(|(c, _)| relayed(p, c));
        if settles {
            out.relay = self.relay.clone();
        }
        out
    }
}

/// Acknowledgements are relayed through the embedded broker between MQTT 5
/// sinks and sources on it (the tag is a user property).
fn relayed(p: &Pipeline, connection: &str) -> bool {
    p.connection(connection)
        .is_some_and(|c| c.is_embedded() && c.options.protocol == mqlink::Protocol::V5)
}

/// Waits until none of `comps` is still starting.
async fn all_started(comps: &[Arc<Component>]) {
    for c in comps {
        c.until(|s| *s != State::Starting).await;
    }
}

/// A sink's end: finished, or failed (which ends the run).
async fn watch_sink(
    task: JoinHandle<Result<(), String>>,
    path: String,
    comp: Arc<Component>,
    failed: mpsc::UnboundedSender<String>,
) {
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
}

impl Wiring {
    /// Until shutdown, every source done, idle, or a failure: the live
    /// status, stall detection and the idle check meanwhile.
    async fn supervise(
        &mut self,
        p: &Pipeline,
        registry: &Registry,
        opts: &mut RunOptions,
        shutdown: impl Future<Output = ()>,
    ) -> Stop {
        let mut tick = tokio::time::interval(opts.tick_every);
        tick.tick().await;
        let mut control = tokio::time::interval(Duration::from_millis(100));
        let mut idle = Idle::default();
        let mut stalls = Stalls::new(registry.0.len(), p.run.stall_timeout);
        tokio::pin!(shutdown);
        let stop = loop {
            tokio::select! {
                _ = &mut shutdown => break Stop::Shutdown,
                Some(s) = self.done_rx.recv() => {
                    self.finished.push(s);
                    if self.finished.len() == p.sources.len() {
                        break Stop::SourcesDone;
                    }
                }
                Some(e) = self.failed_rx.recv() => break Stop::Failed(e),
                _ = tick.tick() => {
                    if let Some(f) = opts.on_tick.as_mut() {
                        f(registry);
                    }
                }
                _ = control.tick() => {
                    if let Some(c) = registry.0.iter().find(|c| c.state() == State::Failed) {
                        break Stop::Failed(format!("{}: {}", c.path(), c.last_error().unwrap_or_default()));
                    }
                    stalls.check(registry);
                    if let Some(secs) = opts.until_idle {
                        if idle.reached(registry, &self.generated, secs) {
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
        stop
    }

    /// Generated records stop; what the embedded broker accepted reaches
    /// the sources; the sources stop, the sinks confirm, the sessions
    /// close — within `run.shutdown_timeout`. Returns whether every sink
    /// drained, and the embedded broker's undelivered messages.
    async fn drain(
        &mut self,
        p: &Pipeline,
        registry: &Registry,
        broker: Option<EmbeddedBroker>,
        stop: &Stop,
    ) -> (bool, usize) {
        let deadline =
            tokio::time::Instant::now() + Duration::from_secs_f64(p.run.shutdown_timeout);
        self.stop_generated.send_replace(true);
        let mut undelivered = 0;
        if let Some(b) = &broker {
            if !matches!(stop, Stop::Failed(_)) {
                let _ = tokio::time::timeout_at(deadline, self.settle_embedded(b)).await;
            }
            undelivered = b.undelivered();
        }
        // Sources stop and drop their senders, so each sink's channel ends
        // once it took every batch; the sinks confirm and finish.
        self.stop.send_replace(true);
        while self.finished.len() < p.sources.len() {
            match tokio::time::timeout_at(deadline, self.done_rx.recv()).await {
                Ok(Some(s)) => self.finished.push(s),
                _ => break,
            }
        }
        let mut drained = true;
        for t in std::mem::take(&mut self.sink_tasks) {
            if tokio::time::timeout_at(deadline, t).await.is_err() {
                drained = false;
            }
        }
        // Acknowledgements given so far are written before DISCONNECT.
        for close in std::mem::take(&mut self.finished).into_iter().flatten() {
            close.await;
        }
        for c in registry.0.iter().filter(|c| c.state() == State::Running) {
            c.set_state(State::Finished);
        }
        drop(broker);
        (drained, undelivered)
    }

    /// Generated records come to a stop (a batch may still be on its way
    /// into a sink's channel), then what the sinks publishing into the
    /// embedded broker were handed is confirmed and delivered to the
    /// sources there — the broker's PUBACK to a publisher is a promise the
    /// pipeline keeps.
    async fn settle_embedded(&self, b: &EmbeddedBroker) {
        for c in &self.generated {
            c.until(|s| *s != State::Running).await;
        }
        // Counters, not states: nothing announces their change.
        loop {
            let publishing = self
                .into_embedded
                .iter()
                .any(|c| c.state() == State::Running && c.unconfirmed() > 0);
            if !publishing && b.undelivered() == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// What the run did, from the components' final counters.
fn report(
    p: &Pipeline,
    registry: &Registry,
    w: &Wiring,
    stop: Stop,
    (drained, undelivered): (bool, usize),
    elapsed: Duration,
) -> Report {
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
    let mut prev = Vec::new();
    Report {
        stop,
        elapsed,
        lines: registry.lines(&mut prev, elapsed.as_secs_f64()),
        acknowledged: registry
            .0
            .iter()
            .filter(|c| c.kind == Kind::Source)
            .map(|c| c.confirmed.load(Relaxed))
            .sum(),
        busy_seconds: w.busy.seconds(),
        // Sinks' record faults, and records a source's stage could not process.
        skipped: registry.0.iter().map(|c| c.skipped.load(Relaxed)).sum(),
        unconfirmed,
        undelivered,
        buffered: registry.0.iter().map(|c| c.buffered()).sum(),
        shutdown_timeout: p.run.shutdown_timeout,
        failed,
    }
}

/// `until_idle`: every finite source done, nothing moving, nothing pending.
#[derive(Default)]
struct Idle {
    last: u64,
    since: Option<Instant>,
}

impl Idle {
    fn reached(&mut self, r: &Registry, generated: &[Arc<Component>], after: Duration) -> bool {
        let moved: u64 =
            r.0.iter()
                .map(|c| c.records.load(Relaxed) + c.confirmed.load(Relaxed))
                .sum();
        // A component still starting (a source not subscribed yet) is not idle.
        let settled = generated.iter().all(|c| c.state() == State::Finished)
            && r.0
                .iter()
                .all(|c| c.state() != State::Starting && c.unconfirmed() == 0);
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
