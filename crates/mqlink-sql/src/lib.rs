//! mqlink pipelines written in SQL: what Laminar, Arroyo and RisingWave
//! users write (`CREATE CONNECTION`, `CREATE TABLE … WITH (connector = …)`,
//! `CREATE VIEW`, `INSERT INTO`, `CREATE SINK`), compiled into the same
//! typed [`Pipeline`] as a TOML file, with each query evaluated by Apache
//! DataFusion as a stage between its sources and its sinks.
//!
//! # Layout
//! - [`ddl`]: the statements of a file, read with `sqlparser`.
//! - [`compile`]: statements → the pipeline's connections, sources and
//!   sinks (the connector registry parses their options, as for TOML) and
//!   one stage per source table read by a query.
//! - [`plan`]: a query planned by DataFusion into per-source programs of
//!   filters and projections; what a stream cannot run is refused by name.
//! - [`stage`]: a program run on each batch of records as Arrow columns
//!   (the pipeline's [`mqlink_pipeline::transform::Transform`]).
//! - [`window`]: `TUMBLE`/`HOP` windows (as group keys or as the window
//!   TVFs of Flink and RisingWave), and a windowed aggregate lowered
//!   into steps before and after it; [`aggregate`]: its stage, with
//!   watermarks, late rows and epoch checkpoints of its state;
//!   [`shared`]: its partial rows when several processes share the
//!   messages.
//! - [`json`]: `->`, `->>` and the `json_get*` functions.
//! - [`query`]: one-off queries over a running pipeline's system tables and
//!   its source tables' recent rows (`mqlink query`, /query): planned by
//!   DataFusion, run over a snapshot.
//!
//! Acknowledgements stay the pipeline's: a record a filter removes counts
//! as done, the others are acknowledged once every sink has them.

pub mod aggregate;
pub mod budget;
pub mod compile;
pub mod ddl;
pub mod depth;
pub mod json;
pub mod plan;
pub mod query;
pub mod shared;
pub mod stage;
pub mod window;

#[cfg(test)]
mod tvf_tests;

use std::path::Path;

use mqlink_pipeline::{ConfigError, Pipeline};

/// What is wrong with a `.sql` file, located for the user.
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    #[error("line {line}: {message}")]
    Syntax { line: u64, message: String },
    #[error("line {line}: {statement}: {key}{message}")]
    Statement {
        line: u64,
        /// `CREATE TABLE iot_telemetry`.
        statement: String,
        /// `qos: ` or empty.
        key: String,
        message: String,
    },
}

impl SqlError {
    pub(crate) fn syntax(line: u64, e: impl std::fmt::Display) -> SqlError {
        let message = e.to_string();
        // sqlparser repeats the position it already gave as `line`.
        let message = match message.find(" at Line: ") {
            Some(i) => message[..i].to_string(),
            None => message,
        };
        let message = message
            .strip_prefix("sql parser error: ")
            .unwrap_or(&message)
            .to_string();
        SqlError::Syntax { line, message }
    }

    pub(crate) fn at(
        line: u64,
        statement: impl Into<String>,
        key: Option<&str>,
        message: impl Into<String>,
    ) -> SqlError {
        SqlError::Statement {
            line,
            statement: statement.into(),
            key: key.map(|k| format!("{k}: ")).unwrap_or_default(),
            message: message.into(),
        }
    }
}

impl From<SqlError> for ConfigError {
    fn from(e: SqlError) -> ConfigError {
        let (path, message) = match e {
            SqlError::Syntax { line, message } => (format!("line {line}"), message),
            SqlError::Statement {
                line,
                statement,
                key,
                message,
            } => (
                format!(
                    "line {line}: {statement}{}",
                    key.strip_suffix(": ")
                        .map(|k| format!(": {k}"))
                        .unwrap_or_default()
                ),
                message,
            ),
        };
        ConfigError { path, message }
    }
}

/// The environment variable naming this process among several running
/// the same file (`mqlink run --instance`): with it, a windowed query
/// reading a share group writes partial rows per instance (see
/// [`shared`]).
pub use mqlink_pipeline::spec::INSTANCE_ENV;

/// Reads and validates a `.sql` pipeline file without connecting anywhere.
pub fn load(path: &Path) -> Result<Pipeline, ConfigError> {
    load_with(path, &|k| std::env::var(k).ok())
}

/// [`load`] with `env` looking up `${VAR}`s and [`INSTANCE_ENV`].
pub fn load_with(
    path: &Path,
    env: &(dyn Fn(&str) -> Option<String> + Sync),
) -> Result<Pipeline, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        path: path.display().to_string(),
        message: format!("cannot read: {e}"),
    })?;
    parse(&text, env)
}

