//! Routing through the broker's public API: the default, direct, fanout,
//! topic and headers exchanges, exchange-to-exchange bindings, alternate
//! exchanges, and the rules for declaring, binding and deleting exchanges
//! (AMQP 0-9-1 exchange.declare / exchange.delete / queue.bind, with
//! RabbitMQ's extensions).

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use junction_core::{
    Binding, Broker, BrokerConfig, Destination, ExchangeDef, ExchangeKind, FieldTable, FieldValue,
    Message, Properties, QueueDef,
};
use junction_store::Store;

const VH: &str = "/";

async fn broker() -> Arc<Broker> {
    Broker::open(Store::in_memory(), BrokerConfig::default())
        .await
        .expect("broker opens on an in-memory store")
}

async fn declare_queues(b: &Arc<Broker>, names: &[&str]) {
    for name in names {
        b.declare_queue(VH, QueueDef::new(*name).transient(), false)
            .await
            .expect("queue declares");
    }
}

async fn declare_exchange(b: &Broker, name: &str, kind: ExchangeKind) {
    b.declare_exchange(VH, transient_exchange(name, kind), false)
        .await
        .expect("exchange declares");
}

fn transient_exchange(name: &str, kind: ExchangeKind) -> ExchangeDef {
    ExchangeDef {
        durable: false,
        ..ExchangeDef::new(name, kind)
    }
}

fn queue_binding(source: &str, queue: &str, key: &str) -> Binding {
    Binding {
        source: source.to_string(),
        destination: Destination::Queue(queue.to_string()),
        routing_key: key.to_string(),
        arguments: FieldTable::new(),
    }
}

fn exchange_binding(source: &str, destination: &str, key: &str) -> Binding {
    Binding {
        source: source.to_string(),
        destination: Destination::Exchange(destination.to_string()),
        routing_key: key.to_string(),
        arguments: FieldTable::new(),
    }
}

