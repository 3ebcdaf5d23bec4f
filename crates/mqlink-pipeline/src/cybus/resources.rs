//! `Cybus::Connection`, `Cybus::Endpoint` and `Cybus::Mapping` compiled
//! into the pipeline's own tree (connections, sources, sinks) and the
//! stages of their rules. Connectware's internal broker is the pipeline's
//! embedded broker (connection `_internal`).
//!
//! - A subscribe endpoint: an MQTT source on its connection → an MQTT sink
//!   publishing the payload unmodified to the endpoint's internal topic.
//! - A write endpoint: a source on `<internal topic>/set` → a sink
//!   publishing unmodified to the far broker (MQTT write endpoints give no
//!   `/res` result in Connectware either).
//! - A mapping entry: a source on its subscriptions (the internal broker,
//!   or the subscription's `connection`) → its rules → a sink on the
//!   publish topic (with wildcard values filled in).

use std::collections::BTreeMap;
use std::sync::Arc;

use mqlink::topic::{validate_filter, validate_topic_name};
use serde_json::{json, Map, Value as Json};

use super::rules::{parse_rules, Rule, Stage, Subscription, TopicPattern};
use super::yaml::REF;
use crate::spec::{err, ConfigError};
use crate::transform::MakeTransform;

/// The pipeline connection standing for Connectware's internal broker.
pub const INTERNAL: &str = "_internal";

/// The connector every Cybus endpoint and mapping compiles to.
const MQTT: &str = crate::connectors::mqtt::CONNECTOR.name;

/// What a file compiles to.
pub struct Compiled {
    pub tree: Json,
    pub transforms: BTreeMap<String, Arc<dyn MakeTransform>>,
}

/// Resource types mqlink runs.
const SUPPORTED: &[&str] = &["Cybus::Connection", "Cybus::Endpoint", "Cybus::Mapping"];

struct Ctx<'a> {
    service_id: &'a str,
    /// Resource id → (type, properties).
    resources: &'a BTreeMap<String, (String, Map<String, Json>)>,
    connections: Map<String, Json>,
    sources: Map<String, Json>,
    sinks: Map<String, Json>,
    transforms: BTreeMap<String, Arc<dyn MakeTransform>>,
}

/// Compiles the resources. Types mqlink does not run (`Cybus::User`,
/// `Cybus::Container`, …: routine in production files) are skipped with
/// one warning naming them, or refused when `strict` (`--strict`).
pub fn compile(
    service_id: &str,
    resources: &BTreeMap<String, (String, Map<String, Json>)>,
    strict: bool,
) -> Result<Compiled, ConfigError> {
    let skipped: Vec<String> = resources
        .iter()
        .filter(|(_, (ty, _))| !SUPPORTED.contains(&ty.as_str()))
        .map(|(id, (ty, _))| format!("{id} ({ty})"))
        .collect();
    if !strict && !skipped.is_empty() {
        tracing::warn!(
            skipped = %skipped.join(", "),
            "Resources mqlink does not run are skipped: it runs the MQTT part of the file ({}); Connectware runs the rest. --strict refuses such a file instead.",
            SUPPORTED.join(", ")
        );
    }
    let resources = &resources
        .iter()
        .filter(|(_, (ty, _))| strict || SUPPORTED.contains(&ty.as_str()))
        .map(|(id, r)| (id.clone(), r.clone()))
        .collect::<BTreeMap<_, _>>();
    let mut c = Ctx {
        service_id,
        resources,
        connections: Map::new(),
        sources: Map::new(),
        sinks: Map::new(),
        transforms: BTreeMap::new(),
    };
    c.connections.insert(
        INTERNAL.into(),
        // MQTT 5: acknowledgements travel through it as user properties
        // (crate::relay), so a chain of hops acknowledges end to end.
        json!({ "broker": "embedded", "client_id": service_id, "clean_session": false, "protocol": "5" }),
    );
    for (id, (ty, _)) in resources {
        if !SUPPORTED.contains(&ty.as_str()) {
            return Err(err(
                format!("resources.{id}.type"),
                format!("{ty} is not supported: mqlink runs only the MQTT part of a commissioning file ({}, with protocol Mqtt); remove this resource, run it in Connectware, or leave out --strict to skip it with a warning", SUPPORTED.join(", ")),
            ));
        }
    }
    for (id, (ty, props)) in resources {
        let path = format!("resources.{id}.properties");
        // An endpoint or mapping Connectware would not start, mqlink does
        // not run either (it is still checked).
        let disabled = match props.get("targetState") {
            None | Some(Json::Null) => false,
            Some(Json::String(s)) if ty != "Cybus::Connection" && s == "disabled" => true,
            Some(Json::String(s)) if ty != "Cybus::Connection" && s == "enabled" => false,
            Some(Json::String(s))
                if ty == "Cybus::Connection" && (s == "connected" || s == "disconnected") =>
            {
                false
            }
            Some(other) => {
                let values = if ty == "Cybus::Connection" {
                    "connected or disconnected"
                } else {
                    "enabled or disabled"
                };
                return Err(err(
                    format!("{path}.targetState"),
                    format!("{other} is not {values}"),
                ));
            }
        };
        let (sources, sinks, stages) = (c.sources.clone(), c.sinks.clone(), c.transforms.clone());
        match ty.as_str() {
            "Cybus::Connection" => c.connection(id, props, &path)?,
            "Cybus::Endpoint" => c.endpoint(id, props, &path)?,
            _ => c.mapping(id, props, &path)?,
        }
        if disabled {
            (c.sources, c.sinks, c.transforms) = (sources, sinks, stages);
        }
    }
    if c.sources.is_empty() {
        return Err(err(
            "resources",
            "nothing to run: no Cybus::Endpoint or Cybus::Mapping",
        ));
    }
    // No embedded broker when nothing uses the internal one (a mapping
    // between two external brokers).
    let uses_internal = c
        .sources
        .values()
        .chain(c.sinks.values())
        .any(|v| v["connection"] == INTERNAL);
    if !uses_internal {
        c.connections.remove(INTERNAL);
    }
    Ok(Compiled {
        tree: json!({
            "connections": c.connections,
            "sources": c.sources,
            "sinks": c.sinks,
        }),
        transforms: c.transforms,
    })
}

