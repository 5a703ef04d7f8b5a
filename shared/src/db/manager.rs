//! How the pool makes and checks its connections: checked locally, with no
//! round trip, when handed out and when given back, and never used again
//! once a statement on them found the server gone or taking no writes (a
//! failover; docs/design.md, Error model).
use std::sync::atomic::{AtomicU64, Ordering};

use diesel::{
    QueryableByName,
    connection::{Instrumentation, InstrumentationEvent, get_default_instrumentation},
    result::{DatabaseErrorKind, Error as DieselError},
    sql_types::Text,
};
use diesel_async::{
    AsyncConnection, AsyncPgConnection,
    pooled_connection::{PoolError, PoolableConnection},
};

use super::DbError;

/// Errors of a server taking no writes seen by this process so far
/// ([`note_read_only_error`]).
static READ_ONLY_ERRORS: AtomicU64 = AtomicU64::new(0);

fn read_only_errors() -> u64 {
    READ_ONLY_ERRORS.load(Ordering::Relaxed)
}

/// Tells the pools that a statement found its server taking no writes (a
/// demoted primary, a standby). Such a server keeps its connections open,
/// and a query's error can reach the caller without passing the
/// connection's [`Watch`] (a failed SELECT reports its error with its
/// rows), so each pooled connection opened before this is asked once,
/// when next handed out, whether its server takes writes
/// ([`Manager::is_valid`]). Called by [`DbError`]'s classification.
pub(super) fn note_read_only_error() {
    READ_ONLY_ERRORS.fetch_add(1, Ordering::Relaxed);
}

/// The pool's connection manager: diesel-async's PostgreSQL connections to
/// one connection string (libpq's URL or key=value form, one host or
/// several).
#[derive(Debug)]
pub struct Manager {
    url: String,
}

impl Manager {
    pub(super) fn new(url: String) -> Self {
        Self { url }
    }
}

impl bb8::ManageConnection for Manager {
    type Connection = AsyncPgConnection;
    type Error = PoolError;

    async fn connect(&self) -> Result<AsyncPgConnection, PoolError> {
        let mut conn = AsyncPgConnection::establish(&self.url).await.map_err(PoolError::ConnectionError)?;
        let checked = read_only_errors();
        conn.set_instrumentation(Watch { lost: None, checked, inner: get_default_instrumentation() });
        Ok(conn)
    }

    /// The check when a connection is handed out: local, with no round trip
    /// on the hot path. A
    /// connection whose socket the server closed (a restart,
    /// `pg_terminate_backend`, an idle timeout), whose transaction state is
    /// broken, or that hit an error meaning the server is gone or read-only
    /// is replaced by another; the default check (`SELECT 1` on every
    /// check-out) cost every RPC a round trip and a transaction of its own
    /// (measured with `loadgen --scenario deduct-hot`, three runs each on a
    /// new stack: one caller about 1,360 calls/s with it and 1,590 without,
    /// eight callers 4,690 and 5,030). A connection that died without the
    /// client noticing (the host vanished, no reset) fails its statement
    /// with UNAVAILABLE after the TCP user timeout that
    /// [`with_dead_peer_detection`](super::with_dead_peer_detection) sets;
    /// nothing was committed, and the caller retries.
    ///
    /// Only after a statement in this process found a server taking no
    /// writes (`note_read_only_error`) is a connection opened before that
    /// asked, once, `current_setting('transaction_read_only')`, and
    /// replaced when its server still takes no writes: after a failover the
    /// pool keeps none of the connections it had to the old primary. One
    /// opened to a read-only server after the last such error fails one
    /// write (UNAVAILABLE) before it is dropped; with
    /// `target_session_attrs=read-write` none is opened.
    async fn is_valid(&self, conn: &mut AsyncPgConnection) -> Result<(), PoolError> {
        if unusable(conn) {
            return Err(PoolError::QueryError(DieselError::DatabaseError(
                DatabaseErrorKind::ClosedConnection,
                Box::new("connection closed".to_owned()),
            )));
        }
        let seen = read_only_errors();
        if watch(conn).is_none_or(|w| w.checked >= seen) {
            return Ok(());
        }
        #[derive(QueryableByName)]
        struct Setting {
            #[diesel(sql_type = Text)]
            read_only: String,
        }
        use diesel_async::RunQueryDsl;
        let setting: Setting = diesel::sql_query("SELECT current_setting('transaction_read_only') AS read_only")
            .get_result(conn)
            .await
            .map_err(PoolError::QueryError)?;
        if setting.read_only != "off" {
            tracing::warn!("discarding a pooled connection: its server takes no writes");
            return Err(PoolError::QueryError(DieselError::DatabaseError(
                DatabaseErrorKind::ReadOnlyTransaction,
                Box::new("the server takes no writes".to_owned()),
            )));
        }
        if let Some(w) = watch(conn) {
            w.checked = seen;
        }
        Ok(())
    }

    /// The check when a connection is given back: one that cannot be used
    /// again is dropped there, and the pool opens a new one when it needs
    /// one, which a multi-host connection string with
    /// `target_session_attrs=read-write` sends to the writable server.
    fn has_broken(&self, conn: &mut AsyncPgConnection) -> bool {
        std::thread::panicking() || unusable(conn)
    }
}

/// Whether `conn` must not be handed out again: closed, a broken
/// transaction state, or a statement on it found the server gone or taking
/// no writes ([`Watch`]).
fn unusable(conn: &mut AsyncPgConnection) -> bool {
    if conn.is_broken() {
        return true;
    }
    match watch(conn).and_then(|w| w.lost.as_deref()) {
        Some(error) => {
            tracing::warn!(%error, "discarding a pooled connection: the server ended it or takes no writes");
            true
        }
        None => false,
    }
}

/// The [`Watch`] of a connection the pool has to itself: no query is in
/// flight, so its instrumentation is not shared and can be read.
fn watch(conn: &mut AsyncPgConnection) -> Option<&mut Watch> {
    conn.instrumentation().downcast_mut::<Watch>()
}

/// Watches the statements on one connection for an error that
/// [`DbError`] classifies as UNAVAILABLE (the server read-only, shutting
/// down, or the connection gone): a connection to a demoted primary stays
/// open and answers every write with such an error, so the socket alone
/// does not tell the pool to drop it. It sees the errors of statements that
/// return no rows and of BEGIN/COMMIT; a query's error that arrives with
/// its rows passes by it ([`note_read_only_error`] covers those). Other
/// events go on to the default instrumentation, if one is installed.
struct Watch {
    /// The first such error.
    lost: Option<String>,
    /// [`READ_ONLY_ERRORS`] when the connection was last known to take
    /// writes (opened, or asked by [`Manager::is_valid`]).
    checked: u64,
    inner: Option<Box<dyn Instrumentation>>,
}

impl Instrumentation for Watch {
    fn on_connection_event(&mut self, event: InstrumentationEvent<'_>) {
        if self.lost.is_none()
            && let InstrumentationEvent::FinishQuery { error: Some(e), .. } = &event
            && let DbError::Unavailable(m) = DbError::from(*e)
        {
            self.lost = Some(m);
        }
        if let Some(inner) = &mut self.inner {
            inner.on_connection_event(event);
        }
    }
}
