//! gate: admission to the work queue, bounded in messages and bytes, shared fairly
//! between clusters.
//!
//! A supervisor's reader asks the gate before it hands a chunk of frames to the
//! parse pool; a worker gives the budget back once the chunk is converted and in
//! its batch. When the budget is spent the reader's [`Admit`] future parks, the
//! reader stops reading its socket, and TCP flow control pushes back to the node.
//!
//! Fairness is max-min: while several clusters want the queue, each may hold at
//! most an equal share of it (a cluster holding nothing may always take one chunk
//! when the global budget allows). One flooding cluster thus fills the whole
//! queue only while nobody else needs it, and gives way, chunk by chunk, as soon
//! as another cluster waits.
//!
//! Every release wakes every parked reader; they re-check under the lock, so no
//! wake-up can be lost, and the ones still over their share park again. The lock
//! is taken once per chunk (hundreds of frames), never per frame.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use super::{Mutex, MutexGuard};

/// The shared admission budget of the work queue.
pub struct Gate {
    cap_msgs: usize,
    cap_bytes: usize,
    state: Mutex<State>,
}

struct State {
    used_msgs: usize,
    used_bytes: usize,
    /// Per cluster, indexed by the id `register` handed out.
    clusters: Vec<Slot>,
    /// Ids given back by forgotten clusters, handed out again first.
    free: Vec<usize>,
    /// Clusters holding budget or waiting for it.
    active: usize,
    waiters: Vec<Waiter>,
    next_waiter: u64,
}

#[derive(Default, Clone, Copy)]
struct Slot {
    used_msgs: usize,
    used_bytes: usize,
    waiting: usize,
}

impl Slot {
    fn is_active(&self) -> bool {
        self.used_msgs > 0 || self.waiting > 0
    }
}

struct Waiter {
    id: u64,
    waker: Waker,
}

/// Figures for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub msgs: usize,
    pub bytes: usize,
    pub cap_msgs: usize,
    pub cap_bytes: usize,
    pub active_clusters: usize,
    pub waiters: usize,
}

