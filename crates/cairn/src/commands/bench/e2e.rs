//! `cairn bench e2e`: appends at a fixed rate while SSE subscribers follow the log, and
//! measures each event's latency from the moment its append was sent to the moment a
//! subscriber received it.
//!
//! The send time (microseconds since the run's clock started) is written into the
//! event's data as its counter; a subscriber takes the event undecoded from the
//! subscription and reads the counter straight out of the JSON, so the bench side stays
//! cheap even with many subscribers. Appends are paced open-loop: event k is due at
//! `k / rate` seconds and is sent by whichever of the `--clients` appenders takes it,
//! so a slow answer does not slow the schedule (appenders fall behind only when all
//! of them are busy, which the achieved rate shows).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use cairn_client::{Client, EventFilterSpec, ReadAllOptions, SubscribeOptions};
use futures::StreamExt;
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::{
    Access, BenchResult, BodyTemplate, COUNTER_DIGITS, Counters, Latency, Measured, ProgressKind,
    keep_samples, micros_since, new_histogram, post_json, round, show_progress, wait_until_ready,
};
use crate::cli::BenchArgs;

/// The counter value of the warm-up event, which every subscriber must see before the
/// measured run starts (so that all of them are connected and live).
const WARM_UP: u64 = u64::MAX;
/// Where the counter sits in an event's JSON.
const COUNTER_MARK: &str = r#""data":{"n":""#;
/// How long to wait for deliveries to finish once the appends stop, when they stop
/// making progress.
const DRAIN_STALL: Duration = Duration::from_secs(5);

/// The e2e scenario's figures, beside the common ones (where `events` are the events
/// appended, `events_per_s` the append throughput achieved and `latency_ms` the
/// append-to-delivery latency).
#[derive(Debug, Serialize)]
pub struct E2eFigures {
    /// The asked append rate, events/s.
    pub rate: u32,
    pub subscribers: u32,
    /// Deliveries counted (each subscriber receives each event).
    pub delivered: u64,
    /// Deliveries that did not arrive within the drain time.
    pub missing: u64,
    /// How long the subscribers took to receive the last events after the appends stopped.
    pub drain_s: f64,
    /// Subscriptions that had to reconnect.
    pub reconnects: u64,
    /// The appends' own latency (request sent to response received).
    pub append_latency_ms: Latency,
}

impl E2eFigures {
    pub fn summary(&self) -> String {
        let latency = &self.append_latency_ms;
        format!(
            "  e2e       rate {}/s asked, {} subscribers, {} delivered, {} missing, {} reconnects, drained in {:.2}s\n  appends   p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms\n",
            self.rate,
            self.subscribers,
            self.delivered,
            self.missing,
            self.reconnects,
            self.drain_s,
            latency.p50,
            latency.p90,
            latency.p99,
            latency.p99_9,
            latency.max
        )
    }
}

