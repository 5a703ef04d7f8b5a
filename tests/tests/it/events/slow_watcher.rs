//! A watcher whose consumer stops reading costs a bounded amount of memory
//! and holds no one else back (docs/design.md, "Events": Watching): its
//! task waits on a channel of a few messages (and the connection's flow
//! control window), and a second watcher gets every event meanwhile.
//!
//! The memory is the test process's (billing runs in it), so the measured
//! part runs in a process of its own: the other tests of this binary share
//! the parent's. The hub's ring (the latest 4096 events, whoever watches) is
//! filled before the measurement, so what is measured is what the unread
//! watcher costs while the stream moves on.
use std::process::Command;

use prost::Message;
use shared::events::Position;
use tests::{
    harness::Options,
    helpers::{exec, scalar},
    spawn_app_with,
};
use tokio::sync::watch;

use super::{
    restart::{last_position, position, texts},
    *,
};

/// The most the process may grow while the watcher does not read.
const BOUND: u64 = 32 << 20;
/// Orders inserted per transaction; each makes three events (created, paid,
/// payment captured), each carrying the order's id of about 2 KB (twice in
/// most messages).
const ROWS: usize = 2_000;
/// Transactions that fill the hub's ring before the measurement (12,000
/// events, more than the ring's 4096).
const WARM_UP: usize = 2;
/// Transactions while the watcher does not read (60,000 events).
const MEASURED: usize = 10;

/// Set in the child process that does the measuring.
const CHILD: &str = "SLOW_WATCHER_MEASURES";

#[test]
fn an_unread_watcher_holds_back_neither_memory_nor_other_watchers() {
    if std::env::var_os(CHILD).is_some() {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build().unwrap();
        rt.block_on(measured_alone());
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let out = Command::new(exe)
        .env(CHILD, "1")
        .args(["events::slow_watcher::an_unread_watcher_holds_back_neither_memory_nor_other_watchers", "--exact"])
        .args(["--nocapture", "--test-threads=1"])
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && text.contains("1 passed"), "the measured run failed:\n{text}");
}

/// A line of /proc/self/status, in bytes.
fn status_bytes(key: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with(key)).unwrap_or_else(|| panic!("no {key} in /proc/self/status"));
    let kib: u64 = line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap();
    kib << 10
}

type Stream = tonic::Streaming<bpb::WatchEventsResponse>;

/// Reads `stream` up to the event at the position `until` gives (once the
/// writes are done): the event ids in order, the bytes of the messages, and
/// the stream.
async fn read_until(mut stream: Stream, mut until: watch::Receiver<Option<Position>>) -> (Vec<u128>, u64, Stream) {
    let (mut ids, mut bytes, mut at) = (Vec::new(), 0u64, None);
    loop {
        if let (Some(at), Some(target)) = (at, *until.borrow())
            && at >= target
        {
            return (ids, bytes, stream);
        }
        let msg = tokio::select! {
            m = stream.next() => m,
            _ = until.changed() => continue,
        };
        let msg = match msg {
            Some(Ok(m)) => m,
            other => panic!("the stream ended after {} events: {other:?}", ids.len()),
        };
        bytes += msg.encoded_len() as u64;
        if let Some(Item::Event(e)) = msg.item {
            ids.push(uuid::Uuid::parse_str(&e.event_id).unwrap().as_u128());
            at = Some(position(&e.cursor));
        }
    }
}

/// Inserts transactions `from..to` of [`ROWS`] paid orders each; returns
/// the position of the last event.
async fn write(db: &mut diesel_async::AsyncPgConnection, from: usize, to: usize) -> Position {
    for b in from..to {
        exec(
            db,
            &format!(
                "INSERT INTO orders (id, checkout_session_id, user_id, plan_id, amount_minor, currency, status, payment_id, paid_at) \
                 SELECT 'order_sw_' || g || '_' || repeat(md5(g::text), 60), gen_random_uuid(), 'sw-' || (g % 50), \
                        'basic-monthly', 49900, 'INR', 'PAID', 'pay_sw_' || g, now() \
                   FROM generate_series({}, {}) g",
                b * ROWS + 1,
                (b + 1) * ROWS
            ),
        )
        .await;
    }
    last_position(db).await
}

