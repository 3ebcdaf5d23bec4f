//! Sparkplug B as a sink format: mqlink as an edge node. I/O-free:
//! [`EdgeNode`] turns records into the messages to publish, in order.
//!
//! - A record is one DATA message: its fields are metrics, named by the
//!   field (nested objects flattened with `/`, Sparkplug's folders), for
//!   the node (`NDATA`) or one of its devices (`DDATA`).
//! - Metrics are announced in BIRTH certificates with an alias each and a
//!   datatype taken from their first value (integer → Int64, number →
//!   Double, boolean → Boolean, text → String, anything else → its JSON
//!   text as String); DATA sends them by alias only.
//! - A record that brings a metric or a device not yet born makes the node
//!   born again: `NBIRTH` (with `bdSeq` and `Node Control/Rebirth`) and a
//!   `DBIRTH` per device, with the last value of every metric, then the
//!   DATA. So does [`EdgeNode::rebirth`] (an NCMD `Node Control/Rebirth`,
//!   or a new connection).
//! - `seq` is 0 in NBIRTH and counts every later message modulo 256.
//! - [`EdgeNode::death`] is the `NDEATH` to register as the connection's
//!   will, with the `bdSeq` of the NBIRTHs that follow it. A client that
//!   reconnects registers [`EdgeNode::will_per_connection`] instead: each
//!   connection's NDEATH counts `bdSeq` up by one (Sparkplug 3.0), and the
//!   births after it carry the same.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value as Json;

use super::proto::Writer;
use super::{now_ms, NAMESPACE};

/// Sparkplug datatypes mqlink publishes.
const INT64: u32 = 4;
const UINT64: u32 = 8;
const DOUBLE: u32 = 10;
const BOOLEAN: u32 = 11;
const STRING: u32 = 12;

/// One message to publish: topic and protobuf payload.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    pub topic: String,
    pub payload: Bytes,
}

/// A value that does not fit the datatype its metric was born with.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("metric {name:?} was born as {born}; {value} is not one (a new datatype needs a new metric name)")]
pub struct TypeChanged {
    pub name: String,
    pub born: &'static str,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq)]
enum Scalar {
    Long(u64),
    Double(f64),
    Boolean(bool),
    String(String),
    Null,
}

#[derive(Debug, Clone)]
struct Born {
    alias: u64,
    datatype: u32,
    last: Scalar,
}

/// The metrics of the node (`None`) or of one device.
type Metrics = BTreeMap<String, Born>;

/// The state of one Sparkplug edge node and its devices.
#[derive(Debug)]
pub struct EdgeNode {
    group: String,
    edge: String,
    /// The `bdSeq` of the current connection's will (shared with
    /// [`EdgeNode::will_per_connection`]).
    bdseq: Arc<AtomicU8>,
    /// The `seq` of the next message.
    seq: u8,
    born: bool,
    next_alias: u64,
    node: Metrics,
    devices: BTreeMap<String, Metrics>,
}

impl EdgeNode {
    /// `bdseq`: the birth/death sequence of the first connection (see the
    /// module docs).
    pub fn new(group: &str, edge: &str, bdseq: u8) -> EdgeNode {
        EdgeNode {
            group: group.into(),
            edge: edge.into(),
            bdseq: Arc::new(AtomicU8::new(bdseq)),
            seq: 0,
            born: false,
            next_alias: 1,
            node: Metrics::new(),
            devices: BTreeMap::new(),
        }
    }

    /// The topic of a message type for the node or a device.
    fn topic(&self, kind: &str, device: Option<&str>) -> String {
        let (g, e) = (&self.group, &self.edge);
        match device {
            Some(d) => format!("{NAMESPACE}/{g}/{kind}/{e}/{d}"),
            None => format!("{NAMESPACE}/{g}/{kind}/{e}"),
        }
    }

    /// The NCMD topic this node answers rebirth requests on.
    pub fn command_topic(&self) -> String {
        self.topic("NCMD", None)
    }

    /// The NDEATH, to register as the will of the node's connection.
    pub fn death(&self) -> Outgoing {
        Outgoing {
            topic: self.topic("NDEATH", None),
            payload: death_payload(self.bdseq.load(Ordering::SeqCst)),
        }
    }

    /// The NDEATH payload of each new connection, for
    /// [`WillPayload`](crate::WillPayload) (the topic is [`death`](Self::death)'s):
    /// the first call gives the `bdseq` the node was made with, each later
    /// one the next (modulo 256); the births that follow carry it.
    pub fn will_per_connection(&self) -> impl Fn() -> Bytes + Send + Sync + 'static {
        let current = self.bdseq.clone();
        let first = current.load(Ordering::SeqCst);
        let calls = AtomicU8::new(0);
        move || {
            let n = first.wrapping_add(calls.fetch_add(1, Ordering::SeqCst));
            current.store(n, Ordering::SeqCst);
            death_payload(n)
        }
    }

