//! AMQP 0-9-1 publisher, consumer and idle connection on lapin.
//!
//! - Publisher: one channel; with `--confirms`, "confirm.select" and at most
//!   `inflight` unconfirmed publishes (AMQP 0-9-1 "basic.ack" from the
//!   broker, RabbitMQ publisher confirms), awaited as a window of futures.
//!   `--persistent` sets delivery-mode 2.
//! - Consumer: "basic.qos" with the prefetch, then "basic.consume", no-ack
//!   unless `--manual-ack`, in which case every "basic.deliver" is acked.
//! - Queue set (`--queues N`): each consumer connection declares its block
//!   of the set's queues (transient, exclusive to it, auto-delete: the
//!   broker deletes them when the connection closes, even if the generator
//!   dies) and consumes each on its one channel; deliveries are tagged with
//!   the queue they came from. Publishers pick each message's queue by
//!   [`address::queue_for`].
//! - Named queues are first declared passively (on a scratch channel, since
//!   a failed declare closes its channel) and created durable only when
//!   missing, so a queue created by another protocol's adapter with other
//!   flags is used as it is.

use crate::address::{self, PubTarget, SubSource};
use crate::cli::Proto::Amqp as AMQP;
use crate::collector::Collector;
use crate::error::BenchError;
use crate::load::{CLOSE_TIMEOUT, CONNECT_TIMEOUT, Endpoint, Pacer, PubPlan};
use crate::tls::TlsClient;
use crate::tracker::ConsumerIx;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::tcp::OwnedTLSConfig;
use lapin::types::FieldTable;
use lapin::uri::{AMQPAuthority, AMQPQueryString, AMQPScheme, AMQPUri, AMQPUserInfo};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use std::sync::Arc;
use std::time::Instant;
use tokio::task::JoinHandle;
use tokio::time::{timeout, timeout_at};
use tokio_util::sync::CancellationToken;

/// AMQP 0-9-1 "basic.properties" delivery-mode of a persistent message.
const PERSISTENT: u8 = 2;

/// How to talk AMQP for this run.
#[derive(Debug, Clone)]
pub struct AmqpSettings {
    /// Broker address, credentials and vhost.
    pub endpoint: Endpoint,
    /// delivery-mode 2 on every publish.
    pub persistent: bool,
    /// Publisher confirms.
    pub confirms: bool,
    /// Consumers ack each delivery (otherwise no-ack).
    pub manual_ack: bool,
    /// "basic.qos" prefetch-count.
    pub prefetch: u16,
    /// Unconfirmed publishes allowed per publisher.
    pub inflight: u16,
    /// Largest frame we offer in "connection.tune-ok" (the broker's limit
    /// still applies). lapin keeps two buffers of 32 frames per connection
    /// and one OS thread, so a frame no bigger than the payload needs keeps
    /// thousands of idle connections affordable.
    pub frame_max: u32,
    /// TLS (`--tls-ca`): every connection is `amqps`.
    pub tls: Option<TlsClient>,
    /// `x-queue-type` of the queue the generator declares (None: the
    /// broker's default).
    pub queue_type: Option<String>,
}

fn proto_error(e: lapin::Error) -> BenchError {
    BenchError::protocol(AMQP, e)
}

/// Opens a connection named `name` (shown in the broker's management UI).
async fn connect(s: &AmqpSettings, name: &str) -> Result<Connection, BenchError> {
    let e = &s.endpoint;
    let uri = AMQPUri {
        scheme: if s.tls.is_some() {
            AMQPScheme::AMQPS
        } else {
            AMQPScheme::AMQP
        },
        authority: AMQPAuthority {
            userinfo: AMQPUserInfo {
                username: e.user.clone(),
                password: e.password.clone(),
            },
            host: e.host.clone(),
            port: e.port,
        },
        vhost: e.vhost.clone(),
        query: AMQPQueryString {
            frame_max: Some(s.frame_max),
            ..AMQPQueryString::default()
        },
    };
    let props = ConnectionProperties::default().with_connection_name(name.into());
    let connecting = async {
        match &s.tls {
            None => Connection::connect_uri(uri, props).await,
            Some(tls) => {
                // The server's certificate is checked against the URI's
                // host; only the CA is trusted (no client certificate).
                let config = OwnedTLSConfig {
                    identity: None,
                    cert_chain: Some(tls.ca_pem().to_string()),
                };
                let runtime = lapin::runtime::default_runtime()?;
                Connection::connect_uri_with_config(uri, props, config, runtime).await
            }
        }
    };
    match timeout(CONNECT_TIMEOUT, connecting).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(err)) => Err(BenchError::connect(AMQP, &e.addr(), err)),
        Err(_) => Err(BenchError::connect(
            AMQP,
            &e.addr(),
            "no connection.open-ok in time",
        )),
    }
}

