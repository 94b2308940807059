//! The live feed and the head watch of one instance, fed by its own commits and, for
//! the commits of other instances, by LISTEN/NOTIFY.
//!
//! [`Publisher`] owns the last position this instance has published. Whatever tells
//! it that the log grew (its own writer after a commit, or a notification), it
//! publishes the new events to the broadcast feed in position order, as contiguous
//! batches, and only then moves the head watch: a tail woken by the head finds the
//! batch in the feed already. Events it did not see being written (another
//! instance's) are read once from the primary. A stretch too large for the feed, or
//! one nobody listens for, only moves the head; tails read it from the log.
//!
//! The [`listen`] task keeps one connection that LISTENs on [`CHANNEL`]. After a
//! connection loss it reconnects (with a growing pause) and catches up from the head
//! stored in the database, so a notification missed while disconnected leaves no gap.

use std::sync::Arc;
use std::time::Duration;

use cairn_core::{Position, RecordedEvent};
use deadpool_postgres::Pool;
use futures::StreamExt;
use tokio::sync::{Mutex, broadcast, watch};
use tokio_postgres::{AsyncMessage, NoTls};

use super::read;
use super::schema::{pg_error, pool_error};
use crate::metrics as m;
use crate::{LiveBatch, StoreError};

/// The NOTIFY channel; the payload is the last position of the committed batch.
pub(crate) const CHANNEL: &str = "cairn_events";

/// The most events published to live readers at once; a longer stretch only moves
/// the head.
pub(crate) const LIVE_BATCH_MAX: usize = 256;

/// The longest a read for the live feed may take: the writer waits for it before it
/// answers, so a primary that stopped answering must not hold it up for long.
const FEED_READ_TIMEOUT: Duration = Duration::from_secs(2);

pub(crate) struct Publisher {
    published: Mutex<Position>,
    live_tx: broadcast::Sender<LiveBatch>,
    head_tx: watch::Sender<Position>,
    primary: Pool,
}

impl Publisher {
    pub(crate) fn new(
        head: Position,
        live_tx: broadcast::Sender<LiveBatch>,
        head_tx: watch::Sender<Position>,
        primary: Pool,
    ) -> Self {
        Self {
            published: Mutex::new(head),
            live_tx,
            head_tx,
            primary,
        }
    }

    /// This instance committed `first..=last`; `events` are those events when the
    /// writer kept them (it does not for very large batches). Returns once the head
    /// watch is at `last` or beyond.
    pub(crate) async fn committed_here(
        &self,
        first: Position,
        last: Position,
        events: Option<Vec<RecordedEvent>>,
    ) {
        let mut published = self.published.lock().await;
        if last <= *published {
            return; // a notification of this very commit was faster
        }
        let listening = self.live_tx.receiver_count() > 0;
        if listening && *published + 1 < first {
            // Another instance committed in between and its notification has not
            // been handled yet: publish its events first, in order.
            self.fill_gap(&mut published, first - 1).await;
        }
        match events {
            Some(events) if listening && *published + 1 == first && !events.is_empty() => {
                let _ = self.live_tx.send(Arc::from(events));
            }
            _ => {}
        }
        self.advance(&mut published, last);
    }

    /// Everything up to `head` is committed (a notification, or a catch-up read).
    pub(crate) async fn committed_elsewhere(&self, head: Position) {
        let mut published = self.published.lock().await;
        if head <= *published {
            return;
        }
        if self.live_tx.receiver_count() > 0 {
            self.fill_gap(&mut published, head).await;
        }
        self.advance(&mut published, head);
    }

