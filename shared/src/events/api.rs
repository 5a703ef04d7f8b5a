//! What both services' WatchEvents and ListEvents handlers share: request
//! checks, the error statuses, paging and the stream (docs/design.md,
//! "Events"). A service adds its proto types through [`Types`].
use std::{pin::Pin, time::Duration};

use futures::{Stream, StreamExt};
use proto::error::ErrorReason;
use tonic::Status;

use super::{
    cursor::Cursor,
    hub::Hub,
    store::{self, CursorError},
    watch::{Filter, Item, WatchOptions, WatchersExhausted},
};
use crate::{config::EventsConfig, server::Shutdown, status::Violations};

/// A service's event-type enum as the requests carry it.
#[derive(Debug, Clone, Copy)]
pub struct Types {
    /// The proto enum's value prefix (`BILLING_EVENT_TYPE_`): the stored
    /// spelling is the value's name without it.
    pub prefix: &'static str,
    /// The proto enum's `as_str_name` of a number, None for an unknown one.
    pub name_of: fn(i32) -> Option<&'static str>,
}

impl Types {
    /// The stored spellings of the proto enum's values (UNSPECIFIED aside),
    /// and those a migration's `events_type_known` CHECK allows, sorted:
    /// a service's unit test holds the two lists equal.
    pub fn lists(&self, migration_sql: &str) -> (Vec<String>, Vec<String>) {
        // The last definition of the check in the migration (a later
        // migration drops it and adds it again with a new type).
        let check = migration_sql.rsplit("CHECK (event_type IN (").next().unwrap_or_default();
        let check = check.split("))").next().unwrap_or_default();
        let mut stored: Vec<String> = check.split('\'').skip(1).step_by(2).map(str::to_owned).collect();
        stored.sort();
        let mut proto: Vec<String> = (1..)
            .map_while(|n| (self.name_of)(n))
            .map(|name| name.strip_prefix(self.prefix).unwrap_or(name).to_owned())
            .collect();
        proto.sort();
        (proto, stored)
    }
}

/// A checked WatchEvents / ListEvents request.
#[derive(Debug, Clone)]
pub struct Request {
    /// Resume after it; None: from now (watch) or from the oldest (list).
    pub after: Option<Cursor>,
    /// What the caller wants.
    pub filter: Filter,
}

/// Most types one filter may name.
const MAX_TYPES: usize = 64;

/// Checks the fields every event request has: INVALID_ARGUMENT for a
/// malformed cursor, an unknown or UNSPECIFIED type, or a bad user id.
pub fn parse(after_cursor: &str, types: &[i32], user_id: &str, t: Types) -> Result<Request, Status> {
    let mut v = Violations::new();
    let after = match after_cursor {
        "" => None,
        s => match Cursor::parse(s) {
            Ok(c) => Some(c),
            Err(e) => {
                v.add("after_cursor", e.to_string());
                None
            }
        },
    };
    if types.len() > MAX_TYPES {
        v.add("types", format!("at most {MAX_TYPES} types"));
    }
    let mut names = Vec::new();
    for &n in types.iter().take(MAX_TYPES) {
        match (t.name_of)(n).and_then(|name| name.strip_prefix(t.prefix)) {
            Some(name) if n != 0 => names.push(name.to_owned()),
            _ => v.add("types", format!("{n} is not an event type")),
        }
    }
    let user_id = (!user_id.is_empty()).then(|| v.text("user_id", user_id, 128).to_owned());
    v.finish()?;
    Ok(Request { after, filter: Filter { types: names, user_id } })
}

/// The status of a cursor that cannot be used, or of a database failure.
pub fn status_of(e: CursorError) -> Status {
    match e {
        CursorError::Expired { oldest, .. } => {
            let message = e.to_string();
            crate::status::precondition(
                ErrorReason::CursorExpired,
                "after_cursor",
                message,
                [("oldest_cursor", oldest.to_string())],
            )
        }
        CursorError::Db(e) => crate::status::from_db(&e),
    }
}

/// RESOURCE_EXHAUSTED WATCHERS_EXHAUSTED, retryable (likely elsewhere).
pub fn exhausted(e: WatchersExhausted) -> Status {
    crate::status::quota_exceeded(ErrorReason::WatchersExhausted, "watchers", e.to_string(), [("max_watchers", e.0.to_string())])
}

/// One ListEvents page.
#[derive(Debug)]
pub struct ListPage<E> {
    /// The matching events.
    pub events: Vec<E>,
    /// Where the page stopped.
    pub next: Cursor,
    /// Nothing settled after `next` was left unread.
    pub caught_up: bool,
}

/// Rows one ListEvents call reads at most, matching or not: a filter that
/// matches nothing still answers promptly, with a cursor further on.
const SCAN_BUDGET: usize = 5_000;