    /// NBIRTH and every DBIRTH, with the last value of each metric; `seq`
    /// starts again at 0.
    pub fn rebirth(&mut self) -> Vec<Outgoing> {
        let ts = now_ms();
        self.seq = 0;
        self.born = true;
        let mut metrics = vec![bdseq_metric(self.bdseq.load(Ordering::SeqCst)), {
            let mut m = Writer::default();
            m.bytes(1, b"Node Control/Rebirth");
            m.uint(3, ts);
            m.uint(4, u64::from(BOOLEAN));
            m.uint(14, 0);
            m.buf
        }];
        metrics.extend(
            self.node
                .iter()
                .map(|(n, b)| metric(Some(n), b, &b.last, ts)),
        );
        let mut out = vec![self.message("NBIRTH", None, metrics, ts)];
        let devices: Vec<String> = self.devices.keys().cloned().collect();
        for d in devices {
            let metrics = self.devices[&d]
                .iter()
                .map(|(n, b)| metric(Some(n), b, &b.last, ts))
                .collect();
            out.push(self.message("DBIRTH", Some(&d), metrics, ts));
        }
        out
    }

    /// The messages for one record: a rebirth first when the record brings
    /// a metric or a device not yet born, then its NDATA or DDATA.
    /// `timestamp`: the record's time in ms since the epoch, if it has one.
    pub fn data(
        &mut self,
        device: Option<&str>,
        fields: &serde_json::Map<String, Json>,
        timestamp: Option<u64>,
    ) -> Result<Vec<Outgoing>, TypeChanged> {
        let mut values = Vec::new();
        flatten("", fields, &mut values);
        // Check every value before changing any state: a refused record
        // leaves the node as it was.
        let known = match device {
            Some(d) => self.devices.get(d),
            None => Some(&self.node),
        };
        let mut new = device.is_some() && known.is_none();
        let mut scalars = Vec::with_capacity(values.len());
        for (name, v) in values {
            let born = known.and_then(|m| m.get(&name));
            let s = scalar(&name, v, born.map(|b| b.datatype))?;
            new |= born.is_none();
            scalars.push((name, s));
        }
        let ts = timestamp.unwrap_or_else(now_ms);
        let next_alias = &mut self.next_alias;
        let metrics = match device {
            Some(d) => self.devices.entry(d.to_string()).or_default(),
            None => &mut self.node,
        };
        for (name, s) in &scalars {
            // Looked up before inserting: a name is cloned only when born.
            if let Some(b) = metrics.get_mut(name) {
                b.last = s.clone();
                continue;
            }
            let b = Born {
                alias: *next_alias,
                datatype: datatype_of(s),
                last: s.clone(),
            };
            *next_alias += 1;
            metrics.insert(name.clone(), b);
        }
        let encoded = scalars
            .iter()
            .map(|(name, s)| metric(None, &metrics[name], s, ts))
            .collect();
        let mut out = if new || !self.born {
            self.rebirth()
        } else {
            Vec::new()
        };
        let kind = if device.is_some() { "DDATA" } else { "NDATA" };
        out.push(self.message(kind, device, encoded, ts));
        Ok(out)
    }

    /// Whether an NCMD payload asks for a rebirth (`Node Control/Rebirth`
    /// = true).
    pub fn is_rebirth_request(payload: &[u8]) -> bool {
        super::proto::decode(payload).is_ok_and(|p| {
            p.metrics.iter().any(|m| {
                m.name.as_deref() == Some("Node Control/Rebirth")
                    && m.value == Some(super::proto::MetricValue::Boolean(true))
            })
        })
    }

    fn message(
        &mut self,
        kind: &str,
        device: Option<&str>,
        metrics: Vec<Vec<u8>>,
        ts: u64,
    ) -> Outgoing {
        let mut p = Writer::default();
        p.uint(1, ts);
        for m in &metrics {
            p.bytes(2, m);
        }
        p.uint(3, u64::from(self.seq));
        self.seq = self.seq.wrapping_add(1);
        Outgoing {
            topic: self.topic(kind, device),
            payload: Bytes::from(p.buf),
        }
    }
}

