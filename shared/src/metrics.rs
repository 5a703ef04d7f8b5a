//! Metrics through OpenTelemetry: every instrument of both services lives
//! here so each instrumentation point is one call. They are exported over
//! OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (see [`crate::telemetry`]);
//! otherwise recording is close to free (no reader, nothing aggregated).
//!
//! Instruments are created on first use from the global meter provider, so
//! [`crate::telemetry::init`] must run before the first RPC, job or pool
//! registration (the binaries and the test harness do that).
//!
//! | instrument | kind | attributes |
//! |---|---|---|
//! | `rpc.server.call.duration` (s) | histogram (its count is the RPC count) | `rpc.service`, `rpc.method`, `rpc.grpc.status_code` |
//! | `db.client.connection.count` | gauge | `db.client.connection.pool.name`, `db.client.connection.state` (`idle`/`used`) |
//! | `job.runs` | counter | `job`, `outcome` (`ok`/`error`) |
//! | `billing.credits.charged` / `billing.credits.unpaid` | counter (units) | `mode` (`AUTO`/`EXPLICIT`/`END`) |
//! | `billing.payment.captures` | counter | `outcome` (`captured`/`replayed`) |
//! | `events.read` | counter | `service`: events the replica's tail read (committed and settled) |
//! | `events.watchers` | up-down counter | `service`: watchers connected |
//! | `events.delivery.lag` (s) | histogram | `service`: from an event's transaction start to its sending to a watcher |
use std::{
    future::Future,
    pin::Pin,
    sync::{LazyLock, Mutex, PoisonError, atomic::AtomicU64, atomic::Ordering},
    task::{Context, Poll},
    time::Instant,
};

use opentelemetry::{
    KeyValue, global,
    metrics::{Counter, Gauge, Histogram, Meter, UpDownCounter},
};
use tower::BoxError;

use crate::db::Pool;

const METER: &str = "payments";

fn meter() -> Meter {
    global::meter(METER)
}

struct Instruments {
    rpc_duration: Histogram<f64>,
    job_runs: Counter<u64>,
    credits_charged: Counter<u64>,
    credits_unpaid: Counter<u64>,
    captures: Counter<u64>,
    pool_connections: Gauge<u64>,
    events_read: Counter<u64>,
    event_watchers: UpDownCounter<i64>,
    event_lag: Histogram<f64>,
}

static INSTRUMENTS: LazyLock<Instruments> = LazyLock::new(|| {
    let m = meter();
    Instruments {
        rpc_duration: m
            .f64_histogram("rpc.server.call.duration")
            .with_unit("s")
            .with_description("Duration of gRPC calls served, by method and status code")
            .with_boundaries(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0])
            .build(),
        job_runs: m.u64_counter("job.runs").with_description("Periodic job iterations, by job and outcome").build(),
        credits_charged: m
            .u64_counter("billing.credits.charged")
            .with_unit("{credit}")
            .with_description("Credits deducted from balances")
            .build(),
        credits_unpaid: m
            .u64_counter("billing.credits.unpaid")
            .with_unit("{credit}")
            .with_description("Units that found no credits and were recorded as unpaid")
            .build(),
        captures: m
            .u64_counter("billing.payment.captures")
            .with_description("Payment captures, first time (captured) or repeated (replayed)")
            .build(),
        pool_connections: pool_gauge(&m),
        events_read: m.u64_counter("events.read").with_description("Events the replica's tail read, settled").build(),
        event_watchers: m.i64_up_down_counter("events.watchers").with_description("Event watchers connected").build(),
        event_lag: m
            .f64_histogram("events.delivery.lag")
            .with_unit("s")
            .with_description("From an event's recording to its sending to a watcher (a watcher behind shows here)")
            .with_boundaries(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 300.0, 3600.0])
            .build(),
    }
});

/// `db.client.connection.count`, a synchronous gauge that [`observe_pool`]
/// samples. Not an observable gauge: OpenTelemetry 0.33 resolves an
/// observable instrument's aggregators when it is built and, with no metric
/// reader configured (no OTLP endpoint), logs InstrumentCreationFailed at
/// ERROR and drops its callback for good; synchronous instruments are
/// silently inert without a reader.
fn pool_gauge(m: &Meter) -> Gauge<u64> {
    m.u64_gauge("db.client.connection.count").with_description("Pooled database connections, by state").build()
}

/// One run of the periodic job `job`.
pub fn job_run(job: &'static str, ok: bool) {
    let outcome = if ok { "ok" } else { "error" };
    INSTRUMENTS.job_runs.add(1, &[KeyValue::new("job", job), KeyValue::new("outcome", outcome)]);
}

