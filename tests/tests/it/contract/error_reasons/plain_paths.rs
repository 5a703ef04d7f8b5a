//! The plain paths, on one stack: requests, auth, checkout sessions,
//! orders and payments, subscriptions, refunds, usage and limits.
use std::time::Duration;

use billing_svc::gateway::{Sandbox, SandboxRefunds};
use proto::{billing::v1 as bpb, checkout::v1 as cpb, error::ErrorReason as R};
use tests::{
    TestApp,
    clients::{billing_client, checkout_client, with_key},
    helpers::exec,
    spawn_app,
};
use tonic::Status;
use tonic_types::StatusExt;

use super::Walk;

async fn verify(app: &TestApp, order_id: &str, payment_id: &str, signature: &str) -> Result<bpb::VerifyPaymentResponse, Status> {
    let r = bpb::VerifyPaymentRequest { order_id: order_id.into(), payment_id: payment_id.into(), signature: signature.into() };
    app.billing.clone().verify_payment(r).await.map(|r| r.into_inner())
}

/// RefundPayment; `amount` 0 refunds all that is left (refund_all).
async fn refund(app: &TestApp, order_id: &str, amount: i64, refund_id: &str) -> Result<bpb::RefundPaymentResponse, Status> {
    let r = bpb::RefundPaymentRequest {
        order_id: order_id.into(),
        amount_minor: amount,
        reason: "test".into(),
        refund_id: refund_id.into(),
        refund_all: amount == 0,
    };
    app.billing_admin.clone().refund_payment(r).await.map(|r| r.into_inner())
}

fn create_order(session: &str, user: &str, plan: &str) -> bpb::CreateOrderRequest {
    bpb::CreateOrderRequest { checkout_session_id: session.into(), user_id: user.into(), plan_id: plan.into() }
}

