//! Operator handlers (admin token only): reconciliation, its findings and
//! usage statistics.
use chrono::Duration;
use proto::billing::v1 as pb;
use shared::{auth::require_admin, status::Violations, time::to_proto};
use tonic::{Request, Response};
use tracing::instrument;

use super::{
    RpcResult, convert,
    params::{
        day, finding_page_token, page_after, page_size, parse_finding_page_token, parse_stats_page_token, stats_page_token,
    },
    run,
};
use crate::{App, reconcile, stats};

/// Most findings one RunReconciliation answer carries: with details of a
/// few hundred bytes each, far below tonic's 4 MiB message limit however
/// large the incident; the rest is read with ListFindings.
pub const RUN_FINDINGS_MAX: usize = 1000;

#[allow(deprecated)] // `Finding.kind` stays filled for callers that read it
fn finding(f: reconcile::Finding) -> pb::Finding {
    pb::Finding {
        kind: f.kind.as_str().to_owned(),
        kind_code: convert::finding_kind(f.kind) as i32,
        subject_id: f.subject_id,
        detail: f.detail,
        fixed: f.fixed,
    }
}

#[instrument(skip_all, fields(fix = req.get_ref().fix))]
pub(super) async fn run_reconciliation(
    app: &App,
    req: Request<pb::RunReconciliationRequest>,
) -> RpcResult<pb::RunReconciliationResponse> {
    require_admin(&req)?;
    let fix = req.into_inner().fix;
    let app = app.clone();
    let now = app.clock.now();
    let report = run(async move {
        let stuck = app.config.stuck_session_after;
        reconcile::run(&app, now, stuck, fix).await
    })
    .await?;
    let total = report.findings.len();
    // A clean run must not be an empty message: proto3 drops zero values,
    // and `{}` reads as a broken answer (docs/operations.md §9).
    Ok(Response::new(pb::RunReconciliationResponse {
        fixed: report.fixed as i64,
        total_findings: total as i64,
        truncated: total > RUN_FINDINGS_MAX,
        clean: total == 0,
        checked_at: Some(to_proto(now)),
        checked_kinds: reconcile::checked_kinds().map(|k| convert::finding_kind(k) as i32).collect(),
        findings: report.findings.into_iter().take(RUN_FINDINGS_MAX).map(finding).collect(),
    }))
}

#[instrument(skip_all)]
pub(super) async fn list_findings(app: &App, req: Request<pb::ListFindingsRequest>) -> RpcResult<pb::ListFindingsResponse> {
    require_admin(&req)?;
    let r = req.into_inner();
    let mut v = Violations::new();
    let size = page_size(r.page_size, &mut v);
    let after = page_after(&r.page_token, parse_finding_page_token, &mut v);
    v.finish()?;
    let app = app.clone();
    let now = app.clock.now();
    let (rows, next) = run(async move {
        let stuck = app.config.stuck_session_after;
        reconcile::page(&app, now, stuck, size as usize, after).await
    })
    .await?;
    Ok(Response::new(pb::ListFindingsResponse {
        findings: rows.into_iter().map(finding).collect(),
        next_page_token: next.map(|(k, subject)| finding_page_token(k, &subject)).unwrap_or_default(),
        checked_at: Some(to_proto(now)),
    }))
}

#[instrument(skip_all)]
pub(super) async fn get_usage_stats(app: &App, req: Request<pb::GetUsageStatsRequest>) -> RpcResult<pb::GetUsageStatsResponse> {
    require_admin(&req)?;
    let r = req.into_inner();
    let today = app.clock.now().date_naive();
    let mut v = Violations::new();
    let from = day("from_day", &r.from_day, today - Duration::days(30), &mut v);
    let to = day("to_day", &r.to_day, today, &mut v);
    if from > to {
        v.add("from_day", "must not be after to_day");
    }
    let size = page_size(r.page_size, &mut v);
    let after = page_after(&r.page_token, parse_stats_page_token, &mut v);
    v.finish()?;
    let app = app.clone();
    let (rows, next) = run(async move { stats::list(&mut *app.conn().await?, from, to, size, after).await }).await?;
    // The days as resolved (defaults included) go back with every page, so
    // an empty range still says what was looked at (docs/operations.md §9).
    Ok(Response::new(pb::GetUsageStatsResponse {
        from_day: from.to_string(),
        to_day: to.to_string(),
        days_in_range: i32::try_from((to - from).num_days() + 1).unwrap_or(i32::MAX),
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
