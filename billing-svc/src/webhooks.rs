//! Gateway webhooks: signature over the raw body, an inbox keyed by event id
//! (a redelivery is acknowledged, not reprocessed), `payment.captured` /
//! `order.paid` through the same capture path as VerifyPayment (a payment
//! that saved a card or mandate also saves it for renewals), a late
//! `payment.authorized` captured at the gateway when its order can take it
//! and refused explicitly otherwise, `token.cancelled` / `token.rejected` /
//! `token.paused` forgetting that saved method, and `refund.processed` /
//! `refund.failed` settling a PENDING refund (only billing's: its payment
//! and amount must agree; a contradiction is REJECTED for review).
//!
//! Every field taken from a body is bounded and checked before it reaches
//! the database. A signed event whose content is refused (not JSON, no
//! event type, a capture without valid payment fields) is still stored, raw,
//! with outcome REJECTED and acknowledged, so the gateway stops retrying and
//! reconciliation shows it to an operator.
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use serde_json::Value;
use shared::{
    db::{Conn, Races},
    error::ServiceError,
};
use uuid::Uuid;

use crate::{
    App, Error, Result,
    discrepancies::Kind,
    discrepancies::Source,
    gateway::{GatewayError, GatewayPayment, PaymentStatus, SavedMethod},
    money::Money,
    payments::{self, Capture, Payment},
    refunds,
    schema::webhook_events as ev,
    subscriptions,
};

/// Largest body accepted (Razorpay's are a few KiB).
pub const MAX_BODY_BYTES: usize = 1 << 20;
/// Longest gateway id (payment, order) or event type accepted from a body.
const MAX_FIELD: usize = 64;

