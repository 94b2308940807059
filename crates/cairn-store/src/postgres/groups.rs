//! Consumer groups' durable state (settings, checkpoint, parked events), always on the
//! primary. These writes do not touch the log, so they do not take the head lock.

use cairn_core::{Position, now_micros};
use deadpool_postgres::{Client, GenericClient};

use super::read::{from_db, to_db};
use super::schema::pg_error;
use crate::{GroupRecord, GroupSettings, ParkedEvent, StoreError};

fn corrupt(error: tokio_postgres::Error) -> StoreError {
    StoreError::Internal(format!("unreadable row: {error}"))
}

async fn statement(
    client: &impl GenericClient,
    sql: &str,
) -> Result<tokio_postgres::Statement, StoreError> {
    client.prepare_cached(sql).await.map_err(pg_error)
}

pub(crate) async fn save_group(
    client: &Client,
    name: &str,
    settings: &GroupSettings,
    checkpoint: Position,
) -> Result<GroupRecord, StoreError> {
    let sql = statement(
        client,
        "INSERT INTO consumer_groups (name, settings, checkpoint, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $4)
         ON CONFLICT (name) DO UPDATE SET settings = EXCLUDED.settings, updated_at = EXCLUDED.updated_at
         RETURNING name, settings, checkpoint, created_at, updated_at",
    )
    .await?;
    let row = client
        .query_one(
            &sql,
            &[
                &name,
                &settings.to_stored(),
                &to_db(checkpoint),
                &now_micros(),
            ],
        )
        .await
        .map_err(pg_error)?;
    group_from_row(&row)
}

fn group_from_row(row: &tokio_postgres::Row) -> Result<GroupRecord, StoreError> {
    let settings: String = row.try_get(1).map_err(corrupt)?;
    Ok(GroupRecord {
        name: row.try_get(0).map_err(corrupt)?,
        settings: GroupSettings::from_stored(&settings)?,
        checkpoint: from_db(row.try_get(2).map_err(corrupt)?),
        created_at: row.try_get(3).map_err(corrupt)?,
        updated_at: row.try_get(4).map_err(corrupt)?,
    })
}

pub(crate) async fn delete_group(client: &Client, name: &str) -> Result<bool, StoreError> {
    // One statement, so the group and its parked events go together.
    let sql = statement(
        client,
        "WITH parked AS (DELETE FROM parked_events WHERE group_name = $1)
         DELETE FROM consumer_groups WHERE name = $1",
    )
    .await?;
    let removed = client.execute(&sql, &[&name]).await.map_err(pg_error)?;
    Ok(removed > 0)
}

pub(crate) async fn load_groups(client: &Client) -> Result<Vec<GroupRecord>, StoreError> {
    let sql = statement(
        client,
        "SELECT name, settings, checkpoint, created_at, updated_at FROM consumer_groups ORDER BY name",
    )
    .await?;
    client
        .query(&sql, &[])
        .await
        .map_err(pg_error)?
        .iter()
        .map(group_from_row)
        .collect()
}

pub(crate) async fn save_checkpoint(
    client: &Client,
    name: &str,
    checkpoint: Position,
) -> Result<(), StoreError> {
    let sql = statement(
        client,
        "UPDATE consumer_groups SET checkpoint = GREATEST(checkpoint, $2), updated_at = $3 WHERE name = $1",
    )
    .await?;
    client
        .execute(&sql, &[&name, &to_db(checkpoint), &now_micros()])
        .await
        .map_err(pg_error)?;
    Ok(())
}

