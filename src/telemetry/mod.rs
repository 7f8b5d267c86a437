//! Logging and OpenTelemetry setup: `tracing` with pretty or JSON output
//! (filtered by `RUST_LOG`, default `info`) and, when
//! `telemetry.otlp_endpoint` is set, every span exported over OTLP/gRPC
//! (a `check` span per Check, the poller's `sync` spans, …) plus the decision
//! counters and Check latency as OTLP metrics.
//!
//! The pieces are separate functions so tests can build the same layers into
//! a subscriber of their own ([`json_layer`], [`otel_layer`]). The returned
//! guards flush and shut the exporters down when dropped; drop them last.

pub mod log_line;
pub mod log_writer;
pub mod metrics;

use opentelemetry::{
    KeyValue,
    metrics::{Counter, Histogram},
    propagation::TextMapPropagator,
    trace::TracerProvider as _,
};
use opentelemetry_sdk::{
    Resource, metrics::SdkMeterProvider, propagation::TraceContextPropagator,
    trace::SdkTracerProvider,
};
use serde::Deserialize;
use tracing::Subscriber;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{
    EnvFilter, Layer, fmt, fmt::MakeWriter, prelude::*, registry::LookupSpan,
};

use crate::identity::Headers;

/// Log format and OpenTelemetry export.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    #[serde(default)]
    pub log_format: LogFormat,
    /// OTLP/gRPC endpoint, e.g. `http://otel-collector:4317`.
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
}

/// Log format: `auto` (default), `pretty` or `json`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Pretty when the log stream (stdout) is a terminal, JSON otherwise:
    /// a container's log file gets JSON, which is also the faster writer.
    #[default]
    Auto,
    /// Compact human-readable lines; colours only on a terminal.
    Pretty,
    /// One JSON object per line, batched.
    Json,
}

impl LogFormat {
    /// The format to write with, `auto` decided by whether the log stream
    /// is a terminal.
    pub fn resolve(self, terminal: bool) -> Self {
        match self {
            Self::Auto if terminal => Self::Pretty,
            Self::Auto => Self::Json,
            chosen => chosen,
        }
    }
}

/// Why the OTLP exporters could not be built.
#[derive(Debug, thiserror::Error)]
#[error("telemetry.otlp_endpoint: {0}")]
pub struct OtlpError(String);

/// Flushes and shuts down the OTLP exporters when dropped. Keep it alive for
/// the process lifetime. Dropping it blocks until the exporters are done, so
/// do not drop it on a single-threaded runtime's only thread.
#[derive(Debug, Default)]
pub struct TelemetryGuard {
    tracer: Option<SdkTracerProvider>,
    meter: Option<SdkMeterProvider>,
    /// Flushes the buffered log writer (every line, none dropped) on drop.
    log: Option<crate::telemetry::log_writer::FlushGuard<std::io::Stdout>>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(tracer) = self.tracer.take() {
            let _ = tracer.force_flush();
            if let Err(error) = tracer.shutdown() {
                eprintln!("otlp trace exporter shutdown: {error}");
            }
        }
        if let Some(meter) = self.meter.take() {
            let _ = meter.force_flush();
            if let Err(error) = meter.shutdown() {
                eprintln!("otlp metric exporter shutdown: {error}");
            }
        }
    }
}

/// Installs the global subscriber (and, with an endpoint, the OTLP
/// exporters). Safe to call once per process; must run inside a Tokio
/// runtime when an endpoint is set.
pub fn init(config: &TelemetryConfig) -> TelemetryGuard {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (otel, mut guard) = match config.otlp_endpoint.as_deref().map(otel_layer) {
        Some(Ok((layer, guard))) => (Some(layer), guard),
        Some(Err(error)) => {
            eprintln!("{error}; continuing without OpenTelemetry");
            (None, TelemetryGuard::default())
        }
        None => (None, TelemetryGuard::default()),
    };
    let registry = tracing_subscriber::registry().with(otel).with(filter);
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let result = match config.log_format.resolve(terminal) {
        LogFormat::Json => {
            // One decision line per Check: batch them (lossless, bounded)
            // instead of one write(2) per line on the request path.
            let (writer, log_guard) =
                crate::telemetry::log_writer::BatchWriter::new(std::io::stdout());
            guard.log = Some(log_guard);
            registry.with(json_layer(writer)).try_init()
        }
        // Never ANSI colour escapes into a file or pipe.
        LogFormat::Pretty | LogFormat::Auto => registry
            .with(fmt::layer().compact().with_ansi(terminal))
            .try_init(),
    };
    if let Err(error) = result {
        eprintln!("logging was already initialised: {error}");
    }
    guard
}

/// Set once an OpenTelemetry layer exists: only then is a per-Check span
/// worth its cost (the logs carry the decision line without one).
static SPANS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// True when spans are exported (an OTLP layer was built).
pub fn spans_enabled() -> bool {
    SPANS.load(std::sync::atomic::Ordering::Relaxed)
}

/// One JSON object per line, event fields at the top level (so the decision
/// log's `request_id`, `route`, `decision`, … are plain keys).
pub fn json_layer<S, W>(writer: W) -> impl Layer<S> + Send + Sync + 'static
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    fmt::layer()
        .event_format(crate::telemetry::log_line::JsonLine)
        .with_writer(writer)
}

