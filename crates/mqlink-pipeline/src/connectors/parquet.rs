//! Parquet files: a data-lake landing zone that DuckDB, pyarrow and Spark
//! read. Rows take the input's schema as Arrow types; files are rolled by
//! rows, bytes and age, in partition directories rendered from fields and
//! event time (`dt=2026-12-07/hour=14/…`).
//!
//! **Commit rule.** A file is written under a hidden temporary name
//! (`.NAME-….parquet.inprogress`) in its own directory and becomes
//! `NAME-<epoch ms>-<seq>-<random>.parquet`: a reader never sees a partial
//! file. The open files are committed together, between jobs: each is
//! closed (footer) and fsynced, one line appended to the manifest
//! `.NAME.commits` in `path` (fsynced) names them all and the log
//! positions of every record handed in so far, then all are renamed and
//! their directories fsynced. Records are confirmed to the sink runner
//! only once the files that hold them are committed, so a source feeding
//! this sink keeps them in its durable local buffer until then
//! (`buffer.mode = "auto"` turns it on: see
//! [`SinkSpec::wants_local_buffer`]).
//!
//! **Exactly once through crashes.** At start the manifest's last whole
//! line is rolled forward (its temporary files that still exist were
//! complete: renamed), its positions kept, and only then the other
//! temporary files this sink left are deleted (their records were never
//! confirmed and come again). Records the buffer reads again (`dup`) at or
//! before the kept positions are in committed files: confirmed, not
//! written. So with the local buffer each record is in exactly one
//! committed file after SIGKILLs; records without a log position (no
//! buffer) are written at least once.
//!
//! Without a schema, a record is its `topic` and `payload` (the JSON text,
//! or the raw bytes for `raw_bytes` sources): the schema is never guessed.

mod commits;
mod writer;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use arrow_array::builder::{
    BinaryBuilder, BooleanBuilder, Float64Builder, Int64Builder, StringBuilder,
    TimestampMicrosecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema as ArrowSchema, SchemaRef, TimeUnit};
use mqlink::format::{format_rfc3339_micros, ColumnType, Schema, Value};
use serde::Deserialize;
use serde_json::Value as Json;

use super::{
    fields_of, Connector, Key, KeyType, Reaches, Shape, SinkSpec, SinkSpecRef, SinkStart, SinkType,
};
use crate::batch::Item;
use crate::sink::written::{self, Marks};
use crate::sink::{Confirmation, Job, RecordFault, Sink, WriteError};
use crate::spec::{err, typed, ConfigError, Context};

pub const CONNECTOR: Connector = Connector {
    name: "parquet",
    source: None,
    sink: Some(SinkType {
        aliases: &[],
        status_name: "parquet",
        keys: &[
            Key::text("path"),
            Key::text("format"),
            Key::text("partition"),
            Key::text("time_field"),
            Key::of("max_rows", KeyType::Number),
            Key::of("max_bytes", KeyType::Number).alias(&["target_file_size"]),
            Key::of("rollover_seconds", KeyType::Number),
            Key::text("compression").alias(&["parquet_compression"]),
        ],
        fields: fields_of::<ParquetSinkConfig>,
        metrics: &[],
        parse,
    }),
    reaches: Reaches::Nothing,
};

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct ParquetSinkConfig {
    /// The directory files are written under (required); created at start.
    /// One sink per directory: at start the sink deletes the temporary
    /// files its name left there.
    pub path: PathBuf,
    /// `parquet`, the only value: in SQL, `connector = 'filesystem'` with
    /// `format = 'parquet'` names this sink [default: parquet].
    #[serde(default)]
    pub format: FileFormat,
    /// Subdirectories of `path` a record's file goes in: text with
    /// `{column}` (the record's value; a missing or null one is
    /// `__HIVE_DEFAULT_PARTITION__`, `/` in it becomes `_`) and `{%Y}`,
    /// `{%m}`, `{%d}`, `{%H}`, `{%M}` (or several in one: `{%Y-%m-%d}`) of
    /// its event time in UTC, e.g. `dt={%Y-%m-%d}/hour={%H}` [default: none,
    /// files directly in `path`].
    #[serde(default)]
    pub partition: String,
    /// The timestamp column that is a record's event time for the
    /// partition's `{%…}` placeholders [default: the time the sink takes the
    /// record].
    pub time_field: Option<String>,
    /// Rows per file at most [default: 1000000].
    #[serde(default = "max_rows")]
    pub max_rows: u64,
    /// A file is committed once it holds about this many bytes (compressed,
    /// as written) [default: 134217728 (128 MiB)].
    #[serde(default = "max_bytes")]
    pub max_bytes: u64,
    /// Seconds a file stays open at most: records wait for their file's
    /// commit to be acknowledged, so this bounds their latency [default: 60].
    #[serde(default = "rollover_seconds")]
    pub rollover_seconds: u64,
    /// `zstd`, `snappy` or `none` [default: zstd].
    #[serde(default)]
    pub compression: Compression,
    #[serde(skip)]
    layout: Option<Arc<Layout>>,
}

