//! loadgen scenarios: set-up (untimed) and the measured operation.
use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicI64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use billing_svc::{config::GatewayConfig, gateway::Sandbox};
use futures::{StreamExt, stream};
use proto::{billing::v1 as bpb, checkout::v1 as cpb};
use tonic::Status;

use super::{Report, acks};
use crate::{BillingClient, CheckoutClient, billing_client, checkout_client, helpers::scalar};

/// Where the stack is, from `target/stack/stack.env`.
pub struct Target {
    pub checkout_addr: String,
    pub billing_addr: String,
    pub billing_http_addr: String,
    pub checkout_token: String,
    pub billing_token: String,
    pub billing_db_url: String,
    pub gateway: Sandbox,
}

impl Target {
    pub fn from_env(env: &BTreeMap<String, String>) -> anyhow::Result<Self> {
        let get = |k: &str| env.get(k).cloned().ok_or_else(|| anyhow::anyhow!("{k} missing from the stack env file"));
        Ok(Self {
            checkout_addr: get("CHECKOUT_ADDR")?,
            billing_addr: get("BILLING_ADDR")?,
            billing_http_addr: get("BILLING_HTTP_ADDR")?,
            checkout_token: get("CHECKOUT_TOKEN")?,
            billing_token: get("BILLING_TOKEN")?,
            billing_db_url: get("BILLING_DATABASE_URL")?,
            gateway: Sandbox::new(GatewayConfig {
                key_id: String::new(),
                key_secret: get("GATEWAY_KEY_SECRET")?.into(),
                webhook_secret: get("GATEWAY_WEBHOOK_SECRET")?.into(),
                ..Default::default()
            }),
        })
    }

    fn billing(&self) -> anyhow::Result<BillingClient> {
        billing_client(&self.billing_addr, &self.billing_token)
    }

    /// One client (one HTTP/2 connection) per worker.
    fn billing_pool(&self, n: usize) -> anyhow::Result<Arc<Vec<BillingClient>>> {
        Ok(Arc::new((0..n).map(|_| self.billing()).collect::<anyhow::Result<_>>()?))
    }
}

/// A tag that keeps runs apart in a long-lived stack database.
fn run_tag() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_owned()
}

#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub concurrency: usize,
    pub warmup: Duration,
    pub duration: Duration,
    /// Operations started per second by all workers together; 0: no limit.
    pub rate: f64,
}

pub async fn create_session(t: &Target, timing: &Timing) -> anyhow::Result<Report> {
    let tag = run_tag();
    let clients: Arc<Vec<CheckoutClient>> = Arc::new(
        (0..timing.concurrency).map(|_| checkout_client(&t.checkout_addr, &t.checkout_token)).collect::<anyhow::Result<_>>()?,
    );
    super::run("create-session", timing, move |w, i| {
        let mut c = clients[w].clone();
        let req = cpb::CreateSessionRequest {
            user_id: format!("lg-{tag}-{w}-{i}"),
            plan_id: if i % 2 == 0 { "pro-monthly" } else { "basic-monthly" }.into(),
            ..Default::default()
        };
        async move { c.create_session(req).await.map(|_| ()) }
    })
    .await
}

