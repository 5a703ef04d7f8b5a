//! Saved methods that are gone: a revoked token, token webhooks and the
//! locks they take.
use super::*;

/// A token revoked at the gateway (the charge is refused as unusable) stops
/// automatic charging at once: the saved method is forgotten, the renewal is
/// never charged again, and the customer pays it through a renewal checkout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revoked_token_stops_automatic_charging_and_the_renewal_is_paid_by_checkout() {
    let app = spawn_app().await;
    let sub = subscribe_with_saved_card(&app, "revoked", "basic-monthly").await;
    let end = ts(&sub.period_end);
    app.gateway.set_tokens_revoked(true);
    app.clock.set(end - Duration::hours(72));
    assert!(app.run_job("renewals").await.contains("0 charges captured, 1 not captured"));
    let stopped = app.subscription(&sub.id).await;
    assert!(!stopped.has_saved_payment_method, "the revoked method is forgotten");
    assert!(stopped.next_charge_at.is_none(), "no further automatic attempt");
    assert!(!stopped.renewal_order_id.is_empty(), "the renewal stays payable");
    app.gateway.set_tokens_revoked(false);
    for hours in [48, 24, 0] {
        app.clock.set(end - Duration::hours(hours));
        assert!(app.run_job("renewals").await.contains("0 charges captured, 0 not captured"), "never retried");
    }
    assert!(app.gateway.charges_of(&stopped.renewal_order_id).is_empty());
    app.run_job("rollover").await;
    assert_eq!(app.subscription(&sub.id).await.status, bpb::SubscriptionStatus::PastDue as i32);

    let session = app.create_session("revoked", "basic-monthly").await;
    assert_eq!(session.order_id, stopped.renewal_order_id, "the renewal checkout pays the renewal order");
    let (p, sig) = app.pay(&session.order_id);
    app.complete(&session.id, &p, &sig).await.unwrap();
    let renewed = app.subscription(&sub.id).await;
    assert_eq!((renewed.status, ts(&renewed.period_start)), (bpb::SubscriptionStatus::Active as i32, end));
    reconcile_finds_nothing(&app).await;
    let mut db = app.billing_db().await;
    assert_ledger_matches_balances(&mut db).await;
}

/// docs/design.md, Invariants 29: the gateway's `token.cancelled` (or
/// rejected, paused) webhook forgets the saved method on every subscription
/// holding that token before a renewal tries it: no automatic charge is
/// made, and the renewal is paid through checkout. Idempotent: another
/// delivery finds no holder (IGNORED); `token.confirmed` changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_token_cancelled_webhook_stops_automatic_charging() {
    let app = spawn_app().await;
    let sub = subscribe_with_saved_card(&app, "token-hook", "basic-monthly").await;
    let kept = subscribe_with_saved_card(&app, "token-kept", "basic-monthly").await;
    let end = ts(&sub.period_end);
    let hook = |event: &str, event_id: &str| {
        let body = billing_svc::gateway::Sandbox::token_event_body(event, "cust_test", "token_token-hook");
        bpb::HandleGatewayWebhookRequest { signature: app.gateway.sign_webhook(&body), body, event_id: event_id.into() }
    };
    let mut b = app.billing.clone();
    let confirmed = b.handle_gateway_webhook(hook("token.confirmed", "evt_tok_0")).await.unwrap().into_inner();
    assert_eq!(confirmed.outcome, "IGNORED");
    assert!(app.subscription(&sub.id).await.has_saved_payment_method);
    let cancelled = b.handle_gateway_webhook(hook("token.cancelled", "evt_tok_1")).await.unwrap().into_inner();
    assert_eq!(cancelled.outcome, "PROCESSED");
    let again = b.handle_gateway_webhook(hook("token.cancelled", "evt_tok_1")).await.unwrap().into_inner();
    assert!(again.duplicate);
    let paused = b.handle_gateway_webhook(hook("token.paused", "evt_tok_2")).await.unwrap().into_inner();
    assert_eq!(paused.outcome, "IGNORED", "nothing holds it any more");
    assert!(!app.subscription(&sub.id).await.has_saved_payment_method);
    assert!(app.subscription(&kept.id).await.has_saved_payment_method, "another token is untouched");

    app.clock.set(end - Duration::hours(72));
    let out = app.run_job("renewals").await;
    assert!(out.contains("1 charges captured, 0 not captured"), "only the kept card is charged: {out}");
    let stopped = app.subscription(&sub.id).await;
    assert!(stopped.next_charge_at.is_none() && !stopped.renewal_order_id.is_empty(), "{stopped:?}");
    assert!(app.gateway.charges_of(&stopped.renewal_order_id).is_empty());

    let session = app.create_session("token-hook", "basic-monthly").await;
    assert_eq!(session.order_id, stopped.renewal_order_id, "the renewal checkout pays the renewal order");
    let (p, sig) = app.pay(&session.order_id);
    app.complete(&session.id, &p, &sig).await.unwrap();
    app.clock.set(end + Duration::hours(1));
    app.run_job("rollover").await;
    let renewed = app.subscription(&sub.id).await;
    assert_eq!((renewed.status, ts(&renewed.period_start)), (bpb::SubscriptionStatus::Active as i32, end));
    reconcile_finds_nothing(&app).await;
    let mut db = app.billing_db().await;
    assert_eq!(scalar(&mut db, "SELECT count(*) AS n FROM webhook_events WHERE event_type LIKE 'token.%'").await, 3);
    assert_ledger_matches_balances(&mut db).await;
}

