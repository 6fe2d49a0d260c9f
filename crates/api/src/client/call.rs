//! The client's calls, one method per endpoint, and [`Call`], the builder of database calls
//! with their query parameters.

use std::time::Duration;

use reqwest::Method;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Attempt, Client, Reply, Target};
use crate::Lsn;
use crate::cluster::{
    Action, JoinRequest, Joined, LeaderChanged, MembershipChange, MembershipChanged, NodeInfo,
    NodeList, NodeRef, Removed,
};
use crate::db::{Answer, Durability, Level, Statement};
use crate::error::{Error, Result};
use crate::queue::{Lookup, Queued, Seq};
use crate::status::Status;

/// The endpoint of a database call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Endpoint {
    /// `/db/execute`.
    Execute,
    /// `/db/query`.
    Query,
    /// `/db/request`.
    Request,
}

/// A database call being built: statements, then parameters, then [`Call::send`].
///
/// ```no_run
/// # async fn demo(client: keel_api::Client) -> Result<(), keel_api::Error> {
/// use std::time::Duration;
/// use keel_api::Level;
///
/// let answer = client
///     .read(["SELECT count(*) FROM people"])
///     .level(Level::None)
///     .freshness(Duration::from_secs(1))
///     .send()
///     .await?;
/// # Ok(())
/// # }
/// ```
#[must_use = "a call does nothing until it is sent"]
#[derive(Debug)]
pub struct Call<'a> {
    /// The client that sends it.
    client: &'a Client,
    /// The endpoint.
    endpoint: Endpoint,
    /// The statements.
    statements: Vec<Statement>,
    /// Query parameters; `None` values are flags.
    query: Vec<(String, Option<String>)>,
    /// The read level, for reads (`None`: the server's default, `weak`).
    level: Option<Level>,
    /// The request id, for writes.
    request_id: Option<String>,
}

impl<'a> Call<'a> {
    /// A flag parameter.
    fn flag(mut self, name: &str) -> Self {
        self.query.push((name.to_string(), None));
        self
    }

    /// A parameter with a value.
    fn param(mut self, name: &str, value: impl ToString) -> Self {
        self.query.push((name.to_string(), Some(value.to_string())));
        self
    }

    /// `?transaction`: all statements or none.
    pub fn transaction(self) -> Self {
        self.flag("transaction")
    }

    /// `?associative`: rows as objects keyed by column name.
    pub fn associative(self) -> Self {
        self.flag("associative")
    }

    /// `?timings`: each statement's time and the request's.
    pub fn timings(self) -> Self {
        self.flag("timings")
    }

    /// `?blob_array`: BLOBs as arrays of bytes instead of base64.
    pub fn blob_array(self) -> Self {
        self.flag("blob_array")
    }

    /// `?raft_index`: adds `raft_index` (equal to `lsn`) to the answer.
    pub fn raft_index(self) -> Self {
        self.flag("raft_index")
    }

    /// `?db_timeout=`: interrupt a statement that runs longer.
    pub fn db_timeout(self, timeout: Duration) -> Self {
        self.param("db_timeout", go_duration(timeout))
    }

    /// `?timeout=`: how long the server may wait (forwarding, `min_lsn`, read index).
    pub fn timeout(self, timeout: Duration) -> Self {
        self.param("timeout", go_duration(timeout))
    }

    /// `?level=` of a read (default `weak`). `weak` and `strong` go to the leader; the others
    /// to the node in use.
    pub fn level(mut self, level: Level) -> Self {
        self.level = Some(level);
        self
    }

    /// `?freshness=`: with `level=none`, refuse the read unless the node heard from a leader
    /// this recently.
    pub fn freshness(self, freshness: Duration) -> Self {
        self.param("freshness", go_duration(freshness))
    }

    /// `?freshness_strict`: also require the node to have applied what that leader committed.
    pub fn freshness_strict(self) -> Self {
        self.flag("freshness_strict")
    }

    /// `?min_lsn=`: wait until the node has applied this position before reading.
    pub fn min_lsn(self, lsn: Lsn) -> Self {
        self.param("min_lsn", lsn)
    }

    /// `?durability=` of a write.
    pub fn durability(self, durability: Durability) -> Self {
        self.param("durability", durability)
    }

