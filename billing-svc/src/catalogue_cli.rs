//! `billing-svc plans`: the plan catalogue for operators, over
//! PlanCatalogService with an admin token (docs/design.md, "Catalogue"), so
//! that the service checks every change in one place. A plan file is JSON
//! (one plan or a list; `examples/plans/`), and a file's request_id is
//! derived from its content, so running the same file twice within 24 h is a
//! replay, never a second change. `stack` seeds its demo plans through
//! [`Catalog::ensure`].
use std::{fmt::Write as _, time::Duration};

use proto::billing::v1::{self as pb, plan_catalog_service_client::PlanCatalogServiceClient};
use sha2::{Digest, Sha256};
use shared::client::{Budget, retry};
use tonic::{Code, Status, transport::Channel};

/// Each call's time budget, retries included.
const CALL_BUDGET: Duration = Duration::from_secs(10);
/// Attempts of one call on UNAVAILABLE or ABORTED (a request_id makes a
/// change safe to send again).
const ATTEMPTS: u32 = 3;

/// The demo plans `stack` seeds (`examples/plans/demo.json`).
pub const DEMO_PLANS: &str = include_str!("../../examples/plans/demo.json");

/// One plan of a plan file.
#[derive(Debug, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
struct PlanSpec {
    id: String,
    name: String,
    price_minor: i64,
    currency: String,
    period: SpecPeriod,
    credits_per_period: i64,
    deduction_interval_seconds: i32,
    limits: LimitsSpec,
    /// Days of the trial a first purchase may start; absent or 0: none
    /// (left out of the canonical form then, so a plan file from before
    /// trials derives the same request_id).
    #[serde(default, skip_serializing_if = "no_trial")]
    trial_days: i32,
}

fn no_trial(days: &i32) -> bool {
    *days == 0
}

#[derive(Debug, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
enum SpecPeriod {
    Monthly,
    Yearly,
}

#[derive(Debug, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
struct LimitsSpec {
    sessions_per_period: LimitSpec,
    minutes_per_period: LimitSpec,
    upload_bytes: LimitSpec,
}

/// A limit: a number, or the word "unlimited".
#[derive(Debug, serde::Deserialize, serde::Serialize)]
#[serde(untagged)]
enum LimitSpec {
    Max(i64),
    Word(Unlimited),
}

#[derive(Debug, serde::Deserialize, serde::Serialize)]
enum Unlimited {
    #[serde(rename = "unlimited")]
    Unlimited,
}

#[derive(Debug, serde::Deserialize, serde::Serialize)]
#[serde(untagged)]
enum SpecFile {
    One(PlanSpec),
    Many(Vec<PlanSpec>),
}

impl LimitSpec {
    fn value(&self) -> pb::LimitValue {
        use pb::limit_value::Value;
        pb::LimitValue {
            value: Some(match self {
                LimitSpec::Max(m) => Value::Max(*m),
                LimitSpec::Word(Unlimited::Unlimited) => Value::Unlimited(true),
            }),
        }
    }
}

impl PlanSpec {
    /// The CreatePlan request of this plan, its request_id a UUID derived
    /// from the plan as written: the same plan, the same key.
    fn request(&self) -> pb::CreatePlanRequest {
        let canonical = serde_json::to_vec(self).unwrap_or_default();
        pb::CreatePlanRequest {
            request_id: derived_request_id("billing-svc plans create", &canonical),
            validate_only: false,
            plan_id: self.id.clone(),
            name: self.name.clone(),
            price_minor: self.price_minor,
            currency: self.currency.clone(),
            period: match self.period {
                SpecPeriod::Monthly => pb::PlanPeriod::Monthly,
                SpecPeriod::Yearly => pb::PlanPeriod::Yearly,
            } as i32,
            credits_per_period: self.credits_per_period,
            deduction_interval_seconds: self.deduction_interval_seconds,
            limits: Some(pb::PlanLimitsInput {
                sessions_per_period: Some(self.limits.sessions_per_period.value()),
                minutes_per_period: Some(self.limits.minutes_per_period.value()),
                upload_bytes: Some(self.limits.upload_bytes.value()),
            }),
            trial_days: self.trial_days,
        }
    }
}

