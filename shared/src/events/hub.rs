//! One tail reader per replica (docs/design.md, "Events"): it wakes when
//! this process wrote (a [`nudge`]), on `NOTIFY events` from another
//! replica's tail, and on a poll; reads the newly settled events once,
//! decodes them once, and keeps the latest in a bounded ring that every
//! caught-up watcher reads. So the database sees one query per wake-up,
//! however many watchers follow; a watcher behind the ring reads pages of
//! its own, a few at a time, holding a connection only for the query.
//!
//! The writers never NOTIFY: PostgreSQL serializes the commits of notifying
//! transactions cluster-wide (a lock held through the commit's flush), which
//! would cap and stall the money paths. A tail that found new events after
//! a nudge notifies the other replicas in a transaction of its own.
//!
//! A replica nobody watches reads nothing: its tail keeps no ring, and a
//! nudge only passes the wake-up on to the other replicas (at most one
//! NOTIFY per read gap). The first watcher wakes the tail, which starts
//! from the stream's end; the watcher reads what lies before that itself.
use std::{
    collections::VecDeque,
    sync::{Arc, RwLock},
    time::Duration,
};

use diesel_async::AsyncPgConnection;
use futures::{FutureExt, StreamExt};
use tokio::sync::{Semaphore, SemaphorePermit, watch};

use super::{
    cursor::{Cursor, Position},
    listener,
    store::{self, CursorError, StoredEvent},
};
use crate::{db::Pool, server::Shutdown};

/// Turns a stored event into the service's event message, its cursor
/// given. Infallible: an undecodable payload still yields the event (the
/// decoder logs it and leaves the payload out), so nothing is skipped.
pub type Decoder<E> = Arc<dyn Fn(&StoredEvent, Cursor) -> E + Send + Sync>;

/// A decoded event with what the filters look at.
#[derive(Debug)]
pub struct Entry<E> {
    /// The position right after it, as a cursor.
    pub cursor: Cursor,
    /// Its type as stored (`ORDER_PAID`...).
    pub event_type: String,
    /// Its user ('' when none).
    pub user_id: String,
    /// When it was recorded.
    pub occurred_at: chrono::DateTime<chrono::Utc>,
    /// The service's message.
    pub event: E,
}

/// The hub's tuning.
#[derive(Debug, Clone, Copy)]
pub struct HubOptions {
    /// Events kept in memory for caught-up watchers.
    pub ring: usize,
    /// Polling interval when no notification comes.
    pub poll: Duration,
    /// Most watchers at once on this replica.
    pub max_watchers: usize,
}

struct Ring<E> {
    /// None until the first read; then the position the ring starts after
    /// (every event after it up to `tail` is in `entries`).
    base: Option<Cursor>,
    tail: Option<Cursor>,
    entries: VecDeque<Arc<Entry<E>>>,
}

/// Bumped after this process committed something that may have written
/// events; every hub of the process watches it.
static WRITES: std::sync::LazyLock<watch::Sender<u64>> = std::sync::LazyLock::new(|| watch::channel(0).0);

/// Wakes this process's event tails: call after a commit that may have
/// written events (an RPC's effect, a job's iteration, a webhook). Cheap; a
/// wake-up that finds nothing costs one query.
pub fn nudge() {
    WRITES.send_modify(|n| *n = n.wrapping_add(1));
}

/// Replays of watchers behind the ring and ListEvents pages reading at once.
const PAGE_READS: usize = 2;
/// Shortest time between two reads of the tail.
const MIN_READ_GAP: Duration = Duration::from_millis(10);

pub(super) struct Inner<E> {
    pub(super) pool: Pool,
    page_reads: Semaphore,
    /// Bumped when the database lost events the ring had (failover, restore).
    generation: std::sync::atomic::AtomicU64,
    pub(super) decode: Decoder<E>,
    ring: RwLock<Ring<E>>,
    pub(super) wake: watch::Sender<u64>,
    pub(super) watchers: Arc<Semaphore>,
    /// Told when a watcher is admitted: an idle tail starts reading.
    pub(super) demand: tokio::sync::Notify,
    pub(super) options: HubOptions,
    pub(super) service: &'static str,
}

/// The replica's event tail (see the module docs). Cheap to clone.
pub struct Hub<E> {
    pub(super) inner: Arc<Inner<E>>,
}

impl<E> Clone for Hub<E> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone() }
    }
}

impl<E> std::fmt::Debug for Hub<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").field("service", &self.inner.service).field("options", &self.inner.options).finish()
    }
}

/// Rows read per query by the tail and by watchers behind the ring.
pub(super) const PAGE: i64 = 500;
/// How soon to look again when committed events wait behind an older
/// running transaction (no notification comes when that one ends).
const SETTLE_RETRY: Duration = Duration::from_millis(20);
/// The longest wait between settle retries (or the poll, if shorter): the
/// horizon is the whole cluster's, so any database's long transaction
/// holds events back, and they go out within this of its end.
const SETTLE_RETRY_MAX: Duration = Duration::from_secs(1);

