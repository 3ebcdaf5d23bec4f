//! Cybus Connectware service commissioning files as a front end: a YAML
//! file with top-level `resources:` of `Cybus::` types compiles into the
//! same typed [`Pipeline`] as mqlink's own files, with Connectware's
//! internal broker played by the embedded broker.
//!
//! - [`yaml`]: the file: `!ref`, `!sub`, `parameters` (`--param`,
//!   `MQLINK_PARAM_<name>`), `definitions`, `Cybus::ServiceId` and
//!   `Cybus::MqttRoot`;
//! - [`resources`]: `Cybus::Connection`, `Cybus::Endpoint` (protocol Mqtt)
//!   and `Cybus::Mapping` as connections, sources and sinks;
//! - [`rules`]: the rule engine (`transform`, `filter`, `collect`,
//!   `burst`; JSONata) as a [`crate::transform::Transform`].
//!
//! Errors name the resource and property path
//! (`resources.mqttConnection.properties.connection.port: …`).

pub mod resources;
pub mod rules;
pub mod yaml;

use std::collections::BTreeMap;

use serde_json::{Map, Value as Json};
use serde_yaml::Value as Yaml;

use crate::spec::{err, from_tree, ConfigError, Pipeline};

/// Whether `text` is a commissioning file: YAML whose top level has
/// `resources:` holding at least one `Cybus::` type.
pub fn is_commissioning_file(text: &str) -> bool {
    let Ok(Yaml::Mapping(top)) = serde_yaml::from_str::<Yaml>(text) else {
        return false;
    };
    let Some(Yaml::Mapping(res)) = top.get("resources") else {
        return false;
    };
    res.values().any(|r| {
        r.get("type")
            .and_then(|t| t.as_str())
            .is_some_and(|t| t.starts_with("Cybus::"))
    })
}

/// The service id Connectware derives from `metadata.name`: its letters
/// and digits, lower-cased (`MQTT Connection Test` → `mqttconnectiontest`).
pub fn service_id(name: &str) -> String {
    name.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// The file's top-level keys checked, and the service id its
/// `metadata.name` makes.
fn service_id_of(top: &serde_yaml::Mapping) -> Result<String, ConfigError> {
    for k in top.keys() {
        let key = yaml::key_string(k, "(file)")?;
        if ![
            "description",
            "metadata",
            "parameters",
            "definitions",
            "resources",
            "version",
        ]
        .contains(&key.as_str())
        {
            return Err(err(
                key,
                "unknown top-level key (a commissioning file has description, metadata, parameters, definitions, resources)",
            ));
        }
    }
    let metadata = match top.get("metadata") {
        None => Map::new(),
        Some(m) => match yaml::Scope::plain().resolve(m, "metadata")? {
            Json::Object(o) => o,
            _ => return Err(err("metadata", "expected name, version, provider …")),
        },
    };
    if let Some(k) = metadata.keys().find(|k| {
        ![
            "name",
            "version",
            "provider",
            "homepage",
            "icon",
            "description",
        ]
        .contains(&k.as_str())
    }) {
        return Err(err(
            format!("metadata.{k}"),
            "unknown key (known: name, version, provider, homepage, icon, description)",
        ));
    }
    let name = match metadata.get("name") {
        Some(Json::String(n)) => n.clone(),
        _ => {
            return Err(err(
                "metadata.name",
                "missing: the service's name (its id is derived from it)",
            ))
        }
    };
    let service_id = service_id(&name);
    if service_id.is_empty() {
        return Err(err(
            "metadata.name",
            format!("{name:?} has no letters or digits to make a service id of"),
        ));
    }
    Ok(service_id)
}

/// Reads a commissioning file; `params` are the `--param` values (later
/// ones win), `env` looks up `MQLINK_PARAM_<name>`. Resources mqlink does
/// not run are skipped with a warning ([`parse_with`] with `strict`
/// refuses them).
pub fn parse(
    text: &str,
    params: &[(String, String)],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Pipeline, ConfigError> {
    parse_with(text, params, env, false)
}

/// [`parse`]; with `strict` (`--strict`), a resource mqlink does not run
/// (`Cybus::User`, `Cybus::Container`, …) is an error.
pub fn parse_with(
    text: &str,
    params: &[(String, String)],
    env: &dyn Fn(&str) -> Option<String>,
    strict: bool,
) -> Result<Pipeline, ConfigError> {
    let doc: Yaml =
        serde_yaml::from_str(text).map_err(|e| err("(file)", format!("invalid YAML: {e}")))?;
    let Yaml::Mapping(top) = &doc else {
        return Err(err("(file)", "expected a commissioning file (description, metadata, parameters, definitions, resources)"));
    };
    let service_id = service_id_of(top)?;

    let Some(Yaml::Mapping(res)) = top.get("resources") else {
        return Err(err("resources", "expected a map of resources"));
    };
    let mut ids = Vec::new();
    for k in res.keys() {
        ids.push(yaml::key_string(k, "resources")?);
    }
    let mut scope = yaml::Scope {
        service_id: service_id.clone(),
        params: yaml::parameters(top.get("parameters"), params, env)?,
        definitions: BTreeMap::new(),
        resources: ids,
    };
    if let Some(defs) = top.get("definitions") {
        let Yaml::Mapping(defs) = defs else {
            return Err(err("definitions", "expected a map"));
        };
        // A definition may use parameters and earlier definitions.
        for (k, v) in defs {
            let key = yaml::key_string(k, "definitions")?;
            let value = scope.resolve(v, &format!("definitions.{key}"))?;
            scope.definitions.insert(key, value);
        }
    }
    let mut resources = BTreeMap::new();
    for (k, v) in res {
        let id = yaml::key_string(k, "resources")?;
        let path = format!("resources.{id}");
        let Json::Object(mut r) = scope.resolve(v, &path)? else {
            return Err(err(path, "expected type and properties"));
        };
        if let Some(key) = r
            .keys()
            .find(|k| !["type", "properties"].contains(&k.as_str()))
        {
            return Err(err(
                format!("{path}.{key}"),
                "unknown key (a resource has type and properties)",
            ));
        }
        let ty = match r.remove("type") {
            Some(Json::String(t)) => t,
            _ => {
                return Err(err(
                    format!("{path}.type"),
                    "missing: Cybus::Connection, Cybus::Endpoint, Cybus::Mapping …",
                ))
            }
        };
        let props = match r.remove("properties") {
            Some(Json::Object(p)) => p,
            None => Map::new(),
            Some(_) => return Err(err(format!("{path}.properties"), "expected an object")),
        };
        resources.insert(id, (ty, props));
    }
    let compiled = resources::compile(&service_id, &resources, strict)?;
    let mut pipeline = from_tree(compiled.tree).map_err(|e| {
        // The compiled keys are derived from the resources' names.
        err(
            e.path.clone(),
            format!("{} (in the pipeline compiled from this file)", e.message),
        )
    })?;
    pipeline.transforms = compiled.transforms;
    Ok(pipeline)
}

#[cfg(test)]
mod tests;
