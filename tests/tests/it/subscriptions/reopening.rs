//! A PAST_DUE subscription whose renewal counts as paid again reopens its
//! period, exactly once, anchored at the old period end (docs/design.md,
//! "Subscription lifecycle", Invariants: a paid renewal is a paid period).
//!
//! The way there: a renewal is paid early; a full refund of it meets an
//! unreachable gateway and stays PENDING (its money may be on its way
//! back, so the renewal does not count as paid); the period ends and the
//! subscription goes PAST_DUE; then the refund fails. The customer paid and
//! the money was kept: every path that sees the subscription next (a read,
//! a locked use, the rollover and renewal jobs, a replayed capture) must
//! find the period open.
use chrono::{DateTime, Duration, Utc};
use proto::billing::v1 as bpb;
use tests::{
    TestApp,
    helpers::{assert_ledger_matches_balances, scalar},
    spawn_app,
};
use tonic::Code;

const ACTIVE: i32 = bpb::SubscriptionStatus::Active as i32;

const PAST_DUE: i32 = bpb::SubscriptionStatus::PastDue as i32;

fn ts(t: &Option<prost_types::Timestamp>) -> DateTime<Utc> {
    DateTime::from_timestamp(t.as_ref().map_or(0, |t| t.seconds), 0).unwrap_or_default()
}

/// Where the sequence leaves us: the subscription PAST_DUE at `end`, its
/// renewal paid with (`payment_id`, `signature`), the refund of it PENDING
/// with its outcome unknown and then refused by a `refund.failed` webhook.
struct PastDueWithPaidRenewal {
    sub_id: String,
    end: DateTime<Utc>,
    renewal_order: String,
    payment: (String, String),
}

/// How the refund's failure reaches billing: its `refund.failed` webhook
/// (which reopens the period at once), or written straight to the row, so
/// that the one path a test drives next is the only one that can reopen it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Failure {
    Webhook,
    RowOnly,
}

async fn past_due_then_refund_fails(app: &TestApp, user: &str, failure: Failure) -> PastDueWithPaidRenewal {
    let (p, refund_id) =
        past_due_with_pending_refund(app, user, billing_svc::gateway::SandboxRefunds::Unreachable, Code::Unavailable).await;
    let mut db = app.billing_db().await;
    match failure {
        Failure::Webhook => refund_fails(app, user, &p, &refund_id).await,
        Failure::RowOnly => {
            tests::helpers::exec(&mut db, &format!("UPDATE refunds SET status = 'FAILED' WHERE id = '{refund_id}'")).await;
            assert_eq!(
                scalar(
                    &mut db,
                    &format!("SELECT count(*) AS n FROM subscriptions WHERE id = '{}' AND status = 'PAST_DUE'", p.sub_id)
                )
                .await,
                1
            );
        }
    }
    assert_eq!(
        scalar(&mut db, &format!("SELECT count(*) AS n FROM refunds WHERE id = '{refund_id}' AND status = 'FAILED'")).await,
        1
    );
    p
}

