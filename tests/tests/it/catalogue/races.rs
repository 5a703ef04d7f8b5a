//! The catalogue under concurrency, each race checked in the database
//! afterwards: versions of one plan numbered one at a time, one etag
//! letting one change through, a request_id applied once, one plan per id,
//! and a reprice during a renewal run changing nothing already created. And
//! the database's own guard: a version is never changed or deleted.
use chrono::Duration;
use futures::future::join_all;
use proto::billing::v1 as bpb;
use tests::{
    helpers::{exec, new_plan, retrying, scalar},
    spawn_app,
};
use tonic::{Code, Status};
use tonic_types::StatusExt;

use super::{etag, orders_off_their_version, reprice_request, ts};

/// One CreatePriceVersion call of `r`.
async fn reprice_once(
    app: &tests::TestApp,
    r: &bpb::CreatePriceVersionRequest,
) -> Result<bpb::CreatePriceVersionResponse, Status> {
    app.catalog.clone().create_price_version(r.clone()).await.map(|r| r.into_inner())
}

/// docs/design.md, "Catalogue": concurrent CreatePriceVersion calls of one
/// plan queue on its row lock and get distinct, consecutive versions.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_price_versions_of_one_plan_are_numbered_one_at_a_time() {
    let app = spawn_app().await;
    let calls = (0..20).map(|i| {
        let app = &app;
        let r = reprice_request("basic-monthly", 50_000 + i, "");
        async move { retrying(|| reprice_once(app, &r)).await.map(|r| r.version.unwrap()) }
    });
    let mut made: Vec<i32> = join_all(calls).await.into_iter().map(|r| r.unwrap().version).collect();
    made.sort();
    assert_eq!(made, (2..=21).collect::<Vec<_>>());
    let mut db = app.billing_db().await;
    assert_eq!(
        scalar(&mut db, "SELECT count(DISTINCT version) AS n FROM plan_versions WHERE plan_id = 'basic-monthly'").await,
        21
    );
    assert_eq!(
        scalar(
            &mut db,
            "SELECT count(*) AS n FROM plans p JOIN plan_versions v ON v.plan_id = p.id AND v.version = p.current_version \
              WHERE p.id = 'basic-monthly' AND p.current_version = 21 AND p.price_minor = v.price_minor \
                AND p.credits_per_period = v.credits_per_period"
        )
        .await,
        1,
        "the plan points at the last version and shows its price"
    );
}

/// Concurrent changes that all name the same etag: one is made, every
/// other is ETAG_MISMATCH, and nothing else is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_etag_lets_one_of_concurrent_changes_through() {
    let app = spawn_app().await;
    let read = etag(&app, "pro-monthly").await;
    let calls = (0..10).map(|i| {
        let mut cat = app.catalog.clone();
        let r = reprice_request("pro-monthly", 150_000 + i, &read);
        async move { cat.create_price_version(r).await }
    });
    let results = join_all(calls).await;
    let made = results.iter().filter(|r| r.is_ok()).count();
    let stale = results
        .iter()
        .filter(|r| matches!(r, Err(e) if e.get_error_details().error_info().is_some_and(|i| i.reason == "ETAG_MISMATCH")))
        .count();
    assert_eq!((made, stale), (1, 9), "{results:?}");
    let mut db = app.billing_db().await;
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM plan_versions WHERE plan_id = 'pro-monthly'").await, 2);
}

/// One request_id sent 20 times at once: every answer (after retrying the
/// in-flight ones) is the first call's, and one version is made.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_id_sent_concurrently_is_applied_once() {
    let app = spawn_app().await;
    let r = reprice_request("basic-monthly", 55_500, "");
    let calls = (0..20).map(|_| {
        let r = r.clone();
        let app = &app;
        async move { retrying(|| reprice_once(app, &r)).await }
    });
    let answers: Vec<bpb::CreatePriceVersionResponse> = join_all(calls).await.into_iter().map(Result::unwrap).collect();
    assert!(answers.windows(2).all(|w| w[0] == w[1]), "one answer for one request_id");
    assert_eq!(answers[0].version.as_ref().map(|v| v.version), Some(2));
    let mut db = app.billing_db().await;
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM plan_versions WHERE plan_id = 'basic-monthly'").await, 2);
    assert_eq!(
        scalar(&mut db, "SELECT count(*) AS n FROM idempotency_keys WHERE method = 'billing.CreatePriceVersion'").await,
        1
    );
}

/// Concurrent CreatePlan of one id (each its own request_id): one plan, one
/// version 1; the others ALREADY_EXISTS.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_creates_of_one_id_make_one_plan() {
    let app = spawn_app().await;
    let calls = (0..10).map(|i| {
        let r = new_plan("team-monthly", &format!("Team {i}"), 299_900, 3000);
        let app = &app;
        async move {
            retrying(|| {
                let (mut cat, r) = (app.catalog.clone(), r.clone());
                async move { cat.create_plan(r).await }
            })
            .await
        }
    });
    let results = join_all(calls).await;
    let made = results.iter().filter(|r| r.is_ok()).count();
    let exists = results.iter().filter(|r| matches!(r, Err(e) if e.code() == Code::AlreadyExists)).count();
    assert_eq!((made, exists), (1, 9), "{results:?}");
    let mut db = app.billing_db().await;
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM plan_versions WHERE plan_id = 'team-monthly'").await, 1);
}

