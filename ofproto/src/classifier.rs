//! The classifier: priority-ordered wildcard rules, looked up by tuple-space search.
//!
//! # What
//! A set of rules, each a [`Match`] (a value and a mask over a [`FlowKey`]) with a
//! priority. [`Classifier::lookup`] returns the highest-priority rule whose match
//! covers a key. Among rules of equal priority that both match, the one inserted
//! first wins — deterministic, unlike OpenFlow, which leaves that case undefined.
//!
//! # How (tuple-space search)
//! Rules are grouped by mask into subtables. Within one subtable every rule masks
//! the key the same way, so "which rules match" is one hash lookup of the masked key.
//! A lookup visits subtables in order of the highest priority they hold and stops
//! as soon as the next subtable cannot beat the best match found: with many rules
//! but few distinct masks — the normal shape of flow tables — a lookup costs a few
//! hash probes instead of a scan.
//!
//! # Invariants
//! - every rule is in exactly one subtable, the one of its mask, in the bucket of
//!   its masked value, buckets sorted by (priority desc, insertion order asc);
//! - `subtables` is sorted by `max_priority` descending, and each subtable's
//!   `max_priority` is the highest priority among its rules;
//! - empty subtables are removed.
//!
//! `tests::matches_linear_scan` checks lookups against a trivial linear scan on
//! random rule sets (as Open vSwitch's test-classifier does).

use std::hash::BuildHasher;

use ahash::RandomState;
use hashbrown::HashTable;

use crate::flow::FlowKey;

/// A value and a mask: a key `k` matches when `k & mask == value`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Match {
    pub value: FlowKey,
    pub mask: FlowKey,
}

impl Match {
    /// Builds a match, normalising `value` so bits outside `mask` are zero.
    pub fn new(value: FlowKey, mask: FlowKey) -> Match {
        Match {
            value: value.and(&mask),
            mask,
        }
    }

    /// Matches every key.
    pub fn any() -> Match {
        Match::new(FlowKey::default(), FlowKey::default())
    }

    #[inline]
    pub fn matches(&self, key: &FlowKey) -> bool {
        key.and(&self.mask) == self.value
    }
}

/// Identifies a rule inside one classifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleId(u32);

impl RuleId {
    /// As a plain number (what the flow cache stores), and back.
    pub fn index(self) -> u32 {
        self.0
    }

    pub fn from_index(i: u32) -> RuleId {
        RuleId(i)
    }
}

#[derive(Debug, Clone)]
pub struct Rule<T> {
    pub m: Match,
    pub priority: u16,
    pub data: T,
    /// Insertion order, for ties between equal priorities.
    seq: u64,
}

#[derive(Debug, Clone)]
struct Subtable {
    mask: FlowKey,
    max_priority: u16,
    /// The words `mask` touches (others are zero in every masked key): only these
    /// are hashed and compared.
    words: Vec<u8>,
    hasher: RandomState,
    buckets: HashTable<Bucket>,
    len: usize,
}

/// The rules of one subtable whose masked key is `value`.
#[derive(Debug, Clone)]
struct Bucket {
    value: FlowKey,
    rules: Vec<RuleId>,
}

/// Hash of `key` under `mask`, from the words the mask touches.
#[inline]
fn masked_hash(hasher: &RandomState, words: &[u8], mask: &FlowKey, key: &FlowKey) -> u64 {
    let mut h = hasher.build_hasher();
    for &w in words {
        let w = usize::from(w);
        std::hash::Hasher::write_u64(&mut h, key.0[w] & mask.0[w]);
    }
    std::hash::Hasher::finish(&h)
}

/// Whether `key` under `mask` equals the (masked) `value`, on the words the mask touches.
#[inline]
fn masked_eq(words: &[u8], mask: &FlowKey, value: &FlowKey, key: &FlowKey) -> bool {
    words.iter().all(|&w| {
        let w = usize::from(w);
        value.0[w] == key.0[w] & mask.0[w]
    })
}

