//! `import_events` on PostgreSQL: one transaction per batch that, like every looked-up
//! append, first takes the write turn and locks the head row (`cairn_head … FOR
//! UPDATE`), so it takes its turn with the writers of every instance; checks the batch
//! against what it then finds (`crate::import::plan`); writes streams, events and tags
//! in bulk with their own positions, versions and times; stores the new head (and the
//! latest `recorded_at`) in the head row, so later appends continue after the last
//! imported position; and notifies the other instances like an append does.

use std::collections::{HashMap, HashSet};

use cairn_core::Position;
use deadpool_postgres::Client;
use uuid::Uuid;

use super::live::CHANNEL;
use super::read::{from_db, stream_from_db, to_db};
use super::schema::pg_error;
use super::writer::{EventColumns, TAKE_WRITE_TURN};
use crate::import::{ExistingStream, ImportLookups, ImportPlan, plan};
use crate::{ImportError, ImportRecord, ImportSummary, StoreError, Tombstone};

const LOCK_HEAD: &str = "SELECT position, recorded_at FROM cairn_head WHERE id = 1 FOR UPDATE";
const LAST_RECORDED_AT: &str = "SELECT recorded_at FROM events WHERE position = $1";
const LOOKUP_STREAMS: &str = "SELECT name, version, position, created_at, updated_at, deleted
     FROM streams WHERE name = ANY($1)";
const LOOKUP_IDS: &str = "SELECT id FROM events WHERE id = ANY($1)";
const WRITE_STREAMS: &str =
    "INSERT INTO streams (name, version, position, created_at, updated_at, deleted)
     SELECT * FROM UNNEST($1::text[], $2::int8[], $3::int8[], $4::int8[], $5::int8[], $6::bool[])
     ON CONFLICT (name) DO UPDATE SET version = EXCLUDED.version, position = EXCLUDED.position,
        updated_at = EXCLUDED.updated_at, deleted = EXCLUDED.deleted";
const WRITE_EVENTS: &str = "INSERT INTO events (position, id, stream_id, version, type, category, data, metadata, tags, recorded_at)
     SELECT u.position, u.id, (SELECT s.stream_id FROM streams s WHERE s.name = u.stream),
            u.version, u.type, u.category, u.data, u.metadata,
            CASE WHEN u.tags IS NULL THEN NULL ELSE ARRAY(SELECT json_array_elements_text(u.tags::json)) END,
            u.recorded_at
     FROM (SELECT UNNEST($1::int8[]) AS position, UNNEST($2::uuid[]) AS id, UNNEST($3::text[]) AS stream,
                  UNNEST($4::int8[]) AS version, UNNEST($5::text[]) AS type, UNNEST($6::text[]) AS category,
                  UNNEST($7::text[]) AS data, UNNEST($8::text[]) AS metadata, UNNEST($9::text[]) AS tags,
                  UNNEST($10::int8[]) AS recorded_at) AS u";
const WRITE_TAGS: &str = "INSERT INTO event_tags (tag, position)
     SELECT * FROM UNNEST($1::text[], $2::int8[]) ON CONFLICT DO NOTHING";
const WRITE_HEAD: &str = "UPDATE cairn_head SET position = $1, recorded_at = GREATEST(recorded_at, $2), revision = revision + 1 WHERE id = 1";
const NOTIFY: &str = "SELECT pg_notify($1, $2)";
const LIST_TOMBSTONES: &str = "SELECT name, version, updated_at FROM streams
     WHERE deleted AND name > $1 ORDER BY name LIMIT $2";

