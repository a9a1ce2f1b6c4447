//! docs/interop.md against the code: every table marked
//! `<!-- checked: name -->` is read back here and each row compared with
//! what the conversion functions do, so the page cannot drift from them.

use bytes::Bytes;
use junction_core::interop::{self, swap_separators, value_text};
use junction_core::{FieldTable, FieldValue, Message, Origin};
use junction_mqtt::codec::{Publish, PublishProperties, QoS, TopicName};

fn page() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/interop.md");
    std::fs::read_to_string(path).expect("docs/interop.md")
}

/// The body rows of the table after `<!-- checked: name -->`, as cells.
fn table(page: &str, name: &str) -> Vec<Vec<String>> {
    let marker = format!("<!-- checked: {name} -->");
    let start = page
        .find(&marker)
        .unwrap_or_else(|| panic!("no table {name}"));
    let rows: Vec<Vec<String>> = page[start + marker.len()..]
        .lines()
        .skip_while(|l| l.trim().is_empty())
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            l.trim()
                .trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_string())
                .collect()
        })
        .collect();
    assert!(rows.len() > 2, "table {name} has no rows");
    // The header and the |---| line.
    rows[2..].to_vec()
}

/// The `code` spans of a cell.
fn codes(cell: &str) -> Vec<String> {
    cell.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// The first `code` span of a cell; None when it has none.
fn code(cell: &str) -> Option<String> {
    codes(cell).into_iter().next()
}

fn publish_with_response_topic(topic: &str) -> Message {
    let p = Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: TopicName::new("req").unwrap(),
        packet_id: Some(1),
        properties: PublishProperties {
            response_topic: Some(TopicName::new(topic).unwrap()),
            ..PublishProperties::default()
        },
        payload: Bytes::new(),
    };
    junction_mqtt::convert::to_core(&p, "req", Origin::INTERNAL)
}

#[test]
fn value_text_table_is_what_the_code_writes() {
    let bytes = |b: &'static [u8]| Bytes::from_static(b);
    // The example column of each row, as a value.
    let examples: Vec<(&str, &str, FieldValue)> = vec![
        ("boolean", "true", FieldValue::Bool(true)),
        ("short-short-int", "-8", FieldValue::I8(-8)),
        ("short-short-uint", "200", FieldValue::U8(200)),
        ("short-int", "-300", FieldValue::I16(-300)),
        ("short-uint", "60000", FieldValue::U16(60000)),
        ("long-int", "-70000", FieldValue::I32(-70000)),
        ("long-uint", "4000000000", FieldValue::U32(4_000_000_000)),
        (
            "long-long-int",
            "-9000000000",
            FieldValue::I64(-9_000_000_000),
        ),
        ("float", "0.5", FieldValue::F32(0.5)),
        ("double", "2.5e-300", FieldValue::F64(2.5e-300)),
        ("double", "NaN", FieldValue::F64(f64::NAN)),
        (
            "decimal",
            "scale 2, value 150",
            FieldValue::Decimal {
                scale: 2,
                value: 150,
            },
        ),
        ("short string", "ok", FieldValue::ShortString("ok".into())),
        ("long string, UTF-8", "héllo", FieldValue::string("héllo")),
        (
            "long string, not UTF-8",
            "bytes 00 FF",
            FieldValue::LongString(bytes(b"\x00\xff")),
        ),
        (
            "timestamp",
            "1700000000",
            FieldValue::Timestamp(1_700_000_000),
        ),
        (
            "byte array",
            "bytes 01 02 03",
            FieldValue::ByteArray(bytes(b"\x01\x02\x03")),
        ),
        ("void", "", FieldValue::Void),
        (
            "array",
            "[1, \"a\", true]",
            FieldValue::Array(vec![
                FieldValue::I32(1),
                FieldValue::string("a"),
                FieldValue::Bool(true),
            ]),
        ),
        (
            "table",
            "{n: 1, s: \"x\"}",
            FieldValue::Table(FieldTable(vec![
                ("s".into(), FieldValue::string("x")),
                ("n".into(), FieldValue::U8(1)),
            ])),
        ),
    ];
    let rows = table(&page(), "value-text");
    assert_eq!(rows.len(), examples.len(), "one row per example");
    for (row, (kind, example, value)) in rows.iter().zip(&examples) {
        assert_eq!((row[0].as_str(), row[1].as_str()), (*kind, *example));
        let text = code(&row[2]).unwrap_or_else(|| panic!("row {kind}: no text"));
        assert_eq!(value_text(value), text, "row {kind} {example}");
    }
}

