//! The source's durable local buffer: each session's driver appends the
//! deliveries of each read to the segment log (`crate::seglog`) and
//! acknowledges them to the broker once the `write()` returned (and its
//! `fdatasync`, with `fsync`), in its own task (a [`Journal`]); a reader
//! feeds the application from the log at its own pace, and the log's
//! confirmed position advances as the application acknowledges records.
//!
//! ```text
//! socket ─► driver (per client): decode a read ─► append batch ─► PUBACKs (arrival order)
//!                                                    │ written seq (watch)
//!                          reader: log ─► decode ─► Record { ack: log seq } ─► application
//! application acks ─► confirmed prefix ─► checkpoint (every 100 ms): `confirmed`, segments deleted
//! ```
//!
//! No task hop lies between reading a message and acknowledging it: on
//! MQTT 3.1.1 the broker's window (Mosquitto: 20) turns over as fast as
//! the driver reads and writes, as it does for `mosquitto_sub`.
//!
//! The guarantee is "acknowledged once in the local log": a SIGKILL loses
//! nothing the broker was told about (the kernel has the bytes), a power
//! loss only with `fsync = true`. Entries after the confirmed position are
//! read again after a restart, before new ones: a crash may duplicate
//! records, never lose them. When the log holds `max_bytes`, the drivers
//! stop appending and acknowledging (and reading, once a QoS 0 message is
//! next), so the broker's window fills and the broker holds the rest
//! (back-pressure; nothing is dropped by mqlink).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;

use super::{Ack, Record, Worker};
use crate::seglog::{now_ms, Confirming, Entry, Log};
use crate::session::{Delivery, Journal};
use crate::types::Protocol;

/// When the buffer is used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BufferWhen {
    /// On every connection.
    Always,
    /// On MQTT 3.1.1 connections, where the broker's window is its own
    /// (Mosquitto: 20) and what does not fit is queued and then dropped
    /// by the broker; and whenever the log still holds entries.
    V311,
}

/// Where and how the local buffer keeps messages ([`super::SourceBuilder::buffer`]).
#[derive(Clone, Debug)]
pub struct BufferOptions {
    /// The log's directory (one per source: it is locked while in use).
    pub dir: PathBuf,
    /// The log's size at most; when it is reached the source stops
    /// acknowledging until the application confirmed older records
    /// [default: 1 GiB].
    pub max_bytes: u64,
    /// `fdatasync` each appended batch before acknowledging it (survives
    /// power loss; slower) [default: false: a `write()`, which survives a
    /// crash of the process, and `fdatasync` every 100 ms, off the acknowledging path].
    pub fsync: bool,
    /// When the buffer is used [default: [`BufferWhen::V311`]].
    pub when: BufferWhen,
}

impl BufferOptions {
    /// The default limit of [`max_bytes`](Self::max_bytes).
    pub const DEFAULT_MAX_BYTES: u64 = 1 << 30;

    /// The defaults, in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        BufferOptions {
            dir: dir.into(),
            max_bytes: Self::DEFAULT_MAX_BYTES,
            fsync: false,
            when: BufferWhen::V311,
        }
    }
}

/// Buffer metric names, as exported by `mqlink run` (Prometheus).
pub const BUFFER_METRIC_NAMES: [&str; 7] = [
    "mqlink_source_buffer_bytes",
    "mqlink_source_buffer_entries",
    "mqlink_source_buffer_oldest_entry_age_seconds",
    "mqlink_source_buffer_write_rate",
    "mqlink_source_buffer_full",
    "mqlink_source_buffer_max_bytes",
    "mqlink_source_buffer_resent_total",
];

/// The buffer's gauges (see [`BUFFER_METRIC_NAMES`]).
#[derive(Debug, Default)]
pub struct BufferMetrics {
    bytes: AtomicU64,
    entries: AtomicU64,
    oldest_ms: AtomicU64,
    /// Entries written per second over the last second.
    rate: AtomicU64,
    full: AtomicU64,
    max_bytes: AtomicU64,
    written: AtomicU64,
    /// Messages the broker sent again that the log already held.
    resent: AtomicU64,
}

