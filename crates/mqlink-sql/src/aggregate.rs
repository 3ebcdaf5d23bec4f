//! A windowed aggregate run as a source's stage, with epoch checkpoints.
//!
//! Each row (in arrival order) goes through the query's filters and
//! projections, then into the accumulators of every window holding its
//! event time. The watermark is the largest event time seen minus the
//! `WATERMARK FOR` delay (0 without one), never going back; a window is
//! emitted once, when the watermark reaches its end. A row older than the
//! watermark is late: its windows may be out already, so it is a fault
//! with `late` set (counted, sent to the source's dead-letter topic), not
//! aggregated.
//!
//! Acknowledgements: every record since the last checkpoint is held (its
//! message unacknowledged). When a checkpoint is due (`checkpoint_interval`,
//! [`HELD_MAX`] records, or [`IDLE`] without input) the pipeline waits
//! until every emitted row is confirmed by the sinks, calls
//! [`Transform::checkpoint`] — the open windows, the watermark (windows
//! ending at or before it were emitted) written atomically to the state
//! file — and then acknowledges the held messages. After a crash the
//! state of the last checkpoint is restored and the broker (persistent
//! session) sends the unacknowledged messages again: windows come out as
//! they would have.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use datafusion_common::arrow::array::{
    new_empty_array, Array, ArrayRef, AsArray, Int64Array, StructArray, TimestampMicrosecondArray,
};
use datafusion_common::arrow::compute::cast;
use datafusion_common::arrow::datatypes::{
    DataType, Field, Schema, SchemaRef, TimeUnit, TimestampMicrosecondType,
};
use datafusion_common::arrow::ipc::reader::FileReader;
use datafusion_common::arrow::ipc::writer::FileWriter;
use datafusion_common::arrow::record_batch::{RecordBatch, RecordBatchOptions};
use datafusion_common::ScalarValue;
use datafusion_expr::ExprSchemable;
use datafusion_physical_expr::PhysicalExpr;
use mqlink::format::Value;
use mqlink_pipeline::batch::Item;
use mqlink_pipeline::redelivery::{fnv1a, Redeliveries};
use mqlink_pipeline::transform::{MakeTransform, Output, Transform};
use tokio::time::Instant;

use crate::plan::{physical, Branch};
use crate::stage::{fault, rebuild, records, to_batch, wall_clock, Input, Program};
use crate::window::{flatten_columns, window_fields, AggKind, Windowed};

/// Held records that make a checkpoint due: well below half the receive
/// window the source announces (65,535 over MQTT 5), so the broker never
/// runs out of window while a checkpoint waits for the sinks.
pub const HELD_MAX: usize = 16_384;

/// A checkpoint is due after this long without input while records are
/// held: an MQTT 3.1.1 broker's in-flight cap is not announced (a
/// `max_inflight_messages` of 20, say), and a broker at its cap sends
/// nothing more until some are acknowledged.
pub const IDLE: Duration = Duration::from_millis(200);

/// `checkpoint_interval` when not given.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);

/// Where a row's event time comes from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum EventTime {
    /// A TIMESTAMP column of the source table (`WATERMARK FOR`).
    Column(usize),
    /// Flink's `TUMBLE(ts, …)`: the query's expression.
    Query,
    /// No `WATERMARK FOR`: when the batch reached the query.
    Arrival,
}

/// A windowed query's stage for its source.
#[derive(Debug)]
pub struct WindowStage(Arc<Query>);

/// The query, as every run of the stage shares it.
#[derive(Debug)]
struct Query {
    input: Input,
    plan: Windowed,
    time: EventTime,
    /// Microseconds behind the largest event time.
    delay: i64,
    state_file: PathBuf,
    interval: Duration,
    names: Vec<Arc<str>>,
}

/// The options of a windowed query's stage.
#[derive(Debug, Clone)]
pub struct Options {
    pub time: EventTime,
    pub delay_us: i64,
    pub state_file: PathBuf,
    pub checkpoint_interval: Duration,
}

impl WindowStage {
    /// Checks that the query's expressions compile.
    pub fn new(input: Input, plan: Windowed, o: Options) -> Result<WindowStage, String> {
        let names = plan
            .out
            .fields()
            .iter()
            .map(|f| Arc::from(f.name().as_str()))
            .collect();
        Compiled::new(&plan, wall_clock())?;
        Ok(WindowStage(Arc::new(Query {
            input,
            plan,
            time: o.time,
            delay: o.delay_us,
            state_file: o.state_file,
            interval: o.checkpoint_interval,
            names,
        })))
    }
}

/// The query's expressions, physical.
struct Compiled {
    pre: Program,
    post: Program,
    time: Option<Arc<dyn PhysicalExpr>>,
    keys: Vec<Arc<dyn PhysicalExpr>>,
    key_types: Vec<DataType>,
    args: Vec<Arc<dyn PhysicalExpr>>,
    /// What each argument is cast to before it is accumulated.
    arg_types: Vec<DataType>,
    /// The aggregate's output, as Arrow.
    output: SchemaRef,
}

