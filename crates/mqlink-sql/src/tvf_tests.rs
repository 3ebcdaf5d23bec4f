//! The window TVFs (Flink's `TABLE(TUMBLE(TABLE t, DESCRIPTOR(ts), …))`,
//! RisingWave's `FROM HOP(t, ts, …)`) run as the group windows they are
//! rewritten into: same rows out as Flink's `GROUP BY TUMBLE(ts, …)`, and
//! exact against a reference computed row by row.

use std::collections::BTreeMap;

use mqlink::format::Value;
use mqlink_pipeline::batch::Item;
use mqlink_pipeline::ConfigError;
use tokio::time::Instant;

use crate::parse;

const S: i64 = 1_000_000;
/// 2026-11-23T10:00:00Z.
const T0: i64 = 1_795_428_000 * S;
/// The table's `WATERMARK FOR ts AS ts - INTERVAL '5 seconds'`.
const DELAY: i64 = 5 * S;

fn pipeline(
    dir: &std::path::Path,
    queries: &str,
) -> Result<mqlink_pipeline::Pipeline, ConfigError> {
    // The file sink f, unless a CREATE SINK brings its own.
    let f = match queries.contains("CREATE SINK") {
        true => "",
        false => "CREATE TABLE f WITH (connector = 'file', path = 'out.jsonl');",
    };
    let sql = format!(
        "CREATE CONNECTION c FROM mqtt_source WITH (broker = 'tcp://127.0.0.1:1883', client_id = 'w', clean_session = false);
CREATE TABLE t (dev TEXT, ts TIMESTAMP, n BIGINT, WATERMARK FOR ts AS ts - INTERVAL '5 seconds')
WITH (connector = 'mqtt_source', connection = 'c', topics = '[\"a/#\"]', state_dir = '{}');
{f}
{queries}",
        dir.display()
    );
    parse(&sql, &|_| None)
}

/// (device, event time, n): mostly increasing, some rows late.
type Row = (Option<String>, i64, i64);

fn rows(seed: u64, count: usize) -> Vec<Row> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut t = T0 + 3 * S;
    (0..count)
        .map(|_| {
            t += rng.i64(0..2 * S);
            let back = if rng.u8(..4) == 0 {
                rng.i64(0..8 * S)
            } else {
                0
            };
            let dev = (rng.u8(..20) != 0).then(|| format!("d{}", rng.u8(..3)));
            (dev, t - back, rng.i64(-5..50))
        })
        .collect()
}

type Out = Vec<Vec<(String, Value)>>;

/// The rows a query's stage gives for `rows`, fed in batches of 1 to 39.
fn run(dir: &std::path::Path, queries: &str, rows: &[Row]) -> Out {
    let p = pipeline(dir, queries).unwrap_or_else(|e| panic!("{e}"));
    let mut stage = p.transforms["t"].make();
    let mut rng = fastrand::Rng::with_seed(7);
    let mut out = Vec::new();
    let mut rest = rows;
    while !rest.is_empty() {
        let (chunk, tail) = rest.split_at(rng.usize(1..40).min(rest.len()));
        rest = tail;
        let items = chunk
            .iter()
            .map(|(dev, ts, n)| Item {
                topic: Some("a/x".into()),
                origin: None,
                payload: bytes::Bytes::from(format!("{ts}")),
                value: Value::Row(vec![
                    ("dev".into(), dev.clone().map_or(Value::Null, Value::Text)),
                    ("ts".into(), Value::Timestamp(*ts)),
                    ("n".into(), Value::BigInt(*n)),
                ]),
            })
            .collect();
        for it in stage.apply(items, Instant::now()).items {
            let Value::Row(r) = it.value else {
                panic!("not a row: {:?}", it.value)
            };
            out.push(r.into_iter().map(|(k, v)| (k.to_string(), v)).collect());
        }
    }
    out
}

/// Count and sum of `n` per (window start, device) of the windows the
/// watermark has closed; late rows (behind the watermark) skipped.
fn reference(rows: &[Row], slide: i64, size: i64) -> BTreeMap<(i64, Option<String>), (i64, i64)> {
    let mut wm = i64::MIN;
    let mut windows = BTreeMap::new();
    for (dev, ts, n) in rows {
        if *ts < wm {
            continue;
        }
        let mut start = ts.div_euclid(slide) * slide;
        while start + size > *ts {
            let w: &mut (i64, i64) = windows.entry((start, dev.clone())).or_default();
            w.0 += 1;
            w.1 += n;
            start -= slide;
        }
        wm = wm.max(ts - DELAY);
    }
    windows.retain(|(start, _), _| start + size <= wm);
    windows
}

fn sorted(mut v: Out) -> Out {
    v.sort_by_key(|r| format!("{r:?}"));
    v
}

fn text(dev: &Option<String>) -> Value {
    dev.clone().map_or(Value::Null, Value::Text)
}

