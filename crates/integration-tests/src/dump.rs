//! Comparing nodes: a node's whole database as JSON ([`TestCluster::dump`]), and the check that
//! every node holds the leader's ([`TestCluster::assert_consistent`]).

use std::fmt::{Display, Write as _};

use serde_json::{Value, json};

use crate::{Level, NodeId, TestCluster};

/// Quotes an SQL identifier.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

impl TestCluster {
    // ---- Comparing nodes ---------------------------------------------------------------------

    /// Node `id`'s whole database, read with `level=none`:
    /// `{"schema": [[type, name, tbl_name, sql], …], "tables": {name: {"columns", "values"}}}`.
    ///
    /// The schema comes from `sqlite_schema` ordered by type and name, without Keel's own
    /// `_keel_*` objects. Rowid tables are read as `SELECT rowid AS _rowid_, *` in rowid order,
    /// so rowids must replicate too (they are visible to users and to later `INSERT`s);
    /// `WITHOUT ROWID` tables are ordered by all their columns; `sqlite_sequence` by table name
    /// (its own rowids are an implementation detail no user can observe).
    pub fn dump(&self, id: NodeId) -> Value {
        self.dump_with(id, &[])
    }

    /// Like [`TestCluster::dump`], reading each table named in `summaries` with the paired
    /// query instead of all its rows: for tables too big to move through JSON in a test (tens
    /// of MiB of blobs), summarized by a query that still catches a missing, moved or damaged
    /// row (e.g. rowid, length and a few slices of each blob).
    pub fn dump_with(&self, id: NodeId, summaries: &[(&str, &str)]) -> Value {
        let schema = self.rows(
            id,
            "SELECT type, name, tbl_name, sql FROM sqlite_schema \
             WHERE substr(name, 1, 6) <> '_keel_' AND substr(tbl_name, 1, 6) <> '_keel_' \
             ORDER BY type, name",
        );
        let mut tables = serde_json::Map::new();
        for entry in schema.iter().filter(|entry| entry[0] == "table") {
            let name = entry[1].as_str().expect("table name is text");
            let create = entry[3].as_str().unwrap_or_default();
            let table = quote_ident(name);
            let summary = summaries.iter().find(|(table, _)| *table == name);
            let sql = if let Some((_, query)) = summary {
                (*query).to_string()
            } else if name == "sqlite_sequence" {
                format!(
                    "SELECT name, seq FROM {table} WHERE substr(name, 1, 6) <> '_keel_' ORDER BY name"
                )
            } else if is_without_rowid(create) {
                let columns =
                    self.query(id, &format!("SELECT * FROM {table} LIMIT 0"), Level::None);
                let count = columns.result(0).columns().len();
                let order: Vec<String> = (1..=count).map(|i| i.to_string()).collect();
                format!("SELECT * FROM {table} ORDER BY {}", order.join(", "))
            } else {
                format!("SELECT rowid AS _rowid_, * FROM {table} ORDER BY rowid")
            };
            let result = self.query(id, &sql, Level::None);
            tables.insert(
                name.to_string(),
                json!({"columns": result.result(0).columns, "values": result.rows(0)}),
            );
        }
        json!({"schema": schema, "tables": tables})
    }

    /// Waits until every running node has applied the leader's commit index, then asserts that
    /// all their [`TestCluster::dump`]s equal the leader's, and returns it. Call it when no
    /// writes are in flight.
    pub fn assert_consistent(&self) -> Value {
        self.assert_consistent_with(&[])
    }

    /// Like [`TestCluster::assert_consistent`], comparing [`TestCluster::dump_with`]`(summaries)`.
    pub fn assert_consistent_with(&self, summaries: &[(&str, &str)]) -> Value {
        let leader = self.leader();
        let lsn = self.status(leader).node.commit_index;
        self.wait_all_applied(lsn);
        let expected = self.dump_with(leader, summaries);
        for id in self.up().into_iter().filter(|&id| id != leader) {
            let actual = self.dump_with(id, summaries);
            if actual != expected {
                panic!(
                    "node {id} diverges from the leader (node {leader}) after both applied lsn {lsn}: {}",
                    first_difference(&expected, &actual, "$")
                );
            }
        }
        expected
    }
}

/// Panics, naming `what` and the first difference by path, unless two [`TestCluster::dump`]s
/// (possibly of different clusters) are equal.
pub fn assert_same_dump(expected: &Value, actual: &Value, what: impl Display) {
    if expected != actual {
        panic!(
            "{what}: dumps differ (\"leader\" is the expected dump, \"node\" the actual one) {}",
            first_difference(expected, actual, "$")
        );
    }
}

/// Whether a `CREATE TABLE` statement makes a `WITHOUT ROWID` table: the table options after
/// the closing parenthesis of the column list mention it.
fn is_without_rowid(create: &str) -> bool {
    let options = create.rfind(')').map_or("", |end| &create[end + 1..]);
    let words: Vec<String> = options
        .split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
        .map(str::to_ascii_uppercase)
        .collect();
    words.windows(2).any(|pair| pair[0] == "WITHOUT" && pair[1] == "ROWID")
}

/// Describes the first place where two JSON values differ, by path, for failure messages.
fn first_difference(expected: &Value, actual: &Value, path: &str) -> String {
    match (expected, actual) {
        (Value::Object(a), Value::Object(b)) => {
            for key in a.keys().chain(b.keys()) {
                match (a.get(key), b.get(key)) {
                    (Some(x), Some(y)) if x == y => {}
                    (Some(x), Some(y)) => return first_difference(x, y, &format!("{path}.{key}")),
                    (x, y) => return format!("at {path}.{key}: leader has {x:?}, node has {y:?}"),
                }
            }
            format!("at {path}: objects differ")
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                if x != y {
                    return first_difference(x, y, &format!("{path}[{i}]"));
                }
            }
            let mut message =
                format!("at {path}: leader has {} elements, node has {}", a.len(), b.len());
            let extra = if a.len() > b.len() { &a[b.len()..] } else { &b[a.len()..] };
            if let Some(first) = extra.first() {
                let _ = write!(message, "; first extra element: {first}");
            }
            message
        }
        (x, y) => format!("at {path}: leader has {x}, node has {y}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_rowid_is_detected_after_the_column_list() {
        assert!(is_without_rowid("CREATE TABLE t(k TEXT PRIMARY KEY) WITHOUT ROWID"));
        assert!(is_without_rowid("CREATE TABLE t(k TEXT PRIMARY KEY)\n  without\trowid, STRICT"));
        assert!(is_without_rowid("CREATE TABLE t(k TEXT PRIMARY KEY) STRICT, WITHOUT ROWID"));
        assert!(!is_without_rowid("CREATE TABLE t(k TEXT PRIMARY KEY)"));
        assert!(!is_without_rowid("CREATE TABLE t(without_rowid INT, \"without rowid\" INT)"));
        assert!(!is_without_rowid(""));
    }

    #[test]
    fn first_difference_names_the_path() {
        let a = json!({"tables": {"t": {"values": [[1, "a"], [2, "b"]]}}});
        let b = json!({"tables": {"t": {"values": [[1, "a"], [2, "c"]]}}});
        assert_eq!(
            first_difference(&a, &b, "$"),
            r#"at $.tables.t.values[1][1]: leader has "b", node has "c""#
        );
        let c = json!({"tables": {"t": {"values": [[1, "a"]]}}});
        assert_eq!(
            first_difference(&a, &c, "$"),
            r#"at $.tables.t.values: leader has 2 elements, node has 1; first extra element: [2,"b"]"#
        );
    }
}
