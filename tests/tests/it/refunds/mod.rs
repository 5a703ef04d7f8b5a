//! A refund whose outcome is unknown is never recorded FAILED nor made twice
//! at the gateway (docs/design.md, Invariants 22), and a payment discrepancy
//! is REFUNDED only once its refund is PROCESSED (Invariants 23). Gateway
//! behaviour through the sandbox's switches; the sandbox, like a gateway
//! without idempotency keys, makes a new refund for every call it accepts,
//! so only billing's one-caller claim and look-up keep refunds single.
//!
//! RefundPayment's own rules (the sum of refunds, errors, webhooks settling
//! pending refunds) are in `refund_payment`; `refund_all` against the
//! zero amount that used to mean everything.
mod discrepancies;
mod one_caller;
mod refund_all;
mod refund_payment;
mod webhooks;

use std::time::Duration;

use billing_svc::gateway::{RefundStatus, Sandbox, SandboxRefunds};
use proto::billing::v1 as bpb;
use tests::{
    TestApp,
    helpers::{assert_ledger_matches_balances, scalar},
    spawn_app,
};
use tonic::{Code, Status};

/// A RefundPayment request; `amount_minor` 0 asks for all that is left
/// (refund_all), any other amount for exactly that.
pub(crate) fn request(order_id: &str, amount_minor: i64, refund_id: &str) -> bpb::RefundPaymentRequest {
    bpb::RefundPaymentRequest {
        order_id: order_id.into(),
        amount_minor,
        reason: "customer asked".into(),
        refund_id: refund_id.into(),
        refund_all: amount_minor == 0,
    }
}

/// RefundPayment with the admin token (operators refund, services cannot).
pub(crate) async fn refund(app: &TestApp, r: bpb::RefundPaymentRequest) -> Result<bpb::RefundPaymentResponse, Status> {
    app.billing_admin.clone().refund_payment(r).await.map(|r| r.into_inner())
}

async fn order(app: &TestApp, id: &str) -> bpb::Order {
    app.billing.clone().get_order(bpb::GetOrderRequest { id: id.into() }).await.unwrap().into_inner().order.unwrap()
}

async fn reconcile(app: &TestApp, fix: bool) -> bpb::RunReconciliationResponse {
    app.billing_admin.clone().run_reconciliation(bpb::RunReconciliationRequest { fix }).await.unwrap().into_inner()
}

/// Reconcile reports nothing (money and subscriptions agree) and the ledger
/// explains every balance.
async fn assert_books_clean(app: &TestApp) {
    let r = reconcile(app, false).await;
    assert!(r.findings.is_empty(), "{:?}", r.findings);
    assert_ledger_matches_balances(&mut app.billing_db().await).await;
}

async fn refund_row(app: &TestApp, id: &str) -> (String, String) {
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Text)]
        status: String,
        #[diesel(sql_type = diesel::sql_types::Text)]
        gateway_refund_id: String,
    }
    use diesel_async::RunQueryDsl;
    let r: Row =
        diesel::sql_query("SELECT status, coalesce(gateway_refund_id, '') AS gateway_refund_id FROM refunds WHERE id = $1")
            .bind::<diesel::sql_types::Text, _>(id)
            .get_result(&mut app.billing_db().await)
            .await
            .unwrap();
    (r.status, r.gateway_refund_id)
}

async fn send_refund_webhook(
    app: &TestApp,
    status: RefundStatus,
    gateway_id: &str,
    payment_id: &str,
    amount: i64,
    key: &str,
) -> String {
    let body = Sandbox::refund_event_body(status, gateway_id, payment_id, amount, key);
    let hook = bpb::HandleGatewayWebhookRequest {
        signature: app.gateway.sign_webhook(&body),
        body,
        event_id: format!("evt-{}", uuid::Uuid::new_v4().simple()),
    };
    app.billing.clone().handle_gateway_webhook(hook).await.unwrap().into_inner().outcome
}

/// Polls (real time, bounded) until `done` holds: the test waits for a call
/// to arrive somewhere, it does not move time.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
