//! What evaluating SQL may make: bytes and time, and whether its answer
//! is still wanted. DataFusion's execution engine (and its memory pool) is
//! not built here, so the checks sit where memory grows without bound:
//! before a function that multiplies its input (`repeat`, `lpad`, `rpad`,
//! `replace`, `concat`) allocates, after each `||`, and (for /query)
//! after each operator. `repeat('x', 2000000000)` is refused before a
//! byte of it exists.
//!
//! A /query runs on a thread of its own ([`crate::depth::on_deep_stack`])
//! under [`within`], which sets its budget for that thread; elsewhere (a
//! pipeline's stages) one call may make at most [`CALL_LIMIT`] bytes.

use std::cell::RefCell;
use std::sync::atomic::Ordering;
use std::time::Instant;

use datafusion_common::arrow::array::{Array, AsArray, Int64Array};
use datafusion_common::arrow::compute::cast;
use datafusion_common::arrow::compute::kernels::length::length;
use datafusion_common::arrow::datatypes::{DataType, FieldRef, Int64Type};
use datafusion_common::tree_node::{Transformed, TreeNode};
use datafusion_common::{exec_datafusion_err, Result, ScalarValue};
use datafusion_expr::expr::ScalarFunction;
use datafusion_expr::{
    ColumnarValue, Documentation, Expr, Operator, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF,
    ScalarUDFImpl, Signature, Volatility,
};
use mqlink_pipeline::status::QueryLimits;

/// Bytes one function call may make outside a /query (a pipeline's
/// stage evaluating a batch).
pub const CALL_LIMIT: u64 = 256 << 20;

/// Pairs of characters one call of `levenshtein` may compare: a call
/// cannot be stopped midway, and 10^8 pairs take about a second.
pub const MAX_COMPARE: u64 = 100_000_000;

struct Budget {
    limits: QueryLimits,
    /// Bytes charged so far (never given back: an upper bound).
    used: u64,
    /// Bytes of the tables the query reads: in memory already, so an
    /// operator's rows may take that much beyond the budget.
    tables: u64,
}

thread_local! {
    static BUDGET: RefCell<Option<Budget>> = const { RefCell::new(None) };
}

/// Runs `f` (a whole query) on this thread within `limits`.
pub fn within<T>(limits: &QueryLimits, f: impl FnOnce() -> T) -> T {
    BUDGET.set(Some(Budget {
        limits: limits.clone(),
        used: 0,
        tables: 0,
    }));
    let r = f();
    BUDGET.set(None);
    r
}

const MIB: u64 = 1 << 20;

/// Charges `bytes` that `what` is about to make (0: only whether the
/// query may go on); the error says which limit it passed.
pub fn charge(what: &str, bytes: u64) -> Result<(), String> {
    BUDGET.with_borrow_mut(|b| {
        let Some(b) = b else {
            if bytes > CALL_LIMIT {
                return Err(format!(
                    "{what} would make {bytes} bytes; one call may make at most {} MiB",
                    CALL_LIMIT / MIB
                ));
            }
            return Ok(());
        };
        if b.limits.cancel.load(Ordering::Relaxed) {
            return Err("the query was stopped: its answer is no longer wanted".into());
        }
        if Instant::now() > b.limits.deadline {
            return Err("the query ran out of time (the limit of /query) and was stopped".into());
        }
        let used = b.used.saturating_add(bytes);
        if used > b.limits.memory {
            return Err(format!(
                "{what} would make {bytes} bytes ({used} with what the query made before): a query may use at most {} MiB; make smaller values or fewer rows (WHERE, LIMIT)",
                b.limits.memory / MIB
            ));
        }
        b.used = used;
        Ok(())
    })
}

/// The query reads tables of `bytes` (see [`fits`]).
pub fn reads(bytes: usize) {
    BUDGET.with_borrow_mut(|b| {
        if let Some(b) = b {
            b.tables = b.tables.saturating_add(bytes as u64);
        }
    });
}

/// Whether an operator's rows of `bytes` fit the query's budget beside
/// the tables it reads (not charged: they replace their input).
pub fn fits(what: &str, bytes: usize) -> Result<(), String> {
    charge(what, 0)?;
    BUDGET.with_borrow(|b| match b {
        Some(b) if bytes as u64 > b.limits.memory.saturating_add(b.tables) => Err(format!(
            "{what} takes {bytes} bytes: a query may use at most {} MiB; select fewer rows or columns (WHERE, LIMIT)",
            b.limits.memory / MIB
        )),
        _ => Ok(()),
    })
}

