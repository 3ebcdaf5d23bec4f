//! Topic templates: literal text with `{key}`, `{namespace}`, `{stream}`,
//! `{field}` and `{a.b}` (a path into the record's JSON value), checked when
//! configured and rendered per record.

use std::fmt;

use super::{RecordValue, SinkRecord};
use crate::topic::{check_levels, validate_topic_name, TopicError, MAX_LEVELS};

#[derive(Clone, Debug, PartialEq)]
enum Part {
    Literal(String),
    Key,
    Namespace,
    Stream,
    /// A path into the value: `{a.b}` is `["a", "b"]`.
    Field(Vec<String>),
}

/// A parsed topic template.
#[derive(Clone, Debug, PartialEq)]
pub struct TopicTemplate {
    source: String,
    parts: Vec<Part>,
    /// Topic templates render topic names; text templates render payloads.
    topic: bool,
}

/// A template that cannot work, or a record it cannot render.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TemplateError {
    /// The template cannot be parsed.
    #[error("topic template {template:?}: {reason}")]
    Invalid {
        /// The template.
        template: String,
        /// What is wrong.
        reason: String,
    },
    /// The record lacks a field the template names.
    #[error("topic template {template:?}: the record has no {what}")]
    Missing {
        /// The template.
        template: String,
        /// The missing field.
        what: String,
    },
    /// The rendered topic is not a valid topic name.
    #[error("topic template {template:?} rendered an invalid topic: {error}")]
    InvalidTopic {
        /// The template.
        template: String,
        /// Why.
        error: TopicError,
    },
}

impl TopicTemplate {
    /// A topic template: literal text and `{field}` placeholders; checked
    /// as a topic name (no wildcards, no empty placeholders).
    pub fn parse(template: &str) -> Result<Self, TemplateError> {
        Self::parse_as(template, true)
    }

    /// A template for text (a payload), not a topic: no topic rules apply.
    pub fn parse_text(template: &str) -> Result<Self, TemplateError> {
        Self::parse_as(template, false)
    }

    fn parse_as(template: &str, topic: bool) -> Result<Self, TemplateError> {
        let invalid = |reason: &str| TemplateError::Invalid {
            template: template.to_owned(),
            reason: reason.to_owned(),
        };
        let mut parts = Vec::new();
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Literal(rest[..open].to_owned()));
            }
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| invalid("'{' without a closing '}'"))?
                + open;
            let name = &rest[open + 1..close];
            parts.push(match name {
                "key" => Part::Key,
                "namespace" => Part::Namespace,
                "stream" => Part::Stream,
                "" => return Err(invalid("empty placeholder {}")),
                path => {
                    if path.split('.').any(str::is_empty) || path.contains(['{', '/']) {
                        return Err(invalid(&format!("bad placeholder {{{path}}}")));
                    }
                    Part::Field(path.split('.').map(str::to_owned).collect())
                }
            });
            rest = &rest[close + 1..];
        }
        if rest.contains('}') {
            return Err(invalid("'}' without an opening '{'"));
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_owned()));
        }
        if parts.is_empty() && topic {
            return Err(invalid("the template is empty"));
        }
        if !topic {
            return Ok(TopicTemplate {
                source: template.to_owned(),
                parts,
                topic,
            });
        }
        for p in &parts {
            if let Part::Literal(l) = p {
                if l.contains(['+', '#', '\0']) {
                    return Err(invalid(
                        "wildcards ('+', '#') and NUL are not allowed in a topic",
                    ));
                }
            }
        }
        // A template without placeholders must be a valid topic already.
        if parts.iter().all(|p| matches!(p, Part::Literal(_))) {
            validate_topic_name(template).map_err(|e| invalid(&e.to_string()))?;
        }
        // Its literal text alone must leave room: placeholders only add.
        let literal: Vec<&str> = parts
            .iter()
            .filter_map(|p| match p {
                Part::Literal(l) => Some(l.as_str()),
                _ => None,
            })
            .collect();
        let (len, slashes) = (
            literal.iter().map(|l| l.len()).sum::<usize>(),
            literal
                .iter()
                .map(|l| l.matches('/').count())
                .sum::<usize>(),
        );
        if len > 65_535 {
            return Err(invalid(&format!(
                "its text is {len} bytes; a topic is at most 65535"
            )));
        }
        if slashes >= MAX_LEVELS {
            return Err(invalid(&format!(
                "{} levels; at most {MAX_LEVELS} (Mosquitto refuses deeper topics)",
                slashes + 1
            )));
        }
        Ok(TopicTemplate {
            source: template.to_owned(),
            parts,
            topic,
        })
    }

    /// Whether the template has no placeholders (one topic for every record).
    pub fn is_static(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Literal(_)))
    }

    /// The value fields the template reads (`{a.b}` is `["a", "b"]`), so a
    /// configuration can check them against a schema before running.
    pub fn fields(&self) -> impl Iterator<Item = &[String]> {
        self.parts.iter().filter_map(|p| match p {
            Part::Field(path) => Some(path.as_slice()),
            _ => None,
        })
    }

    /// Whether the template reads `{stream}` (the record's source topic).
    pub fn uses_stream(&self) -> bool {
        self.parts.iter().any(|p| matches!(p, Part::Stream))
    }

    /// Whether the template reads `{key}`.
    pub fn uses_key(&self) -> bool {
        self.parts.iter().any(|p| matches!(p, Part::Key))
    }

    /// Renders the topic for `record`; the result is a valid topic name or an error.
    pub fn render(&self, record: &SinkRecord) -> Result<String, TemplateError> {
        let missing = |what: &str| TemplateError::Missing {
            template: self.source.clone(),
            what: what.to_owned(),
        };
        let mut out = String::with_capacity(self.source.len() + 16);
        for p in &self.parts {
            match p {
                Part::Literal(l) => out.push_str(l),
                // An absent namespace renders empty, as Airbyte's destination does.
                Part::Namespace => out.push_str(record.namespace.as_deref().unwrap_or("")),
                Part::Key => out.push_str(record.key.as_deref().ok_or_else(|| missing("key"))?),
                Part::Stream => {
                    out.push_str(record.stream.as_deref().ok_or_else(|| missing("stream"))?)
                }
                Part::Field(path) => {
                    let RecordValue::Json(v) = &record.value else {
                        return Err(missing(&format!("JSON field {}", path.join("."))));
                    };
                    let field = path
                        .iter()
                        .try_fold(v, |v, k| v.get(k))
                        .ok_or_else(|| missing(&format!("field {}", path.join("."))))?;
                    match field {
                        serde_json::Value::String(s) => out.push_str(s),
                        serde_json::Value::Number(n) => out.push_str(&n.to_string()),
                        serde_json::Value::Bool(b) => {
                            out.push_str(if *b { "true" } else { "false" })
                        }
                        _ => return Err(missing(&format!("text or number at {}", path.join(".")))),
                    }
                }
            }
        }
        if self.topic {
            validate_topic_name(&out)
                .and_then(|()| check_levels(&out))
                .map_err(|error| TemplateError::InvalidTopic {
                    template: self.source.clone(),
                    error,
                })?;
        }
        Ok(out)
    }
}

