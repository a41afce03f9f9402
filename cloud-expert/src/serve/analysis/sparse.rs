//! `POST /v1/analysis/sparse-code`: Batch-OMP codes with exactly S atoms over a given
//! dictionary (200), or over a dictionary learned from the signals (K-SVD, MOD or online;
//! always a job, 202). Reports reconstruction MSE, atom usage, its perplexity and dead atoms.

use super::{AnalysisState, ErrorBody};
use crate::analysis::dictlearn::{self, LearnParams};
use crate::analysis::{omp, AnalysisError, Points, Progress};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

/// Request of `/v1/analysis/sparse-code`.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SparseCodeRequest {
    /// Signals as rows of equal length (exact duplicates are dropped and counted).
    pub signals: Vec<Vec<f64>>,
    /// Unit-norm atoms as rows; absent: learn one (`learn`).
    pub dictionary: Option<Vec<Vec<f64>>>,
    /// Atoms per code, S.
    #[serde(default = "default_sparsity")]
    pub sparsity: usize,
    /// Dictionary learning settings (without `dictionary`).
    #[serde(default)]
    pub learn: LearnParams,
    /// Include the learned dictionary in the result.
    #[serde(default)]
    pub return_dictionary: bool,
    /// Run as a job even with a given dictionary.
    #[serde(default)]
    pub job: bool,
}

fn default_sparsity() -> usize {
    5
}

/// Sparse codes: per-signal `[atom, coefficient]` pairs, `mse`, `atom_usage`,
/// `usage_perplexity`, `dead_atoms`, `n_signals`, `n_dropped`; with learning also
/// `dictionary_learning` (`method`, `iterations`, `mse_history`, `replaced_atoms`) and, when
/// asked, `dictionary`.
#[utoipa::path(
    post,
    path = "/v1/analysis/sparse-code",
    request_body = SparseCodeRequest,
    responses(
        (status = 200, description = "Codes over the given dictionary", body = Object),
        (status = 202, description = "Queued as a job (always when learning)", body = super::JobAccepted),
        (status = 413, description = "Input past the limits", body = ErrorBody),
        (status = 422, description = "Malformed input or settings", body = ErrorBody),
        (status = 503, description = "Too many analyses running or queued", body = ErrorBody),
    )
)]
pub(super) async fn sparse_code_route(
    State(st): State<Arc<AnalysisState>>,
    body: axum::body::Bytes,
) -> Response {
    let req: SparseCodeRequest = match super::json_body(&body) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let values: usize = req
        .signals
        .iter()
        .chain(req.dictionary.iter().flatten())
        .map(Vec::len)
        .sum();
    if let Err(e) = super::check_size(req.signals.len(), values, &st.limits) {
        return e.into_response();
    }
    if req.dictionary.is_none() && (req.sparsity == 0 || req.sparsity > req.learn.atoms) {
        let why = format!("must be in 1..={} (learn.atoms)", req.learn.atoms);
        return AnalysisError::invalid("sparsity", why).into_response();
    }
    let job = req.dictionary.is_none() || req.job;
    let f = move |p: &Progress| run(req, p);
    if job {
        super::submit_job(&st, "sparse-code", f)
    } else {
        super::compute_sync(&st, f).await
    }
}

fn run(req: SparseCodeRequest, progress: &Progress) -> Result<serde_json::Value, AnalysisError> {
    let signals = Points::from_rows(&req.signals, "signals")?;
    match &req.dictionary {
        Some(d) => omp::report(&signals, &Points::from_rows(d, "dictionary")?, req.sparsity),
        None => {
            if req.sparsity == 0 || req.sparsity > req.learn.atoms {
                return Err(AnalysisError::invalid(
                    "sparsity",
                    format!("must be in 1..={}", req.learn.atoms),
                ));
            }
            let c = signals.d;
            let h: Vec<f64> = signals.data.iter().map(|&v| v as f64).collect();
            let learned = dictlearn::learn(&h, c, req.sparsity, &req.learn, progress)?;
            let mut report = omp::report_with(
                &learned.dict,
                learned.m,
                c,
                &h,
                signals.dropped,
                req.sparsity,
            )?;
            report["dictionary_learning"] = serde_json::json!({
                "method": req.learn.method,
                "atoms": learned.m,
                "iterations": req.learn.iterations,
                "seed": req.learn.seed,
                "mse_history": learned.mse_history,
                "replaced_atoms": learned.replaced,
            });
            if req.return_dictionary {
                report["dictionary"] =
                    serde_json::json!(learned.dict.chunks(c).collect::<Vec<_>>());
            }
            Ok(report)
        }
    }
}
