//! What the writer knows of the log after its own last commit, so that a batch can
//! skip the lookups and commit in one round trip (the cached path, see `writer.rs`).
//!
//! Every writing transaction adds one to `cairn_head.revision` under the head lock
//! (migration 4). While the revision is the one this writer's last commit left, no
//! other transaction wrote anything in between, so the streams it remembers are
//! exactly as the database holds them. The cached path sends that revision along with
//! its writes, and the database writes nothing if the revision moved (`COMMIT_CACHED`
//! in `writer.rs` updates the head on that condition, and writes only if it did).
//!
//! What is not remembered is assumed absent: a stream never seen, an idempotency key,
//! an event id. Such an assumption can be wrong either way, so the cached path commits
//! only a batch whose requests are all accepted:
//! - a wrong acceptance is caught by the database: the stream, key or event id is
//!   inserted without `ON CONFLICT`, so if it is there after all a unique index fails
//!   the transaction;
//! - a refusal might rest on an assumption (a re-sent request, whose stored key or
//!   event ids would have made it a replay, looks like a conflicting one), so a batch
//!   with a refusal is looked up instead, before anything is sent.
//!
//! Append conditions are never decided from memory: an event matching one would go
//! unnoticed, and nothing in the database would catch it.

use std::collections::HashMap;

use cairn_core::Position;

use super::batch::{BatchState, StreamState};
use super::writer::Command;

/// The most streams remembered; past it, the ones used longest ago are forgotten.
const MAX_STREAMS: usize = 65_536;
/// After attempts stopped by other instances' writes, the cached path waits for at most
/// 2^5 quiet lookups in a row.
const MAX_BACKOFF: u32 = 5;

#[derive(Default)]
pub(super) struct KnownLog {
    /// The head's revision as this writer's last commit left it; `None` when unknown
    /// (at start, or after a commit whose outcome is not known).
    revision: Option<i64>,
    head: Position,
    recorded_at: i64,
    /// Looked-up batches in a row that found the revision where this writer's commit
    /// before them had left it. While other instances write, batches are looked up
    /// directly instead of trying the cached path first.
    quiet_lookups: u32,
    /// The cached path is tried again after `2^backoff` quiet lookups in a row: each
    /// attempt stopped by another instance's write doubles it (up to 2^5), a cached
    /// commit puts it back to 1.
    backoff: u32,
    streams: HashMap<String, Remembered>,
    /// Counts the batches, to tell which streams were used longest ago.
    batches: u64,
}

struct Remembered {
    version: cairn_core::Version,
    position: Position,
    created_at: i64,
    deleted: bool,
    used: u64,
}

/// What a batch on the cached path starts from.
pub(super) struct Cached {
    pub(super) revision: i64,
    pub(super) head: Position,
    pub(super) recorded_at: i64,
    pub(super) streams: HashMap<String, StreamState>,
}

impl KnownLog {
    /// The batch's starting point from memory, unless it has an append condition (see
    /// the module documentation) or the writer cannot vouch for what it remembers.
    pub(super) fn cached(&mut self, batch: &[Command]) -> Option<Cached> {
        let revision = self
            .revision
            .filter(|_| self.quiet_lookups >= 1 << self.backoff)?;
        self.batches += 1;
        let mut streams = HashMap::new();
        for command in batch {
            let names: &mut dyn Iterator<Item = &str> = match command {
                Command::Append { request, .. } if request.condition.is_none() => {
                    &mut request.targets.iter().map(|t| t.stream.as_str())
                }
                Command::Append { .. } => return None,
                Command::Delete { stream, .. } => &mut std::iter::once(stream.as_str()),
            };
            for name in names {
                if let Some(known) = self.streams.get_mut(name) {
                    known.used = self.batches;
                    streams.insert(
                        name.to_owned(),
                        StreamState::existing(
                            known.version,
                            known.position,
                            known.created_at,
                            known.deleted,
                        ),
                    );
                }
            }
        }
        Some(Cached {
            revision,
            head: self.head,
            recorded_at: self.recorded_at,
            streams,
        })
    }

    /// A looked-up batch read `revision` under the head lock: if it is not where this
    /// writer's last commit left it, another transaction wrote in between and what is
    /// remembered is forgotten.
    pub(super) fn looked_up(&mut self, revision: i64) {
        if self.revision == Some(revision) {
            self.quiet_lookups = self.quiet_lookups.saturating_add(1);
        } else {
            self.quiet_lookups = 0;
            self.streams.clear();
        }
        self.revision = Some(revision);
    }

    /// The cached path found the revision moved: another instance writes too.
    pub(super) fn moved(&mut self) {
        self.quiet_lookups = 0;
        self.backoff = (self.backoff + 1).min(MAX_BACKOFF);
        self.streams.clear();
    }

    /// A batch committed on the cached path.
    pub(super) fn cached_commit(&mut self) {
        self.backoff = 0;
    }

    /// The outcome of a commit is not known, or the batch failed: start again from
    /// what the next lookup finds.
    pub(super) fn forget(&mut self) {
        self.revision = None;
        self.quiet_lookups = 0;
        self.streams.clear();
    }

