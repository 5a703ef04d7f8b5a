//! The HTTP listener a payment gateway reaches: `POST /webhooks/razorpay`
//! and `GET /healthz`. Gateways speak HTTP and retry anything but a 2xx, so
//! the answer says exactly one of: stored (200, also for a duplicate or for
//! content billing refuses — retrying would not change it), not from the
//! gateway (401, nothing stored), too large (413), or try again (503: the
//! database, or a gateway call of unknown outcome, nothing stored). The
//! event goes through the same path as the gRPC HandleGatewayWebhook.
use std::time::Duration;

use axum::{
    Json, Router,
    body::Bytes,
    extract::{DefaultBodyLimit, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use sha2::{Digest, Sha256};
use shared::{db::DbError, error::ServiceError, server::Shutdown, status::MAX_ID_LEN};
use tokio::net::TcpListener;

use crate::{App, Error, webhooks};

pub const SIGNATURE_HEADER: &str = "x-razorpay-signature";
pub const EVENT_ID_HEADER: &str = "x-razorpay-event-id";

#[derive(Clone)]
struct Http {
    app: App,
    shutdown: Shutdown,
}

pub fn router(app: App, shutdown: Shutdown) -> Router {
    Router::new()
        .route("/webhooks/razorpay", post(razorpay_webhook))
        .route("/healthz", get(healthz))
        // Larger bodies are answered 413 before they are read whole.
        .layer(DefaultBodyLimit::max(webhooks::MAX_BODY_BYTES))
        .with_state(Http { app, shutdown })
}

/// Serves until `shutdown`, then drains in-flight requests for at most
/// `grace`, like the gRPC server.
pub async fn serve(app: App, listener: TcpListener, shutdown: Shutdown, grace: Duration) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "webhook endpoint listening");
    let stop = shutdown.wait();
    let server = axum::serve(listener, router(app, shutdown.clone())).with_graceful_shutdown(stop).into_future();
    tokio::pin!(server);
    tokio::select! {
        res = &mut server => res?,
        _ = shutdown.wait() => {
            if tokio::time::timeout(grace, &mut server).await.is_err() {
                tracing::warn!(grace_secs = grace.as_secs(), "webhook drain timed out");
            }
        }
    }
    Ok(())
}

/// For the load balancer: 200 while this process takes webhooks, 503 once
/// it is shutting down.
async fn healthz(State(h): State<Http>) -> StatusCode {
    if h.shutdown.is_triggered() { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK }
}

/// The gateway's event id, or (without a usable one) a hash of the body, so
/// a redelivery of the same body is still recognised.
fn event_id(headers: &HeaderMap, body: &[u8]) -> String {
    headers
        .get(EVENT_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty() && v.len() <= MAX_ID_LEN && !v.chars().any(char::is_control))
        .map(str::to_owned)
        .unwrap_or_else(|| format!("sha256:{}", hex::encode(Sha256::digest(body))))
}

async fn razorpay_webhook(State(h): State<Http>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(signature) = headers.get(SIGNATURE_HEADER).and_then(|v| v.to_str().ok()).map(str::to_owned) else {
        tracing::warn!("webhook without a signature refused");
        return (StatusCode::UNAUTHORIZED, "missing X-Razorpay-Signature").into_response();
    };
    if body.is_empty() {
        return (StatusCode::BAD_REQUEST, "empty body").into_response();
    }
    let id = event_id(&headers, &body);
    let app = h.app.clone();
    // On its own task: a gateway that hangs up cannot stop the transaction.
    let handled = tokio::spawn(async move { webhooks::handle(&app, &body, &signature, &id).await }).await;
    shared::events::nudge();
    match handled {
        Ok(Ok(o)) => {
            (StatusCode::OK, Json(serde_json::json!({ "outcome": o.outcome.as_str(), "duplicate": o.duplicate }))).into_response()
        }
        Ok(Err(e)) => error_response(e),
        Err(e) => {
            tracing::error!(error = %e, "webhook task failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

fn error_response(e: Error) -> Response {
    match e {
        // The signature check failed: not the gateway, nothing stored.
        Error::BadSignature => (StatusCode::UNAUTHORIZED, "bad signature").into_response(),
        Error::Service(ServiceError::InvalidArgument { field, description }) => {
            (StatusCode::BAD_REQUEST, format!("{field}: {description}")).into_response()
        }
        Error::Service(ServiceError::Db(
            DbError::Unavailable(_) | DbError::Conflict(_) | DbError::Timeout(_) | DbError::UniqueViolation { .. },
        ))
        // A capture of a late authorization whose outcome is unknown: the
        // redelivery captures again, which the gateway answers idempotently.
        | Error::Gateway(crate::gateway::GatewayError::Unavailable { .. }) => {
            let mut r = (StatusCode::SERVICE_UNAVAILABLE, "try again").into_response();
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            r
        }
        other => {
            tracing::error!(error = %other, "webhook failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}
