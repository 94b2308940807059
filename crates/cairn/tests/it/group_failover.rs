//! Consumer groups across real `cairn serve` processes on one PostgreSQL: one instance
//! drives a group at a time, the others forward its requests there, and when the
//! owner is SIGKILLed the group moves to a survivor within seconds, losing nothing.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_api::{ClaimRequest, GroupOrdering, GroupRequest};
use cairn_client::{Client, ClientError, ExpectedVersion, event};
use cairn_store::EventStore as _;
use cairn_store::groups::GroupLeases as _;
use cairn_store::postgres::{PgGroupLeases, PostgresOptions, PostgresStore};
use cairn_store::testing::{TestDatabase, shared_database};
use serde_json::json;

use crate::support::Server;

const GROUP: &str = "jobs";
const STREAMS: usize = 8;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn start(data: &tempfile::TempDir, url: &str) -> Server {
    Server::start_with(
        &data.path().join("data"),
        "127.0.0.1:0",
        &["--database-url", url, "--pool-size", "4"],
    )
}

/// A client that does not retry by itself: the tests see every 503 and retry.
fn client(server: &Server) -> Client {
    Client::builder(server.url.clone())
        .retries(0)
        .build()
        .unwrap()
}

/// Whether an error is one a client retries: 503 or no answer (an owner that died).
fn retryable(error: &ClientError) -> bool {
    match error {
        ClientError::Api { status, .. } => *status == 503,
        ClientError::Transport(_) => true,
        _ => false,
    }
}

/// The group's recorded owner (URL, epoch), read from the database.
async fn owner(database: &TestDatabase) -> (Option<String>, u64) {
    let options = PostgresOptions::new(&database.primary_url);
    let leases = PgGroupLeases::connect(&options, "http://observer.invalid".into())
        .await
        .unwrap();
    let owner = leases.owner(GROUP).await.unwrap().unwrap();
    (owner.url, owner.epoch)
}

/// The group's checkpoint as stored in the database.
async fn stored_checkpoint(database: &TestDatabase) -> u64 {
    let store = PostgresStore::connect(PostgresOptions::new(&database.primary_url))
        .await
        .unwrap();
    let groups = store.load_groups().await.unwrap();
    groups
        .iter()
        .find(|group| group.name == GROUP)
        .unwrap()
        .checkpoint
}

/// Appends `count` events round-robin to `STREAMS` streams; returns the last position.
async fn append_events(client: &Client, count: usize) -> u64 {
    let mut last = 0;
    for index in 0..count {
        let answer = client
            .append(
                &format!("order-{}", index % STREAMS),
                ExpectedVersion::Any,
                vec![event("Placed", json!({ "index": index }))],
            )
            .await
            .unwrap();
        last = answer.last_position;
    }
    last
}

async fn create_group(client: &Client) {
    let request = GroupRequest {
        ordering: Some(GroupOrdering::PerStream),
        ack_timeout_ms: Some(30_000),
        ..GroupRequest::default()
    };
    let put = client.put_group(GROUP, &request).await.unwrap();
    assert!(put.created);
}

/// What the workers saw, checked as it happens: a position is never handed out while
/// an earlier delivery of it is unanswered, a stream never has two events out at once,
/// and each stream's events come in version order.
#[derive(Default)]
struct Ledger {
    /// Delivered, not yet acknowledged: position → stream.
    outstanding: HashMap<u64, String>,
    /// Streams with an event out.
    busy: HashSet<String>,
    /// The last version delivered per stream.
    last_version: HashMap<String, u64>,
    /// The highest version delivered per stream, at any time.
    highest_version: HashMap<String, u64>,
    acked: HashSet<u64>,
    deliveries: usize,
    /// Deliveries per instance the claim went through.
    through: HashMap<String, usize>,
    /// Whether a redelivery (after a crash) is acceptable.
    redeliveries_allowed: bool,
}

