//! `loadgen --watch-events` and `--purchase-rate` (docs/benchmarks.md): one
//! WatchEvents stream on billing that records, for every event, how long
//! after the event's time (the database's transaction time; loadgen and
//! PostgreSQL share the machine's clock) it arrived, and a stream of
//! purchases beside any scenario so that events flow. Both check their work
//! against the database afterwards, or the run fails.
use std::{
    sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
    },
    time::{Duration, SystemTime},
};

use futures::StreamExt;
use hdrhistogram::Histogram;
use proto::billing::v1::{self as bpb, watch_events_response::Item};
use shared::events::{Cursor, Position};
use tokio::{sync::watch, task::JoinHandle};

use super::scenarios::Target;
use crate::{clients::billing_events_client, helpers::scalar};

/// One received event: its time and how long after it it arrived.
struct Arrival {
    time: SystemTime,
    lag: Duration,
}

struct Followed {
    arrivals: Vec<Arrival>,
    /// WatchEvents calls answered (1 + resumptions after a stream's end).
    streams: u64,
}

/// A running lag watcher (see the module docs).
pub struct LagWatcher {
    start: Position,
    /// Events received so far (for a watcher that never catches up).
    received: Arc<AtomicI64>,
    until: watch::Sender<Option<Position>>,
    task: JoinHandle<anyhow::Result<Followed>>,
}

fn position(cursor: &str) -> anyhow::Result<Position> {
    Ok(Cursor::parse(cursor).map_err(|e| anyhow::anyhow!("{cursor:?}: {e}"))?.pos)
}

/// Opens the stream (from now) and follows it until [`LagWatcher::finish`].
pub async fn watch_lag(t: &Target) -> anyhow::Result<LagWatcher> {
    let mut client = billing_events_client(&t.billing_addr, &t.billing_token)?;
    let mut stream = client.watch_events(bpb::WatchEventsRequest::default()).await?.into_inner();
    let first = stream.next().await.ok_or_else(|| anyhow::anyhow!("WatchEvents ended at once"))??;
    let Some(Item::Bookmark(b)) = first.item else { anyhow::bail!("WatchEvents did not start with a bookmark: {first:?}") };
    let start = position(&b.cursor)?;
    let (until, mut target) = watch::channel(None);
    let received = Arc::new(AtomicI64::new(0));
    let counter = received.clone();
    let task = tokio::spawn(async move {
        let mut out = Followed { arrivals: Vec::new(), streams: 1 };
        let (mut cursor, mut at) = (b.cursor, start);
        loop {
            if target.borrow().is_some_and(|t| at >= t) {
                return Ok(out);
            }
            let msg = tokio::select! {
                m = stream.next() => m,
                _ = target.changed() => continue,
            };
            match msg {
                Some(Ok(m)) => match m.item {
                    Some(Item::Event(e)) => {
                        let time = e.time.map(|t| SystemTime::UNIX_EPOCH + Duration::new(t.seconds as u64, t.nanos as u32));
                        let time = time.ok_or_else(|| anyhow::anyhow!("event {} has no time", e.event_id))?;
                        let lag = SystemTime::now().duration_since(time).unwrap_or_default();
                        out.arrivals.push(Arrival { time, lag });
                        counter.fetch_add(1, Ordering::Relaxed);
                        (cursor, at) = (e.cursor.clone(), position(&e.cursor)?);
                    }
                    Some(Item::Bookmark(b)) => (cursor, at) = (b.cursor.clone(), position(&b.cursor)?),
                    None => {}
                },
                // The stream's age, a restart: resume from the last cursor,
                // as a consumer does.
                Some(Err(_)) | None => {
                    let req = bpb::WatchEventsRequest { after_cursor: cursor.clone(), ..Default::default() };
                    stream = client.watch_events(req).await?.into_inner();
                    out.streams += 1;
                }
            }
        }
    });
    Ok(LagWatcher { start, received, until, task })
}

