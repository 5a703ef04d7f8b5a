//! The event stream both services serve (docs/design.md, "Events"): rows
//! written by triggers in the transaction of the change ([`store`] reads
//! them), cursors ([`cursor`]), the replica's tail reader ([`hub`]) and one
//! watcher's stream ([`watch`]). The services add their event types and
//! payloads.
pub mod api;
pub mod cursor;
pub mod hub;
mod listener;
pub mod store;
pub mod watch;

pub use cursor::{Cursor, Position};
pub use hub::{Decoder, Entry, Hub, HubOptions, nudge};
pub use store::{CursorError, StoredEvent};
pub use watch::{Filter, Item, WatchOptions, WatchersExhausted};
