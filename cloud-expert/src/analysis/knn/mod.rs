//! Exact k nearest neighbours: squared distances by float32 GEMMs (`|x|^2 + |y|^2 - 2 x.y`,
//! libtorch/MKL) over the upper half of the distance matrix only, the k smallest of each point
//! picked by threshold scans, and each winner's distance recomputed directly in float64 so near
//! neighbours keep full precision (the GEMM form loses digits when `|x - y|` is small against
//! `|x|`).
//!
//! The matrix is symmetric, so it is computed in panels of rows `a..a+c` against the columns
//! `a..n` only (about half the flops of the full GEMM). Each panel is scanned twice:
//! - by rows (threads split the rows): each row completes its point's list, seeded with what
//!   earlier panels offered that point (its columns before `a` were all offered as columns),
//!   and the winners are refined;
//! - by columns past the panel's diagonal tile (threads split the columns): every row is
//!   offered to each later point's list against that point's current threshold, one
//!   vectorised compare of a row segment against the array of thresholds.
//!
//! Candidates rank by float32 value and then by index, so equal values resolve the same way in
//! whatever order they arrive (ties are common in integer-valued data).
//!
//! Why not libtorch's `topk`: on a 10,000-column block it costs about a fifth of the GEMM. The
//! scans read each value once in 16-wide chunks and look at a chunk value by value only when
//! it holds a value at or below the threshold, which after the first few hundred is rare. One
//! output tensor is reused for every panel (fresh ones cost page faults on par with the
//! scans); the row threads copy it out, in L2-sized pieces scanned while they are in cache,
//! into one reused buffer that the column threads then read (copying is the only safe way to
//! read a tensor).

mod best;

use super::{AnalysisError, Points};
use best::{Best, Slots, SlotsMut};
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
    /// Bytes of distance matrix per panel at most (the first panel, whose rows span every
    /// column; later panels are narrower): the output tensor and the buffer it is copied to.
    panel_bytes: usize,
    /// Bytes of rows a row thread copies out of the panel at a time (L2-sized).
    piece_bytes: usize,
    /// Scanning threads.
    threads: usize,
}

impl Layout {
    /// Panels of at most 32 MiB, 512 KiB pieces, as many scanning threads as libtorch's compute threads
    /// (the server's configured share of the machine), at most the CPUs.
    fn default_for_machine() -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, |t| t.get());
        Self {
            panel_bytes: 32 << 20,
            piece_bytes: 512 << 10,
            threads: cpus.min(tch::get_num_threads().max(1) as usize),
        }
    }
}

/// The `k` nearest neighbours of every point.
pub fn knn(p: &Points, k: usize) -> Result<Knn, AnalysisError> {
    search(p, k, Layout::default_for_machine())
}

