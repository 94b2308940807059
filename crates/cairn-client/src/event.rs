//! Building events to append and reading the ones Cairn returns.

use cairn_api::{Event, EventInput};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::ClientError;

/// An event to append whose `data` is any JSON value.
///
/// ```
/// let event = cairn_client::event("OrderPlaced", serde_json::json!({"id": "o-1", "total": 42}));
/// assert_eq!(event.data.get(), r#"{"id":"o-1","total":42}"#);
/// ```
pub fn event(event_type: impl Into<String>, data: serde_json::Value) -> EventInput {
    EventInput {
        id: None,
        event_type: event_type.into(),
        // A `Value` always serialises: its map keys are strings and it holds no NaN.
        data: serde_json::value::to_raw_value(&data).expect("a JSON value serialises"),
        metadata: None,
        tags: None,
    }
}

/// An event to append whose `data` is the JSON form of `data`.
pub fn event_from<T: Serialize + ?Sized>(
    event_type: impl Into<String>,
    data: &T,
) -> Result<EventInput, ClientError> {
    Ok(EventInput {
        id: None,
        event_type: event_type.into(),
        data: to_raw(data, "data")?,
        metadata: None,
        tags: None,
    })
}

fn to_raw<T: Serialize + ?Sized>(value: &T, what: &str) -> Result<Box<RawValue>, ClientError> {
    serde_json::value::to_raw_value(value)
        .map_err(|error| ClientError::Invalid(format!("event {what} is not JSON: {error}")))
}

/// Builder-style additions to an [`EventInput`].
pub trait EventInputExt: Sized {
    /// Sets the event id (for idempotent re-sends of the same event).
    fn with_id(self, id: Uuid) -> Self;
    /// Sets the metadata; it must serialise to a JSON object.
    fn with_metadata<T: Serialize + ?Sized>(self, metadata: &T) -> Result<Self, ClientError>;
    /// Adds a tag (`customer:42`).
    fn with_tag(self, tag: impl Into<String>) -> Self;
}

impl EventInputExt for EventInput {
    fn with_id(mut self, id: Uuid) -> Self {
        self.id = Some(id);
        self
    }

    fn with_metadata<T: Serialize + ?Sized>(mut self, metadata: &T) -> Result<Self, ClientError> {
        let raw = to_raw(metadata, "metadata")?;
        if !raw.get().starts_with('{') {
            return Err(ClientError::Invalid(
                "event metadata must be a JSON object".into(),
            ));
        }
        self.metadata = Some(raw);
        Ok(self)
    }

    fn with_tag(mut self, tag: impl Into<String>) -> Self {
        self.tags.get_or_insert_with(Vec::new).push(tag.into());
        self
    }
}

/// Typed access to a recorded event's JSON.
pub trait EventExt {
    /// The event's `data` decoded as `T`.
    fn data_as<T: DeserializeOwned>(&self) -> Result<T, ClientError>;
    /// The event's `metadata` decoded as `T`.
    fn metadata_as<T: DeserializeOwned>(&self) -> Result<T, ClientError>;
}

impl EventExt for Event {
    fn data_as<T: DeserializeOwned>(&self) -> Result<T, ClientError> {
        serde_json::from_str(self.data.get()).map_err(|error| {
            ClientError::Decode(format!(
                "data of event {} ({}) at {}@{}: {error}",
                self.id, self.event_type, self.stream, self.version
            ))
        })
    }

    fn metadata_as<T: DeserializeOwned>(&self) -> Result<T, ClientError> {
        serde_json::from_str(self.metadata.get()).map_err(|error| {
            ClientError::Decode(format!(
                "metadata of event {} at {}@{}: {error}",
                self.id, self.stream, self.version
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct Placed {
        id: &'static str,
        total: u32,
    }

    #[test]
    fn events_are_built_from_values_and_serialisable_types() {
        let from_value = event("Placed", serde_json::json!({"id": "o-1"}));
        assert_eq!(from_value.data.get(), r#"{"id":"o-1"}"#);

        let typed = event_from(
            "Placed",
            &Placed {
                id: "o-1",
                total: 3,
            },
        )
        .unwrap()
        .with_tag("customer:42")
        .with_metadata(&serde_json::json!({"source": "test"}))
        .unwrap();
        assert_eq!(typed.data.get(), r#"{"id":"o-1","total":3}"#);
        assert_eq!(typed.tags.as_deref(), Some(&["customer:42".to_owned()][..]));
        let json = serde_json::to_string(&typed).unwrap();
        assert_eq!(
            json,
            r#"{"type":"Placed","data":{"id":"o-1","total":3},"metadata":{"source":"test"},"tags":["customer:42"]}"#
        );
    }

    #[test]
    fn metadata_must_be_an_object() {
        let error = event("Placed", serde_json::json!(1))
            .with_metadata(&[1, 2])
            .unwrap_err();
        assert!(matches!(error, ClientError::Invalid(_)), "{error}");
    }
}
