//! The `[[projections]]` and `[[queries]]` configuration (PRODUCT.md §3), its
//! validation, and what it compiles into: statements whose placeholders became
//! positional parameters, each with the event field or query parameter it binds.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use cairn_core::{EventFilter, EventType, StreamName, Tag};
use serde::Deserialize;
use serde::de::{self, MapAccess, Visitor};
use sha2::{Digest, Sha256};

use crate::ReadSideError;
use crate::metrics::StatementMetrics;
use crate::sql::{self, Dialect, Rewritten};

/// One projection: SQL run inside the read-model database for each matching event.
///
/// ```toml
/// [[projections]]
/// name = "orders"
/// filter = { category = "order" }
/// setup = ["CREATE TABLE IF NOT EXISTS orders (id TEXT PRIMARY KEY, status TEXT)"]
/// teardown = ["DROP TABLE IF EXISTS orders"]
/// [projections.on]
/// OrderPlaced = ["INSERT INTO orders VALUES (:data.id, 'placed')"]
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectionConfig {
    pub name: String,
    /// Which events the projection sees; empty means every event.
    #[serde(default)]
    pub filter: FilterConfig,
    /// Run once, when the projection is first created (and on rebuild, after teardown).
    #[serde(default)]
    pub setup: Vec<String>,
    /// Run by rebuild before setup.
    #[serde(default)]
    pub teardown: Vec<String>,
    /// Event type → statements run for each event of that type, in order.
    #[serde(default)]
    pub on: BTreeMap<String, Vec<String>>,
}

/// Which events a projection sees: `category` exact, `types` any-of, `tags` all-of.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig {
    pub category: Option<String>,
    #[serde(default)]
    pub types: Vec<String>,
    #[serde(default)]
    pub tags: Vec<String>,
}

/// A named, parameterised, read-only SQL query over the read models.
///
/// ```toml
/// [[queries]]
/// name = "orders_by_customer"
/// sql = "SELECT id FROM orders WHERE customer = :customer LIMIT :limit"
/// params = { customer = "text", limit = { type = "int", default = 50, max = 500 } }
/// cache_ttl = "5s"
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryConfig {
    pub name: String,
    pub sql: String,
    #[serde(default)]
    pub params: BTreeMap<String, ParamSpec>,
    /// How long a cached result may be served even after its projections advanced
    /// ("5s", "500ms"). Without it, a result is served from the cache only while its
    /// projections have not changed.
    pub cache_ttl: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ParamType {
    Text,
    Int,
    Float,
    Bool,
}

impl ParamType {
    fn as_str(self) -> &'static str {
        match self {
            ParamType::Text => "text",
            ParamType::Int => "int",
            ParamType::Float => "float",
            ParamType::Bool => "bool",
        }
    }
}

/// A query parameter: `"text"` (required), or `{ type, default?, min?, max? }`.
/// For `text`, `min` and `max` bound the length in characters.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamSpec {
    pub param_type: ParamType,
    /// The value used when the parameter is absent; without one it is required.
    pub default: Option<ParamValue>,
    pub min: Option<f64>,
    pub max: Option<f64>,
}

impl ParamSpec {
    pub fn required(param_type: ParamType) -> Self {
        Self {
            param_type,
            default: None,
            min: None,
            max: None,
        }
    }
}

/// A parameter's value, typed.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum ParamValue {
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FullParamSpec {
    #[serde(rename = "type")]
    param_type: ParamType,
    default: Option<ParamValue>,
    min: Option<f64>,
    max: Option<f64>,
}

impl<'de> Deserialize<'de> for ParamSpec {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SpecVisitor;
        impl<'de> Visitor<'de> for SpecVisitor {
            type Value = ParamSpec;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    r#""text", "int", "float", "bool" or a table { type, default, min, max }"#,
                )
            }

            fn visit_str<E: de::Error>(self, value: &str) -> Result<ParamSpec, E> {
                let param_type = ParamType::deserialize(de::value::StrDeserializer::new(value))?;
                Ok(ParamSpec::required(param_type))
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<ParamSpec, A::Error> {
                let full = FullParamSpec::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(ParamSpec {
                    param_type: full.param_type,
                    default: full.default,
                    min: full.min,
                    max: full.max,
                })
            }
        }
        deserializer.deserialize_any(SpecVisitor)
    }
}

