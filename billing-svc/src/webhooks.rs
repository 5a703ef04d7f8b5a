//! Gateway webhooks: signature over the raw body, an inbox keyed by event id
//! (a redelivery is acknowledged, not reprocessed), and `payment.captured` /
//! `order.paid` through the same capture path as VerifyPayment.
use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};
use serde_json::Value;
use shared::db::Conn;
use uuid::Uuid;

use crate::{App, Error, Result, error::TX_ATTEMPTS, payments, schema::webhook_events as ev};

/// Largest body accepted (Razorpay's are a few KiB).
pub const MAX_BODY_BYTES: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub duplicate: bool,
    pub event_type: String,
    /// PROCESSED | IGNORED | DISCREPANCY
    pub outcome: String,
    pub subscription_id: Option<Uuid>,
}

/// The payment fields of a capture event.
#[derive(Debug)]
struct Payment {
    id: String,
    order_id: String,
    amount: i64,
    currency: String,
}

fn payment_of(event: &Value) -> Result<Payment> {
    let p = &event["payload"]["payment"]["entity"];
    let field = |name: &str| p[name].as_str().map(str::to_owned);
    match (field("id"), field("order_id"), p["amount"].as_i64(), field("currency")) {
        (Some(id), Some(order_id), Some(amount), Some(currency)) => Ok(Payment { id, order_id, amount, currency }),
        _ => Err(Error::invalid("body", "payload.payment.entity needs id, order_id, amount and currency")),
    }
}

pub async fn handle(app: &App, body: &[u8], signature: &str, event_id: &str) -> Result<Outcome> {
    if !app.gateway.webhook_signature_valid(body, signature) {
        tracing::warn!(event_id, "webhook signature mismatch");
        return Err(Error::BadSignature);
    }
    let event: Value = serde_json::from_slice(body).map_err(|_| Error::invalid("body", "is not valid JSON"))?;
    let event_type = event["event"]
        .as_str()
        .filter(|t| !t.is_empty())
        .ok_or_else(|| Error::invalid("body", "has no \"event\" type"))?
        .to_owned();
    let capture = matches!(event_type.as_str(), "payment.captured" | "order.paid");
    let payment = if capture { Some(payment_of(&event)?) } else { None };
    let now = app.clock.now();
    let mut conn = app.conn().await?;
    let mut attempt = 1;
    loop {
        let run = conn.transaction(async |c| process(c, body, event_id, &event_type, payment.as_ref(), now).await).await;
        match run {
            Err(e) if e.is_retryable() && attempt < TX_ATTEMPTS => attempt += 1,
            other => return other,
        }
    }
}

async fn process(
    conn: &mut Conn,
    body: &[u8],
    event_id: &str,
    event_type: &str,
    payment: Option<&Payment>,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Outcome> {
    let inserted = diesel::insert_into(ev::table)
        .values((
            ev::event_id.eq(event_id),
            ev::event_type.eq(event_type),
            ev::body.eq(body),
            ev::order_id.eq(payment.map(|p| p.order_id.clone())),
            ev::outcome.eq("RECEIVED"),
            ev::received_at.eq(now),
        ))
        .on_conflict(ev::event_id)
        .do_nothing()
        .execute(conn)
        .await?;
    if inserted == 0 {
        let (stored_type, outcome): (String, String) =
            ev::table.find(event_id).select((ev::event_type, ev::outcome)).first(conn).await?;
        return Ok(Outcome { duplicate: true, event_type: stored_type, outcome, subscription_id: None });
    }
    let (outcome, detail, subscription_id) = match payment {
        None => ("IGNORED", String::new(), None),
        Some(p) => match crate::orders::get(conn, &p.order_id).await {
            Err(Error::NotFound { .. }) => ("DISCREPANCY", format!("unknown order {}", p.order_id), None),
            Err(e) => return Err(e),
            Ok(order) if order.amount_minor != p.amount || !order.currency.eq_ignore_ascii_case(&p.currency) => (
                "DISCREPANCY",
                format!("paid {} {} but order {} is {} {}", p.amount, p.currency, order.id, order.amount_minor, order.currency),
                None,
            ),
            Ok(order) => match payments::capture_in_tx(conn, &order.id, &p.id, now).await {
                Ok(c) => ("PROCESSED", String::new(), Some(c.subscription.id)),
                Err(Error::FailedPrecondition { description, .. }) => ("DISCREPANCY", description, None),
                Err(e) => return Err(e),
            },
        },
    };
    if outcome == "DISCREPANCY" {
        tracing::warn!(event_id, %detail, "webhook recorded as a discrepancy for reconciliation");
    }
    diesel::update(ev::table.find(event_id)).set((ev::outcome.eq(outcome), ev::detail.eq(&detail))).execute(conn).await?;
    Ok(Outcome { duplicate: false, event_type: event_type.to_owned(), outcome: outcome.to_owned(), subscription_id })
}
