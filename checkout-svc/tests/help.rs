//! checkout-svc's `--help`, as the real binary prints it (`test_support::help`).
use checkout_svc::jobs::Job;

const BIN: &str = env!("CARGO_BIN_EXE_checkout-svc");

#[test]
fn jobs_run_once_help_lists_every_job_with_its_help() {
    test_support::help::assert_every_job_listed::<Job>(BIN);
}

#[test]
fn environment_only_variables_are_not_offered_as_options() {
    test_support::help::assert_env_only_not_offered(BIN);
}
