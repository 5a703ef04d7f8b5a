//! Subscribers keep what they bought: a purchase is pinned to the version
//! it was priced at, its renewals charge that version's price and its
//! periods grant that version's credits within its limits; new purchases
//! buy the current version; an archived plan sells no more while its
//! subscribers go on; the free plan's months open on its current version.
use chrono::{Duration, TimeZone, Utc};
use proto::{billing::v1 as bpb, checkout::v1 as cpb};
use tests::{
    helpers::{assert_ledger_matches_balances, limit, scalar},
    spawn_app,
};
use tonic::Code;

use super::{etag, mask, orders_off_their_version, reprice, rid, ts};
use crate::support::precondition_type;

async fn order_of(app: &tests::TestApp, id: &str) -> bpb::Order {
    app.billing.clone().get_order(bpb::GetOrderRequest { id: id.into() }).await.unwrap().into_inner().order.unwrap()
}

/// docs/design.md, "Catalogue": a reprice never changes what an existing
/// subscriber is charged; a new purchase pays the new price.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reprice_leaves_subscribers_on_their_price_and_new_purchases_pay_the_new_one() {
    let app = spawn_app().await;
    let old = app.subscribe("grandfathered", "basic-monthly").await;
    assert_eq!(old.plan_version, 1);
    let v2 = reprice(&app, "basic-monthly", 59_900, &etag(&app, "basic-monthly").await).await.unwrap();
    assert_eq!(v2.version.map(|v| v.version), Some(2));

    app.clock.advance(Duration::days(1));
    let order = app.order("newcomer", "basic-monthly").await;
    assert_eq!((order.amount_minor, order.plan_version), (59_900, 2), "a new purchase pays the new price");
    let newcomer = app.subscribe("newcomer-2", "basic-monthly").await;
    assert_eq!(newcomer.plan_version, 2);

    // The old subscriber's renewal: version 1's price, then version 1's credits.
    let end = ts(&old.period_end);
    app.clock.set(end - Duration::hours(72));
    assert!(app.run_job("renewals").await.contains("1 renewal orders created"));
    let renewal = order_of(&app, &app.subscription(&old.id).await.renewal_order_id).await;
    assert_eq!((renewal.amount_minor, renewal.plan_version, renewal.currency.as_str()), (49_900, 1, "INR"));
    app.pay_renewal(&old.id).await.unwrap();
    app.clock.set(end);
    app.run_job("rollover").await;
    let renewed = app.subscription(&old.id).await;
    assert_eq!((ts(&renewed.period_start), renewed.credits_granted, renewed.plan_version), (end, 300, 1));

    // The newcomer's renewal, a month on: the price it bought.
    app.clock.set(ts(&newcomer.period_end) - Duration::hours(72));
    app.run_job("renewals").await;
    let theirs = order_of(&app, &app.subscription(&newcomer.id).await.renewal_order_id).await;
    assert_eq!((theirs.amount_minor, theirs.plan_version), (59_900, 2));

    let mut db = app.billing_db().await;
    assert_eq!(orders_off_their_version(&mut db).await, 0, "every order is its version's price");
    assert_eq!(
        scalar(&mut db, "SELECT count(*) AS n FROM orders WHERE renews_subscription_id IS NOT NULL AND plan_version = 1").await,
        1
    );
    assert_ledger_matches_balances(&mut db).await;
}

/// New credits and limits are a new version: a new purchase gets them, an
/// existing subscriber keeps the credits and limits it bought, also after
/// its renewal.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn new_credits_and_limits_are_for_new_purchases_subscribers_keep_theirs() {
    let app = spawn_app().await;
    let kept = app.subscribe("keeps-300", "basic-monthly").await;
    let change = bpb::UpdatePlanRequest {
        plan_id: "basic-monthly".into(),
        request_id: rid(),
        update_mask: mask(&["credits_per_period", "limits.sessions_per_period"]),
        credits_per_period: 500,
        limits: Some(bpb::PlanLimitsInput { sessions_per_period: Some(limit(Some(2))), ..Default::default() }),
        ..Default::default()
    };
    app.catalog.clone().update_plan(change).await.unwrap();
    let fresh = app.subscribe("gets-500", "basic-monthly").await;
    assert_eq!((fresh.plan_version, fresh.credits_granted), (2, 500));
    assert_eq!((kept.plan_version, kept.credits_granted), (1, 300));

    // Limits: the new subscriber may start 2 sessions, the old one 30.
    app.clock.advance(Duration::minutes(1));
    for _ in 0..2 {
        let s = app.start_usage("gets-500", bpb::UsageKind::Text).await.unwrap();
        app.end_usage(&s.id, 0).await.unwrap();
    }
    let e = app.start_usage("gets-500", bpb::UsageKind::Text).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    for _ in 0..3 {
        let s = app.start_usage("keeps-300", bpb::UsageKind::Text).await.unwrap();
        app.end_usage(&s.id, 0).await.unwrap();
    }
    let usage = |user: &'static str| {
        let mut b = app.billing.clone();
        async move { b.get_usage(bpb::GetUsageRequest { user_id: user.into() }).await.unwrap().into_inner().usage.unwrap() }
    };
    let sessions = |u: bpb::Usage| u.limits.unwrap().sessions_per_period.map(|l| l.max).unwrap();
    assert_eq!((sessions(usage("keeps-300").await), sessions(usage("gets-500").await)), (30, 2));

    // The old subscriber's renewed period grants version 1's credits.
    let end = ts(&kept.period_end);
    app.clock.set(end - Duration::hours(72));
    app.run_job("renewals").await;
    app.pay_renewal(&kept.id).await.unwrap();
    app.clock.set(end + Duration::hours(1));
    app.run_job("rollover").await;
    let renewed = app.subscription(&kept.id).await;
    assert_eq!((renewed.credits_granted, renewed.credits_remaining, renewed.plan_version), (300, 300, 1));
    let mut db = app.billing_db().await;
    assert_ledger_matches_balances(&mut db).await;
}

