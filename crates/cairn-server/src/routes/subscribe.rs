//! `/v1/subscribe`: the global log as Server-Sent Events, catch-up then live.

use axum::extract::State;
use axum::response::Response;
use cairn_api::ErrorBody;
use cairn_store::tail::LogTail;

use crate::AppState;
use crate::error::ApiError;
use crate::extract::{SubscribeQuery, SubscribeStart};
use crate::openapi::ServerErrors;

/// Follow the global log as Server-Sent Events.
#[utoipa::path(
    get,
    path = "/v1/subscribe",
    tag = "events",
    operation_id = "subscribe",
    description = "Follow the global log (optionally filtered) as Server-Sent Events: first every matching event from the start position on, read from the log, then each new event as it is committed, with no gap and no duplicate at the switch.\n\n\
        Where it starts: after the position in the `Last-Event-ID` header when given (a reconnecting EventSource sends it), else at `from_position`, else after the current head (new events only). `Last-Event-ID` wins over `from_position`.\n\n\
        Each event is one record, `id: <position>` then `data: <the event as JSON on one line>` (the shape of `Event`, as in reads), then an empty line. When no event comes for a while (15 s by default), the comment line `: keepalive` is sent. The stream does not end by itself.\n\n\
        A client that stops reading is not allowed to grow the server's memory: once its buffer has stayed full for the slow-consumer timeout (10 s by default), the server ends the stream, after the events already buffered, with the comment `: closed: slow_consumer: …`; reconnect with `Last-Event-ID` to resume. When the server shuts down, the stream ends with `: closed: shutdown: …`.\n\n\
        Bad parameters are refused with a JSON error before the stream starts.",
    params(
        ("from_position" = Option<u64>, Query, description = "The first position to consider (inclusive). Default: after the current head (new events only). Ignored when `Last-Event-ID` is given.", minimum = 1),
        ("category" = Option<String>, Query, description = "Only events of streams in this category (the part of the name before the first `-`)."),
        ("types" = Option<String>, Query, description = "Comma-separated event types; an event matches any of them."),
        ("tags" = Option<String>, Query, description = "Comma-separated tags; an event must carry all of them."),
        ("stream" = Option<String>, Query, description = "Only events of this stream (empty: no such filter).", pattern = r"^([A-Za-z0-9_.:@-]{1,200})?$"),
        ("Last-Event-ID" = Option<String>, Header, description = "The position of the last event received: the stream resumes after it. Wins over `from_position`.", nullable = false, pattern = r"^[0-9]{1,19}$"),
    ),
    responses(
        (status = 200, description = "The event stream: `id: <position>` and `data: <event JSON>` records, `: keepalive` comments, and possibly a final `: closed: …` comment.", body = String, content_type = "text/event-stream"),
        (status = 400, description = "`invalid_request` (a bad query parameter or `Last-Event-ID`) or `invalid_stream_name`.", body = ErrorBody),
        ServerErrors,
    )
)]
pub async fn subscribe(
    State(state): State<AppState>,
    query: SubscribeQuery,
) -> Result<Response, ApiError> {
    let tail = match query.start {
        SubscribeStart::After(last) => {
            LogTail::new(state.store.clone(), last.saturating_add(1), query.filter)
        }
        SubscribeStart::At(position) => LogTail::new(state.store.clone(), position, query.filter),
        SubscribeStart::New => {
            // Whatever commits after this read lands above it, where the tail finds it
            // (in the log or in the live feed).
            let head = state.store.head_position().await?;
            LogTail::new(state.store.clone(), head.saturating_add(1), query.filter)
        }
    };
    Ok(state.subscriptions.start(tail))
}
