//! Metrics: the plain-data snapshot the broker hands to the admin endpoint,
//! and its rendering in the Prometheus text exposition format 0.0.4.
//!
//! The snapshot is plain data so this module knows nothing of the core or
//! the store: whoever builds the [`crate::admin::AdminState`] fills it in.

use std::fmt::{self, Write};

/// Counters and gauges of one queue.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueueMetrics {
    /// The queue's vhost (label `vhost`): queue names are unique only per vhost.
    pub vhost: String,
    /// The queue's name (label `queue`).
    pub name: String,
    /// Messages ready for delivery.
    pub depth: u64,
    /// Messages delivered and not yet acknowledged.
    pub unacked: u64,
    /// Consumers attached.
    pub consumers: u64,
}

/// Everything `/metrics` reports, taken at one instant.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetricsSnapshot {
    /// One entry per queue, in the order to print (at most
    /// `[admin] metrics_max_queues` of them).
    pub queues: Vec<QueueMetrics>,
    /// Queues left out of `queues` by that limit.
    pub queues_omitted: u64,
    /// Messages accepted from publishers since start.
    pub messages_in: u64,
    /// Body bytes accepted from publishers since start.
    pub bytes_in: u64,
    /// Messages delivered to consumers since start (redeliveries included).
    pub messages_out: u64,
    /// Body bytes delivered to consumers since start.
    pub bytes_out: u64,
    /// Open connections per protocol name ("mqtt", "amqp", "stomp").
    pub connections: Vec<(String, u64)>,
    /// Store batches committed since start.
    pub store_commits: u64,
    /// Write batches submitted to the store since start; `store_batches /
    /// store_syncs` shows how well group commit is merging.
    pub store_batches: u64,
    /// WAL syncs since start.
    pub store_syncs: u64,
    /// Time spent committing, in seconds, since start.
    pub store_commit_seconds_total: f64,
    /// Most batches merged into one commit so far.
    pub store_max_group: u64,
    /// Memory held by queued messages, ready or unacked (bodies and a
    /// per-message footprint).
    pub held_bytes: u64,
    /// Whether the memory alarm is blocking publishers.
    pub memory_alarm: bool,
    /// Whether the disk alarm is blocking publishers.
    pub disk_alarm: bool,
    /// Connections closed at accept by `max_connections` or
    /// `max_connections_per_ip` since start.
    pub connections_refused: u64,
    /// Records recovery kept aside in the store's quarantine.
    pub quarantined_records: u64,
    /// Connections closed because writes to them made no progress.
    pub slow_consumer_disconnects: u64,
    /// Bytes in the store engine's write buffers (RocksDB memtables).
    pub store_memtable_bytes: u64,
    /// Bytes in the store engine's block cache.
    pub store_block_cache_bytes: u64,
}

/// Renders `snapshot` as a Prometheus text exposition (format 0.0.4): each
/// family gets its HELP and TYPE lines, even with no samples.
pub fn render(snapshot: &MetricsSnapshot) -> String {
    let mut out = String::new();
    // Writing into a String never fails.
    let _ = render_into(&mut out, snapshot);
    out
}

