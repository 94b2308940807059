use std::fmt;

use crate::Version;

/// What the writer expects of a stream before its append.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExpectedVersion {
    /// No check (the default).
    #[default]
    Any,
    /// The stream has no events yet.
    NoStream,
    /// The stream has at least one event.
    Exists,
    /// The stream's last event has exactly this version.
    Exact(Version),
}

/// The stream was not in the state the writer expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrongExpectedVersion {
    pub expected: ExpectedVersion,
    /// The stream's last version, `None` when the stream has no events.
    pub actual: Option<Version>,
}

impl ExpectedVersion {
    /// Checks the expectation against the stream's current last version
    /// (`None` when the stream does not exist).
    pub fn check(self, actual: Option<Version>) -> Result<(), WrongExpectedVersion> {
        let holds = match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => actual.is_none(),
            ExpectedVersion::Exists => actual.is_some(),
            ExpectedVersion::Exact(expected) => actual == Some(expected),
        };
        if holds {
            Ok(())
        } else {
            Err(WrongExpectedVersion {
                expected: self,
                actual,
            })
        }
    }
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any"),
            ExpectedVersion::NoStream => f.write_str("no_stream"),
            ExpectedVersion::Exists => f.write_str("exists"),
            ExpectedVersion::Exact(version) => write!(f, "{version}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ExpectedVersion::*;

    #[test]
    fn each_form_against_a_missing_and_an_existing_stream() {
        assert!(Any.check(None).is_ok());
        assert!(Any.check(Some(3)).is_ok());
        assert!(NoStream.check(None).is_ok());
        assert!(NoStream.check(Some(0)).is_err());
        assert!(Exists.check(None).is_err());
        assert!(Exists.check(Some(0)).is_ok());
        assert!(Exact(3).check(Some(3)).is_ok());
        assert!(Exact(3).check(Some(2)).is_err());
        assert!(Exact(0).check(None).is_err());
        let err = Exact(1).check(Some(4)).unwrap_err();
        assert_eq!((err.expected, err.actual), (Exact(1), Some(4)));
    }
}
