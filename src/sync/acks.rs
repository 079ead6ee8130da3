//! acks: out-of-order acknowledgements to a contiguous watermark.
//!
//! Egress lanes acknowledge spool records in whatever order their requests finish.
//! The spool may only forget a record once every record before it was acknowledged
//! too, so the tracker keeps the contiguous prefix (the watermark: every id below it
//! is acknowledged) and, above it, the acknowledged ids that arrived early, as
//! merged ranges. Its memory is one map entry per hole in the acknowledged ids, so
//! it is bounded by the records in flight, not by the records ever acknowledged.
//!
//! Only `crate::sync` types are used, so the `loom_*` tests can check every
//! interleaving of concurrent `ack` calls.

use std::collections::BTreeMap;

use crate::sync::{AtomicU64, Mutex, Ordering};

/// Tracks which record ids were acknowledged and where the contiguous prefix ends.
pub struct AckTracker {
    state: Mutex<State>,
    /// Mirror of `State::watermark` for lock-free reads; written only under the lock.
    watermark: AtomicU64,
}

struct State {
    watermark: u64,
    /// Acknowledged ranges above the watermark, `start -> end` (end exclusive),
    /// disjoint, never adjacent, and never touching the watermark.
    ahead: BTreeMap<u64, u64>,
    /// Number of ids covered by `ahead`.
    ahead_ids: u64,
}

impl AckTracker {
    /// A tracker where every id below `start` counts as acknowledged.
    pub fn new(start: u64) -> AckTracker {
        AckTracker {
            state: Mutex::new(State {
                watermark: start,
                ahead: BTreeMap::new(),
                ahead_ids: 0,
            }),
            watermark: AtomicU64::new(start),
        }
    }

    /// Acknowledges `id`. Returns the new watermark when it advanced.
    pub fn ack(&self, id: u64) -> Option<u64> {
        self.ack_range(id, id.saturating_add(1))
    }

    /// Acknowledges every id in `lo..hi`. Returns the new watermark when it advanced.
    /// Acknowledging an id twice is harmless.
    pub fn ack_range(&self, lo: u64, hi: u64) -> Option<u64> {
        if lo >= hi {
            return None;
        }
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if hi <= st.watermark {
            return None;
        }
        let lo = lo.max(st.watermark);
        if lo == st.watermark {
            let mut new = hi;
            // Swallow the early ranges the new prefix now reaches.
            while let Some((&start, &end)) = st.ahead.first_key_value() {
                if start > new {
                    break;
                }
                st.ahead.remove(&start);
                st.ahead_ids -= end - start;
                new = new.max(end);
            }
            st.watermark = new;
            self.watermark.store(new, Ordering::Release);
            Some(new)
        } else {
            let (mut start, mut end) = (lo, hi);
            if let Some((&ps, &pe)) = st.ahead.range(..=lo).next_back() {
                if pe >= lo {
                    st.ahead.remove(&ps);
                    st.ahead_ids -= pe - ps;
                    start = ps;
                    end = end.max(pe);
                }
            }
            while let Some((&ns, &ne)) = st.ahead.range(start..).next() {
                if ns > end {
                    break;
                }
                st.ahead.remove(&ns);
                st.ahead_ids -= ne - ns;
                end = end.max(ne);
            }
            st.ahead.insert(start, end);
            st.ahead_ids += end - start;
            None
        }
    }

    /// Every id below this was acknowledged.
    pub fn watermark(&self) -> u64 {
        self.watermark.load(Ordering::Acquire)
    }

    /// The watermark and the number of ids above it already acknowledged, read
    /// together.
    pub fn snapshot(&self) -> (u64, u64) {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        (st.watermark, st.ahead_ids)
    }

    /// Number of holes above the watermark (the memory the tracker holds).
    pub fn ranges_ahead(&self) -> usize {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.ahead.len()
    }
}

#[cfg(all(test, not(qbroker_loom)))]
mod tests {
    use super::*;

    #[test]
    fn in_order_advances_each_time() {
        let t = AckTracker::new(1);
        assert_eq!(t.ack(1), Some(2));
        assert_eq!(t.ack(2), Some(3));
        assert_eq!(t.watermark(), 3);
        assert_eq!(t.snapshot(), (3, 0));
    }

    #[test]
    fn out_of_order_waits_for_the_hole() {
        let t = AckTracker::new(1);
        assert_eq!(t.ack(3), None);
        assert_eq!(t.ack(4), None);
        assert_eq!(t.ack(6), None);
        assert_eq!(t.watermark(), 1);
        assert_eq!(t.snapshot(), (1, 3));
        assert_eq!(t.ranges_ahead(), 2);
        assert_eq!(t.ack(2), None);
        assert_eq!(t.ranges_ahead(), 2);
        assert_eq!(t.ack(1), Some(5));
        assert_eq!(t.ranges_ahead(), 1);
        assert_eq!(t.ack(5), Some(7));
        assert_eq!(t.snapshot(), (7, 0));
        assert_eq!(t.ranges_ahead(), 0);
    }

    #[test]
    fn duplicates_and_stale_acks_are_harmless() {
        let t = AckTracker::new(10);
        assert_eq!(t.ack(3), None);
        assert_eq!(t.ack(12), None);
        assert_eq!(t.ack(12), None);
        assert_eq!(t.snapshot(), (10, 1));
        assert_eq!(t.ack(10), Some(11));
        assert_eq!(t.ack(10), None);
        assert_eq!(t.ack(11), Some(13));
        assert_eq!(t.ack(12), None);
        assert_eq!(t.watermark(), 13);
    }