/// [`render`] into any writer.
pub fn render_into(out: &mut impl Write, s: &MetricsSnapshot) -> fmt::Result {
    type QueueField = fn(&QueueMetrics) -> u64;
    let per_queue: [(&str, &str, QueueField); 3] = [
        (
            "junction_queue_messages",
            "Messages ready for delivery in a queue.",
            |q| q.depth,
        ),
        (
            "junction_queue_messages_unacked",
            "Messages delivered from a queue and not yet acknowledged.",
            |q| q.unacked,
        ),
        (
            "junction_queue_consumers",
            "Consumers attached to a queue.",
            |q| q.consumers,
        ),
    ];
    for (name, help, field) in per_queue {
        header(out, name, help, "gauge")?;
        for q in &s.queues {
            write!(out, "{name}{{vhost=\"")?;
            escape_label(out, &q.vhost)?;
            write!(out, "\",queue=\"")?;
            escape_label(out, &q.name)?;
            writeln!(out, "\"}} {}", field(q))?;
        }
    }

    header(
        out,
        "junction_metrics_queues_omitted",
        "Queues without their own series here ([admin] metrics_max_queues).",
        "gauge",
    )?;
    writeln!(out, "junction_metrics_queues_omitted {}", s.queues_omitted)?;

    let totals = [
        (
            "junction_messages_published_total",
            "Messages accepted from publishers.",
            s.messages_in,
        ),
        (
            "junction_bytes_published_total",
            "Body bytes accepted from publishers.",
            s.bytes_in,
        ),
        (
            "junction_messages_delivered_total",
            "Messages delivered to consumers, redeliveries included.",
            s.messages_out,
        ),
        (
            "junction_bytes_delivered_total",
            "Body bytes delivered to consumers.",
            s.bytes_out,
        ),
    ];
    for (name, help, value) in totals {
        header(out, name, help, "counter")?;
        writeln!(out, "{name} {value}")?;
    }

    let name = "junction_connections";
    header(out, name, "Open client connections per protocol.", "gauge")?;
    for (protocol, count) in &s.connections {
        write!(out, "{name}{{protocol=\"")?;
        escape_label(out, protocol)?;
        writeln!(out, "\"}} {count}")?;
    }

    let store = [
        (
            "junction_store_commits_total",
            "Store commits.",
            s.store_commits,
        ),
        (
            "junction_store_batches_total",
            "Write batches submitted to the store.",
            s.store_batches,
        ),
        (
            "junction_store_syncs_total",
            "Store WAL syncs.",
            s.store_syncs,
        ),
    ];
    for (name, help, value) in store {
        header(out, name, help, "counter")?;
        writeln!(out, "{name} {value}")?;
    }
    let name = "junction_store_commit_seconds_total";
    header(
        out,
        name,
        "Seconds spent committing to the store.",
        "counter",
    )?;
    writeln!(out, "{name} {}", Float(s.store_commit_seconds_total))?;
    let name = "junction_store_max_group_size";
    header(
        out,
        name,
        "Most batches merged into one store commit.",
        "gauge",
    )?;
    writeln!(out, "{name} {}", s.store_max_group)?;
    let name = "junction_queued_message_bytes";
    header(
        out,
        name,
        "Memory held by queued messages (ready and unacked): bodies plus a per-message footprint; what the memory alarm counts.",
        "gauge",
    )?;
    writeln!(out, "{name} {}", s.held_bytes)?;
    let name = "junction_memory_alarm";
    header(
        out,
        name,
        "1 while the memory alarm blocks publishers.",
        "gauge",
    )?;
    writeln!(out, "{name} {}", u8::from(s.memory_alarm))?;
    let name = "junction_disk_alarm";
    header(
        out,
        name,
        "1 while free disk space is below disk_free_limit and publishers are blocked.",
        "gauge",
    )?;
    writeln!(out, "{name} {}", u8::from(s.disk_alarm))?;
    let name = "junction_connections_refused_total";
    header(
        out,
        name,
        "Connections closed at accept by a connection cap.",
        "counter",
    )?;
    writeln!(out, "{name} {}", s.connections_refused)?;
    let name = "junction_store_quarantined_records";
    header(
        out,
        name,
        "Stored records recovery could not use, kept aside in the quarantine column family.",
        "gauge",
    )?;
    writeln!(out, "{name} {}", s.quarantined_records)?;
    let name = "junction_slow_consumer_disconnects_total";
    header(
        out,
        name,
        "Connections closed because a write to them made no progress within the write timeout.",
        "counter",
    )?;
    writeln!(out, "{name} {}", s.slow_consumer_disconnects)?;
    let name = "junction_store_memtable_bytes";
    header(
        out,
        name,
        "Bytes in the store's write buffers (RocksDB memtables), not counted by the memory alarm.",
        "gauge",
    )?;
    writeln!(out, "{name} {}", s.store_memtable_bytes)?;
    let name = "junction_store_block_cache_bytes";
    header(
        out,
        name,
        "Bytes in the store's block cache, not counted by the memory alarm.",
        "gauge",
    )?;
    writeln!(out, "{name} {}", s.store_block_cache_bytes)
}

