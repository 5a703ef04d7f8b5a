//! Retention and cursors (docs/design.md, "Events", Cursors): the purge
//! deletes a prefix of the stream and moves the retention mark; a cursor
//! the stream cannot resume from is FAILED_PRECONDITION CURSOR_EXPIRED with
//! a usable `oldest_cursor`, never a silent jump; bad requests are
//! INVALID_ARGUMENT naming their field. Event times are the database's
//! (real) time, so the injected clock is set relative to them.
use chrono::{DateTime, Utc};
use diesel_async::RunQueryDsl;
use tests::{
    helpers::{exec, scalar},
    spawn_app,
};
use tonic::Code;
use tonic_types::StatusExt;

use super::*;
use crate::support::precondition_type;

fn time_of(e: &bpb::BillingEvent) -> DateTime<Utc> {
    let t = e.time.unwrap();
    DateTime::from_timestamp(t.seconds, t.nanos as u32).unwrap()
}

async fn list_after(app: &TestApp, after: &str) -> Result<bpb::ListEventsResponse, tonic::Status> {
    let r = bpb::ListEventsRequest { after_cursor: after.into(), page_size: 1000, ..Default::default() };
    billing_events(app).list_events(r).await.map(|r| r.into_inner())
}

fn ids(events: &[bpb::BillingEvent]) -> Vec<&str> {
    events.iter().map(|e| e.event_id.as_str()).collect()
}

/// Asserts CURSOR_EXPIRED and returns its `oldest_cursor`.
fn expired(r: Result<impl std::fmt::Debug, tonic::Status>) -> String {
    let e = r.expect_err("the cursor must be refused");
    assert_eq!((e.code(), precondition_type(&e).as_str()), (Code::FailedPrecondition, "CURSOR_EXPIRED"), "{e:?}");
    let info = e.get_error_details().error_info().cloned().expect("ErrorInfo");
    assert_eq!(info.reason, "CURSOR_EXPIRED");
    let oldest = info.metadata.get("oldest_cursor").cloned().expect("oldest_cursor metadata");
    assert!(oldest.starts_with("ev1-") && oldest.len() == 60, "{oldest}");
    oldest
}

/// A purge with the clock between two purchases: the first one's events go,
/// the mark moves to the last of them; a cursor before the mark is
/// CURSOR_EXPIRED with the mark as `oldest_cursor`, which resumes to exactly
/// the kept events, for ListEvents and WatchEvents alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_purge_deletes_the_old_prefix_and_older_cursors_expire() {
    let app = spawn_app().await;
    app.subscribe("old", "basic-monthly").await;
    let old = list_settled(&app).await;
    let newest_old = old.iter().map(time_of).max().unwrap();
    app.subscribe("new", "basic-monthly").await;
    let all = list_settled(&app).await;
    let kept = &all[old.len()..];
    assert!(kept.iter().all(|e| time_of(e) > newest_old && e.user_id == "new"), "a later transaction has a later time");

    // Retention is 30 days: the cutoff falls right after the old events.
    app.clock.set(newest_old + chrono::Duration::microseconds(1) + chrono::Duration::days(30));
    assert_eq!(app.run_job("purge-events").await, format!("purge-events: {} deleted (older than 30 days)", old.len()));
    assert_eq!(app.run_job("purge-events").await, "purge-events: 0 deleted (older than 30 days)");
    assert_eq!(scalar(&mut app.billing_db().await, "SELECT count(*) AS n FROM events").await as usize, kept.len());
    assert_eq!(ids(&list_settled(&app).await), ids(kept), "an empty cursor starts at the oldest kept");

    let mark = old.last().unwrap().cursor.clone();
    for gone in &old[..old.len() - 1] {
        assert_eq!(expired(list_after(&app, &gone.cursor).await), mark, "oldest_cursor is the retention mark");
    }
    let watch = billing_events(&app)
        .watch_events(bpb::WatchEventsRequest { after_cursor: old[0].cursor.clone(), ..Default::default() })
        .await;
    assert_eq!(expired(watch), mark);

    // The mark itself still resumes: nothing after it was deleted.
    let from_mark = list_after(&app, &mark).await.unwrap();
    assert_eq!((ids(&from_mark.events), from_mark.caught_up), (ids(kept), true));
    let mut w = billing_events(&app)
        .watch_events(bpb::WatchEventsRequest { after_cursor: mark.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ids(&next_events(&mut w, kept.len(), Duration::from_secs(30)).await), ids(kept));
    // A kept event's cursor is untouched by the purge.
    let after_first_kept = list_after(&app, &kept[0].cursor).await.unwrap();
    assert_eq!(ids(&after_first_kept.events), ids(&kept[1..]));
}

