//! StartUsageSession's `request_id`: a retry after a lost response starts
//! one metered session, not two; the deprecated `idempotency-key` header is
//! the same key (docs/design.md, Idempotency).
use proto::billing::v1::{self as bpb, UsageKind};
use tests::{
    clients::with_key,
    helpers::{retrying, scalar},
    spawn_app,
};
use tonic::Code;
use uuid::Uuid;

use crate::support::{
    guards::{Holder, reason, spawn_app_holding_rows},
    lost_response::{lose_response, short_deadline, violated_fields, wait_committed},
};

fn start(user: &str, kind: UsageKind, request_id: &str) -> bpb::StartUsageSessionRequest {
    bpb::StartUsageSessionRequest { user_id: user.into(), kind: kind as i32, request_id: request_id.into() }
}

fn sessions_of(user: &str) -> String {
    format!("SELECT count(*) AS n FROM usage_sessions WHERE user_id = '{user}'")
}

/// The first call waits behind the user's subscription row past its
/// deadline; the caller sees DEADLINE_EXCEEDED while the start commits. The
/// retry with the same request_id answers that session: one row, one key.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retry_after_a_lost_response_starts_one_session() {
    let app = spawn_app_holding_rows().await;
    let sub = app.subscribe("retrier", "basic-monthly").await;
    let mut db = app.billing_db().await;
    let rid = Uuid::new_v4().to_string();
    let req = start("retrier", UsageKind::Call, &rid);

    let holder =
        Holder::hold(&app.billing_db_url, &format!("SELECT 1 FROM subscriptions WHERE id = '{}' FOR UPDATE", sub.id)).await;
    let mut b = app.billing.clone();
    let first = req.clone();
    lose_response(holder, &mut db, async move { b.start_usage_session(short_deadline(first)).await.map(|r| r.into_inner()) })
        .await;
    wait_committed(&mut db, &sessions_of("retrier"), 1).await;

    let retried = retrying(|| {
        let (mut b, req) = (app.billing.clone(), req.clone());
        async move { b.start_usage_session(req).await.map(|r| r.into_inner()) }
    })
    .await
    .expect("the retry answers the committed start");
    let session = retried.session.unwrap();
    assert_eq!(scalar(&mut db, &sessions_of("retrier")).await, 1, "one metered session");
    assert_eq!(
        scalar(&mut db, &format!("SELECT count(*) AS n FROM usage_sessions WHERE id = '{}'", session.id)).await,
        1,
        "the retry returns the session the lost call started"
    );
    assert_eq!(
        scalar(
            &mut db,
            &format!("SELECT count(*) AS n FROM idempotency_keys WHERE method = 'billing.StartUsageSession' AND key = '{rid}'")
        )
        .await,
        1
    );
}

/// A header and a field that name two keys for one call are refused
/// before anything starts: either one chosen could start a second session.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_header_that_disagrees_with_request_id_is_refused() {
    let app = spawn_app().await;
    let mut b = app.billing.clone();
    let rid = Uuid::new_v4().to_string();
    let other = Uuid::new_v4().to_string();
    let e = b
        .start_usage_session(with_key(start("twokeys", UsageKind::Text, &rid), &other))
        .await
        .expect_err("two keys for one call");
    assert_eq!((e.code(), reason(&e).as_str()), (Code::InvalidArgument, "IDEMPOTENCY_KEY_REUSED"), "{e:?}");
    assert_eq!(violated_fields(&e), ["request_id"]);
    let mut db = app.billing_db().await;
    assert_eq!(scalar(&mut db, &sessions_of("twokeys")).await, 0);
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM idempotency_keys").await, 0);
}

/// Header and field equal are one key; the header form, the field form and
/// both are the same request (the hash leaves request_id out), so a caller
/// moving from the header to the field between retries replays.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn header_and_field_with_one_value_are_one_key() {
    let app = spawn_app().await;
    let mut b = app.billing.clone();
    let rid = Uuid::new_v4().to_string();
    let by_header =
        b.start_usage_session(with_key(start("mover", UsageKind::Text, ""), &rid)).await.unwrap().into_inner().session.unwrap();
    let by_both =
        b.start_usage_session(with_key(start("mover", UsageKind::Text, &rid), &rid)).await.unwrap().into_inner().session.unwrap();
    let by_field = b.start_usage_session(start("mover", UsageKind::Text, &rid)).await.unwrap().into_inner().session.unwrap();
    assert_eq!((by_both.id.as_str(), by_field.id.as_str()), (by_header.id.as_str(), by_header.id.as_str()));
    let mut db = app.billing_db().await;
    assert_eq!(scalar(&mut db, &sessions_of("mover")).await, 1);
}

/// The legacy form, the header alone (any 1..200 printable ASCII), still
/// dedupes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_deprecated_header_alone_still_dedupes() {
    let app = spawn_app().await;
    let mut b = app.billing.clone();
    let call = || with_key(start("legacy", UsageKind::Call, ""), "legacy-start-1");
    let first = b.start_usage_session(call()).await.unwrap().into_inner().session.unwrap();
    let again = b.start_usage_session(call()).await.unwrap().into_inner().session.unwrap();
    assert_eq!(again.id, first.id);
    let mut db = app.billing_db().await;
    assert_eq!(scalar(&mut db, &sessions_of("legacy")).await, 1);
}

/// The same request_id with another request (another kind) is the reused
/// key error, and starts nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_id_reused_for_another_request_is_refused() {
    let app = spawn_app().await;
    let mut b = app.billing.clone();
    let rid = Uuid::new_v4().to_string();
    b.start_usage_session(start("reuser", UsageKind::Text, &rid)).await.unwrap();
    let e = b.start_usage_session(start("reuser", UsageKind::Call, &rid)).await.expect_err("another request under a used id");
    assert_eq!((e.code(), reason(&e).as_str()), (Code::InvalidArgument, "IDEMPOTENCY_KEY_REUSED"), "{e:?}");
    let mut db = app.billing_db().await;
    assert_eq!(scalar(&mut db, &sessions_of("reuser")).await, 1);
}

/// request_id is a UUID in its hyphenated form; anything else is a field
/// violation and nothing starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_id_that_is_not_a_uuid_is_invalid_argument() {
    let app = spawn_app().await;
    let mut b = app.billing.clone();
    let simple = Uuid::new_v4().simple().to_string();
    for bad in ["retry-1", simple.as_str(), " 6f1c2a4e-8d2b-4c1e-9a57-0b9e3d7c5a10"] {
        let e = b.start_usage_session(start("sloppy", UsageKind::Text, bad)).await.expect_err(bad);
        assert_eq!(e.code(), Code::InvalidArgument, "{bad}: {e:?}");
        assert_eq!(violated_fields(&e), ["request_id"], "{bad}");
    }
    let mut db = app.billing_db().await;
    assert_eq!(scalar(&mut db, &sessions_of("sloppy")).await, 0);
}
