//! The async client: one handle to a cluster, given by the URLs of some of its nodes.
//!
//! # How a call flows
//!
//! Every call is an [`Attempt`] sent by [`Client::send`] in a loop until it has a final
//! answer or the retry deadline ([`ClientBuilder::retry_for`]) passes:
//!
//! 1. Pick the node. Calls that need the leader (writes, `level=weak`/`strong` reads, loads,
//!    membership changes) go to the leader the client remembers, or, when it knows none, ask
//!    the nodes in turn for one (`GET /leader`) and remember the answer. Other calls go to the
//!    node in use (the first URL, until it fails). A client made with [`Client::on`] always
//!    sends to its one node (which forwards to the leader itself).
//! 2. Send, then decide with [`next`]: a final answer ends the call; a redirect (301/307)
//!    names the leader, which is remembered and tried at once; a 503 that wrote nothing
//!    (`leader not found`, `leadership changed`, no quorum) forgets the leader and tries again
//!    after a pause (the server's `Retry-After`, at most [`MAX_PAUSE`], growing from
//!    [`FIRST_PAUSE`]); a node that does not answer is left for the next one.
//! 3. An unknown outcome (a 503 that says the write may or may not have been committed, a
//!    timeout or a reset after sending) is retried only when repeating is safe: a read, or a
//!    write with a `request_id`. Keel answers a retried request id with the first outcome, so
//!    a write is never applied twice. Writes get a fresh request id each unless
//!    [`ClientBuilder::request_ids`] turns that off, or the caller gives one.
//!
//! The client learns the other members from `/nodes` when it finds the leader (and from every
//! [`Client::nodes`] answer), so it can fail over to nodes it was not given. A caller that
//! wants to know when a node stops answering (to say so, or to log it) registers
//! [`ClientBuilder::on_unanswered`].
//!
//! Timeouts: [`ClientBuilder::timeout`] bounds each attempt of an ordinary call, answer body
//! included. Calls whose bodies stream (a backup, a load, the change stream) have no total
//! timeout, since a big backup or a stream that follows the log for hours is not late;
//! [`ChangeStream::next_event`] bounds the silence between events instead.
//!
//! # What it does not do
//!
//! * It never retries a write without a request id whose outcome is unknown: it returns
//!   [`Error::OutcomeUnknown`].
//! * It does not stream bodies twice: a load is sent once, to the leader.

mod call;
mod next;
mod stream;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reqwest::{Method, StatusCode, Url};

pub use self::call::{Call, Readiness};
use self::next::Next;
pub use self::stream::{ChangeStream, Download};
use crate::cluster::{NodeInfo, NodeList};
use crate::error::{Error, Result};
use crate::failure::ErrorAnswer;

/// The first pause before a retry.
pub const FIRST_PAUSE: Duration = Duration::from_millis(50);
/// The longest pause between retries, whatever `Retry-After` says.
pub const MAX_PAUSE: Duration = Duration::from_secs(1);
/// How long finding the leader may take per node asked.
const LEADER_PROBE: Duration = Duration::from_secs(2);

/// Builds a [`Client`]: node URLs, TLS, credentials, timeouts.
#[derive(Debug)]
pub struct ClientBuilder {
    /// The node URLs given.
    urls: Vec<String>,
    /// The HTTP client to start from.
    http: Option<reqwest::ClientBuilder>,
    /// PEM CA certificates to trust.
    ca: Vec<Vec<u8>>,
    /// Basic-auth user and password.
    auth: Option<Credentials>,
    /// Per-attempt timeout.
    timeout: Duration,
    /// Connection timeout.
    connect_timeout: Duration,
    /// How long a call keeps retrying.
    retry_for: Duration,
    /// Whether writes get a generated request id.
    request_ids: bool,
    /// Told of every node that does not answer.
    on_unanswered: Option<Observer>,
}

/// What [`ClientBuilder::on_unanswered`] registers: told a node's base URL and why.
type Notify = dyn Fn(&str, &str) + Send + Sync;

