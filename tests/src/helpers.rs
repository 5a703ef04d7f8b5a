//! Small helpers for system tests: typed shortcuts over the RPCs and direct
//! SQL assertions.
use diesel::{QueryableByName, sql_types};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use proto::{billing::v1 as bpb, checkout::v1 as cpb};
use tonic::{Code, Status};

use crate::TestApp;

#[derive(QueryableByName)]
struct N {
    #[diesel(sql_type = sql_types::BigInt)]
    n: i64,
}

/// Runs a `SELECT <bigint> AS n ...` and returns n.
pub async fn scalar(conn: &mut AsyncPgConnection, sql: &str) -> i64 {
    match diesel::sql_query(sql).get_result::<N>(conn).await {
        Ok(r) => r.n,
        Err(e) => panic!("{sql}: {e}"),
    }
}

/// Runs a statement (test set-up: seeding inconsistencies, moving rows).
pub async fn exec(conn: &mut AsyncPgConnection, sql: &str) -> usize {
    match diesel::sql_query(sql).execute(conn).await {
        Ok(n) => n,
        Err(e) => panic!("{sql}: {e}"),
    }
}

pub fn code<T: std::fmt::Debug>(r: Result<T, Status>) -> Code {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(s) => s.code(),
    }
}

impl TestApp {
    pub async fn create_session(&self, user: &str, plan: &str) -> cpb::Session {
        let mut c = self.checkout.clone();
        let r = c.create_session(cpb::CreateSessionRequest { user_id: user.into(), plan_id: plan.into() }).await;
        match r {
            Ok(r) => r.into_inner().session.unwrap_or_default(),
            Err(e) => panic!("CreateSession: {e:?}"),
        }
    }

    pub async fn get_session(&self, id: &str) -> cpb::Session {
        let mut c = self.checkout.clone();
        match c.get_session(cpb::GetSessionRequest { id: id.into() }).await {
            Ok(r) => r.into_inner().session.unwrap_or_default(),
            Err(e) => panic!("GetSession: {e:?}"),
        }
    }

    /// What the gateway hands the customer after paying `order_id`.
    pub fn pay(&self, order_id: &str) -> (String, String) {
        let payment_id = billing_svc::gateway::Sandbox::new_payment_id();
        let sig = self.gateway.sign_payment(order_id, &payment_id);
        (payment_id, sig)
    }

    /// A signed `payment.captured` webhook for `order`.
    pub fn captured_webhook(
        &self,
        order_id: &str,
        payment_id: &str,
        amount: i64,
        currency: &str,
        event_id: &str,
    ) -> bpb::HandleGatewayWebhookRequest {
        let body = billing_svc::gateway::Sandbox::captured_event_body(order_id, payment_id, amount, currency);
        bpb::HandleGatewayWebhookRequest { signature: self.gateway.sign_webhook(&body), body, event_id: event_id.into() }
    }

    pub async fn complete(&self, id: &str, payment_id: &str, signature: &str) -> Result<cpb::CompleteSessionResponse, Status> {
        let mut c = self.checkout.clone();
        c.complete_session(cpb::CompleteSessionRequest {
            id: id.into(),
            payment_id: payment_id.into(),
            signature: signature.into(),
        })
        .await
        .map(|r| r.into_inner())
    }
}
