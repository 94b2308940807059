//! Reads, on a pool of read-only connections, each run on the blocking thread pool.

use cairn_core::{EventFilter, Position, RecordedEvent, StreamName};
use rusqlite::types::Value;
use rusqlite::{Connection, Row};
use uuid::Uuid;

use super::schema::internal;
use crate::StoreError;

/// The columns every event query selects, in this order.
pub(crate) const EVENT_COLUMNS: &str =
    "e.position, e.id, e.version, e.type, e.data, e.metadata, e.tags, e.recorded_at";

/// Builds a recorded event from a row of `EVENT_COLUMNS`, for a known stream.
pub(crate) fn event_from_row(row: &Row<'_>, stream: StreamName) -> rusqlite::Result<RecordedEvent> {
    let id: [u8; 16] = row.get(1)?;
    let tags: Option<String> = row.get(6)?;
    let tags = match tags {
        Some(text) => serde_json::from_str(&text).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(6, rusqlite::types::Type::Text, Box::new(e))
        })?,
        None => Vec::new(),
    };
    Ok(RecordedEvent {
        position: row.get::<_, i64>(0)? as Position,
        id: Uuid::from_bytes(id),
        stream,
        version: row.get::<_, i64>(2)? as u64,
        event_type: row.get(3)?,
        data: row.get(4)?,
        metadata: row.get(5)?,
        tags,
        recorded_at: row.get(7)?,
    })
}

/// Stream names read back from the database were validated when written.
pub(crate) fn stream_from_db(name: &str) -> rusqlite::Result<StreamName> {
    StreamName::parse(name).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(
            0,
            rusqlite::types::Type::Text,
            Box::new(std::io::Error::other(e.message)),
        )
    })
}

/// The SQL conditions (joined with AND, each starting with " AND ") and their
/// parameters selecting events `e` that match `filter`.
pub(crate) fn filter_sql(filter: &EventFilter, params: &mut Vec<Value>) -> String {
    let mut sql = String::new();
    if let Some(category) = &filter.category {
        sql.push_str(" AND e.category = ?");
        params.push(Value::Text(category.clone()));
    }
    if let Some(stream) = &filter.stream {
        sql.push_str(" AND e.stream_id = (SELECT stream_id FROM streams WHERE name = ?)");
        params.push(Value::Text(stream.clone()));
    }
    if !filter.types.is_empty() {
        sql.push_str(" AND e.type IN (");
        for (index, event_type) in filter.types.iter().enumerate() {
            sql.push_str(if index == 0 { "?" } else { ", ?" });
            params.push(Value::Text(event_type.clone()));
        }
        sql.push(')');
    }
    for (index, tag) in filter.tags.iter().enumerate() {
        if index == 0 {
            // The first tag drives the scan through the (tag, position) key.
            sql.push_str(" AND e.position IN (SELECT position FROM event_tags WHERE tag = ?)");
        } else {
            sql.push_str(
                " AND EXISTS (SELECT 1 FROM event_tags t WHERE t.tag = ? AND t.position = e.position)",
            );
        }
        params.push(Value::Text(tag.clone()));
    }
    sql
}

pub(crate) fn head_position(connection: &Connection) -> Result<Position, StoreError> {
    connection
        .prepare_cached("SELECT COALESCE(MAX(position), 0) FROM events")
        .and_then(|mut statement| statement.query_row([], |row| row.get::<_, i64>(0)))
        .map(|head| head as Position)
        .map_err(internal)
}
