//! Queries planned by DataFusion (`datafusion-sql` → logical plan, type
//! coercion by the analyzer) and lowered into what a stream runs without
//! state: per source table, a program of filters and projections over its
//! records. What would need state or an end of the stream (aggregates
//! without a window, joins, ORDER BY, LIMIT, DISTINCT, window functions)
//! is refused here, by name, when the file is validated.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use std::sync::Arc;

use datafusion_common::arrow::datatypes::{
    DataType, Field, Schema as ArrowSchema, SchemaRef, TimeUnit,
};
use datafusion_common::config::ConfigOptions;
use datafusion_common::tree_node::TreeNode;
use datafusion_common::{DFSchema, TableReference};
use datafusion_expr::execution_props::ExecutionProps;
use datafusion_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion_expr::planner::{ContextProvider, ExprPlanner};
use datafusion_expr::simplify::SimplifyContext;
use datafusion_expr::{
    AggregateUDF, Expr, HigherOrderUDF, LogicalPlan, ScalarUDF, TableScan, TableSource, WindowUDF,
};
use datafusion_optimizer::analyzer::Analyzer;
use datafusion_optimizer::simplify_expressions::ExprSimplifier;
use datafusion_physical_expr::{create_physical_expr, PhysicalExpr};
use datafusion_sql::planner::{ParserOptions, SqlToRel};
use datafusion_sql::sqlparser::ast::{Query, Statement};
use mqlink::format::ColumnType;

/// Field metadata marking a text column that holds JSON.
pub const JSON_TYPE: (&str, &str) = ("mqlink.type", "json");

/// The Arrow type of a column of a table.
pub fn arrow_field(name: &str, ty: ColumnType) -> Field {
    let dt = match ty {
        ColumnType::Text | ColumnType::Json => DataType::Utf8,
        ColumnType::BigInt => DataType::Int64,
        ColumnType::Double => DataType::Float64,
        ColumnType::Boolean => DataType::Boolean,
        ColumnType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        ColumnType::Bytea => DataType::Binary,
    };
    let f = Field::new(name, dt, true);
    if ty == ColumnType::Json {
        f.with_metadata([(JSON_TYPE.0.to_string(), JSON_TYPE.1.to_string())].into())
    } else {
        f
    }
}

/// The column type a query's output column has in the pipeline (what a
/// PostgreSQL sink creates, what topic templates are checked against).
pub fn column_type(f: &Field) -> ColumnType {
    if f.metadata().get(JSON_TYPE.0).map(String::as_str) == Some(JSON_TYPE.1) {
        return ColumnType::Json;
    }
    match f.data_type() {
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32
        | DataType::UInt64 => ColumnType::BigInt,
        DataType::Float16
        | DataType::Float32
        | DataType::Float64
        | DataType::Decimal32(..)
        | DataType::Decimal64(..)
        | DataType::Decimal128(..)
        | DataType::Decimal256(..) => ColumnType::Double,
        DataType::Boolean => ColumnType::Boolean,
        DataType::Timestamp(..) => ColumnType::Timestamp,
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => ColumnType::Bytea,
        _ => ColumnType::Text,
    }
}

/// The tables and views a query can read.
pub struct Catalog {
    tables: HashMap<String, Arc<dyn TableSource>>,
    options: ConfigOptions,
    functions: HashMap<String, Arc<ScalarUDF>>,
    aggregates: HashMap<String, Arc<AggregateUDF>>,
    /// SQL that DataFusion plans through extensions.
    planners: Vec<Arc<dyn ExprPlanner>>,
    /// `system.*` tables are readable (`mqlink query`), and nothing else.
    system: bool,
    /// How deep each view nests (see [`crate::depth`]).
    view_depths: HashMap<String, crate::depth::Nesting>,
}

