//! The OpenAPI 3.1 document, generated from the handlers' `#[utoipa::path]` attributes
//! and the `cairn-api` types, then adjusted to this server's configured limits.

use std::collections::BTreeMap;

use http::Method;
use utoipa::OpenApi;
use utoipa::openapi::path::Operation;
use utoipa::openapi::schema::{ArrayItems, ObjectBuilder, Schema, SchemaType};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    ContentBuilder, Header, HeaderBuilder, Ref, RefOr, Response, ResponseBuilder,
};

use crate::Limits;
use crate::auth::{Need, need_of};
use crate::extract::MAX_QUERY_WAIT_MS;
use crate::groups::{
    MAX_ACK_TIMEOUT_MS, MAX_CLAIM, MAX_CLAIM_WAIT_MS, MAX_CONSUMER_LEN, MAX_DELIVERIES,
    MAX_POSITIONS, MAX_RETRY_AFTER_MS,
};
use crate::routes::{self, events, groups, ops, projections, queries, streams, subscribe};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Cairn",
        description = "Cairn's HTTP API v1: append-only event streams with optimistic concurrency and a gapless global log, live subscriptions (Server-Sent Events), consumer groups, and the CQRS read side: SQL projections configured in the server's settings file and named queries over their read models, with read-your-writes through `min_position`.\n\nErrors always look like `{\"error\": {\"code\": \"snake_case_code\", \"message\": \"…\", …details}}`. An unknown path answers 404 `not_found`; a known path with another method answers 405 `method_not_allowed`.",
    ),
    paths(
        streams::append_to_stream,
        streams::read_stream,
        streams::stream_info,
        streams::delete_stream,
        streams::list_streams,
        events::append_to_streams,
        events::read_all,
        subscribe::subscribe,
        groups::list_groups,
        groups::put_group,
        groups::get_group,
        groups::delete_group,
        groups::claim,
        groups::ack,
        groups::nack,
        groups::list_parked,
        groups::replay_parked,
        projections::list_projections,
        projections::get_projection,
        projections::restart_projection,
        projections::rebuild_projection,
        queries::query,
        queries::list_queries,
        queries::query_status,
        queries::query_plan,
        ops::live,
        ops::ready,
        ops::metrics,
        ops::openapi_json,
    ),
    components(schemas(
        cairn_api::ErrorBody,
        cairn_api::ApiError,
        cairn_api::ErrorCode,
        cairn_api::ExpectedVersion,
        cairn_api::EventInput,
        cairn_api::AppendRequest,
        cairn_api::AppendResponse,
        cairn_api::MultiEventInput,
        cairn_api::EventQuery,
        cairn_api::AppendCondition,
        cairn_api::MultiAppendRequest,
        cairn_api::MultiAppendResponse,
        cairn_api::Event,
        cairn_api::ReadStreamResponse,
        cairn_api::StreamInfo,
        cairn_api::StreamList,
        cairn_api::ReadAllResponse,
        cairn_api::Health,
        cairn_api::ReplicaHealth,
        cairn_api::EventFilterSpec,
        cairn_api::GroupOrdering,
        cairn_api::GroupRequest,
        cairn_api::GroupSettingsView,
        cairn_api::GroupStatus,
        cairn_api::GroupList,
        cairn_api::ClaimRequest,
        cairn_api::Delivery,
        cairn_api::ClaimResponse,
        cairn_api::AckRequest,
        cairn_api::NackRequest,
        cairn_api::SettleResponse,
        cairn_api::ParkedEvent,
        cairn_api::ParkedList,
        cairn_api::ReplayParkedRequest,
        cairn_api::ReplayParkedResponse,
        cairn_api::ProjectionState,
        cairn_api::ProjectionFailure,
        cairn_api::ProjectionOwner,
        cairn_api::ProjectionStatus,
        cairn_api::ProjectionList,
        cairn_api::QueryResponse,
        cairn_api::PlanWarning,
        cairn_api::PlanRow,
        cairn_api::PlanAnalysis,
        cairn_api::QueryPlan,
        cairn_api::QueryStatus,
        cairn_api::QueryList,
        ReadDirection,
    )),
    tags(
        (name = "streams", description = "Append to and read single streams."),
        (name = "events", description = "Multi-stream appends, the global log and live subscriptions."),
        (name = "groups", description = "Consumer groups: competing consumers with at-least-once delivery, acks, retries and parking."),
        (name = "read side", description = "Projections (SQL read models kept up to date from the log) and named queries over them."),
        (name = "operations", description = "Health, metrics and this document."),
    )
)]
pub struct ApiDoc;

/// The direction of a stream read (documentation only; the query parser is in
/// `extract`).
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "lowercase")]
pub enum ReadDirection {
    Forward,
    Backward,
}

