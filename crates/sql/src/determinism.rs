//! Rejects DDL whose effect depends on when or where it runs.
//!
//! Row changes are replicated by value (changesets), so `random()` or `datetime('now')` in DML
//! is harmless. DDL, however, is replicated as SQL text and re-run by every replica. The only
//! DDL that evaluates expressions over data while it runs is `CREATE TABLE … AS SELECT`
//! (SQLite itself forbids non-deterministic functions in CHECK constraints, index expressions,
//! generated columns and `ADD COLUMN` defaults). Its rows are not captured by the session
//! extension (verified: the changeset of a session attached during CTAS is empty), so the
//! replicas recompute them and they must come out the same.
//!
//! [`check_create_as_select`] combines two sources:
//! * the functions SQLite's authorizer saw while preparing the statement (see `policy`),
//!   which include calls inside the views the SELECT reads;
//! * the statement's syntax tree from `sqlparser` (SQLite dialect), to inspect the arguments of
//!   date/time functions, which are deterministic unless they read the clock (`'now'`, no time
//!   value) or the node's time zone (`'localtime'`, `'utc'`).
//!
//! It is conservative: a date/time function is accepted only when all its arguments are
//! literals (a column could hold the text `'now'`), and when sqlparser cannot parse the
//! statement or the call sits inside a view, any date/time function is rejected. The error
//! points to the supported alternative: CREATE TABLE, then INSERT … SELECT, which is replicated
//! by value.

use std::ops::ControlFlow;

use sqlparser::ast::{
    Expr, Function, FunctionArg, FunctionArgExpr, FunctionArguments, UnaryOperator, Value,
    visit_expressions,
};
use sqlparser::dialect::SQLiteDialect;
use sqlparser::parser::Parser;

/// Functions whose result differs between runs or nodes whatever their arguments.
const NON_DETERMINISTIC: &[&str] = &[
    "changes",
    "current_date",
    "current_time",
    "current_timestamp",
    "last_insert_rowid",
    "random",
    "randomblob",
    "total_changes",
];

/// Date/time functions: deterministic only for literal, non-clock arguments.
const TIME_FUNCTIONS: &[&str] =
    &["date", "datetime", "julianday", "strftime", "time", "timediff", "unixepoch"];

/// Literal arguments that make a date/time function read the clock or the local time zone.
const TIME_WORDS: &[&str] = &["now", "localtime", "utc"];

/// The per-statement error for a rejected CREATE TABLE … AS SELECT.
pub(crate) const CTAS_ERROR: &str = "CREATE TABLE … AS SELECT with random(), the current time or another non-deterministic function cannot be replicated: use CREATE TABLE, then INSERT … SELECT, which is replicated by value";

/// Checks a CREATE TABLE … AS SELECT statement. `functions` are the (lower-case) function
/// calls the authorizer saw, each with whether it sits inside a view or trigger.
pub(crate) fn check_create_as_select(
    sql: &str,
    functions: &[(String, bool)],
) -> Result<(), &'static str> {
    if functions.iter().any(|(name, _)| NON_DETERMINISTIC.contains(&name.as_str())) {
        return Err(CTAS_ERROR);
    }
    let mut time_calls =
        functions.iter().filter(|(name, _)| TIME_FUNCTIONS.contains(&name.as_str()));
    let Some(_) = time_calls.clone().next() else {
        return Ok(());
    };
    if time_calls.any(|(_, nested)| *nested) {
        return Err(CTAS_ERROR);
    }
    let Ok(statements) = Parser::parse_sql(&SQLiteDialect {}, sql) else {
        return Err(CTAS_ERROR);
    };
    let found = visit_expressions(&statements, |expr| match expr {
        Expr::Function(function) if reads_clock(function) => ControlFlow::Break(()),
        _ => ControlFlow::Continue(()),
    });
    if found.is_break() { Err(CTAS_ERROR) } else { Ok(()) }
}

/// Whether a call is a date/time function that may read the clock or the time zone.
fn reads_clock(function: &Function) -> bool {
    let name = function.name.to_string().to_ascii_lowercase();
    let name = name.trim_matches(['"', '`', '[', ']']);
    if NON_DETERMINISTIC.contains(&name) {
        return true;
    }
    if !TIME_FUNCTIONS.contains(&name) {
        return false;
    }
    let FunctionArguments::List(list) = &function.args else {
        return true;
    };
    // Without a time value these functions use the current time; strftime's first argument is
    // the format.
    let needed = if name == "strftime" { 2 } else { 1 };
    list.args.len() < needed
        || !list.args.iter().all(|arg| match arg {
            FunctionArg::Unnamed(FunctionArgExpr::Expr(expr)) => is_safe_literal(expr),
            _ => false,
        })
}

/// Whether `expr` is a literal that does not name the clock or the local time zone.
fn is_safe_literal(expr: &Expr) -> bool {
    match expr {
        Expr::Value(value) => match &value.value {
            Value::Number(..) => true,
            Value::SingleQuotedString(s) => {
                !TIME_WORDS.iter().any(|word| s.trim().eq_ignore_ascii_case(word))
            }
            _ => false,
        },
        Expr::UnaryOp { op: UnaryOperator::Minus | UnaryOperator::Plus, expr } => {
            matches!(expr.as_ref(), Expr::Value(v) if matches!(v.value, Value::Number(..)))
        }
        Expr::Nested(inner) => is_safe_literal(inner),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use test_case::test_case;

    use super::*;

    fn calls(names: &[&str]) -> Vec<(String, bool)> {
        names.iter().map(|n| (n.to_string(), false)).collect()
    }

    #[test_case("CREATE TABLE x AS SELECT a FROM t", &[], true)]
    #[test_case("CREATE TABLE x AS SELECT random() FROM t", &["random"], false)]
    #[test_case("CREATE TABLE x AS SELECT CURRENT_TIMESTAMP", &["current_timestamp"], false)]
    #[test_case("CREATE TABLE x AS SELECT datetime('now')", &["datetime"], false)]
    #[test_case("CREATE TABLE x AS SELECT datetime(' NOW ', '+1 day')", &["datetime"], false)]
    #[test_case("CREATE TABLE x AS SELECT date()", &["date"], false)]
    #[test_case("CREATE TABLE x AS SELECT strftime('%s')", &["strftime"], false)]
    #[test_case("CREATE TABLE x AS SELECT datetime('2020-01-01', 'localtime')", &["datetime"], false)]
    #[test_case("CREATE TABLE x AS SELECT datetime(a) FROM t", &["datetime"], false; "column may hold now")]
    #[test_case("CREATE TABLE x AS SELECT datetime('2020-01-01', '+1 day'), unixepoch(-1)", &["datetime", "unixepoch"], true)]
    #[test_case("CREATE TABLE x AS SELECT strftime('%Y', 0)", &["strftime"], true)]
    #[test_case("CREATE TABLE x AS SELECT a FROM t WHERE a IS NOT b AND datetime('2020-01-01')", &["datetime"], false; "unparseable")]
    fn ctas(sql: &str, functions: &[&str], ok: bool) {
        assert_eq!(check_create_as_select(sql, &calls(functions)).is_ok(), ok);
    }

    #[test]
    fn nested_time_function_is_rejected() {
        let functions = vec![("datetime".to_string(), true)];
        assert!(check_create_as_select("CREATE TABLE x AS SELECT * FROM v", &functions).is_err());
    }
}