impl Compiled {
    fn new(plan: &Windowed, now: DateTime<Utc>) -> Result<Compiled, String> {
        let input = &plan.input;
        let types = |e: &datafusion_expr::Expr| e.get_type(input).map_err(|e| e.to_string());
        let time = plan
            .time
            .as_ref()
            .map(|e| physical(e, input, now))
            .transpose()?;
        let keys = plan
            .keys
            .iter()
            .map(|e| physical(e, input, now))
            .collect::<Result<_, _>>()?;
        let key_types = plan.keys.iter().map(types).collect::<Result<_, _>>()?;
        let args = plan
            .aggs
            .iter()
            .map(|a| physical(&a.arg, input, now))
            .collect::<Result<_, _>>()?;
        let arg_types = plan
            .aggs
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let out = plan.output.field(plan.keys.len() + 1 + i).data_type();
                Ok(match a.kind {
                    AggKind::Count => DataType::Null,
                    AggKind::Sum if out.is_integer() => DataType::Int64,
                    AggKind::Sum | AggKind::Avg => DataType::Float64,
                    AggKind::Min | AggKind::Max => types(&a.arg)?,
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(Compiled {
            pre: Program::compile(&plan.pre, now)?,
            post: Program::compile(
                &Branch {
                    source: plan.pre.source.clone(),
                    steps: plan.post.clone(),
                },
                now,
            )?,
            time,
            keys,
            key_types,
            args,
            arg_types,
            output: Arc::new(plan.output.as_arrow().clone()),
        })
    }
}

impl MakeTransform for WindowStage {
    fn make(&self) -> Box<dyn Transform> {
        let now = Instant::now();
        let wall = wall_clock();
        let q = &self.0;
        let mut run = Running {
            query: q.clone(),
            compiled: None,
            state: State::default(),
            redeliveries: Redeliveries::default(),
            broken: None,
            held: 0,
            last_checkpoint: now,
            last_input: now,
            base: (now, wall.timestamp_micros()),
        };
        let restored = Compiled::new(&q.plan, wall).and_then(|c| {
            let state = State::load(&q.state_file, &q.plan, &c)?;
            Ok((c, state))
        });
        match restored {
            Ok((c, state)) => {
                run.compiled = Some(c);
                if let Some((state, redeliveries)) = state {
                    run.state = state;
                    run.redeliveries = redeliveries;
                }
            }
            Err(e) => run.broken = Some(e),
        }
        Box::new(run)
    }
}

/// One accumulator's value.
#[derive(Debug, Clone)]
enum Acc {
    Count(i64),
    SumI(Option<i64>),
    SumF(Option<f64>),
    Avg(f64, i64),
    Min(Option<ScalarValue>),
    Max(Option<ScalarValue>),
}

impl Acc {
    fn new(kind: AggKind, arg_type: &DataType) -> Acc {
        match kind {
            AggKind::Count => Acc::Count(0),
            AggKind::Sum if arg_type == &DataType::Int64 => Acc::SumI(None),
            AggKind::Sum => Acc::SumF(None),
            AggKind::Avg => Acc::Avg(0.0, 0),
            AggKind::Min => Acc::Min(None),
            AggKind::Max => Acc::Max(None),
        }
    }

    /// Adds row `i` of the (cast) argument; NULL is skipped.
    fn update(&mut self, a: &ArrayRef, i: usize) {
        if a.is_null(i) {
            return;
        }
        match self {
            Acc::Count(n) => *n += 1,
            Acc::SumI(s) => {
                let v = a
                    .as_primitive::<datafusion_common::arrow::datatypes::Int64Type>()
                    .value(i);
                // Wrapping, as DataFusion's SUM of BIGINT.
                *s = Some(s.unwrap_or(0).wrapping_add(v));
            }
            Acc::SumF(s) => {
                let v = a
                    .as_primitive::<datafusion_common::arrow::datatypes::Float64Type>()
                    .value(i);
                *s = Some(s.unwrap_or(0.0) + v);
            }
            Acc::Avg(s, n) => {
                *s += a
                    .as_primitive::<datafusion_common::arrow::datatypes::Float64Type>()
                    .value(i);
                *n += 1;
            }
            Acc::Min(m) => extreme(m, a, i, std::cmp::Ordering::Less),
            Acc::Max(m) => extreme(m, a, i, std::cmp::Ordering::Greater),
        }
    }

    /// The aggregate's value (before the cast to its result type).
    fn result(&self, arg_type: &DataType) -> ScalarValue {
        match self {
            Acc::Count(n) => ScalarValue::Int64(Some(*n)),
            Acc::SumI(s) => ScalarValue::Int64(*s),
            Acc::SumF(s) => ScalarValue::Float64(*s),
            Acc::Avg(s, n) => ScalarValue::Float64((*n > 0).then(|| s / *n as f64)),
            Acc::Min(m) | Acc::Max(m) => m
                .clone()
                .unwrap_or_else(|| ScalarValue::try_from(arg_type).unwrap_or(ScalarValue::Null)),
        }
    }

    /// The state, as scalars of [`Acc::state_types`].
    fn state(&self, arg_type: &DataType) -> Vec<ScalarValue> {
        match self {
            Acc::Count(n) => vec![ScalarValue::Int64(Some(*n))],
            Acc::SumI(s) => vec![ScalarValue::Int64(*s)],
            Acc::SumF(s) => vec![ScalarValue::Float64(*s)],
            Acc::Avg(s, n) => vec![ScalarValue::Float64(Some(*s)), ScalarValue::Int64(Some(*n))],
            Acc::Min(_) | Acc::Max(_) => vec![self.result(arg_type)],
        }
    }

    fn state_types(kind: AggKind, arg_type: &DataType) -> Vec<DataType> {
        match Acc::new(kind, arg_type) {
            Acc::Count(_) | Acc::SumI(_) => vec![DataType::Int64],
            Acc::SumF(_) => vec![DataType::Float64],
            Acc::Avg(..) => vec![DataType::Float64, DataType::Int64],
            Acc::Min(_) | Acc::Max(_) => vec![arg_type.clone()],
        }
    }

    fn from_state(kind: AggKind, arg_type: &DataType, s: &[ScalarValue]) -> Option<Acc> {
        let int = |v: &ScalarValue| match v {
            ScalarValue::Int64(x) => Some(*x),
            _ => None,
        };
        let float = |v: &ScalarValue| match v {
            ScalarValue::Float64(x) => Some(*x),
            _ => None,
        };
        Some(match (Acc::new(kind, arg_type), s) {
            (Acc::Count(_), [n]) => Acc::Count(int(n)??),
            (Acc::SumI(_), [v]) => Acc::SumI(int(v)?),
            (Acc::SumF(_), [v]) => Acc::SumF(float(v)?),
            (Acc::Avg(..), [v, n]) => Acc::Avg(float(v)??, int(n)??),
            (Acc::Min(_), [v]) => Acc::Min((!v.is_null()).then(|| v.clone())),
            (Acc::Max(_), [v]) => Acc::Max((!v.is_null()).then(|| v.clone())),
            _ => return None,
        })
    }
}

/// MIN (`keep` = Less) or MAX of the values so far and row `i` of `a`.
fn extreme(m: &mut Option<ScalarValue>, a: &ArrayRef, i: usize, keep: std::cmp::Ordering) {
    let Ok(v) = ScalarValue::try_from_array(a, i) else {
        return;
    };
    let better = match m {
        None => true,
        Some(cur) => v.partial_cmp(cur) == Some(keep),
    };
    if better {
        *m = Some(v);
    }
}

/// The groups of one window, in the order they first appeared.
#[derive(Debug, Default, Clone)]
struct Groups {
    index: HashMap<Vec<ScalarValue>, usize>,
    rows: Vec<(Vec<ScalarValue>, Vec<Acc>)>,
}

/// What a checkpoint keeps.
#[derive(Debug, Default, Clone)]
struct State {
    /// None until a row was seen.
    watermark: Option<i64>,
    /// Open windows by start.
    windows: BTreeMap<i64, Groups>,
}

const META_QUERY: &str = "mqlink.query";
const META_WATERMARK: &str = "mqlink.watermark";

impl State {
    /// The state as one Arrow batch: a row per (window, group).
    fn to_ipc(&self, plan: &Windowed, c: &Compiled) -> Result<Vec<u8>, String> {
        let mut fields = vec![Field::new("window_start", DataType::Int64, false)];
        for (j, t) in c.key_types.iter().enumerate() {
            fields.push(Field::new(format!("key{j}"), t.clone(), true));
        }
        let mut state_types = Vec::new();
        for (i, a) in plan.aggs.iter().enumerate() {
            for (k, t) in Acc::state_types(a.kind, &c.arg_types[i])
                .into_iter()
                .enumerate()
            {
                fields.push(Field::new(format!("agg{i}_{k}"), t.clone(), true));
                state_types.push(t);
            }
        }
        let rows: Vec<(i64, &Vec<ScalarValue>, Vec<ScalarValue>)> = self
            .windows
            .iter()
            .flat_map(|(start, g)| {
                g.rows.iter().map(move |(key, accs)| {
                    let st = accs
                        .iter()
                        .zip(&c.arg_types)
                        .flat_map(|(a, t)| a.state(t))
                        .collect();
                    (*start, key, st)
                })
            })
            .collect();
        let mut cols: Vec<ArrayRef> = vec![Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|r| r.0),
        ))];
        for (j, t) in c.key_types.iter().enumerate() {
            cols.push(column(rows.iter().map(|r| r.1[j].clone()), t)?);
        }
        for (k, t) in state_types.iter().enumerate() {
            cols.push(column(rows.iter().map(|r| r.2[k].clone()), t)?);
        }
        let mut meta = std::collections::HashMap::new();
        meta.insert(META_QUERY.to_string(), plan.fingerprint.clone());
        meta.insert(
            META_WATERMARK.to_string(),
            self.watermark.map(|w| w.to_string()).unwrap_or_default(),
        );
        let schema = Arc::new(Schema::new_with_metadata(fields, meta));
        let batch = RecordBatch::try_new_with_options(
            schema.clone(),
            cols,
            &RecordBatchOptions::new().with_row_count(Some(rows.len())),
        )
        .map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        let mut w = FileWriter::try_new(&mut buf, &schema).map_err(|e| e.to_string())?;
        w.write(&batch).map_err(|e| e.to_string())?;
        w.finish().map_err(|e| e.to_string())?;
        drop(w);
        Ok(buf)
    }

    /// The state of the last checkpoint and its epoch's redelivery log
    /// ([`Redeliveries`]), if there is one.
    fn load(
        path: &Path,
        plan: &Windowed,
        c: &Compiled,
    ) -> Result<Option<(State, Redeliveries)>, String> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("state file {}: {e}", path.display())),
        };
        let bad = |m: String| format!("state file {}: {m}", path.display());
        // Arrow's reader trusts its input (a damaged file can make it
        // panic): the checksum goes first.
        let rest = match bytes.strip_prefix(STATE_MAGIC) {
            Some(rest) if rest.len() >= 12 => {
                let (sum, rest) = rest.split_at(8);
                if sum != fnv1a(&[rest]).to_le_bytes() {
                    return Err(bad("damaged (checksum mismatch)".into()));
                }
                rest
            }
            _ => return Err(bad("not a state file of mqlink's windows".into())),
        };
        let (len, rest) = rest.split_at(4);
        let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
        if len > rest.len() {
            return Err(bad(format!(
                "a redelivery log of {len} bytes in {}",
                rest.len()
            )));
        }
        let (log, ipc) = rest.split_at(len);
        let redeliveries = Redeliveries::restore(log).map_err(bad)?;
        let reader =
            FileReader::try_new(std::io::Cursor::new(ipc), None).map_err(|e| bad(e.to_string()))?;
        let meta = reader.schema().metadata().clone();
        if meta.get(META_QUERY) != Some(&plan.fingerprint) {
            return Err(bad(
                "written by another query (the query or its tables changed): move the file away to start the windows afresh".into(),
            ));
        }
        let watermark = match meta.get(META_WATERMARK).map(String::as_str) {
            None | Some("") => None,
            Some(w) => Some(
                w.parse::<i64>()
                    .map_err(|e| bad(format!("watermark {w:?}: {e}")))?,
            ),
        };
        let mut state = State {
            watermark,
            windows: BTreeMap::new(),
        };
        let nkeys = c.key_types.len();
        let width = 1
            + nkeys
            + plan
                .aggs
                .iter()
                .zip(&c.arg_types)
                .map(|(a, t)| Acc::state_types(a.kind, t).len())
                .sum::<usize>();
        for batch in reader {
            let batch = batch.map_err(|e| bad(e.to_string()))?;
            if batch.num_columns() != width {
                return Err(bad(format!("{} columns, not {width}", batch.num_columns())));
            }
            let starts = batch
                .column(0)
                .as_primitive_opt::<datafusion_common::arrow::datatypes::Int64Type>()
                .ok_or_else(|| bad("window_start is not BIGINT".into()))?;
            for r in 0..batch.num_rows() {
                let scalar = |k: usize| {
                    ScalarValue::try_from_array(batch.column(k), r).map_err(|e| bad(e.to_string()))
                };
                let key = (1..=nkeys).map(scalar).collect::<Result<Vec<_>, _>>()?;
                let mut at = 1 + nkeys;
                let mut accs = Vec::new();
                for (i, a) in plan.aggs.iter().enumerate() {
                    let n = Acc::state_types(a.kind, &c.arg_types[i]).len();
                    let s = (at..at + n).map(scalar).collect::<Result<Vec<_>, _>>()?;
                    at += n;
                    accs.push(
                        Acc::from_state(a.kind, &c.arg_types[i], &s)
                            .ok_or_else(|| bad(format!("aggregate {i}: state {s:?}")))?,
                    );
                }
                let g = state.windows.entry(starts.value(r)).or_default();
                g.index.insert(key.clone(), g.rows.len());
                g.rows.push((key, accs));
            }
        }
        Ok(Some((state, redeliveries)))
    }

    /// Writes the state with the epoch's redelivery `log`: a temporary
    /// file, fsync, rename, fsync of the directory (a crash leaves the old
    /// state or the new one).
    fn save(&self, path: &Path, plan: &Windowed, c: &Compiled, log: &[u8]) -> Result<(), String> {
        let bad = |e: std::io::Error| format!("state file {}: {e}", path.display());
        let ipc = self.to_ipc(plan, c)?;
        let len = u32::try_from(log.len()).map_err(|_| {
            format!(
                "state file {}: a redelivery log of {} bytes",
                path.display(),
                log.len()
            )
        })?;
        let mut rest = Vec::with_capacity(4 + log.len() + ipc.len());
        rest.extend_from_slice(&len.to_le_bytes());
        rest.extend_from_slice(log);
        rest.extend_from_slice(&ipc);
        let mut bytes = Vec::with_capacity(STATE_MAGIC.len() + 8 + rest.len());
        bytes.extend_from_slice(STATE_MAGIC);
        bytes.extend_from_slice(&fnv1a(&[&rest]).to_le_bytes());
        bytes.extend_from_slice(&rest);
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(bad)?;
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp).map_err(bad)?;
        f.write_all(&bytes).map_err(bad)?;
        f.sync_all().map_err(bad)?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(bad)?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(bad)?;
        Ok(())
    }
}

