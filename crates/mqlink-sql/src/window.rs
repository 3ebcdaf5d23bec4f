//! Windowed aggregates over event time: the window functions DataFusion
//! plans (`TUMBLE`, `HOP` in Arroyo's and Flink's forms), and the lowering
//! of `Projection/Filter → Aggregate → (stateless part)` into pre-steps
//! (the source's filters and projections), an aggregate spec and
//! post-steps (`HAVING`, the final projection) run over the aggregate's
//! output when a window closes ([`crate::aggregate`]).
//!
//! - Arroyo: `SELECT TUMBLE(INTERVAL '1 minute') AS window, … GROUP BY
//!   window` (and `HOP(slide, width)`): the event time is the table's
//!   `WATERMARK FOR` column, else the arrival time.
//! - Flink: `GROUP BY TUMBLE(ts, INTERVAL '1' MINUTE)` with `TUMBLE_START`
//!   / `TUMBLE_END` (and `HOP(ts, slide, width)`, `HOP_START`, `HOP_END`):
//!   the event time is `ts`. `TUMBLE_START(ts, i)` is rewritten, before
//!   planning, to `window_start(TUMBLE(ts, i))`, so that it is an
//!   expression of the group key (DataFusion refuses `ts` itself there).
//! - Window TVFs: Flink's `FROM TABLE(TUMBLE(TABLE t, DESCRIPTOR(ts), …))`
//!   and RisingWave's `FROM TUMBLE(t, ts, …)` (`HOP` with slide, then
//!   size), grouped by `window_start`, `window_end`: rewritten into
//!   Flink's group window (`tvf`).
//!
//! A window is a struct `{start, end}`; sinks get it as two columns
//! `<name>_start` and `<name>_end` (timestamps), so a PostgreSQL sink can
//! key its rows on the window.

use std::ops::ControlFlow;
use std::sync::Arc;

use datafusion_common::arrow::array::{Array, ArrayRef, AsArray, StructArray};
use datafusion_common::arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};
use datafusion_common::tree_node::TreeNode;
use datafusion_common::{DFSchema, ScalarValue};
use datafusion_expr::{
    ColumnarValue, Expr, ExprSchemable, LogicalPlan, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl,
    Signature, Volatility,
};
use datafusion_sql::sqlparser::ast::{
    visit_expressions, visit_expressions_mut, Expr as SqlExpr, Function, FunctionArg,
    FunctionArgExpr, FunctionArgumentList, FunctionArguments, GroupByExpr, Ident, ObjectName,
    Query, Select, SelectItem, SetExpr, TableAlias, TableFactor, VisitMut, VisitorMut,
};

use datafusion_sql::planner::{PlannerContext, SqlToRel};
use datafusion_sql::sqlparser::ast::BinaryOperator;

use crate::plan::{branches, scan_steps, Branch, Catalog, Step};

/// The fields of a window: `start`, `end`.
pub fn window_fields() -> Fields {
    let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    Fields::from(vec![
        Field::new("start", ts.clone(), true),
        Field::new("end", ts, true),
    ])
}

/// The type of a window: `{start, end}`.
pub fn window_type() -> DataType {
    DataType::Struct(window_fields())
}

/// `tumble`, `hop`: planned as group keys, never evaluated (a window is
/// the aggregate's to compute); `window_start`, `window_end`: a field of
/// a window.
#[derive(Debug, PartialEq, Eq, Hash)]
struct WindowFn {
    name: &'static str,
    signature: Signature,
}

impl ScalarUDFImpl for WindowFn {
    fn name(&self) -> &str {
        self.name
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _args: &[DataType]) -> datafusion_common::Result<DataType> {
        Ok(match self.name {
            "window_start" | "window_end" => {
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
            }
            _ => window_type(),
        })
    }
    fn invoke_with_args(
        &self,
        args: ScalarFunctionArgs,
    ) -> datafusion_common::Result<ColumnarValue> {
        let field = match self.name {
            "window_start" => "start",
            "window_end" => "end",
            other => {
                return datafusion_common::plan_err!(
                    "{}(…) is a window of a GROUP BY, not a value",
                    other.to_ascii_uppercase()
                )
            }
        };
        let a = match args.args.first() {
            Some(ColumnarValue::Array(a)) => a.clone(),
            Some(ColumnarValue::Scalar(s)) => s.to_array()?,
            None => return datafusion_common::plan_err!("{}(window) needs its window", self.name),
        };
        match a
            .as_struct_opt()
            .and_then(|s: &StructArray| s.column_by_name(field))
        {
            Some(c) => Ok(ColumnarValue::Array(c.clone())),
            None => datafusion_common::plan_err!("{}: the argument is not a window", self.name),
        }
    }
}