/// One row thread's share of a panel: rows `r0..` of the panel starting at point `first` (the
/// tensor `rows`, columns `first..n`), copied out `piece` rows at a time.
struct RowShare<'a> {
    p: &'a Points,
    sq: &'a [f32],
    rows: Tensor,
    first: usize,
    r0: usize,
    piece: usize,
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
    let mut x = Tensor::from_slice(&p.data).view([n, d]);
    let norms = |x: &Tensor| {
        x.square()
            .sum_dim_intlist([1i64].as_slice(), false, Kind::Float)
    };
    let mut sq_t = norms(&x);
    // Only the ranking comes from float32, so data whose squared norms would overflow (or
    // vanish below) float32 is ranked at the scale of its largest coordinate instead; the
    // float64 refinement reads the original values.
    let top = f64::try_from(sq_t.max())?;
    if !(1e-30..=1e30).contains(&top) && top != 0.0 {
        let scale = p.data.iter().fold(0f32, |m, v| m.max(v.abs()));
        x = x.f_div_scalar(f64::from(scale))?;
        sq_t = norms(&x);
    }
    let sq = Vec::<f32>::try_from(&sq_t)?;
    // Row i's ranking of |x_i - x_j|^2 = |x_i|^2 + |x_j|^2 - 2 x_i.x_j: one GEMM with the row
    // of |x_j|^2 as its bias; |x_i|^2 is added in the scans (the column scan needs it).
    let bias = sq_t.unsqueeze(0);
    let xt = (&x * -2.0).tr().contiguous();
    let block = (layout.panel_bytes / (4 * p.n)).clamp(1, p.n);
    let out = Tensor::empty([(block * p.n) as i64], (Kind::Float, tch::Device::Cpu));
    let mut panel = vec![0f32; block * p.n];
    let threads = layout.threads.max(1);
    let mut cols = Slots::new(p.n, k);
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
        // Seeds: the lists the earlier panels' column scans left for this panel's points.
        let (sv, si) = cols.lists(first, first + c);
        seed_v[..c * k].copy_from_slice(sv);
        seed_i[..c * k].copy_from_slice(si);
        let vals = &mut panel[..c * w];
        let per = c.div_ceil(threads);
        let piece = (layout.piece_bytes / (4 * w)).clamp(1, per);
        let results: Vec<Result<(), AnalysisError>> = std::thread::scope(|s| {
            let handles: Vec<_> = vals
                .chunks_mut(per * w)
                .zip(dblk.chunks_mut(per * k).zip(iblk.chunks_mut(per * k)))
                .zip(seed_v.chunks_mut(per * k).zip(seed_i.chunks_mut(per * k)))
                .enumerate()
                .map(|(t, ((v, out), seeds))| {
                    let share = RowShare {
                        p,
                        sq: &sq,
                        rows: d2.narrow(0, (t * per) as i64, (v.len() / w) as i64),
                        first,
                        r0: t * per,
                        piece,
                    };
                    s.spawn(move || scan_rows(&share, v, seeds, out))
                })
                .collect();
            join_all(handles)
        });
        for r in results {
            r?;
        }
        // Columns past the diagonal tile, split over the threads.
        let later = first + c;
        let bounds: Vec<usize> = (0..=threads)
            .map(|t| later + (p.n - later) * t / threads)
            .collect();
        let vals = &panel[..c * w];
        std::thread::scope(|s| {
            let handles: Vec<_> = cols
                .views(&bounds)
                .into_iter()
                .filter(|v| !v.thresholds().is_empty())
                .map(|mut view| {
                    let sq = &sq[first..later];
                    s.spawn(move || {
                        let from = view.base() - first;
                        let to = from + view.thresholds().len();
                        for (r, row) in vals.chunks(w).enumerate() {
                            scan_columns(&row[from..to], sq[r], (first + r) as u32, &mut view);
                        }
                    })
                })
                .collect();
            join_all(handles)
        });
    }
    Ok(Knn { k, dist, idx })
}

/// Joins scoped threads, passing a panic on.
fn join_all<T>(handles: Vec<std::thread::ScopedJoinHandle<'_, T>>) -> Vec<T> {
    handles
        .into_iter()
        .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
        .collect()
}

/// Copies one thread's rows of a panel into `vals` a piece at a time, and while each piece is
/// in cache completes each row's list (seeded from `seeds`) and refines it into `out`.
fn scan_rows(
    sh: &RowShare<'_>,
    vals: &mut [f32],
    seeds: (&mut [f32], &mut [u32]),
    out: (&mut [f64], &mut [usize]),
) -> Result<(), AnalysisError> {
    let w = sh.p.n - sh.first;
    let k = out.0.len() / (vals.len() / w);
    let mut r = sh.r0;
    for (((v, (dc, ic)), sv), si) in vals
        .chunks_mut(sh.piece * w)
        .zip(
            out.0
                .chunks_mut(sh.piece * k)
                .zip(out.1.chunks_mut(sh.piece * k)),
        )
        .zip(seeds.0.chunks_mut(sh.piece * k))
        .zip(seeds.1.chunks_mut(sh.piece * k))
    {
        let c = v.len() / w;
        sh.rows
            .narrow(0, (r - sh.r0) as i64, c as i64)
            .f_copy_data(v, c * w)?;
        for ((((row, drow), irow), svrow), sirow) in v
            .chunks_mut(w)
            .zip(dc.chunks_mut(k))
            .zip(ic.chunks_mut(k))
            .zip(sv.chunks_mut(k))
            .zip(si.chunks_mut(k))
        {
            let i = sh.first + r;
            row[r] = f32::NAN; // the point itself: never a candidate
            let mut best = Best::new(svrow, sirow);
            scan_row(row, sh.sq[i], sh.first, &mut best);
            for (o, &j) in irow.iter_mut().zip(best.ids()) {
                // An empty slot: every point offered was NaN (not possible for finite
                // points at the scale above, but never worth a panic).
                if j == u32::MAX {
                    return Err(AnalysisError::Compute(format!(
                        "point {i}: fewer than {k} neighbours had a finite distance"
                    )));
                }
                *o = j as usize;
            }
            refine(sh.p, i, drow, irow);
            r += 1;
        }
    }
    Ok(())
}

