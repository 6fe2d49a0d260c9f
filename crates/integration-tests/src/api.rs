//! The calls whose answers tests read, through `keel_api`: writes, reads, `/status`, `/nodes`
//! and `/readyz`, answered with its wire types instead of JSON read by field name.
//!
//! Each call goes to the one node the test names, through a `keel_api::blocking::Client`
//! pinned to it ([`keel_api::blocking::Client::on`]) that makes one attempt, follows no
//! redirect and adds no request id: the node gets exactly what the test asked for, and the
//! test sees what that node answered (a follower forwards to the leader itself, as it would
//! for any client). [`TestCluster::client`] is the other kind: a client of the whole cluster
//! with leader discovery, failover and request-id retries, for tests that drive the cluster
//! the way an application does.
//!
//! Raw requests, for tests about bytes, statuses and headers (bad input, rqlite's exact JSON
//! shapes, redirects), are in `http`: a typed client cannot send or see those.

use std::collections::BTreeMap;
use std::time::Duration;

use keel_api::blocking::Client;
use keel_api::status::{Snapshot, Status};
use keel_api::{Answer, Level, Statement, StatementResult};
use reqwest::header::HeaderMap;
use serde_json::Value;

use crate::{Lsn, NodeId, PROBE_TIMEOUT, REQUEST_TIMEOUT, TestCluster};

/// The answer of `/db/execute`, `/db/query` or `/db/request`, with accessors that panic
/// (naming the answer) where a test expects something that is not there.
///
/// rqlite leaves zero `last_insert_id`/`rows_affected` out, and `values` when a query
/// returned no rows; the accessors read those as 0 and no rows.
#[derive(Clone, Debug, PartialEq)]
pub struct Response(pub Answer);

impl Response {
    /// The per-statement results.
    pub fn results(&self) -> &[StatementResult] {
        &self.0.results
    }

    /// The result of statement `i`; panics if there is none.
    pub fn result(&self, i: usize) -> &StatementResult {
        self.0.results.get(i).unwrap_or_else(|| panic!("answer has no result {i}: {:?}", self.0))
    }

    /// The error of statement `i`, if it failed.
    pub fn error(&self, i: usize) -> Option<&str> {
        self.result(i).error.as_deref()
    }

    /// Panics if the request failed as a whole (a top-level `error`) or any statement failed.
    pub fn assert_ok(&self) -> &Self {
        if let Some((at, error)) = self.0.first_error() {
            match at {
                None => panic!("request failed: {error}: {:?}", self.0),
                Some(i) => panic!("statement {i} failed: {error}: {:?}", self.0),
            }
        }
        self
    }

    /// The log index of the write (execute) or the applied index it was served at (query).
    pub fn lsn(&self) -> Lsn {
        self.0.lsn.unwrap_or_else(|| panic!("answer has no lsn: {:?}", self.0))
    }

    /// `last_insert_id` of statement `i` (0 when omitted).
    pub fn last_insert_id(&self, i: usize) -> i64 {
        self.result(i).last_insert_id()
    }

    /// `rows_affected` of statement `i` (0 when omitted).
    pub fn rows_affected(&self, i: usize) -> i64 {
        self.result(i).rows_affected()
    }

    /// The rows of query `i` (empty when `values` is omitted); panics if the statement failed.
    pub fn rows(&self, i: usize) -> Vec<Vec<Value>> {
        let result = self.result(i);
        assert!(result.error.is_none(), "statement {i} failed: {:?}", self.0);
        result.values().to_vec()
    }
}

impl std::fmt::Display for Response {
    /// The answer as JSON, for failure messages.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match serde_json::to_string(&self.0) {
            Ok(json) => f.write_str(&json),
            Err(_) => write!(f, "{:?}", self.0),
        }
    }
}

