//! The subscription lifecycle (docs/design.md, "Subscription lifecycle"):
//! prepaid periods, renewal orders, automatic charges of a saved payment
//! method with retries, PAST_DUE and expiry. Time moves by the injected
//! clock; the jobs run by hand. Cancellation is in `cancellation`, refunds
//! in `refunds`.
use chrono::{DateTime, Duration, Months, Utc};
use proto::{billing::v1 as bpb, checkout::v1 as cpb};
use tests::{
    TestApp,
    helpers::{assert_ledger_matches_balances, exec, scalar, wait_for_waiters},
    spawn_app,
};
use tonic::Code;

use crate::hardening_billing::precondition_type;

pub(crate) fn ts(t: &Option<prost_types::Timestamp>) -> DateTime<Utc> {
    let t = (*t).unwrap_or_default();
    DateTime::from_timestamp(t.seconds, 0).unwrap()
}

/// Buys `plan` through a payment that also saves a card for renewals (a
/// signed `payment.captured` webhook carrying customer and token ids).
pub async fn subscribe_with_saved_card(app: &TestApp, user: &str, plan: &str) -> bpb::Subscription {
    let order = app.order(user, plan).await;
    let (payment_id, _) = app.pay(&order.id);
    let body = billing_svc::gateway::Sandbox::captured_event_body_saving(
        &order.id,
        &payment_id,
        order.amount_minor,
        &order.currency,
        Some(("cust_test", &format!("token_{user}"))),
    );
    let hook = bpb::HandleGatewayWebhookRequest {
        signature: app.gateway.sign_webhook(&body),
        body,
        event_id: format!("evt-{payment_id}"),
    };
    let r = app.billing.clone().handle_gateway_webhook(hook).await.unwrap().into_inner();
    assert_eq!(r.outcome, "PROCESSED");
    let sub = app.subscription(&r.subscription_id).await;
    assert!(sub.has_saved_payment_method);
    sub
}

pub(crate) async fn usage(app: &TestApp, user: &str) -> bpb::Usage {
    let r = app.billing.clone().get_usage(bpb::GetUsageRequest { user_id: user.into() }).await.unwrap();
    r.into_inner().usage.unwrap()
}

pub(crate) async fn spend(app: &TestApp, user: &str, units: i64) -> bpb::DeductResponse {
    let us = app.start_usage(user, bpb::UsageKind::Text).await.unwrap();
    let r = app
        .billing
        .clone()
        .deduct(bpb::DeductRequest { usage_session_id: us.id.clone(), deduction_id: format!("spend-{units}"), units })
        .await
        .unwrap();
    // Ended at once: no minutes count against later starts.
    app.end_usage(&us.id, 0).await.unwrap();
    r.into_inner()
}

