//! A minimal OTLP/gRPC trace receiver for measuring the cost of tracing: it accepts
//! every export, counts the spans and prints the totals once a second. Start it, point
//! `cairn serve` at it with `OTEL_EXPORTER_OTLP_ENDPOINT`, and load the server with
//! `cairn bench` (see BENCHMARKS.md, "Tracing overhead").
//!
//!     cargo run --release -p cairn --example otlp_sink -- 127.0.0.1:4317

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};

#[derive(Default, Clone)]
struct Counts {
    exports: Arc<AtomicU64>,
    spans: Arc<AtomicU64>,
}

#[tonic::async_trait]
impl TraceService for Counts {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let spans: usize = request
            .into_inner()
            .resource_spans
            .iter()
            .flat_map(|resource| &resource.scope_spans)
            .map(|scope| scope.spans.len())
            .sum();
        self.exports.fetch_add(1, Ordering::Relaxed);
        self.spans.fetch_add(spans as u64, Ordering::Relaxed);
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let address = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:4317".to_owned());
    let listener = tokio::net::TcpListener::bind(&address).await?;
    eprintln!("otlp_sink: listening on {}", listener.local_addr()?);
    let counts = Counts::default();
    let report = counts.clone();
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(Duration::from_secs(1));
        let mut last = 0;
        loop {
            ticks.tick().await;
            let spans = report.spans.load(Ordering::Relaxed);
            if spans != last {
                eprintln!(
                    "otlp_sink: {} exports, {spans} spans",
                    report.exports.load(Ordering::Relaxed)
                );
                last = spans;
            }
        }
    });
    tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(counts))
        .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
        .await?;
    Ok(())
}
