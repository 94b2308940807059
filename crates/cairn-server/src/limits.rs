//! Overload protection: a cap on concurrent requests (503 `unavailable` with
//! `Retry-After` at once, never a queue), a per-caller rate limit (429 `rate_limited`),
//! and caps on live subscriptions and on group claims in progress per caller (429
//! `rate_limited` with `Retry-After`).
//!
//! Long-lived requests (SSE subscriptions and group claims, which may long-poll) do not
//! count against the concurrency cap: they would otherwise hold a slot for their whole
//! life. Each has its own cap per caller instead.
//!
//! A caller is its token's name when authentication is on, else its IP address (when
//! the server knows it), else one shared bucket.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{ConnectInfo, MatchedPath, Request};
use axum::response::{IntoResponse, Response};
use cairn_api::ErrorCode;
use futures::StreamExt;
use http::{HeaderValue, header};
use tokio::sync::Semaphore;

use crate::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::middleware::Inner;
use crate::routes;

pub const DEFAULT_MAX_CONCURRENT_REQUESTS: usize = 1024;
pub const DEFAULT_MAX_SUBSCRIPTIONS_PER_TOKEN: usize = 100;
pub const DEFAULT_MAX_CLAIMS_PER_TOKEN: usize = 100;
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The limits, as configured.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestLimits {
    /// Requests served at once (subscriptions and claims excepted); beyond: 503.
    pub max_concurrent_requests: usize,
    /// Sustained requests per second per caller; `None`: no rate limit.
    pub rate_limit_per_second: Option<f64>,
    /// Requests a caller may make at once above the rate (at least 1).
    pub rate_limit_burst: u32,
    /// Live subscriptions per caller; beyond: 429.
    pub max_subscriptions_per_token: usize,
    /// Group claims (long polls) in progress per caller; beyond: 429.
    pub max_claims_per_token: usize,
    /// How long an HTTP/1 client may take to send a request's head (zero: no limit);
    /// the connection is closed after it.
    pub header_read_timeout: Duration,
}

impl Default for RequestLimits {
    fn default() -> Self {
        Self {
            max_concurrent_requests: DEFAULT_MAX_CONCURRENT_REQUESTS,
            rate_limit_per_second: None,
            rate_limit_burst: 1,
            max_subscriptions_per_token: DEFAULT_MAX_SUBSCRIPTIONS_PER_TOKEN,
            max_claims_per_token: DEFAULT_MAX_CLAIMS_PER_TOKEN,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
        }
    }
}

/// The limits' live state, shared by every request.
#[derive(Debug)]
pub struct Guard {
    limits: RequestLimits,
    slots: Arc<Semaphore>,
    rate: Mutex<HashMap<String, Instant>>,
    subscriptions: PerCaller,
    claims: PerCaller,
}

impl Default for Guard {
    fn default() -> Self {
        Self::new(RequestLimits::default())
    }
}

impl Guard {
    pub fn new(limits: RequestLimits) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(limits.max_concurrent_requests.max(1))),
            limits,
            rate: Mutex::new(HashMap::new()),
            subscriptions: PerCaller::default(),
            claims: PerCaller::default(),
        }
    }

    pub fn limits(&self) -> &RequestLimits {
        &self.limits
    }

    /// Request slots free right now (of `max_concurrent_requests`).
    pub fn available_slots(&self) -> usize {
        self.slots.available_permits()
    }

    /// GCRA: `Ok` when `caller` may make a request now, else how long until it may.
    fn check_rate(&self, caller: &str, now: Instant) -> Result<(), Duration> {
        let Some(per_second) = self.limits.rate_limit_per_second else {
            return Ok(());
        };
        let interval = Duration::from_secs_f64(1.0 / per_second.max(f64::MIN_POSITIVE));
        let tolerance = interval * self.limits.rate_limit_burst.max(1).saturating_sub(1);
        let mut rate = self.rate.lock().unwrap_or_else(|e| e.into_inner());
        // Forget callers whose bucket is full again, so the map stays small.
        if rate.len() > 10_000 {
            rate.retain(|_, theoretical| *theoretical > now);
        }
        let theoretical = rate.get(caller).copied().unwrap_or(now).max(now);
        let allowed_at = theoretical.checked_sub(tolerance).unwrap_or(now);
        if allowed_at > now {
            return Err(allowed_at - now);
        }
        rate.insert(caller.to_owned(), theoretical + interval);
        Ok(())
    }

    /// Takes a subscription slot for `caller`, released when the slot drops.
    fn subscribe(&self, caller: &str) -> Option<Slot> {
        self.subscriptions
            .take(caller, self.limits.max_subscriptions_per_token)
    }

    /// Takes a claim slot for `caller`, released when the slot drops.
    fn claim(&self, caller: &str) -> Option<Slot> {
        self.claims.take(caller, self.limits.max_claims_per_token)
    }

    /// Group claims in progress, over every caller.
    pub fn claims_in_progress(&self) -> usize {
        self.claims.total()
    }
}

/// How many of something (live subscriptions, claims in progress) each caller holds.
#[derive(Debug, Default)]
struct PerCaller(Mutex<HashMap<String, Arc<AtomicUsize>>>);

