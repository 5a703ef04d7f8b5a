//! Periods (docs/design.md, "Catalogue"): monthly and yearly versions,
//! anniversary periods from the purchase anchor, month ends clamped and
//! never drifting (a leap day, a 31st), the lifecycle the same for both: a
//! yearly renewal charges the pinned yearly price once, and concurrent
//! rollover runs open each yearly period once.
use chrono::{DateTime, Duration, TimeZone, Utc};
use proto::billing::v1 as bpb;
use tests::{
    TestApp,
    helpers::{assert_ledger_matches_balances, new_plan, scalar},
    spawn_app,
};

use super::{etag, orders_off_their_version, reprice, ts};

fn at(y: i32, m: u32, d: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, m, d, 10, 0, 0).single().unwrap()
}

/// A paid yearly plan: 12 000.00 a year for 4 000 credits a year.
async fn yearly_plan(app: &TestApp, id: &str) -> bpb::CatalogPlan {
    let req = bpb::CreatePlanRequest { period: bpb::PlanPeriod::Yearly as i32, ..new_plan(id, "Team yearly", 1_200_000, 4_000) };
    let plan = app.catalog.clone().create_plan(req).await.unwrap().into_inner().plan.unwrap();
    let p = plan.plan.as_ref().unwrap();
    assert_eq!((p.period_code, p.period.as_str()), (bpb::PlanPeriod::Yearly as i32, "yearly"));
    assert_eq!(plan.versions[0].period, bpb::PlanPeriod::Yearly as i32);
    plan
}

/// Opens the renewal order 72 h before the period end, pays it, and rolls
/// over at the period end: the subscription as it then reads.
async fn renew_once(app: &TestApp, id: &str) -> bpb::Subscription {
    let end = ts(&app.subscription(id).await.period_end);
    app.clock.set(end - Duration::hours(72));
    app.run_job("renewals").await;
    app.pay_renewal(id).await.unwrap();
    app.clock.set(end);
    app.run_job("rollover").await;
    let s = app.subscription(id).await;
    assert_eq!(ts(&s.period_start), end, "the next period starts where the last one ended");
    s
}

/// A yearly purchase on 28 February 2027 renews on 28 February 2028 (a
/// leap year: not the 29th) and 2029; one bought on the leap day renews on
/// 28 February in the years without one and on the 29th again in 2032,
/// computed from the anchor (no drift to the 28th).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn yearly_periods_are_years_from_the_anchor_across_leap_years() {
    let app = spawn_app().await;
    yearly_plan(&app, "team-yearly").await;

    app.clock.set(at(2027, 2, 28));
    let a = app.subscribe("yearly-feb28", "team-yearly").await;
    assert_eq!((ts(&a.period_start), ts(&a.period_end)), (at(2027, 2, 28), at(2028, 2, 28)));
    assert_eq!((a.credits_granted, a.plan_version), (4_000, 1));

    let a2 = renew_once(&app, &a.id).await;
    assert_eq!(ts(&a2.period_end), at(2029, 2, 28));

    app.clock.set(at(2028, 2, 29));
    let b = app.subscribe("yearly-leap", "team-yearly").await;
    assert_eq!(ts(&b.period_end), at(2029, 2, 28), "the leap day's anniversary clamps to the 28th");
    let mut ends = Vec::new();
    for _ in 0..4 {
        let s = renew_once(&app, &b.id).await;
        assert_eq!((s.status, s.credits_granted, s.credits_remaining), (bpb::SubscriptionStatus::Active as i32, 4_000, 4_000));
        ends.push(ts(&s.period_end));
    }
    assert_eq!(ends, [at(2030, 2, 28), at(2031, 2, 28), at(2032, 2, 29), at(2033, 2, 28)], "from the anchor, never drifting");

    let mut db = app.billing_db().await;
    assert_eq!(
        scalar(
            &mut db,
            &format!("SELECT count(*) AS n FROM orders WHERE renews_subscription_id = '{}' AND status = 'PAID'", b.id)
        )
        .await,
        4,
        "one paid renewal a year"
    );
    assert_eq!(orders_off_their_version(&mut db).await, 0);
    assert_ledger_matches_balances(&mut db).await;
}

/// Monthly periods from a 31st: 31 January 2028 → 29 February (a leap
/// year) → 31 March → 30 April → 31 May: the anchor's day comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn monthly_periods_from_a_31st_clamp_and_come_back() {
    let app = spawn_app().await;
    app.clock.set(at(2028, 1, 31));
    let s = app.subscribe("month-end", "basic-monthly").await;
    assert_eq!(ts(&s.period_end), at(2028, 2, 29));
    let mut ends = Vec::new();
    for _ in 0..3 {
        let s = renew_once(&app, &s.id).await;
        assert_eq!(s.credits_granted, 300);
        ends.push(ts(&s.period_end));
    }
    assert_eq!(ends, [at(2028, 3, 31), at(2028, 4, 30), at(2028, 5, 31)]);
    let mut db = app.billing_db().await;
    assert_ledger_matches_balances(&mut db).await;
}

