//! The MAC learning table of one bridge.
//!
//! What: a map from `(VLAN, MAC)` to the port the address was last seen on, as in
//! Open vSwitch's `lib/mac-learning.c`.
//!
//! Why this shape:
//! - **Bounded.** A hostile or broken host can emit millions of source MACs; the
//!   table holds at most `max_entries` (Open vSwitch's `other_config:mac-table-size`,
//!   default 8192) and evicts the least recently seen entry to make room, so memory
//!   and lookup cost stay flat under a MAC flood.
//! - **LRU in O(1).** Entries live in a slab threaded on a doubly linked list ordered
//!   by last sighting. A refresh moves an entry to the front, eviction and aging pop
//!   from the back. No operation scans the table.
//! - **Keyed hashing.** The index hashes with `ahash`, randomly keyed per table, so
//!   an attacker cannot choose MACs that collide — and at a fraction of SipHash's cost.
//! - **Time is an argument.** Every call takes `now` in milliseconds from an arbitrary
//!   epoch; the table never reads a clock, so aging is unit-testable.
//!
//! Invariants: `index` and the list hold exactly the same slots; the list is ordered
//! by non-increasing `last_seen` from head to tail; `len() <= max_entries`.
//!
//! The table also keeps a `generation` counter that changes whenever a forwarding
//! decision could change (an entry added, moved or removed); a flow cache in front of
//! NORMAL can compare generations instead of scanning.

use std::collections::HashMap;

use ahash::RandomState;

use crate::{MacAddr, PortNo};

/// Open vSwitch's default `mac-table-size`.
pub const DEFAULT_MAX_ENTRIES: usize = 8192;
/// Open vSwitch's default `mac-aging-time`, in seconds.
pub const DEFAULT_AGING_SECS: u64 = 300;

const NIL: u32 = u32::MAX;

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
struct Key {
    vlan: u16,
    mac: MacAddr,
}

#[derive(Clone, Debug)]
struct Slot {
    key: Key,
    port: PortNo,
    last_seen: u64,
    prev: u32,
    next: u32,
}

/// What [`MacTable::learn`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learned {
    /// A new entry; `evicted` is true when the oldest entry made room for it.
    New { evicted: bool },
    /// The address moved from another port.
    Moved { from: PortNo },
    /// Already known on this port; its age was reset.
    Refreshed,
}

/// A row of `fdb-show`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MacEntry {
    pub port: PortNo,
    pub vlan: u16,
    pub mac: MacAddr,
    /// Seconds since the address was last seen.
    pub age_secs: u64,
}

#[derive(Debug, Clone)]
pub struct MacTable {
    index: HashMap<Key, u32, RandomState>,
    slots: Vec<Slot>,
    free: Vec<u32>,
    head: u32,
    tail: u32,
    max_entries: usize,
    aging_ms: u64,
    generation: u64,
}

impl Default for MacTable {
    fn default() -> Self {
        MacTable::new(DEFAULT_MAX_ENTRIES, DEFAULT_AGING_SECS)
    }
}

impl MacTable {
    /// A table holding at most `max_entries` (at least 1) addresses, each forgotten
    /// `aging_secs` (at least 1) after it was last seen.
    pub fn new(max_entries: usize, aging_secs: u64) -> MacTable {
        let max_entries = max_entries.max(1);
        MacTable {
            index: HashMap::with_capacity_and_hasher(
                max_entries.min(DEFAULT_MAX_ENTRIES),
                RandomState::new(),
            ),
            slots: Vec::new(),
            free: Vec::new(),
            head: NIL,
            tail: NIL,
            max_entries,
            aging_ms: aging_secs.max(1) * 1000,
            generation: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    pub fn max_entries(&self) -> usize {
        self.max_entries
    }

    pub fn aging_secs(&self) -> u64 {
        self.aging_ms / 1000
    }

    /// Changes with every entry added, moved or removed.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Shrinks or grows the bound; shrinking evicts the least recently seen entries.
    pub fn set_max_entries(&mut self, max_entries: usize) {
        self.max_entries = max_entries.max(1);
        while self.len() > self.max_entries {
            self.remove_slot(self.tail);
        }
    }

    pub fn set_aging_secs(&mut self, secs: u64) {
        self.aging_ms = secs.max(1) * 1000;
    }

    /// Records that `mac` in `vlan` was seen on `port` at `now` (ms).
    ///
    /// The caller must not call this for a multicast source; NORMAL refuses such
    /// frames before learning.
    pub fn learn(&mut self, vlan: u16, mac: MacAddr, port: PortNo, now: u64) -> Learned {
        let key = Key { vlan, mac };
        if let Some(&slot) = self.index.get(&key) {
            let s = &mut self.slots[slot as usize];
            s.last_seen = now;
            let old = s.port;
            let result = if old == port {
                Learned::Refreshed
            } else {
                s.port = port;
                self.generation += 1;
                Learned::Moved { from: old }
            };
            self.move_to_front(slot);
            return result;
        }
        let evicted = if self.len() >= self.max_entries {
            self.remove_slot(self.tail);
            true
        } else {
            false
        };
        let entry = Slot {
            key,
            port,
            last_seen: now,
            prev: NIL,
            next: self.head,
        };
        let slot = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = entry;
                i
            }
            None => {
                self.slots.push(entry);
                (self.slots.len() - 1) as u32
            }
        };
        if self.head != NIL {
            self.slots[self.head as usize].prev = slot;
        }
        self.head = slot;
        if self.tail == NIL {
            self.tail = slot;
        }
        self.index.insert(key, slot);
        self.generation += 1;
        Learned::New { evicted }
    }