impl Default for Catalog {
    fn default() -> Self {
        let mut functions = HashMap::new();
        for f in datafusion_functions::all_default_functions() {
            for a in f.aliases() {
                functions.insert(a.clone(), f.clone());
            }
            functions.insert(f.name().to_string(), f);
        }
        for f in crate::window::functions() {
            functions.insert(f.name().to_string(), f);
        }
        for f in crate::json::functions() {
            functions.insert(f.name().to_string(), f);
        }
        // Known so that a query using them plans to an aggregate that is
        // refused by name, instead of "unknown function".
        let mut aggregates = HashMap::new();
        for f in datafusion_functions_aggregate::all_default_aggregate_functions() {
            for a in f.aliases() {
                aggregates.insert(a.clone(), f.clone());
            }
            aggregates.insert(f.name().to_string(), f);
        }
        Catalog {
            tables: HashMap::new(),
            options: ConfigOptions::default(),
            functions,
            aggregates,
            // `COUNT(*)` as `count(1)`; `->` and `->>`.
            planners: vec![
                Arc::new(datafusion_functions_aggregate::planner::AggregateFunctionPlanner),
                Arc::new(crate::json::JsonOperators),
            ],
            system: false,
            view_depths: HashMap::new(),
        }
    }
}

struct Table(SchemaRef);

impl TableSource for Table {
    fn schema(&self) -> SchemaRef {
        self.0.clone()
    }
}

struct View(LogicalPlan);

impl TableSource for View {
    fn schema(&self) -> SchemaRef {
        Arc::new(self.0.schema().as_arrow().clone())
    }
    fn get_logical_plan(&self) -> Option<std::borrow::Cow<'_, LogicalPlan>> {
        Some(std::borrow::Cow::Borrowed(&self.0))
    }
}

impl Catalog {
    /// A catalog of a running pipeline's system tables (`system.NAME`),
    /// for `mqlink query`: only they are readable.
    pub fn system_tables(tables: &[(&str, SchemaRef)]) -> Catalog {
        let mut c = Catalog {
            system: true,
            ..Catalog::default()
        };
        for (name, schema) in tables {
            c.add_table(name, schema.clone());
        }
        c
    }

    pub fn add_table(&mut self, name: &str, schema: SchemaRef) {
        self.tables
            .insert(name.to_string(), Arc::new(Table(schema)));
    }

    /// Plans a view's query and makes it readable by later queries.
    pub fn add_view(&mut self, name: &str, query: &Query) -> Result<(), String> {
        let (plan, depth) = self.plan_with_depth(query)?;
        self.tables.insert(name.to_string(), Arc::new(View(plan)));
        self.view_depths.insert(name.to_string(), depth);
        Ok(())
    }

    pub fn has(&self, name: &str) -> bool {
        self.tables.contains_key(name)
    }

    /// The logical plan of a query, types coerced.
    pub fn plan(&self, query: &Query) -> Result<LogicalPlan, String> {
        self.plan_with_depth(query).map(|(plan, _)| plan)
    }

    /// The plan and how deep the query nests, the views it reads included:
    /// refused before DataFusion recurses over a tree too deep.
    fn plan_with_depth(
        &self,
        query: &Query,
    ) -> Result<(LogicalPlan, crate::depth::Nesting), String> {
        let depth = crate::depth::of_query(query, &|name: &str| {
            self.view_depths.get(name).copied().unwrap_or_default()
        })?;
        // Names as written: JSON fields are case-sensitive (`deviceId`).
        let options = ParserOptions {
            enable_ident_normalization: false,
            ..ParserOptions::default()
        };
        let planner = SqlToRel::new_with_options(self, options);
        let mut query = query.clone();
        crate::window::rewrite(&mut query)?;
        let plan = planner
            .sql_statement_to_plan(Statement::Query(Box::new(query)))
            .map_err(|e| clean(e.to_string()))?;
        Analyzer::new()
            .execute_and_check(plan, &self.options, |_, _| {})
            .map(|plan| (plan, depth))
            .map_err(|e| clean(e.to_string()))
    }
}

/// DataFusion's errors without its internal prefixes.
pub(crate) fn clean(s: String) -> String {
    let mut s = s.as_str();
    for p in [
        "Error during planning: ",
        "Execution error: ",
        "Schema error: ",
        "SQL error: ",
        "This feature is not implemented: ",
        "Optimizer rule 'type_coercion' failed\ncaused by\n",
    ] {
        if let Some(i) = s.find(p) {
            s = &s[i + p.len()..];
        }
    }
    s.to_string()
}

