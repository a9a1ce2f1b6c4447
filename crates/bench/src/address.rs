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
        Scenario::FanIn | Scenario::FanOut | Scenario::Idle | Scenario::SubscribeStorm => {
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
    fn mqtt_to_stomp_queue_is_refused() {
        assert!(matches!(
            route(Scenario::Queue, Mqtt, Stomp, "bench/t", "bench-q"),
            Err(BenchError::Usage(_))
        ));
    }
}
