//! `import_events` on the embedded store: run by the writer thread inside its
//! group-commit transaction, in a savepoint of its own, so a rejected batch writes
//! nothing and the head moves only with a commit.

use std::collections::{HashMap, HashSet};

use cairn_core::{Position, category_of};
use rusqlite::{Connection, OptionalExtension, params};

use super::schema::internal;
use crate::import::{ExistingStream, ImportLookups, ImportPlan, plan};
use crate::{ImportError, ImportRecord, StoreError, Tombstone};

/// Checks and writes `records` after `head`; on success returns the plan's summary and
/// the latest imported `recorded_at`, and moves `head`.
pub(super) fn import(
    connection: &Connection,
    head: &mut Position,
    records: &[ImportRecord],
) -> Result<(crate::ImportSummary, i64), ImportError> {
    let last_recorded_at: i64 = connection
        .prepare_cached("SELECT recorded_at FROM events WHERE position = ?1")
        .map_err(internal)?
        .query_row([to_db(*head)], |row| row.get(0))
        .optional()
        .map_err(internal)?
        .unwrap_or(0);

    let mut stream_ids: HashMap<String, i64> = HashMap::new();
    let mut streams = HashMap::new();
    let mut existing_ids = HashSet::new();
    {
        let mut lookup_stream = connection
            .prepare_cached(
                "SELECT stream_id, version, position, created_at, updated_at, deleted FROM streams WHERE name = ?1",
            )
            .map_err(internal)?;
        let mut lookup_id = connection
            .prepare_cached("SELECT 1 FROM events WHERE id = ?1")
            .map_err(internal)?;
        for record in records {
            let name = match record {
                ImportRecord::Event(event) => {
                    let exists = lookup_id
                        .query_row([event.id.as_bytes()], |_| Ok(()))
                        .optional()
                        .map_err(internal)?
                        .is_some();
                    if exists {
                        existing_ids.insert(event.id);
                    }
                    event.stream.as_str()
                }
                ImportRecord::Tombstone(tombstone) => tombstone.stream.as_str(),
            };
            if stream_ids.contains_key(name) {
                continue;
            }
            let row = lookup_stream
                .query_row([name], |row| {
                    Ok((
                        row.get::<_, i64>(0)?,
                        ExistingStream {
                            version: from_db(row.get(1)?),
                            position: from_db(row.get(2)?),
                            created_at: row.get(3)?,
                            updated_at: row.get(4)?,
                            deleted: row.get(5)?,
                        },
                    ))
                })
                .optional()
                .map_err(internal)?;
            if let Some((stream_id, stream)) = row {
                stream_ids.insert(name.to_owned(), stream_id);
                streams.insert(name.to_owned(), stream);
            }
        }
    }

    let plan = plan(
        records,
        ImportLookups {
            head: *head,
            last_recorded_at,
            streams,
            existing_ids,
        },
    )?;
    write(connection, &plan, &mut stream_ids)?;
    *head = plan.head;
    Ok((plan.summary(), plan.last_recorded_at))
}

fn write(
    connection: &Connection,
    plan: &ImportPlan<'_>,
    stream_ids: &mut HashMap<String, i64>,
) -> Result<(), StoreError> {
    for stream in &plan.streams {
        if stream.exists {
            let stream_id = stream_ids.get(&stream.name).copied().ok_or_else(|| {
                StoreError::Internal(format!("stream {} lost its id", stream.name))
            })?;
            connection
                .prepare_cached(
                    "UPDATE streams SET version = ?2, position = ?3, updated_at = ?4, deleted = ?5 WHERE stream_id = ?1",
                )
                .and_then(|mut s| {
                    s.execute(params![
                        stream_id,
                        to_db(stream.version),
                        to_db(stream.position),
                        stream.updated_at,
                        stream.deleted
                    ])
                })
                .map_err(internal)?;
        } else {
            let stream_id = connection
                .prepare_cached(
                    "INSERT INTO streams (name, version, position, created_at, updated_at, deleted)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6) RETURNING stream_id",
                )
                .and_then(|mut s| {
                    s.query_row(
                        params![
                            stream.name,
                            to_db(stream.version),
                            to_db(stream.position),
                            stream.created_at,
                            stream.updated_at,
                            stream.deleted
                        ],
                        |row| row.get::<_, i64>(0),
                    )
                })
                .map_err(internal)?;
            stream_ids.insert(stream.name.clone(), stream_id);
        }
    }

    let mut insert_event = connection
        .prepare_cached(
            "INSERT INTO events (position, id, stream_id, version, type, category, data, metadata, tags, recorded_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )
        .map_err(internal)?;
    let mut insert_tag = connection
        .prepare_cached("INSERT OR IGNORE INTO event_tags (tag, position) VALUES (?1, ?2)")
        .map_err(internal)?;
    for event in &plan.events {
        let stream_id = stream_ids
            .get(event.stream.as_str())
            .copied()
            .ok_or_else(|| StoreError::Internal(format!("stream {} has no id", event.stream)))?;
        let tags = if event.tags.is_empty() {
            None
        } else {
            Some(
                serde_json::to_string(&event.tags)
                    .map_err(|e| StoreError::Internal(e.to_string()))?,
            )
        };
        insert_event
            .execute(params![
                to_db(event.position),
                event.id.as_bytes(),
                stream_id,
                to_db(event.version),
                event.event_type,
                category_of(event.stream.as_str()),
                event.data,
                event.metadata,
                tags,
                event.recorded_at,
            ])
            .map_err(internal)?;
        for tag in &event.tags {
            insert_tag
                .execute(params![tag, to_db(event.position)])
                .map_err(internal)?;
        }
    }
    Ok(())
}

/// Deleted streams after `after`, in byte order.
pub(super) fn list_tombstones(
    connection: &Connection,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<Tombstone>, StoreError> {
    let mut statement = connection
        .prepare_cached(
            "SELECT name, version, updated_at FROM streams WHERE deleted = 1 AND name > ?1 ORDER BY name LIMIT ?2",
        )
        .map_err(internal)?;
    let rows = statement
        .query_map(
            params![
                after.unwrap_or(""),
                i64::try_from(limit).unwrap_or(i64::MAX)
            ],
            |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, i64>(1)?,
                    row.get::<_, i64>(2)?,
                ))
            },
        )
        .map_err(internal)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(internal)?;
    rows.into_iter()
        .map(|(name, version, deleted_at)| {
            Ok(Tombstone {
                stream: super::read::stream_from_db(&name).map_err(internal)?,
                version: from_db(version),
                deleted_at,
            })
        })
        .collect()
}

fn to_db(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn from_db(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}
