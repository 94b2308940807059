//! W3C trace context on requests: the sampling decision, continuing the caller's
//! trace, and the `traceparent` a write stores in its events' metadata.
//!
//! With traces exported (`cairn_store::trace::enabled`), each request is sampled
//! *before* its span is made ([`sampled_parent`]), with the sampler the `OTEL_*`
//! environment configured. A sampled request's span (target `cairn::http`) continues
//! the trace of its `traceparent` header (through the W3C `TraceContextPropagator`),
//! and a write stores *Cairn's* request span as each event's `$traceparent`, so
//! whatever handles the event later is a child of the request that wrote it. An
//! unsampled request's span has the target [`UNTRACED_TARGET`], which the exporter's
//! layer never sees: the unsampled majority costs no OpenTelemetry work, and a write
//! stores the caller's valid header as it came, as it does without an exporter. An
//! invalid header is ignored, never an error.
//!
//! The exporter's sampler is wrapped in [`PreSampledRequests`], which keeps every
//! server span that reaches it (the decision was made here) and asks the configured
//! sampler about everything else; so the ratio applies once.

use std::sync::{PoisonError, RwLock};

use http::HeaderMap;
use opentelemetry::Context;
use opentelemetry::KeyValue;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{Link, SpanKind, TraceContextExt as _, TraceId, TraceState};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    IdGenerator as _, RandomIdGenerator, SamplingDecision, SamplingResult, ShouldSample,
};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The target of an unsampled request's span: logged like any request's, never seen
/// by the trace exporter's layer.
pub const UNTRACED_TARGET: &str = "cairn::http::untraced";

/// The configured sampler, asked once per request; `None` samples nothing.
static REQUEST_SAMPLER: RwLock<Option<Box<dyn ShouldSample>>> = RwLock::new(None);

/// Sets the sampler requests are sampled with (the binary's, from the `OTEL_*`
/// environment, when it installs an exporter); `None` when traces stop.
pub fn set_request_sampler(sampler: Option<Box<dyn ShouldSample>>) {
    *REQUEST_SAMPLER
        .write()
        .unwrap_or_else(PoisonError::into_inner) = sampler;
}

/// With traces exported and the request sampled, the context its span continues: the
/// caller's trace from a valid `traceparent`, else an empty one (a new trace). `None`
/// when traces are off or the sampler drops the request.
pub fn sampled_parent(headers: &HeaderMap) -> Option<Context> {
    if !cairn_store::trace::enabled() {
        return None;
    }
    let parent = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    let sampled = REQUEST_SAMPLER
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .as_deref()
        .is_some_and(|sampler| request_is_sampled(sampler, &parent));
    sampled.then_some(parent)
}

/// What `sampler` decides for a server span under `parent`, with the trace id the span
/// would have: the caller's, or a new random one.
fn request_is_sampled(sampler: &dyn ShouldSample, parent: &Context) -> bool {
    let remote = parent.span().span_context().clone();
    let trace_id = if remote.is_valid() {
        remote.trace_id()
    } else {
        RandomIdGenerator::default().new_trace_id()
    };
    let result = sampler.should_sample(
        Some(parent),
        trace_id,
        "request",
        &SpanKind::Server,
        &[],
        &[],
    );
    result.decision == SamplingDecision::RecordAndSample
}

/// The exporter's sampler: a server span (a request's) reaches the exporter only when
/// [`sampled_parent`] sampled it, so it is kept; every other span is decided by the
/// configured sampler.
#[derive(Debug, Clone)]
pub struct PreSampledRequests {
    configured: Box<dyn ShouldSample>,
}

impl PreSampledRequests {
    pub fn new(configured: Box<dyn ShouldSample>) -> Self {
        Self { configured }
    }
}

impl ShouldSample for PreSampledRequests {
    fn should_sample(
        &self,
        parent_context: Option<&Context>,
        trace_id: TraceId,
        name: &str,
        span_kind: &SpanKind,
        attributes: &[KeyValue],
        links: &[Link],
    ) -> SamplingResult {
        if *span_kind != SpanKind::Server {
            return self.configured.should_sample(
                parent_context,
                trace_id,
                name,
                span_kind,
                attributes,
                links,
            );
        }
        SamplingResult {
            decision: SamplingDecision::RecordAndSample,
            attributes: Vec::new(),
            trace_state: parent_context.map_or_else(TraceState::default, |context| {
                context.span().span_context().trace_state().clone()
            }),
        }
    }
}

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