/// One deduction by `mode`; a replayed deduction (same `deduction_id`)
/// charged nothing new and is not counted.
pub fn credits_charged(mode: &'static str, charged: Option<i64>, unpaid: Option<i64>, replayed: Option<bool>) {
    if replayed == Some(true) {
        return;
    }
    let attrs = [KeyValue::new("mode", mode)];
    let (charged, unpaid) = (charged.unwrap_or_default(), unpaid.unwrap_or_default());
    if charged > 0 {
        INSTRUMENTS.credits_charged.add(charged.unsigned_abs(), &attrs);
    }
    if unpaid > 0 {
        INSTRUMENTS.credits_unpaid.add(unpaid.unsigned_abs(), &attrs);
    }
}

/// `n` events read by `service`'s event tail.
pub fn events_read(service: &'static str, n: usize) {
    INSTRUMENTS.events_read.add(n as u64, &[KeyValue::new("service", service)]);
}

/// One event sent to a watcher of `service`, recorded at `occurred_at`.
pub fn event_delivered(service: &'static str, occurred_at: chrono::DateTime<chrono::Utc>) {
    let lag = (chrono::Utc::now() - occurred_at).to_std().unwrap_or_default();
    INSTRUMENTS.event_lag.record(lag.as_secs_f64(), &[KeyValue::new("service", service)]);
}

/// Counts a watcher of `service` while held.
#[derive(Debug)]
pub struct EventWatcher(&'static str);

impl EventWatcher {
    /// A watcher connected.
    pub fn connected(service: &'static str) -> Self {
        INSTRUMENTS.event_watchers.add(1, &[KeyValue::new("service", service)]);
        Self(service)
    }
}

impl Drop for EventWatcher {
    fn drop(&mut self) {
        INSTRUMENTS.event_watchers.add(-1, &[KeyValue::new("service", self.0)]);
    }
}

/// One successful capture: the first for its order, or a replay (retry,
/// webhook after verify, race).
pub fn payment_captured(replayed: bool) {
    let outcome = if replayed { "replayed" } else { "captured" };
    INSTRUMENTS.captures.add(1, &[KeyValue::new("outcome", outcome)]);
}

// ---------------------------------------------------------------------------
// Pool gauges

/// How often a pool's connection counts are sampled (export is every 60 s
/// by default, so a sample is at most this old when exported).
const POOL_SAMPLE_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Pools currently observed: (registration id, pool name, pool). A pool is
/// held only while its [`PoolGauge`] lives, so a stopped service releases
/// its connections.
static POOLS: Mutex<Vec<(u64, &'static str, Pool)>> = Mutex::new(Vec::new());
static NEXT_POOL: AtomicU64 = AtomicU64::new(0);

/// Records the idle / used connections of every pool named `name` (pools of
/// one name, as several service instances in one test process, are summed).
fn sample_pools(name: &'static str) {
    let (mut idle, mut used) = (0u64, 0u64);
    for (_, n, pool) in POOLS.lock().unwrap_or_else(PoisonError::into_inner).iter() {
        if *n == name {
            let s = pool.state();
            idle += u64::from(s.idle_connections);
            used += u64::from(s.connections.saturating_sub(s.idle_connections));
        }
    }
    let pool = KeyValue::new("db.client.connection.pool.name", name);
    INSTRUMENTS.pool_connections.record(idle, &[pool.clone(), KeyValue::new("db.client.connection.state", "idle")]);
    INSTRUMENTS.pool_connections.record(used, &[pool, KeyValue::new("db.client.connection.state", "used")]);
}

/// Reports `pool`'s connections (idle / used) as `name` while the returned
/// guard lives: sampled at once and every few seconds on the current tokio
/// runtime (without one, only at once).
#[must_use = "the pool is observed only while the guard lives"]
pub fn observe_pool(name: &'static str, pool: Pool) -> PoolGauge {
    let id = NEXT_POOL.fetch_add(1, Ordering::Relaxed);
    POOLS.lock().unwrap_or_else(PoisonError::into_inner).push((id, name, pool));
    sample_pools(name);
    let sampler = tokio::runtime::Handle::try_current().ok().map(|rt| {
        rt.spawn(async move {
            let mut tick = tokio::time::interval(POOL_SAMPLE_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tick.tick().await;
                sample_pools(name);
            }
        })
        .abort_handle()
    });
    PoolGauge { id, sampler }
}

/// Stops observing a pool when dropped.
#[derive(Debug)]
pub struct PoolGauge {
    id: u64,
    sampler: Option<tokio::task::AbortHandle>,
}

impl Drop for PoolGauge {
    fn drop(&mut self) {
        if let Some(s) = &self.sampler {
            s.abort();
        }
        POOLS.lock().unwrap_or_else(PoisonError::into_inner).retain(|(id, ..)| *id != self.id);
    }
}

// ---------------------------------------------------------------------------
// RPC metrics layer

/// Tower layer recording `rpc.server.call.duration` for every RPC (also the
/// ones shed for overload). The status code is the `grpc-status` of a
/// trailers-only response (how tonic answers an `Err(Status)`), else OK: a
/// unary handler that returned `Ok` answers with status OK in the trailers.
/// Unknown methods (UNIMPLEMENTED) are recorded as `_OTHER` so random paths
/// cannot grow the attribute sets.
#[derive(Clone, Copy, Debug, Default)]
pub struct RpcMetricsLayer;

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetrics { inner }
    }
}