impl fmt::Display for TopicTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rec(key: Option<&str>, value: serde_json::Value) -> SinkRecord {
        SinkRecord {
            key: key.map(str::to_owned),
            namespace: Some("ns".into()),
            stream: Some("users".into()),
            ..SinkRecord::json(value)
        }
    }

    #[test]
    fn renders() {
        let r = rec(
            Some("k1"),
            json!({"device_id": "d7", "loc": {"site": "s1", "n": 3}}),
        );
        for (t, want) in [
            ("sensors/{key}", "sensors/k1"),
            ("airbyte/{namespace}/{stream}", "airbyte/ns/users"),
            ("t/{device_id}/telemetry", "t/d7/telemetry"),
            ("site-{loc.site}/{loc.n}", "site-s1/3"),
            ("fixed/topic", "fixed/topic"),
        ] {
            assert_eq!(
                TopicTemplate::parse(t).unwrap().render(&r).unwrap(),
                want,
                "{t}"
            );
        }
        let mut no_ns = r.clone();
        no_ns.namespace = None;
        assert_eq!(
            TopicTemplate::parse("{namespace}/{stream}")
                .unwrap()
                .render(&no_ns)
                .unwrap(),
            "/users"
        );
    }

    #[test]
    fn bad_templates_are_refused_when_configured() {
        for t in ["", "a/{", "a/}", "a/{}", "a/+/{key}", "#", "a/{x..y}"] {
            let e = TopicTemplate::parse(t).unwrap_err().to_string();
            assert!(e.contains(&format!("{t:?}")), "{e}");
        }
    }

    #[test]
    fn text_templates_render_payloads() {
        let t = TopicTemplate::parse_text("{device_id}: {loc.n} #1 +").unwrap();
        let r = rec(None, json!({"device_id": "d7", "loc": {"n": 3}}));
        assert_eq!(t.render(&r).unwrap(), "d7: 3 #1 +");
    }

    #[test]
    fn bad_data_fails_the_record_alone() {
        let t = TopicTemplate::parse("t/{device_id}").unwrap();
        let e = t
            .render(&rec(None, json!({"device_id": "a/#"})))
            .unwrap_err();
        assert!(matches!(e, TemplateError::InvalidTopic { .. }), "{e}");
        let e = t.render(&rec(None, json!({"other": 1}))).unwrap_err();
        assert!(e.to_string().contains("field device_id"), "{e}");
        let e = TopicTemplate::parse("{key}")
            .unwrap()
            .render(&rec(None, json!({})))
            .unwrap_err();
        assert!(e.to_string().contains("no key"), "{e}");
        let e = TopicTemplate::parse("{key}")
            .unwrap()
            .render(&rec(Some(""), json!({})))
            .unwrap_err();
        assert!(
            matches!(e, TemplateError::InvalidTopic { .. }),
            "empty topic: {e}"
        );
    }
}
