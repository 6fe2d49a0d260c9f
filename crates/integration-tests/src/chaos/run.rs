//! One run: start a cluster, run clients while the nemesis injects faults, heal, wait for
//! recovery, read the final state, check, and summarize.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use keel_api::status::Role;
use keel_api::{Level, Statement};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use super::check::{self, Findings};
use super::cluster::{self, Cluster, Layout, TableCheck};
use super::history::{FaultEvent, History, Op, Outcome};
use super::nemesis::{self, Fault, FaultCounts};
use super::net::Net;
use super::resources;
use super::workload::{self, Workload};

/// What to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// The workload.
    pub workload: Workload,
    /// Faults the nemesis may inject.
    pub faults: Vec<Fault>,
    /// How long clients run (faults stop a little before the end).
    pub time: Duration,
    /// Seed of every random choice.
    pub seed: u64,
    /// Voters.
    pub voters: usize,
    /// Learners.
    pub learners: usize,
    /// Concurrent clients.
    pub clients: usize,
    /// Directory for this run (history, logs, data).
    pub dir: PathBuf,
    /// The `keel` binary.
    pub keel: PathBuf,
    /// Extra `keel serve` flags.
    pub serve_flags: Vec<String>,
    /// Bugs to plant in every node (`--unsafe-plant-bug`).
    pub plant: Vec<String>,
    /// Run on loopback even as root.
    pub loopback: bool,
    /// A soak's bounds on memory, descriptors and files ([`resources::Bounds`]); past them is
    /// a violation. The figures are reported either way.
    pub bounds: Option<resources::Bounds>,
}

/// What a run found.
#[derive(Debug)]
pub struct Report {
    /// Operations, and how they ended.
    pub ops: u64,
    /// Ok operations.
    pub ok: u64,
    /// Failed operations.
    pub failed: u64,
    /// Operations of unknown outcome.
    pub unknown: u64,
    /// Faults injected by kind.
    pub faults: FaultCounts,
    /// What the checkers found.
    pub findings: Findings,
    /// Faults left out because this machine cannot inject them.
    pub left_out: Vec<&'static str>,
    /// Terms seen with a leader.
    pub terms: usize,
    /// Seconds from the last heal to a fully caught-up cluster.
    pub recovery: Option<f64>,
    /// What `keel check` found after each heal and at the end.
    pub checksums: Checksums,
    /// Memory, descriptors and files of the nodes ([`resources::Summary::line`]).
    pub resources: String,
    /// How the cluster fared under `net` faults, if any was injected.
    pub net: Option<NetFigures>,
}

/// Liveness under the `net` fault: how much got done while links were bad, and how soon the
/// cluster caught up after each heal.
#[derive(Debug, Clone, Default)]
pub struct NetFigures {
    /// Seconds during which links were bad (each `net` fault to its heal).
    pub bad_secs: f64,
    /// Operations acknowledged (`ok`) in those seconds.
    pub ok_ops: u64,
    /// Seconds from each heal to a leader every node had caught up with; `None`: not within
    /// the nemesis's wait.
    pub recoveries: Vec<Option<f64>>,
}

impl NetFigures {
    /// The figures of a run's `net` faults, from its history.
    fn of(faults: &[FaultEvent], ops: &[&Op], recoveries: Vec<Option<f64>>) -> Option<NetFigures> {
        let mut windows = Vec::new();
        let mut open = None;
        for event in faults {
            match event.kind.as_str() {
                "net" => open = Some(event.at),
                "heal" => windows.extend(open.take().map(|start| (start, event.at))),
                _ => {}
            }
        }
        if windows.is_empty() {
            return None;
        }
        let inside = |t: u64| windows.iter().any(|&(a, b)| a <= t && t < b);
        let ok_ops =
            ops.iter().filter(|op| op.outcome == Outcome::Ok && op.ret.is_some_and(inside)).count()
                as u64;
        let bad_secs = windows.iter().map(|(a, b)| (b - a) as f64 / 1e9).sum();
        Some(NetFigures { bad_secs, ok_ops, recoveries })
    }

    /// The summary's line.
    pub fn line(&self) -> String {
        let mut done: Vec<f64> = self.recoveries.iter().flatten().copied().collect();
        done.sort_by(f64::total_cmp);
        let missed = self.recoveries.len() - done.len();
        let recovery = match done.last() {
            None => "none measured".to_string(),
            Some(max) => format!("p50 {:.2}s, max {max:.2}s", done[(done.len() - 1) / 2]),
        };
        format!(
            "net: {:.1}s with bad links, {} operations acknowledged in them ({:.0}/s); caught up \
             after {} heals: {recovery}; not within the wait: {missed}",
            self.bad_secs,
            self.ok_ops,
            self.ok_ops as f64 / self.bad_secs.max(1e-9),
            self.recoveries.len(),
        )
    }
}

