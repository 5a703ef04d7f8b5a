//! What CleanupSessions answers when there is nothing to do: the cutoffs it
//! applied and how many sessions it looked at are always set, so a dry run
//! (or a real run) with nothing due is not `{}` in grpcurl (proto3 drops
//! zero values; docs/operations.md §9). A message whose wire encoding is
//! empty is exactly one grpcurl prints as `{}`.
use chrono::Duration;
use prost::Message;
use proto::checkout::v1 as cpb;
use shared::time::to_proto;
use tests::{helpers::scalar, spawn_app};

async fn cleanup(app: &tests::TestApp, dry_run: bool) -> cpb::CleanupSessionsResponse {
    let mut admin = app.checkout_admin.clone();
    admin.cleanup_sessions(cpb::CleanupSessionsRequest { dry_run }).await.unwrap().into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cleanup_with_nothing_to_do_still_shows_its_cutoffs() {
    let app = spawn_app().await;
    // A fresh session is due for nothing.
    app.create_session("c-fresh", "basic-monthly").await;
    for dry_run in [true, false] {
        let r = cleanup(&app, dry_run).await;
        assert_eq!((r.expired, r.deleted, r.completed_by_sync, r.skipped_billing_unavailable), (0, 0, 0, 0), "{r:?}");
        assert_eq!((r.dry_run, r.examined), (dry_run, 0));
        let now = app.clock.now();
        assert_eq!(r.expired_before, Some(to_proto(now)), "expiry is judged at the run's clock");
        assert_eq!(r.deleted_before, Some(to_proto(now - Duration::days(7))), "deletion: created over 7 days before");
        assert!(r.encoded_len() > 0, "dry_run = {dry_run}: not `{{}}` in grpcurl");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dry_run_counts_what_it_looked_at_and_changes_nothing() {
    let app = spawn_app().await;
    let s = app.create_session("c-lapsed", "basic-monthly").await;
    app.clock.advance(Duration::hours(25));
    let dry = cleanup(&app, true).await;
    assert_eq!((dry.expired, dry.deleted, dry.examined, dry.dry_run), (1, 0, 1, true), "{dry:?}");
    assert_eq!(dry.expired_before, Some(to_proto(app.clock.now())));
    let mut db = app.checkout_db().await;
    let active = format!("SELECT count(*) AS n FROM checkout_sessions WHERE id = '{}' AND status = 'ACTIVE'", s.id);
    assert_eq!(scalar(&mut db, &active).await, 1, "a dry run changes nothing");
    let real = cleanup(&app, false).await;
    assert_eq!((real.expired, real.examined, real.dry_run), (1, 1, false), "{real:?}");
    assert_eq!(scalar(&mut db, &active).await, 0);
    // Expired now and not yet 7 days old: nothing is due any more.
    let again = cleanup(&app, true).await;
    assert_eq!((again.expired, again.deleted, again.examined), (0, 0, 0), "{again:?}");
}
