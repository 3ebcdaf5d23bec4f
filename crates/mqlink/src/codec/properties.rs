//! MQTT 5 properties (§2.2.2): one named table of identifiers and wire
//! types, and per packet a list of (field, property) that drives both its
//! decoder and its encoder.

use bytes::{BufMut, Bytes, BytesMut};

use super::{put_varint, ByteStr, DecodeError, Reader};

/// How a property's value is written on the wire (§2.2.2.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Byte,
    U16,
    U32,
    Varint,
    Str,
    Bin,
    Pair,
}

/// The property table: each identifier once, with its name and wire type.
macro_rules! property_table {
    ($($name:ident = $id:literal: $kind:ident,)*) => {
        /// Property identifiers by name.
        #[allow(dead_code)]
        pub(crate) mod id {
            $(pub(crate) const $name: u8 = $id;)*
        }
        /// The wire type of property `id`; `None` for an unknown identifier.
        pub(crate) fn kind(id: u8) -> Option<Kind> {
            match id {
                $($id => Some(Kind::$kind),)*
                _ => None,
            }
        }
    };
}

property_table! {
    PAYLOAD_FORMAT_INDICATOR = 0x01: Byte,
    MESSAGE_EXPIRY_INTERVAL = 0x02: U32,
    CONTENT_TYPE = 0x03: Str,
    RESPONSE_TOPIC = 0x08: Str,
    CORRELATION_DATA = 0x09: Bin,
    SUBSCRIPTION_IDENTIFIER = 0x0b: Varint,
    SESSION_EXPIRY_INTERVAL = 0x11: U32,
    ASSIGNED_CLIENT_IDENTIFIER = 0x12: Str,
    SERVER_KEEP_ALIVE = 0x13: U16,
    AUTHENTICATION_METHOD = 0x15: Str,
    AUTHENTICATION_DATA = 0x16: Bin,
    REQUEST_PROBLEM_INFORMATION = 0x17: Byte,
    WILL_DELAY_INTERVAL = 0x18: U32,
    REQUEST_RESPONSE_INFORMATION = 0x19: Byte,
    RESPONSE_INFORMATION = 0x1a: Str,
    SERVER_REFERENCE = 0x1c: Str,
    REASON_STRING = 0x1f: Str,
    RECEIVE_MAXIMUM = 0x21: U16,
    TOPIC_ALIAS_MAXIMUM = 0x22: U16,
    TOPIC_ALIAS = 0x23: U16,
    MAXIMUM_QOS = 0x24: Byte,
    RETAIN_AVAILABLE = 0x25: Byte,
    USER_PROPERTY = 0x26: Pair,
    MAXIMUM_PACKET_SIZE = 0x27: U32,
    WILDCARD_SUBSCRIPTION_AVAILABLE = 0x28: Byte,
    SUBSCRIPTION_IDENTIFIER_AVAILABLE = 0x29: Byte,
    SHARED_SUBSCRIPTION_AVAILABLE = 0x2a: Byte,
}

/// A decoded property value, of the kind the table gives its identifier.
pub(super) enum Value {
    Byte(u8),
    U16(u16),
    U32(u32),
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
        let v = match kind(id).ok_or(DecodeError::InvalidProperty(id))? {
            Kind::Byte => Value::Byte(self.r.u8("byte property")?),
            Kind::U16 => Value::U16(self.r.u16("two byte property")?),
            Kind::U32 => Value::U32(self.r.u32("four byte property")?),
            Kind::Varint => Value::U32(self.r.varint("variable byte integer property")?),
            Kind::Str => Value::Str(self.r.bytestr("string property")?),
            Kind::Bin => Value::Bin(self.r.binary("binary property")?),
            Kind::Pair => Value::Pair(
                self.r.string("user property name")?,
                self.r.string("user property value")?,
            ),
        };
        Ok(Some((id, v)))
    }
}

/// Writes properties into a scratch buffer; `finish` prefixes the length.
#[derive(Default)]
pub(super) struct PropWriter {
    buf: BytesMut,
}

impl PropWriter {
    fn put_bin(&mut self, v: &[u8]) {
        debug_assert!(v.len() <= u16::MAX as usize, "unchecked length {}", v.len());
        self.buf.put_u16(v.len() as u16);
        self.buf.put_slice(v);
    }
    pub(super) fn finish(self) -> BytesMut {
        let mut out = BytesMut::with_capacity(self.buf.len() + 4);
        put_varint(&mut out, self.buf.len());
        out.put_slice(&self.buf);
        out
    }
}

/// A field's value type: read from and written as the table's kind.
trait PropValue: Sized {
    fn from_value(v: Value) -> Option<Self>;
    /// Writes the value (after the identifier) as `kind`.
    fn write(&self, kind: Kind, w: &mut PropWriter);
}