/// A state file: this, the FNV-1a checksum of the rest (8 bytes, little
/// endian), the length of the redelivery log (4 bytes, little endian), the
/// log ([`Redeliveries::epoch_bytes`]), an Arrow IPC file.
const STATE_MAGIC: &[u8] = b"mqlink-window-state-2\n";

/// Scalars of one type as a column.
fn column(vs: impl Iterator<Item = ScalarValue>, t: &DataType) -> Result<ArrayRef, String> {
    let vs: Vec<ScalarValue> = vs.collect();
    if vs.is_empty() {
        return Ok(new_empty_array(t));
    }
    let a = ScalarValue::iter_to_array(vs).map_err(|e| e.to_string())?;
    if a.data_type() == t {
        Ok(a)
    } else {
        cast(&a, t).map_err(|e| e.to_string())
    }
}

struct Running {
    query: Arc<Query>,
    compiled: Option<Compiled>,
    state: State,
    /// The messages of this epoch and the last committed one.
    redeliveries: Redeliveries,
    /// A state file that cannot be restored: nothing runs, the first
    /// checkpoint fails with this (the pipeline stops, nothing acknowledged).
    broken: Option<String>,
    held: usize,
    last_checkpoint: Instant,
    last_input: Instant,
    /// An instant and the wall clock then (µs): the stage's clock follows
    /// the runtime's (tests pause it).
    base: (Instant, i64),
}

