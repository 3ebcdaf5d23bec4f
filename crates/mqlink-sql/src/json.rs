//! JSON access in queries, with the names and semantics of
//! datafusion-functions-json (which needs the whole `datafusion` crate, so
//! it is written here on serde_json): `json_get`, `json_get_str`,
//! `json_get_int`, `json_get_float`, `json_get_bool`, `json_get_json`,
//! `json_as_text`, `json_contains`, `json_length`, and the operators
//! `->` (json_get) and `->>` (json_as_text).
//!
//! Every function takes the JSON (a TEXT or JSON column, or BYTEA holding
//! UTF-8) and a path of keys: text for an object's key, an integer for an
//! array's index (negative counts from the end). A value that is not JSON,
//! a missing key or a value of another type gives NULL, never an error.

use std::sync::Arc;

use datafusion_common::arrow::array::{
    Array, ArrayRef, AsArray, BooleanBuilder, Float64Builder, Int64Builder, StringBuilder,
};
use datafusion_common::arrow::compute::cast;
use datafusion_common::arrow::datatypes::{DataType, Field, FieldRef, Int64Type};
use datafusion_common::{plan_err, DFSchema, Result, ScalarValue};
use datafusion_expr::expr::{Alias, ScalarFunction};
use datafusion_expr::planner::{ExprPlanner, PlannerResult, RawBinaryExpr};
use datafusion_expr::{
    ColumnarValue, Expr, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    Volatility,
};
use datafusion_sql::sqlparser::ast::BinaryOperator;
use serde_json::Value as Json;

use crate::plan::JSON_TYPE;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    Get,
    GetStr,
    GetInt,
    GetFloat,
    GetBool,
    GetJson,
    AsText,
    Contains,
    Length,
}

const KINDS: [(Kind, &str); 9] = [
    (Kind::Get, "json_get"),
    (Kind::GetStr, "json_get_str"),
    (Kind::GetInt, "json_get_int"),
    (Kind::GetFloat, "json_get_float"),
    (Kind::GetBool, "json_get_bool"),
    (Kind::GetJson, "json_get_json"),
    (Kind::AsText, "json_as_text"),
    (Kind::Contains, "json_contains"),
    (Kind::Length, "json_length"),
];

#[derive(Debug, PartialEq, Eq, Hash)]
struct JsonFn {
    kind: Kind,
    name: &'static str,
    signature: Signature,
}

/// The JSON functions, to register by name.
pub fn functions() -> Vec<Arc<ScalarUDF>> {
    KINDS.iter().map(|&(kind, _)| function(kind)).collect()
}

fn function(kind: Kind) -> Arc<ScalarUDF> {
    let name = KINDS
        .iter()
        .find(|(k, _)| *k == kind)
        .map_or("", |(_, n)| n);
    Arc::new(ScalarUDF::new_from_impl(JsonFn {
        kind,
        name,
        signature: Signature::user_defined(Volatility::Immutable),
    }))
}

impl ScalarUDFImpl for JsonFn {
    fn name(&self) -> &str {
        self.name
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        let Some((json, path)) = arg_types.split_first() else {
            return plan_err!(
                "{}(json, key, …) needs the JSON as its first argument",
                self.name
            );
        };
        let json = match json {
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Null => {
                DataType::Utf8
            }
            DataType::Binary | DataType::LargeBinary | DataType::BinaryView => DataType::Binary,
            other => {
                return plan_err!(
                    "{}: the JSON must be TEXT, JSON or BYTEA, not {other}",
                    self.name
                )
            }
        };
        let mut out = vec![json];
        for (i, t) in path.iter().enumerate() {
            out.push(match t {
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => DataType::Utf8,
                t if t.is_integer() => DataType::Int64,
                DataType::Null => DataType::Null,
                other => {
                    return plan_err!(
                        "{}: key {} must be text (an object's key) or an integer (an array's index), not {other}",
                        self.name,
                        i + 1
                    )
                }
            });
        }
        Ok(out)
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(match self.kind {
            Kind::Get | Kind::GetStr | Kind::GetJson | Kind::AsText => DataType::Utf8,
            Kind::GetInt | Kind::Length => DataType::Int64,
            Kind::GetFloat => DataType::Float64,
            Kind::GetBool | Kind::Contains => DataType::Boolean,
        })
    }