impl ContextProvider for Catalog {
    fn get_table_source(
        &self,
        name: TableReference,
    ) -> datafusion_common::Result<Arc<dyn TableSource>> {
        if self.system {
            // `system.connector_status` (or `connector_status` alone), and
            // source tables by name.
            let found = match name.schema() {
                Some(s) => self.tables.get(&format!("{s}.{}", name.table())),
                None => self
                    .tables
                    .get(name.table())
                    .or_else(|| self.tables.get(&format!("system.{}", name.table()))),
            };
            return found.cloned().ok_or_else(|| {
                let mut known: Vec<&str> = self.tables.keys().map(String::as_str).collect();
                known.sort();
                datafusion_common::DataFusionError::Plan(format!(
                    "no table named {name}: mqlink query reads {} (and a source table once a query of the pipeline has read rows of it: its last {} rows)",
                    known.join(", "),
                    crate::query::RECENT_ROWS
                ))
            });
        }
        if name.schema() == Some("system") {
            return datafusion_common::plan_err!(
                "{name} is a view of a running pipeline, not a stream: query it with mqlink query 'SELECT … FROM {name}' (the pipeline's http.listen)"
            );
        }
        self.tables.get(name.table()).cloned().ok_or_else(|| {
            let mut known: Vec<&str> = self.tables.keys().map(String::as_str).collect();
            known.sort();
            datafusion_common::DataFusionError::Plan(format!(
                "no table or view named {:?} (created so far: {})",
                name.table(),
                known.join(", ")
            ))
        })
    }
    fn get_expr_planners(&self) -> &[Arc<dyn ExprPlanner>] {
        &self.planners
    }
    fn get_function_meta(&self, name: &str) -> Option<Arc<ScalarUDF>> {
        self.functions.get(&name.to_ascii_lowercase()).cloned()
    }
    fn get_higher_order_meta(&self, _name: &str) -> Option<Arc<HigherOrderUDF>> {
        None
    }
    fn get_aggregate_meta(&self, name: &str) -> Option<Arc<AggregateUDF>> {
        self.aggregates.get(&name.to_ascii_lowercase()).cloned()
    }
    fn get_window_meta(&self, _name: &str) -> Option<Arc<WindowUDF>> {
        None
    }
    fn get_variable_type(&self, _names: &[String]) -> Option<DataType> {
        None
    }
    fn options(&self) -> &ConfigOptions {
        &self.options
    }
    fn udf_names(&self) -> Vec<String> {
        self.functions.keys().cloned().collect()
    }
    fn higher_order_function_names(&self) -> Vec<String> {
        Vec::new()
    }
    fn udaf_names(&self) -> Vec<String> {
        self.aggregates.keys().cloned().collect()
    }
    fn udwf_names(&self) -> Vec<String> {
        Vec::new()
    }
}

/// One step of a program, with its input's schema.
#[derive(Debug, Clone)]
pub enum Step {
    /// Keep the rows where the predicate is true (NULL drops the row).
    Filter(Expr, Arc<DFSchema>),
    /// New columns from expressions over the current ones.
    Project(Vec<Expr>, Arc<DFSchema>, SchemaRef),
    /// Columns cast to a UNION's types and names.
    Conform(SchemaRef),
}

/// What one source table's records go through for one query.
#[derive(Debug, Clone)]
pub struct Branch {
    pub source: String,
    pub steps: Vec<Step>,
}

