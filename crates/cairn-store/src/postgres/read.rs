//! Reads: the SQL of every read path, run on a pooled connection to the primary or to
//! a replica (the caller chooses). Each read is one statement, so it sees one snapshot.

use cairn_core::{EventFilter, Position, RecordedEvent, StreamName, Version};
use deadpool_postgres::Client;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use super::schema::pg_error;
use crate::{Direction, LogSlice, StoreError, StreamInfo, StreamPage, StreamSlice};

/// The columns every event query selects, in this order.
pub(crate) const EVENT_COLUMNS: &str =
    "e.position, e.id, e.version, e.type, e.data, e.metadata, e.tags, e.recorded_at";

/// Numbered parameters for SQL built at run time.
#[derive(Default)]
pub(crate) struct SqlParams {
    values: Vec<Box<dyn ToSql + Sync + Send>>,
}

impl SqlParams {
    /// Adds a value and returns its placeholder (`$n`).
    pub(crate) fn push(&mut self, value: impl ToSql + Sync + Send + 'static) -> String {
        self.values.push(Box::new(value));
        format!("${}", self.values.len())
    }

    pub(crate) fn refs(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.values
            .iter()
            .map(|value| value.as_ref() as &(dyn ToSql + Sync))
            .collect()
    }
}

/// The SQL conditions (each starting with " AND ") selecting events `e` that match
/// `filter`, with their parameters.
pub(crate) fn filter_sql(filter: &EventFilter, params: &mut SqlParams) -> String {
    let mut sql = String::new();
    if let Some(category) = &filter.category {
        sql.push_str(&format!(
            " AND e.category = {}",
            params.push(category.clone())
        ));
    }
    if let Some(stream) = &filter.stream {
        sql.push_str(&format!(
            " AND e.stream_id = (SELECT stream_id FROM streams WHERE name = {})",
            params.push(stream.clone())
        ));
    }
    match filter.types.as_slice() {
        [] => {}
        [only] => sql.push_str(&format!(" AND e.type = {}", params.push(only.clone()))),
        many => sql.push_str(&format!(
            " AND e.type = ANY({})",
            params.push(many.to_vec())
        )),
    }
    for (index, tag) in filter.tags.iter().enumerate() {
        let placeholder = params.push(tag.clone());
        if index == 0 {
            // The first tag drives the scan through the (tag, position) key.
            sql.push_str(&format!(
                " AND e.position IN (SELECT position FROM event_tags WHERE tag = {placeholder})"
            ));
        } else {
            sql.push_str(&format!(
                " AND EXISTS (SELECT 1 FROM event_tags t WHERE t.tag = {placeholder} AND t.position = e.position)"
            ));
        }
    }
    sql
}

