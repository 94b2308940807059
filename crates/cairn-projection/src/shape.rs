//! What a statement asks of each table, read from its SQL by a small heuristic (not a
//! SQL parser), for index suggestions:
//!
//! - the tables it names after `FROM`, `JOIN`, `UPDATE` and `DELETE FROM`, with their
//!   aliases;
//! - in `WHERE` and `ON`: columns compared with `=`, `==`, `IS`, `IN` (equality) or
//!   `<`, `<=`, `>`, `>=`, `BETWEEN` (range) to a parameter, a literal, a function call,
//!   a subquery or a column of another table (a join); conditions in a `WHERE` or `ON`
//!   that also holds an `OR` are marked, since one index cannot serve both sides;
//! - the `ORDER BY` and `GROUP BY` terms that are plain columns, with their direction.
//!
//! Anything else (`LIKE`, `!=`, expressions over columns, window definitions) is left
//! out: a suggestion is made only from what is certain to be a plain column.

use std::collections::BTreeMap;

use rusqlite::Connection;

use crate::sql::{dollar_quote_end, is_name_byte, is_word_byte, is_word_start, skip_quoted};

/// A token of the heuristic: literals and parameters are only `Value`s.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Lex<'a> {
    Word(&'a str),
    /// A quoted identifier, unquoted.
    Quoted(String),
    /// A literal or a parameter.
    Value,
    Op(&'a str),
    Open,
    Close,
    Comma,
    Dot,
    Other,
}

impl Lex<'_> {
    fn is_word(&self, keyword: &str) -> bool {
        matches!(self, Lex::Word(word) if word.eq_ignore_ascii_case(keyword))
    }

    /// The identifier this token names, lower-cased (bare words that are keywords
    /// included: the caller knows the position).
    fn identifier(&self) -> Option<String> {
        match self {
            Lex::Word(word) => Some(word.to_ascii_lowercase()),
            Lex::Quoted(name) => Some(name.to_ascii_lowercase()),
            _ => None,
        }
    }
}

