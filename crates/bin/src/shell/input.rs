//! Cutting what the user types (or pipes in) into the units the shell runs: dot-commands, one
//! line each, and SQL statements, which end with `;` and may span many lines.
//!
//! Where a statement ends is SQLite's decision, not ours: [`Input::push_line`] asks
//! `sqlite3_complete` (as the sqlite3 CLI does) at every `;`, so a `;` inside a string, a quoted
//! name, a comment or the body of a `CREATE TRIGGER … BEGIN … END` does not end it.
//!
//! A line that starts with `.` is a dot-command only when no statement is pending; inside a
//! statement it is SQL (`SELECT 1\n.5;` is one statement).

use std::ffi::{CString, c_char};

/// One thing to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// A dot-command line, trimmed, with its leading `.`.
    Dot(String),
    /// One SQL statement, trimmed, with its closing `;` when it had one.
    Sql(String),
}

/// Text typed so far that does not yet make a complete statement.
///
/// Invariants:
/// - `pending` holds no complete statement (every complete one has been handed out).
/// - `pending` is empty, or has content other than whitespace and finished comments.
#[derive(Debug, Default)]
pub struct Input {
    /// The incomplete statement, its lines joined by `\n`.
    pending: String,
}

impl Input {
    /// Whether a statement is under way (the shell then shows its continuation prompt).
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Forgets the incomplete statement (Ctrl-C at the prompt).
    pub fn clear(&mut self) {
        self.pending.clear();
    }

    /// Adds one line of input; returns what it completed, in order.
    pub fn push_line(&mut self, line: &str) -> Vec<Item> {
        if self.pending.is_empty() {
            let trimmed = line.trim();
            if trimmed.starts_with('.') {
                return vec![Item::Dot(trimmed.to_string())];
            }
            if trimmed.is_empty() {
                return Vec::new();
            }
        } else {
            self.pending.push('\n');
        }
        self.pending.push_str(line);
        let mut items = Vec::new();
        let mut start = 0;
        for (at, _) in self.pending.match_indices(';') {
            if at < start {
                continue;
            }
            let candidate = &self.pending[start..=at];
            if is_complete(candidate) {
                if sql::load::has_content(candidate) {
                    items.push(Item::Sql(candidate.trim().to_string()));
                }
                start = at + 1;
            }
        }
        let rest = self.pending[start..].to_string();
        // Nothing but whitespace and finished comments is no statement under way (an open
        // `/* …` is: the comment goes on on the next line).
        let nothing = !sql::load::has_content(&rest) && is_complete(&format!("{rest}\n;"));
        self.pending = if nothing { String::new() } else { rest };
        items
    }

    /// At the end of the input: what is left, as a statement, if it has content (sqlite3 runs
    /// a last statement that lacks its `;` too).
    pub fn finish(&mut self) -> Option<Item> {
        let rest = std::mem::take(&mut self.pending);
        sql::load::has_content(&rest).then(|| Item::Sql(rest.trim().to_string()))
    }
}

/// Whether `sql` (ending with `;`) is one or more complete statements, by `sqlite3_complete`.
/// Text holding a NUL byte counts as complete: the server refuses it with a clear error, which
/// is better than waiting for an end that can never come.
fn is_complete(sql: &str) -> bool {
    let Ok(text) = CString::new(sql) else { return true };
    // SAFETY: `text` is NUL-terminated and outlives the call; sqlite3_complete only reads it.
    unsafe { rusqlite::ffi::sqlite3_complete(text.as_ptr().cast::<c_char>()) != 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sql(s: &str) -> Item {
        Item::Sql(s.to_string())
    }

    #[test]
    fn one_line_statements_and_dot_commands() {
        let mut input = Input::default();
        assert_eq!(input.push_line("SELECT 1;"), vec![sql("SELECT 1;")]);
        assert_eq!(input.push_line("  .tables  "), vec![Item::Dot(".tables".into())]);
        assert_eq!(
            input.push_line("SELECT 1; SELECT 2;"),
            vec![sql("SELECT 1;"), sql("SELECT 2;")]
        );
        assert_eq!(input.push_line("   "), vec![]);
        assert!(input.is_empty());
    }

    #[test]
    fn statements_span_lines_until_the_semicolon() {
        let mut input = Input::default();
        assert_eq!(input.push_line("SELECT"), vec![]);
        assert!(!input.is_empty());
        assert_eq!(input.push_line(".5 AS x,"), vec![], "a dot line inside a statement is SQL");
        assert_eq!(
            input.push_line("'a;b' AS y; SELECT"),
            vec![sql("SELECT\n.5 AS x,\n'a;b' AS y;")]
        );
        assert_eq!(input.push_line("2;"), vec![sql("SELECT\n2;")]);
        assert!(input.is_empty());
    }

    #[test]
    fn trigger_bodies_and_comments_do_not_end_a_statement() {
        let mut input = Input::default();
        assert_eq!(input.push_line("CREATE TRIGGER t AFTER INSERT ON a BEGIN"), vec![]);
        assert_eq!(input.push_line("  INSERT INTO b VALUES (1); -- not ; the end"), vec![]);
        assert_eq!(
            input.push_line("END;"),
            vec![sql(
                "CREATE TRIGGER t AFTER INSERT ON a BEGIN\n  INSERT INTO b VALUES (1); -- not ; the end\nEND;"
            )]
        );
        assert_eq!(
            input.push_line("SELECT \"a;\" /* ; */ FROM [x;y];"),
            vec![sql("SELECT \"a;\" /* ; */ FROM [x;y];")]
        );
    }

    #[test]
    fn empty_statements_are_dropped() {
        let mut input = Input::default();
        assert_eq!(input.push_line(";;  -- nothing"), vec![]);
        assert!(input.is_empty());
        assert_eq!(input.push_line("/* c */ ;"), vec![]);
        assert!(input.is_empty());
        assert_eq!(input.push_line("-- a comment alone"), vec![]);
        assert!(input.is_empty());
        assert_eq!(input.push_line("/* a comment that goes on"), vec![]);
        assert!(!input.is_empty());
        assert_eq!(
            input.push_line("; */ SELECT 3;"),
            vec![sql("/* a comment that goes on\n; */ SELECT 3;")]
        );
    }

    #[test]
    fn finish_runs_a_statement_without_semicolon() {
        let mut input = Input::default();
        assert_eq!(input.push_line("SELECT 1"), vec![]);
        assert_eq!(input.finish(), Some(sql("SELECT 1")));
        assert_eq!(input.finish(), None);
        input.push_line("-- only a comment");
        assert_eq!(input.finish(), None);
    }

    #[test]
    fn clear_drops_the_pending_statement() {
        let mut input = Input::default();
        input.push_line("SELECT 'unterminated;");
        assert!(!input.is_empty());
        input.clear();
        assert!(input.is_empty());
        assert_eq!(input.push_line(".quit"), vec![Item::Dot(".quit".into())]);
    }

    #[test]
    fn nul_bytes_end_the_statement_for_the_server_to_refuse() {
        let mut input = Input::default();
        assert_eq!(input.push_line("SELECT '\0';"), vec![sql("SELECT '\0';")]);
    }
}
