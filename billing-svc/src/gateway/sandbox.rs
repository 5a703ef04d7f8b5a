//! The built-in sandbox gateway: behaves like Razorpay (order ids,
//! HMAC-SHA256 payment signatures over "order_id|payment_id", signed webhooks
//! with event ids) without leaving the process. The default for `stack` and
//! the tests; `billing-svc sandbox pay` plays its customer.
use super::{
    Gateway, GatewayError, GatewayOrder, GatewayPayment, GatewayRefund, METHOD_UNUSABLE, NewOrder, PaymentStatus, RefundStatus,
    SavedMethod, hex_eq, hmac_hex,
};
use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering},
    },
    time::Duration,
};

use crate::config::GatewayConfig;

/// Clones share the switches and the records of charges and refunds made.
#[derive(Clone)]
pub struct Sandbox {
    config: GatewayConfig,
    fail_charges: Arc<AtomicBool>,
    refunds: Arc<AtomicU8>,
    /// [`Sandbox::set_lose_charge_answers`].
    lose_charge_answers: Arc<AtomicBool>,
    /// [`Sandbox::set_tokens_revoked`].
    tokens_revoked: Arc<AtomicBool>,
    /// [`Sandbox::set_charges_fail_later`].
    charges_fail_later: Arc<AtomicBool>,
    /// [`Sandbox::set_lose_capture_answers`].
    lose_capture_answers: Arc<AtomicBool>,
    /// Every `capture_payment` call, by payment id ([`Sandbox::capture_calls`]).
    capture_calls: Arc<Mutex<Vec<String>>>,
    /// Customers' authorized payments it captured, by payment id: what
    /// `fetch_payment` answers for them (as Razorpay would).
    captured: Arc<Mutex<HashMap<String, GatewayPayment>>>,
    /// The payments its saved-method charges made, by order id: what
    /// `payments_of_order` and `fetch_payment` answer from.
    charges: Arc<Mutex<HashMap<String, Vec<GatewayPayment>>>>,
    made: Arc<Mutex<Vec<MadeRefund>>>,
    /// Refund calls that reached the sandbox.
    refund_calls: Arc<AtomicUsize>,
    /// While true, refund calls wait (after being counted) until released.
    hold: Arc<tokio::sync::watch::Sender<bool>>,
}

/// A refund the sandbox made, as its gateway-side record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MadeRefund {
    pub payment_id: String,
    /// Billing's refund id the call carried (Razorpay: `notes.refund_key`).
    pub refund_key: String,
    pub refund: GatewayRefund,
}

/// How the sandbox answers refunds ([`Sandbox::set_refunds`]). Like a
/// gateway without idempotency keys, it makes a new refund for every
/// accepted call: only billing's look-up keeps a retry from refunding twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum SandboxRefunds {
    /// Processed at once (the default).
    Process = 0,
    /// Refused, the way Razorpay refuses a refund (400).
    Refuse = 1,
    /// The gateway cannot be reached (nothing is made, look-ups fail too).
    Unreachable = 2,
    /// The refund is made (processed), but its answer is lost: the call
    /// times out after reaching the gateway.
    LoseAnswer = 3,
    /// Accepted as `pending`; [`Sandbox::settle_refund`] settles it later.
    Pending = 4,
    /// Razorpay's 409: a request with this key is still being processed.
    /// Nothing is made.
    InProgress = 5,
    /// Like `LoseAnswer`, but the refund made is `pending`.
    LosePendingAnswer = 6,
}