/// The window functions, for the catalog.
pub fn functions() -> Vec<Arc<ScalarUDF>> {
    ["tumble", "hop", "window_start", "window_end"]
        .into_iter()
        .map(|name| {
            Arc::new(ScalarUDF::new_from_impl(WindowFn {
                name,
                // Volatile: never folded into a constant by the simplifier.
                signature: Signature::variadic_any(Volatility::Volatile),
            }))
        })
        .collect()
}

/// Flink's `TUMBLE_START(ts, i)` → `window_start(TUMBLE(ts, i))` (and the
/// `_END`, `HOP_` forms); Arroyo's `window.start` of a select item
/// `TUMBLE(…) AS window` → `window_start(TUMBLE(…))`; the window TVFs
/// (`tvf`) → Flink's group window; in place. Errors name what is not
/// supported.
pub fn rewrite(query: &mut Query) -> Result<(), String> {
    if let ControlFlow::Break(e) = VisitMut::visit(query, &mut Tvfs) {
        return Err(e);
    }
    fields(query);
    let _ = visit_expressions_mut(query, |e| {
        if let SqlExpr::Function(f) = e {
            let name = f.name.to_string().to_ascii_lowercase();
            let (window, field) = match name.as_str() {
                "tumble_start" => ("tumble", "window_start"),
                "tumble_end" => ("tumble", "window_end"),
                "hop_start" => ("hop", "window_start"),
                "hop_end" => ("hop", "window_end"),
                _ => return ControlFlow::<()>::Continue(()),
            };
            let mut inner = f.clone();
            inner.name = ObjectName::from(vec![Ident::new(window)]);
            *f = call(f, field, SqlExpr::Function(inner));
        }
        ControlFlow::Continue(())
    });
    Ok(())
}

/// `name(arg)`, the other parts of the call as in `like`.
fn call(like: &Function, name: &str, arg: SqlExpr) -> Function {
    let mut f = like.clone();
    f.name = ObjectName::from(vec![Ident::new(name)]);
    f.args = FunctionArguments::List(FunctionArgumentList {
        duplicate_treatment: None,
        args: vec![FunctionArg::Unnamed(FunctionArgExpr::Expr(arg))],
        clauses: Vec::new(),
    });
    f
}

/// `alias.start` / `alias.end` of a window in the select list and HAVING
/// of a query's SELECT.
fn fields(query: &mut Query) {
    let SetExpr::Select(select) = query.body.as_mut() else {
        return;
    };
    let windows: Vec<(String, Function)> = select
        .projection
        .iter()
        .filter_map(|item| match item {
            SelectItem::ExprWithAlias {
                expr: SqlExpr::Function(f),
                alias,
            } if matches!(
                f.name.to_string().to_ascii_lowercase().as_str(),
                "tumble" | "hop"
            ) =>
            {
                Some((alias.value.clone(), f.clone()))
            }
            _ => None,
        })
        .collect();
    if windows.is_empty() {
        return;
    }
    let mut replace = |e: &mut SqlExpr| {
        if let SqlExpr::CompoundIdentifier(parts) = e {
            if let [a, field] = parts.as_slice() {
                let name = match field.value.to_ascii_lowercase().as_str() {
                    "start" => "window_start",
                    "end" => "window_end",
                    _ => return ControlFlow::<()>::Continue(()),
                };
                if let Some((_, w)) = windows.iter().find(|(n, _)| *n == a.value) {
                    *e = SqlExpr::Function(call(w, name, SqlExpr::Function(w.clone())));
                }
            }
        }
        ControlFlow::Continue(())
    };
    for item in &mut select.projection {
        let _ = visit_expressions_mut(item, &mut replace);
    }
    if let Some(h) = &mut select.having {
        let _ = visit_expressions_mut(h, &mut replace);
    }
}

/// The window table-valued functions, by name; `CUMULATE` and `SESSION`
/// are refused by name.
pub const TVFS: &[&str] = &["tumble", "hop", "cumulate", "session"];

/// Rewrites every SELECT reading a window TVF (`tvf`).
struct Tvfs;

impl VisitorMut for Tvfs {
    type Break = String;
    fn post_visit_select(&mut self, select: &mut Select) -> ControlFlow<String> {
        match tvf(select) {
            Ok(()) => ControlFlow::Continue(()),
            Err(e) => ControlFlow::Break(e),
        }
    }
}

