//! Bearer-token authentication (an interceptor on each service, so health and
//! reflection stay open) and the admin check used by admin RPCs.
use std::sync::Arc;

use sha2::{Digest, Sha256};
use tonic::{Request, Status};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Service,
    Admin,
}

/// Who called, attached to the request by [`Authenticator`].
#[derive(Clone, Copy, Debug)]
pub struct Caller {
    pub role: Role,
}

/// Accepts `authorization: Bearer <token>` for any configured token. Tokens
/// are kept as SHA-256 digests so a comparison never leaks a token prefix.
#[derive(Clone, Debug)]
pub struct Authenticator {
    service: Arc<Vec<[u8; 32]>>,
    admin: Arc<Vec<[u8; 32]>>,
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
        }
    }

    pub fn check(&self, req: &mut Request<()>) -> Result<(), Status> {
        let header = req
            .metadata()
            .get("authorization")
            .ok_or_else(|| Status::unauthenticated("missing authorization: Bearer <token>"))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")))
            .map(str::trim)
            .ok_or_else(|| Status::unauthenticated("authorization must be \"Bearer <token>\""))?;
        let d = digest(token);
        let role = if self.admin.contains(&d) {
            Role::Admin
        } else if self.service.contains(&d) {
            Role::Service
        } else {
            tracing::info!("rejected an unknown bearer token");
            return Err(Status::unauthenticated("invalid token"));
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
        Some(_) => Err(Status::permission_denied("this RPC needs an admin token")),
        None => Err(Status::unauthenticated("missing authorization")),
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
}
