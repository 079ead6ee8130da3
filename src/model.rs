//! model: low-level types that cross stages, and name none of them: the
//! bottom layer, beside [`crate::sync`], [`crate::parse`] and [`crate::config`].
//!
//! A [`Recycler`] keeps byte buffers for reuse (the batcher's bodies, the
//! spool's encoded records). The chunk a reader hands to the parse pool
//! ([`crate::pool::Chunk`]) names its cluster's batcher, so it lives above the
//! batcher, with the pool.

use std::sync::Arc;

use bytes::Bytes;
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
