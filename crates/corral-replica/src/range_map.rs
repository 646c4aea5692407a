//! [`RangeMap`]: non-overlapping half-open ranges of 4 KiB block numbers, each carrying a value.
//!
//! Two uses: the **read index** (`RangeMap<LayerId>`: which layer of the live chain owns each block;
//! a block in no range has no data anywhere and reads as zeros) and the **extent set** of every layer
//! (`RangeMap<()>`: which blocks its file has allocated, from FIEMAP at open and kept up to date).
//!
//! Memory is proportional to the number of ranges (adjacent ranges with equal values are merged), not
//! to the volume size: a 1 TiB volume with 10,000 scattered extents costs ~10,000 B-tree entries,
//! where Longhorn's byte-per-block array costs 256 MiB. Every operation is `O(log n + k)` for `k`
//! ranges touched.

use std::collections::BTreeMap;

/// Ranges `[start, end)` of block numbers, each mapped to a `V`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeMap<V: Copy + Eq> {
    map: BTreeMap<u64, (u64, V)>,
}

impl<V: Copy + Eq> Default for RangeMap<V> {
    fn default() -> Self {
        RangeMap { map: BTreeMap::new() }
    }
}

impl<V: Copy + Eq> RangeMap<V> {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of stored ranges.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when nothing is mapped.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Total number of blocks mapped.
    pub fn total(&self) -> u64 {
        self.map.iter().map(|(s, (e, _))| e - s).sum()
    }

    /// Approximate heap bytes used (B-tree nodes hold up to 11 entries; we count a node per 5.5
    /// entries on average plus the entries themselves).
    pub fn heap_bytes(&self) -> usize {
        let entry = std::mem::size_of::<u64>() + std::mem::size_of::<(u64, V)>();
        self.map.len() * entry * 2
    }

    /// Unmaps `[start, end)`.
    pub fn clear(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        if let Some((&ks, &(ke, v))) = self.map.range(..start).next_back() {
            if ke > start {
                self.map.insert(ks, (start, v));
                if ke > end {
                    self.map.insert(end, (ke, v));
                    return;
                }
            }
        }
        while let Some((&ks, &(ke, v))) = self.map.range(start..end).next() {
            self.map.remove(&ks);
            if ke > end {
                self.map.insert(end, (ke, v));
            }
        }
    }

    /// Maps `[start, end)` to `value`, replacing whatever was there.
    pub fn insert(&mut self, start: u64, end: u64, value: V) {
        if start >= end {
            return;
        }
        // Fast path for the common write pattern: the range lies in a gap, so nothing needs clearing.
        let left = self.map.range(..=start).next_back().map(|(&s, &(e, v))| (s, e, v));
        let in_gap = match left {
            Some((_, le, _)) if le > start => false,
            _ => self.map.range(start..end).next().is_none(),
        };
        if !in_gap {
            self.clear(start, end);
        }
        let mut s = start;
        let mut e = end;
        if let Some((&ls, &(le, lv))) = self.map.range(..start).next_back() {
            if le == start && lv == value {
                self.map.remove(&ls);
                s = ls;
            }
        }
        if let Some(&(re, rv)) = self.map.get(&end) {
            if rv == value {
                self.map.remove(&end);
                e = re;
            }
        }
        self.map.insert(s, (e, value));
    }

    /// Sets `[start, end)` to `value` (`None` = unmapped).
    pub fn set(&mut self, start: u64, end: u64, value: Option<V>) {
        match value {
            Some(v) => self.insert(start, end, v),
            None => self.clear(start, end),
        }
    }

    /// The mapped pieces inside `[start, end)`, clipped to it, in order (gaps are not reported).
    pub fn pieces(&self, start: u64, end: u64) -> Vec<(u64, u64, V)> {
        let mut out = Vec::new();
        self.for_each_piece(start, end, |s, e, v| out.push((s, e, v)));
        out
    }

    /// Calls `f(s, e, v)` for every mapped piece inside `[start, end)`, clipped, in order.
    pub fn for_each_piece(&self, start: u64, end: u64, mut f: impl FnMut(u64, u64, V)) {
        if start >= end {
            return;
        }
        if let Some((_, &(ke, v))) = self.map.range(..start).next_back() {
            if ke > start {
                f(start, ke.min(end), v);
            }
        }
        for (&ks, &(ke, v)) in self.map.range(start..end) {
            f(ks, ke.min(end), v);
        }
    }

    /// The whole of `[start, end)` as consecutive pieces, gaps as `None`.
    pub fn cover(&self, start: u64, end: u64) -> Vec<(u64, u64, Option<V>)> {
        let mut out = Vec::new();
        let mut pos = start;
        self.for_each_piece(start, end, |s, e, v| {
            if s > pos {
                out.push((pos, s, None));
            }
            out.push((s, e, Some(v)));
            pos = e;
        });
        if pos < end {
            out.push((pos, end, None));
        }
        out
    }

