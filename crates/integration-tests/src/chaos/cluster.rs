//! The cluster under test: `keel serve` processes the nemesis kills, pauses, restarts, starves
//! of disk and clock, and removes and re-adds.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use keel_api::blocking::Client;
use keel_api::status::{Role, Status};

use super::net::Net;
use super::proxy::{Proxies, Target};

/// The libfaketime preload, for clock faults.
const FAKETIME_LIB: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";
/// libfiu's preloads, for fsync faults.
const FIU_LIBS: &str = "/usr/lib/fiu/fiu_run_preload.so /usr/lib/fiu/fiu_posix_preload.so";
/// Bytes of a SQLite `-wal` file's header.
const WAL_HEADER: u64 = 32;
/// Bytes of a `-wal` frame's header (the page follows).
const WAL_FRAME_HEADER: u64 = 24;

/// Size of each node's tmpfs when disk faults are on.
const TMPFS_SIZE: &str = "256m";

/// Whether the faketime and libfiu preloads are installed.
pub fn have_faketime() -> bool {
    Path::new(FAKETIME_LIB).exists()
}

/// Whether libfiu's preloads are installed.
pub fn have_fiu() -> bool {
    FIU_LIBS.split(' ').all(|lib| Path::new(lib).exists())
}

/// How the cluster is laid out and run.
#[derive(Debug, Clone)]
pub struct Layout {
    /// Voters.
    pub voters: usize,
    /// Learners (async replicas).
    pub learners: usize,
    /// The `keel` binary.
    pub keel: PathBuf,
    /// Directory for data directories and logs.
    pub dir: PathBuf,
    /// Extra `keel serve` flags for every node.
    pub serve_flags: Vec<String>,
    /// Start every node under libfaketime, so its clock can be moved while it runs.
    pub clock: bool,
    /// Give every node a tmpfs of its own, so its disk can be filled.
    pub tmpfs: bool,
    /// Let the nodes reach each other through proxies ([`super::proxy`]), so the network can
    /// be made slow and lossy (network-namespace mode only).
    pub proxied: bool,
}

/// What `keel check` said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TableCheck {
    /// Every replica matched (exit 0).
    Same,
    /// Replicas differ (exit 1): its output.
    Different(String),
    /// It could not check (exit 2: a member down or behind): why.
    NotRun(String),
}

/// One node.
#[derive(Debug)]
pub struct ChaosNode {
    /// 1-based id.
    pub id: usize,
    /// A learner?
    pub learner: bool,
    /// HTTP address (host:port).
    pub http: String,
    /// Raft address.
    pub raft: String,
    /// Data directory.
    pub data: PathBuf,
    /// Log file (stderr of every start, appended).
    pub log: PathBuf,
    /// The running process, if any.
    child: Option<Child>,
    /// Stopped with SIGSTOP.
    pub paused: bool,
    /// Removed from the membership (and its process stopped).
    pub removed: bool,
    /// Started with fsync faults.
    pub fsync_faults: bool,
    /// libfaketime's control file (the offset it applies, re-read every second).
    clock_file: PathBuf,
    /// Whether `data` is a tmpfs mount of ours.
    mounted: bool,
    /// Whether its disk is full now (filled by the nemesis, not freed yet).
    pub disk_full: bool,
    /// Storage damage the `corrupt` fault did to it, until the heal rebuilds it.
    pub damaged: Option<super::corrupt::Damage>,
}

/// A file in a node's data directory saying that its disk was filled (see
/// [`Cluster::lose_unsynced`]); wiping the data removes it.
const FILLED_MARK: &str = "chaos-disk-was-full";

/// The cluster.
#[derive(Debug)]
pub struct Cluster {
    /// The nodes, index = id - 1.
    pub nodes: Vec<ChaosNode>,
    /// The network.
    pub net: Net,
    /// The proxies between the nodes, when the layout asks for them.
    pub proxies: Option<Proxies>,
    /// How the cluster was laid out.
    layout: Layout,
    /// `keel_api` with a 20 s timeout, for membership changes and the workload's setup.
    calls: Client,
    /// `keel_api` with a 2 s timeout, for status and readiness polls.
    probes: Client,
    /// Nodes that exited on their own while they should have stayed up (a full disk): each a
    /// violation.
    pub exits: Vec<String>,
    /// Damaged nodes that did not behave as damage requires (one started on a damaged log and
    /// did not refuse to): each a violation.
    pub undetected: Vec<String>,
}

