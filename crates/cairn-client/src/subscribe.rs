//! Subscriptions: `GET /v1/subscribe` as an async stream of events that survives dropped
//! connections.
//!
//! The stream remembers the last position it yielded. When the connection ends — the
//! network failed, the server restarted, or the server dropped a consumer that read too
//! slowly (`: closed: slow_consumer: …`) — it connects again with `Last-Event-ID` set to
//! that position, after a bounded, growing delay. Events at or before the last position
//! are never yielded twice, and nothing after it is skipped, because the server resumes
//! exactly after `Last-Event-ID`.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use cairn_api::{Event, EventFilterSpec};
use futures::{Stream, StreamExt};
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, CACHE_CONTROL};

use crate::client::{api_error, is_retryable};
use crate::sse::{SseItem, SseParser};
use crate::{Client, ClientError, ReadAllOptions};

/// A connection that lasted at least this long counts as having worked, even without
/// events: the next reconnection starts again from the shortest delay.
const HEALTHY_CONNECTION: Duration = Duration::from_secs(2);

/// Where a subscription starts and what it receives.
#[derive(Debug, Clone)]
pub struct SubscribeOptions {
    /// The first position to deliver (inclusive). When absent, only events appended
    /// after the subscription started (the log's head is read when it first connects).
    pub from_position: Option<u64>,
    /// Which events: empty parts match everything; `types` is any-of, `tags` all-of.
    pub filter: EventFilterSpec,
    /// How dropped connections are re-established.
    pub reconnect: ReconnectPolicy,
    /// A connection on which nothing at all arrives (not even the server's keepalive
    /// comments, every 15 s by default) for about this long (between one and two
    /// times it) is considered dead and replaced. Default 45 s.
    pub idle_timeout: Duration,
}

impl Default for SubscribeOptions {
    fn default() -> Self {
        Self {
            from_position: None,
            filter: EventFilterSpec::default(),
            reconnect: ReconnectPolicy::default(),
            idle_timeout: Duration::from_secs(45),
        }
    }
}

impl SubscribeOptions {
    /// Every event from `position` on (1: the whole log).
    pub fn from(position: u64) -> Self {
        Self {
            from_position: Some(position),
            ..Self::default()
        }
    }

    /// Only events appended from now on.
    pub fn new_events() -> Self {
        Self::default()
    }

    pub fn with_filter(mut self, filter: EventFilterSpec) -> Self {
        self.filter = filter;
        self
    }
}

/// How a subscription reconnects: after `initial_backoff`, doubling up to `max_backoff`
/// while attempts keep failing; after `max_attempts` consecutive failures the stream
/// yields the last error and ends (`None`: it never gives up).
#[derive(Debug, Clone, Copy)]
pub struct ReconnectPolicy {
    pub max_attempts: Option<u32>,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for ReconnectPolicy {
    fn default() -> Self {
        Self {
            max_attempts: Some(10),
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
        }
    }
}

impl ReconnectPolicy {
    /// The wait before reconnection attempt `attempt` (1, 2, …). A `retry:` the server
    /// sent may lengthen the first wait, never shorten it.
    fn delay(&self, attempt: u32, server_retry: Option<Duration>) -> Duration {
        let base = server_retry.map_or(self.initial_backoff, |retry| {
            retry.max(self.initial_backoff)
        });
        let exponent = attempt.saturating_sub(1).min(16);
        base.saturating_mul(1 << exponent)
            .min(self.max_backoff.max(base))
    }
}

/// An event as it came off the wire: its position and its JSON (the shape of
/// [`Event`]), not yet decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawEvent {
    pub position: u64,
    pub json: String,
}

impl RawEvent {
    pub fn decode(&self) -> Result<Event, ClientError> {
        serde_json::from_str(&self.json).map_err(|error| {
            ClientError::Decode(format!(
                "subscription event at position {}: {error}",
                self.position
            ))
        })
    }
}

#[derive(Debug, Default)]
struct Shared {
    /// The last position yielded, 0 before the first.
    last_position: AtomicU64,
    /// Connections made after the first.
    reconnects: AtomicU64,
}

