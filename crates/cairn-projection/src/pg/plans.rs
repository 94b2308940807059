//! Plans on PostgreSQL: `EXPLAIN (FORMAT JSON)` read for the same two warnings as on
//! SQLite, a full scan of a read-model table and a sort without an index.
//!
//! PostgreSQL picks a plan by cost, and on a small table a sequential scan and a sort
//! cost less than any index: a plan taken as it comes would warn about every fresh
//! read model, and keep warning after the suggested index is added. So the check plans
//! each statement the way an index-hungry production database would, and the way
//! SQLite's plans are value-independent:
//!
//! - `enable_seqscan = off` and `enable_sort = off` (in a transaction rolled back
//!   afterwards): PostgreSQL still scans or sorts when no index can serve, so what
//!   remains is a *missing* index, not a small table;
//! - a generic plan (`PREPARE`, `plan_cache_mode = force_generic_plan`, `EXPLAIN
//!   EXECUTE` with `NULL` arguments): parameters stay unknown instead of being folded
//!   in as constants (`id = NULL` would plan as "no rows" and hide the scan).
//!
//! A `Seq Scan` of a read-model table, or an `Index Scan`/`Index Only Scan` with no
//! `Index Cond` (every row, in index order), is a full scan; a `Sort` or `Incremental
//! Sort` above one is a sort without an index (for `GROUP BY` when it feeds an
//! `Aggregate` or `Group`). The plan shown on demand (`plan_query`) is the one
//! PostgreSQL really uses for the given values, with `ANALYZE` when asked; its
//! warnings are the check's.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::Value as Json;
use tokio_postgres::GenericClient;

use super::values::{TextParam, as_params, param_text};
use super::{PgReadModels, describe};
use crate::config::{CompiledQuery, ParamValue, ProjectionPlan};
use crate::error::ReadSideError;
use crate::plans::{
    Finding, PlanAnalysis, PlanChecks, PlanRow, PlanSubject, PlanWarning, QueryPlan, Sort,
    one_line, render, warnings_for,
};
use crate::query::PlanCheck;
use crate::shape::{Schema, Shape, Table};

/// Names of the statements `explain_generic` prepares, never reused.
static PREPARED: AtomicU64 = AtomicU64::new(0);

/// The read-model tables of the schema (`search_path`), Cairn's own left out.
async fn load_schema(client: &impl GenericClient) -> Result<Schema, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT c.table_name::TEXT, c.column_name::TEXT
             FROM information_schema.columns c
             JOIN information_schema.tables t
               ON t.table_schema = c.table_schema AND t.table_name = c.table_name
             WHERE c.table_schema = current_schema() AND t.table_type = 'BASE TABLE'
               AND c.table_name NOT LIKE 'cairn\\_%'
             ORDER BY c.table_name, c.ordinal_position",
            &[],
        )
        .await?;
    let mut tables: BTreeMap<String, Table> = BTreeMap::new();
    for row in rows {
        let table: String = row.get(0);
        let column: String = row.get(1);
        tables
            .entry(table.to_ascii_lowercase())
            .or_insert_with(|| Table {
                name: table.clone(),
                columns: Vec::new(),
            })
            .columns
            .push(column);
    }
    Ok(Schema { tables })
}

/// The generic plan of `sql` (with `parameters` parameters) with sequential scans and
/// sorts discouraged, as JSON.
async fn explain_generic(
    client: &mut deadpool_postgres::Client,
    sql: &str,
    parameters: usize,
) -> Result<Json, tokio_postgres::Error> {
    let name = format!("cairn_plan_{}", PREPARED.fetch_add(1, Ordering::Relaxed));
    let planned = async {
        let transaction = client.transaction().await?;
        transaction
            .batch_execute(
                "SET LOCAL enable_seqscan = off; SET LOCAL enable_sort = off;
                 SET LOCAL plan_cache_mode = force_generic_plan",
            )
            .await?;
        transaction
            .batch_execute(&format!("PREPARE {name} AS {sql}"))
            .await?;
        let arguments = if parameters == 0 {
            String::new()
        } else {
            format!("({})", vec!["NULL"; parameters].join(", "))
        };
        let row = transaction
            .query_one(
                &format!("EXPLAIN (FORMAT JSON) EXECUTE {name}{arguments}"),
                &[],
            )
            .await?;
        let plan: Json = row.get(0);
        transaction.rollback().await?;
        Ok::<_, tokio_postgres::Error>(plan)
    }
    .await;
    // A prepared statement outlives its transaction.
    let _ = client.batch_execute(&format!("DEALLOCATE {name}")).await;
    planned
}

