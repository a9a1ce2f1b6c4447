//! STOMP destinations and headers to and from the core, as RabbitMQ's STOMP
//! plugin names them (docs/stomp.md has the tables):
//!
//! | destination | SEND publishes to | SUBSCRIBE consumes from |
//! |---|---|---|
//! | `/queue/q` | default exchange, key `q` (declares durable `q`) | durable queue `q` (declared if missing) |
//! | `/amq/queue/q` | default exchange, key `q` | existing queue `q` |
//! | `/topic/k` | `amq.topic`, key `k` | a queue bound to `amq.topic` with `k` |
//! | `/exchange/x/k` | exchange `x`, key `k` | a queue bound to `x` with `k` |
//! | `/temp-queue/t` | the connection's private queue `t` | (implicit) |
//! | `/reply-queue/q` | default exchange, key `q` | existing queue `q` |
//!
//! ActiveMQ's `>` (the rest of the name) in a topic or exchange key is
//! AMQP's `#`. Headers with a core property ([`to_core`]) go there; every
//! other header travels as a string header of the message, so AMQP
//! consumers and MQTT 5 user properties see it.

use bytes::Bytes;
use junction_core::{FieldValue, Message, Origin, Properties, interop};

use crate::codec::Headers;

/// The longest queue, exchange or routing-key name (AMQP's short string).
const MAX_NAME: usize = 255;

/// The exchange MQTT topics and STOMP `/topic/` destinations share.
pub const TOPIC_EXCHANGE: &str = junction_core::interop::TOPIC_EXCHANGE;

/// A parsed `destination` header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    /// `/queue/name`: a durable shared queue, declared on first use.
    Queue(String),
    /// `/amq/queue/name`: a queue that must already exist.
    AmqQueue(String),
    /// `/topic/key`: `amq.topic` with this routing key (a pattern when
    /// subscribing).
    Topic(String),
    /// `/exchange/name/key` (the key may be empty or hold `/`).
    Exchange { exchange: String, key: String },
    /// `/temp-queue/name`: a private reply queue of the connection.
    TempQueue(String),
    /// `/reply-queue/name`: the queue a `/temp-queue/` became (replies).
    ReplyQueue(String),
}

fn name(kind: &str, s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err(format!("{kind} destination without a name"));
    }
    if s.len() > MAX_NAME {
        return Err(format!("{kind} name longer than {MAX_NAME} bytes"));
    }
    if s.contains('/') {
        return Err(format!("{kind} name '{s}' contains '/' (write it as %2F)"));
    }
    Ok(unescape(s))
}

/// RabbitMQ's one escape in destination names: `%2F` is a `/` (queue
/// names such as an MQTT shared subscription's hold one).
fn unescape(s: &str) -> String {
    if s.contains('%') {
        s.replace("%2F", "/").replace("%2f", "/")
    } else {
        s.to_string()
    }
}

/// A queue or exchange name as it goes into a destination: `/` as `%2F`.
pub fn escape(name: &str) -> std::borrow::Cow<'_, str> {
    if name.contains('/') {
        name.replace('/', "%2F").into()
    } else {
        name.into()
    }
}

/// ActiveMQ's `>` wildcard (the rest of the name) as AMQP's `#`.
fn key(s: &str) -> Result<String, String> {
    if s.len() > MAX_NAME {
        return Err(format!("routing key longer than {MAX_NAME} bytes"));
    }
    Ok(s.split('.')
        .map(|w| if w == ">" { "#" } else { w })
        .collect::<Vec<_>>()
        .join("."))
}

impl Destination {
    /// Parses a destination header ("Unknown destination" otherwise, as
    /// RabbitMQ words it).
    pub fn parse(s: &str) -> Result<Destination, String> {
        if let Some(rest) = s.strip_prefix("/queue/") {
            Ok(Destination::Queue(name("queue", rest)?))
        } else if let Some(rest) = s.strip_prefix("/amq/queue/") {
            Ok(Destination::AmqQueue(name("queue", rest)?))
        } else if let Some(rest) = s.strip_prefix("/topic/") {
            if rest.is_empty() {
                return Err("topic destination without a name".into());
            }
            Ok(Destination::Topic(key(rest)?))
        } else if let Some(rest) = s.strip_prefix("/exchange/") {
            let (x, k) = rest.split_once('/').unwrap_or((rest, ""));
            Ok(Destination::Exchange {
                exchange: name("exchange", x)?,
                key: key(k)?,
            })
        } else if let Some(rest) = s.strip_prefix("/temp-queue/") {
            Ok(Destination::TempQueue(name("temp-queue", rest)?))
        } else if let Some(rest) = s.strip_prefix("/reply-queue/") {
            Ok(Destination::ReplyQueue(name("reply-queue", rest)?))
        } else {
            Err(format!("Unknown destination '{s}'"))
        }
    }
}

