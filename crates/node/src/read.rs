//! Reads at a consistency level, on any node.
//!
//! | level | where | before reading |
//! |---|---|---|
//! | `none` | this node | nothing; with `freshness`, refuse if this node has not heard from a leader within it (`freshness_strict`: or has not applied what that leader had committed) |
//! | `weak` | the leader | a lease check (a fresh leader without a lease confirms with a quorum instead) |
//! | `linearizable` | this node | the read index: the leader confirms its leadership with a quorum and names the index to apply through ([`crate::peer`] asks it from a follower); this node waits until it has applied that index |
//! | `strong` | the leader | a blank entry through the log, applied |
//!
//! `weak` and `strong` on a follower answer [`Error::NotLeader`]: the caller forwards.
//! `min_lsn` then waits until this node has applied that index. The read runs on the read-only
//! pool: inline on the async worker if it finishes within [`INLINE_READ`], else on a blocking
//! thread ([`sql::Readers::try_query_applied`]). The answer's lsn is read from the database
//! AFTER the query: the applied position is committed with the data and only grows, so it
//! covers everything the query saw, and a client that sends it back as `min_lsn` never reads
//! older data (monotonic reads).

use std::time::{Duration, Instant};

use crate::{Error, Node};

/// How long a read may run on the async worker that received it before it is moved to a
/// blocking thread (see [`sql::Readers::try_query_applied`]): a point read takes microseconds,
/// and the hand-off to a blocking thread and back costs more than that.
pub const INLINE_READ: Duration = Duration::from_millis(1);
/// How long a read waits for this node to apply what it needs (`min_lsn`, read index) unless
/// the call says otherwise.
pub const READ_WAIT: Duration = Duration::from_secs(5);

/// Read consistency levels (rqlite's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// This node's data, whatever it is.
    None,
    /// The leader's data, trusting its lease.
    Weak,
    /// Any node's data, after it has applied the leader's commit index as confirmed with a
    /// quorum at the start of the read (read index).
    Linearizable,
    /// Through the Raft log: the leader appends a blank entry and reads after applying it.
    Strong,
    /// rqlite's `auto`: `none` on a learner (a read replica), else `weak`.
    Auto,
}

impl Level {
    /// rqlite's level names, case-insensitive; absent or unknown means `weak`, as in rqlite.
    pub fn parse(name: Option<&str>) -> Level {
        let Some(name) = name else { return Level::Weak };
        [
            ("none", Level::None),
            ("linearizable", Level::Linearizable),
            ("strong", Level::Strong),
            ("auto", Level::Auto),
        ]
        .into_iter()
        .find_map(|(known, level)| name.eq_ignore_ascii_case(known).then_some(level))
        .unwrap_or(Level::Weak)
    }
}

/// One read request.
#[derive(Debug)]
pub struct ReadCall {
    /// The statements.
    pub statements: Vec<sql::Statement>,
    /// Run them in one read transaction.
    pub transaction: bool,
    /// The consistency level.
    pub level: Level,
    /// For `none`: how long ago this node must have heard from a leader.
    pub freshness: Option<Duration>,
    /// With `freshness`: also require having applied what that leader had committed.
    pub freshness_strict: bool,
    /// Wait until this node has applied this index first.
    pub min_lsn: Option<wal::Lsn>,
    /// How long to wait for `min_lsn` (and, unless `linearizable_timeout` is given, for the
    /// read index).
    pub timeout: Option<Duration>,
    /// Bounds the read index round and the wait for it (rqlite's `linearizable_timeout`).
    pub linearizable_timeout: Option<Duration>,
    /// Bounds each statement's execution (`db_timeout`).
    pub db_timeout: Option<Duration>,
    /// rqlite's `qualify_columns`.
    pub qualify_columns: bool,
}

/// A read's results and the index they reflect.
#[derive(Debug)]
pub struct ReadOutcome {
    /// One result per statement.
    pub results: Vec<sql::StatementResult>,
    /// The applied index that covers everything the read saw.
    pub lsn: wal::Lsn,
}

impl Node {
    /// Serves a read (see the module docs).
    pub async fn read(&self, call: ReadCall) -> Result<ReadOutcome, Error> {
        let timeout = call.timeout.unwrap_or(READ_WAIT);
        match self.resolve(call.level) {
            Level::None => {
                if let Some(freshness) = call.freshness {
                    self.check_freshness(freshness, call.freshness_strict)?;
                }
            }
            level @ (Level::Weak | Level::Strong) => self.leader_barrier(level).await?,
            Level::Linearizable if self.planted.stale_linearizable => {}
            Level::Linearizable => {
                self.read_index_applied(call.linearizable_timeout.unwrap_or(timeout)).await?
            }
            Level::Auto => unreachable!("resolved above"),
        }
        if let Some(n) = call.min_lsn {
            self.wait_applied(n, timeout).await?;
        }
        let qualify = call.qualify_columns.then(|| sql_texts(&call.statements));
        let (mut results, lsn) =
            self.query(call.statements, call.transaction, call.db_timeout).await?;
        self.metrics.reads.inc();
        if let Some(texts) = qualify {
            results = self.qualify_columns(texts, results).await?;
        }
        Ok(ReadOutcome { results, lsn: lsn.max(self.applied()) })
    }

    /// Whether the statements only read (then `/db/request` serves them as a read).
    pub async fn is_read_only(
        &self,
        statements: Vec<sql::Statement>,
    ) -> Result<(Vec<sql::Statement>, bool), Error> {
        let readers = self.readers.clone();
        Ok(tokio::task::spawn_blocking(move || {
            let read_only = readers.is_read_only(&statements);
            (statements, read_only)
        })
        .await?)
    }

