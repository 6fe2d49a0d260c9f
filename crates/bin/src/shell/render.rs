//! Turning answers into text for the terminal: aligned tables of rows, counts of affected
//! rows. Pure functions over JSON values, so the layout is tested without a server.
//!
//! A table looks like psql's: a header, a line of dashes, one line per row, numbers aligned
//! right and everything else left, then a row count. Values are shown so that every row stays
//! on one line: NULL as `NULL`, a BLOB as an `x'…'` hex literal (the shell asks for BLOBs as
//! byte arrays, `blob_array`), and control characters in text escaped (`\n`, `\t`, …).
//! Widths are display widths, so wide characters line up too.
//!
//! `.mode` picks another layout for query results ([`Mode`], [`rows`]): `csv` (RFC 4180, with
//! a header line), `json` (an array of objects, one row a line, values as the HTTP API gives
//! them) or `line` (one `column = value` line each, a blank line between rows), as sqlite3 and
//! rqlite's shell name them.

use serde_json::Value;
use unicode_width::UnicodeWidthStr as _;

/// How query results are laid out (`.mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// An aligned table with a row count (the default; `table` is another name for it).
    Column,
    /// Comma-separated values with a header line.
    Csv,
    /// A JSON array of objects, one row a line.
    Json,
    /// `column = value`, one line each, rows apart by a blank line.
    Line,
}

impl Mode {
    /// Every mode, in the order `.help` lists them.
    pub const ALL: [Mode; 4] = [Mode::Column, Mode::Csv, Mode::Json, Mode::Line];

    /// The mode's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Column => "column",
            Mode::Csv => "csv",
            Mode::Json => "json",
            Mode::Line => "line",
        }
    }

    /// Parses a mode name, case-insensitively; `table` is `column`.
    pub fn parse(name: &str) -> Result<Mode, String> {
        if name.eq_ignore_ascii_case("table") {
            return Ok(Mode::Column);
        }
        Mode::ALL
            .into_iter()
            .find(|m| m.as_str().eq_ignore_ascii_case(name))
            .ok_or_else(|| format!("unknown mode '{name}' (use column, csv, json or line)"))
    }
}

/// Renders a query's rows in `mode`.
pub fn rows(mode: Mode, columns: &[String], rows: &[Vec<Value>]) -> String {
    match mode {
        Mode::Column => table(columns, rows),
        Mode::Csv => csv(columns, rows),
        Mode::Json => json(columns, rows),
        Mode::Line => line(columns, rows),
    }
}

/// CSV: a header line, then one line per row; NULL is an empty field, a BLOB its hex literal;
/// a field with a comma, a quote or a line break is quoted (RFC 4180).
fn csv(columns: &[String], rows: &[Vec<Value>]) -> String {
    let field = |text: &str| {
        if text.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", text.replace('"', "\"\""))
        } else {
            text.to_string()
        }
    };
    let mut out = String::new();
    let header: Vec<String> = columns.iter().map(|c| field(c)).collect();
    out.push_str(&header.join(","));
    out.push_str("\r\n");
    for row in rows {
        let cells: Vec<String> = (0..columns.len())
            .map(|i| match row.get(i).unwrap_or(&Value::Null) {
                Value::Null => String::new(),
                Value::String(s) => field(s),
                other => field(&value_text(other)),
            })
            .collect();
        out.push_str(&cells.join(","));
        out.push_str("\r\n");
    }
    out
}

/// JSON: an array with one object per row (keys in column order), one row a line.
fn json(columns: &[String], rows: &[Vec<Value>]) -> String {
    let objects: Vec<String> = rows
        .iter()
        .map(|row| {
            let pairs: Vec<String> = columns
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    format!("{}:{}", Value::from(c.as_str()), row.get(i).unwrap_or(&Value::Null))
                })
                .collect();
            format!("{{{}}}", pairs.join(","))
        })
        .collect();
    format!("[{}]\n", objects.join(",\n"))
}

/// Line: each value on a line of its own after its column name (names aligned right), rows
/// apart by a blank line.
fn line(columns: &[String], rows: &[Vec<Value>]) -> String {
    let names: Vec<String> = columns.iter().map(|c| escape(c)).collect();
    let width = names.iter().map(|n| n.width()).max().unwrap_or(0);
    let mut out = String::new();
    for (k, row) in rows.iter().enumerate() {
        if k > 0 {
            out.push('\n');
        }
        for (i, name) in names.iter().enumerate() {
            let value = value_text(row.get(i).unwrap_or(&Value::Null));
            let pad = " ".repeat(width - name.width());
            out.push_str(&format!("{pad}{name} = {value}\n"));
        }
    }
    out
}

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
    fn modes_lay_out_the_same_rows() {
        let columns = vec!["id".to_string(), "note, quoted".to_string()];
        let rows = vec![
            vec![json!(1), json!("say \"hi\"")],
            vec![json!(2.5), Value::Null],
            vec![json!(3), json!([1, 255])],
        ];
        assert_eq!(
            super::rows(Mode::Csv, &columns, &rows),
            "id,\"note, quoted\"\r\n1,\"say \"\"hi\"\"\"\r\n2.5,\r\n3,x'01ff'\r\n"
        );
        assert_eq!(
            super::rows(Mode::Json, &columns, &rows),
            "[{\"id\":1,\"note, quoted\":\"say \\\"hi\\\"\"},\n\
             {\"id\":2.5,\"note, quoted\":null},\n\
             {\"id\":3,\"note, quoted\":[1,255]}]\n"
        );
        assert_eq!(super::rows(Mode::Json, &columns, &[]), "[]\n");
        assert_eq!(
            super::rows(Mode::Line, &columns, &rows[..2]),
            "          id = 1\nnote, quoted = say \"hi\"\n\n          id = 2.5\nnote, quoted = NULL\n"
        );
        assert_eq!(super::rows(Mode::Column, &columns, &[]), table(&columns, &[]));
        assert_eq!(super::rows(Mode::Csv, &["a\nb".to_string()], &[]), "\"a\nb\"\r\n");
    }

    #[test]
    fn modes_parse_by_name() {
        assert_eq!(Mode::parse("CSV"), Ok(Mode::Csv));
        assert_eq!(Mode::parse("table"), Ok(Mode::Column));
        for mode in Mode::ALL {
            assert_eq!(Mode::parse(mode.as_str()), Ok(mode));
        }
        assert_eq!(
            Mode::parse("html"),
            Err("unknown mode 'html' (use column, csv, json or line)".to_string())
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
