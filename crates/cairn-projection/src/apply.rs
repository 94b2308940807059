//! Applying a batch of events to the read models: each event's statements with their
//! parameters bound, and the checkpoint, in one transaction. Runs on a blocking thread.

use std::time::{Duration, Instant};

use cairn_core::{Position, RecordedEvent, format_rfc3339_micros};
use rusqlite::types::{ToSqlOutput, Value, ValueRef};
use rusqlite::{Connection, ToSql, TransactionBehavior};
use serde_json::Value as Json;

use crate::config::{EventField, EventStatement, ProjectionPlan};
use crate::db::{self, ProjectionError, StoredState};
use crate::plans;

/// What became of a batch.
#[derive(Debug)]
pub(crate) enum BatchOutcome {
    /// Every event applied; the checkpoint is the batch's `through`.
    Applied { changed: bool },
    /// An event's statement failed: the events before it are applied and the
    /// projection is stored as failed at the position before it.
    Failed {
        checkpoint: Position,
        changed: bool,
        error: ProjectionError,
    },
    /// The database itself failed (begin, checkpoint, commit); nothing was applied.
    Storage(String),
    /// PostgreSQL: the stored checkpoint is not where this driver left it (the
    /// projection was reset, or is driven elsewhere); nothing was applied.
    Lost(String),
}

enum AttemptError {
    /// The event at this index of the batch failed.
    Event {
        index: usize,
        message: String,
    },
    Storage(String),
}

impl From<rusqlite::Error> for AttemptError {
    fn from(error: rusqlite::Error) -> Self {
        AttemptError::Storage(error.to_string())
    }
}

/// Applies `events` (every matching event of the log up to `through`) and moves the
/// checkpoint to `through`, in one transaction. On a failing statement the batch rolls
/// back and the events before the failing one are applied again, with the checkpoint
/// just before it and the failure recorded, so nothing before it is lost and nothing
/// after it happens.
///
/// Each event's statements are timed (`cairn_projection_statement_duration_seconds`),
/// and a statement slower than `slow` is logged with its plan (target
/// `cairn::slow_query`), with its placeholders' names, never their values.
pub(crate) fn apply_batch(
    connection: &mut Connection,
    plan: &ProjectionPlan,
    events: &[RecordedEvent],
    through: Position,
    state: StoredState,
    slow: Duration,
) -> BatchOutcome {
    let mut outcome = attempt(connection, plan, events, through, state, None, slow);
    loop {
        match outcome {
            Ok(changed) => return BatchOutcome::Applied { changed },
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
                // The same statements against the same state fail at the same event, so
                // this normally commits; if an earlier event fails now, go again.
                match attempt(
                    connection,
                    plan,
                    &events[..index],
                    checkpoint,
                    StoredState::Failed,
                    Some(&error),
                    slow,
                ) {
                    Ok(changed) => {
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

fn attempt(
    connection: &mut Connection,
    plan: &ProjectionPlan,
    events: &[RecordedEvent],
    through: Position,
    state: StoredState,
    error: Option<&ProjectionError>,
    slow: Duration,
) -> Result<bool, AttemptError> {
    let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut changed = false;
    for (index, event) in events.iter().enumerate() {
        apply_event(&transaction, plan, event, &mut changed, slow)
            .map_err(|message| AttemptError::Event { index, message })?;
    }
    db::save_checkpoint(&transaction, &plan.config.name, through, state, error)?;
    transaction.commit()?;
    Ok(changed)
}

fn apply_event(
    connection: &Connection,
    plan: &ProjectionPlan,
    event: &RecordedEvent,
    changed: &mut bool,
    slow: Duration,
) -> Result<(), String> {
    let Some(handler) = plan.handlers.get(&event.event_type) else {
        return Ok(());
    };
    let started = Instant::now();
    let data = parse_if(handler.needs_data, &event.data, "data")?;
    let metadata = parse_if(handler.needs_meta, &event.metadata, "metadata")?;
    for (index, statement) in handler.statements.iter().enumerate() {
        *changed = true;
        let statement_started = Instant::now();
        let mut prepared = connection
            .prepare_cached(&statement.sql)
            .map_err(|e| e.to_string())?;
        for (index, field) in statement.fields.iter().enumerate() {
            let value = bind_value(field, event, data.as_ref(), metadata.as_ref());
            prepared
                .raw_bind_parameter(index + 1, value)
                .map_err(|e| e.to_string())?;
        }
        prepared.raw_execute().map_err(|e| e.to_string())?;
        let elapsed = statement_started.elapsed();
        if elapsed >= slow {
            log_slow_statement(
                connection,
                plan,
                &event.event_type,
                index,
                statement,
                elapsed,
            );
        }
    }
    handler.metrics.duration(started.elapsed().as_secs_f64());
    Ok(())
}

/// One line for a statement slower than the threshold: names, duration and plan,
/// never the values it was run with. The plan is only worked out now.
fn log_slow_statement(
    connection: &Connection,
    plan: &ProjectionPlan,
    event_type: &str,
    index: usize,
    statement: &EventStatement,
    elapsed: Duration,
) {
    let plan_text = plans::one_line_plan(connection, &statement.sql, &[]);
    warn_slow_statement(plan, event_type, index, statement, elapsed, &plan_text);
}

/// The slow-statement line itself, the same on every read-model database.
pub(crate) fn warn_slow_statement(
    plan: &ProjectionPlan,
    event_type: &str,
    index: usize,
    statement: &EventStatement,
    elapsed: Duration,
    plan_text: &str,
) {
    tracing::warn!(
        target: "cairn::slow_query",
        projection = %plan.config.name,
        event_type,
        statement = index + 1,
        params = ?statement.names,
        duration_ms = plans::milliseconds(elapsed),
        plan = %plan_text,
        "slow projection statement"
    );
}

/// The event's data or metadata parsed, when a statement of the handler reads it.
pub(crate) fn parse_if(needed: bool, text: &str, what: &str) -> Result<Option<Json>, String> {
    if !needed {
        return Ok(None);
    }
    serde_json::from_str(text)
        .map(Some)
        .map_err(|e| format!("the event's {what} is not valid JSON: {e}"))
}

/// A statement parameter: borrowed from the event where it can be.
#[derive(Debug, PartialEq)]
pub(crate) enum Bound<'a> {
    Borrowed(ValueRef<'a>),
    Owned(Value),
}

impl ToSql for Bound<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            Bound::Borrowed(value) => ToSqlOutput::Borrowed(*value),
            Bound::Owned(value) => ToSqlOutput::Borrowed(ValueRef::from(value)),
        })
    }
}

pub(crate) fn bind_value<'a>(
    field: &EventField,
    event: &'a RecordedEvent,
    data: Option<&'a Json>,
    metadata: Option<&'a Json>,
) -> Bound<'a> {
    match field {
        EventField::Data(path) => field_value(&event.data, data, path),
        EventField::Meta(path) => field_value(&event.metadata, metadata, path),
        EventField::Stream => Bound::Borrowed(ValueRef::Text(event.stream.as_str().as_bytes())),
        EventField::Version => Bound::Owned(Value::Integer(to_i64(event.version))),
        EventField::Position => Bound::Owned(Value::Integer(to_i64(event.position))),
        EventField::Type => Bound::Borrowed(ValueRef::Text(event.event_type.as_bytes())),
        EventField::Id => Bound::Owned(Value::Text(event.id.to_string())),
        EventField::RecordedAt => {
            Bound::Owned(Value::Text(format_rfc3339_micros(event.recorded_at)))
        }
    }
}