/// Makes `span` (a request's, not yet entered) continue `parent` when the request is
/// sampled ([`sampled_parent`]), and returns the ids to log. Otherwise the trace id is
/// the header's, and there is no span id.
pub fn continue_trace(
    span: &tracing::Span,
    parent: Option<Context>,
    headers: &HeaderMap,
) -> RequestTrace {
    let Some(parent) = parent else {
        return header_trace(headers);
    };
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

/// The ids to log of a request that is not traced: its `traceparent` header's trace
/// id, if it has a valid one, and no span id.
pub fn header_trace(headers: &HeaderMap) -> RequestTrace {
    RequestTrace {
        trace_id: crate::extract::traceparent(headers)
            .map(|value| crate::extract::trace_id_of(value).to_owned()),
        span_id: None,
    }
}

/// The `traceparent` a write stores in its events' metadata: the current span's (the
/// request's) when the request is sampled, else the request's valid header. A trace
/// that Cairn started itself and did not sample is not stored (its request has no
/// exported span): nobody can follow it, and leaving it out spares every event of the
/// write ~70 bytes and the work of adding them.
pub fn write_traceparent(headers: &HeaderMap) -> Option<String> {
    cairn_store::trace::traceparent_of(&tracing::Span::current())
        .or_else(|| crate::extract::traceparent(headers).map(str::to_owned))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn without_an_exporter_the_header_is_used_as_it_came() {
        let mut headers = HeaderMap::new();
        let span = tracing::info_span!("request");
        assert_eq!(
            continue_trace(&span, None, &headers),
            RequestTrace::default()
        );
        assert_eq!(write_traceparent(&headers), None);
        headers.insert("traceparent", TRACEPARENT.parse().unwrap());
        assert_eq!(
            continue_trace(&span, None, &headers),
            RequestTrace {
                trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736".into()),
                span_id: None,
            }
        );
        assert_eq!(write_traceparent(&headers).as_deref(), Some(TRACEPARENT));
        headers.insert("traceparent", "00-nonsense".parse().unwrap());
        assert_eq!(write_traceparent(&headers), None);
    }

    fn sampled(sampler: &dyn ShouldSample, traceparent: Option<&str>) -> bool {
        let mut headers = HeaderMap::new();
        if let Some(traceparent) = traceparent {
            headers.insert("traceparent", traceparent.parse().unwrap());
        }
        let parent = TraceContextPropagator::new().extract(&HeaderExtractor(&headers));
        request_is_sampled(sampler, &parent)
    }

    const UNSAMPLED: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";

    #[test]
    fn requests_are_sampled_by_the_configured_sampler() {
        use opentelemetry_sdk::trace::Sampler;
        assert!(sampled(&Sampler::AlwaysOn, None));
        assert!(!sampled(&Sampler::AlwaysOff, None));
        assert!(!sampled(
            &Sampler::TraceIdRatioBased(0.0),
            Some(TRACEPARENT)
        ));
        // Parent-based: the caller's decision wins; roots ask the root sampler.
        let parent_based = Sampler::ParentBased(Box::new(Sampler::AlwaysOff));
        assert!(sampled(&parent_based, Some(TRACEPARENT)));
        assert!(!sampled(&parent_based, Some(UNSAMPLED)));
        assert!(!sampled(&parent_based, None));
        assert!(!sampled(&parent_based, Some("00-nonsense")));
        // A ratio applies once: about 1% of new traces at 0.01.
        let one_percent = Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(0.01)));
        let kept = (0..20_000).filter(|_| sampled(&one_percent, None)).count();
        assert!((100..=320).contains(&kept), "{kept} of 20000 sampled");
    }

    #[test]
    fn the_exporter_keeps_request_spans_and_asks_about_the_rest() {
        use opentelemetry_sdk::trace::Sampler;
        let sampler = PreSampledRequests::new(Box::new(Sampler::AlwaysOff));
        let decide = |kind: SpanKind| {
            sampler
                .should_sample(None, TraceId::from(7), "x", &kind, &[], &[])
                .decision
        };
        assert_eq!(decide(SpanKind::Server), SamplingDecision::RecordAndSample);
        assert_eq!(decide(SpanKind::Internal), SamplingDecision::Drop);
        assert_eq!(decide(SpanKind::Client), SamplingDecision::Drop);
    }

    #[test]
    fn without_a_sampler_or_an_exporter_no_request_is_sampled() {
        let headers = HeaderMap::new();
        assert!(sampled_parent(&headers).is_none());
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
