//! API tokens through the real binary: `cairn token create`, its block pasted into a
//! config, reload on SIGHUP, secrets kept out of the logs, and the refusal to serve a
//! non-loopback address without tokens.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use crate::support::{Server, cairn, ok, run, stderr, stdout};

/// The secret and the block `cairn token create ARGS` prints.
fn create_token(args: &[&str]) -> (String, String) {
    let mut all = vec!["token", "create"];
    all.extend_from_slice(args);
    let out = ok(run(&all));
    let (first, block) = out.split_once('\n').unwrap();
    let secret = first
        .strip_prefix("token: ")
        .expect("token: <secret>")
        .to_owned();
    (secret, block.trim_start().to_owned())
}

/// One request over a fresh connection: (status, body).
fn send(
    address: &str,
    method: &str,
    path: &str,
    secret: Option<&str>,
    body: &str,
) -> (u16, String) {
    let mut stream = TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let auth = secret.map_or_else(String::new, |secret| {
        format!("Authorization: Bearer {secret}\r\n")
    });
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n{auth}\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response.split(' ').nth(1).unwrap().parse().unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn append_body() -> &'static str {
    r#"{"events":[{"type":"Placed","data":{"total":3}}]}"#
}

fn write_config(path: &Path, blocks: &[&str]) {
    std::fs::write(path, blocks.join("\n")).unwrap();
}

#[test]
fn a_created_token_parses_and_authenticates_against_the_server() {
    let (secret, block) = create_token(&[
        "--name",
        "orders-service",
        "--scopes",
        "read,append",
        "--streams",
        "order-",
    ]);
    assert!(
        secret.starts_with("cairn_") && secret.len() > 40,
        "{secret}"
    );
    let parsed: toml::Value = toml::from_str(&block).expect("the block is TOML");
    let entry = &parsed["auth"]["tokens"][0];
    assert_eq!(entry["name"].as_str(), Some("orders-service"));
    assert_eq!(entry["scopes"].as_array().unwrap().len(), 2);
    assert_eq!(entry["streams"][0].as_str(), Some("order-"));
    let hash = entry["sha256"].as_str().unwrap();
    assert_eq!(hash.len(), 64);
    assert!(!block.contains(&secret), "the block never holds the secret");
    // Two tokens are never the same.
    assert_ne!(create_token(&["--name", "x", "--scopes", "read"]).0, secret);
    // Bad scopes are refused.
    let bad = run(&["token", "create", "--name", "x", "--scopes", "write"]);
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("write"), "{}", stderr(&bad));

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cairn.toml");
    write_config(&config, &[&block]);
    let server = Server::start_with_config(&dir.path().join("data"), &config);
    let address = server.address();
    let path = "/v1/streams/order-1/events";
    assert_eq!(send(address, "POST", path, None, append_body()).0, 401);
    assert_eq!(
        send(address, "POST", path, Some("cairn_nope"), append_body()).0,
        401
    );
    assert_eq!(
        send(address, "POST", path, Some(&secret), append_body()).0,
        201
    );
    assert_eq!(send(address, "GET", path, Some(&secret), "").0, 200);
    assert_eq!(
        send(
            address,
            "POST",
            "/v1/streams/invoice-1/events",
            Some(&secret),
            append_body()
        )
        .0,
        403
    );
    assert_eq!(
        send(address, "DELETE", "/v1/streams/order-1", Some(&secret), "").0,
        403
    );
    assert_eq!(send(address, "GET", "/metrics", None, "").0, 401);
    assert_eq!(send(address, "GET", "/metrics", Some(&secret), "").0, 200);
    assert_eq!(send(address, "GET", "/health/live", None, "").0, 200);

    // Nothing secret reaches the log, but the token's name does.
    let named = |logs: &[String]| -> Vec<serde_json::Value> {
        logs.iter()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|log| log["message"] == "request")
            .filter(|log| log["token"] == "orders-service")
            .collect()
    };
    // The last request's line is the last to come.
    let lines = server.wait_for_logs(|logs| {
        logs.iter()
            .any(|line| line.contains("\"route\":\"/health/live\""))
    });
    let logs = lines.join("\n");
    assert!(!logs.contains(&secret), "the secret is in the log");
    assert!(!logs.contains(hash), "the hash is in the log");
    assert!(
        !logs.contains("cairn_nope"),
        "a presented secret is in the log"
    );
    let named = named(&lines);
    assert!(named.len() >= 4, "request lines name the token:\n{logs}");
    // The request id, client address and byte counts are there too (and, as checked
    // above, no secret in them).
    for line in &named {
        assert!(line["request_id"].is_string(), "{line}");
        assert!(line["client_addr"].is_string(), "{line}");
        assert!(line["request_bytes"].is_u64(), "{line}");
    }
}

