//! What each channel method does to the core: exchange, queue, basic,
//! confirm and tx classes (the stateful parts of basic are in `basic`).

use std::sync::Arc;

use amq_protocol::protocol::{AMQPClass, access, basic, channel, confirm, exchange, queue, tx};
use amq_protocol::types::{FieldTable, ShortString};
use junction_core::{
    Binding, CoreError, Destination, ExchangeDef, ExchangeKind, Permission, QueueDef, Resource,
    Settle,
};

use crate::channel::{Outstanding, TxOp};
use crate::connection::Conn;
use crate::convert;
use crate::error::{AmqpError, code};

/// A core binding from a bind/unbind method's fields.
fn binding(
    source: &ShortString,
    destination: Destination,
    routing_key: &ShortString,
    arguments: &FieldTable,
) -> Binding {
    Binding {
        source: source.as_str().to_string(),
        destination,
        routing_key: routing_key.as_str().to_string(),
        arguments: convert::table_to_core(arguments),
    }
}

fn nack_or_requeue(requeue: bool) -> Settle {
    if requeue {
        Settle::Requeue
    } else {
        Settle::Reject
    }
}

impl Conn {
    pub(crate) async fn dispatch(&mut self, id: u16, m: AMQPClass) -> Result<(), AmqpError> {
        let broker = Arc::clone(&self.ctx.broker);
        let vhost = self.vhost.clone();
        let conn = Some(self.guard.id());
        match m {
            AMQPClass::Channel(channel::AMQPMethod::Close(_)) => {
                self.release_channel(id);
                self.channels.remove(&id);
                self.guard.set_channels(self.channels.keys().copied());
                self.reply(
                    id,
                    AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
                );
            }
            AMQPClass::Channel(channel::AMQPMethod::CloseOk(_)) => {}
            AMQPClass::Channel(channel::AMQPMethod::Flow(f)) => {
                let ch = self.open_channel(id)?;
                ch.flow_active = f.active;
                let held: Vec<_> = if f.active {
                    ch.held.drain(..).collect()
                } else {
                    Vec::new()
                };
                self.reply(
                    id,
                    AMQPClass::Channel(channel::AMQPMethod::FlowOk(channel::FlowOk {
                        active: f.active,
                    })),
                );
                for d in held {
                    self.deliver(d);
                }
            }
            AMQPClass::Access(access::AMQPMethod::Request(_)) => {
                self.reply(
                    id,
                    AMQPClass::Access(access::AMQPMethod::RequestOk(access::RequestOk {})),
                );
            }
            AMQPClass::Exchange(exchange::AMQPMethod::Declare(d)) => {
                let kind = if d.passive && d.kind.as_str().is_empty() {
                    ExchangeKind::Direct
                } else {
                    d.kind
                        .as_str()
                        .parse::<ExchangeKind>()
                        .map_err(Conn::core_error)?
                };
                if !d.passive {
                    self.allow(
                        Permission::Configure,
                        Resource::Exchange(d.exchange.as_str()),
                    )
                    .await?;
                    if let Some(ae) = string_arg(&d.arguments, "alternate-exchange") {
                        // RabbitMQ: read on this exchange, write on its AE.
                        self.allow(Permission::Read, Resource::Exchange(d.exchange.as_str()))
                            .await?;
                        self.allow(Permission::Write, Resource::Exchange(&ae))
                            .await?;
                    }
                }
                let def = ExchangeDef {
                    name: d.exchange.as_str().to_string(),
                    kind,
                    durable: d.durable,
                    auto_delete: d.auto_delete,
                    internal: d.internal,
                    arguments: convert::table_to_core(&d.arguments),
                };
                broker
                    .declare_exchange(&vhost, def, d.passive)
                    .await
                    .map_err(Conn::core_error)?;
                if !d.nowait {
                    self.reply(
                        id,
                        AMQPClass::Exchange(exchange::AMQPMethod::DeclareOk(
                            exchange::DeclareOk {},
                        )),
                    );
                }
            }
            AMQPClass::Exchange(exchange::AMQPMethod::Delete(d)) => {
                self.allow(
                    Permission::Configure,
                    Resource::Exchange(d.exchange.as_str()),
                )
                .await?;
                // Deleting what does not exist is delete-ok, as in RabbitMQ
                // 3.x (cleanup code relies on it).
                match broker
                    .delete_exchange(&vhost, d.exchange.as_str(), d.if_unused)
                    .await
                {
                    Ok(_) | Err(CoreError::NotFound(_)) => {}
                    Err(e) => return Err(Conn::core_error(e)),
                }
                if !d.nowait {
                    self.reply(
                        id,
                        AMQPClass::Exchange(exchange::AMQPMethod::DeleteOk(exchange::DeleteOk {})),
                    );
                }
            }
            AMQPClass::Exchange(exchange::AMQPMethod::Bind(b)) => {
                let ok = (!b.nowait).then_some(AMQPClass::Exchange(exchange::AMQPMethod::BindOk(
                    exchange::BindOk {},
                )));
                let dest = Destination::Exchange(b.destination.as_str().to_string());
                let binding = binding(&b.source, dest, &b.routing_key, &b.arguments);
                self.set_binding(id, true, binding, ok).await?;
            }
            AMQPClass::Exchange(exchange::AMQPMethod::Unbind(b)) => {
                let ok = (!b.nowait).then_some(AMQPClass::Exchange(
                    exchange::AMQPMethod::UnbindOk(exchange::UnbindOk {}),
                ));
                let dest = Destination::Exchange(b.destination.as_str().to_string());
                let binding = binding(&b.source, dest, &b.routing_key, &b.arguments);
                self.set_binding(id, false, binding, ok).await?;
            }
            AMQPClass::Queue(queue::AMQPMethod::Declare(d)) => {
                let server_named = d.queue.as_str().is_empty() && !d.passive;
                let name = if server_named {
                    broker.new_queue_name()
                } else {
                    d.queue.as_str().to_string()
                };
                if !d.passive {
                    self.allow(Permission::Configure, Resource::Queue(&name))
                        .await?;
                    if let Some(dlx) = string_arg(&d.arguments, "x-dead-letter-exchange") {
                        // RabbitMQ: read on the queue, write on its DLX.
                        self.allow(Permission::Read, Resource::Queue(&name)).await?;
                        self.allow(Permission::Write, Resource::Exchange(&dlx))
                            .await?;
                    }
                }
                let def = QueueDef {
                    name,
                    durable: d.durable,
                    exclusive_owner: d.exclusive.then_some(self.guard.id()),
                    auto_delete: d.auto_delete,
                    arguments: convert::table_to_core(&d.arguments),
                };
                let info = if server_named {
                    broker.declare_server_named(&vhost, def, conn).await
                } else {
                    broker.declare_queue_as(&vhost, def, d.passive, conn).await
                }
                .map_err(Conn::core_error)?;
                self.open_channel(id)?.last_queue = Some(info.name.clone());
                if !d.nowait {
                    self.reply(
                        id,
                        AMQPClass::Queue(queue::AMQPMethod::DeclareOk(queue::DeclareOk {
                            queue: info.name.as_str().into(),
                            message_count: info.messages.min(u64::from(u32::MAX)) as u32,
                            consumer_count: info.consumers.min(u64::from(u32::MAX)) as u32,
                        })),
                    );
                }
            }
            AMQPClass::Queue(queue::AMQPMethod::Bind(b)) => {
                let ok = (!b.nowait).then_some(AMQPClass::Queue(queue::AMQPMethod::BindOk(
                    queue::BindOk {},
                )));
                let dest = Destination::Queue(self.open_channel(id)?.queue_name(b.queue.as_str())?);
                let binding = binding(&b.exchange, dest, &b.routing_key, &b.arguments);
                self.set_binding(id, true, binding, ok).await?;
            }
            AMQPClass::Queue(queue::AMQPMethod::Unbind(b)) => {
                // queue.unbind has no nowait flag.
                let ok = Some(AMQPClass::Queue(queue::AMQPMethod::UnbindOk(
                    queue::UnbindOk {},
                )));
                let dest = Destination::Queue(self.open_channel(id)?.queue_name(b.queue.as_str())?);
                let binding = binding(&b.exchange, dest, &b.routing_key, &b.arguments);
                self.set_binding(id, false, binding, ok).await?;
            }
            AMQPClass::Queue(queue::AMQPMethod::Purge(p)) => {
                let name = self.open_channel(id)?.queue_name(p.queue.as_str())?;
                self.allow(Permission::Read, Resource::Queue(&name)).await?;
                let n = broker
                    .purge_queue(&vhost, &name, conn)
                    .await
                    .map_err(Conn::core_error)?;
                if !p.nowait {
                    self.reply(
                        id,
                        AMQPClass::Queue(queue::AMQPMethod::PurgeOk(queue::PurgeOk {
                            message_count: n.min(u64::from(u32::MAX)) as u32,
                        })),
                    );
                }
            }
            AMQPClass::Queue(queue::AMQPMethod::Delete(d)) => {
                let name = self.open_channel(id)?.queue_name(d.queue.as_str())?;
                self.allow(Permission::Configure, Resource::Queue(&name))
                    .await?;
                // A queue that does not exist is deleted: delete-ok, 0
                // messages (RabbitMQ 3.x).
                let n = match broker
                    .delete_queue(&vhost, &name, d.if_unused, d.if_empty, conn)
                    .await
                {
                    Ok(n) => n,
                    Err(CoreError::NotFound(_)) => 0,
                    Err(e) => return Err(Conn::core_error(e)),
                };
                if !d.nowait {
                    self.reply(
                        id,
                        AMQPClass::Queue(queue::AMQPMethod::DeleteOk(queue::DeleteOk {
                            message_count: n.min(u64::from(u32::MAX)) as u32,
                        })),
                    );
                }
            }
            AMQPClass::Basic(basic::AMQPMethod::Qos(q)) => {
                let ch = self.open_channel(id)?;
                if q.global {
                    ch.channel_credit.set_limit(u32::from(q.prefetch_count));
                } else {
                    ch.consumer_prefetch = u32::from(q.prefetch_count);
                }
                self.reply(
                    id,
                    AMQPClass::Basic(basic::AMQPMethod::QosOk(basic::QosOk {})),
                );
                self.pump(id);
            }
            AMQPClass::Basic(basic::AMQPMethod::Consume(mut c)) => {
                if c.queue.as_str() == junction_core::interop::DIRECT_REPLY_TO {
                    // A connection's own reply queue needs no permission
                    // (RabbitMQ).
                    c.queue = self.direct_reply_queue(id, &c).await?.as_str().into();
                } else {
                    let name = self.open_channel(id)?.queue_name(c.queue.as_str())?;
                    self.allow(Permission::Read, Resource::Queue(&name)).await?;
                }
                self.consume(id, c).await?
            }
            AMQPClass::Basic(basic::AMQPMethod::Cancel(c)) => {
                let ch = self.open_channel(id)?;
                if let Some(consumer) = ch.consumers.remove(c.consumer_tag.as_str()) {
                    let cid = consumer.handle.id();
                    // Unsettled deliveries stay settleable on the channel.
                    consumer.handle.cancel(false);
                    // Deliveries the queue made before the cancel may still
                    // be in the event channel: they are sent, and this
                    // marker, queued behind them, retires the consumer.
                    if let Some(cref) = self.consumers.get_mut(&cid) {
                        cref.cancelling = true;
                    }
                    let _ = self
                        .events_tx
                        .send(junction_core::ConsumerEvent::Cancelled(cid));
                }
                if !c.nowait {
                    self.reply(
                        id,
                        AMQPClass::Basic(basic::AMQPMethod::CancelOk(basic::CancelOk {
                            consumer_tag: c.consumer_tag,
                        })),
                    );
                }
            }
            AMQPClass::Basic(basic::AMQPMethod::Publish(p)) => {
                if p.immediate {
                    return Err(AmqpError::connection(
                        code::NOT_IMPLEMENTED,
                        "immediate=true",
                    ));
                }
                self.start_pending(id, p)?;
            }
            AMQPClass::Basic(basic::AMQPMethod::Get(g)) => {
                let name = self.open_channel(id)?.queue_name(g.queue.as_str())?;
                self.allow(Permission::Read, Resource::Queue(&name)).await?;
                let ch = self.open_channel(id)?;
                let holder = ch.getter;
                match broker
                    .get(&vhost, &name, holder, g.no_ack, conn)
                    .await
                    .map_err(Conn::core_error)?
                {
                    Some(ok) => {
                        let outstanding = (!g.no_ack).then(|| Outstanding {
                            queue: Arc::clone(&ok.queue),
                            holder,
                            tag: ok.delivery.tag,
                        });
                        let tag = self.open_channel(id)?.track(outstanding);
                        let m = &ok.delivery.message;
                        self.reply_content(
                            id,
                            AMQPClass::Basic(basic::AMQPMethod::GetOk(basic::GetOk {
                                delivery_tag: tag,
                                redelivered: ok.delivery.redelivered,
                                exchange: convert::short(&m.exchange),
                                routing_key: convert::short(&m.routing_key),
                                message_count: ok.remaining.min(u64::from(u32::MAX)) as u32,
                            })),
                            convert::properties_from_core(&m.properties),
                            &m.body,
                        );
                    }
                    None => self.reply(
                        id,
                        AMQPClass::Basic(basic::AMQPMethod::GetEmpty(basic::GetEmpty {})),
                    ),
                }
            }
            AMQPClass::Basic(basic::AMQPMethod::Ack(a)) => {
                self.settle(id, a.delivery_tag, a.multiple, Settle::Ack)?
            }
            AMQPClass::Basic(basic::AMQPMethod::Reject(r)) => {
                self.settle(id, r.delivery_tag, false, nack_or_requeue(r.requeue))?
            }
            AMQPClass::Basic(basic::AMQPMethod::Nack(n)) => {
                self.settle(id, n.delivery_tag, n.multiple, nack_or_requeue(n.requeue))?
            }
            AMQPClass::Basic(basic::AMQPMethod::Recover(r)) => {
                if !r.requeue {
                    // As RabbitMQ: redelivering to the same consumer only
                    // is not supported.
                    return Err(AmqpError::connection(
                        code::NOT_IMPLEMENTED,
                        "requeue=false",
                    ));
                }
                self.recover(id)?;
                self.reply(
                    id,
                    AMQPClass::Basic(basic::AMQPMethod::RecoverOk(basic::RecoverOk {})),
                );
            }
            AMQPClass::Basic(basic::AMQPMethod::RecoverAsync(r)) => {
                if !r.requeue {
                    return Err(AmqpError::connection(
                        code::NOT_IMPLEMENTED,
                        "requeue=false",
                    ));
                }
                self.recover(id)?
            }
            AMQPClass::Confirm(confirm::AMQPMethod::Select(s)) => {
                let ch = self.open_channel(id)?;
                if ch.tx.is_some() {
                    return Err(AmqpError::channel(
                        code::PRECONDITION_FAILED,
                        "cannot switch from tx to confirm mode",
                    ));
                }
                if ch.confirm.is_none() {
                    ch.confirm = Some(1);
                }
                if !s.nowait {
                    self.reply(
                        id,
                        AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(confirm::SelectOk {})),
                    );
                }
            }
            AMQPClass::Tx(tx::AMQPMethod::Select(_)) => {
                let ch = self.open_channel(id)?;
                if ch.confirm.is_some() {
                    return Err(AmqpError::channel(
                        code::PRECONDITION_FAILED,
                        "cannot switch from confirm to tx mode",
                    ));
                }
                if ch.tx.is_none() {
                    ch.tx = Some(Vec::new());
                }
                self.reply(id, AMQPClass::Tx(tx::AMQPMethod::SelectOk(tx::SelectOk {})));
            }
            AMQPClass::Tx(tx::AMQPMethod::Commit(_)) => {
                let ch = self.open_channel(id)?;
                ch.tx_bytes = 0;
                let Some(ops) = ch.tx.replace(Vec::new()) else {
                    return Err(AmqpError::channel(
                        code::PRECONDITION_FAILED,
                        "channel is not transactional",
                    ));
                };
                let mut receipts = Vec::new();
                for op in ops {
                    match op {
                        TxOp::Publish {
                            message, mandatory, ..
                        } => {
                            receipts.push(self.publish_now(id, *message, mandatory).await?);
                        }
                        TxOp::Settle { tag, multiple, how } => {
                            self.settle_now(id, tag, multiple, how)?
                        }
                    }
                }
                // Every publish is queued for the store first; the receipts then
                // resolve in order, mostly on shared syncs.
                for published in receipts {
                    published.confirmed().await.map_err(Conn::core_error)?;
                }
                self.reply(id, AMQPClass::Tx(tx::AMQPMethod::CommitOk(tx::CommitOk {})));
            }
            AMQPClass::Tx(tx::AMQPMethod::Rollback(_)) => {
                let ch = self.open_channel(id)?;
                ch.tx_bytes = 0;
                if ch.tx.replace(Vec::new()).is_none() {
                    return Err(AmqpError::channel(
                        code::PRECONDITION_FAILED,
                        "channel is not transactional",
                    ));
                }
                self.reply(
                    id,
                    AMQPClass::Tx(tx::AMQPMethod::RollbackOk(tx::RollbackOk {})),
                );
            }
            other => {
                return Err(AmqpError::connection(
                    code::COMMAND_INVALID,
                    format!(
                        "unexpected method {}",
                        crate::connection::method_name(&other)
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// A string argument of a declare (`alternate-exchange`,
/// `x-dead-letter-exchange`).
fn string_arg(arguments: &FieldTable, key: &str) -> Option<String> {
    match arguments.inner().get(key) {
        Some(amq_protocol::types::AMQPValue::LongString(s)) => Some(s.to_string()),
        Some(amq_protocol::types::AMQPValue::ShortString(s)) => Some(s.as_str().to_string()),
        _ => None,
    }
}

impl Conn {
    /// `perm` on `what`, or 403 ACCESS_REFUSED on the channel.
    pub(crate) async fn allow(
        &mut self,
        perm: Permission,
        what: Resource<'_>,
    ) -> Result<(), AmqpError> {
        self.access
            .check(perm, what)
            .await
            .map_err(|d| AmqpError::channel(code::ACCESS_REFUSED, d.0))
    }

    /// Topic `perm` on `routing_key` when `exchange` is a topic exchange
    /// the user has topic permissions on; else nothing to check (a missing
    /// exchange fails the operation itself).
    pub(crate) async fn allow_topic(
        &mut self,
        perm: Permission,
        exchange: &str,
        routing_key: &str,
    ) -> Result<(), AmqpError> {
        if !self.access.has_topic_rules(exchange) {
            return Ok(());
        }
        match self.ctx.broker.exchange(&self.vhost, exchange) {
            Ok(def) if def.kind == ExchangeKind::Topic => self
                .access
                .check_topic(perm, exchange, routing_key)
                .await
                .map_err(|d| AmqpError::channel(code::ACCESS_REFUSED, d.0)),
            _ => Ok(()),
        }
    }

    /// `queue.bind`/`exchange.bind` (`add`) or their unbind: changes the
    /// binding in the core, then sends `ok` (None under nowait).
    async fn set_binding(
        &mut self,
        id: u16,
        add: bool,
        binding: Binding,
        ok: Option<AMQPClass>,
    ) -> Result<(), AmqpError> {
        // RabbitMQ: write on the destination, read on the source, and
        // topic read on the binding key of a topic exchange.
        match &binding.destination {
            Destination::Queue(q) => self.allow(Permission::Write, Resource::Queue(q)).await?,
            Destination::Exchange(x) => {
                self.allow(Permission::Write, Resource::Exchange(x)).await?
            }
        }
        self.allow(Permission::Read, Resource::Exchange(&binding.source))
            .await?;
        self.allow_topic(Permission::Read, &binding.source, &binding.routing_key)
            .await?;
        let broker = Arc::clone(&self.ctx.broker);
        let conn = Some(self.guard.id());
        let changed = if add {
            broker.bind(&self.vhost, binding, conn).await
        } else {
            // Unbinding from a queue or exchange that is gone is unbind-ok
            // (RabbitMQ 3.x): the binding does not exist either way.
            match broker.unbind(&self.vhost, &binding, conn).await {
                Err(CoreError::NotFound(_)) => Ok(()),
                other => other,
            }
        };
        changed.map_err(Conn::core_error)?;
        if let Some(ok) = ok {
            self.reply(id, ok);
        }
        Ok(())
    }
}
