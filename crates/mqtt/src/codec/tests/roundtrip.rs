//! Round trips of every packet in every version, whole and one byte at a
//! time, plus exact bytes for a few packets so that encoder and decoder
//! cannot agree on a wrong layout.

use super::*;

#[test]
fn mqtt_round_trip_every_packet_v3_1() {
    for p in samples(ProtocolVersion::V3_1) {
        round_trip(&p, ProtocolVersion::V3_1);
    }
}

#[test]
fn mqtt_round_trip_every_packet_v3_1_1() {
    for p in samples(ProtocolVersion::V3_1_1) {
        round_trip(&p, ProtocolVersion::V3_1_1);
    }
}

#[test]
fn mqtt_round_trip_every_packet_v5() {
    for p in samples(ProtocolVersion::V5) {
        round_trip(&p, ProtocolVersion::V5);
    }
}

#[test]
fn mqtt_one_byte_at_a_time_every_packet_every_version() {
    for v in VERSIONS {
        for p in samples(v) {
            let bytes = enc(&p, v);
            let mut buf = BytesMut::new();
            for (i, &byte) in bytes.iter().enumerate() {
                buf.extend_from_slice(&[byte]);
                let out = decode(&mut buf, version_for(&p, v), BIG);
                if i + 1 < bytes.len() {
                    assert_eq!(out, Ok(None), "{v} {p:?} after {} bytes", i + 1);
                    assert_eq!(buf.len(), i + 1, "incomplete input must not be consumed");
                } else {
                    assert_eq!(out, Ok(Some(p.clone())), "{v}");
                    assert!(buf.is_empty());
                }
            }
        }
    }
}

#[test]
fn mqtt_back_to_back_packets_decode_in_order() {
    let v = ProtocolVersion::V5;
    let packets = samples(v);
    let mut buf = BytesMut::new();
    for p in &packets {
        encode(p, v, &mut buf).unwrap();
    }
    // CONNECT first needs `None`; decode the rest with the version.
    let mut got = Vec::new();
    let mut version = None;
    while let Some(p) = decode(&mut buf, version, BIG).unwrap() {
        if let Packet::Connect(c) = &p {
            version = Some(c.version);
        }
        got.push(p);
    }
    assert_eq!(got, packets);
    assert!(buf.is_empty());
}

#[test]
fn mqtt_publish_payload_is_a_zero_copy_slice_of_the_read_buffer() {
    let p = Packet::Publish(Publish {
        topic: TopicName::new("t").unwrap(),
        payload: Bytes::from(vec![7u8; 1000]),
        ..Publish::default()
    });
    let mut buf = enc(&p, ProtocolVersion::V3_1_1);
    let start = buf.as_ptr() as usize;
    let end = start + buf.len();
    let Ok(Some(Packet::Publish(got))) = decode(&mut buf, Some(ProtocolVersion::V3_1_1), BIG)
    else {
        panic!("not a PUBLISH");
    };
    let at = got.payload.as_ptr() as usize;
    assert!(
        at >= start && at + got.payload.len() <= end,
        "payload was copied"
    );
}

#[test]
fn mqtt_exact_bytes_connect_v3_1_1() {
    let p = Packet::Connect(Connect {
        version: ProtocolVersion::V3_1_1,
        client_id: "c".into(),
        clean_start: true,
        keep_alive: 10,
        properties: ConnectProperties::default(),
        will: None,
        username: None,
        password: None,
    });
    let expected = [
        0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 10, 0, 1, b'c',
    ];
    assert_eq!(&enc(&p, ProtocolVersion::V3_1_1)[..], &expected);
}

#[test]
fn mqtt_exact_bytes_connect_v3_1_uses_mqisdp() {
    let mut c = sample_connect(ProtocolVersion::V3_1);
    c.will = None;
    c.username = None;
    c.password = None;
    let bytes = enc(&Packet::Connect(c), ProtocolVersion::V3_1);
    assert_eq!(
        &bytes[2..11],
        &[0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 3]
    );
}

#[test]
fn mqtt_exact_bytes_publish_qos1_v5_with_topic_alias() {
    let p = Packet::Publish(Publish {
        qos: QoS::AtLeastOnce,
        retain: true,
        topic: TopicName::new("a").unwrap(),
        packet_id: Some(0x0102),
        properties: PublishProperties {
            topic_alias: Some(5),
            ..PublishProperties::default()
        },
        payload: Bytes::from_static(b"x"),
        ..Publish::default()
    });
    let expected = [0x33, 10, 0, 1, b'a', 1, 2, 3, 0x23, 0, 5, b'x'];
    assert_eq!(&enc(&p, ProtocolVersion::V5)[..], &expected);
}

