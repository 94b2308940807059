//! Commits whose outcome the writer cannot know: the connection breaks after the
//! database received the commit and before its answer came back. Retries must never
//! duplicate, so whatever the writer answers must match what the log holds. And a
//! commit the database failed for a passing reason (a cancelled statement) is
//! committed again rather than answered with the error.
//!
//! A proxy between the store and the test database makes the break happen at exactly
//! that moment: it holds back the database's answers on the connection that sent a
//! marked event once that connection sent its commit, waits until the event can be
//! read on another connection (the commit happened), and only then closes both ends.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_core::{EventFilter, ExpectedVersion};
use cairn_store::conformance::{event, stream, whole_log};
use cairn_store::postgres::{PostgresOptions, PostgresStore};
use cairn_store::tail::LogTail;
use cairn_store::testing::{self, TestDatabase};
use cairn_store::{
    AppendOutcome, AppendRequest, AppendResult, EventStore, IdempotencyClaim, StoreError,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_postgres::types::{FromSql, ToSql};

use crate::postgres::{append_one, options, sql};

/// What the proxy is told to cut, and how it tells the test.
#[derive(Default)]
struct Plan {
    /// Bytes that mark the connection to cut: the first connection whose client sends
    /// them takes them (so one connection at most is cut per arming).
    marker: Mutex<Option<Vec<u8>>>,
    /// Once a connection is marked, the client bytes (the marker's own write included)
    /// from which the database's answers are held back.
    then: Mutex<Vec<u8>>,
    /// A connection's answers are being held back.
    held: Notify,
    /// The test asks to close the held connection.
    cut: Notify,
}

/// A TCP proxy in front of the test database.
struct CutProxy {
    port: u16,
    plan: Arc<Plan>,
}

impl CutProxy {
    async fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let plan = Arc::new(Plan::default());
        let accepting = Arc::clone(&plan);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let plan = Arc::clone(&accepting);
                tokio::spawn(async move {
                    // A connection ends when either side closes it or the test cuts it.
                    let _ = relay(client, upstream, &plan).await;
                });
            }
        });
        Self { port, plan }
    }

    fn url(&self, database: &TestDatabase) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{}",
            self.port, database.name
        )
    }

    /// The next connection whose client sends `marker` is held once it sends `then`.
    fn arm(&self, marker: &str, then: &str) {
        *self.plan.marker.lock().unwrap() = Some(marker.as_bytes().to_vec());
        *self.plan.then.lock().unwrap() = then.as_bytes().to_vec();
    }

    async fn held(&self) {
        tokio::time::timeout(Duration::from_secs(20), self.plan.held.notified())
            .await
            .expect("the marked connection sent its commit");
    }

    fn cut(&self) {
        self.plan.cut.notify_one();
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty()
        && haystack
            .windows(needle.len())
            .any(|window| window == needle)
}

async fn relay(client: TcpStream, upstream: u16, plan: &Plan) -> std::io::Result<()> {
    let server = TcpStream::connect(("127.0.0.1", upstream)).await?;
    let (mut from_client, mut to_client) = client.into_split();
    let (mut from_server, mut to_server) = server.into_split();
    let mut up = vec![0; 64 * 1024];
    let mut down = vec![0; 64 * 1024];
    let mut marked = false;
    let mut holding = false;
    loop {
        tokio::select! {
            read = from_client.read(&mut up) => {
                let n = read?;
                if n == 0 {
                    return Ok(());
                }
                let chunk = &up[..n];
                if !marked {
                    let mut marker = plan.marker.lock().unwrap();
                    if marker.as_deref().is_some_and(|m| contains(chunk, m)) {
                        *marker = None;
                        marked = true;
                    }
                }
                if marked && !holding && contains(chunk, &plan.then.lock().unwrap()) {
                    // Held before the commit goes on: no answer to it can slip through.
                    holding = true;
                    plan.held.notify_one();
                }
                to_server.write_all(chunk).await?;
            }
            read = from_server.read(&mut down), if !holding => {
                let n = read?;
                if n == 0 {
                    return Ok(());
                }
                to_client.write_all(&down[..n]).await?;
            }
            () = plan.cut.notified(), if holding => return Ok(()),
        }
    }
}

const MARKER: &str = "cut-after-commit-5d1e";

/// One event to `name` whose data carries the marker.
fn marked_append(name: &str) -> AppendRequest {
    AppendRequest::single(
        stream(name),
        ExpectedVersion::Any,
        vec![event("Marked", &format!("{{\"m\":\"{MARKER}\"}}"))],
    )
}