#[test]
fn the_cli_sends_its_token() {
    let (secret, block) = create_token(&["--name", "cli", "--scopes", "read,append"]);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cairn.toml");
    write_config(&config, &[&block]);
    let server = Server::start_with_config(&dir.path().join("data"), &config);
    let url = server.url.as_str();

    let refused = run(&[
        "append", "cli-1", "--type", "Noted", "--data", "{}", "--url", url,
    ]);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("unauthorized"),
        "{}",
        stderr(&refused)
    );
    let wrong = run(&["read", "cli-1", "--url", url, "--token", "cairn_wrong"]);
    assert!(!wrong.status.success());
    assert!(
        stderr(&wrong).contains("unauthorized"),
        "{}",
        stderr(&wrong)
    );

    ok(run(&[
        "append", "cli-1", "--type", "Noted", "--data", "{}", "--url", url, "--token", &secret,
    ]));
    let read = ok(run(&["read", "cli-1", "--url", url, "--token", &secret]));
    assert!(read.contains("\"Noted\""), "{read}");
    // From the environment too, and the secret is never echoed.
    let output = cairn(&["streams", "--url", url])
        .env("CAIRN_TOKEN", &secret)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stdout(&output).contains("cli-1"));
    assert!(!stderr(&refused).contains(&secret));
}

#[test]
fn metrics_can_be_made_public() {
    let (_, block) = create_token(&["--name", "ops", "--scopes", "admin"]);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cairn.toml");
    write_config(&config, &[&block]);
    let data = dir.path().join("data");
    let server = Server::start_with(
        &data,
        "127.0.0.1:0",
        &["--config", config.to_str().unwrap(), "--metrics-public"],
    );
    assert_eq!(send(server.address(), "GET", "/metrics", None, "").0, 200);
    assert_eq!(
        send(server.address(), "GET", "/v1/streams", None, "").0,
        401
    );
}

/// Waits until a log line says `message` for the `count`-th time.
fn wait_for_log(server: &Server, message: &str, count: usize) {
    server.wait_for_logs(|logs| {
        logs.iter()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|log| {
                log["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with(message))
            })
            .count()
            >= count
    });
}

#[test]
fn sighup_reloads_the_tokens_and_a_bad_file_keeps_the_old_ones() {
    let (old_secret, old_block) = create_token(&["--name", "old", "--scopes", "read"]);
    let (new_secret, new_block) = create_token(&["--name", "new", "--scopes", "read"]);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cairn.toml");
    write_config(&config, &[&old_block]);
    let server = Server::start_with_config(&dir.path().join("data"), &config);
    let address = server.address().to_owned();
    assert_eq!(
        send(&address, "GET", "/v1/streams", Some(&old_secret), "").0,
        200
    );
    assert_eq!(
        send(&address, "GET", "/v1/streams", Some(&new_secret), "").0,
        401
    );

    write_config(&config, &[&new_block]);
    server.signal("HUP");
    wait_for_log(&server, "SIGHUP: API tokens reloaded", 1);
    assert_eq!(
        send(&address, "GET", "/v1/streams", Some(&new_secret), "").0,
        200
    );
    assert_eq!(
        send(&address, "GET", "/v1/streams", Some(&old_secret), "").0,
        401
    );

    // A broken file is logged; the tokens in force stay.
    std::fs::write(&config, "[auth]\nnonsense = 1\n").unwrap();
    server.signal("HUP");
    wait_for_log(&server, "SIGHUP: cannot reload", 1);
    assert_eq!(
        send(&address, "GET", "/v1/streams", Some(&new_secret), "").0,
        200
    );
    // So does a file without tokens (that would turn authentication off).
    std::fs::write(&config, "").unwrap();
    server.signal("HUP");
    wait_for_log(&server, "SIGHUP: the file has no API tokens left", 1);
    assert_eq!(send(&address, "GET", "/v1/streams", None, "").0, 401);
    assert!(!server.logs().join("\n").contains(&new_secret));
}

