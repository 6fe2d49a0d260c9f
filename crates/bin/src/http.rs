//! The client HTTP API, rqlite-compatible (`shared/reference/rqlite-api.md`), on axum.
//!
//! Requests flow like this:
//!
//! - `/db/execute` (and `/db/request` with a write): on a follower, forwarded to the leader
//!   (or answered 301 with `?redirect`) before the body is even parsed; on the leader, parsed
//!   into [`sql::WriteRequest`] and handed to the write path ([`leader::Leader::write`]).
//! - `/db/query` (and read-only `/db/request`): `level=none` reads this node's data; `weak`,
//!   `linearizable` and `strong` need the leader (forwarded like writes) and pass a Raft barrier
//!   there first. Reads run on the read-only connection pool, never the write connection.
//! - `/status` ([`crate::status`]), `/nodes`, `/leader`, `/readyz`: what this node knows of
//!   itself and the cluster.
//! - `/join`: asked by a starting node to be added (forwarded to the leader).
//! - `/db/execute?queue` and `/db/queue/{n}`: queued writes, handled by [`crate::queue`].
//!
//! Before any handler, every request's query string passes rqlite's checks
//! ([`crate::params`]), and every answer gets rqlite's headers ([`crate::headers`]). Handlers
//! honour rqlite's `associative`, `blob_array`, `timings`, `transaction`, `redirect`,
//! `raft_index`, `qualify_columns`, `db_timeout`, `linearizable_timeout`, `freshness` and
//! `level`; the others rqlite knows are accepted and ignored (`docs/http-api.md` lists each).
//!
//! Every database answer carries `lsn`: the log index of the write's record, or for a read the
//! index this node had applied when it served it. Errors map to HTTP status in one place,
//! [`write_error`]; SQL errors are per-statement and answered 200, as rqlite does.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::sync::watch;

/// Header marking a request forwarded by another node, so it is never forwarded twice.
const FORWARDED: &str = "x-keel-forwarded";
/// Largest request body accepted.
const MAX_BODY: usize = 64 << 20;
/// How long a request waits for a leader to emerge (an election) before answering 503.
const LEADER_WAIT: Duration = Duration::from_secs(3);
/// How long a read waits for this node to apply what it needs (`min_lsn`, read index) unless
/// `timeout=` says otherwise.
const READ_WAIT: Duration = Duration::from_secs(5);
/// How long a read may run on the async worker that received it before it is moved to a
/// blocking thread (see [`sql::Readers::try_query_applied`]): a point read takes microseconds,
/// and the hand-off to a blocking thread and back costs more than that.
const INLINE_READ: Duration = Duration::from_millis(1);
/// How long a forwarded request may take unless `timeout=` says otherwise.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(30);
/// How long past the election timeout a follower may go without hearing from its leader before
/// `/readyz` says the leader cannot be reached (heartbeats come many times per election
/// timeout; this leaves room for a busy machine).
const LEADER_SILENCE: Duration = Duration::from_secs(1);

/// What the HTTP handlers share: this node's handles.
pub struct Node {
    /// This node's id.
    pub(crate) id: raft::NodeId,
    /// This node's addresses.
    pub(crate) me: raft::MemberAddr,
    /// The Raft node.
    pub(crate) raft: raft::Raft,
    /// The write path.
    pub(crate) leader: leader::Leader,
    /// Read-only connections.
    pub(crate) readers: Arc<sql::Readers>,
    /// The applied log index.
    pub(crate) applied: watch::Receiver<wal::Lsn>,
    /// Client for forwarding to the leader and probing peers.
    pub(crate) client: reqwest::Client,
    /// Followers' applied positions (meaningful on the leader).
    pub(crate) progress: Arc<leader::Progress>,
    /// When this node last heard from a leader.
    pub(crate) contact: Arc<raft::network::Contact>,
    /// Durability of writes that do not ask for one.
    pub(crate) durability: leader::Durability,
    /// Prometheus metrics.
    pub(crate) metrics: crate::metrics::Metrics,
    /// Serializes membership changes: Raft allows one at a time, and concurrent joins would
    /// otherwise fail each other.
    pub(crate) membership: tokio::sync::Mutex<()>,
    /// The write connection (loads read the schema they replace from it).
    pub(crate) db: Arc<std::sync::Mutex<sql::Db>>,
    /// Consistent copies of the database, for backups.
    pub(crate) image_source: sql::ImageSource,
    /// The node's data directory (backups and loads spool under `tmp/` in it).
    pub(crate) data_dir: std::path::PathBuf,
    /// Snapshot counters, for `/status`.
    pub(crate) snapshots: Arc<raft::SnapshotStats>,
    /// The planted stale-read bug (`--unsafe-plant-bug stale-linearizable`).
    pub(crate) unsafe_stale_reads: bool,
    /// Reads this node's Raft log (the change stream).
    pub(crate) log: raft::LogReader,
    /// How this node reaches other nodes (schemes and TLS clients).
    pub(crate) peers: crate::tls::PeerClients,
    /// How the node was started, for `/status` and `/readyz`.
    pub(crate) settings: crate::status::Settings,
    /// The write queue of `/db/execute?queue`.
    pub(crate) queue: crate::queue::Queue,
}

