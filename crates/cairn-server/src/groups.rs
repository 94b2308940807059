//! Consumer groups on the wire: requests checked and turned into the store's values,
//! and the store's answers turned into `cairn-api` bodies.
//!
//! Every check runs before the store is called, so a refused request changes nothing.

use std::time::Duration;

use cairn_api::{
    ClaimRequest, EventFilterSpec, GroupRequest, GroupSettingsView, ParkedList, SettleResponse,
};
use cairn_core::{EventFilter, EventType, Position, Tag};
use cairn_store::groups::{Delivery, GroupOrdering, GroupSettings, GroupStatus, Settled};

use crate::encode;
use crate::error::ApiError;
use crate::extract::parse_stream_name;

/// The longest ack timeout a group may have: one hour.
pub const MAX_ACK_TIMEOUT_MS: u64 = 3_600_000;
pub const DEFAULT_ACK_TIMEOUT_MS: u64 = 30_000;
/// The most deliveries of one event before it is parked.
pub const MAX_DELIVERIES: u32 = 1000;
pub const DEFAULT_MAX_DELIVERIES: u32 = 5;
/// The most events one claim may ask for.
pub const MAX_CLAIM: u32 = 1000;
pub const DEFAULT_CLAIM: u32 = 10;
/// The longest a claim may wait for events.
pub const MAX_CLAIM_WAIT_MS: u64 = 60_000;
/// The longest consumer name, in characters.
pub const MAX_CONSUMER_LEN: usize = 200;
/// The most positions one ack, nack or replay may name.
pub const MAX_POSITIONS: usize = 1000;
/// The longest retry delay a nack may ask for: one hour.
pub const MAX_RETRY_AFTER_MS: u64 = 3_600_000;

fn out_of_range(field: &str, message: String) -> ApiError {
    ApiError::invalid_request(message).with("field", field)
}

/// An optional number in `min..=max`, `default` when absent.
fn in_range<T>(field: &str, value: Option<T>, default: T, min: T, max: T) -> Result<T, ApiError>
where
    T: PartialOrd + Copy + std::fmt::Display,
{
    let value = value.unwrap_or(default);
    if value < min || value > max {
        return Err(out_of_range(
            field,
            format!("`{field}` must be between {min} and {max}, not {value}"),
        ));
    }
    Ok(value)
}

/// The settings a `PUT /v1/groups/{group}` asks for, with the defaults filled in.
pub fn settings_from_request(request: &GroupRequest) -> Result<GroupSettings, ApiError> {
    let from_position = in_range("from_position", request.from_position, 1, 1, u64::MAX)?;
    let ack_timeout_ms = in_range(
        "ack_timeout_ms",
        request.ack_timeout_ms,
        DEFAULT_ACK_TIMEOUT_MS,
        1,
        MAX_ACK_TIMEOUT_MS,
    )?;
    let max_deliveries = in_range(
        "max_deliveries",
        request.max_deliveries,
        DEFAULT_MAX_DELIVERIES,
        1,
        MAX_DELIVERIES,
    )?;
    let filter = match &request.filter {
        None => EventFilter::default(),
        Some(spec) => filter_from_spec(spec)?,
    };
    let ordering = match request.ordering.unwrap_or_default() {
        cairn_api::GroupOrdering::None => GroupOrdering::None,
        cairn_api::GroupOrdering::PerStream => GroupOrdering::PerStream,
    };
    Ok(GroupSettings {
        from_position,
        filter,
        ack_timeout: Duration::from_millis(ack_timeout_ms),
        max_deliveries,
        ordering,
    })
}

/// A group's filter: `types` and `tags` follow the rules of event types and tags,
/// `stream` those of stream names; empty parts match everything.
fn filter_from_spec(spec: &EventFilterSpec) -> Result<EventFilter, ApiError> {
    for event_type in &spec.types {
        EventType::validate(event_type).map_err(|error| {
            ApiError::invalid_request(format!("filter.types: {}", error.message))
                .with("field", "filter.types")
        })?;
    }
    Tag::validate_all(&spec.tags).map_err(|error| {
        ApiError::invalid_request(format!("filter.tags: {}", error.message))
            .with("field", "filter.tags")
    })?;
    let stream = spec
        .stream
        .as_deref()
        .map(|name| {
            parse_stream_name(name).map_err(|error| {
                ApiError::invalid_stream_name(format!("filter.stream: {}", error.message()))
                    .with("field", "filter.stream")
            })
        })
        .transpose()?;
    Ok(EventFilter {
        category: spec
            .category
            .clone()
            .filter(|category| !category.is_empty()),
        types: spec.types.clone(),
        tags: spec.tags.clone(),
        stream: stream.map(|name| name.as_str().to_owned()),
    })
}

