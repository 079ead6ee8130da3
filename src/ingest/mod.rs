//! ingest: syslog over TCP, from the socket to chunks of frames.
//!
//! - [`listener`]: accepts connections, applies the allowlist and the connection
//!   cap, tells each connection's cluster and hands it to the cluster's supervisor.
//! - [`reader`]: the read loop of one connection (run by its supervisor): framing,
//!   chunking, admission to the work queue, backpressure.
//! - [`framing`]: RFC 6587 octet-counted and newline-delimited framing with a
//!   frame-size cap, and the test that tells a garbage stream.
//! - [`tls`]: the server configuration of the optional TLS syslog listener
//!   (RFC 5425).
//!
//! Owns: the listeners, the connections' read loops and `IngestMetrics`. May
//! touch: the cluster supervisors (it hands them connections), the pool's
//! [`crate::pool::Chunk`], the admission gate, config and metrics; never a
//! batcher's or a target's internals.

pub mod framing;
pub mod listener;
pub mod reader;
pub mod tls;

pub use listener::{start, Ingest, IngestCtx, TlsInput};
