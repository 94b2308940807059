//! `cairn serve --tls-cert --tls-key` end to end: the client library and the CLI over
//! https:// with `--ca-cert`, clients that do not trust the certificate refused, plain
//! HTTP on the TLS port, the certificate reloaded on SIGHUP, bad files refused at
//! start, and aws-lc kept out of the build.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cairn_client::{Client, ExpectedVersion, ReadStreamOptions, event};

use crate::support::{Server, ok, run, stderr, stdout};

/// A private CA's certificate (PEM) and a server certificate and key it signed for
/// `localhost` and 127.0.0.1, written to `dir` as `{name}-ca.pem`, `{name}-cert.pem`
/// and `{name}-key.pem`.
struct Pki {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn pki(dir: &Path, name: &str) -> Pki {
    let ca = certificate_authority(name);
    let leaf_params =
        rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = leaf_params.signed_by(&leaf_key, &ca).unwrap();
    let files = Pki {
        ca: dir.join(format!("{name}-ca.pem")),
        cert: dir.join(format!("{name}-cert.pem")),
        key: dir.join(format!("{name}-key.pem")),
    };
    std::fs::write(&files.ca, ca.pem()).unwrap();
    std::fs::write(&files.cert, leaf.pem()).unwrap();
    std::fs::write(&files.key, leaf_key.serialize_pem()).unwrap();
    files
}

fn path(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A client of `url` trusting `ca` (besides the system's roots), with no retries.
fn client(url: &str, ca: Option<&Path>) -> Client {
    let mut builder = Client::builder(url)
        .retries(0)
        .timeout(Duration::from_secs(10));
    if let Some(ca) = ca {
        builder = builder.ca_certificate_pem(std::fs::read(ca).unwrap());
    }
    builder.build().unwrap()
}

/// Whether a fresh connection trusting only `ca` (and the system's roots) gets an
/// answer: the server presents a certificate that `ca` signed.
fn trusted_by(runtime: &tokio::runtime::Runtime, url: &str, ca: &Path) -> bool {
    runtime
        .block_on(client(url, Some(ca)).health_live())
        .is_ok()
}

fn start_tls(data_dir: &Path, pki: &Pki, extra: &[&str]) -> Server {
    let mut args = vec!["--tls-cert", path(&pki.cert), "--tls-key", path(&pki.key)];
    args.extend_from_slice(extra);
    let server = Server::start_with(data_dir, "127.0.0.1:0", &args);
    assert!(server.url.starts_with("https://"), "{}", server.url);
    server
}

fn wait_for_log(server: &Server, message: &str) {
    server.wait_for_logs(|logs| logs.iter().any(|line| line.contains(message)));
}

#[test]
fn the_client_and_the_cli_work_over_https_with_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path(), "private");
    let server = start_tls(&dir.path().join("data"), &pki, &[]);
    let runtime = runtime();

    // The client library, trusting the CA.
    let secure = client(&server.url, Some(&pki.ca));
    runtime.block_on(async {
        assert_eq!(secure.health_ready().await.unwrap().status, "ok");
        let appended = secure
            .append(
                "order-1",
                ExpectedVersion::NoStream,
                vec![event("OrderPlaced", serde_json::json!({"total": 42}))],
            )
            .await
            .unwrap();
        let page = secure
            .read_stream("order-1", &ReadStreamOptions::default())
            .await
            .unwrap();
        assert_eq!(page.events.len(), 1);
        assert_eq!(page.events[0].position, appended.first_position);
    });

    // The CLI, with --ca-cert and with CAIRN_CA_CERT.
    ok(run(&[
        "append",
        "order-1",
        "--type",
        "OrderShipped",
        "--data",
        "{}",
        "--url",
        &server.url,
        "--ca-cert",
        path(&pki.ca),
    ]));
    let read = crate::support::cairn(&["read", "order-1", "--url", &server.url])
        .env("CAIRN_CA_CERT", &pki.ca)
        .output()
        .unwrap();
    let lines: Vec<serde_json::Value> = ok(read)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let types: Vec<&str> = lines
        .iter()
        .map(|event| event["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["OrderPlaced", "OrderShipped"]);

    // Without the CA, the client and the CLI refuse the server's certificate.
    let error = runtime
        .block_on(client(&server.url, None).health_live())
        .unwrap_err();
    assert!(
        matches!(error, cairn_client::ClientError::Transport(_)),
        "{error:?}"
    );
    let refused = run(&["read", "order-1", "--url", &server.url]);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("certificate"),
        "{}",
        stderr(&refused)
    );
    assert!(stdout(&refused).is_empty());

    // A --ca-cert that is not a certificate is a clear error.
    let not_pem = run(&[
        "read",
        "order-1",
        "--url",
        &server.url,
        "--ca-cert",
        path(&pki.key),
    ]);
    assert!(!not_pem.status.success());
    assert!(
        stderr(&not_pem).contains("invalid CA certificate"),
        "{}",
        stderr(&not_pem)
    );

    // Plain HTTP to the TLS port fails at once, and the server goes on serving.
    let plain_url = server.url.replacen("https://", "http://", 1);
    let started = Instant::now();
    let plain = run(&["read", "order-1", "--url", &plain_url]);
    assert!(!plain.status.success());
    assert!(
        stderr(&plain).contains("could not reach Cairn"),
        "{}",
        stderr(&plain)
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(trusted_by(&runtime, &server.url, &pki.ca));
}

#[test]
fn cairn_bench_loads_an_https_server_that_trusts_its_ca_cert() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path(), "bench");
    let server = start_tls(&dir.path().join("data"), &pki, &[]);
    let text = ok(run(&[
        "bench",
        "--url",
        &server.url,
        "--ca-cert",
        path(&pki.ca),
        "--clients",
        "2",
        "--duration",
        "1s",
        "--json",
    ]));
    let result: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(result["errors"], 0, "{result:#}");
    assert!(result["events"].as_u64().unwrap() > 0, "{result:#}");

    // Without the CA the server is not trusted, and the bench says so before any load.
    let untrusted = run(&["bench", "--url", &server.url, "--duration", "1s"]);
    assert!(!untrusted.status.success());
    assert!(
        stderr(&untrusted).contains("is not ready"),
        "{}",
        stderr(&untrusted)
    );
    // A file that is not a certificate, a broken one and a missing one are refused
    // with their names, before any request.
    let not_pem = dir.path().join("not-a-cert.pem");
    std::fs::write(&not_pem, "hello").unwrap();
    let broken = dir.path().join("broken.pem");
    std::fs::write(
        &broken,
        "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let missing = dir.path().join("missing.pem");
    for (file, says) in [
        (&not_pem, "no -----BEGIN CERTIFICATE----- block"),
        (&broken, "invalid CA certificate"),
        (&missing, "cannot read --ca-cert"),
    ] {
        let refused = run(&["bench", "--url", &server.url, "--ca-cert", path(file)]);
        assert!(!refused.status.success());
        let message = stderr(&refused);
        assert!(
            message.contains(says) && message.contains(path(file)),
            "{message}"
        );
    }
}

#[test]
fn sighup_reloads_the_certificate_and_a_bad_one_keeps_the_old() {
    let dir = tempfile::tempdir().unwrap();
    let first = pki(dir.path(), "first");
    let second = pki(dir.path(), "second");
    // The server reads its own pair of files; rotation replaces their contents.
    let live = Pki {
        ca: first.ca.clone(),
        cert: dir.path().join("cert.pem"),
        key: dir.path().join("key.pem"),
    };
    std::fs::copy(&first.cert, &live.cert).unwrap();
    std::fs::copy(&first.key, &live.key).unwrap();
    let server = start_tls(&dir.path().join("data"), &live, &[]);
    let runtime = runtime();
    assert!(trusted_by(&runtime, &server.url, &first.ca));
    assert!(!trusted_by(&runtime, &server.url, &second.ca));

    std::fs::copy(&second.cert, &live.cert).unwrap();
    std::fs::copy(&second.key, &live.key).unwrap();
    server.signal("HUP");
    wait_for_log(&server, "SIGHUP: TLS certificate reloaded");
    assert!(trusted_by(&runtime, &server.url, &second.ca));
    assert!(!trusted_by(&runtime, &server.url, &first.ca));

    // A broken certificate file is logged; the second certificate stays in force.
    std::fs::write(&live.cert, "-----BEGIN CERTIFICATE-----\nnope\n").unwrap();
    server.signal("HUP");
    wait_for_log(&server, "SIGHUP: cannot reload the TLS certificate");
    assert!(trusted_by(&runtime, &server.url, &second.ca));
    // Without a --config file there are no tokens to reload, and that is not an error.
    assert!(
        !server
            .logs()
            .iter()
            .any(|line| line.contains("nothing to reload")),
        "{:#?}",
        server.logs()
    );
}

#[test]
fn bad_tls_settings_stop_the_start_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path(), "start");
    let data = dir.path().join("data");
    let missing = dir.path().join("missing.pem");
    let serve = |extra: &[&str]| {
        let mut args = vec![
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            path(&data),
        ];
        args.extend_from_slice(extra);
        run(&args)
    };

