//! PostgreSQL: rows in batches, one `INSERT … SELECT * FROM unnest($1, $2, …)`
//! per batch (one round trip for thousands of rows, typed array
//! parameters, no SQL text per row). A batch is confirmed when the statement
//! returned, i.e. committed. With `primary_key`, `ON CONFLICT DO NOTHING`
//! makes redelivered messages harmless: after a crash each message is still
//! exactly one row.
//!
//! Faults, as PostgreSQL classes them (SQLSTATE): refused credentials, a
//! missing database, role, table or column are fatal (retrying cannot
//! help); a row that violates a constraint or does not fit its column
//! (classes 22 and 23) is a record fault: the job is written again row by
//! row and only the rows PostgreSQL refuses are skipped or dead-lettered;
//! anything else (the server is down, restarting, a lost connection) is
//! retried with the batch held.
//!
//! The URL may carry a password: it is only handed to the driver, never
//! printed (errors come from the driver, which does not repeat it).

use std::error::Error as StdError;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use mqlink::format::{ColumnType, Schema, Value};
use mqlink::Secret;
use serde::Deserialize;
use serde_json::Value as Json;
use tokio_postgres::types::{IsNull, ToSql, Type};
use tokio_postgres::{Client, NoTls, Statement};

use super::{
    fields_of, Connector, Key, KeyType, Reaches, SinkSpec, SinkSpecRef, SinkStart, SinkType,
};
use crate::batch::Item;
use crate::sink::{confirmed, Confirmation, Job, RecordFault, Sink, WriteError};
use crate::spec::{err, pg_batch, secret_required, typed, ConfigError, Context};

pub const CONNECTOR: Connector = Connector {
    name: "postgres",
    source: None,
    sink: Some(SinkType {
        // RisingWave's and Arroyo's (JDBC) names.
        aliases: &["postgresql", "jdbc"],
        status_name: "postgres",
        keys: &[
            Key::text("url").alias(&["connection_string"]),
            Key::text("table").alias(&["table.name"]),
            Key::of("create_table", KeyType::Bool),
            Key::of("primary_key", KeyType::List),
            Key::of("batch_size", KeyType::Number),
        ],
        fields: fields_of::<PostgresSinkConfig>,
        metrics: &[crate::status::SINK_CONNECTION],
        parse,
    }),
    reaches: Reaches::Database("PostgreSQL"),
};

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct PostgresSinkConfig {
    /// `postgres://user[:password]@host[:port]/database`; the password is never printed.
    #[serde(deserialize_with = "secret_required")]
    pub url: Secret,
    /// The table rows are inserted into (required); its columns are the
    /// inputs' schema's.
    pub table: String,
    /// Create the table (if missing) with the input's schema as columns
    /// [default: false].
    #[serde(default)]
    pub create_table: bool,
    /// Columns that identify a message: redelivered rows are ignored
    /// (`ON CONFLICT DO NOTHING`), so a crash still gives one row each
    /// [default: none: every delivery is inserted].
    #[serde(default)]
    pub primary_key: Vec<String>,
    /// Rows per INSERT at most [default: 5000].
    #[serde(default = "pg_batch")]
    pub batch_size: usize,
    /// The inputs' columns (one schema for all), set when loaded.
    #[serde(skip)]
    pub schema: Schema,
    /// Partial rows of one process among several (set by the SQL front
    /// end for a windowed query in a share group): see [`Partials`].
    #[serde(skip)]
    pub partials: Option<Partials>,
}

/// Rows that are one process's share of an aggregate: the process's
/// instance name goes into an extra column, [`INSTANCE_COLUMN`], which
/// joins the primary key (so one process's redelivered row is still
/// ignored, but another's partial row is kept), and the view
/// `<table>_merged` combines the partial rows into the result a single
/// process would have written.
#[derive(Debug, Clone)]
pub struct Partials {
    pub instance: String,
    /// The columns that identify a result row (the window and the group
    /// keys): the view groups by them.
    pub group: Vec<String>,
    /// The other columns and how partial values combine.
    pub merge: Vec<(String, Merge)>,
}

/// How the partial values of one aggregate combine.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Merge {
    /// COUNT and SUM.
    Sum,
    Min,
    Max,
}

