//! `/v1/queries…`: named, parameterised, read-only SQL over the read models, with
//! read-your-writes on demand (`min_position`); each query's status (plan warnings,
//! counters) and, for admins, its plan.

use std::collections::HashMap;

use axum::extract::State;
use axum::response::Response;
use cairn_api::{ErrorBody, QueryList, QueryPlan, QueryResponse, QueryStatus};
use cairn_projection::ReadSideError;
use http::StatusCode;

use crate::AppState;
use crate::error::ApiError;
use crate::extract::{NamePath, NamedQueryParams};
use crate::middleware::WaitAllowance;
use crate::openapi::ServerErrors;
use crate::read_side::{plan_to_wire, query_status_to_wire, read_side};
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

/// Every named query with its plan warnings and counters.
#[utoipa::path(
    get,
    path = "/v1/queries",
    tag = "read side",
    operation_id = "list_queries",
    description = "Every query configured in the server's settings file (`[[queries]]`), in configuration order, each with its parameters' names, its plan warnings (full scans and sorts without an index, as checked at start and after every rebuild, each with the `CREATE INDEX` that would avoid it) and what it has served since the server started. Without any configured, the list is empty.",
    responses(
        (status = 200, description = "Every query's status.", body = QueryList),
        ServerErrors,
    )
)]
pub async fn list_queries(State(state): State<AppState>) -> Response {
    let queries = match &state.read_side {
        Some(read_side) => read_side
            .queries()
            .iter()
            .map(query_status_to_wire)
            .collect(),
        None => Vec::new(),
    };
    json_body(StatusCode::OK, &QueryList { queries })
}

/// A named query's plan warnings and counters.
#[utoipa::path(
    get,
    path = "/v1/queries/{name}/status",
    tag = "read side",
    operation_id = "get_query_status",
    description = "The query's parameters' names, its plan warnings (full scans and sorts without an index, as checked at start and after every rebuild, each with the `CREATE INDEX` that would avoid it), why its plan could not be checked if so, and its calls, errors, rows, cache hits and misses and slow runs since the server started.",
    params(
        ("name" = String, Path, description = "The query's name, as configured."),
    ),
    responses(
        (status = 200, description = "The query's status.", body = QueryStatus),
        (status = 400, description = "`invalid_request`: the name in the path is not valid percent-encoded UTF-8.", body = ErrorBody),
        (status = 404, description = "`not_found`: no such query (with `query`).", body = ErrorBody),
        ServerErrors,
    )
)]
pub async fn query_status(
    State(state): State<AppState>,
    NamePath(name): NamePath,
) -> Result<Response, ApiError> {
    let status = read_side(&state, &name, ReadSideError::QueryNotFound)?.query_status(&name)?;
    Ok(json_body(StatusCode::OK, &query_status_to_wire(&status)))
}

/// The query parameter of `/v1/queries/{name}/plan` that asks for the query to be run.
pub const ANALYZE_PARAM: &str = "analyze";

/// How SQLite runs a named query.
#[utoipa::path(
    get,
    path = "/v1/queries/{name}/plan",
    tag = "read side",
    operation_id = "get_query_plan",
    description = "The plan SQLite would use for the query with these parameters (`EXPLAIN QUERY PLAN`, as rows and as a tree of text), with its warnings: full scans and sorts without an index, each with the `CREATE INDEX` that would avoid it. Parameters are typed and checked as for the query itself; a required one left out takes a representative value (plans do not depend on values). With `analyze=true` the query is also run, every required parameter must be given, and its duration and row count are reported in `analysis` (SQLite has no `EXPLAIN ANALYZE`). Not counted in the query's metrics.",
    params(
        ("name" = String, Path, description = "The query's name, as configured."),
        ("analyze" = Option<bool>, Query, description = "Also run the query and report its duration and row count (default false)."),
        ("params" = Option<Object>, Query, description = "The query's own parameters, each as `name=value`, as for the query itself.", style = Form, explode),
    ),
    responses(
        (status = 200, description = "The plan, its warnings, and with `analyze=true` the run's duration and row count.", body = QueryPlan),
        (status = 400, description = "`invalid_request`: a parameter is unknown, missing (with `analyze=true`), mistyped, out of bounds or given twice, or `analyze` is not `true` or `false` (the `parameter` detail names it).", body = ErrorBody),
        (status = 404, description = "`not_found`: no such query (with `query`).", body = ErrorBody),
        ServerErrors,
    )
)]
pub async fn query_plan(
    State(state): State<AppState>,
    NamePath(name): NamePath,
    uri: http::Uri,
) -> Result<Response, ApiError> {
    let (params, analyze) = plan_params(uri.query())?;
    let read_side = read_side(&state, &name, ReadSideError::QueryNotFound)?;
    let plan = read_side.plan(&name, &params, analyze).await?;
    Ok(json_body(StatusCode::OK, &plan_to_wire(&plan)))
}

/// The query's own parameters (each once) and `analyze` (`true`, `false`, or empty or
/// absent: false).
fn plan_params(query: Option<&str>) -> Result<(HashMap<String, String>, bool), ApiError> {
    let invalid = |name: &str, message: String| {
        ApiError::invalid_request(message).with("parameter", name.to_owned())
    };
    let mut params = HashMap::new();
    let mut analyze: Option<String> = None;
    for (name, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        if name.is_empty() {
            continue;
        }
        let twice = if name == ANALYZE_PARAM {
            analyze.replace(value.into_owned()).is_some()
        } else {
            params
                .insert(name.clone().into_owned(), value.into_owned())
                .is_some()
        };
        if twice {
            return Err(invalid(
                &name,
                format!("query parameter `{name}` is given more than once"),
            ));
        }
    }
    let analyze = match analyze.as_deref() {
        None | Some("") | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(invalid(
                ANALYZE_PARAM,
                format!("query parameter `analyze` must be true or false, not {other:?}"),
            ));
        }
    };
    Ok((params, analyze))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_parameters_split_analyze_from_the_query_s_own() {
        let (params, analyze) = plan_params(Some("customer=c%201&analyze=true")).unwrap();
        assert!(analyze);
        assert_eq!(params.len(), 1);
        assert_eq!(params["customer"], "c 1");
        assert!(!plan_params(None).unwrap().1);
        assert!(!plan_params(Some("analyze=false")).unwrap().1);
        for (bad, parameter) in [
            ("analyze=yes", "analyze"),
            ("analyze=true&analyze=false", "analyze"),
            ("a=1&a=2", "a"),
        ] {
            let error = plan_params(Some(bad)).unwrap_err();
            let body = serde_json::to_value(error.body()).unwrap();
            assert_eq!(body["error"]["parameter"], parameter, "{bad}");
        }
    }
}