impl Running {
    fn wall(&self, now: Instant) -> i64 {
        let d = now.saturating_duration_since(self.base.0).as_micros() as i64;
        self.base.1.saturating_add(d)
    }

    fn instant_of(&self, wall: i64) -> Instant {
        let ahead = wall.saturating_sub(self.base.1).max(0) as u64;
        self.base.0 + Duration::from_micros(ahead)
    }

    fn arrival(&self) -> bool {
        self.query.time == EventTime::Arrival
    }

    /// Emits the windows the watermark has passed, in order of their start.
    fn close(&mut self, out: &mut Output) {
        let (Some(wm), Some(c)) = (self.state.watermark, self.compiled.as_ref()) else {
            return;
        };
        let width = self.query.plan.windows.width;
        // Windows with start + width <= wm are done.
        let open = self
            .state
            .windows
            .split_off(&wm.saturating_sub(width).saturating_add(1));
        let done = std::mem::replace(&mut self.state.windows, open);
        if done.is_empty() {
            return;
        }
        let rows: Vec<(i64, &Vec<ScalarValue>, &Vec<Acc>)> = done
            .iter()
            .flat_map(|(s, g)| g.rows.iter().map(move |(k, a)| (*s, k, a)))
            .collect();
        let n = rows.len();
        let result = (|| -> Result<RecordBatch, String> {
            let mut cols: Vec<ArrayRef> = Vec::new();
            let nkeys = self.query.plan.keys.len();
            let mut key = 0;
            for (i, f) in c.output.fields().iter().enumerate() {
                let col = if i == self.query.plan.window_at {
                    let start =
                        TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.0))
                            .with_timezone("UTC");
                    let end = TimestampMicrosecondArray::from_iter_values(
                        rows.iter().map(|r| r.0.saturating_add(width)),
                    )
                    .with_timezone("UTC");
                    let s = StructArray::try_new(
                        window_fields(),
                        vec![Arc::new(start) as ArrayRef, Arc::new(end)],
                        None,
                    )
                    .map_err(|e| e.to_string())?;
                    Arc::new(s) as ArrayRef
                } else if i <= nkeys {
                    let k = key;
                    key += 1;
                    column(rows.iter().map(|r| r.1[k].clone()), f.data_type())?
                } else {
                    let a = i - nkeys - 1;
                    let t = &c.arg_types[a];
                    column(rows.iter().map(|r| r.2[a].result(t)), f.data_type())?
                };
                cols.push(col);
            }
            rebuild(&c.output, cols, n)
        })();
        let batch = match result {
            Ok(b) => b,
            Err(reason) => {
                out.faults
                    .push(fault(None, format!("{n} window rows: {reason}"), false));
                return;
            }
        };
        let (parts, failed) = c.post.run_rows(&batch);
        for (_, reason) in failed {
            out.faults.push(fault(None, reason, false));
        }
        for (rows, _) in parts {
            let flat = rebuild(
                &self.query.plan.out,
                flatten_columns(rows.columns()),
                rows.num_rows(),
            );
            match flat {
                Ok(flat) => {
                    for row in records(&self.query.names, &flat) {
                        out.items.push(Item {
                            topic: None,
                            origin: None,
                            payload: bytes::Bytes::new(),
                            value: Value::Row(row),
                        });
                    }
                }
                Err(e) => out.faults.push(fault(None, e, false)),
            }
        }
    }

    /// Aggregates one part of a batch: `rows` out of the query's filters,
    /// `from[j]` the input record of row `j`.
    fn aggregate(
        &mut self,
        items: &[Item],
        source: &RecordBatch,
        rows: &RecordBatch,
        from: &[usize],
        arrival: i64,
        out: &mut Output,
    ) {
        let Some(c) = self.compiled.as_ref() else {
            return;
        };
        let evaluated = match eval(c, rows) {
            Ok(e) => vec![(0..rows.num_rows(), e)],
            Err(_) => {
                // Row by row: the rows that fail are faults.
                let mut v = Vec::new();
                for j in 0..rows.num_rows() {
                    match eval(c, &rows.slice(j, 1)) {
                        Ok(e) => v.push((j..j + 1, e)),
                        Err(reason) => out.faults.push(fault(Some(&items[from[j]]), reason, false)),
                    }
                }
                v
            }
        };
        let source_time = match self.query.time {
            EventTime::Column(i) => timestamps(source.column(i)).ok(),
            _ => None,
        };
        for (range, ev) in evaluated {
            for (k, j) in range.clone().enumerate() {
                let item = &items[from[j]];
                let t = match self.query.time {
                    EventTime::Arrival => Some(arrival),
                    EventTime::Column(_) => source_time
                        .as_ref()
                        .and_then(|t| (!t.is_null(from[j])).then(|| t.value(from[j]))),
                    EventTime::Query => ev
                        .time
                        .as_ref()
                        .and_then(|t| (!t.is_null(k)).then(|| t.value(k))),
                };
                let Some(t) = t else {
                    out.faults
                        .push(fault(Some(item), "the event time is NULL".into(), false));
                    continue;
                };
                if let Some(wm) = self.state.watermark {
                    if t < wm {
                        out.faults.push(fault(
                            Some(item),
                            format!(
                                "late: event time {} is behind the watermark {}; its windows may have been emitted",
                                show_time(t),
                                show_time(wm)
                            ),
                            true,
                        ));
                        continue;
                    }
                }
                let key: Vec<ScalarValue> = match ev
                    .keys
                    .iter()
                    .map(|a| ScalarValue::try_from_array(a, k))
                    .collect::<Result<_, _>>()
                {
                    Ok(key) => key,
                    Err(e) => {
                        out.faults.push(fault(Some(item), e.to_string(), false));
                        continue;
                    }
                };
                for start in self.query.plan.windows.starts(t) {
                    let g = self.state.windows.entry(start).or_default();
                    let at = match g.index.get(&key) {
                        Some(&at) => at,
                        None => {
                            let accs = self
                                .query
                                .plan
                                .aggs
                                .iter()
                                .zip(&c.arg_types)
                                .map(|(a, t)| Acc::new(a.kind, t))
                                .collect();
                            g.index.insert(key.clone(), g.rows.len());
                            g.rows.push((key.clone(), accs));
                            g.rows.len() - 1
                        }
                    };
                    for (acc, a) in g.rows[at].1.iter_mut().zip(&ev.args) {
                        acc.update(a, k);
                    }
                }
                let wm = t.saturating_sub(self.query.delay);
                if self.state.watermark.is_none_or(|w| wm > w) {
                    self.state.watermark = Some(wm);
                }
            }
        }
    }
}