/// The 500 and 503 every route can answer: an unexpected failure (or a panic), or an
/// unavailable store / a request over its time limit.
pub struct ServerErrors;

impl utoipa::IntoResponses for ServerErrors {
    fn responses() -> BTreeMap<String, RefOr<utoipa::openapi::Response>> {
        let error_body = || {
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorBody")))
                .build()
        };
        let internal = ResponseBuilder::new()
            .description("`internal`: an unexpected failure; the body says nothing more.")
            .content("application/json", error_body())
            .build();
        let unavailable = ResponseBuilder::new()
            .description(
                "`unavailable`: the server is handling too many requests at once, storage is \
                 unavailable, or the request took too long (nothing was written). Retry after \
                 `Retry-After` seconds.",
            )
            .header("Retry-After", retry_after_header())
            .content("application/json", error_body())
            .build();
        BTreeMap::from([
            ("500".to_owned(), internal.into()),
            ("503".to_owned(), unavailable.into()),
        ])
    }
}

/// The name of the bearer-token security scheme.
pub const BEARER_SCHEME: &str = "bearer";

/// The `Retry-After` header of a 429 or a 503: whole seconds, at least 1.
fn retry_after_header() -> Header {
    HeaderBuilder::new()
        .schema(Some(
            ObjectBuilder::new()
                .schema_type(utoipa::openapi::Type::Integer)
                .minimum(Some(1)),
        ))
        .description(Some("Seconds to wait before retrying."))
        .build()
}

/// An error answer: the JSON error body, with `description` and `headers`.
fn error_response(description: String, headers: Vec<(&str, Header)>) -> Response {
    let mut response = ResponseBuilder::new().description(description).content(
        "application/json",
        ContentBuilder::new()
            .schema(Some(Ref::from_schema_name("ErrorBody")))
            .build(),
    );
    for (name, header) in headers {
        response = response.header(name, header);
    }
    response.build()
}

/// Declares the bearer-token scheme and, on each operation, what the authentication and
/// limits middleware ask of it and answer: the scheme with the scope the route needs
/// (from [`need_of`], the function the middleware uses), 401 and 403 where they can
/// happen, and 429 on every route the limits apply to (all but the health checks).
fn declare_security_and_limits(document: &mut utoipa::openapi::OpenApi, metrics_public: bool) {
    let components = document.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        BEARER_SCHEME,
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(
                    "An API token (`cairn token create`), as `Authorization: Bearer <token>`. \
                     The scope listed on an operation is the one it needs (`admin` implies \
                     `read` and `append`); none listed: any valid token. A server with no \
                     token configured asks for none (and serves only loopback unless told \
                     otherwise).",
                ))
                .build(),
        ),
    );
    for (path, item) in document.paths.paths.iter_mut() {
        for (method, operation) in [
            (Method::GET, &mut item.get),
            (Method::PUT, &mut item.put),
            (Method::POST, &mut item.post),
            (Method::DELETE, &mut item.delete),
        ] {
            let Some(operation) = operation.as_mut() else {
                continue;
            };
            let need = need_of(&method, Some(path), metrics_public);
            let responses = &mut operation.responses.responses;
            if need != Need::Open {
                let scopes: Vec<&str> = match need {
                    Need::Scope(scope) => vec![scope.as_str()],
                    Need::Open | Need::AnyToken => Vec::new(),
                };
                operation.security = Some(vec![SecurityRequirement::new(BEARER_SCHEME, scopes)]);
                let www_authenticate = HeaderBuilder::new()
                    .schema(Some(
                        ObjectBuilder::new().schema_type(utoipa::openapi::Type::String),
                    ))
                    .description(Some("`Bearer`."))
                    .build();
                responses.entry("401".to_owned()).or_insert_with(|| {
                    error_response(
                        "`unauthorized`: no API token, or not a valid one.".to_owned(),
                        vec![("WWW-Authenticate", www_authenticate)],
                    )
                    .into()
                });
            }
            if let Need::Scope(scope) = need {
                responses.entry("403".to_owned()).or_insert_with(|| {
                    error_response(forbidden_description(&method, path, scope.as_str()), vec![])
                        .into()
                });
            }
            if !matches!(path.as_str(), routes::HEALTH_LIVE | routes::HEALTH_READY) {
                responses.entry("429".to_owned()).or_insert_with(|| {
                    error_response(
                        rate_limited_description(path),
                        vec![("Retry-After", retry_after_header())],
                    )
                    .into()
                });
            }
        }
    }
}