/// A `keel_api` client of the node at `url` alone: one attempt of at most `timeout`, no
/// generated request ids, no idle connections. The checker must see each node's own answer to
/// exactly the request it recorded, so the client's failover and retries stay off: every call
/// goes to that node and nowhere else (a write or a read that needs the leader is forwarded
/// by the node itself), and a redirect is not followed.
pub fn pinned(url: &str, timeout: Duration) -> anyhow::Result<Client> {
    let http = reqwest::Client::builder().no_proxy().pool_max_idle_per_host(0);
    let builder = keel_api::Client::builder([url])
        .http(http)
        .timeout(timeout)
        .retry_for(Duration::ZERO)
        .request_ids(false);
    // A client built from a list of URLs learns the other members and fails over to them;
    // only `on` keeps to one node.
    Ok(Client::from_builder(builder)?.on(url)?)
}

impl Cluster {
    /// Lays the cluster out (addresses, directories, tmpfs mounts); starts nothing.
    pub fn new(net: Net, layout: Layout) -> anyhow::Result<Cluster> {
        let count = layout.voters + layout.learners;
        std::fs::create_dir_all(&layout.dir)?;
        let ports = match &net {
            Net::Netns(_) => Vec::new(),
            Net::Loopback => crate::free_ports(2 * count),
        };
        let mut nodes = Vec::new();
        for i in 1..=count {
            let (http, raft) = match &net {
                Net::Netns(n) => {
                    (format!("{}:4001", n.node_ip(i)), format!("{}:4002", n.node_ip(i)))
                }
                Net::Loopback => (
                    format!("127.0.0.1:{}", ports[2 * (i - 1)]),
                    format!("127.0.0.1:{}", ports[2 * (i - 1) + 1]),
                ),
            };
            let data = layout.dir.join(format!("node{i}"));
            std::fs::create_dir_all(&data)?;
            let clock_file = layout.dir.join(format!("node{i}.faketime"));
            std::fs::write(&clock_file, "+0\n")?;
            nodes.push(ChaosNode {
                id: i,
                learner: i > layout.voters,
                http,
                raft,
                log: layout.dir.join(format!("node{i}.log")),
                data,
                child: None,
                paused: false,
                removed: false,
                fsync_faults: false,
                clock_file,
                mounted: false,
                disk_full: false,
                damaged: None,
            });
        }
        let first = format!("http://{}", nodes[0].http);
        let calls = pinned(&first, Duration::from_secs(20))?;
        let probes = pinned(&first, Duration::from_secs(2))?;
        let proxies = match (&net, layout.proxied) {
            (Net::Netns(n), true) => {
                let targets = (1..=count)
                    .map(|i| Target {
                        ip: n.node_ip(i),
                        http: nodes[i - 1].http.clone(),
                        raft: nodes[i - 1].raft.clone(),
                    })
                    .collect();
                Some(Proxies::start(n.hub_ip(), targets)?)
            }
            _ => None,
        };
        let mut cluster = Cluster {
            nodes,
            net,
            proxies,
            layout,
            calls,
            probes,
            exits: Vec::new(),
            undetected: Vec::new(),
        };
        if cluster.layout.tmpfs {
            for i in 1..=count {
                cluster.mount(i)?;
            }
        }
        Ok(cluster)
    }