/// What the aggregate reads of its input rows.
struct Evaluated {
    time: Option<TimestampMicrosecondArray>,
    keys: Vec<ArrayRef>,
    args: Vec<ArrayRef>,
}

fn eval(c: &Compiled, rows: &RecordBatch) -> Result<Evaluated, String> {
    let n = rows.num_rows();
    let run = |p: &Arc<dyn PhysicalExpr>, t: &DataType| -> Result<ArrayRef, String> {
        let a = p
            .evaluate(rows)
            .and_then(|v| v.into_array(n))
            .map_err(|e| e.to_string())?;
        if t == &DataType::Null || a.data_type() == t {
            Ok(a)
        } else {
            cast(&a, t).map_err(|e| e.to_string())
        }
    };
    let time = match &c.time {
        Some(p) => Some(timestamps(&run(p, &DataType::Null)?)?),
        None => None,
    };
    Ok(Evaluated {
        time,
        keys: c
            .keys
            .iter()
            .zip(&c.key_types)
            .map(|(p, t)| run(p, t))
            .collect::<Result<_, _>>()?,
        args: c
            .args
            .iter()
            .zip(&c.arg_types)
            .map(|(p, t)| run(p, t))
            .collect::<Result<_, _>>()?,
    })
}

/// A timestamp column in microseconds.
fn timestamps(a: &ArrayRef) -> Result<TimestampMicrosecondArray, String> {
    let a =
        cast(a, &DataType::Timestamp(TimeUnit::Microsecond, None)).map_err(|e| e.to_string())?;
    Ok(a.as_primitive::<TimestampMicrosecondType>().clone())
}

fn show_time(us: i64) -> String {
    DateTime::from_timestamp_micros(us)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string())
        .unwrap_or_else(|| us.to_string())
}

impl Transform for Running {
    fn apply(&mut self, items: Vec<Item>, now: Instant) -> Output {
        let mut out = Output::default();
        self.held += items.len();
        self.last_input = now;
        if self.broken.is_some() {
            return out;
        }
        // Held like the others (acknowledged at the next checkpoint), not
        // counted again.
        let before = items.len();
        let mut items = items;
        items.retain(|i| self.redeliveries.admit(i));
        out.redelivered = (before - items.len()) as u64;
        if items.is_empty() {
            return out;
        }
        let wall = self.wall(now);
        let wall_dt = DateTime::from_timestamp_micros(wall).unwrap_or_default();
        if let Some(c) = self.compiled.as_mut() {
            let refreshed = c.pre.refresh(wall_dt).and_then(|_| c.post.refresh(wall_dt));
            if let Err(reason) = refreshed {
                out.faults
                    .extend(items.iter().map(|i| fault(Some(i), reason.clone(), false)));
                return out;
            }
        }
        let batch = match to_batch(&self.query.input, &items, wall_dt) {
            Ok(b) => b,
            Err(reason) => {
                out.faults
                    .extend(items.iter().map(|i| fault(Some(i), reason.clone(), false)));
                return out;
            }
        };
        // Kept for `mqlink query … FROM table` (only while /query is served).
        crate::query::remember(&self.query.plan.pre.source, &batch);
        let Some(c) = self.compiled.as_ref() else {
            return out;
        };
        let (parts, failed) = c.pre.run_rows(&batch);
        for (i, reason) in failed {
            out.faults.push(fault(Some(&items[i]), reason, false));
        }
        for (rows, from) in parts {
            self.aggregate(&items, &batch, &rows, &from, wall, &mut out);
        }
        self.close(&mut out);
        out
    }

    fn held(&self) -> usize {
        self.held
    }

    fn deadline(&self) -> Option<Instant> {
        if self.broken.is_some() {
            // Fail at once (the checkpoint says why), not at the first message.
            return Some(self.last_checkpoint);
        }
        let mut due = None::<Instant>;
        let mut at = |t: Instant| due = Some(due.map_or(t, |d| d.min(t)));
        if self.held > 0 {
            at(self.last_checkpoint + self.query.interval);
            at(self.last_input + IDLE);
        }
        // Arrival time: a window closes as the clock passes its end.
        if self.arrival() {
            if let Some(start) = self.state.windows.keys().next() {
                at(self.instant_of(start.saturating_add(self.query.plan.windows.width)));
            }
        }
        due
    }

    fn flush(&mut self, now: Instant) -> Output {
        let mut out = Output::default();
        if self.arrival() && self.broken.is_none() {
            let wm = self.wall(now).saturating_sub(self.query.delay);
            if self.state.watermark.is_none_or(|w| wm > w) {
                self.state.watermark = Some(wm);
            }
            self.close(&mut out);
        }
        out
    }

    fn checkpoint_due(&self, now: Instant) -> bool {
        self.broken.is_some()
            || self.held > 0
                && (now >= self.last_checkpoint + self.query.interval
                    || self.held >= HELD_MAX
                    || now >= self.last_input + IDLE)
    }

