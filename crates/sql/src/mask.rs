//! Hides Keel's bookkeeping (`_keel_*`) from the schema listings of client SQL.
//!
//! Keel keeps its applied position (`_keel_meta`) and the answers of requests with an id
//! (`_keel_requests`) in the database they describe, so they commit atomically with the data
//! (see `docs/architecture.md`). A client must not see them: rqlite shows a fresh database with
//! an empty `sqlite_master`, and tools list the schema and then drop what they listed. The
//! authorizer (`policy`) refuses every client action on `_keel_*` objects; this module keeps
//! them out of the listings, by rewriting a client statement that names a listing so that the
//! name resolves to a filtered copy:
//!
//! ```text
//! SELECT name FROM sqlite_master
//!   ─▶ WITH sqlite_master AS (SELECT * FROM main.sqlite_master WHERE tbl_name NOT LIKE
//!        '\_keel\_%' ESCAPE '\') SELECT name FROM sqlite_master
//! PRAGMA table_list
//!   ─▶ SELECT * FROM pragma_table_list WHERE name NOT LIKE '\_keel\_%' ESCAPE '\'
//! ```
//!
//! A common table expression shadows a table of the same unqualified name in the whole
//! statement, subqueries included, in any case and quoting; `main.sqlite_master` is made
//! unqualified first (a qualified name never resolves to a CTE). Shadowed: `sqlite_master`,
//! `sqlite_schema`, `sqlite_stat1` (ANALYZE's statistics name every table) and
//! `pragma_table_list`; the table-valued form `pragma_table_list('t')` becomes a filtered
//! subquery. Filtering on `tbl_name` removes the tables, their indexes and automatic indexes.
//!
//! [`mask`] is on the path of every client statement, so it is cheap when there is nothing to
//! do: a byte scan for `sqlite_`, `pragma` and `_keel_` (any case) first; only a text containing
//! one of them is tokenized (strings, comments and quoted identifiers understood, so a string
//! that merely contains `sqlite_master` changes nothing) and rewritten statement by statement.
//!
//! ## What it does not do
//!
//! It is not the protection: a spelling it misses, or a view or trigger a client made over
//! `sqlite_master` before this existed, reaches the unfiltered table, and the authorizer refuses
//! that read (it only allows reads of `sqlite_master` made through the CTE). Statements that
//! cannot carry a WITH clause are not rewritten: `CREATE VIEW` and `CREATE TRIGGER` that name a
//! listing or a `_keel_*` object are refused instead ([`Masked::Refused`]), because their body
//! would be resolved later, outside any rewrite. (An unqualified column named `_keel_…` in
//! such a body is refused too: the scanner cannot tell it from a table.) `rowid` of the shadowed `sqlite_master` is not
//! available (a CTE has none).

use std::borrow::Cow;

/// The filter every shadowed listing applies to its name column.
const FILTER: &str = "NOT LIKE '\\_keel\\_%' ESCAPE '\\'";

/// The CTE shadowing `sqlite_master`. Its name is what the authorizer sees as the accessor of
/// the reads it makes ([`crate::policy`] allows reads of `sqlite_master` from it only).
pub(crate) const MASTER_CTE: &str = "sqlite_master";

/// The CTE shadowing `sqlite_stat1`.
pub(crate) const STAT1_CTE: &str = "sqlite_stat1";

/// What [`mask`] made of a client text.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Masked<'a> {
    /// The text to prepare: the client's own, or a rewrite of it.
    Text(Cow<'a, str>),
    /// The text must not run: the reason, as the statement's error.
    Refused(String),
}

/// Rewrites a client text so that its schema listings leave out Keel's tables (see the module
/// docs). Texts that name no listing come back borrowed, untouched.
pub(crate) fn mask(sql: &str) -> Masked<'_> {
    if !might_name(sql) {
        return Masked::Text(Cow::Borrowed(sql));
    }
    let tokens = tokenize(sql);
    let mut edits: Vec<Edit> = Vec::new();
    for range in statements(sql, &tokens) {
        let statement = Statement { sql, tokens: &tokens[range] };
        if let Err(reason) = statement.mask(&mut edits) {
            return Masked::Refused(reason);
        }
    }
    if edits.is_empty() {
        return Masked::Text(Cow::Borrowed(sql));
    }
    edits.sort_by_key(|edit| (edit.start, edit.end));
    let mut out = String::with_capacity(sql.len() + 256);
    let mut at = 0;
    for edit in edits {
        out.push_str(&sql[at..edit.start]);
        out.push_str(&edit.text);
        at = edit.end;
    }
    out.push_str(&sql[at..]);
    Masked::Text(Cow::Owned(out))
}

