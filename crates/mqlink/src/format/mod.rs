//! Payload formats: `raw_bytes` and `json`, optionally with a typed schema
//! of columns (text, bigint, double, boolean, timestamp, json, bytea);
//! Avro; Sparkplug B ([`sparkplug`], several rows per message).
//!
//! Decoding is total: any payload gives a value or a [`FormatError`] naming
//! the field and what is wrong — never a panic (see the proptests).

pub mod avro;
pub mod registry;
pub mod sparkplug;
mod timestamp;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;

pub use avro::AvroSchema;
pub use registry::Registry;
pub use timestamp::{format_rfc3339_micros, parse_rfc3339_micros, write_rfc3339_micros};

/// A column type of a schema.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColumnType {
    /// Text.
    Text,
    /// A 64-bit integer.
    BigInt,
    /// A 64-bit float.
    Double,
    /// A boolean.
    Boolean,
    /// RFC 3339 text or epoch milliseconds; kept as microseconds since the epoch.
    Timestamp,
    /// Any JSON value, kept as JSON.
    Json,
    /// Base64 text in JSON.
    Bytea,
}

impl FromStr for ColumnType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s.trim().to_ascii_lowercase().as_str() {
            "text" | "string" | "varchar" => ColumnType::Text,
            "bigint" | "int" | "integer" | "int8" | "long" => ColumnType::BigInt,
            "double" | "float" | "float8" | "real" => ColumnType::Double,
            "boolean" | "bool" => ColumnType::Boolean,
            "timestamp" | "timestamptz" => ColumnType::Timestamp,
            "json" | "jsonb" => ColumnType::Json,
            "bytea" | "bytes" => ColumnType::Bytea,
            other => {
                return Err(format!(
                    "unknown column type {other:?}: use text, bigint, double, boolean, timestamp, json or bytea"
                ))
            }
        })
    }
}

impl fmt::Display for ColumnType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ColumnType::Text => "text",
            ColumnType::BigInt => "bigint",
            ColumnType::Double => "double",
            ColumnType::Boolean => "boolean",
            ColumnType::Timestamp => "timestamp",
            ColumnType::Json => "json",
            ColumnType::Bytea => "bytea",
        })
    }
}

/// Named, typed columns, in order. Columns are nullable, as in Laminar's
/// and Arroyo's tables: a missing field or JSON `null` reads as NULL,
/// except in the columns named in `not_null`.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Schema {
    /// The columns, in order.
    pub columns: Vec<(Arc<str>, ColumnType)>,
    /// Columns whose value must be present and not null (`"bigint not null"`).
    pub not_null: Vec<Arc<str>>,
}

impl Schema {
    /// A schema of these columns, all nullable.
    pub fn new<N: Into<Arc<str>>>(columns: impl IntoIterator<Item = (N, ColumnType)>) -> Self {
        Schema {
            columns: columns.into_iter().map(|(n, t)| (n.into(), t)).collect(),
            not_null: Vec::new(),
        }
    }

    /// Marks columns as required.
    pub fn with_not_null<N: Into<Arc<str>>>(mut self, names: impl IntoIterator<Item = N>) -> Self {
        self.not_null.extend(names.into_iter().map(Into::into));
        self
    }

    /// Whether `column` is marked `not null`.
    pub fn is_not_null(&self, column: &str) -> bool {
        self.not_null.iter().any(|n| **n == *column)
    }

    /// The column named `name`, if there is one.
    pub fn column(&self, name: &str) -> Option<ColumnType> {
        self.columns
            .iter()
            .find(|(n, _)| **n == *name)
            .map(|(_, t)| *t)
    }
}

/// A column type with an optional `not null` after it: `"bigint not null"`.
pub fn parse_column(s: &str) -> Result<(ColumnType, bool), String> {
    let lower = s.trim().to_ascii_lowercase();
    let (ty, not_null) = match lower.strip_suffix("not null") {
        Some(t) => (t.trim_end(), true),
        None => (lower.as_str(), false),
    };
    Ok((ty.parse()?, not_null))
}