    /// `?request_id=`: the write's idempotency key (else the client makes one up, see
    /// [`ClientBuilder::request_ids`](super::ClientBuilder::request_ids)).
    pub fn request_id(mut self, id: impl Into<String>) -> Self {
        self.request_id = Some(id.into());
        self
    }

    /// Any other query parameter, as given (`None`: a flag).
    pub fn raw_param(mut self, name: &str, value: Option<&str>) -> Self {
        self.query.push((name.to_string(), value.map(str::to_string)));
        self
    }

    /// Sends the call and reads the answer. A 200 answer may still hold per-statement
    /// errors: see [`Answer::first_error`].
    pub async fn send(self) -> Result<Answer> {
        let (client, attempt) = self.into_attempt()?;
        let reply = client.send(&attempt).await?;
        let served_by = reply.served_by.clone();
        let mut answer: Answer = reply.json()?;
        answer.served_by = served_by;
        Ok(answer)
    }

    /// The attempt this call sends.
    fn into_attempt(self) -> Result<(&'a Client, Attempt)> {
        let reads = self.endpoint == Endpoint::Query;
        let mut query = self.query;
        let mut safe = reads;
        if let Some(level) = self.level.filter(|_| self.endpoint != Endpoint::Execute) {
            query.push(("level".into(), Some(level.as_str().into())));
        }
        if self.endpoint != Endpoint::Query
            && let Some(id) = self.request_id.or_else(|| self.client.request_id())
        {
            query.push(("request_id".into(), Some(id)));
            safe = true;
        }
        let target = match (self.endpoint, self.level.unwrap_or_default()) {
            (Endpoint::Execute, _) => Target::Leader,
            (_, Level::None | Level::Linearizable | Level::Auto) => Target::Any,
            _ => Target::Leader,
        };
        let path = match self.endpoint {
            Endpoint::Execute => "/db/execute",
            Endpoint::Query => "/db/query",
            Endpoint::Request => "/db/request",
        };
        let body = json_body(&self.statements)?;
        let attempt = Attempt {
            method: Method::POST,
            path: path.into(),
            query,
            body: Some(body),
            target,
            safe,
        };
        Ok((self.client, attempt))
    }
}

/// `/readyz`'s answer: 200 or 503, and rqlite's check list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Readiness {
    /// Whether every check passed (200).
    pub ready: bool,
    /// The check list, `[+]node ok` and so on.
    pub text: String,
}