/// The `destination` a delivered message shows: where it was published,
/// in STOMP terms (`/topic/k` for `amq.topic`, MQTT's topics included).
pub fn destination_of(m: &Message) -> String {
    match m.exchange.as_str() {
        "" => format!("/queue/{}", escape(&m.routing_key)),
        TOPIC_EXCHANGE => format!("/topic/{}", m.routing_key),
        x => format!("/exchange/{}/{}", escape(x), m.routing_key),
    }
}

/// A `reply-to` header as the core's `reply_to` (docs/interop.md): a
/// queue destination becomes the bare queue name, which an AMQP responder
/// publishes to through the default exchange; `/topic/` and `/exchange/`
/// stay addresses the core resolves. `/temp-queue/` names are the
/// connection's to resolve first.
pub fn reply_to_core(v: &str) -> String {
    match Destination::parse(v) {
        Ok(Destination::Queue(q) | Destination::AmqQueue(q) | Destination::ReplyQueue(q)) => q,
        _ => v.to_string(),
    }
}

/// The core's `reply_to` as a STOMP `reply-to`: a plain queue name becomes
/// `/reply-queue/name`, which a STOMP responder can SEND to; an address
/// (`/topic/k`, from an MQTT Response Topic) stays as it is.
pub fn reply_to_stomp(v: &str) -> String {
    if v.starts_with('/') {
        v.to_string()
    } else {
        format!("/reply-queue/{}", escape(v))
    }
}

/// Headers that steer a frame (or are the codec's) and never travel with a
/// message.
const FRAME_HEADERS: [&str; 7] = [
    "destination",
    "receipt",
    "transaction",
    "content-length",
    "subscription",
    "ack",
    "id",
];

/// Headers that map onto core properties.
const PROPERTY_HEADERS: [&str; 14] = [
    "app-id",
    "content-type",
    "content-encoding",
    "correlation-id",
    "reply-to",
    "expiration",
    "expires",
    "priority",
    "persistent",
    "message-id",
    "amqp-message-id",
    "timestamp",
    "type",
    "user-id",
];

/// MESSAGE headers the adapter writes itself; a message header of the same
/// name is not passed on.
const MESSAGE_HEADERS: [&str; 7] = [
    "destination",
    "message-id",
    "subscription",
    "ack",
    "content-length",
    "redelivered",
    "receipt",
];

fn parse_u64(h: &str, v: &str) -> Result<u64, String> {
    v.trim()
        .parse::<u64>()
        .map_err(|_| format!("header {h} is not a non-negative integer: '{v}'"))
}

