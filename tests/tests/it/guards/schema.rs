//! Constraints that are the last line of defence, and plan limits per
//! billing period.
use super::*;

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
