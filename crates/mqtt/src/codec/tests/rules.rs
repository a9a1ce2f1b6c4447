//! One test per packet-level rule, named after its clause (MQTT 5 numbering
//! unless the name says 3.1.1). Packets are built byte by byte so that each
//! breaks exactly one rule.

use super::*;

/// A CONNECT frame: protocol name and level, connect flags, keep alive 60,
/// an empty property block for level 5, then `payload`.
fn connect(name: &[u8], level: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut body = vec![0, name.len() as u8];
    body.extend_from_slice(name);
    body.extend_from_slice(&[level, flags, 0, 60]);
    if level == 5 {
        body.push(0);
    }
    body.extend_from_slice(payload);
    frame(0x10, &body)
}

/// A length-prefixed string.
fn s(text: &[u8]) -> Vec<u8> {
    [&[0, text.len() as u8][..], text].concat()
}

#[test]
fn mqtt_3_1_2_1_protocol_name_must_be_mqtt() {
    let e = dec(&connect(b"MQTX", 4, 0x02, &s(b"c")), None).unwrap_err();
    assert_eq!(e, DecodeError::BadProtocolName);
    assert_eq!(e.reason_code(), ReasonCode::UNSUPPORTED_PROTOCOL_VERSION);
    assert_eq!(e.connack_return_code(), None);
}

#[test]
fn mqtt_3_1_2_2_unsupported_protocol_level() {
    for (name, level) in [
        (&b"MQTT"[..], 6),
        (b"MQTT", 3),
        (b"MQIsdp", 4),
        (b"MQTT", 0),
    ] {
        let e = dec(&connect(name, level, 0x02, &s(b"c")), None).unwrap_err();
        assert_eq!(e, DecodeError::UnsupportedProtocolVersion(level));
        assert_eq!(e.reason_code(), ReasonCode::UNSUPPORTED_PROTOCOL_VERSION);
        assert_eq!(e.connack_return_code(), Some(0x01));
    }
}

#[test]
fn mqtt_3_1_2_2_each_level_selects_its_version() {
    for (name, level, v) in [
        (&b"MQIsdp"[..], 3, ProtocolVersion::V3_1),
        (b"MQTT", 4, ProtocolVersion::V3_1_1),
        (b"MQTT", 5, ProtocolVersion::V5),
    ] {
        let Ok(Some(Packet::Connect(c))) = dec(&connect(name, level, 0x02, &s(b"c")), None) else {
            panic!("level {level} refused");
        };
        assert_eq!(c.version, v);
        assert_eq!(c.client_id, "c");
        assert!(c.clean_start);
        assert_eq!(c.keep_alive, 60);
    }
}

#[test]
fn mqtt_3_1_2_3_connect_reserved_flag_must_be_0() {
    for level in [4, 5] {
        assert_malformed(dec(&connect(b"MQTT", level, 0x03, &s(b"c")), None));
    }
}

#[test]
fn mqtt_3_1_2_11_will_qos_must_be_0_without_will_flag() {
    for (level, flags) in [(4, 0x0A), (5, 0x12), (4, 0x1A)] {
        assert_malformed(dec(&connect(b"MQTT", level, flags, &s(b"c")), None));
    }
}

#[test]
fn mqtt_3_1_2_12_will_qos_3_is_malformed() {
    let payload = [s(b"c"), s(b"w"), s(b"x")].concat();
    assert_malformed(dec(&connect(b"MQTT", 4, 0x1E, &payload), None));
    let ok = connect(b"MQTT", 4, 0x16, &payload);
    let Ok(Some(Packet::Connect(c))) = dec(&ok, None) else {
        panic!("will QoS 2 refused");
    };
    let will = c.will.expect("will");
    assert_eq!((will.qos, will.retain), (QoS::ExactlyOnce, false));
    assert_eq!(will.topic.as_str(), "w");
    assert_eq!(&will.payload[..], b"x");
}

#[test]
fn mqtt_3_1_2_13_will_retain_must_be_0_without_will_flag() {
    for level in [4, 5] {
        assert_malformed(dec(&connect(b"MQTT", level, 0x22, &s(b"c")), None));
    }
}

#[test]
fn mqtt_3_1_2_9_will_fields_must_be_present_with_will_flag() {
    assert_malformed(dec(&connect(b"MQTT", 4, 0x06, &s(b"c")), None));
}

