//! Etags (docs/design.md, "API contract: lists, views, etags"): Plan, Subscription and
//! checkout Session carry one that changes whenever the stored resource
//! does; CancelSubscription and RenewSession take it back as a condition,
//! checked under the row lock: a stale one is ABORTED ETAG_MISMATCH and
//! changes nothing, and of concurrent requests naming the same version only
//! one changes the resource.
use std::collections::BTreeSet;

use futures::future::join_all;
use proto::{billing::v1 as bpb, checkout::v1 as cpb, error::ErrorReason};
use tests::{
    TestApp,
    helpers::{exec, scalar},
    spawn_app,
};
use tonic::{Code, Status};

fn reason<T: std::fmt::Debug>(r: &Result<T, Status>) -> Option<ErrorReason> {
    match r {
        Ok(_) => None,
        Err(s) => proto::error::reason_of(s),
    }
}

fn cancel(id: &str, user: &str, policy: bpb::CancellationPolicy, etag: &str) -> bpb::CancelSubscriptionRequest {
    bpb::CancelSubscriptionRequest {
        id: id.into(),
        user_id: user.into(),
        policy: policy as i32,
        etag: etag.into(),
        ..Default::default()
    }
}

fn renew(id: &str, plan: &str, etag: &str) -> cpb::RenewSessionRequest {
    cpb::RenewSessionRequest { id: id.into(), plan_id: plan.into(), etag: etag.into(), ..Default::default() }
}

