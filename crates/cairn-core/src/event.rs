use uuid::Uuid;

use crate::{Position, StreamName, ValidationError, Version};

/// The longest event type and the longest tag, in bytes.
pub const MAX_TYPE_LEN: usize = 200;
pub const MAX_TAG_LEN: usize = 200;
/// The most tags one event may carry.
pub const MAX_TAGS: usize = 32;

/// A validated event type: 1–200 bytes, no control characters.
pub struct EventType;

impl EventType {
    pub fn validate(event_type: &str) -> Result<(), ValidationError> {
        validate_label("event type", event_type, MAX_TYPE_LEN)
    }
}

/// A validated tag: 1–200 bytes, no control characters (`customer:42`).
pub struct Tag;

impl Tag {
    pub fn validate_all(tags: &[String]) -> Result<(), ValidationError> {
        if tags.len() > MAX_TAGS {
            return Err(ValidationError::new(format!(
                "an event has {} tags; the limit is {MAX_TAGS}",
                tags.len()
            )));
        }
        tags.iter()
            .try_for_each(|tag| validate_label("tag", tag, MAX_TAG_LEN))
    }
}

fn validate_label(what: &str, value: &str, max: usize) -> Result<(), ValidationError> {
    if value.is_empty() {
        return Err(ValidationError::new(format!("{what} must not be empty")));
    }
    if value.len() > max {
        return Err(ValidationError::new(format!(
            "{what} is {} bytes long; the limit is {max}",
            value.len()
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(ValidationError::new(format!(
            "{what} must not contain control characters"
        )));
    }
    Ok(())
}

/// An event as a writer hands it to the store. `data` and `metadata` are compact JSON
/// text (no newlines), already validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    pub id: Uuid,
    pub event_type: String,
    /// Any JSON value, compact.
    pub data: String,
    /// A JSON object, compact (`{}` when the writer gave none).
    pub metadata: String,
    pub tags: Vec<String>,
}

/// An event as the store recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedEvent {
    pub id: Uuid,
    pub stream: StreamName,
    pub event_type: String,
    pub version: Version,
    pub position: Position,
    /// Compact JSON text.
    pub data: String,
    /// Compact JSON object text.
    pub metadata: String,
    pub tags: Vec<String>,
    /// Microseconds since the Unix epoch, UTC.
    pub recorded_at: i64,
}

/// Removes the insignificant white space from valid JSON text, so that it fits on one
/// line (Server-Sent Events need that) and takes less room. The input must already be
/// valid JSON; string contents are left untouched.
pub fn compact_json(json: &str) -> String {
    let bytes = json.as_bytes();
    // Most bodies are compact already: two vectorised scans find that out.
    if memchr::memchr3(b' ', b'\n', b'\r', bytes).is_none()
        && memchr::memchr(b'\t', bytes).is_none()
    {
        return json.to_owned();
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while let Some(&byte) = bytes.get(at) {
        match byte {
            b' ' | b'\n' | b'\r' | b'\t' => at += 1,
            b'"' => {
                // A string is kept whole, white space and escapes included.
                let end = past_string(bytes, at + 1);
                out.extend_from_slice(bytes.get(at..end).unwrap_or_default());
                at = end;
            }
            _ => {
                out.push(byte);
                at += 1;
            }
        }
    }
    // Only ASCII white space outside strings was removed, so the text is still UTF-8.
    String::from_utf8(out).unwrap_or_else(|_| json.to_owned())
}

/// The deepest nesting of arrays and objects in JSON text (0 for a scalar). Works on
/// any bytes without allocating, so a request can be refused before it is parsed.
pub fn json_depth(bytes: &[u8]) -> usize {
    let mut depth = 0usize;
    let mut deepest = 0usize;
    let mut at = 0;
    while let Some(&byte) = bytes.get(at) {
        at += 1;
        match byte {
            b'"' => at = past_string(bytes, at),
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// Where the string whose contents begin at `at` ends: just past its closing quote, or
/// the end of `bytes` when it is not closed. Jumps from one quote or backslash to the
/// next (a vectorised search), since event payloads are mostly string contents.
fn past_string(bytes: &[u8], mut at: usize) -> usize {
    while let Some(rest) = bytes.get(at..) {
        let Some(found) = memchr::memchr2(b'"', b'\\', rest) else {
            break;
        };
        at += found;
        if rest.get(found) == Some(&b'"') {
            return at + 1;
        }
        at += 2; // the backslash and the byte it escapes
    }
    bytes.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn compacting_keeps_strings_and_drops_layout() {
        let text = "{ \"a\" : [1, 2,\n 3],\t\"b\": \"x y\\\" z\" }";
        assert_eq!(compact_json(text), r#"{"a":[1,2,3],"b":"x y\" z"}"#);
        assert_eq!(compact_json("42"), "42");
    }

    #[test]
    fn depth_counts_nesting_outside_strings() {
        assert_eq!(json_depth(b"1"), 0);
        assert_eq!(json_depth(b"{\"a\":[{}]}"), 3);
        assert_eq!(json_depth(b"[\"[[[[\"]"), 1);
        assert_eq!(json_depth(&[b'['; 10_000]), 10_000);
    }

    #[test]
    fn labels_are_checked() {
        assert!(EventType::validate("OrderPlaced").is_ok());
        assert!(EventType::validate("").is_err());
        assert!(EventType::validate("a\nb").is_err());
        assert!(Tag::validate_all(&["customer:42".into()]).is_ok());
        assert!(Tag::validate_all(&vec!["t".into(); MAX_TAGS + 1]).is_err());
    }

    /// `json_depth` as the plain byte-by-byte walk it speeds up.
    fn depth_byte_by_byte(bytes: &[u8]) -> usize {
        let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0, false, false);
        for &byte in bytes {
            if in_string {
                if escaped {
                    escaped = false;
                } else if byte == b'\\' {
                    escaped = true;
                } else if byte == b'"' {
                    in_string = false;
                }
                continue;
            }
            match byte {
                b'"' => in_string = true,
                b'[' | b'{' => {
                    depth += 1;
                    deepest = deepest.max(depth);
                }
                b']' | b'}' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        deepest
    }

    proptest! {
        #[test]
        fn depth_agrees_with_the_byte_by_byte_walk(
            bytes in proptest::collection::vec(prop_oneof![
                Just(b'"'), Just(b'\\'), Just(b'['), Just(b']'), Just(b'{'), Just(b'}'),
                Just(b'x'), Just(b' '),
            ], 0..64)
        ) {
            prop_assert_eq!(json_depth(&bytes), depth_byte_by_byte(&bytes));
        }

        #[test]
        fn compacting_preserves_the_value(value in arb_json()) {
            let pretty = serde_json::to_string_pretty(&value).unwrap();
            let compact = compact_json(&pretty);
            prop_assert!(!compact.contains('\n'));
            let back: serde_json::Value = serde_json::from_str(&compact).unwrap();
            prop_assert_eq!(back, value);
        }
    }

    fn arb_json() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            ".*".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
                prop::collection::btree_map(".*", inner, 0..6)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }
}