impl BufferMetrics {
    /// Every metric with its name, in [`BUFFER_METRIC_NAMES`] order.
    pub fn snapshot(&self) -> [(&'static str, u64); 7] {
        let oldest = self.oldest_ms.load(Relaxed);
        let age = match oldest {
            0 => 0,
            t => now_ms().saturating_sub(t) / 1000,
        };
        let v = [
            self.bytes.load(Relaxed),
            self.entries.load(Relaxed),
            age,
            self.rate.load(Relaxed),
            self.full.load(Relaxed),
            self.max_bytes.load(Relaxed),
            self.resent.load(Relaxed),
        ];
        std::array::from_fn(|i| (BUFFER_METRIC_NAMES[i], v[i]))
    }

    /// Whether the buffer is at `max_bytes` (the source is not acknowledging).
    pub fn is_full(&self) -> bool {
        self.full.load(Relaxed) != 0
    }

    /// Entries written and not yet confirmed by the application.
    pub fn entries(&self) -> u64 {
        self.entries.load(Relaxed)
    }
}

/// The log and the times of its entries.
struct State {
    log: Log,
    /// (sequence, arrival ms) at most every 100 ms of arrivals: the oldest
    /// unconfirmed entry's age without a time per entry in memory.
    marks: VecDeque<(u64, u64)>,
}

/// The confirmed prefix of the application's acknowledgements.
#[derive(Default)]
struct Acked {
    done: u64,
    ahead: BTreeSet<u64>,
}

pub(crate) struct Shared {
    /// The log's identity (`seglog::log_id`).
    log_id: u64,
    state: Mutex<State>,
    acked: Mutex<Acked>,
    /// The sequence after the last written entry, for the reader.
    written: watch::Sender<u64>,
    room: Notify,
    opts: BufferOptions,
    metrics: Arc<BufferMetrics>,
    failed: Mutex<Option<String>>,
    writers: AtomicUsize,
    /// Held while a checkpoint writes its files (one at a time, in order).
    checkpointing: Mutex<()>,
}

/// The acknowledgement of a record read from the buffer: confirms its entry.
pub(crate) struct LogAck {
    seq: u64,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for LogAck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LogAck({})", self.seq)
    }
}

/// Where a record read from the local buffer is in its log: the same
/// position after a restart that reads it again, never another record's.
/// A sink that keeps the last position it wrote beside its output skips
/// what a crash makes the buffer read again (the file sink does).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LogPosition {
    /// The log's identity: random, new for each new log.
    pub log: u64,
    /// The entry's sequence in it (increasing in the order records are read).
    pub seq: u64,
}

impl LogAck {
    pub(crate) fn position(&self) -> LogPosition {
        LogPosition {
            log: self.shared.log_id,
            seq: self.seq,
        }
    }

    pub(crate) fn ack(self) {
        let mut a = self.shared.acked.lock().expect("ack lock");
        if self.seq == a.done {
            a.done += 1;
            while a.ahead.first() == Some(&a.done) {
                a.ahead.pop_first();
                a.done += 1;
            }
        } else if self.seq > a.done {
            a.ahead.insert(self.seq);
        }
    }
}

/// An opened buffer, before its tasks start.
pub(crate) struct Opened {
    shared: Arc<Shared>,
    /// The sequence after the last entry of earlier runs: entries before
    /// it are read again (marked redelivered).
    replayed: u64,
    /// Whether MQTT 5 connections journal too: always, or while the log
    /// holds an earlier run's entries (read before anything new).
    on_v5: bool,
    /// Per client, what the last run appended last under each packet id
    /// (see [`Resent`]).
    appended: HashMap<u16, HashMap<u16, u64>>,
}

