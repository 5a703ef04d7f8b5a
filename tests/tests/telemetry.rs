#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Telemetry, observed through in-memory OpenTelemetry exporters installed
//! before the services start (this file is its own process): one trace spans
//! checkout's handler, its client call and billing's handler; RPC, pool and
//! payment metrics are recorded.
use std::{
    collections::HashMap,
    sync::OnceLock,
    time::{Duration, Instant},
};

use opentelemetry::{
    KeyValue, Value,
    trace::{SpanId, SpanKind, TraceId},
};
use opentelemetry_sdk::{
    metrics::{
        InMemoryMetricExporter,
        data::{AggregatedMetrics, MetricData, ResourceMetrics},
    },
    trace::{InMemorySpanExporter, SpanData},
};
use shared::telemetry::TelemetryGuard;
use tests::spawn_app;

struct Telemetry {
    guard: &'static TelemetryGuard,
    spans: InMemorySpanExporter,
    metrics: InMemoryMetricExporter,
}

/// Installs the in-memory exporters once per process, before any service.
fn telemetry() -> &'static Telemetry {
    static T: OnceLock<Telemetry> = OnceLock::new();
    T.get_or_init(|| {
        let (spans, metrics) = (InMemorySpanExporter::default(), InMemoryMetricExporter::default());
        let (s, m) = (spans.clone(), metrics.clone());
        let guard = tests::harness::init_telemetry(|| shared::telemetry::init_with_exporters("tests", s, m))
            .expect("the in-memory exporters must be the first telemetry installed in this process");
        Telemetry { guard, spans, metrics }
    })
}

fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attrs.iter().find(|kv| kv.key.as_str() == key).map(|kv| &kv.value)
}

fn attr_str(s: &SpanData, key: &str) -> Option<String> {
    attr(&s.attributes, key).map(|v| v.as_str().into_owned())
}

fn is_server_span(s: &SpanData, rpc: &str) -> bool {
    s.name == "grpc" && s.span_kind == SpanKind::Server && attr_str(s, "rpc").as_deref() == Some(rpc)
}

fn describe(s: &SpanData) -> String {
    format!(
        "{}({:?}, rpc={:?}, trace={}, parent={})",
        s.name,
        s.span_kind,
        attr_str(s, "rpc"),
        s.span_context.trace_id(),
        s.parent_span_id
    )
}

/// The chain, billing's CreateOrder server span first, up to and including
/// checkout's CreateSession server span of the same trace.
struct Chain {
    trace_id: TraceId,
    links: Vec<SpanData>,
}

/// Finds the trace of CreateSession for `user` and walks from billing's
/// server span up through its parents; Err describes what is missing.
fn find_chain(spans: &[SpanData], user: &str) -> Result<Chain, String> {
    // The handler span carries the user; its trace is the request's.
    let handler = spans
        .iter()
        .find(|s| s.name == "create_session" && attr_str(s, "user_id").as_deref() == Some(user))
        .ok_or("checkout's create_session handler span has not been exported yet")?;
    let trace_id = handler.span_context.trace_id();
    let in_trace: HashMap<SpanId, &SpanData> =
        spans.iter().filter(|s| s.span_context.trace_id() == trace_id).map(|s| (s.span_context.span_id(), s)).collect();
    let checkout = in_trace
        .values()
        .find(|s| is_server_span(s, "/checkout.v1.CheckoutService/CreateSession"))
        .ok_or("checkout's CreateSession server span is not in the handler's trace")?;
    let billing = in_trace.values().find(|s| is_server_span(s, "/billing.v1.BillingService/CreateOrder")).ok_or_else(|| {
        let elsewhere: Vec<String> = spans
            .iter()
            .filter(|s| is_server_span(s, "/billing.v1.BillingService/CreateOrder"))
            .map(|s| s.span_context.trace_id().to_string())
            .collect();
        format!("no billing CreateOrder server span in trace {trace_id}; billing's CreateOrder spans are in traces {elsewhere:?}")
    })?;
    let mut links = vec![(*billing).clone()];
    let mut at = *billing;
    while at.span_context.span_id() != checkout.span_context.span_id() {
        at = in_trace.get(&at.parent_span_id).ok_or_else(|| {
            let chain: Vec<String> = links.iter().map(describe).collect();
            format!("the parent chain stops before checkout's server span: {chain:?}")
        })?;
        links.push(at.clone());
    }
    Ok(Chain { trace_id, links })
}

