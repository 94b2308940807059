//! `cairn streams`.

use crate::cli::StreamsArgs;
use crate::commands::{JsonLines, client};

/// The most names asked for in one page.
const PAGE: usize = 1000;

pub async fn run(args: StreamsArgs) -> anyhow::Result<()> {
    let client = client(&args.client)?;
    let mut out = JsonLines::stdout();
    let mut remaining = args.limit.unwrap_or(usize::MAX);
    let mut after = args.after.clone();
    while remaining > 0 {
        let page = client
            .list_streams(
                args.prefix.as_deref(),
                after.as_deref(),
                Some(remaining.min(PAGE)),
            )
            .await?;
        for name in page.streams.iter().take(remaining) {
            out.write_str(name)?;
        }
        remaining = remaining.saturating_sub(page.streams.len());
        match page.next {
            Some(next) if !page.streams.is_empty() => after = Some(next),
            _ => break,
        }
    }
    out.flush()
}
