//! `cairn append`.

use std::path::Path;

use anyhow::{Context, bail};
use cairn_client::{Client, EventInput, ExpectedVersion};
use serde_json::value::RawValue;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, BufReader};

use crate::cli::AppendArgs;
use crate::commands::{JsonLines, client};

/// A batch is sent once its events' JSON reaches this size, even below --batch-size,
/// to stay well under the server's body limit.
const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;

pub async fn run(args: AppendArgs) -> anyhow::Result<()> {
    let client = client(&args.client)?;
    let mut out = JsonLines::stdout();
    match &args.file {
        None => {
            let event = event_from_flags(&args)?;
            let response = client
                .append(&args.stream, args.expected_version, vec![event])
                .await?;
            out.write(&response)?;
        }
        Some(path) => {
            let input: Box<dyn AsyncBufRead + Unpin> = if path == Path::new("-") {
                Box::new(BufReader::new(tokio::io::stdin()))
            } else {
                let file = tokio::fs::File::open(path)
                    .await
                    .with_context(|| format!("cannot open {}", path.display()))?;
                Box::new(BufReader::new(file))
            };
            let name = if path == Path::new("-") {
                "stdin".to_owned()
            } else {
                path.display().to_string()
            };
            append_lines(&client, &args, input, &name, &mut out).await?;
        }
    }
    out.flush()
}

fn event_from_flags(args: &AppendArgs) -> anyhow::Result<EventInput> {
    let event_type = args.event_type.clone().context("--type is required")?;
    let data = args.data.as_deref().context("--data is required")?;
    let data = parse_json(data).context("--data is not valid JSON")?;
    let metadata = match &args.metadata {
        Some(text) => {
            let raw = parse_json(text).context("--metadata is not valid JSON")?;
            if !raw.get().starts_with('{') {
                bail!("--metadata must be a JSON object, e.g. '{{\"source\": \"cli\"}}'");
            }
            Some(raw)
        }
        None => None,
    };
    Ok(EventInput {
        id: args.id,
        event_type,
        data,
        metadata,
        tags: (!args.tags.is_empty()).then(|| args.tags.clone()),
    })
}

fn parse_json(text: &str) -> Result<Box<RawValue>, serde_json::Error> {
    serde_json::from_str(text.trim())
}

/// Appends the JSON Lines of `input` in batches. The first batch expects the given
/// version; unless that is `any`, each later batch expects the last version of the one
/// before, so the file lands contiguously or stops at the first conflict.
async fn append_lines(
    client: &Client,
    args: &AppendArgs,
    mut input: Box<dyn AsyncBufRead + Unpin>,
    name: &str,
    out: &mut JsonLines,
) -> anyhow::Result<()> {
    let batch_size = usize::from(args.batch_size);
    let mut expected = args.expected_version;
    let mut batch: Vec<EventInput> = Vec::with_capacity(batch_size);
    let mut batch_bytes = 0;
    let mut appended = 0usize;
    let mut line_number = 0usize;
    let mut line = String::new();
    loop {
        line.clear();
        let read = input
            .read_line(&mut line)
            .await
            .with_context(|| format!("cannot read {name}"))?;
        let at_end = read == 0;
        if !at_end {
            line_number += 1;
            let text = line.trim();
            if !text.is_empty() {
                let event: EventInput = serde_json::from_str(text)
                    .with_context(|| format!("{name} line {line_number} is not an event"))?;
                batch_bytes += text.len();
                batch.push(event);
            }
        }
        let full = batch.len() >= batch_size || batch_bytes >= MAX_BATCH_BYTES;
        if !batch.is_empty() && (full || at_end) {
            let events = std::mem::replace(&mut batch, Vec::with_capacity(batch_size));
            let count = events.len();
            let response = client
                .append(&args.stream, expected, events)
                .await
                .with_context(|| {
                    format!(
                        "appending the batch ending at {name} line {line_number} failed \
                         ({appended} earlier events were appended)"
                    )
                })?;
            appended += count;
            batch_bytes = 0;
            if expected != ExpectedVersion::Any {
                expected = ExpectedVersion::Exact(response.last_version);
            }
            out.write(&response)?;
        }
        if at_end {
            break;
        }
    }
    if appended == 0 {
        bail!("{name} holds no events");
    }
    Ok(())
}
