//! Statements → the pipeline spec. Connection and table options become
//! the same keys a TOML file has (Laminar's names; Arroyo's and
//! RisingWave's are aliases), so the connector registry parses and checks
//! them exactly as for TOML; its errors are mapped back to the statement,
//! line and option they came from.
//!
//! - `CREATE CONNECTION` → `[connections.NAME]`; a table may instead carry
//!   the connection keys itself (Arroyo: `url`, `topic`, `type`).
//! - `CREATE TABLE … WITH (connector = 'mqtt_source' | 'mqtt', type =
//!   'source')` → `[sources.NAME]` with the columns as its schema;
//!   `connector = 'mqtt_sink' | 'mqtt' (type = 'sink') | 'file' |
//!   'postgres'` → a sink, written by `INSERT INTO`.
//! - `CREATE SINK NAME FROM t | AS SELECT … WITH (…)` → a sink and its query.
//! - Every query is planned (views inlined) into one stage per source
//!   table it reads. A table or view nothing reads is printed to standard
//!   output as JSON lines (what Arroyo's preview shows).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use datafusion_common::arrow::datatypes::{Field, SchemaRef};
use datafusion_sql::sqlparser::ast::{DataType, Query, Statement};
use mqlink::format::{ColumnType, Schema};
use mqlink_pipeline::connectors::mqtt::MqttSourceConfig;
use mqlink_pipeline::connectors::postgres::PostgresSinkConfig;
use mqlink_pipeline::connectors::{self, Connector, Direction, Key, KeyType, Reaches};
use mqlink_pipeline::spec::{from_tree_with, interpolate};
use mqlink_pipeline::{ConfigError, Pipeline};
use serde_json::{json, Map, Value as Json};

use crate::aggregate::{self, EventTime, WindowStage};
use crate::ddl::{Column, Located, Opt, Stmt, Watermark};
use crate::plan::{arrow_field, column_type, schema_of, Branch, Catalog};
use crate::stage::{ColSource, Input, SqlStage};
use crate::window::{lower, Lowered, Windowed};
use crate::SqlError;

/// SQL option names → the pipeline file's, for connections.
const CONNECTION_KEYS: &[(&str, &str)] = &[
    ("broker", "broker"),
    ("url", "broker"),
    ("client_id", "client_id"),
    ("client_prefix", "client_id"),
    ("protocol", "protocol"),
    ("clean_session", "clean_session"),
    ("clean_start", "clean_session"),
    ("session_expiry_interval", "session_expiry_interval"),
    ("username", "username"),
    ("password", "password"),
    ("keep_alive", "keep_alive"),
    ("connect_timeout", "connect_timeout"),
    ("tls_ca_cert", "tls_ca_cert"),
    ("tls.ca", "tls_ca_cert"),
    ("tls_client_cert", "tls_client_cert"),
    ("tls.cert", "tls_client_cert"),
    ("tls_client_key", "tls_client_key"),
    ("tls.key", "tls_client_key"),
    ("tls_verify", "tls_verify"),
    ("lwt_topic", "lwt_topic"),
    ("lwt_payload", "lwt_payload"),
    ("lwt_qos", "lwt_qos"),
    ("lwt_retain", "lwt_retain"),
    ("reconnect_interval", "reconnect_interval"),
    ("max_reconnect_attempts", "max_reconnect_attempts"),
    (
        "reconnect_backoff_multiplier",
        "reconnect_backoff_multiplier",
    ),
    ("max_inflight", "max_inflight"),
];

/// Keys with a reason they are refused (accepting them would pretend).
const REFUSED: &[(&str, &str)] = &[
    ("max_retries", "not supported: a payload that does not decode is dead-lettered at once (decoding it again gives the same error)"),
    ("value_schema_id", "not supported: with schema_registry_url the schema id is read from each message (Confluent wire format)"),
];

/// Connection keys typed from SQL's text (connectors' keys say their
/// own types in the registry).
const BOOL_KEYS: &[&str] = &["clean_session", "tls_verify", "lwt_retain"];

const NUMBER_KEYS: &[&str] = &[
    "keep_alive",
    "session_expiry_interval",
    "connect_timeout",
    "reconnect_interval",
    "max_reconnect_attempts",
    "reconnect_backoff_multiplier",
    "max_inflight",
];

/// Where a component of the pipeline came from, to locate its errors.
struct Origin {
    line: u64,
    statement: String,
    /// pipeline key → (SQL key, line).
    keys: Vec<(String, String, u64)>,
}

struct SourceTable {
    name: String,
    line: u64,
    input: Input,
    used: bool,
    /// `WATERMARK FOR`: the column, the delay (µs), the line.
    watermark: Option<(usize, i64, u64)>,
    /// For windowed queries: `state_dir` and `checkpoint_interval`, with
    /// their lines.
    state_dir: Option<(std::path::PathBuf, u64)>,
    checkpoint_interval: Option<(std::time::Duration, u64)>,
}

/// A query's part for one source table.
struct Planned {
    branches: Vec<Branch>,
    out: SchemaRef,
    line: u64,
    statement: String,
    window: Option<Box<Windowed>>,
}

/// Options of a source table that are the SQL front end's, not the
/// connector's.
const STAGE_KEYS: &[&str] = &["state_dir", "checkpoint_interval"];

struct SinkDef {
    name: String,
    line: u64,
    statement: String,
    ty: &'static Connector,
    options: Vec<Opt>,
    /// The query writing to it and its line.
    query: Option<(u64, Box<Query>)>,
}

