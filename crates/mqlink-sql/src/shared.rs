//! A windowed query run by several processes in one share group: each
//! process's windows hold an aggregate of its share of the messages, a
//! partial row. With an instance name (`mqlink run --instance`,
//! `MQLINK_INSTANCE`) the PostgreSQL sink writes the partial rows keyed
//! by the window, the group keys and the instance, and the view
//! `<table>_merged` combines them: COUNT and SUM add up, MIN and MAX take
//! theirs. What does not combine (AVG, an expression over aggregates,
//! HAVING), and partial rows into a sink that cannot merge them, are
//! refused with the reason.

use datafusion_common::arrow::datatypes::DataType;
use datafusion_common::DFSchema;
use datafusion_expr::Expr;
use mqlink_pipeline::connectors::postgres::{Merge, Partials};

use crate::plan::Step;
use crate::window::{AggKind, Windowed};

/// What a column of the query's output is to a merge.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Part {
    /// The window or a group key, or a function of them only.
    Group,
    /// An aggregate as it is.
    Agg(AggKind),
    /// An expression over aggregates.
    Computed,
}

/// The partial rows of `w` for `instance`, or why they cannot be merged.
pub fn partials(w: &Windowed, instance: &str) -> Result<Partials, String> {
    let groups = w.keys.len() + 1;
    let mut cols: Vec<(Part, DataType)> = w
        .output
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let part = match i.checked_sub(groups) {
                None => Part::Group,
                Some(a) => Part::Agg(w.aggs[a].kind),
            };
            (part, f.data_type().clone())
        })
        .collect();
    for step in &w.post {
        match step {
            Step::Filter(..) => return Err("HAVING filters each process's partial row, not the combined one: in a share group, filter when reading <table>_merged instead".into()),
            Step::Conform(schema) => {
                for (c, f) in cols.iter_mut().zip(schema.fields()) {
                    c.1 = f.data_type().clone();
                }
            }
            Step::Project(exprs, input, out) => {
                let parts: Vec<Part> = cols.iter().map(|c| c.0).collect();
                cols = exprs
                    .iter()
                    .zip(out.fields())
                    .map(|(e, f)| (part_of(e, input, &parts), f.data_type().clone()))
                    .collect();
            }
        }
    }
    // What each output column was, for the error.
    let shown: std::collections::HashMap<String, String> =
        match w.post.iter().rev().find_map(|s| match s {
            Step::Project(exprs, _, out) => Some((exprs, out)),
            _ => None,
        }) {
            Some((exprs, out)) => out
                .fields()
                .iter()
                .zip(exprs)
                .map(|(f, e)| (f.name().clone(), e.to_string()))
                .collect(),
            None => Default::default(),
        };
    // The window column is flattened into its start and end.
    let mut parts = Vec::new();
    for (part, ty) in cols {
        match ty {
            DataType::Struct(children) => parts.extend(children.iter().map(|_| part)),
            _ => parts.push(part),
        }
    }
    let mut out = Partials {
        instance: instance.to_string(),
        group: Vec::new(),
        merge: Vec::new(),
    };
    for (part, f) in parts.into_iter().zip(w.out.fields()) {
        let name = f.name().clone();
        match part {
            Part::Group => out.group.push(name),
            Part::Agg(AggKind::Count | AggKind::Sum) => out.merge.push((name, Merge::Sum)),
            Part::Agg(AggKind::Min) => out.merge.push((name, Merge::Min)),
            Part::Agg(AggKind::Max) => out.merge.push((name, Merge::Max)),
            Part::Agg(AggKind::Avg) => return Err(format!("AVG (column {name}): the average of each process's partial average is not the average; in a share group write SUM(x) AS sum_x, COUNT(x) AS n and divide when reading (SELECT sum_x / n FROM <table>_merged)")),
            Part::Computed => return Err(format!("column {name} ({}) is computed from aggregates: in a share group each column must be the window, a group key, or COUNT, SUM, MIN or MAX as it is, so that partial rows combine (compute it when reading <table>_merged)", shown.get(name.as_str()).map_or("?", |s| s.as_str()))),
        }
    }
    Ok(out)
}

/// A projected column's part: a bare column keeps its part; anything over
/// group columns only is a group column; the rest is computed.
fn part_of(e: &Expr, input: &DFSchema, parts: &[Part]) -> Part {
    let of = |c: &datafusion_common::Column| {
        input
            .index_of_column(c)
            .ok()
            // (an unqualified name the schema spells qualified)
            .or_else(|| input.fields().iter().position(|f| f.name() == &c.name))
            .and_then(|i| parts.get(i).copied())
            .unwrap_or(Part::Computed)
    };
    // (`count(Int64(1)) AS count(*) AS n`: aliases over aliases)
    let mut bare = e;
    while let Expr::Alias(a) = bare {
        bare = a.expr.as_ref();
    }
    if let Expr::Column(c) = bare {
        return of(c);
    }
    let used = e.column_refs();
    if !used.is_empty() && used.iter().all(|c| of(c) == Part::Group) {
        Part::Group
    } else {
        Part::Computed
    }
}

