//! `keel bench bootstrap`: how long a new replica of a big database takes to be ready, against
//! copying the same database file with `cp` in the same run, and the memory it takes.
//!
//! It starts a local cluster (ports from `--base-port`), fills it to `--size` with 1 KiB rows
//! in 256 KiB requests (so the leader compacts its log and a new node must start from a
//! snapshot), copies the leader's database file and fsyncs the copy (the `cp` baseline, median
//! of three), then
//! starts a new node that joins the cluster and measures until it has applied everything the
//! leader had committed when it started. It prints the time to ready, its ratio to the copy,
//! whether the new node received a snapshot, the peak RSS of the new node and of the leader
//! during the join (the leader's high-water mark is reset just before), and the time a
//! restart of the new node takes to be ready again.
//!
//! It talks to the cluster through [`keel_api::Client`]: the fill through a client of every
//! node that finds the leader and retries a write with its request id (so a retried fill
//! request never inserts twice), the status polls through one pinned to the node asked
//! ([`keel_api::Client::on`]), one attempt each.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::json;

use crate::bench::BenchArgs;
use crate::local::{LocalNode, spawn_node, start_cluster, stop_all};

/// Bytes of one row's blob (four rows fill a 4 KiB page, so the file is about `--size`).
const ROW: usize = 1000;
/// Rows per filling request.
const ROWS_PER_REQUEST: usize = 256;
/// Concurrent filling requests.
const FILLERS: usize = 4;

/// Parses sizes like `1GiB`, `512MiB`, `64MB`, `1000000`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("'{s}' is not a size (try 256MiB, 1GiB)"))?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        _ => return Err(format!("'{s}' has an unknown unit (use KiB, MiB, GiB)")),
    };
    n.checked_mul(scale).ok_or_else(|| format!("'{s}' is too large"))
}

/// Runs the benchmark (see the module docs).
pub async fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("keel-bench-bootstrap-{}", std::process::id())),
    };
    if dir.exists() {
        bail!("{} exists; give an empty or new --dir", dir.display());
    }
    let requests = (args.size as usize).div_ceil(ROW * ROWS_PER_REQUEST).max(1);
    // Compact the log about every quarter of the fill (group commit makes fewer entries than
    // requests), keeping few entries behind a snapshot, so the new node's first entries are
    // purged and it must start from a snapshot.
    let snapshot_entries = (requests / 8).max(16);
    let mut flags =
        vec![format!("--snapshot-entries={snapshot_entries}"), "--trailing-logs=8".to_string()];
    flags.extend(args.serve_flag.iter().cloned());
    let voters = args.voters.max(1);
    println!(
        "starting {voters} nodes in {} (snapshot every {snapshot_entries} entries)",
        dir.display()
    );
    let mut nodes = start_cluster(&dir, voters, 0, args.base_port, None, &flags, true).await?;
    let result = measure(args, &dir, &mut nodes, requests, snapshot_entries, &flags).await;
    stop_all(&mut nodes).await;
    if args.dir.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