/// A digest of the orders a WHERE clause appended to it selects: their ids,
/// amounts, versions and creation times, as one number.
const DIGEST: &str = "SELECT ('x' || substr(md5(coalesce(string_agg(id || '|' || amount_minor || '|' || plan_version || '|' \
                      || created_at, ',' ORDER BY id), '')), 1, 15))::bit(60)::bigint AS n FROM orders";

/// docs/design.md, "Catalogue": repricing during a renewal run changes
/// nothing already created. Renewal orders opened before keep their amount;
/// those the run opens while the price moves charge the version their
/// subscription is pinned to; every order is its version's price.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reprice_during_a_renewal_run_changes_nothing_already_created() {
    let app = spawn_app().await;
    let mut first = Vec::new();
    for i in 0..4 {
        first.push(app.subscribe(&format!("early-{i}"), "basic-monthly").await);
    }
    app.clock.advance(Duration::days(1));
    let mut second = Vec::new();
    for i in 0..4 {
        second.push(app.subscribe(&format!("late-{i}"), "basic-monthly").await);
    }
    // The first four's renewal orders, before any reprice.
    app.clock.set(ts(&first[0].period_end) - Duration::hours(72));
    assert!(app.run_job("renewals").await.contains("4 renewal orders created"));
    let mut db = app.billing_db().await;
    let snapshot = format!("{DIGEST} WHERE renews_subscription_id IS NOT NULL");
    let opened_before = scalar(&mut db, &snapshot).await;

    // The second four's, while the price moves five times.
    app.clock.set(ts(&second[0].period_end) - Duration::hours(72));
    let reprices = async {
        for price in [51_000, 52_000, 53_000, 54_000, 55_000] {
            let r = reprice_request("basic-monthly", price, "");
            retrying(|| reprice_once(&app, &r)).await.unwrap();
        }
    };
    let (out, ()) = tokio::join!(app.run_job("renewals"), reprices);
    assert!(out.contains("4 renewal orders created"), "{out}");
    app.run_job("renewals").await;

    assert_eq!(
        scalar(&mut db, "SELECT count(*) AS n FROM orders WHERE renews_subscription_id IS NOT NULL AND plan_version = 1 AND amount_minor = 49900").await,
        8,
        "every renewal at the price its subscription bought"
    );
    let first_ids = first.iter().map(|s| format!("'{}'", s.id)).collect::<Vec<_>>().join(", ");
    let still = format!("{DIGEST} WHERE renews_subscription_id IN ({first_ids})");
    assert_eq!(scalar(&mut db, &still).await, opened_before, "the orders opened before are as they were");
    assert_eq!(orders_off_their_version(&mut db).await, 0);
    assert_eq!(app.order("after", "basic-monthly").await.amount_minor, 55_000, "a new purchase pays the last price");
}

/// The database refuses to change or delete a price version, whatever
/// statement asks (docs/design.md, "Catalogue").
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn guard_price_versions_cannot_be_changed_or_deleted() {
    let app = spawn_app().await;
    let mut db = app.billing_db().await;
    for sql in [
        "UPDATE plan_versions SET price_minor = 1 WHERE plan_id = 'basic-monthly'",
        "DELETE FROM plan_versions WHERE plan_id = 'basic-monthly'",
        "TRUNCATE plan_versions CASCADE",
    ] {
        let e = diesel_async::RunQueryDsl::execute(diesel::sql_query(sql), &mut db).await.unwrap_err();
        assert!(e.to_string().contains("immutable"), "{sql}: {e}");
    }
    // An order must be its version's price.
    let e = diesel_async::RunQueryDsl::execute(
        diesel::sql_query(
            "INSERT INTO orders (id, checkout_session_id, user_id, plan_id, plan_version, amount_minor, currency) \
             VALUES ('order_cheap', gen_random_uuid(), 'cheap', 'basic-monthly', 1, 100, 'INR')",
        ),
        &mut db,
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("orders_price_of_version"), "{e}");
    // An insert that names no version buys the current one.
    exec(
        &mut db,
        "INSERT INTO orders (id, checkout_session_id, user_id, plan_id, amount_minor, currency) \
         VALUES ('order_by_hand', gen_random_uuid(), 'by-hand', 'basic-monthly', 49900, 'INR')",
    )
    .await;
    assert_eq!(scalar(&mut db, "SELECT plan_version::bigint AS n FROM orders WHERE id = 'order_by_hand'").await, 1);
    assert_eq!(scalar(&mut db, "SELECT price_minor AS n FROM plan_versions WHERE plan_id = 'basic-monthly'").await, 49_900);
}
