//! `cairn projections`: the read side's projections for operators.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::Context;
use cairn_client::{Client, ProjectionState, ProjectionStatus};

use crate::cli::{
    OutputFormat, ProjectionNameArgs, ProjectionRebuildArgs, ProjectionsArgs, ProjectionsCommand,
    ProjectionsListArgs,
};
use crate::commands::{JsonLines, client};

/// How often `rebuild --wait` looks at the projection.
const REBUILD_POLL: Duration = Duration::from_millis(200);
/// The longest error message shown in a table row.
const ERROR_WIDTH: usize = 60;

pub async fn run(args: ProjectionsArgs) -> anyhow::Result<()> {
    match args.command {
        ProjectionsCommand::List(args) => list(args).await,
        ProjectionsCommand::Status(args) => status(args).await,
        ProjectionsCommand::Restart(args) => restart(args).await,
        ProjectionsCommand::Rebuild(args) => rebuild(args).await,
    }
}

/// Text on a terminal unless asked otherwise.
pub fn text_output(format: Option<OutputFormat>) -> bool {
    match format {
        Some(OutputFormat::Text) => true,
        Some(OutputFormat::Json) => false,
        None => std::io::stdout().is_terminal(),
    }
}

async fn list(args: ProjectionsListArgs) -> anyhow::Result<()> {
    let projections = client(&args.client)?.projections().await?.projections;
    let mut out = JsonLines::stdout();
    if !text_output(args.format) {
        for projection in &projections {
            out.write(projection)?;
        }
        return out.flush();
    }
    if projections.is_empty() {
        eprintln!("no projections (they are [[projections]] in the server's settings file)");
        return out.flush();
    }
    out.write_str(&format!(
        "{:<24} {:<10} {:>12} {:>12} {:>10} {:>10}  ERROR",
        "NAME", "STATE", "POSITION", "HEAD", "LAG", "EVENTS/S"
    ))?;
    for projection in &projections {
        let error = projection
            .last_error
            .as_ref()
            .map(|error| {
                let event_type = error.event_type.as_deref().unwrap_or("-");
                shorten(
                    &format!("at {} ({event_type}): {}", error.position, error.message),
                    ERROR_WIDTH,
                )
            })
            .unwrap_or_default();
        let line = format!(
            "{:<24} {:<10} {:>12} {:>12} {:>10} {:>10.1}  {error}",
            projection.name,
            state_name(projection.state),
            projection.position,
            projection.head_position,
            projection.lag,
            projection.events_per_second,
        );
        out.write_str(line.trim_end())?;
    }
    out.flush()
}

async fn status(args: ProjectionNameArgs) -> anyhow::Result<()> {
    let status = client(&args.client)?.projection(&args.name).await?;
    print_status(&status, text_output(args.format))
}

async fn restart(args: ProjectionNameArgs) -> anyhow::Result<()> {
    let status = client(&args.client)?
        .restart_projection(&args.name)
        .await
        .with_context(|| format!("cannot restart projection {}", args.name))?;
    let text = text_output(args.format);
    if text {
        eprintln!(
            "restarted projection {} from position {}",
            args.name, status.position
        );
    }
    print_status(&status, text)
}

async fn rebuild(args: ProjectionRebuildArgs) -> anyhow::Result<()> {
    let args_projection = &args.projection;
    let client = client(&args_projection.client)?;
    let name = &args_projection.name;
    let started = client
        .rebuild_projection(name)
        .await
        .with_context(|| format!("cannot rebuild projection {name}"))?;
    let text = text_output(args_projection.format);
    if text {
        eprintln!(
            "rebuilding projection {name} from position 1 to {}",
            started.head_position
        );
    }
    let status = if args.wait {
        wait_for_rebuild(&client, name, started.head_position).await?
    } else {
        started
    };
    print_status(&status, text)
}

/// Waits until the projection is running again at `target` or beyond, showing progress
/// on a terminal; fails if it fails.
async fn wait_for_rebuild(
    client: &Client,
    name: &str,
    target: u64,
) -> anyhow::Result<ProjectionStatus> {
    let terminal = std::io::stderr().is_terminal();
    let started = Instant::now();
    loop {
        let status = client.projection(name).await?;
        match status.state {
            ProjectionState::Running if status.position >= target => {
                if terminal {
                    eprintln!(
                        "\rrebuilt projection {name}: {} events' positions in {:.1}s",
                        status.position,
                        started.elapsed().as_secs_f64()
                    );
                }
                return Ok(status);
            }
            ProjectionState::Failed => {
                let reason = status.last_error.as_ref().map_or_else(
                    || "no reason given".to_owned(),
                    |error| format!("at position {}: {}", error.position, error.message),
                );
                anyhow::bail!("the rebuild of projection {name} failed {reason}");
            }
            ProjectionState::Stopped => {
                anyhow::bail!("projection {name} stopped before its rebuild caught up");
            }
            _ => {}
        }
        if terminal {
            eprint!(
                "\rrebuilding {name}: {}/{} ({:.0}%), {:.0} events/s   ",
                status.position,
                status.head_position,
                status.rebuild_progress.unwrap_or(0.0) * 100.0,
                status.events_per_second
            );
        }
        tokio::time::sleep(REBUILD_POLL).await;
    }
}

fn print_status(status: &ProjectionStatus, text: bool) -> anyhow::Result<()> {
    let mut out = JsonLines::stdout();
    if !text {
        out.write(status)?;
        return out.flush();
    }
    let mut lines = vec![
        format!("projection        {}", status.name),
        format!("state             {}", state_name(status.state)),
        format!("position          {}", status.position),
        format!("head              {}", status.head_position),
        format!("lag               {}", status.lag),
        format!("events/s          {:.1}", status.events_per_second),
    ];
    if let Some(progress) = status.rebuild_progress {
        lines.push(format!("rebuild progress  {:.1}%", progress * 100.0));
    }
    match &status.last_error {
        Some(error) => {
            lines.push(format!("failed at         position {}", error.position));
            lines.push(format!(
                "failed event type {}",
                error
                    .event_type
                    .as_deref()
                    .unwrap_or("(none: the read-model database failed)")
            ));
            lines.push(format!("error             {}", error.message));
        }
        None => lines.push("last error        none".to_owned()),
    }
    if status.definition_changed {
        lines.push("definition        changed since the read model was built".to_owned());
    }
    if let Some(message) = &status.message {
        lines.push(format!("note              {message}"));
    }
    for line in lines {
        out.write_str(&line)?;
    }
    out.flush()
}

fn state_name(state: ProjectionState) -> &'static str {
    match state {
        ProjectionState::Running => "running",
        ProjectionState::Failed => "failed",
        ProjectionState::Rebuilding => "rebuilding",
        ProjectionState::Stopped => "stopped",
    }
}

/// At most `width` characters, with an ellipsis when cut.
pub fn shorten(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_owned();
    }
    let mut short: String = text.chars().take(width.saturating_sub(1)).collect();
    short.push('…');
    short
}
