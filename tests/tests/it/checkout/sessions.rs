//! checkout.v1 end to end: create, renew, recover and complete flows,
//! "visible right after create", cleanup by moving the clock, listing and bad input (races
//! and idempotency keys: races.rs). Both services, real PostgreSQL, real sockets.
use chrono::Duration;
use proto::checkout::v1::{self as cpb, SessionStatus};
use tests::{
    helpers::{code, scalar},
    spawn_app,
};
use tonic::Code;
use tonic_types::StatusExt;

fn status(s: &cpb::Session) -> SessionStatus {
    SessionStatus::try_from(s.status).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn normal_flow_create_pay_complete() {
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
        .list_subscriptions(proto::billing::v1::ListSubscriptionsRequest { user_id: "alice".into(), ..Default::default() })
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
async fn package_change_create_renew_renew_back_complete() {
    let app = spawn_app().await;
    let a = app.create_session("bob", "pro-monthly").await;
    let b = app.renew(&a.id, "basic-monthly").await.unwrap();
    let b_s = b.session.unwrap();
    assert_eq!(b_s.plan_id, "basic-monthly");
    assert_eq!(b_s.amount_minor, 49900);
    assert_eq!(status(&b.previous.unwrap()), SessionStatus::Invalidated);
    let c = app.renew(&b_s.id, "pro-monthly").await.unwrap();
    let c_s = c.session.unwrap();
    assert_eq!(c_s.plan_id, "pro-monthly");
    assert_ne!(c_s.id, a.id);
    // Renewing the first, already replaced session with the current plan
    // returns the current session (the user pressed "back" twice).
    let again = app.renew(&a.id, "pro-monthly").await.unwrap();
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
async fn expired_then_recover_then_complete() {
    let mut app = spawn_app().await;
    let a = app.create_session("carol", "basic-monthly").await;
    app.clock.advance(Duration::hours(25));
    assert_eq!(status(&app.get_session(&a.id).await), SessionStatus::Expired);
    // An expired session cannot be renewed: it must be recovered.
    let e = app.renew(&a.id, "pro-monthly").await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.get_error_details().precondition_failure().is_some());
    let r = app
        .checkout
        .recover_session(cpb::RecoverSessionRequest { id: a.id.clone(), ..Default::default() })
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
        .recover_session(cpb::RecoverSessionRequest { id: a.id.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap();
    assert_eq!(r2.id, r.id, "recovering twice returns the same session");
    let (p, sig) = app.pay(&r.order_id);
    assert_eq!(status(&app.complete(&r.id, &p, &sig).await.unwrap().session.unwrap()), SessionStatus::Completed);
    // A completed session cannot be recovered.
    let e =
        app.checkout.recover_session(cpb::RecoverSessionRequest { id: r.id.clone(), ..Default::default() }).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert_eq!(e.get_error_details().precondition_failure().unwrap().violations[0].r#type, "SESSION_COMPLETED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn recover_refuses_sessions_older_than_seven_days() {
    let mut app = spawn_app().await;
    let a = app.create_session("dave", "basic-monthly").await;
    app.clock.advance(Duration::days(8));
    let e =
        app.checkout.recover_session(cpb::RecoverSessionRequest { id: a.id.clone(), ..Default::default() }).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert_eq!(e.get_error_details().precondition_failure().unwrap().violations[0].r#type, "SESSION_TOO_OLD");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unknown_ids_are_not_found_and_malformed_ids_invalid_argument() {
    let mut app = spawn_app().await;
    let unknown = uuid::Uuid::new_v4().to_string();
    assert_eq!(code(app.checkout.get_session(cpb::GetSessionRequest { id: unknown.clone() }).await), Code::NotFound);
    assert_eq!(
        code(app.checkout.recover_session(cpb::RecoverSessionRequest { id: unknown.clone(), ..Default::default() }).await),
        Code::NotFound
    );
    assert_eq!(
        code(
            app.checkout
                .renew_session(cpb::RenewSessionRequest {
                    id: unknown.clone(),
                    plan_id: "pro-monthly".into(),
                    ..Default::default()
                })
                .await
        ),
        Code::NotFound
    );
    assert_eq!(code(app.complete(&unknown, "pay_x", "00").await), Code::NotFound);
    assert_eq!(code(app.checkout.get_session(cpb::GetSessionRequest { id: "12345".into() }).await), Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn checkout_restart_between_create_and_complete_loses_nothing() {
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
async fn session_is_readable_from_another_connection_the_moment_create_returns() {
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
async fn bad_input_gets_precise_statuses_and_writes_nothing() {
    let mut app = spawn_app().await;
    let long = "x".repeat(129);
    let cases: Vec<(Result<_, tonic::Status>, Code, &str)> = vec![
        (
            app.checkout
                .create_session(cpb::CreateSessionRequest {
                    user_id: String::new(),
                    plan_id: "pro-monthly".into(),
                    ..Default::default()
                })
                .await
                .map(|_| ()),
            Code::InvalidArgument,
            "user_id",
        ),
        (
            app.checkout
                .create_session(cpb::CreateSessionRequest {
                    user_id: long.clone(),
                    plan_id: "pro-monthly".into(),
                    ..Default::default()
                })
                .await
                .map(|_| ()),
            Code::InvalidArgument,
            "user_id",
        ),
        (
            app.checkout
                .create_session(cpb::CreateSessionRequest { user_id: "u".into(), plan_id: String::new(), ..Default::default() })
                .await
                .map(|_| ()),
            Code::InvalidArgument,
            "plan_id",
        ),
        (
            app.checkout
                .create_session(cpb::CreateSessionRequest {
                    user_id: "u".into(),
                    plan_id: "no-such-plan".into(),
                    ..Default::default()
                })
                .await
                .map(|_| ()),
            Code::NotFound,
            "",
        ),
        (
            app.checkout
                .create_session(cpb::CreateSessionRequest { user_id: "u".into(), plan_id: "free".into(), ..Default::default() })
                .await
                .map(|_| ()),
            Code::FailedPrecondition,
            "",
        ),
        (
            app.checkout
                .renew_session(cpb::RenewSessionRequest {
                    id: "nope".into(),
                    plan_id: "pro-monthly".into(),
                    ..Default::default()
                })
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
        .create_session(cpb::CreateSessionRequest {
            user_id: "offline".into(),
            plan_id: "pro-monthly".into(),
            ..Default::default()
        })
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
