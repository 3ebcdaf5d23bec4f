//! InfluxDB line protocol, without I/O: a record's fields as one point
//! (`measurement,tag=v field=1i,f=2.5,s="x",b=true 1700000000000000000`).
//!
//! Escaping as the protocol says: measurements escape `,` and space; tag
//! keys, tag values and field keys escape `,`, `=` and space; string field
//! values escape `"` and `\`; a backslash elsewhere is doubled. A newline
//! cannot be written in a name or tag (the protocol has no escape for it),
//! nor a NaN or infinite float: such a record is refused with the reason.

use mqlink::format::Value;

/// A record's field as the protocol types it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scalar<'a> {
    Str(&'a str),
    Int(i64),
    /// A JSON integer above `i64::MAX`: written as a float.
    UInt(u64),
    Float(f64),
    Bool(bool),
    /// Microseconds since the Unix epoch.
    Time(i64),
}

/// The unit of the timestamps written (`precision` of the write).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
pub enum Precision {
    #[default]
    #[serde(rename = "ns")]
    Ns,
    #[serde(rename = "us")]
    Us,
    #[serde(rename = "ms")]
    Ms,
    #[serde(rename = "s")]
    S,
}

impl Precision {
    /// Its name in a v1 `/write` (`n`, `u`, `ms`, `s`) or a v2 one.
    pub fn param(self, v2: bool) -> &'static str {
        match (self, v2) {
            (Precision::Ns, false) => "n",
            (Precision::Ns, true) => "ns",
            (Precision::Us, false) => "u",
            (Precision::Us, true) => "us",
            (Precision::Ms, _) => "ms",
            (Precision::S, _) => "s",
        }
    }

    /// Microseconds in this unit; `None` when it overflows.
    fn from_micros(self, us: i64) -> Option<i64> {
        match self {
            Precision::Ns => us.checked_mul(1000),
            Precision::Us => Some(us),
            Precision::Ms => Some(us.div_euclid(1000)),
            Precision::S => Some(us.div_euclid(1_000_000)),
        }
    }
}

/// The top-level field `name` of a record (a row's column, a JSON object's
/// key); `None` when absent, null or not a scalar.
pub fn field<'a>(v: &'a Value, name: &str) -> Option<Scalar<'a>> {
    match v {
        Value::Row(cols) => cols
            .iter()
            .find(|(k, _)| &**k == name)
            .and_then(|(_, v)| scalar(v)),
        Value::Json(serde_json::Value::Object(o)) => o.get(name).and_then(json_scalar),
        _ => None,
    }
}

/// Every top-level scalar field of a record, in order.
pub fn fields(v: &Value) -> Vec<(&str, Scalar<'_>)> {
    match v {
        Value::Row(cols) => cols
            .iter()
            .filter_map(|(k, v)| Some((&**k, scalar(v)?)))
            .collect(),
        Value::Json(serde_json::Value::Object(o)) => o
            .iter()
            .filter_map(|(k, v)| Some((k.as_str(), json_scalar(v)?)))
            .collect(),
        _ => Vec::new(),
    }
}

fn scalar(v: &Value) -> Option<Scalar<'_>> {
    Some(match v {
        Value::Text(s) => Scalar::Str(s),
        Value::BigInt(n) => Scalar::Int(*n),
        Value::Double(f) => Scalar::Float(*f),
        Value::Boolean(b) => Scalar::Bool(*b),
        Value::Timestamp(us) => Scalar::Time(*us),
        Value::Json(j) => return json_scalar(j),
        Value::Null | Value::Bytes(_) | Value::Row(_) | Value::Rows(_) => return None,
    })
}

fn json_scalar(v: &serde_json::Value) -> Option<Scalar<'_>> {
    Some(match v {
        serde_json::Value::String(s) => Scalar::Str(s),
        serde_json::Value::Bool(b) => Scalar::Bool(*b),
        serde_json::Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Scalar::Int(i),
            (None, Some(u)) => Scalar::UInt(u),
            _ => Scalar::Float(n.as_f64()?),
        },
        _ => return None,
    })
}

/// Escapes `s` into `out`: each of `special` and `\` get a backslash.
fn escape(s: &str, special: &[char], out: &mut String) {
    for c in s.chars() {
        if c == '\\' || special.contains(&c) {
            out.push('\\');
        }
        out.push(c);
    }
}

/// A name or tag, refused with a newline (no escape exists for it).
fn name(what: &str, s: &str, special: &[char], out: &mut String) -> Result<(), String> {
    if s.contains(['\n', '\r']) {
        return Err(format!(
            "{what} {s:?} has a line break, which line protocol cannot carry"
        ));
    }
    if s.is_empty() {
        return Err(format!("{what} is empty"));
    }
    escape(s, special, out);
    Ok(())
}