/// A record's time as ms since the epoch: a number of ms, or RFC 3339
/// text (as mqlink writes timestamps).
pub fn time_ms(v: &Json) -> Option<u64> {
    match v {
        Json::Number(n) => n.as_u64(),
        Json::String(s) => crate::format::timestamp::parse_rfc3339_micros(s)
            .and_then(|us| u64::try_from(us / 1000).ok()),
        _ => None,
    }
}

fn death_payload(bdseq: u8) -> Bytes {
    let mut p = Writer::default();
    p.uint(1, now_ms());
    p.bytes(2, &bdseq_metric(bdseq));
    Bytes::from(p.buf)
}

fn bdseq_metric(bdseq: u8) -> Vec<u8> {
    let mut m = Writer::default();
    m.bytes(1, b"bdSeq");
    m.uint(3, now_ms());
    m.uint(4, u64::from(INT64));
    m.uint(11, u64::from(bdseq));
    m.buf
}

/// A metric: with its name in births (`name`), by alias in data.
fn metric(name: Option<&str>, b: &Born, value: &Scalar, ts: u64) -> Vec<u8> {
    let mut m = Writer::default();
    if let Some(n) = name {
        m.bytes(1, n.as_bytes());
    }
    m.uint(2, b.alias);
    m.uint(3, ts);
    m.uint(4, u64::from(b.datatype));
    match value {
        Scalar::Null => m.uint(7, 1),
        Scalar::Long(v) => m.uint(11, *v),
        Scalar::Double(v) => m.double(13, *v),
        Scalar::Boolean(v) => m.uint(14, u64::from(*v)),
        Scalar::String(s) => m.bytes(15, s.as_bytes()),
    }
    m.buf
}

/// Fields as `(name, value)`, nested objects flattened into folders.
fn flatten<'a>(
    prefix: &str,
    fields: &'a serde_json::Map<String, Json>,
    out: &mut Vec<(String, &'a Json)>,
) {
    for (k, v) in fields {
        let name = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}/{k}")
        };
        match v {
            Json::Object(inner) if !inner.is_empty() => flatten(&name, inner, out),
            v => out.push((name, v)),
        }
    }
}

fn datatype_of(s: &Scalar) -> u32 {
    match s {
        Scalar::Long(_) => INT64,
        Scalar::Double(_) => DOUBLE,
        Scalar::Boolean(_) => BOOLEAN,
        Scalar::String(_) | Scalar::Null => STRING,
    }
}

fn type_name(datatype: u32) -> &'static str {
    super::datatype_name(datatype).unwrap_or("unknown")
}

