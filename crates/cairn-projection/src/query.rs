//! Named queries: typed parameters parsed from strings and checked, and the SQL run on
//! a read-only connection, each row becoming a JSON object.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rusqlite::types::ValueRef;
use rusqlite::{Connection, Statement};
use serde_json::{Map, Value as Json};

use crate::ReadSideError;
use crate::config::{CompiledQuery, ParamSpec, ParamType, ParamValue};
use crate::metrics::QueryMetrics;
use crate::plans::PlanWarning;
use crate::projection::{Progress, Projection};

/// Rows of a query result: column name → value.
pub type Row = Map<String, Json>;

/// A named query as the API reports it: its plan's warnings and what it has served
/// since the read side started.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryStatus {
    pub name: String,
    /// The parameters' names, in the order the SQL binds them.
    pub params: Vec<String>,
    /// Full scans and sorts without an index in its plan, as checked at start and
    /// after every rebuild.
    pub plan_warnings: Vec<PlanWarning>,
    /// Why its plan could not be checked (its tables do not exist yet, say).
    pub plan_error: Option<String>,
    /// Calls (cache hits, misses and errors alike).
    pub calls: u64,
    /// Calls answered with an error.
    pub errors: u64,
    /// Rows returned, cached or not.
    pub rows: u64,
    pub cache_hits: u64,
    pub cache_misses: u64,
    /// Runs slower than the slow-query threshold.
    pub slow: u64,
}

impl QueryStatus {
    /// Cache hits over hits and misses; `None` before the first answer.
    pub fn cache_hit_ratio(&self) -> Option<f64> {
        let answered = self.cache_hits + self.cache_misses;
        (answered > 0).then(|| self.cache_hits as f64 / answered as f64)
    }
}

/// What a query's plan check found.
#[derive(Debug, Clone, Default)]
pub(crate) struct PlanCheck {
    pub warnings: Vec<PlanWarning>,
    pub error: Option<String>,
}

/// A query's counters, and the keys of its metrics.
pub(crate) struct QueryStats {
    pub metrics: QueryMetrics,
    calls: AtomicU64,
    errors: AtomicU64,
    rows: AtomicU64,
    cache_hits: AtomicU64,
    cache_misses: AtomicU64,
    slow: AtomicU64,
}

impl QueryStats {
    pub(crate) fn new(name: &str) -> Self {
        Self {
            metrics: QueryMetrics::new(name),
            calls: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            rows: AtomicU64::new(0),
            cache_hits: AtomicU64::new(0),
            cache_misses: AtomicU64::new(0),
            slow: AtomicU64::new(0),
        }
    }

    pub(crate) fn call(&self) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.metrics.call();
    }

    pub(crate) fn error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.metrics.error();
    }

    pub(crate) fn rows(&self, rows: usize) {
        let rows = rows as u64;
        self.rows.fetch_add(rows, Ordering::Relaxed);
        self.metrics.rows(rows);
    }

    pub(crate) fn cache_hit(&self) {
        self.cache_hits.fetch_add(1, Ordering::Relaxed);
        self.metrics.cache_hit();
    }

    pub(crate) fn cache_miss(&self) {
        self.cache_misses.fetch_add(1, Ordering::Relaxed);
        self.metrics.cache_miss();
    }

    pub(crate) fn slow(&self) {
        self.slow.fetch_add(1, Ordering::Relaxed);
    }
}

/// A query and the projections whose tables it reads.
pub(crate) struct QueryEntry {
    pub plan: CompiledQuery,
    pub projections: Vec<Arc<Projection>>,
    pub stats: QueryStats,
    pub plan_check: Mutex<PlanCheck>,
}

impl QueryEntry {
    /// The lowest position among the projections the query reads: what it reflects.
    pub(crate) fn position(&self) -> u64 {
        self.projections
            .iter()
            .map(|projection| projection.position())
            .min()
            .unwrap_or(0)
    }

    /// Each projection's progress, in order.
    pub(crate) fn progress(&self) -> Vec<Progress> {
        self.projections
            .iter()
            .map(|projection| *projection.progress.borrow())
            .collect()
    }

