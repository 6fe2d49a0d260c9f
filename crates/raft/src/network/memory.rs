//! An in-memory network: the nodes of one process call each other's `Raft` directly, through a
//! [`Switchboard`] the test controls.
//!
//! This is the transport of the in-process cluster (`integration-tests`' `inproc` module): the
//! same openraft RPCs as the HTTP [`super::Network`] (append, heartbeat, vote, pre-vote, full
//! snapshot, transfer-leader), plus Keel's own read-index call, without sockets. Each message
//! goes through `Switchboard::route`, which decides its fate and records it:
//!
//! 1. a link cut by [`Switchboard::partition`], [`Switchboard::isolate`] or
//!    [`Switchboard::cut`] loses it ([`Fate::Cut`]; the sender sees `Unreachable` and backs
//!    off, as after a refused connection);
//! 2. else the first rule whose [`Match`] fits it acts: [`Switchboard::drop_next`] /
//!    [`Switchboard::drop_all`] lose it ([`Fate::Dropped`]; the sender sees a timeout at once,
//!    and openraft resends), [`Switchboard::hold_next`] / [`Switchboard::hold_all`] keep it
//!    ([`Fate::Held`]) until [`Switchboard::release`] or [`Switchboard::release_all`];
//! 3. else it is handed to the target's server ([`Fate::Delivered`]), or lost if the target is
//!    not connected ([`Fate::Down`]: crashed or not yet started).
//!
//! Every message is appended to a log ([`Switchboard::messages`]) with its sender, target,
//! kind, the log indexes an append carries, and its fate, which is updated when a held message
//! is released or abandoned. Tests assert on that log, and wait on it with
//! [`Switchboard::wait_for`] (a deadline, never a sleep).
//!
//! The receiving side is the HTTP server's own code (`super::server::Server`): an accepted
//! append is recorded in the node's [`super::Contact`], and a snapshot is streamed from the
//! sender's image file into the receiver's snapshot directory, checked and fsynced exactly as
//! a received HTTP body is.
//!
//! What it models and what it does not:
//!
//! - A delivered message runs under the RPC's `hard_ttl`, as the HTTP client's request timeout
//!   does: a target slower than that makes the sender see a timeout (the target still handles
//!   the message, as a server still handles a request whose client gave up).
//! - A held message makes its sender wait without a deadline: a stalled link that neither
//!   fails nor times out, so a test decides exactly when (or whether) it arrives. A sender that
//!   gives up meanwhile (openraft cancels replication when leadership changes) leaves it
//!   [`Fate::Abandoned`]; releasing it then delivers nothing.
//! - Messages are delivered in the order their senders send them; openraft sends appends to
//!   one target one at a time, so there is no reordering to model.
//! - No HTTP, no JSON, no TLS, no sender verification ([`super::PeerNode`]), no body limits,
//!   no snapshot idle timeout: those are the HTTP transport's and are tested with it.
//!
//! Why it is compiled always rather than behind a cargo feature: it adds no dependency and
//! little code, the binary never constructs it, and a feature would be unified into every
//! build of the workspace that includes the tests anyway; compiled always, `clippy` and `doc`
//! check it on every build, so it cannot rot unseen.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use openraft::OptionalSend;
use openraft::errors::{
    NetworkError, RPCError, RaftError, ReplicationClosed, StreamingError, Timeout, Unreachable,
};
use openraft::network::v2::RaftNetworkV2;
use openraft::network::{RPCOption, RPCTypes, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use tokio::io::AsyncReadExt;
use tokio::sync::{oneshot, watch};

use super::server::{Answer, Server};
use super::transfer::{Outcome, SEND_BLOCK};
use super::{Contact, SnapshotHeader};
use crate::client::ClientError;
use crate::snapshot::{SnapshotFile, SnapshotStats};
use crate::types::{Lsn, MemberAddr, NodeId, TypeConfig, Vote};
use crate::{Raft, ReadPolicy};

/// What a message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// An append that carries entries.
    Append,
    /// An append without entries: a heartbeat, or a probe of the follower's log.
    Heartbeat,
    /// A vote request.
    Vote,
    /// A pre-vote request.
    PreVote,
    /// A whole snapshot.
    Snapshot,
    /// A leader handing leadership to the target.
    TransferLeader,
    /// Keel's read-index call: a node asks the leader for the index a linearizable read must
    /// see ([`Switchboard::read_index`]; `/keel/read-index` over HTTP).
    ReadIndex,
}

