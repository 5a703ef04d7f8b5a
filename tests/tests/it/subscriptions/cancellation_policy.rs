//! CancelSubscription needs a policy: the unset `at_period_end` (which
//! cancelled at once and forfeited the credits) is refused, the legacy
//! `at_period_end = true` still works, and a policy that contradicts it is
//! refused (docs/design.md, Idempotency: no zero value moves money).
use proto::billing::v1::{self as bpb, CancellationPolicy};
use tests::{helpers::scalar, spawn_app};
use tonic::Code;

use crate::support::lost_response::violated_fields;

#[allow(deprecated)] // the legacy at_period_end is what is tested
fn cancel(id: &str, user: &str, policy: i32, at_period_end: bool) -> bpb::CancelSubscriptionRequest {
    bpb::CancelSubscriptionRequest { id: id.into(), user_id: user.into(), at_period_end, policy, ..Default::default() }
}

fn forfeited(sub: &str) -> String {
    format!("SELECT count(*) AS n FROM ledger WHERE kind = 'FORFEITED' AND subscription_id = '{sub}'")
}

/// Neither a policy nor at_period_end = true, a contradiction, or a policy
/// this server does not know: INVALID_ARGUMENT on `policy`, and the
/// subscription keeps its credits.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ambiguous_and_contradictory_cancellations_are_refused() {
    let app = spawn_app().await;
    let sub = app.subscribe("undecided", "basic-monthly").await;
    let mut b = app.billing.clone();
    for (what, policy, legacy) in [
        ("the zero value", CancellationPolicy::Unspecified as i32, false),
        ("IMMEDIATELY with at_period_end", CancellationPolicy::Immediately as i32, true),
        ("an unknown policy", 7, false),
    ] {
        let e = b.cancel_subscription(cancel(&sub.id, "undecided", policy, legacy)).await.expect_err(what);
        assert_eq!((e.code(), violated_fields(&e)), (Code::InvalidArgument, vec!["policy".to_owned()]), "{what}: {e:?}");
    }
    let s = app.subscription(&sub.id).await;
    assert_eq!((s.status, s.credits_remaining, s.cancel_at_period_end), (bpb::SubscriptionStatus::Active as i32, 300, false));
    let mut db = app.billing_db().await;
    assert_eq!(scalar(&mut db, &forfeited(&sub.id)).await, 0);
}

/// The legacy form `at_period_end = true` alone is unambiguous and still
/// cancels at period end; with AT_PERIOD_END as well it agrees and replays.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_legacy_at_period_end_true_still_cancels_at_period_end() {
    let app = spawn_app().await;
    let sub = app.subscribe("legacy-leaver", "basic-monthly").await;
    let mut b = app.billing.clone();
    let r = b
        .cancel_subscription(cancel(&sub.id, "legacy-leaver", CancellationPolicy::Unspecified as i32, true))
        .await
        .unwrap()
        .into_inner();
    let s = r.subscription.unwrap();
    assert_eq!(
        (s.status, s.credits_remaining, s.cancel_at_period_end, r.replayed),
        (bpb::SubscriptionStatus::Active as i32, 300, true, false)
    );
    let again = b
        .cancel_subscription(cancel(&sub.id, "legacy-leaver", CancellationPolicy::AtPeriodEnd as i32, true))
        .await
        .unwrap()
        .into_inner();
    assert!(again.replayed);
    let mut db = app.billing_db().await;
    assert_eq!(scalar(&mut db, &forfeited(&sub.id)).await, 0);
}

/// The new form: IMMEDIATELY ends it now (credits forfeited through the
/// ledger); AT_PERIOD_END keeps it ACTIVE until period_end.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_policy_says_when_it_ends() {
    let app = spawn_app().await;
    let later = app.subscribe("later", "basic-monthly").await;
    let now = app.subscribe("now", "basic-monthly").await;
    let mut b = app.billing.clone();
    let l = b
        .cancel_subscription(cancel(&later.id, "later", CancellationPolicy::AtPeriodEnd as i32, false))
        .await
        .unwrap()
        .into_inner()
        .subscription
        .unwrap();
    assert_eq!((l.status, l.cancel_at_period_end), (bpb::SubscriptionStatus::Active as i32, true));
    let n = b
        .cancel_subscription(cancel(&now.id, "now", CancellationPolicy::Immediately as i32, false))
        .await
        .unwrap()
        .into_inner()
        .subscription
        .unwrap();
    assert_eq!((n.status, n.credits_remaining), (bpb::SubscriptionStatus::Cancelled as i32, 0));
    let mut db = app.billing_db().await;
    assert_eq!(scalar(&mut db, &forfeited(&now.id)).await, 1);
    assert_eq!(scalar(&mut db, &forfeited(&later.id)).await, 0);
}
