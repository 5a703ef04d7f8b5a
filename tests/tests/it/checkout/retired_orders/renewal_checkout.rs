//! A renewal order payable from every way back to checkout.
use super::*;

/// The customer without a saved card comes back to pay the renewal again
/// and again: a second CreateSession, RecoverSession of the first checkout,
/// a plan change and RenewSession back, CreateSession after the checkout
/// lapsed. Each hands out the renewal order, the user keeps one ACTIVE
/// session, retiring those sessions never cancels the renewal (it is still
/// owed), and paying it renews the same subscription.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_renewal_checkout_works_from_every_way_back_and_pays_the_renewal() {
    let app = spawn_app().await;
    let user = "renew-again";
    let sub = app.subscribe(user, "basic-monthly").await;
    let end = ts(&sub.period_end);
    app.clock.set(end - Duration::hours(72));
    app.run_job("renewals").await;
    let renewal = app.subscription(&sub.id).await.renewal_order_id;
    assert!(!renewal.is_empty());

    let s1 = app.create_session(user, "basic-monthly").await;
    assert_eq!(s1.order_id, renewal);
    let s2 = app.create_session(user, "basic-monthly").await;
    assert_eq!(s2.order_id, renewal, "a second renewal checkout hands out the renewal order again");
    assert_eq!(app.get_session(&s1.id).await.status, SessionStatus::Invalidated as i32);
    let s3 = recover(&app, &s1.id).await.unwrap().session.unwrap();
    assert_eq!((s3.order_id.as_str(), s3.recovered_from.as_str()), (renewal.as_str(), s1.id.as_str()));
    let s4 = app.renew(&s3.id, "pro-monthly").await.unwrap().session.unwrap();
    assert_ne!(s4.order_id, renewal, "another plan is a new purchase");
    let s5 = app.renew(&s4.id, "basic-monthly").await.unwrap().session.unwrap();
    assert_eq!(s5.order_id, renewal, "back to the plan: the renewal again");
    app.clock.advance(Duration::hours(25));
    let s6 = app.create_session(user, "basic-monthly").await;
    assert_eq!(s6.order_id, renewal, "after the checkout lapsed");
    assert_eq!(app.get_session(&s5.id).await.status, SessionStatus::Expired as i32);
    assert_eq!(active_sessions(&app, user).await, 1);

    // A CreateOrder for a session checkout never stored (a start that lost
    // its transaction) leaves the renewal order where it was.
    let mut b = app.billing.clone();
    let orphan = uuid::Uuid::new_v4().to_string();
    let got = b
        .create_order(bpb::CreateOrderRequest {
            checkout_session_id: orphan.clone(),
            user_id: user.into(),
            plan_id: "basic-monthly".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();
    assert_eq!(got.id, renewal);
    assert_ne!(order(&app, &renewal).await.checkout_session_id, orphan, "billing never points at a session that was not stored");

    // The retired sessions' cancellations are finished: the plan change's
    // order is cancelled, the renewal is still owed.
    sync(&app).await;
    assert_eq!(order(&app, &s4.order_id).await.status, bpb::OrderStatus::Cancelled as i32);
    assert_eq!(order(&app, &renewal).await.status, bpb::OrderStatus::Created as i32);

    let (p, sig) = app.pay(&renewal);
    let done = app.complete(&s6.id, &p, &sig).await.unwrap().session.unwrap();
    assert_eq!((done.status, done.subscription_id.as_str()), (SessionStatus::Completed as i32, sub.id.as_str()));
    // The customer's old tab brings the same payment: one completion.
    let again = app.complete(&s2.id, &p, &sig).await.unwrap();
    assert!(again.replayed);
    assert_eq!(again.session.unwrap().id, s6.id, "the checkout the payment completed");
    sync(&app).await;
    let mut cdb = app.checkout_db().await;
    assert_eq!(
        scalar(
            &mut cdb,
            &format!("SELECT count(*) AS n FROM checkout_sessions WHERE order_id = '{renewal}' AND status = 'COMPLETED'")
        )
        .await,
        1
    );
    app.clock.set(end);
    app.run_job("rollover").await;
    let renewed = app.subscription(&sub.id).await;
    assert_eq!(renewed.status, bpb::SubscriptionStatus::Active as i32);
    assert_eq!((ts(&renewed.period_start), renewed.credits_granted), (end, 300), "the next period opened, paid");
    reconcile_refunds(&app, 0).await;
}
