//! Trials (docs/design.md, "Catalogue"): a price version's trial_days lets
//! a user's first purchase of the plan start a free trial (StartTrial), an
//! ACTIVE subscription with trial_end set and no order, which converts at
//! trial_end exactly like a renewal: a saved card is charged the pinned
//! version's price once, else a renewal order waits for a renewal checkout,
//! and unpaid it goes PAST_DUE and then EXPIRED. One trial per user and
//! plan, enforced by the database.
use chrono::{Duration, Months};
use proto::billing::v1 as bpb;
use tests::{
    TestApp,
    helpers::{assert_ledger_matches_balances, new_plan, retrying, scalar},
    spawn_app,
};
use tonic::{Code, Status};
use tonic_types::StatusExt;

use super::{reprice_request, ts};
use crate::{
    events::{list_all, type_name},
    subscriptions::subscribe_with_saved_card,
    support::precondition_type,
};

const PRICE: i64 = 30_000;
const CREDITS: i64 = 200;
const DAYS: i32 = 14;

/// A paid monthly plan `id` with a trial of DAYS days.
async fn plan_with_trial(app: &TestApp, id: &str) -> bpb::CatalogPlan {
    let r = bpb::CreatePlanRequest { trial_days: DAYS, ..new_plan(id, "Trial Pro", PRICE, CREDITS) };
    app.catalog.clone().create_plan(r).await.unwrap().into_inner().plan.unwrap()
}

async fn start_trial(app: &TestApp, user: &str, plan: &str) -> Result<bpb::StartTrialResponse, Status> {
    let r = bpb::StartTrialRequest { user_id: user.into(), plan_id: plan.into() };
    app.billing.clone().start_trial(r).await.map(|r| r.into_inner())
}

async fn orders_of(db: &mut diesel_async::AsyncPgConnection, user: &str, plan: &str) -> i64 {
    scalar(db, &format!("SELECT count(*) AS n FROM orders WHERE user_id = '{user}' AND plan_id = '{plan}'")).await
}

/// A trial charges nothing and grants the version's credits; at its end the
/// saved card is charged the pinned version's price once (a reprice
/// meanwhile changes nothing), and the first paid period opens at trial_end
/// with the version's credits.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_trial_converts_at_its_end_by_charging_the_saved_card_the_pinned_price_once() {
    let app = spawn_app().await;
    let catalog = plan_with_trial(&app, "trial-pro").await;
    assert_eq!(catalog.versions[0].trial_days, DAYS);
    let basic = subscribe_with_saved_card(&app, "carded", "basic-monthly").await;
    let started_at = app.clock.now();

    let t = start_trial(&app, "carded", "trial-pro").await.unwrap();
    let trial = t.subscription.unwrap();
    assert!(!t.replayed);
    let trial_end = ts(&trial.trial_end);
    assert_eq!(trial_end.timestamp(), (started_at + Duration::days(i64::from(DAYS))).timestamp(), "trial_days from now");
    assert_eq!(trial.status, bpb::SubscriptionStatus::Active as i32, "a trial is ACTIVE: callers grant access on it");
    assert_eq!((ts(&trial.period_end), trial.order_id.as_str(), trial.plan_version), (trial_end, "", 1));
    assert_eq!(trial.credits_granted, CREDITS + basic.credits_remaining, "the version's credits, plus those carried over");
    assert!(trial.has_saved_payment_method, "the card saved for the plan it replaces carries over");
    let replaced = app.subscription(&basic.id).await;
    assert_eq!(replaced.status, bpb::SubscriptionStatus::Replaced as i32);
    let mut db = app.billing_db().await;
    assert_eq!(orders_of(&mut db, "carded", "trial-pro").await, 0, "a trial charges nothing");

    // A reprice during the trial: the conversion charges the version the trial is on.
    super::reprice(&app, "trial-pro", 45_000, "").await.unwrap();
    app.clock.set(trial_end - Duration::hours(72));
    let out = app.run_job("renewals").await;
    assert!(out.contains("1 renewal orders created, 1 charges captured"), "{out}");
    assert!(app.run_job("renewals").await.contains("0 renewal orders created, 0 charges captured"), "charged once");
    app.clock.set(trial_end);
    app.run_job("rollover").await;
    let paid = app.subscription(&trial.id).await;
    assert_eq!(paid.status, bpb::SubscriptionStatus::Active as i32);
    assert_eq!((ts(&paid.period_start), paid.credits_granted, paid.credits_remaining), (trial_end, CREDITS, CREDITS));
    assert_eq!(ts(&paid.period_end), trial_end.checked_add_months(Months::new(1)).unwrap(), "anchored at trial_end");
    assert_eq!(ts(&paid.trial_end), trial_end, "kept as history");

    assert_eq!(orders_of(&mut db, "carded", "trial-pro").await, 1);
    let sql = format!(
        "SELECT count(*) AS n FROM orders WHERE renews_subscription_id = '{0}' AND status = 'PAID' \
            AND amount_minor = {PRICE} AND plan_version = 1 \
            AND renews_period_start = (SELECT trial_end FROM subscriptions WHERE id = '{0}')",
        trial.id
    );
    assert_eq!(scalar(&mut db, &sql).await, 1, "one charge of the pinned version's price, for the first paid period");
    assert_eq!(super::orders_off_their_version(&mut db).await, 0);
    assert!(app.reconcile(false).await.is_empty(), "a trial is no subscription without a paid order");

    // Events: the existing types, the payload carrying trial_end.
    let events = list_all(&app).await;
    let of_trial: Vec<&bpb::BillingEvent> = events.iter().filter(|e| e.entity_id == trial.id).collect();
    let names: Vec<&str> = of_trial.iter().map(|e| type_name(e)).collect();
    assert_eq!(names, ["SUBSCRIPTION_ACTIVATED", "SUBSCRIPTION_RENEWED"], "a trial starts and converts");
    for e in of_trial {
        let Some(bpb::billing_event::Payload::Subscription(s)) = &e.payload else { panic!("{e:?}") };
        assert_eq!(ts(&s.trial_end), trial_end, "{e:?}");
    }
    assert_ledger_matches_balances(&mut db).await;
}

