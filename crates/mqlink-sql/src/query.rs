//! One-off queries over a running pipeline's system tables
//! (`system.connector_status`, `system.connector_logs`) and its source
//! tables' recent rows: what `mqlink query` sends to /query. DataFusion plans the SELECT (types, functions,
//! the JSON operators); the plan is run here over the tables' rows as Arrow
//! batches — filters and projections with DataFusion's physical
//! expressions, ORDER BY with Arrow's `lexsort_to_indices`, LIMIT/OFFSET,
//! DISTINCT, UNION ALL, and COUNT/SUM/MIN/MAX/AVG (… GROUP BY) with
//! DataFusion's own accumulators — without DataFusion's execution engine
//! (its build time on 2 cores). The tables are small (a row per component,
//! the last 1,000 log events, the last 10,000 rows of a source), so each
//! operator takes its whole input.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use datafusion_common::arrow::array::{Array, ArrayRef, BooleanArray, UInt32Array};
use datafusion_common::arrow::compute::{
    cast, concat_batches, filter_record_batch, lexsort_to_indices, take, SortColumn, SortOptions,
};
use datafusion_common::arrow::datatypes::{FieldRef, SchemaRef};
use datafusion_common::arrow::record_batch::RecordBatch;
use datafusion_common::arrow::row::{RowConverter, SortField};
use datafusion_common::{DFSchema, ScalarValue};
use datafusion_expr::expr::AggregateFunction;
use datafusion_expr::function::AccumulatorArgs;
use datafusion_expr::logical_plan::{Distinct, FetchType, SkipType};
use datafusion_expr::{Expr, LogicalPlan};
use datafusion_sql::sqlparser::ast::Statement;
use datafusion_sql::sqlparser::dialect::GenericDialect;
use datafusion_sql::sqlparser::parser::Parser;
use mqlink_pipeline::status::{QueryHandler, QueryLimits, SystemTable};

use crate::plan::{arrow_field, physical, schema_of, Catalog, JSON_TYPE};
use crate::stage::{column_values, rebuild, values, wall_clock};

/// Rows of each source table kept for ad-hoc queries (`SELECT COUNT(*)
/// FROM iot_telemetry WHERE …`): the most recent, as its query's stage saw
/// them.
pub const RECENT_ROWS: usize = 10_000;

/// Recent batches by source table, with their row count; `None` until a
/// /query handler exists (a pipeline without one keeps nothing).
static RECENT: Mutex<Option<HashMap<String, Recent>>> = Mutex::new(None);

#[derive(Default)]
struct Recent {
    rows: usize,
    batches: VecDeque<RecordBatch>,
}

/// Keeps a batch of a source table's rows (Arrow columns are shared, not
/// copied), dropping the oldest beyond [`RECENT_ROWS`].
pub(crate) fn remember(table: &str, batch: &RecordBatch) {
    let Ok(mut recent) = RECENT.lock() else {
        return;
    };
    let Some(recent) = recent.as_mut() else {
        return;
    };
    let q = match recent.get_mut(table) {
        Some(q) => q,
        None => recent.entry(table.to_string()).or_default(),
    };
    q.batches.push_back(batch.clone());
    q.rows += batch.num_rows();
    while q.rows > RECENT_ROWS {
        let Some(front) = q.batches.pop_front() else {
            break;
        };
        let n = front.num_rows();
        if q.rows - n < RECENT_ROWS {
            // Keep the newest rows of the oldest batch.
            let keep = RECENT_ROWS - (q.rows - n);
            q.batches.push_front(front.slice(n - keep, keep));
            q.rows = RECENT_ROWS;
            break;
        }
        q.rows -= n;
    }
}

/// The recent rows of each source table, one batch each.
fn recent_tables() -> Vec<(String, RecordBatch)> {
    // Batches are shared columns: taken under the lock, joined outside it
    // (the stages' `remember` waits for it on every batch).
    let taken: Vec<(String, Vec<RecordBatch>)> = match RECENT.lock() {
        Ok(recent) => recent
            .iter()
            .flatten()
            .map(|(name, q)| (name.clone(), q.batches.iter().cloned().collect()))
            .collect(),
        Err(_) => return Vec::new(),
    };
    taken
        .into_iter()
        .filter_map(|(name, all)| {
            let first = all.first()?;
            concat_batches(&first.schema(), &all)
                .ok()
                .map(|b| (name, b))
        })
        .collect()
}

