//! The shell's connection to a cluster: HTTP requests to one node at a time, and failover to
//! another node when that one stops answering.
//!
//! [`Cluster`] knows the cluster's nodes from `GET /nodes` (asked at start, after every switch,
//! and, between commands, when the list is older than [`REFRESH_EVERY`]). [`Cluster::request`]
//! sends to the node in use; when the request cannot be delivered or answered at all
//! (connection refused or reset, timeout), it sends the same request to the other known nodes
//! in turn (reachable leader first) and stays with the first that answers, saying so on
//! stderr. Any HTTP answer, errors included, counts as answering: only a silent node is left.
//!
//! Requests run on a single-threaded tokio runtime the cluster owns, with the client of the
//! other `keel` commands ([`crate::tls::client_builder`]: `--cacert`, client certificates),
//! while Ctrl-C is watched for ([`super::interrupt`]).
//!
//! Sending a request again is safe because the shell makes every request safe to repeat:
//! reads change nothing, and each write carries a `request_id` that the cluster answers a
//! retry of with the original result instead of running it again.
//!
//! IMPLEMENTATION CAVEATS: a node that accepts connections but never answers (a stopped
//! process) is only left after the request timeout (or Ctrl-C). Nodes are listed by the
//! addresses they advertise (`api_addr`); if the URL the shell was started with names one of
//! them differently (`localhost` for `127.0.0.1`), that node is listed twice, which costs a
//! second try when it is down, nothing more.

use std::path::Path;
use std::time::{Duration, Instant};

use reqwest::{Client, Method, RequestBuilder};
use serde_json::Value;

use super::interrupt;

/// How long the node list is trusted before [`Cluster::refresh_if_stale`] asks again.
pub const REFRESH_EVERY: Duration = Duration::from_secs(10);

/// How long to wait for a connection before trying another node.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// How long a background refresh of the node list may take: it must not hold up the
/// statement it precedes for long when the node is in trouble.
const REFRESH_TIMEOUT: Duration = Duration::from_secs(2);

/// A node the shell may talk to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Known {
    /// Base URL, such as `http://127.0.0.1:4001` (no trailing `/`).
    pub url: String,
    /// The node's id, once `/nodes` has named it.
    pub id: Option<String>,
}

impl Known {
    /// `http://… (node 2)`, or the URL alone when the id is not known.
    fn describe(&self) -> String {
        match &self.id {
            Some(id) => format!("{} (node {id})", self.url),
            None => self.url.clone(),
        }
    }
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Reply {
    /// The status code.
    pub status: reqwest::StatusCode,
    /// `Retry-After`, in whole seconds, if the server sent one.
    pub retry_after: Option<Duration>,
    /// The body.
    pub body: Vec<u8>,
}

impl Reply {
    /// The body as JSON, if it is a success; otherwise the server's error text.
    pub fn json(&self) -> Result<Value, String> {
        if !self.status.is_success() {
            return Err(self.error_text());
        }
        serde_json::from_slice(&self.body)
            .map_err(|_| format!("the server answered something that is not JSON: {}", self.text()))
    }

