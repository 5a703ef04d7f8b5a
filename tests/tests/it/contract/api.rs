//! The API's contract: auth (unauthenticated, permission denied), the error
//! shape of malformed and unknown ids, and typed enum fields beside their
//! text twins.
use proto::{billing::v1 as bpb, checkout::v1 as cpb};
use tests::{billing_client, checkout_client, spawn_app};
use tonic::Code;
use tonic_types::StatusExt;

#[tokio::test]
async fn missing_or_wrong_token_is_unauthenticated() {
    let app = spawn_app().await;
    let mut anon = checkout_client(&app.checkout_addr.to_string(), "").unwrap();
    let e = anon.get_session(cpb::GetSessionRequest { id: uuid::Uuid::new_v4().to_string() }).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    let mut wrong = billing_client(&app.billing_addr.to_string(), "not-a-token").unwrap();
    let e = wrong.list_plans(bpb::ListPlansRequest::default()).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn service_token_on_admin_rpc_is_permission_denied() {
    let mut app = spawn_app().await;
    let e = app.checkout.cleanup_sessions(cpb::CleanupSessionsRequest { dry_run: true }).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let e = app.billing.run_reconciliation(bpb::RunReconciliationRequest { fix: false }).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let e = app.billing.list_findings(bpb::ListFindingsRequest::default()).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    // Checkout's own token cannot move money out: RefundPayment is an
    // operator's call. Nothing is written.
    let order = app.order("no-refund-for-services", "basic-monthly").await;
    let (payment_id, signature) = app.pay(&order.id);
    app.billing.verify_payment(bpb::VerifyPaymentRequest { order_id: order.id.clone(), payment_id, signature }).await.unwrap();
    let mut as_checkout =
        tests::billing_client(&app.billing_addr.to_string(), tests::harness::CHECKOUT_TO_BILLING_TOKEN).unwrap();
    for caller in [&mut app.billing, &mut as_checkout] {
        let refund = bpb::RefundPaymentRequest {
            order_id: order.id.clone(),
            amount_minor: 0,
            reason: "not mine to give".into(),
            refund_id: "service-refund".into(),
            refund_all: true,
        };
        let e = caller.refund_payment(refund).await.unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    }
    let mut db = app.billing_db().await;
    assert_eq!(tests::helpers::scalar(&mut db, "SELECT count(*) AS n FROM refunds").await, 0);
    // The admin token passes.
    app.checkout_admin.cleanup_sessions(cpb::CleanupSessionsRequest { dry_run: true }).await.unwrap();
    app.billing_admin.run_reconciliation(bpb::RunReconciliationRequest { fix: false }).await.unwrap();
}

#[tokio::test]
async fn malformed_id_is_invalid_argument_with_field_violation() {
    let mut app = spawn_app().await;
    let e = app.checkout.get_session(cpb::GetSessionRequest { id: "not-a-uuid".into() }).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let details = e.get_error_details();
    let fields: Vec<_> = details.bad_request().unwrap().field_violations.iter().map(|v| v.field.clone()).collect();
    assert_eq!(fields, vec!["id".to_owned()]);

    let e = app.billing.get_usage_session(bpb::GetUsageSessionRequest { id: String::new() }).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.get_error_details().bad_request().is_some());
}

#[tokio::test]
async fn unknown_id_is_not_found_with_resource_info() {
    let mut app = spawn_app().await;
    let id = uuid::Uuid::new_v4().to_string();
    let e = app.checkout.get_session(cpb::GetSessionRequest { id: id.clone() }).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert_eq!(e.get_error_details().resource_info().unwrap().resource_name, id);
    let e = app.billing.get_plan(bpb::GetPlanRequest { id: "no-such-plan".into() }).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
}

/// The typed enums that replace text fields (outcome, Finding.kind,
/// Plan.period) carry the same value as their deprecated text twins.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn typed_enum_fields_match_their_text_twins() {
    use proto::billing::v1 as bpb;
    let app = tests::spawn_app().await;
    let plans = app.billing.clone().list_plans(bpb::ListPlansRequest::default()).await.unwrap().into_inner().plans;
    assert!(!plans.is_empty());
    for p in &plans {
        assert_eq!((p.period.as_str(), p.period_code), ("monthly", bpb::PlanPeriod::Monthly as i32));
    }
    let order = app.order("twins", "basic-monthly").await;
    let (payment, _) = app.pay(&order.id);
    let odd = app.captured_webhook(&order.id, &payment, 1, "INR", "evt-twins");
    let r = app.billing.clone().handle_gateway_webhook(odd).await.unwrap().into_inner();
    assert_eq!((r.outcome.as_str(), r.outcome_code), ("DISCREPANCY", bpb::WebhookOutcome::Discrepancy as i32));
    let fine = app.order("twins-2", "basic-monthly").await;
    let (payment, _) = app.pay(&fine.id);
    let ok = app.captured_webhook(&fine.id, &payment, fine.amount_minor, &fine.currency, "evt-twins-2");
    let r = app.billing.clone().handle_gateway_webhook(ok).await.unwrap().into_inner();
    assert_eq!((r.outcome.as_str(), r.outcome_code), ("PROCESSED", bpb::WebhookOutcome::Processed as i32));
    let report = app.billing_admin.clone().run_reconciliation(bpb::RunReconciliationRequest { fix: false }).await.unwrap();
    let findings = report.into_inner().findings;
    assert!(!findings.is_empty());
    for f in findings {
        assert_eq!(bpb::FindingKind::try_from(f.kind_code).unwrap().as_str_name(), format!("FINDING_KIND_{}", f.kind));
    }
}
