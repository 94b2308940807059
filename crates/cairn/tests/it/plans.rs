//! Plan warnings through the real binary: `cairn serve --strict-plans` refusing to
//! start, the warnings in `/v1/queries/{name}/status`, and `cairn query --explain`.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{Server, cairn, ok, run, stderr};

const SETUP: &str =
    r#""CREATE TABLE IF NOT EXISTS notes (id TEXT PRIMARY KEY, author TEXT, words INTEGER)""#;
const INDEX: &str = "CREATE INDEX IF NOT EXISTS notes_by_author_id ON notes (author, id)";

/// The notes read model, with `extra` added to its `setup`.
fn config(dir: &Path, extra: &str) -> std::path::PathBuf {
    let text = format!(
        r#"
[[projections]]
name = "notes"
filter = {{ category = "note" }}
setup = [{SETUP}{extra}]
teardown = ["DROP TABLE IF EXISTS notes"]
[projections.on]
NoteWritten = ["INSERT INTO notes VALUES (:data.id, :data.author, :data.words)"]

[[queries]]
name = "notes_by_author"
sql = "SELECT id, words FROM notes WHERE author = :author ORDER BY id"
params = {{ author = "text" }}
"#
    );
    let path = dir.join("cairn.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs `cairn ARGS`, which must exit within 20 s; its status and stderr.
fn run_to_exit(args: &[&str]) -> (std::process::ExitStatus, String) {
    let mut child = cairn(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut text = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut text).unwrap();
            return (status, text);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("cairn {args:?} did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn strict_plans_refuse_to_start_until_the_suggested_index_is_in_setup() {
    let dir = tempfile::tempdir().unwrap();
    let path = config(dir.path(), "");
    let data = dir.path().join("data");
    let (status, text) = run_to_exit(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data.to_str().unwrap(),
        "--config",
        path.to_str().unwrap(),
        "--log-format",
        "json",
        "--strict-plans",
    ]);
    assert!(!status.success(), "{text}");
    assert!(text.contains("strict plans: 1 plan warning"), "{text}");
    assert!(
        text.contains("query notes_by_author reads every row of table notes"),
        "{text}"
    );
    assert!(text.contains(INDEX), "{text}");

    // Without the flag it starts, and the query's status carries the warning.
    let server = Server::start_with_config(&data, &path);
    let status = ureq_json(&format!("{}/v1/queries/notes_by_author/status", server.url));
    assert_eq!(status["plan_warnings"][0]["kind"], "full_scan", "{status}");
    assert_eq!(status["plan_warnings"][0]["suggestion"], INDEX, "{status}");
    drop(server);

    // With the suggested index in setup, on a fresh data directory, strict starts.
    let fixed = tempfile::tempdir().unwrap();
    let path = config(fixed.path(), &format!(", \"{INDEX}\""));
    let server = Server::start_with(
        &fixed.path().join("data"),
        "127.0.0.1:0",
        &["--config", path.to_str().unwrap(), "--strict-plans"],
    );
    let status = ureq_json(&format!("{}/v1/queries/notes_by_author/status", server.url));
    assert_eq!(status["plan_warnings"], json!([]), "{status}");
    let list = ureq_json(&format!("{}/v1/queries", server.url));
    assert_eq!(list["queries"][0]["name"], "notes_by_author");
}

#[test]
fn the_slow_query_threshold_and_strict_plans_are_settings() {
    let dir = tempfile::tempdir().unwrap();
    let printed = ok(run(&[
        "serve",
        "--strict-plans",
        "--slow-query-threshold",
        "250ms",
        "--print-config",
        "--data-dir",
        dir.path().to_str().unwrap(),
    ]));
    let printed: Value = serde_json::from_str(&printed).unwrap();
    assert_eq!(printed["strict_plans"], true);
    assert_eq!(printed["slow_query_threshold"], "250ms");
    let file = dir.path().join("c.toml");
    std::fs::write(
        &file,
        "strict_plans = true\nslow_query_threshold = \"0s\"\n",
    )
    .unwrap();
    let printed: Value = serde_json::from_str(&ok(run(&[
        "serve",
        "--config",
        file.to_str().unwrap(),
        "--print-config",
    ])))
    .unwrap();
    assert_eq!(printed["strict_plans"], true);
    assert_eq!(printed["slow_query_threshold"], "0s");
    let output = run(&["serve", "--slow-query-threshold", "soon", "--print-config"]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("slow-query-threshold"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn query_explain_prints_the_plan_as_text_or_json() {
    let dir = tempfile::tempdir().unwrap();
    let path = config(dir.path(), "");
    let server = Server::start_with_config(&dir.path().join("data"), &path);
    let url = server.url.as_str();
    ok(run(&[
        "append",
        "note-1",
        "--type",
        "NoteWritten",
        "--data",
        &json!({"id": "n-1", "author": "ada", "words": 3}).to_string(),
        "--url",
        url,
    ]));

    // Piped: the JSON, with no analysis unless asked; a required parameter may be
    // left out.
    let plan: Value = serde_json::from_str(&ok(run(&[
        "query",
        "notes_by_author",
        "--explain",
        "--url",
        url,
    ])))
    .unwrap();
    assert_eq!(plan["query"], "notes_by_author");
    assert!(plan["analysis"].is_null(), "{plan}");
    assert_eq!(plan["warnings"][0]["suggestion"], INDEX, "{plan}");
    assert!(!plan["rows"].as_array().unwrap().is_empty());

    // As text: the tree, the run, the warning.
    let deadline = Instant::now() + Duration::from_secs(20);
    let text = loop {
        let text = ok(run(&[
            "query",
            "notes_by_author",
            "author=ada",
            "--explain",
            "--analyze",
            "--format",
            "text",
            "--url",
            url,
        ]));
        if text.contains("1 row returned") || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "QUERY PLAN", "{text}");
    assert!(lines[1].contains("SCAN notes"), "{text}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("ran in ") && l.ends_with(" ms, 1 row returned")),
        "{text}"
    );
    assert!(
        lines
            .last()
            .unwrap()
            .starts_with("warning: query notes_by_author"),
        "{text}"
    );

    // Errors as the query's: bad parameter, unknown query; --analyze needs --explain.
    let output = run(&[
        "query",
        "notes_by_author",
        "--explain",
        "--analyze",
        "--url",
        url,
    ]);
    assert!(!output.status.success());
    assert!(stderr(&output).contains("author"), "{}", stderr(&output));
    let output = run(&["query", "nope", "--explain", "--url", url]);
    assert!(!output.status.success());
    assert!(stderr(&output).contains("nope"), "{}", stderr(&output));
    let output = run(&["query", "notes_by_author", "--analyze", "--url", url]);
    assert!(!output.status.success());
    assert!(stderr(&output).contains("--explain"), "{}", stderr(&output));
}

/// GET `url` with the client crate's HTTP stack; the JSON body.
fn ureq_json(url: &str) -> Value {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let response = reqwest::get(url).await.unwrap();
        assert!(
            response.status().is_success(),
            "{url}: {}",
            response.status()
        );
        response.json().await.unwrap()
    })
}
