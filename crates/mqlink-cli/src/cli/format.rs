//! `mqlink sub -F`: mosquitto_sub's format strings, printed byte for byte
//! as mosquitto_sub 2.0 prints them.
//!
//! A format is parsed once ([`Template::parse`], refusing what
//! mosquitto_sub refuses, with its messages) and rendered per message.
//! `%`-conversions take mosquitto's flags (`-` left-align, `0` zero-pad, a
//! field width, a precision) with mosquitto's quirks kept: a payload wider
//! than its field is cut to the field, `%-p` without a width pads with as
//! many spaces as the payload is long, `%x` halves a field width. `@X` is
//! strftime's `%X` in local time (`@N` nanoseconds, `@@` an `@`), `\n \t …`
//! are escapes. `%j`/`%J` are mosquitto's JSON as cJSON prints it.

use std::ffi::CString;
use std::time::{SystemTime, UNIX_EPOCH};

use mqlink::PublishProperties;

/// One received message as the format sees it.
pub struct Msg<'a> {
    pub topic: &'a str,
    pub payload: &'a [u8],
    pub qos: u8,
    pub retain: bool,
    pub mid: u16,
    pub properties: Option<&'a PublishProperties>,
    pub received_at: SystemTime,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Spec {
    conv: u8,
    left: bool,
    zero: bool,
    width: usize,
    precision: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Lit(Vec<u8>),
    Spec(Spec),
    /// `@X`: strftime `%X`; `N` is nanoseconds.
    Time(u8),
}

/// A parsed `-F` format.
#[derive(Debug, Clone)]
pub struct Template {
    parts: Vec<Part>,
}

const CONVERSIONS: &[u8] = b"%ACDEFIlmPpqRSrtjJUxX";

impl Template {
    /// Parses a format; errors are mosquitto_sub's messages.
    pub fn parse(format: &str) -> Result<Template, String> {
        let s = format.as_bytes();
        let incomplete = || "Error: Incomplete format specifier.".to_owned();
        let mut parts = Vec::new();
        let mut lit = Vec::new();
        let mut i = 0;
        while i < s.len() {
            match s[i] {
                b'%' => {
                    let mut spec = Spec {
                        conv: 0,
                        left: false,
                        zero: false,
                        width: 0,
                        precision: None,
                    };
                    i += 1;
                    if i < s.len() && s[i] == b'-' {
                        spec.left = true;
                        i += 1;
                    }
                    if i < s.len() && s[i] == b'0' {
                        spec.zero = true;
                        i += 1;
                    }
                    while i < s.len() && s[i].is_ascii_digit() {
                        spec.width = spec
                            .width
                            .saturating_mul(10)
                            .saturating_add((s[i] - b'0') as usize);
                        i += 1;
                    }
                    if i < s.len() && s[i] == b'.' {
                        i += 1;
                        let mut p = 0usize;
                        while i < s.len() && s[i].is_ascii_digit() {
                            p = p.saturating_mul(10).saturating_add((s[i] - b'0') as usize);
                            i += 1;
                        }
                        spec.precision = Some(p);
                    }
                    let Some(&c) = s.get(i) else {
                        return Err(incomplete());
                    };
                    if !CONVERSIONS.contains(&c) {
                        return Err(format!(
                            "Error: Invalid format specifier '{}'.",
                            char_at(format, i)
                        ));
                    }
                    spec.conv = c;
                    if !lit.is_empty() {
                        parts.push(Part::Lit(std::mem::take(&mut lit)));
                    }
                    parts.push(Part::Spec(spec));
                }
                b'@' => {
                    i += 1;
                    let Some(&c) = s.get(i) else {
                        return Err(incomplete());
                    };
                    if c == b'@' {
                        lit.push(b'@');
                    } else {
                        if !lit.is_empty() {
                            parts.push(Part::Lit(std::mem::take(&mut lit)));
                        }
                        parts.push(Part::Time(c));
                    }
                }
                b'\\' => {
                    i += 1;
                    let Some(&c) = s.get(i) else {
                        return Err("Error: Incomplete escape specifier.".to_owned());
                    };
                    lit.push(match c {
                        b'\\' => b'\\',
                        b'0' => 0,
                        b'a' => 7,
                        b'e' => 0x1b,
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'v' => 0x0b,
                        _ => {
                            return Err(format!(
                                "Error: Invalid escape specifier '{}'.",
                                char_at(format, i)
                            ))
                        }
                    });
                }
                c => lit.push(c),
            }
            i += 1;
        }
        if !lit.is_empty() {
            parts.push(Part::Lit(lit));
        }
        Ok(Template { parts })
    }