/// docs/design.md, Invariants 20: a paid user whose period ends unpaid gets no new credits;
/// after the grace period the subscription is EXPIRED, its renewal order
/// cancelled (a late payment of it is a discrepancy), and the user is on the
/// free plan.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unpaid_period_end_grants_nothing_then_expires_to_the_free_plan() {
    let app = spawn_app().await;
    let sub = app.subscribe("lapsed", "basic-monthly").await;
    let end = ts(&sub.period_end);
    spend(&app, "lapsed", 10).await;
    app.clock.set(end - Duration::hours(48));
    assert!(app.run_job("renewals").await.contains("1 renewal orders created"));
    let renewal = app.subscription(&sub.id).await.renewal_order_id;
    assert!(!renewal.is_empty());

    app.clock.set(end - Duration::minutes(10));
    let running = app.start_usage("lapsed", bpb::UsageKind::Text).await.unwrap();
    app.clock.set(end + Duration::minutes(5));
    let read = app.subscription(&sub.id).await;
    assert_eq!(
        (read.status, read.credits_remaining),
        (bpb::SubscriptionStatus::PastDue as i32, 0),
        "reads show it before the job"
    );
    assert!(app.run_job("rollover").await.contains(": 1 subscriptions"));
    let past_due = app.subscription(&sub.id).await;
    assert_eq!(past_due.status, bpb::SubscriptionStatus::PastDue as i32);
    assert_eq!((past_due.credits_remaining, ts(&past_due.period_end)), (0, end), "no new credits, no new period");
    // A session that was running draws nothing: its units are unpaid.
    let d = app
        .billing
        .clone()
        .deduct(bpb::DeductRequest { usage_session_id: running.id.clone(), deduction_id: "past-due".into(), units: 3 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((d.units_charged, d.units_unpaid), (0, 3), "nothing to spend while past due");
    app.end_usage(&running.id, 0).await.unwrap();
    assert_eq!(usage(&app, "lapsed").await.credits_remaining, 0);
    let e = app.start_usage("lapsed", bpb::UsageKind::Text).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "no new sessions without credits: {e:?}");

    // Still unpaid at the end of the grace period (72 hours).
    app.clock.set(end + Duration::hours(71));
    assert!(app.run_job("renewals").await.contains("0 expired"));
    app.clock.set(end + Duration::hours(72));
    assert!(app.run_job("renewals").await.contains("1 expired"));
    let expired = app.subscription(&sub.id).await;
    assert_eq!(expired.status, bpb::SubscriptionStatus::Expired as i32);
    assert!(expired.ended_at.is_some());
    let order = app.billing.clone().get_order(bpb::GetOrderRequest { id: renewal.clone() }).await.unwrap().into_inner();
    assert_eq!(order.order.unwrap().status, bpb::OrderStatus::Cancelled as i32);
    let u = usage(&app, "lapsed").await;
    assert_eq!((u.plan_id.as_str(), u.credits_remaining), ("free", 30), "back on the free plan");
    app.start_usage("lapsed", bpb::UsageKind::Text).await.unwrap();

    // The renewal paid now buys nothing: an open discrepancy to refund.
    let (p, sig) = app.pay(&renewal);
    let e = app
        .billing
        .clone()
        .verify_payment(bpb::VerifyPaymentRequest { order_id: renewal, payment_id: p, signature: sig })
        .await
        .unwrap_err();
    assert_eq!((e.code(), precondition_type(&e).as_str()), (Code::FailedPrecondition, "ORDER_CANCELLED"));
    let mut db = app.billing_db().await;
    assert_eq!(
        scalar(&mut db, "SELECT count(*) AS n FROM subscriptions WHERE user_id = 'lapsed' AND status = 'ACTIVE'").await,
        1
    );
    assert_ledger_matches_balances(&mut db).await;
}

/// Paid during the grace period, through a renewal checkout (checkout's
/// CreateSession for the plan the user has): ACTIVE again, the new period
/// anchored at the old period end, with the plan's credits.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn paid_in_grace_through_a_renewal_checkout_reactivates_at_the_old_period_end() {
    let app = spawn_app().await;
    let sub = app.subscribe("late-payer", "basic-monthly").await;
    let end = ts(&sub.period_end);
    app.clock.set(end - Duration::hours(72));
    app.run_job("renewals").await;
    app.clock.set(end + Duration::hours(30));
    app.run_job("rollover").await;
    assert_eq!(app.subscription(&sub.id).await.status, bpb::SubscriptionStatus::PastDue as i32);
    let renewal = app.subscription(&sub.id).await.renewal_order_id;

    let session = app.create_session("late-payer", "basic-monthly").await;
    assert_eq!(session.order_id, renewal, "the renewal checkout pays the renewal order");
    let (p, sig) = app.pay(&session.order_id);
    let done = app.complete(&session.id, &p, &sig).await.unwrap().session.unwrap();
    assert_eq!(done.status, cpb::SessionStatus::Completed as i32);
    assert_eq!(done.subscription_id, sub.id, "the same subscription, renewed");

    let renewed = app.subscription(&sub.id).await;
    assert_eq!(renewed.status, bpb::SubscriptionStatus::Active as i32);
    assert_eq!(ts(&renewed.period_start), end, "anchored at the old period end, not at the payment");
    assert_eq!(ts(&renewed.period_end), ts(&sub.period_start) + Months::new(2));
    assert_eq!((renewed.credits_granted, renewed.credits_remaining), (300, 300));
    let mut db = app.billing_db().await;
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM subscriptions WHERE user_id = 'late-payer'").await, 1);
    assert_ledger_matches_balances(&mut db).await;
}

