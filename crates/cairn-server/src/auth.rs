//! Bearer API tokens: scopes (`read`, `append`, `admin`), stream-prefix grants, and the
//! middleware that checks them.
//!
//! A token's secret is never stored: the configuration holds the SHA-256 of it, and a
//! presented secret is hashed and compared with *every* configured hash in constant
//! time (no early exit), so neither the comparison nor the loop tells an attacker how
//! close a guess came. Authentication is on as soon as one token is configured; the
//! token set can be swapped while serving ([`Auth::replace`], on SIGHUP), and requests
//! in flight keep the set they started with.
//!
//! The scope map: reads (streams, the global log, subscriptions, projections, queries,
//! groups including claim/ack/nack) need `read`; appends need `append`; deleting a
//! stream, creating or deleting a group, replaying parked events, restarting or
//! rebuilding a projection and a query's plan (`/v1/queries/{name}/plan`) need `admin`, which implies the other two. A token with
//! stream grants may touch only streams whose name starts with a granted prefix; routes
//! that read across streams without naming a granted stream (or category) are refused
//! to it with 403. `/health/*` and `/openapi.json` are open; `/metrics` needs any valid
//! token unless it is made public.

use std::convert::Infallible;
use std::fmt;
use std::sync::{Arc, RwLock};

use axum::extract::{FromRequestParts, MatchedPath, RawPathParams, Request};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use cairn_api::ErrorCode;
use http::{HeaderValue, Method, header};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::AppState;
use crate::error::ApiError;
use crate::middleware::Inner;
use crate::routes;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    Read,
    Append,
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 3] = [Scope::Read, Scope::Append, Scope::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Append => "append",
            Scope::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "read" => Ok(Scope::Read),
            "append" => Ok(Scope::Append),
            "admin" => Ok(Scope::Admin),
            other => Err(format!(
                "{other:?} is not a scope; use \"read\", \"append\" or \"admin\""
            )),
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One configured token: its name (for logs), scopes, stream grants and the SHA-256 of
/// its secret.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiToken {
    pub name: String,
    pub scopes: Vec<Scope>,
    /// Stream-name prefixes this token may touch; empty: every stream.
    pub streams: Vec<String>,
    pub sha256: [u8; 32],
}

impl fmt::Debug for ApiToken {
    // The hash is not a secret, but it has no business in logs either.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiToken")
            .field("name", &self.name)
            .field("scopes", &self.scopes)
            .field("streams", &self.streams)
            .finish_non_exhaustive()
    }
}

impl ApiToken {
    /// Whether the token holds `scope` (`admin` implies every scope).
    pub fn allows(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope) || self.scopes.contains(&Scope::Admin)
    }

    /// Whether the token may touch the stream `name`.
    pub fn grants_stream(&self, name: &str) -> bool {
        self.streams.is_empty() || self.streams.iter().any(|prefix| name.starts_with(prefix))
    }

    /// Whether the token may read the category `category` (streams `category` and
    /// `category-…`): a grant must be a prefix of the category itself.
    pub fn grants_category(&self, category: &str) -> bool {
        self.grants_stream(category)
    }

    /// Whether the token may touch every stream.
    pub fn is_unrestricted(&self) -> bool {
        self.streams.is_empty()
    }
}

/// Parses a 64-digit hex SHA-256.
pub fn parse_sha256(hex: &str) -> Result<[u8; 32], String> {
    let bad = || format!("{hex:?} is not a SHA-256: expected 64 hexadecimal digits");
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (index, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[index * 2..index * 2 + 2], 16).map_err(|_| bad())?;
    }
    Ok(out)
}

/// The SHA-256 of `secret`, as bytes.
pub fn hash_secret(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Lower-case hex of `bytes`.
pub fn to_hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut out, byte| {
        let _ = write!(out, "{byte:02x}");
        out
    })
}

/// The prefix of every secret Cairn generates (makes leaked secrets easy to scan for).
pub const SECRET_PREFIX: &str = "cairn_";

