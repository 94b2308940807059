use crate::{Position, RecordedEvent, category_of};

/// Which events of the global log a reader wants. Empty parts match everything:
/// `types` is any-of, `tags` is all-of, `category` is exact.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    pub category: Option<String>,
    pub types: Vec<String>,
    pub tags: Vec<String>,
    /// Only events of this one stream.
    pub stream: Option<String>,
}

impl EventFilter {
    pub fn is_empty(&self) -> bool {
        self.category.is_none()
            && self.types.is_empty()
            && self.tags.is_empty()
            && self.stream.is_none()
    }

    pub fn matches(&self, event: &RecordedEvent) -> bool {
        if let Some(category) = &self.category
            && category_of(event.stream.as_str()) != category
        {
            return false;
        }
        if let Some(stream) = &self.stream
            && event.stream.as_str() != stream
        {
            return false;
        }
        if !self.types.is_empty() && !self.types.contains(&event.event_type) {
            return false;
        }
        self.tags.iter().all(|tag| event.tags.contains(tag))
    }
}

/// A Dynamic-Consistency-Boundary condition: the append fails if any event matching
/// `query` was recorded after position `after`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendCondition {
    pub query: EventFilter,
    pub after: Position,
}