/// Checks projections and queries as [`ReadSide::start`](crate::ReadSide::start) will,
/// without touching any database: names, placeholders, parameters, durations.
pub fn validate(
    projections: &[ProjectionConfig],
    queries: &[QueryConfig],
) -> Result<(), ReadSideError> {
    compile(projections, queries, Dialect::Sqlite).map(drop)
}

/// Parses "500ms", "5s", "2m", "1h".
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as \"500ms\" or \"5s\""))?;
    let duration = match unit {
        "ms" => Duration::from_millis(number),
        "s" => Duration::from_secs(number),
        "m" => Duration::from_secs(number.saturating_mul(60)),
        "h" => Duration::from_secs(number.saturating_mul(3600)),
        _ => {
            return Err(format!(
                "{text:?} has no known unit; use ms, s, m or h (\"500ms\", \"5s\")"
            ));
        }
    };
    Ok(duration)
}

/// A value read from an event for a statement parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum EventField {
    /// `:data` (the whole JSON) or `:data.a.b.0`.
    Data(Vec<String>),
    /// `:meta` or `:meta.a.b`.
    Meta(Vec<String>),
    Stream,
    Version,
    Position,
    Type,
    Id,
    RecordedAt,
}

impl EventField {
    fn parse(name: &str) -> Option<Self> {
        let mut parts = name.split('.');
        let head = parts.next()?;
        let path: Vec<String> = parts.map(str::to_owned).collect();
        let field = match head {
            "data" => EventField::Data(path),
            "meta" => EventField::Meta(path),
            _ if !path.is_empty() => return None,
            "stream" => EventField::Stream,
            "version" => EventField::Version,
            "position" => EventField::Position,
            "type" => EventField::Type,
            "id" => EventField::Id,
            "recorded_at" => EventField::RecordedAt,
            _ => return None,
        };
        Some(field)
    }
}

/// One `on` statement, ready to prepare and bind.
#[derive(Debug, Clone)]
pub(crate) struct EventStatement {
    pub sql: String,
    pub fields: Vec<EventField>,
    /// The placeholders' names (`data.id`), in binding order: what the slow-query log
    /// shows instead of the values.
    pub names: Vec<String>,
}

/// The statements for one event type.
#[derive(Debug, Clone)]
pub(crate) struct Handler {
    pub statements: Vec<EventStatement>,
    pub needs_data: bool,
    pub needs_meta: bool,
    /// Its metrics' keys, built once.
    pub metrics: StatementMetrics,
}

/// A projection, validated and compiled.
#[derive(Debug, Clone)]
pub(crate) struct ProjectionPlan {
    pub config: ProjectionConfig,
    /// Hex SHA-256 of the definition; a change is reported, rebuild is the remedy.
    pub definition_hash: String,
    pub filter: EventFilter,
    pub handlers: HashMap<String, Handler>,
    /// Tables and views its `setup` creates, lower-cased.
    pub tables: BTreeSet<String>,
}

/// A named query, validated and compiled.
#[derive(Debug, Clone)]
pub(crate) struct CompiledQuery {
    pub name: String,
    /// The SQL with `?N` (SQLite) or `$N` (PostgreSQL) parameters.
    pub sql: Arc<str>,
    /// The parameter bound to `?{i + 1}`, in that order.
    pub bound: Vec<String>,
    pub params: BTreeMap<String, ParamSpec>,
    pub cache_ttl: Option<Duration>,
    /// The tables the SQL reads (after `FROM` or `JOIN`), lower-cased: how the
    /// projections it depends on are found.
    pub tables: BTreeSet<String>,
}

