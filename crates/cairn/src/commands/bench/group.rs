//! `cairn bench group`: appends `--events` events, then `--workers` competing
//! consumer-group workers claim them (`--batch-size` at a time) and acknowledge each
//! batch at once, until every event is acknowledged or the duration ends.
//!
//! Workers speak HTTP directly with pre-serialised claim bodies and decode only the
//! positions of a claim's answer, so the bench measures the server, not the bench.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use cairn_client::{EventFilterSpec, GroupRequest, ReadAllOptions};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::{
    Access, BenchResult, BodyTemplate, Counters, ERROR_SAMPLES, Latency, Measured, ProgressKind,
    keep_samples, micros_since, new_histogram, post_json, round, show_progress, wait_until_ready,
};
use crate::cli::BenchArgs;

/// Events per append request while pre-appending.
const PREFILL_BATCH: u64 = 1000;
/// Concurrent appenders while pre-appending.
const PREFILL_WRITERS: usize = 4;
/// A claim's long-poll wait: short, so that workers notice the end promptly.
const CLAIM_WAIT_MS: u64 = 200;

/// The group scenario's figures, beside the common ones (where `events` are the events
/// acknowledged, `events_per_s` the acknowledgement throughput and `latency_ms` the
/// latency of claims that returned events).
#[derive(Debug, Serialize)]
pub struct GroupFigures {
    pub workers: u32,
    /// Events asked for per claim.
    pub batch: u16,
    /// Events appended before the workers started.
    pub pre_appended: u64,
    pub prefill_s: f64,
    pub claims: u64,
    /// Claims that returned nothing (long polls that timed out).
    pub empty_claims: u64,
    /// Deliveries after the first of an event (should be 0: nothing times out here).
    pub redelivered: u64,
    /// Every pre-appended event was acknowledged before the duration ended.
    pub complete: bool,
    pub ack_latency_ms: Latency,
}

