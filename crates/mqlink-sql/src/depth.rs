//! How deep a statement nests, checked right after it is parsed and before
//! anything recursive walks it (planning, printing, cloning): sqlparser
//! reads `a + a + … + a` and `… UNION ALL …` in a loop, but the tree it
//! builds is as deep as the chain is long, and DataFusion recurses over it
//! — 5,000 terms overflowed the stack. Views count through: a query's depth
//! adds the deepest view it reads.
//!
//! Parsing and planning run on a thread with a large stack ([`on_deep_stack`]),
//! so that dropping a tree refused for its depth cannot overflow either.

use std::ops::ControlFlow;

use datafusion_sql::sqlparser::ast::{
    Expr, ObjectName, Query, Select, SetExpr, Statement, Visit, Visitor,
};

/// Expressions, subqueries, set operations (`UNION`), joins and views,
/// nested in one another, at most (SQLite's default expression depth is
/// 1,000; PostgreSQL's depends on its stack).
pub const MAX_DEPTH: usize = 256;

/// Characters of a name (PostgreSQL keeps 63 bytes): DataFusion's
/// "did you mean" compares a name with every column, and 64 KiB of name
/// took seconds.
pub const MAX_NAME: usize = 255;

/// Views of views at most: each plan inlines the views it reads, so a
/// chain costs its length squared to plan (3,000 took seconds).
pub const MAX_VIEW_CHAIN: usize = 64;

/// How deep a query nests, and how long the chain of views under it is.
#[derive(Clone, Copy, Debug, Default)]
pub struct Nesting {
    pub levels: usize,
    pub views: usize,
}

/// The stack of the thread that parses and plans.
const DEEP_STACK: usize = 256 << 20;

/// Why a statement is refused: its depth and the limit, and what to do.
fn too_deep(what: &str) -> String {
    format!(
        "{what} nests more than {MAX_DEPTH} levels deep (expressions, subqueries, UNIONs, joins and the views read, together); mqlink plans at most {MAX_DEPTH}: use IN (…) instead of a chain of OR, or split the query into views"
    )
}

struct Depth<'a> {
    now: usize,
    max: usize,
    /// The longest chain of views read.
    views: usize,
    /// How a view read by name nests (nothing for a table).
    view: &'a dyn Fn(&str) -> Nesting,
}

impl Depth<'_> {
    fn enter(&mut self, levels: usize, what: &str) -> ControlFlow<String> {
        self.now += levels;
        self.max = self.max.max(self.now);
        if self.now > MAX_DEPTH {
            return ControlFlow::Break(too_deep(what));
        }
        ControlFlow::Continue(())
    }
}

/// The longest chain of set operations under `body`, walked without recursion.
fn set_depth(body: &SetExpr) -> usize {
    let mut stack = vec![(body, 1)];
    let mut max = 0;
    while let Some((s, d)) = stack.pop() {
        max = max.max(d);
        match s {
            SetExpr::SetOperation { left, right, .. } => {
                stack.push((left, d + 1));
                stack.push((right, d + 1));
            }
            SetExpr::Query(q) => stack.push((&q.body, d + 1)),
            _ => {}
        }
    }
    max
}

impl Visitor for Depth<'_> {
    type Break = String;

    fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<String> {
        // Checked before the visit descends into the chain of set operations.
        if self.now + set_depth(&q.body) > MAX_DEPTH {
            return ControlFlow::Break(too_deep("the query"));
        }
        self.enter(1, "the query")
    }
    fn post_visit_query(&mut self, _: &Query) -> ControlFlow<String> {
        self.now -= 1;
        ControlFlow::Continue(())
    }
    fn pre_visit_select(&mut self, s: &Select) -> ControlFlow<String> {
        let joins: usize = s.from.iter().map(|t| t.joins.len() + 1).sum();
        self.enter(joins, "the FROM clause")?;
        self.now -= joins;
        ControlFlow::Continue(())
    }
    fn pre_visit_relation(&mut self, name: &ObjectName) -> ControlFlow<String> {
        let table = name.0.last().and_then(|p| p.as_ident());
        let view = table.map_or(Nesting::default(), |t| (self.view)(&t.value));
        self.views = self.views.max(view.views);
        if self.views >= MAX_VIEW_CHAIN {
            return ControlFlow::Break(format!(
                "the query reads views of views more than {MAX_VIEW_CHAIN} deep; mqlink plans at most {MAX_VIEW_CHAIN}: read the tables in fewer steps"
            ));
        }
        self.enter(view.levels, "the query with the views it reads")?;
        self.now -= view.levels;
        ControlFlow::Continue(())
    }
    fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<String> {
        let names = match e {
            Expr::Identifier(i) => std::slice::from_ref(i),
            Expr::CompoundIdentifier(parts) => parts.as_slice(),
            _ => &[],
        };
        if let Some(long) = names.iter().find(|i| i.value.chars().count() > MAX_NAME) {
            let start: String = long.value.chars().take(20).collect();
            return ControlFlow::Break(format!(
                "the name {start}… has {} characters: at most {MAX_NAME}",
                long.value.chars().count()
            ));
        }
        self.enter(1, "an expression")
    }
    fn post_visit_expr(&mut self, _: &Expr) -> ControlFlow<String> {
        self.now -= 1;
        ControlFlow::Continue(())
    }
}