    /// True if every block of `[start, end)` is mapped to `value`.
    pub fn all_equal(&self, start: u64, end: u64, value: V) -> bool {
        let mut pos = start;
        let mut ok = true;
        self.for_each_piece(start, end, |s, e, v| {
            ok &= s == pos && v == value;
            pos = e;
        });
        ok && pos >= end
    }

    /// The maximal run starting at `block` with one value: `(end, value)`, where a gap runs to the
    /// next mapped range (or `u64::MAX`). Allocation-free; used by the single-piece fast paths.
    pub fn run_at(&self, block: u64) -> (u64, Option<V>) {
        if let Some((_, &(e, v))) = self.map.range(..=block).next_back() {
            if e > block {
                return (e, Some(v));
            }
        }
        let next = self.map.range(block..).next().map_or(u64::MAX, |(&s, _)| s);
        (next, None)
    }

    /// The value at one block.
    pub fn get(&self, block: u64) -> Option<V> {
        self.map.range(..=block).next_back().filter(|(_, (e, _))| *e > block).map(|(_, (_, v))| *v)
    }

    /// Every range, in order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64, V)> + '_ {
        self.map.iter().map(|(&s, &(e, v))| (s, e, v))
    }

    /// Within `[start, end)`, remaps the pieces whose value is `from` to `to`.
    pub fn replace_value(&mut self, start: u64, end: u64, from: V, to: V) {
        for (s, e, v) in self.pieces(start, end) {
            if v == from {
                self.insert(s, e, to);
            }
        }
    }
}

impl RangeMap<()> {
    /// Adds `[start, end)` to the set.
    pub fn add(&mut self, start: u64, end: u64) {
        self.insert(start, end, ());
    }

    /// The parts of `[start, end)` NOT in the set.
    pub fn gaps(&self, start: u64, end: u64) -> Vec<(u64, u64)> {
        self.cover(start, end).into_iter().filter(|p| p.2.is_none()).map(|(s, e, _)| (s, e)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn insert_merges_and_splits() {
        let mut m = RangeMap::new();
        m.insert(0, 10, 1u32);
        m.insert(10, 20, 1);
        assert_eq!(m.len(), 1);
        m.insert(5, 7, 2);
        assert_eq!(m.pieces(0, 100), vec![(0, 5, 1), (5, 7, 2), (7, 20, 1)]);
        m.clear(3, 18);
        assert_eq!(m.pieces(0, 100), vec![(0, 3, 1), (18, 20, 1)]);
        assert_eq!(m.cover(2, 22), vec![(2, 3, Some(1)), (3, 18, None), (18, 20, Some(1)), (20, 22, None)]);
        assert!(m.all_equal(18, 20, 1));
        assert!(!m.all_equal(17, 20, 1));
        m.replace_value(0, 100, 1, 3);
        assert_eq!(m.get(19), Some(3));
        assert_eq!(m.get(20), None);
    }

    proptest! {
        // The read index against a naive per-block array model.
        #[test]
        fn matches_a_per_block_array(ops in proptest::collection::vec((0u8..4, 0u64..300, 0u64..80, 0u8..5), 1..120)) {
            let mut m: RangeMap<u8> = RangeMap::new();
            let mut model = vec![None::<u8>; 400];
            for (kind, start, len, v) in ops {
                let end = (start + len).min(400);
                match kind {
                    0 | 1 => { m.insert(start, end, v); for b in start..end { model[b as usize] = Some(v); } }
                    2 => { m.clear(start, end); for b in start..end { model[b as usize] = None; } }
                    _ => { m.replace_value(start, end, v, v + 1); for b in start..end { if model[b as usize] == Some(v) { model[b as usize] = Some(v + 1); } } }
                }
                // invariants: sorted, non-overlapping, non-empty, merged
                let all: Vec<_> = m.iter().collect();
                for w in all.windows(2) {
                    prop_assert!(w[0].1 <= w[1].0);
                    prop_assert!(!(w[0].1 == w[1].0 && w[0].2 == w[1].2), "unmerged neighbours {:?}", w);
                }
                for (s, e, _) in &all { prop_assert!(s < e); }
            }
            for b in 0..400u64 {
                prop_assert_eq!(m.get(b), model[b as usize]);
                let (end, v) = m.run_at(b);
                prop_assert_eq!(v, model[b as usize]);
                prop_assert!(end > b);
                for x in b..end.min(400) { prop_assert_eq!(model[x as usize], v); }
                if end < 400 { prop_assert!(model[end as usize] != v || m.iter().any(|(s, _, _)| s == end)); }
            }
            let cover = m.cover(0, 400);
            let mut pos = 0;
            for (s, e, v) in cover {
                prop_assert_eq!(s, pos);
                for b in s..e { prop_assert_eq!(v, model[b as usize]); }
                pos = e;
            }
            prop_assert_eq!(pos, 400);
        }
    }
}
