//! Deciding a batch's requests in memory, in order, against what the writer looked up
//! after taking the head lock plus what the earlier requests of the batch did. A
//! refused request changes nothing here, so it takes no position and needs no
//! savepoint in the database.

use std::collections::{HashMap, HashSet};

use cairn_core::{ExpectedVersion, Position, RecordedEvent, StreamName, Version};
use tokio_postgres::Row;
use uuid::Uuid;

use super::known::Cached;
use super::read::from_db;
use crate::{AppendOutcome, AppendRequest, AppendResult, StoreError, StreamAppendResult};

/// A stream as the batch sees it: looked up, then changed by the batch's requests.
pub(super) struct StreamState {
    /// The last version; `None` while the stream has no events.
    pub(super) version: Option<Version>,
    pub(super) position: Position,
    pub(super) created_at: i64,
    pub(super) deleted: bool,
    /// Changed by this batch: to be written.
    pub(super) dirty: bool,
    /// The stream has a row from before the batch (looked up or remembered); one
    /// created by the batch is inserted, and the insert fails if the row exists after
    /// all.
    pub(super) existed: bool,
}

impl StreamState {
    pub(super) fn existing(
        version: Version,
        position: Position,
        created_at: i64,
        deleted: bool,
    ) -> Self {
        Self {
            version: Some(version),
            position,
            created_at,
            deleted,
            dirty: false,
            existed: true,
        }
    }
}

/// Where an existing event id stands.
#[derive(Clone)]
struct ExistingEvent {
    stream: String,
    version: Version,
    position: Position,
}

pub(super) struct NewKey {
    pub(super) key: String,
    pub(super) fingerprint: [u8; 32],
    pub(super) response: String,
}

/// What the first round trip found (or, on the cached path, what the writer remembers).
pub(super) struct Lookups {
    /// The head row's revision (see `known.rs`).
    pub(super) revision: i64,
    head: Position,
    pub(super) recorded_at: i64,
    streams: HashMap<String, StreamState>,
    keys: HashMap<String, (Vec<u8>, String)>,
    ids: HashMap<Uuid, ExistingEvent>,
    /// Per command index: the first stored event matching its condition.
    conditions: HashMap<usize, Position>,
}

fn corrupt(error: tokio_postgres::Error) -> StoreError {
    StoreError::Internal(format!("unreadable row: {error}"))
}

impl Lookups {
    pub(super) fn from_rows(
        head: &[Row],
        streams: &[Row],
        keys: &[Row],
        ids: &[Row],
        conditions: &HashMap<usize, Vec<Row>>,
    ) -> Result<Self, StoreError> {
        let head_row = head
            .first()
            .ok_or_else(|| StoreError::Internal("the cairn_head row is missing".into()))?;
        let mut lookups = Lookups {
            head: from_db(head_row.try_get(0).map_err(corrupt)?),
            recorded_at: head_row.try_get(1).map_err(corrupt)?,
            revision: head_row.try_get(2).map_err(corrupt)?,
            streams: HashMap::with_capacity(streams.len()),
            keys: HashMap::with_capacity(keys.len()),
            ids: HashMap::with_capacity(ids.len()),
            conditions: HashMap::new(),
        };
        for row in streams {
            lookups.streams.insert(
                row.try_get(0).map_err(corrupt)?,
                StreamState::existing(
                    from_db(row.try_get(1).map_err(corrupt)?),
                    from_db(row.try_get(2).map_err(corrupt)?),
                    row.try_get(3).map_err(corrupt)?,
                    row.try_get(4).map_err(corrupt)?,
                ),
            );
        }
        for row in keys {
            lookups.keys.insert(
                row.try_get(0).map_err(corrupt)?,
                (
                    row.try_get(1).map_err(corrupt)?,
                    row.try_get(2).map_err(corrupt)?,
                ),
            );
        }
        for row in ids {
            lookups.ids.insert(
                row.try_get(0).map_err(corrupt)?,
                ExistingEvent {
                    stream: row.try_get(1).map_err(corrupt)?,
                    version: from_db(row.try_get(2).map_err(corrupt)?),
                    position: from_db(row.try_get(3).map_err(corrupt)?),
                },
            );
        }
        for (index, rows) in conditions {
            if let Some(row) = rows.first() {
                lookups
                    .conditions
                    .insert(*index, from_db(row.try_get(0).map_err(corrupt)?));
            }
        }
        Ok(lookups)
    }

    /// The starting point of a batch on the cached path: the remembered streams, and
    /// no stored idempotency keys, event ids or conditions (assumed absent).
    pub(super) fn from_cached(cached: Cached) -> Self {
        Lookups {
            revision: cached.revision,
            head: cached.head,
            recorded_at: cached.recorded_at,
            streams: cached.streams,
            keys: HashMap::new(),
            ids: HashMap::new(),
            conditions: HashMap::new(),
        }
    }
}

