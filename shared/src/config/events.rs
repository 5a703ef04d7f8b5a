//! The event streams' settings, part of every service's [`super::CommonConfig`].
use std::time::Duration;

use super::parse;

/// The event stream's settings (docs/design.md, "Events").
#[derive(Clone, Debug, clap::Args)]
#[command(next_help_heading = "Event stream (environment)")]
pub struct EventsConfig {
    /// Days events are kept before the purge-events job deletes them (min 1); older cursors are CURSOR_EXPIRED.
    #[arg(long = "events-retention-days", env = "EVENTS_RETENTION_DAYS", default_value = "30", value_parser = parse::at_least_one_u32)]
    pub retention_days: u32,
    /// WatchEvents streams one replica serves at once; more are RESOURCE_EXHAUSTED (min 1).
    #[arg(long = "events-max-watchers", env = "EVENTS_MAX_WATCHERS", default_value = "256", value_parser = parse::at_least_one_usize)]
    pub max_watchers: usize,
    /// Seconds without a message after which a watcher gets a bookmark.
    #[arg(long = "events-bookmark-secs", env = "EVENTS_BOOKMARK_SECS", default_value = "10", value_parser = parse::secs)]
    pub bookmark_every: Duration,
    /// Seconds a WatchEvents stream lives before it ends with a final bookmark (clients resume from it).
    #[arg(long = "events-stream-max-secs", env = "EVENTS_STREAM_MAX_SECS", default_value = "240", value_parser = parse::secs)]
    pub stream_max_age: Duration,
    /// Milliseconds between polls of the event table when no notification comes.
    #[arg(long = "events-poll-ms", env = "EVENTS_POLL_MS", default_value = "1000", value_parser = parse::millis)]
    pub poll: Duration,
}
