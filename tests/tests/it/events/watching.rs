//! WatchEvents (docs/design.md, "Events", Watching): a bookmark first,
//! bookmarks that move a filtered watcher's cursor past what it skips,
//! filters that deliver exactly what matches, a stream that ends on its own
//! with a final bookmark and OK, and a replay from the oldest event.
use std::time::Instant;

use tests::{harness::Options, spawn_app_with};

use super::*;

/// Bookmarks every 200 ms; streams live `max_age`.
fn options(max_age: Duration) -> Options {
    let d = Options::default();
    Options {
        events: shared::config::EventsConfig {
            bookmark_every: Duration::from_millis(200),
            stream_max_age: max_age,
            ..d.events.clone()
        },
        ..d
    }
}

type Stream = tonic::Streaming<bpb::WatchEventsResponse>;

async fn watch(app: &TestApp, req: bpb::WatchEventsRequest) -> Stream {
    billing_events(app).watch_events(req).await.unwrap().into_inner()
}

async fn next_item(stream: &mut Stream, within: Duration) -> Option<Item> {
    match tokio::time::timeout(within, stream.next()).await {
        Ok(Some(Ok(m))) => Some(m.item.expect("a message carries an item")),
        Ok(Some(Err(s))) => panic!("the stream failed: {s:?}"),
        Ok(None) => None,
        Err(_) => panic!("nothing within {within:?}"),
    }
}

async fn first_bookmark(stream: &mut Stream) -> bpb::EventBookmark {
    match next_item(stream, Duration::from_secs(10)).await {
        Some(Item::Bookmark(b)) => b,
        other => panic!("the first message must be a bookmark: {other:?}"),
    }
}

/// The events a watcher sends until a bookmark at or past `cursor` (cursors
/// of one stream sort as their text: fixed-width big-endian hex), at most
/// 30 s.
async fn events_until(stream: &mut Stream, cursor: &str) -> Vec<bpb::BillingEvent> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match next_item(stream, left).await {
            Some(Item::Event(e)) => out.push(e),
            Some(Item::Bookmark(b)) if b.cursor.as_str() >= cursor => return out,
            Some(Item::Bookmark(_)) => {}
            None => panic!("the stream ended before {cursor}"),
        }
    }
}

fn ids(events: &[bpb::BillingEvent]) -> Vec<&str> {
    events.iter().map(|e| e.event_id.as_str()).collect()
}

