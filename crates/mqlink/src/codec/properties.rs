//! MQTT 5 properties (§2.2.2): the subsets of CONNECT, CONNACK and PUBLISH
//! that mqlink uses, and a reader that skips what it does not keep.

use bytes::{BufMut, Bytes, BytesMut};

use super::{put_varint, ByteStr, DecodeError, Reader};

/// A decoded property value; the type is fixed by the identifier.
pub(super) enum Value {
    Byte(u8),
    U16(u16),
    U32(u32),
    Varint(u32),
    Str(ByteStr),
    Bin(Bytes),
    Pair(String, String),
}

pub(super) struct PropReader {
    r: Reader,
}

impl PropReader {
    /// Reads the property length and takes that many bytes from `r`.
    pub(super) fn new(r: &mut Reader) -> Result<Self, DecodeError> {
        let len = r.varint("property length")? as usize;
        Ok(PropReader {
            r: Reader {
                b: r.take(len, "properties")?,
            },
        })
    }

    pub(super) fn next(&mut self) -> Result<Option<(u8, Value)>, DecodeError> {
        if self.r.is_empty() {
            return Ok(None);
        }
        let id = self.r.u8("property identifier")?;
        let v = match id {
            0x01 | 0x17 | 0x19 | 0x24 | 0x25 | 0x28 | 0x29 | 0x2a => {
                Value::Byte(self.r.u8("byte property")?)
            }
            0x13 | 0x21 | 0x22 | 0x23 => Value::U16(self.r.u16("two byte property")?),
            0x02 | 0x11 | 0x18 | 0x27 => Value::U32(self.r.u32("four byte property")?),
            0x0b => Value::Varint(self.r.varint("subscription identifier")?),
            0x03 | 0x08 | 0x12 | 0x15 | 0x1a | 0x1c | 0x1f => {
                Value::Str(self.r.bytestr("string property")?)
            }
            0x09 | 0x16 => Value::Bin(self.r.binary("binary property")?),
            0x26 => Value::Pair(
                self.r.string("user property name")?,
                self.r.string("user property value")?,
            ),
            other => return Err(DecodeError::InvalidProperty(other)),
        };
        Ok(Some((id, v)))
    }

    pub(super) fn skip_all(&mut self) -> Result<(), DecodeError> {
        while self.next()?.is_some() {}
        Ok(())
    }
}

/// Writes properties into a scratch buffer; `finish` prefixes the length.
#[derive(Default)]
pub(super) struct PropWriter {
    buf: BytesMut,
}

impl PropWriter {
    pub(super) fn u8(&mut self, id: u8, v: u8) {
        self.buf.put_u8(id);
        self.buf.put_u8(v);
    }
    pub(super) fn u16(&mut self, id: u8, v: u16) {
        self.buf.put_u8(id);
        self.buf.put_u16(v);
    }
    pub(super) fn u32(&mut self, id: u8, v: u32) {
        self.buf.put_u8(id);
        self.buf.put_u32(v);
    }
    pub(super) fn varint(&mut self, id: u8, v: u32) {
        self.buf.put_u8(id);
        put_varint(&mut self.buf, v as usize);
    }
    pub(super) fn string(&mut self, id: u8, v: &str) {
        self.bin(id, v.as_bytes());
    }
    pub(super) fn bin(&mut self, id: u8, v: &[u8]) {
        debug_assert!(v.len() <= u16::MAX as usize, "unchecked length {}", v.len());
        self.buf.put_u8(id);
        self.buf.put_u16(v.len() as u16);
        self.buf.put_slice(v);
    }
    fn pairs(&mut self, pairs: &[(String, String)]) {
        for (k, v) in pairs {
            self.string(0x26, k);
            debug_assert!(v.len() <= u16::MAX as usize, "unchecked length {}", v.len());
            self.buf.put_u16(v.len() as u16);
            self.buf.put_slice(v.as_bytes());
        }
    }
    pub(super) fn finish(self) -> BytesMut {
        let mut out = BytesMut::with_capacity(self.buf.len() + 4);
        put_varint(&mut out, self.buf.len());
        out.put_slice(&self.buf);
        out
    }
}

fn set<T>(slot: &mut Option<T>, id: u8, v: T) -> Result<(), DecodeError> {
    if slot.is_some() {
        return Err(DecodeError::InvalidProperty(id));
    }
    *slot = Some(v);
    Ok(())
}

