//! `cairn import`: a `cairn export` file into an empty store, in batches of
//! `--batch-size` records, each checked whole by the store and written in one
//! transaction (ids, versions, positions and times kept); or, with `--resume`, into a
//! store that an earlier import left part-way.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};

use anyhow::{Context, bail};
use cairn_store::{ImportError, ImportRecord, SharedStore};

use super::archive::{FORMAT_VERSION, Line, OpenedStore, open_store, parse_line, progress_bar};
use crate::cli::ImportArgs;

/// Counts the bytes read, for the progress bar.
struct Counting<R> {
    inner: R,
    bytes: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let read = self.inner.read(buf)?;
        self.bytes += read as u64;
        Ok(read)
    }
}

/// Where the import stands, for its messages.
struct Progress {
    described: String,
    /// The store's head: every position up to it is in the store.
    head: u64,
    events: u64,
    tombstones: u64,
}

impl Progress {
    fn so_far(&self) -> String {
        if self.events == 0 && self.tombstones == 0 {
            return format!(
                "nothing was imported (the store's head is at position {})",
                self.head
            );
        }
        format!(
            "{} events and {} deleted streams were imported before it (the store's head is at position {}); fix the file and run the same command with --resume to go on from there",
            self.events, self.tombstones, self.head
        )
    }
}

pub async fn run(args: ImportArgs) -> anyhow::Result<()> {
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let (reader, length, source): (Box<dyn Read>, Option<u64>, String) = match &args.file {
        Some(path) if path.as_os_str() != "-" => {
            let file =
                File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
            let length = file.metadata().ok().map(|meta| meta.len());
            (Box::new(file), length, path.display().to_string())
        }
        _ => (Box::new(std::io::stdin()), None, "stdin".to_owned()),
    };
    let OpenedStore {
        store, described, ..
    } = open_store(&args.store).await?;
    let head = store
        .head_position()
        .await
        .with_context(|| format!("cannot read the head of {described}"))?;
    // Lines at positions up to the head are in the store already (resume).
    let mut expected_at_head = None;
    if head > 0 {
        if !args.resume {
            bail!(
                "{described} is not empty: its log's head is at position {head}. `cairn import` \
                 writes into an empty store; give it a new --data-dir or an empty database, or \
                 pass --resume to continue an import into this store that stopped part-way \
                 (lines up to position {head} are then checked against the store and skipped)"
            );
        }
        expected_at_head = store
            .read_event(head)
            .await
            .with_context(|| format!("cannot read position {head} of {described}"))?;
    }

    let mut input = BufReader::with_capacity(
        1 << 20,
        Counting {
            inner: reader,
            bytes: 0,
        },
    );
    let bar = progress_bar(
        length,
        if length.is_some() {
            "importing {bar:30} {bytes}/{total_bytes}, {bytes_per_sec}, {eta} left"
        } else {
            "importing {spinner} {bytes} read, {bytes_per_sec}"
        },
    );
    let mut progress = Progress {
        described,
        head,
        events: 0,
        tombstones: 0,
    };
    let mut batch: Vec<ImportRecord> = Vec::with_capacity(args.batch_size);
    let mut lines_of_batch: Vec<u64> = Vec::with_capacity(args.batch_size);
    let mut skipped = 0u64;
    let mut seen_first = false;
    // The header's promise: every event up to this position follows it.
    let mut promised: Option<u64> = None;
    let mut last_position = head;
    let mut line = String::new();
    let mut number = 0u64;
    loop {
        line.clear();
        number += 1;
        let read = input
            .read_line(&mut line)
            .with_context(|| format!("{source}, line {number}: cannot read it"))?;
        if read == 0 {
            break;
        }
        let text = line.trim_end_matches(['\n', '\r']);
        if text.trim().is_empty() {
            continue;
        }
        let first = !seen_first;
        seen_first = true;
        let record = match parse_line(text) {
            Ok(Line::Header(header)) if first => {
                if header.cairn_export != FORMAT_VERSION {
                    bail!(
                        "{source}, line {number}: format version {} is not one this cairn reads (it reads {FORMAT_VERSION})",
                        header.cairn_export
                    );
                }
                promised = Some(header.head_position);
                continue;
            }
            Ok(Line::Header(_)) => {
                bail!(
                    "{source}, line {number}: a header may only be the first line; {}",
                    progress.so_far()
                )
            }
            Ok(Line::Record(record)) => record,
            Err(error) => bail!("{source}, line {number}: {error}; {}", progress.so_far()),
        };
        if let ImportRecord::Event(event) = &record {
            last_position = last_position.max(event.position);
        }
        if let ImportRecord::Event(event) = &record
            && event.position <= head
        {
            if event.position == head
                && expected_at_head
                    .as_ref()
                    .is_none_or(|stored| stored.id != event.id)
            {
                bail!(
                    "{source}, line {number}: the event at position {head} is not the one {} holds there: this file is not what was imported into it",
                    progress.described
                );
            }
            skipped += 1;
            continue;
        }
        batch.push(record);
        lines_of_batch.push(number);
        if batch.len() >= args.batch_size {
            import_batch(
                &store,
                &mut batch,
                &mut lines_of_batch,
                &mut progress,
                &source,
            )
            .await?;
            bar.set_position(input.get_ref().bytes);
        }
    }
    if let Some(promised) = promised
        && last_position < promised
    {
        bail!(
            "{source} ends at position {last_position}, but its header says the export went to position {promised}: the file is cut short. Nothing of its last {} records was written; {}",
            batch.len(),
            progress.so_far()
        );
    }
    import_batch(
        &store,
        &mut batch,
        &mut lines_of_batch,
        &mut progress,
        &source,
    )
    .await?;
    bar.finish_and_clear();
    if skipped > 0 {
        eprintln!("skipped {skipped} events the store held already (positions up to {head})");
    }
    eprintln!(
        "imported {} events and {} deleted streams from {source} into {}; its head is at position {}",
        progress.events, progress.tombstones, progress.described, progress.head
    );
    Ok(())
}

async fn import_batch(
    store: &SharedStore,
    batch: &mut Vec<ImportRecord>,
    lines: &mut Vec<u64>,
    progress: &mut Progress,
    source: &str,
) -> anyhow::Result<()> {
    if batch.is_empty() {
        return Ok(());
    }
    let records = std::mem::take(batch);
    let first_line = lines.first().copied().unwrap_or(0);
    let last_line = lines.last().copied().unwrap_or(0);
    match store.import_events(records).await {
        Ok(summary) => {
            progress.head = summary.head;
            progress.events += summary.events as u64;
            progress.tombstones += summary.tombstones as u64;
            lines.clear();
            Ok(())
        }
        Err(ImportError::Rejected { index, reason }) => {
            let number = lines.get(index).copied().unwrap_or(first_line);
            bail!(
                "{source}, line {number}: {reason}. Nothing of lines {first_line} to {last_line} was written; {}",
                progress.so_far()
            )
        }
        Err(ImportError::Store(error)) => Err(anyhow::Error::new(error).context(format!(
            "cannot import lines {first_line} to {last_line} of {source} into {}; {}",
            progress.described,
            progress.so_far()
        ))),
    }
}