    /// A batch committed and left the head at `revision`: remember the streams it
    /// looked up or wrote, as they now stand.
    pub(super) fn committed(&mut self, revision: i64, state: &BatchState) {
        self.batches += 1;
        self.revision = Some(revision);
        self.head = state.head;
        self.recorded_at = state.recorded_at;
        for (name, stream) in &state.streams {
            let Some(version) = stream.version else {
                continue;
            };
            let remembered = Remembered {
                version,
                position: stream.position,
                created_at: stream.created_at,
                deleted: stream.deleted,
                used: self.batches,
            };
            match self.streams.get_mut(name.as_str()) {
                Some(known) => *known = remembered,
                None => {
                    self.streams.insert(name.clone(), remembered);
                }
            }
        }
        if self.streams.len() > MAX_STREAMS {
            self.evict();
        }
    }

    /// Forgets the half of the streams used longest ago.
    fn evict(&mut self) {
        let mut used: Vec<u64> = self.streams.values().map(|s| s.used).collect();
        let middle = used.len() / 2;
        let (_, cutoff, _) = used.select_nth_unstable(middle);
        let cutoff = *cutoff;
        self.streams.retain(|_, s| s.used > cutoff);
    }

    #[cfg(test)]
    fn remembers(&self, stream: &str) -> bool {
        self.streams.contains_key(stream)
    }
}

#[cfg(test)]
mod tests {
    use cairn_core::{ExpectedVersion, StreamName};
    use tokio::sync::oneshot;

    use super::*;
    use crate::AppendRequest;
    use crate::conformance::event;
    use crate::postgres::batch::Lookups;

    fn append(name: &str) -> AppendRequest {
        AppendRequest::single(
            StreamName::parse(name).unwrap(),
            ExpectedVersion::Any,
            vec![event("E", "{}")],
        )
    }

    fn command(request: AppendRequest) -> Command {
        Command::Append {
            request,
            reply: oneshot::channel().0,
        }
    }

    /// Commits appends to `names` from what `known` remembers, at `revision`.
    fn commit(known: &mut KnownLog, revision: i64, names: &[&str]) {
        let cached = Cached {
            revision,
            head: known.head,
            recorded_at: known.recorded_at,
            streams: HashMap::new(),
        };
        let mut state = BatchState::new(Lookups::from_cached(cached), 1);
        for (index, name) in names.iter().enumerate() {
            state.append(index, &append(name)).unwrap();
        }
        known.committed(revision + 1, &state);
    }

    #[test]
    fn the_cached_path_waits_for_a_lookup_that_saw_no_other_writer() {
        let mut known = KnownLog::default();
        let batch = [command(append("a"))];
        assert!(known.cached(&batch).is_none(), "nothing known at start");
        known.looked_up(7);
        commit(&mut known, 7, &["a"]);
        assert!(
            known.cached(&batch).is_none(),
            "the first lookup proves nothing"
        );
        known.looked_up(8);
        let cached = known.cached(&batch).unwrap();
        assert_eq!((cached.revision, cached.head), (8, 1));
        assert_eq!(cached.streams["a"].version, Some(0));

        // Another writer: everything remembered is forgotten, and each such miss
        // doubles the quiet lookups in a row it takes to try again.
        known.moved();
        assert!(known.cached(&batch).is_none());
        known.looked_up(10);
        assert!(known.cached(&batch).is_none());
        assert!(!known.remembers("a"));
        for _ in 0..2 {
            assert!(known.cached(&batch).is_none());
            known.looked_up(10);
        }
        assert_eq!(known.cached(&batch).unwrap().revision, 10);
        known.moved();
        for _ in 0..4 {
            known.looked_up(11);
            assert!(known.cached(&batch).is_none());
        }
        known.looked_up(11);
        assert!(known.cached(&batch).is_some());
        // A cached commit ends the wait: one quiet lookup is enough again.
        known.cached_commit();
        known.moved();
        known.looked_up(12);
        known.looked_up(12);
        known.looked_up(12);
        assert!(known.cached(&batch).is_some());
        for _ in 0..10 {
            known.moved();
        }
        assert_eq!(known.backoff, MAX_BACKOFF);

        known.forget();
        assert!(known.cached(&batch).is_none());
    }

    #[test]
    fn conditions_are_never_decided_from_memory() {
        let mut known = KnownLog::default();
        known.looked_up(0);
        commit(&mut known, 0, &["a"]);
        known.looked_up(1);
        let conditional = AppendRequest {
            condition: Some(cairn_core::AppendCondition {
                query: cairn_core::EventFilter::default(),
                after: 0,
            }),
            ..append("a")
        };
        assert!(known.cached(&[command(append("b"))]).is_some());
        assert!(
            known
                .cached(&[command(append("b")), command(conditional)])
                .is_none()
        );
    }

    #[test]
    fn the_streams_used_longest_ago_are_forgotten_first() {
        let mut known = KnownLog::default();
        known.looked_up(0);
        let names: Vec<String> = (0..MAX_STREAMS).map(|i| format!("s-{i}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        commit(&mut known, 0, &refs);
        known.looked_up(1);
        // The first stream is used again, then one more stream is one too many.
        assert!(known.cached(&[command(append("s-0"))]).is_some());
        commit(&mut known, 1, &["new"]);
        assert!(known.streams.len() <= MAX_STREAMS / 2 + 2);
        assert!(known.remembers("s-0") && known.remembers("new"));
        assert!(!known.remembers("s-1"));
    }
}
