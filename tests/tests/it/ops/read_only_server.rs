//! PostgreSQL failing over under the services (docs/design.md, Error
//! model): a server that turned read-only (a demoted primary) or that ended
//! a pooled connection, idle or in the middle of a statement, is answered
//! UNAVAILABLE with RetryInfo (DATABASE_UNAVAILABLE), never INTERNAL, and
//! once the database takes writes again the same calls succeed without a
//! restart: the pools discarded the connections to the read-only server.
//! Jobs and the deduct coalescer go on (docs/design.md, Jobs). A multi-host
//! connection string with `target_session_attrs=read-write` skips a dead
//! host and a read-only one.
use std::time::Duration as StdDuration;

use chrono::Duration;
use diesel::QueryableByName;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use proto::{billing::v1 as bpb, checkout::v1 as cpb, error::ErrorReason as R};
use shared::{config::CommonConfig, db::DbError, error::AsDbError};
use tests::{
    TestApp, harness,
    helpers::{exec, scalar},
    spawn_app,
};
use tonic::{Code, Status};
use tonic_types::StatusExt;

/// One database of a test, from the server's side (a connection to the
/// maintenance database, which the database's settings do not touch).
pub(super) struct Server {
    admin: AsyncPgConnection,
    db: String,
}

impl Server {
    pub(super) async fn of(url: &str) -> Self {
        let db = url.rsplit('/').next().unwrap().split('?').next().unwrap().to_owned();
        let admin = harness::connect(&harness::pg().await.unwrap().admin_url).await;
        Self { admin, db }
    }

    /// A primary demoted under the services: every new session is
    /// read-only, and the sessions it had are ended (as a primary restarting
    /// as a standby does). Returns how many it ended.
    async fn demote(&mut self) -> i64 {
        exec(&mut self.admin, &format!("ALTER DATABASE \"{}\" SET default_transaction_read_only = on", self.db)).await;
        self.end_sessions().await
    }

    /// The database takes writes again in new sessions; sessions started
    /// while it was read-only stay read-only, as connections to the old
    /// primary would. Returns how many sessions may be read-only: those
    /// started before this (the pools may have opened some a moment ago).
    async fn promote(&mut self) -> i64 {
        exec(&mut self.admin, &format!("ALTER DATABASE \"{}\" RESET default_transaction_read_only", self.db)).await;
        let sql = format!(
            "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = '{}' AND backend_type = 'client backend' \
             AND backend_start < statement_timestamp()",
            self.db
        );
        scalar(&mut self.admin, &sql).await
    }

    /// Ends every client session on the database (57P01, "terminating
    /// connection due to administrator command") and waits until those are
    /// gone (the pools may open new ones meanwhile). Returns how many it
    /// ended.
    pub(super) async fn end_sessions(&mut self) -> i64 {
        let sql = format!(
            "SELECT coalesce(string_agg(pid::text, ',') FILTER (WHERE pg_terminate_backend(pid)), '') AS v \
             FROM pg_stat_activity WHERE datname = '{}' AND backend_type = 'client backend'",
            self.db
        );
        let pids = diesel::sql_query(sql).get_result::<Text1>(&mut self.admin).await.unwrap().v;
        if pids.is_empty() {
            return 0;
        }
        let alive = format!("SELECT count(*) AS n FROM pg_stat_activity WHERE pid IN ({pids})");
        for _ in 0..500 {
            if scalar(&mut self.admin, &alive).await == 0 {
                return pids.split(',').count() as i64;
            }
            tokio::time::sleep(StdDuration::from_millis(10)).await;
        }
        panic!("the terminated sessions of {} did not go away", self.db);
    }
}

/// One text column `v`.
#[derive(QueryableByName)]
struct Text1 {
    #[diesel(sql_type = diesel::sql_types::Text)]
    v: String,
}

/// UNAVAILABLE, DATABASE_UNAVAILABLE with RetryInfo; for a call through
/// checkout, BILLING_UNAVAILABLE with billing's DATABASE_UNAVAILABLE.
pub(super) fn is_db_unavailable(s: &Status) -> bool {
    let d = s.get_error_details();
    let (Some(info), Some(_)) = (d.error_info(), d.retry_info().and_then(|r| r.retry_delay)) else { return false };
    s.code() == Code::Unavailable
        && (info.reason == R::DatabaseUnavailable.as_str_name()
            || (info.reason == R::BillingUnavailable.as_str_name()
                && info.metadata.get("billing_reason").map(String::as_str) == Some(R::DatabaseUnavailable.as_str_name())))
}