/// The handler a running pipeline's /query calls; from now on the source
/// tables' recent rows are kept for it.
pub fn handler() -> QueryHandler {
    if let Ok(mut recent) = RECENT.lock() {
        recent.get_or_insert_with(HashMap::new);
    }
    Arc::new(|sql: &str, tables: &[SystemTable], limits: &QueryLimits| {
        // DataFusion is not ours: a panic in it is an error of this query,
        // not the end of the HTTP task.
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            query_within(sql, tables, Some(limits))
        }))
        .unwrap_or_else(|_| Err("the query could not be evaluated (internal error)".into()))
        .map(|b| to_json(&b))
    })
}

/// Runs one SELECT over the tables: parsed and planned where deep trees
/// fit (see [`crate::depth`]).
pub fn query(sql: &str, tables: &[SystemTable]) -> Result<RecordBatch, String> {
    query_within(sql, tables, None)
}

/// [`query`] within a /query's memory, time and cancellation (see
/// [`crate::budget`]).
pub fn query_within(
    sql: &str,
    tables: &[SystemTable],
    limits: Option<&QueryLimits>,
) -> Result<RecordBatch, String> {
    crate::depth::on_deep_stack(|| match limits {
        Some(l) => crate::budget::within(l, || query_here(sql, tables)),
        None => query_here(sql, tables),
    })?
}

fn query_here(sql: &str, tables: &[SystemTable]) -> Result<RecordBatch, String> {
    let mut statements =
        Parser::parse_sql(&GenericDialect {}, sql).map_err(|e| syntax(e.to_string()))?;
    for s in &statements {
        crate::depth::check_statement(s)?;
    }
    let q = match (statements.pop(), statements.is_empty()) {
        (Some(Statement::Query(q)), true) => q,
        (None, _) => return Err("no query".into()),
        (Some(_), false) => {
            return Err("one query at a time (the text has several statements)".into())
        }
        (Some(s), true) => {
            let first: Vec<String> = s
                .to_string()
                .split_whitespace()
                .take(2)
                .map(String::from)
                .collect();
            return Err(format!(
                "{}: only SELECT queries are answered here",
                first.join(" ")
            ));
        }
    };
    let mut batches = HashMap::new();
    let mut schemas = Vec::new();
    for t in tables {
        let schema = schema_of(
            t.columns
                .iter()
                .map(|(n, ty)| arrow_field(n, *ty))
                .collect(),
        );
        let n = t.rows.len();
        let cols = (0..t.columns.len())
            .map(|i| values(t.columns[i].1, t.rows.iter().map(|r| r.get(i)), n))
            .collect();
        batches.insert(t.name.to_string(), rebuild(&schema, cols, n)?);
        schemas.push((t.name.to_string(), schema));
    }
    for (name, b) in recent_tables() {
        schemas.push((name.clone(), b.schema()));
        batches.insert(name, b);
    }
    crate::budget::reads(batches.values().map(|b| b.get_array_memory_size()).sum());
    let schemas: Vec<(&str, SchemaRef)> = schemas
        .iter()
        .map(|(n, s)| (n.as_str(), s.clone()))
        .collect();
    let plan = Catalog::system_tables(&schemas).plan(&q)?;
    Exec {
        tables: &batches,
        now: wall_clock(),
    }
    .run(&plan)
}

/// sqlparser's message without its prefix.
fn syntax(e: String) -> String {
    e.strip_prefix("sql parser error: ")
        .map(|s| format!("syntax: {s}"))
        .unwrap_or(e)
}

/// `{"columns": ["a", …], "rows": [[1, …], …]}`: timestamps as RFC 3339
/// text, JSON columns as JSON.
pub fn to_json(b: &RecordBatch) -> serde_json::Value {
    let columns: Vec<serde_json::Value> = b
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().as_str().into())
        .collect();
    let mut rows = vec![Vec::with_capacity(b.num_columns()); b.num_rows()];
    for (c, f) in b.columns().iter().zip(b.schema().fields()) {
        let json = f.metadata().get(JSON_TYPE.0).map(String::as_str) == Some(JSON_TYPE.1);
        for (row, v) in rows.iter_mut().zip(column_values(c, json)) {
            row.push(v.to_json());
        }
    }
    serde_json::json!({ "columns": columns, "rows": rows })
}