/// A JSON value as a metric of datatype `born` (or of its own type, for a
/// new metric).
fn scalar(name: &str, v: &Json, born: Option<u32>) -> Result<Scalar, TypeChanged> {
    let own = match v {
        Json::Null => Scalar::Null,
        Json::Bool(b) => Scalar::Boolean(*b),
        Json::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Scalar::Long(i as u64),
            (None, Some(u)) => Scalar::Long(u),
            _ => Scalar::Double(n.as_f64().unwrap_or(f64::NAN)),
        },
        Json::String(s) => Scalar::String(s.clone()),
        other => Scalar::String(other.to_string()),
    };
    let Some(born) = born else { return Ok(own) };
    match (born, own) {
        (_, Scalar::Null) => Ok(Scalar::Null),
        (INT64 | UINT64, s @ Scalar::Long(_)) => Ok(s),
        (DOUBLE, Scalar::Long(i)) => Ok(Scalar::Double(i as i64 as f64)),
        (DOUBLE, s @ Scalar::Double(_)) => Ok(s),
        (BOOLEAN, s @ Scalar::Boolean(_)) => Ok(s),
        (STRING, s @ Scalar::String(_)) => Ok(s),
        (STRING, _) => Ok(Scalar::String(v.to_string())),
        (born, _) => Err(TypeChanged {
            name: name.into(),
            born: type_name(born),
            value: v.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::super::proto::{decode, MetricValue};
    use super::*;
    use serde_json::json;

    fn fields(v: Json) -> serde_json::Map<String, Json> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn births_then_data_by_alias_with_seq() {
        let mut n = EdgeNode::new("plant", "mqlink", 7);
        let out = n
            .data(
                Some("press"),
                &fields(json!({"temp": 21.5, "on": true, "n": 3})),
                Some(1000),
            )
            .unwrap();
        let topics: Vec<&str> = out.iter().map(|o| &*o.topic).collect();
        assert_eq!(
            topics,
            [
                "spBv1.0/plant/NBIRTH/mqlink",
                "spBv1.0/plant/DBIRTH/mqlink/press",
                "spBv1.0/plant/DDATA/mqlink/press"
            ]
        );
        let birth = decode(&out[0].payload).unwrap();
        assert_eq!(birth.seq, Some(0));
        assert_eq!(birth.metrics[0].name.as_deref(), Some("bdSeq"));
        assert_eq!(birth.metrics[0].value, Some(MetricValue::Long(7)));
        let dbirth = decode(&out[1].payload).unwrap();
        assert_eq!(dbirth.seq, Some(1));
        let names: Vec<_> = dbirth
            .metrics
            .iter()
            .map(|m| m.name.clone().unwrap())
            .collect();
        assert_eq!(names, ["n", "on", "temp"]);
        let data = decode(&out[2].payload).unwrap();
        assert_eq!(data.seq, Some(2));
        assert!(data
            .metrics
            .iter()
            .all(|m| m.name.is_none() && m.alias.is_some()));
        // The same metrics again: data only, seq counting on.
        let out = n
            .data(
                Some("press"),
                &fields(json!({"temp": 22, "on": false, "n": 4})),
                None,
            )
            .unwrap();
        assert_eq!(out.len(), 1);
        let data = decode(&out[0].payload).unwrap();
        assert_eq!(data.seq, Some(3));
        let temp = data
            .metrics
            .iter()
            .find(|m| m.datatype == Some(DOUBLE))
            .unwrap();
        assert_eq!(temp.value, Some(MetricValue::Double(22.0)));
    }

    #[test]
    fn a_new_metric_is_a_rebirth_with_every_last_value() {
        let mut n = EdgeNode::new("g", "e", 1);
        n.data(None, &fields(json!({"a": 1})), None).unwrap();
        n.data(Some("d1"), &fields(json!({"x": "s"})), None)
            .unwrap();
        let out = n
            .data(None, &fields(json!({"b": {"c": 2.5}})), None)
            .unwrap();
        let kinds: Vec<&str> = out
            .iter()
            .map(|o| o.topic.split('/').nth(2).unwrap())
            .collect();
        assert_eq!(kinds, ["NBIRTH", "DBIRTH", "NDATA"]);
        let birth = decode(&out[0].payload).unwrap();
        let names: Vec<_> = birth
            .metrics
            .iter()
            .filter_map(|m| m.name.clone())
            .collect();
        assert_eq!(names, ["bdSeq", "Node Control/Rebirth", "a", "b/c"]);
        assert_eq!(birth.metrics[2].value, Some(MetricValue::Long(1)));
        assert_eq!(decode(&out[2].payload).unwrap().seq, Some(2));
    }

    #[test]
    fn a_value_of_another_type_is_refused_and_changes_nothing() {
        let mut n = EdgeNode::new("g", "e", 1);
        n.data(None, &fields(json!({"t": 1.5})), None).unwrap();
        let e = n
            .data(None, &fields(json!({"t": "hot", "new": 1})), None)
            .unwrap_err();
        assert_eq!(e.born, "Double");
        let out = n.data(None, &fields(json!({"t": 2})), None).unwrap();
        assert_eq!(out.len(), 1, "no metric was born by the refused record");
    }

    #[test]
    fn death_and_rebirth_requests() {
        let n = EdgeNode::new("g", "e", 9);
        let d = n.death();
        assert_eq!(d.topic, "spBv1.0/g/NDEATH/e");
        assert_eq!(
            decode(&d.payload).unwrap().metrics[0].value,
            Some(MetricValue::Long(9))
        );
        let (topic, ask) = super::super::rebirth_request("g", "e");
        assert_eq!(topic, n.command_topic());
        assert!(EdgeNode::is_rebirth_request(&ask));
        assert!(!EdgeNode::is_rebirth_request(b"\x0a\x01"));
    }

    #[test]
    fn each_connection_s_will_counts_bdseq_and_the_births_follow() {
        let mut n = EdgeNode::new("g", "e", 255);
        let will = n.will_per_connection();
        let bdseq = |payload: &[u8]| decode(payload).unwrap().metrics[0].value.clone();
        for want in [255, 0, 1] {
            assert_eq!(bdseq(&will()), Some(MetricValue::Long(want)));
            assert_eq!(
                bdseq(&n.rebirth()[0].payload),
                Some(MetricValue::Long(want))
            );
            assert_eq!(bdseq(&n.death().payload), Some(MetricValue::Long(want)));
        }
    }

    #[test]
    fn times() {
        assert_eq!(time_ms(&json!(1700000000123u64)), Some(1700000000123));
        assert_eq!(time_ms(&json!("1970-01-01T00:00:01.5Z")), Some(1500));
        assert_eq!(time_ms(&json!("yesterday")), None);
    }
}
