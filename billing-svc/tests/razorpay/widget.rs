//! CreateOrder with `GATEWAY=razorpay` names what the frontend opens
//! Razorpay Checkout with: the gateway, its public key id and Razorpay's own
//! order id; never the key secret or the webhook secret.
use proto::billing::v1 as bpb;

use crate::{fake::*, refunds::Billing};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_order_names_razorpay_and_its_public_key_only() {
    let b = Billing::start().await;
    let resp = b
        .client
        .clone()
        .create_order(Billing::req(bpb::CreateOrderRequest {
            checkout_session_id: uuid::Uuid::new_v4().to_string(),
            user_id: "rzp-widget".into(),
            plan_id: "basic-monthly".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.gateway, "razorpay");
    assert_eq!(resp.gateway_key_id, KEY_ID);
    let order = resp.order.clone().unwrap();
    let at_razorpay = b.fake.orders.lock().unwrap().iter().map(|o| o["id"].as_str().unwrap().to_owned()).collect::<Vec<_>>();
    assert_eq!(at_razorpay, vec![order.id.clone()], "the order id is Razorpay's own");
    // Every field of the answer, as its Debug form prints it.
    let wire = format!("{resp:?}");
    for secret in [KEY_SECRET, WEBHOOK_SECRET] {
        assert!(!wire.contains(secret), "a secret in CreateOrder's answer: {wire}");
    }
    b.stop().await;
}
