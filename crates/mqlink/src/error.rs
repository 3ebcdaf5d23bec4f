//! Errors of the session layer. Each says what happened and to what
//! (broker, topic, filter); `is_retryable` tells the reconnect supervisor
//! whether trying again can help.

use std::fmt;
use std::time::Duration;

pub use crate::codec::{DecodeError, EncodeError};
use crate::options::{BrokerUrl, OptionsError};
use crate::topic::TopicError;

/// Why a broker refused a connection (CONNACK return / reason code).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Wrong user name or password.
    BadCredentials,
    /// The client may not connect.
    NotAuthorized,
    /// The broker does not speak this MQTT version.
    UnsupportedProtocol,
    /// The client identifier is not accepted.
    ClientIdRejected,
    /// The broker is unavailable or busy.
    ServerUnavailable,
    /// The client is banned.
    Banned,
    /// A quota is exceeded.
    QuotaExceeded,
    /// Another code.
    Other(u8),
}

impl Refusal {
    /// Maps a CONNACK code of the given protocol to a reason.
    pub fn from_code(code: u8, v5: bool) -> Refusal {
        match (v5, code) {
            // 0x01 is not an MQTT 5 reason code: a 3.1.1-only broker
            // answering an MQTT 5 CONNECT in its own terms.
            (false, 1) | (true, 0x84) | (true, 0x01) => Refusal::UnsupportedProtocol,
            (false, 2) | (true, 0x85) => Refusal::ClientIdRejected,
            (false, 3) | (true, 0x88) | (true, 0x89) => Refusal::ServerUnavailable,
            (false, 4) | (true, 0x86) | (true, 0x8c) => Refusal::BadCredentials,
            (false, 5) | (true, 0x87) => Refusal::NotAuthorized,
            (true, 0x8a) => Refusal::Banned,
            (true, 0x97) => Refusal::QuotaExceeded,
            (_, c) => Refusal::Other(c),
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::BadCredentials => f.write_str("bad user name or password"),
            Refusal::NotAuthorized => f.write_str("not authorized"),
            Refusal::UnsupportedProtocol => f.write_str(
                "the broker does not speak this MQTT version (for MQTT 5 against a 3.1.1 broker use -V 311, or protocol = \"3.1.1\")",
            ),
            Refusal::ClientIdRejected => f.write_str("client identifier rejected"),
            Refusal::ServerUnavailable => f.write_str("server unavailable or busy"),
            Refusal::Banned => f.write_str("client banned"),
            Refusal::QuotaExceeded => f.write_str("quota exceeded"),
            Refusal::Other(c) => write!(f, "refused with code {c:#04x}"),
        }
    }
}

/// A failed connection attempt to one broker.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The broker could not be reached.
    #[error("cannot reach {broker}: {error}")]
    Io {
        /// The broker.
        broker: BrokerUrl,
        /// The error.
        error: std::io::Error,
    },
    /// TCP, TLS, WebSocket and CONNACK took longer than `connect_timeout`.
    #[error("connecting to {broker} timed out after {after:?}{}", if *v5_unanswered { "; the broker did not answer an MQTT 5 CONNECT: if it supports only MQTT 3.1.1, use -V 311 (protocol = \"3.1.1\")" } else { "" })]
    Timeout {
        /// The broker.
        broker: BrokerUrl,
        /// The timeout.
        after: Duration,
        /// The connection was up and an MQTT 5 CONNECT sent, with no
        /// answer: what a broker that speaks only 3.1.1 may do (amqtt).
        v5_unanswered: bool,
    },
    /// The TLS handshake failed (certificate, name, protocol).
    #[error("TLS with {broker} failed: {reason}")]
    Tls {
        /// The broker.
        broker: BrokerUrl,
        /// Why, as the broker or TLS put it.
        reason: String,
    },
    /// The WebSocket upgrade failed.
    #[error("WebSocket handshake with {broker} failed: {reason}")]
    WebSocket {
        /// The broker.
        broker: BrokerUrl,
        /// Why, as the broker or TLS put it.
        reason: String,
    },
    /// The broker answered CONNACK with a refusal.
    #[error("{broker} refused the connection: {refusal}{}", reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default())]
    Refused {
        /// The broker.
        broker: BrokerUrl,
        /// The refusal.
        refusal: Refusal,
        /// Why, as the broker or TLS put it.
        reason: Option<String>,
    },
    /// The broker answered something that is not MQTT.
    #[error("{broker} broke the protocol: {reason}")]
    Protocol {
        /// The broker.
        broker: BrokerUrl,
        /// Why, as the broker or TLS put it.
        reason: String,
    },
    /// Another connection took the client id, again and again: two
    /// processes share it and would take the session from each other
    /// forever.
    #[error("client id {client_id:?} is in use by another process: {}; give each process its own client id (e.g. client_id = \"name-${{HOSTNAME}}\")", if *explicit { format!("{broker} gave its session to another connection {times} times in a row (MQTT 5 DISCONNECT 0x8e, session taken over)") } else { format!("{broker} closed the connection right after CONNACK {times} times in a row with nothing in flight, as a broker does when another client connects with the same id (MQTT 3.1.1 has no reason code to say so)") })]
    ClientIdInUse {
        /// The broker.
        broker: BrokerUrl,
        /// The client id.
        client_id: String,
        /// How many times in a row.
        times: u32,
        /// The broker said so (MQTT 5 reason 0x8E); else inferred.
        explicit: bool,
    },
}