impl Ledger {
    fn delivered(&mut self, through: &str, position: u64, stream: &str, version: u64) {
        let first_out = self
            .outstanding
            .insert(position, stream.to_owned())
            .is_none();
        let stream_free = self.busy.insert(stream.to_owned());
        let previous = self.last_version.insert(stream.to_owned(), version);
        let highest = self.highest_version.get(stream).copied();
        self.highest_version.insert(
            stream.to_owned(),
            highest.map_or(version, |h| h.max(version)),
        );
        if !self.redeliveries_allowed {
            assert!(
                first_out,
                "position {position} delivered again while its first delivery is unanswered"
            );
            assert!(
                stream_free,
                "two events of {stream} out at once (position {position})"
            );
            assert!(
                !self.acked.contains(&position),
                "position {position} delivered after it was acknowledged"
            );
            assert_eq!(
                previous.map_or(0, |v| v + 1),
                version,
                "{stream} out of order"
            );
        } else if let Some(highest) = highest {
            // After a takeover a stream restarts from its first event the stored
            // checkpoint does not cover, so versions delivered before come again; and an
            // acknowledgement of the old owner's delivery, retried to the new owner, may
            // settle the new owner's delivery of that event before the consumer that
            // got it has recorded it. What never happens: an event handed out before
            // every earlier event of its stream was handed out at least once.
            assert!(
                version <= highest + 1,
                "{stream}: version {version} before any delivery of {} (previous {previous:?})",
                highest + 1
            );
        }
        self.deliveries += 1;
        *self.through.entry(through.to_owned()).or_default() += 1;
    }

    /// Called before the ack is sent, so that the next event of the stream, which the
    /// server may hand out as soon as the ack lands, finds the stream free.
    fn acking(&mut self, position: u64) {
        if let Some(stream) = self.outstanding.remove(&position) {
            self.busy.remove(&stream);
        }
        self.acked.insert(position);
    }
}

/// The instance that drives the group (as recorded in the database) and the other.
async fn owner_and_other(database: &TestDatabase, servers: &[Server; 2]) -> (usize, usize) {
    let (url, _) = owner(database).await;
    let url = url.expect("an instance drives the group");
    match servers.iter().position(|server| server.url == url) {
        Some(0) => (0, 1),
        Some(_) => (1, 0),
        None => panic!("the owner {url} is neither instance"),
    }
}

/// Two instances on `database`, each in a data dir of its own (kept alive with them).
fn two_instances(database: &TestDatabase) -> ([tempfile::TempDir; 2], [Server; 2]) {
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let servers = [
        start(&dirs[0], &database.primary_url),
        start(&dirs[1], &database.primary_url),
    ];
    (dirs, servers)
}

/// Appends `events` events and creates the group through the first instance; returns
/// the instance that drives the group, then the other.
async fn with_a_group<'s>(
    database: &TestDatabase,
    servers: &'s [Server; 2],
    events: usize,
) -> (&'s Server, &'s Server) {
    append_events(&client(&servers[0]), events).await;
    create_group(&client(&servers[0])).await;
    let (owner, other) = owner_and_other(database, servers).await;
    (&servers[owner], &servers[other])
}

/// One worker: claims through `server` and acknowledges each delivery, until every
/// position up to `last` is acknowledged; retries 503s and lost connections.
async fn work(
    client: Client,
    through: String,
    last: u64,
    ledger: Arc<Mutex<Ledger>>,
    first_claim_after: Arc<Mutex<Option<Instant>>>,
) {
    let request = ClaimRequest {
        consumer: through.clone(),
        max: Some(3),
        wait_ms: Some(200),
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "the workers did not finish");
        if ledger.lock().unwrap().acked.len() as u64 >= last {
            return;
        }
        let claimed = match client.claim(GROUP, &request).await {
            Ok(claimed) => claimed,
            Err(error) if retryable(&error) => {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            Err(error) => panic!("claim through {through}: {error}"),
        };
        {
            let mut first = first_claim_after.lock().unwrap();
            if first.is_none() {
                *first = Some(Instant::now());
            }
        }
        let mut positions = Vec::new();
        {
            let mut ledger = ledger.lock().unwrap();
            for delivery in &claimed.deliveries {
                let event = &delivery.event;
                ledger.delivered(&through, delivery.position, &event.stream, event.version);
                positions.push(delivery.position);
            }
            for position in &positions {
                ledger.acking(*position);
            }
        }
        if positions.is_empty() {
            continue;
        }
        loop {
            match client.ack(GROUP, &positions).await {
                Ok(_) => break,
                Err(error) if retryable(&error) => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(error) => panic!("ack through {through}: {error}"),
            }
        }
    }
}

