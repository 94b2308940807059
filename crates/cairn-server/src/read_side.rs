//! The read side's domain types in their wire form, and the state's read side.

use std::sync::Arc;

use cairn_api::{ProjectionFailure, ProjectionState as WireState, ProjectionStatus as WireStatus};
use cairn_projection::{
    PlanWarning, ProjectionState, ProjectionStatus, QueryPlan, QueryStatus, ReadSide, ReadSideError,
};

use crate::AppState;
use crate::error::ApiError;

/// The server's read side; without one, every name is unknown (`not_found`).
pub(crate) fn read_side<'a>(
    state: &'a AppState,
    name: &str,
    not_found: fn(String) -> ReadSideError,
) -> Result<&'a Arc<ReadSide>, ApiError> {
    state
        .read_side
        .as_ref()
        .ok_or_else(|| ApiError::from(not_found(name.to_owned())))
}

pub(crate) fn status_to_wire(status: &ProjectionStatus) -> WireStatus {
    WireStatus {
        name: status.name.clone(),
        state: match status.state {
            ProjectionState::Running => WireState::Running,
            ProjectionState::Failed => WireState::Failed,
            ProjectionState::Rebuilding => WireState::Rebuilding,
            ProjectionState::Stopped => WireState::Stopped,
        },
        position: status.position,
        head_position: status.head_position,
        lag: status.lag,
        events_per_second: round(status.events_per_second, 1),
        last_error: status.last_error.as_ref().map(|error| ProjectionFailure {
            position: error.position,
            event_type: error.event_type.clone(),
            message: error.message.clone(),
        }),
        definition_changed: status.definition_changed,
        message: status.message.clone(),
        rebuild_progress: status.rebuild_progress.map(|progress| round(progress, 4)),
        plan_warnings: status.plan_warnings.iter().map(warning_to_wire).collect(),
        owner: status.driving.map(|driving| {
            if driving {
                cairn_api::ProjectionOwner::ThisInstance
            } else {
                cairn_api::ProjectionOwner::AnotherInstance
            }
        }),
    }
}

pub(crate) fn warning_to_wire(warning: &PlanWarning) -> cairn_api::PlanWarning {
    cairn_api::PlanWarning {
        subject: warning.subject.to_string(),
        kind: warning.kind.as_str().to_owned(),
        table: warning.table.clone(),
        columns: warning.columns.clone(),
        suggestion: warning.suggestion.clone(),
        message: warning.message.clone(),
    }
}

pub(crate) fn plan_to_wire(plan: &QueryPlan) -> cairn_api::QueryPlan {
    cairn_api::QueryPlan {
        query: plan.query.clone(),
        sql: plan.sql.clone(),
        rows: plan
            .rows
            .iter()
            .map(|row| cairn_api::PlanRow {
                id: row.id,
                parent: row.parent,
                detail: row.detail.clone(),
            })
            .collect(),
        text: plan.text.clone(),
        warnings: plan.warnings.iter().map(warning_to_wire).collect(),
        analysis: plan.analysis.map(|analysis| cairn_api::PlanAnalysis {
            duration_ms: round(analysis.duration.as_secs_f64() * 1000.0, 3),
            rows_returned: analysis.rows_returned as u64,
        }),
    }
}

pub(crate) fn query_status_to_wire(status: &QueryStatus) -> cairn_api::QueryStatus {
    cairn_api::QueryStatus {
        name: status.name.clone(),
        params: status.params.clone(),
        plan_warnings: status.plan_warnings.iter().map(warning_to_wire).collect(),
        plan_error: status.plan_error.clone(),
        calls: status.calls,
        errors: status.errors,
        rows: status.rows,
        cache_hits: status.cache_hits,
        cache_misses: status.cache_misses,
        cache_hit_ratio: status.cache_hit_ratio().map(|ratio| round(ratio, 4)),
        slow: status.slow,
    }
}

fn round(value: f64, decimals: i32) -> f64 {
    let factor = 10f64.powi(decimals);
    (value * factor).round() / factor
}
