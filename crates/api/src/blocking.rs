//! A synchronous wrapper of [`crate::Client`], for code without an async runtime (tests,
//! scripts, a shell).
//!
//! It owns a small tokio runtime (one worker thread, which drives the connections) and blocks
//! the calling thread on each call. Any number of threads may share one `blocking::Client`.
//! Do not use it from inside an async runtime: blocking there would stall that runtime's
//! thread (tokio refuses it with a panic).
//!
//! ```no_run
//! use keel_api::blocking::Client;
//!
//! let client = Client::new(["http://127.0.0.1:4001"])?;
//! let answer = client.execute(["CREATE TABLE IF NOT EXISTS t (a)"])?;
//! println!("written at lsn {:?}", answer.lsn);
//! # Ok::<(), keel_api::Error>(())
//! ```

use std::future::Future;
use std::sync::Arc;

use crate::cluster::{JoinRequest, Joined, LeaderChanged, MembershipChanged, NodeInfo, Removed};
use crate::db::{Answer, Statement};
use crate::error::{Error, Result};
use crate::queue::{Lookup, Queued, Seq};
use crate::status::Status;
use crate::{Call, ClientBuilder, Readiness};

/// A [`crate::Client`] whose calls block.
#[derive(Clone, Debug)]
pub struct Client {
    /// The async client.
    inner: crate::Client,
    /// The runtime its calls run on.
    runtime: Arc<tokio::runtime::Runtime>,
}

impl Client {
    /// A client of the nodes at `urls`, with the default settings.
    pub fn new<I, S>(urls: I) -> Result<Client>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Client::from_builder(crate::Client::builder(urls))
    }

    /// A client built by `builder`.
    pub fn from_builder(builder: ClientBuilder) -> Result<Client> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("keel-api-client")
            .enable_all()
            .build()
            .map_err(|e| Error::Config(format!("starting the client's runtime: {e}")))?;
        // reqwest's client must be built inside a runtime (its connector registers there).
        let inner = runtime.block_on(async { builder.build() })?;
        Ok(Client { inner, runtime: Arc::new(runtime) })
    }

    /// The async client, to build calls with ([`crate::Client::write`] and friends) and run
    /// them with [`Client::run`].
    pub fn inner(&self) -> &crate::Client {
        &self.inner
    }

    /// Runs a future of the async client to its end.
    pub fn run<T>(&self, future: impl Future<Output = T>) -> T {
        self.runtime.block_on(future)
    }

    /// Sends a call built on [`Client::inner`].
    pub fn send(&self, call: Call<'_>) -> Result<Answer> {
        self.run(call.send())
    }

    /// A client of one node only (see [`crate::Client::on`]).
    pub fn on(&self, url: &str) -> Result<Client> {
        Ok(Client { inner: self.inner.on(url)?, runtime: self.runtime.clone() })
    }

    /// See [`crate::Client::execute`].
    pub fn execute<S: Into<Statement>>(&self, s: impl IntoIterator<Item = S>) -> Result<Answer> {
        self.run(self.inner.execute(s))
    }

    /// See [`crate::Client::query`].
    pub fn query<S: Into<Statement>>(&self, s: impl IntoIterator<Item = S>) -> Result<Answer> {
        self.run(self.inner.query(s))
    }

    /// See [`crate::Client::request`].
    pub fn request<S: Into<Statement>>(&self, s: impl IntoIterator<Item = S>) -> Result<Answer> {
        self.run(self.inner.request(s))
    }

    /// See [`crate::Client::enqueue`].
    pub fn enqueue<S: Into<Statement>>(
        &self,
        s: impl IntoIterator<Item = S>,
        wait: bool,
    ) -> Result<Queued> {
        self.run(self.inner.enqueue(s, wait))
    }

    /// See [`crate::Client::queued`].
    pub fn queued(&self, sequence_number: Seq) -> Result<Lookup> {
        self.run(self.inner.queued(sequence_number))
    }

    /// See [`crate::Client::status`].
    pub fn status(&self) -> Result<Status> {
        self.run(self.inner.status())
    }

    /// See [`crate::Client::nodes`].
    pub fn nodes(&self) -> Result<Vec<NodeInfo>> {
        self.run(self.inner.nodes())
    }

    /// See [`crate::Client::request_outcome`].
    pub fn request_outcome(
        &self,
        id: &str,
        after_lsn: Option<crate::Lsn>,
    ) -> Result<crate::requests::RequestOutcome> {
        self.run(self.inner.request_outcome(id, after_lsn))
    }

    /// See [`crate::Client::leader`].
    pub fn leader(&self) -> Result<NodeInfo> {
        self.run(self.inner.leader())
    }

    /// See [`crate::Client::find_leader`].
    pub fn find_leader(&self) -> Result<String> {
        self.run(self.inner.find_leader())
    }

    /// See [`crate::Client::ready`].
    pub fn ready(&self, noleader: bool, sync: bool) -> Result<Readiness> {
        self.run(self.inner.ready(noleader, sync))
    }

    /// See [`crate::Client::join`].
    pub fn join(&self, request: &JoinRequest) -> Result<Joined> {
        self.run(self.inner.join(request))
    }

    /// See [`crate::Client::remove`].
    pub fn remove(&self, id: impl std::fmt::Display) -> Result<Removed> {
        self.run(self.inner.remove(id))
    }

    /// See [`crate::Client::promote`].
    pub fn promote(&self, id: impl std::fmt::Display) -> Result<LeaderChanged> {
        self.run(self.inner.promote(id))
    }

    /// See [`crate::Client::vacuum`].
    pub fn vacuum(&self) -> Result<crate::cluster::Vacuumed> {
        self.run(self.inner.vacuum())
    }

    /// See [`crate::Client::set_voter`].
    pub fn set_voter(&self, id: impl std::fmt::Display, voter: bool) -> Result<MembershipChanged> {
        self.run(self.inner.set_voter(id, voter))
    }
}
