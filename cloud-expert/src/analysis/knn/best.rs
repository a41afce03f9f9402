//! Candidate lists for the threshold scans of [`super::knn`]: the `k` best (value, index)
//! pairs of a point, ranked by value and then by index so that the selected set is the same
//! whatever order the candidates arrive in (ties are common in integer-valued data).
//!
//! Invariant: each list is a binary max-heap by that ranking (the worst candidate at slot 0,
//! every parent ranking no better than its children), so the threshold is one read and a kept
//! candidate costs one sift-down. Empty slots hold (infinity, `u32::MAX`), worse than any
//! candidate.

/// An empty slot.
const EMPTY: (f32, u32) = (f32::INFINITY, u32::MAX);

/// Whether candidate `a` ranks strictly before (is better than) `b`. NaN values never do.
#[inline]
fn before(a: (f32, u32), b: (f32, u32)) -> bool {
    a.0 < b.0 || (a.0 == b.0 && a.1 < b.1)
}

/// Restores the heap below slot `i`.
#[inline]
fn sift_down(vals: &mut [f32], ids: &mut [u32], mut i: usize) {
    let n = vals.len();
    loop {
        let l = 2 * i + 1;
        if l >= n {
            return;
        }
        let r = l + 1;
        let worse = if r < n && before((vals[l], ids[l]), (vals[r], ids[r])) {
            r
        } else {
            l
        };
        if !before((vals[i], ids[i]), (vals[worse], ids[worse])) {
            return;
        }
        vals.swap(i, worse);
        ids.swap(i, worse);
        i = worse;
    }
}

/// Keeps `(value, index)` in the heap `vals`/`ids` if it ranks before the worst.
#[inline]
fn offer_to(vals: &mut [f32], ids: &mut [u32], value: f32, index: u32) -> bool {
    if before((value, index), (vals[0], ids[0])) {
        vals[0] = value;
        ids[0] = index;
        sift_down(vals, ids, 0);
        true
    } else {
        false
    }
}

/// The `k` best candidates of one point, in a caller's slices of length `k`.
#[derive(Debug)]
pub(super) struct Best<'a> {
    vals: &'a mut [f32],
    ids: &'a mut [u32],
}

impl<'a> Best<'a> {
    /// An empty list in `vals`/`ids` (overwritten).
    #[cfg(test)]
    pub fn empty(vals: &'a mut [f32], ids: &'a mut [u32]) -> Self {
        vals.fill(EMPTY.0);
        ids.fill(EMPTY.1);
        Self { vals, ids }
    }

    /// The candidates already in `vals`/`ids`, in any order (made a heap here).
    pub fn new(vals: &'a mut [f32], ids: &'a mut [u32]) -> Self {
        for i in (0..vals.len() / 2).rev() {
            sift_down(vals, ids, i);
        }
        Self { vals, ids }
    }

    /// The value a candidate must not exceed to be considered (a tie may still lose on its
    /// index); infinite while a slot is empty.
    pub fn threshold(&self) -> f32 {
        self.vals[0]
    }

    /// Keeps `(value, index)` if it ranks before the current worst.
    pub fn offer(&mut self, value: f32, index: u32) {
        offer_to(self.vals, self.ids, value, index);
    }

    /// The kept indices, in no order (empty slots included as `u32::MAX`).
    pub fn ids(&self) -> &[u32] {
        self.ids
    }
}

/// Candidate lists for every point of a set, with their thresholds in one contiguous array
/// for the per-column scan.
#[derive(Debug)]
pub(super) struct Slots {
    k: usize,
    vals: Vec<f32>,
    ids: Vec<u32>,
    /// `thresholds[q]` = value of point `q`'s worst candidate.
    thresholds: Vec<f32>,
}

/// The lists of the points `base..base + thresholds.len()` of a [`Slots`], for one thread.
#[derive(Debug)]
pub(super) struct SlotsMut<'a> {
    k: usize,
    base: usize,
    vals: &'a mut [f32],
    ids: &'a mut [u32],
    thresholds: &'a mut [f32],
}

impl Slots {
    /// Empty lists of `k` for `n` points.
    pub fn new(n: usize, k: usize) -> Self {
        Self {
            k,
            vals: vec![EMPTY.0; n * k],
            ids: vec![EMPTY.1; n * k],
            thresholds: vec![EMPTY.0; n],
        }
    }

