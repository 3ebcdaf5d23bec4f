//! How `mqlink sub` writes a delivery: the payload, `topic payload` (-v),
//! or one JSON object per line (--format json).

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use mqlink::format::Value as Decoded;
use mqlink::source::Record;
use serde_json::{json, Map, Value};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// The payload as it is, one per line.
    Raw,
    /// One JSON object per line: topic, qos, retain, payload, properties, received_at.
    Json,
    /// Sparkplug B, decoded as a host application: one JSON object per
    /// metric per line (docs/guides/sparkplug.md); rebirths are requested.
    #[value(name = "sparkplug_b", alias = "sparkplug-b")]
    SparkplugB,
}

pub fn write(out: &mut Vec<u8>, d: &Record, format: Format, verbose: bool) {
    match format {
        Format::Raw => {
            if verbose {
                out.extend_from_slice(d.topic.as_bytes());
                out.push(b' ');
            }
            out.extend_from_slice(&d.payload);
            out.push(b'\n');
        }
        Format::Json => {
            let _ = serde_json::to_writer(&mut *out, &to_json(d));
            out.push(b'\n');
        }
        Format::SparkplugB => match &d.value {
            Ok(Decoded::Rows(rows)) => {
                for r in rows {
                    r.write_json(out);
                    out.push(b'\n');
                }
            }
            Ok(other) => {
                other.write_json(out);
                out.push(b'\n');
            }
            Err(e) => eprintln!("{}: {e}", d.topic),
        },
    }
}

/// The JSON form: payload as UTF-8 text when it is, base64 otherwise.
pub fn to_json(d: &Record) -> Value {
    let mut o = Map::new();
    o.insert("topic".into(), json!(d.topic.as_str()));
    o.insert("qos".into(), json!(d.qos as u8));
    o.insert("retain".into(), json!(d.retain));
    if d.dup {
        o.insert("dup".into(), json!(true));
    }
    match std::str::from_utf8(&d.payload) {
        Ok(text) => {
            o.insert("payload".into(), json!(text));
        }
        Err(_) => {
            o.insert(
                "payload".into(),
                json!(base64::engine::general_purpose::STANDARD.encode(&d.payload)),
            );
            o.insert("payload_encoding".into(), json!("base64"));
        }
    }
    if let Some(p) = &d.properties {
        let mut props = Map::new();
        if let Some(v) = &p.content_type {
            props.insert("content_type".into(), json!(v));
        }
        if let Some(v) = p.payload_format_indicator {
            props.insert("payload_format_indicator".into(), json!(v));
        }
        if let Some(v) = p.message_expiry_interval {
            props.insert("message_expiry_interval".into(), json!(v));
        }
        if let Some(v) = &p.response_topic {
            props.insert("response_topic".into(), json!(v));
        }
        if let Some(v) = &p.correlation_data {
            props.insert(
                "correlation_data".into(),
                json!(base64::engine::general_purpose::STANDARD.encode(v)),
            );
        }
        if !p.user_properties.is_empty() {
            let pairs: Vec<Value> = p
                .user_properties
                .iter()
                .map(|(k, v)| json!([k, v]))
                .collect();
            props.insert("user_properties".into(), Value::Array(pairs));
        }
        if !p.subscription_identifiers.is_empty() {
            props.insert(
                "subscription_identifiers".into(),
                json!(p.subscription_identifiers),
            );
        }
        o.insert("properties".into(), Value::Object(props));
    }
    o.insert("received_at".into(), json!(rfc3339(d.received_at)));
    match &d.value {
        // Raw bytes are the payload already.
        Ok(Decoded::Bytes(_)) => {}
        Ok(v) => {
            o.insert("value".into(), v.to_json());
        }
        Err(e) => {
            o.insert("error".into(), json!(e.to_string()));
        }
    }
    Value::Object(o)
}

/// RFC 3339 in UTC with microseconds, from a system time.
pub fn rfc3339(t: SystemTime) -> String {
    let us = t
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64);
    mqlink::format::format_rfc3339_micros(us)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_795_392_000_123);
        assert_eq!(rfc3339(t), "2026-11-23T00:00:00.123000Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000000Z");
    }
}