/// A request_id (a UUID) that names one change: the SHA-256 of `what` and
/// `bytes`, so a re-run of the same change sends the same key.
fn derived_request_id(what: &str, bytes: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(what.as_bytes());
    h.update([0]);
    h.update(bytes);
    let digest = h.finalize();
    let mut b = [0u8; 16];
    b.copy_from_slice(&digest[..16]);
    uuid::Builder::from_random_bytes(b).into_uuid().to_string()
}

/// The CreatePlan requests of a plan file (one plan, or a list of them):
/// JSON whose shape is checked here; every value is the service's to judge.
pub fn plans_from_json(text: &str) -> anyhow::Result<Vec<pb::CreatePlanRequest>> {
    let file: SpecFile = serde_json::from_str(text).map_err(|e| {
        anyhow::anyhow!(
            "not a plan file ({e}): a JSON object with id, name, price_minor, currency, period (\"monthly\"), \
             credits_per_period, deduction_interval_seconds and limits {{sessions_per_period, minutes_per_period, \
             upload_bytes}}, each a number or \"unlimited\", and optionally trial_days; or a list of them (examples/plans/)"
        )
    })?;
    let specs = match file {
        SpecFile::One(p) => vec![p],
        SpecFile::Many(ps) => ps,
    };
    Ok(specs.iter().map(PlanSpec::request).collect())
}

/// What [`Catalog::reprice`] did.
#[derive(Debug)]
pub enum Repriced {
    /// The current version has that price already: nothing to do.
    Unchanged(pb::CatalogPlan),
    /// The version made (or, validating, that would be made).
    Made(pb::PriceVersion),
}

/// What [`Catalog::ensure`] found for one plan.
#[derive(Debug, PartialEq, Eq)]
pub enum Ensured {
    /// Created now (or a replay of its creation).
    Created,
    /// There already, left as it is.
    Present,
}

/// PlanCatalogService with an admin token.
pub struct Catalog {
    client: PlanCatalogServiceClient<Channel>,
    token: String,
}

impl Catalog {
    /// A client of billing at `endpoint` (not connected until the first call).
    pub fn new(endpoint: &str, token: &str) -> anyhow::Result<Self> {
        let channel = tonic::transport::Endpoint::from_shared(endpoint.to_owned())
            .map_err(|e| anyhow::anyhow!("BILLING_ENDPOINT {endpoint:?} is not a URL: {e}"))?
            .connect_timeout(Duration::from_secs(5))
            .connect_lazy();
        Ok(Self { client: PlanCatalogServiceClient::new(channel), token: token.to_owned() })
    }

    /// Every plan (with `archived`, the archived ones too), page by page.
    pub async fn list(&self, archived: bool) -> Result<Vec<pb::CatalogPlan>, Status> {
        let (mut plans, mut token) = (Vec::new(), String::new());
        loop {
            let r = pb::PlanCatalogServiceListPlansRequest { page_size: 500, page_token: token, show_archived: archived };
            let budget = Budget::new(CALL_BUDGET);
            let page = retry(budget, ATTEMPTS, || {
                let mut c = self.client.clone();
                let req = budget.request(r.clone(), &self.token);
                async move { c.list_plans(req).await }
            })
            .await?
            .into_inner();
            plans.extend(page.plans);
            if page.next_page_token.is_empty() {
                return Ok(plans);
            }
            token = page.next_page_token;
        }
    }