/// Without a saved card the trial's end opens a renewal order; unpaid, the
/// trial goes PAST_DUE with no credits, then EXPIRED after the grace
/// period, back on the free plan.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unpaid_trial_goes_past_due_then_expires() {
    let app = spawn_app().await;
    plan_with_trial(&app, "trial-pro").await;
    let trial = start_trial(&app, "lapsing", "trial-pro").await.unwrap().subscription.unwrap();
    assert!(!trial.has_saved_payment_method);
    // A new user's trial replaces no free month: only the version's credits
    // (a purchase by a new user grants exactly its credits too).
    assert_eq!((trial.credits_granted, trial.credits_remaining), (CREDITS, CREDITS));
    let mut db = app.billing_db().await;
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM subscriptions WHERE user_id = 'lapsing'").await, 1);
    let end = ts(&trial.trial_end);

    app.clock.set(end - Duration::hours(48));
    assert!(app.run_job("renewals").await.contains("1 renewal orders created, 0 charges captured"));
    let open = app.subscription(&trial.id).await;
    let order = app.billing.clone().get_order(bpb::GetOrderRequest { id: open.renewal_order_id.clone() }).await.unwrap();
    let order = order.into_inner().order.unwrap();
    assert_eq!((order.amount_minor, order.status), (PRICE, bpb::OrderStatus::Created as i32), "paid through a renewal checkout");

    app.clock.set(end + Duration::minutes(5));
    assert!(app.run_job("rollover").await.contains(": 1 subscriptions"));
    let past_due = app.subscription(&trial.id).await;
    assert_eq!((past_due.status, past_due.credits_remaining), (bpb::SubscriptionStatus::PastDue as i32, 0));
    app.clock.set(end + Duration::hours(72));
    assert!(app.run_job("renewals").await.contains("1 expired"));
    let expired = app.subscription(&trial.id).await;
    assert_eq!(expired.status, bpb::SubscriptionStatus::Expired as i32);
    let order = app.billing.clone().get_order(bpb::GetOrderRequest { id: open.renewal_order_id }).await.unwrap();
    assert_eq!(order.into_inner().order.unwrap().status, bpb::OrderStatus::Cancelled as i32);

    assert_eq!(
        scalar(&mut db, "SELECT count(*) AS n FROM orders WHERE user_id = 'lapsing' AND status = 'PAID'").await,
        0,
        "nothing charged"
    );
    assert_ledger_matches_balances(&mut db).await;
}