fn max_rows() -> u64 {
    1_000_000
}
fn max_bytes() -> u64 {
    128 << 20
}
fn rollover_seconds() -> u64 {
    60
}

#[derive(Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FileFormat {
    #[default]
    Parquet,
}

#[derive(Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    #[default]
    Zstd,
    Snappy,
    #[serde(alias = "uncompressed")]
    None,
}

/// How records become rows and directories, checked against the input.
#[derive(Debug)]
struct Layout {
    columns: Columns,
    arrow: SchemaRef,
    partition: Vec<Part>,
}

/// The columns of a file.
#[derive(Debug, Clone)]
enum Columns {
    /// The input's schema.
    Typed(Schema),
    /// `topic` and `payload`: JSON text, or raw bytes.
    Payload { raw: bool },
}

/// A piece of the partition template.
#[derive(Debug, Clone, PartialEq)]
enum Part {
    Literal(String),
    Column(String),
    /// `%Y`, `%m` … of the event time, with literal text between.
    Time(String),
}

pub fn parse(ctx: &Context, body: Json) -> Result<SinkSpecRef, ConfigError> {
    let mut c: ParquetSinkConfig = typed(ctx.path, body)?;
    c.layout = Some(Arc::new(c.validate(ctx)?));
    Ok(Arc::new(c))
}

impl ParquetSinkConfig {
    fn validate(&self, ctx: &Context) -> Result<Layout, ConfigError> {
        let path = ctx.path;
        if self.path.as_os_str().is_empty() {
            return Err(err(format!("{path}.path"), "must not be empty"));
        }
        for (key, v) in [
            ("max_rows", self.max_rows),
            ("max_bytes", self.max_bytes),
            ("rollover_seconds", self.rollover_seconds),
        ] {
            if v == 0 {
                return Err(err(format!("{path}.{key}"), "must be at least 1"));
            }
        }
        let columns = input_columns(ctx)?;
        let schema = match &columns {
            Columns::Typed(s) => Some(s),
            Columns::Payload { .. } => None,
        };
        let partition = parse_partition(&self.partition).map_err(|m| {
            err(
                format!("{path}.partition"),
                format!("{:?}: {m}", self.partition),
            )
        })?;
        for p in &partition {
            if let Part::Column(c) = p {
                if schema.and_then(|s| s.column(c)).is_none() {
                    let known = column_names(&columns);
                    return Err(err(
                        format!("{path}.partition"),
                        format!("{{{c}}} is not a column of the input (columns: {known})"),
                    ));
                }
            }
        }
        if let Some(t) = &self.time_field {
            let ty = schema.and_then(|s| s.column(t));
            if ty != Some(ColumnType::Timestamp) {
                return Err(err(
                    format!("{path}.time_field"),
                    format!(
                        "{t:?} is not a timestamp column of the input (columns: {})",
                        column_names(&columns)
                    ),
                ));
            }
        }
        Ok(Layout {
            arrow: arrow_schema(&columns),
            columns,
            partition,
        })
    }
}

