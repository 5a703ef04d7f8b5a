//! Domain → protobuf conversions.
use proto::billing::v1 as pb;
use shared::time::{opt_to_proto, to_proto};

use crate::{
    deductions::Charged,
    limits::UsageReport,
    orders::{Order, Status as OrderStatus},
    plan_changes::{ChangeView, PlanChange, Timing},
    plans::{Limits, Period, Plan},
    reconcile::FindingKind,
    refunds::{Refund, Status as RefundStatus},
    subscriptions::{Status as SubStatus, Subscription},
    usage::{Kind as UsageKind, SessionView, Status as UsageStatus, UsageSession},
    views::{OrderView, SubscriptionView},
    webhooks::EventOutcome,
};

/// Limits twice: the legacy int fields (0 = unlimited for sessions and
/// minutes, "none" for uploads, whose unlimited is the largest int64) for
/// older readers, and the explicit [`pb::Limit`]s.
#[allow(deprecated)] // the legacy fields stay filled
pub fn limits(l: &Limits) -> pb::PlanLimits {
    let (sessions, minutes, upload_bytes) = l.to_columns();
    pb::PlanLimits {
        max_sessions_per_period: sessions,
        max_minutes_per_period: minutes,
        max_upload_bytes: upload_bytes,
        sessions_per_period: Some(limit(l.sessions_per_period.map(i64::from))),
        minutes_per_period: Some(limit(l.minutes_per_period.map(i64::from))),
        upload_bytes: Some(limit(l.upload_bytes)),
    }
}

/// One limit: `None` is unlimited.
pub fn limit(max: Option<i64>) -> pb::Limit {
    match max {
        Some(max) => pb::Limit { unlimited: false, max },
        None => pb::Limit { unlimited: true, max: 0 },
    }
}

pub fn period(p: Period) -> pb::PlanPeriod {
    match p {
        Period::Monthly => pb::PlanPeriod::Monthly,
        Period::Yearly => pb::PlanPeriod::Yearly,
    }
}

// The deprecated text fields stay filled for callers that read them.
#[allow(deprecated)]
pub fn plan(p: &Plan) -> pb::Plan {
    pb::Plan {
        id: p.id.clone(),
        name: p.name.clone(),
        price_minor: p.price_minor,
        currency: p.currency.clone(),
        period: p.period.as_str().to_owned(),
        period_code: period(p.period) as i32,
        credits_per_period: p.credits_per_period,
        deduction_interval_seconds: p.deduction_interval_seconds,
        limits: Some(limits(&p.limits())),
        active: p.active,
        etag: p.etag().into(),
        current_version: p.current_version,
    }
}

pub fn order(v: &OrderView) -> pb::Order {
    let o = &v.order;
    pb::Order {
        id: o.id.clone(),
        checkout_session_id: o.checkout_session_id.map(|s| s.to_string()).unwrap_or_default(),
        user_id: o.user_id.clone(),
        plan_id: o.plan_id.clone(),
        amount_minor: o.amount_minor,
        currency: o.currency.clone(),
        status: match o.status {
            OrderStatus::Created => pb::OrderStatus::Created,
            OrderStatus::Paid => pb::OrderStatus::Paid,
            OrderStatus::Cancelled => pb::OrderStatus::Cancelled,
        } as i32,
        payment_id: o.payment_id.clone().unwrap_or_default(),
        subscription_id: v.subscription_id.map(|s| s.to_string()).unwrap_or_default(),
        created_at: Some(to_proto(o.created_at)),
        paid_at: opt_to_proto(o.paid_at),
        renews_subscription_id: o.renews_subscription_id.map(|s| s.to_string()).unwrap_or_default(),
        renews_period_start: opt_to_proto(o.renews_period_start),
        // The order's own payment only: refunds of another payment of it (a
        // discrepancy's) are listed in `refunds` under their payment id.
        amount_refunded_minor: v
            .refunds
            .iter()
            .filter(|r| r.status != RefundStatus::Failed && o.payment_id.as_deref() == Some(r.payment_id.as_str()))
            .map(|r| r.amount_minor)
            .sum(),
        refunds: v.refunds.iter().map(refund).collect(),
        plan_version: o.plan_version,
    }
}

