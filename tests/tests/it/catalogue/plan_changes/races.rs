//! The races, fired through real RPCs (and the renewal job) and checked in
//! the database afterwards: one open change per subscription however many
//! requests race; an upgrade racing the renewal run leaves one live
//! renewal order for the next period, at the plan the period will have;
//! Σ charged for a period never exceeds the highest plan's full price;
//! ledger == balances.
use chrono::Duration;
use futures::future::join_all;
use proto::billing::v1 as bpb;
use tests::{
    helpers::{assert_ledger_matches_balances, retrying, scalar},
    spawn_app,
};

use super::{LITE, LITE_CREDITS, MAX, MAX_CREDITS, MID, at_period_end, charged_for_period, live_renewals, pay, plans, upgrade};
use crate::{catalogue::ts, subscriptions::subscribe_with_saved_card};

/// Eight identical upgrades at once: one change, one order, every caller
/// answered with it. Then eight different changes at once: exactly one is
/// open, every other one CANCELLED with its order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_change_requests_leave_one_open_change() {
    let app = spawn_app().await;
    plans(&app).await;
    let sub = app.subscribe("racer", "lite").await;
    let same = join_all((0..8).map(|_| upgrade(&app, &sub, "max"))).await;
    let orders: std::collections::HashSet<String> = same.into_iter().map(|r| r.unwrap().change.unwrap().order_id).collect();
    assert_eq!(orders.len(), 1, "every caller gets the one order: {orders:?}");
    let mut db = app.billing_db().await;
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM plan_changes").await, 1);
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM orders WHERE plan_change_id IS NOT NULL").await, 1);

    let mixed = join_all((0..8).map(|i| {
        let app = &app;
        let sub = &sub;
        // A well-behaved client retries ABORTED (ROW_BUSY when the
        // user's row queue is long): the subject here is what is left open.
        retrying(move || async move {
            match i % 3 {
                0 => upgrade(app, sub, "mid").await,
                1 => upgrade(app, sub, "max").await,
                _ => at_period_end(app, sub, "mid").await,
            }
        })
    }))
    .await;
    for r in &mixed {
        assert!(r.is_ok(), "{r:?}");
    }
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM plan_changes WHERE status = 'OPEN'").await, 1);
    let loose = "SELECT count(*) AS n FROM orders o JOIN plan_changes c ON c.id = o.plan_change_id \
                  WHERE (c.status = 'CANCELLED') <> (o.status = 'CANCELLED')";
    assert_eq!(scalar(&mut db, loose).await, 0, "a replaced change's order is cancelled with it, and only then");
    assert_eq!(live_renewals(&mut db, &sub.id, ts(&sub.period_end)).await, 0);
}

/// Upgrades paid while the renewal job opens (and, with a saved card,
/// charges) the next period's orders, for several users at once. Whichever
/// commits first, each subscription ends with one live renewal order for
/// the next period, at the price of the plan it is on; an upgrade that lost
/// to a renewal already paid at the old price is recorded, not applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upgrade_racing_the_renewal_run_leaves_one_order_for_the_period() {
    let app = spawn_app().await;
    plans(&app).await;
    let mut subs = Vec::new();
    for i in 0..6 {
        let user = format!("edge-{i}");
        let sub =
            if i % 2 == 0 { subscribe_with_saved_card(&app, &user, "lite").await } else { app.subscribe(&user, "lite").await };
        subs.push(sub);
    }
    let end = ts(&subs[0].period_end);
    app.clock.set(end - Duration::hours(48));
    let mut changes = Vec::new();
    for sub in &subs {
        changes.push(upgrade(&app, sub, "max").await.unwrap().change.unwrap());
    }
    let payments = join_all(changes.iter().map(|c| pay(&app, &c.order_id)));
    let (paid, _) = tokio::join!(payments, app.run_job("renewals"));
    app.run_job("renewals").await;

    let mut db = app.billing_db().await;
    for (sub, paid) in subs.iter().zip(&paid) {
        let now = app.subscription(&sub.id).await;
        assert_eq!(live_renewals(&mut db, &sub.id, end).await, 1, "{}: one live renewal order", sub.user_id);
        let amount = scalar(
            &mut db,
            &format!(
                "SELECT amount_minor AS n FROM orders WHERE renews_subscription_id = '{}' AND status <> 'CANCELLED'",
                sub.id
            ),
        )
        .await;
        match now.plan_id.as_str() {
            "max" => {
                assert!(paid.is_ok(), "{paid:?}");
                assert_eq!(amount, MAX, "{}: the next period at the plan it is on", sub.user_id);
            }
            "lite" => {
                // The renewal was charged at lite first: the upgrade is refused as superseded.
                let e = paid.as_ref().unwrap_err();
                assert_eq!(crate::support::precondition_type(e), "ORDER_SUPERSEDED", "{e:?}");
                assert_eq!(amount, LITE);
            }
            other => panic!("{other}"),
        }
        assert!(charged_for_period(&mut db, &sub.id, ts(&sub.period_start)).await <= MAX);
    }
    assert_ledger_matches_balances(&mut db).await;
}