impl Subtable {
    /// The bucket `key` falls in, if any.
    #[inline]
    fn find(&self, key: &FlowKey) -> Option<&Bucket> {
        let h = masked_hash(&self.hasher, &self.words, &self.mask, key);
        self.buckets
            .find(h, |b| masked_eq(&self.words, &self.mask, &b.value, key))
    }

    /// The bucket of masked value `value`, created empty if needed.
    fn bucket_mut(&mut self, value: &FlowKey) -> &mut Vec<RuleId> {
        let Subtable {
            words,
            hasher,
            buckets,
            mask,
            ..
        } = self;
        let h = masked_hash(hasher, words, mask, value);
        &mut buckets
            .entry(
                h,
                |b| masked_eq(words, mask, &b.value, value),
                |b| masked_hash(hasher, words, mask, &b.value),
            )
            .or_insert_with(|| Bucket {
                value: *value,
                rules: Vec::new(),
            })
            .into_mut()
            .rules
    }

    fn remove_from_bucket(&mut self, value: &FlowKey, id: RuleId) {
        let h = masked_hash(&self.hasher, &self.words, &self.mask, value);
        let (words, mask) = (&self.words, &self.mask);
        if let Ok(mut e) = self
            .buckets
            .find_entry(h, |b| masked_eq(words, mask, &b.value, value))
        {
            e.get_mut().rules.retain(|&r| r != id);
            if e.get().rules.is_empty() {
                e.remove();
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct Classifier<T> {
    subtables: Vec<Subtable>,
    rules: Vec<Option<Rule<T>>>,
    free: Vec<u32>,
    next_seq: u64,
    len: usize,
}

impl<T> Default for Classifier<T> {
    fn default() -> Self {
        Classifier {
            subtables: Vec::new(),
            rules: Vec::new(),
            free: Vec::new(),
            next_seq: 0,
            len: 0,
        }
    }
}

impl<T> Classifier<T> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How many distinct masks the rules use (what a lookup's cost depends on).
    pub fn n_subtables(&self) -> usize {
        self.subtables.len()
    }

    pub fn get(&self, id: RuleId) -> Option<&Rule<T>> {
        self.rules.get(id.0 as usize)?.as_ref()
    }

    pub fn get_mut(&mut self, id: RuleId) -> Option<&mut Rule<T>> {
        self.rules.get_mut(id.0 as usize)?.as_mut()
    }

    /// Every rule, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (RuleId, &Rule<T>)> {
        self.rules
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.as_ref().map(|r| (RuleId(i as u32), r)))
    }

    fn key_order(&self, id: RuleId) -> (std::cmp::Reverse<u16>, u64) {
        let r = self.get(id).expect("rule in a bucket exists");
        (std::cmp::Reverse(r.priority), r.seq)
    }

    pub fn insert(&mut self, m: Match, priority: u16, data: T) -> RuleId {
        let m = Match::new(m.value, m.mask);
        let rule = Rule {
            m,
            priority,
            data,
            seq: self.next_seq,
        };
        self.next_seq += 1;
        let id = match self.free.pop() {
            Some(i) => {
                self.rules[i as usize] = Some(rule);
                RuleId(i)
            }
            None => {
                self.rules.push(Some(rule));
                RuleId((self.rules.len() - 1) as u32)
            }
        };
        let si = match self.subtables.iter().position(|s| s.mask == m.mask) {
            Some(i) => i,
            None => {
                self.subtables.push(Subtable {
                    mask: m.mask,
                    max_priority: priority,
                    words: (0..m.mask.0.len() as u8)
                        .filter(|&w| m.mask.0[usize::from(w)] != 0)
                        .collect(),
                    hasher: RandomState::new(),
                    buckets: HashTable::new(),
                    len: 0,
                });
                self.subtables.len() - 1
            }
        };
        let order = self.key_order(id);
        let bucket = self.subtables[si].bucket_mut(&m.value);
        let pos = bucket.partition_point(|&other| {
            let r = self.rules[other.0 as usize].as_ref().unwrap();
            (std::cmp::Reverse(r.priority), r.seq) < order
        });
        bucket.insert(pos, id);
        let st = &mut self.subtables[si];
        st.len += 1;
        st.max_priority = st.max_priority.max(priority);
        self.len += 1;
        self.sort_subtables();
        id
    }

    /// Removes a rule and returns it.
    pub fn remove(&mut self, id: RuleId) -> Option<Rule<T>> {
        let rule = self.rules.get_mut(id.0 as usize)?.take()?;
        self.free.push(id.0);
        self.len -= 1;
        if let Some(si) = self.subtables.iter().position(|s| s.mask == rule.m.mask) {
            let st = &mut self.subtables[si];
            st.remove_from_bucket(&rule.m.value, id);
            st.len -= 1;
            if st.len == 0 {
                self.subtables.remove(si);
            } else if rule.priority == st.max_priority {
                let rules = &self.rules;
                let st = &mut self.subtables[si];
                st.max_priority = st
                    .buckets
                    .iter()
                    .filter_map(|b| b.rules.first())
                    .map(|&r| rules[r.0 as usize].as_ref().unwrap().priority)
                    .max()
                    .unwrap_or(0);
                self.sort_subtables();
            }
        }
        Some(rule)
    }

    fn sort_subtables(&mut self) {
        self.subtables
            .sort_by_key(|s| std::cmp::Reverse(s.max_priority));
    }

    /// The rule that decides `key`: highest priority, then earliest inserted.
    pub fn lookup(&self, key: &FlowKey) -> Option<(RuleId, &Rule<T>)> {
        let mut best: Option<(RuleId, &Rule<T>)> = None;
        for st in &self.subtables {
            if let Some((_, b)) = best {
                // Subtables are sorted by their best priority: none later can win.
                if st.max_priority < b.priority {
                    break;
                }
            }
            let Some(bucket) = st.find(key) else {
                continue;
            };
            let id = bucket.rules[0];
            let r = self.rules[id.0 as usize].as_ref().unwrap();
            let better = match best {
                None => true,
                Some((_, b)) => {
                    (r.priority, std::cmp::Reverse(r.seq)) > (b.priority, std::cmp::Reverse(b.seq))
                }
            };
            if better {
                best = Some((id, r));
            }
        }
        best
    }

    /// The reference semantics: a scan of every rule. For tests and benchmarks.
    pub fn lookup_linear(&self, key: &FlowKey) -> Option<(RuleId, &Rule<T>)> {
        self.iter()
            .filter(|(_, r)| r.m.matches(key))
            .max_by(|(_, a), (_, b)| {
                (a.priority, std::cmp::Reverse(a.seq)).cmp(&(b.priority, std::cmp::Reverse(b.seq)))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::{DL_TYPE, IN_PORT, NW_DST, NW_PROTO, TP_DST};
    use proptest::prelude::*;

    fn key(fields: &[(crate::flow::Field, u64)]) -> FlowKey {
        let mut k = FlowKey::default();
        for (f, v) in fields {
            k.set(*f, *v);
        }
        k
    }

    #[test]
    fn priority_then_insertion_order() {
        let mut c = Classifier::new();
        let all = c.insert(Match::any(), 0, "normal");
        let ssh = c.insert(
            Match::new(
                key(&[(DL_TYPE, 0x800), (NW_PROTO, 6), (TP_DST, 22)]),
                key(&[(DL_TYPE, 0xffff), (NW_PROTO, 0xff), (TP_DST, 0xffff)]),
            ),
            200,
            "drop ssh",
        );
        let net = c.insert(
            Match::new(key(&[(NW_DST, 0x0a000000)]), key(&[(NW_DST, 0xffffff00)])),
            100,
            "to 10/24",
        );
        let k_ssh = key(&[
            (DL_TYPE, 0x800),
            (NW_PROTO, 6),
            (TP_DST, 22),
            (NW_DST, 0x0a000005),
        ]);
        let k_web = key(&[
            (DL_TYPE, 0x800),
            (NW_PROTO, 6),
            (TP_DST, 80),
            (NW_DST, 0x0a000005),
        ]);
        let k_other = key(&[(DL_TYPE, 0x800), (NW_DST, 0x0b000005)]);
        assert_eq!(c.lookup(&k_ssh).unwrap().0, ssh);
        assert_eq!(c.lookup(&k_web).unwrap().0, net);
        assert_eq!(c.lookup(&k_other).unwrap().0, all);
        // Equal priority: the first inserted wins.
        let dup = c.insert(
            Match::new(key(&[(NW_DST, 0x0a000000)]), key(&[(NW_DST, 0xff000000)])),
            100,
            "to 10/8",
        );
        assert_eq!(c.lookup(&k_web).unwrap().0, net);
        c.remove(net);
        assert_eq!(c.lookup(&k_web).unwrap().0, dup);
        c.remove(ssh);
        assert_eq!(c.lookup(&k_ssh).unwrap().0, dup);
        assert_eq!(c.len(), 2);
        assert_eq!(c.n_subtables(), 2);
    }

    #[test]
    fn many_rules_few_masks() {
        let mut c = Classifier::new();
        for port in 0..10_000u64 {
            c.insert(
                Match::new(key(&[(IN_PORT, port)]), key(&[(IN_PORT, 0xffff_ffff)])),
                10,
                port,
            );
        }
        c.insert(Match::any(), 0, u64::MAX);
        assert_eq!(c.n_subtables(), 2);
        assert_eq!(c.lookup(&key(&[(IN_PORT, 4242)])).unwrap().1.data, 4242);
        assert_eq!(
            c.lookup(&key(&[(IN_PORT, 99_999)])).unwrap().1.data,
            u64::MAX
        );
    }

    /// Rules over a handful of fields with a few masks each, so that random keys
    /// built from the same small value space hit and overlap often.
    fn arb_match() -> impl Strategy<Value = Match> {
        let fields = [IN_PORT, NW_DST, TP_DST, NW_PROTO];
        let masks: [&[u64]; 4] = [
            &[0, 0xf],
            &[0, 0xffff_ff00, 0xffff_ffff, 0xff00_0000],
            &[0, 0xffff, 0xfff0],
            &[0, 0xff],
        ];
        (
            0..16u64,
            0..4u64,
            0..4u64,
            0..4u64,
            0..4u64,
            0..3usize,
            0..4usize,
            0..3usize,
            0..2usize,
        )
            .prop_map(move |(p, d, t, n, _, mi, md, mt, mn)| {
                let v = key(&[
                    (fields[0], p),
                    (fields[1], 0x0a00_0000 | (d << 8) | d),
                    (fields[2], 20 + t),
                    (fields[3], 6 + n),
                ]);
                let m = key(&[
                    (fields[0], masks[0][mi.min(1)]),
                    (fields[1], masks[1][md]),
                    (fields[2], masks[2][mt]),
                    (fields[3], masks[3][mn]),
                ]);
                Match::new(v, m)
            })
    }

    fn arb_key() -> impl Strategy<Value = FlowKey> {
        (0..16u64, 0..4u64, 0..4u64, 0..4u64).prop_map(|(p, d, t, n)| {
            key(&[
                (IN_PORT, p),
                (NW_DST, 0x0a00_0000 | (d << 8) | d),
                (TP_DST, 20 + t),
                (NW_PROTO, 6 + n),
            ])
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        #[test]
        fn matches_linear_scan(
            rules in prop::collection::vec((arb_match(), 0..8u16), 0..60),
            removals in prop::collection::vec(any::<prop::sample::Index>(), 0..20),
            keys in prop::collection::vec(arb_key(), 1..40),
        ) {
            let mut c = Classifier::new();
            let mut ids = Vec::new();
            for (i, (m, prio)) in rules.iter().enumerate() {
                ids.push(c.insert(*m, *prio, i));
            }
            for r in &removals {
                if !ids.is_empty() {
                    let id = ids.swap_remove(r.index(ids.len()));
                    c.remove(id);
                }
            }
            for k in &keys {
                let fast = c.lookup(k).map(|(id, _)| id);
                let slow = c.lookup_linear(k).map(|(id, _)| id);
                prop_assert_eq!(fast, slow);
            }
        }
    }
}
