//! One place that turns the flags into per-protocol settings and sends each
//! publisher, consumer or idle connection to its protocol's module, inside a
//! tracing span naming the connection and where it publishes or consumes.

use crate::address::{self, PubTarget, SubSource};
use crate::amqp::{self, AmqpSettings};
use crate::bridge::{Bridge, Transport};
use crate::cli::{Args, Proto};
use crate::collector::Collector;
use crate::error::BenchError;
use crate::load::{Endpoint, PubPlan};
use crate::mqtt::{self, MqttSettings};
use crate::stomp::{self, StompSettings};
use crate::tls::TlsClient;
use std::sync::Arc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Room for protocol headers on top of the payload when capping packet and
/// frame sizes.
const HEADROOM: usize = 64 * 1024;

/// AMQP frame size for `size`-byte payloads: the whole message in one body
/// frame, between AMQP 0-9-1's minimum of 4096 ("connection.tune") and
/// RabbitMQ's default of 128 KiB.
pub fn amqp_frame_max(size: usize) -> u32 {
    let wanted = u32::try_from(size.saturating_add(1024)).unwrap_or(u32::MAX);
    wanted.clamp(4096, 128 * 1024)
}

/// Settings of all three protocols for one run.
#[derive(Debug, Clone)]
pub struct Clients {
    /// MQTT side.
    pub mqtt: MqttSettings,
    /// AMQP side.
    pub amqp: AmqpSettings,
    /// STOMP side.
    pub stomp: StompSettings,
}

/// A running consumer or idle connection: its task ends at the cancel signal
/// (or on failure) and reports how it ended.
pub type Held = JoinHandle<Result<(), BenchError>>;

impl Clients {
    /// Settings from the flags; `run_id` keeps this run's MQTT client ids
    /// apart from another run's. Fails only on an unusable `--tls-ca`.
    pub fn from_args(args: &Args, run_id: u32) -> Result<Self, BenchError> {
        let tls = args.tls_ca.as_deref().map(TlsClient::load).transpose()?;
        let endpoint = |port| Endpoint {
            host: args.host.clone(),
            port,
            user: args.user.clone(),
            password: args.password.clone(),
            vhost: args.vhost.clone(),
        };
        let max = args.size.saturating_add(HEADROOM);
        Ok(Clients {
            mqtt: MqttSettings {
                endpoint: endpoint(args.mqtt_port),
                version: args.mqtt_version,
                qos: args.qos,
                clean_session: args.clean_session,
                inflight: args.inflight_for(Proto::Mqtt),
                max_packet: max,
                run_id,
                tls: tls.clone(),
                bridge: match args.transport {
                    Transport::Tcp => None,
                    t => Some(Bridge::start(
                        t,
                        &endpoint(args.mqtt_port),
                        &args.ws_path,
                        run_id,
                    )?),
                },
                consumer_filters: args.consumer_filters,
            },
            amqp: AmqpSettings {
                endpoint: endpoint(args.amqp_port),
                persistent: args.persistent,
                confirms: args.confirms,
                manual_ack: args.manual_ack,
                prefetch: args.prefetch,
                inflight: args.inflight_for(Proto::Amqp),
                frame_max: amqp_frame_max(args.size),
                tls,
                queue_type: args.queue_type.clone(),
            },
            stomp: StompSettings {
                endpoint: endpoint(args.stomp_port),
                ack: args.stomp_ack,
                receipts: args.receipts,
                persistent: args.persistent,
                prefetch: args.prefetch,
                inflight: args.inflight_for(Proto::Stomp),
                max_frame: max,
            },
        })
    }

    /// Runs one publisher to completion.
    pub async fn publish(
        &self,
        target: &PubTarget,
        plan: &PubPlan,
        collector: Arc<Collector>,
    ) -> Result<(), BenchError> {
        let span = tracing::info_span!("publisher", index = %plan.index, to = ?target);
        async {
            match target {
                PubTarget::Mqtt(topic) => mqtt::publish(&self.mqtt, topic, plan, collector).await,
                PubTarget::Amqp { .. } | PubTarget::AmqpQueues { .. } => {
                    amqp::publish(&self.amqp, target, plan, collector).await
                }
                PubTarget::Stomp(dest) => stomp::publish(&self.stomp, dest, plan, collector).await,
            }
        }
        .instrument(span)
        .await
    }

    /// Connects and subscribes one consumer; returns once it is receiving.
    pub async fn consume(
        &self,
        source: &SubSource,
        index: u32,
        collector: Arc<Collector>,
        cancel: CancellationToken,
    ) -> Result<Held, BenchError> {
        let span = tracing::info_span!("consumer", index, from = ?source);
        async {
            match source {
                SubSource::Mqtt(filter) => {
                    mqtt::consume(&self.mqtt, filter, index, collector, cancel).await
                }
                SubSource::AmqpPrivate { .. } | SubSource::AmqpShared { .. } => {
                    amqp::consume(&self.amqp, source, index, collector, cancel).await
                }
                SubSource::Stomp(dest) => {
                    stomp::consume(&self.stomp, dest, index, collector, cancel).await
                }
                SubSource::AmqpQueues {
                    prefix,
                    queues,
                    connections,
                } => {
                    let range = address::queue_range(index, *connections, *queues);
                    amqp::consume_queues(&self.amqp, prefix, index, range, collector, cancel).await
                }
            }
        }
        .instrument(span)
        .await
    }

    /// Opens one idle connection of `proto`.
    pub async fn idle(
        &self,
        proto: Proto,
        index: u32,
        cancel: CancellationToken,
    ) -> Result<Held, BenchError> {
        let span = tracing::info_span!("idle", %proto, index);
        async {
            match proto {
                Proto::Mqtt => mqtt::idle(&self.mqtt, index, cancel).await,
                Proto::Amqp => amqp::idle(&self.amqp, index, cancel).await,
                Proto::Stomp => stomp::idle(&self.stomp, cancel).await,
            }
        }
        .instrument(span)
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amqp_frame_fits_the_payload_within_protocol_bounds() {
        assert_eq!(amqp_frame_max(64), 4096);
        assert_eq!(amqp_frame_max(10_000), 11_024);
        assert_eq!(amqp_frame_max(1_000_000), 131_072);
    }
}