shared::text_enum! {
    /// What became of a stored event (docs/design.md, "Webhook outcomes").
    /// RECEIVED exists only inside the transaction that stores the event.
    pub enum EventOutcome {
        Received = "RECEIVED",
        Processed = "PROCESSED",
        Ignored = "IGNORED",
        Discrepancy = "DISCREPANCY",
        Rejected = "REJECTED",
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub duplicate: bool,
    pub event_type: String,
    pub outcome: EventOutcome,
    pub subscription_id: Option<Uuid>,
}

/// The payment fields of a capture event, checked.
#[derive(Debug)]
struct PaymentFields {
    id: String,
    order_id: String,
    amount: i64,
    currency: String,
    saved: Option<SavedMethod>,
}

/// What the body says, or why its content is refused.
enum Content {
    Capture(String, PaymentFields),
    /// A refund settled (what the event says of it).
    Refund(String, refunds::Event),
    /// `payment.authorized`: not money billing holds until captured.
    Authorized(String, PaymentFields),
    /// A saved method's token that can no longer be charged (its id).
    TokenUnusable(String, String),
    /// An authorization billing captured at the gateway: the gateway's
    /// record of the captured payment.
    CapturedHere(String, PaymentFields, GatewayPayment),
    /// An authorization of one of billing's orders that must not be taken
    /// (order id, why): not captured, stored REJECTED.
    AuthorizationRefused(String, String, String),
    /// An authorization of an order billing did not create (why).
    AuthorizationIgnored(String, String),
    Other(String),
    Refused(String),
}

/// Gateway ids are short ASCII tokens (`pay_…`, `order_…`).
fn gateway_id(v: &Value) -> Option<String> {
    let s = v.as_str()?;
    let ok = !s.is_empty() && s.len() <= MAX_FIELD && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    ok.then(|| s.to_owned())
}

/// A short free-text field (email, phone) without control characters.
fn text_field(v: &Value, max: usize) -> Option<String> {
    let s = v.as_str()?.trim();
    (!s.is_empty() && s.len() <= max && !s.chars().any(char::is_control)).then(|| s.to_owned())
}

fn event_type(v: &Value) -> Option<String> {
    let s = v.as_str()?;
    let ok = !s.is_empty() && s.len() <= MAX_FIELD && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    ok.then(|| s.to_owned())
}

fn parse(body: &[u8]) -> Content {
    let Ok(event) = serde_json::from_slice::<Value>(body) else { return Content::Refused("body is not valid JSON".into()) };
    let Some(kind) = event_type(&event["event"]) else {
        return Content::Refused(format!("\"event\" must be 1..{MAX_FIELD} characters of [A-Za-z0-9._-]"));
    };
    let settled = match kind.as_str() {
        "refund.processed" => Some(refunds::Status::Processed),
        "refund.failed" => Some(refunds::Status::Failed),
        _ => None,
    };
    if let Some(status) = settled {
        let entity = &event["payload"]["refund"]["entity"];
        let key = entity["notes"]["refund_key"]
            .as_str()
            .filter(|k| !k.is_empty() && k.len() <= 128 && !k.chars().any(char::is_control));
        // The payment and amount decide whether a key match is billing's
        // refund (another integration may use the same key); Razorpay
        // always sends them.
        return match (gateway_id(&entity["id"]), gateway_id(&entity["payment_id"]), entity["amount"].as_i64().filter(|a| *a > 0))
        {
            (Some(id), Some(payment_id), Some(amount_minor)) => Content::Refund(
                kind,
                refunds::Event { gateway_refund_id: id, refund_key: key.map(str::to_owned), payment_id, amount_minor, status },
            ),
            _ => Content::Refused(format!(
                "payload.refund.entity needs id and payment_id (1..{MAX_FIELD} of [A-Za-z0-9_-]) and an amount > 0"
            )),
        };
    }
    // Razorpay's token states: a cancelled, rejected or paused mandate can
    // no longer be charged (confirmed needs nothing: the capture saved it).
    if matches!(kind.as_str(), "token.cancelled" | "token.rejected" | "token.paused") {
        return match gateway_id(&event["payload"]["token"]["entity"]["id"]) {
            Some(id) => Content::TokenUnusable(kind, id),
            None => Content::Refused(format!("payload.token.entity.id must be 1..{MAX_FIELD} of [A-Za-z0-9_-]")),
        };
    }
    let authorized = kind == "payment.authorized";
    if !authorized && !matches!(kind.as_str(), "payment.captured" | "order.paid") {
        return Content::Other(kind);
    }
    let p = &event["payload"]["payment"]["entity"];
    let currency = p["currency"].as_str().filter(|c| c.len() == 3 && c.bytes().all(|b| b.is_ascii_alphabetic()));
    match (gateway_id(&p["id"]), gateway_id(&p["order_id"]), p["amount"].as_i64().filter(|a| *a >= 0), currency) {
        (Some(id), Some(order_id), Some(amount), Some(currency)) => {
            let saved = match (gateway_id(&p["customer_id"]), gateway_id(&p["token_id"])) {
                // Email and contact go with every later recurring charge.
                (Some(customer_id), Some(token_id)) => Some(SavedMethod {
                    email: text_field(&p["email"], 254),
                    contact: text_field(&p["contact"], 32),
                    ..SavedMethod::new(customer_id, token_id)
                }),
                _ => None,
            };
            let fields = PaymentFields { id, order_id, amount, currency: currency.to_ascii_uppercase(), saved };
            if authorized { Content::Authorized(kind, fields) } else { Content::Capture(kind, fields) }
        }
        _ => Content::Refused(format!(
            "payload.payment.entity needs id and order_id (1..{MAX_FIELD} of [A-Za-z0-9_-]), amount >= 0 and a 3-letter currency"
        )),
    }
}

pub async fn handle(app: &App, body: &[u8], signature: &str, event_id: &str) -> Result<Outcome> {
    if !app.gateway.webhook_signature_valid(body, signature) {
        tracing::warn!(event_id, "webhook signature mismatch");
        return Err(Error::BadSignature);
    }
    let mut content = parse(body);
    if let Content::Authorized(kind, p) = content {
        content = authorization(app, event_id, kind, p).await?;
    }
    let now = app.clock.now();
    let mut conn = app.conn().await?;
    // The inbox row and the capture commit together; a unique violation is a
    // concurrent capture of the same payment, answered by the next attempt.
    shared::retry_tx!(&mut conn, Races::ConflictsAndUnique, |c| process(c, body, event_id, &content, now).await)
}

/// A `payment.authorized` (auto-capture off or failed): the customer's money
/// is only held by their bank, and the gateway releases it uncaptured after
/// a few days. If the order can take this payment (the capture rules,
/// previewed without writing), it is captured through the gateway's API —
/// with no database connection held — and then goes the normal capture path
/// as a captured payment. Otherwise it is not captured and the event is
/// stored REJECTED with why, for an operator (IGNORED for an order this
/// system did not create: its owner decides). A capture of unknown outcome
/// is an error the gateway retries (HTTP 503); the retry captures again,
/// which the gateway answers with the payment already captured. Because an
/// earlier delivery may have captured it before the order changed, no
/// refusal is stored before the gateway says the payment is not captured
/// ([`refusal`]). (docs/design.md, Invariants 28.)
async fn authorization(app: &App, event_id: &str, kind: String, p: PaymentFields) -> Result<Content> {
    let payment = Payment {
        order_id: &p.order_id,
        payment_id: &p.id,
        paid: Some(Money { minor: p.amount, currency: &p.currency }),
        saved_method: p.saved.as_ref(),
        source: Source::Webhook,
    };
    let verdict = {
        let mut conn = app.conn().await?;
        // A redelivery is answered from the inbox, without a gateway call.
        if ev::table.find(event_id).count().get_result::<i64>(&mut conn).await? > 0 {
            // `process` finds the stored row and answers with its outcome.
            return Ok(Content::Other(kind));
        }
        payments::preview(&mut conn, payment, app.clock.now()).await
    };
    match verdict {
        // Paid by this very payment already: the normal path replays it.
        Ok(Capture::Captured(c)) if c.replayed => return Ok(Content::Capture(kind, p)),
        Ok(Capture::Captured(_)) => {}
        Ok(Capture::Discrepancy(d)) if d.kind == Kind::UnknownOrder => {
            return Ok(Content::AuthorizationIgnored(
                kind,
                format!("{}; not captured, left to the integration that created it", d.detail),
            ));
        }
        Ok(Capture::Discrepancy(d)) => return refusal(app, kind, p, format!("not captured: {}", d.detail)).await,
        Err(Error::Service(ServiceError::FailedPrecondition { description, .. })) => {
            return refusal(app, kind, p, format!("not captured: {description}")).await;
        }
        Err(e) => return Err(e),
    }
    let captured = match app.gateway.capture_payment(&p.id, p.amount, &p.currency).await {
        Ok(g) if g.status == PaymentStatus::Captured => g,
        Ok(g) => {
            // Not captured after all: unknown, so the gateway redelivers.
            return Err(GatewayError::Unavailable {
                message: format!("capture of {} answered with status {:?}", p.id, g.status),
                retry_after: None,
            }
            .into());
        }
        Err(GatewayError::Refused { code, message }) => {
            // Expired, voided or already released: nothing was taken, once
            // the gateway's record confirms it.
            return refusal(app, kind, p, format!("the gateway refused its capture ({code}): {message}")).await;
        }
        Err(e) => return Err(e.into()),
    };
    tracing::info!(payment_id = %p.id, order_id = %p.order_id, "authorized payment captured through the gateway");
    Ok(Content::CapturedHere(kind, p, captured))
}

/// Refuses an authorization of one of billing's orders (`why`), unless the
/// gateway says the payment is captured: an earlier delivery's capture
/// whose answer was lost (or whose transaction failed) took the money, and
/// the order changed before this redelivery (cancelled, paid by another
/// payment, superseded). That money then goes the captured path, where the
/// capture rules record it as a discrepancy that reconciliation refunds,
/// instead of a "not captured" that nobody refunds. A look-up that fails
/// leaves it unknown: UNAVAILABLE (HTTP 503), and the gateway redelivers.
/// Called with no database connection held.
async fn refusal(app: &App, kind: String, p: PaymentFields, why: String) -> Result<Content> {
    match app.gateway.fetch_payment(&p.id).await {
        Ok(Some(g)) if g.status == PaymentStatus::Captured => {
            tracing::warn!(payment_id = %p.id, order_id = %p.order_id, %why, "authorization refused but captured at the gateway");
            Ok(Content::CapturedHere(kind, p, g))
        }
        Ok(_) => Ok(Content::AuthorizationRefused(kind, p.order_id, why)),
        Err(e) => Err(GatewayError::Unavailable {
            message: format!("payment {} not captured here ({why}), but its state at the gateway could not be read: {e}", p.id),
            retry_after: None,
        }
        .into()),
    }
}

async fn process(
    conn: &mut Conn,
    body: &[u8],
    event_id: &str,
    content: &Content,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Outcome> {
    let (event_type, order_id) = match content {
        Content::Capture(t, p) | Content::CapturedHere(t, p, _) => (t.as_str(), Some(p.order_id.as_str())),
        Content::AuthorizationRefused(t, order_id, _) => (t.as_str(), Some(order_id.as_str())),
        Content::Refund(t, ..)
        | Content::Other(t)
        | Content::Authorized(t, _)
        | Content::TokenUnusable(t, _)
        | Content::AuthorizationIgnored(t, _) => (t.as_str(), None),
        Content::Refused(_) => ("(refused)", None),
    };
    let inserted = diesel::insert_into(ev::table)
        .values((
            ev::event_id.eq(event_id),
            ev::event_type.eq(event_type),
            ev::body.eq(body),
            ev::order_id.eq(order_id),
            ev::outcome.eq(EventOutcome::Received),
            ev::received_at.eq(now),
        ))
        .on_conflict(ev::event_id)
        .do_nothing()
        .execute(conn)
        .await?;
    if inserted == 0 {
        let (stored_type, outcome): (String, EventOutcome) =
            ev::table.find(event_id).select((ev::event_type, ev::outcome)).first(conn).await?;
        return Ok(Outcome { duplicate: true, event_type: stored_type, outcome, subscription_id: None });
    }
    let (outcome, detail, subscription_id) = match content {
        Content::Refused(why) => (EventOutcome::Rejected, why.clone(), None),
        Content::Other(_) => (EventOutcome::Ignored, String::new(), None),
        // `handle` turns every authorization into one of the variants below.
        Content::Authorized(..) => (EventOutcome::Ignored, "authorization not examined".to_owned(), None),
        Content::AuthorizationRefused(_, _, why) => (EventOutcome::Rejected, why.clone(), None),
        Content::AuthorizationIgnored(_, why) => (EventOutcome::Ignored, why.clone(), None),
        Content::TokenUnusable(kind, token_id) => {
            let why = format!("{kind}: the gateway no longer charges this token");
            if subscriptions::forget_method(conn, token_id, &why, now).await?.is_empty() {
                (EventOutcome::Ignored, format!("no subscription holds token {token_id}"), None)
            } else {
                (EventOutcome::Processed, String::new(), None)
            }
        }
        Content::Refund(_, e) => match refunds::settle(conn, e, now).await? {
            refunds::Settled::Applied => (EventOutcome::Processed, String::new(), None),
            refunds::Settled::Ignored(why) => (EventOutcome::Ignored, why, None),
            refunds::Settled::Rejected(why) => (EventOutcome::Rejected, why, None),
        },
        Content::Capture(_, p) | Content::CapturedHere(_, p, _) => {
            // Captured here: what the gateway says it captured is what counts.
            let (paid, saved) = match content {
                Content::CapturedHere(_, _, g) => {
                    (Money { minor: g.amount_minor, currency: &g.currency }, p.saved.as_ref().or(g.saved_method.as_ref()))
                }
                _ => (Money { minor: p.amount, currency: &p.currency }, p.saved.as_ref()),
            };
            let payment = Payment {
                order_id: &p.order_id,
                payment_id: &p.id,
                paid: Some(paid),
                saved_method: saved,
                source: Source::Webhook,
            };
            match payments::capture_in_tx(conn, payment, now).await {
                Ok(Capture::Captured(c)) => (EventOutcome::Processed, String::new(), Some(c.subscription.id)),
                Ok(Capture::Discrepancy(d)) => (EventOutcome::Discrepancy, d.detail, None),
                Err(Error::Service(ServiceError::FailedPrecondition { description, .. })) => {
                    (EventOutcome::Rejected, description, None)
                }
                Err(e) => return Err(e),
            }
        }
    };
    if outcome == EventOutcome::Rejected {
        tracing::warn!(event_id, %detail, "webhook content refused; stored for review");
    }
    diesel::update(ev::table.find(event_id)).set((ev::outcome.eq(outcome), ev::detail.eq(&detail))).execute(conn).await?;
    Ok(Outcome { duplicate: false, event_type: event_type.to_owned(), outcome, subscription_id })
}
