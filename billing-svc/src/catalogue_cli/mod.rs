//! `billing-svc plans`: the plan catalogue for operators, over
//! PlanCatalogService with an admin token (docs/design.md, "Catalogue"), so
//! that the service checks every change in one place. A plan file is JSON
//! (one plan or a list; `examples/plans/`), and a file's request_id is
//! derived from its content, so running the same file twice within 24 h is a
//! replay, never a second change; every other change's request_id is
//! derived from the change and the etag of the plan it was read from, which
//! it carries as its condition. `stack` seeds its demo plans through
//! [`Catalog::ensure`].
use std::{fmt::Write as _, time::Duration};

use prost::Message as _;
use proto::billing::v1::{self as pb, plan_catalog_service_client::PlanCatalogServiceClient};
use sha2::{Digest, Sha256};
use shared::client::{Budget, retry};
use tonic::{Code, Status, transport::Channel};

pub mod command;
mod plan_file;

pub use plan_file::{LimitSpec, Unlimited, plans_from_json};

/// Each call's time budget, retries included.
const CALL_BUDGET: Duration = Duration::from_secs(10);
/// Attempts of one call on UNAVAILABLE or ABORTED (a request_id makes a
/// change safe to send again).
const ATTEMPTS: u32 = 3;

/// The demo plans `stack` seeds (`examples/plans/demo.json`).
pub const DEMO_PLANS: &str = include_str!("../../../examples/plans/demo.json");

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

/// What `plans update` changes: each field given is named in UpdatePlan's
/// update mask, the others are left as they are.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlanUpdate {
    pub name: Option<String>,
    pub credits_per_period: Option<i64>,
    pub sessions_per_period: Option<LimitSpec>,
    pub minutes_per_period: Option<LimitSpec>,
    pub upload_bytes: Option<LimitSpec>,
}

impl PlanUpdate {
    /// The UpdatePlan request of this change of `plan` (its etag as read),
    /// without its request_id.
    fn request(&self, plan: &str, etag: String) -> pb::UpdatePlanRequest {
        let mut paths = Vec::new();
        let mut limits = pb::PlanLimitsInput::default();
        let mut path = |given: bool, p: &str| {
            if given {
                paths.push(p.to_owned());
            }
        };
        path(self.name.is_some(), "name");
        path(self.credits_per_period.is_some(), "credits_per_period");
        path(self.sessions_per_period.is_some(), "limits.sessions_per_period");
        path(self.minutes_per_period.is_some(), "limits.minutes_per_period");
        path(self.upload_bytes.is_some(), "limits.upload_bytes");
        limits.sessions_per_period = self.sessions_per_period.as_ref().map(LimitSpec::value);
        limits.minutes_per_period = self.minutes_per_period.as_ref().map(LimitSpec::value);
        limits.upload_bytes = self.upload_bytes.as_ref().map(LimitSpec::value);
        pb::UpdatePlanRequest {
            plan_id: plan.to_owned(),
            request_id: String::new(),
            validate_only: false,
            etag,
            update_mask: Some(prost_types::FieldMask { paths }),
            name: self.name.clone().unwrap_or_default(),
            credits_per_period: self.credits_per_period.unwrap_or_default(),
            limits: Some(limits),
        }
    }
}

impl Catalog {
    /// One call of `r` (a change with its request_id, safe to send again),
    /// retried within one budget.
    async fn send<R: Clone, T, Fut>(
        &self,
        r: &R,
        call: impl Fn(PlanCatalogServiceClient<Channel>, tonic::Request<R>) -> Fut,
    ) -> Result<tonic::Response<T>, Status>
    where
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let budget = Budget::new(CALL_BUDGET);
        retry(budget, ATTEMPTS, || call(self.client.clone(), budget.request(r.clone(), &self.token))).await
    }

    /// The plan as read now; NOT_FOUND when there is none of that id.
    async fn read(&self, plan: &str) -> Result<pb::CatalogPlan, Status> {
        self.get(plan).await?.ok_or_else(|| Status::not_found(format!("no plan {plan} in the catalogue")))
    }

    /// The etag of `plan` as read now, the condition of a change of it.
    async fn etag(&self, plan: &str) -> Result<String, Status> {
        Ok(self.read(plan).await?.plan.unwrap_or_default().etag)
    }

    /// ArchivePlan: `plan` off sale (an archived one answered as it is).
    pub async fn archive(&self, plan: &str, validate_only: bool) -> Result<pb::CatalogPlan, Status> {
        let r = pb::ArchivePlanRequest { plan_id: plan.to_owned(), etag: self.etag(plan).await?, ..Default::default() };
        let r = pb::ArchivePlanRequest {
            request_id: derived_request_id("billing-svc plans archive", &r.encode_to_vec()),
            validate_only,
            ..r
        };
        let out = self.send(&r, |mut c, req| async move { c.archive_plan(req).await }).await?;
        out.into_inner().plan.ok_or_else(|| Status::internal("ArchivePlan answered no plan"))
    }

    /// UnarchivePlan: `plan` back on sale (one on sale answered as it is).
    pub async fn unarchive(&self, plan: &str, validate_only: bool) -> Result<pb::CatalogPlan, Status> {
        let r = pb::UnarchivePlanRequest { plan_id: plan.to_owned(), etag: self.etag(plan).await?, ..Default::default() };
        let r = pb::UnarchivePlanRequest {
            request_id: derived_request_id("billing-svc plans unarchive", &r.encode_to_vec()),
            validate_only,
            ..r
        };
        let out = self.send(&r, |mut c, req| async move { c.unarchive_plan(req).await }).await?;
        out.into_inner().plan.ok_or_else(|| Status::internal("UnarchivePlan answered no plan"))
    }

    /// UpdatePlan of the fields `change` gives, on the plan as read now:
    /// the plan as changed, and the version the change made (new credits
    /// or limits), if it made one.
    pub async fn update(
        &self,
        plan: &str,
        change: &PlanUpdate,
        validate_only: bool,
    ) -> Result<(pb::CatalogPlan, Option<pb::PriceVersion>), Status> {
        let r = change.request(plan, self.etag(plan).await?);
        let r = pb::UpdatePlanRequest {
            request_id: derived_request_id("billing-svc plans update", &r.encode_to_vec()),
            validate_only,
            ..r
        };
        let out = self.send(&r, |mut c, req| async move { c.update_plan(req).await }).await?.into_inner();
        let plan = out.plan.ok_or_else(|| Status::internal("UpdatePlan answered no plan"))?;
        Ok((plan, out.created_version))
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
