//! MQTT 3.1.1 and 5 packets: types, encoding and decoding, with no I/O.
//!
//! One set of packet types serves both protocol versions; the version only
//! changes the bytes (v5 adds reason codes and properties). Decoding is
//! zero-copy: topics and payloads are slices of the read buffer.
//!
//! The decoder is total: any byte sequence gives a packet, "need more bytes",
//! or a [`DecodeError`] — never a panic (see the fuzz target and proptests).
//!
//! The encoder writes what it is given; [`check_publish`] and
//! [`check_connect`] say first whether that fits MQTT's length fields
//! (65,535 bytes for a string or binary value, 268,435,455 for a packet),
//! so no length is ever silently truncated on the wire.

pub(crate) mod properties;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use properties::{
    AckProperties, DisconnectProperties, PropReader, PropWriter, SubscribeProperties,
};
pub use properties::{ConnAckProperties, ConnectProperties, PublishProperties, WillProperties};

use crate::secret::Secret;
use crate::types::{Protocol, QoS};

/// A UTF-8 string backed by `Bytes`, so topics decoded from the wire are not copied.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct ByteStr(Bytes);

impl ByteStr {
    /// Wraps bytes after checking they are UTF-8.
    pub fn from_utf8(b: Bytes) -> Result<Self, std::str::Utf8Error> {
        std::str::from_utf8(&b)?;
        Ok(ByteStr(b))
    }
    /// The string.
    pub fn as_str(&self) -> &str {
        // SAFETY: every constructor checks UTF-8 (`from_utf8`) or starts from a `&str`/`String`.
        unsafe { std::str::from_utf8_unchecked(&self.0) }
    }
    /// The bytes, shared (no copy).
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }
}

