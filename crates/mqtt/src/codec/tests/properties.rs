//! MQTT 5 property rules (section 2.2.2 and each property's section): every
//! property against every packet, repetition, value ranges.

use super::*;

/// Every property identifier with a valid encoded value.
const ALL: [(u8, &[u8]); 27] = [
    (0x01, &[1]),
    (0x02, &[0, 0, 0, 9]),
    (0x03, &[0, 1, b'x']),
    (0x08, &[0, 1, b'r']),
    (0x09, &[0, 1, 7]),
    (0x0B, &[5]),
    (0x11, &[0, 0, 0, 9]),
    (0x12, &[0, 1, b'x']),
    (0x13, &[0, 9]),
    (0x15, &[0, 1, b'm']),
    (0x16, &[0, 1, 7]),
    (0x17, &[1]),
    (0x18, &[0, 0, 0, 9]),
    (0x19, &[1]),
    (0x1A, &[0, 1, b'x']),
    (0x1C, &[0, 1, b'x']),
    (0x1F, &[0, 1, b'x']),
    (0x21, &[0, 9]),
    (0x22, &[0, 9]),
    (0x23, &[0, 9]),
    (0x24, &[1]),
    (0x25, &[1]),
    (0x26, &[0, 1, b'k', 0, 1, b'v']),
    (0x27, &[0, 0, 0, 9]),
    (0x28, &[1]),
    (0x29, &[1]),
    (0x2A, &[1]),
];

/// The packets that carry properties, each with the identifiers it allows
/// (table 2-4) and a builder wrapping a property block into a frame.
type Builder = fn(&[u8]) -> Vec<u8>;
const PACKETS: [(&str, &[u8], Builder); 13] = [
    (
        "CONNECT",
        &[0x11, 0x21, 0x27, 0x22, 0x19, 0x17, 0x26, 0x15, 0x16],
        |p| frame(0x10, &[b"\0\x04MQTT\x05\x02\0\x3c", p, b"\0\x01c"].concat()),
    ),
    ("will", &[0x18, 0x01, 0x02, 0x03, 0x08, 0x09, 0x26], |p| {
        let head = b"\0\x04MQTT\x05\x06\0\x3c\0\0\x01c";
        frame(0x10, &[&head[..], p, b"\0\x01w\0\x01x"].concat())
    }),
    (
        "CONNACK",
        &[
            0x11, 0x21, 0x24, 0x25, 0x27, 0x12, 0x22, 0x1F, 0x26, 0x28, 0x29, 0x2A, 0x13, 0x1A,
            0x1C, 0x15, 0x16,
        ],
        |p| frame(0x20, &[&[0, 0][..], p].concat()),
    ),
    (
        "PUBLISH",
        &[0x01, 0x02, 0x23, 0x08, 0x09, 0x26, 0x0B, 0x03],
        |p| frame(0x32, &[&b"\0\x01t\0\x01"[..], p, b"payload"].concat()),
    ),
    ("PUBACK", &[0x1F, 0x26], |p| {
        frame(0x40, &[&[0, 1, 0][..], p].concat())
    }),
    ("PUBREC", &[0x1F, 0x26], |p| {
        frame(0x50, &[&[0, 1, 0][..], p].concat())
    }),
    ("PUBREL", &[0x1F, 0x26], |p| {
        frame(0x62, &[&[0, 1, 0][..], p].concat())
    }),
    ("PUBCOMP", &[0x1F, 0x26], |p| {
        frame(0x70, &[&[0, 1, 0][..], p].concat())
    }),
    ("SUBSCRIBE", &[0x0B, 0x26], |p| {
        frame(0x82, &[&[0, 1][..], p, &[0, 1, b'a', 1]].concat())
    }),
    ("SUBACK", &[0x1F, 0x26], |p| {
        frame(0x90, &[&[0, 1][..], p, &[1]].concat())
    }),
    ("UNSUBSCRIBE", &[0x26], |p| {
        frame(0xA2, &[&[0, 1][..], p, &[0, 1, b'a']].concat())
    }),
    ("UNSUBACK", &[0x1F, 0x26], |p| {
        frame(0xB0, &[&[0, 1][..], p, &[0]].concat())
    }),
    ("DISCONNECT", &[0x11, 0x1F, 0x26, 0x1C], |p| {
        frame(0xE0, &[&[0][..], p].concat())
    }),
];

