use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;
use utoipa::ToSchema;
use uuid::Uuid;

/// Expected version on append: an integer N (the stream's last version is N),
/// `"no_stream"`, `"exists"` or `"any"` (the default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExpectedVersion {
    #[default]
    Any,
    NoStream,
    Exists,
    Exact(u64),
}

impl utoipa::PartialSchema for ExpectedVersion {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
        OneOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
                        utoipa::openapi::KnownFormat::Int64,
                    )))
                    .minimum(Some(0)),
            )
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .enum_values(Some(["no_stream", "exists", "any"])),
            )
            .description(Some(
                "The stream's last version, or \"no_stream\", \"exists\", \"any\" (default).",
            ))
            .into()
    }
}

impl ToSchema for ExpectedVersion {}

impl Serialize for ExpectedVersion {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            ExpectedVersion::Any => serializer.serialize_str("any"),
            ExpectedVersion::NoStream => serializer.serialize_str("no_stream"),
            ExpectedVersion::Exists => serializer.serialize_str("exists"),
            ExpectedVersion::Exact(version) => serializer.serialize_u64(*version),
        }
    }
}

impl<'de> Deserialize<'de> for ExpectedVersion {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ExpectedVersionVisitor;
        impl Visitor<'_> for ExpectedVersionVisitor {
            type Value = ExpectedVersion;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#"a version (an integer ≥ 0), "no_stream", "exists" or "any""#)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(ExpectedVersion::Exact(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                u64::try_from(v)
                    .map(ExpectedVersion::Exact)
                    .map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                match v {
                    "any" => Ok(ExpectedVersion::Any),
                    "no_stream" => Ok(ExpectedVersion::NoStream),
                    "exists" => Ok(ExpectedVersion::Exists),
                    other => Err(E::invalid_value(de::Unexpected::Str(other), &self)),
                }
            }
        }
        deserializer.deserialize_any(ExpectedVersionVisitor)
    }
}

/// One event to append.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventInput {
    /// A UUID; Cairn assigns a UUIDv7 when absent. Re-sending ids that already stand in
    /// the stream, in the same order, is an idempotent success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Uuid>,
    #[serde(rename = "type")]
    pub event_type: String,
    /// Any JSON value.
    #[schema(value_type = Object)]
    pub data: Box<RawValue>,
    /// A JSON object. Keys beginning with `$` are Cairn's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Box<RawValue>>,
    /// Strings for cross-stream queries (`customer:42`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
}

/// `POST /v1/streams/{stream}/events`
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AppendRequest {
    #[serde(default)]
    pub expected_version: ExpectedVersion,
    /// 1–1000 events, appended atomically.
    pub events: Vec<EventInput>,
}

/// The answer to a successful append to one stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AppendResponse {
    pub stream: String,
    pub first_version: u64,
    pub last_version: u64,
    pub first_position: u64,
    pub last_position: u64,
}

/// One event of a multi-stream append: an event plus the stream it goes to.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MultiEventInput {
    pub stream: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Uuid>,
    #[serde(rename = "type")]
    pub event_type: String,
    #[schema(value_type = Object)]
    pub data: Box<RawValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Box<RawValue>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
}

/// Which events an append condition or a global read looks at. Empty parts match
/// everything; `types` is any-of, `tags` all-of.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub types: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
}

/// Fails the append with 409 `condition_failed` if any event matching `query` was
/// recorded at a position greater than `after` (Dynamic Consistency Boundary).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AppendCondition {
    pub query: EventQuery,
    pub after: u64,
}

/// `POST /v1/events`: an atomic append to one or more streams. Events are recorded in
/// the order given.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MultiAppendRequest {
    pub events: Vec<MultiEventInput>,
    /// Expected version per stream; streams not named here are not checked.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub expected_versions: BTreeMap<String, ExpectedVersion>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<AppendCondition>,
}

/// The answer to a successful multi-stream append.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MultiAppendResponse {
    pub first_position: u64,
    pub last_position: u64,
    /// One entry per stream, in order of first appearance in the request.
    pub streams: Vec<AppendResponse>,
}

/// A recorded event.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Event {
    pub id: Uuid,
    pub stream: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub version: u64,
    pub position: u64,
    #[schema(value_type = Object)]
    pub data: Box<RawValue>,
    #[schema(value_type = Object)]
    pub metadata: Box<RawValue>,
    pub tags: Vec<String>,
    /// RFC 3339, UTC, microseconds.
    pub recorded_at: String,
}

/// A recorded event borrowed from storage, written to JSON without re-parsing its
/// `data` and `metadata` (they are stored as compact, valid JSON). Produces exactly the
/// shape of [`Event`].
pub struct EventRef<'a> {
    pub id: Uuid,
    pub stream: &'a str,
    pub event_type: &'a str,
    pub version: u64,
    pub position: u64,
    /// Compact, valid JSON.
    pub data: &'a str,
    /// Compact, valid JSON object.
    pub metadata: &'a str,
    pub tags: &'a [String],
    pub recorded_at: &'a str,
}

