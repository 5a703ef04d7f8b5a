//! One held row must not take billing down (docs/design.md, Invariants 18):
//! unrelated callers and the batches the held row shares keep going.
use futures::future::join_all;
use proto::billing::v1 as bpb;
use std::time::{Duration as StdDuration, Instant};
use tests::{
    harness::Options,
    helpers::{assert_ledger_matches_balances, exec, lock_waiters, scalar, wait_for_waiters},
    spawn_app_with,
};
use tonic::Code;

/// The lock bound of the held-row tests below (1 s in production): the
/// test's own release, not a loaded machine's clock, decides when the
/// waiters go on. An unrelated call that waited for the held row would take
/// this long.
const HELD_LOCK_BOUND: StdDuration = StdDuration::from_secs(8);

/// One usage session held by someone else (an operator's open
/// transaction): 40 Deducts pile up on it, and meanwhile other users' calls
/// run as usual. Before, the waiters held every pooled connection and
/// unrelated calls failed UNAVAILABLE after the pool wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_held_row_does_not_take_billing_down_for_unrelated_callers() {
    held_row_leaves_unrelated_deducts_alone(Held::Session, 40, "r").await;
}

/// The same with the *subscription* row held: coalesced batches never wait
/// for it (its calls are answered BUSY inside the batch and then wait on
/// their own), so unrelated users' Deducts, which share those batches, run
/// as usual (docs/design.md, Invariants 18).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_held_subscription_row_does_not_stall_the_batches_it_shares() {
    held_row_leaves_unrelated_deducts_alone(Held::Subscription, 12, "hr").await;
}

/// The same when the session's subscription was replaced (the user bought a
/// plan meanwhile) and the user's live subscription is held (a purchase or a
/// capture in progress): the batch does not wait for the live row either.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_held_live_subscription_does_not_stall_the_batches_it_shares() {
    held_row_leaves_unrelated_deducts_alone(Held::LiveSubscription, 12, "lr").await;
}

/// Which row of the held user the test holds.
#[derive(Clone, Copy, Debug)]
enum Held {
    Session,
    Subscription,
    /// The user's live subscription, after a purchase replaced the one the
    /// session started on.
    LiveSubscription,
}

/// How long an unrelated Deduct may take while a row is held: the
/// production lock bound, which is what a call that waited for the held
/// row would have taken at least.
const UNRELATED_BOUND: StdDuration = StdDuration::from_secs(1);

/// Holds one row behind one user's usage session (`held`) while `waiters`
/// Deducts on that session queue up; meanwhile five rounds of Deducts of 8
/// other users must all succeed, none taking a lock bound, while the row is
/// still held and still waited on. Then the row is let go: each waiter is
/// charged or ABORTED (the per-row admission and the lock bound), and the
/// database shows exactly the charged ones.
async fn held_row_leaves_unrelated_deducts_alone(held_row: Held, waiters: usize, prefix: &str) {
    let app = spawn_app_with(Options { lock_timeout: HELD_LOCK_BOUND, ..Options::default() }).await;
    let user = format!("held-{prefix}");
    let held = app.start_usage(&user, bpb::UsageKind::Text).await.unwrap();
    let mut others = Vec::new();
    for i in 0..8 {
        others.push(app.start_usage(&format!("calm-{prefix}-{i}"), bpb::UsageKind::Text).await.unwrap().id);
    }
    let (table, row) = match held_row {
        Held::Session => ("usage_sessions", held.id.clone()),
        Held::Subscription => ("subscriptions", held.subscription_id.clone()),
        Held::LiveSubscription => {
            let live = app.subscribe(&user, "basic-monthly").await;
            assert_ne!(live.id, held.subscription_id, "the purchase replaced the session's subscription");
            ("subscriptions", live.id)
        }
    };
    let mut holder = app.billing_db().await;
    exec(&mut holder, "BEGIN").await;
    assert_eq!(exec(&mut holder, &format!("SELECT id FROM {table} WHERE id = '{row}' FOR UPDATE")).await, 1);

    let calls: Vec<_> = (0..waiters)
        .map(|i| {
            let mut b = app.billing.clone();
            let req = bpb::DeductRequest { usage_session_id: held.id.clone(), deduction_id: format!("w{prefix}{i}"), units: 1 };
            tokio::spawn(async move { b.deduct(req).await })
        })
        .collect();
    let mut observer = app.billing_db().await;
    let queued = wait_for_waiters(&mut observer, 1, HELD_LOCK_BOUND / 2).await;
    let (results, worst) = unrelated_deducts(&app, &others, prefix).await;
    let still_waited_on = lock_waiters(&mut observer).await >= 1;
    exec(&mut holder, "ROLLBACK").await;

    assert!(queued, "no Deduct ever waited on the held {held_row:?} row; the race did not happen");
    let failed: Vec<_> = results.iter().filter(|r| r.is_err()).collect();
    assert!(failed.is_empty(), "unrelated callers failed: {failed:?}");
    assert!(worst < UNRELATED_BOUND, "an unrelated Deduct took {worst:?}: it waited for the held row");
    assert!(still_waited_on, "the waiters gave up before the unrelated calls were done; the race did not happen");
    let mut charged = 0;
    for call in calls {
        match call.await.unwrap() {
            Ok(_) => charged += 1,
            Err(e) => assert_eq!(e.code(), Code::Aborted, "a waiter on the held row: {e:?}"),
        }
    }
    let mut db = app.billing_db().await;
    let rows = |session: &str| format!("SELECT count(*) AS n FROM deductions WHERE usage_session_id = '{session}'");
    assert_eq!(scalar(&mut db, &rows(&held.id)).await, charged, "exactly the waiters answered OK were charged");
    assert_eq!(scalar(&mut db, &format!("SELECT count(*) AS n FROM deductions WHERE deduction_id LIKE '{prefix}_'")).await, 40);
    assert_ledger_matches_balances(&mut db).await;
}

/// Five rounds of one Deduct per session in `others` (deduction ids
/// `<prefix><round>`), concurrently within a round: every result, and the
/// slowest call.
async fn unrelated_deducts(
    app: &tests::TestApp,
    others: &[String],
    prefix: &str,
) -> (Vec<Result<(), tonic::Status>>, StdDuration) {
    let mut worst = StdDuration::ZERO;
    let mut results = Vec::new();
    for round in 0..5 {
        let calls = others.iter().map(|id| {
            let mut b = app.billing.clone();
            let req = bpb::DeductRequest { usage_session_id: id.clone(), deduction_id: format!("{prefix}{round}"), units: 1 };
            async move {
                let t = Instant::now();
                let r = b.deduct(req).await;
                (r.map(|_| ()), t.elapsed())
            }
        });
        for (r, took) in join_all(calls).await {
            worst = worst.max(took);
            results.push(r);
        }
    }
    (results, worst)
}