/// The column naming the process that wrote a partial row.
pub const INSTANCE_COLUMN: &str = "mqlink_instance";

/// The view combining a table's partial rows.
pub fn merged_view_name(table: &str) -> String {
    format!("{table}_merged")
}

pub fn parse(ctx: &Context, body: Json) -> Result<SinkSpecRef, ConfigError> {
    let mut p: PostgresSinkConfig = typed(ctx.path, body)?;
    p.schema = p.validate(ctx)?;
    Ok(std::sync::Arc::new(p))
}

impl SinkSpec for PostgresSinkConfig {
    fn connector(&self) -> &'static Connector {
        &CONNECTOR
    }
    fn spawn(&self, s: SinkStart) -> tokio::task::JoinHandle<Result<(), String>> {
        s.run(PostgresSink::new(self.clone()))
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

impl PostgresSinkConfig {
    /// Checks the options against the inputs; returns their schema.
    fn validate(&self, ctx: &Context) -> Result<Schema, ConfigError> {
        let (path, inputs) = (ctx.path, ctx.inputs);
        let url = self
            .url
            .expose()
            .parse::<tokio_postgres::Config>()
            .map_err(|e| err(format!("{path}.url"), format!("not a PostgreSQL URL: {e}")))?;
        if url.get_ssl_mode() == tokio_postgres::config::SslMode::Require {
            return Err(err(
                format!("{path}.url"),
                "sslmode=require: the PostgreSQL sink speaks plain TCP only (TLS is not built in yet)",
            ));
        }
        if self.table.is_empty() {
            return Err(err(format!("{path}.table"), "must not be empty"));
        }
        if self.batch_size == 0 {
            return Err(err(format!("{path}.batch_size"), "must be at least 1"));
        }
        crate::spec::at_most(
            path,
            "batch_size",
            self.batch_size,
            crate::spec::MAX_BATCH_SIZE,
            "rows",
        )?;
        let schema_of = |n: &String| ctx.source(n).and_then(|s| s.schema());
        let first = schema_of(&inputs[0]);
        for (i, input) in inputs.iter().enumerate() {
            let s = schema_of(input);
            if s.is_none() {
                return Err(err(
                    format!("{path}.inputs[{i}]"),
                    format!("source {input:?} has no schema; PostgreSQL rows need typed columns (set format = \"json\" and a schema on the source)"),
                ));
            }
            if s != first {
                return Err(err(
                    format!("{path}.inputs[{i}]"),
                    format!("source {input:?} has another schema than {:?}; one table has one set of columns", inputs[0]),
                ));
            }
        }
        let Some(schema) = first else {
            return Err(err(format!("{path}.inputs"), "no input has a schema"));
        };
        for (i, k) in self.primary_key.iter().enumerate() {
            if !schema.columns.iter().any(|(c, _)| &**c == k) {
                return Err(err(
                    format!("{path}.primary_key[{i}]"),
                    format!("{k:?} is not a column of the input's schema"),
                ));
            }
        }
        Ok(schema)
    }
}

/// `"a"."b"` from `a.b`: identifiers quoted, so any name works.
fn quote_ident(name: &str) -> String {
    name.split('.')
        .map(|p| format!("\"{}\"", p.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(".")
}

fn sql_type(t: ColumnType) -> (&'static str, &'static str) {
    // (column type, array parameter type)
    match t {
        ColumnType::Text => ("text", "text[]"),
        ColumnType::BigInt => ("bigint", "int8[]"),
        ColumnType::Double => ("double precision", "float8[]"),
        ColumnType::Boolean => ("boolean", "bool[]"),
        ColumnType::Timestamp => ("timestamptz", "timestamptz[]"),
        ColumnType::Json => ("jsonb", "jsonb[]"),
        ColumnType::Bytea => ("bytea", "bytea[]"),
    }
}

/// The primary key's columns, quoted; with partial rows, the instance
/// column is one of them.
fn primary_key(cfg: &PostgresSinkConfig) -> Vec<String> {
    let mut pk: Vec<String> = cfg.primary_key.iter().map(|k| quote_ident(k)).collect();
    if cfg.partials.is_some() && !pk.is_empty() {
        pk.push(quote_ident(INSTANCE_COLUMN));
    }
    pk
}

pub fn create_table_sql(cfg: &PostgresSinkConfig, schema: &Schema) -> String {
    let mut cols: Vec<String> = schema
        .columns
        .iter()
        .map(|(n, t)| format!("{} {}", quote_ident(n), sql_type(*t).0))
        .collect();
    if cfg.partials.is_some() {
        cols.push(format!("{} text NOT NULL", quote_ident(INSTANCE_COLUMN)));
    }
    let pk = primary_key(cfg);
    if !pk.is_empty() {
        cols.push(format!("PRIMARY KEY ({})", pk.join(", ")));
    }
    let create = format!(
        "CREATE TABLE IF NOT EXISTS {} ({})",
        quote_ident(&cfg.table),
        cols.join(", ")
    );
    let Some(partials) = &cfg.partials else {
        return create;
    };
    // Processes starting together would race on the catalog
    // ("duplicate key value violates unique constraint pg_type…"): one
    // at a time, under a lock named after the table.
    let lock = format!("mqlink create {}", cfg.table).replace('\'', "''");
    format!(
        "BEGIN; SELECT pg_advisory_xact_lock(hashtext('{lock}')); {create}; {}; COMMIT",
        merged_view_sql(cfg, partials, schema)
    )
}

/// `CREATE OR REPLACE VIEW <table>_merged`: the partial rows of every
/// instance combined per window and group keys, with the table's columns
/// (but the instance) in their order and types.
pub fn merged_view_sql(cfg: &PostgresSinkConfig, partials: &Partials, schema: &Schema) -> String {
    let cols: Vec<String> = schema
        .columns
        .iter()
        .map(|(n, t)| {
            let q = quote_ident(n);
            match partials
                .merge
                .iter()
                .find(|(m, _)| m.as_str() == &**n)
                .map(|(_, m)| m)
            {
                None => q,
                Some(m) => {
                    let f = match m {
                        Merge::Sum => "sum",
                        Merge::Min => "min",
                        Merge::Max => "max",
                    };
                    format!("{f}({q})::{} AS {q}", sql_type(*t).0)
                }
            }
        })
        .collect();
    let group: Vec<String> = partials.group.iter().map(|g| quote_ident(g)).collect();
    format!(
        "CREATE OR REPLACE VIEW {} AS SELECT {} FROM {} GROUP BY {}",
        quote_ident(&merged_view_name(&cfg.table)),
        cols.join(", "),
        quote_ident(&cfg.table),
        group.join(", ")
    )
}

pub fn insert_sql(cfg: &PostgresSinkConfig, schema: &Schema) -> String {
    let mut names: Vec<String> = schema.columns.iter().map(|(n, _)| quote_ident(n)).collect();
    let params: Vec<String> = schema
        .columns
        .iter()
        .enumerate()
        .map(|(i, (_, t))| format!("${}::{}", i + 1, sql_type(*t).1))
        .collect();
    // The instance is a literal: a name checked to be letters, digits,
    // '.', '_' and '-' (quoted all the same).
    let select = match &cfg.partials {
        Some(p) => {
            names.push(quote_ident(INSTANCE_COLUMN));
            format!("*, '{}'", p.instance.replace('\'', "''"))
        }
        None => "*".to_string(),
    };
    let mut sql = format!(
        "INSERT INTO {} ({}) SELECT {select} FROM unnest({})",
        quote_ident(&cfg.table),
        names.join(", "),
        params.join(", ")
    );
    let pk = primary_key(cfg);
    if !pk.is_empty() {
        sql.push_str(&format!(" ON CONFLICT ({}) DO NOTHING", pk.join(", ")));
    }
    sql
}

/// Microseconds since the Unix epoch, sent as PostgreSQL's binary timestamp.
#[derive(Debug, Clone, Copy)]
struct Timestamp(i64);

/// 2000-01-01T00:00:00Z, PostgreSQL's epoch, in Unix microseconds.
const PG_EPOCH_US: i64 = 946_684_800_000_000;

impl ToSql for Timestamp {
    fn to_sql(
        &self,
        _: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn StdError + Sync + Send>> {
        out.put_i64(self.0 - PG_EPOCH_US);
        Ok(IsNull::No)
    }
    fn accepts(ty: &Type) -> bool {
        matches!(*ty, Type::TIMESTAMPTZ | Type::TIMESTAMP)
    }
    tokio_postgres::types::to_sql_checked!();
}

/// One column of a batch, borrowed from its records.
enum Column<'a> {
    Text(Vec<Option<&'a str>>),
    BigInt(Vec<Option<i64>>),
    Double(Vec<Option<f64>>),
    Boolean(Vec<Option<bool>>),
    Timestamp(Vec<Option<Timestamp>>),
    Json(Vec<Option<&'a serde_json::Value>>),
    Bytea(Vec<Option<&'a [u8]>>),
}

impl<'a> Column<'a> {
    fn new(t: ColumnType, n: usize) -> Self {
        match t {
            ColumnType::Text => Column::Text(Vec::with_capacity(n)),
            ColumnType::BigInt => Column::BigInt(Vec::with_capacity(n)),
            ColumnType::Double => Column::Double(Vec::with_capacity(n)),
            ColumnType::Boolean => Column::Boolean(Vec::with_capacity(n)),
            ColumnType::Timestamp => Column::Timestamp(Vec::with_capacity(n)),
            ColumnType::Json => Column::Json(Vec::with_capacity(n)),
            ColumnType::Bytea => Column::Bytea(Vec::with_capacity(n)),
        }
    }

    /// Appends a value; the schema's decoder made it of the column's type
    /// (or null).
    fn push(&mut self, v: Option<&'a Value>) {
        match self {
            Column::Text(c) => c.push(match v {
                Some(Value::Text(s)) => Some(s),
                _ => None,
            }),
            Column::BigInt(c) => c.push(match v {
                Some(Value::BigInt(n)) => Some(*n),
                _ => None,
            }),
            Column::Double(c) => c.push(match v {
                Some(Value::Double(f)) => Some(*f),
                Some(Value::BigInt(n)) => Some(*n as f64),
                _ => None,
            }),
            Column::Boolean(c) => c.push(match v {
                Some(Value::Boolean(b)) => Some(*b),
                _ => None,
            }),
            Column::Timestamp(c) => c.push(match v {
                Some(Value::Timestamp(us)) => Some(Timestamp(*us)),
                _ => None,
            }),
            Column::Json(c) => c.push(match v {
                Some(Value::Json(j)) => Some(j),
                _ => None,
            }),
            Column::Bytea(c) => c.push(match v {
                Some(Value::Bytes(b)) => Some(&b[..]),
                _ => None,
            }),
        }
    }

    fn param(&self) -> &(dyn ToSql + Sync) {
        match self {
            Column::Text(c) => c,
            Column::BigInt(c) => c,
            Column::Double(c) => c,
            Column::Boolean(c) => c,
            Column::Timestamp(c) => c,
            Column::Json(c) => c,
            Column::Bytea(c) => c,
        }
    }
}

/// The records as column arrays, in schema order.
fn columns<'a>(schema: &Schema, items: &[&'a Item]) -> Vec<Column<'a>> {
    let mut cols: Vec<Column> = schema
        .columns
        .iter()
        .map(|(_, t)| Column::new(*t, items.len()))
        .collect();
    for item in items {
        match &item.value {
            Value::Row(row) => {
                for (i, col) in cols.iter_mut().enumerate() {
                    // Rows come in schema order; look the name up only if not.
                    let v = match row.get(i) {
                        Some((name, v)) if **name == *schema.columns[i].0 => Some(v),
                        _ => row
                            .iter()
                            .find(|(name, _)| *name == schema.columns[i].0)
                            .map(|(_, v)| v),
                    };
                    col.push(v);
                }
            }
            _ => cols.iter_mut().for_each(|c| c.push(None)),
        }
    }
    cols
}

struct Conn {
    client: Client,
    insert: Statement,
}

/// What kind of fault a PostgreSQL error is.
#[derive(Debug, PartialEq)]
enum Class {
    /// Retrying cannot help: credentials, database, role, table, column, privileges.
    Fatal,
    /// The rows: a constraint they violate, a value that does not fit.
    Rows,
    /// The server is down, restarting, or the connection was lost.
    Transient,
}

fn classify(e: &tokio_postgres::Error) -> Class {
    let Some(db) = e.as_db_error() else {
        return Class::Transient;
    };
    let code = db.code().code();
    match &code[..2] {
        // invalid authorization (wrong password, no such role), invalid
        // catalog (no such database), invalid schema name
        "28" | "3D" | "3F" => Class::Fatal,
        // undefined table / column, insufficient privilege, wrong column type
        "42" if matches!(code, "42P01" | "42703" | "42501" | "42804") => Class::Fatal,
        "22" | "23" => Class::Rows,
        _ => Class::Transient,
    }
}

/// PostgreSQL's own message where there is one (tokio-postgres' Display
/// says only "db error"), else the whole chain of causes.
fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut s = format!("{} (SQLSTATE {})", db.message(), db.code().code());
        if let Some(d) = db.detail() {
            s.push_str(&format!(": {d}"));
        }
        return s;
    }
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(&format!(": {c}"));
        cause = c.source();
    }
    s
}