impl ConnectError {
    /// Whether another attempt may succeed without the user changing anything.
    pub fn is_retryable(&self) -> bool {
        match self {
            ConnectError::Io { .. } | ConnectError::Timeout { .. } => true,
            ConnectError::Protocol { .. } | ConnectError::WebSocket { .. } => true,
            ConnectError::Tls { .. } | ConnectError::ClientIdInUse { .. } => false,
            ConnectError::Refused { refusal, .. } => matches!(
                refusal,
                Refusal::ServerUnavailable | Refusal::QuotaExceeded | Refusal::Other(_)
            ),
        }
    }
}

/// Why an established connection ended.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionLost {
    /// The broker closed the connection.
    #[error("connection closed by the broker")]
    Closed,
    /// Reading or writing failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The broker did not answer a ping in time.
    #[error("no answer to keep-alive ping within {0:?}")]
    KeepAliveTimeout(Duration),
    /// The broker sent bytes that are not a valid packet.
    #[error("broker sent a malformed packet: {0}")]
    Decode(#[from] DecodeError),
    /// The broker sent DISCONNECT.
    #[error("broker sent DISCONNECT (reason {code:#04x}{})", reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default())]
    Disconnected {
        /// The reason code.
        code: u8,
        /// Why, as the broker or TLS put it.
        reason: Option<String>,
    },
    /// The broker broke the protocol.
    #[error("protocol violation: {0}")]
    Protocol(String),
}

impl ConnectionLost {
    /// A DISCONNECT saying the broker will never accept what this session
    /// does (MQTT 5 reason codes): reconnecting would only repeat it.
    pub fn unsupported(&self) -> Option<String> {
        let ConnectionLost::Disconnected { code, .. } = self else {
            return None;
        };
        let what = match code {
            0x9e => "shared subscriptions ($share/…)",
            0xa1 => "subscription identifiers",
            0xa2 => "wildcard subscriptions",
            0x9b => "this QoS",
            0x9a => "retained messages",
            0x84 => "this MQTT version",
            _ => return None,
        };
        Some(format!("{self}: the broker does not support {what}"))
    }
}

