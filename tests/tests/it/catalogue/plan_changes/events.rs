//! What the event stream tells a watcher about changes (docs/design.md,
//! "Events", "Plan changes"): a pending change is
//! SUBSCRIPTION_CHANGE_SCHEDULED with the change in the payload's
//! pending_change (an upgrade's with its order), a withdrawn or replaced
//! one SUBSCRIPTION_CHANGE_CANCELLED, the move itself
//! SUBSCRIPTION_PLAN_CHANGED; an operator's migration scheduling a version
//! is SUBSCRIPTION_CHANGE_SCHEDULED with scheduled_plan_version.

use proto::billing::v1 as bpb;
use tests::spawn_app;

use super::{at_period_end, pay, plans, upgrade};
use crate::{
    catalogue::{reprice, rid, ts},
    events::{list_all, type_name},
};

/// The subscription events of `sub`, as (type, payload).
async fn of(app: &tests::TestApp, sub: &str) -> Vec<(&'static str, bpb::Subscription)> {
    list_all(app)
        .await
        .into_iter()
        .filter(|e| e.entity_id == sub)
        .map(|e| match e.payload.clone() {
            Some(bpb::billing_event::Payload::Subscription(s)) => (type_name(&e), s),
            other => panic!("{other:?}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pending_changes_their_withdrawal_and_the_move_are_events() {
    let app = spawn_app().await;
    plans(&app).await;
    let sub = app.subscribe("watched", "mid").await;
    let first = upgrade(&app, &sub, "max").await.unwrap().change.unwrap();
    let second = at_period_end(&app, &sub, "lite").await.unwrap().change.unwrap();
    let cancel = bpb::CancelPlanChangeRequest { id: sub.id.clone(), user_id: sub.user_id.clone() };
    app.billing.clone().cancel_plan_change(cancel).await.unwrap();
    let third = upgrade(&app, &sub, "max").await.unwrap().change.unwrap();
    pay(&app, &third.order_id).await.unwrap();

    let events = of(&app, &sub.id).await;
    let names: Vec<&str> = events.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        names,
        [
            "SUBSCRIPTION_ACTIVATED",
            "SUBSCRIPTION_CHANGE_SCHEDULED",
            "SUBSCRIPTION_CHANGE_CANCELLED",
            "SUBSCRIPTION_CHANGE_SCHEDULED",
            "SUBSCRIPTION_CHANGE_CANCELLED",
            "SUBSCRIPTION_CHANGE_SCHEDULED",
            "SUBSCRIPTION_PLAN_CHANGED",
        ]
    );
    let pending: Vec<bpb::PlanChange> = events.iter().filter_map(|(_, s)| s.pending_change.clone()).collect();
    assert_eq!(pending.len(), 3, "only the scheduled ones carry the change");
    assert_eq!((pending[0].id.as_str(), pending[0].order_id.as_str()), (first.id.as_str(), first.order_id.as_str()));
    assert_eq!(
        (pending[1].id.as_str(), pending[1].plan_id.as_str(), pending[1].order_id.as_str()),
        (second.id.as_str(), "lite", "")
    );
    assert_eq!(pending[1].timing, bpb::PlanChangeTiming::AtPeriodEnd as i32);
    assert_eq!(ts(&pending[1].effective_at), ts(&sub.period_end));
    assert_eq!(pending[2].amount_minor, third.amount_minor);
    let (_, moved) = events.last().unwrap();
    assert_eq!((moved.plan_id.as_str(), moved.pending_change.is_none()), ("max", true));
}

/// An operator's migration of a plan's subscribers: each scheduled
/// subscription says so once, with the version its next period runs on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_migration_scheduling_a_version_is_an_event() {
    let app = spawn_app().await;
    plans(&app).await;
    let sub = app.subscribe("migrated", "lite").await;
    reprice(&app, "lite", 12_000, "").await.unwrap();
    let r = bpb::MigrateSubscribersRequest {
        plan_id: "lite".into(),
        request_id: rid(),
        validate_only: false,
        from_version: 1,
        to_version: 2,
    };
    app.catalog.clone().migrate_subscribers(r).await.unwrap();
    let events = of(&app, &sub.id).await;
    let scheduled: Vec<&bpb::Subscription> =
        events.iter().filter(|(n, _)| *n == "SUBSCRIPTION_CHANGE_SCHEDULED").map(|(_, s)| s).collect();
    assert_eq!(scheduled.len(), 1, "{events:?}");
    assert_eq!((scheduled[0].plan_version, scheduled[0].scheduled_plan_version), (1, 2));
}
