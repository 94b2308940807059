//! `cairn groups` against a real `cairn serve`, and consumer-group state across a
//! SIGKILL of the real binary.

use cairn_client::{ClaimRequest, Client, ExpectedVersion, event};
use serde_json::json;

use crate::support::{Server, ok, run, stderr};

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[test]
fn groups_commands_create_list_show_replay_and_delete() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let url = server.url.as_str();

    let created = json(&ok(run(&[
        "groups",
        "create",
        "billing",
        "--category",
        "order",
        "--types",
        "OrderPlaced,OrderPaid",
        "--ack-timeout",
        "45s",
        "--max-deliveries",
        "3",
        "--ordering",
        "per_stream",
        "--url",
        url,
    ])));
    assert_eq!(created["group"], "billing");
    assert_eq!(created["checkpoint"], 0);
    let settings = &created["settings"];
    assert_eq!(settings["filter"]["category"], "order");
    assert_eq!(
        settings["filter"]["types"],
        json!(["OrderPlaced", "OrderPaid"])
    );
    assert_eq!(settings["ack_timeout_ms"], 45_000);
    assert_eq!(settings["max_deliveries"], 3);
    assert_eq!(settings["ordering"], "per_stream");

    ok(run(&[
        "groups", "create", "audit", "--from", "1", "--url", url,
    ]));
    let list = ok(run(&["groups", "list", "--url", url]));
    let names: Vec<String> = list
        .lines()
        .map(|line| json(line)["group"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["audit", "billing"]);

    ok(run(&[
        "append",
        "order-1",
        "--type",
        "OrderPlaced",
        "--data",
        "{}",
        "--url",
        url,
    ]));
    let status = json(&ok(run(&["groups", "status", "billing", "--url", url])));
    assert_eq!(status["head_position"], 1);
    assert_eq!(status["lag"], 1);
    assert_eq!(status["parked"], 0);

    // Updating keeps the group and replaces its settings.
    let updated = json(&ok(run(&[
        "groups",
        "create",
        "billing",
        "--category",
        "order",
        "--max-deliveries",
        "4",
        "--url",
        url,
    ])));
    assert_eq!(updated["settings"]["max_deliveries"], 4);
    assert_eq!(updated["settings"]["ordering"], "none");

    assert_eq!(ok(run(&["groups", "parked", "billing", "--url", url])), "");
    let replayed = json(&ok(run(&[
        "groups",
        "replay-parked",
        "billing",
        "--url",
        url,
    ])));
    assert_eq!(replayed["replayed"], 0);

    assert_eq!(ok(run(&["groups", "delete", "billing", "--url", url])), "");
    let missing = run(&["groups", "status", "billing", "--url", url]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        stderr(&missing).starts_with("error: not_found: "),
        "{}",
        stderr(&missing)
    );
    let usage = run(&[
        "groups",
        "create",
        "x",
        "--ordering",
        "sideways",
        "--url",
        url,
    ]);
    assert_eq!(usage.status.code(), Some(2), "{}", stderr(&usage));
    let usage = run(&[
        "groups",
        "create",
        "x",
        "--ack-timeout",
        "soon",
        "--url",
        url,
    ]);
    assert_eq!(usage.status.code(), Some(2), "{}", stderr(&usage));
}

fn claim(max: u32) -> ClaimRequest {
    ClaimRequest {
        consumer: "test".into(),
        max: Some(max),
        wait_ms: Some(0),
    }
}

fn positions(response: &cairn_client::ClaimResponse) -> Vec<u64> {
    response.deliveries.iter().map(|d| d.position).collect()
}

#[test]
fn group_checkpoints_and_parked_events_survive_a_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let mut server = Server::start(&data_dir);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let url = server.url.clone();
    ok(run(&[
        "groups",
        "create",
        "jobs",
        "--category",
        "job",
        "--max-deliveries",
        "2",
        "--ack-timeout",
        "10m",
        "--url",
        &url,
    ]));

    let client = Client::new(&url).unwrap();
    runtime.block_on(async {
        let events = (0..10)
            .map(|n| event("JobQueued", json!({"n": n})))
            .collect();
        client
            .append("job-1", ExpectedVersion::NoStream, events)
            .await
            .unwrap();
        let claimed = client.claim("jobs", &claim(5)).await.unwrap();
        assert_eq!(positions(&claimed), [1, 2, 3, 4, 5]);
        let acked = client.ack("jobs", &[1, 2, 4]).await.unwrap();
        assert_eq!(acked.settled, 3);
        // Event 3 fails on both its deliveries: it is parked.
        client.nack("jobs", &[3], None).await.unwrap();
        let again = client.claim("jobs", &claim(1)).await.unwrap();
        assert_eq!(positions(&again), [3]);
        assert_eq!(again.deliveries[0].attempt, 2);
        let parked = client.nack("jobs", &[3], None).await.unwrap();
        assert_eq!(parked.parked, 1);
    });
    let before = json(&ok(run(&["groups", "status", "jobs", "--url", &url])));
    assert_eq!(before["checkpoint"], 4, "{before}");
    assert_eq!(before["in_flight"], 1, "{before}");
    assert_eq!(before["parked"], 1, "{before}");

    server.kill();
    let server = Server::start(&data_dir);
    let url = server.url.clone();
    let after = json(&ok(run(&["groups", "status", "jobs", "--url", &url])));
    assert!(after["checkpoint"].as_u64().unwrap() >= 4, "{after}");
    assert_eq!(after["parked"], 1, "{after}");
    assert_eq!(after["in_flight"], 0, "{after}");
    assert_eq!(after["settings"]["max_deliveries"], 2, "{after}");
    let parked: Vec<serde_json::Value> = ok(run(&["groups", "parked", "jobs", "--url", &url]))
        .lines()
        .map(json)
        .collect();
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0]["position"], 3);
    assert_eq!(parked[0]["deliveries"], 2);

    let client = Client::new(&url).unwrap();
    runtime.block_on(async {
        // What was in flight or never delivered comes (back); what was acked does not.
        let claimed = client.claim("jobs", &claim(100)).await.unwrap();
        assert_eq!(positions(&claimed), [5, 6, 7, 8, 9, 10]);
    });
    let replayed = json(&ok(run(&[
        "groups",
        "replay-parked",
        "jobs",
        "--position",
        "3",
        "--url",
        &url,
    ])));
    assert_eq!(replayed["replayed"], 1);
    runtime.block_on(async {
        let claimed = client.claim("jobs", &claim(100)).await.unwrap();
        assert_eq!(positions(&claimed), [3]);
        client.ack("jobs", &[3, 5, 6, 7, 8, 9, 10]).await.unwrap();
        let status = client.group_status("jobs").await.unwrap();
        assert_eq!(
            (status.checkpoint, status.in_flight, status.parked),
            (10, 0, 0)
        );
    });
    drop(server);
}