/// The marked append under an idempotency key; the answer it stores is
/// `{"p":<first position>}`.
fn keyed(request: AppendRequest) -> AppendRequest {
    AppendRequest {
        idempotency: Some(IdempotencyClaim {
            key: "cut-key".into(),
            fingerprint: [7; 32],
            render: |r: &AppendResult| format!("{{\"p\":{}}}", r.first_position),
        }),
        ..request
    }
}

/// The first column of `query`'s first row, asked every 10 ms until there is one
/// (failing the test after 20 s, saying `what` never happened).
async fn first_row<T: for<'a> FromSql<'a>>(
    client: &tokio_postgres::Client,
    query: &str,
    parameters: &[&(dyn ToSql + Sync)],
    what: &str,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let rows = client.query(query, parameters).await.unwrap();
        if let Some(row) = rows.first() {
            return row.get(0);
        }
        assert!(Instant::now() < deadline, "{what} never happened");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// What a commit left, read on a connection of its own once it committed.
async fn once_committed(database: &TestDatabase, query: &str, parameter: &str) -> i64 {
    let direct = sql(&database.primary_url).await;
    first_row(
        &direct,
        query,
        &[&parameter],
        "the held commit's becoming visible",
    )
    .await
}

/// A store on a fresh database whose every connection goes through a cutting proxy.
struct Cutting {
    proxy: CutProxy,
    database: TestDatabase,
    store: Arc<PostgresStore>,
    /// A live reader of the whole log, following it since before the first append.
    tail: LogTail,
}

impl Cutting {
    /// After one append to each of `warm` (two make the writer decide from memory).
    /// `None` when the PostgreSQL tests are skipped.
    async fn start(overlap_min_events: usize, warm: &[&str]) -> Option<Self> {
        Self::start_with(
            overlap_min_events,
            warm,
            PostgresOptions::new("").write_timeout,
        )
        .await
    }

    /// The same, with commits timing out after `write_timeout`.
    async fn start_with(
        overlap_min_events: usize,
        warm: &[&str],
        write_timeout: Duration,
    ) -> Option<Self> {
        let database = testing::shared_database().await?;
        let proxy = CutProxy::start(port_of(&database)).await;
        let store = Arc::new(
            PostgresStore::connect(PostgresOptions {
                url: proxy.url(&database),
                overlap_min_events,
                write_timeout,
                ..options(&database)
            })
            .await
            .unwrap(),
        );
        let tail = LogTail::new(store.clone(), 1, EventFilter::default());
        for name in warm {
            append_one(store.as_ref(), name).await;
        }
        Some(Self {
            proxy,
            database,
            store,
            tail,
        })
    }

    /// Runs `write` with its connection held once it sent `then` after the marker, and
    /// cut once `query` (on `parameter`) finds what the commit left. Returns the answer
    /// and the first column of what `query` found.
    async fn cut_after_commit<T: Send + 'static>(
        &self,
        then: &str,
        write: impl Future<Output = T> + Send + 'static,
        query: &str,
        parameter: &str,
    ) -> (T, i64) {
        self.proxy.arm(MARKER, then);
        let answer = tokio::spawn(write);
        self.proxy.held().await;
        let found = once_committed(&self.database, query, parameter).await;
        self.proxy.cut();
        let answer = tokio::time::timeout(Duration::from_secs(30), answer)
            .await
            .expect("the write is answered")
            .unwrap();
        (answer, found)
    }

    /// Appends `request` (which carries the marker) with its connection cut after its
    /// commit; returns the answer and the position the commit took.
    async fn append(
        &self,
        then: &str,
        request: AppendRequest,
    ) -> (Result<AppendOutcome, StoreError>, i64) {
        let store = Arc::clone(&self.store);
        self.cut_after_commit(
            then,
            async move { store.append(request).await },
            "SELECT position FROM events WHERE data LIKE '%' || $1 || '%'",
            MARKER,
        )
        .await
    }
}

/// The marked append, cut off after its commit, is answered with the commit that
/// stands, and the log stays whole.
async fn answered_as_it_stands(overlap_min_events: usize, warm: &[&str], then: &str) {
    let Some(mut cutting) = Cutting::start(overlap_min_events, warm).await else {
        return;
    };
    let (answer, position) = cutting.append(then, marked_append("m")).await;
    committed_at(answer, position);
    cutting.log_is_whole_after().await;
}

