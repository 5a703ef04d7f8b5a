//! One test per guard. Most rules here are kept by two defences at once (a
//! row lock and a constraint, an early check and a late one); the race tests
//! elsewhere check end results, which the surviving twin keeps right when
//! one defence is removed. Each test below fails when its guard alone is
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

use chrono::{TimeZone, Utc};
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use futures::{StreamExt, future::join_all, stream};
use proto::{
    billing::v1::{self as bpb, UsageKind},
    checkout::v1 as cpb,
};
use tests::{
    TestApp,
    clients::with_key,
    harness::Options,
    harness::connect,
    helpers::{assert_ledger_matches_balances, exec, lock_waiters, retrying, scalar, wait_for_waiters},
    spawn_app, spawn_app_with,
};
use tonic::Code;
use tonic_types::StatusExt;

// ---------------------------------------------------------------- helpers

/// A transaction of the test's own that holds rows while RPCs queue up.
struct Holder {
    conn: AsyncPgConnection,
}

impl Holder {
    /// Opens a transaction on `url` and runs `lock_sql` in it (a `SELECT ...
    /// FOR UPDATE` that must return exactly one row).
    async fn hold(url: &str, lock_sql: &str) -> Self {
        let mut conn = connect(url).await;
        exec(&mut conn, "BEGIN").await;
        assert_eq!(exec(&mut conn, lock_sql).await, 1, "the holder locks one row: {lock_sql}");
        Self { conn }
    }

    async fn release(mut self) {
        exec(&mut self.conn, "COMMIT").await;
    }
}

/// How long a test waits to see its RPCs queued: well inside the lock bound
/// of [`spawn_app_holding_rows`], after which the waiters would give up with
/// ABORTED.
const SEE_WAITERS: StdDuration = StdDuration::from_secs(4);

/// A test app whose statements wait up to 8 s for a row lock (inside the
/// 10 s statement bound) instead of 1 s: the test's own [`Holder`] decides
/// when the queued RPCs go on, not how fast a loaded machine gets them all
/// queued within the production bound.
async fn spawn_app_holding_rows() -> TestApp {
    spawn_app_with(Options { lock_timeout: StdDuration::from_secs(8), ..Options::default() }).await
}

/// Runs a statement that must be refused by a unique constraint (SQLSTATE
/// 23505); returns the server's detail line ("Key (cols)=(...) already
/// exists."), which names the column set the constraint enforces.
async fn unique_violation(conn: &mut AsyncPgConnection, sql: &str) -> String {
    match diesel::sql_query(sql).execute(conn).await {
        Err(DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, info)) => {
            info.details().unwrap_or_default().to_owned()
        }
        other => panic!("expected a unique violation (23505) from {sql}, got {other:?}"),
    }
}

async fn deduct(app: &TestApp, session: &str, deduction_id: &str) -> Result<bpb::DeductResponse, tonic::Status> {
    let mut b = app.billing.clone();
    b.deduct(bpb::DeductRequest { usage_session_id: session.into(), deduction_id: deduction_id.into(), units: 1 })
        .await
        .map(|r| r.into_inner())
}

async fn verify(app: &TestApp, order_id: &str) -> Result<bpb::VerifyPaymentResponse, tonic::Status> {
    let (payment_id, signature) = app.pay(order_id);
    let mut b = app.billing.clone();
    b.verify_payment(bpb::VerifyPaymentRequest { order_id: order_id.into(), payment_id, signature }).await.map(|r| r.into_inner())
}

fn reason(e: &tonic::Status) -> String {
    e.get_error_details().error_info().map(|i| i.reason.clone()).unwrap_or_default()
}

// ------------------------------------------- deductions: usage session lock