#[test]
fn workers_on_two_instances_share_a_group_without_overlap_and_in_stream_order() {
    let runtime = runtime();
    let Some(database) = runtime.block_on(shared_database()) else {
        return;
    };
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = start(&dir_a, &database.primary_url);
    let b = start(&dir_b, &database.primary_url);
    const EVENTS: usize = 240;
    runtime.block_on(async {
        let last = append_events(&client(&a), EVENTS).await;
        assert_eq!(last, EVENTS as u64);
        // Created through b (which takes it, unless a's next round was faster); the
        // other forwards to the owner.
        create_group(&client(&b)).await;
        assert!(owner(&database).await.0.is_some());

        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let started = Arc::new(Mutex::new(None));
        let workers: Vec<_> = [&a, &a, &b, &b]
            .iter()
            .map(|server| {
                tokio::spawn(work(
                    client(server),
                    server.url.clone(),
                    last,
                    Arc::clone(&ledger),
                    Arc::clone(&started),
                ))
            })
            .collect();
        for worker in workers {
            worker.await.unwrap();
        }
        {
            let ledger = ledger.lock().unwrap();
            assert_eq!(ledger.acked.len(), EVENTS, "every event acknowledged");
            assert_eq!(ledger.deliveries, EVENTS, "each delivered exactly once");
            for server in [&a, &b] {
                assert!(
                    ledger.through.get(&server.url).copied().unwrap_or(0) > 0,
                    "workers through {} got deliveries: {:?}",
                    server.url,
                    ledger.through
                );
            }
        }

        // Status through either instance: the owner's live figures.
        for server in [&a, &b] {
            let status = client(server).group_status(GROUP).await.unwrap();
            assert_eq!((status.checkpoint, status.in_flight), (last, 0));
        }
        let listed = client(&a).list_groups().await.unwrap();
        assert_eq!(listed.groups.len(), 1);
        assert_eq!(listed.groups[0].checkpoint, last);
        assert_eq!(stored_checkpoint(&database).await, last);
    });
}

