//! The server's one error type and the one place it becomes an HTTP response.
//!
//! Every refusal a handler or extractor can produce is an [`ApiError`]: a closed
//! [`ErrorCode`] (whose [`ErrorCode::http_status`] is the only code → status mapping),
//! a message for the person who sent the request, and details. 5xx answers carry a
//! generic message; what actually went wrong is logged, never sent.

use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use cairn_api::{ErrorBody, ErrorCode};
use cairn_core::ExpectedVersion;
use cairn_projection::ReadSideError;
use cairn_store::StoreError;
use http::{HeaderValue, StatusCode, header};

/// How long a client is asked to wait before retrying a 503, in seconds.
pub const RETRY_AFTER_SECONDS: u32 = 1;

/// A refusal or failure, ready to be answered as `{"error": {...}}`.
#[derive(Debug, Clone)]
pub struct ApiError {
    body: ErrorBody,
    retry_after: Option<u32>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        let retry_after = (code == ErrorCode::Unavailable).then_some(RETRY_AFTER_SECONDS);
        Self {
            body: ErrorBody::new(code, message),
            retry_after,
        }
    }

    /// Adds a detail next to `code` and `message`.
    pub fn with(mut self, key: &str, value: impl Into<serde_json::Value>) -> Self {
        self.body = self.body.with(key, value);
        self
    }

    pub fn code(&self) -> ErrorCode {
        self.body.error.code
    }

    pub fn message(&self) -> &str {
        &self.body.error.message
    }

    /// The body as it will be sent.
    pub fn body(&self) -> &ErrorBody {
        &self.body
    }

    pub fn invalid_json(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidJson, message)
    }

    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidRequest, message)
    }

    pub fn invalid_stream_name(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidStreamName, message)
    }

    pub fn payload_too_large(message: impl Into<String>, limit: usize) -> Self {
        Self::new(ErrorCode::PayloadTooLarge, message).with("limit", limit)
    }

    pub fn not_found() -> Self {
        Self::new(ErrorCode::NotFound, "no such resource")
    }

    pub fn method_not_allowed() -> Self {
        Self::new(
            ErrorCode::MethodNotAllowed,
            "this method is not allowed on this resource",
        )
    }

    /// A 500 whose `detail` is logged and not sent.
    pub fn internal(detail: &str) -> Self {
        tracing::error!(target: "cairn::http", detail, "internal error");
        Self::new(ErrorCode::Internal, "internal error")
    }

    /// A 503 (with `Retry-After`) whose `detail` is logged and not sent.
    pub fn unavailable(detail: &str) -> Self {
        tracing::warn!(target: "cairn::http", detail, "unavailable");
        Self::new(
            ErrorCode::Unavailable,
            "the service is temporarily unavailable; retry later",
        )
    }

    pub fn request_timeout() -> Self {
        Self::new(
            ErrorCode::Unavailable,
            "the request took too long and was abandoned; retry later",
        )
    }

    pub fn status(&self) -> StatusCode {
        status_of(self.code())
    }
}

