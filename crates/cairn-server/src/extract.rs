//! Decoding requests into validated values, with limits. Nothing here lets an axum
//! rejection through: every refusal is an [`ApiError`], so it is answered as JSON.

use std::borrow::Cow;

use axum::body::Body;
use axum::extract::{FromRequestParts, Path};
use bytes::Bytes;
use cairn_core::{EventFilter, ExpectedVersion, Position, StreamName, Version};
use cairn_store::Direction;
use http::request::Parts;
use http::{HeaderMap, Method, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::de::DeserializeOwned;
use serde_json::error::Category;

use crate::error::ApiError;
use crate::middleware::Commitment;
use crate::{AppState, Limits};

/// The `limit` of a read when the request names none.
pub const DEFAULT_READ_LIMIT: usize = 100;
/// The W3C trace-context header.
pub const TRACEPARENT_HEADER: &str = "traceparent";
/// The longest `Idempotency-Key`, in bytes.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

// ---------------------------------------------------------------------------------
// Bodies
// ---------------------------------------------------------------------------------

/// Reads the whole body, refusing with 413 `payload_too_large` beyond `limit` bytes
/// (early, when `Content-Length` already says so).
pub async fn read_body(
    body: Body,
    content_length: Option<u64>,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let too_large =
        || ApiError::payload_too_large(format!("the request body exceeds {limit} bytes"), limit);
    if content_length.is_some_and(|length| length > limit as u64) {
        return Err(too_large());
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Err(error) => {
            tracing::debug!(target: "cairn::http", %error, "reading the request body failed");
            Err(ApiError::invalid_request(
                "the request body could not be read",
            ))
        }
    }
}

/// Reads a whole body (within `limits.max_body_bytes`) and parses it as JSON into `T`,
/// as [`read_body`] and [`decode_json`] do.
pub async fn read_json_body<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: Body,
    limits: &Limits,
) -> Result<T, ApiError> {
    let bytes = read_body(body, content_length(headers), limits.max_body_bytes).await?;
    decode_json(&bytes, limits)
}

/// The `Content-Length` header, when it is a number.
pub fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse().ok())
}

/// Parses a JSON body into `T`, whatever its `Content-Type`: first the depth check
/// (before any parsing), then UTF-8, then serde. Syntax errors are `invalid_json`;
/// well-formed JSON of the wrong shape is `invalid_request` with serde's message. Every
/// request body of the API is an object: serde would also take a struct written as an
/// array of its fields, which is refused here.
pub fn decode_json<T: DeserializeOwned>(bytes: &[u8], limits: &Limits) -> Result<T, ApiError> {
    let value = decode_any_json(bytes, limits)?;
    if bytes.trim_ascii_start().first() != Some(&b'{') {
        return Err(ApiError::invalid_request(
            "the request body must be a JSON object",
        ));
    }
    Ok(value)
}

fn decode_any_json<T: DeserializeOwned>(bytes: &[u8], limits: &Limits) -> Result<T, ApiError> {
    let depth = cairn_core::json_depth(bytes);
    if depth > limits.max_json_depth {
        return Err(ApiError::invalid_json(format!(
            "the request body is nested deeper than {} levels",
            limits.max_json_depth
        ))
        .with("limit", limits.max_json_depth));
    }
    let text = std::str::from_utf8(bytes).map_err(|error| {
        ApiError::invalid_json(format!("the request body is not valid UTF-8: {error}"))
    })?;
    let not_json = |error: serde_json::Error| {
        ApiError::invalid_json(format!("the request body is not valid JSON: {error}"))
    };
    serde_json::from_str(text).map_err(|error| match error.classify() {
        // serde stops at the first wrong value, which may come before a syntax error
        // further on: on this (cold) path, check the whole text is JSON before blaming
        // the shape.
        Category::Data => match serde_json::from_str::<serde::de::IgnoredAny>(text) {
            Ok(_) => ApiError::invalid_request(error.to_string()),
            Err(syntax) => not_json(syntax),
        },
        Category::Syntax | Category::Eof | Category::Io => not_json(error),
    })
}

// ---------------------------------------------------------------------------------
// Path
// ---------------------------------------------------------------------------------

/// The `{stream}` path segment, percent-decoded and validated.
#[derive(Debug, Clone)]
pub struct StreamPath(pub StreamName);