/// The batch's view of the database while its requests are decided in order: what
/// was looked up, plus what the requests accepted so far wrote.
pub(super) struct BatchState {
    pub(super) head_before: Position,
    pub(super) head: Position,
    pub(super) recorded_at: i64,
    pub(super) streams: HashMap<String, StreamState>,
    stored_keys: HashMap<String, (Vec<u8>, String)>,
    ids: HashMap<Uuid, ExistingEvent>,
    conditions: HashMap<usize, Position>,
    /// The events accepted, in position order.
    pub(super) events: Vec<RecordedEvent>,
    pub(super) new_keys: Vec<NewKey>,
}

impl BatchState {
    pub(super) fn new(lookups: Lookups, recorded_at: i64) -> Self {
        Self {
            head_before: lookups.head,
            head: lookups.head,
            recorded_at,
            streams: lookups.streams,
            stored_keys: lookups.keys,
            ids: lookups.ids,
            conditions: lookups.conditions,
            events: Vec::new(),
            new_keys: Vec::new(),
        }
    }

    /// The key as stored before the batch or written by it: `(fingerprint, response)`.
    fn key(&self, key: &str) -> Option<(&[u8], &str)> {
        if let Some(new) = self.new_keys.iter().rev().find(|new| new.key == key) {
            return Some((&new.fingerprint[..], new.response.as_str()));
        }
        self.stored_keys
            .get(key)
            .map(|(fingerprint, response)| (fingerprint.as_slice(), response.as_str()))
    }

    fn remember_key(&mut self, request: &AppendRequest, result: &AppendResult) {
        if let Some(claim) = &request.idempotency {
            self.new_keys.push(NewKey {
                key: claim.key.clone(),
                fingerprint: claim.fingerprint,
                response: (claim.render)(result),
            });
        }
    }

    pub(super) fn append(
        &mut self,
        index: usize,
        request: &AppendRequest,
    ) -> Result<AppendOutcome, StoreError> {
        if request.events.is_empty() || request.targets.is_empty() {
            return Err(StoreError::Internal(
                "an append needs at least one event".into(),
            ));
        }
        if let Some(claim) = &request.idempotency
            && let Some((fingerprint, response)) = self.key(&claim.key)
        {
            return if fingerprint == claim.fingerprint {
                Ok(AppendOutcome::Replayed {
                    body: response.to_owned(),
                })
            } else {
                Err(StoreError::IdempotencyKeyReused)
            };
        }
        if let Some(result) = self.find_resent_events(request)? {
            self.remember_key(request, &result);
            return Ok(AppendOutcome::Committed(result));
        }

        let mut current = Vec::with_capacity(request.targets.len());
        for target in &request.targets {
            let stream = self.streams.get(target.stream.as_str());
            if stream.is_some_and(|s| s.deleted) {
                return Err(StoreError::StreamDeleted(target.stream.clone()));
            }
            let actual = stream.and_then(|s| s.version);
            target
                .expected
                .check(actual)
                .map_err(|wrong| StoreError::WrongExpectedVersion {
                    stream: target.stream.clone(),
                    expected: wrong.expected,
                    actual: wrong.actual,
                })?;
            current.push(actual);
        }
        if let Some(condition) = &request.condition {
            let stored = self.conditions.get(&index).copied();
            let in_batch = || {
                self.events
                    .iter()
                    .find(|e| e.position > condition.after && condition.query.matches(e))
                    .map(|e| e.position)
            };
            if let Some(found) = stored.or_else(in_batch) {
                return Err(StoreError::ConditionFailed {
                    after: condition.after,
                    found,
                });
            }
        }
        let mut seen = HashSet::with_capacity(request.events.len());
        for (target, event) in &request.events {
            if let Some(existing) = self.ids.get(&event.id) {
                return Err(StoreError::DuplicateEventId {
                    id: event.id,
                    existing_stream: existing.stream.clone(),
                });
            }
            if !seen.insert(event.id) {
                let existing_stream = request
                    .targets
                    .get(*target)
                    .map(|t| t.stream.to_string())
                    .unwrap_or_default();
                return Err(StoreError::DuplicateEventId {
                    id: event.id,
                    existing_stream,
                });
            }
        }

        // Where every event lands: positions from the head, versions per stream.
        let first_position = self.head + 1;
        let mut results: Vec<Option<StreamAppendResult>> = vec![None; request.targets.len()];
        let mut next_version: Vec<Version> = current
            .iter()
            .map(|version| version.map_or(0, |v| v + 1))
            .collect();
        let mut placed = Vec::with_capacity(request.events.len());
        for (offset, (target, event)) in request.events.iter().enumerate() {
            let stream = &request
                .targets
                .get(*target)
                .ok_or_else(|| StoreError::Internal(format!("event names target {target}")))?
                .stream;
            let position = first_position + offset as Position;
            let version = next_version[*target];
            next_version[*target] += 1;
            let entry = results[*target].get_or_insert_with(|| StreamAppendResult {
                stream: stream.clone(),
                first_version: version,
                last_version: version,
                first_position: position,
                last_position: position,
            });
            entry.last_version = version;
            entry.last_position = position;
            placed.push(RecordedEvent {
                id: event.id,
                stream: stream.clone(),
                event_type: event.event_type.clone(),
                version,
                position,
                data: event.data.clone(),
                metadata: event.metadata.clone(),
                tags: event.tags.clone(),
                recorded_at: self.recorded_at,
            });
        }
        if let Some(index) = results.iter().position(Option::is_none) {
            return Err(StoreError::Internal(format!(
                "stream {} is a target without events",
                request.targets[index].stream
            )));
        }
        let last_position = first_position + request.events.len() as Position - 1;

        // Accepted: the batch's view moves on.
        for result in results.iter().flatten() {
            let stream = self
                .streams
                .entry(result.stream.to_string())
                .or_insert(StreamState {
                    version: None,
                    position: 0,
                    created_at: self.recorded_at,
                    deleted: false,
                    dirty: true,
                    existed: false,
                });
            stream.version = Some(result.last_version);
            stream.position = result.last_position;
            stream.dirty = true;
        }
        for event in &placed {
            self.ids.insert(
                event.id,
                ExistingEvent {
                    stream: event.stream.to_string(),
                    version: event.version,
                    position: event.position,
                },
            );
        }
        self.events.extend(placed);
        self.head = last_position;
        let result = AppendResult {
            streams: results.into_iter().flatten().collect(),
            first_position,
            last_position,
        };
        self.remember_key(request, &result);
        Ok(AppendOutcome::Committed(result))
    }