    /// `json_get`'s result is JSON (a sink writes it as JSON, `->` chains).
    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        let types: Vec<DataType> = args
            .arg_fields
            .iter()
            .map(|f| f.data_type().clone())
            .collect();
        let f = Field::new(self.name, self.return_type(&types)?, true);
        Ok(Arc::new(if self.kind == Kind::Get {
            f.with_metadata([(JSON_TYPE.0.to_string(), JSON_TYPE.1.to_string())].into())
        } else {
            f
        }))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let scalar = args
            .args
            .iter()
            .all(|a| matches!(a, ColumnarValue::Scalar(_)));
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        // Only scalars: one value, for every row.
        let n = if scalar { 1 } else { args.number_rows };
        let out = evaluate(self.kind, &arrays, n)?;
        Ok(if scalar && out.len() == 1 {
            ColumnarValue::Scalar(ScalarValue::try_from_array(&out, 0)?)
        } else {
            ColumnarValue::Array(out)
        })
    }
}

/// One step of a path.
enum Key<'a> {
    Field(&'a str),
    Index(i64),
}

/// The value at `path` in `v`, if there is one.
fn find<'a>(v: &'a Json, path: &[Key]) -> Option<&'a Json> {
    let mut v = v;
    for k in path {
        v = match (k, v) {
            (Key::Field(f), Json::Object(m)) => m.get(*f)?,
            (Key::Index(i), Json::Array(a)) => {
                let i = if *i < 0 {
                    a.len().checked_sub(i.unsigned_abs() as usize)?
                } else {
                    usize::try_from(*i).ok()?
                };
                a.get(i)?
            }
            _ => return None,
        };
    }
    Some(v)
}

