//! Importing a log recorded elsewhere (`cairn import`): events keep their ids,
//! versions, positions and recorded times, deleted streams their tombstones.
//!
//! An import batch is checked as a whole against the target before anything is
//! written, and written in one transaction, so a rejected batch leaves nothing
//! behind. The checks are those that keep the store's invariants true for what comes
//! after the import:
//!
//! - positions continue the target's head without a gap (`head + 1`, `head + 2`, …);
//! - each stream's versions continue its last version (0 for a new stream), and no
//!   event lands in a deleted stream;
//! - event ids are unique in the target;
//! - `recorded_at` never goes backwards along the log;
//! - a tombstone names a stream the target (or the batch) holds, at its last version.
//!
//! Idempotency keys are not part of an import: they protect retries of requests made
//! to the source, which cannot reach the target.
//!
//! The checks are made here, in memory, against what the backend looked up (the head,
//! the batch's streams and which of its ids exist) while it held its write lock; the
//! backend then writes [`ImportPlan`].

use std::collections::{HashMap, HashSet};

use cairn_core::{Position, RecordedEvent, StreamName, Version};
use uuid::Uuid;

use crate::StoreError;

/// A stream deleted in the source: its events stay in the log, reads and appends of
/// it answer `StreamDeleted`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tombstone {
    pub stream: StreamName,
    /// The stream's last version when it was deleted.
    pub version: Version,
    /// Microseconds since the epoch (the stream's `updated_at` in the source).
    pub deleted_at: i64,
}

/// One item of an import batch, in log order: tombstones come after the events of
/// their stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImportRecord {
    Event(RecordedEvent),
    Tombstone(Tombstone),
}

/// What a committed import batch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImportSummary {
    /// The target's head after the batch.
    pub head: Position,
    pub events: usize,
    /// Tombstones written (a stream found deleted already at the same version is
    /// counted too: importing it again is a no-op).
    pub tombstones: usize,
}

/// Why an import batch was not written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImportError {
    /// The record at `index` of the batch does not fit the target; nothing of the
    /// batch was written.
    #[error("record {index} of the batch: {reason}")]
    Rejected { index: usize, reason: String },
    /// The store failed; nothing of the batch was written (or, if the outcome of the
    /// commit is unknown, the store says so).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A stream as the target holds it before the batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ExistingStream {
    pub(crate) version: Version,
    pub(crate) position: Position,
    pub(crate) created_at: i64,
    pub(crate) updated_at: i64,
    pub(crate) deleted: bool,
}

/// What the backend looked up under its write lock.
pub(crate) struct ImportLookups {
    pub(crate) head: Position,
    /// The latest `recorded_at` in the target (0 when empty).
    pub(crate) last_recorded_at: i64,
    /// The batch's streams that exist in the target, by name.
    pub(crate) streams: HashMap<String, ExistingStream>,
    /// The batch's event ids that exist in the target.
    pub(crate) existing_ids: HashSet<Uuid>,
}

/// A stream's row after the batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StreamWrite {
    pub(crate) name: String,
    /// It has a row already (update it), or it is new (insert it).
    pub(crate) exists: bool,
    pub(crate) version: Version,
    pub(crate) position: Position,
    pub(crate) created_at: i64,
    pub(crate) updated_at: i64,
    pub(crate) deleted: bool,
}

/// What to write for a batch that passed every check.
pub(crate) struct ImportPlan<'a> {
    pub(crate) events: Vec<&'a RecordedEvent>,
    /// Changed streams, in the order they were first named.
    pub(crate) streams: Vec<StreamWrite>,
    pub(crate) head_before: Position,
    pub(crate) head: Position,
    pub(crate) last_recorded_at: i64,
    pub(crate) tombstones: usize,
}

impl ImportPlan<'_> {
    pub(crate) fn summary(&self) -> ImportSummary {
        ImportSummary {
            head: self.head,
            events: self.events.len(),
            tombstones: self.tombstones,
        }
    }
}

