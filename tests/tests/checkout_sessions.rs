#![allow(clippy::unwrap_used, clippy::expect_used)]
//! checkout.v1 end to end: the seed-002 checklist, seed-003's "visible right
//! after create", cleanup by moving the clock, races, idempotency keys and
//! bad input. Both services, real PostgreSQL, real sockets.
use chrono::Duration;
use futures::future::join_all;
use proto::checkout::v1::{self as cpb, SessionStatus};
use tests::{
    clients::with_key,
    helpers::{code, scalar},
    spawn_app,
};
use tonic::Code;
use tonic_types::StatusExt;

fn status(s: &cpb::Session) -> SessionStatus {
    SessionStatus::try_from(s.status).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seed_002_normal_flow_create_pay_complete() {
    let mut app = spawn_app().await;
    let s = app.create_session("alice", "pro-monthly").await;
    assert_eq!(status(&s), SessionStatus::Active);
    assert_eq!(s.amount_minor, 149900);
    assert_eq!(s.currency, "INR");
    let expires = s.expires_at.unwrap().seconds - s.created_at.unwrap().seconds;
    assert_eq!(expires, 24 * 3600);
    let (payment_id, sig) = app.pay(&s.order_id);
    let done = app.complete(&s.id, &payment_id, &sig).await.unwrap();
    let done_s = done.session.unwrap();
    assert_eq!(status(&done_s), SessionStatus::Completed);
    assert!(!done.replayed);
    let subs = app
        .billing
        .list_subscriptions(proto::billing::v1::ListSubscriptionsRequest { user_id: "alice".into() })
        .await
        .unwrap()
        .into_inner()
        .subscriptions;
    assert_eq!(subs.len(), 1);
    assert_eq!(subs[0].id, done_s.subscription_id);
    assert_eq!(subs[0].plan_id, "pro-monthly");
    // A repeat with a wrong signature is refused even though the session is
    // already complete (the signature is checked on every call).
    assert_eq!(app.complete(&s.id, &payment_id, &"00".repeat(32)).await.unwrap_err().code(), Code::InvalidArgument);
    // A repeat is a replay, not a second charge.
    let again = app.complete(&s.id, &payment_id, &sig).await.unwrap();
    assert!(again.replayed);
    assert_eq!(again.session.unwrap().subscription_id, done_s.subscription_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seed_002_package_change_create_renew_renew_back_complete() {
    let mut app = spawn_app().await;
    let a = app.create_session("bob", "pro-monthly").await;
    let b = app
        .checkout
        .renew_session(cpb::RenewSessionRequest { id: a.id.clone(), plan_id: "basic-monthly".into() })
        .await
        .unwrap()
        .into_inner();
    let b_s = b.session.unwrap();
    assert_eq!(b_s.plan_id, "basic-monthly");
    assert_eq!(b_s.amount_minor, 49900);
    assert_eq!(status(&b.previous.unwrap()), SessionStatus::Invalidated);
    let c = app
        .checkout
        .renew_session(cpb::RenewSessionRequest { id: b_s.id.clone(), plan_id: "pro-monthly".into() })
        .await
        .unwrap()
        .into_inner();
    let c_s = c.session.unwrap();
    assert_eq!(c_s.plan_id, "pro-monthly");
    assert_ne!(c_s.id, a.id);
    // Renewing the first, already replaced session with the current plan
    // returns the current session (the user pressed "back" twice).
    let again = app
        .checkout
        .renew_session(cpb::RenewSessionRequest { id: a.id.clone(), plan_id: "pro-monthly".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.session.unwrap().id, c_s.id);
    // The chain is recorded.
    assert_eq!(app.get_session(&a.id).await.replaced_by, b_s.id);
    assert_eq!(app.get_session(&b_s.id).await.replaced_by, c_s.id);
    let (p, sig) = app.pay(&c_s.order_id);
    let done = app.complete(&c_s.id, &p, &sig).await.unwrap().session.unwrap();
    assert_eq!(status(&done), SessionStatus::Completed);
    let mut db = app.checkout_db().await;
    assert_eq!(
        scalar(&mut db, "SELECT count(*) AS n FROM checkout_sessions WHERE user_id = 'bob' AND status = 'ACTIVE'").await,
        0
    );
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM checkout_sessions WHERE user_id = 'bob'").await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seed_002_expired_then_recover_then_complete() {
    let mut app = spawn_app().await;
    let a = app.create_session("carol", "basic-monthly").await;
    app.clock.advance(Duration::hours(25));
    assert_eq!(status(&app.get_session(&a.id).await), SessionStatus::Expired);
    // An expired session cannot be renewed: it must be recovered.
    let e = app
        .checkout
        .renew_session(cpb::RenewSessionRequest { id: a.id.clone(), plan_id: "pro-monthly".into() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.get_error_details().precondition_failure().is_some());
    let r = app
        .checkout
        .recover_session(cpb::RecoverSessionRequest { id: a.id.clone() })
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap();
    assert_eq!(status(&r), SessionStatus::Active);
    assert_eq!(r.recovered_from, a.id);
    assert_eq!(r.expires_at.unwrap().seconds - r.created_at.unwrap().seconds, 24 * 3600);
    let r2 = app
        .checkout
        .recover_session(cpb::RecoverSessionRequest { id: a.id.clone() })
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap();
    assert_eq!(r2.id, r.id, "recovering twice returns the same session");
    let (p, sig) = app.pay(&r.order_id);
    assert_eq!(status(&app.complete(&r.id, &p, &sig).await.unwrap().session.unwrap()), SessionStatus::Completed);
    // A completed session cannot be recovered.
    let e = app.checkout.recover_session(cpb::RecoverSessionRequest { id: r.id.clone() }).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert_eq!(e.get_error_details().precondition_failure().unwrap().violations[0].r#type, "SESSION_COMPLETED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn recover_refuses_sessions_older_than_seven_days() {
    let mut app = spawn_app().await;
    let a = app.create_session("dave", "basic-monthly").await;
    app.clock.advance(Duration::days(8));
    let e = app.checkout.recover_session(cpb::RecoverSessionRequest { id: a.id.clone() }).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert_eq!(e.get_error_details().precondition_failure().unwrap().violations[0].r#type, "SESSION_TOO_OLD");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seed_002_invalid_ids_get_clean_errors() {
    let mut app = spawn_app().await;
    let unknown = uuid::Uuid::new_v4().to_string();
    assert_eq!(code(app.checkout.get_session(cpb::GetSessionRequest { id: unknown.clone() }).await), Code::NotFound);
    assert_eq!(code(app.checkout.recover_session(cpb::RecoverSessionRequest { id: unknown.clone() }).await), Code::NotFound);
    assert_eq!(
        code(app.checkout.renew_session(cpb::RenewSessionRequest { id: unknown.clone(), plan_id: "pro-monthly".into() }).await),
        Code::NotFound
    );
    assert_eq!(code(app.complete(&unknown, "pay_x", "00").await), Code::NotFound);
    assert_eq!(code(app.checkout.get_session(cpb::GetSessionRequest { id: "12345".into() }).await), Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seed_002_restart_between_create_and_complete_loses_nothing() {
    let mut app = spawn_app().await;
    let a = app.create_session("erin", "pro-monthly").await;
    app.restart_checkout().await.unwrap();
    let read = app.get_session(&a.id).await;
    assert_eq!(read.id, a.id);
    assert_eq!(status(&read), SessionStatus::Active);
    let (p, sig) = app.pay(&a.order_id);
    assert_eq!(status(&app.complete(&a.id, &p, &sig).await.unwrap().session.unwrap()), SessionStatus::Completed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seed_003_session_is_readable_the_moment_create_returns() {
    let app = spawn_app().await;
    // A second client (another connection, as another replica would be).
    let mut reader = tests::checkout_client(&app.checkout_addr.to_string(), tests::harness::SERVICE_TOKEN).unwrap();
    for i in 0..20 {
        let s = app.create_session(&format!("reader-{i}"), "basic-monthly").await;
        let got = reader.get_session(cpb::GetSessionRequest { id: s.id.clone() }).await.unwrap().into_inner().session.unwrap();
        assert_eq!(got.id, s.id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cleanup_rules_follow_the_clock() {
    let mut app = spawn_app().await;
    let old = app.create_session("u-old", "basic-monthly").await;
    let paid = app.create_session("u-paid", "basic-monthly").await;
    let (p, sig) = app.pay(&paid.order_id);
    app.complete(&paid.id, &p, &sig).await.unwrap();
    let cleanup = |app: &mut tests::TestApp| {
        let mut c = app.checkout_admin.clone();
        async move { c.cleanup_sessions(cpb::CleanupSessionsRequest { dry_run: false }).await.unwrap().into_inner() }
    };
    app.clock.advance(Duration::hours(23) + Duration::minutes(59));
    let r = cleanup(&mut app).await;
    assert_eq!((r.expired, r.deleted), (0, 0), "23h59m: nothing expires");
    app.clock.advance(Duration::minutes(2));
    // Dry run counts without changing.
    let dry = app.checkout_admin.cleanup_sessions(cpb::CleanupSessionsRequest { dry_run: true }).await.unwrap().into_inner();
    assert_eq!((dry.expired, dry.deleted, dry.dry_run), (1, 0, true));
    let mut db = app.checkout_db().await;
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM checkout_sessions WHERE status = 'EXPIRED'").await, 0);
    let r = cleanup(&mut app).await;
    assert_eq!((r.expired, r.deleted), (1, 0), "24h01m: the unpaid session expires");
    assert_eq!(
        scalar(&mut db, &format!("SELECT count(*) AS n FROM checkout_sessions WHERE id = '{}' AND status = 'EXPIRED'", old.id))
            .await,
        1
    );

    let young = {
        app.clock.advance(Duration::days(2));
        app.create_session("u-young", "basic-monthly").await
    };
    app.clock.advance(Duration::days(6) - Duration::hours(1));
    // Now: `old` is ~8 days old, `young` 6 days, `paid` 8 days but COMPLETED.
    let r = cleanup(&mut app).await;
    assert_eq!(r.deleted, 1, "only the 8-day-old unpaid session is deleted");
    assert_eq!(r.expired, 1, "the 6-day-old session expires but stays");
    assert_eq!(code(app.checkout.get_session(cpb::GetSessionRequest { id: old.id.clone() }).await), Code::NotFound);
    assert_eq!(status(&app.get_session(&young.id).await), SessionStatus::Expired);
    assert_eq!(status(&app.get_session(&paid.id).await), SessionStatus::Completed);
    app.clock.advance(Duration::days(365));
    cleanup(&mut app).await;
    assert_eq!(status(&app.get_session(&paid.id).await), SessionStatus::Completed, "completed sessions are never deleted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn race_50_concurrent_creates_for_one_user_leave_exactly_one_active() {
    let app = spawn_app().await;
    let calls = (0..50).map(|_| {
        let mut c = app.checkout.clone();
        async move { c.create_session(cpb::CreateSessionRequest { user_id: "racer".into(), plan_id: "pro-monthly".into() }).await }
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
    let calls = (0..20).map(|_| {
        let mut c = app.checkout.clone();
        let id = a.id.clone();
        async move { c.renew_session(cpb::RenewSessionRequest { id, plan_id: "basic-monthly".into() }).await }
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
        async move { c.recover_session(cpb::RecoverSessionRequest { id }).await }
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
                    .renew_session(cpb::RenewSessionRequest { id, plan_id: "basic-monthly".into() })
                    .await
                    .map(|r| r.into_inner().session.map(|s| s.id)),
                1 => c.recover_session(cpb::RecoverSessionRequest { id }).await.map(|r| r.into_inner().session.map(|s| s.id)),
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
    // Every completion succeeded (the payment is valid) and agrees.
    let subs: Vec<_> = results.iter().enumerate().filter(|(i, _)| i % 3 == 2).map(|(_, r)| r.as_ref().unwrap().clone()).collect();
    assert!(subs.iter().all(|s| s == &subs[0]));
    let renewed: Vec<_> =
        results.iter().enumerate().filter(|(i, r)| i % 3 == 0 && r.is_ok()).map(|(_, r)| r.as_ref().unwrap().clone()).collect();
    assert!(renewed.iter().all(|s| s == &renewed[0]), "all successful renews agree: {renewed:?}");
    assert_eq!(status(&app.get_session(&a.id).await), SessionStatus::Completed);
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
    let req = cpb::CreateSessionRequest { user_id: "idem".into(), plan_id: "pro-monthly".into() };
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
    let req = |plan: &str| with_key(cpb::CreateSessionRequest { user_id: "idem2".into(), plan_id: plan.into() }, "same-key");
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
        .create_session(with_key(cpb::CreateSessionRequest { user_id: "idem3".into(), plan_id: "pro-monthly".into() }, "busy"))
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
    let req = cpb::CreateSessionRequest { user_id: "idem4".into(), plan_id: "pro-monthly".into() };
    app.checkout.create_session(with_key(req, "k")).await.unwrap();
    let mut db = app.checkout_db().await;
    checkout_svc::jobs::run_once(&app.checkout_app, "purge-idempotency-keys").await.unwrap();
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM idempotency_keys").await, 1, "young keys stay");
    app.clock.advance(Duration::hours(25));
    checkout_svc::jobs::run_once(&app.checkout_app, "purge-idempotency-keys").await.unwrap();
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM idempotency_keys").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_gets_precise_statuses_and_writes_nothing() {
    let mut app = spawn_app().await;
    let long = "x".repeat(129);
    let cases: Vec<(Result<_, tonic::Status>, Code, &str)> = vec![
        (
            app.checkout
                .create_session(cpb::CreateSessionRequest { user_id: String::new(), plan_id: "pro-monthly".into() })
                .await
                .map(|_| ()),
            Code::InvalidArgument,
            "user_id",
        ),
        (
            app.checkout
                .create_session(cpb::CreateSessionRequest { user_id: long.clone(), plan_id: "pro-monthly".into() })
                .await
                .map(|_| ()),
            Code::InvalidArgument,
            "user_id",
        ),
        (
            app.checkout
                .create_session(cpb::CreateSessionRequest { user_id: "u".into(), plan_id: String::new() })
                .await
                .map(|_| ()),
            Code::InvalidArgument,
            "plan_id",
        ),
        (
            app.checkout
                .create_session(cpb::CreateSessionRequest { user_id: "u".into(), plan_id: "no-such-plan".into() })
                .await
                .map(|_| ()),
            Code::NotFound,
            "",
        ),
        (
            app.checkout
                .create_session(cpb::CreateSessionRequest { user_id: "u".into(), plan_id: "free".into() })
                .await
                .map(|_| ()),
            Code::FailedPrecondition,
            "",
        ),
        (
            app.checkout
                .renew_session(cpb::RenewSessionRequest { id: "nope".into(), plan_id: "pro-monthly".into() })
                .await
                .map(|_| ()),
            Code::InvalidArgument,
            "id",
        ),
        (
            app.checkout
                .list_sessions(cpb::ListSessionsRequest { user_id: "u".into(), page_size: 1000, ..Default::default() })
                .await
                .map(|_| ()),
            Code::InvalidArgument,
            "page_size",
        ),
        (
            app.checkout
                .list_sessions(cpb::ListSessionsRequest {
                    user_id: "u".into(),
                    page_token: "garbage".into(),
                    ..Default::default()
                })
                .await
                .map(|_| ()),
            Code::InvalidArgument,
            "page_token",
        ),
    ];
    for (i, (r, want, field)) in cases.into_iter().enumerate() {
        let e = r.expect_err(&format!("case {i} should fail"));
        assert_eq!(e.code(), want, "case {i}: {e:?}");
        if !field.is_empty() {
            let fields: Vec<String> =
                e.get_error_details().bad_request().unwrap().field_violations.iter().map(|f| f.field.clone()).collect();
            assert!(fields.contains(&field.to_owned()), "case {i}: {fields:?}");
        }
    }
    let s = app.create_session("u", "pro-monthly").await;
    let e = app.complete(&s.id, "", "00").await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let (p, _) = app.pay(&s.order_id);
    let e = app.complete(&s.id, &p, &"ab".repeat(32)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "bad signature");
    assert_eq!(e.get_error_details().error_info().unwrap().reason, "BAD_SIGNATURE");
    assert_eq!(status(&app.get_session(&s.id).await), SessionStatus::Active, "a bad signature changes nothing");
    let mut db = app.checkout_db().await;
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM checkout_sessions").await, 1);
    let mut billing = app.billing_db().await;
    assert_eq!(scalar(&mut billing, "SELECT count(*) AS n FROM orders WHERE status = 'PAID'").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn billing_unreachable_means_unavailable_and_no_half_made_session() {
    let mut app = spawn_app().await;
    app.stop_billing().await;
    let e = app
        .checkout
        .create_session(cpb::CreateSessionRequest { user_id: "offline".into(), plan_id: "pro-monthly".into() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.get_error_details().retry_info().is_some());
    let mut db = app.checkout_db().await;
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM checkout_sessions").await, 0);
    app.start_billing_again().await.unwrap();
    let s = app.create_session("offline", "pro-monthly").await;
    assert_eq!(status(&s), SessionStatus::Active);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn list_sessions_pages_newest_first_with_status_filter() {
    let mut app = spawn_app().await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(app.create_session("lister", "basic-monthly").await.id);
        app.clock.advance(Duration::minutes(1));
    }
    let page1 = app
        .checkout
        .list_sessions(cpb::ListSessionsRequest { user_id: "lister".into(), page_size: 2, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page1.sessions.iter().map(|s| s.id.clone()).collect::<Vec<_>>(), vec![ids[4].clone(), ids[3].clone()]);
    let page2 = app
        .checkout
        .list_sessions(cpb::ListSessionsRequest {
            user_id: "lister".into(),
            page_size: 2,
            page_token: page1.next_page_token,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page2.sessions.iter().map(|s| s.id.clone()).collect::<Vec<_>>(), vec![ids[2].clone(), ids[1].clone()]);
    let active = app
        .checkout
        .list_sessions(cpb::ListSessionsRequest {
            user_id: "lister".into(),
            status: SessionStatus::Active as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(active.sessions.len(), 1);
    assert_eq!(active.sessions[0].id, ids[4]);
    assert!(active.next_page_token.is_empty());
}