/// A saved card is charged for the renewal; the next period opens exactly
/// at the old period end with fresh credits, the leftovers expiring through
/// the ledger.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_recurring_charge_opens_the_next_period_with_fresh_credits() {
    let app = spawn_app().await;
    let sub = subscribe_with_saved_card(&app, "card", "basic-monthly").await;
    let end = ts(&sub.period_end);
    spend(&app, "card", 40).await;
    app.clock.set(end - Duration::hours(72));
    let out = app.run_job("renewals").await;
    assert!(out.contains("1 renewal orders created, 1 charges captured"), "{out}");
    let paid_early = app.subscription(&sub.id).await;
    assert_eq!((paid_early.credits_remaining, ts(&paid_early.period_end)), (260, end), "the current period runs on");
    assert!(paid_early.renewal_order_id.is_empty() && paid_early.next_charge_at.is_none(), "nothing left to collect");

    app.clock.set(end);
    app.run_job("rollover").await;
    let next = app.subscription(&sub.id).await;
    assert_eq!((ts(&next.period_start), next.credits_granted, next.credits_remaining), (end, 300, 300));
    assert!(app.run_job("renewals").await.contains("0 renewal orders created, 0 charges captured"), "next one not due yet");
    let mut db = app.billing_db().await;
    assert_eq!(
        scalar(&mut db, &format!("SELECT credits AS n FROM ledger WHERE kind = 'EXPIRED' AND subscription_id = '{}'", sub.id))
            .await,
        260
    );
    assert_ledger_matches_balances(&mut db).await;
}

/// Declined twice, captured on the third attempt (24 hours apart): one
/// charge captured, one period opened.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_charge_declined_twice_then_captured_opens_one_period() {
    let app = spawn_app().await;
    let sub = subscribe_with_saved_card(&app, "flaky", "basic-monthly").await;
    let end = ts(&sub.period_end);
    app.gateway.set_fail_charges(true);
    app.clock.set(end - Duration::hours(72));
    assert!(app.run_job("renewals").await.contains("0 charges captured, 1 not captured"));
    let waiting = app.subscription(&sub.id).await;
    assert_eq!(ts(&waiting.next_charge_at), end - Duration::hours(48), "retried 24 hours later");
    app.clock.set(end - Duration::hours(60));
    assert!(app.run_job("renewals").await.contains("0 charges captured, 0 not captured"), "not before the retry is due");
    app.clock.set(end - Duration::hours(48));
    assert!(app.run_job("renewals").await.contains("1 not captured"));
    app.gateway.set_fail_charges(false);
    app.clock.set(end - Duration::hours(24));
    assert!(app.run_job("renewals").await.contains("1 charges captured"));
    for _ in 0..2 {
        assert!(app.run_job("renewals").await.contains("0 charges captured, 0 not captured"));
    }
    app.clock.set(end + Duration::hours(1));
    app.run_job("rollover").await;
    let next = app.subscription(&sub.id).await;
    assert_eq!((next.status, ts(&next.period_start), next.credits_remaining), (bpb::SubscriptionStatus::Active as i32, end, 300));
    let mut db = app.billing_db().await;
    let renewal = format!("renews_subscription_id = '{}'", sub.id);
    assert_eq!(scalar(&mut db, &format!("SELECT count(*) AS n FROM orders WHERE {renewal}")).await, 1);
    assert_eq!(scalar(&mut db, &format!("SELECT count(*) AS n FROM orders WHERE {renewal} AND status = 'PAID'")).await, 1);
    assert_eq!(scalar(&mut db, &format!("SELECT charge_attempts::bigint AS n FROM orders WHERE {renewal}")).await, 3);
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM payment_discrepancies").await, 0);
    assert_ledger_matches_balances(&mut db).await;
}