/// docs/design.md, Invariants 29: a token webhook forgetting a saved method
/// takes the locks in a renewal capture's order, open renewal orders first,
/// then the subscriptions. While a capture holds the renewal order's row
/// (here a transaction standing in for it), the webhook waits for that row
/// without holding the subscription, so the capture can still lock the
/// subscription: no deadlock between the two.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_token_webhook_locks_renewal_orders_before_subscriptions() {
    let app = spawn_app().await;
    let sub = subscribe_with_saved_card(&app, "token-race", "basic-monthly").await;
    app.gateway.set_fail_charges(true);
    app.clock.set(ts(&sub.period_end) - Duration::hours(72));
    app.run_job("renewals").await;
    let mut db = app.billing_db().await;
    let collected = format!(
        "SELECT count(*) AS n FROM orders WHERE renews_subscription_id = '{}' AND status = 'CREATED' AND next_charge_at IS NOT NULL",
        sub.id
    );
    assert_eq!(scalar(&mut db, &collected).await, 1, "an open renewal order, still collected automatically");

    let mut capture = app.billing_db().await;
    exec(&mut capture, "BEGIN").await;
    let held = format!("SELECT id FROM orders WHERE renews_subscription_id = '{}' AND status = 'CREATED' FOR UPDATE", sub.id);
    assert_eq!(exec(&mut capture, &held).await, 1);
    let body = billing_svc::gateway::Sandbox::token_event_body("token.cancelled", "cust_test", "token_token-race");
    let req =
        bpb::HandleGatewayWebhookRequest { signature: app.gateway.sign_webhook(&body), body, event_id: "evt_tok_race".into() };
    let mut b = app.billing.clone();
    let hook = tokio::spawn(async move { b.handle_gateway_webhook(req).await });
    assert!(wait_for_waiters(&mut db, 1, std::time::Duration::from_secs(10)).await, "the webhook waits for the order row");
    let sub_lock = format!("SELECT id FROM subscriptions WHERE id = '{}' FOR UPDATE NOWAIT", sub.id);
    let took = diesel_async::RunQueryDsl::execute(diesel::sql_query(sub_lock), &mut capture).await;
    exec(&mut capture, if took.is_ok() { "COMMIT" } else { "ROLLBACK" }).await;
    assert!(took.is_ok(), "the webhook held the subscription while waiting for its renewal order: {took:?}");

    assert_eq!(hook.await.unwrap().unwrap().into_inner().outcome, "PROCESSED");
    assert_eq!(scalar(&mut db, &collected).await, 0, "no longer collected automatically");
    assert!(!app.subscription(&sub.id).await.has_saved_payment_method);
    reconcile_finds_nothing(&app).await;
    assert_ledger_matches_balances(&mut db).await;
}