/// `e` with the functions that multiply their input checked before they
/// run, and each `||` counted after.
pub fn guard(e: Expr) -> Result<Expr> {
    e.transform_up(|e| {
        Ok(match e {
            Expr::ScalarFunction(f) => match Growth::of(f.name()) {
                Some(growth) => {
                    let func = ScalarUDF::new_from_impl(Bounded {
                        inner: f.func.as_ref().clone(),
                        growth,
                    });
                    Transformed::yes(Expr::ScalarFunction(ScalarFunction::new_udf(
                        func.into(),
                        f.args,
                    )))
                }
                _ => Transformed::no(Expr::ScalarFunction(f)),
            },
            Expr::BinaryExpr(b) if b.op == Operator::StringConcat => {
                let concat = Expr::BinaryExpr(b);
                let counted = ScalarUDF::new_from_impl(Bounded::counted());
                Transformed::yes(Expr::ScalarFunction(ScalarFunction::new_udf(
                    counted.into(),
                    vec![concat],
                )))
            }
            e => Transformed::no(e),
        })
    })
    .map(|t| t.data)
}

/// How a function's output grows with its arguments.
#[derive(Debug, PartialEq, Eq, Hash, Clone, Copy)]
enum Growth {
    /// `repeat(s, n)`: |s| × n.
    Repeat,
    /// `lpad(s, n, …)`, `rpad`: |s| + 4 n (a character is 4 bytes at most).
    Pad,
    /// `replace(s, from, to)`: |s| + (|s| + 1) × |to|.
    Replace,
    /// `concat(…)`: the arguments; `concat_ws(sep, …)` the separator once more per argument.
    Concat,
    /// Whatever the argument is (counted after it was made: `a || b`).
    Counted,
    /// `levenshtein(a, b)`: |a| × |b| steps, not bytes.
    Compare,
}

impl Growth {
    fn of(name: &str) -> Option<Growth> {
        Some(match name {
            "repeat" => Growth::Repeat,
            "lpad" | "rpad" => Growth::Pad,
            "replace" => Growth::Replace,
            "concat" | "concat_ws" => Growth::Concat,
            "levenshtein" => Growth::Compare,
            _ => return None,
        })
    }
}

/// A function checked against the budget before it runs.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Bounded {
    inner: ScalarUDF,
    growth: Growth,
}

/// `||`'s result, passed through once counted.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Identity {
    signature: Signature,
}

impl Bounded {
    fn counted() -> Bounded {
        Bounded {
            inner: ScalarUDF::new_from_impl(Identity {
                signature: Signature::any(1, Volatility::Immutable),
            }),
            growth: Growth::Counted,
        }
    }
}

impl ScalarUDFImpl for Identity {
    fn name(&self) -> &str {
        "counted_bytes"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        Ok(arg_types.first().cloned().unwrap_or(DataType::Null))
    }
    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        args.arg_fields
            .first()
            .cloned()
            .ok_or_else(|| exec_datafusion_err!("counted_bytes takes one argument"))
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        args.args
            .into_iter()
            .next()
            .ok_or_else(|| exec_datafusion_err!("counted_bytes takes one argument"))
    }
}

impl ScalarUDFImpl for Bounded {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }
    fn signature(&self) -> &Signature {
        self.inner.signature()
    }
    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }
    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        self.inner.return_field_from_args(args)
    }
    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }
    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let what = match self.growth {
            Growth::Counted => "||".to_string(),
            _ => format!("{}()", self.inner.name()),
        };
        let bytes = bound(self.growth, &args.args, args.number_rows)?;
        if self.growth == Growth::Compare {
            if bytes > MAX_COMPARE {
                return Err(exec_datafusion_err!(
                    "{what} would compare {bytes} pairs of characters: at most {MAX_COMPARE} in one call (it cannot be stopped midway)"
                ));
            }
            charge(&what, 0).map_err(|e| exec_datafusion_err!("{e}"))?;
        } else {
            charge(&what, bytes).map_err(|e| exec_datafusion_err!("{e}"))?;
        }
        self.inner.invoke_with_args(args)
    }
}

/// A column of lengths (of text) or of numbers, or one for every row.
enum PerRow {
    One(Option<i64>),
    Rows(Int64Array),
}

impl PerRow {
    fn get(&self, i: usize) -> u64 {
        let v = match self {
            PerRow::One(v) => *v,
            PerRow::Rows(a) => a.is_valid(i).then(|| a.value(i)),
        };
        v.unwrap_or(0).max(0) as u64
    }

    /// Byte lengths of text (or of any value, as text).
    fn lengths(v: &ColumnarValue) -> Result<PerRow> {
        Ok(match v {
            ColumnarValue::Scalar(s) if s.is_null() => PerRow::One(None),
            ColumnarValue::Scalar(
                ScalarValue::Utf8(Some(s))
                | ScalarValue::LargeUtf8(Some(s))
                | ScalarValue::Utf8View(Some(s)),
            ) => PerRow::One(Some(s.len() as i64)),
            ColumnarValue::Scalar(s) => PerRow::One(Some(s.size() as i64)),
            ColumnarValue::Array(a) => match length(a) {
                Ok(l) => PerRow::Rows(
                    cast(&l, &DataType::Int64)?
                        .as_primitive::<Int64Type>()
                        .clone(),
                ),
                // Not text: its memory spread over its rows.
                Err(_) => PerRow::One(Some((a.get_array_memory_size() / a.len().max(1)) as i64)),
            },
        })
    }