/// The failures allowed after the database took writes again: each session
/// that may still be read-only fails at most one call (UNAVAILABLE) before
/// its pool discards it.
struct Budget {
    read_only: i64,
    spent: std::cell::RefCell<Vec<String>>,
}

impl Budget {
    fn new(read_only: i64) -> Self {
        Self { read_only, spent: Default::default() }
    }

    /// Counts a failed call; panics on one that is not DATABASE_UNAVAILABLE
    /// or past the budget.
    #[track_caller]
    fn spend(&self, what: &str, s: &Status) {
        assert!(is_db_unavailable(s), "{what} after the database took writes again: {s:?}");
        let mut spent = self.spent.borrow_mut();
        spent.push(format!("{what}: {}", s.message()));
        assert!(spent.len() as i64 <= self.read_only, "{spent:?}: more failures than read-only sessions ({})", self.read_only);
    }

    /// Calls until it succeeds, spending a failure each time it does not.
    async fn until_ok<T, Fut: Future<Output = Result<T, Status>>>(&self, what: &str, mut call: impl FnMut() -> Fut) -> T {
        loop {
            match call().await {
                Ok(v) => return v,
                Err(s) => self.spend(what, &s),
            }
        }
    }
}

/// The writes of the test, each with fixed ids, so a repeat is the same
/// request (a retry).
struct Writes {
    /// A Text usage session to Deduct on.
    text: String,
    /// An order with its payment, to VerifyPayment.
    order: bpb::Order,
    payment: (String, String),
    /// The idempotency keys of StartUsageSession and CreateSession.
    keys: [String; 2],
}

impl Writes {
    async fn prepare(app: &TestApp) -> Self {
        let text = app.start_usage("ro-deduct", bpb::UsageKind::Text).await.unwrap().id;
        let order = app.order("ro-buyer", "basic-monthly").await;
        let payment = app.pay(&order.id);
        Self { text, order, payment, keys: [0, 1].map(|_| uuid::Uuid::new_v4().to_string()) }
    }

    /// Each write once, by name.
    async fn run(&self, app: &TestApp) -> Vec<(&'static str, Result<(), Status>)> {
        let (mut b, mut c) = (app.billing.clone(), app.checkout.clone());
        let deduct = bpb::DeductRequest { usage_session_id: self.text.clone(), deduction_id: "ro-1".into(), units: 1 };
        let start = bpb::StartUsageSessionRequest {
            user_id: "ro-starter".into(),
            kind: bpb::UsageKind::Text as i32,
            request_id: self.keys[0].clone(),
        };
        let create_order = bpb::CreateOrderRequest {
            checkout_session_id: "9b0e7a7e-3f55-4d7c-8d3c-2f8f5a3c0001".into(),
            user_id: "ro-orderer".into(),
            plan_id: "basic-monthly".into(),
        };
        let verify = bpb::VerifyPaymentRequest {
            order_id: self.order.id.clone(),
            payment_id: self.payment.0.clone(),
            signature: self.payment.1.clone(),
        };
        let session = cpb::CreateSessionRequest {
            user_id: "ro-shopper".into(),
            plan_id: "basic-monthly".into(),
            request_id: self.keys[1].clone(),
        };
        vec![
            ("Deduct", b.deduct(deduct).await.map(drop)),
            ("StartUsageSession", b.start_usage_session(start).await.map(drop)),
            ("CreateOrder", b.create_order(create_order).await.map(drop)),
            ("VerifyPayment", b.verify_payment(verify).await.map(drop)),
            ("CreateSession", c.create_session(session).await.map(drop)),
        ]
    }
}

/// The auto-deduct job through the test-side App (its own pool); a
/// database failure as a caller would get it.
async fn auto_deduct(app: &TestApp) -> Result<String, Status> {
    billing_svc::jobs::run_once(&app.billing_app, "auto-deduct").await.map_err(|e| {
        let db = e.downcast_ref::<billing_svc::Error>().and_then(AsDbError::as_db_error);
        shared::status::from_db(db.unwrap_or_else(|| panic!("auto-deduct failed outside the database: {e:#}")))
    })
}

