//! housekeeper: the background thread of a spool.
//!
//! It persists the watermark (at least every second while acknowledgements come
//! in, and at once when a segment became deletable), deletes the segments the
//! persisted watermark passed (which wakes appenders waiting for space), and with
//! `Fsync::Interval` fsyncs what was written since the last round. Acknowledging
//! stays cheap: `ack` only updates the tracker and, sometimes, wakes this thread.
//! With nothing to do (the watermark persisted, nothing written unsynced) it
//! sleeps until woken, so an idle spool costs no wake-ups; an acknowledgement
//! or a write then wakes it (`Shared::hk_idle`).

use std::sync::atomic::{fence, Ordering};
use std::time::{Duration, Instant};

use tracing::warn;

use super::{lock, Fsync, Shared};

/// How often an advanced watermark is persisted when nothing else asks for it.
const PERSIST_EVERY: Duration = Duration::from_secs(1);

pub(crate) fn run(sh: &Shared) {
    let interval = match sh.opts.fsync {
        Fsync::Interval(d) => Some(d.max(Duration::from_millis(1))),
        _ => None,
    };
    let tick = interval.map_or(PERSIST_EVERY, |d| d.min(PERSIST_EVERY));
    let mut last_flush = Instant::now();
    let mut last_persist = Instant::now();
    loop {
        // Idle first, then look for work: an acknowledgement or a write that
        // this look misses sees the flag and wakes the thread (both sides fence).
        sh.hk_idle.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        let work = sh.tracker.watermark() > *lock(&sh.persisted)
            || (interval.is_some() && sh.dirty.load(Ordering::SeqCst));
        if work {
            sh.hk_idle.store(false, Ordering::SeqCst);
        }
        let (woken, stop) = {
            let mut hk = lock(&sh.hk);
            if !hk.wake && !hk.kick && !hk.stop {
                hk = if work {
                    sh.hk_cv
                        .wait_timeout(hk, tick)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                } else {
                    sh.hk_cv.wait(hk).unwrap_or_else(|e| e.into_inner())
                };
            }
            // A kick only ends an idle sleep: the next look finds the work.
            let r = (hk.wake, hk.stop);
            hk.wake = false;
            hk.kick = false;
            r
        };
        sh.hk_idle.store(false, Ordering::SeqCst);
        if let Some(d) = interval {
            if (stop || last_flush.elapsed() >= d) && sh.dirty.swap(false, Ordering::AcqRel) {
                last_flush = Instant::now();
                if let Err(error) = sh.flush() {
                    warn!(dir = %sh.dir.display(), %error, "spool interval fsync failed");
                }
            }
        }
        if woken || stop || last_persist.elapsed() >= PERSIST_EVERY {
            last_persist = Instant::now();
            if let Err(error) = sh.persist_and_delete() {
                warn!(dir = %sh.dir.display(), %error, "spool watermark not persisted; retrying");
            }
        }
        if stop {
            return;
        }
    }
}
