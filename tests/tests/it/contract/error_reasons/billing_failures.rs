//! Billing failing behind checkout: an undecodable body on both services,
//! a checkout whose token billing refuses (INTERNAL), billing down
//! (BILLING_UNAVAILABLE).
use proto::{checkout::v1 as cpb, error::ErrorReason as R};
use tests::{
    TestApp,
    clients::checkout_client,
    harness::{Options, SERVICE_TOKEN, checkout_config, wait_serving},
    spawn_app,
};
use tonic_types::StatusExt;

use super::Walk;

/// An undecodable body, on both services.
async fn walk_malformed_bodies(w: &mut Walk, app: &TestApp) {
    #[derive(Clone, PartialEq, prost::Message)]
    struct WrongWire {
        #[prost(uint64, tag = "1")]
        field: u64,
    }
    for (addr, path) in
        [(app.billing_addr, "/billing.v1.BillingService/GetPlan"), (app.checkout_addr, "/checkout.v1.CheckoutService/GetSession")]
    {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready().await.unwrap();
        let mut req = tonic::Request::new(WrongWire { field: 7 });
        req.metadata_mut().insert("authorization", format!("Bearer {SERVICE_TOKEN}").parse().unwrap());
        let codec = tonic_prost::ProstCodec::<WrongWire, WrongWire>::default();
        let r = grpc.unary(req, tonic::codegen::http::uri::PathAndQuery::from_static(path), codec).await.map(|_| ());
        w.saw(R::MalformedRequest, path, r);
    }
}

/// Billing down behind checkout, and a checkout whose own token billing
/// refuses (its misconfiguration: INTERNAL, not the caller's fault).
pub(super) async fn walk_billing_failures(w: &mut Walk) {
    let mut app = spawn_app().await;
    walk_malformed_bodies(w, &app).await;

    let opts = Options::default();
    let mut cfg = checkout_config(&opts, app.billing_addr);
    cfg.billing_token = "not-billing-s-token".into();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let shutdown = shared::server::Shutdown::new();
    let task = tokio::spawn(checkout_svc::serve(cfg, app.checkout_db_url.clone(), listener, app.clock.clone(), shutdown.clone()));
    wait_serving(&addr, proto::CHECKOUT_SERVICE_NAME).await.unwrap();
    let mut misconfigured = checkout_client(&addr, SERVICE_TOKEN).unwrap();
    let r = misconfigured
        .create_session(cpb::CreateSessionRequest { user_id: "u".into(), plan_id: "basic-monthly".into(), ..Default::default() })
        .await;
    let s = w.saw(R::InternalError, "CreateSession through a checkout billing refuses", r);
    // The trace id is empty unless a tracer is installed; the key is there.
    let has_trace_id = s.get_error_details().error_info().is_some_and(|i| i.metadata.contains_key("trace_id"));
    assert!(has_trace_id, "{s:?}");
    assert!(s.message().starts_with("internal error (trace id"), "{s:?}");
    shutdown.trigger();
    let _ = task.await;

    app.stop_billing().await;
    let mut c = app.checkout.clone();
    let r = c
        .create_session(cpb::CreateSessionRequest { user_id: "u".into(), plan_id: "basic-monthly".into(), ..Default::default() })
        .await;
    let s = w.saw(R::BillingUnavailable, "CreateSession(billing down)", r);
    assert!(!Walk::metadata(&s, "billing_code").is_empty(), "{s:?}");
}