    /// Appends the message as the format says (no end of line: the caller
    /// adds it unless `-N`). `warn` receives mosquitto's error lines (a
    /// `%J` payload that is not JSON), which do not stop the output.
    pub fn render(
        &self,
        m: &Msg<'_>,
        pretty: bool,
        out: &mut Vec<u8>,
        warn: &mut dyn FnMut(String),
    ) {
        let time = Time::of(m.received_at);
        for part in &self.parts {
            match part {
                Part::Lit(b) => out.extend_from_slice(b),
                Part::Time(b'N') => out.extend_from_slice(format!("{:09}", time.nanos).as_bytes()),
                Part::Time(c) => out.extend_from_slice(&time.strftime(&format!("%{}", *c as char))),
                Part::Spec(spec) => conversion(spec, m, &time, pretty, out, warn),
            }
        }
    }
}

fn char_at(s: &str, i: usize) -> char {
    s.get(i..).and_then(|t| t.chars().next()).unwrap_or('?')
}

fn conversion(
    spec: &Spec,
    m: &Msg<'_>,
    time: &Time,
    pretty: bool,
    out: &mut Vec<u8>,
    warn: &mut dyn FnMut(String),
) {
    let props = m.properties;
    let pad = if spec.zero { b'0' } else { b' ' };
    let blank = |out: &mut Vec<u8>, pad: u8| out.extend(std::iter::repeat_n(pad, spec.width));
    match spec.conv {
        b'%' => out.push(b'%'),
        b'A' => match props.and_then(|p| p.topic_alias) {
            Some(v) => int(out, v.into(), spec),
            None => blank(out, pad),
        },
        b'C' => match props.and_then(|p| p.content_type.as_deref()) {
            Some(v) => string(out, v.as_bytes(), spec),
            None => blank(out, b' '),
        },
        b'D' => {
            if let Some(v) = props.and_then(|p| p.correlation_data.as_ref()) {
                out.extend_from_slice(v);
            }
        }
        b'E' => match props.and_then(|p| p.message_expiry_interval) {
            Some(v) => int(out, v as i32 as i64, spec),
            None => blank(out, pad),
        },
        b'F' => match props.and_then(|p| p.payload_format_indicator) {
            Some(v) => int(out, v.into(), spec),
            None => blank(out, pad),
        },
        b'I' => string(out, &time.strftime("%FT%T%z"), spec),
        b'j' | b'J' => {
            if let Err(e) = json(out, m, time, spec.conv == b'j', pretty) {
                warn(e);
            }
        }
        b'l' => int(out, m.payload.len() as i64, spec),
        b'm' => int(out, m.mid.into(), spec),
        b'P' => {
            if let Some(p) = props {
                for (n, (k, v)) in p.user_properties.iter().enumerate() {
                    if n > 0 {
                        out.push(b' ');
                    }
                    out.extend_from_slice(k.as_bytes());
                    out.push(b':');
                    out.extend_from_slice(v.as_bytes());
                }
            }
        }
        b'p' => payload(out, m.payload, 0, spec),
        b'q' => out.push(b'0' + m.qos),
        b'R' => {
            if let Some(v) = props.and_then(|p| p.response_topic.as_deref()) {
                string(out, v.as_bytes(), spec);
            }
        }
        b'r' => out.push(if m.retain { b'1' } else { b'0' }),
        b'S' => match props.and_then(|p| p.subscription_identifiers.first()) {
            Some(v) => int(out, *v as i32 as i64, spec),
            None => blank(out, pad),
        },
        b't' => string(out, m.topic.as_bytes(), spec),
        b'U' => out.extend_from_slice(format!("{}.{:09}", time.secs, time.nanos).as_bytes()),
        b'x' => payload(out, m.payload, 1, spec),
        b'X' => payload(out, m.payload, 2, spec),
        _ => {}
    }
}