pub fn refund(r: &Refund) -> pb::Refund {
    pb::Refund {
        id: r.id.clone(),
        order_id: r.order_id.clone().unwrap_or_default(),
        payment_id: r.payment_id.clone(),
        amount_minor: r.amount_minor,
        currency: r.currency.clone(),
        status: match r.status {
            RefundStatus::Pending => pb::RefundStatus::Pending,
            RefundStatus::Processed => pb::RefundStatus::Processed,
            RefundStatus::Failed => pb::RefundStatus::Failed,
        } as i32,
        reason: r.reason.clone(),
        gateway_refund_id: r.gateway_refund_id.clone().unwrap_or_default(),
        detail: r.detail.clone(),
        created_at: Some(to_proto(r.created_at)),
    }
}

/// A subscription without its renewal order (see [`subscription_with`]).
pub fn subscription(s: &Subscription) -> pb::Subscription {
    subscription_with(s, None)
}

/// A subscription with its open renewal order, if any (see
/// [`subscription_with`]).
pub fn subscription_view(v: &SubscriptionView) -> pb::Subscription {
    pb::Subscription {
        pending_change: v.pending_change.as_ref().map(plan_change),
        ..subscription_with(&v.subscription, v.renewal.as_ref())
    }
}

/// A plan change with the order paying it.
pub fn plan_change(v: &ChangeView) -> pb::PlanChange {
    plan_change_with(&v.change, v.order.as_ref().map(|o| o.id.as_str()))
}

/// A plan change with the id of the order paying it, if any.
pub fn plan_change_with(c: &PlanChange, order_id: Option<&str>) -> pb::PlanChange {
    let timing = match c.timing {
        Timing::Immediately => pb::PlanChangeTiming::Immediately,
        Timing::AtPeriodEnd => pb::PlanChangeTiming::AtPeriodEnd,
    };
    let effective_at = match c.timing {
        Timing::Immediately => c.applied_at,
        Timing::AtPeriodEnd => Some(c.period_end),
    };
    pb::PlanChange {
        id: c.id.to_string(),
        plan_id: c.to_plan_id.clone(),
        plan_version: c.to_version,
        from_plan_id: c.from_plan_id.clone(),
        from_plan_version: c.from_version,
        timing: timing as i32,
        effective_at: opt_to_proto(effective_at),
        order_id: order_id.unwrap_or_default().to_owned(),
        amount_minor: c.amount_minor,
        currency: c.currency.clone(),
        applied_at: opt_to_proto(c.applied_at),
    }
}

/// A subscription with its open renewal order, if any.
pub fn subscription_with(s: &Subscription, renewal: Option<&Order>) -> pb::Subscription {
    let status = match s.status {
        SubStatus::Active => pb::SubscriptionStatus::Active,
        SubStatus::PastDue => pb::SubscriptionStatus::PastDue,
        SubStatus::Cancelled => pb::SubscriptionStatus::Cancelled,
        SubStatus::Expired => pb::SubscriptionStatus::Expired,
        SubStatus::Replaced => pb::SubscriptionStatus::Replaced,
    };
    // Only the renewal of the period that follows the current one counts.
    let renewal = renewal.filter(|o| o.renews_subscription_id == Some(s.id) && o.renews_period_start == Some(s.period_end));
    pb::Subscription {
        id: s.id.to_string(),
        user_id: s.user_id.clone(),
        plan_id: s.plan_id.clone(),
        status: status as i32,
        order_id: s.order_id.clone().unwrap_or_default(),
        period_start: Some(to_proto(s.period_start)),
        period_end: Some(to_proto(s.period_end)),
        credits_granted: s.credits_granted,
        credits_remaining: s.credits_remaining,
        created_at: Some(to_proto(s.created_at)),
        cancel_at_period_end: s.cancel_at_period_end,
        renewal_order_id: renewal.map(|o| o.id.clone()).unwrap_or_default(),
        next_charge_at: renewal.and_then(|o| opt_to_proto(o.next_charge_at)),
        ended_at: opt_to_proto(s.ended_at),
        has_saved_payment_method: s.gateway_token_id.is_some(),
        etag: s.etag().into(),
        plan_version: s.plan_version,
        scheduled_plan_version: s.next_plan_version.unwrap_or_default(),
        trial_end: opt_to_proto(s.trial_end),
        pending_change: None,
    }
}

