//! Entity tags of the resources a caller may change after reading them
//! (Plan, Subscription, checkout Session; docs/design.md, "API contract:
//! lists, views, etags"). An etag is a digest of the resource's fields in a
//! canonical encoding ([`EtagPart`]: length-prefixed text, timestamps in
//! microseconds, states by their stored spelling), so it changes whenever
//! the resource does, costs no column, no trigger and no write on any hot
//! path, and reads the same on every replica and across upgrades of the
//! toolchain or of chrono. A mutating request
//! that carries one is checked under the row's lock, in the transaction
//! that changes the row: a mismatch is ABORTED `ETAG_MISMATCH` (read again,
//! then decide again), never a silent overwrite of a change the caller did
//! not see.
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::error::ServiceError;

/// Longest etag a request may carry: ours are 16 characters; a longer one
/// cannot have come from this service and is refused as malformed.
pub const MAX_ETAG_LEN: usize = 64;

/// An etag as this service issues it (16 lowercase hex digits of a SHA-256
/// over the row's fields) or as a request carried it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Etag(String);

impl Etag {
    /// The etag of a resource of kind `kind` whose fields are `fields`, in
    /// a fixed order. Every part is tagged and length-prefixed, so no two
    /// different field lists share a digest input.
    pub fn of(kind: &str, fields: &[&dyn EtagPart]) -> Etag {
        let mut bytes = Vec::with_capacity(256);
        kind.put(&mut bytes);
        for f in fields {
            f.put(&mut bytes);
        }
        Etag(hex::encode(&Sha256::digest(&bytes)[..8]))
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

/// A field as it goes into an etag: a canonical, self-delimiting encoding
/// that does not depend on `Debug` or `Display` formats.
pub trait EtagPart {
    /// Appends the field's encoding.
    fn put(&self, out: &mut Vec<u8>);
}

impl EtagPart for str {
    fn put(&self, out: &mut Vec<u8>) {
        out.push(b's');
        out.extend_from_slice(&(self.len() as u64).to_be_bytes());
        out.extend_from_slice(self.as_bytes());
    }
}

impl EtagPart for String {
    fn put(&self, out: &mut Vec<u8>) {
        self.as_str().put(out);
    }
}

impl EtagPart for i64 {
    fn put(&self, out: &mut Vec<u8>) {
        out.push(b'i');
        out.extend_from_slice(&self.to_be_bytes());
    }
}

impl EtagPart for i32 {
    fn put(&self, out: &mut Vec<u8>) {
        i64::from(*self).put(out);
    }
}

impl EtagPart for bool {
    fn put(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(if *self { b"b1" } else { b"b0" });
    }
}

impl EtagPart for Uuid {
    fn put(&self, out: &mut Vec<u8>) {
        out.push(b'u');
        out.extend_from_slice(self.as_bytes());
    }
}

impl EtagPart for DateTime<Utc> {
    fn put(&self, out: &mut Vec<u8>) {
        // PostgreSQL keeps microseconds: what a row reads back as.
        out.push(b't');
        out.extend_from_slice(&self.timestamp_micros().to_be_bytes());
    }
}

impl<T: EtagPart> EtagPart for Option<T> {
    fn put(&self, out: &mut Vec<u8>) {
        match self {
            None => out.push(b'n'),
            Some(v) => {
                out.push(b'y');
                v.put(out);
            }
        }
    }
}

/// The etag of `$value`, a `$ty` whose fields are listed once: the struct
/// is destructured without `..`, so a field added to it fails to build
/// until it is listed here, or named after `skip` with why.
///
/// `shared::etag_of!("plan", self, Plan { id, name }, skip { created_at })`
#[macro_export]
macro_rules! etag_of {
    ($kind:literal, $value:expr, $ty:ident { $($field:ident),* $(,)? } $(, skip { $($skip:ident),* $(,)? })?) => {{
        let $ty { $($field,)* $($($skip: _,)*)? } = $value;
        $crate::etag::Etag::of($kind, &[$($field as &dyn $crate::etag::EtagPart),*])
    }};
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

    fn s(v: &str) -> String {
        v.to_owned()
    }

    #[test]
    fn a_changed_field_changes_the_etag_and_field_boundaries_count() {
        let a = Etag::of("s", &[&s("ab"), &Some(1i64)]);
        assert_eq!(a, Etag::of("s", &[&s("ab"), &Some(1i64)]));
        assert_eq!(a.as_str().len(), 16);
        assert_ne!(a, Etag::of("s", &[&s("ab"), &Some(2i64)]));
        assert_ne!(a, Etag::of("s", &[&s("ab"), &None::<i64>]));
        assert_ne!(Etag::of("s", &[&s("a"), &s("b")]), Etag::of("s", &[&s("ab"), &s("")]));
        assert_ne!(Etag::of("s", &[&Some(s(""))]), Etag::of("s", &[&None::<String>]));
        assert_ne!(a, Etag::of("t", &[&s("ab"), &Some(1i64)]));
        let t = DateTime::from_timestamp_micros(1_700_000_000_000_001).unwrap();
        let later = DateTime::from_timestamp_micros(1_700_000_000_000_002).unwrap();
        assert_ne!(Etag::of("s", &[&t]), Etag::of("s", &[&later]));
    }

    #[test]
    fn the_encoding_is_pinned() {
        // A change of this digest changes every etag at deploy time (a
        // mismatch for every caller holding one): only on purpose.
        let e = Etag::of("plan", &[&s("basic"), &49_900i64, &true, &None::<String>, &Uuid::nil()]);
        // The same digest computed by hand from the encoding described above.
        assert_eq!(e.as_str(), "9d9086e2936531c4");
    }

    #[test]
    fn parse_and_check() {
        assert_eq!(Etag::parse_optional(String::new()), Ok(None));
        assert!(Etag::parse_optional("x".repeat(MAX_ETAG_LEN + 1)).is_err());
        assert!(Etag::parse_optional("a b".into()).is_err());
        let current = Etag::of("s", &[&1i64]);
        let sent = Etag::parse_optional(current.to_string()).ok().flatten();
        assert!(Etag::check(sent.as_ref(), &[&current], "subscription", 1).is_ok());
        assert!(Etag::check(None, &[&current], "subscription", 1).is_ok());
        let stale = Etag::parse_optional("0123456789abcdef".into()).ok().flatten();
        let e = Etag::check(stale.as_ref(), &[&current], "subscription", 1);
        assert!(matches!(e, Err(ServiceError::EtagMismatch { resource: "subscription", .. })), "{e:?}");
    }
}
