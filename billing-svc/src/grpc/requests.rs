//! Requests parsed into domain inputs (parse, don't validate): ids become
//! [`UserId`], [`PlanId`] and [`OrderId`], so a domain function cannot be
//! called with an unchecked one. Every field is checked before any is
//! refused, and a request with bad fields is INVALID_ARGUMENT with one
//! violation per field, in the order and words the handlers always used.
use chrono::{DateTime, Utc};
use proto::billing::v1 as pb;
use shared::{
    etag::Etag,
    ids::{PlanId, UserId, field},
    status::{MAX_ID_LEN, Violations, check_count},
};
use tonic::Status;
use uuid::Uuid;

use super::params::{
    order_status, page_after, page_size, parse_order_page_token, parse_plan_page_token, parse_subscription_page_token, usage_kind,
};
use crate::{
    checkout_orders::OrderRequest,
    orders::{self, OrderId},
    refunds,
    usage::Kind,
    views::OrderFilter,
};

/// Each of `ids` as an order id, each failure a violation of `name`.
fn order_ids(v: &mut Violations, name: &str, ids: Vec<String>) -> Vec<Result<OrderId, Status>> {
    ids.into_iter().map(|id| field(v, name, OrderId::parse(id))).collect()
}

pub(super) struct GetPlan {
    pub id: PlanId,
}

impl TryFrom<pb::GetPlanRequest> for GetPlan {
    type Error = Status;
    fn try_from(r: pb::GetPlanRequest) -> Result<Self, Status> {
        let mut v = Violations::new();
        let id = field(&mut v, "id", PlanId::parse(r.id));
        v.finish()?;
        Ok(Self { id: id? })
    }
}

impl TryFrom<pb::CreateOrderRequest> for OrderRequest {
    type Error = Status;
    fn try_from(r: pb::CreateOrderRequest) -> Result<Self, Status> {
        let mut v = Violations::new();
        let checkout_session_id = v.uuid("checkout_session_id", &r.checkout_session_id);
        let user_id = field(&mut v, "user_id", UserId::parse(r.user_id));
        let plan_id = field(&mut v, "plan_id", PlanId::parse(r.plan_id));
        v.finish()?;
        Ok(Self { checkout_session_id, user_id: user_id?, plan_id: plan_id? })
    }
}

pub(super) struct BatchGetOrders {
    pub order_ids: Vec<OrderId>,
    pub session_ids: Vec<Uuid>,
}

impl TryFrom<pb::BatchGetOrdersRequest> for BatchGetOrders {
    type Error = Status;
    fn try_from(r: pb::BatchGetOrdersRequest) -> Result<Self, Status> {
        // The count first: a huge list is refused without walking it.
        check_count("order_ids", r.order_ids.len() + r.checkout_session_ids.len(), orders::MAX_BATCH)?;
        let mut v = Violations::new();
        let order_ids = order_ids(&mut v, "order_ids", r.order_ids);
        let session_ids = r.checkout_session_ids.iter().map(|s| v.uuid("checkout_session_ids", s)).collect();
        v.finish()?;
        Ok(Self { order_ids: order_ids.into_iter().collect::<Result<_, _>>()?, session_ids })
    }
}

pub(super) struct CancelOrders {
    pub order_ids: Vec<OrderId>,
}

impl TryFrom<pb::CancelOrdersRequest> for CancelOrders {
    type Error = Status;
    fn try_from(r: pb::CancelOrdersRequest) -> Result<Self, Status> {
        check_count("order_ids", r.order_ids.len(), orders::MAX_BATCH)?;
        let mut v = Violations::new();
        let order_ids = order_ids(&mut v, "order_ids", r.order_ids);
        v.finish()?;
        Ok(Self { order_ids: order_ids.into_iter().collect::<Result<_, _>>()? })
    }
}

pub(super) struct GetOrder {
    pub id: OrderId,
}

impl TryFrom<pb::GetOrderRequest> for GetOrder {
    type Error = Status;
    fn try_from(r: pb::GetOrderRequest) -> Result<Self, Status> {
        let mut v = Violations::new();
        let id = field(&mut v, "id", OrderId::parse(r.id));
        v.finish()?;
        Ok(Self { id: id? })
    }
}

pub(super) struct ListOrders {
    pub filter: OrderFilter,
    pub size: i64,
    pub after: Option<i64>,
}

