//! PostgreSQL: rows in batches, one `INSERT … SELECT * FROM unnest($1, $2, …)`
//! per batch (one round trip for thousands of rows, typed array
//! parameters, no SQL text per row). A batch is confirmed when the statement
//! returned, i.e. committed. With `primary_key`, `ON CONFLICT DO NOTHING`
//! makes redelivered messages harmless: after a crash each message is still
//! exactly one row.
//!
//! The URL may carry a password: it is only handed to the driver, never
//! printed (errors come from the driver, which does not repeat it).

use std::error::Error as StdError;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use mqlink::format::{ColumnType, Schema, Value};
use tokio::sync::mpsc;
use tokio_postgres::types::{IsNull, ToSql, Type};
use tokio_postgres::{Client, NoTls, Statement};

use super::{backoff, next_batches};
use crate::pipeline::batch::Batch;
use crate::pipeline::config::PostgresSinkConfig;
use crate::pipeline::status::{Component, State};

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

pub fn create_table_sql(cfg: &PostgresSinkConfig, schema: &Schema) -> String {
    let mut cols: Vec<String> = schema
        .columns
        .iter()
        .map(|(n, t)| format!("{} {}", quote_ident(n), sql_type(*t).0))
        .collect();
    if !cfg.primary_key.is_empty() {
        let pk: Vec<String> = cfg.primary_key.iter().map(|k| quote_ident(k)).collect();
        cols.push(format!("PRIMARY KEY ({})", pk.join(", ")));
    }
    format!(
        "CREATE TABLE IF NOT EXISTS {} ({})",
        quote_ident(&cfg.table),
        cols.join(", ")
    )
}

pub fn insert_sql(cfg: &PostgresSinkConfig, schema: &Schema) -> String {
    let names: Vec<String> = schema.columns.iter().map(|(n, _)| quote_ident(n)).collect();
    let params: Vec<String> = schema
        .columns
        .iter()
        .enumerate()
        .map(|(i, (_, t))| format!("${}::{}", i + 1, sql_type(*t).1))
        .collect();
    let mut sql = format!(
        "INSERT INTO {} ({}) SELECT * FROM unnest({})",
        quote_ident(&cfg.table),
        names.join(", "),
        params.join(", ")
    );
    if !cfg.primary_key.is_empty() {
        let pk: Vec<String> = cfg.primary_key.iter().map(|k| quote_ident(k)).collect();
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

/// The batches as column arrays, in schema order.
fn columns<'a>(schema: &Schema, batches: &'a [Arc<Batch>]) -> Vec<Column<'a>> {
    let n: usize = batches.iter().map(|b| b.len()).sum();
    let mut cols: Vec<Column> = schema
        .columns
        .iter()
        .map(|(_, t)| Column::new(*t, n))
        .collect();
    for item in batches.iter().flat_map(|b| b.items.iter()) {
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

async fn connect(cfg: &PostgresSinkConfig, schema: &Schema) -> Result<Conn, String> {
    let mut pg: tokio_postgres::Config =
        cfg.url.expose().parse().map_err(|e| format!("url: {e}"))?;
    pg.connect_timeout(Duration::from_secs(10));
    pg.application_name("mqlink");
    let (client, connection) = pg
        .connect(NoTls)
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "PostgreSQL connection ended.");
        }
    });
    if cfg.create_table {
        client
            .batch_execute(&create_table_sql(cfg, schema))
            .await
            .map_err(|e| format!("create table {}: {}", cfg.table, db_error(&e)))?;
    }
    let insert = client
        .prepare(&insert_sql(cfg, schema))
        .await
        .map_err(|e| format!("insert into {}: {}", cfg.table, db_error(&e)))?;
    Ok(Conn { client, insert })
}

/// The server's message where there is one (tokio-postgres' Display says only "db error").
fn db_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

pub async fn run(
    path: String,
    cfg: PostgresSinkConfig,
    schema: Schema,
    comp: Arc<Component>,
    mut rx: mpsc::Receiver<Arc<Batch>>,
) -> Result<(), String> {
    let mut conn: Option<Conn> = None;
    let mut attempt = 0;
    // Connect before the first batch, so /ready tells the truth early.
    while conn.is_none() {
        match connect(&cfg, &schema).await {
            Ok(c) => conn = Some(c),
            Err(e) => {
                comp.set_error(e.clone());
                tracing::warn!(component = %path, error = %e, "PostgreSQL not ready; retrying.");
                attempt += 1;
                tokio::time::sleep(backoff(attempt)).await;
            }
        }
    }
    comp.connected.store(true, Relaxed);
    comp.set_state(State::Running);
    loop {
        let batches = next_batches(&mut rx, cfg.batch_size).await;
        if batches.is_empty() {
            return Ok(());
        }
        let n: u64 = batches.iter().map(|b| b.len() as u64).sum();
        comp.records.fetch_add(n, Relaxed);
        let cols = columns(&schema, &batches);
        let params: Vec<&(dyn ToSql + Sync)> = cols.iter().map(Column::param).collect();
        let mut attempt = 0;
        loop {
            let c = match &conn {
                Some(c) => c,
                None => match connect(&cfg, &schema).await {
                    Ok(c) => {
                        comp.connected.store(true, Relaxed);
                        tracing::info!(component = %path, "PostgreSQL connected again.");
                        conn.insert(c)
                    }
                    Err(e) => {
                        comp.set_error(e);
                        attempt += 1;
                        tokio::time::sleep(backoff(attempt)).await;
                        continue;
                    }
                },
            };
            match c.client.execute(&c.insert, &params).await {
                Ok(_) => break,
                Err(e) => {
                    // The batch stays unacknowledged and is tried again, on a
                    // new connection when this one is gone.
                    comp.errors.fetch_add(1, Relaxed);
                    comp.set_error(db_error(&e));
                    tracing::warn!(component = %path, error = %db_error(&e), "Insert failed; retrying.");
                    if c.client.is_closed() {
                        comp.connected.store(false, Relaxed);
                        conn = None;
                    }
                    attempt += 1;
                    tokio::time::sleep(backoff(attempt)).await;
                }
            }
        }
        comp.confirmed.fetch_add(n, Relaxed);
        for b in batches {
            b.confirm();
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
}
