use super::proto::Writer;
use super::*;

/// A metric: name, alias, datatype, and one value field (tag, varint).
fn metric(name: Option<&str>, alias: Option<u64>, dt: Option<u32>, value: (u32, u64)) -> Vec<u8> {
    let mut m = Writer::default();
    if let Some(n) = name {
        m.bytes(1, n.as_bytes());
    }
    if let Some(a) = alias {
        m.uint(2, a);
    }
    if let Some(d) = dt {
        m.uint(4, u64::from(d));
    }
    match value.0 {
        13 => m.double(13, f64::from_bits(value.1)),
        tag => m.uint(tag, value.1),
    }
    m.buf
}

fn payload(seq: Option<u64>, metrics: &[Vec<u8>]) -> Vec<u8> {
    let mut p = Writer::default();
    p.uint(1, 1_700_000_000_000);
    for m in metrics {
        p.bytes(2, m);
    }
    if let Some(s) = seq {
        p.uint(3, s);
    }
    p.buf
}

fn nbirth(bdseq: u64) -> Vec<u8> {
    payload(
        Some(0),
        &[
            metric(Some("bdSeq"), None, Some(8), (11, bdseq)),
            metric(
                Some("Temperature"),
                Some(1),
                Some(3),
                (10, (-5i32) as u32 as u64),
            ),
            metric(Some("Running"), Some(2), Some(11), (14, 1)),
        ],
    )
}

fn rows(v: Value) -> Vec<serde_json::Value> {
    let Value::Rows(rows) = v else {
        panic!("not rows: {v:?}")
    };
    rows.iter().map(Value::to_json).collect()
}

const N: &str = "spBv1.0/plant/NBIRTH/edge1";
const D: &str = "spBv1.0/plant/NDATA/edge1";

#[test]
fn topics() {
    assert_eq!(
        parse_topic("spBv1.0/g/DDATA/e/d"),
        Some(Topic::Message {
            group: "g",
            kind: MessageType::DData,
            edge: "e",
            device: Some("d")
        })
    );
    assert_eq!(
        parse_topic("spBv1.0/STATE/host"),
        Some(Topic::State("host"))
    );
    for bad in [
        "spBv1.0/g/NDATA",
        "spBv1.0/g/NDATA/e/d",
        "spBv1.0/g/DDATA/e",
        "spAv1.0/g/NDATA/e",
        "spBv1.0/g/XDATA/e",
        "spBv1.0//NDATA/e",
    ] {
        assert_eq!(parse_topic(bad), None, "{bad}");
    }
}

#[test]
fn data_by_alias_is_named_from_the_birth() {
    let h = Host::default();
    let birth = rows(h.decode(N, &nbirth(3)).unwrap());
    assert_eq!(birth.len(), 3);
    assert_eq!(birth[1]["name"], "Temperature");
    assert_eq!(birth[1]["int_value"], -5);
    assert_eq!(birth[1]["datatype"], "Int32");
    assert_eq!(birth[1]["bdseq"], 3);
    let data = payload(
        Some(1),
        &[
            metric(None, Some(2), None, (14, 0)),
            metric(None, Some(1), None, (10, 7)),
        ],
    );
    let r = rows(h.decode(D, &data).unwrap());
    assert_eq!(r[0]["name"], "Running");
    assert_eq!(r[0]["boolean_value"], false);
    assert_eq!(r[0]["datatype"], "Boolean");
    assert_eq!(r[1]["name"], "Temperature");
    assert_eq!(r[1]["value"], 7);
    assert_eq!(r[1]["seq"], 1);
    assert_eq!(r[1]["message_type"], "NDATA");
    assert_eq!(r[1]["timestamp"], "2023-11-14T22:13:20.000000Z");
    assert!(h.take_requests().is_empty());
}