/// `filter`, when given, must be an object (or `null`): serde would also take the
/// filter's fields as an array. Checked on the decoded body's text, which is small.
pub fn check_filter_is_an_object(body: &[u8]) -> Result<(), ApiError> {
    #[derive(serde::Deserialize)]
    struct Shape<'a> {
        #[serde(borrow)]
        filter: Option<&'a serde_json::value::RawValue>,
    }
    let Ok(shape) = serde_json::from_slice::<Shape<'_>>(body) else {
        return Ok(());
    };
    match shape
        .filter
        .map(|raw| raw.get().trim_start().as_bytes().first().copied())
    {
        None | Some(Some(b'{' | b'n')) => Ok(()),
        Some(_) => {
            Err(ApiError::invalid_request("`filter` must be a JSON object").with("field", "filter"))
        }
    }
}

/// The wire form of a group's status.
pub fn status_to_wire(status: &GroupStatus) -> cairn_api::GroupStatus {
    let settings = &status.settings;
    cairn_api::GroupStatus {
        group: status.name.clone(),
        checkpoint: status.checkpoint,
        head_position: status.head_position,
        lag: status.lag,
        in_flight: status.in_flight as u64,
        waiting: status.waiting as u64,
        parked: status.parked,
        settings: GroupSettingsView {
            from_position: settings.from_position,
            filter: EventFilterSpec {
                category: settings.filter.category.clone(),
                types: settings.filter.types.clone(),
                tags: settings.filter.tags.clone(),
                stream: settings.filter.stream.clone(),
            },
            ack_timeout_ms: u64::try_from(settings.ack_timeout.as_millis()).unwrap_or(u64::MAX),
            max_deliveries: settings.max_deliveries,
            ordering: match settings.ordering {
                GroupOrdering::None => cairn_api::GroupOrdering::None,
                GroupOrdering::PerStream => cairn_api::GroupOrdering::PerStream,
            },
        },
    }
}

/// A checked claim: who, how many, how long to wait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub consumer: String,
    pub max: usize,
    pub wait: Duration,
}

pub fn claim_from_request(request: ClaimRequest) -> Result<Claim, ApiError> {
    let length = request.consumer.chars().count();
    if length == 0 || length > MAX_CONSUMER_LEN {
        return Err(out_of_range(
            "consumer",
            format!("`consumer` must be 1 to {MAX_CONSUMER_LEN} characters long, not {length}"),
        ));
    }
    let max = in_range("max", request.max, DEFAULT_CLAIM, 1, MAX_CLAIM)?;
    let wait_ms = in_range("wait_ms", request.wait_ms, 0, 0, MAX_CLAIM_WAIT_MS)?;
    Ok(Claim {
        consumer: request.consumer,
        max: max as usize,
        wait: Duration::from_millis(wait_ms),
    })
}

/// 1..=1000 positions, each ≥ 1 (positions start at 1).
pub fn check_positions(positions: &[u64]) -> Result<&[Position], ApiError> {
    if positions.is_empty() || positions.len() > MAX_POSITIONS {
        return Err(out_of_range(
            "positions",
            format!(
                "`positions` must hold 1 to {MAX_POSITIONS} positions, not {}",
                positions.len()
            ),
        ));
    }
    if let Some(index) = positions.iter().position(|position| *position == 0) {
        return Err(out_of_range(
            "positions",
            format!("positions[{index}] is 0; positions start at 1"),
        )
        .with("index", index));
    }
    Ok(positions)
}

/// A nack's retry delay: 0 (at once) to one hour.
pub fn retry_after(retry_after_ms: Option<u64>) -> Result<Duration, ApiError> {
    in_range("retry_after_ms", retry_after_ms, 0, 0, MAX_RETRY_AFTER_MS).map(Duration::from_millis)
}

