//! The client HTTP API, rqlite-compatible (`shared/reference/rqlite-api.md`), on axum: an
//! adapter from HTTP to the node's typed calls ([`node::Node`]).
//!
//! Routes by audience:
//!
//! - [`db`]: `/db/execute`, `/db/query`, `/db/request`: SQL. A request that needs the leader
//!   is routed by the node ([`node::Node::route`]); this layer forwards it unchanged to the
//!   leader (or answers 301 with `?redirect`) before its body is even parsed.
//! - [`queue`]: `/db/execute?queue` and `/db/queue/{n}`: queued writes.
//! - [`requests`]: `/db/requests/{id}`: what became of a write, by its request id.
//! - [`checksum`]: `/db/checksum`, `/db/checksum/report`: table checks (`keel check`).
//! - [`cluster`]: `/nodes`, `/leader`, `/readyz`, `/join`, `/metrics`; [`status`]: `/status`.
//! - [`admin`]: leadership transfer and membership changes, for operators.
//! - [`backup`]: `/db/backup`, `/db/load`; [`changes`]: the change stream `/db/changes`.
//! - [`console`]: the web console at `/console`, for people.
//!
//! Node-to-node routes are the node's own ([`node::peer::router`]), served on the Raft
//! address.
//!
//! Before any handler, every request's query string passes rqlite's checks
//! ([`crate::params`]), and every answer gets rqlite's headers ([`crate::headers`]). Handlers
//! honour rqlite's `associative`, `blob_array`, `timings`, `transaction`, `redirect`,
//! `raft_index`, `qualify_columns`, `db_timeout`, `linearizable_timeout`, `freshness` and
//! `level`; the others rqlite knows are accepted and ignored (`docs/http-api.md` lists each).
//!
//! Every database answer carries `lsn`: the log index of the write's record, or for a read the
//! index this node had applied when it served it. Errors map to HTTP status in one place,
//! [`node_error`]; SQL errors are per-statement and answered 200, as rqlite does.

pub(crate) mod admin;
pub(crate) mod backup;
pub(crate) mod changes;
pub(crate) mod checksum;
pub(crate) mod cluster;
pub(crate) mod console;
pub(crate) mod db;
pub(crate) mod queue;
pub(crate) mod requests;
pub(crate) mod status;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use keel_api::ErrorAnswer;
pub(crate) use node::Node;

/// Header marking a request forwarded by another node, so it is never forwarded twice.
const FORWARDED: &str = "x-keel-forwarded";
/// Largest request body accepted.
const MAX_BODY: usize = 64 << 20;
/// How long a forwarded request may take unless `timeout=` says otherwise.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(30);

/// The client API router.
pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/db/execute", post(db::execute))
        .route("/db/query", get(db::query).post(db::query))
        .route("/db/request", post(db::request))
        .route("/db/queue/{sequence_number}", get(queue::outcome))
        .route("/db/requests/{request_id}", get(requests::outcome))
        .route("/db/checksum", get(checksum::checksum))
        .route("/db/checksum/report", post(checksum::report))
        .route("/status", get(status::status))
        .route("/nodes", get(cluster::nodes))
        .route("/leader", get(cluster::get_leader))
        .route("/readyz", get(cluster::readyz))
        .route("/join", post(cluster::join))
        .route("/notify", post(cluster::notify))
        .route("/metrics", get(cluster::metrics))
        .with_state(node.clone())
        .merge(admin::router(node.clone()))
        .merge(backup::router(node.clone()))
        .merge(changes::router(node.clone()))
        .merge(console::router(node))
        .layer(DefaultBodyLimit::max(MAX_BODY))
}

/// A request as received, kept whole so that it can be forwarded to the leader unchanged.
pub(crate) struct Incoming {
    /// The HTTP method.
    pub(crate) method: Method,
    /// Path and query.
    pub(crate) uri: Uri,
    /// The headers (content type and credentials are forwarded).
    pub(crate) headers: HeaderMap,
    /// The body, within the router's body limit.
    pub(crate) body: Bytes,
}

impl<S: Send + Sync> axum::extract::FromRequest<S> for Incoming {
    type Rejection = Response;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        // The headers are moved out, not copied: reading the body needs only the extensions
        // (the body limit).
        let (mut parts, body) = req.into_parts();
        let headers = std::mem::take(&mut parts.headers);
        let (method, uri) = (parts.method.clone(), parts.uri.clone());
        let req = axum::extract::Request::from_parts(parts, body);
        let body = Bytes::from_request(req, state).await.map_err(body_rejection)?;
        Ok(Incoming { method, uri, headers, body })
    }
}

