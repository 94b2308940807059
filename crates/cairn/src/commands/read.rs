//! `cairn read`.

use cairn_client::{Direction, ReadAllOptions, ReadStreamOptions};

use crate::cli::ReadArgs;
use crate::commands::{JsonLines, client};

pub async fn run(args: ReadArgs) -> anyhow::Result<()> {
    let client = client(&args.client)?;
    let mut out = JsonLines::stdout();
    match &args.stream {
        Some(stream) if !args.all => {
            let mut options = ReadStreamOptions {
                from: args.from,
                limit: args.limit,
                direction: if args.backward {
                    Direction::Backward
                } else {
                    Direction::Forward
                },
            };
            loop {
                let page = client.read_stream(stream, &options).await?;
                for event in &page.events {
                    out.write(event)?;
                }
                match page.next {
                    Some(next) if args.follow_pages && !page.events.is_empty() => {
                        options.from = Some(next);
                    }
                    _ => break,
                }
            }
        }
        _ => {
            let mut options = ReadAllOptions {
                from_position: args.from_position,
                limit: args.limit,
                category: args.category.clone(),
                types: args.types.clone(),
                tags: args.tags.clone(),
                stream: None,
            };
            loop {
                let page = client.read_all(&options).await?;
                for event in &page.events {
                    out.write(event)?;
                }
                let from = options.from_position.unwrap_or(1);
                let more =
                    page.next_from_position <= page.head_position && page.next_from_position > from;
                if !args.follow_pages || !more {
                    break;
                }
                options.from_position = Some(page.next_from_position);
            }
        }
    }
    out.flush()
}