impl LagWatcher {
    /// Waits until the watcher has received every event stored so far, then
    /// reports the lag of the events whose time lies in loadgen's measured
    /// windows (`windows`), and fails unless the events table holds exactly
    /// as many events after the watcher's start as it received.
    pub async fn finish(self, t: &Target, windows: &[(SystemTime, SystemTime)]) -> anyhow::Result<LagReport> {
        let mut db = crate::harness::connect(&t.billing_db_url).await;
        let last: Vec<LastPos> = diesel_async::RunQueryDsl::load(
            diesel::sql_query("SELECT xid::text::bigint AS xid, seq FROM events ORDER BY xid DESC, seq DESC LIMIT 1"),
            &mut db,
        )
        .await?;
        let target = last.first().map_or(Position::START, |l| Position { xid: l.xid.unsigned_abs(), seq: l.seq });
        let _ = self.until.send(Some(target.max(self.start)));
        let between = |p: Position| format!("('{}'::xid8, {})", p.xid, p.seq);
        let range = format!(
            "SELECT count(*) AS n FROM events WHERE (xid, seq) > {} AND (xid, seq) <= {}",
            between(self.start),
            between(target.max(self.start))
        );
        let Ok(followed) = tokio::time::timeout(Duration::from_secs(120), self.task).await else {
            let stored = scalar(&mut db, &range).await;
            let received = self.received.load(Ordering::Relaxed);
            anyhow::bail!(
                "the event watcher did not catch up with the events table within 120 s: it received {received} of the {stored} \
                 events stored since its start: not measured"
            );
        };
        let followed = followed??;
        // Everything up to the target is settled now (the watcher passed it).
        let stored = scalar(&mut db, &range).await;
        let received = followed.arrivals.len() as i64;
        anyhow::ensure!(
            stored == received,
            "the event watcher received {received} events but the events table holds {stored} in its range: not measured"
        );
        let mut hist = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)?;
        let in_windows = followed.arrivals.iter().filter(|a| windows.iter().any(|(from, to)| a.time >= *from && a.time <= *to));
        for a in in_windows {
            hist.record((a.lag.as_micros() as u64).max(1))?;
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Ok(LagReport {
            received,
            stored,
            measured: hist.len(),
            streams: followed.streams,
            p50_ms: ms(hist.value_at_quantile(0.5)),
            p99_ms: ms(hist.value_at_quantile(0.99)),
            max_ms: ms(hist.max()),
        })
    }
}

#[derive(diesel::QueryableByName)]
struct LastPos {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    xid: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    seq: i64,
}

/// What the lag watcher measured.
#[derive(Debug, serde::Serialize)]
pub struct LagReport {
    /// Events received, the whole run (set-up included).
    pub received: i64,
    /// Events the table holds in the same range (must equal `received`).
    pub stored: i64,
    /// Events whose time lies in a measured window: the percentiles' sample.
    pub measured: u64,
    /// WatchEvents streams used (1 + resumptions).
    pub streams: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// A stream of purchases at a steady rate (see the module docs).
pub struct Purchases {
    tag: String,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    ok: Arc<AtomicI64>,
    failed: Arc<AtomicI64>,
}

/// Starts `rate` purchases a second (CreateOrder + VerifyPayment, each for a
/// new user), at most 32 in flight.
pub fn purchase_stream(t: &Target, rate: f64) -> anyhow::Result<Purchases> {
    let tag = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let client = crate::billing_client(&t.billing_addr, &t.billing_token)?;
    let (ok, failed) = (Arc::new(AtomicI64::new(0)), Arc::new(AtomicI64::new(0)));
    let (stop, mut stopped) = watch::channel(false);
    let (gateway, user_tag, ok2, failed2) = (t.gateway.clone(), tag.clone(), ok.clone(), failed.clone());
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(0.001)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let slots = Arc::new(tokio::sync::Semaphore::new(32));
        let mut running = tokio::task::JoinSet::new();
        for i in 0u64.. {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stopped.wait_for(|s| *s) => break,
            }
            let Ok(slot) = slots.clone().acquire_owned().await else { break };
            let (mut c, gateway, ok, failed) = (client.clone(), gateway.clone(), ok2.clone(), failed2.clone());
            let user = format!("lg-{user_tag}-p{i}");
            running.spawn(async move {
                let _slot = slot;
                let bought = async {
                    let order = c
                        .create_order(bpb::CreateOrderRequest {
                            checkout_session_id: uuid::Uuid::new_v4().to_string(),
                            user_id: user,
                            plan_id: "basic-monthly".into(),
                        })
                        .await?
                        .into_inner()
                        .order
                        .unwrap_or_default();
                    let payment_id = billing_svc::gateway::Sandbox::new_payment_id();
                    let signature = gateway.sign_payment(&order.id, &payment_id);
                    c.verify_payment(bpb::VerifyPaymentRequest { order_id: order.id, payment_id, signature }).await
                };
                let counter = if bought.await.is_ok() { ok } else { failed };
                counter.fetch_add(1, Ordering::Relaxed);
            });
        }
        while running.join_next().await.is_some() {}
    });
    Ok(Purchases { tag, stop, task, ok, failed })
}

impl Purchases {
    /// Stops the stream, waits for the purchases in flight, and fails unless
    /// the database shows a subscription of each successful one. Returns
    /// (successful, failed, subscriptions in the database).
    pub async fn finish(self, t: &Target) -> anyhow::Result<(i64, i64, i64)> {
        let _ = self.stop.send(true);
        self.task.await?;
        let (ok, failed) = (self.ok.load(Ordering::Relaxed), self.failed.load(Ordering::Relaxed));
        let mut db = crate::harness::connect(&t.billing_db_url).await;
        let subs = scalar(
            &mut db,
            &format!(
                "SELECT count(*) AS n FROM subscriptions s JOIN orders o ON o.id = s.order_id \
                  WHERE s.user_id LIKE 'lg-{}-p%' AND o.status = 'PAID'",
                self.tag
            ),
        )
        .await;
        anyhow::ensure!(subs == ok, "{ok} purchases succeeded but the database shows {subs} paid subscriptions: not measured");
        Ok((ok, failed, subs))
    }
}
