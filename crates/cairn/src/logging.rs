//! Logs on stderr: one JSON object a line, or human-readable lines.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::settings::LogFormat;

/// Installs the global subscriber. `RUST_LOG`, when set, wins over `level`; `format`
/// `None` picks json when stderr is not a terminal and pretty when it is.
pub fn init(format: Option<LogFormat>, level: &str) -> anyhow::Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.trim().is_empty() => EnvFilter::try_new(&directives)
            .map_err(|error| anyhow::anyhow!("invalid RUST_LOG {directives:?}: {error}"))?,
        _ => EnvFilter::try_new(level)
            .map_err(|error| anyhow::anyhow!("invalid log level {level:?}: {error}"))?,
    };
    let is_terminal = std::io::stderr().is_terminal();
    let format = format.unwrap_or(if is_terminal {
        LogFormat::Pretty
    } else {
        LogFormat::Json
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let installed = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Pretty => builder.with_ansi(is_terminal).compact().try_init(),
    };
    installed.map_err(|error| anyhow::anyhow!("cannot install the logger: {error}"))
}