/// A window TVF of a FROM clause, read.
struct Tvf {
    /// The table (or view) it windows.
    table: ObjectName,
    alias: Option<TableAlias>,
    /// `TUMBLE(ts, size)` or `HOP(ts, slide, size)`: Flink's group window.
    window: Function,
}

/// Flink's `FROM TABLE(TUMBLE(TABLE t, DESCRIPTOR(ts), size))` and
/// RisingWave's `FROM TUMBLE(t, ts, size)` (`HOP` with slide, then size)
/// → `FROM t … GROUP BY TUMBLE(ts, size)`, its `window_start` /
/// `window_end` → `window_start(TUMBLE(ts, size))` (named `window_start`
/// in the select list). Their rows are windows only through a GROUP BY of
/// `window_start`/`window_end`: a query without one is refused.
fn tvf(select: &mut Select) -> Result<(), String> {
    let tables = select.from.len();
    let mut found = None;
    for (i, from) in select.from.iter().enumerate() {
        let joined = tables > 1 || !from.joins.is_empty();
        let here = read_tvf(&from.relation)?;
        for j in &from.joins {
            if let Some(t) = read_tvf(&j.relation)? {
                return Err(joined_tvf(&t));
            }
        }
        match here {
            Some(t) if joined => return Err(joined_tvf(&t)),
            Some(t) => found = Some((i, t)),
            None => {}
        }
    }
    let Some((i, t)) = found else {
        return Ok(());
    };
    let usage = format!(
        "{} … GROUP BY window_start, window_end, …",
        t.window.name.to_string().to_ascii_uppercase()
    );
    // `w.window_start` of `TABLE(TUMBLE(…)) AS w` (or of the table itself).
    let qualifier = t
        .alias
        .as_ref()
        .map_or_else(|| t.table.to_string(), |a| a.name.value.clone());
    let field = |e: &SqlExpr| -> Option<String> {
        let name = match e {
            SqlExpr::Identifier(i) => &i.value,
            SqlExpr::CompoundIdentifier(parts) => match parts.as_slice() {
                [q, i] if q.value == qualifier => &i.value,
                _ => return None,
            },
            _ => return None,
        };
        let name = name.to_ascii_lowercase();
        matches!(name.as_str(), "window_start" | "window_end" | "window_time").then_some(name)
    };
    if let Some(w) = &select.selection {
        let mut used = None;
        let _ = visit_expressions(w, |e| {
            used = field(e);
            if used.is_some() {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        });
        if let Some(name) = used {
            return Err(format!("{name} in WHERE: a row's window is the aggregate's; filter windows in HAVING ({usage})"));
        }
    }
    let GroupByExpr::Expressions(keys, modifiers) = &select.group_by else {
        return Err(format!(
            "GROUP BY ALL over a window TVF: not supported; write {usage}"
        ));
    };
    if !modifiers.is_empty() {
        return Err(
            "GROUP BY … WITH ROLLUP/CUBE/TOTALS: not supported in a streaming query".into(),
        );
    }
    let mut grouped = Vec::new();
    let mut window = false;
    for k in keys {
        match field(k) {
            Some(name) if name == "window_time" => return Err(window_time()),
            Some(_) if window => {}
            Some(_) => {
                window = true;
                grouped.push(SqlExpr::Function(t.window.clone()));
            }
            None => grouped.push(k.clone()),
        }
    }
    if !window {
        return Err(format!(
            "a window TVF is an aggregate's windows: group its rows by window_start, window_end ({usage}); rows of a TVF without GROUP BY window_start, window_end are not supported"
        ));
    }
    select.group_by = GroupByExpr::Expressions(grouped, Vec::new());
    // Columns of the window → fields of the group key.
    let mut error = None;
    let mut replace = |e: &mut SqlExpr| {
        match field(e).as_deref() {
            Some("window_time") => error = Some(window_time()),
            Some(name) => {
                *e = SqlExpr::Function(call(&t.window, name, SqlExpr::Function(t.window.clone())))
            }
            None => {}
        }
        ControlFlow::<()>::Continue(())
    };
    for item in &mut select.projection {
        // A bare `window_start` keeps its name.
        if let SelectItem::UnnamedExpr(e) = item {
            if let Some(name) = field(e) {
                *item = SelectItem::ExprWithAlias {
                    expr: e.clone(),
                    alias: Ident::new(name),
                };
            }
        }
        let _ = visit_expressions_mut(item, &mut replace);
    }
    if let Some(h) = &mut select.having {
        let _ = visit_expressions_mut(h, &mut replace);
    }
    if let Some(e) = error {
        return Err(e);
    }
    select.from[i].relation = TableFactor::Table {
        name: t.table,
        alias: t.alias,
        args: None,
        with_hints: Vec::new(),
        version: None,
        with_ordinality: false,
        partitions: Vec::new(),
        json_path: None,
        sample: None,
        index_hints: Vec::new(),
    };
    Ok(())
}

fn window_time() -> String {
    "window_time (Flink's time attribute of a window): not supported; use window_end".into()
}

fn joined_tvf(t: &Tvf) -> String {
    format!(
        "{}(TABLE {}, …) joined with another table: a window TVF over a join is not supported (a window TVF reads one table or view)",
        t.window.name.to_string().to_ascii_uppercase(),
        t.table
    )
}

/// The window TVF a FROM item calls, if any.
fn read_tvf(relation: &TableFactor) -> Result<Option<Tvf>, String> {
    let (name, args, alias) = match relation {
        TableFactor::TableFunction {
            expr: SqlExpr::Function(f),
            alias,
        } => {
            let args = match &f.args {
                FunctionArguments::List(l) => l.args.as_slice(),
                _ => &[],
            };
            (&f.name, args, alias)
        }
        TableFactor::Table {
            name,
            args: Some(args),
            alias,
            ..
        } => (name, args.args.as_slice(), alias),
        _ => return Ok(None),
    };
    let lower = name.to_string().to_ascii_lowercase();
    let upper = lower.to_ascii_uppercase();
    let params: &[&str] = match lower.as_str() {
        "tumble" => &["data", "timecol", "size", "offset"],
        "hop" => &["data", "timecol", "slide", "size", "offset"],
        "cumulate" | "session" => {
            return Err(format!(
                "{upper}: this window TVF is not supported (TUMBLE and HOP are)"
            ))
        }
        _ => return Ok(None),
    };
    let usage = if lower == "tumble" {
        "TABLE(TUMBLE(TABLE t, DESCRIPTOR(ts), INTERVAL '1' MINUTE)) or TUMBLE(t, ts, INTERVAL '1 minute')"
    } else {
        "TABLE(HOP(TABLE t, DESCRIPTOR(ts), slide, size)) or HOP(t, ts, slide, size)"
    };
    let mut given: Vec<Option<&SqlExpr>> = vec![None; params.len()];
    for (k, a) in args.iter().enumerate() {
        let (at, e) = match a {
            FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => (k, e),
            FunctionArg::Named {
                name,
                arg: FunctionArgExpr::Expr(e),
                ..
            } => match params
                .iter()
                .position(|p| name.value.eq_ignore_ascii_case(p))
            {
                Some(at) => (at, e),
                None => {
                    return Err(format!(
                        "{upper}: no argument named {} ({} are); write {usage}",
                        name.value,
                        params.join(", ").to_ascii_uppercase()
                    ))
                }
            },
            other => return Err(format!("{upper}({other}): write {usage}")),
        };
        match given.get_mut(at) {
            Some(slot @ None) => *slot = Some(e),
            Some(Some(_)) => {
                return Err(format!(
                    "{upper}: {} is given twice",
                    params[at].to_ascii_uppercase()
                ))
            }
            None => {
                return Err(format!(
                    "{upper} takes {} arguments; write {usage}",
                    params.len() - 1
                ))
            }
        }
    }
    if given[params.len() - 1].is_some() {
        return Err(format!(
            "{upper}: an OFFSET (windows not aligned to the epoch) is not supported"
        ));
    }
    let mut need = Vec::new();
    for (p, g) in params[..params.len() - 1].iter().zip(&given) {
        match g {
            Some(e) => need.push(*e),
            None => {
                return Err(format!(
                    "{upper}: {} is missing; write {usage}",
                    p.to_ascii_uppercase()
                ))
            }
        }
    }
    let table = match need[0] {
        SqlExpr::Identifier(i) => ObjectName::from(vec![i.clone()]),
        SqlExpr::CompoundIdentifier(parts) => ObjectName::from(parts.clone()),
        other => {
            return Err(format!(
                "{upper}({other}, …): a window TVF over a subquery is not supported; name a table or a view (CREATE VIEW)"
            ))
        }
    };
    // Flink's `DESCRIPTOR(ts)`, RisingWave's `ts`.
    let time = match need[1] {
        SqlExpr::Function(f) if f.name.to_string().eq_ignore_ascii_case("descriptor") => {
            match &f.args {
                FunctionArguments::List(l) if l.args.len() == 1 => match &l.args[0] {
                    FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => e.clone(),
                    other => {
                        return Err(format!(
                            "{upper}: DESCRIPTOR({other}): name the time column"
                        ))
                    }
                },
                _ => {
                    return Err(format!(
                        "{upper}: DESCRIPTOR takes one column, the event time"
                    ))
                }
            }
        }
        e => e.clone(),
    };
    let mut window_args = vec![time];
    window_args.extend(need[2..].iter().map(|e| (*e).clone()));
    let window = Function {
        name: ObjectName::from(vec![Ident::new(upper.as_str())]),
        uses_odbc_syntax: false,
        parameters: FunctionArguments::None,
        args: FunctionArguments::List(FunctionArgumentList {
            duplicate_treatment: None,
            args: window_args
                .into_iter()
                .map(|e| FunctionArg::Unnamed(FunctionArgExpr::Expr(e)))
                .collect(),
            clauses: Vec::new(),
        }),
        filter: None,
        null_treatment: None,
        over: None,
        within_group: Vec::new(),
    };
    Ok(Some(Tvf {
        table,
        alias: alias.clone(),
        window,
    }))
}

/// Where a window's rows are assigned.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Windows {
    /// Microseconds.
    pub slide: i64,
    pub width: i64,
}

