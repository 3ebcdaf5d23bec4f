//! The connectors, and the registry that is the only list of them.
//!
//! A connector is one module (`file.rs`, `postgres.rs`, `generator.rs`,
//! `mqtt/`) with its typed config (serde, `deny_unknown_fields`, a doc
//! comment per key, defaults in one place), its validation against the
//! pipeline (connections, the inputs' columns), its runtime, and its
//! [`Connector`] metadata: name, other systems' spellings, directions, the
//! keys other front ends (SQL `WITH (…)`) may give and the metrics it
//! exports. Every front end — TOML/YAML, SQL, Cybus files — resolves
//! connectors through [`REGISTRY`], and the run drives them through
//! [`SourceSpec`] and [`SinkSpec`] without knowing their kind.
//!
//! Adding a connector: a module with a `pub const CONNECTOR: Connector`,
//! and its line in [`REGISTRY`] (docs/design/architecture.md).

pub mod file;
pub mod generator;
mod http_out;
pub mod influxdb;
pub mod mqtt;
#[cfg(feature = "parquet")]
pub mod parquet;
pub mod postgres;
pub mod webhook;

use std::any::Any;
use std::fmt::Debug;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use mqlink::format::Schema;
use mqlink::ConnectOptions;
use serde_json::Value as Json;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::batch::Batch;
use crate::relay::RelayTarget;
use crate::sink::Outputs;
use crate::spec::{ConfigError, Context};
use crate::status::Component;

pub use crate::sink::outputs::{Settle, SinkInput};

/// Every connector mqlink has: the only list. Front ends, `mqlink
/// validate`'s errors and the reference-docs test read it.
pub const REGISTRY: &[&Connector] = &[
    &mqtt::CONNECTOR,
    &generator::CONNECTOR,
    &file::CONNECTOR,
    &postgres::CONNECTOR,
    &influxdb::CONNECTOR,
    &webhook::CONNECTOR,
    #[cfg(feature = "parquet")]
    &parquet::CONNECTOR,
];

/// A connector's metadata and constructors.
pub struct Connector {
    /// Its name in pipeline files (`type = "…"`), /status and the `type`
    /// label of metrics.
    pub name: &'static str,
    pub source: Option<SourceType>,
    pub sink: Option<SinkType>,
    /// What it reaches besides MQTT brokers, for /ready and /status.
    pub reaches: Reaches,
}

/// What a connector's component must reach to be connected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reaches {
    /// Nothing outside the process (a generator, a file).
    Nothing,
    /// MQTT brokers, through the clients it starts.
    Broker,
    /// A database (its name, as said in /ready), connected or not.
    Database(&'static str),
}

/// Sources and sinks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Source,
    Sink,
}

/// A connector as a source.
pub struct SourceType {
    /// Other spellings of its name (Laminar's, Arroyo's), accepted in
    /// `type = "…"` and SQL's `connector = '…'` for this direction.
    pub aliases: &'static [&'static str],
    /// Its name in Laminar's `system.connector_status`.
    pub status_name: &'static str,
    /// Its records are decoded by a schema: a SQL table's columns become
    /// its `schema` key (a SQL source table).
    pub sql_columns: bool,
    /// The keys SQL's `WITH (…)` may give, with their SQL spellings.
    pub keys: &'static [Key],
    /// Every key of its config (`fields_of::<Config>`): the reference
    /// page lists each.
    pub fields: fn() -> &'static [&'static str],
    /// Metrics this source exports beside the pipeline's own.
    pub metrics: &'static [&'static str],
    pub parse: fn(&Context, Json) -> Result<SourceConfig, ConfigError>,
}

/// A connector as a sink.
pub struct SinkType {
    pub aliases: &'static [&'static str],
    pub status_name: &'static str,
    pub keys: &'static [Key],
    pub fields: fn() -> &'static [&'static str],
    pub metrics: &'static [&'static str],
    pub parse: fn(&Context, Json) -> Result<SinkSpecRef, ConfigError>,
}

/// A config key as front ends other than the pipeline file spell it.
pub struct Key {
    /// The key in a pipeline file (`a.b` for a key of a nested table).
    pub name: &'static str,
    /// Other spellings (Arroyo's, RisingWave's) in SQL `WITH (…)`.
    pub aliases: &'static [&'static str],
    pub ty: KeyType,
}

/// How a front end that has only text (SQL options) types a key's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyType {
    Text,
    /// `'true'` / `'false'`.
    Bool,
    Number,
    /// A number, or Arroyo's names (`AtLeastOnce`, `at_least_once`).
    Qos,
    /// Text, or a JSON list of strings (`'["a/#", "b/#"]'`).
    TextOrList,
    /// A JSON list, or names separated by commas (`'a, b'`).
    List,
}

