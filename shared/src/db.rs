//! The connection pool (bb8 + diesel-async), migrations, and the one place
//! that decides what a database error means for a caller.
use std::time::Duration;

use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel_async::{
    AsyncPgConnection,
    pooled_connection::{AsyncDieselConnectionManager, ManagerConfig, PoolError, PoolableConnection, RecyclingMethod},
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
    /// Serialization failure or deadlock: ABORTED; the transaction may be
    /// retried at once.
    #[error("transaction conflict: {0}")]
    Conflict(String),
    /// A lock wait or a statement ran past its bound (`lock_timeout`,
    /// `statement_timeout`): ABORTED to the caller, never retried in
    /// process, so one held row cannot pin pooled connections for long.
    #[error("timed out in the database: {0}")]
    Timeout(String),
    /// A value PostgreSQL cannot hold or parse (SQLSTATE class 22, an index
    /// row too large): the caller's input, INVALID_ARGUMENT.
    #[error("invalid value: {0}")]
    InvalidInput(String),
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
                    _ if is_timeout_message(msg) => DbError::Timeout(msg.to_owned()),
                    _ if is_retryable_message(msg) => DbError::Conflict(msg.to_owned()),
                    _ if is_unavailable_message(msg) => DbError::Unavailable(msg.to_owned()),
                    _ if is_data_exception_message(msg) => DbError::InvalidInput(msg.to_owned()),
                    _ => DbError::Other(e.to_string()),
                }
            }
            DieselError::BrokenTransactionManager => DbError::Unavailable(e.to_string()),
            // A bound value the driver cannot encode for PostgreSQL (a time
            // outside its range): the value came from the caller.
            DieselError::SerializationError(inner) => DbError::InvalidInput(inner.to_string()),
            _ => DbError::Other(e.to_string()),
        }
    }
}

// diesel-async passes SQLSTATEs other than a handful of constraint and
// serialization codes on as unclassified errors, with the server's message.
// 40P01 deadlock, 40001 serialization failure:
fn is_retryable_message(msg: &str) -> bool {
    msg.contains("deadlock detected") || msg.contains("could not serialize")
}

// 55P03 lock_not_available (lock_timeout, NOWAIT), 57014 query_canceled
// (statement_timeout):
fn is_timeout_message(msg: &str) -> bool {
    msg.contains("could not obtain lock") || msg.contains("lock timeout") || msg.contains("statement timeout")
}