/// The loop both scans share: `offer(state, j, v[j] + shift)` for every value of each chunk
/// `next(state, whole_chunks, from)` finds (asked again after each, as offers move the
/// thresholds), then for the values past the last whole chunk.
#[inline(always)]
fn scan_chunks<S>(
    v: &[f32],
    shift: f32,
    state: &mut S,
    next: impl Fn(&S, &[f32], usize) -> Option<usize>,
    offer: impl Fn(&mut S, usize, f32),
) {
    let whole = v.len() / CHUNK * CHUNK;
    let mut from = 0;
    while let Some(s) = next(state, &v[..whole], from) {
        for (j, &x) in v.iter().enumerate().skip(s).take(CHUNK) {
            offer(state, j, x + shift);
        }
        from = s + CHUNK;
    }
    for (j, &x) in v.iter().enumerate().skip(whole) {
        offer(state, j, x + shift);
    }
}

/// Offers `v[j] + shift` as the candidate `base + j` for every column `j` (only the chunks
/// holding a value at or below the threshold are looked at value by value).
fn scan_row(v: &[f32], shift: f32, base: usize, best: &mut Best<'_>) {
    scan_chunks(
        v,
        shift,
        best,
        |b, v, from| next_chunk_at_most(v, from, shift, b.threshold()),
        |b, j, x| b.offer(x, (base + j) as u32),
    );
}

/// Offers the point `index` to the list of each point of `cols` at value `v[q] + shift`, `v`
/// holding one value per point of `cols` (only chunks holding a value at or below its point's
/// threshold are looked at value by value).
fn scan_columns(v: &[f32], shift: f32, index: u32, cols: &mut SlotsMut<'_>) {
    scan_chunks(
        v,
        shift,
        cols,
        |c, v, from| next_chunk_at_most_each(v, c.thresholds(), from, shift),
        |c, q, x| c.offer(q, x, index),
    );
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

    fn layouts() -> [Layout; 5] {
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
            // Fewer panel rows than threads; the last panels leave some column threads idle.
            small(2, 1, 3),
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
        // 700 points: the small layouts cut the upper half into 11 to 350 panels, each thread
        // copying its rows in several pieces.
        for layout in layouts() {
            check_against_brute_force(700, 20, layout);
        }
    }

    #[test]
    fn huge_and_tiny_coordinates_are_ranked_at_their_own_scale() {
        // Squared norms past float32's range (1e22^2 * 3) and below its smallest normal.
        for scale in [1e22f64, 1e-22] {
            let pts: Vec<Vec<f64>> = (0..60)
                .map(|i| {
                    let t = i as f64 * 0.7;
                    vec![t.sin() * scale, t.cos() * scale, (i % 7) as f64 * scale]
                })
                .collect();
            let p = Points::from_rows(&pts, "x").unwrap();
            let nn = knn(&p, 5).unwrap();
            for i in 0..p.n {
                let all = brute_force(&pts, i);
                for (got, want) in nn.row(i).iter().zip(&all) {
                    assert!((got / want - 1.0).abs() < 1e-5, "scale {scale}: point {i}");
                }
            }
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
        let v: Vec<f32> = (0..47).map(|j| (j % 10) as f32).collect();
        let mut cols = Slots::new(60, 1);
        let mut views = cols.views(&[0, 13, 60]);
        scan_columns(&v, 1.0, 7, &mut views[1]);
        assert!(views[0].thresholds().iter().all(|t| t.is_infinite()));
        for (q, t) in views[1].thresholds().iter().enumerate() {
            assert_eq!(*t, (q % 10) as f32 + 1.0, "point {}", 13 + q);
        }
        // A second row is kept only where it is nearer.
        let v2 = vec![4.5f32; 47];
        scan_columns(&v2, 0.0, 8, &mut views[1]);
        drop(views);
        let (vals, ids) = cols.lists(13, 60);
        for q in 0..47 {
            let want = if q % 10 + 1 > 4 {
                (4.5, 8)
            } else {
                ((q % 10) as f32 + 1.0, 7)
            };
            assert_eq!((vals[q], ids[q]), want, "point {}", 13 + q);
        }
    }
}