/// The inputs' one schema, or `topic` + `payload` for schemaless inputs.
fn input_columns(ctx: &Context) -> Result<Columns, ConfigError> {
    let path = ctx.path;
    let mut first: Option<Columns> = None;
    for (i, input) in ctx.inputs.iter().enumerate() {
        let Some(source) = ctx.source(input) else {
            continue;
        };
        let cols = match source.shape() {
            Shape::Decoded(Some(s)) | Shape::Made(s) => Columns::Typed(s),
            Shape::Decoded(None) => Columns::Payload { raw: false },
            Shape::Payload | Shape::TopicAndPayload => Columns::Payload { raw: true },
        };
        match &first {
            None => first = Some(cols),
            Some(f) if same(f, &cols) => {}
            Some(_) => {
                return Err(err(
                    format!("{path}.inputs[{i}]"),
                    format!(
                    "source {input:?} has other columns than {:?}; one set of files has one schema",
                    ctx.inputs[0]
                ),
                ))
            }
        }
    }
    Ok(first.unwrap_or(Columns::Payload { raw: false }))
}

fn same(a: &Columns, b: &Columns) -> bool {
    match (a, b) {
        (Columns::Typed(x), Columns::Typed(y)) => x == y,
        (Columns::Payload { raw: x }, Columns::Payload { raw: y }) => x == y,
        _ => false,
    }
}

fn column_names(c: &Columns) -> String {
    match c {
        Columns::Typed(s) => s
            .columns
            .iter()
            .map(|(n, _)| n.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        Columns::Payload { .. } => "topic, payload: the input has no schema".into(),
    }
}

/// The Arrow schema of the files.
fn arrow_schema(c: &Columns) -> SchemaRef {
    let fields: Vec<Field> = match c {
        Columns::Typed(s) => s
            .columns
            .iter()
            .map(|(n, t)| Field::new(n.to_string(), arrow_type(*t), !s.is_not_null(n)))
            .collect(),
        Columns::Payload { raw } => vec![
            Field::new("topic", DataType::Utf8, true),
            Field::new(
                "payload",
                if *raw {
                    DataType::Binary
                } else {
                    DataType::Utf8
                },
                true,
            ),
        ],
    };
    Arc::new(ArrowSchema::new(fields))
}

fn arrow_type(t: ColumnType) -> DataType {
    match t {
        ColumnType::Text | ColumnType::Json => DataType::Utf8,
        ColumnType::BigInt => DataType::Int64,
        ColumnType::Double => DataType::Float64,
        ColumnType::Boolean => DataType::Boolean,
        ColumnType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        ColumnType::Bytea => DataType::Binary,
    }
}

/// `dt={%Y-%m-%d}/{device}` into parts; directories may not escape `path`.
fn parse_partition(t: &str) -> Result<Vec<Part>, String> {
    let mut parts = Vec::new();
    let mut rest = t;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            parts.push(Part::Literal(rest[..open].to_owned()));
        }
        let close = rest[open..].find('}').ok_or("'{' without a closing '}'")? + open;
        let name = &rest[open + 1..close];
        if name.is_empty() || name.contains('{') {
            return Err(format!("bad placeholder {{{name}}}"));
        }
        if name.starts_with('%') {
            check_time_format(name)?;
            parts.push(Part::Time(name.to_owned()));
        } else {
            parts.push(Part::Column(name.to_owned()));
        }
        rest = &rest[close + 1..];
    }
    if rest.contains('}') {
        return Err("'}' without an opening '{'".into());
    }
    if !rest.is_empty() {
        parts.push(Part::Literal(rest.to_owned()));
    }
    let literal: String = parts
        .iter()
        .filter_map(|p| match p {
            Part::Literal(l) => Some(l.as_str()),
            _ => None,
        })
        .collect();
    if t.starts_with('/') || literal.split('/').any(|l| l == "..") {
        return Err("must stay below path: no leading '/' and no '..'".into());
    }
    if literal.split('/').any(|l| l.len() > MAX_NAME) {
        return Err(format!("a directory name is longer than {MAX_NAME} bytes"));
    }
    Ok(parts)
}