impl<E: Send + Sync + 'static> Hub<E> {
    /// A hub over `pool`'s database; [`Hub::run`] follows the stream.
    pub fn new(service: &'static str, pool: Pool, decode: Decoder<E>, options: HubOptions) -> Self {
        let (wake, _) = watch::channel(0);
        Self {
            inner: Arc::new(Inner {
                pool,
                decode,
                page_reads: Semaphore::new(PAGE_READS),
                generation: std::sync::atomic::AtomicU64::new(0),
                ring: RwLock::new(Ring { base: None, tail: None, entries: VecDeque::new() }),
                wake,
                watchers: Arc::new(Semaphore::new(options.max_watchers)),
                demand: tokio::sync::Notify::new(),
                // At least the settle retry: a shorter poll would be a busy loop.
                options: HubOptions { poll: options.poll.max(SETTLE_RETRY), ..options },
                service,
            }),
        }
    }

    /// Follows the stream until `shutdown`: LISTENs on its own connection to
    /// `database_url`, reads on a pooled one. Errors are logged and retried.
    pub async fn run(self, database_url: String, shutdown: Shutdown) {
        let url = crate::db::with_dead_peer_detection(&database_url);
        let mut listener: Option<AsyncPgConnection> = None;
        let mut writes = WRITES.subscribe();
        let mut wait = Duration::ZERO;
        let mut last_read = std::time::Instant::now().checked_sub(MIN_READ_GAP).unwrap_or_else(std::time::Instant::now);
        // A local write not yet passed on to the other replicas (sent with
        // the first read that finds events, whatever woke that read).
        let mut owe_notify = false;
        // The events' sequence as an unwatched tail last saw it (it notifies
        // only when that moved).
        let mut last_seen: Option<String> = None;
        loop {
            if listener.is_none() {
                listener = listener::listen(&url).await;
            }
            let (mut polled, mut local) = (false, false);
            {
                let notified = async {
                    match listener.as_mut() {
                        Some(l) => {
                            // Fused: once the connection is gone the stream
                            // has ended, and polling it again would panic.
                            let mut stream = std::pin::pin!(l.notifications_stream().fuse());
                            let got = stream.next().await.is_some();
                            // One read for every notification already here:
                            // a burst of commits is one wake-up.
                            while let Some(Some(_)) = stream.next().now_or_never() {}
                            got
                        }
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = shutdown.wait() => return,
                    _ = self.inner.demand.notified() => {}
                    changed = writes.changed() => local = changed.is_ok(),
                    got = notified => if !got { listener = None },
                    _ = tokio::time::sleep(wait) => polled = true,
                }
            }
            // A poll is also the moment to find out whether the listening
            // connection is still there.
            if polled
                && let Some(l) = listener.as_mut()
                && !listener::alive(l).await
            {
                listener = None;
            }
            // Under a stream of writes, at most one read per gap: the
            // events of many commits come in one read.
            if let Some(left) = MIN_READ_GAP.checked_sub(last_read.elapsed()) {
                tokio::time::sleep(left).await;
            }
            last_read = std::time::Instant::now();
            // A write of this process that another wake-up got to first.
            if writes.has_changed().unwrap_or(false) {
                writes.borrow_and_update();
                local = true;
            }
            owe_notify |= local;
            if !self.watched() {
                // Nobody here to read for: keep no ring, and pass a local
                // write on to the replicas that may have watchers, only if
                // it wrote events (most Deducts write none).
                self.forget();
                if owe_notify && let Some(l) = listener.as_mut() {
                    owe_notify = false;
                    if !listener::notify_if_moved(l, &mut last_seen).await {
                        listener = None;
                    }
                }
                wait = self.inner.options.poll;
                continue;
            }
            last_seen = None;
            let read = self.read_new().await;
            if owe_notify && matches!(read, Ok((_, true))) {
                // New events after a write of this process: wake the other
                // replicas' tails.
                owe_notify = false;
                if let Some(l) = listener.as_mut()
                    && !listener::notify(l).await
                {
                    listener = None;
                }
            }
            // Woken by the settle retry's own timer (not a poll, a write or
            // a notification).
            let retrying = polled && wait < self.inner.options.poll;
            wait = match read {
                // Committed events wait behind an older transaction, which
                // ends without a wake-up: look again soon, then less often
                // while it lasts (a long transaction is no busy loop). A
                // wake-up of another kind starts over at the shortest wait.
                Ok((true, _)) => {
                    let next = if retrying { wait * 2 } else { SETTLE_RETRY };
                    next.max(SETTLE_RETRY).min(SETTLE_RETRY_MAX).min(self.inner.options.poll)
                }
                Ok((false, _)) => self.inner.options.poll,
                Err(e) => {
                    tracing::warn!(error = %e, service = self.inner.service, "event tail: read failed; retrying");
                    self.inner.options.poll
                }
            };
        }
    }

    /// Reads what settled since the tail: whether committed events still
    /// wait behind an older transaction, and whether anything new came.
    async fn read_new(&self) -> Result<(bool, bool), CursorError> {
        let mut conn = crate::db::conn(&self.inner.pool).await?;
        let mut tail = match self.tail() {
            Some(t) => t,
            None => {
                let start = store::start(&mut conn, None, false).await?;
                {
                    let mut ring = self.inner.ring.write().unwrap_or_else(|p| p.into_inner());
                    ring.base = Some(start);
                    ring.tail = Some(start);
                }
                // Watchers that found the ring empty look again: what lies
                // before `start` is theirs to read, and they may be caught up.
                self.inner.wake.send_modify(|n| *n = n.wrapping_add(1));
                start
            }
        };
        let mut found = false;
        loop {
            let page = match store::read_after(&mut conn, tail, PAGE).await {
                Ok(p) => p,
                // The tail's event is gone: purged under a hub asleep for
                // the whole retention, or lost by a failover or restore.
                // Start over from the oldest kept; watchers of the old
                // history end with CURSOR_EXPIRED.
                Err(CursorError::Expired { oldest, why }) => {
                    tracing::warn!(service = self.inner.service, why, "event tail: its position is gone; starting over");
                    self.reset(oldest);
                    return Ok((true, found));
                }
                Err(e) => return Err(e),
            };
            let full = page.events.len() as i64 == PAGE;
            if !page.events.is_empty() {
                found = true;
                crate::metrics::events_read(self.inner.service, page.events.len());
                let entries: Vec<Arc<Entry<E>>> = page.events.iter().map(|e| Arc::new(self.entry(tail.epoch, e))).collect();
                tail = entries.last().map(|e| e.cursor).unwrap_or(tail);
                self.push(entries, tail);
            }
            if !full {
                return Ok((page.pending, found));
            }
        }
    }

    pub(super) fn entry(&self, epoch: i64, e: &StoredEvent) -> Entry<E> {
        let cursor = Cursor { epoch, pos: e.pos, check: Cursor::check_of(&e.event_id) };
        Entry {
            cursor,
            event_type: e.event_type.clone(),
            user_id: e.user_id.clone(),
            occurred_at: e.occurred_at,
            event: (self.inner.decode)(e, cursor),
        }
    }

    fn push(&self, entries: Vec<Arc<Entry<E>>>, tail: Cursor) {
        {
            let mut ring = self.inner.ring.write().unwrap_or_else(|p| p.into_inner());
            ring.entries.extend(entries);
            while ring.entries.len() > self.inner.options.ring {
                if let Some(old) = ring.entries.pop_front() {
                    ring.base = Some(old.cursor);
                }
            }
            ring.tail = Some(tail);
        }
        self.inner.wake.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Whether a watcher of this replica follows the stream.
    fn watched(&self) -> bool {
        self.inner.watchers.available_permits() < self.inner.options.max_watchers
    }

    /// Drops the ring of an unwatched tail: the next watcher's tail starts
    /// from the stream's end (no generation change: nobody followed it).
    fn forget(&self) {
        let mut ring = self.inner.ring.write().unwrap_or_else(|p| p.into_inner());
        if ring.base.is_some() {
            *ring = Ring { base: None, tail: None, entries: VecDeque::new() };
            drop(ring);
            self.inner.wake.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    fn reset(&self, at: Cursor) {
        {
            let mut ring = self.inner.ring.write().unwrap_or_else(|p| p.into_inner());
            ring.entries.clear();
            ring.base = Some(at);
            ring.tail = Some(at);
        }
        self.inner.generation.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.wake.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The ring's generation: it changes when the ring starts over.
    pub(super) fn generation(&self) -> u64 {
        std::sync::atomic::AtomicU64::load(&self.inner.generation, std::sync::atomic::Ordering::SeqCst)
    }

    /// Where to start again when the ring started over since `generation`.
    pub(super) fn reset_since(&self, generation: u64) -> Option<Cursor> {
        (self.generation() != generation).then(|| self.inner.ring.read().unwrap_or_else(|p| p.into_inner()).base).flatten()
    }

    /// A turn to read pages from the database (replays, ListEvents).
    pub(super) async fn page_read_turn(&self) -> Option<SemaphorePermit<'_>> {
        self.inner.page_reads.acquire().await.ok()
    }

    /// The last position the hub has read (None before its first read).
    pub fn tail(&self) -> Option<Cursor> {
        self.inner.ring.read().unwrap_or_else(|p| p.into_inner()).tail
    }

    /// Up to `max` ring entries after `pos`; None when the ring does not
    /// hold everything after `pos` (the caller reads the database).
    pub(super) fn ring_after(&self, pos: Position, max: usize) -> Option<Vec<Arc<Entry<E>>>> {
        let ring = self.inner.ring.read().unwrap_or_else(|p| p.into_inner());
        let base = ring.base?;
        if pos < base.pos {
            return None;
        }
        let from = ring.entries.partition_point(|e| e.cursor.pos <= pos);
        Some(ring.entries.iter().skip(from).take(max).cloned().collect())
    }

    /// Whether nothing the hub has read lies after `pos`.
    pub(super) fn caught_up(&self, pos: Position) -> bool {
        self.tail().is_some_and(|t| pos >= t.pos)
    }
}
