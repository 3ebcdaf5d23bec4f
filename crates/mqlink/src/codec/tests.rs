use super::*;
use proptest::prelude::*;

fn roundtrip(p: Packet, proto: Protocol) -> Packet {
    let mut b = BytesMut::new();
    encode(&p, proto, &mut b);
    let got = decode(&mut b, proto, usize::MAX).unwrap().unwrap();
    assert!(b.is_empty());
    got
}

fn sample_publish(qos: QoS, props: Option<PublishProperties>) -> Publish {
    Publish {
        topic: "a/b".into(),
        payload: Bytes::from_static(b"{\"x\":1}"),
        qos,
        retain: true,
        dup: qos != QoS::AtMostOnce,
        pkid: if qos == QoS::AtMostOnce { 0 } else { 7 },
        properties: props.map(Box::new),
    }
}

/// Read as the session driver reads (64 KiB at a time, making room when
/// less than 4 KiB is free), 1 MiB messages, the application dropping each
/// at once or holding the last two: the read buffer stays near one message
/// (it was doubled up to 64 MiB).
#[test]
fn large_packets_do_not_grow_the_read_buffer() {
    for holding in [0, 2] {
        let mut wire = BytesMut::new();
        for pkid in 1..=40 {
            let p = Publish {
                topic: "big".into(),
                payload: Bytes::from(vec![7u8; 1 << 20]),
                qos: QoS::AtLeastOnce,
                retain: false,
                dup: false,
                pkid,
                properties: None,
            };
            encode(&Packet::Publish(p), Protocol::V311, &mut wire);
        }
        let mut rbuf = BytesMut::with_capacity(64 * 1024);
        let mut held = std::collections::VecDeque::new();
        let (mut decoded, mut largest) = (0, 0);
        while !wire.is_empty() {
            reserve_for_read(&mut rbuf, 4096, 64 * 1024);
            let n = (rbuf.capacity() - rbuf.len())
                .min(64 * 1024)
                .min(wire.len());
            rbuf.extend_from_slice(&wire.split_to(n));
            // The room behind `rbuf`: its bytes and free space.
            largest = largest.max(rbuf.capacity());
            while let Some(p) = decode(&mut rbuf, Protocol::V311, usize::MAX).unwrap() {
                decoded += 1;
                held.push_back(p);
                if held.len() > holding {
                    held.pop_front();
                }
            }
        }
        assert_eq!(decoded, 40);
        assert!(
            largest <= (1 << 20) + 128 * 1024,
            "holding {holding}: the read buffer grew to {largest} bytes"
        );
    }
}

#[test]
fn publish_roundtrips_both_versions() {
    for proto in [Protocol::V311, Protocol::V5] {
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            let p = sample_publish(qos, None);
            assert_eq!(
                roundtrip(Packet::Publish(p.clone()), proto),
                Packet::Publish(p)
            );
        }
    }
    let props = PublishProperties {
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(60),
        topic_alias: None,
        response_topic: Some("r/t".into()),
        correlation_data: Some(Bytes::from_static(b"\x00\x01")),
        user_properties: vec![("k".into(), "v".into()), ("k".into(), "w".into())],
        subscription_identifiers: vec![3],
        content_type: Some("application/json".into()),
    };
    let p = sample_publish(QoS::AtLeastOnce, Some(props));
    assert_eq!(
        roundtrip(Packet::Publish(p.clone()), Protocol::V5),
        Packet::Publish(p.clone())
    );
    let mut b = BytesMut::new();
    encode_publish(&p, Protocol::V5, &mut b);
    assert_eq!(publish_size(&p, Protocol::V5), b.len());
}

#[test]
fn mqtt_3_1_connect_is_mqisdp_level_3_and_reads_back() {
    let c = Connect {
        protocol: Protocol::V31,
        clean_start: true,
        keep_alive: 60,
        client_id: "c".into(),
        username: None,
        password: None,
        will: None,
        properties: Default::default(),
    };
    let mut b = BytesMut::new();
    encode(&Packet::Connect(Box::new(c.clone())), Protocol::V31, &mut b);
    assert_eq!(&b[..], b"\x10\x0f\x00\x06MQIsdp\x03\x02\x00\x3c\x00\x01c");
    assert_eq!(
        decode(&mut b, Protocol::V311, 100).unwrap(),
        Some(Packet::Connect(Box::new(c)))
    );
    assert_eq!("mqttv31".parse::<Protocol>(), Ok(Protocol::V31));
    assert_eq!("3.1".parse::<Protocol>(), Ok(Protocol::V31));
}