    #[test]
    fn ranges_merge_and_overlap() {
        let t = AckTracker::new(0);
        assert_eq!(t.ack_range(10, 20), None);
        assert_eq!(t.ack_range(30, 40), None);
        assert_eq!(t.ack_range(15, 35), None);
        assert_eq!(t.ranges_ahead(), 1);
        assert_eq!(t.snapshot(), (0, 30));
        assert_eq!(t.ack_range(5, 5), None);
        assert_eq!(t.ack_range(0, 10), Some(40));
        assert_eq!(t.ack_range(0, 50), Some(50));
    }

    #[test]
    fn adjacent_singles_collapse_to_one_range() {
        let t = AckTracker::new(0);
        for id in (1..1000).rev() {
            assert_eq!(t.ack(id), None);
            assert_eq!(t.ranges_ahead(), 1);
        }
        assert_eq!(t.ack(0), Some(1000));
    }

    #[test]
    fn matches_a_naive_model() {
        // A fixed pseudo-random permutation, checked against a plain set.
        let n = 500u64;
        let mut ids: Vec<u64> = (0..n).collect();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for i in (1..ids.len()).rev() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ids.swap(i, (x % (i as u64 + 1)) as usize);
        }
        let t = AckTracker::new(0);
        let mut seen = vec![false; n as usize];
        for id in ids {
            t.ack(id);
            seen[id as usize] = true;
            let expect = seen.iter().position(|s| !s).unwrap_or(n as usize) as u64;
            assert_eq!(t.watermark(), expect);
            let ahead = seen[expect as usize..].iter().filter(|s| **s).count() as u64;
            assert_eq!(t.snapshot(), (expect, ahead));
        }
    }

    #[test]
    fn concurrent_acks_reach_the_end() {
        let t = std::sync::Arc::new(AckTracker::new(0));
        let threads: Vec<_> = (0..4u64)
            .map(|k| {
                let t = t.clone();
                std::thread::spawn(move || {
                    for id in (0..10_000u64).filter(|i| i % 4 == k).rev() {
                        t.ack(id);
                    }
                })
            })
            .collect();
        for th in threads {
            th.join().unwrap();
        }
        assert_eq!(t.snapshot(), (10_000, 0));
        assert_eq!(t.ranges_ahead(), 0);
    }
}

#[cfg(all(test, qbroker_loom))]
mod loom_tests {
    use super::*;
    use crate::sync::Arc;

    /// Acks the ids of each slice from its own thread. Each thread marks an id in
    /// `acked` (a bit set) before acknowledging it, and checks after every ack that
    /// the watermark never covers an id whose ack has not started, and never goes
    /// back. At the end the watermark is exactly `end`.
    fn run(start: u64, per_thread: &'static [&'static [u64]], end: u64) {
        assert!(end < 64);
        let mut model = loom::model::Builder::new();
        if per_thread.len() > 2 {
            // Three threads are too many interleavings to explore exhaustively;
            // bound the preemptions (as tokio does for its larger models).
            model.preemption_bound = Some(2);
        }
        model.check(move || {
            let t = Arc::new(AckTracker::new(start));
            let acked = Arc::new(AtomicU64::new(0));
            let handles: Vec<_> = per_thread
                .iter()
                .map(|ids| {
                    let t = t.clone();
                    let acked = acked.clone();
                    loom::thread::spawn(move || {
                        let mut seen = start;
                        for &id in ids.iter() {
                            acked.fetch_or(1 << id, Ordering::SeqCst);
                            if let Some(r) = t.ack(id) {
                                assert!(r >= seen, "watermark went back: {seen} then {r}");
                                seen = r;
                            }
                            let w = t.watermark();
                            assert!(w >= seen, "watermark went back: {seen} then {w}");
                            seen = w;
                            let m = acked.load(Ordering::SeqCst);
                            for i in start..w {
                                assert!(m & (1 << i) != 0, "watermark {w} passed unacked id {i}");
                            }
                        }
                    })
                })
                .collect();
            for h in handles {
                h.join().unwrap();
            }
            assert_eq!(t.watermark(), end);
            assert_eq!(t.snapshot(), (end, 0));
            assert_eq!(t.ranges_ahead(), 0);
        });
    }

    #[test]
    fn loom_two_threads_out_of_order() {
        run(0, &[&[1, 0], &[3, 2]], 4);
    }

    #[test]
    fn loom_two_threads_interleaved() {
        run(5, &[&[7, 5], &[6, 8]], 9);
    }

    #[test]
    fn loom_three_threads() {
        run(0, &[&[2], &[0], &[1]], 3);
    }

    #[test]
    fn loom_duplicate_acks() {
        run(0, &[&[1, 0], &[1, 2]], 3);
    }

    #[test]
    fn loom_ranges_and_singles() {
        loom::model(|| {
            let t = Arc::new(AckTracker::new(0));
            let t2 = t.clone();
            let h = loom::thread::spawn(move || t2.ack_range(2, 6));
            let a = t.ack(0);
            let b = t.ack(1);
            let c = h.join().unwrap();
            assert_eq!(t.watermark(), 6);
            // Exactly one of the calls saw the watermark reach 6.
            let reached: Vec<_> = [a, b, c]
                .into_iter()
                .flatten()
                .filter(|&w| w == 6)
                .collect();
            assert_eq!(reached.len(), 1);
        });
    }
}