/// printf's `%d`, `%-*d`, `%0*d`, `%*d`.
fn int(out: &mut Vec<u8>, v: i64, spec: &Spec) {
    let s = v.to_string();
    let w = spec.width;
    let text = if w == 0 {
        s
    } else if spec.left {
        format!("{s:<w$}")
    } else if spec.zero {
        if v < 0 {
            format!("-{:0>width$}", &s[1..], width = w.saturating_sub(1))
        } else {
            format!("{s:0>w$}")
        }
    } else {
        format!("{s:>w$}")
    };
    out.extend_from_slice(text.as_bytes());
}

/// printf's `%*.*s` on bytes (precision cuts, width pads with spaces).
fn string(out: &mut Vec<u8>, v: &[u8], spec: &Spec) {
    let v = match spec.precision {
        Some(p) => &v[..p.min(v.len())],
        None => v,
    };
    let padlen = spec.width.saturating_sub(v.len());
    if !spec.left {
        out.extend(std::iter::repeat_n(b' ', padlen));
    }
    out.extend_from_slice(v);
    if spec.left {
        out.extend(std::iter::repeat_n(b' ', padlen));
    }
}

/// mosquitto's write_payload: a width cuts the payload (for hex, to half
/// the width in bytes); `-` without a width pads with the payload's length.
fn payload(out: &mut Vec<u8>, payload: &[u8], hex: u8, spec: &Spec) {
    let width = spec.width as i64;
    let mut len = payload.len() as i64;
    let padlen;
    if width > 0 {
        len = len.min(width);
        if hex > 0 {
            len /= 2;
            padlen = width - len * 2;
        } else {
            padlen = width - len;
        }
    } else {
        padlen = width - len;
    }
    let pad = if spec.zero { b'0' } else { b' ' };
    if !spec.left {
        out.extend(std::iter::repeat_n(pad, padlen.max(0) as usize));
    }
    let bytes = &payload[..len as usize];
    match hex {
        0 => out.extend_from_slice(bytes),
        1 => bytes
            .iter()
            .for_each(|b| out.extend_from_slice(format!("{b:02x}").as_bytes())),
        _ => bytes
            .iter()
            .for_each(|b| out.extend_from_slice(format!("{b:02X}").as_bytes())),
    }
    if spec.left {
        // printf("%*s", padlen, ""): a negative width pads too.
        out.extend(std::iter::repeat_n(b' ', padlen.unsigned_abs() as usize));
    }
}

/// The time a message is printed with, in local time as mosquitto does.
struct Time {
    secs: i64,
    nanos: u32,
}

impl Time {
    fn of(t: SystemTime) -> Time {
        let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        Time {
            secs: d.as_secs() as i64,
            nanos: d.subsec_nanos(),
        }
    }

    /// libc's strftime in the local time zone (TZ).
    fn strftime(&self, fmt: &str) -> Vec<u8> {
        let Ok(cfmt) = CString::new(fmt) else {
            return Vec::new();
        };
        let t: libc::time_t = self.secs as libc::time_t;
        // SAFETY: `tm` is plain data filled by localtime_r; strftime writes
        // at most `buf.len()` bytes into `buf` and returns how many it wrote.
        unsafe {
            let mut tm: libc::tm = std::mem::zeroed();
            if libc::localtime_r(&t, &mut tm).is_null() {
                return Vec::new();
            }
            let mut buf = [0u8; 256];
            let n = libc::strftime(
                buf.as_mut_ptr() as *mut libc::c_char,
                buf.len(),
                cfmt.as_ptr(),
                &tm,
            );
            buf[..n].to_vec()
        }
    }

