//! gate: admission to the work queue, bounded in messages and bytes, shared fairly
//! between clusters.
//!
//! A supervisor's reader asks the gate before it hands a chunk of frames to the
//! parse pool; a worker gives the budget back once the chunk is converted and in
//! its batch. When the budget is spent the reader's [`Admit`] future parks, the
//! reader stops reading its socket, and TCP flow control pushes back to the node.
//! (The stdin feeder, a plain thread, waits on the same future with `block_on`:
//! a waker serves both.)
//!
//! Fairness is max-min: while several clusters want the queue, each may hold at
//! most an equal share of it (a cluster holding nothing may always take one chunk
//! when the global budget allows, in its turn). One flooding cluster thus fills
//! the whole queue only while nobody else needs it, and gives way, chunk by
//! chunk, as soon as another cluster waits.
//!
//! Parked admissions are served in order:
//! - Within a cluster, always in the order they parked.
//! - Between clusters, a line of turns, one per parked admission, in the order
//!   they parked. The turn at the front is served as soon as the budget allows,
//!   and nothing behind it passes it: not a later admission whose chunk would fit,
//!   nor a [`Gate::try_admit`] (it fails while anyone stands in line). So an
//!   admission that arrived first is admitted first, and a large chunk is not
//!   starved by smaller ones.
//! - A cluster whose turn comes while it is over its share steps out of the line
//!   with all its turns: it waits for its own chunks to drain (or for another
//!   cluster to go idle, which widens every share) and then rejoins at the back.
//!   Its chunks in the queue guarantee that moment comes, and meanwhile it holds
//!   up no one within their share.
//!
//! The budget is handed over: a release takes it on behalf of the admissions that
//! now fit, front first, and wakes only those; no wake-up is spent on one that
//! would park again. A release costs O(1) amortised (each turn is served, or
//! steps out, once per time it joins the line), plus a look at each cluster
//! standing aside when a cluster goes idle. Giving up a parked admission (a
//! connection closed, shutdown) looks through its cluster's queue and the line.
//! The lock is taken once per chunk (hundreds of frames), never per frame.

use std::collections::VecDeque;
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
    /// The turns of parked admissions, oldest first; consecutive turns of one
    /// cluster are one entry.
    line: VecDeque<Turn>,
    /// Clusters standing out of the line while over their share.
    aside: Vec<usize>,
    /// Parked admissions, at the key their [`Admit`] holds; `vacant` lists the
    /// keys free for reuse (so that parking allocates nothing once warm).
    parked: Vec<Parked>,
    vacant: Vec<usize>,
    /// Parked admissions not yet served.
    waiting: usize,
}

/// `count` turns of `cluster`. A turn is not tied to one admission: whichever
/// turn of a cluster comes up serves that cluster's oldest parked admission.
struct Turn {
    cluster: usize,
    count: usize,
}

#[derive(Default)]
struct Slot {
    used_msgs: usize,
    used_bytes: usize,
    /// Its parked admissions not yet served, oldest first (keys into `parked`).
    queue: VecDeque<usize>,
    /// Its turns in the line. Always `in_line + held == queue.len()`.
    in_line: usize,
    /// Its turns kept out of the line while it stands aside.
    held: usize,
    /// Its index in `State::aside` while it stands aside.
    aside_at: Option<usize>,
}

impl Slot {
    fn is_active(&self) -> bool {
        self.used_msgs > 0 || !self.queue.is_empty()
    }
}

struct Parked {
    msgs: usize,
    bytes: usize,
    waker: Option<Waker>,
    /// The budget was taken on its behalf: its `Admit` is ready.
    served: bool,
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

/// Wakers to call once the lock is let go.
type Wakes = Vec<Waker>;

fn wake_all(wakes: Wakes) {
    for waker in wakes {
        waker.wake();
    }
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
                line: VecDeque::new(),
                aside: Vec::new(),
                parked: Vec::new(),
                vacant: Vec::new(),
                waiting: 0,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the state half-updated
        // (no update calls out while it is inconsistent), so poisoning is ignored.
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

    /// Take `msgs` messages and `bytes` bytes for `cluster` if its share allows
    /// now and no parked admission is before it (see the module doc).
    pub fn try_admit(&self, cluster: usize, msgs: usize, bytes: usize) -> bool {
        let mut st = self.lock();
        if !st.line.is_empty()
            || !st.clusters[cluster].queue.is_empty()
            || !self.fits(&st, cluster, msgs, bytes)
        {
            return false;
        }
        self.take(&mut st, cluster, msgs, bytes);
        true
    }

    /// Wait until `cluster` may take `msgs` messages and `bytes` bytes, then take
    /// them. The future keeps its place in line from its first poll.
    pub fn admit(&self, cluster: usize, msgs: usize, bytes: usize) -> Admit<'_> {
        Admit {
            gate: self,
            cluster,
            msgs,
            bytes,
            key: None,
        }
    }