impl TryFrom<pb::ListOrdersRequest> for ListOrders {
    type Error = Status;
    fn try_from(r: pb::ListOrdersRequest) -> Result<Self, Status> {
        let mut v = Violations::new();
        if r.user_id.is_empty() && r.payment_id.is_empty() {
            v.add("user_id", "is required unless payment_id is given");
        }
        let user_id = (!r.user_id.is_empty()).then(|| field(&mut v, "user_id", UserId::parse(r.user_id)));
        if !r.payment_id.is_empty() {
            v.text("payment_id", &r.payment_id, MAX_ID_LEN);
        }
        let status = order_status(r.status);
        if status.is_none() {
            v.add("status", "is not an OrderStatus");
        }
        let size = page_size(r.page_size, &mut v);
        let after = page_after(&r.page_token, parse_order_page_token, &mut v);
        v.finish()?;
        let payment_id = (!r.payment_id.is_empty()).then_some(r.payment_id);
        let filter = OrderFilter { user_id: user_id.transpose()?, status: status.flatten(), payment_id };
        Ok(Self { filter, size, after })
    }
}

pub(super) struct VerifyPayment {
    pub order_id: OrderId,
    pub payment_id: String,
    pub signature: String,
}

impl TryFrom<pb::VerifyPaymentRequest> for VerifyPayment {
    type Error = Status;
    fn try_from(r: pb::VerifyPaymentRequest) -> Result<Self, Status> {
        let mut v = Violations::new();
        let order_id = field(&mut v, "order_id", OrderId::parse(r.order_id));
        v.text("payment_id", &r.payment_id, MAX_ID_LEN);
        v.text("signature", &r.signature, 256);
        v.finish()?;
        Ok(Self { order_id: order_id?, payment_id: r.payment_id, signature: r.signature })
    }
}

impl TryFrom<pb::RefundPaymentRequest> for refunds::Request {
    type Error = Status;
    fn try_from(r: pb::RefundPaymentRequest) -> Result<Self, Status> {
        let mut v = Violations::new();
        let order_id = field(&mut v, "order_id", OrderId::parse(r.order_id));
        v.text("refund_id", &r.refund_id, MAX_ID_LEN);
        v.text("reason", &r.reason, refunds::MAX_REASON);
        v.range("amount_minor", r.amount_minor, 0, i64::MAX / 4);
        // No zero value moves money: "everything" is said with refund_all, and
        // amount_minor = 0 alone (once "all that is left") is refused. The
        // domain's amount 0 is "all that is left", reached only through
        // refund_all.
        match (r.refund_all, r.amount_minor) {
            (false, 0) => v.add("amount_minor", "must be > 0; to refund all that is left set refund_all = true instead"),
            (true, a) if a != 0 => v.add("refund_all", "refunds all that is left: leave amount_minor 0"),
            _ => {}
        }
        if r.refund_id.starts_with(refunds::DISCREPANCY_PREFIX) {
            v.add("refund_id", format!("must not start with {:?} (reconciliation's refunds)", refunds::DISCREPANCY_PREFIX));
        }
        v.finish()?;
        Ok(Self { order_id: order_id?, amount_minor: r.amount_minor, reason: r.reason, refund_id: r.refund_id })
    }
}

pub(super) struct ListPlans {
    /// None: every plan (page_size 0, the answer from before pagination).
    pub size: Option<i64>,
    pub after: Option<(i64, String)>,
}

impl TryFrom<pb::ListPlansRequest> for ListPlans {
    type Error = Status;
    fn try_from(r: pb::ListPlansRequest) -> Result<Self, Status> {
        let mut v = Violations::new();
        let size = (r.page_size != 0).then(|| page_size(r.page_size, &mut v));
        let after = page_after(&r.page_token, parse_plan_page_token, &mut v);
        v.finish()?;
        Ok(Self { size, after })
    }
}

pub(super) struct ListSubscriptions {
    pub user_id: UserId,
    pub size: i64,
    pub after: Option<(DateTime<Utc>, Uuid)>,
}

impl TryFrom<pb::ListSubscriptionsRequest> for ListSubscriptions {
    type Error = Status;
    fn try_from(r: pb::ListSubscriptionsRequest) -> Result<Self, Status> {
        let mut v = Violations::new();
        let user_id = field(&mut v, "user_id", UserId::parse(r.user_id));
        let size = page_size(r.page_size, &mut v);
        let after = page_after(&r.page_token, parse_subscription_page_token, &mut v);
        v.finish()?;
        Ok(Self { user_id: user_id?, size, after })
    }
}

