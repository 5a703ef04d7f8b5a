//! Refunds through billing's RPCs with `GATEWAY=razorpay` against the fake
//! Razorpay (docs/design.md, Invariants 22 and 23): every refund carries an
//! `X-Refund-Idempotency` key: billing's refund id as it is when earlier
//! releases sent it so (rolling deploys), else derived from it (short ids
//! and reconciliation's `discrepancy:<id>`); an answer lost after the
//! refund was made is found by `GET /v1/payments/:id/refunds`, not made
//! again; a 409 (in progress) or a 400 to a repeat is never recorded FAILED.
use billing_svc::gateway::{Sandbox, refund_idempotency_key};
use proto::billing::v1::{self as bpb, billing_service_client::BillingServiceClient};
use std::time::Duration;
use test_support::pg::PgServer;
use tonic::{Code, Request, transport::Channel};

use crate::fake::*;

const ADMIN: &str = "razorpay-test-admin";

pub(crate) struct Billing {
    pub(crate) client: BillingServiceClient<Channel>,
    pub(crate) fake: std::sync::Arc<Fake>,
    base: String,
    app: billing_svc::App,
    shutdown: shared::server::Shutdown,
    server: PgServer,
    db: String,
}

impl Billing {
    /// billing served on 127.0.0.1:0 with the fake Razorpay as its gateway.
    pub(crate) async fn start() -> Self {
        let (fake, base) = start_fake().await;
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/pg");
        let server = PgServer::resolve(&root).await.unwrap();
        let db = format!("razorpay_rpc_{}", uuid::Uuid::new_v4().simple());
        server.ensure_database(&db, None).await.unwrap();
        let url = server.url(&db);
        billing_svc::app::migrate(&url).await.unwrap();
        let mut cfg = billing_svc::Config::from_env().unwrap();
        cfg.gateway = config(&base);
        cfg.jobs.enabled = false;
        cfg.common.pool_size = 4;
        cfg.auth_tokens = vec!["razorpay-test-service".into()];
        cfg.admin_tokens = vec![ADMIN.into()];
        let app = billing_svc::App::new(cfg, &url, shared::Clock::system());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = shared::server::Shutdown::new();
        tokio::spawn(billing_svc::serve_app(app.clone(), url, listener, http, shutdown.clone()));
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect_lazy();
        let client = BillingServiceClient::new(channel);
        let b = Self { client, fake, base, app, shutdown, server, db };
        // SERVING once migrated: the first call that answers.
        for _ in 0..300 {
            if b.client.clone().list_plans(Self::req(bpb::ListPlansRequest::default())).await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        b
    }

    pub(crate) fn req<T>(msg: T) -> Request<T> {
        let mut r = Request::new(msg);
        r.metadata_mut().insert("authorization", format!("Bearer {ADMIN}").parse().unwrap());
        r
    }

    /// `amount` 0 refunds all that is left (refund_all).
    async fn refund(&self, order_id: &str, amount: i64, refund_id: &str) -> Result<bpb::RefundPaymentResponse, tonic::Status> {
        let r = bpb::RefundPaymentRequest {
            order_id: order_id.into(),
            amount_minor: amount,
            reason: "customer asked".into(),
            refund_id: refund_id.into(),
            refund_all: amount == 0,
        };
        self.client.clone().refund_payment(Self::req(r)).await.map(|r| r.into_inner())
    }

    async fn reconcile(&self, fix: bool) -> bpb::RunReconciliationResponse {
        self.client.clone().run_reconciliation(Self::req(bpb::RunReconciliationRequest { fix })).await.unwrap().into_inner()
    }

    /// An order paid through VerifyPayment; returns (order id, payment id).
    async fn paid_order(&self, user: &str, payment_id: &str) -> (String, String) {
        let order = self
            .client
            .clone()
            .create_order(Self::req(bpb::CreateOrderRequest {
                checkout_session_id: uuid::Uuid::new_v4().to_string(),
                user_id: user.into(),
                plan_id: "basic-monthly".into(),
            }))
            .await
            .unwrap()
            .into_inner()
            .order
            .unwrap();
        self.fake.add_payment(payment_id, &order.id, order.amount_minor, "INR", "captured");
        let signature = Sandbox::new(config(&self.base)).sign_payment(&order.id, payment_id);
        self.client
            .clone()
            .verify_payment(Self::req(bpb::VerifyPaymentRequest {
                order_id: order.id.clone(),
                payment_id: payment_id.into(),
                signature,
            }))
            .await
            .unwrap();
        (order.id, payment_id.to_owned())
    }

    async fn status_of(&self, refund_id: &str) -> String {
        use billing_svc::schema::refunds;
        use diesel::prelude::*;
        use diesel_async::RunQueryDsl;
        let mut conn = self.app.conn().await.unwrap();
        refunds::table.find(refund_id).select(refunds::status).first::<String>(&mut conn).await.unwrap()
    }

    /// The refund POSTs of `payment_id`, each with its idempotency header.
    fn refund_posts(&self, payment_id: &str) -> Vec<Option<String>> {
        self.fake
            .seen("POST", &format!("/v1/payments/{payment_id}/refund"))
            .iter()
            .map(|s| s.headers.get("x-refund-idempotency").and_then(|v| v.to_str().ok()).map(str::to_owned))
            .collect()
    }

    pub(crate) async fn stop(self) {
        self.shutdown.trigger();
        drop(self.app);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let _ = self.server.drop_database(&self.db).await;
        std::mem::forget(self.server);
    }
}

/// A short refund id ("r1") carries a derived key; its answer is lost after
/// Razorpay made it (the reply comes after our timeout): the retry finds it
/// by the refund list, one refund at Razorpay, PROCESSED. A 400 to a repeat
/// is never asked: the look-up comes first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_refund_id_carries_the_key_and_a_lost_answer_is_found() {
    let b = Billing::start().await;
    let (order, payment) = b.paid_order("rzp-user-1", "pay_RpcRefund0001").await;
    let post = format!("POST /v1/payments/{payment}/refund");
    b.fake.script(&post, Script::Slow(Duration::from_secs(2)));
    let e = b.refund(&order, 10_000, "r1").await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert_eq!(b.status_of("r1").await, "PENDING");
    // Were it asked again, Razorpay would refuse the repeat.
    b.fake.script(
        &post,
        Script::Answer(400, None, error_body("The refund amount provided is greater than amount captured").to_string()),
    );
    let done = b.refund(&order, 10_000, "r1").await.unwrap();
    let r = done.refund.unwrap();
    assert_eq!(r.status, bpb::RefundStatus::Processed as i32);
    let made = b.fake.refunds_of(&payment);
    assert_eq!(made.len(), 1, "{made:?}");
    assert_eq!(made[0]["id"], r.gateway_refund_id.as_str());
    assert_eq!(made[0]["notes"]["refund_key"], "r1", "billing's refund id in the notes");
    assert_eq!(b.refund_posts(&payment), vec![Some(refund_idempotency_key("r1"))], "one POST, with the key");
    assert!(!b.fake.seen("GET", &format!("/v1/payments/{payment}/refunds")).is_empty(), "looked up");
    let report = b.reconcile(false).await;
    assert!(report.findings.is_empty(), "{:?}", report.findings);
    b.stop().await;
}

