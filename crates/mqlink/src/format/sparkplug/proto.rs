//! The Sparkplug B payload (Eclipse Tahu's `sparkplug_b.proto`), read and
//! written by hand: the messages are small, and a hand-written reader
//! needs neither `protoc` nor a code generator at build time.
//!
//! Reading is total: truncated fields, bad varints, wrong wire types,
//! groups and nesting deeper than [`MAX_DEPTH`] are errors, never panics.
//! Unknown fields are skipped, as protobuf requires.

/// Nested property sets, data sets and templates deeper than this are an
/// error (a hostile payload must not exhaust the stack).
pub const MAX_DEPTH: usize = 16;

/// `Payload`.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Payload {
    pub timestamp: Option<u64>,
    pub metrics: Vec<Metric>,
    pub seq: Option<u64>,
    pub uuid: Option<String>,
    pub body: Option<Vec<u8>>,
}

/// `Payload.Metric`.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Metric {
    pub name: Option<String>,
    pub alias: Option<u64>,
    pub timestamp: Option<u64>,
    pub datatype: Option<u32>,
    pub is_historical: bool,
    pub is_transient: bool,
    pub is_null: bool,
    pub properties: Option<PropertySet>,
    pub value: Option<MetricValue>,
}

/// The `value` oneof of a metric.
#[derive(Debug, Clone, PartialEq)]
pub enum MetricValue {
    Int(u32),
    Long(u64),
    Float(f32),
    Double(f64),
    Boolean(bool),
    String(String),
    Bytes(Vec<u8>),
    DataSet(DataSet),
    Template(Template),
}

/// `Payload.PropertySet`: keys and values in parallel.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct PropertySet {
    pub keys: Vec<String>,
    pub values: Vec<PropertyValue>,
}

/// `Payload.PropertyValue`.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct PropertyValue {
    pub datatype: Option<u32>,
    pub is_null: bool,
    pub value: Option<PropertyKind>,
}

/// The `value` oneof of a property.
#[derive(Debug, Clone, PartialEq)]
pub enum PropertyKind {
    Int(u32),
    Long(u64),
    Float(f32),
    Double(f64),
    Boolean(bool),
    String(String),
    Set(PropertySet),
    Sets(Vec<PropertySet>),
}

/// `Payload.DataSet`.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct DataSet {
    pub columns: Vec<String>,
    pub types: Vec<u32>,
    pub rows: Vec<Vec<Option<Scalar>>>,
}

/// A value of a data set row or a template parameter.
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    Int(u32),
    Long(u64),
    Float(f32),
    Double(f64),
    Boolean(bool),
    String(String),
}

/// `Payload.Template`.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Template {
    pub version: Option<String>,
    pub metrics: Vec<Metric>,
    pub parameters: Vec<(String, Option<u32>, Option<Scalar>)>,
    pub template_ref: Option<String>,
    pub is_definition: bool,
}

/// Why a payload is not a Sparkplug B protobuf.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{what} at byte {at}")]
pub struct ProtoError {
    pub what: &'static str,
    pub at: usize,
}

