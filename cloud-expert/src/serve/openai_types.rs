//! Request and response bodies of the OpenAI-compatible API, its error shape, and the checks
//! that turn a request into validated generation settings.

use crate::llm::sampling::SamplingParams;
use crate::llm::tokenizer::ChatMessage;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{json, Value};

/// An error in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Human-readable reason.
    pub message: String,
    /// OpenAI error type.
    pub kind: &'static str,
    /// The offending field.
    pub param: Option<String>,
    /// Machine-readable code.
    pub code: Option<&'static str>,
}

impl ApiError {
    /// 400 `invalid_request_error` about `param`.
    pub fn invalid(param: &str, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: (!param.is_empty()).then(|| param.to_string()),
            code: None,
        }
    }

    /// 404 `model_not_found`.
    pub fn unknown_model(model: &str) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            message: format!("The model `{model}` does not exist (see GET /v1/models)."),
            kind: "invalid_request_error",
            param: Some("model".into()),
            code: Some("model_not_found"),
        }
    }

    /// Any status with a type and code.
    pub fn new(
        status: StatusCode,
        kind: &'static str,
        code: Option<&'static str>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            status,
            message: message.into(),
            kind,
            param: None,
            code,
        }
    }

    /// The JSON body.
    pub fn body(&self) -> Value {
        json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, axum::Json(self.body())).into_response();
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            r.headers_mut()
                .insert("retry-after", axum::http::HeaderValue::from_static("1"));
        }
        r
    }
}

/// `stop`: one string or up to four.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    /// One.
    One(String),
    /// Several.
    Many(Vec<String>),
}

/// `prompt`: a string, or a one-element list of strings.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    /// Text.
    Text(String),
    /// A list (only one element is served: `n` prompts per request is not supported).
    List(Vec<String>),
}

/// `stream_options`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamOptions {
    /// Send a final chunk with usage.
    #[serde(default)]
    pub include_usage: bool,
}

/// Fields shared by both endpoints.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Common {
    /// Base model or adapter name.
    pub model: Option<String>,
    /// Most tokens to generate.
    pub max_tokens: Option<i64>,
    /// Chat's newer name for `max_tokens`.
    pub max_completion_tokens: Option<i64>,
    /// 0..=2.
    pub temperature: Option<f32>,
    /// (0, 1].
    pub top_p: Option<f32>,
    /// Extension (vLLM's): keep the k most likely tokens.
    pub top_k: Option<i64>,
    /// Stop strings.
    pub stop: Option<Stop>,
    /// Seed.
    pub seed: Option<i64>,
    /// Server-sent events.
    #[serde(default)]
    pub stream: bool,
    /// Streaming options.
    pub stream_options: Option<StreamOptions>,
    /// Must be 1.
    pub n: Option<i64>,
    /// Not supported when set.
    pub logprobs: Option<Value>,
    /// Not supported when true.
    pub echo: Option<bool>,
    /// Extension (vLLM's): keep generating past end-of-sequence tokens.
    #[serde(default)]
    pub ignore_eos: bool,
}

/// `POST /v1/completions`.
#[derive(Debug, Clone, Deserialize)]
pub struct CompletionRequest {
    /// The prompt.
    pub prompt: Option<Prompt>,
    /// Shared fields.
    #[serde(flatten)]
    pub common: Common,
}

/// A chat message's content: text, or a list of parts of which the text ones are used.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Content {
    /// Plain text.
    Text(String),
    /// Parts (`{"type": "text", "text": ...}`).
    Parts(Vec<Value>),
}

/// One incoming chat message.
#[derive(Debug, Clone, Deserialize)]
pub struct InMessage {
    /// Role.
    pub role: String,
    /// Content.
    pub content: Option<Content>,
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatRequest {
    /// The conversation.
    pub messages: Vec<InMessage>,
    /// Shared fields.
    #[serde(flatten)]
    pub common: Common,
}

/// `POST /v1/adapters`.
#[derive(Debug, Clone, Deserialize)]
pub struct LoadAdapter {
    /// Name to serve it under (the `model` field).
    pub name: String,
    /// Adapter directory.
    pub path: std::path::PathBuf,
}

/// Validated generation settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Model field.
    pub model: String,
    /// Sampling.
    pub sampling: SamplingParams,
    /// Most tokens.
    pub max_tokens: usize,
    /// Stop strings.
    pub stop: Vec<String>,
    /// Streaming.
    pub stream: bool,
    /// Usage chunk when streaming.
    pub include_usage: bool,
    /// Generate past EOS.
    pub ignore_eos: bool,
}