/// A trial paid through a renewal checkout when it ended unpaid: ACTIVE
/// again, its first paid period anchored at trial_end.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_past_due_trial_paid_through_checkout_opens_its_first_paid_period() {
    let app = spawn_app().await;
    plan_with_trial(&app, "trial-pro").await;
    let trial = start_trial(&app, "late-payer", "trial-pro").await.unwrap().subscription.unwrap();
    let end = ts(&trial.trial_end);
    app.clock.set(end - Duration::hours(48));
    app.run_job("renewals").await;
    app.clock.set(end + Duration::hours(1));
    app.run_job("rollover").await;
    assert_eq!(app.subscription(&trial.id).await.status, bpb::SubscriptionStatus::PastDue as i32);
    let paid = app.pay_renewal(&trial.id).await.unwrap();
    assert_eq!(paid.order.unwrap().amount_minor, PRICE);
    let sub = app.subscription(&trial.id).await;
    assert_eq!(sub.status, bpb::SubscriptionStatus::Active as i32);
    assert_eq!((ts(&sub.period_start), sub.credits_granted), (end, CREDITS));
    assert_ledger_matches_balances(&mut app.billing_db().await).await;
}

/// A trial cancelled at period end never converts: no renewal order, and
/// at trial_end it is CANCELLED, nothing charged.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_trial_cancelled_at_period_end_ends_at_trial_end_uncharged() {
    let app = spawn_app().await;
    plan_with_trial(&app, "trial-pro").await;
    let trial = start_trial(&app, "quitter", "trial-pro").await.unwrap().subscription.unwrap();
    let end = ts(&trial.trial_end);
    let cancel = bpb::CancelSubscriptionRequest {
        id: trial.id.clone(),
        user_id: "quitter".into(),
        policy: bpb::CancellationPolicy::AtPeriodEnd as i32,
        ..Default::default()
    };
    let c = app.billing.clone().cancel_subscription(cancel).await.unwrap().into_inner();
    assert!(c.subscription.unwrap().cancel_at_period_end, "a trial is cancellable, not the free plan");
    app.clock.set(end - Duration::hours(48));
    assert!(app.run_job("renewals").await.contains("0 renewal orders created"));
    app.clock.set(end);
    app.run_job("rollover").await;
    let ended = app.subscription(&trial.id).await;
    assert_eq!((ended.status, ts(&ended.ended_at)), (bpb::SubscriptionStatus::Cancelled as i32, end));
    let mut db = app.billing_db().await;
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM orders WHERE user_id = 'quitter'").await, 0);
    assert_ledger_matches_balances(&mut db).await;
}

/// One trial per (user, plan): 20 concurrent StartTrial calls of one user
/// start exactly one trial (the others answer it, replayed) and charge
/// nothing; the database refuses a second trial row whatever the code does;
/// after the trial, another StartTrial is TRIAL_NOT_AVAILABLE and a
/// purchase is a normal paid one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_trial_per_user_and_plan_however_many_starts_race() {
    let app = spawn_app().await;
    plan_with_trial(&app, "trial-pro").await;
    let calls = (0..20).map(|_| {
        let app = &app;
        async move { retrying(|| start_trial(app, "racer", "trial-pro")).await }
    });
    let answers: Vec<bpb::StartTrialResponse> =
        futures::future::join_all(calls).await.into_iter().collect::<Result<_, _>>().unwrap();
    let id = answers[0].subscription.as_ref().unwrap().id.clone();
    assert!(answers.iter().all(|a| a.subscription.as_ref().unwrap().id == id), "every call answers the one trial");
    assert_eq!(answers.iter().filter(|a| !a.replayed).count(), 1, "one started it, the others were replays");

    let mut db = app.billing_db().await;
    let trials = "SELECT count(*) AS n FROM subscriptions WHERE user_id = 'racer' AND trial_end IS NOT NULL";
    assert_eq!(scalar(&mut db, trials).await, 1);
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM orders WHERE user_id = 'racer'").await, 0, "no charges");
    let second = diesel_async::RunQueryDsl::execute(
        diesel::sql_query(
            "INSERT INTO subscriptions (id, user_id, plan_id, plan_version, status, anchor_at, calendar_periods, period_start, \
                 period_end, credits_granted, credits_remaining, created_at, updated_at, ended_at, trial_end) \
             SELECT gen_random_uuid(), user_id, plan_id, plan_version, 'CANCELLED', anchor_at, false, period_start, period_end, \
                 0, 0, created_at, updated_at, updated_at, trial_end FROM subscriptions WHERE user_id = 'racer' AND trial_end IS NOT NULL",
        ),
        &mut db,
    )
    .await;
    assert!(format!("{second:?}").contains("subscriptions_one_trial_per_user_and_plan"), "{second:?}");

    // The trial ends unpaid and expires; the next purchase is a paid one.
    let end = ts(&answers[0].subscription.as_ref().unwrap().trial_end);
    app.clock.set(end + Duration::minutes(5));
    app.run_job("rollover").await;
    app.clock.set(end + Duration::hours(72));
    assert!(app.run_job("renewals").await.contains("1 expired"));
    assert_eq!(app.subscription(&id).await.status, bpb::SubscriptionStatus::Expired as i32);
    let again = start_trial(&app, "racer", "trial-pro").await.unwrap_err();
    assert_eq!((again.code(), precondition_type(&again)), (Code::FailedPrecondition, "TRIAL_NOT_AVAILABLE".to_owned()));
    let bought = app.subscribe("racer", "trial-pro").await;
    assert!(!bought.order_id.is_empty() && bought.trial_end.is_none(), "a paid purchase: {bought:?}");
    assert_eq!(bought.credits_granted, CREDITS);
    assert_eq!(
        scalar(&mut db, "SELECT count(*) AS n FROM orders WHERE user_id = 'racer' AND status = 'PAID' AND amount_minor = 30000")
            .await,
        1
    );
    assert_eq!(scalar(&mut db, trials).await, 1);
    assert_ledger_matches_balances(&mut db).await;
}

