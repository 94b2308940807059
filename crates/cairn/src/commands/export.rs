//! `cairn export`: the whole log (or from `--from-position`) and the deleted streams'
//! tombstones, as JSON Lines (see [`super::archive`]), read straight from the store.

use std::fs::File;
use std::io::{BufWriter, Write};

use anyhow::Context;
use cairn_core::EventFilter;

use super::archive::{
    FORMAT_VERSION, Header, OpenedStore, flush_into, open_store, progress_bar, write_event,
    write_header, write_tombstone,
};
use crate::cli::ExportArgs;

/// Events read from the store at a time.
const PAGE: usize = 1000;
/// Bytes gathered before they are written out.
const WRITE_CHUNK: usize = 1 << 20;

pub async fn run(args: ExportArgs) -> anyhow::Result<()> {
    let OpenedStore {
        store, described, ..
    } = open_store(&args.store).await?;
    let from = args.from_position.max(1);
    // Events appended while the export runs (on PostgreSQL) are left for the next one.
    let head = store
        .head_position()
        .await
        .with_context(|| format!("cannot read the head of {described}"))?;
    let (mut out, destination): (Box<dyn Write>, String) = match &args.output {
        Some(path) if path.as_os_str() != "-" => {
            let file =
                File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
            (Box::new(BufWriter::new(file)), path.display().to_string())
        }
        _ => (
            Box::new(BufWriter::new(std::io::stdout())),
            "stdout".to_owned(),
        ),
    };

    let mut buffer = Vec::with_capacity(WRITE_CHUNK + 64 * 1024);
    write_header(
        &mut buffer,
        &Header {
            cairn_export: FORMAT_VERSION,
            from_position: from,
            head_position: head,
        },
    )?;
    let total = (head + 1).saturating_sub(from);
    let bar = progress_bar(
        Some(total),
        "exporting {bar:30} {pos}/{len} events, {per_sec}, {eta} left",
    );
    let mut events = 0u64;
    let mut next = from;
    while next <= head {
        let page = store
            .read_all(next, &EventFilter::default(), PAGE)
            .await
            .with_context(|| format!("cannot read {described} from position {next}"))?;
        let Some(last) = page.events.last() else {
            break;
        };
        next = last.position + 1;
        for event in page.events.iter().filter(|event| event.position <= head) {
            write_event(&mut buffer, event);
            events += 1;
        }
        bar.set_position(events);
        if buffer.len() >= WRITE_CHUNK {
            flush_into(&mut out, &mut buffer)?;
        }
    }
    if events != total {
        anyhow::bail!(
            "{described} gave {events} events between positions {from} and {head}, not {total}: the log has a gap"
        );
    }

    let mut tombstones = 0u64;
    let mut after: Option<String> = None;
    loop {
        let page = store
            .list_tombstones(after.as_deref(), PAGE)
            .await
            .with_context(|| format!("cannot list the deleted streams of {described}"))?;
        for tombstone in &page {
            write_tombstone(&mut buffer, tombstone)?;
            tombstones += 1;
        }
        match page.last() {
            Some(last) if page.len() == PAGE => after = Some(last.stream.as_str().to_owned()),
            _ => break,
        }
    }
    flush_into(&mut out, &mut buffer)?;
    out.flush().context("cannot write the export")?;
    bar.finish_and_clear();
    drop(out);
    eprintln!(
        "exported {events} events (positions {from} to {head}) and {tombstones} deleted streams from {described} to {destination}"
    );
    Ok(())
}