/// The plan of `sql` as PostgreSQL runs it with `params` (with `ANALYZE`: run).
async fn explain(
    client: &impl GenericClient,
    sql: &str,
    params: &[TextParam],
    analyze: bool,
) -> Result<Json, tokio_postgres::Error> {
    let options = if analyze {
        "ANALYZE, FORMAT JSON"
    } else {
        "FORMAT JSON"
    };
    let row = client
        .query_one(&format!("EXPLAIN ({options}) {sql}"), &as_params(params))
        .await?;
    Ok(row.get(0))
}

/// The plan on one line, or why there is none: what the slow-query log shows.
pub(crate) async fn one_line_plan(
    client: &impl GenericClient,
    sql: &str,
    params: &[TextParam],
) -> String {
    match explain(client, sql, params, false).await {
        Ok(plan) => one_line(&Flat::of(&plan, false).rows),
        Err(error) => format!("(no plan: {})", describe(&error)),
    }
}

/// Whether a query's plan writes (a `ModifyTable` node: `WITH … INSERT`, say).
pub(crate) async fn writes(
    client: &tokio_postgres::Client,
    sql: &str,
    parameters: usize,
) -> Result<bool, tokio_postgres::Error> {
    let plan = client
        .query_one(
            &format!("EXPLAIN (FORMAT JSON) {sql}"),
            &as_params(&vec![TextParam(None); parameters]),
        )
        .await?;
    let plan: Json = plan.get(0);
    Ok(Flat::of(&plan, false)
        .nodes
        .iter()
        .any(|node| node_type(node) == "ModifyTable"))
}

/// Plans every projection statement and every query (see the module's notes).
pub(crate) async fn check_all(
    read_models: &PgReadModels,
    projections: &[Arc<ProjectionPlan>],
    queries: &[CompiledQuery],
) -> Result<PlanChecks, ReadSideError> {
    let mut client = read_models.client().await?;
    let schema = load_schema(&**client).await.map_err(super::pg)?;
    let mut projection_warnings = Vec::with_capacity(projections.len());
    for plan in projections {
        let mut warnings = Vec::new();
        for event_type in plan.config.on.keys() {
            let Some(handler) = plan.handlers.get(event_type) else {
                continue;
            };
            for (index, statement) in handler.statements.iter().enumerate() {
                let subject = PlanSubject::Statement {
                    projection: plan.config.name.clone(),
                    event_type: event_type.clone(),
                    index: index + 1,
                };
                match check(
                    &mut client,
                    &schema,
                    &subject,
                    &statement.sql,
                    statement.fields.len(),
                )
                .await
                {
                    Ok(found) => warnings.extend(found),
                    Err(error) => {
                        tracing::debug!(target: "cairn::plans", %subject, error = %describe(&error), "statement cannot be planned yet");
                    }
                }
            }
        }
        projection_warnings.push(warnings);
    }
    let mut query_checks = Vec::with_capacity(queries.len());
    for query in queries {
        let subject = PlanSubject::Query {
            name: query.name.clone(),
        };
        let check = match check(
            &mut client,
            &schema,
            &subject,
            &query.sql,
            query.bound.len(),
        )
        .await
        {
            Ok(warnings) => PlanCheck {
                warnings,
                error: None,
            },
            Err(error) => PlanCheck {
                warnings: Vec::new(),
                error: Some(describe(&error)),
            },
        };
        query_checks.push(check);
    }
    Ok(PlanChecks {
        projections: projection_warnings,
        queries: query_checks,
    })
}

async fn check(
    client: &mut deadpool_postgres::Client,
    schema: &Schema,
    subject: &PlanSubject,
    sql: &str,
    parameters: usize,
) -> Result<Vec<PlanWarning>, tokio_postgres::Error> {
    let plan = explain_generic(client, sql, parameters).await?;
    Ok(warnings(subject, sql, &plan, schema))
}

/// The plan of a named query for `values`: rows and text as PostgreSQL runs it (with
/// `analyze`, run, with its time and row count), warnings as the check finds them.
pub(crate) async fn plan_query(
    read_models: &PgReadModels,
    query: &CompiledQuery,
    values: &[ParamValue],
    analyze: bool,
) -> Result<QueryPlan, ReadSideError> {
    let mut client = read_models.client().await?;
    let schema = load_schema(&**client).await.map_err(super::pg)?;
    let subject = PlanSubject::Query {
        name: query.name.clone(),
    };
    let warnings = check(
        &mut client,
        &schema,
        &subject,
        &query.sql,
        query.bound.len(),
    )
    .await
    .map_err(super::pg)?;
    let params: Vec<TextParam> = values.iter().map(param_text).collect();
    let transaction = client
        .build_transaction()
        .read_only(true)
        .start()
        .await
        .map_err(super::pg)?;
    let plan = explain(&*transaction, &query.sql, &params, analyze)
        .await
        .map_err(super::pg)?;
    transaction.commit().await.map_err(super::pg)?;
    let flat = Flat::of(&plan, analyze);
    let analysis = analyze.then(|| {
        let top = plan.get(0);
        let milliseconds = top
            .and_then(|top| top.get("Execution Time"))
            .and_then(Json::as_f64)
            .unwrap_or(0.0);
        let rows = top
            .and_then(|top| top.get("Plan"))
            .and_then(|node| node.get("Actual Rows"))
            .and_then(Json::as_f64)
            .unwrap_or(0.0);
        PlanAnalysis {
            duration: Duration::from_secs_f64(milliseconds.max(0.0) / 1000.0),
            rows_returned: rows.max(0.0) as usize,
        }
    });
    Ok(QueryPlan {
        query: query.name.clone(),
        sql: query.sql.to_string(),
        text: render(&flat.rows),
        rows: flat.rows,
        warnings,
        analysis,
    })
}

