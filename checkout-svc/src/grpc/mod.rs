//! gRPC handlers: validate and translate proto ↔ domain, nothing else.
//! Effects run in a spawned task so a cancelled RPC cannot stop a
//! transaction halfway.
mod convert;

use std::future::Future;

use chrono::{DateTime, Datelike, Utc};
use proto::checkout::v1::{self as pb, checkout_service_server::CheckoutService};
use shared::{
    auth::require_admin,
    client::Budget,
    idempotency::{Key, encode_with, respond},
    status::{MAX_ID_LEN, Violations},
};
use tonic::{Request, Response, Status};
use tracing::instrument;
use uuid::Uuid;

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
    }
}

fn renew_response(s: &Started) -> pb::RenewSessionResponse {
    pb::RenewSessionResponse { session: Some(convert::session(&s.session)), previous: s.previous.as_ref().map(convert::session) }
}

fn recover_response(s: &Started) -> pb::RecoverSessionResponse {
    pb::RecoverSessionResponse { session: Some(convert::session(&s.session)) }
}

fn complete_response(c: &Completed) -> pb::CompleteSessionResponse {
    pb::CompleteSessionResponse { session: Some(convert::session(&c.session)), replayed: c.replayed }
}

const PAGE_SIZE_DEFAULT: i32 = 20;
const PAGE_SIZE_MAX: i32 = 100;

fn page_token(t: DateTime<Utc>, id: Uuid) -> String {
    hex::encode(format!("{}|{id}", t.timestamp_micros()))
}

/// Longest token [`page_token`] makes (hex of 20 digits, '|' and a UUID).
const MAX_PAGE_TOKEN_LEN: usize = 2 * (20 + 1 + 36);

/// Decodes a token of [`page_token`]. A forged token can carry any number:
/// only instants of years 1..=9999 pass, so PostgreSQL (whose range is
/// narrower than chrono's) never sees one it cannot hold.
fn parse_page_token(token: &str) -> Option<(DateTime<Utc>, Uuid)> {
    if token.len() > MAX_PAGE_TOKEN_LEN {
        return None;
    }
    let raw = String::from_utf8(hex::decode(token).ok()?).ok()?;
    let (micros, id) = raw.split_once('|')?;
    let t = DateTime::from_timestamp_micros(micros.parse().ok()?)?;
    (1..=9999).contains(&t.year()).then_some((t, Uuid::parse_str(id).ok()?))
}

#[tonic::async_trait]
impl CheckoutService for CheckoutGrpc {
    #[instrument(skip_all, fields(user_id = %req.get_ref().user_id, plan_id = %req.get_ref().plan_id))]
    async fn create_session(&self, req: Request<pb::CreateSessionRequest>) -> RpcResult<pb::CreateSessionResponse> {
        let key =
            Key::from_request_with_id(&req, "checkout.CreateSession", |r: &mut pb::CreateSessionRequest| &mut r.request_id)?;
        let budget = Budget::from_request(&req, self.app.config.billing_timeout);
        let r = req.into_inner();
        let mut v = Violations::new();
        v.text("user_id", &r.user_id, MAX_ID_LEN);
        v.text("plan_id", &r.plan_id, MAX_ID_LEN);
        v.finish()?;
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
        let r = req.into_inner();
        let mut v = Violations::new();
        let id = v.uuid("id", &r.id);
        v.text("plan_id", &r.plan_id, MAX_ID_LEN);
        v.finish()?;
        let app = self.app.clone();
        let out = run(async move {
            let encode = encode_with(renew_response);
            sessions::renew(&app, id, &r.plan_id, budget, key.as_ref(), &encode).await
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
        let r = req.into_inner();
        let mut v = Violations::new();
        let id = v.uuid("id", &r.id);
        v.text("payment_id", &r.payment_id, MAX_ID_LEN);
        v.text("signature", &r.signature, 256);
        v.finish()?;
        let app = self.app.clone();
        let out = run(async move {
            let encode = encode_with(complete_response);
            sessions::complete(&app, id, &r.payment_id, &r.signature, budget, key.as_ref(), &encode).await
        })
        .await?;
        respond(out, complete_response)
    }

    #[instrument(skip_all, fields(user_id = %req.get_ref().user_id))]
    async fn list_sessions(&self, req: Request<pb::ListSessionsRequest>) -> RpcResult<pb::ListSessionsResponse> {
        let r = req.into_inner();
        let mut v = Violations::new();
        v.text("user_id", &r.user_id, MAX_ID_LEN);
        let size = if r.page_size == 0 { PAGE_SIZE_DEFAULT } else { r.page_size };
        v.range("page_size", i64::from(size), 1, i64::from(PAGE_SIZE_MAX));
        let status = match pb::SessionStatus::try_from(r.status) {
            Ok(pb::SessionStatus::Unspecified) => None,
            Ok(pb::SessionStatus::Active) => Some(sessions::Status::Active),
            Ok(pb::SessionStatus::Completed) => Some(sessions::Status::Completed),
            Ok(pb::SessionStatus::Expired) => Some(sessions::Status::Expired),
            Ok(pb::SessionStatus::Invalidated) => Some(sessions::Status::Invalidated),
            Err(_) => {
                v.add("status", "unknown status");
                None
            }
        };
        let after = if r.page_token.is_empty() {
            None
        } else {
            let parsed = parse_page_token(&r.page_token);
            if parsed.is_none() {
                v.add("page_token", "is not a token from a previous response");
            }
            parsed
        };
        v.finish()?;
        let app = self.app.clone();
        let (rows, next) = run(async move {
            sessions::list(&mut *app.conn().await?, &r.user_id, status, i64::from(size), after, app.clock.now()).await
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip() {
        let t = DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap_or_default();
        let id = Uuid::new_v4();
        assert_eq!(parse_page_token(&page_token(t, id)), Some((t, id)));
        assert_eq!(parse_page_token("zz"), None);
        assert_eq!(parse_page_token(&hex::encode("1|nope")), None);
    }

    #[test]
    fn page_tokens_outside_postgres_range_are_refused() {
        let id = Uuid::new_v4();
        // Within chrono's range, outside PostgreSQL's (before 4713 BC).
        let ancient = DateTime::from_timestamp_micros(-8_000_000_000_000_000_000).map(|t| page_token(t, id));
        assert!(ancient.is_some());
        assert_eq!(ancient.and_then(|t| parse_page_token(&t)), None);
        // Beyond chrono and PostgreSQL (around year 300000).
        assert_eq!(parse_page_token(&hex::encode(format!("9467000000000000000|{id}"))), None);
        assert_eq!(parse_page_token(&hex::encode(format!("{}|{id}", i64::MAX))), None);
        assert_eq!(parse_page_token(&"ab".repeat(1000)), None);
    }
}
