//! Spike-data alignment (spec §4): how far a layer's top singular directions point along a
//! data direction `v` the caller gives, `|<s_i, v>| / |v|` for the top singular vector and for
//! each spike's (1 = parallel, about `1/sqrt(len)` for an unrelated direction).
//!
//! Sides: a weight `W` (rows x cols) maps inputs of length `cols` to outputs of length `rows`
//! (`y = W x`, PyTorch's layout), so an *input* direction is compared with the right singular
//! vectors and an *output* direction with the left ones. The side follows from `v`'s length,
//! `input` when both fit (square layers) unless the caller names it.
//!
//! Method: a layer that has a direction gets its eigenvalues from a float64 `eigh` of the Gram
//! matrix instead of `eigvalsh` (one decomposition gives both); the Gram's eigenvectors are one
//! side's singular vectors, the other side's are `X s_i / sigma_i`. Singular vectors of (nearly) repeated singular values are not unique, so
//! their overlaps mean only as much as the gap between the values.

use super::{lower_gram, Matrix};
use crate::analysis::AnalysisError;
use serde::{Deserialize, Serialize};
use tch::Tensor;

/// Which singular vectors a direction is compared with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    /// Right singular vectors, length `cols` (the layer's inputs).
    Input,
    /// Left singular vectors, length `rows` (the layer's outputs).
    Output,
}

impl Side {
    fn as_str(self) -> &'static str {
        match self {
            Side::Input => "input",
            Side::Output => "output",
        }
    }
}

/// A data direction for the layer called `name`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Direction {
    /// The layer's name, as in the report.
    pub name: String,
    /// The direction (any nonzero length-`cols` or length-`rows` vector; normalised here).
    pub values: Vec<f64>,
    /// `input` or `output`; by default the side whose length `values` has (`input` if both).
    #[serde(default)]
    pub side: Option<Side>,
}

/// Overlaps of one layer's singular vectors with its data direction.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Alignment {
    /// The side compared.
    pub side: Side,
    /// `|<s_1, v>| / |v|` for the top singular vector.
    pub top: f64,
    /// The same for each spike's singular vector, largest spike first (as
    /// `marchenko_pastur.spikes`).
    pub spikes: Vec<f64>,
}

/// The side `dir` meets on a `rows x cols` layer, and its norm; or why it fits none.
fn side_and_norm(dir: &Direction, rows: usize, cols: usize) -> Result<(Side, f64), String> {
    let len = dir.values.len();
    let side = match dir.side {
        Some(s) => s,
        None if len == cols => Side::Input,
        None if len == rows => Side::Output,
        None => {
            return Err(format!(
                "has {len} values: the layer is {rows} x {cols}, so an input direction has \
                 {cols} and an output direction {rows}"
            ))
        }
    };
    let want = if side == Side::Input { cols } else { rows };
    if len != want {
        return Err(format!(
            "has {len} values: the layer's {} side has {want}",
            side.as_str()
        ));
    }
    if dir.values.iter().any(|x| !x.is_finite()) {
        return Err("values must be finite".into());
    }
    // Scaled, so that huge finite values do not overflow the sum of squares.
    let big = dir.values.iter().fold(0f64, |m, x| m.max(x.abs()));
    if big == 0.0 {
        return Err("must not be all zeros".into());
    }
    let norm = big
        * dir
            .values
            .iter()
            .map(|x| (x / big).powi(2))
            .sum::<f64>()
            .sqrt();
    Ok((side, norm))
}