/// Everything purged: the stream is empty, its next cursor is the mark, and
/// the events written afterwards come after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_purge_of_everything_leaves_a_mark_to_resume_from() {
    let app = spawn_app().await;
    app.subscribe("gone", "basic-monthly").await;
    let old = list_settled(&app).await;
    app.clock.set(Utc::now() + chrono::Duration::days(31));
    assert_eq!(app.run_job("purge-events").await, format!("purge-events: {} deleted (older than 30 days)", old.len()));
    let mark = old.last().unwrap().cursor.clone();
    let empty = list_after(&app, "").await.unwrap();
    assert_eq!((empty.events.len(), empty.next_cursor.as_str(), empty.caught_up), (0, mark.as_str(), true));
    assert_eq!(expired(list_after(&app, &old[0].cursor).await), mark);

    app.subscribe("later", "basic-monthly").await;
    let now = list_settled(&app).await;
    assert_eq!(types_of(&now, "later").len(), now.len(), "only the later purchase is kept");
    assert_eq!(ids(&list_after(&app, &mark).await.unwrap().events), ids(&now));
}

/// The event at a cursor's position is another one (a restore to an
/// earlier point), or none: CURSOR_EXPIRED. A cursor whose check does not
/// match, and one of checkout's stream (another epoch), too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cursor_whose_event_is_not_there_is_expired() {
    let app = spawn_app().await;
    app.subscribe("restored", "basic-monthly").await;
    app.subscribe("restored-2", "basic-monthly").await;
    let all = list_settled(&app).await;
    let start = list_after(&app, "").await.unwrap();
    assert_eq!(start.events.len(), all.len());

    let mut db = app.billing_db().await;
    exec(&mut db, &format!("UPDATE events SET event_id = gen_random_uuid() WHERE event_id = '{}'", all[2].event_id)).await;
    exec(&mut db, &format!("DELETE FROM events WHERE event_id = '{}'", all[5].event_id)).await;
    let oldest = expired(list_after(&app, &all[2].cursor).await);
    assert_eq!(expired(list_after(&app, &all[5].cursor).await), oldest);
    // Nothing was purged: the oldest cursor is the start, and it resumes.
    let from_oldest = list_after(&app, &oldest).await.unwrap();
    assert_eq!(from_oldest.events.len(), all.len() - 1);
    assert!(list_after(&app, &all[3].cursor).await.is_ok(), "an intact cursor still works");

    // The same position with another check.
    let c = &all[3].cursor;
    let flipped = format!("{}{}", &c[..c.len() - 1], if c.ends_with('0') { '1' } else { '0' });
    expired(list_after(&app, &flipped).await);

    // Checkout's stream has its own epoch: its cursor is not billing's.
    app.create_session("epochs", "basic-monthly").await;
    let checkout = tests::clients::checkout_events_client(&app.checkout_addr.to_string(), SERVICE_TOKEN).unwrap();
    let theirs =
        checkout.clone().list_events(proto::checkout::v1::ListEventsRequest::default()).await.unwrap().into_inner().next_cursor;
    assert_ne!(theirs[4..20], all[0].cursor[4..20], "the two streams' epochs differ");
    expired(list_after(&app, &theirs).await);
    let e = checkout
        .clone()
        .list_events(proto::checkout::v1::ListEventsRequest { after_cursor: all[0].cursor.clone(), ..Default::default() })
        .await;
    expired(e);
}

