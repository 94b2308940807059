//! Logs on stderr: one JSON object a line, or human-readable lines; and, beside them,
//! the spans exported as OpenTelemetry traces when an exporter is configured
//! ([`crate::telemetry`]). Lines reach stderr through [`crate::log_sink`], so logging
//! never waits for stderr's reader; [`flush`] writes what is still buffered.

use std::io::IsTerminal;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use opentelemetry_sdk::trace::SdkTracer;
use tracing::level_filters::LevelFilter;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::{FilterExt as _, filter_fn};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{Layer as _, Registry};

use crate::log_sink::{CAPACITY, LogSink, SinkWriter};
use crate::settings::LogFormat;

static SINK: OnceLock<Arc<LogSink>> = OnceLock::new();

/// The process's log sink, started on first use.
fn sink_writer() -> anyhow::Result<SinkWriter> {
    if let Some(sink) = SINK.get() {
        return Ok(SinkWriter(Arc::clone(sink)));
    }
    let sink = LogSink::start(Box::new(std::io::stderr()), CAPACITY)
        .map_err(|error| anyhow::anyhow!("cannot start the log's writing thread: {error}"))?;
    Ok(SinkWriter(Arc::clone(SINK.get_or_init(|| sink))))
}

/// How long the process waits, before it exits, for its last log lines to be written.
const EXIT_FLUSH_WAIT: Duration = Duration::from_secs(5);

/// Writes the log lines still buffered to stderr; called before the process exits. A
/// reader of stderr that stopped reading holds the exit up for [`EXIT_FLUSH_WAIT`] at
/// most, and the lines it did not take are lost.
pub fn flush() {
    let Some(sink) = SINK.get() else {
        return;
    };
    let (written, done) = std::sync::mpsc::channel();
    let flusher = Arc::clone(sink);
    let spawned = std::thread::Builder::new()
        .name("cairn-log-flush".into())
        .spawn(move || {
            flusher.flush();
            let _ = written.send(());
        });
    if spawned.is_ok() {
        let _ = done.recv_timeout(EXIT_FLUSH_WAIT);
    }
}

/// Installs the global subscriber. `RUST_LOG`, when set, wins over `level`; `format`
/// `None` picks json when stderr is not a terminal and pretty when it is.
pub fn init(format: Option<LogFormat>, level: &str) -> anyhow::Result<()> {
    init_with_tracer(format, level, None)
}

/// [`init`], plus, given a tracer, a `tracing-opentelemetry` layer that exports Cairn's
/// spans at `info` and above (whatever the log level) as traces. The spans made for the
/// exporter only (target `cairn::otel`: storage calls, deliveries) never reach the log.
pub fn init_with_tracer(
    format: Option<LogFormat>,
    level: &str,
    tracer: Option<SdkTracer>,
) -> anyhow::Result<()> {
    let Some(tracer) = tracer else {
        return init_logs_only(format, level);
    };
    let filter = log_filter(level)?;
    let writer = sink_writer()?;
    let is_terminal = std::io::stderr().is_terminal();
    let format = format.unwrap_or(if is_terminal {
        LogFormat::Pretty
    } else {
        LogFormat::Json
    });
    let log_only = filter.and(filter_fn(|metadata| {
        metadata.target() != cairn_store::trace::SPAN_TARGET
    }));
    let logs = match format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(writer)
            .with_filter(log_only)
            .boxed(),
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .with_ansi(is_terminal)
            .compact()
            .with_writer(writer)
            .with_filter(log_only)
            .boxed(),
    };
    // Cairn's own spans and events only: the exporter's gRPC client must not trace
    // itself, and an unsampled request's span is for the log alone. No busy/idle time, thread or source-location attributes: the first costs
    // work on every poll of every instrumented future (most requests are not sampled),
    // and none of them helps follow an event.
    let traces = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_tracked_inactivity(false)
        .with_threads(false)
        .with_location(false)
        .with_filter(filter_fn(|metadata| {
            metadata.target().starts_with("cairn")
                && metadata.target() != cairn_server::trace::UNTRACED_TARGET
                && *metadata.level() <= LevelFilter::INFO
        }));
    Registry::default()
        .with(logs)
        .with(traces)
        .try_init()
        .map_err(|error| anyhow::anyhow!("cannot install the logger: {error}"))
}

/// `RUST_LOG` when set, else `level`.
fn log_filter(level: &str) -> anyhow::Result<EnvFilter> {
    Ok(match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.trim().is_empty() => EnvFilter::try_new(&directives)
            .map_err(|error| anyhow::anyhow!("invalid RUST_LOG {directives:?}: {error}"))?,
        _ => EnvFilter::try_new(level)
            .map_err(|error| anyhow::anyhow!("invalid log level {level:?}: {error}"))?,
    })
}

/// The log layer alone, with its filter global: what runs without traces.
fn init_logs_only(format: Option<LogFormat>, level: &str) -> anyhow::Result<()> {
    let filter = log_filter(level)?;
    let writer = sink_writer()?;
    let is_terminal = std::io::stderr().is_terminal();
    let format = format.unwrap_or(if is_terminal {
        LogFormat::Pretty
    } else {
        LogFormat::Json
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
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