fn check_time_format(f: &str) -> Result<(), String> {
    let mut chars = f.chars();
    while let Some(c) = chars.next() {
        if c == '%' {
            match chars.next() {
                Some('Y' | 'm' | 'd' | 'H' | 'M' | '%') => {}
                other => {
                    return Err(format!(
                        "{{{f}}}: %{} is not known (use %Y, %m, %d, %H, %M)",
                        other.map(String::from).unwrap_or_default()
                    ))
                }
            }
        } else if c == '/' {
            return Err(format!("{{{f}}}: '/' goes outside the braces"));
        }
    }
    Ok(())
}

/// `f` (`%Y-%m-%d`) of `us` since the epoch, in UTC.
fn format_time(f: &str, us: i64, out: &mut String) {
    // "2026-12-07T14:03:05.000000Z": fixed widths from the end (a year
    // may have more digits, or a sign).
    let t = format_rfc3339_micros(us);
    let n = t.len();
    let mut chars = f.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        out.push_str(match chars.next() {
            Some('Y') => &t[..n - 23],
            Some('m') => &t[n - 22..n - 20],
            Some('d') => &t[n - 19..n - 17],
            Some('H') => &t[n - 16..n - 14],
            Some('M') => &t[n - 13..n - 11],
            _ => "%",
        });
    }
}

impl SinkSpec for ParquetSinkConfig {
    fn connector(&self) -> &'static Connector {
        &CONNECTOR
    }
    fn wants_local_buffer(&self) -> bool {
        true
    }
    fn spawn(&self, s: SinkStart) -> tokio::task::JoinHandle<Result<(), String>> {
        let sink = ParquetSink::new(s.path.clone(), self.clone());
        s.run(sink)
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// The sink: turns jobs into Arrow batches per directory and hands them to
/// the writer thread, which commits files and completes confirmations.
pub struct ParquetSink {
    cfg: ParquetSinkConfig,
    path: String,
    layout: Arc<Layout>,
    writer: Option<writer::Handle>,
    /// The positions whose rows were in committed files at open: records
    /// read again up to them are not written twice.
    committed: Marks,
}

impl ParquetSink {
    pub fn new(path: String, cfg: ParquetSinkConfig) -> ParquetSink {
        let layout = cfg.layout.clone().unwrap_or_else(|| {
            // Built without `parse` (the library): schemaless rows.
            let columns = Columns::Payload { raw: false };
            Arc::new(Layout {
                arrow: arrow_schema(&columns),
                columns,
                partition: parse_partition(&cfg.partition).unwrap_or_default(),
            })
        });
        ParquetSink {
            cfg,
            path,
            layout,
            writer: None,
            committed: Marks::new(),
        }
    }

    /// The job's rows grouped by directory, and the records that cannot be
    /// rows (a value of another type than its column). Records read again
    /// that are in committed files are left out (a fault is one again: its
    /// dead letter may not have been sent).
    fn rows(&self, job: &Job) -> (Vec<(PathBuf, RecordBatch)>, Vec<RecordFault>) {
        let now = now_us();
        let mut faults = Vec::new();
        let mut again = 0;
        let mut dirs: Vec<(PathBuf, Vec<usize>, Vec<&Item>)> = Vec::new();
        let mut index: HashMap<PathBuf, usize> = HashMap::new();
        for (i, item) in job.items().enumerate() {
            let dir = match self.dir_of(item, now) {
                Ok(d) => d,
                Err(reason) => {
                    faults.push(fault(i, reason));
                    continue;
                }
            };
            if let Err(reason) = check_row(&self.layout.columns, item) {
                faults.push(fault(i, reason));
                continue;
            }
            if written::holds(&self.committed, item) {
                again += 1;
                continue;
            }
            let at = *index.entry(dir.clone()).or_insert_with(|| {
                dirs.push((dir, Vec::new(), Vec::new()));
                dirs.len() - 1
            });
            dirs[at].1.push(i);
            dirs[at].2.push(item);
        }
        let mut batches = Vec::with_capacity(dirs.len());
        for (dir, indices, items) in dirs {
            match self.batch(&items) {
                Ok(b) => batches.push((dir, b)),
                // Checked per record above; should Arrow still refuse the
                // rows, they are the records' faults, not a crash.
                Err(e) => faults.extend(indices.into_iter().map(|i| fault(i, e.to_string()))),
            }
        }
        faults.sort_by_key(|f| f.index);
        if again > 0 {
            tracing::info!(component = %self.path, records = again, "Records read again after a restart are already in committed files: not written twice.");
        }
        (batches, faults)
    }

    /// The record's directory below `path`; a value that makes a
    /// directory name too long is the record's fault, not the sink's.
    fn dir_of(&self, item: &Item, now: i64) -> Result<PathBuf, String> {
        let s = self.render(item, now)?;
        if let Some(long) = s.split('/').find(|c| c.len() > MAX_NAME) {
            return Err(format!(
                "{}.partition: the directory name {:?}… is longer than {MAX_NAME} bytes",
                self.path,
                long.chars().take(40).collect::<String>()
            ));
        }
        Ok(PathBuf::from(s))
    }

    fn render(&self, item: &Item, now: i64) -> Result<String, String> {
        let mut s = String::new();
        for p in &self.layout.partition {
            match p {
                Part::Literal(l) => s.push_str(l),
                Part::Column(c) => s.push_str(&dir_value(field(&item.value, c))),
                Part::Time(f) => {
                    let t = match &self.cfg.time_field {
                        Some(c) => match field(&item.value, c) {
                            Some(Value::Timestamp(t)) => *t,
                            _ => return Err(format!("{}.time_field: the record has no {c:?} timestamp for its partition directory", self.path)),
                        },
                        None => now,
                    };
                    format_time(f, t, &mut s);
                }
            }
        }
        Ok(s)
    }

    fn batch(&self, items: &[&Item]) -> Result<RecordBatch, arrow_schema::ArrowError> {
        let arrays: Vec<ArrayRef> = match &self.layout.columns {
            Columns::Typed(s) => s
                .columns
                .iter()
                .map(|(n, t)| column(*t, items.iter().map(|i| field(&i.value, n))))
                .collect(),
            Columns::Payload { raw } => payload_columns(items, *raw),
        };
        RecordBatch::try_new(self.layout.arrow.clone(), arrays)
    }
}

/// Bytes of a file or directory name (Linux's NAME_MAX).
const MAX_NAME: usize = 255;

fn fault(index: usize, reason: String) -> RecordFault {
    RecordFault {
        index,
        reason,
        class: None,
    }
}

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// A record's field `name` (top-level columns of a row).
fn field<'a>(v: &'a Value, name: &str) -> Option<&'a Value> {
    match v {
        Value::Row(fields) => fields.iter().find(|(n, _)| **n == *name).map(|(_, v)| v),
        _ => None,
    }
}

