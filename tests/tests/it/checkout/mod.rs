//! checkout.v1: sessions end to end, races and idempotency keys, request_id
//! (`request_ids`), the
//! completion sync with billing, orders of retired sessions, and the edges
//! where checkout meets billing.
mod completion_sync;
mod edge_cases;
mod guards;
mod races;
mod request_ids;
mod retired_orders;
mod sessions;
