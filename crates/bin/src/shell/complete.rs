//! Tab completion: dot-commands and their arguments, table names, SQL keywords.
//!
//! [`candidates`] is the pure part (what completes the word before the cursor); [`Completion`]
//! plugs it into rustyline, adding file names after the commands that take one
//! ([`takes_file`]). Table names come from the shell, which reads them at start and after
//! statements that may change the schema.

use rustyline::completion::{Completer, FilenameCompleter, Pair};
use rustyline::{Context, Helper, Highlighter, Hinter, Validator};

use super::command::{HELP, LEVELS, Mode};

/// SQL keywords offered for completion.
const KEYWORDS: &[&str] = &[
    "ABORT",
    "ADD",
    "ALL",
    "ALTER",
    "ANALYZE",
    "AND",
    "AS",
    "ASC",
    "AUTOINCREMENT",
    "BEGIN",
    "BETWEEN",
    "BLOB",
    "BY",
    "CASCADE",
    "CASE",
    "CAST",
    "CHECK",
    "COLLATE",
    "COLUMN",
    "COMMIT",
    "CONFLICT",
    "CONSTRAINT",
    "COUNT",
    "CREATE",
    "CROSS",
    "DEFAULT",
    "DELETE",
    "DESC",
    "DISTINCT",
    "DROP",
    "ELSE",
    "END",
    "ESCAPE",
    "EXCEPT",
    "EXISTS",
    "EXPLAIN",
    "FOREIGN",
    "FROM",
    "GLOB",
    "GROUP",
    "HAVING",
    "IF",
    "IGNORE",
    "IN",
    "INDEX",
    "INNER",
    "INSERT",
    "INTEGER",
    "INTERSECT",
    "INTO",
    "IS",
    "JOIN",
    "KEY",
    "LEFT",
    "LIKE",
    "LIMIT",
    "NOT",
    "NULL",
    "OFFSET",
    "ON",
    "OR",
    "ORDER",
    "OUTER",
    "PLAN",
    "PRAGMA",
    "PRIMARY",
    "QUERY",
    "REAL",
    "RECURSIVE",
    "REFERENCES",
    "RENAME",
    "REPLACE",
    "RETURNING",
    "ROLLBACK",
    "ROWID",
    "SELECT",
    "SET",
    "STRICT",
    "TABLE",
    "TEXT",
    "THEN",
    "TO",
    "TRIGGER",
    "UNION",
    "UNIQUE",
    "UPDATE",
    "USING",
    "VACUUM",
    "VALUES",
    "VIEW",
    "WHEN",
    "WHERE",
    "WITH",
    "WITHOUT",
];

/// Durability modes offered after `.durability`.
const DURABILITIES: &[&str] = &["semi-sync", "sync", "replicas:"];

/// The dot-commands whose argument is a file name.
const FILE_COMMANDS: &[&str] =
    &[".backup", ".boot", ".dump", ".output", ".read", ".restore", ".sysdump"];

/// The rustyline helper of the interactive shell.
#[derive(Helper, Hinter, Highlighter, Validator)]
pub struct Completion {
    /// Table and view names of the database, as last read.
    pub tables: Vec<String>,
    /// Completes file names for the commands that take one.
    files: FilenameCompleter,
}

impl Completion {
    /// A helper that completes `tables`.
    pub fn new(tables: Vec<String>) -> Completion {
        Completion { tables, files: FilenameCompleter::new() }
    }
}

impl Completer for Completion {
    type Candidate = Pair;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        ctx: &Context<'_>,
    ) -> rustyline::Result<(usize, Vec<Pair>)> {
        if takes_file(&line[..pos]) {
            return self.files.complete(line, pos, ctx);
        }
        let (start, words) = candidates(line, pos, &self.tables);
        let pairs = words.into_iter().map(|w| Pair { display: w.clone(), replacement: w });
        Ok((start, pairs.collect()))
    }
}

/// Whether `before` (the line up to the cursor) is a dot-command that takes a file name,
/// with its name typed in full: the word being typed is a file name.
pub fn takes_file(before: &str) -> bool {
    let command = before.trim_start();
    command.split_once(char::is_whitespace).is_some_and(|(name, _)| FILE_COMMANDS.contains(&name))
}