    /// `2020-05-06T21:48:00.123456Z+0000`, as mosquitto 2.0 writes `tst`.
    fn tst(&self) -> Vec<u8> {
        let mut s = self.strftime("%Y-%m-%dT%H:%M:%S");
        s.extend_from_slice(format!(".{:06}Z", self.nanos / 1000).as_bytes());
        s.extend_from_slice(&self.strftime("%z"));
        s
    }
}

/// `%j` (payload as a string) and `%J` (payload parsed as JSON), printed
/// as cJSON prints them (`--pretty`: cJSON_Print's tabs).
fn json(
    out: &mut Vec<u8>,
    m: &Msg<'_>,
    time: &Time,
    escaped: bool,
    pretty: bool,
) -> Result<(), String> {
    let payload = if m.payload.is_empty() {
        J::Null
    } else if escaped {
        // mosquitto hands cJSON a C string: it ends at the first NUL.
        let end = m
            .payload
            .iter()
            .position(|b| *b == 0)
            .unwrap_or(m.payload.len());
        J::Str(m.payload[..end].to_vec())
    } else {
        let v: serde_json::Value = serde_json::from_slice(m.payload).map_err(|_| {
            format!(
                "Error: Message payload is not valid JSON on topic {}.",
                m.topic
            )
        })?;
        J::from_value(&v)
    };
    let mut root = vec![
        ("tst".to_owned(), J::Str(time.tst())),
        ("topic".to_owned(), J::Str(m.topic.as_bytes().to_vec())),
        ("qos".to_owned(), J::Num(m.qos.into())),
        (
            "retain".to_owned(),
            J::Num(if m.retain { 1.0 } else { 0.0 }),
        ),
        ("payloadlen".to_owned(), J::Num(m.payload.len() as f64)),
    ];
    if m.qos > 0 {
        root.push(("mid".to_owned(), J::Num(m.mid.into())));
    }
    if let Some(p) = m.properties.filter(|p| !p.is_empty()) {
        root.push(("properties".to_owned(), properties(p)));
    }
    root.push(("payload".to_owned(), payload));
    J::Obj(root).print(out, pretty, 0);
    Ok(())
}

/// Properties in the order Mosquitto relays an `mqlink pub` message (the
/// library keeps no wire order): message expiry last, as the broker
/// rewrites it; user properties as one object.
fn properties(p: &PublishProperties) -> J {
    let mut o = Vec::new();
    let s = |v: &str| J::Str(v.as_bytes().to_vec());
    if let Some(v) = p.payload_format_indicator {
        o.push(("payload-format-indicator".to_owned(), J::Num(v.into())));
    }
    if let Some(v) = p.topic_alias {
        o.push(("topic-alias".to_owned(), J::Num(v.into())));
    }
    if let Some(v) = &p.response_topic {
        o.push(("response-topic".to_owned(), s(v)));
    }
    if let Some(v) = &p.correlation_data {
        let end = v.iter().position(|b| *b == 0).unwrap_or(v.len());
        o.push(("correlation-data".to_owned(), J::Str(v[..end].to_vec())));
    }
    if !p.user_properties.is_empty() {
        let users = p
            .user_properties
            .iter()
            .map(|(k, v)| (k.clone(), s(v)))
            .collect();
        o.push(("user-properties".to_owned(), J::Obj(users)));
    }
    for id in &p.subscription_identifiers {
        o.push(("subscription-identifier".to_owned(), J::Num(*id as f64)));
    }
    if let Some(v) = &p.content_type {
        o.push(("content-type".to_owned(), s(v)));
    }
    if let Some(v) = p.message_expiry_interval {
        o.push(("message-expiry-interval".to_owned(), J::Num(v.into())));
    }
    J::Obj(o)
}

/// A JSON tree as cJSON holds it: numbers are doubles, objects keep order
/// and duplicate keys.
enum J {
    Null,
    Bool(bool),
    Num(f64),
    Str(Vec<u8>),
    Arr(Vec<J>),
    Obj(Vec<(String, J)>),
}