impl PropValue for u8 {
    fn from_value(v: Value) -> Option<Self> {
        match v {
            Value::Byte(b) => Some(b),
            _ => None,
        }
    }
    fn write(&self, _: Kind, w: &mut PropWriter) {
        w.buf.put_u8(*self);
    }
}

impl PropValue for u16 {
    fn from_value(v: Value) -> Option<Self> {
        match v {
            Value::U16(n) => Some(n),
            _ => None,
        }
    }
    fn write(&self, _: Kind, w: &mut PropWriter) {
        w.buf.put_u16(*self);
    }
}

impl PropValue for u32 {
    fn from_value(v: Value) -> Option<Self> {
        match v {
            Value::U32(n) => Some(n),
            _ => None,
        }
    }
    fn write(&self, kind: Kind, w: &mut PropWriter) {
        match kind {
            Kind::Varint => put_varint(&mut w.buf, *self as usize),
            _ => w.buf.put_u32(*self),
        }
    }
}

impl PropValue for String {
    fn from_value(v: Value) -> Option<Self> {
        match v {
            Value::Str(s) => Some(s.as_str().to_owned()),
            _ => None,
        }
    }
    fn write(&self, _: Kind, w: &mut PropWriter) {
        w.put_bin(self.as_bytes());
    }
}

impl PropValue for Bytes {
    fn from_value(v: Value) -> Option<Self> {
        match v {
            Value::Bin(b) => Some(b),
            _ => None,
        }
    }
    fn write(&self, _: Kind, w: &mut PropWriter) {
        w.put_bin(self);
    }
}

impl PropValue for (String, String) {
    fn from_value(v: Value) -> Option<Self> {
        match v {
            Value::Pair(k, v) => Some((k, v)),
            _ => None,
        }
    }
    fn write(&self, _: Kind, w: &mut PropWriter) {
        w.put_bin(self.0.as_bytes());
        w.put_bin(self.1.as_bytes());
    }
}

/// A struct field holding a property: `Option` (at most once, a second
/// one is a protocol error) or `Vec` (any number, in order).
trait PropField {
    fn take(&mut self, id: u8, v: Value) -> Result<(), DecodeError>;
    fn put(&self, id: u8, w: &mut PropWriter);
}

fn write_one<T: PropValue>(v: &T, id: u8, w: &mut PropWriter) {
    let kind = kind(id).expect("identifiers come from the table");
    w.buf.put_u8(id);
    v.write(kind, w);
}

impl<T: PropValue> PropField for Option<T> {
    fn take(&mut self, id: u8, v: Value) -> Result<(), DecodeError> {
        if self.is_some() {
            return Err(DecodeError::InvalidProperty(id));
        }
        *self = Some(T::from_value(v).ok_or(DecodeError::InvalidProperty(id))?);
        Ok(())
    }
    fn put(&self, id: u8, w: &mut PropWriter) {
        if let Some(v) = self {
            write_one(v, id, w);
        }
    }
}

impl<T: PropValue> PropField for Vec<T> {
    fn take(&mut self, id: u8, v: Value) -> Result<(), DecodeError> {
        self.push(T::from_value(v).ok_or(DecodeError::InvalidProperty(id))?);
        Ok(())
    }
    fn put(&self, id: u8, w: &mut PropWriter) {
        for v in self {
            write_one(v, id, w);
        }
    }
}

/// A packet's properties: each field with its property, read by `decode`
/// and written, in this order, by `encode`. `ignore` lists properties
/// accepted and not kept; any other is a protocol error.
macro_rules! packet_properties {
    ($ty:ident { $($field:ident: $id:ident,)* } ignore [$($ignored:ident),*]) => {
        impl $ty {
            pub(super) fn decode(r: &mut PropReader) -> Result<Self, DecodeError> {
                let mut p = Self::default();
                while let Some((prop, v)) = r.next()? {
                    match prop {
                        $(id::$id => PropField::take(&mut p.$field, prop, v)?,)*
                        $(id::$ignored => {})*
                        other => return Err(DecodeError::InvalidProperty(other)),
                    }
                }
                Ok(p)
            }

            pub(super) fn encode(&self, w: &mut PropWriter) {
                $(PropField::put(&self.$field, id::$id, w);)*
            }
        }
    };
}

/// The PUBLISH properties an application sees and sets.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PublishProperties {
    /// 1: the payload is UTF-8 text; 0: unspecified bytes.
    pub payload_format_indicator: Option<u8>,
    /// Seconds after which the broker drops the message undelivered.
    pub message_expiry_interval: Option<u32>,
    /// A number standing for the topic on this connection.
    pub topic_alias: Option<u16>,
    /// Where a request's response should go.
    pub response_topic: Option<String>,
    /// Ties a response to its request.
    pub correlation_data: Option<Bytes>,
    /// Name/value pairs, in order, repeats allowed.
    pub user_properties: Vec<(String, String)>,
    /// The identifiers of the subscriptions that matched (from the broker).
    pub subscription_identifiers: Vec<u32>,
    /// MIME type of the payload.
    pub content_type: Option<String>,
}

