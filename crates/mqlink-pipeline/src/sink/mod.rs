//! The sink runner: the one place a pipeline decides that records are safe.
//!
//! A connector (MQTT, file, PostgreSQL, …) implements [`Sink`]: it opens
//! its destination and writes a [`Job`], saying which records it can never
//! write. Everything else of the guarantee lives here, once:
//!
//! - taking batches off the sink's channel (what has arrived, up to the
//!   sink's `max_records`: batches grow under load, leave at once when idle);
//! - retrying a write that failed as a whole and may succeed later
//!   ([`WriteError::Retry`]: the destination is down) with the pipeline's
//!   [`Backoff`], holding the batch — back-pressure reaches the sources;
//! - the **record fault** vs **fatal fault** distinction. A record fault
//!   (the topic does not render, the broker refused that one publish, a row
//!   violates a constraint) is dead-lettered when the sink has a dead-letter
//!   topic, else skipped, counted (`mqlink_sink_skipped_total`) and logged
//!   with its reason; the rest of the batch goes on. A fatal fault (the
//!   session gave up reconnecting, credentials refused, the table is gone)
//!   never confirms: the component fails and the run ends non-zero;
//! - the **systemic fault** rule: *a refusal is the record's own only when
//!   a record written with it or right after it is not refused the same
//!   way.* The destination reports the kind of each refusal
//!   ([`RecordFault::class`]: a SQLSTATE, an MQTT reason code). When every
//!   record of a job is refused with one class — a job of two or more, or a
//!   job of one whose next job is refused the same way — the destination is
//!   at fault (a `NOT NULL` column added, an ACL denying the topic): nothing
//!   is confirmed, the job is written again with the back-off until it
//!   passes (counted in `mqlink_sink_errors_total`, the reason in /status,
//!   the sink named stalled by /ready), and no other job is written
//!   meanwhile. A job of one waits for that evidence unconfirmed; when the
//!   next job is not refused that way (or the sink's input ends first), it
//!   is written once more (the next may have been written after the
//!   destination was fixed), and a refusal then is the record's;
//! - confirming batches, in order, once every record is written,
//!   dead-lettered or skipped: the last sink to confirm a batch acknowledges
//!   its messages to the broker ([`Batch::confirm`]).
//!
//! Writes are pipelined: the next job is written while earlier ones wait
//! for their confirmations (PUBACKs, HTTP answers), in a second task, up to
//! the sink's [`Sink::max_unconfirmed_jobs`]. A job is taken off the
//! channel only when it may be written, so jobs grow while the destination
//! is slow. A confirmation that fails with [`WriteError::Retry`] (a request
//! sent in the background found the destination down) has its job written
//! again with the back-off, holding every other write, before any later
//! job is confirmed.

pub mod outputs;
pub mod written;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use mqlink::dead_letter::DeadLetter;
use mqlink::Backoff;
use tokio::sync::mpsc;

use crate::batch::{Batch, Item};
use crate::status::{Component, State};

pub use outputs::Outputs;

/// Records handed to a sink in one write: whole batches, in arrival order.
/// A clone shares the records (a sink that writes in the background keeps
/// one until its confirmation completes).
#[derive(Clone)]
pub struct Job {
    batches: Vec<Arc<Batch>>,
    len: usize,
}

impl Job {
    pub fn items(&self) -> impl Iterator<Item = &Item> {
        self.batches.iter().flat_map(|b| b.items.iter())
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// One record a sink can never write; the rest of its job goes on.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordFault {
    /// The record's position in its job.
    pub index: usize,
    pub reason: String,
    /// The kind of refusal, as the destination reported it (a SQLSTATE, an
    /// MQTT reason code): when every record of a job gets the same class,
    /// the destination is at fault (see the module doc). `None` for faults
    /// the sink found in the record itself (a topic that does not render).
    pub class: Option<String>,
}

/// Why a write (or opening the destination) failed as a whole.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WriteError {
    /// Transient: the destination is down or busy. Written again after a
    /// backoff, the batch held meanwhile.
    #[error("{0}")]
    Retry(String),
    /// Permanent: nothing of the job is confirmed, the component fails.
    #[error("{0}")]
    Fatal(String),
}