/// Requests, auth, checkout sessions and refunds, on one stack.
pub(super) async fn walk_the_plain_paths(w: &mut Walk) {
    let app = spawn_app().await;
    let mut b = app.billing.clone();
    let mut c = app.checkout.clone();

    // Requests.
    w.saw(R::InvalidField, "GetPlan(\"\")", b.get_plan(bpb::GetPlanRequest { id: String::new() }).await);
    let s = w.saw(R::InvalidField, "GetSession(nope)", c.get_session(cpb::GetSessionRequest { id: "nope".into() }).await);
    assert_eq!(Walk::metadata(&s, "field"), "id");
    assert!(s.get_error_details().bad_request().is_some(), "BadRequest is still there");
    let s = w.saw(R::ResourceNotFound, "GetPlan(gold)", b.get_plan(bpb::GetPlanRequest { id: "gold".into() }).await);
    assert_eq!((Walk::metadata(&s, "resource_type"), Walk::metadata(&s, "resource_name")), ("plan".into(), "gold".into()));
    assert!(s.get_error_details().resource_info().is_some(), "ResourceInfo is still there");

    // Auth.
    let mut anonymous = billing_client(&app.billing_addr.to_string(), "").unwrap();
    w.saw(R::TokenMissing, "ListPlans without a token", anonymous.list_plans(bpb::ListPlansRequest::default()).await);
    let mut wrong = checkout_client(&app.checkout_addr.to_string(), "not-a-token").unwrap();
    w.saw(R::TokenInvalid, "GetSession with an unknown token", wrong.get_session(cpb::GetSessionRequest::default()).await);
    let r = b.run_reconciliation(bpb::RunReconciliationRequest { fix: false }).await;
    w.saw(R::AdminRequired, "RunReconciliation with a service token", r);

    // Checkout sessions.
    let r = c
        .create_session(cpb::CreateSessionRequest { user_id: "free-rider".into(), plan_id: "free".into(), ..Default::default() })
        .await;
    let s = w.saw(R::PlanNotPurchasable, "CreateSession(free)", r);
    assert!(s.get_error_details().precondition_failure().is_some(), "PreconditionFailure is still there");
    let key = "walk-key";
    let first = cpb::CreateSessionRequest { user_id: "keyed".into(), plan_id: "basic-monthly".into(), ..Default::default() };
    c.create_session(with_key(first, key)).await.unwrap();
    let other = cpb::CreateSessionRequest { user_id: "keyed".into(), plan_id: "pro-monthly".into(), ..Default::default() };
    w.saw(R::IdempotencyKeyReused, "CreateSession, same key, other request", c.create_session(with_key(other, key)).await);

    let active = app.create_session("walker", "basic-monthly").await;
    let r = c.recover_session(cpb::RecoverSessionRequest { id: active.id.clone(), ..Default::default() }).await;
    w.saw(R::SessionActive, "RecoverSession(active)", r);
    let (payment_id, sig) = app.pay(&active.order_id);
    let (first_payment, first_sig) = app.pay(&active.order_id);
    app.complete(&active.id, &first_payment, &first_sig).await.unwrap();
    let r = app.complete(&active.id, &payment_id, &sig).await;
    w.saw(R::SessionCompleted, "CompleteSession with another payment", r);
    w.saw(R::SessionCompleted, "RenewSession(completed)", app.renew(&active.id, "pro-monthly").await);
    let lapsing = app.create_session("lapser", "basic-monthly").await;
    let bad = app.complete(&lapsing.id, "pay_x", "00").await;
    w.saw(R::BadSignature, "CompleteSession(bad signature)", bad);
    app.clock.advance(chrono::Duration::hours(25));
    w.saw(R::SessionNotActive, "RenewSession(expired)", app.renew(&lapsing.id, "pro-monthly").await);
    app.clock.advance(chrono::Duration::days(7));
    let r = c.recover_session(cpb::RecoverSessionRequest { id: lapsing.id.clone(), ..Default::default() }).await;
    w.saw(R::SessionTooOld, "RecoverSession(8 days old)", r);

    // Orders.
    let session = uuid::Uuid::new_v4().to_string();
    b.create_order(create_order(&session, "o1", "basic-monthly")).await.unwrap();
    w.saw(
        R::OrderExists,
        "CreateOrder(same session, other user)",
        b.create_order(create_order(&session, "o2", "basic-monthly")).await,
    );
    let cancelled = b.create_order(create_order(&uuid::Uuid::new_v4().to_string(), "o3", "basic-monthly")).await.unwrap();
    let cancelled = cancelled.into_inner().order.unwrap();
    b.cancel_orders(bpb::CancelOrdersRequest { order_ids: vec![cancelled.id.clone()], ..Default::default() }).await.unwrap();
    let r = b.create_order(create_order(&cancelled.checkout_session_id, "o3", "basic-monthly")).await;
    w.saw(R::OrderCancelled, "CreateOrder(cancelled)", r);
    let (p, sig) = app.pay(&cancelled.id);
    w.saw(R::OrderCancelled, "VerifyPayment(cancelled order)", verify(&app, &cancelled.id, &p, &sig).await);

    let paid = app.order("payer", "basic-monthly").await;
    let (p1, s1) = app.pay(&paid.id);
    verify(&app, &paid.id, &p1, &s1).await.unwrap();
    let r = b.create_order(create_order(&paid.checkout_session_id, "payer", "basic-monthly")).await;
    w.saw(R::OrderPaid, "CreateOrder(paid)", r);
    let (p2, s2) = app.pay(&paid.id);
    w.saw(R::SecondPayment, "VerifyPayment(second payment)", verify(&app, &paid.id, &p2, &s2).await);
    let other = app.order("payer-2", "basic-monthly").await;
    let reused = app.gateway.sign_payment(&other.id, &p1);
    w.saw(R::PaymentUsed, "VerifyPayment(payment of another order)", verify(&app, &other.id, &p1, &reused).await);

    let old = app.order("late", "basic-monthly").await;
    let new = app.order("late", "pro-monthly").await;
    let (pn, sn) = app.pay(&new.id);
    verify(&app, &new.id, &pn, &sn).await.unwrap();
    let (po, so) = app.pay(&old.id);
    w.saw(R::OrderSuperseded, "VerifyPayment(superseded order)", verify(&app, &old.id, &po, &so).await);

    // A payment refused once stays refused with the reason it was recorded
    // with; the kinds only older rows or webhooks produce are seeded.
    let mut db = app.billing_db().await;
    for (i, (kind, want)) in [
        ("AMOUNT_MISMATCH", R::AmountMismatch),
        ("UNKNOWN_ORDER", R::UnknownOrder),
        ("RECORDED_BEFORE_CLASSIFICATION", R::RecordedBeforeClassification),
    ]
    .into_iter()
    .enumerate()
    {
        let order = app.order(&format!("under-{i}"), "pro-monthly").await;
        let (p, sig) = app.pay(&order.id);
        let hook = app.captured_webhook(&order.id, &p, 1, &order.currency, &format!("evt-under-{i}"));
        b.handle_gateway_webhook(hook).await.unwrap();
        exec(&mut db, &format!("UPDATE payment_discrepancies SET kind = '{kind}' WHERE payment_id = '{p}'")).await;
        w.saw(want, "VerifyPayment(a payment recorded as a discrepancy)", verify(&app, &order.id, &p, &sig).await);
    }

    // An authorization billing captured at the gateway for one order, then
    // presented for another.
    let auth_order = app.order("authorized", "basic-monthly").await;
    let pa = Sandbox::new_payment_id();
    let body = Sandbox::authorized_event_body(&auth_order.id, &pa, auth_order.amount_minor, &auth_order.currency);
    let hook = bpb::HandleGatewayWebhookRequest { signature: app.gateway.sign_webhook(&body), body, event_id: "evt-auth".into() };
    b.handle_gateway_webhook(hook).await.unwrap();
    let elsewhere = app.order("authorized-2", "basic-monthly").await;
    let sig = app.gateway.sign_payment(&elsewhere.id, &pa);
    w.saw(
        R::PaymentOrderMismatch,
        "VerifyPayment(payment of another order at the gateway)",
        verify(&app, &elsewhere.id, &pa, &sig).await,
    );

    // Subscriptions.
    let first = app.subscribe("switcher", "basic-monthly").await;
    app.subscribe("switcher", "pro-monthly").await;
    let cancel = |id: &str, user: &str| bpb::CancelSubscriptionRequest {
        id: id.into(),
        user_id: user.into(),
        policy: bpb::CancellationPolicy::Immediately as i32,
        ..Default::default()
    };
    w.saw(R::SubscriptionEnded, "CancelSubscription(replaced)", b.cancel_subscription(cancel(&first.id, "switcher")).await);
    let usage = app.start_usage("freebie", bpb::UsageKind::Text).await.unwrap();
    w.saw(R::FreePlan, "CancelSubscription(free)", b.cancel_subscription(cancel(&usage.subscription_id, "freebie")).await);
    let live = app.subscribe("etagger", "basic-monthly").await;
    let stale = bpb::CancelSubscriptionRequest { etag: "0123456789abcdef".into(), ..cancel(&live.id, "etagger") };
    let s = w.saw(R::EtagMismatch, "CancelSubscription(stale etag)", b.cancel_subscription(stale).await);
    assert_eq!(Walk::metadata(&s, "resource"), "subscription");
    assert_eq!(Walk::metadata(&s, "id"), live.id);

    // Refunds.
    let unpaid = app.order("refunder", "basic-monthly").await;
    w.saw(R::OrderNotPaid, "RefundPayment(unpaid order)", refund(&app, &unpaid.id, 0, "r-unpaid").await);
    let sub = app.subscribe("refunder", "basic-monthly").await;
    let s = w.saw(R::RefundExceedsCaptured, "RefundPayment(too much)", refund(&app, &sub.order_id, 1_000_000, "r-big").await);
    assert_eq!(Walk::metadata(&s, "refundable_minor"), "49900");
    assert_eq!(Walk::metadata(&s, "currency"), "INR");
    refund(&app, &sub.order_id, 100, "r-once").await.unwrap();
    let sub2 = app.subscribe("refunder-2", "basic-monthly").await;
    w.saw(R::RefundIdReused, "RefundPayment(refund_id of another order)", refund(&app, &sub2.order_id, 100, "r-once").await);
    app.gateway.set_refunds(SandboxRefunds::Refuse);
    let s = w.saw(R::GatewayRefused, "RefundPayment(refused)", refund(&app, &sub2.order_id, 100, "r-refused").await);
    assert!(s.get_error_details().precondition_failure().is_some());
    app.gateway.set_refunds(SandboxRefunds::Unreachable);
    w.saw(R::GatewayUnavailable, "RefundPayment(gateway down)", refund(&app, &sub2.order_id, 100, "r-down").await);
    app.gateway.set_refunds(SandboxRefunds::Process);

    // A second call with one refund_id while the first is at the gateway.
    let calls_before = app.gateway.refund_calls();
    app.gateway.hold_refunds(true);
    let held = {
        let app_order = sub2.order_id.clone();
        let mut admin = app.billing_admin.clone();
        tokio::spawn(async move {
            let r = bpb::RefundPaymentRequest {
                order_id: app_order,
                amount_minor: 100,
                reason: "t".into(),
                refund_id: "r-held".into(),
                refund_all: false,
            };
            admin.refund_payment(r).await
        })
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while app.gateway.refund_calls() == calls_before {
        assert!(tokio::time::Instant::now() < deadline, "the first refund never reached the gateway");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let r = refund(&app, &sub2.order_id, 100, "r-held").await;
    w.saw(R::IdempotencyKeyInFlight, "RefundPayment(same refund_id in flight)", r);
    app.gateway.hold_refunds(false);
    held.await.unwrap().unwrap();

    // Usage and limits on the free plan (5 sessions, 60 minutes, 30 credits,
    // 10 MiB uploads).
    let r = b.authorize_upload(bpb::AuthorizeUploadRequest { user_id: "uploader".into(), size_bytes: 20 << 20 }).await;
    let s = w.saw(R::UploadTooLarge, "AuthorizeUpload(20 MiB)", r);
    assert_eq!(Walk::metadata(&s, "limit"), (10 << 20).to_string());
    assert!(s.get_error_details().quota_failure().is_some(), "QuotaFailure is still there");
    for _ in 0..5 {
        let u = app.start_usage("busy-bee", bpb::UsageKind::Text).await.unwrap();
        app.end_usage(&u.id, 0).await.unwrap();
    }
    w.saw(R::SessionLimitExceeded, "StartUsageSession(6th)", app.start_usage("busy-bee", bpb::UsageKind::Text).await);
    let broke = app.start_usage("spender", bpb::UsageKind::Call).await.unwrap();
    let deduct = |id: &str, d: &str, units| bpb::DeductRequest { usage_session_id: id.into(), deduction_id: d.into(), units };
    b.deduct(deduct(&broke.id, "all", 30)).await.unwrap();
    w.saw(R::IdempotencyKeyReused, "Deduct(same deduction_id, other units)", b.deduct(deduct(&broke.id, "all", 2)).await);
    w.saw(R::NoCredits, "StartUsageSession(no credits)", app.start_usage("spender", bpb::UsageKind::Call).await);
    app.end_usage(&broke.id, 0).await.unwrap();
    w.saw(R::SessionEnded, "Deduct(ended session)", b.deduct(deduct(&broke.id, "late", 1)).await);
    app.start_usage("talker", bpb::UsageKind::Call).await.unwrap();
    app.clock.advance(chrono::Duration::minutes(61));
    w.saw(R::MinutesLimitExceeded, "StartUsageSession(61 minutes used)", app.start_usage("talker", bpb::UsageKind::Call).await);
}
