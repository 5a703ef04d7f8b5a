//! What ChangeSubscriptionPlan refuses, each with its precise status and
//! nothing written: fields (timing and proration must be given, and fit
//! each other), someone else's subscription, the same plan (a no-op), a
//! PAST_DUE subscription (pay the arrears first), the free plan, an
//! archived target, a stale etag.
use chrono::Duration;
use proto::billing::v1 as bpb;
use tests::{helpers::scalar, spawn_app};
use tonic::Code;
use tonic_types::StatusExt;

use super::{at_period_end, plans, request, upgrade};
use crate::{
    catalogue::{rid, ts},
    support::precondition_type,
};

fn violations(e: &tonic::Status) -> Vec<String> {
    e.get_error_details().bad_request().map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_requests_and_refused_changes_write_nothing() {
    use bpb::{PlanChangeTiming as T, ProrationBehavior as P};
    let app = spawn_app().await;
    plans(&app).await;
    let sub = app.subscribe("picky", "lite").await;
    let mut b = app.billing.clone();

    // Fields: every violation at once; UNSPECIFIED never picks a behaviour.
    let unset = bpb::ChangeSubscriptionPlanRequest { id: "nope".into(), ..Default::default() };
    let e = b.change_subscription_plan(unset).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(violations(&e), ["id", "user_id", "plan_id", "timing", "proration"]);
    for (timing, proration) in [(T::Immediately, P::None), (T::AtPeriodEnd, P::ProrateByTime), (T::Immediately, P::Unspecified)] {
        let e = b.change_subscription_plan(request(&sub, "max", timing, proration)).await.unwrap_err();
        assert_eq!((e.code(), violations(&e)), (Code::InvalidArgument, vec!["proration".to_owned()]), "{timing:?} {proration:?}");
    }
    let mut unknown = request(&sub, "max", T::Immediately, P::ProrateByTime);
    unknown.timing = 99;
    assert_eq!(violations(&b.change_subscription_plan(unknown).await.unwrap_err()), ["timing"]);

    // Someone else's subscription reads as unknown; so does an unknown plan.
    let mut other = request(&sub, "max", T::Immediately, P::ProrateByTime);
    other.user_id = "someone-else".into();
    assert_eq!(b.change_subscription_plan(other).await.unwrap_err().code(), Code::NotFound);
    assert_eq!(upgrade(&app, &sub, "no-such-plan").await.unwrap_err().code(), Code::NotFound);

    // The same plan: a no-op, answered as a replay without a change.
    let same = upgrade(&app, &sub, "lite").await.unwrap();
    assert!(same.replayed && same.change.is_none());

    // A stale etag: ABORTED, nothing written.
    let mut stale = request(&sub, "max", T::AtPeriodEnd, P::None);
    stale.etag = "\"0000\"".into();
    let e = b.change_subscription_plan(stale).await.unwrap_err();
    assert_eq!(e.code(), Code::Aborted, "{e:?}");
    let mut fresh = request(&sub, "max", T::AtPeriodEnd, P::None);
    fresh.etag = app.subscription(&sub.id).await.etag;
    let ok = b.change_subscription_plan(fresh).await.unwrap().into_inner();
    assert!(ok.change.is_some());
    app.billing
        .clone()
        .cancel_plan_change(bpb::CancelPlanChangeRequest { id: sub.id.clone(), user_id: "picky".into() })
        .await
        .unwrap();

    // An archived target: PLAN_NOT_PURCHASABLE.
    let archive = bpb::ArchivePlanRequest { plan_id: "mid".into(), request_id: rid(), ..Default::default() };
    app.catalog.clone().archive_plan(archive).await.unwrap();
    let e = upgrade(&app, &sub, "mid").await.unwrap_err();
    assert_eq!((e.code(), precondition_type(&e)), (Code::FailedPrecondition, "PLAN_NOT_PURCHASABLE".to_owned()));

    // The free plan has no period to prorate: buy through checkout.
    app.start_usage("free-rider", bpb::UsageKind::Text).await.unwrap();
    let free = bpb::Subscription { id: String::new(), user_id: "free-rider".into(), ..Default::default() };
    let list = b.list_subscriptions(bpb::ListSubscriptionsRequest { user_id: "free-rider".into(), ..Default::default() }).await;
    let free = bpb::Subscription { id: list.unwrap().into_inner().subscriptions[0].id.clone(), ..free };
    let e = upgrade(&app, &free, "max").await.unwrap_err();
    assert_eq!((e.code(), precondition_type(&e)), (Code::FailedPrecondition, "PLAN_CHANGE_NOT_ALLOWED".to_owned()), "{e:?}");

    // PAST_DUE: refused until the arrears are paid (then it changes).
    let end = ts(&sub.period_end);
    app.clock.set(end - Duration::hours(48));
    app.run_job("renewals").await;
    app.clock.set(end + Duration::hours(1));
    app.run_job("rollover").await;
    assert_eq!(app.subscription(&sub.id).await.status, bpb::SubscriptionStatus::PastDue as i32);
    for r in [upgrade(&app, &sub, "max").await, at_period_end(&app, &sub, "max").await] {
        let e = r.unwrap_err();
        assert_eq!((e.code(), precondition_type(&e)), (Code::FailedPrecondition, "SUBSCRIPTION_PAST_DUE".to_owned()), "{e:?}");
    }
    app.pay_renewal(&sub.id).await.unwrap();
    assert!(upgrade(&app, &sub, "max").await.unwrap().change.is_some(), "once paid, it changes");

    let mut db = app.billing_db().await;
    let changes = scalar(&mut db, "SELECT count(*) AS n FROM plan_changes").await;
    assert_eq!(changes, 2, "the withdrawn scheduled change and the last upgrade; no refusal wrote one");
}