/// What became of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Handed to the target (whatever the target answered).
    Delivered,
    /// Held, then released and handed to the target.
    Released,
    /// Held by a rule, waiting for [`Switchboard::release`].
    Held,
    /// Lost by a rule ([`Switchboard::drop_next`], [`Switchboard::drop_all`]).
    Dropped,
    /// Lost on a cut link.
    Cut,
    /// Lost because the target is not connected (crashed, or not started).
    Down,
    /// Held, and its sender stopped waiting before it was released: never delivered.
    Abandoned,
}

/// One message as the switchboard saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Its position among all messages of the switchboard, from 0.
    pub seq: u64,
    /// The sender.
    pub from: NodeId,
    /// The target.
    pub to: NodeId,
    /// What it is.
    pub kind: Kind,
    /// The indexes of the entries an append carries (`None` for every other kind).
    pub entries: Option<RangeInclusive<Lsn>>,
    /// What became of it (so far).
    pub fate: Fate,
}

/// Which messages a rule applies to: every field that is set must fit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Match {
    /// Only messages of this kind.
    pub kind: Option<Kind>,
    /// Only messages from this node.
    pub from: Option<NodeId>,
    /// Only messages to this node.
    pub to: Option<NodeId>,
    /// Only appends that carry the entry at this index.
    pub carrying: Option<Lsn>,
}

impl Match {
    /// Every message.
    pub fn any() -> Match {
        Match::default()
    }

    /// Messages of `kind`.
    pub fn kind(kind: Kind) -> Match {
        Match { kind: Some(kind), ..Match::default() }
    }

    /// Appends that carry the entry at `index`.
    pub fn carrying(index: Lsn) -> Match {
        Match { kind: Some(Kind::Append), carrying: Some(index), ..Match::default() }
    }

    /// Narrowed to messages from `id`.
    pub fn from(self, id: NodeId) -> Match {
        Match { from: Some(id), ..self }
    }

    /// Narrowed to messages to `id`.
    pub fn to(self, id: NodeId) -> Match {
        Match { to: Some(id), ..self }
    }

    /// Whether `m` fits.
    pub fn matches(&self, m: &Message) -> bool {
        self.kind.is_none_or(|k| k == m.kind)
            && self.from.is_none_or(|id| id == m.from)
            && self.to.is_none_or(|id| id == m.to)
            && self.carrying.is_none_or(|i| m.entries.as_ref().is_some_and(|e| e.contains(&i)))
    }
}

/// What a rule does to the messages it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Drop,
    Hold,
}

/// A rule: what to do with matching messages, and how many more (`None`: until cleared).
#[derive(Debug)]
struct Rule {
    matches: Match,
    action: Action,
    remaining: Option<usize>,
}

/// The switchboard's state, behind one mutex (never held across an `.await`).
#[derive(Default)]
struct Board {
    /// The connected nodes, by id.
    servers: BTreeMap<NodeId, Server>,
    /// Every node ever connected (what [`Switchboard::isolate`] cuts a node from).
    known: BTreeSet<NodeId>,
    /// Cut links, `(from, to)`: messages on them are lost.
    cut: BTreeSet<(NodeId, NodeId)>,
    /// Rules, the first match acting.
    rules: Vec<Rule>,
    /// Held messages, by `seq`: the signal that releases each.
    held: BTreeMap<u64, oneshot::Sender<()>>,
    /// Every message so far.
    log: Vec<Message>,
}

/// The network a test controls: which nodes are connected, which links are cut, which
/// messages are dropped or held, and the log of every message. Cheap to clone; clones share
/// the same board. See the module docs.
#[derive(Clone)]
pub struct Switchboard {
    /// The board.
    board: Arc<Mutex<Board>>,
    /// Bumped on every change of the log, for [`Switchboard::wait_for`].
    changed: Arc<watch::Sender<u64>>,
}

