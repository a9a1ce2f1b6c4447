//! Queue declarations and their `x-` arguments, parsed and validated once at
//! declare time (RabbitMQ's argument names and rules).

use crate::error::CoreError;
use crate::ids::ConnectionId;
use crate::value::{FieldTable, FieldValue};

/// What happens when a queue reaches `x-max-length` / `x-max-length-bytes`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Overflow {
    /// Drop (dead-letter) the oldest ready messages to make room.
    #[default]
    DropHead,
    /// Refuse the new message (publisher confirm nack).
    RejectPublish,
    /// Refuse the new message and dead-letter it.
    RejectPublishDlx,
}

/// `x-queue-type`. Every queue here behaves as a classic queue; quorum
/// and stream are accepted (with RabbitMQ's rules for their declarations)
/// so that clients written for them still run, and kept so a redeclaration
/// with another type is refused as RabbitMQ refuses it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum QueueType {
    #[default]
    Classic,
    Quorum,
    Stream,
}

/// The queue arguments the core acts on. Unknown arguments are kept in the
/// declaration but ignored, as RabbitMQ does.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QueueArgs {
    /// `x-message-ttl`, milliseconds.
    pub message_ttl: Option<u64>,
    /// `x-expires`, milliseconds unused before the queue is deleted.
    pub expires: Option<u64>,
    /// `x-max-length`: ready messages.
    pub max_length: Option<u64>,
    /// `x-max-length-bytes`: total body bytes of ready messages.
    pub max_length_bytes: Option<u64>,
    /// `x-overflow`.
    pub overflow: Overflow,
    /// `x-dead-letter-exchange` ("" is the default exchange).
    pub dead_letter_exchange: Option<String>,
    /// `x-dead-letter-routing-key`; without it the message's own key is kept.
    pub dead_letter_routing_key: Option<String>,
    /// `x-max-priority`: enables priorities 0..=N.
    pub max_priority: Option<u8>,
    /// `x-delivery-limit`: returns allowed before the message is dead-lettered.
    pub delivery_limit: Option<u64>,
    /// `x-single-active-consumer`.
    pub single_active_consumer: bool,
    /// `x-queue-type` (absent is classic).
    pub queue_type: QueueType,
}

fn invalid(name: &str, why: &str) -> CoreError {
    CoreError::PreconditionFailed(format!("invalid arg '{name}': {why}"))
}

fn non_negative(args: &FieldTable, name: &str) -> Result<Option<u64>, CoreError> {
    match args.get(name) {
        None => Ok(None),
        Some(v) => match v.as_i128() {
            Some(n) if (0..=i128::from(u64::MAX)).contains(&n) => Ok(Some(n as u64)),
            Some(_) => Err(invalid(name, "must be a non-negative integer")),
            None => Err(invalid(name, "must be an integer")),
        },
    }
}

fn string(args: &FieldTable, name: &str) -> Result<Option<String>, CoreError> {
    match args.get(name) {
        None => Ok(None),
        Some(v) => v
            .as_str()
            .map(|s| Some(s.to_string()))
            .ok_or_else(|| invalid(name, "must be a string")),
    }
}

impl QueueArgs {
    /// Parses and validates the arguments of a `queue.declare`.
    pub fn parse(args: &FieldTable) -> Result<QueueArgs, CoreError> {
        let message_ttl = non_negative(args, "x-message-ttl")?;
        if message_ttl.is_some_and(|t| t > u64::from(u32::MAX)) {
            return Err(invalid("x-message-ttl", "must be at most 4294967295"));
        }
        let expires = non_negative(args, "x-expires")?;
        if expires == Some(0) {
            return Err(invalid("x-expires", "must be positive"));
        }
        let overflow = match string(args, "x-overflow")?.as_deref() {
            None | Some("drop-head") => Overflow::DropHead,
            Some("reject-publish") => Overflow::RejectPublish,
            Some("reject-publish-dlx") => Overflow::RejectPublishDlx,
            Some(other) => {
                return Err(invalid(
                    "x-overflow",
                    &format!("'{other}' is not drop-head, reject-publish or reject-publish-dlx"),
                ));
            }
        };
        let dead_letter_exchange = string(args, "x-dead-letter-exchange")?;
        let dead_letter_routing_key = string(args, "x-dead-letter-routing-key")?;
        if dead_letter_routing_key.is_some() && dead_letter_exchange.is_none() {
            return Err(invalid(
                "x-dead-letter-routing-key",
                "needs x-dead-letter-exchange",
            ));
        }
        let max_priority = match non_negative(args, "x-max-priority")? {
            None => None,
            Some(p) if p <= 255 => Some(p as u8),
            Some(_) => return Err(invalid("x-max-priority", "must be at most 255")),
        };
        let single_active_consumer = match args.get("x-single-active-consumer") {
            None => false,
            Some(FieldValue::Bool(b)) => *b,
            Some(_) => return Err(invalid("x-single-active-consumer", "must be a boolean")),
        };
        let queue_type = match string(args, "x-queue-type")?.as_deref() {
            None | Some("classic") => QueueType::Classic,
            Some("quorum") => QueueType::Quorum,
            Some("stream") => QueueType::Stream,
            Some(other) => {
                return Err(CoreError::PreconditionFailed(format!(
                    "invalid arg 'x-queue-type': unsupported queue type '{other}'"
                )));
            }
        };
        Ok(QueueArgs {
            queue_type,
            message_ttl,
            expires,
            max_length: non_negative(args, "x-max-length")?,
            max_length_bytes: non_negative(args, "x-max-length-bytes")?,
            overflow,
            dead_letter_exchange,
            dead_letter_routing_key,
            max_priority,
            delivery_limit: non_negative(args, "x-delivery-limit")?,
            single_active_consumer,
        })
    }
}

