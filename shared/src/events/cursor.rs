//! Positions in the event stream and the cursors callers hold
//! (docs/design.md, "Events").
//!
//! A cursor is `ev1-` and 56 hex digits: the stream's epoch, the position
//! (xid, seq) and a check (the first 4 bytes of the event id at that
//! position). The epoch tells a cursor of another copy of the database
//! apart; the check tells a position whose event is not the one the caller
//! saw (a restore to an earlier point) apart. Both are CURSOR_EXPIRED, never
//! a silent jump.
use std::fmt;

/// A place in the stream order: events sort by (xid, seq).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    /// The transaction id the event is ordered by (`events.xid`).
    pub xid: u64,
    /// The event's sequence number (`events.seq`).
    pub seq: i64,
}

impl Position {
    /// Before every event.
    pub const START: Position = Position { xid: 0, seq: 0 };
}

/// A position a caller can resume from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cursor {
    /// The stream copy it belongs to (`event_stream.epoch`).
    pub epoch: i64,
    /// Resume after this position.
    pub pos: Position,
    /// First 4 bytes of the event id at `pos` (0 at [`Position::START`]).
    pub check: u32,
}

/// Why a cursor string is not a cursor.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed cursor: {0}")]
pub struct Malformed(&'static str);

const PREFIX: &str = "ev1-";
const HEX_LEN: usize = 56;

impl Cursor {
    /// The check of an event id: its first 4 bytes.
    pub fn check_of(event_id: &uuid::Uuid) -> u32 {
        let b = event_id.as_bytes();
        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
    }

    /// Parses what [`Cursor`]'s `Display` wrote.
    pub fn parse(s: &str) -> Result<Self, Malformed> {
        let hex_part = s.strip_prefix(PREFIX).ok_or(Malformed("it does not start with ev1-"))?;
        if hex_part.len() != HEX_LEN {
            return Err(Malformed("wrong length"));
        }
        let mut bytes = [0u8; HEX_LEN / 2];
        hex::decode_to_slice(hex_part, &mut bytes).map_err(|_| Malformed("not hex"))?;
        let word = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&bytes[i..i + 8]);
            w
        };
        let epoch = i64::from_be_bytes(word(0));
        let xid = u64::from_be_bytes(word(8));
        let seq = i64::from_be_bytes(word(16));
        let check = u32::from_be_bytes([bytes[24], bytes[25], bytes[26], bytes[27]]);
        if epoch <= 0 || seq < 0 || xid > i64::MAX as u64 {
            return Err(Malformed("out of range"));
        }
        Ok(Cursor { epoch, pos: Position { xid, seq }, check })
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut bytes = Vec::with_capacity(HEX_LEN / 2);
        bytes.extend_from_slice(&self.epoch.to_be_bytes());
        bytes.extend_from_slice(&self.pos.xid.to_be_bytes());
        bytes.extend_from_slice(&self.pos.seq.to_be_bytes());
        bytes.extend_from_slice(&self.check.to_be_bytes());
        write!(f, "{PREFIX}{}", hex::encode(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_survives_its_text() {
        let c = Cursor { epoch: 42, pos: Position { xid: 1 << 40, seq: 7 }, check: 0xdead_beef };
        let text = c.to_string();
        assert!(text.starts_with("ev1-") && text.len() == 4 + 56, "{text}");
        assert_eq!(Cursor::parse(&text), Ok(c));
    }

    #[test]
    fn malformed_cursors_are_refused() {
        let good = Cursor { epoch: 1, pos: Position { xid: 3, seq: 4 }, check: 5 }.to_string();
        for bad in ["", "ev1-", "ev2-00", &good[..good.len() - 1], &good.replace("ev1-", "ev2-"), &format!("{good}0")] {
            assert!(Cursor::parse(bad).is_err(), "{bad:?} parsed");
        }
        let not_hex = format!("ev1-{}", "zz".repeat(28));
        assert_eq!(Cursor::parse(&not_hex), Err(Malformed("not hex")));
        let zero_epoch = Cursor { epoch: 0, pos: Position::START, check: 0 }.to_string();
        assert_eq!(Cursor::parse(&zero_epoch), Err(Malformed("out of range")));
    }

    #[test]
    fn positions_sort_by_xid_then_seq() {
        let a = Position { xid: 5, seq: 100 };
        let b = Position { xid: 6, seq: 1 };
        assert!(a < b && Position::START < a);
    }
}
