//! `cairn serve --database-url`: several real `cairn` processes on one throw-away
//! PostgreSQL (`cairn_store::testing`), a streaming replica in `/health/ready`, and the
//! start errors. Without the PostgreSQL binaries the tests that need a database are
//! skipped loudly by the harness (they fail when `CI` is set).

use std::time::{Duration, Instant};

use cairn_client::{Client, ExpectedVersion, ReadAllOptions, event};
use cairn_store::testing::{PgCluster, TestDatabase, shared_database};
use serde_json::json;

use crate::support::{Server, http_get, ok, run, stderr};

/// Put in every URL the tests give `cairn`; the harness's servers trust local
/// connections, so it is never checked, and it must never be printed.
const PASSWORD: &str = "Sup3rSecretPassw0rd";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// `postgres://postgres@…` with the password added.
fn with_password(url: &str) -> String {
    url.replacen(
        "postgres://postgres@",
        &format!("postgres://postgres:{PASSWORD}@"),
        1,
    )
}

fn assert_no_password(logs: &[String]) {
    for line in logs {
        assert!(!line.contains(PASSWORD), "the password was logged: {line}");
    }
}

/// `cairn serve --database-url URL extra…` in a data dir of its own.
fn start(data: &tempfile::TempDir, url: &str, extra: &[&str]) -> Server {
    let mut args = vec!["--database-url", url];
    args.extend_from_slice(extra);
    Server::start_with(&data.path().join("data"), "127.0.0.1:0", &args)
}