/// billing's database turns read-only under running services (a demoted
/// primary): every write answers UNAVAILABLE with RetryInfo, never INTERNAL,
/// and writes nothing. Once it takes writes again, the same calls succeed
/// without a restart; a connection the pools still hold to the read-only
/// server fails at most one call before it is discarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_read_only_billing_database_answers_unavailable_and_writes_resume_without_a_restart() {
    let app = spawn_app().await;
    let writes = Writes::prepare(&app).await;
    let call = app.start_usage("ro-caller", bpb::UsageKind::Call).await.unwrap().id;
    auto_deduct(&app).await.unwrap();
    app.clock.advance(Duration::minutes(10)); // one auto-deduct interval due
    let mut server = Server::of(&app.billing_db_url).await;
    assert!(server.demote().await >= 2, "the pools held too few connections to show anything");

    for round in 0..3 {
        for (rpc, r) in writes.run(&app).await {
            let s = r.expect_err(rpc);
            assert!(is_db_unavailable(&s), "{rpc} (round {round}) on a read-only database: {s:?}");
        }
        let job = auto_deduct(&app).await;
        assert!(job.as_ref().is_err_and(is_db_unavailable), "auto-deduct (round {round}) on a read-only database: {job:?}");
    }
    // Reads go on from the read-only server.
    assert_eq!(app.usage_session(&writes.text).await.units_charged, 0);
    // What the pools still hold is read-only; each may fail one call below.
    let read_only = server.promote().await;

    let mut db = app.billing_db().await;
    let count = |sql: &str| format!("SELECT count(*) AS n FROM {sql}");
    for (what, sql) in [
        ("deductions", count("deductions WHERE deduction_id = 'ro-1'")),
        ("usage sessions", count("usage_sessions WHERE user_id = 'ro-starter'")),
        ("orders", count("orders WHERE user_id IN ('ro-orderer', 'ro-shopper')")),
        ("paid orders", count("orders WHERE user_id = 'ro-buyer' AND status <> 'CREATED'")),
        ("subscriptions", count("subscriptions WHERE user_id = 'ro-buyer'")),
        ("auto deductions", count("ledger WHERE usage_session_id IN (SELECT id FROM usage_sessions WHERE kind = 'CALL')")),
    ] {
        assert_eq!(scalar(&mut db, &sql).await, 0, "{what} written while read-only");
    }
    let mut checkout_db = app.checkout_db().await;
    assert_eq!(scalar(&mut checkout_db, &count("checkout_sessions WHERE user_id = 'ro-shopper'")).await, 0);

    // The same calls again, as a client retries them: a read-only session
    // still pooled fails one call (UNAVAILABLE) and is gone.
    let budget = Budget::new(read_only);
    loop {
        let results = writes.run(&app).await;
        if results.iter().all(|(_, r)| r.is_ok()) {
            break;
        }
        for (rpc, r) in results {
            if let Err(s) = r {
                budget.spend(rpc, &s);
            }
        }
    }
    budget.until_ok("auto-deduct", || auto_deduct(&app)).await;
    assert_eq!(scalar(&mut db, &count("deductions WHERE deduction_id = 'ro-1'")).await, 1);
    assert_eq!(scalar(&mut db, &count("subscriptions WHERE user_id = 'ro-buyer'")).await, 1);
    assert_eq!(app.usage_session(&call).await.auto_deductions_processed, 1, "the due interval charged once");
    assert_eq!(scalar(&mut checkout_db, &count("checkout_sessions WHERE user_id = 'ro-shopper'")).await, 1);

    // The jobs go on, and so do the coalescer's batches: concurrent Deducts
    // of 8 users.
    app.clock.advance(Duration::minutes(10));
    budget.until_ok("auto-deduct", || auto_deduct(&app)).await;
    assert_eq!(app.usage_session(&call).await.auto_deductions_processed, 2);
    let users: Vec<_> = (0..8).map(|i| format!("ro-after-{i}")).collect();
    let starts = users.iter().map(|u| budget.until_ok("StartUsageSession", || app.start_usage(u, bpb::UsageKind::Text)));
    let sessions: Vec<_> = futures::future::join_all(starts).await.into_iter().map(|s| s.id).collect();
    let deducts = sessions.iter().map(|id| {
        let req = bpb::DeductRequest { usage_session_id: id.clone(), deduction_id: "after".into(), units: 1 };
        let billing = &app.billing;
        budget.until_ok("Deduct", move || {
            let (mut b, req) = (billing.clone(), req.clone());
            async move { b.deduct(req).await }
        })
    });
    futures::future::join_all(deducts).await;
    let charged = "SELECT count(*) AS n FROM deductions WHERE deduction_id = 'after'";
    assert_eq!(scalar(&mut db, charged).await, 8);
}