/// A new secret: `cairn_` then 32 random bytes, URL-safe base64 without padding.
pub fn generate_secret() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(format!(
        "{SECRET_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

/// The configured tokens; empty: authentication is off.
#[derive(Debug, Clone, Default)]
pub struct Tokens(Vec<Arc<ApiToken>>);

impl Tokens {
    /// Checks the set: unique names, at least one scope each, unique hashes.
    pub fn new(tokens: Vec<ApiToken>) -> Result<Self, String> {
        for (index, token) in tokens.iter().enumerate() {
            if token.name.trim().is_empty() {
                return Err("a token has an empty name".into());
            }
            if token.scopes.is_empty() {
                return Err(format!("token {:?} has no scopes", token.name));
            }
            if token.streams.iter().any(String::is_empty) {
                return Err(format!(
                    "token {:?} has an empty stream prefix (leave `streams` out to grant every stream)",
                    token.name
                ));
            }
            for other in &tokens[..index] {
                if other.name == token.name {
                    return Err(format!("two tokens are named {:?}", token.name));
                }
                if other.sha256 == token.sha256 {
                    return Err(format!(
                        "tokens {:?} and {:?} have the same sha256",
                        other.name, token.name
                    ));
                }
            }
        }
        Ok(Self(tokens.into_iter().map(Arc::new).collect()))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The token whose secret is `secret`: every configured hash is compared, in
    /// constant time, whatever matches.
    pub fn find(&self, secret: &str) -> Option<Arc<ApiToken>> {
        let presented = hash_secret(secret);
        let mut found = None;
        for token in &self.0 {
            let equal: bool = token.sha256.ct_eq(&presented).into();
            if equal {
                found = Some(Arc::clone(token));
            }
        }
        found
    }
}

/// Authentication settings of a running server; the token set can be replaced.
#[derive(Debug, Default)]
pub struct Auth {
    tokens: RwLock<Arc<Tokens>>,
    /// `/metrics` without a token.
    pub metrics_public: bool,
}

impl Auth {
    pub fn new(tokens: Tokens, metrics_public: bool) -> Self {
        Self {
            tokens: RwLock::new(Arc::new(tokens)),
            metrics_public,
        }
    }

    /// The current token set.
    pub fn tokens(&self) -> Arc<Tokens> {
        Arc::clone(&self.tokens.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Replaces the token set; requests already authenticated are not affected.
    pub fn replace(&self, tokens: Tokens) {
        *self.tokens.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(tokens);
    }

    pub fn is_enabled(&self) -> bool {
        !self.tokens().is_empty()
    }
}

/// Who made the request: the token it presented (`None` when authentication is off).
/// Handlers that learn streams from the body check them with [`Caller::check_streams`].
#[derive(Debug, Clone, Default)]
pub struct Caller(pub Option<Arc<ApiToken>>);

impl Caller {
    /// 403 unless the token may touch every one of `streams`.
    pub fn check_streams<'a>(
        &self,
        streams: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), ApiError> {
        let Some(token) = &self.0 else {
            return Ok(());
        };
        for stream in streams {
            if !token.grants_stream(stream) {
                return Err(outside_grant(stream));
            }
        }
        Ok(())
    }

    /// The token's name, for logs and rate limits.
    pub fn name(&self) -> Option<&str> {
        self.0.as_deref().map(|token| token.name.as_str())
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = Infallible;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(parts.extensions.get::<Self>().cloned().unwrap_or_default())
    }
}

/// The name of the token that made a request, left in the response's extensions for the
/// request log line.
#[derive(Debug, Clone)]
pub struct TokenName(pub String);

fn outside_grant(stream: &str) -> ApiError {
    ApiError::new(
        ErrorCode::Forbidden,
        "this token is not granted the stream; its grants cover other stream prefixes",
    )
    .with("stream", stream)
}

fn unauthorized(message: &str) -> Response {
    let mut response = ApiError::new(ErrorCode::Unauthorized, message).into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

fn forbidden(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::Forbidden, message)
}

/// What a route asks of a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Need {
    /// No token at all.
    Open,
    /// Any valid token.
    AnyToken,
    Scope(Scope),
}

/// What `method` on the route template `route` asks of a token (also what the OpenAPI
/// document declares).
pub(crate) fn need_of(method: &Method, route: Option<&str>, metrics_public: bool) -> Need {
    let Some(route) = route else {
        // Unknown routes still need a token, so they say nothing to strangers.
        return Need::AnyToken;
    };
    match route {
        routes::HEALTH_LIVE | routes::HEALTH_READY | routes::OPENAPI => Need::Open,
        routes::METRICS if metrics_public => Need::Open,
        routes::METRICS => Need::AnyToken,
        routes::STREAM_EVENTS | routes::EVENTS if method == Method::POST => {
            Need::Scope(Scope::Append)
        }
        routes::STREAM if method == Method::DELETE => Need::Scope(Scope::Admin),
        routes::GROUP if method == Method::PUT || method == Method::DELETE => {
            Need::Scope(Scope::Admin)
        }
        routes::GROUP_PARKED_REPLAY
        | routes::PROJECTION_RESTART
        | routes::PROJECTION_REBUILD
        | routes::QUERY_PLAN => Need::Scope(Scope::Admin),
        _ => Need::Scope(Scope::Read),
    }
}

/// The query parameter `name` of `query`, decoded.
fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
}

/// For a token with stream grants: whether this request stays inside them. The streams
/// of a multi-stream append are checked by its handler, which reads the body.
fn check_grants(
    token: &ApiToken,
    method: &Method,
    route: &str,
    query: Option<&str>,
    params: Option<&RawPathParams>,
) -> Result<(), ApiError> {
    if token.is_unrestricted() {
        return Ok(());
    }
    let path_stream = params.and_then(|params| {
        params
            .iter()
            .find(|(key, _)| *key == "stream")
            .map(|(_, value)| value.to_owned())
    });
    let global = || {
        forbidden(
            "this token is granted only some streams; this request reads across streams \
             (name a granted stream or category)",
        )
    };
    match route {
        routes::STREAM_EVENTS | routes::STREAM => {
            let stream = path_stream.unwrap_or_default();
            if token.grants_stream(&stream) {
                Ok(())
            } else {
                Err(outside_grant(&stream))
            }
        }
        // A multi-stream append: its handler checks the streams named in the body.
        routes::EVENTS if method == Method::POST => Ok(()),
        routes::EVENTS => match query_param(query, "category") {
            Some(category) if token.grants_category(&category) => Ok(()),
            _ => Err(global()),
        },
        routes::STREAMS => match query_param(query, "prefix") {
            Some(prefix) if token.grants_stream(&prefix) => Ok(()),
            _ => Err(global()),
        },
        routes::SUBSCRIBE => {
            if let Some(stream) = query_param(query, "stream") {
                return if token.grants_stream(&stream) {
                    Ok(())
                } else {
                    Err(outside_grant(&stream))
                };
            }
            match query_param(query, "category") {
                Some(category) if token.grants_category(&category) => Ok(()),
                _ => Err(global()),
            }
        }
        // Groups, projections and queries read across streams.
        _ => Err(global()),
    }
}

/// The authentication middleware: resolves the caller from `Authorization: Bearer …`,
/// checks the route's scope and the token's stream grants, and leaves the [`Caller`]
/// in the request's extensions. Does nothing when no token is configured.
pub async fn authenticate(state: &AppState, request: Request, next: impl Inner) -> Response {
    let tokens = state.auth.tokens();
    if tokens.is_empty() {
        return next(request).await;
    }
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|matched| matched.as_str().to_owned());
    let need = need_of(
        request.method(),
        route.as_deref(),
        state.auth.metrics_public,
    );
    if need == Need::Open {
        return next(request).await;
    }
    let secret = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| {
            let (scheme, rest) = value.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        });
    let Some(secret) = secret.filter(|secret| !secret.is_empty()) else {
        return unauthorized("this request needs an API token: Authorization: Bearer <token>");
    };
    let Some(token) = tokens.find(secret) else {
        tracing::info!(target: "cairn::http", "unknown API token");
        return unauthorized("the API token is not valid");
    };
    tracing::Span::current().record("token", token.name.as_str());
    let name = token.name.clone();
    let mut response = authorize(token, need, route.as_deref(), request, next).await;
    response.extensions_mut().insert(TokenName(name));
    response
}