fn fault(what: &str, e: &tokio_postgres::Error) -> WriteError {
    let msg = format!("{what}: {}", describe(e));
    match classify(e) {
        Class::Fatal => WriteError::Fatal(msg),
        Class::Rows | Class::Transient => WriteError::Retry(msg),
    }
}

pub struct PostgresSink {
    cfg: PostgresSinkConfig,
    conn: Option<Conn>,
}

impl PostgresSink {
    pub fn new(cfg: PostgresSinkConfig) -> PostgresSink {
        PostgresSink { cfg, conn: None }
    }

    async fn connect(&self) -> Result<Conn, WriteError> {
        let cfg = &self.cfg;
        let mut pg: tokio_postgres::Config = cfg
            .url
            .expose()
            .parse()
            .map_err(|e| WriteError::Fatal(format!("url: {e}")))?;
        pg.connect_timeout(Duration::from_secs(10));
        pg.application_name("mqlink");
        let (client, connection) = pg
            .connect(NoTls)
            .await
            .map_err(|e| fault("cannot connect", &e))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "PostgreSQL connection ended.");
            }
        });
        if cfg.create_table {
            client
                .batch_execute(&create_table_sql(cfg, &cfg.schema))
                .await
                .map_err(|e| fault(&format!("create table {}", cfg.table), &e))?;
        }
        let insert = client
            .prepare(&insert_sql(cfg, &cfg.schema))
            .await
            .map_err(|e| fault(&format!("insert into {}", cfg.table), &e))?;
        Ok(Conn { client, insert })
    }

    /// Writes the records one by one, after the job as a whole was refused
    /// for its rows: only the rows PostgreSQL refuses become record faults.
    async fn write_rows(&mut self, items: &[&Item]) -> Result<Vec<RecordFault>, WriteError> {
        let mut faults = Vec::new();
        let Some(c) = &self.conn else {
            return Err(WriteError::Retry("not connected".into()));
        };
        for (index, item) in items.iter().enumerate() {
            let cols = columns(&self.cfg.schema, std::slice::from_ref(item));
            let params: Vec<&(dyn ToSql + Sync)> = cols.iter().map(Column::param).collect();
            if let Err(e) = c.client.execute(&c.insert, &params).await {
                if classify(&e) != Class::Rows {
                    return Err(self.lost(&e));
                }
                faults.push(RecordFault {
                    index,
                    reason: format!("table {}: {}", self.cfg.table, describe(&e)),
                    class: e.code().map(|c| format!("SQLSTATE {}", c.code())),
                });
            }
        }
        Ok(faults)
    }

    /// The fault an error is; forgets a connection that is gone.
    fn lost(&mut self, e: &tokio_postgres::Error) -> WriteError {
        if self.conn.as_ref().is_some_and(|c| c.client.is_closed()) {
            self.conn = None;
        }
        fault(&format!("insert into {}", self.cfg.table), e)
    }
}

