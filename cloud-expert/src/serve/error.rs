//! Why a request failed, and the one mapping from that to gRPC and HTTP statuses.
//!
//! | error | gRPC | HTTP |
//! |---|---|---|
//! | malformed input (dtype, shape, bytes, NaN/Inf, JSON) | INVALID_ARGUMENT | 400 |
//! | rows over `--max-rows` | INVALID_ARGUMENT | 422 |
//! | body over `--max-message-bytes` | OUT_OF_RANGE (tonic) | 413 |
//! | model queue full (`--queue-depth`) | UNAVAILABLE | 503 + Retry-After |
//! | requests in flight over `--max-in-flight` | UNAVAILABLE | 503 + Retry-After |
//! | device over `--rate-per-device` | RESOURCE_EXHAUSTED | 429 + Retry-After |
//! | no/invalid credential | UNAUTHENTICATED | 401 |
//! | model not allowed for this device, or admin-only | PERMISSION_DENIED | 403 |
//! | unknown model or version | NOT_FOUND | 404 |
//! | bundle for another legacy model | FAILED_PRECONDITION | 412 |
//! | admin load: a version failed to load (previous ones serve) | FAILED_PRECONDITION | 409 |
//! | client deadline passed before compute | DEADLINE_EXCEEDED | 504 |
//! | server shutting down / not ready | UNAVAILABLE | 503 |
//! | anything else (details only in the log) | INTERNAL | 500 |

use super::registry::LookupError;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use offload_shared::wire::WireError;
use tonic::Status;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Malformed or unusable input.
    #[error(transparent)]
    Input(#[from] WireError),
    /// A request body that is not valid JSON or not the expected shape.
    #[error("malformed request body: {0}")]
    Body(String),
    /// The body exceeds the message size limit.
    #[error("request body of {got} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Bytes received (or announced).
        got: usize,
        /// The limit.
        max: usize,
    },
    /// Unknown model or version.
    #[error("{0}")]
    NotFound(String),
    /// The bundle is not for the caller's legacy model.
    #[error("{0}")]
    Precondition(String),
    /// The model's queue is full.
    #[error(
        "model `{0}` is overloaded: exceeds maximum queue size; retry later or answer locally"
    )]
    Overloaded(String),
    /// More requests in flight than `--max-in-flight`.
    #[error("server is at its limit of {0} requests in flight; retry later or answer locally")]
    TooBusy(usize),
    /// The device sent more requests than its rate allows.
    #[error("device `{0}` exceeds its request rate; retry later")]
    RateLimited(String),
    /// No valid credential.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// Authenticated, but not allowed.
    #[error("permission denied: {0}")]
    Forbidden(String),
    /// The client deadline passed before compute.
    #[error("deadline exceeded before the expert ran")]
    Deadline,
    /// Shutting down or not yet ready.
    #[error("server is not ready")]
    NotReady,
    /// An administrative load found versions that do not load (the previous ones keep serving).
    #[error("{0}")]
    LoadFailed(String),
    /// Anything else; details are logged, not sent.
    #[error("internal error")]
    Internal(String),
}

impl From<LookupError> for ServeError {
    fn from(e: LookupError) -> Self {
        ServeError::NotFound(e.to_string())
    }
}

impl ServeError {
    /// The limit this error reports hitting, if any (the `limit` label of `cloud_rejected_total`).
    pub fn limit(&self) -> Option<&'static str> {
        match self {
            ServeError::Input(WireError::TooManyRows { .. }) => Some("batch_rows"),
            ServeError::TooLarge { .. } => Some("message_size"),
            ServeError::Overloaded(_) => Some("queue_full"),
            ServeError::TooBusy(_) => Some("in_flight"),
            ServeError::RateLimited(_) => Some("rate"),
            _ => None,
        }
    }

    /// The gRPC code.
    pub fn code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            ServeError::Input(_) | ServeError::Body(_) => Code::InvalidArgument,
            ServeError::TooLarge { .. } => Code::OutOfRange,
            ServeError::NotFound(_) => Code::NotFound,
            ServeError::Precondition(_) | ServeError::LoadFailed(_) => Code::FailedPrecondition,
            ServeError::Overloaded(_) | ServeError::TooBusy(_) | ServeError::NotReady => {
                Code::Unavailable
            }
            ServeError::RateLimited(_) => Code::ResourceExhausted,
            ServeError::Unauthenticated(_) => Code::Unauthenticated,
            ServeError::Forbidden(_) => Code::PermissionDenied,
            ServeError::Deadline => Code::DeadlineExceeded,
            ServeError::Internal(_) => Code::Internal,
        }
    }

    /// The HTTP status.
    pub fn http_status(&self) -> StatusCode {
        match self {
            ServeError::Input(WireError::TooManyRows { .. }) => StatusCode::UNPROCESSABLE_ENTITY,
            ServeError::Input(_) | ServeError::Body(_) => StatusCode::BAD_REQUEST,
            ServeError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ServeError::NotFound(_) => StatusCode::NOT_FOUND,
            ServeError::Precondition(_) => StatusCode::PRECONDITION_FAILED,
            ServeError::LoadFailed(_) => StatusCode::CONFLICT,
            ServeError::Overloaded(_) | ServeError::TooBusy(_) | ServeError::NotReady => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ServeError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            ServeError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            ServeError::Forbidden(_) => StatusCode::FORBIDDEN,
            ServeError::Deadline => StatusCode::GATEWAY_TIMEOUT,
            ServeError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The message sent to the client (internal details are logged instead).
    fn public_message(&self) -> String {
        if let ServeError::Internal(detail) = self {
            tracing::error!(%detail, "internal error");
        }
        self.to_string()
    }

    /// The single mapping from errors to gRPC statuses.
    pub fn into_status(self) -> Status {
        Status::new(self.code(), self.public_message())
    }
}

/// Short status label for metrics.
pub fn code_label(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "ok",
        Code::InvalidArgument => "invalid_argument",
        Code::OutOfRange => "out_of_range",
        Code::NotFound => "not_found",
        Code::FailedPrecondition => "failed_precondition",
        Code::Unavailable => "unavailable",
        Code::ResourceExhausted => "resource_exhausted",
        Code::Unauthenticated => "unauthenticated",
        Code::PermissionDenied => "permission_denied",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::Cancelled => "cancelled",
        _ => "internal",
    }
}

/// The single mapping from errors to HTTP responses: `{"error": "..."}` with the status above;
/// overload and rate limits add `Retry-After: 1`.
impl IntoResponse for ServeError {
    fn into_response(self) -> Response {
        let status = self.http_status();
        let retry = matches!(
            self,
            ServeError::Overloaded(_)
                | ServeError::TooBusy(_)
                | ServeError::RateLimited(_)
                | ServeError::NotReady
        );
        let body = axum::Json(serde_json::json!({ "error": self.public_message() }));
        if retry {
            (status, [("retry-after", "1")], body).into_response()
        } else {
            (status, body).into_response()
        }
    }
}