/// Completes once a written job is durable: the records that failed
/// alone, or why not: [`WriteError::Retry`] has the runner write the job
/// again (after the back-off), [`WriteError::Fatal`] ends the run (nothing
/// of the job is confirmed).
pub type Confirmation = Pin<Box<dyn Future<Output = Result<Vec<RecordFault>, WriteError>> + Send>>;

/// A confirmation that is already complete (the write itself made the
/// records durable: a file write, a committed INSERT).
pub fn confirmed(faults: Vec<RecordFault>) -> Confirmation {
    Box::pin(std::future::ready(Ok(faults)))
}

/// Where a sink's record faults go: an MQTT topic, with the original
/// payload, topic and reason (see [`mqlink::dead_letter`]).
pub use mqlink::dead_letter::DeadLetters;

/// A destination. Implementations only write; the runner owns the rest.
pub trait Sink: Send + 'static {
    /// Records per write at most.
    fn max_records(&self) -> usize;

    /// Connects (or checks) the destination before the first job, so that
    /// /ready tells the truth early. Retried like a write.
    fn open(&mut self) -> impl Future<Output = Result<(), WriteError>> + Send {
        std::future::ready(Ok(()))
    }

    /// Hands the job's records to the destination; the confirmation
    /// completes when they are durable. A record the sink can never write
    /// is reported as a [`RecordFault`], never as an error of the job.
    fn write(&mut self, job: &Job)
        -> impl Future<Output = Result<Confirmation, WriteError>> + Send;

    /// Written jobs awaiting their confirmation at most; the runner takes
    /// no more off the channel meanwhile. A sink that confirms at commits
    /// far apart (a file rolled every minute) takes more, and bounds what
    /// they hold itself; a sink whose confirmation is a request in flight
    /// takes its `concurrency`.
    fn max_unconfirmed_jobs(&self) -> usize {
        DEPTH
    }

    /// Its input ended: a sink that holds written records until a commit
    /// (a file rolled by age) commits them now, so that their
    /// confirmations complete.
    fn input_ended(&mut self) -> impl Future<Output = ()> + Send {
        std::future::ready(())
    }

    /// The dead-letter topic for record faults, when there is one.
    fn dead_letters(&self) -> Option<DeadLetters> {
        None
    }

    /// After the last confirmation, before the run ends.
    fn close(self) -> impl Future<Output = ()> + Send
    where
        Self: Sized,
    {
        std::future::ready(())
    }
}

/// Confirmations awaited at once per sink (unless it says otherwise).
const DEPTH: usize = 64;