/// What `queue.declare` carries.
#[derive(Clone, Debug, PartialEq)]
pub struct QueueDef {
    pub name: String,
    pub durable: bool,
    /// The connection that owns an exclusive queue; the queue goes with it.
    pub exclusive_owner: Option<ConnectionId>,
    /// Deleted when its last consumer is cancelled (after it had one).
    pub auto_delete: bool,
    pub arguments: FieldTable,
}

impl QueueDef {
    pub fn new(name: impl Into<String>) -> QueueDef {
        QueueDef {
            name: name.into(),
            durable: true,
            exclusive_owner: None,
            auto_delete: false,
            arguments: FieldTable::new(),
        }
    }

    pub fn transient(mut self) -> QueueDef {
        self.durable = false;
        self
    }

    pub fn argument(mut self, name: &str, value: FieldValue) -> QueueDef {
        self.arguments.insert(name, value);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(pairs: &[(&str, FieldValue)]) -> FieldTable {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    #[test]
    fn parses_every_argument() {
        let a = QueueArgs::parse(&args(&[
            ("x-message-ttl", FieldValue::I32(1000)),
            ("x-expires", FieldValue::I64(5000)),
            ("x-max-length", FieldValue::U16(10)),
            ("x-max-length-bytes", FieldValue::I64(1024)),
            ("x-overflow", FieldValue::string("reject-publish-dlx")),
            ("x-dead-letter-exchange", FieldValue::string("dlx")),
            (
                "x-dead-letter-routing-key",
                FieldValue::ShortString("dead".into()),
            ),
            ("x-max-priority", FieldValue::U8(9)),
            ("x-delivery-limit", FieldValue::I32(3)),
            ("x-single-active-consumer", FieldValue::Bool(true)),
            ("x-queue-type", FieldValue::string("quorum")),
            ("x-unknown", FieldValue::Bool(true)),
        ]))
        .unwrap();
        assert_eq!(
            a,
            QueueArgs {
                message_ttl: Some(1000),
                expires: Some(5000),
                max_length: Some(10),
                max_length_bytes: Some(1024),
                overflow: Overflow::RejectPublishDlx,
                dead_letter_exchange: Some("dlx".into()),
                dead_letter_routing_key: Some("dead".into()),
                max_priority: Some(9),
                delivery_limit: Some(3),
                single_active_consumer: true,
                queue_type: QueueType::Quorum,
            }
        );
    }

    #[test]
    fn rejects_invalid_values_with_406() {
        let cases = [
            ("x-message-ttl", FieldValue::I32(-1)),
            ("x-message-ttl", FieldValue::string("1000")),
            ("x-expires", FieldValue::I32(0)),
            ("x-max-length", FieldValue::Bool(true)),
            ("x-overflow", FieldValue::string("drop-tail")),
            ("x-max-priority", FieldValue::I32(256)),
            ("x-queue-type", FieldValue::string("bogus")),
            ("x-single-active-consumer", FieldValue::string("yes")),
            ("x-dead-letter-routing-key", FieldValue::string("k")),
        ];
        for (name, value) in cases {
            let err = QueueArgs::parse(&args(&[(name, value.clone())])).unwrap_err();
            assert_eq!(err.amqp_code(), 406, "{name} = {value:?}");
        }
    }
}
