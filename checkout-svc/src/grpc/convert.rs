//! Domain → protobuf conversions.
use proto::checkout::v1 as pb;
use shared::time::{opt_to_proto, to_proto};

use crate::sessions::{CleanupCounts, Session, Started, Status};

pub fn status(s: Status) -> pb::SessionStatus {
    match s {
        Status::Active => pb::SessionStatus::Active,
        Status::Completed => pb::SessionStatus::Completed,
        Status::Expired => pb::SessionStatus::Expired,
        Status::Invalidated => pb::SessionStatus::Invalidated,
    }
}

pub fn session(s: &Session) -> pb::Session {
    pb::Session {
        id: s.id.to_string(),
        user_id: s.user_id.clone(),
        plan_id: s.plan_id.clone(),
        status: status(s.status) as i32,
        amount_minor: s.amount_minor,
        currency: s.currency.clone(),
        order_id: s.order_id.clone(),
        created_at: Some(to_proto(s.created_at)),
        updated_at: Some(to_proto(s.updated_at)),
        expires_at: Some(to_proto(s.expires_at)),
        completed_at: opt_to_proto(s.completed_at),
        replaced_by: s.replaced_by.map(|u| u.to_string()).unwrap_or_default(),
        recovered_from: s.recovered_from.map(|u| u.to_string()).unwrap_or_default(),
        subscription_id: s.subscription_id.clone().unwrap_or_default(),
        payment_id: s.payment_id.clone().unwrap_or_default(),
        etag: s.etag().into(),
    }
}

/// What the frontend opens the gateway's checkout widget with: the
/// session's order, amount and currency with the gateway account billing
/// named; None when the session is not open for payment (`Started::new`).
pub fn payment_widget(s: &Started) -> Option<pb::PaymentWidget> {
    s.account.as_ref().map(|a| pb::PaymentWidget {
        gateway: a.gateway.clone(),
        key_id: a.key_id.clone(),
        gateway_order_id: s.session.order_id.clone(),
        amount_minor: s.session.amount_minor,
        currency: s.session.currency.clone(),
    })
}

pub fn cleanup(c: &CleanupCounts) -> pb::CleanupSessionsResponse {
    pb::CleanupSessionsResponse {
        expired: c.expired,
        deleted: c.deleted,
        completed_by_sync: c.completed_by_sync,
        skipped_billing_unavailable: c.skipped_billing_unavailable,
        dry_run: c.dry_run,
        // Always set, so a run with nothing to do is not `{}` in JSON
        // (proto3 drops zero values; docs/operations.md §9).
        expired_before: Some(to_proto(c.expired_before)),
        deleted_before: Some(to_proto(c.deleted_before)),
        examined: c.examined,
    }
}
