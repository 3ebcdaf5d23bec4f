//! Sparkplug B (Eclipse Sparkplug 3.0) as a source format: mqlink as a
//! host application.
//!
//! A message on `spBv1.0/<group>/<TYPE>/<edge>[/<device>]` decodes to
//! [`Value::Rows`], one row per metric ([`COLUMNS`]). Unlike a stateless
//! decoder, [`Host`] keeps per edge node and device the alias tables of
//! their BIRTH certificates, the node's `seq` and `bdSeq`:
//!
//! - DATA metrics sent by alias get their names from the BIRTH; a DATA
//!   before any BIRTH, an unknown alias or a `seq` gap is a decode error
//!   (the source's `bad_data` policy) and queues an NCMD
//!   `Node Control/Rebirth` for the edge node (at most one per
//!   [`HostOptions::rebirth_interval`]); until the new NBIRTH arrives, that
//!   node's DATA stays an error: no row ever carries a guessed name.
//! - NDEATH (with the bdSeq of the current NBIRTH) and DDEATH give one row
//!   per metric the node (and its devices) or the device announced, with
//!   `is_stale = true` and a NULL value.
//! - NCMD, DCMD and `spBv1.0/STATE/…` messages give no rows.
//!
//! The source publishes the queued rebirth requests through its own
//! connection ([`Host::take_requests`]).
//!
//! The other direction, mqlink as an edge node publishing records as
//! births and DATA by alias, is [`edge`].

// The structs mirror Tahu's `sparkplug_b.proto` field for field.
#[allow(missing_docs)] // the fields are the Sparkplug message's
pub mod edge;
#[allow(missing_docs)]
pub mod proto;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use bytes::Bytes;
use serde_json::{json, Value as Json};

use super::{ColumnType, FormatError, Schema, Value};
use proto::{MetricValue, Payload, PropertyKind, PropertySet, Scalar};

/// The Sparkplug B namespace, the first level of every topic.
pub const NAMESPACE: &str = "spBv1.0";

/// The columns of a row, in order (the schema of `create_table = true`).
pub const COLUMNS: &[(&str, ColumnType)] = &[
    ("group_id", ColumnType::Text),
    ("edge_node_id", ColumnType::Text),
    ("device_id", ColumnType::Text),
    ("message_type", ColumnType::Text),
    ("name", ColumnType::Text),
    ("alias", ColumnType::BigInt),
    ("timestamp", ColumnType::Timestamp),
    ("datatype", ColumnType::Text),
    ("value", ColumnType::Json),
    ("int_value", ColumnType::BigInt),
    ("double_value", ColumnType::Double),
    ("boolean_value", ColumnType::Boolean),
    ("string_value", ColumnType::Text),
    ("bytes_value", ColumnType::Bytea),
    ("datetime_value", ColumnType::Timestamp),
    ("is_historical", ColumnType::Boolean),
    ("is_transient", ColumnType::Boolean),
    ("is_null", ColumnType::Boolean),
    ("is_stale", ColumnType::Boolean),
    ("seq", ColumnType::BigInt),
    ("bdseq", ColumnType::BigInt),
    ("properties", ColumnType::Json),
];

/// The schema of the rows ([`COLUMNS`]).
pub fn schema() -> Schema {
    Schema::new(COLUMNS.iter().map(|(n, t)| (*n, *t)))
}

fn names() -> &'static [Arc<str>] {
    static N: OnceLock<Vec<Arc<str>>> = OnceLock::new();
    N.get_or_init(|| COLUMNS.iter().map(|(n, _)| Arc::from(*n)).collect())
}

/// Sparkplug B data type names, by number (Tahu's `DataType`).
const DATATYPES: &[&str] = &[
    "Unknown",
    "Int8",
    "Int16",
    "Int32",
    "Int64",
    "UInt8",
    "UInt16",
    "UInt32",
    "UInt64",
    "Float",
    "Double",
    "Boolean",
    "String",
    "DateTime",
    "Text",
    "UUID",
    "DataSet",
    "Bytes",
    "File",
    "Template",
    "PropertySet",
    "PropertySetList",
    "Int8Array",
    "Int16Array",
    "Int32Array",
    "Int64Array",
    "UInt8Array",
    "UInt16Array",
    "UInt32Array",
    "UInt64Array",
    "FloatArray",
    "DoubleArray",
    "BooleanArray",
    "StringArray",
    "DateTimeArray",
];