impl Gate {
    /// A gate of `cap_msgs` messages and `cap_bytes` bytes (both at least 1).
    pub fn new(cap_msgs: usize, cap_bytes: usize) -> Gate {
        Gate {
            cap_msgs: cap_msgs.max(1),
            cap_bytes: cap_bytes.max(1),
            state: Mutex::new(State {
                used_msgs: 0,
                used_bytes: 0,
                clusters: Vec::new(),
                free: Vec::new(),
                active: 0,
                waiters: Vec::new(),
                next_waiter: 0,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the counters half-updated
        // (every update is a few plain assignments), so poisoning is ignored.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new cluster's id.
    pub fn register(&self) -> usize {
        let mut st = self.lock();
        if let Some(id) = st.free.pop() {
            st.clusters[id] = Slot::default();
            return id;
        }
        st.clusters.push(Slot::default());
        st.clusters.len() - 1
    }

    /// Give back the id of a cluster that was forgotten; false (and kept) while
    /// it still holds budget or waits for it. `register` hands it out again.
    pub fn unregister(&self, cluster: usize) -> bool {
        let mut st = self.lock();
        match st.clusters.get(cluster) {
            Some(slot) if !slot.is_active() && slot.used_bytes == 0 => {
                st.free.push(cluster);
                true
            }
            _ => false,
        }
    }

    /// Take `msgs` messages and `bytes` bytes for `cluster` if its share allows now.
    pub fn try_admit(&self, cluster: usize, msgs: usize, bytes: usize) -> bool {
        let mut st = self.lock();
        self.take(&mut st, cluster, msgs, bytes)
    }

    /// Wait until `cluster` may take `msgs` messages and `bytes` bytes, then take them.
    pub fn admit(&self, cluster: usize, msgs: usize, bytes: usize) -> Admit<'_> {
        Admit {
            gate: self,
            cluster,
            msgs,
            bytes,
            waiter: None,
        }
    }

    /// Give back what a converted chunk held, and wake parked readers.
    pub fn release(&self, cluster: usize, msgs: usize, bytes: usize) {
        let wakers = {
            let mut st = self.lock();
            let was_active = st.clusters[cluster].is_active();
            let slot = &mut st.clusters[cluster];
            slot.used_msgs = slot.used_msgs.saturating_sub(msgs);
            slot.used_bytes = slot.used_bytes.saturating_sub(bytes);
            let now_active = slot.is_active();
            st.used_msgs = st.used_msgs.saturating_sub(msgs);
            st.used_bytes = st.used_bytes.saturating_sub(bytes);
            if was_active && !now_active {
                st.active -= 1;
            }
            st.waiters
                .iter()
                .map(|w| w.waker.clone())
                .collect::<Vec<_>>()
        };
        for waker in wakers {
            waker.wake();
        }
    }

    /// What one cluster holds in the queue now: (messages, bytes).
    pub fn cluster_usage(&self, cluster: usize) -> (usize, usize) {
        let st = self.lock();
        st.clusters
            .get(cluster)
            .map_or((0, 0), |s| (s.used_msgs, s.used_bytes))
    }

    /// What the queue holds now.
    pub fn usage(&self) -> Usage {
        let st = self.lock();
        Usage {
            msgs: st.used_msgs,
            bytes: st.used_bytes,
            cap_msgs: self.cap_msgs,
            cap_bytes: self.cap_bytes,
            active_clusters: st.active,
            waiters: st.waiters.len(),
        }
    }

    fn fits(&self, st: &State, cluster: usize, msgs: usize, bytes: usize) -> bool {
        if st.used_msgs == 0 {
            // Always room for one chunk in an empty queue, whatever its size.
            return true;
        }
        if st.used_msgs + msgs > self.cap_msgs || st.used_bytes + bytes > self.cap_bytes {
            return false;
        }
        let slot = &st.clusters[cluster];
        if slot.used_msgs == 0 {
            return true;
        }
        let active = st.active + usize::from(!slot.is_active());
        let share_msgs = (self.cap_msgs / active.max(1)).max(msgs);
        let share_bytes = (self.cap_bytes / active.max(1)).max(bytes);
        slot.used_msgs + msgs <= share_msgs && slot.used_bytes + bytes <= share_bytes
    }

    fn take(&self, st: &mut State, cluster: usize, msgs: usize, bytes: usize) -> bool {
        if !self.fits(st, cluster, msgs, bytes) {
            return false;
        }
        if !st.clusters[cluster].is_active() {
            st.active += 1;
        }
        let slot = &mut st.clusters[cluster];
        slot.used_msgs += msgs;
        slot.used_bytes += bytes;
        st.used_msgs += msgs;
        st.used_bytes += bytes;
        true
    }

    fn park(&self, st: &mut State, cluster: usize, waiter: &mut Option<u64>, waker: &Waker) {
        match *waiter {
            Some(id) => {
                if let Some(w) = st.waiters.iter_mut().find(|w| w.id == id) {
                    if !w.waker.will_wake(waker) {
                        w.waker = waker.clone();
                    }
                }
            }
            None => {
                let id = st.next_waiter;
                st.next_waiter += 1;
                st.waiters.push(Waiter {
                    id,
                    waker: waker.clone(),
                });
                if !st.clusters[cluster].is_active() {
                    st.active += 1;
                }
                st.clusters[cluster].waiting += 1;
                *waiter = Some(id);
            }
        }
    }

    fn unpark(&self, st: &mut State, cluster: usize, id: u64) {
        st.waiters.retain(|w| w.id != id);
        st.clusters[cluster].waiting -= 1;
        if !st.clusters[cluster].is_active() {
            st.active -= 1;
        }
    }
}

/// Resolves once the budget was taken. Dropping it before gives up the place.
pub struct Admit<'a> {
    gate: &'a Gate,
    cluster: usize,
    msgs: usize,
    bytes: usize,
    waiter: Option<u64>,
}

impl Future for Admit<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let gate = this.gate;
        let mut st = gate.lock();
        if let Some(id) = this.waiter {
            // Leave the waiting set first so that `take` counts this cluster's
            // activity from its budget alone.
            gate.unpark(&mut st, this.cluster, id);
            this.waiter = None;
        }
        if gate.take(&mut st, this.cluster, this.msgs, this.bytes) {
            return Poll::Ready(());
        }
        gate.park(&mut st, this.cluster, &mut this.waiter, cx.waker());
        Poll::Pending
    }
}

impl Drop for Admit<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.waiter.take() {
            let mut st = self.gate.lock();
            self.gate.unpark(&mut st, self.cluster, id);
        }
    }
}

