//! Balances: a charge racing a purchase, and reads beside a writer.
use std::time::{Duration as StdDuration, Instant};

use diesel_async::AsyncPgConnection;
use proto::billing::v1 as bpb;
use tests::{
    helpers::{assert_ledger_matches_balances, exec, scalar},
    spawn_app,
};

/// Waits until some backend of the test's database waits on a lock.
async fn until_someone_waits_on_a_lock(db: &mut AsyncPgConnection) {
    for _ in 0..500 {
        let n = scalar(
            db,
            "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .await;
        if n > 0 {
            return;
        }
        tokio::time::sleep(StdDuration::from_millis(10)).await;
    }
    panic!("nobody started waiting on the lock");
}

/// A Deduct on a session whose subscription was replaced, arriving while a
/// second purchase is committing: it draws on the purchase's new
/// subscription, never records the unit unpaid against the dead row.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_charge_waiting_on_a_purchase_draws_on_the_new_subscription() {
    let app = spawn_app().await;
    let session = app.start_usage("swap", bpb::UsageKind::Text).await.unwrap();
    let second = app.subscribe("swap", "basic-monthly").await; // the free row is REPLACED
    let mut buyer = app.billing_db().await;
    // A third purchase, held open mid-way: the second subscription is being
    // replaced by a new row the charge's snapshot cannot see yet.
    exec(&mut buyer, "BEGIN").await;
    exec(&mut buyer, &format!("SELECT id FROM subscriptions WHERE id = '{}' FOR UPDATE", second.id)).await;
    exec(&mut buyer, &format!("UPDATE subscriptions SET status = 'REPLACED', credits_remaining = 0 WHERE id = '{}'", second.id))
        .await;
    exec(
        &mut buyer,
        "INSERT INTO subscriptions (id, user_id, plan_id, status, anchor_at, period_start, period_end, credits_granted, credits_remaining) \
         VALUES ('00000000-0000-4000-8000-000000000003', 'swap', 'pro-monthly', 'ACTIVE', now(), now(), now() + interval '1 month', 1500, 1500)",
    )
    .await;
    let mut b = app.billing.clone();
    let id = session.id.clone();
    let deduct = tokio::spawn(async move {
        b.deduct(bpb::DeductRequest { usage_session_id: id, deduction_id: "d1".into(), units: 1 }).await.map(|r| r.into_inner())
    });
    let mut watcher = app.billing_db().await;
    until_someone_waits_on_a_lock(&mut watcher).await;
    // The held purchase also moved the ledger: the replaced row's balance left it.
    exec(
        &mut buyer,
        &format!(
            "INSERT INTO ledger (subscription_id, period_start, kind, credits) \
             SELECT id, period_start, 'CARRY_OVER', credits_granted FROM subscriptions WHERE id = '{}'",
            second.id
        ),
    )
    .await;
    exec(&mut buyer, "COMMIT").await;
    let r = deduct.await.unwrap().unwrap();
    assert_eq!((r.units_charged, r.units_unpaid), (1, 0), "charged to the live subscription");
    let mut db = app.billing_db().await;
    assert_eq!(
        scalar(&mut db, "SELECT credits_remaining AS n FROM subscriptions WHERE id = '00000000-0000-4000-8000-000000000003'")
            .await,
        1499
    );
    assert_ledger_matches_balances(&mut db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_neither_create_rows_nor_wait_on_locks() {
    let app = spawn_app().await;
    let mut b = app.billing.clone();
    let usage = b.get_usage(bpb::GetUsageRequest { user_id: "reader".into() }).await.unwrap().into_inner().usage.unwrap();
    assert_eq!((usage.plan_id.as_str(), usage.subscription_id.as_str(), usage.credits_remaining), ("free", "", 30));
    b.authorize_upload(bpb::AuthorizeUploadRequest { user_id: "reader".into(), size_bytes: 10 }).await.unwrap();
    let mut db = app.billing_db().await;
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM subscriptions").await, 0, "reads create nothing");

    // A user's balance row held by a writer: every read still answers.
    let session = app.start_usage("held", bpb::UsageKind::Text).await.unwrap();
    let sub = b.get_usage(bpb::GetUsageRequest { user_id: "held".into() }).await.unwrap().into_inner().usage.unwrap();
    let mut writer = app.billing_db().await;
    exec(&mut writer, "BEGIN").await;
    exec(&mut writer, "SELECT id FROM subscriptions WHERE user_id = 'held' FOR UPDATE").await;
    let started = Instant::now();
    b.get_usage(bpb::GetUsageRequest { user_id: "held".into() }).await.unwrap();
    b.authorize_upload(bpb::AuthorizeUploadRequest { user_id: "held".into(), size_bytes: 10 }).await.unwrap();
    b.get_usage_session(bpb::GetUsageSessionRequest { id: session.id.clone() }).await.unwrap();
    b.get_subscription(bpb::GetSubscriptionRequest { id: sub.subscription_id.clone() }).await.unwrap();
    let waited = started.elapsed();
    exec(&mut writer, "ROLLBACK").await;
    // A read that waited on the lock would have been ABORTED at the 1 s lock
    // bound (the unwraps above); this only catches a pathological stall.
    assert!(waited < StdDuration::from_secs(5), "reads took {waited:?} beside a writer's lock");

    // After paying, the running session reports the balance it now draws on.
    let paid = app.subscribe("held", "pro-monthly").await;
    let view = app.usage_session(&session.id).await;
    assert_eq!(view.credits_remaining, paid.credits_remaining);
    assert!(view.credits_remaining > 30, "{view:?}");
}
