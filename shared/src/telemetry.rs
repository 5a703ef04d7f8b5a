//! Logs and traces: `tracing` everywhere, JSON logs in production (pretty on
//! a terminal), OpenTelemetry spans exported over OTLP when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set, and W3C trace context carried in gRPC
//! metadata so one trace spans checkout and billing.
use std::io::IsTerminal;

use opentelemetry::{
    global,
    propagation::{Extractor, Injector},
    trace::{TraceContextExt, TracerProvider as _},
};
use opentelemetry_sdk::{propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{EnvFilter, layer::SubscriberExt, util::SubscriberInitExt};

/// Flushes and stops the trace exporter when dropped.
#[must_use = "dropping the guard stops trace export"]
pub struct TelemetryGuard {
    provider: SdkTracerProvider,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        let _ = self.provider.shutdown();
    }
}

/// Installs the global subscriber. Safe to call more than once (tests): later
/// calls keep the first subscriber.
pub fn init(default_service_name: &str) -> anyhow::Result<TelemetryGuard> {
    global::set_text_map_propagator(TraceContextPropagator::new());
    let service_name = crate::config::env_opt("OTEL_SERVICE_NAME").unwrap_or_else(|| default_service_name.to_owned());
    let resource = opentelemetry_sdk::Resource::builder().with_service_name(service_name.clone()).build();
    let mut builder = SdkTracerProvider::builder().with_resource(resource);
    if let Some(endpoint) = crate::config::env_opt("OTEL_EXPORTER_OTLP_ENDPOINT") {
        use opentelemetry_otlp::WithExportConfig;
        let exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic().with_endpoint(endpoint).build()?;
        builder = builder.with_batch_exporter(exporter);
    }
    let provider = builder.build();
    // Spans get trace ids even without an exporter, so logs and INTERNAL
    // errors always carry one and the context still propagates downstream.
    let otel = tracing_opentelemetry::layer().with_tracer(provider.tracer(service_name));
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,opentelemetry=warn,opentelemetry_sdk=warn"));
    let json = match crate::config::env_opt("LOG_FORMAT").as_deref() {
        Some("json") => true,
        Some(_) => false,
        None => !std::io::stderr().is_terminal(),
    };
    let registry = tracing_subscriber::registry().with(filter).with(otel);
    let _ = if json {
        registry.with(tracing_subscriber::fmt::layer().json().with_current_span(true).with_span_list(false)).try_init()
    } else {
        registry.with(tracing_subscriber::fmt::layer().compact().with_writer(std::io::stderr)).try_init()
    };
    global::set_tracer_provider(provider.clone());
    Ok(TelemetryGuard { provider })
}

struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) =
            (tonic::metadata::MetadataKey::from_bytes(key.as_bytes()), tonic::metadata::MetadataValue::try_from(value.as_str()))
        {
            self.0.insert(k, v);
        }
    }
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// Writes the current span's context (`traceparent`) into outgoing metadata.
pub fn inject_current(metadata: &mut tonic::metadata::MetadataMap) {
    let cx = tracing::Span::current().context();
    global::get_text_map_propagator(|p| p.inject_context(&cx, &mut MetadataInjector(metadata)));
}

/// The server-side span of one RPC, child of the caller's trace if the
/// request carried `traceparent`. Used as tonic's `trace_fn`.
pub fn server_span(req: &http::Request<()>) -> tracing::Span {
    let parent = global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(req.headers())));
    let span = tracing::info_span!("grpc", rpc = %req.uri().path(), otel.kind = "server");
    let _ = span.set_parent(parent);
    span
}

/// Trace id of the current span, if any (for error messages and logs).
pub fn current_trace_id() -> Option<String> {
    let cx = tracing::Span::current().context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| sc.trace_id().to_string())
}
