//! Step 1 of the renewal job: expiring PAST_DUE subscriptions whose grace
//! period is over.
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use uuid::Uuid;

use super::Settings;
use crate::{
    App, Result,
    orders::{self, Status as OrderStatus},
    schema::{orders as o, subscriptions as s},
    subscriptions::{self, Status},
};

/// PAST_DUE past the grace period → EXPIRED, renewal orders cancelled. Each
/// in its own transaction, order rows locked before the subscription (the
/// capture path's order), re-checked after locking.
pub(super) async fn expire_due(app: &App, now: DateTime<Utc>, st: Settings, batch: i64) -> Result<usize> {
    let mut conn = app.conn().await?;
    let due: Vec<Uuid> = s::table
        .filter(s::status.eq(Status::PastDue))
        .filter(s::period_end.le(now - st.grace))
        .select(s::id)
        .limit(batch)
        .load(&mut conn)
        .await?;
    let mut expired = 0;
    for id in due {
        let done = shared::retry_tx!(&mut conn, shared::db::Races::Conflicts, |c| {
            let renewals: Vec<String> = o::table
                .filter(o::renews_subscription_id.eq(id))
                .filter(o::status.eq(OrderStatus::Created))
                .select(o::id)
                .for_update()
                .load(c)
                .await?;
            let sub = subscriptions::lock(c, id).await?;
            // Its renewal may count as paid again (a refund of it failed, a
            // late capture): the period reopens instead.
            if subscriptions::roll_if_due(c, &sub, now).await? {
                return Ok::<_, crate::Error>(false);
            }
            if sub.status != Status::PastDue || now < sub.period_end + st.grace {
                return Ok::<_, crate::Error>(false);
            }
            orders::cancel_renewals_of(c, id, now).await?;
            diesel::update(s::table.find(id))
                .set((s::status.eq(Status::Expired), s::ended_at.eq(now), s::updated_at.eq(now)))
                .execute(c)
                .await?;
            tracing::info!(subscription_id = %id, user_id = %sub.user_id, cancelled_orders = renewals.len(), "unpaid after the grace period: expired");
            Ok(true)
        })?;
        expired += usize::from(done);
    }
    Ok(expired)
}