    /// The error an answer carries: its JSON `error`, or its text, with the status when the
    /// body says nothing.
    pub fn error_text(&self) -> String {
        if let Ok(value) = serde_json::from_slice::<Value>(&self.body)
            && let Some(error) = value.get("error").and_then(Value::as_str)
        {
            return error.to_string();
        }
        let text = self.text();
        let text = text.trim();
        if text.is_empty() { format!("HTTP {}", self.status) } else { text.to_string() }
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// The nodes of a cluster and the one the shell talks to.
///
/// Invariants:
/// - `nodes` is never empty, and `current` indexes into it.
pub struct Cluster {
    /// Runs the requests (the shell itself is synchronous).
    runtime: tokio::runtime::Runtime,
    /// The HTTP client (connection pool, timeouts, TLS roots).
    http: Client,
    /// Basic-auth credentials sent with every request.
    user: Option<(String, Option<String>)>,
    /// Every node known, without duplicates.
    nodes: Vec<Known>,
    /// The node in use.
    current: usize,
    /// When the node list was last read from the cluster.
    refreshed: Option<Instant>,
}

impl Cluster {
    /// A cluster reached through `url` (a node's HTTP URL; `http://` is added when missing),
    /// with requests timing out after `timeout`, `user` (`NAME:PASSWORD`) sent as basic auth,
    /// and `cacert` trusted for `https://` URLs (see [`crate::tls::client_builder`]). Nothing is
    /// sent yet.
    ///
    /// Errors: `url` is not an `http` or `https` URL with a host; the CA or client
    /// certificate cannot be read.
    pub fn new(
        url: &str,
        user: Option<&str>,
        timeout: Duration,
        cacert: Option<&Path>,
    ) -> anyhow::Result<Cluster> {
        let base = base_url(url);
        let parsed = reqwest::Url::parse(&base).map_err(|e| {
            anyhow::anyhow!("'{url}' is not a node URL ({e}); try http://127.0.0.1:4001")
        })?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
            anyhow::bail!("'{url}' is not a node URL: use http://HOST:PORT or https://HOST:PORT");
        }
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let http = crate::tls::client_builder(cacert)?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(timeout)
            .build()?;
        let user = user.map(|u| match u.split_once(':') {
            Some((name, password)) => (name.to_string(), Some(password.to_string())),
            None => (u.to_string(), None),
        });
        Ok(Cluster {
            runtime,
            http,
            user,
            nodes: vec![Known { url: base, id: None }],
            current: 0,
            refreshed: None,
        })
    }

    /// Runs `future` (another command's requests) on the shell's runtime until it ends or
    /// Ctrl-C is pressed.
    pub fn block_on<T>(&self, future: impl Future<Output = T>) -> Result<T, String> {
        self.runtime.block_on(async {
            tokio::select! {
                done = future => Ok(done),
                () = interrupt::wait() => Err(interrupt::CANCELLED.to_string()),
            }
        })
    }

    /// The node in use.
    pub fn current(&self) -> &Known {
        &self.nodes[self.current]
    }

    /// Sends a request to the node in use, or, if it does not answer, to the first other node
    /// that does (and uses that one from then on). `path` includes the query string. Errors:
    /// no node answered; the message names each node and why.
    pub fn request(
        &mut self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Reply, String> {
        let n = self.nodes.len();
        let mut failures = Vec::new();
        for k in 0..n {
            let i = (self.current + k) % n;
            match self.send(&self.nodes[i].url, method.clone(), path, body, None) {
                Err(Failure::Cancelled) => return Err(interrupt::CANCELLED.to_string()),
                Ok(reply) => {
                    if k > 0 {
                        eprintln!(
                            "{}; switched to {}",
                            failures.first().map_or("", String::as_str),
                            self.nodes[i].describe()
                        );
                        self.current = i;
                        self.refreshed = None;
                        self.refresh_quietly();
                    }
                    return Ok(reply);
                }
                Err(Failure::Unanswered(why)) => {
                    failures.push(format!("{} is not answering ({why})", self.nodes[i].describe()))
                }
            }
        }
        Err(failures.join("; "))
    }

    /// Reads the node list from the cluster (`GET /nodes`) through [`Cluster::request`]; returns
    /// the answer, each node an object with `id`, `api_addr`, `addr`, `voter`, `reachable` and
    /// `leader`.
    pub fn refresh(&mut self) -> Result<Vec<Value>, String> {
        let reply = self.request(Method::GET, "/nodes?nonvoters&ver=2", None)?;
        let answer = reply.json()?;
        let list = answer["nodes"]
            .as_array()
            .cloned()
            .ok_or_else(|| format!("/nodes answered without a node list: {answer}"))?;
        self.learn(&list);
        Ok(list)
    }

    /// [`Cluster::refresh`] when the list is older than [`REFRESH_EVERY`]; failures are left
    /// to the request that follows.
    pub fn refresh_if_stale(&mut self) {
        if self.refreshed.is_none_or(|at| at.elapsed() >= REFRESH_EVERY) {
            // A failed refresh is tried again after as long, not before every command.
            self.refreshed = Some(Instant::now());
            self.refresh_quietly();
        }
    }

    /// Asks the node in use for the node list, without failing over: a node that does not
    /// answer is dealt with by the next request.
    fn refresh_quietly(&mut self) {
        let url = self.current().url.clone();
        let nodes = "/nodes?nonvoters&ver=2";
        let reply = match self.send(&url, Method::GET, nodes, None, Some(REFRESH_TIMEOUT)) {
            Ok(reply) => reply,
            // The Ctrl-C is meant for the command this refresh precedes.
            Err(Failure::Cancelled) => return interrupt::raise(),
            Err(Failure::Unanswered(_)) => return,
        };
        if let Ok(answer) = reply.json()
            && let Some(list) = answer["nodes"].as_array()
        {
            self.learn(list);
        }
    }

    /// Replaces the node list with `/nodes`' (keeping the node in use, first): reachable
    /// leader, other reachable nodes, then the rest.
    fn learn(&mut self, list: &[Value]) {
        let mut listed: Vec<(u8, Known)> = list
            .iter()
            .filter_map(|node| {
                let url = base_url(node["api_addr"].as_str()?);
                let id = node["id"].as_str().map(str::to_string);
                let rank = match (node["reachable"] == true, node["leader"] == true) {
                    (true, true) => 0,
                    (true, false) => 1,
                    _ => 2,
                };
                Some((rank, Known { url, id }))
            })
            .collect();
        listed.sort_by_key(|(rank, _)| *rank);
        let mut current = self.current().clone();
        if let Some((_, named)) = listed.iter().find(|(_, k)| k.url == current.url) {
            current.id.clone_from(&named.id);
        }
        let mut nodes = vec![current];
        for (_, known) in listed {
            if !nodes.iter().any(|k| k.url == known.url) {
                nodes.push(known);
            }
        }
        self.nodes = nodes;
        self.current = 0;
        self.refreshed = Some(Instant::now());
    }

    /// One attempt against one node, within `timeout` if given (else the client's), until
    /// it is answered or Ctrl-C is pressed ([`interrupt`]).
    fn send(
        &self,
        base: &str,
        method: Method,
        path: &str,
        body: Option<&Value>,
        timeout: Option<Duration>,
    ) -> Result<Reply, Failure> {
        let mut request = self.http.request(method, format!("{base}{path}"));
        if let Some(timeout) = timeout {
            request = request.timeout(timeout);
        }
        if let Some((name, password)) = &self.user {
            request = request.basic_auth(name, password.as_deref());
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        match self.block_on(perform(request)) {
            Ok(answered) => answered.map_err(Failure::Unanswered),
            Err(_) => Err(Failure::Cancelled),
        }
    }
}

/// Why one attempt got no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Failure {
    /// The node did not answer: connection refused or reset, timeout (the cause, in words).
    Unanswered(String),
    /// Ctrl-C.
    Cancelled,
}

/// Sends a request and reads its answer. Errors: why there is none, in a few words.
async fn perform(request: RequestBuilder) -> Result<Reply, String> {
    let response = request.send().await.map_err(|e| describe(&e))?;
    let status = response.status();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let body = response.bytes().await.map_err(|e| describe(&e))?.to_vec();
    Ok(Reply { status, retry_after, body })
}

/// A node URL with `http://` added when it has no scheme, and no trailing `/`.
pub fn base_url(url: &str) -> String {
    let url = url.trim().trim_end_matches('/');
    if url.contains("://") { url.to_string() } else { format!("http://{url}") }
}

/// Why a request failed, in a few words: the innermost cause ("Connection refused"), not
/// reqwest's "error sending request for url …".
fn describe(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        return "timed out".to_string();
    }
    let mut cause: &dyn std::error::Error = error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    let text = cause.to_string();
    // io::Error renders as "Connection refused (os error 111)".
    match text.find(" (os error") {
        Some(at) => text[..at].to_string(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn urls_get_a_scheme_and_lose_the_slash() {
        assert_eq!(base_url("127.0.0.1:4001/"), "http://127.0.0.1:4001");
        assert_eq!(base_url(" https://h:1 "), "https://h:1");
    }

    #[test]
    fn bad_urls_are_refused_at_once() {
        for url in ["http://[bad", "ftp://x", "a b", ""] {
            assert!(Cluster::new(url, None, Duration::from_secs(1), None).is_err(), "{url}");
        }
        assert!(Cluster::new("localhost:4001", None, Duration::from_secs(1), None).is_ok());
    }

    #[test]
    fn learning_keeps_the_node_in_use_first_then_the_reachable_leader() {
        let mut c = Cluster::new("localhost:4003", None, Duration::from_secs(1), None).unwrap();
        c.learn(&[
            json!({"id": "1", "api_addr": "http://127.0.0.1:4001", "reachable": false, "leader": false}),
            json!({"id": "2", "api_addr": "http://127.0.0.1:4003", "reachable": true, "leader": false}),
            json!({"id": "3", "api_addr": "http://127.0.0.1:4005", "reachable": true, "leader": true}),
            json!({"id": "4"}),
        ]);
        let urls: Vec<&str> = c.nodes.iter().map(|k| k.url.as_str()).collect();
        assert_eq!(
            urls,
            [
                "http://localhost:4003",
                "http://127.0.0.1:4005",
                "http://127.0.0.1:4003",
                "http://127.0.0.1:4001"
            ]
        );
        assert_eq!(c.current().url, "http://localhost:4003");

        c.current = 1;
        c.learn(&[
            json!({"id": "3", "api_addr": "http://127.0.0.1:4005", "reachable": true, "leader": true}),
        ]);
        assert_eq!(c.nodes, [Known { url: "http://127.0.0.1:4005".into(), id: Some("3".into()) }]);
    }

    #[test]
    fn errors_are_the_server_text() {
        let reply = |status: u16, body: &str| Reply {
            status: reqwest::StatusCode::from_u16(status).unwrap(),
            retry_after: None,
            body: body.as_bytes().to_vec(),
        };
        assert_eq!(reply(503, r#"{"error":"leader not found"}"#).error_text(), "leader not found");
        assert_eq!(reply(500, "boom\n").error_text(), "boom");
        assert_eq!(reply(502, "").error_text(), "HTTP 502 Bad Gateway");
        assert_eq!(
            reply(400, r#"{"error":"no such table: t"}"#).json(),
            Err("no such table: t".into())
        );
        assert_eq!(reply(200, r#"{"results":[]}"#).json(), Ok(json!({"results": []})));
        assert!(reply(200, "<html>").json().unwrap_err().contains("not JSON"));
    }

    #[test]
    fn ctrl_c_cancels_a_request_that_gets_no_answer() {
        let _one = interrupt::tests::FLAG.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // A listener that never accepts: the kernel completes the connection, nobody answers.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", silent.local_addr().unwrap());
        let mut c = Cluster::new(&url, None, Duration::from_secs(60), None).unwrap();
        interrupt::clear();
        interrupt::tests::press();
        let started = Instant::now();
        assert_eq!(c.request(Method::GET, "/status", None).unwrap_err(), interrupt::CANCELLED);
        assert!(started.elapsed() < Duration::from_secs(30), "cancelled without waiting");
        assert!(!interrupt::take(), "the Ctrl-C was used up");
    }

    #[test]
    fn an_unreachable_cluster_names_every_node_tried() {
        let _one = interrupt::tests::FLAG.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        interrupt::clear();
        // A port that was free a moment ago: nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut c =
            Cluster::new(&format!("127.0.0.1:{port}"), None, Duration::from_secs(2), None).unwrap();
        let error = c.request(Method::GET, "/status", None).unwrap_err();
        assert_eq!(error, format!("http://127.0.0.1:{port} is not answering (Connection refused)"));
    }
}