#[test]
fn a_sigkilled_owner_hands_its_group_to_the_survivor_within_seconds() {
    let runtime = runtime();
    let Some(database) = runtime.block_on(shared_database()) else {
        return;
    };
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut servers = [
        start(&dir_a, &database.primary_url),
        start(&dir_b, &database.primary_url),
    ];
    const EVENTS: usize = 400;
    runtime.block_on(async {
        let last = append_events(&client(&servers[1]), EVENTS).await;
        create_group(&client(&servers[0])).await;
        let (_, epoch_before) = owner(&database).await;
        let (owner_index, _) = owner_and_other(&database, &servers).await;
        let [first, second] = &mut servers;
        let (a, b) = if owner_index == 0 {
            (first, &*second)
        } else {
            (second, &*first)
        };

        // Workers claim through the survivor only: every claim is forwarded to a.
        let ledger = Arc::new(Mutex::new(Ledger {
            redeliveries_allowed: true,
            ..Ledger::default()
        }));
        let unused = Arc::new(Mutex::new(None));
        let workers: Vec<_> = (0..2)
            .map(|_| {
                tokio::spawn(work(
                    client(b),
                    b.url.clone(),
                    last,
                    Arc::clone(&ledger),
                    Arc::clone(&unused),
                ))
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(30);
        while ledger.lock().unwrap().acked.len() < EVENTS / 4 {
            assert!(Instant::now() < deadline, "no progress through b");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }

        // SIGKILL the owner with deliveries in flight. A probe through b measures how
        // long until a claim is answered again: only an owner answers one.
        a.kill();
        let killed = Instant::now();
        let probe = client(b);
        let request = ClaimRequest {
            consumer: "probe".into(),
            max: Some(1),
            wait_ms: Some(0),
        };
        let failover = loop {
            match probe.claim(GROUP, &request).await {
                Ok(claimed) => {
                    let took = killed.elapsed();
                    let mut positions = Vec::new();
                    {
                        let mut ledger = ledger.lock().unwrap();
                        for delivery in &claimed.deliveries {
                            let event = &delivery.event;
                            ledger.delivered(
                                "probe",
                                delivery.position,
                                &event.stream,
                                event.version,
                            );
                            ledger.acking(delivery.position);
                            positions.push(delivery.position);
                        }
                    }
                    if !positions.is_empty() {
                        probe.ack(GROUP, &positions).await.unwrap();
                    }
                    break took;
                }
                Err(error) if retryable(&error) => {
                    assert!(
                        killed.elapsed() < Duration::from_secs(10),
                        "no instance took the group over: {error}"
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(error) => panic!("probe: {error}"),
            }
        };
        eprintln!("group failover after SIGKILL: {failover:?}");
        assert!(
            failover < Duration::from_secs(5),
            "the survivor took {failover:?} to take the group over"
        );
        let (url, epoch_after) = owner(&database).await;
        assert_eq!(url.as_deref(), Some(b.url.as_str()), "b drives it now");
        assert!(
            epoch_after > epoch_before,
            "{epoch_after} after {epoch_before}"
        );

        for worker in workers {
            worker.await.unwrap();
        }
        assert_eq!(
            ledger.lock().unwrap().acked,
            (1..=last).collect::<HashSet<_>>(),
            "every event acknowledged, none lost"
        );
        let status = client(b).group_status(GROUP).await.unwrap();
        assert_eq!((status.checkpoint, status.in_flight), (last, 0));
        assert_eq!(stored_checkpoint(&database).await, last, "durable");
        // The survivor logged the takeover.
        b.wait_for_logs(|logs| {
            logs.iter()
                .any(|line| line.contains("consumer group taken: this instance drives it"))
        });
    });
}

#[test]
fn a_request_already_forwarded_is_not_forwarded_again() {
    let runtime = runtime();
    let Some(database) = runtime.block_on(shared_database()) else {
        return;
    };
    let (_dirs, servers) = two_instances(&database);
    runtime.block_on(async {
        let (a, b) = with_a_group(&database, &servers, 3).await;
        let claims_at_a = || {
            a.logs()
                .iter()
                .filter(|line| line.contains("\"route\":\"/v1/groups/{group}/claim\""))
                .filter(|line| line.contains("\"message\":\"request\""))
                .count()
        };
        let http = reqwest::Client::new();
        let claim = |marked: bool| {
            let mut request = http
                .post(format!("{}/v1/groups/{GROUP}/claim", b.url))
                .header("content-type", "application/json")
                .header("x-request-id", "forward-test")
                .body(r#"{"consumer":"c","max":1}"#);
            if marked {
                request = request.header("cairn-forwarded-by", "http://127.0.0.1:9");
            }
            request.send()
        };

        // Marked as forwarded already: b does not drive the group, so it answers 503
        // itself and a never sees the request.
        let before = claims_at_a();
        let refused = claim(true).await.unwrap();
        assert_eq!(refused.status(), 503);
        assert_eq!(
            refused
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok()),
            Some("1")
        );
        let body: serde_json::Value = refused.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unavailable");
        assert_eq!(claims_at_a(), before, "a got the request");

        // Not marked: b forwards it once, and a answers, under the client's request id.
        let forwarded = claim(false).await.unwrap();
        assert_eq!(forwarded.status(), 200);
        let body: serde_json::Value = forwarded.json().await.unwrap();
        assert_eq!(body["deliveries"][0]["position"], 1);
        let deadline = Instant::now() + Duration::from_secs(5);
        while claims_at_a() == before {
            assert!(
                Instant::now() < deadline,
                "a never logged the forwarded claim"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let logged = a.logs();
        let line = logged
            .iter()
            .find(|line| line.contains("\"route\":\"/v1/groups/{group}/claim\""))
            .unwrap();
        assert!(line.contains("forward-test"), "{line}");
    });
}

#[test]
fn every_group_route_through_another_instance_is_answered_by_the_owner() {
    let runtime = runtime();
    let Some(database) = runtime.block_on(shared_database()) else {
        return;
    };
    let (_dirs, servers) = two_instances(&database);
    runtime.block_on(async {
        let (a, b) = with_a_group(&database, &servers, 2).await;
        let http = reqwest::Client::new();
        // Sends through b under a request id of its own; returns status and body.
        let call = |method: reqwest::Method, path: String, body: Option<&str>, id: &str| {
            let mut request = http
                .request(method, format!("{}{path}", b.url))
                .header("x-request-id", id.to_owned());
            if let Some(body) = body {
                request = request
                    .header("content-type", "application/json")
                    .body(body.to_owned());
            }
            async move {
                let answer = request.send().await.unwrap();
                let status = answer.status().as_u16();
                let body: serde_json::Value = answer.json().await.unwrap_or_default();
                (status, body)
            }
        };
        let group = format!("/v1/groups/{GROUP}");
        let steps: Vec<(reqwest::Method, String, Option<&str>, u16)> = vec![
            (reqwest::Method::GET, group.clone(), None, 200),
            (
                reqwest::Method::PUT,
                group.clone(),
                Some(r#"{"ordering":"per_stream","ack_timeout_ms":20000}"#),
                200,
            ),
            (
                reqwest::Method::POST,
                format!("{group}/claim"),
                Some(r#"{"consumer":"c","max":1}"#),
                200,
            ),
            (
                reqwest::Method::POST,
                format!("{group}/nack"),
                Some(r#"{"positions":[1]}"#),
                200,
            ),
            (
                reqwest::Method::POST,
                format!("{group}/claim"),
                Some(r#"{"consumer":"c","max":1}"#),
                200,
            ),
            (
                reqwest::Method::POST,
                format!("{group}/ack"),
                Some(r#"{"positions":[1]}"#),
                200,
            ),
            (reqwest::Method::GET, format!("{group}/parked"), None, 200),
            (
                reqwest::Method::POST,
                format!("{group}/parked/replay"),
                Some("{}"),
                200,
            ),
        ];
        let mut answers = Vec::new();
        for (index, (method, path, body, expected)) in steps.into_iter().enumerate() {
            let id = format!("through-b-{index}");
            let (status, answer) = call(method.clone(), path.clone(), body, &id).await;
            assert_eq!(status, expected, "{method} {path}: {answer}");
            answers.push(answer);
            // The owner served it: its log has the request line under the same id.
            let deadline = Instant::now() + Duration::from_secs(5);
            while !a
                .logs()
                .iter()
                .any(|line| line.contains("\"message\":\"request\"") && line.contains(&id))
            {
                assert!(
                    Instant::now() < deadline,
                    "the owner never served {method} {path}"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        assert_eq!(answers[1]["settings"]["ack_timeout_ms"], 20_000);
        assert_eq!(answers[2]["deliveries"][0]["position"], 1);
        assert_eq!(answers[3]["settled"], 1);
        assert_eq!(answers[4]["deliveries"][0]["attempt"], 2);
        assert_eq!(answers[5]["settled"], 1);
        assert_eq!(answers[6]["parked"], json!([]));
        assert_eq!(answers[7]["replayed"], 0);

        // Served by b itself: a bad name, a group nobody has, and creating a group.
        let (status, answer) =
            call(reqwest::Method::GET, "/v1/groups/$bad".into(), None, "bad").await;
        assert_eq!(
            (status, &answer["error"]["code"]),
            (400, &json!("invalid_request"))
        );
        let (status, answer) = call(
            reqwest::Method::GET,
            "/v1/groups/nobody".into(),
            None,
            "none",
        )
        .await;
        assert_eq!(
            (status, &answer["error"]["code"]),
            (404, &json!("not_found"))
        );
        let (status, _) = call(
            reqwest::Method::PUT,
            "/v1/groups/made-at-b".into(),
            Some("{}"),
            "new",
        )
        .await;
        assert_eq!(status, 201);

        // Deleting through b deletes at the owner.
        let (status, _) = call(reqwest::Method::DELETE, group.clone(), None, "delete").await;
        assert_eq!(status, 204);
        let gone = http.get(format!("{}{group}", a.url)).send().await.unwrap();
        assert_eq!(gone.status(), 404);
    });
}