/// The answer to a body that could not be read: 408 if it stopped arriving (the body idle
/// timeout, `--http-body-timeout`), else axum's (413 over the size limit, 400 otherwise).
fn body_rejection(rejection: axum::extract::rejection::BytesRejection) -> Response {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&rejection);
    while let Some(error) = source {
        if error.is::<tower_http::timeout::TimeoutError>() {
            return error_response(
                StatusCode::REQUEST_TIMEOUT,
                "the request body stopped arriving (--http-body-timeout)",
            );
        }
        source = error.source();
    }
    rejection.into_response()
}

/// Query-string parameters. rqlite's flags are presence-only (`?transaction`).
///
/// As an extractor it takes the pairs `serve::front` decoded when it checked the query string,
/// so a request's query is decoded once; a router served without it decodes them here.
#[derive(Clone, Debug, Default)]
pub(crate) struct Params(pub(crate) Vec<(String, String)>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Params {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        if let Some(params) = parts.extensions.remove::<Params>() {
            return Ok(params);
        }
        match parts.uri.query().map(crate::params::parse).transpose() {
            Ok(pairs) => Ok(Params(pairs.unwrap_or_default())),
            Err(message) => Err(bad_request(message)),
        }
    }
}

impl Params {
    pub(crate) fn has(&self, key: &str) -> bool {
        self.0.iter().any(|(k, _)| k == key)
    }

    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    pub(crate) fn duration(&self, key: &str) -> Result<Option<Duration>, Response> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => crate::params::go_duration(v)
                .map(Some)
                .map_err(|_| bad_request(format!("{key} is not a valid duration"))),
        }
    }

    /// The write's `durability=`, or `default` when absent; a bad value is a 400.
    pub(crate) fn durability(
        &self,
        default: leader::Durability,
    ) -> Result<leader::Durability, Response> {
        match self.get("durability") {
            None => Ok(default),
            Some(d) => d.parse().map_err(bad_request),
        }
    }

    fn format(&self) -> sql::Format {
        sql::Format {
            associative: self.has("associative"),
            blob_array: self.has("blob_array"),
            timings: self.has("timings"),
        }
    }
}

