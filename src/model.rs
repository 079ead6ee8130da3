//! model: the types that cross stages.
//!
//! A [`Chunk`] is what a supervisor's reader hands to the parse pool: frames of one
//! connection, as ranges of one shared buffer (no copy since the socket read),
//! numbered so that the cluster's batcher can restore arrival order after the
//! pool's workers converted chunks in parallel.

use std::sync::Arc;

use bytes::Bytes;

use crate::batch::Batcher;
use crate::metrics::{ClusterMetrics, NodeMetrics};

/// What every stage knows of one cluster.
pub struct ClusterShared {
    pub name: Arc<str>,
    /// The cluster's id at the admission gate.
    pub gate_id: usize,
    pub metrics: Arc<ClusterMetrics>,
    pub batcher: Arc<Batcher>,
}

/// Frames of one connection, handed to the parse pool in one piece.
pub struct Chunk {
    pub cluster: Arc<ClusterShared>,
    pub node: Arc<str>,
    pub node_metrics: Arc<NodeMetrics>,
    /// The bytes the frames lie in.
    pub data: Bytes,
    /// (start, end) of each frame in `data`.
    pub frames: Vec<(u32, u32)>,
    /// Sequence number of the first frame; the others follow one by one.
    pub seq_base: u64,
    /// Position of this chunk among the cluster's chunks, from 0 without gaps.
    pub chunk_no: u64,
    /// When the bytes were read, in Unix microseconds.
    pub received_unix_us: u64,
}

impl Chunk {
    /// The bytes of frame `i`.
    pub fn frame(&self, i: usize) -> &[u8] {
        let (start, end) = self.frames[i];
        &self.data[start as usize..end as usize]
    }

    /// What the chunk weighs at the admission gate.
    pub fn weight(&self) -> (usize, usize) {
        (self.frames.len(), self.data.len())
    }
}