#[cfg(all(test, not(qbroker_loom)))]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::task::Wake;

    struct Flag(std::sync::atomic::AtomicUsize);
    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    fn poll(admit: &mut Admit<'_>, flag: &Arc<Flag>) -> Poll<()> {
        let waker = Waker::from(flag.clone());
        let mut cx = Context::from_waker(&waker);
        Pin::new(admit).poll(&mut cx)
    }

    #[test]
    fn budget_in_messages_and_bytes_is_never_exceeded() {
        let gate = Gate::new(10, 1000);
        let a = gate.register();
        assert!(gate.try_admit(a, 6, 100));
        assert!(!gate.try_admit(a, 5, 100), "11 messages > 10");
        assert!(gate.try_admit(a, 4, 100));
        gate.release(a, 10, 200);
        assert!(gate.try_admit(a, 1, 900));
        assert!(!gate.try_admit(a, 1, 101), "1001 bytes > 1000");
        assert_eq!(gate.usage().msgs, 1);
        assert_eq!(gate.usage().bytes, 900);
    }

    #[test]
    fn a_forgotten_clusters_id_is_given_back_only_when_it_holds_nothing() {
        let gate = Gate::new(10, 1000);
        let a = gate.register();
        let b = gate.register();
        assert!(gate.try_admit(a, 1, 10));
        assert!(!gate.unregister(a), "a holds budget");
        gate.release(a, 1, 10);
        assert!(gate.unregister(a));
        assert_eq!(gate.register(), a, "the id is handed out again");
        assert_eq!(gate.cluster_usage(a), (0, 0));
        assert_ne!(gate.register(), b);
    }

    #[test]
    fn an_oversize_chunk_still_passes_an_empty_queue() {
        let gate = Gate::new(10, 100);
        let a = gate.register();
        assert!(gate.try_admit(a, 1, 5000));
        assert!(!gate.try_admit(a, 1, 1));
        gate.release(a, 1, 5000);
        assert_eq!(gate.usage().msgs, 0);
    }

    #[test]
    fn a_flooding_cluster_yields_its_share_to_a_waiting_one() {
        let gate = Gate::new(100, 1 << 20);
        let noisy = gate.register();
        let quiet = gate.register();
        for _ in 0..10 {
            assert!(gate.try_admit(noisy, 10, 10));
        }
        // The queue is full; the quiet cluster parks.
        let flag = Arc::new(Flag(Default::default()));
        let mut quiet_admit = gate.admit(quiet, 10, 10);
        assert!(poll(&mut quiet_admit, &flag).is_pending());
        assert_eq!(gate.usage().active_clusters, 2);
        // The pool drains one chunk of the noisy cluster: the quiet one is woken,
        // and the noisy one, far above its half, may not take the slot back.
        gate.release(noisy, 10, 10);
        assert_eq!(flag.0.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert!(!gate.try_admit(noisy, 10, 10));
        assert!(poll(&mut quiet_admit, &flag).is_ready());
        drop(quiet_admit);
        // As the noisy cluster drains to its half, it may refill only up to it.
        for _ in 0..5 {
            gate.release(noisy, 10, 10);
        }
        assert!(gate.try_admit(noisy, 10, 10));
        assert!(
            !gate.try_admit(noisy, 10, 10),
            "noisy holds 50 of 100 with 2 active"
        );
        assert!(gate.try_admit(quiet, 10, 10));
        let usage = gate.usage();
        assert_eq!((usage.msgs, usage.waiters), (70, 0));
    }

    #[test]
    fn a_lone_cluster_may_use_the_whole_queue() {
        let gate = Gate::new(100, 1 << 20);
        let a = gate.register();
        let _b = gate.register();
        for _ in 0..10 {
            assert!(gate.try_admit(a, 10, 1));
        }
        assert!(!gate.try_admit(a, 1, 1));
    }

    #[test]
    fn dropping_a_parked_admit_leaves_no_trace() {
        let gate = Gate::new(1, 10);
        let a = gate.register();
        let b = gate.register();
        assert!(gate.try_admit(a, 1, 1));
        let flag = Arc::new(Flag(Default::default()));
        let mut admit = gate.admit(b, 1, 1);
        assert!(poll(&mut admit, &flag).is_pending());
        assert_eq!(gate.usage().waiters, 1);
        drop(admit);
        let usage = gate.usage();
        assert_eq!((usage.waiters, usage.active_clusters), (0, 1));
        gate.release(a, 1, 1);
        assert_eq!(gate.usage().active_clusters, 0);
        assert_eq!(flag.0.load(std::sync::atomic::Ordering::SeqCst), 0);
    }
}

#[cfg(all(test, qbroker_loom))]
mod loom_tests {
    use super::*;
    use loom::sync::Arc;
    use loom::thread;

    /// A parked reader is always woken when the pool releases budget, whatever the
    /// interleaving of its park and the release.
    #[test]
    fn loom_release_wakes_a_parked_reader() {
        loom::model(|| {
            let gate = Arc::new(Gate::new(2, 100));
            let a = gate.register();
            let b = gate.register();
            assert!(gate.try_admit(a, 2, 2));
            let reader = {
                let gate = gate.clone();
                thread::spawn(move || {
                    loom::future::block_on(gate.admit(b, 1, 1));
                })
            };
            gate.release(a, 2, 2);
            reader.join().unwrap();
            let usage = gate.usage();
            assert_eq!((usage.msgs, usage.bytes, usage.waiters), (1, 1, 0));
        });
    }

    /// Two readers racing for the last slot: exactly one wins at a time, the budget
    /// is never exceeded, and the loser is woken by the winner's release.
    #[test]
    fn loom_two_readers_never_exceed_the_budget() {
        loom::model(|| {
            let gate = Arc::new(Gate::new(1, 100));
            let ids = [gate.register(), gate.register()];
            let handles: Vec<_> = ids
                .into_iter()
                .map(|id| {
                    let gate = gate.clone();
                    thread::spawn(move || {
                        loom::future::block_on(gate.admit(id, 1, 10));
                        let usage = gate.usage();
                        assert!(usage.msgs <= 1 && usage.bytes <= 100);
                        gate.release(id, 1, 10);
                    })
                })
                .collect();
            for h in handles {
                h.join().unwrap();
            }
            let usage = gate.usage();
            assert_eq!(
                (usage.msgs, usage.waiters, usage.active_clusters),
                (0, 0, 0)
            );
        });
    }
}
