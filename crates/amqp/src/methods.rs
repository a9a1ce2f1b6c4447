//! What each channel method does to the core: exchange, queue, basic,
//! confirm and tx classes, and the publish path.

use std::sync::Arc;

use amq_protocol::protocol::basic::AMQPProperties;
use amq_protocol::protocol::{AMQPClass, access, basic, channel, confirm, exchange, queue, tx};
use amq_protocol::types::{FieldTable, ShortString};
use bytes::Bytes;
use junction_core::{
    Binding, ConsumerSpec, Destination, ExchangeDef, ExchangeKind, Message, Origin, Protocol,
    QueueDef, Settle,
};

use crate::channel::{ChannelConsumer, Outstanding, TxOp};
use crate::connection::{Conn, ConsumerRef};
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
                    if let Some(tag) = self.consumers.get(&d.consumer).map(|c| c.tag.clone()) {
                        self.deliver(id, &tag, d);
                    }
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
                broker
                    .delete_exchange(&vhost, d.exchange.as_str(), d.if_unused)
                    .await
                    .map_err(Conn::core_error)?;
                if !d.nowait {
                    self.reply(
                        id,
                        AMQPClass::Exchange(exchange::AMQPMethod::DeleteOk(exchange::DeleteOk {})),
                    );
                }
            }
            AMQPClass::Exchange(exchange::AMQPMethod::Bind(b)) => {
                let binding = binding(
                    &b.source,
                    Destination::Exchange(b.destination.as_str().to_string()),
                    &b.routing_key,
                    &b.arguments,
                );
                broker
                    .bind(&vhost, binding, conn)
                    .await
                    .map_err(Conn::core_error)?;
                if !b.nowait {
                    self.reply(
                        id,
                        AMQPClass::Exchange(exchange::AMQPMethod::BindOk(exchange::BindOk {})),
                    );
                }
            }
            AMQPClass::Exchange(exchange::AMQPMethod::Unbind(b)) => {
                let binding = binding(
                    &b.source,
                    Destination::Exchange(b.destination.as_str().to_string()),
                    &b.routing_key,
                    &b.arguments,
                );
                broker
                    .unbind(&vhost, &binding, conn)
                    .await
                    .map_err(Conn::core_error)?;
                if !b.nowait {
                    self.reply(
                        id,
                        AMQPClass::Exchange(exchange::AMQPMethod::UnbindOk(exchange::UnbindOk {})),
                    );
                }
            }
            AMQPClass::Queue(queue::AMQPMethod::Declare(d)) => {
                let def = QueueDef {
                    name: d.queue.as_str().to_string(),
                    durable: d.durable,
                    exclusive_owner: d.exclusive.then_some(self.guard.id()),
                    auto_delete: d.auto_delete,
                    arguments: convert::table_to_core(&d.arguments),
                };
                let info = broker
                    .declare_queue_as(&vhost, def, d.passive, conn)
                    .await
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
                let name = self.open_channel(id)?.queue_name(b.queue.as_str())?;
                let binding = binding(
                    &b.exchange,
                    Destination::Queue(name),
                    &b.routing_key,
                    &b.arguments,
                );
                broker
                    .bind(&vhost, binding, conn)
                    .await
                    .map_err(Conn::core_error)?;
                if !b.nowait {
                    self.reply(
                        id,
                        AMQPClass::Queue(queue::AMQPMethod::BindOk(queue::BindOk {})),
                    );
                }
            }
            AMQPClass::Queue(queue::AMQPMethod::Unbind(b)) => {
                let name = self.open_channel(id)?.queue_name(b.queue.as_str())?;
                let binding = binding(
                    &b.exchange,
                    Destination::Queue(name),
                    &b.routing_key,
                    &b.arguments,
                );
                broker
                    .unbind(&vhost, &binding, conn)
                    .await
                    .map_err(Conn::core_error)?;
                self.reply(
                    id,
                    AMQPClass::Queue(queue::AMQPMethod::UnbindOk(queue::UnbindOk {})),
                );
            }
            AMQPClass::Queue(queue::AMQPMethod::Purge(p)) => {
                let name = self.open_channel(id)?.queue_name(p.queue.as_str())?;
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
                let n = broker
                    .delete_queue(&vhost, &name, d.if_unused, d.if_empty, conn)
                    .await
                    .map_err(Conn::core_error)?;
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
            AMQPClass::Basic(basic::AMQPMethod::Consume(c)) => self.consume(id, c)?,
            AMQPClass::Basic(basic::AMQPMethod::Cancel(c)) => {
                let ch = self.open_channel(id)?;
                if let Some(consumer) = ch.consumers.remove(c.consumer_tag.as_str()) {
                    self.consumers.remove(&consumer.handle.id());
                    // Unsettled deliveries stay settleable on the channel.
                    consumer.handle.cancel(false);
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
                let ch = self.open_channel(id)?;
                let name = ch.queue_name(g.queue.as_str())?;
                let holder = ch.getter;
                match broker
                    .get(&vhost, &name, holder, g.no_ack, conn)
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
            AMQPClass::Basic(basic::AMQPMethod::Recover(_)) => {
                self.recover(id)?;
                self.reply(
                    id,
                    AMQPClass::Basic(basic::AMQPMethod::RecoverOk(basic::RecoverOk {})),
                );
            }
            AMQPClass::Basic(basic::AMQPMethod::RecoverAsync(_)) => self.recover(id)?,
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
                let Some(ops) = ch.tx.replace(Vec::new()) else {
                    return Err(AmqpError::channel(
                        code::PRECONDITION_FAILED,
                        "channel is not transactional",
                    ));
                };
                for op in ops {
                    match op {
                        TxOp::Publish { message, mandatory } => {
                            let published = self.publish_now(id, *message, mandatory).await?;
                            published.confirmed().await.map_err(Conn::core_error)?;
                        }
                        TxOp::Settle { tag, multiple, how } => {
                            self.settle_now(id, tag, multiple, how)?
                        }
                    }
                }
                self.reply(id, AMQPClass::Tx(tx::AMQPMethod::CommitOk(tx::CommitOk {})));
            }
            AMQPClass::Tx(tx::AMQPMethod::Rollback(_)) => {
                let ch = self.open_channel(id)?;
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

    fn consume(&mut self, id: u16, c: basic::Consume) -> Result<(), AmqpError> {
        let generated = self.consumer_tag();
        let events = self.events_tx.clone();
        let owner = self.guard.id();
        let vhost = self.vhost.clone();
        let broker = Arc::clone(&self.ctx.broker);
        let ch = self.open_channel(id)?;
        let name = ch.queue_name(c.queue.as_str())?;
        let tag = if c.consumer_tag.as_str().is_empty() {
            generated
        } else {
            c.consumer_tag.as_str().to_string()
        };
        if ch.consumers.contains_key(&tag) {
            return Err(AmqpError::connection(
                code::NOT_ALLOWED,
                format!("attempt to reuse consumer tag '{tag}'"),
            ));
        }
        let arguments = convert::table_to_core(&c.arguments);
        let priority = match arguments.get("x-priority") {
            None => 0,
            Some(v) => v
                .as_i128()
                .and_then(|p| i32::try_from(p).ok())
                .ok_or_else(|| {
                    AmqpError::channel(code::PRECONDITION_FAILED, "x-priority must be an integer")
                })?,
        };
        let mut spec = ConsumerSpec::new(tag.clone(), owner);
        spec.no_ack = c.no_ack;
        spec.exclusive = c.exclusive;
        spec.priority = priority;
        if ch.consumer_prefetch > 0 {
            spec.credits
                .push(junction_core::Credit::new(ch.consumer_prefetch));
        }
        spec.credits.push(Arc::clone(&ch.channel_credit));
        let handle = broker
            .consume(&vhost, &name, spec, events)
            .map_err(Conn::core_error)?;
        // consume-ok goes out before any delivery: deliveries wait in the
        // event channel until this turn's frames are written.
        if !c.nowait {
            self.reply(
                id,
                AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(basic::ConsumeOk {
                    consumer_tag: tag.as_str().into(),
                })),
            );
        }
        self.consumers.insert(
            handle.id(),
            ConsumerRef {
                channel: id,
                tag: tag.clone(),
            },
        );
        let ch = self.open_channel(id)?;
        ch.consumers.insert(
            tag,
            ChannelConsumer {
                handle,
                no_ack: c.no_ack,
            },
        );
        Ok(())
    }

    /// Asks this channel's consumers' queues to deliver again (credit freed).
    fn pump(&mut self, id: u16) {
        if let Some(ch) = self.channels.get(&id) {
            for c in ch.consumers.values() {
                c.handle.pump();
            }
        }
    }

    fn settle(&mut self, id: u16, tag: u64, multiple: bool, how: Settle) -> Result<(), AmqpError> {
        let ch = self.open_channel(id)?;
        if let Some(ops) = ch.tx.as_mut() {
            ops.push(TxOp::Settle { tag, multiple, how });
            return Ok(());
        }
        self.settle_now(id, tag, multiple, how)
    }

    fn settle_now(
        &mut self,
        id: u16,
        tag: u64,
        multiple: bool,
        how: Settle,
    ) -> Result<(), AmqpError> {
        let broker = Arc::clone(&self.ctx.broker);
        let ch = self.open_channel(id)?;
        for o in ch.take_outstanding(tag, multiple)? {
            if let Err(e) = broker.settle(&o.queue, o.holder, o.tag, how) {
                tracing::debug!(error = %e, "settle of a delivery the queue no longer holds");
            }
        }
        self.pump(id);
        Ok(())
    }

    fn recover(&mut self, id: u16) -> Result<(), AmqpError> {
        self.settle_now(id, 0, true, Settle::Requeue)
    }

    /// Publishes a complete message (or buffers it in a transaction).
    pub(crate) async fn publish(
        &mut self,
        id: u16,
        method: basic::Publish,
        properties: AMQPProperties,
        body: Bytes,
    ) -> Result<(), AmqpError> {
        let core_props = convert::properties_to_core(&properties);
        if let Some(uid) = &core_props.user_id
            && *uid != self.user
        {
            return Err(AmqpError::channel(
                code::PRECONDITION_FAILED,
                format!(
                    "user_id property set to '{uid}' but authenticated user was '{}'",
                    self.user
                ),
            )
            .during(60, 40));
        }
        let message = Message {
            id: junction_core::MessageId(0),
            exchange: method.exchange.as_str().to_string(),
            routing_key: method.routing_key.as_str().to_string(),
            properties: core_props,
            body,
            origin: Origin {
                protocol: Protocol::Amqp,
                connection: self.guard.id(),
            },
        };
        let ch = self.open_channel(id)?;
        if let Some(ops) = ch.tx.as_mut() {
            ops.push(TxOp::Publish {
                message: Box::new(message),
                mandatory: method.mandatory,
            });
            return Ok(());
        }
        let published = self.publish_now(id, message, method.mandatory).await?;
        let ch = self.open_channel(id)?;
        if let Some(seq) = ch.confirm.as_mut() {
            let n = *seq;
            *seq += 1;
            self.confirms.push_back(Box::pin(async move {
                let ok = published.confirmed().await.unwrap_or(false);
                (id, n, ok)
            }));
        }
        Ok(())
    }

    /// Hands a message to the core; an unroutable mandatory one comes back
    /// as `basic.return` 312 NO_ROUTE.
    async fn publish_now(
        &mut self,
        id: u16,
        message: Message,
        mandatory: bool,
    ) -> Result<junction_core::Published, AmqpError> {
        let returned = mandatory.then(|| {
            (
                message.exchange.clone(),
                message.routing_key.clone(),
                message.properties.clone(),
                message.body.clone(),
            )
        });
        let broker = Arc::clone(&self.ctx.broker);
        let published = broker
            .publish(&self.vhost, message)
            .await
            .map_err(|e| Conn::core_error(e).during(60, 40))?;
        if published.routed == 0
            && let Some((exchange, key, props, body)) = returned
        {
            self.reply_content(
                id,
                AMQPClass::Basic(basic::AMQPMethod::Return(basic::Return {
                    reply_code: code::NO_ROUTE,
                    reply_text: "NO_ROUTE".into(),
                    exchange: convert::short(&exchange),
                    routing_key: convert::short(&key),
                })),
                convert::properties_from_core(&props),
                &body,
            );
        }
        Ok(published)
    }
}