/// docs/design.md, Invariants 20: the renewal job on four replicas at once (each its own
/// pool) creates one renewal order per (subscription, period) and charges
/// each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_renewal_job_on_four_replicas_creates_one_order_per_period() {
    let app = spawn_app().await;
    let mut end = Utc::now();
    for i in 0..8 {
        let sub = if i % 2 == 0 {
            subscribe_with_saved_card(&app, &format!("replica-{i}"), "basic-monthly").await
        } else {
            app.subscribe(&format!("replica-{i}"), "pro-monthly").await
        };
        end = ts(&sub.period_end);
    }
    let replicas: Vec<billing_svc::App> = (0..4)
        .map(|_| {
            billing_svc::App::with_gateway(
                app.billing_app.config.as_ref().clone(),
                &app.billing_db_url,
                app.clock.clone(),
                app.billing_app.gateway.clone(),
            )
        })
        .collect();
    app.clock.set(end - Duration::hours(70));
    for _ in 0..2 {
        let runs = futures::future::join_all(replicas.iter().map(|r| billing_svc::jobs::run_once(r, "renewals"))).await;
        for r in runs {
            r.unwrap();
        }
    }
    let mut db = app.billing_db().await;
    assert_eq!(
        scalar(&mut db, "SELECT count(*) AS n FROM orders WHERE renews_subscription_id IS NOT NULL").await,
        8,
        "one renewal order per subscription"
    );
    assert_eq!(
        scalar(
            &mut db,
            "SELECT count(DISTINCT renews_subscription_id) AS n FROM orders WHERE renews_subscription_id IS NOT NULL"
        )
        .await,
        8
    );
    assert_eq!(
        scalar(&mut db, "SELECT count(*) AS n FROM orders WHERE renews_subscription_id IS NOT NULL AND status = 'PAID'").await,
        4,
        "each saved card charged once"
    );
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM payment_discrepancies").await, 0, "no second payment");
    assert_eq!(
        scalar(
            &mut db,
            "SELECT count(*) AS n FROM orders o JOIN plans p ON p.id = o.plan_id \
              WHERE o.renews_subscription_id IS NOT NULL AND o.amount_minor <> p.price_minor"
        )
        .await,
        0,
        "at the plan's price"
    );
}

/// A charge captured at the gateway whose capture billing did not record
/// (here: remembered as pending, as when the capture transaction failed) is
/// captured by the next attempt, never charged again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_charge_whose_capture_was_lost_is_captured_not_charged_again() {
    let app = spawn_app().await;
    let sub = subscribe_with_saved_card(&app, "lost-capture", "basic-monthly").await;
    let end = ts(&sub.period_end);
    app.gateway.set_fail_charges(true);
    app.clock.set(end - Duration::hours(72));
    app.run_job("renewals").await;
    let mut db = app.billing_db().await;
    let renewal = format!("renews_subscription_id = '{}'", sub.id);
    tests::helpers::exec(&mut db, &format!("UPDATE orders SET pending_payment_id = 'pay_lost1' WHERE {renewal}")).await;
    app.clock.set(end - Duration::hours(48));
    // Charges would be declined: a capture here can only be the lost one.
    assert!(app.run_job("renewals").await.contains("1 charges captured"));
    assert_eq!(
        scalar(
            &mut db,
            &format!("SELECT count(*) AS n FROM orders WHERE {renewal} AND status = 'PAID' AND payment_id = 'pay_lost1'")
        )
        .await,
        1
    );
    assert_ledger_matches_balances(&mut db).await;
}

async fn reconcile_finds_nothing(app: &TestApp) {
    let report =
        app.billing_admin.clone().run_reconciliation(bpb::RunReconciliationRequest { fix: false }).await.unwrap().into_inner();
    assert!(report.findings.is_empty(), "{:?}", report.findings);
}