#[test]
fn known_bytes_v311() {
    // CONNECT from the 3.1.1 spec's field layout, client id "c", keep-alive 60, clean.
    let c = Connect {
        protocol: Protocol::V311,
        clean_start: true,
        keep_alive: 60,
        client_id: "c".into(),
        username: None,
        password: None,
        will: None,
        properties: Default::default(),
    };
    let mut b = BytesMut::new();
    encode(&Packet::Connect(Box::new(c)), Protocol::V311, &mut b);
    assert_eq!(&b[..], b"\x10\x0d\x00\x04MQTT\x04\x02\x00\x3c\x00\x01c");
    let mut b = BytesMut::from(&b"\x20\x02\x01\x05"[..]);
    assert_eq!(
        decode(&mut b, Protocol::V311, 100).unwrap(),
        Some(Packet::ConnAck(ConnAck {
            session_present: true,
            code: 5,
            properties: Default::default()
        }))
    );
    let mut b = BytesMut::new();
    encode_ack(AckKind::PubRel, 0x0102, &mut b);
    assert_eq!(&b[..], b"\x62\x02\x01\x02");
}

#[test]
fn control_packets_roundtrip() {
    for proto in [Protocol::V311, Protocol::V5] {
        let v5 = proto == Protocol::V5;
        let connect = Connect {
            protocol: proto,
            clean_start: false,
            keep_alive: 30,
            client_id: "id".into(),
            username: Some("u".into()),
            password: Some(Secret::new("p")),
            will: Some(Will {
                topic: "w".into(),
                payload: Bytes::from_static(b"bye"),
                qos: QoS::AtLeastOnce,
                retain: true,
                properties: if v5 {
                    WillProperties {
                        will_delay_interval: Some(5),
                        content_type: Some("text/plain".into()),
                        user_properties: vec![("k".into(), "v".into())],
                        ..Default::default()
                    }
                } else {
                    Default::default()
                },
            }),
            properties: if v5 {
                ConnectProperties {
                    session_expiry_interval: Some(9),
                    receive_maximum: Some(5),
                    maximum_packet_size: Some(1000),
                    topic_alias_maximum: None,
                    user_properties: vec![],
                }
            } else {
                Default::default()
            },
        };
        let packets = vec![
            Packet::Connect(Box::new(connect)),
            Packet::Subscribe(Subscribe {
                pkid: 3,
                filters: vec![
                    ("a/#".into(), SubscribeOptions::qos(QoS::ExactlyOnce)),
                    (
                        "b".into(),
                        SubscribeOptions {
                            qos: QoS::AtLeastOnce,
                            no_local: v5,
                            retain_as_published: v5,
                            retain_handling: if v5 { 2 } else { 0 },
                        },
                    ),
                ],
                subscription_identifier: if v5 { Some(42) } else { None },
            }),
            Packet::SubAck(SubAck {
                pkid: 3,
                codes: vec![2, 0x80],
                reason_string: None,
            }),
            Packet::Unsubscribe(Unsubscribe {
                pkid: 4,
                filters: vec!["a/#".into()],
            }),
            Packet::PingReq,
            Packet::PingResp,
            Packet::Disconnect(Disconnect::default()),
            Packet::Ack(Ack {
                kind: AckKind::PubAck,
                pkid: 9,
                reason: 0,
                reason_string: None,
            }),
        ];
        for p in packets {
            assert_eq!(roundtrip(p.clone(), proto), p, "{proto}");
        }
    }
    let rejected = Packet::Ack(Ack {
        kind: AckKind::PubRec,
        pkid: 9,
        reason: 0x87,
        reason_string: Some("no".into()),
    });
    assert_eq!(roundtrip(rejected.clone(), Protocol::V5), rejected);
    let connack = Packet::ConnAck(ConnAck {
        session_present: false,
        code: 0,
        properties: ConnAckProperties {
            receive_maximum: Some(20),
            maximum_packet_size: Some(1 << 20),
            server_keep_alive: Some(10),
            ..Default::default()
        },
    });
    assert_eq!(roundtrip(connack.clone(), Protocol::V5), connack);
}