struct Exec<'a> {
    tables: &'a HashMap<String, RecordBatch>,
    now: DateTime<Utc>,
}

fn err(e: impl std::fmt::Display) -> String {
    crate::plan::clean(e.to_string())
}

impl Exec<'_> {
    /// Values of `e` over every row of `batch` (of `schema`).
    fn eval(
        &self,
        e: &Expr,
        schema: &Arc<DFSchema>,
        batch: &RecordBatch,
    ) -> Result<ArrayRef, String> {
        physical(e, schema, self.now)?
            .evaluate(batch)
            .and_then(|v| v.into_array(batch.num_rows()))
            .map_err(err)
    }

    /// The rows of `plan`, each operator's within the query's budget.
    fn run(&self, plan: &LogicalPlan) -> Result<RecordBatch, String> {
        crate::budget::charge("", 0)?;
        let rows = self.run_op(plan)?;
        crate::budget::fits("the rows of the query", rows.get_array_memory_size())?;
        Ok(rows)
    }

    fn run_op(&self, plan: &LogicalPlan) -> Result<RecordBatch, String> {
        let out_schema = || Arc::new(plan.schema().as_arrow().clone()) as SchemaRef;
        match plan {
            LogicalPlan::TableScan(scan) => {
                let t = scan.table_name.table();
                let name = match scan.table_name.schema() {
                    Some(s) => format!("{s}.{t}"),
                    None if self.tables.contains_key(t) => t.to_string(),
                    None => format!("system.{t}"),
                };
                let mut batch = self
                    .tables
                    .get(&name)
                    .cloned()
                    .ok_or_else(|| format!("no table named {name}"))?;
                let full = Arc::new(
                    DFSchema::try_from_qualified_schema(
                        scan.table_name.clone(),
                        &scan.source.schema(),
                    )
                    .map_err(err)?,
                );
                for f in &scan.filters {
                    batch = self.filter(f, &full, batch)?;
                }
                if let Some(cols) = &scan.projection {
                    batch = batch.project(cols).map_err(err)?;
                }
                let n = batch.num_rows();
                rebuild(&out_schema(), batch.columns().to_vec(), n)
            }
            LogicalPlan::Filter(f) => {
                let input = self.run(&f.input)?;
                self.filter(&f.predicate, f.input.schema(), input)
            }
            LogicalPlan::Projection(p) => {
                let input = self.run(&p.input)?;
                let cols = p
                    .expr
                    .iter()
                    .map(|e| self.eval(e, p.input.schema(), &input))
                    .collect::<Result<Vec<_>, _>>()?;
                rebuild(&out_schema(), cols, input.num_rows())
            }
            LogicalPlan::SubqueryAlias(a) => {
                let input = self.run(&a.input)?;
                let n = input.num_rows();
                rebuild(&out_schema(), input.columns().to_vec(), n)
            }
            LogicalPlan::Sort(s) => {
                let input = self.run(&s.input)?;
                let keys = s
                    .expr
                    .iter()
                    .map(|k| {
                        Ok(SortColumn {
                            values: self.eval(&k.expr, s.input.schema(), &input)?,
                            options: Some(SortOptions {
                                descending: !k.asc,
                                nulls_first: k.nulls_first,
                            }),
                        })
                    })
                    .collect::<Result<Vec<_>, String>>()?;
                if keys.is_empty() || input.num_rows() == 0 {
                    return Ok(input);
                }
                let idx = lexsort_to_indices(&keys, s.fetch).map_err(err)?;
                take_rows(&input, &idx)
            }
            LogicalPlan::Limit(l) => {
                let input = self.run(&l.input)?;
                let skip = match l.get_skip_type().map_err(err)? {
                    SkipType::Literal(n) => n,
                    SkipType::UnsupportedExpr => return Err("OFFSET: a constant is needed".into()),
                };
                let fetch = match l.get_fetch_type().map_err(err)? {
                    FetchType::Literal(n) => n,
                    FetchType::UnsupportedExpr => return Err("LIMIT: a constant is needed".into()),
                };
                let n = input.num_rows();
                let start = skip.min(n);
                let len = fetch.unwrap_or(n).min(n - start);
                Ok(input.slice(start, len))
            }
            LogicalPlan::Aggregate(a) => {
                let input = self.run(&a.input)?;
                self.aggregate(a, input)
            }
            LogicalPlan::Distinct(Distinct::All(inner)) => {
                let input = self.run(inner)?;
                let (_, firsts) = groups(input.columns(), input.num_rows())?;
                take_rows(&input, &UInt32Array::from(firsts))
            }
            LogicalPlan::Union(u) => {
                let schema = out_schema();
                let mut parts = Vec::new();
                for i in &u.inputs {
                    let b = self.run(i)?;
                    let cols = b
                        .columns()
                        .iter()
                        .zip(schema.fields())
                        .map(|(c, f)| cast(c, f.data_type()).map_err(err))
                        .collect::<Result<Vec<_>, _>>()?;
                    parts.push(rebuild(&schema, cols, b.num_rows())?);
                }
                match parts.first() {
                    Some(p) => concat_batches(&p.schema(), &parts).map_err(err),
                    None => rebuild(&schema, Vec::new(), 0),
                }
            }
            LogicalPlan::EmptyRelation(e) => {
                rebuild(&out_schema(), Vec::new(), e.produce_one_row as usize)
            }
            LogicalPlan::Join(_) => Err("JOIN: not supported by mqlink query".into()),
            LogicalPlan::Window(_) => {
                Err("window functions (… OVER (…)): not supported by mqlink query".into())
            }
            other => Err(format!(
                "{}: not supported by mqlink query",
                other
                    .display()
                    .to_string()
                    .split(':')
                    .next()
                    .unwrap_or("this")
            )),
        }
    }

    /// The rows where `predicate` is true (NULL drops the row).
    fn filter(
        &self,
        predicate: &Expr,
        schema: &Arc<DFSchema>,
        batch: RecordBatch,
    ) -> Result<RecordBatch, String> {
        let mask = self.eval(predicate, schema, &batch)?;
        let mask = mask
            .as_any()
            .downcast_ref::<BooleanArray>()
            .ok_or_else(|| format!("WHERE {predicate}: not a boolean"))?;
        filter_record_batch(&batch, mask).map_err(err)
    }

    /// GROUP BY (none: one group of every row) with DataFusion's
    /// accumulators, one per group and aggregate.
    fn aggregate(
        &self,
        a: &datafusion_expr::logical_plan::Aggregate,
        input: RecordBatch,
    ) -> Result<RecordBatch, String> {
        let in_schema = a.input.schema();
        let n = input.num_rows();
        if a.group_expr
            .iter()
            .any(|e| matches!(e, Expr::GroupingSet(_)))
        {
            return Err("GROUPING SETS, CUBE, ROLLUP: not supported by mqlink query".into());
        }
        let keys = a
            .group_expr
            .iter()
            .map(|e| self.eval(e, in_schema, &input))
            .collect::<Result<Vec<_>, _>>()?;
        // Rows of each group, in order of first appearance.
        let (rows_of, firsts) = if keys.is_empty() {
            (vec![(0..n as u32).collect::<Vec<u32>>()], Vec::new())
        } else {
            let (group_of, firsts) = groups(&keys, n)?;
            let mut rows_of = vec![Vec::new(); firsts.len()];
            for (row, g) in group_of.into_iter().enumerate() {
                rows_of[g].push(row as u32);
            }
            (rows_of, firsts)
        };
        let firsts = UInt32Array::from(firsts);
        let mut cols: Vec<ArrayRef> = keys
            .iter()
            .map(|k| take(k, &firsts, None).map_err(err))
            .collect::<Result<_, _>>()?;
        let arrow_in = in_schema.as_arrow();
        for (i, e) in a.aggr_expr.iter().enumerate() {
            let mut e = e;
            while let Expr::Alias(al) = e {
                e = &al.expr;
            }
            let Expr::AggregateFunction(AggregateFunction { func, params }) = e else {
                return Err(format!("{e}: not an aggregate mqlink query can evaluate"));
            };
            if params.filter.is_some() || !params.order_by.is_empty() {
                return Err(format!(
                    "{}: FILTER (WHERE …) and ORDER BY inside an aggregate are not supported by mqlink query",
                    func.name()
                ));
            }
            let exprs = params
                .args
                .iter()
                .map(|x| physical(x, in_schema, self.now))
                .collect::<Result<Vec<_>, _>>()?;
            let fields: Vec<FieldRef> = exprs
                .iter()
                .map(|x| x.return_field(arrow_in).map_err(err))
                .collect::<Result<_, _>>()?;
            let args: Vec<ArrayRef> = exprs
                .iter()
                .map(|x| {
                    x.evaluate(&input)
                        .and_then(|v| v.into_array(n))
                        .map_err(err)
                })
                .collect::<Result<_, _>>()?;
            let field = a.schema.as_arrow().field(a.group_expr.len() + i);
            let return_field: FieldRef = Arc::new(field.clone());
            let name = e.schema_name().to_string();
            let mut results = Vec::with_capacity(rows_of.len());
            for rows in &rows_of {
                let mut acc = func
                    .accumulator(AccumulatorArgs {
                        return_field: return_field.clone(),
                        schema: arrow_in,
                        ignore_nulls: matches!(
                            params.null_treatment,
                            Some(datafusion_expr::expr::NullTreatment::IgnoreNulls)
                        ),
                        order_bys: &[],
                        is_reversed: false,
                        name: &name,
                        is_distinct: params.distinct,
                        exprs: &exprs,
                        expr_fields: &fields,
                    })
                    .map_err(err)?;
                let idx = UInt32Array::from(rows.clone());
                let taken = args
                    .iter()
                    .map(|c| take(c, &idx, None).map_err(err))
                    .collect::<Result<Vec<_>, _>>()?;
                acc.update_batch(&taken).map_err(err)?;
                results.push(acc.evaluate().map_err(err)?);
            }
            cols.push(if results.is_empty() {
                datafusion_common::arrow::array::new_empty_array(field.data_type())
            } else {
                let col = ScalarValue::iter_to_array(results).map_err(err)?;
                if col.data_type() != field.data_type() {
                    cast(&col, field.data_type()).map_err(err)?
                } else {
                    col
                }
            });
        }
        let schema = Arc::new(a.schema.as_arrow().clone());
        rebuild(&schema, cols, rows_of.len())
    }
}

