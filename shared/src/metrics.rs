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
use std::{
    future::Future,
    pin::Pin,
    sync::{LazyLock, Mutex, PoisonError, atomic::AtomicU64, atomic::Ordering},
    task::{Context, Poll},
    time::Instant,
};

use opentelemetry::{
    KeyValue, global,
    metrics::{Counter, Histogram, Meter},
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
    }
});

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

/// One successful capture: the first for its order, or a replay (retry,
/// webhook after verify, race).
pub fn payment_captured(replayed: bool) {
    let outcome = if replayed { "replayed" } else { "captured" };
    INSTRUMENTS.captures.add(1, &[KeyValue::new("outcome", outcome)]);
}

// ---------------------------------------------------------------------------
// Pool gauges

/// Pools currently observed: (registration id, pool name, pool). A pool is
/// held only while its [`PoolGauge`] lives, so a stopped service releases
/// its connections.
static POOLS: Mutex<Vec<(u64, &'static str, Pool)>> = Mutex::new(Vec::new());
static NEXT_POOL: AtomicU64 = AtomicU64::new(0);
/// Registers the gauge callback once per process (callbacks live as long as
/// the meter provider, so one callback reads every registered pool).
static POOL_GAUGE: LazyLock<()> = LazyLock::new(|| {
    let _ = meter()
        .u64_observable_gauge("db.client.connection.count")
        .with_description("Pooled database connections, by state")
        .with_callback(|obs| {
            // Pools of the same name (several instances in one process, as in
            // tests) are summed.
            let mut by_name: Vec<(&'static str, u64, u64)> = Vec::new();
            for (_, name, pool) in POOLS.lock().unwrap_or_else(PoisonError::into_inner).iter() {
                let s = pool.state();
                let (idle, used) = (u64::from(s.idle_connections), u64::from(s.connections.saturating_sub(s.idle_connections)));
                match by_name.iter_mut().find(|(n, ..)| n == name) {
                    Some(e) => (e.1, e.2) = (e.1 + idle, e.2 + used),
                    None => by_name.push((name, idle, used)),
                }
            }
            for (name, idle, used) in by_name {
                let pool = KeyValue::new("db.client.connection.pool.name", name);
                obs.observe(idle, &[pool.clone(), KeyValue::new("db.client.connection.state", "idle")]);
                obs.observe(used, &[pool, KeyValue::new("db.client.connection.state", "used")]);
            }
        })
        .build();
});

/// Reports `pool`'s connections (idle / used) as `name` while the returned
/// guard lives.
#[must_use = "the pool is observed only while the guard lives"]
pub fn observe_pool(name: &'static str, pool: Pool) -> PoolGauge {
    LazyLock::force(&POOL_GAUGE);
    let id = NEXT_POOL.fetch_add(1, Ordering::Relaxed);
    POOLS.lock().unwrap_or_else(PoisonError::into_inner).push((id, name, pool));
    PoolGauge { id }
}

/// Stops observing a pool when dropped.
#[derive(Debug)]
pub struct PoolGauge {
    id: u64,
}

impl Drop for PoolGauge {
    fn drop(&mut self) {
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
        let path = req.uri().path().to_owned();
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
            record_rpc(&path, code, start.elapsed().as_secs_f64());
            res
        })
    }
}

fn record_rpc(path: &str, code: i64, seconds: f64) {
    let (service, method) = match path.strip_prefix('/').and_then(|p| p.split_once('/')) {
        Some((s, m)) if code != tonic::Code::Unimplemented as i64 => (s.to_owned(), m.to_owned()),
        _ => ("_OTHER".to_owned(), "_OTHER".to_owned()),
    };
    INSTRUMENTS.rpc_duration.record(
        seconds,
        &[
            KeyValue::new("rpc.service", service),
            KeyValue::new("rpc.method", method),
            KeyValue::new("rpc.grpc.status_code", code),
        ],
    );
}

#[cfg(test)]
mod tests {
    use super::*;

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