#[test]
fn mqtt_3_1_2_22_password_needs_user_name_in_3_1_1() {
    let payload = [s(b"c"), s(b"pw")].concat();
    assert_malformed(dec(&connect(b"MQTT", 4, 0x42, &payload), None));
    assert_malformed(dec(&connect(b"MQIsdp", 3, 0x42, &payload), None));
    // MQTT 5 allows a password alone (section 3.1.2.9).
    let Ok(Some(Packet::Connect(c))) = dec(&connect(b"MQTT", 5, 0x42, &payload), None) else {
        panic!("v5 password without user name refused");
    };
    assert_eq!(
        (c.username, c.password.as_deref()),
        (None, Some(&b"pw"[..]))
    );
}

#[test]
fn mqtt_3_1_2_19_user_name_must_be_present_with_its_flag() {
    assert_malformed(dec(&connect(b"MQTT", 4, 0x82, &s(b"c")), None));
}

#[test]
fn mqtt_3_1_3_11_will_topic_must_be_a_topic_name() {
    let payload = [s(b"c"), s(b"a/#"), s(b"x")].concat();
    assert_malformed(dec(&connect(b"MQTT", 4, 0x06, &payload), None));
}

#[test]
fn mqtt_1_5_4_1_strings_must_be_well_formed_utf8() {
    for bad in [
        &[0xC3, 0x28][..],
        &[0xED, 0xA0, 0x80],
        &[0xC0, 0x80],
        &[0xFF],
    ] {
        assert_malformed(dec(&connect(b"MQTT", 4, 0x02, &s(bad)), None));
        let publish = frame(0x30, &[s(bad), b"x".to_vec()].concat());
        assert_malformed(dec(&publish, Some(ProtocolVersion::V3_1_1)));
    }
}

#[test]
fn mqtt_1_5_4_2_strings_must_not_contain_nul() {
    assert_malformed(dec(&connect(b"MQTT", 4, 0x02, &s(b"a\0b")), None));
    let payload = [s(b"c"), s(b"u\0")].concat();
    assert_malformed(dec(&connect(b"MQTT", 4, 0x82, &payload), None));
}

#[test]
fn mqtt_1_5_4_3_byte_order_mark_is_kept() {
    let topic = TopicName::new("\u{FEFF}a").unwrap();
    let p = Packet::Publish(Publish {
        topic,
        ..Publish::default()
    });
    round_trip(&p, ProtocolVersion::V5);
}

#[test]
fn mqtt_3_3_1_2_dup_must_be_0_for_qos_0() {
    let body = [s(b"t"), b"x".to_vec()].concat();
    assert_malformed(dec(&frame(0x38, &body), Some(ProtocolVersion::V3_1_1)));
}

#[test]
fn mqtt_3_3_1_4_qos_3_is_malformed() {
    let body = [s(b"t"), vec![0, 1]].concat();
    for v in VERSIONS {
        assert_malformed(dec(&frame(0x36, &body), Some(v)));
    }
}

#[test]
fn mqtt_3_3_2_2_topic_name_must_not_contain_wildcards() {
    for topic in [&b"a/+"[..], b"#", b"a/#"] {
        let body = [s(topic), b"x".to_vec()].concat();
        assert_malformed(dec(&frame(0x30, &body), Some(ProtocolVersion::V3_1_1)));
    }
}

#[test]
fn mqtt_2_3_1_1_packet_identifier_must_not_be_0() {
    let v = Some(ProtocolVersion::V3_1_1);
    assert_malformed(dec(&frame(0x32, &[s(b"t"), vec![0, 0]].concat()), v));
    assert_malformed(dec(
        &frame(0x82, &[vec![0, 0], s(b"a"), vec![0]].concat()),
        v,
    ));
    assert_malformed(dec(&frame(0xA2, &[vec![0, 0], s(b"a")].concat()), v));
    assert_malformed(dec(&[0x40, 2, 0, 0], v));
}

#[test]
fn mqtt_4_7_3_1_empty_topic_name_needs_a_topic_alias() {
    let body = [s(b""), b"x".to_vec()].concat();
    assert_malformed(dec(&frame(0x30, &body), Some(ProtocolVersion::V3_1_1)));
    let v5 = [s(b""), vec![0], b"x".to_vec()].concat();
    assert_protocol_error(dec(&frame(0x30, &v5), Some(ProtocolVersion::V5)));
    let aliased = [s(b""), vec![3, 0x23, 0, 1], b"x".to_vec()].concat();
    let Ok(Some(Packet::Publish(p))) = dec(&frame(0x30, &aliased), Some(ProtocolVersion::V5))
    else {
        panic!("alias-only PUBLISH refused");
    };
    assert!(p.topic.is_empty());
    assert_eq!(p.properties.topic_alias, Some(1));
}