/// More windows per row than this is refused (`HOP` with a tiny slide).
pub const MAX_WINDOWS_PER_ROW: i64 = 1000;

impl Windows {
    /// The starts of the windows holding `t`, earliest first.
    pub fn starts(&self, t: i64) -> impl Iterator<Item = i64> {
        // Saturating: an event time near the ends of i64 (a payload's
        // number) must not overflow.
        let last = t.div_euclid(self.slide).saturating_mul(self.slide);
        let back = (self.width - 1).div_euclid(self.slide) * self.slide;
        let first = last.saturating_sub(back);
        let (slide, width) = (self.slide, self.width);
        (0..=back / slide)
            .map(move |k| first.saturating_add(k * slide))
            .filter(move |s| *s <= last && t < s.saturating_add(width))
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AggKind {
    Count,
    Sum,
    Avg,
    Min,
    Max,
}

/// One aggregate of the query: its function and argument (over the
/// aggregate's input).
#[derive(Debug, Clone)]
pub struct AggFn {
    pub kind: AggKind,
    pub arg: Expr,
}

/// A windowed aggregate, lowered.
#[derive(Debug, Clone)]
pub struct Windowed {
    /// The one source table's filters and projections before it.
    pub pre: Branch,
    /// The aggregate's input rows.
    pub input: Arc<DFSchema>,
    pub windows: Windows,
    /// Flink's form: the event time, over the input; Arroyo's: none (the
    /// table's WATERMARK column, or the arrival time).
    pub time: Option<Expr>,
    /// Position of the window among the aggregate's group columns.
    pub window_at: usize,
    /// The other group keys, over the input, in their order.
    pub keys: Vec<Expr>,
    pub aggs: Vec<AggFn>,
    /// The aggregate's output: group columns, then the aggregates.
    pub output: Arc<DFSchema>,
    /// HAVING and the final projection, over the output.
    pub post: Vec<Step>,
    /// What the query gives its sinks (windows as two columns).
    pub out: SchemaRef,
    /// The plan's text: a state file of another query is not restored.
    pub fingerprint: String,
}

/// What a query lowers to.
pub enum Lowered {
    Stateless(Vec<Branch>),
    Windowed(Box<Windowed>),
}

/// Lowers a planned query: a windowed aggregate on top, or stateless
/// programs (which refuse aggregates inside, by name).
pub fn lower(plan: &LogicalPlan) -> Result<Lowered, String> {
    let mut post = Vec::new();
    let Some(agg) = split(plan, &mut post)? else {
        return branches(plan).map(Lowered::Stateless);
    };
    let datafusion_expr::logical_plan::Aggregate {
        input,
        group_expr,
        aggr_expr,
        schema,
        ..
    } = agg;
    let mut window = None;
    let mut keys = Vec::new();
    for (i, g) in group_expr.iter().enumerate() {
        if let Expr::GroupingSet(_) = g {
            return Err("GROUPING SETS, ROLLUP, CUBE: not supported in a streaming query".into());
        }
        match window_of(g, input.schema())? {
            Some(_) if window.is_some() => {
                return Err("GROUP BY has two windows (TUMBLE/HOP); a query has one".into());
            }
            Some(w) => window = Some((i, w)),
            None => keys.push(g.clone()),
        }
    }
    let Some((window_at, (windows, time))) = window else {
        return Err("an aggregate (GROUP BY, COUNT, SUM, AVG, MIN, MAX) without a window is an updating result, which a stream of MQTT messages into sinks cannot express: group by a window, TUMBLE(INTERVAL '1 minute') AS window … GROUP BY window (or HOP(slide, width))".into());
    };
    let mut aggs = Vec::new();
    for a in aggr_expr {
        aggs.push(agg_fn(a)?);
    }
    let mut pre = branches(input)?;
    if pre.len() != 1 {
        let mut names: Vec<&str> = pre.iter().map(|b| b.source.as_str()).collect();
        names.dedup();
        return Err(format!(
            "a windowed aggregate reads one source table (this one reads {}: UNION ALL of windowed queries is not supported)",
            names.join(", ")
        ));
    }
    let pre = pre.remove(0);
    for e in steps_exprs(&pre.steps).chain(steps_exprs(&post)) {
        if let Some(name) = window_call(e) {
            return Err(format!(
                "{}(…) outside GROUP BY: a window is a group key (GROUP BY window)",
                name.to_ascii_uppercase()
            ));
        }
    }
    let out = flatten(&Arc::new(plan.schema().as_arrow().clone()));
    Ok(Lowered::Windowed(Box::new(Windowed {
        pre,
        input: input.schema().clone(),
        windows,
        time,
        window_at,
        keys,
        aggs,
        output: schema.clone(),
        post,
        out,
        fingerprint: plan.display_indent().to_string(),
    })))
}

/// The Aggregate under projections and filters (and views), with those
/// as steps over its output.
fn split<'p>(
    plan: &'p LogicalPlan,
    post: &mut Vec<Step>,
) -> Result<Option<&'p datafusion_expr::logical_plan::Aggregate>, String> {
    Ok(match plan {
        LogicalPlan::Aggregate(a) => Some(a),
        LogicalPlan::Projection(p) => {
            let found = split(&p.input, post)?;
            if found.is_some() {
                post.push(Step::Project(
                    p.expr.clone(),
                    p.input.schema().clone(),
                    Arc::new(p.schema.as_arrow().clone()),
                ));
            }
            found
        }
        LogicalPlan::Filter(f) => {
            let found = split(&f.input, post)?;
            if found.is_some() {
                post.push(Step::Filter(f.predicate.clone(), f.input.schema().clone()));
            }
            found
        }
        LogicalPlan::SubqueryAlias(a) => split(&a.input, post)?,
        LogicalPlan::TableScan(scan) => {
            // A view: its plan is the source's, as long as the scan.
            let Some(std::borrow::Cow::Borrowed(view)) = scan.source.get_logical_plan() else {
                return Ok(None);
            };
            let found = split(view, post)?;
            if found.is_some() {
                post.extend(scan_steps(scan)?);
            }
            found
        }
        _ => None,
    })
}

