//! The example consumer of docs/integration.md (`integration_example::
//! Follower`) survives a restart of billing: resuming from its cursor, it
//! applies every event committed after its start, once, in stream order.
use std::sync::{Arc, Mutex};

use integration_example::{Endpoints, Follower};
use tests::{harness::SERVICE_TOKEN, spawn_app};

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_example_consumer_follows_across_a_billing_restart() {
    let mut app = spawn_app().await;
    app.subscribe("before-start", "basic-monthly").await;
    let start = settled_cursor(&app).await;
    let endpoints = Endpoints {
        checkout_addr: app.checkout_addr.to_string(),
        billing_addr: app.billing_addr.to_string(),
        checkout_token: SERVICE_TOKEN.into(),
        billing_token: SERVICE_TOKEN.into(),
    };
    let applied: Arc<Mutex<Vec<bpb::BillingEvent>>> = Arc::default();
    let sink = applied.clone();
    let follower = tokio::spawn(async move {
        let mut f = Follower::new(Some(start));
        f.follow(&endpoints, |e| {
            sink.lock().unwrap().push(e.clone());
            !(e.user_id == "after-restart" && type_name(e) == "SUBSCRIPTION_ACTIVATED")
        })
        .await
    });

    app.subscribe("first", "basic-monthly").await;
    app.stop_billing().await;
    app.start_billing_again().await.unwrap();
    app.subscribe("after-restart", "basic-monthly").await;
    tokio::time::timeout(Duration::from_secs(30), follower).await.expect("the consumer saw the last purchase").unwrap().unwrap();

    let applied = applied.lock().unwrap().clone();
    let all = list_all(&app).await;
    let after_start: Vec<&str> = all.iter().filter(|e| e.user_id != "before-start").map(|e| e.event_id.as_str()).collect();
    let got: Vec<&str> = applied.iter().map(|e| e.event_id.as_str()).collect();
    assert_eq!(got, after_start, "every event after the start, once, in stream order");
    assert!(applied.iter().any(|e| e.user_id == "first"), "the purchase before the restart");
}
