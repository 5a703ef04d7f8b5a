//! Input that must never be INTERNAL: undecodable bodies, values
//! PostgreSQL cannot hold, huge repeated fields.
use proto::billing::v1 as bpb;
use tests::{harness::SERVICE_TOKEN, helpers::scalar, spawn_app};
use tonic::Code;

/// A message whose field 1 is bytes: sent where a string is expected it
/// carries invalid UTF-8; [`WrongWire`] sends field 1 as a varint.
#[derive(Clone, PartialEq, prost::Message)]
struct RawBytes {
    #[prost(bytes = "vec", tag = "1")]
    field: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct WrongWire {
    #[prost(uint64, tag = "1")]
    field: u64,
}

async fn raw_call<M: prost::Message + Default + Clone + Send + 'static>(
    addr: std::net::SocketAddr,
    path: &'static str,
    msg: M,
) -> tonic::Status {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert("authorization", format!("Bearer {SERVICE_TOKEN}").parse().unwrap());
    let codec = tonic_prost::ProstCodec::<M, M>::default();
    grpc.unary(req, tonic::codegen::http::uri::PathAndQuery::from_static(path), codec).await.map(|_| ()).unwrap_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn undecodable_request_bodies_are_invalid_argument_on_both_services() {
    let app = spawn_app().await;
    let cases = [
        (app.billing_addr, "/billing.v1.BillingService/GetPlan"),
        (app.billing_addr, "/billing.v1.BillingService/Deduct"),
        (app.checkout_addr, "/checkout.v1.CheckoutService/GetSession"),
        (app.checkout_addr, "/checkout.v1.CheckoutService/CreateSession"),
    ];
    for (addr, path) in cases {
        let s = raw_call(addr, path, RawBytes { field: vec![0xff, 0xfe, 0x00, 0xc3] }).await;
        assert_eq!(s.code(), Code::InvalidArgument, "{path} invalid UTF-8: {s:?}");
        let s = raw_call(addr, path, WrongWire { field: 7 }).await;
        assert_eq!(s.code(), Code::InvalidArgument, "{path} wrong wire type: {s:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn values_postgres_cannot_hold_are_refused_precisely() {
    let app = spawn_app().await;
    let mut admin = app.billing_admin.clone();
    for (from, to) in [("-5000-01-01", ""), ("1000-01-01", "2026-01-01"), ("2026-01-01", "+300000-01-01")] {
        let e = admin
            .get_usage_stats(bpb::GetUsageStatsRequest { from_day: from.into(), to_day: to.into(), ..Default::default() })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{from}..{to}: {e:?}");
    }

    // Signed webhooks with a NUL character or an overlong payment id: stored,
    // acknowledged as REJECTED (the gateway must not retry forever), shown to
    // reconciliation, and nothing else written.
    let order = app.order("weird", "basic-monthly").await;
    let long_id = "p".repeat(3000);
    let bodies = [
        format!(
            r#"{{"event":"payment.captured","payload":{{"payment":{{"entity":{{"id":"pay_\u0000x","order_id":"{}","amount":{},"currency":"INR"}}}}}}}}"#,
            order.id, order.amount_minor
        ),
        format!(
            r#"{{"event":"payment.captured","payload":{{"payment":{{"entity":{{"id":"{long_id}","order_id":"{}","amount":{},"currency":"INR"}}}}}}}}"#,
            order.id, order.amount_minor
        ),
        r#"{"event":"pay\u0000ment.captured"}"#.to_owned(),
        "not json at all".to_owned(),
    ];
    let mut b = app.billing.clone();
    for (i, body) in bodies.iter().enumerate() {
        let body = body.clone().into_bytes();
        let req =
            bpb::HandleGatewayWebhookRequest { signature: app.gateway.sign_webhook(&body), body, event_id: format!("weird-{i}") };
        let r = b.handle_gateway_webhook(req).await.unwrap().into_inner();
        assert_eq!(r.outcome, "REJECTED", "body {i}");
    }
    let mut db = app.billing_db().await;
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM webhook_events WHERE outcome = 'REJECTED'").await, 4);
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM orders WHERE status = 'PAID'").await, 0);
    let r = app.billing_admin.clone().run_reconciliation(bpb::RunReconciliationRequest { fix: true }).await.unwrap().into_inner();
    assert_eq!(r.findings.iter().filter(|f| f.kind == "WEBHOOK_REJECTED" && !f.fixed).count(), 4, "{:?}", r.findings);
    let acked =
        billing_svc::reconcile::acknowledge(&mut db, "WEBHOOK_REJECTED", "weird-3", "garbage from a test", app.clock.now())
            .await
            .unwrap();
    assert!(acked);
    let r =
        app.billing_admin.clone().run_reconciliation(bpb::RunReconciliationRequest { fix: false }).await.unwrap().into_inner();
    assert_eq!(r.findings.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn huge_repeated_fields_are_refused_at_once_with_a_small_error() {
    let app = spawn_app().await;
    let mut b = app.billing.clone().max_decoding_message_size(64 << 20).max_encoding_message_size(64 << 20);
    let ids = vec![String::new(); 2_000_000];
    let e = b
        .batch_get_orders(bpb::BatchGetOrdersRequest {
            order_ids: ids.clone(),
            checkout_session_ids: vec![],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().len() + e.details().len() < 4096, "error of {} bytes", e.message().len() + e.details().len());
    let e = b.cancel_orders(bpb::CancelOrdersRequest { order_ids: ids, ..Default::default() }).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().len() + e.details().len() < 4096);
    // Many bad items within the count: every error still fits in a few KB.
    let e = b
        .batch_get_orders(bpb::BatchGetOrdersRequest {
            order_ids: vec!["x".repeat(5000); 400],
            checkout_session_ids: vec![],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().len() + e.details().len() < 4096, "error of {} bytes", e.message().len() + e.details().len());
}