/// Makes sure queue `name` exists: passive declare first, durable create if
/// it is missing.
async fn ensure_queue(
    s: &AmqpSettings,
    conn: &Connection,
    channel: &Channel,
    name: &str,
) -> Result<(), BenchError> {
    let probe = conn.create_channel().await.map_err(proto_error)?;
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    if probe
        .queue_declare(name.into(), passive, FieldTable::default())
        .await
        .is_ok()
    {
        let _ = probe.close(200, "probed".into()).await;
        return Ok(());
    }
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    let mut arguments = FieldTable::default();
    if let Some(kind) = &s.queue_type {
        arguments.insert(
            "x-queue-type".into(),
            lapin::types::AMQPValue::LongString(kind.as_str().into()),
        );
    }
    channel
        .queue_declare(name.into(), durable, arguments)
        .await
        .map(|_| ())
        .map_err(proto_error)
}

async fn close(conn: &Connection) {
    let _ = timeout(CLOSE_TIMEOUT, conn.close(200, "bench done".into())).await;
}

/// The routing keys of one publisher's messages.
enum Keys {
    /// Every message with this key.
    One(String),
    /// A queue set's names: message `seq` of publisher `p` goes to
    /// `names[queue_for(p, seq, len)]`.
    Set(Vec<String>),
}

impl Keys {
    /// The routing key of message `seq` of publisher `publisher`.
    fn of(&self, publisher: u32, seq: u64) -> &str {
        match self {
            Keys::One(key) => key,
            Keys::Set(names) => {
                let queues = u32::try_from(names.len()).unwrap_or(u32::MAX);
                let q = address::queue_for(publisher, seq, queues) as usize;
                names.get(q).map_or("", String::as_str)
            }
        }
    }
}

/// Publishes `plan.count` messages to `target` until done or
/// `plan.stop_at`, then waits up to `plan.drain` for outstanding confirms.
pub async fn publish(
    s: &AmqpSettings,
    target: &PubTarget,
    plan: &PubPlan,
    collector: Arc<Collector>,
) -> Result<(), BenchError> {
    let (exchange, keys, queue) = match target {
        PubTarget::Amqp {
            exchange,
            routing_key,
            queue,
        } => (
            exchange.as_str(),
            Keys::One(routing_key.clone()),
            queue.as_deref(),
        ),
        // The consumers declared the set's queues before any publisher
        // started; through the default exchange, key = queue name.
        PubTarget::AmqpQueues { prefix, queues } => (
            "",
            Keys::Set(
                (0..*queues)
                    .map(|q| address::queue_name(prefix, q))
                    .collect(),
            ),
            None,
        ),
        other => {
            return Err(BenchError::Internal(format!(
                "AMQP publisher given {other:?}"
            )));
        }
    };
    let conn = connect(s, &format!("junction-bench publisher {}", plan.index)).await?;
    let result = publish_on(s, &conn, exchange, &keys, queue, plan, &collector).await;
    close(&conn).await;
    result.map_err(|e| BenchError::protocol(AMQP, format!("publisher {}: {e}", plan.index)))
}