    /// Give back what a converted chunk held, and serve the parked admissions
    /// that now fit, waking those only.
    pub fn release(&self, cluster: usize, msgs: usize, bytes: usize) {
        let mut wakes = Wakes::new();
        {
            let mut st = self.lock();
            self.give_back(&mut st, cluster, msgs, bytes);
            self.serve(&mut st, &mut wakes);
        }
        wake_all(wakes);
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
            waiters: st.waiting,
        }
    }

    /// Room in the whole queue.
    fn within_budget(&self, st: &State, msgs: usize, bytes: usize) -> bool {
        // Always room for one chunk in an empty queue, whatever its size.
        st.used_msgs == 0
            || (st.used_msgs + msgs <= self.cap_msgs && st.used_bytes + bytes <= self.cap_bytes)
    }

    /// Room in the cluster's share.
    fn within_share(&self, st: &State, cluster: usize, msgs: usize, bytes: usize) -> bool {
        let slot = &st.clusters[cluster];
        if st.used_msgs == 0 || slot.used_msgs == 0 {
            return true;
        }
        let active = st.active + usize::from(!slot.is_active());
        let share_msgs = (self.cap_msgs / active.max(1)).max(msgs);
        let share_bytes = (self.cap_bytes / active.max(1)).max(bytes);
        slot.used_msgs + msgs <= share_msgs && slot.used_bytes + bytes <= share_bytes
    }

    fn fits(&self, st: &State, cluster: usize, msgs: usize, bytes: usize) -> bool {
        self.within_budget(st, msgs, bytes) && self.within_share(st, cluster, msgs, bytes)
    }

    fn take(&self, st: &mut State, cluster: usize, msgs: usize, bytes: usize) {
        let was_active = st.clusters[cluster].is_active();
        let slot = &mut st.clusters[cluster];
        slot.used_msgs += msgs;
        slot.used_bytes += bytes;
        st.used_msgs += msgs;
        st.used_bytes += bytes;
        self.activity_changed(st, cluster, was_active);
    }

    fn give_back(&self, st: &mut State, cluster: usize, msgs: usize, bytes: usize) {
        let was_active = st.clusters[cluster].is_active();
        let slot = &mut st.clusters[cluster];
        slot.used_msgs = slot.used_msgs.saturating_sub(msgs);
        slot.used_bytes = slot.used_bytes.saturating_sub(bytes);
        st.used_msgs = st.used_msgs.saturating_sub(msgs);
        st.used_bytes = st.used_bytes.saturating_sub(bytes);
        self.activity_changed(st, cluster, was_active);
        // Its own share has room again, perhaps.
        self.rejoin_if_within_share(st, cluster);
    }

    /// Count a cluster in or out of the active ones. One going idle widens every
    /// share: the clusters standing aside look again.
    fn activity_changed(&self, st: &mut State, cluster: usize, was_active: bool) {
        match (was_active, st.clusters[cluster].is_active()) {
            (false, true) => st.active += 1,
            (true, false) => {
                st.active -= 1;
                let mut i = 0;
                while i < st.aside.len() {
                    let c = st.aside[i];
                    // A cluster that rejoins leaves `aside` at `i`, and the last
                    // one takes its index.
                    if !self.rejoin_if_within_share(st, c) {
                        i += 1;
                    }
                }
            }
            _ => {}
        }
    }

    /// Put a cluster standing aside back in line (at the back) once its oldest
    /// admission is within its share, or once it has none; true if it did.
    fn rejoin_if_within_share(&self, st: &mut State, cluster: usize) -> bool {
        let slot = &st.clusters[cluster];
        let Some(at) = slot.aside_at else {
            return false;
        };
        if let Some(&key) = slot.queue.front() {
            let p = &st.parked[key];
            if !self.within_share(st, cluster, p.msgs, p.bytes) {
                return false;
            }
        }
        st.aside.swap_remove(at);
        if let Some(&moved) = st.aside.get(at) {
            st.clusters[moved].aside_at = Some(at);
        }
        let slot = &mut st.clusters[cluster];
        slot.aside_at = None;
        let n = std::mem::take(&mut slot.held);
        slot.in_line += n;
        push_turns(st, cluster, n);
        true
    }

    /// Serve the line from the front while the budget allows: take the budget on
    /// behalf of each admission served, and collect its waker.
    fn serve(&self, st: &mut State, wakes: &mut Wakes) {
        while let Some(turn) = st.line.front() {
            let (cluster, count) = (turn.cluster, turn.count);
            let slot = &st.clusters[cluster];
            let key = *slot
                .queue
                .front()
                .expect("a turn in line has a parked admission");
            let (msgs, bytes) = (st.parked[key].msgs, st.parked[key].bytes);
            let aside = slot.aside_at.is_some();
            if aside || !self.within_share(st, cluster, msgs, bytes) {
                // Over its share: every turn of the cluster steps out of line
                // (these now, the rest as they come up) until its share has room.
                st.line.pop_front();
                let slot = &mut st.clusters[cluster];
                slot.in_line -= count;
                slot.held += count;
                if !aside {
                    slot.aside_at = Some(st.aside.len());
                    st.aside.push(cluster);
                }
                continue;
            }
            if !self.within_budget(st, msgs, bytes) {
                // Nobody passes the front of the line.
                break;
            }
            match st.line.front_mut() {
                Some(turn) if turn.count > 1 => turn.count -= 1,
                _ => {
                    st.line.pop_front();
                }
            }
            let slot = &mut st.clusters[cluster];
            slot.queue.pop_front();
            slot.in_line -= 1;
            st.waiting -= 1;
            let p = &mut st.parked[key];
            p.served = true;
            wakes.extend(p.waker.take());
            // Served from the queue into the budget: still active, unless the
            // admission weighed no message.
            let was_active = true;
            let slot = &mut st.clusters[cluster];
            slot.used_msgs += msgs;
            slot.used_bytes += bytes;
            st.used_msgs += msgs;
            st.used_bytes += bytes;
            self.activity_changed(st, cluster, was_active);
        }
    }

    /// Park an admission: at the back of its cluster's queue, and its turn at the
    /// back of the line (or kept aside with its cluster's).
    fn park(
        &self,
        st: &mut State,
        cluster: usize,
        msgs: usize,
        bytes: usize,
        waker: Waker,
    ) -> usize {
        let parked = Parked {
            msgs,
            bytes,
            waker: Some(waker),
            served: false,
        };
        let key = match st.vacant.pop() {
            Some(key) => {
                st.parked[key] = parked;
                key
            }
            None => {
                st.parked.push(parked);
                st.parked.len() - 1
            }
        };
        let was_active = st.clusters[cluster].is_active();
        let slot = &mut st.clusters[cluster];
        slot.queue.push_back(key);
        if slot.aside_at.is_some() {
            slot.held += 1;
        } else {
            slot.in_line += 1;
            push_turns(st, cluster, 1);
        }
        st.waiting += 1;
        // One more active cluster narrows every share; the line finds out as
        // turns come up.
        self.activity_changed(st, cluster, was_active);
        key
    }

    /// Take back a parked admission that was not served: out of its cluster's
    /// queue, and one of its cluster's turns with it (held ones first, else the
    /// earliest in line, so that the cluster's remaining admissions never move
    /// ahead of where they parked).
    fn cancel(&self, st: &mut State, cluster: usize, key: usize) {
        let was_active = st.clusters[cluster].is_active();
        let slot = &mut st.clusters[cluster];
        let at = slot
            .queue
            .iter()
            .position(|&k| k == key)
            .expect("an unserved admission is in its cluster's queue");
        slot.queue.remove(at);
        if slot.held > 0 {
            slot.held -= 1;
        } else {
            slot.in_line -= 1;
            let i = st
                .line
                .iter()
                .position(|t| t.cluster == cluster)
                .expect("a turn in line for each admission not held");
            st.line[i].count -= 1;
            if st.line[i].count == 0 {
                st.line.remove(i);
            }
        }
        st.waiting -= 1;
        self.vacate(st, key);
        self.activity_changed(st, cluster, was_active);
        // Its next admission may be smaller, or it may have none left.
        self.rejoin_if_within_share(st, cluster);
    }

    fn vacate(&self, st: &mut State, key: usize) {
        st.parked[key].waker = None;
        st.vacant.push(key);
    }
}