/// The renewal paid early, a full refund of it left PENDING (`answer` is how
/// the gateway answers it, `code` what the call returns), the period ended:
/// the subscription PAST_DUE. Returns the refund id too.
async fn past_due_with_pending_refund(
    app: &TestApp,
    user: &str,
    answer: billing_svc::gateway::SandboxRefunds,
    code: Code,
) -> (PastDueWithPaidRenewal, String) {
    let sub = app.subscribe(user, "basic-monthly").await;
    let end = ts(&sub.period_end);
    app.clock.set(end - Duration::hours(48));
    app.run_job("renewals").await;
    let renewal_order = app.subscription(&sub.id).await.renewal_order_id;
    let (payment_id, signature) = app.pay(&renewal_order);
    app.billing
        .clone()
        .verify_payment(bpb::VerifyPaymentRequest {
            order_id: renewal_order.clone(),
            payment_id: payment_id.clone(),
            signature: signature.clone(),
        })
        .await
        .unwrap();

    app.gateway.set_refunds(answer);
    let refund_id = format!("{user}-renewal-back");
    let r = app
        .billing_admin
        .clone()
        .refund_payment(bpb::RefundPaymentRequest {
            order_id: renewal_order.clone(),
            amount_minor: 0,
            reason: "customer asked".into(),
            refund_id: refund_id.clone(),
            refund_all: true,
        })
        .await;
    match r {
        Ok(r) => assert_eq!((code, r.into_inner().refund.unwrap().status), (Code::Ok, bpb::RefundStatus::Pending as i32)),
        Err(e) => assert_eq!(e.code(), code, "{e:?}"),
    }

    app.clock.set(end + Duration::hours(1));
    app.run_job("rollover").await;
    let mut db = app.billing_db().await;
    let s = app.subscription(&sub.id).await;
    assert_eq!((s.status, s.credits_remaining), (PAST_DUE, 0), "a refund on its way back: the renewal does not count");
    assert_eq!(
        scalar(&mut db, &format!("SELECT count(*) AS n FROM subscriptions WHERE id = '{}' AND status = 'PAST_DUE'", sub.id))
            .await,
        1
    );
    (PastDueWithPaidRenewal { sub_id: sub.id, end, renewal_order, payment: (payment_id, signature) }, refund_id)
}

/// The gateway says by webhook, naming billing's refund id in its notes,
/// that the refund of the renewal failed (never made, or made and failed).
async fn refund_fails(app: &TestApp, user: &str, p: &PastDueWithPaidRenewal, refund_id: &str) {
    let body = serde_json::json!({
        "entity": "event", "event": "refund.failed",
        "payload": { "refund": { "entity": {
            "id": format!("rfnd_{user}"), "entity": "refund", "payment_id": p.payment.0, "amount": 49_900,
            "status": "failed", "notes": { "refund_key": refund_id }
        } } }
    })
    .to_string()
    .into_bytes();
    let hook =
        bpb::HandleGatewayWebhookRequest { signature: app.gateway.sign_webhook(&body), body, event_id: format!("evt-{user}") };
    let r = app.billing.clone().handle_gateway_webhook(hook).await.unwrap().into_inner();
    assert_eq!(r.outcome, "PROCESSED", "{r:?}");
}

/// The period reopened once, anchored at the old end, with the plan's
/// credits; nothing owed, nothing reported; the books balance.
async fn assert_reopened_once(app: &TestApp, p: &PastDueWithPaidRenewal) {
    let s = app.subscription(&p.sub_id).await;
    assert_eq!((s.status, s.credits_remaining), (ACTIVE, 300), "{s:?}");
    assert_eq!(ts(&s.period_start), p.end, "anchored at the old period end");
    let mut db = app.billing_db().await;
    assert_eq!(
        scalar(
            &mut db,
            &format!(
                "SELECT count(*) AS n FROM subscriptions WHERE id = '{}' AND status = 'ACTIVE' AND period_start = to_timestamp({})",
                p.sub_id,
                p.end.timestamp()
            )
        )
        .await,
        1,
        "the stored row is reopened, not only the read"
    );
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM payment_discrepancies").await, 0);
    assert_ledger_matches_balances(&mut db).await;
    let r = app.billing_admin.clone().run_reconciliation(bpb::RunReconciliationRequest { fix: false }).await.unwrap();
    assert!(r.get_ref().findings.is_empty(), "{:?}", r.get_ref().findings);
}

/// The failed refund's webhook reopens the stored row at once (a Deduct in
/// a running usage session sees the period); the jobs then change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_refunds_webhook_reopens_a_past_due_period_at_once() {
    let app = spawn_app().await;
    let p = past_due_then_refund_fails(&app, "reopen-hook", Failure::Webhook).await;
    let mut db = app.billing_db().await;
    assert_eq!(
        scalar(
            &mut db,
            &format!(
                "SELECT count(*) AS n FROM subscriptions WHERE id = '{}' AND status = 'ACTIVE' AND period_start = to_timestamp({})",
                p.sub_id,
                p.end.timestamp()
            )
        )
        .await,
        1
    );
    app.run_job("rollover").await;
    app.run_job("renewals").await;
    assert_reopened_once(&app, &p).await;
}

