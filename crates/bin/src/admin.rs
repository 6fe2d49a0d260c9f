//! `keel admin`: leadership transfer and membership changes of a running cluster, for a
//! person at a terminal; and `keel admin recover`, which works offline on a stopped node's
//! data directory instead ([`crate::recover`]).
//!
//! The HTTP routes are [`crate::http::admin`]; this module is the command line.
//!
//! # CLI
//!
//! `keel admin [--cluster URL,…] status | promote [ID] | demote ID | add ID … | remove ID`: the
//! same operations for a person at a terminal, one line of result or error each; `status`
//! prints a table of the members. [`run`] asks the given members for the leader (`GET
//! /leader`) and talks to it, falling back to whichever member answers.

use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Subcommand;
use keel_api::cluster::MembershipChange;
use keel_api::status::Role;
use raft::NodeName;

// ---- keel admin -------------------------------------------------------------------------------

/// Flags of `keel admin`.
#[derive(Debug, Clone, clap::Args)]
pub struct AdminArgs {
    /// HTTP URL of any cluster member (comma-separated to try several); requests find the
    /// leader.
    #[arg(
        long,
        global = true,
        env = "KEEL_CLUSTER",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:4001"
    )]
    pub cluster: Vec<String>,
    /// How long to wait for an answer.
    #[arg(long, global = true, default_value = "150s", value_parser = crate::parse_duration)]
    pub timeout: Duration,
    /// CA certificate (PEM) to trust for `https://` URLs, besides the system's.
    #[arg(long, global = true, env = "KEEL_CACERT", value_name = "FILE")]
    pub cacert: Option<std::path::PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: AdminCommand,
}

/// `keel admin` subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum AdminCommand {
    /// Show every member: role, HTTP address, applied index and lag behind the leader.
    Status,
    /// Make a node the leader once it has caught up (a learner is made a voter first). Without
    /// an id, hand leadership to the most caught-up other voter.
    Promote {
        /// The node to promote (its number or its name).
        id: Option<NodeName>,
        /// Only make a learner a voter; leave leadership where it is.
        #[arg(long, requires = "id")]
        voter_only: bool,
    },
    /// Turn a voter into a learner (a non-voting replica).
    Demote {
        /// The node to demote (its number or its name).
        id: NodeName,
    },
    /// Add a running node as a voter, or with --learner as a learner. Start it with
    /// `keel serve --join <member URL>` (without --join it would found a cluster of its own);
    /// or re-add a removed node that kept its data directory.
    Add {
        /// The new node's id: its `--id`, a number or a name.
        id: NodeName,
        /// Its Raft address, host:port.
        #[arg(long)]
        raft_addr: String,
        /// Its HTTP address, host:port.
        #[arg(long)]
        http_addr: String,
        /// Add it as a learner (a non-voting read replica).
        #[arg(long)]
        learner: bool,
    },
    /// Remove a node from the cluster, voter or learner, running or dead.
    Remove {
        /// The node to remove (its number or its name).
        id: NodeName,
    },
    /// Rebuild a node whose data differs from the other replicas' (`keel check` names it) or
    /// is damaged: remove it, have it delete its data and rejoin, and wait until it has caught
    /// up from the leader's snapshot. The node must be running and must not lead; a node that
    /// refuses to start (its stored state is damaged) is rebuilt with --data-dir instead.
    Rebuild {
        /// The node to rebuild (its number or its name).
        #[arg(long = "node")]
        id: NodeName,
        /// The stopped node's data directory, on this machine: remove the node through the
        /// cluster and delete its replicated state here; then start it again with --join.
        #[arg(long, value_name = "DIR")]
        data_dir: Option<std::path::PathBuf>,
    },
    /// Run SQLite's VACUUM on every replica, at one log position (writes wait while it runs;
    /// it needs free disk about the database's size). Raise --timeout for a large database.
    Vacuum,
    /// Offline, on a stopped node's data directory: rewrite the membership so that the voters
    /// named, survivors of a cluster that lost its majority for good, can elect a leader among
    /// themselves. Run it on every node named, with the same --voters, before starting any.
    /// Writes that only the lost nodes had are lost (docs/operations.md).
    Recover {
        /// The stopped node's data directory.
        #[arg(long, value_name = "DIR")]
        data_dir: std::path::PathBuf,
        /// The surviving voters to recover with, comma-separated (numbers or names); each must
        /// be a member.
        #[arg(long, value_delimiter = ',', required = true, num_args = 1..)]
        voters: Vec<NodeName>,
        /// Only print what would be written.
        #[arg(long)]
        dry_run: bool,
    },
}

