//! A server that shuts down ends its watchers' streams with a final
//! bookmark and OK, so they resume from it elsewhere (docs/design.md,
//! Events: watching).
use tests::spawn_app;

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_ends_a_stream_with_a_bookmark_and_ok() {
    let mut app = spawn_app().await;
    let after_cursor = settled_cursor(&app).await;
    let mut watch = billing_events(&app)
        .watch_events(bpb::WatchEventsRequest { after_cursor, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    app.subscribe("before-shutdown", "basic-monthly").await;
    let got = next_events(&mut watch, 4, Duration::from_secs(10)).await;
    let last_event = got.last().unwrap().cursor.clone();

    app.stop_billing().await;
    let mut last = None;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), watch.message()).await.expect("the stream ends") {
            Ok(Some(m)) => last = m.item,
            Ok(None) => break,
            Err(s) => panic!("the stream failed instead of ending OK: {s:?}"),
        }
    }
    let Some(Item::Bookmark(b)) = last else { panic!("the last message is not a bookmark: {last:?}") };
    assert_eq!(b.cursor, last_event, "the final bookmark is where the watcher got to");
    assert!(b.caught_up);

    // Resuming from it elsewhere (here: the restarted server) misses nothing.
    app.start_billing_again().await.unwrap();
    app.subscribe("after-shutdown", "basic-monthly").await;
    let (rest, _) = list_after(&app, b.cursor).await;
    assert!(
        !rest.is_empty() && rest.iter().all(|e| e.user_id == "after-shutdown"),
        "{:?}",
        rest.iter().map(type_name).collect::<Vec<_>>()
    );
}