/// The clients a [`TestCluster`] sends with.
///
/// Invariants: none follows redirects, uses a proxy or keeps idle connections (a pooled
/// connection to a killed process would fail the next request); all send the cluster's
/// headers.
pub(crate) struct Clients {
    /// Raw HTTP (see `http`), with [`REQUEST_TIMEOUT`].
    pub(crate) raw: reqwest::blocking::Client,
    /// `keel_api`, one attempt of at most [`REQUEST_TIMEOUT`], no request ids: the database
    /// calls. Used through [`Client::on`] a node.
    calls: Client,
    /// The same with [`PROBE_TIMEOUT`]: readiness and status polls, where a node that does not
    /// answer soon counts as not ready and the poll goes on.
    probes: Client,
    /// The headers every request carries (see [`TestCluster::start_with_headers`]).
    headers: HeaderMap,
}

impl Clients {
    /// The clients of a cluster whose first node is at `first` (`host:port`).
    pub(crate) fn new(first: &str, headers: HeaderMap) -> Clients {
        let raw = reqwest::blocking::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .pool_max_idle_per_host(0)
            .timeout(REQUEST_TIMEOUT)
            .default_headers(headers.clone())
            .build()
            .expect("cannot build HTTP client");
        let pinned = |timeout| {
            let builder = keel_api::Client::builder([first])
                .http(http(&headers))
                .timeout(timeout)
                .retry_for(Duration::ZERO)
                .request_ids(false);
            Client::from_builder(builder).expect("cannot build the keel_api client")
        };
        Clients { raw, calls: pinned(REQUEST_TIMEOUT), probes: pinned(PROBE_TIMEOUT), headers }
    }
}

/// The HTTP settings of every `keel_api` client of a cluster.
fn http(headers: &HeaderMap) -> reqwest::ClientBuilder {
    reqwest::Client::builder().no_proxy().pool_max_idle_per_host(0).default_headers(headers.clone())
}

/// A request body (a JSON array of statements) as `keel_api` statements; panics, saying what
/// to use instead, if it is not one.
fn statements(body: &Value) -> Vec<Statement> {
    serde_json::from_value(body.clone()).unwrap_or_else(|error| {
        panic!("{body} is not an array of statements ({error}); send it with TestCluster::post")
    })
}

/// `a=b&c` as query parameters (`None`: a flag).
fn params(query: &str) -> impl Iterator<Item = (&str, Option<&str>)> {
    query.split('&').filter(|p| !p.is_empty()).map(|p| match p.split_once('=') {
        Some((name, value)) => (name, Some(value)),
        None => (p, None),
    })
}

impl TestCluster {
    /// A client of every node of the cluster, as an application would use it: it finds the
    /// leader, fails over and retries writes with request ids (`keel_api`'s defaults). Nodes
    /// added later are learned from `/nodes`.
    pub fn client(&self) -> Client {
        let urls: Vec<String> =
            self.nodes.values().map(|node| format!("http://{}", node.http_addr)).collect();
        let builder = keel_api::Client::builder(urls).http(http(&self.clients.headers));
        Client::from_builder(builder).expect("cannot build the keel_api client")
    }

    /// A `keel_api` client of node `id` alone (one attempt, no request ids; see the module docs).
    pub fn client_of(&self, id: NodeId) -> Client {
        self.pinned(&self.clients.calls, id)
    }

    /// `base`, pinned to node `id`.
    fn pinned(&self, base: &Client, id: NodeId) -> Client {
        base.on(&format!("http://{}", self.node(id).http_addr))
            .unwrap_or_else(|error| panic!("node {id}: {error}"))
    }

    /// `POST /db/execute?<params>` on node `id`; `Err` with a description on a transport error
    /// or a status other than 200. For writers that expect some requests to fail.
    pub fn try_execute(
        &self,
        id: NodeId,
        params: &str,
        statements: &Value,
    ) -> Result<Response, String> {
        let client = self.client_of(id);
        let mut call = client.inner().write(self::statements(statements));
        for (name, value) in self::params(params) {
            call = call.raw_param(name, value);
        }
        client
            .send(call)
            .map(Response)
            .map_err(|error| format!("node {id} /db/execute?{params}: {error}"))
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
        let client = self.client_of(id);
        let answer = client.request(self::statements(&statements));
        Response(answer.unwrap_or_else(|error| panic!("node {id} /db/request: {error}")))
    }