    let output = serve(&["--tls-cert", path(&missing), "--tls-key", path(&pki.key)]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("cannot read the TLS certificate file")
            && stderr(&output).contains("missing.pem"),
        "{}",
        stderr(&output)
    );

    let output = serve(&["--tls-cert", path(&pki.cert), "--tls-key", path(&pki.cert)]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("holds no PEM private key"),
        "{}",
        stderr(&output)
    );

    let output = serve(&["--tls-cert", path(&pki.cert)]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("TLS needs both"),
        "{}",
        stderr(&output)
    );
    let output = crate::support::cairn(&["serve", "--data-dir", path(&data)])
        .env("CAIRN_TLS_KEY", &pki.key)
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("--tls-key (or CAIRN_TLS_KEY)"),
        "{}",
        stderr(&output)
    );
    assert!(!data.join("events.db").exists(), "nothing was opened");
}

#[test]
fn tls_files_come_from_flags_then_environment_then_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cairn.toml");
    std::fs::write(
        &config,
        "tls_cert = \"/file/cert.pem\"\ntls_key = \"/file/key.pem\"\n",
    )
    .unwrap();
    let print = |extra: &[&str], env: &[(&str, &str)]| -> serde_json::Value {
        let mut args = vec!["serve", "--print-config", "--config", path(&config)];
        args.extend_from_slice(extra);
        let mut command = crate::support::cairn(&args);
        for (name, value) in env {
            command.env(name, value);
        }
        serde_json::from_str(&ok(command.output().unwrap())).unwrap()
    };
    let from_file = print(&[], &[]);
    assert_eq!(from_file["tls_cert"], "/file/cert.pem");
    assert_eq!(from_file["tls_key"], "/file/key.pem");
    let from_env = print(&[], &[("CAIRN_TLS_CERT", "/env/cert.pem")]);
    assert_eq!(from_env["tls_cert"], "/env/cert.pem");
    assert_eq!(from_env["tls_key"], "/file/key.pem");
    let from_flag = print(
        &["--tls-cert", "/flag/cert.pem"],
        &[("CAIRN_TLS_CERT", "/env/cert.pem")],
    );
    assert_eq!(from_flag["tls_cert"], "/flag/cert.pem");

    let defaults: serde_json::Value =
        serde_json::from_str(&ok(run(&["serve", "--print-config"]))).unwrap();
    assert_eq!(defaults["tls_cert"], serde_json::Value::Null);
}