impl<S: Send + Sync> FromRequestParts<S> for StreamPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|rejection| {
                ApiError::invalid_stream_name(format!(
                    "invalid stream name in the path: {rejection}"
                ))
            })?;
        parse_stream_name(&raw).map(StreamPath)
    }
}

/// Validates a stream name from anywhere in a request.
pub fn parse_stream_name(name: &str) -> Result<StreamName, ApiError> {
    StreamName::parse(name).map_err(|error| ApiError::invalid_stream_name(error.message))
}

// ---------------------------------------------------------------------------------
// Write headers
// ---------------------------------------------------------------------------------

/// What a write takes from the request line and headers.
#[derive(Debug, Clone)]
pub struct WriteContext {
    pub method: Method,
    /// The raw (not percent-decoded) request path; part of the idempotency fingerprint.
    pub path: String,
    pub content_length: Option<u64>,
    /// A validated `Idempotency-Key`.
    pub idempotency_key: Option<String>,
    /// The `traceparent` stored in each event's metadata: Cairn's request span when
    /// traces are exported, else the request's valid W3C `traceparent` header.
    pub traceparent: Option<String>,
    /// Marks the moment the write is handed to the store: from then on the request
    /// timeout waits for the store's answer instead of abandoning it.
    pub commitment: Commitment,
}

impl<S: Send + Sync> FromRequestParts<S> for WriteContext {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Self {
            method: parts.method.clone(),
            path: parts.uri.path().to_owned(),
            content_length: content_length(&parts.headers),
            idempotency_key: idempotency_key(&parts.headers)?,
            traceparent: crate::trace::write_traceparent(&parts.headers),
            commitment: Commitment::of(parts),
        })
    }
}

/// The `Idempotency-Key` header: 1–255 visible ASCII characters (0x21–0x7E), once.
pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let mut values = headers.get_all(cairn_api::IDEMPOTENCY_KEY_HEADER).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ApiError::invalid_request(
            "the Idempotency-Key header is given more than once",
        ));
    }
    let bytes = value.as_bytes();
    if bytes.is_empty() || bytes.len() > MAX_IDEMPOTENCY_KEY_LEN {
        return Err(ApiError::invalid_request(format!(
            "the Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} characters long"
        )));
    }
    if !bytes.iter().all(|byte| (0x21..=0x7e).contains(byte)) {
        return Err(ApiError::invalid_request(
            "the Idempotency-Key may only contain visible ASCII characters (no spaces)",
        ));
    }
    // Visible ASCII is UTF-8.
    Ok(Some(String::from_utf8_lossy(bytes).into_owned()))
}

/// The request's `traceparent` header if it is a valid W3C trace context; an invalid
/// one is ignored, as the W3C recommendation asks.
pub fn traceparent(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(TRACEPARENT_HEADER)?.to_str().ok()?;
    is_valid_traceparent(value).then_some(value)
}

/// `version-traceid-parentid-flags`: 2, 32, 16 and 2 lowercase hex digits; version
/// `ff` is invalid; all-zero trace and parent ids are invalid; version `00` has exactly
/// these four fields, later versions may add more after a `-`.
pub fn is_valid_traceparent(value: &str) -> bool {
    let bytes = value.as_bytes();
    if bytes.len() < 55 {
        return false;
    }
    let hex = |range: std::ops::Range<usize>| {
        bytes[range]
            .iter()
            .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(byte))
    };
    let all_zero = |range: std::ops::Range<usize>| bytes[range].iter().all(|byte| *byte == b'0');
    let shape = hex(0..2)
        && bytes[2] == b'-'
        && hex(3..35)
        && bytes[35] == b'-'
        && hex(36..52)
        && bytes[52] == b'-'
        && hex(53..55);
    if !shape || &bytes[0..2] == b"ff" || all_zero(3..35) || all_zero(36..52) {
        return false;
    }
    if &bytes[0..2] == b"00" {
        bytes.len() == 55
    } else {
        bytes.len() == 55 || bytes[55] == b'-'
    }
}

/// The trace id of a valid `traceparent` (for logs).
pub fn trace_id_of(traceparent: &str) -> &str {
    &traceparent[3..35]
}

// ---------------------------------------------------------------------------------
// Query strings
// ---------------------------------------------------------------------------------

/// A query string split into known parameters. An unknown or repeated parameter is
/// refused; an empty value counts as absent.
pub struct QueryParams<'a> {
    pairs: Vec<(Cow<'a, str>, Cow<'a, str>)>,
}

