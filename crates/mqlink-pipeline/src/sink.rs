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
//! - confirming batches, in order, once every record is written,
//!   dead-lettered or skipped: the last sink to confirm a batch acknowledges
//!   its messages to the broker ([`Batch::confirm`]).
//!
//! Writes are pipelined: the next job is written while earlier ones wait
//! for their confirmations (PUBACKs), in a second task.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use mqlink::source::dead_letter_message;
use mqlink::{Backoff, Client, Protocol, QoS};
use tokio::sync::mpsc;

use crate::batch::{Batch, Item};
use crate::status::{Component, State};

/// Records handed to a sink in one write: whole batches, in arrival order.
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
/// alone, or a fatal error (nothing of the job is confirmed).
pub type Confirmation = Pin<Box<dyn Future<Output = Result<Vec<RecordFault>, String>> + Send>>;

/// A confirmation that is already complete (the write itself made the
/// records durable: a file write, a committed INSERT).
pub fn confirmed(faults: Vec<RecordFault>) -> Confirmation {
    Box::pin(std::future::ready(Ok(faults)))
}

/// Where a sink's record faults go: an MQTT topic, with the original
/// payload, topic and reason (MQTT 5 user properties, or a JSON envelope).
#[derive(Clone)]
pub struct DeadLetters {
    pub topic: String,
    pub client: Client,
    pub qos: QoS,
}

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

/// Confirmations awaited at once per sink.
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

    let (to_confirm, queue) = mpsc::channel::<(Job, Confirmation)>(DEPTH);
    let mut confirmer = tokio::spawn(confirm(
        queue,
        sink.dead_letters(),
        comp.clone(),
        path.clone(),
    ));
    // A confirmer that ended early hit a fatal fault: that is the outcome.
    let failed = |r: Result<Result<(), String>, tokio::task::JoinError>| match r {
        Ok(Ok(())) => Err("confirmations ended early".to_string()),
        Ok(Err(e)) => Err(e),
        Err(e) => Err(format!("panicked: {e}")),
    };
    loop {
        let job = tokio::select! {
            job = next_job(&mut rx, sink.max_records()) => job,
            r = &mut confirmer => return failed(r),
        };
        let Some(job) = job else { break };
        comp.records.fetch_add(job.len() as u64, Relaxed);
        let mut attempt = 0;
        let confirmation = loop {
            let written = tokio::select! {
                w = sink.write(&job) => w,
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
            s = to_confirm.send((job, confirmation)) => s.is_ok(),
            r = &mut confirmer => return failed(r),
        };
        if !sent {
            return failed(confirmer.await);
        }
    }
    drop(to_confirm);
    match confirmer.await {
        Ok(Ok(())) => {}
        other => return failed(other),
    }
    sink.close().await;
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

/// Awaits confirmations in order; settles record faults; confirms batches.
async fn confirm(
    mut queue: mpsc::Receiver<(Job, Confirmation)>,
    dead_letters: Option<DeadLetters>,
    comp: Arc<Component>,
    path: String,
) -> Result<(), String> {
    while let Some((job, confirmation)) = queue.recv().await {
        let faults = confirmation.await?;
        let mut skipped = 0u64;
        if !faults.is_empty() {
            match &dead_letters {
                Some(d) => dead_letter(d, &job, &faults, &comp, &path).await?,
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
    }
    Ok(())
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
    let v5 = d.client.protocol() == Protocol::V5;
    let mut tokens = Vec::new();
    for (from, payload, reason) in letters {
        let msg = dead_letter_message(from, &payload, d.qos, None, &d.topic, reason, v5);
        let token = d
            .client
            .publish(msg)
            .await
            .map_err(|e| format!("dead letter to {:?} not published: {e}", d.topic))?;
        tokens.push((token, from, reason));
    }
    for (t, from, reason) in tokens {
        t.await
            .map_err(|e| format!("dead letter to {:?} not confirmed: {e}", d.topic))?;
        tracing::warn!(component = %path, topic = from, error = %reason, dead_letter_topic = %d.topic, "Record dead-lettered.");
        comp.dead_lettered.fetch_add(1, Relaxed);
    }
    Ok(())
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