async fn publish_on(
    s: &AmqpSettings,
    conn: &Connection,
    exchange: &str,
    keys: &Keys,
    queue: Option<&str>,
    plan: &PubPlan,
    collector: &Collector,
) -> Result<(), BenchError> {
    let channel = conn.create_channel().await.map_err(proto_error)?;
    if let Some(queue) = queue {
        ensure_queue(s, conn, &channel, queue).await?;
    }
    if s.confirms {
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(proto_error)?;
    }
    let props = if s.persistent {
        BasicProperties::default().with_delivery_mode(PERSISTENT)
    } else {
        BasicProperties::default()
    };
    let pacer = Pacer::new(plan.rate, Instant::now());
    let stop_at = tokio::time::Instant::from_std(plan.stop_at);
    let mut unconfirmed = FuturesUnordered::new();
    let mut nacked = 0u64;
    'publishing: for seq in 0..plan.count {
        if !pacer.wait(seq, plan.stop_at).await || !collector.wait_for_room(plan.stop_at).await {
            break;
        }
        while unconfirmed.len() >= usize::from(plan.inflight) {
            match timeout_at(stop_at, unconfirmed.next()).await {
                Ok(Some(Ok(confirmation))) => {
                    nacked += u64::from(lapin::Confirmation::is_nack(&confirmation))
                }
                Ok(Some(Err(e))) => return Err(proto_error(e)),
                Ok(None) => {}
                Err(_) => break 'publishing,
            }
        }
        let body = collector.message(plan.index, seq, plan.size);
        let publish = channel.basic_publish(
            exchange.into(),
            keys.of(plan.index.0, seq).into(),
            BasicPublishOptions::default(),
            &body,
            props.clone(),
        );
        match timeout_at(stop_at, publish).await {
            Ok(Ok(confirm)) => {
                collector.on_sent(1);
                if s.confirms {
                    unconfirmed.push(confirm);
                }
            }
            Ok(Err(e)) => return Err(proto_error(e)),
            Err(_) => break,
        }
    }
    let drained = timeout(plan.drain, async {
        while let Some(confirmation) = unconfirmed.next().await {
            nacked += u64::from(confirmation.map_err(proto_error)?.is_nack());
        }
        Ok::<(), BenchError>(())
    })
    .await;
    if let Ok(Err(e)) = drained {
        return Err(e);
    }
    if nacked > 0 {
        tracing::warn!(publisher = %plan.index, nacked, "broker nacked publishes");
    }
    // A channel's methods are handled in order, so once the broker answers
    // this "basic.qos" it has taken every publish before it; closing without
    // that barrier can lose the last unconfirmed publishes.
    let _ = timeout(plan.drain, channel.basic_qos(0, BasicQosOptions::default())).await;
    let _ = timeout(CLOSE_TIMEOUT, channel.close(200, "bench done".into())).await;
    Ok(())
}

/// Connects consumer `index`, sets up `source` and starts consuming; then
/// records every delivery in a task that runs until `cancel`.
pub async fn consume(
    s: &AmqpSettings,
    source: &SubSource,
    index: u32,
    collector: Arc<Collector>,
    cancel: CancellationToken,
) -> Result<JoinHandle<Result<(), BenchError>>, BenchError> {
    let conn = connect(s, &format!("junction-bench consumer {index}")).await?;
    let channel = conn.create_channel().await.map_err(proto_error)?;
    channel
        .basic_qos(s.prefetch, BasicQosOptions::default())
        .await
        .map_err(proto_error)?;
    let (queue, binding) = match source {
        SubSource::AmqpPrivate { exchange, key } => {
            let private = QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            };
            let q = channel
                .queue_declare("".into(), private, FieldTable::default())
                .await
                .map_err(proto_error)?;
            let name = q.name().to_string();
            bind(&channel, &name, exchange, key).await?;
            (name, None)
        }
        SubSource::AmqpShared {
            queue,
            bind: binding,
        } => {
            ensure_queue(s, &conn, &channel, queue).await?;
            if let Some((exchange, key)) = binding {
                bind(&channel, queue, exchange, key).await?;
            }
            (queue.clone(), binding.clone())
        }
        other => {
            return Err(BenchError::Internal(format!(
                "AMQP consumer given {other:?}"
            )));
        }
    };
    let options = BasicConsumeOptions {
        no_ack: !s.manual_ack,
        ..BasicConsumeOptions::default()
    };
    let mut consumer = channel
        .basic_consume(
            queue.as_str().into(),
            format!("jb-{index}").into(),
            options,
            FieldTable::default(),
        )
        .await
        .map_err(proto_error)?;
    let manual_ack = s.manual_ack;
    let consumer_index = ConsumerIx(index);
    Ok(tokio::spawn(async move {
        // Acks in flight: each "basic.ack" goes out without waiting for the
        // previous one, so acking costs no round trip per message. At most
        // `prefetch` are pending: the broker sends no more unacked.
        let mut acks = FuturesUnordered::new();
        let result = loop {
            tokio::select! {
                biased;
                () = cancel.cancelled() => break Ok(()),
                Some(acked) = acks.next(), if !acks.is_empty() => {
                    if let Err(e) = acked {
                        break Err(proto_error(e));
                    }
                }
                delivery = consumer.next() => match delivery {
                    Some(Ok(delivery)) => {
                        collector.on_message(consumer_index, &delivery.data);
                        if manual_ack {
                            let acker = delivery.acker;
                            acks.push(async move { acker.ack(BasicAckOptions::default()).await });
                        }
                    }
                    Some(Err(e)) => break Err(proto_error(e)),
                    None => break Err(BenchError::protocol(AMQP, "consumer cancelled by the broker")),
                },
            }
        };
        if let Some((exchange, key)) = binding {
            // Leave no binding behind: it would fill the queue in later runs.
            let _ = timeout(
                CLOSE_TIMEOUT,
                channel.queue_unbind(
                    queue.as_str().into(),
                    exchange.as_str().into(),
                    key.as_str().into(),
                    FieldTable::default(),
                ),
            )
            .await;
        }
        let _ = timeout(CLOSE_TIMEOUT, channel.close(200, "bench done".into())).await;
        close(&conn).await;
        result
    }))
}

