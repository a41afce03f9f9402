//! A validated point cloud (n x d float32, row-major) with exact duplicates removed.

use super::AnalysisError;
use std::collections::HashSet;

/// Points for an analysis. Invariant: every value is finite, `n >= 3`, no two rows are equal
/// (duplicates are dropped on construction and counted in `dropped`, since a zero distance to
/// the nearest neighbour makes TwoNN and MLE undefined).
#[derive(Debug, Clone)]
pub struct Points {
    /// Rows.
    pub n: usize,
    /// Columns.
    pub d: usize,
    /// Row-major values.
    pub data: Vec<f32>,
    /// Rows dropped as exact duplicates of an earlier row.
    pub dropped: usize,
}

impl Points {
    /// Validates `data` (n x d) and drops duplicate rows; `field` names the input in errors.
    pub fn new(data: Vec<f32>, n: usize, d: usize, field: &str) -> Result<Self, AnalysisError> {
        if d == 0 || data.len() != n * d {
            return Err(AnalysisError::invalid(
                field,
                format!("{} values do not form {n} rows of {d}", data.len()),
            ));
        }
        if let Some(i) = data.iter().position(|v| !v.is_finite()) {
            return Err(AnalysisError::invalid(
                field,
                format!("row {} column {} is not finite", i / d, i % d),
            ));
        }
        let mut seen = HashSet::with_capacity(n);
        let mut kept = Vec::with_capacity(data.len());
        for row in data.chunks_exact(d) {
            let key: Vec<u32> = row.iter().map(|v| (v + 0.0).to_bits()).collect();
            if seen.insert(key) {
                kept.extend_from_slice(row);
            }
        }
        let m = kept.len() / d;
        if m < 3 {
            return Err(AnalysisError::invalid(
                field,
                format!("{m} distinct points; at least 3 are needed"),
            ));
        }
        Ok(Self {
            n: m,
            d,
            data: kept,
            dropped: n - m,
        })
    }

    /// From JSON rows (all of one length).
    pub fn from_rows(rows: &[Vec<f64>], field: &str) -> Result<Self, AnalysisError> {
        let d = rows.first().map_or(0, Vec::len);
        if let Some(i) = rows.iter().position(|r| r.len() != d) {
            return Err(AnalysisError::invalid(
                field,
                format!("row {i} has {} values, row 0 has {d}", rows[i].len()),
            ));
        }
        let data = rows.iter().flatten().map(|&v| v as f32).collect();
        Self::new(data, rows.len(), d, field)
    }

    /// Points from a file: `.npy`, `.csv` (numbers, no header) or a JSON array of rows.
    pub fn read_file(path: &std::path::Path) -> Result<Self, AnalysisError> {
        let field = path.display().to_string();
        let bytes =
            std::fs::read(path).map_err(|e| AnalysisError::invalid(&field, e.to_string()))?;
        match path.extension().and_then(|e| e.to_str()) {
            Some("npy") => super::npy::points(&bytes),
            Some("csv") => {
                let text = String::from_utf8_lossy(&bytes);
                let rows = text
                    .lines()
                    .enumerate()
                    .filter(|(_, l)| !l.trim().is_empty())
                    .map(|(i, l)| {
                        l.split(',')
                            .map(|v| v.trim().parse::<f64>())
                            .collect::<Result<Vec<_>, _>>()
                            .map_err(|e| {
                                AnalysisError::invalid(&field, format!("line {}: {e}", i + 1))
                            })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Self::from_rows(&rows, &field)
            }
            _ => {
                let rows: Vec<Vec<f64>> = serde_json::from_slice(&bytes).map_err(|e| {
                    AnalysisError::invalid(&field, format!("not a JSON array of rows: {e}"))
                })?;
                Self::from_rows(&rows, &field)
            }
        }
    }

    /// Row `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.d..(i + 1) * self.d]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_are_dropped_and_bad_input_is_named() {
        let p = Points::from_rows(
            &[
                vec![0.0, 1.0],
                vec![1.0, 0.0],
                vec![0.0, 1.0],
                vec![2.0, 2.0],
                vec![-0.0, 1.0],
            ],
            "embeddings",
        )
        .unwrap();
        assert_eq!((p.n, p.dropped), (3, 2));
        let e = Points::from_rows(&[vec![0.0, 1.0], vec![1.0]], "embeddings").unwrap_err();
        assert!(e.to_string().contains("row 1 has 1 values"), "{e}");
        let e = Points::new(vec![0.0, f32::NAN, 1.0, 2.0, 3.0, 4.0], 3, 2, "x").unwrap_err();
        assert!(e.to_string().contains("row 0 column 1"), "{e}");
        let e = Points::from_rows(&[vec![1.0], vec![1.0], vec![2.0]], "x").unwrap_err();
        assert!(e.to_string().contains("2 distinct points"), "{e}");
    }
}