#[test]
fn gaps_unknown_aliases_and_data_before_birth_ask_for_a_rebirth() {
    let h = Host::new(HostOptions {
        rebirth_interval: Duration::from_secs(5),
        host_id: None,
    });
    let t0 = Instant::now();
    let data = |seq| payload(Some(seq), &[metric(None, Some(1), None, (10, 1))]);
    let e = h.decode_at(D, &data(5), t0).unwrap_err().to_string();
    assert!(e.contains("NDATA before the edge node's NBIRTH"), "{e}");
    let req = h.take_requests();
    assert_eq!(req.len(), 1);
    assert_eq!(req[0].0, "spBv1.0/plant/NCMD/edge1");
    let cmd = proto::decode(&req[0].1).unwrap();
    assert_eq!(cmd.metrics[0].name.as_deref(), Some("Node Control/Rebirth"));
    assert_eq!(cmd.metrics[0].value, Some(MetricValue::Boolean(true)));
    // Rate-limited: a second refusal within the interval asks nothing.
    assert!(h
        .decode_at(D, &data(6), t0 + Duration::from_secs(1))
        .is_err());
    assert!(h.take_requests().is_empty());
    h.decode_at(N, &nbirth(0), t0 + Duration::from_secs(2))
        .unwrap();
    h.decode_at(D, &data(1), t0 + Duration::from_secs(2))
        .unwrap();
    // seq 2 lost: 3 is refused, and so is everything until the NBIRTH.
    let e = h
        .decode_at(D, &data(3), t0 + Duration::from_secs(6))
        .unwrap_err()
        .to_string();
    assert!(e.contains("seq 3 where 2 was next"), "{e}");
    assert_eq!(h.take_requests().len(), 1);
    assert!(h
        .decode_at(D, &data(4), t0 + Duration::from_secs(6))
        .is_err());
    h.decode_at(N, &nbirth(0), t0 + Duration::from_secs(7))
        .unwrap();
    let unknown = payload(Some(1), &[metric(None, Some(99), None, (10, 1))]);
    let e = h
        .decode_at(D, &unknown, t0 + Duration::from_secs(12))
        .unwrap_err()
        .to_string();
    assert!(e.contains("alias 99 is not in the BIRTH"), "{e}");
    assert_eq!(h.take_requests().len(), 1);
    // seq wraps 255 -> 0.
    h.decode_at(N, &nbirth(0), t0).unwrap();
    for s in 1..=300u64 {
        h.decode_at(D, &data(s % 256), t0).unwrap();
    }
}

#[test]
fn devices_and_deaths() {
    let h = Host::default();
    h.decode(N, &nbirth(7)).unwrap();
    let dbirth = payload(
        Some(1),
        &[metric(
            Some("Level"),
            Some(10),
            Some(10),
            (13, 2.5f64.to_bits()),
        )],
    );
    let d = "spBv1.0/plant/DBIRTH/edge1/tank";
    assert_eq!(rows(h.decode(d, &dbirth).unwrap())[0]["device_id"], "tank");
    // Aliases are per device table: 10 is unknown on the node itself.
    let ddata = payload(
        Some(2),
        &[metric(None, Some(10), None, (13, 3.5f64.to_bits()))],
    );
    let r = rows(h.decode("spBv1.0/plant/DDATA/edge1/tank", &ddata).unwrap());
    assert_eq!(
        (r[0]["name"].as_str(), r[0]["double_value"].as_f64()),
        (Some("Level"), Some(3.5))
    );
    // A will from an earlier session says nothing.
    let old = payload(None, &[metric(Some("bdSeq"), None, Some(8), (11, 6))]);
    assert!(rows(h.decode("spBv1.0/plant/NDEATH/edge1", &old).unwrap()).is_empty());
    let death = payload(None, &[metric(Some("bdSeq"), None, Some(8), (11, 7))]);
    let r = rows(h.decode("spBv1.0/plant/NDEATH/edge1", &death).unwrap());
    assert_eq!(r.len(), 4, "three node metrics and the device's one");
    assert!(r
        .iter()
        .all(|r| r["is_stale"] == true && r["value"].is_null() && r["message_type"] == "NDEATH"));
    assert!(r
        .iter()
        .any(|r| r["name"] == "Level" && r["device_id"] == "tank"));
    assert!(
        h.decode(D, &payload(Some(3), &[])).is_err(),
        "dead until its NBIRTH"
    );
}

