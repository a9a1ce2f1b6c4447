//! Where each side publishes and subscribes, per scenario and protocol.
//! Pure: the same mapping the broker's adapters make (DESIGN "How each
//! protocol maps"), so one topic or queue name reaches the same place from
//! any protocol.
//!
//! Topic scenarios (fan-in, fan-out): MQTT `a/b`; AMQP exchange `amq.topic`,
//! key `a.b` (a server-named exclusive queue bound per consumer); STOMP
//! `/topic/a.b`. MQTT levels and AMQP words swap `/` and `.` both ways.
//!
//! Queue scenario: AMQP default exchange, key = queue name; STOMP
//! `/queue/NAME`; MQTT has no queues, so there the "queue" is the shared
//! subscription `$share/bench/<topic>` [MQTT-4.8.2]. When MQTT is on one side
//! only, the other side meets it on the topic: an AMQP publisher publishes to
//! `amq.topic`, an AMQP consumer binds the named queue to `amq.topic`. A STOMP
//! consumer cannot reach a shared MQTT subscription, so MQTT → STOMP queue
//! runs are refused.
//!
//! Queue set (`--queues N`, AMQP only): N queues `<queue>-<i>`, each with
//! one consumer; publisher p sends its message n to queue `(p + n) mod N`
//! through the default exchange ([`queue_for`]), and consumer connection c
//! of C holds the queues of [`queue_range`].

use crate::cli::{Proto, Scenario};
use crate::error::BenchError;

/// The exchange MQTT and STOMP topics live on.
pub const TOPIC_EXCHANGE: &str = "amq.topic";

/// Shared-subscription group of MQTT queue consumers.
const SHARE_GROUP: &str = "bench";

/// Where a publisher sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PubTarget {
    /// MQTT PUBLISH topic.
    Mqtt(String),
    /// AMQP basic.publish.
    Amqp {
        /// Exchange ("" = default exchange).
        exchange: String,
        /// Routing key.
        routing_key: String,
        /// Queue to make sure exists before publishing to the default exchange.
        queue: Option<String>,
    },
    /// STOMP SEND destination.
    Stomp(String),
    /// AMQP default exchange, routing key [`queue_name`]`(prefix,
    /// `[`queue_for`]`(publisher, seq, queues))`: each message to one of
    /// the set's queues.
    AmqpQueues {
        /// Queue names' prefix (`--queue`).
        prefix: String,
        /// How many queues.
        queues: u32,
    },
}

/// Where a consumer receives from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubSource {
    /// MQTT SUBSCRIBE filter.
    Mqtt(String),
    /// AMQP: a private server-named queue bound to `exchange` with `key`.
    AmqpPrivate {
        /// Exchange to bind to.
        exchange: String,
        /// Binding key.
        key: String,
    },
    /// AMQP: the named shared queue, optionally bound to an exchange.
    AmqpShared {
        /// Queue name.
        queue: String,
        /// (exchange, key) binding to add for the run.
        bind: Option<(String, String)>,
    },
    /// STOMP SUBSCRIBE destination.
    Stomp(String),
    /// AMQP: consumer connection `index` of `connections` declares the
    /// queues of [`queue_range`] and consumes each of them.
    AmqpQueues {
        /// Queue names' prefix (`--queue`).
        prefix: String,
        /// How many queues in all.
        queues: u32,
        /// How many consumer connections share them.
        connections: u32,
    },
}

/// Queue `index` of a queue set: `<prefix>-<index>`.
pub fn queue_name(prefix: &str, index: u32) -> String {
    format!("{prefix}-{index}")
}

/// The queue of a set of `queues` that message `seq` of publisher
/// `publisher` is sent to: round-robin from an offset per publisher, so
/// publishers start on different queues. `queues` must not be 0.
pub fn queue_for(publisher: u32, seq: u64, queues: u32) -> u32 {
    let n = u64::from(queues.max(1));
    // Below `queues`, so it fits in a u32.
    ((u64::from(publisher) % n + seq % n) % n) as u32
}

/// The queues consumer connection `connection` of `connections` holds: a
/// contiguous block, the blocks differing in size by at most one and
/// together covering `0..queues` once. Empty when `connection` is out of
/// range.
pub fn queue_range(connection: u32, connections: u32, queues: u32) -> std::ops::Range<u32> {
    if connection >= connections {
        return 0..0;
    }
    let at = |c: u32| (u64::from(c) * u64::from(queues) / u64::from(connections)) as u32;
    at(connection)..at(connection + 1)
}