/// A plan tree as rows (id, parent, one line each), in depth-first order, with the
/// JSON node of each row.
struct Flat<'a> {
    rows: Vec<PlanRow>,
    nodes: Vec<&'a Json>,
    parents: Vec<Option<usize>>,
}

impl<'a> Flat<'a> {
    fn of(plan: &'a Json, analyzed: bool) -> Self {
        let mut flat = Flat {
            rows: Vec::new(),
            nodes: Vec::new(),
            parents: Vec::new(),
        };
        if let Some(top) = plan.get(0).and_then(|top| top.get("Plan")) {
            flat.walk(top, None, analyzed);
        }
        flat
    }

    fn walk(&mut self, node: &'a Json, parent: Option<usize>, analyzed: bool) {
        let index = self.rows.len();
        let parent_id = parent.map_or(0, |p| self.rows[p].id);
        self.rows.push(PlanRow {
            id: i64::try_from(index + 1).unwrap_or(i64::MAX),
            parent: parent_id,
            detail: detail(node, analyzed),
        });
        self.nodes.push(node);
        self.parents.push(parent);
        if let Some(children) = node.get("Plans").and_then(Json::as_array) {
            for child in children {
                self.walk(child, Some(index), analyzed);
            }
        }
    }

    /// The first read-model table scanned at or below row `index`.
    fn scanned_below(&self, index: usize, schema: &Schema) -> Option<String> {
        let mut stack = vec![index];
        let mut order = Vec::new();
        while let Some(at) = stack.pop() {
            order.push(at);
            let children: Vec<usize> = (0..self.nodes.len())
                .rev()
                .filter(|child| self.parents[*child] == Some(at))
                .collect();
            stack.extend(children);
        }
        order.into_iter().find_map(|at| {
            relation(self.nodes[at])
                .map(str::to_ascii_lowercase)
                .filter(|table| schema.table(table).is_some())
        })
    }
}

fn node_type(node: &Json) -> &str {
    node.get("Node Type").and_then(Json::as_str).unwrap_or("")
}

fn relation(node: &Json) -> Option<&str> {
    node.get("Relation Name").and_then(Json::as_str)
}

/// One line for a plan node: `Index Scan using i on orders o (Index Cond: …)`.
fn detail(node: &Json, analyzed: bool) -> String {
    let text = |key: &str| node.get(key).and_then(Json::as_str);
    let mut out = match (node_type(node), text("Operation")) {
        ("ModifyTable", Some(operation)) => operation.to_owned(),
        (kind, _) => kind.to_owned(),
    };
    if let Some(strategy) = text("Strategy").filter(|s| *s != "Plain") {
        out = format!("{out} ({strategy})");
    }
    if let Some(index) = text("Index Name") {
        out.push_str(" using ");
        out.push_str(index);
    }
    if let Some(table) = relation(node) {
        out.push_str(" on ");
        out.push_str(table);
        if let Some(alias) = text("Alias").filter(|alias| *alias != table) {
            out.push(' ');
            out.push_str(alias);
        }
    }
    let mut conditions = Vec::new();
    for key in [
        "Index Cond",
        "Recheck Cond",
        "Hash Cond",
        "Merge Cond",
        "Join Filter",
        "Filter",
    ] {
        if let Some(condition) = text(key) {
            conditions.push(format!("{key}: {condition}"));
        }
    }
    for key in ["Sort Key", "Presorted Key", "Group Key"] {
        if let Some(keys) = node.get(key).and_then(Json::as_array) {
            let keys: Vec<&str> = keys.iter().filter_map(Json::as_str).collect();
            conditions.push(format!("{key}: {}", keys.join(", ")));
        }
    }
    if analyzed {
        let number = |key: &str| node.get(key).and_then(Json::as_f64).unwrap_or(0.0);
        conditions.push(format!(
            "actual rows={} loops={}",
            number("Actual Rows"),
            number("Actual Loops")
        ));
    }
    if !conditions.is_empty() {
        out.push_str(" (");
        out.push_str(&conditions.join("; "));
        out.push(')');
    }
    out
}