/// A function told of each node that did not answer: its base URL, and why in a few words.
#[derive(Clone)]
struct Observer(Arc<Notify>);

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Observer")
    }
}

impl ClientBuilder {
    /// Starts from a reqwest client builder of the caller's (proxies, client certificates,
    /// root certificates). Redirects are turned off on it: the client follows them itself,
    /// keeping the method and body, and learns the leader from them.
    pub fn http(mut self, builder: reqwest::ClientBuilder) -> Self {
        self.http = Some(builder);
        self
    }

    /// Trusts a CA certificate (PEM; a bundle is fine) for `https://` URLs.
    pub fn ca_certificate_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca.push(pem.into());
        self
    }

    /// Sends HTTP basic authentication with every request (Keel's `--auth`). Credentials in
    /// the first URL (`http://user:password@host:port`) are used when this is not called.
    pub fn basic_auth(mut self, user: impl Into<String>, password: Option<String>) -> Self {
        self.auth = Some((user.into(), password));
        self
    }

    /// How long one attempt may take before it counts as unanswered and the next node is
    /// tried (default 30 s: Keel's own forwarding waits up to that long). Streaming calls
    /// (backup, load, change stream) are not bounded by it: see the module docs.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How long connecting to a node may take before the next is tried (default 3 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long a call goes on retrying (other nodes, a new leader) before it gives up
    /// (default 10 s; zero: one attempt).
    pub fn retry_for(mut self, deadline: Duration) -> Self {
        self.retry_for = deadline;
        self
    }

    /// Whether writes without a request id get a generated one, so that an unknown outcome
    /// can be retried safely (default: yes).
    pub fn request_ids(mut self, on: bool) -> Self {
        self.request_ids = on;
        self
    }

    /// Calls `observer` with a node's base URL and the reason in a few words (`Connection
    /// refused`, `timed out`) each time a call's attempt gets no answer from it, before the
    /// client moves on. For a tool that says when it leaves a node, or a log.
    pub fn on_unanswered(mut self, observer: impl Fn(&str, &str) + Send + Sync + 'static) -> Self {
        self.on_unanswered = Some(Observer(Arc::new(observer)));
        self
    }

    /// Builds the client. Errors: no URL, a URL that is not `http(s)://host[:port]`, a
    /// certificate that cannot be read.
    pub fn build(self) -> Result<Client> {
        let mut auth = self.auth;
        let mut nodes = Vec::new();
        for url in &self.urls {
            let (base, credentials) = base_url(url)?;
            if auth.is_none() {
                auth = credentials;
            }
            if !nodes.contains(&base) {
                nodes.push(base);
            }
        }
        if nodes.is_empty() {
            return Err(Error::Config("no node URL given".into()));
        }
        let mut http = self.http.unwrap_or_else(|| reqwest::Client::builder().no_proxy());
        for pem in &self.ca {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| Error::Config(format!("CA certificate: {e}")))?;
            for cert in certs {
                http = http.add_root_certificate(cert);
            }
        }
        // No client-wide total timeout: it would also end streaming bodies (see the module
        // docs); ordinary attempts get `timeout` one by one.
        http =
            http.redirect(reqwest::redirect::Policy::none()).connect_timeout(self.connect_timeout);
        let http = http.build().map_err(|e| Error::Config(format!("HTTP client: {e}")))?;
        Ok(Client {
            shared: Arc::new(Shared {
                http,
                auth,
                timeout: self.timeout,
                retry_for: self.retry_for,
                request_ids: self.request_ids,
                on_unanswered: self.on_unanswered,
            }),
            state: Arc::new(Mutex::new(State { nodes, current: 0, leader: None })),
            pinned: false,
        })
    }
}