/// Queue set: connects consumer connection `index`, declares the queues
/// `range` of the set named after `prefix` (transient, exclusive to this
/// connection, auto-delete) and consumes each on one channel; then records
/// every delivery as coming from its queue (consumer index = queue index)
/// in a task that runs until `cancel`. Closing the connection deletes the
/// queues.
pub async fn consume_queues(
    s: &AmqpSettings,
    prefix: &str,
    index: u32,
    range: std::ops::Range<u32>,
    collector: Arc<Collector>,
    cancel: CancellationToken,
) -> Result<JoinHandle<Result<(), BenchError>>, BenchError> {
    let conn = connect(s, &format!("junction-bench consumer {index}")).await?;
    let set_up = async {
        let channel = conn.create_channel().await.map_err(proto_error)?;
        channel
            .basic_qos(s.prefetch, BasicQosOptions::default())
            .await
            .map_err(proto_error)?;
        let transient = QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..QueueDeclareOptions::default()
        };
        let options = BasicConsumeOptions {
            no_ack: !s.manual_ack,
            ..BasicConsumeOptions::default()
        };
        let mut streams = Vec::with_capacity(range.len());
        for q in range.clone() {
            let name = address::queue_name(prefix, q);
            channel
                .queue_declare(name.as_str().into(), transient, FieldTable::default())
                .await
                .map_err(proto_error)?;
            let consumer = channel
                .basic_consume(
                    name.as_str().into(),
                    format!("jb-{q}").into(),
                    options,
                    FieldTable::default(),
                )
                .await
                .map_err(proto_error)?;
            streams.push(consumer.map(move |delivery| (q, delivery)));
        }
        Ok::<_, BenchError>((channel, futures_util::stream::select_all(streams)))
    };
    let (channel, mut deliveries) = match set_up.await {
        Ok(ok) => ok,
        Err(e) => {
            close(&conn).await;
            return Err(e);
        }
    };
    let manual_ack = s.manual_ack;
    Ok(tokio::spawn(async move {
        // As in `consume`: acks go out without waiting for each other.
        let mut acks = FuturesUnordered::new();
        let result = loop {
            tokio::select! {
                biased;
                () = cancel.cancelled() => break Ok(()),
                Some(acked) = acks.next(), if !acks.is_empty() => {
                    if let Err(e) = acked {
                        break Err(proto_error(e));
                    }
                }
                delivery = deliveries.next() => match delivery {
                    Some((q, Ok(delivery))) => {
                        collector.on_message(ConsumerIx(q), &delivery.data);
                        if manual_ack {
                            let acker = delivery.acker;
                            acks.push(async move { acker.ack(BasicAckOptions::default()).await });
                        }
                    }
                    Some((_, Err(e))) => break Err(proto_error(e)),
                    None => break Err(BenchError::protocol(AMQP, "every consumer cancelled by the broker")),
                },
            }
        };
        let _ = timeout(CLOSE_TIMEOUT, channel.close(200, "bench done".into())).await;
        close(&conn).await;
        result
    }))
}

async fn bind(channel: &Channel, queue: &str, exchange: &str, key: &str) -> Result<(), BenchError> {
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(proto_error)
}

/// Opens one idle connection and holds it until `cancel`; lapin answers the
/// broker's heartbeats meanwhile.
pub async fn idle(
    s: &AmqpSettings,
    index: u32,
    cancel: CancellationToken,
) -> Result<JoinHandle<Result<(), BenchError>>, BenchError> {
    let conn = connect(s, &format!("junction-bench idle {index}")).await?;
    Ok(tokio::spawn(async move {
        cancel.cancelled().await;
        let result = if conn.status().connected() {
            Ok(())
        } else {
            Err(BenchError::protocol(AMQP, "idle connection lost"))
        };
        close(&conn).await;
        result
    }))
}