/// A subscription's events, undecoded: see [`Client::subscribe_raw`].
pub struct RawSubscription {
    inner: Pin<Box<dyn Stream<Item = Result<RawEvent, ClientError>> + Send>>,
    shared: Arc<Shared>,
}

impl RawSubscription {
    /// The position of the last event yielded (queued ones included), if any.
    pub fn last_position(&self) -> Option<u64> {
        match self.shared.last_position.load(Ordering::Relaxed) {
            0 => None,
            position => Some(position),
        }
    }

    /// How many times the subscription connected again after a dropped connection.
    pub fn reconnects(&self) -> u64 {
        self.shared.reconnects.load(Ordering::Relaxed)
    }
}

impl Stream for RawSubscription {
    type Item = Result<RawEvent, ClientError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.poll_next_unpin(cx)
    }
}

/// A subscription's events: see [`Client::subscribe`].
pub struct Subscription {
    raw: RawSubscription,
}

impl Subscription {
    /// The position of the last event yielded, if any.
    pub fn last_position(&self) -> Option<u64> {
        self.raw.last_position()
    }

    /// How many times the subscription connected again after a dropped connection.
    pub fn reconnects(&self) -> u64 {
        self.raw.reconnects()
    }
}

impl Stream for Subscription {
    type Item = Result<Event, ClientError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.raw
            .poll_next_unpin(cx)
            .map(|item| item.map(|raw| raw.and_then(|raw| raw.decode())))
    }
}

impl Client {
    /// Follows the log (`GET /v1/subscribe`): first the stored events from
    /// `options.from_position`, then new ones as they are appended.
    ///
    /// The stream reconnects by itself after a dropped connection or a slow-consumer
    /// close, resuming after the last event it yielded, so it never yields an event
    /// twice and never skips one. It ends only after an error it cannot recover from
    /// (the server refused the subscription, or reconnecting failed
    /// `reconnect.max_attempts` times in a row): that error is its last item. An event
    /// that cannot be decoded comes as an `Err` in its place, and the stream goes on.
    ///
    /// ```no_run
    /// # async fn example(client: cairn_client::Client) -> Result<(), cairn_client::ClientError> {
    /// use cairn_client::{EventFilterSpec, SubscribeOptions};
    /// use futures::StreamExt;
    ///
    /// let filter = EventFilterSpec { category: Some("order".into()), ..Default::default() };
    /// let mut events = client.subscribe(SubscribeOptions::from(1).with_filter(filter));
    /// while let Some(event) = events.next().await {
    ///     let event = event?;
    ///     println!("{} {} {}", event.position, event.stream, event.event_type);
    /// }
    /// # Ok(()) }
    /// ```
    pub fn subscribe(&self, options: SubscribeOptions) -> Subscription {
        Subscription {
            raw: self.subscribe_raw(options),
        }
    }

    /// [`Client::subscribe`] without decoding the events: each comes as its position
    /// and its JSON, for consumers that need only part of it.
    pub fn subscribe_raw(&self, options: SubscribeOptions) -> RawSubscription {
        let shared = Arc::new(Shared::default());
        let state = State {
            client: self.clone(),
            start: options.from_position,
            options,
            shared: shared.clone(),
            last_position: None,
            body: None,
            parser: SseParser::new(),
            pending: VecDeque::new(),
            failures: 0,
            connected_once: false,
            connected_at: Instant::now(),
            events_on_connection: 0,
            server_retry: None,
            idle_timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
            active: false,
            finished: false,
        };
        // Boxed, so that each step moves a pointer, not the whole state.
        let inner = futures::stream::unfold(Box::new(state), |mut state| async move {
            let item = state.next_item().await?;
            Some((item, state))
        });
        RawSubscription {
            inner: Box::pin(inner),
            shared,
        }
    }
}

type Body = Pin<Box<dyn Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>;