/// The HELP and TYPE lines of one metric family.
fn header(out: &mut impl Write, name: &str, help: &str, kind: &str) -> fmt::Result {
    writeln!(out, "# HELP {name} {help}")?;
    writeln!(out, "# TYPE {name} {kind}")
}

/// Writes a label value escaped as the text format requires: backslash,
/// double quote and line feed become `\\`, `\"` and `\n`.
fn escape_label(out: &mut impl Write, value: &str) -> fmt::Result {
    for c in value.chars() {
        match c {
            '\\' => out.write_str("\\\\")?,
            '"' => out.write_str("\\\"")?,
            '\n' => out.write_str("\\n")?,
            c => out.write_char(c)?,
        }
    }
    Ok(())
}

/// A sample value as the text format spells floats: Rust's shortest
/// round-trip decimal, with `NaN`, `+Inf` and `-Inf` for the specials.
struct Float(f64);

impl fmt::Display for Float {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.0;
        if v.is_nan() {
            f.write_str("NaN")
        } else if v.is_infinite() {
            f.write_str(if v > 0.0 { "+Inf" } else { "-Inf" })
        } else {
            write!(f, "{v}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_small_snapshot_exactly_with_escaped_labels() {
        let snapshot = MetricsSnapshot {
            queues: vec![
                QueueMetrics {
                    vhost: "/".into(),
                    name: "orders".into(),
                    depth: 3,
                    unacked: 1,
                    consumers: 2,
                },
                QueueMetrics {
                    vhost: "i\"o\\t".into(),
                    name: "a\nb".into(),
                    depth: 0,
                    unacked: 0,
                    consumers: 0,
                },
            ],
            queues_omitted: 7,
            messages_in: 10,
            bytes_in: 1000,
            messages_out: 7,
            bytes_out: 700,
            connections: vec![("amqp".into(), 4), ("mqtt".into(), 1)],
            store_commits: 5,
            store_batches: 9,
            store_syncs: 5,
            store_commit_seconds_total: 0.25,
            store_max_group: 3,
            held_bytes: 0,
            memory_alarm: false,
            disk_alarm: true,
            connections_refused: 2,
            quarantined_records: 1,
            slow_consumer_disconnects: 4,
            store_memtable_bytes: 5,
            store_block_cache_bytes: 6,
        };
        let expected = r#"# HELP junction_queue_messages Messages ready for delivery in a queue.
# TYPE junction_queue_messages gauge
junction_queue_messages{vhost="/",queue="orders"} 3
junction_queue_messages{vhost="i\"o\\t",queue="a\nb"} 0
# HELP junction_queue_messages_unacked Messages delivered from a queue and not yet acknowledged.
# TYPE junction_queue_messages_unacked gauge
junction_queue_messages_unacked{vhost="/",queue="orders"} 1
junction_queue_messages_unacked{vhost="i\"o\\t",queue="a\nb"} 0
# HELP junction_queue_consumers Consumers attached to a queue.
# TYPE junction_queue_consumers gauge
junction_queue_consumers{vhost="/",queue="orders"} 2
junction_queue_consumers{vhost="i\"o\\t",queue="a\nb"} 0
# HELP junction_metrics_queues_omitted Queues without their own series here ([admin] metrics_max_queues).
# TYPE junction_metrics_queues_omitted gauge
junction_metrics_queues_omitted 7
# HELP junction_messages_published_total Messages accepted from publishers.
# TYPE junction_messages_published_total counter
junction_messages_published_total 10
# HELP junction_bytes_published_total Body bytes accepted from publishers.
# TYPE junction_bytes_published_total counter
junction_bytes_published_total 1000
# HELP junction_messages_delivered_total Messages delivered to consumers, redeliveries included.
# TYPE junction_messages_delivered_total counter
junction_messages_delivered_total 7
# HELP junction_bytes_delivered_total Body bytes delivered to consumers.
# TYPE junction_bytes_delivered_total counter
junction_bytes_delivered_total 700
# HELP junction_connections Open client connections per protocol.
# TYPE junction_connections gauge
junction_connections{protocol="amqp"} 4
junction_connections{protocol="mqtt"} 1
# HELP junction_store_commits_total Store commits.
# TYPE junction_store_commits_total counter
junction_store_commits_total 5
# HELP junction_store_batches_total Write batches submitted to the store.
# TYPE junction_store_batches_total counter
junction_store_batches_total 9
# HELP junction_store_syncs_total Store WAL syncs.
# TYPE junction_store_syncs_total counter
junction_store_syncs_total 5
# HELP junction_store_commit_seconds_total Seconds spent committing to the store.
# TYPE junction_store_commit_seconds_total counter
junction_store_commit_seconds_total 0.25
# HELP junction_store_max_group_size Most batches merged into one store commit.
# TYPE junction_store_max_group_size gauge
junction_store_max_group_size 3
# HELP junction_queued_message_bytes Memory held by queued messages (ready and unacked): bodies plus a per-message footprint; what the memory alarm counts.
# TYPE junction_queued_message_bytes gauge
junction_queued_message_bytes 0
# HELP junction_memory_alarm 1 while the memory alarm blocks publishers.
# TYPE junction_memory_alarm gauge
junction_memory_alarm 0
# HELP junction_disk_alarm 1 while free disk space is below disk_free_limit and publishers are blocked.
# TYPE junction_disk_alarm gauge
junction_disk_alarm 1
# HELP junction_connections_refused_total Connections closed at accept by a connection cap.
# TYPE junction_connections_refused_total counter
junction_connections_refused_total 2
# HELP junction_store_quarantined_records Stored records recovery could not use, kept aside in the quarantine column family.
# TYPE junction_store_quarantined_records gauge
junction_store_quarantined_records 1
# HELP junction_slow_consumer_disconnects_total Connections closed because a write to them made no progress within the write timeout.
# TYPE junction_slow_consumer_disconnects_total counter
junction_slow_consumer_disconnects_total 4
# HELP junction_store_memtable_bytes Bytes in the store's write buffers (RocksDB memtables), not counted by the memory alarm.
# TYPE junction_store_memtable_bytes gauge
junction_store_memtable_bytes 5
# HELP junction_store_block_cache_bytes Bytes in the store's block cache, not counted by the memory alarm.
# TYPE junction_store_block_cache_bytes gauge
junction_store_block_cache_bytes 6
"#;
        assert_eq!(render(&snapshot), expected);
    }

    #[test]
    fn empty_snapshot_keeps_every_family_header_and_zero_totals() {
        let text = render(&MetricsSnapshot::default());
        assert_eq!(text.matches("# TYPE ").count(), 22);
        assert!(
            text.contains("\njunction_store_commit_seconds_total 0\n"),
            "{text}"
        );
        assert!(!text.contains("{vhost="), "{text}");
    }

    #[test]
    fn special_floats_use_the_prometheus_spelling() {
        assert_eq!(Float(f64::NAN).to_string(), "NaN");
        assert_eq!(Float(f64::INFINITY).to_string(), "+Inf");
        assert_eq!(Float(f64::NEG_INFINITY).to_string(), "-Inf");
        assert_eq!(Float(1.5e-7).to_string(), "0.00000015");
    }
}
