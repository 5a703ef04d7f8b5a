//! Conversions between chrono times and protobuf timestamps.
use chrono::{DateTime, Utc};

/// A chrono time as a protobuf timestamp.
pub fn to_proto(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: t.timestamp(), nanos: t.timestamp_subsec_nanos() as i32 }
}

/// An optional chrono time as an optional protobuf timestamp.
pub fn opt_to_proto(t: Option<DateTime<Utc>>) -> Option<prost_types::Timestamp> {
    t.map(to_proto)
}
