//! The purchase flow an internal service runs against checkout-svc and
//! billing-svc, with nothing but the generated clients (`proto`) on tonic:
//! start a checkout session, have the customer pay through the gateway's
//! widget, complete the session, read the subscription it bought, and spend
//! a credit of it. docs/integration.md explains each step; this crate is
//! the same steps as code, built and tested with the workspace; and
//! [`Follower`], a consumer of billing's event stream.
//!
//! Retries follow the API's rules: every call that changes something carries
//! an id the caller picked (`request_id`, `deduction_id`, or the session and
//! payment ids), and a call whose outcome is unknown (DEADLINE_EXCEEDED,
//! UNAVAILABLE, ABORTED) is sent again with the same ids.
use std::{future::Future, time::Duration};

mod events;
pub use events::Follower;

use proto::{
    billing::v1::{self as bpb, billing_service_client::BillingServiceClient},
    checkout::v1::{self as cpb, checkout_service_client::CheckoutServiceClient},
};
use tonic::{
    Code, Request, Status,
    metadata::{Ascii, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Channel, Endpoint},
};
use uuid::Uuid;

/// Where the two services are and the bearer token each one takes.
#[derive(Clone, Debug)]
pub struct Endpoints {
    /// checkout-svc's gRPC address, `host:port` or a URL.
    pub checkout_addr: String,
    /// billing-svc's gRPC address, `host:port` or a URL.
    pub billing_addr: String,
    /// A token of `CHECKOUT_AUTH_TOKENS`.
    pub checkout_token: String,
    /// A token of `BILLING_AUTH_TOKENS`.
    pub billing_token: String,
}

/// What the gateway's checkout widget hands back to the customer's browser
/// once they paid, and the frontend passes on to CompleteSession.
#[derive(Clone, Debug)]
pub struct Paid {
    /// The gateway's payment id (Razorpay: `razorpay_payment_id`).
    pub payment_id: String,
    /// Hex HMAC-SHA256 of "order_id|payment_id" (`razorpay_signature`).
    pub signature: String,
}

/// The ids a purchase leaves behind, the ones an integrator keeps.
#[derive(Clone, Debug)]
pub struct Purchase {
    /// The checkout session, COMPLETED.
    pub session_id: String,
    /// The order the customer paid (the gateway's order id).
    pub order_id: String,
    /// The subscription the payment bought.
    pub subscription_id: String,
    /// The subscription as read after the purchase.
    pub subscription: bpb::Subscription,
    /// The usage session the credit was spent in.
    pub usage_session_id: String,
    /// Credits the one deduction charged (1, or 0 when none were left).
    pub units_charged: i64,
}

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone, Debug)]
pub struct Bearer(MetadataValue<Ascii>);

impl Interceptor for Bearer {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

/// checkout's generated client with the bearer token.
pub type Checkout = CheckoutServiceClient<InterceptedService<Channel, Bearer>>;
/// billing's generated client with the bearer token.
pub type Billing = BillingServiceClient<InterceptedService<Channel, Bearer>>;

fn channel(addr: &str) -> Result<Channel, Status> {
    let url = if addr.contains("://") { addr.to_owned() } else { format!("http://{addr}") };
    let endpoint = Endpoint::from_shared(url).map_err(|e| Status::invalid_argument(format!("address {addr:?}: {e}")))?;
    // Lazy: the first call connects; a deadline per call bounds every wait.
    Ok(endpoint.connect_timeout(Duration::from_secs(2)).timeout(Duration::from_secs(10)).connect_lazy())
}

/// A channel for streams: no per-call timeout (a watch lives for minutes).
fn channel_without_timeout(addr: &str) -> Result<Channel, Status> {
    let url = if addr.contains("://") { addr.to_owned() } else { format!("http://{addr}") };
    let endpoint = Endpoint::from_shared(url).map_err(|e| Status::invalid_argument(format!("address {addr:?}: {e}")))?;
    Ok(endpoint.connect_timeout(Duration::from_secs(2)).connect_lazy())
}

fn bearer(token: &str) -> Result<Bearer, Status> {
    format!("Bearer {token}").parse().map(Bearer).map_err(|_| Status::invalid_argument("token: not printable ASCII"))
}

impl Endpoints {
    /// The two clients (connecting on first use).
    pub fn clients(&self) -> Result<(Checkout, Billing), Status> {
        Ok((
            CheckoutServiceClient::with_interceptor(channel(&self.checkout_addr)?, bearer(&self.checkout_token)?),
            BillingServiceClient::with_interceptor(channel(&self.billing_addr)?, bearer(&self.billing_token)?),
        ))
    }
}

/// Whether a failed call may have had no effect or an unknown one, so the
/// same request (same ids) is worth sending again: DEADLINE_EXCEEDED and
/// CANCELLED (outcome unknown), UNAVAILABLE and ABORTED (they carry
/// RetryInfo). Everything else is an answer: branch on its ErrorInfo reason.
pub fn worth_retrying(s: &Status) -> bool {
    matches!(s.code(), Code::DeadlineExceeded | Code::Cancelled | Code::Unavailable | Code::Aborted)
}

/// Sends `call` up to 5 times while [`worth_retrying`], backing off
/// 100 ms, 200 ms, ... `call` must rebuild the same request each time (the
/// same ids): that is what makes the retry safe.
pub async fn with_retries<T, F, Fut>(mut call: F) -> Result<T, Status>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    let mut wait = Duration::from_millis(100);
    let mut attempt = 1;
    loop {
        match call().await {
            Err(s) if worth_retrying(&s) && attempt < 5 => {
                tokio::time::sleep(wait).await;
                wait *= 2;
                attempt += 1;
            }
            out => return out,
        }
    }
}

