//! qbroker: Qumulo audit syslog in, Varonis file-activity events out.
//!
//! # Layout
//!
//! The modules follow the data, in the order a frame travels:
//!
//! - [`parse`]: plain functions from one syslog frame to one serialised event.
//! - [`spool`]: the durable per-target log of sealed batches.
//! - [`sync`]: the hand-written synchronisation pieces, checked with loom.
#![forbid(unsafe_code)]

pub mod parse;
pub mod spool;
pub mod sync;
