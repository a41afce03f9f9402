//! Spike-data alignment (spec §4): how far a layer's top singular directions point along a
//! data direction `v` the caller gives, `|<s_i, v>| / |v|` for the top singular vector and for
//! each spike's (1 = parallel, about `1/sqrt(len)` for an unrelated direction).
//!
//! Sides: a weight `W` (rows x cols) maps inputs of length `cols` to outputs of length `rows`
//! (`y = W x`, PyTorch's layout), so an *input* direction is compared with the right singular
//! vectors and an *output* direction with the left ones. The side follows from `v`'s length,
//! `input` when both fit (square layers) unless the caller names it.
//!
//! Method: the eigenvectors of the same float64 Gram matrix the eigenvalues come from (`eigh`
//! instead of `eigvalsh`, only for layers that have a direction); the other side's vectors are
//! `X s_i / sigma_i`. Singular vectors of (nearly) repeated singular values are not unique, so
//! their overlaps mean only as much as the gap between the values.

use super::{lower_gram, Matrix};
use crate::analysis::AnalysisError;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

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

/// The overlaps of `m`'s top `max(1, spikes)` singular vectors with `dir`.
pub fn alignment(m: &Matrix, dir: &Direction, spikes: usize) -> Result<Alignment, AnalysisError> {
    let field = format!("directions[{}]", m.name);
    let len = dir.values.len();
    let side = match dir.side {
        Some(s) => s,
        None if len == m.cols => Side::Input,
        None if len == m.rows => Side::Output,
        None => {
            return Err(AnalysisError::invalid(
                &field,
                format!(
                    "has {len} values: the layer is {} x {}, so an input direction has {} and an \
                     output direction {}",
                    m.rows, m.cols, m.cols, m.rows
                ),
            ))
        }
    };
    let want = if side == Side::Input { m.cols } else { m.rows };
    if len != want {
        return Err(AnalysisError::invalid(
            &field,
            format!(
                "has {len} values: the layer's {} side has {want}",
                side.as_str()
            ),
        ));
    }
    let norm = dir.values.iter().map(|x| x * x).sum::<f64>().sqrt();
    if !norm.is_finite() || norm == 0.0 {
        return Err(AnalysisError::invalid(&field, "must be finite and nonzero"));
    }
    let _g = tch::no_grad_guard();
    let w = Tensor::from_slice(&m.data)
        .view([m.rows as i64, m.cols as i64])
        .to_kind(Kind::Double);
    // X is N x M with N >= M (as for the eigenvalues); the Gram's eigenvectors live on X's
    // column side, which is W's input side when W is tall.
    let tall = m.rows >= m.cols;
    let x = if tall { w } else { w.tr() };
    let small = x.size()[1];
    let (evals, evecs) = lower_gram(&x)?.f_linalg_eigh("L")?;
    let p = (spikes.max(1) as i64).min(small);
    // eigh sorts ascending: the top p are the last columns, reversed to largest first.
    let top = evecs.f_narrow(1, small - p, p)?.f_flip([1])?;
    let sv = evals
        .f_narrow(0, small - p, p)?
        .f_flip([0])?
        .f_clamp_min(0.0)?
        .f_sqrt()?;
    let vectors = if (side == Side::Input) == tall {
        top
    } else {
        // The other side: X s / sigma (zero where sigma is).
        let safe = sv.f_clamp_min(f64::MIN_POSITIVE)?;
        x.f_mm(&top)?.f_div(&safe.f_unsqueeze(0)?)?
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

/// Fails unless every direction names one of `layers` (a misspelt name would otherwise be
/// silently ignored).
pub fn check_names<'a>(
    directions: &[Direction],
    layers: impl IntoIterator<Item = &'a str>,
) -> Result<(), AnalysisError> {
    let names: std::collections::HashSet<&str> = layers.into_iter().collect();
    match directions
        .iter()
        .position(|d| !names.contains(d.name.as_str()))
    {
        Some(i) => Err(AnalysisError::invalid(
            &format!("directions[{i}].name"),
            format!("no layer is called {:?}", directions[i].name),
        )),
        None => Ok(()),
    }
}