/// Runs `sink` until its channel ends (the sources stopped) and everything
/// it took is confirmed, or until a fatal fault (returned, nothing of the
/// failed job confirmed). `backoff` paces retried writes.
pub async fn run<S: Sink>(
    mut sink: S,
    path: String,
    comp: Arc<Component>,
    backoff: Backoff,
    mut rx: mpsc::Receiver<Arc<Batch>>,
) -> Result<(), String> {
    let mut attempt = 0;
    loop {
        match sink.open().await {
            Ok(()) => break,
            Err(WriteError::Fatal(e)) => return Err(e),
            Err(WriteError::Retry(e)) => {
                attempt += 1;
                comp.set_error(e.clone());
                tracing::warn!(component = %path, error = %e, attempt, "Destination not ready; retrying.");
                if backoff.exhausted(attempt) {
                    return Err(format!("gave up after {attempt} attempts: {e}"));
                }
                tokio::time::sleep(backoff.delay(attempt)).await;
            }
        }
    }
    comp.connected.store(true, Relaxed);
    comp.set_state(State::Running);

    let max_records = sink.max_records();
    let depth = sink.max_unconfirmed_jobs().max(1);
    let settler = Settler {
        dead_letters: sink.dead_letters(),
        comp: comp.clone(),
        path: path.clone(),
        backoff: backoff.clone(),
        sink: Arc::new(tokio::sync::Mutex::new(sink)),
    };
    let sink = settler.sink.clone();
    // A slot per job written and not yet settled: taken before the job is.
    let slots = Arc::new(tokio::sync::Semaphore::new(depth));
    let (to_confirm, queue) = mpsc::channel::<Written>(depth);
    let mut confirmer = tokio::spawn(confirm(queue, settler));
    // A confirmer that ended early hit a fatal fault: that is the outcome.
    let failed = |r: Result<Result<(), String>, tokio::task::JoinError>| match r {
        Ok(Ok(())) => Err("confirmations ended early".to_string()),
        Ok(Err(e)) => Err(e),
        Err(e) => Err(format!("panicked: {e}")),
    };
    loop {
        let slot = tokio::select! {
            s = slots.clone().acquire_owned() => s.expect("the semaphore is never closed"),
            r = &mut confirmer => return failed(r),
        };
        let job = tokio::select! {
            job = next_job(&mut rx, max_records) => job,
            r = &mut confirmer => return failed(r),
        };
        let Some(job) = job else { break };
        comp.records.fetch_add(job.len() as u64, Relaxed);
        let mut attempt = 0;
        let confirmation = loop {
            // Locked: a systemic fault holds every write (see `Settler::stall`).
            let written = tokio::select! {
                w = async { sink.lock().await.write(&job).await } => w,
                r = &mut confirmer => return failed(r),
            };
            match written {
                Ok(c) => break c,
                Err(WriteError::Fatal(e)) => return Err(e),
                Err(WriteError::Retry(e)) => {
                    attempt += 1;
                    comp.errors.fetch_add(1, Relaxed);
                    comp.connected.store(false, Relaxed);
                    comp.set_error(e.clone());
                    tracing::warn!(component = %path, error = %e, attempt, records = job.len(), "Write failed; the batch is held and written again.");
                    if backoff.exhausted(attempt) {
                        return Err(format!("gave up after {attempt} attempts: {e}"));
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff.delay(attempt)) => {}
                        r = &mut confirmer => return failed(r),
                    }
                }
            }
        };
        if attempt > 0 {
            tracing::info!(component = %path, attempts = attempt + 1, "Written after retrying.");
        }
        comp.connected.store(true, Relaxed);
        let sent = tokio::select! {
            s = to_confirm.send((job, confirmation, slot)) => s.is_ok(),
            r = &mut confirmer => return failed(r),
        };
        if !sent {
            return failed(confirmer.await);
        }
    }
    drop(to_confirm);
    sink.lock().await.input_ended().await;
    match confirmer.await {
        Ok(Ok(())) => {}
        other => return failed(other),
    }
    if let Ok(sink) = Arc::try_unwrap(sink) {
        sink.into_inner().close().await;
    }
    Ok(())
}

/// What has arrived for the sink, up to `max` records, waiting only for
/// the first batch. `None` once the channel ended.
async fn next_job(rx: &mut mpsc::Receiver<Arc<Batch>>, max: usize) -> Option<Job> {
    let first = rx.recv().await?;
    let mut len = first.len();
    let mut batches = vec![first];
    while len < max {
        match rx.try_recv() {
            Ok(b) => {
                len += b.len();
                batches.push(b);
            }
            Err(_) => break,
        }
    }
    Some(Job { batches, len })
}

/// A written job, its confirmation, and its slot (freed once settled).
type Written = (Job, Confirmation, tokio::sync::OwnedSemaphorePermit);

