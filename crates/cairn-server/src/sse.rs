//! Server-Sent Events for `GET /v1/subscribe`.
//!
//! Each subscriber gets a producer task that follows the log with a [`LogTail`]
//! (catch-up from the log, then the store's live feed: no polling, no gap, no
//! duplicate) and pushes ready-made frames into a bounded channel; the response body
//! drains that channel. Server memory per subscriber is bounded by the channel
//! (`buffer_frames` frames) and the tail's page, whatever the client does:
//!
//! - a client that stops reading fills the channel; once the channel has stayed full
//!   for `slow_consumer_timeout`, the producer stops and the body ends, after the frames
//!   already buffered, with the comment `: closed: slow_consumer …`;
//! - a client that disconnects drops the body, which closes the channel, which ends the
//!   producer at once (it waits on the channel's closing as well as on the log);
//! - when the server shuts down, every producer stops and its body ends.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use cairn_core::RecordedEvent;
use cairn_store::tail::LogTail;
use http::{HeaderValue, StatusCode, header};
use tokio::sync::mpsc::error::SendTimeoutError;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::encode;
use crate::metrics::{
    SUBSCRIPTION_EVENTS_TOTAL, SUBSCRIPTIONS_ACTIVE, SUBSCRIPTIONS_DROPPED_TOTAL,
};

/// How subscriptions behave; the defaults suit most deployments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionOptions {
    /// A `: keepalive` comment is sent after this long without an event (zero: never).
    pub keep_alive: Duration,
    /// Frames (one event each, or a comment) buffered per subscriber.
    pub buffer_frames: usize,
    /// A subscriber whose buffer stays full this long is dropped.
    pub slow_consumer_timeout: Duration,
}

impl Default for SubscriptionOptions {
    fn default() -> Self {
        Self {
            keep_alive: Duration::from_secs(15),
            buffer_frames: 1024,
            slow_consumer_timeout: Duration::from_secs(10),
        }
    }
}

/// Every live subscription of one server: the options, how many producers run, and
/// the signal that ends them all.
#[derive(Debug)]
pub struct Subscriptions {
    options: SubscriptionOptions,
    active: Arc<AtomicUsize>,
    closing: CancellationToken,
}

/// The comment a keep-alive is.
const KEEP_ALIVE_FRAME: &[u8] = b": keepalive\n\n";
const SHUTDOWN_COMMENT: &str =
    "closed: shutdown: the server is shutting down; reconnect with Last-Event-ID to resume";
const FAILED_COMMENT: &str =
    "closed: unavailable: the log could not be read; reconnect with Last-Event-ID to resume";

/// Why a producer stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The client went away (the body was dropped).
    ClientGone,
    /// The client did not take frames for `slow_consumer_timeout` with the buffer full.
    SlowConsumer,
    /// The server is shutting down.
    Shutdown,
    /// The store failed or closed.
    Failed,
}

impl End {
    /// The comment the body ends with, if any.
    fn final_comment(self) -> Option<&'static str> {
        match self {
            End::ClientGone => None,
            End::SlowConsumer => Some(cairn_api::SSE_SLOW_CONSUMER_COMMENT),
            End::Shutdown => Some(SHUTDOWN_COMMENT),
            End::Failed => Some(FAILED_COMMENT),
        }
    }
}

impl Subscriptions {
    pub fn new(options: SubscriptionOptions) -> Self {
        Self {
            options,
            active: Arc::new(AtomicUsize::new(0)),
            closing: CancellationToken::new(),
        }
    }

    pub fn options(&self) -> &SubscriptionOptions {
        &self.options
    }

    /// Producers running now (this server's share of `cairn_subscriptions_active`).
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    /// Ends every subscription (their bodies end after what is buffered) and refuses
    /// none: a subscription started afterwards ends at once.
    pub fn close_all(&self) {
        self.closing.cancel();
    }

