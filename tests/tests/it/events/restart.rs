//! A watcher follows billing's stream while purchases, usage sessions with
//! Deducts that cross the credit thresholds, and transactions that roll back
//! run; billing stops and starts again mid-load, the watcher resumes from the
//! last cursor it received, and in the end it has every stored event exactly
//! once, in stream order, with versions that climb (docs/design.md,
//! "Events": cursors, at least once, a gap-free order).
use std::sync::Arc;

use billing_svc::gateway::Sandbox;
use diesel::{QueryableByName, sql_types};
use diesel_async::{AsyncPgConnection, SimpleAsyncConnection};
use shared::events::{Cursor, Position};
use tests::{BillingClient, harness::Options, spawn_app_with};
use tokio::sync::watch;
use tonic::{Code, Status};

use super::*;

#[derive(QueryableByName)]
struct Id {
    #[diesel(sql_type = sql_types::Text)]
    id: String,
}

#[derive(QueryableByName)]
struct Pos {
    #[diesel(sql_type = sql_types::BigInt)]
    xid: i64,
    #[diesel(sql_type = sql_types::BigInt)]
    seq: i64,
}

/// The `id` column of `sql`'s rows (`SELECT event_id::text AS id ...`), in
/// its order.
pub(crate) async fn texts(db: &mut AsyncPgConnection, sql: &str) -> Vec<String> {
    // (RunQueryDsl by path: its `load` would shadow the atomics' here.)
    diesel_async::RunQueryDsl::load::<Id>(diesel::sql_query(sql), db).await.unwrap().into_iter().map(|r| r.id).collect()
}

/// The position of the last stored event in stream order.
pub(crate) async fn last_position(db: &mut AsyncPgConnection) -> Position {
    let last = diesel::sql_query("SELECT xid::text::bigint AS xid, seq FROM events ORDER BY xid DESC, seq DESC LIMIT 1");
    let p: Pos = diesel_async::RunQueryDsl::get_result(last, db).await.unwrap();
    Position { xid: p.xid as u64, seq: p.seq }
}

pub(crate) fn position(cursor: &str) -> Position {
    Cursor::parse(cursor).unwrap_or_else(|e| panic!("{cursor:?}: {e}")).pos
}

/// What a call gets while billing is away (stopping, stopped, starting):
/// UNAVAILABLE, or a status the client's transport made (a call that met
/// the stopping server's GOAWAY comes back INTERNAL, unprocessed).
fn transient(s: &Status) -> bool {
    s.code() == Code::Unavailable || shared::client::is_transport_failure(s)
}

