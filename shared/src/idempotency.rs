//! Idempotency keys (docs/design.md, Idempotency). The key, a hash of the request and the
//! encoded response are written in the caller's transaction, together with
//! the effect: a crash can never leave an effect without its key or a key
//! without its effect.
//!
//! In the effect's transaction: [`begin`] claims the key (or finds the stored
//! response to replay), the effect runs, [`finish`] stores the response.
//! A concurrent request with the same key waits briefly on the first one's
//! uncommitted row and then fails with ABORTED (in flight).
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use sha2::{Digest, Sha256};
use tonic::{Request, Status};

use crate::db::{Conn, DbError};

/// The request metadata entry that carries the key.
pub const METADATA_KEY: &str = "idempotency-key";
const MAX_KEY_LEN: usize = 200;

/// A claimed or claimable key for one RPC method.
#[derive(Clone, Debug)]
pub struct Key {
    /// The RPC method the key belongs to.
    pub method: &'static str,
    /// The caller's key.
    pub key: String,
    /// SHA-256 of the encoded request: a key belongs to one request.
    pub request_hash: Vec<u8>,
}

impl Key {
    /// Reads `idempotency-key` from the request metadata, if present (the
    /// RPCs whose request has no `request_id` field: CompleteSession).
    pub fn from_request<T: prost::Message>(req: &Request<T>, method: &'static str) -> Result<Option<Self>, Status> {
        let Some(key) = header(req)? else { return Ok(None) };
        Ok(Some(Self { method, key, request_hash: Sha256::digest(req.get_ref().encode_to_vec()).to_vec() }))
    }

    /// The key of a request with a `request_id` field (`request_id` gives
    /// access to it): the field, or the deprecated `idempotency-key` header
    /// (docs/design.md, Idempotency). Both present must be equal: a header
    /// and a field that disagree name two keys for one call, and picking
    /// either could run the effect twice, so the call is refused with
    /// IDEMPOTENCY_KEY_REUSED.
    ///
    /// The request hash is over the request with `request_id` cleared: the
    /// key is not part of "the same request", so the header form and the
    /// field form of one request hash alike (a caller may move from one to
    /// the other between retries), and the hash of a request without the
    /// field is what it was before the field existed (a key stored then still
    /// replays, and checkout's session ids derived from it do not move).
    pub fn from_request_with_id<T: prost::Message + Clone>(
        req: &Request<T>,
        method: &'static str,
        request_id: fn(&mut T) -> &mut String,
    ) -> Result<Option<Self>, Status> {
        let header = header(req)?;
        let mut body = req.get_ref().clone();
        let field = std::mem::take(request_id(&mut body));
        let field = if field.is_empty() {
            None
        } else if is_request_id(&field) {
            Some(field)
        } else {
            return Err(crate::status::invalid_field(REQUEST_ID_FIELD, "must be a UUID (8-4-4-4-12 hex digits)"));
        };
        let key = match (header, field) {
            (None, None) => return Ok(None),
            (Some(k), None) | (None, Some(k)) => k,
            (Some(h), Some(f)) if h == f => f,
            (Some(_), Some(_)) => return Err(key_disagreement()),
        };
        Ok(Some(Self { method, key, request_hash: Sha256::digest(body.encode_to_vec()).to_vec() }))
    }
}

/// INVALID_ARGUMENT IDEMPOTENCY_KEY_REUSED (the reason of a key that names
/// another request), with a field violation on `request_id`.
fn key_disagreement() -> Status {
    let description = format!("disagrees with the deprecated {METADATA_KEY} header; send request_id alone");
    let details = tonic_types::ErrorDetails::with_bad_request_violation(REQUEST_ID_FIELD, description.clone());
    proto::error::status(
        crate::status::ErrorReason::IdempotencyKeyReused,
        format!("{REQUEST_ID_FIELD}: {description}"),
        [("field", REQUEST_ID_FIELD.to_owned())],
        details,
    )
}

/// The request field that carries the key (the header's successor).
pub const REQUEST_ID_FIELD: &str = "request_id";

/// A `request_id` is a UUID in its hyphenated form, used as sent: a retry
/// sends the same text, and it can equal an `idempotency-key` header that
/// carried it before.
fn is_request_id(s: &str) -> bool {
    s.len() == 36 && uuid::Uuid::try_parse(s).is_ok()
}