fn steps_exprs(steps: &[Step]) -> impl Iterator<Item = &Expr> {
    steps.iter().flat_map(|s| match s {
        Step::Filter(e, _) => std::slice::from_ref(e).iter(),
        Step::Project(es, _, _) => es.iter(),
        Step::Conform(_) => [].iter(),
    })
}

/// `tumble` or `hop` called somewhere in `e`.
fn window_call(e: &Expr) -> Option<&'static str> {
    let mut found = None;
    let _ = e.apply(|e| {
        if let Expr::ScalarFunction(f) = e {
            match f.name() {
                "tumble" => found = Some("tumble"),
                "hop" => found = Some("hop"),
                _ => {}
            }
        }
        Ok(if found.is_some() {
            datafusion_common::tree_node::TreeNodeRecursion::Stop
        } else {
            datafusion_common::tree_node::TreeNodeRecursion::Continue
        })
    });
    found
}

/// A group key that is a window: its sizes, and Flink's time argument.
pub(crate) fn window_of(
    g: &Expr,
    input: &DFSchema,
) -> Result<Option<(Windows, Option<Expr>)>, String> {
    let g = match g {
        Expr::Alias(a) => a.expr.as_ref(),
        g => g,
    };
    let Expr::ScalarFunction(f) = g else {
        return Ok(None);
    };
    let name = f.name();
    let sizes = match name {
        "tumble" => 1,
        "hop" => 2,
        _ => return Ok(None),
    };
    let upper = name.to_ascii_uppercase();
    let usage = if sizes == 1 {
        "TUMBLE(INTERVAL '1 minute') or TUMBLE(ts, INTERVAL '1' MINUTE)"
    } else {
        "HOP(INTERVAL '10 seconds', INTERVAL '1 minute') (slide, width) or HOP(ts, slide, width)"
    };
    let args = &f.args;
    let (time, sizes) = if args.len() == sizes {
        (None, &args[..])
    } else if args.len() == sizes + 1 {
        let t = &args[0];
        let ty = t.get_type(input).map_err(|e| format!("{upper}: {e}"))?;
        if !matches!(ty, DataType::Timestamp(..)) {
            return Err(format!(
                "{upper}({t}, …): the event time must be a TIMESTAMP, not {ty}"
            ));
        }
        (Some(t.clone()), &args[1..])
    } else {
        return Err(format!("{upper} takes {usage}"));
    };
    let mut us = Vec::new();
    for a in sizes {
        us.push(interval_us(a).map_err(|m| format!("{upper}: {m}; write {usage}"))?);
    }
    let windows = match us[..] {
        [w] => Windows { slide: w, width: w },
        [slide, width] => Windows { slide, width },
        _ => return Err(format!("{upper} takes {usage}")),
    };
    if windows.width < windows.slide {
        return Err(format!(
            "HOP: the width ({} s) is smaller than the slide ({} s): rows between windows would be lost",
            windows.width as f64 / 1e6,
            windows.slide as f64 / 1e6
        ));
    }
    if windows.width / windows.slide > MAX_WINDOWS_PER_ROW {
        return Err(format!(
            "HOP: a row would be in {} windows (width / slide); at most {MAX_WINDOWS_PER_ROW}",
            windows.width / windows.slide
        ));
    }
    Ok(Some((windows, time)))
}

