//! PlanCatalogService's requests parsed into the catalogue's inputs
//! (docs/design.md, "Catalogue"): every field checked before any is
//! refused, so one INVALID_ARGUMENT lists every bad field.
use proto::billing::v1 as pb;
use shared::{
    etag::Etag,
    ids::{PlanId, field},
    status::Violations,
};
use tonic::Status;

use super::super::params::{page_after, page_size};
use crate::{
    money::is_iso_currency,
    plans::{
        Limits, Period, Terms,
        catalogue::{Changes, NewPlan, NewPrice},
    },
    trials::MAX_TRIAL_DAYS,
};

/// The most a price or a period's credits may be, in minor units / credits.
const MAX_AMOUNT: i64 = 1_000_000_000_000;
/// The largest upload limit a plan may state (1 PiB).
const MAX_UPLOAD_BYTES: i64 = 1 << 50;
const MAX_NAME: usize = 100;
const MAX_SLUG: usize = 63;
const MAX_INTERVAL_SECONDS: i64 = 86_400;

/// A new plan's id: a slug, so it reads well in URLs, receipts and logs.
fn slug(v: &mut Violations, value: &str) -> Option<PlanId> {
    let ok = (1..=MAX_SLUG).contains(&value.len())
        && value.starts_with(|c: char| c.is_ascii_lowercase())
        && !value.ends_with('-')
        && !value.contains("--")
        && value.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !ok {
        v.add("plan_id", format!("must be a slug: 1..{MAX_SLUG} of a-z, 0-9 and single hyphens, starting with a letter"));
        return None;
    }
    PlanId::parse(value).ok()
}

/// A change's `request_id`: required, a UUID in its hyphenated form (the
/// form the key store keeps, docs/design.md, Idempotency).
fn request_id(v: &mut Violations, value: &str) {
    if value.is_empty() {
        v.add("request_id", "is required: a UUID, new per change, the same on a retry of it");
    } else if value.len() != 36 || uuid::Uuid::try_parse(value).is_err() {
        v.add("request_id", "must be a UUID (8-4-4-4-12 hex digits)");
    }
}

fn price(v: &mut Violations, value: i64) -> i64 {
    v.range("price_minor", value, 1, MAX_AMOUNT)
}

fn currency(v: &mut Violations, value: &str) -> String {
    if !is_iso_currency(value) {
        v.add("currency", "must be an ISO 4217 currency code in capitals, e.g. INR");
    }
    value.to_owned()
}

fn etag(v: &mut Violations, value: String) -> Option<Etag> {
    field(v, "etag", Etag::parse_optional(value)).ok().flatten()
}

/// A stated limit: `Some(None)` unlimited, `Some(Some(max))`, or None (a
/// violation of `name`) when neither is said or the max is out of range.
fn limit(v: &mut Violations, name: &str, l: Option<&pb::LimitValue>, min: i64, max: i64) -> Option<Option<i64>> {
    use pb::limit_value::Value;
    match l.and_then(|l| l.value) {
        Some(Value::Unlimited(true)) => Some(None),
        Some(Value::Max(m)) if (min..=max).contains(&m) => Some(Some(m)),
        Some(Value::Max(_)) => {
            v.add(name, format!("max must be between {min} and {max}, or say unlimited: true"));
            None
        }
        Some(Value::Unlimited(false)) => {
            v.add(name, "unlimited must be true when given (or give a max instead)");
            None
        }
        None => {
            v.add(name, "is required: unlimited: true, or a max");
            None
        }
    }
}

fn sessions(v: &mut Violations, name: &str, l: Option<&pb::LimitValue>) -> Option<Option<i32>> {
    limit(v, name, l, 1, i64::from(i32::MAX)).map(|m| m.and_then(|m| i32::try_from(m).ok()))
}

fn upload_bytes(v: &mut Violations, l: Option<&pb::LimitValue>) -> Option<Option<i64>> {
    limit(v, "limits.upload_bytes", l, 0, MAX_UPLOAD_BYTES)
}

/// A version's trial in days, 0 (none: None) .. [`MAX_TRIAL_DAYS`].
fn trial_days(v: &mut Violations, days: i32) -> Option<i32> {
    let days = v.range("trial_days", i64::from(days), 0, MAX_TRIAL_DAYS);
    i32::try_from(days).ok().filter(|d| (1..=MAX_TRIAL_DAYS).contains(&i64::from(*d)))
}