#[test]
fn without_tokens_a_non_loopback_address_is_refused_unless_insecure() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let refused = cairn(&[
        "serve",
        "--listen",
        "0.0.0.0:0",
        "--data-dir",
        data.to_str().unwrap(),
    ])
    .stdin(std::process::Stdio::null())
    .output()
    .unwrap();
    assert!(!refused.status.success());
    let message = stderr(&refused);
    assert!(message.contains("--insecure-no-auth"), "{message}");
    assert!(message.contains("0.0.0.0:0"), "{message}");

    let server = Server::start_with(&data, "0.0.0.0:0", &["--insecure-no-auth"]);
    assert_eq!(
        send(server.address(), "GET", "/v1/streams", None, "").0,
        200
    );
    assert!(
        server
            .logs()
            .iter()
            .any(|line| line.contains("--insecure-no-auth") && line.contains("WARN")),
        "{:#?}",
        server.logs()
    );
    drop(server);
    // The environment variable does the same.
    let by_env = {
        let mut command = cairn(&[
            "serve",
            "--listen",
            "0.0.0.0:0",
            "--data-dir",
            data.to_str().unwrap(),
            "--print-config",
        ]);
        command.env("CAIRN_INSECURE_NO_AUTH", "true");
        command.output().unwrap()
    };
    let printed: serde_json::Value = serde_json::from_slice(&by_env.stdout).unwrap();
    assert_eq!(printed["insecure_no_auth"], true);
}

#[test]
fn an_invalid_auth_table_stops_serve_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cairn.toml");
    for (text, expected) in [
        ("[auth]\nsecret = \"x\"\n", "secret"),
        (
            "[[auth.tokens]]\nname = \"a\"\nscopes = [\"write\"]\nsha256 = \"00\"\n",
            "write",
        ),
        (
            "[[auth.tokens]]\nname = \"a\"\nscopes = [\"read\"]\nsha256 = \"00\"\n",
            "SHA-256",
        ),
    ] {
        std::fs::write(&config, text).unwrap();
        let output = run(&[
            "serve",
            "--config",
            config.to_str().unwrap(),
            "--print-config",
        ]);
        assert!(!output.status.success(), "{text}");
        assert!(
            stderr(&output).contains(expected),
            "{text}: {}",
            stderr(&output)
        );
    }
    let hash = "ab".repeat(32);
    let other = "cd".repeat(32);
    std::fs::write(
        &config,
        format!(
            "[[auth.tokens]]\nname = \"a\"\nscopes = [\"read\"]\nsha256 = \"{hash}\"\n\
             [[auth.tokens]]\nname = \"a\"\nscopes = [\"read\"]\nsha256 = \"{other}\"\n"
        ),
    )
    .unwrap();
    let output = run(&[
        "serve",
        "--config",
        config.to_str().unwrap(),
        "--print-config",
    ]);
    assert!(
        stderr(&output).contains("two tokens"),
        "{}",
        stderr(&output)
    );
}

/// `cairn bench --url … --token`: the load, the set-up requests and the client library's
/// requests (the group scenario's) carry the token; without it every request is refused
/// and counted so.
#[test]
fn cairn_bench_sends_its_token() {
    let (secret, block) = create_token(&["--name", "bench", "--scopes", "read,append"]);
    let (admin, admin_block) = create_token(&["--name", "bench-admin", "--scopes", "admin"]);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cairn.toml");
    write_config(&config, &[&block, &admin_block]);
    let server = Server::start_with_config(&dir.path().join("data"), &config);
    let bench = |extra: &[&str]| -> serde_json::Value {
        let mut args = vec![
            "bench",
            "--url",
            &server.url,
            "--clients",
            "2",
            "--duration",
            "1s",
            "--json",
        ];
        args.extend_from_slice(extra);
        let text = ok(run(&args));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
    };

    for scenario in ["append", "read"] {
        let result = bench(&[scenario, "--token", &secret]);
        assert_eq!(result["errors"], 0, "{scenario}: {result:#}");
        assert!(result["requests"].as_u64().unwrap() > 0, "{result:#}");
    }
    let result = bench(&[
        "group",
        "--events",
        "200",
        "--workers",
        "2",
        "--token",
        &admin,
    ]);
    assert_eq!(result["errors"], 0, "{result:#}");
    assert_eq!(result["events"], 200, "{result:#}");

    let refused = bench(&["append"]);
    let requests = refused["requests"].as_u64().unwrap();
    assert!(requests > 0, "{refused:#}");
    assert_eq!(refused["errors"].as_u64(), Some(requests), "{refused:#}");
    assert!(
        refused["error_samples"][0]
            .as_str()
            .is_some_and(|sample| sample.starts_with("HTTP 401")),
        "{refused:#}"
    );

    // A token no header can carry is refused before any request.
    let output = run(&["bench", "--url", &server.url, "--token", "bad\nsecret"]);
    assert!(!output.status.success());
    assert!(stderr(&output).contains("--token"), "{}", stderr(&output));
}