/// A positive interval literal in microseconds (months vary in length).
pub fn interval_us(e: &Expr) -> Result<i64, String> {
    let e = match e {
        Expr::Cast(c) => c.expr.as_ref(),
        e => e,
    };
    let us = match e {
        Expr::Literal(ScalarValue::IntervalMonthDayNano(Some(v)), _) => {
            if v.months != 0 {
                return Err(format!("{e}: months and years have no fixed length"));
            }
            i64::from(v.days)
                .checked_mul(86_400_000_000)
                .and_then(|d| d.checked_add(v.nanoseconds / 1000))
        }
        Expr::Literal(ScalarValue::IntervalDayTime(Some(v)), _) => i64::from(v.days)
            .checked_mul(86_400_000_000)
            .and_then(|d| d.checked_add(i64::from(v.milliseconds) * 1000)),
        Expr::Literal(ScalarValue::IntervalYearMonth(Some(_)), _) => {
            return Err(format!("{e}: months and years have no fixed length"))
        }
        other => return Err(format!("{other} is not an interval literal")),
    };
    match us {
        Some(us) if us > 0 => Ok(us),
        Some(_) => Err(format!("{e}: the interval must be positive")),
        None => Err(format!("{e}: too long (at most 106,751,991 days)")),
    }
}

/// The delay of `WATERMARK FOR ts AS ts - INTERVAL '5 seconds'` (µs), 0
/// for `AS ts`.
pub fn watermark_delay(catalog: &Catalog, column: &str, e: &SqlExpr) -> Result<i64, String> {
    let is_column = |e: &SqlExpr| matches!(e, SqlExpr::Identifier(i) if i.value == column);
    match e {
        e if is_column(e) => Ok(0),
        SqlExpr::Nested(inner) => watermark_delay(catalog, column, inner),
        SqlExpr::BinaryOp {
            left,
            op: BinaryOperator::Minus,
            right,
        } if is_column(left) => {
            let x = SqlToRel::new(catalog)
                .sql_to_expr((**right).clone(), &DFSchema::empty(), &mut PlannerContext::new())
                .map_err(|e| e.to_string())?;
            interval_us(&x)
        }
        other => Err(format!(
            "{other}: write {column} - INTERVAL '5 seconds' (the event time minus how late a row may arrive) or {column}"
        )),
    }
}

