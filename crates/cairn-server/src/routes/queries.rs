//! `/v1/queries/{name}`: named, parameterised, read-only SQL over the read models,
//! with read-your-writes on demand (`min_position`).

use axum::extract::State;
use axum::response::Response;
use cairn_api::{ErrorBody, QueryResponse};
use cairn_projection::ReadSideError;
use http::StatusCode;

use crate::AppState;
use crate::error::ApiError;
use crate::extract::{NamePath, NamedQueryParams};
use crate::middleware::WaitAllowance;
use crate::openapi::ServerErrors;
use crate::read_side::read_side;
use crate::routes::streams::json_body;

/// Run a named query.
#[utoipa::path(
    get,
    path = "/v1/queries/{name}",
    tag = "read side",
    operation_id = "query",
    description = "Runs the query configured as `[[queries]]` with this name, with its parameters taken from the query string (typed and checked as the query declares them; a parameter with a default may be left out). The rows reflect every event up to `position`. With `min_position`, the answer waits until the query's projections reflect at least that position (for example an append's `last_position`: read-your-writes), up to `wait_ms`, and is otherwise 504 `consistency_timeout`; without `wait_ms` the position is checked once. The server's request time limit never cuts a `wait_ms` short. Results may come from a cache that never serves rows older than an uncached read would (unless the query declares a `cache_ttl`).",
    params(
        ("name" = String, Path, description = "The query's name, as configured."),
        ("min_position" = Option<u64>, Query, description = "Answer only once the rows reflect this log position.", minimum = 0),
        ("wait_ms" = Option<u64>, Query, description = "How long to wait for `min_position`, in milliseconds (default 0: check once).", minimum = 0, maximum = 60000),
        ("params" = Option<Object>, Query, description = "The query's own parameters, each as `name=value` (for example `customer=c-42&limit=10`): unknown, missing, mistyped or out-of-bounds ones are refused with 400 naming the `parameter`.", style = Form, explode),
    ),
    responses(
        (status = 200, description = "The rows and the log position they reflect.", body = QueryResponse),
        (status = 400, description = "`invalid_request`: a parameter is unknown, missing, mistyped, out of bounds or given twice, or `min_position` / `wait_ms` is not a number in range (the `parameter` detail names it).", body = ErrorBody),
        (status = 404, description = "`not_found`: no such query (with `query`).", body = ErrorBody),
        (status = 504, description = "`consistency_timeout`: the read model did not reach `min_position` within `wait_ms`; details `min_position` and `position` (what it reflects). Retry, or wait longer.", body = ErrorBody),
        ServerErrors,
    )
)]
pub async fn query(
    State(state): State<AppState>,
    NamePath(name): NamePath,
    query: NamedQueryParams,
    allowance: WaitAllowance,
) -> Result<Response, ApiError> {
    let read_side = read_side(&state, &name, ReadSideError::QueryNotFound)?;
    if query.min_position.is_some() {
        allowance.allow(query.wait);
    }
    let result = read_side
        .query(&name, &query.params, query.min_position, query.wait)
        .await?;
    Ok(json_body(
        StatusCode::OK,
        &QueryResponse {
            rows: result.rows,
            position: result.position,
        },
    ))
}