    pub(crate) fn status(&self) -> QueryStatus {
        let check = self
            .plan_check
            .lock()
            .map(|check| check.clone())
            .unwrap_or_default();
        let count = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let stats = &self.stats;
        QueryStatus {
            name: self.plan.name.clone(),
            params: self.plan.bound.clone(),
            plan_warnings: check.warnings,
            plan_error: check.error,
            calls: count(&stats.calls),
            errors: count(&stats.errors),
            rows: count(&stats.rows),
            cache_hits: count(&stats.cache_hits),
            cache_misses: count(&stats.cache_misses),
            slow: count(&stats.slow),
        }
    }
}

/// A value for each parameter that stands for any other in a plan: its default, else
/// a value of its type within its bounds.
pub(crate) fn representative_params(plan: &CompiledQuery) -> Vec<ParamValue> {
    plan.bound
        .iter()
        .map(|name| representative(&plan.params[name]))
        .collect()
}

fn representative(spec: &ParamSpec) -> ParamValue {
    if let Some(default) = &spec.default {
        return default.clone();
    }
    let low = spec.min.unwrap_or(0.0).max(0.0);
    let low = spec.max.map_or(low, |max| low.min(max));
    match spec.param_type {
        ParamType::Text => ParamValue::Text("a".repeat(low.ceil() as usize)),
        ParamType::Int => ParamValue::Int(low.ceil() as i64),
        ParamType::Float => ParamValue::Float(low),
        ParamType::Bool => ParamValue::Bool(false),
    }
}

/// The parameters' values in the order the SQL binds them (`?1`, `?2`, …), after
/// defaults; unknown, missing, mistyped and out-of-bounds parameters are refused.
pub(crate) fn parse_params(
    plan: &CompiledQuery,
    given: &HashMap<String, String>,
) -> Result<Vec<ParamValue>, ReadSideError> {
    parse_params_or(plan, given, false)
}

/// As [`parse_params`]; with `stand_in`, a missing required parameter takes a
/// representative value instead of being refused (for plans).
pub(crate) fn parse_params_or(
    plan: &CompiledQuery,
    given: &HashMap<String, String>,
    stand_in: bool,
) -> Result<Vec<ParamValue>, ReadSideError> {
    if let Some(unknown) = given
        .keys()
        .filter(|name| !plan.params.contains_key(*name))
        .min()
    {
        let known: Vec<&str> = plan.params.keys().map(String::as_str).collect();
        let message = if known.is_empty() {
            format!("unknown parameter; query {} takes none", plan.name)
        } else {
            format!(
                "unknown parameter; query {} takes {}",
                plan.name,
                known.join(", ")
            )
        };
        return Err(ReadSideError::invalid_parameter(unknown, message));
    }
    plan.bound
        .iter()
        .map(|name| {
            let spec = &plan.params[name];
            let value = match given.get(name) {
                Some(text) => parse_value(name, spec.param_type, text)?,
                None if stand_in => representative(spec),
                None => spec.default.clone().ok_or_else(|| {
                    ReadSideError::invalid_parameter(name, "required parameter is missing")
                })?,
            };
            let value = match (spec.param_type, value) {
                (ParamType::Float, ParamValue::Int(integer)) => ParamValue::Float(integer as f64),
                (_, value) => value,
            };
            check_bounds(spec, &value)
                .map_err(|message| ReadSideError::invalid_parameter(name, message))?;
            Ok(value)
        })
        .collect()
}

fn parse_value(name: &str, param_type: ParamType, text: &str) -> Result<ParamValue, ReadSideError> {
    let wrong =
        |what: &str| ReadSideError::invalid_parameter(name, format!("{text:?} is not {what}"));
    match param_type {
        ParamType::Text => Ok(ParamValue::Text(text.to_owned())),
        ParamType::Int => text
            .trim()
            .parse::<i64>()
            .map(ParamValue::Int)
            .map_err(|_| wrong("an integer")),
        ParamType::Float => match text.trim().parse::<f64>() {
            Ok(number) if number.is_finite() => Ok(ParamValue::Float(number)),
            _ => Err(wrong("a number")),
        },
        ParamType::Bool => match text.trim() {
            "true" | "1" => Ok(ParamValue::Bool(true)),
            "false" | "0" => Ok(ParamValue::Bool(false)),
            _ => Err(wrong("a bool (true or false)")),
        },
    }
}

