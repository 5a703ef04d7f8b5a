//! Entity tags of the resources a caller may change after reading them
//! (Plan, Subscription, checkout Session; docs/design.md, "API
//! conventions"). An etag is a digest of the stored row's fields, so it
//! changes whenever the row does, costs no column, no trigger and no write
//! on any hot path, and reads the same on every replica. A mutating request
//! that carries one is checked under the row's lock, in the transaction
//! that changes the row: a mismatch is ABORTED `ETAG_MISMATCH` (read again,
//! then decide again), never a silent overwrite of a change the caller did
//! not see.
use std::fmt::Debug;

use sha2::{Digest, Sha256};

use crate::error::ServiceError;

/// Longest etag a request may carry: ours are 16 characters; a longer one
/// cannot have come from this service and is refused as malformed.
pub const MAX_ETAG_LEN: usize = 64;

/// An etag as this service issues it (16 lowercase hex digits of a SHA-256
/// over the row's fields) or as a request carried it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Etag(String);

impl Etag {
    /// The etag of a resource of kind `kind` whose stored fields are
    /// `fields`, in a fixed order. Each field goes in by its `Debug` form,
    /// which quotes strings and spells `None`, so no two different rows
    /// share a digest input.
    pub fn of(kind: &str, fields: &[&dyn Debug]) -> Etag {
        let mut h = Sha256::new();
        h.update(kind.as_bytes());
        for f in fields {
            h.update([0x1f]);
            h.update(format!("{f:?}").as_bytes());
        }
        Etag(hex::encode(&h.finalize()[..8]))
    }

    /// A request's etag field: empty is "no condition"; otherwise at most
    /// [`MAX_ETAG_LEN`] printable ASCII characters, or the field violation's
    /// words.
    pub fn parse_optional(value: String) -> Result<Option<Etag>, String> {
        if value.is_empty() {
            Ok(None)
        } else if value.len() > MAX_ETAG_LEN {
            Err(format!("must be at most {MAX_ETAG_LEN} characters (an etag read from this service)"))
        } else if !value.bytes().all(|b| b.is_ascii_graphic()) {
            Err("must be an etag read from this service (printable ASCII)".to_owned())
        } else {
            Ok(Some(Etag(value)))
        }
    }

    /// The etag as it goes on the wire.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether the caller's `expected` etag (if it sent one) names the
    /// resource as it is now (any of `current`, the forms it may read as):
    /// ABORTED `ETAG_MISMATCH` about `resource` `id` when it does not.
    /// Called under the row's lock, before the change.
    pub fn check(
        expected: Option<&Etag>,
        current: &[&Etag],
        resource: &'static str,
        id: impl ToString,
    ) -> Result<(), ServiceError> {
        match expected {
            Some(e) if !current.contains(&e) => Err(ServiceError::EtagMismatch { resource, id: id.to_string() }),
            _ => Ok(()),
        }
    }
}

impl std::fmt::Display for Etag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<Etag> for String {
    fn from(e: Etag) -> String {
        e.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_field_changes_the_etag_and_field_boundaries_count() {
        let a = Etag::of("s", &[&"ab", &Some(1)]);
        assert_eq!(a, Etag::of("s", &[&"ab", &Some(1)]));
        assert_eq!(a.as_str().len(), 16);
        assert_ne!(a, Etag::of("s", &[&"ab", &Some(2)]));
        assert_ne!(a, Etag::of("s", &[&"ab", &None::<i32>]));
        assert_ne!(Etag::of("s", &[&"a", &"b"]), Etag::of("s", &[&"ab", &""]));
        assert_ne!(a, Etag::of("t", &[&"ab", &Some(1)]));
    }

    #[test]
    fn parse_and_check() {
        assert_eq!(Etag::parse_optional(String::new()), Ok(None));
        assert!(Etag::parse_optional("x".repeat(MAX_ETAG_LEN + 1)).is_err());
        assert!(Etag::parse_optional("a b".into()).is_err());
        let current = Etag::of("s", &[&1]);
        let sent = Etag::parse_optional(current.to_string()).ok().flatten();
        assert!(Etag::check(sent.as_ref(), &[&current], "subscription", 1).is_ok());
        assert!(Etag::check(None, &[&current], "subscription", 1).is_ok());
        let stale = Etag::parse_optional("0123456789abcdef".into()).ok().flatten();
        let e = Etag::check(stale.as_ref(), &[&current], "subscription", 1);
        assert!(matches!(e, Err(ServiceError::EtagMismatch { resource: "subscription", .. })), "{e:?}");
    }
}