fn as_int(v: &Json) -> Option<i64> {
    match v {
        Json::Number(n) => n.as_i64().or_else(|| {
            // A float with an integral value (1.0, 2e3) is that integer.
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && *f >= i64::MIN as f64 && *f < i64::MAX as f64)
                .map(|f| f as i64)
        }),
        Json::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn as_float(v: &Json) -> Option<f64> {
    match v {
        Json::Number(n) => n.as_f64(),
        Json::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn evaluate(kind: Kind, arrays: &[ArrayRef], n: usize) -> Result<ArrayRef> {
    let Some((json, path)) = arrays.split_first() else {
        return plan_err!("a JSON function needs its JSON argument");
    };
    // The JSON of each row, as text (NULL when it is not text at all).
    let text: Vec<Option<&str>> = match json.data_type() {
        DataType::Utf8 => {
            let a = json.as_string::<i32>();
            (0..n)
                .map(|i| (i < a.len() && a.is_valid(i)).then(|| a.value(i)))
                .collect()
        }
        DataType::Binary => {
            let a = json.as_binary::<i32>();
            (0..n)
                .map(|i| {
                    (i < a.len() && a.is_valid(i))
                        .then(|| std::str::from_utf8(a.value(i)).ok())
                        .flatten()
                })
                .collect()
        }
        _ => vec![None; n],
    };
    let path: Vec<ArrayRef> = path
        .iter()
        .map(|p| match p.data_type() {
            DataType::Utf8 | DataType::Int64 | DataType::Null => Ok(p.clone()),
            t if t.is_integer() => cast(p, &DataType::Int64).map_err(Into::into),
            _ => cast(p, &DataType::Utf8).map_err(Into::into),
        })
        .collect::<Result<_>>()?;
    // The value at the path of row `i`, parsed.
    let parsed: Vec<Option<Json>> = text
        .iter()
        .map(|t| t.and_then(|t| serde_json::from_str::<Json>(t).ok()))
        .collect();
    let at = |i: usize| keys_at(&path, i).and_then(|k| find(parsed[i].as_ref()?, &k));
    Ok(match kind {
        Kind::Get | Kind::GetJson | Kind::AsText | Kind::GetStr => {
            let mut b = StringBuilder::with_capacity(n, n * 8);
            for i in 0..n {
                let v = at(i);
                b.append_option(match (kind, v) {
                    (_, None) => None,
                    (Kind::GetJson, Some(v)) => Some(v.to_string()),
                    (_, Some(Json::Null)) => None,
                    (Kind::GetStr, Some(Json::String(s))) => Some(s.clone()),
                    (Kind::GetStr, Some(_)) => None,
                    (Kind::AsText, Some(Json::String(s))) => Some(s.clone()),
                    (_, Some(v)) => Some(v.to_string()),
                });
            }
            Arc::new(b.finish())
        }
        Kind::GetInt | Kind::Length => {
            let mut b = Int64Builder::with_capacity(n);
            for i in 0..n {
                b.append_option(at(i).and_then(|v| match kind {
                    Kind::GetInt => as_int(v),
                    _ => match v {
                        Json::Array(a) => Some(a.len() as i64),
                        Json::Object(m) => Some(m.len() as i64),
                        _ => None,
                    },
                }));
            }
            Arc::new(b.finish())
        }
        Kind::GetFloat => {
            let mut b = Float64Builder::with_capacity(n);
            for i in 0..n {
                b.append_option(at(i).and_then(as_float));
            }
            Arc::new(b.finish())
        }
        Kind::GetBool => {
            let mut b = BooleanBuilder::with_capacity(n);
            for i in 0..n {
                b.append_option(at(i).and_then(Json::as_bool));
            }
            Arc::new(b.finish())
        }
        Kind::Contains => {
            let mut b = BooleanBuilder::with_capacity(n);
            for (i, j) in parsed.iter().enumerate() {
                // NULL for what is not JSON; false for a path not there.
                b.append_option(j.as_ref().and_then(|j| {
                    let keys = keys_at(&path, i)?;
                    Some(find(j, &keys).is_some())
                }));
            }
            Arc::new(b.finish())
        }
    })
}

/// The path of row `i` (NULL when a key is NULL).
fn keys_at(path: &[ArrayRef], i: usize) -> Option<Vec<Key<'_>>> {
    path.iter()
        .map(|p| {
            if i >= p.len() || p.is_null(i) {
                return None;
            }
            match p.data_type() {
                DataType::Int64 => Some(Key::Index(p.as_primitive::<Int64Type>().value(i))),
                DataType::Utf8 => Some(Key::Field(p.as_string::<i32>().value(i))),
                _ => None,
            }
        })
        .collect()
}

/// `->` and `->>`, planned as `json_get` and `json_as_text` (a chain
/// `a -> 'b' ->> 0` is one path: `json_as_text(a, 'b', 0)`).
#[derive(Debug, Default)]
pub struct JsonOperators;

impl ExprPlanner for JsonOperators {
    fn plan_binary_op(
        &self,
        expr: RawBinaryExpr,
        _schema: &DFSchema,
    ) -> Result<PlannerResult<RawBinaryExpr>> {
        let (kind, op) = match expr.op {
            BinaryOperator::Arrow => (Kind::Get, "->"),
            BinaryOperator::LongArrow => (Kind::AsText, "->>"),
            _ => return Ok(PlannerResult::Original(expr)),
        };
        // The column is named as written (`payload -> 'a'`), not after the function.
        let name = format!("{} {op} {}", written(&expr.left), written(&expr.right));
        let left = match expr.left {
            Expr::Alias(a) => *a.expr,
            e => e,
        };
        // A chain (`a -> 'b' -> 0`) is one path: each row's JSON is parsed
        // once, not once per step.
        let args = match left {
            Expr::ScalarFunction(f) if f.func.name() == "json_get" => {
                let mut args = f.args;
                args.push(expr.right);
                args
            }
            left => vec![left, expr.right],
        };
        Ok(PlannerResult::Planned(Expr::Alias(Alias::new(
            Expr::ScalarFunction(ScalarFunction {
                func: function(kind),
                args,
            }),
            None::<&str>,
            name,
        ))))
    }
}

fn written(e: &Expr) -> String {
    match e {
        Expr::Column(c) => c.name.clone(),
        Expr::Alias(a) => a.name.clone(),
        Expr::Literal(ScalarValue::Utf8(Some(s)), _) => format!("'{s}'"),
        Expr::Literal(v, _) => v.to_string(),
        e => e.schema_name().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion_common::arrow::array::StringArray;

    /// Literal arguments only (a call the planner did not fold): one
    /// value, the same for each of the batch's rows.
    #[test]
    fn scalar_arguments_give_one_value_for_every_row() {
        use datafusion_common::arrow::datatypes::Field;
        let f = function(Kind::GetStr);
        let text = |s: &str| ColumnarValue::Scalar(ScalarValue::Utf8(Some(s.into())));
        let args = ScalarFunctionArgs {
            args: vec![text(r#"{"a": "x"}"#), text("a")],
            arg_fields: vec![Arc::new(Field::new("j", DataType::Utf8, true)); 2],
            number_rows: 3,
            return_field: Arc::new(Field::new("v", DataType::Utf8, true)),
            config_options: Arc::default(),
        };
        match f.invoke_with_args(args).unwrap() {
            ColumnarValue::Scalar(v) => assert_eq!(v, ScalarValue::Utf8(Some("x".into()))),
            other => panic!("{other:?}"),
        }
    }

    fn run(kind: Kind, json: &[Option<&str>], path: Vec<ArrayRef>) -> ArrayRef {
        let mut args: Vec<ArrayRef> = vec![Arc::new(StringArray::from(json.to_vec()))];
        args.extend(path);
        evaluate(kind, &args, json.len()).unwrap()
    }

    fn key(k: &str, n: usize) -> ArrayRef {
        Arc::new(StringArray::from(vec![k; n]))
    }
    fn idx(i: i64, n: usize) -> ArrayRef {
        Arc::new(datafusion_common::arrow::array::Int64Array::from(vec![
            i;
            n
        ]))
    }

    fn strings(a: &ArrayRef) -> Vec<Option<String>> {
        let a = a.as_string::<i32>();
        (0..a.len())
            .map(|i| a.is_valid(i).then(|| a.value(i).to_string()))
            .collect()
    }

    const DOCS: [Option<&str>; 6] = [
        Some(r#"{"a": {"b": [10, "x", 2.0, true, null]}, "s": "text", "n": 3}"#),
        Some(r#"{"a": {"b": []}}"#),
        Some("not json {"),
        None,
        Some(r#"[1, 2]"#),
        Some(r#"{"a": {"b": ["12", {"c": 1}]}}"#),
    ];

    /// A chain of operators (planned as one path) gives what the nested
    /// functions give, step by step.
    #[test]
    fn a_chain_is_the_nested_calls() {
        use mqlink::format::Value;
        use mqlink_pipeline::batch::Item;
        let p = crate::parse(
            "CREATE TABLE t (j JSON) WITH (connector = 'mqtt', type = 'source', url = 'tcp://h:1883', topic = 'a');
             CREATE TABLE f WITH (connector = 'file', path = 'out.jsonl');
             INSERT INTO f SELECT j -> 'a' -> 0 ->> 'b' AS x, json_as_text(json_get(json_get(j, 'a'), 0), 'b') AS y,
                j -> 'a' -> -1 AS u, json_get(json_get(j, 'a'), -1) AS v FROM t;",
            &|_| None,
        )
        .unwrap();
        let items = [
            serde_json::json!({"a": [{"b": 1}, {"b": "two"}]}),
            serde_json::json!({"a": [{"b": {"c": [1]}}]}),
            serde_json::json!({"a": "text"}),
            serde_json::json!({"a": []}),
            serde_json::json!([1]),
        ]
        .into_iter()
        .map(|j| Item {
            topic: Some("a".into()),
            origin: None,
            payload: bytes::Bytes::new(),
            // A lone JSON column is the whole message (as Laminar has it):
            // the source decodes it without a schema.
            value: Value::Json(j),
        })
        .collect();
        let out = p.transforms["t"]
            .make()
            .apply(items, tokio::time::Instant::now());
        assert!(out.faults.is_empty());
        let rows: Vec<Vec<Value>> = out
            .items
            .into_iter()
            .map(|i| match i.value {
                Value::Row(r) => r.into_iter().map(|(_, v)| v).collect(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(rows.len(), 5);
        for r in &rows {
            assert_eq!((&r[0], &r[2]), (&r[1], &r[3]), "{r:?}");
        }
        assert_eq!(rows[0][0], Value::Text("1".into()));
        assert_eq!(rows[0][2], Value::Json(serde_json::json!({"b": "two"})));
        assert_eq!(rows[1][0], Value::Text(r#"{"c":[1]}"#.into()));
        assert_eq!(rows[2][0], Value::Null);
    }

    /// In a pipeline's query: TEXT and JSON columns, bad JSON is NULL (not
    /// a record fault), `->` gives JSON to the sinks.
    #[test]
    fn in_a_pipeline_stage() {
        use mqlink::format::Value;
        use mqlink_pipeline::batch::Item;
        let p = crate::parse(
            "CREATE TABLE t (s TEXT, j JSON) WITH (connector = 'mqtt', type = 'source', url = 'tcp://h:1883', topic = 'a');
             CREATE TABLE f WITH (connector = 'file', path = 'out.jsonl');
             INSERT INTO f SELECT s ->> 'k' AS k, j -> 'a' -> 0 AS first, json_get_float(j, 'v') * 2 AS v FROM t WHERE json_contains(j, 'a') OR j IS NULL;",
            &|_| None,
        )
        .unwrap();
        let item = |s: Option<&str>, j: Option<serde_json::Value>| Item {
            topic: Some("a".into()),
            origin: None,
            payload: bytes::Bytes::new(),
            value: Value::Row(vec![
                ("s".into(), s.map_or(Value::Null, |s| Value::Text(s.into()))),
                ("j".into(), j.map_or(Value::Null, Value::Json)),
            ]),
        };
        let out = p.transforms["t"].make().apply(
            vec![
                item(
                    Some(r#"{"k": "x"}"#),
                    Some(serde_json::json!({"a": [{"b": 1}], "v": 1.5})),
                ),
                item(
                    Some("not json"),
                    Some(serde_json::json!({"a": "text", "v": "2"})),
                ),
                item(Some("{"), Some(serde_json::json!({"no_a": 1}))),
                item(None, None),
            ],
            tokio::time::Instant::now(),
        );
        assert!(
            out.faults.is_empty(),
            "{:?}",
            out.faults.iter().map(|f| &f.reason).collect::<Vec<_>>()
        );
        let rows: Vec<Vec<Value>> = out
            .items
            .into_iter()
            .map(|i| match i.value {
                Value::Row(r) => r.into_iter().map(|(_, v)| v).collect(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            rows,
            vec![
                vec![
                    Value::Text("x".into()),
                    Value::Json(serde_json::json!({"b": 1})),
                    Value::Double(3.0)
                ],
                vec![Value::Null, Value::Null, Value::Double(4.0)],
                vec![Value::Null, Value::Null, Value::Null],
            ]
        );
    }

    #[test]
    fn paths_types_and_bad_json() {
        let n = DOCS.len();
        let b = || vec![key("a", n), key("b", n)];
        let with = |i: i64| {
            let mut p = b();
            p.push(idx(i, n));
            p
        };
        assert_eq!(
            strings(&run(Kind::Get, &DOCS, with(0))),
            [
                Some("10".into()),
                None,
                None,
                None,
                None,
                Some("\"12\"".into())
            ]
        );
        assert_eq!(
            strings(&run(Kind::AsText, &DOCS, with(1))),
            [
                Some("x".into()),
                None,
                None,
                None,
                None,
                Some(r#"{"c":1}"#.into())
            ]
        );
        assert_eq!(
            strings(&run(Kind::GetStr, &DOCS, with(1))),
            [Some("x".into()), None, None, None, None, None]
        );
        // Negative indexes count from the end; JSON null is SQL NULL.
        assert_eq!(
            strings(&run(Kind::AsText, &DOCS, with(-1))),
            [None, None, None, None, None, Some(r#"{"c":1}"#.into())]
        );
        assert_eq!(
            strings(&run(Kind::GetJson, &DOCS, with(-1))),
            [
                Some("null".into()),
                None,
                None,
                None,
                None,
                Some(r#"{"c":1}"#.into())
            ]
        );
        let ints = run(Kind::GetInt, &DOCS, with(0));
        let ints = ints.as_primitive::<Int64Type>();
        assert_eq!(
            (0..n)
                .map(|i| ints.is_valid(i).then(|| ints.value(i)))
                .collect::<Vec<_>>(),
            [Some(10), None, None, None, None, Some(12)]
        );
        let f = run(Kind::GetFloat, &DOCS, with(2));
        let f = f.as_primitive::<datafusion_common::arrow::datatypes::Float64Type>();
        assert!(f.is_valid(0) && f.value(0) == 2.0 && f.null_count() == n - 1);
        // 2.0 is an integral float: json_get_int takes it.
        let i2 = run(Kind::GetInt, &DOCS, with(2));
        assert_eq!(i2.as_primitive::<Int64Type>().value(0), 2);
        let bools = run(Kind::GetBool, &DOCS, with(3));
        let bools = bools.as_boolean();
        assert!(bools.value(0) && bools.null_count() == n - 1);
        let len = run(Kind::Length, &DOCS, b());
        let len = len.as_primitive::<Int64Type>();
        assert_eq!(
            (0..n)
                .map(|i| len.is_valid(i).then(|| len.value(i)))
                .collect::<Vec<_>>(),
            [Some(5), Some(0), None, None, None, Some(2)]
        );
        let has = run(Kind::Contains, &DOCS, vec![key("n", n)]);
        let has = has.as_boolean();
        assert_eq!(
            (0..n)
                .map(|i| has.is_valid(i).then(|| has.value(i)))
                .collect::<Vec<_>>(),
            [
                Some(true),
                Some(false),
                None,
                None,
                Some(false),
                Some(false)
            ]
        );
        // Index 0 of an array at the top; a text key on an array is missing.
        assert_eq!(
            strings(&run(Kind::Get, &DOCS, vec![idx(1, n)]))[4],
            Some("2".into())
        );
        assert_eq!(strings(&run(Kind::Get, &DOCS, vec![key("0", n)]))[4], None);
        // No path: the document itself; huge indexes are missing, not a panic.
        assert_eq!(
            strings(&run(Kind::AsText, &DOCS, vec![]))[4],
            Some("[1,2]".into())
        );
        for i in [i64::MIN, i64::MAX, -3] {
            assert_eq!(strings(&run(Kind::Get, &DOCS, vec![idx(i, n)]))[4], None);
        }
    }
}
