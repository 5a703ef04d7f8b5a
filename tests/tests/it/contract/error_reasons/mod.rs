//! The error contract (docs/design.md, Error model): every value of
//! payments.errors.v1.ErrorReason, triggered through a real RPC where it can
//! be, arrives with the code the reason travels with, ErrorInfo.reason = the
//! value's name, domain "payments.internal", RetryInfo when the code invites
//! a retry, and stays a few KB. The reasons no caller can provoke on purpose
//! are listed in [`NOT_FROM_OUTSIDE`] with why; their code and retry advice
//! are covered by the unit checks in proto/src/error.rs.
//!
//! One walk per area, each on its own stack: the plain paths (requests,
//! auth, sessions, orders, subscriptions, refunds, usage) in `plain_paths`,
//! billing failing behind checkout in `billing_failures`, a held row (lock
//! bound, full server, no free connection, deadline) in `held_rows`, the
//! event streams' cursors and watcher cap in `events`, the plan catalogue
//! in `catalogue`.
use std::collections::{BTreeMap, BTreeSet};

use proto::error::{ErrorReason as R, all_reasons};
use tonic::{Code, Status};
use tonic_types::StatusExt;

mod billing_failures;
mod catalogue;
mod events;
mod held_rows;
mod plain_paths;

use billing_failures::walk_billing_failures;
use catalogue::walk_the_catalogue;
use events::walk_the_event_streams;
use held_rows::{walk_a_held_row, walk_no_connection};
use plain_paths::walk_the_plain_paths;

/// Reasons a caller cannot provoke on purpose, and why.
const NOT_FROM_OUTSIDE: &[(R, &str)] = &[
    (R::SessionChanged, "RenewSession losing a race with another renew, complete or expiry between its read and its write"),
    (R::ReplacementChainTooLong, "a session replaced more than 10,000 times"),
    (R::ConcurrentUpdate, "a serialization failure or deadlock surviving the service's 5 attempts"),
    (
        R::ValueNotStorable,
        "every field is validated before PostgreSQL sees it; its own refusal (SQLSTATE class 22) stays as a second line",
    ),
    (
        R::PaymentNotCaptured,
        "the sandbox gateway reports no uncaptured payment a VerifyPayment can name; \
         billing-svc/tests/razorpay checks it against a fake Razorpay",
    ),
];

/// The reasons seen so far, with the RPC that produced each.
#[derive(Default)]
struct Walk(BTreeMap<i32, String>);

impl Walk {
    /// Checks one error against the contract for `want`.
    #[track_caller]
    fn saw<T: std::fmt::Debug>(&mut self, want: R, rpc: &str, r: Result<T, Status>) -> Status {
        let s = match r {
            Ok(v) => panic!("{rpc}: expected {want:?}, got {v:?}"),
            Err(s) => s,
        };
        assert_eq!(s.code(), want.code(), "{rpc}: {s:?}");
        let details = s.get_error_details();
        let info = details.error_info().unwrap_or_else(|| panic!("{rpc}: no ErrorInfo: {s:?}"));
        assert_eq!(info.reason, want.as_str_name(), "{rpc}: {s:?}");
        assert_eq!(info.domain, "payments.internal", "{rpc}");
        if want == R::EtagMismatch {
            // ABORTED, but the retry is a new read-modify-write: resending
            // the same request cannot succeed, so no RetryInfo invites it.
            assert!(details.retry_info().is_none(), "{rpc}: {s:?}");
        } else if matches!(s.code(), Code::Unavailable | Code::Aborted) || want.retry_after().is_some() {
            let delay = details.retry_info().and_then(|r| r.retry_delay);
            assert!(delay.is_some(), "{rpc}: {want:?} invites a retry without RetryInfo: {s:?}");
            assert_eq!(
                info.metadata.get("retry_after_ms"),
                delay.map(|d| d.as_millis().to_string()).as_ref(),
                "{rpc}: the delay in the metadata"
            );
        }
        assert!(s.message().len() + s.details().len() < 8 * 1024, "{rpc}: {} bytes of details", s.details().len());
        self.0.entry(want as i32).or_insert_with(|| rpc.to_owned());
        s
    }

    fn metadata(s: &Status, key: &str) -> String {
        s.get_error_details().error_info().and_then(|i| i.metadata.get(key).cloned()).unwrap_or_default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_error_reason_arrives_with_its_code_and_error_info() {
    let mut w = Walk::default();
    walk_the_plain_paths(&mut w).await;
    walk_billing_failures(&mut w).await;
    walk_a_held_row(&mut w).await;
    walk_no_connection(&mut w).await;
    walk_the_event_streams(&mut w).await;
    walk_the_catalogue(&mut w).await;

    let excused: BTreeSet<i32> = NOT_FROM_OUTSIDE.iter().map(|(r, _)| *r as i32).collect();
    let missing: Vec<R> = all_reasons().filter(|r| !w.0.contains_key(&(*r as i32)) && !excused.contains(&(*r as i32))).collect();
    assert!(missing.is_empty(), "reasons no RPC produced: {missing:?}");
    let triggered_anyway: Vec<R> = NOT_FROM_OUTSIDE.iter().map(|(r, _)| *r).filter(|r| w.0.contains_key(&(*r as i32))).collect();
    assert!(triggered_anyway.is_empty(), "listed as not triggerable, yet seen: {triggered_anyway:?}");
}

/// The codes of the reasons the walk cannot reach are still the declared
/// ones, and each has its reason in the list.
#[test]
fn reasons_not_reachable_from_outside_keep_their_contract() {
    for (r, why) in NOT_FROM_OUTSIDE {
        assert!(!why.is_empty());
        let s = proto::error::plain(*r, "x");
        assert_eq!(s.code(), r.code());
        assert_eq!(s.get_error_details().error_info().map(|i| i.reason.clone()), Some(r.as_str_name().to_owned()));
    }
    assert_eq!(R::PaymentNotCaptured.code(), Code::FailedPrecondition);
    assert!(R::PaymentNotCaptured.retry_after().is_some());
    assert_eq!(R::ConcurrentUpdate.code(), Code::Aborted);
}
