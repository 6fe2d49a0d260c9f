//! One node, wired in one place: database, state machine, Raft, write path, HTTP servers,
//! bootstrap or join, and shutdown.
//!
//! Data directory layout: `db/` (the database, with its applied log position inside; see
//! [`sql::Db::open`]), `raft/` (the WAL: Raft log segments, vote, committed position),
//! `snapshots/`, and `tmp/` (backups and loads being spooled; emptied at start).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::net::TcpListener;

use crate::ServeArgs;
use crate::http;

/// Runs a node until SIGINT/SIGTERM, or until Raft stops on a fatal error (then exits non-zero).
pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let dir = args.data_dir.clone();
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("creating data directory {}", dir.display()))?;
    let db_dir = dir.join("db");
    let mut db = sql::Db::open(&db_dir)
        .with_context(|| format!("opening database in {}", db_dir.display()))?;
    db.set_limits(sql::Limits {
        max_result_rows: args.max_result_rows,
        max_result_bytes: args.max_result_bytes,
        statement_time: args.max_statement_time,
    });
    let readers = db.readers(args.readers.max(1)).context("opening read connections")?;
    let image_source = db.image_source();
    let db = Arc::new(Mutex::new(db));
    let replica = follower::Replica::new(db.clone()).context("reading the applied position")?;
    // Spooled backups and loads of a previous run are garbage now.
    let _ = std::fs::remove_dir_all(dir.join("tmp"));

    // Bind first, so a port in use fails the start instead of a half-started node.
    let raft_listener = TcpListener::bind(&args.raft_addr)
        .await
        .with_context(|| format!("binding Raft address {}", args.raft_addr))?;
    let http_listener = TcpListener::bind(&args.http_addr)
        .await
        .with_context(|| format!("binding HTTP address {}", args.http_addr))?;

    let raft_options = raft::Options {
        heartbeat_interval: args.heartbeat,
        election_timeout_min: args.election_timeout,
        snapshot_entries: args.snapshot_entries,
        max_in_snapshot_log_to_keep: args.trailing_logs,
        wal: wal::Options {
            sync_marks: args.wal_sync_marks,
            unsafe_skip_fsync: args.unsafe_plant_bug.contains(&crate::PlantedBug::SkipFsync),
            ..wal::Options::default()
        },
    };
    let (raft, snapshots) =
        raft::start(args.id, &dir, &raft_options, Arc::new(replica.clone())).await?;
    let progress = Arc::new(leader::Progress::default());
    let contact = Arc::new(raft::network::Contact::default());
    let leader = leader::Leader::spawn(
        raft.clone(),
        db.clone(),
        replica.applied(),
        progress.clone(),
        leader::Options {
            sync_timeout: args.sync_timeout,
            unsafe_ack_before_commit: args
                .unsafe_plant_bug
                .contains(&crate::PlantedBug::AckBeforeCommit),
            ..Default::default()
        },
    );
    let me = raft::Node { raft_addr: args.raft_addr.clone(), http_addr: args.http_addr.clone() };
    let state = Arc::new(http::Node::new(http::Parts {
        id: args.id,
        me: me.clone(),
        raft: raft.clone(),
        leader,
        readers,
        applied: replica.applied(),
        progress: progress.clone(),
        contact: contact.clone(),
        durability: args.durability,
        db,
        image_source,
        data_dir: dir.clone(),
        snapshots,
        unsafe_stale_reads: args.unsafe_plant_bug.contains(&crate::PlantedBug::StaleLinearizable),
    }));

    let node_router =
        raft::network::router(raft.clone(), contact).merge(http::internal_router(state.clone()));
    let limits = crate::serve::Limits {
        max_connections: args.max_connections,
        max_requests: args.max_concurrent_requests,
        header_timeout: args.http_header_timeout,
        body_timeout: args.http_body_timeout,
    };
    tokio::spawn(crate::serve::serve(raft_listener, node_router, limits));
    let client_router = crate::serve::client_layers(http::router(state), limits);
    tokio::spawn(crate::serve::serve(http_listener, client_router, limits));
    tokio::spawn(report_applied(args.id, raft.clone(), replica.applied()));
    tokio::spawn(raft::cluster::log_leadership(raft.clone()));
    for bug in &args.unsafe_plant_bug {
        tracing::error!(
            ?bug,
            "a bug is planted on purpose (--unsafe-plant-bug): do not trust this node with data"
        );
    }
    tracing::info!(id = args.id, http = %args.http_addr, raft = %args.raft_addr, data = %dir.display(), "node started");

    if !raft::cluster::is_initialized(&raft).await? {
        if args.join.is_empty() {
            tracing::info!("empty data directory and no --join: bootstrapping a one-node cluster");
            raft::cluster::initialize(&raft, args.id, me).await?;
        } else {
            let (raft2, join, voter) = (raft.clone(), args.join.clone(), !args.learner);
            tokio::spawn(async move {
                if let Err(e) = join_cluster(args.id, me, &join, voter).await {
                    tracing::error!(error = %e, "could not join the cluster; stopping");
                    let _ = raft2.shutdown().await;
                }
            });
        }
    } else if !args.join.is_empty() {
        let me_now = raft::cluster::member(&raft, args.id);
        if !args.learner && me_now.as_ref().is_some_and(|m| !m.voter) {
            // Joined as a voter but stopped before the promotion (the node is added as a
            // learner first and promoted once caught up): ask again, or it stays a learner.
            tracing::info!("a learner started without --learner: asking to be made a voter");
            let (raft2, join) = (raft.clone(), args.join.clone());
            tokio::spawn(async move {
                if let Err(e) = join_cluster(args.id, me, &join, true).await {
                    tracing::error!(error = %e, "could not become a voter; stopping");
                    let _ = raft2.shutdown().await;
                }
            });
        } else {
            tracing::info!("already a cluster member; --join ignored");
        }
    }

    let reason = tokio::select! {
        _ = shutdown_signal() => None,
        reason = raft::cluster::stopped(&raft) => Some(reason),
    };
    match reason {
        None => {
            tracing::info!("shutting down");
            let _ = raft.shutdown().await;
            Ok(())
        }
        Some(reason) => {
            let _ = raft.shutdown().await;
            anyhow::bail!("raft stopped: {reason}")
        }
    }
}

