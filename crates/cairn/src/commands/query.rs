//! `cairn query`: a named query's rows, as a table on a terminal or as JSON.

use std::time::Duration;

use cairn_client::{QueryPlan, QueryResponse};
use serde_json::Value;

use crate::cli::QueryArgs;
use crate::commands::projections::{shorten, text_output};
use crate::commands::{JsonLines, client};

/// The widest a table column gets; longer values are cut with an ellipsis.
const MAX_COLUMN_WIDTH: usize = 48;

pub async fn run(args: QueryArgs) -> anyhow::Result<()> {
    if args.explain {
        return explain(args).await;
    }
    let response = client(&args.client)?
        .query(
            &args.name,
            args.params.iter().map(|(name, value)| (name, value)),
            args.min_position,
            args.wait.unwrap_or(Duration::ZERO),
        )
        .await?;
    let mut out = JsonLines::stdout();
    if !text_output(args.format) {
        out.write(&response)?;
        return out.flush();
    }
    for line in table(&response) {
        out.write_str(&line)?;
    }
    out.flush()
}

/// `--explain [--analyze]`: the plan as text on a terminal, as JSON otherwise.
async fn explain(args: QueryArgs) -> anyhow::Result<()> {
    let plan = client(&args.client)?
        .query_plan(
            &args.name,
            args.params.iter().map(|(name, value)| (name, value)),
            args.analyze,
        )
        .await?;
    let mut out = JsonLines::stdout();
    if !text_output(args.format) {
        out.write(&plan)?;
        return out.flush();
    }
    for line in plan_text(&plan) {
        out.write_str(&line)?;
    }
    out.flush()
}

/// The plan tree, then the run's duration and row count, then each warning.
pub fn plan_text(plan: &QueryPlan) -> Vec<String> {
    let mut lines: Vec<String> = plan.text.lines().map(str::to_owned).collect();
    if let Some(analysis) = &plan.analysis {
        lines.push(format!(
            "ran in {:.3} ms, {} row{} returned",
            analysis.duration_ms,
            analysis.rows_returned,
            if analysis.rows_returned == 1 { "" } else { "s" }
        ));
    }
    for warning in &plan.warnings {
        lines.push(format!("warning: {}", warning.message));
    }
    lines
}

/// The rows as an aligned table (columns in the rows' key order, numbers to the right),
/// then a line with the row count and the position they reflect.
pub fn table(response: &QueryResponse) -> Vec<String> {
    let rows = &response.rows;
    let footer = format!(
        "({} row{}, position {})",
        rows.len(),
        if rows.len() == 1 { "" } else { "s" },
        response.position
    );
    let mut columns: Vec<&str> = Vec::new();
    for row in rows {
        for name in row.keys() {
            if !columns.contains(&name.as_str()) {
                columns.push(name);
            }
        }
    }
    if columns.is_empty() {
        return vec![footer];
    }
    let cells: Vec<Vec<(String, bool)>> = rows
        .iter()
        .map(|row| {
            columns
                .iter()
                .map(|column| cell(row.get(*column).unwrap_or(&Value::Null)))
                .collect()
        })
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(index, column)| {
            cells
                .iter()
                .map(|row| row[index].0.chars().count())
                .chain([column.chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut lines = Vec::with_capacity(rows.len() + 3);
    let header: Vec<String> = columns
        .iter()
        .zip(&widths)
        .map(|(column, width)| format!("{column:<width$}"))
        .collect();
    lines.push(header.join("  ").trim_end().to_owned());
    let rule: Vec<String> = widths.iter().map(|width| "-".repeat(*width)).collect();
    lines.push(rule.join("  "));
    for row in &cells {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|((text, numeric), width)| {
                if *numeric {
                    format!("{text:>width$}")
                } else {
                    format!("{text:<width$}")
                }
            })
            .collect();
        lines.push(line.join("  ").trim_end().to_owned());
    }
    lines.push(footer);
    lines
}

/// A value as table text, and whether it is a number (aligned right).
fn cell(value: &Value) -> (String, bool) {
    match value {
        Value::Null => (String::new(), false),
        Value::String(text) => (
            shorten(&text.replace(['\n', '\r', '\t'], " "), MAX_COLUMN_WIDTH),
            false,
        ),
        Value::Number(number) => (number.to_string(), true),
        other => (shorten(&other.to_string(), MAX_COLUMN_WIDTH), false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_become_an_aligned_table() {
        let response: QueryResponse = serde_json::from_value(serde_json::json!({
            "rows": [
                {"id": "o-1", "status": "placed", "total": 12.5},
                {"id": "order-22", "status": null, "total": 7},
            ],
            "position": 9,
        }))
        .unwrap();
        assert_eq!(
            table(&response),
            [
                "id        status  total",
                "--------  ------  -----",
                "o-1       placed   12.5",
                "order-22              7",
                "(2 rows, position 9)",
            ]
        );
        let empty = QueryResponse {
            rows: Vec::new(),
            position: 3,
        };
        assert_eq!(table(&empty), ["(0 rows, position 3)"]);
    }

    #[test]
    fn a_plan_reads_as_the_tree_the_run_and_the_warnings() {
        let plan: QueryPlan = serde_json::from_value(serde_json::json!({
            "query": "q",
            "sql": "SELECT id FROM t WHERE a = ?1",
            "rows": [{"id": 2, "parent": 0, "detail": "SCAN t"}],
            "text": "QUERY PLAN\n`--SCAN t",
            "warnings": [{"subject": "query q", "kind": "full_scan", "table": "t", "columns": ["a"],
                "suggestion": "CREATE INDEX IF NOT EXISTS t_by_a ON t (a)", "message": "query q reads every row of table t"}],
            "analysis": {"duration_ms": 1.25, "rows_returned": 1},
        }))
        .unwrap();
        assert_eq!(
            plan_text(&plan),
            [
                "QUERY PLAN",
                "`--SCAN t",
                "ran in 1.250 ms, 1 row returned",
                "warning: query q reads every row of table t",
            ]
        );
    }
}
