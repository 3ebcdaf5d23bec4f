//! The pipeline's sources and sinks: generator, MQTT (source and sink),
//! file and PostgreSQL, each with its configuration next to its runtime.
//! Sources hand batches to their sinks over bounded channels (the
//! back-pressure path); sinks implement [`crate::sink::Sink`] and leave
//! confirmation, retries and dead letters to its runner.

pub mod file;
pub mod generator;
pub mod mqtt;
pub mod postgres;

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use mqlink::source::RecordAck;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::batch::{Batch, BusyTime, Item};
use crate::status::Component;
use crate::transform::{Output, Transform};

/// A sink's channel, and the sink (which counts what it was handed).
pub type SinkInput = (mpsc::Sender<Arc<Batch>>, Arc<Component>);

/// Where a source's batches go: through the source's transform stage, if
/// it has one, then one channel per sink reading it.
pub struct Outputs {
    pub senders: Vec<SinkInput>,
    pub stop: watch::Receiver<bool>,
    pub busy: Arc<BusyTime>,
    pub stage: Option<Box<dyn Transform>>,
    /// The acknowledgements of the records handed to the stage and not yet
    /// carried out by a batch, in arrival order (`None`: QoS 0).
    pending: VecDeque<Option<RecordAck>>,
}

impl Outputs {
    pub fn new(
        senders: Vec<SinkInput>,
        stop: watch::Receiver<bool>,
        busy: Arc<BusyTime>,
        stage: Option<Box<dyn Transform>>,
    ) -> Outputs {
        Outputs {
            senders,
            stop,
            busy,
            stage,
            pending: VecDeque::new(),
        }
    }

    /// Shutdown was asked for: take no new messages.
    pub fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// When the stage has held records due without new input.
    pub fn deadline(&self) -> Option<Instant> {
        self.stage.as_ref().and_then(|s| s.deadline())
    }

    /// Hands a batch (`acks`: one slot per item, `None` for QoS 0, or empty
    /// when no record has one) to every sink, through the stage, waiting while a sink is full.
    /// False when a sink is gone.
    pub async fn send(
        &mut self,
        items: Vec<Item>,
        acks: Vec<Option<RecordAck>>,
        comp: &Component,
    ) -> bool {
        let Some(stage) = self.stage.as_mut() else {
            let n = items.len() as u64;
            return self
                .deliver(items, acks.into_iter().flatten().collect(), n, comp)
                .await;
        };
        let (n, given) = (items.len(), acks.len());
        self.pending.extend(acks);
        self.pending.extend((given..n).map(|_| None));
        let out = stage.apply(items, Instant::now());
        self.settle(out, comp).await
    }

    /// Releases what the stage holds that is due by now (a burst interval).
    pub async fn flush_due(&mut self, comp: &Component) -> bool {
        let Some(stage) = self.stage.as_mut() else {
            return true;
        };
        let out = stage.flush(Instant::now());
        self.settle(out, comp).await
    }

    /// Faults are counted and logged; the acknowledgements of every record
    /// the stage no longer holds go with the output batch.
    async fn settle(&mut self, out: Output, comp: &Component) -> bool {
        for f in &out.faults {
            tracing::error!(component = %comp.path(), topic = f.topic.as_deref().unwrap_or(""), error = %f.reason, "Record skipped: its rule failed; the message is acknowledged.");
        }
        if let Some(f) = out.faults.last() {
            comp.record_faults
                .fetch_add(out.faults.len() as u64, Ordering::Relaxed);
            comp.skipped
                .fetch_add(out.faults.len() as u64, Ordering::Relaxed);
            comp.set_error(f.reason.clone());
        }
        let held = self.stage.as_ref().map_or(0, |s| s.held());
        let done = self.pending.len().saturating_sub(held);
        let acks: Vec<RecordAck> = self.pending.drain(..done).flatten().collect();
        self.deliver(out.items, acks, done as u64, comp).await
    }

    /// One batch to every sink; a batch without records (all filtered)
    /// is acknowledged at once.
    async fn deliver(
        &mut self,
        items: Vec<Item>,
        acks: Vec<RecordAck>,
        covers: u64,
        comp: &Component,
    ) -> bool {
        if items.is_empty() {
            for a in acks {
                a.ack();
            }
            comp.confirmed.fetch_add(covers, Ordering::Relaxed);
            return true;
        }
        let batch = Arc::new(
            Batch::new(
                items,
                acks,
                self.senders.len(),
                comp.confirmed.clone(),
                self.busy.clone(),
            )
            .covering(covers),
        );
        for (tx, sink) in &self.senders {
            if tx.send(batch.clone()).await.is_err() {
                return false;
            }
            sink.handed.fetch_add(batch.len() as u64, Ordering::Relaxed);
        }
        true
    }
}

/// The connector registry: a type name in a pipeline file and how its
/// options become a typed spec. Front ends (TOML/YAML, SQL, Cybus commissioning files)
/// look connectors up here instead of matching names themselves.
pub mod registry {
    use serde_json::Value as Json;

    use crate::spec::{ConfigError, Context, SinkKind, SourceConfig};

    pub struct SourceType {
        /// The name in files first, then accepted aliases.
        pub names: &'static [&'static str],
        pub parse: fn(&Context, Json) -> Result<SourceConfig, ConfigError>,
    }

    pub struct SinkType {
        pub names: &'static [&'static str],
        pub parse: fn(&Context, Json) -> Result<SinkKind, ConfigError>,
    }

    pub const SOURCES: &[SourceType] = &[
        SourceType {
            names: &["mqtt"],
            parse: super::mqtt::parse_source,
        },
        SourceType {
            names: &["generator"],
            parse: super::generator::parse,
        },
    ];

    pub const SINKS: &[SinkType] = &[
        SinkType {
            names: &["mqtt"],
            parse: super::mqtt::parse_sink,
        },
        SinkType {
            names: &["file"],
            parse: super::file::parse,
        },
        SinkType {
            names: &["postgres", "postgresql"],
            parse: super::postgres::parse,
        },
    ];
}