/// `Cybus::Connection` properties: only their names are checked here (an
/// unknown one is an error naming it); values are read below with
/// Connectware's leniency (numbers as strings, `null` as absent).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)]
struct ConnectionResource {
    /// `Mqtt` (the only protocol mqlink runs).
    protocol: Option<Json>,
    /// The broker: [`MqttConnection`].
    connection: Option<Json>,
    /// Connectware's agent: ignored (mqlink is the agent).
    agent_name: Option<Json>,
    /// Connectware's `enabled`/`disabled`: ignored.
    target_state: Option<Json>,
}

/// `Cybus::Connection`'s `connection:` for `protocol: Mqtt`, in
/// Connectware's names.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct MqttConnection {
    /// The broker's host name or address (required).
    host: Option<Json>,
    /// [default: the scheme's: 1883, 8883, 80, 443].
    port: Option<Json>,
    /// `mqtt`/`tcp`, `mqtts`/`tls`, `ws`, `wss` [default: mqtt].
    scheme: Option<Json>,
    username: Option<Json>,
    /// Never shown in errors.
    password: Option<Json>,
    /// [default: `<service id>-<resource id>`].
    client_id: Option<Json>,
    /// Clean session [default: true, Connectware's].
    clean: Option<Json>,
    /// Keep-alive in seconds.
    keepalive: Option<Json>,
    /// Milliseconds to wait for CONNACK.
    connect_timeout: Option<Json>,
    /// Milliseconds before reconnecting.
    reconnect_period: Option<Json>,
    /// 3 (MQTT 3.1), 4 (MQTT 3.1.1) or 5.
    protocol_version: Option<Json>,
    /// Send `clientCert` and `clientPrivateKey` [default: false].
    mutual_authentication: Option<Json>,
    /// PEM text or a file.
    ca_cert: Option<Json>,
    client_cert: Option<Json>,
    client_private_key: Option<Json>,
    /// Skip verifying the broker's certificate [default: false].
    trust_all_certificates: Option<Json>,
    /// Connectware's reconnect buffer, checked against its bounds and
    /// otherwise unused (mqlink acknowledges only what it delivered).
    message_buffer_window_ms: Option<Json>,
    max_buffered_messages: Option<Json>,
}

