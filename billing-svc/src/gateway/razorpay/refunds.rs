//! Refunds: a normal refund sent with its idempotency key, and the look-up of
//! a refund by billing's refund key among a payment's refunds.

use reqwest::Method;
use serde_json::json;

use super::wire::{Collection, RefundEntity, check_id, refund_status, unavailable};
use super::{MAX_RECEIPT, MAX_REFUND_PAGES, REFUND_PAGE, Razorpay};
use crate::gateway::{GatewayError, GatewayRefund, refund_idempotency_key};

impl Razorpay {
    pub(super) async fn refund(
        &self,
        payment_id: &str,
        amount_minor: i64,
        refund_key: &str,
    ) -> Result<GatewayRefund, GatewayError> {
        check_id("payment id", payment_id)?;
        let mut body = json!({
            "amount": amount_minor,
            "speed": "normal",
            "notes": { "refund_key": refund_key },
        });
        if !refund_key.is_empty() && refund_key.len() <= MAX_RECEIPT {
            body["receipt"] = json!(refund_key);
        }
        // Always sent, billing's refund id or derived from it (see
        // refund_idempotency_key), so that a retried refund (same key, same
        // body) is never made twice at Razorpay.
        let key = refund_idempotency_key(refund_key);
        let r: RefundEntity = self
            .call(
                Method::POST,
                &format!("/v1/payments/{payment_id}/refund"),
                &[],
                Some(&body),
                &[("X-Refund-Idempotency", key.as_str())],
            )
            .await?;
        Ok(GatewayRefund { id: r.id, status: refund_status(&r.status), amount_minor: r.amount })
    }

    /// `GET /v1/payments/:id/refunds`, page by page, for the refund whose
    /// `notes.refund_key` is billing's refund id.
    pub(super) async fn find_refund(&self, payment_id: &str, refund_key: &str) -> Result<Option<GatewayRefund>, GatewayError> {
        check_id("payment id", payment_id)?;
        let path = format!("/v1/payments/{payment_id}/refunds");
        for page in 0..MAX_REFUND_PAGES {
            let skip = (page * REFUND_PAGE).to_string();
            let count = REFUND_PAGE.to_string();
            let found: Collection<RefundEntity> = self.get(&path, &[("count", &count), ("skip", &skip)]).await?;
            let last = found.items.len() < REFUND_PAGE;
            if let Some(r) = found.items.into_iter().find(|r| r.refund_key() == Some(refund_key)) {
                return Ok(Some(GatewayRefund { id: r.id, status: refund_status(&r.status), amount_minor: r.amount }));
            }
            if last {
                return Ok(None);
            }
        }
        // More refunds of one payment than billing ever makes: not a
        // "none" billing could act on.
        Err(unavailable(&format!("GET {path}: more than {} refunds", MAX_REFUND_PAGES * REFUND_PAGE), None))
    }
}