/// docs/design.md, Invariants 24: a recurring charge whose answer was lost
/// after it reached the gateway (the sandbox makes the charge, then the call
/// fails as after a timeout) is found by its order before a second attempt:
/// one payment at the gateway, captured once, one period opened.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_charge_whose_answer_was_lost_is_found_by_its_order_not_made_twice() {
    let app = spawn_app().await;
    let sub = subscribe_with_saved_card(&app, "lost-answer", "basic-monthly").await;
    let end = ts(&sub.period_end);
    app.gateway.set_lose_charge_answers(true);
    app.clock.set(end - Duration::hours(72));
    let out = app.run_job("renewals").await;
    assert!(out.contains("1 renewal orders created, 0 charges captured, 1 not captured"), "{out}");
    let renewal = app.subscription(&sub.id).await.renewal_order_id;
    assert_eq!(app.gateway.charges_of(&renewal).len(), 1, "the charge was made at the gateway");

    app.gateway.set_lose_charge_answers(false);
    app.clock.set(end - Duration::hours(48));
    let out = app.run_job("renewals").await;
    assert!(out.contains("1 charges captured"), "{out}");
    let charges = app.gateway.charges_of(&renewal);
    assert_eq!(charges.len(), 1, "found by its order, never charged a second time: {charges:?}");
    let order = app.billing.clone().get_order(bpb::GetOrderRequest { id: renewal.clone() }).await.unwrap().into_inner();
    let order = order.order.unwrap();
    assert_eq!((order.status, order.payment_id.as_str()), (bpb::OrderStatus::Paid as i32, charges[0].id.as_str()));
    assert!(app.run_job("renewals").await.contains("0 charges captured, 0 not captured"));
    assert_eq!(app.gateway.charges_of(&renewal).len(), 1);

    app.clock.set(end + Duration::hours(1));
    app.run_job("rollover").await;
    let next = app.subscription(&sub.id).await;
    assert_eq!((next.status, ts(&next.period_start), next.credits_remaining), (bpb::SubscriptionStatus::Active as i32, end, 300));
    reconcile_finds_nothing(&app).await;
    let mut db = app.billing_db().await;
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM payment_discrepancies").await, 0);
    assert_ledger_matches_balances(&mut db).await;
}

/// docs/design.md, Invariants 24: one failed payment, then a charge whose
/// answer was lost. Attempt 1's payment fails at the bank (remembered as
/// pending); attempt 2 finds it failed and charges again, and that charge is
/// made but its answer lost; attempt 3 finds the order's payments before
/// charging, not only the failed one it remembers: one successful charge,
/// one period.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_payment_then_a_lost_answer_is_never_charged_twice() {
    let app = spawn_app().await;
    let sub = subscribe_with_saved_card(&app, "fail-then-lost", "basic-monthly").await;
    let end = ts(&sub.period_end);
    app.gateway.set_charges_fail_later(true);
    app.clock.set(end - Duration::hours(72));
    let out = app.run_job("renewals").await;
    assert!(out.contains("1 renewal orders created, 0 charges captured, 1 not captured"), "{out}");
    let renewal = app.subscription(&sub.id).await.renewal_order_id;
    let failed = app.gateway.charges_of(&renewal);
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].status, billing_svc::gateway::PaymentStatus::Failed);

    app.gateway.set_charges_fail_later(false);
    app.gateway.set_lose_charge_answers(true);
    app.clock.set(end - Duration::hours(48));
    assert!(app.run_job("renewals").await.contains("0 charges captured, 1 not captured"));
    assert_eq!(app.gateway.charges_of(&renewal).len(), 2, "the second charge was made at the gateway");

    app.gateway.set_lose_charge_answers(false);
    app.clock.set(end - Duration::hours(24));
    let out = app.run_job("renewals").await;
    assert!(out.contains("1 charges captured"), "{out}");
    assert!(app.run_job("renewals").await.contains("0 charges captured, 0 not captured"));
    let charges = app.gateway.charges_of(&renewal);
    let captured: Vec<_> = charges.iter().filter(|p| p.status == billing_svc::gateway::PaymentStatus::Captured).collect();
    assert_eq!(captured.len(), 1, "exactly one successful charge: {charges:?}");
    assert_eq!(charges.len(), 2, "no third charge");
    let order = app.billing.clone().get_order(bpb::GetOrderRequest { id: renewal.clone() }).await.unwrap().into_inner();
    let order = order.order.unwrap();
    assert_eq!((order.status, order.payment_id.as_str()), (bpb::OrderStatus::Paid as i32, captured[0].id.as_str()));

    app.clock.set(end + Duration::hours(1));
    app.run_job("rollover").await;
    let next = app.subscription(&sub.id).await;
    assert_eq!((next.status, ts(&next.period_start), next.credits_remaining), (bpb::SubscriptionStatus::Active as i32, end, 300));
    reconcile_finds_nothing(&app).await;
    let mut db = app.billing_db().await;
    assert_eq!(
        scalar(&mut db, &format!("SELECT count(*) AS n FROM orders WHERE renews_subscription_id = '{}'", sub.id)).await,
        1
    );
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM payment_discrepancies").await, 0);
    assert_ledger_matches_balances(&mut db).await;
}