/// checkout's own database turns read-only: CreateSession answers
/// DATABASE_UNAVAILABLE, and with the same key succeeds once it takes
/// writes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_read_only_checkout_database_answers_unavailable_and_recovers() {
    let app = spawn_app().await;
    app.create_session("ro-warm", "basic-monthly").await;
    let mut server = Server::of(&app.checkout_db_url).await;
    server.demote().await;
    let req = cpb::CreateSessionRequest {
        user_id: "ro-c".into(),
        plan_id: "basic-monthly".into(),
        request_id: uuid::Uuid::new_v4().to_string(),
    };
    for _ in 0..3 {
        let s = app.checkout.clone().create_session(req.clone()).await.unwrap_err();
        let reason = s.get_error_details().error_info().map(|i| i.reason.clone());
        assert!(is_db_unavailable(&s) && reason.as_deref() == Some("DATABASE_UNAVAILABLE"), "{s:?}");
    }
    let budget = Budget::new(server.promote().await);
    let create = |req: cpb::CreateSessionRequest| {
        let mut c = app.checkout.clone();
        async move { c.create_session(req).await }
    };
    let session = budget.until_ok("CreateSession", || create(req.clone())).await;
    assert_eq!(session.into_inner().session.unwrap().user_id, "ro-c", "the same key, the same session");
    let other = cpb::CreateSessionRequest { user_id: "ro-c2".into(), plan_id: "basic-monthly".into(), ..Default::default() };
    budget.until_ok("CreateSession", || create(other.clone())).await;
    let mut db = app.checkout_db().await;
    let sessions = "SELECT count(*) AS n FROM checkout_sessions WHERE user_id IN ('ro-c', 'ro-c2')";
    assert_eq!(scalar(&mut db, sessions).await, 2);
}

/// A multi-host connection string (libpq's form) through the services'
/// pool: the dead first host is skipped, a read-only server is refused
/// (no connection, UNAVAILABLE), and the writable one is used again at
/// once, with the session limits the pool adds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_multi_host_url_skips_a_dead_host_and_a_read_only_one() {
    async fn show(pool: &shared::db::Pool, name: &str) -> Result<String, DbError> {
        let mut c = shared::db::conn(pool).await?;
        Ok(diesel::sql_query(format!("SELECT current_setting('{name}') AS v")).get_result::<Text1>(&mut c).await?.v)
    }
    let app = spawn_app().await;
    // postgres://user@host:port/db → postgres://user@127.0.0.1:1,host:port/db?target_session_attrs=read-write
    let (scheme, rest) = app.billing_db_url.split_once("://").unwrap();
    let (authority, path) = rest.split_once('/').unwrap();
    let (user, host) = authority.rsplit_once('@').map_or(("", authority), |(u, h)| (u, h));
    let at = if user.is_empty() { String::new() } else { format!("{user}@") };
    let url = format!("{scheme}://{at}127.0.0.1:1,{host}/{path}?target_session_attrs=read-write");
    let config = CommonConfig {
        pool_size: 2,
        connect_timeout: StdDuration::from_millis(500),
        lock_timeout: StdDuration::from_millis(1234),
        ..CommonConfig::default()
    };
    let pool = shared::db::pool(&url, &config);
    assert_eq!(show(&pool, "transaction_read_only").await.unwrap(), "off");
    assert_eq!(show(&pool, "lock_timeout").await.unwrap(), "1234ms", "the session limits the pool adds");

    let mut server = Server::of(&app.billing_db_url).await;
    server.demote().await;
    for _ in 0..2 {
        let e = show(&pool, "transaction_read_only").await.unwrap_err();
        assert!(matches!(e, DbError::Unavailable(_)), "{e:?}");
    }
    server.promote().await;
    assert_eq!(show(&pool, "transaction_read_only").await.unwrap(), "off");
}