fn lex(sql: &str) -> Vec<Lex<'_>> {
    let bytes = sql.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let byte = bytes[i];
        let next = bytes.get(i + 1).copied();
        match byte {
            b'\'' => {
                i = skip_quoted(bytes, i, b'\'');
                out.push(Lex::Value);
            }
            b'"' | b'`' => {
                let end = skip_quoted(bytes, i, byte);
                let inner = &sql[i + 1..end.saturating_sub(1).max(i + 1)];
                let quote = if byte == b'"' { "\"" } else { "`" };
                out.push(Lex::Quoted(inner.replace(&quote.repeat(2), quote)));
                i = end;
            }
            b'[' => {
                let end = bytes[i..]
                    .iter()
                    .position(|b| *b == b']')
                    .map_or(bytes.len(), |p| i + p + 1);
                out.push(Lex::Quoted(
                    sql[i + 1..end.saturating_sub(1).max(i + 1)].to_owned(),
                ));
                i = end;
            }
            b'-' if next == Some(b'-') => {
                i = bytes[i..]
                    .iter()
                    .position(|b| *b == b'\n')
                    .map_or(bytes.len(), |p| i + p + 1);
            }
            b'/' if next == Some(b'*') => {
                i = sql[i + 2..]
                    .find("*/")
                    .map_or(bytes.len(), |p| i + 2 + p + 2);
            }
            b'?' => {
                i += 1;
                while i < bytes.len() && bytes[i].is_ascii_digit() {
                    i += 1;
                }
                out.push(Lex::Value);
            }
            b':' if next == Some(b':') => {
                // PostgreSQL's cast: `customer::text` reads as `customer`.
                i += 2;
                while i < bytes.len() && is_name_byte(bytes[i]) {
                    i += 1;
                }
            }
            b'$' if next.is_some_and(|b| b.is_ascii_digit()) => {
                // PostgreSQL's positional parameter.
                i += 1;
                while i < bytes.len() && bytes[i].is_ascii_digit() {
                    i += 1;
                }
                out.push(Lex::Value);
            }
            b'$' if dollar_quote_end(bytes, i).is_some() => {
                i = dollar_quote_end(bytes, i).unwrap_or(bytes.len());
                out.push(Lex::Value);
            }
            b':' | b'@' | b'$' if next.is_some_and(is_word_start) => {
                i += 1;
                while i < bytes.len()
                    && (is_name_byte(bytes[i])
                        || (bytes[i] == b'.' && bytes.get(i + 1).is_some_and(|b| is_name_byte(*b))))
                {
                    i += 1;
                }
                out.push(Lex::Value);
            }
            b'x' | b'X' if next == Some(b'\'') => {
                i = skip_quoted(bytes, i + 1, b'\'');
                out.push(Lex::Value);
            }
            _ if is_word_start(byte) => {
                let start = i;
                while i < bytes.len() && is_word_byte(bytes[i]) {
                    i += 1;
                }
                out.push(Lex::Word(&sql[start..i]));
            }
            _ if byte.is_ascii_digit()
                || (byte == b'.' && next.is_some_and(|b| b.is_ascii_digit())) =>
            {
                while i < bytes.len() {
                    let b = bytes[i];
                    let exponent_sign = matches!(b, b'+' | b'-')
                        && matches!(bytes[i - 1], b'e' | b'E')
                        && !sql[..i].starts_with("0x");
                    if b.is_ascii_alphanumeric() || b == b'.' || exponent_sign {
                        i += 1;
                    } else {
                        break;
                    }
                }
                out.push(Lex::Value);
            }
            _ if byte.is_ascii_whitespace() => i += 1,
            b'(' => {
                out.push(Lex::Open);
                i += 1;
            }
            b')' => {
                out.push(Lex::Close);
                i += 1;
            }
            b',' => {
                out.push(Lex::Comma);
                i += 1;
            }
            b'.' => {
                out.push(Lex::Dot);
                i += 1;
            }
            b'=' | b'<' | b'>' | b'!' | b'|' | b'+' | b'-' | b'*' | b'/' | b'%' | b'&' | b'~' => {
                let two = sql.get(i..i + 2).unwrap_or("");
                let length =
                    if ["==", "<=", ">=", "<>", "!=", "||", "<<", ">>", "->"].contains(&two) {
                        if sql.get(i..i + 3) == Some("->>") {
                            3
                        } else {
                            2
                        }
                    } else {
                        1
                    };
                out.push(Lex::Op(&sql[i..i + length]));
                i += length;
            }
            _ => {
                out.push(Lex::Other);
                i += 1;
            }
        }
    }
    out
}

/// Words that end a table reference instead of being its alias.
const NOT_AN_ALIAS: &[&str] = &[
    "where",
    "join",
    "inner",
    "left",
    "right",
    "full",
    "outer",
    "cross",
    "natural",
    "on",
    "using",
    "group",
    "order",
    "limit",
    "offset",
    "union",
    "except",
    "intersect",
    "window",
    "set",
    "from",
    "select",
    "returning",
    "indexed",
    "not",
    "values",
    "having",
    "and",
    "or",
    "do",
];

/// Words that stand for a constant value.
const CONSTANTS: &[&str] = &[
    "null",
    "true",
    "false",
    "current_date",
    "current_time",
    "current_timestamp",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Clause {
    Select,
    From,
    On,
    Where,
    Set,
    GroupBy,
    Having,
    OrderBy,
    Limit,
    Other,
}

/// A table the statement names, lower-cased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Source {
    pub table: String,
    pub alias: Option<String>,
}

/// `qualifier.name` or `name`, lower-cased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ColumnRef {
    pub qualifier: Option<String>,
    pub name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Comparison {
    Equality,
    Range,
}