impl J {
    fn from_value(v: &serde_json::Value) -> J {
        use serde_json::Value as V;
        match v {
            V::Null => J::Null,
            V::Bool(b) => J::Bool(*b),
            V::Number(n) => J::Num(n.as_f64().unwrap_or(0.0)),
            V::String(s) => J::Str(s.as_bytes().to_vec()),
            V::Array(a) => J::Arr(a.iter().map(J::from_value).collect()),
            V::Object(o) => J::Obj(
                o.iter()
                    .map(|(k, v)| (k.clone(), J::from_value(v)))
                    .collect(),
            ),
        }
    }

    /// cJSON_PrintUnformatted, or cJSON_Print when `pretty`.
    fn print(&self, out: &mut Vec<u8>, pretty: bool, depth: usize) {
        match self {
            J::Null => out.extend_from_slice(b"null"),
            J::Bool(true) => out.extend_from_slice(b"true"),
            J::Bool(false) => out.extend_from_slice(b"false"),
            J::Num(d) => out.extend_from_slice(cjson_number(*d).as_bytes()),
            J::Str(s) => cjson_string(out, s),
            J::Arr(items) => {
                out.push(b'[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                        if pretty {
                            out.push(b' ');
                        }
                    }
                    item.print(out, pretty, depth + 1);
                }
                out.push(b']');
            }
            J::Obj(items) => {
                out.push(b'{');
                if pretty {
                    out.push(b'\n');
                }
                for (i, (k, v)) in items.iter().enumerate() {
                    if pretty {
                        out.extend(std::iter::repeat_n(b'\t', depth + 1));
                    }
                    cjson_string(out, k.as_bytes());
                    out.push(b':');
                    if pretty {
                        out.push(b'\t');
                    }
                    v.print(out, pretty, depth + 1);
                    if i + 1 < items.len() {
                        out.push(b',');
                    }
                    if pretty {
                        out.push(b'\n');
                    }
                }
                if pretty {
                    out.extend(std::iter::repeat_n(b'\t', depth));
                }
                out.push(b'}');
            }
        }
    }
}

/// cJSON's string escaping: `"` `\` and control characters; other bytes as they are.
fn cjson_string(out: &mut Vec<u8>, s: &[u8]) {
    out.push(b'"');
    for &b in s {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            c if c < 0x20 => out.extend_from_slice(format!("\\u{c:04x}").as_bytes()),
            c => out.push(c),
        }
    }
    out.push(b'"');
}

/// cJSON's print_number: integers in `int` range as `%d`, else `%1.15g`,
/// or `%1.17g` when 15 digits do not read back as the same double.
fn cjson_number(d: f64) -> String {
    if !d.is_finite() {
        return "null".to_owned();
    }
    let as_int = d.clamp(i32::MIN as f64, i32::MAX as f64) as i32;
    if d == as_int as f64 {
        return as_int.to_string();
    }
    let s = printf_g(d, 15);
    let back: f64 = s.parse().unwrap_or(f64::NAN);
    if (back - d).abs() <= back.abs().max(d.abs()) * f64::EPSILON {
        s
    } else {
        printf_g(d, 17)
    }
}