impl std::fmt::Debug for Switchboard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let board = self.lock();
        f.debug_struct("Switchboard")
            .field("connected", &board.servers.keys().collect::<Vec<_>>())
            .field("cut", &board.cut)
            .field("rules", &board.rules)
            .field("messages", &board.log.len())
            .finish()
    }
}

impl Default for Switchboard {
    fn default() -> Self {
        Switchboard::new()
    }
}

impl Switchboard {
    /// An empty switchboard: no node connected, no link cut, no rule.
    pub fn new() -> Switchboard {
        Switchboard { board: Arc::default(), changed: Arc::new(watch::Sender::new(0)) }
    }

    fn lock(&self) -> MutexGuard<'_, Board> {
        self.board.lock().expect("switchboard mutex poisoned")
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v += 1);
    }

    /// The network factory node `id` starts its `Raft` with ([`crate::start_with`]); its
    /// snapshot transfers are counted in `stats`.
    pub fn network(&self, id: NodeId, stats: Arc<SnapshotStats>) -> Network {
        Network { id, board: self.clone(), stats }
    }

    /// Connects node `id`: messages to it are handed to `raft`, accepted appends recorded in
    /// `contact`. Replaces an earlier connection of the same id (a restarted node).
    pub fn connect(&self, id: NodeId, raft: Raft, contact: Arc<Contact>) {
        let mut board = self.lock();
        board.servers.insert(id, Server::new(raft, contact, false));
        board.known.insert(id);
    }

    /// Disconnects node `id` (it crashed): messages to it are lost as [`Fate::Down`].
    pub fn disconnect(&self, id: NodeId) {
        self.lock().servers.remove(&id);
    }

    /// Cuts the link from `from` to `to` (one direction).
    pub fn cut(&self, from: NodeId, to: NodeId) {
        self.lock().cut.insert((from, to));
    }

    /// Cuts every link between a node of `a` and a node of `b`, both directions.
    pub fn partition(&self, a: &[NodeId], b: &[NodeId]) {
        let mut board = self.lock();
        for &x in a {
            for &y in b {
                board.cut.insert((x, y));
                board.cut.insert((y, x));
            }
        }
    }

    /// Cuts every link between `id` and every other node ever connected, both directions.
    pub fn isolate(&self, id: NodeId) {
        let others: Vec<NodeId> = self.lock().known.iter().copied().filter(|&o| o != id).collect();
        self.partition(&[id], &others);
    }

    /// Restores every cut link. Rules and held messages stay.
    pub fn heal(&self) {
        self.lock().cut.clear();
    }

    /// Loses the next message that fits `m`.
    pub fn drop_next(&self, m: Match) {
        self.add_rule(m, Action::Drop, Some(1));
    }

    /// Loses every message that fits `m`, until [`Switchboard::clear_rules`].
    pub fn drop_all(&self, m: Match) {
        self.add_rule(m, Action::Drop, None);
    }

    /// Holds the next message that fits `m` until it is released.
    pub fn hold_next(&self, m: Match) {
        self.add_rule(m, Action::Hold, Some(1));
    }

    /// Holds every message that fits `m`, until [`Switchboard::clear_rules`]; each waits until
    /// it is released.
    pub fn hold_all(&self, m: Match) {
        self.add_rule(m, Action::Hold, None);
    }

    fn add_rule(&self, matches: Match, action: Action, remaining: Option<usize>) {
        self.lock().rules.push(Rule { matches, action, remaining });
    }

    /// Removes every rule (held messages stay held).
    pub fn clear_rules(&self) {
        self.lock().rules.clear();
    }

    /// Releases held message `seq`: it goes on to its target. False if it is not held (never
    /// was, already released, or its sender gave up).
    pub fn release(&self, seq: u64) -> bool {
        let released = {
            let mut board = self.lock();
            let Some(signal) = board.held.remove(&seq) else { return false };
            let sent = signal.send(()).is_ok();
            if sent {
                set_fate(&mut board.log, seq, Fate::Released);
            }
            sent
        };
        self.bump();
        released
    }

    /// Releases every held message; returns how many went on.
    pub fn release_all(&self) -> usize {
        let held: Vec<u64> = self.lock().held.keys().copied().collect();
        held.into_iter().filter(|&seq| self.release(seq)).count()
    }

    /// Every message so far, in the order they were sent.
    pub fn messages(&self) -> Vec<Message> {
        self.lock().log.clone()
    }

    /// The messages that fit `m`.
    pub fn matching(&self, m: &Match) -> Vec<Message> {
        self.lock().log.iter().filter(|x| m.matches(x)).cloned().collect()
    }

    /// Waits until `condition` holds for the message log, up to `timeout`; the error names
    /// `what` and the messages the condition was last checked on.
    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        condition: impl Fn(&[Message]) -> bool,
    ) -> Result<Vec<Message>, String> {
        let mut changed = self.changed.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            changed.borrow_and_update();
            let log = self.messages();
            if condition(&log) {
                return Ok(log);
            }
            if tokio::time::timeout_at(deadline, changed.changed()).await.is_err() {
                let tail = log.len().saturating_sub(20);
                return Err(format!(
                    "{what}: not within {timeout:?}; the last messages: {:#?}",
                    &log[tail..]
                ));
            }
        }
    }

    /// Records a message from `from` to `to` and decides its fate; waits while it is held.
    /// Returns the target's server if the message is to be delivered, else its fate.
    async fn route(
        &self,
        from: NodeId,
        to: NodeId,
        kind: Kind,
        entries: Option<RangeInclusive<Lsn>>,
    ) -> Result<Server, Fate> {
        let (seq, decided) = self.decide(from, to, kind, entries);
        self.bump();
        let released = match decided {
            Decided::Lost(fate) => return Err(fate),
            Decided::Deliver(server) => return Ok(server),
            Decided::Hold(released) => released,
        };
        let mut guard = Abandon { board: self, seq, armed: true };
        // The sender is `None` only if the board was dropped, which cannot happen while
        // `self` is alive; treat it as a release all the same.
        let _ = released.await;
        guard.armed = false;
        let mut board = self.lock();
        match board.servers.get(&to).cloned() {
            Some(server) => Ok(server),
            None => {
                set_fate(&mut board.log, seq, Fate::Down);
                drop(board);
                self.bump();
                Err(Fate::Down)
            }
        }
    }

    /// The fate of a new message, recorded in the log.
    fn decide(
        &self,
        from: NodeId,
        to: NodeId,
        kind: Kind,
        entries: Option<RangeInclusive<Lsn>>,
    ) -> (u64, Decided) {
        let mut board = self.lock();
        let seq = board.log.len() as u64;
        let mut message = Message { seq, from, to, kind, entries, fate: Fate::Delivered };
        let decided = if board.cut.contains(&(from, to)) {
            Decided::Lost(Fate::Cut)
        } else {
            match take_rule(&mut board.rules, &message) {
                Some(Action::Drop) => Decided::Lost(Fate::Dropped),
                Some(Action::Hold) => {
                    let (signal, released) = oneshot::channel();
                    board.held.insert(seq, signal);
                    Decided::Hold(released)
                }
                None => match board.servers.get(&to) {
                    Some(server) => Decided::Deliver(server.clone()),
                    None => Decided::Lost(Fate::Down),
                },
            }
        };
        message.fate = match &decided {
            Decided::Lost(fate) => *fate,
            Decided::Hold(_) => Fate::Held,
            Decided::Deliver(_) => Fate::Delivered,
        };
        board.log.push(message);
        (seq, decided)
    }

    /// Keel's read-index call from `from` to the leader `to`: `to` confirms its leadership
    /// with a quorum and returns the index a linearizable read must see (what
    /// `/keel/read-index` answers over HTTP). Lost messages and a `timeout` without an answer
    /// are [`ClientError::NoQuorum`]: nothing was confirmed.
    pub async fn read_index(
        &self,
        from: NodeId,
        to: NodeId,
        timeout: Duration,
    ) -> Result<Lsn, ClientError> {
        let call = async {
            let server = self.route(from, to, Kind::ReadIndex, None).await.map_err(|fate| {
                ClientError::NoQuorum(format!(
                    "the read-index call to node {to} was lost: {fate:?}"
                ))
            })?;
            crate::client::barrier(server.raft(), ReadPolicy::ReadIndex).await
        };
        tokio::time::timeout(timeout, call).await.unwrap_or_else(|_| {
            Err(ClientError::NoQuorum(format!("node {to} gave no read index within {timeout:?}")))
        })
    }
}

