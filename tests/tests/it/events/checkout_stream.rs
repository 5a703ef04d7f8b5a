//! CheckoutEventService (docs/design.md, "Events"): a watcher of checkout's
//! stream gets each session's events as the RPCs and the cleanup job make
//! them, with the session as GetSession shows it.
use chrono::Duration as Days;
use proto::checkout::v1::{self as cpb, watch_events_response::Item as CItem};
use tests::{clients::checkout_events_client, helpers::scalar, spawn_app};

use super::*;

fn checkout_events(app: &TestApp) -> tests::clients::CheckoutEventsClient {
    checkout_events_client(&app.checkout_addr.to_string(), SERVICE_TOKEN).unwrap()
}

fn ctype(e: &cpb::CheckoutEvent) -> &'static str {
    cpb::CheckoutEventType::try_from(e.r#type).map(|t| t.as_str_name()).unwrap_or("?").trim_start_matches("CHECKOUT_EVENT_TYPE_")
}

/// Every checkout event once all committed ones settled (see
/// [`super::list_settled`]).
async fn list_checkout_settled(app: &TestApp) -> Vec<cpb::CheckoutEvent> {
    let mut c = checkout_events(app);
    let (mut out, mut after) = (Vec::new(), String::new());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let r = c
            .list_events(cpb::ListEventsRequest { after_cursor: after.clone(), page_size: 50, ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        let empty = r.events.is_empty();
        out.extend(r.events);
        after = r.next_cursor;
        if empty && r.caught_up {
            return out;
        }
        if empty {
            assert!(tokio::time::Instant::now() < deadline, "checkout's stream did not settle within 30 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Reads `want` events (bookmarks skipped) within 30 s.
async fn next_checkout_events(stream: &mut tonic::Streaming<cpb::WatchEventsResponse>, want: usize) -> Vec<cpb::CheckoutEvent> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while out.len() < want {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(Ok(m))) => {
                if let Some(CItem::Event(e)) = m.item {
                    out.push(e);
                }
            }
            Ok(other) => panic!("stream ended: {other:?}"),
            Err(_) => panic!("only {} of {want} events: {:?}", out.len(), out.iter().map(ctype).collect::<Vec<_>>()),
        }
    }
    out
}

fn session_of(e: &cpb::CheckoutEvent) -> &cpb::Session {
    match &e.payload {
        Some(cpb::checkout_event::Payload::Session(s)) => s,
        None => panic!("no payload: {e:?}"),
    }
}

/// Created, renewed to another plan (the old one INVALIDATED, a new one
/// CREATED), completed; another created, expired by the cleanup job past
/// 24 h, then recovered.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_checkout_watcher_sees_every_session_event() {
    let app = spawn_app().await;
    let mut w = checkout_events(&app)
        .watch_events(cpb::WatchEventsRequest { user_id: "shopper".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let first = w.next().await.unwrap().unwrap();
    assert!(matches!(first.item, Some(CItem::Bookmark(_))), "a bookmark comes first: {first:?}");

    let a = app.create_session("shopper", "basic-monthly").await;
    let b = app.renew(&a.id, "pro-monthly").await.unwrap().session.unwrap();
    let (p, sig) = app.pay(&b.order_id);
    app.complete(&b.id, &p, &sig).await.unwrap();
    let c = app.create_session("shopper", "pro-monthly").await;
    app.clock.advance(Days::hours(25));
    let out = checkout_svc::jobs::run_once(&app.checkout_app, "cleanup").await.unwrap();
    assert!(out.contains("expired 1 "), "{out}");
    let r = app
        .checkout
        .clone()
        .recover_session(cpb::RecoverSessionRequest { id: c.id.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap();

    let got = next_checkout_events(&mut w, 7).await;
    let seen: Vec<(&str, &str)> = got.iter().map(|e| (e.entity_id.as_str(), ctype(e))).collect();
    assert_eq!(
        seen,
        [
            (a.id.as_str(), "SESSION_CREATED"),
            (a.id.as_str(), "SESSION_INVALIDATED"),
            (b.id.as_str(), "SESSION_CREATED"),
            (b.id.as_str(), "SESSION_COMPLETED"),
            (c.id.as_str(), "SESSION_CREATED"),
            (c.id.as_str(), "SESSION_EXPIRED"),
            (r.id.as_str(), "SESSION_RECOVERED"),
        ]
    );
    // Each event's payload is the session after the change; the last one of
    // each session is what GetSession shows now.
    let statuses: Vec<i32> = got.iter().map(|e| session_of(e).status).collect();
    use cpb::SessionStatus as S;
    assert_eq!(
        statuses,
        [S::Active, S::Invalidated, S::Active, S::Completed, S::Active, S::Expired, S::Active].map(|s| s as i32)
    );
    for e in &got {
        assert_eq!((e.user_id.as_str(), e.entity_kind.as_str()), ("shopper", "checkout_session"));
    }
    for id in [&a.id, &b.id, &c.id, &r.id] {
        let last = got.iter().rev().find(|e| &e.entity_id == id).unwrap();
        let now = app.get_session(id).await;
        let s = session_of(last);
        assert_eq!(
            (s.status, &s.plan_id, &s.order_id, &s.replaced_by, &s.recovered_from, &s.subscription_id),
            (now.status, &now.plan_id, &now.order_id, &now.replaced_by, &now.recovered_from, &now.subscription_id),
            "session {id}"
        );
    }
    assert_eq!(session_of(&got[6]).recovered_from, c.id);

    // The stream as ListEvents pages it: the same events, versions 1, 2...
    // per session, and every stored row.
    let all = list_checkout_settled(&app).await;
    assert_eq!(all, got, "the watcher saw exactly what ListEvents pages");
    let mut versions = std::collections::HashMap::new();
    for e in &all {
        let v = versions.entry(e.entity_id.clone()).or_insert(0);
        assert_eq!(e.entity_version, *v + 1, "{} {}", e.entity_id, ctype(e));
        *v = e.entity_version;
    }
    let stored = scalar(&mut app.checkout_db().await, "SELECT count(*) AS n FROM events").await;
    assert_eq!(stored as usize, all.len());
}

/// A second CreateSession of the user replaces the first; recovering a
/// session that only time expired (no cleanup ran yet).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_create_and_a_recovery_without_cleanup() {
    let app = spawn_app().await;
    let a = app.create_session("twice", "basic-monthly").await;
    let b = app.create_session("twice", "pro-monthly").await;
    app.clock.advance(Days::hours(25));
    let r = app
        .checkout
        .clone()
        .recover_session(cpb::RecoverSessionRequest { id: b.id.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap();
    let all = list_checkout_settled(&app).await;
    let seen: Vec<(&str, &str)> = all.iter().map(|e| (e.entity_id.as_str(), ctype(e))).collect();
    assert_eq!(
        seen,
        [
            (a.id.as_str(), "SESSION_CREATED"),
            (a.id.as_str(), "SESSION_INVALIDATED"),
            (b.id.as_str(), "SESSION_CREATED"),
            // RecoverSession records the expiry that only time had made.
            (b.id.as_str(), "SESSION_EXPIRED"),
            (r.id.as_str(), "SESSION_RECOVERED"),
        ]
    );
    assert_eq!(session_of(&all[1]).replaced_by, b.id, "the INVALIDATED payload names its replacement");
    assert_eq!(session_of(&all[4]).plan_id, "pro-monthly");
}