/// A filter that matches nothing pages no events but a next_cursor past
/// what it scanned: at most 5,000 rows a call, then caught up at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_filter_that_matches_nothing_still_moves_the_cursor() {
    let app = spawn_app().await;
    app.subscribe("someone", "basic-monthly").await;
    // 5,200 more events in one transaction, with a real order payload.
    let mut db = app.billing_db().await;
    diesel::sql_query(
        "SELECT events_emit('ORDER_CREATED', 'order', 'bulk-' || g, 'bulk',
                (SELECT payload FROM events WHERE event_type = 'ORDER_CREATED' LIMIT 1))
           FROM generate_series(1, 5200) g",
    )
    .execute(&mut db)
    .await
    .unwrap();
    let all = list_settled(&app).await;
    assert_eq!(all.len(), 5204);
    let nobody = |after: String, user: &str| bpb::ListEventsRequest {
        after_cursor: after,
        page_size: 1,
        user_id: user.into(),
        types: vec![bpb::BillingEventType::RefundFailed as i32],
    };
    let mut c = billing_events(&app);
    let first = c.list_events(nobody(String::new(), "someone")).await.unwrap().into_inner();
    assert_eq!((first.events.len(), first.next_cursor.as_str(), first.caught_up), (0, all[4999].cursor.as_str(), false));
    let second = c.list_events(nobody(first.next_cursor, "someone")).await.unwrap().into_inner();
    assert_eq!((second.events.len(), second.next_cursor.as_str(), second.caught_up), (0, all[5203].cursor.as_str(), true));
    let again = c.list_events(nobody(second.next_cursor.clone(), "nobody")).await.unwrap().into_inner();
    assert_eq!((again.events.len(), again.next_cursor, again.caught_up), (0, second.next_cursor, true));
}

/// The fields of an INVALID_ARGUMENT's BadRequest.
fn bad_fields(r: Result<impl std::fmt::Debug, tonic::Status>) -> Vec<String> {
    let e = r.expect_err("the request must be refused");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let bad = e.get_error_details().bad_request().cloned().expect("BadRequest");
    bad.field_violations.into_iter().map(|v| v.field).collect()
}

/// A malformed cursor, type 0, an unknown type, a user id too long or
/// blank, a page size out of range: INVALID_ARGUMENT naming the field, for
/// ListEvents and WatchEvents of both services.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_requests_name_their_field() {
    let app = spawn_app().await;
    let mut c = billing_events(&app);
    let list = |after: &str, types: Vec<i32>, user: &str, page_size: i32| bpb::ListEventsRequest {
        after_cursor: after.into(),
        types,
        user_id: user.into(),
        page_size,
    };
    let long = "u".repeat(200);
    let cases: [(bpb::ListEventsRequest, &str); 9] = [
        (list("not-a-cursor", vec![], "", 0), "after_cursor"),
        (list(&format!("ev1-{}", "g".repeat(56)), vec![], "", 0), "after_cursor"),
        (list(&format!("ev1-{}", "0".repeat(55)), vec![], "", 0), "after_cursor"),
        (list("", vec![0], "", 0), "types"),
        (list("", vec![999], "", 0), "types"),
        (list("", vec![], &long, 0), "user_id"),
        (list("", vec![], "   ", 0), "user_id"),
        (list("", vec![], "", -1), "page_size"),
        (list("", vec![], "", 1001), "page_size"),
    ];
    for (req, field) in cases {
        let watch = bpb::WatchEventsRequest {
            after_cursor: req.after_cursor.clone(),
            types: req.types.clone(),
            user_id: req.user_id.clone(),
            from_oldest: false,
        };
        assert_eq!(bad_fields(c.list_events(req.clone()).await), [field], "ListEvents {req:?}");
        if field != "page_size" {
            assert_eq!(bad_fields(c.watch_events(watch.clone()).await), [field], "WatchEvents {watch:?}");
        }
    }
    assert!(c.list_events(list("", vec![], "", 1000)).await.is_ok());
    assert!(c.list_events(list("", vec![1; 64], "", 1)).await.is_ok(), "64 types are allowed");
    assert_eq!(bad_fields(c.list_events(list("", vec![1; 65], "", 1)).await), ["types"]);
    // Every bad field at once, each named.
    assert_eq!(bad_fields(c.list_events(list("x", vec![0], &long, 0)).await), ["after_cursor", "types", "user_id"]);

    let mut checkout = tests::clients::checkout_events_client(&app.checkout_addr.to_string(), SERVICE_TOKEN).unwrap();
    let r = checkout.list_events(proto::checkout::v1::ListEventsRequest { types: vec![6], ..Default::default() }).await;
    assert_eq!(bad_fields(r), ["types"]);
    let r = checkout
        .watch_events(proto::checkout::v1::WatchEventsRequest { after_cursor: "ev1-".into(), ..Default::default() })
        .await;
    assert_eq!(bad_fields(r), ["after_cursor"]);
}

