//! Query plans: full scans and sorts without an index flagged with the index that
//! avoids them, strict plans, `plan()`, the slow-query log and per-query and
//! per-statement metrics.
//!
//! Logs and metrics are caught by one process-wide subscriber and recorder (installed
//! by the first test that needs them); each test looks only at its own names.

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use cairn_projection::{
    PlanSubject, PlanWarning, PlanWarningKind, ProjectionState, ReadSideError, metrics as m,
};
use cairn_store::SharedStore;
use cairn_store::sqlite::{SqliteOptions, SqliteStore};
use serde_json::Value as Json;

use crate::read_models::ORDERS;
use crate::{Ev, Harness, params_map, start_read_side};

const ORDERS_INDEX: &str =
    "CREATE INDEX IF NOT EXISTS orders_by_customer_id ON orders (customer, id)";

/// [`ORDERS`] with one more `setup` statement.
fn orders_with_setup(extra: &str) -> String {
    let with = ORDERS.replace("status TEXT)\"]", &format!("status TEXT)\", \"{extra}\"]"));
    assert_ne!(with, ORDERS, "the setup was found");
    with
}

fn only(warnings: &[PlanWarning]) -> &PlanWarning {
    assert_eq!(warnings.len(), 1, "one warning: {warnings:#?}");
    &warnings[0]
}

#[tokio::test]
async fn a_full_scan_query_is_flagged_with_the_right_index() {
    let logs = logs();
    let harness = Harness::start(ORDERS).await;
    let status = harness
        .read_side
        .query_status("orders_by_customer")
        .unwrap();
    let warning = only(&status.plan_warnings).clone();
    assert_eq!(
        warning.subject,
        PlanSubject::Query {
            name: "orders_by_customer".into()
        }
    );
    assert_eq!(warning.kind, PlanWarningKind::FullScan);
    assert_eq!(warning.table, "orders");
    assert_eq!(warning.columns, ["customer", "id"]);
    assert_eq!(warning.suggestion.as_deref(), Some(ORDERS_INDEX));
    assert!(
        warning
            .message
            .starts_with("query orders_by_customer reads every row of table orders (SCAN orders")
    );
    assert_eq!(status.plan_error, None);
    // The projection's statements search by primary key or only insert.
    let projection = harness.read_side.projection("orders").await.unwrap();
    assert_eq!(projection.plan_warnings, []);
    assert_eq!(harness.read_side.queries(), [status]);

    // Logged once at start, with its parts as fields.
    let logged: Vec<Json> = logs
        .lines("cairn::plans")
        .into_iter()
        .filter(|line| line["fields"]["subject"] == "query orders_by_customer")
        .collect();
    assert!(!logged.is_empty(), "the warning is logged");
    let fields = &logged[0]["fields"];
    assert_eq!(logged[0]["level"], "WARN");
    assert_eq!(fields["kind"], "full_scan");
    assert_eq!(fields["table"], "orders");
    assert_eq!(fields["suggestion"], ORDERS_INDEX);
    assert_eq!(fields["message"], Json::from(warning.message.clone()));
    harness.read_side.shutdown().await;
}

#[tokio::test]
async fn the_suggested_index_in_setup_clears_the_warning() {
    // A new read model runs its setup: no warning from the start.
    let fresh = Harness::start(&orders_with_setup(ORDERS_INDEX)).await;
    let status = fresh.read_side.query_status("orders_by_customer").unwrap();
    assert_eq!(status.plan_warnings, []);
    let plan = fresh
        .read_side
        .plan(
            "orders_by_customer",
            &params_map(&[("customer", "c1")]),
            false,
        )
        .await
        .unwrap();
    assert!(
        plan.text
            .contains("SEARCH orders USING INDEX orders_by_customer_id (customer=?)"),
        "{}",
        plan.text
    );
    fresh.read_side.shutdown().await;

    // An existing one runs it again on rebuild, which checks every plan again.
    let mut harness = Harness::start(ORDERS).await;
    harness
        .append(&[Ev(
            "order-1",
            "OrderPlaced",
            r#"{"id": "o1", "customer": "c1", "total": 3}"#,
        )])
        .await;
    harness.settle("orders").await;
    harness
        .reopen(&orders_with_setup(ORDERS_INDEX))
        .await
        .unwrap();
    let before = harness
        .read_side
        .query_status("orders_by_customer")
        .unwrap();
    assert_eq!(
        only(&before.plan_warnings).suggestion.as_deref(),
        Some(ORDERS_INDEX),
        "setup has not run again yet"
    );
    harness.read_side.rebuild("orders").await.unwrap();
    let after = harness
        .read_side
        .query_status("orders_by_customer")
        .unwrap();
    assert_eq!(after.plan_warnings, []);
    let status = harness.settle("orders").await;
    assert_eq!(status.state, ProjectionState::Running);
    let rows = harness
        .query("orders_by_customer", &[("customer", "c1")])
        .await;
    assert_eq!(rows.rows.len(), 1);
    harness.read_side.shutdown().await;
}

