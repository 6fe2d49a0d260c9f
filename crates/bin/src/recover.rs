//! `keel admin recover`: quorum recovery, offline, on a stopped node's data directory.
//!
//! When a cluster has lost its voter majority for good, the survivors cannot elect a leader and
//! nothing can change the membership. This command rewrites one survivor's Raft log so that
//! the voters named can elect a leader among themselves ([`raft::recover`] does the rewrite and
//! documents why it is sound); it is run on every survivor named, with the same `--voters`,
//! before any of them starts. Here: the checks a person needs (a data directory, a stopped
//! node: the directory's lock, see [`crate::data_dir`]), the database's applied position for
//! the rewrite, and what to do next. The procedure and what can be lost are in
//! docs/operations.md ("When a majority is lost").

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{Context as _, bail};
use raft::NodeId;
use raft::recover::Plan;

/// Runs `keel admin recover --data-dir DIR --voters ID,… [--dry-run]`, printing what it did
/// (or would do) and what comes next.
pub fn run(data_dir: &Path, names: &[raft::NodeName], dry_run: bool) -> anyhow::Result<()> {
    if !data_dir.is_dir() {
        bail!("{} is not a directory: give the node's --data-dir", data_dir.display());
    }
    if !data_dir.join("raft").is_dir() {
        bail!(
            "{} holds no Raft log (raft/): it is not a Keel data directory, or its node never started",
            data_dir.display()
        );
    }
    let _lock = crate::data_dir::lock(data_dir)
        .context("the node must be stopped before its data directory is recovered")?;
    let applied = applied(data_dir)?;
    let voters: BTreeSet<NodeId> = names.iter().map(raft::NodeName::id).collect();
    let plan = raft::recover::recover(&data_dir.join("raft"), applied.as_ref(), &voters, !dry_run)
        .with_context(|| format!("recovering {}", data_dir.display()))?;
    print!("{}", plan.describe(!dry_run));
    let names: BTreeSet<&raft::NodeName> = names.iter().collect();
    let list: Vec<String> = names.iter().map(ToString::to_string).collect();
    print!("{}", next_steps(data_dir, &list, &plan, dry_run));
    Ok(())
}

/// The database's applied position (term, index, membership), `None` if it has none.
fn applied(data_dir: &Path) -> anyhow::Result<Option<wal::Applied>> {
    let db = data_dir.join("db");
    if !db.join("CURRENT").exists() {
        return Ok(None);
    }
    let db =
        sql::Db::open(&db).with_context(|| format!("opening the database in {}", db.display()))?;
    Ok(db.applied()?)
}

/// What the operator does after this command.
fn next_steps(data_dir: &Path, voters: &[String], plan: &Plan, dry_run: bool) -> String {
    let list = voters.join(",");
    if dry_run {
        return format!(
            "dry run: nothing was written; run it again without --dry-run to recover {}\n",
            data_dir.display()
        );
    }
    let mut steps = Vec::new();
    if voters.len() > 1 {
        steps.push(format!(
            "run `keel admin recover --data-dir <its data directory> --voters {list}` on every \
             other node named, before starting any of them"
        ));
    }
    steps.push(format!(
        "start the node{} named with the usual flags: {} elect{} a leader among voters {list}",
        if voters.len() > 1 { "s" } else { "" },
        if voters.len() > 1 { "they" } else { "it" },
        if voters.len() > 1 { "" } else { "s" },
    ));
    if let Plan::Recover(rewrite) = plan
        && !rewrite.dropped().is_empty()
    {
        steps.push(
            "never start a dropped node on its old data directory: delete the directory first, \
             then it can join again as a new node"
                .to_string(),
        );
    }
    steps.push(
        "add nodes back: start each with `keel serve --join <URL of a recovered node>` on an \
         empty data directory (`keel admin add` for a node started otherwise)"
            .to_string(),
    );
    let mut out = String::from("next:\n");
    for (i, step) in steps.iter().enumerate() {
        out.push_str(&format!("  {}. {step}\n", i + 1));
    }
    out
}
