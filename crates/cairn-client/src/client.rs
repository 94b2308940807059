use std::time::Duration;

use bytes::Bytes;
use cairn_api::{
    AppendRequest, AppendResponse, ErrorBody, ErrorCode, EventInput, ExpectedVersion, Health,
    IDEMPOTENCY_KEY_HEADER, IDEMPOTENT_REPLAYED_HEADER, MultiAppendRequest, MultiAppendResponse,
    ReadAllResponse, ReadStreamResponse, StreamInfo, StreamList,
};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue, RETRY_AFTER};
use reqwest::{Method, StatusCode, Url};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::ClientError;

/// The longest wait a `Retry-After` header may impose on one retry.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(10);

/// A Cairn client. Cheap to clone: clones share one connection pool.
///
/// Every write carries an `Idempotency-Key` (a fresh UUID unless the caller gives one);
/// when a request fails in transport or is answered 503/429, the very same request —
/// same bytes, same key — is sent again, a bounded number of times, so a retried write
/// is recorded once.
#[derive(Clone, Debug)]
pub struct Client {
    http: reqwest::Client,
    /// Without a whole-request timeout: for subscriptions, whose bodies never end.
    streaming: reqwest::Client,
    base: Url,
    retry: RetryPolicy,
    timeout: Option<Duration>,
}

#[derive(Clone, Copy, Debug)]
struct RetryPolicy {
    max_retries: u32,
    initial_backoff: Duration,
    max_backoff: Duration,
}

/// Configures a [`Client`].
#[derive(Debug)]
pub struct ClientBuilder {
    base_url: String,
    timeout: Option<Duration>,
    connect_timeout: Duration,
    retry: RetryPolicy,
    pool_max_idle_per_host: Option<usize>,
    /// PEM bundles of CA certificates trusted besides the system's roots.
    ca_certificates: Vec<Vec<u8>>,
    /// Sent as `Authorization: Bearer …` with every request.
    bearer_token: Option<String>,
}

/// `Authorization: Bearer <token>`, marked sensitive: what a client with an API token
/// sends with every request (for HTTP clients of one's own, such as `cairn bench`'s).
pub fn bearer_header(token: &str) -> Result<HeaderValue, ClientError> {
    let mut value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
        ClientError::Invalid("the API token holds characters a header cannot carry".into())
    })?;
    value.set_sensitive(true);
    Ok(value)
}

/// The CA certificates of a PEM text (one or more `-----BEGIN CERTIFICATE-----`
/// blocks); text without one is an error.
pub fn ca_certificates_of(pem: &[u8]) -> Result<Vec<reqwest::Certificate>, ClientError> {
    let certificates = reqwest::Certificate::from_pem_bundle(pem)
        .map_err(|error| ClientError::Invalid(format!("invalid CA certificate: {error}")))?;
    if certificates.is_empty() {
        return Err(ClientError::Invalid(
            "invalid CA certificate: no -----BEGIN CERTIFICATE----- block found".into(),
        ));
    }
    Ok(certificates)
}

impl ClientBuilder {
    /// The whole-request timeout (default 30 s). A write that times out is retried with
    /// the same idempotency key.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// No whole-request timeout (for long polls).
    pub fn no_timeout(mut self) -> Self {
        self.timeout = None;
        self
    }

    /// How long to wait for a TCP connection (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How many times a request is sent again after a transport error or a 503/429
    /// (default 3; 0 disables retries).
    pub fn retries(mut self, retries: u32) -> Self {
        self.retry.max_retries = retries;
        self
    }

    /// The first backoff between attempts (default 100 ms); it doubles up to 2 s.
    pub fn backoff(mut self, initial: Duration) -> Self {
        self.retry.initial_backoff = initial;
        self.retry.max_backoff = self.retry.max_backoff.max(initial);
        self
    }

    /// Idle connections kept per host.
    pub fn pool_max_idle_per_host(mut self, max: usize) -> Self {
        self.pool_max_idle_per_host = Some(max);
        self
    }

