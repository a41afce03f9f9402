//! KMeans (k-means++ seeding, Lloyd iterations, best of `n_init` by inertia) and the cluster
//! quality scores scikit-learn reports: silhouette (mean over points of (b - a) / max(a, b),
//! 0 for points alone in their cluster), Davies-Bouldin (mean over clusters of the largest
//! (s_i + s_j) / d(c_i, c_j), s = mean distance to the centroid) and Calinski-Harabasz
//! (between / within dispersion, times (n - k) / (k - 1)). Distances are Euclidean, in f64.

use super::AnalysisError;
use offload_shared::rng::SplitMix64;

/// A clustering.
#[derive(Debug, Clone)]
pub struct KMeans {
    /// Cluster of each point.
    pub labels: Vec<usize>,
    /// k x d centroids.
    pub centroids: Vec<f64>,
    /// Sum of squared distances to the assigned centroid.
    pub inertia: f64,
}

fn dist2(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

/// KMeans of the rows of `x` (n x d) into `k` clusters; deterministic given `seed`.
pub fn kmeans(
    x: &[f64],
    d: usize,
    k: usize,
    n_init: usize,
    seed: u64,
) -> Result<KMeans, AnalysisError> {
    let n = x.len() / d.max(1);
    if k < 2 || k > n {
        return Err(AnalysisError::invalid(
            "kmeans_k",
            format!("must be in 2..={n} (the points)"),
        ));
    }
    let mut rng = SplitMix64::new(seed);
    let mut best: Option<KMeans> = None;
    for _ in 0..n_init.max(1) {
        let run = lloyd(x, d, k, &mut rng);
        if best.as_ref().is_none_or(|b| run.inertia < b.inertia) {
            best = Some(run);
        }
    }
    best.ok_or_else(|| AnalysisError::Compute("kmeans: no run".into()))
}

fn lloyd(x: &[f64], d: usize, k: usize, rng: &mut SplitMix64) -> KMeans {
    let n = x.len() / d;
    let row = |i: usize| &x[i * d..(i + 1) * d];
    // k-means++ seeding.
    let mut c = Vec::with_capacity(k * d);
    c.extend_from_slice(row((rng.next_f64() * n as f64) as usize % n));
    let mut near: Vec<f64> = (0..n).map(|i| dist2(row(i), &c[..d])).collect();
    while c.len() < k * d {
        let total: f64 = near.iter().sum();
        let mut t = rng.next_f64() * total;
        let mut pick = n - 1;
        for (i, w) in near.iter().enumerate() {
            t -= w;
            if t <= 0.0 {
                pick = i;
                break;
            }
        }
        c.extend_from_slice(row(pick));
        let last = &c[c.len() - d..];
        for (i, v) in near.iter_mut().enumerate() {
            *v = v.min(dist2(row(i), last));
        }
    }
    let mut labels = vec![0usize; n];
    for _ in 0..300 {
        let mut changed = false;
        for (i, l) in labels.iter_mut().enumerate() {
            let j = (0..k)
                .min_by(|&a, &b| {
                    dist2(row(i), &c[a * d..(a + 1) * d])
                        .total_cmp(&dist2(row(i), &c[b * d..(b + 1) * d]))
                })
                .unwrap_or(0);
            changed |= *l != j;
            *l = j;
        }
        let mut sum = vec![0f64; k * d];
        let mut count = vec![0usize; k];
        for (i, &l) in labels.iter().enumerate() {
            count[l] += 1;
            sum[l * d..(l + 1) * d]
                .iter_mut()
                .zip(row(i))
                .for_each(|(s, v)| *s += v);
        }
        for j in 0..k {
            if count[j] > 0 {
                for t in 0..d {
                    c[j * d + t] = sum[j * d + t] / count[j] as f64;
                }
            }
        }
        if !changed {
            break;
        }
    }
    let inertia = labels
        .iter()
        .enumerate()
        .map(|(i, &l)| dist2(row(i), &c[l * d..(l + 1) * d]))
        .sum();
    KMeans {
        labels,
        centroids: c,
        inertia,
    }
}

/// Silhouette, Davies-Bouldin and Calinski-Harabasz scores of `labels` (k clusters, each
/// non-empty) on the rows of `x`.
pub fn scores(x: &[f64], d: usize, labels: &[usize], k: usize) -> (f64, f64, f64) {
    let n = labels.len();
    let row = |i: usize| &x[i * d..(i + 1) * d];
    let mut count = vec![0usize; k];
    let mut cent = vec![0f64; k * d];
    for (i, &l) in labels.iter().enumerate() {
        count[l] += 1;
        cent[l * d..(l + 1) * d]
            .iter_mut()
            .zip(row(i))
            .for_each(|(s, v)| *s += v);
    }
    for j in 0..k {
        let cnt = count[j].max(1) as f64;
        cent[j * d..(j + 1) * d].iter_mut().for_each(|v| *v /= cnt);
    }
    // Silhouette: O(n^2) distances, rows split over threads.
    let threads = std::thread::available_parallelism()
        .map_or(1, |t| t.get())
        .min(n.max(1));
    let per = n.div_ceil(threads).max(1);
    let parts: Vec<f64> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..threads)
            .map(|t| {
                let count = &count;
                sc.spawn(move || {
                    let mut acc = 0.0;
                    let mut sums = vec![0f64; k];
                    for i in t * per..((t + 1) * per).min(n) {
                        sums.iter_mut().for_each(|s| *s = 0.0);
                        for j in 0..n {
                            sums[labels[j]] += dist2(row(i), row(j)).sqrt();
                        }
                        let own = labels[i];
                        if count[own] <= 1 {
                            continue;
                        }
                        let a = sums[own] / (count[own] - 1) as f64;
                        let b = (0..k)
                            .filter(|&c| c != own && count[c] > 0)
                            .map(|c| sums[c] / count[c] as f64)
                            .fold(f64::INFINITY, f64::min);
                        acc += (b - a) / a.max(b);
                    }
                    acc
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap_or(0.0)).collect()
    });
    let silhouette = parts.iter().sum::<f64>() / n as f64;
    // Davies-Bouldin.
    let mut s = vec![0f64; k];
    for (i, &l) in labels.iter().enumerate() {
        s[l] += dist2(row(i), &cent[l * d..(l + 1) * d]).sqrt();
    }
    for j in 0..k {
        s[j] /= count[j].max(1) as f64;
    }
    let db = (0..k)
        .map(|i| {
            (0..k)
                .filter(|&j| j != i)
                .map(|j| {
                    (s[i] + s[j])
                        / dist2(&cent[i * d..(i + 1) * d], &cent[j * d..(j + 1) * d]).sqrt()
                })
                .fold(0.0, f64::max)
        })
        .sum::<f64>()
        / k as f64;
    // Calinski-Harabasz.
    let mean: Vec<f64> = (0..d)
        .map(|t| (0..n).map(|i| x[i * d + t]).sum::<f64>() / n as f64)
        .collect();
    let between: f64 = (0..k)
        .map(|j| count[j] as f64 * dist2(&cent[j * d..(j + 1) * d], &mean))
        .sum();
    let within: f64 = labels
        .iter()
        .enumerate()
        .map(|(i, &l)| dist2(row(i), &cent[l * d..(l + 1) * d]))
        .sum();
    let ch = if within > 0.0 {
        between * (n - k) as f64 / (within * (k - 1) as f64)
    } else {
        f64::INFINITY
    };
    (silhouette, db, ch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separated_blobs_are_found_and_scored() {
        // Three tight blobs in the plane.
        let mut x = Vec::new();
        for (cx, cy) in [(0.0, 0.0), (10.0, 0.0), (0.0, 10.0)] {
            for i in 0..20 {
                x.push(cx + (i % 5) as f64 * 0.1);
                x.push(cy + (i / 5) as f64 * 0.1);
            }
        }
        let km = kmeans(&x, 2, 3, 3, 7).unwrap();
        for b in 0..3 {
            assert!(km.labels[b * 20..(b + 1) * 20]
                .iter()
                .all(|&l| l == km.labels[b * 20]));
        }
        let (sil, db, ch) = scores(&x, 2, &km.labels, 3);
        assert!(sil > 0.95 && db < 0.05 && ch > 1e3, "{sil} {db} {ch}");
        assert!(kmeans(&x, 2, 1, 1, 0).is_err());
    }
}