impl Cutting {
    /// The log holds the marked event once and every position once, in order, and the
    /// store goes on appending after the cut. The live reader saw the same positions:
    /// the lost commit's events reach readers even though the writer never published
    /// them itself.
    async fn log_is_whole_after(&mut self) {
        let after = append_one(self.store.as_ref(), "after").await;
        let log = whole_log(self.store.as_ref()).await;
        let positions: Vec<u64> = log.iter().map(|e| e.position).collect();
        let expected: Vec<u64> = (1..=after.last_position).collect();
        assert_eq!(positions, expected, "positions gapless and in order");
        let marked = log.iter().filter(|e| e.data.contains(MARKER)).count();
        assert_eq!(marked, 1, "the marked event is stored exactly once");
        let mut followed = Vec::new();
        while followed.last() != Some(&after.last_position) {
            let batch = tokio::time::timeout(Duration::from_secs(10), self.tail.next_batch())
                .await
                .expect("the live reader reaches the last append")
                .unwrap();
            followed.extend(batch.iter().map(|e| e.position));
        }
        assert_eq!(
            followed, expected,
            "the live reader saw every position once"
        );
    }
}

fn committed_at(answer: Result<AppendOutcome, StoreError>, position: i64) {
    match answer {
        Ok(AppendOutcome::Committed(result)) => {
            assert_eq!(
                i64::try_from(result.first_position).unwrap(),
                position,
                "answered with the position the commit took"
            );
        }
        other => panic!("expected the commit that stands, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_commit_cut_after_it_committed_is_answered_as_it_stands() {
    // Two commits: the next batch is decided from memory and sent as one statement.
    answered_as_it_stands(0, &["warm-1", "warm-2"], MARKER).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_looked_up_commit_cut_after_it_committed_is_answered_as_it_stands() {
    // A new store knows nothing of the log: its first batch is looked up, and its
    // writes and `COMMIT` go in the second round trip.
    answered_as_it_stands(0, &[], MARKER).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overlapped_commit_cut_after_it_committed_is_answered_as_it_stands() {
    // Every batch flies: its rows go first, its `COMMIT` after the head update.
    answered_as_it_stands(1, &["warm-1", "warm-2"], "COMMIT").await;
}

fn port_of(database: &TestDatabase) -> u16 {
    let after_host = database
        .primary_url
        .rsplit_once(':')
        .map(|(_, rest)| rest)
        .unwrap();
    after_host.split('/').next().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_cut_after_it_committed_is_answered_unknown_and_stands() {
    let Some(cutting) = Cutting::start(0, &["warm-1"]).await else {
        return;
    };
    let store = &cutting.store;
    let doomed = format!("doomed-{MARKER}");
    let version = append_one(store.as_ref(), &doomed).await.streams[0].last_version;
    // The delete is decided from memory and sent as one statement that names the stream.
    let deleting = Arc::clone(store);
    let name = doomed.clone();
    let (answer, _) = cutting
        .cut_after_commit(
            MARKER,
            async move {
                deleting
                    .delete_stream(&stream(&name), ExpectedVersion::Exact(version))
                    .await
            },
            "SELECT version FROM streams WHERE name = $1 AND deleted",
            &doomed,
        )
        .await;
    // A lookup would find the stream deleted, which cannot tell this delete from a
    // later one: the answer says the outcome is unknown, and never that it failed.
    match answer {
        Err(StoreError::Unavailable(message)) => {
            assert!(message.contains("outcome is unknown"), "{message}");
        }
        other => panic!("expected an unknown outcome, got {other:?}"),
    }
    assert!(matches!(
        store
            .delete_stream(&stream(&doomed), ExpectedVersion::Any)
            .await,
        Err(StoreError::StreamDeleted(_))
    ));
    let after = append_one(store.as_ref(), "after").await;
    assert_eq!(after.first_position, 3, "positions go on gapless");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_append_cut_after_it_committed_is_answered_with_its_stored_answer() {
    let Some(mut cutting) = Cutting::start(0, &["warm-1", "warm-2"]).await else {
        return;
    };
    let (answer, position) = cutting.append(MARKER, keyed(marked_append("m"))).await;
    // The lookup finds the key the commit stored: its answer is the one stored.
    let stored = format!("{{\"p\":{position}}}");
    match answer {
        Ok(AppendOutcome::Replayed { body }) => assert_eq!(body, stored),
        other => panic!("expected the stored answer, got {other:?}"),
    }
    // Sent again, it is answered the same way and stores nothing.
    match cutting.store.append(keyed(marked_append("m"))).await {
        Ok(AppendOutcome::Replayed { body }) => assert_eq!(body, stored),
        other => panic!("expected the stored answer, got {other:?}"),
    }
    cutting.log_is_whole_after().await;
}

/// Runs `write` on a store that knows nothing of the log yet (so its batch is looked
/// up, and its writes and `COMMIT` go in the second round trip) while another session
/// holds the row of the stream `contended`, which one append made. Once the batch waits
/// for that row, its statement is cancelled and the row released. Returns the write's
/// answer and the store.
async fn cancelled_while_waiting<F, T>(
    database: &TestDatabase,
    write: impl FnOnce(Arc<PostgresStore>) -> F,
) -> (T, Arc<PostgresStore>)
where
    F: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let first = PostgresStore::connect(options(database)).await.unwrap();
    append_one(&first, "contended").await;
    let holder = sql(&database.primary_url).await;
    holder
        .batch_execute("BEGIN; SELECT 1 FROM streams WHERE name = 'contended' FOR UPDATE")
        .await
        .unwrap();
    let store = Arc::new(PostgresStore::connect(options(database)).await.unwrap());
    let answer = tokio::spawn(write(Arc::clone(&store)));
    let watcher = sql(&database.primary_url).await;
    let waiting: i32 = first_row(
        &watcher,
        "SELECT pid FROM pg_locks WHERE locktype = 'transactionid' AND NOT granted",
        &[],
        "the batch's waiting for the row",
    )
    .await;
    let cancelled: bool = watcher
        .query_one("SELECT pg_cancel_backend($1)", &[&waiting])
        .await
        .unwrap()
        .get(0);
    assert!(cancelled);
    holder.batch_execute("ROLLBACK").await.unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(30), answer)
        .await
        .expect("the write is answered")
        .unwrap();
    (answer, store)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_looked_up_commit_the_database_cancelled_is_committed_again() {
    let Some(database) = testing::shared_database().await else {
        return;
    };
    let (appended, store) = cancelled_while_waiting(&database, |store| async move {
        append_one(store.as_ref(), "contended").await
    })
    .await;
    // The cancelled transaction rolled back; the batch is looked up and committed again.
    assert_eq!(appended.first_position, 2);
    assert_eq!(appended.streams[0].last_version, 1);
    let log = whole_log(store.as_ref()).await;
    let positions: Vec<u64> = log.iter().map(|e| e.position).collect();
    assert_eq!(positions, vec![1, 2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_looked_up_delete_the_database_cancelled_is_committed_again() {
    let Some(database) = testing::shared_database().await else {
        return;
    };
    let (deleted, store) = cancelled_while_waiting(&database, |store| async move {
        store
            .delete_stream(&stream("contended"), ExpectedVersion::Exact(0))
            .await
    })
    .await;
    // The database's error says the batch rolled back: even a delete is tried again.
    assert_eq!(deleted.unwrap(), 0);
    assert!(matches!(
        store
            .delete_stream(&stream("contended"), ExpectedVersion::Any)
            .await,
        Err(StoreError::StreamDeleted(_))
    ));
}

/// The marked append's answers are held back after its commit and never come: the
/// writer gives up after its write timeout and answers that the outcome is unknown,
/// never success, though the commit stands (and is found, once, by the next reads).
async fn timed_out_commit_is_answered_unknown(overlap_min_events: usize, then: &str) {
    let Some(mut cutting) = Cutting::start_with(
        overlap_min_events,
        &["warm-1", "warm-2"],
        Duration::from_secs(1),
    )
    .await
    else {
        return;
    };
    cutting.proxy.arm(MARKER, then);
    let store = Arc::clone(&cutting.store);
    let answer = tokio::spawn(async move { store.append(marked_append("m")).await });
    cutting.proxy.held().await;
    once_committed(
        &cutting.database,
        "SELECT position FROM events WHERE data LIKE '%' || $1 || '%'",
        MARKER,
    )
    .await;
    let answer = tokio::time::timeout(Duration::from_secs(30), answer)
        .await
        .expect("the append is answered")
        .unwrap();
    match answer {
        Err(StoreError::Unavailable(message)) => {
            assert!(message.contains("outcome is unknown"), "{message}");
        }
        other => panic!("expected an unknown outcome, got {other:?}"),
    }
    cutting.proxy.cut();
    cutting.log_is_whole_after().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_commit_whose_answer_never_comes_is_answered_unknown() {
    timed_out_commit_is_answered_unknown(0, MARKER).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overlapped_commit_whose_answer_never_comes_is_answered_unknown() {
    timed_out_commit_is_answered_unknown(1, "COMMIT").await;
}