impl PublishProperties {
    /// Whether no property is set.
    pub fn is_empty(&self) -> bool {
        *self == PublishProperties::default()
    }
}

packet_properties!(PublishProperties {
    payload_format_indicator: PAYLOAD_FORMAT_INDICATOR,
    message_expiry_interval: MESSAGE_EXPIRY_INTERVAL,
    topic_alias: TOPIC_ALIAS,
    response_topic: RESPONSE_TOPIC,
    correlation_data: CORRELATION_DATA,
    user_properties: USER_PROPERTY,
    subscription_identifiers: SUBSCRIPTION_IDENTIFIER,
    content_type: CONTENT_TYPE,
} ignore []);

/// The properties of a CONNECT's last will (MQTT 5).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WillProperties {
    /// Seconds the broker waits before publishing the will.
    pub will_delay_interval: Option<u32>,
    /// 1: the payload is UTF-8 text; 0: unspecified bytes.
    pub payload_format_indicator: Option<u8>,
    /// Seconds after which the will expires undelivered.
    pub message_expiry_interval: Option<u32>,
    /// MIME type of the payload.
    pub content_type: Option<String>,
    /// Where a response should go.
    pub response_topic: Option<String>,
    /// Ties a response to the will.
    pub correlation_data: Option<Bytes>,
    /// Name/value pairs, in order.
    pub user_properties: Vec<(String, String)>,
}

packet_properties!(WillProperties {
    will_delay_interval: WILL_DELAY_INTERVAL,
    payload_format_indicator: PAYLOAD_FORMAT_INDICATOR,
    message_expiry_interval: MESSAGE_EXPIRY_INTERVAL,
    content_type: CONTENT_TYPE,
    response_topic: RESPONSE_TOPIC,
    correlation_data: CORRELATION_DATA,
    user_properties: USER_PROPERTY,
} ignore []);

#[derive(Clone, Debug, Default, PartialEq)]
pub struct ConnectProperties {
    pub session_expiry_interval: Option<u32>,
    pub receive_maximum: Option<u16>,
    pub maximum_packet_size: Option<u32>,
    pub topic_alias_maximum: Option<u16>,
    pub user_properties: Vec<(String, String)>,
}

packet_properties!(ConnectProperties {
    session_expiry_interval: SESSION_EXPIRY_INTERVAL,
    receive_maximum: RECEIVE_MAXIMUM,
    maximum_packet_size: MAXIMUM_PACKET_SIZE,
    topic_alias_maximum: TOPIC_ALIAS_MAXIMUM,
    user_properties: USER_PROPERTY,
} ignore [REQUEST_PROBLEM_INFORMATION, REQUEST_RESPONSE_INFORMATION]);

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

packet_properties!(ConnAckProperties {
    session_expiry_interval: SESSION_EXPIRY_INTERVAL,
    receive_maximum: RECEIVE_MAXIMUM,
    maximum_qos: MAXIMUM_QOS,
    retain_available: RETAIN_AVAILABLE,
    maximum_packet_size: MAXIMUM_PACKET_SIZE,
    assigned_client_identifier: ASSIGNED_CLIENT_IDENTIFIER,
    topic_alias_maximum: TOPIC_ALIAS_MAXIMUM,
    reason_string: REASON_STRING,
    user_properties: USER_PROPERTY,
    wildcard_subscription_available: WILDCARD_SUBSCRIPTION_AVAILABLE,
    subscription_identifiers_available: SUBSCRIPTION_IDENTIFIER_AVAILABLE,
    shared_subscription_available: SHARED_SUBSCRIPTION_AVAILABLE,
    server_keep_alive: SERVER_KEEP_ALIVE,
} ignore [RESPONSE_INFORMATION, SERVER_REFERENCE, AUTHENTICATION_METHOD, AUTHENTICATION_DATA]);

/// Properties of PUBACK/PUBREC/PUBREL/PUBCOMP, SUBACK and UNSUBACK: only
/// the reason string is kept.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct AckProperties {
    pub(super) reason_string: Option<String>,
}

packet_properties!(AckProperties {
    reason_string: REASON_STRING,
} ignore [USER_PROPERTY]);

/// SUBSCRIBE properties: the subscription identifier.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct SubscribeProperties {
    pub(super) subscription_identifier: Option<u32>,
}

packet_properties!(SubscribeProperties {
    subscription_identifier: SUBSCRIPTION_IDENTIFIER,
} ignore [USER_PROPERTY]);

/// DISCONNECT properties that mqlink keeps.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct DisconnectProperties {
    pub(super) session_expiry_interval: Option<u32>,
    pub(super) reason_string: Option<String>,
}

packet_properties!(DisconnectProperties {
    session_expiry_interval: SESSION_EXPIRY_INTERVAL,
    reason_string: REASON_STRING,
} ignore [USER_PROPERTY, SERVER_REFERENCE]);