/// What may complete the word that ends at byte `pos` of `line`: where that word starts, and
/// the candidates, sorted.
pub fn candidates(line: &str, pos: usize, tables: &[String]) -> (usize, Vec<String>) {
    let Some(before) = line.get(..pos) else { return (pos, Vec::new()) };
    let command = before.trim_start();
    if command.starts_with('.') {
        return match command.split_once(char::is_whitespace) {
            None => {
                let start = pos - command.len();
                (start, matching(HELP.iter().map(|(name, _, _)| *name), command, false))
            }
            Some((name, _)) => {
                let start = word_start(before, |c| !c.is_whitespace());
                let word = &before[start..];
                let options: Vec<String> = match name {
                    ".schema" | ".indexes" | ".indices" => tables.to_vec(),
                    ".consistency" => LEVELS.iter().map(|l| l.as_str().to_string()).collect(),
                    ".durability" => DURABILITIES.iter().map(|d| d.to_string()).collect(),
                    ".timer" => vec!["on".into(), "off".into()],
                    ".mode" => Mode::ALL.iter().map(|m| m.as_str().to_string()).collect(),
                    _ => Vec::new(),
                };
                (start, matching(options.iter().map(String::as_str), word, false))
            }
        };
    }
    let start = word_start(before, |c| c.is_alphanumeric() || c == '_');
    let word = &before[start..];
    if word.is_empty() {
        return (start, Vec::new());
    }
    let mut found = matching(tables.iter().map(String::as_str), word, false);
    found.extend(matching(KEYWORDS.iter().copied(), word, true));
    found.dedup();
    (start, found)
}

/// The byte where the run of `in_word` characters that ends `text` starts.
fn word_start(text: &str, in_word: impl Fn(char) -> bool) -> usize {
    text.char_indices().rev().take_while(|(_, c)| in_word(*c)).last().map_or(text.len(), |(i, _)| i)
}

/// The options that start with `prefix` (ignoring case), sorted; keywords take the case of
/// the prefix (`sel` completes to `select`).
fn matching<'a>(
    options: impl Iterator<Item = &'a str>,
    prefix: &str,
    keyword: bool,
) -> Vec<String> {
    let lower = prefix.chars().any(char::is_lowercase);
    let mut found: Vec<String> = options
        .filter(|o| {
            o.len() >= prefix.len()
                && o.is_char_boundary(prefix.len())
                && o[..prefix.len()].eq_ignore_ascii_case(prefix)
        })
        .map(|o| if keyword && lower { o.to_ascii_lowercase() } else { o.to_string() })
        .collect();
    found.sort();
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tables() -> Vec<String> {
        vec!["users".into(), "user_roles".into(), "events".into()]
    }

    fn complete(line: &str) -> (usize, Vec<String>) {
        candidates(line, line.len(), &tables())
    }

    #[test]
    fn dot_commands() {
        assert_eq!(complete(".ta"), (0, vec![".tables".to_string()]));
        assert_eq!(
            complete("  .s"),
            (2, [".schema", ".status", ".stepdown", ".sysdump"].map(String::from).to_vec())
        );
        assert_eq!(
            complete(".schema us"),
            (8, vec!["user_roles".to_string(), "users".to_string()])
        );
        assert_eq!(complete(".consistency l"), (13, vec!["linearizable".to_string()]));
        assert_eq!(
            complete(".durability s"),
            (12, vec!["semi-sync".to_string(), "sync".to_string()])
        );
        assert_eq!(complete(".timer o"), (7, vec!["off".to_string(), "on".to_string()]));
        assert_eq!(complete(".nodes x"), (7, vec![]));
        assert_eq!(complete(".mode c"), (6, vec!["column".to_string(), "csv".to_string()]));
        assert_eq!(
            complete(".re"),
            (
                0,
                vec![
                    ".read".to_string(),
                    ".ready".to_string(),
                    ".remove".to_string(),
                    ".restore".to_string()
                ]
            )
        );
        assert_eq!(complete(".st"), (0, vec![".status".to_string(), ".stepdown".to_string()]));
    }

    #[test]
    fn file_names_follow_the_commands_that_take_one() {
        for line in [".backup b", "  .read ", ".dump out", ".output x", ".boot ", ".sysdump d"] {
            assert!(takes_file(line), "{line}");
        }
        for line in [".read", ".ready ", ".schema u", "SELECT .read x", ".readx y"] {
            assert!(!takes_file(line), "{line}");
        }
    }

    #[test]
    fn tables_and_keywords() {
        assert_eq!(complete("SELECT * FROM ev"), (14, vec!["events".to_string()]));
        assert_eq!(complete("sel"), (0, vec!["select".to_string()]));
        assert_eq!(complete("SEL"), (0, vec!["SELECT".to_string()]));
        assert_eq!(complete("select * from USERS"), (14, vec!["users".to_string()]));
        assert_eq!(complete("SELECT "), (7, vec![]));
        assert_eq!(complete("SELECT é"), (7, vec![]));
    }

    #[test]
    fn a_cursor_inside_the_line_completes_the_word_before_it() {
        let line = "SELECT * FROM ev WHERE";
        assert_eq!(candidates(line, 16, &tables()), (14, vec!["events".to_string()]));
        assert_eq!(candidates(line, 99, &tables()), (99, vec![]));
    }
}
