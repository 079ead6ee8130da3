//! ratelimit: at most a few log lines per interval for messages that could come
//! once per frame or per connection, with a count of what was held back.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::unix_ms;

/// Lets `burst` events through per `interval`, then counts the rest.
#[derive(Debug)]
pub struct RateLimit {
    interval_ms: u64,
    burst: u64,
    /// Start of the current window, in Unix milliseconds.
    window: AtomicU64,
    /// Events seen in the current window.
    seen: AtomicU64,
}

impl RateLimit {
    pub const fn new(interval: Duration, burst: u64) -> RateLimit {
        RateLimit {
            interval_ms: interval.as_millis() as u64,
            burst,
            window: AtomicU64::new(0),
            seen: AtomicU64::new(0),
        }
    }

    /// `Some(suppressed)` when this event may be logged, with how many were held
    /// back since the last one that was; `None` when it should be dropped.
    pub fn check(&self) -> Option<u64> {
        self.check_at(unix_ms() as u64)
    }

    fn check_at(&self, now: u64) -> Option<u64> {
        let window = self.window.load(Ordering::Relaxed);
        if now.saturating_sub(window) >= self.interval_ms
            && self
                .window
                .compare_exchange(window, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let before = self.seen.swap(1, Ordering::Relaxed);
            return Some(before.saturating_sub(self.burst));
        }
        let seen = self.seen.fetch_add(1, Ordering::Relaxed) + 1;
        (seen <= self.burst).then_some(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lets_a_burst_through_then_reports_what_it_held_back() {
        let rl = RateLimit::new(Duration::from_secs(10), 3);
        let t0 = 1_000_000;
        assert_eq!(rl.check_at(t0), Some(0));
        assert_eq!(rl.check_at(t0 + 1), Some(0));
        assert_eq!(rl.check_at(t0 + 2), Some(0));
        for i in 0..5 {
            assert_eq!(rl.check_at(t0 + 3 + i), None);
        }
        assert_eq!(rl.check_at(t0 + 10_000), Some(5));
        assert_eq!(rl.check_at(t0 + 10_001), Some(0));
    }
}