/// Up to `page_size` (1..=1000, 0 = 100) matching events after the request's
/// cursor (None: the oldest kept).
pub async fn list<E: Clone + Send + Sync + 'static>(hub: &Hub<E>, req: &Request, page_size: i32) -> Result<ListPage<E>, Status> {
    let page_size = match page_size {
        0 => 100,
        n if (1..=1000).contains(&n) => n as usize,
        _ => return Err(crate::status::invalid_field("page_size", "must be 0 (100) or 1..1000")),
    };
    let _turn = hub.page_read_turn().await;
    let mut conn = crate::db::conn(&hub.inner.pool).await.map_err(|e| crate::status::from_db(&e))?;
    let mut cursor = store::start(&mut conn, req.after, true).await.map_err(status_of)?;
    let mut out = ListPage { events: Vec::new(), next: cursor, caught_up: false };
    let mut scanned = 0;
    while scanned < SCAN_BUDGET {
        let page = match store::read_after(&mut conn, cursor, super::hub::PAGE).await {
            // From the oldest kept, and the purge moved on meanwhile: from
            // the new oldest.
            Err(CursorError::Expired { oldest, .. }) if req.after.is_none() && scanned == 0 => {
                cursor = oldest;
                store::read_after(&mut conn, cursor, super::hub::PAGE).await
            }
            other => other,
        }
        .map_err(status_of)?;
        let full = page.events.len() as i64 == super::hub::PAGE;
        for e in &page.events {
            cursor = Cursor { epoch: cursor.epoch, pos: e.pos, check: Cursor::check_of(&e.event_id) };
            scanned += 1;
            // Decoded only when it matches: a narrow filter scans cheaply.
            if req.filter.accepts(&e.event_type, &e.user_id) {
                out.events.push(hub.entry(cursor.epoch, e).event);
                if out.events.len() == page_size {
                    out.next = cursor;
                    return Ok(out);
                }
            }
        }
        out.next = cursor;
        if !full {
            out.caught_up = !page.pending;
            return Ok(out);
        }
    }
    Ok(out)
}

/// A boxed response stream, as tonic's server-streaming methods return.
pub type ResponseStream<R> = Pin<Box<dyn Stream<Item = Result<R, Status>> + Send + 'static>>;

/// Starts a WatchEvents stream: a watcher slot (RESOURCE_EXHAUSTED when
/// none), the cursor checked (CURSOR_EXPIRED), then the stream of `map`ped
/// items.
pub async fn watch<E, R>(
    hub: &Hub<E>,
    req: Request,
    from_oldest: bool,
    config: &EventsConfig,
    shutdown: Shutdown,
    map: fn(Item<E>) -> R,
) -> Result<ResponseStream<R>, Status>
where
    E: Clone + Send + Sync + 'static,
    R: Send + 'static,
{
    let permit = hub.admit().map_err(exhausted)?;
    let start = {
        let mut conn = crate::db::conn(&hub.inner.pool).await.map_err(|e| crate::status::from_db(&e))?;
        store::start(&mut conn, req.after, from_oldest).await.map_err(status_of)?
    };
    let options = WatchOptions {
        // A zero interval would send nothing but bookmarks.
        bookmark_every: config.bookmark_every.max(Duration::from_millis(100)),
        max_age: config.stream_max_age,
    };
    let stream = hub.watch(permit, start, req.filter, options, shutdown).map(move |item| item.map(map).map_err(status_of));
    Ok(Box::pin(stream))
}

/// Declares a service's event gRPC service: `$name { app, shutdown }`
/// implementing `$pb::$server::$service` (WatchEvents, ListEvents) over
/// `app.events` and `app.config.common.events`, with `$pb::$event` as the
/// event message and `$pb::$types` (values prefixed `$prefix`) as the event
/// types; also the `TYPES` the service's decoder uses. Both services' protos
/// have the same shape, each in its own package; `$pb` names the package's
/// module (`use proto::billing::v1 as pb;`).
#[macro_export]
macro_rules! event_service {
    ($name:ident, $app:ty, $pb:ident, $server:ident :: $service:ident, $event:ident, $types:ident, $prefix:literal) => {
        /// The event stream's gRPC service (docs/design.md, "Events").
        pub struct $name {
            app: $app,
            shutdown: $crate::server::Shutdown,
        }

        impl $name {
            /// Serves `app`'s event hub; streams end when `shutdown` fires.
            pub fn new(app: $app, shutdown: $crate::server::Shutdown) -> Self {
                Self { app, shutdown }
            }
        }

        const TYPES: $crate::events::api::Types =
            $crate::events::api::Types { prefix: $prefix, name_of: |n| $pb::$types::try_from(n).ok().map(|t| t.as_str_name()) };

        fn response(item: $crate::events::Item<$pb::$event>) -> $pb::WatchEventsResponse {
            use $pb::watch_events_response::Item as I;
            $pb::WatchEventsResponse {
                item: Some(match item {
                    $crate::events::Item::Event(e) => I::Event(e),
                    $crate::events::Item::Bookmark { cursor, caught_up } => {
                        I::Bookmark($pb::EventBookmark { cursor: cursor.to_string(), caught_up })
                    }
                }),
            }
        }

        #[tonic::async_trait]
        impl $pb::$server::$service for $name {
            type WatchEventsStream = $crate::events::api::ResponseStream<$pb::WatchEventsResponse>;

            async fn watch_events(
                &self,
                req: tonic::Request<$pb::WatchEventsRequest>,
            ) -> Result<tonic::Response<Self::WatchEventsStream>, tonic::Status> {
                let r = req.into_inner();
                let parsed = $crate::events::api::parse(&r.after_cursor, &r.types, &r.user_id, TYPES)?;
                let config = &self.app.config.common.events;
                let stream =
                    $crate::events::api::watch(&self.app.events, parsed, r.from_oldest, config, self.shutdown.clone(), response)
                        .await?;
                Ok(tonic::Response::new(stream))
            }

            async fn list_events(
                &self,
                req: tonic::Request<$pb::ListEventsRequest>,
            ) -> Result<tonic::Response<$pb::ListEventsResponse>, tonic::Status> {
                let r = req.into_inner();
                let parsed = $crate::events::api::parse(&r.after_cursor, &r.types, &r.user_id, TYPES)?;
                let page = $crate::events::api::list(&self.app.events, &parsed, r.page_size).await?;
                Ok(tonic::Response::new($pb::ListEventsResponse {
                    events: page.events,
                    next_cursor: page.next.to_string(),
                    caught_up: page.caught_up,
                }))
            }
        }
    };
}
