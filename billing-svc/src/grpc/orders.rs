//! Order handlers: creating the order of a checkout session, reading,
//! listing and cancelling orders.
use std::collections::HashSet;

use proto::billing::v1 as pb;
use tonic::{Request, Response};
use tracing::instrument;
use uuid::Uuid;

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
    let gateway = app.gateway.name().to_owned();
    let app = app.clone();
    let order = run(async move {
        let _pass = row::admit(&app.gate, Row::CheckoutSession(r.checkout_session_id)).await?;
        checkout_orders::create(&app, &r).await
    })
    .await?;
    Ok(Response::new(pb::CreateOrderResponse {
        order: Some(convert::order(&views::OrderView::new(order, None))),
        gateway_key_id,
        gateway,
    }))
}

#[instrument(skip_all, fields(orders = req.get_ref().order_ids.len(), sessions = req.get_ref().checkout_session_ids.len()))]
pub(super) async fn batch_get_orders(
    app: &App,
    req: Request<pb::BatchGetOrdersRequest>,
) -> RpcResult<pb::BatchGetOrdersResponse> {
    let full = full_view(req.get_ref().view);
    let asked: Vec<String> = req.get_ref().order_ids.iter().chain(&req.get_ref().checkout_session_ids).cloned().collect();
    let r = BatchGetOrders::try_from(req.into_inner())?;
    let app = app.clone();
    let views = run(async move {
        let mut c = app.conn().await?;
        let mut views = views::batch_orders(&mut c, &r.order_ids, &r.session_ids).await?;
        if full {
            views::with_refunds(&mut c, &mut views).await?;
        }
        Ok(views)
    })
    .await?;
    let found: HashSet<String> = views
        .iter()
        .flat_map(|v| [Some(v.order.id.clone()), v.order.checkout_session_id.map(|s| s.to_string())])
        .flatten()
        .collect();
    Ok(Response::new(pb::BatchGetOrdersResponse {
        orders: views.iter().map(convert::order).collect(),
        missing_ids: missing(asked, &found),
    }))
}

/// Whether a batch RPC answers the FULL view: its UNSPECIFIED is BASIC (the
/// answer from before views); an unknown value reads as FULL.
fn full_view(view: i32) -> bool {
    !matches!(pb::OrderView::try_from(view), Ok(pb::OrderView::Unspecified | pb::OrderView::Basic))
}

/// The asked ids that nothing found answers, in request order, each once.
/// A session id matches in its canonical (lower-case) form.
fn missing(asked: Vec<String>, found: &HashSet<String>) -> Vec<String> {
    let mut seen = HashSet::new();
    asked
        .into_iter()
        .filter(|id| {
            let canonical = Uuid::parse_str(id).map(|u| u.to_string()).ok();
            !found.contains(id) && canonical.is_none_or(|c| !found.contains(&c)) && seen.insert(id.clone())
        })
        .collect()
}

#[instrument(skip_all, fields(orders = req.get_ref().order_ids.len()))]
pub(super) async fn cancel_orders(app: &App, req: Request<pb::CancelOrdersRequest>) -> RpcResult<pb::CancelOrdersResponse> {
    let full = full_view(req.get_ref().view);
    let asked = req.get_ref().order_ids.clone();
    let r = CancelOrders::try_from(req.into_inner())?;
    let app = app.clone();
    let (views, existing) = run(async move {
        let mut c = app.conn().await?;
        let answered = orders::cancel_unpaid(&mut c, &r.order_ids, app.clock.now()).await?;
        let answered: HashSet<&str> = answered.iter().map(|id| id.as_str()).collect();
        // Every asked order that exists (a detached renewal order too): the
        // answer holds those cancel_unpaid answered; the others are missing.
        let mut views = views::batch_orders(&mut c, &r.order_ids, &[]).await?;
        let existing: HashSet<String> = views.iter().map(|v| v.order.id.clone()).collect();
        views.retain(|v| answered.contains(v.order.id.as_str()));
        if full {
            views::with_refunds(&mut c, &mut views).await?;
        }
        Ok((views, existing))
    })
    .await?;
    Ok(Response::new(pb::CancelOrdersResponse {
        orders: views.iter().map(convert::order).collect(),
        missing_ids: missing(asked, &existing),
    }))
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
