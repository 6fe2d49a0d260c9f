//! Helpers shared by the integration tests of `sql` that write through `Db`.

use sql::statement::{Params, Value};
use sql::{Apply, Db, Statement, StatementResult, WriteRequest};

/// A request of one statement, with `params` bound by position (none if empty).
pub fn request(sql: &str, params: Vec<Value>) -> WriteRequest {
    let params = if params.is_empty() { Params::None } else { Params::Positional(params) };
    WriteRequest {
        statements: vec![Statement { sql: sql.to_string(), params }],
        transaction: false,
        rows: false,
        request_id: None,
        timeout: None,
    }
}

/// Executes `requests` on `db` and applies the record at `index` (term 1); returns every
/// statement's result, in order.
pub fn commit(db: &mut Db, index: u64, requests: &[WriteRequest]) -> Vec<StatementResult> {
    let speculation = db.execute(requests).unwrap();
    let entry = Apply { term: 1, index, record: Some(&speculation.record), membership: None };
    db.apply(&[entry]).unwrap();
    speculation.results.concat()
}
