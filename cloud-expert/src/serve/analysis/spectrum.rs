//! `POST /v1/analysis/spectrum`: the ESD of uploaded matrices, or of every layer of a served
//! expert (`"model"`, optionally `"version"`; `"initial_version"` gives the drift from an
//! earlier version). A served model's spectra, and any request with `"job": true`, run as a
//! job (202); uploaded matrices otherwise answer at once (200).

use super::{error, AnalysisState, ErrorBody};
use crate::analysis::spectrum::alignment::{self, Direction};
use crate::analysis::spectrum::{self, LayerSpectrum, Matrix, SpectrumOptions};
use crate::analysis::{AnalysisError, Progress};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

/// A named matrix as rows.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NamedMatrix {
    /// Layer name (matches `initial` to `matrices`).
    pub name: String,
    /// Rows of equal length.
    pub values: Vec<Vec<f64>>,
}

/// What to compute beyond the basic report (all optional).
#[derive(Debug, Default, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SpectrumFlags {
    /// Return every eigenvalue.
    pub eigenvalues: bool,
    /// Compare with the ESD of the entry-permuted matrix.
    pub randomize: bool,
    /// Seed of that permutation.
    pub seed: u64,
    /// Include an SVG plot of each ESD.
    pub svg: bool,
}

/// Request of `/v1/analysis/spectrum`: `matrices` or `model`.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SpectrumRequest {
    /// Uploaded layers.
    #[serde(default)]
    pub matrices: Vec<NamedMatrix>,
    /// The same layers at initialisation (by name), for norm changes and spectral drift.
    #[serde(default)]
    pub initial: Vec<NamedMatrix>,
    /// Data directions by layer name (of uploaded or served layers): the report's
    /// `alignment` gives the overlap of each such layer's top singular vectors with it.
    #[serde(default)]
    pub directions: Vec<Direction>,
    /// A served expert model (every weight layer of its expert), the served LLM's id (every
    /// 2-D weight of the LLM), or one of its adapters (the update `scale B A` of every adapted
    /// module).
    pub model: Option<String>,
    /// Its version (default: the newest served).
    pub version: Option<String>,
    /// An earlier served version to measure drift from.
    pub initial_version: Option<String>,
    /// Options.
    #[serde(default)]
    pub options: SpectrumFlags,
    /// Run as a job even for uploaded matrices.
    #[serde(default)]
    pub job: bool,
}

/// Response of `/v1/analysis/spectrum` (also a job's `result`).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct SpectrumReport {
    /// One entry per layer, in request (or name) order.
    pub layers: Vec<LayerSpectrum>,
}

/// Where the layers come from, resolved before the computation.
enum Source {
    Uploaded(Vec<Matrix>, Vec<Matrix>),
    Files(std::path::PathBuf, Option<std::path::PathBuf>),
    /// The served LLM's weights of two or more dimensions, fetched one at a time.
    Llm(super::texts::LlmHandle),
    /// An adapter directory's updates.
    Adapter(std::path::PathBuf),
}

fn matrices(list: Vec<NamedMatrix>, field: &str) -> Result<Vec<Matrix>, AnalysisError> {
    list.into_iter()
        .enumerate()
        .map(|(i, m)| {
            let rows = m.values.len();
            let cols = m.values.first().map_or(0, Vec::len);
            if let Some(r) = m.values.iter().position(|r| r.len() != cols) {
                return Err(AnalysisError::invalid(
                    &format!("{field}[{i}].values"),
                    format!("row {r} has {} values, row 0 has {cols}", m.values[r].len()),
                ));
            }
            let data = m.values.iter().flatten().map(|&v| v as f32).collect();
            Matrix::new(m.name, rows, cols, data)
        })
        .collect()
}

/// Computes every layer, stepping `progress` per layer.
fn run(
    source: Source,
    opts: &SpectrumOptions,
    progress: &Progress,
) -> Result<SpectrumReport, AnalysisError> {
    let (layers, initial) = match source {
        Source::Llm(llm) => return run_llm(&llm, opts, progress),
        Source::Uploaded(m, i) => (m, i),
        Source::Adapter(dir) => (spectrum::matrices_from_adapter(&dir)?, Vec::new()),
        Source::Files(path, init) => {
            let m = spectrum::matrices_from_safetensors(&path)?;
            let i = match init {
                Some(p) => spectrum::matrices_from_safetensors(&p)?,
                None => Vec::new(),
            };
            (m, i)
        }
    };
    alignment::check(
        &opts.directions,
        layers.iter().map(|m| (m.name.as_str(), m.rows, m.cols)),
    )?;
    progress.plan(layers.len());
    let mut out = Vec::with_capacity(layers.len());
    for m in &layers {
        progress.check()?;
        let init = initial.iter().find(|w| w.name == m.name);
        out.push(spectrum::analyze(m, init, opts)?);
        progress.step()?;
    }
    Ok(SpectrumReport { layers: out })
}