/// A decoded value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// No value (SQL NULL).
    Null,
    /// Text.
    Text(String),
    /// A 64-bit integer.
    BigInt(i64),
    /// A 64-bit float.
    Double(f64),
    /// A boolean.
    Boolean(bool),
    /// Microseconds since the Unix epoch, UTC.
    Timestamp(i64),
    /// A JSON value.
    Json(serde_json::Value),
    /// Bytes.
    Bytes(Bytes),
    /// Columns of a schema, in schema order.
    Row(Vec<(Arc<str>, Value)>),
    /// Several records from one message (Sparkplug B: one row per metric;
    /// none for a command). Pipelines write each as a record of its own,
    /// and acknowledge the message once every sink has all of them.
    Rows(Vec<Value>),
}

/// A user function from (topic, payload) to a value: Jet's `mapToItemFn`.
/// An `Err` is treated like a decode error (dead letter).
#[derive(Clone)]
pub struct MapFn(pub Arc<MapFnInner>);

/// The function inside a [`MapFn`].
pub type MapFnInner = dyn Fn(&str, &Bytes) -> Result<Value, String> + Send + Sync;

impl fmt::Debug for MapFn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MapFn(..)")
    }
}

impl PartialEq for MapFn {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// The old name of [`Decoder`].
#[deprecated(since = "0.2.0", note = "renamed Decoder: it decodes payloads")]
pub type Format = Decoder;

/// How payloads are decoded (a source's `format`).
#[derive(Clone, Debug, PartialEq)]
pub enum Decoder {
    /// The payload as bytes; with `include_topic`, a row of topic and payload
    /// (Laminar's `raw_bytes.include_topic`).
    RawBytes {
        /// A row of `topic` and `payload` instead of the bytes alone.
        include_topic: bool,
    },
    /// JSON: any JSON value, or a row of the schema's columns.
    Json {
        /// The columns to read; any JSON value without one.
        schema: Option<Schema>,
    },
    /// Avro binary with a fixed writer schema (a schema file).
    Avro {
        /// The writer schema.
        schema: Arc<AvroSchema>,
    },
    /// The Confluent wire format: schema id in the payload, schema from a registry.
    AvroRegistry {
        /// Where schemas are fetched by id (and cached).
        registry: Arc<Registry>,
    },
    /// A function of the application's (Jet's `mapToItemFn`).
    Map(MapFn),
    /// Sparkplug B: rows of [`sparkplug::COLUMNS`], one per metric, named
    /// through the host application's state (alias tables, `seq`).
    SparkplugB(Arc<sparkplug::Host>),
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::RawBytes {
            include_topic: false,
        }
    }
}

/// Why a payload could not be decoded. Names the field where there is one.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FormatError {
    /// The payload is not JSON.
    #[error("payload is not valid JSON: {0}")]
    InvalidJson(String),
    /// The schema needs a JSON object.
    #[error("payload is JSON {found}, but the schema needs an object")]
    NotAnObject {
        /// What was found.
        found: &'static str,
    },
    /// A NOT NULL field is missing.
    #[error("field {field:?} is missing (the column is NOT NULL)")]
    Missing {
        /// The field.
        field: String,
    },
    /// A NOT NULL field is null.
    #[error("field {field:?} is null (the column is NOT NULL)")]
    Null {
        /// The field.
        field: String,
    },
    /// A field of the wrong type.
    #[error("field {field:?}: expected {expected}, found {found}")]
    WrongType {
        /// The field.
        field: String,
        /// The column type.
        expected: ColumnType,
        /// What was found.
        found: String,
    },
    /// The payload does not decode with the Avro schema.
    #[error("Avro: {0}")]
    Avro(String),
    /// The schema is not fetched yet (the source fetches it and decodes again).
    #[error("Avro schema id {0} is not loaded")]
    SchemaNotLoaded(u32),
    /// The schema registry could not give the schema.
    #[error("{0}")]
    Registry(String),
    /// The `map_to_item_fn` refused the message.
    #[error("map function: {0}")]
    Map(String),
    /// Not a Sparkplug B message, or one that cannot be named without a
    /// new BIRTH (see [`sparkplug`]).
    #[error("Sparkplug B: {0}")]
    Sparkplug(String),
}

fn kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

