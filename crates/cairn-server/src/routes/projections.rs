//! `/v1/projections…`: the read side's projections, their progress and failures, and
//! the operator's two remedies, restart and rebuild.

use axum::extract::State;
use axum::response::Response;
use cairn_api::{ErrorBody, ErrorCode, ProjectionList, ProjectionStatus};
use cairn_projection::ReadSideError;
use http::StatusCode;

use crate::AppState;
use crate::error::ApiError;
use crate::extract::NamePath;
use crate::middleware::Commitment;
use crate::openapi::ServerErrors;
use crate::read_side::{read_side, status_to_wire};
use crate::routes::streams::json_body;

/// Every projection with its state and progress.
#[utoipa::path(
    get,
    path = "/v1/projections",
    tag = "read side",
    operation_id = "list_projections",
    description = "Every projection configured in the server's settings file (`[[projections]]`), in configuration order, with its state, position, lag, rate and last error. Without any configured, the list is empty.",
    responses(
        (status = 200, description = "Every projection.", body = ProjectionList),
        ServerErrors,
    )
)]
pub async fn list_projections(State(state): State<AppState>) -> Response {
    let projections = match &state.read_side {
        Some(read_side) => read_side
            .projections()
            .await
            .iter()
            .map(status_to_wire)
            .collect(),
        None => Vec::new(),
    };
    json_body(StatusCode::OK, &ProjectionList { projections })
}

/// A projection's state and progress.
#[utoipa::path(
    get,
    path = "/v1/projections/{name}",
    tag = "read side",
    operation_id = "get_projection",
    description = "The projection's state (`running`, `failed`, `rebuilding`, `stopped`), the log position its read model reflects, the head, the lag between them, the recent rate, and, when it failed, the failing event's position and type with the database's message.",
    params(
        ("name" = String, Path, description = "The projection's name, as configured."),
    ),
    responses(
        (status = 200, description = "The projection's status.", body = ProjectionStatus),
        (status = 400, description = "`invalid_request`: the name in the path is not valid percent-encoded UTF-8.", body = ErrorBody),
        (status = 404, description = "`not_found`: no such projection (with `projection`).", body = ErrorBody),
        ServerErrors,
    )
)]
pub async fn get_projection(
    State(state): State<AppState>,
    NamePath(name): NamePath,
) -> Result<Response, ApiError> {
    let status = read_side(&state, &name, ReadSideError::ProjectionNotFound)?
        .projection(&name)
        .await?;
    Ok(json_body(StatusCode::OK, &status_to_wire(&status)))
}

/// Resume a projection from its checkpoint.
#[utoipa::path(
    post,
    path = "/v1/projections/{name}/restart",
    tag = "read side",
    operation_id = "restart_projection",
    description = "Stops the projection if it runs and resumes it from its checkpoint with the statements as now configured. After a failure this retries the failing event: fix what made it fail (the data, or the definition and the server's configuration) first. A rebuilding projection goes on rebuilding. No request body is needed; one is ignored.",
    params(
        ("name" = String, Path, description = "The projection's name, as configured."),
    ),
    responses(
        (status = 200, description = "The projection runs again from its checkpoint; its status as it restarts.", body = ProjectionStatus),
        (status = 400, description = "`invalid_request`: the name in the path is not valid percent-encoded UTF-8.", body = ErrorBody),
        (status = 404, description = "`not_found`: no such projection (with `projection`).", body = ErrorBody),
        ServerErrors,
    )
)]
pub async fn restart_projection(
    State(state): State<AppState>,
    NamePath(name): NamePath,
    commitment: Commitment,
) -> Result<Response, ApiError> {
    let read_side = read_side(&state, &name, ReadSideError::ProjectionNotFound)?;
    // Stopping and starting the projection's tasks must not be abandoned half-way.
    commitment.commit();
    let status = read_side
        .restart(&name)
        .await
        .map_err(|error| operation_failed(error, "restart", &name))?;
    Ok(json_body(StatusCode::OK, &status_to_wire(&status)))
}

/// Rebuild a projection's read model from the whole log.
#[utoipa::path(
    post,
    path = "/v1/projections/{name}/rebuild",
    tag = "read side",
    operation_id = "rebuild_projection",
    description = "Runs the projection's `teardown` and `setup` statements and resets its checkpoint to 0 (in one transaction), then replays the log from position 1 with the definition as now configured; the answer comes at once, with state `rebuilding` (or `running` when the log is empty), and `rebuild_progress` tells how far the replay is. Queries over its tables answer with the position the replay reached. If teardown or setup fails, nothing changes and the projection goes on as before (500; the server log says why). No request body is needed; one is ignored.",
    params(
        ("name" = String, Path, description = "The projection's name, as configured."),
    ),
    responses(
        (status = 200, description = "The rebuild has started; the projection's status.", body = ProjectionStatus),
        (status = 400, description = "`invalid_request`: the name in the path is not valid percent-encoded UTF-8.", body = ErrorBody),
        (status = 404, description = "`not_found`: no such projection (with `projection`).", body = ErrorBody),
        ServerErrors,
    )
)]
pub async fn rebuild_projection(
    State(state): State<AppState>,
    NamePath(name): NamePath,
    commitment: Commitment,
) -> Result<Response, ApiError> {
    let read_side = read_side(&state, &name, ReadSideError::ProjectionNotFound)?;
    commitment.commit();
    let status = read_side
        .rebuild(&name)
        .await
        .map_err(|error| operation_failed(error, "rebuild", &name))?;
    Ok(json_body(StatusCode::OK, &status_to_wire(&status)))
}

/// A failed restart or rebuild: the detail (often the projection's own SQL failing)
/// goes to the log; the answer says which operation failed and where to look.
fn operation_failed(error: ReadSideError, operation: &str, name: &str) -> ApiError {
    let api = ApiError::from(error);
    if api.code() != ErrorCode::Internal {
        return api;
    }
    ApiError::new(
        ErrorCode::Internal,
        format!("the {operation} of projection {name} failed; the server log says why"),
    )
    .with("projection", name)
}
