//! The reverse direction of checkout's completion sync: paid orders whose
//! checkout session checkout does not know. Informational (an operator looks
//! at them); run by `billing-svc reconcile` when CHECKOUT_ENDPOINT is set.
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use proto::checkout::v1::{GetSessionRequest, checkout_service_client::CheckoutServiceClient};
use shared::{client::Budget, db::Pool};
use tonic::Code;
use uuid::Uuid;

use crate::{orders::Status as OrderStatus, reconcile::Finding, schema::orders};

/// Checks up to `limit` orders paid since `since`, one GetSession each.
pub async fn paid_orders_unknown_to_checkout(
    pool: &Pool,
    endpoint: &str,
    token: &str,
    since: DateTime<Utc>,
    limit: i64,
) -> anyhow::Result<Vec<Finding>> {
    // The connection goes back to the pool before the RPCs start.
    let paid: Vec<(String, Uuid)> = orders::table
        .filter(orders::status.eq(OrderStatus::Paid))
        // Renewals charged automatically never had a checkout session.
        .filter(orders::checkout_session_id.is_not_null())
        .filter(orders::paid_at.ge(since))
        .order(orders::paid_at.desc())
        .limit(limit)
        .select((orders::id, orders::checkout_session_id.assume_not_null()))
        .load(&mut *shared::db::conn(pool).await?)
        .await
        .map_err(crate::Error::from)?;
    let mut client = CheckoutServiceClient::connect(endpoint.to_owned())
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach checkout at {endpoint} (CHECKOUT_ENDPOINT): {e}"))?;
    let mut findings = Vec::new();
    for (order_id, session_id) in paid {
        let budget = Budget::new(std::time::Duration::from_secs(5));
        match client.get_session(budget.request(GetSessionRequest { id: session_id.to_string() }, token)).await {
            Ok(_) => {}
            Err(s) if s.code() == Code::NotFound => findings.push(Finding {
                kind: crate::reconcile::FindingKind::PaidOrderUnknownToCheckout,
                subject_id: order_id,
                detail: format!("checkout has no session {session_id}"),
                fixed: false,
            }),
            Err(s) => anyhow::bail!("checkout answered {:?}: {}", s.code(), s.message()),
        }
    }
    Ok(findings)
}