/// Whether `sql` contains `sqlite_`, `pragma` or `_keel_` in any case: a superset of the
/// texts [`mask`] changes or refuses.
fn might_name(sql: &str) -> bool {
    let bytes = sql.as_bytes();
    bytes.iter().enumerate().any(|(i, &b)| {
        let rest = &bytes[i..];
        match b {
            b's' | b'S' => rest.len() >= 7 && rest[..7].eq_ignore_ascii_case(b"sqlite_"),
            b'p' | b'P' => rest.len() >= 6 && rest[..6].eq_ignore_ascii_case(b"pragma"),
            b'_' => rest.len() >= 6 && rest[..6].eq_ignore_ascii_case(b"_keel_"),
            _ => false,
        }
    })
}

/// A replacement of `sql[start..end]` by `text`. Edits never overlap.
#[derive(Debug)]
struct Edit {
    /// Byte offset where the replaced span starts.
    start: usize,
    /// Byte offset where it ends (equal to `start` for an insertion).
    end: usize,
    /// The replacement.
    text: String,
}

/// A token's kind; whitespace and comments are not tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// A keyword or bare identifier (or a number).
    Word,
    /// An identifier in `"…"`, `[…]` or `` `…` ``.
    Quoted,
    /// A string literal `'…'`.
    Str,
    /// A parameter: `?1`, `:name`, `@name`, `$name`.
    Param,
    /// Any other single byte: `.`, `(`, `)`, `,`, `;`, operators.
    Punct(u8),
}

/// One token of SQL text.
#[derive(Clone, Copy, Debug)]
struct Token {
    /// What it is.
    kind: Kind,
    /// Byte offset of its first byte.
    start: usize,
    /// Byte offset just past it.
    end: usize,
}

/// Whether `b` may continue a bare identifier (SQLite treats every non-ASCII byte so).
fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

/// Splits SQL text into tokens as SQLite's tokenizer would, closely enough to find names:
/// comments and whitespace dropped, literals and quoted identifiers kept whole (an unterminated
/// one runs to the end of the text).
fn tokenize(sql: &str) -> Vec<Token> {
    let bytes = sql.as_bytes();
    let mut tokens = Vec::new();
    let mut i = 0;
    // Finds the end of a quoted run opened at `i` by `close`, with `close close` as an escape.
    let quoted = |i: usize, close: u8, escapes: bool| {
        let mut j = i + 1;
        while j < bytes.len() {
            if bytes[j] == close {
                if escapes && bytes.get(j + 1) == Some(&close) {
                    j += 2;
                    continue;
                }
                return j + 1;
            }
            j += 1;
        }
        bytes.len()
    };
    while i < bytes.len() {
        let b = bytes[i];
        let (kind, end) = match b {
            _ if b.is_ascii_whitespace() => {
                i += 1;
                continue;
            }
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                i = bytes[i..].iter().position(|&c| c == b'\n').map_or(bytes.len(), |p| i + p + 1);
                continue;
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i = sql[i + 2..].find("*/").map_or(bytes.len(), |p| i + 2 + p + 2);
                continue;
            }
            b'\'' => (Kind::Str, quoted(i, b'\'', true)),
            b'"' => (Kind::Quoted, quoted(i, b'"', true)),
            b'`' => (Kind::Quoted, quoted(i, b'`', true)),
            b'[' => (Kind::Quoted, quoted(i, b']', false)),
            b'?' | b':' | b'@' | b'$' => {
                let end = bytes[i + 1..]
                    .iter()
                    .position(|&c| !is_ident(c))
                    .map_or(bytes.len(), |p| i + 1 + p);
                (Kind::Param, end)
            }
            _ if is_ident(b) => {
                let end =
                    bytes[i..].iter().position(|&c| !is_ident(c)).map_or(bytes.len(), |p| i + p);
                (Kind::Word, end)
            }
            _ => (Kind::Punct(b), i + 1),
        };
        tokens.push(Token { kind, start: i, end });
        i = end;
    }
    tokens
}

