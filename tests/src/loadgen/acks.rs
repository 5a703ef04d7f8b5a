//! `loadgen --ack-log FILE` and `--retry SECS` (tests/ha/README.md): the
//! caller's side of a failover. With `--retry`, a call that fails with a
//! status worth retrying (UNAVAILABLE, ABORTED with RetryInfo, no answer
//! within [`ATTEMPT_TIMEOUT`], a broken connection) is sent again with the
//! same ids after RetryInfo's delay, as docs/integration.md tells callers,
//! until it succeeds or `SECS` have passed. With `--ack-log`, every
//! operation the services acknowledged is written to FILE with its ids
//! (`<unix ms> <scenario> ok <id> <id>`) the moment the answer arrives, and
//! every failed attempt as `<unix ms> <scenario> error <code>`: what
//! tests/ha/check.py looks for in the database after the failovers.
use std::{
    collections::BTreeMap,
    fs::File,
    future::Future,
    io::{LineWriter, Write},
    sync::{Mutex, OnceLock},
    time::{Duration, Instant, SystemTime},
};

use tonic::{Code, Status};
use tonic_types::StatusExt;

/// How long one attempt may go unanswered when retrying.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// The pause after a failure that names no delay (a broken connection).
const DEFAULT_DELAY: Duration = Duration::from_millis(100);

struct Settings {
    log: Option<Mutex<LineWriter<File>>>,
    retry_for: Duration,
}

static SETTINGS: OnceLock<Settings> = OnceLock::new();
/// Failed attempts that were retried, by code (the report's `retried_*`).
static RETRIED: Mutex<BTreeMap<String, u64>> = Mutex::new(BTreeMap::new());

/// Opens the log (truncated) and sets the retry budget; once, before any
/// call. Without it, calls are sent once and nothing is logged.
pub fn init(ack_log: Option<&str>, retry_for: Duration) -> anyhow::Result<()> {
    let log = match ack_log {
        Some(path) => {
            Some(Mutex::new(LineWriter::new(File::create(path).map_err(|e| anyhow::anyhow!("--ack-log {path}: {e}"))?)))
        }
        None => None,
    };
    SETTINGS.set(Settings { log, retry_for }).map_err(|_| anyhow::anyhow!("acks::init called twice"))
}

fn log_line(scenario: &str, what: &str, detail: &str) {
    let Some(log) = SETTINGS.get().and_then(|s| s.log.as_ref()) else { return };
    let ms = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_millis();
    if let Ok(mut f) = log.lock() {
        // A line the disk refused would make the check report it as lost,
        // so a write error ends the run instead.
        if let Err(e) = writeln!(f, "{ms} {scenario} {what} {detail}") {
            eprintln!("loadgen: cannot write the ack log: {e}");
            std::process::exit(1);
        }
    }
}

/// Records that the services acknowledged `scenario`'s operation `ids`.
pub fn acknowledged(scenario: &str, ids: &str) {
    log_line(scenario, "ok", ids);
}

/// Failed attempts that were sent again, by status code.
pub fn retried() -> BTreeMap<String, u64> {
    RETRIED.lock().map(|m| m.clone()).unwrap_or_default()
}

/// The pause before sending a failed call again, or None if it is not to
/// be sent again (the failure says something about the request).
pub fn retry_delay(s: &Status) -> Option<Duration> {
    let info = s.get_details_retry_info().and_then(|r| r.retry_delay);
    let worth = match s.code() {
        Code::Unavailable | Code::DeadlineExceeded => true,
        Code::Aborted => info.is_some(),
        _ => shared::client::is_transport_failure(s),
    };
    worth.then(|| info.unwrap_or(DEFAULT_DELAY))
}

/// Runs `f` (one attempt of `scenario`'s operation, with the same ids each
/// time) under the retry settings of [`init`]. Returns its answer and
/// whether an earlier attempt failed (then the answer may be a replay of
/// an effect the failed attempt committed).
pub async fn call<T, F, Fut>(scenario: &str, f: F) -> Result<(T, bool), Status>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    call_for(SETTINGS.get().map(|s| s.retry_for).unwrap_or_default(), scenario, f).await
}

