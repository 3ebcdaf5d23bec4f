//! The file itself: YAML with Connectware's tags (`!ref`, `!sub`), the
//! `parameters` they refer to (given with `--param` or
//! `MQLINK_PARAM_<name>`), `definitions`, and the pseudo parameters
//! `Cybus::ServiceId` and `Cybus::MqttRoot`. The result is a JSON tree in
//! which a reference to a resource is the object `{"!ref": "<id>"}`.

use std::collections::BTreeMap;

use serde_json::{Map, Value as Json};
use serde_yaml::Value as Yaml;

use crate::spec::{err, ConfigError};

/// The key of the JSON object that stands for `!ref <resource id>`.
pub const REF: &str = "!ref";

/// What `!ref` and `${…}` can name.
pub struct Scope {
    pub service_id: String,
    pub params: BTreeMap<String, Json>,
    pub definitions: BTreeMap<String, Json>,
    pub resources: Vec<String>,
}

impl Scope {
    /// `Cybus::ServiceId`, `Cybus::MqttRoot` (the internal topics of this
    /// service: `services/<serviceId>`).
    fn pseudo(&self, name: &str) -> Option<String> {
        match name {
            "Cybus::ServiceId" => Some(self.service_id.clone()),
            "Cybus::MqttRoot" => Some(format!("services/{}", self.service_id)),
            _ => None,
        }
    }

    fn lookup(&self, name: &str, path: &str) -> Result<Json, ConfigError> {
        if let Some(v) = self.pseudo(name) {
            return Ok(Json::String(v));
        }
        if let Some(v) = self.params.get(name) {
            return Ok(v.clone());
        }
        if let Some(v) = self.definitions.get(name) {
            return Ok(v.clone());
        }
        if self.resources.iter().any(|r| r == name) {
            let mut m = Map::new();
            m.insert(REF.into(), Json::String(name.into()));
            return Ok(Json::Object(m));
        }
        if name.starts_with("Cybus::") {
            return Err(err(
                path,
                format!(
                    "{name} is not known to mqlink (it knows Cybus::ServiceId and Cybus::MqttRoot)"
                ),
            ));
        }
        Err(err(
            path,
            format!("{name:?} is not a parameter, definition or resource of this file"),
        ))
    }

    /// `!sub`: every `${name}` replaced by its value (a resource by its id).
    fn substitute(&self, s: &str, path: &str, all: bool) -> Result<String, ConfigError> {
        let mut out = String::with_capacity(s.len());
        let mut rest = s;
        while let Some(i) = rest.find("${") {
            out.push_str(&rest[..i]);
            let body = &rest[i + 2..];
            let Some(end) = body.find('}') else {
                return Err(err(path, format!("unclosed ${{ in {s:?}")));
            };
            let name = &body[..end];
            if !all && !name.starts_with("Cybus::") {
                // A plain string keeps what is not a pseudo parameter.
                out.push_str(&rest[i..i + 2 + end + 1]);
            } else {
                match self.lookup(name, path)? {
                    Json::String(v) => out.push_str(&v),
                    Json::Object(o) if o.contains_key(REF) => out.push_str(name),
                    Json::Null => {}
                    other => out.push_str(&other.to_string()),
                }
            }
            rest = &body[end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }

    /// The YAML node as JSON, tags resolved; `path` names it in errors.
    pub fn resolve(&self, v: &Yaml, path: &str) -> Result<Json, ConfigError> {
        Ok(match v {
            Yaml::Null => Json::Null,
            Yaml::Bool(b) => Json::Bool(*b),
            Yaml::Number(n) => number(n),
            // Connectware substitutes its pseudo parameters in any string.
            Yaml::String(s) if s.contains("${Cybus::") => {
                Json::String(self.substitute(s, path, false)?)
            }
            Yaml::String(s) => Json::String(s.clone()),
            Yaml::Sequence(items) => Json::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| self.resolve(item, &format!("{path}[{i}]")))
                    .collect::<Result<_, _>>()?,
            ),
            Yaml::Mapping(m) => {
                let mut out = Map::new();
                for (k, item) in m {
                    let key = key_string(k, path)?;
                    let p = join(path, &key);
                    let value = self.resolve(item, &p)?;
                    out.insert(key, value);
                }
                Json::Object(out)
            }
            Yaml::Tagged(t) => {
                let tag = t.tag.to_string();
                let Yaml::String(arg) = &t.value else {
                    return Err(err(path, format!("{tag} takes a string, e.g. {tag} name")));
                };
                match tag.as_str() {
                    "!ref" => self.lookup(arg.trim(), path)?,
                    "!sub" => Json::String(self.substitute(arg, path, true)?),
                    other => {
                        return Err(err(
                            path,
                            format!("unknown tag {other}: Connectware's are !ref and !sub"),
                        ))
                    }
                }
            }
        })
    }
}

fn number(n: &serde_yaml::Number) -> Json {
    if let Some(i) = n.as_i64() {
        Json::from(i)
    } else if let Some(u) = n.as_u64() {
        Json::from(u)
    } else {
        n.as_f64()
            .and_then(serde_json::Number::from_f64)
            .map(Json::Number)
            .unwrap_or(Json::Null)
    }
}

