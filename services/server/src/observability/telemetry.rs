//! Logging to stderr, filtered by `RUST_LOG` (default `info`), and, when
//! configured, traces exported with OpenTelemetry over OTLP/gRPC.
//!
//! Whatever `RUST_LOG` says, the HTTP/2 and HTTP stacks are capped at `info`:
//! at `trace` they log raw header frames, and the caller's ID token travels in
//! a header. tokenbridge's own code never logs a token, a secret access key or
//! a session token at any level (a test reads trace-level logs to check).
//!
//! Traces (`[telemetry]`, off unless `otlp_endpoint` is set):
//!
//! | key | default | meaning |
//! | --- | --- | --- |
//! | `telemetry.otlp_endpoint` | none: tracing off | an OTLP/gRPC collector, `http://HOST:PORT` (plaintext: a collector on the node or in the pod) |
//! | `telemetry.sampling_ratio` | `1.0` | share of traces started here that are sampled (0.0..=1.0); a caller's `traceparent` decision is followed |
//! | `telemetry.service_name` | `tokenbridge` | the `service.name` resource attribute |
//!
//! Only tokenbridge's own spans are exported (`GetCredentials` ← W3C trace
//! context from the call's `traceparent` metadata, `exchange`,
//! `verify_token`, `jwks_fetch`, `policy_decision`, `credentials_cache`,
//! `sts_assume_role`); no log event and no other crate's span. Their
//! attributes are names, outcomes, the caller's `sub` and the role: never a
//! token, secret access key or session token (a test receives the spans and
//! scans every attribute). Spans are `debug`-level `tracing` spans, so with
//! tracing off they cost nothing on the hot path.

use std::{io::IsTerminal as _, time::Duration};

use opentelemetry::{
    propagation::{Extractor, TextMapPropagator as _},
    trace::{TraceContextExt as _, TracerProvider as _},
};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::{
    Resource,
    propagation::TraceContextPropagator,
    trace::{Sampler, SdkTracerProvider},
};
use tracing::{Level, Metadata, subscriber::Interest};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::{
    EnvFilter, Layer as _,
    filter::{Directive, LevelFilter},
    layer::{Context, Filter, SubscriberExt as _},
    util::SubscriberInitExt as _,
};

/// Targets whose trace output could contain request headers or bodies.
const CAPPED: [&str; 6] = [
    "h2",
    "hyper",
    "hyper_util",
    "reqwest",
    "aws_smithy_runtime",
    "aws_smithy_http_client",
];

/// How long one OTLP export may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// `[telemetry]` settings.
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetryConfig {
    /// The OTLP/gRPC collector; `None`: traces off.
    pub otlp_endpoint: Option<String>,
    /// Share of root traces sampled.
    pub sampling_ratio: f64,
    /// `service.name`.
    pub service_name: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            sampling_ratio: 1.0,
            service_name: "tokenbridge".into(),
        }
    }
}

/// Why tracing could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up the OTLP trace exporter: {0}")]
pub struct TelemetryError(String);

/// The installed telemetry; [`shutdown`](Self::shutdown) exports what is
/// still buffered.
#[derive(Debug)]
pub struct Telemetry {
    traces: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans still buffered and stops the exporter.
    pub async fn shutdown(self) {
        if let Some(provider) = self.traces {
            let done = tokio::task::spawn_blocking(move || provider.shutdown()).await;
            if let Ok(Err(e)) = done {
                tracing::warn!(error = %e, "trace export at shutdown failed");
            }
        }
    }
}

fn env_filter() -> EnvFilter {
    let mut filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    for target in CAPPED {
        if let Ok(directive) = format!("{target}=info").parse::<Directive>() {
            filter = filter.add_directive(directive);
        }
    }
    filter
}

/// Installs the global subscriber: logs only.
pub fn init() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(env_filter())
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(true)
        .try_init();
}