/// A SEND frame's headers and body as a core message (exchange and routing
/// key set by the caller from the destination; `reply_to` as given, for
/// the caller to resolve `/temp-queue/`). `now_ms` is the wall clock, for
/// ActiveMQ's absolute `expires`.
pub fn to_core(
    headers: &Headers,
    body: Bytes,
    origin: Origin,
    now_ms: u64,
) -> Result<Message, String> {
    let mut p = Properties {
        content_type: headers.get("content-type").map(str::to_string),
        content_encoding: headers.get("content-encoding").map(str::to_string),
        correlation_id: headers.get("correlation-id").map(str::to_string),
        reply_to: headers.get("reply-to").map(str::to_string),
        kind: headers.get("type").map(str::to_string),
        user_id: headers.get("user-id").map(str::to_string),
        app_id: headers.get("app-id").map(str::to_string),
        message_id: headers
            .get("amqp-message-id")
            .or_else(|| headers.get("message-id"))
            .map(str::to_string),
        ..Properties::default()
    };
    // Without `persistent:true` a message is transient: delivery mode 1,
    // said outright as MQTT's QoS 0 says it.
    let persistent = headers
        .get("persistent")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    p.delivery_mode = Some(if persistent { 2 } else { 1 });
    if let Some(v) = headers.get("priority") {
        let n = parse_u64("priority", v)?;
        p.priority = Some(n.min(255) as u8);
    }
    if let Some(v) = headers.get("expiration") {
        // RabbitMQ's: a TTL in milliseconds, as AMQP's expiration.
        p.expiration = Some(parse_u64("expiration", v)?.to_string());
    } else if let Some(v) = headers.get("expires") {
        // ActiveMQ's: an absolute time in Unix milliseconds, 0 = never.
        let at = parse_u64("expires", v)?;
        if at != 0 {
            p.expiration = Some(at.saturating_sub(now_ms).to_string());
        }
    }
    if let Some(v) = headers.get("timestamp") {
        // Milliseconds on the wire (ActiveMQ), seconds in the core (AMQP).
        p.timestamp = Some(parse_u64("timestamp", v)? / 1000);
    }
    // Repeated headers: the first wins. A set, so a frame of a thousand
    // headers costs a thousand steps, not a million (FieldTable::insert
    // scans the table).
    let mut seen = std::collections::HashSet::with_capacity(headers.len());
    for (k, v) in headers {
        if FRAME_HEADERS.contains(&k) || PROPERTY_HEADERS.contains(&k) || !seen.insert(k) {
            continue;
        }
        let value = match k {
            // Binary MQTT Correlation Data, as STOMP received it: base64
            // back to bytes, so an echoing responder returns it exact.
            interop::H_CORRELATION_DATA => match interop::base64_bytes(v) {
                Some(b) => FieldValue::ByteArray(b),
                None => FieldValue::string(v),
            },
            _ => FieldValue::string(v),
        };
        p.headers.0.push((k.to_string(), value));
    }
    let mut m = Message::new("", "", junction_core::message::detach_body(body)).with_properties(p);
    m.origin = origin;
    Ok(m)
}

/// The message headers of a MESSAGE frame for `m` (the caller adds
/// `destination`, `subscription`, `message-id`, `ack`, `redelivered` and
/// `content-length`).
pub fn from_core(m: &Message, out: &mut Headers) {
    let p = &m.properties;
    let text = [
        ("content-type", &p.content_type),
        ("content-encoding", &p.content_encoding),
        ("correlation-id", &p.correlation_id),
        ("expiration", &p.expiration),
        ("amqp-message-id", &p.message_id),
        ("type", &p.kind),
        ("user-id", &p.user_id),
        ("app-id", &p.app_id),
    ];
    for (name, value) in text {
        if let Some(v) = value {
            out.push(name, v.clone());
        }
    }
    if let Some(r) = &p.reply_to {
        out.push("reply-to", reply_to_stomp(r));
    }
    if let Some(n) = p.priority {
        out.push("priority", n.to_string());
    }
    out.push(
        "persistent",
        if p.is_persistent() { "true" } else { "false" },
    );
    if let Some(t) = p.timestamp {
        out.push("timestamp", t.saturating_mul(1000).to_string());
    }
    for (k, v) in p.headers.iter() {
        if MESSAGE_HEADERS.contains(&k) || PROPERTY_HEADERS.contains(&k) {
            continue;
        }
        out.push(k, junction_core::interop::value_text(v));
    }
}

