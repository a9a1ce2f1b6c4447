//! Newtype ids. Each kind of id is its own type so that a queue id can never
//! be passed where a message id is expected; none of them is an alias.

use std::fmt;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        pub struct $name(pub u64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }
    };
}

id_type!(
    /// Identifies one published message; stored once however many queues hold it.
    MessageId
);
id_type!(
    /// Identifies a queue in the store (names can be reused after a delete; ids are not).
    QueueId
);
id_type!(
    /// Identifies one client connection, of any protocol.
    ConnectionId
);
id_type!(
    /// Identifies one consumer registered on a queue.
    ConsumerId
);
id_type!(
    /// A queue-local delivery id: names one unacknowledged delivery of a queue.
    /// Protocol-local tags (AMQP per-channel tags, MQTT packet ids) map onto it
    /// inside their adapter.
    DeliveryTag
);