#[test]
fn mqtt_3_8_3_2_subscribe_needs_a_topic_filter() {
    assert_protocol_error(dec(&[0x82, 2, 0, 1], Some(ProtocolVersion::V3_1_1)));
    assert_protocol_error(dec(&[0x82, 3, 0, 1, 0], Some(ProtocolVersion::V5)));
}

#[test]
fn mqtt_3_8_3_5_subscription_options_reserved_bits_must_be_0() {
    let v3 = |opts| frame(0x82, &[vec![0, 1], s(b"a"), vec![opts]].concat());
    let v5 = |opts| frame(0x82, &[vec![0, 1, 0], s(b"a"), vec![opts]].concat());
    // 3.1.1 [MQTT-3-8.3-4]: bits 2-7 are reserved.
    for opts in [0x04, 0x08, 0x10, 0x80] {
        assert_malformed(dec(&v3(opts), Some(ProtocolVersion::V3_1_1)));
    }
    for opts in [0x40, 0x80] {
        assert_malformed(dec(&v5(opts), Some(ProtocolVersion::V5)));
    }
    let Ok(Some(Packet::Subscribe(sub))) = dec(&v5(0x2E), Some(ProtocolVersion::V5)) else {
        panic!("valid options refused");
    };
    let options = sub.subscriptions[0].options;
    assert_eq!(
        options,
        SubscriptionOptions {
            qos: QoS::ExactlyOnce,
            no_local: true,
            retain_as_published: true,
            retain_handling: RetainHandling::DoNotSend,
        }
    );
}

#[test]
fn mqtt_3_8_3_1_subscription_qos_3_is_malformed() {
    let body = [vec![0, 1], s(b"a"), vec![3]].concat();
    assert_malformed(dec(&frame(0x82, &body), Some(ProtocolVersion::V3_1_1)));
}

#[test]
fn mqtt_3_8_3_1_retain_handling_3_is_a_protocol_error() {
    let body = [vec![0, 1, 0], s(b"a"), vec![0x30]].concat();
    assert_protocol_error(dec(&frame(0x82, &body), Some(ProtocolVersion::V5)));
}

#[test]
fn mqtt_3_8_3_4_no_local_on_a_shared_subscription_is_a_protocol_error() {
    let body = [vec![0, 1, 0], s(b"$share/g/a"), vec![0x04]].concat();
    assert_protocol_error(dec(&frame(0x82, &body), Some(ProtocolVersion::V5)));
}

#[test]
fn mqtt_4_8_2_2_malformed_shared_filter_is_refused_in_v5() {
    for filter in [&b"$share//a"[..], b"$share/+/a", b"$share/g", b"$share/g/"] {
        let body = [vec![0, 1, 0], s(filter), vec![0]].concat();
        assert_malformed(dec(&frame(0x82, &body), Some(ProtocolVersion::V5)));
    }
    // Before 5.0 `$share` is an ordinary topic level.
    let body = [vec![0, 1], s(b"$share/g"), vec![0]].concat();
    assert!(dec(&frame(0x82, &body), Some(ProtocolVersion::V3_1_1)).is_ok());
}

#[test]
fn mqtt_4_7_1_1_invalid_filters_are_malformed_in_subscribe_and_unsubscribe() {
    let v = Some(ProtocolVersion::V3_1_1);
    for filter in [&b"a/#/b"[..], b"a+", b"", b"a#"] {
        let sub = [vec![0, 1], s(filter), vec![0]].concat();
        assert_malformed(dec(&frame(0x82, &sub), v));
        let unsub = [vec![0, 1], s(filter)].concat();
        assert_malformed(dec(&frame(0xA2, &unsub), v));
    }
}

#[test]
fn mqtt_3_10_3_2_unsubscribe_needs_a_topic_filter() {
    assert_protocol_error(dec(&[0xA2, 2, 0, 1], Some(ProtocolVersion::V3_1_1)));
    assert_protocol_error(dec(&[0xA2, 3, 0, 1, 0], Some(ProtocolVersion::V5)));
}

