//! Typed states stored in checked text columns (`CHECK (status IN (…))`):
//! [`text_enum!`](crate::text_enum!) declares an enum with its database spelling, and diesel
//! reads and writes it as `Text`. A value the enum does not know fails the
//! read as a deserialization error; nothing invents a state.

/// Declares a state enum stored as text. Each variant names its database
/// spelling:
///
/// ```
/// shared::text_enum! {
///     /// Where an order is.
///     pub enum OrderStatus { Created = "CREATED", Paid = "PAID" }
/// }
/// assert_eq!(OrderStatus::Paid.as_str(), "PAID");
/// assert_eq!("CREATED".parse::<OrderStatus>(), Ok(OrderStatus::Created));
/// ```
#[macro_export]
macro_rules! text_enum {
    ($(#[$meta:meta])* $vis:vis enum $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ::diesel::expression::AsExpression, ::diesel::deserialize::FromSqlRow)]
        #[diesel(sql_type = ::diesel::sql_types::Text)]
        $vis enum $name { $($(#[$vmeta])* $variant),+ }

        impl $name {
            /// Every state, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The database (and log) spelling.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> ::std::result::Result<Self, String> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err(format!("unknown {} {:?}", stringify!($name), other)),
                }
            }
        }

        impl $crate::etag::EtagPart for $name {
            fn put(&self, out: &mut ::std::vec::Vec<u8>) {
                $crate::etag::EtagPart::put(self.as_str(), out)
            }
        }

        // Reads the database spelling (an event's row payload, `to_jsonb`).
        impl<'de> $crate::serde::Deserialize<'de> for $name {
            fn deserialize<D: $crate::serde::Deserializer<'de>>(d: D) -> ::std::result::Result<Self, D::Error> {
                let s = <::std::string::String as $crate::serde::Deserialize>::deserialize(d)?;
                s.parse::<$name>().map_err(<D::Error as $crate::serde::de::Error>::custom)
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ::diesel::serialize::ToSql<::diesel::sql_types::Text, ::diesel::pg::Pg> for $name {
            fn to_sql<'b>(&'b self, out: &mut ::diesel::serialize::Output<'b, '_, ::diesel::pg::Pg>) -> ::diesel::serialize::Result {
                <str as ::diesel::serialize::ToSql<::diesel::sql_types::Text, ::diesel::pg::Pg>>::to_sql(self.as_str(), out)
            }
        }

        impl ::diesel::deserialize::FromSql<::diesel::sql_types::Text, ::diesel::pg::Pg> for $name {
            fn from_sql(bytes: ::diesel::pg::PgValue<'_>) -> ::diesel::deserialize::Result<Self> {
                let s = <String as ::diesel::deserialize::FromSql<::diesel::sql_types::Text, ::diesel::pg::Pg>>::from_sql(bytes)?;
                s.parse::<$name>().map_err(Into::into)
            }
        }
    };
}
