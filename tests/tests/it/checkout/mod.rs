//! checkout.v1: sessions end to end, races and idempotency keys, request_id
//! (`request_ids`), the
//! completion sync with billing, orders of retired sessions, and the edges
//! where checkout meets billing: reused and purged keys (`reused_keys`),
//! sessions at their edges (`session_edges`), billing stalling under
//! checkout (`billing_stall`), what CleanupSessions answers with nothing
//! to do (`sessions_cleanup`), the payment widget the start RPCs answer
//! with (`payment_widget`).
mod billing_stall;
mod completion_sync;
mod guards;
mod payment_widget;
mod races;
mod request_ids;
mod retired_orders;
mod reused_keys;
mod session_edges;
mod sessions;
mod sessions_cleanup;