    /// Mounts a fresh tmpfs on node `i`'s data directory.
    fn mount(&mut self, i: usize) -> anyhow::Result<()> {
        let node = &mut self.nodes[i - 1];
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={TMPFS_SIZE}"), "tmpfs"])
            .arg(&node.data)
            .output()
            .context("running mount")?;
        if !out.status.success() {
            bail!(
                "mounting a tmpfs on {}: {}",
                node.data.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        node.mounted = true;
        Ok(())
    }

    /// Node `i` (1-based).
    pub fn node(&self, i: usize) -> &ChaosNode {
        &self.nodes[i - 1]
    }

    /// Runs `keel check` against every member (learners included): are the replicas
    /// identical at one log index? `wait` bounds how long members may take to reach it.
    pub fn table_check(&self, wait: Duration) -> TableCheck {
        let output = std::process::Command::new(&self.layout.keel)
            .arg("check")
            .arg("--cluster")
            .arg(self.urls().join(","))
            .arg("--wait")
            .arg(format!("{}ms", wait.as_millis()))
            .args(["--max-rate", "0"])
            .output();
        match output {
            Err(e) => TableCheck::NotRun(format!("cannot run keel check: {e}")),
            Ok(out) => {
                let text = format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                let text = text.trim().replace('\n', " | ");
                match out.status.code() {
                    Some(0) => TableCheck::Same,
                    Some(1) => TableCheck::Different(text),
                    _ => TableCheck::NotRun(text),
                }
            }
        }
    }

    /// Every node's base URL, by index.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| format!("http://{}", n.http)).collect()
    }

    /// Ids of the voters.
    pub fn voters(&self) -> Vec<usize> {
        self.nodes.iter().filter(|n| !n.learner).map(|n| n.id).collect()
    }

    /// Starts node `i` (bootstrapping if it is node 1 with an empty directory, else joining
    /// node 1 … or whichever node is given in `join`).
    pub fn spawn(&mut self, i: usize, join: Option<&str>) -> anyhow::Result<()> {
        let keel = self.layout.keel.clone();
        let clock = self.layout.clock;
        let extra = self.layout.serve_flags.clone();
        let prefix = match &self.net {
            Net::Netns(n) => n.exec_prefix(i),
            Net::Loopback => Vec::new(),
        };
        // Other nodes are told the proxies' addresses, so they reach this one through them.
        let advertised = self.proxies.as_ref().map(|p| {
            ["--http-adv-addr", p.http(i), "--raft-adv-addr", p.raft(i)].map(String::from)
        });
        let node = &mut self.nodes[i - 1];
        if node.child.is_some() {
            return Ok(());
        }
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&node.log)?;
        let mut args: Vec<String> = prefix;
        args.push("env".into());
        if clock {
            args.push(format!("LD_PRELOAD={FAKETIME_LIB}"));
            args.push(format!("FAKETIME_TIMESTAMP_FILE={}", node.clock_file.display()));
            args.push("FAKETIME_CACHE_DURATION=1".into());
            args.push("FAKETIME_DONT_FAKE_MONOTONIC=1".into());
        }
        if node.fsync_faults {
            let preload =
                if clock { format!("{FAKETIME_LIB} {FIU_LIBS}") } else { FIU_LIBS.into() };
            args.retain(|a| !a.starts_with("LD_PRELOAD="));
            args.push(format!("LD_PRELOAD={preload}"));
            args.push(
                "FIU_ENABLE=enable_random name=posix/io/sync/*,probability=0.02,failinfo=5".into(),
            );
        }
        args.push(keel.display().to_string());
        args.extend(
            [
                "serve",
                "--id",
                &i.to_string(),
                "--http-addr",
                &node.http,
                "--raft-addr",
                &node.raft,
                "--data-dir",
            ]
            .map(String::from),
        );
        args.push(node.data.display().to_string());
        if let Some(join) = join {
            args.push("--join".into());
            args.push(join.to_string());
        }
        if node.learner {
            args.push("--learner".into());
        }
        args.extend(advertised.into_iter().flatten());
        args.extend(extra);
        let child = Command::new(&args[0])
            .args(&args[1..])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting node {i}"))?;
        node.child = Some(child);
        node.paused = false;
        Ok(())
    }