/// Checks and writes `records` in one transaction; returns the summary and the
/// positions written (`None` when the batch wrote no event).
pub(super) async fn import(
    client: &mut Client,
    records: &[ImportRecord],
) -> Result<(ImportSummary, Option<(Position, Position)>), ImportError> {
    let transaction = client.transaction().await.map_err(pg_error)?;
    // The write turn first, then the head, as the writer's looked-up path does.
    transaction
        .batch_execute(TAKE_WRITE_TURN)
        .await
        .map_err(pg_error)?;
    let head_row = transaction
        .query_one(LOCK_HEAD, &[])
        .await
        .map_err(pg_error)?;
    let head = from_db(head_row.try_get(0).map_err(pg_error)?);
    let last_recorded_at: i64 = transaction
        .query_opt(LAST_RECORDED_AT, &[&to_db(head)])
        .await
        .map_err(pg_error)?
        .map(|row| row.try_get(0))
        .transpose()
        .map_err(pg_error)?
        .unwrap_or(0);

    let mut names: Vec<&str> = Vec::new();
    let mut seen: HashSet<&str> = HashSet::new();
    let mut ids: Vec<Uuid> = Vec::new();
    for record in records {
        let name = match record {
            ImportRecord::Event(event) => {
                ids.push(event.id);
                event.stream.as_str()
            }
            ImportRecord::Tombstone(tombstone) => tombstone.stream.as_str(),
        };
        if seen.insert(name) {
            names.push(name);
        }
    }
    let mut streams = HashMap::new();
    for row in transaction
        .query(LOOKUP_STREAMS, &[&names])
        .await
        .map_err(pg_error)?
    {
        streams.insert(
            row.try_get::<_, String>(0).map_err(pg_error)?,
            ExistingStream {
                version: from_db(row.try_get(1).map_err(pg_error)?),
                position: from_db(row.try_get(2).map_err(pg_error)?),
                created_at: row.try_get(3).map_err(pg_error)?,
                updated_at: row.try_get(4).map_err(pg_error)?,
                deleted: row.try_get(5).map_err(pg_error)?,
            },
        );
    }
    let mut existing_ids = HashSet::new();
    for row in transaction
        .query(LOOKUP_IDS, &[&ids])
        .await
        .map_err(pg_error)?
    {
        existing_ids.insert(row.try_get::<_, Uuid>(0).map_err(pg_error)?);
    }

    let plan = plan(
        records,
        ImportLookups {
            head,
            last_recorded_at,
            streams,
            existing_ids,
        },
    )?;
    write(&transaction, &plan).await.map_err(pg_error)?;
    transaction.commit().await.map_err(|error| {
        StoreError::Unavailable(format!(
            "PostgreSQL failed while committing an import batch; its outcome is unknown (`cairn import --resume` finds out): {error}"
        ))
    })?;
    let written = (plan.head > plan.head_before).then_some((plan.head_before + 1, plan.head));
    Ok((plan.summary(), written))
}

async fn write(
    transaction: &deadpool_postgres::Transaction<'_>,
    plan: &ImportPlan<'_>,
) -> Result<(), tokio_postgres::Error> {
    let streams = &plan.streams;
    let names: Vec<&str> = streams.iter().map(|s| s.name.as_str()).collect();
    let versions: Vec<i64> = streams.iter().map(|s| to_db(s.version)).collect();
    let positions: Vec<i64> = streams.iter().map(|s| to_db(s.position)).collect();
    let created: Vec<i64> = streams.iter().map(|s| s.created_at).collect();
    let updated: Vec<i64> = streams.iter().map(|s| s.updated_at).collect();
    let deleted: Vec<bool> = streams.iter().map(|s| s.deleted).collect();
    if !names.is_empty() {
        transaction
            .execute(
                WRITE_STREAMS,
                &[&names, &versions, &positions, &created, &updated, &deleted],
            )
            .await?;
    }

    let events = EventColumns::new(plan.events.iter().copied());
    if events.is_empty() {
        return Ok(());
    }
    transaction
        .execute(
            WRITE_EVENTS,
            &[&events.row_params()[..], &[&events.recorded_at]].concat(),
        )
        .await?;
    if !events.tag_names.is_empty() {
        transaction
            .execute(WRITE_TAGS, &[&events.tag_names, &events.tag_positions])
            .await?;
    }
    transaction
        .execute(WRITE_HEAD, &[&to_db(plan.head), &plan.last_recorded_at])
        .await?;
    transaction
        .execute(NOTIFY, &[&CHANNEL, &plan.head.to_string()])
        .await?;
    Ok(())
}

/// Deleted streams after `after`, in byte order.
pub(super) async fn list_tombstones(
    client: &Client,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<Tombstone>, StoreError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = client
        .query(LIST_TOMBSTONES, &[&after.unwrap_or(""), &limit])
        .await
        .map_err(pg_error)?;
    rows.iter()
        .map(|row| {
            let name: String = row.try_get(0).map_err(pg_error)?;
            Ok(Tombstone {
                stream: stream_from_db(&name)?,
                version: from_db(row.try_get(1).map_err(pg_error)?),
                deleted_at: row.try_get(2).map_err(pg_error)?,
            })
        })
        .collect()
}