/// A read shows the reopened period without writing; the rollover job
/// persists it, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_read_shows_and_the_rollover_job_reopens_a_period_paid_again() {
    let app = spawn_app().await;
    let p = past_due_then_refund_fails(&app, "reopen-read", Failure::RowOnly).await;
    let s = app.subscription(&p.sub_id).await;
    assert_eq!((s.status, s.credits_remaining, ts(&s.period_start)), (ACTIVE, 300, p.end), "the read shows the paid period");
    let mut db = app.billing_db().await;
    assert_eq!(
        scalar(&mut db, &format!("SELECT count(*) AS n FROM subscriptions WHERE id = '{}' AND status = 'PAST_DUE'", p.sub_id))
            .await,
        1,
        "reads do not write"
    );
    app.run_job("rollover").await;
    app.run_job("rollover").await;
    assert_reopened_once(&app, &p).await;
}

/// The renewal job's expiry meets the subscription first, past the grace
/// period: it reopens instead of expiring a paid period.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expiry_reopens_a_past_due_period_whose_renewal_is_paid_again() {
    let app = spawn_app().await;
    let p = past_due_then_refund_fails(&app, "reopen-expiry", Failure::RowOnly).await;
    app.clock.set(p.end + Duration::hours(24 * 4));
    // The expiry step runs before anything else of the job.
    app.run_job("renewals").await;
    let mut db = app.billing_db().await;
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM subscriptions WHERE status = 'EXPIRED'").await, 0);
    assert_eq!(
        scalar(&mut db, &format!("SELECT count(*) AS n FROM orders WHERE id = '{}' AND status = 'PAID'", p.renewal_order)).await,
        1
    );
    app.run_job("renewals").await;
    assert_reopened_once(&app, &p).await;
}

/// Replayed captures of the renewal payment, at once: one reopening, and
/// each answer names the open period.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replayed_captures_reopen_the_period_once() {
    let app = spawn_app().await;
    let p = past_due_then_refund_fails(&app, "reopen-replay", Failure::RowOnly).await;
    let replays = (0..6).map(|_| {
        let mut b = app.billing.clone();
        let (payment_id, signature) = p.payment.clone();
        let order_id = p.renewal_order.clone();
        async move { b.verify_payment(bpb::VerifyPaymentRequest { order_id, payment_id, signature }).await }
    });
    for r in futures::future::join_all(replays).await {
        let sub = r.unwrap().into_inner().subscription.unwrap();
        assert_eq!((sub.status, ts(&sub.period_start)), (ACTIVE, p.end), "{sub:?}");
    }
    assert_reopened_once(&app, &p).await;
}

/// Locked uses (usage-session starts), at once: one reopening.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn locked_uses_reopen_the_period_once() {
    let app = spawn_app().await;
    let p = past_due_then_refund_fails(&app, "reopen-use", Failure::RowOnly).await;
    let uses = (0..6).map(|_| app.start_usage("reopen-use", bpb::UsageKind::Text));
    for u in futures::future::join_all(uses).await {
        u.unwrap();
    }
    assert_reopened_once(&app, &p).await;
}

