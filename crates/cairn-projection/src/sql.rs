//! A small SQL scanner: finds `:name` placeholders (outside string literals, quoted
//! identifiers, PostgreSQL dollar-quoted strings and comments) and rewrites them into
//! positional parameters, `?N` for SQLite and `$N` for PostgreSQL, so that dotted names
//! such as `:data.customer.id` work (SQLite's own named parameters stop at the dot) and
//! every value is bound, never spliced. A `::` (PostgreSQL's cast, `:data.total::numeric`)
//! is not a placeholder. It also finds the tables a `setup` creates and the identifiers
//! a query names.

use std::collections::BTreeSet;

/// Which positional form placeholders become.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Dialect {
    /// `?1`, `?2`, …
    #[default]
    Sqlite,
    /// `$1`, `$2`, …
    Postgres,
}

/// SQL whose placeholders became `?1`, `?2`, … (or `$1`, `$2`, …): `names[i]` is bound
/// to parameter `i + 1`. A name used twice gets one parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rewritten {
    pub sql: String,
    pub names: Vec<String>,
}

#[derive(Debug, PartialEq, Eq)]
enum Token<'a> {
    /// A bare word (keyword or identifier), as written.
    Word(&'a str),
    /// A quoted identifier, without its quotes (doubled quotes left as they are).
    Quoted(&'a str),
    /// `:name` or `:name.path.0`, without the colon, at this byte range of the SQL.
    Placeholder(&'a str, usize, usize),
    /// A parameter form Cairn does not support (`?`, `?3`, `@x`, `$x`).
    ForeignParameter(&'a str),
    /// Anything else that matters to us: `.`, `(`, …
    Punct(u8),
}

pub(crate) fn is_word_start(byte: u8) -> bool {
    byte.is_ascii_alphabetic() || byte == b'_' || byte >= 0x80
}

pub(crate) fn is_word_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'$' || byte >= 0x80
}

/// Splits SQL into the tokens above, skipping white space, literals and comments.
fn tokens(sql: &str) -> Vec<Token<'_>> {
    let bytes = sql.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let byte = bytes[i];
        match byte {
            b'\'' => i = skip_quoted(bytes, i, b'\''),
            b'"' | b'`' => {
                let end = skip_quoted(bytes, i, byte);
                let inner_end = end.saturating_sub(1).max(i + 1);
                out.push(Token::Quoted(&sql[i + 1..inner_end]));
                i = end;
            }
            b'[' => {
                let end = bytes[i..]
                    .iter()
                    .position(|b| *b == b']')
                    .map_or(bytes.len(), |p| i + p + 1);
                out.push(Token::Quoted(&sql[i + 1..end.saturating_sub(1).max(i + 1)]));
                i = end;
            }
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                i = bytes[i..]
                    .iter()
                    .position(|b| *b == b'\n')
                    .map_or(bytes.len(), |p| i + p + 1);
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i = sql[i + 2..]
                    .find("*/")
                    .map_or(bytes.len(), |p| i + 2 + p + 2);
            }
            b':' if bytes.get(i + 1) == Some(&b':') => {
                // PostgreSQL's cast operator.
                out.push(Token::Punct(b':'));
                i += 2;
            }
            b'$' if dollar_quote_end(bytes, i).is_some() => {
                i = dollar_quote_end(bytes, i).unwrap_or(bytes.len());
            }
            b':' if bytes.get(i + 1).is_some_and(|b| is_word_start(*b)) => {
                let start = i + 1;
                let mut end = start;
                while end < bytes.len() && is_name_byte(bytes[end]) {
                    end += 1;
                }
                // A dotted path: `.segment` while a name byte follows the dot.
                while end + 1 < bytes.len() && bytes[end] == b'.' && is_name_byte(bytes[end + 1]) {
                    end += 1;
                    while end < bytes.len() && is_name_byte(bytes[end]) {
                        end += 1;
                    }
                }
                out.push(Token::Placeholder(&sql[start..end], i, end));
                i = end;
            }
            b'?' => {
                let mut end = i + 1;
                while end < bytes.len() && bytes[end].is_ascii_digit() {
                    end += 1;
                }
                out.push(Token::ForeignParameter(&sql[i..end]));
                i = end;
            }
            b'@' | b'$'
                if bytes
                    .get(i + 1)
                    .is_some_and(|b| is_word_start(*b) || b.is_ascii_digit()) =>
            {
                let mut end = i + 1;
                while end < bytes.len() && is_word_byte(bytes[end]) {
                    end += 1;
                }
                out.push(Token::ForeignParameter(&sql[i..end]));
                i = end;
            }
            _ if is_word_start(byte) => {
                let mut end = i + 1;
                while end < bytes.len() && is_word_byte(bytes[end]) {
                    end += 1;
                }
                out.push(Token::Word(&sql[i..end]));
                i = end;
            }
            _ if byte.is_ascii_digit() => {
                // Numbers (including `1e5`, `0x1F`) are not identifiers.
                while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'.') {
                    i += 1;
                }
            }
            _ if byte.is_ascii_whitespace() => i += 1,
            _ => {
                out.push(Token::Punct(byte));
                i += 1;
            }
        }
    }
    out
}