    /// Reads `published + 1 ..= to` from the primary and publishes it, when it is small
    /// enough for the feed. On a failed read the feed skips the stretch (tails read it
    /// from the log); the caller still moves the head, since it is committed.
    async fn fill_gap(&self, published: &mut Position, to: Position) {
        let from = *published + 1;
        if to < from || (to - from) as usize >= LIVE_BATCH_MAX {
            return;
        }
        let read = async {
            let client = self.primary.get().await.map_err(pool_error)?;
            read::read_range(&client, from, to).await
        };
        let events = tokio::time::timeout(FEED_READ_TIMEOUT, read)
            .await
            .unwrap_or_else(|_| Err(StoreError::Unavailable("the read timed out".into())));
        match events {
            Ok(events) if is_contiguous(&events, from, to) => {
                let _ = self.live_tx.send(Arc::from(events));
                *published = to;
            }
            Ok(events) => {
                tracing::warn!(
                    from,
                    to,
                    read = events.len(),
                    "live feed: stretch incomplete"
                );
            }
            Err(error) => {
                tracing::warn!(%error, from, to, "live feed: could not read new events");
            }
        }
    }

    fn advance(&self, published: &mut Position, head: Position) {
        *published = head;
        self.head_tx.send_if_modified(|current| {
            if head > *current {
                *current = head;
                true
            } else {
                false
            }
        });
        metrics::gauge!(m::HEAD_POSITION).set(head as f64);
    }
}

fn is_contiguous(events: &[RecordedEvent], from: Position, to: Position) -> bool {
    events.len() as u64 == to - from + 1
        && events
            .iter()
            .enumerate()
            .all(|(offset, event)| event.position == from + offset as u64)
}

/// Keeps a LISTEN connection to the primary for as long as the store lives, feeding
/// the publisher; reconnects after any failure and catches up from the stored head.
pub(crate) async fn listen(
    config: tokio_postgres::Config,
    primary: Pool,
    publisher: Arc<Publisher>,
) {
    let mut pause = Duration::from_millis(100);
    loop {
        let started = tokio::time::Instant::now();
        let error = listen_once(&config, &primary, &publisher).await;
        tracing::warn!(%error, "the LISTEN connection failed; reconnecting");
        if started.elapsed() > Duration::from_secs(10) {
            pause = Duration::from_millis(100); // it had been working: retry soon
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(2));
    }
}

/// One LISTEN connection, for as long as it works; returns why it stopped.
async fn listen_once(
    config: &tokio_postgres::Config,
    primary: &Pool,
    publisher: &Publisher,
) -> StoreError {
    let (client, mut connection) = match config.connect(NoTls).await {
        Ok(connected) => connected,
        Err(error) => return pg_error(error),
    };
    // Notifications coalesce: only the highest position matters.
    let (notified_tx, mut notified) = watch::channel(0u64);
    let driver = tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(notification)) => {
                    if let Ok(position) = notification.payload().parse::<u64>() {
                        notified_tx.send_if_modified(|highest| {
                            let newer = position > *highest;
                            *highest = (*highest).max(position);
                            newer
                        });
                    }
                }
                Ok(_) => {}
                Err(error) => return Err(pg_error(error)),
            }
        }
        Ok(())
    });
    let outcome: Result<(), StoreError> = async {
        client
            .batch_execute(&format!("LISTEN {CHANNEL}"))
            .await
            .map_err(pg_error)?;
        // Listening now: whatever committed before is in the table. Catch up once.
        let read = async {
            let client = primary.get().await.map_err(pool_error)?;
            read::head_position(&client).await
        };
        let head = tokio::time::timeout(FEED_READ_TIMEOUT, read)
            .await
            .unwrap_or_else(|_| Err(StoreError::Unavailable("the read timed out".into())))?;
        publisher.committed_elsewhere(head).await;
        tracing::debug!(head, "listening for commits of other instances");
        loop {
            if notified.changed().await.is_err() {
                // The driver ended: the connection is gone.
                return Err(StoreError::Unavailable(
                    "the LISTEN connection closed".into(),
                ));
            }
            let head = *notified.borrow_and_update();
            publisher.committed_elsewhere(head).await;
        }
    }
    .await;
    drop(client);
    driver.abort();
    match outcome {
        Err(error) => error,
        Ok(()) => StoreError::Unavailable("the LISTEN connection ended".into()),
    }
}
