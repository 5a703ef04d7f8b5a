//! RunReconciliation and the cross-check with checkout: what it finds, what
//! `--fix` repairs (once), and what it only reports; a large incident's
//! bounded answer and ListFindings' pages; what a run or a page with
//! nothing to report answers (`empty`).
mod empty;
mod findings;
mod fix_runs;
mod guards;
mod large;