/// A Keel cluster, reached through the nodes it was given and the members it learns.
///
/// Cheap to clone; clones share the connection pool and what is known of the cluster.
///
/// ```no_run
/// # async fn demo() -> Result<(), keel_api::Error> {
/// use keel_api::{Client, Durability, Level, Statement};
///
/// let client = Client::builder(["http://127.0.0.1:4001", "http://127.0.0.1:4003"]).build()?;
/// client.execute(["CREATE TABLE IF NOT EXISTS people (id INTEGER PRIMARY KEY, name TEXT)"]).await?;
/// let written = client
///     .write([Statement::new("INSERT INTO people(name) VALUES(?)").bind("fiona")])
///     .durability(Durability::Sync)
///     .send()
///     .await?;
/// // Read it back on any node, once that node has applied the write.
/// let read = client
///     .read(["SELECT name FROM people"])
///     .level(Level::None)
///     .min_lsn(written.lsn.unwrap_or(0))
///     .send()
///     .await?;
/// println!("{:?}", read.results[0].values());
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Client {
    /// What never changes.
    shared: Arc<Shared>,
    /// What the client knows of the cluster.
    state: Arc<Mutex<State>>,
    /// Sends to its one node only (see [`Client::on`]).
    pinned: bool,
}

/// The parts of a client that never change.
#[derive(Debug)]
struct Shared {
    /// The HTTP client (connection pool, TLS, timeouts; redirects off).
    http: reqwest::Client,
    /// Basic-auth credentials.
    auth: Option<Credentials>,
    /// Per-attempt timeout of calls that do not stream.
    timeout: Duration,
    /// How long a call retries.
    retry_for: Duration,
    /// Whether writes get a generated request id.
    request_ids: bool,
    /// Told of every node that does not answer.
    on_unanswered: Option<Observer>,
}

/// What a client knows of the cluster.
///
/// Invariants: `nodes` is not empty; `current < nodes.len()`.
#[derive(Debug)]
struct State {
    /// Base URLs (`http://host:port`) of the nodes known, the given ones first.
    nodes: Vec<String>,
    /// The node in use for calls that do not need the leader.
    current: usize,
    /// The leader's base URL, when known.
    leader: Option<String>,
}

/// Which node an attempt goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    /// The leader.
    Leader,
    /// The node in use.
    Any,
}

/// One request as the client sends it (again, if need be).
#[derive(Debug)]
pub(crate) struct Attempt {
    /// The method.
    pub(crate) method: Method,
    /// The path, such as `/db/execute`.
    pub(crate) path: String,
    /// Query parameters; `None` values are flags (`?transaction`).
    pub(crate) query: Vec<(String, Option<String>)>,
    /// A JSON body.
    pub(crate) body: Option<Vec<u8>>,
    /// Where it goes.
    pub(crate) target: Target,
    /// Whether sending it twice is safe (a read, or a write with a request id).
    pub(crate) safe: bool,
}

/// An answer, read whole.
#[derive(Debug)]
pub(crate) struct Reply {
    /// The URL that answered.
    pub(crate) url: String,
    /// The status.
    pub(crate) status: StatusCode,
    /// `X-RQLITE-SERVED-BY`.
    pub(crate) served_by: Option<String>,
    /// The body.
    pub(crate) body: Vec<u8>,
}

