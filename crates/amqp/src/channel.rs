//! One AMQP channel's state: content being assembled, consumers, the
//! channel's delivery tags and what each one settles, prefetch, confirm and
//! transaction modes.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use amq_protocol::frame::AMQPContentHeader;
use amq_protocol::protocol::basic;
use bytes::{Bytes, BytesMut};
use junction_core::{
    ConsumerHandle, ConsumerId, Credit, Delivery, DeliveryTag, Message, Queue, Settle,
};

use crate::error::{AmqpError, code};

/// A `basic.publish` whose content is still arriving.
#[derive(Debug)]
pub struct PendingPublish {
    pub method: basic::Publish,
    pub header: Option<AMQPContentHeader>,
    /// Body frames so far; one frame is kept as is (no copy).
    pub parts: Vec<Bytes>,
    pub received: u64,
    /// Counts the body received so far for the memory alarm.
    pub charge: junction_core::MemoryCharge,
}

impl PendingPublish {
    /// The whole body: the one frame itself, or the frames joined.
    pub fn body(&mut self) -> Bytes {
        match self.parts.len() {
            0 => Bytes::new(),
            1 => junction_core::message::detach_body(self.parts.pop().unwrap_or_default()),
            _ => {
                let mut b = BytesMut::with_capacity(self.received as usize);
                for p in &self.parts {
                    b.extend_from_slice(p);
                }
                b.freeze()
            }
        }
    }
}

/// What a channel-level delivery tag settles.
#[derive(Debug)]
pub struct Outstanding {
    pub queue: Arc<Queue>,
    pub holder: ConsumerId,
    pub tag: DeliveryTag,
}

/// Most publishes and settles one transaction may hold before its commit.
pub const MAX_TX_OPS: usize = 65_536;
/// Most message body bytes one transaction may hold before its commit.
pub const MAX_TX_BYTES: u64 = 256 * 1024 * 1024;

impl Channel {
    /// Holds `op` back until `tx.commit` if the channel is transactional;
    /// returns it otherwise. A transaction past [`MAX_TX_OPS`] or
    /// [`MAX_TX_BYTES`] is refused (channel 406), never buffered without
    /// bound.
    pub fn hold_in_tx(&mut self, op: TxOp) -> Result<Option<TxOp>, crate::error::AmqpError> {
        let Some(ops) = self.tx.as_mut() else {
            return Ok(Some(op));
        };
        let bytes = match &op {
            TxOp::Publish { message, .. } => message.body_len(),
            TxOp::Settle { .. } => 0,
        };
        if ops.len() >= MAX_TX_OPS || self.tx_bytes + bytes > MAX_TX_BYTES {
            return Err(crate::error::AmqpError::channel(
                crate::error::code::PRECONDITION_FAILED,
                format!(
                    "transaction holds more than {MAX_TX_OPS} operations or {MAX_TX_BYTES} bytes; commit first"
                ),
            ));
        }
        self.tx_bytes += bytes;
        ops.push(op);
        Ok(None)
    }
}

/// A publish or settle held back until `tx.commit`.
#[derive(Debug)]
pub enum TxOp {
    Publish {
        message: Box<Message>,
        mandatory: bool,
        /// Counts the held message for the memory alarm until the commit
        /// (or rollback) drops it.
        charge: junction_core::MemoryCharge,
    },
    Settle {
        tag: u64,
        multiple: bool,
        how: Settle,
    },
}

/// Whether the channel can take methods.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChannelState {
    Open,
    /// We sent `channel.close`: everything but close/close-ok is dropped
    /// until the client's `close-ok` (AMQP 0-9-1 channel.close).
    Closing,
}

/// A consumer on this channel.
#[derive(Debug)]
pub struct ChannelConsumer {
    pub handle: ConsumerHandle,
    pub no_ack: bool,
}