fn agg_fn(e: &Expr) -> Result<AggFn, String> {
    let inner = match e {
        Expr::Alias(a) => a.expr.as_ref(),
        e => e,
    };
    let Expr::AggregateFunction(f) = inner else {
        return Err(format!("{e}: not an aggregate"));
    };
    let name = f.func.name().to_ascii_lowercase();
    let kind = match name.as_str() {
        "count" => AggKind::Count,
        "sum" => AggKind::Sum,
        "avg" | "mean" => AggKind::Avg,
        "min" => AggKind::Min,
        "max" => AggKind::Max,
        _ => {
            return Err(format!(
                "{}: not supported in a window (COUNT, SUM, AVG, MIN, MAX are)",
                name.to_ascii_uppercase()
            ))
        }
    };
    let p = &f.params;
    let upper = name.to_ascii_uppercase();
    if p.distinct {
        return Err(format!("{upper}(DISTINCT …): not supported in a window"));
    }
    if p.filter.is_some() {
        return Err(format!(
            "{upper}(…) FILTER (WHERE …): not supported; filter in WHERE"
        ));
    }
    if !p.order_by.is_empty() {
        return Err(format!("{upper}(… ORDER BY …): not supported"));
    }
    #[allow(deprecated)]
    let arg = match p.args.as_slice() {
        // COUNT(*): every row counts.
        [Expr::Wildcard { .. }] if kind == AggKind::Count => {
            Expr::Literal(ScalarValue::Int64(Some(1)), None)
        }
        [a] => a.clone(),
        // COUNT(*) may come without an argument: every row counts.
        [] if kind == AggKind::Count => Expr::Literal(ScalarValue::Int64(Some(1)), None),
        _ => return Err(format!("{upper} takes one argument")),
    };
    Ok(AggFn { kind, arg })
}

