//! destination-mqtt's configuration: the spec, and reading a config with
//! the names the spec gives (plus `client_id` as an alias of `client`).

use std::time::Duration;

use mqlink::options::Transport;
use mqlink::{BrokerUrl, ConnectOptions, Protocol, QoS, Secret, TlsOptions};
use serde_json::{json, Value};

/// The connector's specification: destination-mqtt's fields, types,
/// defaults and required list, and mqlink's optional additions.
pub fn spec() -> Value {
    json!({
        "documentationUrl": "https://docs.airbyte.com/integrations/destinations/mqtt",
        "supported_destination_sync_modes": ["append"],
        "supportsIncremental": true,
        "connectionSpecification": {
            "$schema": "http://json-schema.org/draft-07/schema#",
            "title": "MQTT Destination Spec",
            "type": "object",
            "required": ["broker_host", "broker_port", "use_tls", "topic_pattern", "publisher_sync",
                         "connect_timeout", "automatic_reconnect", "clean_session", "message_retained", "message_qos"],
            "additionalProperties": true,
            "properties": {
                "broker_host": {"title": "MQTT broker host", "type": "string", "description": "Host of the broker."},
                "broker_port": {"title": "MQTT broker port", "type": "integer", "description": "Port of the broker."},
                "use_tls": {"title": "Use TLS", "type": "boolean", "default": false, "description": "Whether to use TLS encryption on the connection."},
                "username": {"title": "Username", "type": "string", "description": "User name to use for the connection."},
                "password": {"title": "Password", "type": "string", "airbyte_secret": true, "description": "Password to use for the connection."},
                "topic_pattern": {"title": "Topic pattern", "type": "string", "examples": ["sample.topic", "{namespace}/{stream}/sample"],
                    "description": "Topic pattern in which the records will be sent. You can use patterns like '{namespace}' and/or '{stream}' to send the message to a specific topic based on these values."},
                "topic_test": {"title": "Test topic", "type": "string", "examples": ["test/topic"], "description": "Topic to test if mqlink can produce messages."},
                "client": {"title": "Client ID", "type": "string", "examples": ["airbyte-client1"], "description": "A client identifier that is unique on the server being connected to."},
                "publisher_sync": {"title": "Sync publisher", "type": "boolean", "default": false, "description": "Wait synchronously until the record has been sent to the broker."},
                "connect_timeout": {"title": "Connect timeout", "type": "integer", "default": 30, "description": "Maximum time interval (in seconds) the client will wait for the network connection to the MQTT server to be established."},
                "automatic_reconnect": {"title": "Automatic reconnect", "type": "boolean", "default": true, "description": "Whether the client will automatically attempt to reconnect to the server if the connection is lost."},
                "clean_session": {"title": "Clean session", "type": "boolean", "default": true, "description": "Whether the client and server should remember state across restarts and reconnects."},
                "message_retained": {"title": "Message retained", "type": "boolean", "default": false, "description": "Whether or not the publish message should be retained by the messaging engine."},
                "message_qos": {"title": "Message QoS", "type": "string", "enum": ["AT_MOST_ONCE", "AT_LEAST_ONCE", "EXACTLY_ONCE"], "default": "AT_LEAST_ONCE", "description": "Quality of service used for each message to be delivered."},
                "protocol_version": {"title": "MQTT version (mqlink)", "type": "string", "enum": ["3.1", "3.1.1", "5"], "description": "MQTT protocol version [default: 5, falling back to 3.1.1 when the broker refuses it]."},
                "ca_file": {"title": "CA certificates file (mqlink)", "type": "string", "description": "CA certificates to verify the broker with (the PEM text, or a file path)."},
                "client_cert": {"title": "Client certificate (mqlink)", "type": "string", "description": "Client certificate for mutual TLS (the PEM text, or a file path)."},
                "client_key": {"title": "Client key (mqlink)", "type": "string", "airbyte_secret": true, "description": "PEM private key of the client certificate (the PEM text, or a file path)."},
                "max_inflight": {"title": "Max in flight (mqlink)", "type": "integer", "default": 1000, "description": "Unconfirmed messages at most."}
            }
        }
    })
}

