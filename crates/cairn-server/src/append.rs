//! Turning decoded append requests into store appends, and store outcomes into 201s.
//!
//! Every check runs before the store is called, so a refused request writes nothing.

use std::collections::HashMap;

use axum::response::Response;
use cairn_api::{AppendResponse, MultiAppendResponse};
use cairn_core::{AppendCondition, EventFilter, EventType, ExpectedVersion, NewEvent, Tag};
use cairn_store::{
    AppendOutcome, AppendResult, AppendTarget, IdempotencyClaim, StreamAppendResult,
};
use http::{HeaderValue, StatusCode};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::error::{ApiError, json_response};
use crate::extract::{WriteContext, parse_stream_name};
use crate::{AppState, Limits};

/// The metadata keys beginning with `$` that writers may set.
pub const ALLOWED_RESERVED_METADATA_KEYS: [&str; 3] =
    ["$traceparent", "$correlation_id", "$causation_id"];

/// One event of a request, borrowed from the decoded body.
pub struct EventInput<'a> {
    pub id: Option<Uuid>,
    pub event_type: &'a str,
    pub data: &'a RawValue,
    pub metadata: Option<&'a RawValue>,
    pub tags: Option<&'a [String]>,
}

impl<'a> From<&'a cairn_api::EventInput> for EventInput<'a> {
    fn from(event: &'a cairn_api::EventInput) -> Self {
        Self {
            id: event.id,
            event_type: &event.event_type,
            data: &event.data,
            metadata: event.metadata.as_deref(),
            tags: event.tags.as_deref(),
        }
    }
}

impl<'a> From<&'a cairn_api::MultiEventInput> for EventInput<'a> {
    fn from(event: &'a cairn_api::MultiEventInput) -> Self {
        Self {
            id: event.id,
            event_type: &event.event_type,
            data: &event.data,
            metadata: event.metadata.as_deref(),
            tags: event.tags.as_deref(),
        }
    }
}

/// 1..=`max_events_per_request` events: 400 for none, 413 for too many.
pub fn check_event_count(count: usize, limits: &Limits) -> Result<(), ApiError> {
    if count == 0 {
        return Err(ApiError::invalid_request(
            "`events` must hold at least one event",
        ));
    }
    if count > limits.max_events_per_request {
        return Err(ApiError::payload_too_large(
            format!(
                "the request holds {count} events; the limit is {}",
                limits.max_events_per_request
            ),
            limits.max_events_per_request,
        )
        .with("actual", count));
    }
    Ok(())
}

/// Validates one event and turns it into what the store records.
pub fn new_event(
    index: usize,
    event: EventInput<'_>,
    traceparent: Option<&str>,
    limits: &Limits,
) -> Result<NewEvent, ApiError> {
    let refuse = |message: String| {
        ApiError::invalid_request(format!("events[{index}]: {message}")).with("index", index)
    };
    EventType::validate(event.event_type).map_err(|error| refuse(error.message))?;
    let tags = event.tags.unwrap_or_default();
    Tag::validate_all(tags).map_err(|error| refuse(error.message))?;
    let metadata = metadata_text(event.metadata, traceparent).map_err(refuse)?;
    let data = cairn_core::compact_json(event.data.get());
    let size = data.len() + metadata.len();
    if size > limits.max_event_bytes {
        return Err(ApiError::payload_too_large(
            format!(
                "events[{index}] is {size} bytes (data plus metadata); the limit is {}",
                limits.max_event_bytes
            ),
            limits.max_event_bytes,
        )
        .with("index", index)
        .with("actual", size));
    }
    Ok(NewEvent {
        id: event.id.unwrap_or_else(Uuid::now_v7),
        event_type: event.event_type.to_owned(),
        data,
        metadata,
        tags: tags.to_vec(),
    })
}