/// Awaits confirmations in order; writes a job again whose confirmation
/// says retry; settles record faults; confirms batches; holds jobs the
/// destination refused as a whole (the module doc's systemic fault rule).
async fn confirm<S: Sink>(mut queue: mpsc::Receiver<Written>, s: Settler<S>) -> Result<(), String> {
    // A job of one refused with a class, waiting for the next job's outcome.
    let mut held: Option<(Job, Vec<RecordFault>, String)> = None;
    while let Some((job, confirmation, _slot)) = queue.recv().await {
        let faults = match confirmation.await {
            Ok(faults) => faults,
            Err(WriteError::Fatal(e)) => return Err(e),
            Err(WriteError::Retry(e)) => {
                let mut sink = s.sink.lock().await;
                s.write_again(&mut sink, &job, Some(e)).await?
            }
        };
        let class = refused_whole(&job, &faults);
        if let Some((first, first_faults, held_class)) = held.take() {
            if class.as_ref() == Some(&held_class) {
                s.stall(first, &held_class, &first_faults[0].reason).await?;
                s.stall(job, &held_class, &faults[0].reason).await?;
                continue;
            }
            s.recheck(first).await?;
        }
        match class {
            Some(class) if job.len() > 1 => s.stall(job, &class, &faults[0].reason).await?,
            Some(class) => {
                // Held: the next job tells (see `Settler::recheck`).
                s.comp.set_error(format!(
                    "a record refused ({class}), waiting for the next to tell whether every record is: {}",
                    faults[0].reason
                ));
                held = Some((job, faults, class));
            }
            None => s.settle(job, faults).await?,
        }
    }
    if let Some((job, _, _)) = held {
        s.recheck(job).await?;
    }
    Ok(())
}

/// The class every record of `job` was refused with, if one was.
fn refused_whole(job: &Job, faults: &[RecordFault]) -> Option<String> {
    let class = faults.first()?.class.as_ref()?;
    (faults.len() == job.len() && faults.iter().all(|f| f.class.as_ref() == Some(class)))
        .then(|| class.clone())
}

/// What the confirmer needs to settle a job: where record faults go, and
/// the sink itself to write a job again that the destination refused.
struct Settler<S> {
    dead_letters: Option<DeadLetters>,
    comp: Arc<Component>,
    path: String,
    backoff: Backoff,
    sink: Arc<tokio::sync::Mutex<S>>,
}

impl<S: Sink> Settler<S> {
    /// Dead-letters or skips the job's record faults, then confirms it.
    async fn settle(&self, job: Job, faults: Vec<RecordFault>) -> Result<(), String> {
        let (comp, path) = (&self.comp, self.path.as_str());
        let mut skipped = 0u64;
        if !faults.is_empty() {
            match &self.dead_letters {
                Some(d) => dead_letter(d, &job, &faults, comp, path).await?,
                None => {
                    for f in &faults {
                        tracing::error!(component = %path, error = %f.reason, "Record skipped by this sink (set dead_letter_topic to keep such records); its message is acknowledged.");
                    }
                    skipped = faults.len() as u64;
                }
            }
            comp.record_faults.fetch_add(faults.len() as u64, Relaxed);
            comp.set_error(faults[faults.len() - 1].reason.clone());
        }
        comp.skipped.fetch_add(skipped, Relaxed);
        comp.confirmed
            .fetch_add(job.len() as u64 - skipped, Relaxed);
        for b in job.batches {
            b.confirm();
        }
        Ok(())
    }

    /// The destination refused every record of `job` with `class`: writes
    /// it again with the back-off, holding every other write, until it is
    /// not refused that way any more; then settles it.
    async fn stall(&self, job: Job, class: &str, reason: &str) -> Result<(), String> {
        let (comp, path) = (&self.comp, self.path.as_str());
        let mut sink = self.sink.lock().await;
        let mut reason = reason.to_string();
        let mut attempt = 0;
        loop {
            attempt += 1;
            comp.errors.fetch_add(1, Relaxed);
            comp.set_error(format!(
                "every record of a batch refused ({class}), the destination's fault: {reason}"
            ));
            tracing::warn!(component = %path, error = %reason, class, attempt, records = job.len(), "Every record refused the same way: a fault of the destination, not of the records; nothing is confirmed, the batch is written again.");
            if self.backoff.exhausted(attempt) {
                return Err(format!("gave up after {attempt} attempts: {reason}"));
            }
            tokio::time::sleep(self.backoff.delay(attempt)).await;
            let faults = self.write_again(&mut sink, &job, None).await?;
            if refused_whole(&job, &faults).as_deref() == Some(class) {
                reason = faults[0].reason.clone();
                continue;
            }
            drop(sink);
            tracing::info!(component = %path, attempts = attempt + 1, "Written after the destination refused every record.");
            return self.settle(job, faults).await;
        }
    }

