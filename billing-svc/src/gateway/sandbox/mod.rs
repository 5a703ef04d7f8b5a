//! The built-in sandbox gateway: behaves like Razorpay (order ids,
//! HMAC-SHA256 payment signatures over "order_id|payment_id", signed webhooks
//! with event ids) without leaving the process. The default for `stack` and
//! the tests; `billing-svc sandbox pay` plays its customer.
//!
//! Its pieces: the test switches (`switches`), the refunds it makes and how it
//! answers them (`refunds`), the charges and captures it records (`charges`),
//! and the signed webhook bodies it builds (`webhooks`).
use super::{Gateway, GatewayError, GatewayOrder, GatewayPayment, GatewayRefund, NewOrder, SavedMethod, hex_eq};
use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering},
    },
};

use crate::config::GatewayConfig;

mod charges;
mod refunds;
mod switches;
#[cfg(test)]
mod tests;
mod webhooks;

pub use refunds::{MadeRefund, SandboxRefunds};

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
    /// While true, order creations wait for a permit of `order_permits`
    /// ([`Sandbox::hold_orders`]), first come first released.
    hold_orders: Arc<AtomicBool>,
    order_permits: Arc<tokio::sync::Semaphore>,
    /// Order creations waiting now ([`Sandbox::held_orders`]).
    orders_held: Arc<AtomicUsize>,
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
            hold_orders: Arc::default(),
            order_permits: Arc::new(tokio::sync::Semaphore::new(0)),
            orders_held: Arc::default(),
        }
    }

    pub fn new_payment_id() -> String {
        format!("pay_{}", uuid::Uuid::new_v4().simple())
    }
}

#[tonic::async_trait]
impl Gateway for Sandbox {
    fn name(&self) -> &'static str {
        "sandbox"
    }

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
        if self.hold_orders.load(Ordering::SeqCst) {
            self.orders_held.fetch_add(1, Ordering::SeqCst);
            // Closed never: a permit is consumed, one per released call.
            if let Ok(permit) = self.order_permits.acquire().await {
                permit.forget();
            }
            self.orders_held.fetch_sub(1, Ordering::SeqCst);
        }
        Ok(GatewayOrder { id: format!("order_{}", uuid::Uuid::new_v4().simple()) })
    }

    /// The sandbox keeps records only of the charges it made and the
    /// authorizations it captured; for another customer's payment the
    /// signature it issued is the proof of payment, as for Razorpay's
    /// checkout handler.
    async fn fetch_payment(&self, payment_id: &str) -> Result<Option<GatewayPayment>, GatewayError> {
        Ok(self.recorded(payment_id).or_else(|| self.captures().get(payment_id).cloned()))
    }

    async fn refund(&self, payment_id: &str, amount_minor: i64, refund_key: &str) -> Result<GatewayRefund, GatewayError> {
        Sandbox::refund(self, payment_id, amount_minor, refund_key).await
    }

    async fn find_refund(&self, payment_id: &str, refund_key: &str) -> Result<Option<GatewayRefund>, GatewayError> {
        Sandbox::find_refund(self, payment_id, refund_key).await
    }

    async fn charge_saved_method(
        &self,
        _method: &SavedMethod,
        amount_minor: i64,
        currency: &str,
        order_id: &str,
        _receipt: &str,
    ) -> Result<GatewayPayment, GatewayError> {
        Sandbox::charge_saved_method(self, _method, amount_minor, currency, order_id, _receipt).await
    }

    async fn payments_of_order(&self, order_id: &str) -> Result<Option<Vec<GatewayPayment>>, GatewayError> {
        Ok(Some(self.charges_of(order_id)))
    }

    async fn capture_payment(&self, payment_id: &str, amount_minor: i64, currency: &str) -> Result<GatewayPayment, GatewayError> {
        Sandbox::capture_payment(self, payment_id, amount_minor, currency).await
    }

    /// The sandbox registers no mandates.
    async fn create_customer(&self, _user_id: &str) -> Result<Option<String>, GatewayError> {
        Ok(None)
    }
}
