//! The owner of a projection on PostgreSQL: a dedicated connection that holds the
//! projection's session advisory lock and applies its batches, each in one
//! transaction with the checkpoint.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use cairn_core::{Position, RecordedEvent, format_rfc3339_micros, now_micros};
use serde_json::Value as Json;
use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls, Statement, Transaction};

use super::values::{TextParam, as_params};
use super::{PgReadModels, describe, load, lock_key, to_i64};
use crate::apply::{BatchOutcome, lookup};
use crate::config::{EventField, EventStatement, ProjectionPlan};
use crate::db::{ProjectionError, StoredProjection, StoredState};
use crate::error::ReadSideError;

/// The checkpoint moves only from where this owner knows it: the position it last
/// read or wrote, and the number of resets (rebuilds) it has seen.
/// Other instances following the projection hear of the move when it commits
/// (`moves.rs`).
const MOVE_CHECKPOINT: &str = "UPDATE cairn_projections SET position = $2, state = $3,
        error_position = $4, error_type = $5, error_message = $6, updated_at = $7
     WHERE name = $1 AND position = $8 AND resets = $9
     RETURNING pg_notify('cairn_projections', name)";

/// This instance drives the projection while it holds this: the advisory lock lives
/// as long as the connection.
pub(crate) struct Owner {
    client: Client,
    connection: JoinHandle<()>,
    name: String,
    statements: HashMap<String, Statement>,
    /// The checkpoint as stored: what the next batch's update must find.
    pub stored: Position,
    resets: u64,
}

impl Drop for Owner {
    fn drop(&mut self) {
        // Ending the connection releases the lock at once.
        self.connection.abort();
    }
}

enum AttemptError {
    Event {
        index: usize,
        message: String,
    },
    /// The stored checkpoint is not where this owner left it.
    Lost(String),
    Storage(String),
}

impl From<tokio_postgres::Error> for AttemptError {
    fn from(error: tokio_postgres::Error) -> Self {
        AttemptError::Storage(describe(&error))
    }
}

