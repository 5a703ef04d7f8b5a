//! gRPC clients that present a bearer token (and optional metadata).
use proto::{
    billing::v1::{
        billing_event_service_client::BillingEventServiceClient, billing_service_client::BillingServiceClient,
        plan_catalog_service_client::PlanCatalogServiceClient,
    },
    checkout::v1::{checkout_event_service_client::CheckoutEventServiceClient, checkout_service_client::CheckoutServiceClient},
};
use tonic::{
    Request, Status,
    metadata::MetadataValue,
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Channel, Endpoint},
};

/// Adds `authorization: Bearer <token>` to every call (no header when empty).
#[derive(Clone, Debug)]
pub struct Bearer(Option<MetadataValue<tonic::metadata::Ascii>>);

impl Bearer {
    pub fn new(token: &str) -> Self {
        Self(if token.is_empty() { None } else { format!("Bearer {token}").parse().ok() })
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

pub type CheckoutClient = CheckoutServiceClient<InterceptedService<Channel, Bearer>>;
pub type BillingClient = BillingServiceClient<InterceptedService<Channel, Bearer>>;

/// billing's plan catalogue (admin RPCs).
pub type CatalogClient = PlanCatalogServiceClient<InterceptedService<Channel, Bearer>>;

pub type BillingEventsClient = BillingEventServiceClient<InterceptedService<Channel, Bearer>>;
pub type CheckoutEventsClient = CheckoutEventServiceClient<InterceptedService<Channel, Bearer>>;

pub fn billing_events_client(addr: &str, token: &str) -> anyhow::Result<BillingEventsClient> {
    Ok(BillingEventServiceClient::with_interceptor(channel(addr)?, Bearer::new(token)))
}

pub fn checkout_events_client(addr: &str, token: &str) -> anyhow::Result<CheckoutEventsClient> {
    Ok(CheckoutEventServiceClient::with_interceptor(channel(addr)?, Bearer::new(token)))
}

pub fn channel(addr: &str) -> anyhow::Result<Channel> {
    let url = if addr.starts_with("http") { addr.to_owned() } else { format!("http://{addr}") };
    Ok(Endpoint::from_shared(url)?.tcp_nodelay(true).connect_lazy())
}

pub fn checkout_client(addr: &str, token: &str) -> anyhow::Result<CheckoutClient> {
    Ok(CheckoutServiceClient::with_interceptor(channel(addr)?, Bearer::new(token)))
}

pub fn catalog_client(addr: &str, token: &str) -> anyhow::Result<CatalogClient> {
    Ok(PlanCatalogServiceClient::with_interceptor(channel(addr)?, Bearer::new(token)))
}

pub fn billing_client(addr: &str, token: &str) -> anyhow::Result<BillingClient> {
    Ok(BillingServiceClient::with_interceptor(channel(addr)?, Bearer::new(token)))
}

/// A request with an `idempotency-key`.
pub fn with_key<T>(msg: T, key: &str) -> Request<T> {
    let mut r = Request::new(msg);
    if let Ok(v) = key.parse() {
        r.metadata_mut().insert("idempotency-key", v);
    }
    r
}
