//! The basic class's stateful parts: starting consumers, settling
//! deliveries (also inside transactions), and the publish path with
//! mandatory returns and publisher confirms.

use std::sync::Arc;

use amq_protocol::protocol::basic::AMQPProperties;
use amq_protocol::protocol::{AMQPClass, basic};
use bytes::Bytes;
use junction_core::{
    ConsumerSpec, Message, Origin, Permission, Protocol, Resource, Settle, interop,
};

use crate::channel::{ChannelConsumer, TxOp};
use crate::connection::{Conn, ConsumerRef};
use crate::convert;
use crate::error::{AmqpError, code};

impl Conn {
    /// `basic.consume` from `amq.rabbitmq.reply-to` (RabbitMQ's direct
    /// reply-to): makes the channel's private reply queue and returns its
    /// name, for the consumer to start on. No-ack only, one per channel
    /// (RabbitMQ's rules and words).
    pub(crate) async fn direct_reply_queue(
        &mut self,
        id: u16,
        c: &basic::Consume,
    ) -> Result<String, AmqpError> {
        if !c.no_ack {
            return Err(AmqpError::channel(
                code::PRECONDITION_FAILED,
                "reply consumer cannot acknowledge",
            ));
        }
        if self.open_channel(id)?.live_direct_reply().is_some() {
            return Err(AmqpError::channel(
                code::PRECONDITION_FAILED,
                "reply consumer already set",
            ));
        }
        let name = self
            .ctx
            .broker
            .declare_reply_queue(&self.vhost, self.guard.id())
            .await
            .map_err(Conn::core_error)?;
        self.open_channel(id)?.direct_reply = Some(name.clone());
        Ok(name)
    }

    pub(crate) async fn consume(&mut self, id: u16, c: basic::Consume) -> Result<(), AmqpError> {
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
            .attach_consumer(&vhost, &name, spec, events)
            .await
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
                no_ack: c.no_ack,
                queue: Arc::clone(handle.queue()),
                cancelling: false,
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
    pub(crate) fn pump(&mut self, id: u16) {
        if let Some(ch) = self.channels.get(&id) {
            for c in ch.consumers.values() {
                c.handle.pump();
            }
        }
    }

    pub(crate) fn settle(
        &mut self,
        id: u16,
        tag: u64,
        multiple: bool,
        how: Settle,
    ) -> Result<(), AmqpError> {
        let ch = self.open_channel(id)?;
        if ch.tx.is_some() {
            // Checked now, not at commit, as RabbitMQ does.
            ch.check_outstanding(tag, multiple)?;
        }
        if ch
            .hold_in_tx(TxOp::Settle { tag, multiple, how })?
            .is_none()
        {
            return Ok(());
        }
        self.settle_now(id, tag, multiple, how)
    }

    pub(crate) fn settle_now(
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

    pub(crate) fn recover(&mut self, id: u16) -> Result<(), AmqpError> {
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
        // RabbitMQ checks write on the exchange (the default one as
        // `amq.default`) before it looks the exchange up.
        let exchange = method.exchange.as_str();
        self.allow(Permission::Write, Resource::Exchange(exchange))
            .await
            .map_err(|e| e.during(60, 40))?;
        self.allow_topic(Permission::Write, exchange, method.routing_key.as_str())
            .await
            .map_err(|e| e.during(60, 40))?;
        let mut core_props = convert::properties_to_core(&properties);
        if core_props.reply_to.as_deref() == Some(interop::DIRECT_REPLY_TO) {
            // Direct reply-to: the reply goes to this channel's reply queue.
            let Some(q) = self.open_channel(id)?.live_direct_reply() else {
                return Err(AmqpError::channel(
                    code::PRECONDITION_FAILED,
                    "fast reply consumer does not exist",
                )
                .during(60, 40));
            };
            core_props.reply_to = Some(q.to_string());
        }
        if let Some(exp) = &core_props.expiration
            && !exp.parse::<u64>().is_ok_and(|ms| ms <= u64::from(u32::MAX))
        {
            // RabbitMQ: an expiration must be a decimal number of ms.
            return Err(AmqpError::channel(
                code::PRECONDITION_FAILED,
                format!("invalid expiration '{exp}'"),
            )
            .during(60, 40));
        }
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
        if self.open_channel(id)?.tx.is_some() && !message.exchange.is_empty() {
            // Inside a transaction the publish waits for the commit, but a
            // missing or internal exchange is refused now (RabbitMQ).
            let def = self
                .ctx
                .broker
                .exchange(&self.vhost, &message.exchange)
                .map_err(|e| Conn::core_error(e).during(60, 40))?;
            if def.internal {
                return Err(AmqpError::channel(
                    code::ACCESS_REFUSED,
                    format!("cannot publish to internal exchange '{}'", def.name),
                )
                .during(60, 40));
            }
        }
        let charge = self.ctx.broker.charge_memory(message.footprint());
        let ch = self.open_channel(id)?;
        let held = ch.hold_in_tx(TxOp::Publish {
            message: Box::new(message),
            mandatory: method.mandatory,
            charge,
        })?;
        let Some(TxOp::Publish { message, .. }) = held else {
            return Ok(());
        };
        let published = self.publish_now(id, *message, method.mandatory).await?;
        let ch = self.open_channel(id)?;
        if let Some(seq) = ch.confirm.as_mut() {
            let n = *seq;
            *seq += 1;
            let epoch = ch.epoch;
            self.confirms.push_back(Box::pin(async move {
                let ok = published.confirmed().await.unwrap_or(false);
                (id, epoch, n, ok)
            }));
        }
        Ok(())
    }

    /// Hands a message to the core; an unroutable mandatory one comes back
    /// as `basic.return` 312 NO_ROUTE.
    pub(crate) async fn publish_now(
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
