//! `keel serve`: one node, from its flags. Builds the node's configuration, starts it
//! ([`node::Node::start`]: database, state machine, Raft, writer, write queue), serves the
//! node-to-node routes ([`node::peer::router`]) on the Raft address and the client API
//! ([`crate::http`]) on the HTTP address, each with its TLS, bootstraps or joins, and on
//! SIGINT/SIGTERM shuts down (the node flushes its write queue first).
//!
//! Data directory layout: `db/` (the database, with its applied log position inside; see
//! [`sql::Db::open`]), `raft/` (the WAL: Raft log segments, vote, committed position),
//! `snapshots/`, `tmp/` (backups and loads being spooled; emptied at start), and `lock`, which
//! the node holds while it runs ([`crate::data_dir`]).

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::args::DiscoveryMode;
use crate::http;
use crate::{PlantedBug, ServeArgs};

/// How long `--leave-on-shutdown` tries to leave the cluster before shutting down anyway.
const LEAVE_WITHIN: std::time::Duration = std::time::Duration::from_secs(10);

/// Runs a node until SIGINT/SIGTERM, or until Raft stops on a fatal error (then exits non-zero).
pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let (started, started_at) = (std::time::SystemTime::now(), Instant::now());
    let headers =
        crate::headers::Headers::new(args.http_allow_origin.as_deref(), args.auth.is_some())?;
    // Certificates are checked before anything listens: a bad file fails the start.
    let tls = crate::tls::ServeTls::from_args(&args)?;
    let peers = crate::tls::peers(tls.api.is_some(), tls.node.clone())?;
    let credentials = join_credentials(args.join_as.as_deref())?;
    // A bad target fails the start, not the first backup an hour later.
    let backup_target =
        args.backup_to.as_deref().map(crate::backup_to::Target::parse).transpose()?;
    let restore_from = restore_wanted(&args)?;
    let seeds = seeds(&args, tls.api.is_some())?;

    // Bind first, so a port in use fails the start instead of a half-started node.
    let raft_listener = TcpListener::bind(&args.raft_addr)
        .await
        .with_context(|| format!("binding Raft address {}", args.raft_addr))?;
    let http_listener = TcpListener::bind(&args.http_addr)
        .await
        .with_context(|| format!("binding HTTP address {}", args.http_addr))?;
    let pg_listener = match &args.pg_addr {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding PostgreSQL address {addr}"))?,
        ),
        None => None,
    };

    // Held until the process ends: no second node, nor an offline recovery, on this directory.
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating the data directory {}", args.data_dir.display()))?;
    let _lock = crate::data_dir::lock(&args.data_dir)?;

    let planted = |bug| args.unsafe_plant_bug.contains(&bug);
    let config = node::Config {
        id: args.id.id(),
        data_dir: args.data_dir.clone(),
        me: raft::MemberAddr {
            raft_addr: advertised(&args.raft_addr, args.raft_adv_addr.as_deref(), "raft")?,
            http_addr: advertised(&args.http_addr, args.http_adv_addr.as_deref(), "http")?,
            name: args.id.name().map(str::to_string),
        },
        limits: sql::Limits {
            max_result_rows: args.max_result_rows,
            max_result_bytes: args.max_result_bytes,
            statement_time: args.max_statement_time,
            foreign_keys: args.fk,
        },
        readers: args.readers,
        raft: raft::Options {
            heartbeat_interval: args.heartbeat,
            election_timeout_min: args.election_timeout,
            snapshot_entries: args.snapshot_entries,
            max_in_snapshot_log_to_keep: args.trailing_logs,
            wal: wal::Options {
                sync_marks: args.wal_sync_marks,
                unsafe_skip_fsync: planted(PlantedBug::SkipFsync),
                unsafe_trust_damage: planted(PlantedBug::TrustDamagedLog),
                ..wal::Options::default()
            },
            transport: tls
                .node
                .as_ref()
                .map_or_else(raft::network::Transport::plain, |t| t.transport()),
            disk_reserve: args.disk_reserve,
        },
        durability: args.durability,
        sync_timeout: args.sync_timeout,
        write_pipeline: usize::from(args.write_pipeline),
        optimize_interval: Some(args.optimize_interval).filter(|d| !d.is_zero()),
        auto_vacuum_interval: Some(args.auto_vacuum_interval).filter(|d| !d.is_zero()),
        queue: node::queue::Options {
            capacity: usize::try_from(args.write_queue_capacity).unwrap_or(usize::MAX),
            batch_size: usize::try_from(args.write_queue_batch_size).unwrap_or(usize::MAX),
            timeout: args.write_queue_timeout,
            transaction: args.write_queue_tx,
            ..Default::default()
        },
        peers,
        settings: node::Settings {
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
        planted: node::PlantedBugs {
            ack_before_commit: planted(PlantedBug::AckBeforeCommit),
            stale_linearizable: planted(PlantedBug::StaleLinearizable),
            skew_apply_hash: planted(PlantedBug::SkewApplyHash),
        },
    };
    let node = node::Node::start(config).await.map_err(|e| damaged_start(e, &args))?;

    let mut node_router = node::peer::router(node.clone(), tls.node.is_some());
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
    if let Some(url) = &restore_from {
        // Before the client API is served: clients never see the empty database.
        crate::backup_to::restore_on_boot(&node, url).await?;
    }
    if let Some(target) = backup_target {
        node.metrics().backups.set_target(target.url());
        let schedule = crate::backup_to::Schedule {
            every: args.backup_interval.max(std::time::Duration::from_millis(100)),
            retain: args.backup_retain.map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
            compress: args.backup_compress,
        };
        tokio::spawn(crate::backup_to::schedule(Arc::downgrade(&node), target, schedule));
    }
    let reload = crate::tls::reload::Reload { api: tls.api.clone(), node: tls.node.clone() };
    let mut client_router =
        http::router(node.clone()).merge(crate::tls::reload::router(reload.clone()));
    let mut auth_in_force = None;
    if let Some(path) = &args.auth {
        let auth = Arc::new(crate::auth::Auth::load(path, args.auth_failures_per_minute)?);
        tracing::info!(file = %path.display(), "client API requires credentials (--auth)");
        if tls.api.is_none() {
            tracing::warn!(
                "--auth without HTTPS: passwords cross the network in clear text with every \
                 request; serve the client API with --tls-cert/--tls-key or --tls-dir"
            );
        }
        auth_in_force = Some(auth.clone());
        client_router = client_router
            .merge(crate::auth::router(auth.clone()))
            .layer(axum::middleware::from_fn_with_state(auth, crate::auth::guard));
    }
    // Outermost: rqlite's headers, preflights and parameter checks (before authentication, as
    // in rqlite), and the concurrency cap.
    let client_router = crate::serve::client_layers(client_router, limits, headers);
    let api_config = tls.api.as_ref().map(|api| api.config());
    if let Some(listener) = pg_listener {
        let bound = listener.local_addr().map_or_else(|_| "?".into(), |a| a.to_string());
        let (node, auth) = (node.clone(), auth_in_force.clone());
        let (config, max) = (api_config.clone(), args.max_connections);
        tokio::spawn(crate::pg::serve(listener, node, auth, config, max));
        tracing::info!(pg = %bound, "serving reads over PostgreSQL's wire protocol");
    }
    tokio::spawn(crate::tls::reload::on_sighup(auth_in_force, reload));
    tokio::spawn(crate::serve::serve(http_listener, client_router, limits, api_config));
    for bug in &args.unsafe_plant_bug {
        tracing::error!(
            ?bug,
            "a bug is planted on purpose (--unsafe-plant-bug): do not trust this node with data"
        );
    }
    if let Some(node_tls) = &tls.node {
        tracing::info!(identity = %node_tls.identity().uri(), "mutual TLS between nodes");
    }
    tracing::info!(id = %args.id, https = tls.api.is_some(), http = %args.http_addr, raft = %args.raft_addr, data = %args.data_dir.display(), "node started");

    if let Some(after) = args.reap_after {
        tokio::spawn(node::reap::run(Arc::downgrade(&node), after));
    }
    match args.bootstrap_expect {
        Some(n) => node.bootstrap_expect(n, seeds, !args.learner, credentials).await?,
        None => node.bootstrap_or_join(&args.join, !args.learner, credentials).await?,
    }

    let reason = tokio::select! {
        _ = shutdown_signal() => None,
        reason = node.stopped() => Some(reason),
        join = node.rebuild_requested() => {
            node.shutdown().await;
            return rebuild(&args, join);
        }
    };
    match reason {
        None => {
            tracing::info!("shutting down");
            // Queued writes live in memory: the node commits them while it can still reach
            // the leader (or lead), or says how many are lost.
            if args.leave_on_shutdown {
                node.leave_and_shutdown(LEAVE_WITHIN).await;
            } else {
                node.shutdown().await;
            }
            Ok(())
        }
        Some(reason) => {
            node.shutdown_after_failure().await;
            // Raft stops on a log frame that fails its checks when read (to replicate or
            // apply): the same damage a start refuses, with the same way out.
            if reason.contains(wal::CORRUPT) {
                return Err(damaged(&args, "stopped", &format!("raft stopped: {reason}")));
            }
            anyhow::bail!("raft stopped: {reason}")
        }
    }
}