fn push_turns(st: &mut State, cluster: usize, count: usize) {
    if count == 0 {
        return;
    }
    match st.line.back_mut() {
        Some(back) if back.cluster == cluster => back.count += count,
        _ => st.line.push_back(Turn { cluster, count }),
    }
}

/// Resolves once the budget was taken. Dropping it before gives up its place;
/// dropping it once served but before it resolved gives the budget back.
pub struct Admit<'a> {
    gate: &'a Gate,
    cluster: usize,
    msgs: usize,
    bytes: usize,
    /// Its key in `State::parked` while parked.
    key: Option<usize>,
}

impl Future for Admit<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let gate = this.gate;
        let (cluster, msgs, bytes) = (this.cluster, this.msgs, this.bytes);
        let mut wakes = Wakes::new();
        let ready = {
            let mut st = gate.lock();
            match this.key {
                Some(key) if st.parked[key].served => {
                    gate.vacate(&mut st, key);
                    this.key = None;
                    true
                }
                Some(key) => {
                    let p = &mut st.parked[key];
                    if !p.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                        p.waker = Some(cx.waker().clone());
                    }
                    false
                }
                None if st.line.is_empty()
                    && st.clusters[cluster].queue.is_empty()
                    && gate.fits(&st, cluster, msgs, bytes) =>
                {
                    gate.take(&mut st, cluster, msgs, bytes);
                    true
                }
                None => {
                    let key = gate.park(&mut st, cluster, msgs, bytes, cx.waker().clone());
                    // Its arrival may have pushed the front's cluster over its
                    // share, letting the turns behind it go.
                    gate.serve(&mut st, &mut wakes);
                    if st.parked[key].served {
                        gate.vacate(&mut st, key);
                        true
                    } else {
                        this.key = Some(key);
                        false
                    }
                }
            }
        };
        wake_all(wakes);
        if ready {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

impl Drop for Admit<'_> {
    fn drop(&mut self) {
        let Some(key) = self.key.take() else {
            return;
        };
        let gate = self.gate;
        let mut wakes = Wakes::new();
        {
            let mut st = gate.lock();
            if st.parked[key].served {
                gate.vacate(&mut st, key);
                gate.give_back(&mut st, self.cluster, self.msgs, self.bytes);
            } else {
                gate.cancel(&mut st, self.cluster, key);
            }
            gate.serve(&mut st, &mut wakes);
        }
        wake_all(wakes);
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

    fn flags(n: usize) -> Vec<Arc<Flag>> {
        (0..n).map(|_| Arc::new(Flag(Default::default()))).collect()
    }

    fn woken(flag: &Flag) -> usize {
        flag.0.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// A release serves the oldest parked admission and wakes it alone; the
    /// others keep their places and sleep.
    #[test]
    fn parked_admissions_are_served_in_arrival_order_one_wake_each() {
        let gate = Gate::new(1, 1 << 20);
        let holder = gate.register();
        assert!(gate.try_admit(holder, 1, 1));
        let ids: Vec<usize> = (0..50).map(|_| gate.register()).collect();
        let flags = flags(ids.len());
        let mut admits: Vec<_> = ids.iter().map(|&id| gate.admit(id, 1, 1)).collect();
        for (admit, flag) in admits.iter_mut().zip(&flags) {
            assert!(poll(admit, flag).is_pending());
        }
        assert_eq!(gate.usage().waiters, 50);
        let mut last = holder;
        for i in 0..ids.len() {
            gate.release(last, 1, 1);
            for (j, flag) in flags.iter().enumerate() {
                assert_eq!(
                    woken(flag),
                    usize::from(j <= i),
                    "after release {i}: waiter {j}"
                );
            }
            assert!(poll(&mut admits[i], &flags[i]).is_ready());
            if let Some(next) = admits.get_mut(i + 1) {
                assert!(poll(next, &flags[i + 1]).is_pending());
            }
            last = ids[i];
        }
        gate.release(last, 1, 1);
        let usage = gate.usage();
        assert_eq!(
            (usage.msgs, usage.waiters, usage.active_clusters),
            (0, 0, 0)
        );
    }

    /// Nobody passes the front of the line: not a smaller chunk that would fit,
    /// not a `try_admit`, not a later admission of the same cluster.
    #[test]
    fn a_large_chunk_at_the_front_is_not_passed() {
        let gate = Gate::new(4, 1 << 20);
        let (a, b, c) = (gate.register(), gate.register(), gate.register());
        assert!(gate.try_admit(a, 3, 3));
        let f = flags(3);
        let mut big = gate.admit(b, 2, 2);
        assert!(poll(&mut big, &f[0]).is_pending());
        assert!(
            !gate.try_admit(c, 1, 1),
            "one message is free, but b is first"
        );
        let mut small = gate.admit(c, 1, 1);
        assert!(poll(&mut small, &f[1]).is_pending());
        let mut later = gate.admit(b, 1, 1);
        assert!(poll(&mut later, &f[2]).is_pending());
        gate.release(a, 1, 1);
        assert!(poll(&mut big, &f[0]).is_ready());
        assert_eq!((woken(&f[1]), woken(&f[2])), (0, 0));
        assert_eq!(gate.usage().msgs, 4);
        // The queue is full again. The next release serves c; b's second waits,
        // b holding its half of the queue, until b's first chunk is done.
        gate.release(a, 2, 2);
        assert_eq!((woken(&f[1]), woken(&f[2])), (1, 0));
        assert!(poll(&mut small, &f[1]).is_ready());
        gate.release(b, 2, 2);
        assert_eq!(woken(&f[2]), 1);
        assert!(poll(&mut later, &f[2]).is_ready());
    }

    /// Within one cluster the order holds even when the next chunk would fit.
    #[test]
    fn a_clusters_own_admissions_keep_their_order() {
        let gate = Gate::new(2, 1 << 20);
        let a = gate.register();
        assert!(gate.try_admit(a, 2, 2));
        let f = flags(2);
        let mut first = gate.admit(a, 2, 2);
        let mut second = gate.admit(a, 1, 1);
        assert!(poll(&mut first, &f[0]).is_pending());
        assert!(poll(&mut second, &f[1]).is_pending());
        gate.release(a, 1, 1);
        assert_eq!(
            (woken(&f[0]), woken(&f[1])),
            (0, 0),
            "second fits, but first is older"
        );
        gate.release(a, 1, 1);
        assert_eq!((woken(&f[0]), woken(&f[1])), (1, 0));
        assert!(poll(&mut first, &f[0]).is_ready());
        assert!(poll(&mut second, &f[1]).is_pending());
    }

    /// A cluster over its share steps out of the line and lets the one behind it
    /// in; it rejoins when its own chunks drain below its share.
    #[test]
    fn a_cluster_over_its_share_steps_aside() {
        let gate = Gate::new(100, 1 << 20);
        let (noisy, quiet) = (gate.register(), gate.register());
        for _ in 0..10 {
            assert!(gate.try_admit(noisy, 10, 10));
        }
        let f = flags(2);
        let mut n = gate.admit(noisy, 10, 10);
        assert!(poll(&mut n, &f[0]).is_pending());
        let mut q = gate.admit(quiet, 10, 10);
        assert!(poll(&mut q, &f[1]).is_pending());
        gate.release(noisy, 10, 10);
        assert_eq!(
            (woken(&f[0]), woken(&f[1])),
            (0, 1),
            "noisy holds 90, its share is 50"
        );
        assert!(poll(&mut q, &f[1]).is_ready());
        for _ in 0..4 {
            gate.release(noisy, 10, 10);
        }
        assert_eq!(woken(&f[0]), 0, "noisy holds 50: no room in its share");
        gate.release(noisy, 10, 10);
        assert_eq!(woken(&f[0]), 1);
        assert!(poll(&mut n, &f[0]).is_ready());
        assert_eq!(gate.cluster_usage(noisy), (50, 50));
    }

    /// A cluster going idle widens every share: one standing aside rejoins.
    #[test]
    fn a_cluster_going_idle_lets_one_standing_aside_back() {
        let gate = Gate::new(90, 1 << 20);
        let (x, y, z) = (gate.register(), gate.register(), gate.register());
        for id in [x, y, z] {
            assert!(gate.try_admit(id, 30, 30));
        }
        let f = flags(1);
        let mut more = gate.admit(y, 10, 10);
        assert!(poll(&mut more, &f[0]).is_pending());
        gate.release(x, 10, 10);
        assert_eq!(woken(&f[0]), 0, "y holds its third of the queue");
        gate.release(z, 30, 30);
        assert_eq!(woken(&f[0]), 1, "two clusters left: y's share is 45");
        assert!(poll(&mut more, &f[0]).is_ready());
        assert_eq!(gate.usage().active_clusters, 2);
    }

    /// A served admission dropped before it resolved passes its budget on; one
    /// dropped while parked leaves the line as it was.
    #[test]
    fn dropped_admissions_pass_their_place_on() {
        let gate = Gate::new(1, 1 << 20);
        let a = gate.register();
        let ids: Vec<usize> = (0..3).map(|_| gate.register()).collect();
        assert!(gate.try_admit(a, 1, 1));
        let f = flags(3);
        let mut admits: Vec<_> = ids.iter().map(|&id| gate.admit(id, 1, 1)).collect();
        for (admit, flag) in admits.iter_mut().zip(&f) {
            assert!(poll(admit, flag).is_pending());
        }
        let third = admits.pop().unwrap();
        let second = admits.pop().unwrap();
        let first = admits.pop().unwrap();
        drop(second);
        gate.release(a, 1, 1);
        assert_eq!(woken(&f[0]), 1);
        drop(first);
        assert_eq!(woken(&f[2]), 1, "the budget went on to the third");
        let usage = gate.usage();
        assert_eq!((usage.msgs, usage.waiters), (1, 0));
        assert_eq!(gate.cluster_usage(ids[2]), (1, 1));
        drop(third);
        assert_eq!(gate.usage().msgs, 0, "dropped once served: given back");
    }

    impl Gate {
        /// The bookkeeping agrees with itself, and nobody waits without a reason
        /// that a later release will take away.
        fn check(&self) {
            let st = self.lock();
            let used: usize = st.clusters.iter().map(|s| s.used_msgs).sum();
            assert_eq!(used, st.used_msgs);
            assert!(
                st.used_msgs <= self.cap_msgs,
                "chunks here are at most the cap"
            );
            let active = st.clusters.iter().filter(|s| s.is_active()).count();
            assert_eq!(active, st.active);
            let queued: usize = st.clusters.iter().map(|s| s.queue.len()).sum();
            assert_eq!(queued, st.waiting);
            for (c, slot) in st.clusters.iter().enumerate() {
                let in_line: usize = st
                    .line
                    .iter()
                    .filter(|t| t.cluster == c)
                    .map(|t| t.count)
                    .sum();
                assert_eq!(in_line, slot.in_line, "cluster {c}");
                assert_eq!(slot.in_line + slot.held, slot.queue.len(), "cluster {c}");
                match slot.aside_at {
                    Some(at) => {
                        assert_eq!(st.aside[at], c);
                        let head = &st.parked[slot.queue[0]];
                        assert!(slot.used_msgs > 0, "a release will come for {c}");
                        assert!(!self.within_share(&st, c, head.msgs, head.bytes));
                    }
                    None => assert_eq!(slot.held, 0),
                }
            }
            assert!(st.line.iter().all(|t| t.count > 0));
            if let Some(front) = st.line.front() {
                let slot = &st.clusters[front.cluster];
                let head = &st.parked[slot.queue[0]];
                if slot.aside_at.is_none()
                    && self.within_share(&st, front.cluster, head.msgs, head.bytes)
                {
                    assert!(
                        !self.within_budget(&st, head.msgs, head.bytes),
                        "the front fits but was not served"
                    );
                    assert!(st.used_msgs > 0, "a release will come");
                }
            }
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Admit { cluster: usize, msgs: usize },
        Release(usize),
        Poll,
        Drop(usize),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            4 => (0usize..4, 1usize..5).prop_map(|(cluster, msgs)| Op::Admit { cluster, msgs }),
            3 => (0usize..64).prop_map(Op::Release),
            2 => Just(Op::Poll),
            1 => (0usize..64).prop_map(Op::Drop),
        ]
    }

    proptest::proptest! {
        /// Any sequence of admissions, releases, polls and drops: the books
        /// balance, every admission served was woken, and every one left waiting
        /// waits for a release that will come.
        #[test]
        fn any_sequence_keeps_the_books_and_loses_no_wake_up(
            ops in proptest::collection::vec(op(), 1..200),
        ) {
            let gate = Gate::new(10, 1000);
            let ids: Vec<usize> = (0..4).map(|_| gate.register()).collect();
            let mut holding: Vec<(usize, usize)> = Vec::new();
            let mut parked: Vec<(Admit<'_>, Arc<Flag>, usize, usize)> = Vec::new();
            for op in ops {
                match op {
                    Op::Admit { cluster, msgs } => {
                        let flag = Arc::new(Flag(Default::default()));
                        let mut admit = gate.admit(ids[cluster], msgs, msgs);
                        if poll(&mut admit, &flag).is_ready() {
                            holding.push((ids[cluster], msgs));
                        } else {
                            parked.push((admit, flag, ids[cluster], msgs));
                        }
                    }
                    Op::Release(i) if !holding.is_empty() => {
                        let (c, m) = holding.remove(i % holding.len());
                        gate.release(c, m, m);
                    }
                    Op::Poll => {
                        let mut still = Vec::new();
                        for (mut admit, flag, c, m) in parked.drain(..) {
                            let was_woken = woken(&flag) > 0;
                            if poll(&mut admit, &flag).is_ready() {
                                assert!(was_woken, "served without a wake-up");
                                holding.push((c, m));
                            } else {
                                still.push((admit, flag, c, m));
                            }
                        }
                        parked = still;
                    }
                    Op::Drop(i) if !parked.is_empty() => {
                        drop(parked.remove(i % parked.len()));
                    }
                    _ => {}
                }
                gate.check();
            }
            // Drain: release everything; every parked admission gets served.
            while !holding.is_empty() || !parked.is_empty() {
                for (c, m) in holding.drain(..) {
                    gate.release(c, m, m);
                    gate.check();
                }
                let mut still = Vec::new();
                for (mut admit, flag, c, m) in parked.drain(..) {
                    if poll(&mut admit, &flag).is_ready() {
                        holding.push((c, m));
                    } else {
                        still.push((admit, flag, c, m));
                    }
                }
                assert!(!holding.is_empty() || still.is_empty(), "waiters left with nothing held");
                parked = still;
            }
            let usage = gate.usage();
            assert_eq!((usage.msgs, usage.waiters, usage.active_clusters), (0, 0, 0));
        }
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

    /// A reader that parked first is admitted first when only one fits at a
    /// time, however a later reader's arrival interleaves with the release that
    /// makes room (it may not take the room meant for the first).
    #[test]
    fn loom_the_first_parked_is_admitted_first() {
        loom::model(|| {
            let gate = Arc::new(Gate::new(1, 100));
            let (a, b, c) = (gate.register(), gate.register(), gate.register());
            assert!(gate.try_admit(a, 1, 1));
            let order = Arc::new(loom::sync::Mutex::new(Vec::new()));
            let mut first = gate.admit(b, 1, 1);
            {
                let mut cx = Context::from_waker(Waker::noop());
                assert!(Pin::new(&mut first).poll(&mut cx).is_pending());
            }
            let later = {
                let (gate, order) = (gate.clone(), order.clone());
                thread::spawn(move || {
                    loom::future::block_on(gate.admit(c, 1, 1));
                    order.lock().unwrap().push(c);
                    gate.release(c, 1, 1);
                })
            };
            let releaser = {
                let gate = gate.clone();
                thread::spawn(move || gate.release(a, 1, 1))
            };
            loom::future::block_on(first);
            order.lock().unwrap().push(b);
            gate.release(b, 1, 1);
            releaser.join().unwrap();
            later.join().unwrap();
            assert_eq!(*order.lock().unwrap(), vec![b, c]);
            let usage = gate.usage();
            assert_eq!(
                (usage.msgs, usage.waiters, usage.active_clusters),
                (0, 0, 0)
            );
        });
    }
}