#[test]
fn flink_tumble_tvf_equals_the_group_window() {
    let all = rows(11, 3000);
    let dir = testkit::TempDir::new().unwrap();
    let tvf = run(
        dir.path(),
        "INSERT INTO f SELECT window_start, window_end, dev, COUNT(*) AS c, SUM(n) AS total \
         FROM TABLE(TUMBLE(TABLE t, DESCRIPTOR(ts), INTERVAL '10' SECOND)) \
         GROUP BY window_start, window_end, dev;",
        &all,
    );
    let dir = testkit::TempDir::new().unwrap();
    let group = run(
        dir.path(),
        "INSERT INTO f SELECT TUMBLE_START(ts, INTERVAL '10' SECOND) AS window_start, \
         TUMBLE_END(ts, INTERVAL '10' SECOND) AS window_end, dev, COUNT(*) AS c, SUM(n) AS total \
         FROM t GROUP BY TUMBLE(ts, INTERVAL '10' SECOND), dev;",
        &all,
    );
    assert!(tvf.len() > 100, "{}", tvf.len());
    assert_eq!(tvf, group);
    let want: Out = reference(&all, 10 * S, 10 * S)
        .into_iter()
        .map(|((start, dev), (c, total))| {
            vec![
                ("window_start".into(), Value::Timestamp(start)),
                ("window_end".into(), Value::Timestamp(start + 10 * S)),
                ("dev".into(), text(&dev)),
                ("c".into(), Value::BigInt(c)),
                ("total".into(), Value::BigInt(total)),
            ]
        })
        .collect();
    assert_eq!(sorted(tvf), sorted(want));
}

/// Flink's HOP with named arguments (slide, then size), `window_end` and
/// `window_start` in HAVING, the window last in GROUP BY.
#[test]
fn flink_hop_tvf_is_exact() {
    let all = rows(12, 2000);
    let dir = testkit::TempDir::new().unwrap();
    let out = run(
        dir.path(),
        "INSERT INTO f SELECT dev, window_end, COUNT(*) AS c \
         FROM TABLE(HOP(DATA => TABLE t, TIMECOL => DESCRIPTOR(ts), SLIDE => INTERVAL '5' SECOND, SIZE => INTERVAL '15' SECOND)) AS w \
         GROUP BY dev, w.window_start, w.window_end HAVING COUNT(*) >= 3 AND window_start >= TIMESTAMP '2026-11-23T10:00:30Z';",
        &all,
    );
    let want: Out = reference(&all, 5 * S, 15 * S)
        .into_iter()
        .filter(|((start, _), (c, _))| *c >= 3 && *start >= T0 + 30 * S)
        .map(|((start, dev), (c, _))| {
            vec![
                ("dev".into(), text(&dev)),
                ("window_end".into(), Value::Timestamp(start + 15 * S)),
                ("c".into(), Value::BigInt(c)),
            ]
        })
        .collect();
    assert!(want.len() > 100, "{}", want.len());
    assert_eq!(sorted(out), sorted(want));
}

/// RisingWave's `FROM HOP(t, ts, slide, size)` through a view, as a sink
/// keyed on (window_start, dev) reads it.
#[test]
fn risingwave_hop_through_a_view_is_exact() {
    let all = rows(13, 2000);
    let dir = testkit::TempDir::new().unwrap();
    let out = run(
        dir.path(),
        "CREATE VIEW per_dev AS SELECT window_start, window_end, dev, SUM(n) AS total \
         FROM HOP(t, ts, INTERVAL '10 seconds', INTERVAL '30 seconds') GROUP BY window_start, window_end, dev;
         INSERT INTO f SELECT window_start, dev, total FROM per_dev WHERE total > 40;",
        &all,
    );
    let want: Out = reference(&all, 10 * S, 30 * S)
        .into_iter()
        .filter(|(_, (_, total))| *total > 40)
        .map(|((start, dev), (_, total))| {
            vec![
                ("window_start".into(), Value::Timestamp(start)),
                ("dev".into(), text(&dev)),
                ("total".into(), Value::BigInt(total)),
            ]
        })
        .collect();
    assert!(want.len() > 100, "{}", want.len());
    assert_eq!(sorted(out), sorted(want));
}

/// RisingWave's TUMBLE gives what Flink's TVF gives.
#[test]
fn risingwave_tumble_equals_flink_tumble() {
    let all = rows(14, 1500);
    let q = |from: &str| {
        format!("INSERT INTO f SELECT window_start, window_end, COUNT(*) AS c FROM {from} GROUP BY window_start, window_end;")
    };
    let dir = testkit::TempDir::new().unwrap();
    let rw = run(dir.path(), &q("TUMBLE(t, ts, INTERVAL '1 minute')"), &all);
    let dir = testkit::TempDir::new().unwrap();
    let flink = run(
        dir.path(),
        &q("TABLE(TUMBLE(TABLE t, DESCRIPTOR(ts), INTERVAL '1' MINUTE))"),
        &all,
    );
    assert!(rw.len() > 20, "{}", rw.len());
    assert_eq!(rw, flink);
}