/// Installs the global subscriber: logs, and traces if `config` names a
/// collector. Must run inside a Tokio runtime when it does (the exporter's
/// gRPC channel lives there).
pub fn init_with(config: &TelemetryConfig) -> Result<Telemetry, TelemetryError> {
    let Some(endpoint) = &config.otlp_endpoint else {
        init();
        return Ok(Telemetry { traces: None });
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .with_timeout(EXPORT_TIMEOUT)
        .build()
        .map_err(|e| TelemetryError(e.to_string()))?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            config.sampling_ratio,
        ))))
        .with_resource(
            Resource::builder()
                .with_service_name(config.service_name.clone())
                .build(),
        )
        .build();
    let spans = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("tokenbridge"))
        .with_location(false)
        .with_threads(false)
        .with_target(false)
        .with_level(false)
        .with_tracked_inactivity(false)
        .with_filter(OwnSpans);
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(true)
        .with_filter(env_filter());
    let _ = tracing_subscriber::registry()
        .with(logs)
        .with(spans)
        .try_init();
    Ok(Telemetry {
        traces: Some(provider),
    })
}

/// What goes to the trace exporter: tokenbridge's own spans, at `debug` and
/// above; no events, no other crate's spans.
struct OwnSpans;

impl OwnSpans {
    fn wants(meta: &Metadata<'_>) -> bool {
        meta.is_span()
            && meta.target().starts_with("tokenbridge_server")
            && *meta.level() <= Level::DEBUG
    }
}

impl<S> Filter<S> for OwnSpans {
    fn enabled(&self, meta: &Metadata<'_>, _: &Context<'_, S>) -> bool {
        Self::wants(meta)
    }

    fn callsite_enabled(&self, meta: &'static Metadata<'static>) -> Interest {
        if Self::wants(meta) {
            Interest::always()
        } else {
            Interest::never()
        }
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(LevelFilter::DEBUG)
    }
}

/// The trace a call belongs to, for the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceIds {
    /// 32 lowercase hex digits.
    pub trace_id: String,
    /// This server's span for the call (16 hex digits), when traces are on.
    pub span_id: Option<String>,
    /// Whether the trace is sampled.
    pub sampled: bool,
}

/// Request headers as an OpenTelemetry propagation carrier.
struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// Joins `span` (a call's root span) to the W3C trace context of `headers`
/// (`traceparent`, `tracestate`), and returns the call's trace: the span's
/// own when traces are on, else the caller's (from `traceparent`), else
/// none. Reads nothing when traces are off and there is no `traceparent`.
pub fn join_trace(span: &tracing::Span, headers: &http::HeaderMap) -> Option<TraceIds> {
    let parent = headers
        .contains_key("traceparent")
        .then(|| TraceContextPropagator::new().extract(&Headers(headers)));
    if !span.is_disabled() {
        if let Some(cx) = &parent {
            let _ = span.set_parent(cx.clone());
        }
        let cx = span.context();
        let own = cx.span().span_context().clone();
        if own.is_valid() {
            return Some(TraceIds {
                trace_id: own.trace_id().to_string(),
                span_id: Some(own.span_id().to_string()),
                sampled: own.is_sampled(),
            });
        }
    }
    let cx = parent?;
    let theirs = cx.span().span_context().clone();
    theirs.is_valid().then(|| TraceIds {
        trace_id: theirs.trace_id().to_string(),
        span_id: None,
        sampled: theirs.is_sampled(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_callers_trace_is_used_when_traces_are_off() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(join_trace(&tracing::Span::none(), &headers), None);
        headers.insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        assert_eq!(
            join_trace(&tracing::Span::none(), &headers),
            Some(TraceIds {
                trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
                span_id: None,
                sampled: true,
            })
        );
        headers.insert("traceparent", "garbage".parse().unwrap());
        assert_eq!(join_trace(&tracing::Span::none(), &headers), None);
    }
}
