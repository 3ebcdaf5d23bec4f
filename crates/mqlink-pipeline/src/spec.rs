//! The pipeline spec, typed and validated once, and its TOML/YAML front
//! end (`mqlink run FILE`; YAML by extension). Other front ends (SQL,
//! Cybus files) compile into the same [`Pipeline`].
//!
//! Connections are reusable profiles (Laminar's `CREATE CONNECTION`, Cybus'
//! connection resource); sources and sinks name them, and sinks name their
//! `inputs`. Option names are Laminar's for connections and MQTT sources,
//! Airbyte's and Quix's for sinks. Every error names the key path
//! (`sinks.db.url: …`), an unknown key is an error, and `${VAR}` /
//! `${VAR:-default}` in string values come from the environment.
//!
//! Loading happens in two steps so that errors keep their full path: the
//! file becomes a JSON tree (strings interpolated), then each component is
//! read by its `type` into its own struct through `serde_path_to_error`.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mqlink::format::{parse_column, Schema};
use mqlink::topic::validate_topic_name;
use mqlink::{
    Backoff, BrokerUrl, ConnectOptions, LastWill, Protocol, QoS, Secret, TlsKeys, TlsOptions,
};

use crate::connectors::{self, Direction};
pub use crate::connectors::{SinkSpecRef, SourceConfig};
use crate::transform::MakeTransform;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value as Json;

/// A configuration error: the key path and what is wrong with it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

pub(crate) fn err(path: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        path: path.into(),
        message: message.into(),
    }
}

/// Refuses `value` of `key` above `max` (`unit` says what `max` counts):
/// a duration or size far beyond any use would stall a run (a batch that
/// waits forever) or take memory it cannot have, long after it loaded.
pub(crate) fn at_most<T: PartialOrd + std::fmt::Display>(
    path: &str,
    key: &str,
    value: T,
    max: T,
    unit: &str,
) -> Result<(), ConfigError> {
    if value > max {
        return Err(err(
            format!("{path}.{key}"),
            format!("{value} is more than the maximum, {max} {unit}"),
        ));
    }
    Ok(())
}

/// Records in one batch at most (a source's, a PostgreSQL sink's).
pub const MAX_BATCH_SIZE: usize = 100_000;
/// A day in milliseconds: the longest a batch may wait for more records.
pub const MAX_BATCH_TIMEOUT_MS: u64 = 86_400_000;

/// The validated pipeline.
#[derive(Debug)]
pub struct Pipeline {
    pub connections: BTreeMap<String, ConnectionConfig>,
    pub sources: Vec<(String, SourceConfig)>,
    pub sinks: Vec<(String, SinkConfig)>,
    pub http: Option<HttpConfig>,
    pub run: RunConfig,
    pub embedded_broker: EmbeddedBrokerConfig,
    /// Per-record stages between a source and its sinks, by source name
    /// (the rules of a Cybus mapping); sources without one pass records on
    /// unchanged.
    pub transforms: BTreeMap<String, Arc<dyn MakeTransform>>,
    /// This process's name among several running the same file
    /// (`--instance`, `MQLINK_INSTANCE`; see [`Pipeline::set_instance`]).
    pub instance: Option<String>,
    /// Each connection's, source's and sink's configuration as loaded, by
    /// path (`sinks.out`), secrets masked (see [`crate::masked`]).
    pub shown: BTreeMap<String, Json>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    connections: BTreeMap<String, Json>,
    #[serde(default)]
    sources: BTreeMap<String, Json>,
    #[serde(default)]
    sinks: BTreeMap<String, Json>,
    #[serde(default)]
    http: Option<Json>,
    #[serde(default)]
    run: Option<Json>,
    #[serde(default)]
    embedded_broker: Option<Json>,
}

/// A broker connection profile (`[connections.NAME]`).
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct ConnectionConfig {
    /// Broker URL (`mqtt://`, `tcp://`, `mqtts://`, `ssl://`, `ws://`, `wss://`),
    /// a list of them for failover, or `"embedded"` for the built-in broker.
    pub broker: OneOrMany,
    /// Base of the client ids of the components using this connection
    /// [default: `mqlink-<connection name>`]; each MQTT client gets
    /// `<client_id>-<component>` (then `-<instance>` with `mqlink run
    /// --instance`, and `-<i>` with parallelism).
    pub client_id: Option<String>,
    /// `"3.1.1"` (or `"311"`) or `"5"` [default: MQTT 5, and 3.1.1 when
    /// the broker refuses it (logged): MQTT 5 announces the window the
    /// broker may send (Receive Maximum), 3.1.1 leaves it to the broker's
    /// limits — see docs/guides/broker-limits.md].
    #[serde(default, deserialize_with = "protocol")]
    pub protocol: Option<Protocol>,
    /// Start without the broker's stored session [default: true].
    #[serde(default = "yes")]
    pub clean_session: bool,
    /// MQTT 5 session expiry in seconds [default with clean_session = false: never].
    pub session_expiry_interval: Option<u32>,
    /// User name sent in CONNECT [default: none].
    pub username: Option<String>,
    /// Password sent in CONNECT [default: none]; never printed: not in
    /// logs, errors or /status.
    #[serde(default, deserialize_with = "secret")]
    pub password: Option<Secret>,
    /// Keep-alive in seconds [default: 60].
    pub keep_alive: Option<u64>,
    /// Seconds to wait for CONNACK [default: 10].
    pub connect_timeout: Option<u64>,
    /// CA certificate (PEM) to verify the broker with [default: the system's].
    pub tls_ca_cert: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS [default: none].
    pub tls_client_cert: Option<PathBuf>,
    /// Private key (PEM) of `tls_client_cert` [default: none].
    pub tls_client_key: Option<PathBuf>,
    /// Verify the broker's certificate [default: true].
    #[serde(default = "yes")]
    pub tls_verify: bool,
    /// Last will: the topic the broker publishes to when this client
    /// disconnects without DISCONNECT [default: no will].
    pub lwt_topic: Option<String>,
    /// The will's payload [default: empty].
    #[serde(default)]
    pub lwt_payload: String,
    /// The will's QoS: 0, 1 or 2 [default: 1].
    #[serde(default = "qos1", deserialize_with = "qos")]
    pub lwt_qos: QoS,
    /// The will is retained [default: false].
    #[serde(default)]
    pub lwt_retain: bool,
    /// First reconnect delay in seconds [default: 1].
    pub reconnect_interval: Option<f64>,
    /// Give up after this many failed attempts in a row [default: 0 = never].
    #[serde(default)]
    pub max_reconnect_attempts: u32,
    /// Each further delay is this much longer [default: 2.0], up to 30 s.
    pub reconnect_backoff_multiplier: Option<f64>,
    /// Publishes in flight at once [default: 1000].
    pub max_inflight: Option<u16>,
    /// The session options these keys make (client id and the embedded
    /// broker's address filled in per component at run time).
    #[serde(skip)]
    pub options: ConnectOptions,
}

/// A string or a list of strings.
#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

