//! `/v1/groups…`: consumer groups (competing consumers, at-least-once delivery).
//!
//! With several instances, a request for one group reaches these handlers only on the
//! instance that drives it (or, for a `PUT` of a new group, wherever it arrives): the
//! route layer [`crate::forward::group_owner`] forwards the others to the owner.

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use cairn_api::{
    AckRequest, ClaimRequest, ClaimResponse, ErrorBody, GroupList, GroupRequest, GroupStatus,
    NackRequest, ParkedList, ReplayParkedRequest, ReplayParkedResponse, SettleResponse,
};
use http::{HeaderMap, StatusCode};

use crate::AppState;
use crate::error::{ApiError, json_response};
use crate::extract::{
    GroupPath, ParkedQuery, content_length, decode_json, read_body, read_json_body,
};
use crate::groups;
use crate::middleware::Commitment;
use crate::openapi::ServerErrors;
use crate::routes::streams::json_body;

/// Create a consumer group, or change an existing group's settings.
#[utoipa::path(
    put,
    path = "/v1/groups/{group}",
    tag = "groups",
    operation_id = "put_group",
    description = "Creates the group, or changes an existing group's settings. An existing group keeps its checkpoint: `from_position` only applies on creation. Changing the filter makes the group read the log again from its checkpoint through the new filter; events in flight stay in flight.",
    params(
        ("group" = String, Path, description = "The group name: 1–200 characters from `[A-Za-z0-9_.:@-]`, not starting with `$`.", pattern = r"^[A-Za-z0-9_.:@-]{1,200}$"),
    ),
    request_body(content = GroupRequest, content_type = "application/json", description = "The group's settings; every field is optional (`{}` takes the defaults). Any Content-Type is accepted; the body is parsed as JSON."),
    responses(
        (status = 200, description = "The group existed; its settings are updated.", body = GroupStatus),
        (status = 201, description = "The group is created.", body = GroupStatus),
        (status = 400, description = "`invalid_json`, `invalid_request` (a bad group name, an unknown field, a number out of range, a bad type or tag in the filter) or `invalid_stream_name` (`filter.stream`).", body = ErrorBody),
        (status = 413, description = "`payload_too_large`: the body is over its limit.", body = ErrorBody),
        ServerErrors,
    )
)]
pub async fn put_group(
    State(state): State<AppState>,
    GroupPath(group): GroupPath,
    commitment: Commitment,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(body, content_length(&headers), state.limits.max_body_bytes).await?;
    let request: GroupRequest = decode_json(&bytes, &state.limits)?;
    groups::check_filter_is_an_object(&bytes)?;
    let settings = groups::settings_from_request(&request)?;
    let _admin = state.group_admin.lock().await;
    let existed = state.groups.exists(&group).await?;
    commitment.commit();
    let status = state.groups.put(&group, settings).await?;
    let code = if existed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok(json_body(code, &groups::status_to_wire(&status)))
}

/// Every consumer group with its status.
#[utoipa::path(
    get,
    path = "/v1/groups",
    tag = "groups",
    operation_id = "list_groups",
    responses(
        (status = 200, description = "Every group, by name.", body = GroupList),
        ServerErrors,
    )
)]
pub async fn list_groups(State(state): State<AppState>) -> Result<Response, ApiError> {
    // With several instances, groups driven elsewhere show their stored state.
    let list = GroupList {
        groups: state
            .groups
            .statuses()
            .await?
            .iter()
            .map(groups::status_to_wire)
            .collect(),
    };
    Ok(json_body(StatusCode::OK, &list))
}

/// A group's status: checkpoint, lag, events in flight, waiting and parked.
#[utoipa::path(
    get,
    path = "/v1/groups/{group}",
    tag = "groups",
    operation_id = "get_group",
    params(
        ("group" = String, Path, description = "The group name.", pattern = r"^[A-Za-z0-9_.:@-]{1,200}$"),
    ),
    responses(
        (status = 200, description = "The group's status and settings.", body = GroupStatus),
        (status = 400, description = "`invalid_request`: a bad group name.", body = ErrorBody),
        (status = 404, description = "`not_found`: no such group (with `group`).", body = ErrorBody),
        ServerErrors,
    )
)]
pub async fn get_group(
    State(state): State<AppState>,
    GroupPath(group): GroupPath,
) -> Result<Response, ApiError> {
    let status = state.groups.status(&group).await?;
    Ok(json_body(StatusCode::OK, &groups::status_to_wire(&status)))
}