    /// The lists of points `from..to` as (values, indices), `k` per point.
    pub fn lists(&self, from: usize, to: usize) -> (&[f32], &[u32]) {
        (
            &self.vals[from * self.k..to * self.k],
            &self.ids[from * self.k..to * self.k],
        )
    }

    /// Disjoint views of the points `bounds[t]..bounds[t + 1]`. Panics unless `bounds`
    /// ascends within the points.
    pub fn views(&mut self, bounds: &[usize]) -> Vec<SlotsMut<'_>> {
        let k = self.k;
        let first = bounds.first().copied().unwrap_or(0);
        let (_, mut vals) = self.vals.split_at_mut(first * k);
        let (_, mut ids) = self.ids.split_at_mut(first * k);
        let (_, mut thresholds) = self.thresholds.split_at_mut(first);
        let mut out = Vec::with_capacity(bounds.len().saturating_sub(1));
        for w in bounds.windows(2) {
            let len = w[1] - w[0];
            let (v, rest_v) = std::mem::take(&mut vals).split_at_mut(len * k);
            let (i, rest_i) = std::mem::take(&mut ids).split_at_mut(len * k);
            let (t, rest_t) = std::mem::take(&mut thresholds).split_at_mut(len);
            (vals, ids, thresholds) = (rest_v, rest_i, rest_t);
            out.push(SlotsMut {
                k,
                base: w[0],
                vals: v,
                ids: i,
                thresholds: t,
            });
        }
        out
    }
}

impl SlotsMut<'_> {
    /// The first point of the view.
    pub fn base(&self) -> usize {
        self.base
    }

    /// The view's thresholds, see [`Best::threshold`]; `[0]` is point `base`'s.
    pub fn thresholds(&self) -> &[f32] {
        self.thresholds
    }

    /// [`Best::offer`] to point `base + q`'s list.
    #[inline]
    pub fn offer(&mut self, q: usize, value: f32, index: u32) {
        let range = q * self.k..(q + 1) * self.k;
        if offer_to(
            &mut self.vals[range.clone()],
            &mut self.ids[range],
            value,
            index,
        ) {
            self.thresholds[q] = self.vals[q * self.k];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_k_best_by_value_then_index_in_any_order() {
        let cands: Vec<(f32, u32)> = vec![
            (3.0, 9),
            (1.0, 4),
            (2.0, 7),
            (2.0, 3),
            (f32::NAN, 0),
            (5.0, 1),
            (2.0, 5),
            (0.5, 8),
        ];
        let want = vec![3, 4, 5, 8];
        for rot in 0..cands.len() {
            let (mut v, mut i) = (vec![0.0; 4], vec![0; 4]);
            let mut b = Best::empty(&mut v, &mut i);
            assert_eq!(b.threshold(), f32::INFINITY);
            let mut s = Slots::new(3, 4);
            let mut views = s.views(&[1, 2, 3]);
            for t in 0..cands.len() {
                let (x, j) = cands[(t + rot) % cands.len()];
                b.offer(x, j);
                views[1].offer(0, x, j);
            }
            assert_eq!(views[1].base(), 2);
            assert_eq!(b.threshold(), 2.0);
            let mut got = b.ids().to_vec();
            got.sort_unstable();
            assert_eq!(got, want, "rotation {rot}");
            assert_eq!(views[1].thresholds(), [2.0]);
            assert_eq!(views[0].thresholds(), [f32::INFINITY]);
            let (_, ids) = s.lists(2, 3);
            let mut got = ids.to_vec();
            got.sort_unstable();
            assert_eq!(got, want, "rotation {rot}");
        }
        // A list in any order becomes a heap again.
        let (mut v2, mut i2) = (vec![0.5, 2.0, 1.0, 2.0], vec![8, 5, 4, 3]);
        let mut b2 = Best::new(&mut v2, &mut i2);
        assert_eq!(b2.threshold(), 2.0);
        b2.offer(2.0, 4);
        assert_eq!(b2.threshold(), 2.0);
        b2.offer(1.5, 0);
        assert_eq!(b2.threshold(), 2.0);
        b2.offer(0.1, 0);
        assert_eq!(b2.threshold(), 1.5);
    }
}
