//! gRPC handlers: validate and translate proto ↔ domain, nothing else.
//! Effects run in a spawned task so a cancelled RPC cannot stop a
//! transaction halfway (docs/design.md, Idempotency).
mod convert;
mod params;
mod usage;

use std::future::Future;

use chrono::Duration;
use proto::billing::v1::{self as pb, billing_service_server::BillingService};
use shared::{
    auth::require_admin,
    status::{MAX_ID_LEN, Violations, check_count},
};
use tonic::{Request, Response, Status};
use tracing::instrument;
use uuid::Uuid;

use params::{
    day, order_page_token, order_status, page_after, page_size, parse_order_page_token, parse_stats_page_token,
    parse_subscription_page_token, stats_page_token, subscription_page_token,
};

use crate::{App, orders, payments, plans, reconcile, refunds, stats, subscriptions, webhooks};

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
    #[instrument(skip_all)]
    async fn list_plans(&self, _req: Request<pb::ListPlansRequest>) -> RpcResult<pb::ListPlansResponse> {
        let app = self.app.clone();
        let plans = run(async move { plans::list(&mut *app.conn().await?).await }).await?;
        Ok(Response::new(pb::ListPlansResponse { plans: plans.iter().map(convert::plan).collect() }))
    }

    #[instrument(skip_all, fields(plan_id = %req.get_ref().id))]
    async fn get_plan(&self, req: Request<pb::GetPlanRequest>) -> RpcResult<pb::GetPlanResponse> {
        let r = req.into_inner();
        let mut v = Violations::new();
        v.text("id", &r.id, MAX_ID_LEN);
        v.finish()?;
        let app = self.app.clone();
        let plan = run(async move { plans::get(&mut *app.conn().await?, &r.id).await }).await?;
        Ok(Response::new(pb::GetPlanResponse { plan: Some(convert::plan(&plan)) }))
    }

    #[instrument(skip_all, fields(checkout_session_id = %req.get_ref().checkout_session_id))]
    async fn create_order(&self, req: Request<pb::CreateOrderRequest>) -> RpcResult<pb::CreateOrderResponse> {
        let r = req.into_inner();
        let mut v = Violations::new();
        let session_id = v.uuid("checkout_session_id", &r.checkout_session_id);
        v.text("user_id", &r.user_id, MAX_ID_LEN);
        v.text("plan_id", &r.plan_id, MAX_ID_LEN);
        v.finish()?;
        let app = self.app.clone();
        let order = run(async move {
            let _pass = app.gate.enter(&format!("checkout_session:{session_id}")).await?;
            orders::create(&app, session_id, &r.user_id, &r.plan_id).await
        })
        .await?;
        Ok(Response::new(pb::CreateOrderResponse {
            order: Some(convert::order(&orders::OrderView::new(order, None))),
            gateway_key_id: self.app.gateway.key_id().to_owned(),
        }))
    }

    #[instrument(skip_all, fields(orders = req.get_ref().order_ids.len(), sessions = req.get_ref().checkout_session_ids.len()))]
    async fn batch_get_orders(&self, req: Request<pb::BatchGetOrdersRequest>) -> RpcResult<pb::BatchGetOrdersResponse> {
        let r = req.into_inner();
        let mut v = Violations::new();
        // The count first: a huge list is refused without walking it.
        check_count("order_ids", r.order_ids.len() + r.checkout_session_ids.len(), orders::MAX_BATCH)?;
        for id in &r.order_ids {
            v.text("order_ids", id, MAX_ID_LEN);
        }
        let session_ids: Vec<Uuid> = r.checkout_session_ids.iter().map(|s| v.uuid("checkout_session_ids", s)).collect();
        v.finish()?;
        let app = self.app.clone();
        let views = run(async move { orders::batch_get(&mut *app.conn().await?, &r.order_ids, &session_ids).await }).await?;
        Ok(Response::new(pb::BatchGetOrdersResponse { orders: views.iter().map(convert::order).collect() }))
    }

    #[instrument(skip_all, fields(orders = req.get_ref().order_ids.len()))]
    async fn cancel_orders(&self, req: Request<pb::CancelOrdersRequest>) -> RpcResult<pb::CancelOrdersResponse> {
        let r = req.into_inner();
        let mut v = Violations::new();
        check_count("order_ids", r.order_ids.len(), orders::MAX_BATCH)?;
        for id in &r.order_ids {
            v.text("order_ids", id, MAX_ID_LEN);
        }
        v.finish()?;
        let app = self.app.clone();
        let views =
            run(async move { orders::cancel_unpaid(&mut *app.conn().await?, &r.order_ids, app.clock.now()).await }).await?;
        Ok(Response::new(pb::CancelOrdersResponse { orders: views.iter().map(convert::order).collect() }))
    }

    #[instrument(skip_all, fields(order_id = %req.get_ref().order_id))]
    async fn verify_payment(&self, req: Request<pb::VerifyPaymentRequest>) -> RpcResult<pb::VerifyPaymentResponse> {
        let r = req.into_inner();
        let mut v = Violations::new();
        v.text("order_id", &r.order_id, MAX_ID_LEN);
        v.text("payment_id", &r.payment_id, MAX_ID_LEN);
        v.text("signature", &r.signature, 256);
        v.finish()?;
        let app = self.app.clone();
        let c = run(async move {
            let _pass = app.gate.enter(&format!("order:{}", r.order_id)).await?;
            payments::verify(&app, &r.order_id, &r.payment_id, &r.signature).await
        })
        .await?;
        let view = orders::OrderView::new(c.order, Some(c.subscription.id));
        Ok(Response::new(pb::VerifyPaymentResponse {
            order: Some(convert::order(&view)),
            subscription: Some(convert::subscription(&c.subscription)),
            replayed: c.replayed,
        }))
    }

    #[instrument(skip_all, fields(event_id = %req.get_ref().event_id, bytes = req.get_ref().body.len()))]
    #[allow(deprecated)] // `outcome` stays filled for callers that read it
    async fn handle_gateway_webhook(
        &self,
        req: Request<pb::HandleGatewayWebhookRequest>,
    ) -> RpcResult<pb::HandleGatewayWebhookResponse> {
        let r = req.into_inner();
        let mut v = Violations::new();
        v.text("event_id", &r.event_id, MAX_ID_LEN);
        v.text("signature", &r.signature, 256);
        if r.body.is_empty() {
            v.add("body", "is required");
        } else if r.body.len() > webhooks::MAX_BODY_BYTES {
            v.add("body", format!("must be at most {} bytes", webhooks::MAX_BODY_BYTES));
        }
        v.finish()?;
        let app = self.app.clone();
        let o = run(async move { webhooks::handle(&app, &r.body, &r.signature, &r.event_id).await }).await?;
        Ok(Response::new(pb::HandleGatewayWebhookResponse {
            duplicate: o.duplicate,
            event_type: o.event_type,
            outcome: o.outcome.as_str().to_owned(),
            outcome_code: convert::webhook_outcome(o.outcome) as i32,
            subscription_id: o.subscription_id.map(|s| s.to_string()).unwrap_or_default(),
        }))
    }

    #[instrument(skip_all, fields(subscription_id = %req.get_ref().id))]
    async fn get_subscription(&self, req: Request<pb::GetSubscriptionRequest>) -> RpcResult<pb::GetSubscriptionResponse> {
        let r = req.into_inner();
        let mut v = Violations::new();
        let id = v.uuid("id", &r.id);
        v.finish()?;
        let app = self.app.clone();
        let s = run(async move {
            let mut c = app.conn().await?;
            // Past its period end it reads as the period now open would be.
            let s = subscriptions::get(&mut c, id).await?;
            let s = subscriptions::as_of(&mut c, s, app.clock.now()).await?;
            let renewal = subscriptions::renewals_of(&mut c, std::slice::from_ref(&s)).await?;
            Ok((s, renewal))
        })
        .await?;
        let (s, renewal) = s;
        Ok(Response::new(pb::GetSubscriptionResponse { subscription: Some(convert::subscription_with(&s, renewal.first())) }))
    }

    #[instrument(skip_all, fields(user_id = %req.get_ref().user_id))]
    async fn list_subscriptions(&self, req: Request<pb::ListSubscriptionsRequest>) -> RpcResult<pb::ListSubscriptionsResponse> {
        let r = req.into_inner();
        let mut v = Violations::new();
        v.text("user_id", &r.user_id, MAX_ID_LEN);
        let size = page_size(r.page_size, &mut v);
        let after = page_after(&r.page_token, parse_subscription_page_token, &mut v);
        v.finish()?;
        let app = self.app.clone();
        let (subs, next, renewals) = run(async move {
            let mut c = app.conn().await?;
            let (subs, next) = subscriptions::list_for_user(&mut c, &r.user_id, size, after).await?;
            let renewals = subscriptions::renewals_of(&mut c, &subs).await?;
            Ok((subs, next, renewals))
        })
        .await?;
        Ok(Response::new(pb::ListSubscriptionsResponse {
            subscriptions: subs
                .iter()
                .map(|s| convert::subscription_with(s, renewals.iter().find(|o| o.renews_subscription_id == Some(s.id))))
                .collect(),
            next_page_token: next.map(|(t, id)| subscription_page_token(t, id)).unwrap_or_default(),
        }))
    }

    #[instrument(skip_all, fields(subscription_id = %req.get_ref().id, at_period_end = req.get_ref().at_period_end))]
    async fn cancel_subscription(
        &self,
        req: Request<pb::CancelSubscriptionRequest>,
    ) -> RpcResult<pb::CancelSubscriptionResponse> {
        let r = req.into_inner();
        let mut v = Violations::new();
        let id = v.uuid("id", &r.id);
        v.text("user_id", &r.user_id, MAX_ID_LEN);
        v.finish()?;
        let app = self.app.clone();
        let c = run(async move {
            let _pass = app.gate.enter(&format!("user:{}", r.user_id)).await?;
            let mut conn = app.conn().await?;
            let c = subscriptions::cancel(&mut conn, id, &r.user_id, r.at_period_end, app.clock.now()).await?;
            let renewal = subscriptions::renewals_of(&mut conn, std::slice::from_ref(&c.subscription)).await?;
            Ok((c, renewal))
        })
        .await?;
        let (c, renewal) = c;
        Ok(Response::new(pb::CancelSubscriptionResponse {
            subscription: Some(convert::subscription_with(&c.subscription, renewal.first())),
            replayed: c.replayed,
        }))
    }

    #[instrument(skip_all, fields(order_id = %req.get_ref().order_id, refund_id = %req.get_ref().refund_id))]
    async fn refund_payment(&self, req: Request<pb::RefundPaymentRequest>) -> RpcResult<pb::RefundPaymentResponse> {
        // Money leaves: operators only, never a service token (checkout's).
        require_admin(&req)?;
        let r = req.into_inner();
        let mut v = Violations::new();
        v.text("order_id", &r.order_id, MAX_ID_LEN);
        v.text("refund_id", &r.refund_id, MAX_ID_LEN);
        v.text("reason", &r.reason, refunds::MAX_REASON);
        v.range("amount_minor", r.amount_minor, 0, i64::MAX / 4);
        if r.refund_id.starts_with(refunds::DISCREPANCY_PREFIX) {
            v.add("refund_id", format!("must not start with {:?} (reconciliation's refunds)", refunds::DISCREPANCY_PREFIX));
        }
        v.finish()?;
        let app = self.app.clone();
        let request =
            refunds::Request { order_id: r.order_id, amount_minor: r.amount_minor, reason: r.reason, refund_id: r.refund_id };
        let done = run(async move {
            let _pass = app.gate.enter(&format!("order:{}", request.order_id)).await?;
            refunds::refund_order(&app, &request).await
        })
        .await?;
        Ok(Response::new(pb::RefundPaymentResponse {
            refund: Some(convert::refund(&done.refund)),
            order: Some(convert::order(&done.order)),
            replayed: done.replayed,
        }))
    }

    #[instrument(skip_all, fields(order_id = %req.get_ref().id))]
    async fn get_order(&self, req: Request<pb::GetOrderRequest>) -> RpcResult<pb::GetOrderResponse> {
        let r = req.into_inner();
        let mut v = Violations::new();
        v.text("id", &r.id, MAX_ID_LEN);
        v.finish()?;
        let app = self.app.clone();
        let view = run(async move { orders::view(&mut *app.conn().await?, &r.id).await }).await?;
        Ok(Response::new(pb::GetOrderResponse { order: Some(convert::order(&view)) }))
    }

    #[instrument(skip_all, fields(user_id = %req.get_ref().user_id))]
    async fn list_orders(&self, req: Request<pb::ListOrdersRequest>) -> RpcResult<pb::ListOrdersResponse> {
        let r = req.into_inner();
        let mut v = Violations::new();
        let some = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        if r.user_id.is_empty() && r.payment_id.is_empty() {
            v.add("user_id", "is required unless payment_id is given");
        }
        if !r.user_id.is_empty() {
            v.text("user_id", &r.user_id, MAX_ID_LEN);
        }
        if !r.payment_id.is_empty() {
            v.text("payment_id", &r.payment_id, MAX_ID_LEN);
        }
        let status = order_status(r.status);
        if status.is_none() {
            v.add("status", "is not an OrderStatus");
        }
        let size = page_size(r.page_size, &mut v);
        let after = page_after(&r.page_token, parse_order_page_token, &mut v);
        v.finish()?;
        let filter = orders::ListFilter { user_id: some(&r.user_id), status: status.flatten(), payment_id: some(&r.payment_id) };
        let app = self.app.clone();
        let (views, next) = run(async move { orders::list(&mut *app.conn().await?, &filter, size, after).await }).await?;
        Ok(Response::new(pb::ListOrdersResponse {
            orders: views.iter().map(convert::order).collect(),
            next_page_token: next.map(order_page_token).unwrap_or_default(),
        }))
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

    #[instrument(skip_all, fields(fix = req.get_ref().fix))]
    #[allow(deprecated)] // `Finding.kind` stays filled for callers that read it
    async fn run_reconciliation(&self, req: Request<pb::RunReconciliationRequest>) -> RpcResult<pb::RunReconciliationResponse> {
        require_admin(&req)?;
        let fix = req.into_inner().fix;
        let app = self.app.clone();
        let report = run(async move {
            let stuck = app.config.stuck_session_after;
            reconcile::run(&app, app.clock.now(), stuck, fix).await
        })
        .await?;
        Ok(Response::new(pb::RunReconciliationResponse {
            fixed: report.fixed as i64,
            findings: report
                .findings
                .into_iter()
                .map(|f| pb::Finding {
                    kind: f.kind.as_str().to_owned(),
                    kind_code: convert::finding_kind(f.kind) as i32,
                    subject_id: f.subject_id,
                    detail: f.detail,
                    fixed: f.fixed,
                })
                .collect(),
        }))
    }

    #[instrument(skip_all)]
    async fn get_usage_stats(&self, req: Request<pb::GetUsageStatsRequest>) -> RpcResult<pb::GetUsageStatsResponse> {
        require_admin(&req)?;
        let r = req.into_inner();
        let today = self.app.clock.now().date_naive();
        let mut v = Violations::new();
        let from = day("from_day", &r.from_day, today - Duration::days(30), &mut v);
        let to = day("to_day", &r.to_day, today, &mut v);
        if from > to {
            v.add("from_day", "must not be after to_day");
        }
        let size = page_size(r.page_size, &mut v);
        let after = page_after(&r.page_token, parse_stats_page_token, &mut v);
        v.finish()?;
        let app = self.app.clone();
        let (rows, next) = run(async move { stats::list(&mut *app.conn().await?, from, to, size, after).await }).await?;
        Ok(Response::new(pb::GetUsageStatsResponse {
            next_page_token: next.map(|(d, plan_id)| stats_page_token(d, &plan_id)).unwrap_or_default(),
            stats: rows
                .into_iter()
                .map(|s| pb::UsageStat {
                    day: s.day.to_string(),
                    plan_id: s.plan_id,
                    sessions: s.sessions,
                    minutes: s.minutes,
                    credits: s.credits,
                })
                .collect(),
        }))
    }
}