/// C's `%.{precision}g`.
fn printf_g(d: f64, precision: usize) -> String {
    if d == 0.0 {
        return "0".to_owned();
    }
    let sci = format!("{:.*e}", precision - 1, d);
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let trim = |s: &str| -> String {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_owned()
        } else {
            s.to_owned()
        }
    };
    if exp < -4 || exp >= precision as i32 {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{}e{sign}{:02}", trim(mantissa), exp.unsigned_abs())
    } else {
        let decimals = (precision as i32 - 1 - exp).max(0) as usize;
        trim(&format!("{d:.decimals$}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn msg<'a>(topic: &'a str, payload: &'a [u8], props: Option<&'a PublishProperties>) -> Msg<'a> {
        Msg {
            topic,
            payload,
            qos: 1,
            retain: true,
            mid: 7,
            properties: props,
            received_at: UNIX_EPOCH + Duration::new(1_600_000_000, 123_456_789),
        }
    }

    fn render(f: &str, m: &Msg<'_>) -> String {
        let mut out = Vec::new();
        Template::parse(f)
            .unwrap()
            .render(m, false, &mut out, &mut |_| {});
        String::from_utf8_lossy(&out).into_owned()
    }

    #[test]
    fn widths_and_quirks_as_mosquitto() {
        let m = msg("e/3", b"1.5e300", None);
        assert_eq!(
            render(
                "%-p|%-x|%-3t|%.1t|%-08l|%08l|%3p|%-3p|%03p|%5.2t",
                &msg("e/2", "hé".as_bytes(), None)
            ),
            "hé   |68c3a9   |e/2|e|3       |00000003|hé|hé|hé|   e/"
        );
        assert_eq!(
            render("%3p|%10x|%5l|%-5l|%m %q %r", &m),
            "1.5|    312e35|    7|7    |7 1 1"
        );
        let e = msg("e/1", b"", None);
        assert_eq!(
            render("%-p|%-x|%3p|%-3p|%03p|%5E|%C|%5C|%R|%P", &e),
            "||   |   |000|     ||     ||"
        );
        assert_eq!(
            render("%% \\t\\\\ @@ %U", &m),
            "% \t\\ @ 1600000000.123456789"
        );
    }

    #[test]
    fn refuses_what_mosquitto_refuses() {
        for (f, e) in [
            ("%", "Error: Incomplete format specifier."),
            ("%5", "Error: Incomplete format specifier."),
            ("%u", "Error: Invalid format specifier 'u'."),
            ("@", "Error: Incomplete format specifier."),
            ("\\", "Error: Incomplete escape specifier."),
            ("\\q", "Error: Invalid escape specifier 'q'."),
        ] {
            assert_eq!(Template::parse(f).unwrap_err(), e, "{f}");
        }
    }

    #[test]
    fn json_as_cjson_prints_it() {
        let props = PublishProperties {
            content_type: Some("text/x".into()),
            user_properties: vec![("k".into(), "v".into()), ("k2".into(), "v2".into())],
            ..Default::default()
        };
        let m = msg("r/3", b"{\"a\": [1, 2.5, \"\\u00e9\"]}", Some(&props));
        let j = render("%j", &m);
        assert!(
            j.starts_with("{\"tst\":\"2020-09-13T12:26:40.123456Z"),
            "{j}"
        );
        assert!(j.ends_with(",\"topic\":\"r/3\",\"qos\":1,\"retain\":1,\"payloadlen\":25,\"mid\":7,\"properties\":{\"user-properties\":{\"k\":\"v\",\"k2\":\"v2\"},\"content-type\":\"text/x\"},\"payload\":\"{\\\"a\\\": [1, 2.5, \\\"\\\\u00e9\\\"]}\"}"), "{j}");
        let big = render("%J", &m);
        assert!(big.ends_with("\"payload\":{\"a\":[1,2.5,\"é\"]}}"), "{big}");
        let mut out = Vec::new();
        let mut errs = Vec::new();
        Template::parse("a%Jb").unwrap().render(
            &msg("t", b"nope", None),
            false,
            &mut out,
            &mut |e| errs.push(e),
        );
        assert_eq!(out, b"ab");
        assert_eq!(
            errs,
            ["Error: Message payload is not valid JSON on topic t."]
        );
    }

    #[test]
    fn numbers_as_cjson() {
        for (d, s) in [
            (1.0, "1"),
            (-3.0, "-3"),
            (1.5e300, "1.5e+300"),
            (0.1, "0.1"),
            (3e9, "3000000000"),
            (1e-7, "1e-07"),
            // cJSON reads 15 digits back with a relative epsilon.
            (0.30000000000000004, "0.3"),
            (123456.789, "123456.789"),
        ] {
            assert_eq!(cjson_number(d), s, "{d}");
        }
    }
}
