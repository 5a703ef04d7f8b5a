//! Both services serving over real sockets: named health services,
//! reflection, load shedding, and pooled connections the server closed.
use proto::billing::v1 as bpb;
use tests::spawn_app;
use tonic::Code;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};
use tonic_reflection::pb::v1alpha::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient, server_reflection_request::MessageRequest,
    server_reflection_response::MessageResponse,
};

#[tokio::test]
async fn both_services_report_serving_on_their_named_health_service() {
    let app = spawn_app().await;
    for (addr, name) in [(app.checkout_addr, proto::CHECKOUT_SERVICE_NAME), (app.billing_addr, proto::BILLING_SERVICE_NAME)] {
        let mut h = HealthClient::new(tests::clients::channel(&addr.to_string()).unwrap());
        let s = h.check(HealthCheckRequest { service: name.into() }).await.unwrap().into_inner();
        assert_eq!(s.status, ServingStatus::Serving as i32, "{name}");
        let unknown = h.check(HealthCheckRequest { service: "nope.v1.Nope".into() }).await;
        assert_eq!(unknown.unwrap_err().code(), Code::NotFound);
    }
    // billing's plan catalogue is served beside it, ready with it.
    let mut h = HealthClient::new(tests::clients::channel(&app.billing_addr.to_string()).unwrap());
    let s = h.check(HealthCheckRequest { service: proto::PLAN_CATALOG_SERVICE_NAME.into() }).await.unwrap().into_inner();
    assert_eq!(s.status, ServingStatus::Serving as i32);
}

async fn list_services(addr: &str) -> Vec<String> {
    let mut c = ServerReflectionClient::new(tests::clients::channel(addr).unwrap());
    let req = ServerReflectionRequest { host: String::new(), message_request: Some(MessageRequest::ListServices(String::new())) };
    let mut stream = c.server_reflection_info(futures::stream::iter(vec![req])).await.unwrap().into_inner();
    let msg = stream.message().await.unwrap().unwrap();
    match msg.message_response {
        Some(MessageResponse::ListServicesResponse(l)) => l.service.into_iter().map(|s| s.name).collect(),
        other => panic!("unexpected reflection answer {other:?}"),
    }
}

#[tokio::test]
async fn reflection_v1alpha_lists_each_service_and_health() {
    let app = spawn_app().await;
    let checkout = list_services(&app.checkout_addr.to_string()).await;
    assert!(checkout.contains(&proto::CHECKOUT_SERVICE_NAME.to_owned()), "{checkout:?}");
    assert!(checkout.contains(&"grpc.health.v1.Health".to_owned()), "{checkout:?}");
    let billing = list_services(&app.billing_addr.to_string()).await;
    assert!(billing.contains(&proto::BILLING_SERVICE_NAME.to_owned()), "{billing:?}");
    assert!(billing.contains(&proto::PLAN_CATALOG_SERVICE_NAME.to_owned()), "{billing:?}");
    assert!(!checkout.contains(&proto::PLAN_CATALOG_SERVICE_NAME.to_owned()), "{checkout:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_beyond_the_concurrency_limit_are_shed_with_unavailable() {
    use diesel_async::RunQueryDsl;
    let app =
        tests::spawn_app_with(tests::harness::Options { pool_size: 4, max_concurrent_requests: 2, ..Default::default() }).await;
    let s = app.start_usage("busy", bpb::UsageKind::Text).await.unwrap();
    // Two Deducts wait on a row lock this test holds: both slots are taken.
    let mut holder = app.billing_db().await;
    diesel::sql_query("BEGIN").execute(&mut holder).await.unwrap();
    diesel::sql_query(format!("SELECT 1 FROM usage_sessions WHERE id = '{}' FOR UPDATE", s.id))
        .execute(&mut holder)
        .await
        .unwrap();
    let stuck: Vec<_> = (0..2)
        .map(|i| {
            let mut b = app.billing.clone();
            let id = s.id.clone();
            tokio::spawn(async move {
                b.deduct(bpb::DeductRequest { usage_session_id: id, deduction_id: format!("d{i}"), units: 1 }).await
            })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let mut b = app.billing.clone();
    // Without shedding this would queue behind the lock: bound the wait.
    let mut req = tonic::Request::new(bpb::ListPlansRequest::default());
    req.set_timeout(std::time::Duration::from_secs(3));
    let e = b.list_plans(req).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains("overloaded"), "{e:?}");
    diesel::sql_query("COMMIT").execute(&mut holder).await.unwrap();
    for r in futures::future::join_all(stuck).await {
        r.unwrap().unwrap();
    }
    // Capacity is back.
    b.list_plans(bpb::ListPlansRequest::default()).await.unwrap();
}

/// Pooled connections are checked locally when handed out, without a
/// `SELECT 1` per call: connections the server closed (a restart, an
/// operator's `pg_terminate_backend`) are replaced, and no call after the
/// outage fails on one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pooled_connections_the_server_closed_are_replaced_without_failing_calls() {
    use tests::helpers::{exec, scalar};
    let app = spawn_app().await;
    // Several connections in billing's pool: concurrent calls each hold one.
    let warm = (0..8).map(|i| {
        let mut b = app.billing.clone();
        let req = bpb::StartUsageSessionRequest {
            user_id: format!("warm-{i}"),
            kind: bpb::UsageKind::Text as i32,
            ..Default::default()
        };
        async move { b.start_usage_session(req).await }
    });
    for r in futures::future::join_all(warm).await {
        r.unwrap();
    }
    let mut db = app.billing_db().await;
    let others = "FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() \
                  AND backend_type = 'client backend'";
    // Remember whom it ended: the event tail's listening connection comes
    // back at once, so "no sessions left" would never hold.
    exec(
        &mut db,
        &format!("CREATE TEMP TABLE ended AS SELECT pid FROM (SELECT pid, pg_terminate_backend(pid) AS t {others}) x WHERE t"),
    )
    .await;
    let killed = scalar(&mut db, "SELECT count(*) AS n FROM ended").await;
    assert!(killed >= 2, "the pool held {killed} connection(s); the outage hit too little to show anything");
    let mut gone = false;
    for _ in 0..500 {
        if scalar(&mut db, "SELECT count(*) AS n FROM pg_stat_activity WHERE pid IN (SELECT pid FROM ended)").await == 0 {
            gone = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(gone, "the terminated backends did not go away");
    // The sockets are closed; the clients' connection tasks read that at once
    // (a moment for them to run, not a clock this test depends on otherwise).
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    for i in 0..20 {
        let r = app.start_usage(&format!("after-{i}"), bpb::UsageKind::Text).await;
        assert!(r.is_ok(), "call {i} after the outage failed: {r:?}");
        // And a Deduct, whose batch takes its connection from the same pool.
        let session = r.unwrap().id;
        let mut b = app.billing.clone();
        let d = b.deduct(bpb::DeductRequest { usage_session_id: session, deduction_id: "after".into(), units: 1 }).await;
        assert!(d.is_ok(), "Deduct {i} after the outage failed: {d:?}");
    }
}
