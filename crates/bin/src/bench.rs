//! `keel bench`: load generators against any Keel (or rqlite) cluster URL, printing figures.
//!
//! `keel bench insert --url http://127.0.0.1:4001 --clients 64 --duration 10s` runs `clients`
//! concurrent loops, each inserting one row per request, for `duration` after a warm-up, and
//! prints throughput, latency percentiles and errors. It is a measuring tool, not a test: it
//! asserts nothing except that the server answers.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::json;

use crate::parse_duration;

/// Flags of `keel bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// The workload.
    #[arg(value_enum)]
    pub workload: Workload,
    /// HTTP URL of a cluster node.
    #[arg(long, default_value = "http://127.0.0.1:4001")]
    pub url: String,
    /// CA certificate (PEM) to trust for an `https://` URL, besides the system's.
    #[arg(long, env = "KEEL_CACERT", value_name = "FILE")]
    pub cacert: Option<std::path::PathBuf>,
    /// Concurrent clients.
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// How long to measure.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// How long to run before measuring.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Extra query string for every request (e.g. `durability=sync`).
    #[arg(long, default_value = "")]
    pub params: String,
    /// Also sample each replica's apply lag (from the leader's `/status`) every 20 ms while
    /// measuring, and print its p50/p99 in milliseconds and entries.
    #[arg(long)]
    pub lag: bool,
    /// Print the figures as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// `failover`: how many times to kill the leader.
    #[arg(long, default_value_t = 20)]
    pub trials: usize,
    /// `failover`: first HTTP port of the cluster it starts.
    #[arg(long, default_value_t = 4101)]
    pub base_port: u16,
    /// `failover`, `bootstrap`: extra flags for every `keel serve` (e.g.
    /// `--election-timeout=300ms`).
    #[arg(long, allow_hyphen_values = true)]
    pub serve_flag: Vec<String>,
    /// `bootstrap`: database size to build (e.g. `256MiB`, `1GiB`).
    #[arg(long, default_value = "256MiB", value_parser = crate::bench_bootstrap::parse_size)]
    pub size: u64,
    /// `bootstrap`: voters of the cluster it starts.
    #[arg(long, default_value_t = 3)]
    pub voters: u64,
    /// `bootstrap`: directory for the cluster's data (kept afterwards); default a temporary
    /// directory, removed afterwards.
    #[arg(long)]
    pub dir: Option<std::path::PathBuf>,
}

/// What the clients do.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Workload {
    /// One single-row INSERT per request.
    Insert,
    /// One primary-key point SELECT per request (`--params level=none` reads the node's copy).
    Read,
    /// 1,000 single-row INSERT statements per request (one transaction); reports rows/s too.
    Bulk,
    /// Nine point SELECTs for every single-row INSERT, each its own request (`--params`
    /// applies to both).
    Mixed,
    /// Starts its own 3-node cluster (ports from `--base-port`), kills -9 the leader under
    /// write load `--trials` times, and measures kill → first acknowledged write; then checks
    /// that no acknowledged write was lost. Ignores `--url`.
    Failover,
    /// Starts its own cluster, fills it to `--size`, joins a new node, and measures its time
    /// to ready (against `cp` of the database file), peak memory, and restart. Ignores `--url`.
    Bootstrap,
}

/// Rows in the table the `read` workload selects from.
const READ_ROWS: i64 = 10_000;
/// Rows per request of the `bulk` workload.
const BULK_ROWS: usize = 1_000;

