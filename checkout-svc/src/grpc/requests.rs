//! Requests parsed into domain inputs (parse, don't validate): user and
//! plan ids become [`UserId`] and [`PlanId`], so a session function cannot
//! be called with an unchecked one. Every field is checked before any is
//! refused, in the order and words the handlers always used. Also the
//! ListSessions page tokens.
use chrono::{DateTime, Datelike, Utc};
use proto::checkout::v1 as pb;
use shared::{
    etag::Etag,
    ids::{PlanId, UserId, field},
    status::{MAX_ID_LEN, Violations},
};
use tonic::Status;
use uuid::Uuid;

use crate::sessions;

pub(super) struct CreateSession {
    pub user_id: UserId,
    pub plan_id: PlanId,
}

impl TryFrom<pb::CreateSessionRequest> for CreateSession {
    type Error = Status;
    fn try_from(r: pb::CreateSessionRequest) -> Result<Self, Status> {
        let mut v = Violations::new();
        let user_id = field(&mut v, "user_id", UserId::parse(r.user_id));
        let plan_id = field(&mut v, "plan_id", PlanId::parse(r.plan_id));
        v.finish()?;
        Ok(Self { user_id: user_id?, plan_id: plan_id? })
    }
}

pub(super) struct RenewSession {
    pub id: Uuid,
    pub plan_id: PlanId,
    pub etag: Option<Etag>,
}

impl TryFrom<pb::RenewSessionRequest> for RenewSession {
    type Error = Status;
    fn try_from(r: pb::RenewSessionRequest) -> Result<Self, Status> {
        let mut v = Violations::new();
        let id = v.uuid("id", &r.id);
        let plan_id = field(&mut v, "plan_id", PlanId::parse(r.plan_id));
        let etag = field(&mut v, "etag", Etag::parse_optional(r.etag));
        v.finish()?;
        Ok(Self { id, plan_id: plan_id?, etag: etag? })
    }
}

pub(super) struct CompleteSession {
    pub id: Uuid,
    pub payment_id: String,
    pub signature: String,
}

impl TryFrom<pb::CompleteSessionRequest> for CompleteSession {
    type Error = Status;
    fn try_from(r: pb::CompleteSessionRequest) -> Result<Self, Status> {
        let mut v = Violations::new();
        let id = v.uuid("id", &r.id);
        v.text("payment_id", &r.payment_id, MAX_ID_LEN);
        v.text("signature", &r.signature, 256);
        v.finish()?;
        Ok(Self { id, payment_id: r.payment_id, signature: r.signature })
    }
}

pub(super) struct ListSessions {
    pub user_id: UserId,
    pub status: Option<sessions::Status>,
    pub size: i64,
    pub after: Option<(DateTime<Utc>, Uuid)>,
}

impl TryFrom<pb::ListSessionsRequest> for ListSessions {
    type Error = Status;
    fn try_from(r: pb::ListSessionsRequest) -> Result<Self, Status> {
        let mut v = Violations::new();
        let user_id = field(&mut v, "user_id", UserId::parse(r.user_id));
        let size = if r.page_size == 0 { PAGE_SIZE_DEFAULT } else { r.page_size };
        v.range("page_size", i64::from(size), 1, i64::from(PAGE_SIZE_MAX));
        let status = match pb::SessionStatus::try_from(r.status) {
            Ok(pb::SessionStatus::Unspecified) => None,
            Ok(pb::SessionStatus::Active) => Some(sessions::Status::Active),
            Ok(pb::SessionStatus::Completed) => Some(sessions::Status::Completed),
            Ok(pb::SessionStatus::Expired) => Some(sessions::Status::Expired),
            Ok(pb::SessionStatus::Invalidated) => Some(sessions::Status::Invalidated),
            Err(_) => {
                v.add("status", "unknown status");
                None
            }
        };
        let after = if r.page_token.is_empty() {
            None
        } else {
            let parsed = parse_page_token(&r.page_token);
            if parsed.is_none() {
                v.add("page_token", "is not a token from a previous response");
            }
            parsed
        };
        v.finish()?;
        Ok(Self { user_id: user_id?, status, size: i64::from(size), after })
    }
}

const PAGE_SIZE_DEFAULT: i32 = 20;
const PAGE_SIZE_MAX: i32 = 100;

pub(super) fn page_token(t: DateTime<Utc>, id: Uuid) -> String {
    hex::encode(format!("{}|{id}", t.timestamp_micros()))
}

/// Longest token [`page_token`] makes (hex of 20 digits, '|' and a UUID).
const MAX_PAGE_TOKEN_LEN: usize = 2 * (20 + 1 + 36);

/// Decodes a token of [`page_token`]. A forged token can carry any number:
/// only instants of years 1..=9999 pass, so PostgreSQL (whose range is
/// narrower than chrono's) never sees one it cannot hold.
fn parse_page_token(token: &str) -> Option<(DateTime<Utc>, Uuid)> {
    if token.len() > MAX_PAGE_TOKEN_LEN {
        return None;
    }
    let raw = String::from_utf8(hex::decode(token).ok()?).ok()?;
    let (micros, id) = raw.split_once('|')?;
    let t = DateTime::from_timestamp_micros(micros.parse().ok()?)?;
    (1..=9999).contains(&t.year()).then_some((t, Uuid::parse_str(id).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip() {
        let t = DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap_or_default();
        let id = Uuid::new_v4();
        assert_eq!(parse_page_token(&page_token(t, id)), Some((t, id)));
        assert_eq!(parse_page_token("zz"), None);
        assert_eq!(parse_page_token(&hex::encode("1|nope")), None);
    }

    #[test]
    fn page_tokens_outside_postgres_range_are_refused() {
        let id = Uuid::new_v4();
        // Within chrono's range, outside PostgreSQL's (before 4713 BC).
        let ancient = DateTime::from_timestamp_micros(-8_000_000_000_000_000_000).map(|t| page_token(t, id));
        assert!(ancient.is_some());
        assert_eq!(ancient.and_then(|t| parse_page_token(&t)), None);
        // Beyond chrono and PostgreSQL (around year 300000).
        assert_eq!(parse_page_token(&hex::encode(format!("9467000000000000000|{id}"))), None);
        assert_eq!(parse_page_token(&hex::encode(format!("{}|{id}", i64::MAX))), None);
        assert_eq!(parse_page_token(&"ab".repeat(1000)), None);
    }
}