pub(crate) fn to_db(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

pub(crate) fn from_db(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Internal(format!("unreadable row: {what}"))
}

/// Builds a recorded event from `EVENT_COLUMNS` starting at column `at`.
pub(crate) fn event_from_row(
    row: &Row,
    at: usize,
    stream: StreamName,
) -> Result<RecordedEvent, StoreError> {
    let tags: Option<Vec<String>> = row.try_get(at + 6).map_err(corrupt)?;
    Ok(RecordedEvent {
        position: from_db(row.try_get(at).map_err(corrupt)?),
        id: row.try_get::<_, Uuid>(at + 1).map_err(corrupt)?,
        stream,
        version: from_db(row.try_get(at + 2).map_err(corrupt)?),
        event_type: row.try_get(at + 3).map_err(corrupt)?,
        data: row.try_get(at + 4).map_err(corrupt)?,
        metadata: row.try_get(at + 5).map_err(corrupt)?,
        tags: tags.unwrap_or_default(),
        recorded_at: row.try_get(at + 7).map_err(corrupt)?,
    })
}

/// Stream names read back from the database were validated when written.
pub(crate) fn stream_from_db(name: &str) -> Result<StreamName, StoreError> {
    StreamName::parse(name).map_err(|e| corrupt(format!("stream name {name:?}: {}", e.message)))
}

async fn query(
    client: &Client,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Row>, StoreError> {
    let statement = client.prepare_cached(sql).await.map_err(pg_error)?;
    client.query(&statement, params).await.map_err(pg_error)
}

pub(crate) async fn read_stream(
    client: &Client,
    stream: &StreamName,
    from: Option<Version>,
    direction: Direction,
    limit: usize,
) -> Result<StreamSlice, StoreError> {
    let sql = match direction {
        Direction::Forward => format!(
            "SELECT s.version, s.deleted, {EVENT_COLUMNS} FROM streams s LEFT JOIN LATERAL (
                 SELECT * FROM events e WHERE e.stream_id = s.stream_id AND NOT s.deleted
                 AND e.version >= $2 ORDER BY e.version LIMIT $3) e ON true
             WHERE s.name = $1 ORDER BY e.version"
        ),
        Direction::Backward => format!(
            "SELECT s.version, s.deleted, {EVENT_COLUMNS} FROM streams s LEFT JOIN LATERAL (
                 SELECT * FROM events e WHERE e.stream_id = s.stream_id AND NOT s.deleted
                 AND e.version <= LEAST($2, s.version) ORDER BY e.version DESC LIMIT $3) e ON true
             WHERE s.name = $1 ORDER BY e.version DESC"
        ),
    };
    let from = match (direction, from) {
        (Direction::Forward, from) => to_db(from.unwrap_or(0)),
        (Direction::Backward, from) => from.map_or(i64::MAX, to_db),
    };
    let fetch = to_db(limit as u64).saturating_add(1);
    let rows = query(client, &sql, &[&stream.as_str(), &from, &fetch]).await?;
    let Some(first) = rows.first() else {
        return Err(StoreError::StreamNotFound(stream.clone()));
    };
    if first.try_get::<_, bool>(1).map_err(corrupt)? {
        return Err(StoreError::StreamDeleted(stream.clone()));
    }
    let mut events = Vec::with_capacity(rows.len());
    for row in &rows {
        if row.try_get::<_, Option<i64>>(2).map_err(corrupt)?.is_none() {
            continue; // the stream row without events in range
        }
        events.push(event_from_row(row, 2, stream.clone())?);
    }
    let next = if events.len() > limit {
        events.pop().map(|extra| extra.version)
    } else {
        None
    };
    Ok(StreamSlice { events, next })
}

pub(crate) async fn stream_info(
    client: &Client,
    stream: &StreamName,
) -> Result<StreamInfo, StoreError> {
    let rows = query(
        client,
        "SELECT version, position, created_at, updated_at, deleted FROM streams WHERE name = $1",
        &[&stream.as_str()],
    )
    .await?;
    let Some(row) = rows.first() else {
        return Err(StoreError::StreamNotFound(stream.clone()));
    };
    if row.try_get::<_, bool>(4).map_err(corrupt)? {
        return Err(StoreError::StreamDeleted(stream.clone()));
    }
    Ok(StreamInfo {
        stream: stream.clone(),
        version: from_db(row.try_get(0).map_err(corrupt)?),
        position: from_db(row.try_get(1).map_err(corrupt)?),
        created_at: row.try_get(2).map_err(corrupt)?,
        updated_at: row.try_get(3).map_err(corrupt)?,
    })
}

pub(crate) async fn list_streams(
    client: &Client,
    prefix: &str,
    after: Option<&str>,
    limit: usize,
) -> Result<StreamPage, StoreError> {
    let mut params = SqlParams::default();
    let prefix_param = params.push(prefix.to_owned());
    let mut sql = format!(
        "SELECT name FROM streams WHERE NOT deleted AND name >= {prefix_param} \
         AND starts_with(name, {prefix_param})"
    );
    if let Some(upper) = prefix_upper_bound(prefix) {
        sql.push_str(&format!(" AND name < {}", params.push(upper)));
    }
    if let Some(after) = after {
        sql.push_str(&format!(" AND name > {}", params.push(after.to_owned())));
    }
    sql.push_str(&format!(
        " ORDER BY name LIMIT {}",
        params.push(to_db(limit as u64).saturating_add(1))
    ));
    let rows = query(client, &sql, &params.refs()).await?;
    let mut streams = rows
        .iter()
        .map(|row| row.try_get::<_, String>(0).map_err(corrupt))
        .collect::<Result<Vec<_>, _>>()?;
    let next = if streams.len() > limit {
        streams.truncate(limit);
        streams.last().cloned()
    } else {
        None
    };
    Ok(StreamPage { streams, next })
}

