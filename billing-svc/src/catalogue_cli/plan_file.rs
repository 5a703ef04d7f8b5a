//! Plan files (`billing-svc plans create --file`): JSON, one plan or a
//! list (`examples/plans/`), each a CreatePlan request whose request_id is
//! derived from the plan as written (docs/design.md, "Catalogue").
use proto::billing::v1 as pb;

use super::derived_request_id;

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

/// A limit: a number, or the word "unlimited" (in a plan file and in
/// `plans update`'s limit flags alike).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(untagged)]
pub enum LimitSpec {
    Max(i64),
    Word(Unlimited),
}

/// The word "unlimited".
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub enum Unlimited {
    #[serde(rename = "unlimited")]
    Unlimited,
}

#[derive(Debug, serde::Deserialize, serde::Serialize)]
#[serde(untagged)]
enum SpecFile {
    One(PlanSpec),
    Many(Vec<PlanSpec>),
}

impl std::str::FromStr for LimitSpec {
    type Err = String;
    /// A number, or "unlimited"; the service judges the number's range.
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "unlimited" => Ok(LimitSpec::Word(Unlimited::Unlimited)),
            n => n.parse().map(LimitSpec::Max).map_err(|_| format!("{s:?} is neither a number nor \"unlimited\"")),
        }
    }
}

impl LimitSpec {
    /// The limit as a request states it.
    pub fn value(&self) -> pb::LimitValue {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalogue_cli::DEMO_PLANS;

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