struct Compiler<'e> {
    env: &'e dyn Fn(&str) -> Option<String>,
    tree: Map<String, Json>,
    origins: HashMap<String, Origin>,
    catalog: Catalog,
    sources: Vec<SourceTable>,
    sinks: Vec<SinkDef>,
    /// Views in order: name, line, and whether something reads it.
    views: Vec<(String, u64, Box<Query>, bool)>,
}

pub fn compile(
    statements: Vec<Located>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Pipeline, ConfigError> {
    let mut c = Compiler {
        env,
        tree: Map::new(),
        origins: HashMap::new(),
        catalog: Catalog::default(),
        sources: Vec::new(),
        sinks: Vec::new(),
        views: Vec::new(),
    };
    for s in ["connections", "sources", "sinks"] {
        c.tree.insert(s.into(), Json::Object(Map::new()));
    }
    for Located { line, stmt } in statements {
        c.statement(line, stmt)?;
    }
    c.finish().map_err(Into::into)
}

impl Compiler<'_> {
    fn statement(&mut self, line: u64, stmt: Stmt) -> Result<(), SqlError> {
        match stmt {
            Stmt::Connection {
                name,
                kind,
                options,
            } => {
                let statement = format!("CREATE CONNECTION {name}");
                if !is_broker_connector(&kind) {
                    let known = spellings(|c| c.reaches == Reaches::Broker);
                    return Err(SqlError::at(
                        line,
                        statement,
                        None,
                        format!(
                            "unknown connection type {kind:?}: use {}",
                            connectors::one_of(&known)
                        ),
                    ));
                }
                self.unique(line, &statement, &name)?;
                let mut body = Map::new();
                let mut origin = Origin {
                    line,
                    statement: statement.clone(),
                    keys: Vec::new(),
                };
                for o in &options {
                    let Some(key) = connection_key(&o.key) else {
                        return Err(self.unknown_key(&statement, o, known_keys(&[], true, false)));
                    };
                    self.put(&statement, &mut body, &mut origin, key, o)?;
                }
                self.insert("connections", &name, body, origin);
            }
            Stmt::Table {
                name,
                columns,
                watermark,
                options,
            } => self.table(line, name, columns, watermark, options)?,
            Stmt::View { name, query } => {
                let statement = format!("CREATE VIEW {name}");
                self.unique(line, &statement, &name)?;
                self.catalog
                    .add_view(&name, &query)
                    .map_err(|m| SqlError::at(line, &statement, None, m))?;
                self.views.push((name, line, query, false));
            }
            Stmt::Insert { sink, query } => {
                let statement = format!("INSERT INTO {sink}");
                let Some(at) = self.sinks.iter().position(|s| s.name == sink) else {
                    let known: Vec<&str> = self.sinks.iter().map(|s| s.name.as_str()).collect();
                    let connectors = spellings(|c| c.sink.is_some()).join("' | '");
                    return Err(SqlError::at(line, statement, None, format!("no sink table named {sink:?} (sink tables so far: {}; create it first with CREATE TABLE {sink} (…) WITH (connector = '{connectors}', …))", known.join(", "))));
                };
                let s = &mut self.sinks[at];
                if let Some((l, _)) = &s.query {
                    return Err(SqlError::at(line, statement, None, format!("{sink} is already written by the INSERT of line {l}; one query per sink (UNION ALL combines queries)")));
                }
                s.query = Some((line, query));
            }
            Stmt::Sink {
                name,
                query,
                options,
            } => {
                let statement = format!("CREATE SINK {name}");
                self.unique(line, &statement, &name)?;
                let ty =
                    sink_type(&options).map_err(|(k, m)| SqlError::at(line, &statement, k, m))?;
                self.sinks.push(SinkDef {
                    name,
                    line,
                    statement,
                    ty,
                    options,
                    query: Some((line, query)),
                });
            }
            Stmt::Other(s) => return Err(refuse_statement(line, &s)),
        }
        Ok(())
    }

    fn unique(&self, line: u64, statement: &str, name: &str) -> Result<(), SqlError> {
        let taken = self.catalog.has(name)
            || self.sinks.iter().any(|s| s.name == name)
            || self.tree["connections"].get(name).is_some();
        if taken {
            return Err(SqlError::at(
                line,
                statement,
                None,
                format!("the name {name:?} is already used"),
            ));
        }
        Ok(())
    }

    fn table(
        &mut self,
        line: u64,
        name: String,
        columns: Vec<Column>,
        watermark: Option<Watermark>,
        options: Vec<Opt>,
    ) -> Result<(), SqlError> {
        let statement = format!("CREATE TABLE {name}");
        self.unique(line, &statement, &name)?;
        let get = |k: &str| options.iter().find(|o| o.key.eq_ignore_ascii_case(k));
        let connector = match get("connector") {
            None => {
                return Err(SqlError::at(
                    line,
                    &statement,
                    Some("connector"),
                    format!(
                        "missing: say where the table's rows come from or go (connector = {})",
                        connectors::one_of(&spellings(|_| true))
                    ),
                ))
            }
            Some(o) => o.value.as_str().unwrap_or_default().to_string(),
        };
        let kind = get("type").and_then(|o| o.value.as_str());
        let source = match (
            connectors::find(&connector, Direction::Source),
            connectors::find(&connector, Direction::Sink),
        ) {
            (Some(_), Some(_)) => match kind {
                Some("source") => true,
                Some("sink") => false,
                _ => {
                    return Err(SqlError::at(
                        get("type").map_or(line, |o| o.line),
                        &statement,
                        Some("type"),
                        format!("connector = '{connector}' needs type = 'source' or type = 'sink'"),
                    ))
                }
            },
            (Some(_), None) => true,
            (None, _) => false,
        };
        if !source {
            if let Some(w) = &watermark {
                return Err(SqlError::at(
                    w.line,
                    &statement,
                    None,
                    "WATERMARK FOR goes with source tables",
                ));
            }
            if !columns.is_empty() {
                // A sink's columns are its query's; declared ones are a
                // promise we check nothing against, so they are refused.
                let c = &columns[0];
                if c.metadata.is_some() {
                    return Err(SqlError::at(
                        c.line,
                        &statement,
                        Some(&c.name),
                        "METADATA FROM goes with source tables",
                    ));
                }
            }
            let ty = sink_type(&options).map_err(|(k, m)| SqlError::at(line, &statement, k, m))?;
            self.sinks.push(SinkDef {
                name,
                line,
                statement,
                ty,
                options,
                query: None,
            });
            return Ok(());
        }
        // A source: its connection, its options, its columns.
        let c = connectors::find(&connector, Direction::Source).expect("a source, above");
        if !c.source.as_ref().is_some_and(|s| s.sql_columns) {
            return Err(SqlError::at(line, &statement, Some("connector"), format!("{connector:?} makes records of its own columns; a SQL source table's columns are decoded from messages (connector = {})", connectors::one_of(&spellings(|c| c.source.as_ref().is_some_and(|s| s.sql_columns))))));
        }
        let keys = c.keys(Direction::Source);
        let mut body = Map::new();
        let mut origin = Origin {
            line,
            statement: statement.clone(),
            keys: Vec::new(),
        };
        let mut inline = Map::new();
        let mut inline_origin = Origin {
            line,
            statement: statement.clone(),
            keys: Vec::new(),
        };
        let mut state_dir = None;
        let mut checkpoint_interval = None;
        for o in &options {
            let k = o.key.to_ascii_lowercase();
            if k == "connector" || k == "type" {
                continue;
            }
            if k == "state_dir" {
                let v = self.text(&statement, o)?;
                state_dir = Some((std::path::PathBuf::from(v), o.line));
                continue;
            }
            if k == "checkpoint_interval" {
                let v = self.text(&statement, o)?;
                let d =
                    duration(&v).map_err(|m| SqlError::at(o.line, &statement, Some(&o.key), m))?;
                checkpoint_interval = Some((d, o.line));
                continue;
            }
            if let Some(key) = lookup(keys, &k) {
                self.put(&statement, &mut body, &mut origin, key, o)?;
            } else if let Some(key) = connection_key(&k) {
                self.put(&statement, &mut inline, &mut inline_origin, key, o)?;
            } else {
                return Err(self.unknown_key(&statement, o, known_keys(keys, true, true)));
            }
        }
        self.connection_of(
            line,
            &statement,
            &name,
            &mut body,
            &mut origin,
            inline,
            inline_origin,
        )?;
        body.insert("type".into(), json!(c.name));
        let format = body
            .get("format")
            .and_then(Json::as_str)
            .unwrap_or("json")
            .to_string();
        let raw = matches!(format.as_str(), "raw_bytes" | "raw");
        if columns.is_empty() {
            return Err(SqlError::at(line, &statement, None, "a source table needs columns: CREATE TABLE name (device_id TEXT, temperature DOUBLE, …)"));
        }
        let mut fields = Vec::new();
        let mut sources = Vec::new();
        let mut schema = Map::new();
        for c in &columns {
            let ty = column_type_of(&c.ty)
                .map_err(|m| SqlError::at(c.line, &statement, Some(&c.name), m))?;
            if fields.iter().any(|f: &Field| f.name() == &c.name) {
                return Err(SqlError::at(
                    c.line,
                    &statement,
                    Some(&c.name),
                    "a second column with this name",
                ));
            }
            fields.push(arrow_field(&c.name, ty));
            let from = match (&c.metadata, raw) {
                (Some(m), _) if m == "topic" => ColSource::Topic,
                (Some(m), _) => {
                    return Err(SqlError::at(
                        c.line,
                        &statement,
                        Some(&c.name),
                        format!("METADATA FROM {m:?}: a message's metadata is 'topic'"),
                    ))
                }
                (None, true) => match (c.name.as_str(), ty) {
                    ("topic", ColumnType::Text) => ColSource::Topic,
                    ("payload", ColumnType::Bytea | ColumnType::Text) => ColSource::Payload(ty),
                    (_, ColumnType::Timestamp) => ColSource::Arrival,
                    _ => ColSource::Null(ty),
                },
                // Sparkplug B rows have their own columns: picked by name.
                (None, false) if format == "sparkplug_b" => {
                    let cols = mqlink::format::sparkplug::COLUMNS;
                    match cols.iter().position(|(n, _)| *n == c.name) {
                        Some(i) => ColSource::Field(i, ty),
                        None => {
                            let names: Vec<&str> = cols.iter().map(|(n, _)| *n).collect();
                            return Err(SqlError::at(
                                c.line,
                                &statement,
                                Some(&c.name),
                                format!("not a Sparkplug B column: use {}", names.join(", ")),
                            ));
                        }
                    }
                }
                (None, false) => {
                    let t = if c.not_null {
                        format!("{ty} not null")
                    } else {
                        ty.to_string()
                    };
                    schema.insert(c.name.clone(), json!(t));
                    ColSource::Field(schema.len() - 1, ty)
                }
            };
            sources.push(from);
        }
        // Laminar: a table whose only column (beside metadata) is a JSON
        // column receives the whole message in it, whatever JSON it is.
        let lone_json = match sources
            .iter()
            .filter(|s| matches!(s, ColSource::Field(..)))
            .count()
        {
            1 if format == "json" => sources
                .iter()
                .position(|s| matches!(s, ColSource::Field(_, ColumnType::Json))),
            _ => None,
        };
        if let Some(i) = lone_json {
            sources[i] = ColSource::Whole;
        } else if !raw && format == "json" {
            body.insert("schema".into(), Json::Object(schema));
        }
        let watermark = match watermark {
            None => None,
            Some(w) => {
                let at = |m: String| SqlError::at(w.line, &statement, Some("WATERMARK FOR"), m);
                let i = fields
                    .iter()
                    .position(|f| f.name() == &w.column)
                    .ok_or_else(|| at(format!("no column named {:?}", w.column)))?;
                if !matches!(
                    fields[i].data_type(),
                    datafusion_common::arrow::datatypes::DataType::Timestamp(..)
                ) {
                    return Err(at(format!(
                        "{} is not a TIMESTAMP column: the event time is one",
                        w.column
                    )));
                }
                let delay = crate::window::watermark_delay(&self.catalog, &w.column, &w.expr)
                    .map_err(at)?;
                Some((i, delay, w.line))
            }
        };
        let arrow = schema_of(fields);
        self.catalog.add_table(&name, arrow.clone());
        self.sources.push(SourceTable {
            name: name.clone(),
            line,
            input: Input {
                schema: arrow,
                columns: sources,
            },
            used: false,
            watermark,
            state_dir,
            checkpoint_interval,
        });
        self.insert("sources", &name, body, origin);
        Ok(())
    }

    /// `connection = 'name'`, or a connection of the table's own keys.
    #[allow(clippy::too_many_arguments)]
    fn connection_of(
        &mut self,
        line: u64,
        statement: &str,
        name: &str,
        body: &mut Map<String, Json>,
        origin: &mut Origin,
        inline: Map<String, Json>,
        inline_origin: Origin,
    ) -> Result<(), SqlError> {
        match (body.get("connection"), inline.is_empty()) {
            (Some(_), false) => {
                let (_, k, l) = &inline_origin.keys[0];
                Err(SqlError::at(*l, statement, Some(k), "connection options go in the CREATE CONNECTION this table names with connection = …"))
            }
            (Some(_), true) => Ok(()),
            (None, true) => Err(SqlError::at(line, statement, Some("connection"), "missing: name a CREATE CONNECTION (connection = 'name'), or give the broker here (url = 'tcp://host:1883')")),
            (None, false) => {
                let conn = format!("{name}_connection");
                self.insert("connections", &conn, inline, inline_origin);
                body.insert("connection".into(), json!(conn));
                origin.keys.push(("connection".into(), "url".into(), line));
                Ok(())
            }
        }
    }

    fn insert(&mut self, section: &str, name: &str, body: Map<String, Json>, origin: Origin) {
        self.tree[section]
            .as_object_mut()
            .expect("sections are objects")
            .insert(name.to_string(), Json::Object(body));
        self.origins.insert(format!("{section}.{name}"), origin);
    }

    /// One option into a component's body, interpolated and typed.
    fn put(
        &self,
        statement: &str,
        body: &mut Map<String, Json>,
        origin: &mut Origin,
        (key, ty): (&str, KeyType),
        o: &Opt,
    ) -> Result<(), SqlError> {
        if let Some((_, why)) = REFUSED.iter().find(|(k, _)| *k == o.key) {
            return Err(SqlError::at(o.line, statement, Some(&o.key), *why));
        }
        let mut v = o.value.clone();
        interpolate(&mut v, &mut String::new(), self.env)
            .map_err(|e| SqlError::at(o.line, statement, Some(&o.key), e.message))?;
        let v = typed_value(ty, v);
        if origin.keys.iter().any(|(k, _, _)| k == key) {
            return Err(SqlError::at(
                o.line,
                statement,
                Some(&o.key),
                "given twice (or with its alias)",
            ));
        }
        origin.keys.push((key.to_string(), o.key.clone(), o.line));
        match key.split_once('.') {
            Some((outer, inner)) => {
                let e = body.entry(outer.to_string()).or_insert_with(|| json!({}));
                e[inner] = v;
            }
            None => {
                body.insert(key.to_string(), v);
            }
        }
        Ok(())
    }

    /// An option's value as text, `${VAR}`s replaced.
    fn text(&self, statement: &str, o: &Opt) -> Result<String, SqlError> {
        let mut v = o.value.clone();
        interpolate(&mut v, &mut String::new(), self.env)
            .map_err(|e| SqlError::at(o.line, statement, Some(&o.key), e.message))?;
        Ok(match v {
            Json::String(s) => s,
            other => other.to_string(),
        })
    }

    fn unknown_key(&self, statement: &str, o: &Opt, known: Vec<&str>) -> SqlError {
        if let Some((_, why)) = REFUSED.iter().find(|(k, _)| *k == o.key) {
            return SqlError::at(o.line, statement, Some(&o.key), *why);
        }
        SqlError::at(
            o.line,
            statement,
            Some(&o.key),
            format!("unknown option (known: {})", known.join(", ")),
        )
    }

    /// Plans every query, builds the sinks, checks the whole through the
    /// pipeline spec, and attaches the stages.
    fn finish(mut self) -> Result<Pipeline, SqlError> {
        let mut stages: BTreeMap<String, Planned> = BTreeMap::new();
        let sinks = std::mem::take(&mut self.sinks);
        let mut built = Vec::new();
        for s in &sinks {
            let Some((qline, query)) = &s.query else {
                return Err(SqlError::at(
                    s.line,
                    &s.statement,
                    None,
                    format!(
                        "nothing writes to this sink: add INSERT INTO {} SELECT … FROM …",
                        s.name
                    ),
                ));
            };
            let by = match s.statement.starts_with("CREATE SINK") {
                true => s.statement.clone(),
                false => format!("INSERT INTO {}", s.name),
            };
            let inputs = self.query(*qline, &by, query, &mut stages)?;
            built.push((s, inputs));
        }
        // What nothing reads is shown on standard output.
        let mut leaves = Vec::new();
        let views = std::mem::take(&mut self.views);
        for (name, line, query, _) in &views {
            let read = views.iter().any(|(_, _, q, _)| reads(q, name))
                || sinks
                    .iter()
                    .any(|s| s.query.as_ref().is_some_and(|(_, q)| reads(q, name)));
            if !read {
                leaves.extend(self.query(
                    *line,
                    &format!("CREATE VIEW {name}"),
                    query,
                    &mut stages,
                )?);
            }
        }
        for i in 0..self.sources.len() {
            if !self.sources[i].used {
                let (name, line) = (self.sources[i].name.clone(), self.sources[i].line);
                let q = parse_query(&format!("SELECT * FROM {name}"));
                leaves.extend(self.query(
                    line,
                    &format!("CREATE TABLE {name}"),
                    &q,
                    &mut stages,
                )?);
            }
        }
        for (s, inputs) in built {
            let mut body = Map::new();
            let mut origin = Origin {
                line: s.line,
                statement: s.statement.clone(),
                keys: Vec::new(),
            };
            let mut inline = Map::new();
            let mut inline_origin = Origin {
                line: s.line,
                statement: s.statement.clone(),
                keys: Vec::new(),
            };
            for o in &s.options {
                let k = o.key.to_ascii_lowercase();
                if k == "connector" || k == "type" {
                    continue;
                }
                let keys = s.ty.keys(Direction::Sink);
                let inline_key = connection_key(&k).filter(|_| uses_connection(keys));
                if let Some(key) = lookup(keys, &k) {
                    self.put(&s.statement, &mut body, &mut origin, key, o)?;
                } else if let Some(key) = inline_key {
                    self.put(&s.statement, &mut inline, &mut inline_origin, key, o)?;
                } else {
                    let known = known_keys(keys, uses_connection(keys), false);
                    return Err(self.unknown_key(&s.statement, o, known));
                }
            }
            // A sink off the brokers (InfluxDB, HTTP) names a connection
            // only for its dead letters.
            let broker = s.ty.reaches == Reaches::Broker || !inline.is_empty();
            if uses_connection(s.ty.keys(Direction::Sink)) && broker {
                self.connection_of(
                    s.line,
                    &s.statement,
                    &s.name,
                    &mut body,
                    &mut origin,
                    inline,
                    inline_origin,
                )?;
            }
            body.insert("type".into(), json!(s.ty.name));
            body.insert("inputs".into(), json!(inputs));
            origin
                .keys
                .push(("inputs".into(), "(its query)".into(), s.line));
            self.insert("sinks", &s.name, body, origin);
        }
        if !leaves.is_empty() {
            let mut name = "stdout".to_string();
            while self.tree["sinks"].get(&name).is_some() || self.catalog.has(&name) {
                name.push('_');
            }
            let mut seen = Vec::new();
            leaves.retain(|l| {
                let first = !seen.contains(l);
                seen.push(l.clone());
                first
            });
            let file = connectors::file::CONNECTOR.name;
            let body = json!({ "type": file, "path": "/dev/stdout", "inputs": leaves });
            let origin = Origin {
                line: 0,
                statement: "(standard output)".into(),
                keys: Vec::new(),
            };
            self.insert(
                "sinks",
                &name,
                body.as_object().expect("object").clone(),
                origin,
            );
        }

        for t in &self.sources {
            if stages.get(&t.name).is_none_or(|s| s.window.is_none()) {
                let opt = [
                    ("state_dir", t.state_dir.as_ref().map(|s| s.1)),
                    (
                        "checkpoint_interval",
                        t.checkpoint_interval.as_ref().map(|s| s.1),
                    ),
                ];
                if let Some((k, Some(l))) = opt.into_iter().find(|(_, l)| l.is_some()) {
                    return Err(SqlError::at(l, format!("CREATE TABLE {}", t.name), Some(k), "only a windowed query (GROUP BY a TUMBLE or HOP window) keeps state; no query reading this table has one"));
                }
            }
        }
        let schemas: BTreeMap<String, Schema> = stages
            .iter()
            .map(|(src, s)| (src.clone(), pipeline_schema(&s.out)))
            .collect();
        let mut p = from_tree_with(Json::Object(std::mem::take(&mut self.tree)), &schemas)
            .map_err(|e| self.locate(e))?;
        for (src, planned) in stages {
            let Planned {
                branches,
                out,
                line,
                statement,
                window,
            } = planned;
            let table = self
                .sources
                .iter()
                .find(|s| s.name == src)
                .expect("planned from a source table");
            let Some(window) = window else {
                let stage = SqlStage::new(table.input.clone(), &branches, &out)
                    .map_err(|m| SqlError::at(line, format!("the query reading {src}"), None, m))?;
                p.transforms.insert(src, Arc::new(stage));
                continue;
            };
            self.share_partials(&mut p, &src, &window, line, &statement)?;
            let stage = self.window_stage(&p, table, *window, line, &statement)?;
            p.transforms.insert(src, Arc::new(stage));
        }
        Ok(p)
    }

    /// This process's instance name, if it has one.
    fn instance(&self) -> Option<String> {
        // One that is not a valid name is refused by name when the
        // command line sets it (Pipeline::set_instance).
        (self.env)(crate::INSTANCE_ENV).filter(|i| mqlink_pipeline::spec::check_instance(i).is_ok())
    }

    /// A windowed query reading a share group, in a process with an
    /// instance name: its PostgreSQL sinks write partial rows (see
    /// [`crate::shared`]); other sinks, and queries whose rows do not
    /// combine, are refused.
    fn share_partials(
        &self,
        p: &mut Pipeline,
        src: &str,
        window: &Windowed,
        line: u64,
        statement: &str,
    ) -> Result<(), SqlError> {
        let Some(instance) = self.instance() else {
            return Ok(());
        };
        let group = p
            .sources
            .iter()
            .find(|(n, _)| n == src)
            .and_then(|(_, s)| s.as_any().downcast_ref::<MqttSourceConfig>())
            .and_then(|s| s.share_group.clone());
        let Some(group) = group else {
            return Ok(());
        };
        let why = format!("{src} is read in share group {group:?} by instance {instance:?}: each process aggregates its share of the messages");
        let partials = crate::shared::partials(window, &instance)
            .map_err(|m| SqlError::at(line, statement, None, format!("{why}, and {m}")))?;
        for (name, sink) in p.sinks.iter_mut() {
            if !sink.inputs.iter().any(|i| i == src) {
                continue;
            }
            let Some(pg) = sink.kind.as_any().downcast_ref::<PostgresSinkConfig>() else {
                let o = self.origins.get(&format!("sinks.{name}"));
                let (l, st) = o.map_or((line, statement.to_string()), |o| {
                    (o.line, o.statement.clone())
                });
                return Err(SqlError::at(l, st, None, format!("{why}, and only a PostgreSQL sink combines partial rows (in the view <table>_merged); write the query into PostgreSQL, or run one process")));
            };
            let mut pg = pg.clone();
            pg.partials = Some(partials.clone());
            sink.kind = Arc::new(pg);
        }
        Ok(())
    }

    /// A windowed query's stage; its source must keep its session and
    /// the table name where the state goes.
    fn window_stage(
        &self,
        p: &Pipeline,
        table: &SourceTable,
        window: Windowed,
        line: u64,
        statement: &str,
    ) -> Result<WindowStage, SqlError> {
        let src = &table.name;
        let table_stmt = format!("CREATE TABLE {src}");
        let Some((dir, _)) = &table.state_dir else {
            return Err(SqlError::at(table.line, &table_stmt, Some("state_dir"), format!("missing: the windowed query of line {line} keeps its windows in a state file under state_dir (state_dir = '/var/lib/mqlink')")));
        };
        let connection = p.sources.iter().find(|(n, _)| n == src);
        if let Some((name, _)) = connection.and_then(|(_, s)| s.connection()) {
            if let Some(conn) = p.connections.get(name) {
                let o = self.origins.get(&format!("connections.{name}"));
                let (cl, cs) = o.map_or((table.line, table_stmt.clone()), |o| {
                    (o.line, o.statement.clone())
                });
                let why = format!("the windowed query of line {line} acknowledges messages at checkpoints, so it needs a persistent session (the broker keeps what is unacknowledged across a restart)");
                if conn.clean_session {
                    return Err(SqlError::at(
                        cl,
                        cs,
                        Some("clean_session"),
                        format!("{why}: set clean_session = false (clean_start = 'false')"),
                    ));
                }
                if conn.session_expiry_interval == Some(0) {
                    return Err(SqlError::at(cl, cs, Some("session_expiry_interval"), format!("{why}: 0 ends the session when the connection drops; leave it out (MQTT 5 then keeps the session) or give the seconds a restart may take")));
                }
                if conn.client_id.is_none() {
                    return Err(SqlError::at(cl, cs, Some("client_id"), format!("{why}: set client_id (client_prefix) so that the session is found again")));
                }
            }
        }
        let time = match (&window.time, table.watermark) {
            (Some(_), _) => EventTime::Query,
            (None, Some((i, _, _))) => EventTime::Column(i),
            (None, None) => EventTime::Arrival,
        };
        let options = aggregate::Options {
            time,
            delay_us: table.watermark.map_or(0, |w| w.1),
            // Each instance its own windows.
            state_file: match self.instance() {
                Some(i) => dir.join(i).join(format!("{src}.window")),
                None => dir.join(format!("{src}.window")),
            },
            checkpoint_interval: table
                .checkpoint_interval
                .map_or(aggregate::DEFAULT_INTERVAL, |c| c.0),
        };
        WindowStage::new(table.input.clone(), window, options)
            .map_err(|m| SqlError::at(line, statement, None, m))
    }

    /// Plans a query; returns the source tables it reads (its sink's inputs).
    fn query(
        &mut self,
        line: u64,
        statement: &str,
        query: &Query,
        stages: &mut BTreeMap<String, Planned>,
    ) -> Result<Vec<String>, SqlError> {
        let plan = self
            .catalog
            .plan(query)
            .map_err(|m| SqlError::at(line, statement, None, m))?;
        let (bs, out, window) =
            match lower(&plan).map_err(|m| SqlError::at(line, statement, None, m))? {
                Lowered::Stateless(bs) => (bs, Arc::new(plan.schema().as_arrow().clone()), None),
                Lowered::Windowed(w) => (vec![w.pre.clone()], w.out.clone(), Some(w)),
            };
        let mut inputs: Vec<String> = Vec::new();
        for b in &bs {
            if !inputs.contains(&b.source) {
                inputs.push(b.source.clone());
            }
        }
        for src in &inputs {
            if let Some(other) = stages.get(src) {
                return Err(SqlError::at(line, statement, None, format!("{src} is already read by the query of line {}; mqlink runs one query per source table so far (create a second table on the same topics, or combine the queries)", other.line)));
            }
            let mine: Vec<Branch> = bs.iter().filter(|b| &b.source == src).cloned().collect();
            stages.insert(
                src.clone(),
                Planned {
                    branches: mine,
                    out: out.clone(),
                    line,
                    statement: statement.to_string(),
                    window: window.clone(),
                },
            );
            if let Some(t) = self.sources.iter_mut().find(|t| &t.name == src) {
                t.used = true;
            }
        }
        Ok(inputs)
    }

    /// A spec error, back at the statement and option it came from.
    fn locate(&self, e: ConfigError) -> SqlError {
        let mut parts = e.path.splitn(3, '.');
        let (section, name, rest) = (parts.next(), parts.next(), parts.next());
        if let (Some(section), Some(name)) = (section, name) {
            // `name` may carry an index: sinks.x.inputs[0] → name "x".
            let name = name.split('[').next().unwrap_or(name);
            if let Some(o) = self.origins.get(&format!("{section}.{name}")) {
                let rest = rest.unwrap_or("");
                let head = rest.split(['.', '[']).next().unwrap_or("");
                // raw_bytes.include_topic is one SQL key.
                let found = o
                    .keys
                    .iter()
                    .find(|(k, _, _)| k == rest)
                    .or_else(|| o.keys.iter().find(|(k, _, _)| k == head));
                return match found {
                    Some((k, sql, line)) => {
                        let tail = rest.strip_prefix(k.as_str()).unwrap_or("");
                        SqlError::at(
                            *line,
                            &o.statement,
                            Some(&format!("{sql}{tail}")),
                            e.message,
                        )
                    }
                    None if rest.is_empty() => SqlError::at(o.line, &o.statement, None, e.message),
                    None => SqlError::at(o.line, &o.statement, Some(rest), e.message),
                };
            }
        }
        SqlError::at(0, "(file)", Some(&e.path), e.message)
    }
}

