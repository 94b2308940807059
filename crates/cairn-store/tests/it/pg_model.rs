//! Two PostgreSQL instances against the embedded store, on the same sequence of
//! requests: whatever path each instance's writer takes (deciding from what it
//! remembers, or looking up under the head lock after the other instance wrote), every
//! answer and the final log must be exactly the embedded store's.
//!
//! The requests are drawn from a seeded generator over a few streams: appends to one or
//! two streams with every kind of expected version, idempotency keys used again with
//! the same request and with another, event ids sent again, append conditions, and
//! stream deletes. They go to one instance or the other in runs, so that each writer
//! spends time alone (where it decides from memory) and time after the other wrote;
//! some runs are sent at once, so that one transaction decides several of them.

use cairn_core::{AppendCondition, EventFilter, ExpectedVersion};
use cairn_store::conformance::{event, stream, whole_log};
use cairn_store::postgres::PostgresStore;
use cairn_store::{
    AppendOutcome, AppendRequest, AppendResult, AppendTarget, EventStore, IdempotencyClaim,
    StoreError, testing,
};

use crate::postgres::options;

/// Requests go to 4 streams at a time, a window that moves on every 40 requests (so
/// that deleted streams do not end up being all there is).
const STREAMS: u64 = 4;
const WINDOW_MOVES_EVERY: u64 = 40;
const KEYS: u64 = 3;
const REQUESTS: usize = 400;

/// A small deterministic generator (xorshift64*), so a failure names its seed.
struct Draw(u64);