/// The handles [`Node::new`] bundles.
pub struct Parts {
    /// This node's id.
    pub id: raft::NodeId,
    /// This node's addresses.
    pub me: raft::MemberAddr,
    /// The Raft node.
    pub raft: raft::Raft,
    /// The write path.
    pub leader: leader::Leader,
    /// Read-only connections.
    pub readers: sql::Readers,
    /// The applied log index.
    pub applied: watch::Receiver<wal::Lsn>,
    /// Followers' applied positions.
    pub progress: Arc<leader::Progress>,
    /// When this node last heard from a leader.
    pub contact: Arc<raft::network::Contact>,
    /// Durability of writes that do not ask for one.
    pub durability: leader::Durability,
    /// The write connection.
    pub db: Arc<std::sync::Mutex<sql::Db>>,
    /// Consistent copies of the database.
    pub image_source: sql::ImageSource,
    /// The node's data directory.
    pub data_dir: std::path::PathBuf,
    /// Snapshot counters.
    pub snapshots: Arc<raft::SnapshotStats>,
    /// The planted stale-read bug (`--unsafe-plant-bug stale-linearizable`).
    pub unsafe_stale_reads: bool,
    /// Reads this node's Raft log.
    pub log: raft::LogReader,
    /// How this node reaches other nodes.
    pub peers: crate::tls::PeerClients,
    /// How the node was started.
    pub settings: crate::status::Settings,
    /// The write queue of `/db/execute?queue`.
    pub queue: crate::queue::Queue,
}

impl Node {
    /// Bundles the node's handles for the router.
    pub fn new(parts: Parts) -> Node {
        // Never follows redirects; trusts the cluster CA under TLS.
        let client = parts.peers.api.clone();
        let Parts {
            id,
            me,
            raft,
            leader,
            readers,
            applied,
            progress,
            contact,
            durability,
            db,
            image_source,
            data_dir,
            snapshots,
            unsafe_stale_reads,
            log,
            peers,
            settings,
            queue,
        } = parts;
        Node {
            id,
            me,
            raft,
            leader,
            readers: Arc::new(readers),
            applied,
            client,
            progress,
            contact,
            durability,
            metrics: crate::metrics::Metrics::new(),
            membership: tokio::sync::Mutex::new(()),
            db,
            image_source,
            data_dir,
            snapshots,
            unsafe_stale_reads,
            log,
            peers,
            settings,
            queue,
        }
    }

    fn applied(&self) -> wal::Lsn {
        *self.applied.borrow()
    }
}

/// The client API router.
pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/db/execute", post(execute))
        .route("/db/query", get(query).post(query))
        .route("/db/request", post(request))
        .route("/db/queue/{sequence_number}", get(crate::queue::outcome))
        .route("/status", get(crate::status::status))
        .route("/nodes", get(nodes))
        .route("/leader", get(get_leader))
        .route("/readyz", get(readyz))
        .route("/join", post(join))
        .route("/metrics", get(metrics))
        .with_state(node.clone())
        .merge(crate::admin::router(node.clone()))
        .merge(crate::backup::router(node.clone()))
        .merge(crate::changes::router(node.clone()))
        .merge(crate::console::router(node))
        .layer(DefaultBodyLimit::max(MAX_BODY))
}

/// Node-to-node routes served on the Raft address beside Raft's own.
pub fn internal_router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/keel/applied", post(applied_report))
        .route("/keel/read-index", post(read_index))
        // A batch of another node's queued writes. No body limit of its own: each request in it
        // passed the client API's limit on that node, and a batch holds at most
        // --write-queue-batch-size of them.
        .route("/keel/queue", post(crate::queue::flush_here).layer(DefaultBodyLimit::disable()))
        .with_state(node)
}

/// A follower's report of its applied index.
#[derive(serde::Deserialize)]
struct AppliedReport {
    /// The reporting node.
    id: raft::NodeId,
    /// Its applied index.
    applied: wal::Lsn,
}

