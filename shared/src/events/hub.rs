//! One tail reader per replica (docs/design.md, "Events"): it wakes on
//! `NOTIFY events` (and polls, in case a notification is lost), reads the
//! newly settled events once, decodes them once, and keeps the latest in a
//! bounded ring that every caught-up watcher reads. So the database sees one
//! query per wake-up, however many watchers follow; a watcher behind the
//! ring reads pages of its own, holding a connection only for the query.
use std::{
    collections::VecDeque,
    sync::{Arc, RwLock},
    time::Duration,
};

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use futures::{FutureExt, StreamExt};
use tokio::sync::{Semaphore, watch};

use super::{
    cursor::{Cursor, Position},
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

pub(super) struct Inner<E> {
    pub(super) pool: Pool,
    pub(super) decode: Decoder<E>,
    ring: RwLock<Ring<E>>,
    pub(super) wake: watch::Sender<u64>,
    pub(super) watchers: Arc<Semaphore>,
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

impl<E: Send + Sync + 'static> Hub<E> {
    /// A hub over `pool`'s database; [`Hub::run`] follows the stream.
    pub fn new(service: &'static str, pool: Pool, decode: Decoder<E>, options: HubOptions) -> Self {
        let (wake, _) = watch::channel(0);
        Self {
            inner: Arc::new(Inner {
                pool,
                decode,
                ring: RwLock::new(Ring { base: None, tail: None, entries: VecDeque::new() }),
                wake,
                watchers: Arc::new(Semaphore::new(options.max_watchers)),
                options,
                service,
            }),
        }
    }

    /// Follows the stream until `shutdown`: LISTENs on its own connection to
    /// `database_url`, reads on a pooled one. Errors are logged and retried.
    pub async fn run(self, database_url: String, shutdown: Shutdown) {
        let mut listener: Option<AsyncPgConnection> = None;
        let mut wait = Duration::ZERO;
        loop {
            if listener.is_none() {
                listener = listen(&database_url).await;
            }
            let mut polled = false;
            {
                let notified = async {
                    match listener.as_mut() {
                        Some(l) => {
                            let mut stream = std::pin::pin!(l.notifications_stream());
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
                    got = notified => if !got { listener = None },
                    _ = tokio::time::sleep(wait) => polled = true,
                }
            }
            // A poll is also the moment to find out whether the listening
            // connection is still there.
            if polled
                && let Some(l) = listener.as_mut()
                && diesel::sql_query("SELECT 1").execute(l).await.is_err()
            {
                listener = None;
            }
            wait = match self.read_new().await {
                // Committed events wait behind an older transaction, which
                // ends without a notification: look again soon, then less
                // often while it lasts (a long transaction is no busy loop).
                Ok(true) => (if polled { wait * 2 } else { SETTLE_RETRY }).clamp(SETTLE_RETRY, self.inner.options.poll),
                Ok(false) => self.inner.options.poll,
                Err(e) => {
                    tracing::warn!(error = %e, service = self.inner.service, "event tail: read failed; retrying");
                    self.inner.options.poll
                }
            };
        }
    }

    /// Reads what settled since the tail; true when committed events still
    /// wait behind an older transaction.
    async fn read_new(&self) -> Result<bool, CursorError> {
        let mut conn = crate::db::conn(&self.inner.pool).await?;
        let mut tail = match self.tail() {
            Some(t) => t,
            None => {
                let start = store::start(&mut conn, None, false).await?;
                let mut ring = self.inner.ring.write().unwrap_or_else(|p| p.into_inner());
                ring.base = Some(start);
                ring.tail = Some(start);
                start
            }
        };
        loop {
            let page = match store::read_after(&mut conn, tail, PAGE).await {
                Ok(p) => p,
                // Purged under the tail (a hub asleep for the whole
                // retention): start over from the oldest kept.
                Err(CursorError::Expired { oldest, .. }) => {
                    self.reset(oldest);
                    return Ok(true);
                }
                Err(e) => return Err(e),
            };
            let full = page.events.len() as i64 == PAGE;
            if !page.events.is_empty() {
                crate::metrics::events_read(self.inner.service, page.events.len());
                let entries: Vec<Arc<Entry<E>>> = page.events.iter().map(|e| Arc::new(self.entry(tail.epoch, e))).collect();
                tail = entries.last().map(|e| e.cursor).unwrap_or(tail);
                self.push(entries, tail);
            }
            if !full {
                return Ok(page.pending);
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

    fn reset(&self, at: Cursor) {
        let mut ring = self.inner.ring.write().unwrap_or_else(|p| p.into_inner());
        ring.entries.clear();
        ring.base = Some(at);
        ring.tail = Some(at);
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

async fn listen(url: &str) -> Option<AsyncPgConnection> {
    match AsyncPgConnection::establish(url).await {
        Ok(mut c) => match c.batch_execute("LISTEN events").await {
            Ok(()) => Some(c),
            Err(e) => {
                tracing::warn!(error = %e, "event tail: LISTEN failed; polling meanwhile");
                None
            }
        },
        Err(e) => {
            tracing::warn!(error = %e, "event tail: cannot connect to listen; polling meanwhile");
            None
        }
    }
}
