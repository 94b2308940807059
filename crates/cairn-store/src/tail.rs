//! Following the global log: catch up from any position, then receive new events as
//! they commit, with no gap and no duplicate at the switch.
//!
//! A [`LogTail`] reads pages from the store while it is behind the head. At the head,
//! it takes committed events from the store's live feed (pushed on commit, shared by
//! every reader, no polling). Each live batch is checked against the position the tail
//! expects next: a batch it has seen is skipped, and a gap (a commit left out of the
//! feed, or a reader that lagged) sends it back to reading the log.

use std::time::Duration;

use cairn_core::{EventFilter, Position, RecordedEvent};
use tokio::sync::{broadcast, watch};

use crate::{LiveBatch, SharedStore, StoreError};

/// Events read per page while catching up.
const CATCH_UP_PAGE: usize = 500;

pub struct LogTail {
    store: SharedStore,
    filter: EventFilter,
    next: Position,
    head: watch::Receiver<Position>,
    live: broadcast::Receiver<LiveBatch>,
    from_log: u64,
    from_live: u64,
}

impl LogTail {
    /// A tail that yields matching events at positions ≥ `from`.
    pub fn new(store: SharedStore, from: Position, filter: EventFilter) -> Self {
        // Listen before the first read, so a commit between the read and the wait
        // cannot slip by unseen.
        let live = store.live_events();
        let head = store.watch_head();
        Self {
            store,
            filter,
            next: from.max(1),
            head,
            live,
            from_log: 0,
            from_live: 0,
        }
    }

    /// The position this tail reads next: every matching event before it was returned.
    pub fn position(&self) -> Position {
        self.next
    }

    /// How many events came from reading the log and how many from the live feed.
    pub fn sources(&self) -> (u64, u64) {
        (self.from_log, self.from_live)
    }

    /// The next matching events, in position order, waiting for new commits when the
    /// tail is at the head. Never returns an empty batch.
    pub async fn next_batch(&mut self) -> Result<Vec<RecordedEvent>, StoreError> {
        loop {
            if let Some(events) = self.poll_once().await? {
                return Ok(events);
            }
        }
    }

    /// Like [`next_batch`](Self::next_batch), but gives up after `timeout` with an
    /// empty batch (so a caller can send keep-alives or notice a closed client).
    pub async fn next_batch_within(
        &mut self,
        timeout: Duration,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        match tokio::time::timeout(timeout, self.next_batch()).await {
            Ok(result) => result,
            Err(_) => Ok(Vec::new()),
        }
    }

    async fn poll_once(&mut self) -> Result<Option<Vec<RecordedEvent>>, StoreError> {
        let head = *self.head.borrow_and_update();
        if self.next <= head {
            let slice = self
                .store
                .read_all(self.next, &self.filter, CATCH_UP_PAGE)
                .await?;
            self.next = self.next.max(slice.next_from_position);
            self.from_log += slice.events.len() as u64;
            return Ok((!slice.events.is_empty()).then_some(slice.events));
        }
        tokio::select! {
            // The live batch of a commit is sent before its head: take it first.
            biased;
            batch = self.live.recv() => match batch {
                Ok(batch) => Ok(self.take_live(&batch)),
                // Fell behind the feed: read what was missed from the log.
                Err(broadcast::error::RecvError::Lagged(_)) => Ok(None),
                Err(broadcast::error::RecvError::Closed) => Err(closed()),
            },
            changed = self.head.changed() => match changed {
                Ok(()) => Ok(None),
                Err(_) => Err(closed()),
            },
        }
    }

    fn take_live(&mut self, batch: &[RecordedEvent]) -> Option<Vec<RecordedEvent>> {
        let (first, last) = match (batch.first(), batch.last()) {
            (Some(first), Some(last)) => (first.position, last.position),
            _ => return None,
        };
        if last < self.next || first > self.next {
            // Seen already, or a gap before it: the log has the truth.
            return None;
        }
        let events: Vec<RecordedEvent> = batch
            .iter()
            .filter(|event| event.position >= self.next && self.filter.matches(event))
            .cloned()
            .collect();
        self.next = last + 1;
        self.from_live += events.len() as u64;
        (!events.is_empty()).then_some(events)
    }
}

fn closed() -> StoreError {
    StoreError::Unavailable("the store has closed".into())
}