/// The service [`RpcMetricsLayer`] wraps.
#[derive(Clone, Debug)]
pub struct RpcMetrics<S> {
    inner: S,
}

impl<S, ReqB, ResB> tower::Service<http::Request<ReqB>> for RpcMetrics<S>
where
    S: tower::Service<http::Request<ReqB>, Response = http::Response<ResB>>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = http::Response<ResB>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: http::Request<ReqB>) -> Self::Future {
        // A clone of the URI shares its bytes: no allocation per RPC.
        let uri = req.uri().clone();
        let start = Instant::now();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let res = fut.await.map_err(Into::into);
            let code = match &res {
                Ok(resp) => resp
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok()?.parse::<i64>().ok())
                    .unwrap_or(tonic::Code::Ok as i64),
                Err(e) => e.downcast_ref::<tonic::Status>().map_or(tonic::Code::Unknown, tonic::Status::code) as i64,
            };
            record_rpc(uri.path(), code, start.elapsed().as_secs_f64());
            res
        })
    }
}

/// The `rpc.service` and `rpc.method` attributes of each method path, built
/// once per path (the paths of the served methods: a bounded set), so an RPC
/// records its duration without allocating.
static METHOD_ATTRS: std::sync::LazyLock<std::sync::RwLock<std::collections::HashMap<String, [KeyValue; 2]>>> =
    std::sync::LazyLock::new(Default::default);

fn record_rpc(path: &str, code: i64, seconds: f64) {
    let other = || [KeyValue::new("rpc.service", "_OTHER"), KeyValue::new("rpc.method", "_OTHER")];
    let [service, method] = match path.strip_prefix('/').and_then(|p| p.split_once('/')) {
        Some((s, m)) if code != tonic::Code::Unimplemented as i64 => {
            let cached = METHOD_ATTRS.read().unwrap_or_else(|p| p.into_inner()).get(path).cloned();
            cached.unwrap_or_else(|| {
                // Shared strings: the clones above only bump a count.
                let (s, m): (std::sync::Arc<str>, std::sync::Arc<str>) = (s.into(), m.into());
                let attrs = [KeyValue::new("rpc.service", s), KeyValue::new("rpc.method", m)];
                METHOD_ATTRS.write().unwrap_or_else(|p| p.into_inner()).insert(path.to_owned(), attrs.clone());
                attrs
            })
        }
        _ => other(),
    };
    INSTRUMENTS.rpc_duration.record(seconds, &[service, method, KeyValue::new("rpc.grpc.status_code", code)]);
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, atomic::AtomicUsize};

    use opentelemetry::metrics::MeterProvider as _;
    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;

    /// Counts ERROR events, as the SDK's internal logging emits them.
    struct Errors(Arc<AtomicUsize>);

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Errors {
        fn on_event(&self, e: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
            if *e.metadata().level() == tracing::Level::ERROR {
                self.0.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    #[test]
    fn pool_gauge_builds_silently_without_a_metric_reader() {
        let errors = Arc::new(AtomicUsize::new(0));
        let subscriber = tracing_subscriber::registry().with(Errors(errors.clone()));
        tracing::subscriber::with_default(subscriber, || {
            // What a service has when OTEL_EXPORTER_OTLP_ENDPOINT is unset.
            let provider = opentelemetry_sdk::metrics::SdkMeterProvider::builder().build();
            let gauge = pool_gauge(&provider.meter(METER));
            gauge.record(3, &[KeyValue::new("db.client.connection.state", "idle")]);
        });
        assert_eq!(errors.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn layer_passes_responses_and_errors_through() {
        use tower::{Layer, ServiceExt};
        let ok = RpcMetricsLayer
            .layer(tower::service_fn(|_req: http::Request<()>| async { Ok::<_, BoxError>(http::Response::new(())) }));
        let resp = ok.oneshot(http::Request::builder().uri("/a.B/C").body(()).unwrap()).await;
        assert!(resp.is_ok());
        let err = RpcMetricsLayer.layer(tower::service_fn(|_req: http::Request<()>| async {
            Err::<http::Response<()>, BoxError>(Box::new(tonic::Status::unavailable("shed")))
        }));
        let e = err.oneshot(http::Request::builder().uri("/a.B/C").body(()).unwrap()).await.err().unwrap();
        assert_eq!(e.downcast_ref::<tonic::Status>().map(|s| s.code()), Some(tonic::Code::Unavailable));
    }
}