/// Runs `keel admin …`. A failure is printed as one line, `error: <reason>`, and exits with
/// status 1.
pub async fn run(args: AdminArgs) -> anyhow::Result<()> {
    if let Err(e) = execute(args).await {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
    Ok(())
}

/// Carries out one `keel admin` command, printing its result.
async fn execute(args: AdminArgs) -> anyhow::Result<()> {
    if let AdminCommand::Recover { data_dir, voters, dry_run } = &args.command {
        return crate::recover::run(data_dir, voters, *dry_run);
    }
    let cluster = Cluster::new(&args.cluster, args.timeout, args.cacert.as_deref())?;
    let client = &cluster.client;
    match args.command {
        AdminCommand::Status => {
            print!("{}", cluster.status().await?);
        }
        AdminCommand::Promote { id: None, .. } => {
            let answer = client.step_down(None).await.map_err(failed)?;
            println!("node {} is now the leader (term {})", answer.label(), answer.term);
        }
        AdminCommand::Promote { id: Some(id), voter_only: false } => {
            let answer = client.promote(&id).await.map_err(failed)?;
            println!("node {id} is now the leader (term {})", answer.term);
        }
        AdminCommand::Promote { id: Some(id), voter_only: true } => {
            client.set_voter(&id, true).await.map_err(failed)?;
            println!("node {id} is now a voter");
        }
        AdminCommand::Demote { id } => {
            client.set_voter(&id, false).await.map_err(failed)?;
            println!("node {id} is now a learner");
        }
        AdminCommand::Add { id, raft_addr, http_addr, learner } => {
            let change = MembershipChange::add(&id, !learner, raft_addr.clone(), http_addr.clone());
            client.change_membership(&change).await.map_err(failed)?;
            let role = if learner { "learner" } else { "voter" };
            println!("node {id} added as a {role} (raft {raft_addr}, http {http_addr})");
        }
        AdminCommand::Remove { id } => {
            client.remove(&id).await.map_err(failed)?;
            println!("node {id} removed from the cluster");
        }
        AdminCommand::Rebuild { id, data_dir: None } => rebuild(client, id, args.timeout).await?,
        AdminCommand::Rebuild { id, data_dir: Some(dir) } => {
            rebuild_offline(client, id, &dir).await?
        }
        AdminCommand::Vacuum => {
            let answer = client.vacuum().await.map_err(failed)?;
            println!(
                "VACUUM ran at log index {} ({:.1} s on the leader); every replica runs it there",
                answer.lsn, answer.seconds
            );
        }
        AdminCommand::Recover { .. } => unreachable!("handled above, without a cluster"),
    }
    Ok(())
}

/// `keel admin rebuild --node ID` (see [`AdminCommand::Rebuild`]).
async fn rebuild(client: &keel_api::Client, id: NodeName, timeout: Duration) -> anyhow::Result<()> {
    let members = client.nodes().await.map_err(failed)?;
    let is = |m: &keel_api::cluster::NodeInfo| m.id == id.to_string();
    let Some(target) = members.iter().find(|m| is(m)) else {
        bail!("node {id} is not a member of the cluster");
    };
    if target.leader {
        bail!("node {id} leads: make another node the leader first (keel admin promote)");
    }
    let node = client.on(&target.api_addr)?;
    // It must answer before it is removed: a removed node that cannot be told to rebuild
    // would be left out of the cluster with its old data.
    node.ready(true, false).await.with_context(|| format!("node {id} does not answer"))?;
    let join: Vec<String> = members.iter().filter(|m| !is(m)).map(|m| m.api_addr.clone()).collect();
    client.remove(&id).await.map_err(failed)?;
    println!("node {id} removed from the cluster; it deletes its data and rejoins");
    // Its answer may be cut short when it restarts: what counts is that it comes back. A
    // refusal, though, is an answer: the node is out of the cluster and must be told again.
    match node.rebuild(&join).await {
        Ok(_) => {}
        Err(e @ keel_api::Error::Refused { .. }) => bail!(
            "node {id} is removed but refused to rebuild: {e}; stop it, delete its data directory and start it again with --join"
        ),
        Err(e) => tracing::debug!(error = %e, "the rebuild request had no complete answer"),
    }
    let started = std::time::Instant::now();
    let progress = indicatif::ProgressBar::new_spinner();
    progress.enable_steady_tick(Duration::from_millis(200));
    loop {
        progress.set_message(format!("waiting for node {id} to rejoin and catch up"));
        // The leader's view: its member list carries each member's applied index.
        let leader = match client.find_leader().await {
            Ok(url) => Some(client.on(&url)?),
            Err(_) => None,
        };
        if let Some(leader) = leader
            && let Ok(status) = leader.status().await
            && let Ok(members) = leader.nodes().await
            && let Some(m) = members.iter().find(|m| is(m))
            && m.replication.as_ref().and_then(|r| r.applied_index)
                >= Some(status.node.commit_index)
        {
            progress.finish_and_clear();
            println!(
                "node {id} rebuilt: it rejoined with a fresh copy and caught up in {:.1}s",
                started.elapsed().as_secs_f64()
            );
            return Ok(());
        }
        if started.elapsed() > timeout {
            progress.finish_and_clear();
            bail!("node {id} did not rejoin and catch up within {timeout:?}; see its log");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `keel admin rebuild --node ID --data-dir DIR`: for a node that is stopped, typically one
/// that refuses to start because its stored state is damaged. Takes the data directory's lock
/// (so the node cannot start meanwhile, and a running node is refused), removes the node
/// through the cluster (a voter that forgot its log and votes must not keep its seat, so the
/// removal comes first and nothing is deleted if it fails), then deletes the replicated state
/// ([`node::rebuild::wipe`]) and says how to start the node again.
async fn rebuild_offline(
    client: &keel_api::Client,
    id: NodeName,
    dir: &std::path::Path,
) -> anyhow::Result<()> {
    if !dir.is_dir() {
        bail!("{} is not a directory: give the node's --data-dir", dir.display());
    }
    if !node::rebuild::REPLICATED_STATE.iter().any(|name| dir.join(name).exists()) {
        bail!(
            "{} holds no Keel data (db/, raft/): it is not a node's data directory",
            dir.display()
        );
    }
    let _lock = crate::data_dir::lock(dir)
        .context("the node must be stopped (without --data-dir, a running node is rebuilt)")?;
    let members = client.nodes().await.map_err(failed)?;
    let is = |m: &keel_api::cluster::NodeInfo| m.id == id.to_string();
    if members.iter().any(is) {
        client.remove(&id).await.map_err(failed)?;
        println!("node {id} removed from the cluster");
    } else {
        println!("node {id} is not a member of the cluster (already removed)");
    }
    node::rebuild::wipe(dir).with_context(|| format!("deleting the data in {}", dir.display()))?;
    let join: Vec<String> = members.iter().filter(|m| !is(m)).map(|m| m.api_addr.clone()).collect();
    println!(
        "deleted its database, Raft log and snapshots in {}; start it again with its usual flags \
         and --join {}: it joins as a new member and copies the leader's data",
        dir.display(),
        join.join(",")
    );
    Ok(())
}

/// A failed call in `keel admin`'s words: the server's reason and status, or which members
/// did not answer.
fn failed(e: keel_api::Error) -> anyhow::Error {
    match e {
        keel_api::Error::Unreachable(why) => anyhow::anyhow!("no cluster member answered ({why})"),
        other => other.into(),
    }
}

/// The cluster as `keel admin` reaches it: the member URLs it was given.
struct Cluster {
    /// The client: finds the leader among the members (`GET /leader`) and sends to it. One
    /// attempt per command, as a person at a terminal retries by hand.
    client: keel_api::Client,
}

impl Cluster {
    fn new(
        urls: &[String],
        timeout: Duration,
        cacert: Option<&std::path::Path>,
    ) -> anyhow::Result<Cluster> {
        let urls: Vec<&str> = urls.iter().map(|u| u.trim()).filter(|u| !u.is_empty()).collect();
        if urls.is_empty() {
            bail!("--cluster names no member URL");
        }
        let client = keel_api::Client::builder(urls)
            .http(crate::tls::client_builder(cacert)?)
            .timeout(timeout)
            .retry_for(Duration::ZERO)
            .build()?;
        Ok(Cluster { client })
    }

    /// The members as a table, from the leader's `/status` and `/nodes` (from the first
    /// member that answers when none knows a leader: it says why in its own view).
    async fn status(&self) -> anyhow::Result<String> {
        let node = match self.client.find_leader().await {
            Ok(leader) => self.client.on(&leader)?,
            Err(_) => self.client.clone(),
        };
        let status = node.status().await.map_err(failed)?;
        let nodes = node.nodes().await.map_err(failed)?;
        Ok(table(&status.node, &nodes))
    }
}

/// `keel admin status`'s table: a line about leadership, then one row per member.
fn table(me: &keel_api::status::Node, nodes: &[keel_api::cluster::NodeInfo]) -> String {
    let mut out = String::new();
    let my_label = me.name.clone().unwrap_or_else(|| me.id.to_string());
    if me.role == Role::Leader {
        out.push_str(&format!(
            "leader: node {my_label}, term {}, commit index {}\n",
            me.term, me.commit_index
        ));
    } else {
        out.push_str(&format!(
            "no leader: node {my_label}'s view ({}), term {}\n",
            me.role.as_str(),
            me.term
        ));
    }
    let mut rows = vec![["ID", "ROLE", "HTTP", "APPLIED", "LAG"].map(String::from)];
    for n in nodes {
        let is_me = my_label == n.id;
        let role = if n.leader {
            "leader"
        } else if n.voter {
            "follower"
        } else {
            "learner"
        };
        let http = n.api_addr.trim_start_matches("http://");
        let progress = n.replication.as_ref();
        let applied =
            if is_me { Some(me.applied_index) } else { progress.and_then(|p| p.applied_index) };
        let applied = applied.map_or("-".to_string(), |a| a.to_string());
        let lag = if n.leader {
            "-".to_string()
        } else if !n.reachable {
            "unreachable".to_string()
        } else {
            match (progress.and_then(|p| p.lag_entries), progress.and_then(|p| p.lag_ms)) {
                (Some(0), _) => "0".to_string(),
                (Some(e), Some(ms)) => format!("{e} ({ms} ms)"),
                (Some(e), None) => e.to_string(),
                (None, _) => "-".to_string(),
            }
        };
        rows.push([n.id.clone(), role.to_string(), http.to_string(), applied, lag]);
    }
    let widths: Vec<usize> =
        (0..5).map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0)).collect();
    for row in &rows {
        let cells: Vec<String> =
            row.iter().zip(&widths).map(|(cell, &w)| format!("{cell:<w$}")).collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// The innermost error of a chain (reqwest's own message is only "error sending request").
pub(crate) fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut e = e;
    while let Some(source) = e.source() {
        e = source;
    }
    e.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_urls_get_a_scheme() {
        let urls = ["127.0.0.1:4001/".to_string(), " https://a:1 ".to_string(), String::new()];
        let c = Cluster::new(&urls, Duration::from_secs(1), None).unwrap();
        assert_eq!(c.client.nodes_known(), vec!["http://127.0.0.1:4001", "https://a:1"]);
        assert!(Cluster::new(&[String::new()], Duration::from_secs(1), None).is_err());
    }
}