/// A sink (`[sinks.NAME]`), by `type`; `inputs` name sources.
#[derive(Debug, Clone)]
pub struct SinkConfig {
    pub inputs: Vec<String>,
    /// Its connector's config.
    pub kind: SinkSpecRef,
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address for /metrics, /health, /ready, /status and /query
    /// (required in `[http]`; `""` serves nothing; without `[http]`,
    /// `mqlink run` serves them on 127.0.0.1:9464, or a free port).
    pub listen: String,
    /// The environment variable holding the bearer token every endpoint
    /// but /health wants [default: `MQLINK_HTTP_TOKEN`]; required when
    /// `listen` is not a loopback address.
    pub token_env: Option<String>,
    /// `listen` is the default: taken, another free loopback port serves.
    #[serde(skip)]
    pub fallback: bool,
}

impl HttpConfig {
    /// The default of `mqlink run`: loopback, port 9464 or a free one.
    pub fn loopback_default() -> HttpConfig {
        HttpConfig {
            listen: "127.0.0.1:9464".into(),
            token_env: None,
            fallback: true,
        }
    }
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// Seconds SIGINT/SIGTERM waits for in-flight records [default: 30].
    #[serde(default = "thirty")]
    pub shutdown_timeout: f64,
    /// Seconds between status log lines when not on a terminal [default: 10].
    #[serde(default = "ten")]
    pub status_interval: f64,
    /// Seconds a component may make no progress while work waits for it
    /// before /ready turns 503 and a warning names it [default: 30].
    #[serde(default = "thirty")]
    pub stall_timeout: f64,
    /// Where the pipeline keeps what must survive a restart: the MQTT
    /// sources' local buffers, in `buffer/<client id>` [default:
    /// `mqlink-state` next to the pipeline file, or in the working
    /// directory for a pipeline not read from a file]; with an instance
    /// name (`mqlink run --instance NAME`), `<state_dir>/NAME`.
    pub state_dir: Option<PathBuf>,
}

/// [`RunConfig::state_dir`]'s default name.
pub const DEFAULT_STATE_DIR: &str = "mqlink-state";

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig {
            shutdown_timeout: 30.0,
            status_interval: 10.0,
            stall_timeout: 30.0,
            state_dir: None,
        }
    }
}

impl RunConfig {
    /// The state directory (see [`state_dir`](Self::state_dir)).
    pub fn state_dir(&self) -> PathBuf {
        self.state_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR))
    }
}

#[derive(Deserialize, Debug, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct EmbeddedBrokerConfig {
    /// Where the embedded broker listens [default: 127.0.0.1 on a free port].
    pub listen: Option<String>,
}

pub(crate) const fn yes() -> bool {
    true
}
pub(crate) const fn one_u16() -> u16 {
    1
}
pub(crate) const fn thousand() -> u64 {
    1000
}
pub(crate) const fn hundred() -> u64 {
    100
}
pub(crate) const fn batch_size() -> usize {
    1000
}
pub(crate) const fn pg_batch() -> usize {
    5000
}
const fn thirty() -> f64 {
    30.0
}
const fn ten() -> f64 {
    10.0
}
pub(crate) fn json_format() -> String {
    "json".into()
}

/// What an MQTT sink publishes (`format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SinkFormat {
    /// The record as a JSON object.
    #[default]
    Json,
    /// The original payload bytes of MQTT sources.
    Raw,
    /// Sparkplug B, as an edge node (`connectors::mqtt::edge`).
    SparkplugB,
}

impl<'de> Deserialize<'de> for SinkFormat {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match String::deserialize(d)?.as_str() {
            "json" => Ok(SinkFormat::Json),
            "raw" => Ok(SinkFormat::Raw),
            "sparkplug_b" => Ok(SinkFormat::SparkplugB),
            other => Err(serde::de::Error::custom(format!(
                "unknown format {other:?}: use json, raw or sparkplug_b"
            ))),
        }
    }
}

/// A secret may be written as a number (`password = 987654321`); an error
/// never shows the value.
fn secret_value<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    secret_text(Option::<Json>::deserialize(d)?).map_err(serde::de::Error::custom)
}

/// The text of a secret's value: a string, or a number or boolean written
/// without quotes (`password = 1234`); anything else is refused without
/// being shown, whatever its type.
pub fn secret_text(v: Option<Json>) -> Result<Option<String>, &'static str> {
    match v {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(s)) => Ok(Some(s)),
        Some(v @ (Json::Number(_) | Json::Bool(_))) => Ok(Some(v.to_string())),
        Some(_) => Err("expected a string (the value is not shown: it is a secret)"),
    }
}

pub(crate) fn secret<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Secret>, D::Error> {
    Ok(secret_value(d)?.filter(|s| !s.is_empty()).map(Secret::new))
}

pub(crate) fn secret_required<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Secret, D::Error> {
    secret_value(d)?
        .map(Secret::new)
        .ok_or_else(|| serde::de::Error::custom("missing"))
}

/// A protocol version, written as a string or a number (`5`, `311`).
fn protocol<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Protocol>, D::Error> {
    let text = match Option::<Json>::deserialize(d)? {
        None => return Ok(None),
        Some(Json::String(s)) => s,
        Some(other) => other.to_string(),
    };
    text.parse().map(Some).map_err(serde::de::Error::custom)
}

/// A schema table keeps its order (the order of the columns of a created table).
pub(crate) fn schema<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Schema>, D::Error> {
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = Schema;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a table of column names to types")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<Schema, A::Error> {
            let mut cols = Vec::new();
            let mut not_null = Vec::new();
            while let Some((name, ty)) = m.next_entry::<String, String>()? {
                let (ty, required) = parse_column(&ty)
                    .map_err(|e: String| serde::de::Error::custom(format!("{name}: {e}")))?;
                if required {
                    not_null.push(name.clone());
                }
                cols.push((name, ty));
            }
            Ok(Schema::new(cols).with_not_null(not_null))
        }
    }
    d.deserialize_map(V).map(Some)
}

/// Reads and validates a pipeline file without connecting anywhere.
pub fn load(path: &Path) -> Result<Pipeline, ConfigError> {
    load_with(path, &[])
}

/// [`load`], also for Cybus commissioning files (a YAML file whose
/// top-level `resources:` hold `Cybus::` types), whose parameters are
/// `params` (`--param name=value`) or `MQLINK_PARAM_<name>`.
pub fn load_with(path: &Path, params: &[(String, String)]) -> Result<Pipeline, ConfigError> {
    load_cybus(path, params, false)
}

/// [`load_with`]; with `strict` (`--strict`), a commissioning file's
/// resources mqlink does not run are refused instead of skipped.
pub fn load_cybus(
    path: &Path,
    params: &[(String, String)],
    strict: bool,
) -> Result<Pipeline, ConfigError> {
    load_cybus_with(path, params, strict, &|k| std::env::var(k).ok())
}

