//! Trace context that travels with events, and the spans that follow it.
//!
//! An event written under a W3C trace context keeps it in its metadata as
//! `$traceparent`. Whoever handles the event later (a projection, an SSE subscriber, a
//! consumer group) makes its span a child of, or links it to, that context, so a
//! trace follows an event from the request that wrote it to everything that handled it.
//!
//! Tracing is switched on once per process by the binary ([`set_enabled`]) when an
//! OpenTelemetry exporter is installed. Off, nothing here parses metadata or creates
//! spans: callers check [`enabled`] first, an atomic load.
//!
//! Spans created only for the exporter use the target [`SPAN_TARGET`]; the log
//! subscriber filters that target out, so they never become log lines.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use cairn_core::RecordedEvent;
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use serde_json::value::RawValue;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The target of spans meant for the trace exporter only, never for the log.
pub const SPAN_TARGET: &str = "cairn::otel";

/// The metadata key holding an event's W3C trace context.
pub const TRACEPARENT_KEY: &str = "$traceparent";

/// The most links one span gets; the SDK keeps 128 by default.
pub const MAX_LINKS: usize = 128;

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Turns the spans that follow events on or off for this process. The binary calls it
/// once it has installed an OpenTelemetry exporter.
pub fn set_enabled(enabled: bool) {
    ENABLED.store(enabled, Ordering::Release);
}

/// Whether traces are exported: only then are event spans created and metadata read.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Acquire)
}

/// A W3C `traceparent` (`version-traceid-parentid-flags`) as a remote span context;
/// `None` for anything invalid (the W3C recommendation: ignore it, never fail).
pub fn parse_traceparent(value: &str) -> Option<SpanContext> {
    let mut parts = value.split('-');
    let version = parts.next()?;
    let trace_id = parts.next()?;
    let span_id = parts.next()?;
    let flags = parts.next()?;
    let is_hex = |text: &str, len: usize| {
        text.len() == len
            && text
                .bytes()
                .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte))
    };
    if !is_hex(version, 2) || version == "ff" || !is_hex(trace_id, 32) || !is_hex(span_id, 16) {
        return None;
    }
    // Version 00 has exactly four fields; later versions may add more.
    if !is_hex(flags, 2) || (version == "00" && parts.next().is_some()) {
        return None;
    }
    let context = SpanContext::new(
        TraceId::from_hex(trace_id).ok()?,
        SpanId::from_hex(span_id).ok()?,
        TraceFlags::new(u8::from_str_radix(flags, 16).ok()? & 0x01),
        true,
        TraceState::default(),
    );
    context.is_valid().then_some(context)
}

/// The W3C `traceparent` naming `context`.
pub fn format_traceparent(context: &SpanContext) -> String {
    format!(
        "00-{}-{}-{:02x}",
        context.trace_id(),
        context.span_id(),
        context.trace_flags().to_u8()
    )
}

/// The span context of `span` as the exporter sees it; `None` when no exporter is
/// installed or the span is disabled.
pub fn span_context(span: &tracing::Span) -> Option<SpanContext> {
    if !enabled() || span.is_disabled() {
        return None;
    }
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context.is_valid().then_some(span_context)
}

/// The `traceparent` of `span` (its trace, with `span` as the parent), for downstream
/// work to continue from.
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    span_context(span).map(|context| format_traceparent(&context))
}

/// The `$traceparent` of stored metadata (compact JSON text), if it holds a valid one
/// at its top level.
pub fn metadata_traceparent(metadata: &str) -> Option<SpanContext> {
    // Most metadata has no trace context: skip parsing it.
    if !metadata.contains("traceparent") {
        return None;
    }
    let keys: HashMap<String, &RawValue> = serde_json::from_str(metadata).ok()?;
    let value: &str = serde_json::from_str(keys.get(TRACEPARENT_KEY)?.get()).ok()?;
    parse_traceparent(value)
}

/// The trace context an event was written under.
pub fn event_context(event: &RecordedEvent) -> Option<SpanContext> {
    metadata_traceparent(&event.metadata)
}

/// The distinct trace contexts `events` were written under (at most [`MAX_LINKS`]);
/// none while traces are not exported. Callers create a span only when there are some.
pub fn event_contexts<'a>(events: impl IntoIterator<Item = &'a RecordedEvent>) -> Vec<SpanContext> {
    let mut contexts: Vec<SpanContext> = Vec::new();
    if !enabled() {
        return contexts;
    }
    for event in events {
        if contexts.len() == MAX_LINKS {
            break;
        }
        if let Some(context) = event_context(event)
            && !contexts.contains(&context)
        {
            contexts.push(context);
        }
    }
    contexts
}

/// Makes `span` follow `contexts` (see [`event_contexts`]): a link to each, and, with
/// `adopt_parent` and exactly one context, that context as the span's parent, so the
/// span sits inside the trace that wrote the event. Call it before the span is first
/// entered.
pub fn follow(span: &tracing::Span, contexts: Vec<SpanContext>, adopt_parent: bool) {
    if adopt_parent && let [only] = contexts.as_slice() {
        let parent = opentelemetry::Context::new().with_remote_span_context(only.clone());
        // Fails only when the span has started already: then the link below serves.
        let _ = span.set_parent(parent);
    }
    for context in contexts {
        span.add_link(context);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_traceparent_round_trips() {
        let context = parse_traceparent(TRACEPARENT).unwrap();
        assert_eq!(
            context.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(context.span_id().to_string(), "00f067aa0ba902b7");
        assert!(context.is_sampled());
        assert!(context.is_remote());
        assert_eq!(format_traceparent(&context), TRACEPARENT);
    }

    #[test]
    fn invalid_traceparents_are_ignored() {
        for bad in [
            "",
            "garbage",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
            "0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad}");
        }
        // A later version may carry more fields.
        assert!(
            parse_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-x")
                .is_some()
        );
    }

    #[test]
    fn the_traceparent_is_read_from_the_top_level_of_metadata() {
        let context = |metadata: &str| metadata_traceparent(metadata).map(|c| c.span_id());
        let expected = parse_traceparent(TRACEPARENT).map(|c| c.span_id());
        assert_eq!(
            context(&format!(r#"{{"$traceparent":"{TRACEPARENT}","a":1}}"#)),
            expected
        );
        assert_eq!(
            context(&format!(
                r#"{{"a":{{"b":2}},"$traceparent":"{TRACEPARENT}"}}"#
            )),
            expected
        );
        assert_eq!(context("{}"), None);
        assert_eq!(context(r#"{"$traceparent":"mine"}"#), None);
        assert_eq!(context(r#"{"$traceparent":42}"#), None);
        assert_eq!(
            context(&format!(
                r#"{{"nested":{{"$traceparent":"{TRACEPARENT}"}}}}"#
            )),
            None
        );
        assert_eq!(context(r#"{"traceparent""#), None);
    }

    #[test]
    fn nothing_is_followed_while_tracing_is_off() {
        let event = RecordedEvent {
            id: uuid::Uuid::nil(),
            stream: cairn_core::StreamName::parse("order-1").unwrap(),
            event_type: "Placed".into(),
            version: 0,
            position: 1,
            data: "{}".into(),
            metadata: format!(r#"{{"$traceparent":"{TRACEPARENT}"}}"#),
            tags: vec![],
            recorded_at: 0,
        };
        assert!(event_context(&event).is_some());
        assert!(event_contexts([&event]).is_empty());
        assert_eq!(traceparent_of(&tracing::info_span!("test")), None);
    }
}
