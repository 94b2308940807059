//! The `cairn` binary's library: the command line, settings, logging and the wiring of
//! store, server and client. `main.rs` only calls [`main`].
//!
//! **Architecture invariant:** this crate holds no domain logic: it parses, configures,
//! wires and prints; everything else lives in the library crates.

pub mod auth_settings;
pub mod backend;
pub mod cli;
pub mod commands;
pub mod embedded;
mod log_sink;
pub mod logging;
pub mod settings;
pub mod telemetry;

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

use crate::cli::{Cli, Command};

/// Parses the command line, runs the command and turns its outcome into an exit code:
/// 0 on success, 1 on a failure (printed on stderr), 2 on a usage error.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        // Its settings size the runtime, so they are resolved before the runtime exists.
        Command::Serve(args) => settings::Settings::resolve(&args).and_then(|settings| {
            on_runtime(
                settings.worker_threads,
                commands::serve::run(*args, settings),
            )
        }),
        command => on_runtime(settings::default_worker_threads(), run(command)),
    };
    // The log's last lines, before the error (if any) is printed after them.
    logging::flush();
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) if is_broken_pipe(&error) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{}", describe_error(&error));
            ExitCode::FAILURE
        }
    }
}

/// Runs `command` on a multi-threaded runtime of `workers` worker threads.
fn on_runtime(
    workers: usize,
    command: impl std::future::Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("cairn")
        .worker_threads(workers)
        .build()
        .context("cannot start the async runtime")?;
    let outcome = runtime.block_on(command);
    // Don't wait for stray tasks (e.g. a connection still draining).
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    outcome
}

/// Every command but `cairn serve`, which [`main`] starts itself; here it resolves its
/// own settings.
pub async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(args) => {
            let settings = settings::Settings::resolve(&args)?;
            commands::serve::run(*args, settings).await
        }
        Command::Append(args) => commands::append::run(args).await,
        Command::Read(args) => commands::read::run(args).await,
        Command::Streams(args) => commands::streams::run(args).await,
        Command::Tail(args) => commands::tail::run(args).await,
        Command::Groups(args) => commands::groups::run(args).await,
        Command::Projections(args) => commands::projections::run(args).await,
        Command::Query(args) => commands::query::run(args).await,
        Command::Bench(args) => commands::bench::run(args).await,
        Command::Token(args) => commands::token::run(args).await,
        Command::Top(args) => commands::top::run(args).await,
        Command::Export(args) => commands::export::run(args).await,
        Command::Import(args) => commands::import::run(args).await,
        Command::Migrate(args) => commands::migrate::run(args).await,
    }
}

/// The error as the user should read it: an API error as its code and message (and its
/// details), anything else as its chain of causes.
pub fn describe_error(error: &anyhow::Error) -> String {
    let api = error.chain().find_map(|cause| match cause.downcast_ref() {
        Some(cairn_client::ClientError::Api { status, body }) => Some((*status, body)),
        _ => None,
    });
    let Some((status, body)) = api else {
        return format!("error: {error:#}");
    };
    let mut text = String::new();
    // The context added around the API error, if any (e.g. which batch failed).
    let outer: Vec<String> = error
        .chain()
        .take_while(|cause| cause.downcast_ref::<cairn_client::ClientError>().is_none())
        .map(ToString::to_string)
        .collect();
    text.push_str(&format!(
        "error: {}: {} (HTTP {status})",
        body.error.code.as_str(),
        body.error.message
    ));
    if !body.error.details.is_empty() {
        let details = serde_json::Value::Object(body.error.details.clone());
        text.push_str(&format!("\n  details: {details}"));
    }
    if !outer.is_empty() {
        text.push_str(&format!("\n  while: {}", outer.join(": ")));
    }
    text
}

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            || cause
                .downcast_ref::<serde_json::Error>()
                .and_then(|json| json.io_error_kind())
                == Some(std::io::ErrorKind::BrokenPipe)
    })
}
