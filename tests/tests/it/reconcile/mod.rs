//! RunReconciliation and the cross-check with checkout: what it finds, what
//! `--fix` repairs (once), and what it only reports.
mod findings;
mod fix_runs;
mod guards;
