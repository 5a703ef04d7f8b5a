//! One watcher's stream (docs/design.md, "Events"): a bookmark first, the
//! matching events after its cursor (from the hub's ring, or pages of its
//! own while it is behind), a bookmark every idle interval, and a final
//! bookmark when the stream ends (its age, shutdown).
//!
//! The watcher runs in a task that sends into a small bounded channel: a
//! consumer that does not read makes the task wait there, holding no
//! database connection and no more than the channel's few messages.
use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use futures::Stream;
use tokio::sync::{OwnedSemaphorePermit, mpsc};

use super::{
    cursor::Cursor,
    hub::{Entry, Hub},
    store::{self, CursorError},
};
use crate::server::Shutdown;

/// What a watcher sends.
#[derive(Debug, Clone)]
pub enum Item<E> {
    /// An event that matched the filters.
    Event(E),
    /// Where the watcher is.
    Bookmark {
        /// Resume from here.
        cursor: Cursor,
        /// Nothing read by this replica lies after it.
        caught_up: bool,
    },
}

/// Which events a watcher wants.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Stored type spellings; empty: every type.
    pub types: Vec<String>,
    /// Only this user's; None: everyone's.
    pub user_id: Option<String>,
}

impl Filter {
    /// Whether the event passes.
    pub fn matches<E>(&self, e: &Entry<E>) -> bool {
        self.accepts(&e.event_type, &e.user_id)
    }

    /// Whether an event of this type and user passes.
    pub fn accepts(&self, event_type: &str, user_id: &str) -> bool {
        (self.types.is_empty() || self.types.iter().any(|t| t == event_type))
            && self.user_id.as_deref().is_none_or(|u| u == user_id)
    }
}

/// How long streams live and how often they say where they are.
#[derive(Debug, Clone, Copy)]
pub struct WatchOptions {
    /// A bookmark after this long without a message.
    pub bookmark_every: Duration,
    /// The stream ends (final bookmark, OK) after this long.
    pub max_age: Duration,
}

/// Every watcher slot of the replica is taken.
#[derive(Debug, thiserror::Error)]
#[error("this replica serves {0} event watchers already; retry later (or on another replica)")]
pub struct WatchersExhausted(pub usize);

/// Messages buffered per watcher before the watcher waits for its consumer.
const BUFFER: usize = 16;
/// Events a watcher behind the ring reads per query (and holds, decoded,
/// while its consumer is slow).
const WATCHER_PAGE: i64 = 100;

impl<E: Clone + Send + Sync + 'static> Hub<E> {
    /// Takes a watcher slot now (so the caller can answer
    /// RESOURCE_EXHAUSTED before the stream starts).
    pub fn admit(&self) -> Result<OwnedSemaphorePermit, WatchersExhausted> {
        let permit =
            self.inner.watchers.clone().try_acquire_owned().map_err(|_| WatchersExhausted(self.inner.options.max_watchers))?;
        // An idle tail starts reading (notify_one keeps the wake-up if the
        // tail is busy elsewhere right now).
        self.inner.demand.notify_one();
        Ok(permit)
    }

    /// Starts a watcher after `start` (already checked by
    /// [`store::start`]); its stream ends with `Err` only for a cursor the
    /// stream expired under it.
    pub fn watch(
        &self,
        permit: OwnedSemaphorePermit,
        start: Cursor,
        filter: Filter,
        options: WatchOptions,
        shutdown: Shutdown,
    ) -> impl Stream<Item = Result<Item<E>, CursorError>> + Send + 'static {
        let (tx, rx) = mpsc::channel(BUFFER);
        let hub = self.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _gauge = crate::metrics::EventWatcher::connected(hub.inner.service);
            Watcher { hub, cursor: start, filter, options, shutdown, tx, last_sent: Instant::now(), said_caught_up: false }
                .run()
                .await;
        });
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) })
    }
}

struct Watcher<E> {
    hub: Hub<E>,
    cursor: Cursor,
    filter: Filter,
    options: WatchOptions,
    shutdown: Shutdown,
    tx: mpsc::Sender<Result<Item<E>, CursorError>>,
    last_sent: Instant,
    /// What the last bookmark said of `caught_up`.
    said_caught_up: bool,
}

/// Why a watcher stops.
enum Stop {
    /// The consumer went away: nothing more to send.
    Gone,
    /// Age or shutdown: send the final bookmark.
    End,
}

