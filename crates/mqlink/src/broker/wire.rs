//! The two packets the broker reads and writes differently from a client:
//! CONNECT (will properties and Will Delay kept, an unsupported protocol
//! level answered instead of dropped) and CONNACK (every property a broker
//! advertises). Everything else goes through [`crate::codec`].

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::codec::properties::id;
use crate::codec::{put_varint, ByteStr};
use crate::types::{Protocol, QoS};
use crate::PublishProperties;

/// The fixed header of the packet at the front of `buf`: (header length,
/// remaining length), or `None` while incomplete. `Err` for a malformed length.
pub(super) fn fixed_header(buf: &[u8]) -> Result<Option<(usize, usize)>, ()> {
    let mut len = 0usize;
    for i in 0..4 {
        let Some(&b) = buf.get(1 + i) else {
            return Ok(None);
        };
        len |= ((b & 0x7f) as usize) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some((2 + i, len)));
        }
    }
    Err(())
}

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

#[derive(Clone, Debug, Default)]
pub(super) struct ConnectProps {
    pub session_expiry: Option<u32>,
    pub receive_maximum: Option<u16>,
    pub maximum_packet_size: Option<u32>,
    pub topic_alias_maximum: Option<u16>,
    pub auth_method: Option<String>,
}

#[derive(Debug)]
pub(super) struct Connect {
    pub protocol: Protocol,
    pub clean_start: bool,
    pub keep_alive: u16,
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<Bytes>,
    pub will: Option<Will>,
    pub props: ConnectProps,
}

/// Why a CONNECT was not accepted.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum ConnectError {
    /// A protocol name/level the broker does not speak: CONNACK 0x01 in 3.1.1's format.
    UnsupportedLevel,
    /// Anything else wrong: close (3.1.1) or CONNACK 0x81 (5).
    Malformed(&'static str, Protocol),
}

struct R(Bytes);

