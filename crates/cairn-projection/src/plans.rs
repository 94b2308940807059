//! Query plans: SQLite's `EXPLAIN QUERY PLAN` for named queries and projection
//! statements, read for full scans of read-model tables and sorts without an index,
//! each reported as a [`PlanWarning`] with the index that would avoid it.
//!
//! The plan rows say *what* SQLite does (`SCAN orders`, `USE TEMP B-TREE FOR ORDER
//! BY`); which columns an index should hold comes from the statement's SQL (see
//! [`crate::shape`]): its equality conditions on the table first (against values, then
//! joins), then its range conditions, then its `ORDER BY` (or `GROUP BY`) columns, each
//! once. A full scan is reported even when it is meant (`SELECT … LIMIT 10` over a
//! whole table, a tiny table): the user decides.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use rusqlite::Connection;

use crate::config::{CompiledQuery, ParamValue, ProjectionPlan};
use crate::query::{self, PlanCheck};
use crate::shape::{Against, Comparison, Schema, Shape, Term};

/// What a plan belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PlanSubject {
    /// A named query.
    Query { name: String },
    /// A projection's statement: `on.<event_type>`, statement `index` (1-based, as in
    /// configuration errors).
    Statement {
        projection: String,
        event_type: String,
        index: usize,
    },
}

impl fmt::Display for PlanSubject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlanSubject::Query { name } => write!(f, "query {name}"),
            PlanSubject::Statement {
                projection,
                event_type,
                index,
            } => write!(
                f,
                "projection {projection}, on.{event_type} statement {index}"
            ),
        }
    }
}

/// What a warning is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PlanWarningKind {
    /// Every row of the table is visited (`SCAN t`, `SCAN t USING INDEX …`, or an
    /// automatic index SQLite builds for each run).
    FullScan,
    /// Rows are sorted in a temporary B-tree for `ORDER BY` or `GROUP BY`.
    SortWithoutIndex,
}

impl PlanWarningKind {
    /// `full_scan` or `sort_without_index`.
    pub fn as_str(self) -> &'static str {
        match self {
            PlanWarningKind::FullScan => "full_scan",
            PlanWarningKind::SortWithoutIndex => "sort_without_index",
        }
    }
}

/// A full scan or a sort without an index, found in a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanWarning {
    pub subject: PlanSubject,
    pub kind: PlanWarningKind,
    /// The read-model table, as declared.
    pub table: String,
    /// The columns an index should hold, in order (empty when none could be derived).
    pub columns: Vec<String>,
    /// The plan row that shows it (`SCAN orders`, `USE TEMP B-TREE FOR ORDER BY`).
    pub detail: String,
    /// `CREATE INDEX IF NOT EXISTS <table>_by_<columns> ON <table> (<columns>)`, to add to
    /// the `setup` of the projection that creates the table; `None` when no plain column
    /// of the statement would help (it reads every row on purpose, orders by an
    /// expression, or its conditions are joined by `OR`).
    pub suggestion: Option<String>,
    /// The whole warning in one sentence, as logged.
    pub message: String,
}

impl fmt::Display for PlanWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// One row of `EXPLAIN QUERY PLAN`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanRow {
    pub id: i64,
    /// The row this one is nested in; 0 at the top.
    pub parent: i64,
    pub detail: String,
}

/// A named query's plan, as [`ReadSide::plan`](crate::ReadSide::plan) answers it.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryPlan {
    pub query: String,
    /// The SQL as SQLite runs it (placeholders became `?1`, `?2`, …).
    pub sql: String,
    pub rows: Vec<PlanRow>,
    /// The rows as a tree, as the `sqlite3` shell prints them.
    pub text: String,
    pub warnings: Vec<PlanWarning>,
    /// With `analyze`: the query was run with the given parameters.
    pub analysis: Option<PlanAnalysis>,
}

/// What running the query showed (SQLite has no `EXPLAIN ANALYZE`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlanAnalysis {
    pub duration: Duration,
    pub rows_returned: usize,
}