impl GroupFigures {
    pub fn summary(&self) -> String {
        let latency = &self.ack_latency_ms;
        format!(
            "  group     {} workers, batches of {}, {} events pre-appended in {:.2}s, {} claims ({} empty), {} redelivered{}\n  acks      p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms\n",
            self.workers,
            self.batch,
            self.pre_appended,
            self.prefill_s,
            self.claims,
            self.empty_claims,
            self.redelivered,
            if self.complete {
                ""
            } else {
                ", NOT all acknowledged in time"
            },
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
    let workers = usize::try_from(args.workers).context("too many workers")?;
    let http = access.http(workers + PREFILL_WRITERS)?;
    wait_until_ready(&http, base_url, if embedded { 10 } else { 0 }).await?;
    let client = access.client(base_url)?;
    let run_id = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let category = format!("grp{run_id}");
    let head = client
        .read_all(&ReadAllOptions {
            from_position: Some(1),
            limit: Some(1),
            ..ReadAllOptions::default()
        })
        .await
        .context("cannot read the log's head")?
        .head_position;

    let total = args.events;
    let prefill_started = Instant::now();
    prefill(
        &http,
        base_url,
        &category,
        total,
        args.payload_bytes,
        args.verbose,
    )
    .await?;
    let prefill = prefill_started.elapsed();

    let group = format!("bench-{run_id}");
    client
        .put_group(
            &group,
            &GroupRequest {
                from_position: Some(head + 1),
                filter: Some(EventFilterSpec {
                    category: Some(category.clone()),
                    ..EventFilterSpec::default()
                }),
                ack_timeout_ms: Some(60_000),
                ..GroupRequest::default()
            },
        )
        .await
        .with_context(|| format!("cannot create the consumer group {group}"))?;

    let counters = Arc::new(Counters::default());
    let started = Instant::now();
    let deadline = started + args.duration;
    let progress_done = CancellationToken::new();
    let progress = tokio::spawn(show_progress(
        counters.clone(),
        started,
        args.duration,
        args.verbose,
        ProgressKind::Acks { total },
        progress_done.clone(),
    ));
    let claims = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..workers)
        .map(|worker| {
            let consumer = format!("bench-worker-{worker}");
            let claim_body = serde_json::to_vec(&cairn_client::ClaimRequest {
                consumer,
                max: Some(u32::from(args.batch_size)),
                wait_ms: Some(CLAIM_WAIT_MS),
            })
            .map(Bytes::from);
            tokio::spawn(claim_and_ack(WorkerPlan {
                http: http.clone(),
                claim_url: format!("{base_url}/v1/groups/{group}/claim"),
                ack_url: format!("{base_url}/v1/groups/{group}/ack"),
                claim_body: claim_body.unwrap_or_default(),
                total,
                deadline,
                counters: counters.clone(),
                claims: claims.clone(),
            }))
        })
        .collect();
    let mut claim_histogram = new_histogram();
    let mut ack_histogram = new_histogram();
    let mut error_samples = Vec::new();
    let mut empty_claims = 0;
    let mut redelivered = 0;
    for task in tasks {
        let outcome = task.await.context("a worker panicked")?;
        claim_histogram
            .add(&outcome.claims)
            .context("cannot merge latency histograms")?;
        ack_histogram
            .add(&outcome.acks)
            .context("cannot merge latency histograms")?;
        empty_claims += outcome.empty_claims;
        redelivered += outcome.redelivered;
        keep_samples(&mut error_samples, outcome.errors);
    }
    let elapsed = started.elapsed();
    progress_done.cancel();
    let _ = progress.await;
    if let Err(error) = client.delete_group(&group).await {
        keep_samples(
            &mut error_samples,
            [format!("cannot delete the group {group}: {error}")],
        );
    }

    let requests = counters.requests.load(Ordering::Relaxed);
    let acked = counters.events.load(Ordering::Relaxed);
    let errors = counters.errors.load(Ordering::Relaxed);
    Ok(BenchResult {
        group: Some(GroupFigures {
            workers: args.workers,
            batch: args.batch_size,
            pre_appended: total,
            prefill_s: round(prefill.as_secs_f64(), 3),
            claims: claims.load(Ordering::Relaxed),
            empty_claims,
            redelivered,
            complete: acked >= total,
            ack_latency_ms: Latency::of(&ack_histogram),
        }),
        ..BenchResult::from_measured(Measured {
            args,
            base_url,
            embedded,
            clients: args.workers,
            events_per_request: usize::from(args.batch_size),
            elapsed,
            requests,
            events: acked,
            errors,
            histogram: &claim_histogram,
            error_samples,
        })
    })
}

/// Appends `total` events in batches over a few streams of `category`.
async fn prefill(
    http: &reqwest::Client,
    base_url: &str,
    category: &str,
    total: u64,
    payload_bytes: usize,
    verbose: bool,
) -> anyhow::Result<()> {
    if verbose || std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        eprintln!("appending {total} events for the consumer group…");
    }
    let next = Arc::new(AtomicU64::new(0));
    let full = BodyTemplate::new(PREFILL_BATCH as usize, payload_bytes);
    let writers: Vec<_> = (0..PREFILL_WRITERS)
        .map(|writer| {
            let http = http.clone();
            let next = next.clone();
            let full = full.clone();
            let url = format!("{base_url}/v1/streams/{category}-{writer}/events");
            tokio::spawn(async move {
                let mut sequence = 0;
                loop {
                    let first = next.fetch_add(PREFILL_BATCH, Ordering::Relaxed);
                    if first >= total {
                        return Ok::<(), String>(());
                    }
                    let count = PREFILL_BATCH.min(total - first);
                    sequence += 1;
                    let body = if count == PREFILL_BATCH {
                        full.render(sequence)
                    } else {
                        BodyTemplate::new(count as usize, payload_bytes).render(sequence)
                    };
                    post_json(&http, &url, body).await?;
                }
            })
        })
        .collect();
    for writer in writers {
        if let Err(error) = writer.await.context("a pre-appending writer panicked")? {
            bail!("cannot pre-append the events: {error}");
        }
    }
    Ok(())
}

