//! A service binary's `--help` as it really prints it: every job among
//! `jobs run-once`'s possible values with its help, and the
//! environment-only variables shown as variables, never as options the
//! binary would refuse (`shared::config::ENV_ONLY_HEADING`).
use std::process::Command;

/// The binary's `--help` after `args`.
fn help(path: &str, args: &[&str]) -> String {
    let out = Command::new(path).args(args).arg("--help").output().unwrap_or_else(|e| panic!("cannot run {path}: {e}"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every value of the job enum `J`, with its help, in `jobs run-once --help`
/// of the binary at `path`.
pub fn assert_every_job_listed<J: clap::ValueEnum>(path: &str) {
    let text = help(path, &["jobs", "run-once"]);
    for job in J::value_variants() {
        let Some(value) = job.to_possible_value() else { continue };
        let line = format!("- {}:", value.get_name());
        assert!(text.contains(&line), "{line} missing:\n{text}");
        let about = value.get_help().map(ToString::to_string).unwrap_or_default();
        assert!(!about.is_empty() && text.contains(&about), "{} has no help:\n{text}", value.get_name());
    }
}

/// The binary at `path` lists the environment-only variables under their
/// heading and offers none of them as an option.
pub fn assert_env_only_not_offered(path: &str) {
    let text = help(path, &[]);
    let heading = format!("{}:\n  LOG_FORMAT\n", shared::config::ENV_ONLY_HEADING);
    assert!(text.contains(&heading), "{text}");
    for flag in ["--rust-log", "--log-format", "--otel-exporter-otlp-endpoint", "--otel-service-name"] {
        assert!(!text.contains(flag), "{flag} offered:\n{text}");
    }
}
