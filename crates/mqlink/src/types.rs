//! Small protocol enums shared by every layer.

use std::fmt;
use std::str::FromStr;

/// Quality of service of a publish or subscription.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum QoS {
    /// 0: at most once, no acknowledgement.
    AtMostOnce = 0,
    /// 1: at least once, confirmed by PUBACK.
    #[default]
    AtLeastOnce = 1,
    /// 2: exactly once, confirmed by PUBCOMP.
    ExactlyOnce = 2,
}

impl QoS {
    /// QoS 0, 1 or 2; `None` for anything else.
    pub fn from_u8(v: u8) -> Option<QoS> {
        match v {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }
}

impl fmt::Display for QoS {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", *self as u8)
    }
}

impl FromStr for QoS {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "0" | "AT_MOST_ONCE" => Ok(QoS::AtMostOnce),
            "1" | "AT_LEAST_ONCE" => Ok(QoS::AtLeastOnce),
            "2" | "EXACTLY_ONCE" => Ok(QoS::ExactlyOnce),
            other => Err(format!("invalid QoS {other:?}: expected 0, 1 or 2")),
        }
    }
}

/// MQTT protocol version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Protocol {
    /// MQTT 3.1 (protocol name `MQIsdp`, level 3), for clients and brokers
    /// that still speak it (Paho falls back to it; Quix lists it). On the
    /// wire it is 3.1.1 but for the CONNECT header.
    V31,
    /// MQTT 3.1.1 (protocol level 4).
    #[default]
    V311,
    /// MQTT 5 (protocol level 5).
    V5,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::V31 => "3.1",
            Protocol::V311 => "3.1.1",
            Protocol::V5 => "5",
        })
    }
}

impl FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "311" | "3.1.1" | "mqttv311" | "4" => Ok(Protocol::V311),
            "5" | "5.0" | "mqttv5" => Ok(Protocol::V5),
            "31" | "3.1" | "mqttv31" | "3" => Ok(Protocol::V31),
            other => Err(format!(
                "invalid protocol version {other:?}: expected 311, 5, 31, mqttv311, mqttv5 or mqttv31"
            )),
        }
    }
}
