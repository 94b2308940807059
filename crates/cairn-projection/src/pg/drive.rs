//! Driving a projection on PostgreSQL, with other instances on the same database:
//! whoever holds its advisory lock applies events; the others follow the shared
//! checkpoint table, read again as soon as the owner notifies a move and at least
//! every [`FOLLOW_INTERVAL`], and try the lock again every [`FOLLOW_INTERVAL`], so
//! that when the owner dies (its connection ends, PostgreSQL releases the lock) one
//! of them takes over within about that long.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::{FOLLOW_INTERVAL, Owner, PgReadModels};
use crate::db::{StoredProjection, StoredState};
use crate::projection::{Ended, Projection, ProjectionState, RunContext, Writer, run_owned};

/// Runs until `cancel`: follows the projection, and drives it while it holds the lock.
pub(crate) async fn drive(
    context: RunContext,
    read_models: Arc<PgReadModels>,
    projection: Arc<Projection>,
    cancel: CancellationToken,
) {
    let name = projection.name().to_owned();
    let mut known_resets: Option<u64> = None;
    let mut moves = read_models.checkpoint_moves();
    let mut first = true;
    // The next periodic round (read the checkpoint, try the lock); a notified move in
    // between only reads the checkpoint.
    let mut next_round = tokio::time::Instant::now();
    loop {
        if !first {
            tokio::select! {
                biased;
                () = cancel.cancelled() => break,
                () = tokio::time::sleep_until(next_round) => {}
                () = super::moves::moved(&mut moves, &name) => {}
            }
        }
        first = false;
        let periodic = tokio::time::Instant::now() >= next_round;
        if periodic {
            next_round = tokio::time::Instant::now() + FOLLOW_INTERVAL;
        }
        let stored = match read_models.load(&name).await {
            Ok(stored) => stored,
            Err(error) => {
                tracing::warn!(projection = %name, %error, "cannot read the projection's checkpoint; retrying");
                continue;
            }
        };
        follow(&context, &projection, &stored, &mut known_resets);
        if stored.state == StoredState::Failed || !periodic {
            continue;
        }
        let mut owner = match Owner::try_take(&read_models, &name).await {
            Ok(Some(owner)) => owner,
            Ok(None) => {
                if projection
                    .status
                    .lock()
                    .is_ok_and(|s| s.driving != Some(false))
                {
                    projection.set_driving(Some(false));
                }
                continue;
            }
            Err(error) => {
                tracing::warn!(projection = %name, %error, "cannot try the projection's lock; retrying");
                continue;
            }
        };
        // Under the lock, the stored row is where this instance starts.
        let stored = match owner.load().await {
            Ok(stored) => stored,
            Err(error) => {
                tracing::warn!(projection = %name, %error, "cannot read the projection's checkpoint; retrying");
                continue;
            }
        };
        follow(&context, &projection, &stored, &mut known_resets);
        if stored.state == StoredState::Failed {
            continue;
        }
        projection.set_driving(Some(true));
        tracing::info!(projection = %name, position = stored.position, "this instance drives the projection");
        let ended = run_owned(
            context.clone(),
            Arc::clone(&projection),
            Writer::Postgres(owner),
            cancel.child_token(),
        )
        .await;
        projection.set_driving(Some(false));
        match ended {
            Ended::Stopped if cancel.is_cancelled() => break,
            Ended::Stopped | Ended::Failed => {}
            Ended::Lost(reason) => {
                tracing::warn!(projection = %name, %reason, "this instance no longer drives the projection");
            }
        }
    }
}

/// Brings the in-memory projection to the stored row: position (back to it after a
/// reset, with a new rebuild epoch), state, error, whether the definition changed.
fn follow(
    context: &RunContext,
    projection: &Projection,
    stored: &StoredProjection,
    known_resets: &mut Option<u64>,
) {
    let current = *projection.progress.borrow();
    let reset = known_resets.is_some_and(|known| known != stored.resets)
        || stored.position < current.position;
    *known_resets = Some(stored.resets);
    if reset {
        projection.reset();
    }
    if reset || stored.position != current.position {
        projection.advance(context, stored.position, true);
    }
    projection.set_stored(stored.position);
    let state = match stored.state {
        StoredState::Failed => ProjectionState::Failed,
        StoredState::Rebuilding => ProjectionState::Rebuilding,
        StoredState::Running => ProjectionState::Running,
    };
    let changed = projection
        .status
        .lock()
        .is_ok_and(|status| status.state != state || status.last_error != stored.error);
    if changed {
        projection.set_state(state, stored.error.clone());
    }
    if let Ok(mut status) = projection.status.lock() {
        status.definition_changed = stored.definition_hash != projection.plan.definition_hash;
    }
}
