//! Consumer groups and subscriptions on the wire.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::Event;

/// Which events a consumer group or a subscription receives. Empty parts match
/// everything; `types` is any-of, `tags` all-of.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventFilterSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub types: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
}

/// Delivery order within a consumer group.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum GroupOrdering {
    /// Any events may be in flight together.
    #[default]
    None,
    /// At most one event per stream in flight, delivered in version order.
    PerStream,
}

/// `PUT /v1/groups/{group}`: creates a group or updates its settings (an existing
/// group keeps its checkpoint; `from_position` only applies on creation).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupRequest {
    /// The first log position the group delivers (default 1: from the beginning).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_position: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<EventFilterSpec>,
    /// How long a claimed event may stay unacknowledged before it is delivered again
    /// (default 30000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack_timeout_ms: Option<u64>,
    /// Deliveries of one event before it is parked (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_deliveries: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ordering: Option<GroupOrdering>,
}

/// A group's settings as in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GroupSettingsView {
    pub from_position: u64,
    pub filter: EventFilterSpec,
    pub ack_timeout_ms: u64,
    pub max_deliveries: u32,
    pub ordering: GroupOrdering,
}

/// `GET /v1/groups/{group}`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GroupStatus {
    pub group: String,
    /// Every matching event at or before this position is acknowledged or parked.
    pub checkpoint: u64,
    pub head_position: u64,
    /// Log positions between the checkpoint and the head.
    pub lag: u64,
    pub in_flight: u64,
    /// Events read ahead and waiting for a consumer, including retries.
    pub waiting: u64,
    pub parked: u64,
    pub settings: GroupSettingsView,
}

/// `GET /v1/groups`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GroupList {
    pub groups: Vec<GroupStatus>,
}

/// `POST /v1/groups/{group}/claim`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClaimRequest {
    /// Who claims, for logs and operators.
    pub consumer: String,
    /// The most events to receive (1–1000, default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<u32>,
    /// How long to wait for events when none are ready (0–60000, default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_ms: Option<u64>,
}

/// One claimed event.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Delivery {
    /// The event's position: what to ack or nack.
    pub position: u64,
    /// 1 for the first delivery, 2 for the first redelivery, …
    pub attempt: u32,
    pub event: Event,
}

/// The answer to a claim (possibly empty).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ClaimResponse {
    pub deliveries: Vec<Delivery>,
}

/// `POST /v1/groups/{group}/ack`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AckRequest {
    pub positions: Vec<u64>,
}

/// `POST /v1/groups/{group}/nack`: give events back, for a retry now or after
/// `retry_after_ms`; an event on its last delivery is parked instead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NackRequest {
    pub positions: Vec<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

/// The answer to an ack or a nack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SettleResponse {
    /// Positions that were awaiting an answer and got it.
    pub settled: u64,
    /// Positions that were not awaiting an answer (unknown or already settled).
    pub ignored: u64,
    /// Positions parked because they had had their last delivery.
    pub parked: u64,
}

/// A parked event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ParkedEvent {
    pub position: u64,
    pub deliveries: u32,
    pub reason: String,
    /// RFC 3339, UTC.
    pub parked_at: String,
    /// True while a replay has it back in delivery.
    pub replaying: bool,
}

/// `GET /v1/groups/{group}/parked?after=&limit=`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ParkedList {
    pub parked: Vec<ParkedEvent>,
    /// Pass as `after` for the next page; `null` at the end.
    pub next: Option<u64>,
}

/// `POST /v1/groups/{group}/parked/replay`: all parked events, or those listed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayParkedRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub positions: Option<Vec<u64>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ReplayParkedResponse {
    pub replayed: u64,
}

/// The SSE comment a subscription ends with when the server drops a client that stopped
/// reading: `: closed: slow_consumer …`.
pub const SSE_SLOW_CONSUMER_COMMENT: &str = "closed: slow_consumer: the client did not read events fast enough; reconnect with Last-Event-ID to resume";