#[test]
fn aws_lc_stays_out_of_the_build() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = std::process::Command::new(cargo)
        .args(["tree", "--workspace", "-e", "all", "--prefix", "none"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree runs");
    assert!(
        output.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let tree = String::from_utf8(output.stdout).unwrap();
    assert!(tree.lines().any(|line| line.starts_with("ring ")), "{tree}");
    for forbidden in ["aws-lc-sys ", "aws-lc-rs ", "openssl-sys "] {
        assert!(
            !tree.lines().any(|line| line.starts_with(forbidden)),
            "{forbidden}is in the build:\n{tree}"
        );
    }
}

/// A certificate and key written to `dir` as `{name}-cert.pem` and `{name}-key.pem`:
/// self-signed, or signed by `issuer` with the issuer's certificate after it in the file
/// (as in a `fullchain.pem`).
fn instance_certificate(
    dir: &Path,
    name: &str,
    issuer: Option<&rcgen::CertifiedIssuer<'static, rcgen::KeyPair>>,
) -> Pki {
    let params =
        rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let pem = match issuer {
        Some(issuer) => format!(
            "{}{}",
            params.signed_by(&key, issuer).unwrap().pem(),
            issuer.pem()
        ),
        None => params.self_signed(&key).unwrap().pem(),
    };
    let files = Pki {
        ca: dir.join(format!("{name}-cert.pem")),
        cert: dir.join(format!("{name}-cert.pem")),
        key: dir.join(format!("{name}-key.pem")),
    };
    std::fs::write(&files.cert, pem).unwrap();
    std::fs::write(&files.key, key.serialize_pem()).unwrap();
    files
}

fn certificate_authority(name: &str) -> rcgen::CertifiedIssuer<'static, rcgen::KeyPair> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("{name} CA"));
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap()
}

/// Two instances serving TLS on one PostgreSQL database, with these certificates: a
/// group is created through the first (which then drives it), and a claim is sent
/// through the second; returns the claim's status and error code.
fn claim_through_the_other_instance(
    database_url: &str,
    first: &Pki,
    second: &Pki,
    group: &str,
) -> (u16, Option<String>) {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let args = |pki: &Pki| {
        vec![
            "--database-url".to_owned(),
            database_url.to_owned(),
            "--tls-cert".to_owned(),
            path(&pki.cert).to_owned(),
            "--tls-key".to_owned(),
            path(&pki.key).to_owned(),
        ]
    };
    let start = |dir: &tempfile::TempDir, pki: &Pki| {
        let args = args(pki);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Server::start_with(&dir.path().join("data"), "127.0.0.1:0", &args)
    };
    let (a, b) = (start(&dir_a, first), start(&dir_b, second));
    // The test's own requests check nothing: what is checked is the instances' trust.
    let http = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    runtime().block_on(async {
        let created = http
            .put(format!("{}/v1/groups/{group}", a.url))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(created.status(), 201);
        let claim = http
            .post(format!("{}/v1/groups/{group}/claim", b.url))
            .header("x-request-id", format!("claim-{group}"))
            .body(r#"{"consumer":"c","max":1}"#)
            .send()
            .await
            .unwrap();
        let status = claim.status().as_u16();
        let body: serde_json::Value = claim.json().await.unwrap_or_default();
        if status == 200 {
            // The owner served it: its log has the request line (the wait fails the
            // test if it never comes).
            a.wait_for_logs(|logs| {
                logs.iter()
                    .any(|line| line.contains(&format!("claim-{group}")))
            });
        }
        (status, body["error"]["code"].as_str().map(str::to_owned))
    })
}

#[test]
fn instances_serving_tls_forward_group_requests_to_each_other() {
    let Some(database) = runtime().block_on(cairn_store::testing::shared_database()) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // One self-signed certificate shared by both instances.
    let shared = instance_certificate(dir.path(), "shared", None);
    assert_eq!(
        claim_through_the_other_instance(&database.primary_url, &shared, &shared, "shared"),
        (200, None)
    );
    // Each instance its own certificate from one CA, the CA in each file.
    let ca = certificate_authority("deployment");
    let (one, two) = (
        instance_certificate(dir.path(), "one", Some(&ca)),
        instance_certificate(dir.path(), "two", Some(&ca)),
    );
    assert_eq!(
        claim_through_the_other_instance(&database.primary_url, &one, &two, "chained"),
        (200, None)
    );
    // An owner whose certificate the forwarding instance has no reason to trust.
    let stranger = instance_certificate(dir.path(), "stranger", None);
    assert_eq!(
        claim_through_the_other_instance(&database.primary_url, &stranger, &shared, "stranger"),
        (503, Some("unavailable".to_owned()))
    );
}
