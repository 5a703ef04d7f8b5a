//! The event tables' queries (docs/design.md, "Events"): reading settled
//! events in stream order, checking cursors, and the retention purge.
//!
//! An event is *settled* when its transaction id is below every transaction
//! still running (`pg_snapshot_xmin(pg_current_snapshot())`, the horizon):
//! it has committed (or never will), and any event not yet visible will be
//! placed after it. Only settled events are handed out.
use chrono::{DateTime, Utc};
use diesel::{
    QueryableByName,
    sql_types::{BigInt, Bool, Bytea, Jsonb, Nullable, Text, Timestamptz, Uuid as SqlUuid},
};
use diesel_async::{AsyncConnection, RunQueryDsl};
use uuid::Uuid;

use super::cursor::{Cursor, Position};
use crate::db::{Conn, DbError};

/// One event row as stored.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    /// Where it is in the stream.
    pub pos: Position,
    /// Its stable id.
    pub event_id: Uuid,
    /// The type, as the trigger spelled it (`ORDER_PAID`...).
    pub event_type: String,
    /// The database's transaction time of the change.
    pub occurred_at: DateTime<Utc>,
    /// `order`, `subscription`, `checkout_session`...
    pub entity_kind: String,
    /// The entity's id.
    pub entity_id: String,
    /// The entity's version after this event.
    pub entity_version: i64,
    /// The user concerned ('' when none).
    pub user_id: String,
    /// The entity's row after the change (`to_jsonb(NEW)`).
    pub payload: serde_json::Value,
}

/// One page of settled events.
#[derive(Debug, Default)]
pub struct Page {
    /// The events after the asked position, in stream order.
    pub events: Vec<StoredEvent>,
    /// Committed events exist past the horizon (a transaction older than
    /// them is still running): ask again soon.
    pub pending: bool,
}

/// The stream's identity and retention mark.
#[derive(Debug, Clone, Copy)]
pub struct StreamInfo {
    /// This copy's epoch.
    pub epoch: i64,
    /// The oldest cursor still good: the last purged position (START if
    /// nothing was purged).
    pub oldest: Cursor,
}

/// Why a cursor cannot be resumed from.
#[derive(Debug, thiserror::Error)]
pub enum CursorError {
    /// Older than what is kept, or of another copy of the stream.
    #[error("the cursor is expired: {why}; resume from oldest_cursor or from now")]
    Expired {
        /// What was wrong.
        why: &'static str,
        /// Where a reader can start again.
        oldest: Cursor,
    },
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
}

#[derive(QueryableByName)]
struct Row {
    #[diesel(sql_type = BigInt)]
    horizon: i64,
    #[diesel(sql_type = Bool)]
    pending: bool,
    #[diesel(sql_type = Bool)]
    intact: bool,
    #[diesel(sql_type = Nullable<BigInt>)]
    xid: Option<i64>,
    #[diesel(sql_type = Nullable<BigInt>)]
    seq: Option<i64>,
    #[diesel(sql_type = Nullable<SqlUuid>)]
    event_id: Option<Uuid>,
    #[diesel(sql_type = Nullable<Text>)]
    event_type: Option<String>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    occurred_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Nullable<Text>)]
    entity_kind: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    entity_id: Option<String>,
    #[diesel(sql_type = Nullable<BigInt>)]
    entity_version: Option<i64>,
    #[diesel(sql_type = Nullable<Text>)]
    user_id: Option<String>,
    #[diesel(sql_type = Nullable<Jsonb>)]
    payload: Option<serde_json::Value>,
}

