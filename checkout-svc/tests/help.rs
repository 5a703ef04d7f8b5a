//! checkout-svc's `--help`, as the real binary prints it: every job among
//! `jobs run-once`'s possible values, and the environment-only variables
//! shown as variables, never as options the binary would refuse.
use std::process::Command;

use checkout_svc::jobs::Job;
use clap::ValueEnum;

fn help(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_checkout-svc"))
        .args(args)
        .arg("--help")
        .output()
        .unwrap_or_else(|e| panic!("cannot run the binary: {e}"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn jobs_run_once_help_lists_every_job_with_its_help() {
    let text = help(&["jobs", "run-once"]);
    for job in Job::value_variants() {
        let value = job.to_possible_value().unwrap();
        let line = format!("- {}:", value.get_name());
        assert!(text.contains(&line), "{line} missing:\n{text}");
        assert!(text.contains(&value.get_help().unwrap().to_string()), "{text}");
    }
}

#[test]
fn environment_only_variables_are_not_offered_as_options() {
    let text = help(&[]);
    let heading = format!("{}:\n  LOG_FORMAT\n", shared::config::ENV_ONLY_HEADING);
    assert!(text.contains(&heading), "{text}");
    for flag in ["--rust-log", "--log-format", "--otel-exporter-otlp-endpoint", "--otel-service-name"] {
        assert!(!text.contains(flag), "{flag} offered:\n{text}");
    }
}
