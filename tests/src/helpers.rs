//! Small helpers for system tests: typed shortcuts over the RPCs and direct
//! SQL assertions.
use diesel::{QueryableByName, sql_types};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use proto::{billing::v1 as bpb, checkout::v1 as cpb};
use tonic::{Code, Status};

use crate::TestApp;

#[derive(QueryableByName)]
struct N {
    #[diesel(sql_type = sql_types::BigInt)]
    n: i64,
}

/// Runs a `SELECT <bigint> AS n ...` and returns n.
pub async fn scalar(conn: &mut AsyncPgConnection, sql: &str) -> i64 {
    match diesel::sql_query(sql).get_result::<N>(conn).await {
        Ok(r) => r.n,
        Err(e) => panic!("{sql}: {e}"),
    }
}

/// Runs a statement (test set-up: seeding inconsistencies, moving rows).
pub async fn exec(conn: &mut AsyncPgConnection, sql: &str) -> usize {
    match diesel::sql_query(sql).execute(conn).await {
        Ok(n) => n,
        Err(e) => panic!("{sql}: {e}"),
    }
}

pub fn code<T: std::fmt::Debug>(r: Result<T, Status>) -> Code {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(s) => s.code(),
    }
}

impl TestApp {
    pub async fn create_session(&self, user: &str, plan: &str) -> cpb::Session {
        let mut c = self.checkout.clone();
        let r = c
            .create_session(cpb::CreateSessionRequest { user_id: user.into(), plan_id: plan.into(), ..Default::default() })
            .await;
        match r {
            Ok(r) => r.into_inner().session.unwrap_or_default(),
            Err(e) => panic!("CreateSession: {e:?}"),
        }
    }

    /// RenewSession: a plan change of session `id`.
    pub async fn renew(&self, id: &str, plan: &str) -> Result<cpb::RenewSessionResponse, Status> {
        let mut c = self.checkout.clone();
        c.renew_session(cpb::RenewSessionRequest { id: id.into(), plan_id: plan.into(), ..Default::default() })
            .await
            .map(|r| r.into_inner())
    }

    pub async fn get_session(&self, id: &str) -> cpb::Session {
        let mut c = self.checkout.clone();
        match c.get_session(cpb::GetSessionRequest { id: id.into() }).await {
            Ok(r) => r.into_inner().session.unwrap_or_default(),
            Err(e) => panic!("GetSession: {e:?}"),
        }
    }

    /// What the gateway hands the customer after paying `order_id`.
    pub fn pay(&self, order_id: &str) -> (String, String) {
        let payment_id = billing_svc::gateway::Sandbox::new_payment_id();
        let sig = self.gateway.sign_payment(order_id, &payment_id);
        (payment_id, sig)
    }

    /// A signed `payment.captured` webhook for `order`.
    pub fn captured_webhook(
        &self,
        order_id: &str,
        payment_id: &str,
        amount: i64,
        currency: &str,
        event_id: &str,
    ) -> bpb::HandleGatewayWebhookRequest {
        let body = billing_svc::gateway::Sandbox::captured_event_body(order_id, payment_id, amount, currency);
        bpb::HandleGatewayWebhookRequest { signature: self.gateway.sign_webhook(&body), body, event_id: event_id.into() }
    }

    pub async fn complete(&self, id: &str, payment_id: &str, signature: &str) -> Result<cpb::CompleteSessionResponse, Status> {
        let mut c = self.checkout.clone();
        c.complete_session(cpb::CompleteSessionRequest {
            id: id.into(),
            payment_id: payment_id.into(),
            signature: signature.into(),
        })
        .await
        .map(|r| r.into_inner())
    }
}

