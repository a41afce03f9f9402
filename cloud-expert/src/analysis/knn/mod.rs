//! Exact k nearest neighbours: squared distances by float32 GEMMs (`|x|^2 + |y|^2 - 2 x.y`,
//! libtorch/MKL) over the upper half of the distance matrix only, the k smallest of each point
//! picked by threshold scans, and each winner's distance recomputed directly in float64 so near
//! neighbours keep full precision (the GEMM form loses digits when `|x - y|` is small against
//! `|x|`).
//!
//! The matrix is symmetric, so it is computed in panels of rows `a..a+c` against the columns
//! `a..n` only (about half the flops of the full GEMM). Each panel row is scanned twice:
//! - as its point's own row, seeded with every candidate earlier panels offered it, which
//!   completes that point's list (its columns before `a` were all offered as columns);
//! - column by column past the panel's diagonal tile, offering the row's point to each later
//!   point's list against that point's current threshold (one vectorised compare of the row
//!   against the array of thresholds).
//!
//! Panels are split by rows over threads; each thread keeps its own column lists (no sharing),
//! merged into the seeds of the points of the next panel. Candidates rank by float32 value and
//! then by index, so equal values resolve the same way in whatever order they arrive (ties are
//! common in integer-valued data).
//!
//! Why not libtorch's `topk`: on a 10,000-column block it costs about a fifth of the GEMM. The
//! scans read each value once in 16-wide chunks and look at a chunk value by value only when
//! it holds a value at or below the threshold, which after the first few hundred is rare. One
//! output tensor is reused for every panel (fresh ones cost page faults on par with the scans);
//! each thread copies its rows out in L2-sized pieces (the only safe way to read a tensor).

mod best;

use super::{AnalysisError, Points};
use best::{Best, Slots};
use offload_kernels::select::{next_chunk_at_most, next_chunk_at_most_each, CHUNK};
use tch::{Kind, Tensor};

/// Neighbours of every point, nearest first (the point itself excluded).
#[derive(Debug, Clone)]
pub struct Knn {
    /// Neighbours per point.
    pub k: usize,
    /// (n x k) distances, ascending in each row.
    pub dist: Vec<f64>,
    /// (n x k) neighbour indices.
    pub idx: Vec<usize>,
}

impl Knn {
    /// Distances of point `i`.
    pub fn row(&self, i: usize) -> &[f64] {
        &self.dist[i * self.k..(i + 1) * self.k]
    }
}

/// How the search is cut up (the defaults suit any input; tests shrink them).
#[derive(Debug, Clone, Copy)]
struct Layout {
    /// Bytes of distance matrix per panel.
    panel_bytes: usize,
    /// Bytes of rows a scanning thread copies out of the panel at a time (L2-sized).
    piece_bytes: usize,
    /// Scanning threads.
    threads: usize,
}

impl Layout {
    fn default_for_machine() -> Self {
        Self {
            panel_bytes: 32 << 20,
            piece_bytes: 512 << 10,
            threads: std::thread::available_parallelism().map_or(1, |t| t.get()),
        }
    }
}

/// The `k` nearest neighbours of every point.
pub fn knn(p: &Points, k: usize) -> Result<Knn, AnalysisError> {
    search(p, k, Layout::default_for_machine())
}

/// One panel's share for one thread: rows `r0..` of the panel starting at point `first`, the
/// columns from `first` on, of which the first `diag` are the panel's own points.
struct Share<'a> {
    p: &'a Points,
    sq: &'a [f32],
    rows: Tensor,
    first: usize,
    r0: usize,
    diag: usize,
}