/// RisingWave's `CREATE SINK … AS query WITH (…)` over a window: the
/// sink's `WITH (` after `GROUP BY …` is not read as MySQL's `WITH ROLLUP`,
/// and the rows are those of `INSERT INTO`.
#[test]
fn create_sink_as_a_windowed_query() {
    let all = rows(15, 1500);
    let query =
        "SELECT window_start, dev, COUNT(*) AS c FROM TUMBLE(t, ts, INTERVAL '10 seconds') \
                 GROUP BY window_start, window_end, dev";
    let dir = testkit::TempDir::new().unwrap();
    let insert = run(dir.path(), &format!("INSERT INTO f {query};"), &all);
    let dir = testkit::TempDir::new().unwrap();
    let sink = run(
        dir.path(),
        &format!("CREATE SINK k AS {query} WITH (connector = 'file', path = 'k.jsonl');"),
        &all,
    );
    assert!(insert.len() > 100, "{}", insert.len());
    assert_eq!(sink, insert);
    // A sink without its options is named as such.
    let dir = testkit::TempDir::new().unwrap();
    let e = pipeline(dir.path(), &format!("CREATE SINK k AS {query};")).unwrap_err();
    assert!(
        e.to_string().contains("WITH (…) after the sink's query"),
        "{e}"
    );
}

/// What is not supported is refused by name, at its statement and line.
#[test]
fn unsupported_tvf_forms_are_refused() {
    let tumble = "TABLE(TUMBLE(TABLE t, DESCRIPTOR(ts), INTERVAL '1' MINUTE))";
    let cases = [
        (
            "SELECT window_start, COUNT(*) FROM TABLE(CUMULATE(TABLE t, DESCRIPTOR(ts), INTERVAL '1' MINUTE, INTERVAL '1' HOUR)) GROUP BY window_start, window_end".to_string(),
            "CUMULATE: this window TVF is not supported",
        ),
        (
            "SELECT window_start, COUNT(*) FROM TABLE(SESSION(TABLE t, DESCRIPTOR(ts), INTERVAL '1' MINUTE)) GROUP BY window_start, window_end".to_string(),
            "SESSION: this window TVF is not supported",
        ),
        (
            format!("SELECT window_start, COUNT(*) FROM {tumble} JOIN t AS u ON u.dev = dev GROUP BY window_start, window_end"),
            "a window TVF over a join is not supported",
        ),
        (
            "SELECT window_start, COUNT(*) FROM TABLE(TUMBLE(TABLE (SELECT * FROM t), DESCRIPTOR(ts), INTERVAL '1' MINUTE)) GROUP BY window_start, window_end".to_string(),
            "a window TVF over a subquery is not supported",
        ),
        (
            format!("SELECT dev, COUNT(*) FROM {tumble} GROUP BY dev"),
            "rows of a TVF without GROUP BY window_start, window_end are not supported",
        ),
        (
            format!("SELECT * FROM {tumble}"),
            "rows of a TVF without GROUP BY window_start, window_end are not supported",
        ),
        (
            format!("SELECT window_start, COUNT(*) FROM {tumble} WHERE window_start > now() GROUP BY window_start, window_end"),
            "window_start in WHERE",
        ),
        (
            format!("SELECT window_time, COUNT(*) FROM {tumble} GROUP BY window_start, window_end"),
            "window_time (Flink's time attribute of a window): not supported",
        ),
        (
            "SELECT window_start, COUNT(*) FROM TUMBLE(t, ts, INTERVAL '1 minute', INTERVAL '10 seconds') GROUP BY window_start".to_string(),
            "TUMBLE: an OFFSET (windows not aligned to the epoch) is not supported",
        ),
        (
            "SELECT window_start, COUNT(*) FROM HOP(t, ts, INTERVAL '1 minute') GROUP BY window_start".to_string(),
            "HOP: SIZE is missing",
        ),
        (
            "SELECT window_start, COUNT(*) FROM TUMBLE(t, ts, INTERVAL '2000000000 days') GROUP BY window_start".to_string(),
            "too long (at most 106,751,991 days)",
        ),
        (
            format!("SELECT window_start, COUNT(*) AS c FROM {tumble} GROUP BY window_start, window_end \
                     UNION ALL SELECT window_start, COUNT(*) AS c FROM HOP(t, ts, INTERVAL '1 minute', INTERVAL '2 minutes') GROUP BY window_start, window_end"),
            "a windowed aggregate under UNION ALL (or inside another query) is not supported",
        ),
    ];
    for (query, want) in cases {
        let dir = testkit::TempDir::new().unwrap();
        let e = pipeline(dir.path(), &format!("\nINSERT INTO f {query};"))
            .err()
            .unwrap_or_else(|| panic!("accepted: {query}"));
        let e = e.to_string();
        assert!(e.contains("line 6: INSERT INTO f"), "{query}: {e}");
        assert!(e.contains(want), "{query}: {e}");
    }
}