#[test]
fn mqtt_exact_bytes_short_forms_of_v5_acks_disconnect_auth() {
    let v = ProtocolVersion::V5;
    assert_eq!(&enc(&Packet::PubAck(Ack::new(9)), v)[..], &[0x40, 2, 0, 9]);
    let rec = Ack {
        reason: ReasonCode::NO_MATCHING_SUBSCRIBERS,
        ..Ack::new(9)
    };
    assert_eq!(&enc(&Packet::PubRec(rec), v)[..], &[0x50, 3, 0, 9, 0x10]);
    assert_eq!(&enc(&Packet::PubRel(Ack::new(9)), v)[..], &[0x62, 2, 0, 9]);
    let d = Packet::Disconnect(Disconnect::default());
    assert_eq!(&enc(&d, v)[..], &[0xE0, 0]);
    // DISCONNECT with a reason always carries its property length (see
    // `Disconnect::len`); the one-byte form still decodes.
    let d = Packet::Disconnect(Disconnect::new(ReasonCode::SERVER_SHUTTING_DOWN));
    assert_eq!(&enc(&d, v)[..], &[0xE0, 2, 0x8B, 0]);
    assert_eq!(dec(&[0xE0, 1, 0x8B], Some(v)), Ok(Some(d)));
    assert_eq!(&enc(&Packet::Auth(Auth::default()), v)[..], &[0xF0, 0]);
    // Reason code with an empty property block decodes like the short form.
    assert_eq!(
        dec(&[0x40, 4, 0, 9, 0, 0], Some(v)),
        Ok(Some(Packet::PubAck(Ack::new(9))))
    );
}

#[test]
fn mqtt_v3_drops_what_it_cannot_carry() {
    let v = ProtocolVersion::V3_1_1;
    let ack = Ack {
        reason: ReasonCode::QUOTA_EXCEEDED,
        properties: ReasonProperties {
            reason_string: Some("x".into()),
            user_properties: Vec::new(),
        },
        ..Ack::new(3)
    };
    assert_eq!(&enc(&Packet::PubAck(ack), v)[..], &[0x40, 2, 0, 3]);
    let suback = SubAck {
        packet_id: 1,
        properties: ReasonProperties::default(),
        reasons: vec![ReasonCode::NOT_AUTHORIZED, ReasonCode::GRANTED_QOS_1],
    };
    assert_eq!(
        &enc(&Packet::SubAck(suback), v)[..],
        &[0x90, 4, 0, 1, 0x80, 0x01]
    );
    let connack = ConnAck {
        session_present: false,
        reason: ReasonCode::BANNED,
        properties: ConnAckProperties::default(),
    };
    assert_eq!(&enc(&Packet::ConnAck(connack), v)[..], &[0x20, 2, 0, 0x05]);
    let d = Packet::Disconnect(Disconnect::new(ReasonCode::SERVER_SHUTTING_DOWN));
    assert_eq!(&enc(&d, v)[..], &[0xE0, 0]);
}

#[test]
fn mqtt_encode_rejects_what_no_version_can_carry() {
    let mut out = BytesMut::new();
    let auth = Packet::Auth(Auth::default());
    assert!(matches!(
        encode(&auth, ProtocolVersion::V3_1_1, &mut out),
        Err(EncodeError::NotInVersion { .. })
    ));
    let p = Packet::Publish(Publish {
        qos: QoS::AtLeastOnce,
        topic: TopicName::new("t").unwrap(),
        ..Publish::default()
    });
    assert!(matches!(
        encode(&p, ProtocolVersion::V5, &mut out),
        Err(EncodeError::Invalid(_))
    ));
    let bad = Packet::PubRel(Ack {
        reason: ReasonCode::QUOTA_EXCEEDED,
        ..Ack::new(1)
    });
    assert!(matches!(
        encode(&bad, ProtocolVersion::V5, &mut out),
        Err(EncodeError::ReasonCodeNotAllowed { .. })
    ));
    let long = Packet::Publish(Publish {
        topic: TopicName::new("t").unwrap(),
        properties: PublishProperties {
            content_type: Some("x".repeat(70_000)),
            ..PublishProperties::default()
        },
        ..Publish::default()
    });
    assert!(matches!(
        encode(&long, ProtocolVersion::V5, &mut out),
        Err(EncodeError::TooLong { .. })
    ));
    assert!(out.is_empty(), "a failed encode writes nothing");
}