impl<E: Clone + Send + Sync + 'static> Watcher<E> {
    async fn run(mut self) {
        let ends = Instant::now() + self.options.max_age;
        let outcome = self.follow(ends).await;
        if let Err(Stop::End) = outcome {
            let caught_up = self.hub.caught_up(self.cursor.pos);
            // Best effort: a consumer that stopped reading gets no final
            // bookmark, and a shut-down server does not wait for it.
            let _ = self.tx.try_send(Ok(Item::Bookmark { cursor: self.cursor, caught_up }));
        }
    }

    async fn follow(&mut self, ends: Instant) -> Result<(), Stop> {
        let mut wake = self.hub.inner.wake.subscribe();
        let generation = self.hub.generation();
        self.bookmark(ends).await?;
        loop {
            if self.shutdown.is_triggered() || Instant::now() >= ends {
                return Err(Stop::End);
            }
            wake.borrow_and_update();
            if let Some(oldest) = self.hub.reset_since(generation) {
                let _ = self
                    .tx
                    .send(Err(CursorError::Expired {
                        why: "the database lost events this stream had (a failover or restore)",
                        oldest,
                    }))
                    .await;
                return Err(Stop::Gone);
            }
            let chunk = match self.hub.ring_after(self.cursor.pos, WATCHER_PAGE as usize) {
                Some(c) => c,
                None => match self.read_page().await {
                    Ok(c) => c,
                    Err(e @ CursorError::Expired { .. }) => {
                        let _ = self.tx.send(Err(e)).await;
                        return Err(Stop::Gone);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "event watcher: read failed; retrying");
                        self.pause(Duration::from_secs(1), ends).await?;
                        continue;
                    }
                },
            };
            if chunk.is_empty() {
                // Caught up since the last bookmark said otherwise (a tail
                // that just started): say so now, not at the next idle one.
                if !self.said_caught_up && self.hub.caught_up(self.cursor.pos) {
                    self.bookmark(ends).await?;
                    continue;
                }
                let idle = self.options.bookmark_every.saturating_sub(self.last_sent.elapsed());
                tokio::select! {
                    _ = wake.changed() => {}
                    _ = tokio::time::sleep(idle) => self.bookmark(ends).await?,
                    _ = tokio::time::sleep_until(ends.into()) => return Err(Stop::End),
                    _ = self.shutdown.wait() => return Err(Stop::End),
                    _ = self.tx.closed() => return Err(Stop::Gone),
                }
                continue;
            }
            for e in chunk {
                // The cursor moves past an event only once it was sent (or
                // skipped by the filters): a stream that ends mid-chunk
                // ends with a bookmark at the last event it delivered.
                if self.filter.matches(&e) {
                    self.send(Item::Event(e.event.clone()), ends).await?;
                    crate::metrics::event_delivered(self.hub.inner.service, e.occurred_at);
                    self.cursor = e.cursor;
                } else {
                    self.cursor = e.cursor;
                    if self.last_sent.elapsed() >= self.options.bookmark_every {
                        self.bookmark(ends).await?;
                    }
                }
            }
        }
    }

    /// A page of its own from the database (the watcher is behind the
    /// ring); the connection goes back before anything is sent.
    async fn read_page(&self) -> Result<Vec<Arc<Entry<E>>>, CursorError> {
        let page = {
            // Replays share a few connections: they never crowd out the
            // money paths' use of the pool.
            let _turn = self.hub.page_read_turn().await;
            let mut conn = crate::db::conn(&self.hub.inner.pool).await?;
            store::read_after(&mut conn, self.cursor, WATCHER_PAGE).await?
        };
        Ok(page.events.iter().map(|e| Arc::new(self.hub.entry(self.cursor.epoch, e))).collect())
    }

    async fn bookmark(&mut self, ends: Instant) -> Result<(), Stop> {
        let caught_up = self.hub.caught_up(self.cursor.pos);
        self.said_caught_up = caught_up;
        self.send(Item::Bookmark { cursor: self.cursor, caught_up }, ends).await
    }

    async fn send(&mut self, item: Item<E>, ends: Instant) -> Result<(), Stop> {
        tokio::select! {
            // A message that can go goes first, whatever else is ready.
            biased;
            sent = self.tx.send(Ok(item)) => sent.map_err(|_| Stop::Gone)?,
            _ = tokio::time::sleep_until(ends.into()) => return Err(Stop::End),
            _ = self.shutdown.wait() => return Err(Stop::End),
        }
        self.last_sent = Instant::now();
        Ok(())
    }

    async fn pause(&self, d: Duration, ends: Instant) -> Result<(), Stop> {
        tokio::select! {
            _ = tokio::time::sleep(d) => Ok(()),
            _ = tokio::time::sleep_until(ends.into()) => Err(Stop::End),
            _ = self.shutdown.wait() => Err(Stop::End),
            _ = self.tx.closed() => Err(Stop::Gone),
        }
    }
}