impl TestApp {
    /// A gateway order for a fresh checkout session id.
    pub async fn order(&self, user: &str, plan: &str) -> bpb::Order {
        let mut b = self.billing.clone();
        let r = b
            .create_order(bpb::CreateOrderRequest {
                checkout_session_id: uuid::Uuid::new_v4().to_string(),
                user_id: user.into(),
                plan_id: plan.into(),
            })
            .await;
        match r {
            Ok(r) => r.into_inner().order.unwrap_or_default(),
            Err(e) => panic!("CreateOrder: {e:?}"),
        }
    }

    /// Buys `plan` for `user` through CreateOrder + VerifyPayment; returns the
    /// subscription.
    pub async fn subscribe(&self, user: &str, plan: &str) -> proto::billing::v1::Subscription {
        let mut b = self.billing.clone();
        let order = b
            .create_order(bpb::CreateOrderRequest {
                checkout_session_id: uuid::Uuid::new_v4().to_string(),
                user_id: user.into(),
                plan_id: plan.into(),
            })
            .await
            .map(|r| r.into_inner().order.unwrap_or_default());
        let order = match order {
            Ok(o) => o,
            Err(e) => panic!("CreateOrder: {e:?}"),
        };
        let (payment_id, signature) = self.pay(&order.id);
        match b.verify_payment(bpb::VerifyPaymentRequest { order_id: order.id, payment_id, signature }).await {
            Ok(r) => r.into_inner().subscription.unwrap_or_default(),
            Err(e) => panic!("VerifyPayment: {e:?}"),
        }
    }

    pub async fn subscription(&self, id: &str) -> bpb::Subscription {
        let mut b = self.billing.clone();
        match b.get_subscription(bpb::GetSubscriptionRequest { id: id.into() }).await {
            Ok(r) => r.into_inner().subscription.unwrap_or_default(),
            Err(e) => panic!("GetSubscription: {e:?}"),
        }
    }

    /// RunReconciliation with the admin token: the findings, after repairs
    /// when `fix`.
    pub async fn reconcile(&self, fix: bool) -> Vec<bpb::Finding> {
        match self.billing_admin.clone().run_reconciliation(bpb::RunReconciliationRequest { fix }).await {
            Ok(r) => r.into_inner().findings,
            Err(e) => panic!("RunReconciliation: {e:?}"),
        }
    }

    /// Runs billing job `name` once, through the test-side App.
    pub async fn run_job(&self, name: &str) -> String {
        match billing_svc::jobs::run_once(&self.billing_app, name).await {
            Ok(s) => s,
            Err(e) => panic!("job {name}: {e:#}"),
        }
    }

    /// Pays the open renewal order of subscription `id` through
    /// VerifyPayment (the renewal job must have created it: the clock within
    /// RENEWAL_LEAD_HOURS of period_end). Returns the order id.
    pub async fn pay_renewal(&self, id: &str) -> Result<bpb::VerifyPaymentResponse, Status> {
        let order_id = self.subscription(id).await.renewal_order_id;
        assert!(!order_id.is_empty(), "subscription {id} has no open renewal order");
        let (payment_id, signature) = self.pay(&order_id);
        let mut b = self.billing.clone();
        b.verify_payment(bpb::VerifyPaymentRequest { order_id, payment_id, signature }).await.map(|r| r.into_inner())
    }

    pub async fn start_usage(&self, user: &str, kind: bpb::UsageKind) -> Result<bpb::UsageSession, Status> {
        let mut b = self.billing.clone();
        b.start_usage_session(bpb::StartUsageSessionRequest { user_id: user.into(), kind: kind as i32, ..Default::default() })
            .await
            .map(|r| r.into_inner().session.unwrap_or_default())
    }

    pub async fn end_usage(&self, id: &str, manual: i64) -> Result<bpb::EndUsageSessionResponse, Status> {
        let mut b = self.billing.clone();
        b.end_usage_session(bpb::EndUsageSessionRequest { id: id.into(), manual_deductions: manual })
            .await
            .map(|r| r.into_inner())
    }

