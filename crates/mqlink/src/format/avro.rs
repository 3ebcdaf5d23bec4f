//! Avro binary decoding against a writer schema (Avro 1.11 spec): records,
//! enums, arrays, maps, unions, fixed, the primitives, and the
//! `timestamp-millis`/`timestamp-micros` logical types. Also the Confluent
//! wire format (magic byte 0, 4-byte schema id, Avro body).
//!
//! Total on any input: lengths are checked against the bytes left, block
//! counts are bounded by them, and nesting is limited.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;

use super::{FormatError, Value};

/// A parsed Avro schema.
#[derive(Clone, Debug, PartialEq)]
pub enum AvroSchema {
    /// `null`.
    Null,
    /// `boolean`.
    Boolean,
    /// `int` (32 bits, zig-zag).
    Int,
    /// `long` (64 bits, zig-zag).
    Long,
    /// `float`.
    Float,
    /// `double`.
    Double,
    /// `bytes`.
    Bytes,
    /// `string`.
    String,
    /// `long` with logical type `timestamp-millis`.
    TimestampMillis,
    /// `long` with logical type `timestamp-micros`.
    TimestampMicros,
    /// A record of named fields.
    Record {
        /// Its name.
        name: String,
        /// The fields, in order.
        fields: Vec<(Arc<str>, AvroSchema)>,
    },
    /// One of the symbols.
    Enum {
        /// Its name.
        name: String,
        /// The symbols, in order.
        symbols: Vec<String>,
    },
    /// Items of one schema.
    Array(Box<AvroSchema>),
    /// String keys to values of one schema.
    Map(Box<AvroSchema>),
    /// One of the schemas (by index).
    Union(Vec<AvroSchema>),
    /// A fixed number of bytes.
    Fixed {
        /// Its name.
        name: String,
        /// The size in bytes.
        size: usize,
    },
}

const MAX_DEPTH: usize = 64;

impl AvroSchema {
    /// Parses a schema from its JSON text; errors say what is wrong where.
    pub fn parse(text: &str) -> Result<AvroSchema, String> {
        let v: serde_json::Value =
            serde_json::from_str(text).map_err(|e| format!("schema is not JSON: {e}"))?;
        let mut names = HashMap::new();
        parse(&v, &mut names, 0)
    }
}

