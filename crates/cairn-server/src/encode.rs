//! Response bodies for event pages, written by hand: stored `data` and `metadata` are
//! compact valid JSON and are copied, never re-parsed.

use cairn_api::EventRef;
use cairn_core::RecordedEvent;
use cairn_store::{LogSlice, StreamSlice};

/// A rough size of one event's JSON, to size the output buffer once.
fn estimated_len(event: &RecordedEvent) -> usize {
    200 + event.stream.as_str().len()
        + event.event_type.len()
        + event.data.len()
        + event.metadata.len()
        + event.tags.iter().map(|tag| tag.len() + 3).sum::<usize>()
}

fn write_events(out: &mut Vec<u8>, events: &[RecordedEvent]) {
    out.extend_from_slice(b"\"events\":[");
    for (index, event) in events.iter().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        write_event(out, event);
    }
    out.push(b']');
}

/// One event as the JSON of `cairn_api::Event`.
pub fn write_event(out: &mut Vec<u8>, event: &RecordedEvent) {
    let recorded_at = cairn_core::format_rfc3339_micros(event.recorded_at);
    EventRef {
        id: event.id,
        stream: event.stream.as_str(),
        event_type: &event.event_type,
        version: event.version,
        position: event.position,
        data: &event.data,
        metadata: &event.metadata,
        tags: &event.tags,
        recorded_at: &recorded_at,
    }
    .write_json(out);
}

fn buffer_for(events: &[RecordedEvent]) -> Vec<u8> {
    Vec::with_capacity(64 + events.iter().map(estimated_len).sum::<usize>())
}

/// `{"events":[...],"next":version|null}`
pub fn stream_page(slice: &StreamSlice) -> Vec<u8> {
    let mut out = buffer_for(&slice.events);
    out.push(b'{');
    write_events(&mut out, &slice.events);
    out.extend_from_slice(b",\"next\":");
    match slice.next {
        Some(next) => out.extend_from_slice(next.to_string().as_bytes()),
        None => out.extend_from_slice(b"null"),
    }
    out.push(b'}');
    out
}

/// `{"events":[...],"next_from_position":N`: the part of a log page that never changes
/// once the page is sealed; `finish_log_page` completes it.
pub fn log_page_without_head(slice: &LogSlice) -> Vec<u8> {
    let mut out = buffer_for(&slice.events);
    out.push(b'{');
    write_events(&mut out, &slice.events);
    out.extend_from_slice(b",\"next_from_position\":");
    out.extend_from_slice(slice.next_from_position.to_string().as_bytes());
    out
}

/// Appends `,"head_position":N}` to `log_page_without_head`'s output.
pub fn finish_log_page(out: &mut Vec<u8>, head_position: u64) {
    out.extend_from_slice(b",\"head_position\":");
    out.extend_from_slice(head_position.to_string().as_bytes());
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_core::StreamName;
    use uuid::Uuid;

    fn event(version: u64) -> RecordedEvent {
        RecordedEvent {
            id: Uuid::now_v7(),
            stream: StreamName::parse("order-1").unwrap(),
            event_type: "Placed".into(),
            version,
            position: version + 1,
            data: r#"{"a":"\"x\""}"#.into(),
            metadata: "{}".into(),
            tags: vec!["t:1".into()],
            recorded_at: 1_795_498_290_123_456,
        }
    }

    #[test]
    fn pages_parse_as_the_wire_types() {
        let page = stream_page(&StreamSlice {
            events: vec![event(0), event(1)],
            next: Some(2),
        });
        let parsed: cairn_api::ReadStreamResponse = serde_json::from_slice(&page).unwrap();
        assert_eq!(parsed.events.len(), 2);
        assert_eq!(parsed.next, Some(2));
        assert_eq!(parsed.events[1].recorded_at, "2026-11-24T05:31:30.123456Z");

        let mut page = log_page_without_head(&LogSlice {
            events: vec![],
            next_from_position: 5,
            head_position: 4,
        });
        finish_log_page(&mut page, 4);
        let parsed: cairn_api::ReadAllResponse = serde_json::from_slice(&page).unwrap();
        assert_eq!((parsed.next_from_position, parsed.head_position), (5, 4));

        let empty = stream_page(&StreamSlice {
            events: vec![],
            next: None,
        });
        assert_eq!(empty, br#"{"events":[],"next":null}"#);
    }
}
