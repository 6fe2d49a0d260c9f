//! `keel local`: a local cluster of real `keel serve` child processes, for trying Keel out.
//!
//! Node N (1-based) listens on HTTP `base + 2(N-1)` and Raft `base + 2(N-1) + 1` on
//! 127.0.0.1 (with `--pg-port P`, also PostgreSQL's protocol on `P + N - 1`), with its data in
//! `<data-dir>/nodeN` and its log in `<data-dir>/nodeN.log`.
//! Node 1 bootstraps the cluster; the others join it (voters first, then learners). Run again
//! with the same data directory, every node restarts from its data and the cluster re-forms.
//! Ctrl-C (or SIGTERM) stops every node with SIGTERM, then SIGKILL after 10 s.
//!
//! With `--tls`, certificates for cluster id `local` are created in `<data-dir>/tls` by
//! [`crate::certs`] (only those missing), and every node runs with `--tls-dir` pointing there:
//! HTTPS on the client API, mutual TLS between nodes. Extra `keel serve` flags that include
//! `--tls-dir` make [`start_cluster`] speak HTTPS to the nodes, trusting that directory's CA.
//!
//! Readiness (`/readyz` of each node in turn) and the leader line are asked through
//! [`keel_api::Client`], pinned to one node at a time ([`keel_api::Client::on`]);
//! [`client_builder`] gives the benchmarks a client of the same nodes.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

use crate::LocalArgs;

/// One `keel serve` child process of a local cluster.
pub struct LocalNode {
    /// Node id (1-based).
    pub id: u64,
    /// HTTP address.
    pub http: String,
    /// Whether it is a learner.
    pub learner: bool,
    /// The process.
    pub child: Child,
    /// Its log file.
    pub log: PathBuf,
    /// The command line that started it, to restart it the same way.
    args: Vec<String>,
}

impl LocalNode {
    /// Starts `keel serve` with `args`, stderr appended to `log`.
    fn spawn(
        id: u64,
        http: String,
        learner: bool,
        log: PathBuf,
        args: Vec<String>,
    ) -> anyhow::Result<LocalNode> {
        let exe = std::env::current_exe().context("locating the keel binary")?;
        let logfile = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("opening {}", log.display()))?;
        let child = Command::new(exe)
            .args(&args)
            .stdout(Stdio::null())
            .stderr(logfile)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting node {id}"))?;
        Ok(LocalNode { id, http, learner, child, log, args })
    }

    /// Starts the node again with the same arguments (after it exited or was killed).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        *self = LocalNode::spawn(
            self.id,
            self.http.clone(),
            self.learner,
            self.log.clone(),
            self.args.clone(),
        )?;
        Ok(())
    }
}

/// Starts `voters + learners` nodes on 127.0.0.1 from `base_port`, data in `dir`, and waits
/// until every node is ready.
pub async fn start_cluster(
    dir: &std::path::Path,
    voters: u64,
    learners: u64,
    base_port: u16,
    pg_port: Option<u16>,
    extra: &[String],
    quiet: bool,
) -> anyhow::Result<Vec<LocalNode>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // A port already taken would let the readiness checks below reach whatever holds it (say
    // another `keel local`) and call this cluster ready while its own node has exited.
    let last = u32::from(base_port) + 2 * u32::try_from(voters + learners).unwrap_or(u32::MAX);
    for port in u32::from(base_port)..last.min(u32::from(u16::MAX) + 1) {
        let port = u16::try_from(port).unwrap_or(u16::MAX);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
            bail!(
                "127.0.0.1:{port} is in use (another keel local?); stop it or pick another --base-port"
            );
        }
    }
    let mut nodes = Vec::new();
    for id in 1..=voters + learners {
        let node = spawn_node(dir, id, base_port, pg_port, id > voters, extra)?;
        if !quiet {
            println!(
                "started node {id} ({}) {}://{}  log: {}",
                if node.learner { "learner" } else { "voter" },
                scheme(extra),
                node.http,
                node.log.display()
            );
        }
        nodes.push(node);
    }
    let client = client_builder(&nodes, extra)?
        .timeout(Duration::from_secs(1))
        .retry_for(Duration::ZERO)
        .build()?;
    if let Err(e) = wait_ready(&client, &mut nodes, quiet, scheme(extra)).await {
        stop_all(&mut nodes).await;
        return Err(e);
    }
    Ok(nodes)
}

