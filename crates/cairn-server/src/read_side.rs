//! The read side's domain types in their wire form, and the state's read side.

use std::sync::Arc;

use cairn_api::{ProjectionFailure, ProjectionState as WireState, ProjectionStatus as WireStatus};
use cairn_projection::{ProjectionState, ProjectionStatus, ReadSide, ReadSideError};

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
    }
}

fn round(value: f64, decimals: i32) -> f64 {
    let factor = 10f64.powi(decimals);
    (value * factor).round() / factor
}