/// When `method` on `route` is 403 `forbidden` (see `auth::check_grants`).
fn forbidden_description(method: &Method, route: &str, scope: &str) -> String {
    let grants = match route {
        routes::STREAM_EVENTS | routes::STREAM => "the stream is outside the token's stream grants",
        routes::EVENTS if method == Method::POST => {
            "a stream of the request is outside the token's stream grants (nothing is written)"
        }
        routes::EVENTS => {
            "the token is limited to some streams and the request names no granted `category`"
        }
        routes::STREAMS => {
            "the token is limited to some streams and the request names no granted `prefix`"
        }
        routes::SUBSCRIBE => {
            "the token is limited to some streams and the request names no granted `stream` \
             or `category`"
        }
        _ => "the token is limited to some streams (this request reads across streams)",
    };
    format!("`forbidden`: the token lacks the `{scope}` scope (detail `scope`), or {grants}.")
}

/// When a request to `route` is 429 `rate_limited` (see `limits::guard`).
fn rate_limited_description(route: &str) -> String {
    let cap = match route {
        routes::SUBSCRIBE => {
            ", or it already holds its most live subscriptions \
             (`max_subscriptions_per_token`)"
        }
        routes::GROUP_CLAIM => {
            ", or it already has its most claims in progress \
             (`max_claims_per_token`)"
        }
        _ => "",
    };
    format!(
        "`rate_limited`: the caller (its token; its address without tokens) is over its \
         request rate{cap}. Retry after `Retry-After` seconds."
    )
}

/// The document for a server with these limits: the generated one, with the checks
/// the handlers make (lengths, counts, limits) written into the schemas, so that a
/// client generated from it sends what the server accepts, and with what the
/// authentication and limits middleware need and answer on each operation
/// (`metrics_public`: `/metrics` needs no token).
pub fn document(limits: &Limits, metrics_public: bool) -> utoipa::openapi::OpenApi {
    let mut document = ApiDoc::openapi();
    declare_security_and_limits(&mut document, metrics_public);
    for item in document.paths.paths.values_mut() {
        for operation in [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
        ]
        .into_iter()
        .flatten()
        {
            set_parameter_maximum(operation, "limit", limits.max_read_limit as u64);
            set_parameter_maximum(operation, "wait_ms", MAX_QUERY_WAIT_MS);
        }
    }
    let Some(components) = document.components.as_mut() else {
        return document;
    };
    let schemas = &mut components.schemas;
    for name in ["Event", "EventInput", "MultiEventInput"] {
        // `data` is any JSON value, not only an object.
        if let Some(data) = property(schemas, name, "data") {
            *data = ObjectBuilder::new()
                .schema_type(SchemaType::AnyValue)
                .description(Some("Any JSON value."))
                .into();
        }
    }
    for name in ["EventInput", "MultiEventInput"] {
        if let Some(RefOr::T(Schema::Object(event_type))) = property(schemas, name, "type") {
            event_type.min_length = Some(1);
            event_type.max_length = Some(MAX_TYPE_LEN);
            event_type.pattern = Some(NO_CONTROL_CHARACTERS.to_owned());
            event_type.description = Some(
                "The event's type: 1–200 bytes of UTF-8 (`maxLength` counts characters), \
                 no control characters."
                    .to_owned(),
            );
        }
        if let Some(RefOr::T(Schema::Array(tags))) = property(schemas, name, "tags") {
            tags.max_items = Some(MAX_TAGS);
            if let ArrayItems::RefOrSchema(item) = &mut tags.items
                && let RefOr::T(Schema::Object(tag)) = item.as_mut()
            {
                tag.min_length = Some(1);
                tag.max_length = Some(MAX_TAG_LEN);
                tag.pattern = Some(NO_CONTROL_CHARACTERS.to_owned());
                tag.description = Some("1–200 bytes of UTF-8, no control characters.".to_owned());
            }
        }
    }
    if let Some(RefOr::T(Schema::Object(stream))) = property(schemas, "MultiEventInput", "stream") {
        stream.pattern = Some(STREAM_NAME_PATTERN.to_owned());
    }
    // `expected_versions` is keyed by stream name.
    if let Some(RefOr::T(Schema::Object(versions))) =
        property(schemas, "MultiAppendRequest", "expected_versions")
    {
        versions.property_names = Some(Box::new(
            ObjectBuilder::new()
                .schema_type(utoipa::openapi::Type::String)
                .pattern(Some(STREAM_NAME_PATTERN))
                .into(),
        ));
    }
    for name in ["AppendRequest", "MultiAppendRequest"] {
        if let Some(RefOr::T(Schema::Array(events))) = property(schemas, name, "events") {
            events.min_items = Some(1);
            events.max_items = Some(limits.max_events_per_request);
        }
    }
    constrain_group_schemas(schemas);
    document
}