#[test]
fn partial_input_needs_more() {
    let mut full = BytesMut::new();
    encode_publish(
        &sample_publish(QoS::AtLeastOnce, None),
        Protocol::V311,
        &mut full,
    );
    for cut in 0..full.len() {
        let mut b = BytesMut::from(&full[..cut]);
        assert_eq!(
            decode(&mut b, Protocol::V311, usize::MAX),
            Ok(None),
            "cut at {cut}"
        );
        assert_eq!(b.len(), cut, "nothing consumed");
    }
}

#[test]
fn malformed_inputs_are_errors() {
    let cases: &[(&[u8], DecodeError)] = &[
        (b"\x30\xff\xff\xff\xff\x01", DecodeError::MalformedLength),
        (b"\x36\x05\x00\x01a\x00\x01", DecodeError::InvalidQoS),
        (b"\x32\x05\x00\x01a\x00\x00", DecodeError::ZeroPacketId),
        (
            b"\x30\x03\x00\x01\xff",
            DecodeError::InvalidUtf8("topic name"),
        ),
        (b"\x00\x00", DecodeError::InvalidPacketType(0)),
        (
            b"\x41\x02\x00\x01",
            DecodeError::InvalidFlags {
                packet_type: 4,
                flags: 1,
            },
        ),
        (b"\x40\x03\x00\x01\x00", DecodeError::TrailingBytes(1)),
        (b"\x30\x05\x00\x09abc", DecodeError::Truncated("topic name")),
        // CONNECT: what a broker answers with CONNACK 0x01, 0x8C, or closes on.
        (
            b"\x10\x07\x00\x04MQTT\x06",
            DecodeError::UnsupportedProtocolLevel(6),
        ),
        (
            b"\x10\x09\x00\x06MQIsdp\x04",
            DecodeError::UnsupportedProtocolLevel(4),
        ),
        (
            b"\x10\x07\x00\x04MQTX\x04",
            DecodeError::InvalidConnect("protocol name"),
        ),
        (
            b"\x10\x0c\x00\x04MQTT\x04\x01\x00\x3c\x00\x00",
            DecodeError::InvalidConnect("reserved connect flag"),
        ),
        (
            b"\x10\x0c\x00\x04MQTT\x04\x08\x00\x3c\x00\x00",
            DecodeError::InvalidConnect("will flags without a will"),
        ),
        (
            b"\x10\x11\x00\x04MQTT\x05\x02\x00\x3c\x04\x15\x00\x01x\x00\x00",
            DecodeError::AuthNotSupported,
        ),
        (
            b"\x10\x10\x00\x04MQTT\x05\x02\x00\x3c\x03\x21\x00\x00\x00\x00",
            DecodeError::InvalidConnect("receive maximum 0"),
        ),
    ];
    for (bytes, want) in cases {
        let mut b = BytesMut::from(*bytes);
        assert_eq!(
            decode(&mut b, Protocol::V311, usize::MAX).unwrap_err(),
            *want,
            "{bytes:?}"
        );
    }
    let mut b = BytesMut::from(&b"\x30\x7f"[..]);
    assert_eq!(
        decode(&mut b, Protocol::V311, 64).unwrap_err(),
        DecodeError::PacketTooLarge { size: 129, max: 64 }
    );
    // v5: unknown property id in a PUBLISH.
    let mut b = BytesMut::from(&b"\x30\x06\x00\x01a\x02\x7f\x00"[..]);
    assert_eq!(
        decode(&mut b, Protocol::V5, usize::MAX).unwrap_err(),
        DecodeError::InvalidProperty(0x7f)
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200), v5 in any::<bool>()) {
        let proto = if v5 { Protocol::V5 } else { Protocol::V311 };
        let mut b = BytesMut::from(&bytes[..]);
        for _ in 0..10 {
            match decode(&mut b, proto, 1 << 20) {
                Ok(Some(_)) => continue,
                _ => break,
            }
        }
    }

    #[test]
    fn publish_roundtrip_any(topic in "[a-z/]{1,20}", payload in proptest::collection::vec(any::<u8>(), 0..300),
                            qos in 0u8..3, retain in any::<bool>(), pkid in 1u16.., v5 in any::<bool>()) {
        let proto = if v5 { Protocol::V5 } else { Protocol::V311 };
        let qos = QoS::from_u8(qos).unwrap();
        let p = Publish {
            topic: topic.as_str().into(),
            payload: Bytes::from(payload),
            qos,
            retain,
            dup: false,
            pkid: if qos == QoS::AtMostOnce { 0 } else { pkid },
            properties: None,
        };
        let mut b = BytesMut::new();
        encode_publish(&p, proto, &mut b);
        prop_assert_eq!(b.len(), publish_size(&p, proto));
        prop_assert_eq!(decode(&mut b, proto, usize::MAX).unwrap(), Some(Packet::Publish(p)));
    }
}