/// A connector's key by its name or a SQL spelling, with its type.
fn lookup(keys: &'static [Key], k: &str) -> Option<(&'static str, KeyType)> {
    keys.iter()
        .find(|key| {
            std::iter::once(&key.name)
                .chain(key.aliases)
                .any(|n| n.eq_ignore_ascii_case(k))
        })
        .map(|key| (key.name, key.ty))
}

/// A connection profile's key by its SQL spelling, with its type.
fn connection_key(k: &str) -> Option<(&'static str, KeyType)> {
    let (_, key) = CONNECTION_KEYS
        .iter()
        .find(|(s, _)| s.eq_ignore_ascii_case(k))?;
    let ty = if BOOL_KEYS.contains(key) {
        KeyType::Bool
    } else if *key == "lwt_qos" {
        KeyType::Qos
    } else if NUMBER_KEYS.contains(key) {
        KeyType::Number
    } else {
        KeyType::Text
    };
    Some((key, ty))
}

/// Whether a connector's component names a connection (and so may carry
/// the connection's keys inline, Arroyo's way).
fn uses_connection(keys: &[Key]) -> bool {
    keys.iter().any(|k| k.name == "connection")
}

/// A key's SQL spellings.
fn spelled(k: &Key) -> impl Iterator<Item = &'static str> {
    std::iter::once(k.name).chain(k.aliases.iter().copied())
}