/// Tells the leader how far this node has applied: after every apply, and once a second while
/// idle (so a new leader learns it too). `sync` and `replicas:K` writes wait on these reports;
/// lag in `/status` and `/metrics` comes from them. Reports are sent one at a time, so a burst
/// of applies coalesces into the latest value.
async fn report_applied(
    id: raft::NodeId,
    raft: raft::Raft,
    mut applied: tokio::sync::watch::Receiver<wal::Lsn>,
) {
    let client = match reqwest::Client::builder().no_proxy().tcp_nodelay(true).build() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the applied-report client");
            return;
        }
    };
    loop {
        if let Ok(Err(_)) = tokio::time::timeout(Duration::from_secs(1), applied.changed()).await {
            return; // The state machine is gone: the node is stopping.
        }
        let index = *applied.borrow_and_update();
        let Some(leader) = raft::cluster::leader(&raft).filter(|l| l.id != id) else { continue };
        let url = format!("http://{}/keel/applied", leader.node.raft_addr);
        let body = serde_json::json!({ "id": id, "applied": index });
        if let Err(e) = client.post(&url).json(&body).timeout(Duration::from_secs(1)).send().await {
            tracing::debug!(error = %e, "applied report to the leader failed");
        }
    }
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler cannot fail on Unix");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Asks the cluster (any of `urls`; the request finds the leader) to add this node, retrying for
/// up to five minutes while the cluster is unreachable or electing.
async fn join_cluster(
    id: raft::NodeId,
    me: raft::Node,
    urls: &[String],
    voter: bool,
) -> anyhow::Result<()> {
    let client = reqwest::Client::builder().no_proxy().build()?;
    let body = serde_json::json!({ "id": id, "raft_addr": me.raft_addr, "http_addr": me.http_addr, "voter": voter });
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut attempt = 0u32;
    loop {
        for url in urls {
            let url = format!("{}/join", url.trim_end_matches('/'));
            attempt += 1;
            match client.post(&url).json(&body).timeout(Duration::from_secs(120)).send().await {
                Ok(resp) if resp.status().is_success() => {
                    tracing::info!(%url, voter, "joined the cluster");
                    return Ok(());
                }
                Ok(resp) => {
                    let status = resp.status();
                    let text = resp.text().await.unwrap_or_default();
                    tracing::warn!(%url, %status, %text, attempt, "join refused; retrying");
                }
                Err(e) => tracing::warn!(%url, error = %e, attempt, "join failed; retrying"),
            }
        }
        if Instant::now() > deadline {
            anyhow::bail!("no member of {urls:?} accepted this node within 5 minutes");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
