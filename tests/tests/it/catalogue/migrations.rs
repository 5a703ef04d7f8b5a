//! MigrateSubscribers (docs/design.md, "Catalogue"): a plan's subscribers
//! move from one price version to another at their next period, through
//! renewal orders not yet created; an order already open keeps its price.
//! The migration is a PlanMigration an operator follows; its request_id is
//! applied once; bad requests get precise statuses; and a migration racing
//! a renewal run charges each subscriber one version or the other, never
//! anything else.
use chrono::Duration;
use proto::billing::v1 as bpb;
use tests::{
    TestApp,
    helpers::{assert_ledger_matches_balances, code, scalar},
    spawn_app,
};
use tonic::{Code, Status};

use super::{etag, orders_off_their_version, reprice, reprice_request, rid, ts};

fn migrate_request(plan: &str, from: i32, to: i32) -> bpb::MigrateSubscribersRequest {
    bpb::MigrateSubscribersRequest {
        plan_id: plan.into(),
        request_id: rid(),
        validate_only: false,
        from_version: from,
        to_version: to,
    }
}

async fn migrate(app: &TestApp, req: bpb::MigrateSubscribersRequest) -> Result<bpb::PlanMigration, Status> {
    app.catalog.clone().migrate_subscribers(req).await.map(|r| r.into_inner().migration.unwrap())
}

async fn migration(app: &TestApp, id: &str) -> bpb::PlanMigration {
    let r = app.catalog.clone().get_plan_migration(bpb::GetPlanMigrationRequest { id: id.into() }).await;
    r.unwrap().into_inner().migration.unwrap()
}

async fn order(app: &TestApp, id: &str) -> bpb::Order {
    app.billing.clone().get_order(bpb::GetOrderRequest { id: id.into() }).await.unwrap().into_inner().order.unwrap()
}

/// Pays the open renewal and rolls over at the period end.
async fn pay_and_roll(app: &TestApp, id: &str) -> bpb::Subscription {
    let end = ts(&app.subscription(id).await.period_end);
    app.pay_renewal(id).await.unwrap();
    app.clock.set(end);
    app.run_job("rollover").await;
    app.subscription(id).await
}

/// The subscriber whose renewal order was open keeps its price for that
/// period and moves one period later; the one whose order was not open yet
/// renews at the new version at once. The migration's counts follow.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_migration_applies_to_renewal_orders_not_yet_created() {
    let app = spawn_app().await;
    let told = app.subscribe("mig-told", "basic-monthly").await;
    app.clock.advance(Duration::days(5));
    let fresh = app.subscribe("mig-fresh", "basic-monthly").await;
    app.clock.set(ts(&told.period_end) - Duration::hours(72));
    app.run_job("renewals").await;
    let open = app.subscription(&told.id).await.renewal_order_id;
    assert!(!open.is_empty(), "the first subscriber's renewal is open before the migration");

    reprice(&app, "basic-monthly", 59_900, &etag(&app, "basic-monthly").await).await.unwrap();
    let req = migrate_request("basic-monthly", 1, 2);
    let m = migrate(&app, req.clone()).await.unwrap();
    assert_eq!((m.plan_id.as_str(), m.from_version, m.to_version), ("basic-monthly", 1, 2));
    assert_eq!((m.subscriptions_scheduled, m.subscriptions_applied), (2, 0));
    assert_eq!(m.state, bpb::PlanMigrationState::Scheduled as i32);
    let replay = migrate(&app, req).await.unwrap();
    assert_eq!(replay.id, m.id, "a replay answers the first call and schedules nothing again");
    let mut db = app.billing_db().await;
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM plan_migrations").await, 1);

    // Shown on both; the open order keeps the price the customer was told.
    for s in [&told, &fresh] {
        let s = app.subscription(&s.id).await;
        assert_eq!((s.plan_version, s.scheduled_plan_version), (1, 2));
    }
    let kept = order(&app, &open).await;
    assert_eq!((kept.amount_minor, kept.plan_version), (49_900, 1));
    let told1 = pay_and_roll(&app, &told.id).await;
    assert_eq!((told1.plan_version, told1.scheduled_plan_version), (1, 2), "the period paid at version 1 runs on it");

    // The other subscriber's renewal opens after the migration: version 2.
    app.clock.set(ts(&fresh.period_end) - Duration::hours(72));
    app.run_job("renewals").await;
    let moved = order(&app, &app.subscription(&fresh.id).await.renewal_order_id).await;
    assert_eq!((moved.amount_minor, moved.plan_version), (59_900, 2));
    let fresh1 = pay_and_roll(&app, &fresh.id).await;
    assert_eq!((fresh1.plan_version, fresh1.scheduled_plan_version, fresh1.credits_granted), (2, 0, 300));
    assert_eq!(migration(&app, &m.id).await.subscriptions_applied, 1);

    // The first subscriber's next renewal: version 2.
    app.clock.set(ts(&told1.period_end) - Duration::hours(72));
    app.run_job("renewals").await;
    let next = order(&app, &app.subscription(&told.id).await.renewal_order_id).await;
    assert_eq!((next.amount_minor, next.plan_version), (59_900, 2));
    let told2 = pay_and_roll(&app, &told.id).await;
    assert_eq!((told2.plan_version, told2.scheduled_plan_version), (2, 0));
    let done = migration(&app, &m.id).await;
    assert_eq!((done.subscriptions_scheduled, done.subscriptions_applied), (2, 2));
    assert_eq!(done.state, bpb::PlanMigrationState::Completed as i32);

    let list = app
        .catalog
        .clone()
        .list_plan_migrations(bpb::ListPlanMigrationsRequest { plan_id: "basic-monthly".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.migrations.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(), [m.id.as_str()]);
    assert_eq!(orders_off_their_version(&mut db).await, 0);
    assert_ledger_matches_balances(&mut db).await;
}