    /// A job of one was refused, the next job was not (or never came): it
    /// is written once more — the next may have been written after the
    /// destination was fixed — and what is refused again is the record's.
    async fn recheck(&self, job: Job) -> Result<(), String> {
        let mut sink = self.sink.lock().await;
        let faults = self.write_again(&mut sink, &job, None).await?;
        drop(sink);
        self.settle(job, faults).await
    }

    /// Writes `job` until the sink takes it and confirms it, retrying a
    /// destination that is down like the runner — first after the back-off
    /// when it `failed` already. The caller holds the sink: nothing else is
    /// written meanwhile.
    async fn write_again(
        &self,
        sink: &mut S,
        job: &Job,
        mut failed: Option<String>,
    ) -> Result<Vec<RecordFault>, String> {
        let comp = &self.comp;
        let mut attempt = 0;
        loop {
            if let Some(e) = failed.take() {
                attempt += 1;
                comp.errors.fetch_add(1, Relaxed);
                comp.connected.store(false, Relaxed);
                comp.set_error(e.clone());
                tracing::warn!(component = %self.path, error = %e, attempt, records = job.len(), "Write failed; the batch is held and written again.");
                if self.backoff.exhausted(attempt) {
                    return Err(format!("gave up after {attempt} attempts: {e}"));
                }
                tokio::time::sleep(self.backoff.delay(attempt)).await;
            }
            let confirmed = match sink.write(job).await {
                Ok(confirmation) => confirmation.await,
                Err(e) => Err(e),
            };
            match confirmed {
                Ok(faults) => {
                    if attempt > 0 {
                        comp.connected.store(true, Relaxed);
                        tracing::info!(component = %self.path, attempts = attempt + 1, "Written after retrying.");
                    }
                    return Ok(faults);
                }
                Err(WriteError::Fatal(e)) => return Err(e),
                Err(WriteError::Retry(e)) => failed = Some(e),
            }
        }
    }
}

/// Publishes each faulty record to the dead-letter topic and waits for the
/// broker to confirm them all; a dead letter that cannot be published is
/// fatal (its record would otherwise be lost).
async fn dead_letter(
    d: &DeadLetters,
    job: &Job,
    faults: &[RecordFault],
    comp: &Component,
    path: &str,
) -> Result<(), String> {
    let items: Vec<&Item> = job.items().collect();
    let letters = faults.iter().filter_map(|f| {
        let item = items.get(f.index)?;
        let payload = if item.payload.is_empty() {
            let mut b = Vec::new();
            item.value.write_json(&mut b);
            Bytes::from(b)
        } else {
            item.payload.clone()
        };
        Some((
            item.topic.as_deref().unwrap_or(""),
            payload,
            f.reason.as_str(),
        ))
    });
    publish_dead_letters(d, letters, comp, path).await
}

/// Publishes dead letters (the record's topic, its payload, the reason)
/// and waits until the broker confirmed every one, counting them. The
/// first that is not published or not confirmed is the error: its record
/// must not be acknowledged. (The sink runner's and a source stage's.)
pub async fn publish_dead_letters<'a>(
    d: &DeadLetters,
    letters: impl Iterator<Item = (&'a str, Bytes, &'a str)>,
    comp: &Component,
    path: &str,
) -> Result<(), String> {
    let letters: Vec<DeadLetter> = letters
        .map(|(from, payload, reason)| DeadLetter::new(from, payload, reason))
        .collect();
    let (confirmed, result) = match d.publish_all(&letters).await {
        Ok(()) => (letters.len(), Ok(())),
        Err((n, e)) => (n, Err(e.to_string())),
    };
    for l in &letters[..confirmed] {
        tracing::warn!(component = %path, topic = l.from, error = %l.reason, dead_letter_topic = %d.topic, "Record dead-lettered.");
    }
    comp.dead_lettered.fetch_add(confirmed as u64, Relaxed);
    result
}

