//! Conversions between chrono times and protobuf timestamps.
use chrono::{DateTime, Utc};

pub fn to_proto(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: t.timestamp(), nanos: t.timestamp_subsec_nanos() as i32 }
}

pub fn opt_to_proto(t: Option<DateTime<Utc>>) -> Option<prost_types::Timestamp> {
    t.map(to_proto)
}