/// With no credits every unit is recorded as unpaid on the session and
/// nothing reaches the ledger, so the ledger's unique key cannot notice a
/// lost update: only the usage session's row lock in the deduction function
/// keeps concurrent Deducts on one session from overwriting each other.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn guard_session_lock_concurrent_unpaid_deducts_on_one_session_lose_nothing() {
    let app = spawn_app_holding_rows().await;
    let s = app.start_usage("broke", UsageKind::Text).await.unwrap();
    let mut db = app.billing_db().await;
    exec(&mut db, "UPDATE subscriptions SET credits_granted = 0, credits_remaining = 0 WHERE user_id = 'broke'").await;
    let sub = app.usage_session(&s.id).await.subscription_id;

    // Rounds of 4 Deducts (what billing admits per usage session at once),
    // all queued behind a held subscription row, then let go together.
    const ROUNDS: usize = 3;
    for round in 0..ROUNDS {
        let holder =
            Holder::hold(&app.billing_db_url, &format!("SELECT 1 FROM subscriptions WHERE id = '{sub}' FOR UPDATE")).await;
        let ids: Vec<String> = (0..4).map(|i| format!("r{round}-{i}")).collect();
        let calls = tokio::spawn({
            let app_billing = app.billing.clone();
            let id = s.id.clone();
            async move {
                join_all(ids.into_iter().map(|d| {
                    let mut b = app_billing.clone();
                    let id = id.clone();
                    async move { b.deduct(bpb::DeductRequest { usage_session_id: id, deduction_id: d, units: 1 }).await }
                }))
                .await
            }
        });
        let queued = wait_for_waiters(&mut db, 4, SEE_WAITERS).await;
        holder.release().await;
        let results = calls.await.unwrap();
        assert!(queued, "round {round}: the 4 Deducts never queued behind the held row; the race did not happen");
        for r in results {
            let r = r.unwrap().into_inner();
            assert_eq!((r.units_charged, r.units_unpaid, r.replayed), (0, 1, false));
        }
    }

    // And a storm of 200 on the same session; refusals (ABORTED when the
    // per-session admission or the lock bound runs out) are retried with the
    // same deduction id, which replays a committed one.
    const STORM: usize = 200;
    let results: Vec<_> = stream::iter(0..STORM)
        .map(|i| {
            let (app, id, deduction_id) = (&app, s.id.clone(), format!("storm-{i}"));
            async move { retrying(|| deduct(app, &id, &deduction_id)).await }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let mut unpaid = 0;
    for r in results {
        let r = r.expect("every Deduct succeeds once retried");
        assert_eq!(r.units_charged, 0);
        unpaid += r.units_unpaid;
    }
    assert_eq!(unpaid, STORM as i64);

    let total = (ROUNDS * 4 + STORM) as i64;
    let row = |col: &str| format!("SELECT {col} AS n FROM usage_sessions WHERE id = '{}'", s.id);
    assert_eq!(scalar(&mut db, &row("units_unpaid")).await, total, "every unpaid unit is recorded on the session");
    assert_eq!(scalar(&mut db, &row("next_unit_index")).await, total, "every unit got its own index");
    assert_eq!(scalar(&mut db, &row("auto_deductions_processed")).await, total);
    assert_eq!(scalar(&mut db, &row("units_charged")).await, 0);
    assert_eq!(
        scalar(
            &mut db,
            &format!("SELECT coalesce(sum(units_unpaid), 0)::bigint AS n FROM deductions WHERE usage_session_id = '{}'", s.id)
        )
        .await,
        total
    );
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM ledger").await, 0);
    assert_ledger_matches_balances(&mut db).await;
}

// ------------------------------------------------------ schema: last lines

/// The ledger allows one row per (usage session, unit index): a unit is
/// charged once however the deduction paths race.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn guard_ledger_refuses_a_second_row_for_one_unit_of_a_session() {
    let app = spawn_app().await;
    let s = app.start_usage("ledgered", UsageKind::Text).await.unwrap();
    let mut db = app.billing_db().await;
    let insert = |unit: i64| {
        format!(
            "INSERT INTO ledger (subscription_id, period_start, usage_session_id, unit_index, kind, credits) \
             SELECT subscription_id, now(), id, {unit}, 'USAGE', 1 FROM usage_sessions WHERE id = '{}'",
            s.id
        )
    };
    assert_eq!(exec(&mut db, &insert(0)).await, 1);
    // The same row for another unit is fine: only the pair is unique.
    assert_eq!(exec(&mut db, &insert(1)).await, 1);
    let detail = unique_violation(&mut db, &insert(0)).await;
    assert!(detail.contains("(usage_session_id, unit_index)"), "refused by a unique key on the session and unit: {detail}");
    assert_eq!(scalar(&mut db, &format!("SELECT count(*) AS n FROM ledger WHERE usage_session_id = '{}'", s.id)).await, 2);
}

