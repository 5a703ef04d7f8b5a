//! Upgrades: charged the price difference for the rest of the period, in
//! effect once that order is paid, the period and its anchor kept.
use chrono::Duration;
use proto::billing::v1 as bpb;
use tests::{
    helpers::{assert_ledger_matches_balances, scalar},
    spawn_app,
};

use super::{LITE, LITE_CREDITS, MAX, MAX_CREDITS, charged_for_period, expected_charge, live_renewals, pay, plans, upgrade};
use crate::{
    catalogue::ts,
    events::{list_all, type_name},
    subscriptions::spend,
};

/// A third into the period, lite → max is charged (max − lite) × ⅔ rounded
/// down; until that order is paid nothing changes but `pending_change`;
/// paid, the subscription is on max at once with the same period, its
/// credits grown by (max's grant − lite's) × ⅔, and the next renewal
/// charges max's price with max's full grant.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upgrade_charges_the_prorated_difference_and_takes_effect_once_paid() {
    let app = spawn_app().await;
    plans(&app).await;
    let sub = app.subscribe("upper", "lite").await;
    spend(&app, "upper", 30).await;
    let (start, end) = (ts(&sub.period_start), ts(&sub.period_end));
    let now = start + (end - start) / 3 + Duration::milliseconds(7);
    app.clock.set(now);

    let r = upgrade(&app, &sub, "max").await.unwrap();
    assert!(!r.replayed);
    let change = r.change.unwrap();
    let expected = expected_charge(MAX - LITE, &sub, now);
    assert!(expected > 0 && expected < MAX - LITE, "{expected}");
    assert_eq!((change.amount_minor, change.currency.as_str(), change.plan_id.as_str()), (expected, "INR", "max"));
    assert_eq!((change.from_plan_id.as_str(), change.timing), ("lite", bpb::PlanChangeTiming::Immediately as i32));
    assert!(!change.order_id.is_empty() && change.applied_at.is_none());
    let waiting = r.subscription.unwrap();
    assert_eq!(waiting.plan_id, "lite", "nothing changes before the charge is paid");
    assert_eq!(waiting.pending_change.as_ref().map(|c| c.order_id.as_str()), Some(change.order_id.as_str()));
    let order = app.billing.clone().get_order(bpb::GetOrderRequest { id: change.order_id.clone() }).await.unwrap();
    assert_eq!(order.into_inner().order.unwrap().amount_minor, expected, "the order charges the prorated amount");

    // The same request again: the same change and order, nothing new.
    let again = upgrade(&app, &sub, "max").await.unwrap();
    assert!(again.replayed);
    assert_eq!(again.change.unwrap().order_id, change.order_id);

    let paid = pay(&app, &change.order_id).await.unwrap().subscription.unwrap();
    assert_eq!((paid.id.as_str(), paid.plan_id.as_str()), (sub.id.as_str(), "max"));
    assert_eq!((ts(&paid.period_start), ts(&paid.period_end)), (start, end), "the period and its anchor stay");
    // The credits grow by the grants' difference for the share of the
    // period the charge paid for, rounded down as the charge is.
    let extra = expected_charge(MAX_CREDITS - LITE_CREDITS, &sub, now);
    assert!(extra > 0 && extra < MAX_CREDITS - LITE_CREDITS, "{extra}");
    assert_eq!((paid.credits_granted, paid.credits_remaining), (LITE_CREDITS + extra, LITE_CREDITS - 30 + extra));
    assert!(paid.pending_change.is_none());

    // The next period is max's, at max's price.
    app.clock.set(end - Duration::hours(48));
    assert!(app.run_job("renewals").await.contains("1 renewal orders created"));
    let mut db = app.billing_db().await;
    let sql = format!(
        "SELECT count(*) AS n FROM orders WHERE renews_subscription_id = '{}' AND status = 'CREATED' \
            AND plan_id = 'max' AND amount_minor = {MAX}",
        sub.id
    );
    assert_eq!(scalar(&mut db, &sql).await, 1);
    app.pay_renewal(&sub.id).await.unwrap();
    app.clock.set(end);
    app.run_job("rollover").await;
    let renewed = app.subscription(&sub.id).await;
    assert_eq!((renewed.plan_id.as_str(), renewed.credits_granted, ts(&renewed.period_start)), ("max", MAX_CREDITS, end));

    assert_eq!(charged_for_period(&mut db, &sub.id, start).await, LITE + expected, "the purchase and the upgrade");
    assert!(LITE + expected <= MAX, "never more than the highest plan's full price");
    assert_eq!(live_renewals(&mut db, &sub.id, end).await, 1);
    assert_eq!(crate::catalogue::orders_off_their_version(&mut db).await, 0);
    let off = "SELECT count(*) AS n FROM orders o JOIN plan_changes c ON c.id = o.plan_change_id \
                WHERE o.amount_minor <> c.amount_minor OR o.currency <> c.currency OR o.plan_id <> c.to_plan_id";
    assert_eq!(scalar(&mut db, off).await, 0, "an upgrade's order charges its change's amount");
    assert_ledger_matches_balances(&mut db).await;
    assert!(app.reconcile(false).await.is_empty(), "a paid upgrade is no paid order without a subscription");
    let changed: Vec<String> = list_all(&app)
        .await
        .iter()
        .filter(|e| e.entity_id == sub.id && type_name(e) == "SUBSCRIPTION_PLAN_CHANGED")
        .map(|e| match &e.payload {
            Some(bpb::billing_event::Payload::Subscription(s)) => s.plan_id.clone(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(changed, ["max"], "one PLAN_CHANGED event, with the subscription on its new plan");
}

/// Credits never shrink on an upgrade: a plan that costs more but grants
/// fewer credits leaves the balance as it is. An upgrade at the very start
/// of the period adds the whole difference of the grants (the new grant
/// minus what was used), whatever was carried over.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upgrade_never_leaves_fewer_credits_than_were_left() {
    let app = spawn_app().await;
    plans(&app).await;
    app.create_plan("bigger-credits-cheaper", "Odd", LITE + 1, 10).await;
    app.create_plan("odd-old", "Old", 5_000, 7).await;
    let sub = app.subscribe("keeper", "lite").await;
    assert_eq!(sub.credits_remaining, LITE_CREDITS);
    let r = upgrade(&app, &sub, "bigger-credits-cheaper").await.unwrap();
    let change = r.change.unwrap();
    let paid = pay(&app, &change.order_id).await.unwrap().subscription.unwrap();
    assert_eq!(paid.plan_id, "bigger-credits-cheaper");
    assert_eq!((paid.credits_granted, paid.credits_remaining), (LITE_CREDITS, LITE_CREDITS), "fewer credits granted: 100 kept");

    // Carried over: 100 of lite plus what a replaced subscription left.
    let carried = app.subscribe("carrier", "odd-old").await;
    assert_eq!(carried.credits_remaining, 7);
    let sub = app.subscribe("carrier", "lite").await;
    assert_eq!(sub.credits_remaining, LITE_CREDITS + 7, "carried over");
    spend(&app, "carrier", 20).await;
    let change = upgrade(&app, &sub, "max").await.unwrap().change.unwrap();
    let paid = pay(&app, &change.order_id).await.unwrap().subscription.unwrap();
    assert_eq!(
        (paid.credits_granted, paid.credits_remaining),
        (LITE_CREDITS + 7 + (MAX_CREDITS - LITE_CREDITS), LITE_CREDITS + 7 - 20 + (MAX_CREDITS - LITE_CREDITS)),
        "the grants' difference on top of what is left, carried-over credits included"
    );
    assert_ledger_matches_balances(&mut app.billing_db().await).await;
}

/// An upgrade order paid after its period ended buys nothing: the payment
/// is a refundable ORDER_SUPERSEDED discrepancy and the subscription stays
/// on its plan. So is the payment of an upgrade another change replaced
/// (its order was cancelled: ORDER_CANCELLED).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_late_or_replaced_upgrade_payment_buys_nothing_and_is_recorded() {
    let app = spawn_app().await;
    plans(&app).await;
    let sub = app.subscribe("late", "lite").await;
    let first = upgrade(&app, &sub, "mid").await.unwrap().change.unwrap();
    let second = upgrade(&app, &sub, "max").await.unwrap().change.unwrap();
    assert_ne!(first.order_id, second.order_id);
    let e = pay(&app, &first.order_id).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert_eq!(crate::support::precondition_type(&e), "ORDER_CANCELLED");

    // Paid after the period ended (renewed at lite meanwhile).
    let end = ts(&sub.period_end);
    app.clock.set(end - Duration::hours(48));
    app.run_job("renewals").await;
    app.pay_renewal(&sub.id).await.unwrap();
    app.clock.set(end + Duration::hours(1));
    app.run_job("rollover").await;
    let e = pay(&app, &second.order_id).await.unwrap_err();
    assert_eq!(crate::support::precondition_type(&e), "ORDER_SUPERSEDED", "{e:?}");
    let now = app.subscription(&sub.id).await;
    assert_eq!((now.plan_id.as_str(), ts(&now.period_start)), ("lite", end));
    let mut db = app.billing_db().await;
    let open = scalar(&mut db, "SELECT count(*) AS n FROM payment_discrepancies WHERE status = 'OPEN'").await;
    assert_eq!(open, 2, "both payments are recorded, to be refunded");
    assert_ledger_matches_balances(&mut db).await;
}