/// The checks of `crate::groups`, written into the consumer-group schemas.
fn constrain_group_schemas(schemas: &mut BTreeMap<String, RefOr<Schema>>) {
    set_range(schemas, "GroupRequest", "from_position", 1, None);
    set_range(
        schemas,
        "GroupRequest",
        "ack_timeout_ms",
        1,
        Some(MAX_ACK_TIMEOUT_MS),
    );
    set_range(
        schemas,
        "GroupRequest",
        "max_deliveries",
        1,
        Some(u64::from(MAX_DELIVERIES)),
    );
    set_range(
        schemas,
        "ClaimRequest",
        "max",
        1,
        Some(u64::from(MAX_CLAIM)),
    );
    set_range(
        schemas,
        "ClaimRequest",
        "wait_ms",
        0,
        Some(MAX_CLAIM_WAIT_MS),
    );
    set_range(
        schemas,
        "NackRequest",
        "retry_after_ms",
        0,
        Some(MAX_RETRY_AFTER_MS),
    );
    if let Some(RefOr::T(Schema::Object(consumer))) = property(schemas, "ClaimRequest", "consumer")
    {
        consumer.min_length = Some(1);
        consumer.max_length = Some(MAX_CONSUMER_LEN);
    }
    for name in ["AckRequest", "NackRequest", "ReplayParkedRequest"] {
        if let Some(RefOr::T(Schema::Array(positions))) = property(schemas, name, "positions") {
            positions.min_items = Some(1);
            positions.max_items = Some(MAX_POSITIONS);
            if let ArrayItems::RefOrSchema(item) = &mut positions.items
                && let RefOr::T(Schema::Object(position)) = item.as_mut()
            {
                position.minimum = Some(1.into());
            }
        }
    }
    if let Some(RefOr::T(Schema::Object(stream))) = property(schemas, "EventFilterSpec", "stream") {
        stream.pattern = Some(STREAM_NAME_PATTERN.to_owned());
    }
    if let Some(RefOr::T(Schema::Array(types))) = property(schemas, "EventFilterSpec", "types")
        && let ArrayItems::RefOrSchema(item) = &mut types.items
        && let RefOr::T(Schema::Object(event_type)) = item.as_mut()
    {
        event_type.min_length = Some(1);
        event_type.max_length = Some(MAX_TYPE_LEN);
        event_type.pattern = Some(NO_CONTROL_CHARACTERS.to_owned());
    }
    if let Some(RefOr::T(Schema::Array(tags))) = property(schemas, "EventFilterSpec", "tags") {
        tags.max_items = Some(MAX_TAGS);
        if let ArrayItems::RefOrSchema(item) = &mut tags.items
            && let RefOr::T(Schema::Object(tag)) = item.as_mut()
        {
            tag.min_length = Some(1);
            tag.max_length = Some(MAX_TAG_LEN);
            tag.pattern = Some(NO_CONTROL_CHARACTERS.to_owned());
        }
    }
}

/// What `cairn_core`'s labels (event types, tags) may not contain: control characters
/// (Unicode category Cc, as `char::is_control`).
pub const NO_CONTROL_CHARACTERS: &str = r"^[^\u0000-\u001F\u007F-\u009F]*$";

/// Sets the bounds of a numeric property.
fn set_range(
    schemas: &mut BTreeMap<String, RefOr<Schema>>,
    schema: &str,
    name: &str,
    minimum: u64,
    maximum: Option<u64>,
) {
    if let Some(RefOr::T(Schema::Object(number))) = property(schemas, schema, name) {
        number.minimum = Some(minimum.into());
        number.maximum = maximum.map(Into::into);
    }
}

/// What `cairn_core::EventType::validate` and `Tag::validate_all` accept (the crate
/// keeps these private; a test checks they agree).
pub const MAX_TYPE_LEN: usize = 200;
pub const MAX_TAG_LEN: usize = 200;
pub const MAX_TAGS: usize = 32;

/// What `cairn_core::StreamName::parse` accepts.
pub const STREAM_NAME_PATTERN: &str = r"^[A-Za-z0-9_.:@-]{1,200}$";

fn property<'a>(
    schemas: &'a mut BTreeMap<String, RefOr<Schema>>,
    schema: &str,
    property: &str,
) -> Option<&'a mut RefOr<Schema>> {
    match schemas.get_mut(schema) {
        Some(RefOr::T(Schema::Object(object))) => object.properties.get_mut(property),
        _ => None,
    }
}

/// The document as JSON bytes, built once per application.
pub fn document_json(limits: &Limits, metrics_public: bool) -> Vec<u8> {
    serde_json::to_vec(&document(limits, metrics_public)).unwrap_or_else(|_| b"{}".to_vec())
}

fn set_parameter_maximum(operation: &mut Operation, name: &str, max: u64) {
    for parameter in operation.parameters.iter_mut().flatten() {
        if let RefOr::T(parameter) = parameter
            && parameter.name == name
            && let Some(RefOr::T(Schema::Object(schema))) = parameter.schema.as_mut()
        {
            schema.maximum = Some(max.into());
        }
    }
}