/// Deletes this node's data and starts `keel serve` again in this process (same pid, same
/// flags), joining through `join` unless the flags name members to join already (see
/// [`node::rebuild`]). Returns only on failure.
fn rebuild(args: &ServeArgs, join: Vec<String>) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt as _;
    node::rebuild::wipe(&args.data_dir)
        .with_context(|| format!("deleting the data in {} to rebuild", args.data_dir.display()))?;
    let mut argv = std::env::args_os();
    let _program = argv.next();
    let mut command = std::process::Command::new(
        std::env::current_exe().context("finding this program to start it again")?,
    );
    command.args(argv);
    // With --discovery the node finds the cluster again itself (and --join would be refused).
    if args.join.is_empty() && args.discovery.is_none() {
        command.arg("--join").arg(join.join(","));
    }
    tracing::warn!(data = %args.data_dir.display(), "data deleted; starting again to rejoin the cluster");
    let error = command.exec();
    Err(anyhow::anyhow!("starting again after deleting the data failed: {error}"))
}

/// The `--restore-from` URL if it applies: a node with an empty data directory and no `--join`
/// (the first node of a new cluster). Otherwise it is ignored, and said so.
fn restore_wanted(args: &ServeArgs) -> anyhow::Result<Option<String>> {
    let Some(url) = &args.restore_from else { return Ok(None) };
    if !args.join.is_empty() {
        tracing::info!("--restore-from ignored: a node that joins gets its data from the cluster");
        return Ok(None);
    }
    if !crate::backup_to::is_empty_data_dir(&args.data_dir)? {
        tracing::info!(data = %args.data_dir.display(), "--restore-from ignored: the data directory holds a node already");
        return Ok(None);
    }
    Ok(Some(url.clone()))
}