/// The verdicts of the run's table checks (`keel check` after every heal and at the end).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Checksums {
    /// Checks that found every replica identical.
    pub same: usize,
    /// Checks that found replicas different (each is also a violation).
    pub different: usize,
    /// Checks that could not run (a member still down or behind right after a heal).
    pub not_run: usize,
    /// Whether the final check, after recovery, found every replica identical.
    pub final_same: bool,
}

impl Checksums {
    fn of(checks: &[TableCheck], recovered: bool) -> Checksums {
        let count = |f: fn(&TableCheck) -> bool| checks.iter().filter(|c| f(c)).count();
        Checksums {
            same: count(|c| *c == TableCheck::Same),
            different: count(|c| matches!(c, TableCheck::Different(_))),
            not_run: count(|c| matches!(c, TableCheck::NotRun(_))),
            final_same: recovered && checks.last() == Some(&TableCheck::Same),
        }
    }

    /// `ok` when no check found a difference and the final one found none; else what went
    /// wrong.
    pub fn word(&self) -> &'static str {
        match (self.different, self.final_same) {
            (0, true) => "ok",
            (0, false) => "unchecked",
            _ => "DIFFERENT",
        }
    }
}

impl Report {
    /// The one-line summary every run ends with.
    pub fn summary_line(&self) -> String {
        format!(
            "chaos: ops={} ok={} failed={} unknown={} checksums={} violations={}",
            self.ops,
            self.ok,
            self.failed,
            self.unknown,
            self.checksums.word(),
            self.findings.violations.len()
        )
    }
}

/// Faults this machine can inject, and those it cannot (left out, with the reason printed).
fn usable(faults: &[Fault], net: &Net) -> (Vec<Fault>, Vec<&'static str>) {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let mut ok = Vec::new();
    let mut left_out = Vec::new();
    for &f in faults {
        let (usable, why) = match f {
            Fault::Partition => {
                (net.can_partition(), "needs root and iproute2 (network namespaces)")
            }
            Fault::Clock => {
                (cluster::have_faketime(), "needs libfaketime (Debian package faketime)")
            }
            Fault::Fsync => (cluster::have_fiu(), "needs libfiu (Debian package fiu-utils)"),
            Fault::Disk => (root, "needs root (a tmpfs per node)"),
            Fault::Net => (
                net.can_partition(),
                "needs root and iproute2 (network namespaces: the proxies tell nodes apart by \
                 address)",
            ),
            _ => (true, ""),
        };
        if usable {
            ok.push(f);
        } else {
            eprintln!("chaos: fault {} left out: {why}", f.name());
            left_out.push(f.name());
        }
    }
    (ok, left_out)
}