/// What an unknown option's error lists: the connector's keys, the
/// connection's, and for a source table the SQL front end's own.
fn known_keys(keys: &'static [Key], connection: bool, source: bool) -> Vec<&'static str> {
    let mut known: Vec<&str> = keys.iter().flat_map(spelled).collect();
    if connection {
        known.extend(CONNECTION_KEYS.iter().map(|(k, _)| *k));
    }
    if source {
        known.extend(STAGE_KEYS);
    }
    known.sort();
    known.dedup();
    known
}

/// The names and aliases of the connectors `f` accepts, as `connector = '…'` takes them.
fn spellings(f: impl Fn(&Connector) -> bool) -> Vec<&'static str> {
    let mut out = Vec::new();
    for c in connectors::REGISTRY.iter().filter(|c| f(c)) {
        out.push(c.name);
        for t in [
            c.source.as_ref().map(|s| s.aliases),
            c.sink.as_ref().map(|s| s.aliases),
        ] {
            out.extend(t.into_iter().flatten().copied());
        }
    }
    out
}

/// `CREATE CONNECTION … WITH (type = '…')` names a connector on brokers.
fn is_broker_connector(kind: &str) -> bool {
    [Direction::Source, Direction::Sink]
        .iter()
        .filter_map(|d| connectors::find(kind, *d))
        .any(|c| c.reaches == Reaches::Broker)
}