    /// Starts a producer following `tail` and returns the `text/event-stream` response
    /// whose body carries its frames.
    pub fn start(&self, tail: LogTail) -> Response {
        let (frames_tx, frames_rx) = mpsc::channel(self.options.buffer_frames.max(1));
        let (end_tx, end_rx) = oneshot::channel();
        let active = ActiveGuard::new(Arc::clone(&self.active));
        let producer = Producer {
            tail,
            frames: frames_tx,
            options: self.options.clone(),
            closing: self.closing.clone(),
        };
        tokio::spawn(async move {
            let _active = active;
            let start = producer.tail.position();
            let end = producer.run().await;
            if end == End::SlowConsumer {
                metrics::counter!(SUBSCRIPTIONS_DROPPED_TOTAL, "reason" => "slow_consumer")
                    .increment(1);
                tracing::info!(target: "cairn::http", start, "subscriber dropped: it did not read fast enough");
            } else {
                tracing::debug!(target: "cairn::http", start, ?end, "subscription ended");
            }
            // The end is told before the producer's sender is dropped (at the end of
            // this task), so the body finds it once the channel is empty and closed.
            let _ = end_tx.send(end);
        });
        event_stream_response(frames_rx, end_rx)
    }
}

/// Counts a running producer, in this server's count and in the process's gauge.
struct ActiveGuard(Arc<AtomicUsize>);

impl ActiveGuard {
    fn new(active: Arc<AtomicUsize>) -> Self {
        active.fetch_add(1, Ordering::AcqRel);
        metrics::gauge!(SUBSCRIPTIONS_ACTIVE).increment(1.0);
        Self(active)
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
        metrics::gauge!(SUBSCRIPTIONS_ACTIVE).decrement(1.0);
    }
}

struct Producer {
    tail: LogTail,
    frames: mpsc::Sender<Bytes>,
    options: SubscriptionOptions,
    closing: CancellationToken,
}

impl Producer {
    async fn run(self) -> End {
        let Producer {
            mut tail,
            frames,
            options,
            closing,
        } = self;
        let sink = FrameSink {
            frames,
            closing,
            slow_consumer_timeout: options.slow_consumer_timeout,
        };
        let keep_alive = options.keep_alive;
        loop {
            // The read of the log is never cut short by a keep-alive (a long catch-up
            // read through a rare filter would start over forever): keep-alives are
            // sent while it goes on.
            let batch = {
                let next = tail.next_batch();
                tokio::pin!(next);
                loop {
                    tokio::select! {
                        biased;
                        () = sink.closing.cancelled() => return End::Shutdown,
                        () = sink.frames.closed() => return End::ClientGone,
                        batch = &mut next => break batch,
                        () = tokio::time::sleep(keep_alive), if !keep_alive.is_zero() => {
                            if let Err(end) = sink.push(Bytes::from_static(KEEP_ALIVE_FRAME)).await {
                                return end;
                            }
                        }
                    }
                }
            };
            let events = match batch {
                Ok(events) => events,
                Err(error) => {
                    tracing::warn!(target: "cairn::http", %error, "a subscription could not read the log");
                    return End::Failed;
                }
            };
            let (pushed, outcome) = sink
                .push_events(&events)
                .instrument(delivery_span(&events))
                .await;
            metrics::counter!(SUBSCRIPTION_EVENTS_TOTAL).increment(pushed);
            if let Err(end) = outcome {
                return end;
            }
        }
    }
}

/// Where a producer's frames go.
struct FrameSink {
    frames: mpsc::Sender<Bytes>,
    closing: CancellationToken,
    slow_consumer_timeout: Duration,
}

impl FrameSink {
    /// Puts the events' frames in the buffer, in order; how many went in, and why the
    /// rest did not.
    async fn push_events(&self, events: &[RecordedEvent]) -> (u64, Result<(), End>) {
        let mut pushed = 0u64;
        for event in events {
            if let Err(end) = self.push(event_frame(event)).await {
                return (pushed, Err(end));
            }
            pushed += 1;
        }
        (pushed, Ok(()))
    }

    /// Puts one frame in the buffer, waiting at most `slow_consumer_timeout` for room.
    async fn push(&self, frame: Bytes) -> Result<(), End> {
        tokio::select! {
            biased;
            () = self.closing.cancelled() => Err(End::Shutdown),
            sent = self.frames.send_timeout(frame, self.slow_consumer_timeout) => {
                match sent {
                    Ok(()) => Ok(()),
                    Err(SendTimeoutError::Timeout(_)) => Err(End::SlowConsumer),
                    Err(SendTimeoutError::Closed(_)) => Err(End::ClientGone),
                }
            }
        }
    }
}