    /// `auto` as this node's role makes it.
    fn resolve(&self, level: Level) -> Level {
        match level {
            Level::Auto
                if raft::cluster::state(&self.raft).role == raft::cluster::Role::Learner =>
            {
                Level::None
            }
            Level::Auto => Level::Weak,
            level => level,
        }
    }

    /// `weak` and `strong`: on the leader, its lease (or a quorum) or a log barrier; elsewhere
    /// [`Error::NotLeader`].
    async fn leader_barrier(&self, level: Level) -> Result<(), Error> {
        match self.route().await {
            crate::Route::Here => {}
            crate::Route::Leader(leader) => return Err(Error::NotLeader { leader }),
            crate::Route::NoLeader => return Err(Error::Unavailable("leader not found".into())),
        }
        let barrier = if level == Level::Weak {
            match raft::client::barrier(&self.raft, raft::ReadPolicy::LeaseRead).await {
                // A fresh leader has no lease yet: confirm with a quorum instead.
                Err(raft::client::ClientError::NoQuorum(_)) => {
                    raft::client::barrier(&self.raft, raft::ReadPolicy::ReadIndex).await
                }
                other => other,
            }
        } else {
            raft::client::log_barrier(&self.raft).await
        };
        barrier.map(|_| ()).map_err(Error::from)
    }

    /// `linearizable`: the leader confirms its leadership with a quorum and names the index to
    /// apply through; then this node, whichever it is, waits until it has applied it. `limit`
    /// bounds both steps.
    pub(crate) async fn read_index_applied(&self, limit: Duration) -> Result<(), Error> {
        let index = async {
            match self.route().await {
                crate::Route::Here => {
                    raft::client::barrier(&self.raft, raft::ReadPolicy::ReadIndex)
                        .await
                        .map_err(Error::from)
                }
                crate::Route::Leader(leader) => self.remote_read_index(&leader).await,
                crate::Route::NoLeader => Err(Error::Unavailable("leader not found".into())),
            }
        };
        let started = Instant::now();
        let index = tokio::time::timeout(limit, index).await.map_err(|_| {
            Error::Unavailable(format!(
                "the leader did not confirm a read index within {:.3}s (linearizable_timeout)",
                limit.as_secs_f64()
            ))
        })??;
        self.wait_applied(index, limit.saturating_sub(started.elapsed())).await
    }

    /// Refuses a `level=none` read on a non-leader that has not heard from a leader within
    /// `freshness` (or, with `strict`, has not applied what the leader had committed then).
    fn check_freshness(&self, freshness: Duration, strict: bool) -> Result<(), Error> {
        if self.is_leader() {
            return Ok(()); // The leader's data is as fresh as it gets.
        }
        let id = self.id;
        let Some((at, leader_commit)) = self.contact.last() else {
            return Err(Error::Stale(format!("stale read: node {id} has not heard from a leader")));
        };
        let age = at.elapsed();
        if age > freshness {
            return Err(Error::Stale(format!(
                "stale read: node {id} last heard from the leader {:.3}s ago (freshness {:.3}s)",
                age.as_secs_f64(),
                freshness.as_secs_f64()
            )));
        }
        let applied = self.applied();
        if strict && applied < leader_commit {
            return Err(Error::Stale(format!(
                "stale read: node {id} has applied {applied} of the {leader_commit} the leader had committed (freshness_strict)"
            )));
        }
        Ok(())
    }

    /// Waits until this node has applied `index`, up to `timeout`.
    pub async fn wait_applied(&self, index: wal::Lsn, timeout: Duration) -> Result<(), Error> {
        let mut rx = self.applied.clone();
        match tokio::time::timeout(timeout, rx.wait_for(|a| *a >= index)).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(Error::NotApplied { index, applied: self.applied(), node: self.id, timeout }),
        }
    }

    /// Runs read-only statements on the pool, inline when they are quick (see the module docs).
    async fn query(
        &self,
        statements: Vec<sql::Statement>,
        transaction: bool,
        db_timeout: Option<Duration>,
    ) -> Result<(Vec<sql::StatementResult>, wal::Lsn), Error> {
        match self.readers.try_query_applied(&statements, transaction, db_timeout, INLINE_READ) {
            Some(outcome) => Ok(outcome?),
            None => {
                let readers = self.readers.clone();
                Ok(tokio::task::spawn_blocking(move || {
                    readers.query_applied(&statements, transaction, db_timeout)
                })
                .await??)
            }
        }
    }

    /// rqlite's `qualify_columns`: each column of a rows result that comes from a table is
    /// named `table.column` (expressions keep their name), as rqlite's `qualifyRowColumns`
    /// does with `sqlite3_column_table_name`. The statements are prepared again on a read
    /// connection; a statement that cannot be prepared there keeps its names, as in rqlite.
    pub(crate) async fn qualify_columns(
        &self,
        texts: Vec<String>,
        mut results: Vec<sql::StatementResult>,
    ) -> Result<Vec<sql::StatementResult>, Error> {
        let readers = self.readers.clone();
        Ok(tokio::task::spawn_blocking(move || {
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
        .await?)
    }
}

/// The SQL text of each statement (what `qualify_columns` prepares again).
pub(crate) fn sql_texts(statements: &[sql::Statement]) -> Vec<String> {
    statements.iter().map(|s| s.sql.clone()).collect()
}
