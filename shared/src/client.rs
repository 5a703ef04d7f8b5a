//! Outgoing calls between services: deadlines derived from the caller's
//! `grpc-timeout`, W3C trace context, and bounded retries with jitter for
//! idempotent calls on UNAVAILABLE / ABORTED and on failures of the
//! connection itself ([`is_transport_failure`]).
use std::{future::Future, time::Duration};

use rand::Rng;
use tokio::time::Instant;
use tonic::{Code, Request, Status};

/// The incoming request's deadline as a remaining duration, if it had one.
/// A server built by [`crate::server`] hands it over as an
/// [`IncomingDeadline`] extension (its `grpc-timeout` header is taken off,
/// so this is the time left, not the whole original timeout); a request
/// that did not pass through that layer still has the header.
pub fn incoming_timeout<T>(req: &Request<T>) -> Option<Duration> {
    if let Some(d) = req.extensions().get::<IncomingDeadline>() {
        return Some(d.remaining());
    }
    parse_grpc_timeout(req.metadata().get("grpc-timeout")?.to_str().ok()?)
}

pub use crate::deadline::{IncomingDeadline, parse_grpc_timeout};

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

    /// A budget of `d` from now.
    pub fn new(d: Duration) -> Self {
        Self { deadline: Instant::now() + d }
    }

    /// What is left of the budget (zero once spent).
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

/// Whether `s` was made on this side of the wire from a failure of the
/// connection (tonic/hyper/h2: reset, GOAWAY, timeout, refused connection)
/// rather than answered by the server. The code of such a status says
/// nothing about the request: a GOAWAY ENHANCE_YOUR_CALM becomes
/// RESOURCE_EXHAUSTED, a reset INTERNAL or CANCELLED. Statuses a server
/// answers on purpose with these codes carry `google.rpc` details (quota
/// errors) or are plain INTERNAL bugs, so those are not counted.
pub fn is_transport_failure(s: &Status) -> bool {
    if std::error::Error::source(s).is_some() {
        return true;
    }
    let m = s.message();
    if m.starts_with("h2 protocol error") || m.contains("transport error") || m.starts_with("error trying to connect") {
        return true;
    }
    s.details().is_empty() && matches!(s.code(), Code::Unknown | Code::Cancelled | Code::ResourceExhausted)
}

fn retryable(s: &Status) -> bool {
    matches!(s.code(), Code::Unavailable | Code::Aborted) || is_transport_failure(s)
}

/// Calls `f` up to `attempts` times while it fails with UNAVAILABLE, ABORTED
/// or a transport failure and the budget lasts; each attempt is cut off when
/// the budget runs out (DEADLINE_EXCEEDED), whatever the channel does with
/// the request meanwhile. Only for idempotent calls.
pub async fn retry<T, F, Fut>(budget: Budget, attempts: u32, mut f: F) -> Result<T, Status>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    let mut backoff = Duration::from_millis(25);
    let mut attempt = 1;
    loop {
        let outcome = match tokio::time::timeout(budget.remaining(), f()).await {
            Ok(r) => r,
            Err(_) => Err(Status::deadline_exceeded("the call ran out of its time budget")),
        };
        match outcome {
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

    fn h2_goaway_status() -> Status {
        // What tonic makes of a GOAWAY ENHANCE_YOUR_CALM (from_hyper_error:
        // no source kept, the reason in the message).
        Status::new(Code::ResourceExhausted, "h2 protocol error: connection error received: error code 11 (ENHANCE_YOUR_CALM)")
    }

    #[test]
    fn transport_failures_are_recognised() {
        assert!(is_transport_failure(&h2_goaway_status()));
        assert!(is_transport_failure(&Status::internal("h2 protocol error: stream error received: unspecific protocol error")));
        assert!(is_transport_failure(&Status::unknown("transport error")));
        assert!(is_transport_failure(&Status::cancelled("Timeout expired")));
        assert!(is_transport_failure(&Status::resource_exhausted("Too many active requests for the connection")));
        let io: Box<dyn std::error::Error + Send + Sync> = Box::new(std::io::Error::other("connection reset by peer"));
        let from_io = Status::from_error(io);
        assert!(std::error::Error::source(&from_io).is_some());
        assert!(is_transport_failure(&from_io));
        // Answers of the server itself.
        let quota =
            crate::status::quota_exceeded(crate::status::ErrorReason::SessionLimitExceeded, "plan:basic", "limit reached", []);
        assert!(!is_transport_failure(&quota));
        assert!(!is_transport_failure(&Status::internal("internal error (trace id 0af7)")));
        assert!(!is_transport_failure(&Status::invalid_argument("bad")));
        assert!(!is_transport_failure(&Status::failed_precondition("no")));
    }

    #[tokio::test]
    async fn retries_transport_failures_then_succeeds() {
        let mut calls = 0;
        let r = retry(Budget::new(Duration::from_secs(5)), 3, || {
            calls += 1;
            let first = calls == 1;
            async move { if first { Err(h2_goaway_status()) } else { Ok(7) } }
        })
        .await;
        assert_eq!(r.ok(), Some(7));
        assert_eq!(calls, 2);
    }

    #[tokio::test]
    async fn an_attempt_never_outlives_the_budget() {
        let r: Result<(), Status> =
            retry(Budget::new(Duration::from_millis(200)), 3, std::future::pending::<Result<(), Status>>).await;
        assert_eq!(r.err().map(|s| s.code()), Some(Code::DeadlineExceeded));
    }
}
