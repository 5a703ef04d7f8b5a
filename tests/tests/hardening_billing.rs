#![allow(clippy::unwrap_used, clippy::expect_used)]
//! billing.v1 at its edges: late payments of superseded orders, orders that
//! can no longer be paid, reconciliation racing itself and deductions,
//! charges racing a purchase, reads that must not write or lock, bad input
//! that must never be INTERNAL, and one held row that must not take the
//! service down. Real PostgreSQL, real gRPC.
use std::time::{Duration as StdDuration, Instant};

use diesel_async::AsyncPgConnection;
use futures::future::join_all;
use proto::billing::v1 as bpb;
use tests::{
    TestApp,
    harness::SERVICE_TOKEN,
    helpers::{assert_ledger_matches_balances, exec, retrying, scalar},
    spawn_app,
};
use tonic::Code;
use tonic_types::StatusExt;

fn precondition_type(s: &tonic::Status) -> String {
    s.get_error_details().precondition_failure().and_then(|p| p.violations.first().map(|v| v.r#type.clone())).unwrap_or_default()
}

async fn verify(app: &TestApp, order_id: &str, payment: &(String, String)) -> Result<bpb::VerifyPaymentResponse, tonic::Status> {
    let mut b = app.billing.clone();
    b.verify_payment(bpb::VerifyPaymentRequest {
        order_id: order_id.into(),
        payment_id: payment.0.clone(),
        signature: payment.1.clone(),
    })
    .await
    .map(|r| r.into_inner())
}

/// Waits until some backend of the test's database waits on a lock.
async fn until_someone_waits_on_a_lock(db: &mut AsyncPgConnection) {
    for _ in 0..500 {
        let n = scalar(
            db,
            "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .await;
        if n > 0 {
            return;
        }
        tokio::time::sleep(StdDuration::from_millis(10)).await;
    }
    panic!("nobody started waiting on the lock");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_late_payment_of_a_superseded_order_is_a_discrepancy_never_a_downgrade() {
    let app = spawn_app().await;
    let old = app.order("late", "basic-monthly").await;
    let new = app.order("late", "pro-monthly").await;
    let bought = verify(&app, &new.id, &app.pay(&new.id)).await.unwrap().subscription.unwrap();

    // The old order's payment arrives late, through VerifyPayment...
    let e = verify(&app, &old.id, &app.pay(&old.id)).await.unwrap_err();
    assert_eq!((e.code(), precondition_type(&e).as_str()), (Code::FailedPrecondition, "ORDER_SUPERSEDED"), "{e:?}");
    // ...and another through the webhook.
    let (p2, _) = app.pay(&old.id);
    let hook = app.captured_webhook(&old.id, &p2, old.amount_minor, &old.currency, "evt-late");
    let r = app.billing.clone().handle_gateway_webhook(hook).await.unwrap().into_inner();
    assert_eq!((r.outcome.as_str(), r.subscription_id.as_str()), ("DISCREPANCY", ""));

    let mut db = app.billing_db().await;
    let live = scalar(
        &mut db,
        &format!("SELECT count(*) AS n FROM subscriptions WHERE user_id = 'late' AND status = 'ACTIVE' AND id = '{}'", bought.id),
    )
    .await;
    assert_eq!(live, 1, "the newer plan stays");
    assert_eq!(scalar(&mut db, &format!("SELECT count(*) AS n FROM subscriptions WHERE order_id = '{}'", old.id)).await, 0);
    assert_eq!(
        scalar(&mut db, "SELECT count(*) AS n FROM payment_discrepancies WHERE kind = 'ORDER_SUPERSEDED' AND status = 'OPEN'")
            .await,
        2,
        "both late payments are recorded for a refund"
    );
    // `fix` never closes money taken without a subscription.
    for fix in [true, true, false] {
        let r = app.billing_admin.clone().run_reconciliation(bpb::RunReconciliationRequest { fix }).await.unwrap().into_inner();
        let open = r.findings.iter().filter(|f| f.kind == "PAYMENT_DISCREPANCY" && !f.fixed).count();
        assert_eq!(open, 2, "{:?}", r.findings);
    }
    assert_ledger_matches_balances(&mut db).await;
}

/// A payment refused once (here: the webhook's amount is not the order's)
/// stays refused when VerifyPayment, which carries no amount, meets it: it
/// never becomes both a subscription and an open refund.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_payment_stays_refused_on_every_path() {
    let app = spawn_app().await;
    let order = app.order("under", "pro-monthly").await;
    let pay = app.pay(&order.id);
    let hook = app.captured_webhook(&order.id, &pay.0, 1, &order.currency, "evt-under");
    let r = app.billing.clone().handle_gateway_webhook(hook).await.unwrap().into_inner();
    assert_eq!(r.outcome, "DISCREPANCY");
    let e = verify(&app, &order.id, &pay).await.unwrap_err();
    assert_eq!((e.code(), precondition_type(&e).as_str()), (Code::FailedPrecondition, "AMOUNT_MISMATCH"), "{e:?}");
    let mut db = app.billing_db().await;
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM subscriptions WHERE order_id IS NOT NULL").await, 0);
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM orders WHERE status = 'PAID'").await, 0);
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM payment_discrepancies WHERE status = 'OPEN'").await, 1);
}

/// Payments of an older and a newer order of one user, captured in every
/// interleaving through both paths: the newer order's plan always ends up
/// live, and the older payment either came first (and was replaced, its
/// credits carried) or is an open discrepancy.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_captures_of_an_older_and_a_newer_order_always_leave_the_newer_plan() {
    let app = spawn_app().await;
    for round in 0..6 {
        let user = format!("race-{round}");
        let old = app.order(&user, "basic-monthly").await;
        let new = app.order(&user, "pro-monthly").await;
        let (po, pn) = (app.pay(&old.id), app.pay(&new.id));
        let calls = (0..16).map(|i| {
            let app = &app;
            let (order, pay) = if i % 2 == 0 { (&old, &po) } else { (&new, &pn) };
            async move {
                if i % 4 < 2 {
                    retrying(|| verify(app, &order.id, pay))
                        .await
                        .map(|_| ())
                        .or_else(|e| if precondition_type(&e) == "ORDER_SUPERSEDED" { Ok(()) } else { Err(e) })
                } else {
                    let hook =
                        app.captured_webhook(&order.id, &pay.0, order.amount_minor, &order.currency, &format!("e-{round}-{i}"));
                    retrying(|| {
                        let mut b = app.billing.clone();
                        let hook = hook.clone();
                        async move { b.handle_gateway_webhook(hook).await }
                    })
                    .await
                    .map(|_| ())
                }
            }
        });
        for r in join_all(calls).await {
            r.unwrap();
        }
        let mut db = app.billing_db().await;
        let live_is_new = scalar(
            &mut db,
            &format!(
                "SELECT count(*) AS n FROM subscriptions WHERE user_id = '{user}' AND status = 'ACTIVE' AND order_id = '{}'",
                new.id
            ),
        )
        .await;
        if live_is_new != 1 {
            let rows = scalar(&mut db, &format!("SELECT count(*) AS n FROM subscriptions WHERE user_id = '{user}'")).await;
            let active_old = scalar(
                &mut db,
                &format!("SELECT count(*) AS n FROM subscriptions WHERE status = 'ACTIVE' AND order_id = '{}'", old.id),
            )
            .await;
            let disc =
                scalar(&mut db, &format!("SELECT count(*) AS n FROM payment_discrepancies WHERE order_id = '{}'", new.id)).await;
            let ev = scalar(
                &mut db,
                &format!("SELECT count(*) AS n FROM webhook_events WHERE order_id = '{}' AND outcome <> 'PROCESSED'", new.id),
            )
            .await;
            panic!("round {round}: subs {rows}, old active {active_old}, new discrepancies {disc}, new odd events {ev}");
        }
        let old_subscribed =
            scalar(&mut db, &format!("SELECT count(*) AS n FROM subscriptions WHERE order_id = '{}'", old.id)).await;
        let old_open = scalar(
            &mut db,
            &format!("SELECT count(*) AS n FROM payment_discrepancies WHERE order_id = '{}' AND status = 'OPEN'", old.id),
        )
        .await;
        assert_eq!(old_subscribed + old_open, 1, "round {round}: the older payment bought a replaced plan or awaits a refund");
        assert_ledger_matches_balances(&mut db).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn create_order_never_hands_out_a_cancelled_or_paid_order() {
    let app = spawn_app().await;
    let mut b = app.billing.clone();
    let create = |session: String| bpb::CreateOrderRequest {
        checkout_session_id: session,
        user_id: "co".into(),
        plan_id: "basic-monthly".into(),
    };
    let cancelled = uuid::Uuid::new_v4().to_string();
    let order = b.create_order(create(cancelled.clone())).await.unwrap().into_inner().order.unwrap();
    b.cancel_orders(bpb::CancelOrdersRequest { order_ids: vec![order.id.clone()] }).await.unwrap();
    let e = b.create_order(create(cancelled)).await.unwrap_err();
    assert_eq!((e.code(), precondition_type(&e).as_str()), (Code::FailedPrecondition, "ORDER_CANCELLED"));

    let paid = uuid::Uuid::new_v4().to_string();
    let order = b.create_order(create(paid.clone())).await.unwrap().into_inner().order.unwrap();
    verify(&app, &order.id, &app.pay(&order.id)).await.unwrap();
    let e = b.create_order(create(paid)).await.unwrap_err();
    assert_eq!((e.code(), precondition_type(&e).as_str()), (Code::FailedPrecondition, "ORDER_PAID"));

    let open = uuid::Uuid::new_v4().to_string();
    let first = b.create_order(create(open.clone())).await.unwrap().into_inner().order.unwrap();
    let again = b.create_order(create(open)).await.unwrap().into_inner().order.unwrap();
    assert_eq!(first.id, again.id, "an unpaid order is still handed out again");
}

/// Eight reconciliations with `fix` at once: each finding is repaired, and
/// audited, exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_reconcile_fix_runs_repair_each_finding_once() {
    let app = spawn_app().await;
    let mut db = app.billing_db().await;
    for i in 0..5 {
        // A balance the ledger does not explain.
        let s = app.subscribe(&format!("rc-ledger-{i}"), "basic-monthly").await;
        exec(&mut db, &format!("UPDATE subscriptions SET credits_remaining = credits_remaining - 7 WHERE id = '{}'", s.id)).await;
        // A paid plan without a paid order.
        exec(
            &mut db,
            &format!(
                "INSERT INTO subscriptions (id, user_id, plan_id, status, anchor_at, period_start, period_end, credits_granted, credits_remaining) \
                 VALUES (gen_random_uuid(), 'rc-ghost-{i}', 'pro-monthly', 'ACTIVE', now(), now(), now() + interval '1 month', 1500, 1500)"
            ),
        )
        .await;
        // A usage session stuck ACTIVE.
        app.start_usage(&format!("rc-stuck-{i}"), bpb::UsageKind::Call).await.unwrap();
    }
    app.clock.advance(chrono::Duration::hours(25));
    let before = app.billing_admin.clone().run_reconciliation(bpb::RunReconciliationRequest { fix: false }).await.unwrap();
    let expected = before.into_inner().findings.len() as i64;
    assert_eq!(expected, 15);

    let runs = (0..8).map(|_| {
        let admin = app.billing_admin.clone();
        async move {
            retrying(|| {
                let mut admin = admin.clone();
                async move { admin.run_reconciliation(bpb::RunReconciliationRequest { fix: true }).await }
            })
            .await
            .map(|r| r.into_inner())
        }
    });
    let reports: Vec<_> = join_all(runs).await.into_iter().map(|r| r.unwrap()).collect();
    let fixed: i64 = reports.iter().map(|r| r.fixed).sum();
    assert_eq!(fixed, expected, "each finding repaired once across all runs");
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM reconcile_audit").await, expected, "one audit row per finding");
    assert_eq!(
        scalar(
            &mut db,
            "SELECT count(*) AS n FROM (SELECT kind, subject_id FROM reconcile_audit GROUP BY 1, 2 HAVING count(*) > 1) d"
        )
        .await,
        0
    );
    let after = app.billing_admin.clone().run_reconciliation(bpb::RunReconciliationRequest { fix: false }).await.unwrap();
    assert!(after.get_ref().findings.is_empty(), "{:?}", after.get_ref().findings);
    assert_ledger_matches_balances(&mut db).await;
}

/// The ledger repair racing deductions on the same balances: a credit spent
/// while the repair runs never comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ledger_repair_racing_deductions_never_gives_spent_credits_back() {
    let app = spawn_app().await;
    let mut db = app.billing_db().await;
    let mut sessions = Vec::new();
    for i in 0..8 {
        let user = format!("lr-{i}");
        app.subscribe(&user, "basic-monthly").await;
        sessions.push(app.start_usage(&user, bpb::UsageKind::Text).await.unwrap().id);
    }
    exec(
        &mut db,
        "UPDATE subscriptions SET credits_remaining = credits_remaining - 3 WHERE user_id LIKE 'lr-%' AND status = 'ACTIVE'",
    )
    .await;
    let deducts = sessions.iter().flat_map(|s| (0..12).map(move |k| (s.clone(), k))).map(|(s, k)| {
        let b = app.billing.clone();
        async move {
            retrying(|| {
                let (mut b, s) = (b.clone(), s.clone());
                async move { b.deduct(bpb::DeductRequest { usage_session_id: s, deduction_id: format!("d{k}"), units: 1 }).await }
            })
            .await
        }
    });
    let repairs = (0..4).map(|_| {
        let admin = app.billing_admin.clone();
        async move {
            retrying(|| {
                let mut admin = admin.clone();
                async move { admin.run_reconciliation(bpb::RunReconciliationRequest { fix: true }).await }
            })
            .await
        }
    });
    let (d, r) = tokio::join!(join_all(deducts), join_all(repairs));
    assert!(d.iter().all(|x| x.is_ok()) && r.iter().all(|x| x.is_ok()));
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM ledger WHERE kind = 'USAGE'").await, 8 * 12);
    assert_ledger_matches_balances(&mut db).await;
    assert_eq!(
        scalar(
            &mut db,
            "SELECT sum(credits_remaining)::bigint AS n FROM subscriptions WHERE user_id LIKE 'lr-%' AND status = 'ACTIVE'"
        )
        .await,
        8 * (300 - 12),
        "every deduction is paid for, whatever the repair saw"
    );
}

/// A Deduct on a session whose subscription was replaced, arriving while a
/// second purchase is committing: it draws on the purchase's new
/// subscription, never records the unit unpaid against the dead row.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_charge_waiting_on_a_purchase_draws_on_the_new_subscription() {
    let app = spawn_app().await;
    let session = app.start_usage("swap", bpb::UsageKind::Text).await.unwrap();
    let second = app.subscribe("swap", "basic-monthly").await; // the free row is REPLACED
    let mut buyer = app.billing_db().await;
    // A third purchase, held open mid-way: the second subscription is being
    // replaced by a new row the charge's snapshot cannot see yet.
    exec(&mut buyer, "BEGIN").await;
    exec(&mut buyer, &format!("SELECT id FROM subscriptions WHERE id = '{}' FOR UPDATE", second.id)).await;
    exec(&mut buyer, &format!("UPDATE subscriptions SET status = 'REPLACED', credits_remaining = 0 WHERE id = '{}'", second.id))
        .await;
    exec(
        &mut buyer,
        "INSERT INTO subscriptions (id, user_id, plan_id, status, anchor_at, period_start, period_end, credits_granted, credits_remaining) \
         VALUES ('00000000-0000-4000-8000-000000000003', 'swap', 'pro-monthly', 'ACTIVE', now(), now(), now() + interval '1 month', 1500, 1500)",
    )
    .await;
    let mut b = app.billing.clone();
    let id = session.id.clone();
    let deduct = tokio::spawn(async move {
        b.deduct(bpb::DeductRequest { usage_session_id: id, deduction_id: "d1".into(), units: 1 }).await.map(|r| r.into_inner())
    });
    let mut watcher = app.billing_db().await;
    until_someone_waits_on_a_lock(&mut watcher).await;
    // The held purchase also moved the ledger: the replaced row's balance left it.
    exec(
        &mut buyer,
        &format!(
            "INSERT INTO ledger (subscription_id, period_start, kind, credits) \
             SELECT id, period_start, 'CARRY_OVER', credits_granted FROM subscriptions WHERE id = '{}'",
            second.id
        ),
    )
    .await;
    exec(&mut buyer, "COMMIT").await;
    let r = deduct.await.unwrap().unwrap();
    assert_eq!((r.units_charged, r.units_unpaid), (1, 0), "charged to the live subscription");
    let mut db = app.billing_db().await;
    assert_eq!(
        scalar(&mut db, "SELECT credits_remaining AS n FROM subscriptions WHERE id = '00000000-0000-4000-8000-000000000003'")
            .await,
        1499
    );
    assert_ledger_matches_balances(&mut db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_neither_create_rows_nor_wait_on_locks() {
    let app = spawn_app().await;
    let mut b = app.billing.clone();
    let usage = b.get_usage(bpb::GetUsageRequest { user_id: "reader".into() }).await.unwrap().into_inner().usage.unwrap();
    assert_eq!((usage.plan_id.as_str(), usage.subscription_id.as_str(), usage.credits_remaining), ("free", "", 30));
    b.authorize_upload(bpb::AuthorizeUploadRequest { user_id: "reader".into(), size_bytes: 10 }).await.unwrap();
    let mut db = app.billing_db().await;
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM subscriptions").await, 0, "reads create nothing");

    // A user's balance row held by a writer: every read still answers.
    let session = app.start_usage("held", bpb::UsageKind::Text).await.unwrap();
    let sub = b.get_usage(bpb::GetUsageRequest { user_id: "held".into() }).await.unwrap().into_inner().usage.unwrap();
    let mut writer = app.billing_db().await;
    exec(&mut writer, "BEGIN").await;
    exec(&mut writer, "SELECT id FROM subscriptions WHERE user_id = 'held' FOR UPDATE").await;
    let started = Instant::now();
    b.get_usage(bpb::GetUsageRequest { user_id: "held".into() }).await.unwrap();
    b.authorize_upload(bpb::AuthorizeUploadRequest { user_id: "held".into(), size_bytes: 10 }).await.unwrap();
    b.get_usage_session(bpb::GetUsageSessionRequest { id: session.id.clone() }).await.unwrap();
    b.get_subscription(bpb::GetSubscriptionRequest { id: sub.subscription_id.clone() }).await.unwrap();
    let waited = started.elapsed();
    exec(&mut writer, "ROLLBACK").await;
    // A read that waited on the lock would have been ABORTED at the 1 s lock
    // bound (the unwraps above); this only catches a pathological stall.
    assert!(waited < StdDuration::from_secs(5), "reads took {waited:?} beside a writer's lock");

    // After paying, the running session reports the balance it now draws on.
    let paid = app.subscribe("held", "pro-monthly").await;
    let view = app.usage_session(&session.id).await;
    assert_eq!(view.credits_remaining, paid.credits_remaining);
    assert!(view.credits_remaining > 30, "{view:?}");
}

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
        let e = admin.get_usage_stats(bpb::GetUsageStatsRequest { from_day: from.into(), to_day: to.into() }).await.unwrap_err();
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
        .batch_get_orders(bpb::BatchGetOrdersRequest { order_ids: ids.clone(), checkout_session_ids: vec![] })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().len() + e.details().len() < 4096, "error of {} bytes", e.message().len() + e.details().len());
    let e = b.cancel_orders(bpb::CancelOrdersRequest { order_ids: ids }).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().len() + e.details().len() < 4096);
    // Many bad items within the count: every error still fits in a few KB.
    let e = b
        .batch_get_orders(bpb::BatchGetOrdersRequest { order_ids: vec!["x".repeat(5000); 400], checkout_session_ids: vec![] })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().len() + e.details().len() < 4096, "error of {} bytes", e.message().len() + e.details().len());
}