pub(super) async fn measure(
    args: &BenchArgs,
    access: &Access,
    base_url: &str,
    embedded: bool,
) -> anyhow::Result<BenchResult> {
    let clients = usize::try_from(args.clients).context("too many clients")?;
    let subscribers = usize::try_from(args.subscribers).context("too many subscribers")?;
    let http = access.http(clients)?;
    wait_until_ready(&http, base_url, if embedded { 10 } else { 0 }).await?;
    let client = access.client(base_url)?;
    let run_id = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let category = format!("e2e{run_id}");
    let head = client
        .read_all(&ReadAllOptions {
            from_position: Some(1),
            limit: Some(1),
            ..ReadAllOptions::default()
        })
        .await
        .context("cannot read the log's head")?
        .head_position;

    let clock = Instant::now();
    let counters = Arc::new(Counters::default());
    let warmed = Arc::new(AtomicU64::new(0));
    let stop = CancellationToken::new();
    let subscriber_tasks: Vec<_> = (0..subscribers)
        .map(|_| {
            tokio::spawn(subscriber(
                client.clone(),
                head + 1,
                category.clone(),
                clock,
                counters.clone(),
                warmed.clone(),
                stop.clone(),
            ))
        })
        .collect();

    // One event every subscriber must receive before the clock runs: all are live.
    let template = BodyTemplate::new(1, args.payload_bytes);
    post_json(
        &http,
        &format!("{base_url}/v1/streams/{category}-warmup/events"),
        template.render_value(WARM_UP),
    )
    .await
    .map_err(|error| anyhow::anyhow!("cannot append the warm-up event: {error}"))?;
    let warm_deadline =
        Instant::now() + Duration::from_secs(10) + Duration::from_millis(20) * args.subscribers;
    while warmed.load(Ordering::Relaxed) < subscribers as u64 {
        if Instant::now() >= warm_deadline {
            stop.cancel();
            bail!(
                "only {} of {subscribers} subscribers received the warm-up event in time",
                warmed.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let started = Instant::now();
    let deadline = started + args.duration;
    let progress_done = CancellationToken::new();
    let progress = tokio::spawn(show_progress(
        counters.clone(),
        started,
        args.duration,
        args.verbose,
        ProgressKind::Deliveries,
        progress_done.clone(),
    ));
    let schedule = Schedule::new(started, deadline, args.rate);
    let appenders: Vec<_> = (0..clients)
        .map(|appender| {
            tokio::spawn(append_on_schedule(
                http.clone(),
                format!("{base_url}/v1/streams/{category}-{appender}/events"),
                template.clone(),
                schedule.clone(),
                clock,
                counters.clone(),
            ))
        })
        .collect();
    let mut append_histogram = new_histogram();
    let mut error_samples = Vec::new();
    for appender in appenders {
        let outcome = appender.await.context("an appender panicked")?;
        append_histogram
            .add(&outcome.histogram)
            .context("cannot merge latency histograms")?;
        keep_samples(&mut error_samples, outcome.errors);
    }
    let append_elapsed = started.elapsed();

    // Let the subscribers receive what was appended, as long as they make progress.
    let appended = counters.events.load(Ordering::Relaxed);
    let expected = appended * subscribers as u64;
    let drain_started = Instant::now();
    let mut last_progress = (counters.delivered.load(Ordering::Relaxed), Instant::now());
    loop {
        let delivered = counters.delivered.load(Ordering::Relaxed);
        if delivered >= expected {
            break;
        }
        if delivered != last_progress.0 {
            last_progress = (delivered, Instant::now());
        } else if last_progress.1.elapsed() >= DRAIN_STALL {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let drain = drain_started.elapsed();
    stop.cancel();
    let mut histogram = new_histogram();
    let mut reconnects = 0;
    for task in subscriber_tasks {
        let outcome = task.await.context("a subscriber panicked")?;
        histogram
            .add(&outcome.histogram)
            .context("cannot merge latency histograms")?;
        reconnects += outcome.reconnects;
        keep_samples(&mut error_samples, outcome.errors);
    }
    progress_done.cancel();
    let _ = progress.await;

    let requests = counters.requests.load(Ordering::Relaxed);
    let errors = counters.errors.load(Ordering::Relaxed);
    let delivered = counters.delivered.load(Ordering::Relaxed);
    Ok(BenchResult {
        e2e: Some(E2eFigures {
            rate: args.rate,
            subscribers: args.subscribers,
            delivered,
            missing: expected.saturating_sub(delivered),
            drain_s: round(drain.as_secs_f64(), 3),
            reconnects,
            append_latency_ms: Latency::of(&append_histogram),
        }),
        ..BenchResult::from_measured(Measured {
            args,
            base_url,
            embedded,
            clients: args.clients,
            events_per_request: 1,
            elapsed: append_elapsed,
            requests,
            events: appended,
            errors,
            histogram: &histogram,
            error_samples,
        })
    })
}

/// Event k is due at `started + k × interval`; appenders take the next one in turn.
pub(super) struct Schedule {
    pub(super) started: Instant,
    pub(super) deadline: Instant,
    pub(super) interval_nanos: f64,
    pub(super) next: AtomicU64,
}

impl Schedule {
    /// `rate` events a second from `started` until `deadline`.
    pub(super) fn new(started: Instant, deadline: Instant, rate: u32) -> Arc<Self> {
        Arc::new(Self {
            started,
            deadline,
            interval_nanos: 1e9 / f64::from(rate),
            next: AtomicU64::new(0),
        })
    }

    /// The next event's slot and when it is due, or `None` once the schedule is over
    /// (events still unsent at the deadline are not sent: the achieved rate shows it).
    pub(super) async fn next_due(&self) -> Option<u64> {
        let slot = self.next.fetch_add(1, Ordering::Relaxed);
        let offset = Duration::from_nanos((slot as f64 * self.interval_nanos) as u64);
        let due = self.started + offset;
        if due >= self.deadline || Instant::now() >= self.deadline {
            return None;
        }
        if due > Instant::now() {
            tokio::time::sleep_until(due.into()).await;
        }
        Some(slot)
    }
}

struct AppenderOutcome {
    histogram: Histogram<u64>,
    errors: Vec<String>,
}

async fn append_on_schedule(
    http: reqwest::Client,
    url: String,
    template: BodyTemplate,
    schedule: Arc<Schedule>,
    clock: Instant,
    counters: Arc<Counters>,
) -> AppenderOutcome {
    let mut histogram = new_histogram();
    let mut errors = Vec::new();
    while schedule.next_due().await.is_some() {
        let sent = micros_since(clock);
        let body = template.render_value(sent);
        let request_started = Instant::now();
        let outcome = post_json(&http, &url, body).await;
        histogram.saturating_record(micros_since(request_started).max(1));
        counters.requests.fetch_add(1, Ordering::Relaxed);
        match outcome {
            Ok(_) => {
                counters.events.fetch_add(1, Ordering::Relaxed);
            }
            Err(error) => {
                counters.errors.fetch_add(1, Ordering::Relaxed);
                if errors.len() < super::ERROR_SAMPLES {
                    errors.push(error);
                }
            }
        }
    }
    AppenderOutcome { histogram, errors }
}

struct SubscriberOutcome {
    histogram: Histogram<u64>,
    errors: Vec<String>,
    reconnects: u64,
}

async fn subscriber(
    client: Client,
    from_position: u64,
    category: String,
    clock: Instant,
    counters: Arc<Counters>,
    warmed: Arc<AtomicU64>,
    stop: CancellationToken,
) -> SubscriberOutcome {
    let mut histogram = new_histogram();
    let mut errors = Vec::new();
    let mut events = client.subscribe_raw(SubscribeOptions {
        from_position: Some(from_position),
        filter: EventFilterSpec {
            category: Some(category),
            ..EventFilterSpec::default()
        },
        ..SubscribeOptions::default()
    });
    loop {
        let next = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            next = events.next() => next,
        };
        match next {
            Some(Ok(event)) => match sent_micros(&event.json) {
                Some(WARM_UP) => {
                    warmed.fetch_add(1, Ordering::Relaxed);
                }
                Some(sent) => {
                    let latency = micros_since(clock).saturating_sub(sent);
                    histogram.saturating_record(latency.max(1));
                    counters.delivered.fetch_add(1, Ordering::Relaxed);
                }
                None => {
                    counters.errors.fetch_add(1, Ordering::Relaxed);
                    if errors.len() < super::ERROR_SAMPLES {
                        errors.push(format!(
                            "event at position {} carries no send time",
                            event.position
                        ));
                    }
                }
            },
            Some(Err(error)) => {
                counters.errors.fetch_add(1, Ordering::Relaxed);
                errors.push(format!("subscription failed: {error}"));
                break;
            }
            None => break,
        }
    }
    SubscriberOutcome {
        histogram,
        errors,
        reconnects: events.reconnects(),
    }
}

/// The send time written into an event's data, read from the event's JSON.
fn sent_micros(json: &str) -> Option<u64> {
    let start = json.find(COUNTER_MARK)? + COUNTER_MARK.len();
    let digits = json.get(start..start + COUNTER_DIGITS)?;
    u64::from_str_radix(digits, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_send_time_is_read_back_from_the_event_json() {
        let template = BodyTemplate::new(1, 100);
        let body = template.render_value(0x1234_5678);
        let request: cairn_api::AppendRequest = serde_json::from_slice(&body).unwrap();
        let event = format!(
            r#"{{"id":"0194b8c2-4c4a-7000-8000-000000000001","stream":"e2e-0","type":"BenchEvent","version":0,"position":1,"data":{},"metadata":{{}},"tags":[],"recorded_at":"x"}}"#,
            request.events[0].data.get()
        );
        assert_eq!(sent_micros(&event), Some(0x1234_5678));
        assert_eq!(sent_micros(r#"{"data":{"x":1}}"#), None);
        let warm_up = template.render_value(WARM_UP);
        let request: cairn_api::AppendRequest = serde_json::from_slice(&warm_up).unwrap();
        let event = format!(r#"{{"data":{}}}"#, request.events[0].data.get());
        assert_eq!(sent_micros(&event), Some(WARM_UP));
    }
}