/// Errors of `connect`/`start`: bad options, or the session could not be set up.
/// Its `Debug` is its sentence: `fn main() -> Result<(), Box<dyn Error>>`
/// prints an error with `Debug`, and a user should read what happened, not
/// `Connect(Refused { broker: … })`.
#[derive(thiserror::Error)]
pub enum Error {
    /// The options cannot work.
    #[error(transparent)]
    Options(#[from] OptionsError),
    /// The first connection attempt failed.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// A subscription was refused.
    #[error(transparent)]
    Subscribe(#[from] SubscribeError),
    /// The source configuration cannot work.
    #[error(transparent)]
    Source(#[from] crate::source::SourceError),
    /// The sink configuration cannot work.
    #[error(transparent)]
    Sink(#[from] crate::sink::SinkError),
    /// The session ended.
    #[error("the session stopped: {0}")]
    Stopped(String),
    /// The source's local buffer cannot be opened, written or read.
    #[error("local buffer: {0}")]
    Buffer(String),
    /// Called outside a Tokio runtime.
    #[error("no Tokio runtime: start sources, sinks and clients inside one (e.g. #[tokio::main])")]
    NoRuntime,
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Error {
    /// Whether starting again may work without the user changing anything:
    /// the broker was unreachable or went away, not a refusal or bad options.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Connect(c) => c.is_retryable(),
            Error::Subscribe(SubscribeError::Stopped(_)) | Error::Stopped(_) => true,
            _ => false,
        }
    }
}

/// A publish that was not confirmed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// The topic is not a valid topic name.
    #[error(transparent)]
    InvalidTopic(#[from] TopicError),
    /// The publish is over the broker's or this client's maximum packet size.
    #[error("publish to {topic:?} is {size} bytes, over the maximum packet size {max}")]
    TooLarge {
        /// The topic.
        topic: String,
        /// Its size in bytes.
        size: usize,
        /// The maximum.
        max: usize,
    },
    /// The broker refused it (MQTT 5 reason code ≥ 0x80).
    #[error("the broker rejected the publish to {topic:?} with reason {code:#04x}{}", reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default())]
    Rejected {
        /// The topic.
        topic: String,
        /// The reason code.
        code: u8,
        /// Why, as the broker or TLS put it.
        reason: Option<String>,
    },
    /// The QoS is over the broker's maximum QoS.
    #[error("publish to {topic:?} at QoS {qos} is over the broker's maximum QoS {max} (set downgrade_qos to publish at QoS {max} instead)")]
    QosNotSupported {
        /// The topic.
        topic: String,
        /// Its QoS.
        qos: u8,
        /// The maximum.
        max: u8,
    },
    /// RabbitMQ answers a QoS 2 publish with PUBACK: it took the message at
    /// QoS 1 (at least once), not exactly once.
    #[error("publish to {topic:?} at QoS 2 was answered with PUBACK: the broker does not support QoS 2 and took it at QoS 1 (at least once); publish at QoS 1")]
    Qos2AnsweredWithPubAck {
        /// The topic.
        topic: String,
    },
    /// The broker does not support retained messages.
    #[error("publish to {topic:?} is retained, but the broker does not support retained messages")]
    RetainNotSupported {
        /// The topic.
        topic: String,
    },
    /// The topic alias is over what the broker allows.
    #[error("publish to {topic:?} uses topic alias {alias}; the broker allows aliases 1..={max}")]
    TopicAliasNotAllowed {
        /// The topic.
        topic: String,
        /// The alias.
        alias: u16,
        /// The maximum.
        max: u16,
    },
    /// The broker closed the connection every time it was sent.
    #[error("the broker closed the connection right after each of the {times} times the publish to {topic:?} ({size} bytes, QoS {qos}{}) was sent; it will not take it (too large, or {} it does not support)", if *retain { ", retained" } else { "" }, if *qos == 2 { "QoS 2, which many brokers (NATS, RabbitMQ) do not support, or a flag" } else { "a QoS or retain flag" })]
    DroppedByBroker {
        /// The topic.
        topic: String,
        /// Its size in bytes.
        size: usize,
        /// How many times.
        times: u32,
        /// Its QoS.
        qos: u8,
        /// Whether it was retained.
        retain: bool,
    },
    /// MQTT cannot express it (a field too long).
    #[error("publish to {topic:?} cannot be sent: {error}")]
    Encode {
        /// The topic.
        topic: String,
        /// The error.
        error: EncodeError,
    },
    /// The session stopped before the confirmation.
    #[error("the session stopped before the broker confirmed the publish: {0}")]
    Stopped(String),
}

/// A subscription that was not granted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubscribeError {
    /// The filter is not a valid topic filter.
    #[error(transparent)]
    InvalidFilter(#[from] TopicError),
    /// The broker refused it in the SUBACK.
    #[error("the broker refused the subscription to {filter:?}: {}", suback_reason(*code))]
    Refused {
        /// The filter.
        filter: String,
        /// The reason code.
        code: u8,
    },
    /// The broker closed the connection right after each SUBSCRIBE of
    /// these filters and never answered it: an MQTT 3.1.1 broker's only way
    /// to refuse what it does not support (ejabberd with `$share/…`).
    #[error("the broker closed the connection at SUBSCRIBE {} ({times} times in a row, no SUBACK): {}", quoted(filters), if filters.iter().any(|f| f.starts_with("$share/")) { "the broker does not support shared subscriptions ($share/…), or not this filter" } else { "the broker does not take this filter (a wildcard, a character or a length it refuses, or a topic this user may not subscribe to)" })]
    DroppedByBroker {
        /// The filters of that SUBSCRIBE (the `$share/…` ones first).
        filters: Vec<String>,
        /// How many times in a row.
        times: u32,
    },
    /// The session stopped before the SUBACK.
    #[error("the session stopped before the broker answered: {0}")]
    Stopped(String),
}

/// `"a", "b"`: filters as an error names them.
fn quoted(filters: &[String]) -> String {
    filters
        .iter()
        .map(|f| format!("{f:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Text for a SUBACK failure code (0x80 on 3.1.1, MQTT 5 reason codes).
pub fn suback_reason(code: u8) -> &'static str {
    match code {
        0x80 => "unspecified error (often: not authorized)",
        0x83 => "implementation specific error",
        0x87 => "not authorized",
        0x8f => "topic filter invalid",
        0x91 => "packet identifier in use",
        0x97 => "quota exceeded",
        0x9e => "shared subscriptions not supported",
        0xa1 => "subscription identifiers not supported",
        0xa2 => "wildcard subscriptions not supported",
        _ => "failure",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals() {
        assert_eq!(Refusal::from_code(4, false), Refusal::BadCredentials);
        assert_eq!(Refusal::from_code(0x86, true), Refusal::BadCredentials);
        assert_eq!(Refusal::from_code(5, false), Refusal::NotAuthorized);
        assert_eq!(Refusal::from_code(0x84, true), Refusal::UnsupportedProtocol);
        let broker: BrokerUrl = "mqtt://h".parse().unwrap();
        let e = ConnectError::Refused {
            broker,
            refusal: Refusal::BadCredentials,
            reason: None,
        };
        assert!(!e.is_retryable());
        assert_eq!(
            e.to_string(),
            "mqtt://h:1883 refused the connection: bad user name or password"
        );
        let e = SubscribeError::Refused {
            filter: "secret/#".into(),
            code: 0x80,
        };
        assert!(e.to_string().contains("\"secret/#\""));
    }
}