impl Decoder {
    /// Decodes one payload (received on `topic`); never panics.
    pub fn decode(&self, topic: &str, payload: &Bytes) -> Result<Value, FormatError> {
        match self {
            Decoder::RawBytes {
                include_topic: false,
            } => Ok(Value::Bytes(payload.clone())),
            Decoder::RawBytes {
                include_topic: true,
            } => Ok(Value::Row(vec![
                ("topic".into(), Value::Text(topic.to_owned())),
                ("payload".into(), Value::Bytes(payload.clone())),
            ])),
            Decoder::Json { schema: None } => serde_json::from_slice(payload)
                .map(Value::Json)
                .map_err(|e| FormatError::InvalidJson(e.to_string())),
            Decoder::Json {
                schema: Some(schema),
            } => decode_row(schema, payload),
            Decoder::Avro { schema } => avro::decode(schema, payload),
            Decoder::AvroRegistry { registry } => {
                let (id, body) = avro::confluent_split(payload)?;
                let schema = registry
                    .cached(id)
                    .ok_or(FormatError::SchemaNotLoaded(id))?;
                avro::decode(&schema, body)
            }
            Decoder::Map(f) => (f.0)(topic, payload).map_err(FormatError::Map),
            Decoder::SparkplugB(host) => host.decode(topic, payload),
        }
    }
}

impl Value {
    /// JSON form: timestamps as RFC 3339 text, bytes as base64, rows as objects.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::json;
        match self {
            Value::Null => serde_json::Value::Null,
            Value::Text(s) => json!(s),
            Value::BigInt(n) => json!(n),
            Value::Double(f) => json!(f),
            Value::Boolean(b) => json!(b),
            Value::Timestamp(us) => json!(format_rfc3339_micros(*us)),
            Value::Json(j) => j.clone(),
            Value::Bytes(b) => json!(base64::engine::general_purpose::STANDARD.encode(b)),
            Value::Row(cols) => serde_json::Value::Object(
                cols.iter()
                    .map(|(k, v)| (k.to_string(), v.to_json()))
                    .collect(),
            ),
            Value::Rows(rows) => rows.iter().map(Value::to_json).collect(),
        }
    }
}

impl Value {
    /// Appends the JSON form (as [`Value::to_json`]) to `out` without
    /// building a `serde_json::Value`: the hot path of a JSON-lines sink.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        match self {
            Value::Null => out.extend_from_slice(b"null"),
            Value::Text(s) => {
                let _ = serde_json::to_writer(&mut *out, s);
            }
            Value::BigInt(n) => {
                let _ = serde_json::to_writer(&mut *out, n);
            }
            Value::Double(f) => {
                let _ = serde_json::to_writer(&mut *out, f);
            }
            Value::Boolean(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
            Value::Timestamp(us) => {
                out.push(b'"');
                write_rfc3339_micros(*us, out);
                out.push(b'"');
            }
            Value::Json(j) => {
                let _ = serde_json::to_writer(&mut *out, j);
            }
            Value::Bytes(b) => {
                out.push(b'"');
                let start = out.len();
                let engine = &base64::engine::general_purpose::STANDARD;
                out.resize(start + base64::encoded_len(b.len(), true).unwrap_or(0), 0);
                let n = engine.encode_slice(b, &mut out[start..]).unwrap_or(0);
                out.truncate(start + n);
                out.push(b'"');
            }
            Value::Row(cols) => {
                out.push(b'{');
                for (i, (k, v)) in cols.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    let _ = serde_json::to_writer(&mut *out, &**k);
                    out.push(b':');
                    v.write_json(out);
                }
                out.push(b'}');
            }
            Value::Rows(rows) => {
                out.push(b'[');
                for (i, r) in rows.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    r.write_json(out);
                }
                out.push(b']');
            }
        }
    }
}

fn decode_row(schema: &Schema, payload: &[u8]) -> Result<Value, FormatError> {
    use serde::de::DeserializeSeed;
    // Only the schema's fields are materialised; other keys are skipped
    // without building a map (the hot path of a typed JSON source).
    let mut de = serde_json::Deserializer::from_slice(payload);
    let slots = RowSeed(schema)
        .deserialize(&mut de)
        .and_then(|slots| de.end().map(|_| slots))
        .map_err(|e| FormatError::InvalidJson(e.to_string()))?
        .map_err(|found| FormatError::NotAnObject { found })?;
    let mut row = Vec::with_capacity(schema.columns.len());
    for ((name, ty), slot) in schema.columns.iter().zip(slots) {
        let present = slot.is_some();
        let value = match slot {
            Some(field) => typed(name, *ty, field)?,
            None => Value::Null,
        };
        if value == Value::Null && schema.is_not_null(name) {
            let field = name.to_string();
            return Err(if present {
                FormatError::Null { field }
            } else {
                FormatError::Missing { field }
            });
        }
        row.push((name.clone(), value));
    }
    Ok(Value::Row(row))
}

