//! order: per-file order behind enrichments, and the type cache, for one
//! cluster. Lives in the cluster's batcher state and runs under its lock, so
//! every decision is taken in the cluster's arrival order.
//!
//! When a metadata change of file F goes to the API, F gets a chain: later
//! events of F (anything with the same file key) wait in it, in order, instead
//! of going into a batch. When the change's events come back they go out, then
//! the waiting events are routed again in order (a waiting metadata change
//! starts the next chain). Other files' events never wait. `pending` is a hash
//! lookup only while some chain exists; the batcher skips the per-event walk
//! altogether when there is none and the chunk has no hints.
//!
//! Bounded: held events and bytes (the chain heads and their waiting events)
//! stay within `enrich.queue_max_events` / `queue_max_bytes`; past that the
//! batcher gives the file's enrichment up (its generic event goes out now).
//! The type cache is an LRU of `enrich.type_cache_entries`, created on first use.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use super::lru::Lru;
use super::{Fallback, Held, Job};
use crate::metrics::EnrichMetrics;

struct Chain {
    id: u64,
    head: Arc<Held>,
    waiting: VecDeque<Held>,
}

/// One cluster's chains and type cache.
pub struct Order {
    chains: HashMap<u64, Chain>,
    types: Option<Lru<u64, bool>>,
    type_capacity: usize,
    held_events: usize,
    held_bytes: usize,
    max_events: usize,
    max_bytes: usize,
    next_id: u64,
    closed: bool,
    metrics: Option<Arc<EnrichMetrics>>,
}

impl Order {
    pub fn new(type_capacity: usize, max_events: usize, max_bytes: usize) -> Order {
        Order {
            chains: HashMap::new(),
            types: None,
            type_capacity,
            held_events: 0,
            held_bytes: 0,
            max_events,
            max_bytes,
            next_id: 0,
            closed: false,
            metrics: None,
        }
    }

    /// Report the held events and bytes to these gauges.
    pub fn set_metrics(&mut self, metrics: Arc<EnrichMetrics>) {
        self.metrics = Some(metrics);
    }

    /// No chain: nothing waits.
    pub fn idle(&self) -> bool {
        self.chains.is_empty()
    }

    /// Events of this file must wait.
    pub fn pending(&self, key: u64) -> bool {
        key != 0 && !self.chains.is_empty() && self.chains.contains_key(&key)
    }

    pub fn held(&self) -> (usize, usize) {
        (self.held_events, self.held_bytes)
    }

    fn account(&mut self, events: isize, bytes: isize) {
        self.held_events = self.held_events.saturating_add_signed(events);
        self.held_bytes = self.held_bytes.saturating_add_signed(bytes);
        if let Some(m) = &self.metrics {
            m.queue_events.add(events as i64);
            m.queue_bytes.add(bytes as i64);
        }
    }

    fn fits(&self, bytes: usize) -> bool {
        self.held_events < self.max_events && self.held_bytes + bytes <= self.max_bytes
    }

    /// Remember the type of an object.
    pub fn learn(&mut self, key: u64, directory: bool) {
        if key == 0 {
            return;
        }
        let cap = self.type_capacity;
        self.types
            .get_or_insert_with(|| Lru::new(cap))
            .insert(key, directory);
    }

    /// The remembered type of an object.
    pub fn directory(&mut self, key: u64) -> Option<bool> {
        if key == 0 {
            return None;
        }
        self.types.as_mut()?.get(&key).copied()
    }

    /// Hold `ev` behind its file's chain; gives it back when over the bound.
    pub fn defer(&mut self, ev: Held) -> Result<(), Held> {
        let key = ev.info.file_key;
        if !self.fits(ev.bytes.len()) {
            return Err(ev);
        }
        let Some(chain) = self.chains.get_mut(&key) else {
            return Err(ev);
        };
        let bytes = ev.bytes.len() as isize;
        chain.waiting.push_back(ev);
        self.account(1, bytes);
        Ok(())
    }

    /// Start a chain for the metadata change `ev` and hand its job to `dispatch`;
    /// gives the event back, with the reason, when that cannot be done.
    pub fn start(
        &mut self,
        ev: Held,
        directory: Option<bool>,
        owner_changed: bool,
        dispatch: impl FnOnce(Job) -> bool,
    ) -> Result<(), (Held, Fallback)> {
        if self.closed {
            return Err((ev, Fallback::Shutdown));
        }
        let key = ev.info.file_key;
        if key == 0 || self.chains.contains_key(&key) || !self.fits(ev.bytes.len()) {
            return Err((ev, Fallback::QueueFull));
        }
        self.next_id += 1;
        let id = self.next_id;
        let bytes = ev.bytes.len() as isize;
        let head = Arc::new(ev);
        let job = Job {
            key,
            id,
            directory,
            owner_changed,
            event: head.clone(),
        };
        if !dispatch(job) {
            let ev = Arc::try_unwrap(head).unwrap_or_else(|a| (*a).clone());
            return Err((ev, Fallback::QueueFull));
        }
        self.chains.insert(
            key,
            Chain {
                id,
                head,
                waiting: VecDeque::new(),
            },
        );
        self.account(1, bytes);
        Ok(())
    }