impl Opened {
    /// Opens the log (scanning it off the runtime's threads).
    pub(crate) async fn open(opts: BufferOptions) -> io::Result<Opened> {
        let (dir, max) = (opts.dir.clone(), opts.max_bytes);
        let (log, appended) = tokio::task::spawn_blocking(move || {
            let mut log = Log::open(&dir, max)?;
            // The checkpoints sync; an append on the way to a PUBACK does not wait.
            log.sync_elsewhere();
            let appended = last_appended(&log)?;
            io::Result::Ok((log, appended))
        })
        .await
        .map_err(io::Error::other)??;
        let confirmed = log.confirmed();
        let metrics = Arc::new(BufferMetrics::default());
        metrics.max_bytes.store(opts.max_bytes, Relaxed);
        let (written, _) = watch::channel(log.next_seq());
        let marks = VecDeque::from([(confirmed, now_ms())]);
        if log.entries() > 0 {
            tracing::info!(dir = %opts.dir.display(), entries = log.entries(), bytes = log.bytes(), torn_tails_cut = log.cut(), "Local buffer: entries left by the last run are read first.");
        }
        let shared = Arc::new(Shared {
            log_id: log.id(),
            state: Mutex::new(State { log, marks }),
            acked: Mutex::new(Acked {
                done: confirmed,
                ahead: BTreeSet::new(),
            }),
            written,
            room: Notify::new(),
            opts,
            metrics,
            failed: Mutex::new(None),
            writers: AtomicUsize::new(0),
            checkpointing: Mutex::new(()),
        });
        shared.checkpoint()?;
        let st = shared.state.lock().expect("log lock");
        let (replayed, had) = (st.log.next_seq(), st.log.entries() > 0);
        drop(st);
        let on_v5 = had || shared.opts.when == BufferWhen::Always;
        Ok(Opened {
            shared,
            replayed,
            on_v5,
            appended,
        })
    }

    /// The journal of the source's session `client` (its entries name it).
    pub(crate) fn journal(&self, client: u16) -> Arc<dyn Journal> {
        self.shared.writers.fetch_add(1, Relaxed);
        let previous = self.appended.get(&client).cloned().unwrap_or_default();
        Arc::new(SessionJournal {
            shared: self.shared.clone(),
            client,
            on_v5: self.on_v5,
            resent: Mutex::new(Resent {
                current: HashMap::new(),
                previous,
            }),
        })
    }

    /// Whether a session speaking `protocol` appends to the log.
    pub(crate) fn on(&self, protocol: Protocol) -> bool {
        self.on_v5 || protocol == Protocol::V311
    }

    pub(crate) fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// Starts the reader and the checkpoints; the records go to `tx`.
    pub(crate) fn start(
        self,
        workers: Vec<Arc<Worker>>,
        tx: mpsc::Sender<Record>,
    ) -> Vec<JoinHandle<()>> {
        let shared = self.shared;
        let start = shared.state.lock().expect("log lock").log.confirmed();
        vec![
            tokio::spawn(read_loop(shared.clone(), workers, tx, start, self.replayed)),
            tokio::spawn(checkpoints(shared)),
        ]
    }
}

/// One session's side of the buffer: its driver appends and acknowledges.
struct SessionJournal {
    shared: Arc<Shared>,
    client: u16,
    on_v5: bool,
    resent: Mutex<Resent>,
}

/// The broker sending again what the log already holds. A message is
/// appended, then acknowledged; when the connection ends between the two
/// (a crash, or a cut connection dropping the PUBACKs still in the socket
/// — a SIGKILL with unread input resets the connection), the broker sends
/// it again with DUP and its packet id on the next connection (MQTT §4.4).
/// Such a message, matching (packet id, topic, payload) what the previous
/// connection appended last under that packet id, is acknowledged and not
/// appended twice. Recognised until the first message without DUP (the
/// broker resends before anything new).
///
/// What this cannot tell apart, as for a stage's redeliveries
/// (`mqlink-pipeline`'s `redelivery.rs`): a broker that reuses the packet
/// id for a new message with the same topic and payload, sent but not
/// appended before the connection ended. Brokers that number packets in
/// sequence (Mosquitto, EMQX, RabbitMQ, mqlink's) reach an id again only
/// 65,535 messages later.
#[derive(Debug, Default)]
struct Resent {
    /// Appended on this connection: packet id → topic and payload hash.
    current: HashMap<u16, u64>,
    /// What the previous connection appended, that DUP messages may repeat.
    previous: HashMap<u16, u64>,
}