    /// The port `mac` in `vlan` was last seen on, unless that was longer ago than the
    /// aging time (an aged entry is treated as absent even before [`expire`] runs).
    ///
    /// [`expire`]: MacTable::expire
    #[inline]
    pub fn lookup(&self, vlan: u16, mac: MacAddr, now: u64) -> Option<PortNo> {
        let slot = *self.index.get(&Key { vlan, mac })?;
        let s = &self.slots[slot as usize];
        (now.saturating_sub(s.last_seen) < self.aging_ms).then_some(s.port)
    }

    /// Removes every entry not seen within the aging time; returns how many.
    pub fn expire(&mut self, now: u64) -> usize {
        let mut n = 0;
        while self.tail != NIL {
            let s = &self.slots[self.tail as usize];
            if now.saturating_sub(s.last_seen) < self.aging_ms {
                break;
            }
            self.remove_slot(self.tail);
            n += 1;
        }
        n
    }

    /// Forgets every address learned on `port` (the port was deleted or reconfigured).
    pub fn flush_port(&mut self, port: PortNo) -> usize {
        self.retain_ports(|p| p != port)
    }

    /// Keeps only entries whose port satisfies `keep`; returns how many were removed.
    pub fn retain_ports(&mut self, mut keep: impl FnMut(PortNo) -> bool) -> usize {
        let victims: Vec<u32> = self
            .index
            .values()
            .copied()
            .filter(|&i| !keep(self.slots[i as usize].port))
            .collect();
        for &v in &victims {
            self.remove_slot(v);
        }
        victims.len()
    }

    /// Forgets everything.
    pub fn flush(&mut self) {
        if !self.is_empty() {
            self.generation += 1;
        }
        self.index.clear();
        self.slots.clear();
        self.free.clear();
        self.head = NIL;
        self.tail = NIL;
    }

    /// Entries from most to least recently seen, with their ages at `now`.
    pub fn entries(&self, now: u64) -> Vec<MacEntry> {
        let mut out = Vec::with_capacity(self.len());
        let mut i = self.head;
        while i != NIL {
            let s = &self.slots[i as usize];
            out.push(MacEntry {
                port: s.port,
                vlan: s.key.vlan,
                mac: s.key.mac,
                age_secs: now.saturating_sub(s.last_seen) / 1000,
            });
            i = s.next;
        }
        out
    }

    fn unlink(&mut self, slot: u32) {
        let (prev, next) = {
            let s = &self.slots[slot as usize];
            (s.prev, s.next)
        };
        if prev != NIL {
            self.slots[prev as usize].next = next;
        } else {
            self.head = next;
        }
        if next != NIL {
            self.slots[next as usize].prev = prev;
        } else {
            self.tail = prev;
        }
    }

    fn move_to_front(&mut self, slot: u32) {
        if self.head == slot {
            return;
        }
        self.unlink(slot);
        let old_head = self.head;
        {
            let s = &mut self.slots[slot as usize];
            s.prev = NIL;
            s.next = old_head;
        }
        if old_head != NIL {
            self.slots[old_head as usize].prev = slot;
        }
        self.head = slot;
        if self.tail == NIL {
            self.tail = slot;
        }
    }