/// What StartTrial and the catalogue refuse: trial_days out of range
/// (INVALID_ARGUMENT naming the field, nothing written), a plan without a
/// trial, a user who subscribed to the plan before, the free plan; a new
/// price keeps the trial unless told otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn trial_days_are_checked_and_only_a_first_purchase_gets_a_trial() {
    let app = spawn_app().await;
    let mut cat = app.catalog.clone();
    for days in [-1, 366] {
        let r = bpb::CreatePlanRequest { trial_days: days, ..new_plan("long-trial", "Long", PRICE, CREDITS) };
        let e = cat.create_plan(r).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        let fields: Vec<String> =
            e.get_error_details().bad_request().unwrap().field_violations.iter().map(|v| v.field.clone()).collect();
        assert_eq!(fields, ["trial_days"], "{days}");
    }
    let mut db = app.billing_db().await;
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM plans WHERE id = 'long-trial'").await, 0);

    plan_with_trial(&app, "trial-pro").await;
    let bad = bpb::CreatePriceVersionRequest { trial_days: Some(400), ..reprice_request("trial-pro", 1, "") };
    assert_eq!(cat.create_price_version(bad).await.unwrap_err().code(), Code::InvalidArgument);
    let kept = cat.create_price_version(reprice_request("trial-pro", 31_000, "")).await.unwrap().into_inner();
    assert_eq!(kept.version.unwrap().trial_days, DAYS, "a new price keeps the trial");

    let e = start_trial(&app, "someone", "basic-monthly").await.unwrap_err();
    assert_eq!((e.code(), precondition_type(&e)), (Code::FailedPrecondition, "TRIAL_NOT_AVAILABLE".to_owned()));
    let e = start_trial(&app, "someone", "free").await.unwrap_err();
    assert_eq!(precondition_type(&e), "PLAN_NOT_PURCHASABLE");
    let e = start_trial(&app, "", "trial-pro").await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(start_trial(&app, "someone", "gold").await.unwrap_err().code(), Code::NotFound);

    // Bought before: no trial of the plan, also while subscribed.
    app.subscribe("subscriber", "trial-pro").await;
    let e = start_trial(&app, "subscriber", "trial-pro").await.unwrap_err();
    assert_eq!(precondition_type(&e), "TRIAL_NOT_AVAILABLE");

    let none = bpb::CreatePriceVersionRequest { trial_days: Some(0), ..reprice_request("trial-pro", 32_000, "") };
    let v = cat.create_price_version(none).await.unwrap().into_inner().version.unwrap();
    assert_eq!(v.trial_days, 0, "0 ends the offer for new purchases");
    let e = start_trial(&app, "newcomer", "trial-pro").await.unwrap_err();
    assert_eq!(precondition_type(&e), "TRIAL_NOT_AVAILABLE");
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM subscriptions WHERE trial_end IS NOT NULL").await, 0);
}
