//! A typed HTTP client for Cairn.
//!
//! ```no_run
//! # async fn example() -> Result<(), cairn_client::ClientError> {
//! use cairn_client::{Client, ExpectedVersion, ReadStreamOptions, event};
//!
//! let client = Client::new("http://127.0.0.1:7171")?;
//! let appended = client
//!     .append(
//!         "order-17",
//!         ExpectedVersion::NoStream,
//!         vec![event("OrderPlaced", serde_json::json!({"total": 42}))],
//!     )
//!     .await?;
//! let page = client.read_stream("order-17", &ReadStreamOptions::default()).await?;
//! assert_eq!(page.events[0].position, appended.first_position);
//! # Ok(()) }
//! ```
//!
//! Writes are safe to retry: every write carries an `Idempotency-Key` and the client
//! re-sends the same request with the same key after a transport error or a 503.
//!
//! **Architecture invariant:** this crate depends on `cairn-api` and on nothing else of
//! Cairn — never on storage or the server (a test checks the dependency tree).

mod client;
mod decider;
mod error;
mod event;

pub use cairn_api::{
    AppendCondition, AppendRequest, AppendResponse, ErrorBody, ErrorCode, Event, EventInput,
    EventQuery, ExpectedVersion, Health, MultiAppendRequest, MultiAppendResponse, MultiEventInput,
    ReadAllResponse, ReadStreamResponse, StreamInfo, StreamList,
};
pub use client::{
    Client, ClientBuilder, Direction, ReadAllOptions, ReadStreamOptions, WriteOptions, Written,
};
pub use decider::{DecideError, DecideOptions, Decided};
pub use error::ClientError;
pub use event::{EventExt, EventInputExt, event, event_from};