    /// Trusts the CA certificates of this PEM text (one or more
    /// `-----BEGIN CERTIFICATE-----` blocks) for `https://` URLs, besides the system's
    /// root certificates: for a server whose certificate a private CA signed. Text
    /// without a certificate makes [`ClientBuilder::build`] fail.
    pub fn ca_certificate_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_certificates.push(pem.into());
        self
    }

    /// Sends this API token (`Authorization: Bearer <token>`) with every request.
    pub fn bearer_token(mut self, token: impl Into<String>) -> Self {
        self.bearer_token = Some(token.into());
        self
    }

    pub fn build(self) -> Result<Client, ClientError> {
        let base = parse_base_url(&self.base_url)?;
        let mut headers = HeaderMap::new();
        if let Some(token) = &self.bearer_token {
            headers.insert(AUTHORIZATION, bearer_header(token)?);
        }
        let mut ca_certificates = Vec::new();
        for pem in &self.ca_certificates {
            ca_certificates.extend(ca_certificates_of(pem)?);
        }
        let builder = || {
            let mut http = reqwest::Client::builder()
                .connect_timeout(self.connect_timeout)
                .tcp_nodelay(true)
                // Below the server's default header read timeout (10 s), which also
                // closes idle keep-alive connections: never reuse one it closed.
                .pool_idle_timeout(std::time::Duration::from_secs(5))
                .user_agent(concat!("cairn-client/", env!("CARGO_PKG_VERSION")))
                .default_headers(headers.clone());
            if let Some(max) = self.pool_max_idle_per_host {
                http = http.pool_max_idle_per_host(max);
            }
            for certificate in &ca_certificates {
                http = http.add_root_certificate(certificate.clone());
            }
            http
        };
        let mut http = builder();
        if let Some(timeout) = self.timeout {
            http = http.timeout(timeout);
        }
        let cannot = |error: reqwest::Error| {
            ClientError::Invalid(format!("cannot build the HTTP client: {error}"))
        };
        Ok(Client {
            http: http.build().map_err(cannot)?,
            streaming: builder().build().map_err(cannot)?,
            base,
            retry: self.retry,
            timeout: self.timeout,
        })
    }
}

fn parse_base_url(base_url: &str) -> Result<Url, ClientError> {
    let base = Url::parse(base_url).map_err(|error| {
        ClientError::Invalid(format!("invalid Cairn URL {base_url:?}: {error}"))
    })?;
    if base.cannot_be_a_base() || !matches!(base.scheme(), "http" | "https") {
        return Err(ClientError::Invalid(format!(
            "invalid Cairn URL {base_url:?}: expected http://host:port or https://host:port"
        )));
    }
    Ok(base)
}

/// Which way to read a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Direction {
    #[default]
    Forward,
    Backward,
}

impl Direction {
    fn as_str(self) -> &'static str {
        match self {
            Direction::Forward => "forward",
            Direction::Backward => "backward",
        }
    }
}

/// `GET /v1/streams/{stream}/events` parameters; `None` leaves the server's default.
#[derive(Debug, Clone, Default)]
pub struct ReadStreamOptions {
    /// The version to start at (inclusive); the start (forward) or the end (backward)
    /// when absent.
    pub from: Option<u64>,
    /// At most this many events (the server caps it at 1000).
    pub limit: Option<usize>,
    pub direction: Direction,
}

/// `GET /v1/events` parameters; empty parts match everything.
#[derive(Debug, Clone, Default)]
pub struct ReadAllOptions {
    /// The first position to return (inclusive); 1 when absent.
    pub from_position: Option<u64>,
    pub limit: Option<usize>,
    /// Only events of streams in this category (`order` for `order-17`).
    pub category: Option<String>,
    /// Only events of any of these types.
    pub types: Vec<String>,
    /// Only events carrying all of these tags.
    pub tags: Vec<String>,
    /// Only events of this one stream.
    pub stream: Option<String>,
}