    /// `/db/query?level=<level>` of `sql` on node `id`; panics unless 200 with JSON.
    pub fn query(&self, id: NodeId, sql: &str, level: Level) -> Response {
        let client = self.client_of(id);
        let answer = client.send(client.inner().read([sql]).level(level));
        Response(answer.unwrap_or_else(|error| panic!("node {id} /db/query {sql:?}: {error}")))
    }

    /// The rows of `sql` read from node `id`'s own data (`level=none`); panics if it fails.
    pub fn rows(&self, id: NodeId, sql: &str) -> Vec<Vec<Value>> {
        self.query(id, sql, Level::None).rows(0)
    }

    /// Node `id`'s `/status`; panics if it does not answer.
    pub fn status(&self, id: NodeId) -> Status {
        self.client_of(id).status().unwrap_or_else(|error| panic!("node {id} /status: {error}"))
    }

    /// Node `id`'s `/status`, or `None` if it is down, paused or does not answer soon.
    pub fn try_status(&self, id: NodeId) -> Option<Status> {
        if !self.node(id).is_up() {
            return None;
        }
        self.pinned(&self.clients.probes, id).status().ok()
    }

    /// Node `id`'s `/status` `snapshot` section; panics if the node does not answer.
    pub fn snapshot_status(&self, id: NodeId) -> Snapshot {
        self.status(id).snapshot
    }

    /// Node `id`'s members (`/nodes`), as a map from node id to its `voter` flag; `None` if
    /// the node is down, paused or does not answer soon.
    pub fn members(&self, id: NodeId) -> Option<BTreeMap<NodeId, bool>> {
        if !self.node(id).is_up() {
            return None;
        }
        let nodes = self.pinned(&self.clients.probes, id).nodes().ok()?;
        nodes.iter().map(|node| Some((node.node_id()?, node.voter))).collect()
    }

    /// Whether node `id` runs and answers (`/readyz?noleader`).
    pub(crate) fn answering(&self, id: NodeId) -> bool {
        self.readyz(id, true)
    }

    /// Whether node `id` runs and its `/readyz` says ready.
    pub(crate) fn ready(&self, id: NodeId) -> bool {
        self.readyz(id, false)
    }

    /// Whether node `id` runs and its `/readyz` (with `noleader` if asked) says ready.
    fn readyz(&self, id: NodeId, noleader: bool) -> bool {
        self.node(id).is_up()
            && self
                .pinned(&self.clients.probes, id)
                .ready(noleader, false)
                .is_ok_and(|readiness| readiness.ready)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn response_accessors_follow_the_rqlite_encoding() {
        let answer = json!({
            "results": [{}, {"last_insert_id": 3, "rows_affected": 1}, {"columns": ["a"], "types": [""]},
                        {"columns": ["a"], "types": ["integer"], "values": [[1], [2]]}, {"error": "boom"}],
            "lsn": 7
        });
        let response = Response(serde_json::from_value(answer).unwrap());
        assert_eq!(response.lsn(), 7);
        assert_eq!((response.last_insert_id(0), response.rows_affected(0)), (0, 0));
        assert_eq!((response.last_insert_id(1), response.rows_affected(1)), (3, 1));
        assert_eq!(response.rows(2), Vec::<Vec<Value>>::new());
        assert_eq!(response.rows(3), vec![vec![json!(1)], vec![json!(2)]]);
        assert_eq!(response.error(3), None);
        assert_eq!(response.error(4), Some("boom"));
        assert!(std::panic::catch_unwind(|| response.assert_ok()).is_err());
    }

    #[test]
    fn bodies_and_parameters_are_read_as_sent() {
        let body =
            json!(["CREATE TABLE t (a)", ["INSERT INTO t VALUES(?)", 1], ["SELECT :a", {"a": 2}]]);
        assert_eq!(serde_json::to_value(statements(&body)).unwrap(), body);
        let parsed: Vec<_> = params("transaction&request_id=k1&").collect();
        assert_eq!(parsed, [("transaction", None), ("request_id", Some("k1"))]);
    }
}
