use cairn_api::{ErrorBody, ErrorCode};

/// Everything a call to Cairn can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Cairn answered with an error status and an error body.
    #[error("{}: {} (HTTP {status})", .body.error.code.as_str(), .body.error.message)]
    Api { status: u16, body: ErrorBody },
    /// The request did not get an answer: connection refused or reset, timeout, …
    #[error("could not reach Cairn: {0}")]
    Transport(#[source] reqwest::Error),
    /// Cairn answered, but not with what the contract says.
    #[error("could not decode Cairn's answer: {0}")]
    Decode(String),
    /// The call could not be made as asked: a bad base URL, a value that does not
    /// serialise to JSON, …
    #[error("invalid request: {0}")]
    Invalid(String),
}

impl ClientError {
    /// The API error code, for [`ClientError::Api`].
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Api { body, .. } => Some(body.error.code),
            _ => None,
        }
    }

    /// The HTTP status, for [`ClientError::Api`].
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The error body, for [`ClientError::Api`].
    pub fn body(&self) -> Option<&ErrorBody> {
        match self {
            ClientError::Api { body, .. } => Some(body),
            _ => None,
        }
    }

    /// An API error built from a response whose body is not Cairn's error JSON (a
    /// proxy's page, a plain-text 404): the code is derived from the status.
    pub(crate) fn from_unstructured(status: u16, text: &str) -> Self {
        let code = match status {
            400 => ErrorCode::InvalidRequest,
            401 => ErrorCode::Unauthorized,
            403 => ErrorCode::Forbidden,
            404 => ErrorCode::NotFound,
            405 => ErrorCode::MethodNotAllowed,
            409 => ErrorCode::WrongExpectedVersion,
            410 => ErrorCode::StreamDeleted,
            413 => ErrorCode::PayloadTooLarge,
            415 => ErrorCode::InvalidRequest,
            422 => ErrorCode::IdempotencyKeyReused,
            429 => ErrorCode::RateLimited,
            503 => ErrorCode::Unavailable,
            504 => ErrorCode::ConsistencyTimeout,
            _ => ErrorCode::Internal,
        };
        let text = text.trim();
        let message = if text.is_empty() {
            format!("HTTP {status} without a body")
        } else {
            let mut short: String = text.chars().take(500).collect();
            if short.len() < text.len() {
                short.push('…');
            }
            short
        };
        ClientError::Api {
            status,
            body: ErrorBody::new(code, message),
        }
    }
}