impl EventRef<'_> {
    /// Appends this event's JSON (one line) to `out`.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"id\":\"");
        out.extend_from_slice(
            self.id
                .hyphenated()
                .encode_lower(&mut Uuid::encode_buffer())
                .as_bytes(),
        );
        out.extend_from_slice(b"\",\"stream\":");
        write_json_string(out, self.stream);
        out.extend_from_slice(b",\"type\":");
        write_json_string(out, self.event_type);
        out.extend_from_slice(b",\"version\":");
        out.extend_from_slice(self.version.to_string().as_bytes());
        out.extend_from_slice(b",\"position\":");
        out.extend_from_slice(self.position.to_string().as_bytes());
        out.extend_from_slice(b",\"data\":");
        out.extend_from_slice(self.data.as_bytes());
        out.extend_from_slice(b",\"metadata\":");
        out.extend_from_slice(self.metadata.as_bytes());
        out.extend_from_slice(b",\"tags\":[");
        for (index, tag) in self.tags.iter().enumerate() {
            if index > 0 {
                out.push(b',');
            }
            write_json_string(out, tag);
        }
        out.extend_from_slice(b"],\"recorded_at\":");
        write_json_string(out, self.recorded_at);
        out.push(b'}');
    }
}

fn write_json_string(out: &mut Vec<u8>, value: &str) {
    // Writing a &str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, value);
}

/// `GET /v1/streams/{stream}/events`
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ReadStreamResponse {
    pub events: Vec<Event>,
    /// The version to pass as `from` for the next page, `null` at the end.
    pub next: Option<u64>,
}

/// `GET /v1/streams/{stream}`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StreamInfo {
    pub stream: String,
    /// The last event's version.
    pub version: u64,
    /// The last event's position in the global log.
    pub position: u64,
    pub created_at: String,
    pub updated_at: String,
}

/// `GET /v1/streams`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StreamList {
    pub streams: Vec<String>,
    /// Pass as `after` for the next page; `null` at the end.
    pub next: Option<String>,
}

/// `GET /v1/events`
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ReadAllResponse {
    pub events: Vec<Event>,
    /// Where to continue reading: every matching event before it has been returned.
    pub next_from_position: u64,
    /// The last position in the global log when the read was made.
    pub head_position: u64,
}

/// `GET /health/live`, `GET /health/ready`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `ok`, or `unavailable`.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_position: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The read replicas (PostgreSQL with `--replica-url`); absent without any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<Vec<ReplicaHealth>>,
}

/// A read replica in `GET /health/ready`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ReplicaHealth {
    /// `host:port/dbname`.
    pub replica: String,
    /// In rotation: its last probe succeeded. A replica that is down only sends reads
    /// to the primary; it does not make the instance unready.
    pub up: bool,
    /// The position it had replayed at its last successful probe.
    pub replayed_position: u64,
    /// Positions it was behind this instance's head at that probe.
    pub lag_positions: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_version_forms_round_trip() {
        for (json, value) in [
            ("3", ExpectedVersion::Exact(3)),
            ("\"any\"", ExpectedVersion::Any),
            ("\"no_stream\"", ExpectedVersion::NoStream),
            ("\"exists\"", ExpectedVersion::Exists),
        ] {
            assert_eq!(
                serde_json::from_str::<ExpectedVersion>(json).unwrap(),
                value
            );
            assert_eq!(serde_json::to_string(&value).unwrap(), json);
        }
        for bad in ["-1", "\"latest\"", "1.5", "null", "[]"] {
            assert!(
                serde_json::from_str::<ExpectedVersion>(bad).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn event_ref_writes_the_shape_of_event() {
        let tags = vec!["customer:\"42\"".to_owned()];
        let event = EventRef {
            id: Uuid::nil(),
            stream: "order-1",
            event_type: "Placed\u{1}",
            version: 2,
            position: 9,
            data: r#"{"a":[1,"x"]}"#,
            metadata: "{}",
            tags: &tags,
            recorded_at: "2026-11-24T05:31:30.000000Z",
        };
        let mut out = Vec::new();
        event.write_json(&mut out);
        let parsed: Event = serde_json::from_slice(&out).unwrap();
        assert_eq!(parsed.event_type, "Placed\u{1}");
        assert_eq!(parsed.tags, tags);
        assert_eq!(parsed.data.get(), r#"{"a":[1,"x"]}"#);
        assert_eq!((parsed.version, parsed.position), (2, 9));
        assert!(!out.contains(&b'\n'));
    }
}
