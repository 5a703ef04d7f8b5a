//! Captures of payments (VerifyPayment, webhooks, reconcile): one per
//! order, against the newest order, and money that buys nothing recorded
//! as a discrepancy.
mod capture;
mod guards;
mod superseded;