#[test]
fn two_instances_on_one_database_share_one_gapless_log() {
    let runtime = runtime();
    let Some(TestDatabase { primary_url, .. }) = runtime.block_on(shared_database()) else {
        return;
    };
    let url = with_password(&primary_url);
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = start(&dir_a, &url, &[]);
    let b = start(&dir_b, &url, &["--pool-size", "4"]);
    let (client_a, client_b) = (Client::new(&a.url).unwrap(), Client::new(&b.url).unwrap());

    const PER_INSTANCE: usize = 40;
    runtime.block_on(async {
        // Both instances append at once, to shared streams and streams of their own.
        let appends = (0..PER_INSTANCE).flat_map(|index| {
            [(&client_a, "a"), (&client_b, "b")].map(|(client, name)| async move {
                let stream = if index % 2 == 0 {
                    format!("shared-{}", index % 4)
                } else {
                    format!("{name}-{index}")
                };
                client
                    .append(
                        &stream,
                        ExpectedVersion::Any,
                        vec![
                            event("Appended", json!({ "by": name, "index": index })),
                            event("Appended", json!({ "by": name, "index": index, "n": 2 })),
                        ],
                    )
                    .await
                    .unwrap_or_else(|error| panic!("append through {name}: {error}"))
            })
        });
        let answers = futures::future::join_all(appends).await;
        let total = (PER_INSTANCE * 2 * 2) as u64;
        let mut positions: Vec<u64> = answers
            .iter()
            .flat_map(|answer| answer.first_position..=answer.last_position)
            .collect();
        positions.sort_unstable();
        assert_eq!(
            positions,
            (1..=total).collect::<Vec<_>>(),
            "answered positions"
        );

        // Each instance reads the whole log, appended through both: gapless, the same.
        let mut logs = Vec::new();
        for client in [&client_a, &client_b] {
            let page = client
                .read_all(&ReadAllOptions {
                    limit: Some(1000),
                    ..Default::default()
                })
                .await
                .unwrap();
            assert_eq!(page.head_position, total);
            let read: Vec<u64> = page.events.iter().map(|event| event.position).collect();
            assert_eq!(read, (1..=total).collect::<Vec<_>>(), "positions read");
            logs.push(
                page.events
                    .iter()
                    .map(|event| (event.position, event.id, event.stream.clone()))
                    .collect::<Vec<_>>(),
            );
        }
        assert_eq!(logs[0], logs[1], "both instances read one log");

        // A stream written through A is read through B at once (reads go to the primary).
        let written = client_a
            .append(
                "late-1",
                ExpectedVersion::NoStream,
                vec![event("Late", json!({}))],
            )
            .await
            .unwrap();
        assert_eq!(written.first_position, total + 1);
        let read = client_b
            .read_stream("late-1", &Default::default())
            .await
            .unwrap();
        assert_eq!(read.events.len(), 1);
        assert_eq!(read.events[0].position, total + 1);
    });

    // The CLI through the other instance sees it too.
    let tail = ok(run(&["read", "late-1", "--url", &b.url]));
    assert!(tail.contains("\"Late\""), "{tail}");

    // Appends through A alone soon commit in one round trip, from what A remembers;
    // one through B in between is seen (A's next batch is looked up again).
    runtime.block_on(async {
        // Enough appends through A alone that A is back on the cached path, however
        // often the concurrent appends above stopped it (it then waits for up to 32
        // quiet lookups in a row).
        for version in 1..=43u64 {
            let client = if version == 41 { &client_b } else { &client_a };
            // Right after B's append, A would refuse an expected version from memory
            // (and look it up); with none, A tries to commit from memory and is stopped.
            let expected = if version == 42 {
                ExpectedVersion::Any
            } else {
                ExpectedVersion::Exact(version - 1)
            };
            let written = client
                .append(
                    "late-1",
                    expected,
                    vec![event("Late", json!({ "version": version }))],
                )
                .await
                .unwrap_or_else(|error| panic!("append {version}: {error}"));
            assert_eq!(written.last_version, version);
        }
    });

    // Each group commit timed its phases, once per transaction; a cached one has no
    // lookup phase.
    let (status, metrics) = http_get(a.address(), "/metrics").unwrap();
    assert_eq!(status, 200);
    let count = |series: &str| -> u64 {
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(series))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series} in {metrics}"))
    };
    let commits = count("cairn_commit_duration_seconds_count ");
    let looked_up = count("cairn_group_commits_total{path=\"looked_up\"} ");
    let cached = count("cairn_group_commits_total{path=\"cached\"} ");
    // Batches this small never overlap (`--help`'s default is 200 events).
    assert!(!metrics.contains("path=\"overlapped\""), "{metrics}");
    assert!(cached >= 2, "{cached} cached commits");
    assert_eq!(looked_up + cached, commits);
    assert!(count("cairn_cached_commit_misses_total{reason=\"written_elsewhere\"} ") >= 1);
    for (phase, expected) in [
        ("lock_and_read", looked_up),
        ("decide", commits),
        ("write_and_commit", commits),
    ] {
        assert_eq!(
            count(&format!(
                "cairn_commit_phase_duration_seconds_count{{phase=\"{phase}\"}} "
            )),
            expected,
            "{phase}"
        );
    }

    for server in [&a, &b] {
        let logs = server.logs();
        assert_no_password(&logs);
        let listening = logs
            .iter()
            .find(|line| line.contains("cairn is listening"))
            .unwrap();
        assert!(listening.contains("\"store\":\"postgres\""), "{listening}");
        assert!(listening.contains("postgres:***@127.0.0.1"), "{listening}");
    }
}

