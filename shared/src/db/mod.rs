//! The connection pool (bb8 + diesel-async), statement and transaction
//! retries, and migrations. What a database error means for a caller is
//! decided in one place, [`DbError`]; what the services add to a connection
//! string, in [`with_session_limits`] and [`with_dead_peer_detection`].
use std::time::Duration;

use diesel_async::{AsyncPgConnection, pooled_connection::PoolError};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness};

/// The bb8 pool of diesel-async PostgreSQL connections.
pub type Pool = bb8::Pool<Manager>;
/// A connection checked out of [`Pool`].
pub type PooledConn<'a> = bb8::PooledConnection<'a, Manager>;
/// A PostgreSQL connection.
pub type Conn = AsyncPgConnection;

mod error;
mod functions;
mod manager;
mod url;

pub use error::DbError;
pub use functions::{SqlFunction, check_listed, common};
pub use manager::Manager;
pub use url::{with_dead_peer_detection, with_session_limits};

#[derive(Debug, Clone, Copy)]
struct LogSink;

impl bb8::ErrorSink<PoolError> for LogSink {
    fn sink(&self, error: PoolError) {
        tracing::warn!(error = %error, "database connection failed");
    }
    fn boxed_clone(&self) -> Box<dyn bb8::ErrorSink<PoolError>> {
        Box::new(*self)
    }
}

/// Builds a pool without connecting: a service starts (NOT_SERVING) even when
/// the database is down, and RPCs fail fast with UNAVAILABLE until it is back.
/// Every pooled connection starts with the configured `lock_timeout` and
/// `statement_timeout` as its defaults, so a request queued behind a held
/// row lock gives its connection back (ABORTED) instead of pinning it. How
/// connections are checked and when one is dropped: [`Manager`].
pub fn pool(url: &str, config: &crate::config::CommonConfig) -> Pool {
    let url = with_dead_peer_detection(&with_session_limits(url, config.lock_timeout, config.statement_timeout));
    bb8::Pool::builder()
        .max_size(config.pool_size)
        .min_idle(Some(1.min(config.pool_size)))
        .connection_timeout(config.connect_timeout)
        .idle_timeout(Some(Duration::from_secs(300)))
        .error_sink(Box::new(LogSink))
        .build_unchecked(Manager::new(url))
}

/// Whether `conn` is inside an open transaction. A statement that failed in
/// there aborted the whole transaction, so only its owner may retry it.
pub fn in_transaction(conn: &mut Conn) -> bool {
    use diesel_async::{AsyncConnection, TransactionManager};
    !matches!(<Conn as AsyncConnection>::TransactionManager::transaction_manager_status_mut(conn).transaction_depth(), Ok(None))
}

/// Attempts of a transaction that lost a race before the error goes out (as
/// ABORTED).
pub const TX_ATTEMPTS: u32 = 5;

/// The lost races [`retry_tx!`](crate::retry_tx) runs a transaction again for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Races {
    /// Serialization failures and deadlocks ([`DbError::Conflict`]).
    Conflicts,
    /// Those and unique violations: for transactions whose next attempt
    /// reads what the winner inserted instead of inserting it again.
    ConflictsAndUnique,
}

impl Races {
    /// Whether `e` is a race of this kind, which a new attempt may win.
    pub fn lost(self, e: Option<&DbError>) -> bool {
        match e {
            Some(DbError::Conflict(_)) => true,
            Some(DbError::UniqueViolation { .. }) => self == Races::ConflictsAndUnique,
            _ => false,
        }
    }
}