/// What a column is compared with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Against {
    /// A parameter, a literal, a function call or a subquery.
    Value,
    /// Another column (a join, when it belongs to another table).
    Column(ColumnRef),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Condition {
    pub column: ColumnRef,
    pub comparison: Comparison,
    pub against: Against,
    /// The `WHERE` or `ON` it stands in also holds an `OR`.
    pub disjunctive: bool,
}

/// An `ORDER BY` or `GROUP BY` term: a plain column or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Term {
    pub column: Option<ColumnRef>,
    pub descending: bool,
}

/// What the heuristic found in one statement.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Shape {
    pub sources: Vec<Source>,
    pub conditions: Vec<Condition>,
    pub order_by: Vec<Term>,
    pub group_by: Vec<Term>,
}

/// Per token: its clause, the region (one clause's stretch of tokens, nested
/// parentheses included) it belongs to, and its parenthesis depth.
#[derive(Debug, Clone, Copy)]
struct Place {
    clause: Clause,
    region: usize,
    depth: usize,
}

impl Shape {
    pub(crate) fn of(sql: &str) -> Shape {
        let tokens = lex(sql);
        let mut shape = Shape::default();
        let places = shape.walk(&tokens);
        shape.find_conditions(&tokens, &places);
        shape.order_by = terms(&tokens, &places, Clause::OrderBy);
        shape.group_by = terms(&tokens, &places, Clause::GroupBy);
        shape
    }