/// Starts node `id` of a local cluster (ports and data directory as in the module docs); every
/// node but node 1 joins node 1. With `pg_port`, it also serves PostgreSQL's protocol on
/// `pg_port + id - 1`. Does not wait for it to be ready.
pub fn spawn_node(
    dir: &std::path::Path,
    id: u64,
    base_port: u16,
    pg_port: Option<u16>,
    learner: bool,
    extra: &[String],
) -> anyhow::Result<LocalNode> {
    let port = base_port as u64 + 2 * (id - 1);
    if port + 1 > u16::MAX as u64 {
        bail!("port {port} is out of range; choose a lower --base-port");
    }
    let http = format!("127.0.0.1:{port}");
    let raft = format!("127.0.0.1:{}", port + 1);
    let mut args: Vec<String> =
        vec!["serve".into(), "--id".into(), id.to_string(), "--http-addr".into(), http.clone()];
    args.extend([
        "--raft-addr".into(),
        raft,
        "--data-dir".into(),
        dir.join(format!("node{id}")).display().to_string(),
    ]);
    if id > 1 {
        args.extend(["--join".into(), format!("{}://127.0.0.1:{base_port}", scheme(extra))]);
    }
    if learner {
        args.push("--learner".into());
    }
    if let Some(pg) = pg_port {
        let port = u64::from(pg) + id - 1;
        if port > u64::from(u16::MAX) {
            bail!("PostgreSQL port {port} is out of range; choose a lower --pg-port");
        }
        args.extend(["--pg-addr".into(), format!("127.0.0.1:{port}")]);
    }
    args.extend(extra.iter().cloned());
    let log = dir.join(format!("node{id}.log"));
    LocalNode::spawn(id, http, learner, log, args)
}

