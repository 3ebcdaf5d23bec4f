//! Errors of the session layer. Each says what happened and to what
//! (broker, topic, filter); `is_retryable` tells the reconnect supervisor
//! whether trying again can help.

use std::time::Duration;

use crate::codec::DecodeError;
use crate::options::{BrokerUrl, OptionsError};
use crate::topic::TopicError;

/// Why a broker refused a connection (CONNACK return / reason code).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    BadCredentials,
    NotAuthorized,
    UnsupportedProtocol,
    ClientIdRejected,
    ServerUnavailable,
    Banned,
    QuotaExceeded,
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
    #[error("cannot reach {broker}: {error}")]
    Io {
        broker: BrokerUrl,
        error: std::io::Error,
    },
    #[error("connecting to {broker} timed out after {after:?}")]
    Timeout { broker: BrokerUrl, after: Duration },
    #[error("TLS with {broker} failed: {reason}")]
    Tls { broker: BrokerUrl, reason: String },
    #[error("WebSocket handshake with {broker} failed: {reason}")]
    WebSocket { broker: BrokerUrl, reason: String },
    #[error("{broker} refused the connection: {refusal}{}", reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default())]
    Refused {
        broker: BrokerUrl,
        refusal: Refusal,
        reason: Option<String>,
    },
    #[error("{broker} broke the protocol: {reason}")]
    Protocol { broker: BrokerUrl, reason: String },
}

impl ConnectError {
    /// Whether another attempt may succeed without the user changing anything.
    pub fn is_retryable(&self) -> bool {
        match self {
            ConnectError::Io { .. } | ConnectError::Timeout { .. } => true,
            ConnectError::Protocol { .. } | ConnectError::WebSocket { .. } => true,
            ConnectError::Tls { .. } => false,
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
    #[error("connection closed by the broker")]
    Closed,
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("no answer to keep-alive ping within {0:?}")]
    KeepAliveTimeout(Duration),
    #[error("broker sent a malformed packet: {0}")]
    Decode(#[from] DecodeError),
    #[error("broker sent DISCONNECT (reason {code:#04x}{})", reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default())]
    Disconnected { code: u8, reason: Option<String> },
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
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Options(#[from] OptionsError),
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error(transparent)]
    Subscribe(#[from] SubscribeError),
    #[error(transparent)]
    Source(#[from] crate::source::SourceError),
    #[error(transparent)]
    Sink(#[from] crate::sink::SinkError),
    #[error("the session stopped: {0}")]
    Stopped(String),
    #[error("no Tokio runtime: start sources, sinks and clients inside one (e.g. #[tokio::main])")]
    NoRuntime,
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
    #[error(transparent)]
    InvalidTopic(#[from] TopicError),
    #[error("publish to {topic:?} is {size} bytes, over the maximum packet size {max}")]
    TooLarge {
        topic: String,
        size: usize,
        max: usize,
    },
    #[error("the broker rejected the publish to {topic:?} with reason {code:#04x}{}", reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default())]
    Rejected {
        topic: String,
        code: u8,
        reason: Option<String>,
    },
    #[error("publish to {topic:?} at QoS {qos} is over the broker's maximum QoS {max} (set downgrade_qos to publish at QoS {max} instead)")]
    QosNotSupported { topic: String, qos: u8, max: u8 },
    /// RabbitMQ answers a QoS 2 publish with PUBACK: it took the message at
    /// QoS 1 (at least once), not exactly once.
    #[error("publish to {topic:?} at QoS 2 was answered with PUBACK: the broker does not support QoS 2 and took it at QoS 1 (at least once); publish at QoS 1")]
    Qos2AnsweredWithPubAck { topic: String },
    #[error("publish to {topic:?} is retained, but the broker does not support retained messages")]
    RetainNotSupported { topic: String },
    #[error("publish to {topic:?} uses topic alias {alias}; the broker allows aliases 1..={max}")]
    TopicAliasNotAllowed { topic: String, alias: u16, max: u16 },
    #[error("the broker closed the connection right after each of the {times} times the publish to {topic:?} ({size} bytes, QoS {qos}{}) was sent; it will not take it (too large, or {} it does not support)", if *retain { ", retained" } else { "" }, if *qos == 2 { "QoS 2, which many brokers (NATS, RabbitMQ) do not support, or a flag" } else { "a QoS or retain flag" })]
    DroppedByBroker {
        topic: String,
        size: usize,
        times: u32,
        qos: u8,
        retain: bool,
    },
    #[error("publish to {topic:?} cannot be sent: {error}")]
    Encode {
        topic: String,
        error: crate::codec::EncodeError,
    },
    #[error("the session stopped before the broker confirmed the publish: {0}")]
    Stopped(String),
}

/// A subscription that was not granted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubscribeError {
    #[error(transparent)]
    InvalidFilter(#[from] TopicError),
    #[error("the broker refused the subscription to {filter:?}: {}", suback_reason(*code))]
    Refused { filter: String, code: u8 },
    #[error("the session stopped before the broker answered: {0}")]
    Stopped(String),
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
