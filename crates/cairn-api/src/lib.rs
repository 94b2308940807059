//! Cairn's HTTP wire contract, version 1: the request and response bodies and the closed
//! set of error codes. The server and the client both speak through these types, so the
//! contract is written down exactly once.
//!
//! **Architecture invariant:** this crate is the only serde on Cairn's public surface and
//! depends on no other Cairn crate; the client depends on it and on nothing else of Cairn.

mod error;
mod groups;
mod read_side;
mod types;

pub use error::{ApiError, ErrorBody, ErrorCode};
pub use groups::*;
pub use read_side::*;
pub use types::*;

/// The header a writer sets to make a write safe to retry.
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";
/// The header set on a response that replays the first response to an idempotent write.
pub const IDEMPOTENT_REPLAYED_HEADER: &str = "idempotent-replayed";