impl MqttConnection {
    /// `scheme://host:port` from Connectware's host, scheme and port.
    fn broker_url(&self, cpath: &str) -> Result<String, ConfigError> {
        let p = |k: &str| format!("{cpath}.{k}");
        let host = string(self.host.as_ref(), &p("host"))?
            .filter(|h| !h.is_empty())
            .ok_or_else(|| err(p("host"), "missing: the broker's host name or address"))?;
        let scheme = string(self.scheme.as_ref(), &p("scheme"))?.unwrap_or_else(|| "mqtt".into());
        let (url_scheme, default_port) = match scheme.as_str() {
            "mqtt" | "tcp" => ("mqtt", 1883),
            "mqtts" | "tls" => ("mqtts", 8883),
            "ws" => ("ws", 80),
            "wss" => ("wss", 443),
            other => {
                return Err(err(
                    p("scheme"),
                    format!("{other:?} is not a scheme: use mqtt, mqtts, tcp, tls, ws or wss"),
                ))
            }
        };
        let port = match self.port.as_ref() {
            None | Some(Json::Null) => default_port,
            Some(v) => v
                .as_u64()
                .and_then(|n| u16::try_from(n).ok())
                .filter(|n| *n > 0)
                .ok_or_else(|| err(p("port"), format!("{v} is not a port number")))?,
        };
        let host = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]")
        } else {
            host
        };
        Ok(format!("{url_scheme}://{host}:{port}"))
    }

    fn cert(&self, key: &str) -> Option<&Json> {
        match key {
            "caCert" => self.ca_cert.as_ref(),
            "clientCert" => self.client_cert.as_ref(),
            _ => self.client_private_key.as_ref(),
        }
    }
}

/// A resource's properties as `T` (serde, `deny_unknown_fields`), with
/// Connectware's wording for an unknown one: `PATH.KEY: unknown property
/// (known: …)`.
fn typed<T: serde::de::DeserializeOwned>(path: &str, v: Json) -> Result<T, ConfigError> {
    crate::spec::typed(path, v).map_err(|mut e| {
        if let Some(rest) = e.message.strip_prefix("unknown field `") {
            let known: Vec<&str> = rest
                .split('`')
                .skip(1)
                .filter(|s| !s.contains(',') && !s.contains(' ') && !s.is_empty())
                .collect();
            e.message = format!("unknown property (known: {})", known.join(", "));
        }
        e
    })
}

/// `props` has only the properties `T` declares: an unknown one is an
/// error naming its path. (Values are read by the resource's code, with
/// Connectware's leniency.)
fn check<T: serde::de::DeserializeOwned>(
    props: &Map<String, Json>,
    path: &str,
) -> Result<(), ConfigError> {
    typed::<T>(path, Json::Object(props.clone())).map(drop)
}

/// A `Cybus::Endpoint`'s properties (`protocol: Mqtt`).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)]
struct EndpointResource {
    /// `Mqtt`.
    protocol: Option<Json>,
    /// `!ref` to its `Cybus::Connection` (required).
    connection: Option<Json>,
    /// [`EndpointSubscribe`]: messages from the connection's broker.
    subscribe: Option<Json>,
    /// [`EndpointWrite`]: messages to the connection's broker.
    write: Option<Json>,
    /// Refused: not an MQTT operation.
    read: Option<Json>,
    /// Its topic on the internal broker [default: the resource id].
    topic: Option<Json>,
    /// QoS on the internal broker [default: 1].
    qos: Option<Json>,
    /// Retain on the internal broker [default: false].
    retain: Option<Json>,
    /// Its rules (transform, filter, collect, burst).
    rules: Option<Json>,
    target_state: Option<Json>,
    agent_name: Option<Json>,
    /// Connectware's buffering: accepted, unused (nothing is acknowledged
    /// before it is delivered).
    buffering: Option<Json>,
    input_buffering: Option<Json>,
}

/// An endpoint's `subscribe:`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct EndpointSubscribe {
    /// The filter (required); `+name`/`#name` wildcards may be named.
    topic: Option<Json>,
    /// [default: 1].
    qos: Option<Json>,
}

/// An endpoint's `write:`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct EndpointWrite {
    /// The topic to publish to (required).
    topic: Option<Json>,
    /// [default: 1].
    qos: Option<Json>,
    /// [default: false].
    retain: Option<Json>,
}

