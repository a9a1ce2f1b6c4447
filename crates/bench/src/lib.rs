//! junction-bench: the load generator for Junction and for any other broker
//! that speaks MQTT, AMQP 0-9-1 or STOMP (what emqtt-bench and
//! rabbitmq-perf-test are to theirs). Every run is bounded in count and
//! time, connects only to `--host`, and ends with one `RESULT {json}` line.
//!
//! Pure parts (no I/O), each unit-tested:
//! - [`cli`]: the command-line contract and its checks.
//! - [`payload`]: the 20-byte message header (publisher, sequence, send time).
//! - [`tracker`]: loss, duplicate and reorder accounting.
//! - [`stats`]: latency percentiles (HdrHistogram).
//! - [`address`]: topic and queue names per scenario and protocol.
//! - [`report`]: the progress and RESULT lines.
//! - [`procfs`]: parsing of /proc RSS and CPU readings.
//! - [`load`]: connection endpoints, publish plans and rate pacing.
//! - [`stomp::codec`]: the STOMP 1.2 frame codec.
//!
//! I/O:
//! - [`collector`]: the measurements shared by every publisher and consumer.
//! - [`mqtt`], [`amqp`], [`stomp`]: publisher, consumer and idle connection
//!   of each protocol (rumqttc, lapin, our own STOMP client).
//! - [`clients`]: flags → per-protocol settings, and dispatch.
//! - [`tls`]: the MQTT and AMQP clients' TLS (`--tls-ca`), rustls on ring.
//! - [`run`]: the message scenarios end to end; [`idle`]: the idle one;
//!   [`storm`]: the MQTT subscribe storm; [`connect_storm`]: the MQTT
//!   connection and persistent-session reconnect storms.
//! - [`error`]: the one error type.

pub mod address;
pub mod amqp;
pub mod bridge;
pub mod cli;
pub mod clients;
pub mod collector;
pub mod connect_storm;
pub mod error;
pub mod idle;
pub mod load;
pub mod mqtt;
pub mod payload;
pub mod procfs;
pub mod report;
pub mod run;
pub mod stats;
pub mod stomp;
pub mod storm;
pub mod tls;
pub mod tracker;

pub use cli::Args;
pub use error::BenchError;
pub use run::{Outcome, run};