/// [`load_cybus`] with `env` looking up `${VAR}`s (the command line's
/// `--instance` is `${MQLINK_INSTANCE}`).
pub fn load_cybus_with(
    path: &Path,
    params: &[(String, String)],
    strict: bool,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Pipeline, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| err(path.display().to_string(), format!("cannot read: {e}")))?;
    let yaml = matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    );
    let mut p = if yaml && crate::cybus::is_commissioning_file(&text) {
        crate::cybus::parse_with(&text, params, env, strict)?
    } else if let Some((name, _)) = params.first() {
        return Err(err(
            format!("--param {name}"),
            "parameters belong to Cybus commissioning files (YAML with top-level resources: of Cybus:: types); this is a pipeline file (use ${VAR} from the environment)",
        ));
    } else {
        parse(&text, yaml, env)?
    };
    p.state_dir_next_to(path);
    Ok(p)
}

/// Parses pipeline text; `env` looks up `${VAR}`s.
pub fn parse(
    text: &str,
    yaml: bool,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Pipeline, ConfigError> {
    let mut tree: Json = if yaml {
        let invalid = |e: serde_yaml::Error| err("(file)", format!("invalid YAML: {e}"));
        // A key given twice is an error, as in TOML: YAML's own mapping
        // refuses it (with its line), a JSON map would keep the last.
        serde_yaml::from_str::<serde_yaml::Value>(text).map_err(invalid)?;
        serde_yaml::from_str(text).map_err(invalid)?
    } else {
        toml::from_str(text).map_err(|e| err("(file)", format!("invalid TOML: {e}")))?
    };
    interpolate(&mut tree, &mut String::new(), env)?;
    from_tree(tree)
}

/// Builds the pipeline from its tree (the file's keys, strings already
/// interpolated): what other front ends (Cybus commissioning files)
/// compile into.
pub fn from_tree(tree: Json) -> Result<Pipeline, ConfigError> {
    from_tree_with(tree, &BTreeMap::new())
}

/// [`from_tree`] for a front end whose stages change the columns of some
/// sources' records (SQL queries): sinks reading those sources are checked
/// against `stage_schemas` (by source name), not the source's own columns.
pub fn from_tree_with(
    tree: Json,
    stage_schemas: &BTreeMap<String, Schema>,
) -> Result<Pipeline, ConfigError> {
    let raw: RawConfig = typed("", tree)?;
    let shown = shown(&raw);

    let mut connections = BTreeMap::new();
    for (name, v) in raw.connections {
        let path = format!("connections.{name}");
        check_name(&path, &name)?;
        let mut c: ConnectionConfig = typed(&path, v)?;
        c.options = c.connect_options(&path)?;
        connections.insert(name, c);
    }

    let sources = read_sources(raw.sources, &connections)?;
    let sinks = read_sinks(raw.sinks, &connections, &sources, stage_schemas)?;
    for (name, _) in &sources {
        if !sinks.iter().any(|(_, s)| s.inputs.contains(name)) {
            return Err(err(
                format!("sources.{name}"),
                "no sink reads this source (add it to a sink's inputs)",
            ));
        }
    }
    if sources.is_empty() {
        return Err(err("sources", "at least one source is needed"));
    }

    let http: Option<HttpConfig> = raw.http.map(|v| typed("http", v)).transpose()?;
    if let Some(h) = http.as_ref().filter(|h| !h.listen.is_empty()) {
        h.listen.parse::<std::net::SocketAddr>().map_err(|_| {
            err(
                "http.listen",
                format!(
                    "{:?} is not an address like 127.0.0.1:9464 (\"\" serves nothing)",
                    h.listen
                ),
            )
        })?;
    }
    let run: RunConfig = raw
        .run
        .map(|v| typed("run", v))
        .transpose()?
        .unwrap_or_default();
    for (key, v) in [
        ("shutdown_timeout", run.shutdown_timeout),
        ("status_interval", run.status_interval),
        ("stall_timeout", run.stall_timeout),
    ] {
        // A day at most: beyond that a "timeout" bounds nothing.
        if !(v.is_finite() && v > 0.0 && v <= 86_400.0) {
            return Err(err(
                format!("run.{key}"),
                format!("{v} is not a number of seconds between 0 and 86400"),
            ));
        }
    }
    let embedded_broker: EmbeddedBrokerConfig = raw
        .embedded_broker
        .map(|v| typed("embedded_broker", v))
        .transpose()?
        .unwrap_or_default();
    if let Some(l) = &embedded_broker.listen {
        let addr = l.parse::<std::net::SocketAddr>().map_err(|_| {
            err(
                "embedded_broker.listen",
                format!("{l:?} is not an address like 127.0.0.1:1883"),
            )
        })?;
        if !addr.ip().is_loopback() {
            return Err(err(
                "embedded_broker.listen",
                format!("{l:?} is not a loopback address: the embedded broker of a pipeline takes any client without a password, so it listens on 127.0.0.1 only (run `mqlink broker -c FILE` with a password_file to serve a network)"),
            ));
        }
    }
    let pipeline = Pipeline {
        connections,
        sources,
        sinks,
        http,
        run,
        embedded_broker,
        transforms: BTreeMap::new(),
        instance: None,
        shown,
    };
    pipeline.check_client_ids()?;
    Ok(pipeline)
}

/// Each component's masked configuration, by path.
fn shown(raw: &RawConfig) -> BTreeMap<String, Json> {
    let sections = [
        ("connections", &raw.connections),
        ("sources", &raw.sources),
        ("sinks", &raw.sinks),
    ];
    sections
        .into_iter()
        .flat_map(|(section, map)| {
            map.iter()
                .map(move |(name, v)| (format!("{section}.{name}"), crate::masked::masked(v)))
        })
        .collect()
}

/// `[sources.*]`, each read by its connector.
fn read_sources(
    raw: BTreeMap<String, Json>,
    connections: &BTreeMap<String, ConnectionConfig>,
) -> Result<Vec<(String, SourceConfig)>, ConfigError> {
    let mut sources = Vec::new();
    for (name, v) in raw {
        let path = format!("sources.{name}");
        check_name(&path, &name)?;
        let (ty, body) = split_type(&path, v)?;
        let t = connector_of(&path, &ty, Direction::Source)?;
        let Some(t) = &t.source else {
            unreachable!("found for its source direction")
        };
        let ctx = Context {
            path: &path,
            connections,
            sources: &sources,
            inputs: &[],
        };
        let s = (t.parse)(&ctx, body)?;
        sources.push((name, s));
    }

    Ok(sources)
}

/// `[sinks.*]`, each read by its connector and checked against what it
/// sees of its inputs (their columns after a SQL stage).
fn read_sinks(
    raw: BTreeMap<String, Json>,
    connections: &BTreeMap<String, ConnectionConfig>,
    sources: &[(String, SourceConfig)],
    stage_schemas: &BTreeMap<String, Schema>,
) -> Result<Vec<(String, SinkConfig)>, ConfigError> {
    // What sinks see of each source: its columns after its stage.
    let sink_view: Vec<(String, SourceConfig)> = sources
        .iter()
        .map(|(name, s)| {
            let staged = stage_schemas.get(name).and_then(|schema| s.staged(schema));
            (name.clone(), staged.unwrap_or_else(|| s.clone()))
        })
        .collect();
    let mut sinks = Vec::new();
    for (name, v) in raw {
        let path = format!("sinks.{name}");
        check_name(&path, &name)?;
        if sources.iter().any(|(n, _)| *n == name) {
            return Err(err(
                &path,
                format!("the name {name:?} is already a source's; component names must be unique (client ids are derived from them)"),
            ));
        }
        let (ty, mut body) = split_type(&path, v)?;
        let inputs = sink_inputs(&path, &mut body, sources)?;
        let t = connector_of(&path, &ty, Direction::Sink)?;
        let Some(t) = &t.sink else {
            unreachable!("found for its sink direction")
        };
        let ctx = Context {
            path: &path,
            connections,
            sources: &sink_view,
            inputs: &inputs,
        };
        let kind = (t.parse)(&ctx, body)?;
        sinks.push((name, SinkConfig { inputs, kind }));
    }
    Ok(sinks)
}

/// Removes and checks a sink's `inputs`: at least one, each a source.
fn sink_inputs(
    path: &str,
    body: &mut Json,
    sources: &[(String, SourceConfig)],
) -> Result<Vec<String>, ConfigError> {
    let inputs: Vec<String> = match body.as_object_mut().and_then(|o| o.remove("inputs")) {
        None => {
            return Err(err(
                format!("{path}.inputs"),
                "missing: name the sources this sink reads",
            ))
        }
        Some(v) => typed(&format!("{path}.inputs"), v)?,
    };
    if inputs.is_empty() {
        return Err(err(
            format!("{path}.inputs"),
            "must name at least one source",
        ));
    }
    for (i, input) in inputs.iter().enumerate() {
        if !sources.iter().any(|(n, _)| n == input) {
            let known: Vec<&str> = sources.iter().map(|(n, _)| n.as_str()).collect();
            return Err(err(
                format!("{path}.inputs[{i}]"),
                format!("no source named {input:?} (sources: {})", known.join(", ")),
            ));
        }
    }
    Ok(inputs)
}

impl Pipeline {
    /// Every MQTT client of the pipeline with its id: no two may share one
    /// on the same broker, or the broker would disconnect one for the other.
    pub fn client_ids(&self) -> Vec<(String, String)> {
        let mut ids = Vec::new();
        let mut add = |path: String, conn: &str, component: &str, parallelism: u16| {
            let base = self.client_id_of(&self.connections[conn], conn, component);
            if parallelism > 1 {
                for i in 0..parallelism {
                    ids.push((path.clone(), format!("{base}-{i}")));
                }
            } else {
                ids.push((path, base));
            }
        };
        for (name, s) in &self.sources {
            if let Some((conn, n)) = s.connection() {
                add(format!("sources.{name}"), conn, name, n);
            }
        }
        for (name, s) in &self.sinks {
            if let Some((conn, n)) = s.kind.connection() {
                add(format!("sinks.{name}"), conn, name, n);
            }
        }
        ids
    }

    fn check_client_ids(&self) -> Result<(), ConfigError> {
        let mut seen = HashSet::new();
        for (path, id) in self.client_ids() {
            if id.len() > 65_535 {
                return Err(err(
                    path,
                    format!(
                        "client id {:?}… is {} bytes; MQTT allows 65535 (shorten the connection's client_id)",
                        id.chars().take(20).collect::<String>(),
                        id.len()
                    ),
                ));
            }
            if !seen.insert(id.clone()) {
                return Err(err(path, format!("client id {id:?} is used by another component; change the connection's client_id")));
            }
        }
        Ok(())
    }

    /// The session options of one component: its connection's, with the
    /// component's client id, and the embedded broker's address where the
    /// file says `"embedded"`.
    pub fn options_for(
        &self,
        connection: &ConnectionConfig,
        connection_name: &str,
        component: &str,
        embedded: Option<&BrokerUrl>,
    ) -> ConnectOptions {
        let mut opts = connection.options.clone();
        opts.client_id = Some(self.client_id_of(connection, connection_name, component));
        if let (true, Some(url)) = (connection.is_embedded(), embedded) {
            opts.brokers = vec![url.clone()];
        }
        opts
    }

    /// A component's client id: its connection's
    /// [`client_id_for`](ConnectionConfig::client_id_for), then
    /// `-<instance>` when the process has one (parallel sessions add their
    /// `-<i>` after it).
    fn client_id_of(&self, c: &ConnectionConfig, connection: &str, component: &str) -> String {
        let id = c.client_id_for(connection, component);
        match &self.instance {
            Some(i) => format!("{id}-{i}"),
            None => id,
        }
    }

    /// Names this process among several running the same file (`mqlink
    /// run --instance NAME`, or `MQLINK_INSTANCE`, e.g. a Kubernetes pod's
    /// name): `-NAME` is appended to every MQTT client id, so that the
    /// processes do not take each other's sessions over, and the state
    /// directory becomes `<state_dir>/NAME`, so that each keeps its own
    /// buffers. Call it after the state directory is settled
    /// ([`state_dir_next_to`](Self::state_dir_next_to)).
    pub fn set_instance(&mut self, name: &str) -> Result<(), ConfigError> {
        check_instance(name).map_err(|m| err("--instance (MQLINK_INSTANCE)", m))?;
        self.run.state_dir = Some(self.run.state_dir().join(name));
        self.instance = Some(name.to_string());
        self.check_client_ids()
    }

    /// The connection named `name` (a name checked when the file was loaded).
    /// Without `run.state_dir`: `mqlink-state` next to the pipeline file.
    pub fn state_dir_next_to(&mut self, file: &Path) {
        if self.run.state_dir.is_none() {
            let dir = file.parent().unwrap_or(Path::new("."));
            self.run.state_dir = Some(dir.join(DEFAULT_STATE_DIR));
        }
    }

    pub fn connection(&self, name: &str) -> Option<&ConnectionConfig> {
        self.connections.get(name)
    }

    /// Whether any connection asks for the embedded broker.
    pub fn wants_embedded_broker(&self) -> bool {
        self.connections.values().any(|c| c.is_embedded())
    }
}

/// The environment variable naming this process among several running
/// the same file (what `mqlink run --instance` sets for the file's
/// `${MQLINK_INSTANCE}`): see [`Pipeline::set_instance`].
pub const INSTANCE_ENV: &str = "MQLINK_INSTANCE";

/// What an instance name may be: it ends client ids and names a
/// directory, so letters, digits, `.`, `_` and `-`, 1 to 64 of them, not
/// starting with `.`.
pub fn check_instance(name: &str) -> Result<(), String> {
    let fits = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if name.is_empty() || name.len() > 64 || name.starts_with('.') || !name.chars().all(fits) {
        return Err(format!(
            "{name:?} is not an instance name: 1 to 64 letters, digits, '.', '_' or '-', not starting with '.' (a pod's or host's name fits)"
        ));
    }
    Ok(())
}

impl ConnectionConfig {
    pub fn is_embedded(&self) -> bool {
        self.broker.to_vec().iter().any(|b| b == "embedded")
    }

    /// `<client_id>-<component>`, or `mqlink-<connection>-<component>`.
    pub fn client_id_for(&self, connection: &str, component: &str) -> String {
        match &self.client_id {
            Some(id) => format!("{id}-{component}"),
            None => format!("mqlink-{connection}-{component}"),
        }
    }

    /// The session options of this connection; `"embedded"` stands for an
    /// address known only when the run starts the embedded broker.
    fn connect_options(&self, path: &str) -> Result<ConnectOptions, ConfigError> {
        let embedded = "mqtt://127.0.0.1:1";
        let mut brokers = Vec::new();
        let list = self.broker.to_vec();
        if list.is_empty() {
            return Err(err(
                format!("{path}.broker"),
                "at least one broker URL is needed",
            ));
        }
        for (i, b) in list.iter().enumerate() {
            let key = match self.broker {
                OneOrMany::One(_) => format!("{path}.broker"),
                OneOrMany::Many(_) => format!("{path}.broker[{i}]"),
            };
            let url = if b == "embedded" {
                embedded
            } else {
                b.as_str()
            };
            let parsed: BrokerUrl = url.parse().map_err(|e| err(key, format!("{e}")))?;
            brokers.push(parsed);
        }
        // Bounded, so that no absurd number reaches a timer: keep-alive is
        // 16 bits on the wire, other waits are a day at most.
        let secs = |key: &str, v: Option<f64>, default: f64| -> Result<Duration, ConfigError> {
            let v = v.unwrap_or(default);
            let max = if key == "keep_alive" {
                65_535.0
            } else {
                86_400.0
            };
            if v.is_finite() && (0.0..=max).contains(&v) {
                Ok(Duration::from_secs_f64(v))
            } else {
                Err(err(
                    format!("{path}.{key}"),
                    format!("{v} is not a number of seconds between 0 and {max}"),
                ))
            }
        };
        let last_will = match &self.lwt_topic {
            None => None,
            Some(t) => {
                validate_topic_name(t)
                    .map_err(|e| err(format!("{path}.lwt_topic"), e.to_string()))?;
                Some(LastWill {
                    topic: t.clone(),
                    payload: self.lwt_payload.clone().into(),
                    qos: self.lwt_qos,
                    retain: self.lwt_retain,
                })
            }
        };
        let mut opts = ConnectOptions {
            brokers,
            client_id: Some(self.client_id_for("x", "y")),
            username: self.username.clone(),
            password: self.password.clone(),
            tls: TlsOptions {
                ca_file: self.tls_ca_cert.clone(),
                client_cert: self.tls_client_cert.clone(),
                client_key: self.tls_client_key.clone(),
                insecure: !self.tls_verify,
                server_name: None,
                keys: TlsKeys::PIPELINE,
            },
            keep_alive: secs("keep_alive", self.keep_alive.map(|v| v as f64), 60.0)?,
            connect_timeout: secs(
                "connect_timeout",
                self.connect_timeout.map(|v| v as f64),
                10.0,
            )?,
            clean_session: self.clean_session,
            session_expiry_interval: self.session_expiry_interval,
            last_will,
            max_inflight: self.max_inflight.unwrap_or(1000),
            reconnect: Backoff {
                initial_interval: secs("reconnect_interval", self.reconnect_interval, 1.0)?,
                multiplier: match self.reconnect_backoff_multiplier.unwrap_or(2.0) {
                    m if m.is_finite() && (1.0..=100.0).contains(&m) => m,
                    m => {
                        return Err(err(
                            format!("{path}.reconnect_backoff_multiplier"),
                            format!("{m} is not a number between 1 and 100"),
                        ))
                    }
                },
                max_attempts: self.max_reconnect_attempts,
                ..Backoff::default()
            },
            ..ConnectOptions::default()
        };
        opts.protocol_or_default(self.protocol);
        opts.validate().map_err(|e| err(path, e.to_string()))?;
        // The files are read now, so `validate` finds a missing or broken
        // one (when TLS is used: a connection reads them only then).
        let tls = opts.brokers.iter().any(|b| b.transport.is_tls());
        let checked = if tls { opts.tls.check() } else { Ok(()) };
        checked.map_err(|e| match &e {
            mqlink::options::OptionsError::TlsFile { what, .. } => {
                err(format!("{path}.{what}"), e.to_string())
            }
            _ => err(path, e.to_string()),
        })?;
        Ok(opts)
    }
}

pub(crate) fn connection<'a>(
    path: &str,
    name: &str,
    connections: &'a BTreeMap<String, ConnectionConfig>,
) -> Result<&'a ConnectionConfig, ConfigError> {
    connections.get(name).ok_or_else(|| {
        let known: Vec<&str> = connections.keys().map(String::as_str).collect();
        err(
            format!("{path}.connection"),
            format!(
                "no connection named {name:?} (connections: {})",
                known.join(", ")
            ),
        )
    })
}

