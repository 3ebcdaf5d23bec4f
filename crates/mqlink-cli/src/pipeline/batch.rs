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
use mqlink::codec::ByteStr;
use mqlink::format::Value;
use mqlink::source::RecordAck;

/// One record: the decoded value, and where it came from.
#[derive(Debug)]
pub struct Item {
    /// The MQTT topic it arrived on (none for generated records).
    pub topic: Option<ByteStr>,
    /// The original payload (empty for generated records).
    pub payload: Bytes,
    pub value: Value,
}

#[derive(Debug)]
pub struct Batch {
    pub items: Vec<Item>,
    /// Sinks that have not confirmed the batch yet.
    pending: AtomicUsize,
    acks: Mutex<Vec<RecordAck>>,
    /// The source's count of records acknowledged after every sink confirmed.
    acknowledged: Arc<AtomicU64>,
}

/// When the first record entered the pipeline, and the last acknowledgement
/// since then (µs): the busy time a benchmark wants.
static FIRST: OnceLock<Instant> = OnceLock::new();
static LAST_ACK_US: AtomicU64 = AtomicU64::new(0);

/// Seconds from the first record to the last acknowledgement, once both happened.
pub fn busy_seconds() -> Option<f64> {
    FIRST.get()?;
    let us = LAST_ACK_US.load(Ordering::Relaxed);
    (us > 0).then(|| us as f64 / 1e6)
}

impl Batch {
    pub fn new(
        items: Vec<Item>,
        acks: Vec<RecordAck>,
        sinks: usize,
        acknowledged: Arc<AtomicU64>,
    ) -> Batch {
        FIRST.get_or_init(Instant::now);
        Batch {
            items,
            pending: AtomicUsize::new(sinks),
            acks: Mutex::new(acks),
            acknowledged,
        }
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
            self.acknowledged
                .fetch_add(self.items.len() as u64, Ordering::Relaxed);
            if let Some(first) = FIRST.get() {
                LAST_ACK_US.fetch_max(first.elapsed().as_micros() as u64, Ordering::Relaxed);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }
}