impl<'a> QueryParams<'a> {
    pub fn parse(query: Option<&'a str>, allowed: &[&str]) -> Result<Self, ApiError> {
        let mut pairs: Vec<(Cow<'a, str>, Cow<'a, str>)> = Vec::new();
        for (name, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            if !allowed.contains(&name.as_ref()) {
                return Err(ApiError::invalid_request(format!(
                    "unknown query parameter `{name}`; allowed are: {}",
                    allowed.join(", ")
                ))
                .with("parameter", name.as_ref()));
            }
            if pairs.iter().any(|(seen, _)| *seen == name) {
                return Err(ApiError::invalid_request(format!(
                    "query parameter `{name}` is given more than once"
                ))
                .with("parameter", name.as_ref()));
            }
            pairs.push((name, value));
        }
        Ok(Self { pairs })
    }

    /// The parameter's value; `None` when absent or empty.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_ref())
            .filter(|value| !value.is_empty())
    }

    pub fn u64(&self, name: &str) -> Result<Option<u64>, ApiError> {
        let Some(value) = self.get(name) else {
            return Ok(None);
        };
        if !value.bytes().all(|byte| byte.is_ascii_digit()) {
            return Err(invalid_parameter(
                name,
                format!("query parameter `{name}` must be a non-negative integer, not {value:?}"),
            ));
        }
        value.parse().map(Some).map_err(|_| {
            invalid_parameter(
                name,
                format!("query parameter `{name}` is too large: {value}"),
            )
        })
    }

    /// A page size: `default` when absent, else 1..=`max`.
    pub fn limit(&self, name: &str, default: usize, max: usize) -> Result<usize, ApiError> {
        match self.u64(name)? {
            None => Ok(default.min(max)),
            Some(limit) if limit >= 1 && limit <= max as u64 => Ok(limit as usize),
            Some(limit) => Err(invalid_parameter(
                name,
                format!("query parameter `{name}` must be between 1 and {max}, not {limit}"),
            )),
        }
    }

    /// A comma-separated list; empty items are dropped.
    pub fn list(&self, name: &str) -> Vec<String> {
        self.get(name)
            .map(|value| {
                value
                    .split(',')
                    .filter(|item| !item.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn invalid_parameter(name: &str, message: String) -> ApiError {
    ApiError::invalid_request(message).with("parameter", name)
}

fn query_of(parts: &Parts) -> Option<&str> {
    parts.uri.query()
}

/// `GET /v1/streams/{stream}/events?from=&limit=&direction=`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadStreamQuery {
    pub from: Option<Version>,
    pub limit: usize,
    pub direction: Direction,
}

impl FromRequestParts<AppState> for ReadStreamQuery {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let params = QueryParams::parse(query_of(parts), &["from", "limit", "direction"])?;
        let direction = match params.get("direction") {
            None | Some("forward") => Direction::Forward,
            Some("backward") => Direction::Backward,
            Some(other) => {
                return Err(invalid_parameter(
                    "direction",
                    format!(
                        "query parameter `direction` must be `forward` or `backward`, not {other:?}"
                    ),
                ));
            }
        };
        Ok(Self {
            from: params.u64("from")?,
            limit: params.limit("limit", DEFAULT_READ_LIMIT, state.limits.max_read_limit)?,
            direction,
        })
    }
}

/// `GET /v1/streams?prefix=&after=&limit=`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListStreamsQuery {
    pub prefix: String,
    pub after: Option<String>,
    pub limit: usize,
}

impl FromRequestParts<AppState> for ListStreamsQuery {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let params = QueryParams::parse(query_of(parts), &["prefix", "after", "limit"])?;
        Ok(Self {
            prefix: params.get("prefix").unwrap_or("").to_owned(),
            after: params.get("after").map(str::to_owned),
            limit: params.limit("limit", DEFAULT_READ_LIMIT, state.limits.max_read_limit)?,
        })
    }
}

/// `GET /v1/events?from_position=&limit=&category=&types=&tags=&stream=`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadAllQuery {
    pub from_position: Position,
    pub limit: usize,
    pub filter: EventFilter,
}

impl FromRequestParts<AppState> for ReadAllQuery {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let params = QueryParams::parse(
            query_of(parts),
            &[
                "from_position",
                "limit",
                "category",
                "types",
                "tags",
                "stream",
            ],
        )?;
        Ok(Self {
            from_position: from_position(&params)?.unwrap_or(1),
            limit: params.limit("limit", DEFAULT_READ_LIMIT, state.limits.max_read_limit)?,
            filter: log_filter(&params)?,
        })
    }
}

