//! An exact-match cache of classifier decisions, one per datapath thread.
//!
//! The classifier probes one hash table per distinct mask; a flow table with many
//! masks costs many probes per frame. Frames of one connection all carry the same
//! key, so the datapath first asks this cache — one probe, keyed by the whole key
//! and a tag (bridge and table) — and goes to the classifier only on a miss.
//!
//! Why it looks like this:
//! - **Fixed size, no allocation.** A power-of-two array of slots, 2-way set
//!   associative; a new entry replaces the older of its two slots. Nothing grows.
//! - **Invalidated by generation.** Every entry carries the generation it was made
//!   in; [`FlowCache::invalidate`] (called on any change to the flow tables) bumps
//!   the generation, which makes every entry stale at once without touching them.
//! - **Keyed hashing.** The hasher is randomly keyed (ahash), so hostile traffic
//!   cannot aim many keys at one slot.
//! - It caches only what the classifier decides (which rule, or none), so it can
//!   never disagree with it while the generation is current: the flow tables are
//!   immutable between invalidations.

use std::hash::{BuildHasher, Hash, Hasher};

use ahash::RandomState;

use crate::flow::FlowKey;

#[derive(Clone, Copy, Default)]
struct Slot {
    key: FlowKey,
    tag: u32,
    /// 0: empty.
    gen: u32,
    value: u32,
}

pub struct FlowCache {
    slots: Box<[Slot]>,
    gen: u32,
    hasher: RandomState,
    /// Which slot of each pair to replace next.
    victim: Box<[u8]>,
}

impl FlowCache {
    /// A cache of at least `entries` slots (rounded up to a power of two, at least 2).
    pub fn new(entries: usize) -> FlowCache {
        let n = entries.next_power_of_two().max(2);
        FlowCache {
            // Zeroed memory, not n writes: pages stay untouched (no RSS) until used.
            // SAFETY: a Slot is plain integers, for which all-zero bytes are valid
            // (and are exactly Slot::default(): empty).
            slots: unsafe { Box::<[Slot]>::new_zeroed_slice(n).assume_init() },
            gen: 1,
            hasher: RandomState::new(),
            victim: vec![0; n / 2].into_boxed_slice(),
        }
    }

    /// Forgets every entry (in O(1)).
    pub fn invalidate(&mut self) {
        self.gen = self.gen.wrapping_add(1);
        if self.gen == 0 {
            // After 2^32 generations, old entries could look current again: clear.
            self.slots.fill(Slot::default());
            self.gen = 1;
        }
    }

    /// The hash of (`tag`, `key`), computed once per frame for [`get`](Self::get)
    /// and [`put`](Self::put).
    #[inline]
    pub fn hash(&self, tag: u32, key: &FlowKey) -> u64 {
        let mut h = self.hasher.build_hasher();
        h.write_u32(tag);
        key.hash(&mut h);
        h.finish()
    }

    #[inline]
    fn pair(&self, hash: u64) -> usize {
        (hash as usize) & (self.slots.len() - 1) & !1
    }

    /// The value cached for (`tag`, `key`) in the current generation.
    #[inline]
    pub fn get(&self, hash: u64, tag: u32, key: &FlowKey) -> Option<u32> {
        let i = self.pair(hash);
        self.slots[i..i + 2]
            .iter()
            .find(|s| s.gen == self.gen && s.tag == tag && s.key == *key)
            .map(|s| s.value)
    }

    /// Caches `value` for (`tag`, `key`).
    #[inline]
    pub fn put(&mut self, hash: u64, tag: u32, key: &FlowKey, value: u32) {
        let i = self.pair(hash);
        let gen = self.gen;
        let free = (0..2).find(|&j| self.slots[i + j].gen != gen);
        let j = free.unwrap_or_else(|| {
            let v = &mut self.victim[i / 2];
            *v ^= 1;
            usize::from(*v)
        });
        self.slots[i + j] = Slot {
            key: *key,
            tag,
            gen,
            value,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::{NW_DST, TP_SRC};

    fn key(i: u64) -> FlowKey {
        let mut k = FlowKey::default();
        k.set(NW_DST, i);
        k.set(TP_SRC, i >> 32);
        k
    }

    #[test]
    fn hits_misses_and_invalidation() {
        let mut c = FlowCache::new(64);
        let (k1, k2) = (key(1), key(2));
        let h1 = c.hash(0, &k1);
        assert_eq!(c.get(h1, 0, &k1), None);
        c.put(h1, 0, &k1, 7);
        assert_eq!(c.get(h1, 0, &k1), Some(7));
        // Same key, other tag (another table or bridge): a different entry.
        let h1t = c.hash(1, &k1);
        assert_eq!(c.get(h1t, 1, &k1), None);
        let h2 = c.hash(0, &k2);
        assert_eq!(c.get(h2, 0, &k2), None);
        c.invalidate();
        assert_eq!(c.get(h1, 0, &k1), None, "stale after invalidate");
        c.put(h1, 0, &k1, 8);
        assert_eq!(c.get(h1, 0, &k1), Some(8));
    }

    #[test]
    fn never_returns_a_wrong_value() {
        // Far more keys than slots: entries get evicted, but whatever is returned is
        // what was put for exactly that key.
        let mut c = FlowCache::new(16);
        for round in 0..3u64 {
            for i in 0..1000u64 {
                let k = key(i * 7919 + round);
                let h = c.hash(3, &k);
                if let Some(v) = c.get(h, 3, &k) {
                    assert_eq!(u64::from(v), i % 1000);
                }
                c.put(h, 3, &k, (i % 1000) as u32);
                assert_eq!(c.get(h, 3, &k), Some((i % 1000) as u32));
            }
        }
    }
}
