//! `/v1/streams…`: append to one stream, read it, its head, delete it, list streams.

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use cairn_api::{
    AppendRequest, AppendResponse, ErrorBody, ReadStreamResponse, StreamInfo, StreamList,
};
use http::StatusCode;

use crate::AppState;
use crate::append;
use crate::encode;
use crate::error::{ApiError, json_response};
use crate::extract::{
    DeleteStreamQuery, ListStreamsQuery, ReadStreamQuery, StreamPath, WriteContext, decode_json,
    read_body,
};
use crate::middleware::Commitment;
use crate::openapi::{ReadDirection, ServerErrors};
use crate::page_cache::EventPageCache;

/// Append events to one stream, atomically.
#[utoipa::path(
    post,
    path = "/v1/streams/{stream}/events",
    tag = "streams",
    operation_id = "append_to_stream",
    params(
        ("stream" = String, Path, description = "The stream name: 1–200 characters from `[A-Za-z0-9_.:@-]`.", pattern = r"^[A-Za-z0-9_.:@-]{1,200}$"),
        ("Idempotency-Key" = Option<String>, Header, description = "Makes the write safe to retry: 1–255 visible ASCII characters.", nullable = false, pattern = r"^[!-~]{1,255}$"),
        ("traceparent" = Option<String>, Header, description = "A W3C trace context; stored as `$traceparent` in each event's metadata.", nullable = false),
    ),
    request_body(content = AppendRequest, content_type = "application/json", description = "1–1000 events and an optional expected version. Any Content-Type is accepted; the body is parsed as JSON."),
    responses(
        (status = 201, description = "The events are durable. A replay of an idempotent write returns the first body byte for byte.", body = AppendResponse,
            headers(("Idempotent-Replayed" = String, description = "`true` when this is the stored answer to an earlier request with the same Idempotency-Key."))),
        (status = 400, description = "`invalid_json`, `invalid_request` or `invalid_stream_name`.", body = ErrorBody),
        (status = 409, description = "`wrong_expected_version` (with `expected` and `actual`) or `duplicate_event_id`.", body = ErrorBody),
        (status = 410, description = "`stream_deleted`.", body = ErrorBody),
        (status = 413, description = "`payload_too_large`: the body, the number of events or one event is over its limit.", body = ErrorBody),
        (status = 422, description = "`idempotency_key_reused`: the key was used with a different request.", body = ErrorBody),
        ServerErrors,
    )
)]
pub async fn append_to_stream(
    State(state): State<AppState>,
    StreamPath(stream): StreamPath,
    write: WriteContext,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(body, write.content_length, state.limits.max_body_bytes).await?;
    let request: AppendRequest = decode_json(&bytes, &state.limits)?;
    let events =
        append::single_stream_events(&request.events, write.traceparent.as_deref(), &state.limits)?;
    let expected = append::expected_from_wire(request.expected_version);
    drop(request);
    let append_request = cairn_store::AppendRequest::single(stream, expected, events);
    append::execute(
        &state,
        append_request,
        &write,
        &bytes,
        append::render_single,
    )
    .await
}

/// Read a page of one stream, forward or backward.
#[utoipa::path(
    get,
    path = "/v1/streams/{stream}/events",
    tag = "streams",
    operation_id = "read_stream",
    params(
        ("stream" = String, Path, description = "The stream name.", pattern = r"^[A-Za-z0-9_.:@-]{1,200}$"),
        ("from" = Option<u64>, Query, description = "The first version to return (inclusive). Default: the start (forward) or the end (backward).", minimum = 0),
        ("limit" = Option<u64>, Query, description = "The most events to return (default 100).", minimum = 1, maximum = 1000),
        ("direction" = Option<ReadDirection>, Query, description = "`forward` (default) or `backward`."),
    ),
    responses(
        (status = 200, description = "A page of events; `next` is the version to pass as `from` for the next page, `null` at the end.", body = ReadStreamResponse),
        (status = 400, description = "`invalid_request` (a bad query parameter) or `invalid_stream_name`.", body = ErrorBody),
        (status = 404, description = "`stream_not_found`: the stream has no events.", body = ErrorBody),
        (status = 410, description = "`stream_deleted`.", body = ErrorBody),
        ServerErrors,
    )
)]
pub async fn read_stream(
    State(state): State<AppState>,
    StreamPath(stream): StreamPath,
    query: ReadStreamQuery,
) -> Result<Response, ApiError> {
    let pages = &state.event_pages;
    if let Some(body) = pages.stream_page(stream.as_str(), query.from, query.limit, query.direction)
    {
        return Ok(json_response(StatusCode::OK, body));
    }
    let slice = state
        .store
        .read_stream(&stream, query.from, query.direction, query.limit)
        .await?;
    let body = Bytes::from(encode::stream_page(&slice));
    if pages.enabled()
        && EventPageCache::stream_page_is_sealed(query.from, query.direction, slice.next)
    {
        pages.keep_stream_page(
            stream.as_str(),
            query.from,
            query.limit,
            query.direction,
            body.clone(),
        );
    }
    Ok(json_response(StatusCode::OK, body))
}