    /// One plan, or None when there is none of that id.
    pub async fn get(&self, id: &str) -> Result<Option<pb::CatalogPlan>, Status> {
        let budget = Budget::new(CALL_BUDGET);
        let r = retry(budget, ATTEMPTS, || {
            let mut c = self.client.clone();
            let req = budget.request(pb::PlanCatalogServiceGetPlanRequest { plan_id: id.to_owned() }, &self.token);
            async move { c.get_plan(req).await }
        })
        .await;
        match r {
            Ok(r) => Ok(r.into_inner().plan),
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(s),
        }
    }

    /// CreatePlan, retried with its request_id.
    pub async fn create(&self, r: &pb::CreatePlanRequest) -> Result<pb::CatalogPlan, Status> {
        let budget = Budget::new(CALL_BUDGET);
        let out = retry(budget, ATTEMPTS, || {
            let mut c = self.client.clone();
            let req = budget.request(r.clone(), &self.token);
            async move { c.create_plan(req).await }
        })
        .await?;
        out.into_inner().plan.ok_or_else(|| Status::internal("CreatePlan answered no plan"))
    }

    /// Each plan of `plans` that does not exist yet is created (with its
    /// request_id, so a concurrent or repeated seed is a replay); one that
    /// exists is left as it is.
    pub async fn ensure(&self, plans: &[pb::CreatePlanRequest]) -> Result<Vec<(String, Ensured)>, Status> {
        let mut out = Vec::new();
        for p in plans {
            if self.get(&p.plan_id).await?.is_some() {
                out.push((p.plan_id.clone(), Ensured::Present));
                continue;
            }
            match self.create(p).await {
                Ok(_) => out.push((p.plan_id.clone(), Ensured::Created)),
                // Created by someone else since the look-up.
                Err(s) if s.code() == Code::AlreadyExists => out.push((p.plan_id.clone(), Ensured::Present)),
                Err(s) => return Err(s),
            }
        }
        Ok(out)
    }

    /// A new price for `plan` (in `currency`, else the current one's), on
    /// the plan as read now (its etag): a change made meanwhile by someone
    /// else is ETAG_MISMATCH, never overwritten. The request_id names this
    /// change of this state of the plan, so running the same command again
    /// is a replay, and once it is made it finds the price already there.
    pub async fn reprice(
        &self,
        plan: &str,
        price_minor: i64,
        currency: Option<&str>,
        validate_only: bool,
    ) -> anyhow::Result<Repriced> {
        let now = self.get(plan).await?.ok_or_else(|| anyhow::anyhow!("no plan {plan} in the catalogue"))?;
        let shown = now.plan.clone().unwrap_or_default();
        let currency = currency.unwrap_or(&shown.currency).to_owned();
        if shown.price_minor == price_minor && shown.currency == currency {
            return Ok(Repriced::Unchanged(now));
        }
        let what = format!("billing-svc plans reprice {plan} {price_minor} {currency} {}", shown.etag);
        let r = pb::CreatePriceVersionRequest {
            plan_id: plan.to_owned(),
            request_id: derived_request_id(&what, &[]),
            validate_only,
            etag: shown.etag,
            price_minor,
            currency,
            // The current version's trial, as its credits and limits.
            trial_days: None,
        };
        let budget = Budget::new(CALL_BUDGET);
        let out = retry(budget, ATTEMPTS, || {
            let mut c = self.client.clone();
            let req = budget.request(r.clone(), &self.token);
            async move { c.create_price_version(req).await }
        })
        .await?;
        out.into_inner().version.map(Repriced::Made).ok_or_else(|| anyhow::anyhow!("CreatePriceVersion answered no version"))
    }
}

fn limit(l: Option<pb::Limit>) -> String {
    match l {
        Some(pb::Limit { unlimited: true, .. }) => "unlimited".to_owned(),
        Some(l) => l.max.to_string(),
        None => "?".to_owned(),
    }
}