/// How `node` nests; a view it reads adds one to the chain.
fn measure(node: &impl Visit, view: &dyn Fn(&str) -> Nesting) -> Result<Nesting, String> {
    let mut d = Depth {
        now: 0,
        max: 0,
        views: 0,
        view,
    };
    match node.visit(&mut d) {
        ControlFlow::Break(e) => Err(e),
        ControlFlow::Continue(()) => Ok(Nesting {
            levels: d.max,
            views: d.views + 1,
        }),
    }
}

/// How a query nests (views read counted as `view` says), or why it is
/// refused.
pub fn of_query(q: &Query, view: &dyn Fn(&str) -> Nesting) -> Result<Nesting, String> {
    // A query outside a statement: its set operations first, without recursion.
    if set_depth(&q.body) > MAX_DEPTH {
        return Err(too_deep("the query"));
    }
    measure(q, view)
}

/// Whether a statement as parsed is shallow enough to walk.
pub fn check_statement(s: &Statement) -> Result<(), String> {
    measure(s, &|_| Nesting::default()).map(|_| ())
}

/// Whether an expression as parsed is shallow enough to walk.
pub fn check_expr(e: &Expr) -> Result<(), String> {
    measure(e, &|_| Nesting::default()).map(|_| ())
}

/// Runs `f` on a thread with a stack for [`MAX_DEPTH`] levels of planning
/// and for dropping whatever tree the parser built.
/// The error is the thread's: it could not start, or `f` panicked.
pub fn on_deep_stack<T: Send>(f: impl FnOnce() -> T + Send) -> Result<T, String> {
    std::thread::scope(|s| {
        let t = std::thread::Builder::new()
            .name("mqlink-sql".into())
            .stack_size(DEEP_STACK)
            .spawn_scoped(s, f)
            .map_err(|e| format!("cannot start the SQL planner's thread: {e}"))?;
        t.join()
            .map_err(|_| "the SQL planner failed (internal error)".to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion_sql::sqlparser::dialect::GenericDialect;
    use datafusion_sql::sqlparser::parser::Parser;

    fn depth(sql: &str) -> Result<(), String> {
        on_deep_stack(|| {
            let s = Parser::parse_sql(&GenericDialect {}, sql).map_err(|e| e.to_string())?;
            s.iter().try_for_each(check_statement)
        })?
    }

    #[test]
    fn long_chains_are_refused_and_short_ones_pass() {
        let chain = |op: &str, n: usize| format!("SELECT {} FROM t", vec!["a"; n].join(op));
        for op in [" + ", " OR ", " AND "] {
            assert!(depth(&chain(op, 100)).is_ok(), "{op}");
            let e = depth(&chain(op, 20_000)).unwrap_err();
            assert!(e.contains("at most 256"), "{e}");
        }
        let union = |n: usize| vec!["SELECT a FROM t"; n].join(" UNION ALL ");
        assert!(depth(&union(50)).is_ok());
        assert!(depth(&union(5_000)).unwrap_err().contains("at most 256"));
        let joins = |n: usize| {
            let j: String = (0..n).map(|i| format!(" JOIN t{i} ON a = b")).collect();
            format!("SELECT a FROM t{j}")
        };
        assert!(depth(&joins(10)).is_ok());
        assert!(depth(&joins(1_000)).is_err());
        let long = format!("SELECT t.{} FROM t", "x".repeat(300));
        assert!(depth(&long)
            .unwrap_err()
            .contains("has 300 characters: at most 255"));
    }
}