impl Draw {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

#[derive(Clone)]
enum Request {
    Append(AppendRequest),
    Delete(String, ExpectedVersion),
}

fn render(result: &AppendResult) -> String {
    format!("{}-{}", result.first_position, result.last_position)
}

fn expected(draw: &mut Draw) -> ExpectedVersion {
    match draw.below(6) {
        0 | 1 => ExpectedVersion::Any,
        2 => ExpectedVersion::NoStream,
        3 => ExpectedVersion::Exists,
        _ => ExpectedVersion::Exact(draw.below(8)),
    }
}

fn request(draw: &mut Draw, sent: &[Request], head: u64) -> Request {
    let window = sent.len() as u64 / WINDOW_MOVES_EVERY;
    // Sent again, unchanged: its key or its event ids decide what it does now.
    if !sent.is_empty() && draw.chance(10) {
        return sent[draw.below(sent.len() as u64) as usize].clone();
    }
    if draw.chance(8) {
        let name = format!("m-{}", window + draw.below(STREAMS));
        return Request::Delete(name, expected(draw));
    }
    let first = draw.below(STREAMS);
    let mut targets = vec![AppendTarget {
        stream: stream(&format!("m-{}", window + first)),
        expected: expected(draw),
    }];
    if draw.chance(20) {
        let second = (first + 1 + draw.below(STREAMS - 1)) % STREAMS;
        targets.push(AppendTarget {
            stream: stream(&format!("m-{}", window + second)),
            expected: expected(draw),
        });
    }
    let mut events = Vec::new();
    for _ in 0..1 + draw.below(3) {
        let target = draw.below(targets.len() as u64) as usize;
        let kind = if draw.chance(50) { "Opened" } else { "Noted" };
        events.push((target, event(kind, "{}")));
    }
    // Events sent before, in a new request: already recorded (or refused if they
    // went elsewhere).
    if draw.chance(8)
        && let Some(Request::Append(earlier)) = sent.last()
    {
        events = earlier.events.clone();
        events.iter_mut().for_each(|(target, _)| *target = 0);
        targets.truncate(1);
    }
    let condition = draw.chance(10).then(|| AppendCondition {
        query: EventFilter {
            types: vec!["Opened".to_owned()],
            ..EventFilter::default()
        },
        after: draw.below(head + 1),
    });
    let idempotency = draw.chance(25).then(|| {
        let key = draw.below(KEYS);
        // The same key with the same fingerprint replays; with another it is refused.
        let mut fingerprint = [0u8; 32];
        fingerprint[0] = key as u8;
        fingerprint[1] = draw.below(2) as u8;
        IdempotencyClaim {
            key: format!("key-{key}"),
            fingerprint,
            render,
        }
    });
    Request::Append(AppendRequest {
        targets,
        events,
        condition,
        idempotency,
    })
}

/// An answer, in a form both stores must agree on.
fn answer(request: &Request, outcome: Result<Answer, StoreError>) -> String {
    let what = match request {
        Request::Append(request) => format!(
            "append {:?} ({} events)",
            request
                .targets
                .iter()
                .map(|t| (t.stream.as_str(), t.expected))
                .collect::<Vec<_>>(),
            request.events.len()
        ),
        Request::Delete(name, expected) => format!("delete {name} {expected:?}"),
    };
    match outcome {
        Ok(Answer::Committed(result)) => format!("{what}: committed {result:?}"),
        Ok(Answer::Replayed(body)) => format!("{what}: replayed {body}"),
        Ok(Answer::Deleted(version)) => format!("{what}: deleted at {version}"),
        Err(error) => format!("{what}: refused: {error}"),
    }
}

enum Answer {
    Committed(AppendResult),
    Replayed(String),
    Deleted(u64),
}

async fn send(store: &dyn EventStore, request: Request) -> Result<Answer, StoreError> {
    match request {
        Request::Append(request) => match store.append(request).await? {
            AppendOutcome::Committed(result) => Ok(Answer::Committed(result)),
            AppendOutcome::Replayed { body } => Ok(Answer::Replayed(body)),
        },
        Request::Delete(name, expected) => store
            .delete_stream(&stream(&name), expected)
            .await
            .map(Answer::Deleted),
    }
}

/// The whole log as (position, stream, version, id, type): what both stores must agree
/// on (not the recorded times).
async fn log(store: &dyn EventStore) -> Vec<String> {
    whole_log(store)
        .await
        .iter()
        .map(|e| {
            format!(
                "{} {} {} {} {}",
                e.position, e.stream, e.version, e.id, e.event_type
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_answer_every_request_as_the_embedded_store_does() {
    for seed in [0x5eed_cafe_u64, 0x0dd_ba11, 0xfee1_900d] {
        if !agree_on(seed, None).await {
            return;
        }
    }
}

/// The same with every batch that can be decided from memory overlapping the one
/// before it (`overlap_min_events` 1: a flight for any batch, however small).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapped_batches_answer_every_request_as_the_embedded_store_does() {
    for seed in [0xf1_1e5_u64, 0xa11_d0e5, 0xbe7_1a95] {
        if !agree_on(seed, Some(1)).await {
            return;
        }
    }
}

/// Runs one seed's sequence on fresh stores; `false` when the PostgreSQL tests are
/// skipped.
async fn agree_on(seed: u64, overlap_min_events: Option<usize>) -> bool {
    let Some(database) = testing::shared_database().await else {
        return false;
    };
    let mut options = options(&database);
    if let Some(min) = overlap_min_events {
        options.overlap_min_events = min;
    }
    let a = PostgresStore::connect(options.clone()).await.unwrap();
    let b = PostgresStore::connect(options).await.unwrap();
    let (reference, _dir) = crate::new_store().await;

    let mut draw = Draw(seed);
    let mut sent: Vec<Request> = Vec::new();
    let mut head = 0;
    let mut answered = 0;
    let mut seen: Vec<String> = Vec::new();
    while answered < REQUESTS {
        let instance = if draw.chance(50) { &a } else { &b };
        let run = 1 + draw.below(8) as usize;
        let at_once = draw.chance(30);
        let requests: Vec<Request> = (0..run).map(|_| request(&mut draw, &sent, head)).collect();
        // The embedded store answers one request after the other: the reference.
        let mut expected_answers = Vec::new();
        for request in &requests {
            let outcome = send(reference.as_ref(), request.clone()).await;
            if let Ok(Answer::Committed(result)) = &outcome {
                head = head.max(result.last_position);
            }
            expected_answers.push(answer(request, outcome));
        }
        // The instance: one after the other, or all at once (queued in order, so that
        // one transaction decides them in that order).
        let answers: Vec<String> = if at_once {
            let sends = requests
                .iter()
                .map(|request| send(instance, request.clone()));
            let outcomes = futures::future::join_all(sends).await;
            requests
                .iter()
                .zip(outcomes)
                .map(|(request, outcome)| answer(request, outcome))
                .collect()
        } else {
            let mut answers = Vec::new();
            for request in &requests {
                answers.push(answer(request, send(instance, request.clone()).await));
            }
            answers
        };
        for (index, (got, want)) in answers.iter().zip(&expected_answers).enumerate() {
            assert_eq!(
                got,
                want,
                "seed {seed:#x}, request {} (a run of {run}, at once: {at_once})",
                answered + index
            );
        }
        answered += run;
        sent.extend(requests);
        seen.extend(expected_answers);
    }
    // Every kind of answer came up.
    for kind in [
        ": committed",
        ": replayed",
        ": deleted at",
        "refused: stream m-",
        "is deleted",
        "idempotency key was already used",
        "matching the condition",
        "already exists in stream",
    ] {
        assert!(
            seen.iter().any(|answer| answer.contains(kind)),
            "seed {seed:#x}: no answer with {kind:?} in {seen:#?}"
        );
    }
    let want = log(reference.as_ref()).await;
    assert!(
        want.len() > 100,
        "seed {seed:#x} wrote too little: {}",
        want.len()
    );
    assert_eq!(log(&a).await, want, "seed {seed:#x}");
    assert_eq!(log(&b).await, want, "seed {seed:#x}");
    true
}
