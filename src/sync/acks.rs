//! acks: out-of-order acknowledgements to a contiguous watermark.
//!
//! SKELETON: replaced by the real tracker.

/// Tracks which record ids were acknowledged and where the contiguous prefix ends.
pub struct AckTracker {
    _private: (),
}