/// A destination-mqtt configuration.
#[derive(Debug, Clone)]
pub struct AirbyteConfig {
    pub broker_host: String,
    pub broker_port: u16,
    pub use_tls: bool,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub topic_pattern: String,
    pub topic_test: Option<String>,
    pub client: Option<String>,
    pub publisher_sync: bool,
    pub connect_timeout: u64,
    pub automatic_reconnect: bool,
    pub clean_session: bool,
    pub message_retained: bool,
    pub qos: QoS,
    /// As written; `None`: MQTT 5 falling back to 3.1.1.
    pub protocol: Option<Protocol>,
    pub ca_file: Option<String>,
    pub client_cert: Option<String>,
    pub client_key: Option<String>,
    pub max_inflight: u16,
}

fn get_str(v: &Value, key: &str) -> Result<Option<String>, String> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(format!("{key}: expected a string, found {other}")),
    }
}

fn get_bool(v: &Value, key: &str, default: bool) -> Result<bool, String> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(format!("{key}: expected true or false, found {other}")),
    }
}

fn get_u64(v: &Value, key: &str, default: u64) -> Result<u64, String> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(n) => n
            .as_u64()
            .ok_or_else(|| format!("{key}: expected a whole number, found {n}")),
    }
}

/// A PEM value pasted into the config (Airbyte runs connectors in
/// containers, where a path means little) is written to a private file
/// and that path used; a path is kept. Errors never show the value.
fn pem_or_path(v: &Value, key: &str) -> Result<Option<String>, String> {
    let value = match v.get(key) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) => s,
        Some(_) => {
            return Err(format!(
                "{key}: expected a string (a PEM text or a file path)"
            ))
        }
    };
    mqlink_pipeline::pem::pem_or_path(value, key, &format!("airbyte-{key}"))
        .map(|p| Some(p.display().to_string()))
}

/// A secret (`airbyte_secret` in the spec): the pipeline files' rule, so
/// that its value is never shown whatever its type.
fn get_secret(v: &Value, key: &str) -> Result<Option<Secret>, String> {
    mqlink_pipeline::spec::secret_text(v.get(key).cloned())
        .map(|s| s.map(Secret::new))
        .map_err(|m| format!("{key}: {m}"))
}

impl AirbyteConfig {
    pub fn from_json(v: &Value) -> Result<AirbyteConfig, String> {
        if !v.is_object() {
            return Err("the config must be a JSON object".into());
        }
        let broker_host = get_str(v, "broker_host")?.ok_or("broker_host is required")?;
        if broker_host.contains('@') || broker_host.contains("://") {
            // Not echoed: it may hold a password.
            return Err("broker_host: give the host name only (credentials go in username and password, the scheme in use_tls)".into());
        }
        let port = get_u64(v, "broker_port", 0)?;
        let broker_port = u16::try_from(port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("broker_port: {port} is not a port (1 to 65535)"))?;
        let topic_pattern = get_str(v, "topic_pattern")?.ok_or("topic_pattern is required")?;
        mqlink::sink::TopicTemplate::parse(&topic_pattern)
            .map_err(|e| format!("topic_pattern: {e}"))?;
        // `test_topic` as the original connector's code reads it.
        let topic_test = get_str(v, "topic_test")?.or(get_str(v, "test_topic")?);
        if let Some(t) = &topic_test {
            mqlink::topic::validate_topic_name(t).map_err(|e| format!("topic_test: {e}"))?;
        }
        let qos = match get_str(v, "message_qos")?
            .as_deref()
            .unwrap_or("AT_LEAST_ONCE")
        {
            q @ ("AT_MOST_ONCE" | "AT_LEAST_ONCE" | "EXACTLY_ONCE") => {
                q.parse().expect("known QoS")
            }
            other => {
                return Err(format!(
                    "message_qos: {other:?} is not AT_MOST_ONCE, AT_LEAST_ONCE or EXACTLY_ONCE"
                ))
            }
        };
        let protocol = match get_str(v, "protocol_version")?.as_deref() {
            None => None,
            Some(p) => Some(p.parse().map_err(|e| format!("protocol_version: {e}"))?),
        };
        let max_inflight = get_u64(v, "max_inflight", 1000)?;
        Ok(AirbyteConfig {
            broker_host,
            broker_port,
            use_tls: get_bool(v, "use_tls", false)?,
            username: get_str(v, "username")?,
            password: get_secret(v, "password")?,
            topic_pattern,
            topic_test,
            // The spec says `client`; the original's code read `client_id`: accept both.
            client: get_str(v, "client")?.or(get_str(v, "client_id")?),
            publisher_sync: get_bool(v, "publisher_sync", false)?,
            connect_timeout: match get_u64(v, "connect_timeout", 30)? {
                t @ 0..=3600 => t,
                t => {
                    return Err(format!(
                        "connect_timeout: {t} is not a number of seconds from 0 to 3600"
                    ))
                }
            },
            automatic_reconnect: get_bool(v, "automatic_reconnect", true)?,
            clean_session: get_bool(v, "clean_session", true)?,
            message_retained: get_bool(v, "message_retained", false)?,
            qos,
            protocol,
            ca_file: pem_or_path(v, "ca_file")?,
            client_cert: pem_or_path(v, "client_cert")?,
            client_key: pem_or_path(v, "client_key")?,
            max_inflight: u16::try_from(max_inflight)
                .ok()
                .filter(|n| (1..=65_000).contains(n))
                .ok_or_else(|| format!("max_inflight: {max_inflight} is not in 1..=65000"))?,
        })
    }