/// Checks every direction against the layers `(name, rows, cols)` before anything is
/// computed: its layer exists and has no other direction, and its values fit a side of it and
/// are finite and not all zero. Errors name `directions[i].name` or `directions[i].values`.
pub fn check<'a>(
    directions: &[Direction],
    layers: impl IntoIterator<Item = (&'a str, usize, usize)>,
) -> Result<(), AnalysisError> {
    let shapes: std::collections::HashMap<&str, (usize, usize)> = layers
        .into_iter()
        .map(|(name, r, c)| (name, (r, c)))
        .collect();
    let mut seen = std::collections::HashSet::new();
    for (i, d) in directions.iter().enumerate() {
        let name_field = format!("directions[{i}].name");
        let Some(&(rows, cols)) = shapes.get(d.name.as_str()) else {
            return Err(AnalysisError::invalid(
                &name_field,
                format!("no layer is called {:?}", d.name),
            ));
        };
        if !seen.insert(d.name.as_str()) {
            return Err(AnalysisError::invalid(
                &name_field,
                format!("layer {:?} already has a direction", d.name),
            ));
        }
        side_and_norm(d, rows, cols)
            .map_err(|why| AnalysisError::invalid(&format!("directions[{i}].values"), why))?;
    }
    Ok(())
}

/// A layer's eigendecomposition, kept for [`Decomposition::align`].
pub struct Decomposition {
    /// `W` or `W^T`, whichever is N x M with N >= M.
    x: Tensor,
    /// Whether `x` is `W` itself (rows >= cols).
    tall: bool,
    /// The Gram matrix's eigenvalues, ascending, and its eigenvectors as columns.
    evals: Tensor,
    evecs: Tensor,
    rows: usize,
    cols: usize,
    name: String,
}

/// The eigenvalues of `W^T W` (as [`super::eigenvalues`], ascending) with the eigenvectors, in
/// one float64 `eigh` of the same Gram matrix.
pub fn decompose(m: &Matrix) -> Result<(Vec<f64>, Decomposition), AnalysisError> {
    let _g = tch::no_grad_guard();
    let (x, tall) = super::gram_side(m);
    let (evals, evecs) = lower_gram(&x)?.f_linalg_eigh("L")?;
    let v = super::nonnegative(&evals)?;
    let d = Decomposition {
        x,
        tall,
        evals,
        evecs,
        rows: m.rows,
        cols: m.cols,
        name: m.name.clone(),
    };
    Ok((v, d))
}

impl Decomposition {
    /// The overlaps of the top `max(1, spikes)` singular vectors with `dir`.
    pub fn align(&self, dir: &Direction, spikes: usize) -> Result<Alignment, AnalysisError> {
        let (side, norm) = side_and_norm(dir, self.rows, self.cols)
            .map_err(|why| AnalysisError::invalid(&format!("directions[{}]", self.name), why))?;
        let _g = tch::no_grad_guard();
        let small = self.x.size()[1];
        let p = (spikes.max(1) as i64).min(small);
        // eigh sorts ascending: the top p are the last columns, reversed to largest first.
        let top = self.evecs.f_narrow(1, small - p, p)?.f_flip([1])?;
        let sv = self
            .evals
            .f_narrow(0, small - p, p)?
            .f_flip([0])?
            .f_clamp_min(0.0)?
            .f_sqrt()?;
        // The Gram's eigenvectors live on X's column side, which is W's input side when W
        // is tall; the other side's vectors are X s / sigma (zero where sigma is).
        let vectors = if (side == Side::Input) == self.tall {
            top
        } else {
            let safe = sv.f_clamp_min(f64::MIN_POSITIVE)?;
            self.x.f_mm(&top)?.f_div(&safe.f_unsqueeze(0)?)?
        };
        let v = Tensor::from_slice(&dir.values).f_div_scalar(norm)?;
        let overlaps = Vec::<f64>::try_from(
            v.f_unsqueeze(0)?
                .f_mm(&vectors)?
                .f_abs()?
                .f_flatten(0, -1)?,
        )?;
        let sv = Vec::<f64>::try_from(sv)?;
        let overlaps: Vec<f64> = overlaps
            .iter()
            .zip(&sv)
            .map(|(&o, &s)| if s > 0.0 { o } else { 0.0 })
            .collect();
        Ok(Alignment {
            side,
            top: overlaps[0],
            spikes: overlaps[..spikes.min(overlaps.len())].to_vec(),
        })
    }
}
