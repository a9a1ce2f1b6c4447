//! The fixed header: Remaining Length encoding and boundaries, the size cap
//! applied before the body is buffered, packet types and reserved flags.

use super::*;

/// A QoS 0 PUBLISH to "t" whose Remaining Length is `remaining` (>= 3).
fn publish_with_remaining(remaining: usize) -> Packet {
    Packet::Publish(Publish {
        topic: TopicName::new("t").unwrap(),
        payload: Bytes::from(vec![0xA5; remaining - 3]),
        ..Publish::default()
    })
}

#[test]
fn mqtt_1_5_5_remaining_length_boundaries_round_trip() {
    let v = ProtocolVersion::V3_1_1;
    assert_eq!(&enc(&Packet::PingReq, v)[..], &[0xC0, 0x00]);
    for (remaining, len_bytes) in [
        (127, 1),
        (128, 2),
        (16_383, 2),
        (16_384, 3),
        (2_097_151, 3),
        (2_097_152, 4),
    ] {
        let p = publish_with_remaining(remaining);
        let bytes = enc(&p, v);
        assert_eq!(bytes.len(), 1 + len_bytes + remaining, "{remaining}");
        assert_eq!(
            wire::peek_varint(&bytes[1..]),
            Ok(Some((remaining, len_bytes)))
        );
        assert_eq!(dec(&bytes, Some(v)), Ok(Some(p)), "{remaining}");
    }
}

#[test]
fn mqtt_1_5_5_variable_byte_integer_encodings() {
    for (value, expected) in [
        (0usize, &[0x00][..]),
        (127, &[0x7F]),
        (128, &[0x80, 0x01]),
        (16_383, &[0xFF, 0x7F]),
        (16_384, &[0x80, 0x80, 0x01]),
        (2_097_151, &[0xFF, 0xFF, 0x7F]),
        (2_097_152, &[0x80, 0x80, 0x80, 0x01]),
        (268_435_455, &[0xFF, 0xFF, 0xFF, 0x7F]),
    ] {
        let mut out = BytesMut::new();
        wire::put_varint(&mut out, value);
        assert_eq!(&out[..], expected, "{value}");
        assert_eq!(wire::varint_len(value), expected.len());
        assert_eq!(
            wire::peek_varint(expected),
            Ok(Some((value, expected.len())))
        );
    }
}

#[test]
fn mqtt_1_5_5_largest_remaining_length_is_accepted_and_awaited() {
    let header = [0x30, 0xFF, 0xFF, 0xFF, 0x7F];
    let mut buf = BytesMut::from(&header[..]);
    let max = 268_435_455 + 5;
    assert_eq!(decode(&mut buf, Some(ProtocolVersion::V5), max), Ok(None));
    assert_eq!(buf.len(), 5, "nothing consumed while incomplete");
}

#[test]
fn mqtt_1_5_5_five_byte_remaining_length_is_malformed() {
    let v = Some(ProtocolVersion::V3_1_1);
    assert_malformed(dec(&[0x30, 0x80, 0x80, 0x80, 0x80, 0x01], v));
    // Known as soon as the fourth byte says another follows.
    assert_malformed(dec(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF], v));
    // Three continuation bytes: still waiting for the fourth.
    assert_eq!(dec(&[0x30, 0xFF, 0xFF, 0xFF], v), Ok(None));
    assert_eq!(dec(&[0x30], v), Ok(None));
    assert_eq!(dec(&[], v), Ok(None));
}

#[test]
fn mqtt_size_cap_is_enforced_from_the_fixed_header_alone() {
    let v = Some(ProtocolVersion::V5);
    // Two bytes buffered announce a 129-byte packet.
    let mut buf = BytesMut::from(&[0x30, 0x7F][..]);
    assert_eq!(
        decode(&mut buf, v, 128),
        Err(DecodeError::PacketTooLarge {
            size: 129,
            max: 128
        })
    );
    let mut buf = BytesMut::from(&[0x30, 0x7F][..]);
    assert_eq!(decode(&mut buf, v, 129), Ok(None));
    // The largest announcement is refused without waiting for 256 MiB.
    let mut buf = BytesMut::from(&[0x30, 0xFF, 0xFF, 0xFF, 0x7F][..]);
    assert_eq!(
        decode(&mut buf, v, 1 << 20),
        Err(DecodeError::PacketTooLarge {
            size: 268_435_460,
            max: 1 << 20
        })
    );
    let err = DecodeError::PacketTooLarge { size: 2, max: 1 };
    assert_eq!(err.reason_code(), ReasonCode::PACKET_TOO_LARGE);
}

