//! Traces: OpenTelemetry over OTLP/gRPC, configured by the standard `OTEL_*`
//! environment variables, off unless an endpoint is set.
//!
//! - `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT` (an
//!   `http://host:port` gRPC address) turns traces on; without either, nothing is set
//!   up and tracing costs nothing.
//! - `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none` turns them off anyway.
//! - `OTEL_SERVICE_NAME` / `OTEL_RESOURCE_ATTRIBUTES` name the service (default
//!   `cairn`); `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG` pick the sampler
//!   (default `parentbased_always_on`; `parentbased_traceidratio` with `0.01` keeps 1%);
//!   `OTEL_BSP_*` tune the batch export; `OTEL_EXPORTER_OTLP_HEADERS`,
//!   `…_TIMEOUT` and `…_COMPRESSION` are read by the exporter.
//!
//! The spans are `tracing` spans, exported through a `tracing-opentelemetry` layer
//! beside the log layer ([`crate::logging`]). The provider is flushed and shut down
//! when the server stops ([`Telemetry::shutdown`]).

use std::time::Duration;

use anyhow::Context;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};

/// The service name when neither `OTEL_SERVICE_NAME` nor `OTEL_RESOURCE_ATTRIBUTES`
/// gives one.
pub const DEFAULT_SERVICE_NAME: &str = "cairn";

/// How long the last spans may take to leave at shutdown.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// What the `OTEL_*` environment asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TraceExport {
    /// No endpoint, or turned off.
    Off,
    /// Export over OTLP/gRPC to this endpoint.
    Otlp { endpoint: String },
}

impl TraceExport {
    /// Reads the decision from `variable` (the process environment, in production).
    pub fn from_variables(variable: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let set = |name: &str| variable(name).filter(|value| !value.trim().is_empty());
        if set("OTEL_SDK_DISABLED").is_some_and(|value| value.trim().eq_ignore_ascii_case("true")) {
            return Ok(Self::Off);
        }
        match set("OTEL_TRACES_EXPORTER").map(|value| value.trim().to_ascii_lowercase()) {
            None => {}
            Some(exporter) if exporter == "otlp" => {}
            Some(exporter) if exporter == "none" => return Ok(Self::Off),
            Some(exporter) => anyhow::bail!(
                "OTEL_TRACES_EXPORTER={exporter:?} is not supported: cairn exports traces with \
                 `otlp` (over gRPC) or not at all (`none`)"
            ),
        }
        let Some(endpoint) = set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .or_else(|| set("OTEL_EXPORTER_OTLP_ENDPOINT"))
        else {
            return Ok(Self::Off);
        };
        for name in [
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ] {
            if let Some(protocol) = set(name)
                && protocol.trim() != "grpc"
            {
                anyhow::bail!(
                    "{name}={protocol:?} is not supported: cairn exports traces over OTLP/gRPC \
                     (`grpc`), e.g. to a collector at http://localhost:4317"
                );
            }
        }
        Ok(Self::Otlp {
            endpoint: endpoint.trim().to_owned(),
        })
    }
}

/// The installed trace pipeline, if any. Keep it until the server has stopped, then
/// call [`Telemetry::shutdown`].
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
    endpoint: Option<String>,
}

impl Telemetry {
    /// Sets up the OTLP exporter when the environment asks for one. Must run inside
    /// the tokio runtime (the gRPC channel lives there). Also switches on the spans that
    /// follow events (`cairn_store::trace`).
    pub fn from_env() -> anyhow::Result<Self> {
        let TraceExport::Otlp { endpoint } =
            TraceExport::from_variables(|name| std::env::var(name).ok())?
        else {
            return Ok(Self::default());
        };
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint.clone())
            .build()
            .with_context(|| format!("cannot set up the OTLP trace exporter for {endpoint}"))?;
        // The sampler the `OTEL_TRACES_SAMPLER(_ARG)` variables configure, as the SDK
        // reads them: requests are sampled with it before their span is made, and the
        // exporter's copy keeps the request spans that were (`cairn_server::trace`).
        let sampler = opentelemetry_sdk::trace::Config::default().sampler;
        cairn_server::trace::set_request_sampler(Some(sampler.clone()));
        let provider = SdkTracerProvider::builder()
            .with_sampler(cairn_server::trace::PreSampledRequests::new(sampler))
            .with_batch_exporter(exporter)
            .with_resource(resource())
            .build();
        cairn_store::trace::set_enabled(true);
        Ok(Self {
            provider: Some(provider),
            endpoint: Some(redacted(&endpoint)),
        })
    }

    /// The tracer for the `tracing-opentelemetry` layer; `None` when traces are off.
    pub fn tracer(&self) -> Option<SdkTracer> {
        self.provider
            .as_ref()
            .map(|provider| provider.tracer(env!("CARGO_PKG_NAME")))
    }

    /// The endpoint traces go to (without any credentials in it), when on.
    pub fn endpoint(&self) -> Option<&str> {
        self.endpoint.as_deref()
    }

    /// Exports the spans still buffered and stops the exporter (for at most a few
    /// seconds: an unreachable collector does not hold up the shutdown).
    pub async fn shutdown(mut self) {
        let Some(provider) = self.provider.take() else {
            return;
        };
        cairn_store::trace::set_enabled(false);
        cairn_server::trace::set_request_sampler(None);
        let stopped =
            tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT))
                .await;
        match stopped {
            Ok(Ok(())) => tracing::debug!("trace exporter flushed and stopped"),
            Ok(Err(error)) => tracing::warn!(%error, "the trace exporter did not stop cleanly"),
            Err(error) => tracing::warn!(%error, "stopping the trace exporter panicked"),
        }
    }
}

