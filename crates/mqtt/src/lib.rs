//! junction-mqtt: the MQTT 3.1, 3.1.1 and 5.0 adapter. For now it holds only
//! the codec; the sans-IO session, the core conversion and the connection
//! task come next (see DESIGN.md, "Inside each protocol crate").
//!
//! - [`codec`]: pure bytes ⇄ [`codec::Packet`] for every control packet of
//!   all three versions, with one module per packet type:
//!   - [`codec::connect`], [`codec::connack`]: the handshake;
//!   - [`codec::publish`] and [`codec::ack`] (PUBACK, PUBREC, PUBREL,
//!     PUBCOMP): application messages and their acknowledgements;
//!   - [`codec::subscribe`], [`codec::suback`], [`codec::unsubscribe`],
//!     [`codec::unsuback`]: subscriptions;
//!   - [`codec::ping`], [`codec::disconnect`], [`codec::auth`]: the rest;
//!   - [`codec::properties`]: MQTT 5 properties, typed, with the rules of
//!     which packet may carry which property and how often;
//!   - [`codec::reason`]: reason codes and their 3.1.1 return-code forms;
//!   - [`codec::topic`]: topic names, topic filters and shared subscriptions.
//!
//! The codec has no tokio dependency so that it can be fuzzed and
//! benchmarked alone; it never panics on input and never buffers more than
//! the configured maximum packet size.

pub mod codec;