/// A stream's head: its last version and position, when it was created and updated.
#[utoipa::path(
    get,
    path = "/v1/streams/{stream}",
    tag = "streams",
    operation_id = "get_stream",
    params(
        ("stream" = String, Path, description = "The stream name.", pattern = r"^[A-Za-z0-9_.:@-]{1,200}$"),
    ),
    responses(
        (status = 200, description = "The stream's head.", body = StreamInfo),
        (status = 400, description = "`invalid_stream_name`.", body = ErrorBody),
        (status = 404, description = "`stream_not_found`.", body = ErrorBody),
        (status = 410, description = "`stream_deleted`.", body = ErrorBody),
        ServerErrors,
    )
)]
pub async fn stream_info(
    State(state): State<AppState>,
    StreamPath(stream): StreamPath,
) -> Result<Response, ApiError> {
    let info = state.store.stream_info(&stream).await?;
    let body = StreamInfo {
        stream: info.stream.as_str().to_owned(),
        version: info.version,
        position: info.position,
        created_at: cairn_core::format_rfc3339_micros(info.created_at),
        updated_at: cairn_core::format_rfc3339_micros(info.updated_at),
    };
    Ok(json_body(StatusCode::OK, &body))
}

/// Delete a stream (a tombstone): its events stay in the global log; reads of the
/// stream and appends to it answer 410 `stream_deleted` from then on.
#[utoipa::path(
    delete,
    path = "/v1/streams/{stream}",
    tag = "streams",
    operation_id = "delete_stream",
    params(
        ("stream" = String, Path, description = "The stream name.", pattern = r"^[A-Za-z0-9_.:@-]{1,200}$"),
        ("expected_version" = Option<String>, Query, description = "A version (an integer ≥ 0), `no_stream`, `exists` or `any` (the default, also when empty).", pattern = r"^([0-9]{1,19}|no_stream|exists|any)?$"),
    ),
    responses(
        (status = 204, description = "The stream is deleted."),
        (status = 400, description = "`invalid_request` (a bad query parameter) or `invalid_stream_name`.", body = ErrorBody),
        (status = 404, description = "`stream_not_found`.", body = ErrorBody),
        (status = 409, description = "`wrong_expected_version`.", body = ErrorBody),
        (status = 410, description = "`stream_deleted`: already deleted.", body = ErrorBody),
        ServerErrors,
    )
)]
pub async fn delete_stream(
    State(state): State<AppState>,
    StreamPath(stream): StreamPath,
    query: DeleteStreamQuery,
    commitment: Commitment,
) -> Result<Response, ApiError> {
    commitment.commit();
    state
        .store
        .delete_stream(&stream, query.expected_version)
        .await?;
    state.event_pages.stream_deleted(stream.as_str());
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// List stream names in byte order, paged.
#[utoipa::path(
    get,
    path = "/v1/streams",
    tag = "streams",
    operation_id = "list_streams",
    params(
        ("prefix" = Option<String>, Query, description = "Only names starting with this."),
        ("after" = Option<String>, Query, description = "Only names after this one (exclusive): the `next` of the previous page."),
        ("limit" = Option<u64>, Query, description = "The most names to return (default 100).", minimum = 1, maximum = 1000),
    ),
    responses(
        (status = 200, description = "A page of stream names; deleted streams are not listed.", body = StreamList),
        (status = 400, description = "`invalid_request`: a bad query parameter.", body = ErrorBody),
        ServerErrors,
    )
)]
pub async fn list_streams(
    State(state): State<AppState>,
    query: ListStreamsQuery,
) -> Result<Response, ApiError> {
    let page = state
        .store
        .list_streams(&query.prefix, query.after.as_deref(), query.limit)
        .await?;
    Ok(json_body(
        StatusCode::OK,
        &StreamList {
            streams: page.streams,
            next: page.next,
        },
    ))
}

/// Serializes a small wire value as the response body.
pub(crate) fn json_body(status: StatusCode, value: &impl serde::Serialize) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => json_response(status, body),
        Err(error) => {
            ApiError::internal(&format!("encoding a response failed: {error}")).into_response()
        }
    }
}