/// A value as one directory name: `/` and NUL replaced, `.`/`..` and
/// empty ones made harmless, nulls as Hive's default partition.
fn dir_value(v: Option<&Value>) -> String {
    let s = match v {
        None | Some(Value::Null) => return "__HIVE_DEFAULT_PARTITION__".into(),
        Some(Value::Text(t)) => t.clone(),
        Some(Value::BigInt(i)) => i.to_string(),
        Some(Value::Double(d)) => d.to_string(),
        Some(Value::Boolean(b)) => b.to_string(),
        Some(Value::Timestamp(t)) => format_rfc3339_micros(*t),
        Some(other) => {
            let mut b = Vec::new();
            other.write_json(&mut b);
            String::from_utf8_lossy(&b).into_owned()
        }
    };
    let s: String = s
        .chars()
        .map(|c| {
            if matches!(c, '/' | '\\' | '\0') {
                '_'
            } else {
                c
            }
        })
        .collect();
    match s.as_str() {
        "" => "__HIVE_DEFAULT_PARTITION__".into(),
        "." | ".." => s.replace('.', "_"),
        _ => s,
    }
}

/// Whether the record fits the columns: each value of its column's type,
/// no null in a `not null` column.
fn check_row(columns: &Columns, item: &Item) -> Result<(), String> {
    let Columns::Typed(s) = columns else {
        return Ok(());
    };
    if !matches!(item.value, Value::Row(_)) {
        return Err("the record is not a row of the input's columns".into());
    }
    for (n, t) in &s.columns {
        let v = field(&item.value, n);
        let fits = match (v, t) {
            (None | Some(Value::Null), _) => !s.is_not_null(n),
            (Some(Value::Text(_)), ColumnType::Text)
            | (Some(Value::BigInt(_)), ColumnType::BigInt)
            | (Some(Value::Double(_) | Value::BigInt(_)), ColumnType::Double)
            | (Some(Value::Boolean(_)), ColumnType::Boolean)
            | (Some(Value::Timestamp(_)), ColumnType::Timestamp)
            | (Some(_), ColumnType::Json)
            | (Some(Value::Bytes(_)), ColumnType::Bytea) => true,
            _ => false,
        };
        if !fits {
            return Err(format!(
                "column {n:?} ({t}) has a value of another type or null"
            ));
        }
    }
    Ok(())
}