/// Every limit of `l`, each stated.
fn limits(v: &mut Violations, l: Option<&pb::PlanLimitsInput>) -> Limits {
    if l.is_none() {
        v.add("limits", "is required: each of sessions_per_period, minutes_per_period and upload_bytes");
    }
    let sessions_per_period = sessions(v, "limits.sessions_per_period", l.and_then(|l| l.sessions_per_period.as_ref()));
    let minutes_per_period = sessions(v, "limits.minutes_per_period", l.and_then(|l| l.minutes_per_period.as_ref()));
    let upload = upload_bytes(v, l.and_then(|l| l.upload_bytes.as_ref()));
    Limits {
        sessions_per_period: sessions_per_period.flatten(),
        minutes_per_period: minutes_per_period.flatten(),
        upload_bytes: upload.flatten(),
    }
}

pub(super) struct CreatePlan {
    pub validate_only: bool,
    pub plan: NewPlan,
}

impl TryFrom<pb::CreatePlanRequest> for CreatePlan {
    type Error = Status;
    fn try_from(r: pb::CreatePlanRequest) -> Result<Self, Status> {
        let mut v = Violations::new();
        request_id(&mut v, &r.request_id);
        let id = slug(&mut v, &r.plan_id);
        v.text("name", &r.name, MAX_NAME);
        let price_minor = price(&mut v, r.price_minor);
        let currency = currency(&mut v, &r.currency);
        let period = match pb::PlanPeriod::try_from(r.period) {
            Ok(pb::PlanPeriod::Monthly) => Period::Monthly,
            Ok(pb::PlanPeriod::Yearly) => Period::Yearly,
            Ok(pb::PlanPeriod::Unspecified) => {
                v.add("period", "is required: PLAN_PERIOD_MONTHLY or PLAN_PERIOD_YEARLY");
                Period::Monthly
            }
            Err(_) => {
                v.add("period", "unknown period: PLAN_PERIOD_MONTHLY or PLAN_PERIOD_YEARLY");
                Period::Monthly
            }
        };
        // A plan with a price grants credits: a purchase of nothing is refused.
        let credits_per_period = v.range("credits_per_period", r.credits_per_period, 1, MAX_AMOUNT);
        let interval = v.range("deduction_interval_seconds", i64::from(r.deduction_interval_seconds), 1, MAX_INTERVAL_SECONDS);
        let limits = limits(&mut v, r.limits.as_ref());
        let trial_days = trial_days(&mut v, r.trial_days);
        v.finish()?;
        let id = id.ok_or_else(|| shared::status::invalid_field("plan_id", "must be a slug"))?;
        Ok(Self {
            validate_only: r.validate_only,
            plan: NewPlan {
                id,
                name: r.name,
                deduction_interval_seconds: i32::try_from(interval).unwrap_or(1),
                terms: Terms { price_minor, currency, period, credits_per_period, limits, trial_days },
            },
        })
    }
}

pub(super) struct UpdatePlan {
    pub id: PlanId,
    pub validate_only: bool,
    pub etag: Option<Etag>,
    pub changes: Changes,
}

/// The paths UpdatePlan's mask may name.
const MASK_PATHS: &str =
    "name, credits_per_period, limits, limits.sessions_per_period, limits.minutes_per_period or limits.upload_bytes";

impl TryFrom<pb::UpdatePlanRequest> for UpdatePlan {
    type Error = Status;
    fn try_from(r: pb::UpdatePlanRequest) -> Result<Self, Status> {
        let mut v = Violations::new();
        let id = field(&mut v, "plan_id", PlanId::parse(r.plan_id));
        request_id(&mut v, &r.request_id);
        let etag = etag(&mut v, r.etag);
        let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
        if paths.is_empty() {
            v.add("update_mask", format!("is required: the fields to change ({MASK_PATHS})"));
        }
        let l = r.limits.as_ref();
        let mut changes = Changes::default();
        for path in &paths {
            match path.as_str() {
                "name" => changes.name = Some(v.text("name", &r.name, MAX_NAME).to_owned()),
                // 0 only for the free plan: the catalogue checks it against the plan's price.
                "credits_per_period" => {
                    changes.credits_per_period = Some(v.range("credits_per_period", r.credits_per_period, 0, MAX_AMOUNT))
                }
                "limits" | "limits.sessions_per_period" | "limits.minutes_per_period" | "limits.upload_bytes" => {
                    let all = path == "limits";
                    if all || path == "limits.sessions_per_period" {
                        changes.sessions_per_period =
                            sessions(&mut v, "limits.sessions_per_period", l.and_then(|l| l.sessions_per_period.as_ref()));
                    }
                    if all || path == "limits.minutes_per_period" {
                        changes.minutes_per_period =
                            sessions(&mut v, "limits.minutes_per_period", l.and_then(|l| l.minutes_per_period.as_ref()));
                    }
                    if all || path == "limits.upload_bytes" {
                        changes.upload_bytes = upload_bytes(&mut v, l.and_then(|l| l.upload_bytes.as_ref()));
                    }
                }
                other => v.add("update_mask", format!("unknown path {other:?}: {MASK_PATHS}")),
            }
        }
        v.finish()?;
        Ok(Self { id: id?, validate_only: r.validate_only, etag, changes })
    }
}

