//! Logging and tracing set-up: human-readable or JSON log lines on stderr (filtered by
//! `RUST_LOG`, default info) and, in builds with the `otlp` feature, request spans exported to
//! an OpenTelemetry collector over OTLP/HTTP when `--otlp-endpoint` is given.

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// Keeps the trace exporter alive; flushes pending spans when dropped.
#[derive(Debug, Default)]
pub struct Telemetry {
    #[cfg(feature = "otlp")]
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Telemetry {
    /// Exports every finished span now (used before exit and by tests).
    pub fn flush(&self) {
        #[cfg(feature = "otlp")]
        if let Some(p) = &self.provider {
            let _ = p.force_flush();
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        #[cfg(feature = "otlp")]
        if let Some(p) = self.provider.take() {
            let _ = p.shutdown();
        }
    }
}

/// Why telemetry could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// `--otlp-endpoint` was given to a build without the `otlp` feature.
    #[error("--otlp-endpoint needs a build with `--features otlp`")]
    NotBuilt,
    /// The exporter could not be built.
    #[error("otlp exporter: {0}")]
    Exporter(String),
}

/// Initialises logging (and tracing export) once for the process.
pub fn init(json: bool, otlp_endpoint: Option<&str>) -> Result<Telemetry, TelemetryError> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = if json {
        fmt.json().boxed()
    } else {
        fmt.boxed()
    };
    let registry = tracing_subscriber::registry().with(fmt.with_filter(filter));
    let Some(endpoint) = otlp_endpoint else {
        let _ = registry.try_init();
        return Ok(Telemetry::default());
    };
    #[cfg(feature = "otlp")]
    {
        let (layer, provider) = otlp_layer(endpoint)?;
        let _ = registry.with(layer).try_init();
        tracing::info!(%endpoint, "exporting traces over OTLP/HTTP");
        Ok(Telemetry {
            provider: Some(provider),
        })
    }
    #[cfg(not(feature = "otlp"))]
    {
        let _ = (registry, endpoint);
        Err(TelemetryError::NotBuilt)
    }
}

/// The tracing layer exporting INFO-and-above spans to `endpoint` (OTLP/HTTP protobuf, the
/// collector's port 4318; `/v1/traces` is appended when the path is missing).
#[cfg(feature = "otlp")]
pub fn otlp_layer<S>(
    endpoint: &str,
) -> Result<(impl Layer<S>, opentelemetry_sdk::trace::SdkTracerProvider), TelemetryError>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a> + Send + Sync,
{
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::WithExportConfig;
    let url = if endpoint.trim_end_matches('/').ends_with("/v1/traces") {
        endpoint.to_string()
    } else {
        format!("{}/v1/traces", endpoint.trim_end_matches('/'))
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(url)
        .build()
        .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name("cloud-expert")
                .build(),
        )
        .build();
    let tracer = provider.tracer("cloud-expert");
    let layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(tracing_subscriber::filter::LevelFilter::INFO);
    Ok((layer, provider))
}
