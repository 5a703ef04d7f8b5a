//! gRPC handlers: validate and translate proto ↔ domain, nothing else.
//! Effects run in a spawned task so a cancelled RPC cannot stop a
//! transaction halfway. Requests are parsed into domain inputs first
//! (`requests.rs`).
mod convert;
mod events;
mod requests;

use std::future::Future;

use proto::checkout::v1::{self as pb, checkout_service_server::CheckoutService};
use shared::{
    auth::require_admin,
    client::Budget,
    idempotency::{Key, encode_with, respond},
    status::Violations,
};
use tonic::{Request, Response, Status};
use tracing::instrument;

use self::requests::{CompleteSession, CreateSession, ListSessions, RenewSession, page_token};
pub use events::{CheckoutEventGrpc, Event, hub as event_hub};

use crate::{
    App,
    sessions::{self, Completed, Started},
};

pub struct CheckoutGrpc {
    app: App,
}

impl CheckoutGrpc {
    pub fn new(app: App) -> Self {
        Self { app }
    }
}

type RpcResult<T> = Result<Response<T>, Status>;

/// Effects run on their own task; see [`shared::server::run_effect`].
async fn run<T: Send + 'static>(f: impl Future<Output = crate::Result<T>> + Send + 'static) -> Result<T, Status> {
    shared::server::run_effect(f).await
}

fn create_response(s: &Started) -> pb::CreateSessionResponse {
    pb::CreateSessionResponse {
        session: Some(convert::session(&s.session)),
        invalidated_session_id: s.previous.as_ref().map(|p| p.id.to_string()).unwrap_or_default(),
        payment_widget: convert::payment_widget(s),
    }
}

fn renew_response(s: &Started) -> pb::RenewSessionResponse {
    pb::RenewSessionResponse {
        session: Some(convert::session(&s.session)),
        previous: s.previous.as_ref().map(convert::session),
        payment_widget: convert::payment_widget(s),
    }
}

fn recover_response(s: &Started) -> pb::RecoverSessionResponse {
    pb::RecoverSessionResponse { session: Some(convert::session(&s.session)), payment_widget: convert::payment_widget(s) }
}

fn complete_response(c: &Completed) -> pb::CompleteSessionResponse {
    pb::CompleteSessionResponse { session: Some(convert::session(&c.session)), replayed: c.replayed }
}

#[tonic::async_trait]
impl CheckoutService for CheckoutGrpc {
    #[instrument(skip_all, fields(user_id = %req.get_ref().user_id, plan_id = %req.get_ref().plan_id))]
    async fn create_session(&self, req: Request<pb::CreateSessionRequest>) -> RpcResult<pb::CreateSessionResponse> {
        let key =
            Key::from_request_with_id(&req, "checkout.CreateSession", |r: &mut pb::CreateSessionRequest| &mut r.request_id)?;
        let budget = Budget::from_request(&req, self.app.config.billing_timeout);
        let r = CreateSession::try_from(req.into_inner())?;
        let app = self.app.clone();
        let out = run(async move {
            let encode = encode_with(create_response);
            sessions::create(&app, &r.user_id, &r.plan_id, budget, key.as_ref(), &encode).await
        })
        .await?;
        respond(out, create_response)
    }

    #[instrument(skip_all, fields(session_id = %req.get_ref().id))]
    async fn get_session(&self, req: Request<pb::GetSessionRequest>) -> RpcResult<pb::GetSessionResponse> {
        let r = req.into_inner();
        let mut v = Violations::new();
        let id = v.uuid("id", &r.id);
        v.finish()?;
        let app = self.app.clone();
        let s = run(async move { sessions::get(&mut *app.conn().await?, id, app.clock.now()).await }).await?;
        Ok(Response::new(pb::GetSessionResponse { session: Some(convert::session(&s)) }))
    }

    #[instrument(skip_all, fields(session_id = %req.get_ref().id, plan_id = %req.get_ref().plan_id))]
    async fn renew_session(&self, req: Request<pb::RenewSessionRequest>) -> RpcResult<pb::RenewSessionResponse> {
        let key = Key::from_request_with_id(&req, "checkout.RenewSession", |r: &mut pb::RenewSessionRequest| &mut r.request_id)?;
        let budget = Budget::from_request(&req, self.app.config.billing_timeout);
        let r = RenewSession::try_from(req.into_inner())?;
        let app = self.app.clone();
        let out = run(async move {
            let encode = encode_with(renew_response);
            sessions::renew(&app, r.id, &r.plan_id, r.etag.as_ref(), budget, key.as_ref(), &encode).await
        })
        .await?;
        respond(out, renew_response)
    }

    #[instrument(skip_all, fields(session_id = %req.get_ref().id))]
    async fn recover_session(&self, req: Request<pb::RecoverSessionRequest>) -> RpcResult<pb::RecoverSessionResponse> {
        let key =
            Key::from_request_with_id(&req, "checkout.RecoverSession", |r: &mut pb::RecoverSessionRequest| &mut r.request_id)?;
        let budget = Budget::from_request(&req, self.app.config.billing_timeout);
        let r = req.into_inner();
        let mut v = Violations::new();
        let id = v.uuid("id", &r.id);
        v.finish()?;
        let app = self.app.clone();
        let out = run(async move {
            let encode = encode_with(recover_response);
            sessions::recover(&app, id, budget, key.as_ref(), &encode).await
        })
        .await?;
        respond(out, recover_response)
    }

    #[instrument(skip_all, fields(session_id = %req.get_ref().id))]
    async fn complete_session(&self, req: Request<pb::CompleteSessionRequest>) -> RpcResult<pb::CompleteSessionResponse> {
        let key = Key::from_request(&req, "checkout.CompleteSession")?;
        let budget = Budget::from_request(&req, self.app.config.billing_timeout);
        let r = CompleteSession::try_from(req.into_inner())?;
        let app = self.app.clone();
        let out = run(async move {
            let encode = encode_with(complete_response);
            sessions::complete(&app, r.id, &r.payment_id, &r.signature, budget, key.as_ref(), &encode).await
        })
        .await?;
        respond(out, complete_response)
    }

    #[instrument(skip_all, fields(user_id = %req.get_ref().user_id))]
    async fn list_sessions(&self, req: Request<pb::ListSessionsRequest>) -> RpcResult<pb::ListSessionsResponse> {
        let r = ListSessions::try_from(req.into_inner())?;
        let app = self.app.clone();
        let (rows, next) = run(async move {
            sessions::list(&mut *app.conn().await?, &r.user_id, r.status, r.size, r.after, app.clock.now()).await
        })
        .await?;
        Ok(Response::new(pb::ListSessionsResponse {
            sessions: rows.iter().map(convert::session).collect(),
            next_page_token: next.map(|(t, id)| page_token(t, id)).unwrap_or_default(),
        }))
    }

    #[instrument(skip_all, fields(dry_run = req.get_ref().dry_run))]
    async fn cleanup_sessions(&self, req: Request<pb::CleanupSessionsRequest>) -> RpcResult<pb::CleanupSessionsResponse> {
        require_admin(&req)?;
        let dry_run = req.into_inner().dry_run;
        let app = self.app.clone();
        let counts = run(async move { sessions::cleanup(&app, dry_run).await }).await?;
        Ok(Response::new(convert::cleanup(&counts)))
    }
}
