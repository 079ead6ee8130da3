//! sync: the few hand-written synchronisation pieces, behind a facade that loom can
//! swap in.
//!
//! Built normally, the facade re-exports `std`. Built with `RUSTFLAGS="--cfg
//! qbroker_loom"` it re-exports loom's types, and the `loom_*` tests explore every
//! interleaving. The cfg has a project-specific name because a plain `--cfg loom`
//! also flips tokio's and other crates' own loom code paths, which do not build
//! outside their own test setups.
//!
//! - [`gate`]: the admission gate between the supervisors and the work queue: a
//!   budget in messages and bytes, shared fairly between clusters, that parks a
//!   supervisor's readers when full and wakes them when the pool drains it.
//! - [`acks`]: turns out-of-order acknowledgements from concurrent requests into a
//!   contiguous spool watermark.

pub mod acks;
pub mod gate;

#[cfg(not(qbroker_loom))]
#[allow(unused_imports)]
pub(crate) use std::sync::{
    atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    Arc, Mutex, MutexGuard,
};

#[cfg(qbroker_loom)]
#[allow(unused_imports)]
pub(crate) use loom::sync::{
    atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    Arc, Mutex, MutexGuard,
};
