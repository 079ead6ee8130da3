//! identity: the `file_id` of every generated event packs who made it
//! (run tag, cluster, node, expected or filtered, seq), so the sink can tell
//! a loss, a duplicate or a reorder from the id alone.

use super::*;

pub(super) const ID_MAGIC: u128 = 0x4C;
pub(super) const MAGIC_SHIFT: u32 = 100;
pub(super) const TAG_SHIFT: u32 = 84;
pub(super) const CLUSTER_SHIFT: u32 = 68;
pub(super) const NODE_SHIFT: u32 = 52;
pub(super) const FILTERED_SHIFT: u32 = 51;
/// Largest per-node sequence number an identity can carry.
pub const MAX_SEQ: u64 = (1 << FILTERED_SHIFT) - 1;

/// What the `file_id` of a generated event says about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Identity {
    pub tag: u16,
    pub cluster: u16,
    pub node: u16,
    pub filtered: bool,
    pub seq: u64,
}

impl Identity {
    pub fn encode(self) -> u128 {
        debug_assert!(self.seq <= MAX_SEQ);
        (ID_MAGIC << MAGIC_SHIFT)
            | (self.tag as u128) << TAG_SHIFT
            | (self.cluster as u128) << CLUSTER_SHIFT
            | (self.node as u128) << NODE_SHIFT
            | (self.filtered as u128) << FILTERED_SHIFT
            | (self.seq & MAX_SEQ) as u128
    }

    pub fn decode(v: u128) -> Option<Self> {
        if v >> MAGIC_SHIFT != ID_MAGIC {
            return None;
        }
        Some(Identity {
            tag: (v >> TAG_SHIFT) as u16,
            cluster: (v >> CLUSTER_SHIFT) as u16,
            node: (v >> NODE_SHIFT) as u16,
            filtered: (v >> FILTERED_SHIFT) & 1 == 1,
            seq: (v as u64) & MAX_SEQ,
        })
    }

    /// Parses a decimal `file_id`; `None` if it is not one of ours.
    pub fn parse(s: &str) -> Option<Self> {
        if s.is_empty() || s.len() > 39 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse::<u128>().ok().and_then(Self::decode)
    }

    pub fn to_decimal(self) -> String {
        let mut v = Vec::with_capacity(40);
        push_u128(&mut v, self.encode());
        String::from_utf8(v).expect("digits")
    }
}
