//! Guards of deductions and limits: the usage session's row lock, charging
//! the live subscription, the ledger's unique unit, an idempotency key of
//! another user's StartUsageSession, and the minutes limit per billing
//! period. See `support::guards`.

use chrono::{TimeZone, Utc};
use futures::{StreamExt, future::join_all, stream};
use proto::billing::v1::{self as bpb, UsageKind};
use tests::{
    clients::with_key,
    helpers::{assert_ledger_matches_balances, exec, retrying, scalar, wait_for_waiters},
    spawn_app,
};
use tonic::Code;

use crate::support::guards::*;

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

/// A key reused by another user's StartUsageSession is refused; it never
/// hands the second user the first user's session.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn guard_idempotency_key_of_another_users_start_usage_session_is_refused() {
    let app = spawn_app().await;
    let start = |user: &str| {
        let mut b = app.billing.clone();
        let req = bpb::StartUsageSessionRequest { user_id: user.into(), kind: UsageKind::Text as i32, ..Default::default() };
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