pub(super) fn key_string(k: &Yaml, path: &str) -> Result<String, ConfigError> {
    match k {
        Yaml::String(s) => Ok(s.clone()),
        Yaml::Number(n) => Ok(n.to_string()),
        Yaml::Bool(b) => Ok(b.to_string()),
        _ => Err(err(path, "keys must be strings")),
    }
}

pub(super) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// A declared parameter.
#[derive(serde::Deserialize, Debug)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Parameter {
    #[serde(rename = "type", default = "string_type")]
    ty: String,
    default: Option<Json>,
    #[allow(dead_code)]
    description: Option<String>,
    allowed_values: Option<Vec<Json>>,
    #[allow(dead_code)]
    allowed_pattern: Option<String>,
    min_length: Option<usize>,
    max_length: Option<usize>,
    minimum: Option<f64>,
    maximum: Option<f64>,
}

fn string_type() -> String {
    "string".into()
}

/// The values of the file's parameters: given (`--param`, then
/// `MQLINK_PARAM_<name>`), else the default; a parameter without either
/// is an error naming it. A value given for an undeclared parameter too.
pub fn parameters(
    declared: Option<&Yaml>,
    given: &[(String, String)],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<BTreeMap<String, Json>, ConfigError> {
    let mut out = BTreeMap::new();
    let empty = serde_yaml::Mapping::new();
    let decl = match declared {
        None | Some(Yaml::Null) => &empty,
        Some(Yaml::Mapping(m)) => m,
        Some(_) => return Err(err("parameters", "expected a map of parameter names")),
    };
    for (name, _) in given {
        if !decl.keys().any(|k| k.as_str() == Some(name)) {
            let known: Vec<&str> = decl.keys().filter_map(|k| k.as_str()).collect();
            return Err(err(
                format!("--param {name}"),
                format!(
                    "the file declares no parameter {name:?} (parameters: {})",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ),
            ));
        }
    }
    for (k, v) in decl {
        let name = key_string(k, "parameters")?;
        let path = format!("parameters.{name}");
        // Parameters are plain values: no tags inside.
        let body: Json = Scope::plain().resolve(v, &path)?;
        let p: Parameter = crate::spec::typed(&path, body)?;
        let raw = given
            .iter()
            .rev()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| (v.clone(), format!("--param {name}")))
            .or_else(|| {
                env(&format!("MQLINK_PARAM_{name}")).map(|v| (v, format!("MQLINK_PARAM_{name}")))
            });
        let value = match (raw, &p.default) {
            (Some((text, source)), _) => {
                typed_value(&p.ty, &text).map_err(|e| err(&path, format!("{source}: {e}")))?
            }
            (None, Some(d)) => d.clone(),
            (None, None) => {
                return Err(err(
                    path,
                    format!(
                    "required (no default): give --param {name}=VALUE or set MQLINK_PARAM_{name}"
                ),
                ))
            }
        };
        check(&p, &value).map_err(|e| err(&path, e))?;
        out.insert(name, value);
    }
    Ok(out)
}

fn typed_value(ty: &str, text: &str) -> Result<Json, String> {
    match ty {
        "string" => Ok(Json::String(text.to_string())),
        "integer" => text
            .trim()
            .parse::<i64>()
            .map(Json::from)
            .map_err(|_| format!("{text:?} is not an integer")),
        "number" => text
            .trim()
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Json::Number)
            .ok_or_else(|| format!("{text:?} is not a number")),
        "boolean" => match text.trim() {
            "true" => Ok(Json::Bool(true)),
            "false" => Ok(Json::Bool(false)),
            _ => Err(format!("{text:?} is not true or false")),
        },
        other => Err(format!(
            "unknown parameter type {other:?}: use string, integer, number or boolean"
        )),
    }
}

/// The declared constraints (the value itself is never printed: it may be a password).
fn check(p: &Parameter, v: &Json) -> Result<(), String> {
    if !matches!(p.ty.as_str(), "string" | "integer" | "number" | "boolean") {
        return Err(format!(
            "type: unknown parameter type {:?}: use string, integer, number or boolean",
            p.ty
        ));
    }
    if let Some(allowed) = &p.allowed_values {
        if !allowed.contains(v) {
            let list: Vec<String> = allowed.iter().map(|a| a.to_string()).collect();
            return Err(format!(
                "the value is not one of the allowedValues ({})",
                list.join(", ")
            ));
        }
    }
    if let Json::String(s) = v {
        let n = s.chars().count();
        if p.min_length.is_some_and(|m| n < m) || p.max_length.is_some_and(|m| n > m) {
            return Err(format!(
                "the value has {n} characters, outside minLength/maxLength"
            ));
        }
    }
    if let Some(x) = v.as_f64() {
        if p.minimum.is_some_and(|m| x < m) || p.maximum.is_some_and(|m| x > m) {
            return Err(format!("{x} is outside minimum/maximum"));
        }
    }
    Ok(())
}

impl Scope {
    /// A scope knowing nothing: for parts that take no references.
    pub fn plain() -> Scope {
        Scope {
            service_id: String::new(),
            params: BTreeMap::new(),
            definitions: BTreeMap::new(),
            resources: Vec::new(),
        }
    }
}
