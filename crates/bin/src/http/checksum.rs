//! Table checks over HTTP (`keel check` drives them): `GET /db/checksum` reads the tables or one
//! chunk of one table at a pinned log index ([`node::Node::checksum`]), and
//! `POST /db/checksum/report` tells a node what the check found ([`node::Node::check_report`]).
//! Every node answers for itself; nothing is forwarded.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use keel_api::checksum::{self as wire, CheckReport};
use node::checksum::{ChecksumAnswer, ChecksumCall, PIN_WAIT};

use super::{Incoming, Node, Params, bad_request, json_response, node_error};

/// Rows per chunk unless `limit=` says otherwise.
const DEFAULT_LIMIT: u64 = 1000;

/// `GET /db/checksum?lsn=N[&table=T][&from=K][&limit=L][&detail][&release][&timeout=D]`.
pub(crate) async fn checksum(
    State(node): State<Arc<Node>>,
    Query(p): Query<Vec<(String, String)>>,
) -> Response {
    let p = Params(p);
    let call = match call(&p) {
        Ok(call) => call,
        Err(r) => return r,
    };
    let (lsn, table) = (call.lsn, call.table.clone());
    let pretty = p.has("pretty");
    match node.checksum(call).await {
        Ok(ChecksumAnswer::Tables(tables)) => {
            json_response(StatusCode::OK, &wire::Tables { lsn, tables }, pretty)
        }
        Ok(ChecksumAnswer::Chunk(c)) => {
            let detail = c.detail.map(|rows| {
                rows.into_iter().map(|(key, hash)| wire::RowDigest { key, hash }).collect()
            });
            let chunk = wire::Chunk {
                lsn,
                table: table.unwrap_or_default(),
                rows: c.rows,
                checksum: c.checksum,
                last_key: c.last_key,
                done: c.done,
                detail,
            };
            json_response(StatusCode::OK, &chunk, pretty)
        }
        Err(e) => node_error(e, pretty),
    }
}

/// The call a request's parameters describe, or the 400 that says what is wrong.
fn call(p: &Params) -> Result<ChecksumCall, Response> {
    let number = |key: &str| -> Result<Option<u64>, Response> {
        match p.get(key).map(str::parse::<u64>) {
            None => Ok(None),
            Some(Ok(n)) => Ok(Some(n)),
            Some(Err(_)) => Err(bad_request(format!("{key} must be a whole number"))),
        }
    };
    let lsn =
        number("lsn")?.ok_or_else(|| bad_request("lsn is required: the log index to check at"))?;
    if lsn == 0 {
        return Err(bad_request("lsn must be at least 1"));
    }
    let limit = number("limit")?.unwrap_or(DEFAULT_LIMIT);
    if !(1..=1_000_000).contains(&limit) {
        return Err(bad_request("limit must be between 1 and 1000000 rows"));
    }
    Ok(ChecksumCall {
        lsn,
        table: p.get("table").map(str::to_string),
        from: p.get("from").filter(|f| !f.is_empty()).map(str::to_string),
        limit,
        detail: p.has("detail"),
        timeout: p.duration("timeout")?.unwrap_or(PIN_WAIT),
        release: p.has("release"),
    })
}

/// `POST /db/checksum/report` with a [`CheckReport`].
pub(crate) async fn report(State(node): State<Arc<Node>>, req: Incoming) -> Response {
    let report: CheckReport = match serde_json::from_slice(&req.body) {
        Ok(r) => r,
        Err(e) => {
            return bad_request(format!(
                "a check report must be JSON like {{\"lsn\":…,\"mismatches\":…,\"diverged_tables\":[…]}}: {e}"
            ));
        }
    };
    match node.check_report(report) {
        Ok(()) => json_response(StatusCode::OK, &serde_json::json!({}), false),
        Err(e) => node_error(e, false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Params {
        Params(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }

    #[test]
    fn parameters() {
        let c = call(&params(&[("lsn", "9"), ("table", "t"), ("from", "01ab"), ("detail", "")]))
            .unwrap();
        assert_eq!((c.lsn, c.table.as_deref(), c.from.as_deref()), (9, Some("t"), Some("01ab")));
        assert!(c.detail && !c.release);
        assert_eq!((c.limit, c.timeout), (DEFAULT_LIMIT, PIN_WAIT));
        for bad in
            [vec![], vec![("lsn", "x")], vec![("lsn", "0")], vec![("lsn", "3"), ("limit", "0")]]
        {
            assert_eq!(
                call(&params(&bad)).unwrap_err().status(),
                StatusCode::BAD_REQUEST,
                "{bad:?}"
            );
        }
    }
}
