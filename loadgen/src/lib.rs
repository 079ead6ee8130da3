//! loadgen: the load generator and verifying sink for qbroker.
//!
//! # Layout
//!
//! - [`gen`]: synthetic Qumulo audit events, deterministic from a seed; the
//!   syslog frames that carry them; the Varonis events they must become; the
//!   identity packed into each event's `file_id`.
//! - [`send`]: synthetic clusters: one TCP connection per node, pre-built
//!   frame chunks, paced or flat out.
//! - [`discard`]: a syslog server that counts and throws away (measures `send`).
//! - [`verify`]: checks batches against the schema and the regenerated
//!   events; tracks loss, duplicates and reordering per node; latency.
//! - [`sink`]: the HTTPS Varonis endpoint around the verifier, with faults.
//! - [`report`]: the benchmark report, for people and as JSON.
//! - [`bench`]: runs qbroker, the sink and the senders together on loopback.
//! - [`amqp`]: a private RabbitMQ and the verifying sink as its consumer
//!   (`bench --egress amqp`).
//! - [`peer`]: rsyslog and syslog-ng as `bench --versus` runs them: their
//!   binaries, configurations, CPU from /proc, and rsyslog's omprog relay.
//! - [`versus`]: `bench --versus`: qbroker and the peers in interleaved
//!   rounds on the same load, medians and ratios.
//! - [`acl`]: namespace objects whose ACL and owner change, and the Qumulo
//!   REST API stand-in that serves them (for qbroker's enrichment).

#![forbid(unsafe_code)]

pub mod acl;
pub mod amqp;
pub mod bench;
pub mod discard;
pub mod gen;
pub mod peer;
pub mod report;
pub mod send;
pub mod sink;
pub mod verify;
pub mod versus;