    /// Starts node `i` again from its data directory. It is given every other node to join,
    /// which it ignores if it is already a member: a node killed before its join finished
    /// must not bootstrap a cluster of its own.
    pub fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        let join = self.join_urls(i);
        self.spawn(i, Some(&join))
    }

    /// The `--join` URL list for node `i`: every other node.
    pub fn join_urls(&self, i: usize) -> String {
        self.nodes
            .iter()
            .filter(|n| n.id != i)
            .map(|n| format!("http://{}", n.http))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Starts every node: node 1 bootstraps, the others join one at a time. Waits until all
    /// are ready members.
    pub fn start(&mut self) -> anyhow::Result<()> {
        self.spawn(1, None)?;
        self.wait_until(Duration::from_secs(30), "node 1 to bootstrap", |c| {
            c.status(1).is_some_and(|s| s.node.role == Role::Leader)
        })?;
        for i in 2..=self.nodes.len() {
            let join = format!("http://{}", self.nodes[0].http);
            self.spawn(i, Some(&join))?;
            self.wait_until(Duration::from_secs(60), &format!("node {i} to join"), |c| {
                c.ready(i) && c.is_member(i)
            })?;
        }
        Ok(())
    }

    /// Polls `probe` every 50 ms until it holds or `timeout` passes; fails early if a node
    /// that should run has exited.
    pub fn wait_until(
        &mut self,
        timeout: Duration,
        what: &str,
        mut probe: impl FnMut(&Cluster) -> bool,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if probe(self) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("timed out after {timeout:?} waiting for {what}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The Raft address node `i` gives the others (a proxy's, when there are proxies): what
    /// its answers name in `X-RQLITE-SERVED-BY`.
    pub fn raft_advertised(&self, i: usize) -> String {
        match &self.proxies {
            Some(p) => p.raft(i).to_string(),
            None => self.nodes[i - 1].raft.clone(),
        }
    }

    /// `base`, pinned to node `i`.
    fn on(&self, base: &Client, i: usize) -> Option<Client> {
        base.on(&format!("http://{}", self.nodes[i - 1].http)).ok()
    }

    /// A `keel_api` client of node `i` alone (see [`pinned`]), with a 20 s timeout.
    pub fn api(&self, i: usize) -> anyhow::Result<Client> {
        Ok(self.calls.on(&format!("http://{}", self.nodes[i - 1].http))?)
    }

    /// Node `i`'s `/status`; `None` on any failure.
    pub fn status(&self, i: usize) -> Option<Status> {
        self.on(&self.probes, i)?.status().ok()
    }

    /// Whether node `i` answers `/readyz` with 200.
    pub fn ready(&self, i: usize) -> bool {
        self.on(&self.probes, i)
            .and_then(|client| client.ready(false, false).ok())
            .is_some_and(|readiness| readiness.ready)
    }

    /// Whether node `i` lists itself as a member with the right voter flag.
    pub fn is_member(&self, i: usize) -> bool {
        let learner = self.nodes[i - 1].learner;
        let Some(nodes) = self.on(&self.probes, i).and_then(|client| client.nodes().ok()) else {
            return false;
        };
        nodes.iter().any(|node| node.node_id() == Some(i as u64) && node.voter != learner)
    }

    /// The leader as most nodes that answer see it: a node that says it leads.
    pub fn leader(&self) -> Option<usize> {
        (1..=self.nodes.len()).find(|&i| {
            !self.nodes[i - 1].paused && self.status(i).is_some_and(|s| s.node.role == Role::Leader)
        })
    }

    /// The leader, if every node runs, answers, and has applied the leader's commit index.
    pub fn caught_up(&self) -> Option<usize> {
        let leader = self.leader()?;
        let commit = self.status(leader)?.node.commit_index;
        for i in 1..=self.nodes.len() {
            let applied = self.status(i)?.node.applied_index;
            if applied < commit || !self.is_member(i) {
                return None;
            }
        }
        Some(leader)
    }

    /// Whether node `i`'s process is running (not exited).
    pub fn running(&mut self, i: usize) -> bool {
        let node = &mut self.nodes[i - 1];
        match &mut node.child {
            None => false,
            Some(child) => match child.try_wait() {
                Ok(None) => true,
                _ => {
                    node.child = None;
                    false
                }
            },
        }
    }

    /// The pid of node `i`'s process.
    fn pid(&self, i: usize) -> Option<i32> {
        self.nodes[i - 1].child.as_ref().and_then(|c| i32::try_from(c.id()).ok())
    }

    /// Sends `signal` to node `i`.
    fn signal(&self, i: usize, signal: i32) {
        if let Some(pid) = self.pid(i) {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid, signal) };
        }
    }

    /// SIGKILLs node `i` and reaps it.
    pub fn kill(&mut self, i: usize) {
        self.signal(i, libc::SIGCONT);
        let node = &mut self.nodes[i - 1];
        if let Some(mut child) = node.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        node.paused = false;
    }

    /// SIGSTOPs node `i`.
    pub fn pause(&mut self, i: usize) {
        self.signal(i, libc::SIGSTOP);
        self.nodes[i - 1].paused = true;
    }

    /// SIGCONTs node `i`.
    pub fn resume(&mut self, i: usize) {
        self.signal(i, libc::SIGCONT);
        self.nodes[i - 1].paused = false;
    }

    /// Sets node `i`'s wall-clock offset (libfaketime syntax: `+300s`, `-2.5s`, `+0`).
    pub fn set_clock(&self, i: usize, offset: &str) -> anyhow::Result<()> {
        std::fs::write(&self.nodes[i - 1].clock_file, format!("{offset}\n"))?;
        Ok(())
    }

    /// Fills node `i`'s tmpfs with a balloon file, leaving it (nearly) no space.
    pub fn fill_disk(&mut self, i: usize) -> anyhow::Result<()> {
        use std::io::Write as _;
        self.nodes[i - 1].disk_full = true;
        // Remembered until the data is wiped: see `lose_unsynced`.
        std::fs::write(self.nodes[i - 1].data.join(FILLED_MARK), b"")?;
        let path = self.nodes[i - 1].data.join("balloon");
        let mut file = std::fs::File::create(&path)?;
        let block = vec![0u8; 1 << 20];
        while file.write_all(&block).is_ok() {}
        let small = vec![0u8; 4096];
        while file.write_all(&small).is_ok() {}
        Ok(())
    }

    /// Removes node `i`'s balloon file, if any.
    pub fn free_disk(&mut self, i: usize) {
        let _ = std::fs::remove_file(self.nodes[i - 1].data.join("balloon"));
        self.nodes[i - 1].disk_full = false;
    }

    /// How node `i`'s process ended, if it was started and has exited by itself (the nemesis
    /// reaps the ones it kills); the exit is reaped.
    pub fn exited_by_itself(&mut self, i: usize) -> Option<std::process::ExitStatus> {
        let node = &mut self.nodes[i - 1];
        let status = node.child.as_mut()?.try_wait().ok()??;
        node.child = None;
        Some(status)
    }

    /// Simulates what a power loss takes from node `i` (its process must be dead): each log
    /// segment is cut back to the length its last fdatasync made durable (the `.synced` marks
    /// `keel serve --wal-sync-marks` keeps), and SQLite's `-wal` loses the frames written
    /// after the last checkpoint began: with `synchronous=NORMAL` in WAL mode the `-wal` file is
    /// synced only when a checkpoint starts, up to the frame the checkpoint goes to, which the
    /// `-shm` file keeps as `nBackfillAttempted` (0 once the WAL restarts from its start). The
    /// frames up to it stay, whether that checkpoint finished, stopped half-way, or copied only
    /// part of the WAL (readers held the rest): the database file may hold pages of any of
    /// them, and only those frames make it whole. (This model once deleted the whole `-wal`
    /// whenever no checkpoint was under way; after a checkpoint that had copied part of the
    /// WAL, that left database files SQLite reported as malformed, or holding pages newer
    /// than their applied position. A real power loss cannot take synced frames.) The `-shm`
    /// file goes too; SQLite rebuilds it from the `-wal`, as after a reboot.
    ///
    /// A node whose disk was ever full keeps its `-wal`: a checkpoint that failed half-way on the
    /// full disk left pages in the database file that only the `-wal` frames (synced before that
    /// checkpoint began, so no power loss can take them) make whole, and a restart since then
    /// reset the `-shm` counters that would show the checkpoint under way.
    /// Returns the log bytes cut and what happened to SQLite's `-wal`.
    pub fn lose_unsynced(&self, i: usize) -> anyhow::Result<(u64, &'static str)> {
        let data = &self.nodes[i - 1].data;
        let mut cut = 0;
        let raft = data.join("raft");
        if raft.is_dir() {
            for entry in std::fs::read_dir(&raft)? {
                let path = entry?.path();
                if path.extension().is_none_or(|e| e != "wal") {
                    continue;
                }
                let mut mark = path.clone().into_os_string();
                mark.push(".synced");
                let Ok(text) = std::fs::read_to_string(&mark) else { continue };
                let synced: u64 = text.trim().parse().context("a sync mark")?;
                let len = std::fs::metadata(&path)?.len();
                if synced < len {
                    std::fs::OpenOptions::new().write(true).open(&path)?.set_len(synced)?;
                    cut += len - synced;
                }
            }
        }
        let mut db_outcome = "untouched";
        let db = data.join("db");
        if data.join(FILLED_MARK).exists() {
            db_outcome =
                "kept its -wal (its disk was full once: a checkpoint may have failed half-way)";
        } else if db.is_dir() {
            for entry in std::fs::read_dir(&db)? {
                let path = entry?.path();
                let name = path.to_string_lossy().to_string();
                let Some(base) = name.strip_suffix("-wal") else { continue };
                let shm = std::fs::read(format!("{base}-shm")).unwrap_or_default();
                let word = |at: usize| {
                    shm.get(at..at + 4).map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                };
                // nBackfillAttempted: the frames the last checkpoint synced before copying
                // them (0 after the WAL restarted from its start).
                let synced = word(128).unwrap_or(0) as u64;
                if synced == 0 {
                    std::fs::remove_file(&path)?;
                    db_outcome = "lost its -wal";
                } else {
                    let wal = std::fs::read(&path).unwrap_or_default();
                    let page = wal
                        .get(8..12)
                        .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as u64);
                    let keep = WAL_HEADER + synced * (WAL_FRAME_HEADER + page);
                    if (wal.len() as u64) > keep {
                        std::fs::OpenOptions::new().write(true).open(&path)?.set_len(keep)?;
                    }
                    db_outcome = "lost the -wal frames after the last checkpoint's sync";
                }
                let _ = std::fs::remove_file(format!("{base}-shm"));
            }
        }
        Ok((cut, db_outcome))
    }

    /// Rebuilds stopped node `i` as an operator would: `keel admin rebuild --node i --data-dir
    /// DIR` through the other nodes, which removes it through the leader and deletes its data.
    /// Tried for up to 30 s (a leader may be being elected). Started again afterwards with
    /// `--join` ([`Cluster::restart`]), it joins as a new member.
    pub fn rebuild_offline(&self, i: usize) -> anyhow::Result<String> {
        let others = self.join_urls(i);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = Command::new(&self.layout.keel)
                .args(["admin", "--cluster", &others, "--timeout", "10s", "rebuild", "--node"])
                .arg(i.to_string())
                .arg("--data-dir")
                .arg(&self.nodes[i - 1].data)
                .output()
                .context("running keel admin rebuild")?;
            let said = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            if out.status.success() {
                return Ok(said.trim().replace('\n', "; "));
            }
            if Instant::now() >= deadline {
                bail!("keel admin rebuild failed: {}", said.trim());
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Wipes node `i`'s data (its process must be stopped).
    pub fn wipe(&mut self, i: usize) -> anyhow::Result<()> {
        let data = self.nodes[i - 1].data.clone();
        for entry in std::fs::read_dir(&data)? {
            let path = entry?.path();
            if path.is_dir() {
                std::fs::remove_dir_all(&path)?;
            } else {
                std::fs::remove_file(&path)?;
            }
        }
        Ok(())
    }

    /// The directory of the run.
    pub fn dir(&self) -> &Path {
        &self.layout.dir
    }

    /// Copies every node's data directory that is a tmpfs of ours (unmounted when the cluster
    /// is dropped) to `<dir>/node<i>-data`, without the disk fault's balloon, for a failed run
    /// to be looked at. Best effort: a copy that fails is reported on stderr.
    pub fn keep_data(&self, dir: &Path) {
        for node in self.nodes.iter().filter(|n| n.mounted) {
            let to = dir.join(format!("node{}-data", node.id));
            let copied = Command::new("cp").arg("-a").arg(&node.data).arg(&to).status();
            let _ = std::fs::remove_file(to.join("balloon"));
            if !copied.is_ok_and(|s| s.success()) {
                eprintln!("chaos: could not keep node {}'s data in {}", node.id, to.display());
            }
        }
    }

    /// Stops every node (SIGKILL).
    pub fn stop_all(&mut self) {
        for i in 1..=self.nodes.len() {
            self.kill(i);
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop_all();
        for node in &self.nodes {
            if node.mounted {
                let _ = Command::new("umount").arg("-l").arg(&node.data).output();
            }
        }
    }
}
