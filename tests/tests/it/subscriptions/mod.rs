//! billing.v1 subscriptions and their lifecycle (docs/design.md,
//! "Subscription lifecycle"): replacement and period rollover, prepaid
//! periods, renewal orders, automatic charges of a saved payment method
//! with retries, PAST_DUE and expiry, cancellation and reopening. Time moves
//! by the injected clock; the jobs run by hand. Refunds are in `refunds`.
mod cancellation;
mod cancellation_policy;
mod expiry;
mod renewal_charges;
mod reopening;
mod replacement_and_rollover;
mod saved_methods;

use chrono::{DateTime, Duration, Months, Utc};
use proto::{billing::v1 as bpb, checkout::v1 as cpb};
use tests::{
    TestApp,
    helpers::{assert_ledger_matches_balances, exec, scalar, wait_for_waiters},
    spawn_app,
};
use tonic::Code;

use crate::support::precondition_type;

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

async fn reconcile_finds_nothing(app: &TestApp) {
    let report =
        app.billing_admin.clone().run_reconciliation(bpb::RunReconciliationRequest { fix: false }).await.unwrap().into_inner();
    assert!(report.findings.is_empty(), "{:?}", report.findings);
}