async fn call_for<T, F, Fut>(retry_for: Duration, scenario: &str, mut f: F) -> Result<(T, bool), Status>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    let give_up = Instant::now() + retry_for;
    let mut retried = false;
    loop {
        let outcome = if retry_for.is_zero() {
            f().await
        } else {
            tokio::time::timeout(ATTEMPT_TIMEOUT, f())
                .await
                .unwrap_or_else(|_| Err(Status::deadline_exceeded("loadgen: no answer within the attempt timeout")))
        };
        let status = match outcome {
            Ok(v) => return Ok((v, retried)),
            Err(s) => s,
        };
        log_line(scenario, "error", &format!("{:?}", status.code()));
        match retry_delay(&status) {
            Some(delay) if Instant::now() + delay < give_up => {
                if let Ok(mut m) = RETRIED.lock() {
                    *m.entry(format!("{:?}", status.code())).or_default() += 1;
                }
                tokio::time::sleep(delay).await;
                retried = true;
            }
            _ => return Err(status),
        }
    }
}

#[cfg(test)]
mod tests {
    use tonic_types::ErrorDetails;

    use super::*;

    #[test]
    fn retries_what_a_caller_retries_after_the_delay_it_was_given() {
        let with_info = |code| Status::with_error_details(code, "x", ErrorDetails::with_retry_info(Some(Duration::from_secs(1))));
        assert_eq!(retry_delay(&with_info(Code::Unavailable)), Some(Duration::from_secs(1)));
        assert_eq!(retry_delay(&with_info(Code::Aborted)), Some(Duration::from_secs(1)));
        assert_eq!(retry_delay(&Status::unavailable("refused")), Some(DEFAULT_DELAY));
        assert_eq!(retry_delay(&Status::deadline_exceeded("slow")), Some(DEFAULT_DELAY));
        // ETAG_MISMATCH and the like: ABORTED without RetryInfo is decided again, not resent.
        assert_eq!(retry_delay(&Status::aborted("etag")), None);
        for code in [Code::Internal, Code::InvalidArgument, Code::FailedPrecondition, Code::NotFound] {
            assert_eq!(retry_delay(&Status::with_error_details(code, "x", ErrorDetails::new())), None, "{code:?}");
        }
    }

    fn unavailable_for(delay: Duration) -> Status {
        Status::with_error_details(Code::Unavailable, "database unavailable", ErrorDetails::with_retry_info(Some(delay)))
    }

    #[tokio::test]
    async fn sends_the_same_call_again_until_it_is_answered() {
        let mut calls = 0;
        let r = call_for(Duration::from_secs(30), "test", || {
            calls += 1;
            let n = calls;
            async move { if n < 3 { Err(unavailable_for(Duration::from_millis(1))) } else { Ok(n) } }
        })
        .await;
        assert_eq!(r.ok(), Some((3, true)), "answered on the third attempt, after failures");
        assert!(retried().get("Unavailable").copied().unwrap_or(0) >= 2);
    }

    #[tokio::test]
    async fn gives_up_on_what_is_not_worth_retrying_and_when_the_budget_is_spent() {
        let mut calls = 0;
        let r: Result<((), bool), Status> = call_for(Duration::from_secs(30), "test", || {
            calls += 1;
            async { Err(Status::with_error_details(Code::Internal, "bug", ErrorDetails::new())) }
        })
        .await;
        assert_eq!((r.err().map(|s| s.code()), calls), (Some(Code::Internal), 1));
        // The delay asked for ends after the budget: no second attempt.
        let mut calls = 0;
        let r: Result<((), bool), Status> = call_for(Duration::from_millis(50), "test", || {
            calls += 1;
            async { Err(unavailable_for(Duration::from_secs(1))) }
        })
        .await;
        assert_eq!((r.err().map(|s| s.code()), calls), (Some(Code::Unavailable), 1));
    }

    #[tokio::test]
    async fn without_init_a_call_is_sent_once() {
        let mut calls = 0;
        let r: Result<((), bool), Status> = call("test", || {
            calls += 1;
            async { Err(Status::unavailable("down")) }
        })
        .await;
        assert_eq!(r.err().map(|s| s.code()), Some(Code::Unavailable));
        assert_eq!(calls, 1);
    }
}
