//! source: the one hand-off from a source of frames to the parse pool, shared
//! by the TCP and TLS readers ([`crate::ingest::reader`]) and the stdin feed
//! ([`crate::stdin`]).
//!
//! A source gathers frames of one node into a buffer and calls [`Handoff`]
//! with them; the hand-off then does, in this order, what every source must:
//!
//! 1. admission at the gate: `try_admit`, else a parked `admit` (the source
//!    reads nothing meanwhile, so TCP flow control, or the pipe, pushes back),
//!    with a rate-limited "work queue full: reading paused" warning every
//!    5 s of waiting and `qbroker_reading_paused_total` counted once per pause;
//! 2. numbering, from the cluster's one [`Sequence`]: the chunk's number and
//!    its frames' sequence numbers in one step;
//! 3. the [`Chunk`], and the node's and cluster's frame counters (frames, last
//!    frame time; bytes are the source's to count, when it reads them);
//! 4. the send into the bounded work queue: the gate keeps it from ever
//!    waiting, and the bounded `send_timeout` loop is a guard that says so
//!    should that stop holding; a chunk is never dropped, except when the pool
//!    is gone (only at a broken shutdown), which gives its budget back to the
//!    gate and says so.
//!
//! [`Handoff::hand_on`] waits on the gate as a future (the readers, on tokio);
//! [`Handoff::hand_on_blocking`] waits by `block_on` on a runtime handle (the
//! stdin feeder, a plain thread). Both share every step but the wait itself.
//!
//! What stays with each source, and why it is not shared here: finding the
//! cluster. A connection's cluster is its source address's configured cluster,
//! else the HOSTNAME of its first frame, decided once per connection and held
//! by a lease in [`crate::cluster::Registry`], which also starts the
//! cluster's supervisor actor on an io arbiter and forgets idle clusters; a
//! pipe has no peer address, each line names its own cluster
//! ([`crate::stdin::route`]), and the feed runs no actix system to start a
//! supervisor on, so it keeps a table of its own. Both create the cluster's
//! batcher the same way ([`crate::batch::Batches::create`]), and both end in
//! the same [`ClusterShared`], which is what this hand-off takes.
//!
//! Owns: nothing but the numbering type. May touch: the gate, the work queue's
//! sender, the pool's [`Chunk`] and the metrics; it names no source.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use crossbeam_channel::{SendTimeoutError, Sender};
use tracing::{error, warn};

use crate::metrics::{unix_us, Metrics, NodeMetrics, RateLimit};
use crate::pool::{Chunk, ClusterShared};
use crate::sync::gate::Gate;

static PAUSED_LOG: RateLimit = RateLimit::new(Duration::from_secs(10), 1);
static QUEUE_FULL_LOG: RateLimit = RateLimit::new(Duration::from_secs(10), 1);

/// How long to wait on a full queue before saying so again.
const PAUSE_REPORT: Duration = Duration::from_secs(5);

/// The bound on one send to the work queue, which the gate keeps from ever
/// waiting (see the module doc).
const QUEUE_SEND_TIMEOUT: Duration = Duration::from_millis(100);

/// The numbering of a cluster's frames and chunks, shared by its sources.
///
/// A chunk's number and its frames' sequence numbers are taken in one step, so
/// that chunk order is sequence order whichever reader, on whichever thread,
/// takes them: the batcher restores chunk order, and with it seq order. One
/// uncontended lock per chunk (hundreds of frames), never per frame.
#[derive(Debug, Default)]
pub struct Sequence(Mutex<Next>);

#[derive(Debug, Default)]
struct Next {
    seq: u64,
    chunk: u64,
}

impl Sequence {
    /// Number a chunk of `frames` frames: (seq of its first frame, chunk number).
    pub fn take(&self, frames: usize) -> (u64, u64) {
        let mut next = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let taken = (next.seq, next.chunk);
        next.seq += frames as u64;
        next.chunk += 1;
        taken
    }

    /// The number the next chunk will get (the count of chunks taken so far).
    pub fn next_chunk(&self) -> u64 {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).chunk
    }
}

/// Where a node's frames go: its cluster, the cluster's numbering, the node.
pub struct Origin<'a> {
    pub cluster: &'a Arc<ClusterShared>,
    pub sequence: &'a Sequence,
    pub node: &'a Arc<str>,
    pub node_metrics: &'a Arc<NodeMetrics>,
}

/// The way into the work queue, cloned per source.
#[derive(Clone)]
pub struct Handoff {
    pub queue: Sender<Chunk>,
    pub gate: Arc<Gate>,
    pub metrics: Arc<Metrics>,
}

/// What a hand-off did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handed {
    /// Nothing to hand on.
    Nothing,
    /// In the queue at once.
    Queued,
    /// In the queue after reading paused on a full queue.
    QueuedAfterPause,
    /// The pool is gone: the frames were dropped (said in the log).
    PoolGone,
}