/// The name of data type `n`.
pub fn datatype_name(n: u32) -> Option<&'static str> {
    DATATYPES.get(n as usize).copied()
}

/// The message types of the topic's third level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)] // the topic levels' names say it
pub enum MessageType {
    NBirth,
    NData,
    NDeath,
    NCmd,
    DBirth,
    DData,
    DDeath,
    DCmd,
}

impl MessageType {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "NBIRTH" => Self::NBirth,
            "NDATA" => Self::NData,
            "NDEATH" => Self::NDeath,
            "NCMD" => Self::NCmd,
            "DBIRTH" => Self::DBirth,
            "DDATA" => Self::DData,
            "DDEATH" => Self::DDeath,
            "DCMD" => Self::DCmd,
            _ => return None,
        })
    }

    /// The topic level.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NBirth => "NBIRTH",
            Self::NData => "NDATA",
            Self::NDeath => "NDEATH",
            Self::NCmd => "NCMD",
            Self::DBirth => "DBIRTH",
            Self::DData => "DDATA",
            Self::DDeath => "DDEATH",
            Self::DCmd => "DCMD",
        }
    }

    fn is_device(self) -> bool {
        matches!(self, Self::DBirth | Self::DData | Self::DDeath | Self::DCmd)
    }
}

/// A Sparkplug B topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Topic<'a> {
    /// `spBv1.0/<group>/<TYPE>/<edge>[/<device>]`.
    Message {
        /// The group id.
        group: &'a str,
        /// The message type.
        kind: MessageType,
        /// The edge node id.
        edge: &'a str,
        /// The device id (device messages).
        device: Option<&'a str>,
    },
    /// `spBv1.0/STATE/<host_id>`: a host application's state.
    State(&'a str),
}

/// Parses a topic; `None` when it is not a Sparkplug B topic.
pub fn parse_topic(topic: &str) -> Option<Topic<'_>> {
    let mut levels = topic.split('/');
    if levels.next()? != NAMESPACE {
        return None;
    }
    let group = levels.next().filter(|s| !s.is_empty())?;
    let second = levels.next()?;
    if group == "STATE" {
        return (levels.next().is_none() && !second.is_empty()).then_some(Topic::State(second));
    }
    let kind = MessageType::parse(second)?;
    let edge = levels.next().filter(|s| !s.is_empty())?;
    let device = levels.next();
    if levels.next().is_some()
        || device.is_some_and(str::is_empty)
        || device.is_some() != kind.is_device()
    {
        return None;
    }
    Some(Topic::Message {
        group,
        kind,
        edge,
        device,
    })
}

/// How the host application behaves.
#[derive(Clone, Debug, PartialEq)]
pub struct HostOptions {
    /// Rebirth requests to one edge node at most this often [default: 5 s].
    pub rebirth_interval: Duration,
    /// The primary host id: the source publishes `spBv1.0/STATE/<host_id>`
    /// online (retained) on each connection, with the offline message as
    /// its will [default: none].
    pub host_id: Option<String>,
}

impl Default for HostOptions {
    fn default() -> Self {
        HostOptions {
            rebirth_interval: Duration::from_secs(5),
            host_id: None,
        }
    }
}

/// The host application's state: what every edge node and device announced.
#[derive(Debug, Default)]
pub struct Host {
    options: HostOptions,
    state: Mutex<State>,
}

impl PartialEq for Host {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other)
    }
}

#[derive(Debug, Default)]
struct State {
    nodes: HashMap<(String, String), Node>,
    /// Rebirth requests not yet published: (topic, payload).
    requests: Vec<(String, Bytes)>,
}

#[derive(Debug, Default)]
struct Node {
    /// An NBIRTH arrived and no NDEATH or gap since.
    born: bool,
    seq: u64,
    bdseq: Option<u64>,
    metrics: Table,
    devices: HashMap<String, Table>,
    last_rebirth: Option<Instant>,
}

