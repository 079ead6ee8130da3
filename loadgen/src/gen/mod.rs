//! gen: synthetic Qumulo audit events, the syslog frames that carry them, and
//! the Varonis events qbroker must turn them into.
//!
//! Every event is a pure function of `(seed, cluster, node, class, seq)`, so
//! the sender never keeps events in memory and the sink regenerates, from the
//! identity packed into an event's `file_id`, exactly the event it expects.
//!
//! # Identity
//!
//! `file_id` is a decimal u128 (always 32 digits, above 2^64, like the ids
//! Qumulo prints) laid out as
//!
//! ```text
//! bits 100..=107  magic 0x4C ("L"), so foreign ids are recognised
//! bits  84..=99   run tag: a hash of the generator configuration
//! bits  68..=83   cluster index
//! bits  52..=67   node number (1-based, as in the HOSTNAME)
//! bit   51        1 = filtered out (qbroker must never deliver it)
//! bits   0..=50   seq: per node, counted separately for expected and
//!                 filtered events, so expected seqs are dense: a gap is a
//!                 loss, a repeat a duplicate, a decrease a reorder
//! ```
//!
//! # Streams
//!
//! Per node, slot `i` of the stream is expected or filtered (a function of
//! `i`); the k-th expected event is `expected_event(c, n, k)` and the j-th
//! filtered one `filtered_event(c, n, j)`. With the weights of [`Mix`] the
//! marginal distribution over slots is exactly the configured mix.
//!
//! # Files
//!
//! One submodule per part, bottom first: `identity` (the packed `file_id`),
//! `numbers` (digits and timestamps into byte buffers), `rng`, `ops` (the
//! operations), `config`, `event` (an event as seeds, and what qbroker must
//! make of it), `encode` (JSON, CSV and plain-text sinks for rendered text),
//! `vocab` (paths and users), `generator` ([`GenCore`]) and `stream`
//! ([`NodeGen`], [`Chunk`]). This module re-exports their public items.

use anyhow::{bail, Context};

/// The status qbroker turns into `access_denied`, whatever the operation.
pub const DENIED: &str = "fs_access_denied_error";

mod config;
mod encode;
mod event;
mod generator;
mod identity;
mod numbers;
mod ops;
mod rng;
mod stream;
#[cfg(test)]
mod tests;
mod vocab;

pub use config::*;
use encode::*;
pub use event::*;
pub use generator::*;
pub use identity::*;
pub use numbers::*;
pub use ops::*;
pub use rng::*;
pub use stream::*;
use vocab::*;