/// Compiles the configuration for a read-model database: placeholders become `?N`
/// (SQLite) or `$N` (PostgreSQL); every other check is the same for both.
pub(crate) fn compile(
    projections: &[ProjectionConfig],
    queries: &[QueryConfig],
    dialect: Dialect,
) -> Result<(Vec<ProjectionPlan>, Vec<CompiledQuery>), ReadSideError> {
    let mut seen = BTreeSet::new();
    let mut projection_plans = Vec::with_capacity(projections.len());
    for projection in projections {
        check_name("projection", &projection.name)?;
        if !seen.insert(projection.name.as_str()) {
            return Err(config_error(format!(
                "projection {:?} is defined twice",
                projection.name
            )));
        }
        projection_plans.push(compile_projection(projection, dialect)?);
    }
    let mut seen = BTreeSet::new();
    let mut query_plans = Vec::with_capacity(queries.len());
    for query in queries {
        check_name("query", &query.name)?;
        if !seen.insert(query.name.as_str()) {
            return Err(config_error(format!(
                "query {:?} is defined twice",
                query.name
            )));
        }
        query_plans.push(compile_query(query, dialect)?);
    }
    Ok((projection_plans, query_plans))
}

fn config_error(message: String) -> ReadSideError {
    ReadSideError::Config(message)
}

fn check_name(what: &str, name: &str) -> Result<(), ReadSideError> {
    StreamName::parse(name).map(drop).map_err(|e| {
        config_error(format!(
            "{what} name {name:?} is invalid: {}",
            e.message.replace("stream name", "the name")
        ))
    })
}