/// Archived: CreateOrder and checkout refuse new purchases with
/// PLAN_NOT_PURCHASABLE; a subscriber renews as before, also through a
/// renewal checkout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_archived_plan_sells_no_more_and_its_subscribers_renew() {
    let app = spawn_app().await;
    let sub = app.subscribe("stays", "pro-monthly").await;
    let archive = bpb::ArchivePlanRequest { plan_id: "pro-monthly".into(), request_id: rid(), ..Default::default() };
    app.catalog.clone().archive_plan(archive).await.unwrap();

    let order = bpb::CreateOrderRequest {
        checkout_session_id: uuid::Uuid::new_v4().to_string(),
        user_id: "latecomer".into(),
        plan_id: "pro-monthly".into(),
    };
    let e = app.billing.clone().create_order(order).await.unwrap_err();
    assert_eq!((e.code(), precondition_type(&e)), (Code::FailedPrecondition, "PLAN_NOT_PURCHASABLE".to_owned()));
    assert!(e.message().contains("archived"), "{e:?}");
    let session = cpb::CreateSessionRequest { user_id: "latecomer".into(), plan_id: "pro-monthly".into(), ..Default::default() };
    let e = app.checkout.clone().create_session(session).await.unwrap_err();
    assert_eq!((e.code(), precondition_type(&e)), (Code::FailedPrecondition, "PLAN_NOT_PURCHASABLE".to_owned()));

    app.clock.set(ts(&sub.period_end) - Duration::hours(72));
    assert!(app.run_job("renewals").await.contains("1 renewal orders created"));
    let renewal = app.subscription(&sub.id).await.renewal_order_id;
    let back = app.create_session("stays", "pro-monthly").await;
    assert_eq!(back.order_id, renewal, "a renewal checkout of an archived plan pays the renewal");
    let (payment_id, signature) = app.pay(&back.order_id);
    app.complete(&back.id, &payment_id, &signature).await.unwrap();
    app.clock.set(ts(&sub.period_end));
    app.run_job("rollover").await;
    let renewed = app.subscription(&sub.id).await;
    assert_eq!((renewed.status, renewed.credits_granted), (bpb::SubscriptionStatus::Active as i32, 1500));
}

/// The free plan has nothing bought to keep: a month opens on its current
/// version. A user who never used the service reads the current version.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_free_month_opens_on_the_free_plans_current_version() {
    let app = spawn_app().await;
    let s = app.start_usage("free-user", bpb::UsageKind::Text).await.unwrap();
    app.end_usage(&s.id, 0).await.unwrap();
    let more = bpb::UpdatePlanRequest {
        plan_id: "free".into(),
        request_id: rid(),
        update_mask: mask(&["credits_per_period"]),
        credits_per_period: 40,
        ..Default::default()
    };
    app.catalog.clone().update_plan(more).await.unwrap();
    let usage = |user: &'static str| {
        let mut b = app.billing.clone();
        async move { b.get_usage(bpb::GetUsageRequest { user_id: user.into() }).await.unwrap().into_inner().usage.unwrap() }
    };
    assert_eq!(usage("free-user").await.credits_granted, 30, "March runs on as it opened");
    assert_eq!(usage("never-seen").await.credits_granted, 40, "a first use opens on the current version");

    app.clock.set(Utc.with_ymd_and_hms(2026, 4, 2, 9, 0, 0).unwrap());
    assert_eq!(usage("free-user").await.credits_granted, 40, "a read shows April as it will open");
    app.start_usage("free-user", bpb::UsageKind::Text).await.unwrap();
    let mut db = app.billing_db().await;
    assert_eq!(
        scalar(
            &mut db,
            "SELECT count(*) AS n FROM subscriptions WHERE user_id = 'free-user' AND plan_version = 2 AND credits_granted = 40"
        )
        .await,
        1
    );
    assert_ledger_matches_balances(&mut db).await;
}

/// Unlimited uploads, which the old int could not say: AuthorizeUpload
/// allows any size and says unlimited (the int reads the largest int64).
#[allow(deprecated)] // the legacy int stays filled
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unlimited_uploads_are_said_explicitly() {
    let app = spawn_app().await;
    let mut r = tests::helpers::new_plan("studio-monthly", "Studio", 99_900, 100);
    r.limits.as_mut().unwrap().upload_bytes = Some(limit(None));
    app.catalog.clone().create_plan(r).await.unwrap();
    app.subscribe("studio", "studio-monthly").await;
    let ok = app
        .billing
        .clone()
        .authorize_upload(bpb::AuthorizeUploadRequest { user_id: "studio".into(), size_bytes: 1 << 40 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((ok.allowed, ok.max_upload_bytes), (true, i64::MAX));
    assert_eq!(ok.upload_bytes.map(|l| l.unlimited), Some(true));
    let plan = app.billing.clone().get_plan(bpb::GetPlanRequest { id: "studio-monthly".into() }).await.unwrap().into_inner();
    let l = plan.plan.unwrap().limits.unwrap();
    assert_eq!((l.max_upload_bytes, l.upload_bytes.map(|l| l.unlimited)), (i64::MAX, Some(true)));
}
