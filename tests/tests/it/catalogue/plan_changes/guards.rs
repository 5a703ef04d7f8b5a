//! The guards of plan changes, each with the path that would lose money
//! without it: a change replacing a scheduled one takes the renewal order
//! priced at the withdrawn plan with it; no change while the next period's
//! renewal is being charged (a charge whose answer was lost may still
//! land); staying on the plan withdraws a pending change; a subscription
//! that ends cancels its pending change, whose late payment buys nothing;
//! no change between currencies.
use chrono::Duration;
use proto::billing::v1 as bpb;
use tests::{
    helpers::{assert_ledger_matches_balances, new_plan, scalar},
    spawn_app,
};
use tonic::Code;

use super::{LITE, MAX, at_period_end, live_renewals, pay, plans, upgrade};
use crate::{catalogue::ts, subscriptions::subscribe_with_saved_card, support::precondition_type};

/// Scheduled mid → lite, its renewal order opened at lite; then an upgrade
/// to max replaces it and is never paid: the lite renewal order is gone
/// with the withdrawn change, so the period cannot renew on lite; the job
/// opens it again at mid.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replacing_a_scheduled_change_withdraws_the_renewal_order_at_its_plan() {
    let app = spawn_app().await;
    plans(&app).await;
    let sub = app.subscribe("fickle", "mid").await;
    let end = ts(&sub.period_end);
    at_period_end(&app, &sub, "lite").await.unwrap();
    app.clock.set(end - Duration::hours(48));
    assert!(app.run_job("renewals").await.contains("1 renewal orders created"));
    let lite_order = app.subscription(&sub.id).await.renewal_order_id;
    let up = upgrade(&app, &sub, "max").await.unwrap().change.unwrap();
    let mut db = app.billing_db().await;
    let status =
        scalar(&mut db, &format!("SELECT count(*) AS n FROM orders WHERE id = '{lite_order}' AND status = 'CANCELLED'")).await;
    assert_eq!(status, 1, "the renewal order at the withdrawn plan is cancelled");
    assert_eq!(precondition_type(&pay(&app, &lite_order).await.unwrap_err()), "ORDER_CANCELLED");

    assert!(app.run_job("renewals").await.contains("1 renewal orders created"), "opened again at mid");
    let mid_order = app.subscription(&sub.id).await.renewal_order_id;
    let amount = scalar(&mut db, &format!("SELECT amount_minor AS n FROM orders WHERE id = '{mid_order}'")).await;
    assert_eq!(amount, super::MID);
    app.pay_renewal(&sub.id).await.unwrap();
    app.clock.set(end + Duration::hours(1));
    app.run_job("rollover").await;
    let next = app.subscription(&sub.id).await;
    assert_eq!((next.plan_id.as_str(), ts(&next.period_start)), ("mid", end));
    assert!(next.pending_change.is_none(), "the unpaid upgrade lapsed with its period");
    assert_eq!(precondition_type(&pay(&app, &up.order_id).await.unwrap_err()), "ORDER_SUPERSEDED");
    assert_eq!(live_renewals(&mut db, &sub.id, end).await, 1);
    assert_ledger_matches_balances(&mut db).await;
}

/// The renewal's charge was made but its answer lost: the order may be
/// paid at the gateway. Every change is refused until it settled (never
/// cancelled and charged again at another price); once settled it is
/// paid, charged once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_change_while_the_renewal_is_being_charged() {
    let app = spawn_app().await;
    plans(&app).await;
    let sub = subscribe_with_saved_card(&app, "charged", "max").await;
    let end = ts(&sub.period_end);
    app.gateway.set_lose_charge_answers(true);
    app.clock.set(end - Duration::hours(72));
    assert!(app.run_job("renewals").await.contains("1 renewal orders created, 0 charges captured, 1 not captured"));
    let renewal = app.subscription(&sub.id).await.renewal_order_id;

    for r in [at_period_end(&app, &sub, "lite").await, at_period_end(&app, &sub, "mid").await] {
        let e = r.unwrap_err();
        assert_eq!((e.code(), precondition_type(&e)), (Code::FailedPrecondition, "PLAN_CHANGE_NOT_ALLOWED".to_owned()), "{e:?}");
    }
    app.gateway.set_lose_charge_answers(false);
    app.clock.set(end - Duration::hours(48));
    assert!(app.run_job("renewals").await.contains("1 charges captured"));
    assert_eq!(app.gateway.charges_of(&renewal).len(), 1, "charged once");
    let mut db = app.billing_db().await;
    let paid = scalar(
        &mut db,
        &format!("SELECT count(*) AS n FROM orders WHERE id = '{renewal}' AND status = 'PAID' AND amount_minor = {MAX}"),
    )
    .await;
    assert_eq!(paid, 1);
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM payment_discrepancies").await, 0);
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM plan_changes").await, 0, "no refusal wrote a change");
}

