//! The read side (CQRS) on the wire: projections' status and named queries' answers.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// What a projection is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProjectionState {
    /// Applying events as they are appended (or catching up with the log).
    Running,
    /// Stopped on a failing statement (see `last_error`); `restart` retries the failing
    /// event, `rebuild` starts over.
    Failed,
    /// Replaying the log from position 1 after a rebuild.
    Rebuilding,
    /// Not running: the server is shutting down.
    Stopped,
}

/// Read models on PostgreSQL, shared by several instances: which instance applies a
/// projection's events (holds its advisory lock). The others serve its queries and
/// report its status from the shared checkpoint, and take over within seconds when the
/// owner stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProjectionOwner {
    /// The instance that answered drives the projection.
    ThisInstance,
    /// Another instance drives it (or none does at this moment, between owners).
    AnotherInstance,
}

/// Why a projection stopped: the failing event and the read-model database's message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ProjectionFailure {
    /// The log position of the event that failed; every event before it is applied.
    pub position: u64,
    /// The failing event's type; `null` when the read-model database itself failed.
    #[serde(rename = "type")]
    pub event_type: Option<String>,
    pub message: String,
}

/// `GET /v1/projections/{name}`: a projection's state and progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ProjectionStatus {
    pub name: String,
    pub state: ProjectionState,
    /// The last log position the read model reflects.
    pub position: u64,
    /// The last position of the log.
    pub head_position: u64,
    /// `head_position - position`.
    pub lag: u64,
    /// Events applied per second, over the last few seconds.
    pub events_per_second: f64,
    /// Set while the projection is `failed`.
    pub last_error: Option<ProjectionFailure>,
    /// The configured definition differs from the one the read model was built with:
    /// new events use the new statements, earlier ones were not replayed.
    pub definition_changed: bool,
    /// What `definition_changed` means and what to do (rebuild).
    pub message: Option<String>,
    /// While `rebuilding`: `position / head_position`, from 0.0 to 1.0.
    pub rebuild_progress: Option<f64>,
    /// Full scans and sorts without an index in its statements' plans, as checked at
    /// start and after every rebuild; each names the index that would avoid it.
    #[serde(default)]
    pub plan_warnings: Vec<PlanWarning>,
    /// Read models on PostgreSQL: which instance drives the projection; absent on
    /// SQLite, where the one server drives every projection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<ProjectionOwner>,
}

/// `GET /v1/projections`: every configured projection, in configuration order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ProjectionList {
    pub projections: Vec<ProjectionStatus>,
}

/// `GET /v1/queries/{name}`: a named query's rows and the log position they reflect.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct QueryResponse {
    /// One object per row: column name → value (text, number or null).
    #[schema(value_type = Vec<Object>)]
    pub rows: Vec<serde_json::Map<String, serde_json::Value>>,
    /// Every event up to this log position is reflected in the rows.
    pub position: u64,
}

/// A full scan or a sort without an index in a query's or a projection statement's
/// plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PlanWarning {
    /// What was planned: `query <name>` or `projection <name>, on.<Type> statement <n>`.
    pub subject: String,
    /// `full_scan` or `sort_without_index`.
    pub kind: String,
    /// The read-model table.
    pub table: String,
    /// The columns an index should hold, in order (empty when none could be derived).
    pub columns: Vec<String>,
    /// The `CREATE INDEX` to add to the `setup` of the projection creating the table;
    /// `null` when no index would help.
    pub suggestion: Option<String>,
    /// The whole warning in one sentence, as logged.
    pub message: String,
}

/// One row of SQLite's `EXPLAIN QUERY PLAN`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PlanRow {
    pub id: i64,
    /// The row this one is nested in; 0 at the top.
    pub parent: i64,
    pub detail: String,
}

/// What running the query showed, with `analyze=true`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PlanAnalysis {
    /// How long the query took, in milliseconds.
    pub duration_ms: f64,
    pub rows_returned: u64,
}

/// `GET /v1/queries/{name}/plan`: how SQLite runs a named query.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct QueryPlan {
    pub query: String,
    /// The SQL as SQLite runs it (placeholders became `?1`, `?2`, …).
    pub sql: String,
    pub rows: Vec<PlanRow>,
    /// The rows as a tree, as the `sqlite3` shell prints them.
    pub text: String,
    pub warnings: Vec<PlanWarning>,
    /// With `analyze=true`: the query was run; else `null`.
    pub analysis: Option<PlanAnalysis>,
}

/// `GET /v1/queries/{name}/status`: a named query's plan warnings and what it has
/// served since the server started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct QueryStatus {
    pub name: String,
    /// The parameters' names, in the order the SQL binds them.
    pub params: Vec<String>,
    pub plan_warnings: Vec<PlanWarning>,
    /// Why its plan could not be checked (its tables do not exist yet, say).
    pub plan_error: Option<String>,
    /// Calls (cache hits, misses and errors alike).
    pub calls: u64,
    /// Calls answered with an error.
    pub errors: u64,
    /// Rows returned, cached or not.
    pub rows: u64,
    pub cache_hits: u64,
    pub cache_misses: u64,
    /// `cache_hits / (cache_hits + cache_misses)`; `null` before the first answer.
    pub cache_hit_ratio: Option<f64>,
    /// Runs slower than the slow-query threshold.
    pub slow: u64,
}

/// `GET /v1/queries`: every configured query, in configuration order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct QueryList {
    pub queries: Vec<QueryStatus>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_has_every_field_and_names_the_event_type_type() {
        let status = ProjectionStatus {
            name: "orders".into(),
            state: ProjectionState::Failed,
            position: 4,
            head_position: 9,
            lag: 5,
            events_per_second: 0.0,
            last_error: Some(ProjectionFailure {
                position: 5,
                event_type: Some("OrderPlaced".into()),
                message: "UNIQUE constraint failed: orders.id".into(),
            }),
            definition_changed: false,
            message: None,
            rebuild_progress: None,
            plan_warnings: vec![],
            owner: None,
        };
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(json["state"], "failed");
        assert_eq!(json["last_error"]["type"], "OrderPlaced");
        assert_eq!(json["last_error"]["position"], 5);
        assert_eq!(json["plan_warnings"], serde_json::json!([]));
        for field in ["message", "rebuild_progress"] {
            assert!(json[field].is_null(), "{field} is present and null");
            assert!(json.as_object().unwrap().contains_key(field));
        }
        assert!(json.get("owner").is_none(), "no owner on SQLite");
        let back: ProjectionStatus = serde_json::from_value(json).unwrap();
        assert_eq!(back, status);
        let shared = ProjectionStatus {
            owner: Some(ProjectionOwner::AnotherInstance),
            ..status
        };
        let json = serde_json::to_value(&shared).unwrap();
        assert_eq!(json["owner"], "another_instance");
    }

    #[test]
    fn a_query_response_is_rows_and_a_position() {
        let text = r#"{"rows":[{"id":"o-1","total":12.5,"note":null}],"position":7}"#;
        let response: QueryResponse = serde_json::from_str(text).unwrap();
        assert_eq!(response.position, 7);
        assert_eq!(response.rows[0]["total"], 12.5);
        assert_eq!(
            serde_json::to_value(&response).unwrap()["rows"][0]["id"],
            "o-1"
        );
    }
}