    fn checkpoint(&mut self) -> Result<(), String> {
        if let Some(e) = &self.broken {
            return Err(e.clone());
        }
        let Some(c) = self.compiled.as_ref() else {
            return Err("the query did not compile".into());
        };
        self.state.save(
            &self.query.state_file,
            &self.query.plan,
            c,
            &self.redeliveries.epoch_bytes(),
        )?;
        self.redeliveries.committed();
        self.held = 0;
        self.last_checkpoint = Instant::now();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use mqlink::format::Value;
    use mqlink_pipeline::batch::Item;
    use mqlink_pipeline::transform::{MakeTransform, Transform};
    use tokio::time::Instant;

    use crate::parse;

    const S: i64 = 1_000_000;
    /// 2026-11-23T10:00:00Z.
    const T0: i64 = 1_795_428_000 * S;

    fn base(dir: &std::path::Path, extra: &str) -> String {
        format!(
            "CREATE CONNECTION c FROM mqtt_source WITH (broker = 'tcp://127.0.0.1:1883', client_id = 'w', clean_session = false);
CREATE TABLE t (dev TEXT, ts TIMESTAMP, temp DOUBLE, n BIGINT, WATERMARK FOR ts AS ts - INTERVAL '5 seconds')
WITH (connector = 'mqtt_source', connection = 'c', topics = '[\"a/#\"]', state_dir = '{}'{extra});
CREATE TABLE f WITH (connector = 'file', path = 'out.jsonl');
",
            dir.display()
        )
    }

    fn stage(dir: &std::path::Path, query: &str) -> std::sync::Arc<dyn MakeTransform> {
        let p = parse(&format!("{}INSERT INTO f {query};", base(dir, "")), &|_| {
            None
        })
        .unwrap_or_else(|e| panic!("{e}"));
        p.transforms["t"].clone()
    }

    #[derive(Debug, Clone)]
    struct Row {
        dev: Option<String>,
        ts: i64,
        temp: f64,
        n: i64,
    }

    fn item(r: &Row) -> Item {
        Item {
            topic: Some("a/x".into()),
            origin: None,
            payload: bytes::Bytes::from(format!("{r:?}")),
            value: Value::Row(vec![
                ("dev".into(), r.dev.clone().map_or(Value::Null, Value::Text)),
                ("ts".into(), Value::Timestamp(r.ts)),
                ("temp".into(), Value::Double(r.temp)),
                ("n".into(), Value::BigInt(r.n)),
            ]),
        }
    }

    /// Rows in a stream with disorder: mostly increasing, some late.
    fn rows(seed: u64, count: usize) -> Vec<Row> {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut t = T0 + 3 * S;
        (0..count)
            .map(|_| {
                t += rng.i64(0..2 * S);
                // Up to 8 s back: some within the 5 s delay, some late.
                let ts = t - rng.i64(0..8 * S) * i64::from(rng.u8(..4) == 0);
                Row {
                    dev: (rng.u8(..20) != 0).then(|| format!("d{}", rng.u8(..3))),
                    ts,
                    temp: f64::from(rng.i32(-200..400)) / 10.0,
                    n: rng.i64(-5..50),
                }
            })
            .collect()
    }

    type Out = Vec<Vec<(String, Value)>>;

    /// Runs `rows` in batches of random sizes; the rows out, and the
    /// late faults.
    fn run(t: &mut dyn Transform, rows: &[Row], seed: u64) -> (Out, usize, usize) {
        let mut rng = fastrand::Rng::with_seed(seed);
        let (mut out, mut late, mut other) = (Vec::new(), 0, 0);
        let mut i = 0;
        while i < rows.len() {
            let n = rng.usize(1..40).min(rows.len() - i);
            let o = t.apply(rows[i..i + n].iter().map(item).collect(), Instant::now());
            i += n;
            collect(o, &mut out, &mut late, &mut other);
        }
        (out, late, other)
    }

    fn collect(
        o: mqlink_pipeline::transform::Output,
        out: &mut Out,
        late: &mut usize,
        other: &mut usize,
    ) {
        for f in o.faults {
            if f.late {
                *late += 1;
            } else {
                *other += 1;
            }
        }
        for it in o.items {
            let Value::Row(r) = it.value else { panic!() };
            out.push(r.into_iter().map(|(k, v)| (k.to_string(), v)).collect());
        }
    }

    /// The reference: row by row, late rows skipped, windows by start.
    struct Acc {
        count: i64,
        sum: f64,
        lo: f64,
        hi: f64,
        nsum: i64,
    }

    fn reference(
        rows: &[Row],
        slide: i64,
        width: i64,
        delay: i64,
    ) -> (BTreeMap<(i64, Option<String>), Acc>, i64, usize) {
        let mut wm = i64::MIN;
        let mut late = 0;
        let mut w: BTreeMap<(i64, Option<String>), Acc> = BTreeMap::new();
        for r in rows {
            if r.ts < wm {
                late += 1;
                continue;
            }
            let mut s = r.ts.div_euclid(slide) * slide;
            while s + width > r.ts {
                let a = w.entry((s, r.dev.clone())).or_insert(Acc {
                    count: 0,
                    sum: 0.0,
                    lo: f64::INFINITY,
                    hi: f64::NEG_INFINITY,
                    nsum: 0,
                });
                a.count += 1;
                a.sum += r.temp;
                a.lo = a.lo.min(r.temp);
                a.hi = a.hi.max(r.temp);
                a.nsum += r.n;
                s -= slide;
            }
            wm = wm.max(r.ts - delay);
        }
        (w, wm, late)
    }

    fn sorted(mut v: Out) -> Out {
        v.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
        v
    }

    fn text(s: &Option<String>) -> Value {
        s.clone().map_or(Value::Null, Value::Text)
    }

    const TUMBLE: &str = "SELECT TUMBLE(INTERVAL '10 seconds') AS window, dev, COUNT(*) AS c, \
        SUM(n) AS total, AVG(temp) AS mean, MIN(temp) AS lo, MAX(temp) AS hi \
        FROM t WHERE temp > -15 GROUP BY window, dev";

    /// Arroyo's form: exact against the reference, late rows counted.
    #[test]
    fn tumble_is_exact() {
        let dir = testkit::TempDir::new().unwrap();
        let mut t = stage(dir.path(), TUMBLE).make();
        let all = rows(1, 3000);
        let (out, late, other) = run(t.as_mut(), &all, 2);
        assert_eq!(other, 0);
        let kept: Vec<Row> = all.iter().filter(|r| r.temp > -15.0).cloned().collect();
        let (w, wm, want_late) = reference(&kept, 10 * S, 10 * S, 5 * S);
        assert!(want_late > 20, "{want_late}");
        assert_eq!(late, want_late);
        let want: Out = w
            .iter()
            .filter(|((s, _), _)| s + 10 * S <= wm)
            .map(|((s, dev), a)| {
                vec![
                    ("window_start".into(), Value::Timestamp(*s)),
                    ("window_end".into(), Value::Timestamp(s + 10 * S)),
                    ("dev".into(), text(dev)),
                    ("c".into(), Value::BigInt(a.count)),
                    ("total".into(), Value::BigInt(a.nsum)),
                    ("mean".into(), Value::Double(a.sum / a.count as f64)),
                    ("lo".into(), Value::Double(a.lo)),
                    ("hi".into(), Value::Double(a.hi)),
                ]
            })
            .collect();
        assert!(want.len() > 100, "{}", want.len());
        assert_eq!(sorted(out.clone()), sorted(want));
        // Emitted in order of the windows.
        let starts: Vec<&Value> = out.iter().map(|r| &r[0].1).collect();
        let mut s2 = starts.clone();
        s2.sort_by_key(|v| match v {
            Value::Timestamp(t) => *t,
            _ => 0,
        });
        assert_eq!(starts, s2);
    }

    /// Flink's form with HOP, HOP_START/HOP_END and HAVING.
    #[test]
    fn hop_with_having_is_exact() {
        let dir = testkit::TempDir::new().unwrap();
        let q = "SELECT dev, HOP_START(ts, INTERVAL '5' SECOND, INTERVAL '15' SECOND) AS ws, \
            HOP_END(ts, INTERVAL '5' SECOND, INTERVAL '15' SECOND) AS we, COUNT(temp) AS c, MAX(temp) - MIN(temp) AS spread \
            FROM t GROUP BY HOP(ts, INTERVAL '5' SECOND, INTERVAL '15' SECOND), dev HAVING COUNT(*) >= 3";
        let mut t = stage(dir.path(), q).make();
        let all = rows(3, 2000);
        let (out, late, other) = run(t.as_mut(), &all, 4);
        assert_eq!(other, 0);
        let (w, wm, want_late) = reference(&all, 5 * S, 15 * S, 5 * S);
        assert_eq!(late, want_late);
        let want: Out = w
            .iter()
            .filter(|((s, _), a)| s + 15 * S <= wm && a.count >= 3)
            .map(|((s, dev), a)| {
                vec![
                    ("dev".into(), text(dev)),
                    ("ws".into(), Value::Timestamp(*s)),
                    ("we".into(), Value::Timestamp(s + 15 * S)),
                    ("c".into(), Value::BigInt(a.count)),
                    ("spread".into(), Value::Double(a.hi - a.lo)),
                ]
            })
            .collect();
        assert!(want.len() > 100, "{}", want.len());
        assert_eq!(sorted(out), sorted(want));
    }

    /// Flink's TUMBLE in GROUP BY, TUMBLE_START/END; a view in between.
    #[test]
    fn flink_tumble_through_a_view() {
        let dir = testkit::TempDir::new().unwrap();
        let sql = format!(
            "{}CREATE VIEW v AS SELECT TUMBLE_START(ts, INTERVAL '1' MINUTE) AS s, TUMBLE_END(ts, INTERVAL '1' MINUTE) AS e, COUNT(*) AS c, SUM(temp) AS st \
             FROM t GROUP BY TUMBLE(ts, INTERVAL '1' MINUTE);
             INSERT INTO f SELECT s, c, st FROM v WHERE c > 1;",
            base(dir.path(), "")
        );
        let p = parse(&sql, &|_| None).unwrap_or_else(|e| panic!("{e}"));
        let mut t = p.transforms["t"].make();
        let all = rows(5, 1500);
        let (out, late, _) = run(t.as_mut(), &all, 6);
        let (w, wm, want_late) = reference(&all, 60 * S, 60 * S, 5 * S);
        assert_eq!(late, want_late);
        let mut per: BTreeMap<i64, (i64, f64)> = BTreeMap::new();
        for ((s, _), a) in &w {
            if s + 60 * S <= wm {
                let e = per.entry(*s).or_default();
                e.0 += a.count;
            }
        }
        // Sums in arrival order (the groups above are split by device).
        let mut wm2 = i64::MIN;
        for r in &all {
            if r.ts < wm2 {
                continue;
            }
            let s = r.ts.div_euclid(60 * S) * 60 * S;
            if let Some(e) = per.get_mut(&s) {
                e.1 += r.temp;
            }
            wm2 = wm2.max(r.ts - 5 * S);
        }
        let want: Out = per
            .iter()
            .filter(|(_, (c, _))| *c > 1)
            .map(|(s, (c, st))| {
                vec![
                    ("s".into(), Value::Timestamp(*s)),
                    ("c".into(), Value::BigInt(*c)),
                    ("st".into(), Value::Double(*st)),
                ]
            })
            .collect();
        assert!(want.len() > 10);
        assert_eq!(out, want);
    }

    /// Arroyo's `window.start` / `window.end` of `TUMBLE(…) AS window`.
    #[test]
    fn window_fields_in_the_select_list() {
        let dir = testkit::TempDir::new().unwrap();
        let q = "SELECT TUMBLE(INTERVAL '10 seconds') AS window, window.start AS s, window.end AS e, COUNT(*) AS c \
                 FROM t GROUP BY window HAVING window.start > TIMESTAMP '2000-01-01T00:00:00Z'";
        let mut t = stage(dir.path(), q).make();
        let all = rows(13, 500);
        let (out, _, other) = run(t.as_mut(), &all, 14);
        assert_eq!(other, 0);
        assert!(out.len() > 10);
        for r in &out {
            let names: Vec<&str> = r.iter().map(|(k, _)| k.as_str()).collect();
            assert_eq!(names, ["window_start", "window_end", "s", "e", "c"]);
            assert_eq!((&r[0].1, &r[1].1), (&r[2].1, &r[3].1));
        }
    }

    /// A checkpoint, a new stage from the state file: the same results as
    /// one run without a break.
    #[test]
    fn state_round_trips() {
        let dir = testkit::TempDir::new().unwrap();
        let all = rows(7, 2400);
        let whole = {
            let other = testkit::TempDir::new().unwrap();
            let mut t = stage(other.path(), TUMBLE).make();
            run(t.as_mut(), &all, 8)
        };
        let make = stage(dir.path(), TUMBLE);
        let mut got = (Vec::new(), 0, 0);
        for (k, part) in all.chunks(700).enumerate() {
            let mut t = make.make();
            let (o, l, x) = run(t.as_mut(), part, 9 + k as u64);
            got.0.extend(o);
            got.1 += l;
            got.2 += x;
            assert_eq!(t.held(), part.len());
            t.checkpoint().unwrap();
            assert_eq!(t.held(), 0);
            // What comes after the checkpoint and is lost in a crash is
            // not in the state.
            let _ = t.apply(all[..50].iter().map(item).collect(), Instant::now());
        }
        assert_eq!(got, whole);
        assert!(dir.path().join("t.window").exists());
        // Another query does not restore this state: it stops the pipeline.
        let q2 = TUMBLE.replace("MAX(temp) AS hi", "MAX(n) AS hi");
        let mut t = stage(dir.path(), &q2).make();
        assert!(t.checkpoint_due(Instant::now()));
        assert!(t.deadline().is_some_and(|d| d <= Instant::now()));
        let o = t.apply(all[..3].iter().map(item).collect(), Instant::now());
        assert!(o.items.is_empty() && o.faults.is_empty());
        assert_eq!(t.held(), 3);
        let e = t.checkpoint().unwrap_err();
        assert!(e.contains("t.window") && e.contains("another query"), "{e}");
    }

    /// A crash after a checkpoint wrote the state and before the broker
    /// had its acknowledgements: the broker sends the epoch's messages
    /// again (DUP set, same packet ids) onto a state that holds them, then
    /// those after the checkpoint. Each is counted once.
    #[test]
    fn a_redelivered_epoch_is_not_counted_twice() {
        use mqlink_pipeline::batch::Origin;
        let all = rows(21, 1500);
        let whole = {
            let other = testkit::TempDir::new().unwrap();
            let mut t = stage(other.path(), TUMBLE).make();
            run(t.as_mut(), &all, 22)
        };
        let sent = |from: usize, to: usize, dup: bool| -> Vec<Item> {
            (from..to)
                .map(|i| Item {
                    origin: Some(Origin {
                        client: 0,
                        packet_id: (i % 65_535 + 1) as u16,
                        dup,
                        position: None,
                    }),
                    ..item(&all[i])
                })
                .collect()
        };
        let dir = testkit::TempDir::new().unwrap();
        let make = stage(dir.path(), TUMBLE);
        let mut got = (Vec::new(), 0, 0);
        let mut t = make.make();
        collect(
            t.apply(sent(0, 600, false), Instant::now()),
            &mut got.0,
            &mut got.1,
            &mut got.2,
        );
        t.checkpoint().unwrap();
        // After the checkpoint, lost with the process (its output too).
        let _ = t.apply(sent(600, 700, false), Instant::now());
        drop(t);
        let mut t = make.make();
        let o = t.apply(sent(0, 700, true), Instant::now());
        assert_eq!(o.redelivered, 600);
        collect(o, &mut got.0, &mut got.1, &mut got.2);
        collect(
            t.apply(sent(700, all.len(), false), Instant::now()),
            &mut got.0,
            &mut got.1,
            &mut got.2,
        );
        assert_eq!(got, whole);
    }

    /// A damaged state file stops the source, named; no panic (the
    /// checksum is checked before Arrow reads it).
    #[test]
    fn a_damaged_state_file_is_named() {
        let dir = testkit::TempDir::new().unwrap();
        let make = stage(dir.path(), TUMBLE);
        let mut t = make.make();
        run(t.as_mut(), &rows(15, 300), 16);
        t.checkpoint().unwrap();
        let file = dir.path().join("t.window");
        let good = std::fs::read(&file).unwrap();
        let mut rng = fastrand::Rng::with_seed(17);
        for _ in 0..200 {
            let mut b = good.clone();
            match rng.u8(..3) {
                0 => b.truncate(rng.usize(..b.len())),
                1 => {
                    let at = rng.usize(..b.len());
                    b[at] ^= 1 << rng.u8(..8);
                }
                _ => b = (0..rng.usize(..64)).map(|_| rng.u8(..)).collect(),
            }
            std::fs::write(&file, &b).unwrap();
            let mut t = make.make();
            assert!(t.checkpoint_due(Instant::now()));
            let e = t.checkpoint().unwrap_err();
            assert!(e.contains("t.window"), "{e}");
        }
    }

    /// Checkpoints fall due by time without input, by count, by interval.
    #[tokio::test(start_paused = true)]
    async fn checkpoints_fall_due() {
        let dir = testkit::TempDir::new().unwrap();
        let p = parse(
            &format!(
                "{}INSERT INTO f {TUMBLE};",
                base(dir.path(), ", checkpoint_interval = '2 s'")
            ),
            &|_| None,
        )
        .unwrap();
        let mut t = p.transforms["t"].make();
        let start = Instant::now();
        assert!(!t.checkpoint_due(start));
        assert_eq!(t.deadline(), None);
        let all = rows(11, 40);
        t.apply(all[..10].iter().map(item).collect(), start);
        assert_eq!(t.held(), 10);
        assert!(!t.checkpoint_due(start));
        assert_eq!(t.deadline(), Some(start + super::IDLE));
        tokio::time::advance(super::IDLE).await;
        assert!(t.checkpoint_due(Instant::now()));
        t.checkpoint().unwrap();
        assert_eq!((t.held(), t.deadline()), (0, None));
        // A steady stream: the interval.
        let begin = Instant::now();
        for i in 0..30 {
            tokio::time::advance(std::time::Duration::from_millis(100)).await;
            let now = Instant::now();
            t.apply(vec![item(&all[10 + i])], now);
            if now - begin < std::time::Duration::from_secs(2) {
                assert!(!t.checkpoint_due(now), "{i}");
            } else {
                assert!(t.checkpoint_due(now), "{i}");
                break;
            }
        }
        t.checkpoint().unwrap();
        // A burst: the count.
        let many: Vec<Item> = (0..super::HELD_MAX).map(|i| item(&all[i % 40])).collect();
        t.apply(many, Instant::now());
        assert!(t.checkpoint_due(Instant::now()));
    }

    /// Without WATERMARK FOR the event time is the arrival time: windows
    /// close as the clock passes their end, also without input.
    #[tokio::test(start_paused = true)]
    async fn arrival_time_windows_close_on_time() {
        let dir = testkit::TempDir::new().unwrap();
        let sql =
            base(dir.path(), "").replace(", WATERMARK FOR ts AS ts - INTERVAL '5 seconds'", "");
        let p = parse(
            &format!("{sql}INSERT INTO f SELECT TUMBLE(INTERVAL '1 second') AS w, COUNT(*) AS c FROM t GROUP BY w;"),
            &|_| None,
        )
        .unwrap();
        let mut t = p.transforms["t"].make();
        let all = rows(12, 10);
        let o = t.apply(all[..4].iter().map(item).collect(), Instant::now());
        assert!(o.items.is_empty());
        // As the source does: wait for the deadline, flush, checkpoint
        // when due; the window closes within its second.
        let begin = Instant::now();
        let mut o = mqlink_pipeline::transform::Output::default();
        for _ in 0..10 {
            let due = t.deadline().unwrap();
            assert!(due <= begin + std::time::Duration::from_secs(1));
            tokio::time::sleep_until(due).await;
            o = t.flush(Instant::now());
            if t.checkpoint_due(Instant::now()) {
                t.checkpoint().unwrap();
            }
            if !o.items.is_empty() {
                break;
            }
        }
        assert_eq!(o.items.len(), 1, "{o:?}");
        let Value::Row(r) = &o.items[0].value else {
            panic!()
        };
        assert_eq!(r[2], ("c".into(), Value::BigInt(4)));
        let (Value::Timestamp(s), Value::Timestamp(e)) = (&r[0].1, &r[1].1) else {
            panic!("{r:?}")
        };
        assert_eq!((e - s, s % S), (S, 0));
    }

    /// What a windowed query needs is asked for by name when validated.
    #[test]
    fn validation_names_what_is_missing() {
        let dir = testkit::TempDir::new().unwrap();
        let sql = format!("{}INSERT INTO f {TUMBLE};", base(dir.path(), ""));
        let err = |from: &str, to: &str| {
            assert!(sql.contains(from), "{from}");
            parse(&sql.replacen(from, to, 1), &|_| None)
                .unwrap_err()
                .to_string()
        };
        let e = err(&format!(", state_dir = '{}'", dir.path().display()), "");
        assert!(
            e.starts_with("line 2: CREATE TABLE t: state_dir: missing"),
            "{e}"
        );
        let e = err("clean_session = false", "clean_session = true");
        assert!(
            e.starts_with("line 1: CREATE CONNECTION c: clean_session: "),
            "{e}"
        );
        assert!(e.contains("persistent session"), "{e}");
        let e = err(
            "clean_session = false",
            "clean_session = false, protocol = '5', session_expiry_interval = 0",
        );
        assert!(
            e.starts_with("line 1: CREATE CONNECTION c: session_expiry_interval: "),
            "{e}"
        );
        let e = err("client_id = 'w', ", "");
        assert!(
            e.starts_with("line 1: CREATE CONNECTION c: client_id: "),
            "{e}"
        );
        let e = err("FOR ts AS", "FOR dev AS");
        assert!(e.contains("WATERMARK FOR: dev is not a TIMESTAMP"), "{e}");
        let e = err("INTERVAL '10 seconds'", "INTERVAL '1 month'");
        assert!(e.contains("months"), "{e}");
        let e = err("GROUP BY window, dev", "GROUP BY dev");
        assert!(e.contains("TUMBLE") || e.contains("window"), "{e}");
        let e = err("COUNT(*) AS c", "COUNT(DISTINCT dev) AS c");
        assert!(e.contains("DISTINCT"), "{e}");
        let e = parse(
            &format!(
                "{}INSERT INTO f SELECT dev, COUNT(*) AS c FROM t GROUP BY dev;",
                base(dir.path(), "")
            ),
            &|_| None,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("without a window"), "{e}");
        // state_dir on a table no windowed query reads.
        let e = parse(
            &format!("{}INSERT INTO f SELECT * FROM t;", base(dir.path(), "")),
            &|_| None,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("state_dir: only a windowed query"), "{e}");
    }
}
