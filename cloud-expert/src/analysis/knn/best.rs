//! Candidate lists for the threshold scans of [`super::knn`]: the `k` best (value, index)
//! pairs of a point, unordered, ranked by value and then by index so that the selected set is
//! the same whatever order the candidates arrive in (ties are common in integer-valued data).

/// An empty slot: worse than any candidate.
const EMPTY: (f32, u32) = (f32::INFINITY, u32::MAX);

/// Whether candidate `a` ranks strictly before `b`. NaN values never do.
fn before(a: (f32, u32), b: (f32, u32)) -> bool {
    a.0 < b.0 || (a.0 == b.0 && a.1 < b.1)
}

/// Position of the worst candidate in `vals`/`ids`.
fn worst_of(vals: &[f32], ids: &[u32]) -> usize {
    (1..vals.len()).fold(0, |w, t| {
        if before((vals[w], ids[w]), (vals[t], ids[t])) {
            t
        } else {
            w
        }
    })
}

/// The `k` best candidates of one point, in a caller's slices of length `k`.
/// Invariant: `worst` is the position of the worst entry (empty slots count as worst).
#[derive(Debug)]
pub(super) struct Best<'a> {
    vals: &'a mut [f32],
    ids: &'a mut [u32],
    worst: usize,
}

impl<'a> Best<'a> {
    /// An empty list in `vals`/`ids` (overwritten).
    pub fn empty(vals: &'a mut [f32], ids: &'a mut [u32]) -> Self {
        vals.fill(EMPTY.0);
        ids.fill(EMPTY.1);
        Self {
            vals,
            ids,
            worst: 0,
        }
    }

    /// The list already in `vals`/`ids` (as left by [`Best::empty`] and offers, or copied).
    pub fn new(vals: &'a mut [f32], ids: &'a mut [u32]) -> Self {
        let worst = worst_of(vals, ids);
        Self { vals, ids, worst }
    }

    /// The value a candidate must not exceed to be considered (a tie may still lose on its
    /// index); infinite while a slot is empty.
    pub fn threshold(&self) -> f32 {
        self.vals[self.worst]
    }

    /// Keeps `(value, index)` if it ranks before the current worst.
    pub fn offer(&mut self, value: f32, index: u32) {
        if before(
            (value, index),
            (self.vals[self.worst], self.ids[self.worst]),
        ) {
            self.vals[self.worst] = value;
            self.ids[self.worst] = index;
            self.worst = worst_of(self.vals, self.ids);
        }
    }

    /// The kept indices (empty slots included as `u32::MAX`).
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
    worst: Vec<u32>,
    /// `thresholds[q]` = value of point `q`'s worst candidate.
    thresholds: Vec<f32>,
}

impl Slots {
    /// Empty lists of `k` for `n` points.
    pub fn new(n: usize, k: usize) -> Self {
        Self {
            k,
            vals: vec![EMPTY.0; n * k],
            ids: vec![EMPTY.1; n * k],
            worst: vec![0; n],
            thresholds: vec![EMPTY.0; n],
        }
    }

    /// Every point's threshold, see [`Best::threshold`].
    pub fn thresholds(&self) -> &[f32] {
        &self.thresholds
    }

    /// [`Best::offer`] to point `q`'s list.
    pub fn offer(&mut self, q: usize, value: f32, index: u32) {
        let w = q * self.k + self.worst[q] as usize;
        if before((value, index), (self.vals[w], self.ids[w])) {
            self.vals[w] = value;
            self.ids[w] = index;
            let range = q * self.k..(q + 1) * self.k;
            let t = worst_of(&self.vals[range.clone()], &self.ids[range.clone()]);
            self.worst[q] = t as u32;
            self.thresholds[q] = self.vals[q * self.k + t];
        }
    }

    /// Point `q`'s candidates (empty slots included).
    pub fn entries(&self, q: usize) -> impl Iterator<Item = (f32, u32)> + '_ {
        let range = q * self.k..(q + 1) * self.k;
        self.vals[range.clone()]
            .iter()
            .copied()
            .zip(self.ids[range].iter().copied())
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
        ];
        let want = vec![3, 4, 5];
        for rot in 0..cands.len() {
            let (mut v, mut i) = (vec![0.0; 3], vec![0; 3]);
            let mut b = Best::empty(&mut v, &mut i);
            assert_eq!(b.threshold(), f32::INFINITY);
            let mut s = Slots::new(2, 3);
            for t in 0..cands.len() {
                let (x, j) = cands[(t + rot) % cands.len()];
                b.offer(x, j);
                s.offer(1, x, j);
            }
            assert_eq!(b.threshold(), 2.0);
            let mut got = b.ids().to_vec();
            got.sort_unstable();
            assert_eq!(got, want, "rotation {rot}");
            let mut got: Vec<u32> = s.entries(1).map(|e| e.1).collect();
            got.sort_unstable();
            assert_eq!(got, want, "rotation {rot}");
            assert_eq!(s.thresholds(), [f32::INFINITY, 2.0]);
        }
    }
}