/// Checkout allows one ACTIVE session per user; other statuses and other
/// users are not limited.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn guard_checkout_refuses_a_second_active_session_for_one_user() {
    let app = spawn_app().await;
    let mut db = app.checkout_db().await;
    let insert = |user: &str, status: &str| {
        format!(
            "INSERT INTO checkout_sessions (id, user_id, plan_id, status, amount_minor, currency, order_id, expires_at, \
             created_at, updated_at) VALUES (gen_random_uuid(), '{user}', 'basic-monthly', '{status}', 49900, 'INR', \
             'order_' || gen_random_uuid(), now() + interval '1 day', now(), now())"
        )
    };
    assert_eq!(exec(&mut db, &insert("one", "ACTIVE")).await, 1);
    assert_eq!(exec(&mut db, &insert("one", "EXPIRED")).await, 1, "non-ACTIVE sessions are not limited");
    assert_eq!(exec(&mut db, &insert("other", "ACTIVE")).await, 1, "another user's ACTIVE session is fine");
    let detail = unique_violation(&mut db, &insert("one", "ACTIVE")).await;
    assert!(detail.contains("(user_id)"), "refused by a unique key on the user: {detail}");
    assert_eq!(
        scalar(&mut db, "SELECT count(*) AS n FROM checkout_sessions WHERE user_id = 'one' AND status = 'ACTIVE'").await,
        1
    );
}

/// Billing allows one subscription per order (whatever its status).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn guard_subscriptions_refuse_a_second_subscription_for_one_order() {
    let app = spawn_app().await;
    let order = app.order("twice", "basic-monthly").await;
    let other = app.order("twice", "pro-monthly").await;
    let mut db = app.billing_db().await;
    // CANCELLED rows: the one-ACTIVE-per-user rule is not what is tested.
    let insert = |order_id: &str| {
        format!(
            "INSERT INTO subscriptions (id, user_id, plan_id, order_id, status, anchor_at, period_start, period_end, \
             credits_granted, credits_remaining, ended_at) VALUES (gen_random_uuid(), 'twice', 'basic-monthly', '{order_id}', \
             'CANCELLED', now(), now(), now() + interval '1 month', 0, 0, now())"
        )
    };
    assert_eq!(exec(&mut db, &insert(&order.id)).await, 1);
    assert_eq!(exec(&mut db, &insert(&other.id)).await, 1, "another order's subscription is fine");
    let detail = unique_violation(&mut db, &insert(&order.id)).await;
    assert!(detail.contains("(order_id)"), "refused by a unique key on the order: {detail}");
    assert_eq!(scalar(&mut db, &format!("SELECT count(*) AS n FROM subscriptions WHERE order_id = '{}'", order.id)).await, 1);
}

// --------------------------------------------------------- limits: periods

