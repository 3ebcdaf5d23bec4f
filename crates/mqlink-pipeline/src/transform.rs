//! A per-record stage between a source and its sinks: the rules of a
//! Cybus mapping today, SQL later. Front ends compile their rules into a
//! [`Transform`]; the source hands each batch through it before the sinks
//! see it ([`crate::sink::Outputs::send`]), so the delivery guarantee
//! stays with the one sink runner:
//!
//! - a record a filter removes counts as done: its message is acknowledged
//!   with the rest of its batch (at once when nothing of the batch is left);
//! - a record whose rule fails at run time is a **record fault**: logged,
//!   counted on the source (`skipped`) and acknowledged, never a reason to
//!   stop the pipeline;
//! - a stage may hold records for a later output (a burst): the messages of
//!   held records stay unacknowledged until the batch that carries them out
//!   is confirmed by every sink;
//! - a stage with state (a window) holds every record it consumed since its
//!   last checkpoint. When [`Transform::checkpoint_due`], the source waits
//!   until every batch it sent is confirmed by every sink, the stage writes
//!   its state ([`Transform::checkpoint`]), and only then are the held
//!   messages acknowledged: a crash replays them onto the last state, and
//!   the stage recognises the redelivery of messages its last state holds
//!   ([`crate::redelivery`]).
//!
//! Faults carry the message's payload: with a `dead_letter_topic` on the
//! source they are published there (confirmed before the message is
//! acknowledged), else logged and counted as skipped.

use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use crate::batch::Item;

/// A record a rule could not process, and why.
#[derive(Debug)]
pub struct Fault {
    /// The topic the record arrived on.
    pub topic: Option<String>,
    pub reason: String,
    /// The message's payload, for the source's dead-letter topic.
    pub payload: Bytes,
    /// A row behind the watermark (its window was emitted): counted as
    /// late rather than failed.
    pub late: bool,
}

impl Fault {
    pub fn new(topic: Option<String>, reason: impl Into<String>) -> Fault {
        Fault {
            topic,
            reason: reason.into(),
            payload: Bytes::new(),
            late: false,
        }
    }

    /// The fault of `item`, with its topic and payload.
    pub fn of(item: &Item, reason: impl Into<String>) -> Fault {
        Fault {
            topic: item.topic.as_ref().map(|t| t.to_string()),
            payload: item.payload.clone(),
            ..Fault::new(None, reason)
        }
    }

    /// Marks a late row.
    pub fn late(mut self) -> Fault {
        self.late = true;
        self
    }
}

/// What one call of a stage produced.
#[derive(Debug, Default)]
pub struct Output {
    /// Records for the sinks, in order.
    pub items: Vec<Item>,
    pub faults: Vec<Fault>,
    /// Input records dropped as the broker's redelivery of messages the
    /// stage's state already holds ([`crate::redelivery`]).
    pub redelivered: u64,
}

/// A stage: called with each batch, in arrival order, from the source's
/// task (never concurrently).
pub trait Transform: Send {
    /// Processes `items`; what is held for later is released by a later
    /// call or by [`flush`](Self::flush).
    fn apply(&mut self, items: Vec<Item>, now: Instant) -> Output;

    /// How many input records are held for a later output: always the
    /// most recent ones (their messages stay unacknowledged meanwhile).
    fn held(&self) -> usize {
        0
    }

    /// When held records are due without new input (a burst's interval).
    fn deadline(&self) -> Option<Instant> {
        None
    }

    /// Releases what is due at `now`.
    fn flush(&mut self, _now: Instant) -> Output {
        Output::default()
    }

    /// A stage with state (windows): its state should be made durable
    /// now (an interval passed, too many records held).
    fn checkpoint_due(&self, _now: Instant) -> bool {
        false
    }

    /// Called once every batch sent so far is confirmed by every sink:
    /// writes the state durably. After `Ok`, [`held`](Self::held) counts
    /// only what the state does not cover (0 for a window): the source
    /// acknowledges the rest. `Err` is fatal: the source stops without
    /// acknowledging them. Also called when the source stops.
    fn checkpoint(&mut self) -> Result<(), String> {
        Ok(())
    }
}

/// Makes a fresh stage for a run (a stage keeps state: caches, buffers).
pub trait MakeTransform: Send + Sync + std::fmt::Debug {
    fn make(&self) -> Box<dyn Transform>;

    /// What kind of stage it is, as the console labels it (`SQL`, `Cybus rules`).
    fn kind(&self) -> &'static str {
        "stage"
    }
}

/// A time bound that never fires in practice: a day.
pub(crate) fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400)
}