async fn create_orders(t: &Target, n: usize, tag: &str) -> anyhow::Result<Vec<bpb::Order>> {
    let client = t.billing()?;
    let orders: Vec<Result<bpb::Order, Status>> = stream::iter(0..n)
        .map(|i| {
            let client = client.clone();
            let req = bpb::CreateOrderRequest {
                checkout_session_id: uuid::Uuid::new_v4().to_string(),
                user_id: format!("lg-{tag}-{i}"),
                plan_id: "pro-monthly".into(),
            };
            // A retry of the same session, user and plan is handed the same order.
            let order = acks::call("setup", move || {
                let (mut c, req) = (client.clone(), req.clone());
                async move { c.create_order(req).await }
            });
            async move { order.await.map(|(r, _)| r.into_inner().order.unwrap_or_default()) }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    Ok(orders.into_iter().collect::<Result<_, _>>()?)
}

/// VerifyPayment on fresh orders; with `storm > 1` each operation sends
/// `storm` identical VerifyPayment calls at once and checks that exactly one
/// captured the payment and all got the same subscription.
pub async fn verify_payment(t: &Target, timing: &Timing, orders: usize, storm: usize) -> anyhow::Result<Report> {
    let tag = run_tag();
    eprintln!("verify-payment: creating {orders} orders...");
    let orders = Arc::new(create_orders(t, orders, &tag).await?);
    let next = Arc::new(AtomicUsize::new(0));
    let bad_storms = Arc::new(AtomicI64::new(0));
    let clients = t.billing_pool(timing.concurrency)?;
    let gateway = t.gateway.clone();
    let (n2, b2) = (next.clone(), bad_storms.clone());
    let mut report = super::run("verify-payment", timing, move |w, _| {
        let (orders, next, bad, gateway) = (orders.clone(), n2.clone(), b2.clone(), gateway.clone());
        let client = clients[w].clone();
        async move {
            let Some(order) = orders.get(next.fetch_add(1, Ordering::Relaxed)) else {
                return Err(Status::resource_exhausted("loadgen ran out of pre-created orders; raise --orders"));
            };
            let payment_id = Sandbox::new_payment_id();
            let req = bpb::VerifyPaymentRequest {
                order_id: order.id.clone(),
                signature: gateway.sign_payment(&order.id, &payment_id),
                payment_id,
            };
            let calls = (0..storm.max(1)).map(|_| {
                let (client, req) = (client.clone(), req.clone());
                acks::call("verify-payment", move || {
                    let (mut c, req) = (client.clone(), req.clone());
                    async move { c.verify_payment(req).await.map(|r| r.into_inner()) }
                })
            });
            let answers = futures::future::join_all(calls).await.into_iter().collect::<Result<Vec<_>, _>>()?;
            acks::acknowledged("verify-payment", &format!("{} {}", req.order_id, req.payment_id));
            let fresh = answers.iter().filter(|(a, _)| !a.replayed).count();
            // A failed attempt may have committed: its retry is answered as a replay.
            let retried = answers.iter().any(|(_, retried)| *retried);
            let first = answers.first().and_then(|(a, _)| a.subscription.as_ref()).map(|s| s.id.clone());
            if fresh > 1
                || (fresh == 0 && !retried)
                || answers.iter().any(|(a, _)| a.subscription.as_ref().map(|s| s.id.clone()) != first)
            {
                bad.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        }
    })
    .await?;
    let mut db = crate::harness::connect(&t.billing_db_url).await;
    let dup_subs = scalar(
        &mut db,
        "SELECT count(*) AS n FROM (SELECT order_id FROM subscriptions WHERE order_id IS NOT NULL GROUP BY 1 HAVING count(*) > 1) d",
    )
    .await;
    report.extra.insert("storm_size".into(), storm.max(1) as i64);
    report.extra.insert("storms_with_more_than_one_capture".into(), bad_storms.load(Ordering::Relaxed));
    report.extra.insert("duplicate_subscriptions_in_db".into(), dup_subs);
    Ok(report)
}

/// The gateway's side: one signed `payment.captured` webhook over HTTP per
/// fresh order, as Razorpay posts them. Afterwards the database must show
/// every acknowledged webhook as a paid order, or the run fails.
pub async fn webhook(t: &Target, timing: &Timing, orders: usize) -> anyhow::Result<Report> {
    let tag = run_tag();
    eprintln!("webhook: creating {orders} orders...");
    let orders = Arc::new(create_orders(t, orders, &tag).await?);
    let url = Arc::new(format!("http://{}/webhooks/razorpay", t.billing_http_addr));
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?;
    let (next, acked) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicI64::new(0)));
    let gateway = t.gateway.clone();
    let (n2, a2) = (next.clone(), acked.clone());
    let mut report = super::run("webhook", timing, move |_, _| {
        let (orders, next, acked, gateway, http, url) =
            (orders.clone(), n2.clone(), a2.clone(), gateway.clone(), http.clone(), url.clone());
        async move {
            let Some(order) = orders.get(next.fetch_add(1, Ordering::Relaxed)) else {
                return Err(Status::resource_exhausted("loadgen ran out of pre-created orders; raise --orders"));
            };
            let body = Sandbox::captured_event_body(&order.id, &Sandbox::new_payment_id(), order.amount_minor, &order.currency);
            let (signature, event_id) = (gateway.sign_webhook(&body), format!("evt_{}", uuid::Uuid::new_v4().simple()));
            // The gateway's redelivery: the same event id and body.
            acks::call("webhook", || {
                let request = http
                    .post(url.as_str())
                    .header("X-Razorpay-Signature", signature.as_str())
                    .header("X-Razorpay-Event-Id", event_id.as_str())
                    .header("content-type", "application/json")
                    .body(body.clone());
                async move {
                    let resp = request.send().await.map_err(|e| Status::unavailable(e.to_string()))?;
                    match resp.status().as_u16() {
                        200 => Ok(()),
                        503 => Err(retry_after(&resp)),
                        code => Err(Status::unknown(format!("HTTP {code}"))),
                    }
                }
            })
            .await?;
            acks::acknowledged("webhook", &format!("{event_id} {}", order.id));
            acked.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
    })
    .await?;
    let mut db = crate::harness::connect(&t.billing_db_url).await;
    let paid =
        scalar(&mut db, &format!("SELECT count(*) AS n FROM orders WHERE user_id LIKE 'lg-{tag}-%' AND status = 'PAID'")).await;
    let acked = acked.load(Ordering::Relaxed);
    report.extra.insert("webhooks_acknowledged".into(), acked);
    report.extra.insert("orders_paid_in_db".into(), paid);
    anyhow::ensure!(paid == acked, "{acked} webhooks were acknowledged but {paid} orders are paid: not measured");
    Ok(report)
}

/// Deduct across `sessions` usage sessions of `sessions` different users
/// (`hot = false`), or across 100 sessions sharing one subscription; one run
/// per concurrency level on the same sessions. Afterwards the database must
/// show the work: one deductions row, one ledger row and one credit off the
/// balances per successful call (warm-ups included), or the run fails.
pub async fn deduct(t: &Target, timing: &Timing, levels: &[usize], sessions: usize, hot: bool) -> anyhow::Result<Vec<Report>> {
    let tag = run_tag();
    let client = t.billing()?;
    let (users, per_user) = if hot { (1, 100) } else { (sessions, 1) };
    if hot {
        // The free plan allows 5 sessions a period; the hot user buys "pro".
        let order = create_orders(t, 1, &tag).await?.remove(0);
        let payment_id = Sandbox::new_payment_id();
        let mut c = client.clone();
        c.verify_payment(bpb::VerifyPaymentRequest {
            order_id: order.id.clone(),
            signature: t.gateway.sign_payment(&order.id, &payment_id),
            payment_id,
        })
        .await?;
    }
    eprintln!("deduct: starting {} usage sessions for {users} user(s)...", users * per_user);
    let ids: Vec<Result<String, Status>> = stream::iter(0..users * per_user)
        .map(|i| {
            let client = client.clone();
            // create_orders names its users lg-<tag>-<i>; the hot user is lg-<tag>-0.
            let req = bpb::StartUsageSessionRequest {
                user_id: format!("lg-{tag}-{}", i / per_user),
                kind: bpb::UsageKind::Text as i32,
                request_id: uuid::Uuid::new_v4().to_string(),
            };
            let session = acks::call("setup", move || {
                let (mut c, req) = (client.clone(), req.clone());
                async move { c.start_usage_session(req).await }
            });
            async move { session.await.map(|(r, _)| r.into_inner().session.map(|s| s.id).unwrap_or_default()) }
        })
        .buffer_unordered(if hot { 1 } else { 32 })
        .collect()
        .await;
    let ids: Arc<Vec<String>> = Arc::new(ids.into_iter().collect::<Result<_, _>>()?);
    // Enough credits that the run measures charging, not the empty-balance path.
    let mut db = crate::harness::connect(&t.billing_db_url).await;
    crate::helpers::exec(
        &mut db,
        &format!(
            "UPDATE subscriptions SET credits_granted = 1000000000, credits_remaining = 1000000000 \
             WHERE user_id LIKE 'lg-{tag}-%' AND status = 'ACTIVE'"
        ),
    )
    .await;
    let (granted, remaining) = (
        format!(
            "SELECT coalesce(sum(credits_granted), 0)::bigint AS n FROM subscriptions WHERE user_id LIKE 'lg-{tag}-%' AND status = 'ACTIVE'"
        ),
        format!(
            "SELECT coalesce(sum(credits_remaining), 0)::bigint AS n FROM subscriptions WHERE user_id LIKE 'lg-{tag}-%' AND status = 'ACTIVE'"
        ),
    );
    let name = if hot { "deduct-hot" } else { "deduct" };
    let mut reports = Vec::new();
    for &concurrency in levels {
        let clients = t.billing_pool(concurrency)?;
        let run_ids = ids.clone();
        let report = super::run(name, &Timing { concurrency, ..*timing }, move |w, i| {
            let c = clients[w].clone();
            let n = run_ids.len();
            let req = bpb::DeductRequest {
                usage_session_id: run_ids[(w * 7919 + i as usize * 31) % n].clone(),
                deduction_id: format!("c{concurrency}-{w}-{i}"),
                units: 1,
            };
            async move {
                let ids = format!("{} {}", req.usage_session_id, req.deduction_id);
                acks::call("deduct", || {
                    let req = req.clone();
                    let mut c = c.clone();
                    async move { c.deduct(req).await }
                })
                .await?;
                acks::acknowledged("deduct", &ids);
                Ok(())
            }
        })
        .await?;
        reports.push(report);
    }
    // A new connection: the primary of the first one may have failed over meanwhile.
    let mut db = crate::harness::connect(&t.billing_db_url).await;
    // The work done: every successful call wrote its deductions row and its
    // ledger row and took one credit (units = 1, balances that cannot run out).
    let ok: i64 = reports.iter().map(|r| r.ok_total as i64).sum();
    let sessions_of_run = format!("SELECT id FROM usage_sessions WHERE user_id LIKE 'lg-{tag}-%'");
    let rows =
        scalar(&mut db, &format!("SELECT count(*) AS n FROM deductions WHERE usage_session_id IN ({sessions_of_run})")).await;
    let ledger =
        scalar(&mut db, &format!("SELECT count(*) AS n FROM ledger WHERE usage_session_id IN ({sessions_of_run})")).await;
    let moved = scalar(&mut db, &granted).await - scalar(&mut db, &remaining).await;
    if let Some(last) = reports.last_mut() {
        last.extra.insert("successful_calls_all_levels".into(), ok);
        last.extra.insert("deductions_in_db".into(), rows);
        last.extra.insert("ledger_rows_in_db".into(), ledger);
        last.extra.insert("credits_moved_in_db".into(), moved);
    }
    anyhow::ensure!(
        rows == ok && ledger == ok && moved == ok,
        "{ok} Deducts succeeded but the database shows {rows} deductions, {ledger} ledger rows and {moved} credits moved: not measured"
    );
    // Leave no usage session ACTIVE behind (reconcile would flag them later).
    let _: Vec<_> = stream::iter(ids.iter().cloned())
        .map(|id| {
            let mut c = client.clone();
            async move { c.end_usage_session(bpb::EndUsageSessionRequest { id, manual_deductions: 0 }).await }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    Ok(reports)
}

/// A 503 from the webhook endpoint as the status a gRPC caller would get:
/// UNAVAILABLE with its `Retry-After` (seconds) as RetryInfo.
fn retry_after(resp: &reqwest::Response) -> Status {
    let secs = resp.headers().get("retry-after").and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok()).unwrap_or(1);
    <Status as tonic_types::StatusExt>::with_error_details(
        tonic::Code::Unavailable,
        "HTTP 503",
        tonic_types::ErrorDetails::with_retry_info(Some(Duration::from_secs(secs))),
    )
}
