//! Downgrades (and any change asked for AT_PERIOD_END): nothing charged or
//! refunded now, the next period's renewal order charges the new plan and
//! that period runs on it; cancellable until then.
use chrono::Duration;
use proto::billing::v1 as bpb;
use tests::{
    helpers::{assert_ledger_matches_balances, scalar},
    spawn_app,
};
use tonic::Code;

use super::{LITE, LITE_CREDITS, MAX, MAX_CREDITS, at_period_end, live_renewals, plans, upgrade};
use crate::{catalogue::ts, subscriptions::subscribe_with_saved_card, support::precondition_type};

/// max → lite at period end: shown as pending_change with its effective
/// time; an IMMEDIATELY downgrade is refused; the renewal order charges
/// lite's price (the saved card is charged that), and the next period runs
/// on lite with lite's credits; the change is APPLIED.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_downgrade_is_scheduled_for_the_period_end_and_renews_at_the_new_plan() {
    let app = spawn_app().await;
    plans(&app).await;
    let sub = subscribe_with_saved_card(&app, "downer", "max").await;
    let end = ts(&sub.period_end);

    let e = upgrade(&app, &sub, "lite").await.unwrap_err();
    assert_eq!((e.code(), precondition_type(&e)), (Code::FailedPrecondition, "PLAN_CHANGE_NOT_ALLOWED".to_owned()), "{e:?}");

    let r = at_period_end(&app, &sub, "lite").await.unwrap();
    let change = r.change.unwrap();
    assert_eq!((change.plan_id.as_str(), change.amount_minor, change.order_id.as_str()), ("lite", 0, ""));
    assert_eq!(ts(&change.effective_at), end);
    let shown = app.subscription(&sub.id).await;
    assert_eq!(shown.plan_id, "max", "max until the period ends");
    assert_eq!(shown.pending_change.map(|c| c.id), Some(change.id.clone()));
    assert!(at_period_end(&app, &sub, "lite").await.unwrap().replayed, "the same change again is a replay");

    app.clock.set(end - Duration::hours(48));
    let out = app.run_job("renewals").await;
    assert!(out.contains("1 renewal orders created, 1 charges captured"), "{out}");
    let mut db = app.billing_db().await;
    let sql = format!(
        "SELECT count(*) AS n FROM orders WHERE renews_subscription_id = '{}' AND status = 'PAID' AND plan_id = 'lite' \
            AND amount_minor = {LITE}",
        sub.id
    );
    assert_eq!(scalar(&mut db, &sql).await, 1, "the renewal charged lite's price");
    app.clock.set(end);
    app.run_job("rollover").await;
    let next = app.subscription(&sub.id).await;
    assert_eq!((next.plan_id.as_str(), next.credits_granted, ts(&next.period_start)), ("lite", LITE_CREDITS, end));
    assert!(next.pending_change.is_none());
    let applied =
        scalar(&mut db, &format!("SELECT count(*) AS n FROM plan_changes WHERE id = '{}' AND status = 'APPLIED'", change.id))
            .await;
    assert_eq!(applied, 1);
    assert_ledger_matches_balances(&mut db).await;
    assert!(app.reconcile(false).await.is_empty());
}

/// A scheduled change withdrawn after the renewal job opened the next
/// period's order at the new plan: that order is cancelled and opened
/// again at the current plan's price (one live order for the period), and
/// the period renews on the current plan.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_scheduled_change_can_be_withdrawn_and_the_renewal_reopens_at_the_current_plan() {
    let app = spawn_app().await;
    plans(&app).await;
    let sub = app.subscribe("undecided", "max").await;
    let end = ts(&sub.period_end);
    at_period_end(&app, &sub, "lite").await.unwrap();
    app.clock.set(end - Duration::hours(48));
    assert!(app.run_job("renewals").await.contains("1 renewal orders created"));
    let lite_order = app.subscription(&sub.id).await.renewal_order_id;

    let cancel = bpb::CancelPlanChangeRequest { id: sub.id.clone(), user_id: sub.user_id.clone() };
    let r = app.billing.clone().cancel_plan_change(cancel.clone()).await.unwrap().into_inner();
    assert!(!r.replayed && r.subscription.unwrap().pending_change.is_none());
    assert!(app.billing.clone().cancel_plan_change(cancel).await.unwrap().into_inner().replayed, "nothing left to withdraw");

    assert!(app.run_job("renewals").await.contains("1 renewal orders created"), "opened again");
    let reopened = app.subscription(&sub.id).await.renewal_order_id;
    assert_ne!(reopened, lite_order);
    let mut db = app.billing_db().await;
    assert_eq!(live_renewals(&mut db, &sub.id, end).await, 1);
    let amount = scalar(&mut db, &format!("SELECT amount_minor AS n FROM orders WHERE id = '{reopened}'")).await;
    assert_eq!(amount, MAX);
    // Paying the withdrawn change's order buys nothing.
    let e = super::pay(&app, &lite_order).await.unwrap_err();
    assert_eq!(precondition_type(&e), "ORDER_CANCELLED", "{e:?}");
    app.pay_renewal(&sub.id).await.unwrap();
    app.clock.set(end);
    app.run_job("rollover").await;
    let next = app.subscription(&sub.id).await;
    assert_eq!((next.plan_id.as_str(), next.credits_granted), ("max", MAX_CREDITS));
    assert_ledger_matches_balances(&mut db).await;
}