/// Queue arguments given as SUBSCRIBE headers (RabbitMQ's names), typed as
/// an AMQP client would send them.
pub fn queue_arguments(headers: &Headers) -> Result<junction_core::FieldTable, String> {
    const INTEGERS: [&str; 6] = [
        "x-message-ttl",
        "x-expires",
        "x-max-length",
        "x-max-length-bytes",
        "x-max-priority",
        "x-delivery-limit",
    ];
    const STRINGS: [&str; 4] = [
        "x-overflow",
        "x-dead-letter-exchange",
        "x-dead-letter-routing-key",
        "x-queue-type",
    ];
    let mut t = junction_core::FieldTable::new();
    for name in INTEGERS {
        if let Some(v) = headers.get(name) {
            let n = v
                .trim()
                .parse::<i64>()
                .map_err(|_| format!("header {name} is not an integer: '{v}'"))?;
            t.insert(name, FieldValue::I64(n));
        }
    }
    for name in STRINGS {
        if let Some(v) = headers.get(name) {
            t.insert(name, FieldValue::string(v));
        }
    }
    if let Some(v) = headers.get("x-single-active-consumer") {
        t.insert("x-single-active-consumer", FieldValue::Bool(v == "true"));
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use junction_core::ConnectionId;

    fn headers(pairs: &[(&str, &str)]) -> Headers {
        pairs.iter().map(|(k, v)| (*k, *v)).collect()
    }

    #[test]
    fn destinations_parse_as_rabbitmq_names_them() {
        use Destination::*;
        let cases = [
            ("/queue/orders", Queue("orders".into())),
            ("/amq/queue/q1", AmqQueue("q1".into())),
            ("/topic/plant.7.temp", Topic("plant.7.temp".into())),
            ("/topic/plant.>", Topic("plant.#".into())),
            ("/topic/>", Topic("#".into())),
            (
                "/exchange/amq.direct/k/with/slash",
                Exchange {
                    exchange: "amq.direct".into(),
                    key: "k/with/slash".into(),
                },
            ),
            (
                "/exchange/logs",
                Exchange {
                    exchange: "logs".into(),
                    key: String::new(),
                },
            ),
            ("/temp-queue/replies", TempQueue("replies".into())),
            ("/reply-queue/amq.gen-x", ReplyQueue("amq.gen-x".into())),
            (
                "/amq/queue/mqtt-shared-g%2Fa%2f%2B",
                AmqQueue("mqtt-shared-g/a/%2B".into()),
            ),
        ];
        for (text, want) in cases {
            assert_eq!(Destination::parse(text), Ok(want), "{text}");
        }
        for bad in [
            "/queue/",
            "/queue/a/b",
            "orders",
            "/topic/",
            "/exchange//k",
            "",
        ] {
            assert!(Destination::parse(bad).is_err(), "{bad}");
        }
        assert!(Destination::parse(&format!("/queue/{}", "q".repeat(256))).is_err());
    }

    #[test]
    fn delivered_messages_name_where_they_were_published() {
        let m = |x: &str, k: &str| Message::new(x, k, Bytes::new());
        assert_eq!(destination_of(&m("amq.topic", "a.b")), "/topic/a.b");
        assert_eq!(destination_of(&m("", "q")), "/queue/q");
        assert_eq!(destination_of(&m("logs", "k")), "/exchange/logs/k");
        assert_eq!(destination_of(&m("", "a/b")), "/queue/a%2Fb");
    }

    #[test]
    fn send_headers_become_properties_and_the_rest_headers() {
        let h = headers(&[
            ("destination", "/queue/q"),
            ("content-type", "text/plain"),
            ("correlation-id", "c-1"),
            ("reply-to", "/queue/replies"),
            ("priority", "7"),
            ("persistent", "true"),
            ("expiration", "60000"),
            ("timestamp", "1700000000123"),
            ("type", "order"),
            ("app-id", "shop"),
            ("receipt", "r1"),
            ("color", "blue"),
            ("color", "red"),
        ]);
        let origin = Origin {
            protocol: junction_core::Protocol::Stomp,
            connection: ConnectionId(9),
        };
        let m = to_core(&h, Bytes::from_static(b"x\0y"), origin, 0).unwrap();
        let p = &m.properties;
        assert_eq!(p.content_type.as_deref(), Some("text/plain"));
        assert_eq!(p.correlation_id.as_deref(), Some("c-1"));
        assert_eq!(p.reply_to.as_deref(), Some("/queue/replies"));
        assert_eq!(p.priority, Some(7));
        assert!(p.is_persistent());
        assert_eq!(p.expiration.as_deref(), Some("60000"));
        assert_eq!(p.timestamp, Some(1_700_000_000));
        assert_eq!(p.kind.as_deref(), Some("order"));
        assert_eq!(p.app_id.as_deref(), Some("shop"));
        assert_eq!(p.headers.len(), 1);
        assert_eq!(p.headers.get("color"), Some(&FieldValue::string("blue")));
        assert_eq!(&m.body[..], b"x\0y");
        assert_eq!(m.origin, origin);
    }

    #[test]
    fn binary_correlation_data_comes_back_from_base64() {
        let h = headers(&[("x-mqtt-correlation-data", "AP8="), ("x-other", "AP8=")]);
        let m = to_core(&h, Bytes::new(), Origin::INTERNAL, 0).unwrap();
        let t = &m.properties.headers;
        assert_eq!(
            t.get("x-mqtt-correlation-data"),
            Some(&FieldValue::ByteArray(Bytes::from_static(b"\x00\xff")))
        );
        assert_eq!(t.get("x-other"), Some(&FieldValue::string("AP8=")));
        let bad = headers(&[("x-mqtt-correlation-data", "not base64!")]);
        let m = to_core(&bad, Bytes::new(), Origin::INTERNAL, 0).unwrap();
        assert_eq!(
            m.properties.headers.get("x-mqtt-correlation-data"),
            Some(&FieldValue::string("not base64!"))
        );
    }

    #[test]
    fn a_thousand_headers_travel_once_each_first_occurrence_winning() {
        let mut h = Headers::new();
        for i in 0..1000 {
            h.push(format!("h{i}"), format!("first {i}"));
        }
        for i in 0..1000 {
            h.push(format!("h{i}"), "second");
        }
        let m = to_core(&h, Bytes::new(), Origin::INTERNAL, 0).unwrap();
        let t = &m.properties.headers;
        assert_eq!(t.len(), 1000);
        assert_eq!(t.get("h999"), Some(&FieldValue::string("first 999")));
    }

    #[test]
    fn activemq_expires_is_absolute() {
        let h = headers(&[("expires", "10500")]);
        let m = to_core(&h, Bytes::new(), Origin::INTERNAL, 10_000).unwrap();
        assert_eq!(m.properties.expiration.as_deref(), Some("500"));
        let never = to_core(
            &headers(&[("expires", "0")]),
            Bytes::new(),
            Origin::INTERNAL,
            1,
        )
        .unwrap();
        assert_eq!(never.properties.expiration, None);
        assert!(
            to_core(
                &headers(&[("priority", "high")]),
                Bytes::new(),
                Origin::INTERNAL,
                0
            )
            .is_err()
        );
    }

    #[test]
    fn core_messages_become_message_headers() {
        let mut m = Message::new("", "q", Bytes::new()).persistent();
        m.properties.content_type = Some("application/json".into());
        m.properties.reply_to = Some("amq.gen-abc".into());
        m.properties.timestamp = Some(5);
        m.properties.headers.insert("n", FieldValue::I32(-3));
        m.properties
            .headers
            .insert("destination", FieldValue::string("spoof"));
        m.properties
            .headers
            .insert("t", FieldValue::Table(junction_core::FieldTable::new()));
        let mut h = Headers::new();
        from_core(&m, &mut h);
        assert_eq!(h.get("content-type"), Some("application/json"));
        assert_eq!(h.get("reply-to"), Some("/reply-queue/amq.gen-abc"));
        assert_eq!(h.get("persistent"), Some("true"));
        assert_eq!(h.get("timestamp"), Some("5000"));
        assert_eq!(h.get("n"), Some("-3"));
        assert_eq!(h.get("destination"), None);
        assert_eq!(h.get("t"), Some("{}"));
    }

    #[test]
    fn reply_to_round_trips_through_the_core() {
        assert_eq!(reply_to_core("/reply-queue/amq.gen-1"), "amq.gen-1");
        assert_eq!(reply_to_core("/queue/r"), "r");
        assert_eq!(reply_to_core("/topic/t"), "/topic/t");
        assert_eq!(reply_to_stomp("amq.gen-1"), "/reply-queue/amq.gen-1");
        assert_eq!(reply_to_stomp("/topic/t"), "/topic/t");
        assert_eq!(reply_to_core("/amq/queue/a%2Fb"), "a/b");
        assert_eq!(
            reply_to_stomp("mqtt-shared-g/t"),
            "/reply-queue/mqtt-shared-g%2Ft"
        );
        assert_eq!(reply_to_core("/exchange/x/k"), "/exchange/x/k");
    }

    #[test]
    fn subscribe_headers_become_typed_queue_arguments() {
        let h = headers(&[
            ("x-message-ttl", "5000"),
            ("x-dead-letter-exchange", ""),
            ("x-max-priority", "9"),
        ]);
        let t = queue_arguments(&h).unwrap();
        assert_eq!(t.get("x-message-ttl"), Some(&FieldValue::I64(5000)));
        assert_eq!(
            t.get("x-dead-letter-exchange"),
            Some(&FieldValue::string(""))
        );
        assert_eq!(t.get("x-max-priority"), Some(&FieldValue::I64(9)));
        assert!(queue_arguments(&headers(&[("x-max-length", "ten")])).is_err());
    }
}