/// The PUBLISH properties an application sees and sets.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PublishProperties {
    pub payload_format_indicator: Option<u8>,
    pub message_expiry_interval: Option<u32>,
    pub topic_alias: Option<u16>,
    pub response_topic: Option<String>,
    pub correlation_data: Option<Bytes>,
    pub user_properties: Vec<(String, String)>,
    pub subscription_identifiers: Vec<u32>,
    pub content_type: Option<String>,
}

impl PublishProperties {
    pub fn is_empty(&self) -> bool {
        *self == PublishProperties::default()
    }

    pub(super) fn decode(r: &mut PropReader) -> Result<Self, DecodeError> {
        let mut p = PublishProperties::default();
        while let Some((id, v)) = r.next()? {
            match (id, v) {
                (0x01, Value::Byte(b)) => set(&mut p.payload_format_indicator, id, b)?,
                (0x02, Value::U32(n)) => set(&mut p.message_expiry_interval, id, n)?,
                (0x23, Value::U16(n)) => set(&mut p.topic_alias, id, n)?,
                (0x08, Value::Str(s)) => set(&mut p.response_topic, id, s.as_str().to_owned())?,
                (0x09, Value::Bin(b)) => set(&mut p.correlation_data, id, b)?,
                (0x26, Value::Pair(k, v)) => p.user_properties.push((k, v)),
                (0x0b, Value::Varint(n)) => p.subscription_identifiers.push(n),
                (0x03, Value::Str(s)) => set(&mut p.content_type, id, s.as_str().to_owned())?,
                (id, _) => return Err(DecodeError::InvalidProperty(id)),
            }
        }
        Ok(p)
    }

