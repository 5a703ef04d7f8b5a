//! Helpers of the guard tests, `<area>/guards.rs`: one test per guard. Most
//! rules are kept by two defences at once (a
//! row lock and a constraint, an early check and a late one); the race tests
//! elsewhere check end results, which the surviving twin keeps right when
//! one defence is removed. Each guard test fails when its guard alone is
//! gone: behavioural where a behaviour shows it, and a schema test (insert
//! the forbidden row directly, expect SQLSTATE 23505 on the column set the
//! rule is about) where the constraint is the last line of defence.
//!
//! Races are made deterministic by holding a row from a test transaction:
//! the real RPCs queue up behind it, the test waits until the database shows
//! them waiting, then lets go. Tests that hold rows run with a lock bound of
//! 8 s (1 s in production), so a loaded machine cannot time the waiters out
//! before they are all queued; every hold is released as soon as the waiters
//! are seen, and a test whose race did not happen says so instead of passing.
use std::time::Duration as StdDuration;

use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use proto::billing::v1::{self as bpb};
use tests::{TestApp, harness::Options, harness::connect, helpers::exec, spawn_app_with};
use tonic_types::StatusExt;

/// A transaction of the test's own that holds rows while RPCs queue up.
pub(crate) struct Holder {
    conn: AsyncPgConnection,
}

impl Holder {
    /// Opens a transaction on `url` and runs `lock_sql` in it (a `SELECT ...
    /// FOR UPDATE` that must return exactly one row).
    pub(crate) async fn hold(url: &str, lock_sql: &str) -> Self {
        let mut conn = connect(url).await;
        exec(&mut conn, "BEGIN").await;
        assert_eq!(exec(&mut conn, lock_sql).await, 1, "the holder locks one row: {lock_sql}");
        Self { conn }
    }

    pub(crate) async fn release(mut self) {
        exec(&mut self.conn, "COMMIT").await;
    }
}

/// How long a test waits to see its RPCs queued: well inside the lock bound
/// of [`spawn_app_holding_rows`], after which the waiters would give up with
/// ABORTED.
pub(crate) const SEE_WAITERS: StdDuration = StdDuration::from_secs(4);

/// A test app whose statements wait up to 8 s for a row lock (inside the
/// 10 s statement bound) instead of 1 s: the test's own [`Holder`] decides
/// when the queued RPCs go on, not how fast a loaded machine gets them all
/// queued within the production bound.
pub(crate) async fn spawn_app_holding_rows() -> TestApp {
    spawn_app_with(Options { lock_timeout: StdDuration::from_secs(8), ..Options::default() }).await
}

/// Runs a statement that must be refused by a unique constraint (SQLSTATE
/// 23505); returns the server's detail line ("Key (cols)=(...) already
/// exists."), which names the column set the constraint enforces.
pub(crate) async fn unique_violation(conn: &mut AsyncPgConnection, sql: &str) -> String {
    match diesel::sql_query(sql).execute(conn).await {
        Err(DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, info)) => {
            info.details().unwrap_or_default().to_owned()
        }
        other => panic!("expected a unique violation (23505) from {sql}, got {other:?}"),
    }
}

pub(crate) async fn deduct(app: &TestApp, session: &str, deduction_id: &str) -> Result<bpb::DeductResponse, tonic::Status> {
    let mut b = app.billing.clone();
    b.deduct(bpb::DeductRequest { usage_session_id: session.into(), deduction_id: deduction_id.into(), units: 1 })
        .await
        .map(|r| r.into_inner())
}

pub(crate) async fn verify(app: &TestApp, order_id: &str) -> Result<bpb::VerifyPaymentResponse, tonic::Status> {
    let (payment_id, signature) = app.pay(order_id);
    let mut b = app.billing.clone();
    b.verify_payment(bpb::VerifyPaymentRequest { order_id: order_id.into(), payment_id, signature }).await.map(|r| r.into_inner())
}

pub(crate) fn reason(e: &tonic::Status) -> String {
    e.get_error_details().error_info().map(|i| i.reason.clone()).unwrap_or_default()
}