/// A yearly renewal charges the yearly version the subscription bought,
/// once, however often the renewal job runs, even after a reprice; unpaid
/// past its period end it goes PAST_DUE like a monthly one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_yearly_renewal_charges_the_pinned_yearly_price_once() {
    let app = spawn_app().await;
    yearly_plan(&app, "annual").await;
    app.clock.set(at(2027, 6, 1));
    let paid = app.subscribe("annual-payer", "annual").await;
    let unpaid = app.subscribe("annual-late", "annual").await;
    let v2 = reprice(&app, "annual", 1_500_000, &etag(&app, "annual").await).await.unwrap();
    assert_eq!(
        v2.version.map(|v| (v.version, v.period)),
        Some((2, bpb::PlanPeriod::Yearly as i32)),
        "a reprice keeps the period"
    );

    // Not a month before: a yearly period is not renewed monthly.
    app.clock.set(at(2027, 7, 1));
    assert!(app.run_job("renewals").await.contains("0 renewal orders created"));
    app.clock.set(at(2028, 6, 1) - Duration::hours(72));
    let runs = futures::future::join_all((0..3).map(|_| billing_svc::jobs::run_once(&app.billing_app, "renewals"))).await;
    assert!(runs.iter().all(|r| r.is_ok()));
    let mut db = app.billing_db().await;
    for s in [&paid, &unpaid] {
        let sql = format!(
            "SELECT count(*) AS n FROM orders WHERE renews_subscription_id = '{}' AND amount_minor = 1200000 \
             AND plan_version = 1 AND renews_period_start = '2028-06-01 10:00:00+00'",
            s.id
        );
        assert_eq!(scalar(&mut db, &sql).await, 1, "one renewal order at the pinned yearly price");
    }
    app.pay_renewal(&paid.id).await.unwrap();
    app.clock.set(at(2028, 6, 1));
    app.run_job("rollover").await;
    let renewed = app.subscription(&paid.id).await;
    assert_eq!((ts(&renewed.period_end), renewed.plan_version, renewed.credits_granted), (at(2029, 6, 1), 1, 4_000));
    let late = app.subscription(&unpaid.id).await;
    assert_eq!((late.status, ts(&late.period_end)), (bpb::SubscriptionStatus::PastDue as i32, at(2028, 6, 1)));
    assert_eq!(
        scalar(&mut db, "SELECT count(*) AS n FROM orders WHERE plan_id = 'annual' AND renews_subscription_id IS NOT NULL").await,
        2
    );
    assert_eq!(orders_off_their_version(&mut db).await, 0);
    assert_ledger_matches_balances(&mut db).await;
}

/// Concurrent rollover runs open each yearly period once, a year long, with
/// one fresh grant.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn race_concurrent_rollover_runs_open_each_yearly_period_once() {
    let app = spawn_app().await;
    yearly_plan(&app, "yearly-race").await;
    app.clock.set(at(2027, 3, 31));
    let mut subs = Vec::new();
    for i in 0..12 {
        subs.push(app.subscribe(&format!("yearly-roll-{i}"), "yearly-race").await);
    }
    app.clock.set(at(2028, 3, 31) - Duration::hours(72));
    app.run_job("renewals").await;
    for s in &subs {
        app.pay_renewal(&s.id).await.unwrap();
    }
    app.clock.set(at(2028, 3, 31) + Duration::hours(1));
    let runs = futures::future::join_all((0..4).map(|_| billing_svc::jobs::run_once(&app.billing_app, "rollover"))).await;
    let opened: usize = runs
        .into_iter()
        .map(|r| r.unwrap().split(": ").nth(1).and_then(|s| s.split(' ').next()).and_then(|n| n.parse::<usize>().ok()).unwrap())
        .sum();
    assert_eq!(opened, 12, "each subscription's new period is opened by exactly one run");
    let mut db = app.billing_db().await;
    assert_eq!(
        scalar(
            &mut db,
            "SELECT count(*) AS n FROM subscriptions WHERE status = 'ACTIVE' AND plan_id = 'yearly-race' \
             AND period_start = '2028-03-31 10:00:00+00' AND period_end = '2029-03-31 10:00:00+00' \
             AND credits_granted = 4000 AND credits_remaining = 4000"
        )
        .await,
        12,
        "every subscription is in its second year, with one fresh grant"
    );
    assert_ledger_matches_balances(&mut db).await;
}