/// Runs the benchmark and prints its figures.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.clients == 0 {
        bail!("--clients must be at least 1");
    }
    match args.workload {
        Workload::Failover => return failover(&args).await,
        Workload::Bootstrap => return crate::bench_bootstrap::run(&args).await,
        Workload::Insert | Workload::Read | Workload::Bulk | Workload::Mixed => {}
    }
    let client = crate::tls::client_builder(args.cacert.as_deref())?
        .pool_max_idle_per_host(args.clients)
        .build()?;
    let base = args.url.trim_end_matches('/').to_string();
    let extra = if args.params.is_empty() { String::new() } else { format!("&{}", args.params) };
    let execute = format!("{base}/db/execute?{extra}");
    let query = format!("{base}/db/query?{extra}");
    let setup_sql = match args.workload {
        Workload::Insert | Workload::Bulk | Workload::Failover | Workload::Bootstrap => json!([
            "CREATE TABLE IF NOT EXISTS bench (id INTEGER PRIMARY KEY, client INTEGER, payload TEXT)"
        ]),
        Workload::Read | Workload::Mixed => json!([
            "CREATE TABLE IF NOT EXISTS bench (id INTEGER PRIMARY KEY, client INTEGER, payload TEXT)",
            "CREATE TABLE IF NOT EXISTS bench_read (id INTEGER PRIMARY KEY, payload TEXT)",
            [
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) INSERT OR IGNORE INTO bench_read SELECT i, printf('%064d', i) FROM n",
                READ_ROWS
            ]
        ]),
    };
    let setup = client
        .post(format!("{base}/db/execute"))
        .json(&setup_sql)
        .send()
        .await
        .with_context(|| format!("connecting to {base}"))?;
    if !setup.status().is_success() {
        bail!(
            "setting up the table failed: {} {}",
            setup.status(),
            setup.text().await.unwrap_or_default()
        );
    }
    // Reads at level=none on a replica must not race the setup: wait until it has the rows.
    let lsn = setup.json::<serde_json::Value>().await?["lsn"].as_u64().unwrap_or(0);
    if matches!(args.workload, Workload::Read | Workload::Mixed) {
        let probe = format!("{base}/db/query?level=none&min_lsn={lsn}&timeout=30s&q=SELECT%201");
        client.get(&probe).send().await?.error_for_status()?;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for c in 0..args.clients {
        let (client, stop, measuring) = (client.clone(), stop.clone(), measuring.clone());
        let (workload, execute, query) = (args.workload, execute.clone(), query.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            let insert = serde_json::to_vec(&json!([[
                "INSERT INTO bench(client, payload) VALUES(?, ?)",
                c,
                "x".repeat(64)
            ]]))
            .expect("static JSON");
            let bulk = serde_json::to_vec(&vec![
                json!([
                    "INSERT INTO bench(client, payload) VALUES(?, ?)",
                    c,
                    "x".repeat(64)
                ]);
                BULK_ROWS
            ])
            .expect("static JSON");
            // A seeded xorshift picks the rows to read: repeatable runs, no shared state.
            let mut seed = 0x9E37_79B9_7F4A_7C15_u64 ^ (c as u64 + 1);
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let start = Instant::now();
                let read = |id: u64| {
                    let id = (id % READ_ROWS as u64) as i64 + 1;
                    client
                        .post(&query)
                        .json(&json!([["SELECT payload FROM bench_read WHERE id = ?", id]]))
                };
                let write = |body: &Vec<u8>| {
                    client
                        .post(&execute)
                        .header("content-type", "application/json")
                        .body(body.clone())
                };
                let request = match workload {
                    Workload::Insert | Workload::Failover | Workload::Bootstrap => write(&insert),
                    Workload::Bulk => write(&bulk),
                    Workload::Read => read(seed),
                    Workload::Mixed if n.is_multiple_of(10) => write(&insert),
                    Workload::Mixed => read(seed),
                };
                let ok = match request.send().await {
                    Ok(r) if r.status().is_success() => r
                        .bytes()
                        .await
                        .is_ok_and(|b| !String::from_utf8_lossy(&b).contains("\"error\"")),
                    _ => false,
                };
                if measuring.load(Ordering::Relaxed) {
                    if ok {
                        latencies.push(start.elapsed());
                    } else {
                        errors += 1;
                    }
                }
            }
            (latencies, errors)
        }));
    }
    tokio::time::sleep(args.warmup).await;
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    let lag = if args.lag {
        Some(tokio::spawn(sample_lag(client.clone(), base.clone(), args.duration)))
    } else {
        None
    };
    tokio::time::sleep(args.duration).await;
    measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await?;
        latencies.extend(l);
        errors += e;
    }
    latencies.sort();
    let pct = |p: f64| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        let i = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[i].as_secs_f64() * 1e3
    };
    let throughput = latencies.len() as f64 / elapsed.as_secs_f64();
    let lag = match lag {
        Some(task) => Some(task.await?),
        None => None,
    };
    let mut figures = json!({
        "workload": format!("{:?}", args.workload).to_lowercase(),
        "clients": args.clients,
        "params": args.params,
        "requests": latencies.len(),
        "errors": errors,
        "seconds": elapsed.as_secs_f64(),
        "throughput_per_s": throughput,
        "p50_ms": pct(0.50),
        "p90_ms": pct(0.90),
        "p99_ms": pct(0.99),
    });
    if matches!(args.workload, Workload::Bulk) {
        figures["rows_per_s"] = json!(throughput * BULK_ROWS as f64);
    }
    if let Some(lag) = &lag {
        figures["lag"] = json!(lag);
    }
    if args.json {
        println!("{figures}");
    } else {
        println!(
            "{:?} clients={} {}: {:.0} req/s, p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, {} ok, {} errors",
            args.workload,
            args.clients,
            args.params,
            throughput,
            pct(0.50),
            pct(0.90),
            pct(0.99),
            latencies.len(),
            errors
        );
        if let Some(rows) = figures["rows_per_s"].as_f64() {
            println!("  {rows:.0} rows/s ({BULK_ROWS} rows per request)");
        }
        for (node, l) in lag.iter().flatten() {
            println!(
                "  node {node} apply lag: p50 {:.0} ms / {:.0} entries, p99 {:.0} ms / {:.0} entries ({} samples)",
                l["p50_ms"].as_f64().unwrap_or(0.0),
                l["p50_entries"].as_f64().unwrap_or(0.0),
                l["p99_ms"].as_f64().unwrap_or(0.0),
                l["p99_entries"].as_f64().unwrap_or(0.0),
                l["samples"]
            );
        }
    }
    Ok(())
}