/// A third paid plan, so that concurrent renewals can want different plans.
async fn add_team_plan(app: &TestApp) {
    app.create_plan("team-monthly", "Team", 299900, 3000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn plans_carry_a_stable_etag_of_their_own() {
    let app = spawn_app().await;
    let mut b = app.billing.clone();
    let plans = b.list_plans(bpb::ListPlansRequest::default()).await.unwrap().into_inner().plans;
    assert!(plans.len() >= 3, "{plans:?}");
    let etags: BTreeSet<&str> = plans.iter().map(|p| p.etag.as_str()).collect();
    assert_eq!(etags.len(), plans.len(), "every plan has its own etag: {plans:?}");
    for p in &plans {
        assert_eq!(p.etag.len(), 16, "{p:?}");
        let got = b.get_plan(bpb::GetPlanRequest { id: p.id.clone() }).await.unwrap().into_inner().plan.unwrap();
        assert_eq!(got.etag, p.etag, "GetPlan and ListPlans agree on {}", p.id);
    }
    // A changed plan row reads with another etag.
    exec(&mut app.billing_db().await, "UPDATE plans SET name = 'Basic (renamed)' WHERE id = 'basic-monthly'").await;
    let after = b.get_plan(bpb::GetPlanRequest { id: "basic-monthly".into() }).await.unwrap().into_inner().plan.unwrap();
    let before = plans.iter().find(|p| p.id == "basic-monthly").unwrap();
    assert_ne!(after.etag, before.etag);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_subscription_acts_only_on_the_subscription_as_read() {
    let app = spawn_app().await;
    let mut b = app.billing.clone();
    let sub = app.subscribe("etag-cancel", "basic-monthly").await;
    assert_eq!(sub.etag.len(), 16, "{sub:?}");
    assert_eq!(app.subscription(&sub.id).await.etag, sub.etag, "reading again gives the same etag");

    // The subscription changes (credits spent): the etag read before is stale.
    let usage = app.start_usage("etag-cancel", bpb::UsageKind::Text).await.unwrap();
    app.end_usage(&usage.id, 5).await.unwrap();
    let now = app.subscription(&sub.id).await;
    assert!(now.credits_remaining < sub.credits_remaining, "{now:?}");
    assert_ne!(now.etag, sub.etag, "a change to the row changes the etag");

    let stale = b.cancel_subscription(cancel(&sub.id, "etag-cancel", bpb::CancellationPolicy::Immediately, &sub.etag)).await;
    assert_eq!(stale.as_ref().map_err(Status::code).err(), Some(Code::Aborted), "{stale:?}");
    assert_eq!(reason(&stale), Some(ErrorReason::EtagMismatch));
    let untouched = app.subscription(&sub.id).await;
    assert_eq!(untouched, now, "a refused cancellation changes nothing");
    let mut db = app.billing_db().await;
    let forfeited = format!("SELECT count(*) AS n FROM ledger WHERE subscription_id = '{}' AND kind = 'FORFEITED'", sub.id);
    assert_eq!(scalar(&mut db, &forfeited).await, 0);

    // A malformed etag is the caller's mistake, not a mismatch.
    let long = b.cancel_subscription(cancel(&sub.id, "etag-cancel", bpb::CancellationPolicy::Immediately, &"e".repeat(65))).await;
    assert_eq!(long.as_ref().map_err(Status::code).err(), Some(Code::InvalidArgument), "{long:?}");
    let spaced = b.cancel_subscription(cancel(&sub.id, "etag-cancel", bpb::CancellationPolicy::Immediately, "a b")).await;
    assert_eq!(spaced.as_ref().map_err(Status::code).err(), Some(Code::InvalidArgument), "{spaced:?}");

    // The current etag: cancelled; the answer carries the new one.
    let done = b
        .cancel_subscription(cancel(&sub.id, "etag-cancel", bpb::CancellationPolicy::AtPeriodEnd, &now.etag))
        .await
        .unwrap()
        .into_inner();
    let cancelled = done.subscription.unwrap();
    assert!(!done.replayed && cancelled.cancel_at_period_end, "{cancelled:?}");
    assert_ne!(cancelled.etag, now.etag);
    assert_eq!(app.subscription(&sub.id).await.etag, cancelled.etag);

    // A retry of the same request (its etag now stale) changed nothing the
    // first did not: it is answered as a replay, not refused.
    let retry = b
        .cancel_subscription(cancel(&sub.id, "etag-cancel", bpb::CancellationPolicy::AtPeriodEnd, &now.etag))
        .await
        .unwrap()
        .into_inner();
    assert!(retry.replayed, "{retry:?}");
    // But a different change on the stale etag is refused.
    let other = b.cancel_subscription(cancel(&sub.id, "etag-cancel", bpb::CancellationPolicy::Immediately, &now.etag)).await;
    assert_eq!(reason(&other), Some(ErrorReason::EtagMismatch), "{other:?}");
    assert!(app.subscription(&sub.id).await.status == bpb::SubscriptionStatus::Active as i32);
}

/// Past its period end a subscription reads (GetSubscription and
/// ListSubscriptions alike) as the period now open, with that view's etag:
/// the one a cancellation compares with, whether the cancellation or the
/// rollover job rolls the row. An etag read before the period ended is
/// stale: the rollover changed what the caller would cancel.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn past_period_end_every_read_shows_the_etag_a_cancellation_accepts() {
    let app = spawn_app().await;
    let mut b = app.billing.clone();
    let sub = app.subscribe("etag-roll", "basic-monthly").await;
    app.clock.advance(chrono::Duration::days(31));
    let shown = app.subscription(&sub.id).await;
    assert_ne!(shown.etag, sub.etag, "the period ended: {shown:?}");
    let listed = b
        .list_subscriptions(bpb::ListSubscriptionsRequest { user_id: "etag-roll".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .subscriptions;
    let listed = listed.iter().find(|s| s.id == sub.id).unwrap();
    assert_eq!(listed, &shown, "ListSubscriptions shows what GetSubscription shows");

    let old = b.cancel_subscription(cancel(&sub.id, "etag-roll", bpb::CancellationPolicy::Immediately, &sub.etag)).await;
    assert_eq!(reason(&old), Some(ErrorReason::EtagMismatch), "{old:?}");
    assert_eq!(app.subscription(&sub.id).await, shown, "the refusal rolled nothing back in");
    let r = b.cancel_subscription(cancel(&sub.id, "etag-roll", bpb::CancellationPolicy::Immediately, &shown.etag)).await;
    let cancelled = r.unwrap().into_inner().subscription.unwrap();
    assert_eq!(cancelled.status, bpb::SubscriptionStatus::Cancelled as i32, "{cancelled:?}");

    // The rollover job rolls the row first: the etag read before it still
    // names the subscription (the job wrote what the read showed).
    let other = app.subscribe("etag-roll-2", "basic-monthly").await;
    app.clock.advance(chrono::Duration::days(31));
    let shown = app.subscription(&other.id).await;
    app.run_job("rollover").await;
    let mut db = app.billing_db().await;
    let unrolled = format!(
        "SELECT count(*) AS n FROM subscriptions WHERE id = '{}' AND status = 'ACTIVE' \
          AND extract(epoch FROM period_end)::bigint = {}",
        other.id,
        other.period_end.as_ref().unwrap().seconds
    );
    assert_eq!(scalar(&mut db, &unrolled).await, 0, "the job rolled the row");
    assert_eq!(app.subscription(&other.id).await.etag, shown.etag, "a read after the job shows the same");
    let r = b.cancel_subscription(cancel(&other.id, "etag-roll-2", bpb::CancellationPolicy::Immediately, &shown.etag)).await;
    assert!(r.is_ok(), "{r:?}");
}

/// Ten cancellations of one subscription at once, all naming the version
/// they read, half at period end and half now: exactly one changes it.
/// Without the condition both kinds would apply, one after the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn race_cancellations_naming_one_version_change_it_once() {
    let app = spawn_app().await;
    let sub = app.subscribe("etag-race", "basic-monthly").await;
    let calls = (0..10).map(|i| {
        let mut b = app.billing.clone();
        let policy = if i % 2 == 0 { bpb::CancellationPolicy::AtPeriodEnd } else { bpb::CancellationPolicy::Immediately };
        let req = cancel(&sub.id, "etag-race", policy, &sub.etag);
        async move { (policy, b.cancel_subscription(req).await) }
    });
    let results = join_all(calls).await;
    let mut changed = Vec::new();
    for (policy, r) in &results {
        match r {
            Ok(resp) if !resp.get_ref().replayed => changed.push(*policy),
            Ok(_) => {}
            Err(s) => assert_eq!(proto::error::reason_of(s), Some(ErrorReason::EtagMismatch), "{s:?}"),
        }
    }
    assert_eq!(changed.len(), 1, "exactly one cancellation applied: {results:?}");
    let after = app.subscription(&sub.id).await;
    let mut db = app.billing_db().await;
    let forfeited = format!("SELECT count(*) AS n FROM ledger WHERE subscription_id = '{}' AND kind = 'FORFEITED'", sub.id);
    match changed[0] {
        bpb::CancellationPolicy::AtPeriodEnd => {
            assert!(after.status == bpb::SubscriptionStatus::Active as i32 && after.cancel_at_period_end, "{after:?}");
            assert_eq!(scalar(&mut db, &forfeited).await, 0, "nobody ended it now");
        }
        _ => {
            assert_eq!(after.status, bpb::SubscriptionStatus::Cancelled as i32, "{after:?}");
            assert_eq!(scalar(&mut db, &forfeited).await, 1);
        }
    }
    tests::helpers::assert_ledger_matches_balances(&mut db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn renew_session_changes_only_the_session_as_read() {
    let app = spawn_app().await;
    let mut c = app.checkout.clone();
    let a = app.create_session("etag-renew", "basic-monthly").await;
    assert_eq!(a.etag.len(), 16, "{a:?}");
    assert_eq!(app.get_session(&a.id).await.etag, a.etag);

    let stale = c.renew_session(renew(&a.id, "pro-monthly", "0123456789abcdef")).await;
    assert_eq!(stale.as_ref().map_err(Status::code).err(), Some(Code::Aborted), "{stale:?}");
    assert_eq!(reason(&stale), Some(ErrorReason::EtagMismatch));
    assert_eq!(app.get_session(&a.id).await, a, "a refused renewal changes nothing");
    let mut db = app.checkout_db().await;
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM checkout_sessions WHERE user_id = 'etag-renew'").await, 1);
    // The refused request's order (billing was asked before the check
    // under the lock) was withdrawn.
    let mut bdb = app.billing_db().await;
    let open = "SELECT count(*) AS n FROM orders WHERE user_id = 'etag-renew' AND status = 'CREATED'";
    assert_eq!(scalar(&mut bdb, open).await, 1, "only the session's own order is payable");

    let bad = c.renew_session(renew(&a.id, "pro-monthly", &"e".repeat(65))).await;
    assert_eq!(bad.as_ref().map_err(Status::code).err(), Some(Code::InvalidArgument), "{bad:?}");

    let r = c.renew_session(renew(&a.id, "pro-monthly", &a.etag)).await.unwrap().into_inner();
    let b = r.session.unwrap();
    let previous = r.previous.unwrap();
    assert_eq!(b.plan_id, "pro-monthly");
    assert_ne!(previous.etag, a.etag, "the replaced session changed, and so did its etag");
    // A repeat to the plan it already has changes nothing: answered as before.
    let again = c.renew_session(renew(&a.id, "pro-monthly", &a.etag)).await.unwrap().into_inner();
    assert_eq!(again.session.unwrap().id, b.id);
    // Another change on the stale etag is refused.
    let other = c.renew_session(renew(&a.id, "basic-monthly", &a.etag)).await;
    assert_eq!(reason(&other), Some(ErrorReason::EtagMismatch), "{other:?}");
    assert_eq!(app.get_session(&b.id).await.status, cpb::SessionStatus::Active as i32);
    // The answer's sessions carry the etags they are stored with.
    assert_eq!(app.get_session(&previous.id).await.etag, previous.etag);
    assert_eq!(app.get_session(&b.id).await.etag, b.etag);
}

/// A conditional renewal names the session it retires. The replaced
/// session's own etag stays fresh for ever (it no longer changes), so
/// naming it cannot say that the live head is as the caller read it: such a
/// request is refused, and a change someone else made to the head survives.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn renew_by_a_replaced_id_with_an_etag_cannot_overwrite_the_head() {
    let app = spawn_app().await;
    add_team_plan(&app).await;
    let mut c = app.checkout.clone();
    let a = app.create_session("etag-chain", "basic-monthly").await;
    let b = c.renew_session(renew(&a.id, "pro-monthly", &a.etag)).await.unwrap().into_inner().session.unwrap();
    // X reads A (replaced by B); meanwhile Y changes B to team.
    let a_read = app.get_session(&a.id).await;
    assert_eq!(a_read.replaced_by, b.id);
    let team = c.renew_session(renew(&b.id, "team-monthly", &b.etag)).await.unwrap().into_inner().session.unwrap();
    assert_eq!(app.get_session(&a.id).await.etag, a_read.etag, "A itself did not change");
    // X's conditional change through A is refused; Y's plan stands.
    let x = c.renew_session(renew(&a.id, "basic-monthly", &a_read.etag)).await;
    assert_eq!(reason(&x), Some(ErrorReason::EtagMismatch), "{x:?}");
    let head = app.get_session(&team.id).await;
    assert_eq!((head.status, head.plan_id.as_str()), (cpb::SessionStatus::Active as i32, "team-monthly"));
    let mut db = app.checkout_db().await;
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM checkout_sessions WHERE user_id = 'etag-chain'").await, 3);
    let mut bdb = app.billing_db().await;
    let open = "SELECT count(*) AS n FROM orders WHERE user_id = 'etag-chain' AND status = 'CREATED'";
    assert_eq!(scalar(&mut bdb, open).await, 1, "X's order was withdrawn; only the head's is payable");
    // Naming the head with its etag works.
    let r = c.renew_session(renew(&team.id, "basic-monthly", &head.etag)).await.unwrap().into_inner();
    assert_eq!(r.session.unwrap().plan_id, "basic-monthly");
}

/// Twelve renewals of one session at once, naming the version they read,
/// wanting two different plans: one plan wins, every request for it gets
/// the same new session, every request for the other is ABORTED
/// ETAG_MISMATCH, and billing keeps exactly one payable order for the user.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn race_renewals_naming_one_version_change_it_once() {
    let app = spawn_app().await;
    add_team_plan(&app).await;
    let a = app.create_session("etag-renew-race", "basic-monthly").await;
    let calls = (0..12).map(|i| {
        let mut c = app.checkout.clone();
        let plan = if i % 2 == 0 { "pro-monthly" } else { "team-monthly" };
        let req = renew(&a.id, plan, &a.etag);
        async move { (plan, c.renew_session(req).await) }
    });
    let results = join_all(calls).await;
    let mut won: BTreeSet<(String, String)> = BTreeSet::new();
    let mut lost_plans = BTreeSet::new();
    for (plan, r) in &results {
        match r {
            Ok(resp) => {
                let s = resp.get_ref().session.clone().unwrap();
                assert_eq!(s.plan_id, *plan);
                won.insert((s.plan_id, s.id));
            }
            Err(s) => {
                assert_eq!(proto::error::reason_of(s), Some(ErrorReason::EtagMismatch), "{s:?}");
                lost_plans.insert(*plan);
            }
        }
    }
    assert_eq!(won.len(), 1, "one plan, one new session: {results:?}");
    let (plan, id) = won.into_iter().next().unwrap();
    assert!(!lost_plans.contains(plan.as_str()), "a request for the winning plan was refused: {results:?}");
    let mut db = app.checkout_db().await;
    let active = "SELECT count(*) AS n FROM checkout_sessions WHERE user_id = 'etag-renew-race' AND status = 'ACTIVE'";
    assert_eq!(scalar(&mut db, active).await, 1);
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM checkout_sessions WHERE user_id = 'etag-renew-race'").await, 2);
    assert_eq!(app.get_session(&a.id).await.replaced_by, id);
    let mut bdb = app.billing_db().await;
    let open = "SELECT count(*) AS n FROM orders WHERE user_id = 'etag-renew-race' AND status = 'CREATED'";
    assert_eq!(scalar(&mut bdb, open).await, 1, "the refused requests' orders were withdrawn");
}