/// A refund whose first call never arrived; the repeat is answered 409 (a
/// request with this key in progress): still PENDING, UNAVAILABLE to the
/// caller, never FAILED; the next retry makes it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_409_to_a_repeat_is_in_progress_never_a_refusal() {
    let b = Billing::start().await;
    let (order, payment) = b.paid_order("rzp-user-2", "pay_RpcRefund0002").await;
    let post = format!("POST /v1/payments/{payment}/refund");
    b.fake.script(&post, Script::Stall(Duration::from_secs(2)));
    assert_eq!(b.refund(&order, 0, "r2").await.unwrap_err().code(), Code::Unavailable);
    let conflict = json_error("BAD_REQUEST_ERROR", "A request with this idempotency key is being processed");
    b.fake.script(&post, Script::Answer(409, None, conflict));
    let e = b.refund(&order, 0, "r2").await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "in progress, retry: {e:?}");
    assert_eq!(b.status_of("r2").await, "PENDING", "not FAILED");
    let done = b.refund(&order, 0, "r2").await.unwrap();
    assert_eq!(done.refund.unwrap().status, bpb::RefundStatus::Processed as i32);
    assert_eq!(b.fake.refunds_of(&payment).len(), 1);
    let key = refund_idempotency_key("r2");
    assert!(b.refund_posts(&payment).iter().all(|k| k.as_deref() == Some(key.as_str())), "{:?}", b.refund_posts(&payment));
    let report = b.reconcile(false).await;
    assert!(report.findings.is_empty(), "{:?}", report.findings);
    b.stop().await;
}