impl Key {
    pub const fn text(name: &'static str) -> Key {
        Key::of(name, KeyType::Text)
    }
    pub const fn of(name: &'static str, ty: KeyType) -> Key {
        Key {
            name,
            aliases: &[],
            ty,
        }
    }
    pub const fn alias(mut self, aliases: &'static [&'static str]) -> Key {
        self.aliases = aliases;
        self
    }
}

impl Connector {
    /// The keys of one direction.
    pub fn keys(&self, d: Direction) -> &'static [Key] {
        match d {
            Direction::Source => self.source.as_ref().map_or(&[], |s| s.keys),
            Direction::Sink => self.sink.as_ref().map_or(&[], |s| s.keys),
        }
    }

    /// Every key of its config for direction `d`.
    pub fn config_fields(&self, d: Direction) -> &'static [&'static str] {
        match d {
            Direction::Source => self.source.as_ref().map_or(&[], |s| (s.fields)()),
            Direction::Sink => self.sink.as_ref().map_or(&[], |s| (s.fields)()),
        }
    }

    /// Its name or one of its aliases for direction `d`.
    pub fn is_called(&self, name: &str, d: Direction) -> bool {
        let aliases = match d {
            Direction::Source => self.source.as_ref().map(|s| s.aliases),
            Direction::Sink => self.sink.as_ref().map(|s| s.aliases),
        };
        aliases.is_some_and(|a| self.name == name || a.contains(&name))
    }
}

/// The connector `name` (or an alias) names for direction `d`.
pub fn find(name: &str, d: Direction) -> Option<&'static Connector> {
    REGISTRY.iter().copied().find(|c| c.is_called(name, d))
}

/// The sink connector SQL's `connector = 'name'` with `format = 'format'`
/// names: Arroyo's `filesystem` writes JSON lines (the file sink) or
/// Parquet (the Parquet sink).
pub fn find_sink(name: &str, format: Option<&str>) -> Option<&'static Connector> {
    #[cfg(feature = "parquet")]
    if format.is_some_and(|f| f.eq_ignore_ascii_case("parquet"))
        && file::CONNECTOR.is_called(name, Direction::Sink)
    {
        return Some(&parquet::CONNECTOR);
    }
    let _ = format;
    find(name, Direction::Sink)
}

/// The connector called `name` in files and /status.
pub fn named(name: &str) -> Option<&'static Connector> {
    REGISTRY.iter().copied().find(|c| c.name == name)
}

/// The names of direction `d`'s connectors, for errors ("use a, b or c").
pub fn names(d: Direction) -> Vec<&'static str> {
    REGISTRY
        .iter()
        .filter(|c| has(c, d))
        .map(|c| c.name)
        .collect()
}

fn has(c: &Connector, d: Direction) -> bool {
    match d {
        Direction::Source => c.source.is_some(),
        Direction::Sink => c.sink.is_some(),
    }
}

/// `a, b or c`.
pub fn one_of(names: &[&str]) -> String {
    match names {
        [] => String::new(),
        [one] => one.to_string(),
        [rest @ .., last] => format!("{} or {last}", rest.join(", ")),
    }
}

/// A loaded source: its validated config, driven by the run.
pub type SourceConfig = Arc<dyn SourceSpec>;
/// A loaded sink's connector config.
pub type SinkSpecRef = Arc<dyn SinkSpec>;

/// What a source's records carry, for checking a sink's topic template.
#[derive(Clone, Debug)]
pub enum Shape {
    /// Payload bytes only, no fields.
    Payload,
    /// `topic` and `payload` fields.
    TopicAndPayload,
    /// Decoded fields (columns, when known), the topic they came on and
    /// their original payload.
    Decoded(Option<Schema>),
    /// Fields made here: no topic, no original payload.
    Made(Schema),
}

/// A finished source to close once the sinks drained (closing sends the
/// acknowledgements given so far).
pub type Closing = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What a source needs to run.
pub struct SourceStart {
    /// `sources.NAME`.
    pub path: String,
    pub name: String,
    pub comp: Arc<Component>,
    pub out: Outputs,
    /// Its connection's session options, when it has a connection.
    pub options: Option<ConnectOptions>,
    /// Whether its connection is the embedded broker.
    pub embedded: bool,
    /// `run.state_dir`.
    pub state_dir: PathBuf,
    /// A sink it feeds wants the local buffer
    /// ([`SinkSpec::wants_local_buffer`]).
    pub wants_buffer: bool,
}

/// What a sink needs to run.
pub struct SinkStart {
    /// `sinks.NAME`.
    pub path: String,
    pub comp: Arc<Component>,
    pub rx: mpsc::Receiver<Arc<Batch>>,
    pub options: Option<ConnectOptions>,
    /// Set for a sink publishing into the embedded broker where
    /// acknowledgements are relayed.
    pub relay: Option<RelayTarget>,
}