// The services' `grpc::run` spawns effects `.in_current_span()`; a plain
// `tokio::spawn` would drop the handler's span and start a new trace here.
#[tokio::test]
async fn create_session_is_one_trace_from_checkout_handler_through_client_call_to_billing_handler() {
    let t = telemetry();
    let app = spawn_app().await;
    let user = format!("trace-{}", uuid::Uuid::new_v4().simple());
    let session = app.create_session(&user, "pro-monthly").await;
    assert!(!session.order_id.is_empty());

    // Server spans end when their futures are dropped, which may be just
    // after the response reached us: flush until the chain is complete.
    let deadline = Instant::now() + Duration::from_secs(10);
    let chain = loop {
        t.guard.force_flush().unwrap();
        let spans = t.spans.get_finished_spans().unwrap();
        match find_chain(&spans, &user) {
            Ok(chain) => break chain,
            Err(e) if Instant::now() > deadline => panic!("{e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };

    let described: Vec<String> = chain.links.iter().map(describe).collect();
    let billing = &chain.links[0];
    assert_eq!(billing.span_context.trace_id(), chain.trace_id);
    assert!(billing.parent_span_is_remote, "billing's server span continues the trace from gRPC metadata: {described:?}");
    // billing's server span → checkout's client span for the call.
    let client = &chain.links[1];
    assert_eq!(client.span_kind, SpanKind::Client, "{described:?}");
    assert_eq!(client.name, "billing.v1.BillingService/CreateOrder", "{described:?}");
    // ... → checkout's handler span → checkout's server span (the trace root,
    // the test client sent no trace context).
    assert!(chain.links.iter().any(|s| s.name == "create_session"), "{described:?}");
    let checkout = chain.links.last().unwrap();
    assert!(is_server_span(checkout, "/checkout.v1.CheckoutService/CreateSession"), "{described:?}");
    assert_eq!(checkout.parent_span_id, SpanId::INVALID, "{described:?}");
    assert!(chain.links.iter().all(|s| s.span_context.trace_id() == chain.trace_id));
}

/// The newest export of the metric `name`.
fn metric_points(exported: &[ResourceMetrics], name: &str) -> Vec<(Vec<KeyValue>, f64, u64)> {
    let Some(last) = exported.last() else { return Vec::new() };
    let mut out = Vec::new();
    for m in last.scope_metrics().flat_map(|s| s.metrics()).filter(|m| m.name() == name) {
        match m.data() {
            AggregatedMetrics::F64(MetricData::Histogram(h)) => {
                out.extend(h.data_points().map(|p| (p.attributes().cloned().collect(), p.sum(), p.count())))
            }
            AggregatedMetrics::U64(MetricData::Sum(s)) => {
                out.extend(s.data_points().map(|p| (p.attributes().cloned().collect(), p.value() as f64, 1)))
            }
            AggregatedMetrics::U64(MetricData::Gauge(g)) => {
                out.extend(g.data_points().map(|p| (p.attributes().cloned().collect(), p.value() as f64, 1)))
            }
            other => panic!("unexpected data for {name}: {other:?}"),
        }
    }
    out
}

fn has(attrs: &[KeyValue], key: &str, value: Value) -> bool {
    attr(attrs, key) == Some(&value)
}

#[tokio::test]
async fn rpc_latency_pool_and_payment_metrics_are_recorded() {
    let t = telemetry();
    let app = spawn_app().await;
    let session = app.create_session(&format!("metrics-{}", uuid::Uuid::new_v4().simple()), "pro-monthly").await;
    let (payment_id, signature) = app.pay(&session.order_id);
    app.complete(&session.id, &payment_id, &signature).await.unwrap();
    // An error status is recorded with its code.
    let mut anon = tests::checkout_client(&app.checkout_addr.to_string(), "").unwrap();
    let denied = anon.get_session(proto::checkout::v1::GetSessionRequest { id: session.id.clone() }).await;
    assert_eq!(denied.unwrap_err().code(), tonic::Code::Unauthenticated);

    t.guard.force_flush().unwrap();
    let exported = t.metrics.get_finished_metrics().unwrap();

    let rpcs = metric_points(&exported, "rpc.server.call.duration");
    let rpc = |service: &str, method: &str, code: tonic::Code| {
        rpcs.iter().find(|(a, ..)| {
            has(a, "rpc.service", service.to_owned().into())
                && has(a, "rpc.method", method.to_owned().into())
                && has(a, "rpc.grpc.status_code", Value::I64(code as i64))
        })
    };
    let create = rpc("checkout.v1.CheckoutService", "CreateSession", tonic::Code::Ok).expect("CreateSession recorded");
    assert!(create.2 >= 1 && create.1 > 0.0, "{create:?}");
    assert!(rpc("billing.v1.BillingService", "CreateOrder", tonic::Code::Ok).is_some(), "{rpcs:?}");
    assert!(rpc("billing.v1.BillingService", "VerifyPayment", tonic::Code::Ok).is_some(), "{rpcs:?}");
    assert!(rpc("checkout.v1.CheckoutService", "GetSession", tonic::Code::Unauthenticated).is_some(), "{rpcs:?}");

    let pools = metric_points(&exported, "db.client.connection.count");
    for name in ["checkout", "billing"] {
        for state in ["idle", "used"] {
            assert!(
                pools.iter().any(|(a, ..)| has(a, "db.client.connection.pool.name", name.into())
                    && has(a, "db.client.connection.state", state.into())),
                "{name}/{state}: {pools:?}"
            );
        }
    }

    let captures = metric_points(&exported, "billing.payment.captures");
    let captured = captures.iter().find(|(a, ..)| has(a, "outcome", "captured".into())).expect("a capture was counted");
    assert!(captured.1 >= 1.0, "{captures:?}");
}
