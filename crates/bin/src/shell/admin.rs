//! The dot-commands about the cluster rather than its data: what it looks like (`.nodes`,
//! `.status`, `.leader`, `.ready`, `.expvar`, `.sysdump`) and the two membership operations
//! rqlite's shell has (`.stepdown`, `.remove`).
//!
//! Each is one or a few calls of the shell's [`keel_api::Client`] through
//! [`super::client::Cluster::call`] (failover, Ctrl-C), the same calls `keel admin` makes
//! ([`crate::admin`]): `.stepdown` is `keel admin promote` without an id (`POST /leader`,
//! rqlite's step-down), `.remove` is `keel admin remove` (`DELETE /remove`). What they show goes
//! to the shell's output.
//!
//! Where Keel differs from rqlite, the command says so: Keel has no Go runtime and so no
//! `/debug/vars`, and `.expvar` shows its Prometheus metrics (`/metrics`) under a comment line
//! that says what they are; `.sysdump` writes `/metrics` where rqlite writes `/debug/vars`.

use std::io::Write as _;
use std::path::Path;

use serde_json::{Value, json};

use super::{Shell, render};

/// The line `.expvar` starts with.
const EXPVAR_NOTE: &str =
    "# Keel has no /debug/vars (Go's expvar); these are its metrics, GET /metrics\n";

/// The pages `.sysdump` writes for each node, in order.
const SYSDUMP_PAGES: [&str; 4] =
    ["/status?pretty", "/nodes?nonvoters&pretty", "/readyz", "/metrics"];

impl Shell {
    /// `.nodes`: the cluster's nodes, as the node in use sees them.
    pub(super) fn nodes(&mut self) -> Result<(), String> {
        let list = self.cluster.refresh()?;
        let current = self.cluster.current();
        let columns = ["id", "http", "raft", "role", "reachable", "shell"].map(String::from);
        let rows: Vec<Vec<Value>> = list
            .iter()
            .map(|node| {
                let role = if node.leader {
                    "leader"
                } else if node.voter {
                    "voter"
                } else {
                    "learner"
                };
                let url = keel_api::base_url(&node.api_addr).map(|(url, _)| url);
                let here = if url.is_ok_and(|url| url == current) { "*" } else { "" };
                vec![
                    json!(node.id),
                    json!(node.api_addr),
                    json!(node.addr),
                    json!(role),
                    json!(if node.reachable { "yes" } else { "no" }),
                    json!(here),
                ]
            })
            .collect();
        self.out.print(&render::table_of(&columns, &rows, "node"))
    }

    /// `.status`: the node in use, its view of the cluster and, on the leader, replication.
    pub(super) fn status(&mut self) -> Result<(), String> {
        let status = self.cluster.call(async |c| c.status().await)?;
        let node = &status.node;
        let text = |v: Option<u64>| v.map_or_else(|| "none".to_string(), |v| v.to_string());
        let mut out = format!(
            "node:        {} ({}) at {}\nleader:      {}\nterm:        {}\n\
             log:         last {}, committed {}, applied {}\nsnapshot:    {}\n",
            node.name.clone().unwrap_or_else(|| node.id.to_string()),
            node.role.as_str(),
            self.cluster.current(),
            node.leader_name.clone().unwrap_or_else(|| text(node.leader_id)),
            node.term,
            node.last_log_index,
            node.commit_index,
            node.applied_index,
            text(status.snapshot.index),
        );
        if let Some(stopped) = &node.stopped {
            out.push_str(&format!("stopped:     {stopped}\n"));
        }
        if let Some(replication) = &status.replication {
            let columns = ["id", "role", "matched", "applied", "lag"].map(String::from);
            let rows: Vec<Vec<Value>> = replication
                .iter()
                .map(|(id, r)| {
                    vec![
                        json!(id),
                        json!(r.role),
                        json!(r.matched_index),
                        json!(r.applied_index),
                        json!(r.lag_entries),
                    ]
                })
                .collect();
            out.push_str("replication:\n");
            out.push_str(&render::table_of(&columns, &rows, "follower"));
        }
        self.out.print(&out)
    }

    /// `.leader`: the leader's id and addresses.
    pub(super) fn leader(&mut self) -> Result<(), String> {
        let leader = self.cluster.call(async |c| c.leader().await)?;
        let line = format!("node {} at {} (raft {})\n", leader.id, leader.api_addr, leader.addr);
        self.out.print(&line)
    }

    /// `.ready`: `ready` or `not ready`, then the node's checks (`/readyz`), as rqlite's shell
    /// says it. Not ready is an answer, not a failure of the command.
    pub(super) fn ready(&mut self) -> Result<(), String> {
        let readiness = self.cluster.call(async |c| c.ready(false, false).await)?;
        let verdict = if readiness.ready { "ready" } else { "not ready" };
        let checks: String = readiness.text.lines().map(|l| format!("  {l}\n")).collect();
        self.out.print(&format!("{verdict}\n{checks}"))
    }

    /// `.expvar`: the node's `/metrics`, under a line that says that is what they are.
    pub(super) fn expvar(&mut self) -> Result<(), String> {
        let metrics = self.cluster.call(async |c| c.text("/metrics").await)?;
        self.out.print(EXPVAR_NOTE)?;
        self.out.print(&metrics)
    }

    /// `.sysdump FILE`: every node's `/status`, `/nodes`, `/readyz` and `/metrics`, each under
    /// a header naming its URL, as rqlite's shell writes them. A node that does not answer
    /// gets one error line instead, and the others are still written.
    pub(super) fn sysdump(&mut self, file: &Path) -> Result<(), String> {
        let nodes = self.cluster.refresh()?;
        let mut text = String::new();
        for node in &nodes {
            let base = keel_api::base_url(&node.api_addr).map_err(|e| e.to_string())?.0;
            for page in SYSDUMP_PAGES {
                let answer = self.cluster.call(async |c| c.on(&base)?.text(page).await);
                text.push_str(&format!(
                    "\n=========================================\nURL: {base}{page}\n"
                ));
                match answer {
                    Ok(body) => text.push_str(&format!("Status: OK\n\n{}\n", body.trim_end())),
                    Err(why) => {
                        text.push_str(&format!("Status: error\n\n{}\n", why.trim_end()));
                        if page == SYSDUMP_PAGES[0] {
                            // A node that does not give its status gives nothing else either.
                            break;
                        }
                    }
                }
            }
        }
        let mut out = std::fs::File::create(file)
            .map_err(|e| format!("cannot write to {}: {e}", file.display()))?;
        out.write_all(text.as_bytes()).map_err(|e| format!("writing {}: {e}", file.display()))?;
        eprintln!("wrote {} ({} nodes)", file.display(), nodes.len());
        Ok(())
    }

    /// `.stepdown [NODEID]`: the leader hands leadership over, to `to` or to the best other
    /// voter, and the shell says who leads now.
    pub(super) fn step_down(&mut self, to: Option<String>) -> Result<(), String> {
        let changed = self.cluster.call(async |c| c.step_down(to.as_deref()).await)?;
        self.out.print(&format!(
            "node {} is now the leader (term {})\n",
            changed.label(),
            changed.term
        ))
    }

    /// `.remove NODEID`: removes a member, voter or learner, running or dead.
    pub(super) fn remove(&mut self, id: String) -> Result<(), String> {
        self.cluster.call(async |c| c.remove(&id).await)?;
        self.out.print(&format!("node {id} removed from the cluster\n"))
    }
}
