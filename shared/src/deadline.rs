//! The caller's deadline (`grpc-timeout`), answered by the service itself:
//! DEADLINE_EXCEEDED with ErrorInfo `DEADLINE_EXCEEDED`, instead of tonic's
//! CANCELLED "Timeout expired" without any details (docs/design.md, Error
//! model). tonic's own timer still runs around this layer, but it polls
//! this layer first, so once this budget has passed this answer wins. The
//! budget ends a little before the deadline (a tenth, 5..100 ms): the caller's own
//! client enforces the same deadline, and the answer must reach it before
//! that timer fires, also on a loaded machine. The header is handed on as
//! an [`IncomingDeadline`] extension, so downstream calls get the time that
//! is left, not the whole original timeout. Dropping the handler's future is
//! what tonic does too: an effect already started runs to its end on its own
//! task ([`run_effect`](crate::server::run_effect)), so the caller retries
//! with the same `request_id` (or idempotency key).
use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use tower::BoxError;

use crate::status::{ErrorReason, with_reason};

/// How much earlier than the caller's deadline this answers, so the answer
/// reaches a caller whose own timer is set to the same deadline: a tenth of
/// the timeout, at least 5 ms and at most 100 ms (a fixed 5 ms lost the race
/// to the caller's timer on a loaded machine).
fn margin(timeout: Duration) -> Duration {
    (timeout / 10).clamp(Duration::from_millis(5), Duration::from_millis(100))
}

/// The caller's deadline as this service received it: set by [`Deadline`],
/// read by [`crate::client::incoming_timeout`] to bound downstream calls.
#[derive(Clone, Copy, Debug)]
pub struct IncomingDeadline(tokio::time::Instant);

impl IncomingDeadline {
    /// Time left until the caller's deadline (zero once it has passed).
    pub fn remaining(&self) -> Duration {
        self.0.saturating_duration_since(tokio::time::Instant::now())
    }
}

/// The `grpc-timeout` header's duration (gRPC over HTTP/2: 1..8 digits and
/// a unit), `None` when absent or malformed (then tonic ignores it too).
pub fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Tower layer that turns a request whose `grpc-timeout` has passed into
/// DEADLINE_EXCEEDED with its reason (see [`Deadline`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct DeadlineLayer;

impl<S> tower::Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Deadline { inner }
    }
}

/// The service [`DeadlineLayer`] wraps around the gRPC router.
#[derive(Clone, Debug)]
pub struct Deadline<S> {
    inner: S,
}

impl<S, ReqB, ResB> tower::Service<http::Request<ReqB>> for Deadline<S>
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

    fn call(&mut self, mut req: http::Request<ReqB>) -> Self::Future {
        let timeout = req.headers().get("grpc-timeout").and_then(|v| v.to_str().ok()).and_then(parse_grpc_timeout);
        if let Some(at) = timeout.and_then(|d| tokio::time::Instant::now().checked_add(d)) {
            req.headers_mut().remove("grpc-timeout");
            req.extensions_mut().insert(IncomingDeadline(at));
        }
        let budget = timeout.map(|d| d.saturating_sub(margin(d)));
        let fut = self.inner.call(req);
        Box::pin(async move {
            let Some(budget) = budget else { return fut.await.map_err(Into::into) };
            match tokio::time::timeout(budget, fut).await {
                Ok(r) => r.map_err(Into::into),
                Err(_) => Err(Box::new(with_reason(
                    ErrorReason::DeadlineExceeded,
                    "the caller's deadline passed before the call finished; it may still complete: retry with the same idempotency key",
                )) as BoxError),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_margin_is_a_tenth_within_bounds() {
        assert_eq!(margin(Duration::from_millis(20)), Duration::from_millis(5));
        assert_eq!(margin(Duration::from_millis(300)), Duration::from_millis(30));
        assert_eq!(margin(Duration::from_secs(30)), Duration::from_millis(100));
    }

    #[test]
    fn grpc_timeout_values() {
        assert_eq!(parse_grpc_timeout("300m"), Some(Duration::from_millis(300)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("99999999n"), Some(Duration::from_nanos(99_999_999)));
        for bad in ["", "m", "5", "5x", "123456789S", "-1S", "1.5S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad}");
        }
    }
}