/// AUTH is built apart: the matrix above would need a 14th row.
fn auth(p: &[u8]) -> Vec<u8> {
    frame(0xF0, &[&[0x18][..], p].concat())
}

/// A property block holding `props` (identifier, value) in order.
fn block(props: &[(u8, &[u8])]) -> Vec<u8> {
    let content: Vec<u8> = props
        .iter()
        .flat_map(|(id, value)| [&[*id][..], value].concat())
        .collect();
    let mut out = BytesMut::new();
    wire::put_varint(&mut out, content.len());
    out.extend_from_slice(&content);
    out.to_vec()
}

/// Authentication Data needs an Authentication Method in CONNECT.
fn with_method(packet: &str, id: u8, value: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut props = vec![(id, value.to_vec())];
    if packet == "CONNECT" && id == 0x16 {
        props.insert(0, (0x15, vec![0, 1, b'm']));
    }
    props
}

fn decode_v5(bytes: &[u8]) -> Result<Option<Packet>, DecodeError> {
    let version = if bytes[0] >> 4 == 1 {
        None
    } else {
        Some(ProtocolVersion::V5)
    };
    dec(bytes, version)
}

fn build(builder: Builder, props: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let refs: Vec<(u8, &[u8])> = props.iter().map(|(id, v)| (*id, &v[..])).collect();
    builder(&block(&refs))
}

#[test]
fn mqtt_2_2_2_2_property_not_valid_for_its_packet_is_malformed() {
    let mut rows = PACKETS.to_vec();
    rows.push(("AUTH", &[0x15, 0x16, 0x1F, 0x26], auth));
    for (packet, allowed, builder) in rows {
        for (id, value) in ALL {
            let bytes = build(builder, &with_method(packet, id, value));
            let out = decode_v5(&bytes);
            if allowed.contains(&id) {
                assert!(matches!(out, Ok(Some(_))), "{packet} {id:#x}: {out:?}");
            } else {
                assert!(
                    matches!(out, Err(DecodeError::MalformedPacket(_))),
                    "{packet} {id:#x}: {out:?}"
                );
            }
        }
    }
}

#[test]
fn mqtt_2_2_2_2_only_user_property_and_publish_subscription_id_repeat() {
    let mut rows = PACKETS.to_vec();
    rows.push(("AUTH", &[0x15, 0x16, 0x1F, 0x26], auth));
    for (packet, allowed, builder) in rows {
        for (id, value) in ALL.into_iter().filter(|(id, _)| allowed.contains(id)) {
            let mut props = with_method(packet, id, value);
            props.push((id, value.to_vec()));
            let out = decode_v5(&build(builder, &props));
            if id == 0x26 || (packet == "PUBLISH" && id == 0x0B) {
                assert!(matches!(out, Ok(Some(_))), "{packet} {id:#x}: {out:?}");
            } else {
                assert!(
                    matches!(out, Err(DecodeError::ProtocolError(_))),
                    "{packet} {id:#x}: {out:?}"
                );
            }
        }
    }
}

#[test]
fn mqtt_3_3_2_3_user_properties_keep_their_order_and_repeats() {
    let props = [
        (0x26, &b"\0\x01b\0\x011"[..]),
        (0x26, b"\0\x01a\0\x012"),
        (0x26, b"\0\x01b\0\x013"),
    ];
    let bytes = PACKETS[3].2(&block(&props));
    let Ok(Some(Packet::Publish(p))) = decode_v5(&bytes) else {
        panic!("not decoded");
    };
    let pairs: Vec<(&str, &str)> = p
        .properties
        .user_properties
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(pairs, [("b", "1"), ("a", "2"), ("b", "3")]);
}