impl fmt::Display for QueryPlan {
    /// The plan tree, then the analysis and the warnings, for people.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)?;
        if let Some(analysis) = &self.analysis {
            write!(
                f,
                "\nran in {:.3} ms, {} row{} returned",
                analysis.duration.as_secs_f64() * 1000.0,
                analysis.rows_returned,
                if analysis.rows_returned == 1 { "" } else { "s" }
            )?;
        }
        for warning in &self.warnings {
            write!(f, "\nwarning: {warning}")?;
        }
        Ok(())
    }
}

/// Runs `EXPLAIN QUERY PLAN` for `sql` with `values` bound (none: every parameter is
/// NULL, which does not change SQLite's plan).
pub(crate) fn explain(
    connection: &Connection,
    sql: &str,
    values: &[ParamValue],
) -> rusqlite::Result<Vec<PlanRow>> {
    let mut statement = connection.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))?;
    query::bind(&mut statement, values)?;
    let mut rows = statement.raw_query();
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(PlanRow {
            id: row.get(0)?,
            parent: row.get(1)?,
            detail: row.get(3)?,
        });
    }
    Ok(out)
}

/// The rows as a tree, as the `sqlite3` shell prints them.
pub(crate) fn render(rows: &[PlanRow]) -> String {
    fn walk(rows: &[PlanRow], parent: i64, prefix: &str, out: &mut String, budget: &mut usize) {
        let children: Vec<&PlanRow> = rows
            .iter()
            .filter(|row| row.parent == parent && row.id != parent)
            .collect();
        for (n, child) in children.iter().enumerate() {
            if *budget == 0 {
                return;
            }
            *budget -= 1;
            let last = n + 1 == children.len();
            out.push('\n');
            out.push_str(prefix);
            out.push_str(if last { "`--" } else { "|--" });
            out.push_str(&child.detail);
            let deeper = format!("{prefix}{}", if last { "   " } else { "|  " });
            walk(rows, child.id, &deeper, out, budget);
        }
    }
    let mut out = String::from("QUERY PLAN");
    // Each row is printed once at most, whatever the ids say.
    let mut budget = rows.len();
    walk(rows, 0, "", &mut out, &mut budget);
    out
}

/// The rows on one line (`SCAN orders; USE TEMP B-TREE FOR ORDER BY`), for logs.
pub(crate) fn one_line(rows: &[PlanRow]) -> String {
    if rows.is_empty() {
        // `INSERT … VALUES`, for one.
        return "(no table is read)".to_owned();
    }
    let details: Vec<&str> = rows.iter().map(|row| row.detail.as_str()).collect();
    details.join("; ")
}

/// Milliseconds with microsecond precision, for logs.
pub(crate) fn milliseconds(duration: Duration) -> f64 {
    duration.as_micros() as f64 / 1000.0
}

/// The plan of `sql` on one line, or why there is none: what the slow-query log shows.
pub(crate) fn one_line_plan(connection: &Connection, sql: &str, values: &[ParamValue]) -> String {
    match explain(connection, sql, values) {
        Ok(rows) => one_line(&rows),
        Err(error) => format!("(no plan: {error})"),
    }
}

/// What checking every plan found, in configuration order.
#[derive(Debug, Default)]
pub(crate) struct PlanChecks {
    /// Per projection, the warnings of all its statements.
    pub projections: Vec<Vec<PlanWarning>>,
    pub queries: Vec<PlanCheck>,
}

/// Plans every projection statement (parameters NULL) and every query (parameters
/// at representative values) against the read models as they are now.
pub(crate) fn check_all(
    connection: &Connection,
    projections: &[Arc<ProjectionPlan>],
    queries: &[CompiledQuery],
) -> rusqlite::Result<PlanChecks> {
    let schema = Schema::load(connection)?;
    let projections = projections
        .iter()
        .map(|plan| {
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
                    match check(connection, &schema, &subject, &statement.sql, &[]) {
                        Ok((_, found)) => warnings.extend(found),
                        // Tables that only a rebuild of a changed definition creates.
                        Err(error) => {
                            tracing::debug!(target: "cairn::plans", %subject, %error, "statement cannot be planned yet");
                        }
                    }
                }
            }
            warnings
        })
        .collect();
    let queries = queries
        .iter()
        .map(|query| {
            let subject = PlanSubject::Query {
                name: query.name.clone(),
            };
            let values = query::representative_params(query);
            match check(connection, &schema, &subject, &query.sql, &values) {
                Ok((_, warnings)) => PlanCheck {
                    warnings,
                    error: None,
                },
                Err(error) => PlanCheck {
                    warnings: Vec::new(),
                    error: Some(error.to_string()),
                },
            }
        })
        .collect();
    Ok(PlanChecks {
        projections,
        queries,
    })
}