/// lite → mid → max within one period, each paid, at times across the
/// period, and two upgrades fired at once and both paid: what the user paid
/// for the period never exceeds max's full price, and the subscription is
/// on the plan of the one upgrade applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_periods_charges_never_exceed_the_highest_plans_full_price() {
    let app = spawn_app().await;
    plans(&app).await;
    let sub = app.subscribe("climber", "lite").await;
    let (start, end) = (ts(&sub.period_start), ts(&sub.period_end));
    app.clock.set(start + Duration::minutes(1));
    let to_mid = upgrade(&app, &sub, "mid").await.unwrap().change.unwrap();
    pay(&app, &to_mid.order_id).await.unwrap();
    app.clock.set(start + (end - start) / 2);
    let to_max = upgrade(&app, &sub, "max").await.unwrap().change.unwrap();
    pay(&app, &to_max.order_id).await.unwrap();
    let mut db = app.billing_db().await;
    let charged = charged_for_period(&mut db, &sub.id, start).await;
    assert_eq!(charged, LITE + to_mid.amount_minor + to_max.amount_minor);
    assert!(charged <= MAX, "{charged} > {MAX}");
    assert_eq!(app.subscription(&sub.id).await.plan_id, "max");

    let other = app.subscribe("split", "lite").await;
    let (a, b) = tokio::join!(upgrade(&app, &other, "mid"), upgrade(&app, &other, "max"));
    let orders = [a.unwrap().change.unwrap().order_id, b.unwrap().change.unwrap().order_id];
    let results = join_all(orders.iter().map(|o| pay(&app, o))).await;
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1, "one upgrade applies: {results:?}");
    let now = app.subscription(&other.id).await;
    let charged = charged_for_period(&mut db, &other.id, ts(&other.period_start)).await;
    assert!(charged <= MAX && charged > LITE, "{charged}");
    assert!(now.plan_id == "mid" || now.plan_id == "max");
    let expected = if now.plan_id == "mid" { MID } else { MAX };
    assert!(charged <= expected, "never more than the plan it ended on: {charged} > {expected}");
    assert_ledger_matches_balances(&mut db).await;
}

/// An upgrade's payment racing its withdrawal, and the same payment
/// arriving twice at once (VerifyPayment and the webhook), for several
/// users: each upgrade is applied once or not at all. Applied: its order
/// PAID, the subscription on max with the extra credits added once, the
/// withdrawal answered "nothing pending". Withdrawn: the order CANCELLED,
/// the payment recorded to be refunded, the subscription untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upgrade_paid_while_withdrawn_or_paid_twice_applies_once() {
    let app = spawn_app().await;
    plans(&app).await;
    let mut cases = Vec::new();
    for i in 0..6 {
        let sub = app.subscribe(&format!("twice-{i}"), "lite").await;
        let change = upgrade(&app, &sub, "max").await.unwrap().change.unwrap();
        cases.push((sub, change));
    }
    let fired = join_all(cases.iter().map(|(sub, change)| {
        let app = &app;
        async move {
            let (payment_id, signature) = app.pay(&change.order_id);
            let verify =
                bpb::VerifyPaymentRequest { order_id: change.order_id.clone(), payment_id: payment_id.clone(), signature };
            let hook =
                app.captured_webhook(&change.order_id, &payment_id, change.amount_minor, "INR", &format!("evt-{payment_id}"));
            let cancel = bpb::CancelPlanChangeRequest { id: sub.id.clone(), user_id: sub.user_id.clone() };
            let (mut b1, mut b2, mut b3) = (app.billing.clone(), app.billing.clone(), app.billing.clone());
            let (v, h, c) =
                tokio::join!(b1.verify_payment(verify), b2.handle_gateway_webhook(hook), b3.cancel_plan_change(cancel));
            (v.is_ok(), h.is_ok(), c.map(|r| r.into_inner().replayed))
        }
    }))
    .await;
    let mut db = app.billing_db().await;
    for ((sub, change), (verified, hooked, cancelled)) in cases.iter().zip(fired) {
        assert!(hooked, "{}: a signed webhook is always stored", sub.user_id);
        let now = app.subscription(&sub.id).await;
        let status = |s: &str| format!("SELECT count(*) AS n FROM orders WHERE id = '{}' AND status = '{s}'", change.order_id);
        let found = |kind: &str| {
            format!("SELECT count(*) AS n FROM payment_discrepancies WHERE order_id = '{}' AND kind = '{kind}'", change.order_id)
        };
        if now.plan_id == "max" {
            assert!(verified, "{}", sub.user_id);
            assert_eq!(cancelled.ok(), Some(true), "{}: applied first, nothing left to withdraw", sub.user_id);
            assert_eq!(scalar(&mut db, &status("PAID")).await, 1);
            assert_eq!(now.credits_granted, LITE_CREDITS + (MAX_CREDITS - LITE_CREDITS), "{}: credits added once", sub.user_id);
        } else {
            assert_eq!(now.plan_id, "lite");
            assert_eq!(cancelled.ok(), Some(false), "{}: withdrawn first", sub.user_id);
            assert_eq!(scalar(&mut db, &status("CANCELLED")).await, 1);
            assert_eq!(scalar(&mut db, &found("ORDER_CANCELLED")).await, 1, "{}: the payment is owed back", sub.user_id);
        }
    }
    assert_ledger_matches_balances(&mut db).await;
}
