//! A batch of records travelling from one source to every sink that reads
//! it, and the fan-out acknowledgement: the source's messages are
//! acknowledged to the broker only when the last of those sinks confirmed
//! the batch (file: written; PostgreSQL: committed; MQTT: PUBACK/PUBCOMP).
//!
//! One allocation and one atomic countdown per batch, not per record.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use bytes::Bytes;
use mqlink::format::Value;
use mqlink::source::RecordAck;
use mqlink::ByteStr;

use crate::relay::Relay;

/// One record: the decoded value, and where it came from.
#[derive(Debug)]
pub struct Item {
    /// The MQTT topic it arrived on (none for generated records).
    pub topic: Option<ByteStr>,
    /// The original payload (empty for generated records).
    pub payload: Bytes,
    pub value: Value,
    /// The MQTT message it came from (QoS 1 and 2; none for QoS 0 and
    /// generated records).
    pub origin: Option<Origin>,
}

/// What identifies a message when the broker sends it again: a stage with
/// state recognises a redelivery of what it already counted
/// ([`crate::redelivery`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    /// Which of the source's clients received it (packet ids are per
    /// client session).
    pub client: u16,
    pub packet_id: u16,
    /// The broker marked it as a redelivery (or the local buffer read it
    /// again after a restart).
    pub dup: bool,
    /// Its place in the source's local buffer, when it came through one:
    /// an exact identity across restarts ([`crate::sink::written`]).
    pub position: Option<mqlink::source::LogPosition>,
}

#[derive(Debug)]
pub struct Batch {
    pub items: Vec<Item>,
    /// Sinks that have not confirmed the batch yet.
    pending: AtomicUsize,
    acks: Mutex<Vec<RecordAck>>,
    /// The source's count of records acknowledged after every sink confirmed.
    acknowledged: Arc<AtomicU64>,
    /// Source records this batch carries out (a stage may have filtered or
    /// combined some): what the source counts as acknowledged.
    covers: u64,
    /// Messages of the embedded broker whose publishing sink waits for
    /// this batch (see [`crate::relay`]).
    relayed: Option<(Arc<Relay>, Vec<u64>)>,
    busy: Arc<BusyTime>,
    /// The source's count of batches every sink confirmed (checkpoints
    /// wait for it).
    progress: Option<Arc<Progress>>,
}

/// Batches of one source confirmed by every sink, and a wake-up for the
/// one task (the source's) that waits for them.
#[derive(Debug, Default)]
pub struct Progress {
    pub confirmed: AtomicU64,
    /// Batches dropped before every sink confirmed them (a sink gave up):
    /// they never will be.
    pub abandoned: AtomicU64,
    pub notify: tokio::sync::Notify,
}

/// When the first record entered the pipeline, and the last acknowledgement
/// since then (µs): the busy time a benchmark wants. One per run.
#[derive(Debug, Default)]
pub struct BusyTime {
    first: OnceLock<Instant>,
    last_ack_us: AtomicU64,
}

impl BusyTime {
    /// Seconds from the first record to the last acknowledgement, once both happened.
    pub fn seconds(&self) -> Option<f64> {
        self.first.get()?;
        let us = self.last_ack_us.load(Ordering::Relaxed);
        (us > 0).then(|| us as f64 / 1e6)
    }
}

impl Batch {
    pub fn new(
        items: Vec<Item>,
        acks: Vec<RecordAck>,
        sinks: usize,
        acknowledged: Arc<AtomicU64>,
        busy: Arc<BusyTime>,
    ) -> Batch {
        busy.first.get_or_init(Instant::now);
        Batch {
            covers: items.len() as u64,
            relayed: None,
            items,
            pending: AtomicUsize::new(sinks),
            acks: Mutex::new(acks),
            acknowledged,
            busy,
            progress: None,
        }
    }

    /// Counts the batch in `progress` once every sink confirmed it.
    pub fn tracking(mut self, progress: Arc<Progress>) -> Batch {
        self.progress = Some(progress);
        self
    }

    /// Relayed messages this batch settles once confirmed.
    pub fn relaying(mut self, relay: Option<Arc<Relay>>, ids: Vec<u64>) -> Batch {
        if let (Some(r), false) = (relay, ids.is_empty()) {
            self.relayed = Some((r, ids));
        }
        self
    }

    /// The number of source records this batch stands for.
    pub fn covering(mut self, records: u64) -> Batch {
        self.covers = records;
        self
    }

    /// One sink has the whole batch safe; the last one acknowledges the
    /// messages (the session sends PUBACKs in arrival order whatever order
    /// batches complete in).
    pub fn confirm(&self) {
        if self.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            let acks = std::mem::take(&mut *self.acks.lock().expect("ack lock"));
            for a in acks {
                a.ack();
            }
            self.acknowledged.fetch_add(self.covers, Ordering::Relaxed);
            if let Some((relay, ids)) = &self.relayed {
                for id in ids {
                    relay.done(*id);
                }
            }
            if let Some(first) = self.busy.first.get() {
                self.busy
                    .last_ack_us
                    .fetch_max(first.elapsed().as_micros() as u64, Ordering::Relaxed);
            }
            if let Some(p) = &self.progress {
                p.confirmed.fetch_add(1, Ordering::AcqRel);
                p.notify.notify_one();
            }
        }
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        if let (Some(p), false) = (&self.progress, *self.pending.get_mut() == 0) {
            p.abandoned.fetch_add(1, Ordering::AcqRel);
            p.notify.notify_one();
        }
    }
}