    /// Numbers (a count of repeats, a padded length).
    fn numbers(v: &ColumnarValue) -> Result<PerRow> {
        Ok(match v {
            ColumnarValue::Scalar(s) if s.is_null() => PerRow::One(None),
            ColumnarValue::Scalar(s) => match s.cast_to(&DataType::Int64)? {
                ScalarValue::Int64(n) => PerRow::One(n),
                _ => PerRow::One(None),
            },
            ColumnarValue::Array(a) => PerRow::Rows(
                cast(a, &DataType::Int64)?
                    .as_primitive::<Int64Type>()
                    .clone(),
            ),
        })
    }
}

/// At most how many bytes a function makes of `args` over `rows` rows.
fn bound(growth: Growth, args: &[ColumnarValue], rows: usize) -> Result<u64> {
    if growth == Growth::Counted {
        return Ok(args
            .iter()
            .map(|a| match a {
                ColumnarValue::Scalar(s) => s.size() as u64,
                ColumnarValue::Array(a) => a.get_array_memory_size() as u64,
            })
            .sum());
    }
    let rows = if args.iter().all(|a| matches!(a, ColumnarValue::Scalar(_))) {
        1
    } else {
        rows
    };
    let lengths = args
        .iter()
        .map(PerRow::lengths)
        .collect::<Result<Vec<_>>>()?;
    let number = |i: usize| match args.get(i) {
        Some(a) => PerRow::numbers(a),
        None => Ok(PerRow::One(None)),
    };
    let len = |i: usize, row: usize| lengths.get(i).map_or(0, |l| l.get(row));
    let mut total = 0u64;
    match growth {
        Growth::Repeat => {
            let n = number(1)?;
            for r in 0..rows {
                total = total.saturating_add(len(0, r).saturating_mul(n.get(r)));
            }
        }
        Growth::Pad => {
            let n = number(1)?;
            for r in 0..rows {
                total = total.saturating_add(len(0, r).saturating_add(n.get(r).saturating_mul(4)));
            }
        }
        Growth::Replace => {
            for r in 0..rows {
                let s = len(0, r);
                total = total.saturating_add(s.saturating_add((s + 1).saturating_mul(len(2, r))));
            }
        }
        Growth::Compare => {
            for r in 0..rows {
                total = total.saturating_add(len(0, r).saturating_mul(len(1, r)));
            }
        }
        Growth::Concat | Growth::Counted => {
            let sep = len(0, 0);
            for r in 0..rows {
                let all: u64 = (0..args.len()).map(|i| len(i, r)).sum();
                total = total.saturating_add(all.saturating_add(sep * args.len() as u64));
            }
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    use std::time::Duration;

    fn limits(memory: u64) -> QueryLimits {
        QueryLimits {
            memory,
            deadline: Instant::now() + Duration::from_secs(60),
            cancel: Arc::new(AtomicBool::new(false)),
        }
    }

    #[test]
    fn charges_add_up_to_the_budget_and_stop_when_cancelled() {
        let l = limits(100);
        within(&l, || {
            assert!(charge("a", 60).is_ok());
            let e = charge("repeat()", 60).unwrap_err();
            assert!(
                e.contains("repeat() would make 60 bytes (120 with what"),
                "{e}"
            );
        });
        // Outside a query only one call's size counts.
        assert!(charge("a", CALL_LIMIT).is_ok());
        assert!(charge("a", CALL_LIMIT + 1).is_err());
        within(&l, || {
            l.cancel.store(true, Ordering::Relaxed);
            assert!(charge("a", 0).unwrap_err().contains("stopped"));
        });
    }

    #[test]
    fn bounds_of_growing_functions() {
        let s = |v: &str| ColumnarValue::Scalar(ScalarValue::Utf8(Some(v.into())));
        let n = |v: i64| ColumnarValue::Scalar(ScalarValue::Int64(Some(v)));
        assert_eq!(
            bound(Growth::Repeat, &[s("ab"), n(2_000_000_000)], 10).unwrap(),
            4_000_000_000
        );
        assert_eq!(bound(Growth::Repeat, &[s("ab"), n(-3)], 10).unwrap(), 0);
        assert_eq!(bound(Growth::Pad, &[s("ab"), n(10)], 1).unwrap(), 42);
        assert_eq!(
            bound(Growth::Replace, &[s("aaa"), s("a"), s("xyz")], 1).unwrap(),
            15
        );
        assert_eq!(bound(Growth::Compare, &[s("aaa"), s("ab")], 1).unwrap(), 6);
        let col = ColumnarValue::Array(Arc::new(Int64Array::from(vec![Some(1), None, Some(5)])));
        assert_eq!(bound(Growth::Repeat, &[s("xy"), col], 3).unwrap(), 12);
    }
}