/// The metadata to store: the writer's object, compact, with the request's
/// `traceparent` added as `$traceparent` unless the writer set that key itself.
fn metadata_text(raw: Option<&RawValue>, traceparent: Option<&str>) -> Result<String, String> {
    let compact = match raw {
        None => None,
        Some(raw) => {
            let compact = cairn_core::compact_json(raw.get());
            if !compact.starts_with('{') {
                return Err("`metadata` must be a JSON object".to_owned());
            }
            Some(compact)
        }
    };
    let mut has_traceparent = false;
    if let Some(text) = &compact
        // A key can only begin with `$` if the text holds a `$` (or an escape for one).
        && (text.contains('$') || text.contains("\\u"))
    {
        let keys: HashMap<String, serde::de::IgnoredAny> =
            serde_json::from_str(text).map_err(|error| format!("`metadata`: {error}"))?;
        for key in keys.keys().filter(|key| key.starts_with('$')) {
            if !ALLOWED_RESERVED_METADATA_KEYS.contains(&key.as_str()) {
                return Err(format!(
                    "metadata key {key:?} is reserved: keys beginning with `$` are Cairn's \
                     (allowed are {})",
                    ALLOWED_RESERVED_METADATA_KEYS.join(", ")
                ));
            }
            has_traceparent |= key == "$traceparent";
        }
    }
    // A valid traceparent is hex digits and dashes: nothing to escape.
    Ok(match (compact, traceparent) {
        (None, None) => "{}".to_owned(),
        (None, Some(traceparent)) => format!("{{\"$traceparent\":\"{traceparent}\"}}"),
        (Some(text), Some(traceparent)) if !has_traceparent => {
            if text == "{}" {
                format!("{{\"$traceparent\":\"{traceparent}\"}}")
            } else {
                format!("{{\"$traceparent\":\"{traceparent}\",{}", &text[1..])
            }
        }
        (Some(text), _) => text,
    })
}

/// The wire expected version as the domain's.
pub fn expected_from_wire(expected: cairn_api::ExpectedVersion) -> ExpectedVersion {
    match expected {
        cairn_api::ExpectedVersion::Any => ExpectedVersion::Any,
        cairn_api::ExpectedVersion::NoStream => ExpectedVersion::NoStream,
        cairn_api::ExpectedVersion::Exists => ExpectedVersion::Exists,
        cairn_api::ExpectedVersion::Exact(version) => ExpectedVersion::Exact(version),
    }
}

/// Decodes `POST /v1/streams/{stream}/events` into store events.
pub fn single_stream_events(
    events: &[cairn_api::EventInput],
    traceparent: Option<&str>,
    limits: &Limits,
) -> Result<Vec<NewEvent>, ApiError> {
    check_event_count(events.len(), limits)?;
    events
        .iter()
        .enumerate()
        .map(|(index, event)| new_event(index, event.into(), traceparent, limits))
        .collect()
}

/// Decodes `POST /v1/events` into a store append: targets in order of first appearance.
pub fn multi_stream_append(
    request: &cairn_api::MultiAppendRequest,
    traceparent: Option<&str>,
    limits: &Limits,
) -> Result<cairn_store::AppendRequest, ApiError> {
    check_event_count(request.events.len(), limits)?;
    let mut targets: Vec<AppendTarget> = Vec::new();
    let mut target_of: HashMap<&str, usize> = HashMap::new();
    let mut events = Vec::with_capacity(request.events.len());
    for (index, event) in request.events.iter().enumerate() {
        let target = match target_of.get(event.stream.as_str()) {
            Some(target) => *target,
            None => {
                let stream = parse_stream_name(&event.stream).map_err(|error| {
                    ApiError::invalid_stream_name(format!(
                        "events[{index}].stream: {}",
                        error.message()
                    ))
                    .with("index", index)
                })?;
                targets.push(AppendTarget {
                    stream,
                    expected: ExpectedVersion::Any,
                });
                target_of.insert(event.stream.as_str(), targets.len() - 1);
                targets.len() - 1
            }
        };
        events.push((target, new_event(index, event.into(), traceparent, limits)?));
    }
    for (stream, expected) in &request.expected_versions {
        let Some(target) = target_of.get(stream.as_str()) else {
            parse_stream_name(stream).map_err(|error| {
                ApiError::invalid_stream_name(format!("expected_versions: {}", error.message()))
            })?;
            return Err(ApiError::invalid_request(format!(
                "expected_versions names stream {stream:?}, which has no event in this request"
            ))
            .with("stream", stream.as_str()));
        };
        targets[*target].expected = expected_from_wire(*expected);
    }
    let condition = request
        .condition
        .as_ref()
        .map(|condition| -> Result<AppendCondition, ApiError> {
            let types = condition.query.types.clone().unwrap_or_default();
            let tags = condition.query.tags.clone().unwrap_or_default();
            for event_type in &types {
                EventType::validate(event_type).map_err(|error| {
                    ApiError::invalid_request(format!("condition.query.types: {}", error.message))
                })?;
            }
            Tag::validate_all(&tags).map_err(|error| {
                ApiError::invalid_request(format!("condition.query.tags: {}", error.message))
            })?;
            Ok(AppendCondition {
                query: EventFilter {
                    category: condition.query.category.clone(),
                    types,
                    tags,
                    stream: None,
                },
                after: condition.after,
            })
        })
        .transpose()?;
    Ok(cairn_store::AppendRequest {
        targets,
        events,
        condition,
        idempotency: None,
    })
}