struct WorkerOutcome {
    claims: Histogram<u64>,
    acks: Histogram<u64>,
    empty_claims: u64,
    redelivered: u64,
    errors: Vec<String>,
}

/// Only what a worker needs of a claim's answer.
#[derive(Deserialize)]
struct LeanClaim {
    deliveries: Vec<LeanDelivery>,
}

#[derive(Deserialize)]
struct LeanDelivery {
    position: u64,
    attempt: u32,
}

#[derive(Deserialize)]
struct LeanSettle {
    settled: u64,
}

/// What one bench worker does: claim with `claim_body`, ack what came, until `total`
/// events are acknowledged (by all workers) or the deadline.
struct WorkerPlan {
    http: reqwest::Client,
    claim_url: String,
    ack_url: String,
    claim_body: Bytes,
    total: u64,
    deadline: Instant,
    counters: Arc<Counters>,
    claims: Arc<AtomicU64>,
}

async fn claim_and_ack(plan: WorkerPlan) -> WorkerOutcome {
    let WorkerPlan {
        http,
        claim_url,
        ack_url,
        claim_body,
        total,
        deadline,
        counters,
        claims,
    } = plan;
    let mut outcome = WorkerOutcome {
        claims: new_histogram(),
        acks: new_histogram(),
        empty_claims: 0,
        redelivered: 0,
        errors: Vec::new(),
    };
    let mut ack_body = Vec::with_capacity(4096);
    let fail = |outcome: &mut WorkerOutcome, error: String| {
        counters.errors.fetch_add(1, Ordering::Relaxed);
        if outcome.errors.len() < ERROR_SAMPLES {
            outcome.errors.push(error);
        }
    };
    while Instant::now() < deadline && counters.events.load(Ordering::Relaxed) < total {
        let claim_started = Instant::now();
        let answer = post_json(&http, &claim_url, claim_body.clone()).await;
        let claim_micros = micros_since(claim_started);
        counters.requests.fetch_add(1, Ordering::Relaxed);
        claims.fetch_add(1, Ordering::Relaxed);
        let claim: LeanClaim = match answer.and_then(|body| {
            serde_json::from_slice(&body).map_err(|error| format!("bad claim answer: {error}"))
        }) {
            Ok(claim) => claim,
            Err(error) => {
                fail(&mut outcome, error);
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if claim.deliveries.is_empty() {
            outcome.empty_claims += 1;
            continue;
        }
        outcome.claims.saturating_record(claim_micros.max(1));
        ack_body.clear();
        ack_body.extend_from_slice(br#"{"positions":["#);
        for (index, delivery) in claim.deliveries.iter().enumerate() {
            if delivery.attempt > 1 {
                outcome.redelivered += 1;
            }
            if index > 0 {
                ack_body.push(b',');
            }
            ack_body.extend_from_slice(delivery.position.to_string().as_bytes());
        }
        ack_body.extend_from_slice(b"]}");
        let ack_started = Instant::now();
        let answer = post_json(&http, &ack_url, Bytes::copy_from_slice(&ack_body)).await;
        outcome
            .acks
            .saturating_record(micros_since(ack_started).max(1));
        counters.requests.fetch_add(1, Ordering::Relaxed);
        match answer.and_then(|body| {
            serde_json::from_slice::<LeanSettle>(&body)
                .map_err(|error| format!("bad ack answer: {error}"))
        }) {
            Ok(settled) => {
                counters
                    .events
                    .fetch_add(settled.settled, Ordering::Relaxed);
            }
            Err(error) => fail(&mut outcome, error),
        }
    }
    outcome
}
