//! CONNECT and CONNACK as the broker reads and writes them, through
//! [`crate::codec`] (one decoder, the fuzzed one): what a refused CONNECT
//! is answered with, and the last will as the broker keeps it.

use bytes::{Bytes, BytesMut};

use crate::codec::{self, ByteStr, ConnAckProperties, DecodeError, Packet};
use crate::types::{Protocol, QoS};
use crate::PublishProperties;

/// The last will with everything MQTT 5 gives it.
#[derive(Clone, Debug)]
pub(super) struct Will {
    pub topic: ByteStr,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    pub properties: Option<Box<PublishProperties>>,
    pub delay: u32,
}

impl From<codec::Will> for Will {
    fn from(w: codec::Will) -> Will {
        let p = w.properties;
        let published = PublishProperties {
            payload_format_indicator: p.payload_format_indicator,
            message_expiry_interval: p.message_expiry_interval,
            content_type: p.content_type,
            response_topic: p.response_topic,
            correlation_data: p.correlation_data,
            user_properties: p.user_properties,
            ..Default::default()
        };
        Will {
            topic: w.topic.into(),
            payload: w.payload,
            qos: w.qos,
            retain: w.retain,
            properties: (!published.is_empty()).then(|| Box::new(published)),
            delay: p.will_delay_interval.unwrap_or(0),
        }
    }
}

/// Why a CONNECT was not accepted.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum ConnectError {
    /// A protocol name/level the broker does not speak: CONNACK 0x01 in 3.1.1's format.
    UnsupportedLevel,
    /// Enhanced authentication asked for: CONNACK 0x8C.
    AuthMethod(Protocol),
    /// Anything else wrong: close (3.1.1) or CONNACK 0x81 (5).
    Malformed(String, Protocol),
}

/// Decodes the CONNECT at the front of `buf` (whole: the caller checked
/// its length).
pub(super) fn decode_connect(
    buf: &mut BytesMut,
    max_packet: usize,
) -> Result<codec::Connect, ConnectError> {
    // Only to answer a malformed CONNECT in its version's format.
    let claims_v5 = matches!(codec::read_fixed_header(buf),
        Ok(Some((h, _))) if buf.get(h..h + 7) == Some(&b"\0\x04MQTT\x05"[..]));
    let p = if claims_v5 {
        Protocol::V5
    } else {
        Protocol::V311
    };
    match codec::decode(buf, p, max_packet) {
        Ok(Some(Packet::Connect(c))) => Ok(*c),
        Ok(_) => Err(ConnectError::Malformed(
            "first packet is not CONNECT".into(),
            p,
        )),
        Err(DecodeError::UnsupportedProtocolLevel(_)) => Err(ConnectError::UnsupportedLevel),
        Err(DecodeError::AuthNotSupported) => Err(ConnectError::AuthMethod(p)),
        Err(e) => Err(ConnectError::Malformed(e.to_string(), p)),
    }
}

/// CONNACK: `code` and, on MQTT 5, `properties`.
pub(super) fn encode_connack(
    session_present: bool,
    code: u8,
    properties: ConnAckProperties,
    protocol: Protocol,
    out: &mut BytesMut,
) {
    let ack = codec::ConnAck {
        session_present,
        code,
        properties,
    };
    codec::encode(&Packet::ConnAck(ack), protocol, out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_will_keeps_its_properties_and_delay() {
        let w = codec::Will {
            topic: "w".into(),
            payload: Bytes::from_static(b"bye"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: codec::WillProperties {
                will_delay_interval: Some(7),
                content_type: Some("text/plain".into()),
                ..Default::default()
            },
        };
        let kept = Will::from(w);
        assert_eq!(kept.delay, 7);
        let p = kept.properties.unwrap();
        assert_eq!(p.content_type.as_deref(), Some("text/plain"));
    }

    #[test]
    fn connect_errors_are_answered_in_their_version() {
        let err = |b: &[u8]| decode_connect(&mut BytesMut::from(b), 1 << 20).unwrap_err();
        assert_eq!(
            err(b"\x10\x07\x00\x04MQTT\x06"),
            ConnectError::UnsupportedLevel
        );
        assert_eq!(
            err(b"\x10\x11\x00\x04MQTT\x05\x02\x00\x3c\x04\x15\x00\x01x\x00\x00"),
            ConnectError::AuthMethod(Protocol::V5)
        );
        assert!(matches!(
            err(b"\x10\x0d\x00\x04MQTT\x05\x01\x00\x3c\x00\x00\x00"),
            ConnectError::Malformed(_, Protocol::V5)
        ));
        assert!(matches!(
            err(b"\x10\x0c\x00\x04MQTT\x04\x01\x00\x3c\x00\x00"),
            ConnectError::Malformed(_, Protocol::V311)
        ));
    }
}