const UNINDEXED: &str = r#"
[[projections]]
name = "parcels"
setup = ["CREATE TABLE parcels (id TEXT PRIMARY KEY, tracking TEXT, state TEXT, weight INTEGER)"]
[projections.on]
ParcelSent = ["INSERT INTO parcels VALUES (:data.id, :data.tracking, 'sent', :data.weight)"]
ParcelDelivered = [
  "UPDATE parcels SET state = 'delivered' WHERE id = :data.id",
  "UPDATE parcels SET state = 'delivered' WHERE tracking = :data.tracking",
]

[[queries]]
name = "heaviest"
sql = "SELECT id, weight FROM parcels WHERE state = :state ORDER BY weight DESC LIMIT 10"
params = { state = "text" }
"#;

#[tokio::test]
async fn a_projection_statement_on_an_unindexed_column_is_flagged() {
    let harness = Harness::start(UNINDEXED).await;
    let status = harness.read_side.projection("parcels").await.unwrap();
    let warning = only(&status.plan_warnings);
    assert_eq!(
        warning.subject,
        PlanSubject::Statement {
            projection: "parcels".into(),
            event_type: "ParcelDelivered".into(),
            index: 2,
        }
    );
    assert_eq!(warning.kind, PlanWarningKind::FullScan);
    assert_eq!(warning.detail, "SCAN parcels");
    assert_eq!(warning.columns, ["tracking"]);
    assert_eq!(
        warning.suggestion.as_deref(),
        Some("CREATE INDEX IF NOT EXISTS parcels_by_tracking ON parcels (tracking)")
    );
    assert!(
        warning.message.starts_with(
            "projection parcels, on.ParcelDelivered statement 2 reads every row of table parcels"
        ),
        "{}",
        warning.message
    );
    harness.read_side.shutdown().await;
}

#[tokio::test]
async fn a_sort_without_an_index_is_flagged() {
    let config = UNINDEXED.replace(
        "weight INTEGER)\"]",
        "weight INTEGER)\", \"CREATE INDEX parcels_by_state ON parcels (state)\"]",
    );
    let harness = Harness::start(&config).await;
    let status = harness.read_side.query_status("heaviest").unwrap();
    assert_eq!(status.params, ["state"]);
    let warning = only(&status.plan_warnings);
    assert_eq!(warning.kind, PlanWarningKind::SortWithoutIndex);
    assert_eq!(warning.detail, "USE TEMP B-TREE FOR ORDER BY");
    assert_eq!(warning.columns, ["state", "weight"]);
    assert_eq!(
        warning.suggestion.as_deref(),
        Some("CREATE INDEX IF NOT EXISTS parcels_by_state_weight ON parcels (state, weight)")
    );
    assert!(warning.message.contains("sorts rows of table parcels"));
    harness.read_side.shutdown().await;
}

#[tokio::test]
async fn strict_plans_refuse_to_start_and_list_every_warning() {
    let dir = tempfile::tempdir().unwrap();
    let store: SharedStore = Arc::new(SqliteStore::open(SqliteOptions::new(dir.path())).unwrap());
    let refused = start_read_side(&store, &dir, UNINDEXED, |options| {
        options.strict_plans = true;
    })
    .await;
    let message = match refused {
        Err(ReadSideError::Config(message)) => message,
        Err(other) => panic!("expected a configuration error, got {other}"),
        Ok(_) => panic!("strict plans let a full scan start"),
    };
    assert!(
        message.starts_with("strict plans: 2 plan warnings"),
        "{message}"
    );
    assert!(
        message.contains("CREATE INDEX IF NOT EXISTS parcels_by_tracking ON parcels (tracking)"),
        "{message}"
    );
    assert!(
        message.contains(
            "CREATE INDEX IF NOT EXISTS parcels_by_state_weight ON parcels (state, weight)"
        ),
        "{message}"
    );
    // Nothing is left holding the data directory; without strict plans it starts.
    let read_side = start_read_side(&store, &dir, UNINDEXED, |_| {})
        .await
        .unwrap();
    read_side.shutdown().await;

    // With the indexes in setup, strict plans start (a new read model runs setup).
    let indexed = UNINDEXED.replace(
        "weight INTEGER)\"]",
        "weight INTEGER)\", \"CREATE INDEX IF NOT EXISTS parcels_by_tracking ON parcels (tracking)\", \
         \"CREATE INDEX IF NOT EXISTS parcels_by_state_weight ON parcels (state, weight)\"]",
    );
    let harness = Harness::start_with(&indexed, |options| options.strict_plans = true).await;
    assert_eq!(harness.read_side.projections().await[0].plan_warnings, []);
    harness.read_side.shutdown().await;
}