/// The warnings a PostgreSQL plan calls for.
fn warnings(subject: &PlanSubject, sql: &str, plan: &Json, schema: &Schema) -> Vec<PlanWarning> {
    let flat = Flat::of(plan, false);
    let mut findings = Vec::new();
    for (row, node) in flat.nodes.iter().enumerate() {
        let kind = node_type(node);
        let table = relation(node)
            .map(str::to_ascii_lowercase)
            .filter(|table| schema.table(table).is_some());
        match (kind, table) {
            ("Seq Scan", Some(table)) => findings.push(Finding::FullScan { row, table }),
            ("Index Scan" | "Index Only Scan", Some(table)) if node.get("Index Cond").is_none() => {
                findings.push(Finding::FullScan { row, table });
            }
            ("Sort" | "Incremental Sort", _) => {
                let sort = match flat.parents[row].map(|parent| node_type(flat.nodes[parent])) {
                    Some("Aggregate" | "Group") => Sort::GroupBy,
                    _ => Sort::OrderBy,
                };
                if let Some(table) = flat.scanned_below(row, schema) {
                    findings.push(Finding::Sort { row, table, sort });
                }
            }
            _ => {}
        }
    }
    let shape = Shape::of(sql);
    warnings_for(subject, &shape, &flat.rows, &findings, schema)
        .into_iter()
        .map(|mut warning| {
            // PostgreSQL sorts in memory or on disk, not in SQLite's temporary B-tree.
            warning.message = warning.message.replace(" in a temporary B-tree", "");
            warning
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Schema {
        let mut tables = BTreeMap::new();
        tables.insert(
            "orders".to_owned(),
            Table {
                name: "orders".into(),
                columns: vec![
                    "id".into(),
                    "customer".into(),
                    "total".into(),
                    "status".into(),
                ],
            },
        );
        Schema { tables }
    }

    fn subject() -> PlanSubject {
        PlanSubject::Query { name: "q".into() }
    }

    #[test]
    fn an_index_scan_without_a_condition_is_a_full_scan() {
        let plan = json!([{"Plan": {"Node Type": "Limit", "Plans": [{
            "Node Type": "Index Scan", "Index Name": "orders_pkey", "Relation Name": "orders",
            "Alias": "orders", "Filter": "(customer = $1)"}]}}]);
        let sql = "SELECT id, total, status FROM orders WHERE customer = $1 ORDER BY id LIMIT $2";
        let found = warnings(&subject(), sql, &plan, &schema());
        assert_eq!(found.len(), 1, "{found:#?}");
        assert_eq!(
            found[0].suggestion.as_deref(),
            Some("CREATE INDEX IF NOT EXISTS orders_by_customer_id ON orders (customer, id)")
        );
        assert_eq!(
            found[0].detail,
            "Index Scan using orders_pkey on orders (Filter: (customer = $1))"
        );
        let searched = json!([{"Plan": {"Node Type": "Index Scan", "Index Name": "orders_by_customer_id",
            "Relation Name": "orders", "Alias": "orders", "Index Cond": "(customer = $1)"}}]);
        assert_eq!(warnings(&subject(), sql, &searched, &schema()), []);
    }

    #[test]
    fn a_sort_above_a_search_and_a_seq_scan_with_a_sort_said_once() {
        let sql = "SELECT id FROM orders WHERE customer = $1 ORDER BY total DESC";
        let sorted = json!([{"Plan": {"Node Type": "Sort", "Sort Key": ["total DESC"], "Plans": [{
            "Node Type": "Index Scan", "Index Name": "orders_by_customer", "Relation Name": "orders",
            "Index Cond": "(customer = $1)"}]}}]);
        let found = warnings(&subject(), sql, &sorted, &schema());
        assert_eq!(found.len(), 1, "{found:#?}");
        assert_eq!(found[0].kind, crate::PlanWarningKind::SortWithoutIndex);
        assert_eq!(found[0].columns, ["customer", "total"]);
        assert!(!found[0].message.contains("B-tree"), "{}", found[0].message);
        let scanned = json!([{"Plan": {"Node Type": "Sort", "Plans": [{
            "Node Type": "Seq Scan", "Relation Name": "orders", "Filter": "(customer = $1)"}]}}]);
        let found = warnings(&subject(), sql, &scanned, &schema());
        assert_eq!(found.len(), 1, "{found:#?}");
        assert_eq!(found[0].kind, crate::PlanWarningKind::FullScan);
        // Not a read-model table: nothing to say.
        let other = json!([{"Plan": {"Node Type": "Seq Scan", "Relation Name": "pg_class"}}]);
        assert_eq!(
            warnings(&subject(), "SELECT * FROM pg_class", &other, &schema()),
            []
        );
    }
}