/// A change back to the plan the subscription is on withdraws the pending
/// change (the customer's latest word); with nothing pending it is a no-op.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn staying_on_the_plan_withdraws_a_pending_change() {
    let app = spawn_app().await;
    plans(&app).await;
    let sub = app.subscribe("stayer", "mid").await;
    at_period_end(&app, &sub, "lite").await.unwrap();
    let r = upgrade(&app, &sub, "mid").await.unwrap();
    assert!(!r.replayed && r.change.is_none());
    assert!(r.subscription.unwrap().pending_change.is_none());
    let again = at_period_end(&app, &sub, "mid").await.unwrap();
    assert!(again.replayed && again.change.is_none(), "nothing pending: a no-op");
}

/// CancelSubscription now with an upgrade pending: the change is CANCELLED
/// with the subscription, and its order's payment buys nothing (recorded
/// to be refunded).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_ended_subscription_cancels_its_pending_change() {
    let app = spawn_app().await;
    plans(&app).await;
    let sub = app.subscribe("leaver", "lite").await;
    let up = upgrade(&app, &sub, "max").await.unwrap().change.unwrap();
    let cancel = bpb::CancelSubscriptionRequest {
        id: sub.id.clone(),
        user_id: "leaver".into(),
        policy: bpb::CancellationPolicy::Immediately as i32,
        ..Default::default()
    };
    app.billing.clone().cancel_subscription(cancel).await.unwrap();
    let mut db = app.billing_db().await;
    let open = scalar(&mut db, "SELECT count(*) AS n FROM plan_changes WHERE status = 'OPEN'").await;
    assert_eq!(open, 0, "the change ended with its subscription");
    assert_eq!(precondition_type(&pay(&app, &up.order_id).await.unwrap_err()), "ORDER_SUPERSEDED");
    let ended = app.subscription(&sub.id).await;
    assert_eq!((ended.plan_id.as_str(), ended.status), ("lite", bpb::SubscriptionStatus::Cancelled as i32));
    assert!(ended.pending_change.is_none());
    assert_eq!(
        LITE,
        scalar(&mut db, "SELECT coalesce(sum(amount_minor), 0)::bigint AS n FROM orders WHERE status = 'PAID'").await
    );
}

/// Another currency: refused at either timing (the saved mandate and the
/// proration are in one currency).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_change_to_another_currency_is_refused() {
    let app = spawn_app().await;
    plans(&app).await;
    let usd = bpb::CreatePlanRequest { currency: "USD".into(), ..new_plan("dollar", "Dollar", 99_999, 1_000) };
    app.catalog.clone().create_plan(usd).await.unwrap();
    let sub = app.subscribe("traveller", "lite").await;
    for r in [upgrade(&app, &sub, "dollar").await, at_period_end(&app, &sub, "dollar").await] {
        let e = r.unwrap_err();
        assert_eq!(precondition_type(&e), "PLAN_CHANGE_NOT_ALLOWED", "{e:?}");
    }
}