fn missing(what: &str) -> Status {
    Status::internal(format!("the answer has no {what}"))
}

/// Buys `plan_id` for `user_id` and spends one credit of it:
///
/// 1. CreateSession with a new `request_id` (the same on each retry);
/// 2. `pay` gets the answer's [`cpb::PaymentWidget`] (what the frontend
///    opens the gateway's checkout with) and returns what the gateway handed
///    the customer: in production the frontend does this step;
/// 3. CompleteSession with the session id, payment id and signature
///    (idempotent: a repeat answers `replayed = true`);
/// 4. GetSubscription of the completed session's `subscription_id`;
/// 5. StartUsageSession with its own `request_id`, Deduct one unit with a
///    `deduction_id` the caller picks per unit, EndUsageSession.
pub async fn purchase(
    endpoints: &Endpoints,
    user_id: &str,
    plan_id: &str,
    pay: impl FnOnce(&cpb::PaymentWidget) -> Result<Paid, Status>,
) -> Result<Purchase, Status> {
    let (checkout, billing) = endpoints.clients()?;

    let start =
        cpb::CreateSessionRequest { user_id: user_id.into(), plan_id: plan_id.into(), request_id: Uuid::new_v4().to_string() };
    let started = with_retries(|| {
        let (mut c, req) = (checkout.clone(), start.clone());
        async move { c.create_session(req).await }
    })
    .await?
    .into_inner();
    let session = started.session.ok_or_else(|| missing("session"))?;
    let widget = started.payment_widget.ok_or_else(|| missing("payment widget"))?;

    let paid = pay(&widget)?;

    let complete = cpb::CompleteSessionRequest { id: session.id.clone(), payment_id: paid.payment_id, signature: paid.signature };
    let completed = with_retries(|| {
        let (mut c, req) = (checkout.clone(), complete.clone());
        async move { c.complete_session(req).await }
    })
    .await?
    .into_inner()
    .session
    .ok_or_else(|| missing("session"))?;

    let get = bpb::GetSubscriptionRequest { id: completed.subscription_id.clone() };
    let subscription = with_retries(|| {
        let (mut b, req) = (billing.clone(), get.clone());
        async move { b.get_subscription(req).await }
    })
    .await?
    .into_inner()
    .subscription
    .ok_or_else(|| missing("subscription"))?;

    let usage = bpb::StartUsageSessionRequest {
        user_id: user_id.into(),
        kind: bpb::UsageKind::Call as i32,
        request_id: Uuid::new_v4().to_string(),
    };
    let usage_session = with_retries(|| {
        let (mut b, req) = (billing.clone(), usage.clone());
        async move { b.start_usage_session(req).await }
    })
    .await?
    .into_inner()
    .session
    .ok_or_else(|| missing("usage session"))?;

    let deduct = bpb::DeductRequest { usage_session_id: usage_session.id.clone(), deduction_id: "unit-1".into(), units: 1 };
    let deducted = with_retries(|| {
        let (mut b, req) = (billing.clone(), deduct.clone());
        async move { b.deduct(req).await }
    })
    .await?
    .into_inner();

    // The call is over: end the usage session (idempotent; left ACTIVE,
    // billing's auto-deduction would go on charging its elapsed time).
    let end = bpb::EndUsageSessionRequest { id: usage_session.id.clone(), manual_deductions: 0 };
    with_retries(|| {
        let (mut b, req) = (billing.clone(), end.clone());
        async move { b.end_usage_session(req).await }
    })
    .await?;

    Ok(Purchase {
        session_id: completed.id,
        order_id: widget.gateway_order_id,
        subscription_id: subscription.id.clone(),
        subscription,
        usage_session_id: usage_session.id,
        units_charged: deducted.units_charged,
    })
}
