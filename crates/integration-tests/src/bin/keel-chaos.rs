//! `keel-chaos`: runs Keel clusters under faults and checks what the clients saw.
//!
//! ```sh
//! # One 30-second run of the register workload under kills and partitions:
//! sudo target/release/keel-chaos run --workload register --faults kill,partition --time 30s --seed 7
//! # A campaign: 24 runs of 60 s cycling through every workload and fault mix.
//! sudo target/release/keel-chaos campaign --runs 24 --time 60s
//! ```
//!
//! Every run prints a summary ending in `chaos: ops=N ok=N failed=N unknown=N violations=N`
//! and exits non-zero on any violation, keeping its directory (history, fault log, node logs).
//! See `docs/reliability.md`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use integration_tests::chaos::nemesis::Fault;
use integration_tests::chaos::resources;
use integration_tests::chaos::run::{self, Config};
use integration_tests::chaos::workload::Workload;

#[derive(Debug, Parser)]
#[command(name = "keel-chaos", about = "Jepsen-style fault testing of Keel clusters")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// One run: one workload under a seeded schedule of faults.
    Run {
        /// The workload.
        #[arg(long, value_enum, default_value = "register")]
        workload: Workload,
        /// Faults to inject (comma-separated), `all`, or `none`.
        #[arg(long, default_value = "kill,pause,partition")]
        faults: String,
        #[command(flatten)]
        common: Common,
    },
    /// Many runs with successive seeds, cycling through workloads and fault mixes.
    Campaign {
        /// Number of runs.
        #[arg(long, default_value_t = 6)]
        runs: u64,
        /// Workloads to cycle through (comma-separated).
        #[arg(long, default_value = DEFAULT_WORKLOADS)]
        workloads: String,
        /// Fault mixes to cycle through, separated by `;` (each a comma-separated list).
        #[arg(long, default_value = DEFAULT_MIXES)]
        mixes: String,
        #[command(flatten)]
        common: Common,
    },
    /// A long campaign held to resource bounds: every workload in turn under every fault, the
    /// total `--time` shared among `--runs` runs, each node's memory, descriptors and files
    /// sampled and bounded (docs/reliability.md, "Soak").
    Soak {
        /// Number of runs (cycling through the workloads).
        #[arg(long, default_value_t = 4)]
        runs: u64,
        /// Fault mix of every run.
        #[arg(long, default_value = "all")]
        mixes: String,
        #[command(flatten)]
        common: Common,
    },
}

/// The workloads a campaign cycles through by default.
const DEFAULT_WORKLOADS: &str = "register,set,bank,append";

/// The default fault mixes of a campaign, in the manner of dqlite's CI matrix.
const DEFAULT_MIXES: &str = "kill,partition,vacuum;pause,partition,promote,net;member,kill,net,corrupt;\
     disk,fsync,powerloss,kill,corrupt;clock,partition,pause,vacuum;all";

#[derive(Debug, clap::Args)]
struct Common {
    /// How long clients run, per run (`30s`, `5m`, `1h`).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    time: Duration,
    /// Seed (a campaign uses seed, seed+1, …).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Voters.
    #[arg(long, default_value_t = 3)]
    voters: usize,
    /// Learners (default: one for the set and bank workloads, which read from replicas).
    #[arg(long)]
    learners: Option<usize>,
    /// Concurrent clients.
    #[arg(long, default_value_t = 6)]
    clients: usize,
    /// Directory for runs (one subdirectory each).
    #[arg(long, default_value = "/tmp/keel-chaos")]
    dir: PathBuf,
    /// The keel binary (default: `KEEL_BIN`, or built with cargo).
    #[arg(long)]
    keel: Option<PathBuf>,
    /// Plant a bug in every node (`ack-before-commit`, `stale-linearizable`); the run must then
    /// report violations.
    #[arg(long)]
    plant_bug: Vec<String>,
    /// Extra `keel serve` flag (repeatable), e.g. `--serve-flag=--election-timeout=300ms`.
    #[arg(long, allow_hyphen_values = true)]
    serve_flag: Vec<String>,
    /// Run the nodes on loopback even as root (no partitions).
    #[arg(long)]
    loopback: bool,
    /// Keep the directories of runs that pass too.
    #[arg(long)]
    keep: bool,
    /// Hold every node to the soak's bounds on memory, descriptors and files (`soak` sets it).
    #[arg(long)]
    soak_bounds: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (number, unit) =
        s.split_at(s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len()));
    let n: f64 = number.parse().map_err(|_| format!("invalid duration {s:?}"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" | "" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("invalid duration {s:?}: use ms, s, m or h")),
    };
    Ok(Duration::from_secs_f64(secs))
}