fn table(pairs: &[(&str, FieldValue)]) -> FieldTable {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

fn s(v: &str) -> FieldValue {
    FieldValue::string(v)
}

async fn bind(b: &Broker, binding: Binding) {
    b.bind(VH, binding, None).await.expect("binding succeeds");
}

fn ready_counts(b: &Broker) -> HashMap<String, u64> {
    b.stats()
        .queues
        .into_iter()
        .map(|q| (q.name, q.ready))
        .collect()
}

/// Publishes `msg` and returns the sorted names of the queues that gained a
/// message, after checking that `Published::routed` agrees with them.
async fn route(b: &Broker, msg: Message) -> Vec<String> {
    let before = ready_counts(b);
    let published = b.publish(VH, msg).await.expect("publish succeeds");
    let routed = published.routed;
    assert!(published.confirmed().await.expect("receipt resolves"));
    let mut gained: Vec<String> = Vec::new();
    for (name, after) in ready_counts(b) {
        let was = before.get(&name).copied().unwrap_or(0);
        assert!(after <= was + 1, "queue {name} got {} copies", after - was);
        if after == was + 1 {
            gained.push(name);
        }
    }
    gained.sort();
    assert_eq!(routed, gained.len(), "routed count vs queues that gained");
    gained
}

async fn route_key(b: &Broker, exchange: &str, key: &str) -> Vec<String> {
    route(b, Message::new(exchange, key, Bytes::from_static(b"m"))).await
}

async fn route_headers(b: &Broker, exchange: &str, headers: FieldTable) -> Vec<String> {
    let msg = Message::new(exchange, "", Bytes::from_static(b"m")).with_properties(Properties {
        headers,
        ..Properties::default()
    });
    route(b, msg).await
}

fn names(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn default_exchange_routes_to_the_queue_named_by_the_key() {
    let b = broker().await;
    declare_queues(&b, &["orders", "invoices"]).await;
    assert_eq!(route_key(&b, "", "orders").await, names(&["orders"]));
    assert_eq!(route_key(&b, "", "invoices").await, names(&["invoices"]));
    assert_eq!(route_key(&b, "", "missing").await, names(&[]));
}

#[tokio::test]
async fn direct_exchange_routes_to_every_queue_bound_with_the_same_key() {
    let b = broker().await;
    declare_exchange(&b, "ex", ExchangeKind::Direct).await;
    declare_queues(&b, &["q1", "q2", "q3"]).await;
    bind(&b, queue_binding("ex", "q1", "k")).await;
    bind(&b, queue_binding("ex", "q2", "k")).await;
    bind(&b, queue_binding("ex", "q3", "other")).await;
    assert_eq!(route_key(&b, "ex", "k").await, names(&["q1", "q2"]));
    assert_eq!(route_key(&b, "ex", "other").await, names(&["q3"]));
    assert_eq!(
        route_key(&b, "ex", "K").await,
        names(&[]),
        "keys are case-sensitive"
    );
    assert_eq!(route_key(&b, "ex", "k.x").await, names(&[]));
}

#[tokio::test]
async fn fanout_exchange_routes_to_every_bound_queue_whatever_the_key() {
    let b = broker().await;
    declare_exchange(&b, "fan", ExchangeKind::Fanout).await;
    declare_queues(&b, &["q1", "q2", "unbound"]).await;
    bind(&b, queue_binding("fan", "q1", "ignored")).await;
    bind(&b, queue_binding("fan", "q2", "")).await;
    assert_eq!(route_key(&b, "fan", "anything").await, names(&["q1", "q2"]));
    assert_eq!(route_key(&b, "fan", "").await, names(&["q1", "q2"]));
}

#[tokio::test]
async fn topic_exchange_matches_star_hash_empty_words_and_empty_keys() {
    let b = broker().await;
    declare_exchange(&b, "topics", ExchangeKind::Topic).await;
    let patterns = [
        ("star", "a.*.c"),
        ("hash_tail", "a.#"),
        ("hash_all", "#"),
        ("hash_middle", "a.#.c"),
        ("empty_words", "a..b"),
        ("empty_key", ""),
    ];
    for (queue, pattern) in patterns {
        declare_queues(&b, &[queue]).await;
        bind(&b, queue_binding("topics", queue, pattern)).await;
    }
    assert_eq!(
        route_key(&b, "topics", "a.b.c").await,
        names(&["hash_all", "hash_middle", "hash_tail", "star"])
    );
    assert_eq!(
        route_key(&b, "topics", "a").await,
        names(&["hash_all", "hash_tail"]),
        "a.# matches 'a' with # as zero words"
    );
    assert_eq!(
        route_key(&b, "topics", "a.c").await,
        names(&["hash_all", "hash_middle", "hash_tail"]),
        "a.#.c matches with # as zero words; a.*.c needs one word"
    );
    assert_eq!(
        route_key(&b, "topics", "a.b.b.c").await,
        names(&["hash_all", "hash_middle", "hash_tail"]),
        "* is exactly one word"
    );
    assert_eq!(
        route_key(&b, "topics", "a..c").await,
        names(&["hash_all", "hash_middle", "hash_tail", "star"]),
        "an empty word is a word for *"
    );
    assert_eq!(
        route_key(&b, "topics", "a..b").await,
        names(&["empty_words", "hash_all", "hash_tail"])
    );
    assert_eq!(
        route_key(&b, "topics", "a.b").await,
        names(&["hash_all", "hash_tail"]),
        "a..b does not match a.b"
    );
    assert_eq!(
        route_key(&b, "topics", "").await,
        names(&["empty_key", "hash_all"]),
        "the empty key has no words: only '#' and '' match it"
    );
    assert_eq!(route_key(&b, "topics", "x.y").await, names(&["hash_all"]));
}

#[tokio::test]
async fn headers_all_needs_every_pair_and_any_needs_one() {
    let b = broker().await;
    declare_exchange(&b, "hx", ExchangeKind::Headers).await;
    declare_queues(&b, &["all", "any", "default_all"]).await;
    let pairs = [("format", s("pdf")), ("type", s("report"))];
    let mut all = table(&[("x-match", s("all"))]);
    let mut any = table(&[("x-match", s("any"))]);
    let mut default_all = FieldTable::new();
    for (k, v) in &pairs {
        all.insert(*k, v.clone());
        any.insert(*k, v.clone());
        default_all.insert(*k, v.clone());
    }
    for (queue, args) in [("all", all), ("any", any), ("default_all", default_all)] {
        bind(
            &b,
            Binding {
                arguments: args,
                ..queue_binding("hx", queue, "")
            },
        )
        .await;
    }
    assert_eq!(
        route_headers(&b, "hx", table(&pairs)).await,
        names(&["all", "any", "default_all"])
    );
    assert_eq!(
        route_headers(&b, "hx", table(&[("format", s("pdf")), ("extra", s("1"))])).await,
        names(&["any"])
    );
    assert_eq!(
        route_headers(
            &b,
            "hx",
            table(&[("format", s("doc")), ("type", s("report"))])
        )
        .await,
        names(&["any"])
    );
    assert_eq!(
        route_headers(&b, "hx", table(&[("format", s("doc"))])).await,
        names(&[])
    );
    assert_eq!(route_headers(&b, "hx", FieldTable::new()).await, names(&[]));
}

#[tokio::test]
async fn headers_x_prefixed_pairs_count_only_in_with_x_modes() {
    let b = broker().await;
    declare_exchange(&b, "hx", ExchangeKind::Headers).await;
    declare_queues(&b, &["all", "all_with_x", "any", "any_with_x"]).await;
    let bindings = [
        (
            "all",
            table(&[("x-match", s("all")), ("x-tenant", s("t1"))]),
        ),
        (
            "all_with_x",
            table(&[("x-match", s("all-with-x")), ("x-tenant", s("t1"))]),
        ),
        (
            "any",
            table(&[
                ("x-match", s("any")),
                ("x-tenant", s("t1")),
                ("region", s("eu")),
            ]),
        ),
        (
            "any_with_x",
            table(&[
                ("x-match", s("any-with-x")),
                ("x-tenant", s("t1")),
                ("region", s("eu")),
            ]),
        ),
    ];
    for (queue, args) in bindings {
        bind(
            &b,
            Binding {
                arguments: args,
                ..queue_binding("hx", queue, "")
            },
        )
        .await;
    }
    assert_eq!(
        route_headers(&b, "hx", table(&[("x-tenant", s("t1"))])).await,
        names(&["all", "all_with_x", "any_with_x"]),
        "plain all ignores x- pairs (so matches anything); any ignores them too"
    );
    assert_eq!(
        route_headers(&b, "hx", table(&[("x-tenant", s("t2"))])).await,
        names(&["all"])
    );
    assert_eq!(
        route_headers(&b, "hx", table(&[("region", s("eu"))])).await,
        names(&["all", "any", "any_with_x"])
    );
}

#[tokio::test]
async fn headers_void_value_tests_presence_and_integers_match_across_widths() {
    let b = broker().await;
    declare_exchange(&b, "hx", ExchangeKind::Headers).await;
    declare_queues(&b, &["present", "number", "text"]).await;
    let bindings = [
        ("present", table(&[("trace", FieldValue::Void)])),
        ("number", table(&[("n", FieldValue::I8(5))])),
        (
            "text",
            table(&[("t", FieldValue::ShortString("hi".into()))]),
        ),
    ];
    for (queue, args) in bindings {
        bind(
            &b,
            Binding {
                arguments: args,
                ..queue_binding("hx", queue, "")
            },
        )
        .await;
    }
    assert_eq!(
        route_headers(&b, "hx", table(&[("trace", s("anything"))])).await,
        names(&["present"])
    );
    assert_eq!(
        route_headers(&b, "hx", table(&[("trace", FieldValue::Bool(false))])).await,
        names(&["present"])
    );
    assert_eq!(
        route_headers(&b, "hx", table(&[("n", FieldValue::I64(5))])).await,
        names(&["number"])
    );
    assert_eq!(
        route_headers(&b, "hx", table(&[("n", FieldValue::U16(5))])).await,
        names(&["number"])
    );
    assert_eq!(
        route_headers(&b, "hx", table(&[("n", FieldValue::I64(6))])).await,
        names(&[])
    );
    assert_eq!(
        route_headers(&b, "hx", table(&[("n", s("5"))])).await,
        names(&[]),
        "a string is not a number"
    );
    assert_eq!(
        route_headers(&b, "hx", table(&[("t", s("hi"))])).await,
        names(&["text"]),
        "long and short strings compare by content"
    );
}

#[tokio::test]
async fn headers_binding_with_invalid_x_match_is_refused_with_406() {
    let b = broker().await;
    declare_exchange(&b, "hx", ExchangeKind::Headers).await;
    declare_queues(&b, &["q"]).await;
    let err = b
        .bind(
            VH,
            Binding {
                arguments: table(&[("x-match", s("most"))]),
                ..queue_binding("hx", "q", "")
            },
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(err.amqp_code(), 406);
    assert_eq!(b.bindings(VH).unwrap(), Vec::<Binding>::new());
}

#[tokio::test]
async fn exchange_to_exchange_binding_forwards_matching_messages() {
    let b = broker().await;
    declare_exchange(&b, "front", ExchangeKind::Direct).await;
    declare_exchange(&b, "back", ExchangeKind::Fanout).await;
    declare_queues(&b, &["q"]).await;
    bind(&b, exchange_binding("front", "back", "k")).await;
    bind(&b, queue_binding("back", "q", "")).await;
    assert_eq!(route_key(&b, "front", "k").await, names(&["q"]));
    assert_eq!(route_key(&b, "front", "other").await, names(&[]));
}

#[tokio::test]
async fn exchange_binding_cycle_delivers_one_copy_to_each_queue() {
    let b = broker().await;
    declare_exchange(&b, "e1", ExchangeKind::Fanout).await;
    declare_exchange(&b, "e2", ExchangeKind::Fanout).await;
    declare_queues(&b, &["q1", "q2", "both"]).await;
    bind(&b, exchange_binding("e1", "e2", "")).await;
    bind(&b, exchange_binding("e2", "e1", "")).await;
    bind(&b, queue_binding("e1", "q1", "")).await;
    bind(&b, queue_binding("e2", "q2", "")).await;
    bind(&b, queue_binding("e1", "both", "")).await;
    bind(&b, queue_binding("e2", "both", "")).await;
    assert_eq!(route_key(&b, "e1", "x").await, names(&["both", "q1", "q2"]));
    assert_eq!(route_key(&b, "e2", "x").await, names(&["both", "q1", "q2"]));
    let vh = b.vhost(VH).unwrap();
    for q in ["q1", "q2", "both"] {
        assert_eq!(vh.queue(q).unwrap().message_count(), 2, "{q}");
    }
}

#[tokio::test]
async fn alternate_exchange_takes_only_unroutable_messages() {
    let b = broker().await;
    declare_exchange(&b, "ae", ExchangeKind::Fanout).await;
    let main = ExchangeDef {
        arguments: table(&[("alternate-exchange", s("ae"))]),
        ..transient_exchange("main", ExchangeKind::Direct)
    };
    b.declare_exchange(VH, main, false).await.unwrap();
    declare_queues(&b, &["routed", "unrouted"]).await;
    bind(&b, queue_binding("main", "routed", "k")).await;
    bind(&b, queue_binding("ae", "unrouted", "")).await;
    assert_eq!(route_key(&b, "main", "k").await, names(&["routed"]));
    assert_eq!(route_key(&b, "main", "nobody").await, names(&["unrouted"]));
}

#[tokio::test]
async fn internal_exchange_refuses_direct_publish_but_forwards_from_exchanges() {
    let b = broker().await;
    let internal = ExchangeDef {
        internal: true,
        ..transient_exchange("inner", ExchangeKind::Fanout)
    };
    b.declare_exchange(VH, internal, false).await.unwrap();
    declare_exchange(&b, "outer", ExchangeKind::Fanout).await;
    declare_queues(&b, &["q"]).await;
    bind(&b, queue_binding("inner", "q", "")).await;
    bind(&b, exchange_binding("outer", "inner", "")).await;
    let err = b
        .publish(VH, Message::new("inner", "", Bytes::from_static(b"m")))
        .await
        .unwrap_err();
    assert_eq!(err.amqp_code(), 403);
    assert_eq!(b.vhost(VH).unwrap().queue("q").unwrap().message_count(), 0);
    assert_eq!(route_key(&b, "outer", "").await, names(&["q"]));
}

#[tokio::test]
async fn unroutable_message_is_routed_to_no_queue() {
    let b = broker().await;
    declare_exchange(&b, "lonely", ExchangeKind::Direct).await;
    declare_queues(&b, &["q"]).await;
    let published = b
        .publish(VH, Message::new("lonely", "k", Bytes::from_static(b"m")))
        .await
        .unwrap();
    assert_eq!(published.routed, 0);
    assert_eq!(published.rejected, 0);
    assert_eq!(b.vhost(VH).unwrap().queue("q").unwrap().message_count(), 0);
}

#[tokio::test]
async fn publishing_to_a_missing_exchange_is_404() {
    let b = broker().await;
    let err = b
        .publish(VH, Message::new("nowhere", "k", Bytes::from_static(b"m")))
        .await
        .unwrap_err();
    assert_eq!(err.amqp_code(), 404);
}

#[tokio::test]
async fn redeclaring_an_exchange_with_other_settings_is_406() {
    let b = broker().await;
    let def = ExchangeDef::new("ex", ExchangeKind::Direct);
    b.declare_exchange(VH, def.clone(), false).await.unwrap();
    b.declare_exchange(VH, def.clone(), false)
        .await
        .expect("an equivalent redeclare is fine");
    let other_type = ExchangeDef::new("ex", ExchangeKind::Topic);
    let err = b.declare_exchange(VH, other_type, false).await.unwrap_err();
    assert_eq!(err.amqp_code(), 406);
    let other_durability = ExchangeDef {
        durable: false,
        ..def.clone()
    };
    let err = b
        .declare_exchange(VH, other_durability, false)
        .await
        .unwrap_err();
    assert_eq!(err.amqp_code(), 406);
    assert_eq!(b.exchange(VH, "ex").unwrap(), def);
}

#[tokio::test]
async fn passive_declare_of_a_missing_exchange_is_404_and_of_an_existing_one_ok() {
    let b = broker().await;
    let err = b
        .declare_exchange(VH, ExchangeDef::new("missing", ExchangeKind::Direct), true)
        .await
        .unwrap_err();
    assert_eq!(err.amqp_code(), 404);
    assert_eq!(b.exchange(VH, "missing").unwrap_err().amqp_code(), 404);
    declare_exchange(&b, "present", ExchangeKind::Fanout).await;
    b.declare_exchange(VH, ExchangeDef::new("present", ExchangeKind::Topic), true)
        .await
        .expect("passive declare ignores the other fields");
    assert_eq!(
        b.exchange(VH, "present").unwrap().kind,
        ExchangeKind::Fanout
    );
}

#[tokio::test]
async fn declaring_an_amq_prefixed_exchange_is_403() {
    let b = broker().await;
    let err = b
        .declare_exchange(
            VH,
            ExchangeDef::new("amq.custom", ExchangeKind::Direct),
            false,
        )
        .await
        .unwrap_err();
    assert_eq!(err.amqp_code(), 403);
    assert_eq!(b.exchange(VH, "amq.custom").unwrap_err().amqp_code(), 404);
}

#[test]
fn unknown_exchange_type_is_406() {
    let err = "x-delayed".parse::<ExchangeKind>().unwrap_err();
    assert_eq!(err.amqp_code(), 406);
    assert_eq!(
        "headers".parse::<ExchangeKind>().unwrap(),
        ExchangeKind::Headers
    );
}

#[tokio::test]
async fn deleting_a_built_in_exchange_is_403() {
    let b = broker().await;
    for name in ["amq.direct", "amq.fanout", "amq.topic", "amq.headers", ""] {
        let err = b.delete_exchange(VH, name, false).await.unwrap_err();
        assert_eq!(err.amqp_code(), 403, "{name:?}");
    }
    assert_eq!(
        b.exchange(VH, "amq.topic").unwrap().kind,
        ExchangeKind::Topic
    );
}

#[tokio::test]
async fn deleting_an_exchange_if_unused_while_it_has_bindings_is_406() {
    let b = broker().await;
    declare_exchange(&b, "ex", ExchangeKind::Direct).await;
    declare_queues(&b, &["q"]).await;
    bind(&b, queue_binding("ex", "q", "k")).await;
    let err = b.delete_exchange(VH, "ex", true).await.unwrap_err();
    assert_eq!(err.amqp_code(), 406);
    assert_eq!(route_key(&b, "ex", "k").await, names(&["q"]));
    b.delete_exchange(VH, "ex", false)
        .await
        .expect("unconditional delete");
    assert_eq!(b.exchange(VH, "ex").unwrap_err().amqp_code(), 404);
    assert_eq!(b.bindings(VH).unwrap(), Vec::<Binding>::new());
    let err = b.delete_exchange(VH, "ex", false).await.unwrap_err();
    assert_eq!(err.amqp_code(), 404);
}

#[tokio::test]
async fn auto_delete_exchange_is_deleted_when_its_last_binding_goes() {
    let b = broker().await;
    let def = ExchangeDef {
        auto_delete: true,
        ..transient_exchange("temp", ExchangeKind::Direct)
    };
    b.declare_exchange(VH, def, false).await.unwrap();
    declare_queues(&b, &["q1", "q2"]).await;
    bind(&b, queue_binding("temp", "q1", "k")).await;
    bind(&b, queue_binding("temp", "q2", "k")).await;
    b.unbind(VH, &queue_binding("temp", "q1", "k"), None)
        .await
        .unwrap();
    assert!(b.exchange(VH, "temp").is_ok(), "one binding is left");
    b.delete_queue(VH, "q2", false, false, None).await.unwrap();
    assert_eq!(b.exchange(VH, "temp").unwrap_err().amqp_code(), 404);
}

#[tokio::test]
async fn unbind_stops_routing_through_the_binding() {
    let b = broker().await;
    declare_exchange(&b, "ex", ExchangeKind::Topic).await;
    declare_queues(&b, &["q1", "q2"]).await;
    bind(&b, queue_binding("ex", "q1", "a.*")).await;
    bind(&b, queue_binding("ex", "q2", "a.*")).await;
    b.unbind(VH, &queue_binding("ex", "q1", "a.*"), None)
        .await
        .unwrap();
    assert_eq!(route_key(&b, "ex", "a.b").await, names(&["q2"]));
    assert_eq!(
        b.bindings(VH).unwrap(),
        vec![queue_binding("ex", "q2", "a.*")]
    );
}

#[tokio::test]
async fn binding_twice_makes_one_binding() {
    let b = broker().await;
    declare_exchange(&b, "ex", ExchangeKind::Direct).await;
    declare_queues(&b, &["q"]).await;
    bind(&b, queue_binding("ex", "q", "k")).await;
    bind(&b, queue_binding("ex", "q", "k")).await;
    assert_eq!(b.bindings(VH).unwrap(), vec![queue_binding("ex", "q", "k")]);
    b.unbind(VH, &queue_binding("ex", "q", "k"), None)
        .await
        .unwrap();
    assert_eq!(
        route_key(&b, "ex", "k").await,
        names(&[]),
        "one unbind removes the only binding"
    );
}

#[tokio::test]
async fn deleting_a_queue_removes_its_bindings() {
    let b = broker().await;
    declare_exchange(&b, "ex", ExchangeKind::Fanout).await;
    declare_queues(&b, &["q", "other"]).await;
    bind(&b, queue_binding("ex", "q", "")).await;
    bind(&b, queue_binding("amq.direct", "q", "k")).await;
    bind(&b, queue_binding("ex", "other", "")).await;
    b.delete_queue(VH, "q", false, false, None).await.unwrap();
    assert_eq!(
        b.bindings(VH).unwrap(),
        vec![queue_binding("ex", "other", "")]
    );
    declare_queues(&b, &["q"]).await;
    assert_eq!(
        route_key(&b, "ex", "").await,
        names(&["other"]),
        "a new queue of the same name does not inherit the old bindings"
    );
    assert_eq!(route_key(&b, "amq.direct", "k").await, names(&[]));
}

#[tokio::test]
async fn binding_to_a_missing_queue_or_exchange_is_404() {
    let b = broker().await;
    declare_exchange(&b, "ex", ExchangeKind::Direct).await;
    declare_queues(&b, &["q"]).await;
    let cases = [
        queue_binding("ex", "missing", "k"),
        queue_binding("missing", "q", "k"),
        exchange_binding("ex", "missing", "k"),
    ];
    for binding in cases {
        let err = b.bind(VH, binding.clone(), None).await.unwrap_err();
        assert_eq!(err.amqp_code(), 404, "{binding:?}");
    }
    assert_eq!(b.bindings(VH).unwrap(), Vec::<Binding>::new());
}

#[tokio::test]
async fn using_an_unknown_vhost_is_530() {
    let b = broker().await;
    let err = b
        .publish("elsewhere", Message::new("", "q", Bytes::from_static(b"m")))
        .await
        .unwrap_err();
    assert_eq!(err.amqp_code(), 530);
    let err = b
        .declare_exchange(
            "elsewhere",
            transient_exchange("ex", ExchangeKind::Direct),
            false,
        )
        .await
        .unwrap_err();
    assert_eq!(err.amqp_code(), 530);
}