#[tokio::test]
async fn plan_answers_rows_and_text_and_with_analyze_what_the_run_returned() {
    let harness = Harness::start(ORDERS).await;
    harness
        .append(&[
            Ev(
                "order-1",
                "OrderPlaced",
                r#"{"id": "o1", "customer": "c1", "total": 3}"#,
            ),
            Ev(
                "order-2",
                "OrderPlaced",
                r#"{"id": "o2", "customer": "c1", "total": 4}"#,
            ),
            Ev(
                "order-3",
                "OrderPlaced",
                r#"{"id": "o3", "customer": "c2", "total": 5}"#,
            ),
        ])
        .await;
    harness.settle("orders").await;
    let params = params_map(&[("customer", "c1")]);
    let plan = harness
        .read_side
        .plan("orders_by_customer", &params, false)
        .await
        .unwrap();
    assert_eq!(plan.query, "orders_by_customer");
    assert_eq!(
        plan.sql,
        "SELECT id, total, status FROM orders WHERE customer = ?1 ORDER BY id LIMIT ?2"
    );
    assert_eq!(plan.rows.len(), 1, "{:?}", plan.rows);
    assert!(plan.rows[0].detail.starts_with("SCAN orders"));
    assert_eq!(plan.text, format!("QUERY PLAN\n`--{}", plan.rows[0].detail));
    assert_eq!(
        only(&plan.warnings).suggestion.as_deref(),
        Some(ORDERS_INDEX)
    );
    assert_eq!(plan.analysis, None);
    // A required parameter may be left out of a plan: values do not change it.
    let without = harness
        .read_side
        .plan("orders_by_customer", &HashMap::new(), false)
        .await
        .unwrap();
    assert_eq!(without.rows, plan.rows);

    let analyzed = harness
        .read_side
        .plan("orders_by_customer", &params, true)
        .await
        .unwrap();
    let analysis = analyzed.analysis.expect("analyze runs the query");
    assert_eq!(analysis.rows_returned, 2);
    let report = analyzed.to_string();
    assert!(report.starts_with("QUERY PLAN\n`--SCAN orders"), "{report}");
    assert!(report.contains(" ms, 2 rows returned"), "{report}");
    assert!(
        report.contains("\nwarning: query orders_by_customer reads every row"),
        "{report}"
    );
    // Running it needs every parameter; a plan is not a call.
    let missing = harness
        .read_side
        .plan("orders_by_customer", &HashMap::new(), true)
        .await;
    assert!(
        matches!(missing, Err(ReadSideError::InvalidParameter { ref name, .. }) if name == "customer")
    );
    assert!(matches!(
        harness.read_side.plan("nope", &HashMap::new(), false).await,
        Err(ReadSideError::QueryNotFound(_))
    ));
    assert_eq!(
        harness
            .read_side
            .query_status("orders_by_customer")
            .unwrap()
            .calls,
        0
    );
    harness.read_side.shutdown().await;
}

const SLOW: &str = r#"
[[projections]]
name = "slowpoke"
setup = ["CREATE TABLE slowpoke (id TEXT PRIMARY KEY, secret TEXT)"]
[projections.on]
Hidden = ["INSERT INTO slowpoke VALUES (:data.id, :data.secret)"]

[[queries]]
name = "slowpoke_by_secret"
sql = "SELECT id FROM slowpoke WHERE secret = :secret"
params = { secret = "text" }
"#;