/// A token revoked at the gateway (the charge is refused as unusable) stops
/// automatic charging at once: the saved method is forgotten, the renewal is
/// never charged again, and the customer pays it through a renewal checkout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revoked_token_stops_automatic_charging_and_the_renewal_is_paid_by_checkout() {
    let app = spawn_app().await;
    let sub = subscribe_with_saved_card(&app, "revoked", "basic-monthly").await;
    let end = ts(&sub.period_end);
    app.gateway.set_tokens_revoked(true);
    app.clock.set(end - Duration::hours(72));
    assert!(app.run_job("renewals").await.contains("0 charges captured, 1 not captured"));
    let stopped = app.subscription(&sub.id).await;
    assert!(!stopped.has_saved_payment_method, "the revoked method is forgotten");
    assert!(stopped.next_charge_at.is_none(), "no further automatic attempt");
    assert!(!stopped.renewal_order_id.is_empty(), "the renewal stays payable");
    app.gateway.set_tokens_revoked(false);
    for hours in [48, 24, 0] {
        app.clock.set(end - Duration::hours(hours));
        assert!(app.run_job("renewals").await.contains("0 charges captured, 0 not captured"), "never retried");
    }
    assert!(app.gateway.charges_of(&stopped.renewal_order_id).is_empty());
    app.run_job("rollover").await;
    assert_eq!(app.subscription(&sub.id).await.status, bpb::SubscriptionStatus::PastDue as i32);

    let session = app.create_session("revoked", "basic-monthly").await;
    assert_eq!(session.order_id, stopped.renewal_order_id, "the renewal checkout pays the renewal order");
    let (p, sig) = app.pay(&session.order_id);
    app.complete(&session.id, &p, &sig).await.unwrap();
    let renewed = app.subscription(&sub.id).await;
    assert_eq!((renewed.status, ts(&renewed.period_start)), (bpb::SubscriptionStatus::Active as i32, end));
    reconcile_finds_nothing(&app).await;
    let mut db = app.billing_db().await;
    assert_ledger_matches_balances(&mut db).await;
}

/// docs/design.md, Invariants 29: the gateway's `token.cancelled` (or
/// rejected, paused) webhook forgets the saved method on every subscription
/// holding that token before a renewal tries it: no automatic charge is
/// made, and the renewal is paid through checkout. Idempotent: another
/// delivery finds no holder (IGNORED); `token.confirmed` changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_token_cancelled_webhook_stops_automatic_charging() {
    let app = spawn_app().await;
    let sub = subscribe_with_saved_card(&app, "token-hook", "basic-monthly").await;
    let kept = subscribe_with_saved_card(&app, "token-kept", "basic-monthly").await;
    let end = ts(&sub.period_end);
    let hook = |event: &str, event_id: &str| {
        let body = billing_svc::gateway::Sandbox::token_event_body(event, "cust_test", "token_token-hook");
        bpb::HandleGatewayWebhookRequest { signature: app.gateway.sign_webhook(&body), body, event_id: event_id.into() }
    };
    let mut b = app.billing.clone();
    let confirmed = b.handle_gateway_webhook(hook("token.confirmed", "evt_tok_0")).await.unwrap().into_inner();
    assert_eq!(confirmed.outcome, "IGNORED");
    assert!(app.subscription(&sub.id).await.has_saved_payment_method);
    let cancelled = b.handle_gateway_webhook(hook("token.cancelled", "evt_tok_1")).await.unwrap().into_inner();
    assert_eq!(cancelled.outcome, "PROCESSED");
    let again = b.handle_gateway_webhook(hook("token.cancelled", "evt_tok_1")).await.unwrap().into_inner();
    assert!(again.duplicate);
    let paused = b.handle_gateway_webhook(hook("token.paused", "evt_tok_2")).await.unwrap().into_inner();
    assert_eq!(paused.outcome, "IGNORED", "nothing holds it any more");
    assert!(!app.subscription(&sub.id).await.has_saved_payment_method);
    assert!(app.subscription(&kept.id).await.has_saved_payment_method, "another token is untouched");

    app.clock.set(end - Duration::hours(72));
    let out = app.run_job("renewals").await;
    assert!(out.contains("1 charges captured, 0 not captured"), "only the kept card is charged: {out}");
    let stopped = app.subscription(&sub.id).await;
    assert!(stopped.next_charge_at.is_none() && !stopped.renewal_order_id.is_empty(), "{stopped:?}");
    assert!(app.gateway.charges_of(&stopped.renewal_order_id).is_empty());

    let session = app.create_session("token-hook", "basic-monthly").await;
    assert_eq!(session.order_id, stopped.renewal_order_id, "the renewal checkout pays the renewal order");
    let (p, sig) = app.pay(&session.order_id);
    app.complete(&session.id, &p, &sig).await.unwrap();
    app.clock.set(end + Duration::hours(1));
    app.run_job("rollover").await;
    let renewed = app.subscription(&sub.id).await;
    assert_eq!((renewed.status, ts(&renewed.period_start)), (bpb::SubscriptionStatus::Active as i32, end));
    reconcile_finds_nothing(&app).await;
    let mut db = app.billing_db().await;
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM webhook_events WHERE event_type LIKE 'token.%'").await, 3);
    assert_ledger_matches_balances(&mut db).await;
}