struct State {
    client: Client,
    options: SubscribeOptions,
    shared: Arc<Shared>,
    /// The position to start from when nothing has been yielded yet; resolved from the
    /// head on the first connection when the caller asked for new events only.
    start: Option<u64>,
    last_position: Option<u64>,
    body: Option<Body>,
    parser: SseParser,
    pending: VecDeque<Result<RawEvent, ClientError>>,
    /// Consecutive connection attempts that failed (or connections that died young
    /// without delivering anything).
    failures: u32,
    connected_once: bool,
    connected_at: Instant,
    events_on_connection: u64,
    server_retry: Option<Duration>,
    /// Fires every `idle_timeout` while connected; the connection is dead when nothing
    /// arrived since it last fired. (One timer per period, not one per chunk.)
    idle_timer: Pin<Box<tokio::time::Sleep>>,
    /// Something arrived since the idle timer last fired.
    active: bool,
    finished: bool,
}

impl State {
    async fn next_item(&mut self) -> Option<Result<RawEvent, ClientError>> {
        loop {
            if let Some(item) = self.pending.pop_front() {
                return Some(item);
            }
            if self.finished {
                return None;
            }
            let Some(body) = self.body.as_mut() else {
                if let Err(error) = self.connect().await {
                    self.finished = true;
                    return Some(Err(error));
                }
                continue;
            };
            tokio::select! {
                biased;
                chunk = body.next() => match chunk {
                    Some(Ok(chunk)) => {
                        self.active = true;
                        self.take_chunk(&chunk);
                    }
                    Some(Err(_)) | None => self.disconnected(),
                },
                () = self.idle_timer.as_mut() => {
                    if std::mem::take(&mut self.active) {
                        self.restart_idle_timer();
                    } else {
                        self.disconnected();
                    }
                }
            }
        }
    }

    fn take_chunk(&mut self, chunk: &[u8]) {
        self.parser.feed(chunk);
        while let Some(item) = self.parser.next_item() {
            match item {
                SseItem::Event(event) => {
                    let position = match event_position(event.id.as_deref(), &event.data) {
                        Ok(position) => position,
                        Err(error) => {
                            self.pending.push_back(Err(error));
                            continue;
                        }
                    };
                    if self.last_position.is_some_and(|last| position <= last) {
                        // Already yielded (a resumption that overlapped): never twice.
                        continue;
                    }
                    self.last_position = Some(position);
                    self.shared.last_position.store(position, Ordering::Relaxed);
                    self.events_on_connection += 1;
                    self.pending.push_back(Ok(RawEvent {
                        position,
                        json: event.data,
                    }));
                }
                // Keepalives, and the reason the server gives before closing (e.g.
                // `closed: slow_consumer: …`): the end of the body follows, and the
                // subscription connects again after the last position.
                SseItem::Comment(_) => {}
                SseItem::Retry(millis) => {
                    self.server_retry = Some(Duration::from_millis(millis));
                }
            }
        }
    }

    fn restart_idle_timer(&mut self) {
        let deadline = tokio::time::Instant::now() + self.options.idle_timeout;
        self.idle_timer.as_mut().reset(deadline);
    }

    fn disconnected(&mut self) {
        self.body = None;
        self.parser.reset();
        let healthy =
            self.events_on_connection > 0 || self.connected_at.elapsed() >= HEALTHY_CONNECTION;
        if healthy {
            self.failures = 0;
        }
        self.failures += 1;
        self.events_on_connection = 0;
    }

    /// Connects (again), waiting before each attempt after a failure; gives up after
    /// the policy's attempts, or at once on an error that a retry cannot fix.
    async fn connect(&mut self) -> Result<(), ClientError> {
        let policy = self.options.reconnect;
        loop {
            if self.failures > 0 {
                tokio::time::sleep(policy.delay(self.failures, self.server_retry)).await;
            }
            match self.try_connect().await {
                Ok(body) => {
                    if self.connected_once {
                        self.shared.reconnects.fetch_add(1, Ordering::Relaxed);
                    }
                    self.connected_once = true;
                    self.connected_at = Instant::now();
                    self.events_on_connection = 0;
                    self.body = Some(body);
                    self.active = false;
                    self.restart_idle_timer();
                    return Ok(());
                }
                Err(error) if recoverable(&error) => {
                    self.failures += 1;
                    if policy.max_attempts.is_some_and(|max| self.failures > max) {
                        return Err(error);
                    }
                }
                Err(error) => return Err(error),
            }
        }
    }

