//! `json.dumps(value)` with its default arguments, for the common values
//! (dict with str keys, list, tuple, str, int, float, bool, None) without
//! leaving Rust: the default `value_serializer` of Quix's sink costs more
//! than everything else a record does. Byte for byte what `json.dumps`
//! writes (`", "` and `": "` separators, `ensure_ascii`, `float.__repr__`,
//! `NaN`/`Infinity`); any other value, a subclass included, goes to
//! `json.dumps` itself, errors and all.

use pyo3::prelude::*;
use pyo3::sync::GILOnceCell;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};

/// `json.dumps(value)` as UTF-8 bytes.
pub fn dumps(value: &Bound<'_, PyAny>) -> PyResult<Vec<u8>> {
    let mut out = Vec::with_capacity(128);
    if encode(value, &mut out, 0) {
        return Ok(out);
    }
    static DUMPS: GILOnceCell<Py<PyAny>> = GILOnceCell::new();
    let py = value.py();
    let f = DUMPS.get_or_try_init(py, || {
        py.import("json")
            .and_then(|m| m.getattr("dumps"))
            .map(Bound::unbind)
    })?;
    let s = f.bind(py).call1((value,))?;
    Ok(s.downcast::<PyString>()?.to_cow()?.as_bytes().to_vec())
}

/// Appends `v`'s JSON; `false` for what only `json.dumps` knows (then `out`
/// is discarded).
fn encode(v: &Bound<'_, PyAny>, out: &mut Vec<u8>, depth: u32) -> bool {
    // json.dumps finds cycles; deep nesting goes to it too.
    if depth > 64 {
        return false;
    }
    if v.is_none() {
        out.extend_from_slice(b"null");
    } else if v.is_exact_instance_of::<PyBool>() {
        out.extend_from_slice(if v.is_truthy().unwrap_or(false) {
            b"true"
        } else {
            b"false"
        });
    } else if v.is_exact_instance_of::<PyString>() {
        let Some(s) = v.downcast::<PyString>().ok().and_then(|s| s.to_cow().ok()) else {
            return false; // lone surrogates
        };
        string(&s, out);
    } else if v.is_exact_instance_of::<PyInt>() {
        match v.extract::<i64>() {
            Ok(i) => out.extend_from_slice(i.to_string().as_bytes()),
            Err(_) => match v.str() {
                Ok(s) => out.extend_from_slice(s.to_string().as_bytes()),
                Err(_) => return false,
            },
        }
    } else if v.is_exact_instance_of::<PyFloat>() {
        let Ok(f) = v.extract::<f64>() else {
            return false;
        };
        float(f, out);
    } else if let (true, Ok(d)) = (v.is_exact_instance_of::<PyDict>(), v.downcast::<PyDict>()) {
        out.push(b'{');
        for (i, (k, item)) in d.iter().enumerate() {
            if !k.is_exact_instance_of::<PyString>() {
                return false;
            }
            if i > 0 {
                out.extend_from_slice(b", ");
            }
            let Some(key) = k.downcast::<PyString>().ok().and_then(|s| s.to_cow().ok()) else {
                return false;
            };
            string(&key, out);
            out.extend_from_slice(b": ");
            if !encode(&item, out, depth + 1) {
                return false;
            }
        }
        out.push(b'}');
    } else if v.is_exact_instance_of::<PyList>() || v.is_exact_instance_of::<PyTuple>() {
        out.push(b'[');
        let Ok(items) = v.try_iter() else {
            return false;
        };
        for (i, item) in items.enumerate() {
            let Ok(item) = item else { return false };
            if i > 0 {
                out.extend_from_slice(b", ");
            }
            if !encode(&item, out, depth + 1) {
                return false;
            }
        }
        out.push(b']');
    } else {
        return false;
    }
    true
}

/// A JSON string with `ensure_ascii`: `\"`, `\\`, `\n` … and `\u00XX` /
/// `\uXXXX` (surrogate pairs above U+FFFF) for everything outside ' '..='~'.
fn string(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            '\u{8}' => out.extend_from_slice(b"\\b"),
            '\u{c}' => out.extend_from_slice(b"\\f"),
            ' '..='~' => out.push(c as u8),
            _ => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    out.extend_from_slice(format!("\\u{u:04x}").as_bytes());
                }
            }
        }
    }
    out.push(b'"');
}

/// `float.__repr__`: the shortest digits that round-trip, fixed notation
/// for decimal exponents -4..16, else `d.ddde+XX`.
fn float(f: f64, out: &mut Vec<u8>) {
    if f.is_nan() {
        out.extend_from_slice(b"NaN");
        return;
    }
    if f.is_infinite() {
        out.extend_from_slice(if f > 0.0 { b"Infinity" } else { b"-Infinity" });
        return;
    }
    // Rust's `{:e}` gives the same shortest digits: "2.15e1", "-1e-7".
    let e = format!("{f:e}");
    let (mantissa, exp) = e.split_once('e').expect("{:e} has an exponent");
    let exp: i32 = exp.parse().expect("{:e} exponent is a number");
    let (neg, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => (true, m),
        None => (false, mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let mut s = String::with_capacity(24);
    if neg {
        s.push('-');
    }
    if (-4..16).contains(&exp) {
        if exp < 0 {
            s.push_str("0.");
            s.extend(std::iter::repeat_n('0', (-exp - 1) as usize));
            s.push_str(&digits);
        } else {
            let point = exp as usize + 1;
            if digits.len() <= point {
                s.push_str(&digits);
                s.extend(std::iter::repeat_n('0', point - digits.len()));
                s.push_str(".0");
            } else {
                s.push_str(&digits[..point]);
                s.push('.');
                s.push_str(&digits[point..]);
            }
        }
    } else {
        s.push_str(&digits[..1]);
        if digits.len() > 1 {
            s.push('.');
            s.push_str(&digits[1..]);
        }
        s.push_str(&format!(
            "e{}{:02}",
            if exp < 0 { '-' } else { '+' },
            exp.abs()
        ));
    }
    out.extend_from_slice(s.as_bytes());
}