#[test]
fn commands_and_state_give_no_rows() {
    let h = Host::default();
    for t in [
        "spBv1.0/plant/NCMD/e",
        "spBv1.0/plant/DCMD/e/d",
        "spBv1.0/STATE/scada",
    ] {
        assert!(rows(h.decode(t, b"{\"online\":true}").unwrap()).is_empty());
    }
    assert!(h.decode("plant/NDATA/e", b"").is_err());
}

#[test]
fn values_of_every_kind() {
    let h = Host::default();
    let mut props = Writer::default();
    props.bytes(1, b"engUnit");
    let mut pv = Writer::default();
    pv.uint(1, 12);
    pv.bytes(8, "°C".as_bytes());
    props.bytes(2, &pv.buf);
    let mut with_props = Writer::default();
    with_props.bytes(1, b"t");
    with_props.uint(4, 9);
    with_props.bytes(9, &props.buf);
    with_props.varint((12 << 3) | 5);
    with_props.buf.extend_from_slice(&1.5f32.to_le_bytes());
    let mut arr = Writer::default();
    arr.bytes(1, b"a");
    arr.uint(4, 24);
    arr.bytes(16, &[1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]);
    let mut s = Writer::default();
    s.bytes(1, b"s");
    s.uint(4, 12);
    s.bytes(15, b"hi");
    let mut null = Writer::default();
    null.bytes(1, b"n");
    null.uint(4, 3);
    null.uint(7, 1);
    let p = payload(
        Some(0),
        &[
            with_props.buf,
            arr.buf,
            s.buf,
            null.buf,
            metric(Some("dt"), None, Some(13), (11, 1_700_000_000_000)),
            metric(Some("u64"), None, Some(8), (11, u64::MAX)),
            metric(Some("i8"), None, Some(1), (10, 0xff)),
        ],
    );
    let r = rows(h.decode(N, &p).unwrap());
    assert_eq!(r[0]["double_value"], 1.5);
    assert_eq!(r[0]["properties"], serde_json::json!({"engUnit": "°C"}));
    assert_eq!(r[1]["value"], serde_json::json!([1, -1]));
    assert_eq!(r[2]["string_value"], "hi");
    assert_eq!(
        (r[3]["is_null"].as_bool(), r[3]["value"].is_null()),
        (Some(true), true)
    );
    assert_eq!(r[4]["datetime_value"], "2023-11-14T22:13:20.000000Z");
    assert_eq!(
        (r[5]["value"].as_u64(), r[5]["int_value"].is_null()),
        (Some(u64::MAX), true)
    );
    assert_eq!(r[6]["int_value"], -1);
}

/// Random bytes, and valid payloads with bytes flipped, cut or inserted,
/// on every message type: rows or an error, never a panic.
#[test]
fn never_panics_on_any_payload() {
    let mut rng = fastrand::Rng::with_seed(26);
    let h = Host::default();
    let topics = [
        N,
        D,
        "spBv1.0/plant/DBIRTH/edge1/d",
        "spBv1.0/plant/DDATA/edge1/d",
        "spBv1.0/plant/NDEATH/edge1",
        "spBv1.0/plant/DDEATH/edge1/d",
    ];
    let seeds = [
        nbirth(1),
        payload(Some(1), &[metric(None, Some(1), None, (10, 3))]),
    ];
    for i in 0..20_000 {
        let mut b = if i % 2 == 0 {
            (0..rng.usize(0..120)).map(|_| rng.u8(..)).collect()
        } else {
            seeds[rng.usize(..seeds.len())].clone()
        };
        for _ in 0..rng.usize(0..4) {
            if b.is_empty() {
                break;
            }
            let at = rng.usize(..b.len());
            match rng.u8(0..3) {
                0 => b[at] = rng.u8(..),
                1 => b.truncate(at),
                _ => b.insert(at, rng.u8(..)),
            }
        }
        if let Ok(v) = h.decode(topics[rng.usize(..topics.len())], &b) {
            let mut out = Vec::new();
            v.write_json(&mut out);
        }
    }
}
