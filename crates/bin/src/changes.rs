//! `keel changes`: prints the committed row changes of a running cluster as JSON lines, from
//! its change stream (`GET /db/changes`, [`crate::http::changes`]), resuming on another member
//! when a node goes away. The stream is read with [`keel_api::Client::changes`], events are
//! parsed by [`keel_api::sse`] and their ids are [`keel_api::changes::EventId`], the types the
//! server writes them with.

mod client;

use std::time::Duration;

pub(crate) use crate::http::changes::KEEP_ALIVE;

/// Flags of `keel changes`.
#[derive(Debug, Clone, clap::Args)]
pub struct ChangesArgs {
    /// HTTP URL of any cluster node. If it goes away, the command resumes on another member
    /// (from the last `/nodes` answer).
    #[arg(default_value = "http://127.0.0.1:4001")]
    pub url: String,
    /// The first LSN to print changes of. Default: only changes committed from now on.
    #[arg(long)]
    pub from: Option<u64>,
    /// Exit after printing this many changes.
    #[arg(long)]
    pub limit: Option<u64>,
    /// Exit once every change up to and including this LSN has been printed.
    #[arg(long)]
    pub until_lsn: Option<u64>,
    /// Give up after failing to reach any node for this long (e.g. `30s`). Default: retry
    /// forever.
    #[arg(long, value_parser = crate::parse_duration)]
    pub give_up_after: Option<Duration>,
}

/// Runs `keel changes`.
pub async fn run(args: ChangesArgs) -> anyhow::Result<()> {
    client::run(args).await
}
