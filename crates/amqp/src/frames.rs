//! Frame handling for a connection: which frames are allowed when, the
//! connection-class methods, channel open/close, and assembling content
//! (`basic.publish` + header + body frames) into a message.

use amq_protocol::protocol::{AMQPClass, channel, connection};
use bytes::Bytes;

use crate::channel::{Channel, ChannelState};
use crate::codec::Frame;
use crate::connection::{Conn, method_name};
use crate::error::{AmqpError, code};

impl Conn {
    pub(crate) async fn on_frame(&mut self, frame: Frame) -> Result<(), AmqpError> {
        if self.closing.is_some() {
            // Only the client's close-ok (or its own close) matters now.
            if let Frame::Method(0, m) = &frame {
                match m.as_ref() {
                    AMQPClass::Connection(connection::AMQPMethod::CloseOk(_)) => {
                        self.finished = true
                    }
                    AMQPClass::Connection(connection::AMQPMethod::Close(_)) => {
                        self.out.method(
                            0,
                            AMQPClass::Connection(connection::AMQPMethod::CloseOk(
                                connection::CloseOk {},
                            )),
                        );
                        self.finished = true;
                    }
                    _ => {}
                }
            }
            return Ok(());
        }
        let id = frame.channel();
        match frame {
            Frame::Heartbeat(0) => Ok(()),
            Frame::Heartbeat(_) => Err(AmqpError::connection(
                code::FRAME_ERROR,
                "heartbeat on a non-zero channel",
            )),
            Frame::Method(0, m) => self.on_connection_method(*m),
            Frame::Method(id, m) => {
                let result = self.on_channel_method(id, *m).await;
                self.channel_result(id, result)
            }
            Frame::Header(_, h) => {
                let result = self.on_header(id, *h).await;
                self.channel_result(id, result)
            }
            Frame::Body(_, b) => {
                let result = self.on_body(id, b).await;
                self.channel_result(id, result)
            }
        }
    }

    /// A channel error closes its channel; a connection error propagates.
    fn channel_result(&mut self, id: u16, r: Result<(), AmqpError>) -> Result<(), AmqpError> {
        match r {
            Err(e) if !e.hard => {
                self.close_channel(id, e);
                Ok(())
            }
            other => other,
        }
    }