/// A `Cybus::Mapping`'s properties.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)]
struct MappingResource {
    /// [`MappingEntry`]s (at least one).
    mappings: Option<Json>,
    target_state: Option<Json>,
    agent_name: Option<Json>,
    input_buffering: Option<Json>,
}

/// One entry of `mappings:`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct MappingEntry {
    /// One [`MappingSubscribe`] or a list of them.
    subscribe: Option<Json>,
    /// [`MappingPublish`].
    publish: Option<Json>,
    /// Rules between them.
    rules: Option<Json>,
}

/// A mapping entry's `subscribe:`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct MappingSubscribe {
    /// `!ref` to a `Cybus::Endpoint` (or `topic`).
    endpoint: Option<Json>,
    /// A filter on the internal broker or `connection` (or `endpoint`).
    topic: Option<Json>,
    qos: Option<Json>,
    /// `!ref` to a `Cybus::Connection` [default: the internal broker].
    connection: Option<Json>,
    /// The rules' `$context.label` (`{name}` takes a named wildcard).
    label: Option<Json>,
}

/// A mapping entry's `publish:`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct MappingPublish {
    /// `!ref` to a `Cybus::Endpoint` (or `topic`).
    endpoint: Option<Json>,
    /// A topic (may use the subscription's named wildcards).
    topic: Option<Json>,
    /// `!ref` to a `Cybus::Connection` [default: the internal broker].
    connection: Option<Json>,
    qos: Option<Json>,
    retain: Option<Json>,
}

fn object<'a>(v: &'a Json, path: &str) -> Result<&'a Map<String, Json>, ConfigError> {
    v.as_object()
        .filter(|o| !o.contains_key(REF))
        .ok_or_else(|| err(path, "expected an object of properties"))
}

fn string(v: Option<&Json>, path: &str) -> Result<Option<String>, ConfigError> {
    match v {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(s)) => Ok(Some(s.clone())),
        Some(Json::Number(n)) => Ok(Some(n.to_string())),
        Some(Json::Bool(b)) => Ok(Some(b.to_string())),
        Some(_) => Err(err(path, "expected a string")),
    }
}