impl Owner {
    /// Connects and tries the projection's lock: `None` while another session holds
    /// it.
    pub(crate) async fn try_take(
        read_models: &PgReadModels,
        name: &str,
    ) -> Result<Option<Owner>, ReadSideError> {
        let (client, connection) = read_models.config.connect(NoTls).await.map_err(super::pg)?;
        let connection = tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "projection owner connection ended");
            }
        });
        let locked: bool = client
            .query_one(
                "SELECT pg_try_advisory_lock($1)",
                &[&lock_key(&read_models.schema, name)],
            )
            .await
            .map_err(super::pg)?
            .get(0);
        let owner = Owner {
            client,
            connection,
            name: name.to_owned(),
            statements: HashMap::new(),
            stored: 0,
            resets: 0,
        };
        Ok(locked.then_some(owner))
    }

    /// Reads the projection's row under the lock: where this owner starts.
    pub(crate) async fn load(&mut self) -> Result<StoredProjection, ReadSideError> {
        let stored = load(&self.client, &self.name)
            .await?
            .ok_or_else(|| ReadSideError::ProjectionNotFound(self.name.clone()))?;
        self.stored = stored.position;
        self.resets = stored.resets;
        Ok(stored)
    }

    /// Checks, between batches, that the connection (so the lock) is alive and that
    /// nobody reset the projection (a rebuild through another instance).
    pub(crate) async fn check(&self) -> Result<(), String> {
        let row = self
            .client
            .query_opt(
                "SELECT position, resets FROM cairn_projections WHERE name = $1",
                &[&self.name],
            )
            .await
            .map_err(|e| describe(&e))?
            .ok_or_else(|| "the projection's row is gone".to_owned())?;
        let (position, resets): (i64, i64) = (row.get(0), row.get(1));
        if super::to_position(position) == self.stored && super::to_position(resets) == self.resets
        {
            Ok(())
        } else {
            Err(format!(
                "the projection was reset or moved elsewhere (stored position {position}, \
                 expected {})",
                self.stored
            ))
        }
    }

    /// As [`crate::apply::apply_batch`], on PostgreSQL: the batch and the checkpoint in
    /// one transaction; on a failing statement, the events before it and the failure.
    pub(crate) async fn apply_batch(
        &mut self,
        plan: &ProjectionPlan,
        events: &[RecordedEvent],
        through: Position,
        state: StoredState,
        slow: Duration,
    ) -> BatchOutcome {
        let mut outcome = self.attempt(plan, events, through, state, None, slow).await;
        loop {
            match outcome {
                Ok(changed) => {
                    self.stored = through;
                    return BatchOutcome::Applied { changed };
                }
                Err(AttemptError::Lost(message)) => return BatchOutcome::Lost(message),
                Err(AttemptError::Storage(message)) => return BatchOutcome::Storage(message),
                Err(AttemptError::Event { index, message }) => {
                    let event = &events[index];
                    if let Some(handler) = plan.handlers.get(&event.event_type) {
                        handler.metrics.error();
                    }
                    let error = ProjectionError {
                        position: event.position,
                        event_type: Some(event.event_type.clone()),
                        message,
                    };
                    let checkpoint = event.position - 1;
                    match self
                        .attempt(
                            plan,
                            &events[..index],
                            checkpoint,
                            StoredState::Failed,
                            Some(&error),
                            slow,
                        )
                        .await
                    {
                        Ok(changed) => {
                            self.stored = checkpoint;
                            return BatchOutcome::Failed {
                                checkpoint,
                                changed,
                                error,
                            };
                        }
                        other => outcome = other,
                    }
                }
            }
        }
    }

    /// Writes a position reached without effects (at shutdown).
    pub(crate) async fn save_position(
        &mut self,
        position: Position,
        state: StoredState,
    ) -> Result<(), String> {
        let transaction = self.client.transaction().await.map_err(|e| describe(&e))?;
        move_checkpoint(
            &transaction,
            &self.name,
            position,
            state,
            None,
            self.stored,
            self.resets,
        )
        .await
        .map_err(|error| match error {
            AttemptError::Lost(message) | AttemptError::Storage(message) => message,
            AttemptError::Event { message, .. } => message,
        })?;
        transaction.commit().await.map_err(|e| describe(&e))?;
        self.stored = position;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn attempt(
        &mut self,
        plan: &ProjectionPlan,
        events: &[RecordedEvent],
        through: Position,
        state: StoredState,
        error: Option<&ProjectionError>,
        slow: Duration,
    ) -> Result<bool, AttemptError> {
        let Owner {
            client,
            name,
            statements,
            stored,
            resets,
            ..
        } = self;
        let transaction = client.transaction().await?;
        // First: the row lock, and the proof that nobody else moved the projection.
        move_checkpoint(&transaction, name, through, state, error, *stored, *resets).await?;
        let mut changed = false;
        for (index, event) in events.iter().enumerate() {
            apply_event(&transaction, statements, plan, event, &mut changed, slow)
                .await
                .map_err(|message| AttemptError::Event { index, message })?;
        }
        transaction.commit().await?;
        Ok(changed)
    }
}

async fn move_checkpoint(
    transaction: &Transaction<'_>,
    name: &str,
    position: Position,
    state: StoredState,
    error: Option<&ProjectionError>,
    expected: Position,
    resets: u64,
) -> Result<(), AttemptError> {
    let moved = transaction
        .execute(
            MOVE_CHECKPOINT,
            &[
                &name,
                &to_i64(position),
                &state.as_str(),
                &error.map(|e| to_i64(e.position)),
                &error.and_then(|e| e.event_type.as_deref()),
                &error.map(|e| e.message.as_str()),
                &now_micros(),
                &to_i64(expected),
                &to_i64(resets),
            ],
        )
        .await?;
    if moved == 1 {
        Ok(())
    } else {
        Err(AttemptError::Lost(format!(
            "the stored checkpoint is no longer at {expected}: the projection was reset or is driven elsewhere"
        )))
    }
}