/// A call that crosses the start of a billing period counts only its minutes
/// inside the new period, and a call that ended in the previous period
/// counts nothing. The free plan allows 60 minutes a (calendar) month.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn guard_minutes_limit_counts_only_minutes_inside_the_current_period() {
    let app = spawn_app().await;
    let march_31 = |h: u32, m: u32| Utc.with_ymd_and_hms(2026, 3, 31, h, m, 0).unwrap();
    let april_1 = |h: u32, m: u32| Utc.with_ymd_and_hms(2026, 4, 1, h, m, 0).unwrap();
    // 45 minutes entirely in March.
    app.clock.set(march_31(22, 0));
    let early = app.start_usage("crosser", UsageKind::Call).await.unwrap();
    app.clock.set(march_31(22, 45));
    app.end_usage(&early.id, 0).await.unwrap();
    // A call from 23:10 on March 31st still running at 00:20 on April 1st:
    // 70 minutes long, 20 of them in April.
    app.clock.set(march_31(23, 10));
    let crossing = app.start_usage("crosser", UsageKind::Call).await.unwrap();
    app.clock.set(april_1(0, 20));

    let usage = || {
        let mut b = app.billing.clone();
        async move { b.get_usage(bpb::GetUsageRequest { user_id: "crosser".into() }).await.unwrap().into_inner().usage.unwrap() }
    };
    let u = usage().await;
    assert_eq!(u.period_start.unwrap().seconds, april_1(0, 0).timestamp(), "April is the current period");
    assert_eq!((u.sessions_used, u.minutes_used), (0, 20), "only the crossing call's 20 April minutes count");

    // 20 of 60 minutes used: a new call is allowed (70 would be over).
    app.start_usage("crosser", UsageKind::Call).await.expect("20 of 60 minutes used in April");
    app.end_usage(&crossing.id, 0).await.unwrap();
    let u = usage().await;
    assert_eq!((u.sessions_used, u.minutes_used), (1, 20));
}

// ------------------------------------------ idempotency keys: request hash

/// A key reused by another user's StartUsageSession is refused; it never
/// hands the second user the first user's session.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn guard_idempotency_key_of_another_users_start_usage_session_is_refused() {
    let app = spawn_app().await;
    let start = |user: &str| {
        let mut b = app.billing.clone();
        let req = bpb::StartUsageSessionRequest { user_id: user.into(), kind: UsageKind::Text as i32 };
        async move { b.start_usage_session(with_key(req, "shared-usage-key")).await.map(|r| r.into_inner().session.unwrap()) }
    };
    let first = start("alice").await.unwrap();
    assert_eq!(first.user_id, "alice");
    // The same request again is a replay of the same session.
    assert_eq!(start("alice").await.unwrap().id, first.id);
    let e = start("bob").await.expect_err("another user's request under a used key");
    assert_eq!((e.code(), reason(&e).as_str()), (Code::InvalidArgument, "IDEMPOTENCY_KEY_REUSED"), "{e:?}");
    let mut db = app.billing_db().await;
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM usage_sessions WHERE user_id = 'bob'").await, 0);
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM usage_sessions WHERE user_id = 'alice'").await, 1);
}