pub(crate) fn json_response(
    status: StatusCode,
    value: &impl serde::Serialize,
    pretty: bool,
) -> Response {
    let body = if pretty { serde_json::to_vec_pretty(value) } else { serde_json::to_vec(value) };
    let body = body.expect("answers are JSON values or wire types, which serialize");
    (status, [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body)
        .into_response()
}

/// A 200 answer whose body is JSON written already.
pub(crate) fn json_body(body: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response()
}

pub(crate) fn error_response(status: StatusCode, message: impl std::fmt::Display) -> Response {
    json_response(status, &ErrorAnswer::new(message.to_string()), false)
}

pub(crate) fn bad_request(message: impl std::fmt::Display) -> Response {
    error_response(StatusCode::BAD_REQUEST, message)
}

pub(crate) fn unavailable(message: impl std::fmt::Display) -> Response {
    retry_after(error_response(StatusCode::SERVICE_UNAVAILABLE, message))
}

/// Maps a write-path error to its HTTP answer.
pub(crate) fn write_error(e: leader::Error) -> Response {
    let message = node::error::describe(&e);
    match e {
        leader::Error::NotLeader { .. }
        | leader::Error::Unavailable(_)
        | leader::Error::Unknown(_) => unavailable(message),
        leader::Error::NotReplicated { lsn, unconfirmed, .. } => {
            let body = ErrorAnswer::not_replicated(message, lsn, unconfirmed);
            retry_after(json_response(StatusCode::SERVICE_UNAVAILABLE, &body, false))
        }
        leader::Error::InvalidInput(_) => bad_request(message),
        leader::Error::DiskFull(_) => error_response(StatusCode::INSUFFICIENT_STORAGE, message),
        leader::Error::Internal(_) => error_response(StatusCode::INTERNAL_SERVER_ERROR, message),
    }
}

/// Maps a node error to its HTTP answer. [`node::Error::NotLeader`] is answered 503 here:
/// handlers that can forward do so before they get this far.
pub(crate) fn node_error(e: node::Error, pretty: bool) -> Response {
    match e {
        node::Error::Leader(e) => write_error(e),
        node::Error::NotLeader { .. } => unavailable("leader not found"),
        node::Error::InvalidInput(m) => bad_request(m),
        node::Error::Unavailable(m) => unavailable(m),
        e @ node::Error::NotApplied { applied, .. } => {
            let body =
                ErrorAnswer { applied_index: Some(applied), ..ErrorAnswer::new(e.to_string()) };
            retry_after(json_response(StatusCode::SERVICE_UNAVAILABLE, &body, false))
        }
        node::Error::Stale(why) => {
            json_response(StatusCode::OK, &keel_api::Answer::refused(why), pretty)
        }
        node::Error::Forbidden(m) => error_response(StatusCode::FORBIDDEN, m),
        node::Error::Pin(e) => pin_error(e),
        node::Error::Internal(m) => error_response(StatusCode::INTERNAL_SERVER_ERROR, m),
    }
}

/// A table check's snapshot that cannot be served: 409 when the index was applied before it was
/// pinned, 410 when the pin is gone, 503 when the index was not reached in time.
fn pin_error(e: sql::checksum::PinError) -> Response {
    use sql::checksum::PinError;
    let message = e.to_string();
    match e {
        PinError::Passed { applied, .. } => {
            let body = ErrorAnswer { applied_index: Some(applied), ..ErrorAnswer::new(message) };
            json_response(StatusCode::CONFLICT, &body, false)
        }
        PinError::Gone { .. } => error_response(StatusCode::GONE, message),
        PinError::NotReached { applied, .. } => {
            let body = ErrorAnswer { applied_index: Some(applied), ..ErrorAnswer::new(message) };
            retry_after(json_response(StatusCode::SERVICE_UNAVAILABLE, &body, false))
        }
    }
}

/// Adds `Retry-After: 1`.
fn retry_after(mut r: Response) -> Response {
    r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

/// A statement body as sent: SQL text (`text/plain`, one statement) or rqlite's JSON array.
pub(crate) enum Body<'a> {
    /// A `text/plain` body.
    Text(&'a str),
    /// Anything else, parsed as JSON.
    Json(Value),
}

impl<'a> Body<'a> {
    /// Decodes a body by its content type; a body that is not UTF-8 text or not JSON is a 400.
    pub(crate) fn decode(headers: &HeaderMap, body: &'a [u8]) -> Result<Body<'a>, Response> {
        let text_plain = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/plain"));
        if text_plain {
            let text = std::str::from_utf8(body).map_err(|_| bad_request("body is not UTF-8"))?;
            return Ok(Body::Text(text));
        }
        serde_json::from_slice(body).map(Body::Json).map_err(|_| bad_request("invalid JSON body"))
    }

    /// Whether it holds no statement: blank text, or `[]`.
    pub(crate) fn is_empty(&self) -> bool {
        match self {
            Body::Text(text) => text.trim().is_empty(),
            Body::Json(value) => value.as_array().is_some_and(Vec::is_empty),
        }
    }

    /// Its statements; a malformed body is a 400 with rqlite's message.
    pub(crate) fn statements(&self) -> Result<Vec<sql::Statement>, Response> {
        match self {
            Body::Text(text) => sql::statements_from_text(text).map_err(bad_request),
            Body::Json(value) => sql::parse_statements(value).map_err(bad_request),
        }
    }

    /// rqlite's JSON form of it (text becomes an array of one statement).
    pub(crate) fn into_json(self) -> Value {
        match self {
            Body::Text(text) => json!([text]),
            Body::Json(value) => value,
        }
    }
}

/// Parses a statement body: JSON array (rqlite's format) or, for `text/plain`, one statement.
fn parse_body(headers: &HeaderMap, body: &[u8]) -> Result<Vec<sql::Statement>, Response> {
    Body::decode(headers, body)?.statements()
}

/// Where a request that needs the leader goes, as decided by [`route_to_leader`].
pub(crate) enum Route {
    /// This node leads: serve it here.
    Here,
    /// Answer this at once (a 301 with `?redirect`, or 503 when no leader is known).
    Answer(Response),
    /// Forward it to the leader.
    Forward(Forward),
}

/// A request's way to the leader.
pub(crate) struct Forward {
    /// The same path and query on the leader.
    pub(crate) url: String,
    /// The leader's id, for errors.
    leader: raft::NodeId,
    /// How long the forwarded request may take.
    timeout: Duration,
}

/// Decides where a request that needs the leader goes, from the node's routing
/// ([`node::Node::route`]).
pub(crate) async fn route_to_leader(
    node: &Node,
    p: &Params,
    uri: &Uri,
    headers: &HeaderMap,
) -> Route {
    match node.route().await {
        node::Route::Here => Route::Here,
        node::Route::NoLeader => Route::Answer(unavailable("leader not found")),
        node::Route::Leader(leader) => match route_elsewhere(node, p, uri, headers, &leader) {
            Ok(way) => Route::Forward(way),
            Err(answer) => Route::Answer(answer),
        },
    }
}

/// How a request reaches `leader`, another node: forwarded, or `Err` with the answer to give
/// instead (a 301 with `?redirect`).
fn route_elsewhere(
    node: &Node,
    p: &Params,
    uri: &Uri,
    headers: &HeaderMap,
    leader: &raft::cluster::Member,
) -> Result<Forward, Response> {
    let url = node.peers().api_url(&leader.node, path_and_query(uri));
    if p.has("redirect") {
        let mut r = StatusCode::MOVED_PERMANENTLY.into_response();
        if let Ok(v) = HeaderValue::from_str(&url) {
            r.headers_mut().insert(header::LOCATION, v);
        }
        return Err(r);
    }
    if headers.contains_key(FORWARDED) {
        // Forwarded to us by a node that thought we lead; we don't. Don't bounce it around.
        return Err(unavailable("leader not found"));
    }
    // `timeout=` also bounds the leader's own waits (min_lsn, durability): give the forward
    // room beyond it, so the leader's answer arrives instead of a forwarding error.
    let timeout = p.duration("timeout")?.map_or(FORWARD_TIMEOUT, |t| t + Duration::from_secs(5));
    Ok(Forward { url, leader: leader.id, timeout })
}

/// A request to the leader carrying the caller's method, content type and credentials, marked
/// as forwarded. No timeout is set; the caller adds one where the body is bounded.
pub(crate) fn forward_request(
    node: &Node,
    method: &Method,
    url: &str,
    headers: &HeaderMap,
) -> reqwest::RequestBuilder {
    let mut forward =
        node.peers().api.request(method.clone(), url).header(FORWARDED, node.id().to_string());
    for name in [header::CONTENT_TYPE, header::AUTHORIZATION] {
        if let Some(v) = headers.get(&name) {
            forward = forward.header(name, v.clone());
        }
    }
    forward
}

/// If this node cannot serve the request because it needs the leader and this node is not it,
/// returns the answer: a 301 to the leader (`?redirect`), the leader's own answer (forwarded),
/// or 503 when no leader is known. `None` means: serve it here.
pub(crate) async fn to_leader(node: &Node, p: &Params, req: &Incoming) -> Option<Response> {
    match route_to_leader(node, p, &req.uri, &req.headers).await {
        Route::Here => None,
        Route::Answer(r) => Some(r),
        Route::Forward(way) => Some(forward(node, req, &way).await),
    }
}

/// The answer of a node that does not lead to a request that needs `leader`: a 301 with
/// `?redirect`, else the leader's own answer to the request forwarded.
pub(crate) async fn to(
    node: &Node,
    p: &Params,
    req: &Incoming,
    leader: &raft::cluster::Member,
) -> Response {
    match route_elsewhere(node, p, &req.uri, &req.headers, leader) {
        Ok(way) => forward(node, req, &way).await,
        Err(answer) => answer,
    }
}

/// How often a request abandoned by its leader looks for the next one.
const NEW_LEADER_POLL: Duration = Duration::from_millis(20);

/// Sends `req` to `url` on the leader and relays its answer (status, body, content type,
/// location, served-by).
///
/// Gives up early when the leader looks unable to answer ([`Node::leader_gone`]: frozen, or
/// cut off from this node, or deposed and silent). A request that is safe to send twice (see
/// [`repeatable`]) then goes to the next leader once one is known, within what is left of its
/// timeout; any other answers 503 saying that its outcome is unknown. Any other that finds the
/// leader gone already ([`Node::leader_silent`]) is not sent at all: 503, not applied.
async fn forward(node: &Node, req: &Incoming, way: &Forward) -> Response {
    if !repeatable(req)
        && let Some(why) = node.leader_silent(way.leader)
    {
        tracing::info!(leader = way.leader, %why, "refused a request: no leader is reachable");
        return unavailable(not_forwarded(&why));
    }
    let started = tokio::time::Instant::now();
    let total = way.timeout;
    let mut way = Forward { url: way.url.clone(), leader: way.leader, timeout: way.timeout };
    loop {
        let why = tokio::select! {
            answer = forward_once(node, req, &way) => return answer,
            why = node.leader_gone(way.leader) => why,
        };
        let left = total.saturating_sub(started.elapsed());
        let retry = repeatable(req) && !left.is_zero();
        tracing::info!(leader = way.leader, %why, retry, "abandoned a request forwarded to the leader");
        if !retry {
            return unavailable(format!(
                "forwarding to leader {} abandoned: {why}; the request may or may not have been applied (send writes with a request_id to retry them safely, and look up their outcome at /db/requests/ID)",
                way.leader
            ));
        }
        let next = tokio::time::timeout(left, async {
            loop {
                match node.route().await {
                    node::Route::Leader(l) if l.id != way.leader => return l,
                    // This node leads now: the request goes to its own API, where it is
                    // served like any forwarded request that reaches the leader.
                    node::Route::Here => {
                        if let Some(me) = node.leader_member().filter(|m| m.id == node.id()) {
                            return me;
                        }
                        tokio::time::sleep(NEW_LEADER_POLL).await;
                    }
                    // The old leader still named, or none yet: the election is under way.
                    _ => tokio::time::sleep(NEW_LEADER_POLL).await,
                }
            }
        })
        .await;
        match next {
            Ok(l) => {
                way.url = node.peers().api_url(&l.node, path_and_query(&req.uri));
                way.leader = l.id;
                way.timeout = total.saturating_sub(started.elapsed());
            }
            Err(_) => return unavailable(format!("no new leader within the timeout after {why}")),
        }
    }
}

/// The 503 message of a request refused before it was forwarded, because the leader is gone
/// (`why`). It names "nothing was written", so clients know it is safe to send again.
fn not_forwarded(why: &str) -> String {
    format!(
        "no leader is reachable ({why}); the request was not forwarded and not applied (nothing was written): retry later"
    )
}

/// Whether sending `req` again cannot apply it twice: a query, a promotion (of a node that
/// may lead already), or a write with a `request_id`.
fn repeatable(req: &Incoming) -> bool {
    let path = req.uri.path();
    matches!(path, "/db/query" | "/admin/promote")
        || (matches!(path, "/db/execute" | "/db/request")
            && req
                .uri
                .query()
                .is_some_and(|q| q.split('&').any(|kv| kv.starts_with("request_id="))))
}

/// The path and query of `uri`.
fn path_and_query(uri: &Uri) -> &str {
    uri.path_and_query().map_or(uri.path(), |pq| pq.as_str())
}

/// [`forward`]'s one attempt: sends `req` to the leader `way` names and relays its answer.
async fn forward_once(node: &Node, req: &Incoming, way: &Forward) -> Response {
    let (Incoming { method, headers, body, .. }, Forward { url, leader, timeout }) = (req, way);
    let forward = forward_request(node, method, url, headers).timeout(*timeout).body(body.clone());
    match forward.send().await {
        Ok(resp) => {
            let status = resp.status();
            let content_type = resp.headers().get(header::CONTENT_TYPE).cloned();
            let location = resp.headers().get(header::LOCATION).cloned();
            let served_by = resp.headers().get(crate::headers::SERVED_BY).cloned();
            match resp.bytes().await {
                Ok(bytes) => {
                    let mut r = (status, bytes).into_response();
                    if let Some(ct) = content_type {
                        r.headers_mut().insert(header::CONTENT_TYPE, ct);
                    }
                    if let Some(l) = location {
                        r.headers_mut().insert(header::LOCATION, l);
                    }
                    if let Some(by) = served_by {
                        r.headers_mut().insert(crate::headers::SERVED_BY, by);
                    }
                    r
                }
                Err(e) => unavailable(format!("reading the leader's answer failed: {e}")),
            }
        }
        Err(e) => unavailable(format!("forwarding to leader {leader} failed: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt as _;

    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Params {
        Params(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }

    async fn body_json(r: Response) -> Value {
        let bytes = r.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    fn retry_after(r: &Response) -> Option<&str> {
        r.headers().get(header::RETRY_AFTER).and_then(|v| v.to_str().ok())
    }

    #[test]
    fn params_are_presence_flags_values_and_go_durations() {
        let p = params(&[("transaction", ""), ("timeout", "1m30s"), ("db_timeout", "soon")]);
        assert!(p.has("transaction"));
        assert!(!p.has("pretty"));
        assert_eq!(p.get("timeout"), Some("1m30s"));
        assert_eq!(p.duration("timeout").unwrap(), Some(Duration::from_secs(90)));
        assert_eq!(p.duration("freshness").unwrap(), None);
        assert_eq!(p.duration("db_timeout").unwrap_err().status(), StatusCode::BAD_REQUEST);
        let default = leader::Durability::default();
        assert_eq!(params(&[]).durability(default).unwrap(), default);
        let asked = params(&[("durability", "sync")]).durability(default).unwrap();
        assert_eq!(asked.to_string(), "sync");
        let bad = params(&[("durability", "eventually")]).durability(default);
        assert_eq!(bad.unwrap_err().status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn bodies_are_text_or_json_statements() {
        let mut text = HeaderMap::new();
        text.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
        let body = Body::decode(&text, b"SELECT 1").unwrap();
        assert_eq!(body.statements().unwrap().len(), 1);
        assert!(Body::decode(&text, b"  ").unwrap().is_empty());
        assert_eq!(Body::decode(&text, b"\xff").err().unwrap().status(), StatusCode::BAD_REQUEST);

        let json = HeaderMap::new();
        let body = Body::decode(&json, br#"["SELECT 1", ["SELECT ?", 2]]"#).unwrap();
        assert_eq!(body.statements().unwrap().len(), 2);
        assert!(Body::decode(&json, b"[]").unwrap().is_empty());
        assert_eq!(Body::decode(&json, b"[").err().unwrap().status(), StatusCode::BAD_REQUEST);
        let not_statements = Body::decode(&json, br#"{"a": 1}"#).unwrap();
        assert_eq!(not_statements.statements().unwrap_err().status(), StatusCode::BAD_REQUEST);
        assert_eq!(Body::decode(&text, b"SELECT 2").unwrap().into_json(), json!(["SELECT 2"]));
    }

    #[tokio::test]
    async fn write_errors_say_what_to_do() {
        let r = write_error(leader::Error::NotLeader { leader: Some(2) });
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(retry_after(&r), Some("1"));
        assert!(body_json(r).await["error"].as_str().unwrap().contains("nothing was written"));

        let r = write_error(leader::Error::Unknown("lost leadership".into()));
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(body_json(r).await["error"].as_str().unwrap().contains("same request_id"));

        let r = write_error(leader::Error::NotReplicated {
            lsn: 7,
            durability: "sync".parse().unwrap(),
            unconfirmed: vec![3],
        });
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(retry_after(&r), Some("1"));
        let body = body_json(r).await;
        assert_eq!((body["committed"].clone(), body["lsn"].clone()), (json!(true), json!(7)));
        assert_eq!(body["unconfirmed"], json!([3]));

        let r = write_error(leader::Error::InvalidInput("too big".into()));
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert_eq!(retry_after(&r), None);
        let r = write_error(leader::Error::Internal("disk".into()));
        assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let r = write_error(leader::Error::DiskFull("the disk is full: …".into()));
        assert_eq!(r.status(), StatusCode::INSUFFICIENT_STORAGE);
        assert_eq!(retry_after(&r), None);
    }

    #[tokio::test]
    async fn node_errors_map_to_one_answer_each() {
        let r = node_error(
            node::Error::NotApplied {
                index: 9,
                applied: 4,
                node: 2,
                timeout: Duration::from_millis(1500),
            },
            false,
        );
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(retry_after(&r), Some("1"));
        let body = body_json(r).await;
        assert_eq!(body["applied_index"], json!(4));
        assert_eq!(
            body["error"],
            json!("min_lsn 9 not reached within 1.500s: node 2 has applied 4")
        );

        // rqlite answers a stale read 200, with the error in the body.
        let r = node_error(node::Error::Stale("stale read: too old".into()), false);
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(body_json(r).await, json!({ "results": [], "error": "stale read: too old" }));

        let status = |e| node_error(e, false).status();
        assert_eq!(status(node::Error::InvalidInput("x".into())), StatusCode::BAD_REQUEST);
        assert_eq!(status(node::Error::Unavailable("x".into())), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(status(node::Error::Forbidden("x".into())), StatusCode::FORBIDDEN);
        assert_eq!(status(node::Error::Internal("x".into())), StatusCode::INTERNAL_SERVER_ERROR);
        let leader_error = node::Error::Leader(leader::Error::InvalidInput("x".into()));
        assert_eq!(status(leader_error), StatusCode::BAD_REQUEST);
    }
}