pub fn settled_to_wire(settled: Settled) -> SettleResponse {
    SettleResponse {
        settled: settled.settled as u64,
        ignored: settled.ignored as u64,
        parked: settled.parked as u64,
    }
}

/// With traces exported, the span of handing `deliveries` to a consumer: a child of the
/// claim's request span, linked to each `$traceparent` the events carry. None when no
/// event carries a trace context (or traces are off).
pub fn delivery_span(group: &str, consumer: &str, deliveries: &[Delivery]) -> tracing::Span {
    let contexts =
        cairn_store::trace::event_contexts(deliveries.iter().map(|delivery| &*delivery.event));
    if contexts.is_empty() {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(
        target: cairn_store::trace::SPAN_TARGET,
        "group.deliver",
        otel.name = "group deliver",
        otel.kind = "producer",
        group,
        consumer,
        events = deliveries.len(),
    );
    cairn_store::trace::follow(&span, contexts, false);
    span
}

/// `{"deliveries":[{"position":N,"attempt":N,"event":{…}}]}`, the events written from
/// stored text as reads write them.
pub fn claim_body(deliveries: &[Delivery]) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        32 + deliveries
            .iter()
            .map(|delivery| 300 + delivery.event.data.len() + delivery.event.metadata.len())
            .sum::<usize>(),
    );
    out.extend_from_slice(b"{\"deliveries\":[");
    for (index, delivery) in deliveries.iter().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"position\":");
        out.extend_from_slice(delivery.event.position.to_string().as_bytes());
        out.extend_from_slice(b",\"attempt\":");
        out.extend_from_slice(delivery.attempt.to_string().as_bytes());
        out.extend_from_slice(b",\"event\":");
        encode::write_event(&mut out, &delivery.event);
        out.push(b'}');
    }
    out.extend_from_slice(b"]}");
    out
}

/// A page of parked events; `next` is set when the page is full.
pub fn parked_page(parked: &[cairn_store::ParkedEvent], limit: usize) -> ParkedList {
    let next = (parked.len() >= limit)
        .then(|| parked.last().map(|entry| entry.position))
        .flatten();
    ParkedList {
        parked: parked
            .iter()
            .map(|entry| cairn_api::ParkedEvent {
                position: entry.position,
                deliveries: entry.deliveries,
                reason: entry.reason.clone(),
                parked_at: cairn_core::format_rfc3339_micros(entry.parked_at),
                replaying: entry.replaying,
            })
            .collect(),
        next,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_request_gets_the_documented_defaults() {
        let settings = settings_from_request(&GroupRequest::default()).unwrap();
        assert_eq!(settings, GroupSettings::default());
        assert_eq!(
            settings.ack_timeout,
            Duration::from_millis(DEFAULT_ACK_TIMEOUT_MS)
        );
        assert_eq!(settings.max_deliveries, DEFAULT_MAX_DELIVERIES);
    }

    #[test]
    fn numbers_out_of_range_are_refused_naming_the_field() {
        for (request, field) in [
            (
                GroupRequest {
                    from_position: Some(0),
                    ..GroupRequest::default()
                },
                "from_position",
            ),
            (
                GroupRequest {
                    ack_timeout_ms: Some(MAX_ACK_TIMEOUT_MS + 1),
                    ..GroupRequest::default()
                },
                "ack_timeout_ms",
            ),
            (
                GroupRequest {
                    max_deliveries: Some(0),
                    ..GroupRequest::default()
                },
                "max_deliveries",
            ),
        ] {
            let error = settings_from_request(&request).unwrap_err();
            assert_eq!(error.code(), cairn_api::ErrorCode::InvalidRequest);
            assert!(error.message().contains(field), "{}", error.message());
        }
    }

    #[test]
    fn a_claim_body_parses_as_the_wire_type() {
        let body = claim_body(&[]);
        assert_eq!(body, br#"{"deliveries":[]}"#);
        let parsed: cairn_api::ClaimResponse = serde_json::from_slice(&body).unwrap();
        assert!(parsed.deliveries.is_empty());
    }
}