/// Lowers a planned query into per-source programs, or names what a
/// stream cannot run.
pub fn branches(plan: &LogicalPlan) -> Result<Vec<Branch>, String> {
    Ok(match plan {
        LogicalPlan::TableScan(scan) => {
            let mut out = match scan.source.get_logical_plan() {
                Some(view) => branches(&view)?,
                None => vec![Branch {
                    source: scan.table_name.table().to_string(),
                    steps: Vec::new(),
                }],
            };
            let steps = scan_steps(scan)?;
            for b in &mut out {
                b.steps.extend(steps.iter().cloned());
            }
            out
        }
        LogicalPlan::Projection(p) => {
            let mut out = branches(&p.input)?;
            let schema = Arc::new(p.schema.as_arrow().clone());
            for b in &mut out {
                b.steps.push(Step::Project(
                    p.expr.clone(),
                    p.input.schema().clone(),
                    schema.clone(),
                ));
            }
            out
        }
        LogicalPlan::Filter(f) => {
            let mut out = branches(&f.input)?;
            for b in &mut out {
                b.steps
                    .push(Step::Filter(f.predicate.clone(), f.input.schema().clone()));
            }
            out
        }
        LogicalPlan::SubqueryAlias(a) => branches(&a.input)?,
        LogicalPlan::Union(u) => {
            let schema = Arc::new(u.schema.as_arrow().clone());
            let mut out = Vec::new();
            for input in &u.inputs {
                for mut b in branches(input)? {
                    b.steps.push(Step::Conform(schema.clone()));
                    out.push(b);
                }
            }
            out
        }
        // A windowed aggregate is lowered only at the top of a query (or a
        // view): here it is under a UNION ALL or a subquery.
        LogicalPlan::Aggregate(a)
            if a.group_expr.iter().any(|g| {
                matches!(crate::window::window_of(g, a.input.schema()), Ok(Some(_)))
            }) =>
        {
            return Err("a windowed aggregate under UNION ALL (or inside another query) is not supported: give each windowed query a sink of its own (one INSERT INTO per sink)".into())
        }
        LogicalPlan::Aggregate(_) => return Err("an aggregate (GROUP BY, COUNT, SUM, AVG, MIN, MAX) without a window is an updating result, which a stream of MQTT messages into sinks cannot express; only stateless queries (SELECT … WHERE …, UNION ALL) are supported so far".into()),
        LogicalPlan::Join(_) => return Err("JOIN: joins of streams are not supported".into()),
        LogicalPlan::Sort(_) => return Err("ORDER BY: a stream has no end to sort by (Top-N is not supported)".into()),
        LogicalPlan::Limit(_) => return Err("LIMIT: Top-N and limits of a stream are not supported".into()),
        LogicalPlan::Window(_) => return Err("window functions (… OVER (…)): not supported".into()),
        LogicalPlan::Distinct(_) => return Err("DISTINCT (or UNION without ALL): an updating result; not supported".into()),
        LogicalPlan::Values(_) | LogicalPlan::EmptyRelation(_) => {
            return Err("a query without a FROM table reads no stream".into())
        }
        other => {
            return Err(format!(
                "{}: not supported in a streaming query",
                other.display().to_string().split(':').next().unwrap_or("this")
            ))
        }
    })
}

/// What a scan does to its table's (or view's) rows: the filters pushed
/// into it, then its projection.
pub fn scan_steps(scan: &TableScan) -> Result<Vec<Step>, String> {
    let full = DFSchema::try_from_qualified_schema(scan.table_name.clone(), &scan.source.schema())
        .map_err(|e| e.to_string())?;
    let full = Arc::new(full);
    let mut steps: Vec<Step> = scan
        .filters
        .iter()
        .map(|f| Step::Filter(f.clone(), full.clone()))
        .collect();
    if let Some(cols) = &scan.projection {
        let exprs: Vec<Expr> = cols
            .iter()
            .map(|&i| Expr::Column(full.columns()[i].clone()))
            .collect();
        let schema = Arc::new(scan.projected_schema.as_arrow().clone());
        steps.push(Step::Project(exprs, full, schema));
    }
    Ok(steps)
}

/// Whether an expression reads the clock (`now()`, `current_date`): such
/// a program is re-planned for every batch, so that the time is the batch's.
pub fn reads_clock(e: &Expr) -> bool {
    e.exists(|e| {
        Ok(matches!(e, Expr::ScalarFunction(f)
            if matches!(f.name(), "now" | "current_date" | "current_time")))
    })
    .unwrap_or(true)
}

/// A physical expression for `e` over rows of `schema`, simplified with
/// the clock at `now` (constants folded, `now()` a literal).
pub fn physical(
    e: &Expr,
    schema: &Arc<DFSchema>,
    now: DateTime<Utc>,
) -> Result<Arc<dyn PhysicalExpr>, String> {
    let ctx = SimplifyContext::builder()
        .with_schema(schema.clone())
        .with_query_execution_start_time(Some(now))
        .build();
    // Functions that multiply their input checked first: folding
    // constants runs them.
    let e = crate::budget::guard(e.clone()).map_err(|e| clean(e.to_string()))?;
    let e = ExprSimplifier::new(ctx)
        .simplify(e)
        .map_err(|e| clean(e.to_string()))?;
    let props = ExecutionProps::new().with_query_execution_start_time(now);
    create_physical_expr(&e, schema, &props, &PhysicalPlanningContext::default())
        .map_err(|e| clean(e.to_string()))
}

/// An Arrow schema from fields.
pub fn schema_of(fields: Vec<Field>) -> SchemaRef {
    Arc::new(ArrowSchema::new(fields))
}
