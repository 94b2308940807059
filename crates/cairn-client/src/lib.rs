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
//! Subscriptions ([`Client::subscribe`]) are async streams that reconnect by themselves
//! and resume after the last event seen; consumer groups have typed calls
//! ([`Client::claim`], [`Client::ack`], …) and a worker ([`GroupWorker`]) that claims,
//! handles with bounded concurrency, and acks or nacks. The read side has
//! [`Client::query`] (named queries, with `min_position` for read-your-writes) and
//! [`Client::projections`], [`Client::restart_projection`], [`Client::rebuild_projection`].
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
mod groups;
mod read_side;
mod sse;
mod subscribe;
mod worker;

pub use cairn_api::{
    AckRequest, AppendCondition, AppendRequest, AppendResponse, ClaimRequest, ClaimResponse,
    Delivery, ErrorBody, ErrorCode, Event, EventFilterSpec, EventInput, EventQuery,
    ExpectedVersion, GroupList, GroupOrdering, GroupRequest, GroupSettingsView, GroupStatus,
    Health, MultiAppendRequest, MultiAppendResponse, MultiEventInput, NackRequest, ParkedEvent,
    ParkedList, PlanAnalysis, PlanRow, PlanWarning, ProjectionFailure, ProjectionList,
    ProjectionState, ProjectionStatus, QueryList, QueryPlan, QueryResponse, QueryStatus,
    ReadAllResponse, ReadStreamResponse, ReplayParkedRequest, ReplayParkedResponse, SettleResponse,
    StreamInfo, StreamList,
};
pub use client::{
    Client, ClientBuilder, Direction, ReadAllOptions, ReadStreamOptions, WriteOptions, Written,
    bearer_header, ca_certificates_of,
};
pub use decider::{DecideError, DecideOptions, Decided};
pub use error::ClientError;
pub use event::{EventExt, EventInputExt, event, event_from};
pub use groups::GroupPut;
pub use subscribe::{RawEvent, RawSubscription, ReconnectPolicy, SubscribeOptions, Subscription};
pub use worker::{GroupWorker, Nack, WorkerStats};