/// What a sink table writes to, from `connector` (and `type`).
fn sink_type(options: &[Opt]) -> Result<&'static Connector, (Option<&'static str>, String)> {
    let get = |k: &str| {
        options
            .iter()
            .find(|o| o.key.eq_ignore_ascii_case(k))
            .and_then(|o| o.value.as_str())
    };
    let Some(name) = get("connector") else {
        let sinks = spellings(|c| c.sink.is_some());
        return Err((
            Some("connector"),
            format!("missing: {}", connectors::one_of(&sinks)),
        ));
    };
    let Some(c) = connectors::find_sink(name, get("format")) else {
        let known = spellings(|_| true);
        return Err((
            Some("connector"),
            format!(
                "unknown connector {name:?}: use {}",
                connectors::one_of(&known)
            ),
        ));
    };
    // A connector of both directions is told which by `type`.
    match (connectors::find(name, Direction::Source), get("type")) {
        (Some(_), Some(t)) if t != "sink" => {
            Err((Some("type"), format!("{t:?}: a sink has type = 'sink'")))
        }
        _ => Ok(c),
    }
}

/// Strings of SQL options typed where the pipeline wants a boolean or a
/// number (`'true'`, `'5'`), Arroyo's QoS names, a list.
fn typed_value(ty: KeyType, v: Json) -> Json {
    let Json::String(s) = &v else {
        return v;
    };
    let t = s.trim();
    let typed = match ty {
        KeyType::Text => None,
        KeyType::Bool => match t.to_ascii_lowercase().as_str() {
            "true" => Some(Json::Bool(true)),
            "false" => Some(Json::Bool(false)),
            _ => None,
        },
        KeyType::Qos => match t {
            "AtMostOnce" | "at_most_once" => Some(json!(0)),
            "AtLeastOnce" | "at_least_once" => Some(json!(1)),
            "ExactlyOnce" | "exactly_once" => Some(json!(2)),
            _ => number(t),
        },
        KeyType::Number => number(t),
        KeyType::TextOrList if t.starts_with('[') => {
            serde_json::from_str::<Json>(t).ok().filter(Json::is_array)
        }
        KeyType::TextOrList => None,
        KeyType::List => Some(string_list(t)),
    };
    typed.unwrap_or(v)
}