/// A watcher whose filter matches nothing gets a bookmark first, then
/// bookmarks whose cursor moves past the events it skips: resuming from the
/// last one returns nothing older.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watcher_that_matches_nothing_still_moves_its_cursor() {
    let app = spawn_app_with(options(Duration::from_secs(60))).await;
    app.subscribe("before", "basic-monthly").await;
    let before = list_settled(&app).await;
    let mut w = watch(&app, bpb::WatchEventsRequest { user_id: "nobody".into(), ..Default::default() }).await;
    let first = first_bookmark(&mut w).await;
    assert_eq!(first.cursor, before.last().unwrap().cursor, "from now: after the last settled event");

    app.subscribe("skipped-1", "basic-monthly").await;
    app.subscribe("skipped-2", "pro-monthly").await;
    let all = list_settled(&app).await;
    let last = all.last().unwrap().cursor.clone();
    assert!(last > first.cursor);
    let mut seen = first.cursor.clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let bookmark = loop {
        match next_item(&mut w, deadline.saturating_duration_since(tokio::time::Instant::now())).await {
            Some(Item::Bookmark(b)) => {
                assert!(b.cursor >= seen, "a bookmark went back: {} after {seen}", b.cursor);
                seen = b.cursor.clone();
                if b.cursor == last {
                    break b;
                }
            }
            other => panic!("the filter matches nothing, yet: {other:?}"),
        }
    };
    assert!(bookmark.caught_up, "nothing is left after the last event: {bookmark:?}");
    let r = billing_events(&app)
        .list_events(bpb::ListEventsRequest { after_cursor: bookmark.cursor.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert!(
        r.events.is_empty(),
        "nothing before the bookmark comes back: {:?}",
        r.events.iter().map(type_name).collect::<Vec<_>>()
    );
    assert_eq!((r.next_cursor, r.caught_up), (bookmark.cursor, true));
}

/// A type filter, a user filter and both at once: each watcher gets exactly
/// the matching events, in stream order, and ListEvents with the same
/// filters pages the same ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn type_and_user_filters_deliver_exactly_the_matching_events() {
    let app = spawn_app_with(options(Duration::from_secs(60))).await;
    app.subscribe("carol", "basic-monthly").await;
    let start = list_settled(&app).await.last().unwrap().cursor.clone();
    let types = vec![bpb::BillingEventType::OrderPaid as i32, bpb::BillingEventType::UsageSessionStarted as i32];
    let filters = [
        bpb::WatchEventsRequest { types: types.clone(), ..Default::default() },
        bpb::WatchEventsRequest { user_id: "carol".into(), ..Default::default() },
        bpb::WatchEventsRequest { types: types.clone(), user_id: "carol".into(), ..Default::default() },
    ];
    let mut watchers = Vec::new();
    for f in &filters {
        let mut w = watch(&app, f.clone()).await;
        assert_eq!(first_bookmark(&mut w).await.cursor, start);
        watchers.push(w);
    }
    app.subscribe("dave", "basic-monthly").await;
    for _ in 0..2 {
        let s = app.start_usage("carol", bpb::UsageKind::Text).await.unwrap();
        app.end_usage(&s.id, 0).await.unwrap();
    }
    app.subscribe("erin", "basic-monthly").await;
    let all = list_settled(&app).await;
    let after: Vec<bpb::BillingEvent> = all.into_iter().filter(|e| e.cursor > start).collect();
    let last = after.last().unwrap().cursor.clone();
    let names = ["ORDER_PAID", "USAGE_SESSION_STARTED"];
    let matching = |f: &bpb::WatchEventsRequest| -> Vec<&str> {
        let by_type = |e: &bpb::BillingEvent| f.types.is_empty() || names.contains(&type_name(e));
        let by_user = |e: &bpb::BillingEvent| f.user_id.is_empty() || e.user_id == f.user_id;
        after.iter().filter(|e| by_type(e) && by_user(e)).map(|e| e.event_id.as_str()).collect()
    };
    let wanted: Vec<Vec<&str>> = filters.iter().map(matching).collect();
    let counts: Vec<usize> = wanted.iter().map(Vec::len).collect();
    assert_eq!(counts, [4, 4, 2], "{:?}", after.iter().map(|e| (e.user_id.as_str(), type_name(e))).collect::<Vec<_>>());

    for ((w, f), want) in watchers.iter_mut().zip(&filters).zip(&wanted) {
        let got = events_until(w, &last).await;
        assert_eq!(&ids(&got), want, "filter {f:?}");
        let listed = billing_events(&app)
            .list_events(bpb::ListEventsRequest {
                after_cursor: start.clone(),
                types: f.types.clone(),
                user_id: f.user_id.clone(),
                page_size: 1000,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(&ids(&listed.events), want, "ListEvents, filter {f:?}");
        assert_eq!((listed.next_cursor.as_str(), listed.caught_up), (last.as_str(), true));
    }
}

/// A stream ends on its own after its maximum age: a final bookmark, then
/// OK. What it delivered and what ListEvents pages after its final cursor
/// are the whole stream, nothing twice and nothing missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stream_ends_after_its_max_age_with_a_final_bookmark() {
    let app = spawn_app_with(options(Duration::from_millis(1500))).await;
    let started = Instant::now();
    let mut w = watch(&app, bpb::WatchEventsRequest::default()).await;
    first_bookmark(&mut w).await;
    app.subscribe("during", "basic-monthly").await;
    let (mut delivered, mut last_item) = (Vec::new(), None);
    while let Some(item) = next_item(&mut w, Duration::from_secs(15)).await {
        if let Item::Event(e) = &item {
            delivered.push(e.clone());
        }
        last_item = Some(item);
    }
    let lived = started.elapsed();
    assert!(lived >= Duration::from_millis(1500) && lived < Duration::from_secs(10), "the stream lived {lived:?}");
    let Some(Item::Bookmark(last)) = last_item else { panic!("the last message must be a bookmark: {last_item:?}") };
    if let Some(e) = delivered.last() {
        assert!(last.cursor >= e.cursor, "the final bookmark is past the last event sent");
    }

    app.subscribe("after", "basic-monthly").await;
    let all = list_settled(&app).await;
    let mut c = billing_events(&app);
    let rest = c
        .list_events(bpb::ListEventsRequest { after_cursor: last.cursor.clone(), page_size: 1000, ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .events;
    let joined: Vec<&str> = ids(&delivered).into_iter().chain(ids(&rest)).collect();
    assert_eq!(joined, ids(&all), "delivered + after the final cursor = the whole stream");
    assert_eq!(types_of(&rest, "after").len(), 4, "the later purchase comes after the final cursor");
    assert!(types_of(&delivered, "after").is_empty());
}

/// `from_oldest` replays every event kept, then follows new ones; a watcher
/// resumed from an event's cursor gets exactly the events after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn from_oldest_replays_everything_then_follows() {
    let app = spawn_app_with(options(Duration::from_secs(60))).await;
    app.subscribe("old-1", "basic-monthly").await;
    app.subscribe("old-2", "pro-monthly").await;
    let all = list_settled(&app).await;
    let mut w = watch(&app, bpb::WatchEventsRequest { from_oldest: true, ..Default::default() }).await;
    let first = first_bookmark(&mut w).await;
    let from_first = billing_events(&app)
        .list_events(bpb::ListEventsRequest { after_cursor: first.cursor, page_size: 1000, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ids(&from_first.events), ids(&all), "the first bookmark is before the oldest event");
    let replayed = next_events(&mut w, all.len(), Duration::from_secs(30)).await;
    assert_eq!(ids(&replayed), ids(&all));
    assert_eq!(replayed, all, "the same messages as ListEvents, payloads included");

    app.subscribe("new-1", "basic-monthly").await;
    let new = next_events(&mut w, 4, Duration::from_secs(30)).await;
    assert_eq!(types_of(&new, "new-1").len(), 4, "{:?}", new.iter().map(type_name).collect::<Vec<_>>());

    let mid = &all[all.len() / 2];
    let mut resumed = watch(&app, bpb::WatchEventsRequest { after_cursor: mid.cursor.clone(), ..Default::default() }).await;
    assert_eq!(first_bookmark(&mut resumed).await.cursor, mid.cursor, "the first bookmark is where it resumes");
    let everything = list_settled(&app).await;
    let at = everything.iter().position(|e| e.event_id == mid.event_id).unwrap();
    let got = next_events(&mut resumed, everything.len() - at - 1, Duration::from_secs(30)).await;
    assert_eq!(ids(&got), ids(&everything[at + 1..]));
}