/// Runs one schedule. The error is for a run that could not be carried out at all (the
/// cluster did not start); what the checkers find is in the report.
pub fn run(config: &Config) -> anyhow::Result<Report> {
    std::fs::create_dir_all(&config.dir)
        .with_context(|| format!("creating {}", config.dir.display()))?;
    let count = config.voters + config.learners;
    let net = Net::detect(count, config.loopback)?;
    if let Net::Netns(n) = &net {
        n.enter_hub()?;
    }
    let (faults, left_out) = usable(&config.faults, &net);
    let mut serve_flags = vec![
        "--sync-timeout".to_string(),
        "2s".into(),
        "--snapshot-entries".into(),
        "2000".into(),
        "--trailing-logs".into(),
        "200".into(),
    ];
    if faults.contains(&Fault::Powerloss) {
        serve_flags.push("--wal-sync-marks".into());
    }
    for bug in &config.plant {
        serve_flags.push("--unsafe-plant-bug".into());
        serve_flags.push(bug.clone());
    }
    serve_flags.extend(config.serve_flags.iter().cloned());
    let layout = Layout {
        voters: config.voters,
        learners: config.learners,
        keel: config.keel.clone(),
        dir: config.dir.clone(),
        serve_flags,
        clock: faults.contains(&Fault::Clock),
        tmpfs: faults.contains(&Fault::Disk),
        proxied: faults.contains(&Fault::Net),
    };
    let mut cluster = Cluster::new(net, layout)?;
    cluster.start().context("starting the cluster")?;
    let leader = cluster.leader().context("no leader after start")?;
    let setup: Vec<Statement> = serde_json::from_value(config.workload.setup())?;
    let api = cluster.api(leader)?;
    let answer = api
        .send(api.inner().write(setup).durability(keel_api::Durability::Sync))
        .context("schema setup failed")?;
    if let Some((_, error)) = answer.first_error() {
        anyhow::bail!("schema setup failed: {error}");
    }

    let history = Arc::new(History::new());
    let stop = Arc::new(AtomicBool::new(false));
    let urls = cluster.urls();
    let learners: Vec<usize> = (config.voters..count).collect();
    let deadline = Instant::now() + config.time;

    // Election safety: sample every node's role and term.
    let sampler = {
        let (urls, stop) = (urls.clone(), stop.clone());
        std::thread::spawn(move || sample_leaders(&urls, &stop))
    };
    // Memory, descriptors and files of every node process, all run long.
    let sampler_stop = Arc::new(AtomicBool::new(false));
    let data_dirs: Vec<(usize, PathBuf)> =
        cluster.nodes.iter().map(|n| (n.id, n.data.clone())).collect();
    let resource_sampler = {
        let (dirs, stop) = (data_dirs.clone(), sampler_stop.clone());
        std::thread::spawn(move || resources::sample(dirs, stop))
    };
    let shared = Arc::new(workload::Shared::default());
    // One client per node, each pinned to it: the history records which node was asked.
    let nodes = urls
        .iter()
        .map(|url| cluster::pinned(url, workload::TIMEOUT))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let raft_addrs: Vec<String> = (1..=count).map(|i| cluster.raft_advertised(i)).collect();
    let raft_addrs = Arc::new(raft_addrs);
    let mut clients = Vec::new();
    for process in 0..config.clients {
        let (nodes, learners, history, shared) =
            (nodes.clone(), learners.clone(), history.clone(), shared.clone());
        let raft_addrs = raft_addrs.clone();
        let workload = config.workload;
        let seed = config.seed.wrapping_mul(31).wrapping_add(process as u64 + 1);
        clients.push(std::thread::spawn(move || {
            let mut rng = StdRng::seed_from_u64(seed);
            while Instant::now() < deadline {
                let inv = workload::generate(workload, &mut rng, &shared);
                let index = if inv.learner && !learners.is_empty() {
                    learners[rng.gen_range(0..learners.len())]
                } else {
                    rng.gen_range(0..nodes.len())
                };
                let call = history.now();
                // A learner's read must be its own copy: an answer from another node is
                // not one.
                let served_by = inv.learner.then(|| raft_addrs[index].as_str());
                let done = workload::perform(&nodes[index], &inv, served_by);
                let ret = (done.outcome != Outcome::Info).then(|| history.now());
                history.push(Op {
                    process,
                    node: index as u64 + 1,
                    f: inv.f,
                    value: inv.value,
                    result: done.result,
                    values: done.values,
                    outcome: done.outcome,
                    call,
                    ret,
                    error: done.error,
                    final_read: false,
                });
                if done.outcome == Outcome::Fail {
                    // Do not spin against a node that refuses at once.
                    std::thread::sleep(Duration::from_millis(rng.gen_range(5..50)));
                }
            }
        }));
    }

    let mut rng = StdRng::seed_from_u64(config.seed);
    let fault_end = deadline.checked_sub(Duration::from_secs(2)).unwrap_or(deadline);
    let mut checks = Vec::new();
    let mut net_recoveries = Vec::new();
    let counts = nemesis::run(
        &mut cluster,
        &faults,
        &mut rng,
        &history,
        fault_end,
        &mut checks,
        &mut net_recoveries,
    );
    nemesis::heal(&mut cluster, &history);
    let healed = Instant::now();

    // Recovery: every node running, a leader, and every node applied the leader's commit
    // (while the clients finish their last seconds of load).
    let mut findings_extra = Vec::new();
    let recovered = cluster
        .wait_until(Duration::from_secs(60), "the cluster to recover", |c| c.caught_up().is_some())
        .is_ok();
    let recovery = recovered.then(|| healed.elapsed().as_secs_f64());
    for c in clients {
        let _ = c.join();
    }
    if !recovered {
        let statuses: Vec<Value> =
            (1..=count).map(|i| cluster.status(i).map_or(Value::Null, |s| json!(s.node))).collect();
        findings_extra.push(format!(
            "recovery: the cluster did not recover within 60 s after healing: {}",
            json!(statuses)
        ));
    }
    if recovered {
        final_reads(&mut cluster, config.workload, &history, &mut findings_extra);
        checks.push(nemesis::check_tables(&cluster, &history, Duration::from_secs(30)));
    }
    for exit in &cluster.exits {
        findings_extra.push(format!("disk: {exit}: a full disk must not stop a node"));
    }
    for what in &cluster.undetected {
        findings_extra.push(format!("corrupt: {what}: damaged state must not be served"));
    }
    for check in &checks {
        if let TableCheck::Different(out) = check {
            findings_extra.push(format!("checksums: keel check found replicas different: {out}"));
        }
    }
    let checksums = Checksums::of(&checks, recovered);
    stop.store(true, Ordering::Relaxed);
    let sampled = sampler.join().unwrap_or_default();
    sampler_stop.store(true, Ordering::Relaxed);
    let samples = resource_sampler.join().unwrap_or_default();
    resources::write_csv(&samples, &config.dir.join("resources.csv"))
        .context("writing resources.csv")?;
    let usage = resources::Summary::of(&samples);
    if let (Some(bounds), true) = (config.bounds, recovered) {
        // A snapshot may still be building from the last writes: give it time to finish.
        let _ = cluster.wait_until(Duration::from_secs(30), "temporary files to go", |_| {
            data_dirs.iter().all(|(_, dir)| resources::temporaries(dir).is_empty())
        });
        findings_extra.extend(bounds.check(&usage, &data_dirs));
    }
    cluster.stop_all();

    // The history is taken, not copied: a long run's is large.
    let ops = history.take_ops();
    history.write(&config.dir, &ops).context("writing the history")?;
    let mut findings = check::check(config.workload, &ops);
    let (election, terms) = check::election_safety(&config.dir, count, &sampled);
    findings.violations.extend(election);
    findings.violations.extend(findings_extra);
    if !findings.violations.is_empty() {
        // A node's data may be on a tmpfs that goes with the cluster: keep a copy to look at.
        cluster.keep_data(&config.dir);
    }
    let client_ops: Vec<&Op> = ops.iter().filter(|op| !op.final_read).collect();
    let report = Report {
        ops: client_ops.len() as u64,
        ok: client_ops.iter().filter(|o| o.outcome == Outcome::Ok).count() as u64,
        failed: client_ops.iter().filter(|o| o.outcome == Outcome::Fail).count() as u64,
        unknown: client_ops.iter().filter(|o| o.outcome == Outcome::Info).count() as u64,
        faults: counts,
        findings,
        left_out,
        terms: terms.len(),
        recovery,
        checksums,
        resources: usage.line(),
        net: NetFigures::of(&history.faults(), &client_ops, net_recoveries),
    };
    std::fs::write(config.dir.join("summary.txt"), describe(config, &report))?;
    Ok(report)
}

