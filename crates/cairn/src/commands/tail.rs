//! `cairn tail`: the log as it grows, through a subscription that reconnects by itself.

use std::io::{IsTerminal, Write};

use anyhow::Context;
use cairn_client::{Event, EventFilterSpec, SubscribeOptions};
use futures::{FutureExt, StreamExt};

use crate::cli::{TailArgs, TailFormat};
use crate::commands::client;

/// The most characters of an event's data shown on a terminal line.
const DATA_PREVIEW_CHARS: usize = 160;

pub async fn run(args: TailArgs) -> anyhow::Result<()> {
    let client = client(&args.client)?;
    let format = args.format.unwrap_or(if std::io::stdout().is_terminal() {
        TailFormat::Text
    } else {
        TailFormat::Json
    });
    let options = SubscribeOptions {
        from_position: args.from,
        filter: EventFilterSpec {
            category: args.category.clone(),
            types: args.types.clone(),
            tags: args.tags.clone(),
            stream: args.stream.clone(),
        },
        ..SubscribeOptions::default()
    };
    let mut events = client.subscribe(options);
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut line = Vec::with_capacity(1024);
    let mut printed = 0u64;
    let interrupted = stop_signal();
    tokio::pin!(interrupted);
    while args.count.is_none_or(|count| printed < count) {
        if (&mut interrupted).now_or_never().is_some() {
            break;
        }
        // Print what is ready without waiting; flush before waiting for more, so a
        // pipe sees each event promptly and a burst is written in one go.
        let next = match events.next().now_or_never() {
            Some(next) => next,
            None => {
                out.flush().context("cannot write to stdout")?;
                tokio::select! {
                    next = events.next() => next,
                    () = &mut interrupted => break,
                }
            }
        };
        let Some(event) = next else { break };
        let event = event.context("the subscription failed")?;
        line.clear();
        match format {
            TailFormat::Json => {
                serde_json::to_writer(&mut line, &event).context("cannot encode an event")?
            }
            TailFormat::Text => write_text_line(&mut line, &event),
        }
        line.push(b'\n');
        out.write_all(&line).context("cannot write to stdout")?;
        printed += 1;
    }
    out.flush().context("cannot write to stdout")
}

/// `position  time  stream@version  type  [tags]  data`, the data cut short.
fn write_text_line(out: &mut Vec<u8>, event: &Event) {
    let time = event
        .recorded_at
        .split_once('T')
        .map_or(event.recorded_at.as_str(), |(_, time)| time);
    let time = time.trim_end_matches('Z');
    // Milliseconds are enough to read.
    let time = time.get(..12).unwrap_or(time);
    let data = event.data.get();
    let preview: String = data.chars().take(DATA_PREVIEW_CHARS).collect();
    let ellipsis = if preview.len() < data.len() {
        "…"
    } else {
        ""
    };
    let tags = if event.tags.is_empty() {
        String::new()
    } else {
        format!("  [{}]", event.tags.join(", "))
    };
    let _ = write!(
        out,
        "{:>8}  {time}  {}@{}  {}{tags}  {preview}{ellipsis}",
        event.position, event.stream, event.version, event.event_type
    );
}

/// Resolves on Ctrl-C or SIGTERM. The handlers are installed now, not on first poll,
/// so a signal that comes early is not lost (nor fatal).
fn stop_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let interrupt = signal(SignalKind::interrupt());
        let terminate = signal(SignalKind::terminate());
        async move {
            match (interrupt, terminate) {
                (Ok(mut interrupt), Ok(mut terminate)) => {
                    tokio::select! {
                        _ = interrupt.recv() => {}
                        _ = terminate.recv() => {}
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_text_line_shows_position_time_stream_type_tags_and_data() {
        let event: Event = serde_json::from_value(serde_json::json!({
            "id": "0194b8c2-4c4a-7000-8000-000000000001",
            "stream": "order-17",
            "type": "OrderPlaced",
            "version": 3,
            "position": 42,
            "data": {"total": 42},
            "metadata": {},
            "tags": ["customer:7"],
            "recorded_at": "2026-11-24T05:31:30.123456Z"
        }))
        .unwrap();
        let mut line = Vec::new();
        write_text_line(&mut line, &event);
        assert_eq!(
            String::from_utf8(line).unwrap(),
            "      42  05:31:30.123  order-17@3  OrderPlaced  [customer:7]  {\"total\":42}"
        );
    }
}