/// `min` and `max`: bounds of a number, or of a text's length in characters.
pub(crate) fn check_bounds(spec: &ParamSpec, value: &ParamValue) -> Result<(), String> {
    let (measure, what) = match value {
        ParamValue::Int(integer) => (*integer as f64, "the value"),
        ParamValue::Float(number) => (*number, "the value"),
        ParamValue::Text(text) => (text.chars().count() as f64, "the length"),
        ParamValue::Bool(_) => return Ok(()),
    };
    if let Some(max) = spec.max
        && measure > max
    {
        return Err(format!("{what} {measure} is above the maximum {max}"));
    }
    if let Some(min) = spec.min
        && measure < min
    {
        return Err(format!("{what} {measure} is below the minimum {min}"));
    }
    Ok(())
}

/// The cache key: the query and its parameters after defaults, so that leaving out a
/// defaulted parameter and giving its default share one entry.
pub(crate) fn cache_key(query: &str, values: &[ParamValue]) -> String {
    let mut key = String::with_capacity(query.len() + 16 * values.len());
    key.push_str(query);
    for value in values {
        // Length-prefixed text, so no value can imitate a separator.
        let _ = match value {
            ParamValue::Text(text) => write!(key, "\u{0}t{}:{text}", text.len()),
            ParamValue::Int(integer) => write!(key, "\u{0}i{integer}"),
            ParamValue::Float(number) => write!(key, "\u{0}f{}", number.to_bits()),
            ParamValue::Bool(flag) => write!(key, "\u{0}b{}", u8::from(*flag)),
        };
    }
    key
}

/// Runs the query with its parameters bound positionally, on a read-only connection.
pub(crate) fn run(
    connection: &Connection,
    sql: &str,
    values: &[ParamValue],
) -> Result<Vec<Row>, ReadSideError> {
    let fail = |e: rusqlite::Error| ReadSideError::Storage(e.to_string());
    let mut statement = connection.prepare_cached(sql).map_err(fail)?;
    bind(&mut statement, values).map_err(fail)?;
    let columns: Vec<String> = statement.column_names().map(str::to_owned).collect();
    let mut rows = statement.raw_query();
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(fail)? {
        let mut object = Map::with_capacity(columns.len());
        for (index, column) in columns.iter().enumerate() {
            let value = row.get_ref(index).map_err(fail)?;
            object.insert(column.clone(), to_json(value));
        }
        out.push(object);
    }
    Ok(out)
}

/// Binds `values` to `?1`, `?2`, ….
pub(crate) fn bind(statement: &mut Statement<'_>, values: &[ParamValue]) -> rusqlite::Result<()> {
    for (index, value) in values.iter().enumerate() {
        let position = index + 1;
        match value {
            ParamValue::Text(text) => statement.raw_bind_parameter(position, text.as_str()),
            ParamValue::Int(integer) => statement.raw_bind_parameter(position, integer),
            ParamValue::Float(number) => statement.raw_bind_parameter(position, number),
            ParamValue::Bool(flag) => statement.raw_bind_parameter(position, i64::from(*flag)),
        }?;
    }
    Ok(())
}

/// SQL to JSON: INTEGER and REAL → number, TEXT → string (JSON text stays a string),
/// BLOB → lower-case hex string, NULL → null.
fn to_json(value: ValueRef<'_>) -> Json {
    match value {
        ValueRef::Null => Json::Null,
        ValueRef::Integer(integer) => Json::from(integer),
        ValueRef::Real(number) => {
            serde_json::Number::from_f64(number).map_or(Json::Null, Json::Number)
        }
        ValueRef::Text(bytes) => Json::String(String::from_utf8_lossy(bytes).into_owned()),
        ValueRef::Blob(bytes) => Json::String(bytes.iter().fold(
            String::with_capacity(bytes.len() * 2),
            |mut hex, byte| {
                let _ = write!(hex, "{byte:02x}");
                hex
            },
        )),
    }
}