/// One column of checked values.
fn column<'a>(t: ColumnType, values: impl Iterator<Item = Option<&'a Value>>) -> ArrayRef {
    macro_rules! build {
        ($builder:expr, $($pat:pat => $e:expr),+) => {{
            let mut builder = $builder;
            for v in values {
                match v {
                    $($pat => builder.append_value($e),)+
                    _ => builder.append_null(),
                }
            }
            Arc::new(builder.finish()) as ArrayRef
        }};
    }
    match t {
        ColumnType::Text => build!(StringBuilder::new(), Some(Value::Text(s)) => s),
        ColumnType::Json => {
            let mut b = StringBuilder::new();
            for v in values {
                match v {
                    None | Some(Value::Null) => b.append_null(),
                    Some(Value::Json(j)) => b.append_value(j.to_string()),
                    Some(other) => b.append_value(other.to_json().to_string()),
                }
            }
            Arc::new(b.finish())
        }
        ColumnType::BigInt => build!(Int64Builder::new(), Some(Value::BigInt(i)) => *i),
        ColumnType::Double => build!(Float64Builder::new(),
            Some(Value::Double(d)) => *d,
            Some(Value::BigInt(i)) => *i as f64),
        ColumnType::Boolean => build!(BooleanBuilder::new(), Some(Value::Boolean(x)) => *x),
        ColumnType::Timestamp => build!(
            TimestampMicrosecondBuilder::new().with_timezone("UTC"),
            Some(Value::Timestamp(t)) => *t),
        ColumnType::Bytea => build!(BinaryBuilder::new(), Some(Value::Bytes(x)) => x),
    }
}

/// `topic` and `payload` of schemaless records.
fn payload_columns(items: &[&Item], raw: bool) -> Vec<ArrayRef> {
    let mut topics = StringBuilder::new();
    for i in items {
        match &i.topic {
            Some(t) => topics.append_value(&**t),
            None => topics.append_null(),
        }
    }
    let payload: ArrayRef = if raw {
        let mut b = BinaryBuilder::new();
        for i in items {
            match &i.value {
                Value::Bytes(p) => b.append_value(p),
                _ => b.append_value(&i.payload),
            }
        }
        Arc::new(b.finish())
    } else {
        let mut b = StringBuilder::new();
        let mut buf = Vec::new();
        for i in items {
            buf.clear();
            i.value.write_json(&mut buf);
            b.append_value(String::from_utf8_lossy(&buf));
        }
        Arc::new(b.finish())
    };
    vec![Arc::new(topics.finish()), payload]
}

impl Sink for ParquetSink {
    fn max_records(&self) -> usize {
        20_000
    }

    fn max_unconfirmed_jobs(&self) -> usize {
        writer::MAX_UNCONFIRMED_JOBS
    }

    async fn open(&mut self) -> Result<(), WriteError> {
        let opts = writer::Options {
            root: self.cfg.path.clone(),
            name: self.path.trim_start_matches("sinks.").to_string(),
            schema: self.layout.arrow.clone(),
            max_rows: self.cfg.max_rows,
            max_bytes: self.cfg.max_bytes,
            rollover: std::time::Duration::from_secs(self.cfg.rollover_seconds),
            compression: self.cfg.compression,
        };
        let path = self.path.clone();
        let (handle, committed) = tokio::task::block_in_place(|| writer::Handle::start(opts))
            .map_err(|e| WriteError::Fatal(format!("{path}.path: {e}")))?;
        self.writer = Some(handle);
        self.committed = committed;
        Ok(())
    }

