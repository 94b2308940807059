//! The JSON Lines format of `cairn export` and `cairn import`, and how both open the
//! event store directly (no server, no HTTP: they work offline).
//!
//! ```text
//! {"cairn_export":1,"from_position":1,"head_position":3}
//! {"id":"…","stream":"order-1","type":"OrderPlaced","version":0,"position":1,"data":{…},"metadata":{},"tags":[],"recorded_at":"2026-11-24T05:31:30.123456Z"}
//! …
//! {"tombstone":{"stream":"order-2","version":4,"deleted_at":"2026-11-24T06:00:00.000000Z"}}
//! ```
//!
//! - The first line is a header: the format's version, the first position asked for
//!   and the head when the export began (every event up to it follows). It is
//!   optional on import; when present, a file that ends before its `head_position` is
//!   refused as cut short (before its last batch is written).
//! - Then one event a line, in position order, exactly as the HTTP API shows events:
//!   `data` and `metadata` byte for byte as stored, `recorded_at` in RFC 3339 with
//!   microseconds (the stored precision), so an export of an import is byte-identical.
//! - Then one tombstone a line per deleted stream, by name: its last version and when
//!   it was deleted. (Always all of them, also with `--from-position`.)
//!
//! Idempotency keys, consumer groups and read models are not exported: keys protect
//! retries of requests made to the source, groups and projections are set up again
//! on the target (projections rebuild from the imported log).

use std::io::Write;
use std::sync::Arc;

use anyhow::Context;
use cairn_core::{EventType, RecordedEvent, StreamName, Tag, compact_json, format_rfc3339_micros};
use cairn_store::sqlite::{SqliteOptions, SqliteStore};
use cairn_store::{ImportRecord, SharedStore, Tombstone};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::cli::{ServeArgs, StoreArgs};
use crate::settings::Settings;