/// The deprecated `idempotency-key` metadata entry, if present.
fn header<T>(req: &Request<T>) -> Result<Option<String>, Status> {
    let Some(raw) = req.metadata().get(METADATA_KEY) else { return Ok(None) };
    let key = raw.to_str().map_err(|_| crate::status::invalid_field(METADATA_KEY, "must be printable ASCII"))?.trim().to_owned();
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(crate::status::invalid_field(METADATA_KEY, format!("must be 1..{MAX_KEY_LEN} characters")));
    }
    Ok(Some(key))
}

/// What claiming a key found.
#[derive(Debug)]
pub enum Begin {
    /// The key is ours: run the effect, then [`finish`].
    Fresh,
    /// The same request ran before: return this encoded response.
    Replay(Vec<u8>),
}

/// Why a key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum IdempotencyError {
    /// The key was used before with another request.
    #[error("idempotency key reused with a different request")]
    Reused,
    /// The first request with this key has not finished.
    #[error("a request with this idempotency key is still in flight")]
    InFlight,
    /// A database failure.
    #[error(transparent)]
    Db(#[from] DbError),
}

diesel::table! {
    /// The same table in each service's database (see its migrations).
    idempotency_keys (method, key) {
        /// The RPC method.
        method -> Text,
        /// The caller's key.
        key -> Text,
        /// SHA-256 of the encoded request.
        request_hash -> Bytea,
        /// The encoded response, once the effect committed.
        response -> Bytea,
        /// When the key was claimed (purged after 24 h).
        created_at -> Timestamptz,
    }
}

use idempotency_keys as ik;

/// A stored key: the request's hash and the encoded response.
fn stored<'a>(key: &'a Key) -> ik::BoxedQuery<'a, diesel::pg::Pg, (diesel::sql_types::Bytea, diesel::sql_types::Bytea)> {
    ik::table.filter(ik::method.eq(key.method)).filter(ik::key.eq(&key.key)).select((ik::request_hash, ik::response)).into_boxed()
}

/// Claims `key` inside the caller's open transaction.
pub async fn begin(conn: &mut Conn, key: &Key, now: DateTime<Utc>) -> Result<Begin, IdempotencyError> {
    // Wait only briefly on a concurrent claim of the same key.
    diesel::sql_query("SELECT set_config('lock_timeout', '300ms', true)").execute(conn).await.map_err(DbError::from)?;
    let inserted = diesel::insert_into(ik::table)
        .values((
            ik::method.eq(key.method),
            ik::key.eq(&key.key),
            ik::request_hash.eq(&key.request_hash),
            ik::response.eq(Vec::<u8>::new()),
            ik::created_at.eq(now),
        ))
        .on_conflict_do_nothing()
        .execute(conn)
        .await
        .map_err(|e| match DbError::from(e) {
            DbError::Timeout(_) => IdempotencyError::InFlight,
            other => IdempotencyError::Db(other),
        })?;
    // Back to the pool's bound for the rest of the transaction.
    diesel::sql_query("SET LOCAL lock_timeout TO DEFAULT").execute(conn).await.map_err(DbError::from)?;
    if inserted == 1 {
        return Ok(Begin::Fresh);
    }
    let (request_hash, response): (Vec<u8>, Vec<u8>) = stored(key).first(conn).await.map_err(DbError::from)?;
    if request_hash != key.request_hash {
        return Err(IdempotencyError::Reused);
    }
    Ok(Begin::Replay(response))
}

/// Stores the encoded response of a [`Begin::Fresh`] key, in the same
/// transaction as the effect.
pub async fn finish(conn: &mut Conn, key: &Key, response: &[u8]) -> Result<(), DbError> {
    diesel::update(ik::table.find((key.method, &key.key))).set(ik::response.eq(response)).execute(conn).await?;
    Ok(())
}

impl Key {
    /// A UUID derived from the key, so a retry with the same key names the
    /// same new resource (and downstream natural idempotency applies).
    pub fn derived_uuid(&self, salt: &str) -> uuid::Uuid {
        let digest = Sha256::digest(format!("{}|{}|{salt}", self.method, self.key).as_bytes());
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest[..16]);
        uuid::Builder::from_random_bytes(bytes).into_uuid()
    }
}