#[derive(Debug)]
pub struct Channel {
    pub id: u16,
    pub state: ChannelState,
    pub pending: Option<PendingPublish>,
    /// By consumer tag.
    pub consumers: HashMap<String, ChannelConsumer>,
    /// Unsettled deliveries by this channel's delivery tag, in tag order
    /// (for `multiple`).
    pub unacked: BTreeMap<u64, Outstanding>,
    next_tag: u64,
    /// Holds what `basic.get` hands out on this channel.
    pub getter: ConsumerId,
    /// `basic.qos` with global=false: applies to consumers started later.
    pub consumer_prefetch: u32,
    /// `basic.qos` with global=true: one budget for the whole channel.
    pub channel_credit: Arc<Credit>,
    /// `confirm.select` was received; the next publish gets this number.
    pub confirm: Option<u64>,
    /// `tx.select` was received: publishes and settles wait for commit.
    pub tx: Option<Vec<TxOp>>,
    /// Body bytes of the publishes in `tx` (bounded by [`MAX_TX_BYTES`]).
    pub tx_bytes: u64,
    /// The queue named by the last `queue.declare`, for methods that give
    /// an empty queue name.
    pub last_queue: Option<String>,
    /// Direct reply-to: the private queue `amq.rabbitmq.reply-to.<id>` made
    /// for this channel's reply consumer (live while that consumer is).
    pub direct_reply: Option<String>,
    /// `channel.flow`: false holds deliveries back.
    pub flow_active: bool,
    pub held: VecDeque<Delivery>,
    /// Distinguishes this opening of the channel number from earlier ones,
    /// so a confirm from a closed channel never reaches a reopened one.
    pub epoch: u64,
}

impl Channel {
    pub fn new(id: u16, getter: ConsumerId, epoch: u64) -> Channel {
        Channel {
            id,
            state: ChannelState::Open,
            pending: None,
            consumers: HashMap::new(),
            unacked: BTreeMap::new(),
            next_tag: 1,
            getter,
            consumer_prefetch: 0,
            channel_credit: Credit::new(0),
            confirm: None,
            tx: None,
            tx_bytes: 0,
            last_queue: None,
            direct_reply: None,
            flow_active: true,
            held: VecDeque::new(),
            epoch,
        }
    }

    /// The next delivery tag, recording what it settles unless no-ack.
    pub fn track(&mut self, out: Option<Outstanding>) -> u64 {
        let tag = self.next_tag;
        self.next_tag += 1;
        if let Some(o) = out {
            self.unacked.insert(tag, o);
        }
        tag
    }

    /// The outstanding deliveries a settle names: `tag` alone, or with
    /// `multiple` every one up to it (0 with `multiple` means all). An
    /// unknown tag is 406 PRECONDITION_FAILED, a channel error.
    /// Is an ack, nack or reject of `tag` valid now? The tag named must be
    /// outstanding, with `multiple` too (RabbitMQ's rule); only tag 0 with
    /// `multiple` means "everything".
    pub fn check_outstanding(&self, tag: u64, multiple: bool) -> Result<(), AmqpError> {
        if (multiple && tag == 0) || self.unacked.contains_key(&tag) {
            Ok(())
        } else {
            Err(unknown_tag(tag))
        }
    }

    pub fn take_outstanding(
        &mut self,
        tag: u64,
        multiple: bool,
    ) -> Result<Vec<Outstanding>, AmqpError> {
        self.check_outstanding(tag, multiple)?;
        if multiple {
            let keys: Vec<u64> = if tag == 0 {
                self.unacked.keys().copied().collect()
            } else {
                self.unacked.range(..=tag).map(|(k, _)| *k).collect()
            };
            Ok(keys.iter().filter_map(|k| self.unacked.remove(k)).collect())
        } else {
            Ok(self.unacked.remove(&tag).into_iter().collect())
        }
    }

    /// The direct reply-to queue, while a consumer of this channel is on it.
    pub fn live_direct_reply(&self) -> Option<&str> {
        let q = self.direct_reply.as_deref()?;
        self.consumers
            .values()
            .any(|c| c.handle.queue().name() == q)
            .then_some(q)
    }

    /// A queue name from a method, or the channel's last declared queue
    /// when the name is empty (AMQP 0-9-1 "default queue").
    pub fn queue_name(&self, name: &str) -> Result<String, AmqpError> {
        if !name.is_empty() {
            return Ok(name.to_string());
        }
        self.last_queue
            .clone()
            .ok_or_else(|| AmqpError::channel(code::NOT_FOUND, "no previously declared queue"))
    }
}

fn unknown_tag(tag: u64) -> AmqpError {
    AmqpError::channel(
        code::PRECONDITION_FAILED,
        format!("unknown delivery tag {tag}"),
    )
}