/// Options of one write.
#[derive(Debug, Clone, Default)]
pub struct WriteOptions {
    /// The `Idempotency-Key` to send; a fresh UUID when absent.
    pub idempotency_key: Option<String>,
}

/// The answer to a write, with how it was obtained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written<T> {
    pub response: T,
    /// The server replayed the first answer to this idempotency key (the write had been
    /// recorded before: by an earlier attempt, or by an earlier call with the same key).
    pub replayed: bool,
    /// The idempotency key the write was sent with.
    pub idempotency_key: String,
    /// How many times the request was sent.
    pub attempts: u32,
}

pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) body: Bytes,
    replayed: bool,
    attempts: u32,
}

impl Client {
    /// A client with the default settings (30 s timeout, 3 retries).
    pub fn new(base_url: &str) -> Result<Self, ClientError> {
        Self::builder(base_url).build()
    }

    pub fn builder(base_url: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            base_url: base_url.into(),
            timeout: Some(Duration::from_secs(30)),
            connect_timeout: Duration::from_secs(5),
            retry: RetryPolicy {
                max_retries: 3,
                initial_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(2),
            },
            pool_max_idle_per_host: None,
            ca_certificates: Vec::new(),
            bearer_token: None,
        }
    }

    /// The URL this client talks to.
    pub fn base_url(&self) -> &Url {
        &self.base
    }

    /// Appends `events` to `stream` atomically, if the stream's version is `expected`.
    pub async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<EventInput>,
    ) -> Result<AppendResponse, ClientError> {
        let request = AppendRequest {
            expected_version: expected,
            events,
        };
        Ok(self
            .append_with(stream, &request, &WriteOptions::default())
            .await?
            .response)
    }

    /// Appends with explicit write options (e.g. the caller's own idempotency key).
    pub async fn append_with(
        &self,
        stream: &str,
        request: &AppendRequest,
        options: &WriteOptions,
    ) -> Result<Written<AppendResponse>, ClientError> {
        let url = self.url(&["v1", "streams", stream, "events"]);
        self.write(Method::POST, url, request, options).await
    }

    /// Appends pre-serialised JSON (an [`AppendRequest`]'s bytes) to `stream`.
    pub async fn append_raw(
        &self,
        stream: &str,
        body: Bytes,
        options: &WriteOptions,
    ) -> Result<Written<AppendResponse>, ClientError> {
        let url = self.url(&["v1", "streams", stream, "events"]);
        self.write_bytes(Method::POST, url, Some(body), options)
            .await
    }

    /// Appends atomically to several streams (`POST /v1/events`).
    pub async fn append_multi(
        &self,
        request: &MultiAppendRequest,
    ) -> Result<MultiAppendResponse, ClientError> {
        Ok(self
            .append_multi_with(request, &WriteOptions::default())
            .await?
            .response)
    }

    pub async fn append_multi_with(
        &self,
        request: &MultiAppendRequest,
        options: &WriteOptions,
    ) -> Result<Written<MultiAppendResponse>, ClientError> {
        let url = self.url(&["v1", "events"]);
        self.write(Method::POST, url, request, options).await
    }

    /// One page of a stream.
    pub async fn read_stream(
        &self,
        stream: &str,
        options: &ReadStreamOptions,
    ) -> Result<ReadStreamResponse, ClientError> {
        let mut url = self.url(&["v1", "streams", stream, "events"]);
        {
            let mut query = url.query_pairs_mut();
            if let Some(from) = options.from {
                query.append_pair("from", &from.to_string());
            }
            if let Some(limit) = options.limit {
                query.append_pair("limit", &limit.to_string());
            }
            query.append_pair("direction", options.direction.as_str());
        }
        self.read(url).await
    }

    /// The stream's head: last version and position, creation and update times.
    pub async fn stream_info(&self, stream: &str) -> Result<StreamInfo, ClientError> {
        self.read(self.url(&["v1", "streams", stream])).await
    }

    /// One page of stream names, in byte order: those starting with `prefix`, after
    /// `after` (exclusive).
    pub async fn list_streams(
        &self,
        prefix: Option<&str>,
        after: Option<&str>,
        limit: Option<usize>,
    ) -> Result<StreamList, ClientError> {
        let mut url = self.url(&["v1", "streams"]);
        if prefix.is_some() || after.is_some() || limit.is_some() {
            let mut query = url.query_pairs_mut();
            if let Some(prefix) = prefix {
                query.append_pair("prefix", prefix);
            }
            if let Some(after) = after {
                query.append_pair("after", after);
            }
            if let Some(limit) = limit {
                query.append_pair("limit", &limit.to_string());
            }
        }
        self.read(url).await
    }

    /// One page of the global log.
    pub async fn read_all(&self, options: &ReadAllOptions) -> Result<ReadAllResponse, ClientError> {
        let mut url = self.url(&["v1", "events"]);
        {
            let mut query = url.query_pairs_mut();
            query.append_pair(
                "from_position",
                &options.from_position.unwrap_or(1).to_string(),
            );
            if let Some(limit) = options.limit {
                query.append_pair("limit", &limit.to_string());
            }
            if let Some(category) = &options.category {
                query.append_pair("category", category);
            }
            if !options.types.is_empty() {
                query.append_pair("types", &options.types.join(","));
            }
            if !options.tags.is_empty() {
                query.append_pair("tags", &options.tags.join(","));
            }
            if let Some(stream) = &options.stream {
                query.append_pair("stream", stream);
            }
        }
        self.read(url).await
    }

    /// Deletes a stream (`DELETE /v1/streams/{stream}`): its events stay in the global
    /// log, reads of it and appends to it answer `stream_deleted`.
    pub async fn delete_stream(
        &self,
        stream: &str,
        expected: ExpectedVersion,
    ) -> Result<(), ClientError> {
        let mut url = self.url(&["v1", "streams", stream]);
        if expected != ExpectedVersion::Any {
            let value = match expected {
                ExpectedVersion::Exact(version) => version.to_string(),
                ExpectedVersion::NoStream => "no_stream".to_owned(),
                ExpectedVersion::Exists => "exists".to_owned(),
                ExpectedVersion::Any => "any".to_owned(),
            };
            url.query_pairs_mut()
                .append_pair("expected_version", &value);
        }
        let key = uuid::Uuid::new_v4().to_string();
        let (outcome, attempts) = self
            .execute_counting(Method::DELETE, url, None, Some(&key), true, None)
            .await;
        match outcome {
            Ok(_) => Ok(()),
            // A retry answered `stream_deleted`: the earlier attempt, whose answer was
            // lost, did the deletion.
            Err(ClientError::Api { body, .. })
                if attempts > 1 && body.error.code == ErrorCode::StreamDeleted =>
            {
                Ok(())
            }
            Err(error) => Err(error),
        }
    }

    /// `GET /health/ready`: `Ok` when the server is ready to serve. Never retried.
    pub async fn health_ready(&self) -> Result<Health, ClientError> {
        self.health("ready").await
    }

    /// `GET /health/live`. Never retried.
    pub async fn health_live(&self) -> Result<(), ClientError> {
        let url = self.url(&["health", "live"]);
        self.execute(Method::GET, url, None, None, false)
            .await
            .map(|_| ())
    }

    /// `GET /metrics`: every metric, in Prometheus' text format. Never retried.
    pub async fn metrics(&self) -> Result<String, ClientError> {
        let url = self.url(&["metrics"]);
        let answer = self.execute(Method::GET, url, None, None, false).await?;
        String::from_utf8(answer.body.to_vec())
            .map_err(|_| ClientError::Decode("the metrics are not UTF-8 text".into()))
    }

    async fn health(&self, which: &str) -> Result<Health, ClientError> {
        let url = self.url(&["health", which]);
        let answer = self.execute(Method::GET, url, None, None, false).await?;
        decode(&answer.body)
    }

    /// The HTTP client without a whole-request timeout.
    pub(crate) fn streaming_http(&self) -> &reqwest::Client {
        &self.streaming
    }

    /// The whole-request timeout, if any.
    pub(crate) fn request_timeout(&self) -> Option<Duration> {
        self.timeout
    }

    pub(crate) fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        url.set_query(None);
        url.set_fragment(None);
        // Checked in `parse_base_url`: an http(s) URL can be a base.
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    async fn read<T: DeserializeOwned>(&self, url: Url) -> Result<T, ClientError> {
        let answer = self.execute(Method::GET, url, None, None, true).await?;
        decode(&answer.body)
    }

    async fn write<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        url: Url,
        body: &B,
        options: &WriteOptions,
    ) -> Result<Written<T>, ClientError> {
        // Serialised once: every attempt sends the very same bytes.
        let body = serde_json::to_vec(body)
            .map_err(|error| ClientError::Invalid(format!("request is not JSON: {error}")))?;
        self.write_bytes(method, url, Some(Bytes::from(body)), options)
            .await
    }

    async fn write_bytes<T: DeserializeOwned>(
        &self,
        method: Method,
        url: Url,
        body: Option<Bytes>,
        options: &WriteOptions,
    ) -> Result<Written<T>, ClientError> {
        let idempotency_key = match &options.idempotency_key {
            Some(key) => key.clone(),
            None => uuid::Uuid::new_v4().to_string(),
        };
        let answer = self
            .execute(method, url, body, Some(&idempotency_key), true)
            .await?;
        Ok(Written {
            response: decode(&answer.body)?,
            replayed: answer.replayed,
            idempotency_key,
            attempts: answer.attempts,
        })
    }

    /// Sends a request, again after a transport error or a 503/429 when `retry` (at most
    /// `max_retries` times), and returns a successful answer's body.
    pub(crate) async fn execute(
        &self,
        method: Method,
        url: Url,
        body: Option<Bytes>,
        idempotency_key: Option<&str>,
        retry: bool,
    ) -> Result<Answer, ClientError> {
        self.execute_counting(method, url, body, idempotency_key, retry, None)
            .await
            .0
    }

    /// [`Client::execute`], also telling how many times the request was sent; with
    /// `timeout`, that whole-request timeout replaces the client's.
    pub(crate) async fn execute_counting(
        &self,
        method: Method,
        url: Url,
        body: Option<Bytes>,
        idempotency_key: Option<&str>,
        retry: bool,
        timeout: Option<Duration>,
    ) -> (Result<Answer, ClientError>, u32) {
        let max_attempts = if retry { self.retry.max_retries + 1 } else { 1 };
        let mut attempts = 0;
        let outcome = loop {
            attempts += 1;
            let may_retry = attempts < max_attempts;
            let mut request = self.http.request(method.clone(), url.clone());
            if let Some(timeout) = timeout {
                request = request.timeout(timeout);
            }
            if let Some(body) = &body {
                request = request
                    .header(CONTENT_TYPE, "application/json")
                    .body(body.clone());
            }
            if let Some(key) = idempotency_key {
                request = request.header(IDEMPOTENCY_KEY_HEADER, key);
            }
            let response = match request.send().await {
                Ok(response) => response,
                Err(error) => {
                    if may_retry && is_retryable(&error) {
                        tokio::time::sleep(self.backoff(attempts)).await;
                        continue;
                    }
                    break Err(ClientError::Transport(error));
                }
            };
            let status = response.status();
            let retry_after = retry_after(response.headers());
            let replayed = response
                .headers()
                .get(IDEMPOTENT_REPLAYED_HEADER)
                .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"true"));
            let bytes = match response.bytes().await {
                Ok(bytes) => bytes,
                Err(error) => {
                    if may_retry && is_retryable(&error) {
                        tokio::time::sleep(self.backoff(attempts)).await;
                        continue;
                    }
                    break Err(ClientError::Transport(error));
                }
            };
            if status.is_success() {
                break Ok(Answer {
                    status,
                    body: bytes,
                    replayed,
                    attempts,
                });
            }
            let try_later = matches!(
                status,
                StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS
            );
            if try_later && may_retry {
                let wait = retry_after.map_or_else(
                    || self.backoff(attempts),
                    |after| after.min(MAX_RETRY_AFTER),
                );
                tokio::time::sleep(wait).await;
                continue;
            }
            break Err(api_error(status, &bytes));
        };
        (outcome, attempts)
    }

    /// Exponential backoff with a little jitter: 100 ms, 200 ms, 400 ms, … up to 2 s.
    fn backoff(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(16);
        let base = self
            .retry
            .initial_backoff
            .saturating_mul(1 << exponent)
            .min(self.retry.max_backoff);
        let jitter_percent = u32::try_from(uuid::Uuid::new_v4().as_u128() % 21).unwrap_or(0);
        base + base * jitter_percent / 100
    }
}