const KEY: &[char] = &[',', '=', ' '];

/// One point: `measurement`, the tags that are present (empty values left
/// out, as the protocol requires), the fields, the timestamp in
/// `precision`. Appends it to `out` without its newline, or says why it
/// cannot be written (out is then left as it was).
pub fn point(
    measurement: &str,
    tags: &[(&str, Scalar)],
    fields: &[(&str, Scalar)],
    time: Option<Scalar>,
    precision: Precision,
    out: &mut String,
) -> Result<(), String> {
    let start = out.len();
    let r = write_point(measurement, tags, fields, time, precision, out);
    if r.is_err() {
        out.truncate(start);
    }
    r
}

fn write_point(
    measurement: &str,
    tags: &[(&str, Scalar)],
    fields: &[(&str, Scalar)],
    time: Option<Scalar>,
    precision: Precision,
    out: &mut String,
) -> Result<(), String> {
    name("the measurement", measurement, &[',', ' '], out)?;
    let mut tags: Vec<(&str, String)> = tags.iter().map(|(k, v)| (*k, text(v))).collect();
    // Sorted by key, as InfluxDB stores them (faster writes).
    tags.sort_by(|a, b| a.0.cmp(b.0));
    for (k, v) in tags.iter().filter(|(_, v)| !v.is_empty()) {
        out.push(',');
        name("a tag key", k, KEY, out)?;
        out.push('=');
        name(&format!("tag {k:?}"), v, KEY, out)?;
    }
    if fields.is_empty() {
        return Err("no field to write (a point needs at least one)".into());
    }
    for (i, (k, v)) in fields.iter().enumerate() {
        out.push(if i == 0 { ' ' } else { ',' });
        name("a field key", k, KEY, out)?;
        out.push('=');
        field_value(k, v, out)?;
    }
    if let Some(t) = time {
        let n = match t {
            Scalar::Time(us) => precision.from_micros(us),
            Scalar::Int(n) => Some(n),
            Scalar::Str(s) => mqlink::format::parse_rfc3339_micros(s)
                .and_then(|us| precision.from_micros(us)),
            _ => None,
        }
        .ok_or_else(|| {
            format!("the timestamp {t:?} is not a time (RFC 3339 text, a timestamp or an integer in the precision's unit)")
        })?;
        out.push(' ');
        out.push_str(&n.to_string());
    }
    Ok(())
}

/// A tag's text.
fn text(v: &Scalar) -> String {
    match v {
        Scalar::Str(s) => s.to_string(),
        Scalar::Int(n) => n.to_string(),
        Scalar::UInt(n) => n.to_string(),
        Scalar::Float(f) => f.to_string(),
        Scalar::Bool(b) => b.to_string(),
        Scalar::Time(us) => mqlink::format::format_rfc3339_micros(*us),
    }
}

