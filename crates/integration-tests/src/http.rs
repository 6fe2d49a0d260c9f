//! Requests to one node: raw HTTP for tests about bytes, statuses and headers, and the
//! database calls (`execute`, `query`, `request`) whose answers tests read.

use reqwest::Url;
use reqwest::blocking::RequestBuilder;
use serde_json::Value;

use crate::{Lsn, NodeId, PROBE_TIMEOUT, TestCluster};

/// The read consistency level of a query (`level=` on `/db/query`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// The node's own data, on any node.
    None,
    /// Served by the leader (forwarded), under its lease.
    Weak,
    /// Served by the leader after a read-index round.
    Linearizable,
    /// Sent through the Raft log.
    Strong,
}

impl Level {
    /// The value of the `level` query parameter.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::None => "none",
            Level::Weak => "weak",
            Level::Linearizable => "linearizable",
            Level::Strong => "strong",
        }
    }
}

/// A raw HTTP answer with a binary body, e.g. a database backup.
#[derive(Clone, Debug)]
pub struct RawReply {
    /// The HTTP status code.
    pub status: u16,
    /// The `Content-Type` header, if any.
    pub content_type: Option<String>,
    /// The `Content-Encoding` header, if any.
    pub content_encoding: Option<String>,
    /// The body, as received (never decompressed).
    pub body: Vec<u8>,
}

impl RawReply {
    /// The body as text (lossily decoded), for failure messages and text formats.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A raw HTTP answer, for tests about status codes and headers.
#[derive(Clone, Debug)]
pub struct Reply {
    /// The HTTP status code.
    pub status: u16,
    /// The `Location` header, if any (redirects are never followed).
    pub location: Option<String>,
    /// The body, as text.
    pub body: String,
}

impl Reply {
    /// Parses the body as JSON; panics with the body if it is not.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|error| {
            panic!("answer (status {}) is not JSON ({error}): {}", self.status, self.body)
        })
    }
}

/// The JSON answer of `/db/execute`, `/db/query` or `/db/request`.
///
/// Accessors follow the rqlite encoding: zero `last_insert_id`/`rows_affected` are omitted, and
/// so is `values` when a query returned no rows.
#[derive(Clone, Debug, PartialEq)]
pub struct Response(pub Value);

impl Response {
    /// The per-statement results; panics if the answer has none.
    pub fn results(&self) -> &[Value] {
        self.0["results"]
            .as_array()
            .unwrap_or_else(|| panic!("answer has no results array: {}", self.0))
    }

    /// The result of statement `i`; panics if there is none.
    pub fn result(&self, i: usize) -> &Value {
        self.results().get(i).unwrap_or_else(|| panic!("answer has no result {i}: {}", self.0))
    }

    /// The error of statement `i`, if it failed.
    pub fn error(&self, i: usize) -> Option<&str> {
        self.result(i).get("error").map(|error| error.as_str().unwrap_or("<non-string error>"))
    }

    /// Panics if the request failed as a whole (a top-level `error`) or any statement failed.
    pub fn assert_ok(&self) -> &Self {
        assert!(self.0.get("error").is_none(), "request failed: {}", self.0);
        for (i, result) in self.results().iter().enumerate() {
            assert!(result.get("error").is_none(), "statement {i} failed: {}", self.0);
        }
        self
    }

    /// The log index of the write (execute) or the applied index it was served at (query).
    pub fn lsn(&self) -> Lsn {
        self.0["lsn"].as_u64().unwrap_or_else(|| panic!("answer has no lsn: {}", self.0))
    }

    /// `last_insert_id` of statement `i` (0 when omitted).
    pub fn last_insert_id(&self, i: usize) -> i64 {
        self.result(i)
            .get("last_insert_id")
            .map_or(0, |id| id.as_i64().expect("last_insert_id is an integer"))
    }

    /// `rows_affected` of statement `i` (0 when omitted).
    pub fn rows_affected(&self, i: usize) -> i64 {
        self.result(i)
            .get("rows_affected")
            .map_or(0, |n| n.as_i64().expect("rows_affected is an integer"))
    }

    /// The rows of query `i` (empty when `values` is omitted); panics if the statement failed.
    pub fn rows(&self, i: usize) -> Vec<Vec<Value>> {
        let result = self.result(i);
        assert!(result.get("error").is_none(), "statement {i} failed: {}", self.0);
        match result.get("values") {
            None => Vec::new(),
            Some(values) => values
                .as_array()
                .unwrap_or_else(|| panic!("values is not an array: {}", self.0))
                .iter()
                .map(|row| {
                    row.as_array()
                        .unwrap_or_else(|| panic!("row is not an array: {}", self.0))
                        .clone()
                })
                .collect(),
        }
    }
}

