//! checkout.v1 sessions at their edges: a session paid at billing is
//! completed, never retired, by a new one; the head of a long replacement
//! chain; forged page tokens. Both services, real PostgreSQL, real sockets.
use proto::{
    billing::v1 as bpb,
    checkout::v1::{self as cpb, SessionStatus},
};
use tests::{helpers::scalar, spawn_app};
use tonic::Code;
use tonic_types::StatusExt;

fn status(s: &cpb::Session) -> SessionStatus {
    SessionStatus::try_from(s.status).unwrap()
}

/// Lower-case hex, as page tokens are written.
fn hex(s: impl AsRef<[u8]>) -> String {
    s.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn create_completes_the_active_session_paid_at_billing_instead_of_invalidating_it() {
    let app = spawn_app().await;
    let old = app.create_session("payer", "pro-monthly").await;
    // The customer paid at the gateway; billing captured it (the webhook or
    // a direct VerifyPayment), checkout has not heard of it yet.
    let (payment_id, signature) = app.pay(&old.order_id);
    let sub = app
        .billing
        .clone()
        .verify_payment(bpb::VerifyPaymentRequest { order_id: old.order_id.clone(), payment_id, signature })
        .await
        .unwrap()
        .into_inner()
        .subscription
        .unwrap();

    let created = app
        .checkout
        .clone()
        .create_session(cpb::CreateSessionRequest {
            user_id: "payer".into(),
            plan_id: "basic-monthly".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.invalidated_session_id, "", "the paid session must not be reported as invalidated");
    let new = created.session.unwrap();
    assert_eq!(status(&new), SessionStatus::Active);

    let old_now = app.get_session(&old.id).await;
    assert_eq!(status(&old_now), SessionStatus::Completed);
    assert_eq!(old_now.subscription_id, sub.id);
    assert_eq!(old_now.replaced_by, "");
    let mut db = app.checkout_db().await;
    assert_eq!(
        scalar(&mut db, "SELECT count(*) AS n FROM checkout_sessions WHERE user_id = 'payer' AND status = 'INVALIDATED'").await,
        0
    );
    assert_eq!(
        scalar(&mut db, "SELECT count(*) AS n FROM checkout_sessions WHERE user_id = 'payer' AND status = 'ACTIVE'").await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn renew_finds_the_head_of_a_chain_of_70_replacements() {
    let app = spawn_app().await;
    let mut checkout = app.checkout.clone();
    let first = app.create_session("chain", "pro-monthly").await;
    let mut head = first.clone();
    for i in 0..70 {
        let plan = if i % 2 == 0 { "basic-monthly" } else { "pro-monthly" };
        let r = checkout
            .renew_session(cpb::RenewSessionRequest { id: head.id.clone(), plan_id: plan.into(), ..Default::default() })
            .await
            .unwrap();
        head = r.into_inner().session.unwrap();
    }
    // The head's plan: the head itself.
    let same = checkout
        .renew_session(cpb::RenewSessionRequest { id: first.id.clone(), plan_id: head.plan_id.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(same.session.unwrap().id, head.id);
    // Another plan: the head is replaced.
    let other = if head.plan_id == "pro-monthly" { "basic-monthly" } else { "pro-monthly" };
    let next = checkout
        .renew_session(cpb::RenewSessionRequest { id: first.id.clone(), plan_id: other.into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next.previous.unwrap().id, head.id);
    let next = next.session.unwrap();
    assert_eq!(app.get_session(&head.id).await.replaced_by, next.id);
    let mut db = app.checkout_db().await;
    assert_eq!(
        scalar(&mut db, "SELECT count(*) AS n FROM checkout_sessions WHERE user_id = 'chain' AND status = 'ACTIVE'").await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forged_page_tokens_are_invalid_argument() {
    let app = spawn_app().await;
    app.create_session("pager", "pro-monthly").await;
    let id = uuid::Uuid::new_v4();
    let tokens = [
        // Within chrono's range but before PostgreSQL's (4713 BC).
        hex(format!("-8000000000000000000|{id}")),
        // Around year 300000.
        hex(format!("9467000000000000000|{id}")),
        hex(format!("{}|{id}", i64::MAX)),
        "not-a-token".to_owned(),
        hex("garbage"),
        "ff".repeat(5000),
    ];
    for token in tokens {
        let e = app
            .checkout
            .clone()
            .list_sessions(cpb::ListSessionsRequest {
                user_id: "pager".into(),
                page_size: 10,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{token}: {e:?}");
        let fields: Vec<String> = e
            .get_error_details()
            .bad_request()
            .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
            .unwrap_or_default();
        assert_eq!(fields, vec!["page_token".to_owned()], "{token}: {e:?}");
    }
}
