//! A query's program for one source, run on each batch of its records:
//! the records become Arrow columns, DataFusion's physical expressions
//! filter and project them, the rows that come out become records again
//! (each keeps the topic and payload of the message it came from, for
//! `{stream}` topic templates and raw sinks).
//!
//! A batch that fails as a whole (a CAST of a value that does not convert)
//! is run again row by row: the rows that fail are record faults (logged,
//! counted, acknowledged), the others go on.

use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use datafusion_common::arrow::array::{
    Array, ArrayRef, AsArray, BinaryBuilder, BooleanBuilder, Float64Builder, Int64Builder,
    StringBuilder, TimestampMicrosecondBuilder, UInt32Array,
};
use datafusion_common::arrow::compute::{cast, filter, filter_record_batch};
use datafusion_common::arrow::datatypes::{
    DataType, Float64Type, Int64Type, SchemaRef, TimeUnit, TimestampMicrosecondType,
};
use datafusion_common::arrow::record_batch::{RecordBatch, RecordBatchOptions};
use datafusion_common::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion_physical_expr::PhysicalExpr;
use mqlink::format::{ColumnType, Value};
use mqlink_pipeline::batch::Item;
use mqlink_pipeline::transform::{Fault, MakeTransform, Output, Transform};

use crate::plan::{physical, reads_clock, Branch, Step, JSON_TYPE};

/// Where a column of a source table's rows comes from.
#[derive(Debug, Clone)]
pub enum ColSource {
    /// The `i`th field of the decoded row (the JSON schema's column).
    Field(usize, ColumnType),
    /// `METADATA FROM 'topic'`, or `topic` of a raw table.
    Topic,
    /// `payload` of a raw table.
    Payload(ColumnType),
    /// A TIMESTAMP column of a raw table: when the batch reached the query.
    Arrival,
    /// A column the format cannot fill: NULL.
    Null(ColumnType),
    /// The lone JSON column of a JSON table: the whole decoded message.
    Whole,
}

/// A source table as Arrow columns.
#[derive(Debug, Clone)]
pub struct Input {
    pub schema: SchemaRef,
    pub columns: Vec<ColSource>,
}

#[derive(Debug, Clone)]
enum PStep {
    Filter(Arc<dyn PhysicalExpr>),
    Project(Vec<Arc<dyn PhysicalExpr>>, SchemaRef),
    Conform(SchemaRef),
}

/// One branch, compiled; `clock` branches are compiled again per batch.
#[derive(Debug, Clone)]
pub(crate) struct Program {
    branch: Branch,
    clock: bool,
    steps: Vec<PStep>,
}

impl Program {
    pub(crate) fn compile(branch: &Branch, now: DateTime<Utc>) -> Result<Program, String> {
        let mut clock = false;
        let mut steps = Vec::new();
        for s in &branch.steps {
            steps.push(match s {
                Step::Filter(e, schema) => {
                    clock |= reads_clock(e);
                    PStep::Filter(physical(e, schema, now)?)
                }
                Step::Project(es, schema, out) => {
                    clock |= es.iter().any(reads_clock);
                    PStep::Project(
                        es.iter()
                            .map(|e| physical(e, schema, now))
                            .collect::<Result<_, _>>()?,
                        out.clone(),
                    )
                }
                Step::Conform(out) => PStep::Conform(out.clone()),
            });
        }
        Ok(Program {
            branch: branch.clone(),
            clock,
            steps,
        })
    }

    /// The rows out, and the input row each came from.
    fn run(&self, batch: RecordBatch) -> Result<(RecordBatch, UInt32Array), String> {
        let e = |e: datafusion_common::DataFusionError| e.to_string();
        let a = |e: datafusion_common::arrow::error::ArrowError| e.to_string();
        let mut rows = UInt32Array::from_iter_values(0..batch.num_rows() as u32);
        let mut batch = batch;
        for s in &self.steps {
            match s {
                PStep::Filter(p) => {
                    let mask = p
                        .evaluate(&batch)
                        .and_then(|v| v.into_array(batch.num_rows()))
                        .map_err(e)?;
                    let mask = mask
                        .as_boolean_opt()
                        .ok_or("the WHERE condition is not a boolean")?;
                    // NULL is not true: the row goes.
                    batch = filter_record_batch(&batch, mask).map_err(a)?;
                    rows = filter(&rows, mask)
                        .map_err(a)?
                        .as_primitive::<datafusion_common::arrow::datatypes::UInt32Type>()
                        .clone();
                }
                PStep::Project(exprs, schema) => {
                    let n = batch.num_rows();
                    let cols = exprs
                        .iter()
                        .map(|p| p.evaluate(&batch).and_then(|v| v.into_array(n)))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(e)?;
                    batch = rebuild(schema, cols, n)?;
                }
                PStep::Conform(schema) => {
                    let n = batch.num_rows();
                    let cols = batch
                        .columns()
                        .iter()
                        .zip(schema.fields())
                        .map(|(c, f)| cast(c, f.data_type()))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(a)?;
                    batch = rebuild(schema, cols, n)?;
                }
            }
        }
        Ok((batch, rows))
    }