impl Sink for PostgresSink {
    fn max_records(&self) -> usize {
        self.cfg.batch_size
    }

    async fn open(&mut self) -> Result<(), WriteError> {
        self.conn = Some(self.connect().await?);
        Ok(())
    }

    async fn write(&mut self, job: &Job) -> Result<Confirmation, WriteError> {
        if self.conn.is_none() {
            let c = self.connect().await?;
            tracing::info!(table = %self.cfg.table, "PostgreSQL connected again.");
            self.conn = Some(c);
        }
        let items: Vec<&Item> = job.items().collect();
        let result = {
            let Some(c) = &self.conn else {
                return Err(WriteError::Retry("not connected".into()));
            };
            let cols = columns(&self.cfg.schema, &items);
            let params: Vec<&(dyn ToSql + Sync)> = cols.iter().map(Column::param).collect();
            c.client.execute(&c.insert, &params).await
        };
        match result {
            Ok(_) => Ok(confirmed(Vec::new())),
            Err(e) if classify(&e) == Class::Rows => {
                tracing::warn!(table = %self.cfg.table, error = %describe(&e), "Rows refused; writing the batch row by row to find them.");
                Ok(confirmed(self.write_rows(&items).await?))
            }
            Err(e) => Err(self.lost(&e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements() {
        let cfg = PostgresSinkConfig {
            url: mqlink::Secret::new("postgres://h/db"),
            table: "public.tele\"metry".into(),
            create_table: true,
            primary_key: vec!["device_id".into(), "seq".into()],
            batch_size: 10,
            schema: Schema::default(),
            partials: None,
        };
        let schema = crate::connectors::generator::schema();
        assert_eq!(
            create_table_sql(&cfg, &schema),
            "CREATE TABLE IF NOT EXISTS \"public\".\"tele\"\"metry\" (\"device_id\" text, \"seq\" bigint, \"timestamp\" timestamptz, \"temperature\" double precision, \"humidity\" double precision, PRIMARY KEY (\"device_id\", \"seq\"))"
        );
        assert_eq!(
            insert_sql(&cfg, &schema),
            "INSERT INTO \"public\".\"tele\"\"metry\" (\"device_id\", \"seq\", \"timestamp\", \"temperature\", \"humidity\") SELECT * FROM unnest($1::text[], $2::int8[], $3::timestamptz[], $4::float8[], $5::float8[]) ON CONFLICT (\"device_id\", \"seq\") DO NOTHING"
        );
    }

    #[test]
    fn partial_rows_carry_the_instance_and_a_view_merges_them() {
        let mut cfg = PostgresSinkConfig {
            url: mqlink::Secret::new("postgres://h/db"),
            table: "win".into(),
            create_table: true,
            primary_key: vec!["w".into(), "dev".into()],
            batch_size: 10,
            schema: Schema::default(),
            partials: Some(Partials {
                instance: "pod-1".into(),
                group: vec!["w".into(), "dev".into()],
                merge: vec![("n".into(), Merge::Sum), ("lo".into(), Merge::Min)],
            }),
        };
        let schema = Schema {
            columns: vec![
                ("w".into(), ColumnType::Timestamp),
                ("dev".into(), ColumnType::Text),
                ("n".into(), ColumnType::BigInt),
                ("lo".into(), ColumnType::Double),
            ],
            ..Default::default()
        };
        assert_eq!(
            insert_sql(&cfg, &schema),
            "INSERT INTO \"win\" (\"w\", \"dev\", \"n\", \"lo\", \"mqlink_instance\") SELECT *, 'pod-1' FROM unnest($1::timestamptz[], $2::text[], $3::int8[], $4::float8[]) ON CONFLICT (\"w\", \"dev\", \"mqlink_instance\") DO NOTHING"
        );
        assert_eq!(
            create_table_sql(&cfg, &schema),
            "BEGIN; SELECT pg_advisory_xact_lock(hashtext('mqlink create win')); CREATE TABLE IF NOT EXISTS \"win\" (\"w\" timestamptz, \"dev\" text, \"n\" bigint, \"lo\" double precision, \"mqlink_instance\" text NOT NULL, PRIMARY KEY (\"w\", \"dev\", \"mqlink_instance\")); CREATE OR REPLACE VIEW \"win_merged\" AS SELECT \"w\", \"dev\", sum(\"n\")::bigint AS \"n\", min(\"lo\")::double precision AS \"lo\" FROM \"win\" GROUP BY \"w\", \"dev\"; COMMIT"
        );
        cfg.partials = None;
        assert!(!insert_sql(&cfg, &schema).contains("mqlink_instance"));
    }
}