    pub async fn usage_session(&self, id: &str) -> bpb::UsageSession {
        let mut b = self.billing.clone();
        match b.get_usage_session(bpb::GetUsageSessionRequest { id: id.into() }).await {
            Ok(r) => r.into_inner().session.unwrap_or_default(),
            Err(e) => panic!("GetUsageSession: {e:?}"),
        }
    }
}

/// Asserts docs/design.md, Invariants 10, on every subscription: the ledger
/// of the current period explains the balance, and no balance is negative.
pub async fn assert_ledger_matches_balances(conn: &mut AsyncPgConnection) {
    let bad = scalar(
        conn,
        "SELECT count(*) AS n FROM subscriptions s LEFT JOIN ( \
           SELECT subscription_id, period_start, sum(credits) AS total FROM ledger GROUP BY 1, 2) l \
           ON l.subscription_id = s.id AND l.period_start = s.period_start \
         WHERE coalesce(l.total, 0) <> s.credits_granted - s.credits_remaining OR s.credits_remaining < 0",
    )
    .await;
    assert_eq!(bad, 0, "subscriptions whose ledger does not match the balance");
}

/// Retries a call on UNAVAILABLE / ABORTED, as a well-behaved client does
/// (bounded: 50 attempts, 20 ms apart). For set-up and storms whose subject
/// is not the retryable error itself.
pub async fn retrying<T, F, Fut>(mut call: F) -> Result<T, Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Status>>,
{
    let mut attempt = 0;
    loop {
        match call().await {
            Err(s) if matches!(s.code(), Code::Unavailable | Code::Aborted) && attempt < 50 => {
                attempt += 1;
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            other => return other,
        }
    }
}

/// Backends of this test's database waiting for a lock right now.
pub async fn lock_waiters(observer: &mut AsyncPgConnection) -> i64 {
    scalar(
        observer,
        "SELECT count(*) AS n FROM pg_stat_activity \
          WHERE datname = current_database() AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()",
    )
    .await
}

/// Polls until at least `n` backends wait for a lock; false when they did
/// not within `within` (the caller then knows its race did not happen).
pub async fn wait_for_waiters(observer: &mut AsyncPgConnection, n: i64, within: std::time::Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if lock_waiters(observer).await >= n {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(3)).await;
    }
}

impl TestApp {
    /// Adds a paid monthly plan through billing's catalogue, as an operator
    /// would (600 s intervals, unlimited sessions and minutes, 1 GiB
    /// uploads).
    pub async fn create_plan(&self, id: &str, name: &str, price_minor: i64, credits_per_period: i64) -> bpb::CatalogPlan {
        let r = self.catalog.clone().create_plan(new_plan(id, name, price_minor, credits_per_period)).await;
        match r {
            Ok(r) => r.into_inner().plan.unwrap_or_default(),
            Err(e) => panic!("CreatePlan {id}: {e:?}"),
        }
    }
}

/// A limit of `max`, or unlimited.
pub fn limit(max: Option<i64>) -> bpb::LimitValue {
    use bpb::limit_value::Value;
    bpb::LimitValue { value: Some(max.map_or(Value::Unlimited(true), Value::Max)) }
}

/// CreatePlan of a paid monthly plan (600 s intervals, unlimited sessions
/// and minutes, 1 GiB uploads) with a new request_id.
pub fn new_plan(id: &str, name: &str, price_minor: i64, credits_per_period: i64) -> bpb::CreatePlanRequest {
    bpb::CreatePlanRequest {
        request_id: uuid::Uuid::new_v4().to_string(),
        validate_only: false,
        plan_id: id.into(),
        name: name.into(),
        price_minor,
        currency: "INR".into(),
        period: bpb::PlanPeriod::Monthly as i32,
        credits_per_period,
        deduction_interval_seconds: 600,
        limits: Some(bpb::PlanLimitsInput {
            sessions_per_period: Some(limit(None)),
            minutes_per_period: Some(limit(None)),
            upload_bytes: Some(limit(Some(1 << 30))),
        }),
        trial_days: 0,
    }
}