/// Compiles SQL text; `env` looks up `${VAR}`s in option values.
pub fn parse(
    text: &str,
    env: &(dyn Fn(&str) -> Option<String> + Sync),
) -> Result<Pipeline, ConfigError> {
    // Parsed, planned and dropped where deep trees fit (see [`depth`]).
    depth::on_deep_stack(|| compile::compile(ddl::parse(text)?, env)).map_err(|message| {
        ConfigError {
            path: "SQL".into(),
            message,
        }
    })?
}

#[cfg(test)]
mod tests {
    use mqlink::format::Value;
    use mqlink_pipeline::batch::Item;
    use mqlink_pipeline::connectors::mqtt::MqttSinkConfig;
    use mqlink_pipeline::connectors::postgres::PostgresSinkConfig;

    use super::*;

    fn env(k: &str) -> Option<String> {
        (k == "PW").then(|| "pw-secret".to_string())
    }

    fn compile(sql: &str) -> Result<Pipeline, String> {
        parse(sql, &env).map_err(|e| e.to_string())
    }

    const BASE: &str = "CREATE CONNECTION c FROM mqtt_source WITH (broker = 'tcp://127.0.0.1:1883', password = '${PW}');
CREATE TABLE t (id BIGINT, name TEXT, temp DOUBLE, topic TEXT METADATA FROM 'topic') WITH (connector = 'mqtt_source', connection = 'c', topics = '[\"a/#\"]');
CREATE TABLE f WITH (connector = 'file', path = 'out.jsonl');
";

    fn item(topic: &str, id: i64, name: Option<&str>, temp: f64) -> Item {
        Item {
            topic: Some(topic.into()),
            origin: None,
            payload: bytes::Bytes::new(),
            value: Value::Row(vec![
                ("id".into(), Value::BigInt(id)),
                (
                    "name".into(),
                    name.map_or(Value::Null, |n| Value::Text(n.into())),
                ),
                ("temp".into(), Value::Double(temp)),
            ]),
        }
    }

    /// The stage of source `t` of a query, run on items.
    fn run(query: &str, items: Vec<Item>) -> (Vec<Vec<(String, Value)>>, usize) {
        let p = compile(&format!("{BASE}INSERT INTO f {query};")).unwrap();
        let mut stage = p.transforms["t"].make();
        let out = stage.apply(items, tokio::time::Instant::now());
        let rows = out
            .items
            .into_iter()
            .map(|i| match i.value {
                Value::Row(r) => r.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
                other => panic!("{other:?}"),
            })
            .collect();
        (rows, out.faults.len())
    }

    #[test]
    fn the_examples_compile() {
        for (file, sources, sinks) in [
            ("laminar.sql", 3, 1),
            ("arroyo.sql", 1, 1),
            ("arroyo-window.sql", 1, 1),
        ] {
            let text = std::fs::read_to_string(
                std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../../examples/sql")
                    .join(file),
            )
            .unwrap();
            let p = parse(&text, &|k| (k == "MQTT_PASSWORD").then(|| "x".into())).unwrap();
            assert_eq!((p.sources.len(), p.sinks.len()), (sources, sinks), "{file}");
            assert_eq!(p.transforms.len(), sources, "{file}");
        }
    }

    #[test]
    fn filter_projection_and_functions() {
        let (rows, faults) = run(
            "SELECT id * 2 AS twice, upper(name) AS n, SPLIT_PART(topic, '/', 2) AS dev, \
             CASE WHEN temp > 30 THEN 'hot' ELSE 'ok' END AS level, CAST(temp AS BIGINT) AS t \
             FROM t WHERE temp > 20 OR name IS NULL",
            vec![
                item("a/d1/x", 1, Some("x"), 35.5),
                item("a/d2/x", 2, Some("y"), 10.0),
                item("a/d3/x", 3, None, 10.0),
                item("a/d4/x", 4, Some("z"), 25.0),
            ],
        );
        assert_eq!(faults, 0);
        let v = |r: &Vec<(String, Value)>| r.iter().map(|(_, v)| v.clone()).collect::<Vec<_>>();
        assert_eq!(
            rows.iter().map(v).collect::<Vec<_>>(),
            vec![
                vec![
                    Value::BigInt(2),
                    Value::Text("X".into()),
                    Value::Text("d1".into()),
                    Value::Text("hot".into()),
                    Value::BigInt(35)
                ],
                vec![
                    Value::BigInt(6),
                    Value::Null,
                    Value::Text("d3".into()),
                    Value::Text("ok".into()),
                    Value::BigInt(10)
                ],
                vec![
                    Value::BigInt(8),
                    Value::Text("Z".into()),
                    Value::Text("d4".into()),
                    Value::Text("ok".into()),
                    Value::BigInt(25)
                ],
            ]
        );
        assert_eq!(
            rows[0].iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
            ["twice", "n", "dev", "level", "t"]
        );
    }