/// The idempotency fingerprint: SHA-256 of the method, the raw path and the raw body.
pub fn fingerprint(method: &http::Method, path: &str, body: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(method.as_str().as_bytes());
    hasher.update([0]);
    hasher.update(path.as_bytes());
    hasher.update([0]);
    hasher.update(body);
    hasher.finalize().into()
}

/// Sends an append to the store and answers 201 with `render`'s body, or with the
/// stored first body (plus `Idempotent-Replayed: true`) for a replayed key.
pub async fn execute(
    state: &AppState,
    mut request: cairn_store::AppendRequest,
    write: &WriteContext,
    body: &[u8],
    render: fn(&AppendResult) -> String,
) -> Result<Response, ApiError> {
    request.idempotency = write.idempotency_key.as_ref().map(|key| IdempotencyClaim {
        key: key.clone(),
        fingerprint: fingerprint(&write.method, &write.path, body),
        render,
    });
    // Past every check: the append goes to the store and is waited for, whatever the
    // request timeout says (see `middleware::Commitment`).
    write.commitment.commit();
    match state.store.append(request).await? {
        AppendOutcome::Committed(result) => Ok(json_response(StatusCode::CREATED, render(&result))),
        AppendOutcome::Replayed { body } => {
            let mut response = json_response(StatusCode::CREATED, body);
            response.headers_mut().insert(
                cairn_api::IDEMPOTENT_REPLAYED_HEADER,
                HeaderValue::from_static("true"),
            );
            Ok(response)
        }
    }
}

fn stream_response(stream: &StreamAppendResult) -> AppendResponse {
    AppendResponse {
        stream: stream.stream.as_str().to_owned(),
        first_version: stream.first_version,
        last_version: stream.last_version,
        first_position: stream.first_position,
        last_position: stream.last_position,
    }
}

/// The 201 body of `POST /v1/streams/{stream}/events`.
pub fn render_single(result: &AppendResult) -> String {
    debug_assert_eq!(result.streams.len(), 1);
    let response = result.streams.first().map_or_else(
        || AppendResponse {
            stream: String::new(),
            first_version: 0,
            last_version: 0,
            first_position: result.first_position,
            last_position: result.last_position,
        },
        stream_response,
    );
    serde_json::to_string(&response).unwrap_or_default()
}

/// The 201 body of `POST /v1/events`.
pub fn render_multi(result: &AppendResult) -> String {
    let response = MultiAppendResponse {
        first_position: result.first_position,
        last_position: result.last_position,
        streams: result.streams.iter().map(stream_response).collect(),
    };
    serde_json::to_string(&response).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str) -> Box<RawValue> {
        RawValue::from_string(text.to_owned()).unwrap()
    }

    const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn metadata_is_an_object_with_only_allowed_reserved_keys() {
        assert_eq!(metadata_text(None, None).unwrap(), "{}");
        assert_eq!(
            metadata_text(Some(&raw(r#"{ "a" : 1 }"#)), None).unwrap(),
            r#"{"a":1}"#
        );
        assert!(metadata_text(Some(&raw("[1]")), None).is_err());
        assert!(metadata_text(Some(&raw("null")), None).is_err());
        assert!(metadata_text(Some(&raw(r#"{"$x":1}"#)), None).is_err());
        assert!(metadata_text(Some(&raw(r#"{"\u0024x":1}"#)), None).is_err());
        assert!(metadata_text(Some(&raw(r#"{"a":"$x"}"#)), None).is_ok());
        assert!(metadata_text(Some(&raw(r#"{"$correlation_id":"c"}"#)), None).is_ok());
    }

    #[test]
    fn the_traceparent_is_added_unless_the_writer_set_one() {
        assert_eq!(
            metadata_text(None, Some(TRACEPARENT)).unwrap(),
            format!(r#"{{"$traceparent":"{TRACEPARENT}"}}"#)
        );
        assert_eq!(
            metadata_text(Some(&raw(r#"{"a":1}"#)), Some(TRACEPARENT)).unwrap(),
            format!(r#"{{"$traceparent":"{TRACEPARENT}","a":1}}"#)
        );
        assert_eq!(
            metadata_text(Some(&raw(r#"{"$traceparent":"mine"}"#)), Some(TRACEPARENT)).unwrap(),
            r#"{"$traceparent":"mine"}"#
        );
    }

    #[test]
    fn fingerprints_differ_by_method_path_and_body() {
        let base = fingerprint(&http::Method::POST, "/v1/events", b"{}");
        assert_ne!(base, fingerprint(&http::Method::PUT, "/v1/events", b"{}"));
        assert_ne!(base, fingerprint(&http::Method::POST, "/v1/event", b"s{}"));
        assert_ne!(base, fingerprint(&http::Method::POST, "/v1/events", b"{} "));
    }
}
