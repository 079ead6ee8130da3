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

/// A bounded free list of byte buffers. Worker output buffers and batch bodies
/// are large (hundreds of KiB) and short-lived; reusing them spares the
/// allocator from returning their pages to the kernel and faulting fresh,
/// zeroed ones in again (a tenth of the broker's CPU before this, measured with
/// perf in the `max` bench scenario).
pub struct Recycler {
    free: crossbeam_channel::Sender<Vec<u8>>,
    reuse: crossbeam_channel::Receiver<Vec<u8>>,
    max_capacity: usize,
}

impl Recycler {
    /// Keeps at most `slots` buffers of at most `max_capacity` bytes each.
    pub fn new(slots: usize, max_capacity: usize) -> Recycler {
        let (free, reuse) = crossbeam_channel::bounded(slots.max(1));
        Recycler {
            free,
            reuse,
            max_capacity,
        }
    }

    /// An empty buffer with room for at least `capacity` bytes.
    pub fn get(&self, capacity: usize) -> Vec<u8> {
        match self.reuse.try_recv() {
            Ok(mut buf) => {
                buf.reserve(capacity);
                buf
            }
            Err(_) => Vec::with_capacity(capacity),
        }
    }

    /// Give a buffer back (dropped when the list is full or it is oversized).
    pub fn put(&self, mut buf: Vec<u8>) {
        if buf.capacity() <= self.max_capacity {
            buf.clear();
            let _ = self.free.try_send(buf);
        }
    }
}

impl Recycler {
    /// Freeze `buf` into `Bytes` that give the buffer back here when the last
    /// clone is dropped.
    pub fn freeze(self: &Arc<Self>, buf: Vec<u8>) -> Bytes {
        Bytes::from_owner(Pooled {
            buf,
            home: self.clone(),
        })
    }
}

/// A buffer on loan from a [`Recycler`], returned when dropped.
struct Pooled {
    buf: Vec<u8>,
    home: Arc<Recycler>,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        self.home.put(std::mem::take(&mut self.buf));
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recycler_keeps_a_bounded_number_of_buffers() {
        let r = Recycler::new(2, 1024);
        let mut a = r.get(100);
        a.extend_from_slice(b"xyz");
        let cap = a.capacity();
        r.put(a);
        let b = r.get(10);
        assert!(b.is_empty() && b.capacity() == cap, "reused and cleared");
        r.put(Vec::with_capacity(4096)); // too large: dropped
        r.put(Vec::with_capacity(10));
        r.put(Vec::with_capacity(10));
        r.put(Vec::with_capacity(10)); // full: dropped
        assert_eq!(r.reuse.len(), 2);
    }

    #[test]
    fn frozen_buffers_come_back_when_the_last_clone_drops() {
        let r = Arc::new(Recycler::new(2, 1 << 20));
        let mut buf = r.get(1000);
        buf.extend_from_slice(b"record");
        let bytes = r.freeze(buf);
        let part = bytes.slice(1..3);
        drop(bytes);
        assert_eq!(r.reuse.len(), 0, "a slice still holds it");
        assert_eq!(&part[..], b"ec");
        drop(part);
        assert_eq!(r.reuse.len(), 1);
        assert!(r.get(1).capacity() >= 1000);
    }
}