fn boolean(v: Option<&Json>, path: &str) -> Result<Option<bool>, ConfigError> {
    match v {
        None | Some(Json::Null) => Ok(None),
        Some(Json::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(err(path, format!("{other} is not true or false"))),
    }
}

fn number(v: Option<&Json>, path: &str, max: f64) -> Result<Option<f64>, ConfigError> {
    match v {
        None | Some(Json::Null) => Ok(None),
        Some(n) => match n.as_f64() {
            Some(x) if x.is_finite() && (0.0..=max).contains(&x) => Ok(Some(x)),
            _ => Err(err(
                path,
                format!("{n} is not a number between 0 and {max}"),
            )),
        },
    }
}

fn qos(v: Option<&Json>, path: &str) -> Result<Option<u8>, ConfigError> {
    match v {
        None | Some(Json::Null) => Ok(None),
        Some(q) => match q.as_u64() {
            Some(n @ 0..=2) => Ok(Some(n as u8)),
            _ => Err(err(path, format!("{q} is not a QoS: use 0, 1 or 2"))),
        },
    }
}

/// Names in the pipeline: letters, digits, `_` and `-`.
fn component(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl Ctx<'_> {
    /// The resource a `!ref` (or a plain id) names, checked to be of `ty`.
    fn reference(
        &self,
        v: Option<&Json>,
        ty: &str,
        path: &str,
    ) -> Result<Option<String>, ConfigError> {
        let id = match v {
            None | Some(Json::Null) => return Ok(None),
            Some(Json::Object(o)) if o.contains_key(REF) => {
                o[REF].as_str().unwrap_or("").to_string()
            }
            Some(Json::String(s)) => s.clone(),
            Some(other) => {
                return Err(err(path, format!("expected !ref to a {ty}, found {other}")))
            }
        };
        match self.resources.get(&id) {
            Some((t, _)) if t == ty => Ok(Some(id)),
            Some((t, _)) => Err(err(path, format!("{id} is a {t}, not a {ty}"))),
            None => Err(err(path, format!("no resource named {id:?}"))),
        }
    }

    fn add_source(&mut self, name: &str, body: Json, path: &str) -> Result<(), ConfigError> {
        if self.sources.contains_key(name) || self.sinks.contains_key(name) {
            return Err(err(path, format!("the name {name:?} is already used by another resource's part; rename one of the resources")));
        }
        self.sources.insert(name.into(), body);
        Ok(())
    }

    fn add_sink(&mut self, name: &str, body: Json, path: &str) -> Result<(), ConfigError> {
        if self.sources.contains_key(name) || self.sinks.contains_key(name) {
            return Err(err(path, format!("the name {name:?} is already used by another resource's part; rename one of the resources")));
        }
        self.sinks.insert(name.into(), body);
        Ok(())
    }

    fn connection(
        &mut self,
        id: &str,
        props: &Map<String, Json>,
        path: &str,
    ) -> Result<(), ConfigError> {
        let _: ConnectionResource = typed(path, Json::Object(props.clone()))?;
        require_mqtt(props, path, "connections")?;
        let cpath = format!("{path}.connection");
        let conn = object(props.get("connection").unwrap_or(&Json::Null), &cpath)?;
        let conn: MqttConnection = typed(&cpath, Json::Object(conn.clone()))?;
        let p = |k: &str| format!("{cpath}.{k}");
        let mut out = Map::new();
        out.insert("broker".into(), json!(conn.broker_url(&cpath)?));
        out.insert(
            "client_id".into(),
            json!(string(conn.client_id.as_ref(), &p("clientId"))?
                .unwrap_or_else(|| format!("{}-{id}", self.service_id))),
        );
        // Connectware's default is a clean session (what arrives while
        // mqlink is stopped is then not kept: set clean: false).
        out.insert(
            "clean_session".into(),
            json!(boolean(conn.clean.as_ref(), &p("clean"))?.unwrap_or(true)),
        );
        if let Some(u) = string(conn.username.as_ref(), &p("username"))? {
            out.insert("username".into(), json!(u));
        }
        match conn.password.as_ref() {
            None | Some(Json::Null) => {}
            Some(v @ (Json::String(_) | Json::Number(_))) => {
                out.insert("password".into(), v.clone());
            }
            Some(_) => {
                return Err(err(
                    p("password"),
                    "expected a string (the value is not shown: it is a secret)",
                ))
            }
        }
        if let Some(k) = number(conn.keepalive.as_ref(), &p("keepalive"), 65_535.0)? {
            out.insert("keep_alive".into(), json!(k as u64));
        }
        if let Some(ms) = number(
            conn.connect_timeout.as_ref(),
            &p("connectTimeout"),
            86_400_000.0,
        )? {
            out.insert(
                "connect_timeout".into(),
                json!(((ms / 1000.0).ceil() as u64).max(1)),
            );
        }
        if let Some(ms) = number(
            conn.reconnect_period.as_ref(),
            &p("reconnectPeriod"),
            86_400_000.0,
        )? {
            out.insert("reconnect_interval".into(), json!(ms / 1000.0));
        }
        match conn.protocol_version.as_ref().and_then(|v| v.as_u64()) {
            None if conn.protocol_version.as_ref().is_none_or(|v| v.is_null()) => {}
            Some(3) => {
                out.insert("protocol".into(), json!("3.1"));
            }
            Some(4) => {
                out.insert("protocol".into(), json!("3.1.1"));
            }
            Some(5) => {
                out.insert("protocol".into(), json!("5"));
            }
            _ => {
                return Err(err(
                    p("protocolVersion"),
                    "use 3 (MQTT 3.1), 4 (MQTT 3.1.1) or 5",
                ))
            }
        }
        let mutual = boolean(
            conn.mutual_authentication.as_ref(),
            &p("mutualAuthentication"),
        )?
        .unwrap_or(false);
        for (key, to) in [
            ("caCert", "tls_ca_cert"),
            ("clientCert", "tls_client_cert"),
            ("clientPrivateKey", "tls_client_key"),
        ] {
            if let Some(v) = string(conn.cert(key), &p(key))? {
                if key != "caCert" && !mutual {
                    // Connectware sends client certificates only with mutualAuthentication.
                    continue;
                }
                out.insert(
                    to.into(),
                    json!(pem_file(&v, self.service_id, id, key, &p(key))?),
                );
            }
        }
        if let Some(t) = boolean(
            conn.trust_all_certificates.as_ref(),
            &p("trustAllCertificates"),
        )? {
            out.insert("tls_verify".into(), json!(!t));
        }
        // Connectware's reconnect buffer: mqlink never acknowledges a message
        // before it is delivered, so there is no window to buffer for; the
        // values are checked against Connectware's bounds and otherwise unused.
        number(
            conn.message_buffer_window_ms.as_ref(),
            &p("messageBufferWindowMs"),
            30_000.0,
        )?;
        number(
            conn.max_buffered_messages.as_ref(),
            &p("maxBufferedMessages"),
            300_000.0,
        )?;
        self.connections.insert(component(id), Json::Object(out));
        Ok(())
    }

    /// The endpoint's topic on the internal broker.
    fn internal_topic(&self, id: &str, props: &Map<String, Json>) -> String {
        let tail = props
            .get("topic")
            .and_then(|t| t.as_str())
            .map(str::to_string)
            .unwrap_or_else(|| id.to_string());
        format!("services/{}/{tail}", self.service_id)
    }

    fn endpoint(
        &mut self,
        id: &str,
        props: &Map<String, Json>,
        path: &str,
    ) -> Result<(), ConfigError> {
        check::<EndpointResource>(props, path)?;
        require_mqtt(props, path, "endpoints")?;
        let conn = self
            .reference(
                props.get("connection"),
                "Cybus::Connection",
                &format!("{path}.connection"),
            )?
            .ok_or_else(|| {
                err(
                    format!("{path}.connection"),
                    "missing: !ref to a Cybus::Connection",
                )
            })?;
        if let Some(t) = string(props.get("topic"), &format!("{path}.topic"))? {
            validate_topic_name(&t).map_err(|e| err(format!("{path}.topic"), e.to_string()))?;
        }
        let internal = self.internal_topic(id, props);
        let internal_qos = qos(props.get("qos"), &format!("{path}.qos"))?.unwrap_or(1);
        let retain = boolean(props.get("retain"), &format!("{path}.retain"))?.unwrap_or(false);
        if props.contains_key("read") {
            return Err(err(
                format!("{path}.read"),
                "MQTT endpoints subscribe or write; read is not an MQTT operation",
            ));
        }
        let name = component(id);
        let rules = match props.get("rules") {
            None | Some(Json::Null) => Vec::new(),
            Some(r) => parse_rules(r, &format!("{path}.rules"))?,
        };
        match (props.get("subscribe"), props.get("write")) {
            (Some(s), None) => {
                let sp = format!("{path}.subscribe");
                let s = object(s, &sp)?;
                check::<EndpointSubscribe>(s, &sp)?;
                let topic = string(s.get("topic"), &format!("{sp}.topic"))?.ok_or_else(|| {
                    err(
                        format!("{sp}.topic"),
                        "missing: the topic filter to subscribe to",
                    )
                })?;
                let sub = Subscription::parse(&topic, None);
                validate_filter(&sub.filter)
                    .map_err(|e| err(format!("{sp}.topic"), e.to_string()))?;
                let q = qos(s.get("qos"), &format!("{sp}.qos"))?.unwrap_or(1);
                self.add_source(
                    &name,
                    json!({ "type": MQTT, "connection": component(&conn), "topics": [sub.filter], "qos": q, "format": "raw_bytes" }),
                    path,
                )?;
                self.add_sink(
                    &format!("{name}-internal"),
                    json!({ "type": MQTT, "inputs": [name], "connection": INTERNAL, "topic": internal, "format": "raw", "qos": internal_qos, "retain": retain }),
                    path,
                )?;
                self.stage(&name, vec![sub], rules, None);
            }
            (None, Some(w)) => {
                let wp = format!("{path}.write");
                let w = object(w, &wp)?;
                check::<EndpointWrite>(w, &wp)?;
                let topic = string(w.get("topic"), &format!("{wp}.topic"))?.ok_or_else(|| {
                    err(format!("{wp}.topic"), "missing: the topic to publish to")
                })?;
                validate_topic_name(&topic)
                    .map_err(|e| err(format!("{wp}.topic"), e.to_string()))?;
                let q = qos(w.get("qos"), &format!("{wp}.qos"))?.unwrap_or(1);
                let r = boolean(w.get("retain"), &format!("{wp}.retain"))?.unwrap_or(false);
                let set = format!("{internal}/set");
                self.add_source(
                    &name,
                    json!({ "type": MQTT, "connection": INTERNAL, "topics": [set.clone()], "qos": internal_qos.max(1), "format": "raw_bytes" }),
                    path,
                )?;
                self.add_sink(
                    &format!("{name}-write"),
                    json!({ "type": MQTT, "inputs": [name], "connection": component(&conn), "topic": topic, "format": "raw", "qos": q, "retain": r }),
                    path,
                )?;
                self.stage(&name, vec![Subscription::parse(&set, None)], rules, None);
            }
            (Some(_), Some(_)) => {
                return Err(err(
                    path,
                    "an endpoint has either subscribe or write, not both",
                ))
            }
            (None, None) => return Err(err(path, "missing subscribe or write")),
        }
        Ok(())
    }

    /// A stage for `source` when it has rules or routes by wildcard values.
    fn stage(
        &mut self,
        source: &str,
        subscriptions: Vec<Subscription>,
        rules: Vec<Rule>,
        publish: Option<TopicPattern>,
    ) {
        if rules.is_empty() && publish.is_none() {
            return;
        }
        self.transforms.insert(
            source.to_string(),
            Arc::new(Stage {
                subscriptions,
                rules,
                publish,
            }),
        );
    }

    /// A mapping entry's subscriptions (one object or a list, all on one
    /// connection): them, their filters, the connection, the highest QoS.
    #[allow(clippy::type_complexity)]
    fn mapping_subscriptions(
        &self,
        e: &Map<String, Json>,
        ep: &str,
    ) -> Result<(Vec<Subscription>, Vec<String>, Option<String>, u8), ConfigError> {
        let sp = format!("{ep}.subscribe");
        let subs: Vec<(String, &Json)> = match e.get("subscribe") {
            Some(Json::Array(list)) if !list.is_empty() => list
                .iter()
                .enumerate()
                .map(|(j, s)| (format!("{sp}[{j}]"), s))
                .collect(),
            Some(s @ Json::Object(_)) => vec![(sp.clone(), s)],
            _ => {
                return Err(err(
                    sp,
                    "missing: an endpoint or topic to subscribe to (or a list of them)",
                ))
            }
        };
        let mut subscriptions = Vec::new();
        let mut filters = Vec::new();
        let mut source_conn: Option<String> = None;
        let mut source_qos = 0;
        for (p, s) in subs {
            let s = object(s, &p)?;
            check::<MappingSubscribe>(s, &p)?;
            let topic = match (
                s.get("endpoint"),
                string(s.get("topic"), &format!("{p}.topic"))?,
            ) {
                (Some(ep), None) => {
                    let eid = self
                        .reference(Some(ep), "Cybus::Endpoint", &format!("{p}.endpoint"))?
                        .unwrap_or_default();
                    self.internal_topic(&eid, &self.resources[&eid].1)
                }
                (None, Some(t)) => t,
                _ => return Err(err(p, "give one of endpoint and topic")),
            };
            let conn = match self.reference(
                s.get("connection"),
                "Cybus::Connection",
                &format!("{p}.connection"),
            )? {
                Some(c) => component(&c),
                None => INTERNAL.to_string(),
            };
            if source_conn.as_ref().is_some_and(|c| *c != conn) {
                return Err(err(format!("{p}.connection"), "the subscriptions of one mapping entry must use one connection in mqlink (split the entry)"));
            }
            source_conn = Some(conn);
            let label = string(s.get("label"), &format!("{p}.label"))?;
            let sub = Subscription::parse(&topic, label);
            validate_filter(&sub.filter).map_err(|e| err(format!("{p}.topic"), e.to_string()))?;
            source_qos = source_qos.max(qos(s.get("qos"), &format!("{p}.qos"))?.unwrap_or(1));
            filters.push(sub.filter.clone());
            subscriptions.push(sub);
        }
        Ok((subscriptions, filters, source_conn, source_qos))
    }

    fn mapping(
        &mut self,
        id: &str,
        props: &Map<String, Json>,
        path: &str,
    ) -> Result<(), ConfigError> {
        check::<MappingResource>(props, path)?;
        let mp = format!("{path}.mappings");
        let Some(Json::Array(entries)) = props.get("mappings") else {
            return Err(err(mp, "missing: a list of subscribe/publish entries"));
        };
        if entries.is_empty() {
            return Err(err(mp, "at least one entry is needed"));
        }
        for (i, entry) in entries.iter().enumerate() {
            let ep = format!("{mp}[{i}]");
            let e = object(entry, &ep)?;
            check::<MappingEntry>(e, &ep)?;
            let name = if entries.len() == 1 {
                component(id)
            } else {
                format!("{}-{i}", component(id))
            };

            let (subscriptions, filters, source_conn, source_qos) =
                self.mapping_subscriptions(e, &ep)?;

            let pp = format!("{ep}.publish");
            let pubs = object(e.get("publish").unwrap_or(&Json::Null), &pp)?;
            check::<MappingPublish>(pubs, &pp)?;
            let topic = match (
                pubs.get("endpoint"),
                string(pubs.get("topic"), &format!("{pp}.topic"))?,
            ) {
                (Some(epv), None) => {
                    let eid = self
                        .reference(Some(epv), "Cybus::Endpoint", &format!("{pp}.endpoint"))?
                        .unwrap_or_default();
                    let eprops = &self.resources[&eid].1;
                    let t = self.internal_topic(&eid, eprops);
                    // Data for a write endpoint goes to its request topic.
                    if eprops.contains_key("write") {
                        format!("{t}/set")
                    } else {
                        t
                    }
                }
                (None, Some(t)) => t,
                _ => return Err(err(pp, "give one of endpoint and topic")),
            };
            let pattern = TopicPattern::parse(&topic);
            for v in pattern.vars() {
                if !subscriptions
                    .iter()
                    .any(|s| s.names.iter().any(|(_, n, _)| n == v))
                {
                    return Err(err(format!("{pp}.topic"), format!("{topic}: no subscription of this entry has a wildcard named {v:?} (name one like +{v} or #{v})")));
                }
            }
            let sample: Map<String, Json> = pattern
                .vars()
                .map(|v| (v.to_string(), json!("x")))
                .collect();
            let rendered = pattern.render(&sample).unwrap_or_default();
            validate_topic_name(&rendered)
                .map_err(|e| err(format!("{pp}.topic"), format!("{topic}: {e}")))?;
            let pconn = match self.reference(
                pubs.get("connection"),
                "Cybus::Connection",
                &format!("{pp}.connection"),
            )? {
                Some(c) => component(&c),
                None => INTERNAL.to_string(),
            };
            let pq = qos(pubs.get("qos"), &format!("{pp}.qos"))?.unwrap_or(1);
            let retain = boolean(pubs.get("retain"), &format!("{pp}.retain"))?.unwrap_or(false);
            let rules = match e.get("rules") {
                None | Some(Json::Null) => Vec::new(),
                Some(r) => parse_rules(r, &format!("{ep}.rules"))?,
            };
            self.add_source(
                &name,
                json!({ "type": MQTT, "connection": source_conn.unwrap_or_else(|| INTERNAL.into()), "topics": filters, "qos": source_qos, "format": "raw_bytes" }),
                &ep,
            )?;
            self.add_sink(
                &format!("{name}-publish"),
                json!({ "type": MQTT, "inputs": [name], "connection": pconn, "topic": "{stream}", "format": "raw", "qos": pq, "retain": retain }),
                &ep,
            )?;
            self.stage(&name, subscriptions, rules, Some(pattern));
        }
        Ok(())
    }
}

/// A certificate or key: Connectware takes the PEM text itself, mqlink a
/// file (see [`crate::pem`]).
fn pem_file(
    v: &str,
    service: &str,
    conn: &str,
    key: &str,
    path: &str,
) -> Result<String, ConfigError> {
    crate::pem::pem_or_path(v, key, &format!("{service}-{conn}-{key}"))
        .map(|f| f.display().to_string())
        .map_err(|m| err(path, m))
}

/// `protocol: Mqtt`, or an error naming what mqlink runs (`connections`, `endpoints`).
fn require_mqtt(props: &Map<String, Json>, path: &str, what: &str) -> Result<(), ConfigError> {
    match string(props.get("protocol"), &format!("{path}.protocol"))?.as_deref() {
        Some("Mqtt" | "mqtt" | "MQTT") => Ok(()),
        Some(other) => Err(err(
            format!("{path}.protocol"),
            format!("{other} is not supported: mqlink runs MQTT {what} only (protocol: Mqtt)"),
        )),
        None => Err(err(
            format!("{path}.protocol"),
            "missing (mqlink runs protocol: Mqtt)",
        )),
    }
}
