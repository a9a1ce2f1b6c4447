//! What a connection sends on its own initiative: deliveries to its
//! consumers, server-sent cancels, publisher confirms; and giving back to
//! the core what a closing channel held.

use std::sync::Arc;

use amq_protocol::protocol::{AMQPClass, basic};
use junction_core::ConsumerEvent;

use crate::channel::{ChannelState, Outstanding};
use crate::connection::Conn;
use crate::convert;

impl Conn {
    /// A core event for one of our consumers.
    pub(crate) fn on_event(&mut self, ev: ConsumerEvent) {
        match ev {
            ConsumerEvent::Deliver(d) => {
                let Some(ch) = self
                    .consumers
                    .get(&d.consumer)
                    .and_then(|c| self.channels.get_mut(&c.channel))
                else {
                    return;
                };
                if ch.state != ChannelState::Open {
                    return;
                }
                if !ch.flow_active {
                    ch.held.push_back(d);
                    return;
                }
                self.deliver(d);
            }
            ConsumerEvent::Cancelled(id) => {
                let Some(cref) = self.consumers.remove(&id) else {
                    return;
                };
                if cref.cancelling {
                    // Our own marker after the client's basic.cancel.
                    return;
                }
                // The queue went: tell the client (consumer_cancel_notify).
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
    pub(crate) fn deliver(&mut self, d: junction_core::Delivery) {
        let Some(cref) = self.consumers.get(&d.consumer) else {
            return;
        };
        let channel_id = cref.channel;
        let consumer_tag = cref.tag.clone();
        let outstanding = (!cref.no_ack).then(|| Outstanding {
            queue: Arc::clone(&cref.queue),
            holder: d.consumer,
            tag: d.tag,
        });
        let Some(ch) = self.channels.get_mut(&channel_id) else {
            return;
        };
        let tag = ch.track(outstanding);
        let m = &d.message;
        self.out.method(
            channel_id,
            AMQPClass::Basic(basic::AMQPMethod::Deliver(basic::Deliver {
                consumer_tag: consumer_tag.as_str().into(),
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

    /// Sends the confirms resolved together, in order. A run of acks of
    /// consecutive sequence numbers on one channel goes as one `basic.ack`
    /// with `multiple` set (as RabbitMQ coalesces them): every earlier one
    /// of that channel was confirmed before, since confirms resolve in
    /// publish order. A nack ends its channel's run first, so no tag is
    /// both acked and nacked.
    pub(crate) fn confirm_all(&mut self, confirms: &[crate::connection::Confirm]) {
        // Per channel (few per connection): the open run (epoch, first, last).
        let mut runs: Vec<(u16, u64, u64, u64)> = Vec::new();
        for &(channel_id, epoch, seq, ok) in confirms {
            let run = runs.iter().position(|r| r.0 == channel_id);
            if ok {
                match run {
                    Some(i) if runs[i].1 == epoch && runs[i].3 + 1 == seq => runs[i].3 = seq,
                    Some(i) => {
                        let (c, e, first, last) = runs[i];
                        self.ack_run(c, e, first, last);
                        runs[i] = (channel_id, epoch, seq, seq);
                    }
                    None => runs.push((channel_id, epoch, seq, seq)),
                }
            } else {
                if let Some(i) = run {
                    let (c, e, first, last) = runs.swap_remove(i);
                    self.ack_run(c, e, first, last);
                }
                self.confirm((channel_id, epoch, seq, false));
            }
        }
        for (c, e, first, last) in runs {
            self.ack_run(c, e, first, last);
        }
    }

    /// Acks `first..=last` of one channel: one frame, `multiple` when
    /// more than one.
    fn ack_run(&mut self, channel_id: u16, epoch: u64, first: u64, last: u64) {
        if first == last {
            self.confirm((channel_id, epoch, last, true));
        } else if self.channel_open(channel_id, epoch) {
            self.out.method(
                channel_id,
                AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
                    delivery_tag: last,
                    multiple: true,
                })),
            );
        }
    }

    fn channel_open(&self, channel_id: u16, epoch: u64) -> bool {
        self.channels
            .get(&channel_id)
            .is_some_and(|c| c.epoch == epoch && c.state == ChannelState::Open)
    }

    pub(crate) fn confirm(&mut self, (channel_id, epoch, seq, ok): crate::connection::Confirm) {
        if !self.channel_open(channel_id, epoch) {
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

    /// Returns everything a channel holds to the core: consumers are
    /// cancelled, then every unsettled delivery goes back to its queue once
    /// (flagged redelivered), in delivery order.
    pub(crate) fn release_channel(&mut self, id: u16) {
        self.release_channels(&[id]);
    }

    pub(crate) fn release_all(&mut self) {
        let ids: Vec<u16> = self.channels.keys().copied().collect();
        self.release_channels(&ids);
    }

    /// Cancels first, on every channel named, so that nothing requeued is
    /// handed to a consumer that is about to go (which would count it as
    /// delivered twice); then releases each (queue, holder) once.
    fn release_channels(&mut self, ids: &[u16]) {
        let mut holders: Vec<(Arc<junction_core::Queue>, junction_core::ConsumerId)> = Vec::new();
        for id in ids {
            let Some(ch) = self.channels.get_mut(id) else {
                continue;
            };
            ch.pending = None;
            ch.held.clear();
            for (_, c) in ch.consumers.drain() {
                c.handle.cancel(false);
            }
            for (_, o) in std::mem::take(&mut ch.unacked) {
                holders.push((o.queue, o.holder));
            }
        }
        self.consumers.retain(|cid, cref| {
            if ids.contains(&cref.channel) {
                holders.push((Arc::clone(&cref.queue), *cid));
                false
            } else {
                true
            }
        });
        let mut seen = std::collections::HashSet::new();
        for (queue, holder) in holders {
            if seen.insert((Arc::as_ptr(&queue), holder)) {
                self.ctx.broker.release(&queue, holder);
            }
        }
    }
}
