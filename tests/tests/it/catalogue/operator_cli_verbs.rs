//! The operator's `billing-svc plans update|archive|unarchive` against the
//! real service (docs/design.md, "Catalogue"), parsed from their words as
//! the binary parses them: each prints the plan as `plans list` does,
//! `--validate-only` changes nothing, running one again is a replay, and a
//! refusal is an error with the service's code and message.
use billing_svc::catalogue_cli::{
    Catalog, LimitSpec, PlanUpdate, Unlimited,
    command::{PlansCommand, run},
    describe,
};
use clap::{FromArgMatches, Subcommand};
use tests::{harness::ADMIN_TOKEN, helpers::scalar, spawn_app};
use tonic::Code;

fn catalog(app: &tests::TestApp) -> Catalog {
    Catalog::new(&format!("http://{}", app.billing_addr), ADMIN_TOKEN).unwrap()
}

/// `billing-svc plans <args>`, run against `app`: what it printed, or its error.
async fn plans(app: &tests::TestApp, args: &[&str]) -> Result<String, String> {
    let cmd = PlansCommand::augment_subcommands(clap::Command::new("plans"));
    let matches = cmd.try_get_matches_from(std::iter::once("plans").chain(args.iter().copied())).map_err(|e| e.to_string())?;
    let command = PlansCommand::from_arg_matches(&matches).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    run(command, &catalog(app), "http://billing", &mut out).await.map_err(|e| e.to_string())?;
    Ok(String::from_utf8(out).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn archive_and_unarchive_print_the_plan_and_change_it_once() {
    let app = spawn_app().await;
    let mut db = app.billing_db().await;
    let archived_sql = "SELECT count(*) AS n FROM plans WHERE id = 'pro-monthly' AND archived_at IS NOT NULL AND NOT active";

    let dry = plans(&app, &["archive", "pro-monthly", "--validate-only"]).await.unwrap();
    assert!(dry.starts_with("would archive pro-monthly (Pro)  ARCHIVED "), "{dry}");
    assert_eq!(scalar(&mut db, archived_sql).await, 0, "validate_only archives nothing");

    let out = plans(&app, &["archive", "pro-monthly"]).await.unwrap();
    let shown = catalog(&app).get("pro-monthly").await.unwrap().unwrap();
    assert_eq!(out, format!("archived {}\n", describe(&shown)), "printed as plans list prints it");
    assert_eq!(scalar(&mut db, archived_sql).await, 1);
    let listed = plans(&app, &["list", "--archived"]).await.unwrap();
    assert!(listed.contains(&describe(&shown)), "{listed}");
    // Again: archived already, answered as it is; its request_id is derived
    // from the plan as read, so a third run is a replay of the second.
    let keys = "SELECT count(*) AS n FROM idempotency_keys WHERE method = 'billing.ArchivePlan'";
    assert_eq!(plans(&app, &["archive", "pro-monthly"]).await.unwrap(), out);
    assert_eq!(plans(&app, &["archive", "pro-monthly"]).await.unwrap(), out);
    assert_eq!(scalar(&mut db, keys).await, 2, "the third run replayed the second");

    let dry = plans(&app, &["unarchive", "pro-monthly", "--validate-only"]).await.unwrap();
    assert!(dry.starts_with("would unarchive pro-monthly (Pro)\n") && !dry.contains("ARCHIVED"), "{dry}");
    assert_eq!(scalar(&mut db, archived_sql).await, 1, "validate_only unarchives nothing");
    let out = plans(&app, &["unarchive", "pro-monthly"]).await.unwrap();
    let shown = catalog(&app).get("pro-monthly").await.unwrap().unwrap();
    assert_eq!(out, format!("unarchived {}\n", describe(&shown)));
    assert!(shown.archived_at.is_none() && shown.plan.unwrap().active);
    assert_eq!(plans(&app, &["unarchive", "pro-monthly"]).await.unwrap(), out, "on sale already");
    let keys = "SELECT count(*) AS n FROM idempotency_keys WHERE method = 'billing.UnarchivePlan'";
    assert_eq!(scalar(&mut db, keys).await, 2);
    assert!(catalog(&app).archive("pro-monthly", false).await.unwrap().archived_at.is_some());
    assert!(catalog(&app).unarchive("pro-monthly", false).await.unwrap().archived_at.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn update_sends_the_mask_of_the_options_given() {
    let app = spawn_app().await;
    let before = catalog(&app).get("basic-monthly").await.unwrap().unwrap();
    let dry = plans(&app, &["update", "basic-monthly", "--credits", "1234", "--validate-only"]).await.unwrap();
    assert!(dry.starts_with("would update basic-monthly") && dry.contains("1234 credits"), "{dry}");
    assert_eq!(catalog(&app).get("basic-monthly").await.unwrap().unwrap(), before, "validate_only changes nothing");

    let args = ["update", "basic-monthly", "--name", "Basic+", "--credits", "1234", "--minutes-per-period", "unlimited"];
    let out = plans(&app, &args).await.unwrap();
    let after = catalog(&app).get("basic-monthly").await.unwrap().unwrap();
    assert_eq!(out, format!("updated {}\n", describe(&after)));
    let (old, new) = (before.versions.last().unwrap(), after.versions.last().unwrap());
    assert_eq!((after.plan.as_ref().unwrap().name.as_str(), new.version, new.credits_per_period), ("Basic+", 2, 1234));
    let (ol, nl) = (old.limits.unwrap(), new.limits.unwrap());
    assert!(nl.minutes_per_period.unwrap().unlimited);
    assert_eq!((nl.sessions_per_period, nl.upload_bytes), (ol.sessions_per_period, ol.upload_bytes), "limits not given are kept");
    assert_eq!(new.price_minor, old.price_minor);
    // The same command again finds nothing to change: no version.
    assert_eq!(plans(&app, &args).await.unwrap(), out);
    let only_uploads = PlanUpdate { upload_bytes: Some(LimitSpec::Max(0)), ..Default::default() };
    let (p, made) = catalog(&app).update("basic-monthly", &only_uploads, false).await.unwrap();
    assert_eq!((made.map(|v| v.version), p.versions.len()), (Some(3), 3));
    let limits = p.versions[2].limits.unwrap();
    assert!(limits.minutes_per_period.unwrap().unlimited && !limits.upload_bytes.unwrap().unlimited);
    let back = PlanUpdate { upload_bytes: Some(LimitSpec::Word(Unlimited::Unlimited)), ..Default::default() };
    assert!(catalog(&app).update("basic-monthly", &back, true).await.unwrap().1.is_some_and(|v| v.version == 4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refusals_are_errors_with_the_services_code_and_message() {
    let app = spawn_app().await;
    let e = plans(&app, &["archive", "free"]).await.unwrap_err();
    assert!(e.contains("plan free") && e.contains("FailedPrecondition") && e.contains("the free plan"), "{e}");
    let e = plans(&app, &["unarchive", "free"]).await.unwrap_err();
    assert!(e.contains("FailedPrecondition") && e.contains("never archived"), "{e}");
    let e = plans(&app, &["unarchive", "gold"]).await.unwrap_err();
    assert!(e.contains("NotFound") && e.contains("no plan gold in the catalogue"), "{e}");
    assert_eq!(catalog(&app).archive("gold", false).await.unwrap_err().code(), Code::NotFound);
    let e = plans(&app, &["update", "basic-monthly", "--credits", "0"]).await.unwrap_err();
    assert!(e.contains("InvalidArgument") && e.contains("credits_per_period"), "{e}");
    let e = plans(&app, &["update", "basic-monthly", "--sessions-per-period", "0"]).await.unwrap_err();
    assert!(e.contains("InvalidArgument") && e.contains("limits.sessions_per_period"), "{e}");
    // Refused before any call: no change named, a limit that is no limit.
    let e = plans(&app, &["update", "basic-monthly"]).await.unwrap_err();
    assert!(e.contains("--name"), "{e}");
    let e = plans(&app, &["update", "basic-monthly", "--upload-bytes", "lots"]).await.unwrap_err();
    assert!(e.contains("neither a number nor \"unlimited\""), "{e}");
    let mut db = app.billing_db().await;
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM plan_versions").await, 3, "nothing written");
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM plans WHERE archived_at IS NOT NULL").await, 0);
}