/// Delete a group, its checkpoint and its parked events.
#[utoipa::path(
    delete,
    path = "/v1/groups/{group}",
    tag = "groups",
    operation_id = "delete_group",
    params(
        ("group" = String, Path, description = "The group name.", pattern = r"^[A-Za-z0-9_.:@-]{1,200}$"),
    ),
    responses(
        (status = 204, description = "The group is deleted; claims waiting on it answer 404."),
        (status = 400, description = "`invalid_request`: a bad group name.", body = ErrorBody),
        (status = 404, description = "`not_found`: no such group (with `group`).", body = ErrorBody),
        ServerErrors,
    )
)]
pub async fn delete_group(
    State(state): State<AppState>,
    GroupPath(group): GroupPath,
    commitment: Commitment,
) -> Result<Response, ApiError> {
    let _admin = state.group_admin.lock().await;
    commitment.commit();
    state.groups.delete(&group).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Claim events for a consumer, waiting up to `wait_ms` for some.
#[utoipa::path(
    post,
    path = "/v1/groups/{group}/claim",
    tag = "groups",
    operation_id = "claim",
    description = "Hands up to `max` events to the consumer. Each is in flight until acknowledged; without an ack within the group's `ack_timeout_ms`, or after a nack, it is delivered again (`attempt` counts deliveries), and after `max_deliveries` it is parked. When no event is ready, the claim waits up to `wait_ms` for one (a long poll) and answers with what it has, possibly nothing. The server's request time limit never cuts a claim short.",
    params(
        ("group" = String, Path, description = "The group name.", pattern = r"^[A-Za-z0-9_.:@-]{1,200}$"),
    ),
    request_body(content = ClaimRequest, content_type = "application/json", description = "Who claims, how many events at most (default 10), how long to wait (default 0). Any Content-Type is accepted; the body is parsed as JSON."),
    responses(
        (status = 200, description = "The deliveries, in log order (possibly none); each event carries its stored metadata, `$traceparent` included.", body = ClaimResponse),
        (status = 400, description = "`invalid_json` or `invalid_request` (a bad group name, an unknown field, `consumer` not 1–200 characters, `max` or `wait_ms` out of range).", body = ErrorBody),
        (status = 404, description = "`not_found`: no such group (with `group`), or it was deleted while the claim waited.", body = ErrorBody),
        (status = 413, description = "`payload_too_large`: the body is over its limit.", body = ErrorBody),
        ServerErrors,
    )
)]
pub async fn claim(
    State(state): State<AppState>,
    GroupPath(group): GroupPath,
    commitment: Commitment,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let request: ClaimRequest = read_json_body(&headers, body, &state.limits).await?;
    let claim = groups::claim_from_request(request)?;
    // A claim puts what it hands out in flight: once started it must answer, or the
    // events would wait for their ack timeout with nobody holding them.
    commitment.commit();
    let deliveries = state.groups.claim(&group, claim.max, claim.wait).await?;
    tracing::debug!(
        target: "cairn::http",
        group,
        consumer = claim.consumer,
        count = deliveries.len(),
        "claimed"
    );
    let body = groups::delivery_span(&group, &claim.consumer, &deliveries)
        .in_scope(|| groups::claim_body(&deliveries));
    Ok(json_response(StatusCode::OK, body))
}

/// Acknowledge deliveries: they are done.
#[utoipa::path(
    post,
    path = "/v1/groups/{group}/ack",
    tag = "groups",
    operation_id = "ack",
    params(
        ("group" = String, Path, description = "The group name.", pattern = r"^[A-Za-z0-9_.:@-]{1,200}$"),
    ),
    request_body(content = AckRequest, content_type = "application/json", description = "1–1000 positions of claimed events. Any Content-Type is accepted; the body is parsed as JSON."),
    responses(
        (status = 200, description = "How many positions were settled, and how many were not awaiting an answer (unknown, or already settled).", body = SettleResponse),
        (status = 400, description = "`invalid_json` or `invalid_request` (a bad group name, an unknown field, no positions or more than 1000, a position 0).", body = ErrorBody),
        (status = 404, description = "`not_found`: no such group (with `group`).", body = ErrorBody),
        (status = 413, description = "`payload_too_large`: the body is over its limit.", body = ErrorBody),
        ServerErrors,
    )
)]
pub async fn ack(
    State(state): State<AppState>,
    GroupPath(group): GroupPath,
    commitment: Commitment,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let request: AckRequest = read_json_body(&headers, body, &state.limits).await?;
    let positions = groups::check_positions(&request.positions)?;
    commitment.commit();
    let settled = state.groups.ack(&group, positions).await?;
    Ok(json_body(StatusCode::OK, &groups::settled_to_wire(settled)))
}