/// Lengths at and around MQTT's 65,535-byte limit: the check refuses
/// exactly what the encoder could not write, and what it accepts
/// round-trips unchanged.
#[test]
fn field_lengths_are_checked_before_encoding() {
    let v5 = Protocol::V5;
    for len in [0usize, 1, 65_534, 65_535, 65_536, 70_000] {
        let long = "x".repeat(len);
        let fits = len <= MAX_FIELD_LENGTH;
        let cases: Vec<(&str, PublishProperties)> = vec![
            (
                "user property value",
                PublishProperties {
                    user_properties: vec![("k".into(), long.clone())],
                    ..Default::default()
                },
            ),
            (
                "user property name",
                PublishProperties {
                    user_properties: vec![(long.clone(), "v".into())],
                    ..Default::default()
                },
            ),
            (
                "content type",
                PublishProperties {
                    content_type: Some(long.clone()),
                    ..Default::default()
                },
            ),
            (
                "response topic",
                PublishProperties {
                    response_topic: Some(long.clone()),
                    ..Default::default()
                },
            ),
            (
                "correlation data",
                PublishProperties {
                    correlation_data: Some(Bytes::from(long.clone())),
                    ..Default::default()
                },
            ),
        ];
        for (field, props) in cases {
            let p = sample_publish(QoS::AtLeastOnce, Some(props));
            match check_publish(&p, v5) {
                Ok(()) => {
                    assert!(fits, "{field} of {len} accepted");
                    assert_eq!(
                        roundtrip(Packet::Publish(p.clone()), v5),
                        Packet::Publish(p)
                    );
                }
                Err(e) => {
                    assert!(!fits, "{field} of {len} refused: {e}");
                    assert_eq!(e, EncodeError::FieldTooLong { field, len });
                }
            }
            // 3.1.1 sends no properties: nothing to refuse.
            assert!(check_publish(&sample_publish(QoS::AtLeastOnce, None), Protocol::V311).is_ok());
        }
        let connect = Connect {
            protocol: v5,
            clean_start: true,
            keep_alive: 30,
            client_id: "c".into(),
            username: None,
            password: None,
            will: Some(Will {
                topic: "w".into(),
                payload: Bytes::from(long.clone()),
                qos: QoS::AtLeastOnce,
                retain: false,
                properties: Default::default(),
            }),
            properties: ConnectProperties::default(),
        };
        assert_eq!(
            check_connect(&connect).is_ok(),
            fits,
            "will payload of {len}"
        );
        if fits {
            assert_eq!(
                roundtrip(Packet::Connect(Box::new(connect.clone())), v5),
                Packet::Connect(Box::new(connect))
            );
        }
    }
}

proptest! {
    #[test]
    fn checked_publishes_roundtrip(
        key_len in 0usize..70_000,
        topic in "[a-z/]{1,20}",
    ) {
        let p = Publish {
            topic: topic.as_str().into(),
            properties: Some(Box::new(PublishProperties {
                user_properties: vec![("k".repeat(key_len), "v".into())],
                ..Default::default()
            })),
            ..sample_publish(QoS::ExactlyOnce, None)
        };
        let ok = check_publish(&p, Protocol::V5).is_ok();
        prop_assert_eq!(ok, key_len <= MAX_FIELD_LENGTH);
        if ok {
            prop_assert_eq!(roundtrip(Packet::Publish(p.clone()), Protocol::V5), Packet::Publish(p));
        }
    }
}
