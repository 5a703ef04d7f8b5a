//! request_id on CreateSession, RenewSession and RecoverSession: a retry
//! after a lost response has exactly one effect (one new session, one order
//! at billing, the customer's session not invalidated by the retry); the
//! deprecated `idempotency-key` header is the same key (docs/design.md,
//! Idempotency).
use chrono::Duration as Days;
use proto::checkout::v1::{self as cpb, SessionStatus};
use tests::{
    TestApp,
    clients::with_key,
    helpers::{retrying, scalar},
    spawn_app,
};
use tonic::{Code, Request};
use uuid::Uuid;

use crate::support::{
    guards::{Holder, reason, spawn_app_holding_rows},
    lost_response::{lose_response, short_deadline, violated_fields, wait_committed},
};

fn create(user: &str, plan: &str, request_id: &str) -> cpb::CreateSessionRequest {
    cpb::CreateSessionRequest { user_id: user.into(), plan_id: plan.into(), request_id: request_id.into() }
}

fn renew(id: &str, plan: &str, request_id: &str) -> cpb::RenewSessionRequest {
    cpb::RenewSessionRequest { id: id.into(), plan_id: plan.into(), request_id: request_id.into(), ..Default::default() }
}

fn recover(id: &str, request_id: &str) -> cpb::RecoverSessionRequest {
    cpb::RecoverSessionRequest { id: id.into(), request_id: request_id.into() }
}

fn sessions_of(user: &str) -> String {
    format!("SELECT count(*) AS n FROM checkout_sessions WHERE user_id = '{user}'")
}

fn orders_of(user: &str) -> String {
    format!("SELECT count(*) AS n FROM orders WHERE user_id = '{user}'")
}