fn field_value(key: &str, v: &Scalar, out: &mut String) -> Result<(), String> {
    match v {
        Scalar::Str(s) => {
            out.push('"');
            escape(s, &['"'], out);
            out.push('"');
        }
        Scalar::Int(n) => {
            out.push_str(&n.to_string());
            out.push('i');
        }
        Scalar::UInt(n) => out.push_str(&format!("{:?}", *n as f64)),
        Scalar::Float(f) if !f.is_finite() => {
            return Err(format!("field {key:?} is {f}, which InfluxDB cannot store"))
        }
        // `{:?}` keeps a float a float (`1.0`, not `1`).
        Scalar::Float(f) => out.push_str(&format!("{f:?}")),
        Scalar::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Scalar::Time(us) => {
            out.push('"');
            out.push_str(&mqlink::format::format_rfc3339_micros(*us));
            out.push('"');
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn one(m: &str, tags: &[(&str, Scalar)], fields: &[(&str, Scalar)]) -> Result<String, String> {
        let mut s = String::new();
        point(m, tags, fields, None, Precision::Ns, &mut s).map(|()| s)
    }

    #[test]
    fn types_and_escapes() {
        let tags = [
            ("site", Scalar::Str("a b,c=d")),
            ("dev", Scalar::Int(7)),
            ("empty", Scalar::Str("")),
        ];
        let fields = [
            ("i", Scalar::Int(-3)),
            ("f", Scalar::Float(2.0)),
            ("b", Scalar::Bool(true)),
            ("s", Scalar::Str("say \"hi\" \\ ok\nnext")),
            ("big", Scalar::UInt(u64::MAX)),
            ("k,e y=", Scalar::Float(0.5)),
        ];
        assert_eq!(
            one("we,ather now", &tags, &fields).unwrap(),
            "we\\,ather\\ now,dev=7,site=a\\ b\\,c\\=d i=-3i,f=2.0,b=true,s=\"say \\\"hi\\\" \\\\ ok\nnext\",big=1.8446744073709552e19,k\\,e\\ y\\==0.5"
        );
        let mut s = String::new();
        point(
            "m",
            &[],
            &[("v", Scalar::Int(1))],
            Some(Scalar::Time(1_700_000_000_123_456)),
            Precision::Ms,
            &mut s,
        )
        .unwrap();
        assert_eq!(s, "m v=1i 1700000000123");
    }

    #[test]
    fn refusals_name_the_cause_and_leave_nothing() {
        let mut s = String::from("kept");
        let e = point(
            "m",
            &[("t", Scalar::Str("a\nb"))],
            &[("v", Scalar::Int(1))],
            None,
            Precision::Ns,
            &mut s,
        )
        .unwrap_err();
        assert!(e.contains("tag \"t\"") && e.contains("line break"), "{e}");
        assert_eq!(s, "kept");
        assert!(one("m", &[], &[]).unwrap_err().contains("no field"));
        assert!(one("", &[], &[("v", Scalar::Int(1))])
            .unwrap_err()
            .contains("measurement"));
        assert!(one("m", &[], &[("v", Scalar::Float(f64::NAN))])
            .unwrap_err()
            .contains("\"v\""));
        let e = point(
            "m",
            &[],
            &[("v", Scalar::Int(1))],
            Some(Scalar::Str("noon")),
            Precision::Ns,
            &mut s,
        )
        .unwrap_err();
        assert!(e.contains("noon"), "{e}");
        let e = point(
            "m",
            &[],
            &[("v", Scalar::Int(1))],
            Some(Scalar::Time(i64::MAX)),
            Precision::Ns,
            &mut s,
        )
        .unwrap_err();
        assert!(e.contains("timestamp"), "{e}");
    }

    /// A reader of the protocol's escapes: the inverse of `escape` for
    /// one element ending at an unescaped `end` character (or the end).
    fn unescape(s: &str, end: &[char]) -> (String, usize) {
        let mut out = String::new();
        let mut chars = s.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        out.push(n);
                    }
                }
                c if end.contains(&c) => return (out, i),
                c => out.push(c),
            }
        }
        (out, s.len())
    }

    proptest! {
        /// Any text as measurement, tag and string field either is refused
        /// with a reason or reads back as itself; never a panic.
        #[test]
        fn escaping_round_trips(m in "\\PC{0,12}", tk in "[a-z ,=\\\\]{1,6}", tv in "\\PC{0,12}", s in "\\PC{0,16}") {
            let mut out = String::new();
            let r = point(&m, &[(&tk, Scalar::Str(&tv))], &[("s", Scalar::Str(&s))], None, Precision::Ns, &mut out);
            if r.is_err() {
                prop_assert!(out.is_empty());
                return Ok(());
            }
            let (m2, at) = unescape(&out, &[',', ' ']);
            prop_assert_eq!(&m2, &m);
            let rest = &out[at..];
            let rest = if tv.is_empty() { rest } else {
                let rest = rest.strip_prefix(',').unwrap();
                let (k2, at) = unescape(rest, &['=']);
                prop_assert_eq!(&k2, &tk);
                let (v2, at2) = unescape(&rest[at + 1..], &[' ', ',']);
                prop_assert_eq!(&v2, &tv);
                &rest[at + 1 + at2..]
            };
            let body = rest.strip_prefix(" s=\"").unwrap().strip_suffix('"').unwrap();
            let (s2, _) = unescape(body, &[]);
            prop_assert_eq!(s2, s);
        }

        /// Any record's fields, of any JSON shape, never panic.
        #[test]
        fn any_record(j in any::<u64>(), f in any::<f64>(), t in any::<i64>(), p in 0u8..4) {
            let v = Value::Json(serde_json::json!({"a": j, "b": f, "c": t, "d": [1], "e": null}));
            let precision = [Precision::Ns, Precision::Us, Precision::Ms, Precision::S][p as usize];
            let fs = fields(&v);
            let mut out = String::new();
            let _ = point("m", &[], &fs, field(&v, "c"), precision, &mut out);
            let _ = point("m", &[], &fs, Some(Scalar::Time(t)), precision, &mut out);
        }
    }
}