impl Resent {
    /// A new connection: what the last one appended may come again.
    fn connected(&mut self) {
        let current = std::mem::take(&mut self.current);
        self.previous.extend(current);
    }

    /// False for the broker's resend of what the log holds.
    fn admit(&mut self, d: &Delivery) -> bool {
        if d.qos == crate::QoS::AtMostOnce {
            return true;
        }
        let id = identity(&d.topic, &d.payload);
        if !d.dup {
            self.previous.clear();
        } else if self.previous.get(&d.packet_id) == Some(&id) {
            self.previous.remove(&d.packet_id);
            self.current.insert(d.packet_id, id);
            return false;
        }
        self.current.insert(d.packet_id, id);
        true
    }
}

fn identity(topic: &str, payload: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    topic.hash(&mut h);
    payload.hash(&mut h);
    h.finish()
}

impl Journal for SessionJournal {
    fn on(&self, protocol: Protocol) -> bool {
        self.resent.lock().expect("resent lock").connected();
        self.on_v5 || protocol == Protocol::V311
    }

    fn append(&self, batch: &[Delivery]) -> io::Result<()> {
        if self.shared.failed() {
            return Err(io::Error::other("the local buffer failed earlier"));
        }
        let mut resent = self.resent.lock().expect("resent lock");
        let entries: Vec<Entry> = batch
            .iter()
            .filter(|d| resent.admit(d))
            .map(|d| entry(d, self.client))
            .collect();
        drop(resent);
        if entries.len() < batch.len() {
            let again = (batch.len() - entries.len()) as u64;
            self.shared.metrics.resent.fetch_add(again, Relaxed);
        }
        if entries.is_empty() {
            return Ok(());
        }
        self.shared.append(&entries)
    }

    fn is_full(&self) -> bool {
        let full = self.shared.is_full();
        let m = &self.shared.metrics;
        if !full && m.full.load(Relaxed) != 0 {
            m.full.store(0, Relaxed);
        } else if full && m.full.swap(1, Relaxed) == 0 {
            tracing::warn!(dir = %self.shared.opts.dir.display(), max_bytes = self.shared.opts.max_bytes, "Local buffer full: the source stops acknowledging until the sinks catch up (the broker holds the rest).");
        }
        full
    }

    fn room(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        Box::pin(self.shared.room())
    }

    fn fail(&self, error: &io::Error) {
        self.shared.fail(error);
    }
}

impl Drop for SessionJournal {
    fn drop(&mut self) {
        if self.shared.writers.fetch_sub(1, Relaxed) == 1 {
            // The last session ended: the reader ends once it has read all.
            self.shared.written.send_modify(|_| {});
        }
    }
}

impl Shared {
    pub(crate) fn metrics(&self) -> &Arc<BufferMetrics> {
        &self.metrics
    }

    fn fail(&self, e: impl std::fmt::Display) {
        tracing::error!(dir = %self.opts.dir.display(), error = %e, "Local buffer failed; the source stops (nothing more is acknowledged).");
        *self.failed.lock().expect("fail lock") = Some(e.to_string());
        self.written.send_modify(|_| {});
        self.room.notify_waiters();
    }

    fn failed(&self) -> bool {
        self.failed.lock().expect("fail lock").is_some()
    }

    fn is_full(&self) -> bool {
        self.state.lock().expect("log lock").log.bytes() >= self.opts.max_bytes
    }

    /// Waits until the log is below `max_bytes` (or has failed: the
    /// driver then learns it from its next append).
    async fn room(&self) {
        loop {
            let notified = self.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !self.is_full() || self.failed() {
                return;
            }
            notified.await;
        }
    }