/// The fate of a new message, with what delivering it needs.
enum Decided {
    Lost(Fate),
    Hold(oneshot::Receiver<()>),
    Deliver(Server),
}

/// The action of the first rule that fits `message`, using up one of its matches.
fn take_rule(rules: &mut Vec<Rule>, message: &Message) -> Option<Action> {
    let at = rules.iter().position(|r| r.matches.matches(message))?;
    let action = rules[at].action;
    match &mut rules[at].remaining {
        Some(1) => {
            rules.remove(at);
        }
        Some(n) => *n -= 1,
        None => {}
    }
    Some(action)
}

fn set_fate(log: &mut [Message], seq: u64, fate: Fate) {
    if let Some(m) = log.get_mut(seq as usize) {
        m.fate = fate;
    }
}

/// Marks a held message abandoned if its sender stops waiting before the release.
struct Abandon<'a> {
    board: &'a Switchboard,
    seq: u64,
    armed: bool,
}

impl Drop for Abandon<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut board = self.board.lock();
        if board.held.remove(&self.seq).is_some() {
            set_fate(&mut board.log, self.seq, Fate::Abandoned);
        }
        drop(board);
        self.board.bump();
    }
}

/// Node `id`'s side of the switchboard: openraft's network factory, one [`Peer`] per target.
#[derive(Clone)]
pub struct Network {
    /// The node this network sends from.
    id: NodeId,
    /// The switchboard.
    board: Switchboard,
    /// Snapshot counters of this node.
    stats: Arc<SnapshotStats>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, _node: &MemberAddr) -> Peer {
        Peer { from: self.id, to: target, board: self.board.clone(), stats: self.stats.clone() }
    }
}

