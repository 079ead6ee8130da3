//! lru: a small bounded map that forgets the least recently used entry first.
//!
//! A hash map for the entries and an ordered map from a use counter to the key:
//! O(log n) per access, no unsafe code, and memory bounded by `capacity`.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

/// At most `capacity` entries; inserting one more drops the least recently used.
#[derive(Debug)]
pub struct Lru<K, V> {
    map: HashMap<K, (V, u64)>,
    order: BTreeMap<u64, K>,
    tick: u64,
    capacity: usize,
}

impl<K: Hash + Eq + Clone, V> Lru<K, V> {
    pub fn new(capacity: usize) -> Lru<K, V> {
        Lru {
            map: HashMap::new(),
            order: BTreeMap::new(),
            tick: 0,
            capacity: capacity.max(1),
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The value of `key`, now the most recently used.
    pub fn get(&mut self, key: &K) -> Option<&V> {
        self.tick += 1;
        let tick = self.tick;
        let (_, at) = self.map.get_mut(key)?;
        let old = std::mem::replace(at, tick);
        if let Some(k) = self.order.remove(&old) {
            self.order.insert(tick, k);
        }
        self.map.get(key).map(|(v, _)| v)
    }

    /// Set `key`, returning its previous value; drops the least recently used
    /// entry when a new key would exceed the capacity.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        self.tick += 1;
        let tick = self.tick;
        if let Some((old_value, at)) = self.map.get_mut(&key) {
            let old_tick = std::mem::replace(at, tick);
            self.order.remove(&old_tick);
            self.order.insert(tick, key);
            return Some(std::mem::replace(old_value, value));
        }
        if self.map.len() >= self.capacity {
            if let Some((_, oldest)) = self.order.pop_first() {
                self.map.remove(&oldest);
            }
        }
        self.order.insert(tick, key.clone());
        self.map.insert(key, (value, tick));
        None
    }

    pub fn remove(&mut self, key: &K) -> Option<V> {
        let (v, at) = self.map.remove(key)?;
        self.order.remove(&at);
        Some(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_the_least_recently_used() {
        let mut l = Lru::new(2);
        assert_eq!(l.insert("a", 1), None);
        l.insert("b", 2);
        assert_eq!(l.get(&"a"), Some(&1));
        l.insert("c", 3);
        assert_eq!(l.get(&"b"), None);
        assert_eq!(l.get(&"a"), Some(&1));
        assert_eq!(l.insert("c", 4), Some(3));
        assert_eq!(l.len(), 2);
        l.insert("d", 5);
        assert_eq!(l.get(&"a"), None);
        assert_eq!(l.remove(&"c"), Some(4));
        assert_eq!(l.len(), 1);
        assert_eq!(l.order.len(), 1);
    }
}
