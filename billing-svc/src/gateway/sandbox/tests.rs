use super::*;
use crate::gateway::{PaymentStatus, RefundStatus};

fn sandbox() -> Sandbox {
    Sandbox::new(GatewayConfig {
        key_id: "k".into(),
        key_secret: "s3cret".into(),
        webhook_secret: "wh".into(),
        ..Default::default()
    })
}

fn card() -> SavedMethod {
    SavedMethod::new("cust_1".into(), "token_1".into())
}

#[tokio::test]
async fn refunds_are_processed() {
    let r = sandbox().refund("pay_1", 500, "refund-key-1").await.unwrap();
    assert!(r.id.starts_with("rfnd_"));
    assert_eq!((r.status, r.amount_minor), (RefundStatus::Processed, 500));
    assert!(matches!(sandbox().refund("pay_1", 0, "refund-key-2").await, Err(GatewayError::Refused { .. })));
}

#[tokio::test]
async fn refunds_made_are_found_by_key_even_when_the_answer_was_lost() {
    let g = sandbox();
    g.set_refunds(SandboxRefunds::LoseAnswer);
    assert!(matches!(g.refund("pay_1", 500, "k1").await, Err(GatewayError::Unavailable { .. })));
    let found = g.find_refund("pay_1", "k1").await.unwrap().unwrap();
    assert_eq!((found.status, found.amount_minor), (RefundStatus::Processed, 500));
    assert_eq!(g.find_refund("pay_1", "k2").await.unwrap(), None);
    assert_eq!(g.find_refund("pay_2", "k1").await.unwrap(), None);
    g.set_refunds(SandboxRefunds::InProgress);
    assert!(matches!(g.refund("pay_1", 500, "k3").await, Err(GatewayError::Unavailable { retry_after: Some(_), .. })));
    assert_eq!((g.refunds_made("pay_1").len(), g.refund_calls()), (1, 2));
}

#[tokio::test]
async fn charges_capture_unless_told_to_fail() {
    let p = sandbox().charge_saved_method(&card(), 49_900, "INR", "order_9", "rcpt").await.unwrap();
    assert!(p.id.starts_with("pay_"));
    assert_eq!(p.status, PaymentStatus::Captured);
    assert_eq!((p.amount_minor, p.currency.as_str(), p.order_id.as_deref()), (49_900, "INR", Some("order_9")));

    let failing = Sandbox::new(GatewayConfig { sandbox_fail_charges: true, ..sandbox().config });
    let flipped = sandbox();
    flipped.clone().set_fail_charges(true);
    assert!(flipped.charge_saved_method(&card(), 1, "INR", "order_9", "rcpt").await.is_err(), "clones share the switch");
    match failing.charge_saved_method(&card(), 49_900, "INR", "order_9", "rcpt").await {
        Err(GatewayError::Refused { code, .. }) => assert_eq!(code, "BAD_REQUEST_ERROR"),
        other => panic!("expected a declined charge, got {other:?}"),
    }
}

#[test]
fn payment_signature_binds_order_and_payment() {
    let g = sandbox();
    let sig = g.sign_payment("order_1", "pay_1");
    assert!(g.payment_signature_valid("order_1", "pay_1", &sig));
    assert!(g.payment_signature_valid("order_1", "pay_1", &sig.to_uppercase()));
    assert!(!g.payment_signature_valid("order_2", "pay_1", &sig));
    assert!(!g.payment_signature_valid("order_1", "pay_2", &sig));
    assert!(!g.payment_signature_valid("order_1", "pay_1", "zz"));
    assert!(!g.payment_signature_valid("order_1", "pay_1", ""));
}

#[test]
fn webhook_signature_covers_raw_bytes() {
    let g = sandbox();
    let body = Sandbox::captured_event_body("order_1", "pay_1", 100, "INR");
    let sig = g.sign_webhook(&body);
    assert!(g.webhook_signature_valid(&body, &sig));
    let mut tampered = body.clone();
    tampered.push(b' ');
    assert!(!g.webhook_signature_valid(&tampered, &sig));
}