// SQLSTATE class 22 (data exception) and 54000 (an index row too large):
// messages PostgreSQL gives for values it cannot hold or parse.
fn is_data_exception_message(msg: &str) -> bool {
    const PATTERNS: &[&str] = &[
        "out of range",
        "invalid input syntax",
        "invalid input value",
        "invalid byte sequence",
        "value too long",
        "numeric field overflow",
        "division by zero",
        "cannot be converted to text",
        "unsupported Unicode escape",
        "null character not permitted",
        "invalid escape",
        "untranslatable character",
        "invalid regular expression",
        "index row size",
        "index row requires",
        "string is too long",
        "array size exceeds",
    ];
    PATTERNS.iter().any(|p| msg.contains(p))
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
/// Every pooled connection starts with the configured `lock_timeout` and
/// `statement_timeout` as its defaults, so a request queued behind a held
/// row lock gives its connection back (ABORTED) instead of pinning it.
pub fn pool(url: &str, config: &crate::config::CommonConfig) -> Pool {
    let url = with_dead_peer_detection(&with_session_limits(url, config.lock_timeout, config.statement_timeout));
    bb8::Pool::builder()
        .max_size(config.pool_size)
        .min_idle(Some(1.min(config.pool_size)))
        .connection_timeout(config.connect_timeout)
        .idle_timeout(Some(Duration::from_secs(300)))
        .error_sink(Box::new(LogSink))
        .build_unchecked(AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(url, manager_config()))
}

/// How a pooled connection is checked when it is handed out: locally, with
/// no round trip. A connection whose socket the server closed (a restart,
/// `pg_terminate_backend`, an idle timeout) or whose transaction state is
/// broken is replaced by another; the default check (`SELECT 1` on every
/// check-out) cost every RPC a round trip and a transaction of its own
/// (measured with `loadgen --scenario deduct-hot`, three runs each on a new
/// stack: one caller about 1,360 calls/s with it and 1,590 without, eight
/// callers 4,690 and 5,030). A connection that died without the client
/// noticing (the host vanished, no reset) fails its statement with
/// UNAVAILABLE after [`DEAD_PEER`]'s TCP user timeout; nothing was
/// committed, and the caller retries.
fn manager_config() -> ManagerConfig<AsyncPgConnection> {
    let mut config = ManagerConfig::default();
    config.recycling_method = RecyclingMethod::CustomFunction(Box::new(|conn: &mut AsyncPgConnection| {
        let broken = conn.is_broken();
        Box::pin(async move {
            if broken {
                Err(DieselError::DatabaseError(DatabaseErrorKind::ClosedConnection, Box::new("connection closed".to_owned())))
            } else {
                Ok(())
            }
        })
    }));
    config
}

/// TCP settings that bound how long a connection to a vanished database host
/// (a crash or a partition, no reset) can hold a call, since pooled
/// connections are not pinged when handed out: a statement sent into it
/// fails after `tcp_user_timeout` seconds unacknowledged (UNAVAILABLE), and
/// an idle one is found dead by keepalives within about a minute and
/// replaced. Settings the operator already wrote in the connection string
/// are left alone. They do not apply to Unix-domain sockets.
const DEAD_PEER: [(&str, u32); 4] =
    [("keepalives_idle", 30), ("keepalives_interval", 10), ("keepalives_retries", 3), ("tcp_user_timeout", 10)];

/// Adds [`DEAD_PEER`]'s settings the connection string does not set.
pub fn with_dead_peer_detection(url: &str) -> String {
    let is_url = url.starts_with("postgres://") || url.starts_with("postgresql://");
    let set = |key: &str| {
        let prefix = format!("{key}=");
        if is_url {
            url.split_once('?').is_some_and(|(_, q)| q.split('&').any(|p| p.starts_with(&prefix)))
        } else {
            url.split_whitespace().any(|kv| kv.starts_with(&prefix))
        }
    };
    let missing: Vec<String> = DEAD_PEER.iter().filter(|(k, _)| !set(k)).map(|(k, v)| format!("{k}={v}")).collect();
    if missing.is_empty() {
        return url.to_owned();
    }
    if !is_url {
        return format!("{url} {}", missing.join(" "));
    }
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{}", missing.join("&"))
}

/// Adds `lock_timeout` and `statement_timeout` to a connection string as
/// start-up options (libpq's `options`), so they are the session defaults:
/// `SET LOCAL ... TO DEFAULT` returns to them, and no round trip is spent.
/// Options the operator already set are kept (ours are appended to theirs).
/// A zero duration leaves the server's default.
pub fn with_session_limits(url: &str, lock_timeout: Duration, statement_timeout: Duration) -> String {
    let mut opts = Vec::new();
    if !lock_timeout.is_zero() {
        opts.push(format!("-c lock_timeout={}", lock_timeout.as_millis()));
    }
    if !statement_timeout.is_zero() {
        opts.push(format!("-c statement_timeout={}", statement_timeout.as_millis()));
    }
    if opts.is_empty() {
        return url.to_owned();
    }
    let opts = opts.join(" ");
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        // key=value form: a later `options` would replace an earlier one.
        if url.split_whitespace().any(|kv| kv.starts_with("options=")) {
            tracing::warn!(
                "the database connection string sets `options`; DB_LOCK_TIMEOUT_MS/DB_STATEMENT_TIMEOUT_MS not applied"
            );
            return url.to_owned();
        }
        return format!("{url} options='{opts}'");
    }
    let encoded = opts.replace(' ', "%20").replace('=', "%3D");
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut params: Vec<String> = query.split('&').filter(|p| !p.is_empty()).map(str::to_owned).collect();
    match params.iter_mut().find(|p| p.starts_with("options=")) {
        Some(existing) => {
            existing.push_str("%20");
            existing.push_str(&encoded);
        }
        None => params.push(format!("options={encoded}")),
    }
    format!("{base}?{}", params.join("&"))
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

    #[test]
    fn lock_timeouts_are_not_retried_in_process() {
        assert!(is_timeout_message("canceling statement due to lock timeout"));
        assert!(is_timeout_message("canceling statement due to statement timeout"));
        assert!(!is_retryable_message("canceling statement due to lock timeout"));
    }

    #[test]
    fn data_exceptions_are_the_callers() {
        for m in [
            "timestamp out of range",
            "date out of range for timestamp",
            "invalid byte sequence for encoding \"UTF8\": 0x00",
            "index row size 2720 exceeds btree version 4 maximum 2704 for index \"orders_payment_id_key\"",
            "unsupported Unicode escape sequence",
        ] {
            assert!(is_data_exception_message(m), "{m}");
        }
        assert!(!is_data_exception_message("relation \"orders\" does not exist"));
    }

    #[test]
    fn dead_peer_settings_are_added_unless_set() {
        assert_eq!(
            with_dead_peer_detection("postgres://h/db"),
            "postgres://h/db?keepalives_idle=30&keepalives_interval=10&keepalives_retries=3&tcp_user_timeout=10"
        );
        assert_eq!(
            with_dead_peer_detection("postgres://h/db?options=x&tcp_user_timeout=3"),
            "postgres://h/db?options=x&tcp_user_timeout=3&keepalives_idle=30&keepalives_interval=10&keepalives_retries=3",
            "an operator's own value is kept"
        );
        assert_eq!(
            with_dead_peer_detection("host=h dbname=db keepalives_idle=5"),
            "host=h dbname=db keepalives_idle=5 keepalives_interval=10 keepalives_retries=3 tcp_user_timeout=10"
        );
        // That the driver accepts these keys is shown by every system test:
        // each connects through `pool`.
    }

    #[test]
    fn session_limits_become_startup_options() {
        let ms = Duration::from_millis;
        assert_eq!(
            with_session_limits("postgres://h/db", ms(500), ms(5000)),
            "postgres://h/db?options=-c%20lock_timeout%3D500%20-c%20statement_timeout%3D5000"
        );
        assert_eq!(
            with_session_limits("postgres://h/db?sslmode=disable", ms(1), Duration::ZERO),
            "postgres://h/db?sslmode=disable&options=-c%20lock_timeout%3D1"
        );
        assert_eq!(with_session_limits("postgres://h/db", Duration::ZERO, Duration::ZERO), "postgres://h/db");
        assert_eq!(
            with_session_limits("postgres://h/db?options=-c%20search_path%3Dbilling&x=1", ms(5), Duration::ZERO),
            "postgres://h/db?options=-c%20search_path%3Dbilling%20-c%20lock_timeout%3D5&x=1",
            "an operator's own options are kept"
        );
        assert_eq!(
            with_session_limits("host=h dbname=db", ms(5), ms(6)),
            "host=h dbname=db options='-c lock_timeout=5 -c statement_timeout=6'"
        );
    }
}