/// A QoS key: 0, 1 or 2, kept as [`QoS`].
pub(crate) fn qos<'de, D: serde::Deserializer<'de>>(d: D) -> Result<QoS, D::Error> {
    let q = i64::deserialize(d)?;
    u8::try_from(q)
        .ok()
        .and_then(QoS::from_u8)
        .ok_or_else(|| serde::de::Error::custom(format!("{q} is not a QoS: use 0, 1 or 2")))
}

pub(crate) const fn qos1() -> QoS {
    QoS::AtLeastOnce
}

/// What a connector's options are checked against while loading.
pub struct Context<'a> {
    /// `sources.NAME` or `sinks.NAME`.
    pub path: &'a str,
    pub connections: &'a BTreeMap<String, ConnectionConfig>,
    /// The sources read so far (all of them, for a sink).
    pub sources: &'a [(String, SourceConfig)],
    /// A sink's inputs (empty for a source).
    pub inputs: &'a [String],
}

impl Context<'_> {
    /// The source named `name`.
    pub fn source(&self, name: &str) -> Option<&SourceConfig> {
        self.sources.iter().find(|(n, _)| n == name).map(|(_, s)| s)
    }
}

/// The connector a component's `type` names, or an error listing the
/// registry's connectors of that direction.
fn connector_of(
    path: &str,
    ty: &str,
    d: Direction,
) -> Result<&'static connectors::Connector, ConfigError> {
    connectors::find(ty, d).ok_or_else(|| {
        let what = match d {
            Direction::Source => "source",
            Direction::Sink => "sink",
        };
        err(
            format!("{path}.type"),
            format!(
                "unknown {what} type {ty:?}: use {}",
                connectors::one_of(&connectors::names(d))
            ),
        )
    })
}