/// Holds `user`'s start lock (the advisory lock every start takes in its
/// transaction), so a start waits after billing made its order.
async fn hold_user(app: &TestApp, user: &str) -> Holder {
    Holder::hold(&app.checkout_db_url, &format!("SELECT pg_advisory_xact_lock(hashtextextended('{user}', 7))")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn create_retried_after_a_lost_response_makes_one_session() {
    let app = spawn_app_holding_rows().await;
    let (mut cdb, mut bdb) = (app.checkout_db().await, app.billing_db().await);
    let req = create("lost-create", "pro-monthly", &Uuid::new_v4().to_string());

    let holder = hold_user(&app, "lost-create").await;
    let (mut c, first) = (app.checkout.clone(), req.clone());
    lose_response(holder, &mut cdb, async move { c.create_session(short_deadline(first)).await.map(|r| r.into_inner()) }).await;
    wait_committed(&mut cdb, &sessions_of("lost-create"), 1).await;

    let r = retrying(|| {
        let (mut c, req) = (app.checkout.clone(), req.clone());
        async move { c.create_session(req).await.map(|r| r.into_inner()) }
    })
    .await
    .expect("the retry answers the committed call");
    let s = r.session.unwrap();
    assert_eq!(s.status, SessionStatus::Active as i32);
    assert!(r.invalidated_session_id.is_empty(), "the retry invalidated nothing");
    assert_eq!(scalar(&mut cdb, &sessions_of("lost-create")).await, 1, "one session");
    assert_eq!(scalar(&mut bdb, &orders_of("lost-create")).await, 1, "one order at billing");
    assert_eq!(app.get_session(&s.id).await.status, SessionStatus::Active as i32, "the session being paid stays ACTIVE");
}

/// The retry comes late: meanwhile the customer changed plan again (a new
/// request_id). The retry replays the lost call's answer; without its key it
/// would renew the new head once more (another plan than the head's), a
/// session the customer never asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn renew_retried_after_a_lost_response_makes_one_new_session() {
    let app = spawn_app_holding_rows().await;
    let s0 = app.create_session("lost-renew", "pro-monthly").await;
    let (mut cdb, mut bdb) = (app.checkout_db().await, app.billing_db().await);
    let req = renew(&s0.id, "basic-monthly", &Uuid::new_v4().to_string());

    let holder = hold_user(&app, "lost-renew").await;
    let (mut c, first) = (app.checkout.clone(), req.clone());
    lose_response(holder, &mut cdb, async move { c.renew_session(short_deadline(first)).await.map(|r| r.into_inner()) }).await;
    wait_committed(&mut cdb, &sessions_of("lost-renew"), 2).await;
    let s1 = app.get_session(&s0.id).await.replaced_by;
    let moved_on = app.checkout.clone().renew_session(renew(&s1, "pro-monthly", &Uuid::new_v4().to_string())).await.unwrap();
    let s2 = moved_on.into_inner().session.unwrap().id;

    let r = retrying(|| {
        let (mut c, req) = (app.checkout.clone(), req.clone());
        async move { c.renew_session(req).await.map(|r| r.into_inner()) }
    })
    .await
    .expect("the retry answers the committed call");
    let answered = r.session.unwrap();
    assert_eq!((answered.id.as_str(), answered.plan_id.as_str()), (s1.as_str(), "basic-monthly"), "the lost call's answer");
    assert_eq!(r.previous.unwrap().id, s0.id);
    assert_eq!(scalar(&mut cdb, &sessions_of("lost-renew")).await, 3, "s0, the lost call's s1, the customer's s2");
    assert_eq!(scalar(&mut bdb, &orders_of("lost-renew")).await, 3);
    assert_eq!(app.get_session(&s2).await.status, SessionStatus::Active as i32, "the customer's session stays ACTIVE");
}

/// RecoverSession is idempotent per source session anyway; with request_id
/// the retry is a replay of the stored answer, one recovery either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn recover_retried_after_a_lost_response_makes_one_new_session() {
    let app = spawn_app_holding_rows().await;
    let s0 = app.create_session("lost-recover", "basic-monthly").await;
    app.clock.advance(Days::hours(25));
    let (mut cdb, mut bdb) = (app.checkout_db().await, app.billing_db().await);
    let req = recover(&s0.id, &Uuid::new_v4().to_string());

    let holder = hold_user(&app, "lost-recover").await;
    let (mut c, first) = (app.checkout.clone(), req.clone());
    lose_response(holder, &mut cdb, async move { c.recover_session(short_deadline(first)).await.map(|r| r.into_inner()) }).await;
    wait_committed(&mut cdb, &sessions_of("lost-recover"), 2).await;

    let r = retrying(|| {
        let (mut c, req) = (app.checkout.clone(), req.clone());
        async move { c.recover_session(req).await.map(|r| r.into_inner()) }
    })
    .await
    .expect("the retry answers the committed call");
    let s1 = r.session.unwrap();
    assert_eq!((s1.status, s1.recovered_from.as_str()), (SessionStatus::Active as i32, s0.id.as_str()));
    assert_eq!(scalar(&mut cdb, &sessions_of("lost-recover")).await, 2, "the expired session and one recovery");
    assert_eq!(scalar(&mut bdb, &orders_of("lost-recover")).await, 2);
}

/// A header that disagrees with request_id is refused on each of the three,
/// before billing is asked: no session, no order, no key.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_header_that_disagrees_with_request_id_is_refused() {
    let app = spawn_app().await;
    let s0 = app.create_session("twokeys", "pro-monthly").await;
    app.clock.advance(Days::hours(25));
    let mut c = app.checkout.clone();
    let (rid, other) = (Uuid::new_v4().to_string(), Uuid::new_v4().to_string());
    let errors = [
        c.create_session(with_key(create("twokeys", "pro-monthly", &rid), &other)).await.map(|_| ()),
        c.renew_session(with_key(renew(&s0.id, "basic-monthly", &rid), &other)).await.map(|_| ()),
        c.recover_session(with_key(recover(&s0.id, &rid), &other)).await.map(|_| ()),
    ];
    for (rpc, r) in ["CreateSession", "RenewSession", "RecoverSession"].iter().zip(errors) {
        let e = r.expect_err(rpc);
        assert_eq!((e.code(), reason(&e).as_str()), (Code::InvalidArgument, "IDEMPOTENCY_KEY_REUSED"), "{rpc}: {e:?}");
        assert_eq!(violated_fields(&e), ["request_id"], "{rpc}");
    }
    let (mut cdb, mut bdb) = (app.checkout_db().await, app.billing_db().await);
    assert_eq!(scalar(&mut cdb, &sessions_of("twokeys")).await, 1);
    assert_eq!(scalar(&mut bdb, &orders_of("twokeys")).await, 1);
    assert_eq!(scalar(&mut cdb, "SELECT count(*) AS n FROM idempotency_keys").await, 0);
}