impl TestCluster {
    // ---- Client ----------------------------------------------------------------------------

    /// `http://<node id's HTTP address><path_and_query>`.
    pub fn url(&self, id: NodeId, path_and_query: &str) -> Url {
        let url = format!("http://{}{path_and_query}", self.node(id).http_addr);
        Url::parse(&url).unwrap_or_else(|error| panic!("bad URL {url}: {error}"))
    }

    /// Sends a request and collects the answer; `Err` on a transport error.
    fn send(request: RequestBuilder) -> Result<Reply, reqwest::Error> {
        let response = request.send()?;
        let status = response.status().as_u16();
        let location = response
            .headers()
            .get(reqwest::header::LOCATION)
            .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned());
        let body = response.text()?;
        Ok(Reply { status, location, body })
    }

    /// A probe: `GET` with a short timeout; `None` if the node is down, paused or silent.
    pub(crate) fn try_get(&self, id: NodeId, path_and_query: &str) -> Option<Reply> {
        if !self.node(id).is_up() {
            return None;
        }
        Self::send(self.client.get(self.url(id, path_and_query)).timeout(PROBE_TIMEOUT)).ok()
    }

    /// `GET path_and_query` on node `id`; panics on a transport error.
    pub fn get(&self, id: NodeId, path_and_query: &str) -> Reply {
        let url = self.url(id, path_and_query);
        Self::send(self.client.get(url.clone()))
            .unwrap_or_else(|error| panic!("GET {url}: {error}"))
    }

    /// Sends a request and collects the answer with its body as bytes; `Err` on a transport
    /// error.
    fn send_raw(request: RequestBuilder) -> Result<RawReply, reqwest::Error> {
        let response = request.send()?;
        let header = |name| {
            response.headers().get(name).map(|value: &reqwest::header::HeaderValue| {
                String::from_utf8_lossy(value.as_bytes()).into_owned()
            })
        };
        let status = response.status().as_u16();
        let content_type = header(reqwest::header::CONTENT_TYPE);
        let content_encoding = header(reqwest::header::CONTENT_ENCODING);
        let body = response.bytes()?.to_vec();
        Ok(RawReply { status, content_type, content_encoding, body })
    }

    /// `GET path_and_query` on node `id`, keeping the body as bytes (e.g. `/db/backup`); panics
    /// on a transport error.
    pub fn get_raw(&self, id: NodeId, path_and_query: &str) -> RawReply {
        let url = self.url(id, path_and_query);
        Self::send_raw(self.client.get(url.clone()))
            .unwrap_or_else(|error| panic!("GET {url}: {error}"))
    }

    /// `POST path_and_query` on node `id` with `body` as is and the given `Content-Type` (e.g.
    /// `/db/load`); panics on a transport error.
    pub fn post_raw(
        &self,
        id: NodeId,
        path_and_query: &str,
        content_type: &str,
        body: impl Into<Vec<u8>>,
    ) -> RawReply {
        let url = self.url(id, path_and_query);
        let request = self
            .client
            .post(url.clone())
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body.into());
        Self::send_raw(request).unwrap_or_else(|error| panic!("POST {url}: {error}"))
    }

    /// `POST path_and_query` on node `id` with a JSON body (sent as is, so it may be invalid);
    /// panics on a transport error.
    pub fn post(&self, id: NodeId, path_and_query: &str, body: impl Into<String>) -> Reply {
        self.post_url(self.url(id, path_and_query).as_str(), body)
    }

    /// `POST url` with a JSON body, e.g. to follow a redirect; panics on a transport error.
    pub fn post_url(&self, url: &str, body: impl Into<String>) -> Reply {
        let request = self
            .client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.into());
        Self::send(request).unwrap_or_else(|error| panic!("POST {url}: {error}"))
    }

    /// `DELETE path_and_query` on node `id` with a JSON body (sent as is, e.g. rqlite's
    /// `/remove`); panics on a transport error.
    pub fn delete(&self, id: NodeId, path_and_query: &str, body: impl Into<String>) -> Reply {
        let url = self.url(id, path_and_query);
        let request = self
            .client
            .delete(url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.into());
        Self::send(request).unwrap_or_else(|error| panic!("DELETE {url}: {error}"))
    }

    /// `POST /db/execute?<params>` on node `id`; `Err` with a description on a transport error
    /// or a status other than 200. For writers that expect some requests to fail.
    pub fn try_execute(
        &self,
        id: NodeId,
        params: &str,
        statements: &Value,
    ) -> Result<Response, String> {
        let path = if params.is_empty() {
            "/db/execute".to_string()
        } else {
            format!("/db/execute?{params}")
        };
        let url = self.url(id, &path);
        let request = self
            .client
            .post(url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(statements.to_string());
        let reply = Self::send(request).map_err(|error| format!("POST {url}: {error}"))?;
        if reply.status != 200 {
            return Err(format!("POST {url}: status {}: {}", reply.status, reply.body));
        }
        serde_json::from_str(&reply.body)
            .map(Response)
            .map_err(|error| format!("POST {url}: {error}: {}", reply.body))
    }

    /// `POST /db/execute?<params>` (e.g. `"transaction"`, or `""`) on node `id`; panics unless
    /// the answer is 200 with JSON. Per-statement errors are in the [`Response`].
    pub fn execute_with(&self, id: NodeId, params: &str, statements: Value) -> Response {
        self.try_execute(id, params, &statements).unwrap_or_else(|error| panic!("{error}"))
    }

    /// `POST /db/execute` on node `id`; see [`TestCluster::execute_with`].
    pub fn execute(&self, id: NodeId, statements: Value) -> Response {
        self.execute_with(id, "", statements)
    }

    /// `POST /db/execute` on node `id`, asserting that every statement succeeded; returns the
    /// write's lsn.
    pub fn execute_ok(&self, id: NodeId, statements: Value) -> Lsn {
        self.execute(id, statements).assert_ok().lsn()
    }

    /// `POST /db/request` (mixed reads and writes) on node `id`; panics unless 200 with JSON.
    pub fn request(&self, id: NodeId, statements: Value) -> Response {
        let reply = self.post(id, "/db/request", statements.to_string());
        assert_eq!(reply.status, 200, "node {id} /db/request: {}", reply.body);
        Response(reply.json())
    }

    /// `GET /db/query?q=<sql>&level=<level>` on node `id`; panics unless 200 with JSON.
    pub fn query(&self, id: NodeId, sql: &str, level: Level) -> Response {
        let mut url = self.url(id, "/db/query");
        url.query_pairs_mut().append_pair("q", sql).append_pair("level", level.as_str());
        let reply = Self::send(self.client.get(url.clone()))
            .unwrap_or_else(|error| panic!("GET {url}: {error}"));
        assert_eq!(reply.status, 200, "GET {url}: {}", reply.body);
        Response(reply.json())
    }

    /// `GET /db/query?<params>&q=<sql>` on node `id`, e.g. with params
    /// `"level=none&min_lsn=7&timeout=300ms"` (sent as is, so presence-only flags such as
    /// `freshness_strict` work); the raw answer whatever its status, or `Err` with a description
    /// on a transport error. For tests about read parameters and for readers that expect some
    /// requests to fail.
    pub fn try_query_with(&self, id: NodeId, sql: &str, params: &str) -> Result<Reply, String> {
        let mut url = self.url(id, "/db/query");
        url.query_pairs_mut().append_pair("q", sql);
        if !params.is_empty() {
            let q = url.query().unwrap_or_default().to_string();
            url.set_query(Some(&format!("{params}&{q}")));
        }
        Self::send(self.client.get(url.clone())).map_err(|error| format!("GET {url}: {error}"))
    }

    /// Like [`TestCluster::try_query_with`], panicking on a transport error.
    pub fn query_with(&self, id: NodeId, sql: &str, params: &str) -> Reply {
        self.try_query_with(id, sql, params).unwrap_or_else(|error| panic!("{error}"))
    }

    /// The rows of `sql` read from node `id`'s own data (`level=none`); panics if it fails.
    pub fn rows(&self, id: NodeId, sql: &str) -> Vec<Vec<Value>> {
        self.query(id, sql, Level::None).rows(0)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn response_accessors_follow_the_rqlite_encoding() {
        let response = Response(json!({
            "results": [{}, {"last_insert_id": 3, "rows_affected": 1}, {"columns": ["a"], "types": [""]},
                        {"columns": ["a"], "types": ["integer"], "values": [[1], [2]]}, {"error": "boom"}],
            "lsn": 7
        }));
        assert_eq!(response.lsn(), 7);
        assert_eq!((response.last_insert_id(0), response.rows_affected(0)), (0, 0));
        assert_eq!((response.last_insert_id(1), response.rows_affected(1)), (3, 1));
        assert_eq!(response.rows(2), Vec::<Vec<Value>>::new());
        assert_eq!(response.rows(3), vec![vec![json!(1)], vec![json!(2)]]);
        assert_eq!(response.error(3), None);
        assert_eq!(response.error(4), Some("boom"));
    }
}
