//! housekeeper: the background work of every spool, done by a few threads that
//! all spools of the process share.
//!
//! For each spool it persists the watermark (at least every second while
//! acknowledgements come in, and at once when a segment became deletable),
//! deletes the segments the persisted watermark passed (which wakes appenders
//! waiting for space), and with `Fsync::Interval` fsyncs what was written since
//! the last round. Acknowledging stays cheap: `ack` only updates the tracker and,
//! sometimes, queues the spool here.
//!
//! The work is a step per spool, taken by whichever housekeeping thread is free:
//! a spool is stepped when it is queued (woken: a segment became deletable; or
//! kicked: an acknowledgement or a write arrived while it had nothing to do) or
//! when its own deadline comes (the next persist or fsync while work is
//! pending). A spool with nothing to do has no deadline, so idle spools cost no
//! wake-ups, however many there are: an idle process's housekeeping threads
//! wait without a timeout. One spool is never stepped by two threads at once.
//!
//! The threads start with the first spool, one at first and more (up to
//! [`MAX_THREADS`]) while queued spools wait for a free thread, so that one slow
//! fsync does not hold up every other spool; they stay for the life of the
//! process. Closing a spool ([`Housekeeping::close`]) takes it out, waits for a
//! step of it under way, and leaves the last fsync and persist to the caller.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{fence, Ordering};
use std::sync::{Condvar, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use tracing::{error, warn};

use super::{lock, Fsync, Shared};

/// How often an advanced watermark is persisted when nothing else asks for it.
const PERSIST_EVERY: Duration = Duration::from_secs(1);

/// The most housekeeping threads the process runs, for all its spools.
pub const MAX_THREADS: usize = 4;

/// The name of the housekeeping threads (as `/proc` and debuggers show them).
pub const THREAD_NAME: &str = "spool-housekeeping";

/// The shared housekeeping of every spool: see the module doc.
pub(crate) struct Housekeeping {
    state: Mutex<State>,
    /// A spool was queued, or a deadline sooner than a sleeping thread's came.
    work: Condvar,
    /// A step of a closing spool ended.
    stepped: Condvar,
}

struct State {
    /// Indexed by the key [`Housekeeping::register`] handed out.
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
    /// Spools to step now, oldest first (each at most once: `Slot::queued`).
    ready: VecDeque<usize>,
    /// Deadlines; an entry is stale unless its spool's `due` still equals it.
    timers: BinaryHeap<Reverse<(Instant, usize)>>,
    threads: usize,
    /// Threads waiting for work.
    waiting: usize,
}

struct Slot {
    spool: Weak<Shared>,
    /// In `ready`.
    queued: bool,
    /// A step of it is under way (on some thread).
    stepping: bool,
    /// Queued again while a step was under way: queue it when the step ends.
    again: bool,
    /// Persist at once (a segment became deletable), not only when a second
    /// has passed.
    wake: bool,
    closing: bool,
    due: Option<Instant>,
    times: Times,
}

/// When the spool was last fsynced and persisted by its steps.
#[derive(Clone, Copy)]
struct Times {
    flush: Instant,
    persist: Instant,
}

impl State {
    fn slot(&mut self, key: usize) -> Option<&mut Slot> {
        self.slots.get_mut(key).and_then(Option::as_mut)
    }

    /// Queue `key` to be stepped; whether a thread should be told.
    fn enqueue(&mut self, key: usize) -> bool {
        let Some(slot) = self.slot(key) else {
            return false;
        };
        if slot.closing {
            false
        } else if slot.stepping {
            slot.again = true;
            false
        } else if slot.queued {
            false
        } else {
            slot.queued = true;
            self.ready.push_back(key);
            true
        }
    }

    /// Queue every spool whose deadline has come; the soonest deadline left.
    fn queue_due(&mut self, now: Instant) -> Option<Instant> {
        while let Some(&Reverse((at, key))) = self.timers.peek() {
            let live = self
                .slot(key)
                .is_some_and(|s| s.due == Some(at) && !s.closing);
            if !live {
                self.timers.pop();
                continue;
            }
            if at > now {
                return Some(at);
            }
            self.timers.pop();
            if let Some(s) = self.slot(key) {
                s.due = None;
            }
            self.enqueue(key);
        }
        None
    }
}

impl Housekeeping {
    /// The process's housekeeping (its threads start with the first spool).
    pub(crate) fn global() -> &'static Housekeeping {
        static GLOBAL: OnceLock<Housekeeping> = OnceLock::new();
        GLOBAL.get_or_init(|| Housekeeping {
            state: Mutex::new(State {
                slots: Vec::new(),
                free: Vec::new(),
                ready: VecDeque::new(),
                timers: BinaryHeap::new(),
                threads: 0,
                waiting: 0,
            }),
            work: Condvar::new(),
            stepped: Condvar::new(),
        })
    }

    /// Take on a spool and queue its first step; its key. Fails only when no
    /// housekeeping thread runs and none can be started.
    pub(crate) fn register(&'static self, spool: Weak<Shared>) -> std::io::Result<usize> {
        let mut st = lock(&self.state);
        if st.threads == 0 {
            self.spawn()?;
            st.threads = 1;
        }
        let now = Instant::now();
        let slot = Slot {
            spool,
            queued: false,
            stepping: false,
            again: false,
            wake: false,
            closing: false,
            due: None,
            times: Times {
                flush: now,
                persist: now,
            },
        };
        let key = match st.free.pop() {
            Some(k) => {
                st.slots[k] = Some(slot);
                k
            }
            None => {
                st.slots.push(Some(slot));
                st.slots.len() - 1
            }
        };
        if st.enqueue(key) {
            self.work.notify_one();
        }
        Ok(key)
    }

    /// Persist the spool's watermark at once (a segment became deletable).
    pub(crate) fn wake(&self, key: usize) {
        let mut st = lock(&self.state);
        if let Some(s) = st.slot(key) {
            s.wake = true;
        }
        if st.enqueue(key) {
            self.work.notify_one();
        }
    }

    /// Work arrived for a spool that had nothing to do: step it.
    pub(crate) fn kick(&self, key: usize) {
        if lock(&self.state).enqueue(key) {
            self.work.notify_one();
        }
    }

    /// Take the spool out, once a step of it under way has ended. It is not
    /// stepped again; the caller does the last fsync and persist.
    pub(crate) fn close(&self, key: usize) {
        let mut st = lock(&self.state);
        let Some(s) = st.slot(key) else {
            return;
        };
        s.closing = true;
        while st.slot(key).is_some_and(|s| s.stepping) {
            st = self.stepped.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        st.slots[key] = None;
        st.free.push(key);
        st.ready.retain(|&k| k != key);
    }

    fn spawn(&'static self) -> std::io::Result<()> {
        std::thread::Builder::new()
            .name(THREAD_NAME.into())
            .spawn(move || self.run())
            .map(drop)
    }

    fn run(&'static self) {
        let mut st = lock(&self.state);
        loop {
            let soonest = st.queue_due(Instant::now());
            let Some(key) = st.ready.pop_front() else {
                st.waiting += 1;
                st = match soonest {
                    Some(at) => {
                        let wait = at.saturating_duration_since(Instant::now());
                        self.work
                            .wait_timeout(st, wait)
                            .unwrap_or_else(|e| e.into_inner())
                            .0
                    }
                    None => self.work.wait(st).unwrap_or_else(|e| e.into_inner()),
                };
                st.waiting -= 1;
                continue;
            };
            let Some(s) = st.slot(key).filter(|s| s.queued) else {
                continue;
            };
            s.queued = false;
            let Some(spool) = s.spool.upgrade() else {
                continue;
            };
            s.stepping = true;
            let wake = std::mem::take(&mut s.wake);
            let mut times = s.times;
            // More queued than free threads: one more thread, up to the cap.
            if !st.ready.is_empty() && st.waiting == 0 && st.threads < MAX_THREADS {
                match self.spawn() {
                    Ok(()) => st.threads += 1,
                    Err(error) => warn!(%error, "cannot start another spool housekeeping thread"),
                }
            }
            drop(st);
            let due = catch_unwind(AssertUnwindSafe(|| step(&spool, wake, &mut times)))
                .unwrap_or_else(|_| {
                    error!(dir = %spool.dir.display(), "spool housekeeping step panicked; retrying in a second");
                    Some(Instant::now() + PERSIST_EVERY)
                });
            drop(spool);
            st = lock(&self.state);
            let mut told = false;
            let (closing, again) = match st.slot(key) {
                Some(s) => {
                    s.stepping = false;
                    s.times = times;
                    if !s.closing {
                        s.due = due;
                    }
                    (s.closing, std::mem::take(&mut s.again))
                }
                None => (true, false),
            };
            if closing {
                self.stepped.notify_all();
            } else {
                if let Some(at) = due {
                    st.timers.push(Reverse((at, key)));
                    // A sleeping thread may wait for a later deadline.
                    told = true;
                }
                if again {
                    told |= st.enqueue(key);
                }
            }
            if told && st.waiting > 0 {
                self.work.notify_one();
            }
        }
    }
}

/// One round of a spool's housekeeping; its next deadline, `None` while it has
/// nothing to do (then an acknowledgement or a write queues it: `hk_idle`).
fn step(sh: &Shared, wake: bool, t: &mut Times) -> Option<Instant> {
    let interval = match sh.opts.fsync {
        Fsync::Interval(d) => Some(d.max(Duration::from_millis(1))),
        _ => None,
    };
    let now = Instant::now();
    if let Some(d) = interval {
        if now.duration_since(t.flush) >= d && sh.dirty.swap(false, Ordering::AcqRel) {
            t.flush = now;
            if let Err(error) = sh.flush() {
                warn!(dir = %sh.dir.display(), %error, "spool interval fsync failed");
            }
        }
    }
    if wake || now.duration_since(t.persist) >= PERSIST_EVERY {
        t.persist = now;
        if let Err(error) = sh.persist_and_delete() {
            warn!(dir = %sh.dir.display(), %error, "spool watermark not persisted; retrying");
        }
    }
    // Idle first, then look for work: an acknowledgement or a write that this
    // look misses sees the flag and queues the spool (both sides fence).
    sh.hk_idle.store(true, Ordering::SeqCst);
    fence(Ordering::SeqCst);
    let persist = sh.tracker.watermark() > *lock(&sh.persisted);
    let flush = interval.filter(|_| sh.dirty.load(Ordering::SeqCst));
    if !persist && flush.is_none() {
        return None;
    }
    sh.hk_idle.store(false, Ordering::SeqCst);
    let persist_at = persist.then(|| t.persist + PERSIST_EVERY);
    let flush_at = flush.map(|d| t.flush + d);
    persist_at.into_iter().chain(flush_at).min()
}

/// The last round of a closing spool: fsync what is unsynced, persist.
pub(crate) fn last_step(sh: &Shared) {
    if matches!(sh.opts.fsync, Fsync::Interval(_)) && sh.dirty.swap(false, Ordering::AcqRel) {
        if let Err(error) = sh.flush() {
            warn!(dir = %sh.dir.display(), %error, "spool interval fsync failed");
        }
    }
    if let Err(error) = sh.persist_and_delete() {
        warn!(dir = %sh.dir.display(), %error, "spool watermark not persisted at close");
    }
}
