use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Every error code Cairn answers with. Closed: adding one is a contract change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    InvalidJson,
    InvalidRequest,
    InvalidStreamName,
    Unauthorized,
    Forbidden,
    StreamNotFound,
    NotFound,
    MethodNotAllowed,
    WrongExpectedVersion,
    ConditionFailed,
    DuplicateEventId,
    StreamDeleted,
    PayloadTooLarge,
    IdempotencyKeyReused,
    RateLimited,
    Internal,
    Unavailable,
    ConsistencyTimeout,
}

impl ErrorCode {
    /// The one place an error code is mapped to an HTTP status.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::InvalidJson | ErrorCode::InvalidRequest | ErrorCode::InvalidStreamName => {
                400
            }
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::StreamNotFound | ErrorCode::NotFound => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::WrongExpectedVersion
            | ErrorCode::ConditionFailed
            | ErrorCode::DuplicateEventId => 409,
            ErrorCode::StreamDeleted => 410,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::IdempotencyKeyReused => 422,
            ErrorCode::RateLimited => 429,
            ErrorCode::Internal => 500,
            ErrorCode::Unavailable => 503,
            ErrorCode::ConsistencyTimeout => 504,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::InvalidStreamName => "invalid_stream_name",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::StreamNotFound => "stream_not_found",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::WrongExpectedVersion => "wrong_expected_version",
            ErrorCode::ConditionFailed => "condition_failed",
            ErrorCode::DuplicateEventId => "duplicate_event_id",
            ErrorCode::StreamDeleted => "stream_deleted",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::IdempotencyKeyReused => "idempotency_key_reused",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Internal => "internal",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::ConsistencyTimeout => "consistency_timeout",
        }
    }
}

/// `{"error": {"code": "…", "message": "…", …details}}`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ApiError,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    /// Details that depend on the code, e.g. `expected` and `actual` for
    /// `wrong_expected_version`.
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub details: serde_json::Map<String, serde_json::Value>,
}

impl ErrorBody {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            error: ApiError {
                code,
                message: message.into(),
                details: serde_json::Map::new(),
            },
        }
    }

    pub fn with(mut self, key: &str, value: impl Into<serde_json::Value>) -> Self {
        self.error.details.insert(key.to_owned(), value.into());
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_serialize_as_their_names() {
        for code in [
            ErrorCode::WrongExpectedVersion,
            ErrorCode::InvalidJson,
            ErrorCode::Unavailable,
        ] {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
        }
    }

    #[test]
    fn details_are_flattened_into_the_error() {
        let body = ErrorBody::new(ErrorCode::WrongExpectedVersion, "no")
            .with("expected", 1)
            .with("actual", 4);
        let json = serde_json::to_value(&body).unwrap();
        assert_eq!(json["error"]["code"], "wrong_expected_version");
        assert_eq!(json["error"]["expected"], 1);
        assert_eq!(json["error"]["actual"], 4);
    }
}