/// The publish target and subscribe source of `--queues N`: `queues`
/// queues named after `prefix`, consumed over `connections` connections
/// (at most one per queue).
pub fn queue_set(prefix: &str, queues: u32, connections: u32) -> (PubTarget, SubSource) {
    (
        PubTarget::AmqpQueues {
            prefix: prefix.to_string(),
            queues,
        },
        SubSource::AmqpQueues {
            prefix: prefix.to_string(),
            queues,
            connections: connections.clamp(1, queues.max(1)),
        },
    )
}

/// MQTT topic → AMQP routing key: `/` and `.` swap.
pub fn mqtt_to_amqp(topic: &str) -> String {
    topic
        .chars()
        .map(|c| match c {
            '/' => '.',
            '.' => '/',
            c => c,
        })
        .collect()
}

/// The publish target and subscribe source of a message scenario.
pub fn route(
    scenario: Scenario,
    pub_proto: Proto,
    sub_proto: Proto,
    topic: &str,
    queue: &str,
) -> Result<(PubTarget, SubSource), BenchError> {
    let key = mqtt_to_amqp(topic);
    let on_topic = |proto: Proto| match proto {
        Proto::Mqtt => PubTarget::Mqtt(topic.to_string()),
        Proto::Amqp => PubTarget::Amqp {
            exchange: TOPIC_EXCHANGE.to_string(),
            routing_key: key.clone(),
            queue: None,
        },
        Proto::Stomp => PubTarget::Stomp(format!("/topic/{key}")),
    };
    match scenario {
        Scenario::FanIn
        | Scenario::FanOut
        | Scenario::Idle
        | Scenario::SubscribeStorm
        | Scenario::ConnectStorm
        | Scenario::ReconnectStorm => {
            let source = match sub_proto {
                Proto::Mqtt => SubSource::Mqtt(topic.to_string()),
                Proto::Amqp => SubSource::AmqpPrivate {
                    exchange: TOPIC_EXCHANGE.to_string(),
                    key: key.clone(),
                },
                Proto::Stomp => SubSource::Stomp(format!("/topic/{key}")),
            };
            Ok((on_topic(pub_proto), source))
        }
        Scenario::Queue if pub_proto == Proto::Mqtt || sub_proto == Proto::Mqtt => {
            let source = match sub_proto {
                Proto::Mqtt => SubSource::Mqtt(format!("$share/{SHARE_GROUP}/{topic}")),
                Proto::Amqp => SubSource::AmqpShared {
                    queue: queue.to_string(),
                    bind: Some((TOPIC_EXCHANGE.to_string(), key.clone())),
                },
                Proto::Stomp => {
                    return Err(BenchError::Usage(
                        "queue scenario: an MQTT publisher and a STOMP consumer share no queue \
                         (MQTT's queue is a shared subscription)"
                            .into(),
                    ));
                }
            };
            Ok((on_topic(pub_proto), source))
        }
        Scenario::Queue => {
            let target = match pub_proto {
                Proto::Amqp => PubTarget::Amqp {
                    exchange: String::new(),
                    routing_key: queue.to_string(),
                    queue: Some(queue.to_string()),
                },
                _ => PubTarget::Stomp(format!("/queue/{queue}")),
            };
            let source = match sub_proto {
                Proto::Amqp => SubSource::AmqpShared {
                    queue: queue.to_string(),
                    bind: None,
                },
                _ => SubSource::Stomp(format!("/queue/{queue}")),
            };
            Ok((target, source))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Proto::{Amqp, Mqtt, Stomp};

    #[test]
    fn topic_separators_swap_both_ways() {
        assert_eq!(mqtt_to_amqp("bench/t"), "bench.t");
        assert_eq!(mqtt_to_amqp("a.b/c"), "a/b.c");
    }

    #[test]
    fn fan_in_uses_the_topic_on_every_protocol() {
        let (p, s) = route(Scenario::FanIn, Mqtt, Mqtt, "bench/t", "q").unwrap();
        assert_eq!(
            (p, s),
            (
                PubTarget::Mqtt("bench/t".into()),
                SubSource::Mqtt("bench/t".into())
            )
        );
        let (p, s) = route(Scenario::FanOut, Amqp, Stomp, "bench/t", "q").unwrap();
        assert_eq!(
            p,
            PubTarget::Amqp {
                exchange: "amq.topic".into(),
                routing_key: "bench.t".into(),
                queue: None
            }
        );
        assert_eq!(s, SubSource::Stomp("/topic/bench.t".into()));
        let (p, s) = route(Scenario::FanIn, Stomp, Amqp, "bench/t", "q").unwrap();
        assert_eq!(p, PubTarget::Stomp("/topic/bench.t".into()));
        assert_eq!(
            s,
            SubSource::AmqpPrivate {
                exchange: "amq.topic".into(),
                key: "bench.t".into()
            }
        );
    }

    #[test]
    fn queue_without_mqtt_uses_the_named_queue() {
        let (p, s) = route(Scenario::Queue, Amqp, Stomp, "bench/t", "bench-q").unwrap();
        assert_eq!(
            p,
            PubTarget::Amqp {
                exchange: String::new(),
                routing_key: "bench-q".into(),
                queue: Some("bench-q".into())
            }
        );
        assert_eq!(s, SubSource::Stomp("/queue/bench-q".into()));
    }

    #[test]
    fn mqtt_queue_is_a_shared_subscription_and_amqp_meets_it_on_the_topic() {
        let (p, s) = route(Scenario::Queue, Mqtt, Mqtt, "bench/t", "bench-q").unwrap();
        assert_eq!(p, PubTarget::Mqtt("bench/t".into()));
        assert_eq!(s, SubSource::Mqtt("$share/bench/bench/t".into()));
        let (_, s) = route(Scenario::Queue, Mqtt, Amqp, "bench/t", "bench-q").unwrap();
        assert_eq!(
            s,
            SubSource::AmqpShared {
                queue: "bench-q".into(),
                bind: Some(("amq.topic".into(), "bench.t".into()))
            }
        );
        let (p, _) = route(Scenario::Queue, Stomp, Mqtt, "bench/t", "bench-q").unwrap();
        assert_eq!(p, PubTarget::Stomp("/topic/bench.t".into()));
    }

    #[test]
    fn queue_set_names_count_from_zero_after_a_dash() {
        assert_eq!(queue_name("bench-q", 0), "bench-q-0");
        assert_eq!(queue_name("bench-q", 9_999), "bench-q-9999");
        let (p, s) = queue_set("q", 100, 20);
        assert_eq!(
            p,
            PubTarget::AmqpQueues {
                prefix: "q".into(),
                queues: 100
            }
        );
        assert_eq!(
            s,
            SubSource::AmqpQueues {
                prefix: "q".into(),
                queues: 100,
                connections: 20
            }
        );
        // Never more connections than queues.
        let (_, s) = queue_set("q", 1, 20);
        assert_eq!(
            s,
            SubSource::AmqpQueues {
                prefix: "q".into(),
                queues: 1,
                connections: 1
            }
        );
    }

    #[test]
    fn each_publisher_goes_round_robin_over_the_queues_from_its_own_offset() {
        let p0: Vec<u32> = (0..5).map(|seq| queue_for(0, seq, 3)).collect();
        assert_eq!(p0, [0, 1, 2, 0, 1]);
        let p1: Vec<u32> = (0..5).map(|seq| queue_for(1, seq, 3)).collect();
        assert_eq!(p1, [1, 2, 0, 1, 2]);
        let p4: Vec<u32> = (0..3).map(|seq| queue_for(4, seq, 3)).collect();
        assert_eq!(p4, [1, 2, 0]);
        // One queue takes everything; huge numbers do not overflow.
        assert_eq!(queue_for(7, 123, 1), 0);
        // 4,294,967,295 mod 10,000 = 7,295; u64::MAX mod 10,000 = 1,615.
        assert_eq!(queue_for(u32::MAX, u64::MAX, 10_000), 8_910);
        // Every queue gets the same share of a whole number of rounds.
        let mut hits = [0u32; 7];
        for seq in 0..700 {
            hits[queue_for(3, seq, 7) as usize] += 1;
        }
        assert_eq!(hits, [100; 7]);
    }

    #[test]
    fn consumer_connections_split_the_queues_into_contiguous_blocks() {
        let blocks: Vec<_> = (0..3).map(|c| queue_range(c, 3, 10)).collect();
        assert_eq!(blocks, [0..3, 3..6, 6..10]);
        let blocks: Vec<_> = (0..20).map(|c| queue_range(c, 20, 10_000)).collect();
        assert!(blocks.iter().all(|b| b.len() == 500));
        assert_eq!((blocks[0].start, blocks[19].end), (0, 10_000));
        assert!(blocks.windows(2).all(|w| w[0].end == w[1].start));
        assert_eq!(queue_range(0, 1, 1), 0..1);
        assert_eq!(queue_range(3, 3, 10), 0..0);
    }

    #[test]
    fn mqtt_to_stomp_queue_is_refused() {
        assert!(matches!(
            route(Scenario::Queue, Mqtt, Stomp, "bench/t", "bench-q"),
            Err(BenchError::Usage(_))
        ));
    }
}