/// Decodes a stored response for a replay.
pub fn decode<M: prost::Message + Default>(bytes: &[u8]) -> Result<M, DbError> {
    M::decode(bytes).map_err(|e| DbError::Other(format!("stored idempotent response is corrupt: {e}")))
}

/// Deletes keys older than `before` (24 h retention); returns how many.
pub async fn purge(conn: &mut Conn, before: DateTime<Utc>) -> Result<usize, DbError> {
    Ok(diesel::delete(ik::table.filter(ik::created_at.lt(before))).execute(conn).await?)
}

/// What a keyed effect produced: a fresh value, or the stored encoded
/// response of an earlier identical request.
#[derive(Debug)]
pub enum Outcome<T> {
    /// The effect ran now and produced this.
    Fresh(T),
    /// An earlier identical request produced this encoded response.
    Replay(Vec<u8>),
}

/// How a keyed effect's value is stored: encoded as the RPC's response.
pub type Encode<'a, T> = &'a (dyn Fn(&T) -> Vec<u8> + Send + Sync);

/// The [`Encode`] of an RPC whose response `to_proto` builds.
pub fn encode_with<T, M: prost::Message>(to_proto: fn(&T) -> M) -> impl Fn(&T) -> Vec<u8> + Send + Sync {
    move |v| to_proto(v).encode_to_vec()
}

/// The response of a keyed RPC: a fresh value converted, or a replayed
/// response decoded.
pub fn respond<T, M: prost::Message + Default>(out: Outcome<T>, to_proto: fn(&T) -> M) -> Result<tonic::Response<M>, Status> {
    match out {
        Outcome::Fresh(v) => Ok(tonic::Response::new(to_proto(&v))),
        Outcome::Replay(bytes) => Ok(tonic::Response::new(decode(&bytes).map_err(|e| crate::status::from_db(&e))?)),
    }
}

/// The keyed part of an effect, inside a transaction already open on `c`:
/// claims the key (or evaluates to the stored response), evaluates `body`,
/// and stores `encode(&value)`. Without a key, just `body`. Use it where `?`
/// leaves the transaction's closure; the error type must convert from
/// `IdempotencyError` and `DbError`.
///
/// `keyed!(c, key: Option<&Key>, now, encode, expr) -> Result<Outcome<T>, E>`
#[macro_export]
macro_rules! keyed {
    ($c:ident, $key:expr, $now:expr, $encode:expr, $body:expr) => {{
        let key: Option<&$crate::idempotency::Key> = $key;
        let replay = match key {
            Some(k) => match $crate::idempotency::begin($c, k, $now).await? {
                $crate::idempotency::Begin::Replay(bytes) => Some(bytes),
                $crate::idempotency::Begin::Fresh => None,
            },
            None => None,
        };
        match replay {
            Some(bytes) => Ok($crate::idempotency::Outcome::Replay(bytes)),
            None => {
                let value = $body;
                if let Some(k) = key {
                    $crate::idempotency::finish($c, k, &($encode)(&value)).await?;
                }
                Ok($crate::idempotency::Outcome::Fresh(value))
            }
        }
    }};
}

/// Runs `body` in a transaction together with an optional idempotency key
/// (see [`keyed!`](crate::keyed)), once: the caller gets ABORTED for a lost
/// race.
///
/// `keyed_transaction!(conn, key: Option<&Key>, now, encode, |c| expr)`
#[macro_export]
macro_rules! keyed_transaction {
    ($conn:expr, $key:expr, $now:expr, $encode:expr, |$c:ident| $body:expr) => {{
        use diesel_async::AsyncConnection as _;
        let key: Option<&$crate::idempotency::Key> = $key;
        let now = $now;
        $conn.transaction(async |$c| $crate::keyed!($c, key, now, $encode, $body)).await
    }};
}

/// Looks a key up outside any transaction: lets a handler answer a replay
/// before doing slow work (the transaction checks again).
pub async fn peek(conn: &mut Conn, key: &Key) -> Result<Option<Vec<u8>>, IdempotencyError> {
    let found: Option<(Vec<u8>, Vec<u8>)> = stored(key).first(conn).await.optional().map_err(DbError::from)?;
    match found {
        None => Ok(None),
        Some((hash, _)) if hash != key.request_hash => Err(IdempotencyError::Reused),
        Some((_, response)) => Ok(Some(response)),
    }
}