    async fn write(&mut self, job: &Job) -> Result<Confirmation, WriteError> {
        let (batches, faults) = tokio::task::block_in_place(|| self.rows(job));
        // What the runner holds in memory for the job until it is confirmed.
        let bytes = job.items().map(|i| i.payload.len() + 128).sum();
        let mut positions = Marks::new();
        written::advance(&mut positions, job.items());
        let w = self.writer.as_ref().expect("opened before the first write");
        let done = tokio::task::block_in_place(|| w.send(batches, faults, bytes, positions))
            .map_err(|e| WriteError::Fatal(format!("{}: {e}", self.path)))?;
        Ok(Box::pin(async move {
            done.await
                .unwrap_or_else(|_| Err("the Parquet writer stopped".to_string()))
                .map_err(WriteError::Fatal)
        }))
    }

    async fn input_ended(&mut self) {
        if let Some(w) = &self.writer {
            let done = tokio::task::block_in_place(|| w.commit_all());
            if let Ok(done) = done {
                let _ = done.await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_templates() {
        let p = parse_partition("dt={%Y-%m-%d}/hour={%H}/{device}").unwrap();
        assert_eq!(
            p,
            vec![
                Part::Literal("dt=".into()),
                Part::Time("%Y-%m-%d".into()),
                Part::Literal("/hour=".into()),
                Part::Time("%H".into()),
                Part::Literal("/".into()),
                Part::Column("device".into()),
            ]
        );
        let long = "x".repeat(256);
        for bad in [
            "{", "a}", "{}", "/abs", "../up", "{%Q}", "{%Y/%m}", "a/../b", &long,
        ] {
            assert!(parse_partition(bad).is_err(), "{bad}");
        }
        // 2026-12-07T14:03:05Z
        let us = 1_796_652_185_000_000;
        let mut s = String::new();
        format_time("%Y-%m-%d/%H:%M %%", us, &mut s);
        assert_eq!(s, "2026-12-07/14:03 %");
    }

    #[test]
    fn directory_values_stay_one_directory() {
        let t = |s: &str| dir_value(Some(&Value::Text(s.into())));
        assert_eq!(t("a/b"), "a_b");
        assert_eq!(t(".."), "__");
        assert_eq!(t(""), "__HIVE_DEFAULT_PARTITION__");
        assert_eq!(dir_value(None), "__HIVE_DEFAULT_PARTITION__");
        assert_eq!(dir_value(Some(&Value::BigInt(-3))), "-3");
    }

    /// `buffer.mode = "auto"` turns the local buffer on for an MQTT 5
    /// source that feeds a Parquet sink (and only then).
    #[test]
    fn a_parquet_sink_turns_its_sources_buffer_on() {
        use crate::connectors::mqtt::source::MqttSourceConfig;
        let p = crate::spec::parse(
            r#"
[connections.b]
broker = "mqtt://127.0.0.1:1883"
[sources.s]
type = "mqtt"
connection = "b"
topics = ["a/#"]
schema = { id = "bigint", at = "timestamp" }
[sinks.lake]
type = "parquet"
inputs = ["s"]
path = "lake"
partition = "dt={%Y-%m-%d}/id={id}"
time_field = "at"
"#,
            false,
            &|_| None,
        )
        .unwrap();
        let (_, sink) = &p.sinks[0];
        assert!(sink.kind.wants_local_buffer());
        let src = p.sources[0].1.get::<MqttSourceConfig>().unwrap();
        let dir = std::path::Path::new("/tmp");
        let on = src.buffer_options(dir, "c", false, true).unwrap();
        assert_eq!(on.when, mqlink::source::BufferWhen::Always);
        let auto = src.buffer_options(dir, "c", false, false).unwrap();
        assert_eq!(auto.when, mqlink::source::BufferWhen::V311);
        assert!(src.buffer_options(dir, "c", true, true).is_none());
    }
}
