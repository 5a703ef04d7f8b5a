//! Payment handlers: money in (VerifyPayment, the gateway's webhooks) and
//! out (RefundPayment).
use proto::billing::v1 as pb;
use shared::{
    auth::require_admin,
    status::{MAX_ID_LEN, Violations},
};
use tonic::{Request, Response};
use tracing::instrument;

use super::{RpcResult, convert, requests::VerifyPayment, run};
use crate::{
    App, payments, refunds,
    row::{self, Row},
    views, webhooks,
};

#[instrument(skip_all, fields(order_id = %req.get_ref().order_id))]
pub(super) async fn verify_payment(app: &App, req: Request<pb::VerifyPaymentRequest>) -> RpcResult<pb::VerifyPaymentResponse> {
    let r = VerifyPayment::try_from(req.into_inner())?;
    let app = app.clone();
    let c = run(async move {
        let _pass = row::admit(&app.gate, Row::Order(&r.order_id)).await?;
        payments::verify(&app, &r.order_id, &r.payment_id, &r.signature).await
    })
    .await?;
    let view = views::OrderView::new(c.order, Some(c.subscription.id));
    Ok(Response::new(pb::VerifyPaymentResponse {
        order: Some(convert::order(&view)),
        subscription: Some(convert::subscription(&c.subscription)),
        replayed: c.replayed,
    }))
}

#[instrument(skip_all, fields(event_id = %req.get_ref().event_id, bytes = req.get_ref().body.len()))]
#[allow(deprecated)] // `outcome` stays filled for callers that read it
pub(super) async fn handle_gateway_webhook(
    app: &App,
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
    let app = app.clone();
    let o = run(async move { webhooks::handle(&app, &r.body, &r.signature, &r.event_id).await }).await?;
    Ok(Response::new(pb::HandleGatewayWebhookResponse {
        duplicate: o.duplicate,
        event_type: o.event_type,
        outcome: o.outcome.as_str().to_owned(),
        outcome_code: convert::webhook_outcome(o.outcome) as i32,
        subscription_id: o.subscription_id.map(|s| s.to_string()).unwrap_or_default(),
    }))
}

#[instrument(skip_all, fields(order_id = %req.get_ref().order_id, refund_id = %req.get_ref().refund_id))]
pub(super) async fn refund_payment(app: &App, req: Request<pb::RefundPaymentRequest>) -> RpcResult<pb::RefundPaymentResponse> {
    // Money leaves: operators only, never a service token (checkout's).
    require_admin(&req)?;
    let request = refunds::Request::try_from(req.into_inner())?;
    let app = app.clone();
    let (done, order) = run(async move {
        let _pass = row::admit(&app.gate, Row::Order(&request.order_id)).await?;
        let done = refunds::refund_order(&app, &request).await?;
        Ok((done, views::order(&mut *app.conn().await?, &request.order_id).await?))
    })
    .await?;
    Ok(Response::new(pb::RefundPaymentResponse {
        refund: Some(convert::refund(&done.refund)),
        order: Some(convert::order(&order)),
        replayed: done.replayed,
    }))
}