    /// NULL in a WHERE drops the row (three-valued logic).
    #[test]
    fn null_is_not_true() {
        let (rows, _) = run(
            "SELECT id FROM t WHERE name <> 'x'",
            vec![
                item("a", 1, None, 0.0),
                item("a", 2, Some("y"), 0.0),
                item("a", 3, Some("x"), 0.0),
            ],
        );
        assert_eq!(rows, vec![vec![("id".to_string(), Value::BigInt(2))]]);
    }

    /// A row that cannot be computed is a record fault; the others go on.
    #[test]
    fn a_failing_row_is_a_fault_alone() {
        let (rows, faults) = run(
            "SELECT CAST(name AS BIGINT) AS n FROM t",
            vec![
                item("a", 1, Some("12"), 0.0),
                item("a", 2, Some("twelve"), 0.0),
                item("a", 3, Some("7"), 0.0),
            ],
        );
        assert_eq!(faults, 1);
        assert_eq!(
            rows,
            vec![
                vec![("n".to_string(), Value::BigInt(12))],
                vec![("n".to_string(), Value::BigInt(7))]
            ]
        );
    }

    #[test]
    fn aliases_of_arroyo_and_risingwave() {
        let p = compile(
            "CREATE TABLE s (id BIGINT) WITH (connector = 'mqtt', type = 'source', url = 'tcp://h:1883', topic = 'x/y', qos = 'ExactlyOnce', clean_start = 'false', client_prefix = 'me', 'tls.ca' = '/ca.pem');
             CREATE SINK k FROM s WITH (connector = 'mqtt', url = 'tcp://h:1883', topic = 'out/{id}', qos = 'AtLeastOnce', 'sink.retain' = 'true');",
        )
        .unwrap();
        let c = &p.connections["s_connection"];
        assert_eq!(c.client_id.as_deref(), Some("me"));
        assert!(!c.clean_session);
        assert_eq!(
            c.tls_ca_cert.as_deref(),
            Some(std::path::Path::new("/ca.pem"))
        );
        let Some(m) = p.sinks[0].1.kind.get::<MqttSinkConfig>() else {
            panic!()
        };
        assert!(m.retain);
        assert_eq!(p.sinks[0].1.inputs, ["s"]);
    }

    /// A SQL sink publishing as a Sparkplug B edge node.
    #[test]
    fn a_sparkplug_edge_node_sink() {
        let p = compile(
            "CREATE TABLE s (device_id TEXT, temperature DOUBLE) WITH (connector = 'mqtt', type = 'source', url = 'tcp://h:1883', topic = 'x/y');
             CREATE SINK k FROM s WITH (connector = 'mqtt', url = 'tcp://h:1883', format = 'sparkplug_b', 'sparkplug.group_id' = 'plant', 'sparkplug.edge_node_id' = 'mqlink', 'sparkplug.device_id' = '{device_id}');",
        )
        .unwrap();
        let Some(m) = p.sinks[0].1.kind.get::<MqttSinkConfig>() else {
            panic!()
        };
        let edge = m.sparkplug.as_ref().unwrap();
        assert_eq!((&*edge.group_id, &*edge.edge_node_id), ("plant", "mqlink"));
        assert_eq!(edge.device_id.as_deref(), Some("{device_id}"));
        assert!(m.topic.is_none());
    }

    #[test]
    fn secrets_stay_out_of_debug_and_errors() {
        let p = compile(&format!("{BASE}INSERT INTO f SELECT * FROM t;")).unwrap();
        assert!(!format!("{p:?}").contains("pw-secret"));
        let e = compile(&BASE.replace("password = '${PW}'", "password = '${PW}', qos = 1"))
            .unwrap_err();
        assert!(
            e.starts_with("line 1: CREATE CONNECTION c: qos: unknown option"),
            "{e}"
        );
        assert!(!e.contains("pw-secret"), "{e}");
    }

