//! RunReconciliation and the cross-check with checkout: what it finds, what
//! `--fix` repairs (once), and what it only reports; a large incident's
//! bounded answer and ListFindings' pages.
mod findings;
mod fix_runs;
mod guards;
mod large;