async fn measure(
    args: &BenchArgs,
    dir: &Path,
    nodes: &mut Vec<LocalNode>,
    requests: usize,
    snapshot_entries: usize,
    flags: &[String],
) -> anyhow::Result<()> {
    let writes =
        crate::local::client_builder(nodes, flags)?.timeout(Duration::from_secs(60)).build()?;
    let polls = crate::local::client_builder(nodes, flags)?
        .timeout(Duration::from_secs(5))
        .retry_for(Duration::ZERO)
        .build()?;
    write(&writes, "CREATE TABLE big (id INTEGER PRIMARY KEY, v BLOB)".into()).await?;

    // Fill.
    let fill_started = Instant::now();
    let bar = indicatif::ProgressBar::new(requests as u64).with_style(
        indicatif::ProgressStyle::with_template(
            "filling [{bar:30}] {pos}/{len} requests, eta {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut fillers = Vec::new();
    for _ in 0..FILLERS {
        let (client, next, bar) = (writes.clone(), next.clone(), bar.clone());
        fillers.push(tokio::spawn(async move {
            let sql = format!(
                "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < {ROWS_PER_REQUEST}) \
                 INSERT INTO big(v) SELECT randomblob({ROW}) FROM c"
            );
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < requests {
                write(&client, sql.clone()).await?;
                bar.inc(1);
            }
            anyhow::Ok(())
        }));
    }
    for f in fillers {
        f.await??;
    }
    bar.finish_and_clear();
    let fill = fill_started.elapsed();

    let leader = polls.on(&writes.find_leader().await?)?;
    let status = leader.status().await?;
    let leader_id = status.node.id;
    let leader_idx = nodes.iter().position(|n| n.id == leader_id).context("unknown leader")?;
    let target = status.node.commit_index;
    // Let the leader finish compacting (its policy builds once `snapshot_entries` entries
    // follow the last snapshot), so the join measures a snapshot transfer, not a build.
    let deadline = Instant::now() + Duration::from_secs(600);
    let snapshot_index = loop {
        let index = leader.status().await?.snapshot.index.unwrap_or(0);
        if index + snapshot_entries as u64 > target {
            break index;
        }
        if Instant::now() > deadline {
            bail!("the leader built no snapshot in 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    // Baseline: copy the leader's database file and fsync the copy.
    let db_file = live_db_file(&dir.join(format!("node{leader_id}")).join("db"))?;
    let db_size = std::fs::metadata(&db_file)?.len();
    // The median of three copies: a single copy's time varies with the page cache.
    let copy = dir.join("cp-baseline.sqlite");
    let mut copies = Vec::new();
    for _ in 0..3 {
        let started = Instant::now();
        std::fs::copy(&db_file, &copy)?;
        std::fs::File::open(&copy)?.sync_all()?;
        copies.push(started.elapsed());
        std::fs::remove_file(&copy)?;
    }
    copies.sort();
    let cp = copies[1];

    // Join a new node.
    let leader_pid = nodes[leader_idx].child.id().context("leader exited")?;
    reset_peak_rss(leader_pid);
    let id = nodes.iter().map(|n| n.id).max().unwrap_or(0) + 1;
    let join_started = Instant::now();
    nodes.push(spawn_node(dir, id, args.base_port, None, false, flags)?);
    let new_http = nodes.last().map(|n| n.http.clone()).unwrap_or_default();
    let new = polls.on(&format!("{}://{new_http}", crate::local::scheme(flags)))?;
    let new_pid = nodes.last().and_then(|n| n.child.id()).context("new node exited")?;
    let ready = wait_applied(&new, target, nodes.last_mut()).await?;
    let join = join_started.elapsed();
    let new_rss = peak_rss(new_pid);
    let leader_rss = peak_rss(leader_pid);
    let new_status = new.status().await?;
    let installed = new_status.snapshot.installed;
    let received = new_status.snapshot.bytes_received;

    // Restart the new node.
    let node = nodes.last_mut().context("no new node")?;
    stop_all(std::slice::from_mut(node)).await;
    let restart_started = Instant::now();
    node.restart()?;
    let target = leader.status().await.map_or(target, |s| s.node.commit_index);
    wait_applied(&new, target, Some(node)).await?;
    let restart = restart_started.elapsed();

    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let figures = json!({
        "database_bytes": db_size,
        "leader_snapshot_index": snapshot_index,
        "fill_seconds": fill.as_secs_f64(),
        "cp_seconds": cp.as_secs_f64(),
        "join_ready_seconds": join.as_secs_f64(),
        "join_applied_seconds": ready.as_secs_f64(),
        "ratio_to_cp": join.as_secs_f64() / cp.as_secs_f64(),
        "snapshots_installed": installed,
        "snapshot_bytes_received": received,
        "new_node_peak_rss_bytes": new_rss,
        "leader_peak_rss_bytes": leader_rss,
        "restart_ready_seconds": restart.as_secs_f64(),
    });
    if args.json {
        println!("{figures}");
    } else {
        println!(
            "database:            {:.0} MiB ({} requests filled in {:.1?})",
            mib(db_size),
            requests,
            fill
        );
        println!("leader snapshot at:  index {snapshot_index} of {target}");
        println!("cp + fsync:          {cp:.2?}");
        println!(
            "new node ready:      {join:.2?} ({:.2}x cp); {} snapshot(s) installed, {:.0} MiB received",
            join.as_secs_f64() / cp.as_secs_f64(),
            installed,
            mib(received)
        );
        println!(
            "peak RSS:            new node {:.1} MiB, leader {:.1} MiB (during the join)",
            mib(new_rss.unwrap_or(0)),
            mib(leader_rss.unwrap_or(0))
        );
        println!("restart to ready:    {restart:.2?}");
    }
    Ok(())
}

/// The live database file in a node's `db/` directory (named by its `CURRENT` file).
fn live_db_file(db_dir: &Path) -> anyhow::Result<PathBuf> {
    let current = std::fs::read_to_string(db_dir.join("CURRENT"))
        .with_context(|| format!("reading {}/CURRENT", db_dir.display()))?;
    Ok(db_dir.join(current.trim()))
}

/// Peak resident set size of a process (`VmHWM`), if readable.
fn peak_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Resets a process's peak RSS to its current RSS (Linux `clear_refs` 5); best effort.
fn reset_peak_rss(pid: u32) {
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

/// Waits until the node `client` is pinned to has applied `target`; returns how long it took.
async fn wait_applied(
    client: &keel_api::Client,
    target: u64,
    mut node: Option<&mut LocalNode>,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(3600);
    loop {
        if let Some(n) = node.as_deref_mut()
            && let Ok(Some(status)) = n.child.try_wait()
        {
            bail!("node {} exited ({status}); see {}", n.id, n.log.display());
        }
        if client.status().await.is_ok_and(|s| s.node.applied_index >= target) {
            return Ok(started.elapsed());
        }
        if Instant::now() > deadline {
            let url = client.nodes_known().swap_remove(0);
            bail!("{url} did not apply index {target} within an hour");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs one write on the leader (retried with its request id by the client, so at most once);
/// a statement's error is an error.
async fn write(client: &keel_api::Client, sql: String) -> anyhow::Result<()> {
    let answer = client.execute([sql]).await?;
    if let Some((_, e)) = answer.first_error() {
        bail!("{e}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("64MB").unwrap(), 64_000_000);
        assert_eq!(parse_size("1000").unwrap(), 1000);
        assert!(parse_size("1 parsec").is_err());
        assert!(parse_size("GiB").is_err());
    }
}