/// One version on one line.
pub fn describe_version(v: &pb::PriceVersion) -> String {
    let l = v.limits.unwrap_or_default();
    let period = pb::PlanPeriod::try_from(v.period).map(|p| p.as_str_name().trim_start_matches("PLAN_PERIOD_").to_lowercase());
    let trial = if v.trial_days > 0 { format!(", trial {} days", v.trial_days) } else { String::new() };
    format!(
        "v{} {} {}/{}, {} credits, sessions {}, minutes {}, upload bytes {}{trial}",
        v.version,
        v.price_minor,
        v.currency,
        period.unwrap_or_else(|_| "?".into()),
        v.credits_per_period,
        limit(l.sessions_per_period),
        limit(l.minutes_per_period),
        limit(l.upload_bytes),
    )
}

/// A plan: a line for the plan, one per version (the current one marked).
pub fn describe(p: &pb::CatalogPlan) -> String {
    let plan = p.plan.clone().unwrap_or_default();
    let mut out = format!("{} ({})", plan.id, plan.name);
    if let Some(t) = p.archived_at {
        let when = chrono::DateTime::from_timestamp(t.seconds, 0).map(|t| t.to_rfc3339()).unwrap_or_default();
        let _ = write!(out, "  ARCHIVED {when}");
    }
    for v in &p.versions {
        let current = if v.version == plan.current_version { "  <- current" } else { "" };
        let _ = write!(out, "\n  {}{current}", describe_version(v));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_plans_parse_with_stable_request_ids() {
        let a = plans_from_json(DEMO_PLANS).unwrap_or_default();
        let b = plans_from_json(DEMO_PLANS).unwrap_or_default();
        assert_eq!(a.iter().map(|p| p.plan_id.as_str()).collect::<Vec<_>>(), ["basic-monthly", "pro-monthly"]);
        assert_eq!(a, b, "the same file, the same request_ids");
        assert_ne!(a[0].request_id, a[1].request_id);
        assert!(uuid::Uuid::try_parse(&a[0].request_id).is_ok());
        use pb::limit_value::Value;
        let pro = a[1].limits.unwrap_or_default();
        assert_eq!(pro.sessions_per_period.and_then(|l| l.value), Some(Value::Unlimited(true)));
        assert_eq!(pro.minutes_per_period.and_then(|l| l.value), Some(Value::Max(3000)));
    }

    #[test]
    fn a_file_that_is_not_a_plan_is_refused_with_its_shape() {
        for bad in ["{}", "[{\"id\": \"x\"}]", "{\"id\": \"x\", \"nme\": \"typo\"}", "not json"] {
            let e = plans_from_json(bad).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.contains("not a plan file"), "{bad}: {e}");
        }
        let word = DEMO_PLANS.replace("\"unlimited\"", "\"endless\"");
        assert!(plans_from_json(&word).is_err(), "a limit is a number or \"unlimited\"");
    }

    #[test]
    fn a_changed_plan_is_another_request() {
        let a = plans_from_json(DEMO_PLANS).unwrap_or_default();
        let b = plans_from_json(&DEMO_PLANS.replace("\"price_minor\": 49900,", "\"price_minor\": 59900,")).unwrap_or_default();
        assert_eq!(b[0].price_minor, 59900);
        assert_ne!(a[0].request_id, b[0].request_id);
        assert_eq!(a[1].request_id, b[1].request_id);
    }

    #[test]
    fn a_trial_is_optional_and_no_trial_keeps_the_request_id() {
        let a = plans_from_json(DEMO_PLANS).unwrap_or_default();
        let zero = plans_from_json(&DEMO_PLANS.replace("\"price_minor\": 49900,", "\"price_minor\": 49900, \"trial_days\": 0,"))
            .unwrap_or_default();
        assert_eq!(a, zero, "absent and 0 are the same plan, the same request_id");
        let trial =
            plans_from_json(&DEMO_PLANS.replace("\"price_minor\": 49900,", "\"price_minor\": 49900, \"trial_days\": 14,"))
                .unwrap_or_default();
        assert_eq!((trial[0].trial_days, a[0].trial_days), (14, 0));
        assert_ne!(trial[0].request_id, a[0].request_id);
    }
}