/// 100-event appends from 16 clients at once: with the defaults, batches overlap (a
/// batch's rows are written while the one before it commits), and the log stays whole:
/// every answered position once, in order, each stream's versions as its client
/// expected them.
#[test]
fn large_batches_from_many_clients_overlap_and_keep_the_log_whole() {
    const CLIENTS: u64 = 16;
    const ROUNDS: u64 = 8;
    const EVENTS: u64 = 100;
    let runtime = runtime();
    let Some(TestDatabase { primary_url, .. }) = runtime.block_on(shared_database()) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir, &primary_url, &[]);
    let client = Client::new(&server.url).unwrap();
    runtime.block_on(async {
        let writers = (0..CLIENTS).map(|writer| {
            let client = &client;
            async move {
                let stream = format!("batch-{writer}");
                let mut answers = Vec::new();
                for round in 0..ROUNDS {
                    let expected = if round == 0 {
                        ExpectedVersion::NoStream
                    } else {
                        ExpectedVersion::Exact(round * EVENTS - 1)
                    };
                    let events = (0..EVENTS)
                        .map(|n| event("Batched", json!({ "round": round, "n": n })))
                        .collect();
                    let answer = client
                        .append(&stream, expected, events)
                        .await
                        .unwrap_or_else(|error| panic!("{stream}, round {round}: {error}"));
                    assert_eq!(answer.first_version, round * EVENTS, "{stream}");
                    assert_eq!(answer.last_position - answer.first_position, EVENTS - 1);
                    answers.push(answer);
                }
                answers
            }
        });
        let answers = futures::future::join_all(writers).await;
        let total = CLIENTS * ROUNDS * EVENTS;
        let mut answered: Vec<(u64, String)> = answers
            .iter()
            .flatten()
            .flat_map(|answer| {
                (answer.first_position..=answer.last_position).map(|p| (p, answer.stream.clone()))
            })
            .collect();
        answered.sort_unstable();
        let mut read = Vec::new();
        let mut from = 1;
        while from <= total {
            let page = client
                .read_all(&ReadAllOptions {
                    from_position: Some(from),
                    limit: Some(1000),
                    ..Default::default()
                })
                .await
                .unwrap();
            assert_eq!(page.head_position, total);
            read.extend(
                page.events
                    .iter()
                    .map(|event| (event.position, event.stream.clone())),
            );
            from = page.next_from_position;
        }
        assert_eq!(read, answered, "the log read is the log answered");
        assert_eq!(read.len() as u64, total);
    });
    let (status, metrics) = http_get(server.address(), "/metrics").unwrap();
    assert_eq!(status, 200);
    let overlapped = metrics
        .lines()
        .find_map(|line| line.strip_prefix("cairn_group_commits_total{path=\"overlapped\"} "))
        .and_then(|value| value.trim().parse::<u64>().ok());
    assert!(overlapped.is_some_and(|count| count >= 1), "{metrics}");
}

