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

use clap::Parser;

use crate::cli::{Cli, Command};

/// Parses the command line, runs the command and turns its outcome into an exit code:
/// 0 on success, 1 on a failure (printed on stderr), 2 on a usage error.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("cairn")
        .worker_threads(worker_threads(&cli))
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(run(cli));
    // Don't wait for stray tasks (e.g. a connection still draining).
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
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

/// The runtime's worker threads: `cairn serve`'s `worker_threads` setting, one per core
/// for every other command. Settings that do not resolve get the default here, and
/// `cairn serve` then stops on them with their error.
fn worker_threads(cli: &Cli) -> usize {
    match &cli.command {
        Command::Serve(args) => settings::Settings::resolve(args)
            .map_or_else(|_| settings::default_worker_threads(), |s| s.worker_threads),
        _ => settings::default_worker_threads(),
    }
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => commands::serve::run(*args).await,
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
