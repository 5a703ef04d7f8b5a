//! Order handlers: creating the order of a checkout session, reading,
//! listing and cancelling orders.
use proto::billing::v1 as pb;
use tonic::{Request, Response};
use tracing::instrument;

use super::{
    RpcResult, convert,
    params::order_page_token,
    requests::{BatchGetOrders, CancelOrders, GetOrder, ListOrders},
    run,
};
use crate::{
    App,
    checkout_orders::{self, OrderRequest},
    orders,
    row::{self, Row},
    views,
};

#[instrument(skip_all, fields(checkout_session_id = %req.get_ref().checkout_session_id))]
pub(super) async fn create_order(app: &App, req: Request<pb::CreateOrderRequest>) -> RpcResult<pb::CreateOrderResponse> {
    let r = OrderRequest::try_from(req.into_inner())?;
    let gateway_key_id = app.gateway.key_id().to_owned();
    let app = app.clone();
    let order = run(async move {
        let _pass = row::admit(&app.gate, Row::CheckoutSession(r.checkout_session_id)).await?;
        checkout_orders::create(&app, &r).await
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
    let r = BatchGetOrders::try_from(req.into_inner())?;
    let app = app.clone();
    let views = run(async move { views::batch_orders(&mut *app.conn().await?, &r.order_ids, &r.session_ids).await }).await?;
    Ok(Response::new(pb::BatchGetOrdersResponse { orders: views.iter().map(convert::order).collect() }))
}

#[instrument(skip_all, fields(orders = req.get_ref().order_ids.len()))]
pub(super) async fn cancel_orders(app: &App, req: Request<pb::CancelOrdersRequest>) -> RpcResult<pb::CancelOrdersResponse> {
    let r = CancelOrders::try_from(req.into_inner())?;
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
    let r = GetOrder::try_from(req.into_inner())?;
    let app = app.clone();
    let view = run(async move { views::order(&mut *app.conn().await?, &r.id).await }).await?;
    Ok(Response::new(pb::GetOrderResponse { order: Some(convert::order(&view)) }))
}

#[instrument(skip_all, fields(user_id = %req.get_ref().user_id))]
pub(super) async fn list_orders(app: &App, req: Request<pb::ListOrdersRequest>) -> RpcResult<pb::ListOrdersResponse> {
    let r = ListOrders::try_from(req.into_inner())?;
    let app = app.clone();
    let (views, next) = run(async move { views::list_orders(&mut *app.conn().await?, &r.filter, r.size, r.after).await }).await?;
    Ok(Response::new(pb::ListOrdersResponse {
        orders: views.iter().map(convert::order).collect(),
        next_page_token: next.map(order_page_token).unwrap_or_default(),
    }))
}