/// The token ranges of the SQL statements in `tokens`, split at `;` (a `CREATE TRIGGER` body's
/// `;` only ends the statement after `END`, as in `sqlite3_complete`). Empty statements are left
/// out.
fn statements(sql: &str, tokens: &[Token]) -> Vec<std::ops::Range<usize>> {
    let mut ranges = Vec::new();
    let mut start = 0;
    let mut trigger = false;
    for (i, token) in tokens.iter().enumerate() {
        if i == start {
            let head = Statement { sql, tokens: &tokens[start..] };
            let skip = usize::from(head.word(1, "TEMP") || head.word(1, "TEMPORARY"));
            trigger = head.word(0, "CREATE") && head.word(1 + skip, "TRIGGER");
        }
        if token.kind == Kind::Punct(b';') {
            let ends = !trigger || (i > start && word_is(sql, &tokens[i - 1], "END"));
            if ends {
                if i > start {
                    ranges.push(start..i);
                }
                start = i + 1;
            }
        }
    }
    if start < tokens.len() {
        ranges.push(start..tokens.len());
    }
    ranges
}

/// Whether `token` is the bare word `word` (any case).
fn word_is(sql: &str, token: &Token, word: &str) -> bool {
    token.kind == Kind::Word && sql[token.start..token.end].eq_ignore_ascii_case(word)
}

/// The name a word or quoted identifier stands for (quotes and their escapes removed); `None`
/// for other tokens.
fn name_of(sql: &str, token: &Token) -> Option<String> {
    let text = &sql[token.start..token.end];
    match token.kind {
        Kind::Word => Some(text.to_string()),
        Kind::Quoted => {
            // An unterminated identifier runs to the end of the text, without its closing quote.
            let open = text.as_bytes()[0];
            let close = if open == b'[' { ']' } else { char::from(open) };
            let inner = &text[1..];
            let inner = inner.strip_suffix(close).unwrap_or(inner);
            Some(match open {
                b'"' => inner.replace("\"\"", "\""),
                b'`' => inner.replace("``", "`"),
                _ => inner.to_string(),
            })
        }
        _ => None,
    }
}

/// The listings [`mask`] shadows, by the name a client uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Listing {
    /// `sqlite_master`.
    Master,
    /// `sqlite_schema`, the same table under its newer name.
    Schema,
    /// `sqlite_stat1`, ANALYZE's statistics.
    Stat1,
    /// The `pragma_table_list` table-valued function.
    TableList,
}

impl Listing {
    /// The listing a name stands for, if any.
    fn of(name: &str) -> Option<Listing> {
        let lower = name.to_ascii_lowercase();
        match lower.as_str() {
            "sqlite_master" => Some(Listing::Master),
            "sqlite_schema" => Some(Listing::Schema),
            "sqlite_stat1" => Some(Listing::Stat1),
            "pragma_table_list" => Some(Listing::TableList),
            _ => None,
        }
    }
}

/// The CTEs a statement needs, in the order they must be declared.
#[derive(Debug, Default)]
struct Needs {
    /// `sqlite_master` (also needed by `sqlite_schema`, which is declared from it).
    master: bool,
    /// `sqlite_schema`.
    schema: bool,
    /// `sqlite_stat1`.
    stat1: bool,
    /// `pragma_table_list`.
    table_list: bool,
}

impl Needs {
    /// Whether any CTE is needed.
    fn any(&self) -> bool {
        self.master || self.schema || self.stat1 || self.table_list
    }

    /// The CTE definitions, comma-separated.
    fn ctes(&self) -> String {
        let mut ctes = Vec::new();
        if self.master || self.schema {
            ctes.push(format!(
                "{MASTER_CTE} AS (SELECT * FROM main.sqlite_master WHERE tbl_name {FILTER})"
            ));
        }
        if self.schema {
            ctes.push(format!("sqlite_schema AS (SELECT * FROM {MASTER_CTE})"));
        }
        if self.stat1 {
            ctes.push(format!(
                "{STAT1_CTE} AS (SELECT * FROM main.sqlite_stat1 WHERE tbl {FILTER})"
            ));
        }
        if self.table_list {
            ctes.push(format!(
                "pragma_table_list AS (SELECT * FROM main.pragma_table_list WHERE name {FILTER})"
            ));
        }
        ctes.join(", ")
    }
}