/// docs/design.md, Invariants 29: a token webhook forgetting a saved method
/// takes the locks in a renewal capture's order, open renewal orders first,
/// then the subscriptions. While a capture holds the renewal order's row
/// (here a transaction standing in for it), the webhook waits for that row
/// without holding the subscription, so the capture can still lock the
/// subscription: no deadlock between the two.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_token_webhook_locks_renewal_orders_before_subscriptions() {
    let app = spawn_app().await;
    let sub = subscribe_with_saved_card(&app, "token-race", "basic-monthly").await;
    app.gateway.set_fail_charges(true);
    app.clock.set(ts(&sub.period_end) - Duration::hours(72));
    app.run_job("renewals").await;
    let mut db = app.billing_db().await;
    let collected = format!(
        "SELECT count(*) AS n FROM orders WHERE renews_subscription_id = '{}' AND status = 'CREATED' AND next_charge_at IS NOT NULL",
        sub.id
    );
    assert_eq!(scalar(&mut db, &collected).await, 1, "an open renewal order, still collected automatically");

    let mut capture = app.billing_db().await;
    exec(&mut capture, "BEGIN").await;
    let held = format!("SELECT id FROM orders WHERE renews_subscription_id = '{}' AND status = 'CREATED' FOR UPDATE", sub.id);
    assert_eq!(exec(&mut capture, &held).await, 1);
    let body = billing_svc::gateway::Sandbox::token_event_body("token.cancelled", "cust_test", "token_token-race");
    let req =
        bpb::HandleGatewayWebhookRequest { signature: app.gateway.sign_webhook(&body), body, event_id: "evt_tok_race".into() };
    let mut b = app.billing.clone();
    let hook = tokio::spawn(async move { b.handle_gateway_webhook(req).await });
    assert!(wait_for_waiters(&mut db, 1, std::time::Duration::from_secs(10)).await, "the webhook waits for the order row");
    let sub_lock = format!("SELECT id FROM subscriptions WHERE id = '{}' FOR UPDATE NOWAIT", sub.id);
    let took = diesel_async::RunQueryDsl::execute(diesel::sql_query(sub_lock), &mut capture).await;
    exec(&mut capture, if took.is_ok() { "COMMIT" } else { "ROLLBACK" }).await;
    assert!(took.is_ok(), "the webhook held the subscription while waiting for its renewal order: {took:?}");

    assert_eq!(hook.await.unwrap().unwrap().into_inner().outcome, "PROCESSED");
    assert_eq!(scalar(&mut db, &collected).await, 0, "no longer collected automatically");
    assert!(!app.subscription(&sub.id).await.has_saved_payment_method);
    reconcile_finds_nothing(&app).await;
    assert_ledger_matches_balances(&mut db).await;
}
