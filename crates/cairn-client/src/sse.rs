//! A Server-Sent Events parser (the WHATWG `text/event-stream` format), fed with the
//! chunks of a response body as they arrive: lines may be split anywhere across chunks,
//! end in `\n`, `\r\n` or `\r`, and an event's `data` may span several lines.

use std::collections::VecDeque;

/// One thing the stream said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SseItem {
    /// An event, dispatched by a blank line.
    Event(SseEvent),
    /// A comment line (`: keepalive`), without the colon and one leading space.
    Comment(String),
    /// A `retry:` field: the reconnection delay the server asks for, in milliseconds.
    Retry(u64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SseEvent {
    /// The `id:` given in this event, if any.
    pub id: Option<String>,
    /// The `event:` type, if any (the default type is `message`).
    pub event: Option<String>,
    /// The `data:` lines, joined with `\n`.
    pub data: String,
}

/// Incremental parser: [`SseParser::feed`] chunks, then take the complete items with
/// [`SseParser::next_item`].
#[derive(Debug, Default)]
pub(crate) struct SseParser {
    /// Bytes of the line not yet terminated.
    line: Vec<u8>,
    /// The last chunk ended in `\r`: a `\n` starting the next one belongs to it.
    after_cr: bool,
    /// Whether the stream's start (and a possible byte-order mark) is behind us.
    started: bool,
    id: Option<String>,
    event: Option<String>,
    data: Vec<u8>,
    has_data: bool,
    items: VecDeque<SseItem>,
}

impl SseParser {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Forgets everything partial (a new connection starts a new stream).
    pub(crate) fn reset(&mut self) {
        *self = Self::default();
    }

    pub(crate) fn next_item(&mut self) -> Option<SseItem> {
        self.items.pop_front()
    }

    pub(crate) fn feed(&mut self, mut chunk: &[u8]) {
        if !self.started {
            // A UTF-8 byte-order mark may open the stream; it may itself be split.
            let pending = self.line.len();
            let bom = b"\xEF\xBB\xBF";
            let take = (bom.len() - pending).min(chunk.len());
            if bom[pending..pending + take] == chunk[..take] {
                if pending + take < bom.len() {
                    self.line.extend_from_slice(&chunk[..take]);
                    return;
                }
                self.line.clear();
                chunk = &chunk[take..];
            } else {
                // Not a mark after all: what was held back is the start of a line.
            }
            self.started = true;
        }
        if self.after_cr {
            self.after_cr = false;
            if let Some(rest) = chunk.strip_prefix(b"\n") {
                chunk = rest;
            }
        }
        while let Some(end) = memchr::memchr2(b'\n', b'\r', chunk) {
            let terminator = chunk[end];
            if self.line.is_empty() {
                self.process_line_slice(&chunk[..end]);
            } else {
                self.line.extend_from_slice(&chunk[..end]);
                let line = std::mem::take(&mut self.line);
                self.process_line_slice(&line);
                self.line = line;
                self.line.clear();
            }
            chunk = &chunk[end + 1..];
            if terminator == b'\r' {
                match chunk.first() {
                    Some(b'\n') => chunk = &chunk[1..],
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
        }
        self.line.extend_from_slice(chunk);
    }

    fn process_line_slice(&mut self, line: &[u8]) {
        if line.is_empty() {
            self.dispatch();
            return;
        }
        if let Some(comment) = line.strip_prefix(b":") {
            let comment = comment.strip_prefix(b" ").unwrap_or(comment);
            self.items.push_back(SseItem::Comment(
                String::from_utf8_lossy(comment).into_owned(),
            ));
            return;
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"data" => {
                if self.has_data {
                    self.data.push(b'\n');
                }
                self.data.extend_from_slice(value);
                self.has_data = true;
            }
            // An id with a NUL is ignored, as the format says.
            b"id" if !value.contains(&0) => {
                self.id = Some(String::from_utf8_lossy(value).into_owned());
            }
            b"event" => self.event = Some(String::from_utf8_lossy(value).into_owned()),
            b"retry" => {
                if let Some(millis) = std::str::from_utf8(value)
                    .ok()
                    .filter(|text| !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|text| text.parse().ok())
                {
                    self.items.push_back(SseItem::Retry(millis));
                }
            }
            // Unknown fields are ignored, as the format says.
            _ => {}
        }
    }

    fn dispatch(&mut self) {
        let id = self.id.take();
        let event = self.event.take();
        if !self.has_data {
            return;
        }
        self.has_data = false;
        let data = std::mem::take(&mut self.data);
        let data = match String::from_utf8(data) {
            Ok(text) => text,
            Err(error) => String::from_utf8_lossy(error.as_bytes()).into_owned(),
        };
        self.items
            .push_back(SseItem::Event(SseEvent { id, event, data }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_in_chunks(input: &[u8], chunk: usize) -> Vec<SseItem> {
        let mut parser = SseParser::new();
        let mut items = Vec::new();
        for piece in input.chunks(chunk.max(1)) {
            parser.feed(piece);
            while let Some(item) = parser.next_item() {
                items.push(item);
            }
        }
        items
    }

    fn event(id: Option<&str>, data: &str) -> SseItem {
        SseItem::Event(SseEvent {
            id: id.map(str::to_owned),
            event: None,
            data: data.to_owned(),
        })
    }

    #[test]
    fn events_comments_and_retries_parse_whatever_the_chunking() {
        let input = "\u{feff}: keepalive\r\nid: 1\ndata: {\"a\":1}\n\nid:2\r\ndata:first\rdata: second\r\n\r\nretry: 1500\n: closed: slow_consumer: bye\n\n";
        let expected = vec![
            SseItem::Comment("keepalive".into()),
            event(Some("1"), "{\"a\":1}"),
            event(Some("2"), "first\nsecond"),
            SseItem::Retry(1500),
            SseItem::Comment("closed: slow_consumer: bye".into()),
        ];
        for chunk in 1..=input.len() {
            assert_eq!(
                parse_in_chunks(input.as_bytes(), chunk),
                expected,
                "chunks of {chunk}"
            );
        }
    }

    #[test]
    fn a_frame_without_data_is_not_an_event_and_unknown_fields_are_ignored() {
        let input = b"id: 7\n\nevent: tick\nfoo: bar\ndata\n\ndata: x\nid: 9\nevent: e\n\n";
        let items = parse_in_chunks(input, 3);
        assert_eq!(
            items,
            vec![
                SseItem::Event(SseEvent {
                    id: None,
                    event: Some("tick".into()),
                    data: String::new()
                }),
                SseItem::Event(SseEvent {
                    id: Some("9".into()),
                    event: Some("e".into()),
                    data: "x".into()
                }),
            ]
        );
    }

    #[test]
    fn an_unterminated_event_waits_for_its_blank_line() {
        let mut parser = SseParser::new();
        parser.feed(b"id: 1\ndata: {\"pos");
        assert_eq!(parser.next_item(), None);
        parser.feed(b"ition\":1}\n");
        assert_eq!(parser.next_item(), None);
        parser.feed(b"\n");
        assert_eq!(
            parser.next_item(),
            Some(event(Some("1"), "{\"position\":1}"))
        );
        parser.reset();
        parser.feed(b"data: partial");
        parser.reset();
        parser.feed(b"data: whole\n\n");
        assert_eq!(parser.next_item(), Some(event(None, "whole")));
    }

    #[test]
    fn a_byte_order_mark_split_across_chunks_is_skipped_and_a_false_start_kept() {
        let mut parser = SseParser::new();
        parser.feed(b"\xEF\xBB");
        parser.feed(b"\xBFdata: y\n\n");
        assert_eq!(parser.next_item(), Some(event(None, "y")));
        // Not a mark: the byte belongs to the first line (an unknown field here).
        assert_eq!(
            parse_in_chunks(b"\xEFdata: x\n\ndata: z\n\n", 1),
            vec![event(None, "z")]
        );
    }
}