/// Runs `body` in a transaction on `conn` and runs it again, in a new
/// transaction, while it loses a race of kind `races`, at most
/// [`TX_ATTEMPTS`] times. Inside a transaction the caller already opened,
/// `body` runs once, in it: a failed statement aborted that transaction, so
/// only its owner may retry. The error type must implement
/// [`AsDbError`](crate::error::AsDbError) and convert from diesel's errors.
///
/// `retry_tx!(conn: &mut Conn, races: Races, |c| expr -> Result<T, E>)`
#[macro_export]
macro_rules! retry_tx {
    ($conn:expr, $races:expr, |$c:ident| $body:expr) => {{
        use diesel_async::AsyncConnection as _;
        let conn: &mut $crate::db::Conn = $conn;
        let races: $crate::db::Races = $races;
        if $crate::db::in_transaction(conn) {
            let $c = conn;
            async { $body }.await
        } else {
            let mut attempt = 1;
            loop {
                match conn.transaction(async |$c| $body).await {
                    Err(e) if attempt < $crate::db::TX_ATTEMPTS && races.lost($crate::error::AsDbError::as_db_error(&e)) => {
                        attempt += 1
                    }
                    other => break other,
                }
            }
        }
    }};
}

/// [`retry_tx!`] for a body that is one statement: it is its own
/// transaction, so no BEGIN/COMMIT round trips are added on a hot path (the
/// deduction function). Inside a caller's transaction it runs once.
///
/// `retry_statement!(conn: &mut Conn, races: Races, |c| expr -> Result<T, E>)`
#[macro_export]
macro_rules! retry_statement {
    ($conn:expr, $races:expr, |$c:ident| $body:expr) => {{
        let $c: &mut $crate::db::Conn = $conn;
        let races: $crate::db::Races = $races;
        let attempts = if $crate::db::in_transaction($c) { 1 } else { $crate::db::TX_ATTEMPTS };
        let mut attempt = 1;
        loop {
            match async { $body }.await {
                Err(e) if attempt < attempts && races.lost($crate::error::AsDbError::as_db_error(&e)) => attempt += 1,
                other => break other,
            }
        }
    }};
}

/// Takes a connection from the pool; waits at most the pool's timeout.
pub async fn conn(pool: &Pool) -> Result<PooledConn<'_>, DbError> {
    Ok(pool.get().await?)
}

/// Runs pending embedded migrations, then applies the service's SQL
/// functions (docs/design.md, SQL functions), on a dedicated connection, off
/// the async runtime (diesel's migration harness is synchronous), holding
/// advisory lock `lock_key` so replicas starting together migrate one at a
/// time. Returns the migrations run; the functions (re)created are logged.
pub async fn migrate(
    url: &str,
    migrations: EmbeddedMigrations,
    functions: &'static [SqlFunction],
    lock_key: i64,
) -> anyhow::Result<Vec<String>> {
    use diesel::{Connection, RunQueryDsl as _};
    use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
    let url = url.to_owned();
    tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<String>> {
        let mut conn = AsyncConnectionWrapper::<AsyncPgConnection>::establish(&url)?;
        diesel::sql_query(format!("SELECT pg_advisory_lock({lock_key})")).execute(&mut conn)?;
        let done = functions::bootstrap(&mut conn, functions)
            .and_then(|()| conn.run_pending_migrations(migrations).map_err(|e| anyhow::anyhow!("{e}")))
            .map(|v| v.iter().map(|v| v.to_string()).collect::<Vec<_>>())
            .map_err(|e| anyhow::anyhow!("migration failed: {e}"))
            .and_then(|done| {
                // After any migration, every function is applied again: a
                // migration may have replaced or dropped one.
                let applied = functions::apply(&mut conn, functions, !done.is_empty())
                    .map_err(|e| anyhow::anyhow!("applying SQL functions failed: {e:#}"))?;
                if !applied.is_empty() {
                    tracing::info!(functions = ?applied, "SQL functions applied");
                }
                Ok(done)
            });
        let _ = diesel::sql_query(format!("SELECT pg_advisory_unlock({lock_key})")).execute(&mut conn);
        done
    })
    .await?
}

/// `SELECT 1` through the pool: the readiness check.
pub async fn ping(pool: &Pool) -> Result<(), DbError> {
    use diesel_async::RunQueryDsl;
    let mut c = conn(pool).await?;
    diesel::sql_query("SELECT 1").execute(&mut c).await?;
    Ok(())
}