/// The metrics of one BIRTH: name and data type, by alias and by name.
#[derive(Debug, Default)]
struct Table {
    metrics: Vec<(Arc<str>, u32, Option<u64>)>,
    by_alias: HashMap<u64, usize>,
    by_name: HashMap<Arc<str>, usize>,
}

impl Table {
    fn add(&mut self, name: &str, datatype: u32, alias: Option<u64>) {
        let name: Arc<str> = Arc::from(name);
        let i = self.metrics.len();
        self.metrics.push((name.clone(), datatype, alias));
        if let Some(a) = alias {
            self.by_alias.insert(a, i);
        }
        self.by_name.insert(name, i);
    }
}

/// What one message is, in the terms a row needs.
struct Context<'a> {
    group: &'a str,
    edge: &'a str,
    device: Option<&'a str>,
    kind: MessageType,
    seq: Option<u64>,
    bdseq: Option<u64>,
    timestamp: Option<u64>,
}

fn bad(why: impl Into<String>) -> FormatError {
    FormatError::Sparkplug(why.into())
}

impl Host {
    /// A host application with these options.
    pub fn new(options: HostOptions) -> Self {
        Host {
            options,
            state: Mutex::new(State::default()),
        }
    }

    /// The options.
    pub fn options(&self) -> &HostOptions {
        &self.options
    }

