//! gRPC handlers: validate and translate proto ↔ domain, nothing else.
//! The trait impl only delegates to one module per concept. Effects run in
//! a spawned task so a cancelled RPC cannot stop a transaction halfway
//! (docs/design.md, Idempotency).
mod admin;
mod catalogue;
mod convert;
mod events;
mod orders;
mod params;
mod payments;
mod plan_changes;
mod plans;
mod requests;
mod subscriptions;
mod usage;

use std::future::Future;

use proto::billing::v1::{self as pb, billing_service_server::BillingService};
use tonic::{Request, Response, Status};

use crate::App;
pub use catalogue::PlanCatalogGrpc;
pub use events::{BillingEventGrpc, Event, hub as event_hub};

pub struct BillingGrpc {
    app: App,
}

impl BillingGrpc {
    pub fn new(app: App) -> Self {
        Self { app }
    }
}

type RpcResult<T> = Result<Response<T>, Status>;

/// Effects run on their own task; see [`shared::server::run_effect`].
async fn run<T: Send + 'static>(f: impl Future<Output = crate::Result<T>> + Send + 'static) -> Result<T, Status> {
    shared::server::run_effect(f).await
}

#[tonic::async_trait]
impl BillingService for BillingGrpc {
    async fn list_plans(&self, req: Request<pb::ListPlansRequest>) -> RpcResult<pb::ListPlansResponse> {
        plans::list_plans(&self.app, req).await
    }

    async fn get_plan(&self, req: Request<pb::GetPlanRequest>) -> RpcResult<pb::GetPlanResponse> {
        plans::get_plan(&self.app, req).await
    }

    async fn create_order(&self, req: Request<pb::CreateOrderRequest>) -> RpcResult<pb::CreateOrderResponse> {
        orders::create_order(&self.app, req).await
    }

    async fn batch_get_orders(&self, req: Request<pb::BatchGetOrdersRequest>) -> RpcResult<pb::BatchGetOrdersResponse> {
        orders::batch_get_orders(&self.app, req).await
    }

    async fn cancel_orders(&self, req: Request<pb::CancelOrdersRequest>) -> RpcResult<pb::CancelOrdersResponse> {
        orders::cancel_orders(&self.app, req).await
    }

    async fn verify_payment(&self, req: Request<pb::VerifyPaymentRequest>) -> RpcResult<pb::VerifyPaymentResponse> {
        payments::verify_payment(&self.app, req).await
    }

    async fn handle_gateway_webhook(
        &self,
        req: Request<pb::HandleGatewayWebhookRequest>,
    ) -> RpcResult<pb::HandleGatewayWebhookResponse> {
        payments::handle_gateway_webhook(&self.app, req).await
    }

    async fn get_subscription(&self, req: Request<pb::GetSubscriptionRequest>) -> RpcResult<pb::GetSubscriptionResponse> {
        subscriptions::get_subscription(&self.app, req).await
    }

    async fn list_subscriptions(&self, req: Request<pb::ListSubscriptionsRequest>) -> RpcResult<pb::ListSubscriptionsResponse> {
        subscriptions::list_subscriptions(&self.app, req).await
    }

    async fn cancel_subscription(
        &self,
        req: Request<pb::CancelSubscriptionRequest>,
    ) -> RpcResult<pb::CancelSubscriptionResponse> {
        subscriptions::cancel_subscription(&self.app, req).await
    }

    async fn start_trial(&self, req: Request<pb::StartTrialRequest>) -> RpcResult<pb::StartTrialResponse> {
        subscriptions::start_trial(&self.app, req).await
    }

    async fn change_subscription_plan(
        &self,
        req: Request<pb::ChangeSubscriptionPlanRequest>,
    ) -> RpcResult<pb::ChangeSubscriptionPlanResponse> {
        plan_changes::change_subscription_plan(&self.app, req).await
    }

    async fn cancel_plan_change(&self, req: Request<pb::CancelPlanChangeRequest>) -> RpcResult<pb::CancelPlanChangeResponse> {
        plan_changes::cancel_plan_change(&self.app, req).await
    }

    async fn refund_payment(&self, req: Request<pb::RefundPaymentRequest>) -> RpcResult<pb::RefundPaymentResponse> {
        payments::refund_payment(&self.app, req).await
    }

    async fn get_order(&self, req: Request<pb::GetOrderRequest>) -> RpcResult<pb::GetOrderResponse> {
        orders::get_order(&self.app, req).await
    }

    async fn list_orders(&self, req: Request<pb::ListOrdersRequest>) -> RpcResult<pb::ListOrdersResponse> {
        orders::list_orders(&self.app, req).await
    }

    async fn get_usage(&self, req: Request<pb::GetUsageRequest>) -> RpcResult<pb::GetUsageResponse> {
        usage::get_usage(&self.app, req).await
    }

    async fn start_usage_session(&self, req: Request<pb::StartUsageSessionRequest>) -> RpcResult<pb::StartUsageSessionResponse> {
        usage::start_usage_session(&self.app, req).await
    }

    async fn authorize_upload(&self, req: Request<pb::AuthorizeUploadRequest>) -> RpcResult<pb::AuthorizeUploadResponse> {
        usage::authorize_upload(&self.app, req).await
    }

    async fn deduct(&self, req: Request<pb::DeductRequest>) -> RpcResult<pb::DeductResponse> {
        usage::deduct(&self.app, req).await
    }

    async fn end_usage_session(&self, req: Request<pb::EndUsageSessionRequest>) -> RpcResult<pb::EndUsageSessionResponse> {
        usage::end_usage_session(&self.app, req).await
    }

    async fn get_usage_session(&self, req: Request<pb::GetUsageSessionRequest>) -> RpcResult<pb::GetUsageSessionResponse> {
        usage::get_usage_session(&self.app, req).await
    }

    async fn run_reconciliation(&self, req: Request<pb::RunReconciliationRequest>) -> RpcResult<pb::RunReconciliationResponse> {
        admin::run_reconciliation(&self.app, req).await
    }

    async fn list_findings(&self, req: Request<pb::ListFindingsRequest>) -> RpcResult<pb::ListFindingsResponse> {
        admin::list_findings(&self.app, req).await
    }

    async fn get_usage_stats(&self, req: Request<pb::GetUsageStatsRequest>) -> RpcResult<pb::GetUsageStatsResponse> {
        admin::get_usage_stats(&self.app, req).await
    }
}