pub(super) struct CancelSubscription {
    pub id: Uuid,
    pub user_id: UserId,
    pub at_period_end: bool,
    pub etag: Option<Etag>,
}

impl TryFrom<pb::CancelSubscriptionRequest> for CancelSubscription {
    type Error = Status;
    fn try_from(r: pb::CancelSubscriptionRequest) -> Result<Self, Status> {
        let mut v = Violations::new();
        let id = v.uuid("id", &r.id);
        let at_period_end = cancellation_at_period_end(&r, &mut v);
        let user_id = field(&mut v, "user_id", UserId::parse(r.user_id));
        let etag = field(&mut v, "etag", Etag::parse_optional(r.etag));
        v.finish()?;
        Ok(Self { id, user_id: user_id?, at_period_end, etag: etag? })
    }
}

/// Whether the cancellation waits for period_end. An unset
/// `at_period_end` once meant "now, forfeiting the credits": the zero value
/// of the request cancelled at once, so the server now asks for the policy
/// and refuses the ambiguous form; the legacy `at_period_end = true` is
/// unambiguous and still accepted.
#[allow(deprecated)] // reads the legacy at_period_end
fn cancellation_at_period_end(r: &pb::CancelSubscriptionRequest, v: &mut Violations) -> bool {
    use pb::CancellationPolicy as P;
    match (P::try_from(r.policy), r.at_period_end) {
        (Ok(P::AtPeriodEnd), _) | (Ok(P::Unspecified), true) => true,
        (Ok(P::Immediately), false) => false,
        (Ok(P::Immediately), true) => {
            v.add("policy", "CANCELLATION_POLICY_IMMEDIATELY contradicts at_period_end = true");
            false
        }
        (Ok(P::Unspecified), false) => {
            v.add(
                "policy",
                "is required: CANCELLATION_POLICY_IMMEDIATELY or CANCELLATION_POLICY_AT_PERIOD_END \
                 (an unset at_period_end no longer cancels now)",
            );
            false
        }
        (Err(_), _) => {
            v.add("policy", "unknown cancellation policy");
            false
        }
    }
}

pub(super) struct StartTrial {
    pub user_id: UserId,
    pub plan_id: PlanId,
}

impl TryFrom<pb::StartTrialRequest> for StartTrial {
    type Error = Status;
    fn try_from(r: pb::StartTrialRequest) -> Result<Self, Status> {
        let mut v = Violations::new();
        let user_id = field(&mut v, "user_id", UserId::parse(r.user_id));
        let plan_id = field(&mut v, "plan_id", PlanId::parse(r.plan_id));
        v.finish()?;
        Ok(Self { user_id: user_id?, plan_id: plan_id? })
    }
}

pub(super) struct GetUsage {
    pub user_id: UserId,
}

impl TryFrom<pb::GetUsageRequest> for GetUsage {
    type Error = Status;
    fn try_from(r: pb::GetUsageRequest) -> Result<Self, Status> {
        let mut v = Violations::new();
        let user_id = field(&mut v, "user_id", UserId::parse(r.user_id));
        v.finish()?;
        Ok(Self { user_id: user_id? })
    }
}

pub(super) struct StartUsageSession {
    pub user_id: UserId,
    pub kind: Kind,
}

impl TryFrom<pb::StartUsageSessionRequest> for StartUsageSession {
    type Error = Status;
    fn try_from(r: pb::StartUsageSessionRequest) -> Result<Self, Status> {
        let mut v = Violations::new();
        let user_id = field(&mut v, "user_id", UserId::parse(r.user_id));
        let kind = usage_kind(r.kind);
        if kind.is_none() {
            v.add("kind", "must be USAGE_KIND_TEXT or USAGE_KIND_CALL");
        }
        v.finish()?;
        Ok(Self { user_id: user_id?, kind: kind.unwrap_or(Kind::Text) })
    }
}

pub(super) struct AuthorizeUpload {
    pub user_id: UserId,
    pub size_bytes: i64,
}

impl TryFrom<pb::AuthorizeUploadRequest> for AuthorizeUpload {
    type Error = Status;
    fn try_from(r: pb::AuthorizeUploadRequest) -> Result<Self, Status> {
        let mut v = Violations::new();
        let user_id = field(&mut v, "user_id", UserId::parse(r.user_id));
        v.range("size_bytes", r.size_bytes, 1, 1 << 40);
        v.finish()?;
        Ok(Self { user_id: user_id?, size_bytes: r.size_bytes })
    }
}
