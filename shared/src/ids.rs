//! Identifiers parsed at the edge (parse, don't validate): the gRPC handlers
//! turn a request's id fields into these types, so a domain function cannot
//! be called with an unchecked id. The rules, and the words of the field
//! violations they report, are those of [`Violations::text`] with
//! [`MAX_ID_LEN`], so a bad id is answered exactly as before.
//!
//! Ids read back from the database stay plain strings: they were checked on
//! the way in.
use tonic::Status;

use crate::status::{self, MAX_ID_LEN, Violations};

/// Why `value` is not an id, in the words of its field violation.
pub fn id_problem(value: &str) -> Option<String> {
    if value.trim().is_empty() {
        Some("is required".to_owned())
    } else if value.chars().count() > MAX_ID_LEN {
        Some(format!("must be at most {MAX_ID_LEN} characters"))
    } else if value.chars().any(char::is_control) {
        Some("must not contain control characters".to_owned())
    } else {
        None
    }
}

/// Records the parse failure of field `name` in `v`. Use the value after
/// `v.finish()?`, which answers every violation of the request at once; the
/// `Err` (that field's own INVALID_ARGUMENT) is then never reached.
pub fn field<T>(v: &mut Violations, name: &str, parsed: Result<T, String>) -> Result<T, Status> {
    parsed.map_err(|why| {
        v.add(name, why.clone());
        status::invalid_field(name, why)
    })
}

/// Declares a text identifier checked by [`id_problem`].
#[macro_export]
macro_rules! text_id {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// The id, or why it is not one (a field violation's words).
            pub fn parse(value: impl Into<String>) -> ::std::result::Result<Self, String> {
                let value = value.into();
                match $crate::ids::id_problem(&value) {
                    Some(why) => Err(why),
                    None => Ok(Self(value)),
                }
            }

            /// The id as the caller sent it.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl ::std::convert::AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl ::std::convert::From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }
    };
}

text_id! {
    /// A user, as the callers of both services name them.
    UserId
}

text_id! {
    /// A plan of billing's catalogue (checkout sessions name one too).
    PlanId
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both paths answer a request with the same status and details.
    fn same_answer(value: &str) {
        let mut old = Violations::new();
        old.text("user_id", value, MAX_ID_LEN);
        let mut new = Violations::new();
        let parsed = field(&mut new, "user_id", UserId::parse(value));
        let (old, new) = (old.finish(), new.finish());
        assert_eq!(old.is_ok(), parsed.is_ok(), "{value:?}");
        match (old, new) {
            (Ok(()), Ok(())) => {}
            (Err(a), Err(b)) => {
                assert_eq!((a.code(), a.message(), a.details()), (b.code(), b.message(), b.details()), "{value:?}");
            }
            (a, b) => panic!("{value:?}: {a:?} vs {b:?}"),
        }
    }

    #[test]
    fn ids_are_checked_as_text_fields_were() {
        for value in [
            "u1",
            "",
            "   ",
            "a\u{0}b",
            "tab\there",
            &"x".repeat(MAX_ID_LEN),
            &"x".repeat(MAX_ID_LEN + 1),
            "ü".repeat(MAX_ID_LEN).as_str(),
        ] {
            same_answer(value);
        }
        assert_eq!(UserId::parse("u1").map(|u| u.to_string()), Ok("u1".to_owned()));
        assert_eq!(PlanId::parse(""), Err("is required".to_owned()));
    }
}