/// The RPCs from one node to one target, through the switchboard.
pub struct Peer {
    /// The sender.
    from: NodeId,
    /// The target.
    to: NodeId,
    /// The switchboard.
    board: Switchboard,
    /// Snapshot counters of the sender.
    stats: Arc<SnapshotStats>,
}

impl Peer {
    /// Routes a message and, if it is to be delivered, runs `rpc` on the target's server under
    /// `option`'s `hard_ttl`.
    async fn call<T, F>(
        &self,
        kind: Kind,
        entries: Option<RangeInclusive<Lsn>>,
        option: &RPCOption,
        rpc: impl FnOnce(Server) -> F,
    ) -> Result<T, RPCError<TypeConfig>>
    where
        F: Future<Output = Answer<T>>,
    {
        let action = match kind {
            Kind::Append | Kind::Heartbeat => RPCTypes::AppendEntries,
            Kind::TransferLeader => RPCTypes::TransferLeader,
            Kind::Snapshot => RPCTypes::InstallSnapshot,
            Kind::Vote | Kind::PreVote | Kind::ReadIndex => RPCTypes::Vote,
        };
        let server = self
            .board
            .route(self.from, self.to, kind, entries)
            .await
            .map_err(|fate| self.lost(fate, action, option))?;
        let answer = tokio::time::timeout(option.hard_ttl(), rpc(server)).await.map_err(|_| {
            RPCError::Timeout(Timeout {
                action,
                id: self.from,
                target: self.to,
                timeout: option.hard_ttl(),
            })
        })?;
        answer.map_err(remote)
    }

    /// The error a sender sees for a message that was lost.
    fn lost(&self, fate: Fate, action: RPCTypes, option: &RPCOption) -> RPCError<TypeConfig> {
        match fate {
            Fate::Dropped => RPCError::Timeout(Timeout {
                action,
                id: self.from,
                target: self.to,
                timeout: option.hard_ttl(),
            }),
            fate => RPCError::Unreachable(Unreachable::from_string(format!(
                "node {} is unreachable from node {} ({fate:?} on the switchboard)",
                self.to, self.from
            ))),
        }
    }
}

/// An error the target returned, as the HTTP client reports it.
fn remote(e: RaftError<TypeConfig>) -> RPCError<TypeConfig> {
    RPCError::Network(NetworkError::from_string(e.to_string()))
}

