//! One node, wired in one place: database, state machine, Raft, write path, write queue (and
//! its flusher), HTTP servers, bootstrap or join, and shutdown (which flushes the write queue
//! first).
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
    let (started, started_at) = (std::time::SystemTime::now(), Instant::now());
    let headers = Arc::new(crate::headers::Headers::new(
        args.http_allow_origin.as_deref(),
        args.auth.is_some(),
    )?);
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
        foreign_keys: args.fk,
    });
    let readers = db.readers(args.readers.max(1)).context("opening read connections")?;
    let image_source = db.image_source();
    let db = Arc::new(Mutex::new(db));
    let replica = follower::Replica::new(db.clone()).context("reading the applied position")?;
    // Spooled backups and loads of a previous run are garbage now.
    let _ = std::fs::remove_dir_all(dir.join("tmp"));

    // Certificates are checked before anything listens: a bad file fails the start.
    let tls = crate::tls::ServeTls::from_args(&args)?;
    let peers = crate::tls::PeerClients::new(tls.api.is_some(), tls.node.clone())?;

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
        transport: tls
            .node
            .as_ref()
            .map_or_else(raft::network::Transport::plain, |t| t.transport()),
    };
    let raft::Started { raft, stats: snapshots, log } =
        raft::start_node(args.id, &dir, &raft_options, Arc::new(replica.clone())).await?;
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
    let me = raft::MemberAddr {
        raft_addr: advertised(&args.raft_addr, args.raft_adv_addr.as_deref(), "raft")?,
        http_addr: advertised(&args.http_addr, args.http_adv_addr.as_deref(), "http")?,
    };
    let (queue, queue_receiver) = crate::queue::Queue::new(
        args.id,
        crate::queue::Options {
            capacity: usize::try_from(args.write_queue_capacity).unwrap_or(usize::MAX),
            batch_size: usize::try_from(args.write_queue_batch_size).unwrap_or(usize::MAX),
            timeout: args.write_queue_timeout,
            transaction: args.write_queue_tx,
            ..Default::default()
        },
    );
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
        log,
        peers: peers.clone(),
        settings: crate::status::Settings {
            http_bind: args.http_addr.clone(),
            auth: args.auth.is_some(),
            tls: tls.api.is_some(),
            allow_origin: args.http_allow_origin.clone(),
            heartbeat: args.heartbeat,
            election_timeout: args.election_timeout,
            snapshot_entries: args.snapshot_entries,
            trailing_logs: args.trailing_logs,
            started,
            started_at,
        },
        queue: queue.clone(),
    }));
    tokio::spawn(crate::queue::flush::run(state.clone(), queue_receiver));

    let mut node_router = raft::network::router_with(raft.clone(), contact, tls.node.is_some())
        .merge(http::internal_router(state.clone()));
    if let Some(node_tls) = &tls.node {
        // Every node-to-node route: a node certificate of this cluster, or 403.
        node_router = node_router.layer(axum::middleware::from_fn_with_state(
            node_tls.clone(),
            crate::tls::require_node,
        ));
    }
    let limits = crate::serve::Limits {
        max_connections: args.max_connections,
        max_requests: args.max_concurrent_requests,
        header_timeout: args.http_header_timeout,
        body_timeout: args.http_body_timeout,
    };
    let node_config = tls.node.as_ref().map(|t| t.server_config());
    tokio::spawn(crate::serve::serve(raft_listener, node_router, limits, node_config));
    let mut client_router = http::router(state);
    if let Some(path) = &args.auth {
        let auth = Arc::new(crate::auth::Auth::load(path)?);
        tracing::info!(file = %path.display(), "client API requires credentials (--auth)");
        if tls.api.is_none() {
            tracing::warn!(
                "--auth without HTTPS: passwords cross the network in clear text with every \
                 request; serve the client API with --tls-cert/--tls-key or --tls-dir"
            );
        }
        tokio::spawn(crate::auth::reload_on_sighup(auth.clone()));
        client_router = client_router
            .merge(crate::auth::router(auth.clone()))
            .layer(axum::middleware::from_fn_with_state(auth, crate::auth::guard));
    }
    // Outermost: rqlite's headers and preflights, then its parameter checks (both before
    // authentication, as in rqlite).
    let client_router = crate::serve::client_layers(client_router, limits)
        .layer(axum::middleware::from_fn(crate::params::check))
        .layer(axum::middleware::from_fn_with_state(headers, crate::headers::apply));
    tokio::spawn(crate::serve::serve(http_listener, client_router, limits, tls.api.clone()));
    tokio::spawn(report_applied(args.id, raft.clone(), replica.applied(), peers.clone()));
    tokio::spawn(raft::cluster::log_leadership(raft.clone()));
    for bug in &args.unsafe_plant_bug {
        tracing::error!(
            ?bug,
            "a bug is planted on purpose (--unsafe-plant-bug): do not trust this node with data"
        );
    }
    if let Some(node_tls) = &tls.node {
        tracing::info!(identity = %node_tls.identity().uri(), "mutual TLS between nodes");
    }
    tracing::info!(id = args.id, https = tls.api.is_some(), http = %args.http_addr, raft = %args.raft_addr, data = %dir.display(), "node started");

    if !raft::cluster::is_initialized(&raft).await? {
        if args.join.is_empty() {
            tracing::info!("empty data directory and no --join: bootstrapping a one-node cluster");
            raft::cluster::initialize(&raft, args.id, me).await?;
        } else {
            let (raft2, join, voter) = (raft.clone(), args.join.clone(), !args.learner);
            let peers2 = peers.clone();
            tokio::spawn(async move {
                if let Err(e) =
                    join_cluster(args.id, me, &join, voter, args.join_as.as_deref(), &peers2).await
                {
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
            let (raft2, join, peers2) = (raft.clone(), args.join.clone(), peers.clone());
            tokio::spawn(async move {
                if let Err(e) =
                    join_cluster(args.id, me, &join, true, args.join_as.as_deref(), &peers2).await
                {
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
            // Queued writes live in memory: commit them while this node can still reach the
            // leader (or lead), or say how many are lost.
            queue.drain(crate::queue::DRAIN).await;
            let _ = raft.shutdown().await;
            Ok(())
        }
        Some(reason) => {
            queue.report_lost();
            let _ = raft.shutdown().await;
            anyhow::bail!("raft stopped: {reason}")
        }
    }
}

/// The address the cluster is told for a listener bound to `bind`: `adv` if given, else `bind`,
/// which must then name a host others can reach (not `0.0.0.0` or `[::]`).
fn advertised(bind: &str, adv: Option<&str>, what: &str) -> anyhow::Result<String> {
    if let Some(adv) = adv {
        return Ok(adv.to_string());
    }
    let unspecified = bind.parse::<std::net::SocketAddr>().is_ok_and(|a| a.ip().is_unspecified());
    if unspecified {
        anyhow::bail!(
            "--{what}-addr {bind} listens on every interface, but other nodes cannot reach \
             that address: give the address to advertise with --{what}-adv-addr HOST:PORT"
        );
    }
    Ok(bind.to_string())
}

/// Tells the leader how far this node has applied: after every apply, and once a second while
/// idle (so a new leader learns it too). `sync` and `replicas:K` writes wait on these reports;
/// lag in `/status` and `/metrics` comes from them. Reports are sent one at a time, so a burst
/// of applies coalesces into the latest value.
async fn report_applied(
    id: raft::NodeId,
    raft: raft::Raft,
    mut applied: tokio::sync::watch::Receiver<wal::Lsn>,
    peers: crate::tls::PeerClients,
) {
    let client = peers.node;
    loop {
        if let Ok(Err(_)) = tokio::time::timeout(Duration::from_secs(1), applied.changed()).await {
            return; // The state machine is gone: the node is stopping.
        }
        let index = *applied.borrow_and_update();
        let Some(leader) = raft::cluster::leader(&raft).filter(|l| l.id != id) else { continue };
        let url = format!("{}://{}/keel/applied", peers.node_scheme, leader.node.raft_addr);
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
    me: raft::MemberAddr,
    urls: &[String],
    voter: bool,
    credentials: Option<&str>,
    peers: &crate::tls::PeerClients,
) -> anyhow::Result<()> {
    let credentials = match credentials {
        None => None,
        Some(c) => match c.split_once(':') {
            Some((user, password)) => Some((user.to_string(), password.to_string())),
            None => anyhow::bail!("--join-as must be USER:PASSWORD"),
        },
    };
    // HTTPS joins trust the cluster CA and present the node certificate.
    let client = peers.api.clone();
    let body = serde_json::json!({ "id": id, "raft_addr": me.raft_addr, "http_addr": me.http_addr, "voter": voter });
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut attempt = 0u32;
    loop {
        for url in urls {
            let url = format!("{}/join", url.trim_end_matches('/'));
            attempt += 1;
            let mut request = client.post(&url).json(&body).timeout(Duration::from_secs(120));
            if let Some((user, password)) = &credentials {
                request = request.basic_auth(user, Some(password));
            }
            match request.send().await {
                Ok(resp) if resp.status().is_success() => {
                    tracing::info!(%url, voter, "joined the cluster");
                    return Ok(());
                }
                Ok(resp) => {
                    let status = resp.status();
                    let text = resp.text().await.unwrap_or_default();
                    tracing::warn!(%url, %status, %text, attempt, "join refused; retrying");
                }
                Err(e) => {
                    let error = crate::tls::error_chain(&e);
                    tracing::warn!(%url, %error, attempt, "join failed; retrying")
                }
            }
        }
        if Instant::now() > deadline {
            anyhow::bail!("no member of {urls:?} accepted this node within 5 minutes");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