    /// Rebirth requests to publish (NCMD topic, payload), oldest first.
    pub fn take_requests(&self) -> Vec<(String, Bytes)> {
        std::mem::take(&mut self.lock().requests)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Decodes one message into rows, updating the state; never panics.
    pub fn decode(&self, topic: &str, payload: &[u8]) -> Result<Value, FormatError> {
        self.decode_at(topic, payload, Instant::now())
    }

    /// [`decode`](Self::decode) at a given time (rebirth pacing).
    pub fn decode_at(
        &self,
        topic: &str,
        payload: &[u8],
        now: Instant,
    ) -> Result<Value, FormatError> {
        let Some(t) = parse_topic(topic) else {
            return Err(bad(format!(
                "topic {topic:?} is not spBv1.0/<group>/<TYPE>/<edge node>[/<device>]"
            )));
        };
        let Topic::Message {
            group,
            kind,
            edge,
            device,
        } = t
        else {
            return Ok(Value::Rows(Vec::new()));
        };
        if matches!(kind, MessageType::NCmd | MessageType::DCmd) {
            return Ok(Value::Rows(Vec::new()));
        }
        let p =
            proto::decode(payload).map_err(|e| bad(format!("not a Sparkplug B payload: {e}")))?;
        let mut guard = self.lock();
        let state = &mut *guard;
        let key = (group.to_owned(), edge.to_owned());
        let node = state.nodes.entry(key).or_default();
        let cx = Context {
            group,
            edge,
            device,
            kind,
            seq: p.seq,
            bdseq: node.bdseq,
            timestamp: p.timestamp,
        };
        let result = match kind {
            MessageType::NBirth => birth_node(node, &p, cx),
            MessageType::NDeath => Ok(death_node(node, &p, cx)),
            _ => device_or_data(node, &p, cx),
        };
        match result {
            Err(Rebirth(why)) => {
                node.born = false;
                let due = node.last_rebirth.is_none_or(|t| {
                    now.saturating_duration_since(t) >= self.options.rebirth_interval
                });
                if due {
                    node.last_rebirth = Some(now);
                    state.requests.push(rebirth_request(group, edge));
                }
                Err(bad(format!(
                    "{why}; rebirth requested from {group}/{edge}, its messages are refused until its NBIRTH"
                )))
            }
            Ok(rows) => Ok(Value::Rows(rows)),
        }
    }
}

/// A message that cannot be read without a new BIRTH.
struct Rebirth(String);

fn birth_node(node: &mut Node, p: &Payload, mut cx: Context) -> Result<Vec<Value>, Rebirth> {
    let mut table = Table::default();
    let mut bdseq = None;
    for m in &p.metrics {
        let Some(name) = m.name.as_deref() else {
            return Err(Rebirth("NBIRTH metric without a name".into()));
        };
        if name == "bdSeq" {
            bdseq = long(m.value.as_ref());
        }
        table.add(name, m.datatype.unwrap_or(0), m.alias);
    }
    *node = Node {
        born: true,
        seq: p.seq.unwrap_or(0),
        bdseq,
        metrics: table,
        devices: HashMap::new(),
        last_rebirth: node.last_rebirth,
    };
    cx.bdseq = bdseq;
    Ok(rows(&node.metrics, p, &cx))
}

fn death_node(node: &mut Node, p: &Payload, cx: Context) -> Vec<Value> {
    let bdseq = p
        .metrics
        .iter()
        .find(|m| m.name.as_deref() == Some("bdSeq"))
        .and_then(|m| long(m.value.as_ref()));
    // A will of an earlier session (its bdSeq is not the current NBIRTH's)
    // says nothing about the node now.
    if !node.born || (bdseq.is_some() && node.bdseq.is_some() && bdseq != node.bdseq) {
        return Vec::new();
    }
    node.born = false;
    let mut out = stale(&node.metrics, &cx);
    for (device, table) in &node.devices {
        out.extend(stale(
            table,
            &Context {
                device: Some(device),
                ..cx
            },
        ));
    }
    node.devices.clear();
    out
}

/// DBIRTH, DDEATH, NDATA and DDATA: the node must be born and `seq` next.
fn device_or_data(node: &mut Node, p: &Payload, cx: Context) -> Result<Vec<Value>, Rebirth> {
    let kind = cx.kind.as_str();
    if !node.born {
        return Err(Rebirth(format!("{kind} before the edge node's NBIRTH")));
    }
    let expected = (node.seq + 1) % 256;
    match p.seq {
        Some(s) if s == expected => node.seq = s,
        Some(s) => {
            return Err(Rebirth(format!(
                "seq {s} where {expected} was next (a message was lost)"
            )))
        }
        None => return Err(Rebirth(format!("{kind} without seq"))),
    }
    let device = cx.device.unwrap_or("");
    match cx.kind {
        MessageType::DBirth => {
            let mut table = Table::default();
            for m in &p.metrics {
                let Some(name) = m.name.as_deref() else {
                    return Err(Rebirth("DBIRTH metric without a name".into()));
                };
                table.add(name, m.datatype.unwrap_or(0), m.alias);
            }
            let out = rows(&table, p, &cx);
            node.devices.insert(device.to_owned(), table);
            Ok(out)
        }
        MessageType::DDeath => Ok(node
            .devices
            .remove(device)
            .map(|t| stale(&t, &cx))
            .unwrap_or_default()),
        MessageType::DData => match node.devices.get(device) {
            Some(t) => resolve(t, p, &cx),
            None => Err(Rebirth(format!(
                "DDATA from device {device:?} before its DBIRTH"
            ))),
        },
        _ => resolve(&node.metrics, p, &cx),
    }
}

/// Rows of a DATA message, every metric named from the BIRTH's table.
fn resolve(table: &Table, p: &Payload, cx: &Context) -> Result<Vec<Value>, Rebirth> {
    let mut out = Vec::with_capacity(p.metrics.len());
    for m in &p.metrics {
        let i = match (&m.name, m.alias) {
            (Some(n), _) => table.by_name.get(n.as_str()),
            (None, Some(a)) => table.by_alias.get(&a),
            (None, None) => return Err(Rebirth("metric with neither name nor alias".into())),
        };
        let Some(&i) = i else {
            let what = match (&m.name, m.alias) {
                (Some(n), _) => format!("metric {n:?}"),
                (None, a) => format!("alias {}", a.unwrap_or(0)),
            };
            return Err(Rebirth(format!("{what} is not in the BIRTH")));
        };
        let (name, datatype, alias) = &table.metrics[i];
        out.push(row(
            cx,
            name,
            m.alias.or(*alias),
            m.datatype.unwrap_or(*datatype),
            m,
            p,
        ));
    }
    Ok(out)
}

/// Rows of a BIRTH: its metrics as announced.
fn rows(table: &Table, p: &Payload, cx: &Context) -> Vec<Value> {
    p.metrics
        .iter()
        .zip(&table.metrics)
        .map(|(m, (name, dt, alias))| row(cx, name, *alias, *dt, m, p))
        .collect()
}

/// Rows marking every metric of `table` stale (a DEATH).
fn stale(table: &Table, cx: &Context) -> Vec<Value> {
    table
        .metrics
        .iter()
        .map(|(name, dt, alias)| {
            let m = proto::Metric {
                is_null: true,
                ..Default::default()
            };
            let mut r = row(cx, name, *alias, *dt, &m, &Payload::default());
            if let Value::Row(cols) = &mut r {
                cols[18].1 = Value::Boolean(true);
                cols[6].1 = ms(cx.timestamp);
            }
            r
        })
        .collect()
}

fn ms(t: Option<u64>) -> Value {
    t.and_then(|t| i64::try_from(t).ok())
        .and_then(|t| t.checked_mul(1000))
        .map_or(Value::Null, Value::Timestamp)
}

fn opt_text(s: Option<&str>) -> Value {
    s.map_or(Value::Null, |s| Value::Text(s.to_owned()))
}

fn opt_int(n: Option<u64>) -> Value {
    n.and_then(|n| i64::try_from(n).ok())
        .map_or(Value::Null, Value::BigInt)
}

fn long(v: Option<&MetricValue>) -> Option<u64> {
    match v? {
        MetricValue::Int(n) => Some(u64::from(*n)),
        MetricValue::Long(n) => Some(*n),
        _ => None,
    }
}

fn row(
    cx: &Context,
    name: &str,
    alias: Option<u64>,
    dt: u32,
    m: &proto::Metric,
    p: &Payload,
) -> Value {
    let typed = if m.is_null {
        Typed::default()
    } else {
        typed(dt, m.value.as_ref())
    };
    let values = [
        opt_text(Some(cx.group)),
        opt_text(Some(cx.edge)),
        opt_text(cx.device),
        Value::Text(cx.kind.as_str().to_owned()),
        Value::Text(name.to_owned()),
        opt_int(alias),
        ms(m.timestamp.or(p.timestamp)),
        opt_text(datatype_name(dt)),
        typed.json.map_or(Value::Null, Value::Json),
        typed.int.map_or(Value::Null, Value::BigInt),
        typed.double.map_or(Value::Null, Value::Double),
        typed.boolean.map_or(Value::Null, Value::Boolean),
        typed.text.map_or(Value::Null, Value::Text),
        typed
            .bytes
            .map_or(Value::Null, |b| Value::Bytes(Bytes::from(b))),
        typed.datetime.map_or(Value::Null, Value::Timestamp),
        Value::Boolean(m.is_historical),
        Value::Boolean(m.is_transient),
        Value::Boolean(m.is_null || m.value.is_none()),
        Value::Boolean(false),
        opt_int(cx.seq),
        opt_int(cx.bdseq),
        m.properties
            .as_ref()
            .map_or(Value::Null, |s| Value::Json(properties(s))),
    ];
    Value::Row(names().iter().cloned().zip(values).collect())
}

/// A metric's value in each of the typed columns it fills.
#[derive(Default)]
struct Typed {
    json: Option<Json>,
    int: Option<i64>,
    double: Option<f64>,
    boolean: Option<bool>,
    text: Option<String>,
    bytes: Option<Vec<u8>>,
    datetime: Option<i64>,
}

fn typed(dt: u32, v: Option<&MetricValue>) -> Typed {
    let Some(v) = v else {
        return Typed::default();
    };
    let int = |n: i64| Typed {
        json: Some(json!(n)),
        int: Some(n),
        ..Default::default()
    };
    match (dt, v) {
        // Signed integers travel as two's complement in uint32/uint64.
        (1, MetricValue::Int(n)) => int(i64::from(*n as i8)),
        (2, MetricValue::Int(n)) => int(i64::from(*n as i16)),
        (3, MetricValue::Int(n)) => int(i64::from(*n as i32)),
        (4, MetricValue::Long(n)) => int(*n as i64),
        (13, MetricValue::Long(n)) => {
            let us = i64::try_from(*n).ok().and_then(|n| n.checked_mul(1000));
            Typed {
                json: Some(us.map_or(json!(n), |us| json!(super::format_rfc3339_micros(us)))),
                datetime: us,
                ..Default::default()
            }
        }
        (_, MetricValue::Int(n)) => int(i64::from(*n)),
        (_, MetricValue::Long(n)) => match i64::try_from(*n) {
            Ok(i) => int(i),
            Err(_) => Typed {
                json: Some(json!(n)),
                ..Default::default()
            },
        },
        (_, MetricValue::Float(f)) => double(f64::from(*f)),
        (_, MetricValue::Double(f)) => double(*f),
        (_, MetricValue::Boolean(b)) => Typed {
            json: Some(json!(b)),
            boolean: Some(*b),
            ..Default::default()
        },
        (_, MetricValue::String(s)) => Typed {
            json: Some(json!(s)),
            text: Some(s.clone()),
            ..Default::default()
        },
        (22..=34, MetricValue::Bytes(b)) => Typed {
            json: array(dt, b),
            ..Default::default()
        },
        (_, MetricValue::Bytes(b)) => Typed {
            json: Some(json!(base64::engine::general_purpose::STANDARD.encode(b))),
            bytes: Some(b.clone()),
            ..Default::default()
        },
        (_, MetricValue::DataSet(d)) => Typed {
            json: Some(data_set(d)),
            ..Default::default()
        },
        (_, MetricValue::Template(t)) => Typed {
            json: Some(template(t)),
            ..Default::default()
        },
    }
}

fn double(f: f64) -> Typed {
    Typed {
        // NaN and infinities have no JSON number: the JSON value is null.
        json: serde_json::Number::from_f64(f).map(Json::Number),
        double: Some(f),
        ..Default::default()
    }
}

/// A Sparkplug array (little-endian, in `bytes_value`) as a JSON array;
/// `None` when the bytes do not fit the type.
fn array(dt: u32, b: &[u8]) -> Option<Json> {
    fn each<const N: usize>(b: &[u8], f: impl Fn([u8; N]) -> Json) -> Option<Json> {
        if b.len() % N != 0 {
            return None;
        }
        Some(Json::Array(
            b.chunks_exact(N)
                .map(|c| f(c.try_into().unwrap_or([0; N])))
                .collect(),
        ))
    }
    let num = |f: f64| serde_json::Number::from_f64(f).map_or(Json::Null, Json::Number);
    match dt {
        22 => each(b, |c: [u8; 1]| json!(i8::from_le_bytes(c))),
        23 => each(b, |c: [u8; 2]| json!(i16::from_le_bytes(c))),
        24 => each(b, |c: [u8; 4]| json!(i32::from_le_bytes(c))),
        25 => each(b, |c: [u8; 8]| json!(i64::from_le_bytes(c))),
        26 => each(b, |c: [u8; 1]| json!(c[0])),
        27 => each(b, |c: [u8; 2]| json!(u16::from_le_bytes(c))),
        28 => each(b, |c: [u8; 4]| json!(u32::from_le_bytes(c))),
        29 => each(b, |c: [u8; 8]| json!(u64::from_le_bytes(c))),
        30 => each(b, |c: [u8; 4]| num(f64::from(f32::from_le_bytes(c)))),
        31 => each(b, |c: [u8; 8]| num(f64::from_le_bytes(c))),
        32 => {
            // A 4-byte count, then the bits, most significant first.
            let n = u32::from_le_bytes(b.get(..4)?.try_into().ok()?) as usize;
            let bits = &b[4..];
            (n <= bits.len() * 8).then(|| {
                Json::Array(
                    (0..n)
                        .map(|i| json!(bits[i / 8] & (0x80 >> (i % 8)) != 0))
                        .collect(),
                )
            })
        }
        33 => {
            let body = b.strip_suffix(&[0])?;
            Some(Json::Array(
                body.split(|&c| c == 0)
                    .map(|s| json!(String::from_utf8_lossy(s)))
                    .collect(),
            ))
        }
        34 => each(b, |c: [u8; 8]| {
            let ms = i64::from_le_bytes(c);
            ms.checked_mul(1000)
                .map_or(json!(ms), |us| json!(super::format_rfc3339_micros(us)))
        }),
        _ => None,
    }
}

fn scalar(s: &Scalar) -> Json {
    match s {
        Scalar::Int(n) => json!(n),
        Scalar::Long(n) => json!(n),
        Scalar::Float(f) => {
            serde_json::Number::from_f64(f64::from(*f)).map_or(Json::Null, Json::Number)
        }
        Scalar::Double(f) => serde_json::Number::from_f64(*f).map_or(Json::Null, Json::Number),
        Scalar::Boolean(b) => json!(b),
        Scalar::String(s) => json!(s),
    }
}

fn data_set(d: &proto::DataSet) -> Json {
    json!({
        "columns": d.columns,
        "types": d.types.iter().map(|t| datatype_name(*t).unwrap_or("Unknown")).collect::<Vec<_>>(),
        "rows": d.rows.iter().map(|r| r.iter().map(|v| v.as_ref().map_or(Json::Null, scalar)).collect::<Vec<_>>()).collect::<Vec<_>>(),
    })
}

fn template(t: &proto::Template) -> Json {
    let metrics: Vec<Json> = t
        .metrics
        .iter()
        .map(|m| {
            let dt = m.datatype.unwrap_or(0);
            let value = if m.is_null {
                None
            } else {
                typed(dt, m.value.as_ref()).json
            };
            json!({"name": m.name, "datatype": datatype_name(dt), "value": value})
        })
        .collect();
    let parameters: serde_json::Map<String, Json> = t
        .parameters
        .iter()
        .map(|(n, _, v)| (n.clone(), v.as_ref().map_or(Json::Null, scalar)))
        .collect();
    json!({
        "template_ref": t.template_ref,
        "version": t.version,
        "is_definition": t.is_definition,
        "parameters": parameters,
        "metrics": metrics,
    })
}

/// A property set as a JSON object (`{"engUnit": "°C", …}`).
fn properties(s: &PropertySet) -> Json {
    let map = s
        .keys
        .iter()
        .zip(&s.values)
        .map(|(k, v)| {
            let value = match (&v.value, v.is_null) {
                (_, true) | (None, _) => Json::Null,
                (Some(PropertyKind::Int(n)), _) => json!(n),
                (Some(PropertyKind::Long(n)), _) => json!(n),
                (Some(PropertyKind::Float(f)), _) => scalar(&Scalar::Float(*f)),
                (Some(PropertyKind::Double(f)), _) => scalar(&Scalar::Double(*f)),
                (Some(PropertyKind::Boolean(b)), _) => json!(b),
                (Some(PropertyKind::String(s)), _) => json!(s),
                (Some(PropertyKind::Set(s)), _) => properties(s),
                (Some(PropertyKind::Sets(l)), _) => Json::Array(l.iter().map(properties).collect()),
            };
            (k.clone(), value)
        })
        .collect();
    Json::Object(map)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The NCMD asking an edge node for a rebirth: `Node Control/Rebirth` = true.
pub fn rebirth_request(group: &str, edge: &str) -> (String, Bytes) {
    let ts = now_ms();
    let mut m = proto::Writer::default();
    m.bytes(1, b"Node Control/Rebirth");
    m.uint(3, ts);
    m.uint(4, 11);
    m.uint(14, 1);
    let mut p = proto::Writer::default();
    p.uint(1, ts);
    p.bytes(2, &m.buf);
    (
        format!("{NAMESPACE}/{group}/NCMD/{edge}"),
        Bytes::from(p.buf),
    )
}

/// The primary host's STATE topic and its online and offline payloads
/// (Sparkplug 3.0: JSON, the same timestamp in both).
pub fn host_state(host_id: &str) -> (String, Bytes, Bytes) {
    let ts = now_ms();
    let payload =
        |online: bool| Bytes::from(json!({"online": online, "timestamp": ts}).to_string());
    (
        format!("{NAMESPACE}/STATE/{host_id}"),
        payload(true),
        payload(false),
    )
}

#[cfg(test)]
mod tests;