/// For a PostgreSQL dollar-quoted string opening at `start` (`$$` or `$tag$`, the tag
/// not starting with a digit): the index just past its closing delimiter (the end of
/// the SQL when it is not closed).
pub(crate) fn dollar_quote_end(bytes: &[u8], start: usize) -> Option<usize> {
    let mut end = start + 1;
    if bytes.get(end).is_some_and(|b| b.is_ascii_digit()) {
        return None;
    }
    while end < bytes.len() && is_name_byte(bytes[end]) {
        end += 1;
    }
    if bytes.get(end) != Some(&b'$') {
        return None;
    }
    let delimiter = &bytes[start..=end];
    let body = end + 1;
    let close = bytes[body..]
        .windows(delimiter.len())
        .position(|window| window == delimiter);
    Some(close.map_or(bytes.len(), |at| body + at + delimiter.len()))
}

pub(crate) fn is_name_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'_'
}

/// The index just past a literal opened by `quote` at `start`; doubled quotes escape.
pub(crate) fn skip_quoted(bytes: &[u8], start: usize, quote: u8) -> usize {
    let mut i = start + 1;
    while i < bytes.len() {
        if bytes[i] == quote {
            if bytes.get(i + 1) == Some(&quote) {
                i += 2;
                continue;
            }
            return i + 1;
        }
        i += 1;
    }
    bytes.len()
}

/// Rewrites `:name` placeholders into `?N` (SQLite) or `$N` (PostgreSQL). Refuses the
/// databases' own parameter forms (`?`, `?3`, `@x`, `$x`, `$1`), so that nothing can be
/// bound by accident in an unexpected place.
pub(crate) fn rewrite(sql: &str, dialect: Dialect) -> Result<Rewritten, String> {
    let mut names: Vec<String> = Vec::new();
    let mut out = String::with_capacity(sql.len());
    let mut copied = 0;
    for token in tokens(sql) {
        match token {
            Token::Placeholder(name, start, end) => {
                let index = match names.iter().position(|known| known == name) {
                    Some(index) => index,
                    None => {
                        names.push(name.to_owned());
                        names.len() - 1
                    }
                };
                out.push_str(&sql[copied..start]);
                out.push(match dialect {
                    Dialect::Sqlite => '?',
                    Dialect::Postgres => '$',
                });
                out.push_str(&(index + 1).to_string());
                copied = end;
            }
            Token::ForeignParameter(form) => {
                return Err(format!(
                    "the parameter {form:?} is not supported; use :name placeholders"
                ));
            }
            _ => {}
        }
    }
    out.push_str(&sql[copied..]);
    Ok(Rewritten { sql: out, names })
}

/// The tables and views that `CREATE [TEMP] [VIRTUAL] TABLE|VIEW [IF NOT EXISTS]
/// [schema.]name` statements in `sql` create, lower-cased.
pub(crate) fn created_tables(sql: &str) -> BTreeSet<String> {
    let tokens = tokens(sql);
    let mut created = BTreeSet::new();
    let mut i = 0;
    while i < tokens.len() {
        if !is_keyword(&tokens[i], "create") {
            i += 1;
            continue;
        }
        let mut j = i + 1;
        while j < tokens.len()
            && ["temp", "temporary", "virtual"]
                .iter()
                .any(|k| is_keyword(&tokens[j], k))
        {
            j += 1;
        }
        if !(j < tokens.len()
            && (is_keyword(&tokens[j], "table") || is_keyword(&tokens[j], "view")))
        {
            i += 1;
            continue;
        }
        j += 1;
        if j + 2 < tokens.len()
            && is_keyword(&tokens[j], "if")
            && is_keyword(&tokens[j + 1], "not")
            && is_keyword(&tokens[j + 2], "exists")
        {
            j += 3;
        }
        let mut name = identifier(tokens.get(j));
        // `schema.name`: the part after the dot.
        if tokens.get(j + 1) == Some(&Token::Punct(b'.')) {
            name = identifier(tokens.get(j + 2)).or(name);
        }
        if let Some(name) = name {
            created.insert(name);
        }
        i = j + 1;
    }
    created
}