    /// Appends one batch; the reader may read it once this returns.
    fn append(&self, entries: &[Entry]) -> io::Result<()> {
        let mut st = self.state.lock().expect("log lock");
        let first = st.log.append(entries, self.opts.fsync)?;
        let at = entries.first().map_or(0, |e| e.at_ms);
        if st.marks.back().is_none_or(|m| at >= m.1 + 100) {
            st.marks.push_back((first, at));
        }
        self.written.send_replace(st.log.next_seq());
        self.metrics.bytes.store(st.log.bytes(), Relaxed);
        self.metrics
            .written
            .fetch_add(entries.len() as u64, Relaxed);
        Ok(())
    }

    /// Writes the confirmed prefix, deletes confirmed segments, syncs the
    /// segment being written, refreshes the gauges and wakes drivers
    /// waiting for room. The files are written without holding the log:
    /// the drivers append (and acknowledge) meanwhile.
    fn checkpoint(&self) -> io::Result<()> {
        let _one = self.checkpointing.lock().expect("checkpoint lock");
        let done = self.acked.lock().expect("ack lock").done;
        let (confirming, sync) = self.confirm(done);
        confirming.write()?;
        if let Some(f) = sync {
            f?.sync_data()?;
        }
        Ok(())
    }

    fn confirm(&self, done: u64) -> (Confirming, Option<io::Result<std::fs::File>>) {
        let mut st = self.state.lock().expect("log lock");
        let confirming = st.log.confirm_later(done);
        while st.marks.len() > 1 && st.marks[1].0 <= done {
            st.marks.pop_front();
        }
        let entries = st.log.next_seq().saturating_sub(done);
        let oldest = match (entries, st.marks.front()) {
            (0, _) | (_, None) => 0,
            (_, Some(m)) => m.1,
        };
        self.metrics.entries.store(entries, Relaxed);
        self.metrics.oldest_ms.store(oldest, Relaxed);
        self.metrics.bytes.store(st.log.bytes(), Relaxed);
        if st.log.bytes() < self.opts.max_bytes {
            self.room.notify_waiters();
        }
        (confirming, st.log.sync_handle())
    }
}

/// The packet ids of the log's last entries (at most 65,535: one per id),
/// per client: what the broker may send again ([`Resent`]). Entries of
/// deleted (all confirmed) segments are not read.
fn last_appended(log: &Log) -> io::Result<HashMap<u16, HashMap<u16, u64>>> {
    let end = log.next_seq();
    let from = end.saturating_sub(u16::MAX as u64).max(log.first_seq());
    let mut reader = log.reader(from);
    let mut appended: HashMap<u16, HashMap<u16, u64>> = HashMap::new();
    while let Some((_, e)) = reader.next(end)? {
        if e.publish.qos != crate::QoS::AtMostOnce {
            let id = identity(&e.publish.topic, &e.publish.payload);
            appended
                .entry(e.client)
                .or_default()
                .insert(e.publish.pkid, id);
        }
    }
    Ok(appended)
}

fn entry(d: &Delivery, client: u16) -> Entry {
    Entry {
        at_ms: d
            .received_at
            .duration_since(UNIX_EPOCH)
            .map_or(0, |t| t.as_millis() as u64),
        client,
        publish: crate::codec::Publish {
            topic: d.topic.clone(),
            payload: d.payload.clone(),
            qos: d.qos,
            retain: d.retain,
            dup: d.dup,
            pkid: d.packet_id,
            properties: d.properties.clone(),
        },
    }
}