#[test]
fn replicas_show_in_health_ready() {
    let Some(cluster) = PgCluster::start(true) else {
        return;
    };
    let runtime = runtime();
    let database = runtime.block_on(cluster.create_database());
    let primary = with_password(&database.primary_url);
    let replica = with_password(database.replica_url.as_deref().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir, &primary, &["--replica-url", &replica]);
    let client = Client::new(&server.url).unwrap();
    runtime.block_on(async {
        client
            .append("r-1", ExpectedVersion::Any, vec![event("E", json!({}))])
            .await
            .unwrap()
    });

    let port = cluster.replica_port().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let health = loop {
        let (status, body) = http_get(server.address(), "/health/ready").unwrap();
        assert_eq!(status, 200, "{body}");
        let health: serde_json::Value = serde_json::from_str(&body).unwrap();
        let replica = &health["replicas"][0];
        // A probe that started before the append saw head 0 and lag 0: wait for one
        // after it.
        if replica["up"] == true && replica["replayed_position"] == 1 {
            break health;
        }
        assert!(
            Instant::now() < deadline,
            "the replica never caught up: {body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(health["status"], "ok");
    assert_eq!(health["head_position"], 1);
    let replicas = health["replicas"].as_array().unwrap();
    assert_eq!(replicas.len(), 1, "{health}");
    assert_eq!(
        replicas[0]["replica"],
        format!("127.0.0.1:{port}/{}", database.name)
    );
    assert_eq!(replicas[0]["lag_positions"], 0);
    assert!(!health.to_string().contains(PASSWORD));

    // A stopped replica shows as down; the instance stays ready on the primary.
    cluster.stop_replica();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = http_get(server.address(), "/health/ready").unwrap();
        assert_eq!(status, 200, "{body}");
        let health: serde_json::Value = serde_json::from_str(&body).unwrap();
        if health["replicas"][0]["up"] == false {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the replica never went down: {body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_no_password(&server.logs());
}

#[test]
fn the_embedded_store_shows_no_replicas() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let (_, body) = http_get(server.address(), "/health/ready").unwrap();
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(health.get("replicas").is_none(), "{body}");
}

/// `cairn serve ARGS` that must fail: its stderr, checked for the password, and how
/// long it took.
fn failing_serve(args: &[&str]) -> (String, Duration) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut all = vec![
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data.to_str().unwrap(),
        "--log-format",
        "json",
    ];
    all.extend_from_slice(args);
    let started = Instant::now();
    let output = run(&all);
    let took = started.elapsed();
    let stderr = stderr(&output);
    assert!(!output.status.success(), "cairn serve started: {stderr}");
    assert!(
        !stderr.contains(PASSWORD),
        "the password was printed: {stderr}"
    );
    (stderr, took)
}

#[test]
fn bad_database_urls_fail_fast_with_a_clear_message() {
    for url in [
        format!("mysql://cairn:{PASSWORD}@127.0.0.1/cairn"),
        format!("postgres://cairn:{PASSWORD}@127.0.0.1:notaport/cairn"),
        PASSWORD.to_owned(),
    ] {
        let (stderr, took) = failing_serve(&["--database-url", &url]);
        assert!(
            stderr.contains("invalid --database-url (or CAIRN_DATABASE_URL)"),
            "{stderr}"
        );
        assert!(took < Duration::from_secs(5), "{took:?}");
    }

    let (stderr, _) = failing_serve(&["--replica-url", "postgres://127.0.0.1/cairn"]);
    assert!(stderr.contains("--replica-url"), "{stderr}");
    assert!(stderr.contains("--database-url"), "{stderr}");

    let (stderr, _) = failing_serve(&[
        "--database-url",
        "postgres://127.0.0.1/cairn",
        "--replica-url",
        "http://127.0.0.1/cairn",
    ]);
    assert!(stderr.contains("invalid --replica-url"), "{stderr}");

    // Nobody listens on this port: refused at once, a clear error, a failing exit.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://cairn:{PASSWORD}@127.0.0.1:{port}/cairn");
    let (stderr, took) = failing_serve(&["--database-url", &url]);
    assert!(
        stderr.contains("cannot open the event store on PostgreSQL at"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("postgres://cairn:***@127.0.0.1:{port}/cairn")),
        "{stderr}"
    );
    assert!(took < Duration::from_secs(25), "{took:?}");
}

#[test]
fn print_config_and_the_environment_hide_the_password() {
    let url = format!("postgres://cairn:{PASSWORD}@db.example.com:5432/cairn");
    let replicas = format!(
        "postgres://cairn:{PASSWORD}@replica-1:5432/cairn,postgres://cairn@replica-2/cairn"
    );
    let output = crate::support::cairn(&["serve", "--print-config"])
        .env("CAIRN_DATABASE_URL", &url)
        .env("CAIRN_REPLICA_URLS", &replicas)
        .env("CAIRN_POOL_SIZE", "8")
        .output()
        .unwrap();
    let printed = ok(output);
    assert!(!printed.contains(PASSWORD), "{printed}");
    let config: serde_json::Value = serde_json::from_str(&printed).unwrap();
    assert_eq!(
        config["database_url"],
        "postgres://cairn:***@db.example.com:5432/cairn"
    );
    assert_eq!(
        config["replica_urls"],
        json!([
            "postgres://cairn:***@replica-1:5432/cairn",
            "postgres://cairn@replica-2/cairn"
        ])
    );
    assert_eq!(config["pool_size"], 8);

    let defaults: serde_json::Value =
        serde_json::from_str(&ok(run(&["serve", "--print-config"]))).unwrap();
    assert_eq!(defaults["database_url"], serde_json::Value::Null);
    assert_eq!(defaults["replica_urls"], json!([]));
    assert_eq!(defaults["pool_size"], 16);
}

#[test]
fn migrate_brings_either_store_to_the_current_schema_and_says_so() {
    // The embedded store: created and migrated in a new data dir, then again (no-op).
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    for _ in 0..2 {
        let said = ok(run(&["migrate", "--data-dir", data]));
        assert!(
            said.contains(&format!(
                "schema version {}, head position 0",
                cairn_store::sqlite::SCHEMA_VERSION
            )),
            "{said}"
        );
    }
    // Refused clearly: a URL that is not PostgreSQL's.
    let refused = run(&["migrate", "--database-url", "mysql://u:s3cret@db/x"]);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("--database-url"),
        "{}",
        stderr(&refused)
    );
    assert!(!stderr(&refused).contains("s3cret"));

    let runtime = runtime();
    let Some(database) = runtime.block_on(async {
        let cluster = cairn_store::testing::shared_cluster()?;
        Some(cluster.create_database().await)
    }) else {
        return;
    };
    let url = with_password(&database.primary_url);
    let said = ok(run(&["migrate", "--database-url", &url]));
    assert!(
        said.contains(&format!(
            "schema version {}, head position 0",
            cairn_store::postgres::SCHEMA_VERSION
        )),
        "{said}"
    );
    assert!(!said.contains(PASSWORD), "{said}");
}
