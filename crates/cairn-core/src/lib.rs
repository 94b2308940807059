//! Cairn's domain model: events, streams, versions, positions and the rules that govern
//! appends (expected versions, append conditions, read filters).
//!
//! **Architecture invariant:** this crate does no IO and knows nothing of HTTP, JSON wire
//! formats or storage. Everything here is pure and cheap to test.

mod event;
mod expected;
mod filter;
mod stream;
mod time;

pub use event::{EventType, NewEvent, RecordedEvent, Tag, compact_json, json_depth};
pub use expected::{ExpectedVersion, WrongExpectedVersion};
pub use filter::{AppendCondition, EventFilter};
pub use stream::{StreamName, category_of};
pub use time::{format_rfc3339_micros, now_micros, parse_rfc3339_micros};

/// A 1-based index in the global log. Gapless, in commit order.
pub type Position = u64;
/// A 0-based index of an event in its stream. Contiguous.
pub type Version = u64;

/// Why a value coming from outside (a request, a file) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ValidationError {
    /// What was wrong, written for the person who sent it.
    pub message: String,
}

impl ValidationError {
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }
}