fn number(t: &str) -> Option<Json> {
    serde_json::from_str::<Json>(t).ok().filter(Json::is_number)
}

/// `'["a", "b"]'` or `'a, b'`.
fn string_list(t: &str) -> Json {
    if let Ok(list @ Json::Array(_)) = serde_json::from_str::<Json>(t) {
        return list;
    }
    Json::Array(
        t.split(',')
            .map(|s| json!(s.trim()))
            .filter(|s| s != "")
            .collect(),
    )
}

/// A SQL column type as the pipeline's.
fn column_type_of(ty: &DataType) -> Result<ColumnType, String> {
    let s = ty.to_string().to_ascii_uppercase();
    let base = s.split('(').next().unwrap_or(&s).trim();
    Ok(match base {
        "TEXT" | "VARCHAR" | "STRING" | "CHAR" | "CHARACTER VARYING" | "CHARACTER" => ColumnType::Text,
        "BIGINT" | "INT" | "INTEGER" | "SMALLINT" | "TINYINT" | "INT2" | "INT4" | "INT8" | "INT64" => ColumnType::BigInt,
        "FLOAT" | "DOUBLE" | "DOUBLE PRECISION" | "REAL" | "FLOAT4" | "FLOAT8" | "FLOAT64" | "DECIMAL" | "NUMERIC" => ColumnType::Double,
        "BOOLEAN" | "BOOL" => ColumnType::Boolean,
        "JSON" | "JSONB" => ColumnType::Json,
        "BYTEA" | "BYTES" | "BINARY" | "VARBINARY" | "BLOB" => ColumnType::Bytea,
        t if t.starts_with("TIMESTAMP") => ColumnType::Timestamp,
        _ => return Err(format!("column type {s} is not supported: use TEXT, BIGINT, DOUBLE, BOOLEAN, TIMESTAMP, JSON or BYTEA")),
    })
}

