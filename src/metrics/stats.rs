//! stats: `GET /stats`, the broker's counters and gauges as one JSON document,
//! for `qbroker top` and scripts.
//!
//! Counts are cumulative since start, not rates: a client takes two snapshots
//! and divides the differences by the difference of `uptime_ms`. The document
//! holds what `/metrics` renders for clusters and targets (the same bounded
//! sets: one entry per cluster and per running target), plus each cluster's
//! route and share of the work queue, and each target's state. Nothing here is
//! secret: URLs lose their query and credentials.
//!
//! The document is made by [`crate::targets::Targets::stats`], which knows the
//! routes and the targets; this module only defines it.
//!
//! `schema` changes only when a field changes meaning or goes away; fields
//! are added without a change of `schema`, so readers ignore fields they do
//! not know.

use serde::{Deserialize, Serialize};

/// The `schema` of the document this broker serves.
pub const SCHEMA: &str = "qbroker.stats/1";

/// The whole document.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Stats {
    /// [`SCHEMA`].
    pub schema: String,
    /// The broker's version (`qbroker --version`).
    pub version: String,
    /// Milliseconds since the broker started: the clock for rates.
    pub uptime_ms: u64,
    /// When the snapshot was taken, Unix milliseconds.
    pub time_unix_ms: i64,
    pub queue: QueueStats,
    /// End-to-end latency (receipt of a frame to acknowledgement of its
    /// batch) over all clusters, since start.
    pub latency: LatencyStats,
    pub clusters: Vec<ClusterStats>,
    pub targets: Vec<TargetStats>,
}

/// The work queue (the admission gate).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct QueueStats {
    pub messages: u64,
    pub bytes: u64,
    pub capacity_messages: u64,
    pub capacity_bytes: u64,
    /// Readers paused on a full queue now.
    pub waiting_readers: u64,
}

/// Latency quantiles in microseconds, and how many events they cover.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct LatencyStats {
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    pub count: u64,
}

/// One cluster: counters since start, and gauges now.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ClusterStats {
    pub name: String,
    /// Open connections of the cluster's nodes.
    pub nodes_connected: i64,
    /// Node names seen since start.
    pub nodes: u64,
    pub frames: u64,
    pub bytes: u64,
    /// Events produced.
    pub events: u64,
    /// Frames dropped by the filter.
    pub filtered: u64,
    /// Frames that could not be parsed (kept in the dead-letter file).
    pub parse_errors: u64,
    /// Batches sealed.
    pub batches: u64,
    pub events_lost: u64,
    /// Frames and bytes of the cluster in the work queue now.
    pub queue_messages: u64,
    pub queue_bytes: u64,
    /// The target its batches go to now; `null` when it is not connected.
    pub route: Option<String>,
    /// 0 when none yet.
    pub last_event_unix_ms: i64,
    /// End-to-end latency of the cluster's events since start: p50 and p99
    /// are the upper bound of a bucket of `latency_buckets` (within 19 %),
    /// `max_us` is exact.
    #[serde(default)]
    pub latency: LatencyStats,
    /// The cluster's latency histogram since start: `[bucket, events]` for
    /// every bucket that counted something, in order; bucket `i` holds
    /// latencies up to 1 ms x 2^(i/4) (`i` = 0 to 87), and 88 what is above.
    /// The difference of two snapshots gives the latency over the time
    /// between them (what `qbroker top` shows).
    #[serde(default)]
    pub latency_buckets: Vec<(u32, u64)>,
}

/// One running target.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct TargetStats {
    pub name: String,
    /// `config`, `registry` or `leftover`.
    pub origin: String,
    /// `ok`, `failing` (the last delivery attempt failed) or `draining`
    /// (deleted; delivering what its spool holds).
    pub state: String,
    /// Why the last attempt failed, when known and the target is failing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The URL without query or credentials.
    pub url: String,
    /// Requests in flight now, and at most (`in_flight` of the target).
    pub in_flight: i64,
    pub in_flight_max: u64,
    /// Bytes of the spool's segment files.
    pub spool_bytes: u64,
    /// Spooled batches not yet acknowledged.
    pub spool_batches: u64,
    /// Bytes of the spool from its oldest unacknowledged batch to its end:
    /// what is left to deliver (`spool_bytes` also counts delivered batches
    /// until their segment file is deleted).
    #[serde(default)]
    pub spool_unacked_bytes: u64,
    pub oldest_unacked_age_ms: u64,
    pub batches_delivered: u64,
    pub events_delivered: u64,
    pub bytes_sent: u64,
    pub retries: u64,
    /// Failed attempts: connect, TLS handshake, timeout, non-2xx status.
    pub failures: u64,
    pub batches_dead_lettered: u64,
    /// 0 when none yet.
    pub last_success_unix_ms: i64,
}

/// A URL without its query, fragment and `user:password@`.
pub fn shown_url(url: &str) -> String {
    let url = url.split(['?', '#']).next().unwrap_or_default();
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            let host = authority.rsplit('@').next().unwrap_or(authority);
            format!("{scheme}://{host}{path}")
        }
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_query_and_credentials() {
        assert_eq!(
            shown_url("https://u:p@h.example:8443/path?token=x#f"),
            "https://h.example:8443/path"
        );
        assert_eq!(shown_url("http://h/a@b"), "http://h/a@b");
        assert_eq!(shown_url("https://h"), "https://h");
    }

    #[test]
    fn unknown_fields_are_ignored_and_last_error_is_optional() {
        let json = serde_json::json!({
            "schema": SCHEMA, "version": "0", "uptime_ms": 1, "time_unix_ms": 2,
            "queue": QueueStats::default(), "latency": LatencyStats::default(),
            "clusters": [], "targets": [{
                "name": "t", "origin": "config", "state": "ok", "url": "https://h",
                "in_flight": 0, "in_flight_max": 4, "spool_bytes": 0, "spool_batches": 0,
                "oldest_unacked_age_ms": 0, "batches_delivered": 0, "events_delivered": 0,
                "bytes_sent": 0, "retries": 0, "failures": 0, "batches_dead_lettered": 0,
                "last_success_unix_ms": 0, "something_new": true
            }],
        });
        let stats: Stats = serde_json::from_value(json).unwrap();
        assert_eq!(stats.targets[0].last_error, None);
    }
}