#[test]
fn mqtt_size_cap_counts_the_whole_packet() {
    let v = Some(ProtocolVersion::V3_1_1);
    let p = publish_with_remaining(100);
    let bytes = enc(&p, ProtocolVersion::V3_1_1);
    assert_eq!(bytes.len(), 102);
    let mut buf = BytesMut::from(&bytes[..]);
    assert_eq!(decode(&mut buf, v, 102), Ok(Some(p)));
    let mut buf = BytesMut::from(&bytes[..]);
    assert!(matches!(
        decode(&mut buf, v, 101),
        Err(DecodeError::PacketTooLarge { size: 102, .. })
    ));
}

#[test]
fn mqtt_3_1_0_1_first_packet_must_be_connect() {
    for first in [0x20, 0x30, 0x82, 0xC0, 0xE0, 0xF0, 0x00] {
        assert_protocol_error(dec(&[first, 0], None));
    }
    let e = dec(&[0xC0, 0], None).unwrap_err();
    assert_eq!(e.reason_code(), ReasonCode::PROTOCOL_ERROR);
}

#[test]
fn mqtt_2_1_2_reserved_packet_types_are_malformed() {
    for v in VERSIONS {
        assert_malformed(dec(&[0x00, 0], Some(v)));
    }
    assert_malformed(dec(&[0xF0, 0], Some(ProtocolVersion::V3_1_1)));
    assert_malformed(dec(&[0xF0, 0], Some(ProtocolVersion::V3_1)));
    assert_eq!(
        dec(&[0xF0, 0], Some(ProtocolVersion::V5)),
        Ok(Some(Packet::Auth(Auth::default())))
    );
}

#[test]
fn mqtt_2_2_2_2_subscribe_flags_must_be_0010() {
    let body = [0, 1, 0, 1, b'a', 0];
    for v in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        let props: &[u8] = if v.is_v5() { &[0] } else { &[] };
        let body = [&body[..2], props, &body[2..]].concat();
        assert!(matches!(dec(&frame(0x82, &body), Some(v)), Ok(Some(_))));
        for flags in [0x0, 0x1, 0x3, 0x8, 0xA] {
            assert_malformed(dec(&frame(0x80 | flags, &body), Some(v)));
        }
    }
}

#[test]
fn mqtt_2_2_2_2_unsubscribe_flags_must_be_0010() {
    let body = [0, 1, 0, 1, b'a'];
    let v = Some(ProtocolVersion::V3_1_1);
    assert!(matches!(dec(&frame(0xA2, &body), v), Ok(Some(_))));
    assert_malformed(dec(&frame(0xA0, &body), v));
    assert_malformed(dec(&frame(0xA3, &body), v));
}

#[test]
fn mqtt_2_2_2_2_pubrel_flags_must_be_0010() {
    let v = Some(ProtocolVersion::V3_1_1);
    assert!(matches!(
        dec(&[0x62, 2, 0, 1], v),
        Ok(Some(Packet::PubRel(_)))
    ));
    assert_malformed(dec(&[0x60, 2, 0, 1], v));
    assert_malformed(dec(&[0x6A, 2, 0, 1], v));
}

#[test]
fn mqtt_2_2_2_1_other_packets_flags_must_be_0000() {
    for v in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        let v = Some(v);
        for packet in [
            &[0x21, 2, 0, 0][..],
            &[0x41, 2, 0, 1],
            &[0x58, 2, 0, 1],
            &[0x72, 2, 0, 1],
            &[0x92, 3, 0, 1, 0],
            &[0xB2, 2, 0, 1],
            &[0xC1, 0],
            &[0xD4, 0],
            &[0xE2, 0],
        ] {
            assert_malformed(dec(packet, v));
        }
    }
    assert_malformed(dec(&[0xF1, 0], Some(ProtocolVersion::V5)));
    // Before a version is known CONNECT's flags are still checked.
    assert_malformed(dec(&frame(0x11, &[0, 4]), None));
}

#[test]
fn mqtt_3_1_tolerates_legacy_fixed_header_flags() {
    // MQTT 3.1 clients put QoS 1 (and DUP on retries) on SUBSCRIBE and PUBREL.
    let v = Some(ProtocolVersion::V3_1);
    assert!(matches!(
        dec(&[0x6A, 2, 0, 1], v),
        Ok(Some(Packet::PubRel(_)))
    ));
    let sub = frame(0x8A, &[0, 1, 0, 1, b'a', 1]);
    assert!(matches!(dec(&sub, v), Ok(Some(Packet::Subscribe(_)))));
}
