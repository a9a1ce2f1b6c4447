//! What a connection sends on its own initiative: deliveries to its
//! consumers, server-sent cancels, publisher confirms; and giving back to
//! the core what a closing channel held.

use std::sync::Arc;

use amq_protocol::protocol::{AMQPClass, basic};
use junction_core::{ConsumerEvent, Settle};

use crate::channel::{ChannelState, Outstanding};
use crate::connection::Conn;
use crate::convert;

impl Conn {
    /// A core event for one of our consumers.
    pub(crate) fn on_event(&mut self, ev: ConsumerEvent) {
        match ev {
            ConsumerEvent::Deliver(d) => {
                let Some(cref) = self.consumers.get(&d.consumer) else {
                    return;
                };
                let (channel_id, tag) = (cref.channel, cref.tag.clone());
                let Some(ch) = self.channels.get_mut(&channel_id) else {
                    return;
                };
                if ch.state != ChannelState::Open {
                    return;
                }
                if !ch.flow_active {
                    ch.held.push_back(d);
                    return;
                }
                self.deliver(channel_id, &tag, d);
            }
            ConsumerEvent::Cancelled(id) => {
                // The queue went: tell the client (consumer_cancel_notify).
                let Some(cref) = self.consumers.remove(&id) else {
                    return;
                };
                if let Some(ch) = self.channels.get_mut(&cref.channel) {
                    if let Some(c) = ch.consumers.remove(&cref.tag) {
                        c.handle.cancel(false);
                    }
                    self.out.method(
                        cref.channel,
                        AMQPClass::Basic(basic::AMQPMethod::Cancel(basic::Cancel {
                            consumer_tag: cref.tag.as_str().into(),
                            nowait: true,
                        })),
                    );
                }
            }
        }
    }

    /// Writes one `basic.deliver` with its content.
    pub(crate) fn deliver(
        &mut self,
        channel_id: u16,
        consumer_tag: &str,
        d: junction_core::Delivery,
    ) {
        let Some(ch) = self.channels.get_mut(&channel_id) else {
            return;
        };
        let Some(c) = ch.consumers.get(consumer_tag) else {
            return;
        };
        let outstanding = (!c.no_ack).then(|| Outstanding {
            queue: Arc::clone(c.handle.queue()),
            holder: d.consumer,
            tag: d.tag,
        });
        let tag = ch.track(outstanding);
        let m = &d.message;
        self.out.method(
            channel_id,
            AMQPClass::Basic(basic::AMQPMethod::Deliver(basic::Deliver {
                consumer_tag: consumer_tag.into(),
                delivery_tag: tag,
                redelivered: d.redelivered,
                exchange: convert::short(&m.exchange),
                routing_key: convert::short(&m.routing_key),
            })),
        );
        self.out.content(
            channel_id,
            convert::properties_from_core(&m.properties),
            &m.body,
            self.frame_max,
        );
    }

    pub(crate) fn confirm(&mut self, channel_id: u16, seq: u64, ok: bool) {
        if !self.channels.contains_key(&channel_id) {
            return;
        }
        let m = if ok {
            basic::AMQPMethod::Ack(basic::Ack {
                delivery_tag: seq,
                multiple: false,
            })
        } else {
            basic::AMQPMethod::Nack(basic::Nack {
                delivery_tag: seq,
                multiple: false,
                requeue: false,
            })
        };
        self.out.method(channel_id, AMQPClass::Basic(m));
    }

    /// Returns everything a channel holds to the core: unsettled deliveries
    /// are requeued (flagged redelivered), consumers cancelled.
    pub(crate) fn release_channel(&mut self, id: u16) {
        let Some(ch) = self.channels.get_mut(&id) else {
            return;
        };
        ch.pending = None;
        ch.held.clear();
        let outstanding = std::mem::take(&mut ch.unacked);
        for (_, o) in outstanding {
            let _ = self
                .ctx
                .broker
                .settle(&o.queue, o.holder, o.tag, Settle::Requeue);
        }
        for (_, c) in ch.consumers.drain() {
            self.consumers.remove(&c.handle.id());
            c.handle.cancel(true);
        }
    }

    pub(crate) fn release_all(&mut self) {
        let ids: Vec<u16> = self.channels.keys().copied().collect();
        for id in ids {
            self.release_channel(id);
        }
    }
}
