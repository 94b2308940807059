//! `cairn export` and `cairn import`: the log moves between backends byte for byte
//! (embedded SQLite → PostgreSQL → a fresh SQLite), appends continue where it ended,
//! and bad files stop with the line at fault and nothing of its batch written.
//! The PostgreSQL leg is skipped loudly without PostgreSQL binaries (a failure with CI
//! set), by the harness of `cairn_store::testing`.

use std::path::Path;
use std::sync::Arc;

use cairn_core::{ExpectedVersion, NewEvent, StreamName};
use cairn_store::postgres::{PostgresOptions, PostgresStore};
use cairn_store::sqlite::{SqliteOptions, SqliteStore};
use cairn_store::testing::shared_database;
use cairn_store::{AppendOutcome, AppendRequest, AppendTarget, SharedStore};
use uuid::Uuid;

use crate::support::{ok, run, stderr};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn new_event(event_type: &str, data: &str, metadata: &str, tags: &[&str]) -> NewEvent {
    NewEvent {
        id: Uuid::now_v7(),
        event_type: event_type.to_owned(),
        data: data.to_owned(),
        metadata: metadata.to_owned(),
        tags: tags.iter().map(|tag| (*tag).to_owned()).collect(),
    }
}

fn stream(name: &str) -> StreamName {
    StreamName::parse(name).unwrap()
}

fn open_sqlite(dir: &Path) -> SharedStore {
    Arc::new(SqliteStore::open(SqliteOptions::new(dir)).unwrap())
}

/// A log with a bit of everything: several streams, tags, metadata, unicode and
/// escapes in data, a multi-stream append and a deleted stream.
async fn fill(store: &SharedStore) {
    for index in 0..25 {
        let name = format!("order-{}", index % 4);
        let data = format!(
            r#"{{"index":{index},"text":"caf\u00e9 \"quoted\" \\ é ✓","nested":{{"a":[1,2.5,null,true]}}}}"#
        );
        store
            .append(AppendRequest::single(
                stream(&name),
                ExpectedVersion::Any,
                vec![new_event(
                    "OrderPlaced",
                    &data,
                    r#"{"$correlation_id":"c-1","user":"ü"}"#,
                    if index % 3 == 0 {
                        &["customer:7", "vip"]
                    } else {
                        &[]
                    },
                )],
            ))
            .await
            .unwrap();
    }
    let both = AppendRequest {
        targets: vec![
            AppendTarget {
                stream: stream("order-1"),
                expected: ExpectedVersion::Any,
            },
            AppendTarget {
                stream: stream("invoice-1"),
                expected: ExpectedVersion::NoStream,
            },
        ],
        events: vec![
            (0, new_event("OrderBilled", "1", "{}", &[])),
            (1, new_event("InvoiceIssued", "[\"x\"]", "{}", &[])),
            (1, new_event("InvoiceSent", "null", "{}", &[])),
        ],
        condition: None,
        idempotency: None,
    };
    store.append(both).await.unwrap();
    store
        .delete_stream(&stream("order-3"), ExpectedVersion::Any)
        .await
        .unwrap();
}

/// An append to `order-0` after the import: it must land right after the imported log.
async fn append_after_import(store: &SharedStore, head: u64, order_0_version: u64) {
    let outcome = store
        .append(AppendRequest::single(
            stream("order-0"),
            ExpectedVersion::Exact(order_0_version),
            vec![new_event("OrderShipped", "{}", "{}", &[])],
        ))
        .await
        .unwrap();
    let AppendOutcome::Committed(result) = outcome else {
        panic!("not a new append");
    };
    assert_eq!(result.first_position, head + 1);
    assert_eq!(result.streams[0].first_version, order_0_version + 1);
    let previous = store.read_event(head).await.unwrap().unwrap();
    let appended = store.read_event(head + 1).await.unwrap().unwrap();
    assert!(appended.recorded_at >= previous.recorded_at);
    assert_eq!(
        store.stream_info(&stream("order-3")).await.unwrap_err(),
        cairn_store::StoreError::StreamDeleted(stream("order-3"))
    );
}

fn path(dir: &tempfile::TempDir, name: &str) -> String {
    dir.path().join(name).display().to_string()
}