/// A return that skipped [`Telemetry::shutdown`] (a failure, a second signal) still
/// exports what is buffered, blocking this worker thread for at most a few seconds.
impl Drop for Telemetry {
    fn drop(&mut self) {
        let Some(provider) = self.provider.take() else {
            return;
        };
        cairn_store::trace::set_enabled(false);
        let on_multi_thread_runtime = tokio::runtime::Handle::try_current().is_ok_and(|handle| {
            handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread
        });
        let stop = move || provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT);
        let _ = if on_multi_thread_runtime {
            tokio::task::block_in_place(stop)
        } else {
            stop()
        };
    }
}

/// `service.name` from `OTEL_SERVICE_NAME` or `OTEL_RESOURCE_ATTRIBUTES`, else `cairn`;
/// `service.version` is this build's.
fn resource() -> Resource {
    let named = std::env::var("OTEL_SERVICE_NAME").is_ok_and(|name| !name.trim().is_empty())
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES")
            .is_ok_and(|attributes| attributes.contains("service.name="));
    let builder = Resource::builder().with_attribute(opentelemetry::KeyValue::new(
        "service.version",
        env!("CARGO_PKG_VERSION"),
    ));
    if named {
        builder.build()
    } else {
        builder.with_service_name(DEFAULT_SERVICE_NAME).build()
    }
}

/// The endpoint without a user or password, for the log.
fn redacted(endpoint: &str) -> String {
    match reqwest::Url::parse(endpoint) {
        Ok(mut url) => {
            let _ = url.set_username("");
            let _ = url.set_password(None);
            url.to_string()
        }
        Err(_) => "(unparsable endpoint)".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decide(variables: &[(&str, &str)]) -> anyhow::Result<TraceExport> {
        TraceExport::from_variables(|name| {
            variables
                .iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| (*value).to_owned())
        })
    }

    #[test]
    fn traces_are_off_without_an_endpoint() {
        assert_eq!(decide(&[]).unwrap(), TraceExport::Off);
        assert_eq!(
            decide(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")]).unwrap(),
            TraceExport::Off
        );
        assert_eq!(
            decide(&[("OTEL_SERVICE_NAME", "x")]).unwrap(),
            TraceExport::Off
        );
    }

    #[test]
    fn an_endpoint_turns_traces_on_and_the_traces_endpoint_wins() {
        assert_eq!(
            decide(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4317")]).unwrap(),
            TraceExport::Otlp {
                endpoint: "http://a:4317".into()
            }
        );
        assert_eq!(
            decide(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4317"),
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://b:4317"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
                ("OTEL_TRACES_EXPORTER", "otlp"),
            ])
            .unwrap(),
            TraceExport::Otlp {
                endpoint: "http://b:4317".into()
            }
        );
    }

    #[test]
    fn the_sdk_can_be_disabled() {
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4317");
        for off in [
            ("OTEL_SDK_DISABLED", "true"),
            ("OTEL_SDK_DISABLED", "TRUE"),
            ("OTEL_TRACES_EXPORTER", "none"),
        ] {
            assert_eq!(
                decide(&[endpoint, off]).unwrap(),
                TraceExport::Off,
                "{off:?}"
            );
        }
        assert_ne!(
            decide(&[endpoint, ("OTEL_SDK_DISABLED", "false")]).unwrap(),
            TraceExport::Off
        );
    }

    #[test]
    fn unsupported_exporters_and_protocols_are_refused() {
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4317");
        let error = decide(&[endpoint, ("OTEL_TRACES_EXPORTER", "zipkin")]).unwrap_err();
        assert!(error.to_string().contains("zipkin"), "{error}");
        let error =
            decide(&[endpoint, ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")]).unwrap_err();
        assert!(error.to_string().contains("grpc"), "{error}");
    }

    #[test]
    fn the_logged_endpoint_has_no_credentials() {
        assert_eq!(
            redacted("http://user:secret@collector:4317"),
            "http://collector:4317/"
        );
    }
}