fn parse_faults(s: &str) -> Result<Vec<Fault>, String> {
    match s.trim() {
        "all" => return Ok(Fault::ALL.to_vec()),
        "none" | "" => return Ok(Vec::new()),
        _ => {}
    }
    s.split(',')
        .map(|name| {
            <Fault as clap::ValueEnum>::from_str(name.trim(), true)
                .map_err(|_| format!("unknown fault {name:?}"))
        })
        .collect()
}

fn config(
    common: &Common,
    workload: Workload,
    faults: Vec<Fault>,
    seed: u64,
    name: &str,
) -> Config {
    let keel =
        common.keel.clone().unwrap_or_else(|| integration_tests::keel_binary().to_path_buf());
    let learners = common
        .learners
        .unwrap_or(if matches!(workload, Workload::Set | Workload::Bank) { 1 } else { 0 });
    Config {
        workload,
        faults,
        time: common.time,
        seed,
        voters: common.voters,
        learners,
        clients: common.clients,
        dir: common.dir.join(name),
        keel,
        serve_flags: common.serve_flag.clone(),
        plant: common.plant_bug.clone(),
        loopback: common.loopback,
        bounds: common.soak_bounds.then_some(resources::Bounds::SOAK),
    }
}

/// Runs one configuration in a child process of this binary (each run needs a fresh
/// network namespace for its threads), and returns whether it passed and its summary. The
/// child's fault log goes to stderr as it happens; its summary is printed by the caller.
fn run_child(config: &Config, faults: &str, keep: bool) -> anyhow::Result<(bool, String)> {
    let exe = std::env::current_exe()?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("run")
        .args(["--workload", config.workload.name()])
        .args(["--faults", if faults.is_empty() { "none" } else { faults }])
        .args(["--time", &format!("{}ms", config.time.as_millis())])
        .args(["--seed", &config.seed.to_string()])
        .args(["--voters", &config.voters.to_string()])
        .args(["--learners", &config.learners.to_string()])
        .args(["--clients", &config.clients.to_string()])
        .arg("--dir")
        .arg(config.dir.parent().unwrap_or(&config.dir))
        .arg("--keel")
        .arg(&config.keel);
    for bug in &config.plant {
        cmd.args(["--plant-bug", bug]);
    }
    for flag in &config.serve_flags {
        cmd.arg(format!("--serve-flag={flag}"));
    }
    if config.loopback {
        cmd.arg("--loopback");
    }
    if config.bounds.is_some() {
        cmd.arg("--soak-bounds");
    }
    // The child keeps its directory so that its summary can be read here; a passing run's
    // directory is removed afterwards unless `keep`.
    cmd.arg("--keep");
    let status = cmd.stdout(std::process::Stdio::null()).status()?;
    let summary = std::fs::read_to_string(config.dir.join("summary.txt")).unwrap_or_default();
    if status.success() && !keep {
        let _ = std::fs::remove_dir_all(&config.dir);
    }
    Ok((status.success(), summary))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { workload, faults, common } => {
            let faults = match parse_faults(&faults) {
                Ok(f) => f,
                Err(e) => {
                    eprintln!("keel-chaos: {e}");
                    return ExitCode::from(2);
                }
            };
            let name = format!("{}-{}", workload.name(), common.seed);
            let config = config(&common, workload, faults, common.seed, &name);
            let _ = std::fs::remove_dir_all(&config.dir);
            match run::run(&config) {
                Ok(report) => {
                    print!("{}", run::describe(&config, &report));
                    let failed = !report.findings.violations.is_empty();
                    if failed {
                        println!("history and logs kept in {}", config.dir.display());
                    } else if !common.keep {
                        let _ = std::fs::remove_dir_all(&config.dir);
                    }
                    if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS }
                }
                Err(e) => {
                    eprintln!("keel-chaos: the run could not be carried out: {e:#}");
                    println!(
                        "chaos: ops=0 ok=0 failed=0 unknown=0 violations=0 (run not carried out)"
                    );
                    ExitCode::from(3)
                }
            }
        }
        Command::Campaign { runs, workloads, mixes, common } => {
            campaign(runs, &workloads, &mixes, &common)
        }
        Command::Soak { runs, mixes, mut common } => {
            let runs = runs.max(1);
            common.time /= runs as u32;
            common.soak_bounds = true;
            println!(
                "soak: {runs} runs of {:?} each, faults {mixes}, bounds {:?}",
                common.time,
                resources::Bounds::SOAK
            );
            campaign(runs, DEFAULT_WORKLOADS, &mixes, &common)
        }
    }
}

