//! A consumer-group worker: claims events, runs a handler on each with bounded
//! concurrency, acknowledges the ones handled and gives back the ones that failed.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use cairn_api::{ClaimRequest, ClaimResponse, Delivery, ErrorCode, SettleResponse};
use tokio::task::JoinSet;

use crate::{Client, ClientError};

/// The longest pause after a failing claim or settlement.
const MAX_ERROR_BACKOFF: Duration = Duration::from_secs(5);
/// Consecutive failed settlement rounds after which the answers in hand are dropped
/// (their events come back after their ack timeout: at least once still holds).
const MAX_SETTLE_FAILURES: u32 = 5;

/// Why a handler did not handle an event: the event is given back (nacked) and
/// delivered again — at once, or after `retry_after` — until the group's
/// `max_deliveries`, after which it is parked.
///
/// Any error that displays converts into a `Nack`, so a handler can use `?`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nack {
    retry_after: Option<Duration>,
    reason: String,
}

impl Nack {
    /// Deliver the event again as soon as possible (or after the worker's default delay).
    pub fn new(reason: impl Into<String>) -> Self {
        Self {
            retry_after: None,
            reason: reason.into(),
        }
    }

    /// Deliver the event again no sooner than `delay` from now.
    pub fn after(delay: Duration, reason: impl Into<String>) -> Self {
        Self {
            retry_after: Some(delay),
            reason: reason.into(),
        }
    }

    pub fn reason(&self) -> &str {
        &self.reason
    }

    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }
}

impl<E: fmt::Display> From<E> for Nack {
    fn from(error: E) -> Self {
        Nack::new(error.to_string())
    }
}

/// What a worker did, returned when it stops.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerStats {
    /// Claim requests made (including empty answers).
    pub claims: u64,
    /// Events received.
    pub delivered: u64,
    /// Of which deliveries after the first (`attempt > 1`).
    pub redelivered: u64,
    /// Events handled and acknowledged.
    pub acked: u64,
    /// Events whose handler failed (or panicked) and that were given back.
    pub nacked: u64,
    /// Handlers that panicked (counted in `nacked` too).
    pub panicked: u64,
    /// Events the server parked because a nack came on their last delivery.
    pub parked: u64,
    /// Acks and nacks the server did not expect (already settled or redelivered
    /// elsewhere after their ack timeout).
    pub ignored: u64,
    /// Claim or settlement requests that failed (and were retried or given up).
    pub request_errors: u64,
    /// Answers dropped after settlement kept failing; those events come back after
    /// their ack timeout.
    pub settlements_dropped: u64,
}

/// Runs a handler over a consumer group's events.
///
/// ```no_run
/// # async fn example(client: cairn_client::Client) -> Result<(), cairn_client::ClientError> {
/// use std::time::Duration;
/// use cairn_client::{GroupWorker, Nack};
///
/// let stop = tokio::signal::ctrl_c();
/// let stats = GroupWorker::new(client, "billing", "billing-worker-1")
///     .concurrency(16)
///     .batch(64)
///     .wait(Duration::from_secs(5))
///     .run(
///         |delivery| async move {
///             if delivery.event.event_type == "OrderPlaced" {
///                 // … charge the customer; `?` turns any error into a nack.
///                 return Err(Nack::after(Duration::from_secs(10), "payment provider down"));
///             }
///             Ok(())
///         },
///         async move { let _ = stop.await; },
///     )
///     .await?;
/// println!("acked {} events", stats.acked);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct GroupWorker {
    client: Client,
    group: String,
    consumer: String,
    concurrency: usize,
    batch: u32,
    wait: Duration,
    retry_after: Option<Duration>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// What one settlement round sent and how it went.
struct Settlement {
    acks: Vec<u64>,
    nacks: BTreeMap<Option<Duration>, Vec<u64>>,
    outcome: Result<Vec<SettleResponse>, ClientError>,
}

impl GroupWorker {
    /// A worker for `group`, claiming as `consumer` (a name for logs and operators).
    /// Defaults: 8 handlers at a time, claims of up to 32 events, long polls of 5 s.
    pub fn new(client: Client, group: impl Into<String>, consumer: impl Into<String>) -> Self {
        Self {
            client,
            group: group.into(),
            consumer: consumer.into(),
            concurrency: 8,
            batch: 32,
            wait: Duration::from_secs(5),
            retry_after: None,
        }
    }

    /// How many handlers may run at once (at least 1).
    pub fn concurrency(mut self, handlers: usize) -> Self {
        self.concurrency = handlers.max(1);
        self
    }