    /// A program that reads the clock, compiled again for `now`.
    pub(crate) fn refresh(&mut self, now: DateTime<Utc>) -> Result<(), String> {
        if self.clock {
            *self = Program::compile(&self.branch, now)?;
        }
        Ok(())
    }

    /// Runs on a batch; when it fails as a whole, row by row: the parts
    /// out (each with the input row of each of its rows, in order), and the
    /// rows that failed with why.
    pub(crate) fn run_rows(
        &self,
        batch: &RecordBatch,
    ) -> (Vec<(RecordBatch, Vec<usize>)>, Vec<(usize, String)>) {
        match self.run(batch.clone()) {
            Ok((rows, from)) => {
                let from = from.values().iter().map(|&i| i as usize).collect();
                (vec![(rows, from)], Vec::new())
            }
            Err(_) => {
                let (mut parts, mut failed) = (Vec::new(), Vec::new());
                for i in 0..batch.num_rows() {
                    match self.run(batch.slice(i, 1)) {
                        Ok((rows, from)) => {
                            let from = from.values().iter().map(|&j| j as usize + i).collect();
                            parts.push((rows, from));
                        }
                        Err(reason) => failed.push((i, reason)),
                    }
                }
                (parts, failed)
            }
        }
    }
}

/// A batch of `cols` under `schema`, every column nullable (an expression
/// may yield NULL where the plan did not expect it).
pub(crate) fn rebuild(
    schema: &SchemaRef,
    cols: Vec<ArrayRef>,
    n: usize,
) -> Result<RecordBatch, String> {
    let fields: Vec<_> = schema
        .fields()
        .iter()
        .zip(&cols)
        .map(|(f, c)| {
            f.as_ref()
                .clone()
                .with_data_type(c.data_type().clone())
                .with_nullable(true)
        })
        .collect();
    let schema = Arc::new(datafusion_common::arrow::datatypes::Schema::new(fields));
    RecordBatch::try_new_with_options(
        schema,
        cols,
        &RecordBatchOptions::new().with_row_count(Some(n)),
    )
    .map_err(|e| e.to_string())
}

/// Now, as DataFusion's clock (chrono's own clock is a feature the rest
/// of the tree does not build).
pub(crate) fn wall_clock() -> DateTime<Utc> {
    let us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64);
    DateTime::from_timestamp_micros(us).unwrap_or_default()
}

/// A query's stage for one source: made once per run.
#[derive(Debug, Clone)]
pub struct SqlStage {
    input: Input,
    programs: Vec<Program>,
    /// The output columns' names, shared by every record.
    names: Vec<Arc<str>>,
}

impl SqlStage {
    /// Compiles the branches reading this source; errors are the query's.
    pub fn new(input: Input, branches: &[Branch], out: &SchemaRef) -> Result<SqlStage, String> {
        let now = wall_clock();
        let programs = branches
            .iter()
            .map(|b| Program::compile(b, now))
            .collect::<Result<_, _>>()?;
        Ok(SqlStage {
            input,
            programs,
            names: out
                .fields()
                .iter()
                .map(|f| Arc::from(f.name().as_str()))
                .collect(),
        })
    }
}

/// Each run gets its own copy (a program re-planned for the clock changes
/// only its copy).
impl MakeTransform for SqlStage {
    fn make(&self) -> Box<dyn Transform> {
        Box::new(self.clone())
    }
    fn kind(&self) -> &'static str {
        "SQL"
    }
}

impl Transform for SqlStage {
    fn apply(&mut self, items: Vec<Item>, _now: tokio::time::Instant) -> Output {
        let mut out = Output::default();
        if items.is_empty() {
            return out;
        }
        let now = wall_clock();
        let batch = match to_batch(&self.input, &items, now) {
            Ok(b) => b,
            Err(reason) => {
                // Cannot happen for rows the source decoded; kept total.
                fault_all(&items, &reason, &mut out);
                return out;
            }
        };
        // Kept for `mqlink query … FROM table` (only while /query is served).
        if let Some(p) = self.programs.first() {
            crate::query::remember(&p.branch.source, &batch);
        }
        for prog in &mut self.programs {
            if let Err(reason) = prog.refresh(now) {
                fault_all(&items, &reason, &mut out);
                continue;
            }
            let (parts, failed) = prog.run_rows(&batch);
            // Failed rows come first: their order among the outputs is
            // not a sink's concern (a fault is not a record).
            for (i, reason) in failed {
                out.faults.push(fault(Some(&items[i]), reason, false));
            }
            for (rows, from) in parts {
                for (row, i) in records(&self.names, &rows).into_iter().zip(from) {
                    let src = &items[i];
                    out.items.push(Item {
                        topic: src.topic.clone(),
                        origin: None,
                        payload: src.payload.clone(),
                        value: Value::Row(row),
                    });
                }
            }
        }
        out
    }
}

