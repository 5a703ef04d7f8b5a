//! Logs, traces and metrics: `tracing` everywhere, JSON logs in production
//! (pretty on a terminal) carrying the OpenTelemetry `trace_id` and `span_id`
//! of the span they were emitted in, OpenTelemetry spans and metrics
//! ([`crate::metrics`]) exported over OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT`
//! is set, and W3C trace context carried in gRPC metadata so one trace spans
//! checkout and billing.
use std::{fmt, io::IsTerminal};

use opentelemetry::{
    global,
    propagation::{Extractor, Injector},
    trace::{TraceContextExt, TracerProvider as _},
};
use opentelemetry_sdk::{
    Resource,
    metrics::{SdkMeterProvider, exporter::PushMetricExporter},
    propagation::TraceContextPropagator,
    trace::{SdkTracerProvider, SpanExporter},
};
use tracing::{Event, Subscriber};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{
    EnvFilter,
    fmt::{
        FmtContext, FormatEvent, FormatFields,
        format::{Format, Json, Writer},
    },
    layer::SubscriberExt,
    registry::LookupSpan,
    util::SubscriberInitExt,
};

/// Flushes and stops trace and metric export when dropped.
#[must_use = "dropping the guard stops trace and metric export"]
pub struct TelemetryGuard {
    tracer: SdkTracerProvider,
    meter: SdkMeterProvider,
}

impl TelemetryGuard {
    /// Exports every finished span and the current metric values now.
    pub fn force_flush(&self) -> anyhow::Result<()> {
        self.tracer.force_flush()?;
        self.meter.force_flush()?;
        Ok(())
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        let _ = self.tracer.shutdown();
        let _ = self.meter.shutdown();
    }
}

/// Installs the global subscriber, tracer and meter providers. Safe to call
/// more than once (tests): later calls keep the first ones.
pub fn init(default_service_name: &str) -> anyhow::Result<TelemetryGuard> {
    install(default_service_name, DEFAULT_FILTER, |t| t, |m| m)
}

/// Like [`init`] with warnings only unless `RUST_LOG` says otherwise: the
/// in-process services of system tests would otherwise flood test output.
pub fn init_quiet(default_service_name: &str) -> anyhow::Result<TelemetryGuard> {
    install(default_service_name, "warn", |t| t, |m| m)
}

pub(crate) const DEFAULT_FILTER: &str = "info,opentelemetry=warn,opentelemetry_sdk=warn";

/// Like [`init`], and also sends every span, as it ends, to `spans` and
/// metrics (on [`TelemetryGuard::force_flush`] and periodically) to
/// `metrics`: for tests with in-memory exporters. To be the subscriber that
/// is used, it must be the first one installed in the process.
pub fn init_with_exporters<S, M>(default_service_name: &str, spans: S, metrics: M) -> anyhow::Result<TelemetryGuard>
where
    S: SpanExporter + 'static,
    M: PushMetricExporter,
{
    install(default_service_name, DEFAULT_FILTER, |t| t.with_simple_exporter(spans), |m| m.with_periodic_exporter(metrics))
}

fn install(
    default_service_name: &str,
    default_filter: &str,
    extra_spans: impl FnOnce(opentelemetry_sdk::trace::TracerProviderBuilder) -> opentelemetry_sdk::trace::TracerProviderBuilder,
    extra_metrics: impl FnOnce(opentelemetry_sdk::metrics::MeterProviderBuilder) -> opentelemetry_sdk::metrics::MeterProviderBuilder,
) -> anyhow::Result<TelemetryGuard> {
    global::set_text_map_propagator(TraceContextPropagator::new());
    let service_name = crate::config::env_opt("OTEL_SERVICE_NAME").unwrap_or_else(|| default_service_name.to_owned());
    let resource = Resource::builder().with_service_name(service_name.clone()).build();
    let mut tracer = SdkTracerProvider::builder().with_resource(resource.clone());
    // Without a reader nothing is aggregated: recording is close to free.
    let mut meter = SdkMeterProvider::builder().with_resource(resource);
    if let Some(endpoint) = crate::config::env_opt("OTEL_EXPORTER_OTLP_ENDPOINT") {
        use opentelemetry_otlp::WithExportConfig;
        let spans = opentelemetry_otlp::SpanExporter::builder().with_tonic().with_endpoint(endpoint.clone()).build()?;
        tracer = tracer.with_batch_exporter(spans);
        let metrics = opentelemetry_otlp::MetricExporter::builder().with_tonic().with_endpoint(endpoint).build()?;
        meter = meter.with_periodic_exporter(metrics);
    }
    let tracer = extra_spans(tracer).build();
    let meter = extra_metrics(meter).build();
    // Spans get trace ids even without an exporter, so logs and INTERNAL
    // errors always carry one and the context still propagates downstream.
    // Busy/idle timing, thread ids and code locations cost a clock read or
    // more on every poll of every instrumented future; the hot paths do not
    // need them.
    let otel = tracing_opentelemetry::layer()
        .with_tracked_inactivity(false)
        .with_threads(false)
        .with_location(false)
        .with_tracer(tracer.tracer(service_name));
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let json = match crate::config::env_opt("LOG_FORMAT").as_deref() {
        Some("json") => true,
        Some(_) => false,
        None => !std::io::stderr().is_terminal(),
    };
    let registry = tracing_subscriber::registry().with(filter).with(otel);
    let installed = if json {
        registry.with(json_layer().with_writer(std::io::stderr)).try_init()
    } else {
        registry.with(tracing_subscriber::fmt::layer().compact().with_writer(std::io::stderr)).try_init()
    };
    // First one wins for the providers too, so they match the subscriber.
    if installed.is_ok() {
        global::set_tracer_provider(tracer.clone());
        global::set_meter_provider(meter.clone());
    }
    Ok(TelemetryGuard { tracer, meter })
}

