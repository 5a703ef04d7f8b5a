//! Outgoing calls between services: deadlines derived from the caller's
//! `grpc-timeout`, W3C trace context, and bounded retries with jitter for
//! idempotent calls on UNAVAILABLE / ABORTED only.
use std::{future::Future, time::Duration};

use rand::Rng;
use tokio::time::Instant;
use tonic::{Code, Request, Status};

/// The incoming request's deadline as a remaining duration, if it had one.
pub fn incoming_timeout<T>(req: &Request<T>) -> Option<Duration> {
    parse_grpc_timeout(req.metadata().get("grpc-timeout")?.to_str().ok()?)
}

/// Parses the `grpc-timeout` wire format: up to 8 digits and a unit.
pub fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    if v.len() < 2 {
        return None;
    }
    let (n, unit) = v.split_at(v.len() - 1);
    let n: u64 = n.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// A time budget for all the downstream calls of one request.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    deadline: Instant,
}

impl Budget {
    /// The caller's deadline, capped at `max` (also the default).
    pub fn from_request<T>(req: &Request<T>, max: Duration) -> Self {
        let d = incoming_timeout(req).map(|t| t.min(max)).unwrap_or(max);
        Self { deadline: Instant::now() + d }
    }

    pub fn new(d: Duration) -> Self {
        Self { deadline: Instant::now() + d }
    }

    pub fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// Builds an outgoing request carrying the remaining budget as its
    /// deadline, the bearer token and the current trace context.
    pub fn request<T>(&self, msg: T, token: &str) -> Request<T> {
        let mut r = Request::new(msg);
        r.set_timeout(self.remaining());
        if let Ok(v) = format!("Bearer {token}").parse() {
            r.metadata_mut().insert("authorization", v);
        }
        crate::telemetry::inject_current(r.metadata_mut());
        r
    }
}

fn retryable(s: &Status) -> bool {
    matches!(s.code(), Code::Unavailable | Code::Aborted)
}

/// Calls `f` up to `attempts` times while it fails with UNAVAILABLE or
/// ABORTED and the budget lasts. Only for idempotent calls.
pub async fn retry<T, F, Fut>(budget: Budget, attempts: u32, mut f: F) -> Result<T, Status>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    let mut backoff = Duration::from_millis(25);
    let mut attempt = 1;
    loop {
        match f().await {
            Err(s) if retryable(&s) && attempt < attempts => {
                let jitter = rand::rng().random_range(0..=backoff.as_millis() as u64);
                let pause = backoff + Duration::from_millis(jitter);
                if budget.remaining() <= pause {
                    return Err(s);
                }
                tracing::debug!(code = ?s.code(), attempt, "retrying downstream call");
                tokio::time::sleep(pause).await;
                backoff = (backoff * 2).min(Duration::from_millis(500));
                attempt += 1;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_grpc_timeout() {
        assert_eq!(parse_grpc_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse_grpc_timeout("x"), None);
        assert_eq!(parse_grpc_timeout("10q"), None);
    }

    #[tokio::test]
    async fn retries_only_retryable_codes() {
        let mut calls = 0;
        let r: Result<(), Status> = retry(Budget::new(Duration::from_secs(5)), 3, || {
            calls += 1;
            async { Err(Status::unavailable("down")) }
        })
        .await;
        assert_eq!(r.err().map(|s| s.code()), Some(Code::Unavailable));
        assert_eq!(calls, 3);
        let mut calls = 0;
        let r: Result<(), Status> = retry(Budget::new(Duration::from_secs(5)), 3, || {
            calls += 1;
            async { Err(Status::invalid_argument("bad")) }
        })
        .await;
        assert_eq!(r.err().map(|s| s.code()), Some(Code::InvalidArgument));
        assert_eq!(calls, 1);
    }
}