impl Client {
    /// A call to `/db/execute` (writes, on the leader).
    pub fn write<S: Into<Statement>>(&self, statements: impl IntoIterator<Item = S>) -> Call<'_> {
        self.call(Endpoint::Execute, statements)
    }

    /// A call to `/db/query` (reads, by level).
    pub fn read<S: Into<Statement>>(&self, statements: impl IntoIterator<Item = S>) -> Call<'_> {
        self.call(Endpoint::Query, statements)
    }

    /// A call to `/db/request`: reads and writes in one request; the server decides which it
    /// is. Safe to repeat only with a request id (one is made up unless turned off).
    pub fn unified<S: Into<Statement>>(&self, statements: impl IntoIterator<Item = S>) -> Call<'_> {
        self.call(Endpoint::Request, statements)
    }

    /// A call of `endpoint`.
    fn call<S: Into<Statement>>(
        &self,
        endpoint: Endpoint,
        statements: impl IntoIterator<Item = S>,
    ) -> Call<'_> {
        Call {
            client: self,
            endpoint,
            statements: statements.into_iter().map(Into::into).collect(),
            query: Vec::new(),
            level: None,
            request_id: None,
        }
    }

    /// Runs writes with the default parameters: `write(statements).send()`.
    pub async fn execute<S: Into<Statement>>(
        &self,
        statements: impl IntoIterator<Item = S>,
    ) -> Result<Answer> {
        self.write(statements).send().await
    }

    /// Runs reads at the default level (`weak`, on the leader): `read(statements).send()`.
    pub async fn query<S: Into<Statement>>(
        &self,
        statements: impl IntoIterator<Item = S>,
    ) -> Result<Answer> {
        self.read(statements).send().await
    }

    /// Runs reads and writes together: `unified(statements).send()`.
    pub async fn request<S: Into<Statement>>(
        &self,
        statements: impl IntoIterator<Item = S>,
    ) -> Result<Answer> {
        self.unified(statements).send().await
    }

    /// Queues writes on the node in use (`/db/execute?queue`), with `wait` for their batch
    /// to be flushed. Not retried: a repeat would queue them twice.
    pub async fn enqueue<S: Into<Statement>>(
        &self,
        statements: impl IntoIterator<Item = S>,
        wait: bool,
    ) -> Result<Queued> {
        let statements: Vec<Statement> = statements.into_iter().map(Into::into).collect();
        let mut query = vec![("queue".to_string(), None)];
        if wait {
            query.push(("wait".to_string(), None));
        }
        let body = Some(json_body(&statements)?);
        let attempt = Attempt {
            method: Method::POST,
            path: "/db/execute".into(),
            query,
            body,
            target: Target::Any,
            safe: false,
        };
        self.send(&attempt).await?.json()
    }

    /// How a queued write of the node in use ended (`GET /db/queue/{n}`).
    pub async fn queued(&self, sequence_number: Seq) -> Result<Lookup> {
        self.get(&format!("/db/queue/{sequence_number}"), Target::Any).await
    }

    /// The node in use's `/status`.
    pub async fn status(&self) -> Result<Status> {
        self.get("/status", Target::Any).await
    }

    /// The members, voters and learners, as the node in use sees them (`/nodes?nonvoters&ver=2`;
    /// on the leader with replication progress). The client learns the ones it did not know,
    /// to fail over to them.
    pub async fn nodes(&self) -> Result<Vec<NodeInfo>> {
        let nodes = self.get::<NodeList>("/nodes?nonvoters&ver=2", Target::Any).await?.nodes;
        self.learn(&nodes);
        Ok(nodes)
    }

    /// What became of the write that carried request id `id` (`GET /db/requests/{id}`, on the
    /// node in use): applied (with its original results) or not applied as of an lsn. A 410
    /// (the id's answer may have been pruned) is [`Error::Refused`] with `first_lsn`.
    /// `after_lsn`: an lsn this client had seen before sending the write, which lets the node
    /// answer for older ids.
    pub async fn request_outcome(
        &self,
        id: &str,
        after_lsn: Option<Lsn>,
    ) -> Result<crate::requests::RequestOutcome> {
        let mut path = format!("/db/requests/{}", crate::requests::path_segment(id));
        if let Some(after) = after_lsn {
            path.push_str(&format!("?after_lsn={after}"));
        }
        self.get(&path, Target::Any).await
    }

    /// The tables a table check covers on the node in use, read at log index `lsn`
    /// (`GET /db/checksum?lsn=N`; the first call pins `lsn` there). `wait` bounds how long the
    /// node waits to apply `lsn` (0: pin and answer at once, 503 if not applied yet).
    pub async fn checksum_tables(
        &self,
        lsn: Lsn,
        wait: Duration,
        release: bool,
    ) -> Result<crate::checksum::Tables> {
        let mut path = format!("/db/checksum?lsn={lsn}&timeout={}", go_duration(wait));
        if release {
            path.push_str("&release");
        }
        self.get(&path, Target::Any).await
    }

    /// One chunk of `table` on the node in use at log index `lsn`: up to `limit` rows after key
    /// `from` (hex, an earlier chunk's `last_key`), with each row's digest if `detail`.
    pub async fn checksum_chunk(
        &self,
        lsn: Lsn,
        table: &str,
        from: Option<&str>,
        limit: u64,
        detail: bool,
    ) -> Result<crate::checksum::Chunk> {
        let mut query = vec![
            ("lsn".to_string(), Some(lsn.to_string())),
            ("table".to_string(), Some(table.to_string())),
            ("limit".to_string(), Some(limit.to_string())),
        ];
        if let Some(from) = from {
            query.push(("from".to_string(), Some(from.to_string())));
        }
        if detail {
            query.push(("detail".to_string(), None));
        }
        self.here(Method::GET, "/db/checksum", query, None, true).await?.json()
    }

    /// Tells the node in use what a table check found (`POST /db/checksum/report`).
    pub async fn check_report(&self, report: &crate::checksum::CheckReport) -> Result<()> {
        let body = serde_json::to_vec(report).map_err(|e| Error::Config(e.to_string()))?;
        self.here(Method::POST, "/db/checksum/report", Vec::new(), Some(body), true).await?;
        Ok(())
    }

    /// The leader as the node in use knows it (`GET /leader`; a 503 when none is known).
    pub async fn leader(&self) -> Result<NodeInfo> {
        self.get("/leader", Target::Any).await
    }

    /// The node in use's `/readyz` (with `?noleader` if `noleader`, `?sync` if `sync`). Not
    /// ready is an answer, not an error; a node that does not answer is.
    pub async fn ready(&self, noleader: bool, sync: bool) -> Result<Readiness> {
        let mut query = Vec::new();
        if noleader {
            query.push(("noleader".to_string(), None));
        }
        if sync {
            query.push(("sync".to_string(), None));
        }
        let attempt = Attempt {
            method: Method::GET,
            path: "/readyz".into(),
            query,
            body: None,
            target: Target::Any,
            safe: true,
        };
        let reply = match self.send(&attempt).await {
            Ok(reply) => reply,
            Err(Error::Refused { status: 503, answer }) => {
                return Ok(Readiness { ready: false, text: answer.error });
            }
            Err(e) => return Err(e),
        };
        Ok(Readiness { ready: true, text: String::from_utf8_lossy(&reply.body).into_owned() })
    }

    /// Adds a node (`POST /join`): as a learner, promoted once caught up if `voter`.
    pub async fn join(&self, request: &JoinRequest) -> Result<Joined> {
        self.post("/join", request).await
    }

    /// Removes a member, voter or learner, running or dead (`DELETE /remove`). `id`: its
    /// number or its name.
    pub async fn remove(&self, id: impl std::fmt::Display) -> Result<Removed> {
        self.send_json(Method::DELETE, "/remove", &NodeRef::to(id)).await
    }

    /// Asks the node in use to rebuild: stop, delete its data, and rejoin through the members
    /// at `join` (`POST /admin/rebuild`). Remove it from the membership first
    /// ([`Client::remove`]); `keel admin rebuild` does both.
    pub async fn rebuild(&self, join: &[String]) -> Result<crate::cluster::Rebuilding> {
        let body = crate::cluster::Rebuild { join: join.to_vec() };
        let body = serde_json::to_vec(&body).map_err(|e| Error::Config(e.to_string()))?;
        self.here(Method::POST, "/admin/rebuild", Vec::new(), Some(body), false).await?.json()
    }

    /// Runs `VACUUM` on every replica at one log position (`POST /admin/vacuum`, sent to the
    /// leader). It may take as long as rewriting the database file; give the client a timeout
    /// to match.
    pub async fn vacuum(&self) -> Result<crate::cluster::Vacuumed> {
        self.post("/admin/vacuum", &serde_json::Value::Null).await
    }

    /// Makes node `id` the leader (`POST /admin/promote?node=ID`); a learner becomes a voter
    /// first. `id`: its number or its name.
    pub async fn promote(&self, id: impl std::fmt::Display) -> Result<LeaderChanged> {
        self.post(&format!("/admin/promote?node={id}"), &serde_json::Value::Null).await
    }

    /// rqlite's step-down (`POST /leader`): to `id` (a number or a name), or to the best other
    /// voter.
    pub async fn step_down(&self, id: Option<&str>) -> Result<LeaderChanged> {
        let body = id.map_or_else(NodeRef::default, NodeRef::to);
        self.post("/leader", &body).await
    }

    /// Changes a member's role (`POST /admin/membership`).
    pub async fn change_membership(&self, change: &MembershipChange) -> Result<MembershipChanged> {
        self.post("/admin/membership", change).await
    }

    /// Makes a learner a voter, or with `voter: false` a voter a learner. `id`: its number or
    /// its name.
    pub async fn set_voter(
        &self,
        id: impl std::fmt::Display,
        voter: bool,
    ) -> Result<MembershipChanged> {
        let action = if voter { Action::Promote } else { Action::Demote };
        self.change_membership(&MembershipChange::of(action, id)).await
    }

    /// The body of `GET path` (which may carry a query) on the node in use, as text: for
    /// answers that are not JSON (`/metrics`), or that a tool shows as the node wrote them
    /// (`keel shell`'s `.sysdump`). A refusal is [`Error::Refused`] with the body's text.
    pub async fn text(&self, path: &str) -> Result<String> {
        let reply = self.get_reply(path, Target::Any).await?;
        Ok(String::from_utf8_lossy(&reply.body).into_owned())
    }

    /// A GET of `path` (which may carry a query) answered with JSON.
    pub(crate) async fn get<T: DeserializeOwned>(&self, path: &str, target: Target) -> Result<T> {
        self.get_reply(path, target).await?.json()
    }

    /// A GET of `path` (which may carry a query): the successful answer.
    async fn get_reply(&self, path: &str, target: Target) -> Result<Reply> {
        let (path, query) = split_query(path);
        let attempt = Attempt { method: Method::GET, path, query, body: None, target, safe: true };
        self.send(&attempt).await
    }

    /// A request to the node in use (never redirected to the leader); `safe`: sending it twice
    /// does no harm.
    async fn here(
        &self,
        method: Method,
        path: &str,
        query: Vec<(String, Option<String>)>,
        body: Option<Vec<u8>>,
        safe: bool,
    ) -> Result<super::Reply> {
        let attempt = Attempt { method, path: path.into(), query, body, target: Target::Any, safe };
        self.send(&attempt).await
    }

    /// A POST to the leader (membership changes are safe to repeat: they converge).
    async fn post<T: DeserializeOwned>(&self, path: &str, body: &impl Serialize) -> Result<T> {
        self.send_json(Method::POST, path, body).await
    }

    /// A request with a JSON body to the leader.
    async fn send_json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: &impl Serialize,
    ) -> Result<T> {
        let (path, query) = split_query(path);
        let body = serde_json::to_vec(body).map_err(|e| Error::Config(e.to_string()))?;
        let body = (body != b"null").then_some(body);
        let attempt = Attempt { method, path, query, body, target: Target::Leader, safe: true };
        self.send(&attempt).await?.json()
    }
}

