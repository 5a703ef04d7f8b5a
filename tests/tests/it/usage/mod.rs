//! billing.v1 usage: limits counted per billing period (docs/design.md,
//! Invariants 13), locked deductions with a ledger (Invariants 10 and 11),
//! races and bad input.
//!
//! `limits`: plan limits per period; `charging`: ticks, ends and Deducts
//! under concurrency, and what they leave in the ledger; `deduct_batch`:
//! group commit of Deducts; `balances`: a charge racing a purchase, and
//! reads beside a writer; `request_ids`: StartUsageSession's request_id
//! and the deprecated header; `guards`: one test per defence;
//! `stats_range`: GetUsageStats' echoed range, rows or none.
use std::collections::HashMap;

use chrono::{Duration, TimeZone, Utc};
use futures::{StreamExt, future::join_all, stream};
use proto::billing::v1::{self as bpb, UsageKind};
use tests::{
    helpers::{assert_ledger_matches_balances, exec, retrying, scalar},
    spawn_app,
};
use tonic::Code;
use tonic_types::StatusExt;

mod balances;
mod charging;
mod deduct_batch;
mod guards;
mod limits;
mod request_ids;
mod stats_range;

/// The reason and metadata of a RESOURCE_EXHAUSTED answer (a plan limit),
/// which must carry a QuotaFailure.
fn quota(e: &tonic::Status) -> (String, HashMap<String, String>) {
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    let d = e.get_error_details();
    assert!(d.quota_failure().is_some(), "QuotaFailure detail");
    let info = d.error_info().unwrap();
    (info.reason.clone(), info.metadata.clone())
}
