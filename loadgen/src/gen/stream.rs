//! per-node streams: [`NodeGen`] fills [`Chunk`]s with the frames of one
//! node, expected and filtered slots interleaved as the mix says.

use super::*;

/// A buffer of whole frames, ready to write, with the offsets of their
/// timestamps so they can be set just before the write.
#[derive(Default)]
pub struct Chunk {
    pub buf: Vec<u8>,
    ts: Vec<usize>,
    /// frames in the chunk
    pub events: u64,
    /// of which qbroker should deliver
    pub expected: u64,
    /// namespace metadata changes (delivered too, verified apart)
    pub acl: u64,
}

impl Chunk {
    pub fn clear(&mut self) {
        self.buf.clear();
        self.ts.clear();
        self.events = 0;
        self.expected = 0;
        self.acl = 0;
    }

    /// Stamps every frame with `ts` (the send time).
    pub fn patch_time(&mut self, ts: &[u8; TS_LEN]) {
        for &o in &self.ts {
            self.buf[o..o + TS_LEN].copy_from_slice(ts);
        }
    }
}

/// One node's event stream.
pub struct NodeGen {
    core: std::sync::Arc<GenCore>,
    pub cluster: u16,
    pub node: u16,
    framing: Framing,
    host: Vec<u8>,
    slot: u64,
    next_expected: u64,
    next_filtered: u64,
    next_acl: u64,
    namespace: Option<std::sync::Arc<crate::acl::Namespace>>,
    scratch: Vec<u8>,
}

impl NodeGen {
    /// Make the namespace metadata changes on `ns` (when the config asks for them).
    pub fn with_namespace(mut self, ns: std::sync::Arc<crate::acl::Namespace>) -> Self {
        self.namespace = Some(ns);
        self
    }

    /// Namespace metadata changes generated so far.
    pub fn acl_count(&self) -> u64 {
        self.next_acl
    }

    pub fn new(core: std::sync::Arc<GenCore>, cluster: u16, node: u16, framing: Framing) -> Self {
        let host = core.hostname(cluster, node).into_bytes();
        NodeGen {
            core,
            cluster,
            node,
            framing,
            host,
            slot: 0,
            next_expected: 0,
            next_filtered: 0,
            next_acl: 0,
            namespace: None,
            scratch: Vec::with_capacity(1024),
        }
    }

    pub fn next_event(&mut self) -> Event {
        let slot = self.slot;
        self.slot += 1;
        if let Some(ns) = &self.namespace {
            if self.core.slot_is_acl(self.cluster, self.node, slot) {
                self.next_acl += 1;
                return ns.next_event(self.cluster, self.node, self.next_acl - 1);
            }
        }
        if self.core.slot_is_expected(self.cluster, self.node, slot) {
            self.next_expected += 1;
            self.core
                .expected_event(self.cluster, self.node, self.next_expected - 1)
        } else {
            self.next_filtered += 1;
            self.core
                .filtered_event(self.cluster, self.node, self.next_filtered - 1)
        }
    }

    /// Appends `n` frames to `chunk`.
    pub fn fill(&mut self, chunk: &mut Chunk, n: u64) {
        for _ in 0..n {
            let ev = self.next_event();
            let ts = self.core.render_frame(
                &ev,
                &self.host,
                self.framing,
                &mut chunk.buf,
                &mut self.scratch,
            );
            chunk.ts.push(ts);
            chunk.events += 1;
            let acl = crate::acl::object_of(&ev.id).is_some();
            chunk.expected += (!ev.id.filtered && !acl) as u64;
            chunk.acl += acl as u64;
        }
    }

    /// Expected events generated so far (the next expected seq).
    pub fn expected_count(&self) -> u64 {
        self.next_expected
    }

    pub fn filtered_count(&self) -> u64 {
        self.next_filtered
    }
}