/// The first bare word of the SQL (its verb), comments skipped.
pub(crate) fn first_word(sql: &str) -> Option<&str> {
    match tokens(sql).into_iter().next()? {
        Token::Word(word) => Some(word),
        _ => None,
    }
}

/// The tables `sql` reads, lower-cased: each name after `FROM` or `JOIN` (in
/// subqueries too), with the rest of a comma-separated `FROM` list; a column, alias or
/// literal that happens to share a table's name is not one. `schema.table` counts as
/// `table`; a subquery or a table-valued function in that place names no table.
pub(crate) fn referenced_tables(sql: &str) -> BTreeSet<String> {
    let tokens = tokens(sql);
    let mut tables = BTreeSet::new();
    let mut i = 0;
    while i < tokens.len() {
        let from = is_keyword(&tokens[i], "from");
        if !(from || is_keyword(&tokens[i], "join")) {
            i += 1;
            continue;
        }
        let mut j = i + 1;
        while let Some(mut name) = identifier(tokens.get(j)) {
            j += 1;
            if tokens.get(j) == Some(&Token::Punct(b'.')) {
                match identifier(tokens.get(j + 1)) {
                    Some(table) => {
                        name = table;
                        j += 2;
                    }
                    None => break,
                }
            }
            if tokens.get(j) == Some(&Token::Punct(b'(')) {
                // `json_each(…)`: a function, not a table.
                break;
            }
            tables.insert(name);
            // An alias: `AS a`, or a bare word that is not a clause's keyword.
            match tokens.get(j) {
                Some(token) if is_keyword(token, "as") => j += 2,
                Some(token @ (Token::Word(_) | Token::Quoted(_))) if !ends_table(token) => j += 1,
                _ => {}
            }
            if from && tokens.get(j) == Some(&Token::Punct(b',')) {
                j += 1;
                continue;
            }
            break;
        }
        i += 1;
    }
    tables
}

/// Whether a word after a table's name starts the next clause rather than an alias.
fn ends_table(token: &Token<'_>) -> bool {
    const KEYWORDS: &[&str] = &[
        "where",
        "join",
        "left",
        "right",
        "full",
        "inner",
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
        "having",
        "indexed",
        "not",
        "returning",
        "set",
        "values",
        "select",
    ];
    matches!(token, Token::Word(word) if KEYWORDS.iter().any(|k| word.eq_ignore_ascii_case(k)))
}

fn identifier(token: Option<&Token<'_>>) -> Option<String> {
    match token? {
        Token::Word(word) | Token::Quoted(word) => Some(word.to_ascii_lowercase()),
        _ => None,
    }
}