/// Feeds the application from the log, entry by entry.
async fn read_loop(
    shared: Arc<Shared>,
    workers: Vec<Arc<Worker>>,
    tx: mpsc::Sender<Record>,
    start: u64,
    replayed: u64,
) {
    let mut written = shared.written.subscribe();
    let mut reader = Some(shared.state.lock().expect("log lock").log.reader(start));
    while !shared.failed() {
        let limit = *written.borrow_and_update();
        let mut r = reader.take().expect("the reader is back");
        if r.seq() >= limit {
            reader = Some(r);
            if shared.writers.load(Relaxed) == 0 || written.changed().await.is_err() {
                return;
            }
            continue;
        }
        let read = tokio::task::spawn_blocking(move || {
            let (mut got, mut bytes) = (Vec::new(), 0);
            while got.len() < 256 && bytes < 1 << 20 {
                match r.next(limit) {
                    Ok(Some(e)) => {
                        bytes += e.1.publish.payload.len();
                        got.push(e);
                    }
                    Ok(None) => break,
                    Err(e) => return (r, Err(e)),
                }
            }
            (r, Ok(got))
        })
        .await;
        let got = match read {
            Ok((r, Ok(got))) => {
                reader = Some(r);
                got
            }
            Ok((_, Err(e))) => return shared.fail(e),
            Err(e) => return shared.fail(e),
        };
        for (seq, e) in got {
            let worker = &workers[(e.client as usize).min(workers.len() - 1)];
            let at = UNIX_EPOCH + Duration::from_millis(e.at_ms);
            let mut publish = e.publish;
            // Read again after a restart: downstream de-duplication
            // (an SQL window's redelivery check) sees it as redelivered.
            publish.dup |= seq < replayed;
            let d = Delivery::from_publish(publish, at.min(SystemTime::now()));
            let ack = Ack::Log(LogAck {
                seq,
                shared: shared.clone(),
            });
            if let Some(record) = worker.process_acked(d, Some(ack)).await {
                if tx.send(record).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Every 100 ms: the confirmed prefix to disk, the gauges, the write rate.
async fn checkpoints(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let (mut last, mut last_at) = (0u64, tokio::time::Instant::now());
    loop {
        tick.tick().await;
        let s = shared.clone();
        match tokio::task::spawn_blocking(move || s.checkpoint()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return shared.fail(e),
            Err(e) => return shared.fail(e),
        }
        if last_at.elapsed() >= Duration::from_secs(1) {
            let n = shared.metrics.written.load(Relaxed);
            let rate = (n - last) as f64 / last_at.elapsed().as_secs_f64();
            shared.metrics.rate.store(rate as u64, Relaxed);
            (last, last_at) = (n, tokio::time::Instant::now());
        }
    }
}

impl Shared {
    /// The last checkpoint, at close.
    pub(crate) fn close(&self) {
        if let Err(e) = self.checkpoint() {
            tracing::warn!(error = %e, "Local buffer: last checkpoint failed; confirmed entries will be read again.");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::QoS;

    fn d(pkid: u16, dup: bool, payload: &str) -> Delivery {
        Delivery::from_publish(
            crate::codec::Publish {
                topic: "t".into(),
                payload: payload.to_owned().into(),
                qos: QoS::AtLeastOnce,
                retain: false,
                dup,
                pkid,
                properties: None,
            },
            SystemTime::now(),
        )
    }

    #[test]
    fn a_resend_of_what_the_last_connection_appended_is_recognised_once() {
        let mut r = Resent::default();
        r.connected();
        assert!(r.admit(&d(1, false, "a")) && r.admit(&d(2, false, "b")));
        r.connected();
        // The broker sends 2 again (its PUBACK was lost), then new ones.
        assert!(!r.admit(&d(2, true, "b")));
        assert!(r.admit(&d(3, false, "c")));
        // After something new, a DUP is a message of its own.
        assert!(r.admit(&d(1, true, "a")));
    }

    #[test]
    fn a_resend_that_differs_or_was_never_appended_is_appended() {
        let mut r = Resent::default();
        r.connected();
        assert!(r.admit(&d(1, false, "a")));
        r.connected();
        // Same id, other payload: the id was reused for a new message.
        assert!(r.admit(&d(1, true, "z")));
        // An id the last connection never appended.
        assert!(r.admit(&d(9, true, "a")));
    }

    #[test]
    fn two_cuts_in_a_row_keep_what_was_not_resent_yet() {
        let mut r = Resent::default();
        r.connected();
        assert!(r.admit(&d(1, false, "a")) && r.admit(&d(2, false, "b")));
        r.connected();
        assert!(!r.admit(&d(1, true, "a")));
        r.connected();
        assert!(!r.admit(&d(2, true, "b")));
        assert!(!r.admit(&d(1, true, "a")));
    }
}