#[test]
fn names_table_is_what_the_adapters_do() {
    for row in table(&page(), "names") {
        let (mqtt, key, stomp) = (
            code(&row[0]).unwrap(),
            code(&row[1]).unwrap(),
            code(&row[2]).unwrap(),
        );
        assert_eq!(swap_separators(&mqtt), key, "{mqtt}");
        assert_eq!(swap_separators(&key), mqtt, "{key}");
        let m = Message::new(interop::TOPIC_EXCHANGE, key.clone(), Bytes::new());
        assert_eq!(junction_stomp::convert::destination_of(&m), stomp);
        let parsed = junction_stomp::convert::Destination::parse(&stomp).unwrap();
        assert_eq!(parsed, junction_stomp::convert::Destination::Topic(key));
    }
}

#[test]
fn reply_in_table_is_what_the_adapters_do() {
    let mut checked = 0;
    for row in table(&page(), "reply-in") {
        let Some(core) = code(&row[1]) else {
            continue;
        };
        // Rows whose core value the broker makes at run time (direct
        // reply-to, temp queues) are checked end to end, not here.
        if core.contains('<') || core.contains('…') {
            continue;
        }
        // Every value the row names (`reply_to` is the field's name).
        for given in codes(&row[0]).into_iter().filter(|c| c != "reply_to") {
            let got = if row[0].starts_with("MQTT") {
                publish_with_response_topic(&given).properties.reply_to
            } else if row[0].starts_with("STOMP") {
                let header = given.strip_prefix("reply-to:").unwrap_or(&given);
                Some(junction_stomp::convert::reply_to_core(header))
            } else {
                // AMQP's reply_to is the core's.
                Some(given.clone())
            };
            assert_eq!(got.as_deref(), Some(core.as_str()), "{}", row[0]);
            checked += 1;
        }
    }
    assert!(checked >= 5, "only {checked} rows checked");
    // The header that goes with an MQTT Response Topic.
    let m = publish_with_response_topic("reply/dev7");
    assert_eq!(
        m.properties.headers.get(interop::H_REPLY_TO_TOPIC),
        Some(&FieldValue::string("reply.dev7"))
    );
}

#[test]
fn reply_out_table_is_what_the_adapters_do() {
    let rows = table(&page(), "reply-out");
    assert_eq!(rows.len(), 4);
    for row in rows {
        let core = code(&row[0]).unwrap();
        assert_eq!(code(&row[1]).as_deref(), Some(core.as_str()), "AMQP");
        let mut m = Message::new("", "q", Bytes::new());
        m.properties.reply_to = Some(core.clone());
        let topic = junction_mqtt::convert::from_core(&m, 0)
            .response_topic
            .map(|t| t.as_str().to_string());
        assert_eq!(topic, code(&row[2]), "MQTT for {core}");
        assert_eq!(
            Some(junction_stomp::convert::reply_to_stomp(&core)),
            code(&row[3]),
            "STOMP for {core}"
        );
    }
}

#[test]
fn publish_qos_table_is_what_mqtt_subscribers_get() {
    use junction_mqtt::convert::published_qos;
    let rows = table(&page(), "publish-qos");
    assert_eq!(rows.len(), 4);
    let mut m = Message::new("amq.topic", "a", Bytes::new());
    m.properties
        .headers
        .insert(interop::H_PUBLISH_QOS, FieldValue::I8(2));
    assert_eq!(published_qos(&m), QoS::ExactlyOnce, "{}", rows[0][0]);
    m.properties
        .headers
        .insert(interop::H_PUBLISH_QOS, FieldValue::string("2"));
    assert_eq!(published_qos(&m), QoS::ExactlyOnce, "{}", rows[1][0]);
    let persistent = Message::new("amq.topic", "a", Bytes::new()).persistent();
    assert_eq!(
        published_qos(&persistent),
        QoS::AtLeastOnce,
        "{}",
        rows[2][0]
    );
    let transient = Message::new("amq.topic", "a", Bytes::new());
    assert_eq!(published_qos(&transient), QoS::AtMostOnce, "{}", rows[3][0]);
    assert_eq!(
        rows.iter().map(|r| r[1].as_str()).collect::<Vec<_>>(),
        ["q", "that value", "1", "0"]
    );
}
