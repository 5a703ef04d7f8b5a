//! Bearer-token authentication (an interceptor on each service, so health and
//! reflection stay open) and the admin check used by admin RPCs.
use std::{
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use sha2::{Digest, Sha256};
use tonic::{Request, Status};

use crate::status::{ErrorReason, with_reason};

/// Lets one log line through per `every`; the lines held back meanwhile are
/// counted and reported with the next one. A flood of bad tokens must not
/// turn into a flood of log lines (disk, log pipeline, the logging cost
/// itself on the request path).
#[derive(Debug)]
pub struct LogLimiter {
    every: Duration,
    state: Mutex<LimiterState>,
}

#[derive(Debug, Default)]
struct LimiterState {
    last: Option<Instant>,
    suppressed: u64,
}

impl LogLimiter {
    /// A limiter that lets one line through per `every`.
    pub fn new(every: Duration) -> Self {
        Self { every, state: Mutex::new(LimiterState::default()) }
    }

    /// `Some(n)` when a line may be written at `now`, `n` lines having been
    /// held back since the previous one; `None` when this one is held back.
    pub fn admit(&self, now: Instant) -> Option<u64> {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        match st.last {
            Some(last) if now.saturating_duration_since(last) < self.every => {
                st.suppressed += 1;
                None
            }
            _ => {
                st.last = Some(now);
                Some(std::mem::take(&mut st.suppressed))
            }
        }
    }
}

/// What a caller may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Every RPC but the admin ones.
    Service,
    /// Every RPC, the admin ones included.
    Admin,
}

/// Who called, attached to the request by [`Authenticator`].
#[derive(Clone, Copy, Debug)]
pub struct Caller {
    /// The caller's role, from the token it presented.
    pub role: Role,
}

/// Accepts `authorization: Bearer <token>` for any configured token. Tokens
/// are kept as SHA-256 digests so a comparison never leaks a token prefix.
#[derive(Clone, Debug)]
pub struct Authenticator {
    service: Arc<Vec<[u8; 32]>>,
    admin: Arc<Vec<[u8; 32]>>,
    /// Shared by every clone (one per connection): one line per second.
    rejections: Arc<LogLimiter>,
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Authenticator {
    /// `service` tokens may call every non-admin RPC; `admin` tokens every RPC.
    pub fn new(service: &[String], admin: &[String]) -> Self {
        Self {
            service: Arc::new(service.iter().map(|t| digest(t)).collect()),
            admin: Arc::new(admin.iter().map(|t| digest(t)).collect()),
            rejections: Arc::new(LogLimiter::new(Duration::from_secs(1))),
        }
    }

    /// [`Authenticator::new`] from the configured secrets.
    pub fn from_secrets(service: &[crate::config::Secret], admin: &[crate::config::Secret]) -> Self {
        Self::new(&crate::config::Secret::expose_all(service), &crate::config::Secret::expose_all(admin))
    }

    /// Admits a request whose `authorization: Bearer <token>` is a configured
    /// token, attaching its [`Caller`]; UNAUTHENTICATED otherwise.
    pub fn check(&self, req: &mut Request<()>) -> Result<(), Status> {
        let header = req
            .metadata()
            .get("authorization")
            .ok_or_else(|| with_reason(ErrorReason::TokenMissing, "missing authorization: Bearer <token>"))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")))
            .map(str::trim)
            .ok_or_else(|| with_reason(ErrorReason::TokenMissing, "authorization must be \"Bearer <token>\""))?;
        let d = digest(token);
        let role = if self.admin.contains(&d) {
            Role::Admin
        } else if self.service.contains(&d) {
            Role::Service
        } else {
            if let Some(suppressed) = self.rejections.admit(Instant::now()) {
                tracing::info!(
                    suppressed,
                    "rejected an unknown bearer token (suppressed: rejections not logged since the last line)"
                );
            }
            return Err(with_reason(ErrorReason::TokenInvalid, "invalid token"));
        };
        req.extensions_mut().insert(Caller { role });
        Ok(())
    }
}

impl tonic::service::Interceptor for Authenticator {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        self.check(&mut req)?;
        Ok(req)
    }
}

/// Fails with PERMISSION_DENIED unless the caller holds an admin token.
pub fn require_admin<T>(req: &Request<T>) -> Result<(), Status> {
    match req.extensions().get::<Caller>() {
        Some(Caller { role: Role::Admin }) => Ok(()),
        Some(_) => Err(with_reason(ErrorReason::AdminRequired, "this RPC needs an admin token")),
        None => Err(with_reason(ErrorReason::TokenMissing, "missing authorization")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(auth: Option<&str>) -> Request<()> {
        let mut r = Request::new(());
        if let Some(a) = auth
            && let Ok(v) = a.parse()
        {
            r.metadata_mut().insert("authorization", v);
        }
        r
    }

    #[test]
    fn roles_follow_tokens() {
        let a = Authenticator::new(&["svc".into()], &["adm".into()]);
        assert_eq!(a.check(&mut req(None)).err().map(|s| s.code()), Some(tonic::Code::Unauthenticated));
        assert_eq!(a.check(&mut req(Some("Bearer nope"))).err().map(|s| s.code()), Some(tonic::Code::Unauthenticated));
        let mut r = req(Some("Bearer svc"));
        assert!(a.check(&mut r).is_ok());
        assert_eq!(require_admin(&r).err().map(|s| s.code()), Some(tonic::Code::PermissionDenied));
        let mut r = req(Some("Bearer adm"));
        assert!(a.check(&mut r).is_ok());
        assert!(require_admin(&r).is_ok());
    }

    #[test]
    fn limiter_lets_one_line_per_period_through_and_counts_the_rest() {
        let l = LogLimiter::new(Duration::from_secs(1));
        let t0 = Instant::now();
        assert_eq!(l.admit(t0), Some(0));
        let held = (1..=5000).filter(|i| l.admit(t0 + Duration::from_micros(i * 199)).is_some()).count();
        assert_eq!(held, 0, "5,000 rejections within the second: no line");
        assert_eq!(l.admit(t0 + Duration::from_secs(1)), Some(5000));
        assert_eq!(l.admit(t0 + Duration::from_millis(1500)), None);
        assert_eq!(l.admit(t0 + Duration::from_secs(3)), Some(1));
        // A clock read out of order never panics nor lets a line through early.
        assert_eq!(l.admit(t0), None);
    }

    #[test]
    fn a_flood_of_bad_tokens_is_still_rejected_and_shares_one_limiter() {
        let a = Authenticator::new(&["svc".into()], &[]);
        let b = a.clone();
        for auth in [&a, &b].into_iter().cycle().take(1000) {
            assert_eq!(auth.check(&mut req(Some("Bearer nope"))).err().map(|s| s.code()), Some(tonic::Code::Unauthenticated));
        }
        // The first rejection was logged; the other 999 (through either
        // clone) wait for the next line.
        assert!(Arc::ptr_eq(&a.rejections, &b.rejections));
        assert_eq!(a.rejections.admit(Instant::now() + Duration::from_secs(2)), Some(999));
    }
}
