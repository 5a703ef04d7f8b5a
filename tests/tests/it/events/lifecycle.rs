//! A subscription's whole life as its events (docs/design.md, "Events"):
//! purchase, renewal, refund, cancellation, an unpaid period, usage
//! sessions and the credit thresholds, each user's types in the exact order
//! the changes made them, payloads as the RPCs show the entity, versions
//! climbing, and the `events` table holding exactly what ListEvents pages.
use chrono::{DateTime, Duration as Days, Utc};
use tests::{helpers::scalar, spawn_app};

use super::*;

fn ts(t: &Option<prost_types::Timestamp>) -> DateTime<Utc> {
    let t = (*t).unwrap_or_default();
    DateTime::from_timestamp(t.seconds, t.nanos as u32).unwrap()
}

/// The subscription payload of `user`'s last event of type `ty`.
fn last_subscription<'a>(events: &'a [bpb::BillingEvent], user: &str, ty: &str) -> &'a bpb::Subscription {
    let e = events.iter().rev().find(|e| e.user_id == user && type_name(e) == ty).unwrap_or_else(|| panic!("no {ty} of {user}"));
    match &e.payload {
        Some(bpb::billing_event::Payload::Subscription(s)) => s,
        other => panic!("{ty}: not a subscription payload: {other:?}"),
    }
}

/// Settled events, versions climbing, the table's count equal to the pages.
async fn settled_and_counted(app: &TestApp) -> Vec<bpb::BillingEvent> {
    let events = list_settled(app).await;
    assert_versions_climb(&events);
    let stored = scalar(&mut app.billing_db().await, "SELECT count(*) AS n FROM events").await;
    assert_eq!(stored as usize, events.len(), "ListEvents pages out every stored event");
    events
}

async fn cancel_at_period_end(app: &TestApp, id: &str, user: &str) -> bpb::Subscription {
    let r = app
        .billing
        .clone()
        .cancel_subscription(bpb::CancelSubscriptionRequest {
            id: id.into(),
            user_id: user.into(),
            policy: bpb::CancellationPolicy::AtPeriodEnd as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    r.subscription.unwrap()
}

/// Purchase, a renewal order paid ahead, the rollover into the paid period
/// (RENEWED), a cancellation at period end (CANCEL_SCHEDULED), and the
/// rollover that ends it (CANCELLED).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_renewal_then_a_cancellation_at_period_end() {
    let app = spawn_app().await;
    let sub = app.subscribe("renewer", "basic-monthly").await;
    let end = ts(&sub.period_end);
    app.clock.set(end - Days::hours(24));
    assert!(app.run_job("renewals").await.contains("1 renewal orders created"));
    app.pay_renewal(&sub.id).await.unwrap();
    app.clock.set(end + Days::minutes(1));
    assert!(app.run_job("rollover").await.contains(": 1 subscriptions"));
    let renewed = app.subscription(&sub.id).await;
    assert_eq!((renewed.status, ts(&renewed.period_start)), (bpb::SubscriptionStatus::Active as i32, end));

    let events = settled_and_counted(&app).await;
    let s = last_subscription(&events, "renewer", "SUBSCRIPTION_RENEWED");
    assert_eq!(
        (s.status, s.plan_id.as_str(), s.period_start, s.period_end, s.credits_remaining),
        (renewed.status, "basic-monthly", renewed.period_start, renewed.period_end, renewed.credits_remaining),
        "the RENEWED payload is the subscription as GetSubscription shows it"
    );
    assert_eq!(s.etag, renewed.etag);

    let scheduled = cancel_at_period_end(&app, &sub.id, "renewer").await;
    let end2 = ts(&scheduled.period_end);
    app.clock.set(end2 - Days::hours(24));
    assert!(app.run_job("renewals").await.contains("0 renewal orders created"));
    app.clock.set(end2 + Days::minutes(1));
    app.run_job("rollover").await;
    let ended = app.subscription(&sub.id).await;
    assert_eq!(ended.status, bpb::SubscriptionStatus::Cancelled as i32);

    let events = settled_and_counted(&app).await;
    assert_eq!(
        types_of(&events, "renewer"),
        [
            "ORDER_CREATED",
            "ORDER_PAID",
            "PAYMENT_CAPTURED",
            "SUBSCRIPTION_ACTIVATED",
            "ORDER_CREATED",
            "ORDER_PAID",
            "PAYMENT_CAPTURED",
            "SUBSCRIPTION_RENEWED",
            "SUBSCRIPTION_CANCEL_SCHEDULED",
            // The end forfeits the unspent credits: no credit warning for
            // a subscription that ends (docs/design.md, "Events").
            "SUBSCRIPTION_CANCELLED",
        ]
    );
    let s = last_subscription(&events, "renewer", "SUBSCRIPTION_CANCEL_SCHEDULED");
    assert!(s.cancel_at_period_end && s.status == bpb::SubscriptionStatus::Active as i32, "{s:?}");
    assert_eq!(s.etag, scheduled.etag, "the payload is the subscription CancelSubscription answered");
    let s = last_subscription(&events, "renewer", "SUBSCRIPTION_CANCELLED");
    assert_eq!((s.status, s.ended_at, &s.etag), (ended.status, ended.ended_at, &ended.etag));
}

/// A period that ends unpaid: PAST_DUE at the rollover, EXPIRED after the
/// grace period, the renewal order cancelled with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unpaid_period_goes_past_due_then_expires() {
    let app = spawn_app().await;
    let sub = app.subscribe("lapser", "basic-monthly").await;
    let end = ts(&sub.period_end);
    app.clock.set(end - Days::hours(48));
    assert!(app.run_job("renewals").await.contains("1 renewal orders created"));
    app.clock.set(end + Days::minutes(5));
    app.run_job("rollover").await;
    let past_due = app.subscription(&sub.id).await;
    assert_eq!(past_due.status, bpb::SubscriptionStatus::PastDue as i32);
    app.clock.set(end + Days::hours(72));
    assert!(app.run_job("renewals").await.contains("1 expired"));
    let expired = app.subscription(&sub.id).await;
    assert_eq!(expired.status, bpb::SubscriptionStatus::Expired as i32);

    let events = settled_and_counted(&app).await;
    assert_eq!(
        types_of(&events, "lapser"),
        [
            "ORDER_CREATED",
            "ORDER_PAID",
            "PAYMENT_CAPTURED",
            "SUBSCRIPTION_ACTIVATED",
            "ORDER_CREATED",
            // PAST_DUE zeroes the balance: its own event says so, no credit
            // warning (docs/design.md, "Events").
            "SUBSCRIPTION_PAST_DUE",
            "ORDER_CANCELLED",
            "SUBSCRIPTION_EXPIRED",
        ]
    );
    let s = last_subscription(&events, "lapser", "SUBSCRIPTION_PAST_DUE");
    assert_eq!((s.status, s.period_end, s.credits_remaining), (past_due.status, past_due.period_end, 0));
    let s = last_subscription(&events, "lapser", "SUBSCRIPTION_EXPIRED");
    assert_eq!((s.status, s.ended_at, &s.etag), (expired.status, expired.ended_at, &expired.etag));
}