impl From<&str> for ByteStr {
    fn from(s: &str) -> Self {
        ByteStr(Bytes::copy_from_slice(s.as_bytes()))
    }
}
impl From<String> for ByteStr {
    fn from(s: String) -> Self {
        ByteStr(Bytes::from(s))
    }
}
impl std::ops::Deref for ByteStr {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}
impl std::fmt::Debug for ByteStr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}
impl std::fmt::Display for ByteStr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The last will as sent in CONNECT.
#[derive(Clone, Debug, PartialEq)]
pub struct Will {
    pub topic: String,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// MQTT 5 only.
    pub properties: WillProperties,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Connect {
    pub protocol: Protocol,
    pub clean_start: bool,
    pub keep_alive: u16,
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub will: Option<Will>,
    pub properties: ConnectProperties,
}

#[derive(Clone, Debug, PartialEq, Default)]
pub struct ConnAck {
    pub session_present: bool,
    /// v3.1.1 return code or v5 reason code; 0 is success in both.
    pub code: u8,
    pub properties: ConnAckProperties,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Publish {
    pub topic: ByteStr,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    pub dup: bool,
    /// 0 for QoS 0.
    pub pkid: u16,
    /// v5 only; boxed so a plain publish stays small.
    pub properties: Option<Box<PublishProperties>>,
}

/// PUBACK, PUBREC, PUBREL and PUBCOMP share one shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
// The packets' names in the specification.
#[allow(clippy::enum_variant_names)]
pub enum AckKind {
    PubAck,
    PubRec,
    PubRel,
    PubComp,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Ack {
    pub kind: AckKind,
    pub pkid: u16,
    /// v5 reason code (0 = success); always 0 on 3.1.1.
    pub reason: u8,
    pub reason_string: Option<String>,
}

/// Subscription options (MQTT 5 §3.8.3.1); on 3.1.1 only `qos` is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SubscribeOptions {
    /// The highest QoS the broker may deliver at.
    pub qos: QoS,
    /// Do not receive this client's own publishes (v5).
    pub no_local: bool,
    /// Keep the retain flag of forwarded messages as published (v5).
    pub retain_as_published: bool,
    /// 0 = send retained on subscribe, 1 = only if new, 2 = never.
    pub retain_handling: u8,
}

impl SubscribeOptions {
    /// Options with this QoS and MQTT's defaults otherwise.
    pub fn qos(qos: QoS) -> Self {
        SubscribeOptions {
            qos,
            no_local: false,
            retain_as_published: false,
            retain_handling: 0,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Subscribe {
    pub pkid: u16,
    pub filters: Vec<(String, SubscribeOptions)>,
    /// v5 subscription identifier (1..=268,435,455).
    pub subscription_identifier: Option<u32>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SubAck {
    pub pkid: u16,
    /// Granted QoS (0..=2) or a failure code (>= 0x80), one per filter.
    pub codes: Vec<u8>,
    pub reason_string: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Unsubscribe {
    pub pkid: u16,
    pub filters: Vec<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct UnsubAck {
    pub pkid: u16,
    pub codes: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Default)]
pub struct Disconnect {
    pub reason: u8,
    pub reason_string: Option<String>,
    pub session_expiry_interval: Option<u32>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Packet {
    Connect(Box<Connect>),
    ConnAck(ConnAck),
    Publish(Publish),
    Ack(Ack),
    Subscribe(Subscribe),
    SubAck(SubAck),
    Unsubscribe(Unsubscribe),
    UnsubAck(UnsubAck),
    PingReq,
    PingResp,
    Disconnect(Disconnect),
}

/// Bytes that are not a valid MQTT packet (a protocol error of the peer).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The remaining length is longer than four bytes.
    #[error("malformed remaining length")]
    MalformedLength,
    /// A packet over the maximum packet size.
    #[error("packet of {size} bytes is over the maximum packet size {max}")]
    PacketTooLarge {
        /// Its size.
        size: usize,
        /// The maximum.
        max: usize,
    },
    /// A packet type that is reserved, or not valid in this direction.
    #[error("packet type {0} is not valid here")]
    InvalidPacketType(u8),
    /// Fixed-header flags the packet type does not allow.
    #[error("invalid flags {flags:#x} for packet type {packet_type}")]
    InvalidFlags {
        /// The packet type.
        packet_type: u8,
        /// The flags.
        flags: u8,
    },
    /// The packet ended inside a field.
    #[error("packet ended early while reading {0}")]
    Truncated(&'static str),
    /// A string that is not UTF-8.
    #[error("{0} is not valid UTF-8")]
    InvalidUtf8(&'static str),
    /// QoS 3.
    #[error("invalid QoS 3")]
    InvalidQoS,
    /// A property unknown, repeated, or not allowed in this packet.
    #[error("unknown or duplicate property {0:#x}")]
    InvalidProperty(u8),
    /// A QoS 1/2 publish with packet identifier 0.
    #[error("QoS > 0 publish with packet identifier 0")]
    ZeroPacketId,
    /// AUTH (enhanced authentication), or a CONNECT asking for it, which
    /// mqlink does not speak.
    #[error("enhanced authentication (AUTH) is not supported")]
    AuthNotSupported,
    /// A CONNECT for MQTT (or MQIsdp) at a protocol level other than 4 and 5.
    #[error("unsupported MQTT protocol level {0}")]
    UnsupportedProtocolLevel(u8),
    /// A CONNECT that breaks a rule of its own (names the rule).
    #[error("invalid CONNECT: {0}")]
    InvalidConnect(&'static str),
    /// Bytes after the last field.
    #[error("{0} bytes left over at the end of the packet")]
    TrailingBytes(usize),
}

/// Largest remaining length MQTT can express (268,435,455).
pub const MAX_REMAINING_LENGTH: usize = 268_435_455;

/// Longest string or binary value MQTT can express (a two-byte length).
pub const MAX_FIELD_LENGTH: usize = 65_535;

/// A packet MQTT cannot express; names the field.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum EncodeError {
    /// A string or binary field over 65,535 bytes.
    #[error("{field} is {len} bytes; MQTT allows at most 65535")]
    FieldTooLong {
        /// Which field.
        field: &'static str,
        /// Its length.
        len: usize,
    },
    /// A packet over MQTT's 268,435,455 bytes.
    #[error("the packet would be {len} bytes after its header; MQTT allows at most 268435455")]
    PacketTooLarge {
        /// Its length after the fixed header.
        len: usize,
    },
}

fn check_field(field: &'static str, v: &[u8]) -> Result<(), EncodeError> {
    if v.len() > MAX_FIELD_LENGTH {
        return Err(EncodeError::FieldTooLong {
            field,
            len: v.len(),
        });
    }
    Ok(())
}

fn check_user_properties(pairs: &[(String, String)]) -> Result<(), EncodeError> {
    for (k, v) in pairs {
        check_field("user property name", k.as_bytes())?;
        check_field("user property value", v.as_bytes())?;
    }
    Ok(())
}

/// Whether [`encode_publish`] can write `p` faithfully.
pub fn check_publish(p: &Publish, protocol: Protocol) -> Result<(), EncodeError> {
    check_field("topic", p.topic.as_bytes())?;
    if let (Protocol::V5, Some(props)) = (protocol, &p.properties) {
        check_field(
            "response topic",
            props.response_topic.as_deref().unwrap_or("").as_bytes(),
        )?;
        check_field(
            "correlation data",
            props.correlation_data.as_deref().unwrap_or(&[]),
        )?;
        check_field(
            "content type",
            props.content_type.as_deref().unwrap_or("").as_bytes(),
        )?;
        check_user_properties(&props.user_properties)?;
    }
    let props = publish_props_bytes(p, protocol);
    let len = publish_body_len(p, props.as_deref(), protocol);
    if len > MAX_REMAINING_LENGTH {
        return Err(EncodeError::PacketTooLarge { len });
    }
    Ok(())
}

/// Whether [`encode`] can write the CONNECT `c` faithfully.
pub fn check_connect(c: &Connect) -> Result<(), EncodeError> {
    check_field("client identifier", c.client_id.as_bytes())?;
    if let Some(w) = &c.will {
        check_field("will topic", w.topic.as_bytes())?;
        check_field("will payload", &w.payload)?;
        let p = &w.properties;
        check_field(
            "will content type",
            p.content_type.as_deref().unwrap_or("").as_bytes(),
        )?;
        check_field(
            "will response topic",
            p.response_topic.as_deref().unwrap_or("").as_bytes(),
        )?;
        check_field(
            "will correlation data",
            p.correlation_data.as_deref().unwrap_or(&[]),
        )?;
        check_user_properties(&p.user_properties)?;
    }
    check_field("user name", c.username.as_deref().unwrap_or("").as_bytes())?;
    if let Some(p) = &c.password {
        check_field("password", p.expose().as_bytes())?;
    }
    check_user_properties(&c.properties.user_properties)
}

/// Decodes one packet from the front of `buf`, removing its bytes.
///
/// Returns `Ok(None)` when `buf` holds less than one whole packet.
pub fn decode(
    buf: &mut BytesMut,
    protocol: Protocol,
    max_packet_size: usize,
) -> Result<Option<Packet>, DecodeError> {
    let Some((header_len, remaining)) = read_fixed_header(buf)? else {
        return Ok(None);
    };
    let total = header_len + remaining;
    if total > max_packet_size {
        return Err(DecodeError::PacketTooLarge {
            size: total,
            max: max_packet_size,
        });
    }
    if buf.len() < total {
        if buf.capacity() < total {
            // A buffer of the packet's own size. Reserving on `buf` instead
            // counts the bytes earlier packets took from its front, and
            // doubles: 1 MiB messages grew it to 64 MiB.
            let mut own = BytesMut::with_capacity(total);
            own.extend_from_slice(buf);
            *buf = own;
        }
        return Ok(None);
    }
    let first = buf[0];
    let mut body = buf.split_to(total).freeze();
    body.advance(header_len);
    decode_body(first, body, protocol).map(Some)
}

/// Makes room in `buf` for the next read: `chunk` more bytes when less than
/// `low` are free, unless `buf` holds the start of a packet that fits
/// (`decode` gave it its size): reading fills that first, and reserving
/// more on it would double a packet-sized allocation.
pub fn reserve_for_read(buf: &mut BytesMut, low: usize, chunk: usize) {
    if let Ok(Some((header, remaining))) = read_fixed_header(buf) {
        let total = header + remaining;
        if buf.len() < total && total <= buf.capacity() {
            return;
        }
    }
    if buf.capacity() - buf.len() < low {
        buf.reserve(chunk);
    }
}

/// Reads the fixed header: (its length, the remaining length), `Ok(None)` if incomplete.
pub(crate) fn read_fixed_header(buf: &[u8]) -> Result<Option<(usize, usize)>, DecodeError> {
    let mut len: usize = 0;
    for i in 0..4 {
        let Some(&b) = buf.get(1 + i) else {
            return Ok(None);
        };
        len |= ((b & 0x7f) as usize) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some((2 + i, len)));
        }
    }
    Err(DecodeError::MalformedLength)
}

struct Reader {
    b: Bytes,
}

impl Reader {
    fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        if self.b.remaining() < 1 {
            return Err(DecodeError::Truncated(what));
        }
        Ok(self.b.get_u8())
    }
    fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        if self.b.remaining() < 2 {
            return Err(DecodeError::Truncated(what));
        }
        Ok(self.b.get_u16())
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        if self.b.remaining() < 4 {
            return Err(DecodeError::Truncated(what));
        }
        Ok(self.b.get_u32())
    }
    fn varint(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        let mut v: u32 = 0;
        for i in 0..4 {
            let b = self.u8(what)?;
            v |= ((b & 0x7f) as u32) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(DecodeError::MalformedLength)
    }
    fn binary(&mut self, what: &'static str) -> Result<Bytes, DecodeError> {
        let n = self.u16(what)? as usize;
        self.take(n, what)
    }
    fn take(&mut self, n: usize, what: &'static str) -> Result<Bytes, DecodeError> {
        if self.b.remaining() < n {
            return Err(DecodeError::Truncated(what));
        }
        Ok(self.b.split_to(n))
    }
    fn bytestr(&mut self, what: &'static str) -> Result<ByteStr, DecodeError> {
        let b = self.binary(what)?;
        ByteStr::from_utf8(b).map_err(|_| DecodeError::InvalidUtf8(what))
    }
    fn string(&mut self, what: &'static str) -> Result<String, DecodeError> {
        Ok(self.bytestr(what)?.as_str().to_owned())
    }
    fn is_empty(&self) -> bool {
        self.b.is_empty()
    }
    fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.b)
    }
    fn finish(&self) -> Result<(), DecodeError> {
        if self.b.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes(self.b.len()))
        }
    }
}

fn qos_from(bits: u8) -> Result<QoS, DecodeError> {
    match bits {
        0 => Ok(QoS::AtMostOnce),
        1 => Ok(QoS::AtLeastOnce),
        2 => Ok(QoS::ExactlyOnce),
        _ => Err(DecodeError::InvalidQoS),
    }
}

fn expect_flags(first: u8, want: u8) -> Result<(), DecodeError> {
    if first & 0x0f != want {
        return Err(DecodeError::InvalidFlags {
            packet_type: first >> 4,
            flags: first & 0x0f,
        });
    }
    Ok(())
}

fn decode_body(first: u8, body: Bytes, protocol: Protocol) -> Result<Packet, DecodeError> {
    let v5 = protocol == Protocol::V5;
    let mut r = Reader { b: body };
    let packet_type = first >> 4;
    let packet = match packet_type {
        1 => Packet::Connect(Box::new(decode_connect(&mut r)?)),
        2 => {
            expect_flags(first, 0)?;
            let flags = r.u8("CONNACK flags")?;
            let code = r.u8("CONNACK return code")?;
            let properties = if v5 && !r.is_empty() {
                ConnAckProperties::decode(&mut PropReader::new(&mut r)?)?
            } else {
                ConnAckProperties::default()
            };
            Packet::ConnAck(ConnAck {
                session_present: flags & 1 == 1,
                code,
                properties,
            })
        }
        3 => {
            let qos = qos_from((first >> 1) & 3)?;
            let topic = r.bytestr("topic name")?;
            let pkid = if qos == QoS::AtMostOnce {
                0
            } else {
                match r.u16("packet identifier")? {
                    0 => return Err(DecodeError::ZeroPacketId),
                    id => id,
                }
            };
            let properties = if v5 {
                let props = PublishProperties::decode(&mut PropReader::new(&mut r)?)?;
                (!props.is_empty()).then(|| Box::new(props))
            } else {
                None
            };
            Packet::Publish(Publish {
                topic,
                payload: r.rest(),
                qos,
                retain: first & 1 == 1,
                dup: first & 8 == 8,
                pkid,
                properties,
            })
        }
        4..=7 => {
            let kind = match packet_type {
                4 => AckKind::PubAck,
                5 => AckKind::PubRec,
                6 => AckKind::PubRel,
                _ => AckKind::PubComp,
            };
            expect_flags(first, if kind == AckKind::PubRel { 2 } else { 0 })?;
            let pkid = r.u16("packet identifier")?;
            let mut ack = Ack {
                kind,
                pkid,
                reason: 0,
                reason_string: None,
            };
            if v5 && !r.is_empty() {
                ack.reason = r.u8("reason code")?;
                if !r.is_empty() {
                    ack.reason_string =
                        AckProperties::decode(&mut PropReader::new(&mut r)?)?.reason_string;
                }
            }
            Packet::Ack(ack)
        }
        8 => {
            expect_flags(first, 2)?;
            let pkid = r.u16("packet identifier")?;
            let mut subscription_identifier = None;
            if v5 {
                subscription_identifier =
                    SubscribeProperties::decode(&mut PropReader::new(&mut r)?)?
                        .subscription_identifier;
            }
            let mut filters = Vec::new();
            while !r.is_empty() {
                let filter = r.string("topic filter")?;
                let o = r.u8("subscription options")?;
                filters.push((
                    filter,
                    SubscribeOptions {
                        qos: qos_from(o & 3)?,
                        no_local: o & 4 != 0,
                        retain_as_published: o & 8 != 0,
                        retain_handling: (o >> 4) & 3,
                    },
                ));
            }
            Packet::Subscribe(Subscribe {
                pkid,
                filters,
                subscription_identifier,
            })
        }
        9 | 11 => {
            expect_flags(first, 0)?;
            let pkid = r.u16("packet identifier")?;
            let reason_string = if v5 {
                AckProperties::decode(&mut PropReader::new(&mut r)?)?.reason_string
            } else {
                None
            };
            let codes = r.rest().to_vec();
            if packet_type == 9 {
                Packet::SubAck(SubAck {
                    pkid,
                    codes,
                    reason_string,
                })
            } else {
                Packet::UnsubAck(UnsubAck { pkid, codes })
            }
        }
        10 => {
            expect_flags(first, 2)?;
            let pkid = r.u16("packet identifier")?;
            if v5 {
                AckProperties::decode(&mut PropReader::new(&mut r)?)?;
            }
            let mut filters = Vec::new();
            while !r.is_empty() {
                filters.push(r.string("topic filter")?);
            }
            Packet::Unsubscribe(Unsubscribe { pkid, filters })
        }
        12 => {
            expect_flags(first, 0)?;
            Packet::PingReq
        }
        13 => {
            expect_flags(first, 0)?;
            Packet::PingResp
        }
        14 => {
            expect_flags(first, 0)?;
            let mut d = Disconnect::default();
            if v5 && !r.is_empty() {
                d.reason = r.u8("reason code")?;
                if !r.is_empty() {
                    let p = DisconnectProperties::decode(&mut PropReader::new(&mut r)?)?;
                    d.reason_string = p.reason_string;
                    d.session_expiry_interval = p.session_expiry_interval;
                }
            }
            Packet::Disconnect(d)
        }
        15 if v5 => return Err(DecodeError::AuthNotSupported),
        t => return Err(DecodeError::InvalidPacketType(t)),
    };
    r.finish()?;
    Ok(packet)
}

fn decode_connect(r: &mut Reader) -> Result<Connect, DecodeError> {
    let name = r.binary("protocol name")?;
    let level = r.u8("protocol level")?;
    let protocol = match (&name[..], level) {
        (b"MQTT", 4) => Protocol::V311,
        (b"MQTT", 5) => Protocol::V5,
        (b"MQIsdp", 3) => Protocol::V31,
        (b"MQTT" | b"MQIsdp", level) => return Err(DecodeError::UnsupportedProtocolLevel(level)),
        _ => return Err(DecodeError::InvalidConnect("protocol name")),
    };
    let flags = r.u8("connect flags")?;
    // [MQTT-3.1.2-3] and, without a will, its QoS and retain flags 0 [MQTT-3.1.2-11/13/15].
    if flags & 1 != 0 {
        return Err(DecodeError::InvalidConnect("reserved connect flag"));
    }
    if flags & 4 == 0 && flags & 0x38 != 0 {
        return Err(DecodeError::InvalidConnect("will flags without a will"));
    }
    let keep_alive = r.u16("keep alive")?;
    let properties = if protocol == Protocol::V5 {
        let p = ConnectProperties::decode(&mut PropReader::new(r)?).map_err(|e| match e {
            DecodeError::InvalidProperty(
                properties::id::AUTHENTICATION_METHOD | properties::id::AUTHENTICATION_DATA,
            ) => DecodeError::AuthNotSupported,
            e => e,
        })?;
        if p.receive_maximum == Some(0) {
            return Err(DecodeError::InvalidConnect("receive maximum 0"));
        }
        if p.maximum_packet_size == Some(0) {
            return Err(DecodeError::InvalidConnect("maximum packet size 0"));
        }
        p
    } else {
        ConnectProperties::default()
    };
    let client_id = r.string("client identifier")?;
    let will = if flags & 4 != 0 {
        let properties = if protocol == Protocol::V5 {
            WillProperties::decode(&mut PropReader::new(r)?)?
        } else {
            WillProperties::default()
        };
        Some(Will {
            topic: r.string("will topic")?,
            payload: r.binary("will payload")?,
            qos: qos_from((flags >> 3) & 3)?,
            retain: flags & 0x20 != 0,
            properties,
        })
    } else {
        None
    };
    let username = if flags & 0x80 != 0 {
        Some(r.string("user name")?)
    } else {
        None
    };
    // Binary in MQTT; kept as text (bytes that are not UTF-8 are replaced,
    // so they match no password from a file).
    let password = if flags & 0x40 != 0 {
        Some(Secret::new(
            String::from_utf8_lossy(&r.binary("password")?).into_owned(),
        ))
    } else {
        None
    };
    Ok(Connect {
        protocol,
        clean_start: flags & 2 != 0,
        keep_alive,
        client_id,
        username,
        password,
        will,
        properties,
    })
}

// ---------------------------------------------------------------- encoding

/// Bytes needed to write `n` as a variable byte integer.
pub(crate) fn varint_len(n: usize) -> usize {
    match n {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

pub(crate) fn put_varint(out: &mut BytesMut, mut n: usize) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.put_u8(b);
        if n == 0 {
            break;
        }
    }
}

fn put_str(out: &mut BytesMut, s: &[u8]) {
    debug_assert!(s.len() <= MAX_FIELD_LENGTH, "unchecked length {}", s.len());
    out.put_u16(s.len() as u16);
    out.put_slice(s);
}

/// Size a PUBLISH takes on the wire (used to enforce maximum packet size before sending).
pub fn publish_size(p: &Publish, protocol: Protocol) -> usize {
    let props = publish_props_bytes(p, protocol);
    let body = publish_body_len(p, props.as_deref(), protocol);
    1 + varint_len(body) + body
}

/// The v5 properties block, length prefix included; `None` when there are none.
fn publish_props_bytes(p: &Publish, protocol: Protocol) -> Option<BytesMut> {
    if protocol != Protocol::V5 {
        return None;
    }
    p.properties.as_ref().map(|props| {
        let mut w = PropWriter::default();
        props.encode(&mut w);
        w.finish()
    })
}

fn publish_body_len(p: &Publish, props: Option<&[u8]>, protocol: Protocol) -> usize {
    let mut n = 2 + p.topic.len() + p.payload.len();
    if p.qos != QoS::AtMostOnce {
        n += 2;
    }
    if protocol == Protocol::V5 {
        n += props.map_or(1, <[u8]>::len);
    }
    n
}

/// Appends a PUBLISH to `out`. This is the hot path: no allocation when
/// the publish carries no v5 properties.
pub fn encode_publish(p: &Publish, protocol: Protocol, out: &mut BytesMut) {
    let props = publish_props_bytes(p, protocol);
    let body = publish_body_len(p, props.as_deref(), protocol);
    out.reserve(1 + 4 + body);
    let mut first = 0x30 | ((p.qos as u8) << 1);
    if p.dup && p.qos != QoS::AtMostOnce {
        first |= 8;
    }
    if p.retain {
        first |= 1;
    }
    out.put_u8(first);
    put_varint(out, body);
    put_str(out, p.topic.as_bytes());
    if p.qos != QoS::AtMostOnce {
        out.put_u16(p.pkid);
    }
    if protocol == Protocol::V5 {
        match props {
            Some(props) => out.put_slice(&props),
            None => out.put_u8(0),
        }
    }
    out.put_slice(&p.payload);
}

/// Appends a PUBACK/PUBREC/PUBREL/PUBCOMP with success.
pub fn encode_ack(kind: AckKind, pkid: u16, out: &mut BytesMut) {
    // Success with no properties is the same 4 bytes on 3.1.1 and 5 (§3.4.2.1).
    out.put_slice(&[ack_first_byte(kind), 2, (pkid >> 8) as u8, pkid as u8]);
}

fn ack_first_byte(kind: AckKind) -> u8 {
    match kind {
        AckKind::PubAck => 0x40,
        AckKind::PubRec => 0x50,
        AckKind::PubRel => 0x62,
        AckKind::PubComp => 0x70,
    }
}

/// Appends any packet. Used for the rarer packets; publishes go through
/// [`encode_publish`], acks through [`encode_ack`].
pub fn encode(packet: &Packet, protocol: Protocol, out: &mut BytesMut) {
    let v5 = protocol == Protocol::V5;
    let mut body = BytesMut::with_capacity(64);
    let first: u8 = match packet {
        Packet::Publish(p) => return encode_publish(p, protocol, out),
        Packet::Ack(a) if a.reason == 0 && a.reason_string.is_none() => {
            return encode_ack(a.kind, a.pkid, out)
        }
        Packet::Ack(a) => {
            body.put_u16(a.pkid);
            if v5 {
                body.put_u8(a.reason);
                let mut w = PropWriter::default();
                AckProperties {
                    reason_string: a.reason_string.clone(),
                }
                .encode(&mut w);
                body.put_slice(&w.finish());
            }
            ack_first_byte(a.kind)
        }
        Packet::Connect(c) => {
            let (name, level): (&[u8], u8) = match protocol {
                Protocol::V31 => (b"MQIsdp", 3),
                Protocol::V311 => (b"MQTT", 4),
                Protocol::V5 => (b"MQTT", 5),
            };
            put_str(&mut body, name);
            body.put_u8(level);
            let mut flags = 0u8;
            if c.clean_start {
                flags |= 2;
            }
            if let Some(w) = &c.will {
                flags |= 4 | ((w.qos as u8) << 3);
                if w.retain {
                    flags |= 0x20;
                }
            }
            if c.password.is_some() {
                flags |= 0x40;
            }
            if c.username.is_some() {
                flags |= 0x80;
            }
            body.put_u8(flags);
            body.put_u16(c.keep_alive);
            if v5 {
                let mut w = PropWriter::default();
                c.properties.encode(&mut w);
                body.put_slice(&w.finish());
            }
            put_str(&mut body, c.client_id.as_bytes());
            if let Some(w) = &c.will {
                if v5 {
                    let mut props = PropWriter::default();
                    w.properties.encode(&mut props);
                    body.put_slice(&props.finish());
                }
                put_str(&mut body, w.topic.as_bytes());
                put_str(&mut body, &w.payload);
            }
            if let Some(u) = &c.username {
                put_str(&mut body, u.as_bytes());
            }
            if let Some(p) = &c.password {
                put_str(&mut body, p.expose().as_bytes());
            }
            0x10
        }
        Packet::ConnAck(c) => {
            body.put_u8(c.session_present as u8);
            body.put_u8(c.code);
            if v5 {
                let mut w = PropWriter::default();
                c.properties.encode(&mut w);
                body.put_slice(&w.finish());
            }
            0x20
        }
        Packet::Subscribe(s) => {
            body.put_u16(s.pkid);
            if v5 {
                let mut w = PropWriter::default();
                SubscribeProperties {
                    subscription_identifier: s.subscription_identifier,
                }
                .encode(&mut w);
                body.put_slice(&w.finish());
            }
            for (filter, o) in &s.filters {
                put_str(&mut body, filter.as_bytes());
                let mut b = o.qos as u8;
                if v5 {
                    b |= (o.no_local as u8) << 2
                        | (o.retain_as_published as u8) << 3
                        | (o.retain_handling & 3) << 4;
                }
                body.put_u8(b);
            }
            0x82
        }
        Packet::SubAck(s) => {
            body.put_u16(s.pkid);
            if v5 {
                let mut w = PropWriter::default();
                AckProperties {
                    reason_string: s.reason_string.clone(),
                }
                .encode(&mut w);
                body.put_slice(&w.finish());
            }
            body.put_slice(&s.codes);
            0x90
        }
        Packet::Unsubscribe(u) => {
            body.put_u16(u.pkid);
            if v5 {
                body.put_u8(0);
            }
            for f in &u.filters {
                put_str(&mut body, f.as_bytes());
            }
            0xa2
        }
        Packet::UnsubAck(u) => {
            body.put_u16(u.pkid);
            if v5 {
                body.put_u8(0);
                body.put_slice(&u.codes);
            }
            0xb0
        }
        Packet::PingReq => 0xc0,
        Packet::PingResp => 0xd0,
        Packet::Disconnect(d) => {
            if v5 && (d.reason != 0 || d.session_expiry_interval.is_some()) {
                body.put_u8(d.reason);
                let mut w = PropWriter::default();
                DisconnectProperties {
                    session_expiry_interval: d.session_expiry_interval,
                    reason_string: d.reason_string.clone(),
                }
                .encode(&mut w);
                body.put_slice(&w.finish());
            }
            0xe0
        }
    };
    out.reserve(5 + body.len());
    out.put_u8(first);
    put_varint(out, body.len());
    out.put_slice(&body);
}

#[cfg(test)]
mod tests;