/// A record fault: of an input record, or of an output row (`None`).
pub(crate) fn fault(item: Option<&Item>, reason: String, late: bool) -> Fault {
    let f = match item {
        Some(i) => Fault::of(i, reason),
        None => Fault::new(None, reason),
    };
    if late {
        f.late()
    } else {
        f
    }
}

fn fault_all(items: &[Item], reason: &str, out: &mut Output) {
    out.faults.extend(
        items
            .iter()
            .map(|i| fault(Some(i), reason.to_string(), false)),
    );
}

/// The rows of a batch as record values, named `names` (the query's
/// output columns).
pub(crate) fn records(names: &[Arc<str>], rows: &RecordBatch) -> Vec<Vec<(Arc<str>, Value)>> {
    let n = rows.num_rows();
    let mut values: Vec<Vec<(Arc<str>, Value)>> =
        (0..n).map(|_| Vec::with_capacity(names.len())).collect();
    if n == 0 {
        return values;
    }
    for (c, field) in rows.columns().iter().zip(rows.schema().fields()) {
        let json = field.metadata().get(JSON_TYPE.0).map(String::as_str) == Some(JSON_TYPE.1);
        let name = names
            .get(values[0].len())
            .cloned()
            .unwrap_or_else(|| Arc::from(field.name().as_str()));
        for (row, v) in values.iter_mut().zip(column_values(c, json)) {
            row.push((name.clone(), v));
        }
    }
    values
}

/// A column's values as record values.
pub(crate) fn column_values(c: &ArrayRef, json: bool) -> Vec<Value> {
    let n = c.len();
    let nulls = |i: usize| c.is_null(i);
    match c.data_type() {
        DataType::Null => vec![Value::Null; n],
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
            let s = cast(c, &DataType::Utf8).expect("text casts to text");
            let s = s.as_string::<i32>();
            (0..n)
                .map(|i| {
                    if nulls(i) {
                        Value::Null
                    } else if json {
                        serde_json::from_str(s.value(i))
                            .map(Value::Json)
                            .unwrap_or_else(|_| Value::Text(s.value(i).to_string()))
                    } else {
                        Value::Text(s.value(i).to_string())
                    }
                })
                .collect()
        }
        DataType::Boolean => {
            let b = c.as_boolean();
            (0..n)
                .map(|i| {
                    if nulls(i) {
                        Value::Null
                    } else {
                        Value::Boolean(b.value(i))
                    }
                })
                .collect()
        }
        DataType::Timestamp(_, tz) => {
            match cast(c, &DataType::Timestamp(TimeUnit::Microsecond, tz.clone())) {
                Ok(t) => {
                    let t = t.as_primitive::<TimestampMicrosecondType>();
                    (0..n)
                        .map(|i| {
                            if nulls(i) {
                                Value::Null
                            } else {
                                Value::Timestamp(t.value(i))
                            }
                        })
                        .collect()
                }
                Err(_) => formatted(c),
            }
        }
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => {
            match cast(c, &DataType::Binary) {
                Ok(b) => {
                    let b = b.as_binary::<i32>();
                    (0..n)
                        .map(|i| {
                            if nulls(i) {
                                Value::Null
                            } else {
                                Value::Bytes(Bytes::copy_from_slice(b.value(i)))
                            }
                        })
                        .collect()
                }
                Err(_) => formatted(c),
            }
        }
        dt if dt.is_integer() => match cast(c, &DataType::Int64) {
            Ok(v) => {
                let v = v.as_primitive::<Int64Type>();
                (0..n)
                    .map(|i| {
                        if nulls(i) {
                            Value::Null
                        } else {
                            Value::BigInt(v.value(i))
                        }
                    })
                    .collect()
            }
            Err(_) => formatted(c),
        },
        dt if dt.is_floating() || dt.is_numeric() => match cast(c, &DataType::Float64) {
            Ok(v) => {
                let v = v.as_primitive::<Float64Type>();
                (0..n)
                    .map(|i| {
                        if nulls(i) {
                            Value::Null
                        } else {
                            Value::Double(v.value(i))
                        }
                    })
                    .collect()
            }
            Err(_) => formatted(c),
        },
        _ => formatted(c),
    }
}