/// The `from_position` parameter: a position (≥ 1) when given.
fn from_position(params: &QueryParams<'_>) -> Result<Option<Position>, ApiError> {
    match params.u64("from_position")? {
        Some(0) => Err(invalid_parameter(
            "from_position",
            "query parameter `from_position` must be at least 1 (positions start at 1)".to_owned(),
        )),
        position => Ok(position),
    }
}

/// The filter parameters of a log read or a subscription: `category`, `types`, `tags`
/// and `stream` (a valid stream name).
fn log_filter(params: &QueryParams<'_>) -> Result<EventFilter, ApiError> {
    let stream = params
        .get("stream")
        .map(|name| parse_stream_name(name).map(|name| name.as_str().to_owned()))
        .transpose()?;
    Ok(EventFilter {
        category: params.get("category").map(str::to_owned),
        types: params.list("types"),
        tags: params.list("tags"),
        stream,
    })
}

/// The SSE header naming the last event a reconnecting client received.
pub const LAST_EVENT_ID_HEADER: &str = "last-event-id";

/// Where a subscription starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscribeStart {
    /// After this position (`Last-Event-ID`).
    After(Position),
    /// At this position (`from_position`).
    At(Position),
    /// After the head: new events only.
    New,
}

/// `GET /v1/subscribe?from_position=&category=&types=&tags=&stream=` with an optional
/// `Last-Event-ID` header (which wins over `from_position`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeQuery {
    pub start: SubscribeStart,
    pub filter: EventFilter,
}

impl<S: Send + Sync> FromRequestParts<S> for SubscribeQuery {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let params = QueryParams::parse(
            query_of(parts),
            &["from_position", "category", "types", "tags", "stream"],
        )?;
        let from_position = from_position(&params)?;
        let filter = log_filter(&params)?;
        let start = match (last_event_id(&parts.headers)?, from_position) {
            (Some(last), _) => SubscribeStart::After(last),
            (None, Some(position)) => SubscribeStart::At(position),
            (None, None) => SubscribeStart::New,
        };
        Ok(Self { start, filter })
    }
}

/// The `Last-Event-ID` header: a position (an integer ≥ 0), once; empty counts as
/// absent.
fn last_event_id(headers: &HeaderMap) -> Result<Option<Position>, ApiError> {
    let mut values = headers.get_all(LAST_EVENT_ID_HEADER).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    let refuse = |message: &str| {
        Err(ApiError::invalid_request(message.to_owned()).with("header", "Last-Event-ID"))
    };
    if values.next().is_some() {
        return refuse("the Last-Event-ID header is given more than once");
    }
    let Ok(text) = value.to_str() else {
        return refuse("the Last-Event-ID header must be a log position (an integer ≥ 0)");
    };
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    if !text.bytes().all(|byte| byte.is_ascii_digit()) {
        return refuse("the Last-Event-ID header must be a log position (an integer ≥ 0)");
    }
    match text.parse() {
        Ok(position) => Ok(Some(position)),
        Err(_) => refuse("the Last-Event-ID header is too large to be a log position"),
    }
}

// ---------------------------------------------------------------------------------
// Consumer groups
// ---------------------------------------------------------------------------------

/// The `{group}` path segment, percent-decoded and validated: group names follow the
/// rules of stream names (1–200 characters from `[A-Za-z0-9_.:@-]`, not starting with
/// `$`). A bad one is 400 `invalid_request` naming `group`.
#[derive(Debug, Clone)]
pub struct GroupPath(pub String);

impl<S: Send + Sync> FromRequestParts<S> for GroupPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|rejection| {
                ApiError::invalid_request(format!("invalid group name in the path: {rejection}"))
                    .with("parameter", "group")
            })?;
        match StreamName::parse(&raw) {
            Ok(_) => Ok(GroupPath(raw)),
            Err(error) => Err(ApiError::invalid_request(format!(
                "invalid group name: {}",
                error.message.replace("stream name", "group name")
            ))
            .with("parameter", "group")
            .with("group", raw)),
        }
    }
}

/// `GET /v1/groups/{group}/parked?after=&limit=`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParkedQuery {
    /// Only parked events after this position (exclusive; 0: from the start).
    pub after: Position,
    pub limit: usize,
}

