//! ListFindings paging: a page of what a run without `fix` would report
//! now, continued after a (kind, subject) position.
use chrono::{DateTime, Utc};

use super::{
    Finding, FindingKind,
    checks::{CHECKS, check},
};
use crate::{App, Result};

/// A page of what a run without `fix` would report now, after `after`
/// (kind, subject), and the position to continue after when more follow.
/// Findings are not stored, so each page runs the checks again (they only
/// read); checks before the token's kind are skipped.
pub async fn page(
    app: &App,
    now: DateTime<Utc>,
    stuck_after: chrono::Duration,
    page_size: usize,
    after: Option<(FindingKind, String)>,
) -> Result<(Vec<Finding>, Option<(FindingKind, String)>)> {
    let start = match &after {
        Some((k, _)) => CHECKS.iter().position(|(c, _)| c == k).unwrap_or(CHECKS.len()),
        None => 0,
    };
    let mut out = Vec::new();
    for (kind, sql) in &CHECKS[start..] {
        for row in check(app, sql, now, stuck_after).await? {
            if let Some((k, subject)) = &after
                && k == kind
                && row.subject.as_str() <= subject.as_str()
            {
                continue;
            }
            if out.len() == page_size {
                let next = out.last().map(|f: &Finding| (f.kind, f.subject_id.clone()));
                return Ok((out, next));
            }
            out.push(Finding { kind: *kind, subject_id: row.subject, detail: row.detail, fixed: false });
        }
    }
    Ok((out, None))
}