/// The one mapping of an error code to an HTTP status.
pub fn status_of(code: ErrorCode) -> StatusCode {
    StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = serde_json::to_vec(&self.body).unwrap_or_else(|_| {
            br#"{"error":{"code":"internal","message":"internal error"}}"#.to_vec()
        });
        let mut response = json_response(status, Bytes::from(body));
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// A response with a JSON body the caller has already encoded.
pub fn json_response(status: StatusCode, body: impl Into<Bytes>) -> Response {
    let mut response = Response::new(axum::body::Body::from(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        let message = error.to_string();
        match error {
            StoreError::WrongExpectedVersion {
                stream,
                expected,
                actual,
            } => ApiError::new(ErrorCode::WrongExpectedVersion, message)
                .with("stream", stream.as_str())
                .with("expected", expected_to_json(expected))
                .with(
                    "actual",
                    actual.map_or_else(|| serde_json::Value::from("no_stream"), Into::into),
                ),
            StoreError::ConditionFailed { after, found } => {
                ApiError::new(ErrorCode::ConditionFailed, message)
                    .with("after", after)
                    .with("position", found)
            }
            StoreError::DuplicateEventId {
                id,
                existing_stream,
            } => ApiError::new(ErrorCode::DuplicateEventId, message)
                .with("id", id.to_string())
                .with("stream", existing_stream),
            StoreError::StreamDeleted(stream) => {
                ApiError::new(ErrorCode::StreamDeleted, message).with("stream", stream.as_str())
            }
            StoreError::StreamNotFound(stream) => {
                ApiError::new(ErrorCode::StreamNotFound, message).with("stream", stream.as_str())
            }
            StoreError::IdempotencyKeyReused => ApiError::new(
                ErrorCode::IdempotencyKeyReused,
                "this Idempotency-Key was already used with a different request",
            ),
            StoreError::GroupNotFound(group) => {
                ApiError::new(ErrorCode::NotFound, message).with("group", group)
            }
            // Another instance drives the group now: a retry is forwarded to it.
            StoreError::GroupMoved(_) => ApiError::unavailable(&message),
            StoreError::Unavailable(detail) => ApiError::unavailable(&detail),
            StoreError::Internal(detail) => ApiError::internal(&detail),
        }
    }
}

impl From<ReadSideError> for ApiError {
    fn from(error: ReadSideError) -> Self {
        let message = error.to_string();
        match error {
            ReadSideError::ProjectionNotFound(name) => {
                ApiError::new(ErrorCode::NotFound, message).with("projection", name)
            }
            ReadSideError::QueryNotFound(name) => {
                ApiError::new(ErrorCode::NotFound, message).with("query", name)
            }
            ReadSideError::InvalidParameter { name, .. } => {
                ApiError::invalid_request(message).with("parameter", name)
            }
            ReadSideError::ConsistencyTimeout {
                min_position,
                position,
            } => ApiError::new(ErrorCode::ConsistencyTimeout, message)
                .with("min_position", min_position)
                .with("position", position),
            // Stopping: the server is going away, another instance may answer.
            ReadSideError::Storage(detail) if detail.contains(READ_SIDE_SHUT_DOWN) => {
                ApiError::unavailable(&detail)
            }
            ReadSideError::Storage(detail) | ReadSideError::Config(detail) => {
                ApiError::internal(&format!("read side: {detail}"))
            }
        }
    }
}

/// What `cairn_projection` says once it is shut down (a 503, not a 500).
const READ_SIDE_SHUT_DOWN: &str = "the read side is shut down";

/// The wire form of an expected version: a number, or `"no_stream"`, `"exists"`, `"any"`.
pub fn expected_to_json(expected: ExpectedVersion) -> serde_json::Value {
    match expected {
        ExpectedVersion::Exact(version) => version.into(),
        other => other.to_string().into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_core::StreamName;

    #[test]
    fn every_code_maps_to_its_documented_status() {
        for (code, status) in [
            (ErrorCode::InvalidJson, 400),
            (ErrorCode::InvalidRequest, 400),
            (ErrorCode::InvalidStreamName, 400),
            (ErrorCode::StreamNotFound, 404),
            (ErrorCode::NotFound, 404),
            (ErrorCode::MethodNotAllowed, 405),
            (ErrorCode::WrongExpectedVersion, 409),
            (ErrorCode::ConditionFailed, 409),
            (ErrorCode::DuplicateEventId, 409),
            (ErrorCode::StreamDeleted, 410),
            (ErrorCode::PayloadTooLarge, 413),
            (ErrorCode::IdempotencyKeyReused, 422),
            (ErrorCode::Internal, 500),
            (ErrorCode::Unavailable, 503),
            (ErrorCode::ConsistencyTimeout, 504),
        ] {
            assert_eq!(status_of(code).as_u16(), status, "{code:?}");
        }
    }

    #[test]
    fn store_errors_carry_their_details() {
        let stream = StreamName::parse("order-1").unwrap();
        let error = ApiError::from(StoreError::WrongExpectedVersion {
            stream,
            expected: ExpectedVersion::NoStream,
            actual: Some(3),
        });
        let json = serde_json::to_value(&error.body).unwrap();
        assert_eq!(json["error"]["expected"], "no_stream");
        assert_eq!(json["error"]["actual"], 3);
        assert_eq!(json["error"]["stream"], "order-1");

        let error = ApiError::from(StoreError::Internal("disk on fire at /var/x".into()));
        assert_eq!(error.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!error.message().contains("disk"));

        let error = ApiError::from(ReadSideError::ConsistencyTimeout {
            min_position: 9,
            position: 4,
        });
        assert_eq!(error.status(), StatusCode::GATEWAY_TIMEOUT);
        let json = serde_json::to_value(&error.body).unwrap();
        assert_eq!(json["error"]["code"], "consistency_timeout");
        assert_eq!(json["error"]["min_position"], 9);
        assert_eq!(json["error"]["position"], 4);
        let error = ApiError::from(ReadSideError::Storage("disk I/O error in /x".into()));
        assert_eq!(error.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!error.message().contains("disk"));
        let error = ApiError::from(ReadSideError::Storage(READ_SIDE_SHUT_DOWN.into()));
        assert_eq!(error.status(), StatusCode::SERVICE_UNAVAILABLE);

        let response = ApiError::from(StoreError::Unavailable("locked".into())).into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
    }
}
