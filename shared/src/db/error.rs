//! The one place that decides what a database error means for a caller.
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel_async::pooled_connection::PoolError;

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
    UniqueViolation {
        /// The constraint that fired.
        constraint: String,
    },
    /// Anything else is a bug: INTERNAL.
    #[error("database error: {0}")]
    Other(String),
}

impl From<DieselError> for DbError {
    fn from(e: DieselError) -> Self {
        DbError::from(&e)
    }
}

impl From<&DieselError> for DbError {
    fn from(e: &DieselError) -> Self {
        match e {
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
                    DatabaseErrorKind::ReadOnlyTransaction => read_only(msg),
                    _ if is_timeout_message(msg) => DbError::Timeout(msg.to_owned()),
                    _ if is_retryable_message(msg) => DbError::Conflict(msg.to_owned()),
                    _ if is_read_only_message(msg) => read_only(msg),
                    _ if is_unavailable_message(msg) => DbError::Unavailable(msg.to_owned()),
                    _ if is_data_exception_message(msg) => DbError::InvalidInput(msg.to_owned()),
                    _ => DbError::Other(e.to_string()),
                }
            }
            DieselError::BrokenTransactionManager => DbError::Unavailable(e.to_string()),
            // COMMIT failed and so did the ROLLBACK after it: the connection
            // is gone (the server ended it), and whether the transaction
            // committed is unknown. The caller retries with the same
            // idempotency key, which replays a committed effect.
            DieselError::RollbackErrorOnCommit { .. } => DbError::Unavailable(e.to_string()),
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

// The server ended the connection or is not ready for it: 57P01
// admin_shutdown (a fast shutdown, `pg_terminate_backend`), 57P02
// crash_shutdown, 57P03 cannot_connect_now ("the database system is starting
// up", "... is shutting down", "... is in recovery mode"), 57P05 idle session
// timeout.
fn is_unavailable_message(msg: &str) -> bool {
    const PATTERNS: &[&str] = &[
        "terminating connection",
        "shutting down",
        "starting up",
        "the database system is",
        "connection closed",
        "server closed the connection",
    ];
    PATTERNS.iter().any(|p| msg.contains(p))
}

// 25006 read_only_sql_transaction, and a standby refusing a write: "cannot
// execute INSERT in a read-only transaction", "... during recovery", "...
// while recovery is in progress".
fn is_read_only_message(msg: &str) -> bool {
    msg.contains("read-only transaction") || msg.contains("during recovery") || msg.contains("recovery is in progress")
}

/// The server takes no writes (a demoted primary, a standby): another
/// server may, so the caller retries (UNAVAILABLE). The connection stays
/// open, so the pool is told to check its connections before it hands them
/// out again ([`super::manager`]).
fn read_only(msg: &str) -> DbError {
    super::manager::note_read_only_error();
    DbError::Unavailable(msg.to_owned())
}

impl From<bb8::RunError<PoolError>> for DbError {
    fn from(e: bb8::RunError<PoolError>) -> Self {
        match e {
            bb8::RunError::TimedOut => DbError::Unavailable("timed out waiting for a database connection".into()),
            bb8::RunError::User(e) => DbError::Unavailable(e.to_string()),
        }
    }
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

    fn db(kind: DatabaseErrorKind, msg: &str) -> DbError {
        DbError::from(DieselError::DatabaseError(kind, Box::new(msg.to_owned())))
    }

    #[test]
    fn a_server_that_ended_the_connection_or_takes_no_writes_is_unavailable() {
        use DatabaseErrorKind::*;
        for (kind, m) in [
            (ReadOnlyTransaction, "cannot execute INSERT in a read-only transaction"),
            (Unknown, "cannot execute SELECT FOR UPDATE in a read-only transaction"),
            (Unknown, "cannot execute nextval() during recovery"),
            (Unknown, "cannot acquire lock mode RowExclusiveLock on database objects while recovery is in progress"),
            (Unknown, "terminating connection due to administrator command"),
            (Unknown, "terminating connection because of crash of another server process"),
            (Unknown, "terminating connection due to idle-session timeout"),
            (Unknown, "the database system is shutting down"),
            (Unknown, "the database system is starting up"),
            (Unknown, "the database system is in recovery mode"),
            (Unknown, "the database system is not accepting connections"),
            (UnableToSendCommand, "error communicating with the server: Connection reset by peer (os error 104)"),
            (ClosedConnection, "connection closed"),
        ] {
            assert!(matches!(db(kind, m), DbError::Unavailable(_)), "{m}");
        }
        let commit = DieselError::RollbackErrorOnCommit {
            rollback_error: Box::new(DieselError::DatabaseError(UnableToSendCommand, Box::new("connection closed".to_owned()))),
            commit_error: Box::new(DieselError::DatabaseError(Unknown, Box::new("terminating connection".to_owned()))),
        };
        assert!(matches!(DbError::from(commit), DbError::Unavailable(_)));
        assert!(matches!(db(Unknown, "relation \"orders\" does not exist"), DbError::Other(_)));
        assert!(matches!(db(Unknown, "could not serialize access due to concurrent update"), DbError::Conflict(_)));
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
}