/// Every 2-D weight of the served LLM, fetched from the engine one at a time (the largest, the
/// token embeddings, is vocabulary x hidden).
fn run_llm(
    llm: &super::texts::LlmHandle,
    opts: &SpectrumOptions,
    progress: &Progress,
) -> Result<SpectrumReport, AnalysisError> {
    let names: Vec<(String, Vec<i64>)> = llm
        .engine
        .weight_names()
        .map_err(AnalysisError::Compute)?
        .into_iter()
        .filter(|(_, s)| s.len() == 2 && s[0] >= 2 && s[1] >= 2)
        .collect();
    alignment::check(
        &opts.directions,
        names
            .iter()
            .map(|(n, s)| (n.as_str(), s[0] as usize, s[1] as usize)),
    )?;
    progress.plan(names.len());
    let mut out = Vec::with_capacity(names.len());
    for (name, shape) in names {
        progress.check()?;
        let data = llm
            .engine
            .weight(&name)
            .map_err(AnalysisError::Compute)?
            .ok_or_else(|| AnalysisError::Compute(format!("weight {name} vanished")))?;
        let m = Matrix::new(name, shape[0] as usize, shape[1] as usize, data)?;
        out.push(spectrum::analyze(&m, None, opts)?);
        progress.step()?;
    }
    Ok(SpectrumReport { layers: out })
}

/// Weight spectra: eigenvalues of W^T W, Marchenko-Pastur bulk and spikes, power-law fit,
/// stable rank, entropy, randomised-ESD distance, drift from an initial checkpoint, SVG plots.
#[utoipa::path(
    post,
    path = "/v1/analysis/spectrum",
    request_body = SpectrumRequest,
    responses(
        (status = 200, description = "Spectra of uploaded matrices", body = SpectrumReport),
        (status = 202, description = "Queued as a job", body = super::JobAccepted),
        (status = 404, description = "Unknown model or version", body = ErrorBody),
        (status = 413, description = "Input past the limits", body = ErrorBody),
        (status = 422, description = "Malformed input or options", body = ErrorBody),
        (status = 503, description = "Too many analyses running or queued", body = ErrorBody),
    )
)]
pub(super) async fn spectrum_route(
    State(st): State<Arc<AnalysisState>>,
    body: axum::body::Bytes,
) -> Response {
    let req: SpectrumRequest = match super::json_body(&body) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let directions: usize = req.directions.iter().map(|d| d.values.len()).sum();
    if directions > st.limits.max_values {
        return AnalysisError::TooLarge(format!(
            "directions: {directions} values exceed the limit of {}",
            st.limits.max_values
        ))
        .into_response();
    }
    let opts = SpectrumOptions {
        eigenvalues: req.options.eigenvalues,
        randomize: req.options.randomize,
        seed: req.options.seed,
        directions: req.directions,
        svg: req.options.svg,
    };
    // The served LLM, or one of its adapters, by name.
    let llm_source = st.llm.as_ref().and_then(|l| {
        let model = req.model.as_deref()?;
        if model == l.name {
            return Some((Source::Llm(l.clone()), "the LLM's"));
        }
        l.adapters
            .list()
            .into_iter()
            .find(|a| a.name == model)
            .map(|a| (Source::Adapter(a.path), "an adapter's"))
    });
    let (source, job) = match (&req.model, llm_source) {
        (Some(_), Some((source, what))) => {
            if !req.matrices.is_empty() || req.initial_version.is_some() {
                return AnalysisError::invalid(
                    "model",
                    format!("{what} spectra take no matrices or initial_version"),
                )
                .into_response();
            }
            (source, true)
        }
        (Some(model), None) => {
            if !req.matrices.is_empty() {
                return AnalysisError::invalid(
                    "matrices",
                    "give either matrices or model, not both",
                )
                .into_response();
            }
            let Some(registry) = st.registry.as_ref() else {
                return error(
                    StatusCode::NOT_FOUND,
                    "this server serves no expert models".into(),
                    Some("model".into()),
                );
            };
            let weights = |v: &str| {
                registry
                    .version_dir(model, v)
                    .map(|d| d.join(offload_shared::repository::files::EXPERT_WEIGHTS))
            };
            let not_found = |e: crate::serve::registry::LookupError| {
                error(StatusCode::NOT_FOUND, e.to_string(), Some("model".into()))
            };
            let path = match weights(req.version.as_deref().unwrap_or("")) {
                Ok(p) => p,
                Err(e) => return not_found(e),
            };
            let init = match req.initial_version.as_deref().map(weights) {
                Some(Ok(p)) => Some(p),
                Some(Err(e)) => return not_found(e),
                None => None,
            };
            (Source::Files(path, init), true)
        }
        (None, _) => {
            if req.matrices.is_empty() {
                return AnalysisError::invalid("matrices", "give matrices (or a served model)")
                    .into_response();
            }
            let values: usize = req
                .matrices
                .iter()
                .chain(&req.initial)
                .flat_map(|m| &m.values)
                .map(Vec::len)
                .sum::<usize>()
                + directions;
            if values > st.limits.max_values {
                return AnalysisError::TooLarge(format!(
                    "matrices, initial and directions: {values} values exceed the limit of {}",
                    st.limits.max_values
                ))
                .into_response();
            }
            let m = match matrices(req.matrices, "matrices") {
                Ok(m) => m,
                Err(e) => return e.into_response(),
            };
            let i = match matrices(req.initial, "initial") {
                Ok(m) => m,
                Err(e) => return e.into_response(),
            };
            (Source::Uploaded(m, i), req.job)
        }
    };
    let f = move |p: &Progress| {
        run(source, &opts, p).map(|r| serde_json::to_value(r).unwrap_or_default())
    };
    if job {
        super::submit_job(&st, "spectrum", f)
    } else {
        super::compute_sync(&st, f).await
    }
}