#[test]
fn sqlite_to_postgres_to_sqlite_keeps_the_log_byte_for_byte() {
    let runtime = runtime();
    let Some(database) = runtime.block_on(shared_database()) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source");
    runtime.block_on(async {
        let store = open_sqlite(&source);
        fill(&store).await;
    });
    // The store is closed (dropped): export opens it itself.
    let first = path(&dir, "first.jsonl");
    let out = run(&[
        "export",
        "--data-dir",
        source.to_str().unwrap(),
        "--output",
        &first,
    ]);
    assert!(
        stderr(&out).contains("exported 28 events"),
        "{}",
        stderr(&out)
    );
    ok(out);

    ok(run(&[
        "import",
        &first,
        "--database-url",
        &database.primary_url,
    ]));
    let second = path(&dir, "second.jsonl");
    ok(run(&[
        "export",
        "--database-url",
        &database.primary_url,
        "-o",
        &second,
    ]));

    let target = dir.path().join("target");
    ok(run(&[
        "import",
        &second,
        "--data-dir",
        target.to_str().unwrap(),
    ]));
    let third = path(&dir, "third.jsonl");
    let exported = ok(run(&["export", "--data-dir", target.to_str().unwrap()]));
    std::fs::write(&third, &exported).unwrap();

    let first = std::fs::read(&first).unwrap();
    assert_eq!(
        first,
        std::fs::read(&second).unwrap(),
        "SQLite vs PostgreSQL"
    );
    assert_eq!(first, std::fs::read(&third).unwrap(), "SQLite vs SQLite");
    let text = String::from_utf8(first).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        r#"{"cairn_export":1,"from_position":1,"head_position":28}"#
    );
    assert_eq!(lines.len(), 1 + 28 + 1);
    assert!(
        lines[1].contains(r#""tags":["customer:7","vip"]"#),
        "{}",
        lines[1]
    );
    assert!(
        lines[1].contains(r#"caf\u00e9"#),
        "data byte for byte: {}",
        lines[1]
    );
    assert!(
        lines[29].starts_with(r#"{"tombstone":{"stream":"order-3","version":5,"deleted_at":""#),
        "{}",
        lines[29]
    );

    // Appends continue after the imported log, on both targets.
    runtime.block_on(async {
        let postgres: SharedStore = Arc::new(
            PostgresStore::connect(PostgresOptions::new(database.primary_url.clone()))
                .await
                .unwrap(),
        );
        append_after_import(&postgres, 28, 6).await;
        let sqlite = open_sqlite(&target);
        append_after_import(&sqlite, 28, 6).await;
    });
}

/// Export lines written by hand: `events` are (stream, version, position).
fn export_text(events: &[(&str, u64, u64)]) -> String {
    let head = events.iter().map(|(_, _, position)| *position).max();
    let mut text = format!(
        r#"{{"cairn_export":1,"from_position":1,"head_position":{}}}"#,
        head.unwrap_or(0)
    );
    text.push('\n');
    for (stream, version, position) in events {
        text.push_str(&format!(
            r#"{{"id":"{}","stream":"{stream}","type":"T","version":{version},"position":{position},"data":{{"p":{position}}},"metadata":{{}},"tags":[],"recorded_at":"2026-11-24T05:31:{position:02}.000001Z"}}"#,
            Uuid::now_v7()
        ));
        text.push('\n');
    }
    text
}

fn head_of(data_dir: &Path) -> u64 {
    let exported = ok(run(&["export", "--data-dir", data_dir.to_str().unwrap()]));
    exported.lines().count() as u64 - 1
}

#[test]
fn a_malformed_line_stops_the_import_and_resume_finishes_it() {
    let dir = tempfile::tempdir().unwrap();
    let good = export_text(&[("a-1", 0, 1), ("a-1", 1, 2), ("b-1", 0, 3), ("a-1", 2, 4)]);
    let mut lines: Vec<&str> = good.lines().collect();
    let fourth_event = lines[4].to_owned();
    lines[4] = r#"{"id":"not-a-uuid","#;
    let broken = path(&dir, "broken.jsonl");
    std::fs::write(&broken, lines.join("\n")).unwrap();
    let target = dir.path().join("target");
    let out = run(&[
        "import",
        &broken,
        "--data-dir",
        target.to_str().unwrap(),
        "--batch-size",
        "2",
    ]);
    assert!(!out.status.success());
    let message = stderr(&out);
    assert!(message.contains("line 5:"), "{message}");
    assert!(message.contains("--resume"), "{message}");
    // Lines 2 and 3 were one batch, committed; line 4 was in the batch of the bad line.
    assert_eq!(head_of(&target), 2);

    // Without --resume a store with events is refused.
    let fixed = path(&dir, "fixed.jsonl");
    lines[4] = &fourth_event;
    std::fs::write(&fixed, lines.join("\n")).unwrap();
    let out = run(&["import", &fixed, "--data-dir", target.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("is not empty"), "{}", stderr(&out));
    assert_eq!(head_of(&target), 2);

    let out = run(&[
        "import",
        &fixed,
        "--data-dir",
        target.to_str().unwrap(),
        "--resume",
    ]);
    assert!(
        stderr(&out).contains("skipped 2 events"),
        "{}",
        stderr(&out)
    );
    ok(out);
    let exported = ok(run(&["export", "--data-dir", target.to_str().unwrap()]));
    let original: Vec<&str> = good.lines().skip(1).collect();
    let imported: Vec<&str> = exported.lines().skip(1).collect();
    assert_eq!(imported, original);

    // --resume checks that the file is the one imported.
    let other = path(&dir, "other.jsonl");
    std::fs::write(
        &other,
        export_text(&[("a-1", 0, 1), ("a-1", 1, 2), ("b-1", 0, 3), ("a-1", 2, 4)]),
    )
    .unwrap();
    let out = run(&[
        "import",
        &other,
        "--data-dir",
        target.to_str().unwrap(),
        "--resume",
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("line 5: the event at position 4 is not the one"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn gaps_and_broken_versions_name_their_line_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("target");
    for (events, line, reason) in [
        (
            vec![("a-1", 0, 1), ("a-1", 1, 2), ("a-1", 2, 4)],
            4,
            "position 4 leaves a gap: the next position is 3",
        ),
        (
            vec![("a-1", 0, 1), ("a-1", 2, 2)],
            3,
            "version 2 of stream a-1 does not follow its last version 0",
        ),
        (
            vec![("a-1", 0, 1), ("b-1", 1, 2)],
            3,
            "version 1 of stream b-1, which has no events yet",
        ),
    ] {
        let file = path(&dir, "bad.jsonl");
        std::fs::write(&file, export_text(&events)).unwrap();
        let out = run(&["import", &file, "--data-dir", target.to_str().unwrap()]);
        assert!(!out.status.success());
        let message = stderr(&out);
        assert!(
            message.contains(&format!("line {line}: {reason}")),
            "{message}"
        );
        assert!(message.contains("Nothing of lines 2 to"), "{message}");
        assert_eq!(head_of(&target), 0, "nothing of the batch was written");
    }

    // A file cut short (its header promised more) is refused, not imported in part.
    let whole = export_text(&[("a-1", 0, 1), ("a-1", 1, 2), ("a-1", 2, 3)]);
    let cut: Vec<&str> = whole.lines().take(3).collect();
    let file = path(&dir, "cut.jsonl");
    std::fs::write(&file, cut.join("\n")).unwrap();
    let out = run(&["import", &file, "--data-dir", target.to_str().unwrap()]);
    assert!(!out.status.success());
    let message = stderr(&out);
    assert!(
        message.contains("ends at position 2, but its header says the export went to position 3"),
        "{message}"
    );
    assert_eq!(head_of(&target), 0);
}

#[test]
fn an_export_from_a_position_continues_a_store_at_the_position_before() {
    let dir = tempfile::tempdir().unwrap();
    let all = export_text(&[("a-1", 0, 1), ("b-1", 0, 2), ("a-1", 1, 3), ("a-1", 2, 4)]);
    let source = dir.path().join("source");
    let file = path(&dir, "all.jsonl");
    std::fs::write(&file, &all).unwrap();
    ok(run(&[
        "import",
        &file,
        "--data-dir",
        source.to_str().unwrap(),
    ]));

    // A target that has the first two events (a first migration), then the rest.
    let target = dir.path().join("target");
    let head = path(&dir, "head.jsonl");
    // (Without the header, which promises all four: a file without one is taken as is.)
    std::fs::write(
        &head,
        all.lines().skip(1).take(2).collect::<Vec<_>>().join("\n"),
    )
    .unwrap();
    ok(run(&[
        "import",
        &head,
        "--data-dir",
        target.to_str().unwrap(),
    ]));
    let tail = ok(run(&[
        "export",
        "--data-dir",
        source.to_str().unwrap(),
        "--from-position",
        "3",
    ]));
    assert!(tail.starts_with(r#"{"cairn_export":1,"from_position":3,"head_position":4}"#));
    assert_eq!(tail.lines().count(), 3);
    let out = crate::support::run_with_stdin(
        &[
            "import",
            "-",
            "--data-dir",
            target.to_str().unwrap(),
            "--resume",
        ],
        &tail,
    );
    ok(out);
    let exported = ok(run(&["export", "--data-dir", target.to_str().unwrap()]));
    let original = ok(run(&["export", "--data-dir", source.to_str().unwrap()]));
    assert_eq!(exported, original);
}
