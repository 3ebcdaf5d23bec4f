//! The pipeline's sources and sinks: generator, MQTT (source and sink),
//! file and PostgreSQL, each with its configuration next to its runtime.
//! Sources hand batches to their sinks over bounded channels (the
//! back-pressure path); sinks implement [`crate::sink::Sink`] and leave
//! confirmation, retries and dead letters to its runner.

pub mod file;
pub mod generator;
pub mod mqtt;
pub mod postgres;

use std::sync::Arc;

use mqlink::source::RecordAck;
use tokio::sync::{mpsc, watch};

use crate::batch::{Batch, BusyTime, Item};
use crate::status::Component;

/// A sink's channel, and the sink (which counts what it was handed).
pub type SinkInput = (mpsc::Sender<Arc<Batch>>, Arc<Component>);

/// Where a source's batches go: one channel per sink reading it.
pub struct Outputs {
    pub senders: Vec<SinkInput>,
    pub stop: watch::Receiver<bool>,
    pub busy: Arc<BusyTime>,
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
            self.busy.clone(),
        ));
        for (tx, sink) in &self.senders {
            if tx.send(batch.clone()).await.is_err() {
                return false;
            }
            sink.handed
                .fetch_add(batch.len() as u64, std::sync::atomic::Ordering::Relaxed);
        }
        true
    }
}

/// The connector registry: a type name in a pipeline file and how its
/// options become a typed spec. Front ends (TOML/YAML, SQL, Cybus files)
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
