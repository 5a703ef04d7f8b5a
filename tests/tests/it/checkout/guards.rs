//! Guards of checkout: one ACTIVE session per user (the partial unique
//! index as the last line of defence) and the claim of an idempotency key
//! inside CompleteSession's transaction. See `support::guards`.

use proto::checkout::v1 as cpb;
use tests::{
    clients::with_key,
    helpers::{exec, lock_waiters, scalar, wait_for_waiters},
    spawn_app,
};
use tonic::Code;

use crate::support::guards::*;

/// CompleteSession looks its key up before billing captures (so a plain
/// reuse is refused early); a reuse that arrives while the first request is
/// still in flight passes that look-up, and only the claim inside the
/// transaction can refuse it. Bob's verification is held at billing while
/// Alice completes under the same key, so Bob's claim meets her key.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn guard_idempotency_key_of_another_users_complete_session_in_flight_is_refused() {
    let app = spawn_app_holding_rows().await;
    let mut billing_db = app.billing_db().await;
    let complete = |session_id: &str, (payment_id, signature): (String, String), key: &str| {
        let mut c = app.checkout.clone();
        let req = cpb::CompleteSessionRequest { id: session_id.into(), payment_id, signature };
        let req = with_key(req, key);
        async move { c.complete_session(req).await.map(|r| r.into_inner()) }
    };
    let mut exercised = false;
    for attempt in 0..3 {
        let key = format!("shared-complete-key-{attempt}");
        let alice = app.create_session(&format!("alice-{attempt}"), "basic-monthly").await;
        let bob = app.create_session(&format!("bob-{attempt}"), "basic-monthly").await;
        let bob_payment = app.pay(&bob.order_id);
        let holder =
            Holder::hold(&app.billing_db_url, &format!("SELECT 1 FROM orders WHERE id = '{}' FOR UPDATE", bob.order_id)).await;
        let bob_call = tokio::spawn(complete(&bob.id, bob_payment.clone(), &key));
        let bob_queued = wait_for_waiters(&mut billing_db, 1, SEE_WAITERS).await;
        let alice_done = if bob_queued { Some(complete(&alice.id, app.pay(&alice.order_id), &key).await) } else { None };
        // Bob's capture must still be waiting when Alice's key commits.
        let still_queued = bob_queued && lock_waiters(&mut billing_db).await >= 1;
        holder.release().await;
        let bob_result = bob_call.await.unwrap();
        if let Some(done) = alice_done {
            assert_eq!(done.unwrap().session.unwrap().id, alice.id, "Alice completes her own session");
        }
        if !still_queued {
            continue;
        }
        exercised = true;
        match bob_result {
            Err(e) => {
                assert_eq!((e.code(), reason(&e).as_str()), (Code::InvalidArgument, "IDEMPOTENCY_KEY_REUSED"), "{e:?}")
            }
            Ok(r) => panic!("Bob's CompleteSession under Alice's key answered {:?}", r.session.map(|s| (s.id, s.user_id))),
        }
        // Bob's session was not completed by Alice's key; his own completes it.
        assert_ne!(app.get_session(&bob.id).await.status, cpb::SessionStatus::Completed as i32);
        let done = complete(&bob.id, bob_payment, &format!("bob-own-key-{attempt}")).await.unwrap().session.unwrap();
        assert_eq!((done.id.as_str(), done.status), (bob.id.as_str(), cpb::SessionStatus::Completed as i32));
        break;
    }
    assert!(exercised, "Bob's verification was never held while Alice completed; the race did not happen");
}

/// Checkout allows one ACTIVE session per user; other statuses and other
/// users are not limited.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn guard_checkout_refuses_a_second_active_session_for_one_user() {
    let app = spawn_app().await;
    let mut db = app.checkout_db().await;
    let insert = |user: &str, status: &str| {
        format!(
            "INSERT INTO checkout_sessions (id, user_id, plan_id, status, amount_minor, currency, order_id, expires_at, \
             created_at, updated_at) VALUES (gen_random_uuid(), '{user}', 'basic-monthly', '{status}', 49900, 'INR', \
             'order_' || gen_random_uuid(), now() + interval '1 day', now(), now())"
        )
    };
    assert_eq!(exec(&mut db, &insert("one", "ACTIVE")).await, 1);
    assert_eq!(exec(&mut db, &insert("one", "EXPIRED")).await, 1, "non-ACTIVE sessions are not limited");
    assert_eq!(exec(&mut db, &insert("other", "ACTIVE")).await, 1, "another user's ACTIVE session is fine");
    let detail = unique_violation(&mut db, &insert("one", "ACTIVE")).await;
    assert!(detail.contains("(user_id)"), "refused by a unique key on the user: {detail}");
    assert_eq!(
        scalar(&mut db, "SELECT count(*) AS n FROM checkout_sessions WHERE user_id = 'one' AND status = 'ACTIVE'").await,
        1
    );
}
