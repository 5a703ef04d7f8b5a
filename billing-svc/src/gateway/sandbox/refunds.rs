//! The refunds the sandbox makes: how it answers a refund call
//! ([`SandboxRefunds`]), its record of refunds made, and the look-up by key.

use std::{sync::atomic::Ordering, time::Duration};

use super::Sandbox;
use crate::gateway::{GatewayError, GatewayRefund, RefundStatus};

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

impl Sandbox {
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

    /// Settles a pending refund the way the bank's answer would (what a
    /// later look-up reports; the test sends the webhook itself).
    pub fn settle_refund(&self, gateway_refund_id: &str, status: RefundStatus) {
        let mut made = self.made.lock().unwrap_or_else(|p| p.into_inner());
        for m in made.iter_mut().filter(|m| m.refund.id == gateway_refund_id) {
            m.refund.status = status;
        }
    }

    /// Every refund is processed at once, unless [`Sandbox::set_refunds`]
    /// said otherwise; every one made is recorded for [`Gateway::find_refund`].
    pub(super) async fn refund(
        &self,
        payment_id: &str,
        amount_minor: i64,
        refund_key: &str,
    ) -> Result<GatewayRefund, GatewayError> {
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

    pub(super) async fn find_refund(&self, payment_id: &str, refund_key: &str) -> Result<Option<GatewayRefund>, GatewayError> {
        if self.refunds.load(Ordering::Relaxed) == SandboxRefunds::Unreachable as u8 {
            return Err(unreachable());
        }
        Ok(self.made_refunds().into_iter().find(|m| m.payment_id == payment_id && m.refund_key == refund_key).map(|m| m.refund))
    }
}

pub(super) fn unreachable() -> GatewayError {
    GatewayError::Unavailable { message: "sandbox: gateway unreachable".into(), retry_after: None }
}