/// Logs a warning once, with its parts as fields.
pub(crate) fn log(warning: &PlanWarning) {
    tracing::warn!(
        target: "cairn::plans",
        subject = %warning.subject,
        kind = warning.kind.as_str(),
        table = %warning.table,
        columns = ?warning.columns,
        suggestion = warning.suggestion.as_deref().unwrap_or(""),
        "{}",
        warning.message
    );
}

/// Plans `sql` and reads the plan for warnings.
pub(crate) fn check(
    connection: &Connection,
    schema: &Schema,
    subject: &PlanSubject,
    sql: &str,
    values: &[ParamValue],
) -> rusqlite::Result<(Vec<PlanRow>, Vec<PlanWarning>)> {
    let rows = explain(connection, sql, values)?;
    let warnings = warnings(subject, sql, &rows, schema);
    Ok((rows, warnings))
}

/// The warnings a plan calls for. A sort that the index suggested for a full scan of
/// the same table would also avoid is folded into the full scan's warning.
pub(crate) fn warnings(
    subject: &PlanSubject,
    sql: &str,
    rows: &[PlanRow],
    schema: &Schema,
) -> Vec<PlanWarning> {
    let shape = Shape::of(sql);
    let mut findings = Vec::new();
    for (index, row) in rows.iter().enumerate() {
        if let Some(scanned) = scanned_table(&row.detail, &shape, schema) {
            if let Some(table) = scanned {
                findings.push(Finding::FullScan { row: index, table });
            }
        } else if let Some(sort) = sort_clause(&row.detail)
            && let Some(table) = sorted_table(rows, index, &shape, schema)
        {
            findings.push(Finding::Sort {
                row: index,
                table,
                sort,
            });
        }
    }
    warnings_for(subject, &shape, rows, &findings, schema)
}

/// What a plan shows, whatever the database: a read-model table visited whole, or
/// rows of one sorted without an index. `row` is the plan row that shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Finding {
    FullScan {
        row: usize,
        table: String,
    },
    Sort {
        row: usize,
        table: String,
        sort: Sort,
    },
}

/// The warnings for `findings` (tables lower-cased), each once. A sort that the index
/// suggested for a full scan of the same table would also avoid is folded into the
/// full scan's warning.
pub(crate) fn warnings_for(
    subject: &PlanSubject,
    shape: &Shape,
    rows: &[PlanRow],
    findings: &[Finding],
    schema: &Schema,
) -> Vec<PlanWarning> {
    let mut found: Vec<(PlanWarning, Option<Sort>)> = Vec::new();
    for finding in findings {
        let warning = match finding {
            Finding::FullScan { row, table } => rows
                .get(*row)
                .map(|row| (full_scan(subject, row, table, shape, schema), None)),
            Finding::Sort { row, table, sort } => rows.get(*row).map(|row| {
                let warning = sort_without_index(subject, row, table, *sort, shape, schema);
                (warning, Some(*sort))
            }),
        };
        if let Some((warning, sort)) = warning
            && !found.iter().any(|(w, _)| {
                w.kind == warning.kind && w.table == warning.table && w.columns == warning.columns
            })
        {
            found.push((warning, sort));
        }
    }
    let mut out: Vec<PlanWarning> = Vec::with_capacity(found.len());
    for (warning, sort) in &found {
        if sort.is_some()
            && warning.suggestion.is_some()
            && found.iter().any(|(scan, _)| {
                scan.kind == PlanWarningKind::FullScan
                    && scan.table == warning.table
                    && scan.suggestion == warning.suggestion
            })
        {
            // Said with the full scan.
            continue;
        }
        let mut warning = warning.clone();
        if warning.kind == PlanWarningKind::FullScan
            && let Some((_, Some(sort))) = found.iter().find(|(other, sort)| {
                sort.is_some()
                    && other.table == warning.table
                    && other.suggestion == warning.suggestion
            })
            && let Some(suggestion) = &warning.suggestion
        {
            warning.message = format!(
                "{subject} reads every row of table {} ({}) and sorts them in a temporary B-tree for its {}; \
                 an index on ({}) would let it search instead, in order: {suggestion}",
                warning.table,
                warning.detail,
                sort.clause(),
                warning.columns.join(", "),
            );
        }
        out.push(warning);
    }
    out
}