/// CompleteSession looks its key up before billing captures (so a plain
/// reuse is refused early); a reuse that arrives while the first request is
/// still in flight passes that look-up, and only the claim inside the
/// transaction can refuse it. Bob's verification is held at billing while
/// Alice completes under the same key, so Bob's claim meets her key.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn guard_idempotency_key_of_another_users_complete_session_in_flight_is_refused() {
    let app = spawn_app_holding_rows().await;
    let mut billing_db = app.billing_db().await;
    let complete = |session_id: &str, (payment_id, signature): (String, String), key: &str| {
        let mut c = app.checkout.clone();
        let req = cpb::CompleteSessionRequest { id: session_id.into(), payment_id, signature };
        let req = with_key(req, key);
        async move { c.complete_session(req).await.map(|r| r.into_inner()) }
    };
    let mut exercised = false;
    for attempt in 0..3 {
        let key = format!("shared-complete-key-{attempt}");
        let alice = app.create_session(&format!("alice-{attempt}"), "basic-monthly").await;
        let bob = app.create_session(&format!("bob-{attempt}"), "basic-monthly").await;
        let bob_payment = app.pay(&bob.order_id);
        let holder =
            Holder::hold(&app.billing_db_url, &format!("SELECT 1 FROM orders WHERE id = '{}' FOR UPDATE", bob.order_id)).await;
        let bob_call = tokio::spawn(complete(&bob.id, bob_payment.clone(), &key));
        let bob_queued = wait_for_waiters(&mut billing_db, 1, SEE_WAITERS).await;
        let alice_done = if bob_queued { Some(complete(&alice.id, app.pay(&alice.order_id), &key).await) } else { None };
        // Bob's capture must still be waiting when Alice's key commits.
        let still_queued = bob_queued && lock_waiters(&mut billing_db).await >= 1;
        holder.release().await;
        let bob_result = bob_call.await.unwrap();
        if let Some(done) = alice_done {
            assert_eq!(done.unwrap().session.unwrap().id, alice.id, "Alice completes her own session");
        }
        if !still_queued {
            continue;
        }
        exercised = true;
        match bob_result {
            Err(e) => {
                assert_eq!((e.code(), reason(&e).as_str()), (Code::InvalidArgument, "IDEMPOTENCY_KEY_REUSED"), "{e:?}")
            }
            Ok(r) => panic!("Bob's CompleteSession under Alice's key answered {:?}", r.session.map(|s| (s.id, s.user_id))),
        }
        // Bob's session was not completed by Alice's key; his own completes it.
        assert_ne!(app.get_session(&bob.id).await.status, cpb::SessionStatus::Completed as i32);
        let done = complete(&bob.id, bob_payment, &format!("bob-own-key-{attempt}")).await.unwrap().session.unwrap();
        assert_eq!((done.id.as_str(), done.status), (bob.id.as_str(), cpb::SessionStatus::Completed as i32));
        break;
    }
    assert!(exercised, "Bob's verification was never held while Alice completed; the race did not happen");
}

// ------------------------------------------------------ payments: capture

/// CancelOrders withdraws an order only while nobody is paying it: a
/// capture holds the order row from its first read to its commit, so a
/// cancel that lands mid-capture waits and then finds the order PAID. The
/// capture is held (the user's live subscription is locked by the test)
/// after it read the order, and the cancel is sent then.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn guard_order_lock_cancel_during_capture_never_reports_a_paid_order_cancelled() {
    let app = spawn_app_holding_rows().await;
    let mut db = app.billing_db().await;
    let live = app.subscribe("payer", "basic-monthly").await;
    let order = app.order("payer", "pro-monthly").await;
    let holder =
        Holder::hold(&app.billing_db_url, &format!("SELECT 1 FROM subscriptions WHERE id = '{}' FOR UPDATE", live.id)).await;
    let capture = tokio::spawn({
        let (app_billing, order_id) = (app.billing.clone(), order.id.clone());
        let (payment_id, signature) = app.pay(&order.id);
        async move {
            let mut b = app_billing;
            b.verify_payment(bpb::VerifyPaymentRequest { order_id, payment_id, signature }).await
        }
    });
    let capture_queued = wait_for_waiters(&mut db, 1, SEE_WAITERS).await;
    let cancel = tokio::spawn({
        let (mut b, id) = (app.billing.clone(), order.id.clone());
        async move { b.cancel_orders(bpb::CancelOrdersRequest { order_ids: vec![id] }).await }
    });
    // The cancel either queues behind the capture, or (no order lock)
    // returns at once.
    let deadline = tokio::time::Instant::now() + SEE_WAITERS;
    while !cancel.is_finished() && lock_waiters(&mut db).await < 2 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(StdDuration::from_millis(3)).await;
    }
    holder.release().await;
    let captured = capture.await.unwrap();
    let cancelled = cancel.await.unwrap();
    assert!(capture_queued, "the capture never waited on the held subscription; the race did not happen");
    let captured = captured.expect("the payment is captured").into_inner();
    assert_eq!(captured.order.unwrap().status, bpb::OrderStatus::Paid as i32);
    let reported = cancelled.expect("CancelOrders answers").into_inner().orders;
    assert_eq!(reported.len(), 1);
    assert_eq!(
        reported[0].status,
        bpb::OrderStatus::Paid as i32,
        "CancelOrders must not report an order cancelled while its payment is being captured"
    );
    assert_eq!(
        scalar(&mut db, &format!("SELECT count(*) AS n FROM orders WHERE id = '{}' AND status = 'PAID'", order.id)).await,
        1
    );
    assert_eq!(scalar(&mut db, &format!("SELECT count(*) AS n FROM subscriptions WHERE order_id = '{}'", order.id)).await, 1);
}