impl Client {
    /// A builder for a client of the nodes at `urls` (`http://host:port`; `http://` is added
    /// when there is no scheme).
    pub fn builder<I, S>(urls: I) -> ClientBuilder
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        ClientBuilder {
            urls: urls.into_iter().map(|u| u.as_ref().to_string()).collect(),
            http: None,
            ca: Vec::new(),
            auth: None,
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(3),
            retry_for: Duration::from_secs(10),
            request_ids: true,
            on_unanswered: None,
        }
    }

    /// A client of the nodes at `urls` with the default settings.
    pub fn new<I, S>(urls: I) -> Result<Client>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Client::builder(urls).build()
    }

    /// A client that sends everything to the node at `url` and nowhere else, sharing this
    /// one's connections and settings: for a node's own `/status`, a `level=none` read of its
    /// copy, or its readiness. That node forwards what needs the leader. Errors: a bad URL.
    pub fn on(&self, url: &str) -> Result<Client> {
        let (base, _) = base_url(url)?;
        Ok(Client {
            shared: self.shared.clone(),
            state: Arc::new(Mutex::new(State { nodes: vec![base], current: 0, leader: None })),
            pinned: true,
        })
    }

    /// The base URLs of the nodes known, the node in use first.
    pub fn nodes_known(&self) -> Vec<String> {
        let state = self.state();
        let n = state.nodes.len();
        (0..n).map(|k| state.nodes[(state.current + k) % n].clone()).collect()
    }

    /// The leader's base URL, if the client knows it.
    pub fn leader_known(&self) -> Option<String> {
        self.state().leader.clone()
    }

    /// Finds the leader now: asks the nodes in turn (`GET /leader`), remembers the answer and
    /// learns the members. Returns the leader's base URL. Errors: no node knows a leader.
    pub async fn find_leader(&self) -> Result<String> {
        let mut why = Vec::new();
        for base in self.nodes_known() {
            match self.probe_leader(&base).await {
                Ok(info) => {
                    let (leader, _) = base_url(&info.api_addr)?;
                    self.state().leader = Some(leader.clone());
                    self.learn_from(&leader).await;
                    return Ok(leader);
                }
                Err(e) => why.push(format!("{base}: {e}")),
            }
        }
        Err(Error::Unreachable(format!("no node named a leader ({})", why.join("; "))))
    }

    /// Asks one node for the leader.
    async fn probe_leader(&self, base: &str) -> Result<NodeInfo> {
        let request =
            self.http_request(Method::GET, &format!("{base}/leader")).timeout(LEADER_PROBE);
        let answered = self.perform(request).await.map_err(|(_, e)| Error::Unreachable(e))?;
        answered.reply.json()
    }

    /// Learns the members from `base`'s `/nodes`; failures are left to later calls.
    async fn learn_from(&self, base: &str) {
        let url = format!("{base}/nodes?nonvoters&ver=2");
        let request = self.http_request(Method::GET, &url).timeout(LEADER_PROBE);
        let Ok(answered) = self.perform(request).await else { return };
        if let Ok(list) = answered.reply.json::<NodeList>() {
            self.learn(&list.nodes);
        }
    }

    /// Adds the members of `nodes` that the client does not know yet.
    pub(crate) fn learn(&self, nodes: &[NodeInfo]) {
        let mut state = self.state();
        for node in nodes {
            if let Ok((url, _)) = base_url(&node.api_addr)
                && !state.nodes.contains(&url)
            {
                state.nodes.push(url);
            }
        }
    }

    /// Sends `attempt` until it has a final answer: see the module docs.
    pub(crate) async fn send(&self, attempt: &Attempt) -> Result<Reply> {
        let started = Instant::now();
        let mut pause = FIRST_PAUSE;
        let mut redirect: Option<String> = None;
        let mut failures: Vec<String> = Vec::new();
        loop {
            let base = match redirect.take() {
                Some(base) => base,
                None => self.pick(attempt.target).await,
            };
            let request = self.build(&base, attempt)?;
            let (next, outcome) = match self.perform(request).await {
                Ok(reply) => {
                    let location = reply.location.as_deref();
                    let next = next::after_answer(
                        reply.reply.status.as_u16(),
                        &reply.reply.body,
                        location,
                        reply.retry_after,
                    );
                    (next, Ok(reply.reply))
                }
                Err((connect, why)) => {
                    self.unanswered(&base);
                    if let Some(Observer(observer)) = &self.shared.on_unanswered {
                        observer(&base, &why);
                    }
                    failures.push(format!("{base}: {why}"));
                    (next::after_failure(connect), Err(why))
                }
            };
            let out_of_time = started.elapsed() >= self.shared.retry_for;
            let wait = match next {
                Next::Done => return outcome.map_err(Error::Unreachable).and_then(Reply::checked),
                Next::Redirect(leader) if !out_of_time && !self.pinned => {
                    self.state().leader = Some(leader.clone());
                    redirect = Some(leader);
                    continue;
                }
                Next::Redirect(_) => {
                    return outcome.map_err(Error::Unreachable).and_then(Reply::checked);
                }
                Next::Retry { pause: asked } => asked,
                Next::RetryIfSafe { pause: asked } if attempt.safe => asked,
                Next::RetryIfSafe { .. } => {
                    return Err(match outcome {
                        Ok(reply) => Error::OutcomeUnknown(reply.error_answer().error),
                        Err(why) => Error::OutcomeUnknown(why),
                    });
                }
            };
            if out_of_time {
                return match outcome {
                    Ok(reply) => reply.checked(),
                    Err(_) => Err(Error::Unreachable(failures.join("; "))),
                };
            }
            self.state().leader = None;
            let wait = wait.map_or(pause, |w| w.min(pause.max(FIRST_PAUSE)));
            tokio::time::sleep(wait.min(MAX_PAUSE)).await;
            pause = (pause * 2).min(MAX_PAUSE);
        }
    }

    /// The node for the next attempt at `target`.
    async fn pick(&self, target: Target) -> String {
        if target == Target::Leader && !self.pinned {
            if let Some(leader) = self.leader_known() {
                return leader;
            }
            if let Ok(leader) = self.find_leader().await {
                return leader;
            }
        }
        let state = self.state();
        state.nodes[state.current].clone()
    }

    /// Moves on from a node that did not answer.
    fn unanswered(&self, base: &str) {
        let mut state = self.state();
        if state.leader.as_deref() == Some(base) {
            state.leader = None;
        }
        if state.nodes[state.current] == base {
            state.current = (state.current + 1) % state.nodes.len();
        }
    }

    /// The request for `attempt` at `base`.
    fn build(&self, base: &str, attempt: &Attempt) -> Result<reqwest::RequestBuilder> {
        let mut url = Url::parse(&format!("{base}{}", attempt.path))
            .map_err(|e| Error::Config(format!("{base}{}: {e}", attempt.path)))?;
        if !attempt.query.is_empty() {
            let mut pairs = url.query_pairs_mut();
            for (key, value) in &attempt.query {
                match value {
                    Some(v) => pairs.append_pair(key, v),
                    None => pairs.append_key_only(key),
                };
            }
        }
        let mut request =
            self.http_request(attempt.method.clone(), url.as_str()).timeout(self.shared.timeout);
        if let Some(body) = &attempt.body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.clone());
        }
        Ok(request)
    }

    /// A request with the client's credentials.
    pub(crate) fn http_request(&self, method: Method, url: &str) -> reqwest::RequestBuilder {
        let request = self.shared.http.request(method, url);
        match &self.shared.auth {
            Some((user, password)) => request.basic_auth(user, password.as_deref()),
            None => request,
        }
    }

    /// Sends one request and reads the whole answer. `Err((connect, why))`: no answer, and
    /// whether it failed while connecting (so nothing was sent).
    async fn perform(
        &self,
        request: reqwest::RequestBuilder,
    ) -> std::result::Result<Answered, (bool, String)> {
        let response = request.send().await.map_err(|e| (e.is_connect(), describe(&e)))?;
        let header = |name: &str| {
            response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
        };
        let location = header(reqwest::header::LOCATION.as_str());
        let retry_after = header(reqwest::header::RETRY_AFTER.as_str())
            .and_then(|v| v.trim().parse().ok())
            .map(Duration::from_secs);
        let served_by = header(crate::headers::SERVED_BY);
        let status = response.status();
        let url = response.url().to_string();
        let body = response.bytes().await.map_err(|e| (false, describe(&e)))?.to_vec();
        Ok(Answered { reply: Reply { url, status, served_by, body }, location, retry_after })
    }

    /// A fresh request id for a write: unique across clients and processes in practice.
    pub(crate) fn request_id(&self) -> Option<String> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        if !self.shared.request_ids {
            return None;
        }
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        Some(format!("keel-api-{:x}-{nanos:x}-{n}", std::process::id()))
    }

    /// The state, even if a thread panicked holding it (it stays consistent: every update is
    /// one assignment).
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// An answer with the headers [`Client::send`] decides on.
struct Answered {
    /// The answer.
    reply: Reply,
    /// `Location`.
    location: Option<String>,
    /// `Retry-After`.
    retry_after: Option<Duration>,
}

