//! mqlink pipelines: sources and sinks between MQTT brokers, files and
//! databases, with end-to-end acknowledgements — a message is acknowledged
//! to its broker only after every sink reading it has it.
//!
//! # Layout
//! - [`spec`]: the typed pipeline spec, parsed and validated once, and its
//!   TOML/YAML front end. Other front ends compile into the same spec.
//! - [`connectors`]: each source and sink with its options next to its
//!   runtime, and the registry that maps type names to them.
//! - [`cybus`]: Cybus Connectware service commissioning files, compiled
//!   into the same spec (`Cybus::Connection`, `Cybus::Endpoint`,
//!   `Cybus::Mapping`, their rules).
//! - [`transform`]: the per-record stage between a source and its sinks
//!   (rules: transform, filter, collect, burst).
//! - [`batch`]: records travelling from a source to its sinks, and the
//!   fan-out acknowledgement.
//! - [`redelivery`]: how a stage with state (a window) recognises the
//!   broker's redelivery of messages its last checkpoint already holds.
//! - [`sink`]: **the guarantee path** — one runner for every sink that owns
//!   confirmation, retry with backoff, dead letters, and the record-fault
//!   vs fatal-fault distinction.
//! - [`relay`]: acknowledgements carried through the embedded broker, so
//!   a chain of hops acknowledges the first broker only after the last.
//! - [`run()`]: `run(spec, options, shutdown) -> Report`.
//! - [`status`], [`http`]: counters, /metrics, /health, /ready, /status,
//!   and /query over the system tables (`system.connector_status`).
//! - [`logs`]: recent log events for `system.connector_logs`.
//! - [`console`]: the web console at `/` (a page over /status and /query).

pub mod batch;
pub mod connectors;
pub mod console;
pub mod cybus;
pub mod http;
pub mod logs;
pub mod masked;
pub mod pem;
pub mod redelivery;
pub mod relay;
mod run;
pub mod sink;
pub mod spec;
pub mod status;
pub mod transform;

pub use run::{run, Report, RunError, RunOptions, Stop};
pub use spec::{load, load_cybus, load_cybus_with, load_with, parse, ConfigError, Pipeline};