/// A late payment of an older order never replaces the subscription a newer
/// order bought: it is recorded as a discrepancy for a refund.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn guard_newer_order_a_late_payment_of_an_older_order_never_replaces_its_subscription() {
    let app = spawn_app().await;
    let older = app.order("switcher", "basic-monthly").await;
    let newer = app.order("switcher", "pro-monthly").await;
    let bought = verify(&app, &newer.id).await.unwrap().subscription.unwrap();
    let e = verify(&app, &older.id).await.expect_err("the older order's payment buys nothing");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    let mut db = app.billing_db().await;
    assert_eq!(
        scalar(&mut db, &format!("SELECT count(*) AS n FROM subscriptions WHERE id = '{}' AND status = 'ACTIVE'", bought.id))
            .await,
        1,
        "the newer order's subscription stays live"
    );
    assert_eq!(scalar(&mut db, &format!("SELECT count(*) AS n FROM subscriptions WHERE order_id = '{}'", older.id)).await, 0);
    assert_eq!(
        scalar(
            &mut db,
            &format!(
                "SELECT count(*) AS n FROM payment_discrepancies WHERE order_id = '{}' AND kind = 'ORDER_SUPERSEDED' AND status = 'OPEN'",
                older.id
            )
        )
        .await,
        1
    );
}

/// A payment refused once (here the webhook reported a wrong amount) stays
/// refused when VerifyPayment brings it again with a valid signature: the
/// order is not paid by it and no subscription is created.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn guard_refused_payment_stays_refused_when_verify_payment_brings_it_again() {
    let mut app = spawn_app().await;
    let order = app.order("shortpay", "basic-monthly").await;
    let (payment_id, signature) = app.pay(&order.id);
    let hook = app.captured_webhook(&order.id, &payment_id, order.amount_minor - 1, &order.currency, "evt-short");
    app.billing.handle_gateway_webhook(hook).await.unwrap();
    let mut db = app.billing_db().await;
    assert_eq!(
        scalar(&mut db, &format!("SELECT count(*) AS n FROM payment_discrepancies WHERE payment_id = '{payment_id}'")).await,
        1,
        "the wrong amount is recorded"
    );
    let e = app
        .billing
        .verify_payment(bpb::VerifyPaymentRequest { order_id: order.id.clone(), payment_id: payment_id.clone(), signature })
        .await
        .expect_err("a refused payment buys nothing");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert_eq!(
        scalar(&mut db, &format!("SELECT count(*) AS n FROM orders WHERE id = '{}' AND status = 'PAID'", order.id)).await,
        0
    );
    assert_eq!(scalar(&mut db, &format!("SELECT count(*) AS n FROM subscriptions WHERE order_id = '{}'", order.id)).await, 0);
}

// ------------------------------------- deductions: the live subscription

