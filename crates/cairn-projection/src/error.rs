use cairn_core::Position;

/// Everything the read side can refuse or fail with.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ReadSideError {
    #[error("projection {0} does not exist")]
    ProjectionNotFound(String),
    #[error("query {0} does not exist")]
    QueryNotFound(String),
    /// A query parameter is unknown, missing, of the wrong type or out of bounds.
    #[error("parameter {name}: {message}")]
    InvalidParameter { name: String, message: String },
    /// The read model did not reach `min_position` within the wait.
    #[error(
        "the read model reflects position {position}, not yet {min_position}; retry later or wait longer"
    )]
    ConsistencyTimeout {
        min_position: Position,
        position: Position,
    },
    /// The configuration of projections or queries is invalid.
    #[error("{0}")]
    Config(String),
    /// The read-model database or the event store failed.
    #[error("read-model storage failure: {0}")]
    Storage(String),
}

impl ReadSideError {
    pub(crate) fn invalid_parameter(name: &str, message: impl Into<String>) -> Self {
        Self::InvalidParameter {
            name: name.to_owned(),
            message: message.into(),
        }
    }
}

pub(crate) fn storage(error: impl std::fmt::Display) -> ReadSideError {
    ReadSideError::Storage(error.to_string())
}

impl From<cairn_store::StoreError> for ReadSideError {
    fn from(error: cairn_store::StoreError) -> Self {
        storage(error)
    }
}