fn search(p: &Points, k: usize, layout: Layout) -> Result<Knn, AnalysisError> {
    if k == 0 || k >= p.n {
        return Err(AnalysisError::invalid(
            "k",
            format!(
                "{k} neighbours need 1 <= k < number of distinct points ({})",
                p.n
            ),
        ));
    }
    if u32::try_from(p.n).is_err() {
        return Err(AnalysisError::invalid(
            "points",
            format!("{} points: at most {} are supported", p.n, u32::MAX),
        ));
    }
    let _g = tch::no_grad_guard();
    let (n, d) = (p.n as i64, p.d as i64);
    let x = Tensor::from_slice(&p.data).view([n, d]);
    let sq_t = x
        .square()
        .sum_dim_intlist([1i64].as_slice(), false, Kind::Float);
    let sq = Vec::<f32>::try_from(&sq_t)?;
    // Row i's ranking of |x_i - x_j|^2 = |x_i|^2 + |x_j|^2 - 2 x_i.x_j: one GEMM with the row
    // of |x_j|^2 as its bias; |x_i|^2 is added in the scans (the column scan needs it).
    let bias = sq_t.unsqueeze(0);
    let xt = (&x * -2.0).tr().contiguous();
    let block = (layout.panel_bytes / (4 * p.n)).clamp(1, p.n);
    let out = Tensor::empty([(block * p.n) as i64], (Kind::Float, tch::Device::Cpu));
    let threads = layout.threads.max(1);
    let mut cols: Vec<Slots> = (0..threads).map(|_| Slots::new(p.n, k)).collect();
    let mut bufs: Vec<Vec<f32>> = (0..threads)
        .map(|_| vec![0f32; (layout.piece_bytes / 4).max(p.n)])
        .collect();
    let (mut seed_v, mut seed_i) = (vec![0f32; block * k], vec![0u32; block * k]);
    let mut dist = vec![0f64; p.n * k];
    let mut idx = vec![0usize; p.n * k];
    for ((first, dblk), iblk) in (0..p.n)
        .step_by(block)
        .zip(dist.chunks_mut(block * k))
        .zip(idx.chunks_mut(block * k))
    {
        let c = dblk.len() / k;
        let w = p.n - first;
        let d2 = out.narrow(0, 0, (c * w) as i64).view([c as i64, w as i64]);
        let _ = bias.narrow(1, first as i64, w as i64).f_addmm_out(
            &d2,
            &x.narrow(0, first as i64, c as i64),
            &xt.narrow(1, first as i64, w as i64),
        )?;
        // Seeds: what every thread's column scans of earlier panels offered this panel's points.
        for (r, (sv, si)) in seed_v
            .chunks_mut(k)
            .zip(seed_i.chunks_mut(k))
            .take(c)
            .enumerate()
        {
            let mut b = Best::empty(sv, si);
            for (v, j) in cols.iter().flat_map(|s| s.entries(first + r)) {
                b.offer(v, j);
            }
        }
        let per = c.div_ceil(threads);
        let results: Vec<Result<(), tch::TchError>> = std::thread::scope(|s| {
            let handles: Vec<_> = dblk
                .chunks_mut(per * k)
                .zip(iblk.chunks_mut(per * k))
                .zip(seed_v.chunks_mut(per * k).zip(seed_i.chunks_mut(per * k)))
                .zip(cols.iter_mut().zip(bufs.iter_mut()))
                .enumerate()
                .map(|(t, (((dc, ic), (sv, si)), (col, buf)))| {
                    let share = Share {
                        p,
                        sq: &sq,
                        rows: d2.narrow(0, (t * per) as i64, (dc.len() / k) as i64),
                        first,
                        r0: t * per,
                        diag: c,
                    };
                    s.spawn(move || scan_share(&share, buf, (sv, si), col, (dc, ic)))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                .collect()
        });
        for r in results {
            r?;
        }
    }
    Ok(Knn { k, dist, idx })
}

/// Scans one thread's rows of a panel, copied out `buf`-sized pieces at a time: each row
/// completes its point's list (seeded from `seeds`) and is refined into `out`, and is offered
/// to the later points' lists in `cols`.
fn scan_share(
    sh: &Share<'_>,
    buf: &mut [f32],
    seeds: (&mut [f32], &mut [u32]),
    cols: &mut Slots,
    out: (&mut [f64], &mut [usize]),
) -> Result<(), tch::TchError> {
    let k = out.0.len() / sh.rows.size()[0] as usize;
    let w = sh.p.n - sh.first;
    let piece = (buf.len() / w).max(1);
    let mut r = sh.r0;
    for (((dc, ic), sv), si) in out
        .0
        .chunks_mut(piece * k)
        .zip(out.1.chunks_mut(piece * k))
        .zip(seeds.0.chunks_mut(piece * k))
        .zip(seeds.1.chunks_mut(piece * k))
    {
        let c = dc.len() / k;
        let vals = &mut buf[..c * w];
        sh.rows
            .narrow(0, (r - sh.r0) as i64, c as i64)
            .f_copy_data(vals, c * w)?;
        for ((((v, drow), irow), svrow), sirow) in vals
            .chunks_mut(w)
            .zip(dc.chunks_mut(k))
            .zip(ic.chunks_mut(k))
            .zip(sv.chunks_mut(k))
            .zip(si.chunks_mut(k))
        {
            let i = sh.first + r;
            v[r] = f32::NAN; // the point itself: never a candidate
            let mut best = Best::new(svrow, sirow);
            scan_row(v, sh.sq[i], sh.first, &mut best);
            scan_columns(v, sh.diag, sh.sq[i], i as u32, sh.first, cols);
            for (o, &j) in irow.iter_mut().zip(best.ids()) {
                *o = j as usize;
            }
            refine(sh.p, i, drow, irow);
            r += 1;
        }
    }
    Ok(())
}

/// Offers `v[j] + shift` as the candidate `base + j` for every column `j` (only the chunks
/// holding a value at or below the threshold are looked at value by value).
fn scan_row(v: &[f32], shift: f32, base: usize, best: &mut Best<'_>) {
    let whole = v.len() / CHUNK * CHUNK;
    let mut from = 0;
    while let Some(s) = next_chunk_at_most(&v[..whole], from, shift, best.threshold()) {
        for (j, &x) in v.iter().enumerate().skip(s).take(CHUNK) {
            best.offer(x + shift, (base + j) as u32);
        }
        from = s + CHUNK;
    }
    for (j, &x) in v.iter().enumerate().skip(whole) {
        best.offer(x + shift, (base + j) as u32);
    }
}

/// Offers the row's point `index` to point `base + j`'s list at value `v[j] + shift`, for every
/// column `j >= from` (only chunks holding a value at or below its column's threshold are
/// looked at value by value).
fn scan_columns(v: &[f32], from: usize, shift: f32, index: u32, base: usize, cols: &mut Slots) {
    let whole = from + (v.len() - from) / CHUNK * CHUNK;
    let mut at = from;
    while let Some(s) = next_chunk_at_most_each(
        &v[..whole],
        &cols.thresholds()[base..base + whole],
        at,
        shift,
    ) {
        for (j, &x) in v.iter().enumerate().skip(s).take(CHUNK) {
            cols.offer(base + j, x + shift, index);
        }
        at = s + CHUNK;
    }
    for (j, &x) in v.iter().enumerate().skip(whole) {
        cols.offer(base + j, x + shift, index);
    }
}

/// Exact float64 distances from point `i` to its neighbours `nb`, both sorted nearest first.
fn refine(p: &Points, i: usize, dist: &mut [f64], nb: &mut [usize]) {
    let rows: Vec<&[f32]> = nb.iter().map(|&j| p.row(j)).collect();
    offload_kernels::distance::sq_dists(p.row(i), &rows, dist);
    let mut pairs: Vec<(f64, usize)> = dist
        .iter()
        .map(|d2| d2.sqrt())
        .zip(nb.iter().copied())
        .collect();
    pairs.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    for (t, (dd, j)) in pairs.into_iter().enumerate() {
        dist[t] = dd;
        nb[t] = j;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layouts() -> [Layout; 4] {
        let small = |panel_rows: usize, piece_rows: usize, threads| Layout {
            panel_bytes: panel_rows * 4 * 700,
            piece_bytes: piece_rows * 4 * 700,
            threads,
        };
        [
            Layout::default_for_machine(),
            // Many panels, several pieces per thread, a last panel shorter than the others.
            small(64, 5, 2),
            small(33, 1, 3),
            small(700, 700, 1),
        ]
    }

    fn brute_force(pts: &[Vec<f64>], i: usize) -> Vec<f64> {
        let mut all: Vec<f64> = (0..pts.len())
            .filter(|&j| j != i)
            .map(|j| {
                pts[i]
                    .iter()
                    .zip(&pts[j])
                    .map(|(a, b)| (a - b).powi(2))
                    .sum::<f64>()
                    .sqrt()
            })
            .collect();
        all.sort_by(f64::total_cmp);
        all
    }

    fn check_against_brute_force(n: usize, k: usize, layout: Layout) {
        let pts: Vec<Vec<f64>> = (0..n)
            .map(|i| {
                let t = i as f64 * 0.7;
                vec![
                    t.sin() * 3.0,
                    t.cos(),
                    (i % 7) as f64 * 0.1,
                    (t * 0.13).sin(),
                ]
            })
            .collect();
        let p = Points::from_rows(&pts, "x").unwrap();
        let nn = search(&p, k, layout).unwrap();
        for i in 0..p.n {
            let all = brute_force(&pts, i);
            for (t, (got, want)) in nn.row(i).iter().zip(&all).enumerate() {
                assert!(
                    (got - want).abs() < 1e-5,
                    "n {n} {layout:?}: point {i} neighbour {t}"
                );
            }
            for (t, &j) in nn.idx[i * k..(i + 1) * k].iter().enumerate() {
                assert_ne!(j, i, "a point is not its own neighbour");
                let direct = pts[i]
                    .iter()
                    .zip(&pts[j])
                    .map(|(a, b)| (a - b).powi(2))
                    .sum::<f64>()
                    .sqrt();
                assert!((direct - nn.row(i)[t]).abs() < 1e-5, "index {j} of {i}");
            }
        }
        assert!(search(&p, n, layout).is_err());
    }

    #[test]
    fn neighbours_match_brute_force() {
        check_against_brute_force(40, 4, Layout::default_for_machine());
    }

    #[test]
    fn every_layout_matches_brute_force() {
        // 700 points: the small layouts cut the upper half into 11 to 22 panels, each thread
        // copying its rows in several pieces.
        for layout in layouts() {
            check_against_brute_force(700, 20, layout);
        }
    }

    #[test]
    fn ties_resolve_the_same_way_in_every_layout() {
        // Points on an integer grid: many neighbours at exactly equal distances.
        let pts: Vec<Vec<f64>> = (0..700)
            .map(|i| vec![(i % 9) as f64, (i / 9 % 9) as f64, (i / 81) as f64])
            .collect();
        let p = Points::from_rows(&pts, "x").unwrap();
        let results: Vec<Knn> = layouts()
            .into_iter()
            .map(|l| search(&p, 12, l).unwrap())
            .collect();
        for r in &results[1..] {
            assert_eq!(r.idx, results[0].idx);
            assert_eq!(r.dist, results[0].dist);
        }
        // Among equal distances the smaller index wins: point 0's 12 nearest are 3 at 1,
        // 3 at sqrt 2, 1 at sqrt 3 and 3 at 2, then 2 of the 6 at sqrt 5.
        assert_eq!(&results[0].idx[..3], &[1, 9, 81]);
        assert_eq!(results[0].row(0)[11], 5f64.sqrt());
    }

    #[test]
    fn row_scan_keeps_the_k_smallest_with_ties_by_index() {
        let mut rng = offload_shared::rng::SplitMix64::new(7);
        for (len, k) in [(21, 20), (37, 5), (1000, 20), (1003, 1), (64, 16)] {
            // Coarse values so ties occur.
            let v: Vec<f32> = (0..len)
                .map(|_| (rng.next_f64() * 50.0).floor() as f32)
                .collect();
            let (mut bv, mut bi) = (vec![0.0; k], vec![0; k]);
            let mut best = Best::empty(&mut bv, &mut bi);
            scan_row(&v, 0.5, 100, &mut best);
            let mut got = best.ids().to_vec();
            got.sort_unstable();
            let mut want: Vec<(f32, u32)> = v.iter().copied().zip(100..).collect();
            want.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            let mut want: Vec<u32> = want[..k].iter().map(|e| e.1).collect();
            want.sort_unstable();
            assert_eq!(got, want, "len {len} k {k}");
        }
    }

    #[test]
    fn column_scan_offers_each_column_its_value() {
        let v: Vec<f32> = (0..50).map(|j| (j % 10) as f32).collect();
        let mut cols = Slots::new(60, 1);
        scan_columns(&v, 3, 1.0, 7, 10, &mut cols);
        assert!(cols.thresholds()[..13].iter().all(|t| t.is_infinite()));
        for j in 3..50 {
            assert_eq!(cols.thresholds()[10 + j], (j % 10) as f32 + 1.0);
            assert_eq!(
                cols.entries(10 + j).next(),
                Some(((j % 10) as f32 + 1.0, 7))
            );
        }
        // A second row is kept only where it is nearer.
        let v2 = vec![4.5f32; 50];
        scan_columns(&v2, 3, 0.0, 8, 10, &mut cols);
        for j in 3..50 {
            let want = if j % 10 + 1 > 4 {
                (4.5, 8)
            } else {
                ((j % 10) as f32 + 1.0, 7)
            };
            assert_eq!(cols.entries(10 + j).next(), Some(want), "column {j}");
        }
    }
}