/// Samples `/status` of every node every 100 ms until `stop`; returns term → leaders seen.
fn sample_leaders(urls: &[String], stop: &AtomicBool) -> BTreeMap<u64, BTreeSet<usize>> {
    let nodes: anyhow::Result<Vec<_>> =
        urls.iter().map(|url| cluster::pinned(url, Duration::from_millis(500))).collect();
    let Ok(nodes) = nodes else { return BTreeMap::new() };
    let mut leaders: BTreeMap<u64, BTreeSet<usize>> = BTreeMap::new();
    while !stop.load(Ordering::Relaxed) {
        for (i, node) in nodes.iter().enumerate() {
            if let Ok(s) = node.status()
                && s.node.role == Role::Leader
            {
                leaders.entry(s.node.term).or_default().insert(i + 1);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    leaders
}

/// Reads the final state through the leader (recorded as final reads) and checks that every
/// node's own copy equals it.
fn final_reads(
    cluster: &mut Cluster,
    workload: Workload,
    history: &History,
    violations: &mut Vec<String>,
) {
    let mut leader = None;
    let waited = cluster.wait_until(Duration::from_secs(30), "the cluster to settle", |c| {
        leader = c.caught_up();
        leader.is_some()
    });
    let (Ok(()), Some(leader)) = (waited, leader) else {
        violations.push("final read: the cluster did not settle (a leader, every node caught up) within 30 s after the clients stopped".into());
        return;
    };
    let query = workload.dump_query();
    let read = |i: usize, level: Level| -> Option<Vec<Vec<Value>>> {
        let api = cluster.api(i).ok()?;
        let answer = api.send(api.inner().read([query]).level(level)).ok()?;
        Some(answer.results.first()?.values().to_vec())
    };
    let call = history.now();
    let Some(rows) = read(leader, Level::Linearizable) else {
        violations.push("final read through the leader failed".into());
        return;
    };
    let ret = history.now();
    let rows = json!(rows);
    for i in 1..=cluster.nodes.len() {
        match read(i, Level::None).map(|copy| json!(copy)) {
            Some(copy) if copy == rows => {}
            other => violations.push(format!(
                "convergence: node {i}'s copy differs from the leader's (node {leader}): {} vs {}",
                other.map_or("no answer".into(), |copy| copy.to_string()),
                rows
            )),
        }
    }
    let (f, value, result, values) = match workload {
        Workload::Set => {
            let copy: Vec<Vec<Value>> = serde_json::from_value(rows).unwrap_or_default();
            let (values, others) = workload::set_values(&copy);
            let mut result = json!({});
            if others > 0 {
                result["not_integers"] = json!(others);
            }
            ("read-all", json!({ "learner": false }), result, Some(values))
        }
        Workload::Bank => {
            ("read", json!({ "level": "final" }), json!({ "results": [{ "values": rows }] }), None)
        }
        Workload::Append => {
            // One read per key, as one transaction.
            let mut mops = Vec::new();
            let mut results = Vec::new();
            for row in rows.as_array().into_iter().flatten() {
                mops.push(json!(["r", row[0], null]));
                results.push(json!({ "values": [[row[1]]] }));
            }
            ("txn", Value::Array(mops), json!({ "results": results }), None)
        }
        Workload::Register => return,
    };
    history.push(Op {
        process: usize::MAX,
        node: leader as u64,
        f,
        value,
        result,
        values,
        outcome: Outcome::Ok,
        call,
        ret: Some(ret),
        error: None,
        final_read: true,
    });
}

/// A human-readable account of the run.
pub fn describe(config: &Config, report: &Report) -> String {
    let mut s = String::new();
    use std::fmt::Write as _;
    let _ = writeln!(
        s,
        "workload={} seed={} time={:?} voters={} learners={} clients={} faults=[{}]{}",
        config.workload.name(),
        config.seed,
        config.time,
        config.voters,
        config.learners,
        config.clients,
        config.faults.iter().map(|f| f.name()).collect::<Vec<_>>().join(","),
        if config.plant.is_empty() {
            String::new()
        } else {
            format!(" planted={}", config.plant.join(","))
        }
    );
    if !report.left_out.is_empty() {
        let _ = writeln!(s, "left out (cannot inject here): {}", report.left_out.join(","));
    }
    let faults: Vec<String> = report.faults.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let _ = writeln!(
        s,
        "faults injected: {}",
        if faults.is_empty() { "none".into() } else { faults.join(" ") }
    );
    let f = &report.findings;
    let _ = writeln!(
        s,
        "acknowledged writes: {}  lost: {}  terms with a leader: {}  recovery after heal: {}",
        f.acknowledged,
        f.lost,
        report.terms,
        report.recovery.map_or("none".into(), |r| format!("{r:.1}s"))
    );
    if f.checked_keys > 0 {
        let _ = writeln!(
            s,
            "register keys checked: {} (budget exceeded: {})",
            f.checked_keys, f.unchecked_keys
        );
    }
    if !f.staleness_ms.is_empty() {
        let mut ms = f.staleness_ms.clone();
        ms.sort_by(f64::total_cmp);
        let mut entries = f.staleness_entries.clone();
        entries.sort_unstable();
        let p = |q: f64| ms[((ms.len() - 1) as f64 * q) as usize];
        let _ = writeln!(
            s,
            "learner staleness over {} reads: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; max {} acknowledged inserts behind",
            ms.len(),
            p(0.5),
            p(0.99),
            ms[ms.len() - 1],
            entries[entries.len() - 1]
        );
    }
    let c = &report.checksums;
    let _ = writeln!(
        s,
        "table checks (keel check after each heal and at the end): {} identical, {} different, {} not run; final: {}",
        c.same,
        c.different,
        c.not_run,
        if c.final_same { "identical" } else { "not identical or not run" }
    );
    let _ = writeln!(s, "{}", report.resources);
    if let Some(net) = &report.net {
        let _ = writeln!(s, "{}", net.line());
    }
    for v in &f.violations {
        let _ = writeln!(s, "VIOLATION {v}");
    }
    let _ = writeln!(s, "{}", report.summary_line());
    s
}