async fn apply_event(
    transaction: &Transaction<'_>,
    statements: &mut HashMap<String, Statement>,
    plan: &ProjectionPlan,
    event: &RecordedEvent,
    changed: &mut bool,
    slow: Duration,
) -> Result<(), String> {
    let Some(handler) = plan.handlers.get(&event.event_type) else {
        return Ok(());
    };
    let started = Instant::now();
    let data = crate::apply::parse_if(handler.needs_data, &event.data, "data")?;
    let metadata = crate::apply::parse_if(handler.needs_meta, &event.metadata, "metadata")?;
    for (index, statement) in handler.statements.iter().enumerate() {
        *changed = true;
        let statement_started = Instant::now();
        let prepared = match statements.get(&statement.sql) {
            Some(prepared) => prepared.clone(),
            None => {
                let prepared = transaction
                    .prepare(&statement.sql)
                    .await
                    .map_err(|e| describe(&e))?;
                statements.insert(statement.sql.clone(), prepared.clone());
                prepared
            }
        };
        let params: Vec<TextParam> = statement
            .fields
            .iter()
            .map(|field| TextParam(text_value(field, event, data.as_ref(), metadata.as_ref())))
            .collect();
        transaction
            .execute(&prepared, &as_params(&params))
            .await
            .map_err(|e| describe(&e))?;
        let elapsed = statement_started.elapsed();
        if elapsed >= slow {
            log_slow_statement(
                transaction,
                plan,
                &event.event_type,
                index,
                statement,
                elapsed,
            )
            .await;
        }
    }
    handler.metrics.duration(started.elapsed().as_secs_f64());
    Ok(())
}

async fn log_slow_statement(
    transaction: &Transaction<'_>,
    plan: &ProjectionPlan,
    event_type: &str,
    index: usize,
    statement: &EventStatement,
    elapsed: Duration,
) {
    let plan_text = super::plans::one_line_plan(
        transaction,
        &statement.sql,
        &vec![TextParam(None); statement.fields.len()],
    )
    .await;
    crate::apply::warn_slow_statement(plan, event_type, index, statement, elapsed, &plan_text);
}

/// An event field as the text PostgreSQL parses into the parameter's inferred type
/// (see `values.rs`); `None` is `NULL`.
pub(crate) fn text_value(
    field: &EventField,
    event: &RecordedEvent,
    data: Option<&Json>,
    metadata: Option<&Json>,
) -> Option<String> {
    match field {
        EventField::Data(path) => json_field(&event.data, data, path),
        EventField::Meta(path) => json_field(&event.metadata, metadata, path),
        EventField::Stream => Some(event.stream.as_str().to_owned()),
        EventField::Version => Some(event.version.to_string()),
        EventField::Position => Some(event.position.to_string()),
        EventField::Type => Some(event.event_type.clone()),
        EventField::Id => Some(event.id.to_string()),
        EventField::RecordedAt => Some(format_rfc3339_micros(event.recorded_at)),
    }
}

fn json_field(text: &str, parsed: Option<&Json>, path: &[String]) -> Option<String> {
    match parsed {
        Some(Json::Object(_) | Json::Array(_)) if path.is_empty() => Some(text.to_owned()),
        Some(root) => match lookup(root, path)? {
            Json::Null => None,
            Json::Bool(flag) => Some(flag.to_string()),
            Json::Number(number) => Some(number.to_string()),
            Json::String(text) => Some(text.clone()),
            composite => Some(composite.to_string()),
        },
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_fields_become_the_text_postgres_parses() {
        let data = json!({"s": "x", "i": 30, "f": 12.5, "t": true, "n": null, "o": {"a": [1]}});
        let text = data.to_string();
        let at = |path: &str| {
            let path: Vec<String> = if path.is_empty() {
                Vec::new()
            } else {
                path.split('.').map(str::to_owned).collect()
            };
            json_field(&text, Some(&data), &path)
        };
        assert_eq!(at("s").as_deref(), Some("x"));
        assert_eq!(at("i").as_deref(), Some("30"));
        assert_eq!(at("f").as_deref(), Some("12.5"));
        assert_eq!(at("t").as_deref(), Some("true"));
        assert_eq!(at("n"), None);
        assert_eq!(at("missing"), None);
        assert_eq!(at("o").as_deref(), Some(r#"{"a":[1]}"#));
        assert_eq!(at("o.a.0").as_deref(), Some("1"));
        assert_eq!(at("").as_deref(), Some(text.as_str()));
        assert_eq!(
            json_field("\"just\"", Some(&json!("just")), &[]).as_deref(),
            Some("just")
        );
    }
}
