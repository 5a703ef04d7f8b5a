//! checkout.v1 under concurrency (docs/design.md, Invariants 1 and 2: one
//! ACTIVE session per user; one outcome per session) and idempotency keys. Both services, real
//! PostgreSQL, real sockets.
use chrono::Duration;
use futures::future::join_all;
use proto::checkout::v1::{self as cpb, SessionStatus};
use tests::{clients::with_key, helpers::scalar, spawn_app};
use tonic::Code;
use tonic_types::StatusExt;

fn status(s: &cpb::Session) -> SessionStatus {
    SessionStatus::try_from(s.status).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn race_50_concurrent_creates_for_one_user_leave_exactly_one_active() {
    // Fifty starts queue on one user's lock: patient bounds, so that a
    // loaded machine does not turn a queued start into ABORTED.
    let app = tests::spawn_app_with(tests::harness::Options::patient()).await;
    let calls = (0..50).map(|_| {
        let mut c = app.checkout.clone();
        async move {
            c.create_session(cpb::CreateSessionRequest {
                user_id: "racer".into(),
                plan_id: "pro-monthly".into(),
                ..Default::default()
            })
            .await
        }
    });
    let results = join_all(calls).await;
    for r in &results {
        assert!(r.is_ok(), "{r:?}");
    }
    let mut db = app.checkout_db().await;
    assert_eq!(
        scalar(&mut db, "SELECT count(*) AS n FROM checkout_sessions WHERE user_id = 'racer' AND status = 'ACTIVE'").await,
        1
    );
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM checkout_sessions WHERE user_id = 'racer'").await, 50);
    assert_eq!(
        scalar(&mut db, "SELECT count(*) AS n FROM checkout_sessions WHERE user_id = 'racer' AND status = 'INVALIDATED' AND replaced_by IS NOT NULL").await,
        49
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn race_concurrent_renews_of_one_session_agree() {
    let app = spawn_app().await;
    let a = app.create_session("renewer", "pro-monthly").await;
    let calls =
        (0..20).map(|_| {
            let mut c = app.checkout.clone();
            let id = a.id.clone();
            async move {
                c.renew_session(cpb::RenewSessionRequest { id, plan_id: "basic-monthly".into(), ..Default::default() }).await
            }
        });
    let ids: Vec<String> = join_all(calls).await.into_iter().map(|r| r.unwrap().into_inner().session.unwrap().id).collect();
    assert!(ids.iter().all(|i| *i == ids[0]), "every renew returns the same new session: {ids:?}");
    let mut db = app.checkout_db().await;
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM checkout_sessions WHERE user_id = 'renewer'").await, 2);
    assert_eq!(
        scalar(&mut db, "SELECT count(*) AS n FROM checkout_sessions WHERE user_id = 'renewer' AND status = 'ACTIVE'").await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn race_concurrent_recovers_create_one_session() {
    let app = spawn_app().await;
    let a = app.create_session("recoverer", "pro-monthly").await;
    app.clock.advance(Duration::hours(30));
    let calls = (0..20).map(|_| {
        let mut c = app.checkout.clone();
        let id = a.id.clone();
        async move { c.recover_session(cpb::RecoverSessionRequest { id, ..Default::default() }).await }
    });
    let ids: Vec<String> = join_all(calls).await.into_iter().map(|r| r.unwrap().into_inner().session.unwrap().id).collect();
    assert!(ids.iter().all(|i| *i == ids[0]), "{ids:?}");
    let mut db = app.checkout_db().await;
    assert_eq!(
        scalar(&mut db, &format!("SELECT count(*) AS n FROM checkout_sessions WHERE recovered_from = '{}'", a.id)).await,
        1
    );
    assert_eq!(
        scalar(&mut db, "SELECT count(*) AS n FROM checkout_sessions WHERE user_id = 'recoverer' AND status = 'ACTIVE'").await,
        1
    );
    // Every recovery of one source asks billing for the one session id
    // derived from it: twenty concurrent recoveries made one order at the
    // gateway, not twenty (nineteen of them withdrawn again).
    let mut billing = app.billing_db().await;
    assert_eq!(
        scalar(&mut billing, "SELECT count(*) AS n FROM orders WHERE user_id = 'recoverer'").await,
        2,
        "the source's and the recovery's"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn race_concurrent_completes_give_one_subscription() {
    let app = spawn_app().await;
    let a = app.create_session("payer", "pro-monthly").await;
    let (p, sig) = app.pay(&a.order_id);
    let calls = (0..20).map(|_| app.complete(&a.id, &p, &sig));
    let results: Vec<_> = join_all(calls).await.into_iter().map(|r| r.unwrap()).collect();
    let sub = results[0].session.as_ref().unwrap().subscription_id.clone();
    assert!(results.iter().all(|r| r.session.as_ref().unwrap().subscription_id == sub));
    assert_eq!(results.iter().filter(|r| !r.replayed).count(), 1, "exactly one call did the completion");
    let mut billing = app.billing_db().await;
    assert_eq!(
        scalar(&mut billing, "SELECT count(*) AS n FROM subscriptions WHERE user_id = 'payer' AND order_id IS NOT NULL").await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn race_renew_recover_complete_on_one_session_stay_consistent() {
    let app = spawn_app().await;
    let a = app.create_session("mixer", "pro-monthly").await;
    let (p, sig) = app.pay(&a.order_id);
    let mut futs: Vec<futures::future::BoxFuture<'_, Result<Option<String>, tonic::Status>>> = Vec::new();
    for i in 0..30 {
        let mut c = app.checkout.clone();
        let id = a.id.clone();
        let (p, sig) = (p.clone(), sig.clone());
        futs.push(Box::pin(async move {
            match i % 3 {
                0 => c
                    .renew_session(cpb::RenewSessionRequest { id, plan_id: "basic-monthly".into(), ..Default::default() })
                    .await
                    .map(|r| r.into_inner().session.map(|s| s.id)),
                1 => c
                    .recover_session(cpb::RecoverSessionRequest { id, ..Default::default() })
                    .await
                    .map(|r| r.into_inner().session.map(|s| s.id)),
                _ => c
                    .complete_session(cpb::CompleteSessionRequest { id, payment_id: p, signature: sig })
                    .await
                    .map(|r| r.into_inner().session.map(|s| s.subscription_id)),
            }
        }));
    }
    let results = join_all(futs).await;
    for (i, r) in results.iter().enumerate() {
        match r {
            Ok(_) => {}
            Err(s) => assert_eq!(s.code(), Code::FailedPrecondition, "call {i}: {s:?}"),
        }
    }
    // One outcome for the payment. Either it reached billing before a renew
    // retired the session: every completion succeeded and agrees. Or the
    // renew retired the session first (its order cancelled, or superseded
    // by the renew's newer order): every completion is refused and the
    // payment is one discrepancy for a refund, never a purchase
    // (docs/design.md, Invariants 7 and 23).
    let completes: Vec<_> = results.iter().enumerate().filter(|(i, _)| i % 3 == 2).map(|(_, r)| r).collect();
    let mut bdb = app.billing_db().await;
    if completes.iter().all(|r| r.is_ok()) {
        let subs: Vec<_> = completes.iter().map(|r| r.as_ref().unwrap().clone()).collect();
        assert!(subs.iter().all(|s| s == &subs[0]));
        assert_eq!(status(&app.get_session(&a.id).await), SessionStatus::Completed);
    } else {
        for r in &completes {
            let e = r.as_ref().unwrap_err();
            let kind = crate::support::precondition_type(e);
            assert!(kind == "ORDER_CANCELLED" || kind == "ORDER_SUPERSEDED", "{e:?}");
        }
        assert_ne!(status(&app.get_session(&a.id).await), SessionStatus::Completed);
        assert_eq!(scalar(&mut bdb, "SELECT count(*) AS n FROM payment_discrepancies").await, 1);
    }
    let renewed: Vec<_> =
        results.iter().enumerate().filter(|(i, r)| i % 3 == 0 && r.is_ok()).map(|(_, r)| r.as_ref().unwrap().clone()).collect();
    assert!(renewed.iter().all(|s| s == &renewed[0]), "all successful renews agree: {renewed:?}");
    assert!(
        scalar(&mut bdb, "SELECT count(*) AS n FROM subscriptions WHERE user_id = 'mixer' AND order_id IS NOT NULL").await <= 1
    );
    let findings = app.reconcile(true).await;
    assert!(
        findings.iter().all(|f| f.kind == "PAYMENT_DISCREPANCY" && f.fixed),
        "only the refused payment, refunded: {findings:?}"
    );
    tests::helpers::assert_ledger_matches_balances(&mut bdb).await;
    let mut db = app.checkout_db().await;
    assert!(
        scalar(&mut db, "SELECT count(*) AS n FROM checkout_sessions WHERE user_id = 'mixer' AND status = 'ACTIVE'").await <= 1
    );
    assert!(
        scalar(&mut db, &format!("SELECT count(*) AS n FROM checkout_sessions WHERE recovered_from = '{}'", a.id)).await <= 1
    );
    assert!(scalar(&mut db, "SELECT count(*) AS n FROM checkout_sessions WHERE user_id = 'mixer'").await <= 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn race_two_cleanup_runs_at_once_count_like_one() {
    let app = spawn_app().await;
    for i in 0..30 {
        app.create_session(&format!("cleanup-{i}"), "basic-monthly").await;
    }
    app.clock.advance(Duration::hours(25));
    let run = || {
        let mut c = app.checkout_admin.clone();
        async move { c.cleanup_sessions(cpb::CleanupSessionsRequest { dry_run: false }).await.unwrap().into_inner() }
    };
    let (a, b) = tokio::join!(run(), run());
    assert_eq!(a.expired + b.expired, 30, "{a:?} {b:?}");
    let mut db = app.checkout_db().await;
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM checkout_sessions WHERE status = 'EXPIRED'").await, 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idempotency_replay_returns_the_identical_response() {
    let mut app = spawn_app().await;
    let req = cpb::CreateSessionRequest { user_id: "idem".into(), plan_id: "pro-monthly".into(), ..Default::default() };
    let first = app.checkout.create_session(with_key(req.clone(), "key-1")).await.unwrap().into_inner();
    app.clock.advance(Duration::minutes(5));
    let second = app.checkout.create_session(with_key(req.clone(), "key-1")).await.unwrap().into_inner();
    assert_eq!(first, second);
    let mut db = app.checkout_db().await;
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM checkout_sessions WHERE user_id = 'idem'").await, 1);
    // Another key is another session.
    let third = app.checkout.create_session(with_key(req, "key-2")).await.unwrap().into_inner();
    assert_ne!(third.session.unwrap().id, first.session.unwrap().id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idempotency_key_reused_with_another_request_is_invalid_argument() {
    let mut app = spawn_app().await;
    let req = |plan: &str| {
        with_key(cpb::CreateSessionRequest { user_id: "idem2".into(), plan_id: plan.into(), ..Default::default() }, "same-key")
    };
    app.checkout.create_session(req("pro-monthly")).await.unwrap();
    let e = app.checkout.create_session(req("basic-monthly")).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(e.get_error_details().error_info().unwrap().reason, "IDEMPOTENCY_KEY_REUSED");
    let mut db = app.checkout_db().await;
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM checkout_sessions WHERE user_id = 'idem2'").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idempotency_same_key_in_flight_is_aborted() {
    use diesel_async::{AsyncConnection, RunQueryDsl};
    let mut app = spawn_app().await;
    // Another request holding the key: an uncommitted claim of it.
    let mut holder = app.checkout_db().await;
    diesel::sql_query("BEGIN").execute(&mut holder).await.unwrap();
    diesel::sql_query(
        "INSERT INTO idempotency_keys (method, key, request_hash, response) VALUES ('checkout.CreateSession', 'busy', '\\x00', '\\x')",
    )
    .execute(&mut holder)
    .await
    .unwrap();
    let e = app
        .checkout
        .create_session(with_key(
            cpb::CreateSessionRequest { user_id: "idem3".into(), plan_id: "pro-monthly".into(), ..Default::default() },
            "busy",
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Aborted, "{e:?}");
    diesel::sql_query("ROLLBACK").execute(&mut holder).await.unwrap();
    let _ = holder.begin_test_transaction().await; // connection stays usable
    let mut db = app.checkout_db().await;
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM checkout_sessions WHERE user_id = 'idem3'").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idempotency_keys_are_purged_after_24h() {
    let mut app = spawn_app().await;
    let req = cpb::CreateSessionRequest { user_id: "idem4".into(), plan_id: "pro-monthly".into(), ..Default::default() };
    app.checkout.create_session(with_key(req, "k")).await.unwrap();
    let mut db = app.checkout_db().await;
    checkout_svc::jobs::run_once(&app.checkout_app, "purge-idempotency-keys").await.unwrap();
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM idempotency_keys").await, 1, "young keys stay");
    app.clock.advance(Duration::hours(25));
    checkout_svc::jobs::run_once(&app.checkout_app, "purge-idempotency-keys").await.unwrap();
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM idempotency_keys").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_reused_after_its_record_was_purged_returns_the_same_session() {
    let mut app = spawn_app().await;
    let req = cpb::CreateSessionRequest { user_id: "idem5".into(), plan_id: "pro-monthly".into(), ..Default::default() };
    let first = app.checkout.create_session(with_key(req.clone(), "old-key")).await.unwrap().into_inner().session.unwrap();
    app.clock.advance(Duration::hours(25));
    checkout_svc::jobs::run_once(&app.checkout_app, "purge-idempotency-keys").await.unwrap();
    let again = app.checkout.create_session(with_key(req, "old-key")).await.unwrap().into_inner().session.unwrap();
    assert_eq!(again.id, first.id);
    let mut db = app.checkout_db().await;
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM checkout_sessions WHERE user_id = 'idem5'").await, 1);
}