/// A protobuf field value as read off the wire.
enum Wire<'a> {
    Varint(u64),
    Fixed64(u64),
    Bytes(&'a [u8]),
    Fixed32(u32),
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Where `buf` starts in the payload, for error positions.
    base: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], base: usize) -> Self {
        Reader { buf, pos: 0, base }
    }

    fn fail<T>(&self, what: &'static str) -> Result<T, ProtoError> {
        Err(ProtoError {
            what,
            at: self.base + self.pos,
        })
    }

    fn varint(&mut self) -> Result<u64, ProtoError> {
        let mut v = 0u64;
        for i in 0..10 {
            let Some(&b) = self.buf.get(self.pos) else {
                return self.fail("truncated varint");
            };
            self.pos += 1;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        self.fail("varint longer than 10 bytes")
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ProtoError> {
        match self.pos.checked_add(n).filter(|&e| e <= self.buf.len()) {
            Some(end) => {
                let s = &self.buf[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => self.fail("field runs past the end of the payload"),
        }
    }

    /// The next field, or `None` at the end.
    fn field(&mut self) -> Result<Option<(u32, Wire<'a>, usize)>, ProtoError> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let tag = u32::try_from(key >> 3).or_else(|_| self.fail("field number too large"))?;
        let value = match key & 7 {
            0 => Wire::Varint(self.varint()?),
            1 => Wire::Fixed64(u64::from_le_bytes(
                self.take(8)?.try_into().unwrap_or([0; 8]),
            )),
            2 => {
                let n = self.varint()?;
                let n = usize::try_from(n).or_else(|_| self.fail("length too large"))?;
                Wire::Bytes(self.take(n)?)
            }
            5 => Wire::Fixed32(u32::from_le_bytes(
                self.take(4)?.try_into().unwrap_or([0; 4]),
            )),
            _ => return self.fail("unsupported wire type (groups are not used by Sparkplug)"),
        };
        let start = self.base + self.pos;
        Ok(Some((tag, value, start)))
    }
}

fn varint(w: Wire, at: usize) -> Result<u64, ProtoError> {
    match w {
        Wire::Varint(v) => Ok(v),
        _ => Err(ProtoError {
            what: "expected a varint field",
            at,
        }),
    }
}

fn bytes(w: Wire<'_>, at: usize) -> Result<&[u8], ProtoError> {
    match w {
        Wire::Bytes(b) => Ok(b),
        _ => Err(ProtoError {
            what: "expected a length-delimited field",
            at,
        }),
    }
}

fn string(w: Wire, at: usize) -> Result<String, ProtoError> {
    let b = bytes(w, at)?;
    String::from_utf8(b.to_vec()).map_err(|_| ProtoError {
        what: "string is not UTF-8",
        at,
    })
}

fn float(w: Wire, at: usize) -> Result<f32, ProtoError> {
    match w {
        Wire::Fixed32(v) => Ok(f32::from_bits(v)),
        _ => Err(ProtoError {
            what: "expected a 32-bit field",
            at,
        }),
    }
}

fn double(w: Wire, at: usize) -> Result<f64, ProtoError> {
    match w {
        Wire::Fixed64(v) => Ok(f64::from_bits(v)),
        _ => Err(ProtoError {
            what: "expected a 64-bit field",
            at,
        }),
    }
}

fn u32_of(w: Wire, at: usize) -> Result<u32, ProtoError> {
    // uint32 is a varint; values above 32 bits are truncated as protobuf does.
    Ok(varint(w, at)? as u32)
}

fn nested(depth: usize, at: usize) -> Result<usize, ProtoError> {
    if depth >= MAX_DEPTH {
        return Err(ProtoError {
            what: "nesting too deep",
            at,
        });
    }
    Ok(depth + 1)
}

/// Reads a `Payload`.
pub fn decode(buf: &[u8]) -> Result<Payload, ProtoError> {
    let mut r = Reader::new(buf, 0);
    let mut p = Payload::default();
    while let Some((tag, w, at)) = r.field()? {
        match tag {
            1 => p.timestamp = Some(varint(w, at)?),
            2 => p.metrics.push(metric(bytes(w, at)?, at, 0)?),
            3 => p.seq = Some(varint(w, at)?),
            4 => p.uuid = Some(string(w, at)?),
            5 => p.body = Some(bytes(w, at)?.to_vec()),
            _ => {}
        }
    }
    Ok(p)
}

fn metric(buf: &[u8], base: usize, depth: usize) -> Result<Metric, ProtoError> {
    let depth = nested(depth, base)?;
    let mut r = Reader::new(buf, base);
    let mut m = Metric::default();
    while let Some((tag, w, at)) = r.field()? {
        match tag {
            1 => m.name = Some(string(w, at)?),
            2 => m.alias = Some(varint(w, at)?),
            3 => m.timestamp = Some(varint(w, at)?),
            4 => m.datatype = Some(u32_of(w, at)?),
            5 => m.is_historical = varint(w, at)? != 0,
            6 => m.is_transient = varint(w, at)? != 0,
            7 => m.is_null = varint(w, at)? != 0,
            9 => m.properties = Some(property_set(bytes(w, at)?, at, depth)?),
            10 => m.value = Some(MetricValue::Int(u32_of(w, at)?)),
            11 => m.value = Some(MetricValue::Long(varint(w, at)?)),
            12 => m.value = Some(MetricValue::Float(float(w, at)?)),
            13 => m.value = Some(MetricValue::Double(double(w, at)?)),
            14 => m.value = Some(MetricValue::Boolean(varint(w, at)? != 0)),
            15 => m.value = Some(MetricValue::String(string(w, at)?)),
            16 => m.value = Some(MetricValue::Bytes(bytes(w, at)?.to_vec())),
            17 => m.value = Some(MetricValue::DataSet(data_set(bytes(w, at)?, at, depth)?)),
            18 => m.value = Some(MetricValue::Template(template(bytes(w, at)?, at, depth)?)),
            // 8 metadata, 19 extension: not part of a record.
            _ => {}
        }
    }
    Ok(m)
}

fn property_set(buf: &[u8], base: usize, depth: usize) -> Result<PropertySet, ProtoError> {
    let depth = nested(depth, base)?;
    let mut r = Reader::new(buf, base);
    let mut s = PropertySet::default();
    while let Some((tag, w, at)) = r.field()? {
        match tag {
            1 => s.keys.push(string(w, at)?),
            2 => s.values.push(property_value(bytes(w, at)?, at, depth)?),
            _ => {}
        }
    }
    Ok(s)
}

fn property_value(buf: &[u8], base: usize, depth: usize) -> Result<PropertyValue, ProtoError> {
    let depth = nested(depth, base)?;
    let mut r = Reader::new(buf, base);
    let mut v = PropertyValue::default();
    while let Some((tag, w, at)) = r.field()? {
        v.value = Some(match tag {
            1 => {
                v.datatype = Some(u32_of(w, at)?);
                continue;
            }
            2 => {
                v.is_null = varint(w, at)? != 0;
                continue;
            }
            3 => PropertyKind::Int(u32_of(w, at)?),
            4 => PropertyKind::Long(varint(w, at)?),
            5 => PropertyKind::Float(float(w, at)?),
            6 => PropertyKind::Double(double(w, at)?),
            7 => PropertyKind::Boolean(varint(w, at)? != 0),
            8 => PropertyKind::String(string(w, at)?),
            9 => PropertyKind::Set(property_set(bytes(w, at)?, at, depth)?),
            10 => {
                let mut list = Vec::new();
                let mut l = Reader::new(bytes(w, at)?, at);
                while let Some((tag, w, at)) = l.field()? {
                    if tag == 1 {
                        list.push(property_set(bytes(w, at)?, at, depth)?);
                    }
                }
                PropertyKind::Sets(list)
            }
            _ => continue,
        });
    }
    Ok(v)
}

fn scalar(tag: u32, w: Wire, at: usize) -> Result<Option<Scalar>, ProtoError> {
    Ok(Some(match tag {
        3 => Scalar::Int(u32_of(w, at)?),
        4 => Scalar::Long(varint(w, at)?),
        5 => Scalar::Float(float(w, at)?),
        6 => Scalar::Double(double(w, at)?),
        7 => Scalar::Boolean(varint(w, at)? != 0),
        8 => Scalar::String(string(w, at)?),
        _ => return Ok(None),
    }))
}

fn data_set(buf: &[u8], base: usize, depth: usize) -> Result<DataSet, ProtoError> {
    let depth = nested(depth, base)?;
    let mut r = Reader::new(buf, base);
    let mut d = DataSet::default();
    while let Some((tag, w, at)) = r.field()? {
        match tag {
            2 => d.columns.push(string(w, at)?),
            3 => match w {
                // Packed (proto2 writers may also send them one by one).
                Wire::Bytes(b) => {
                    let mut p = Reader::new(b, at);
                    while p.pos < b.len() {
                        d.types.push(p.varint()? as u32);
                    }
                }
                w => d.types.push(u32_of(w, at)?),
            },
            4 => {
                let mut row = Vec::new();
                let mut rr = Reader::new(bytes(w, at)?, at);
                while let Some((tag, w, at)) = rr.field()? {
                    if tag == 1 {
                        row.push(data_set_value(bytes(w, at)?, at, depth)?);
                    }
                }
                d.rows.push(row);
            }
            _ => {}
        }
    }
    Ok(d)
}

fn data_set_value(buf: &[u8], base: usize, _depth: usize) -> Result<Option<Scalar>, ProtoError> {
    let mut r = Reader::new(buf, base);
    let mut v = None;
    while let Some((tag, w, at)) = r.field()? {
        // DataSetValue numbers its oneof from 1 (int) to 6 (string).
        if let Some(s) = scalar(tag + 2, w, at)? {
            v = Some(s);
        }
    }
    Ok(v)
}

fn template(buf: &[u8], base: usize, depth: usize) -> Result<Template, ProtoError> {
    let depth = nested(depth, base)?;
    let mut r = Reader::new(buf, base);
    let mut t = Template::default();
    while let Some((tag, w, at)) = r.field()? {
        match tag {
            1 => t.version = Some(string(w, at)?),
            2 => t.metrics.push(metric(bytes(w, at)?, at, depth)?),
            3 => {
                let mut p = Reader::new(bytes(w, at)?, at);
                let (mut name, mut ty, mut value) = (String::new(), None, None);
                while let Some((tag, w, at)) = p.field()? {
                    match tag {
                        1 => name = string(w, at)?,
                        2 => ty = Some(u32_of(w, at)?),
                        _ => value = scalar(tag, w, at)?.or(value),
                    }
                }
                t.parameters.push((name, ty, value));
            }
            4 => t.template_ref = Some(string(w, at)?),
            5 => t.is_definition = varint(w, at)? != 0,
            _ => {}
        }
    }
    Ok(t)
}

/// Writes protobuf fields: enough for the payloads mqlink publishes
/// (rebirth requests, and the edge node's births and data).
#[derive(Default)]
pub struct Writer {
    pub buf: Vec<u8>,
}

impl Writer {
    pub fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.buf.push(v as u8 | 0x80);
            v >>= 7;
        }
        self.buf.push(v as u8);
    }
    pub fn uint(&mut self, tag: u32, v: u64) {
        self.varint(u64::from(tag) << 3);
        self.varint(v);
    }
    pub fn bytes(&mut self, tag: u32, b: &[u8]) {
        self.varint((u64::from(tag) << 3) | 2);
        self.varint(b.len() as u64);
        self.buf.extend_from_slice(b);
    }
    pub fn double(&mut self, tag: u32, v: f64) {
        self.varint((u64::from(tag) << 3) | 1);
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_the_writer_wrote() {
        let mut m = Writer::default();
        m.bytes(1, b"Node Control/Rebirth");
        m.uint(2, 7);
        m.uint(4, 11);
        m.uint(14, 1);
        let mut p = Writer::default();
        p.uint(1, 1_700_000_000_000);
        p.bytes(2, &m.buf);
        p.uint(3, 4);
        let got = decode(&p.buf).unwrap();
        assert_eq!(got.timestamp, Some(1_700_000_000_000));
        assert_eq!(got.seq, Some(4));
        assert_eq!(got.metrics[0].name.as_deref(), Some("Node Control/Rebirth"));
        assert_eq!(got.metrics[0].alias, Some(7));
        assert_eq!(got.metrics[0].value, Some(MetricValue::Boolean(true)));
    }

    #[test]
    fn malformed_is_an_error() {
        for bad in [
            &[0x0a, 0x05, 1][..],
            &[0xff; 11],
            &[0x0b],
            &[0x12, 0x02, 0x0a, 0x05],
        ] {
            assert!(decode(bad).is_err(), "{bad:?}");
        }
        // Nesting beyond MAX_DEPTH: property sets inside property values.
        let mut inner = Vec::new();
        for _ in 0..40 {
            let mut v = Writer::default();
            v.bytes(9, &inner);
            let mut s = Writer::default();
            s.bytes(2, &v.buf);
            inner = s.buf;
        }
        let mut m = Writer::default();
        m.bytes(9, &inner);
        let mut p = Writer::default();
        p.bytes(2, &m.buf);
        assert_eq!(decode(&p.buf).unwrap_err().what, "nesting too deep");
    }
}
