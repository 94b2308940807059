//! `cairn groups`: consumer groups for operators.

use std::io::IsTerminal;

use anyhow::Context;
use cairn_client::{EventFilterSpec, GroupOrdering, GroupRequest, GroupStatus, ParkedEvent};

use crate::cli::{
    GroupCreateArgs, GroupNameArgs, GroupParkedArgs, GroupReplayArgs, GroupsArgs, GroupsCommand,
    GroupsListArgs, OrderingArg,
};
use crate::commands::{JsonLines, client};

/// Parked events asked for per page.
const PARKED_PAGE: usize = 500;

pub async fn run(args: GroupsArgs) -> anyhow::Result<()> {
    let text = std::io::stdout().is_terminal();
    match args.command {
        GroupsCommand::List(args) => list(args, text).await,
        GroupsCommand::Status(args) => status(args, text).await,
        GroupsCommand::Create(args) => create(args, text).await,
        GroupsCommand::Delete(args) => delete(args).await,
        GroupsCommand::Parked(args) => parked(args, text).await,
        GroupsCommand::ReplayParked(args) => replay(args).await,
    }
}

async fn list(args: GroupsListArgs, text: bool) -> anyhow::Result<()> {
    let groups = client(&args.client)?.list_groups().await?.groups;
    let mut out = JsonLines::stdout();
    if text {
        if groups.is_empty() {
            eprintln!("no consumer groups");
        } else {
            out.write_str(&format!(
                "{:<24} {:>12} {:>12} {:>10} {:>10} {:>10} {:>8}",
                "GROUP", "CHECKPOINT", "HEAD", "LAG", "IN FLIGHT", "WAITING", "PARKED"
            ))?;
        }
        for group in &groups {
            out.write_str(&format!(
                "{:<24} {:>12} {:>12} {:>10} {:>10} {:>10} {:>8}",
                group.group,
                group.checkpoint,
                group.head_position,
                group.lag,
                group.in_flight,
                group.waiting,
                group.parked
            ))?;
        }
    } else {
        for group in &groups {
            out.write(group)?;
        }
    }
    out.flush()
}

async fn status(args: GroupNameArgs, text: bool) -> anyhow::Result<()> {
    let status = client(&args.client)?.group_status(&args.group).await?;
    print_status(&status, text)
}

fn print_status(status: &GroupStatus, text: bool) -> anyhow::Result<()> {
    let mut out = JsonLines::stdout();
    if !text {
        out.write(status)?;
        return out.flush();
    }
    let settings = &status.settings;
    let filter = describe_filter(&settings.filter);
    let ordering = match settings.ordering {
        GroupOrdering::None => "none",
        GroupOrdering::PerStream => "per_stream",
    };
    for line in [
        format!("group           {}", status.group),
        format!("checkpoint      {}", status.checkpoint),
        format!("head            {}", status.head_position),
        format!("lag             {}", status.lag),
        format!("in flight       {}", status.in_flight),
        format!("waiting         {}", status.waiting),
        format!("parked          {}", status.parked),
        format!("from position   {}", settings.from_position),
        format!("filter          {filter}"),
        format!("ack timeout     {} ms", settings.ack_timeout_ms),
        format!("max deliveries  {}", settings.max_deliveries),
        format!("ordering        {ordering}"),
    ] {
        out.write_str(&line)?;
    }
    out.flush()
}

fn describe_filter(filter: &EventFilterSpec) -> String {
    let mut parts = Vec::new();
    if let Some(category) = &filter.category {
        parts.push(format!("category={category}"));
    }
    if !filter.types.is_empty() {
        parts.push(format!("types={}", filter.types.join(",")));
    }
    if !filter.tags.is_empty() {
        parts.push(format!("tags={}", filter.tags.join(",")));
    }
    if let Some(stream) = &filter.stream {
        parts.push(format!("stream={stream}"));
    }
    if parts.is_empty() {
        "every event".to_owned()
    } else {
        parts.join(" ")
    }
}

async fn create(args: GroupCreateArgs, text: bool) -> anyhow::Result<()> {
    let filter = EventFilterSpec {
        category: args.category.clone(),
        types: args.types.clone(),
        tags: args.tags.clone(),
        stream: args.stream.clone(),
    };
    let request = GroupRequest {
        from_position: args.from,
        filter: (filter != EventFilterSpec::default()).then_some(filter),
        ack_timeout_ms: args
            .ack_timeout
            .map(|timeout| u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX)),
        max_deliveries: args.max_deliveries,
        ordering: args.ordering.map(|ordering| match ordering {
            OrderingArg::None => GroupOrdering::None,
            OrderingArg::PerStream => GroupOrdering::PerStream,
        }),
    };
    let put = client(&args.client)?
        .put_group(&args.group, &request)
        .await
        .with_context(|| format!("cannot create or update group {}", args.group))?;
    if text {
        let what = if put.created { "created" } else { "updated" };
        eprintln!("{what} group {}", args.group);
    }
    print_status(&put.status, text)
}

async fn delete(args: GroupNameArgs) -> anyhow::Result<()> {
    client(&args.client)?.delete_group(&args.group).await?;
    if std::io::stderr().is_terminal() {
        eprintln!("deleted group {}", args.group);
    }
    Ok(())
}

async fn parked(args: GroupParkedArgs, text: bool) -> anyhow::Result<()> {
    let client = client(&args.client)?;
    let mut out = JsonLines::stdout();
    let mut remaining = args.limit.unwrap_or(usize::MAX);
    let mut after = args.after;
    let mut header = text;
    let mut any = false;
    while remaining > 0 {
        let page = client
            .parked(&args.group, after, Some(remaining.min(PARKED_PAGE)))
            .await?;
        for parked in page.parked.iter().take(remaining) {
            any = true;
            if text {
                if header {
                    out.write_str(&format!(
                        "{:>12} {:>10}  {:<27}  {:<9}  REASON",
                        "POSITION", "DELIVERIES", "PARKED AT", "REPLAYING"
                    ))?;
                    header = false;
                }
                out.write_str(&parked_line(parked))?;
            } else {
                out.write(parked)?;
            }
        }
        remaining = remaining.saturating_sub(page.parked.len());
        match page.next {
            Some(next) if !page.parked.is_empty() => after = Some(next),
            _ => break,
        }
    }
    if text && !any {
        eprintln!("no parked events in group {}", args.group);
    }
    out.flush()
}

fn parked_line(parked: &ParkedEvent) -> String {
    format!(
        "{:>12} {:>10}  {:<27}  {:<9}  {}",
        parked.position,
        parked.deliveries,
        parked.parked_at,
        if parked.replaying { "yes" } else { "no" },
        parked.reason
    )
}

async fn replay(args: GroupReplayArgs) -> anyhow::Result<()> {
    let positions = (!args.positions.is_empty()).then(|| args.positions.clone());
    let replayed = client(&args.client)?
        .replay_parked(&args.group, positions)
        .await?;
    let mut out = JsonLines::stdout();
    out.write(&replayed)?;
    out.flush()
}