impl PerCaller {
    /// One more for `caller`, unless it already holds `max`.
    fn take(&self, caller: &str, max: usize) -> Option<Slot> {
        let counter = {
            let mut counters = self.0.lock().unwrap_or_else(|e| e.into_inner());
            // Forget callers that hold none, so the map stays small: a counter only the
            // map refers to has no slot out and no `take` under way (both clone it, and
            // clones are made under this lock).
            if counters.len() > 10_000 {
                counters.retain(|_, held| Arc::strong_count(held) > 1);
            }
            Arc::clone(counters.entry(caller.to_owned()).or_default())
        };
        counter
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                (held < max).then_some(held + 1)
            })
            .ok()
            .map(|_| Slot(counter))
    }

    fn total(&self) -> usize {
        let counters = self.0.lock().unwrap_or_else(|e| e.into_inner());
        counters
            .values()
            .map(|held| held.load(Ordering::Acquire))
            .sum()
    }
}

/// One subscription or claim of a caller, given back when dropped.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn rate_limited(retry_after: Duration, message: &str) -> Response {
    let mut response = ApiError::new(ErrorCode::RateLimited, message).into_response();
    let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
    response
}

/// Who is asking, for the rate limit and the subscription cap.
fn caller_key(request: &Request) -> String {
    if let Some(name) = request.extensions().get::<Caller>().and_then(Caller::name) {
        return format!("token:{name}");
    }
    match request.extensions().get::<ConnectInfo<SocketAddr>>() {
        Some(ConnectInfo(address)) => format!("ip:{}", address.ip()),
        None => "anonymous".to_owned(),
    }
}

/// The limits middleware; runs after authentication (it knows the caller).
pub async fn guard(state: &AppState, request: Request, next: impl Inner) -> Response {
    let guard = Arc::clone(&state.guard);
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|matched| matched.as_str().to_owned());
    let route = route.as_deref();
    if matches!(route, Some(routes::HEALTH_LIVE | routes::HEALTH_READY)) {
        return next(request).await;
    }
    // Who the caller is matters only to the limits kept per caller.
    if guard.limits.rate_limit_per_second.is_some()
        && let Err(wait) = guard.check_rate(&caller_key(&request), Instant::now())
    {
        tracing::info!(target: "cairn::http", "rate limited");
        return rate_limited(wait, "too many requests; slow down and retry later");
    }
    match route {
        Some(routes::SUBSCRIBE) => {
            let Some(slot) = guard.subscribe(&caller_key(&request)) else {
                return rate_limited(
                    Duration::from_secs(1),
                    "too many live subscriptions for this caller; close one first",
                );
            };
            let response = next(request).await;
            // The slot lives as long as the event stream.
            let (parts, body) = response.into_parts();
            let body = Body::from_stream(body.into_data_stream().map(move |frame| {
                let _held = &slot;
                frame
            }));
            Response::from_parts(parts, body)
        }
        Some(routes::GROUP_CLAIM) => {
            let Some(_slot) = guard.claim(&caller_key(&request)) else {
                tracing::info!(target: "cairn::http", "too many claims in progress for this caller");
                return rate_limited(
                    Duration::from_secs(1),
                    "too many group claims in progress for this caller; wait for one to finish",
                );
            };
            next(request).await
        }
        _ => {
            let Ok(_permit) = Arc::clone(&guard.slots).try_acquire_owned() else {
                tracing::debug!(target: "cairn::http", "too many concurrent requests; shedding");
                return ApiError::new(
                    ErrorCode::Unavailable,
                    "the server is handling too many requests; retry later",
                )
                .into_response();
            };
            next(request).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_limit_allows_a_burst_then_the_rate() {
        let guard = Guard::new(RequestLimits {
            rate_limit_per_second: Some(10.0),
            rate_limit_burst: 3,
            ..RequestLimits::default()
        });
        let now = Instant::now();
        for _ in 0..3 {
            assert!(guard.check_rate("a", now).is_ok());
        }
        let wait = guard.check_rate("a", now).unwrap_err();
        assert!(wait <= Duration::from_millis(100), "{wait:?}");
        assert!(guard.check_rate("b", now).is_ok(), "callers are apart");
        assert!(
            guard
                .check_rate("a", now + Duration::from_millis(100))
                .is_ok()
        );
    }

    #[test]
    fn claim_slots_are_counted_per_caller_and_released() {
        let guard = Guard::new(RequestLimits {
            max_claims_per_token: 1,
            ..RequestLimits::default()
        });
        let first = guard.claim("a").unwrap();
        assert!(guard.claim("a").is_none());
        let other = guard.claim("b").unwrap();
        assert_eq!(guard.claims_in_progress(), 2);
        drop(first);
        drop(other);
        assert_eq!(guard.claims_in_progress(), 0);
        assert!(guard.claim("a").is_some());
        // Subscriptions are counted apart.
        assert!(guard.subscribe("a").is_some());
    }

    #[test]
    fn subscription_slots_are_counted_and_released() {
        let guard = Guard::new(RequestLimits {
            max_subscriptions_per_token: 2,
            ..RequestLimits::default()
        });
        let first = guard.subscribe("a").unwrap();
        let _second = guard.subscribe("a").unwrap();
        assert!(guard.subscribe("a").is_none());
        drop(first);
        assert!(guard.subscribe("a").is_some());
    }
}
