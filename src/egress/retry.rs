//! retry: capped, jittered exponential back-off, and `Retry-After`.

use std::time::{Duration, SystemTime};

use http::HeaderMap;

/// The delay before retry number `attempt` (1 for the first retry): exponential
/// from `initial`, capped at `max`, with "equal jitter" (half fixed, half random)
/// so that lanes and brokers that failed together do not retry together.
pub fn backoff(attempt: u32, initial: Duration, max: Duration) -> Duration {
    let exp = initial
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
        .min(max);
    let half = exp / 2;
    half + half.mul_f64(fastrand::f64())
}

/// The delay a `Retry-After` header asks for (delta-seconds or an HTTP date),
/// capped at `max`. None when absent or unreadable.
pub fn retry_after(headers: &HeaderMap, now: SystemTime, max: Duration) -> Option<Duration> {
    let value = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    let delay = match value.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => httpdate::parse_http_date(value)
            .ok()?
            .duration_since(now)
            .unwrap_or(Duration::ZERO),
    };
    Some(delay.min(max))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_jittered_and_capped() {
        let (initial, max) = (Duration::from_millis(100), Duration::from_secs(5));
        for _ in 0..100 {
            let d1 = backoff(1, initial, max);
            assert!(d1 >= Duration::from_millis(50) && d1 <= initial, "{d1:?}");
            let d4 = backoff(4, initial, max);
            assert!(d4 >= Duration::from_millis(400) && d4 <= Duration::from_millis(800));
            let d30 = backoff(30, initial, max);
            assert!(d30 >= max / 2 && d30 <= max);
        }
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let max = Duration::from_secs(600);
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h, now, max), None);
        h.insert(http::header::RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(retry_after(&h, now, max), Some(Duration::from_secs(7)));
        h.insert(http::header::RETRY_AFTER, "99999".parse().unwrap());
        assert_eq!(retry_after(&h, now, max), Some(max));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        h.insert(http::header::RETRY_AFTER, later.parse().unwrap());
        assert_eq!(retry_after(&h, now, max), Some(Duration::from_secs(30)));
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(30));
        h.insert(http::header::RETRY_AFTER, earlier.parse().unwrap());
        assert_eq!(retry_after(&h, now, max), Some(Duration::ZERO));
        h.insert(http::header::RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&h, now, max), None);
    }
}