/// A charge whose session points at a replaced subscription looks up the
/// user's live one; when a purchase replaces that one while the charge waits
/// for it, the charge looks again (a fresh snapshot sees the new row) and
/// charges the new subscription instead of recording the units unpaid. The
/// purchase is held (the test locks the new plan's row, which the new
/// subscription references) after it replaced the live row, and the Deduct
/// is sent then.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn guard_charge_retry_a_deduct_during_a_purchase_charges_the_new_subscription() {
    let app = spawn_app_holding_rows().await;
    let mut db = app.billing_db().await;
    // A session on the free subscription, which a basic purchase replaced.
    let s = app.start_usage("upgrader2", UsageKind::Call).await.unwrap();
    let basic = app.subscribe("upgrader2", "basic-monthly").await;
    assert_ne!(s.subscription_id, basic.id);
    let order = app.order("upgrader2", "pro-monthly").await;

    let holder = Holder::hold(&app.billing_db_url, "SELECT 1 FROM plans WHERE id = 'pro-monthly' FOR UPDATE").await;
    let purchase = tokio::spawn({
        let (mut b, order_id) = (app.billing.clone(), order.id.clone());
        let (payment_id, signature) = app.pay(&order.id);
        async move { b.verify_payment(bpb::VerifyPaymentRequest { order_id, payment_id, signature }).await }
    });
    let purchase_queued = wait_for_waiters(&mut db, 1, SEE_WAITERS).await;
    let charge = tokio::spawn({
        let (mut b, id) = (app.billing.clone(), s.id.clone());
        async move { b.deduct(bpb::DeductRequest { usage_session_id: id, deduction_id: "mid-purchase".into(), units: 1 }).await }
    });
    let charge_queued = purchase_queued && wait_for_waiters(&mut db, 2, SEE_WAITERS).await;
    holder.release().await;
    let pro = purchase.await.unwrap().expect("the purchase succeeds").into_inner().subscription.unwrap();
    let charged = charge.await.unwrap().expect("the Deduct succeeds").into_inner();
    assert!(charge_queued, "the Deduct never waited behind the purchase; the race did not happen");
    assert_eq!(pro.plan_id, "pro-monthly");
    assert_eq!((charged.units_charged, charged.units_unpaid), (1, 0), "charged from the live balance");
    assert_eq!(charged.session.unwrap().subscription_id, pro.id);
    assert_eq!(
        scalar(
            &mut db,
            &format!("SELECT count(*) AS n FROM ledger WHERE usage_session_id = '{}' AND subscription_id = '{}'", s.id, pro.id)
        )
        .await,
        1
    );
    assert_ledger_matches_balances(&mut db).await;
}

// ------------------------------------------------------------- reconcile

/// Two `--fix` runs that both found a paid order without a subscription
/// repair it once: the second re-checks the finding under the order lock and
/// finds it gone. Both runs are held at that lock until both wait there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn guard_reconcile_recheck_two_fix_runs_repair_a_finding_once() {
    let app = spawn_app_holding_rows().await;
    let mut db = app.billing_db().await;
    let sub = app.subscribe("lost-sub", "basic-monthly").await;
    exec(&mut db, &format!("DELETE FROM subscriptions WHERE id = '{}'", sub.id)).await;

    let holder =
        Holder::hold(&app.billing_db_url, &format!("SELECT 1 FROM orders WHERE id = '{}' FOR UPDATE", sub.order_id)).await;
    let runs: Vec<_> = (0..2)
        .map(|_| {
            let mut b = app.billing_admin.clone();
            tokio::spawn(async move { b.run_reconciliation(bpb::RunReconciliationRequest { fix: true }).await })
        })
        .collect();
    let queued = wait_for_waiters(&mut db, 2, SEE_WAITERS).await;
    holder.release().await;
    let mut fixed = 0;
    for r in runs {
        let r = r.await.unwrap().expect("reconciliation runs").into_inner();
        assert!(
            r.findings.iter().any(|f| f.kind == "PAID_ORDER_WITHOUT_SUBSCRIPTION" && f.subject_id == sub.order_id),
            "both runs found the order: {:?}",
            r.findings
        );
        fixed += r.fixed;
    }
    assert!(queued, "the two runs never both waited on the order; the race did not happen");
    assert_eq!(fixed, 1, "one repair in all");
    assert_eq!(
        scalar(&mut db, &format!("SELECT count(*) AS n FROM reconcile_audit WHERE subject_id = '{}'", sub.order_id)).await,
        1
    );
    assert_eq!(scalar(&mut db, &format!("SELECT count(*) AS n FROM subscriptions WHERE order_id = '{}'", sub.order_id)).await, 1);
}