/// A schema with each struct column `w` as `w_start`, `w_end` (its fields).
pub fn flatten(schema: &SchemaRef) -> SchemaRef {
    let mut fields = Vec::new();
    for f in schema.fields() {
        match f.data_type() {
            DataType::Struct(children) => {
                for c in children {
                    fields.push(
                        c.as_ref()
                            .clone()
                            .with_name(format!("{}_{}", f.name(), c.name()))
                            .with_nullable(true),
                    );
                }
            }
            _ => fields.push(f.as_ref().clone()),
        }
    }
    Arc::new(Schema::new(fields))
}

/// The columns of a batch, struct columns flattened as in [`flatten`].
pub fn flatten_columns(columns: &[ArrayRef]) -> Vec<ArrayRef> {
    let mut out = Vec::with_capacity(columns.len() + 1);
    for c in columns {
        match c.as_struct_opt() {
            Some(s) => {
                for child in s.columns() {
                    // A NULL struct's fields are NULL.
                    let child = match s.nulls() {
                        Some(n) if n.null_count() > 0 => {
                            let data = child
                                .to_data()
                                .into_builder()
                                .nulls(Some(n.clone()))
                                .build()
                                .map(datafusion_common::arrow::array::make_array);
                            data.unwrap_or_else(|_| child.clone())
                        }
                        _ => child.clone(),
                    };
                    out.push(child);
                }
            }
            None => out.push(c.clone()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn starts(w: Windows, t: i64) -> Vec<i64> {
        w.starts(t).collect()
    }

    #[test]
    fn windows_of_a_time() {
        let tumble = Windows {
            slide: 10,
            width: 10,
        };
        assert_eq!(starts(tumble, 0), [0]);
        assert_eq!(starts(tumble, 9), [0]);
        assert_eq!(starts(tumble, 10), [10]);
        assert_eq!(starts(tumble, -1), [-10]);
        let hop = Windows {
            slide: 10,
            width: 30,
        };
        assert_eq!(starts(hop, 25), [0, 10, 20]);
        assert_eq!(starts(hop, 30), [10, 20, 30]);
        let uneven = Windows {
            slide: 10,
            width: 25,
        };
        assert_eq!(starts(uneven, 24), [0, 10, 20]);
        assert_eq!(starts(uneven, 25), [10, 20]);
        // The ends of time: no overflow.
        assert_eq!(starts(hop, i64::MIN + 5).len(), 1);
        assert!(starts(hop, i64::MAX).len() <= 3);
        // Brute force: every start k*slide with start <= t < start + width.
        for (slide, width) in [(3, 7), (5, 5), (2, 9), (4, 12)] {
            let w = Windows { slide, width };
            for t in -40..40 {
                let want: Vec<i64> = (-100..100)
                    .map(|k| k * slide)
                    .filter(|s| *s <= t && t < s + width)
                    .collect();
                assert_eq!(starts(w, t), want, "{slide} {width} {t}");
            }
        }
    }
}