fn check_name(path: &str, name: &str) -> Result<(), ConfigError> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(err(
            path,
            format!("name {name:?}: use letters, digits, '_' and '-'"),
        ));
    }
    Ok(())
}

/// Removes and returns a component's `type`.
fn split_type(path: &str, mut v: Json) -> Result<(String, Json), ConfigError> {
    let Some(obj) = v.as_object_mut() else {
        return Err(err(path, "expected a table of options"));
    };
    match obj.remove("type") {
        Some(Json::String(t)) => Ok((t, v)),
        Some(other) => Err(err(
            format!("{path}.type"),
            format!("expected a string, found {other}"),
        )),
        None => Err(err(format!("{path}.type"), "missing")),
    }
}

/// Deserializes `v` as `T`, naming the key path of any error below `prefix`.
pub(crate) fn typed<T: DeserializeOwned>(prefix: &str, v: Json) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let inner = e.path().to_string();
        let path = match (prefix.is_empty(), inner.as_str()) {
            (true, ".") => "(file)".to_string(),
            (true, _) => inner.clone(),
            (false, ".") => prefix.to_string(),
            (false, _) if inner.starts_with('[') => format!("{prefix}{inner}"),
            (false, _) => format!("{prefix}.{inner}"),
        };
        err(path, e.into_inner().to_string())
    })
}