/// The group of each row by the values of `keys`, and the first row of
/// each group.
fn groups(keys: &[ArrayRef], n: usize) -> Result<(Vec<usize>, Vec<u32>), String> {
    if keys.is_empty() {
        // DISTINCT over no columns: one row, if there is any.
        return Ok((vec![0; n], if n > 0 { vec![0] } else { Vec::new() }));
    }
    let conv = RowConverter::new(
        keys.iter()
            .map(|k| SortField::new(k.data_type().clone()))
            .collect(),
    )
    .map_err(err)?;
    let rows = conv.convert_columns(keys).map_err(err)?;
    let mut seen = HashMap::new();
    let mut firsts = Vec::new();
    let mut group_of = Vec::with_capacity(n);
    for (i, r) in rows.iter().enumerate() {
        let g = *seen.entry(r).or_insert_with(|| {
            firsts.push(i as u32);
            firsts.len() - 1
        });
        group_of.push(g);
    }
    Ok((group_of, firsts))
}

fn take_rows(b: &RecordBatch, idx: &UInt32Array) -> Result<RecordBatch, String> {
    let cols = b
        .columns()
        .iter()
        .map(|c| take(c, idx, None).map_err(err))
        .collect::<Result<Vec<_>, _>>()?;
    rebuild(&b.schema(), cols, idx.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use mqlink::format::{ColumnType, Value};

    /// Tables shaped as a running pipeline's (a few of their columns).
    fn tables() -> Vec<SystemTable> {
        let status = |c: &str, n: &str, kind: &str, received: i64, err: Option<&str>| {
            vec![
                Value::Text(c.into()),
                Value::Text(n.into()),
                Value::Text(kind.into()),
                Value::BigInt(received),
                Value::Boolean(err.is_none()),
                err.map_or(Value::Null, |e| Value::Text(e.into())),
                Value::Text(r#"{"a": {"b": [1, 2, {"c": "deep"}]}, "n": 7}"#.into()),
            ]
        };
        let log = |t: i64, level: &str, c: Option<&str>, msg: &str| {
            vec![
                Value::Timestamp(t),
                Value::Text(level.into()),
                c.map_or(Value::Null, |c| Value::Text(c.into())),
                Value::Text(msg.into()),
            ]
        };
        vec![
            SystemTable {
                name: "system.connector_status",
                columns: vec![
                    ("connector_name", ColumnType::Text),
                    ("name", ColumnType::Text),
                    ("kind", ColumnType::Text),
                    ("messages_received", ColumnType::BigInt),
                    ("connected", ColumnType::Boolean),
                    ("last_error", ColumnType::Text),
                    ("doc", ColumnType::Json),
                ],
                rows: vec![
                    status("mqtt_source", "iot", "source", 10, None),
                    status("mqtt_source", "raw", "source", 5, Some("lost")),
                    status("file", "out", "sink", 15, None),
                    status("mqtt_sink", "up", "sink", 0, Some("refused")),
                ],
            },
            SystemTable {
                name: "system.connector_logs",
                columns: vec![
                    ("timestamp", ColumnType::Timestamp),
                    ("level", ColumnType::Text),
                    ("connector", ColumnType::Text),
                    ("message", ColumnType::Text),
                ],
                rows: (0..30)
                    .map(|i| {
                        log(
                            1_700_000_000_000_000 + i * 1_000_000,
                            ["INFO", "WARN", "ERROR"][i as usize % 3],
                            [Some("mqtt_source"), Some("file"), None][i as usize % 3 / 2],
                            &format!("event {i}"),
                        )
                    })
                    .collect(),
            },
        ]
    }

    fn rows(sql: &str) -> Vec<Vec<serde_json::Value>> {
        let b = query(sql, &tables()).unwrap_or_else(|e| panic!("{sql}: {e}"));
        serde_json::from_value(to_json(&b)["rows"].clone()).unwrap()
    }

    fn error(sql: &str) -> String {
        query(sql, &tables()).unwrap_err()
    }

    /// A query nested deeper than the planner takes is an error, not an
    /// abort of the process (/query serves it on a runtime thread).
    #[test]
    fn deep_queries_are_errors() {
        for n in [1_000, 20_000] {
            let plus = format!("SELECT {} AS x", vec!["1"; n].join(" + "));
            assert!(error(&plus).contains("plans at most 256"), "{n}");
            let union = vec!["SELECT 1 AS x"; n].join(" UNION ALL ");
            assert!(error(&union).contains("plans at most 256"), "{n}");
        }
        assert_eq!(
            rows(&format!("SELECT {} AS x", vec!["1"; 100].join(" + ")))[0][0],
            100
        );
    }

    #[test]
    fn the_reference_queries_as_written() {
        let b = query(
            "SELECT * FROM system.connector_status\nWHERE connector_name = 'mqtt_source';",
            &tables(),
        )
        .unwrap();
        let j = to_json(&b);
        assert_eq!(
            j["columns"],
            serde_json::json!([
                "connector_name",
                "name",
                "kind",
                "messages_received",
                "connected",
                "last_error",
                "doc"
            ])
        );
        assert_eq!(j["rows"][0][1], "iot");
        assert_eq!(j["rows"][1][5], "lost");
        assert_eq!(j["rows"].as_array().unwrap().len(), 2);
        // ERROR rows are i % 3 == 2; mqtt_source ones are i % 3 / 2 == 0: none.
        let r = rows(
            "SELECT * FROM system.connector_logs
WHERE connector = 'mqtt_source'
AND level = 'ERROR'
ORDER BY timestamp DESC
LIMIT 10;",
        );
        assert!(r.is_empty());
        let r = rows(
            "SELECT message, timestamp FROM system.connector_logs WHERE level = 'ERROR' ORDER BY timestamp DESC LIMIT 3",
        );
        let msgs: Vec<&str> = r.iter().map(|r| r[0].as_str().unwrap()).collect();
        assert_eq!(msgs, ["event 29", "event 26", "event 23"]);
        assert_eq!(r[0][1], "2023-11-14T22:13:49.000000Z");
    }

    #[test]
    fn where_order_limit_offset_distinct() {
        assert_eq!(
            rows("SELECT name FROM system.connector_status WHERE messages_received > 4 AND connected ORDER BY messages_received DESC"),
            vec![vec![serde_json::json!("out")], vec![serde_json::json!("iot")]]
        );
        assert_eq!(
            rows("SELECT name FROM connector_status ORDER BY name LIMIT 2 OFFSET 1"),
            vec![
                vec![serde_json::json!("out")],
                vec![serde_json::json!("raw")]
            ]
        );
        // NULLs last ascending (DataFusion's default: NULLS LAST for ASC).
        assert_eq!(
            rows("SELECT last_error FROM system.connector_status ORDER BY last_error"),
            [
                json("lost"),
                json("refused"),
                serde_json::Value::Null,
                serde_json::Value::Null
            ]
            .into_iter()
            .map(|v| vec![v])
            .collect::<Vec<_>>()
        );
        assert_eq!(
            rows("SELECT DISTINCT kind FROM system.connector_status ORDER BY kind").len(),
            2
        );
        assert_eq!(
            rows("SELECT 1 + 1 AS two"),
            vec![vec![serde_json::json!(2)]]
        );
        assert_eq!(
            rows("SELECT name FROM system.connector_status WHERE kind = 'sink' UNION ALL SELECT 'x' ORDER BY 1").len(),
            3
        );
        assert!(rows("SELECT * FROM system.connector_logs LIMIT 0").is_empty());
        assert_eq!(
            rows("SELECT count(*) FROM system.connector_logs WHERE timestamp > NOW() - INTERVAL '1 minute'"),
            vec![vec![serde_json::json!(0)]]
        );
    }

    fn json(s: &str) -> serde_json::Value {
        serde_json::json!(s)
    }

    #[test]
    fn aggregates_and_group_by() {
        assert_eq!(
            rows("SELECT kind, COUNT(*) AS n, SUM(messages_received) AS total, MIN(name), MAX(name), AVG(messages_received) FROM system.connector_status GROUP BY kind ORDER BY kind"),
            vec![
                vec![json("sink"), 2.into(), 15.into(), json("out"), json("up"), 7.5.into()],
                vec![json("source"), 2.into(), 15.into(), json("iot"), json("raw"), 7.5.into()],
            ]
        );
        assert_eq!(
            rows("SELECT level, COUNT(*) AS n FROM system.connector_logs GROUP BY level HAVING COUNT(*) >= 10 ORDER BY n DESC, level"),
            vec![
                vec![json("ERROR"), 10.into()],
                vec![json("INFO"), 10.into()],
                vec![json("WARN"), 10.into()],
            ]
        );
        // No group: one row, also over no rows.
        assert_eq!(
            rows("SELECT COUNT(*), SUM(messages_received), MAX(name) FROM system.connector_status WHERE name = 'nope'"),
            vec![vec![0.into(), serde_json::Value::Null, serde_json::Value::Null]]
        );
        assert!(rows(
            "SELECT kind, COUNT(*) FROM system.connector_status WHERE name = 'nope' GROUP BY kind"
        )
        .is_empty());
        assert_eq!(
            rows("SELECT COUNT(DISTINCT kind), COUNT(last_error) FROM system.connector_status"),
            vec![vec![serde_json::json!(2), serde_json::json!(2)]]
        );
        // The reference's rate query, on the logs.
        assert_eq!(
            rows("SELECT COUNT(*) as messages_per_minute, MIN(timestamp) as window_start, MAX(timestamp) as window_end FROM system.connector_logs WHERE level = 'WARN'")[0][0],
            serde_json::json!(10)
        );
    }

    #[test]
    fn json_access_in_queries() {
        assert_eq!(
            rows("SELECT doc -> 'a' -> 'b' -> 2 ->> 'c' AS c, doc ->> 'n' AS n, json_get_int(doc, 'n') + 1 AS m, json_length(doc, 'a', 'b') AS l, json_contains(doc, 'x') AS x, doc -> 'a' -> 'b' AS arr, json_get_str(name, 'x') AS bad FROM system.connector_status LIMIT 1"),
            vec![vec![
                json("deep"),
                json("7"),
                8.into(),
                3.into(),
                false.into(),
                // json_get's result is JSON: a list, not its text.
                serde_json::json!([1, 2, {"c": "deep"}]),
                serde_json::Value::Null,
            ]]
        );
        let b = query(
            "SELECT doc -> 'n' FROM system.connector_status LIMIT 1",
            &tables(),
        )
        .unwrap();
        assert_eq!(b.schema().field(0).name(), "doc -> 'n'");
        assert!(
            error("SELECT json_get(1.5, 'a') FROM system.connector_status").contains("json_get")
        );
    }

    #[test]
    fn errors_name_the_problem() {
        let e = error("SELECT * FROM iot_telemetry");
        assert!(
            e.contains("no table named iot_telemetry") && e.contains("system.connector_logs"),
            "{e}"
        );
        let e = error("SELECT nope FROM system.connector_status");
        assert!(e.contains("nope"), "{e}");
        assert!(error("SELEC 1").starts_with("syntax: "));
        assert!(error("DROP TABLE x").contains("only SELECT"));
        assert!(error("SELECT 1; SELECT 2").contains("one query"));
        let e = error("SELECT a.name FROM system.connector_status a JOIN system.connector_logs b ON a.name = b.message");
        assert!(e.contains("JOIN"), "{e}");
        let e =
            error("SELECT name, row_number() OVER (ORDER BY name) FROM system.connector_status");
        assert!(!e.is_empty());
        // A pipeline file still refuses system tables, pointing here.
        let mut c = Catalog::default();
        c.add_table("t", schema_of(vec![]));
        let q =
            Parser::parse_sql(&GenericDialect {}, "SELECT * FROM system.connector_status").unwrap();
        let Statement::Query(q) = &q[0] else { panic!() };
        let e = c.plan(q).unwrap_err();
        assert!(e.contains("mqlink query"), "{e}");
    }

    /// A source table read by a query keeps its last rows for queries
    /// (the reference's rate query), bounded.
    #[test]
    fn recent_rows_of_a_source_table() {
        use mqlink_pipeline::batch::Item;
        let _ = handler();
        let p = crate::parse(
            "CREATE TABLE recent_unit_t (id BIGINT, ts TIMESTAMP) WITH (connector = 'mqtt', type = 'source', url = 'tcp://h:1883', topic = 'a');
             CREATE TABLE f WITH (connector = 'file', path = 'x.jsonl');
             INSERT INTO f SELECT id FROM recent_unit_t WHERE id > 100;",
            &|_| None,
        )
        .unwrap();
        let mut stage = p.transforms["recent_unit_t"].make();
        let now = crate::stage::wall_clock().timestamp_micros();
        for chunk in 0..3 {
            let items = (chunk * 5000..(chunk + 1) * 5000)
                .map(|id| Item {
                    topic: Some("a".into()),
                    origin: None,
                    payload: bytes::Bytes::new(),
                    value: Value::Row(vec![
                        ("id".into(), Value::BigInt(id)),
                        // The last ten are from now, the others two minutes old.
                        (
                            "ts".into(),
                            Value::Timestamp(if id >= 14_990 { now } else { now - 120_000_000 }),
                        ),
                    ]),
                })
                .collect();
            stage.apply(items, tokio::time::Instant::now());
        }
        assert_eq!(
            rows("SELECT COUNT(*), MIN(id), MAX(id) FROM recent_unit_t"),
            vec![vec![
                serde_json::json!(RECENT_ROWS),
                5000.into(),
                14_999.into()
            ]]
        );
        let r = rows(
            "SELECT
    COUNT(*) as messages_per_minute,
    MIN(ts) as window_start,
    MAX(ts) as window_end
FROM recent_unit_t
WHERE ts > NOW() - INTERVAL '1 minute';",
        );
        assert_eq!(r[0][0], serde_json::json!(10));
        assert_eq!(r[0][1], r[0][2]);
    }

    /// Query text is user input: no mutation of a valid query panics (or hangs).
    #[test]
    fn mutated_queries_never_panic() {
        let bases = [
            "SELECT kind, COUNT(*) AS n, AVG(messages_received) FROM system.connector_status WHERE connected GROUP BY kind HAVING COUNT(*) > 0 ORDER BY n DESC LIMIT 3",
            "SELECT * FROM system.connector_logs WHERE connector = 'mqtt_source' AND level = 'ERROR' ORDER BY timestamp DESC LIMIT 10;",
            "SELECT doc -> 'a' -> 'b' -> 2 ->> 'c', json_get_float(doc, 'n'), json_length(doc) FROM system.connector_status",
        ];
        let alphabet = b"()',;=.\"-_> \n0123456789abcxyzSELECTFROMWHERE*+/%<";
        let mut rng = fastrand::Rng::with_seed(12);
        let t = tables();
        for i in 0..600 {
            let sql = testkit::mutate(&mut rng, bases[i % bases.len()], alphabet, 1..5);
            let r = std::panic::catch_unwind(|| query(&sql, &t));
            assert!(r.is_ok(), "panicked on {sql:?}");
        }
    }
}