    pub(super) fn encode(&self, w: &mut PropWriter) {
        if let Some(v) = self.payload_format_indicator {
            w.u8(0x01, v);
        }
        if let Some(v) = self.message_expiry_interval {
            w.u32(0x02, v);
        }
        if let Some(v) = self.topic_alias {
            w.u16(0x23, v);
        }
        if let Some(v) = &self.response_topic {
            w.string(0x08, v);
        }
        if let Some(v) = &self.correlation_data {
            w.bin(0x09, v);
        }
        w.pairs(&self.user_properties);
        for id in &self.subscription_identifiers {
            w.varint(0x0b, *id);
        }
        if let Some(v) = &self.content_type {
            w.string(0x03, v);
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct ConnectProperties {
    pub session_expiry_interval: Option<u32>,
    pub receive_maximum: Option<u16>,
    pub maximum_packet_size: Option<u32>,
    pub topic_alias_maximum: Option<u16>,
    pub user_properties: Vec<(String, String)>,
}

impl ConnectProperties {
    pub(super) fn decode(r: &mut PropReader) -> Result<Self, DecodeError> {
        let mut p = ConnectProperties::default();
        while let Some((id, v)) = r.next()? {
            match (id, v) {
                (0x11, Value::U32(n)) => set(&mut p.session_expiry_interval, id, n)?,
                (0x21, Value::U16(n)) => set(&mut p.receive_maximum, id, n)?,
                (0x27, Value::U32(n)) => set(&mut p.maximum_packet_size, id, n)?,
                (0x22, Value::U16(n)) => set(&mut p.topic_alias_maximum, id, n)?,
                (0x26, Value::Pair(k, v)) => p.user_properties.push((k, v)),
                (0x17 | 0x19 | 0x15 | 0x16, _) => {}
                (id, _) => return Err(DecodeError::InvalidProperty(id)),
            }
        }
        Ok(p)
    }

    pub(super) fn encode(&self, w: &mut PropWriter) {
        if let Some(v) = self.session_expiry_interval {
            w.u32(0x11, v);
        }
        if let Some(v) = self.receive_maximum {
            w.u16(0x21, v);
        }
        if let Some(v) = self.maximum_packet_size {
            w.u32(0x27, v);
        }
        if let Some(v) = self.topic_alias_maximum {
            w.u16(0x22, v);
        }
        w.pairs(&self.user_properties);
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct ConnAckProperties {
    pub session_expiry_interval: Option<u32>,
    pub receive_maximum: Option<u16>,
    pub maximum_qos: Option<u8>,
    pub retain_available: Option<u8>,
    pub maximum_packet_size: Option<u32>,
    pub assigned_client_identifier: Option<String>,
    pub topic_alias_maximum: Option<u16>,
    pub reason_string: Option<String>,
    pub user_properties: Vec<(String, String)>,
    pub wildcard_subscription_available: Option<u8>,
    pub subscription_identifiers_available: Option<u8>,
    pub shared_subscription_available: Option<u8>,
    pub server_keep_alive: Option<u16>,
}

impl ConnAckProperties {
    pub(super) fn decode(r: &mut PropReader) -> Result<Self, DecodeError> {
        let mut p = ConnAckProperties::default();
        while let Some((id, v)) = r.next()? {
            match (id, v) {
                (0x11, Value::U32(n)) => set(&mut p.session_expiry_interval, id, n)?,
                (0x21, Value::U16(n)) => set(&mut p.receive_maximum, id, n)?,
                (0x24, Value::Byte(n)) => set(&mut p.maximum_qos, id, n)?,
                (0x25, Value::Byte(n)) => set(&mut p.retain_available, id, n)?,
                (0x27, Value::U32(n)) => set(&mut p.maximum_packet_size, id, n)?,
                (0x12, Value::Str(s)) => {
                    set(&mut p.assigned_client_identifier, id, s.as_str().to_owned())?
                }
                (0x22, Value::U16(n)) => set(&mut p.topic_alias_maximum, id, n)?,
                (0x1f, Value::Str(s)) => set(&mut p.reason_string, id, s.as_str().to_owned())?,
                (0x26, Value::Pair(k, v)) => p.user_properties.push((k, v)),
                (0x28, Value::Byte(n)) => set(&mut p.wildcard_subscription_available, id, n)?,
                (0x29, Value::Byte(n)) => set(&mut p.subscription_identifiers_available, id, n)?,
                (0x2a, Value::Byte(n)) => set(&mut p.shared_subscription_available, id, n)?,
                (0x13, Value::U16(n)) => set(&mut p.server_keep_alive, id, n)?,
                // Response information, server reference, authentication: not used.
                (0x1a | 0x1c | 0x15 | 0x16, _) => {}
                (id, _) => return Err(DecodeError::InvalidProperty(id)),
            }
        }
        Ok(p)
    }

    pub(super) fn encode(&self, w: &mut PropWriter) {
        if let Some(v) = self.session_expiry_interval {
            w.u32(0x11, v);
        }
        if let Some(v) = self.receive_maximum {
            w.u16(0x21, v);
        }
        if let Some(v) = self.maximum_qos {
            w.u8(0x24, v);
        }
        if let Some(v) = self.maximum_packet_size {
            w.u32(0x27, v);
        }
        if let Some(v) = &self.assigned_client_identifier {
            w.string(0x12, v);
        }
        if let Some(v) = &self.reason_string {
            w.string(0x1f, v);
        }
        if let Some(v) = self.server_keep_alive {
            w.u16(0x13, v);
        }
    }
}

/// Properties of acks, SUBACK and UNSUBSCRIBE: only the reason string is kept.
pub(super) fn decode_reason_only(r: &mut Reader) -> Result<Option<String>, DecodeError> {
    let mut props = PropReader::new(r)?;
    let mut reason = None;
    while let Some((id, v)) = props.next()? {
        match (id, v) {
            (0x1f, Value::Str(s)) => set(&mut reason, id, s.as_str().to_owned())?,
            (0x26, _) => {}
            (id, _) => return Err(DecodeError::InvalidProperty(id)),
        }
    }
    Ok(reason)
}

pub(super) fn decode_subscribe_props(r: &mut Reader) -> Result<Option<u32>, DecodeError> {
    let mut props = PropReader::new(r)?;
    let mut sub_id = None;
    while let Some((id, v)) = props.next()? {
        match (id, v) {
            (0x0b, Value::Varint(n)) => set(&mut sub_id, id, n)?,
            (0x26, _) => {}
            (id, _) => return Err(DecodeError::InvalidProperty(id)),
        }
    }
    Ok(sub_id)
}

pub(super) fn decode_disconnect_props(
    r: &mut Reader,
) -> Result<(Option<String>, Option<u32>), DecodeError> {
    let mut props = PropReader::new(r)?;
    let (mut reason, mut expiry) = (None, None);
    while let Some((id, v)) = props.next()? {
        match (id, v) {
            (0x1f, Value::Str(s)) => set(&mut reason, id, s.as_str().to_owned())?,
            (0x11, Value::U32(n)) => set(&mut expiry, id, n)?,
            (0x26 | 0x1c, _) => {}
            (id, _) => return Err(DecodeError::InvalidProperty(id)),
        }
    }
    Ok((reason, expiry))
}