/// Replaces `${VAR}` and `${VAR:-default}` in every string; `$${` is a literal `${`.
pub fn interpolate(
    v: &mut Json,
    path: &mut String,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    match v {
        Json::String(s) if s.contains('$') => *s = expand(s, path, env)?,
        Json::Array(a) => {
            for (i, item) in a.iter_mut().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                interpolate(item, path, env)?;
                path.truncate(len);
            }
        }
        Json::Object(o) => {
            for (k, item) in o.iter_mut() {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(k);
                interpolate(item, path, env)?;
                path.truncate(len);
            }
        }
        _ => {}
    }
    Ok(())
}

fn expand(
    s: &str,
    path: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        if let Some(r) = rest.strip_prefix("$${") {
            out.push_str("${");
            rest = r;
            continue;
        }
        let Some(body_start) = rest.strip_prefix("${") else {
            out.push('$');
            rest = &rest[1..];
            continue;
        };
        let Some(end) = body_start.find('}') else {
            return Err(err(
                path,
                "unclosed ${ in value (write $${ for a literal ${)",
            ));
        };
        let body = &body_start[..end];
        let (name, default) = match body.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (body, None),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(err(
                path,
                format!("${{{body}}}: {name:?} is not an environment variable name"),
            ));
        }
        match (env(name), default) {
            (Some(v), _) => out.push_str(&v),
            (None, Some(d)) => out.push_str(d),
            (None, None) => {
                return Err(err(
                    path,
                    format!("environment variable {name} is not set (write ${{{name}:-default}} for a default)"),
                ))
            }
        }
        rest = &body_start[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connectors::mqtt::MqttSourceConfig;

    const EXAMPLE: &str = r#"
[connections.local]
broker = "mqtt://127.0.0.1:1883"
client_id = "ingest"
protocol = "5"
clean_session = false
session_expiry_interval = 3600
username = "${MQTT_USER:-}"
password = "${MQTT_PASSWORD:-}"

[sources.devices]
type = "generator"
count = 100000
rate = 20000
devices = 100

[sinks.to_broker]
type = "mqtt"
inputs = ["devices"]
connection = "local"
topic = "sensors/{device_id}/telemetry"
qos = 1

[sources.telemetry]
type = "mqtt"
connection = "local"
topics = ["sensors/+/telemetry"]
qos = 1
format = "json"
schema = { device_id = "text", seq = "bigint", timestamp = "timestamp", temperature = "double", humidity = "double" }
dead_letter_topic = "errors/telemetry"

[sinks.archive]
type = "file"
inputs = ["telemetry"]
path = "out/telemetry.jsonl"

[sinks.db]
type = "postgres"
inputs = ["telemetry"]
url = "postgres://postgres@127.0.0.1:5432/test"
table = "telemetry"
create_table = true
primary_key = ["device_id", "seq"]

[http]
listen = "127.0.0.1:9464"
"#;

    fn env(k: &str) -> Option<String> {
        match k {
            "MQTT_PASSWORD" => Some("s3cret-pw".into()),
            _ => None,
        }
    }

    fn error_of(text: &str) -> String {
        parse(text, false, &env).unwrap_err().to_string()
    }

    #[test]
    fn the_issue_example_loads() {
        let p = parse(EXAMPLE, false, &env).unwrap();
        assert_eq!(p.sources.len(), 2);
        assert_eq!(p.sinks.len(), 3);
        let c = &p.connections["local"];
        assert_eq!(c.password.as_ref().unwrap().expose(), "s3cret-pw");
        assert_eq!(c.username.as_deref(), Some(""));
        let Some(m) = p.sources[1].1.get::<MqttSourceConfig>() else {
            panic!()
        };
        let cols: Vec<&str> = m
            .schema
            .as_ref()
            .unwrap()
            .columns
            .iter()
            .map(|(n, _)| &**n)
            .collect();
        assert_eq!(
            cols,
            ["device_id", "seq", "timestamp", "temperature", "humidity"],
            "schema order kept"
        );
        let ids: Vec<String> = p.client_ids().into_iter().map(|(_, id)| id).collect();
        assert_eq!(ids, ["ingest-telemetry", "ingest-to_broker"]);
        assert!(
            !format!("{p:?}").contains("s3cret-pw"),
            "no secret in Debug"
        );
    }

    #[test]
    fn an_instance_ends_every_client_id_and_owns_a_state_dir() {
        let mut p = parse(EXAMPLE, false, &env).unwrap();
        p.state_dir_next_to(Path::new("/etc/mqlink/p.toml"));
        p.set_instance("pod-7f9c.a_1").unwrap();
        let ids: Vec<String> = p.client_ids().into_iter().map(|(_, id)| id).collect();
        assert_eq!(
            ids,
            [
                "ingest-telemetry-pod-7f9c.a_1",
                "ingest-to_broker-pod-7f9c.a_1"
            ]
        );
        let c = &p.connections["local"];
        let opts = p.options_for(c, "local", "telemetry", None);
        assert_eq!(
            opts.client_id.as_deref(),
            Some("ingest-telemetry-pod-7f9c.a_1")
        );
        assert_eq!(
            p.run.state_dir(),
            Path::new("/etc/mqlink/mqlink-state/pod-7f9c.a_1")
        );
        for bad in ["", ".hidden", "a/b", "a b", &"x".repeat(65)] {
            let e = p.set_instance(bad).unwrap_err().to_string();
            assert!(e.starts_with("--instance (MQLINK_INSTANCE): "), "{e}");
        }
    }

    #[test]
    fn yaml_loads_too() {
        let yaml = r#"
connections:
  local: { broker: "mqtt://127.0.0.1:1883" }
sources:
  t: { type: mqtt, connection: local, topics: "a/#", schema: { id: bigint, name: text } }
sinks:
  f: { type: file, inputs: [t], path: out.jsonl }
"#;
        let p = parse(yaml, true, &env).unwrap();
        assert_eq!(p.client_ids()[0].1, "mqlink-local-t");
    }

    #[test]
    fn errors_name_the_key_path() {
        let with = |from: &str, to: &str| {
            assert!(EXAMPLE.contains(from), "{from}");
            error_of(&EXAMPLE.replacen(from, to, 1))
        };
        assert_eq!(
            with("url = \"postgres://", "urll = \"postgres://"),
            "sinks.db.urll: unknown field `urll`, expected one of `url`, `table`, `create_table`, `primary_key`, `batch_size`"
        );
        assert!(with("qos = 1\nformat", "qos = 3\nformat")
            .starts_with("sources.telemetry.qos: 3 is not a QoS"));
        assert!(with("sensors/+/telemetry\"]", "sensors/#/telemetry\"]")
            .starts_with("sources.telemetry.topics[0]: "));
        assert!(with("seq = \"bigint\"", "seq = \"bignum\"")
            .starts_with("sources.telemetry.schema: seq: unknown column type \"bignum\""));
        assert!(with(
            "inputs = [\"telemetry\"]\npath",
            "inputs = [\"telemetri\"]\npath"
        )
        .starts_with("sinks.archive.inputs[0]: no source named \"telemetri\""));
        assert!(with(
            "connection = \"local\"\ntopic =",
            "connection = \"remote\"\ntopic ="
        )
        .starts_with("sinks.to_broker.connection: no connection named \"remote\""));
        assert!(with("type = \"file\"", "type = \"s3\"")
            .starts_with("sinks.archive.type: unknown sink type \"s3\""));
        assert!(with("\"device_id\", \"seq\"]", "\"device\", \"seq\"]")
            .starts_with("sinks.db.primary_key[0]: \"device\" is not a column"));
        assert!(with(
            "broker = \"mqtt://127.0.0.1:1883\"",
            "broker = \"http://x\""
        )
        .starts_with("connections.local.broker: "));
        assert!(with("count = 100000", "count = -1").starts_with("sources.devices.count: "));
        assert!(with(
            "topic = \"sensors/{device_id}/telemetry\"",
            "topic = \"sensors/{device_id/telemetry\""
        )
        .starts_with("sinks.to_broker.topic: "));
        assert!(with("[http]", "[htttp]").starts_with("htttp: unknown field `htttp`"));
        assert!(
            with("listen = \"127.0.0.1:9464\"", "listen = \"everywhere\"")
                .starts_with("http.listen: ")
        );
        let e = with(
            "password = \"${MQTT_PASSWORD:-}\"",
            "password = \"${MISSING_PW}\"",
        );
        assert_eq!(e, "connections.local.password: environment variable MISSING_PW is not set (write ${MISSING_PW:-default} for a default)");
        assert!(
            with("url = \"postgres://postgres@", "url = \"mysql://postgres@")
                .starts_with("sinks.db.url: not a PostgreSQL URL")
        );
        assert!(with("5432/test\"", "5432/test?sslmode=require\"")
            .starts_with("sinks.db.url: sslmode=require"));
    }

    /// `protocol` and an MQTT sink's `format` are enums from the load on;
    /// the spellings users write still load, and a wrong one names its key.
    #[test]
    fn protocol_and_sink_format_are_typed_at_load() {
        let with = |from: &str, to: &str| {
            assert!(EXAMPLE.contains(from), "{from}");
            parse(&EXAMPLE.replacen(from, to, 1), false, &env)
        };
        for (written, protocol) in [
            ("\"5\"", Protocol::V5),
            ("5", Protocol::V5),
            ("\"3.1.1\"", Protocol::V311),
            ("311", Protocol::V311),
            ("\"mqttv311\"", Protocol::V311),
        ] {
            let p = with(
                "protocol = \"5\"\nclean_session = false\nsession_expiry_interval = 3600",
                &format!("protocol = {written}"),
            )
            .unwrap();
            let c = &p.connections["local"];
            assert_eq!((c.protocol, c.options.protocol), (Some(protocol), protocol));
        }
        let e = with("protocol = \"5\"", "protocol = \"6\"").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("connections.local.protocol: invalid protocol version \"6\""),
            "{e}"
        );
        let raw = "topic = \"sensors/{device_id}/telemetry\"";
        let format = |p: Pipeline| {
            let (_, sink) = p.sinks.into_iter().find(|(n, _)| n == "to_broker").unwrap();
            let m = sink.kind.get::<crate::connectors::mqtt::MqttSinkConfig>();
            m.expect("an MQTT sink").format
        };
        assert_eq!(format(with(raw, raw).unwrap()), SinkFormat::Json);
        let written = |f: &str| with(raw, &format!("{raw}\nformat = \"{f}\""));
        assert_eq!(format(written("raw").unwrap()), SinkFormat::Raw);
        assert_eq!(
            written("xml").unwrap_err().to_string(),
            "sinks.to_broker.format: unknown format \"xml\": use json, raw or sparkplug_b"
        );
        // Sparkplug B: its own topics, the edge node required.
        let e = written("sparkplug_b").unwrap_err().to_string();
        assert!(
            e.starts_with(
                "sinks.to_broker.topic: format = \"sparkplug_b\" publishes to Sparkplug's topics"
            ),
            "{e}"
        );
        let e = with(raw, "format = \"sparkplug_b\"")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("sinks.to_broker.sparkplug: missing"), "{e}");
        let edge =
            "format = \"sparkplug_b\"\nsparkplug = { group_id = \"a/b\", edge_node_id = \"e\" }";
        let e = with(raw, edge).unwrap_err().to_string();
        assert!(
            e.starts_with(
                "sinks.to_broker.sparkplug.group_id: \"a/b\": a Sparkplug id is one topic level"
            ),
            "{e}"
        );
        let p = with(raw, &edge.replace("a/b", "plant")).unwrap();
        assert_eq!(format(p), SinkFormat::SparkplugB);
    }

    #[test]
    fn templates_are_checked_against_the_inputs() {
        let with = |from: &str, to: &str| {
            assert!(EXAMPLE.contains(from), "{from}");
            error_of(&EXAMPLE.replacen(from, to, 1))
        };
        // The generator's records have device_id, not devce_id.
        assert_eq!(
            with("sensors/{device_id}/telemetry\"\nqos", "sensors/{devce_id}/telemetry\"\nqos"),
            "sinks.to_broker.topic: sensors/{devce_id}/telemetry: {devce_id}: \"devce_id\" is not a field of sources.devices (fields: device_id, seq, timestamp, temperature, humidity)"
        );
        assert!(with("sensors/{device_id}/telemetry\"\nqos", "sensors/{stream}\"\nqos")
            .contains("{stream} is the topic a record arrived on, and records of sources.devices (a generator) have none"));
        assert!(with(
            "sensors/{device_id}/telemetry\"\nqos",
            "sensors/{key}\"\nqos"
        )
        .contains("records of a pipeline have no key"));
        assert!(
            with("sensors/{device_id}/telemetry\"\nqos", "s/{seq.x}\"\nqos")
                .contains("field \"seq\" of sources.devices is bigint, not json")
        );
        // A raw bridge can only route by the source topic.
        let raw = r#"
[connections.c]
broker = "mqtt://h"
[sources.s]
type = "mqtt"
connection = "c"
topics = "a/#"
format = "raw_bytes"
[sinks.k]
type = "mqtt"
inputs = ["s"]
connection = "c"
topic = "b/{id}"
"#;
        assert!(error_of(raw).starts_with(
            "sinks.k.topic: b/{id}: {id}: records of sources.s are raw payload bytes"
        ));
        parse(&raw.replace("b/{id}", "b/{stream}"), false, &env).unwrap();
        // Without a schema the fields cannot be known: accepted.
        parse(
            &raw.replace("format = \"raw_bytes\"", "format = \"json\""),
            false,
            &env,
        )
        .unwrap();
    }

    #[test]
    fn columns_and_bad_data() {
        let p = parse(
            &EXAMPLE.replace("seq = \"bigint\"", "seq = \"bigint not null\""),
            false,
            &env,
        )
        .unwrap();
        let Some(m) = p.sources[1].1.get::<MqttSourceConfig>() else {
            panic!()
        };
        assert!(m.schema.as_ref().unwrap().is_not_null("seq"));
        assert!(!m.schema.as_ref().unwrap().is_not_null("device_id"));
        assert_eq!(m.bad_data(), crate::connectors::mqtt::BadData::DeadLetter);
        let no_dlq = EXAMPLE.replace(
            "dead_letter_topic = \"errors/telemetry\"",
            "bad_data = \"dead_letter\"",
        );
        assert_eq!(
            error_of(&no_dlq),
            "sources.telemetry.bad_data: dead_letter needs a dead_letter_topic"
        );
        let fail = EXAMPLE.replace(
            "dead_letter_topic = \"errors/telemetry\"",
            "bad_data = \"fail\"",
        );
        let p = parse(&fail, false, &env).unwrap();
        let Some(m) = p.sources[1].1.get::<MqttSourceConfig>() else {
            panic!()
        };
        assert_eq!(m.bad_data(), crate::connectors::mqtt::BadData::Fail);
        assert!(error_of(&EXAMPLE.replace(
            "dead_letter_topic = \"errors/telemetry\"",
            "bad_data = \"ignore\""
        ))
        .starts_with("sources.telemetry.bad_data: unknown variant `ignore`"));
    }

    /// Absurd numbers are errors naming the key, never a panic later.
    #[test]
    fn absurd_numbers_are_errors() {
        let conn = |extra: &str| {
            EXAMPLE.replace(
                "session_expiry_interval = 3600",
                &format!("session_expiry_interval = 3600\n{extra}"),
            )
        };
        for (extra, key) in [
            (
                "reconnect_interval = 1e300",
                "connections.local.reconnect_interval",
            ),
            (
                "keep_alive = 9223372036854775807",
                "connections.local.keep_alive",
            ),
            ("keep_alive = 70000", "connections.local.keep_alive"),
            (
                "connect_timeout = 18446744073709551615",
                "connections.local.connect_timeout",
            ),
            (
                "reconnect_backoff_multiplier = 1e300",
                "connections.local.reconnect_backoff_multiplier",
            ),
            ("max_inflight = 99999999", "connections.local.max_inflight"),
        ] {
            let e = error_of(&conn(extra));
            assert!(e.starts_with(key), "{extra}: {e}");
        }
        let e = error_of(&format!("{EXAMPLE}\n[run]\nshutdown_timeout = 1e300\n"));
        assert!(e.starts_with("run.shutdown_timeout: "), "{e}");
        let e = error_of(&EXAMPLE.replace("qos = 1\nformat", "qos = 99999999999999999\nformat"));
        assert!(e.starts_with("sources.telemetry.qos: "), "{e}");
    }

    #[test]
    fn secrets_in_any_shape_stay_out_of_errors() {
        let p = parse(
            &EXAMPLE.replace("password = \"${MQTT_PASSWORD:-}\"", "password = 987654321"),
            false,
            &env,
        )
        .unwrap();
        assert_eq!(
            p.connections["local"].password.as_ref().unwrap().expose(),
            "987654321"
        );
        let e = error_of(&EXAMPLE.replace(
            "password = \"${MQTT_PASSWORD:-}\"",
            "password = [987654321]",
        ));
        assert!(
            e.starts_with("connections.local.password: ") && !e.contains("987654321"),
            "{e}"
        );
        for broker in [
            "mqtt://alice:topsecret@127.0.0.1:1883",
            "mqtt://alice:${MQTT_PASSWORD}@h",
        ] {
            let e = error_of(&EXAMPLE.replace("mqtt://127.0.0.1:1883", broker));
            assert!(e.starts_with("connections.local.broker"), "{e}");
            assert!(!e.contains("topsecret") && !e.contains("s3cret-pw"), "{e}");
        }
    }

    #[test]
    fn secrets_stay_out_of_errors() {
        let e = error_of(&EXAMPLE.replace(
            "url = \"postgres://postgres@127.0.0.1:5432/test\"",
            "url = \"postgres://u:topsecret@h:notaport/db\"",
        ));
        assert!(e.starts_with("sinks.db.url: "), "{e}");
        assert!(!e.contains("topsecret"), "{e}");
    }

    #[test]
    fn interpolation() {
        let env = |k: &str| (k == "A").then(|| "x".to_string());
        let p = String::new();
        assert_eq!(
            expand("a${A}b${B:-d}$${A}$", &p, &env).unwrap(),
            "axbd${A}$"
        );
        assert!(expand("${A", &p, &env).is_err());
        assert!(expand("${A B}", &p, &env).is_err());
    }

    #[test]
    fn client_ids_must_differ() {
        let text = r#"
[connections.a]
broker = "mqtt://h"
client_id = "x-y"
[connections.b]
broker = "mqtt://h"
client_id = "x"
[sources.z]
type = "mqtt"
connection = "a"
topics = "t"
[sources.y-z]
type = "mqtt"
connection = "b"
topics = "t"
[sinks.f]
type = "file"
inputs = ["z", "y-z"]
path = "f"
"#;
        let e = parse(text, false, &env).unwrap_err().to_string();
        assert!(
            e.contains("client id \"x-y-z\" is used by another component"),
            "{e}"
        );
    }

    /// Config files are user input: no mutation of a valid file may panic
    /// the parser (every outcome is a pipeline or an error with a path).
    #[test]
    fn mutated_files_never_panic() {
        let yaml = "connections:\n  c: { broker: \"mqtt://h\" }\nsources:\n  s: { type: mqtt, connection: c, topics: [\"a/#\"], schema: { a: text } }\nsinks:\n  f: { type: file, inputs: [s], path: x }\n";
        let alphabet = b"[]{}=:,.\"'#$-_ \n\t0123456789abcxyz/+\\";
        let mut rng = fastrand::Rng::with_seed(5);
        for (base, is_yaml) in [(EXAMPLE, false), (yaml, true)] {
            for _ in 0..3000 {
                let text = testkit::mutate(&mut rng, base, alphabet, 1..6);
                if let Err(e) = parse(&text, is_yaml, &env) {
                    assert!(!e.path.is_empty(), "{e}");
                }
            }
        }
    }
}