/// Bad requests: precise statuses, nothing written; validate_only answers
/// the migration it would make and writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn migrations_refuse_what_cannot_be_migrated_and_validate_only_writes_nothing() {
    let app = spawn_app().await;
    let sub = app.subscribe("mig-checked", "basic-monthly").await;
    reprice(&app, "basic-monthly", 59_900, "").await.unwrap();
    let usd = bpb::CreatePriceVersionRequest { currency: "USD".into(), ..reprice_request("basic-monthly", 799, "") };
    app.catalog.clone().create_price_version(usd).await.unwrap();

    assert_eq!(code(migrate(&app, migrate_request("no-such-plan", 1, 2)).await), Code::NotFound);
    assert_eq!(code(migrate(&app, migrate_request("basic-monthly", 1, 9)).await), Code::NotFound);
    assert_eq!(code(migrate(&app, migrate_request("basic-monthly", 9, 1)).await), Code::NotFound);
    assert_eq!(code(migrate(&app, migrate_request("basic-monthly", 2, 2)).await), Code::InvalidArgument);
    assert_eq!(code(migrate(&app, migrate_request("basic-monthly", 0, 2)).await), Code::InvalidArgument);
    let currency = migrate(&app, migrate_request("basic-monthly", 1, 3)).await.unwrap_err();
    assert_eq!(currency.code(), Code::InvalidArgument, "{currency:?}");
    assert_eq!(code(migrate(&app, migrate_request("free", 1, 2)).await), Code::FailedPrecondition);
    let no_key = bpb::MigrateSubscribersRequest { request_id: String::new(), ..migrate_request("basic-monthly", 1, 2) };
    assert_eq!(code(migrate(&app, no_key).await), Code::InvalidArgument);
    let missing =
        app.catalog.clone().get_plan_migration(bpb::GetPlanMigrationRequest { id: uuid::Uuid::new_v4().to_string() }).await;
    assert_eq!(code(missing), Code::NotFound);

    let dry = migrate(&app, bpb::MigrateSubscribersRequest { validate_only: true, ..migrate_request("basic-monthly", 1, 2) })
        .await
        .unwrap();
    assert_eq!(dry.subscriptions_scheduled, 1, "it answers what the migration would schedule");
    let mut db = app.billing_db().await;
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM plan_migrations").await, 0);
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM subscriptions WHERE next_plan_version IS NOT NULL").await, 0);
    assert_eq!(app.subscription(&sub.id).await.scheduled_plan_version, 0);
}

/// A migration racing renewal runs: each subscriber gets one renewal
/// order, at version 1 (opened before the migration) or 2 (after), its
/// amount that version's price; the periods those orders pay run on their
/// versions, and a subscriber renewed at 1 keeps 2 scheduled.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn race_a_migration_during_a_renewal_run_charges_one_version_or_the_other() {
    let app = spawn_app().await;
    let mut subs = Vec::new();
    for i in 0..16 {
        subs.push(app.subscribe(&format!("mig-race-{i}"), "basic-monthly").await);
    }
    reprice(&app, "basic-monthly", 59_900, "").await.unwrap();
    app.clock.set(ts(&subs[0].period_end) - Duration::hours(72));
    let runs = futures::future::join_all((0..2).map(|_| billing_svc::jobs::run_once(&app.billing_app, "renewals")));
    let (runs, m) = tokio::join!(runs, migrate(&app, migrate_request("basic-monthly", 1, 2)));
    assert!(runs.iter().all(|r| r.is_ok()), "{runs:?}");
    assert_eq!(m.unwrap().subscriptions_scheduled, 16);
    // Whatever the race left unopened opens now, at version 2.
    app.run_job("renewals").await;

    let mut db = app.billing_db().await;
    assert_eq!(orders_off_their_version(&mut db).await, 0, "every renewal order is its version's price");
    assert_eq!(
        scalar(
            &mut db,
            "SELECT count(*) AS n FROM orders WHERE renews_subscription_id IS NOT NULL \
              AND ((plan_version = 1 AND amount_minor = 49900) OR (plan_version = 2 AND amount_minor = 59900))"
        )
        .await,
        16,
        "one renewal each, at version 1 or 2"
    );
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM orders WHERE renews_subscription_id IS NOT NULL").await, 16);
    for s in &subs {
        app.pay_renewal(&s.id).await.unwrap();
    }
    app.clock.set(ts(&subs[0].period_end));
    app.run_job("rollover").await;
    assert_eq!(
        scalar(
            &mut db,
            "SELECT count(*) AS n FROM subscriptions s JOIN orders o ON o.renews_subscription_id = s.id \
              WHERE s.status = 'ACTIVE' AND s.period_start = o.renews_period_start AND s.plan_version = o.plan_version \
                AND s.next_plan_version IS NOT DISTINCT FROM CASE o.plan_version WHEN 1 THEN 2 END"
        )
        .await,
        16,
        "each period runs on the version its order charged; a version-1 renewal keeps 2 scheduled"
    );
    assert_ledger_matches_balances(&mut db).await;
}
