//! The payment widget the start RPCs answer with (CreateSession,
//! RenewSession, RecoverSession): the gateway, its public key id, the
//! order, amount and currency a frontend opens the gateway's checkout with;
//! the same on a replay by request_id; absent for a session that cannot
//! take a payment; never a secret.
use chrono::Duration;
use prost::Message;
use proto::checkout::v1 as cpb;
use tests::{
    TestApp,
    harness::{GATEWAY_KEY_SECRET, GATEWAY_WEBHOOK_SECRET},
    spawn_app,
};
use uuid::Uuid;

/// The sandbox's key id in the test configuration (`GATEWAY_KEY_ID`).
const KEY_ID: &str = "rzp_test_sandbox";

/// The widget of an answer, checked against its session; no secret in the
/// answer's bytes.
fn widget_of(answer: &impl Message, widget: Option<&cpb::PaymentWidget>, session: &cpb::Session) -> cpb::PaymentWidget {
    let bytes = answer.encode_to_vec();
    for secret in [GATEWAY_KEY_SECRET, GATEWAY_WEBHOOK_SECRET] {
        assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_bytes()), "a secret in the answer");
    }
    let w = widget.cloned().unwrap_or_else(|| panic!("no payment widget for {session:?}"));
    assert_eq!(w.gateway, "sandbox");
    assert_eq!(w.key_id, KEY_ID);
    assert_eq!(w.gateway_order_id, session.order_id);
    assert_eq!((w.amount_minor, w.currency.as_str()), (session.amount_minor, session.currency.as_str()));
    assert!(w.amount_minor > 0 && !w.gateway_order_id.is_empty(), "{w:?}");
    w
}

async fn create(app: &TestApp, user: &str, plan: &str, request_id: &str) -> cpb::CreateSessionResponse {
    let req = cpb::CreateSessionRequest { user_id: user.into(), plan_id: plan.into(), request_id: request_id.into() };
    app.checkout.clone().create_session(req).await.unwrap().into_inner()
}

async fn recover(app: &TestApp, id: &str) -> cpb::RecoverSessionResponse {
    let req = cpb::RecoverSessionRequest { id: id.into(), request_id: Uuid::new_v4().to_string() };
    app.checkout.clone().recover_session(req).await.unwrap().into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_answers_the_widget_and_a_replay_the_same() {
    let app = spawn_app().await;
    let id = Uuid::new_v4().to_string();
    let first = create(&app, "widget-create", "pro-monthly", &id).await;
    let session = first.session.clone().unwrap();
    let w = widget_of(&first, first.payment_widget.as_ref(), &session);
    assert_eq!(w.amount_minor, 149_900);
    let replay = create(&app, "widget-create", "pro-monthly", &id).await;
    assert_eq!(replay.payment_widget, Some(w));
    assert_eq!(replay.session.unwrap().id, session.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renew_answers_the_widget_of_the_new_order_also_on_a_repeat() {
    let app = spawn_app().await;
    let s = create(&app, "widget-renew", "pro-monthly", &Uuid::new_v4().to_string()).await.session.unwrap();
    let renewed = app.renew(&s.id, "basic-monthly").await.unwrap();
    let new = renewed.session.clone().unwrap();
    let w = widget_of(&renewed, renewed.payment_widget.as_ref(), &new);
    assert_ne!(w.gateway_order_id, s.order_id, "the new session's order");
    // The same change again is answered without asking billing.
    let again = app.renew(&s.id, "basic-monthly").await.unwrap();
    assert_eq!(again.session.as_ref().unwrap().id, new.id);
    assert_eq!(again.payment_widget, Some(w));
}

/// Recovery answers the widget; a repeat whose recovered session was paid
/// meanwhile answers none (nothing to pay).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recover_answers_the_widget_and_none_once_paid() {
    let app = spawn_app().await;
    let s = create(&app, "widget-recover", "pro-monthly", &Uuid::new_v4().to_string()).await.session.unwrap();
    app.clock.advance(Duration::hours(25));
    let recovered = recover(&app, &s.id).await;
    let new = recovered.session.clone().unwrap();
    widget_of(&recovered, recovered.payment_widget.as_ref(), &new);

    let (payment_id, signature) = app.pay(&new.order_id);
    app.complete(&new.id, &payment_id, &signature).await.unwrap();
    let again = recover(&app, &s.id).await;
    assert_eq!(again.session.as_ref().unwrap().status, cpb::SessionStatus::Completed as i32);
    assert_eq!(again.payment_widget, None, "no widget for a paid session");
}
