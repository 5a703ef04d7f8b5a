//! The charges of saved methods and the captures the sandbox makes, and its
//! records of them (what `fetch_payment` and `payments_of_order` answer from).

use std::{collections::HashMap, sync::atomic::Ordering};

use super::Sandbox;
use crate::gateway::{GatewayError, GatewayPayment, METHOD_UNUSABLE, PaymentStatus, SavedMethod};

impl Sandbox {
    /// The payment ids `capture_payment` was called with, in order.
    pub fn capture_calls(&self) -> Vec<String> {
        self.capture_calls.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// The payments saved-method charges made for `order_id`.
    pub fn charges_of(&self, order_id: &str) -> Vec<GatewayPayment> {
        self.records().get(order_id).cloned().unwrap_or_default()
    }

    pub(super) fn records(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<GatewayPayment>>> {
        // A panic elsewhere while holding the lock leaves the map usable.
        self.charges.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(super) fn captures(&self) -> std::sync::MutexGuard<'_, HashMap<String, GatewayPayment>> {
        self.captured.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(super) fn recorded(&self, payment_id: &str) -> Option<GatewayPayment> {
        self.records().values().flatten().find(|p| p.id == payment_id).cloned()
    }

    /// Captured at once, or declined the way Razorpay declines a card when
    /// `SANDBOX_FAIL_CHARGES` is set.
    pub(super) async fn charge_saved_method(
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

    /// A payment it charged is captured (if it was not); any other is taken
    /// as authorized for `amount_minor` and captured (once: a later call
    /// answers the payment as it was captured). Recorded either way, also
    /// when [`Sandbox::set_lose_capture_answers`] then loses the answer.
    pub(super) async fn capture_payment(
        &self,
        payment_id: &str,
        amount_minor: i64,
        currency: &str,
    ) -> Result<GatewayPayment, GatewayError> {
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
}
