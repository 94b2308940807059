//! `/v1/events`: the atomic multi-stream append and the global log read.

use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use bytes::Bytes;
use cairn_api::{ErrorBody, MultiAppendRequest, MultiAppendResponse, ReadAllResponse};
use http::StatusCode;

use crate::AppState;
use crate::append;
use crate::encode;
use crate::error::{ApiError, json_response};
use crate::extract::{ReadAllQuery, WriteContext, decode_json, read_body};
use crate::openapi::ServerErrors;
use crate::page_cache::CachedPage;

/// Append events to one or more streams atomically, with optional per-stream expected
/// versions and an optional condition on the global log.
#[utoipa::path(
    post,
    path = "/v1/events",
    tag = "events",
    operation_id = "append_to_streams",
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "Makes the write safe to retry: 1–255 visible ASCII characters.", nullable = false, pattern = r"^[!-~]{1,255}$"),
        ("traceparent" = Option<String>, Header, description = "A W3C trace context; stored as `$traceparent` in each event's metadata.", nullable = false),
    ),
    request_body(content = MultiAppendRequest, content_type = "application/json", description = "1–1000 events, each naming its stream; `expected_versions` may only name streams that have an event in the request. Any Content-Type is accepted; the body is parsed as JSON."),
    responses(
        (status = 201, description = "The events are durable; `streams` lists each stream in order of first appearance. A replay of an idempotent write returns the first body byte for byte.", body = MultiAppendResponse,
            headers(("Idempotent-Replayed" = String, description = "`true` when this is the stored answer to an earlier request with the same Idempotency-Key."))),
        (status = 400, description = "`invalid_json`, `invalid_request` or `invalid_stream_name`.", body = ErrorBody),
        (status = 409, description = "`wrong_expected_version` (with `stream`, `expected` and `actual`), `condition_failed` (with `after` and `position`) or `duplicate_event_id`.", body = ErrorBody),
        (status = 410, description = "`stream_deleted`: one of the streams is deleted.", body = ErrorBody),
        (status = 413, description = "`payload_too_large`: the body, the number of events or one event is over its limit.", body = ErrorBody),
        (status = 422, description = "`idempotency_key_reused`: the key was used with a different request.", body = ErrorBody),
        ServerErrors,
    )
)]
pub async fn append_to_streams(
    State(state): State<AppState>,
    write: WriteContext,
    caller: crate::auth::Caller,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(body, write.content_length, state.limits.max_body_bytes).await?;
    let request: MultiAppendRequest = decode_json(&bytes, &state.limits)?;
    caller.check_streams(request.events.iter().map(|event| event.stream.as_str()))?;
    let append_request =
        append::multi_stream_append(&request, write.traceparent.as_deref(), &state.limits)?;
    drop(request);
    append::execute(&state, append_request, &write, &bytes, append::render_multi).await
}

/// Read the global log in position order, optionally filtered.
#[utoipa::path(
    get,
    path = "/v1/events",
    tag = "events",
    operation_id = "read_all",
    params(
        ("from_position" = Option<u64>, Query, description = "The first position to consider (inclusive, default 1).", minimum = 1),
        ("limit" = Option<u64>, Query, description = "The most events to return (default 100).", minimum = 1, maximum = 1000),
        ("category" = Option<String>, Query, description = "Only events of streams in this category (the part of the name before the first `-`)."),
        ("types" = Option<String>, Query, description = "Comma-separated event types; an event matches any of them."),
        ("tags" = Option<String>, Query, description = "Comma-separated tags; an event must carry all of them."),
        ("stream" = Option<String>, Query, description = "Only events of this stream (empty: no such filter).", pattern = r"^([A-Za-z0-9_.:@-]{1,200})?$"),
    ),
    responses(
        (status = 200, description = "A page of the log; continue from `next_from_position`.", body = ReadAllResponse),
        (status = 400, description = "`invalid_request` (a bad query parameter) or `invalid_stream_name`.", body = ErrorBody),
        ServerErrors,
    )
)]
pub async fn read_all(
    State(state): State<AppState>,
    query: ReadAllQuery,
) -> Result<Response, ApiError> {
    let pages = &state.event_pages;
    if let Some(page) = pages.log_page(query.from_position, query.limit, &query.filter) {
        // The head is live; a sealed page's events are all committed, so it is at
        // least the page's last position.
        let head = state
            .store
            .head_position()
            .await?
            .max(page.next_from_position.saturating_sub(1));
        let mut body = Vec::with_capacity(page.body.len() + 40);
        body.extend_from_slice(&page.body);
        encode::finish_log_page(&mut body, head);
        return Ok(json_response(StatusCode::OK, body));
    }
    let slice = state
        .store
        .read_all(query.from_position, &query.filter, query.limit)
        .await?;
    let mut body = encode::log_page_without_head(&slice);
    // Exactly `limit` events: every position up to the page's end is committed and
    // was scanned (positions are gapless), so the page never changes.
    if pages.enabled() && query.limit > 0 && slice.events.len() == query.limit {
        pages.keep_log_page(
            query.from_position,
            query.limit,
            &query.filter,
            CachedPage {
                body: Bytes::copy_from_slice(&body),
                next_from_position: slice.next_from_position,
            },
        );
    }
    encode::finish_log_page(&mut body, slice.head_position);
    Ok(json_response(StatusCode::OK, body))
}