/// The indexes of the entries an append carries.
fn carried(req: &AppendEntriesRequest<TypeConfig>) -> Option<RangeInclusive<Lsn>> {
    let first = req.entries.first()?.log_id.index;
    let last = req.entries.last()?.log_id.index;
    Some(first..=last)
}

impl RaftNetworkV2<TypeConfig> for Peer {
    type SnapshotData = SnapshotFile;

    async fn append_entries(
        &mut self,
        req: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        let entries = carried(&req);
        let kind = if entries.is_some() { Kind::Append } else { Kind::Heartbeat };
        self.call(kind, entries, &option, |s| async move { s.append(req).await }).await
    }

    async fn vote(
        &mut self,
        req: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(Kind::Vote, None, &option, |s| async move { s.vote(req).await }).await
    }

    async fn pre_vote(
        &mut self,
        req: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(Kind::PreVote, None, &option, |s| async move { s.pre_vote(req).await }).await
    }

    /// Streams the sender's image file into the target's snapshot directory through the
    /// receiving server's own code (length and checksum checked, fsynced, then installed).
    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: super::OutgoingSnapshot,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let server = self
            .board
            .route(self.from, self.to, Kind::Snapshot, None)
            .await
            .map_err(|fate| self.lost(fate, RPCTypes::InstallSnapshot, &option))?;
        let file = snapshot.snapshot;
        let (len, checksum) = (file.len(), file.checksum());
        let header = SnapshotHeader { vote, meta: snapshot.meta, len, checksum };
        let snapshots = server
            .snapshots()
            .await
            .map_err(|e| StreamingError::Network(NetworkError::from_string(e)))?;
        let outcome = Outcome::new(snapshots.stats.clone());
        let reader = tokio::fs::File::from_std(file.into_file()).take(len);
        let body = tokio_util::io::ReaderStream::with_capacity(reader, SEND_BLOCK);
        let install = server.install_snapshot(&snapshots, outcome, header, body);
        let res = tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            res = install => match res {
                Ok(answer) => answer.map_err(|e| StreamingError::from(remote(e))),
                Err(e) => Err(StreamingError::Network(NetworkError::from_string(e.to_string()))),
            },
        };
        if !matches!(res, Err(StreamingError::Closed(_))) {
            self.stats.on_sent(res.is_ok());
        }
        if res.is_ok() {
            self.stats.add_bytes_sent(len);
        }
        res
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(
            Kind::TransferLeader,
            None,
            &option,
            |s| async move { s.transfer_leader(req).await },
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn append(to: NodeId, entries: RangeInclusive<Lsn>) -> Message {
        Message {
            seq: 0,
            from: 1,
            to,
            kind: Kind::Append,
            entries: Some(entries),
            fate: Fate::Held,
        }
    }

    #[test]
    fn a_match_narrows_by_every_field_it_sets() {
        let m = Match::carrying(5).to(3);
        assert!(m.matches(&append(3, 4..=6)));
        assert!(!m.matches(&append(2, 4..=6)), "another target");
        assert!(!m.matches(&append(3, 6..=7)), "does not carry 5");
        let heartbeat = Message { kind: Kind::Heartbeat, entries: None, ..append(3, 1..=1) };
        assert!(!m.matches(&heartbeat));
        assert!(Match::any().matches(&heartbeat));
        assert!(Match::kind(Kind::Heartbeat).from(1).matches(&heartbeat));
        assert!(!Match::kind(Kind::Heartbeat).from(2).matches(&heartbeat));
    }

    #[test]
    fn a_next_rule_acts_once_and_an_all_rule_until_cleared() {
        let mut rules = vec![
            Rule { matches: Match::carrying(5), action: Action::Drop, remaining: Some(1) },
            Rule { matches: Match::any().to(3), action: Action::Hold, remaining: None },
        ];
        assert_eq!(take_rule(&mut rules, &append(3, 5..=5)), Some(Action::Drop));
        assert_eq!(take_rule(&mut rules, &append(3, 5..=5)), Some(Action::Hold));
        assert_eq!(take_rule(&mut rules, &append(3, 5..=5)), Some(Action::Hold));
        assert_eq!(take_rule(&mut rules, &append(2, 5..=5)), None);
    }
}