fn is_keyword(token: &Token<'_>, keyword: &str) -> bool {
    matches!(token, Token::Word(word) if word.eq_ignore_ascii_case(keyword))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_become_positional_and_repeat_once() {
        let rewritten = rewrite(
            "INSERT INTO t VALUES (:data.id, :data.a.0, :stream, :data.id)",
            Dialect::Sqlite,
        )
        .unwrap();
        assert_eq!(rewritten.sql, "INSERT INTO t VALUES (?1, ?2, ?3, ?1)");
        assert_eq!(rewritten.names, ["data.id", "data.a.0", "stream"]);
    }

    #[test]
    fn literals_identifiers_and_comments_are_left_alone() {
        let sql = "SELECT ':not', \"a:b\", [c:d], `e:f` -- :nope\n FROM t /* :no */ WHERE x = :yes";
        let rewritten = rewrite(sql, Dialect::Sqlite).unwrap();
        assert_eq!(rewritten.names, ["yes"]);
        assert!(rewritten.sql.ends_with("WHERE x = ?1"));
        assert!(rewritten.sql.contains("':not'"));
        let escaped = rewrite("SELECT 'it''s :x', :y", Dialect::Sqlite).unwrap();
        assert_eq!(escaped.names, ["y"]);
    }

    #[test]
    fn a_trailing_dot_is_not_part_of_the_name() {
        let rewritten = rewrite("SELECT :a.b. FROM t", Dialect::Sqlite).unwrap();
        assert_eq!(rewritten.names, ["a.b"]);
        assert_eq!(rewritten.sql, "SELECT ?1. FROM t");
    }

    #[test]
    fn other_parameter_forms_are_refused() {
        for sql in [
            "SELECT ?",
            "SELECT ?1",
            "SELECT @x",
            "SELECT $x",
            "SELECT $1",
        ] {
            let error = rewrite(sql, Dialect::Sqlite).unwrap_err();
            assert!(error.contains("not supported"), "{sql}: {error}");
        }
        assert!(rewrite("SELECT '?', json_extract(x, '$.a') FROM t", Dialect::Sqlite).is_ok());
    }

    #[test]
    fn postgres_gets_dollar_parameters_and_keeps_casts_and_dollar_quotes() {
        let rewritten = rewrite(
            "INSERT INTO t VALUES (:data.id, :data.total::numeric, $$ :no $$, $f$ ' $f$, :data.id)",
            Dialect::Postgres,
        )
        .unwrap();
        assert_eq!(rewritten.names, ["data.id", "data.total"]);
        assert_eq!(
            rewritten.sql,
            "INSERT INTO t VALUES ($1, $2::numeric, $$ :no $$, $f$ ' $f$, $1)"
        );
        // A setup with a function body in dollar quotes has no placeholder.
        let body = rewrite(
            "CREATE FUNCTION f() RETURNS int AS $body$ SELECT 1 WHERE 'a' = :x $body$ LANGUAGE sql",
            Dialect::Postgres,
        )
        .unwrap();
        assert!(body.names.is_empty(), "{body:?}");
    }

    #[test]
    fn created_tables_are_found_in_every_form() {
        let tables = created_tables(
            "CREATE TABLE IF NOT EXISTS Orders (id TEXT); create temp table \"Line Items\"(x);
             CREATE VIEW main.totals AS SELECT 1; CREATE INDEX i ON orders(id);
             -- CREATE TABLE commented (x)",
        );
        assert_eq!(
            tables.into_iter().collect::<Vec<_>>(),
            ["line items", "orders", "totals"]
        );
    }

    #[test]
    fn the_first_word_skips_comments() {
        assert_eq!(first_word("-- hi\n /* x */ select 1"), Some("select"));
        assert_eq!(first_word("(SELECT 1)"), None);
    }

    fn tables(sql: &str) -> Vec<String> {
        referenced_tables(sql).into_iter().collect()
    }

    #[test]
    fn referenced_tables_are_the_names_after_from_and_join() {
        assert_eq!(
            tables("SELECT a FROM \"Orders\" o JOIN [x] ON o.id = x.id WHERE b = 'lines'"),
            ["orders", "x"]
        );
        // A column, an alias or a literal named like a table is not a table.
        assert_eq!(tables("SELECT orders FROM customers"), ["customers"]);
        assert_eq!(
            tables("SELECT c.orders AS orders FROM customers AS orders_view WHERE 'orders' = ?1"),
            ["customers"]
        );
        // Comma lists, schema-qualified names, subqueries and CTEs.
        assert_eq!(
            tables("SELECT * FROM main.a AS x, b y, c WHERE x.id IN (SELECT id FROM d)"),
            ["a", "b", "c", "d"]
        );
        assert_eq!(
            tables("SELECT n FROM (SELECT count(*) AS n FROM lines) LEFT OUTER JOIN e USING (n)"),
            ["e", "lines"]
        );
        assert_eq!(
            tables("WITH recent AS (SELECT * FROM orders) SELECT * FROM recent"),
            ["orders", "recent"]
        );
        // A table-valued function names no table; FROM in a comment does not count.
        assert_eq!(
            tables("SELECT value FROM json_each(?1) -- FROM orders\n"),
            Vec::<String>::new()
        );
    }
}