fn compile_projection(
    config: &ProjectionConfig,
    dialect: Dialect,
) -> Result<ProjectionPlan, ReadSideError> {
    let name = &config.name;
    let fail = |message: String| config_error(format!("projection {name:?}: {message}"));
    if let Some(category) = &config.filter.category
        && (category.is_empty() || category.contains('-'))
    {
        return Err(fail(format!(
            "filter.category {category:?} must be a non-empty stream category (the part of a stream name before the first '-')"
        )));
    }
    for event_type in &config.filter.types {
        EventType::validate(event_type)
            .map_err(|e| fail(format!("filter.types: {}", e.message)))?;
    }
    Tag::validate_all(&config.filter.tags)
        .map_err(|e| fail(format!("filter.tags: {}", e.message)))?;
    if config.on.is_empty() {
        return Err(fail(
            "has no [on] statements; it would never change its read model".into(),
        ));
    }
    for (what, statements) in [("setup", &config.setup), ("teardown", &config.teardown)] {
        for (index, statement) in statements.iter().enumerate() {
            let rewritten = sql::rewrite(statement, dialect)
                .map_err(|e| fail(format!("{what} statement {}: {e}", index + 1)))?;
            if let Some(placeholder) = rewritten.names.first() {
                return Err(fail(format!(
                    "{what} statement {} uses :{placeholder}; placeholders belong in [on] statements",
                    index + 1
                )));
            }
        }
    }
    let mut handlers = HashMap::new();
    for (event_type, statements) in &config.on {
        EventType::validate(event_type)
            .map_err(|e| fail(format!("on.{event_type}: {}", e.message)))?;
        if !config.filter.types.is_empty() && !config.filter.types.contains(event_type) {
            return Err(fail(format!(
                "on.{event_type} can never run: filter.types does not include {event_type:?}"
            )));
        }
        let mut handler = Handler {
            statements: Vec::with_capacity(statements.len()),
            needs_data: false,
            needs_meta: false,
            metrics: StatementMetrics::new(name, event_type),
        };
        for (index, statement) in statements.iter().enumerate() {
            let where_ = || format!("on.{event_type} statement {}", index + 1);
            let Rewritten { sql, names } =
                sql::rewrite(statement, dialect).map_err(|e| fail(format!("{}: {e}", where_())))?;
            let fields = names
                .iter()
                .map(|placeholder| {
                    EventField::parse(placeholder).ok_or_else(|| {
                        fail(format!(
                            "{}: unknown placeholder :{placeholder}; use :data.<path>, :meta.<path>, \
                             :stream, :version, :position, :type, :id or :recorded_at",
                            where_()
                        ))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            handler.needs_data |= fields.iter().any(|f| matches!(f, EventField::Data(_)));
            handler.needs_meta |= fields.iter().any(|f| matches!(f, EventField::Meta(_)));
            handler
                .statements
                .push(EventStatement { sql, fields, names });
        }
        handlers.insert(event_type.clone(), handler);
    }
    let tables: BTreeSet<String> = config
        .setup
        .iter()
        .flat_map(|statement| sql::created_tables(statement))
        .collect();
    if let Some(reserved) = tables.iter().find(|table| table.starts_with("cairn_")) {
        return Err(fail(format!(
            "setup creates {reserved:?}; names starting with cairn_ are Cairn's own"
        )));
    }
    Ok(ProjectionPlan {
        config: config.clone(),
        definition_hash: definition_hash(config),
        filter: EventFilter {
            category: config.filter.category.clone(),
            types: config.filter.types.clone(),
            tags: config.filter.tags.clone(),
            stream: None,
        },
        handlers,
        tables,
    })
}

fn compile_query(config: &QueryConfig, dialect: Dialect) -> Result<CompiledQuery, ReadSideError> {
    let name = &config.name;
    let fail = |message: String| config_error(format!("query {name:?}: {message}"));
    let Rewritten { sql, names } = sql::rewrite(&config.sql, dialect).map_err(fail)?;
    let first_word = sql::first_word(&config.sql).map(|w| w.to_ascii_lowercase());
    if !matches!(first_word.as_deref(), Some("select" | "with" | "values")) {
        return Err(fail(
            "a query must be a single SELECT (or WITH … SELECT, or VALUES)".into(),
        ));
    }
    for placeholder in &names {
        if placeholder.contains('.') {
            return Err(fail(format!(
                ":{placeholder} is not a parameter name; query parameters are plain names such as :customer"
            )));
        }
        if !config.params.contains_key(placeholder) {
            return Err(fail(format!(
                "the SQL uses :{placeholder}, which is not declared in params"
            )));
        }
    }
    for (param, spec) in &config.params {
        if !names.contains(param) {
            return Err(fail(format!(
                "parameter {param:?} is declared but the SQL never uses :{param}"
            )));
        }
        if matches!(param.as_str(), "min_position" | "wait_ms") {
            return Err(fail(format!(
                "parameter {param:?} is reserved (it controls consistency, not the query)"
            )));
        }
        check_spec(spec).map_err(|e| fail(format!("parameter {param:?}: {e}")))?;
    }
    let cache_ttl = match &config.cache_ttl {
        None => None,
        Some(text) => {
            let ttl = parse_duration(text).map_err(|e| fail(format!("cache_ttl: {e}")))?;
            if ttl.is_zero() {
                return Err(fail(
                    "cache_ttl must be longer than zero; leave it out to cache until the projections advance".into(),
                ));
            }
            Some(ttl)
        }
    };
    Ok(CompiledQuery {
        name: name.clone(),
        sql: sql.into(),
        bound: names,
        params: config.params.clone(),
        cache_ttl,
        tables: sql::referenced_tables(&config.sql),
    })
}

fn check_spec(spec: &ParamSpec) -> Result<(), String> {
    if spec.param_type == ParamType::Bool && (spec.min.is_some() || spec.max.is_some()) {
        return Err("a bool has no min or max".into());
    }
    if let (Some(min), Some(max)) = (spec.min, spec.max)
        && min > max
    {
        return Err(format!("min {min} is above max {max}"));
    }
    if let Some(default) = &spec.default {
        let value = match (spec.param_type, default) {
            (ParamType::Int, ParamValue::Int(_))
            | (ParamType::Float, ParamValue::Float(_))
            | (ParamType::Bool, ParamValue::Bool(_))
            | (ParamType::Text, ParamValue::Text(_)) => default.clone(),
            (ParamType::Float, ParamValue::Int(i)) => ParamValue::Float(*i as f64),
            _ => {
                return Err(format!(
                    "the default {default:?} is not a {}",
                    spec.param_type.as_str()
                ));
            }
        };
        crate::query::check_bounds(spec, &value)
            .map_err(|e| format!("the default is out of bounds: {e}"))?;
    }
    Ok(())
}

/// A stable hash of everything that decides what a projection writes.
fn definition_hash(config: &ProjectionConfig) -> String {
    let canonical = serde_json::json!({
        "filter": {
            "category": config.filter.category,
            "types": config.filter.types,
            "tags": config.filter.tags,
        },
        "setup": config.setup,
        "teardown": config.teardown,
        "on": config.on,
    });
    let digest = Sha256::digest(canonical.to_string().as_bytes());
    digest.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn projection(on: &[(&str, &str)]) -> ProjectionConfig {
        ProjectionConfig {
            name: "p".into(),
            filter: FilterConfig::default(),
            setup: vec!["CREATE TABLE t (a)".into()],
            teardown: vec![],
            on: on
                .iter()
                .map(|(k, v)| ((*k).to_owned(), vec![(*v).to_owned()]))
                .collect(),
        }
    }

    fn query(sql: &str, params: &[(&str, ParamSpec)]) -> QueryConfig {
        QueryConfig {
            name: "q".into(),
            sql: sql.into(),
            params: params
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
            cache_ttl: None,
        }
    }

    fn error(projections: &[ProjectionConfig], queries: &[QueryConfig]) -> String {
        match validate(projections, queries) {
            Err(ReadSideError::Config(message)) => message,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn every_allowed_placeholder_is_accepted() {
        let p = projection(&[(
            "E",
            "INSERT INTO t VALUES (:data, :data.a.0, :meta, :meta.x, :stream, :version, :position, :type, :id, :recorded_at)",
        )]);
        let (plans, _) = compile(&[p], &[], Dialect::Sqlite).unwrap();
        let handler = &plans[0].handlers["E"];
        assert!(handler.needs_data && handler.needs_meta);
        assert_eq!(handler.statements[0].fields.len(), 10);
    }

    #[test]
    fn bad_placeholders_are_named() {
        let message = error(
            &[projection(&[("E", "INSERT INTO t VALUES (:dat.a)")])],
            &[],
        );
        assert!(message.contains("projection \"p\"") && message.contains(":dat.a"));
        let message = error(
            &[projection(&[("E", "INSERT INTO t VALUES (:stream.x)")])],
            &[],
        );
        assert!(message.contains(":stream.x"), "{message}");
        let message = error(&[projection(&[("E", "INSERT INTO t VALUES (?)")])], &[]);
        assert!(message.contains("not supported"), "{message}");
    }

    #[test]
    fn names_must_be_valid_and_unique() {
        let mut bad = projection(&[("E", "SELECT 1")]);
        bad.name = "a b".into();
        assert!(error(&[bad], &[]).contains("name \"a b\" is invalid"));
        let p = projection(&[("E", "SELECT 1")]);
        assert!(error(&[p.clone(), p], &[]).contains("defined twice"));
        let q = query("SELECT 1", &[]);
        assert!(error(&[], &[q.clone(), q]).contains("query \"q\" is defined twice"));
    }

    #[test]
    fn query_parameters_must_match_the_sql() {
        let text = ParamSpec::required(ParamType::Text);
        let message = error(&[], &[query("SELECT :a, :b", &[("a", text.clone())])]);
        assert!(message.contains(":b") && message.contains("not declared"));
        let message = error(
            &[],
            &[query("SELECT :a", &[("a", text.clone()), ("c", text)])],
        );
        assert!(message.contains("\"c\"") && message.contains("never uses"));
    }

    #[test]
    fn defaults_and_bounds_are_checked() {
        let spec = ParamSpec {
            param_type: ParamType::Int,
            default: Some(ParamValue::Int(600)),
            min: None,
            max: Some(500.0),
        };
        let message = error(&[], &[query("SELECT :n", &[("n", spec)])]);
        assert!(message.contains("out of bounds"), "{message}");
        let spec = ParamSpec {
            param_type: ParamType::Int,
            default: Some(ParamValue::Text("x".into())),
            min: None,
            max: None,
        };
        assert!(error(&[], &[query("SELECT :n", &[("n", spec)])]).contains("not a int"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("5").unwrap_err().contains("unit"));
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("1.5s").is_err());
        let mut q = query("SELECT 1", &[]);
        q.cache_ttl = Some("soon".into());
        assert!(error(&[], &[q]).contains("cache_ttl"));
    }

    #[test]
    fn the_hash_follows_the_definition() {
        let a = projection(&[("E", "SELECT 1")]);
        let mut b = a.clone();
        assert_eq!(definition_hash(&a), definition_hash(&b));
        b.on.insert("F".into(), vec!["SELECT 2".into()]);
        assert_ne!(definition_hash(&a), definition_hash(&b));
    }
}