/// Parses a JSON body, turning serde's message into an OpenAI 400.
pub fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid("", format!("invalid request body: {e}")))
}

impl Common {
    /// Checks ranges; `default_max` applies when no `max_tokens` is given.
    pub fn settings(&self, default_max: usize) -> Result<Settings, ApiError> {
        let model = self
            .model
            .clone()
            .filter(|m| !m.is_empty())
            .ok_or_else(|| ApiError::invalid("model", "`model` is required"))?;
        let temperature = self.temperature.unwrap_or(1.0);
        if !(0.0..=2.0).contains(&temperature) {
            return Err(ApiError::invalid(
                "temperature",
                format!("temperature {temperature} is outside [0, 2]"),
            ));
        }
        let top_p = self.top_p.unwrap_or(1.0);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(ApiError::invalid(
                "top_p",
                format!("top_p {top_p} is outside (0, 1]"),
            ));
        }
        let top_k = self.top_k.unwrap_or(0);
        if top_k < 0 {
            return Err(ApiError::invalid("top_k", "top_k must be >= 0"));
        }
        let max = self.max_completion_tokens.or(self.max_tokens);
        let max_tokens = match max {
            None => default_max,
            Some(m) if m >= 1 => m as usize,
            Some(m) => {
                return Err(ApiError::invalid(
                    "max_tokens",
                    format!("max_tokens must be at least 1 (got {m})"),
                ))
            }
        };
        if self.n.is_some_and(|n| n != 1) {
            return Err(ApiError::invalid("n", "only n = 1 is supported"));
        }
        if self
            .logprobs
            .as_ref()
            .is_some_and(|v| !v.is_null() && v != &Value::Bool(false))
        {
            return Err(ApiError::invalid("logprobs", "logprobs are not supported"));
        }
        if self.echo == Some(true) {
            return Err(ApiError::invalid("echo", "echo is not supported"));
        }
        let stop = match &self.stop {
            None => vec![],
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        };
        if stop.len() > 4 {
            return Err(ApiError::invalid("stop", "at most 4 stop sequences"));
        }
        Ok(Settings {
            model,
            sampling: SamplingParams {
                temperature,
                top_p,
                top_k: top_k as usize,
                seed: self.seed.map(|s| s as u64),
            },
            max_tokens,
            stop: stop.into_iter().filter(|s| !s.is_empty()).collect(),
            stream: self.stream,
            include_usage: self
                .stream_options
                .as_ref()
                .is_some_and(|o| o.include_usage),
            ignore_eos: self.ignore_eos,
        })
    }
}

impl CompletionRequest {
    /// The prompt text.
    pub fn text(&self) -> Result<String, ApiError> {
        match &self.prompt {
            Some(Prompt::Text(t)) => Ok(t.clone()),
            Some(Prompt::List(v)) if v.len() == 1 => Ok(v[0].clone()),
            Some(Prompt::List(_)) => Err(ApiError::invalid(
                "prompt",
                "exactly one prompt per request is supported",
            )),
            None => Err(ApiError::invalid("prompt", "`prompt` is required")),
        }
    }
}

impl ChatRequest {
    /// Messages for the chat template.
    pub fn messages(&self) -> Result<Vec<ChatMessage>, ApiError> {
        if self.messages.is_empty() {
            return Err(ApiError::invalid(
                "messages",
                "`messages` must not be empty",
            ));
        }
        self.messages
            .iter()
            .enumerate()
            .map(|(i, m)| {
                if !["system", "user", "assistant", "developer"].contains(&m.role.as_str()) {
                    return Err(ApiError::invalid(
                        &format!("messages[{i}].role"),
                        format!("unsupported role `{}`", m.role),
                    ));
                }
                let content = match &m.content {
                    None => String::new(),
                    Some(Content::Text(t)) => t.clone(),
                    Some(Content::Parts(parts)) => parts
                        .iter()
                        .map(|p| match (p["type"].as_str(), p["text"].as_str()) {
                            (Some("text"), Some(t)) => Ok(t.to_string()),
                            _ => Err(ApiError::invalid(
                                &format!("messages[{i}].content"),
                                "only text content parts are supported",
                            )),
                        })
                        .collect::<Result<Vec<_>, _>>()?
                        .join(""),
                };
                let role = if m.role == "developer" {
                    "system"
                } else {
                    &m.role
                };
                Ok(ChatMessage {
                    role: role.to_string(),
                    content,
                })
            })
            .collect()
    }
}
