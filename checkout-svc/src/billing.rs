//! checkout's client of billing-svc: every call carries a deadline from the
//! caller's remaining budget, the trace context and checkout's service token;
//! idempotent calls retry on UNAVAILABLE / ABORTED, bounded, with jitter.
use std::sync::{Arc, RwLock};
use std::time::Duration;

use proto::billing::v1::{self as pb, billing_service_client::BillingServiceClient};
use shared::client::{Budget, retry};
use tonic::transport::{Channel, Endpoint};
use uuid::Uuid;

use crate::{Error, Result};

const ATTEMPTS: u32 = 3;

#[derive(Clone, Debug)]
pub struct Billing {
    client: BillingServiceClient<Channel>,
    /// Redacted in `Debug` (it is a bearer token).
    token: shared::config::Secret,
    /// The gateway account billing named in its latest CreateOrder answer:
    /// what a start answered without asking billing (a repeat) hands to the
    /// payment widget. Billing's gateway is one setting of its deployment,
    /// so the latest answer stands for every order.
    account: Arc<RwLock<Option<GatewayAccount>>>,
}

/// The gateway billing takes payments through, as CreateOrder names it:
/// public values for the frontend's checkout widget (never a secret).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayAccount {
    /// "razorpay" or "sandbox".
    pub gateway: String,
    /// The gateway's public key id.
    pub key_id: String,
}

/// CreateOrder's answer: the session's order and, when billing named both
/// its gateway and key id (a billing from before the gateway's name was
/// answered names no gateway), the account the order is paid through.
#[derive(Clone, Debug)]
pub struct OrderAnswer {
    pub order: pb::Order,
    pub account: Option<GatewayAccount>,
}

impl Billing {
    /// Connects lazily: checkout starts (and answers UNAVAILABLE for calls
    /// that need billing) even while billing is down.
    ///
    /// A stalled billing must not leave calls piling up on one dead HTTP/2
    /// connection: unanswered keep-alive pings close it within seconds (the
    /// calls on it fail as UNAVAILABLE and are retried on a new one), each
    /// call is bounded by its budget in [`retry`], and a connection billing
    /// resets (GOAWAY) is replaced on the next call.
    pub fn new(endpoint: &str, token: &str) -> anyhow::Result<Self> {
        let channel = Endpoint::from_shared(endpoint.to_owned())
            .map_err(|e| anyhow::anyhow!("invalid BILLING_ENDPOINT {endpoint:?}: {e}"))?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .connect_lazy();
        Ok(Self { client: BillingServiceClient::new(channel), token: token.into(), account: Arc::default() })
    }

    /// Idempotent per checkout session id, so retries are safe.
    #[tracing::instrument(name = "billing.v1.BillingService/CreateOrder", skip_all, fields(otel.kind = "client", rpc.system = "grpc"))]
    pub async fn create_order(&self, budget: Budget, session_id: Uuid, user_id: &str, plan_id: &str) -> Result<OrderAnswer> {
        let resp = retry(budget, ATTEMPTS, || {
            let mut c = self.client.clone();
            let req = budget.request(
                pb::CreateOrderRequest {
                    checkout_session_id: session_id.to_string(),
                    user_id: user_id.to_owned(),
                    plan_id: plan_id.to_owned(),
                },
                self.token.expose(),
            );
            async move { c.create_order(req).await }
        })
        .await
        .map_err(Error::from_billing)?;
        let resp = resp.into_inner();
        let order = resp.order.ok_or_else(|| Error::internal("billing returned no order"))?;
        let account = (!resp.gateway.is_empty() && !resp.gateway_key_id.is_empty())
            .then_some(GatewayAccount { gateway: resp.gateway, key_id: resp.gateway_key_id });
        if let Some(a) = &account {
            // A poisoned lock only means a writer panicked mid-assignment of
            // an Option: the value is still whole.
            *self.account.write().unwrap_or_else(|e| e.into_inner()) = Some(a.clone());
        }
        Ok(OrderAnswer { order, account })
    }

    /// The gateway account of billing's latest CreateOrder answer to this
    /// process; None before the first one.
    pub fn last_account(&self) -> Option<GatewayAccount> {
        self.account.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Idempotent per order (a repeat returns the same subscription).
    #[tracing::instrument(name = "billing.v1.BillingService/VerifyPayment", skip_all, fields(otel.kind = "client", rpc.system = "grpc"))]
    pub async fn verify_payment(
        &self,
        budget: Budget,
        order_id: &str,
        payment_id: &str,
        signature: &str,
    ) -> Result<pb::VerifyPaymentResponse> {
        let resp = retry(budget, ATTEMPTS, || {
            let mut c = self.client.clone();
            let req = budget.request(
                pb::VerifyPaymentRequest {
                    order_id: order_id.to_owned(),
                    payment_id: payment_id.to_owned(),
                    signature: signature.to_owned(),
                },
                self.token.expose(),
            );
            async move { c.verify_payment(req).await }
        })
        .await
        .map_err(Error::from_billing)?;
        Ok(resp.into_inner())
    }

    /// Read-only, so retries are safe.
    #[tracing::instrument(name = "billing.v1.BillingService/BatchGetOrders", skip_all, fields(otel.kind = "client", rpc.system = "grpc"))]
    pub async fn batch_get_orders(&self, budget: Budget, order_ids: &[String]) -> Result<Vec<pb::Order>> {
        let resp = retry(budget, ATTEMPTS, || {
            let mut c = self.client.clone();
            let req = budget.request(
                pb::BatchGetOrdersRequest { order_ids: order_ids.to_vec(), checkout_session_ids: vec![], ..Default::default() },
                self.token.expose(),
            );
            async move { c.batch_get_orders(req).await }
        })
        .await
        .map_err(Error::from_billing)?;
        Ok(resp.into_inner().orders)
    }

    /// The orders billing made for these checkout sessions (read-only).
    #[tracing::instrument(name = "billing.v1.BillingService/BatchGetOrders", skip_all, fields(otel.kind = "client", rpc.system = "grpc"))]
    pub async fn orders_of_sessions(&self, budget: Budget, session_ids: &[Uuid]) -> Result<Vec<pb::Order>> {
        let ids: Vec<String> = session_ids.iter().map(Uuid::to_string).collect();
        let resp = retry(budget, ATTEMPTS, || {
            let mut c = self.client.clone();
            let req = budget.request(
                pb::BatchGetOrdersRequest { order_ids: vec![], checkout_session_ids: ids.clone(), ..Default::default() },
                self.token.expose(),
            );
            async move { c.batch_get_orders(req).await }
        })
        .await
        .map_err(Error::from_billing)?;
        Ok(resp.into_inner().orders)
    }

    /// Idempotent (a cancelled order stays cancelled), so retries are safe.
    #[tracing::instrument(name = "billing.v1.BillingService/CancelOrders", skip_all, fields(otel.kind = "client"))]
    pub async fn cancel_orders(&self, budget: Budget, order_ids: &[String]) -> Result<Vec<pb::Order>> {
        let resp = retry(budget, ATTEMPTS, || {
            let mut c = self.client.clone();
            let req = budget
                .request(pb::CancelOrdersRequest { order_ids: order_ids.to_vec(), ..Default::default() }, self.token.expose());
            async move { c.cancel_orders(req).await }
        })
        .await
        .map_err(Error::from_billing)?;
        Ok(resp.into_inner().orders)
    }
}