impl Handoff {
    /// Hand `frames` (ranges of `data`) to the pool as one chunk once the gate
    /// admits them, waiting on the gate as a future.
    pub async fn hand_on(&self, at: Origin<'_>, data: Bytes, frames: Vec<(u32, u32)>) -> Handed {
        if frames.is_empty() {
            return Handed::Nothing;
        }
        let paused = !self.try_admit(&at, &frames, &data);
        if paused {
            self.wait_admit(&at, frames.len(), data.len()).await;
        }
        self.send(at, data, frames, paused)
    }

    /// [`Handoff::hand_on`] from a plain thread: the wait on the gate runs on
    /// `runtime` (`block_on`); never call it on a runtime's own thread.
    pub fn hand_on_blocking(
        &self,
        runtime: &tokio::runtime::Handle,
        at: Origin<'_>,
        data: Bytes,
        frames: Vec<(u32, u32)>,
    ) -> Handed {
        if frames.is_empty() {
            return Handed::Nothing;
        }
        let paused = !self.try_admit(&at, &frames, &data);
        if paused {
            runtime.block_on(self.wait_admit(&at, frames.len(), data.len()));
        }
        self.send(at, data, frames, paused)
    }

    fn try_admit(&self, at: &Origin<'_>, frames: &[(u32, u32)], data: &Bytes) -> bool {
        let admitted = self
            .gate
            .try_admit(at.cluster.gate_id, frames.len(), data.len());
        if !admitted {
            self.metrics.ingest.paused.inc();
        }
        admitted
    }

    async fn wait_admit(&self, at: &Origin<'_>, n: usize, bytes: usize) {
        let mut admit = std::pin::pin!(self.gate.admit(at.cluster.gate_id, n, bytes));
        while tokio::time::timeout(PAUSE_REPORT, admit.as_mut())
            .await
            .is_err()
        {
            if let Some(suppressed) = PAUSED_LOG.check() {
                let usage = self.gate.usage();
                warn!(
                    cluster = %at.cluster.name,
                    node = %at.node,
                    queue_messages = usage.msgs,
                    queue_bytes = usage.bytes,
                    suppressed,
                    "work queue full: reading paused"
                );
            }
        }
    }

    /// Number, build, count and send an admitted chunk.
    fn send(&self, at: Origin<'_>, data: Bytes, frames: Vec<(u32, u32)>, paused: bool) -> Handed {
        let (n, bytes) = (frames.len(), data.len());
        // Number and seq range in one step: chunk order is seq order, whichever
        // source (on whichever thread) numbers the next chunk.
        let (seq_base, chunk_no) = at.sequence.take(n);
        let chunk = Chunk {
            cluster: at.cluster.clone(),
            node: at.node.clone(),
            node_metrics: at.node_metrics.clone(),
            data,
            frames,
            seq_base,
            chunk_no,
            received_unix_us: unix_us(),
        };
        at.node_metrics.frames.add(n as u64);
        at.node_metrics
            .last_frame_unix_ms
            .set((chunk.received_unix_us / 1000) as i64);
        at.cluster.metrics.frames.add(n as u64);
        // The queue's capacity in chunks is its capacity in messages, and every
        // chunk in it holds at least one message that the gate admitted and has
        // not had back: the send finds room at once. The wait is a guard, bounded
        // and reported, should that ever stop holding; a chunk is never dropped.
        let mut chunk = chunk;
        loop {
            match self.queue.send_timeout(chunk, QUEUE_SEND_TIMEOUT) {
                Ok(()) => {
                    return if paused {
                        Handed::QueuedAfterPause
                    } else {
                        Handed::Queued
                    }
                }
                Err(SendTimeoutError::Timeout(back)) => {
                    if let Some(suppressed) = QUEUE_FULL_LOG.check() {
                        error!(
                            cluster = %at.cluster.name,
                            node = %at.node,
                            suppressed,
                            "work queue full beyond what the gate admitted; still waiting"
                        );
                    }
                    chunk = back;
                }
                Err(SendTimeoutError::Disconnected(back)) => {
                    error!(
                        cluster = %at.cluster.name,
                        node = %at.node,
                        frames = back.frames.len(),
                        "parse pool gone: frames dropped"
                    );
                    self.gate.release(at.cluster.gate_id, n, bytes);
                    return Handed::PoolGone;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_from_many_threads_number_seq_in_chunk_order() {
        let seq = Arc::new(Sequence::default());
        let taken: Vec<Vec<(u64, u64, usize)>> = (1..=4)
            .map(|t| {
                let seq = seq.clone();
                std::thread::spawn(move || {
                    (0..10_000)
                        .map(|i| {
                            let n = (i % 7 + t) as usize;
                            let (s, c) = seq.take(n);
                            (c, s, n)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .map(|h| h.join().unwrap())
            .collect();
        let mut all: Vec<(u64, u64, usize)> = taken.into_iter().flatten().collect();
        all.sort_unstable();
        let mut next_seq = 0;
        for (i, (chunk, s, n)) in all.iter().enumerate() {
            assert_eq!(*chunk, i as u64, "chunk numbers without gaps");
            assert_eq!(*s, next_seq, "chunk order is seq order");
            next_seq += *n as u64;
        }
        assert_eq!(seq.next_chunk(), all.len() as u64);
    }
}