/// The JSON log layer: one object per line, with the current span's fields
/// and, inside a span, its OpenTelemetry `trace_id` and `span_id`.
fn json_layer<S>() -> tracing_subscriber::fmt::Layer<S, tracing_subscriber::fmt::format::JsonFields, JsonWithTraceIds>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    let format = tracing_subscriber::fmt::format().json().with_current_span(true).with_span_list(false);
    tracing_subscriber::fmt::layer().json().event_format(JsonWithTraceIds(format))
}

/// `tracing-subscriber`'s JSON event format plus `trace_id` and `span_id`.
/// The ids come from the OpenTelemetry context that `tracing-opentelemetry`
/// attaches while a span is entered (context activation, on by default), so
/// they are the ids exported with the span and propagated downstream.
struct JsonWithTraceIds(Format<Json>);

impl<S, N> FormatEvent<S, N> for JsonWithTraceIds
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let cx = opentelemetry::Context::current();
        let span = cx.span();
        let sc = span.span_context();
        if !sc.is_valid() {
            return self.0.format_event(ctx, writer, event);
        }
        let mut line = String::with_capacity(256);
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        // The inner format writes exactly one JSON object and a newline.
        match line.trim_end().strip_suffix('}') {
            Some(object) => {
                let sep = if object.ends_with('{') { "" } else { "," };
                writeln!(writer, "{object}{sep}\"trace_id\":\"{}\",\"span_id\":\"{}\"}}", sc.trace_id(), sc.span_id())
            }
            None => writer.write_str(&line),
        }
    }
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
    let span = tracing::info_span!("grpc", rpc = req.uri().path(), otel.kind = "server");
    let _ = span.set_parent(parent);
    span
}

/// Trace id of the current span, if any (for error messages and logs).
pub fn current_trace_id() -> Option<String> {
    let cx = tracing::Span::current().context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn json_logs_carry_trace_and_span_ids() {
        let out = Captured::default();
        let writer = out.clone();
        let provider = SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")))
            .with(json_layer().with_writer(move || writer.clone()));
        let (outer_ids, inner_ids) = tracing::subscriber::with_default(subscriber, || {
            tracing::info!("outside any span");
            let outer = tracing::info_span!("outer", user = "alice");
            let _o = outer.enter();
            tracing::info!(n = 1, "in outer");
            let inner = tracing::info_span!("inner");
            let ids = |s: &tracing::Span| {
                let cx = s.context();
                let sc = cx.span().span_context().clone();
                (sc.trace_id().to_string(), sc.span_id().to_string())
            };
            inner.in_scope(|| tracing::info!("in inner"));
            (ids(&outer), ids(&inner))
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].get("trace_id").is_none() && lines[0].get("span_id").is_none(), "{text}");
        assert_eq!(lines[1]["fields"]["message"], "in outer");
        assert_eq!(lines[1]["span"]["user"], "alice");
        assert_eq!(
            (lines[1]["trace_id"].as_str().unwrap(), lines[1]["span_id"].as_str().unwrap()),
            (&*outer_ids.0, &*outer_ids.1)
        );
        assert_eq!(
            (lines[2]["trace_id"].as_str().unwrap(), lines[2]["span_id"].as_str().unwrap()),
            (&*inner_ids.0, &*inner_ids.1)
        );
        assert_eq!(outer_ids.0, inner_ids.0, "one trace");
        assert_ne!(outer_ids.1, inner_ids.1);
        assert_eq!(outer_ids.0.len(), 32);
        assert_eq!(outer_ids.1.len(), 16);
    }
}
