//! Usage handlers: plan limits, usage sessions and their deductions.
use proto::billing::v1 as pb;
use shared::{
    idempotency::{Key, encode_with, respond},
    status::{MAX_ID_LEN, Violations},
};
use tonic::{Request, Response};
use tracing::instrument;

use super::{
    RpcResult, convert,
    requests::{AuthorizeUpload, GetUsage, StartUsageSession},
    run,
};
use crate::{
    App, deductions, limits,
    row::{self, Row},
    usage,
};

fn start_usage_session_response(view: &usage::SessionView) -> pb::StartUsageSessionResponse {
    pb::StartUsageSessionResponse { session: Some(convert::usage_session(view)) }
}

#[instrument(skip_all, fields(user_id = %req.get_ref().user_id))]
pub(super) async fn get_usage(app: &App, req: Request<pb::GetUsageRequest>) -> RpcResult<pb::GetUsageResponse> {
    let r = GetUsage::try_from(req.into_inner())?;
    let app = app.clone();
    let user_id = r.user_id.clone();
    let report = run(async move { limits::report(&app, &user_id).await }).await?;
    Ok(Response::new(pb::GetUsageResponse { usage: Some(convert::usage(r.user_id.as_str(), &report)) }))
}

#[instrument(skip_all, fields(user_id = %req.get_ref().user_id))]
pub(super) async fn start_usage_session(
    app: &App,
    req: Request<pb::StartUsageSessionRequest>,
) -> RpcResult<pb::StartUsageSessionResponse> {
    let key =
        Key::from_request_with_id(&req, "billing.StartUsageSession", |r: &mut pb::StartUsageSessionRequest| &mut r.request_id)?;
    let r = StartUsageSession::try_from(req.into_inner())?;
    let app = app.clone();
    let out = run(async move {
        let _pass = row::admit(&app.gate, Row::User(&r.user_id)).await?;
        let encode = encode_with(start_usage_session_response);
        // usage::start takes the id as text (its module is not typed yet).
        usage::start(&app, r.user_id.as_str(), r.kind, key.as_ref(), &encode).await
    })
    .await?;
    respond(out, start_usage_session_response)
}

#[instrument(skip_all, fields(user_id = %req.get_ref().user_id, size = req.get_ref().size_bytes))]
pub(super) async fn authorize_upload(
    app: &App,
    req: Request<pb::AuthorizeUploadRequest>,
) -> RpcResult<pb::AuthorizeUploadResponse> {
    let r = AuthorizeUpload::try_from(req.into_inner())?;
    let app = app.clone();
    let max = run(async move { limits::authorize_upload(&app, &r.user_id, r.size_bytes).await }).await?;
    Ok(Response::new(pb::AuthorizeUploadResponse {
        allowed: true,
        max_upload_bytes: max.unwrap_or(crate::plans::UNLIMITED_UPLOAD_BYTES),
        upload_bytes: Some(convert::limit(max)),
    }))
}

// The hot path: the RPC's server span (method, caller's trace) is its one
// trace; no handler span with per-call fields (docs/design.md, Performance).
pub(super) async fn deduct(app: &App, req: Request<pb::DeductRequest>) -> RpcResult<pb::DeductResponse> {
    let r = req.into_inner();
    let mut v = Violations::new();
    let id = v.uuid("usage_session_id", &r.usage_session_id);
    v.text("deduction_id", &r.deduction_id, MAX_ID_LEN);
    v.range("units", r.units, 1, deductions::MAX_UNITS);
    v.finish()?;
    let c = if app.config.deduct.coalesce {
        // The batch runs on a drainer's own task (a cancelled call
        // cannot stop it halfway) and holds one connection for the whole
        // batch, so the call neither spawns nor enters the per-row gate
        // here; a call whose session is held is charged on its own,
        // through the gate (docs/design.md, Performance).
        let charged = app.deducts.deduct(id, r.deduction_id, r.units).await;
        // A batch may have crossed a credit threshold (an event).
        shared::events::nudge();
        charged?
    } else {
        let app = app.clone();
        let mode = deductions::Mode::Explicit { deduction_id: r.deduction_id, units: r.units };
        run(async move { deductions::charge_admitted(&app.gate, &app.pool, &app.clock, id, &mode).await }).await?
    };
    Ok(Response::new(pb::DeductResponse {
        session: Some(convert::charged(&c)),
        units_charged: c.charged,
        units_unpaid: c.unpaid,
        replayed: c.replayed,
    }))
}

#[instrument(skip_all, fields(usage_session_id = %req.get_ref().id))]
pub(super) async fn end_usage_session(
    app: &App,
    req: Request<pb::EndUsageSessionRequest>,
) -> RpcResult<pb::EndUsageSessionResponse> {
    let r = req.into_inner();
    let mut v = Violations::new();
    let id = v.uuid("id", &r.id);
    v.range("manual_deductions", r.manual_deductions, 0, deductions::MAX_UNITS);
    v.finish()?;
    let app = app.clone();
    let mode = deductions::Mode::End { manual: r.manual_deductions };
    let c = run(async move { deductions::charge_admitted(&app.gate, &app.pool, &app.clock, id, &mode).await }).await?;
    Ok(Response::new(pb::EndUsageSessionResponse {
        session: Some(convert::charged(&c)),
        final_units_charged: c.view.session.final_units_charged.unwrap_or_default(),
        replayed: c.replayed,
    }))
}

#[instrument(skip_all, fields(usage_session_id = %req.get_ref().id))]
pub(super) async fn get_usage_session(
    app: &App,
    req: Request<pb::GetUsageSessionRequest>,
) -> RpcResult<pb::GetUsageSessionResponse> {
    let r = req.into_inner();
    let mut v = Violations::new();
    let id = v.uuid("id", &r.id);
    v.finish()?;
    let app = app.clone();
    let view = run(async move { usage::view(&mut *app.conn().await?, id, app.clock.now()).await }).await?;
    Ok(Response::new(pb::GetUsageSessionResponse { session: Some(convert::usage_session(&view)) }))
}