/// Reads up to `limit` settled events after `after`, in one query. In the
/// same snapshot it checks that nothing after `after` was purged and that
/// `after` is still there (its event, or the retention mark): when not, the
/// page is refused, since the reader would skip what was purged, or follow
/// a history the database lost (a failover or restore).
pub async fn read_after(conn: &mut Conn, after: Cursor, limit: i64) -> Result<Page, CursorError> {
    let rows: Vec<Row> = diesel::sql_query(
        "WITH h AS (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS x),
              page AS (SELECT e.* FROM events e, h
                        WHERE (e.xid, e.seq) > ($1::text::xid8, $2) AND e.xid < h.x
                        ORDER BY e.xid, e.seq LIMIT $3)
         SELECT h.x::text::bigint AS horizon,
                -- Once per query (an init plan on the key's last entry),
                -- not once per row: a per-row EXISTS scanned the table.
                coalesce((SELECT max(p.xid) FROM events p) >= h.x, false) AS pending,
                (SELECT (s.purged_xid, s.purged_seq) <= ($1::text::xid8, $2)
                        AND ((s.purged_xid, s.purged_seq) = ($1::text::xid8, $2)
                             OR EXISTS (SELECT 1 FROM events a WHERE a.xid = $1::text::xid8 AND a.seq = $2
                                                                 AND substr(uuid_send(a.event_id), 1, 4) = $4))
                   FROM event_stream s) AS intact,
                page.xid::text::bigint AS xid, page.seq, page.event_id, page.event_type, page.occurred_at,
                page.entity_kind, page.entity_id, page.entity_version, page.user_id, page.payload
           FROM h LEFT JOIN page ON true
          ORDER BY page.xid, page.seq",
    )
    .bind::<Text, _>(after.pos.xid.to_string())
    .bind::<BigInt, _>(after.pos.seq)
    .bind::<BigInt, _>(limit)
    .bind::<Bytea, _>(after.check.to_be_bytes().to_vec())
    .load(conn)
    .await
    .map_err(DbError::from)?;
    let mut page = Page::default();
    for r in rows {
        if !r.intact {
            let info = info(conn).await?;
            let why = "events after it were purged, or its event is gone (a failover or restore)";
            return Err(CursorError::Expired { why, oldest: info.oldest });
        }
        page.pending = r.pending;
        let _ = r.horizon;
        let (Some(xid), Some(seq), Some(event_id)) = (r.xid, r.seq, r.event_id) else { continue };
        page.events.push(StoredEvent {
            pos: Position { xid: xid.unsigned_abs(), seq },
            event_id,
            event_type: r.event_type.unwrap_or_default(),
            occurred_at: r.occurred_at.unwrap_or_default(),
            entity_kind: r.entity_kind.unwrap_or_default(),
            entity_id: r.entity_id.unwrap_or_default(),
            entity_version: r.entity_version.unwrap_or_default(),
            user_id: r.user_id.unwrap_or_default(),
            payload: r.payload.unwrap_or_default(),
        });
    }
    Ok(page)
}

#[derive(QueryableByName)]
struct InfoRow {
    #[diesel(sql_type = BigInt)]
    epoch: i64,
    #[diesel(sql_type = BigInt)]
    purged_xid: i64,
    #[diesel(sql_type = BigInt)]
    purged_seq: i64,
    #[diesel(sql_type = Nullable<SqlUuid>)]
    purged_event_id: Option<Uuid>,
    /// The event at the asked position, if any.
    #[diesel(sql_type = Nullable<SqlUuid>)]
    at: Option<Uuid>,
    /// The last settled event, if any.
    #[diesel(sql_type = Nullable<BigInt>)]
    last_xid: Option<i64>,
    #[diesel(sql_type = Nullable<BigInt>)]
    last_seq: Option<i64>,
    #[diesel(sql_type = Nullable<SqlUuid>)]
    last_event_id: Option<Uuid>,
}

async fn info_at(conn: &mut Conn, pos: Position) -> Result<InfoRow, DbError> {
    Ok(diesel::sql_query(
        "SELECT s.epoch, s.purged_xid::text::bigint AS purged_xid, s.purged_seq, s.purged_event_id,
                (SELECT e.event_id FROM events e WHERE e.xid = $1::text::xid8 AND e.seq = $2) AS at,
                l.xid::text::bigint AS last_xid, l.seq AS last_seq, l.event_id AS last_event_id
           FROM event_stream s
           LEFT JOIN LATERAL (SELECT e.xid, e.seq, e.event_id FROM events e
                               WHERE e.xid < pg_snapshot_xmin(pg_current_snapshot())
                               ORDER BY e.xid DESC, e.seq DESC LIMIT 1) l ON true",
    )
    .bind::<Text, _>(pos.xid.to_string())
    .bind::<BigInt, _>(pos.seq)
    .get_result(conn)
    .await?)
}

fn oldest_of(r: &InfoRow) -> Cursor {
    Cursor {
        epoch: r.epoch,
        pos: Position { xid: r.purged_xid.unsigned_abs(), seq: r.purged_seq },
        check: r.purged_event_id.as_ref().map(Cursor::check_of).unwrap_or(0),
    }
}

/// The stream's epoch and oldest good cursor.
pub async fn info(conn: &mut Conn) -> Result<StreamInfo, DbError> {
    let r = info_at(conn, Position::START).await?;
    Ok(StreamInfo { epoch: r.epoch, oldest: oldest_of(&r) })
}

/// Where a reader starts: after `cursor` once it is checked, else from the
/// oldest kept (`from_oldest`) or after the last settled event (now).
pub async fn start(conn: &mut Conn, cursor: Option<Cursor>, from_oldest: bool) -> Result<Cursor, CursorError> {
    let pos = cursor.map(|c| c.pos).unwrap_or(Position::START);
    let r = info_at(conn, pos).await?;
    let oldest = oldest_of(&r);
    let Some(c) = cursor else {
        if from_oldest {
            return Ok(oldest);
        }
        return Ok(match (r.last_xid, r.last_seq, r.last_event_id) {
            (Some(xid), Some(seq), Some(id)) => {
                Cursor { epoch: r.epoch, pos: Position { xid: xid.unsigned_abs(), seq }, check: Cursor::check_of(&id) }
            }
            _ => oldest,
        });
    };
    let expired = |why| Err(CursorError::Expired { why, oldest });
    if c.epoch != r.epoch {
        return expired("it belongs to another copy of the event stream (a restore or another database)");
    }
    match r.at {
        Some(id) if Cursor::check_of(&id) == c.check => Ok(c),
        Some(_) => expired("the event at its position is not the one it was given for (the database was restored)"),
        None if c.pos == oldest.pos && c.check == oldest.check => Ok(c),
        None if c.pos < oldest.pos => expired("it is older than the events kept"),
        None => expired("no event is at its position (the database was restored to an earlier point)"),
    }
}

#[derive(QueryableByName)]
struct PurgeHead {
    #[diesel(sql_type = BigInt)]
    xid: i64,
    #[diesel(sql_type = BigInt)]
    seq: i64,
    #[diesel(sql_type = SqlUuid)]
    event_id: Uuid,
    #[diesel(sql_type = Timestamptz)]
    occurred_at: DateTime<Utc>,
}

/// Deletes the events recorded before `cutoff`, oldest first in stream
/// order, `batch` at a time, each batch with the retention mark in one
/// transaction. Only a prefix of the stream is ever deleted, so a cursor at
/// the mark misses nothing. Safe on every replica at once (the mark only
/// moves forward). Returns how many were deleted.
pub async fn purge(conn: &mut Conn, cutoff: DateTime<Utc>, batch: i64) -> Result<u64, DbError> {
    let mut deleted = 0u64;
    loop {
        let head: Vec<PurgeHead> = diesel::sql_query(
            // Settled events only: one behind a running transaction may
            // still be waiting for its readers.
            "SELECT xid::text::bigint AS xid, seq, event_id, occurred_at FROM events
              WHERE xid < pg_snapshot_xmin(pg_current_snapshot()) ORDER BY xid, seq LIMIT $1",
        )
        .bind::<BigInt, _>(batch)
        .load(conn)
        .await?;
        let prefix = head.iter().take_while(|e| e.occurred_at < cutoff).count();
        let Some(last) = prefix.checked_sub(1).and_then(|i| head.get(i)) else { return Ok(deleted) };
        let (xid, seq, id) = (last.xid.to_string(), last.seq, last.event_id);
        let n = conn
            .transaction::<usize, diesel::result::Error, _>(async |c| {
                let n = diesel::sql_query("DELETE FROM events WHERE (xid, seq) <= ($1::text::xid8, $2)")
                    .bind::<Text, _>(&xid)
                    .bind::<BigInt, _>(seq)
                    .execute(c)
                    .await?;
                diesel::sql_query(
                    "UPDATE event_stream SET purged_xid = $1::text::xid8, purged_seq = $2, purged_event_id = $3
                          WHERE (purged_xid, purged_seq) < ($1::text::xid8, $2)",
                )
                .bind::<Text, _>(&xid)
                .bind::<BigInt, _>(seq)
                .bind::<SqlUuid, _>(id)
                .execute(c)
                .await?;
                Ok(n)
            })
            .await?;
        deleted += n as u64;
        if prefix < head.len() || (head.len() as i64) < batch {
            return Ok(deleted);
        }
    }
}

/// The purge-events job of both services: deletes what is older than
/// `retention_days` before `now`; returns its one-line summary.
pub async fn purge_job(conn: &mut Conn, now: DateTime<Utc>, retention_days: u32) -> Result<String, DbError> {
    let n = purge(conn, now - chrono::Duration::days(i64::from(retention_days)), 5_000).await?;
    Ok(format!("purge-events: {n} deleted (older than {retention_days} days)"))
}