/// The runner's backoff for retried writes: 0.2 s doubling to 5 s, forever.
pub fn write_backoff() -> Backoff {
    Backoff {
        initial_interval: Duration::from_millis(200),
        multiplier: 2.0,
        max_interval: Duration::from_secs(5),
        max_attempts: 0,
        jitter: 0.2,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;
    use std::sync::Mutex;

    use mqlink::format::Value;

    use super::*;
    use crate::batch::BusyTime;
    use crate::status::Kind;

    /// Refuses a record whose value is `Null` (class "bad"), and every
    /// record while `down` names a class.
    struct Refusing {
        down: Arc<Mutex<Option<String>>>,
    }

    impl Sink for Refusing {
        fn max_records(&self) -> usize {
            100
        }
        async fn write(&mut self, job: &Job) -> Result<Confirmation, WriteError> {
            let down = self.down.lock().unwrap().clone();
            let faults = job
                .items()
                .enumerate()
                .filter_map(|(index, item)| {
                    let class = down
                        .clone()
                        .or((item.value == Value::Null).then(|| "bad".to_string()))?;
                    Some(RecordFault {
                        index,
                        reason: format!("refused: {class}"),
                        class: Some(class),
                    })
                })
                .collect();
            Ok(confirmed(faults))
        }
    }

    fn batch(values: Vec<Value>, acked: &Arc<AtomicU64>) -> Arc<Batch> {
        let items = values
            .into_iter()
            .map(|value| Item {
                topic: None,
                payload: Bytes::new(),
                value,
                origin: None,
            })
            .collect();
        let busy = Arc::new(BusyTime::default());
        Arc::new(Batch::new(items, Vec::new(), 1, acked.clone(), busy))
    }

    async fn until(what: &str, f: impl Fn() -> bool) {
        for _ in 0..2000 {
            if f() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("timed out waiting for {what}");
    }

    fn quick() -> Backoff {
        Backoff {
            initial_interval: Duration::from_millis(5),
            max_interval: Duration::from_millis(20),
            ..write_backoff()
        }
    }

    /// A bad record alone in its job, then a good job: a record fault. A
    /// bad one among good ones: a record fault.
    #[tokio::test]
    async fn a_refusal_the_next_records_do_not_share_is_the_records() {
        let comp = Component::new("s", Kind::Sink, "test");
        let down = Arc::new(Mutex::new(None));
        let (tx, rx) = mpsc::channel(16);
        let sink = Refusing { down: down.clone() };
        let runner = tokio::spawn(run(sink, "sinks.s".into(), comp.clone(), quick(), rx));
        let acked = Arc::new(AtomicU64::new(0));
        tx.send(batch(vec![Value::Null], &acked)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(acked.load(Relaxed), 0, "held until the next job tells");
        tx.send(batch(vec![Value::BigInt(1), Value::Null], &acked))
            .await
            .unwrap();
        until("both confirmed", || acked.load(Relaxed) == 3).await;
        assert_eq!(comp.skipped.load(Relaxed), 2);
        assert_eq!(comp.errors.load(Relaxed), 0);
        drop(tx);
        runner.await.unwrap().unwrap();
    }

    /// Every record refused the same way (a job of one, then a job of
    /// two): nothing confirmed, retried and counted, until the destination
    /// takes them; nothing skipped.
    #[tokio::test]
    async fn a_refusal_every_record_shares_is_the_destinations() {
        let comp = Component::new("s", Kind::Sink, "test");
        let down = Arc::new(Mutex::new(Some("SQLSTATE 23502".to_string())));
        let (tx, rx) = mpsc::channel(16);
        let sink = Refusing { down: down.clone() };
        let runner = tokio::spawn(run(sink, "sinks.s".into(), comp.clone(), quick(), rx));
        let acked = Arc::new(AtomicU64::new(0));
        tx.send(batch(vec![Value::BigInt(1)], &acked))
            .await
            .unwrap();
        tx.send(batch(vec![Value::BigInt(2), Value::BigInt(3)], &acked))
            .await
            .unwrap();
        until("retries", || comp.errors.load(Relaxed) >= 3).await;
        assert_eq!(acked.load(Relaxed), 0);
        assert!(comp.last_error().unwrap().contains("23502"));
        *down.lock().unwrap() = None;
        until("all confirmed", || acked.load(Relaxed) == 3).await;
        assert_eq!(comp.skipped.load(Relaxed), 0);
        assert_eq!(comp.record_faults.load(Relaxed), 0);
        drop(tx);
        runner.await.unwrap().unwrap();
    }

    /// Confirms each job in the background when `open` lets it: retry
    /// while `down`; records the size of each job written.
    struct Background {
        open: tokio::sync::watch::Receiver<bool>,
        down: Arc<Mutex<bool>>,
        sizes: Arc<Mutex<Vec<usize>>>,
        depth: usize,
    }

    impl Sink for Background {
        fn max_records(&self) -> usize {
            100
        }
        fn max_unconfirmed_jobs(&self) -> usize {
            self.depth
        }
        async fn write(&mut self, job: &Job) -> Result<Confirmation, WriteError> {
            self.sizes.lock().unwrap().push(job.len());
            let (mut open, down) = (self.open.clone(), self.down.clone());
            Ok(Box::pin(async move {
                let _ = open.wait_for(|o| *o).await;
                match *down.lock().unwrap() {
                    true => Err(WriteError::Retry("down".into())),
                    false => Ok(Vec::new()),
                }
            }))
        }
    }

    /// At most `max_unconfirmed_jobs` jobs in flight, the next taken only
    /// when one settled (so it holds what arrived meanwhile); a
    /// confirmation that says retry has its job written again, and nothing
    /// after it is confirmed before it.
    #[tokio::test]
    async fn jobs_in_flight_are_bounded_and_a_retried_one_holds_those_after_it() {
        let comp = Component::new("s", Kind::Sink, "test");
        let (open_tx, open) = tokio::sync::watch::channel(false);
        let down = Arc::new(Mutex::new(true));
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let sink = Background {
            open,
            down: down.clone(),
            sizes: sizes.clone(),
            depth: 2,
        };
        let (tx, rx) = mpsc::channel(16);
        let runner = tokio::spawn(run(sink, "sinks.s".into(), comp.clone(), quick(), rx));
        let acked: Vec<Arc<AtomicU64>> = (0..6).map(|_| Arc::new(AtomicU64::new(0))).collect();
        for a in &acked[..2] {
            tx.send(batch(vec![Value::BigInt(1)], a)).await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        until("two jobs written", || sizes.lock().unwrap().len() == 2).await;
        for a in &acked[2..] {
            tx.send(batch(vec![Value::BigInt(1)], a)).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            *sizes.lock().unwrap(),
            [1, 1],
            "no third job while two are in flight"
        );
        // Both confirmations say retry: written again, in order.
        open_tx.send(true).unwrap();
        until("retries", || comp.errors.load(Relaxed) >= 2).await;
        assert!(acked.iter().all(|a| a.load(Relaxed) == 0));
        *down.lock().unwrap() = false;
        until("all confirmed", || {
            acked.iter().all(|a| a.load(Relaxed) == 1)
        })
        .await;
        let sizes = sizes.lock().unwrap().clone();
        let grown: Vec<usize> = sizes.iter().copied().filter(|&n| n > 1).collect();
        assert_eq!(
            grown,
            [4],
            "the four that waited went as one job: {sizes:?}"
        );
        drop(tx);
        runner.await.unwrap().unwrap();
    }
}
