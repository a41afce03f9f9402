//! Exact k nearest neighbours: squared distances by one float32 GEMM per block of rows
//! (`|x|^2 + |y|^2 - 2 x.y`, libtorch/MKL), the k smallest per row by `topk`, then each
//! neighbour's distance recomputed directly in float64 so near neighbours keep full precision
//! (the GEMM form loses digits when `|x - y|` is small against `|x|`).

use super::{AnalysisError, Points};
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

/// Bytes of distance matrix per block.
const BLOCK_BYTES: usize = 64 << 20;

/// The `k` nearest neighbours of every point.
pub fn knn(p: &Points, k: usize) -> Result<Knn, AnalysisError> {
    if k == 0 || k >= p.n {
        return Err(AnalysisError::invalid(
            "k",
            format!(
                "{k} neighbours need 1 <= k < number of distinct points ({})",
                p.n
            ),
        ));
    }
    let _g = tch::no_grad_guard();
    let (n, d) = (p.n as i64, p.d as i64);
    let x = Tensor::from_slice(&p.data).view([n, d]);
    // Row i's ranking of |x_i - x_j|^2 = |x_i|^2 + |x_j|^2 - 2 x_i.x_j needs only the last
    // two terms: one GEMM with the row of |x_j|^2 as its bias.
    let sq = x
        .square()
        .sum_dim_intlist([1i64].as_slice(), false, Kind::Float)
        .unsqueeze(0);
    let xt = (&x * -2.0).tr().contiguous();
    let block = (BLOCK_BYTES / (4 * p.n)).clamp(1, p.n) as i64;
    let mut idx = Vec::with_capacity(p.n * k);
    let mut start = 0;
    while start < n {
        let c = block.min(n - start);
        let d2 = sq.addmm(&x.narrow(0, start, c), &xt);
        let _ = d2
            .narrow(1, start, c)
            .diagonal(0, 0, 1)
            .fill_(f64::INFINITY);
        let (_, ids) = d2.topk(k as i64, 1, false, false);
        idx.extend(
            Vec::<i64>::try_from(ids.flatten(0, -1))?
                .into_iter()
                .map(|i| i as usize),
        );
        start += c;
    }
    let mut dist = vec![0f64; p.n * k];
    // Exact distances in float64, sorted, on every core.
    let threads = std::thread::available_parallelism().map_or(1, |t| t.get());
    let per = p.n.div_ceil(threads).max(1);
    std::thread::scope(|s| {
        for (t, (dc, ic)) in dist
            .chunks_mut(per * k)
            .zip(idx.chunks_mut(per * k))
            .enumerate()
        {
            s.spawn(move || {
                for (r, (drow, irow)) in dc.chunks_mut(k).zip(ic.chunks_mut(k)).enumerate() {
                    refine(p, t * per + r, drow, irow);
                }
            });
        }
    });
    Ok(Knn { k, dist, idx })
}

/// Exact float64 distances from point `i` to its neighbours `nb`, both sorted nearest first.
fn refine(p: &Points, i: usize, dist: &mut [f64], nb: &mut [usize]) {
    let row = p.row(i);
    let mut pairs: Vec<(f64, usize)> = nb
        .iter()
        .map(|&j| {
            let s: f64 = row
                .iter()
                .zip(p.row(j))
                .map(|(a, b)| (*a as f64 - *b as f64).powi(2))
                .sum();
            (s.sqrt(), j)
        })
        .collect();
    pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
    for (t, (dd, j)) in pairs.into_iter().enumerate() {
        dist[t] = dd;
        nb[t] = j;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neighbours_match_brute_force() {
        let pts: Vec<Vec<f64>> = (0..40)
            .map(|i| {
                let t = i as f64 * 0.7;
                vec![t.sin() * 3.0, t.cos(), (i % 7) as f64 * 0.1]
            })
            .collect();
        let p = Points::from_rows(&pts, "x").unwrap();
        let nn = knn(&p, 4).unwrap();
        for i in 0..p.n {
            let mut all: Vec<f64> = (0..p.n)
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
            for (t, (got, want)) in nn.row(i).iter().zip(&all).enumerate() {
                assert!((got - want).abs() < 1e-5, "point {i} neighbour {t}");
            }
        }
        assert!(knn(&p, 40).is_err());
    }
}