/// Give deliveries back, for a retry now or later.
#[utoipa::path(
    post,
    path = "/v1/groups/{group}/nack",
    tag = "groups",
    operation_id = "nack",
    description = "Gives in-flight events back: each is delivered again after `retry_after_ms` (at once by default), or parked if this was its last delivery.",
    params(
        ("group" = String, Path, description = "The group name.", pattern = r"^[A-Za-z0-9_.:@-]{1,200}$"),
    ),
    request_body(content = NackRequest, content_type = "application/json", description = "1–1000 positions of claimed events, and an optional retry delay (0–3600000 ms). Any Content-Type is accepted; the body is parsed as JSON."),
    responses(
        (status = 200, description = "How many positions were given back, how many were not in flight, and how many were parked.", body = SettleResponse),
        (status = 400, description = "`invalid_json` or `invalid_request` (a bad group name, an unknown field, no positions or more than 1000, a position 0, `retry_after_ms` out of range).", body = ErrorBody),
        (status = 404, description = "`not_found`: no such group (with `group`).", body = ErrorBody),
        (status = 413, description = "`payload_too_large`: the body is over its limit.", body = ErrorBody),
        ServerErrors,
    )
)]
pub async fn nack(
    State(state): State<AppState>,
    GroupPath(group): GroupPath,
    commitment: Commitment,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let request: NackRequest = read_json_body(&headers, body, &state.limits).await?;
    let positions = groups::check_positions(&request.positions)?;
    let retry_after = groups::retry_after(request.retry_after_ms)?;
    commitment.commit();
    let settled = state.groups.nack(&group, positions, retry_after).await?;
    Ok(json_body(StatusCode::OK, &groups::settled_to_wire(settled)))
}

/// The group's parked events, in position order.
#[utoipa::path(
    get,
    path = "/v1/groups/{group}/parked",
    tag = "groups",
    operation_id = "list_parked",
    params(
        ("group" = String, Path, description = "The group name.", pattern = r"^[A-Za-z0-9_.:@-]{1,200}$"),
        ("after" = Option<u64>, Query, description = "Only events after this position (exclusive): the `next` of the previous page. Default 0.", minimum = 0),
        ("limit" = Option<u64>, Query, description = "The most events to return (default 100).", minimum = 1, maximum = 1000),
    ),
    responses(
        (status = 200, description = "A page of parked events; `replaying` ones are back in delivery after a replay.", body = ParkedList),
        (status = 400, description = "`invalid_request`: a bad group name or query parameter.", body = ErrorBody),
        (status = 404, description = "`not_found`: no such group (with `group`).", body = ErrorBody),
        ServerErrors,
    )
)]
pub async fn list_parked(
    State(state): State<AppState>,
    GroupPath(group): GroupPath,
    query: ParkedQuery,
) -> Result<Response, ApiError> {
    let parked = state
        .groups
        .parked(&group, query.after, query.limit)
        .await?;
    let page: ParkedList = groups::parked_page(&parked, query.limit);
    Ok(json_body(StatusCode::OK, &page))
}

/// Bring parked events back into delivery.
#[utoipa::path(
    post,
    path = "/v1/groups/{group}/parked/replay",
    tag = "groups",
    operation_id = "replay_parked",
    description = "Brings parked events (all of them, or those listed) back into delivery, ahead of other events. A replayed event that is acknowledged leaves the parked list; one that runs out of deliveries again is parked again.",
    params(
        ("group" = String, Path, description = "The group name.", pattern = r"^[A-Za-z0-9_.:@-]{1,200}$"),
    ),
    request_body(content = ReplayParkedRequest, content_type = "application/json", description = "`{}` for every parked event, or 1–1000 `positions`. Any Content-Type is accepted; the body is parsed as JSON."),
    responses(
        (status = 200, description = "How many parked events came back into delivery (events already being replayed, or not parked, are not counted).", body = ReplayParkedResponse),
        (status = 400, description = "`invalid_json` or `invalid_request` (a bad group name, an unknown field, an empty list or more than 1000 positions, a position 0).", body = ErrorBody),
        (status = 404, description = "`not_found`: no such group (with `group`).", body = ErrorBody),
        (status = 413, description = "`payload_too_large`: the body is over its limit.", body = ErrorBody),
        ServerErrors,
    )
)]
pub async fn replay_parked(
    State(state): State<AppState>,
    GroupPath(group): GroupPath,
    commitment: Commitment,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let request: ReplayParkedRequest = read_json_body(&headers, body, &state.limits).await?;
    let positions = match request.positions {
        Some(positions) => Some(groups::check_positions(&positions)?.to_vec()),
        None => None,
    };
    commitment.commit();
    let replayed = state.groups.replay_parked(&group, positions).await?;
    Ok(json_body(
        StatusCode::OK,
        &ReplayParkedResponse {
            replayed: replayed as u64,
        },
    ))
}