/// Starts the cluster, waits until it is ready, prints how to use it, and waits for Ctrl-C.
pub async fn run(args: LocalArgs) -> anyhow::Result<()> {
    let total = args.nodes + args.learners;
    let mut extra = Vec::new();
    if args.tls {
        let dir = args.data_dir.join("tls");
        ensure_certs(&dir, total)?;
        extra = vec!["--tls-dir".to_string(), dir.display().to_string()];
    }
    if args.fk {
        extra.push("--fk".to_string());
    }
    let start = start_cluster(
        &args.data_dir,
        args.nodes,
        args.learners,
        args.base_port,
        args.pg_port,
        &extra,
        false,
    );
    let mut nodes = tokio::select! {
        r = start => r?,
        _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted"),
    };
    let scheme = scheme(&extra);
    let client = client_builder(&nodes, &extra)?.retry_for(Duration::ZERO).build()?;
    let leader = client.on(&format!("{scheme}://{}", nodes[0].http))?.leader().await.ok();
    println!();
    match leader {
        Some(l) => {
            println!("cluster ready: {total} nodes, leader is node {} ({})", l.id, l.api_addr)
        }
        None => println!("cluster ready: {total} nodes"),
    }
    let example = &nodes[0].http;
    // `curl --cacert <dir>/tls/ca.pem` under --tls.
    let curl = match tls_dir(&extra) {
        Some(dir) => format!("curl --cacert {}", dir.join("ca.pem").display()),
        None => "curl".to_string(),
    };
    println!("try:");
    if args.tls {
        println!("  {curl} {scheme}://{example}/status");
    }
    println!(
        "  {curl} -XPOST '{scheme}://{example}/db/execute?pretty' -H 'Content-Type: application/json' -d '[\"CREATE TABLE IF NOT EXISTS foo (id INTEGER PRIMARY KEY, name TEXT)\", [\"INSERT INTO foo(name) VALUES(?)\", \"fiona\"]]'"
    );
    if let Some(other) = nodes.get(1) {
        println!(
            "  {curl} -G '{scheme}://{}/db/query?pretty&level=none' --data-urlencode 'q=SELECT * FROM foo'",
            other.http
        );
    }
    println!("  {curl} '{scheme}://{example}/nodes?pretty&nonvoters'");
    if let (Some(pg), Some(other)) = (args.pg_port, nodes.get(1)) {
        println!(
            "  psql 'host=127.0.0.1 port={} user=keel' -c 'SELECT * FROM foo'   (node {}, reads)",
            u64::from(pg) + other.id - 1,
            other.id
        );
    }
    println!("press Ctrl-C to stop the cluster");

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let watch = async {
        // Report each node that dies on its own (killed to try a failover, say) and keep the
        // others running: the cluster stops only on Ctrl-C or SIGTERM.
        let mut reported = std::collections::BTreeSet::new();
        loop {
            for n in nodes.iter_mut() {
                if let Ok(Some(status)) = n.child.try_wait()
                    && reported.insert(n.id)
                {
                    eprintln!(
                        "node {} exited ({status}); the others keep running; see {}",
                        n.id,
                        n.log.display()
                    );
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        () = watch => {}
    }
    println!("stopping the cluster");
    stop_all(&mut nodes).await;
    Ok(())
}

/// The `--tls-dir` among extra `keel serve` flags.
fn tls_dir(extra: &[String]) -> Option<PathBuf> {
    extra.iter().position(|a| a == "--tls-dir").and_then(|i| extra.get(i + 1)).map(PathBuf::from)
}

/// `https` if the nodes run with `--tls-dir`, else `http`.
pub fn scheme(extra: &[String]) -> &'static str {
    if tls_dir(extra).is_some() { "https" } else { "http" }
}

/// A client builder for `nodes`, started with the extra `keel serve` flags `extra`: every
/// node's URL, in HTTPS and trusting the `--tls-dir` CA if there is one.
pub fn client_builder(
    nodes: &[LocalNode],
    extra: &[String],
) -> anyhow::Result<keel_api::ClientBuilder> {
    let ca = tls_dir(extra).map(|dir| dir.join("ca.pem"));
    let urls = nodes.iter().map(|n| format!("{}://{}", scheme(extra), n.http));
    Ok(keel_api::Client::builder(urls).http(crate::tls::client_builder(ca.as_deref())?))
}

/// Creates the certificates of nodes `1..=nodes` in `dir` that are missing (cluster id
/// `local`, reusing the CA there if any).
fn ensure_certs(dir: &std::path::Path, nodes: u64) -> anyhow::Result<()> {
    let missing: Vec<u64> =
        (1..=nodes).filter(|id| !dir.join(format!("node-{id}.pem")).exists()).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let args = crate::certs::CertsArgs {
        dir: dir.to_path_buf(),
        cluster_id: "local".into(),
        nodes: missing.into_iter().map(raft::NodeName::numeric).collect(),
        ip: vec![std::net::IpAddr::from([127, 0, 0, 1])],
        dns: vec!["localhost".into()],
        days: 825,
        force: false,
    };
    for line in crate::certs::create(&args)? {
        println!("{line}");
    }
    Ok(())
}

/// Waits until each node in turn answers `/readyz` with 200 (60 s in all), or exits.
async fn wait_ready(
    client: &keel_api::Client,
    nodes: &mut [LocalNode],
    quiet: bool,
    scheme: &str,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    for n in nodes.iter_mut() {
        loop {
            if let Ok(Some(status)) = n.child.try_wait() {
                bail!("node {} exited during startup ({status}); see {}", n.id, n.log.display());
            }
            let node = client.on(&format!("{scheme}://{}", n.http))?;
            if node.ready(false, false).await.is_ok_and(|r| r.ready) {
                if !quiet {
                    println!("node {} ready{}", n.id, if n.learner { " (learner)" } else { "" });
                }
                break;
            }
            if Instant::now() > deadline {
                bail!("node {} not ready after 60 s; see {}", n.id, n.log.display());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// Stops every node: SIGTERM, then SIGKILL for those still running after 10 s.
pub async fn stop_all(nodes: &mut [LocalNode]) {
    for n in nodes.iter() {
        if let Some(pid) = n.child.id() {
            // SAFETY: kill(2) with a pid of our own child and a valid signal has no memory effects.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGTERM);
            }
        }
    }
    for n in nodes.iter_mut() {
        match tokio::time::timeout(Duration::from_secs(10), n.child.wait()).await {
            Ok(_) => {}
            Err(_) => {
                eprintln!("node {} did not stop within 10 s; killing it", n.id);
                let _ = n.child.kill().await;
            }
        }
    }
}