/// RefundPayment as an operator: one refund the sandbox processes at once,
/// one it leaves pending until its `refund.processed` webhook.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refunds_processed_at_once_and_after_pending() {
    use billing_svc::gateway::{RefundStatus, Sandbox, SandboxRefunds};
    let app = spawn_app().await;
    let sub = app.subscribe("refundee", "basic-monthly").await;
    let at_once = crate::refunds::refund(&app, crate::refunds::request(&sub.order_id, 10_000, "at-once")).await.unwrap();
    let at_once = at_once.refund.unwrap();
    assert_eq!(at_once.status, bpb::RefundStatus::Processed as i32);
    app.gateway.set_refunds(SandboxRefunds::Pending);
    let pending = crate::refunds::refund(&app, crate::refunds::request(&sub.order_id, 5_000, "later")).await.unwrap();
    let pending = pending.refund.unwrap();
    assert_eq!(pending.status, bpb::RefundStatus::Pending as i32);
    let body =
        Sandbox::refund_event_body(RefundStatus::Processed, &pending.gateway_refund_id, &pending.payment_id, 5_000, "later");
    let hook = bpb::HandleGatewayWebhookRequest {
        signature: app.gateway.sign_webhook(&body),
        body,
        event_id: "evt-refund-later".into(),
    };
    assert_eq!(app.billing.clone().handle_gateway_webhook(hook).await.unwrap().into_inner().outcome, "PROCESSED");

    let events = settled_and_counted(&app).await;
    assert_eq!(
        types_of(&events, "refundee"),
        [
            "ORDER_CREATED",
            "ORDER_PAID",
            "PAYMENT_CAPTURED",
            "SUBSCRIPTION_ACTIVATED",
            "REFUND_PENDING",
            "REFUND_PROCESSED",
            "REFUND_PENDING",
            "REFUND_PROCESSED",
        ]
    );
    let refunds: Vec<(&str, &str, i32, i64)> = events
        .iter()
        .filter_map(|e| match &e.payload {
            Some(bpb::billing_event::Payload::Refund(r)) => Some((type_name(e), r.id.as_str(), r.status, r.amount_minor)),
            _ => None,
        })
        .collect();
    let (p, d) = (bpb::RefundStatus::Pending as i32, bpb::RefundStatus::Processed as i32);
    assert_eq!(
        refunds,
        [
            ("REFUND_PENDING", "at-once", p, 10_000),
            ("REFUND_PROCESSED", "at-once", d, 10_000),
            ("REFUND_PENDING", "later", p, 5_000),
            ("REFUND_PROCESSED", "later", d, 5_000),
        ]
    );
    // The last payload of each refund is the refund as GetOrder shows it.
    let order = app.billing.clone().get_order(bpb::GetOrderRequest { id: sub.order_id.clone() }).await.unwrap();
    for r in order.into_inner().order.unwrap().refunds {
        let last = events
            .iter()
            .rev()
            .find_map(|e| match &e.payload {
                Some(bpb::billing_event::Payload::Refund(p)) if p.id == r.id => Some(p),
                _ => None,
            })
            .unwrap();
        assert_eq!((&last.gateway_refund_id, last.status, &last.payment_id), (&r.gateway_refund_id, r.status, &r.payment_id));
    }
}
/// Usage sessions start and end; Deducts crossing 20 % of the grant and 0
/// make CREDITS_LOW and CREDITS_EXHAUSTED once each, however many Deducts
/// follow; the next period arms them again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn credit_thresholds_fire_once_per_period() {
    let app = spawn_app().await;
    let sub = app.subscribe("spender", "basic-monthly").await;
    let session = app.start_usage("spender", bpb::UsageKind::Text).await.unwrap();
    let deduct = |units: i64, n: usize| {
        let mut b = app.billing.clone();
        let id = session.id.clone();
        async move {
            b.deduct(bpb::DeductRequest { usage_session_id: id, deduction_id: format!("d-{n}"), units })
                .await
                .unwrap()
                .into_inner()
        }
    };
    let mut left = Vec::new();
    for (n, units) in [100, 100, 39, 1, 10, 49, 1, 5, 7].into_iter().enumerate() {
        left.push(deduct(units, n).await.session.unwrap().credits_remaining);
    }
    assert_eq!(left, [200, 100, 61, 60, 50, 1, 0, 0, 0]);
    app.end_usage(&session.id, 3).await.unwrap();
    let ended = app.usage_session(&session.id).await;
    assert_eq!((ended.status, ended.units_unpaid), (bpb::UsageSessionStatus::Ended as i32, 5 + 7 + 3));

    let events = settled_and_counted(&app).await;
    let mine = [
        "ORDER_CREATED",
        "ORDER_PAID",
        "PAYMENT_CAPTURED",
        "SUBSCRIPTION_ACTIVATED",
        "USAGE_SESSION_STARTED",
        "CREDITS_LOW",
        "CREDITS_EXHAUSTED",
        "USAGE_SESSION_ENDED",
    ];
    assert_eq!(types_of(&events, "spender"), mine);
    assert_eq!(last_subscription(&events, "spender", "CREDITS_LOW").credits_remaining, 60, "the crossing Deduct's balance");
    assert_eq!(last_subscription(&events, "spender", "CREDITS_EXHAUSTED").credits_remaining, 0);
    let sessions: Vec<&bpb::UsageSession> = events
        .iter()
        .filter_map(|e| match &e.payload {
            Some(bpb::billing_event::Payload::UsageSession(u)) => Some(u),
            _ => None,
        })
        .collect();
    assert_eq!(sessions.len(), 2);
    assert_eq!((sessions[0].status, sessions[0].credits_remaining), (bpb::UsageSessionStatus::Active as i32, 300));
    let last = sessions[1];
    assert_eq!(
        (&last.id, last.status, last.units_charged, last.units_unpaid, last.credits_remaining, last.ended_at),
        (&ended.id, ended.status, ended.units_charged, ended.units_unpaid, ended.credits_remaining, ended.ended_at),
        "the ENDED payload is the session as GetUsageSession shows it"
    );

    // A new period: the thresholds fire again, once each.
    let end = ts(&sub.period_end);
    app.clock.set(end - Days::hours(24));
    app.run_job("renewals").await;
    app.pay_renewal(&sub.id).await.unwrap();
    app.clock.set(end + Days::minutes(1));
    app.run_job("rollover").await;
    let next = app.start_usage("spender", bpb::UsageKind::Text).await.unwrap();
    for (n, units) in [240, 30, 30, 1].into_iter().enumerate() {
        let mut b = app.billing.clone();
        b.deduct(bpb::DeductRequest { usage_session_id: next.id.clone(), deduction_id: format!("n-{n}"), units }).await.unwrap();
    }
    app.end_usage(&next.id, 0).await.unwrap();
    let events = settled_and_counted(&app).await;
    let mine = types_of(&events, "spender");
    assert_eq!(
        mine[8..],
        [
            "ORDER_CREATED",
            "ORDER_PAID",
            "PAYMENT_CAPTURED",
            "SUBSCRIPTION_RENEWED",
            "USAGE_SESSION_STARTED",
            "CREDITS_LOW",
            "CREDITS_EXHAUSTED",
            "USAGE_SESSION_ENDED",
        ],
        "{mine:?}"
    );
}