/// 200 random after_cursors, many shaped like cursors (`ev1-` and 56 hex
/// digits, some with this stream's epoch): each is INVALID_ARGUMENT,
/// CURSOR_EXPIRED or a page, never an internal error.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn random_cursors_are_refused_cleanly() {
    use rand::{Rng, SeedableRng, seq::IndexedRandom};
    let app = spawn_app().await;
    app.subscribe("fuzz", "basic-monthly").await;
    let real = list_settled(&app).await.last().unwrap().cursor.clone();
    let seed: u64 = rand::rng().random();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let hex = |rng: &mut rand::rngs::StdRng, n: usize| -> String {
        (0..n).map(|_| *b"0123456789abcdefABCDEF".choose(rng).unwrap() as char).collect()
    };
    let mut c = billing_events(&app);
    let mut outcomes = std::collections::BTreeMap::new();
    for i in 0..200 {
        let cursor = match i % 5 {
            0 => (0..rng.random_range(0..80)).map(|_| rng.random_range(' '..='\u{2fff}')).collect(),
            1 => format!("ev1-{}", hex(&mut rng, 56)),
            2 => {
                let n = rng.random_range(50..62);
                format!("ev1-{}", hex(&mut rng, n))
            }
            // This stream's epoch, a random position and check.
            3 => format!("{}{}", &real[..20], hex(&mut rng, 40)),
            _ => {
                let mut b = real.clone().into_bytes();
                let at = rng.random_range(0..b.len());
                b[at] = *b"0123456789abcdefxz-".choose(&mut rng).unwrap();
                String::from_utf8(b).unwrap()
            }
        };
        let r = c.list_events(bpb::ListEventsRequest { after_cursor: cursor.clone(), page_size: 5, ..Default::default() }).await;
        let outcome = match &r {
            Ok(_) => "OK",
            Err(e) if e.code() == Code::InvalidArgument => "INVALID_ARGUMENT",
            Err(e) if e.code() == Code::FailedPrecondition && precondition_type(e) == "CURSOR_EXPIRED" => "CURSOR_EXPIRED",
            Err(e) => panic!("seed {seed}: {cursor:?} answered {e:?}"),
        };
        *outcomes.entry(outcome).or_insert(0) += 1;
    }
    // Both refusals happen: a random epoch or position is expired, a random
    // string malformed.
    assert!(outcomes.contains_key("INVALID_ARGUMENT") && outcomes.contains_key("CURSOR_EXPIRED"), "seed {seed}: {outcomes:?}");
}