/// Anything else (dates, intervals, lists, structs) as its text.
fn formatted(c: &ArrayRef) -> Vec<Value> {
    let opts = FormatOptions::default();
    match ArrayFormatter::try_new(c.as_ref(), &opts) {
        Ok(f) => (0..c.len())
            .map(|i| {
                if c.is_null(i) {
                    Value::Null
                } else {
                    Value::Text(f.value(i).to_string())
                }
            })
            .collect(),
        Err(_) => vec![Value::Null; c.len()],
    }
}

/// The `i`th column of a decoded row.
fn field(item: &Item, i: usize) -> Option<&Value> {
    match &item.value {
        Value::Row(fs) => fs.get(i).map(|(_, v)| v),
        _ => None,
    }
}

/// The records of a batch as the source table's columns.
pub(crate) fn to_batch(
    input: &Input,
    items: &[Item],
    now: DateTime<Utc>,
) -> Result<RecordBatch, String> {
    let n = items.len();
    let mut cols: Vec<ArrayRef> = Vec::with_capacity(input.columns.len());
    for (col, f) in input.columns.iter().zip(input.schema.fields()) {
        let array: ArrayRef = match col {
            ColSource::Field(i, ty) => values(*ty, items.iter().map(|it| field(it, *i)), n),
            ColSource::Topic => {
                let mut b = StringBuilder::with_capacity(n, n * 16);
                for it in items {
                    b.append_option(it.topic.as_ref().map(|t| t.as_str()));
                }
                Arc::new(b.finish())
            }
            ColSource::Payload(ColumnType::Text) => {
                let mut b = StringBuilder::with_capacity(n, n * 32);
                for it in items {
                    b.append_value(String::from_utf8_lossy(&it.payload));
                }
                Arc::new(b.finish())
            }
            ColSource::Payload(_) => {
                let mut b = BinaryBuilder::with_capacity(n, n * 32);
                for it in items {
                    b.append_value(&it.payload);
                }
                Arc::new(b.finish())
            }
            ColSource::Arrival => {
                let mut b = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
                for _ in items {
                    b.append_value(now.timestamp_micros());
                }
                Arc::new(b.finish())
            }
            ColSource::Null(ty) => values(*ty, items.iter().map(|_| None), n),
            ColSource::Whole => values(ColumnType::Json, items.iter().map(|it| Some(&it.value)), n),
        };
        // The declared type (a timestamp's zone) is the schema's.
        let array = if array.data_type() != f.data_type() {
            cast(&array, f.data_type()).map_err(|e| e.to_string())?
        } else {
            array
        };
        cols.push(array);
    }
    RecordBatch::try_new_with_options(
        input.schema.clone(),
        cols,
        &RecordBatchOptions::new().with_row_count(Some(n)),
    )
    .map_err(|e| e.to_string())
}

/// One column of values of type `ty` (values of another type: NULL; the
/// source's decoder already typed them).
pub(crate) fn values<'a>(
    ty: ColumnType,
    vs: impl Iterator<Item = Option<&'a Value>>,
    n: usize,
) -> ArrayRef {
    match ty {
        ColumnType::Text | ColumnType::Json => {
            let mut b = StringBuilder::with_capacity(n, n * 16);
            for v in vs {
                match v {
                    Some(Value::Text(s)) => b.append_value(s),
                    Some(Value::Json(j)) => b.append_value(j.to_string()),
                    _ => b.append_null(),
                }
            }
            Arc::new(b.finish())
        }
        ColumnType::BigInt => {
            let mut b = Int64Builder::with_capacity(n);
            for v in vs {
                b.append_option(match v {
                    Some(Value::BigInt(i)) => Some(*i),
                    _ => None,
                });
            }
            Arc::new(b.finish())
        }
        ColumnType::Double => {
            let mut b = Float64Builder::with_capacity(n);
            for v in vs {
                b.append_option(match v {
                    Some(Value::Double(f)) => Some(*f),
                    Some(Value::BigInt(i)) => Some(*i as f64),
                    _ => None,
                });
            }
            Arc::new(b.finish())
        }
        ColumnType::Boolean => {
            let mut b = BooleanBuilder::with_capacity(n);
            for v in vs {
                b.append_option(match v {
                    Some(Value::Boolean(x)) => Some(*x),
                    _ => None,
                });
            }
            Arc::new(b.finish())
        }
        ColumnType::Timestamp => {
            let mut b = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
            for v in vs {
                b.append_option(match v {
                    Some(Value::Timestamp(t)) => Some(*t),
                    _ => None,
                });
            }
            Arc::new(b.finish())
        }
        ColumnType::Bytea => {
            let mut b = BinaryBuilder::with_capacity(n, n * 16);
            for v in vs {
                match v {
                    Some(Value::Bytes(x)) => b.append_value(x),
                    _ => b.append_null(),
                }
            }
            Arc::new(b.finish())
        }
    }
}
