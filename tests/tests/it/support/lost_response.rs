//! A call whose response is lost: the caller's deadline passes while the
//! call waits in the database behind a row (or lock) the test holds, the
//! caller sees DEADLINE_EXCEEDED (or CANCELLED), and the server's effect,
//! running on its own task, goes on and commits once the test lets go
//! (docs/design.md, Idempotency). What a retry then does is the question.
use std::{fmt::Debug, future::Future, time::Duration};

use diesel_async::AsyncPgConnection;
use tests::helpers::wait_for_waiters;
use tonic::{Code, Request, Status};

use super::guards::{Holder, SEE_WAITERS};

/// The deadline of the call whose response is lost: long enough for a
/// loaded machine to get it queued behind the holder, well inside the 8 s
/// lock bound of `spawn_app_holding_rows`.
pub(crate) const LOST_DEADLINE: Duration = Duration::from_secs(2);

/// `msg` as a request with [`LOST_DEADLINE`].
pub(crate) fn short_deadline<T>(msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.set_timeout(LOST_DEADLINE);
    r
}

/// Runs `call` while `holder` keeps it waiting (seen by `observer`, a
/// connection to the same database), lets its deadline pass, then lets go.
/// Panics unless the call queued and the caller got no answer.
pub(crate) async fn lose_response<T: Debug + Send + 'static>(
    holder: Holder,
    observer: &mut AsyncPgConnection,
    call: impl Future<Output = Result<T, Status>> + Send + 'static,
) {
    let call = tokio::spawn(call);
    let queued = wait_for_waiters(observer, 1, SEE_WAITERS).await;
    let answer = call.await.expect("the call's task");
    holder.release().await;
    assert!(queued, "the call never waited behind the held row; its response was not lost");
    match answer {
        Err(e) => assert!(matches!(e.code(), Code::DeadlineExceeded | Code::Cancelled), "the deadline passed: {e:?}"),
        Ok(v) => panic!("the caller got an answer although the call was held past its deadline: {v:?}"),
    }
}

/// Waits (a bounded while) until `count_sql` counts at least `n`: the lost
/// call's effect has committed, so a retry meets it rather than racing it.
pub(crate) async fn wait_committed(observer: &mut AsyncPgConnection, count_sql: &str, n: i64) {
    for _ in 0..400 {
        if tests::helpers::scalar(observer, count_sql).await >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the lost call never committed: {count_sql}");
}

/// The fields of the BadRequest violations of `e`.
pub(crate) fn violated_fields(e: &Status) -> Vec<String> {
    use tonic_types::StatusExt;
    e.get_error_details().bad_request().map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect()).unwrap_or_default()
}