/// A query's output columns as the pipeline's schema.
fn pipeline_schema(out: &SchemaRef) -> Schema {
    Schema::new(
        out.fields()
            .iter()
            .map(|f| (f.name().as_str(), column_type(f))),
    )
}

/// Whether a query names a relation (views are read by later queries).
fn reads(q: &Query, name: &str) -> bool {
    // Relations are identifiers; a word match on the query's text is
    // enough to decide whether a view is a leaf (a false "read" only
    // keeps a view from standard output).
    q.to_string()
        .split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .any(|w| w == name)
}

fn parse_query(text: &str) -> Query {
    use datafusion_sql::sqlparser::dialect::GenericDialect;
    use datafusion_sql::sqlparser::parser::Parser;
    *Parser::new(&GenericDialect {})
        .try_with_sql(text)
        .and_then(|mut p| p.parse_query())
        .expect("a table name makes a query")
}

/// Statements that are not part of a pipeline, named.
fn refuse_statement(line: u64, s: &Statement) -> SqlError {
    let text = s.to_string();
    let first: String = text
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    let message = match s {
        Statement::Query(_) if text.to_ascii_lowercase().contains("system.") => {
            "system tables describe a running pipeline: query them with mqlink query 'SELECT …' (the pipeline's http.listen), not in a pipeline file".to_string()
        }
        Statement::Query(_) => "a bare SELECT is a one-off query, not part of a pipeline: write CREATE VIEW name AS SELECT …, or INSERT INTO sink SELECT …".to_string(),
        _ => "not a pipeline statement: use CREATE CONNECTION, CREATE TABLE, CREATE VIEW, INSERT INTO or CREATE SINK".to_string(),
    };
    SqlError::at(line, first, None, message)
}

/// `checkpoint_interval`: seconds (`10`, `0.5`) or with a unit (`'10 s'`,
/// `'500 ms'`, `'1 minute'`).
fn duration(v: &str) -> Result<std::time::Duration, String> {
    let t = v.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (n, unit) = (&t[..split], t[split..].trim().to_ascii_lowercase());
    let n: f64 = n
        .parse()
        .map_err(|_| format!("{v:?} is not a duration (10, '10 s', '500 ms', '1 minute')"))?;
    let scale = match unit.as_str() {
        "" | "s" | "sec" | "secs" | "second" | "seconds" => 1.0,
        "ms" | "millisecond" | "milliseconds" => 0.001,
        "m" | "min" | "mins" | "minute" | "minutes" => 60.0,
        _ => return Err(format!("{v:?}: unknown unit {unit:?} (ms, s, minutes)")),
    };
    let secs = n * scale;
    if !(0.01..=86_400.0).contains(&secs) {
        return Err(format!("{v:?}: between 10 ms and a day"));
    }
    Ok(std::time::Duration::from_secs_f64(secs))
}
