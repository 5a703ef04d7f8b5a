//! PlanCatalogService's migrations of subscribers between price versions
//! (docs/design.md, "Catalogue"): MigrateSubscribers, GetPlanMigration,
//! ListPlanMigrations. Requests are checked here; the effect is
//! [`crate::plans::migrations`].
use proto::billing::v1 as pb;
use shared::{
    auth::require_admin,
    idempotency::{Key, encode_with, respond},
    ids::{PlanId, field},
    status::Violations,
    time::to_proto,
};
use tonic::{Request, Response, Status};
use tracing::instrument;

use super::super::{
    RpcResult,
    params::{page_after, page_size},
    run,
};
use crate::{
    App,
    plans::migrations::{self, Migration, NewMigration},
};

fn plan_migration(m: &Migration) -> pb::PlanMigration {
    let state = if m.completed() { pb::PlanMigrationState::Completed } else { pb::PlanMigrationState::Scheduled };
    pb::PlanMigration {
        id: m.id.to_string(),
        plan_id: m.plan_id.clone(),
        from_version: m.from_version,
        to_version: m.to_version,
        state: state as i32,
        subscriptions_scheduled: m.scheduled,
        subscriptions_applied: m.applied,
        subscriptions_ended: m.ended,
        created_at: Some(to_proto(m.created_at)),
    }
}

fn migrate_response(m: &Migration) -> pb::MigrateSubscribersResponse {
    pb::MigrateSubscribersResponse { migration: Some(plan_migration(m)) }
}

struct Migrate {
    validate_only: bool,
    migration: NewMigration,
}

impl TryFrom<pb::MigrateSubscribersRequest> for Migrate {
    type Error = Status;
    fn try_from(r: pb::MigrateSubscribersRequest) -> Result<Self, Status> {
        let mut v = Violations::new();
        let id = field(&mut v, "plan_id", PlanId::parse(r.plan_id));
        if r.request_id.is_empty() {
            v.add("request_id", "is required: a UUID, new per change, the same on a retry of it");
        } else if r.request_id.len() != 36 || uuid::Uuid::try_parse(&r.request_id).is_err() {
            v.add("request_id", "must be a UUID (8-4-4-4-12 hex digits)");
        }
        v.range("from_version", i64::from(r.from_version), 1, i64::from(i32::MAX));
        v.range("to_version", i64::from(r.to_version), 1, i64::from(i32::MAX));
        if r.from_version == r.to_version && r.from_version > 0 {
            v.add("to_version", "must differ from from_version: the subscribers are on it already");
        }
        v.finish()?;
        Ok(Self {
            validate_only: r.validate_only,
            migration: NewMigration { plan_id: id?, from_version: r.from_version, to_version: r.to_version },
        })
    }
}

#[instrument(skip_all, fields(plan_id = %req.get_ref().plan_id, from = req.get_ref().from_version, to = req.get_ref().to_version))]
pub(super) async fn migrate_subscribers(
    app: &App,
    req: Request<pb::MigrateSubscribersRequest>,
) -> RpcResult<pb::MigrateSubscribersResponse> {
    require_admin(&req)?;
    let r = Migrate::try_from(req.get_ref().clone())?;
    let key =
        Key::from_request_with_id(&req, "billing.MigrateSubscribers", |r: &mut pb::MigrateSubscribersRequest| &mut r.request_id)?
            .ok_or_else(super::no_request_id)?;
    let app = app.clone();
    let out = run(async move {
        let encode = encode_with(migrate_response);
        let how = migrations::Run { key: &key, validate_only: r.validate_only, encode: &encode, now: app.clock.now() };
        migrations::migrate(&mut *app.conn().await?, &how, &r.migration).await
    })
    .await?;
    respond(out, migrate_response)
}

#[instrument(skip_all, fields(id = %req.get_ref().id))]
pub(super) async fn get_plan_migration(
    app: &App,
    req: Request<pb::GetPlanMigrationRequest>,
) -> RpcResult<pb::GetPlanMigrationResponse> {
    require_admin(&req)?;
    let id = uuid::Uuid::try_parse(&req.get_ref().id)
        .map_err(|_| shared::status::invalid_field("id", "must be a migration's id (a UUID)"))?;
    let app = app.clone();
    let m = run(async move { migrations::get(&mut *app.conn().await?, id).await }).await?;
    Ok(Response::new(pb::GetPlanMigrationResponse { migration: Some(plan_migration(&m)) }))
}

/// The list's position: the last migration's sequence number, as hex.
fn page_token(seq: i64) -> String {
    hex::encode(seq.to_string())
}

fn parse_page_token(token: &str) -> Option<i64> {
    String::from_utf8(hex::decode(token).ok()?).ok()?.parse::<i64>().ok().filter(|s| *s > 0)
}

#[instrument(skip_all, fields(plan_id = %req.get_ref().plan_id))]
pub(super) async fn list_plan_migrations(
    app: &App,
    req: Request<pb::ListPlanMigrationsRequest>,
) -> RpcResult<pb::ListPlanMigrationsResponse> {
    require_admin(&req)?;
    let r = req.into_inner();
    let mut v = Violations::new();
    let id = field(&mut v, "plan_id", PlanId::parse(r.plan_id));
    let size = page_size(r.page_size, &mut v);
    let after = page_after(&r.page_token, parse_page_token, &mut v);
    v.finish()?;
    let id = id?;
    let app = app.clone();
    let (rows, next) = run(async move { migrations::page(&mut *app.conn().await?, id.as_str(), size, after).await }).await?;
    Ok(Response::new(pb::ListPlanMigrationsResponse {
        migrations: rows.iter().map(plan_migration).collect(),
        next_page_token: next.map(page_token).unwrap_or_default(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_and_refuse_what_no_response_made() {
        assert_eq!(parse_page_token(&page_token(42)), Some(42));
        assert_eq!(parse_page_token("zz"), None);
        assert_eq!(parse_page_token(&hex::encode("-1")), None);
        assert_eq!(parse_page_token(""), None);
    }
}