/// The smallest string greater than every string starting with `prefix`, when one is
/// easy to name (ASCII prefixes); `starts_with` keeps the result exact either way.
fn prefix_upper_bound(prefix: &str) -> Option<String> {
    let last = *prefix.as_bytes().last()?;
    if !prefix.is_ascii() || last >= 0x7f {
        return None;
    }
    let mut upper = prefix[..prefix.len() - 1].to_owned();
    upper.push(char::from(last + 1));
    Some(upper)
}

pub(crate) async fn read_all(
    client: &Client,
    from: Position,
    filter: &EventFilter,
    limit: usize,
) -> Result<LogSlice, StoreError> {
    let from = from.max(1);
    let mut params = SqlParams::default();
    let from_param = params.push(to_db(from));
    let conditions = filter_sql(filter, &mut params);
    let limit_param = params.push(to_db(limit as u64));
    // One statement: the head and the page come from one snapshot.
    let sql = format!(
        "SELECT h.position, x.* FROM cairn_head h LEFT JOIN LATERAL (
             SELECT {EVENT_COLUMNS}, s.name FROM events e JOIN streams s ON s.stream_id = e.stream_id
             WHERE e.position >= {from_param}{conditions} ORDER BY e.position LIMIT {limit_param}) x ON true
         WHERE h.id = 1 ORDER BY x.position"
    );
    let rows = query(client, &sql, &params.refs()).await?;
    let head = match rows.first() {
        Some(row) => from_db(row.try_get(0).map_err(corrupt)?),
        None => return Err(StoreError::Internal("the cairn_head row is missing".into())),
    };
    let mut events = Vec::with_capacity(rows.len());
    for row in &rows {
        let Some(name) = row.try_get::<_, Option<String>>(9).map_err(corrupt)? else {
            continue;
        };
        events.push(event_from_row(row, 1, stream_from_db(&name)?)?);
    }
    let next_from_position = match events.last() {
        Some(last) if events.len() >= limit => last.position + 1,
        _ => from.max(head + 1),
    };
    Ok(LogSlice {
        events,
        next_from_position,
        head_position: head,
    })
}

/// Every event at positions `from..=to`, in order, without a filter (for the live feed).
pub(crate) async fn read_range(
    client: &Client,
    from: Position,
    to: Position,
) -> Result<Vec<RecordedEvent>, StoreError> {
    let sql = format!(
        "SELECT {EVENT_COLUMNS}, s.name FROM events e JOIN streams s ON s.stream_id = e.stream_id
         WHERE e.position >= $1 AND e.position <= $2 ORDER BY e.position"
    );
    let rows = query(client, &sql, &[&to_db(from), &to_db(to)]).await?;
    rows.iter()
        .map(|row| {
            let name: String = row.try_get(8).map_err(corrupt)?;
            event_from_row(row, 0, stream_from_db(&name)?)
        })
        .collect()
}

pub(crate) async fn read_event(
    client: &Client,
    position: Position,
) -> Result<Option<RecordedEvent>, StoreError> {
    let events = read_range(client, position, position).await?;
    Ok(events.into_iter().next())
}

/// The last committed position, as this server has it.
pub(crate) async fn head_position(client: &Client) -> Result<Position, StoreError> {
    let rows = query(client, "SELECT position FROM cairn_head WHERE id = 1", &[]).await?;
    match rows.first() {
        Some(row) => Ok(from_db(row.try_get(0).map_err(corrupt)?)),
        None => Err(StoreError::Internal("the cairn_head row is missing".into())),
    }
}
