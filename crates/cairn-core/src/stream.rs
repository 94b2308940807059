use std::fmt;
use std::sync::Arc;

use crate::ValidationError;

/// The longest stream name Cairn accepts, in characters.
pub const MAX_STREAM_NAME_LEN: usize = 200;

/// A validated stream name: 1–200 characters from `[A-Za-z0-9_.:@-]`, not starting with `$`.
///
/// Cheap to clone (shared string).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamName(Arc<str>);

impl StreamName {
    pub fn parse(name: &str) -> Result<Self, ValidationError> {
        if name.is_empty() {
            return Err(ValidationError::new("stream name must not be empty"));
        }
        if name.len() > MAX_STREAM_NAME_LEN {
            return Err(ValidationError::new(format!(
                "stream name is {} characters long; the limit is {MAX_STREAM_NAME_LEN}",
                name.len()
            )));
        }
        if name.starts_with('$') {
            return Err(ValidationError::new(
                "stream names starting with '$' are reserved for Cairn",
            ));
        }
        if let Some(bad) = name.chars().find(|c| !is_stream_char(*c)) {
            return Err(ValidationError::new(format!(
                "stream name contains {bad:?}; allowed are A-Z, a-z, 0-9 and _ . : @ -"
            )));
        }
        Ok(Self(Arc::from(name)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The part before the first `-` (`order-17` → `order`); the whole name if it has none.
    pub fn category(&self) -> &str {
        category_of(&self.0)
    }
}

/// The category of a stream name: the part before the first `-`.
pub fn category_of(name: &str) -> &str {
    name.split_once('-').map_or(name, |(category, _)| category)
}

fn is_stream_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '@' | '-')
}

impl fmt::Display for StreamName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for StreamName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl AsRef<str> for StreamName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_alphabet() {
        for name in ["order-17", "a", "A.b:c@d_e-f", &"x".repeat(200)] {
            assert!(StreamName::parse(name).is_ok(), "{name}");
        }
    }

    #[test]
    fn refuses_bad_names_with_a_reason() {
        for (name, reason) in [
            ("", "empty"),
            ("$all", "reserved"),
            ("a b", "contains"),
            ("a/b", "contains"),
            ("é", "contains"),
            (&"x".repeat(201), "limit"),
        ] {
            let err = StreamName::parse(name).unwrap_err();
            assert!(err.message.contains(reason), "{name}: {}", err.message);
        }
    }

    #[test]
    fn category_is_the_part_before_the_first_dash() {
        assert_eq!(StreamName::parse("order-17-a").unwrap().category(), "order");
        assert_eq!(StreamName::parse("order").unwrap().category(), "order");
        assert_eq!(category_of("-x"), "");
    }
}