/// The version of the format, in the header's `cairn_export`.
pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    pub cairn_export: u32,
    pub from_position: u64,
    pub head_position: u64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TombstoneLine {
    tombstone: TombstoneFields,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TombstoneFields {
    stream: String,
    version: u64,
    deleted_at: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventLine {
    id: Uuid,
    stream: String,
    #[serde(rename = "type")]
    event_type: String,
    version: u64,
    position: u64,
    data: Box<RawValue>,
    #[serde(default)]
    metadata: Option<Box<RawValue>>,
    #[serde(default)]
    tags: Vec<String>,
    recorded_at: String,
}

/// Appends the header line to `out`.
pub fn write_header(out: &mut Vec<u8>, header: &Header) -> anyhow::Result<()> {
    serde_json::to_writer(&mut *out, header).context("cannot encode the header")?;
    out.push(b'\n');
    Ok(())
}

/// Appends an event line to `out`: the event exactly as the HTTP API writes it.
pub fn write_event(out: &mut Vec<u8>, event: &RecordedEvent) {
    cairn_server::write_event(out, event);
    out.push(b'\n');
}

/// Appends a tombstone line to `out`.
pub fn write_tombstone(out: &mut Vec<u8>, tombstone: &Tombstone) -> anyhow::Result<()> {
    let line = TombstoneLine {
        tombstone: TombstoneFields {
            stream: tombstone.stream.as_str().to_owned(),
            version: tombstone.version,
            deleted_at: format_rfc3339_micros(tombstone.deleted_at),
        },
    };
    serde_json::to_writer(&mut *out, &line).context("cannot encode a tombstone")?;
    out.push(b'\n');
    Ok(())
}

/// One line of an export, read back.
#[derive(Debug)]
pub enum Line {
    Header(Header),
    Record(ImportRecord),
}

/// Reads one line (without its line break). The error says what is wrong with it; the
/// caller adds the line number.
pub fn parse_line(line: &str) -> Result<Line, String> {
    match serde_json::from_str::<EventLine>(line) {
        Ok(event) => event_from_line(event).map(|event| Line::Record(ImportRecord::Event(event))),
        Err(event_error) => {
            // Which kind of line was meant decides which error is worth showing.
            let keys: serde_json::Map<String, serde_json::Value> = serde_json::from_str(line)
                .map_err(|error| format!("not a JSON object: {error}"))?;
            if keys.contains_key("cairn_export") {
                return serde_json::from_str::<Header>(line)
                    .map(Line::Header)
                    .map_err(|error| format!("not a valid header: {error}"));
            }
            if keys.contains_key("tombstone") {
                let line = serde_json::from_str::<TombstoneLine>(line)
                    .map_err(|error| format!("not a valid tombstone: {error}"))?;
                let fields = line.tombstone;
                let stream = StreamName::parse(&fields.stream)
                    .map_err(|error| format!("tombstone: {}", error.message))?;
                let deleted_at = cairn_core::parse_rfc3339_micros(&fields.deleted_at)
                    .map_err(|error| format!("tombstone's deleted_at: {error}"))?;
                return Ok(Line::Record(ImportRecord::Tombstone(Tombstone {
                    stream,
                    version: fields.version,
                    deleted_at,
                })));
            }
            Err(format!("not a valid event: {event_error}"))
        }
    }
}

fn event_from_line(line: EventLine) -> Result<RecordedEvent, String> {
    let stream = StreamName::parse(&line.stream).map_err(|error| error.message)?;
    EventType::validate(&line.event_type).map_err(|error| error.message)?;
    Tag::validate_all(&line.tags).map_err(|error| error.message)?;
    if line.position == 0 {
        return Err("position 0: positions start at 1".into());
    }
    let metadata = match &line.metadata {
        Some(metadata) if metadata.get().trim_start().starts_with('{') => {
            compact_json(metadata.get())
        }
        Some(_) => return Err("metadata must be a JSON object".into()),
        None => "{}".to_owned(),
    };
    let recorded_at = cairn_core::parse_rfc3339_micros(&line.recorded_at)
        .map_err(|error| format!("recorded_at: {error}"))?;
    Ok(RecordedEvent {
        id: line.id,
        stream,
        event_type: line.event_type,
        version: line.version,
        position: line.position,
        data: compact_json(line.data.get()),
        metadata,
        tags: line.tags,
        recorded_at,
    })
}

/// An event store opened (and migrated) by [`open_store`].
pub struct OpenedStore {
    pub store: SharedStore,
    /// Which store, for messages: "PostgreSQL at …" or "the embedded store in …".
    pub described: String,
    /// The schema version its migrations brought it to.
    pub schema_version: usize,
}

/// Opens the event store `args` name (as `cairn serve` would: flags, `CAIRN_*`, the
/// `--config` file), applying the migrations it lacks.
pub async fn open_store(args: &StoreArgs) -> anyhow::Result<OpenedStore> {
    let serve = ServeArgs {
        config: args.config.clone(),
        data_dir: args.data_dir.clone(),
        database_url: args.database_url.clone(),
        ..ServeArgs::default()
    };
    let settings = Settings::resolve(&serve)?;
    match &settings.database {
        Some(database) => {
            let store = database.open(settings.idempotency_window).await?;
            Ok(OpenedStore {
                store,
                described: format!("PostgreSQL at {}", database.redacted_url()),
                schema_version: cairn_store::postgres::SCHEMA_VERSION,
            })
        }
        None => {
            let data_dir = settings.data_dir.clone();
            let options = SqliteOptions::new(data_dir.clone());
            let store = tokio::task::spawn_blocking(move || SqliteStore::open(options))
                .await
                .context("opening the store panicked")?
                .with_context(|| {
                    format!(
                        "cannot open the embedded store in {} (a server running on it holds it: stop it first, or export from a PostgreSQL store while it runs)",
                        data_dir.display()
                    )
                })?;
            let store: SharedStore = Arc::new(store);
            Ok(OpenedStore {
                store,
                described: format!("the embedded store in {}", data_dir.display()),
                schema_version: cairn_store::sqlite::SCHEMA_VERSION,
            })
        }
    }
}

/// A progress bar on stderr when it is a terminal; hidden otherwise.
pub fn progress_bar(length: Option<u64>, template: &str) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = match length {
        Some(length) => indicatif::ProgressBar::new(length),
        None => indicatif::ProgressBar::new_spinner(),
    };
    if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// Writes `buffer` to `out` and empties it.
pub fn flush_into(out: &mut dyn Write, buffer: &mut Vec<u8>) -> anyhow::Result<()> {
    out.write_all(buffer).context("cannot write the export")?;
    buffer.clear();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> RecordedEvent {
        RecordedEvent {
            id: Uuid::now_v7(),
            stream: StreamName::parse("order-1").unwrap(),
            event_type: "OrderPlaced".into(),
            version: 3,
            position: 9,
            data: r#"{"a":[1,2.50,"é\n"],"b":null}"#.into(),
            metadata: r#"{"$correlation_id":"x"}"#.into(),
            tags: vec!["customer:7".into()],
            recorded_at: 1_795_498_290_123_456,
        }
    }

    #[test]
    fn lines_read_back_to_what_was_written() {
        let event = event();
        let mut out = Vec::new();
        write_header(
            &mut out,
            &Header {
                cairn_export: FORMAT_VERSION,
                from_position: 1,
                head_position: 9,
            },
        )
        .unwrap();
        write_event(&mut out, &event);
        let tombstone = Tombstone {
            stream: StreamName::parse("order-2").unwrap(),
            version: 4,
            deleted_at: 1_795_498_290_000_001,
        };
        write_tombstone(&mut out, &tombstone).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<_> = text.lines().map(|line| parse_line(line).unwrap()).collect();
        assert!(matches!(&lines[0], Line::Header(h) if h.head_position == 9));
        assert!(matches!(&lines[1], Line::Record(ImportRecord::Event(e)) if *e == event));
        assert!(matches!(&lines[2], Line::Record(ImportRecord::Tombstone(t)) if *t == tombstone));
    }

    #[test]
    fn bad_lines_say_what_is_wrong() {
        for (line, expected) in [
            ("{", "not a JSON object"),
            ("[1]", "not a JSON object"),
            (r#"{"id":"x"}"#, "not a valid event"),
            (r#"{"cairn_export":"one"}"#, "not a valid header"),
            (
                r#"{"tombstone":{"stream":"$x","version":1,"deleted_at":"2026-11-24T05:31:30Z"}}"#,
                "tombstone",
            ),
            (
                r#"{"id":"0190c6a4-8f6e-7b7a-8a6e-2f0c6d8e9a10","stream":"a","type":"T","version":0,"position":1,"data":1,"metadata":[],"recorded_at":"2026-11-24T05:31:30Z"}"#,
                "metadata must be a JSON object",
            ),
            (
                r#"{"id":"0190c6a4-8f6e-7b7a-8a6e-2f0c6d8e9a10","stream":"a","type":"T","version":0,"position":1,"data":1,"recorded_at":"yesterday"}"#,
                "recorded_at",
            ),
        ] {
            let error = parse_line(line).unwrap_err();
            assert!(error.contains(expected), "{line}: {error}");
        }
        let spaced = r#"{ "id": "0190c6a4-8f6e-7b7a-8a6e-2f0c6d8e9a10", "stream": "a", "type": "T", "version": 0, "position": 1, "data": { "x": [1, 2] }, "recorded_at": "2026-11-24T05:31:30Z" }"#;
        let Line::Record(ImportRecord::Event(event)) = parse_line(spaced).unwrap() else {
            panic!("an event");
        };
        assert_eq!(
            (event.data.as_str(), event.metadata.as_str()),
            (r#"{"x":[1,2]}"#, "{}")
        );
    }
}