/// `:data` / `:meta` (the whole value: an object or array binds as the event's own
/// JSON text, untouched) or a path into it.
fn field_value<'a>(text: &'a str, parsed: Option<&'a Json>, path: &[String]) -> Bound<'a> {
    match parsed {
        Some(Json::Object(_) | Json::Array(_)) if path.is_empty() => {
            Bound::Borrowed(ValueRef::Text(text.as_bytes()))
        }
        Some(root) => json_value(lookup(root, path)),
        None => Bound::Borrowed(ValueRef::Null),
    }
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Follows object keys and array indexes (`items.0.sku`).
pub(crate) fn lookup<'a>(root: &'a Json, path: &[String]) -> Option<&'a Json> {
    path.iter().try_fold(root, |value, segment| match value {
        Json::Object(map) => map.get(segment),
        Json::Array(items) => items.get(segment.parse::<usize>().ok()?),
        _ => None,
    })
}

/// JSON to SQL: string → TEXT, integer → INTEGER, other number → REAL, bool → 0/1,
/// null or missing → NULL, object or array → its JSON text.
fn json_value(value: Option<&Json>) -> Bound<'_> {
    match value {
        None | Some(Json::Null) => Bound::Borrowed(ValueRef::Null),
        Some(Json::Bool(flag)) => Bound::Owned(Value::Integer(i64::from(*flag))),
        Some(Json::Number(number)) => match number.as_i64() {
            Some(integer) => Bound::Owned(Value::Integer(integer)),
            None => Bound::Owned(Value::Real(number.as_f64().unwrap_or(f64::NAN))),
        },
        Some(Json::String(text)) => Bound::Borrowed(ValueRef::Text(text.as_bytes())),
        Some(composite) => Bound::Owned(Value::Text(composite.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_maps_to_sql_types() {
        let data = json!({"s": "x", "i": 7, "f": 1.5, "t": true, "n": null, "o": {"a": [1]}, "a": [{"b": 2}], "big": u64::MAX});
        let at = |path: &str| {
            let path: Vec<String> = path.split('.').map(str::to_owned).collect();
            match json_value(lookup(&data, &path)) {
                Bound::Borrowed(value) => Value::try_from(value).unwrap(),
                Bound::Owned(value) => value,
            }
        };
        assert_eq!(at("s"), Value::Text("x".into()));
        assert_eq!(at("i"), Value::Integer(7));
        assert_eq!(at("f"), Value::Real(1.5));
        assert_eq!(at("t"), Value::Integer(1));
        assert_eq!(at("n"), Value::Null);
        assert_eq!(at("missing"), Value::Null);
        assert_eq!(at("s.deeper"), Value::Null);
        assert_eq!(at("o"), Value::Text(r#"{"a":[1]}"#.into()));
        assert_eq!(at("a.0.b"), Value::Integer(2));
        assert_eq!(at("a.1.b"), Value::Null);
        assert_eq!(at("big"), Value::Real(u64::MAX as f64));
    }
}
