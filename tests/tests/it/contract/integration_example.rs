//! The example client of docs/integration.md (`examples/integration`), run
//! against both services: the purchase it makes is in the databases (the
//! session COMPLETED, its order PAID, one ACTIVE subscription, the explicit
//! deduction in the ledger), and what it was handed to pay with is the
//! sandbox's public key id and the session's order.
use integration_example::{Endpoints, Paid, purchase};
use proto::billing::v1 as bpb;
use tests::{
    harness::{GATEWAY_KEY_SECRET, SERVICE_TOKEN},
    helpers::scalar,
    spawn_app,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_buys_a_plan_and_spends_a_credit() {
    let app = spawn_app().await;
    let endpoints = Endpoints {
        checkout_addr: app.checkout_addr.to_string(),
        billing_addr: app.billing_addr.to_string(),
        checkout_token: SERVICE_TOKEN.into(),
        billing_token: SERVICE_TOKEN.into(),
    };
    let mut seen = None;
    let bought = purchase(&endpoints, "example-user", "pro-monthly", |w| {
        seen = Some(w.clone());
        let (payment_id, signature) = app.pay(&w.gateway_order_id);
        Ok(Paid { payment_id, signature })
    })
    .await
    .unwrap();

    let w = seen.unwrap();
    assert_eq!((w.gateway.as_str(), w.key_id.as_str()), ("sandbox", "rzp_test_sandbox"));
    assert_ne!(w.key_id, GATEWAY_KEY_SECRET);
    assert_eq!(w.gateway_order_id, bought.order_id);
    assert_eq!(bought.subscription.status, bpb::SubscriptionStatus::Active as i32);
    assert_eq!(bought.subscription.plan_id, "pro-monthly");
    assert_eq!(bought.units_charged, 1);

    let mut cdb = app.checkout_db().await;
    let completed = format!(
        "SELECT count(*) AS n FROM checkout_sessions WHERE id = '{}' AND status = 'COMPLETED' \
         AND order_id = '{}' AND subscription_id = '{}'",
        bought.session_id, bought.order_id, bought.subscription_id
    );
    assert_eq!(scalar(&mut cdb, &completed).await, 1);

    let mut bdb = app.billing_db().await;
    let paid = format!("SELECT count(*) AS n FROM orders WHERE id = '{}' AND status = 'PAID'", bought.order_id);
    assert_eq!(scalar(&mut bdb, &paid).await, 1);
    let active = "SELECT count(*) AS n FROM subscriptions WHERE user_id = 'example-user' AND status = 'ACTIVE'";
    assert_eq!(scalar(&mut bdb, active).await, 1);
    let deducted = format!(
        "SELECT count(*) AS n FROM deductions WHERE usage_session_id = '{}' AND deduction_id = 'unit-1'",
        bought.usage_session_id
    );
    assert_eq!(scalar(&mut bdb, &deducted).await, 1);
    let ended = format!("SELECT count(*) AS n FROM usage_sessions WHERE id = '{}' AND status = 'ENDED'", bought.usage_session_id);
    assert_eq!(scalar(&mut bdb, &ended).await, 1);
}