/// Deserializes a JSON object into one slot per schema column; `Err(kind)`
/// when the payload is valid JSON but not an object.
struct RowSeed<'s>(&'s Schema);

type Slots = Result<Vec<Option<serde_json::Value>>, &'static str>;

impl<'de> serde::de::DeserializeSeed<'de> for RowSeed<'_> {
    type Value = Slots;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Slots, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for RowSeed<'_> {
    type Value = Slots;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Slots, A::Error> {
        let cols = &self.0.columns;
        let mut slots: Vec<Option<serde_json::Value>> = vec![None; cols.len()];
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match cols.iter().position(|(n, _)| **n == *key) {
                Some(i) => slots[i] = Some(map.next_value()?),
                None => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        Ok(Ok(slots))
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Slots, A::Error> {
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(Err("an array"))
    }
    fn visit_str<E>(self, _: &str) -> Result<Slots, E> {
        Ok(Err("a string"))
    }
    fn visit_bool<E>(self, _: bool) -> Result<Slots, E> {
        Ok(Err("a boolean"))
    }
    fn visit_i64<E>(self, _: i64) -> Result<Slots, E> {
        Ok(Err("a number"))
    }
    fn visit_u64<E>(self, _: u64) -> Result<Slots, E> {
        Ok(Err("a number"))
    }
    fn visit_f64<E>(self, _: f64) -> Result<Slots, E> {
        Ok(Err("a number"))
    }
    fn visit_unit<E>(self) -> Result<Slots, E> {
        Ok(Err("null"))
    }
}

fn typed(name: &str, ty: ColumnType, v: serde_json::Value) -> Result<Value, FormatError> {
    use serde_json::Value as J;
    let wrong = |v: &J| FormatError::WrongType {
        field: name.to_owned(),
        expected: ty,
        found: match v {
            J::String(s) if s.len() <= 40 => format!("{:?}", s),
            other => kind(other).to_owned(),
        },
    };
    Ok(match (ty, v) {
        (_, J::Null) => Value::Null,
        (ColumnType::Json, v) => Value::Json(v),
        (ColumnType::Text, J::String(s)) => Value::Text(s),
        (ColumnType::BigInt, J::Number(n)) if n.is_i64() => Value::BigInt(n.as_i64().unwrap_or(0)),
        (ColumnType::Double, J::Number(n)) => Value::Double(n.as_f64().unwrap_or(f64::NAN)),
        (ColumnType::Boolean, J::Bool(b)) => Value::Boolean(b),
        (ColumnType::Timestamp, J::Number(n)) if n.is_i64() => {
            let ms = n.as_i64().unwrap_or(0);
            Value::Timestamp(ms.checked_mul(1000).ok_or_else(|| wrong(&J::Number(n)))?)
        }
        (ColumnType::Timestamp, J::String(s)) => match parse_rfc3339_micros(&s) {
            Some(us) => Value::Timestamp(us),
            None => return Err(wrong(&J::String(s))),
        },
        (ColumnType::Bytea, J::String(s)) => {
            match base64::engine::general_purpose::STANDARD.decode(s.as_bytes()) {
                Ok(b) => Value::Bytes(Bytes::from(b)),
                Err(_) => return Err(wrong(&J::String(s))),
            }
        }
        (_, other) => return Err(wrong(&other)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn telemetry() -> Decoder {
        Decoder::Json {
            schema: Some(
                Schema::new([
                    ("device_id", ColumnType::Text),
                    ("seq", ColumnType::BigInt),
                    ("timestamp", ColumnType::Timestamp),
                    ("temperature", ColumnType::Double),
                    ("ok", ColumnType::Boolean),
                ])
                .with_not_null(["device_id"]),
            ),
        }
    }

    #[test]
    fn columns_are_nullable_unless_not_null() {
        let f = telemetry();
        let Value::Row(row) = f
            .decode("t", &Bytes::from_static(br#"{"device_id":"d","seq":null}"#))
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(row[1].1, Value::Null, "null reads as NULL");
        assert_eq!(row[2].1, Value::Null, "missing reads as NULL");
        let e = f
            .decode("t", &Bytes::from_static(br#"{"device_id":null}"#))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"field "device_id" is null (the column is NOT NULL)"#
        );
        assert_eq!(
            parse_column(" BIGINT  NOT NULL").unwrap(),
            (ColumnType::BigInt, true)
        );
        assert_eq!(parse_column("text").unwrap(), (ColumnType::Text, false));
        assert!(parse_column("not null").is_err());
    }

    #[test]
    fn write_json_is_to_json() {
        let v = Value::Row(vec![
            ("t\"x".into(), Value::Text("a\n\u{e9}".into())),
            ("n".into(), Value::BigInt(-5)),
            ("d".into(), Value::Double(1.5e300)),
            ("nan".into(), Value::Double(f64::NAN)),
            ("b".into(), Value::Boolean(false)),
            ("ts".into(), Value::Timestamp(1_790_000_000_123_456)),
            ("j".into(), Value::Json(serde_json::json!({"a": [1, null]}))),
            (
                "bytes".into(),
                Value::Bytes(Bytes::from_static(b"\x00\xffab")),
            ),
            ("null".into(), Value::Null),
        ]);
        let mut out = Vec::new();
        v.write_json(&mut out);
        let parsed: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(parsed, v.to_json());
    }

    #[test]
    fn typed_json() {
        let f = telemetry();
        let p = Bytes::from_static(
            br#"{"device_id":"d1","seq":7,"timestamp":"2026-11-23T00:00:00.5Z","temperature":21,"ok":true,"extra":1}"#,
        );
        let Value::Row(row) = f.decode("t", &p).unwrap() else {
            panic!()
        };
        assert_eq!(row[0].1, Value::Text("d1".into()));
        assert_eq!(row[1].1, Value::BigInt(7));
        assert_eq!(row[2].1, Value::Timestamp(1_795_392_000_500_000));
        assert_eq!(row[3].1, Value::Double(21.0));
        assert_eq!(row[4].1, Value::Boolean(true));
        let epoch = Bytes::from_static(
            br#"{"device_id":"d1","seq":7,"timestamp":1795392000500,"temperature":1.5,"ok":false}"#,
        );
        let Value::Row(row) = f.decode("t", &epoch).unwrap() else {
            panic!()
        };
        assert_eq!(row[2].1, Value::Timestamp(1_795_392_000_500_000));
    }

    #[test]
    fn errors_name_the_field() {
        let f = telemetry();
        let cases: &[(&[u8], &str)] = &[
            (br#"{"seq":1}"#, r#"field "device_id" is missing"#),
            (
                br#"{"device_id":"d","seq":"7","timestamp":0,"temperature":1,"ok":true}"#,
                r#"field "seq": expected bigint, found "7""#,
            ),
            (
                br#"{"device_id":"d","seq":1.5,"timestamp":0,"temperature":1,"ok":true}"#,
                r#"field "seq": expected bigint, found a number"#,
            ),
            (
                br#"{"device_id":"d","seq":1,"timestamp":"yesterday","temperature":1,"ok":true}"#,
                r#"field "timestamp": expected timestamp, found "yesterday""#,
            ),
            (
                b"[1,2]",
                "payload is JSON an array, but the schema needs an object",
            ),
            (b"{nope", "payload is not valid JSON"),
        ];
        for (p, want) in cases {
            let e = f
                .decode("t", &Bytes::copy_from_slice(p))
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{e} does not contain {want}");
        }
    }

    #[test]
    fn raw_bytes_with_topic() {
        let f = Decoder::RawBytes {
            include_topic: true,
        };
        let v = f.decode("a/b", &Bytes::from_static(b"\xff")).unwrap();
        assert_eq!(
            v,
            Value::Row(vec![
                ("topic".into(), Value::Text("a/b".into())),
                ("payload".into(), Value::Bytes(Bytes::from_static(b"\xff")))
            ])
        );
    }

    proptest! {
        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let p = Bytes::from(bytes);
            for f in [telemetry(), Decoder::Json { schema: None }, Decoder::default()] {
                let _ = f.decode("t", &p);
            }
        }

        #[test]
        fn json_shaped_input_never_panics(seq in any::<i64>(), t in any::<f64>(), ts in "\\PC{0,30}", n in any::<i64>()) {
            let p = format!(r#"{{"device_id":"d","seq":{seq},"timestamp":{ts:?},"temperature":{t},"ok":true}}"#);
            let _ = telemetry().decode("t", &Bytes::from(p));
            let p = format!(r#"{{"device_id":"d","seq":1,"timestamp":{n},"temperature":1,"ok":true}}"#);
            let _ = telemetry().decode("t", &Bytes::from(p));
        }
    }
}
