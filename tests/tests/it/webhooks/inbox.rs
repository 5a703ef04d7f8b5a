//! The webhook inbox behind HandleGatewayWebhook: duplicates, unknown
//! events and discrepancies (docs/design.md, Invariants 8).
use proto::billing::v1 as bpb;
use tests::{helpers::scalar, spawn_app};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn webhook_duplicates_unknown_events_and_discrepancies() {
    let mut app = spawn_app().await;
    let order = app.order("hooks", "basic-monthly").await;
    let (p, _) = app.pay(&order.id);
    let first = app
        .billing
        .handle_gateway_webhook(app.captured_webhook(&order.id, &p, order.amount_minor, "INR", "e1"))
        .await
        .unwrap()
        .into_inner();
    assert!(!first.duplicate);
    let again = app
        .billing
        .handle_gateway_webhook(app.captured_webhook(&order.id, &p, order.amount_minor, "INR", "e1"))
        .await
        .unwrap()
        .into_inner();
    assert!(again.duplicate);
    assert_eq!(again.outcome, "PROCESSED");

    let body = br#"{"event":"refund.created","payload":{}}"#.to_vec();
    let unknown = bpb::HandleGatewayWebhookRequest { signature: app.gateway.sign_webhook(&body), body, event_id: "e2".into() };
    let r = app.billing.handle_gateway_webhook(unknown).await.unwrap().into_inner();
    assert_eq!((r.outcome.as_str(), r.event_type.as_str()), ("IGNORED", "refund.created"));

    // Amount or currency that disagree with the order: recorded, never a
    // subscription for the wrong plan.
    let other = app.order("hooks2", "pro-monthly").await;
    let (p2, _) = app.pay(&other.id);
    let r =
        app.billing.handle_gateway_webhook(app.captured_webhook(&other.id, &p2, 100, "INR", "e3")).await.unwrap().into_inner();
    assert_eq!(r.outcome, "DISCREPANCY");
    let r = app
        .billing
        .handle_gateway_webhook(app.captured_webhook(&other.id, &p2, other.amount_minor, "USD", "e4"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.outcome, "DISCREPANCY");
    let mut db = app.billing_db().await;
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM webhook_events").await, 4);
    assert_eq!(scalar(&mut db, &format!("SELECT count(*) AS n FROM subscriptions WHERE order_id = '{}'", other.id)).await, 0);
    assert_eq!(
        scalar(&mut db, &format!("SELECT count(*) AS n FROM orders WHERE id = '{}' AND status = 'CREATED'", other.id)).await,
        1
    );
}
