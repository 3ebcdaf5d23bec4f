//! The pipeline's sources and sinks: generator, MQTT (source and sink),
//! file and PostgreSQL. Each runs as one task; sources hand batches to
//! their sinks over bounded channels (the back-pressure path), sinks
//! confirm each batch once it is safe.

pub mod file;
pub mod generator;
pub mod mqtt;
pub mod postgres;

use std::sync::Arc;
use std::time::Duration;

use mqlink::source::RecordAck;
use tokio::sync::{mpsc, watch};

use crate::pipeline::batch::{Batch, Item};
use crate::pipeline::status::Component;

/// Where a source's batches go: one channel per sink reading it.
pub struct Outputs {
    pub senders: Vec<mpsc::Sender<Arc<Batch>>>,
    pub stop: watch::Receiver<bool>,
}

impl Outputs {
    /// Shutdown was asked for: take no new messages.
    pub fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// Hands a batch to every sink, waiting while one is full. False when
    /// a sink is gone.
    pub async fn send(&mut self, items: Vec<Item>, acks: Vec<RecordAck>, comp: &Component) -> bool {
        let batch = Arc::new(Batch::new(
            items,
            acks,
            self.senders.len(),
            comp.confirmed.clone(),
        ));
        for tx in &self.senders {
            if tx.send(batch.clone()).await.is_err() {
                return false;
            }
        }
        true
    }
}

/// Receives what is queued for a sink, up to `max` records, waiting only
/// for the first batch: under load batches grow, when idle they leave at once.
pub async fn next_batches(rx: &mut mpsc::Receiver<Arc<Batch>>, max: usize) -> Vec<Arc<Batch>> {
    let mut out = Vec::new();
    let Some(first) = rx.recv().await else {
        return out;
    };
    let mut n = first.len();
    out.push(first);
    while n < max {
        match rx.try_recv() {
            Ok(b) => {
                n += b.len();
                out.push(b);
            }
            Err(_) => break,
        }
    }
    out
}

/// Retry delays for a sink whose destination is down: 0.2 s doubling to 5 s.
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_millis((200u64 << attempt.min(5)).min(5000))
}