    fn on_connection_method(&mut self, m: AMQPClass) -> Result<(), AmqpError> {
        match m {
            AMQPClass::Connection(connection::AMQPMethod::Close(c)) => {
                tracing::debug!(
                    code = c.reply_code,
                    text = c.reply_text.as_str(),
                    "client closed the connection"
                );
                self.release_all();
                self.guard.delete_exclusive_queues();
                self.out.method(
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
                );
                self.finished = true;
                Ok(())
            }
            AMQPClass::Connection(connection::AMQPMethod::UpdateSecret(_)) => {
                self.out.method(
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::UpdateSecretOk(
                        connection::UpdateSecretOk {},
                    )),
                );
                Ok(())
            }
            AMQPClass::Connection(
                connection::AMQPMethod::Blocked(_) | connection::AMQPMethod::Unblocked(_),
            ) => Ok(()),
            // A channel's method on channel 0 is a channel error, as
            // RabbitMQ answers it; a connection method out of place is not.
            other => Err(AmqpError::connection(
                if matches!(other, AMQPClass::Connection(_)) {
                    code::COMMAND_INVALID
                } else {
                    code::CHANNEL_ERROR
                },
                format!("unexpected method on channel 0: {}", method_name(&other)),
            )
            .during(other.get_amqp_class_id(), other.get_amqp_method_id())),
        }
    }

    async fn on_channel_method(&mut self, id: u16, m: AMQPClass) -> Result<(), AmqpError> {
        let (class_id, method_id) = (m.get_amqp_class_id(), m.get_amqp_method_id());
        if let AMQPClass::Channel(channel::AMQPMethod::Open(_)) = m {
            if self.channels.contains_key(&id) {
                return Err(AmqpError::connection(
                    code::CHANNEL_ERROR,
                    format!("channel {id} already open"),
                )
                .during(class_id, method_id));
            }
            if id > self.channel_max {
                return Err(AmqpError::connection(
                    code::NOT_ALLOWED,
                    format!(
                        "channel {id} exceeds the negotiated channel_max {}",
                        self.channel_max
                    ),
                )
                .during(class_id, method_id));
            }
            let getter = self.ctx.broker.new_consumer_id();
            self.channel_openings += 1;
            let epoch = self.channel_openings;
            self.channels.insert(id, Channel::new(id, getter, epoch));
            self.guard.set_channels(self.channels.keys().copied());
            self.out.method(
                id,
                AMQPClass::Channel(channel::AMQPMethod::OpenOk(channel::OpenOk {})),
            );
            return Ok(());
        }
        let Some(ch) = self.channels.get_mut(&id) else {
            return Err(AmqpError::connection(
                code::CHANNEL_ERROR,
                format!("channel {id} is not open"),
            )
            .during(class_id, method_id));
        };
        if ch.state == ChannelState::Closing {
            match m {
                AMQPClass::Channel(channel::AMQPMethod::CloseOk(_)) => {
                    self.channels.remove(&id);
                    self.guard.set_channels(self.channels.keys().copied());
                }
                AMQPClass::Channel(channel::AMQPMethod::Close(_)) => {
                    self.out.method(
                        id,
                        AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
                    );
                    self.channels.remove(&id);
                    self.guard.set_channels(self.channels.keys().copied());
                }
                _ => {}
            }
            return Ok(());
        }
        if ch.pending.is_some() {
            return Err(AmqpError::connection(
                code::UNEXPECTED_FRAME,
                format!("expected content for basic.publish on channel {id}, got a method"),
            )
            .during(class_id, method_id));
        }
        self.dispatch(id, m).await.map_err(|e| {
            if e.class_id == 0 {
                e.during(class_id, method_id)
            } else {
                e
            }
        })
    }

    async fn on_header(
        &mut self,
        id: u16,
        h: amq_protocol::frame::AMQPContentHeader,
    ) -> Result<(), AmqpError> {
        let max = self.ctx.settings.max_message_size;
        if self.is_closing(id) {
            // Content of a publish that was in flight when we closed the
            // channel: dropped, like its method frames.
            return Ok(());
        }
        let ch = self.open_channel(id)?;
        let Some(p) = ch.pending.as_mut().filter(|p| p.header.is_none()) else {
            return Err(AmqpError::connection(
                code::UNEXPECTED_FRAME,
                format!("content header on channel {id} without a basic.publish"),
            ));
        };
        if h.body_size > max {
            ch.pending = None;
            return Err(AmqpError::channel(
                code::PRECONDITION_FAILED,
                format!(
                    "message size {} is larger than configured max size {max}",
                    h.body_size
                ),
            )
            .during(60, 40));
        }
        let done = h.body_size == 0;
        p.header = Some(h);
        if done {
            return self.complete_publish(id).await;
        }
        Ok(())
    }

    async fn on_body(&mut self, id: u16, body: Bytes) -> Result<(), AmqpError> {
        if self.is_closing(id) {
            return Ok(());
        }
        let ch = self.open_channel(id)?;
        let Some(p) = ch.pending.as_mut().filter(|p| p.header.is_some()) else {
            return Err(AmqpError::connection(
                code::UNEXPECTED_FRAME,
                format!("content body on channel {id} without a content header"),
            ));
        };
        p.received += body.len() as u64;
        p.charge.grow(body.len() as u64);
        p.parts.push(body);
        let expected = p.header.as_ref().map_or(0, |h| h.body_size);
        if p.received > expected {
            return Err(AmqpError::connection(
                code::FRAME_ERROR,
                format!("content body exceeds the {expected} bytes announced"),
            ));
        }
        if p.received == expected {
            return self.complete_publish(id).await;
        }
        Ok(())
    }

    /// The channel `id`, which must be open (frames on a closing channel
    /// are dropped before getting here).
    pub(crate) fn open_channel(&mut self, id: u16) -> Result<&mut Channel, AmqpError> {
        self.channels.get_mut(&id).ok_or_else(|| {
            AmqpError::connection(code::CHANNEL_ERROR, format!("channel {id} is not open"))
        })
    }

    async fn complete_publish(&mut self, id: u16) -> Result<(), AmqpError> {
        let ch = self.open_channel(id)?;
        let Some(mut p) = ch.pending.take() else {
            return Ok(());
        };
        let body = p.body();
        let properties = p.header.map(|h| h.properties).unwrap_or_default();
        self.publish(id, p.method, properties, body).await
    }

    /// Whether we closed channel `id` and wait for its `close-ok`.
    fn is_closing(&self, id: u16) -> bool {
        self.channels
            .get(&id)
            .is_some_and(|c| c.state == ChannelState::Closing)
    }
}