    fn remove_slot(&mut self, slot: u32) {
        if slot == NIL {
            return;
        }
        self.unlink(slot);
        let key = self.slots[slot as usize].key;
        self.index.remove(&key);
        self.free.push(slot);
        self.generation += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(n: u32) -> MacAddr {
        let b = n.to_be_bytes();
        MacAddr([0x02, 0, b[0], b[1], b[2], b[3]])
    }

    /// Checks the structural invariants against the index.
    fn check(t: &MacTable) {
        let mut n = 0;
        let mut i = t.head;
        let mut prev = NIL;
        let mut last_seen = u64::MAX;
        while i != NIL {
            let s = &t.slots[i as usize];
            assert_eq!(s.prev, prev);
            assert!(s.last_seen <= last_seen, "list not ordered by recency");
            last_seen = s.last_seen;
            assert_eq!(t.index.get(&s.key), Some(&i));
            prev = i;
            i = s.next;
            n += 1;
        }
        assert_eq!(t.tail, prev);
        assert_eq!(n, t.index.len());
        assert!(t.len() <= t.max_entries());
    }

    #[test]
    fn learns_and_looks_up_per_vlan() {
        let mut t = MacTable::default();
        assert_eq!(t.learn(0, mac(1), 1, 0), Learned::New { evicted: false });
        assert_eq!(t.learn(10, mac(1), 2, 0), Learned::New { evicted: false });
        assert_eq!(t.lookup(0, mac(1), 1), Some(1));
        assert_eq!(t.lookup(10, mac(1), 1), Some(2));
        assert_eq!(t.lookup(20, mac(1), 1), None);
        assert_eq!(t.learn(0, mac(1), 1, 5), Learned::Refreshed);
        check(&t);
    }

    #[test]
    fn mac_move_updates_the_entry() {
        let mut t = MacTable::default();
        t.learn(0, mac(7), 1, 0);
        let g = t.generation();
        assert_eq!(t.learn(0, mac(7), 3, 10), Learned::Moved { from: 1 });
        assert_eq!(t.lookup(0, mac(7), 10), Some(3));
        assert_eq!(t.len(), 1);
        assert!(
            t.generation() > g,
            "a move must invalidate cached decisions"
        );
        check(&t);
    }

    #[test]
    fn aging_forgets_idle_entries() {
        let mut t = MacTable::new(100, 300);
        t.learn(0, mac(1), 1, 0);
        t.learn(0, mac(2), 2, 100_000);
        assert_eq!(t.lookup(0, mac(1), 299_999), Some(1));
        // An aged entry is already invisible to lookups before expire() removes it.
        assert_eq!(t.lookup(0, mac(1), 300_000), None);
        assert_eq!(t.expire(300_000), 1);
        assert_eq!(t.len(), 1);
        // Refreshing keeps an entry alive.
        t.learn(0, mac(2), 2, 350_000);
        assert_eq!(t.expire(410_000), 0);
        assert_eq!(t.lookup(0, mac(2), 410_000), Some(2));
        assert_eq!(t.expire(650_000), 1);
        assert!(t.is_empty());
        check(&t);
    }

    #[test]
    fn table_size_is_bounded_and_evicts_least_recent() {
        let mut t = MacTable::new(4, 300);
        for i in 0..4 {
            t.learn(0, mac(i), i, i as u64);
        }
        // Touch mac(0) so mac(1) becomes the least recently seen.
        t.learn(0, mac(0), 0, 10);
        assert_eq!(t.learn(0, mac(99), 9, 11), Learned::New { evicted: true });
        assert_eq!(t.len(), 4);
        assert_eq!(t.lookup(0, mac(1), 11), None);
        assert_eq!(t.lookup(0, mac(0), 11), Some(0));
        assert_eq!(t.lookup(0, mac(99), 11), Some(9));
        check(&t);
        // A flood of new addresses never grows the table.
        for i in 1000..21000 {
            t.learn(0, mac(i), 1, 20);
        }
        assert_eq!(t.len(), 4);
        check(&t);
        t.set_max_entries(2);
        assert_eq!(t.len(), 2);
        check(&t);
    }

    #[test]
    fn flush_port_removes_only_that_port() {
        let mut t = MacTable::default();
        for i in 0..10 {
            t.learn(0, mac(i), i % 2, 0);
        }
        assert_eq!(t.flush_port(1), 5);
        assert!(t.entries(0).iter().all(|e| e.port == 0));
        check(&t);
        t.flush();
        assert!(t.is_empty());
        check(&t);
    }

    #[test]
    fn entries_report_age() {
        let mut t = MacTable::default();
        t.learn(0, mac(1), 1, 1_000);
        t.learn(5, mac(2), 2, 4_000);
        let e = t.entries(10_000);
        assert_eq!(e.len(), 2);
        assert_eq!((e[0].vlan, e[0].port, e[0].age_secs), (5, 2, 6));
        assert_eq!((e[1].vlan, e[1].port, e[1].age_secs), (0, 1, 9));
    }

    /// Random operations against a naive model.
    #[test]
    fn matches_a_naive_model() {
        let mut t = MacTable::new(16, 1);
        let mut model: Vec<(u16, MacAddr, PortNo, u64)> = Vec::new();
        let mut x: u64 = 0x2545f4914f6cdd1d;
        let mut now = 0u64;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            now += 1 + x % 50;
            let m = mac((x >> 8) as u32 % 40);
            let vlan = ((x >> 20) % 2) as u16;
            let port = ((x >> 30) % 4) as u32;
            match x % 5 {
                0 => {
                    t.expire(now);
                    model.retain(|e| now - e.3 < 1000);
                }
                _ => {
                    t.learn(vlan, m, port, now);
                    if let Some(e) = model.iter_mut().find(|e| e.0 == vlan && e.1 == m) {
                        e.2 = port;
                        e.3 = now;
                    } else {
                        if model.len() == 16 {
                            let (i, _) = model.iter().enumerate().min_by_key(|(_, e)| e.3).unwrap();
                            model.remove(i);
                        }
                        model.push((vlan, m, port, now));
                    }
                }
            }
            assert_eq!(t.len(), model.len());
            for e in &model {
                let want = (now - e.3 < 1000).then_some(e.2);
                assert_eq!(t.lookup(e.0, e.1, now), want);
            }
        }
        check(&t);
    }
}