async fn applied_report(
    State(node): State<Arc<Node>>,
    peer: Option<axum::Extension<raft::network::PeerNode>>,
    body: Bytes,
) -> Response {
    match serde_json::from_slice::<AppliedReport>(&body) {
        Ok(r) => {
            if let Err(refused) = crate::tls::check_reporter(peer.map(|p| p.0), r.id) {
                return refused;
            }
            node.progress.report(r.id, r.applied);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => bad_request(format!("invalid applied report: {e}")),
    }
}

/// Leader side of a follower's linearizable read: confirm leadership with a quorum and return
/// the index the follower must apply before reading.
async fn read_index(State(node): State<Arc<Node>>) -> Response {
    match raft::client::barrier(&node.raft, raft::ReadPolicy::ReadIndex).await {
        Ok(index) => json_response(StatusCode::OK, &json!({ "index": index }), false),
        Err(e) => write_error(e.into()),
    }
}

async fn metrics(State(node): State<Arc<Node>>) -> Response {
    let text = node.metrics.render(&node.raft, &node.progress);
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"))],
        text,
    )
        .into_response()
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
        let (method, uri, headers) =
            (req.method().clone(), req.uri().clone(), req.headers().clone());
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
pub(crate) struct Params(pub(crate) Vec<(String, String)>);

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

/// Read consistency levels (rqlite's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    /// This node's data, whatever it is.
    None,
    /// The leader's data, trusting its lease.
    Weak,
    /// Any node's data, after it has applied the leader's commit index as confirmed with a
    /// quorum at the start of the read (read index).
    Linearizable,
    /// Through the Raft log: the leader appends a blank entry and reads after applying it.
    Strong,
}

impl Level {
    fn from_params(p: &Params, node: &Node) -> Level {
        match p.get("level").map(|l| l.to_ascii_lowercase()).as_deref() {
            Some("none") => Level::None,
            Some("linearizable") => Level::Linearizable,
            Some("strong") => Level::Strong,
            Some("auto") => {
                if raft::cluster::state(&node.raft).role == raft::cluster::Role::Learner {
                    Level::None
                } else {
                    Level::Weak
                }
            }
            // rqlite: absent or unknown means weak.
            _ => Level::Weak,
        }
    }
}