/// An approximation of the memory a result takes, for the cache's weigher.
pub(crate) fn weight(rows: &[Row]) -> usize {
    fn value_weight(value: &Json) -> usize {
        32 + match value {
            Json::String(text) => text.len(),
            Json::Array(items) => items.iter().map(value_weight).sum(),
            Json::Object(map) => map.iter().map(|(k, v)| k.len() + value_weight(v)).sum(),
            _ => 0,
        }
    }
    rows.iter()
        .map(|row| {
            48 + row
                .iter()
                .map(|(key, value)| 32 + key.len() + value_weight(value))
                .sum::<usize>()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};

    fn plan() -> CompiledQuery {
        let mut params = BTreeMap::new();
        params.insert("customer".to_owned(), ParamSpec::required(ParamType::Text));
        params.insert(
            "limit".to_owned(),
            ParamSpec {
                param_type: ParamType::Int,
                default: Some(ParamValue::Int(50)),
                min: Some(1.0),
                max: Some(500.0),
            },
        );
        params.insert("ratio".to_owned(), ParamSpec::required(ParamType::Float));
        params.insert("open".to_owned(), ParamSpec::required(ParamType::Bool));
        CompiledQuery {
            name: "q".into(),
            sql: "".into(),
            bound: vec![
                "customer".into(),
                "limit".into(),
                "ratio".into(),
                "open".into(),
            ],
            params,
            cache_ttl: None,
            tables: BTreeSet::new(),
        }
    }

    fn given(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn refused(pairs: &[(&str, &str)]) -> (String, String) {
        match parse_params(&plan(), &given(pairs)) {
            Err(ReadSideError::InvalidParameter { name, message }) => (name, message),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn parameters_are_typed_and_defaulted() {
        let values = parse_params(
            &plan(),
            &given(&[("customer", "c1"), ("ratio", "2"), ("open", "true")]),
        )
        .unwrap();
        assert_eq!(
            values,
            [
                ParamValue::Text("c1".into()),
                ParamValue::Int(50),
                ParamValue::Float(2.0),
                ParamValue::Bool(true)
            ]
        );
    }

    #[test]
    fn each_refusal_names_the_parameter() {
        let ok = [("customer", "c"), ("ratio", "1.5"), ("open", "0")];
        let with = |extra: (&'static str, &'static str)| {
            let mut pairs: Vec<(&str, &str)> = ok.to_vec();
            pairs.retain(|(k, _)| *k != extra.0);
            pairs.push(extra);
            pairs
        };
        assert_eq!(refused(&with(("nope", "1"))).0, "nope");
        assert!(refused(&with(("nope", "1"))).1.contains("unknown"));
        assert_eq!(refused(&ok[1..]).0, "customer");
        assert!(refused(&ok[1..]).1.contains("missing"));
        let (name, message) = refused(&with(("limit", "ten")));
        assert_eq!(
            (name.as_str(), message.contains("integer")),
            ("limit", true)
        );
        let (name, message) = refused(&with(("limit", "501")));
        assert_eq!((name.as_str(), message.contains("above")), ("limit", true));
        assert!(refused(&with(("limit", "0"))).1.contains("below"));
        assert_eq!(refused(&with(("ratio", "NaN"))).0, "ratio");
        assert_eq!(refused(&with(("open", "yes"))).0, "open");
    }

    #[test]
    fn cache_keys_cannot_be_imitated() {
        let a = cache_key("q", &[ParamValue::Text("a\u{0}t1:b".into())]);
        let b = cache_key(
            "q",
            &[ParamValue::Text("a".into()), ParamValue::Text("b".into())],
        );
        assert_ne!(a, b);
        assert_ne!(
            cache_key("q", &[ParamValue::Int(1)]),
            cache_key("q", &[ParamValue::Text("1".into())])
        );
    }
}