    async fn try_connect(&mut self) -> Result<Body, ClientError> {
        let from_position = match (self.last_position, self.start) {
            (Some(last), _) => last + 1,
            (None, Some(start)) => start,
            (None, None) => {
                // "New events only" must survive a reconnection too: pin the start to
                // what follows the head now.
                let head = self
                    .client
                    .read_all(&ReadAllOptions {
                        from_position: Some(1),
                        limit: Some(1),
                        ..ReadAllOptions::default()
                    })
                    .await?
                    .head_position;
                self.start = Some(head + 1);
                head + 1
            }
        };
        let mut url = self.client.url(&["v1", "subscribe"]);
        {
            let filter = &self.options.filter;
            let mut query = url.query_pairs_mut();
            query.append_pair("from_position", &from_position.to_string());
            if let Some(category) = &filter.category {
                query.append_pair("category", category);
            }
            if !filter.types.is_empty() {
                query.append_pair("types", &filter.types.join(","));
            }
            if !filter.tags.is_empty() {
                query.append_pair("tags", &filter.tags.join(","));
            }
            if let Some(stream) = &filter.stream {
                query.append_pair("stream", stream);
            }
        }
        let mut request = self
            .client
            .streaming_http()
            .get(url)
            .header(ACCEPT, "text/event-stream")
            .header(CACHE_CONTROL, "no-cache");
        if let Some(last) = self.last_position {
            request = request.header("last-event-id", last.to_string());
        }
        let response = request.send().await.map_err(ClientError::Transport)?;
        let status = response.status();
        if !status.is_success() {
            let body = response.bytes().await.unwrap_or_default();
            return Err(api_error(status, &body));
        }
        Ok(Box::pin(response.bytes_stream()))
    }
}

/// Whether connecting again may help.
fn recoverable(error: &ClientError) -> bool {
    match error {
        ClientError::Transport(error) => is_retryable(error),
        ClientError::Api { status, .. } => {
            let status = StatusCode::from_u16(*status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS
        }
        ClientError::Decode(_) | ClientError::Invalid(_) => false,
    }
}

/// The event's position: its SSE `id`, or else its JSON's `position`.
fn event_position(id: Option<&str>, data: &str) -> Result<u64, ClientError> {
    if let Some(position) = id.and_then(|id| id.trim().parse::<u64>().ok()) {
        return Ok(position);
    }
    #[derive(serde::Deserialize)]
    struct PositionOnly {
        position: u64,
    }
    serde_json::from_str::<PositionOnly>(data)
        .map(|event| event.position)
        .map_err(|error| {
            let start: String = data.chars().take(200).collect();
            ClientError::Decode(format!(
                "a subscription event without a position ({error}): {start:?}"
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_delays_grow_and_are_capped() {
        let policy = ReconnectPolicy::default();
        assert_eq!(policy.delay(1, None), Duration::from_millis(100));
        assert_eq!(policy.delay(2, None), Duration::from_millis(200));
        assert_eq!(policy.delay(30, None), Duration::from_secs(5));
        assert_eq!(
            policy.delay(1, Some(Duration::from_millis(700))),
            Duration::from_millis(700)
        );
        assert_eq!(
            policy.delay(1, Some(Duration::ZERO)),
            Duration::from_millis(100)
        );
    }

    #[test]
    fn positions_come_from_the_id_or_the_event() {
        assert_eq!(event_position(Some("12"), "{}").unwrap(), 12);
        assert_eq!(
            event_position(None, r#"{"id":"x","position":9}"#).unwrap(),
            9
        );
        assert!(matches!(
            event_position(Some("x"), "{}"),
            Err(ClientError::Decode(_))
        ));
    }
}