impl FromRequestParts<AppState> for ParkedQuery {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let params = QueryParams::parse(query_of(parts), &["after", "limit"])?;
        Ok(Self {
            after: params.u64("after")?.unwrap_or(0),
            limit: params.limit("limit", DEFAULT_READ_LIMIT, state.limits.max_read_limit)?,
        })
    }
}

// ---------------------------------------------------------------------------------
// Read side: projections and named queries
// ---------------------------------------------------------------------------------

/// The longest `wait_ms` of a named query, in milliseconds.
pub const MAX_QUERY_WAIT_MS: u64 = 60_000;
/// The query parameters that control consistency, not the query.
pub const MIN_POSITION_PARAM: &str = "min_position";
pub const WAIT_MS_PARAM: &str = "wait_ms";

/// The `{name}` path segment of a projection or a query, percent-decoded. Names are
/// not checked here: a name that cannot exist is simply not found (404).
#[derive(Debug, Clone)]
pub struct NamePath(pub String);

impl<S: Send + Sync> FromRequestParts<S> for NamePath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|rejection| {
                ApiError::invalid_request(format!("invalid name in the path: {rejection}"))
                    .with("parameter", "name")
            })?;
        Ok(NamePath(raw))
    }
}

/// `GET /v1/queries/{name}?<params>&min_position=&wait_ms=`: the query's own
/// parameters (checked by the read side against the query's declaration) and the
/// consistency controls. Every parameter may be given once; `min_position` and
/// `wait_ms` when empty count as absent, the query's own parameters are passed as
/// given (an empty text is a value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedQueryParams {
    pub params: std::collections::HashMap<String, String>,
    /// Answer only once the rows reflect this log position.
    pub min_position: Option<Position>,
    /// How long to wait for `min_position` (0: check once).
    pub wait: std::time::Duration,
}

impl<S: Send + Sync> FromRequestParts<S> for NamedQueryParams {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Self::parse(query_of(parts))
    }
}

impl NamedQueryParams {
    pub fn parse(query: Option<&str>) -> Result<Self, ApiError> {
        let mut params = std::collections::HashMap::new();
        let mut min_position = None;
        let mut wait_ms = None;
        for (name, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            if name.is_empty() {
                continue;
            }
            let given_twice = params.contains_key(name.as_ref())
                || (name == MIN_POSITION_PARAM && min_position.is_some())
                || (name == WAIT_MS_PARAM && wait_ms.is_some());
            if given_twice {
                return Err(invalid_parameter(
                    &name,
                    format!("query parameter `{name}` is given more than once"),
                ));
            }
            match name.as_ref() {
                MIN_POSITION_PARAM => min_position = Some(value.into_owned()),
                WAIT_MS_PARAM => wait_ms = Some(value.into_owned()),
                _ => {
                    params.insert(name.into_owned(), value.into_owned());
                }
            }
        }
        let number = |name: &str, value: Option<String>| -> Result<Option<u64>, ApiError> {
            let Some(value) = value.filter(|value| !value.is_empty()) else {
                return Ok(None);
            };
            if !value.bytes().all(|byte| byte.is_ascii_digit()) {
                return Err(invalid_parameter(
                    name,
                    format!(
                        "query parameter `{name}` must be a non-negative integer, not {value:?}"
                    ),
                ));
            }
            value.parse().map(Some).map_err(|_| {
                invalid_parameter(
                    name,
                    format!("query parameter `{name}` is too large: {value}"),
                )
            })
        };
        let min_position = number(MIN_POSITION_PARAM, min_position)?;
        let wait_ms = number(WAIT_MS_PARAM, wait_ms)?.unwrap_or(0);
        if wait_ms > MAX_QUERY_WAIT_MS {
            return Err(invalid_parameter(
                WAIT_MS_PARAM,
                format!(
                    "query parameter `wait_ms` must be between 0 and {MAX_QUERY_WAIT_MS}, not {wait_ms}"
                ),
            ));
        }
        Ok(Self {
            params,
            min_position,
            wait: std::time::Duration::from_millis(wait_ms),
        })
    }
}

/// `DELETE /v1/streams/{stream}?expected_version=`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeleteStreamQuery {
    pub expected_version: ExpectedVersion,
}

