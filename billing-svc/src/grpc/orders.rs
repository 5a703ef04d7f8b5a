//! Order handlers: creating the order of a checkout session, reading,
//! listing and cancelling orders.
use proto::billing::v1 as pb;
use shared::status::{MAX_ID_LEN, Violations, check_count};
use tonic::{Request, Response};
use tracing::instrument;
use uuid::Uuid;

use super::{
    RpcResult, convert,
    params::{order_page_token, order_status, page_after, page_size, parse_order_page_token},
    run,
};
use crate::{App, checkout_orders, orders, views};

#[instrument(skip_all, fields(checkout_session_id = %req.get_ref().checkout_session_id))]
pub(super) async fn create_order(app: &App, req: Request<pb::CreateOrderRequest>) -> RpcResult<pb::CreateOrderResponse> {
    let r = req.into_inner();
    let mut v = Violations::new();
    let session_id = v.uuid("checkout_session_id", &r.checkout_session_id);
    v.text("user_id", &r.user_id, MAX_ID_LEN);
    v.text("plan_id", &r.plan_id, MAX_ID_LEN);
    v.finish()?;
    let gateway_key_id = app.gateway.key_id().to_owned();
    let app = app.clone();
    let order = run(async move {
        let _pass = app.gate.enter(&format!("checkout_session:{session_id}")).await?;
        checkout_orders::create(&app, session_id, &r.user_id, &r.plan_id).await
    })
    .await?;
    Ok(Response::new(pb::CreateOrderResponse {
        order: Some(convert::order(&views::OrderView::new(order, None))),
        gateway_key_id,
    }))
}

#[instrument(skip_all, fields(orders = req.get_ref().order_ids.len(), sessions = req.get_ref().checkout_session_ids.len()))]
pub(super) async fn batch_get_orders(
    app: &App,
    req: Request<pb::BatchGetOrdersRequest>,
) -> RpcResult<pb::BatchGetOrdersResponse> {
    let r = req.into_inner();
    let mut v = Violations::new();
    // The count first: a huge list is refused without walking it.
    check_count("order_ids", r.order_ids.len() + r.checkout_session_ids.len(), orders::MAX_BATCH)?;
    for id in &r.order_ids {
        v.text("order_ids", id, MAX_ID_LEN);
    }
    let session_ids: Vec<Uuid> = r.checkout_session_ids.iter().map(|s| v.uuid("checkout_session_ids", s)).collect();
    v.finish()?;
    let app = app.clone();
    let views = run(async move { views::batch_orders(&mut *app.conn().await?, &r.order_ids, &session_ids).await }).await?;
    Ok(Response::new(pb::BatchGetOrdersResponse { orders: views.iter().map(convert::order).collect() }))
}

#[instrument(skip_all, fields(orders = req.get_ref().order_ids.len()))]
pub(super) async fn cancel_orders(app: &App, req: Request<pb::CancelOrdersRequest>) -> RpcResult<pb::CancelOrdersResponse> {
    let r = req.into_inner();
    let mut v = Violations::new();
    check_count("order_ids", r.order_ids.len(), orders::MAX_BATCH)?;
    for id in &r.order_ids {
        v.text("order_ids", id, MAX_ID_LEN);
    }
    v.finish()?;
    let app = app.clone();
    let views = run(async move {
        let mut c = app.conn().await?;
        let answered = orders::cancel_unpaid(&mut c, &r.order_ids, app.clock.now()).await?;
        views::batch_orders(&mut c, &answered, &[]).await
    })
    .await?;
    Ok(Response::new(pb::CancelOrdersResponse { orders: views.iter().map(convert::order).collect() }))
}

#[instrument(skip_all, fields(order_id = %req.get_ref().id))]
pub(super) async fn get_order(app: &App, req: Request<pb::GetOrderRequest>) -> RpcResult<pb::GetOrderResponse> {
    let r = req.into_inner();
    let mut v = Violations::new();
    v.text("id", &r.id, MAX_ID_LEN);
    v.finish()?;
    let app = app.clone();
    let view = run(async move { views::order(&mut *app.conn().await?, &r.id).await }).await?;
    Ok(Response::new(pb::GetOrderResponse { order: Some(convert::order(&view)) }))
}

#[instrument(skip_all, fields(user_id = %req.get_ref().user_id))]
pub(super) async fn list_orders(app: &App, req: Request<pb::ListOrdersRequest>) -> RpcResult<pb::ListOrdersResponse> {
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
    let filter = views::OrderFilter { user_id: some(&r.user_id), status: status.flatten(), payment_id: some(&r.payment_id) };
    let app = app.clone();
    let (views, next) = run(async move { views::list_orders(&mut *app.conn().await?, &filter, size, after).await }).await?;
    Ok(Response::new(pb::ListOrdersResponse {
        orders: views.iter().map(convert::order).collect(),
        next_page_token: next.map(order_page_token).unwrap_or_default(),
    }))
}
