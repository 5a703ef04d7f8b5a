//! Following billing's event stream the way a consumer should
//! (docs/integration.md, "Events"): resume from the last cursor, keep going
//! through stream ends and billing restarts, and apply each entity's
//! versions in order, once.
use std::{collections::HashMap, time::Duration};

use proto::billing::v1::{self as bpb, billing_event_service_client::BillingEventServiceClient, watch_events_response::Item};
use tonic::{Code, Status};

use crate::{Endpoints, bearer, channel_without_timeout};

/// Where a consumer is: the cursor to resume from and the last version it
/// applied per entity. A real consumer stores both in its own database,
/// in the transaction of what it did with the event.
#[derive(Clone, Debug, Default)]
pub struct Follower {
    cursor: String,
    versions: HashMap<(String, String), i64>,
}

/// Whether a failed watch is worth opening again from the same cursor:
/// every failure but a refusal of the request itself (a bad cursor or
/// filter, CURSOR_EXPIRED, a token billing does not take). A restart of
/// billing ends the stream with UNAVAILABLE, UNKNOWN or CANCELLED.
fn reopen(s: &Status) -> bool {
    !matches!(s.code(), Code::InvalidArgument | Code::FailedPrecondition | Code::Unauthenticated | Code::PermissionDenied)
}

impl Follower {
    /// Starts after `cursor` (None: from now).
    pub fn new(cursor: Option<String>) -> Self {
        Self { cursor: cursor.unwrap_or_default(), versions: HashMap::new() }
    }

    /// The cursor to resume from.
    pub fn cursor(&self) -> &str {
        &self.cursor
    }

    /// Whether `e` is news: its version is above the one applied for its
    /// entity (a redelivery, or an older state, is not). Records it.
    pub fn accept(&mut self, e: &bpb::BillingEvent) -> bool {
        let held = self.versions.entry((e.entity_kind.clone(), e.entity_id.clone())).or_insert(0);
        if e.entity_version <= *held {
            return false;
        }
        *held = e.entity_version;
        true
    }

    /// Follows the stream: each new event goes to `handle`, which answers
    /// whether to go on. The cursor moves with every event and bookmark; a
    /// stream that ends (after a few minutes, or billing shutting down) or
    /// breaks is opened again from it, after a pause that grows to 5 s
    /// while billing stays away. Returns when `handle` says stop, or with
    /// the error of a request billing refuses (CURSOR_EXPIRED: start again
    /// from `oldest_cursor` or from now, and rebuild what was missed).
    pub async fn follow(
        &mut self,
        endpoints: &Endpoints,
        mut handle: impl FnMut(&bpb::BillingEvent) -> bool,
    ) -> Result<(), Status> {
        let mut client = BillingEventServiceClient::with_interceptor(
            channel_without_timeout(&endpoints.billing_addr)?,
            bearer(&endpoints.billing_token)?,
        );
        let mut pause = Duration::from_millis(100);
        loop {
            let req = bpb::WatchEventsRequest { after_cursor: self.cursor.clone(), ..Default::default() };
            let mut stream = match client.watch_events(req).await {
                Ok(s) => s.into_inner(),
                Err(s) if reopen(&s) => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(5));
                    continue;
                }
                Err(s) => return Err(s),
            };
            loop {
                match stream.message().await {
                    Ok(Some(m)) => {
                        pause = Duration::from_millis(100);
                        match m.item {
                            Some(Item::Event(e)) => {
                                let go_on = !self.accept(&e) || handle(&e);
                                self.cursor = e.cursor;
                                if !go_on {
                                    return Ok(());
                                }
                            }
                            Some(Item::Bookmark(b)) => self.cursor = b.cursor,
                            None => {}
                        }
                    }
                    // The stream ended (its age, or a shutdown): go on from the cursor.
                    Ok(None) => break,
                    Err(s) if reopen(&s) => {
                        tokio::time::sleep(pause).await;
                        break;
                    }
                    Err(s) => return Err(s),
                }
            }
        }
    }
}