/// One SQL statement's tokens within the whole text.
struct Statement<'s> {
    /// The whole text.
    sql: &'s str,
    /// The statement's tokens (no `;`).
    tokens: &'s [Token],
}

impl Statement<'_> {
    /// Whether token `i` is the word `word`.
    fn word(&self, i: usize, word: &str) -> bool {
        self.tokens.get(i).is_some_and(|t| word_is(self.sql, t, word))
    }

    /// Whether token `i` is the punctuation `b`.
    fn punct(&self, i: usize, b: u8) -> bool {
        self.tokens.get(i).is_some_and(|t| t.kind == Kind::Punct(b))
    }

    /// The name token `i` stands for, if it is a word or quoted identifier.
    fn name(&self, i: usize) -> Option<String> {
        self.tokens.get(i).and_then(|t| name_of(self.sql, t))
    }

    /// Adds the edits that mask this statement, or refuses it.
    fn mask(&self, edits: &mut Vec<Edit>) -> Result<(), String> {
        if self.word(0, "PRAGMA") {
            return self.mask_pragma(edits);
        }
        let mut needs = Needs::default();
        let mut local = Vec::new();
        let mut keel = None;
        let mut listed = None;
        for i in 0..self.tokens.len() {
            let Some(name) = self.name(i) else { continue };
            // `x._keel_…` is a column of x, not one of Keel's tables.
            if name.get(..6).is_some_and(|p| p.eq_ignore_ascii_case("_keel_"))
                && !self.punct(i.wrapping_sub(1), b'.')
            {
                keel.get_or_insert(name.clone());
            }
            let Some(listing) = Listing::of(&name) else { continue };
            listed.get_or_insert(name.to_ascii_lowercase());
            // `x.sqlite_master`: shadowed only for x = main, by dropping the qualifier;
            // `sqlite_master.name` names the table, which is then the CTE.
            if self.punct(i.wrapping_sub(1), b'.') {
                let qualifier = i.checked_sub(2).and_then(|q| self.name(q));
                if !qualifier.is_some_and(|q| q.eq_ignore_ascii_case("main")) {
                    continue;
                }
                local.push(Edit {
                    start: self.tokens[i - 2].start,
                    end: self.tokens[i].start,
                    text: String::new(),
                });
            }
            match listing {
                Listing::Master => needs.master = true,
                Listing::Schema => needs.schema = true,
                Listing::Stat1 => needs.stat1 = true,
                Listing::TableList if self.punct(i + 1, b'(') => {
                    local.push(self.table_list_call(i)?);
                }
                Listing::TableList => needs.table_list = true,
            }
        }
        let names_listing = needs.any() || !local.is_empty();
        if !names_listing && keel.is_none() {
            return Ok(());
        }
        if self.creates_view_or_trigger() {
            // The authorizer's words for Keel's tables, so that the refusal reads the same
            // whichever check makes it.
            return Err(match (keel, listed) {
                (Some(keel), _) => format!("{keel} is an internal table of Keel"),
                (None, listed) => format!(
                    "views and triggers cannot read {}: it lists Keel's internal tables",
                    listed.unwrap_or_default()
                ),
            });
        }
        if needs.any() {
            let Some(at) = self.body_start() else {
                // Nothing to put a WITH on (DROP TABLE sqlite_stat1, ANALYZE sqlite_master, …):
                // left to the authorizer, which refuses any unfiltered read.
                return Ok(());
            };
            local.push(self.with_clause(at, &needs));
        }
        edits.extend(local);
        Ok(())
    }

    /// Whether this is `CREATE [TEMP] VIEW` or `CREATE [TEMP] TRIGGER`.
    fn creates_view_or_trigger(&self) -> bool {
        let skip = usize::from(self.word(1, "TEMP") || self.word(1, "TEMPORARY"));
        self.word(0, "CREATE") && (self.word(1 + skip, "VIEW") || self.word(1 + skip, "TRIGGER"))
    }

    /// The index of the token that starts the statement's query (`WITH`, `SELECT`, `VALUES`,
    /// `INSERT`, `REPLACE`, `UPDATE`, `DELETE`), after `EXPLAIN [QUERY PLAN]` and `CREATE TABLE
    /// … AS`; `None` if there is none to put a WITH on.
    fn body_start(&self) -> Option<usize> {
        let mut i = 0;
        if self.word(i, "EXPLAIN") {
            i += 1;
            if self.word(i, "QUERY") && self.word(i + 1, "PLAN") {
                i += 2;
            }
        }
        if self.word(i, "CREATE") && self.word(i + 1, "TABLE") {
            i += 2;
            if self.word(i, "IF") && self.word(i + 1, "NOT") && self.word(i + 2, "EXISTS") {
                i += 3;
            }
            i += 1;
            if self.punct(i, b'.') {
                i += 2;
            }
            if !self.word(i, "AS") {
                return None;
            }
            i += 1;
        }
        ["WITH", "SELECT", "VALUES", "INSERT", "REPLACE", "UPDATE", "DELETE"]
            .iter()
            .any(|w| self.word(i, w))
            .then_some(i)
    }

    /// The edit declaring the needed CTEs at token `at`: merged into the statement's own
    /// `WITH [RECURSIVE]` list (first, so the client's CTEs may use them), or a new WITH.
    fn with_clause(&self, at: usize, needs: &Needs) -> Edit {
        let ctes = needs.ctes();
        if self.word(at, "WITH") {
            let after = if self.word(at + 1, "RECURSIVE") { at + 1 } else { at };
            let end = self.tokens[after].end;
            Edit { start: end, end, text: format!(" {ctes},") }
        } else {
            let start = self.tokens[at].start;
            Edit { start, end: start, text: format!("WITH {ctes} ") }
        }
    }

    /// The edit turning the call `pragma_table_list(…)` at token `i` into a filtered subquery
    /// under the same name (unless the client gave it an alias).
    fn table_list_call(&self, i: usize) -> Result<Edit, String> {
        let mut depth = 0usize;
        let mut close = None;
        for j in i + 1..self.tokens.len() {
            match self.tokens[j].kind {
                Kind::Punct(b'(') => depth += 1,
                Kind::Punct(b')') => {
                    depth -= 1;
                    if depth == 0 {
                        close = Some(j);
                        break;
                    }
                }
                _ => {}
            }
        }
        let Some(close) = close else {
            // Unbalanced: SQLite reports the syntax error.
            return Ok(Edit {
                start: self.tokens[i].start,
                end: self.tokens[i].start,
                text: String::new(),
            });
        };
        let args = &self.sql[self.tokens[i + 1].start..self.tokens[close].end];
        let alias = if self.has_alias(close + 1) { "" } else { " AS pragma_table_list" };
        Ok(Edit {
            start: self.tokens[i].start,
            end: self.tokens[close].end,
            text: format!(
                "(SELECT * FROM main.pragma_table_list{args} WHERE name {FILTER}){alias}"
            ),
        })
    }

    /// Whether token `i`, following a table in a FROM clause, starts an alias.
    fn has_alias(&self, i: usize) -> bool {
        const FOLLOWERS: &[&str] = &[
            "WHERE",
            "GROUP",
            "ORDER",
            "LIMIT",
            "JOIN",
            "INNER",
            "LEFT",
            "RIGHT",
            "FULL",
            "CROSS",
            "NATURAL",
            "ON",
            "USING",
            "UNION",
            "EXCEPT",
            "INTERSECT",
            "WINDOW",
            "HAVING",
            "INDEXED",
            "NOT",
            "RETURNING",
            "OUTER",
        ];
        match self.tokens.get(i) {
            Some(t) if t.kind == Kind::Quoted => true,
            Some(t) if t.kind == Kind::Word => !FOLLOWERS.iter().any(|w| word_is(self.sql, t, w)),
            _ => false,
        }
    }

    /// `PRAGMA [schema.]table_list [(arg) | = arg]` becomes a filtered SELECT with the same
    /// columns; other pragmas are left to the authorizer.
    fn mask_pragma(&self, edits: &mut Vec<Edit>) -> Result<(), String> {
        let (schema, at) = if self.punct(2, b'.') { (self.name(1), 3) } else { (None, 1) };
        if !self.name(at).is_some_and(|n| n.eq_ignore_ascii_case("table_list")) {
            return Ok(());
        }
        let arg = match (self.tokens.get(at + 1).map(|t| t.kind), self.tokens.len()) {
            (None, _) => None,
            (Some(Kind::Punct(b'=')), n) if n == at + 3 => Some(at + 2),
            (Some(Kind::Punct(b'(')), n) if n == at + 4 && self.punct(at + 3, b')') => Some(at + 2),
            // Not a form SQLite accepts either: let it report the error.
            _ => return Ok(()),
        };
        let quote = |s: &str| format!("'{}'", s.replace('\'', "''"));
        let mut sql = String::from("SELECT * FROM pragma_table_list");
        if let Some(arg) = arg {
            let token = &self.tokens[arg];
            let text = &self.sql[token.start..token.end];
            let value = match token.kind {
                Kind::Str => {
                    let inner = &text[1..];
                    inner.strip_suffix('\'').unwrap_or(inner).replace("''", "'")
                }
                _ => name_of(self.sql, token).unwrap_or_else(|| text.to_string()),
            };
            sql.push_str(&format!("({})", quote(&value)));
        }
        sql.push_str(&format!(" WHERE name {FILTER}"));
        if let Some(schema) = schema {
            sql.push_str(&format!(" AND schema = {}", quote(&schema)));
        }
        let (first, last) = (self.tokens[0], self.tokens[self.tokens.len() - 1]);
        edits.push(Edit { start: first.start, end: last.end, text: sql });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use test_case::test_case;

    use super::*;

    const M: &str = "sqlite_master AS (SELECT * FROM main.sqlite_master WHERE tbl_name NOT LIKE '\\_keel\\_%' ESCAPE '\\')";

    /// The text [`mask`] gives, with `{M}` standing for the `sqlite_master` CTE.
    fn masked(sql: &str) -> String {
        match mask(sql) {
            Masked::Text(text) => text.replace(M, "{M}"),
            Masked::Refused(reason) => format!("refused: {reason}"),
        }
    }

    #[test_case("SELECT 1", "SELECT 1"; "nothing")]
    #[test_case("SELECT 'sqlite_master'", "SELECT 'sqlite_master'"; "string")]
    #[test_case("SELECT 1 -- sqlite_master\n", "SELECT 1 -- sqlite_master\n"; "line comment")]
    #[test_case("SELECT /* sqlite_master */ 1", "SELECT /* sqlite_master */ 1"; "block comment")]
    #[test_case("SELECT :sqlite_master", "SELECT :sqlite_master"; "parameter")]
    #[test_case("SELECT * FROM sqlite_masters", "SELECT * FROM sqlite_masters"; "longer name")]
    #[test_case("SELECT * FROM temp.sqlite_master", "SELECT * FROM temp.sqlite_master"; "temp")]
    #[test_case("SELECT name FROM sqlite_master", "WITH {M} SELECT name FROM sqlite_master"; "plain")]
    #[test_case("select * from SQLITE_Master", "WITH {M} select * from SQLITE_Master"; "case")]
    #[test_case("SELECT * FROM \"sqlite_master\"", "WITH {M} SELECT * FROM \"sqlite_master\""; "double quoted")]
    #[test_case("SELECT * FROM [sqlite_master]", "WITH {M} SELECT * FROM [sqlite_master]"; "brackets")]
    #[test_case("SELECT * FROM `sqlite_master`", "WITH {M} SELECT * FROM `sqlite_master`"; "backticks")]
    #[test_case("SELECT * FROM main.sqlite_master", "WITH {M} SELECT * FROM sqlite_master"; "main")]
    #[test_case("SELECT * FROM \"MAIN\" . sqlite_master", "WITH {M} SELECT * FROM sqlite_master"; "quoted main")]
    #[test_case(
        "SELECT * FROM sqlite_schema",
        "WITH {M}, sqlite_schema AS (SELECT * FROM sqlite_master) SELECT * FROM sqlite_schema";
        "schema"
    )]
    #[test_case(
        "WITH x AS (SELECT name FROM sqlite_master) SELECT * FROM x",
        "WITH {M}, x AS (SELECT name FROM sqlite_master) SELECT * FROM x";
        "own with"
    )]
    #[test_case(
        "with recursive r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 3) SELECT name, n FROM r, sqlite_master",
        "with recursive {M}, r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 3) SELECT name, n FROM r, sqlite_master";
        "own recursive with"
    )]
    #[test_case(
        "SELECT 1; SELECT * FROM sqlite_master; SELECT 'sqlite_master'",
        "SELECT 1; WITH {M} SELECT * FROM sqlite_master; SELECT 'sqlite_master'";
        "second statement"
    )]
    #[test_case(
        "EXPLAIN QUERY PLAN SELECT * FROM sqlite_master",
        "EXPLAIN QUERY PLAN WITH {M} SELECT * FROM sqlite_master";
        "explain"
    )]
    #[test_case(
        "INSERT INTO t SELECT name FROM sqlite_master",
        "WITH {M} INSERT INTO t SELECT name FROM sqlite_master";
        "insert"
    )]
    #[test_case(
        "CREATE TABLE IF NOT EXISTS main.t AS SELECT name FROM sqlite_master",
        "CREATE TABLE IF NOT EXISTS main.t AS WITH {M} SELECT name FROM sqlite_master";
        "create table as"
    )]
    #[test_case(
        "SELECT * FROM sqlite_stat1",
        "WITH sqlite_stat1 AS (SELECT * FROM main.sqlite_stat1 WHERE tbl NOT LIKE '\\_keel\\_%' ESCAPE '\\') SELECT * FROM sqlite_stat1";
        "stat1"
    )]
    #[test_case(
        "SELECT name FROM pragma_table_list",
        "WITH pragma_table_list AS (SELECT * FROM main.pragma_table_list WHERE name NOT LIKE '\\_keel\\_%' ESCAPE '\\') SELECT name FROM pragma_table_list";
        "table list"
    )]
    #[test_case(
        "SELECT name FROM pragma_table_list('t') WHERE 1",
        "SELECT name FROM (SELECT * FROM main.pragma_table_list('t') WHERE name NOT LIKE '\\_keel\\_%' ESCAPE '\\') AS pragma_table_list WHERE 1";
        "table list call"
    )]
    #[test_case(
        "SELECT p.name FROM pragma_table_list(?) p",
        "SELECT p.name FROM (SELECT * FROM main.pragma_table_list(?) WHERE name NOT LIKE '\\_keel\\_%' ESCAPE '\\') p";
        "table list call with alias"
    )]
    #[test_case(
        "PRAGMA table_list",
        "SELECT * FROM pragma_table_list WHERE name NOT LIKE '\\_keel\\_%' ESCAPE '\\'";
        "pragma"
    )]
    #[test_case(
        "pragma main.TABLE_LIST('it''s')",
        "SELECT * FROM pragma_table_list('it''s') WHERE name NOT LIKE '\\_keel\\_%' ESCAPE '\\' AND schema = 'main'";
        "pragma with argument"
    )]
    #[test_case("PRAGMA table_list = t;", "SELECT * FROM pragma_table_list('t') WHERE name NOT LIKE '\\_keel\\_%' ESCAPE '\\';"; "pragma assigned")]
    #[test_case("PRAGMA table_info(sqlite_master)", "PRAGMA table_info(sqlite_master)"; "other pragma")]
    #[test_case("DROP TABLE sqlite_stat1", "DROP TABLE sqlite_stat1"; "no query")]
    #[test_case(
        "CREATE VIEW v AS SELECT * FROM sqlite_master",
        "refused: views and triggers cannot read sqlite_master: it lists Keel's internal tables";
        "view"
    )]
    #[test_case(
        "CREATE TRIGGER tr AFTER INSERT ON t BEGIN INSERT INTO u SELECT * FROM _keel_meta; END",
        "refused: _keel_meta is an internal table of Keel";
        "trigger"
    )]
    #[test_case(
        "CREATE TRIGGER tr AFTER INSERT ON t BEGIN INSERT INTO u VALUES (1); END; SELECT * FROM sqlite_master",
        "CREATE TRIGGER tr AFTER INSERT ON t BEGIN INSERT INTO u VALUES (1); END; WITH {M} SELECT * FROM sqlite_master";
        "after trigger"
    )]
    #[test_case("SELECT * FROM _keel_meta", "SELECT * FROM _keel_meta"; "keel read is the authorizer's")]
    #[test_case(
        "CREATE TRIGGER tr AFTER INSERT ON t BEGIN UPDATE t SET n = new._keel_n; END",
        "CREATE TRIGGER tr AFTER INSERT ON t BEGIN UPDATE t SET n = new._keel_n; END";
        "qualified column named like keel"
    )]
    fn rewrites(sql: &str, expected: &str) {
        assert_eq!(masked(sql), expected);
    }

    /// No text makes `mask` panic: every prefix of texts with quotes, comments and multi-byte
    /// characters cut at every place.
    #[test]
    fn never_panics() {
        for text in [
            "PRAGMA table_list = 'é'",
            "PRAGMA main.table_list(\"é\")",
            "SELECT * FROM [sqlite_master] WHERE name = 'é' -- é\n",
            "SELECT * FROM `é`.sqlite_master /* é */; WITH RECURSIVE x AS (SELECT 1) SELECT * FROM pragma_table_list(\"é\") é",
            "CREATE TRIGGER é AFTER INSERT ON t BEGIN SELECT 'é'; END; SELECT _keel_é FROM main.sqlite_schema",
        ] {
            for (end, _) in text.char_indices().chain([(text.len(), ' ')]) {
                let _ = mask(&text[..end]);
            }
        }
    }

    #[test]
    fn untouched_text_is_borrowed() {
        assert!(matches!(mask("INSERT INTO t VALUES (1)"), Masked::Text(Cow::Borrowed(_))));
        assert!(matches!(mask("SELECT 'sqlite_master'"), Masked::Text(Cow::Borrowed(_))));
    }

    /// Every rewrite must be SQL that SQLite accepts and that lists no `_keel_` object, where
    /// the client's own text does list them.
    #[test_case("SELECT name FROM sqlite_master ORDER BY name")]
    #[test_case("SELECT name FROM main.SQLITE_SCHEMA ORDER BY name")]
    #[test_case("SELECT sqlite_master.name FROM main.sqlite_master ORDER BY 1")]
    #[test_case(
        "WITH RECURSIVE x(n) AS (SELECT 1) SELECT name FROM sqlite_schema, x ORDER BY name"
    )]
    #[test_case("SELECT name FROM pragma_table_list ORDER BY name")]
    #[test_case("SELECT name FROM pragma_table_list('_keel_meta') UNION ALL SELECT 't'")]
    #[test_case("PRAGMA table_list")]
    #[test_case("PRAGMA main.table_list")]
    #[test_case("SELECT (SELECT group_concat(name) FROM sqlite_master)")]
    #[test_case("SELECT tbl, idx FROM sqlite_stat1")]
    fn runs_without_keel(sql: &str) {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE _keel_meta (id); CREATE TABLE _keel_requests (id TEXT PRIMARY KEY);
             CREATE INDEX _keel_requests_x ON _keel_requests (id); CREATE TABLE t (a);
             CREATE INDEX t_a ON t (a); INSERT INTO t VALUES (1);
             INSERT INTO _keel_requests VALUES ('x'); ANALYZE;",
        )
        .unwrap();
        let Masked::Text(text) = mask(sql) else { panic!("refused: {sql}") };
        let raw = listed(&conn, sql);
        assert!(raw.iter().any(|r| r.contains("_keel_")), "{sql} lists no _keel_ object: {raw:?}");
        let rows = listed(&conn, &text);
        assert!(!rows.is_empty(), "{sql}: nothing listed");
        assert!(!rows.iter().any(|r| r.contains("_keel_")), "{sql}: {rows:?}");
    }

    /// Every row `sql` returns, its values joined by commas.
    fn listed(conn: &rusqlite::Connection, sql: &str) -> Vec<String> {
        let mut statement = conn.prepare(sql).unwrap();
        let columns = statement.column_count();
        let rows: Vec<String> = statement
            .query_map([], |row| {
                (0..columns)
                    .map(|i| row.get::<_, rusqlite::types::Value>(i).map(|v| format!("{v:?}")))
                    .collect::<rusqlite::Result<Vec<_>>>()
                    .map(|v| v.join(","))
            })
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        rows
    }
}