/// `statements` as a request body.
fn json_body(statements: &[Statement]) -> Result<Vec<u8>> {
    serde_json::to_vec(statements).map_err(|e| Error::Config(format!("statements: {e}")))
}

/// Splits `path?a=b&c` into the path and its parameters.
pub(crate) fn split_query(path: &str) -> (String, Vec<(String, Option<String>)>) {
    let Some((path, query)) = path.split_once('?') else { return (path.to_string(), Vec::new()) };
    let params = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (k.to_string(), Some(v.to_string())),
            None => (p.to_string(), None),
        })
        .collect();
    (path.to_string(), params)
}

/// A duration as Go writes it, which Keel's parameters take: whole milliseconds (`1500ms`),
/// or nanoseconds below one.
pub(crate) fn go_duration(d: Duration) -> String {
    if d.subsec_nanos().is_multiple_of(1_000_000) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}ns", d.as_nanos())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_go_durations() {
        assert_eq!(go_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(go_duration(Duration::from_secs(0)), "0ms");
        assert_eq!(go_duration(Duration::from_nanos(1)), "1ns");
    }

    #[test]
    fn paths_split_from_their_query() {
        assert_eq!(split_query("/status"), ("/status".to_string(), vec![]));
        assert_eq!(
            split_query("/nodes?nonvoters&ver=2"),
            (
                "/nodes".to_string(),
                vec![("nonvoters".to_string(), None), ("ver".to_string(), Some("2".to_string()))]
            )
        );
    }

    #[test]
    fn calls_pick_their_node_and_safety() {
        let client = Client::new(["h:1"]).unwrap();
        let (_, write) = client.write(["INSERT INTO t VALUES(1)"]).into_attempt().unwrap();
        assert_eq!((write.target, write.safe), (Target::Leader, true));
        assert!(write.query.iter().any(|(k, _)| k == "request_id"));
        let (_, read) = client.read(["SELECT 1"]).level(Level::None).into_attempt().unwrap();
        assert_eq!((read.target, read.safe), (Target::Any, true));
        let bare = Client::builder(["h:1"]).request_ids(false).build().unwrap();
        let (_, write) = bare.write(["INSERT INTO t VALUES(1)"]).into_attempt().unwrap();
        assert!(!write.safe, "a write without a request id is not safe to repeat");
    }
}