pub(crate) async fn park_events(
    client: &impl GenericClient,
    name: &str,
    events: Vec<ParkedEvent>,
) -> Result<(), StoreError> {
    if events.is_empty() {
        return Ok(());
    }
    let sql = statement(
        client,
        "INSERT INTO parked_events (group_name, position, deliveries, reason, parked_at, replaying)
         SELECT $1, u.position, u.deliveries, u.reason, u.parked_at, false
         FROM UNNEST($2::int8[], $3::int4[], $4::text[], $5::int8[]) AS u(position, deliveries, reason, parked_at)
         ON CONFLICT (group_name, position) DO UPDATE SET deliveries = EXCLUDED.deliveries,
            reason = EXCLUDED.reason, parked_at = EXCLUDED.parked_at, replaying = false",
    )
    .await?;
    // The same position twice in one call: the last one stands, as with one insert each.
    let mut latest = std::collections::BTreeMap::new();
    for event in events {
        latest.insert(event.position, event);
    }
    let positions: Vec<i64> = latest.keys().map(|p| to_db(*p)).collect();
    let deliveries: Vec<i32> = latest
        .values()
        .map(|e| i32::try_from(e.deliveries).unwrap_or(i32::MAX))
        .collect();
    let reasons: Vec<&str> = latest.values().map(|e| e.reason.as_str()).collect();
    let parked_at: Vec<i64> = latest.values().map(|e| e.parked_at).collect();
    client
        .execute(
            &sql,
            &[&name, &positions, &deliveries, &reasons, &parked_at],
        )
        .await
        .map_err(pg_error)?;
    Ok(())
}

pub(crate) async fn replay_parked(
    client: &impl GenericClient,
    name: &str,
    positions: Option<Vec<Position>>,
) -> Result<Vec<Position>, StoreError> {
    let rows = match positions {
        Some(positions) => {
            let sql = statement(
                client,
                "UPDATE parked_events SET replaying = true
                 WHERE group_name = $1 AND position = ANY($2) AND NOT replaying RETURNING position",
            )
            .await?;
            let positions: Vec<i64> = positions.into_iter().map(to_db).collect();
            client.query(&sql, &[&name, &positions]).await
        }
        None => {
            let sql = statement(
                client,
                "UPDATE parked_events SET replaying = true
                 WHERE group_name = $1 AND NOT replaying RETURNING position",
            )
            .await?;
            client.query(&sql, &[&name]).await
        }
    }
    .map_err(pg_error)?;
    let mut marked = rows
        .iter()
        .map(|row| row.try_get::<_, i64>(0).map(from_db).map_err(corrupt))
        .collect::<Result<Vec<_>, _>>()?;
    marked.sort_unstable();
    Ok(marked)
}

pub(crate) async fn remove_parked(
    client: &impl GenericClient,
    name: &str,
    positions: Vec<Position>,
) -> Result<(), StoreError> {
    let sql = statement(
        client,
        "DELETE FROM parked_events WHERE group_name = $1 AND position = ANY($2)",
    )
    .await?;
    let positions: Vec<i64> = positions.into_iter().map(to_db).collect();
    client
        .execute(&sql, &[&name, &positions])
        .await
        .map_err(pg_error)?;
    Ok(())
}

pub(crate) async fn list_parked(
    client: &Client,
    name: &str,
    after: Position,
    limit: usize,
) -> Result<Vec<ParkedEvent>, StoreError> {
    let sql = statement(
        client,
        "SELECT position, deliveries, reason, parked_at, replaying FROM parked_events
         WHERE group_name = $1 AND position > $2 ORDER BY position LIMIT $3",
    )
    .await?;
    client
        .query(&sql, &[&name, &to_db(after), &to_db(limit as u64)])
        .await
        .map_err(pg_error)?
        .iter()
        .map(|row| {
            Ok(ParkedEvent {
                position: from_db(row.try_get(0).map_err(corrupt)?),
                deliveries: u32::try_from(row.try_get::<_, i32>(1).map_err(corrupt)?).unwrap_or(0),
                reason: row.try_get(2).map_err(corrupt)?,
                parked_at: row.try_get(3).map_err(corrupt)?,
                replaying: row.try_get(4).map_err(corrupt)?,
            })
        })
        .collect()
}