impl Reply {
    /// The body as `T`, if the answer is a success.
    pub(crate) fn json<T: serde::de::DeserializeOwned>(self) -> Result<T> {
        let reply = self.checked()?;
        serde_json::from_slice(&reply.body).map_err(|e| Error::Unexpected {
            url: reply.url.clone(),
            message: format!("{e}: {}", String::from_utf8_lossy(&reply.body)),
        })
    }

    /// `Ok` for a success, else the refusal it carries.
    pub(crate) fn checked(self) -> Result<Reply> {
        if self.status.is_success() {
            return Ok(self);
        }
        Err(Error::Refused { status: self.status.as_u16(), answer: Box::new(self.error_answer()) })
    }

    /// The error the body carries: Keel's JSON, or the text itself.
    fn error_answer(&self) -> ErrorAnswer {
        serde_json::from_slice(&self.body).unwrap_or_else(|_| {
            let text = String::from_utf8_lossy(&self.body).trim().to_string();
            ErrorAnswer::new(if text.is_empty() { format!("HTTP {}", self.status) } else { text })
        })
    }
}

/// A user name and its password, if any.
pub type Credentials = (String, Option<String>);

/// A node URL as the client keeps it, `scheme://host:port` without credentials or a trailing
/// `/`, and the credentials it carried.
pub fn base_url(url: &str) -> Result<(String, Option<Credentials>)> {
    let url = url.trim().trim_end_matches('/');
    let with_scheme = if url.contains("://") { url.to_string() } else { format!("http://{url}") };
    let mut parsed = Url::parse(&with_scheme).map_err(|e| {
        Error::Config(format!("'{url}' is not a node URL ({e}); try http://127.0.0.1:4001"))
    })?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
        return Err(Error::Config(format!(
            "'{url}' is not a node URL: use http://HOST:PORT or https://HOST:PORT"
        )));
    }
    let user = parsed.username().to_string();
    let credentials = (!user.is_empty()).then(|| (user, parsed.password().map(str::to_string)));
    let _ = parsed.set_username("");
    let _ = parsed.set_password(None);
    Ok((parsed.as_str().trim_end_matches('/').to_string(), credentials))
}