#[cfg(test)]
mod tests {
    use mqlink_pipeline::connectors::postgres::{Merge, PostgresSinkConfig};

    fn compile(
        dir: &std::path::Path,
        instance: Option<&str>,
        sink: &str,
        query: &str,
    ) -> Result<mqlink_pipeline::Pipeline, String> {
        let sql = format!(
            "CREATE CONNECTION c FROM mqtt_source WITH (broker = 'tcp://127.0.0.1:1883', client_id = 'w', clean_session = false);
CREATE TABLE t (dev TEXT, ts TIMESTAMP, temp DOUBLE, WATERMARK FOR ts AS ts - INTERVAL '5 seconds')
WITH (connector = 'mqtt_source', connection = 'c', topics = '[\"a/#\"]', share_group = 'g', state_dir = '{}');
{sink};
INSERT INTO db {query};",
            dir.display()
        );
        let instance = instance.map(str::to_string);
        let env = move |k: &str| {
            (k == crate::INSTANCE_ENV)
                .then(|| instance.clone())
                .flatten()
        };
        crate::parse(&sql, &env).map_err(|e| e.to_string())
    }

    const PG: &str = "CREATE TABLE db WITH (connector = 'postgres', url = 'postgres://u@h/d', table = 'win', create_table = 'true', primary_key = 'window_start, dev')";

    #[test]
    fn decomposable_aggregates_become_partial_rows_and_a_merge() {
        let dir = testkit::TempDir::new().unwrap();
        let q = "SELECT TUMBLE(INTERVAL '1 minute') AS window, dev, COUNT(*) AS n, SUM(temp) AS s, MIN(temp) AS lo, MAX(temp) AS hi FROM t GROUP BY window, dev";
        let p = compile(dir.path(), Some("pod-1"), PG, q).unwrap();
        let pg = p.sinks[0].1.kind.get::<PostgresSinkConfig>().unwrap();
        let partials = pg.partials.as_ref().expect("partial rows");
        assert_eq!(partials.instance, "pod-1");
        assert_eq!(partials.group, ["window_start", "window_end", "dev"]);
        assert_eq!(
            partials.merge,
            [
                ("n".to_string(), Merge::Sum),
                ("s".to_string(), Merge::Sum),
                ("lo".to_string(), Merge::Min),
                ("hi".to_string(), Merge::Max)
            ]
        );
        // Without an instance: one process, whole rows.
        let p = compile(dir.path(), None, PG, q).unwrap();
        assert!(p.sinks[0]
            .1
            .kind
            .get::<PostgresSinkConfig>()
            .unwrap()
            .partials
            .is_none());
    }

    #[test]
    fn what_does_not_combine_is_refused_with_the_reason() {
        let dir = testkit::TempDir::new().unwrap();
        let refused = |sink: &str, q: &str| compile(dir.path(), Some("a"), sink, q).unwrap_err();
        let e = refused(PG, "SELECT TUMBLE(INTERVAL '1 minute') AS window, dev, AVG(temp) AS mean FROM t GROUP BY window, dev");
        assert!(
            e.contains("share group \"g\" by instance \"a\"")
                && e.contains("AVG (column mean)")
                && e.contains("SUM(x) AS sum_x, COUNT(x) AS n"),
            "{e}"
        );
        let e = refused(PG, "SELECT TUMBLE(INTERVAL '1 minute') AS window, dev, COUNT(*) * 2 AS n2 FROM t GROUP BY window, dev");
        assert!(
            e.contains("column n2 (") && e.contains("is computed from aggregates"),
            "{e}"
        );
        let e = refused(PG, "SELECT TUMBLE(INTERVAL '1 minute') AS window, dev, COUNT(*) AS n FROM t GROUP BY window, dev HAVING COUNT(*) > 3");
        assert!(e.contains("HAVING"), "{e}");
        let e = refused(
            "CREATE TABLE db WITH (connector = 'file', path = 'out.jsonl')",
            "SELECT TUMBLE(INTERVAL '1 minute') AS window, dev, COUNT(*) AS n FROM t GROUP BY window, dev",
        );
        assert!(
            e.contains("only a PostgreSQL sink combines partial rows"),
            "{e}"
        );
        // A function of group keys is a group key.
        let p = compile(dir.path(), Some("a"), PG, "SELECT TUMBLE(INTERVAL '1 minute') AS window, upper(dev) AS dev, COUNT(*) AS n FROM t GROUP BY window, dev").unwrap();
        let pg = p.sinks[0].1.kind.get::<PostgresSinkConfig>().unwrap();
        assert_eq!(
            pg.partials.as_ref().unwrap().group,
            ["window_start", "window_end", "dev"]
        );
    }
}