/// The refund stays PENDING past the grace period: the subscription
/// EXPIRED, the renewal's period never opened. Then the refund fails: the
/// money is kept for a period that will not be, so it becomes a
/// SUBSCRIPTION_ENDED discrepancy that reconcile reports and `--fix`
/// refunds (once); nothing reopens.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refund_that_fails_after_expiry_leaves_the_renewal_owed_back() {
    let app = spawn_app().await;
    let user = "reopen-expired";
    let (p, refund_id) =
        past_due_with_pending_refund(&app, user, billing_svc::gateway::SandboxRefunds::Unreachable, Code::Unavailable).await;
    app.clock.set(p.end + Duration::hours(24 * 4));
    app.run_job("renewals").await;
    let mut db = app.billing_db().await;
    let expired = format!("SELECT count(*) AS n FROM subscriptions WHERE id = '{}' AND status = 'EXPIRED'", p.sub_id);
    assert_eq!(scalar(&mut db, &expired).await, 1);

    refund_fails(&app, user, &p, &refund_id).await;
    assert_eq!(scalar(&mut db, &expired).await, 1, "an ended subscription does not reopen");
    let owed = format!(
        "SELECT count(*) AS n FROM payment_discrepancies WHERE payment_id = '{}' AND kind = 'SUBSCRIPTION_ENDED' AND status = 'OPEN'",
        p.payment.0
    );
    assert_eq!(scalar(&mut db, &owed).await, 1, "the kept renewal payment is owed back");
    let check = app.billing_admin.clone().run_reconciliation(bpb::RunReconciliationRequest { fix: false }).await.unwrap();
    let f = &check.get_ref().findings;
    assert_eq!((f.len(), f[0].kind.as_str()), (1, "PAYMENT_DISCREPANCY"), "{f:?}");

    app.gateway.set_refunds(billing_svc::gateway::SandboxRefunds::Process);
    let fix = app.billing_admin.clone().run_reconciliation(bpb::RunReconciliationRequest { fix: true }).await.unwrap();
    assert!(fix.get_ref().findings.iter().all(|f| f.fixed), "{:?}", fix.get_ref().findings);
    assert_eq!(app.gateway.refunds_made(&p.payment.0).len(), 1, "refunded once");
    let r = app.billing_admin.clone().run_reconciliation(bpb::RunReconciliationRequest { fix: false }).await.unwrap();
    assert!(r.get_ref().findings.is_empty(), "{:?}", r.get_ref().findings);
    assert_eq!(scalar(&mut db, &expired).await, 1);
    assert_ledger_matches_balances(&mut db).await;
}

/// A full refund of the renewal, PENDING at the gateway when the period
/// ended (PAST_DUE), is processed: the subscription will never be paid
/// for that period, so it ends (CANCELLED at its period end) instead of
/// showing PAST_DUE for the grace period and then EXPIRED.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_processed_refund_of_the_unpaid_renewal_ends_a_past_due_subscription() {
    let app = spawn_app().await;
    let user = "past-due-refunded";
    let (p, refund_id) = past_due_with_pending_refund(&app, user, billing_svc::gateway::SandboxRefunds::Pending, Code::Ok).await;
    let made = app.gateway.refunds_made(&p.payment.0)[0].clone();
    app.gateway.settle_refund(&made.id, billing_svc::gateway::RefundStatus::Processed);
    let body = billing_svc::gateway::Sandbox::refund_event_body(
        billing_svc::gateway::RefundStatus::Processed,
        &made.id,
        &p.payment.0,
        49_900,
        &refund_id,
    );
    let hook =
        bpb::HandleGatewayWebhookRequest { signature: app.gateway.sign_webhook(&body), body, event_id: format!("evt-{user}") };
    assert_eq!(app.billing.clone().handle_gateway_webhook(hook).await.unwrap().into_inner().outcome, "PROCESSED");

    let s = app.subscription(&p.sub_id).await;
    assert_eq!((s.status, s.credits_remaining), (bpb::SubscriptionStatus::Cancelled as i32, 0), "{s:?}");
    assert_eq!(ts(&s.ended_at), p.end, "ended when its last paid period did");
    app.clock.set(p.end + Duration::hours(24 * 4));
    app.run_job("renewals").await;
    app.run_job("rollover").await;
    let s = app.subscription(&p.sub_id).await;
    assert_eq!(s.status, bpb::SubscriptionStatus::Cancelled as i32, "not EXPIRED later: {s:?}");
    let mut db = app.billing_db().await;
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM payment_discrepancies").await, 0);
    let r = app.billing_admin.clone().run_reconciliation(bpb::RunReconciliationRequest { fix: false }).await.unwrap();
    assert!(r.get_ref().findings.is_empty(), "{:?}", r.get_ref().findings);
    assert_ledger_matches_balances(&mut db).await;
}