/// Why a request failed, in a few words: the innermost cause ("Connection refused"), not
/// reqwest's "error sending request for url …".
pub fn describe(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        return "timed out".to_string();
    }
    let mut cause: &dyn std::error::Error = error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    let text = cause.to_string();
    match text.find(" (os error") {
        Some(at) => text[..at].to_string(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_normalised_and_credentials_taken_off() {
        assert_eq!(base_url("127.0.0.1:4001/").unwrap(), ("http://127.0.0.1:4001".into(), None));
        assert_eq!(
            base_url("https://ann:pw@h:1").unwrap(),
            ("https://h:1".into(), Some(("ann".into(), Some("pw".into()))))
        );
        for bad in ["http://[bad", "ftp://x", "a b", ""] {
            assert!(base_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_client_needs_a_node() {
        assert!(matches!(Client::new(Vec::<String>::new()), Err(Error::Config(_))));
        let c = Client::new(["localhost:4001", "http://localhost:4001/", "h:2"]).unwrap();
        assert_eq!(c.nodes_known(), ["http://localhost:4001", "http://h:2"]);
    }

    #[test]
    fn request_ids_are_fresh_unless_turned_off() {
        let c = Client::new(["h:1"]).unwrap();
        assert_ne!(c.request_id(), c.request_id());
        let off = Client::builder(["h:1"]).request_ids(false).build().unwrap();
        assert_eq!(off.request_id(), None);
    }
}
