//! Daily usage rollup per plan (sessions, minutes, credits), recomputed for
//! today and yesterday on every run, so running it twice changes nothing.
use chrono::{DateTime, Duration, NaiveDate, Utc};
use diesel::{prelude::*, sql_types};
use diesel_async::RunQueryDsl;
use shared::db::Conn;

use crate::{Result, schema::usage_stats_daily as st};

pub async fn rollup(conn: &mut Conn, now: DateTime<Utc>) -> Result<usize> {
    let since = (now - Duration::days(1)).date_naive();
    Ok(diesel::sql_query(
        "INSERT INTO usage_stats_daily (day, plan_id, sessions, minutes, credits, updated_at) \
         SELECT (us.started_at AT TIME ZONE 'UTC')::date, s.plan_id, count(*), \
                coalesce(sum(ceil(extract(epoch FROM coalesce(us.ended_at, $1) - us.started_at) / 60)), 0)::bigint, \
                coalesce(sum(us.units_charged), 0)::bigint, $1 \
           FROM usage_sessions us JOIN subscriptions s ON s.id = us.subscription_id \
          WHERE us.started_at >= $2::date \
          GROUP BY 1, 2 \
         ON CONFLICT (day, plan_id) DO UPDATE \
            SET sessions = EXCLUDED.sessions, minutes = EXCLUDED.minutes, \
                credits = EXCLUDED.credits, updated_at = EXCLUDED.updated_at",
    )
    .bind::<sql_types::Timestamptz, _>(now)
    .bind::<sql_types::Date, _>(since)
    .execute(conn)
    .await?)
}

#[derive(Debug, Clone, Queryable)]
pub struct DailyStat {
    pub day: NaiveDate,
    pub plan_id: String,
    pub sessions: i64,
    pub minutes: i64,
    pub credits: i64,
}

/// A page of the rollup for the days `from..=to`, ordered by day then plan:
/// at most `page_size` rows after the position `after` (a day and plan id),
/// and the position of the last row when more follow.
pub async fn list(
    conn: &mut Conn,
    from: NaiveDate,
    to: NaiveDate,
    page_size: i64,
    after: Option<(NaiveDate, String)>,
) -> Result<(Vec<DailyStat>, Option<(NaiveDate, String)>)> {
    let mut q = st::table
        .filter(st::day.ge(from).and(st::day.le(to)))
        .select((st::day, st::plan_id, st::sessions, st::minutes, st::credits))
        .into_boxed();
    if let Some((day, plan_id)) = after {
        q = q.filter(st::day.gt(day).or(st::day.eq(day).and(st::plan_id.gt(plan_id))));
    }
    let mut rows: Vec<DailyStat> = q.order((st::day, st::plan_id)).limit(page_size + 1).load(conn).await?;
    let next = if rows.len() as i64 > page_size {
        rows.truncate(page_size as usize);
        rows.last().map(|s| (s.day, s.plan_id.clone()))
    } else {
        None
    };
    Ok((rows, next))
}