impl R {
    fn need(&self, n: usize, what: &'static str, p: Protocol) -> Result<(), ConnectError> {
        if self.0.remaining() < n {
            return Err(ConnectError::Malformed(what, p));
        }
        Ok(())
    }
    fn u8(&mut self, w: &'static str, p: Protocol) -> Result<u8, ConnectError> {
        self.need(1, w, p)?;
        Ok(self.0.get_u8())
    }
    fn u16(&mut self, w: &'static str, p: Protocol) -> Result<u16, ConnectError> {
        self.need(2, w, p)?;
        Ok(self.0.get_u16())
    }
    fn u32(&mut self, w: &'static str, p: Protocol) -> Result<u32, ConnectError> {
        self.need(4, w, p)?;
        Ok(self.0.get_u32())
    }
    fn varint(&mut self, w: &'static str, p: Protocol) -> Result<u32, ConnectError> {
        let mut v = 0u32;
        for i in 0..4 {
            let b = self.u8(w, p)?;
            v |= ((b & 0x7f) as u32) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(ConnectError::Malformed(w, p))
    }
    fn bin(&mut self, w: &'static str, p: Protocol) -> Result<Bytes, ConnectError> {
        let n = self.u16(w, p)? as usize;
        self.need(n, w, p)?;
        Ok(self.0.split_to(n))
    }
    fn string(&mut self, w: &'static str, p: Protocol) -> Result<ByteStr, ConnectError> {
        ByteStr::from_utf8(self.bin(w, p)?).map_err(|_| ConnectError::Malformed(w, p))
    }
    fn props(&mut self, p: Protocol) -> Result<R, ConnectError> {
        let n = self.varint("property length", p)? as usize;
        self.need(n, "properties", p)?;
        Ok(R(self.0.split_to(n)))
    }
}

/// Decodes a CONNECT body (after the fixed header).
pub(super) fn decode_connect(body: Bytes) -> Result<Connect, ConnectError> {
    let mut r = R(body);
    let p0 = Protocol::V311;
    let name = r.bin("protocol name", p0)?;
    let level = r.u8("protocol level", p0)?;
    let protocol = match (&name[..], level) {
        (b"MQTT", 4) => Protocol::V311,
        (b"MQTT", 5) => Protocol::V5,
        (b"MQIsdp", 3) => Protocol::V31,
        (b"MQTT" | b"MQIsdp", _) => return Err(ConnectError::UnsupportedLevel),
        _ => return Err(ConnectError::Malformed("protocol name", p0)),
    };
    let p = protocol;
    let flags = r.u8("connect flags", p)?;
    if flags & 1 != 0 {
        return Err(ConnectError::Malformed("reserved connect flag", p));
    }
    let keep_alive = r.u16("keep alive", p)?;
    let mut props = ConnectProps::default();
    if p == Protocol::V5 {
        let mut pr = r.props(p)?;
        while !pr.0.is_empty() {
            match pr.u8("property", p)? {
                id::SESSION_EXPIRY_INTERVAL => {
                    props.session_expiry = Some(pr.u32("session expiry", p)?)
                }
                id::RECEIVE_MAXIMUM => match pr.u16("receive maximum", p)? {
                    0 => return Err(ConnectError::Malformed("receive maximum 0", p)),
                    n => props.receive_maximum = Some(n),
                },
                id::MAXIMUM_PACKET_SIZE => match pr.u32("maximum packet size", p)? {
                    0 => return Err(ConnectError::Malformed("maximum packet size 0", p)),
                    n => props.maximum_packet_size = Some(n),
                },
                id::TOPIC_ALIAS_MAXIMUM => {
                    props.topic_alias_maximum = Some(pr.u16("topic alias maximum", p)?)
                }
                id::REQUEST_PROBLEM_INFORMATION | id::REQUEST_RESPONSE_INFORMATION => {
                    pr.u8("request information", p)?;
                }
                id::USER_PROPERTY => {
                    pr.string("user property", p)?;
                    pr.string("user property", p)?;
                }
                id::AUTHENTICATION_METHOD => {
                    props.auth_method =
                        Some(pr.string("authentication method", p)?.as_str().to_owned())
                }
                id::AUTHENTICATION_DATA => {
                    pr.bin("authentication data", p)?;
                }
                _ => return Err(ConnectError::Malformed("CONNECT property", p)),
            }
        }
    }
    let client_id = r.string("client identifier", p)?.as_str().to_owned();
    let will = if flags & 4 != 0 {
        let mut delay = 0;
        let mut wp = PublishProperties::default();
        if p == Protocol::V5 {
            let mut pr = r.props(p)?;
            while !pr.0.is_empty() {
                match pr.u8("will property", p)? {
                    id::WILL_DELAY_INTERVAL => delay = pr.u32("will delay", p)?,
                    id::PAYLOAD_FORMAT_INDICATOR => {
                        wp.payload_format_indicator = Some(pr.u8("payload format", p)?)
                    }
                    id::MESSAGE_EXPIRY_INTERVAL => {
                        wp.message_expiry_interval = Some(pr.u32("message expiry", p)?)
                    }
                    id::CONTENT_TYPE => {
                        wp.content_type = Some(pr.string("content type", p)?.to_string())
                    }
                    id::RESPONSE_TOPIC => {
                        wp.response_topic = Some(pr.string("response topic", p)?.to_string())
                    }
                    id::CORRELATION_DATA => {
                        wp.correlation_data = Some(pr.bin("correlation data", p)?)
                    }
                    id::USER_PROPERTY => {
                        let k = pr.string("user property", p)?.to_string();
                        let v = pr.string("user property", p)?.to_string();
                        wp.user_properties.push((k, v));
                    }
                    _ => return Err(ConnectError::Malformed("will property", p)),
                }
            }
        }
        let qos = QoS::from_u8((flags >> 3) & 3).ok_or(ConnectError::Malformed("will QoS", p))?;
        Some(Will {
            topic: r.string("will topic", p)?,
            payload: r.bin("will payload", p)?,
            qos,
            retain: flags & 0x20 != 0,
            properties: (!wp.is_empty()).then(|| Box::new(wp)),
            delay,
        })
    } else {
        if flags & 0x38 != 0 {
            return Err(ConnectError::Malformed("will flags without a will", p));
        }
        None
    };
    let username = if flags & 0x80 != 0 {
        Some(r.string("user name", p)?.as_str().to_owned())
    } else {
        None
    };
    let password = if flags & 0x40 != 0 {
        Some(r.bin("password", p)?)
    } else {
        None
    };
    if !r.0.is_empty() {
        return Err(ConnectError::Malformed("trailing bytes", p));
    }
    Ok(Connect {
        protocol,
        clean_start: flags & 2 != 0,
        keep_alive,
        client_id,
        username,
        password,
        will,
        props,
    })
}

/// What the broker tells a client in CONNACK.
#[derive(Debug, Default)]
pub(super) struct ConnAck {
    pub session_present: bool,
    pub code: u8,
    pub session_expiry: Option<u32>,
    pub receive_maximum: Option<u16>,
    pub maximum_qos: Option<u8>,
    pub maximum_packet_size: Option<u32>,
    pub assigned_client_id: Option<String>,
    pub topic_alias_maximum: Option<u16>,
    pub server_keep_alive: Option<u16>,
    pub reason: Option<String>,
}

pub(super) fn encode_connack(c: &ConnAck, protocol: Protocol, out: &mut BytesMut) {
    let mut body = BytesMut::new();
    body.put_u8(c.session_present as u8);
    body.put_u8(c.code);
    if protocol == Protocol::V5 {
        let mut w = BytesMut::new();
        if let Some(v) = c.session_expiry {
            w.put_u8(id::SESSION_EXPIRY_INTERVAL);
            w.put_u32(v);
        }
        if let Some(v) = c.receive_maximum {
            w.put_u8(id::RECEIVE_MAXIMUM);
            w.put_u16(v);
        }
        if let Some(v) = c.maximum_qos {
            w.put_u8(id::MAXIMUM_QOS);
            w.put_u8(v);
        }
        if let Some(v) = c.maximum_packet_size {
            w.put_u8(id::MAXIMUM_PACKET_SIZE);
            w.put_u32(v);
        }
        if let Some(v) = &c.assigned_client_id {
            w.put_u8(id::ASSIGNED_CLIENT_IDENTIFIER);
            w.put_u16(v.len() as u16);
            w.put_slice(v.as_bytes());
        }
        if let Some(v) = c.topic_alias_maximum {
            w.put_u8(id::TOPIC_ALIAS_MAXIMUM);
            w.put_u16(v);
        }
        if let Some(v) = c.server_keep_alive {
            w.put_u8(id::SERVER_KEEP_ALIVE);
            w.put_u16(v);
        }
        if let Some(v) = &c.reason {
            w.put_u8(id::REASON_STRING);
            w.put_u16(v.len() as u16);
            w.put_slice(v.as_bytes());
        }
        // Retain, wildcard, subscription identifier and shared
        // subscription availability are left to their default: available.
        put_varint(&mut body, w.len());
        body.put_slice(&w);
    }
    out.put_u8(0x20);
    put_varint(out, body.len());
    out.put_slice(&body);
}