#[test]
fn mqtt_3_2_2_1_connack_reserved_flags_must_be_0() {
    assert_malformed(dec(&[0x20, 2, 0x02, 0], Some(ProtocolVersion::V3_1_1)));
    assert_malformed(dec(&[0x20, 3, 0x80, 0, 0], Some(ProtocolVersion::V5)));
}

#[test]
fn mqtt_3_2_2_8_connack_reason_codes() {
    assert_protocol_error(dec(&[0x20, 3, 0, 0x8B, 0], Some(ProtocolVersion::V5)));
    assert_protocol_error(dec(&[0x20, 2, 0, 6], Some(ProtocolVersion::V3_1_1)));
    let Ok(Some(Packet::ConnAck(c))) = dec(&[0x20, 2, 0, 4], Some(ProtocolVersion::V3_1_1)) else {
        panic!("return code 4 refused");
    };
    assert_eq!(c.reason, ReasonCode::BAD_USER_NAME_OR_PASSWORD);
}

#[test]
fn mqtt_3_4_2_1_ack_reason_codes_must_suit_the_packet() {
    let v = Some(ProtocolVersion::V5);
    assert_protocol_error(dec(&[0x40, 3, 0, 1, 0x92], v));
    assert_protocol_error(dec(&[0x50, 3, 0, 1, 0x04], v));
    assert_protocol_error(dec(&[0x62, 3, 0, 1, 0x10], v));
    assert_protocol_error(dec(&[0x70, 3, 0, 1, 0x80], v));
    assert!(dec(&[0x70, 3, 0, 1, 0x92], v).is_ok());
}

#[test]
fn mqtt_3_9_3_2_suback_return_codes() {
    assert_protocol_error(dec(&[0x90, 3, 0, 1, 0x03], Some(ProtocolVersion::V3_1_1)));
    assert_protocol_error(dec(&[0x90, 3, 0, 1, 0x87], Some(ProtocolVersion::V3_1_1)));
    assert_protocol_error(dec(&[0x90, 4, 0, 1, 0, 0x03], Some(ProtocolVersion::V5)));
    assert!(dec(&[0x90, 4, 0, 1, 0, 0x9E], Some(ProtocolVersion::V5)).is_ok());
}

#[test]
fn mqtt_3_11_3_2_unsuback_reason_codes() {
    assert_protocol_error(dec(&[0xB0, 4, 0, 1, 0, 0x01], Some(ProtocolVersion::V5)));
    // Before 5.0 UNSUBACK is the identifier alone.
    assert_malformed(dec(&[0xB0, 3, 0, 1, 0], Some(ProtocolVersion::V3_1_1)));
}

#[test]
fn mqtt_3_14_2_1_disconnect_reason_codes() {
    assert_protocol_error(dec(&[0xE0, 1, 0x01], Some(ProtocolVersion::V5)));
    // Before 5.0 DISCONNECT has no body.
    assert_malformed(dec(&[0xE0, 1, 0x00], Some(ProtocolVersion::V3_1_1)));
}

#[test]
fn mqtt_3_15_2_1_auth_reason_codes() {
    assert_protocol_error(dec(&[0xF0, 2, 0x87, 0], Some(ProtocolVersion::V5)));
    assert!(dec(&[0xF0, 2, 0x19, 0], Some(ProtocolVersion::V5)).is_ok());
}

#[test]
fn mqtt_3_12_ping_has_no_body() {
    assert_malformed(dec(&[0xC0, 1, 0], Some(ProtocolVersion::V3_1_1)));
    assert_malformed(dec(&[0xD0, 1, 0], Some(ProtocolVersion::V5)));
}

#[test]
fn mqtt_trailing_bytes_after_the_fields_are_malformed() {
    assert_malformed(dec(&[0x40, 3, 0, 1, 0], Some(ProtocolVersion::V3_1_1)));
    let mut c = enc(
        &Packet::Connect(sample_connect(ProtocolVersion::V3_1_1)),
        ProtocolVersion::V3_1_1,
    )
    .to_vec();
    c[1] += 1;
    c.push(0);
    assert_malformed(dec(&c, None));
}

#[test]
fn mqtt_connect_debug_hides_the_password() {
    let text = format!("{:?}", sample_connect(ProtocolVersion::V5));
    assert!(
        text.contains("<redacted>") && !text.contains("s3cret"),
        "{text}"
    );
}