/// Retries `call` while billing is away (stopping, stopped, starting): the
/// statuses a restart gives a caller. Any other error fails the test.
async fn through_restart<T, F, Fut>(what: &str, mut call: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Status>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match call().await {
            Ok(v) => return v,
            Err(s) if transient(&s) => {
                assert!(tokio::time::Instant::now() < deadline, "{what}: billing did not come back: {s:?}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(s) => panic!("{what}: {s:?}"),
        }
    }
}

/// A purchase through CreateOrder + VerifyPayment (the same payment again
/// after a failure: VerifyPayment is idempotent).
async fn purchase(b: &BillingClient, gateway: &Sandbox, user: &str, plan: &str) {
    let req = bpb::CreateOrderRequest {
        checkout_session_id: uuid::Uuid::new_v4().to_string(),
        user_id: user.into(),
        plan_id: plan.into(),
    };
    let order = through_restart("CreateOrder", || {
        let (mut b, req) = (b.clone(), req.clone());
        async move { b.create_order(req).await }
    })
    .await
    .into_inner()
    .order
    .unwrap();
    let payment_id = Sandbox::new_payment_id();
    let req =
        bpb::VerifyPaymentRequest { signature: gateway.sign_payment(&order.id, &payment_id), order_id: order.id, payment_id };
    through_restart("VerifyPayment", || {
        let (mut b, req) = (b.clone(), req.clone());
        async move { b.verify_payment(req).await }
    })
    .await;
}

/// Where the load waits halfway until billing's restart begins, so that
/// the restart comes in the middle of it.
#[derive(Clone)]
struct Halfway {
    arrived: Arc<watch::Sender<usize>>,
    go: watch::Receiver<bool>,
}

impl Halfway {
    async fn wait(&mut self) {
        self.arrived.send_modify(|n| *n += 1);
        self.go.wait_for(|go| *go).await.unwrap();
    }
}

/// A usage session of `user` charged `calls` × `units` (crossing the
/// period's credit thresholds; the load's halfway point after `pause_at`
/// calls), then ended.
async fn use_credits(b: &BillingClient, user: &str, calls: usize, units: i64, pause_at: usize, mut halfway: Halfway) {
    let req = bpb::StartUsageSessionRequest {
        user_id: user.into(),
        kind: bpb::UsageKind::Text as i32,
        request_id: uuid::Uuid::new_v4().to_string(),
    };
    let session = through_restart("StartUsageSession", || {
        let (mut b, req) = (b.clone(), req.clone());
        async move { b.start_usage_session(req).await }
    })
    .await
    .into_inner()
    .session
    .unwrap();
    for i in 0..calls {
        if i == pause_at {
            halfway.wait().await;
        }
        let req = bpb::DeductRequest { usage_session_id: session.id.clone(), deduction_id: format!("{user}-{i}"), units };
        through_restart("Deduct", || {
            let (mut b, req) = (b.clone(), req.clone());
            async move { b.deduct(req).await }
        })
        .await;
    }
    let req = bpb::EndUsageSessionRequest { id: session.id, manual_deductions: 0 };
    through_restart("EndUsageSession", || {
        let (mut b, req) = (b.clone(), req.clone());
        async move { b.end_usage_session(req).await }
    })
    .await;
}

/// What the watcher saw.
struct Watched {
    events: Vec<bpb::BillingEvent>,
    /// WatchEvents calls that were answered (1 + reconnections).
    streams: usize,
}

/// Follows billing's stream from the oldest event, reconnecting after each
/// end or break with the last cursor it received (an event's or a
/// bookmark's), until a caught-up bookmark at or past `until` (sent once the
/// load is over).
async fn follow(addr: String, received: Arc<watch::Sender<usize>>, mut until: watch::Receiver<Option<Position>>) -> Watched {
    let mut client = tests::clients::billing_events_client(&addr, SERVICE_TOKEN).unwrap();
    let (mut cursor, mut out) = (String::new(), Watched { events: Vec::new(), streams: 0 });
    loop {
        let req = bpb::WatchEventsRequest { from_oldest: cursor.is_empty(), after_cursor: cursor.clone(), ..Default::default() };
        let mut stream = match client.watch_events(req).await {
            Ok(s) => s.into_inner(),
            Err(s) if transient(&s) => {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            Err(s) => panic!("WatchEvents after {cursor:?}: {s:?}"),
        };
        out.streams += 1;
        loop {
            let msg = tokio::select! {
                m = stream.next() => m,
                // Nothing comes while the load is over and the watcher is
                // not caught up yet: look at the target again.
                _ = until.changed() => continue,
            };
            let Some(Ok(msg)) = msg else { break };
            match msg.item {
                Some(Item::Event(e)) => {
                    cursor = e.cursor.clone();
                    out.events.push(e);
                    received.send_modify(|n| *n += 1);
                }
                Some(Item::Bookmark(b)) => {
                    cursor = b.cursor;
                    let target = *until.borrow();
                    if b.caught_up && target.is_some_and(|t| position(&cursor) >= t) {
                        return out;
                    }
                }
                None => panic!("an empty WatchEventsResponse"),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watcher_resumes_across_a_restart_with_every_event_once() {
    let mut opts = Options::patient();
    // Idle bookmarks soon after the last event: the end of the test.
    opts.events.bookmark_every = Duration::from_millis(200);
    let mut app = spawn_app_with(opts).await;
    app.subscribe("rs-held", "basic-monthly").await;
    let received = Arc::new(watch::Sender::new(0usize));
    let (target_tx, target_rx) = watch::channel(None);
    let watcher = tokio::spawn(follow(app.billing_addr.to_string(), received.clone(), target_rx));

    // The load: purchases (each user's later ones replace the earlier
    // subscription), usage on the free plan (30 credits: 10 × 4 units cross
    // 20 % and 0) and on a bought plan (300 credits: 7 × 50 units), and
    // transactions that write events and roll back. Each part waits halfway
    // for the restart to begin.
    let (go, go_rx) = watch::channel(false);
    let halfway = Halfway { arrived: Arc::new(watch::Sender::new(0)), go: go_rx };
    let mut load = Vec::new();
    for u in 0..4 {
        let (b, gateway, mut halfway) = (app.billing.clone(), app.gateway.clone(), halfway.clone());
        load.push(tokio::spawn(async move {
            for i in 0..4 {
                if i == 2 {
                    halfway.wait().await;
                }
                let plan = if i % 2 == 0 { "basic-monthly" } else { "pro-monthly" };
                purchase(&b, &gateway, &format!("rs-buyer-{u}"), plan).await;
            }
        }));
    }
    for u in 0..4 {
        let (b, halfway) = (app.billing.clone(), halfway.clone());
        load.push(tokio::spawn(async move { use_credits(&b, &format!("rs-free-{u}"), 10, 4, 5, halfway).await }));
    }
    for u in 0..2 {
        let (b, gateway, halfway) = (app.billing.clone(), app.gateway.clone(), halfway.clone());
        load.push(tokio::spawn(async move {
            let user = format!("rs-paid-{u}");
            purchase(&b, &gateway, &user, "basic-monthly").await;
            use_credits(&b, &user, 7, 50, 3, halfway).await;
        }));
    }
    let mut raw = app.billing_db().await;
    let mut raw_halfway = halfway.clone();
    let rolled_back = tokio::spawn(async move {
        let mut ids_written = Vec::new();
        for i in 0..15 {
            if i == 8 {
                raw_halfway.wait().await;
            }
            raw.batch_execute("BEGIN").await.unwrap();
            raw.batch_execute(&format!(
                "INSERT INTO orders (id, checkout_session_id, user_id, plan_id, amount_minor, currency) \
                 VALUES ('order_rolled_back_{i}', gen_random_uuid(), 'rs-rolled-back', 'basic-monthly', 49900, 'INR')"
            ))
            .await
            .unwrap();
            // A real entity's event too: its version must not move.
            raw.batch_execute("UPDATE subscriptions SET cancel_at_period_end = true WHERE user_id = 'rs-held'").await.unwrap();
            // The event triggers are deferred to commit; fire them now, so
            // the events exist (and must vanish with the rollback).
            raw.batch_execute("SET CONSTRAINTS ALL IMMEDIATE").await.unwrap();
            ids_written
                .extend(texts(&mut raw, "SELECT event_id::text AS id FROM events WHERE xmin = pg_current_xact_id()::xid").await);
            // Held open a moment, holding the stream's horizon back.
            tokio::time::sleep(Duration::from_millis(25)).await;
            raw.batch_execute("ROLLBACK").await.unwrap();
        }
        // Then a change of it that commits: its version follows the last
        // committed one.
        raw.batch_execute("UPDATE subscriptions SET cancel_at_period_end = true WHERE user_id = 'rs-held'").await.unwrap();
        ids_written
    });

    // Halfway, with events received: billing stops while the load goes on,
    // and starts again.
    let parts = load.len() + 1;
    halfway.arrived.subscribe().wait_for(|n| *n == parts).await.unwrap();
    received.subscribe().wait_for(|n| *n >= 4).await.unwrap();
    let events_before = *received.borrow();
    go.send(true).unwrap();
    app.stop_billing().await;
    app.start_billing_again().await.unwrap();
    for l in load {
        l.await.unwrap();
    }
    let rolled_back = rolled_back.await.unwrap();

    let mut db = app.billing_db().await;
    target_tx.send(Some(last_position(&mut db).await)).unwrap();
    let watched = tokio::time::timeout(Duration::from_secs(60), watcher)
        .await
        .unwrap_or_else(|_| panic!("no caught-up bookmark past the last event ({} events received)", *received.borrow()))
        .unwrap();

    assert!(watched.streams >= 2, "the watcher never reconnected ({} streams)", watched.streams);
    let got: Vec<&str> = watched.events.iter().map(|e| e.event_id.as_str()).collect();
    let mut seen = std::collections::HashSet::new();
    let twice: Vec<&&str> = got.iter().filter(|id| !seen.insert(**id)).collect();
    assert!(twice.is_empty(), "resuming from its last cursor, the watcher got {} events twice: {twice:?}", twice.len());
    assert_eq!(rolled_back.len(), 30, "each rolled-back transaction wrote two events");
    let leaked: Vec<&String> = rolled_back.iter().filter(|id| seen.contains(id.as_str())).collect();
    assert!(leaked.is_empty(), "events of rolled-back transactions were sent: {leaked:?}");
    let stored = texts(&mut db, "SELECT event_id::text AS id FROM events ORDER BY xid, seq").await;
    assert_eq!(got.len(), stored.len(), "the watcher got {} events, the table holds {}", got.len(), stored.len());
    assert!(got.iter().zip(&stored).all(|(a, b)| *a == b), "the watcher's order is not the stream order (xid, seq)");
    assert_versions_climb(&watched.events);
    // The load made what it claims: threshold crossings, replacements.
    let count = |t: &str| watched.events.iter().filter(|e| type_name(e) == t).count();
    let used = |t: &str| {
        let users = watched.events.iter().filter(|e| e.user_id.starts_with("rs-free") || e.user_id.starts_with("rs-paid"));
        users.filter(|e| type_name(e) == t).count()
    };
    assert_eq!(used("CREDITS_LOW"), 6, "one crossing of 20 % per charged subscription");
    assert_eq!(used("CREDITS_EXHAUSTED"), 6, "one crossing of 0 per charged subscription");
    assert_eq!(count("SUBSCRIPTION_REPLACED"), 4 * 3, "each buyer's later purchases replace the earlier one");
    assert_eq!(count("USAGE_SESSION_ENDED"), 6);
    assert_eq!(count("SUBSCRIPTION_CANCEL_SCHEDULED"), 1, "only the committed cancellation of rs-held");
    assert!(
        watched.events.len() > events_before,
        "nothing arrived after the restart ({events_before} before, {} in all)",
        watched.events.len()
    );
}