    /// A PostgreSQL sink's columns are its query's.
    #[test]
    fn sink_columns_are_the_query_s() {
        let p = compile(&format!(
            "{BASE}CREATE TABLE db WITH (connector = 'postgres', url = 'postgres://u@h/d', table = 'x', primary_key = 'dev, id');
             INSERT INTO db SELECT id, SPLIT_PART(topic, '/', 2) AS dev, temp > 3 AS warm FROM t;"
        ).replace("CREATE TABLE f WITH (connector = 'file', path = 'out.jsonl');", ""))
        .unwrap();
        let Some(pg) = p.sinks[0].1.kind.get::<PostgresSinkConfig>() else {
            panic!()
        };
        let cols: Vec<String> = pg
            .schema
            .columns
            .iter()
            .map(|(n, t)| format!("{n} {t}"))
            .collect();
        assert_eq!(cols, ["id bigint", "dev text", "warm boolean"]);
        assert_eq!(pg.primary_key, ["dev", "id"]);
        let e = compile(&format!(
            "{BASE}CREATE TABLE db WITH (connector = 'postgres', url = 'postgres://u@h/d', table = 'x', primary_key = 'nope');
             INSERT INTO db SELECT id FROM t;"
        ).replace("CREATE TABLE f WITH (connector = 'file', path = 'out.jsonl');", ""))
        .unwrap_err();
        assert!(
            e.starts_with("line 4: CREATE TABLE db: primary_key[0]: \"nope\" is not a column"),
            "{e}"
        );
    }

    /// `connector = 'influxdb'` and `'webhook'` through the registry, with
    /// Arroyo's and RisingWave's option names.
    #[test]
    fn influxdb_and_webhook_sinks() {
        use mqlink_pipeline::connectors::{influxdb::InfluxSinkConfig, webhook::HttpSinkConfig};
        let sql = |sink: &str, query: &str| {
            compile(&format!("{BASE}{sink};\n{query};").replace(
                "CREATE TABLE f WITH (connector = 'file', path = 'out.jsonl');",
                "",
            ))
        };
        let p = sql(
            "CREATE TABLE tsdb WITH (connector = 'influxdb', endpoint = 'http://h:8086', db = 'plant', user = 'w', password = '${PW}', measurement = 'm', tags = 'name', timestamp = 'id', precision = 'ms')",
            "INSERT INTO tsdb SELECT id, name, temp FROM t",
        )
        .unwrap();
        let influx = p.sinks[0].1.kind.get::<InfluxSinkConfig>().unwrap();
        assert_eq!(influx.database.as_deref(), Some("plant"));
        assert_eq!(influx.username.as_deref(), Some("w"));
        assert_eq!(influx.tags, ["name"]);
        assert!(!format!("{p:?}").contains("pw-secret"));
        let p = sql(
            "CREATE TABLE hook WITH (connector = 'webhook', endpoint = 'http://h/in/{name}', headers = 'X-A: 1, X-B: {id}')",
            "INSERT INTO hook SELECT id, name FROM t",
        )
        .unwrap();
        let hook = p.sinks[0].1.kind.get::<HttpSinkConfig>().unwrap();
        assert_eq!(hook.url.to_string(), "http://h/in/{name}");
        assert_eq!(hook.headers["X-B"], "{id}");
        let e = compile(&format!(
            "{BASE}CREATE TABLE tsdb WITH (connector = 'influxdb', endpoint = 'http://h:8086', db = 'plant', measurement = 'm', tags = 'nope');
             INSERT INTO tsdb SELECT id, name FROM t;"
        ).replace("CREATE TABLE f WITH (connector = 'file', path = 'out.jsonl');", ""))
        .unwrap_err();
        assert!(e.contains("tags: \"nope\" is not a field"), "{e}");
    }

    /// SQL text is user input: no mutation of a valid file panics.
    #[test]
    fn mutated_files_never_panic() {
        let bases = [
            format!("{BASE}INSERT INTO f SELECT id, upper(name) AS n FROM t WHERE temp > 3;"),
            // A window TVF: the TABLE arguments are dropped from the tokens.
            format!("{BASE}INSERT INTO f SELECT window_start, w.window_end, name, COUNT(*) AS c \
                FROM TABLE(HOP(DATA => TABLE t, TIMECOL => DESCRIPTOR(id), SLIDE => INTERVAL '1' MINUTE, SIZE => INTERVAL '5' MINUTE)) AS w \
                GROUP BY window_start, window_end, name HAVING COUNT(*) > 1;"),
        ];
        let alphabet = b"()',;=.\"-_> \n0123456789abcxyzSELECTFROMWHERE*+/";
        let mut rng = fastrand::Rng::with_seed(7);
        for i in 0..800 {
            let text = testkit::mutate(&mut rng, &bases[i % bases.len()], alphabet, 1..5);
            let _ = compile(&text);
        }
    }
}
