//! W3C trace context on requests: continuing the caller's trace, and the
//! `traceparent` a write stores in its events' metadata.
//!
//! With traces exported (`cairn_store::trace::enabled`), each request's span continues
//! the trace of its `traceparent` header (through the W3C `TraceContextPropagator`), and
//! a write stores *Cairn's* request span as each event's `$traceparent`, so whatever
//! handles the event later is a child of the request that wrote it. Without an
//! exporter, a write stores the valid header as it came. An invalid header is ignored,
//! never an error.

use http::HeaderMap;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The request's headers as the propagator reads them.
struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// The ids a request's log line carries: its trace and, with traces exported, Cairn's
/// span of it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RequestTrace {
    pub trace_id: Option<String>,
    pub span_id: Option<String>,
}

/// Makes `span` (a request's, not yet entered) continue the trace of the request's
/// `traceparent`, and returns the ids to log. Without an exporter, the trace id is the
/// header's and there is no span id.
pub fn continue_trace(span: &tracing::Span, headers: &HeaderMap) -> RequestTrace {
    if !cairn_store::trace::enabled() {
        let trace_id = crate::extract::traceparent(headers)
            .map(|value| crate::extract::trace_id_of(value).to_owned());
        return RequestTrace {
            trace_id,
            span_id: None,
        };
    }
    let parent = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    // Fails only for a span no layer records (then there is nothing to continue).
    let _ = span.set_parent(parent);
    match cairn_store::trace::span_context(span) {
        Some(context) => RequestTrace {
            trace_id: Some(context.trace_id().to_string()),
            span_id: Some(context.span_id().to_string()),
        },
        None => RequestTrace::default(),
    }
}

/// The `traceparent` a write stores in its events' metadata: the current span's (the
/// request's) when traces are exported, else the request's valid header. A trace that
/// Cairn started itself and did not sample (no header came, and the sampler said no)
/// is not stored: nobody can follow it, and leaving it out spares every event of the
/// write ~70 bytes and the work of adding them.
pub fn write_traceparent(headers: &HeaderMap) -> Option<String> {
    let incoming = crate::extract::traceparent(headers);
    match cairn_store::trace::traceparent_of(&tracing::Span::current()) {
        Some(own) if incoming.is_some() || is_sampled(&own) => Some(own),
        Some(_) => None,
        None => incoming.map(str::to_owned),
    }
}

/// Whether a valid `traceparent`'s flags have the sampled bit.
fn is_sampled(traceparent: &str) -> bool {
    traceparent
        .rsplit('-')
        .next()
        .and_then(|flags| u8::from_str_radix(flags, 16).ok())
        .is_some_and(|flags| flags & 1 == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sampled_flag_is_read_from_the_traceparent() {
        assert!(is_sampled(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        ));
        assert!(!is_sampled(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
        ));
        assert!(!is_sampled("nonsense"));
    }

    const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn without_an_exporter_the_header_is_used_as_it_came() {
        let mut headers = HeaderMap::new();
        let span = tracing::info_span!("request");
        assert_eq!(continue_trace(&span, &headers), RequestTrace::default());
        assert_eq!(write_traceparent(&headers), None);
        headers.insert("traceparent", TRACEPARENT.parse().unwrap());
        assert_eq!(
            continue_trace(&span, &headers),
            RequestTrace {
                trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736".into()),
                span_id: None,
            }
        );
        assert_eq!(write_traceparent(&headers).as_deref(), Some(TRACEPARENT));
        headers.insert("traceparent", "00-nonsense".parse().unwrap());
        assert_eq!(write_traceparent(&headers), None);
    }

    #[test]
    fn the_extractor_reads_header_values() {
        let mut headers = HeaderMap::new();
        headers.insert("traceparent", TRACEPARENT.parse().unwrap());
        headers.insert("tracestate", "a=1".parse().unwrap());
        let extractor = HeaderExtractor(&headers);
        assert_eq!(extractor.get("traceparent"), Some(TRACEPARENT));
        assert_eq!(extractor.get("missing"), None);
        let mut keys = extractor.keys();
        keys.sort_unstable();
        assert_eq!(keys, ["traceparent", "tracestate"]);
    }
}