/// Where `--bootstrap-expect` finds the other nodes: `--join`, or DNS with `--discovery`
/// (whose lookups are set up here, so bad discovery flags fail the start).
fn seeds(args: &ServeArgs, https: bool) -> anyhow::Result<node::bootstrap::Seeds> {
    use node::discovery::{Discovery, Records};
    let Some(mode) = args.discovery else {
        if args.bootstrap_expect.is_some() && args.join.is_empty() {
            anyhow::bail!(
                "--bootstrap-expect needs the other nodes: --join URL,URL,... or --discovery dns|dns-srv"
            );
        }
        return Ok(node::bootstrap::Seeds::Join(args.join.clone()));
    };
    let host = args.discovery_host.clone().unwrap_or_default();
    let records = match mode {
        DiscoveryMode::Dns => {
            if args.discovery_service.is_some() {
                anyhow::bail!(
                    "--discovery-service is for --discovery dns-srv (SRV records carry their ports); --discovery dns takes --discovery-port"
                );
            }
            let port = match args.discovery_port {
                Some(port) => port,
                None => {
                    let own = advertised(&args.http_addr, args.http_adv_addr.as_deref(), "http")?;
                    own.rsplit_once(':').and_then(|(_, port)| port.parse().ok()).with_context(
                        || format!("cannot tell the port of {own}: give --discovery-port"),
                    )?
                }
            };
            Records::Address { host, port }
        }
        DiscoveryMode::DnsSrv => {
            if args.discovery_port.is_some() {
                anyhow::bail!(
                    "--discovery-port is for --discovery dns: with dns-srv each SRV record names its port"
                );
            }
            let service = args.discovery_service.clone().unwrap_or_else(|| "keel".to_string());
            Records::Service { host, service }
        }
    };
    let discovery =
        Discovery::new(records, args.discovery_resolver, https).map_err(anyhow::Error::msg)?;
    Ok(node::bootstrap::Seeds::Discovery(Arc::new(discovery)))
}

/// `--join-as USER:PASSWORD`, split.
fn join_credentials(join_as: Option<&str>) -> anyhow::Result<Option<(String, String)>> {
    match join_as {
        None => Ok(None),
        Some(c) => match c.split_once(':') {
            Some((user, password)) => Ok(Some((user.to_string(), password.to_string()))),
            None => anyhow::bail!("--join-as must be USER:PASSWORD"),
        },
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

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler cannot fail on Unix");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// A start that failed on damaged storage, in words an operator can act on: what was found,
/// that the node will not vote or serve on it, and the command that rebuilds it. Any other
/// error passes as it is.
fn damaged_start(error: anyhow::Error, args: &ServeArgs) -> anyhow::Error {
    let Some(found) = error.chain().find_map(damage_found) else { return error };
    damaged(args, "will not start", &found)
}

/// The error of a node that stops on damaged storage (`what` it does: "will not start",
/// "stopped"): what was `found`, and how to rebuild it.
fn damaged(args: &ServeArgs, what: &str, found: &str) -> anyhow::Error {
    let dir = args.data_dir.display();
    let id = &args.id;
    anyhow::anyhow!(
        "node {id} {what}: its stored state is damaged ({found}). It does not vote or \
         serve on damaged state. Rebuild it from the other members: `keel admin --cluster \
         <a member's URL> rebuild --node {id} --data-dir {dir}`, then start it again with \
         --join <the members' URLs>"
    )
}

/// What `cause` says was found damaged, if it is storage damage: the Raft log's (or its
/// metadata's) checks, or SQLite finding its file malformed, not a database, or failing a
/// page's checksum.
fn damage_found(cause: &(dyn std::error::Error + 'static)) -> Option<String> {
    if let Some(corrupt @ wal::Error::Corrupt { .. }) = cause.downcast_ref::<wal::Error>() {
        return Some(corrupt.to_string());
    }
    if let Some(rusqlite::Error::SqliteFailure(e, _)) = cause.downcast_ref::<rusqlite::Error>()
        && (matches!(
            e.code,
            rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase
        ) || e.extended_code == rusqlite::ffi::SQLITE_IOERR_DATA)
    {
        return Some(format!("database file: {cause}"));
    }
    None
}
