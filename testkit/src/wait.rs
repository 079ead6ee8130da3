//! wait: bounded waits for a condition, in place of fixed sleeps: poll every
//! 20 ms until the condition holds or a deadline passes. A test that waits
//! this way is as fast as the system under test and fails with a message
//! instead of hanging, or passing by luck of timing.

use std::time::{Duration, Instant};

/// How often a condition is checked.
pub const POLL: Duration = Duration::from_millis(20);

/// Poll `f` until it returns Some (that value), or None once `timeout` passed.
pub fn poll<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(POLL);
    }
}

/// Poll `f` until it returns Some, or panic after `timeout`.
#[track_caller]
pub fn wait_for<T>(timeout: Duration, f: impl FnMut() -> Option<T>) -> T {
    match poll(timeout, f) {
        Some(v) => v,
        None => panic!("condition not met within {timeout:?}"),
    }
}

/// Poll `f` until it is true, or panic after `timeout`, saying `what` was
/// waited for.
#[track_caller]
pub fn wait_until(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    if poll(timeout, || f().then_some(())).is_none() {
        panic!("{what}: not within {timeout:?}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polls_until_the_condition_or_the_deadline() {
        let mut n = 0;
        assert_eq!(
            poll(Duration::from_secs(5), || {
                n += 1;
                (n == 3).then_some(n)
            }),
            Some(3)
        );
        let start = Instant::now();
        assert_eq!(poll(Duration::from_millis(50), || None::<()>), None);
        assert!(start.elapsed() >= Duration::from_millis(50));
    }
}
