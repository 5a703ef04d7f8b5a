//! Request parameters parsed at the edge: usage kinds, statistics days and
//! page tokens. Every value that reaches PostgreSQL is one it can hold.
use chrono::{DateTime, Datelike, NaiveDate, Utc};
use proto::billing::v1 as pb;
use shared::status::{MAX_ID_LEN, Violations};
use uuid::Uuid;

use crate::usage::Kind;

pub(super) fn usage_kind(v: i32) -> Option<Kind> {
    match pb::UsageKind::try_from(v) {
        Ok(pb::UsageKind::Text) => Some(Kind::Text),
        Ok(pb::UsageKind::Call) => Some(Kind::Call),
        _ => None,
    }
}

/// A day of usage statistics: YYYY-MM-DD between 2000 and 9999 (a range
/// PostgreSQL's `date` holds, and this service's lifetime).
pub(super) fn day(field: &str, s: &str, default: NaiveDate, v: &mut Violations) -> NaiveDate {
    if s.is_empty() {
        return default;
    }
    match NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        Ok(d) if (2000..=9999).contains(&d.year()) => d,
        _ => {
            v.add(field, "must be a YYYY-MM-DD day between 2000-01-01 and 9999-12-31");
            default
        }
    }
}

/// Page sizes of the list RPCs: 0 means the default (ListPlans reads 0 as
/// "all" before it gets here).
const PAGE_SIZE_DEFAULT: i32 = 50;
const PAGE_SIZE_MAX: i32 = 500;

/// The requested page size, or a violation when it is out of range.
pub(super) fn page_size(size: i32, v: &mut Violations) -> i64 {
    let size = if size == 0 { PAGE_SIZE_DEFAULT } else { size };
    v.range("page_size", i64::from(size), 1, i64::from(PAGE_SIZE_MAX));
    i64::from(size)
}

/// Decodes a non-empty `page_token` with `parse`, or records a violation.
pub(super) fn page_after<T>(token: &str, parse: fn(&str) -> Option<T>, v: &mut Violations) -> Option<T> {
    if token.is_empty() {
        return None;
    }
    let parsed = parse(token);
    if parsed.is_none() {
        v.add("page_token", "is not a token from a previous response");
    }
    parsed
}

/// ListSubscriptions' position: the last row's created_at and id, as hex of
/// "micros|uuid" (the same shape as checkout's ListSessions tokens).
pub(super) fn subscription_page_token(t: DateTime<Utc>, id: Uuid) -> String {
    hex::encode(format!("{}|{id}", t.timestamp_micros()))
}

/// Decodes a token of [`subscription_page_token`]. Only instants of years
/// 1..=9999 pass, so PostgreSQL never sees one it cannot hold.
pub(super) fn parse_subscription_page_token(token: &str) -> Option<(DateTime<Utc>, Uuid)> {
    if token.len() > 2 * (20 + 1 + 36) {
        return None;
    }
    let raw = String::from_utf8(hex::decode(token).ok()?).ok()?;
    let (micros, id) = raw.split_once('|')?;
    let t = DateTime::from_timestamp_micros(micros.parse().ok()?)?;
    (1..=9999).contains(&t.year()).then_some((t, Uuid::parse_str(id).ok()?))
}

/// GetUsageStats' position: the last row's day and plan id, as hex of
/// "YYYY-MM-DD|plan_id".
pub(super) fn stats_page_token(day: NaiveDate, plan_id: &str) -> String {
    hex::encode(format!("{}|{plan_id}", day.format("%Y-%m-%d")))
}

/// Decodes a token of [`stats_page_token`]: a day the rollup can hold and a
/// plan id as GetPlan would accept it.
pub(super) fn parse_stats_page_token(token: &str) -> Option<(NaiveDate, String)> {
    if token.len() > 2 * (10 + 1 + 4 * MAX_ID_LEN) {
        return None;
    }
    let raw = String::from_utf8(hex::decode(token).ok()?).ok()?;
    let (d, plan_id) = raw.split_once('|')?;
    let d = NaiveDate::parse_from_str(d, "%Y-%m-%d").ok().filter(|d| (2000..=9999).contains(&d.year()))?;
    let ok = !plan_id.is_empty() && plan_id.chars().count() <= MAX_ID_LEN && !plan_id.chars().any(char::is_control);
    ok.then(|| (d, plan_id.to_owned()))
}

/// ListPlans' position: the last plan's price and id, as hex of
/// "price_minor|plan_id" (the same shape as the other tokens).
pub(super) fn plan_page_token(price_minor: i64, plan_id: &str) -> String {
    hex::encode(format!("{price_minor}|{plan_id}"))
}

/// Decodes a token of [`plan_page_token`]: a price and a plan id as GetPlan
/// would accept it.
pub(super) fn parse_plan_page_token(token: &str) -> Option<(i64, String)> {
    if token.len() > 2 * (20 + 1 + 4 * MAX_ID_LEN) {
        return None;
    }
    let raw = String::from_utf8(hex::decode(token).ok()?).ok()?;
    let (price, plan_id) = raw.split_once('|')?;
    let price: i64 = price.parse().ok()?;
    let ok = !plan_id.is_empty() && plan_id.chars().count() <= MAX_ID_LEN && !plan_id.chars().any(char::is_control);
    ok.then(|| (price, plan_id.to_owned()))
}

/// ListFindings' position: the last finding's kind and subject id, as hex
/// of "KIND|subject".
pub(super) fn finding_page_token(kind: crate::reconcile::FindingKind, subject: &str) -> String {
    hex::encode(format!("{}|{subject}", kind.as_str()))
}

/// Decodes a token of [`finding_page_token`]: a kind reconciliation checks
/// and a non-empty subject (subjects are ids, short and printable).
pub(super) fn parse_finding_page_token(token: &str) -> Option<(crate::reconcile::FindingKind, String)> {
    if token.len() > 2 * (64 + 1 + 4 * MAX_ID_LEN) {
        return None;
    }
    let raw = String::from_utf8(hex::decode(token).ok()?).ok()?;
    let (kind, subject) = raw.split_once('|')?;
    let kind: crate::reconcile::FindingKind = kind.parse().ok()?;
    let ok = crate::reconcile::is_checked(kind) && !subject.is_empty() && !subject.chars().any(char::is_control);
    ok.then(|| (kind, subject.to_owned()))
}

/// ListOrders' position: the last order's seq, as hex of its decimal.
pub(super) fn order_page_token(seq: i64) -> String {
    hex::encode(seq.to_string())
}

pub(super) fn parse_order_page_token(token: &str) -> Option<i64> {
    if token.len() > 40 {
        return None;
    }
    String::from_utf8(hex::decode(token).ok()?).ok()?.parse().ok().filter(|n: &i64| *n > 0)
}

pub(super) fn order_status(v: i32) -> Option<Option<crate::orders::Status>> {
    use crate::orders::Status;
    match pb::OrderStatus::try_from(v) {
        Ok(pb::OrderStatus::Unspecified) => Some(None),
        Ok(pb::OrderStatus::Created) => Some(Some(Status::Created)),
        Ok(pb::OrderStatus::Paid) => Some(Some(Status::Paid)),
        Ok(pb::OrderStatus::Cancelled) => Some(Some(Status::Cancelled)),
        Err(_) => None,
    }
}