/// The measurement, in the child process.
async fn measured_alone() {
    let mut opts = Options::default();
    // The streams outlive the test.
    opts.events.stream_max_age = Duration::from_secs(1800);
    let app = spawn_app_with(opts).await;
    let mut db = app.billing_db().await;
    // From now (the database has no event yet), a connection of its own.
    let fast = billing_events(&app).watch_events(bpb::WatchEventsRequest::default()).await.unwrap().into_inner();
    let warm = write(&mut db, 0, WARM_UP).await;
    let (_, _, fast) = read_until(fast, watch::channel(Some(warm)).1).await;

    // The unread watcher, from the same place, on a connection of its own.
    let slow = billing_events(&app).watch_events(bpb::WatchEventsRequest::default()).await.unwrap().into_inner();
    // The peak from here on (writing 5 resets VmHWM to the current size).
    let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let rss_before = status_bytes("VmRSS:");
    let (target_tx, target_rx) = watch::channel(None);
    let reader = tokio::spawn(read_until(fast, target_rx));
    target_tx.send(Some(write(&mut db, WARM_UP, WARM_UP + MEASURED).await)).unwrap();
    let (got, bytes, _fast) = tokio::time::timeout(Duration::from_secs(120), reader)
        .await
        .expect("the reading watcher did not get every event while the other one did not read")
        .unwrap();
    let rss_after = status_bytes("VmRSS:");
    let peak = if reset { status_bytes("VmHWM:") } else { rss_after };
    let growth = peak.max(rss_after).saturating_sub(rss_before);

    let after_warm_up = format!("(xid, seq) > ('{}'::xid8, {})", warm.xid, warm.seq);
    let stored =
        texts(&mut db, &format!("SELECT event_id::text AS id FROM events WHERE {after_warm_up} ORDER BY xid, seq")).await;
    let stored: Vec<u128> = stored.iter().map(|id| uuid::Uuid::parse_str(id).unwrap().as_u128()).collect();
    assert_eq!(stored.len(), MEASURED * ROWS * 3);
    assert!(got == stored, "the reading watcher got {} events, not the {} stored, in stream order", got.len(), stored.len());
    let payloads =
        scalar(&mut db, &format!("SELECT sum(octet_length(payload::text))::bigint AS n FROM events WHERE {after_warm_up}")).await
            as u64;
    let mib = |b: u64| b as f64 / f64::from(1 << 20);
    eprintln!(
        "slow_watcher: {} events, payloads {:.0} MiB, messages {:.0} MiB; RSS {:.0} -> {:.0} MiB, peak {:.0} MiB \
         (reset: {reset}), growth {:.1} MiB",
        got.len(),
        mib(payloads),
        mib(bytes),
        mib(rss_before),
        mib(rss_after),
        mib(peak),
        mib(growth)
    );
    // Buffering them for the unread watcher would cost several times the bound.
    assert!(payloads >= 4 * BOUND && bytes >= 4 * BOUND, "too little written to tell: {payloads} B of payloads, {bytes} B sent");
    assert!(growth < BOUND, "the process grew {:.1} MiB while a watcher did not read (bound {:.0} MiB)", mib(growth), mib(BOUND));

    // The unread watcher only waited: read now, it has the same events in the
    // same order.
    let (_keep, last) = watch::channel(Some(last_position(&mut db).await));
    let late =
        tokio::time::timeout(Duration::from_secs(120), read_until(slow, last)).await.expect("the waiting watcher stalled").0;
    assert!(late == stored, "the waiting watcher got {} events, not the {} stored, in stream order", late.len(), stored.len());
}