/// With traces exported, the span of handing `events` to a subscriber, linked to each
/// `$traceparent` they carry, and a child of it when there is just one. None when no
/// event carries a trace context (or traces are off).
fn delivery_span(events: &[RecordedEvent]) -> tracing::Span {
    let contexts = cairn_store::trace::event_contexts(events);
    if contexts.is_empty() {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(
        target: cairn_store::trace::SPAN_TARGET,
        parent: None,
        "sse.deliver",
        otel.name = "sse deliver",
        otel.kind = "producer",
        events = events.len(),
        first_position = events.first().map_or(0, |event| event.position),
        last_position = events.last().map_or(0, |event| event.position),
    );
    cairn_store::trace::follow(&span, contexts, true);
    span
}

/// `id: <position>\ndata: <event JSON on one line>\n\n`. Stored JSON is compact, and
/// JSON strings escape line breaks, so the event is one line.
fn event_frame(event: &RecordedEvent) -> Bytes {
    let mut frame = Vec::with_capacity(256 + event.data.len() + event.metadata.len());
    frame.extend_from_slice(b"id: ");
    frame.extend_from_slice(event.position.to_string().as_bytes());
    frame.extend_from_slice(b"\ndata: ");
    encode::write_event(&mut frame, event);
    frame.extend_from_slice(b"\n\n");
    Bytes::from(frame)
}

/// The most bytes of ready frames written to the connection as one chunk.
const COALESCE_BYTES: usize = 64 * 1024;

/// `first` plus every frame already waiting, up to [`COALESCE_BYTES`], as one chunk:
/// one write to the socket for many events instead of one each.
fn coalesce(first: Bytes, frames: &mut mpsc::Receiver<Bytes>) -> Bytes {
    let mut chunk: Option<Vec<u8>> = None;
    while chunk.as_ref().map_or(first.len(), Vec::len) < COALESCE_BYTES {
        let Ok(next) = frames.try_recv() else { break };
        let chunk = chunk.get_or_insert_with(|| {
            let mut chunk = Vec::with_capacity(COALESCE_BYTES.min(first.len() * 16));
            chunk.extend_from_slice(&first);
            chunk
        });
        chunk.extend_from_slice(&next);
    }
    chunk.map_or(first, Bytes::from)
}

fn comment_frame(text: &str) -> Bytes {
    Bytes::from(format!(": {text}\n\n"))
}

/// The 200 `text/event-stream` response: the buffered frames, then the final comment
/// of the producer's end, if any.
fn event_stream_response(frames: mpsc::Receiver<Bytes>, end: oneshot::Receiver<End>) -> Response {
    let body = futures::stream::unfold((frames, Some(end)), |(mut frames, end)| async move {
        if let Some(frame) = frames.recv().await {
            return Some((
                Ok::<_, Infallible>(coalesce(frame, &mut frames)),
                (frames, end),
            ));
        }
        let comment = end?.await.ok().and_then(End::final_comment)?;
        Some((Ok(comment_frame(comment)), (frames, None)))
    });
    let mut response = Response::new(Body::from_stream(body));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Proxies such as nginx would otherwise buffer the stream.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_core::StreamName;
    use uuid::Uuid;

    #[test]
    fn an_event_frame_is_an_id_and_one_data_line() {
        let event = RecordedEvent {
            id: Uuid::nil(),
            stream: StreamName::parse("order-1").unwrap(),
            event_type: "Placed".into(),
            version: 0,
            position: 42,
            data: r#"{"text":"two\nlines"}"#.into(),
            metadata: "{}".into(),
            tags: vec![],
            recorded_at: 0,
        };
        let frame = event_frame(&event);
        let text = std::str::from_utf8(&frame).unwrap();
        assert!(text.starts_with("id: 42\ndata: {"), "{text}");
        assert!(text.ends_with("}\n\n"), "{text}");
        assert_eq!(text.matches('\n').count(), 3, "{text}");
        let data = text.lines().nth(1).unwrap().strip_prefix("data: ").unwrap();
        let parsed: cairn_api::Event = serde_json::from_str(data).unwrap();
        assert_eq!(parsed.position, 42);
    }

    #[test]
    fn the_slow_consumer_comment_is_one_comment_line() {
        let frame = comment_frame(End::SlowConsumer.final_comment().unwrap());
        let text = std::str::from_utf8(&frame).unwrap();
        assert!(text.starts_with(": closed: slow_consumer"), "{text}");
        assert_eq!(text.matches('\n').count(), 2);
    }
}