fn parse(
    v: &serde_json::Value,
    names: &mut HashMap<String, AvroSchema>,
    depth: usize,
) -> Result<AvroSchema, String> {
    use serde_json::Value as J;
    if depth > MAX_DEPTH {
        return Err("schema nests too deeply".into());
    }
    match v {
        J::String(s) => primitive(s)
            .or_else(|| names.get(s.as_str()).cloned())
            .ok_or_else(|| format!("unknown type {s:?}")),
        J::Array(branches) => Ok(AvroSchema::Union(
            branches
                .iter()
                .map(|b| parse(b, names, depth + 1))
                .collect::<Result<_, _>>()?,
        )),
        J::Object(o) => {
            let ty = o.get("type").ok_or("a schema object needs \"type\"")?;
            let logical = o.get("logicalType").and_then(J::as_str);
            let name = |what: &str| -> Result<String, String> {
                o.get("name")
                    .and_then(J::as_str)
                    .map(str::to_owned)
                    .ok_or_else(|| format!("a {what} needs a \"name\""))
            };
            match (ty.as_str(), logical) {
                (Some("long"), Some("timestamp-millis")) => Ok(AvroSchema::TimestampMillis),
                (Some("long"), Some("timestamp-micros")) => Ok(AvroSchema::TimestampMicros),
                (Some("record" | "error"), _) => {
                    let name = name("record")?;
                    let fields = o
                        .get("fields")
                        .and_then(J::as_array)
                        .ok_or_else(|| format!("record {name:?} needs \"fields\""))?;
                    // A placeholder lets fields refer to the record (recursion is not decoded).
                    names.insert(
                        name.clone(),
                        AvroSchema::Record {
                            name: name.clone(),
                            fields: Vec::new(),
                        },
                    );
                    let mut out = Vec::with_capacity(fields.len());
                    for f in fields {
                        let fname = f
                            .get("name")
                            .and_then(J::as_str)
                            .ok_or_else(|| format!("a field of {name:?} has no name"))?;
                        let fty = f
                            .get("type")
                            .ok_or_else(|| format!("field {fname:?} of {name:?} has no type"))?;
                        out.push((fname.into(), parse(fty, names, depth + 1)?));
                    }
                    let r = AvroSchema::Record {
                        name: name.clone(),
                        fields: out,
                    };
                    names.insert(name, r.clone());
                    Ok(r)
                }
                (Some("enum"), _) => {
                    let name = name("enum")?;
                    let symbols = o
                        .get("symbols")
                        .and_then(J::as_array)
                        .ok_or_else(|| format!("enum {name:?} needs \"symbols\""))?
                        .iter()
                        .map(|s| {
                            s.as_str()
                                .map(str::to_owned)
                                .ok_or("enum symbols are strings")
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    let e = AvroSchema::Enum {
                        name: name.clone(),
                        symbols,
                    };
                    names.insert(name, e.clone());
                    Ok(e)
                }
                (Some("array"), _) => Ok(AvroSchema::Array(Box::new(parse(
                    o.get("items").ok_or("an array needs \"items\"")?,
                    names,
                    depth + 1,
                )?))),
                (Some("map"), _) => Ok(AvroSchema::Map(Box::new(parse(
                    o.get("values").ok_or("a map needs \"values\"")?,
                    names,
                    depth + 1,
                )?))),
                (Some("fixed"), _) => {
                    let name = name("fixed")?;
                    let size = o
                        .get("size")
                        .and_then(J::as_u64)
                        .ok_or_else(|| format!("fixed {name:?} needs a \"size\""))?
                        as usize;
                    let f = AvroSchema::Fixed {
                        name: name.clone(),
                        size,
                    };
                    names.insert(name, f.clone());
                    Ok(f)
                }
                _ => parse(ty, names, depth + 1),
            }
        }
        other => Err(format!("{other} is not a schema")),
    }
}

fn primitive(s: &str) -> Option<AvroSchema> {
    Some(match s {
        "null" => AvroSchema::Null,
        "boolean" => AvroSchema::Boolean,
        "int" => AvroSchema::Int,
        "long" => AvroSchema::Long,
        "float" => AvroSchema::Float,
        "double" => AvroSchema::Double,
        "bytes" => AvroSchema::Bytes,
        "string" => AvroSchema::String,
        _ => return None,
    })
}

struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
}

fn err(msg: impl Into<String>) -> FormatError {
    FormatError::Avro(msg.into())
}

impl Cursor<'_> {
    fn left(&self) -> usize {
        self.b.len() - self.pos
    }
    fn take(&mut self, n: usize) -> Result<&[u8], FormatError> {
        if n > self.left() {
            return Err(err(format!("needs {n} more bytes, {} left", self.left())));
        }
        let s = &self.b[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn long(&mut self) -> Result<i64, FormatError> {
        let mut v: u64 = 0;
        for shift in (0..70).step_by(7) {
            let byte = *self.take(1)?.first().unwrap_or(&0);
            if shift == 63 && byte > 1 {
                return Err(err("varint overflows 64 bits"));
            }
            v |= ((byte & 0x7f) as u64) << shift;
            if byte & 0x80 == 0 {
                return Ok((v >> 1) as i64 ^ -((v & 1) as i64));
            }
        }
        Err(err("varint longer than 10 bytes"))
    }
    fn len(&mut self) -> Result<usize, FormatError> {
        let n = self.long()?;
        if n < 0 || n as u64 > self.left() as u64 {
            return Err(err(format!("length {n} with {} bytes left", self.left())));
        }
        Ok(n as usize)
    }
}

/// Decodes one datum; the whole payload must be used.
pub fn decode(schema: &AvroSchema, payload: &[u8]) -> Result<Value, FormatError> {
    let mut c = Cursor { b: payload, pos: 0 };
    let v = datum(schema, &mut c, 0)?;
    if c.left() != 0 {
        return Err(err(format!("{} bytes left after the datum", c.left())));
    }
    Ok(v)
}

fn datum(s: &AvroSchema, c: &mut Cursor<'_>, depth: usize) -> Result<Value, FormatError> {
    if depth > MAX_DEPTH {
        return Err(err("datum nests too deeply"));
    }
    Ok(match s {
        AvroSchema::Null => Value::Null,
        AvroSchema::Boolean => match c.take(1)?[0] {
            0 => Value::Boolean(false),
            1 => Value::Boolean(true),
            b => return Err(err(format!("boolean byte {b}"))),
        },
        AvroSchema::Int => {
            let v = c.long()?;
            i32::try_from(v).map_err(|_| err(format!("int {v} out of range")))?;
            Value::BigInt(v)
        }
        AvroSchema::Long => Value::BigInt(c.long()?),
        AvroSchema::TimestampMillis => {
            let ms = c.long()?;
            Value::Timestamp(
                ms.checked_mul(1000)
                    .ok_or_else(|| err("timestamp out of range"))?,
            )
        }
        AvroSchema::TimestampMicros => Value::Timestamp(c.long()?),
        AvroSchema::Float => {
            let b = c.take(4)?;
            Value::Double(f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64)
        }
        AvroSchema::Double => {
            let b = c.take(8)?;
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            Value::Double(f64::from_le_bytes(a))
        }
        AvroSchema::Bytes => {
            let n = c.len()?;
            Value::Bytes(Bytes::copy_from_slice(c.take(n)?))
        }
        AvroSchema::String => {
            let n = c.len()?;
            let s = std::str::from_utf8(c.take(n)?).map_err(|_| err("string is not UTF-8"))?;
            Value::Text(s.to_owned())
        }
        AvroSchema::Fixed { size, .. } => Value::Bytes(Bytes::copy_from_slice(c.take(*size)?)),
        AvroSchema::Enum { symbols, name } => {
            let i = c.long()?;
            let sym = usize::try_from(i)
                .ok()
                .and_then(|i| symbols.get(i))
                .ok_or_else(|| err(format!("enum {name:?} has no symbol {i}")))?;
            Value::Text(sym.clone())
        }
        AvroSchema::Union(branches) => {
            let i = c.long()?;
            let b = usize::try_from(i)
                .ok()
                .and_then(|i| branches.get(i))
                .ok_or_else(|| err(format!("union has no branch {i}")))?;
            datum(b, c, depth + 1)?
        }
        AvroSchema::Record { fields, .. } => Value::Row(
            fields
                .iter()
                .map(|(n, fs)| Ok((n.clone(), datum(fs, c, depth + 1)?)))
                .collect::<Result<_, FormatError>>()?,
        ),
        AvroSchema::Array(items) => {
            let mut out = Vec::new();
            blocks(c, |c| {
                out.push(datum(items, c, depth + 1)?.to_json());
                Ok(())
            })?;
            Value::Json(serde_json::Value::Array(out))
        }
        AvroSchema::Map(values) => {
            let mut out = serde_json::Map::new();
            blocks(c, |c| {
                let n = c.len()?;
                let k = std::str::from_utf8(c.take(n)?)
                    .map_err(|_| err("map key is not UTF-8"))?
                    .to_owned();
                out.insert(k, datum(values, c, depth + 1)?.to_json());
                Ok(())
            })?;
            Value::Json(serde_json::Value::Object(out))
        }
    })
}

/// Array and map blocks: a count (negative: followed by a byte size), items, until 0.
fn blocks(
    c: &mut Cursor<'_>,
    mut item: impl FnMut(&mut Cursor<'_>) -> Result<(), FormatError>,
) -> Result<(), FormatError> {
    loop {
        let mut n = c.long()?;
        if n == 0 {
            return Ok(());
        }
        if n < 0 {
            n = n
                .checked_neg()
                .ok_or_else(|| err("block count out of range"))?;
            c.long()?;
        }
        // Every item takes at least one byte unless it is null; bound the loop.
        if n as u64 > (c.left() as u64).max(1) * 8 + 1024 {
            return Err(err(format!(
                "block of {n} items with {} bytes left",
                c.left()
            )));
        }
        for _ in 0..n {
            item(c)?;
        }
    }
}

/// Splits the Confluent wire format: magic byte 0, schema id, body.
pub fn confluent_split(payload: &[u8]) -> Result<(u32, &[u8]), FormatError> {
    match payload {
        [0, a, b, c, d, rest @ ..] => Ok((u32::from_be_bytes([*a, *b, *c, *d]), rest)),
        _ => Err(err(
            "not in the Confluent wire format (magic byte 0, 4-byte schema id)",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn zz(v: i64) -> Vec<u8> {
        let mut n = ((v << 1) ^ (v >> 63)) as u64;
        let mut out = Vec::new();
        loop {
            let b = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(b);
                return out;
            }
            out.push(b | 0x80);
        }
    }

    const SCHEMA: &str = r#"{"type":"record","name":"T","fields":[
        {"name":"device_id","type":"string"},
        {"name":"seq","type":"long"},
        {"name":"ts","type":{"type":"long","logicalType":"timestamp-millis"}},
        {"name":"temp","type":["null","double"]},
        {"name":"state","type":{"type":"enum","name":"S","symbols":["OK","FAIL"]}},
        {"name":"tags","type":{"type":"array","items":"string"}}
    ]}"#;

    fn sample() -> Vec<u8> {
        let mut b = zz(2);
        b.extend(b"d1");
        b.extend(zz(-7));
        b.extend(zz(1_795_392_000_000));
        b.extend(zz(1));
        b.extend(21.5f64.to_le_bytes());
        b.extend(zz(1));
        b.extend(zz(1));
        b.extend(zz(1));
        b.extend(b"x");
        b.extend(zz(0));
        b
    }

    #[test]
    fn decodes_a_record() {
        let s = AvroSchema::parse(SCHEMA).unwrap();
        let Value::Row(row) = decode(&s, &sample()).unwrap() else {
            panic!()
        };
        assert_eq!(row[0].1, Value::Text("d1".into()));
        assert_eq!(row[1].1, Value::BigInt(-7));
        assert_eq!(row[2].1, Value::Timestamp(1_795_392_000_000_000));
        assert_eq!(row[3].1, Value::Double(21.5));
        assert_eq!(row[4].1, Value::Text("FAIL".into()));
        assert_eq!(row[5].1, Value::Json(serde_json::json!(["x"])));
        let mut confluent = vec![0, 0, 0, 0, 42];
        confluent.extend(sample());
        let (id, body) = confluent_split(&confluent).unwrap();
        assert_eq!(id, 42);
        assert!(decode(&s, body).is_ok());
    }

    #[test]
    fn bad_schemas_and_data_are_errors() {
        assert!(AvroSchema::parse(r#"{"type":"record","fields":[]}"#)
            .unwrap_err()
            .contains("name"));
        assert!(AvroSchema::parse(r#""nope""#)
            .unwrap_err()
            .contains("\"nope\""));
        let s = AvroSchema::parse(SCHEMA).unwrap();
        let full = sample();
        for cut in 0..full.len() {
            assert!(decode(&s, &full[..cut]).is_err(), "cut at {cut}");
        }
        assert!(confluent_split(b"\x01abc").is_err());
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let s = AvroSchema::parse(SCHEMA).unwrap();
            let _ = decode(&s, &bytes);
            let m = AvroSchema::parse(r#"{"type":"map","values":{"type":"array","items":["null","bytes"]}}"#).unwrap();
            let _ = decode(&m, &bytes);
        }
    }
}