pub(crate) fn json_response(status: StatusCode, value: &Value, pretty: bool) -> Response {
    let body = if pretty { serde_json::to_vec_pretty(value) } else { serde_json::to_vec(value) };
    let body = body.expect("serializing a serde_json::Value cannot fail");
    (status, [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body)
        .into_response()
}

pub(crate) fn error_response(status: StatusCode, message: impl std::fmt::Display) -> Response {
    json_response(status, &json!({ "error": message.to_string() }), false)
}

pub(crate) fn bad_request(message: impl std::fmt::Display) -> Response {
    error_response(StatusCode::BAD_REQUEST, message)
}

pub(crate) fn unavailable(message: impl std::fmt::Display) -> Response {
    let mut r = error_response(StatusCode::SERVICE_UNAVAILABLE, message);
    r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

/// Maps a write-path error to its HTTP answer.
pub(crate) fn write_error(e: leader::Error) -> Response {
    match e {
        leader::Error::NotLeader { .. } => {
            unavailable("leadership changed; nothing was written, retry")
        }
        leader::Error::Unavailable(m) => unavailable(m),
        leader::Error::Unknown(m) => unavailable(format!(
            "{m}; the write may or may not have been committed: retry with the same request_id to be safe"
        )),
        leader::Error::NotReplicated { lsn, durability, unconfirmed } => {
            let body = json!({
                "error": format!(
                    "the write is committed at lsn {lsn} but not every replica that {durability} needs confirmed applying it in time"
                ),
                "committed": true,
                "lsn": lsn,
                "unconfirmed": unconfirmed,
            });
            let mut r = json_response(StatusCode::SERVICE_UNAVAILABLE, &body, false);
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            r
        }
        leader::Error::InvalidInput(m) => bad_request(m),
        leader::Error::Internal(m) => error_response(StatusCode::INTERNAL_SERVER_ERROR, m),
    }
}

/// Every label [`error_kind`] gives.
pub const ERROR_KINDS: [&str; 6] =
    ["not_leader", "unavailable", "unknown_outcome", "not_replicated", "invalid_input", "internal"];

/// A short label for an error, for `keel_errors_total{kind}`.
fn error_kind(e: &leader::Error) -> &'static str {
    match e {
        leader::Error::NotLeader { .. } => "not_leader",
        leader::Error::Unavailable(_) => "unavailable",
        leader::Error::Unknown(_) => "unknown_outcome",
        leader::Error::NotReplicated { .. } => "not_replicated",
        leader::Error::InvalidInput(_) => "invalid_input",
        leader::Error::Internal(_) => "internal",
    }
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
    Forward {
        /// The same path and query on the leader.
        url: String,
        /// The leader's id, for errors.
        leader: raft::NodeId,
        /// How long the forwarded request may take.
        timeout: Duration,
    },
}

/// Decides where a request that needs the leader goes. During an election there is briefly no
/// leader (or a stale one): wait up to [`LEADER_WAIT`] for one to emerge rather than failing.
pub(crate) async fn route_to_leader(
    node: &Node,
    p: &Params,
    uri: &Uri,
    headers: &HeaderMap,
) -> Route {
    let deadline = Instant::now() + LEADER_WAIT;
    let leader = loop {
        if raft::client::leader_term(&node.raft).is_ok() {
            return Route::Here;
        }
        if let Some(l) = raft::cluster::leader(&node.raft).filter(|l| l.id != node.id) {
            break l;
        }
        if Instant::now() >= deadline {
            return Route::Answer(unavailable("leader not found"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let path_and_query = uri.path_and_query().map_or(uri.path(), |pq| pq.as_str());
    let url = format!("{}://{}{}", node.peers.api_scheme, leader.node.http_addr, path_and_query);
    if p.has("redirect") {
        let mut r = StatusCode::MOVED_PERMANENTLY.into_response();
        if let Ok(v) = HeaderValue::from_str(&url) {
            r.headers_mut().insert(header::LOCATION, v);
        }
        return Route::Answer(r);
    }
    if headers.contains_key(FORWARDED) {
        // Forwarded to us by a node that thought we lead; we don't. Don't bounce it around.
        return Route::Answer(unavailable("leader not found"));
    }
    // `timeout=` also bounds the leader's own waits (min_lsn, durability): give the forward
    // room beyond it, so the leader's answer arrives instead of a forwarding error.
    let timeout = match p.duration("timeout") {
        Ok(t) => t.map_or(FORWARD_TIMEOUT, |t| t + Duration::from_secs(5)),
        Err(r) => return Route::Answer(r),
    };
    Route::Forward { url, leader: leader.id, timeout }
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
        node.client.request(method.clone(), url).header(FORWARDED, node.id.to_string());
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
    let Incoming { method, uri, headers, body } = req;
    let (url, leader, timeout) = match route_to_leader(node, p, uri, headers).await {
        Route::Here => return None,
        Route::Answer(r) => return Some(r),
        Route::Forward { url, leader, timeout } => (url, leader, timeout),
    };
    let forward = forward_request(node, method, &url, headers).timeout(timeout).body(body.clone());
    Some(match forward.send().await {
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
    })
}

fn results_json(results: &[sql::StatementResult], p: &Params, in_request: bool) -> Vec<Value> {
    let format = p.format();
    results.iter().map(|r| r.to_json(&format, in_request)).collect()
}

fn db_answer(results: Vec<Value>, lsn: wal::Lsn, p: &Params, start: Instant) -> Response {
    let mut body = json!({ "results": results, "lsn": lsn });
    if p.has("timings") {
        body["time"] = json!(start.elapsed().as_secs_f64());
    }
    if p.has("raft_index") {
        body["raft_index"] = json!(lsn);
    }
    json_response(StatusCode::OK, &body, p.has("pretty"))
}

async fn execute(
    State(node): State<Arc<Node>>,
    Query(p): Query<Vec<(String, String)>>,
    req: Incoming,
) -> Response {
    let p = Params(p);
    if p.has("queue") {
        return crate::queue::enqueue(&node, &p, &req).await;
    }
    served_by(&node, leader_write(&node, &p, &req, false, Instant::now()).await)
}

/// Marks a database answer with `X-RQLITE-SERVED-BY`: the Raft address of the node that ran
/// it. A forwarded answer keeps the leader's; errors other than per-statement ones get none.
fn served_by(node: &Node, mut response: Response) -> Response {
    let ok = response.status() == StatusCode::OK;
    let headers = response.headers_mut();
    if ok
        && !headers.contains_key(crate::headers::SERVED_BY)
        && let Ok(addr) = HeaderValue::from_str(&node.me.raft_addr)
    {
        headers.insert(crate::headers::SERVED_BY, addr);
    }
    response
}

/// Routes a write to the leader (forwarding it, or answering 301) and runs it there. If this
/// node loses leadership before the write is appended (nothing was written), the write is
/// routed again to whoever leads now, a few times.
#[allow(clippy::too_many_arguments)]
async fn leader_write(
    node: &Node,
    p: &Params,
    req: &Incoming,
    rows: bool,
    start: Instant,
) -> Response {
    let durability = match p.durability(node.durability) {
        Ok(d) => d,
        Err(r) => return r,
    };
    let db_timeout = match p.duration("db_timeout") {
        Ok(t) => t,
        Err(r) => return r,
    };
    let mut attempts = 0;
    loop {
        if let Some(r) = to_leader(node, p, req).await {
            return r;
        }
        let statements = match parse_body(&req.headers, &req.body) {
            Ok(s) => s,
            Err(r) => return r,
        };
        let qualify = (rows && p.has("qualify_columns")).then(|| sql_texts(&statements));
        let request = sql::WriteRequest {
            statements,
            transaction: p.has("transaction"),
            rows,
            request_id: p.get("request_id").map(str::to_string),
            timeout: db_timeout,
        };
        match node.leader.write(request, durability).await {
            Ok(mut outcome) => {
                node.metrics.writes.inc();
                if let Some(texts) = qualify {
                    outcome.results = match qualify_columns(node, texts, outcome.results).await {
                        Ok(results) => results,
                        Err(r) => return r,
                    };
                }
                let label = durability.to_string();
                node.metrics
                    .commit_seconds
                    .with_label_values(&[label.as_str()])
                    .observe(start.elapsed().as_secs_f64());
                return db_answer(results_json(&outcome.results, p, rows), outcome.lsn, p, start);
            }
            Err(leader::Error::NotLeader { .. }) if attempts < 3 => attempts += 1,
            Err(e) => {
                node.metrics.errors.with_label_values(&[error_kind(&e)]).inc();
                return write_error(e);
            }
        }
    }
}

async fn query(
    State(node): State<Arc<Node>>,
    Query(p): Query<Vec<(String, String)>>,
    req: Incoming,
) -> Response {
    let p = Params(p);
    let start = Instant::now();
    let statements = if req.method == Method::GET {
        match p.get("q") {
            Some(q) if !q.is_empty() => match sql::statements_from_text(q) {
                Ok(s) => s,
                Err(e) => return bad_request(e),
            },
            _ => return bad_request("query parameter not set"),
        }
    } else {
        match parse_body(&req.headers, &req.body) {
            Ok(s) => s,
            Err(r) => return r,
        }
    };
    served_by(&node, read(&node, &p, &req, statements, false, start).await)
}

#[allow(clippy::too_many_arguments)]
async fn read(
    node: &Node,
    p: &Params,
    req: &Incoming,
    statements: Vec<sql::Statement>,
    in_request: bool,
    start: Instant,
) -> Response {
    let level = Level::from_params(p, node);
    let db_timeout = match p.duration("db_timeout") {
        Ok(t) => t,
        Err(r) => return r,
    };
    let freshness = match p.duration("freshness") {
        Ok(f) => f,
        Err(r) => return r,
    };
    if p.has("freshness_strict") && freshness.is_none() {
        return bad_request("freshness_strict requires freshness");
    }
    let min_lsn = match p.get("min_lsn").map(str::parse::<wal::Lsn>) {
        None => None,
        Some(Ok(n)) => Some(n),
        Some(Err(_)) => return bad_request("min_lsn must be a log index (a whole number)"),
    };
    let timeout = match p.duration("timeout") {
        Ok(t) => t.unwrap_or(READ_WAIT),
        Err(r) => return r,
    };
    match level {
        Level::None => {
            if let Some(freshness) = freshness
                && let Err(why) = check_freshness(node, freshness, p.has("freshness_strict"))
            {
                return json_response(
                    StatusCode::OK,
                    &json!({ "results": [], "error": why }),
                    p.has("pretty"),
                );
            }
        }
        Level::Weak | Level::Strong => {
            if let Some(r) = to_leader(node, p, req).await {
                return r;
            }
            let barrier = match level {
                Level::Weak => {
                    match raft::client::barrier(&node.raft, raft::ReadPolicy::LeaseRead).await {
                        // A fresh leader has no lease yet: confirm with a quorum instead.
                        Err(raft::client::ClientError::NoQuorum(_)) => {
                            raft::client::barrier(&node.raft, raft::ReadPolicy::ReadIndex).await
                        }
                        other => other,
                    }
                }
                _ => raft::client::log_barrier(&node.raft).await,
            };
            if let Err(e) = barrier {
                return write_error(e.into());
            }
        }
        Level::Linearizable if node.unsafe_stale_reads => {}
        Level::Linearizable => {
            // Read index: the leader confirms its leadership with a quorum and names the
            // index to apply through; then this node, whichever it is, reads its own copy.
            // `linearizable_timeout` bounds both steps (rqlite's name), else `timeout`.
            let limit = match p.duration("linearizable_timeout") {
                Ok(t) => t.unwrap_or(timeout),
                Err(r) => return r,
            };
            let index = async {
                if raft::client::leader_term(&node.raft).is_ok() {
                    raft::client::barrier(&node.raft, raft::ReadPolicy::ReadIndex)
                        .await
                        .map_err(|e| write_error(e.into()))
                } else {
                    remote_read_index(node).await
                }
            };
            let started = Instant::now();
            let index = tokio::time::timeout(limit, index).await.unwrap_or_else(|_| {
                Err(unavailable(format!(
                    "the leader did not confirm a read index within {:.3}s (linearizable_timeout)",
                    limit.as_secs_f64()
                )))
            });
            match index {
                Ok(index) => {
                    let left = limit.saturating_sub(started.elapsed());
                    if let Err(r) = wait_applied(node, index, left).await {
                        return r;
                    }
                }
                Err(r) => return r,
            }
        }
    }
    if let Some(n) = min_lsn
        && let Err(r) = wait_applied(node, n, timeout).await
    {
        return r;
    }
    let readers = node.readers.clone();
    let transaction = p.has("transaction");
    let qualify = p.has("qualify_columns").then(|| sql_texts(&statements));
    // The answer's lsn is read from the database AFTER the query: the applied position is
    // committed with the data and only grows, so it covers everything the query saw, and a
    // client that sends it back as min_lsn never reads older data (monotonic reads).
    let results = match readers.try_query_applied(&statements, transaction, db_timeout, INLINE_READ)
    {
        Some(outcome) => Ok(outcome),
        None => {
            tokio::task::spawn_blocking(move || {
                readers.query_applied(&statements, transaction, db_timeout)
            })
            .await
        }
    };
    match results {
        Ok(Ok((mut results, lsn))) => {
            node.metrics.reads.inc();
            if let Some(texts) = qualify {
                results = match qualify_columns(node, texts, results).await {
                    Ok(results) => results,
                    Err(r) => return r,
                };
            }
            db_answer(results_json(&results, p, in_request), lsn.max(node.applied()), p, start)
        }
        Ok(Err(sql::Error::InvalidInput(m))) => bad_request(m),
        Ok(Err(e)) => error_response(StatusCode::INTERNAL_SERVER_ERROR, e),
        Err(e) => error_response(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

async fn request(
    State(node): State<Arc<Node>>,
    Query(p): Query<Vec<(String, String)>>,
    req: Incoming,
) -> Response {
    let p = Params(p);
    let start = Instant::now();
    let statements = match parse_body(&req.headers, &req.body) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let readers = node.readers.clone();
    let (statements, read_only) = match tokio::task::spawn_blocking(move || {
        let ro = readers.is_read_only(&statements);
        (statements, ro)
    })
    .await
    {
        Ok(v) => v,
        Err(e) => return error_response(StatusCode::INTERNAL_SERVER_ERROR, e),
    };
    if read_only {
        return served_by(&node, read(&node, &p, &req, statements, true, start).await);
    }
    served_by(&node, leader_write(&node, &p, &req, true, start).await)
}

/// The SQL text of each statement (what [`qualify_columns`] prepares again).
fn sql_texts(statements: &[sql::Statement]) -> Vec<String> {
    statements.iter().map(|s| s.sql.clone()).collect()
}

/// rqlite's `qualify_columns`: each column of a rows result that comes from a table is named
/// `table.column` (expressions keep their name), as rqlite's `qualifyRowColumns` does with
/// `sqlite3_column_table_name`. The statements are prepared again on a read connection; a
/// statement that cannot be prepared there keeps its names, as in rqlite.
async fn qualify_columns(
    node: &Node,
    texts: Vec<String>,
    mut results: Vec<sql::StatementResult>,
) -> Result<Vec<sql::StatementResult>, Response> {
    let readers = node.readers.clone();
    tokio::task::spawn_blocking(move || {
        for (text, result) in texts.iter().zip(results.iter_mut()) {
            if let sql::StatementResult::Rows { columns, .. } = result
                && !columns.is_empty()
                && let Ok(tables) = readers.column_tables(text)
                && tables.len() == columns.len()
            {
                for (column, table) in columns.iter_mut().zip(tables) {
                    if let Some(table) = table.filter(|t| !t.is_empty()) {
                        *column = format!("{table}.{column}");
                    }
                }
            }
        }
        results
    })
    .await
    .map_err(|e| error_response(StatusCode::INTERNAL_SERVER_ERROR, e))
}

/// Refuses a `level=none` read on a non-leader that has not heard from a leader within
/// `freshness` (or, with `strict`, has not applied what the leader had committed then).
fn check_freshness(node: &Node, freshness: Duration, strict: bool) -> Result<(), String> {
    if raft::client::leader_term(&node.raft).is_ok() {
        return Ok(()); // The leader's data is as fresh as it gets.
    }
    let Some((at, leader_commit)) = node.contact.last() else {
        return Err(format!("stale read: node {} has not heard from a leader", node.id));
    };
    let age = at.elapsed();
    if age > freshness {
        return Err(format!(
            "stale read: node {} last heard from the leader {:.3}s ago (freshness {:.3}s)",
            node.id,
            age.as_secs_f64(),
            freshness.as_secs_f64()
        ));
    }
    let applied = node.applied();
    if strict && applied < leader_commit {
        return Err(format!(
            "stale read: node {} has applied {applied} of the {leader_commit} the leader had committed (freshness_strict)",
            node.id
        ));
    }
    Ok(())
}

/// Asks the leader for a read index (see [`read_index`]).
async fn remote_read_index(node: &Node) -> Result<wal::Lsn, Response> {
    let deadline = Instant::now() + LEADER_WAIT;
    let leader = loop {
        if let Some(l) = raft::cluster::leader(&node.raft).filter(|l| l.id != node.id) {
            break l;
        }
        if Instant::now() >= deadline {
            return Err(unavailable("leader not found"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let url = format!("{}://{}/keel/read-index", node.peers.node_scheme, leader.node.raft_addr);
    let resp = node.peers.node.post(&url).timeout(FORWARD_TIMEOUT).send().await;
    let resp = resp.map_err(|e| {
        unavailable(format!("asking leader {} for a read index failed: {e}", leader.id))
    })?;
    let status = resp.status();
    let value: Value =
        resp.json().await.map_err(|e| unavailable(format!("bad read-index answer: {e}")))?;
    match value["index"].as_u64() {
        Some(index) if status.is_success() => Ok(index),
        _ => Err(unavailable(format!(
            "leader {} gave no read index: {}",
            leader.id,
            value["error"].as_str().unwrap_or("unknown error")
        ))),
    }
}

/// Waits until this node has applied `index`, up to `timeout`; else a 503 that names how far
/// it got.
async fn wait_applied(node: &Node, index: wal::Lsn, timeout: Duration) -> Result<(), Response> {
    let mut rx = node.applied.clone();
    match tokio::time::timeout(timeout, rx.wait_for(|a| *a >= index)).await {
        Ok(Ok(_)) => Ok(()),
        _ => {
            let applied = node.applied();
            let body = json!({
                "error": format!(
                    "min_lsn {index} not reached within {:.3}s: node {} has applied {applied}",
                    timeout.as_secs_f64(),
                    node.id
                ),
                "applied_index": applied,
            });
            let mut r = json_response(StatusCode::SERVICE_UNAVAILABLE, &body, false);
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            Err(r)
        }
    }
}

fn node_json(
    node: &Node,
    m: &raft::cluster::Member,
    leader: Option<raft::NodeId>,
    reachable: bool,
) -> Value {
    json!({
        "id": m.id.to_string(),
        "api_addr": format!("{}://{}", node.peers.api_scheme, m.node.http_addr),
        "addr": m.node.raft_addr,
        "voter": m.voter,
        "reachable": reachable,
        "leader": leader == Some(m.id),
    })
}

/// On the leader, each other member's replication progress; `null` elsewhere.
pub(crate) fn replication_json(node: &Node, s: &raft::cluster::State) -> Value {
    let Some(matched) = &s.matched else { return Value::Null };
    let now = Instant::now();
    let members = s.members.iter().filter(|m| m.id != s.id).map(|m| {
        let lag = node.progress.lag(m.id, s.last_log_index, now);
        let entry = json!({
            "role": if m.voter { "follower" } else { "learner" },
            "matched_index": matched.get(&m.id).copied().flatten(),
            "applied_index": node.progress.applied(m.id),
            "lag_entries": lag.map(|l| l.entries),
            "lag_ms": lag.map(|l| l.ms),
        });
        (m.id.to_string(), entry)
    });
    Value::Object(members.collect())
}

async fn nodes(State(node): State<Arc<Node>>, Query(p): Query<Vec<(String, String)>>) -> Response {
    let p = Params(p);
    let s = raft::cluster::state(&node.raft);
    let members: Vec<_> =
        s.members.iter().filter(|m| m.voter || p.has("nonvoters")).cloned().collect();
    let probes = members.iter().map(|m| {
        let client = node.client.clone();
        let me = m.id == node.id;
        let url = format!("{}://{}/readyz?noleader", node.peers.api_scheme, m.node.http_addr);
        async move {
            me || client
                .get(&url)
                .timeout(Duration::from_secs(1))
                .send()
                .await
                // A node that requires credentials (`--auth`) answers the probe 401 or 403: it
                // is up, though its readiness is not ours to see.
                .is_ok_and(|r| {
                    r.status().is_success()
                        || matches!(r.status(), StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN)
                })
        }
    });
    let reachable = futures::future::join_all(probes).await;
    let list: Vec<Value> =
        members.iter().zip(reachable).map(|(m, r)| node_json(&node, m, s.leader_id, r)).collect();
    // On the leader, add each member's replication progress (rqlite clients ignore extra keys).
    let replication = replication_json(&node, &s);
    let list: Vec<Value> = list
        .into_iter()
        .map(|mut n| {
            let id = n["id"].as_str().unwrap_or_default().to_string();
            if let (Some(obj), Some(Value::Object(extra))) =
                (n.as_object_mut(), replication.get(&id))
            {
                obj.extend(extra.clone());
            }
            n
        })
        .collect();
    let body = if p.get("ver") == Some("2") {
        json!({ "nodes": list })
    } else {
        Value::Object(
            list.into_iter()
                .map(|n| (n["id"].as_str().unwrap_or_default().to_string(), n))
                .collect(),
        )
    };
    json_response(StatusCode::OK, &body, p.has("pretty"))
}

async fn get_leader(State(node): State<Arc<Node>>) -> Response {
    match raft::cluster::leader(&node.raft) {
        Some(m) => json_response(StatusCode::OK, &node_json(&node, &m, Some(m.id), true), false),
        None => unavailable("leader not found"),
    }
}

/// `GET /readyz`, as rqlite's `handleReadyz`: a plain-text check list, 200 when every check
/// passes, else 503 at the first that fails.
///
/// * `[+]node ok`: the node answers HTTP. With `?noleader`, that is the whole answer.
/// * `[+]leader ok`: a leader is known (`leader does not exist` otherwise) and reachable: this
///   node leads, or heard from the leader within the election timeout plus
///   [`LEADER_SILENCE`] (`leader not contactable` otherwise).
/// * `[+]store ok`: Raft runs (`store not ready` once it stopped on a fatal error).
/// * `[+]sync ok`, with `?sync` only: this node has applied what the leader had committed when
///   it last heard from it (the leader: its own commit index), within `timeout` (30 s).
/// * `[+]db ok`: the database answers `SELECT 1` on a read connection within `timeout`.
async fn readyz(State(node): State<Arc<Node>>, Query(p): Query<Vec<(String, String)>>) -> Response {
    let p = Params(p);
    let not_ready = |text: String| (StatusCode::SERVICE_UNAVAILABLE, text).into_response();
    if p.has("noleader") {
        return (StatusCode::OK, "[+]node ok").into_response();
    }
    let timeout = match p.duration("timeout") {
        Ok(t) => t.unwrap_or(FORWARD_TIMEOUT),
        Err(r) => return r,
    };
    let s = raft::cluster::state(&node.raft);
    if let Err(why) = leader_reachable(&node, &s) {
        return not_ready(format!("[+]node ok\n[+]{why}"));
    }
    let leading = raft::client::leader_term(&node.raft).is_ok();
    let contact = node.contact.last();
    if let Some(reason) = &s.stopped {
        return not_ready(format!("[+]node ok\n[+]leader ok\n[+]store not ready: {reason}"));
    }
    let mut text = String::from("[+]node ok\n[+]leader ok\n[+]store ok");
    if p.has("sync") {
        let target = if leading { s.commit_index } else { contact.map_or(0, |(_, c)| c) }.max(1);
        let mut applied = node.applied.clone();
        if tokio::time::timeout(timeout, applied.wait_for(|a| *a >= target)).await.is_err() {
            return not_ready(format!(
                "{text}\n[+]sync timeout waiting for applied index {target} (applied {})",
                node.applied()
            ));
        }
        text.push_str("\n[+]sync ok");
    }
    let readers = node.readers.clone();
    let probe = tokio::task::spawn_blocking(move || {
        readers.query_within(&[sql::Statement::new("SELECT 1")], false, Some(timeout))
    });
    let answer = match tokio::time::timeout(timeout, probe).await {
        Ok(Ok(Ok(results))) => match results.as_slice() {
            [sql::StatementResult::Rows { values, .. }] if values == &[vec![json!(1)]] => Ok(()),
            other => Err(format!("{other:?}")),
        },
        Ok(Ok(Err(e))) => Err(e.to_string()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {:.3}s", timeout.as_secs_f64())),
    };
    match answer {
        Ok(()) => {
            text.push_str("\n[+]db ok");
            (StatusCode::OK, text).into_response()
        }
        Err(why) => not_ready(format!("{text}\n[+]db not ok: {why}")),
    }
}

/// Whether this node has a leader it can reach: it leads, or it heard from the leader within the
/// election timeout plus [`LEADER_SILENCE`]. `Err` says why not, in `/readyz`'s words.
pub(crate) fn leader_reachable(node: &Node, s: &raft::cluster::State) -> Result<(), String> {
    let Some(leader) = s.leader_id else {
        return Err("leader does not exist".into());
    };
    if leader == node.id && raft::client::leader_term(&node.raft).is_ok() {
        return Ok(());
    }
    match node.contact.last() {
        None => Err(format!("leader not contactable: node {leader} has not been heard from")),
        Some((at, _)) if at.elapsed() > node.settings.election_timeout + LEADER_SILENCE => {
            Err(format!(
                "leader not contactable: last heard from node {leader} {:.3}s ago",
                at.elapsed().as_secs_f64()
            ))
        }
        Some(_) => Ok(()),
    }
}

/// A starting node's request to be added to the cluster.
#[derive(serde::Deserialize)]
struct JoinRequest {
    /// Its node id.
    id: raft::NodeId,
    /// Its Raft address.
    raft_addr: String,
    /// Its HTTP address.
    http_addr: String,
    /// Voter (default) or learner.
    #[serde(default = "yes")]
    voter: bool,
}

fn yes() -> bool {
    true
}

async fn join(
    State(node): State<Arc<Node>>,
    Query(p): Query<Vec<(String, String)>>,
    req: Incoming,
) -> Response {
    let p = Params(p);
    if let Some(r) = to_leader(&node, &p, &req).await {
        return r;
    }
    let req: JoinRequest = match serde_json::from_slice(&req.body) {
        Ok(r) => r,
        Err(e) => return bad_request(format!("invalid join request: {e}")),
    };
    if req.id == 0 {
        return bad_request("node id must be positive");
    }
    // Under mutual TLS, the node at raft_addr must prove it is node `id` of this cluster.
    if let Err(e) = node.peers.verify_node(req.id, &req.raft_addr).await {
        tracing::warn!(target: "keel::audit", id = req.id, raft_addr = %req.raft_addr, error = %e, "refused a join");
        return error_response(StatusCode::FORBIDDEN, &e);
    }
    let target = raft::MemberAddr { raft_addr: req.raft_addr, http_addr: req.http_addr };
    let _one_at_a_time = node.membership.lock().await;
    tracing::info!(id = req.id, node = %target, voter = req.voter, "adding node");
    match raft::cluster::add_node(&node.raft, req.id, target, req.voter, Duration::from_secs(60))
        .await
    {
        Ok(()) => json_response(StatusCode::OK, &json!({}), false),
        Err(e) => write_error(e.into()),
    }
}