/// reconcile --fix refunds a second payment of a paid order under
/// `discrepancy:<id>`, with its derived key; the discrepancy is REFUNDED
/// once the refund is processed and reconcile then reports nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_discrepancy_refund_carries_the_key() {
    let b = Billing::start().await;
    let (order, _) = b.paid_order("rzp-user-3", "pay_RpcRefund0003").await;
    let second = "pay_RpcSecond0003";
    b.fake.add_payment(second, &order, 49_900, "INR", "captured");
    let body = Sandbox::captured_event_body(&order, second, 49_900, "INR");
    let signature = Sandbox::new(config(&b.base)).sign_webhook(&body);
    let hook = bpb::HandleGatewayWebhookRequest { body, signature, event_id: "evt_rpc_second".into() };
    let outcome = b.client.clone().handle_gateway_webhook(Billing::req(hook)).await.unwrap().into_inner();
    assert_eq!(outcome.outcome_code, bpb::WebhookOutcome::Discrepancy as i32);
    let fix = b.reconcile(true).await;
    assert_eq!(fix.findings.len(), 1, "{:?}", fix.findings);
    assert!(fix.findings[0].fixed, "{:?}", fix.findings);
    let id = fix.findings[0].subject_id.clone();
    let key = refund_idempotency_key(&format!("discrepancy:{id}"));
    assert_eq!(b.refund_posts(second), vec![Some(key)]);
    let report = b.reconcile(false).await;
    assert!(report.findings.is_empty(), "{:?}", report.findings);
    b.stop().await;
}

/// Rolling-deploy safety: a refund id that met the earlier releases' rule
/// for `X-Refund-Idempotency` (10..=128 of `[A-Za-z0-9_-]`, sent as it is)
/// is still sent as it is, so a retry by an older replica and one by a newer
/// replica carry the same key and Razorpay makes the refund once. Only ids
/// that rule could not carry (short ids, `discrepancy:<id>`) get the derived
/// key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_id_the_old_rule_accepted_is_sent_as_its_own_key() {
    let b = Billing::start().await;
    let (order, payment) = b.paid_order("rzp-user-4", "pay_RpcRefund0004").await;
    b.refund(&order, 10_000, "legacy-refund-0001").await.unwrap();
    b.refund(&order, 10_000, "short").await.unwrap();
    let posts = b.refund_posts(&payment);
    assert_eq!(posts[0].as_deref(), Some("legacy-refund-0001"), "sent as earlier releases sent it");
    let derived = posts[1].clone().unwrap();
    assert_eq!(derived, refund_idempotency_key("short"));
    assert!(derived.len() >= 10 && derived != "short", "{derived}");
    assert_eq!(b.fake.refunds_of(&payment).len(), 2);
    let report = b.reconcile(false).await;
    assert!(report.findings.is_empty(), "{:?}", report.findings);
    b.stop().await;
}

fn json_error(code: &str, description: &str) -> String {
    serde_json::json!({ "error": { "code": code, "description": description } }).to_string()
}
