//! The connection pool (bb8 + diesel-async), migrations, and the one place
//! that decides what a database error means for a caller.
use std::time::Duration;

use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel_async::{
    AsyncPgConnection,
    pooled_connection::{AsyncDieselConnectionManager, PoolError},
};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness};

pub type Pool = bb8::Pool<AsyncDieselConnectionManager<AsyncPgConnection>>;
pub type PooledConn<'a> = bb8::PooledConnection<'a, AsyncDieselConnectionManager<AsyncPgConnection>>;
pub type Conn = AsyncPgConnection;

/// What a database failure means for the caller, independent of the domain.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// No connection within the pool's timeout, or the server is gone:
    /// UNAVAILABLE, retry later.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// Serialization failure, deadlock, lock timeout: ABORTED, retry now.
    #[error("transaction conflict: {0}")]
    Conflict(String),
    /// A unique constraint fired; callers that expect races turn this into a
    /// replay, the rest treat it as a conflict.
    #[error("unique violation on {constraint}")]
    UniqueViolation { constraint: String },
    /// Anything else is a bug: INTERNAL.
    #[error("database error: {0}")]
    Other(String),
}

impl From<DieselError> for DbError {
    fn from(e: DieselError) -> Self {
        match &e {
            DieselError::DatabaseError(kind, info) => {
                let msg = info.message();
                match kind {
                    DatabaseErrorKind::UniqueViolation => {
                        DbError::UniqueViolation { constraint: info.constraint_name().unwrap_or_default().to_owned() }
                    }
                    DatabaseErrorKind::SerializationFailure => DbError::Conflict(msg.to_owned()),
                    DatabaseErrorKind::UnableToSendCommand | DatabaseErrorKind::ClosedConnection => {
                        DbError::Unavailable(msg.to_owned())
                    }
                    _ if is_retryable_message(msg) => DbError::Conflict(msg.to_owned()),
                    _ if is_unavailable_message(msg) => DbError::Unavailable(msg.to_owned()),
                    _ => DbError::Other(e.to_string()),
                }
            }
            DieselError::BrokenTransactionManager => DbError::Unavailable(e.to_string()),
            _ => DbError::Other(e.to_string()),
        }
    }
}

// 40P01 and 55P03 arrive as unclassified errors from diesel-async.
fn is_retryable_message(msg: &str) -> bool {
    msg.contains("deadlock detected")
        || msg.contains("could not obtain lock")
        || msg.contains("lock timeout")
        || msg.contains("could not serialize")
}

// 57P01/57P02/57P03: the server is shutting down or starting.
fn is_unavailable_message(msg: &str) -> bool {
    msg.contains("terminating connection")
        || msg.contains("shutting down")
        || msg.contains("starting up")
        || msg.contains("connection closed")
}

impl From<bb8::RunError<PoolError>> for DbError {
    fn from(e: bb8::RunError<PoolError>) -> Self {
        match e {
            bb8::RunError::TimedOut => DbError::Unavailable("timed out waiting for a database connection".into()),
            bb8::RunError::User(e) => DbError::Unavailable(e.to_string()),
        }
    }
}

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
pub fn pool(url: &str, max_size: u32, connect_timeout: Duration) -> Pool {
    bb8::Pool::builder()
        .max_size(max_size)
        .min_idle(Some(1.min(max_size)))
        .connection_timeout(connect_timeout)
        .idle_timeout(Some(Duration::from_secs(300)))
        .error_sink(Box::new(LogSink))
        .build_unchecked(AsyncDieselConnectionManager::<AsyncPgConnection>::new(url))
}

/// Takes a connection from the pool; waits at most the pool's timeout.
pub async fn conn(pool: &Pool) -> Result<PooledConn<'_>, DbError> {
    Ok(pool.get().await?)
}

/// Runs pending embedded migrations on a dedicated connection, off the async
/// runtime (diesel's migration harness is synchronous), holding advisory
/// lock `lock_key` so replicas starting together migrate one at a time.
pub async fn migrate(url: &str, migrations: EmbeddedMigrations, lock_key: i64) -> anyhow::Result<Vec<String>> {
    use diesel::{Connection, RunQueryDsl as _};
    use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
    let url = url.to_owned();
    tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<String>> {
        let mut conn = AsyncConnectionWrapper::<AsyncPgConnection>::establish(&url)?;
        diesel::sql_query(format!("SELECT pg_advisory_lock({lock_key})")).execute(&mut conn)?;
        let done = conn
            .run_pending_migrations(migrations)
            .map(|v| v.iter().map(|v| v.to_string()).collect())
            .map_err(|e| anyhow::anyhow!("migration failed: {e}"));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlock_is_retryable() {
        assert!(is_retryable_message("deadlock detected"));
        assert!(!is_retryable_message("syntax error at or near"));
    }
}