/// Runs `runs` runs with successive seeds, cycling through `workloads` and `mixes` (see
/// `Command::Campaign`), and prints the totals.
fn campaign(runs: u64, workloads: &str, mixes: &str, common: &Common) -> ExitCode {
    let workloads: Result<Vec<Workload>, String> = workloads
        .split(',')
        .map(|w| {
            <Workload as clap::ValueEnum>::from_str(w.trim(), true)
                .map_err(|_| format!("unknown workload {w:?}"))
        })
        .collect();
    let mixes: Vec<&str> = mixes.split(';').collect();
    let (workloads, parsed) =
        match (workloads, mixes.iter().map(|m| parse_faults(m)).collect::<Result<Vec<_>, _>>()) {
            (Ok(w), Ok(m)) if !w.is_empty() && !m.is_empty() => (w, m),
            (Err(e), _) | (_, Err(e)) => {
                eprintln!("keel-chaos: {e}");
                return ExitCode::from(2);
            }
            _ => {
                eprintln!("keel-chaos: no workloads or fault mixes");
                return ExitCode::from(2);
            }
        };
    let mut failures = 0;
    let mut totals = [0u64; 5];
    // Runs whose table checks found the replicas identical, and runs where they differed.
    let (mut checksums_ok, mut checksums_different) = (0u64, 0u64);
    let mut faults_total: std::collections::BTreeMap<String, u64> = Default::default();
    let (mut acknowledged, mut lost) = (0u64, 0u64);
    let mut per_run = Vec::new();
    for r in 0..runs {
        let workload = workloads[(r as usize) % workloads.len()];
        let mix = (r as usize) % mixes.len();
        let seed = common.seed + r;
        let name = format!("{}-{}", workload.name(), seed);
        let config = config(common, workload, parsed[mix].clone(), seed, &name);
        println!("== run {}/{runs}: {} faults={} seed={seed}", r + 1, workload.name(), mixes[mix]);
        match run_child(&config, mixes[mix], common.keep) {
            Ok((ok, summary)) => {
                print!("{summary}");
                if let Some(line) = summary.lines().find(|l| l.starts_with("chaos: ")) {
                    checksums_ok += u64::from(line.contains(" checksums=ok "));
                    checksums_different += u64::from(line.contains(" checksums=DIFFERENT "));
                    for (i, field) in
                        ["ops=", "ok=", "failed=", "unknown=", "violations="].iter().enumerate()
                    {
                        totals[i] += line
                            .split_whitespace()
                            .find_map(|w| w.strip_prefix(field))
                            .and_then(|n| n.parse::<u64>().ok())
                            .unwrap_or(0);
                    }
                }
                for line in summary.lines() {
                    if let Some(rest) = line.strip_prefix("faults injected: ") {
                        for kv in rest.split_whitespace() {
                            if let Some((k, v)) = kv.split_once('=') {
                                *faults_total.entry(k.to_string()).or_default() +=
                                    v.parse::<u64>().unwrap_or(0);
                            }
                        }
                    }
                    if let Some(rest) = line.strip_prefix("acknowledged writes: ") {
                        let mut words = rest.split_whitespace();
                        acknowledged +=
                            words.next().and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
                        lost += words.nth(1).and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
                    }
                    if line.starts_with("learner staleness")
                        || line.starts_with("resources:")
                        || line.starts_with("net:")
                    {
                        per_run.push(line.to_string());
                    }
                }
                if !ok {
                    failures += 1;
                    if summary.is_empty() {
                        println!("run did not complete; see {}", config.dir.display());
                    } else {
                        println!("history and logs kept in {}", config.dir.display());
                    }
                }
            }
            Err(e) => {
                failures += 1;
                println!("run failed to start: {e:#}");
            }
        }
    }
    let faults: Vec<String> = faults_total.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!("campaign faults injected: {}", faults.join(" "));
    println!("campaign acknowledged writes: {acknowledged}  lost: {lost}");
    for line in &per_run {
        println!("campaign {line}");
    }
    println!(
        "campaign: runs={runs} failed_runs={failures} runs_with_identical_replicas={checksums_ok}\nchaos: ops={} ok={} failed={} unknown={} checksums={} violations={}",
        totals[0],
        totals[1],
        totals[2],
        totals[3],
        match (checksums_different, checksums_ok == runs) {
            (0, true) => "ok",
            (0, false) => "unchecked",
            _ => "DIFFERENT",
        },
        totals[4]
    );
    if failures == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