    /// The most events one claim asks for (1–1000); a claim never asks for more than
    /// there are free handlers.
    pub fn batch(mut self, max: u32) -> Self {
        self.batch = max.clamp(1, 1000);
        self
    }

    /// How long a claim waits for events when none are ready (at most 60 s). A stop
    /// waits for the claim in progress, so this bounds how long stopping an idle
    /// worker takes.
    pub fn wait(mut self, wait: Duration) -> Self {
        self.wait = wait.min(Duration::from_secs(60));
        self
    }

    /// The retry delay of a nack whose [`Nack`] gives none (default: none, deliver
    /// again at once).
    pub fn retry_after(mut self, delay: Duration) -> Self {
        self.retry_after = Some(delay);
        self
    }

    /// Claims and handles events until `shutdown` resolves, then stops claiming,
    /// lets the handlers in progress finish (including those of a claim that was
    /// under way), settles them, and returns what it did.
    ///
    /// A handler's `Ok` acknowledges its event; an `Err` (or a panic) gives it back
    /// for another delivery. Transient failures of claims and settlements are retried
    /// with a growing pause; the worker returns an error only when the group cannot
    /// be used (deleted, or the request refused), after settling what it holds.
    pub async fn run<H, F>(
        self,
        handler: H,
        shutdown: impl Future<Output = ()>,
    ) -> Result<WorkerStats, ClientError>
    where
        H: Fn(Delivery) -> F + Send + Sync + 'static,
        F: Future<Output = Result<(), Nack>> + Send + 'static,
    {
        let handler = Arc::new(handler);
        let mut shutdown = std::pin::pin!(shutdown);
        let mut stats = WorkerStats::default();
        let mut stopping = false;
        let mut fatal: Option<ClientError> = None;

        let mut handlers: JoinSet<Result<(), Nack>> = JoinSet::new();
        let mut running: HashMap<tokio::task::Id, u64> = HashMap::new();
        let mut claim: Option<BoxFuture<Result<ClaimResponse, ClientError>>> = None;
        let mut claim_pause: Option<Pin<Box<tokio::time::Sleep>>> = None;
        let mut claim_failures: u32 = 0;

        let mut acks: Vec<u64> = Vec::new();
        let mut nacks: BTreeMap<Option<Duration>, Vec<u64>> = BTreeMap::new();
        let mut settle: Option<BoxFuture<Settlement>> = None;
        let mut settle_pause: Option<Pin<Box<tokio::time::Sleep>>> = None;
        let mut settle_failures: u32 = 0;

        loop {
            let free = self.concurrency.saturating_sub(handlers.len());
            if !stopping && claim.is_none() && claim_pause.is_none() && free > 0 {
                let request = ClaimRequest {
                    consumer: self.consumer.clone(),
                    max: Some(u32::try_from(free).unwrap_or(u32::MAX).min(self.batch)),
                    wait_ms: Some(u64::try_from(self.wait.as_millis()).unwrap_or(60_000)),
                };
                let client = self.client.clone();
                let group = self.group.clone();
                stats.claims += 1;
                claim = Some(Box::pin(
                    async move { client.claim(&group, &request).await },
                ));
            }
            let unsettled = !acks.is_empty() || !nacks.is_empty();
            if settle.is_none() && settle_pause.is_none() && unsettled {
                let round_acks = std::mem::take(&mut acks);
                let round_nacks = std::mem::take(&mut nacks);
                let client = self.client.clone();
                let group = self.group.clone();
                settle = Some(Box::pin(async move {
                    let outcome = settle_round(&client, &group, &round_acks, &round_nacks).await;
                    Settlement {
                        acks: round_acks,
                        nacks: round_nacks,
                        outcome,
                    }
                }));
            }
            if stopping
                && claim.is_none()
                && handlers.is_empty()
                && settle.is_none()
                && acks.is_empty()
                && nacks.is_empty()
            {
                break;
            }

            tokio::select! {
                biased;
                () = &mut shutdown, if !stopping => {
                    stopping = true;
                }
                Some(joined) = handlers.join_next_with_id(), if !handlers.is_empty() => {
                    let (id, outcome) = match joined {
                        Ok((id, outcome)) => (id, outcome),
                        Err(error) => {
                            stats.panicked += 1;
                            (error.id(), Err(Nack::new(format!("the handler failed: {error}"))))
                        }
                    };
                    let Some(position) = running.remove(&id) else { continue };
                    match outcome {
                        Ok(()) => acks.push(position),
                        Err(nack) => {
                            let delay = nack.retry_after.or(self.retry_after);
                            nacks.entry(delay).or_default().push(position);
                        }
                    }
                }
                outcome = maybe(claim.as_mut()) => {
                    claim = None;
                    match outcome {
                        Ok(response) => {
                            claim_failures = 0;
                            for delivery in response.deliveries {
                                stats.delivered += 1;
                                if delivery.attempt > 1 {
                                    stats.redelivered += 1;
                                }
                                let position = delivery.position;
                                let handler = handler.clone();
                                let task = handlers.spawn(async move { handler(delivery).await });
                                running.insert(task.id(), position);
                            }
                        }
                        Err(error) if is_fatal(&error) => {
                            stats.request_errors += 1;
                            fatal = Some(error);
                            stopping = true;
                        }
                        Err(_) => {
                            stats.request_errors += 1;
                            claim_failures += 1;
                            claim_pause = Some(Box::pin(tokio::time::sleep(error_backoff(claim_failures))));
                        }
                    }
                }
                () = maybe(claim_pause.as_mut()) => {
                    claim_pause = None;
                }
                settlement = maybe(settle.as_mut()) => {
                    settle = None;
                    match settlement.outcome {
                        Ok(responses) => {
                            settle_failures = 0;
                            stats.acked += settlement.acks.len() as u64;
                            stats.nacked += settlement.nacks.values().map(|p| p.len() as u64).sum::<u64>();
                            for response in responses {
                                stats.parked += response.parked;
                                stats.ignored += response.ignored;
                            }
                        }
                        Err(error) => {
                            stats.request_errors += 1;
                            settle_failures += 1;
                            let count = settlement.acks.len()
                                + settlement.nacks.values().map(Vec::len).sum::<usize>();
                            if is_fatal(&error) || settle_failures >= MAX_SETTLE_FAILURES {
                                stats.settlements_dropped += count as u64;
                                if is_fatal(&error) && fatal.is_none() {
                                    fatal = Some(error);
                                    stopping = true;
                                }
                                settle_failures = 0;
                            } else {
                                // Try again with what came in meanwhile.
                                acks.extend(settlement.acks);
                                for (delay, positions) in settlement.nacks {
                                    nacks.entry(delay).or_default().extend(positions);
                                }
                                settle_pause = Some(Box::pin(tokio::time::sleep(error_backoff(settle_failures))));
                            }
                        }
                    }
                }
                () = maybe(settle_pause.as_mut()) => {
                    settle_pause = None;
                }
            }
        }
        match fatal {
            Some(error) => Err(error),
            None => Ok(stats),
        }
    }
}