    pub fn connect_options(&self) -> ConnectOptions {
        let transport = if self.use_tls {
            Transport::Tls
        } else {
            Transport::Tcp
        };
        let mut o = ConnectOptions {
            brokers: vec![BrokerUrl {
                transport,
                host: self.broker_host.clone(),
                port: self.broker_port,
                path: "/mqtt".into(),
            }],
            client_id: self.client.clone(),
            username: self.username.clone(),
            password: self.password.clone(),
            tls: TlsOptions {
                ca_file: self.ca_file.clone().map(Into::into),
                client_cert: self.client_cert.clone().map(Into::into),
                client_key: self.client_key.clone().map(Into::into),
                keys: mqlink::options::TlsKeys::AIRBYTE,
                ..Default::default()
            },
            connect_timeout: Duration::from_secs(self.connect_timeout.max(1)),
            // A persistent session needs an id; without one, stay clean.
            clean_session: self.clean_session || self.client.is_none(),
            max_inflight: self.max_inflight,
            ..ConnectOptions::default()
        };
        o.protocol_or_default(self.protocol);
        if !self.automatic_reconnect {
            o.reconnect.max_attempts = 1;
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Value {
        json!({"broker_host": "localhost", "broker_port": 1883, "use_tls": false,
               "topic_pattern": "{namespace}/{stream}", "publisher_sync": false, "connect_timeout": 5,
               "automatic_reconnect": true, "clean_session": true, "message_retained": false,
               "message_qos": "AT_LEAST_ONCE"})
    }

    #[test]
    fn client_and_client_id_both_work() {
        let mut v = base();
        v["client"] = json!("from-spec");
        assert_eq!(
            AirbyteConfig::from_json(&v).unwrap().client.as_deref(),
            Some("from-spec")
        );
        let mut v = base();
        v["client_id"] = json!("alias");
        assert_eq!(
            AirbyteConfig::from_json(&v)
                .unwrap()
                .connect_options()
                .client_id
                .as_deref(),
            Some("alias")
        );
    }

    #[test]
    fn errors_name_the_key() {
        for (k, val, needle) in [
            ("broker_port", json!(0), "broker_port"),
            ("message_qos", json!("SOMETIMES"), "message_qos"),
            ("topic_pattern", json!("a/#/{stream}"), "topic_pattern"),
            ("use_tls", json!("yes"), "use_tls"),
            ("topic_test", json!("t/+"), "topic_test"),
        ] {
            let mut v = base();
            v[k] = val;
            let e = AirbyteConfig::from_json(&v).unwrap_err();
            assert!(e.contains(needle), "{e}");
        }
        let mut v = base();
        v["password"] = json!("hunter2");
        assert!(!format!("{:?}", AirbyteConfig::from_json(&v).unwrap()).contains("hunter2"));
    }

    #[test]
    fn spec_lists_the_original_fields() {
        let s = spec();
        let props = &s["connectionSpecification"]["properties"];
        for f in [
            "broker_host",
            "broker_port",
            "use_tls",
            "username",
            "password",
            "topic_pattern",
            "topic_test",
            "client",
            "publisher_sync",
            "connect_timeout",
            "automatic_reconnect",
            "clean_session",
            "message_retained",
            "message_qos",
        ] {
            assert!(props.get(f).is_some(), "{f}");
        }
        assert_eq!(props["password"]["airbyte_secret"], true);
        assert_eq!(s["supported_destination_sync_modes"], json!(["append"]));
    }
}
