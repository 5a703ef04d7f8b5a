//! `billing-svc plans ...`: the operator's verbs over [`Catalog`]
//! (docs/design.md, "Catalogue"). Each change prints the plan as `plans
//! list` does; a refusal is an error carrying the service's code and
//! message (the binary exits non-zero with it).
use std::io::Write;

use clap::{ArgGroup, Subcommand};

use super::{Catalog, LimitSpec, PlanUpdate, Repriced, describe, describe_version, plans_from_json};

#[derive(Debug, Subcommand)]
pub enum PlansCommand {
    /// Every plan on sale with every price version, the current one marked.
    List {
        /// Also the archived plans.
        #[arg(long)]
        archived: bool,
    },
    /// Create the plans of a JSON file (one plan or a list, as in
    /// examples/plans/); the same file again within 24 h is a replay.
    Create {
        /// The plan file.
        #[arg(long)]
        file: std::path::PathBuf,
        /// Only check the plans: nothing is created.
        #[arg(long)]
        validate_only: bool,
    },
    /// Give a plan a new price: a new version that new purchases buy;
    /// subscribers keep the version they bought and renew at its price.
    Reprice {
        /// The plan's id.
        plan: String,
        /// The new price per period, in minor units (49900 = ₹499.00).
        #[arg(long)]
        price: i64,
        /// ISO 4217 code [default: the current version's].
        #[arg(long)]
        currency: Option<String>,
        /// Only check the change: no version is made.
        #[arg(long)]
        validate_only: bool,
    },
    /// Change a plan's name (at once) or its credits and limits (a new
    /// version at the current price, bought by new purchases; subscribers
    /// keep theirs). Only the options given change.
    #[command(group(ArgGroup::new("change").required(true).multiple(true)
        .args(["name", "credits", "sessions_per_period", "minutes_per_period", "upload_bytes"])))]
    Update {
        /// The plan's id.
        plan: String,
        /// The new display name.
        #[arg(long)]
        name: Option<String>,
        /// The new credits per period.
        #[arg(long)]
        credits: Option<i64>,
        /// Usage sessions per period: a number or "unlimited".
        #[arg(long, value_name = "N|unlimited")]
        sessions_per_period: Option<LimitSpec>,
        /// Minutes of usage per period: a number or "unlimited".
        #[arg(long, value_name = "N|unlimited")]
        minutes_per_period: Option<LimitSpec>,
        /// Largest single upload in bytes (0: no uploads): a number or "unlimited".
        #[arg(long, value_name = "N|unlimited")]
        upload_bytes: Option<LimitSpec>,
        /// Only check the change: nothing is changed.
        #[arg(long)]
        validate_only: bool,
    },
    /// Take a plan off sale: no new purchases; subscribers renew as before.
    /// An archived plan stays archived.
    Archive {
        /// The plan's id.
        plan: String,
        /// Only check the change: nothing is archived.
        #[arg(long)]
        validate_only: bool,
    },
    /// Put an archived plan back on sale at its current version. A plan on
    /// sale stays on sale.
    Unarchive {
        /// The plan's id.
        plan: String,
        /// Only check the change: nothing is unarchived.
        #[arg(long)]
        validate_only: bool,
    },
}

/// Runs `command` against `catalog` (billing at `endpoint`, named in
/// errors), writing what it did to `out`.
pub async fn run(command: PlansCommand, catalog: &Catalog, endpoint: &str, out: &mut dyn Write) -> anyhow::Result<()> {
    let failed =
        |e: tonic::Status| anyhow::anyhow!("billing at {endpoint} (BILLING_ENDPOINT) answered {:?}: {}", e.code(), e.message());
    let would = |validate_only: bool, done: &'static str, dry: &'static str| if validate_only { dry } else { done };
    match command {
        PlansCommand::List { archived } => {
            for p in catalog.list(archived).await.map_err(failed)? {
                writeln!(out, "{}", describe(&p))?;
            }
        }
        PlansCommand::Create { file, validate_only } => {
            let text = std::fs::read_to_string(&file).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
            for mut r in plans_from_json(&text)? {
                r.validate_only = validate_only;
                let id = r.plan_id.clone();
                let plan = catalog.create(&r).await.map_err(|e| anyhow::anyhow!("plan {id}: {}", failed(e)))?;
                writeln!(out, "{} {}", would(validate_only, "created", "would create"), describe(&plan))?;
            }
        }
        PlansCommand::Reprice { plan, price, currency, validate_only } => {
            match catalog.reprice(&plan, price, currency.as_deref(), validate_only).await? {
                Repriced::Unchanged(_) => writeln!(out, "{plan}: the current version has that price already; nothing to do")?,
                Repriced::Made(v) if validate_only => writeln!(out, "{plan}: would make {}", describe_version(&v))?,
                Repriced::Made(v) => {
                    writeln!(out, "{plan}: made {} (new purchases buy it; subscribers keep theirs)", describe_version(&v))?
                }
            }
        }
        PlansCommand::Update { plan, name, credits, sessions_per_period, minutes_per_period, upload_bytes, validate_only } => {
            let change = PlanUpdate { name, credits_per_period: credits, sessions_per_period, minutes_per_period, upload_bytes };
            let (p, _) =
                catalog.update(&plan, &change, validate_only).await.map_err(|e| anyhow::anyhow!("plan {plan}: {}", failed(e)))?;
            writeln!(out, "{} {}", would(validate_only, "updated", "would update"), describe(&p))?;
        }
        PlansCommand::Archive { plan, validate_only } => {
            let p = catalog.archive(&plan, validate_only).await.map_err(|e| anyhow::anyhow!("plan {plan}: {}", failed(e)))?;
            writeln!(out, "{} {}", would(validate_only, "archived", "would archive"), describe(&p))?;
        }
        PlansCommand::Unarchive { plan, validate_only } => {
            let p = catalog.unarchive(&plan, validate_only).await.map_err(|e| anyhow::anyhow!("plan {plan}: {}", failed(e)))?;
            writeln!(out, "{} {}", would(validate_only, "unarchived", "would unarchive"), describe(&p))?;
        }
    }
    Ok(())
}