#[test]
fn mqtt_2_2_2_2_unknown_property_identifier_is_malformed() {
    for id in [0x00, 0x04, 0x0A, 0x14, 0x2B, 0x7F] {
        let bytes = PACKETS[3].2(&block(&[(id, &[0])]));
        assert_malformed(decode_v5(&bytes));
    }
}

#[test]
fn mqtt_2_2_2_1_property_length_beyond_the_packet_is_malformed() {
    assert_malformed(dec(&[0x40, 4, 0, 1, 0, 5], Some(ProtocolVersion::V5)));
    // A property cut by the end of its block.
    assert_malformed(dec(
        &[0x40, 6, 0, 1, 0, 2, 0x1F, 0],
        Some(ProtocolVersion::V5),
    ));
}

/// Each (packet row, identifier, out-of-range value) must be a protocol
/// error.
#[test]
fn mqtt_property_values_out_of_range_are_protocol_errors() {
    for (row, id, value) in [
        (3, 0x01, &[2][..]),      // Payload Format Indicator
        (3, 0x23, &[0, 0]),       // Topic Alias 0 [MQTT-3.3.2-8]
        (3, 0x0B, &[0]),          // Subscription Identifier 0
        (8, 0x0B, &[0]),          // ... in SUBSCRIBE
        (0, 0x21, &[0, 0]),       // Receive Maximum 0
        (0, 0x27, &[0, 0, 0, 0]), // Maximum Packet Size 0
        (0, 0x17, &[2]),          // Request Problem Information
        (0, 0x19, &[2]),          // Request Response Information
        (1, 0x01, &[3]),          // will Payload Format Indicator
        (2, 0x24, &[2]),          // Maximum QoS 2
        (2, 0x25, &[2]),          // Retain Available
        (2, 0x28, &[2]),          // Wildcard Subscription Available
        (2, 0x29, &[2]),          // Subscription Identifier Available
        (2, 0x2A, &[2]),          // Shared Subscription Available
        (2, 0x21, &[0, 0]),       // CONNACK Receive Maximum 0
        (2, 0x27, &[0, 0, 0, 0]), // CONNACK Maximum Packet Size 0
    ] {
        let (packet, _, builder) = PACKETS[row];
        let out = decode_v5(&builder(&block(&[(id, value)])));
        assert!(
            matches!(out, Err(DecodeError::ProtocolError(_))),
            "{packet} {id:#x} {value:?}: {out:?}"
        );
    }
}

#[test]
fn mqtt_3_1_2_11_authentication_data_needs_a_method() {
    let bytes = PACKETS[0].2(&block(&[(0x16, &[0, 1, 7])]));
    assert_protocol_error(decode_v5(&bytes));
}

#[test]
fn mqtt_3_3_2_14_response_topic_must_not_contain_wildcards() {
    let bytes = PACKETS[3].2(&block(&[(0x08, &[0, 3, b'a', b'/', b'#'])]));
    assert_malformed(decode_v5(&bytes));
}

#[test]
fn mqtt_subscription_identifier_is_a_variable_byte_integer() {
    let big = [0xFF, 0xFF, 0xFF, 0x7F];
    let bytes = PACKETS[8].2(&block(&[(0x0B, &big)]));
    let Ok(Some(Packet::Subscribe(s))) = decode_v5(&bytes) else {
        panic!("not decoded");
    };
    assert_eq!(s.properties.subscription_identifier, Some(268_435_455));
    let five = [0xFF, 0xFF, 0xFF, 0xFF, 0x01];
    assert_malformed(decode_v5(&PACKETS[8].2(&block(&[(0x0B, &five)]))));
}

#[test]
fn mqtt_properties_are_ignored_as_bytes_before_v5() {
    // A 3.1.1 PUBLISH has no property block: the bytes are payload.
    let body = [&b"\0\x01t"[..], &[0x00]].concat();
    let Ok(Some(Packet::Publish(p))) = dec(&frame(0x30, &body), Some(ProtocolVersion::V3_1_1))
    else {
        panic!("not decoded");
    };
    assert_eq!(&p.payload[..], &[0x00]);
}