    /// The job `id` of file `key` came back: end its chain and return the events
    /// that waited, in order. `None` when the chain was given up meanwhile.
    pub fn finish(&mut self, key: u64, id: u64) -> Option<(Arc<Held>, VecDeque<Held>)> {
        if self.chains.get(&key).is_none_or(|c| c.id != id) {
            return None;
        }
        let chain = self.chains.remove(&key)?;
        self.release(&chain);
        Some((chain.head, chain.waiting))
    }

    /// Give up the chain of `key`: its head (for its generic event) and the
    /// events that waited.
    pub fn abandon(&mut self, key: u64) -> Option<(Arc<Held>, VecDeque<Held>)> {
        let chain = self.chains.remove(&key)?;
        self.release(&chain);
        Some((chain.head, chain.waiting))
    }

    /// Refuse new chains (shutdown) and give up every chain.
    pub fn close(&mut self) -> Vec<(Arc<Held>, VecDeque<Held>)> {
        self.closed = true;
        let keys: Vec<u64> = self.chains.keys().copied().collect();
        keys.into_iter().filter_map(|k| self.abandon(k)).collect()
    }

    fn release(&mut self, chain: &Chain) {
        let n = 1 + chain.waiting.len();
        let bytes =
            chain.head.bytes.len() + chain.waiting.iter().map(|h| h.bytes.len()).sum::<usize>();
        self.account(-(n as isize), -(bytes as isize));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::EventInfo;

    fn ev(key: u64, len: usize) -> Held {
        Held {
            bytes: vec![b'x'; len],
            received_us: 0,
            info: EventInfo {
                file_key: key,
                ..EventInfo::default()
            },
            op: None,
        }
    }

    #[test]
    fn chains_hold_and_release_in_order_within_bounds() {
        let mut o = Order::new(10, 4, 1000);
        assert!(o.idle() && !o.pending(7));
        let mut jobs = Vec::new();
        o.start(ev(7, 10), None, false, |j| {
            jobs.push(j);
            true
        })
        .unwrap();
        assert!(o.pending(7) && !o.pending(8) && !o.pending(0));
        o.defer(ev(7, 20)).unwrap();
        o.defer(ev(7, 30)).unwrap();
        assert_eq!(o.held(), (3, 60));
        // A second chain for the same file is not started.
        assert!(matches!(
            o.start(ev(7, 1), None, false, |_| true),
            Err((_, Fallback::QueueFull))
        ));
        o.defer(ev(7, 1)).unwrap();
        // the event bound
        assert!(o.defer(ev(7, 1)).is_err());
        // a stale id finishes nothing
        assert!(o.finish(7, jobs[0].id + 1).is_none());
        let (head, waiting) = o.finish(7, jobs[0].id).unwrap();
        assert_eq!(head.bytes.len(), 10);
        let lens: Vec<usize> = waiting.iter().map(|h| h.bytes.len()).collect();
        assert_eq!(lens, [20, 30, 1]);
        assert_eq!(o.held(), (0, 0));
        assert!(o.idle());
        // a full queue refuses the job, and the event comes back
        let r = o.start(ev(9, 5), None, false, |_| false);
        assert!(matches!(r, Err((h, Fallback::QueueFull)) if h.bytes.len() == 5));
        assert!(o.idle());
        // the byte bound
        assert!(matches!(
            o.start(ev(9, 1001), None, false, |_| true),
            Err((_, Fallback::QueueFull))
        ));
        o.start(ev(9, 5), None, false, |_| true).unwrap();
        let all = o.close();
        assert_eq!(all.len(), 1);
        assert!(matches!(
            o.start(ev(10, 5), None, false, |_| true),
            Err((_, Fallback::Shutdown))
        ));
        assert_eq!(o.held(), (0, 0));
    }

    #[test]
    fn type_cache() {
        let mut o = Order::new(2, 4, 1000);
        assert_eq!(o.directory(1), None);
        o.learn(1, true);
        o.learn(2, false);
        o.learn(0, true);
        assert_eq!(o.directory(1), Some(true));
        assert_eq!(o.directory(2), Some(false));
        assert_eq!(o.directory(0), None);
        o.learn(3, true);
        assert_eq!(o.directory(1), None, "least recently used goes first");
    }
}