/// The legacy header alone still dedupes; a caller moving to the field with
/// the same value between retries replays (the request hash leaves
/// request_id out); header and field equal are fine.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_deprecated_header_is_the_same_key() {
    let app = spawn_app().await;
    let mut c = app.checkout.clone();
    let legacy = |k: &str| with_key(create("legacy", "pro-monthly", ""), k);
    let first = c.create_session(legacy("legacy-create-1")).await.unwrap().into_inner().session.unwrap();
    let again = c.create_session(legacy("legacy-create-1")).await.unwrap().into_inner().session.unwrap();
    assert_eq!(again.id, first.id, "header alone: a replay");

    let rid = Uuid::new_v4().to_string();
    let by_header = c.create_session(with_key(create("mover", "pro-monthly", ""), &rid)).await.unwrap().into_inner();
    let by_both: Request<_> = with_key(create("mover", "pro-monthly", &rid), &rid);
    let by_both = c.create_session(by_both).await.unwrap().into_inner();
    let by_field = c.create_session(create("mover", "pro-monthly", &rid)).await.unwrap().into_inner();
    let id = by_header.session.unwrap().id;
    assert_eq!((by_both.session.unwrap().id, by_field.session.unwrap().id), (id.clone(), id));
    let (mut cdb, mut bdb) = (app.checkout_db().await, app.billing_db().await);
    assert_eq!(scalar(&mut cdb, &sessions_of("legacy")).await, 1);
    assert_eq!(scalar(&mut cdb, &sessions_of("mover")).await, 1);
    assert_eq!(scalar(&mut bdb, &orders_of("mover")).await, 1);
}

/// The same request_id with another request is the reused-key error on each
/// of the three, and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_id_reused_for_another_request_is_refused() {
    let app = spawn_app().await;
    let mut c = app.checkout.clone();
    let rid = Uuid::new_v4().to_string();
    let s0 = c.create_session(create("reuser", "pro-monthly", &rid)).await.unwrap().into_inner().session.unwrap();
    let e = c.create_session(create("reuser", "basic-monthly", &rid)).await.expect_err("another plan under a used id");
    assert_eq!((e.code(), reason(&e).as_str()), (Code::InvalidArgument, "IDEMPOTENCY_KEY_REUSED"), "{e:?}");

    let rid = Uuid::new_v4().to_string();
    c.renew_session(renew(&s0.id, "basic-monthly", &rid)).await.unwrap();
    let e = c.renew_session(renew(&s0.id, "pro-monthly", &rid)).await.expect_err("another plan under a used id");
    assert_eq!((e.code(), reason(&e).as_str()), (Code::InvalidArgument, "IDEMPOTENCY_KEY_REUSED"), "{e:?}");

    app.clock.advance(Days::hours(25));
    let rid = Uuid::new_v4().to_string();
    let other = app.create_session("reuser-2", "basic-monthly").await;
    app.clock.advance(Days::hours(25));
    c.recover_session(recover(&s0.id, &rid)).await.unwrap();
    let e = c.recover_session(recover(&other.id, &rid)).await.expect_err("another session under a used id");
    assert_eq!((e.code(), reason(&e).as_str()), (Code::InvalidArgument, "IDEMPOTENCY_KEY_REUSED"), "{e:?}");
    let mut cdb = app.checkout_db().await;
    assert_eq!(scalar(&mut cdb, &sessions_of("reuser")).await, 3, "create, renew, recover: one each");
    assert_eq!(scalar(&mut cdb, &sessions_of("reuser-2")).await, 1, "nothing recovered for the refused request");
}

/// request_id must be a UUID; the refusal comes before billing is asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_id_that_is_not_a_uuid_is_invalid_argument() {
    let app = spawn_app().await;
    let e = app.checkout.clone().create_session(create("sloppy", "pro-monthly", "attempt-1")).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert_eq!(violated_fields(&e), ["request_id"]);
    let mut bdb = app.billing_db().await;
    assert_eq!(scalar(&mut bdb, &orders_of("sloppy")).await, 0);
}