/// A scheduled change whose renewal at the new plan is paid already stands:
/// neither a change back to the current plan nor CancelPlanChange withdraws
/// it (the customer paid the new plan's price for the next period).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_scheduled_change_paid_for_is_not_withdrawn() {
    let app = spawn_app().await;
    plans(&app).await;
    let sub = app.subscribe("committed", "max").await;
    let end = ts(&sub.period_end);
    at_period_end(&app, &sub, "lite").await.unwrap();
    app.clock.set(end - Duration::hours(48));
    app.run_job("renewals").await;
    app.pay_renewal(&sub.id).await.unwrap();
    let back = upgrade(&app, &sub, "max").await.unwrap_err();
    assert_eq!(precondition_type(&back), "PLAN_CHANGE_NOT_ALLOWED", "{back:?}");
    let cancel = bpb::CancelPlanChangeRequest { id: sub.id.clone(), user_id: "committed".into() };
    let e = app.billing.clone().cancel_plan_change(cancel).await.unwrap_err();
    assert_eq!(precondition_type(&e), "PLAN_CHANGE_NOT_ALLOWED", "{e:?}");
    app.clock.set(end);
    app.run_job("rollover").await;
    assert_eq!(app.subscription(&sub.id).await.plan_id, "lite", "the period paid at lite runs on lite");
}

/// Collection stopped (the saved method was revoked: METHOD_UNUSABLE): no
/// charge can land any more, so a change is allowed again, and the renewal
/// order is opened again at the new plan.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_change_is_allowed_once_collection_stopped() {
    let app = spawn_app().await;
    plans(&app).await;
    let sub = subscribe_with_saved_card(&app, "revoked", "max").await;
    let end = ts(&sub.period_end);
    app.gateway.set_tokens_revoked(true);
    app.clock.set(end - Duration::hours(48));
    assert!(app.run_job("renewals").await.contains("1 renewal orders created, 0 charges captured"));
    let old = app.subscription(&sub.id).await.renewal_order_id;
    let r = at_period_end(&app, &sub, "lite").await.unwrap();
    assert!(!r.replayed);
    assert!(app.run_job("renewals").await.contains("1 renewal orders created"));
    let mut db = app.billing_db().await;
    let cancelled =
        scalar(&mut db, &format!("SELECT count(*) AS n FROM orders WHERE id = '{old}' AND status = 'CANCELLED'")).await;
    assert_eq!(cancelled, 1);
    assert!(app.gateway.charges_of(&old).is_empty(), "the cancelled order was never charged");
    assert_eq!(live_renewals(&mut db, &sub.id, end).await, 1);
}

/// Changes fired while the renewal job opens and charges the next
/// periods' orders, for many subscribers with saved cards, in rounds: a
/// renewal order the job claimed is never cancelled under its charge. No
/// cancelled order was charged at the gateway, no payment became a
/// discrepancy, and each period has one live renewal order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn changes_racing_the_renewal_job_never_cancel_an_order_being_charged() {
    use futures::future::join_all;
    let app = spawn_app().await;
    plans(&app).await;
    let mut subs = Vec::new();
    for i in 0..8 {
        subs.push(subscribe_with_saved_card(&app, &format!("racer-{i}"), "max").await);
    }
    let end = ts(&subs[0].period_end);
    app.clock.set(end - Duration::hours(48));
    let changes = join_all(subs.iter().map(|s| at_period_end(&app, s, "lite")));
    let (results, _) = tokio::join!(changes, app.run_job("renewals"));
    app.run_job("renewals").await;
    let mut db = app.billing_db().await;
    for (sub, r) in subs.iter().zip(&results) {
        if let Err(e) = r {
            assert_eq!(precondition_type(e), "PLAN_CHANGE_NOT_ALLOWED", "{e:?}");
        }
        assert_eq!(live_renewals(&mut db, &sub.id, end).await, 1, "{}", sub.user_id);
        let cancelled: Vec<String> = diesel_async::RunQueryDsl::load::<OrderId>(
            diesel::sql_query(format!(
                "SELECT id FROM orders WHERE renews_subscription_id = '{}' AND status = 'CANCELLED'",
                sub.id
            )),
            &mut db,
        )
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.id)
        .collect();
        for id in cancelled {
            assert!(app.gateway.charges_of(&id).is_empty(), "{}: cancelled order {id} was charged", sub.user_id);
        }
    }
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM payment_discrepancies").await, 0);
}

#[derive(diesel::QueryableByName)]
struct OrderId {
    #[diesel(sql_type = diesel::sql_types::Text)]
    id: String,
}