/// Acks then nacks (one request per retry delay).
async fn settle_round(
    client: &Client,
    group: &str,
    acks: &[u64],
    nacks: &BTreeMap<Option<Duration>, Vec<u64>>,
) -> Result<Vec<SettleResponse>, ClientError> {
    let mut responses = Vec::with_capacity(1 + nacks.len());
    if !acks.is_empty() {
        responses.push(client.ack(group, acks).await?);
    }
    for (delay, positions) in nacks {
        responses.push(client.nack(group, positions, *delay).await?);
    }
    Ok(responses)
}

/// Awaits the future when there is one; never resolves otherwise.
async fn maybe<F: Future + Unpin>(future: Option<&mut F>) -> F::Output {
    match future {
        Some(future) => future.await,
        None => std::future::pending().await,
    }
}

/// An error that retrying will not cure: the group is gone, or the request is refused.
fn is_fatal(error: &ClientError) -> bool {
    match error {
        ClientError::Api { status, body } => {
            (*status != 429 && !(500..600).contains(status))
                || body.error.code == ErrorCode::NotFound
        }
        ClientError::Invalid(_) | ClientError::Decode(_) => true,
        ClientError::Transport(_) => false,
    }
}

fn error_backoff(failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(10);
    Duration::from_millis(100)
        .saturating_mul(1 << exponent)
        .min(MAX_ERROR_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_displayable_error_is_a_nack_without_delay() {
        fn handler() -> Result<(), Nack> {
            let _: u32 = "x".parse()?;
            Ok(())
        }
        let nack = handler().unwrap_err();
        assert_eq!(nack.retry_after(), None);
        assert!(nack.reason().contains("invalid digit"), "{nack:?}");
        let later = Nack::after(Duration::from_secs(1), "later");
        assert_eq!(later.retry_after(), Some(Duration::from_secs(1)));
    }

    #[test]
    fn error_backoff_grows_to_a_cap() {
        assert_eq!(error_backoff(1), Duration::from_millis(100));
        assert_eq!(error_backoff(3), Duration::from_millis(400));
        assert_eq!(error_backoff(50), MAX_ERROR_BACKOFF);
    }
}