#[tokio::test]
async fn slow_queries_and_statements_are_logged_with_names_never_values() {
    let logs = logs();
    let harness = Harness::start_with(SLOW, |options| {
        options.slow_query_threshold = Duration::ZERO;
    })
    .await;
    harness
        .append(&[Ev(
            "thing-1",
            "Hidden",
            r#"{"id": "i1", "secret": "hunter2-statement"}"#,
        )])
        .await;
    harness.settle("slowpoke").await;
    let result = harness
        .query("slowpoke_by_secret", &[("secret", "hunter2-query")])
        .await;
    assert_eq!(result.rows.len(), 0);

    let lines = logs.lines("cairn::slow_query");
    let query = lines
        .iter()
        .find(|line| line["fields"]["query"] == "slowpoke_by_secret")
        .expect("a slow-query line");
    let fields = &query["fields"];
    assert_eq!(query["level"], "WARN");
    assert_eq!(fields["message"], "slow query");
    assert_eq!(fields["params"], r#"["secret"]"#);
    assert!(fields["duration_ms"].as_f64().is_some(), "{query}");
    assert_eq!(fields["plan"], "SCAN slowpoke");
    let statement = lines
        .iter()
        .find(|line| line["fields"]["projection"] == "slowpoke")
        .expect("a slow-statement line");
    let fields = &statement["fields"];
    assert_eq!(fields["message"], "slow projection statement");
    assert_eq!(fields["event_type"], "Hidden");
    assert_eq!(fields["statement"], 1);
    assert_eq!(fields["params"], r#"["data.id", "data.secret"]"#);
    assert!(fields["duration_ms"].as_f64().is_some());
    assert_eq!(fields["plan"], "(no table is read)");
    let everything = logs.text();
    assert!(!everything.contains("hunter2"), "a value was logged");
    assert_eq!(
        harness
            .read_side
            .query_status("slowpoke_by_secret")
            .unwrap()
            .slow,
        1
    );
    harness.read_side.shutdown().await;
}

const METERED: &str = r#"
[[projections]]
name = "metered"
setup = ["CREATE TABLE metered (id TEXT PRIMARY KEY)"]
[projections.on]
Tick = ["INSERT INTO metered VALUES (:data.id)"]

[[queries]]
name = "metered_ids"
sql = "SELECT id FROM metered WHERE id >= :from ORDER BY id"
params = { from = "text" }
"#;

#[tokio::test]
async fn per_query_and_per_statement_metrics_are_recorded() {
    let recorder = recorder();
    let harness = Harness::start(METERED).await;
    harness
        .append(&[
            Ev("tick-1", "Tick", r#"{"id": "a"}"#),
            Ev("tick-1", "Tick", r#"{"id": "b"}"#),
        ])
        .await;
    harness.settle("metered").await;
    let first = harness.query("metered_ids", &[("from", "a")]).await;
    let second = harness.query("metered_ids", &[("from", "a")]).await;
    assert_eq!((first.cached, second.cached), (false, true));
    assert_eq!(first.rows.len(), 2);
    let refused = harness
        .try_query("metered_ids", &[("nope", "1")], None, Duration::ZERO)
        .await;
    assert!(refused.is_err());

    let status = harness.read_side.query_status("metered_ids").unwrap();
    assert_eq!(
        (
            status.calls,
            status.errors,
            status.rows,
            status.cache_hits,
            status.cache_misses
        ),
        (3, 1, 4, 1, 1)
    );
    assert_eq!(status.cache_hit_ratio(), Some(0.5));
    let query = r#"{query="metered_ids"}"#;
    assert_eq!(recorder.counter(&format!("{}{query}", m::QUERY_CALLS)), 3);
    assert_eq!(recorder.counter(&format!("{}{query}", m::QUERY_ERRORS)), 1);
    assert_eq!(recorder.counter(&format!("{}{query}", m::QUERY_ROWS)), 4);
    assert_eq!(
        recorder.counter(&format!("{}{query}", m::QUERY_CACHE_HITS)),
        1
    );
    assert_eq!(
        recorder.counter(&format!("{}{query}", m::QUERY_CACHE_MISSES)),
        1
    );
    assert_eq!(
        recorder.histogram(&format!("{}{query}", m::QUERY_DURATION_SECONDS)),
        2
    );
    let tick = r#"{event_type="Tick",projection="metered"}"#;
    assert_eq!(
        recorder.histogram(&format!(
            "{}{tick}",
            m::PROJECTION_STATEMENT_DURATION_SECONDS
        )),
        2
    );
    assert_eq!(
        recorder.counter(&format!("{}{tick}", m::PROJECTION_STATEMENT_ERRORS)),
        0
    );

    // A failing statement is counted against its event type.
    harness
        .append(&[Ev("tick-1", "Tick", r#"{"id": "a"}"#)])
        .await;
    let failed = harness.settle("metered").await;
    assert_eq!(failed.state, ProjectionState::Failed);
    assert_eq!(
        recorder.counter(&format!("{}{tick}", m::PROJECTION_STATEMENT_ERRORS)),
        1
    );
    assert!(
        m::HISTOGRAMS
            .iter()
            .any(|(name, _)| *name == m::PROJECTION_STATEMENT_DURATION_SECONDS)
    );
    harness.read_side.shutdown().await;
}

#[tokio::test]
async fn a_query_that_cannot_be_planned_says_why() {
    let config = format!(
        "{UNINDEXED}\n[[queries]]\nname = \"elsewhere\"\nsql = \"SELECT * FROM not_yet_created\"\n"
    );
    let harness = Harness::start(&config).await;
    let status = harness.read_side.query_status("elsewhere").unwrap();
    assert_eq!(status.plan_warnings, []);
    let error = status.plan_error.expect("no plan");
    assert!(error.contains("no such table: not_yet_created"), "{error}");
    assert!(matches!(
        harness.read_side.query_status("nope"),
        Err(ReadSideError::QueryNotFound(_))
    ));
    harness.read_side.shutdown().await;
}

/// JSON log lines of the `cairn::plans` and `cairn::slow_query` targets, from every
/// test of this binary.
pub struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    pub fn lines(&self, target: &str) -> Vec<Json> {
        self.text()
            .lines()
            .filter_map(|line| serde_json::from_str::<Json>(line).ok())
            .filter(|line| line["target"] == target)
            .collect()
    }
}

struct BufferWriter(Arc<Mutex<Vec<u8>>>);

impl Write for BufferWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub fn logs() -> Logs {
    static BUFFER: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    let buffer = BUFFER.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let writer = Arc::clone(&buffer);
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_env_filter("cairn::plans=warn,cairn::slow_query=warn")
            .with_writer(move || BufferWriter(Arc::clone(&writer)))
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("one log subscriber");
        buffer
    });
    Logs(Arc::clone(buffer))
}

/// A recorder that keeps counters and histogram sample counts by
/// `name{label="value",…}` (labels sorted).
#[derive(Clone, Default)]
pub struct TestRecorder {
    counters: Arc<Mutex<HashMap<String, Arc<AtomicU64>>>>,
    histograms: Arc<Mutex<HashMap<String, Arc<SampleCount>>>>,
}

#[derive(Default)]
struct SampleCount(AtomicU64);

impl metrics::HistogramFn for SampleCount {
    fn record(&self, _value: f64) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

fn render_key(key: &metrics::Key) -> String {
    let mut labels: Vec<String> = key
        .labels()
        .map(|label| format!("{}={:?}", label.key(), label.value()))
        .collect();
    labels.sort();
    format!("{}{{{}}}", key.name(), labels.join(","))
}

impl TestRecorder {
    pub fn counter(&self, key: &str) -> u64 {
        self.counters
            .lock()
            .unwrap()
            .get(key)
            .map_or(0, |counter| counter.load(Ordering::Relaxed))
    }

    pub fn histogram(&self, key: &str) -> u64 {
        self.histograms
            .lock()
            .unwrap()
            .get(key)
            .map_or(0, |samples| samples.0.load(Ordering::Relaxed))
    }
}

impl metrics::Recorder for TestRecorder {
    fn describe_counter(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_gauge(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_histogram(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }

    fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        let counter = Arc::clone(
            self.counters
                .lock()
                .unwrap()
                .entry(render_key(key))
                .or_default(),
        );
        metrics::Counter::from_arc(counter)
    }

    fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::noop()
    }

    fn register_histogram(
        &self,
        key: &metrics::Key,
        _: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        let samples = Arc::clone(
            self.histograms
                .lock()
                .unwrap()
                .entry(render_key(key))
                .or_default(),
        );
        metrics::Histogram::from_arc(samples)
    }
}

pub fn recorder() -> &'static TestRecorder {
    static RECORDER: OnceLock<TestRecorder> = OnceLock::new();
    RECORDER.get_or_init(|| {
        let recorder = TestRecorder::default();
        metrics::set_global_recorder(recorder.clone()).expect("one metrics recorder");
        recorder
    })
}
