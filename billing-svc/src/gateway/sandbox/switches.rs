//! The switches tests flip to make the sandbox fail, lose answers, refuse or
//! hold refunds and order creations; clones share them.

use std::sync::atomic::Ordering;

use super::{Sandbox, SandboxRefunds};

impl Sandbox {
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
    /// with `METHOD_UNUSABLE`, as Razorpay refuses a cancelled mandate.
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

    /// How later refunds are answered (tests exercise refusals and outages).
    pub fn set_refunds(&self, answer: SandboxRefunds) {
        self.refunds.store(answer as u8, Ordering::Relaxed);
    }

    /// While `held`, refund calls wait inside the gateway (tests race a
    /// second caller against one whose call is in flight).
    pub fn hold_refunds(&self, held: bool) {
        self.hold.send_replace(held);
    }

    /// Declines (true) or captures (false) every later charge of a saved
    /// method, like `SANDBOX_FAIL_CHARGES` at start-up (tests flip it).
    pub fn set_fail_charges(&self, fail: bool) {
        self.fail_charges.store(fail, Ordering::Relaxed);
    }

    /// While `held`, order creations wait inside the gateway, in arrival
    /// order, until [`Sandbox::release_order`] lets the oldest through (tests
    /// order the billing side of concurrent checkouts). False releases
    /// every waiting call.
    pub fn hold_orders(&self, held: bool) {
        self.hold_orders.store(held, Ordering::SeqCst);
        if !held {
            self.order_permits.add_permits(self.orders_held.load(Ordering::SeqCst));
        }
    }

    /// Order creations waiting in the gateway now.
    pub fn held_orders(&self) -> usize {
        self.orders_held.load(Ordering::SeqCst)
    }

    /// Lets the oldest held order creation through.
    pub fn release_order(&self) {
        self.order_permits.add_permits(1);
    }
}
