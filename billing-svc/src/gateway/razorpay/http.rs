//! One HTTP exchange with Razorpay and how its answer becomes a result or a
//! [`GatewayError`] (keeping the status where callers need it); bounded retries of reads.

use reqwest::{Method, StatusCode, header};
use serde::de::DeserializeOwned;

use super::wire::{ErrorBody, ErrorDetail, bounded, read_body, retry_after, transport_error, unavailable, unexpected};
use super::{BACKOFF, DEFAULT_THROTTLE_PAUSE, MAX_CODE, MAX_DESCRIPTION, READ_ATTEMPTS, Razorpay};
use crate::gateway::GatewayError;

impl Razorpay {
    /// One HTTP exchange: the parsed 2xx body, or the error it maps to.
    pub(super) async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&serde_json::Value>,
        headers: &[(&str, &str)],
    ) -> Result<T, GatewayError> {
        self.exchange(method, path, query, body, headers).await.map_err(|f| f.error)
    }

    /// Like `call`, keeping the HTTP status Razorpay answered with, for the
    /// callers that must tell "this does not exist" from "we are not let in".
    pub(super) async fn exchange<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&serde_json::Value>,
        headers: &[(&str, &str)],
    ) -> Result<T, Failure> {
        let Some(http) = &self.http else {
            return Err(Failure::no_answer(unavailable("no HTTP client", None)));
        };
        let mut req = http
            .request(method.clone(), format!("{}{path}", self.base))
            .basic_auth(&self.config.key_id, Some(self.config.key_secret.expose()))
            .header(header::ACCEPT, "application/json");
        if !query.is_empty() {
            req = req.query(query);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.map_err(|e| Failure::no_answer(transport_error(&method, path, &e)))?;
        let status = resp.status();
        let answered = |error| Failure { status: Some(status), error };
        let retry_after = retry_after(resp.headers());
        let bytes = read_body(resp).await.map_err(|e| answered(transport_error(&method, path, &e)))?;
        let Some(bytes) = bytes else {
            return Err(answered(unexpected(&method, path, status)));
        };
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|_| answered(unexpected(&method, path, status)));
        }
        if status == StatusCode::TOO_MANY_REQUESTS {
            // Always with a pause, so that no layer retries a throttled call at once.
            let pause = retry_after.unwrap_or(DEFAULT_THROTTLE_PAUSE);
            return Err(answered(unavailable(&format!("{method} {path}: rate limited (429)"), Some(pause))));
        }
        if status == StatusCode::CONFLICT {
            // Razorpay's answer while a request with the same idempotency
            // key is still being processed: the outcome is not known yet,
            // so it is never a refusal (docs/design.md, Invariants 22).
            let pause = retry_after.unwrap_or(DEFAULT_THROTTLE_PAUSE);
            return Err(answered(unavailable(
                &format!("{method} {path}: a request with this key is in progress (409)"),
                Some(pause),
            )));
        }
        if status.is_server_error() || status == StatusCode::REQUEST_TIMEOUT {
            return Err(answered(unavailable(&format!("{method} {path}: answered {}", status.as_u16()), retry_after)));
        }
        if status.is_client_error() {
            let (code, message) = match serde_json::from_slice::<ErrorBody>(&bytes) {
                Ok(ErrorBody { error: ErrorDetail { code, description } }) => (
                    code.filter(|c| !c.is_empty()).unwrap_or_else(|| format!("HTTP_{}", status.as_u16())),
                    description.unwrap_or_default(),
                ),
                Err(_) => (format!("HTTP_{}", status.as_u16()), "unexpected response".to_owned()),
            };
            if status == StatusCode::UNAUTHORIZED {
                tracing::error!(path, "Razorpay refused our credentials (401): check GATEWAY_KEY_ID and GATEWAY_KEY_SECRET");
            }
            return Err(answered(GatewayError::Refused {
                code: bounded(&code, MAX_CODE),
                message: bounded(&message, MAX_DESCRIPTION),
            }));
        }
        Err(answered(unexpected(&method, path, status)))
    }

    /// An idempotent GET, retried a bounded number of times when the gateway
    /// is unavailable (not when it throttles: that is passed on at once).
    pub(super) async fn get<T: DeserializeOwned>(&self, path: &str, query: &[(&str, &str)]) -> Result<T, GatewayError> {
        self.get_answered(path, query).await.map_err(|f| f.error)
    }

    /// `get`, keeping the HTTP status of the last answer.
    pub(super) async fn get_answered<T: DeserializeOwned>(&self, path: &str, query: &[(&str, &str)]) -> Result<T, Failure> {
        let mut attempt = 1;
        loop {
            match self.exchange(Method::GET, path, query, None, &[]).await {
                Err(Failure { error: GatewayError::Unavailable { retry_after: None, .. }, .. }) if attempt < READ_ATTEMPTS => {
                    tokio::time::sleep(BACKOFF * attempt).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }
}

/// A failed exchange: the error, and the HTTP status when Razorpay answered.
pub(super) struct Failure {
    pub(super) status: Option<StatusCode>,
    pub(super) error: GatewayError,
}

impl Failure {
    pub(super) fn no_answer(error: GatewayError) -> Self {
        Failure { status: None, error }
    }

    /// Razorpay refused our credentials (401, 403): nothing is known about
    /// the request itself.
    pub(super) fn credentials_refused(&self) -> bool {
        matches!(self.status, Some(StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN))
    }
}

/// Razorpay says the entity does not exist: a 404, or the 400 its API
/// documents for an unknown id ("The id provided does not exist").
pub(super) fn does_not_exist(f: &Failure) -> bool {
    match (&f.error, f.status) {
        (GatewayError::Refused { .. }, Some(StatusCode::NOT_FOUND)) => true,
        (GatewayError::Refused { message, .. }, Some(StatusCode::BAD_REQUEST)) => {
            message.to_ascii_lowercase().contains("does not exist")
        }
        _ => false,
    }
}