/// One usage session held by someone else (an operator's open
/// transaction): 40 Deducts pile up on it, and meanwhile other users'
/// calls run as usual. The waiters get ABORTED within the lock bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_held_row_does_not_take_billing_down_for_unrelated_callers() {
    let app = spawn_app().await;
    let held = app.start_usage("hot", bpb::UsageKind::Text).await.unwrap();
    let mut others = Vec::new();
    for i in 0..8 {
        others.push(app.start_usage(&format!("calm-{i}"), bpb::UsageKind::Text).await.unwrap().id);
    }
    let mut holder = app.billing_db().await;
    exec(&mut holder, "BEGIN").await;
    exec(&mut holder, &format!("SELECT id FROM usage_sessions WHERE id = '{}' FOR UPDATE", held.id)).await;

    let waiters = (0..40).map(|i| {
        let mut b = app.billing.clone();
        let id = held.id.clone();
        async move { b.deduct(bpb::DeductRequest { usage_session_id: id, deduction_id: format!("w{i}"), units: 1 }).await }
    });
    let unrelated = async {
        tokio::time::sleep(StdDuration::from_millis(100)).await;
        let mut worst = StdDuration::ZERO;
        let mut results = Vec::new();
        for round in 0..5 {
            let calls = others.iter().map(|id| {
                let mut b = app.billing.clone();
                let id = id.clone();
                async move {
                    let t = Instant::now();
                    let r =
                        b.deduct(bpb::DeductRequest { usage_session_id: id, deduction_id: format!("r{round}"), units: 1 }).await;
                    (r.map(|_| ()), t.elapsed())
                }
            });
            for (r, took) in join_all(calls).await {
                worst = worst.max(took);
                results.push(r);
            }
        }
        (results, worst)
    };
    let started = Instant::now();
    let (waited, (results, worst)) = tokio::join!(join_all(waiters), unrelated);
    eprintln!("40 waiters on one held row: all answered in {:?}; slowest of 40 unrelated Deducts {worst:?}", started.elapsed());
    exec(&mut holder, "ROLLBACK").await;
    for r in &results {
        assert!(r.is_ok(), "an unrelated caller failed: {r:?}");
    }
    // Before, the waiters held every pooled connection and unrelated calls
    // failed UNAVAILABLE after the 1.5 s pool wait; now none waits a lock bound.
    assert!(worst < StdDuration::from_secs(1), "an unrelated Deduct took {worst:?}");
    for r in &waited {
        let code = r.as_ref().err().map(|s| s.code());
        assert_eq!(code, Some(Code::Aborted), "a waiter on the held row: {r:?}");
    }
    let mut db = app.billing_db().await;
    assert_eq!(scalar(&mut db, &format!("SELECT count(*) AS n FROM deductions WHERE usage_session_id = '{}'", held.id)).await, 0);
    assert_ledger_matches_balances(&mut db).await;
}
