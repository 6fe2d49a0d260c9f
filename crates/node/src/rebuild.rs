//! Rebuilding a node whose data differs from the other replicas' (`keel admin rebuild`).
//!
//! The operator's command removes the node from the membership through the leader, then asks
//! the node itself (`POST /admin/rebuild`) to rebuild, naming members to rejoin through. The
//! node ([`Node::request_rebuild`]) answers at once; the `keel serve` process then stops the
//! node as for a shutdown, deletes its replicated state ([`wipe`]: database, Raft log,
//! snapshots, spool, and the divergence record) and starts again in place with `--join`: an
//! empty data directory joins as a new member and receives the leader's snapshot, as any new
//! replica does. The process keeps its pid, so supervisors (and `keel local`) see no exit.
//!
//! Caveat: if the process dies between deleting the data and starting again (or the restart
//! itself fails), the data directory is empty and the node is out of the cluster; start it
//! with `--join` (as for any new replica). Started without `--join`, an empty data directory
//! founds a cluster of its own.

use std::path::Path;

use crate::{Error, Node};

/// What the data directory holds that a rebuild deletes (everything Keel keeps there).
pub const REPLICATED_STATE: [&str; 5] =
    ["db", "raft", "snapshots", "tmp", crate::checksum::DIVERGENCE_FILE];

impl Node {
    /// Asks this node to rebuild its data by rejoining through the members at `join` (HTTP
    /// URLs). Refused on the leader, and while the leader still counts this node as a member:
    /// a voter that forgot its log and votes but kept its seat could break Raft's guarantees,
    /// and a removed node is not told of its removal, so the leader is asked.
    pub async fn request_rebuild(&self, join: Vec<String>) -> Result<(), Error> {
        if join.is_empty() {
            return Err(Error::InvalidInput(
                "name the members to rejoin through (\"join\": [\"http://…\"])".into(),
            ));
        }
        if self.is_leader() {
            return Err(Error::InvalidInput(format!(
                "node {} leads: make another node the leader first (keel admin promote)",
                self.id
            )));
        }
        if self.leader_members().await?.contains(&self.id) {
            return Err(Error::InvalidInput(format!(
                "node {} is still a member: remove it first (`keel admin rebuild` does both)",
                self.id
            )));
        }
        tracing::warn!(?join, "rebuild requested: this node stops, deletes its data and rejoins");
        self.rebuild.send_replace(Some(join));
        Ok(())
    }

    /// Waits until a rebuild is requested; returns the members to rejoin through.
    pub async fn rebuild_requested(&self) -> Vec<String> {
        let mut rx = self.rebuild.subscribe();
        loop {
            if let Some(join) = rx.borrow_and_update().clone() {
                return join;
            }
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

/// Deletes the replicated state in `data_dir` (see [`REPLICATED_STATE`]); what is not there
/// is fine.
pub fn wipe(data_dir: &Path) -> std::io::Result<()> {
    for name in REPLICATED_STATE {
        let path = data_dir.join(name);
        let removed = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        match removed {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn wipe_deletes_the_replicated_state_only() {
        let dir = tempfile::tempdir().unwrap();
        for d in ["db", "raft", "snapshots"] {
            std::fs::create_dir_all(dir.path().join(d).join("inner")).unwrap();
            std::fs::write(dir.path().join(d).join("inner/f"), b"x").unwrap();
        }
        std::fs::write(dir.path().join("diverged.json"), b"{}").unwrap();
        std::fs::write(dir.path().join("keep.pem"), b"cert").unwrap();
        super::wipe(dir.path()).unwrap();
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(left, vec!["keep.pem".to_string()]);
        super::wipe(dir.path()).unwrap(); // nothing left to delete is fine
    }
}