impl SinkStart {
    /// Runs `sink` under the one sink runner, which owns confirmation,
    /// retries, dead letters and record-vs-destination faults.
    pub fn run<S: crate::sink::Sink + Send + 'static>(
        self,
        sink: S,
    ) -> tokio::task::JoinHandle<Result<(), String>> {
        let backoff = crate::sink::write_backoff();
        tokio::spawn(crate::sink::run(
            sink, self.path, self.comp, backoff, self.rx,
        ))
    }
}

/// A source's config, as the run drives it.
pub trait SourceSpec: Debug + Send + Sync + 'static {
    fn connector(&self) -> &'static Connector;
    /// The columns its records have, when it knows them.
    fn schema(&self) -> Option<Schema>;
    fn shape(&self) -> Shape;
    /// The connection it subscribes through, and its clients' number.
    fn connection(&self) -> Option<(&str, u16)> {
        None
    }
    /// Its records are made here, not received: it starts once every
    /// subscriber subscribed and stops first.
    fn generated(&self) -> bool {
        false
    }
    /// The filters of relayed messages it settles on a relaying connection
    /// (only sources that never dead-letter out of the pipeline's sight).
    fn settles_relayed(&self) -> Option<Vec<String>> {
        None
    }
    /// This source as a SQL stage's output of `schema` is seen by sinks.
    fn staged(&self, _schema: &Schema) -> Option<SourceConfig> {
        None
    }
    /// Runs until its records end or `out` says stop.
    fn run(&self, start: SourceStart) -> Pin<Box<dyn Future<Output = Option<Closing>> + Send>>;
    fn as_any(&self) -> &dyn Any;
}

/// A sink's config, as the run drives it.
pub trait SinkSpec: Debug + Send + Sync + 'static {
    fn connector(&self) -> &'static Connector;
    /// The connection it publishes through, and its clients' number.
    fn connection(&self) -> Option<(&str, u16)> {
        None
    }
    /// Its sources' `buffer.mode = "auto"` turns the durable local buffer
    /// on at QoS 1/2 whatever the protocol: it confirms records only at
    /// commits far apart (a Parquet file rolled every minute: the broker's
    /// window must not wait), or it writes each record once through a
    /// crash by the buffer's positions (the file sink).
    fn wants_local_buffer(&self) -> bool {
        false
    }
    /// Starts its runner (`crate::sink::run`) on its channel.
    fn spawn(&self, start: SinkStart) -> JoinHandle<Result<(), String>>;
    fn as_any(&self) -> &dyn Any;
}

impl dyn SourceSpec {
    /// The connector's own config type, for its module and tests.
    pub fn get<T: 'static>(&self) -> Option<&T> {
        self.as_any().downcast_ref()
    }
}

impl dyn SinkSpec {
    pub fn get<T: 'static>(&self) -> Option<&T> {
        self.as_any().downcast_ref()
    }
}

/// The field names of a serde struct, as its `Deserialize` declares them.
pub fn fields_of<T: serde::de::DeserializeOwned>() -> &'static [&'static str] {
    use serde::de::{self, Visitor};
    struct Probe(Option<&'static [&'static str]>);
    #[derive(Debug)]
    struct Stop;
    impl std::fmt::Display for Stop {
        fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("probe")
        }
    }
    impl std::error::Error for Stop {}
    impl de::Error for Stop {
        fn custom<M: std::fmt::Display>(_: M) -> Stop {
            Stop
        }
    }
    impl<'de> de::Deserializer<'de> for &mut Probe {
        type Error = Stop;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
            Err(Stop)
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Stop> {
            self.0 = Some(fields);
            Err(Stop)
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf option unit unit_struct newtype_struct seq tuple
            tuple_struct map enum identifier ignored_any
        }
    }
    let mut p = Probe(None);
    let _ = T::deserialize(&mut p);
    p.0.unwrap_or(&[])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every key a connector declares for other front ends is a key of
    /// its config, and names are unique across directions.
    #[test]
    fn declared_keys_are_config_keys() {
        let mut seen = Vec::new();
        for c in REGISTRY {
            for d in [Direction::Source, Direction::Sink] {
                if !has(c, d) {
                    continue;
                }
                let fields = c.config_fields(d);
                for k in c.keys(d) {
                    let top = k.name.split('.').next().unwrap_or_default();
                    assert!(
                        fields.contains(&top),
                        "{} {d:?}: {} is not a key of its config ({fields:?})",
                        c.name,
                        k.name
                    );
                }
                for n in std::iter::once(c.name).chain(match d {
                    Direction::Source => c.source.as_ref().unwrap().aliases.iter().copied(),
                    Direction::Sink => c.sink.as_ref().unwrap().aliases.iter().copied(),
                }) {
                    assert!(!seen.contains(&(n, d)) || n == c.name, "{n} twice");
                    seen.push((n, d));
                }
            }
        }
        assert_eq!(
            find("postgresql", Direction::Sink).unwrap().name,
            "postgres"
        );
        assert!(find("mqtt_sink", Direction::Source).is_none());
    }
}