/// Samples the leader's view of every replica's lag for `duration`; per node, percentiles.
async fn sample_lag(
    client: reqwest::Client,
    base: String,
    duration: Duration,
) -> std::collections::BTreeMap<String, serde_json::Value> {
    let mut samples: std::collections::BTreeMap<String, (Vec<f64>, Vec<f64>)> = Default::default();
    let end = Instant::now() + duration;
    let mut leader_url = format!("{base}/status");
    while Instant::now() < end {
        if let Ok(r) = client.get(&leader_url).send().await
            && let Ok(status) = r.json::<serde_json::Value>().await
        {
            match status["replication"].as_object() {
                Some(replicas) => {
                    for (node, r) in replicas {
                        if let (Some(ms), Some(entries)) =
                            (r["lag_ms"].as_f64(), r["lag_entries"].as_f64())
                        {
                            let e = samples.entry(node.clone()).or_default();
                            e.0.push(ms);
                            e.1.push(entries);
                        }
                    }
                }
                // Not the leader: sample the leader instead.
                None => {
                    let leader = status["node"]["leader_id"].as_u64();
                    let members =
                        status["cluster"]["members"].as_array().cloned().unwrap_or_default();
                    if let Some(m) = members.iter().find(|m| m["id"].as_u64() == leader) {
                        leader_url = format!(
                            "http://{}/status",
                            m["node"]["http_addr"].as_str().unwrap_or_default()
                        );
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    samples
        .into_iter()
        .map(|(node, (mut ms, mut entries))| {
            ms.sort_by(f64::total_cmp);
            entries.sort_by(f64::total_cmp);
            let p = |v: &[f64], q: f64| {
                v.get(((v.len() as f64 * q).ceil() as usize).saturating_sub(1)).copied()
            };
            let l = json!({
                "samples": ms.len(),
                "p50_ms": p(&ms, 0.5), "p99_ms": p(&ms, 0.99),
                "p50_entries": p(&entries, 0.5), "p99_entries": p(&entries, 0.99),
            });
            (node, l)
        })
        .collect()
}

/// Percentile `q` (0..=1) of sorted durations, in milliseconds.
fn percentile_ms(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1e3
}

/// The leader's id as any live node sees it.
async fn find_leader(client: &reqwest::Client, nodes: &[crate::local::LocalNode]) -> Option<u64> {
    for n in nodes {
        if let Ok(r) = client
            .get(format!("http://{}/leader", n.http))
            .timeout(Duration::from_millis(500))
            .send()
            .await
            && r.status().is_success()
            && let Ok(v) = r.json::<serde_json::Value>().await
        {
            return v["id"].as_str().and_then(|id| id.parse().ok());
        }
    }
    None
}

/// See [`Workload::Failover`].
async fn failover(args: &BenchArgs) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("keel-bench-failover-{}", std::process::id()));
    let mut nodes =
        crate::local::start_cluster(&dir, 3, 0, args.base_port, &args.serve_flag, true).await?;
    let result = failover_trials(args, &mut nodes).await;
    crate::local::stop_all(&mut nodes).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn failover_trials(
    args: &BenchArgs,
    nodes: &mut [crate::local::LocalNode],
) -> anyhow::Result<()> {
    let client = reqwest::Client::builder().no_proxy().build()?;
    let addrs: Vec<String> = nodes.iter().map(|n| n.http.clone()).collect();
    let create = client
        .post(format!("http://{}/db/execute", addrs[0]))
        .json(&json!(["CREATE TABLE IF NOT EXISTS failover (v INTEGER PRIMARY KEY)"]))
        .send()
        .await?;
    if !create.status().is_success() {
        bail!("creating the table failed: {}", create.text().await.unwrap_or_default());
    }

    // One writer: inserts 1, 2, 3, … through whichever node answers, recording every
    // acknowledged value and when it was acknowledged.
    let acked: Arc<std::sync::Mutex<Vec<(i64, Instant)>>> = Default::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (client, acked, stop, addrs) =
            (client.clone(), acked.clone(), stop.clone(), addrs.clone());
        tokio::spawn(async move {
            let (mut next, mut node) = (1i64, 0usize);
            while !stop.load(Ordering::Relaxed) {
                let url = format!("http://{}/db/execute", addrs[node % addrs.len()]);
                let body = json!([["INSERT OR IGNORE INTO failover(v) VALUES(?)", next]]);
                match client.post(&url).json(&body).timeout(Duration::from_secs(2)).send().await {
                    Ok(r) if r.status().is_success() => {
                        acked.lock().expect("acked mutex").push((next, Instant::now()));
                        next += 1;
                    }
                    _ => {
                        node += 1;
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                }
            }
        })
    };

    let mut gaps = Vec::new();
    for trial in 1..=args.trials {
        // Wait for the writer to be making progress, so the gap measures the failover alone.
        let before = acked.lock().expect("acked mutex").len();
        let deadline = Instant::now() + Duration::from_secs(10);
        while acked.lock().expect("acked mutex").len() < before + 10 {
            if Instant::now() > deadline {
                bail!("trial {trial}: the cluster is not taking writes");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let Some(leader) = find_leader(&client, nodes).await else {
            bail!("trial {trial}: no leader")
        };
        let i = nodes.iter().position(|n| n.id == leader).context("leader is not one of ours")?;
        let killed_at = Instant::now();
        nodes[i].child.start_kill()?;
        nodes[i].child.wait().await?;
        let deadline = killed_at + Duration::from_secs(10);
        let gap = loop {
            if let Some((_, at)) = acked
                .lock()
                .expect("acked mutex")
                .iter()
                .rev()
                .take_while(|(_, at)| *at > killed_at)
                .last()
            {
                break at.duration_since(killed_at);
            }
            if Instant::now() > deadline {
                bail!("trial {trial}: no write acknowledged within 10 s of killing node {leader}");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        if !args.json {
            println!(
                "trial {trial}: killed leader node {leader}; first write acknowledged after {:.0} ms",
                gap.as_secs_f64() * 1e3
            );
        }
        gaps.push(gap);
        nodes[i].restart()?;
        let ready = format!("http://{}/readyz", nodes[i].http);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !client.get(&ready).send().await.is_ok_and(|r| r.status().is_success()) {
            if Instant::now() > deadline {
                bail!("trial {trial}: node {leader} not ready after restart");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // Graceful promotions: the write gap is the longest pause between acknowledged writes
    // around the transfer.
    let mut promote_gaps = Vec::new();
    for trial in 1..=args.trials {
        let Some(leader) = find_leader(&client, nodes).await else {
            bail!("promotion {trial}: no leader")
        };
        let target = nodes.iter().map(|n| n.id).find(|id| *id != leader).context("no follower")?;
        let began = Instant::now();
        let url = format!("http://{}/admin/promote?node={target}", nodes[0].http);
        let resp = client.post(&url).timeout(Duration::from_secs(30)).send().await?;
        if !resp.status().is_success() {
            bail!("promotion {trial}: {}", resp.text().await.unwrap_or_default());
        }
        let done = Instant::now();
        let after = done + Duration::from_millis(500);
        while Instant::now() < after
            || acked.lock().expect("acked mutex").last().is_none_or(|(_, at)| *at < done)
        {
            if Instant::now() > done + Duration::from_secs(10) {
                bail!("promotion {trial}: no write acknowledged after the transfer");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let times: Vec<Instant> = acked
            .lock()
            .expect("acked mutex")
            .iter()
            .map(|(_, at)| *at)
            .filter(|at| *at + Duration::from_millis(200) >= began && *at <= after)
            .collect();
        let gap = times.windows(2).map(|w| w[1].duration_since(w[0])).max().unwrap_or_default();
        if !args.json {
            println!(
                "promotion {trial}: node {leader} -> node {target} in {:.0} ms; longest write gap {:.0} ms",
                done.duration_since(began).as_secs_f64() * 1e3,
                gap.as_secs_f64() * 1e3
            );
        }
        promote_gaps.push(gap);
    }

    stop.store(true, Ordering::Relaxed);
    writer.await?;

    // Every acknowledged value must be on every node.
    let acked: Vec<i64> = acked.lock().expect("acked mutex").iter().map(|(v, _)| *v).collect();
    let last = acked.last().copied().unwrap_or(0);
    let mut lost = 0usize;
    for n in nodes.iter() {
        let probe = format!("http://{}/db/query?level=linearizable&timeout=20s", n.http);
        let resp: serde_json::Value = client
            .post(&probe)
            .json(&json!(["SELECT v FROM failover"]))
            .send()
            .await?
            .json()
            .await?;
        let present: std::collections::HashSet<i64> = resp["results"][0]["values"]
            .as_array()
            .map(|rows| rows.iter().filter_map(|r| r[0].as_i64()).collect())
            .unwrap_or_default();
        lost += acked.iter().filter(|v| !present.contains(v)).count();
    }
    gaps.sort();
    promote_gaps.sort();
    let figures = json!({
        "workload": "failover",
        "trials": gaps.len(),
        "promote_gap_p50_ms": percentile_ms(&promote_gaps, 0.5),
        "promote_gap_max_ms": promote_gaps.last().map_or(0.0, |g| g.as_secs_f64() * 1e3),
        "acknowledged_writes": acked.len(),
        "last_value": last,
        "lost_acknowledged_writes": lost,
        "p50_ms": percentile_ms(&gaps, 0.5),
        "max_ms": gaps.last().map_or(0.0, |g| g.as_secs_f64() * 1e3),
    });
    if args.json {
        println!("{figures}");
    } else {
        println!(
            "failover: {} trials, kill -9 leader -> first acknowledged write: p50 {:.0} ms, max {:.0} ms; {} writes acknowledged, {} lost",
            gaps.len(),
            percentile_ms(&gaps, 0.5),
            gaps.last().map_or(0.0, |g| g.as_secs_f64() * 1e3),
            acked.len(),
            lost
        );
        println!(
            "promote: {} transfers, longest write gap: p50 {:.0} ms, max {:.0} ms",
            promote_gaps.len(),
            percentile_ms(&promote_gaps, 0.5),
            promote_gaps.last().map_or(0.0, |g| g.as_secs_f64() * 1e3)
        );
    }
    if lost > 0 {
        bail!("{lost} acknowledged writes are missing");
    }
    Ok(())
}