pub fn session_proto(s: &UsageSession, credits_remaining: i64) -> pb::UsageSession {
    let kind = match s.kind {
        UsageKind::Text => pb::UsageKind::Text,
        UsageKind::Call => pb::UsageKind::Call,
    };
    let status = match s.status {
        UsageStatus::Active => pb::UsageSessionStatus::Active,
        UsageStatus::Ended => pb::UsageSessionStatus::Ended,
    };
    pb::UsageSession {
        id: s.id.to_string(),
        user_id: s.user_id.clone(),
        subscription_id: s.subscription_id.to_string(),
        kind: kind as i32,
        status: status as i32,
        started_at: Some(to_proto(s.started_at)),
        ended_at: opt_to_proto(s.ended_at),
        deduction_interval_seconds: s.deduction_interval_seconds,
        auto_deductions_processed: s.auto_deductions_processed,
        units_charged: s.units_charged,
        units_unpaid: s.units_unpaid,
        credits_remaining,
    }
}

pub fn usage_session(v: &SessionView) -> pb::UsageSession {
    session_proto(&v.session, v.credits_remaining)
}

pub fn charged(c: &Charged) -> pb::UsageSession {
    usage_session(&c.view)
}

pub fn usage(user_id: &str, r: &UsageReport) -> pb::Usage {
    pb::Usage {
        user_id: user_id.to_owned(),
        plan_id: r.subscription.plan_id.clone(),
        // Nil: a user who never used the service has no row yet.
        subscription_id: if r.subscription.id.is_nil() { String::new() } else { r.subscription.id.to_string() },
        period_start: Some(to_proto(r.subscription.period_start)),
        period_end: Some(to_proto(r.subscription.period_end)),
        sessions_used: r.used.sessions,
        minutes_used: r.used.minutes,
        credits_granted: r.subscription.credits_granted,
        credits_remaining: r.subscription.credits_remaining,
        limits: Some(limits(&r.terms.limits())),
    }
}

pub fn webhook_outcome(o: EventOutcome) -> pb::WebhookOutcome {
    match o {
        // Never answered: it exists only inside the storing transaction.
        EventOutcome::Received => pb::WebhookOutcome::Unspecified,
        EventOutcome::Processed => pb::WebhookOutcome::Processed,
        EventOutcome::Ignored => pb::WebhookOutcome::Ignored,
        EventOutcome::Discrepancy => pb::WebhookOutcome::Discrepancy,
        EventOutcome::Rejected => pb::WebhookOutcome::Rejected,
    }
}

pub fn finding_kind(k: FindingKind) -> pb::FindingKind {
    match k {
        FindingKind::PaidOrderWithoutSubscription => pb::FindingKind::PaidOrderWithoutSubscription,
        FindingKind::SubscriptionWithoutPaidOrder => pb::FindingKind::SubscriptionWithoutPaidOrder,
        FindingKind::DuplicateSubscriptionsForOrder => pb::FindingKind::DuplicateSubscriptionsForOrder,
        FindingKind::PaymentDiscrepancy => pb::FindingKind::PaymentDiscrepancy,
        FindingKind::WebhookRejected => pb::FindingKind::WebhookRejected,
        FindingKind::LedgerMismatch => pb::FindingKind::LedgerMismatch,
        FindingKind::StuckUsageSession => pb::FindingKind::StuckUsageSession,
        FindingKind::PaidOrderUnknownToCheckout => pb::FindingKind::PaidOrderUnknownToCheckout,
        FindingKind::ForeignPayment => pb::FindingKind::ForeignPayment,
    }
}