pub(super) struct CreatePriceVersion {
    pub id: PlanId,
    pub validate_only: bool,
    pub etag: Option<Etag>,
    pub price: NewPrice,
}

impl TryFrom<pb::CreatePriceVersionRequest> for CreatePriceVersion {
    type Error = Status;
    fn try_from(r: pb::CreatePriceVersionRequest) -> Result<Self, Status> {
        let mut v = Violations::new();
        let id = field(&mut v, "plan_id", PlanId::parse(r.plan_id));
        request_id(&mut v, &r.request_id);
        let etag = etag(&mut v, r.etag);
        let price_minor = price(&mut v, r.price_minor);
        let currency = currency(&mut v, &r.currency);
        let trial_days = r.trial_days.map(|d| trial_days(&mut v, d));
        v.finish()?;
        Ok(Self { id: id?, validate_only: r.validate_only, etag, price: NewPrice { price_minor, currency, trial_days } })
    }
}

/// ArchivePlan's and UnarchivePlan's request (their fields are the same).
pub(super) struct PlanSale {
    pub id: PlanId,
    pub validate_only: bool,
    pub etag: Option<Etag>,
}

impl PlanSale {
    pub(super) fn parse(plan_id: String, request_id_: &str, validate_only: bool, etag_: String) -> Result<Self, Status> {
        let mut v = Violations::new();
        let id = field(&mut v, "plan_id", PlanId::parse(plan_id));
        request_id(&mut v, request_id_);
        let etag = etag(&mut v, etag_);
        v.finish()?;
        Ok(Self { id: id?, validate_only, etag })
    }
}

pub(super) struct GetPlan {
    pub id: PlanId,
}

impl TryFrom<pb::PlanCatalogServiceGetPlanRequest> for GetPlan {
    type Error = Status;
    fn try_from(r: pb::PlanCatalogServiceGetPlanRequest) -> Result<Self, Status> {
        let mut v = Violations::new();
        let id = field(&mut v, "plan_id", PlanId::parse(r.plan_id));
        v.finish()?;
        Ok(Self { id: id? })
    }
}

pub(super) struct ListPlans {
    pub size: i64,
    pub after: Option<String>,
    pub show_archived: bool,
}

impl TryFrom<pb::PlanCatalogServiceListPlansRequest> for ListPlans {
    type Error = Status;
    fn try_from(r: pb::PlanCatalogServiceListPlansRequest) -> Result<Self, Status> {
        let mut v = Violations::new();
        let size = page_size(r.page_size, &mut v);
        let after = page_after(&r.page_token, parse_page_token, &mut v);
        v.finish()?;
        Ok(Self { size, after, show_archived: r.show_archived })
    }
}

/// The catalogue's position: the last plan's id, as hex.
pub(super) fn page_token(plan_id: &str) -> String {
    hex::encode(plan_id)
}

/// Decodes a token of [`page_token`]: a plan id as GetPlan would accept it.
fn parse_page_token(token: &str) -> Option<String> {
    let id = String::from_utf8(hex::decode(token).ok()?).ok()?;
    PlanId::parse(id).ok().map(String::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs() {
        for ok in ["free", "pro-monthly", "team-2", "a"] {
            let mut v = Violations::new();
            assert!(slug(&mut v, ok).is_some() && v.is_empty(), "{ok}");
        }
        for bad in ["", "Pro", "pro_monthly", "-pro", "pro-", "pro--monthly", "2pro", "pro monthly", &"a".repeat(64), "pró"] {
            let mut v = Violations::new();
            assert!(slug(&mut v, bad).is_none() && !v.is_empty(), "{bad:?}");
        }
    }

    #[test]
    fn page_tokens_round_trip_and_refuse_what_no_response_made() {
        assert_eq!(parse_page_token(&page_token("pro-monthly")).as_deref(), Some("pro-monthly"));
        assert_eq!(parse_page_token("zz"), None);
        assert_eq!(parse_page_token(&hex::encode("a\u{0}b")), None);
        assert_eq!(parse_page_token(""), None);
    }
}