/// Checks `records` against the target as `lookups` found it; see the module's
/// documentation for the rules.
pub(crate) fn plan(
    records: &[ImportRecord],
    lookups: ImportLookups,
) -> Result<ImportPlan<'_>, ImportError> {
    let ImportLookups {
        head: head_before,
        last_recorded_at,
        streams: existing,
        existing_ids,
    } = lookups;
    let mut head = head_before;
    let mut last_recorded_at = last_recorded_at;
    let mut streams: Vec<StreamWrite> = Vec::new();
    let mut stream_index: HashMap<String, usize> = HashMap::new();
    let mut ids: HashSet<Uuid> = HashSet::new();
    let mut events = Vec::new();
    let mut tombstones = 0;
    let reject = |index: usize, reason: String| ImportError::Rejected { index, reason };

    for (index, record) in records.iter().enumerate() {
        match record {
            ImportRecord::Event(event) => {
                let expected = head + 1;
                if event.position != expected {
                    let reason = if event.position <= head {
                        format!(
                            "position {} is taken already: the log's head is {head}",
                            event.position
                        )
                    } else {
                        format!(
                            "position {} leaves a gap: the next position is {expected}",
                            event.position
                        )
                    };
                    return Err(reject(index, reason));
                }
                if event.recorded_at < last_recorded_at {
                    return Err(reject(
                        index,
                        format!(
                            "recorded_at {} is earlier than the previous event's ({last_recorded_at}): recorded times never go backwards along the log",
                            cairn_core::format_rfc3339_micros(event.recorded_at)
                        ),
                    ));
                }
                if existing_ids.contains(&event.id) || !ids.insert(event.id) {
                    return Err(reject(
                        index,
                        format!("event id {} exists already", event.id),
                    ));
                }
                let name = event.stream.as_str();
                let slot = match stream_index.get(name) {
                    Some(slot) => Some(*slot),
                    None => existing.get(name).map(|stream| {
                        streams.push(StreamWrite {
                            name: name.to_owned(),
                            exists: true,
                            version: stream.version,
                            position: stream.position,
                            created_at: stream.created_at,
                            updated_at: stream.updated_at,
                            deleted: stream.deleted,
                        });
                        stream_index.insert(name.to_owned(), streams.len() - 1);
                        streams.len() - 1
                    }),
                };
                match slot {
                    Some(slot) => {
                        let stream = &mut streams[slot];
                        if stream.deleted {
                            return Err(reject(
                                index,
                                format!(
                                    "stream {name} is deleted: no event can follow its tombstone"
                                ),
                            ));
                        }
                        if event.version != stream.version + 1 {
                            return Err(reject(
                                index,
                                format!(
                                    "version {} of stream {name} does not follow its last version {}",
                                    event.version, stream.version
                                ),
                            ));
                        }
                        stream.version = event.version;
                        stream.position = event.position;
                        stream.updated_at = event.recorded_at;
                    }
                    None => {
                        if event.version != 0 {
                            return Err(reject(
                                index,
                                format!(
                                    "version {} of stream {name}, which has no events yet: a stream starts at version 0",
                                    event.version
                                ),
                            ));
                        }
                        streams.push(StreamWrite {
                            name: name.to_owned(),
                            exists: false,
                            version: 0,
                            position: event.position,
                            created_at: event.recorded_at,
                            updated_at: event.recorded_at,
                            deleted: false,
                        });
                        stream_index.insert(name.to_owned(), streams.len() - 1);
                    }
                }
                head = event.position;
                last_recorded_at = event.recorded_at;
                events.push(event);
            }
            ImportRecord::Tombstone(tombstone) => {
                let name = tombstone.stream.as_str();
                let slot = match stream_index.get(name) {
                    Some(slot) => *slot,
                    None => {
                        let Some(stream) = existing.get(name) else {
                            return Err(reject(
                                index,
                                format!("tombstone of stream {name}, which has no events"),
                            ));
                        };
                        streams.push(StreamWrite {
                            name: name.to_owned(),
                            exists: true,
                            version: stream.version,
                            position: stream.position,
                            created_at: stream.created_at,
                            updated_at: stream.updated_at,
                            deleted: stream.deleted,
                        });
                        stream_index.insert(name.to_owned(), streams.len() - 1);
                        streams.len() - 1
                    }
                };
                let stream = &mut streams[slot];
                if stream.version != tombstone.version {
                    return Err(reject(
                        index,
                        format!(
                            "tombstone of stream {name} at version {}, but its last version is {}",
                            tombstone.version, stream.version
                        ),
                    ));
                }
                if !stream.deleted {
                    stream.deleted = true;
                    stream.updated_at = tombstone.deleted_at;
                }
                tombstones += 1;
            }
        }
    }
    Ok(ImportPlan {
        events,
        streams,
        head_before,
        head,
        last_recorded_at,
        tombstones,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(position: Position, stream: &str, version: Version, at: i64) -> ImportRecord {
        ImportRecord::Event(RecordedEvent {
            id: Uuid::now_v7(),
            stream: StreamName::parse(stream).unwrap(),
            event_type: "E".into(),
            version,
            position,
            data: "{}".into(),
            metadata: "{}".into(),
            tags: Vec::new(),
            recorded_at: at,
        })
    }

    fn empty() -> ImportLookups {
        ImportLookups {
            head: 0,
            last_recorded_at: 0,
            streams: HashMap::new(),
            existing_ids: HashSet::new(),
        }
    }

    fn rejected(records: &[ImportRecord], lookups: ImportLookups) -> (usize, String) {
        match plan(records, lookups) {
            Err(ImportError::Rejected { index, reason }) => (index, reason),
            Err(other) => panic!("unexpected {other}"),
            Ok(_) => panic!("accepted"),
        }
    }

    #[test]
    fn a_valid_batch_plans_its_streams() {
        let records = [
            event(1, "a-1", 0, 10),
            event(2, "b-1", 0, 10),
            event(3, "a-1", 1, 11),
            ImportRecord::Tombstone(Tombstone {
                stream: StreamName::parse("b-1").unwrap(),
                version: 0,
                deleted_at: 12,
            }),
        ];
        let plan = plan(&records, empty()).unwrap();
        assert_eq!(plan.head, 3);
        assert_eq!(plan.events.len(), 3);
        assert_eq!(plan.tombstones, 1);
        let a = &plan.streams[0];
        assert_eq!(
            (a.version, a.position, a.created_at, a.updated_at),
            (1, 3, 10, 11)
        );
        let b = &plan.streams[1];
        assert!(b.deleted && !b.exists);
        assert_eq!(b.updated_at, 12);
    }

    #[test]
    fn every_rule_names_the_record_that_breaks_it() {
        let (index, reason) = rejected(&[event(1, "a", 0, 1), event(3, "a", 1, 1)], empty());
        assert_eq!(index, 1);
        assert!(reason.contains("gap"), "{reason}");
        let (index, reason) = rejected(&[event(1, "a", 0, 1), event(2, "a", 2, 1)], empty());
        assert_eq!(index, 1);
        assert!(reason.contains("does not follow"), "{reason}");
        let (index, reason) = rejected(&[event(1, "a", 1, 1)], empty());
        assert_eq!(index, 0);
        assert!(reason.contains("starts at version 0"), "{reason}");
        let (_, reason) = rejected(&[event(1, "a", 0, 5), event(2, "a", 1, 4)], empty());
        assert!(reason.contains("backwards"), "{reason}");
        let mut lookups = empty();
        lookups.head = 4;
        let (_, reason) = rejected(&[event(4, "a", 0, 5)], lookups);
        assert!(reason.contains("taken"), "{reason}");
        let first = event(1, "a", 0, 1);
        let ImportRecord::Event(copy) = &first else {
            unreachable!()
        };
        let mut twin = copy.clone();
        twin.position = 2;
        twin.version = 1;
        let (index, reason) = rejected(&[first.clone(), ImportRecord::Event(twin)], empty());
        assert_eq!(index, 1);
        assert!(reason.contains("exists already"), "{reason}");
        let tombstone = |version| {
            ImportRecord::Tombstone(Tombstone {
                stream: StreamName::parse("a").unwrap(),
                version,
                deleted_at: 9,
            })
        };
        let (_, reason) = rejected(&[tombstone(0)], empty());
        assert!(reason.contains("has no events"), "{reason}");
        let (_, reason) = rejected(&[event(1, "a", 0, 1), tombstone(3)], empty());
        assert!(reason.contains("last version is 0"), "{reason}");
        let (index, reason) = rejected(
            &[event(1, "a", 0, 1), tombstone(0), event(2, "a", 1, 2)],
            empty(),
        );
        assert_eq!(index, 2);
        assert!(reason.contains("deleted"), "{reason}");
    }

    #[test]
    fn a_tombstone_already_in_place_is_a_no_op() {
        let mut lookups = empty();
        lookups.head = 1;
        lookups.streams.insert(
            "a".into(),
            ExistingStream {
                version: 0,
                position: 1,
                created_at: 1,
                updated_at: 7,
                deleted: true,
            },
        );
        let records = [ImportRecord::Tombstone(Tombstone {
            stream: StreamName::parse("a").unwrap(),
            version: 0,
            deleted_at: 9,
        })];
        let plan = plan(&records, lookups).unwrap();
        assert_eq!(plan.streams[0].updated_at, 7);
        assert_eq!(plan.head, 1);
    }
}