/// Checks an authenticated request's scope and stream grants, then runs it as `token`.
async fn authorize(
    token: Arc<ApiToken>,
    need: Need,
    route: Option<&str>,
    request: Request,
    next: impl Inner,
) -> Response {
    let (mut parts, body) = request.into_parts();
    if let Need::Scope(scope) = need {
        if !token.allows(scope) {
            return forbidden(format!(
                "this token lacks the {scope:?} scope this request needs",
                scope = scope.as_str()
            ))
            .with("scope", scope.as_str())
            .into_response();
        }
        if let Some(route) = route {
            let params = RawPathParams::from_request_parts(&mut parts, &())
                .await
                .ok();
            let checked = check_grants(
                &token,
                &parts.method,
                route,
                parts.uri.query(),
                params.as_ref(),
            );
            if let Err(error) = checked {
                return error.into_response();
            }
        }
    }
    parts.extensions.insert(Caller(Some(token)));
    next(Request::from_parts(parts, body)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(name: &str, secret: &str, scopes: &[Scope], streams: &[&str]) -> ApiToken {
        ApiToken {
            name: name.into(),
            scopes: scopes.to_vec(),
            streams: streams.iter().map(|s| (*s).to_owned()).collect(),
            sha256: hash_secret(secret),
        }
    }

    #[test]
    fn secrets_are_found_by_their_hash_only() {
        let tokens = Tokens::new(vec![
            token("a", "secret-a", &[Scope::Read], &[]),
            token("b", "secret-b", &[Scope::Admin], &["order-"]),
        ])
        .unwrap();
        assert_eq!(tokens.find("secret-b").unwrap().name, "b");
        assert!(tokens.find("secret-c").is_none());
        assert!(tokens.find("").is_none());
    }

    #[test]
    fn admin_implies_every_scope_and_grants_are_prefixes() {
        let admin = token("b", "x", &[Scope::Admin], &["order-"]);
        assert!(Scope::ALL.iter().all(|scope| admin.allows(*scope)));
        assert!(admin.grants_stream("order-1"));
        assert!(!admin.grants_stream("invoice-1"));
        let reader = token("r", "y", &[Scope::Read], &[]);
        assert!(!reader.allows(Scope::Append));
        assert!(reader.grants_stream("anything"));
    }

    #[test]
    fn token_sets_are_validated() {
        let same_name = Tokens::new(vec![
            token("a", "1", &[Scope::Read], &[]),
            token("a", "2", &[Scope::Read], &[]),
        ]);
        assert!(same_name.unwrap_err().contains("two tokens"));
        assert!(Tokens::new(vec![token("a", "1", &[], &[])]).is_err());
        assert!(parse_sha256(&"ab".repeat(32)).is_ok());
        assert!(parse_sha256("abc").is_err());
        assert!(parse_sha256(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn generated_secrets_are_prefixed_and_url_safe() {
        let secret = generate_secret().unwrap();
        assert!(secret.starts_with(SECRET_PREFIX));
        assert_eq!(secret.len(), SECRET_PREFIX.len() + 43);
        assert!(
            secret[SECRET_PREFIX.len()..]
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_ne!(secret, generate_secret().unwrap());
    }

    #[test]
    fn routes_map_to_scopes() {
        use Need::*;
        let get = Method::GET;
        let post = Method::POST;
        assert_eq!(need_of(&get, Some(routes::HEALTH_LIVE), false), Open);
        assert_eq!(need_of(&get, Some(routes::METRICS), false), AnyToken);
        assert_eq!(need_of(&get, Some(routes::METRICS), true), Open);
        assert_eq!(
            need_of(&post, Some(routes::EVENTS), false),
            Scope(super::Scope::Append)
        );
        assert_eq!(
            need_of(&Method::DELETE, Some(routes::STREAM), false),
            Scope(super::Scope::Admin)
        );
        assert_eq!(
            need_of(&post, Some(routes::GROUP_CLAIM), false),
            Scope(super::Scope::Read)
        );
        assert_eq!(
            need_of(&get, Some(routes::QUERY_PLAN), false),
            Scope(super::Scope::Admin)
        );
        for route in [routes::QUERIES, routes::QUERY_STATUS, routes::QUERY] {
            assert_eq!(need_of(&get, Some(route), false), Scope(super::Scope::Read));
        }
        assert_eq!(need_of(&get, None, false), AnyToken);
    }
}