impl<S: Send + Sync> FromRequestParts<S> for DeleteStreamQuery {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let params = QueryParams::parse(query_of(parts), &["expected_version"])?;
        let expected_version = match params.get("expected_version") {
            None | Some("any") => ExpectedVersion::Any,
            Some("no_stream") => ExpectedVersion::NoStream,
            Some("exists") => ExpectedVersion::Exists,
            Some(_) => ExpectedVersion::Exact(
                params
                    .u64("expected_version")
                    .map_err(|_| {
                        invalid_parameter(
                    "expected_version",
                    "query parameter `expected_version` must be a version (an integer ≥ 0), \
                     `no_stream`, `exists` or `any`"
                        .to_owned(),
                )
                    })?
                    .unwrap_or_default(),
            ),
        };
        Ok(Self { expected_version })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparents_are_checked_as_w3c_says() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert!(is_valid_traceparent(good));
        assert_eq!(trace_id_of(good), "4bf92f3577b34da6a3ce929d0e0e4736");
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(!is_valid_traceparent(bad), "{bad}");
        }
        assert!(is_valid_traceparent(
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-later"
        ));
    }

    #[test]
    fn query_parameters_are_known_single_and_typed() {
        let params = QueryParams::parse(
            Some("from=3&limit=&types=a,,b"),
            &["from", "limit", "types"],
        )
        .unwrap();
        assert_eq!(params.u64("from").unwrap(), Some(3));
        assert_eq!(params.limit("limit", 100, 1000).unwrap(), 100);
        assert_eq!(params.list("types"), ["a", "b"]);
        assert!(QueryParams::parse(Some("nope=1"), &["from"]).is_err());
        assert!(QueryParams::parse(Some("from=1&from=2"), &["from"]).is_err());
        let params = QueryParams::parse(Some("from=-1&limit=0"), &["from", "limit"]).unwrap();
        assert!(params.u64("from").is_err());
        assert!(params.limit("limit", 100, 1000).is_err());
        let params = QueryParams::parse(Some("from=99999999999999999999999"), &["from"]).unwrap();
        assert!(params.u64("from").is_err());
    }

    #[test]
    fn named_query_parameters_split_from_the_consistency_controls() {
        let parsed =
            NamedQueryParams::parse(Some("customer=c%2042&limit=&min_position=7&wait_ms=250"))
                .unwrap();
        assert_eq!(parsed.params["customer"], "c 42");
        assert_eq!(parsed.params["limit"], "", "an empty value is passed on");
        assert_eq!(parsed.min_position, Some(7));
        assert_eq!(parsed.wait, std::time::Duration::from_millis(250));
        let none = NamedQueryParams::parse(None).unwrap();
        assert!(none.params.is_empty() && none.min_position.is_none() && none.wait.is_zero());
        let empty = NamedQueryParams::parse(Some("min_position=&wait_ms=")).unwrap();
        assert_eq!((empty.min_position, empty.wait.is_zero()), (None, true));
        for (bad, parameter) in [
            ("a=1&a=2", "a"),
            ("min_position=1&min_position=2", "min_position"),
            ("min_position=-1", "min_position"),
            ("min_position=99999999999999999999999", "min_position"),
            ("wait_ms=60001", "wait_ms"),
            ("wait_ms=1s", "wait_ms"),
        ] {
            let error = NamedQueryParams::parse(Some(bad)).unwrap_err();
            assert_eq!(error.code(), cairn_api::ErrorCode::InvalidRequest, "{bad}");
            let body = serde_json::to_value(error.body()).unwrap();
            assert_eq!(body["error"]["parameter"], parameter, "{bad}");
        }
    }

    #[test]
    fn json_errors_are_classified() {
        let limits = Limits::default();
        let syntax = decode_json::<serde_json::Value>(b"{", &limits).unwrap_err();
        assert_eq!(syntax.code(), cairn_api::ErrorCode::InvalidJson);
        let deep = decode_json::<serde_json::Value>(&[b'['; 10_000], &limits).unwrap_err();
        assert_eq!(deep.code(), cairn_api::ErrorCode::InvalidJson);
        let utf8 = decode_json::<serde_json::Value>(b"\"\xff\"", &limits).unwrap_err();
        assert_eq!(utf8.code(), cairn_api::ErrorCode::InvalidJson);
        let shape =
            decode_json::<cairn_api::AppendRequest>(b"{\"events\":3}", &limits).unwrap_err();
        assert_eq!(shape.code(), cairn_api::ErrorCode::InvalidRequest);
    }
}