/// A layer exporting every span to the OTLP/gRPC collector at `endpoint`,
/// and the OTLP metric pipeline (installed as the global meter provider so
/// [`OtelInstruments`] reach it). Must be called inside a Tokio runtime.
pub fn otel_layer<S>(endpoint: &str) -> Result<(impl Layer<S> + use<S>, TelemetryGuard), OtlpError>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    use opentelemetry_otlp::WithExportConfig;
    SPANS.store(true, std::sync::atomic::Ordering::Relaxed);
    let resource = Resource::builder().with_service_name("fleet-authz").build();
    let spans = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .map_err(|e| OtlpError(e.to_string()))?;
    let tracer_provider = SdkTracerProvider::builder()
        .with_batch_exporter(spans)
        .with_resource(resource.clone())
        .build();
    let metrics = opentelemetry_otlp::MetricExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .map_err(|e| OtlpError(e.to_string()))?;
    let meter_provider = SdkMeterProvider::builder()
        .with_periodic_exporter(metrics)
        .with_resource(resource)
        .build();
    opentelemetry::global::set_meter_provider(meter_provider.clone());
    let layer = tracing_opentelemetry::layer().with_tracer(tracer_provider.tracer("fleet-authz"));
    Ok((
        layer,
        TelemetryGuard {
            tracer: Some(tracer_provider),
            meter: Some(meter_provider),
            log: None,
        },
    ))
}

/// Makes `span` a child of the W3C `traceparent` (and `tracestate`) in the
/// request headers Envoy forwards, so a Check joins the caller's trace.
/// Without a valid `traceparent` the span starts a trace of its own.
pub fn set_parent_from_headers(span: &tracing::Span, headers: &impl Headers) {
    if headers.header("traceparent").is_none() {
        return;
    }
    let parent = TraceContextPropagator::new().extract(&TraceHeaders(headers));
    // Fails only when no OpenTelemetry layer is installed: nothing to join.
    let _ = span.set_parent(parent);
}

/// The trace-context headers of a request, for the propagator.
struct TraceHeaders<'a, H>(&'a H);

impl<H: Headers> opentelemetry::propagation::Extractor for TraceHeaders<'_, H> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.header(key)
    }

    fn keys(&self) -> Vec<&str> {
        ["traceparent", "tracestate"]
            .into_iter()
            .filter(|k| self.0.header(k).is_some())
            .collect()
    }
}

/// The span a posture sync cycle runs in (`sync`), for the Fleet poller:
/// `poll_once().instrument(telemetry::sync_span("fleet"))`, then record
/// `hosts` and `result` on it. Exported over OTLP like every span.
pub fn sync_span(source: &'static str) -> tracing::Span {
    tracing::info_span!(
        "sync",
        source,
        hosts = tracing::field::Empty,
        result = tracing::field::Empty
    )
}

/// The decision counter and Check latency mirrored as OTLP metrics. Created
/// from the global meter provider, so they are no-ops without an endpoint.
#[derive(Debug)]
pub struct OtelInstruments {
    /// False when no OTLP endpoint is configured: recording is skipped
    /// rather than building attributes for a no-op meter on every Check.
    enabled: bool,
    decisions: Counter<u64>,
    check_duration: Histogram<f64>,
}

impl Default for OtelInstruments {
    fn default() -> Self {
        let meter = opentelemetry::global::meter("fleet-authz");
        Self {
            enabled: spans_enabled(),
            decisions: meter
                .u64_counter("fleet_authz.decisions")
                .with_description("Check decisions by decision, first reason kind and route")
                .build(),
            check_duration: meter
                .f64_histogram("fleet_authz.check.duration")
                .with_unit("s")
                .with_description("Time to answer a Check")
                // The SDK's default bounds are 0, 5, 10, … (s here):
                // every Check would fall in one bucket.
                .with_boundaries(crate::telemetry::metrics::check_duration_bounds().collect())
                .build(),
        }
    }
}

impl OtelInstruments {
    /// Records one decision.
    pub fn record(&self, decision: &'static str, reason: &'static str, route: &str, secs: f64) {
        if !self.enabled {
            return;
        }
        let attributes = [
            KeyValue::new("decision", decision),
            KeyValue::new("reason", reason),
            KeyValue::new("route", route.to_owned()),
        ];
        self.decisions.add(1, &attributes);
        self.check_duration.record(secs, &attributes[2..]);
    }
}

#[cfg(test)]
mod tests {
    use super::{LogFormat, TelemetryConfig};

    #[test]
    fn auto_is_json_off_a_terminal_and_the_default() {
        assert_eq!(TelemetryConfig::default().log_format, LogFormat::Auto);
        assert_eq!(LogFormat::Auto.resolve(false), LogFormat::Json);
        assert_eq!(LogFormat::Auto.resolve(true), LogFormat::Pretty);
        assert_eq!(LogFormat::Pretty.resolve(false), LogFormat::Pretty);
        assert_eq!(LogFormat::Json.resolve(true), LogFormat::Json);
    }
}