    /// Assigns each token its place, and collects the table references on the way.
    fn walk(&mut self, tokens: &[Lex<'_>]) -> Vec<Place> {
        let mut places = Vec::with_capacity(tokens.len());
        // Per depth: the clause, the region, and whether it is a window definition
        // (`OVER (…)`, `FILTER (…)`), where clauses are not followed.
        let mut stack: Vec<(Clause, usize, bool)> = vec![(Clause::Other, 0, false)];
        let mut regions = 0;
        let mut expect_table = false;
        let mut i = 0;
        while i < tokens.len() {
            let depth = stack.len() - 1;
            let (clause, region, frozen) = stack[depth];
            let here = Place {
                clause,
                region,
                depth,
            };
            let token = &tokens[i];
            match token {
                Lex::Open => {
                    places.push(here);
                    let window =
                        i > 0 && (tokens[i - 1].is_word("over") || tokens[i - 1].is_word("filter"));
                    stack.push((clause, region, frozen || window));
                    expect_table = false;
                    i += 1;
                    continue;
                }
                Lex::Close => {
                    if stack.len() > 1 {
                        stack.pop();
                    }
                    let (clause, region, _) = stack[stack.len() - 1];
                    places.push(Place {
                        clause,
                        region,
                        depth: stack.len() - 1,
                    });
                    expect_table = false;
                    i += 1;
                    continue;
                }
                // `FROM a, b` and `a JOIN b ON …, c`.
                Lex::Comma if !frozen && matches!(clause, Clause::From | Clause::On) => {
                    stack[depth].0 = Clause::From;
                    places.push(Place {
                        clause: Clause::From,
                        ..here
                    });
                    expect_table = true;
                    i += 1;
                    continue;
                }
                _ => {}
            }
            let word = match token {
                Lex::Word(word) if !frozen => Some(word.to_ascii_lowercase()),
                _ => None,
            };
            let next_is = |keyword: &str| tokens.get(i + 1).is_some_and(|t| t.is_word(keyword));
            let new_clause = match word.as_deref() {
                Some("select") => Some(Clause::Select),
                Some("from" | "join") => Some(Clause::From),
                Some("on") if next_is("conflict") => Some(Clause::Other),
                Some("on") => Some(Clause::On),
                Some("where") => Some(Clause::Where),
                Some("group") if next_is("by") => Some(Clause::GroupBy),
                Some("order") if next_is("by") => Some(Clause::OrderBy),
                Some("having") => Some(Clause::Having),
                Some("limit" | "offset") => Some(Clause::Limit),
                Some("set") => Some(Clause::Set),
                Some(
                    "values" | "union" | "except" | "intersect" | "returning" | "window" | "into"
                    | "using" | "do" | "update" | "delete" | "insert" | "replace",
                ) => Some(Clause::Other),
                _ => None,
            };
            if let Some(new_clause) = new_clause {
                regions += 1;
                let new_region = regions;
                stack[depth] = (new_clause, new_region, frozen);
                places.push(Place {
                    clause: new_clause,
                    region: new_region,
                    depth,
                });
                expect_table = new_clause == Clause::From;
                i += 1;
                // `UPDATE [OR action] table`, but not `DO UPDATE` of an upsert.
                if word.as_deref() == Some("update") && !(i > 1 && tokens[i - 2].is_word("do")) {
                    if tokens.get(i).is_some_and(|t| t.is_word("or")) {
                        for _ in i..(i + 2).min(tokens.len()) {
                            places.push(Place {
                                clause: Clause::Other,
                                region,
                                depth,
                            });
                        }
                        i += 2;
                    }
                    let place = Place {
                        clause: Clause::Other,
                        region,
                        depth,
                    };
                    self.table_reference(tokens, &mut i, &mut places, place);
                }
                continue;
            }
            if expect_table && matches!(token, Lex::Word(_) | Lex::Quoted(_)) {
                self.table_reference(tokens, &mut i, &mut places, here);
                expect_table = false;
                continue;
            }
            expect_table = false;
            places.push(here);
            i += 1;
        }
        places
    }

    /// `[schema.]name [[AS] alias]` at `*i`; a table-valued function (`name(`) is no
    /// table. Moves `*i` past it, placing its tokens in `clause`.
    fn table_reference(
        &mut self,
        tokens: &[Lex<'_>],
        i: &mut usize,
        places: &mut Vec<Place>,
        place: Place,
    ) {
        let start = *i;
        let Some(mut table) = tokens.get(*i).and_then(Lex::identifier) else {
            return;
        };
        *i += 1;
        if tokens.get(*i) == Some(&Lex::Dot)
            && let Some(name) = tokens.get(*i + 1).and_then(Lex::identifier)
        {
            table = name;
            *i += 2;
        }
        let function = tokens.get(*i) == Some(&Lex::Open);
        let mut alias = None;
        if !function {
            if tokens.get(*i).is_some_and(|t| t.is_word("as")) {
                alias = tokens.get(*i + 1).and_then(Lex::identifier);
                *i += 2;
            } else {
                match tokens.get(*i) {
                    Some(Lex::Quoted(name)) => {
                        alias = Some(name.to_ascii_lowercase());
                        *i += 1;
                    }
                    Some(Lex::Word(word))
                        if !NOT_AN_ALIAS.iter().any(|k| word.eq_ignore_ascii_case(k)) =>
                    {
                        alias = Some(word.to_ascii_lowercase());
                        *i += 1;
                    }
                    _ => {}
                }
            }
            self.sources.push(Source { table, alias });
        }
        for _ in start..(*i).min(tokens.len()) {
            places.push(place);
        }
    }

    fn find_conditions(&mut self, tokens: &[Lex<'_>], places: &[Place]) {
        let disjunctive_regions: Vec<usize> = tokens
            .iter()
            .zip(places)
            .filter(|(token, place)| {
                token.is_word("or") && matches!(place.clause, Clause::Where | Clause::On)
            })
            .map(|(_, place)| place.region)
            .collect();
        for (i, token) in tokens.iter().enumerate() {
            let place = places[i];
            if !matches!(place.clause, Clause::Where | Clause::On) {
                continue;
            }
            let negated = i > 0 && tokens[i - 1].is_word("not");
            let comparison = match token {
                Lex::Op("=" | "==") => Comparison::Equality,
                Lex::Op("<" | "<=" | ">" | ">=") => Comparison::Range,
                Lex::Word(_) if token.is_word("in") && !negated => Comparison::Equality,
                Lex::Word(_) if token.is_word("between") && !negated => Comparison::Range,
                Lex::Word(_)
                    if token.is_word("is")
                        && !tokens.get(i + 1).is_some_and(|t| t.is_word("not")) =>
                {
                    Comparison::Equality
                }
                _ => continue,
            };
            let disjunctive = disjunctive_regions.contains(&place.region);
            let left = column_ending_at(tokens, i);
            let right = operand_starting_at(tokens, i + 1);
            let mut push = |column: ColumnRef, against: Against| {
                self.conditions.push(Condition {
                    column,
                    comparison,
                    against,
                    disjunctive,
                });
            };
            match (left, right) {
                (Some(left), Some(Against::Column(right))) => {
                    push(left.clone(), Against::Column(right.clone()));
                    push(right, Against::Column(left));
                }
                (Some(left), Some(Against::Value)) => push(left, Against::Value),
                (None, Some(Against::Column(right))) if i > 0 && is_value_end(tokens, i - 1) => {
                    push(right, Against::Value);
                }
                _ => {}
            }
        }
    }
}

/// The plain column that ends just before `op` (`a.b =`, `b =`), if what precedes it
/// does not make it part of a larger expression.
fn column_ending_at(tokens: &[Lex<'_>], op: usize) -> Option<ColumnRef> {
    let name_at = op.checked_sub(1)?;
    let name = column_name(&tokens[name_at])?;
    let (qualifier, start) = if name_at >= 2 && tokens[name_at - 1] == Lex::Dot {
        (Some(tokens[name_at - 2].identifier()?), name_at - 2)
    } else {
        (None, name_at)
    };
    let clean_start = start == 0
        || matches!(tokens[start - 1], Lex::Open | Lex::Comma)
        || ["and", "or", "not", "where", "on", "when", "having"]
            .iter()
            .any(|k| tokens[start - 1].is_word(k));
    clean_start.then_some(ColumnRef { qualifier, name })
}

/// A bare word or quoted name that can be a column (not a constant such as `NULL`).
fn column_name(token: &Lex<'_>) -> Option<String> {
    match token {
        Lex::Word(word) if CONSTANTS.iter().any(|k| word.eq_ignore_ascii_case(k)) => None,
        _ => token.identifier(),
    }
}

/// What stands after a comparison operator.
fn operand_starting_at(tokens: &[Lex<'_>], at: usize) -> Option<Against> {
    let mut at = at;
    // `IS NULL`, `BETWEEN ? AND ?`, `IN (…)`: the value side.
    match tokens.get(at)? {
        Lex::Value | Lex::Open => return Some(Against::Value),
        Lex::Op("-" | "+") if tokens.get(at + 1) == Some(&Lex::Value) => {
            return Some(Against::Value);
        }
        Lex::Word(word) if CONSTANTS.iter().any(|k| word.eq_ignore_ascii_case(k)) => {
            return Some(Against::Value);
        }
        _ => {}
    }
    let first = tokens.get(at)?.identifier()?;
    if tokens.get(at + 1) == Some(&Lex::Open) {
        // A function call.
        return Some(Against::Value);
    }
    let column = if tokens.get(at + 1) == Some(&Lex::Dot) {
        let name = tokens.get(at + 2)?.identifier()?;
        at += 2;
        ColumnRef {
            qualifier: Some(first),
            name,
        }
    } else {
        ColumnRef {
            qualifier: None,
            name: first,
        }
    };
    let clean_end = match tokens.get(at + 1) {
        None | Some(Lex::Close | Lex::Comma) => true,
        Some(Lex::Op(op)) => ["=", "==", "<", "<=", ">", ">=", "<>", "!="].contains(op),
        Some(token) => !token.is_word("collate") && !token.is_word("escape"),
    };
    clean_end.then_some(Against::Column(column))
}

/// Whether the token at `end` closes a value (`?`, `'x'`, `NULL`, `f(…)`).
fn is_value_end(tokens: &[Lex<'_>], end: usize) -> bool {
    match &tokens[end] {
        Lex::Value | Lex::Close => true,
        Lex::Word(word) => CONSTANTS.iter().any(|k| word.eq_ignore_ascii_case(k)),
        _ => false,
    }
}

/// The terms of every `clause` (ORDER BY or GROUP BY) region, in order.
fn terms(tokens: &[Lex<'_>], places: &[Place], clause: Clause) -> Vec<Term> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        if places[i].clause != clause {
            i += 1;
            continue;
        }
        // The keyword pair (`ORDER BY`) opens the region at its depth.
        let Place { region, depth, .. } = places[i];
        i += 1;
        if tokens.get(i).is_some_and(|t| t.is_word("by")) {
            i += 1;
        }
        let mut term: Vec<&Lex<'_>> = Vec::new();
        while i < tokens.len() && places[i].region == region && places[i].depth >= depth {
            if places[i].depth == depth && tokens[i] == Lex::Comma {
                out.push(term_of(&term));
                term.clear();
            } else {
                term.push(&tokens[i]);
            }
            i += 1;
        }
        if !term.is_empty() {
            out.push(term_of(&term));
        }
    }
    out
}

fn term_of(tokens: &[&Lex<'_>]) -> Term {
    let descending = tokens.iter().any(|t| t.is_word("desc"));
    let (column, rest) = match tokens {
        [qualifier, dot, name, rest @ ..] if **dot == Lex::Dot => (
            qualifier
                .identifier()
                .zip(column_name(name))
                .map(|(q, n)| ColumnRef {
                    qualifier: Some(q),
                    name: n,
                }),
            rest,
        ),
        [name, rest @ ..] => (
            column_name(name).map(|n| ColumnRef {
                qualifier: None,
                name: n,
            }),
            rest,
        ),
        [] => (None, &[][..]),
    };
    // Only a direction, `NULLS FIRST|LAST` or a collation may follow a plain column.
    let mut plain = true;
    let mut k = 0;
    while k < rest.len() {
        let token = rest[k];
        if ["asc", "desc", "nulls", "first", "last"]
            .iter()
            .any(|w| token.is_word(w))
        {
            k += 1;
        } else if token.is_word("collate") {
            k += 2;
        } else {
            plain = false;
            break;
        }
    }
    Term {
        column: column.filter(|_| plain),
        descending,
    }
}

/// The read models' tables and their columns, as the database has them.
#[derive(Debug, Clone, Default)]
pub(crate) struct Schema {
    /// Lower-cased name → the table.
    pub tables: BTreeMap<String, Table>,
}

#[derive(Debug, Clone)]
pub(crate) struct Table {
    /// As declared.
    pub name: String,
    /// As declared, in order.
    pub columns: Vec<String>,
}

impl Table {
    /// The declared name of column `name` (any case).
    pub(crate) fn column(&self, name: &str) -> Option<&str> {
        self.columns
            .iter()
            .find(|column| column.eq_ignore_ascii_case(name))
            .map(String::as_str)
    }
}

impl Schema {
    /// Every ordinary table but SQLite's and Cairn's own (`sqlite_*`, `cairn_*`).
    pub(crate) fn load(connection: &Connection) -> rusqlite::Result<Schema> {
        let mut statement = connection.prepare(
            "SELECT name FROM sqlite_schema WHERE type = 'table'
               AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND name NOT LIKE 'cairn\\_%' ESCAPE '\\'
               AND sql NOT LIKE 'CREATE VIRTUAL%'",
        )?;
        let names: Vec<String> = statement
            .query_map([], |row| row.get(0))?
            .collect::<Result<_, _>>()?;
        let mut columns = connection.prepare("SELECT name FROM pragma_table_info(?1)")?;
        let mut tables = BTreeMap::new();
        for name in names {
            let declared: Vec<String> = columns
                .query_map([&name], |row| row.get(0))?
                .collect::<Result<_, _>>()?;
            tables.insert(
                name.to_ascii_lowercase(),
                Table {
                    name,
                    columns: declared,
                },
            );
        }
        Ok(Schema { tables })
    }

    /// The table `name` (any case), if it is a read-model table.
    pub(crate) fn table(&self, name: &str) -> Option<&Table> {
        self.tables.get(&name.to_ascii_lowercase())
    }
}

impl Shape {
    /// The table (lower-cased) that `name`, as a plan row shows it (an alias or a
    /// table name), stands for.
    pub(crate) fn table_named(&self, name: &str) -> String {
        let name = name.to_ascii_lowercase();
        self.sources
            .iter()
            .find(|source| source.alias.as_deref() == Some(name.as_str()))
            .map_or(name, |source| source.table.clone())
    }

    /// The names a plan row may show for tables: aliases and table names.
    pub(crate) fn names(&self) -> impl Iterator<Item = &str> {
        self.sources.iter().flat_map(|source| {
            std::iter::once(source.table.as_str()).chain(source.alias.as_deref())
        })
    }

    /// The table (lower-cased) `column` belongs to, when that is certain: through its
    /// qualifier, or as the only named table that has such a column.
    pub(crate) fn table_of(&self, column: &ColumnRef, schema: &Schema) -> Option<String> {
        match &column.qualifier {
            Some(qualifier) => {
                let table = self
                    .sources
                    .iter()
                    .find(|s| s.alias.as_deref() == Some(qualifier.as_str()))
                    .or_else(|| {
                        self.sources
                            .iter()
                            .find(|s| s.alias.is_none() && &s.table == qualifier)
                    })
                    .map_or_else(|| qualifier.clone(), |s| s.table.clone());
                schema.table(&table)?.column(&column.name).map(|_| table)
            }
            None => {
                let mut owners = self
                    .sources
                    .iter()
                    .map(|s| s.table.as_str())
                    .filter(|table| {
                        schema
                            .table(table)
                            .is_some_and(|t| t.column(&column.name).is_some())
                    })
                    .collect::<Vec<_>>();
                owners.sort_unstable();
                owners.dedup();
                match owners.as_slice() {
                    [only] => Some((*only).to_owned()),
                    _ => None,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(qualifier: Option<&str>, name: &str) -> ColumnRef {
        ColumnRef {
            qualifier: qualifier.map(str::to_owned),
            name: name.to_owned(),
        }
    }

    #[test]
    fn tables_and_aliases() {
        let shape = Shape::of(
            "SELECT * FROM main.Orders o JOIN lines AS l ON l.order_id = o.id, \"Odd Name\" x \
             LEFT JOIN json_each(o.tags) WHERE o.customer = ?1",
        );
        assert_eq!(
            shape.sources,
            [
                Source {
                    table: "orders".into(),
                    alias: Some("o".into())
                },
                Source {
                    table: "lines".into(),
                    alias: Some("l".into())
                },
                Source {
                    table: "odd name".into(),
                    alias: Some("x".into())
                },
            ]
        );
        let update = Shape::of("UPDATE OR IGNORE t SET a = 1, b = ?2 WHERE c = ?1");
        assert_eq!(update.sources[0].table, "t");
        assert_eq!(update.conditions.len(), 1, "{:?}", update.conditions);
        assert_eq!(update.conditions[0].column, col(None, "c"));
        let delete = Shape::of("DELETE FROM t WHERE id IN (SELECT x FROM u WHERE y > 3)");
        let tables: Vec<&str> = delete.sources.iter().map(|s| s.table.as_str()).collect();
        assert_eq!(tables, ["t", "u"]);
    }

    #[test]
    fn conditions_by_kind() {
        let shape = Shape::of(
            "SELECT a FROM t WHERE a = :x AND ? < b AND c IN (1, 2) AND d BETWEEN 1 AND 5 \
             AND e IS NULL AND f LIKE 'x%' AND g != 1 AND lower(h) = ? AND i + 1 = ? \
             AND j NOT IN (1) AND k = -3 AND l = datetime('now') AND m = n",
        );
        let found: Vec<(String, Comparison)> = shape
            .conditions
            .iter()
            .map(|c| (c.column.name.clone(), c.comparison))
            .collect();
        use Comparison::*;
        let expected: Vec<(String, Comparison)> = [
            ("a", Equality),
            ("b", Range),
            ("c", Equality),
            ("d", Range),
            ("e", Equality),
            ("k", Equality),
            ("l", Equality),
            ("m", Equality),
            ("n", Equality),
        ]
        .iter()
        .map(|(n, c)| ((*n).to_owned(), *c))
        .collect();
        assert_eq!(found, expected);
        assert!(shape.conditions.iter().all(|c| !c.disjunctive));
        let or = Shape::of("SELECT * FROM t WHERE (a = ? OR b = ?) AND c = 1");
        assert!(or.conditions.iter().all(|c| c.disjunctive));
    }

    #[test]
    fn set_clauses_and_select_lists_are_not_conditions() {
        let shape = Shape::of(
            "INSERT INTO t (id, n) VALUES (?1, ?2) ON CONFLICT (id) DO UPDATE SET n = n + 1 WHERE t.flag = 0",
        );
        assert_eq!(shape.conditions.len(), 1);
        assert_eq!(shape.conditions[0].column, col(Some("t"), "flag"));
        assert!(Shape::of("SELECT a = 1 AS f FROM t").conditions.is_empty());
    }

    #[test]
    fn order_and_group_terms() {
        let shape = Shape::of(
            "SELECT a, count(*) FROM t WHERE x = 1 GROUP BY a, lower(b) \
             ORDER BY t.a DESC, c COLLATE NOCASE ASC, a + 1, row_number() OVER (ORDER BY z) LIMIT 5",
        );
        assert_eq!(
            shape.group_by,
            [
                Term {
                    column: Some(col(None, "a")),
                    descending: false
                },
                Term {
                    column: None,
                    descending: false
                }
            ]
        );
        let order: Vec<Option<ColumnRef>> =
            shape.order_by.iter().map(|t| t.column.clone()).collect();
        assert_eq!(
            order,
            [Some(col(Some("t"), "a")), Some(col(None, "c")), None, None]
        );
        assert!(shape.order_by[0].descending && !shape.order_by[1].descending);
    }

    #[test]
    fn columns_resolve_through_aliases_and_the_schema() {
        let schema = Schema {
            tables: [
                ("orders", vec!["id", "customer"]),
                ("lines", vec!["order_id", "sku", "id"]),
            ]
            .into_iter()
            .map(|(name, columns)| {
                (
                    name.to_owned(),
                    Table {
                        name: name.to_owned(),
                        columns: columns.into_iter().map(str::to_owned).collect(),
                    },
                )
            })
            .collect(),
        };
        let shape = Shape::of("SELECT * FROM orders o JOIN lines l ON l.order_id = o.id");
        assert_eq!(
            shape
                .table_of(&col(Some("l"), "order_id"), &schema)
                .as_deref(),
            Some("lines")
        );
        assert_eq!(
            shape.table_of(&col(None, "customer"), &schema).as_deref(),
            Some("orders")
        );
        // `id` is in both tables: not certain.
        assert_eq!(shape.table_of(&col(None, "id"), &schema), None);
        assert_eq!(shape.table_of(&col(Some("o"), "sku"), &schema), None);
        assert_eq!(shape.table_named("L"), "lines");
    }
}