/// For a `SCAN`/`SEARCH` row: `Some(Some(table))` when it visits every row of a
/// read-model table, `Some(None)` when it is a `SCAN`/`SEARCH` row that does not (or
/// not of a read-model table), `None` for other rows.
fn scanned_table(detail: &str, shape: &Shape, schema: &Schema) -> Option<Option<String>> {
    let (scan, rest) = if let Some(rest) = detail.strip_prefix("SCAN ") {
        (true, rest)
    } else if let Some(rest) = detail.strip_prefix("SEARCH ") {
        (false, rest)
    } else {
        return None;
    };
    let (table, after) = name_in(rest, shape, schema)?;
    let full = if scan {
        !after.starts_with(" VIRTUAL TABLE")
    } else {
        // SQLite builds an automatic index from every row, for each run.
        after.starts_with(" USING AUTOMATIC")
    };
    Some((full && schema.table(&table).is_some()).then_some(table))
}

/// The table (lower-cased) a plan row names at the start of `rest`, and what follows
/// the name. Plan rows show aliases where the SQL has them, and names may hold spaces:
/// the longest known name that `rest` starts with wins.
fn name_in<'a>(rest: &'a str, shape: &Shape, schema: &Schema) -> Option<(String, &'a str)> {
    let known = shape
        .names()
        .map(str::to_owned)
        .chain(schema.tables.values().map(|table| table.name.clone()));
    let mut best: Option<(String, usize)> = None;
    for name in known {
        let length = name.len();
        let matches = rest.len() >= length
            && rest.is_char_boundary(length)
            && rest[..length].eq_ignore_ascii_case(&name)
            && (rest.len() == length || rest[length..].starts_with(' '));
        if matches && best.as_ref().is_none_or(|(_, best)| length > *best) {
            best = Some((name, length));
        }
    }
    match best {
        Some((name, length)) => Some((shape.table_named(&name), &rest[length..])),
        // A subquery, a CTE, `CONSTANT ROW`: no table of ours.
        None => Some((rest.split(' ').next().unwrap_or_default().to_owned(), "")),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sort {
    OrderBy,
    GroupBy,
}

impl Sort {
    fn clause(self) -> &'static str {
        match self {
            Sort::OrderBy => "ORDER BY",
            Sort::GroupBy => "GROUP BY",
        }
    }
}

fn sort_clause(detail: &str) -> Option<Sort> {
    let rest = detail.strip_prefix("USE TEMP B-TREE FOR ")?;
    if rest.contains("ORDER BY") {
        Some(Sort::OrderBy)
    } else if rest.starts_with("GROUP BY") {
        Some(Sort::GroupBy)
    } else {
        None
    }
}

/// The table whose index could give the sort at `index` its order: the outermost
/// loop (the first `SCAN`/`SEARCH` row) of the same level of the plan.
fn sorted_table(rows: &[PlanRow], index: usize, shape: &Shape, schema: &Schema) -> Option<String> {
    let parent = rows[index].parent;
    rows[..index]
        .iter()
        .filter(|row| row.parent == parent)
        .find_map(|row| {
            let rest = row
                .detail
                .strip_prefix("SCAN ")
                .or_else(|| row.detail.strip_prefix("SEARCH "))?;
            let (table, _) = name_in(rest, shape, schema)?;
            Some(table)
        })
        .filter(|table| schema.table(table).is_some())
}

/// The columns an index on `table` should hold for the statement's conditions:
/// equalities against values, equalities against other tables' columns (joins), then
/// ranges; conditions in a `WHERE`/`ON` with an `OR` are left out.
fn condition_columns(table: &str, shape: &Shape, schema: &Schema) -> Vec<String> {
    let mut columns: Vec<String> = Vec::new();
    let stages: [&dyn Fn(&crate::shape::Condition) -> bool; 3] = [
        &|c| c.comparison == Comparison::Equality && c.against == Against::Value,
        &|c| c.comparison == Comparison::Equality && c.against != Against::Value,
        &|c| c.comparison == Comparison::Range,
    ];
    for stage in stages {
        for condition in shape
            .conditions
            .iter()
            .filter(|c| !c.disjunctive && stage(c))
        {
            if shape.table_of(&condition.column, schema).as_deref() != Some(table) {
                continue;
            }
            if let Against::Column(other) = &condition.against
                && shape.table_of(other, schema).as_deref() == Some(table)
            {
                // Two columns of the same row: no index helps.
                continue;
            }
            push_column(&mut columns, table, &condition.column.name, false, schema);
        }
    }
    columns
}

/// Adds `column` (declared name, with ` DESC` when asked) unless it is already there.
fn push_column(columns: &mut Vec<String>, table: &str, column: &str, desc: bool, schema: &Schema) {
    let Some(declared) = schema.table(table).and_then(|t| t.column(column)) else {
        return;
    };
    if columns
        .iter()
        .any(|known| index_column_name(known).eq_ignore_ascii_case(declared))
    {
        return;
    }
    columns.push(if desc {
        format!("{declared} DESC")
    } else {
        declared.to_owned()
    });
}

fn index_column_name(column: &str) -> &str {
    column.strip_suffix(" DESC").unwrap_or(column)
}

/// The sort terms, when every one is a plain column of `table`; with ` DESC` on
/// descending ones only when directions are mixed (an index scans backwards too).
fn sort_columns(
    terms: &[Term],
    table: &str,
    shape: &Shape,
    schema: &Schema,
) -> Option<Vec<String>> {
    let mixed = terms.iter().any(|t| t.descending) && terms.iter().any(|t| !t.descending);
    let mut columns = Vec::new();
    for term in terms {
        let column = term.column.as_ref()?;
        if shape.table_of(column, schema).as_deref() != Some(table) {
            return None;
        }
        push_column(
            &mut columns,
            table,
            &column.name,
            mixed && term.descending,
            schema,
        );
    }
    (!columns.is_empty()).then_some(columns)
}

fn full_scan(
    subject: &PlanSubject,
    row: &PlanRow,
    table: &str,
    shape: &Shape,
    schema: &Schema,
) -> PlanWarning {
    let mut columns = condition_columns(table, shape, schema);
    // Without a condition an index cannot spare the scan, only the sort (which has its
    // own warning when SQLite sorts).
    if !columns.is_empty()
        && let Some(order) = sort_columns(&shape.order_by, table, shape, schema)
    {
        for column in order {
            if !columns.iter().any(|known| {
                index_column_name(known).eq_ignore_ascii_case(index_column_name(&column))
            }) {
                columns.push(column);
            }
        }
    }
    let declared = declared_table(table, schema);
    let why_none = if shape
        .conditions
        .iter()
        .any(|c| c.disjunctive && shape.table_of(&c.column, schema).as_deref() == Some(table))
    {
        "its conditions on this table are joined by OR (SQLite needs an index for each side of an OR)"
    } else {
        "the statement compares no column of this table with a value; it reads every row on purpose, or through an expression"
    };
    let lead = format!(
        "{subject} reads every row of table {declared} ({})",
        row.detail
    );
    make(
        subject,
        PlanWarningKind::FullScan,
        &declared,
        columns,
        row,
        lead,
        "would let it search instead",
        why_none,
    )
}

fn sort_without_index(
    subject: &PlanSubject,
    row: &PlanRow,
    table: &str,
    sort: Sort,
    shape: &Shape,
    schema: &Schema,
) -> PlanWarning {
    let terms = match sort {
        Sort::OrderBy => &shape.order_by,
        Sort::GroupBy => &shape.group_by,
    };
    let clause = sort.clause();
    let columns = match sort_columns(terms, table, shape, schema) {
        Some(sorted) => {
            // Equality columns first: within them, the index is in the sort's order.
            let mut columns: Vec<String> = condition_columns(table, shape, schema)
                .into_iter()
                .filter(|column| {
                    shape.conditions.iter().any(|c| {
                        c.comparison == Comparison::Equality
                            && c.against == Against::Value
                            && !c.disjunctive
                            && c.column
                                .name
                                .eq_ignore_ascii_case(index_column_name(column))
                    })
                })
                .collect();
            for column in sorted {
                if !columns.iter().any(|known| {
                    index_column_name(known).eq_ignore_ascii_case(index_column_name(&column))
                }) {
                    columns.push(column);
                }
            }
            columns
        }
        None => Vec::new(),
    };
    let declared = declared_table(table, schema);
    let lead = format!(
        "{subject} sorts rows of table {declared} in a temporary B-tree for its {clause} ({})",
        row.detail
    );
    let why_none = "its sort terms are not all plain columns of this table";
    make(
        subject,
        PlanWarningKind::SortWithoutIndex,
        &declared,
        columns,
        row,
        lead,
        "would give the rows in order",
        why_none,
    )
}

#[allow(clippy::too_many_arguments)]
fn make(
    subject: &PlanSubject,
    kind: PlanWarningKind,
    table: &str,
    columns: Vec<String>,
    row: &PlanRow,
    lead: String,
    benefit: &str,
    why_none: &str,
) -> PlanWarning {
    let suggestion = (!columns.is_empty()).then(|| create_index(table, &columns));
    let message = match &suggestion {
        Some(suggestion) => format!(
            "{lead}; an index on ({}) {benefit}: {suggestion}",
            columns
                .iter()
                .map(|c| index_column_name(c))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        None => format!("{lead}; no index suggested: {why_none}"),
    };
    PlanWarning {
        subject: subject.clone(),
        kind,
        table: table.to_owned(),
        columns: columns
            .iter()
            .map(|c| index_column_name(c).to_owned())
            .collect(),
        detail: row.detail.clone(),
        suggestion,
        message,
    }
}

fn declared_table(table: &str, schema: &Schema) -> String {
    schema
        .table(table)
        .map_or_else(|| table.to_owned(), |t| t.name.clone())
}

/// `CREATE INDEX IF NOT EXISTS <table>_by_<columns> ON <table> (<columns>)`.
fn create_index(table: &str, columns: &[String]) -> String {
    let mut name = format!("{table}_by");
    for column in columns {
        name.push('_');
        name.push_str(index_column_name(column));
    }
    let name: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    let listed: Vec<String> = columns
        .iter()
        .map(|column| match column.strip_suffix(" DESC") {
            Some(name) => format!("{} DESC", quote(name)),
            None => quote(column),
        })
        .collect();
    format!(
        "CREATE INDEX IF NOT EXISTS {} ON {} ({})",
        quote(&name),
        quote(table),
        listed.join(", ")
    )
}

/// An identifier as SQL needs it: bare when it can be, else in double quotes.
fn quote(identifier: &str) -> String {
    const KEYWORDS: &[&str] = &[
        "add",
        "all",
        "alter",
        "and",
        "as",
        "asc",
        "between",
        "by",
        "case",
        "check",
        "collate",
        "column",
        "constraint",
        "create",
        "cross",
        "current",
        "default",
        "delete",
        "desc",
        "distinct",
        "drop",
        "else",
        "end",
        "escape",
        "except",
        "exists",
        "filter",
        "from",
        "full",
        "group",
        "having",
        "in",
        "index",
        "inner",
        "insert",
        "intersect",
        "into",
        "is",
        "join",
        "key",
        "left",
        "like",
        "limit",
        "natural",
        "not",
        "null",
        "of",
        "offset",
        "on",
        "or",
        "order",
        "outer",
        "primary",
        "references",
        "right",
        "select",
        "set",
        "table",
        "then",
        "to",
        "union",
        "unique",
        "update",
        "using",
        "values",
        "when",
        "where",
        "window",
        "with",
    ];
    let plain = identifier
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && identifier
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !KEYWORDS.contains(&identifier.to_ascii_lowercase().as_str());
    if plain {
        identifier.to_owned()
    } else {
        format!("\"{}\"", identifier.replace('"', "\"\""))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn database(setup: &str) -> Connection {
        let connection = Connection::open_in_memory().unwrap();
        connection.execute_batch(setup).unwrap();
        connection
    }

    fn only(warnings: &[PlanWarning]) -> &PlanWarning {
        assert_eq!(warnings.len(), 1, "{warnings:#?}");
        &warnings[0]
    }

    fn check_sql(connection: &Connection, sql: &str) -> Vec<PlanWarning> {
        let schema = Schema::load(connection).unwrap();
        let subject = PlanSubject::Query { name: "q".into() };
        check(connection, &schema, &subject, sql, &[]).unwrap().1
    }

    const ORDERS: &str =
        "CREATE TABLE orders (id TEXT PRIMARY KEY, customer TEXT, total NUMERIC, status TEXT);
        CREATE TABLE lines (order_id TEXT, sku TEXT, qty INT);";

    #[test]
    fn the_product_example_scans_and_gets_its_index() {
        let connection = database(ORDERS);
        let sql = "SELECT id, total, status FROM orders WHERE customer = ?1 ORDER BY id LIMIT ?2";
        let warnings = check_sql(&connection, sql);
        assert_eq!(warnings.len(), 1, "{warnings:#?}");
        let warning = &warnings[0];
        assert_eq!(warning.kind, PlanWarningKind::FullScan);
        assert_eq!(warning.table, "orders");
        assert_eq!(warning.columns, ["customer", "id"]);
        assert_eq!(
            warning.suggestion.as_deref(),
            Some("CREATE INDEX IF NOT EXISTS orders_by_customer_id ON orders (customer, id)")
        );
        connection
            .execute_batch(warning.suggestion.as_deref().unwrap())
            .unwrap();
        assert_eq!(check_sql(&connection, sql), []);
    }

    #[test]
    fn a_sort_without_an_index_after_a_search() {
        let connection = database(&format!(
            "{ORDERS} CREATE INDEX orders_by_customer ON orders (customer);"
        ));
        let sql = "SELECT id FROM orders WHERE customer = ?1 ORDER BY total DESC";
        let warnings = check_sql(&connection, sql);
        assert_eq!(warnings.len(), 1, "{warnings:#?}");
        assert_eq!(warnings[0].kind, PlanWarningKind::SortWithoutIndex);
        assert_eq!(warnings[0].columns, ["customer", "total"]);
        let suggestion = warnings[0].suggestion.clone().unwrap();
        assert_eq!(
            suggestion,
            "CREATE INDEX IF NOT EXISTS orders_by_customer_total ON orders (customer, total)"
        );
        connection.execute_batch(&suggestion).unwrap();
        assert_eq!(check_sql(&connection, sql), []);
    }

    #[test]
    fn a_sort_the_scan_index_also_avoids_is_said_once() {
        let connection = database(ORDERS);
        let sql = "SELECT id FROM orders WHERE customer = ?1 ORDER BY total";
        let warnings = check_sql(&connection, sql);
        let warning = only(&warnings);
        assert_eq!(warning.kind, PlanWarningKind::FullScan);
        assert_eq!(
            warning.message,
            "query q reads every row of table orders (SCAN orders) and sorts them in a temporary \
             B-tree for its ORDER BY; an index on (customer, total) would let it search instead, \
             in order: CREATE INDEX IF NOT EXISTS orders_by_customer_total ON orders (customer, total)"
        );
        connection
            .execute_batch(warning.suggestion.as_deref().unwrap())
            .unwrap();
        assert_eq!(check_sql(&connection, sql), []);
    }

    #[test]
    fn mixed_directions_are_kept_in_the_index() {
        let connection = database(ORDERS);
        let sql = "SELECT * FROM orders ORDER BY customer, total DESC";
        let warnings = check_sql(&connection, sql);
        let sort = warnings
            .iter()
            .find(|w| w.kind == PlanWarningKind::SortWithoutIndex)
            .unwrap();
        let suggestion = sort.suggestion.clone().unwrap();
        assert!(
            suggestion.ends_with("(customer, total DESC)"),
            "{suggestion}"
        );
        connection.execute_batch(&suggestion).unwrap();
        let after = check_sql(&connection, sql);
        assert!(
            after
                .iter()
                .all(|w| w.kind == PlanWarningKind::FullScan && w.suggestion.is_none()),
            "{after:#?}"
        );
    }

    #[test]
    fn statements_that_write_are_planned_too() {
        let connection = database(ORDERS);
        let warnings = check_sql(
            &connection,
            "UPDATE orders SET status = 'shipped' WHERE status = ?1 AND total > ?2",
        );
        assert_eq!(
            warnings[0].suggestion.as_deref(),
            Some("CREATE INDEX IF NOT EXISTS orders_by_status_total ON orders (status, total)")
        );
        assert_eq!(
            check_sql(&connection, "UPDATE orders SET total = 1 WHERE id = ?1"),
            []
        );
        assert_eq!(
            check_sql(
                &connection,
                "INSERT INTO orders (id, total) VALUES (?1, ?2) ON CONFLICT (id) DO UPDATE SET total = total + excluded.total"
            ),
            []
        );
        let delete = check_sql(&connection, "DELETE FROM lines WHERE order_id = ?1");
        assert_eq!(delete[0].columns, ["order_id"]);
    }

    #[test]
    fn joins_suggest_the_join_column() {
        let connection = database(ORDERS);
        let sql =
            "SELECT o.id, l.sku FROM orders o JOIN lines l ON l.order_id = o.id WHERE o.id = ?1";
        let warnings = check_sql(&connection, sql);
        assert_eq!(warnings.len(), 1, "{warnings:#?}");
        assert_eq!(warnings[0].table, "lines");
        assert_eq!(warnings[0].columns, ["order_id"]);
        connection
            .execute_batch(warnings[0].suggestion.as_deref().unwrap())
            .unwrap();
        assert_eq!(check_sql(&connection, sql), []);
    }

    #[test]
    fn scans_on_purpose_and_ors_are_warned_without_a_suggestion() {
        let connection = database(ORDERS);
        let everything = check_sql(&connection, "SELECT * FROM orders LIMIT 10");
        assert_eq!(everything.len(), 1);
        assert_eq!(everything[0].suggestion, None);
        assert!(everything[0].message.contains("no index suggested"));
        let or = check_sql(&connection, "SELECT * FROM lines WHERE sku = ?1 OR qty = 3");
        assert_eq!(or[0].suggestion, None);
        assert!(or[0].message.contains("OR"), "{}", or[0].message);
        // Not a read-model table: nothing to say.
        assert_eq!(check_sql(&connection, "SELECT 1"), []);
        assert_eq!(
            check_sql(&connection, "SELECT * FROM json_each('[1, 2]')"),
            []
        );
    }

    #[test]
    fn names_are_quoted_when_they_must_be() {
        assert_eq!(
            create_index("Line Items", &["order".into(), "sku".into()]),
            "CREATE INDEX IF NOT EXISTS line_items_by_order_sku ON \"Line Items\" (\"order\", sku)"
        );
        let connection = database("CREATE TABLE \"Line Items\" (\"order\" TEXT, sku TEXT)");
        let warnings = check_sql(
            &connection,
            "SELECT * FROM \"Line Items\" li WHERE li.\"order\" = ?1",
        );
        assert_eq!(warnings[0].table, "Line Items");
        connection
            .execute_batch(warnings[0].suggestion.as_deref().unwrap())
            .unwrap();
        assert_eq!(
            check_sql(
                &connection,
                "SELECT * FROM \"Line Items\" li WHERE li.\"order\" = ?1"
            ),
            []
        );
    }

    #[test]
    fn the_tree_is_drawn_like_the_shell_does() {
        let rows = vec![
            PlanRow {
                id: 3,
                parent: 0,
                detail: "SEARCH orders USING INDEX i (id=?)".into(),
            },
            PlanRow {
                id: 7,
                parent: 0,
                detail: "LIST SUBQUERY 1".into(),
            },
            PlanRow {
                id: 10,
                parent: 7,
                detail: "SCAN lines".into(),
            },
        ];
        assert_eq!(
            render(&rows),
            "QUERY PLAN\n|--SEARCH orders USING INDEX i (id=?)\n`--LIST SUBQUERY 1\n   `--SCAN lines"
        );
        assert_eq!(
            one_line(&rows),
            "SEARCH orders USING INDEX i (id=?); LIST SUBQUERY 1; SCAN lines"
        );
    }
}