pub(crate) fn is_retryable(error: &reqwest::Error) -> bool {
    !(error.is_builder() || error.is_redirect() || error.is_status() || error.is_decode())
}

fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    value.parse::<u64>().ok().map(Duration::from_secs)
}

pub(crate) fn api_error(status: StatusCode, body: &[u8]) -> ClientError {
    let status = status.as_u16();
    if let Ok(body) = serde_json::from_slice::<ErrorBody>(body) {
        return ClientError::Api { status, body };
    }
    // `/health/ready` answers 503 with a health body, not an error body.
    if let Ok(health) = serde_json::from_slice::<Health>(body) {
        let message = health
            .reason
            .unwrap_or_else(|| format!("health status {}", health.status));
        return ClientError::Api {
            status,
            body: ErrorBody::new(ErrorCode::Unavailable, message),
        };
    }
    ClientError::from_unstructured(status, &String::from_utf8_lossy(body))
}

pub(crate) fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, ClientError> {
    serde_json::from_slice(body).map_err(|error| {
        let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
        ClientError::Decode(format!("{error} in {text:?}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_built_under_the_base_path_and_stream_names_escaped() {
        let client = Client::new("http://127.0.0.1:7171").unwrap();
        assert_eq!(
            client.url(&["v1", "streams", "order-1", "events"]).as_str(),
            "http://127.0.0.1:7171/v1/streams/order-1/events"
        );
        let prefixed = Client::new("http://example.invalid/cairn/").unwrap();
        assert_eq!(
            prefixed.url(&["v1", "streams", "a/b?c"]).as_str(),
            "http://example.invalid/cairn/v1/streams/a%2Fb%3Fc"
        );
    }

    #[test]
    fn bad_base_urls_are_refused() {
        for bad in ["", "127.0.0.1:7171", "ftp://host", "mailto:x@y"] {
            assert!(
                matches!(Client::new(bad), Err(ClientError::Invalid(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let client = Client::new("http://127.0.0.1:1").unwrap();
        let first = client.backoff(1);
        assert!(first >= Duration::from_millis(100) && first <= Duration::from_millis(120));
        let later = client.backoff(30);
        assert!(later >= Duration::from_secs(2) && later <= Duration::from_millis(2400));
    }

    #[test]
    fn unstructured_errors_get_a_code_from_their_status() {
        let error = api_error(StatusCode::NOT_FOUND, b"Not Found");
        assert_eq!(error.code(), Some(ErrorCode::NotFound));
        assert_eq!(error.to_string(), "not_found: Not Found (HTTP 404)");
        let structured = api_error(
            StatusCode::CONFLICT,
            br#"{"error":{"code":"wrong_expected_version","message":"no","expected":1,"actual":2}}"#,
        );
        assert_eq!(structured.code(), Some(ErrorCode::WrongExpectedVersion));
        assert_eq!(structured.body().unwrap().error.details["actual"], 2);
    }
}