impl std::fmt::Debug for Sandbox {
    // Never print the secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("key_id", &self.config.key_id)
            .field("fail_charges", &self.fail_charges.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Sandbox {
    pub fn new(config: GatewayConfig) -> Self {
        let fail_charges = Arc::new(AtomicBool::new(config.sandbox_fail_charges));
        Self {
            config,
            fail_charges,
            refunds: Arc::new(AtomicU8::new(SandboxRefunds::Process as u8)),
            lose_charge_answers: Arc::default(),
            tokens_revoked: Arc::default(),
            charges_fail_later: Arc::default(),
            lose_capture_answers: Arc::default(),
            capture_calls: Arc::default(),
            captured: Arc::default(),
            charges: Arc::default(),
            made: Arc::default(),
            refund_calls: Arc::default(),
            hold: Arc::new(tokio::sync::watch::channel(false).0),
        }
    }

    /// With true, later charges of a saved method are made (captured and
    /// recorded) but their answer is lost: the caller sees the gateway as
    /// unavailable, as after a timeout once the request reached it.
    pub fn set_lose_charge_answers(&self, lose: bool) {
        self.lose_charge_answers.store(lose, Ordering::Relaxed);
    }

    /// With true, later charges of a saved method are made and their
    /// payment then fails (the bank declines the debit after Razorpay's
    /// pre-debit window): the call answers that payment, `failed`, and it is
    /// recorded (`payments_of_order`, `fetch_payment`).
    pub fn set_charges_fail_later(&self, fail: bool) {
        self.charges_fail_later.store(fail, Ordering::Relaxed);
    }

    /// With true, every saved method's token is revoked: charges are refused
    /// with [`METHOD_UNUSABLE`], as Razorpay refuses a cancelled mandate.
    pub fn set_tokens_revoked(&self, revoked: bool) {
        self.tokens_revoked.store(revoked, Ordering::Relaxed);
    }

    /// With true, later captures of authorized payments are made (the
    /// payment is captured and recorded) but their answer is lost: the
    /// caller sees the gateway as unavailable, as after a timeout once the
    /// request reached it.
    pub fn set_lose_capture_answers(&self, lose: bool) {
        self.lose_capture_answers.store(lose, Ordering::Relaxed);
    }

    /// The payment ids `capture_payment` was called with, in order.
    pub fn capture_calls(&self) -> Vec<String> {
        self.capture_calls.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// The payments saved-method charges made for `order_id`.
    pub fn charges_of(&self, order_id: &str) -> Vec<GatewayPayment> {
        self.records().get(order_id).cloned().unwrap_or_default()
    }

    fn records(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<GatewayPayment>>> {
        // A panic elsewhere while holding the lock leaves the map usable.
        self.charges.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn captures(&self) -> std::sync::MutexGuard<'_, HashMap<String, GatewayPayment>> {
        self.captured.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn recorded(&self, payment_id: &str) -> Option<GatewayPayment> {
        self.records().values().flatten().find(|p| p.id == payment_id).cloned()
    }

    /// The refunds made of `payment_id`, oldest first.
    pub fn refunds_made(&self, payment_id: &str) -> Vec<GatewayRefund> {
        self.made_refunds().into_iter().filter(|m| m.payment_id == payment_id).map(|m| m.refund).collect()
    }

    /// Every refund made, oldest first.
    pub fn made_refunds(&self) -> Vec<MadeRefund> {
        self.made.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Refund calls that reached the sandbox so far (made or not).
    pub fn refund_calls(&self) -> usize {
        self.refund_calls.load(Ordering::SeqCst)
    }

    /// While `held`, refund calls wait inside the gateway (tests race a
    /// second caller against one whose call is in flight).
    pub fn hold_refunds(&self, held: bool) {
        self.hold.send_replace(held);
    }

    /// Settles a pending refund the way the bank's answer would (what a
    /// later look-up reports; the test sends the webhook itself).
    pub fn settle_refund(&self, gateway_refund_id: &str, status: RefundStatus) {
        let mut made = self.made.lock().unwrap_or_else(|p| p.into_inner());
        for m in made.iter_mut().filter(|m| m.refund.id == gateway_refund_id) {
            m.refund.status = status;
        }
    }

    /// How later refunds are answered (tests exercise refusals and outages).
    pub fn set_refunds(&self, answer: SandboxRefunds) {
        self.refunds.store(answer as u8, Ordering::Relaxed);
    }

    /// Declines (true) or captures (false) every later charge of a saved
    /// method, like `SANDBOX_FAIL_CHARGES` at start-up (tests flip it).
    pub fn set_fail_charges(&self, fail: bool) {
        self.fail_charges.store(fail, Ordering::Relaxed);
    }

    /// A `refund.processed` / `refund.failed` webhook body like Razorpay's,
    /// for the refund `gateway_refund_id` made under billing's `refund_key`.
    pub fn refund_event_body(
        status: RefundStatus,
        gateway_refund_id: &str,
        payment_id: &str,
        amount_minor: i64,
        refund_key: &str,
    ) -> Vec<u8> {
        let (event, status) = match status {
            RefundStatus::Failed => ("refund.failed", "failed"),
            RefundStatus::Processed => ("refund.processed", "processed"),
            RefundStatus::Pending => ("refund.created", "pending"),
        };
        serde_json::json!({
            "entity": "event",
            "event": event,
            "payload": { "refund": { "entity": {
                "id": gateway_refund_id,
                "entity": "refund",
                "payment_id": payment_id,
                "amount": amount_minor,
                "notes": { "refund_key": refund_key },
                "status": status,
            }}}
        })
        .to_string()
        .into_bytes()
    }

    /// What the gateway hands the customer after a successful payment.
    pub fn sign_payment(&self, order_id: &str, payment_id: &str) -> String {
        hmac_hex(self.config.key_secret.expose(), format!("{order_id}|{payment_id}").as_bytes())
    }

    /// The `X-Razorpay-Signature` of a webhook body.
    pub fn sign_webhook(&self, body: &[u8]) -> String {
        hmac_hex(self.config.webhook_secret.expose(), body)
    }

    /// A `payment.captured` webhook body like Razorpay's.
    pub fn captured_event_body(order_id: &str, payment_id: &str, amount_minor: i64, currency: &str) -> Vec<u8> {
        Self::captured_event_body_saving(order_id, payment_id, amount_minor, currency, None)
    }

    /// Like [`Sandbox::captured_event_body`]; with `saved` = (customer id,
    /// token id), the payment also saved a card for recurring charges (the
    /// way Razorpay reports a recurring-enabled first payment).
    pub fn captured_event_body_saving(
        order_id: &str,
        payment_id: &str,
        amount_minor: i64,
        currency: &str,
        saved: Option<(&str, &str)>,
    ) -> Vec<u8> {
        let mut body = serde_json::json!({
            "entity": "event",
            "event": "payment.captured",
            "payload": { "payment": { "entity": {
                "id": payment_id,
                "order_id": order_id,
                "amount": amount_minor,
                "currency": currency,
                "status": "captured",
            }}}
        });
        if let Some((customer, token)) = saved {
            body["payload"]["payment"]["entity"]["customer_id"] = customer.into();
            body["payload"]["payment"]["entity"]["token_id"] = token.into();
        }
        body.to_string().into_bytes()
    }

    /// A `payment.authorized` webhook body like Razorpay's (auto-capture off
    /// or failed: the payment waits for a capture).
    pub fn authorized_event_body(order_id: &str, payment_id: &str, amount_minor: i64, currency: &str) -> Vec<u8> {
        serde_json::json!({
            "entity": "event",
            "event": "payment.authorized",
            "contains": ["payment"],
            "payload": { "payment": { "entity": {
                "id": payment_id,
                "entity": "payment",
                "order_id": order_id,
                "amount": amount_minor,
                "currency": currency,
                "status": "authorized",
                "captured": false,
            }}}
        })
        .to_string()
        .into_bytes()
    }

    /// A `token.*` webhook body like Razorpay's recurring-token events
    /// (`event` is e.g. `token.cancelled`).
    pub fn token_event_body(event: &str, customer_id: &str, token_id: &str) -> Vec<u8> {
        let status = event.strip_prefix("token.").unwrap_or(event);
        serde_json::json!({
            "entity": "event",
            "event": event,
            "contains": ["token"],
            "payload": { "token": { "entity": {
                "id": token_id,
                "entity": "token",
                "customer_id": customer_id,
                "method": "card",
                "recurring": true,
                "recurring_details": { "status": status, "failure_reason": null },
            }}}
        })
        .to_string()
        .into_bytes()
    }

    pub fn new_payment_id() -> String {
        format!("pay_{}", uuid::Uuid::new_v4().simple())
    }
}

#[tonic::async_trait]
impl Gateway for Sandbox {
    fn key_id(&self) -> &str {
        &self.config.key_id
    }

    fn payment_signature_valid(&self, order_id: &str, payment_id: &str, signature_hex: &str) -> bool {
        hex_eq(&self.sign_payment(order_id, payment_id), signature_hex)
    }

    fn webhook_signature_valid(&self, body: &[u8], signature_hex: &str) -> bool {
        hex_eq(&self.sign_webhook(body), signature_hex)
    }

    async fn create_order(&self, _order: &NewOrder<'_>) -> Result<GatewayOrder, GatewayError> {
        Ok(GatewayOrder { id: format!("order_{}", uuid::Uuid::new_v4().simple()) })
    }

    /// The sandbox keeps records only of the charges it made and the
    /// authorizations it captured; for another customer's payment the
    /// signature it issued is the proof of payment, as for Razorpay's
    /// checkout handler.
    async fn fetch_payment(&self, payment_id: &str) -> Result<Option<GatewayPayment>, GatewayError> {
        Ok(self.recorded(payment_id).or_else(|| self.captures().get(payment_id).cloned()))
    }

    /// Every refund is processed at once, unless [`Sandbox::set_refunds`]
    /// said otherwise; every one made is recorded for [`Gateway::find_refund`].
    async fn refund(&self, payment_id: &str, amount_minor: i64, refund_key: &str) -> Result<GatewayRefund, GatewayError> {
        self.refund_calls.fetch_add(1, Ordering::SeqCst);
        let mut hold = self.hold.subscribe();
        // The sender lives as long as self: this returns once released.
        let _ = hold.wait_for(|held| !*held).await;
        let answer = self.refunds.load(Ordering::Relaxed);
        match answer {
            1 => {
                return Err(GatewayError::Refused {
                    code: "BAD_REQUEST_ERROR".into(),
                    message: "The refund could not be processed (sandbox: refunds refused)".into(),
                });
            }
            2 => return Err(unreachable()),
            5 => {
                return Err(GatewayError::Unavailable {
                    message: "sandbox: a refund with this key is in progress (409)".into(),
                    retry_after: Some(Duration::from_secs(1)),
                });
            }
            _ => {}
        }
        if amount_minor <= 0 {
            return Err(GatewayError::Refused {
                code: "BAD_REQUEST_ERROR".into(),
                message: "The refund amount provided is invalid".into(),
            });
        }
        let pending = [SandboxRefunds::Pending as u8, SandboxRefunds::LosePendingAnswer as u8].contains(&answer);
        let status = if pending { RefundStatus::Pending } else { RefundStatus::Processed };
        let refund = GatewayRefund { id: format!("rfnd_{}", uuid::Uuid::new_v4().simple()), status, amount_minor };
        self.made.lock().unwrap_or_else(|p| p.into_inner()).push(MadeRefund {
            payment_id: payment_id.to_owned(),
            refund_key: refund_key.to_owned(),
            refund: refund.clone(),
        });
        if [SandboxRefunds::LoseAnswer as u8, SandboxRefunds::LosePendingAnswer as u8].contains(&answer) {
            return Err(GatewayError::Unavailable { message: "sandbox: the refund call timed out".into(), retry_after: None });
        }
        Ok(refund)
    }

    async fn find_refund(&self, payment_id: &str, refund_key: &str) -> Result<Option<GatewayRefund>, GatewayError> {
        if self.refunds.load(Ordering::Relaxed) == SandboxRefunds::Unreachable as u8 {
            return Err(unreachable());
        }
        Ok(self.made_refunds().into_iter().find(|m| m.payment_id == payment_id && m.refund_key == refund_key).map(|m| m.refund))
    }

    /// Captured at once, or declined the way Razorpay declines a card when
    /// `SANDBOX_FAIL_CHARGES` is set.
    async fn charge_saved_method(
        &self,
        _method: &SavedMethod,
        amount_minor: i64,
        currency: &str,
        order_id: &str,
        _receipt: &str,
    ) -> Result<GatewayPayment, GatewayError> {
        if self.tokens_revoked.load(Ordering::Relaxed) {
            return Err(GatewayError::Refused {
                code: METHOD_UNUSABLE.into(),
                message: "the recurring token is cancelled (sandbox: tokens revoked)".into(),
            });
        }
        if self.fail_charges.load(Ordering::Relaxed) {
            return Err(GatewayError::Refused {
                code: "BAD_REQUEST_ERROR".into(),
                message: "Payment failed: the card was declined (sandbox: SANDBOX_FAIL_CHARGES)".into(),
            });
        }
        let failed = self.charges_fail_later.load(Ordering::Relaxed);
        let payment = GatewayPayment {
            id: Self::new_payment_id(),
            order_id: Some(order_id.to_owned()),
            status: if failed { PaymentStatus::Failed } else { PaymentStatus::Captured },
            amount_minor,
            currency: currency.to_owned(),
            saved_method: None,
        };
        self.records().entry(order_id.to_owned()).or_default().push(payment.clone());
        if self.lose_charge_answers.load(Ordering::Relaxed) {
            return Err(GatewayError::Unavailable {
                message: "sandbox: the charge was made but its answer was lost".into(),
                retry_after: None,
            });
        }
        Ok(payment)
    }

    async fn payments_of_order(&self, order_id: &str) -> Result<Option<Vec<GatewayPayment>>, GatewayError> {
        Ok(Some(self.charges_of(order_id)))
    }

    /// A payment it charged is captured (if it was not); any other is taken
    /// as authorized for `amount_minor` and captured (once: a later call
    /// answers the payment as it was captured). Recorded either way, also
    /// when [`Sandbox::set_lose_capture_answers`] then loses the answer.
    async fn capture_payment(&self, payment_id: &str, amount_minor: i64, currency: &str) -> Result<GatewayPayment, GatewayError> {
        self.capture_calls.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(payment_id.to_owned());
        let charged = self.records().values_mut().flatten().find(|p| p.id == payment_id).map(|p| {
            p.status = PaymentStatus::Captured;
            p.clone()
        });
        let payment = match charged {
            Some(p) => p,
            None => self
                .captures()
                .entry(payment_id.to_owned())
                .or_insert_with(|| GatewayPayment {
                    id: payment_id.to_owned(),
                    order_id: None,
                    status: PaymentStatus::Captured,
                    amount_minor,
                    currency: currency.to_owned(),
                    saved_method: None,
                })
                .clone(),
        };
        if self.lose_capture_answers.load(Ordering::Relaxed) {
            return Err(GatewayError::Unavailable {
                message: "sandbox: the capture was made but its answer was lost".into(),
                retry_after: None,
            });
        }
        Ok(payment)
    }

    /// The sandbox registers no mandates.
    async fn create_customer(&self, _user_id: &str) -> Result<Option<String>, GatewayError> {
        Ok(None)
    }
}

fn unreachable() -> GatewayError {
    GatewayError::Unavailable { message: "sandbox: gateway unreachable".into(), retry_after: None }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sandbox() -> Sandbox {
        Sandbox::new(GatewayConfig {
            key_id: "k".into(),
            key_secret: "s3cret".into(),
            webhook_secret: "wh".into(),
            ..Default::default()
        })
    }

    fn card() -> SavedMethod {
        SavedMethod::new("cust_1".into(), "token_1".into())
    }

    #[tokio::test]
    async fn refunds_are_processed() {
        let r = sandbox().refund("pay_1", 500, "refund-key-1").await.unwrap();
        assert!(r.id.starts_with("rfnd_"));
        assert_eq!((r.status, r.amount_minor), (RefundStatus::Processed, 500));
        assert!(matches!(sandbox().refund("pay_1", 0, "refund-key-2").await, Err(GatewayError::Refused { .. })));
    }

    #[tokio::test]
    async fn refunds_made_are_found_by_key_even_when_the_answer_was_lost() {
        let g = sandbox();
        g.set_refunds(SandboxRefunds::LoseAnswer);
        assert!(matches!(g.refund("pay_1", 500, "k1").await, Err(GatewayError::Unavailable { .. })));
        let found = g.find_refund("pay_1", "k1").await.unwrap().unwrap();
        assert_eq!((found.status, found.amount_minor), (RefundStatus::Processed, 500));
        assert_eq!(g.find_refund("pay_1", "k2").await.unwrap(), None);
        assert_eq!(g.find_refund("pay_2", "k1").await.unwrap(), None);
        g.set_refunds(SandboxRefunds::InProgress);
        assert!(matches!(g.refund("pay_1", 500, "k3").await, Err(GatewayError::Unavailable { retry_after: Some(_), .. })));
        assert_eq!((g.refunds_made("pay_1").len(), g.refund_calls()), (1, 2));
    }

    #[tokio::test]
    async fn charges_capture_unless_told_to_fail() {
        let p = sandbox().charge_saved_method(&card(), 49_900, "INR", "order_9", "rcpt").await.unwrap();
        assert!(p.id.starts_with("pay_"));
        assert_eq!(p.status, PaymentStatus::Captured);
        assert_eq!((p.amount_minor, p.currency.as_str(), p.order_id.as_deref()), (49_900, "INR", Some("order_9")));

        let failing = Sandbox::new(GatewayConfig { sandbox_fail_charges: true, ..sandbox().config });
        let flipped = sandbox();
        flipped.clone().set_fail_charges(true);
        assert!(flipped.charge_saved_method(&card(), 1, "INR", "order_9", "rcpt").await.is_err(), "clones share the switch");
        match failing.charge_saved_method(&card(), 49_900, "INR", "order_9", "rcpt").await {
            Err(GatewayError::Refused { code, .. }) => assert_eq!(code, "BAD_REQUEST_ERROR"),
            other => panic!("expected a declined charge, got {other:?}"),
        }
    }

    #[test]
    fn payment_signature_binds_order_and_payment() {
        let g = sandbox();
        let sig = g.sign_payment("order_1", "pay_1");
        assert!(g.payment_signature_valid("order_1", "pay_1", &sig));
        assert!(g.payment_signature_valid("order_1", "pay_1", &sig.to_uppercase()));
        assert!(!g.payment_signature_valid("order_2", "pay_1", &sig));
        assert!(!g.payment_signature_valid("order_1", "pay_2", &sig));
        assert!(!g.payment_signature_valid("order_1", "pay_1", "zz"));
        assert!(!g.payment_signature_valid("order_1", "pay_1", ""));
    }

    #[test]
    fn webhook_signature_covers_raw_bytes() {
        let g = sandbox();
        let body = Sandbox::captured_event_body("order_1", "pay_1", 100, "INR");
        let sig = g.sign_webhook(&body);
        assert!(g.webhook_signature_valid(&body, &sig));
        let mut tampered = body.clone();
        tampered.push(b' ');
        assert!(!g.webhook_signature_valid(&tampered, &sig));
    }
}
