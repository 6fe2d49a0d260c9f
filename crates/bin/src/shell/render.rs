//! Turning answers into text for the terminal: aligned tables of rows, counts of affected
//! rows. Pure functions over JSON values, so the layout is tested without a server.
//!
//! A table looks like psql's: a header, a line of dashes, one line per row, numbers aligned
//! right and everything else left, then a row count. Values are shown so that every row stays
//! on one line: NULL as `NULL`, a BLOB as an `x'…'` hex literal (the shell asks for BLOBs as
//! byte arrays, `blob_array`), and control characters in text escaped (`\n`, `\t`, …).
//! Widths are display widths, so wide characters line up too.

use serde_json::Value;
use unicode_width::UnicodeWidthStr as _;

/// Renders rows under their column names as an aligned table, ending with a row count line.
pub fn table(columns: &[String], rows: &[Vec<Value>]) -> String {
    table_of(columns, rows, "row")
}

/// [`table`], counting the rows as `what`s: `(3 nodes)`.
pub fn table_of(columns: &[String], rows: &[Vec<Value>], what: &str) -> String {
    let cells: Vec<Vec<(String, bool)>> = rows
        .iter()
        .map(|row| {
            (0..columns.len())
                .map(|i| {
                    let value = row.get(i).unwrap_or(&Value::Null);
                    (value_text(value), value.is_number())
                })
                .collect()
        })
        .collect();
    let mut widths: Vec<usize> = columns.iter().map(|c| escape(c).width()).collect();
    for row in &cells {
        for (width, (text, _)) in widths.iter_mut().zip(row) {
            *width = (*width).max(text.width());
        }
    }
    let mut out = String::new();
    let header: Vec<(String, bool)> = columns.iter().map(|c| (escape(c), false)).collect();
    push_line(&mut out, &header, &widths);
    let dashes: Vec<String> = widths.iter().map(|w| "-".repeat(w + 2)).collect();
    out.push_str(&dashes.join("+"));
    out.push('\n');
    for row in &cells {
        push_line(&mut out, row, &widths);
    }
    out.push_str(&count(rows.len(), what));
    out.push('\n');
    out
}

/// `(1 row)`, `(3 rows)`, `(2 indexes)`.
pub fn count(n: usize, what: &str) -> String {
    match n {
        1 => format!("(1 {what})"),
        _ if what.ends_with('x') => format!("({n} {what}es)"),
        _ => format!("({n} {what}s)"),
    }
}

/// What a write reports: `1 row affected`, `0 rows affected`.
pub fn rows_affected(n: i64) -> String {
    if n == 1 { "1 row affected".to_string() } else { format!("{n} rows affected") }
}

/// One value as shown in a table.
pub fn value_text(value: &Value) -> String {
    match value {
        Value::Null => "NULL".to_string(),
        Value::String(s) => escape(s),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Array(bytes) => {
            let mut hex = String::with_capacity(bytes.len() * 2 + 3);
            hex.push_str("x'");
            for byte in bytes {
                match byte.as_u64() {
                    Some(b) => hex.push_str(&format!("{b:02x}")),
                    None => hex.push_str("??"),
                }
            }
            hex.push('\'');
            hex
        }
        Value::Object(_) => value.to_string(),
    }
}

/// Text with its control characters escaped, so that it stays on one line.
fn escape(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", u32::from(c))),
            c => out.push(c),
        }
    }
    out
}

/// Appends one line of cells, each padded to its column's width.
fn push_line(out: &mut String, cells: &[(String, bool)], widths: &[usize]) {
    let mut line = String::new();
    for (i, ((text, right), width)) in cells.iter().zip(widths).enumerate() {
        if i > 0 {
            line.push('|');
        }
        let pad = " ".repeat(width - text.width());
        line.push(' ');
        if *right {
            line.push_str(&pad);
            line.push_str(text);
        } else {
            line.push_str(text);
            line.push_str(&pad);
        }
        line.push(' ');
    }
    out.push_str(line.trim_end());
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn tables_align_columns_and_count_rows() {
        let columns = vec!["id".to_string(), "name".to_string(), "score".to_string()];
        let rows = vec![
            vec![json!(1), json!("fiona"), json!(1.5)],
            vec![json!(1000), Value::Null, json!(-2)],
        ];
        assert_eq!(
            table(&columns, &rows),
            concat!(
                " id   | name  | score\n",
                "------+-------+-------\n",
                "    1 | fiona |   1.5\n",
                " 1000 | NULL  |    -2\n",
                "(2 rows)\n"
            )
        );
    }

    #[test]
    fn empty_results_keep_their_header() {
        let columns = vec!["a".to_string()];
        assert_eq!(table(&columns, &[]), " a\n---\n(0 rows)\n");
        assert_eq!(table(&columns, &[vec![json!("x")]]), " a\n---\n x\n(1 row)\n");
    }

    #[test]
    fn values_stay_on_one_line() {
        assert_eq!(value_text(&json!("two\nlines\t!")), "two\\nlines\\t!");
        assert_eq!(value_text(&json!([0, 255, 16])), "x'00ff10'");
        assert_eq!(value_text(&json!([])), "x''");
        assert_eq!(value_text(&Value::Null), "NULL");
        assert_eq!(value_text(&json!("\u{7}")), "\\u{7}");
    }

    #[test]
    fn wide_characters_are_measured_by_display_width() {
        let columns = vec!["w".to_string(), "n".to_string()];
        let rows = vec![vec![json!("日本"), json!(1)], vec![json!("ab"), json!(22)]];
        assert_eq!(
            table(&columns, &rows),
            " w    | n\n------+----\n 日本 |  1\n ab   | 22\n(2 rows)\n"
        );
    }

    #[test]
    fn counts() {
        assert_eq!(rows_affected(1), "1 row affected");
        assert_eq!(rows_affected(0), "0 rows affected");
        assert_eq!(count(3, "node"), "(3 nodes)");
        assert_eq!(count(0, "index"), "(0 indexes)");
        assert!(table_of(&["id".to_string()], &[vec![json!("1")]], "node").ends_with("(1 node)\n"));
    }
}