    /// A request whose events all stand already, in their streams, in the same order,
    /// is an idempotent success with the original result. One whose first id is
    /// unknown is a new append (checked for duplicates later). Anything else is a
    /// duplicate.
    fn find_resent_events(
        &self,
        request: &AppendRequest,
    ) -> Result<Option<AppendResult>, StoreError> {
        let Some((_, first)) = request.events.first() else {
            return Ok(None);
        };
        let Some(first_existing) = self.ids.get(&first.id) else {
            return Ok(None);
        };
        let mut results: Vec<Option<StreamAppendResult>> = vec![None; request.targets.len()];
        let mut previous_position = 0;
        for (target, event) in &request.events {
            let stream = &request
                .targets
                .get(*target)
                .ok_or_else(|| StoreError::Internal(format!("event names target {target}")))?
                .stream;
            let Some(existing) = self.ids.get(&event.id) else {
                return Err(StoreError::DuplicateEventId {
                    id: first.id,
                    existing_stream: first_existing.stream.clone(),
                });
            };
            let in_order = existing.stream == stream.as_str()
                && existing.position > previous_position
                && results[*target]
                    .as_ref()
                    .is_none_or(|r| existing.version == r.last_version + 1);
            if !in_order {
                return Err(StoreError::DuplicateEventId {
                    id: event.id,
                    existing_stream: existing.stream.clone(),
                });
            }
            previous_position = existing.position;
            let entry = results[*target].get_or_insert_with(|| StreamAppendResult {
                stream: stream.clone(),
                first_version: existing.version,
                last_version: existing.version,
                first_position: existing.position,
                last_position: existing.position,
            });
            entry.last_version = existing.version;
            entry.last_position = existing.position;
        }
        let streams: Vec<StreamAppendResult> = results.into_iter().flatten().collect();
        let first_position = streams.iter().map(|s| s.first_position).min().unwrap_or(0);
        let last_position = streams.iter().map(|s| s.last_position).max().unwrap_or(0);
        Ok(Some(AppendResult {
            streams,
            first_position,
            last_position,
        }))
    }

    pub(super) fn delete(
        &mut self,
        stream: &StreamName,
        expected: ExpectedVersion,
    ) -> Result<Version, StoreError> {
        let Some(state) = self
            .streams
            .get_mut(stream.as_str())
            .filter(|s| s.version.is_some())
        else {
            // The expectation decides the error: a writer that expected no stream is
            // told so; otherwise there is nothing to delete.
            expected
                .check(None)
                .map_err(|wrong| StoreError::WrongExpectedVersion {
                    stream: stream.clone(),
                    expected: wrong.expected,
                    actual: None,
                })?;
            return Err(StoreError::StreamNotFound(stream.clone()));
        };
        if state.deleted {
            return Err(StoreError::StreamDeleted(stream.clone()));
        }
        let version = state.version.unwrap_or(0);
        expected
            .check(Some(version))
            .map_err(|wrong| StoreError::WrongExpectedVersion {
                stream: stream.clone(),
                expected: wrong.expected,
                actual: wrong.actual,
            })?;
        state.deleted = true;
        state.dirty = true;
        Ok(version)
    }
}
