//! The event tail's own connection (docs/design.md, "Events"): it LISTENs
//! on `events`, and sends the NOTIFYs that wake the other replicas' tails,
//! each in a transaction of its own (writers never NOTIFY).
use std::time::Duration;

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};

/// Bound on connecting and on each statement of the listening connection.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(diesel::QueryableByName)]
struct Newest {
    #[diesel(sql_type = diesel::sql_types::Text)]
    xid: String,
}

/// Sends `NOTIFY events` on `l` when an event was written since
/// `last_seen` (None: not known, as after a spell of reading; then it
/// notifies): the events' sequence moved. A read of the sequence, not of
/// the table; an event committed behind a newer one is found by the
/// readers' settle retries. False when the connection failed.
pub(super) async fn notify_if_moved(l: &mut AsyncPgConnection, last_seen: &mut Option<String>) -> bool {
    let newest = tokio::time::timeout(
        LISTEN_TIMEOUT,
        diesel::sql_query("SELECT coalesce(pg_sequence_last_value(pg_get_serial_sequence('events', 'seq'))::text, '') AS xid")
            .get_result::<Newest>(l),
    )
    .await;
    let newest = match newest {
        Ok(Ok(n)) => n.xid,
        _ => return false,
    };
    if last_seen.as_ref() == Some(&newest) {
        return true;
    }
    *last_seen = Some(newest);
    notify(l).await
}

/// Sends `NOTIFY events`, which wakes the other replicas' tails (in a
/// transaction of its own, never a writer's). False when the connection
/// failed.
pub(super) async fn notify(l: &mut AsyncPgConnection) -> bool {
    let sent = tokio::time::timeout(LISTEN_TIMEOUT, diesel::sql_query("NOTIFY events").execute(l)).await;
    matches!(sent, Ok(Ok(_)))
}

/// Whether the listening connection still answers (checked on a poll).
pub(super) async fn alive(l: &mut AsyncPgConnection) -> bool {
    let alive = tokio::time::timeout(LISTEN_TIMEOUT, diesel::sql_query("SELECT 1").execute(l)).await;
    matches!(alive, Ok(Ok(_)))
}

pub(super) async fn listen(url: &str) -> Option<AsyncPgConnection> {
    let connected = tokio::time::timeout(LISTEN_TIMEOUT, async {
        let mut c = AsyncPgConnection::establish(url).await.map_err(|e| e.to_string())?;
        c.batch_execute("LISTEN events").await.map_err(|e| e.to_string())?;
        Ok::<_, String>(c)
    })
    .await;
    match connected {
        Ok(Ok(c)) => Some(c),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "event tail: cannot listen; polling meanwhile");
            None
        }
        Err(_) => {
            tracing::warn!("event tail: connecting to listen timed out; polling meanwhile");
            None
        }
    }
}
