//! The read side through the client: projections' status, restart and rebuild, named
//! queries with read-your-writes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_client::{Client, ErrorCode, ExpectedVersion, ProjectionState, event};
use cairn_projection::{
    FilterConfig, ParamSpec, ParamType, ProjectionConfig, QueryConfig, ReadSide, ReadSideOptions,
};
use serde_json::json;

/// A server with a read side, serving on 127.0.0.1:<ephemeral> until dropped.
struct ReadSideServer {
    url: String,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    _dir: tempfile::TempDir,
}

impl ReadSideServer {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let options = cairn_store::sqlite::SqliteOptions::new(dir.path());
        let store =
            tokio::task::spawn_blocking(move || cairn_store::sqlite::SqliteStore::open(options))
                .await
                .unwrap()
                .unwrap();
        let store: cairn_store::SharedStore = Arc::new(store);
        let projection = ProjectionConfig {
            name: "notes".into(),
            filter: FilterConfig {
                category: Some("note".into()),
                ..FilterConfig::default()
            },
            setup: vec![
                "CREATE TABLE IF NOT EXISTS notes (id TEXT PRIMARY KEY, author TEXT, text TEXT)"
                    .into(),
            ],
            teardown: vec!["DROP TABLE IF EXISTS notes".into()],
            on: [(
                "NoteWritten".to_owned(),
                vec!["INSERT INTO notes VALUES (:data.id, :data.author, :data.text)".to_owned()],
            )]
            .into_iter()
            .collect(),
        };
        let query = QueryConfig {
            name: "notes_by_author".into(),
            sql: "SELECT id, text FROM notes WHERE author = :author ORDER BY id".into(),
            params: [("author".to_owned(), ParamSpec::required(ParamType::Text))]
                .into_iter()
                .collect(),
            cache_ttl: None,
        };
        let read_side = ReadSide::start(
            store.clone(),
            ReadSideOptions::new(dir.path()),
            vec![projection],
            vec![query],
        )
        .await
        .unwrap();
        let state = cairn_server::AppState::open(
            store,
            cairn_server::Limits::default(),
            Duration::from_secs(30),
        )
        .await
        .unwrap()
        .with_read_side(read_side);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (shutdown, stop) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(cairn_server::serve(listener, state, async move {
            let _ = stop.await;
        }));
        Self {
            url,
            shutdown: Some(shutdown),
            _dir: dir,
        }
    }
}

impl Drop for ReadSideServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

#[tokio::test]
async fn a_write_is_read_back_through_a_query_with_min_position() {
    let server = ReadSideServer::start().await;
    let client = Client::new(&server.url).unwrap();
    let appended = client
        .append(
            "note-1",
            ExpectedVersion::NoStream,
            vec![event(
                "NoteWritten",
                json!({"id": "n-1", "author": "ada lovelace", "text": "hello & more"}),
            )],
        )
        .await
        .unwrap();
    let answer = client
        .query(
            "notes_by_author",
            [("author", "ada lovelace")],
            Some(appended.last_position),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!(
        answer.rows,
        [json!({"id": "n-1", "text": "hello & more"})
            .as_object()
            .unwrap()
            .clone()]
    );
    assert!(answer.position >= appended.last_position);

    // Not there yet and no time to wait: consistency_timeout, with the details.
    let error = client
        .query(
            "notes_by_author",
            vec![("author".to_owned(), "x".to_owned())],
            Some(appended.last_position + 10),
            Duration::ZERO,
        )
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::ConsistencyTimeout), "{error}");
    assert_eq!(error.status(), Some(504));
    let details = &error.body().unwrap().error.details;
    assert_eq!(details["min_position"], appended.last_position + 10);

    let error = client
        .query("notes_by_author", [("colour", "red")], None, Duration::ZERO)
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::InvalidRequest));
    assert_eq!(error.body().unwrap().error.details["parameter"], "colour");
    let error = client
        .query(
            "nope",
            std::iter::empty::<(&str, &str)>(),
            None,
            Duration::ZERO,
        )
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::NotFound));
}

#[tokio::test]
async fn projections_are_listed_restarted_and_rebuilt() {
    let server = ReadSideServer::start().await;
    let client = Client::new(&server.url).unwrap();
    let appended = client
        .append(
            "note-1",
            ExpectedVersion::Any,
            vec![event(
                "NoteWritten",
                json!({"id": "n-1", "author": "a", "text": "t"}),
            )],
        )
        .await
        .unwrap();
    let list = client.projections().await.unwrap();
    assert_eq!(list.projections.len(), 1);
    assert_eq!(list.projections[0].name, "notes");

    let restarted = client.restart_projection("notes").await.unwrap();
    assert_eq!(restarted.name, "notes");
    let rebuilt = client.rebuild_projection("notes").await.unwrap();
    assert!(
        matches!(
            rebuilt.state,
            ProjectionState::Rebuilding | ProjectionState::Running
        ),
        "{rebuilt:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = client.projection("notes").await.unwrap();
        if status.state == ProjectionState::Running && status.position == appended.last_position {
            assert_eq!(status.lag, 0);
            assert!(status.last_error.is_none());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the rebuild never caught up: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let error = client.projection("nope").await.unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::NotFound));
    assert_eq!(error.body().unwrap().error.details["projection"], "nope");
}

#[tokio::test]
async fn plans_and_query_statuses_come_back_typed() {
    let server = ReadSideServer::start().await;
    let client = Client::new(&server.url).unwrap();
    client
        .append(
            "note-1",
            ExpectedVersion::Any,
            vec![event(
                "NoteWritten",
                json!({"id": "n-1", "author": "a b", "text": "t"}),
            )],
        )
        .await
        .unwrap();

    let plan = client
        .query_plan("notes_by_author", std::iter::empty::<(&str, &str)>(), false)
        .await
        .unwrap();
    assert_eq!(plan.query, "notes_by_author");
    assert!(plan.text.starts_with("QUERY PLAN"), "{}", plan.text);
    assert!(plan.analysis.is_none());
    assert_eq!(plan.warnings.len(), 1, "{plan:?}");
    assert_eq!(
        plan.warnings[0].suggestion.as_deref(),
        Some("CREATE INDEX IF NOT EXISTS notes_by_author_id ON notes (author, id)")
    );

    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let plan = client
            .query_plan("notes_by_author", [("author", "a b")], true)
            .await
            .unwrap();
        if plan.analysis.unwrap().rows_returned == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the note never showed up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let error = client
        .query_plan("notes_by_author", [("colour", "red")], false)
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::InvalidRequest));
    assert_eq!(error.body().unwrap().error.details["parameter"], "colour");
    let error = client
        .query_plan("nope", std::iter::empty::<(&str, &str)>(), true)
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::NotFound));

    let list = client.queries().await.unwrap();
    assert_eq!(list.queries.len(), 1);
    let status = client.query_status("notes_by_author").await.unwrap();
    assert_eq!(status, list.queries[0]);
    assert_eq!(status.params, ["author"]);
    assert_eq!(status.plan_warnings, plan.warnings);
    let error = client.query_status("nope").await.unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::NotFound));
    let projection = client.projection("notes").await.unwrap();
    assert!(projection.plan_warnings.is_empty(), "{projection:?}");
}
