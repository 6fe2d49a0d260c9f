//! `keel check`: are the replicas identical? Every member, learners included, checksums every
//! table at the same log index, chunk by chunk, while writes go on; the results are compared.
//!
//! 1. Pin: read the leader's last log index `L`, pin `N = L + 2` on every member
//!    (`GET /db/checksum?lsn=N&timeout=0ms`: 503 means pinned and waiting). A member that has
//!    applied `N` already answers 409; the check then pins a later index (up to 5 tries).
//! 2. Reach `N`: strong reads on the leader append blank entries until the log has `N` (under
//!    a write load it is there at once).
//! 3. Compare: for each table (the union of every member's list at `N`), ask every member for
//!    the same chunk (`--chunk-rows` rows after the last key) and compare checksums. Members
//!    whose checksum differs from the majority's (ties: the leader's) differ in that chunk;
//!    the check then asks every member for the chunk's row digests and names up to five
//!    differing keys. `--max-rate` spaces chunks so the check does not crowd out clients.
//! 4. Report to every member (`POST /db/checksum/report`): a member found different logs an
//!    error and shows `divergence` in `/status` until it is rebuilt; metrics count checks and
//!    mismatches. The pins are released.
//!
//! Exit status: 0 when every replica matches, 1 on any difference, 2 when the check could not
//! run (a member down, the index not reached in time).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use keel_api::checksum::{CheckReport, Chunk};
use keel_api::{Client, Level};

/// Flags of `keel check`.
#[derive(Debug, Clone, clap::Args)]
pub struct CheckArgs {
    /// HTTP URL of any cluster member (comma-separated to try several).
    #[arg(
        long,
        env = "KEEL_CLUSTER",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:4001"
    )]
    pub cluster: Vec<String>,
    /// Check only these tables (comma-separated); default every table and the schema.
    #[arg(long, value_delimiter = ',')]
    pub tables: Vec<String>,
    /// Rows per chunk: what one member reads in one request, inside one read transaction.
    #[arg(long, default_value_t = 1000)]
    pub chunk_rows: u64,
    /// At most this many rows per second (per member; 0: no limit), so that a check of a
    /// large database leaves room for clients.
    #[arg(long, default_value_t = 50_000)]
    pub max_rate: u64,
    /// How long each member may take to reach the pinned index.
    #[arg(long, default_value = "30s", value_parser = crate::parse_duration)]
    pub wait: Duration,
    /// CA certificate (PEM) to trust for `https://` URLs, besides the system's.
    #[arg(long, env = "KEEL_CACERT", value_name = "FILE")]
    pub cacert: Option<std::path::PathBuf>,
}

/// A check that could not run: exit status 2.
#[derive(Debug)]
struct CouldNotRun(anyhow::Error);

/// Runs `keel check` and exits with its status (see the module docs).
pub async fn run(args: CheckArgs) -> anyhow::Result<()> {
    match check(&args).await {
        Ok(true) => Ok(()),
        Ok(false) => std::process::exit(1),
        Err(CouldNotRun(e)) => {
            eprintln!("error: the check could not run: {e:#}");
            std::process::exit(2);
        }
    }
}

/// One member: its Raft id, how it is shown (its name, or its number) and a client pinned to
/// it.
struct Member {
    id: u64,
    label: String,
    client: Client,
}

/// What the comparison found in one table.
#[derive(Default)]
struct TableResult {
    rows: u64,
    chunks: u64,
    /// Per differing chunk: the members that differ, the key range, sample keys.
    mismatches: Vec<Mismatch>,
}

struct Mismatch {
    members: Vec<u64>,
    /// The same members as they are shown.
    labels: Vec<String>,
    from: Option<String>,
    to: Option<String>,
    keys: Vec<String>,
}

/// Whether every replica matched; `Err` when the check could not run.
async fn check(args: &CheckArgs) -> Result<bool, CouldNotRun> {
    let fail = |e: anyhow::Error| CouldNotRun(e);
    let urls: Vec<&str> = args.cluster.iter().map(|u| u.trim()).filter(|u| !u.is_empty()).collect();
    let cluster = Client::builder(urls)
        .http(crate::tls::client_builder(args.cacert.as_deref()).map_err(fail)?)
        .timeout(args.wait + Duration::from_secs(10))
        .retry_for(Duration::ZERO)
        .build()
        .map_err(|e| fail(e.into()))?;
    let leader_url = cluster.find_leader().await.context("finding the leader").map_err(fail)?;
    let leader = cluster.on(&leader_url).map_err(|e| fail(e.into()))?;
    let mut members = Vec::new();
    let mut leader_id = None;
    for n in leader.nodes().await.context("listing the members").map_err(fail)? {
        let id = raft::NodeName::parse(&n.id)
            .map_err(|e| fail(anyhow!("member id {:?} is not a node id: {e}", n.id)))?
            .id();
        if n.leader {
            leader_id = Some(id);
        }
        let client = cluster.on(&n.api_addr).map_err(|e| fail(e.into()))?;
        members.push(Member { id, label: n.id, client });
    }
    let lsn = pin(&cluster, &leader, &members, args.wait).await.map_err(fail)?;
    eprintln!("checking {} members at log index {lsn}", members.len());
    let mut tables = BTreeSet::new();
    for m in &members {
        let t = m.client.checksum_tables(lsn, args.wait, false).await;
        let t = t
            .with_context(|| format!("node {}: reading its tables at {lsn}", m.label))
            .map_err(fail)?;
        tables.extend(t.tables);
    }
    if !args.tables.is_empty() {
        tables.retain(|t| args.tables.contains(t));
        for t in &args.tables {
            if !tables.contains(t) {
                return Err(fail(anyhow!("no member has a table {t:?}")));
            }
        }
    }
    let progress = indicatif::ProgressBar::new_spinner();
    progress.enable_steady_tick(Duration::from_millis(200));
    let started = Instant::now();
    let mut results = BTreeMap::new();
    let mut checked = 0u64;
    for table in &tables {
        let r = compare_table(args, &members, leader_id, lsn, table, |rows| {
            checked += rows;
            progress.set_message(format!("{table}: {checked} rows checked"));
        })
        .await
        .map_err(fail)?;
        results.insert(table.clone(), r);
    }
    progress.finish_and_clear();
    let ok = print(&results, started.elapsed());
    report(&members, lsn, &results).await;
    Ok(ok)
}

/// Pins a log index on every member and makes sure the log reaches it; returns it. `leader`
/// is pinned to the leader found at the start; `cluster` follows the leader.
async fn pin(
    cluster: &Client,
    leader: &Client,
    members: &[Member],
    wait: Duration,
) -> anyhow::Result<u64> {
    let mut margin = 2;
    for _ in 0..5 {
        let last =
            leader.status().await.context("reading the leader's log index")?.node.last_log_index;
        let lsn = last + margin;
        let mut passed = None;
        for m in members {
            match m.client.checksum_tables(lsn, Duration::ZERO, false).await {
                Ok(_) => {}
                Err(keel_api::Error::Refused { status: 503, .. }) => {} // pinned, waiting
                Err(keel_api::Error::Refused { status: 409, answer }) => {
                    passed = Some(answer.applied_index.unwrap_or(lsn));
                    break;
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("pinning {lsn} on node {}", m.label));
                }
            }
        }
        if passed.is_some() {
            margin *= 8; // writes are moving fast: aim further ahead
            continue;
        }
        // Blank entries until the log holds `lsn` (through whichever node leads: leadership
        // may move meanwhile).
        let deadline = Instant::now() + wait;
        loop {
            let read = cluster.read(["SELECT 1"]).level(Level::Strong).send().await;
            match read {
                Ok(answer) if answer.lsn.unwrap_or(0) >= lsn => return Ok(lsn),
                Ok(_) => {}
                Err(e) if Instant::now() > deadline => {
                    return Err(e).context(format!("a strong read to reach log index {lsn}"));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
            if Instant::now() > deadline {
                bail!("the log did not reach {lsn} within {wait:?}");
            }
        }
    }
    bail!(
        "every index pinned was applied somewhere before it was pinned; is the cluster under a very heavy write load?"
    )
}

/// Compares `table` across `members`, chunk by chunk.
async fn compare_table(
    args: &CheckArgs,
    members: &[Member],
    leader: Option<u64>,
    lsn: u64,
    table: &str,
    mut checked: impl FnMut(u64),
) -> anyhow::Result<TableResult> {
    let mut result = TableResult::default();
    let mut from: Option<String> = None;
    loop {
        let begun = Instant::now();
        let chunks = fetch(members, lsn, table, from.as_deref(), args.chunk_rows, false).await?;
        let reference = majority(&chunks, leader);
        let differing: Vec<u64> = chunks
            .iter()
            .filter(|(_, c)| c.checksum != reference.checksum)
            .map(|(id, _)| *id)
            .collect();
        if !differing.is_empty() {
            let keys =
                differing_keys(members, lsn, table, from.as_deref(), args.chunk_rows, leader)
                    .await?;
            let labels = differing
                .iter()
                .filter_map(|id| members.iter().find(|m| m.id == *id).map(|m| m.label.clone()))
                .collect();
            result.mismatches.push(Mismatch {
                members: differing,
                labels,
                from: from.clone(),
                to: reference.last_key.clone(),
                keys,
            });
        }
        result.rows += reference.rows;
        result.chunks += 1;
        checked(reference.rows);
        if chunks.values().all(|c| c.done) || reference.last_key.is_none() {
            return Ok(result);
        }
        from = reference.last_key.clone();
        if args.max_rate > 0 {
            let due = Duration::from_secs_f64(reference.rows as f64 / args.max_rate as f64);
            tokio::time::sleep(due.saturating_sub(begun.elapsed())).await;
        }
    }
}

/// The same chunk from every member, concurrently.
async fn fetch(
    members: &[Member],
    lsn: u64,
    table: &str,
    from: Option<&str>,
    limit: u64,
    detail: bool,
) -> anyhow::Result<BTreeMap<u64, Chunk>> {
    let calls = members.iter().map(|m| async move {
        let chunk = m.client.checksum_chunk(lsn, table, from, limit, detail).await;
        (m.id, chunk)
    });
    let mut out = BTreeMap::new();
    for (id, chunk) in futures::future::join_all(calls).await {
        let chunk = match chunk {
            Ok(c) => c,
            // A member without the table: an empty table there, which differs unless empty here.
            Err(keel_api::Error::Refused { status: 400, answer })
                if answer.error.contains("no table") =>
            {
                Chunk {
                    lsn,
                    table: table.to_string(),
                    rows: 0,
                    checksum: "(no such table)".into(),
                    last_key: None,
                    done: true,
                    detail: Some(Vec::new()),
                }
            }
            Err(e) => {
                let label = members.iter().find(|m| m.id == id).map(|m| m.label.as_str());
                return Err(e).with_context(|| {
                    format!("node {}: checksum of {table}", label.unwrap_or_default())
                });
            }
        };
        out.insert(id, chunk);
    }
    Ok(out)
}

/// The chunk most members agree on; on a tie, the leader's.
fn majority(chunks: &BTreeMap<u64, Chunk>, leader: Option<u64>) -> Chunk {
    let mut votes: BTreeMap<&str, usize> = BTreeMap::new();
    for c in chunks.values() {
        *votes.entry(c.checksum.as_str()).or_default() += 1;
    }
    let best = votes.values().copied().max().unwrap_or(0);
    let leading = leader.and_then(|l| chunks.get(&l));
    let pick = match leading {
        Some(c) if votes[c.checksum.as_str()] == best => c,
        _ => chunks.values().find(|c| votes[c.checksum.as_str()] == best).expect("a chunk"),
    };
    pick.clone()
}

/// Up to five keys whose rows differ between members within one chunk.
async fn differing_keys(
    members: &[Member],
    lsn: u64,
    table: &str,
    from: Option<&str>,
    limit: u64,
    leader: Option<u64>,
) -> anyhow::Result<Vec<String>> {
    let chunks = fetch(members, lsn, table, from, limit, true).await?;
    let reference = majority(&chunks, leader);
    let rows = |c: &Chunk| -> BTreeMap<String, String> {
        c.detail.iter().flatten().map(|r| (r.key.clone(), r.hash.clone())).collect()
    };
    let want = rows(&reference);
    let mut keys = BTreeSet::new();
    for c in chunks.values() {
        let have = rows(c);
        for k in want.keys().chain(have.keys()) {
            if want.get(k) != have.get(k) {
                keys.insert(k.clone());
            }
        }
    }
    Ok(keys.into_iter().take(5).map(|k| sql::checksum::describe_key(&k)).collect())
}

/// Prints each table's result; returns whether everything matched.
fn print(results: &BTreeMap<String, TableResult>, took: Duration) -> bool {
    let mut ok = true;
    let mut rows = 0;
    for (table, r) in results {
        rows += r.rows;
        if r.mismatches.is_empty() {
            println!("{table}: ok ({} rows, {} chunks)", r.rows, r.chunks);
            continue;
        }
        ok = false;
        println!("{table}: DIFFERENT in {} of {} chunks", r.mismatches.len(), r.chunks);
        for m in &r.mismatches {
            let bound = |k: &Option<String>| k.as_deref().map(sql::checksum::describe_key);
            println!(
                "  node(s) [{}]: keys after {} through {}; differing keys: {}",
                m.labels.join(", "),
                bound(&m.from).unwrap_or_else(|| "the start".into()),
                bound(&m.to).unwrap_or_else(|| "the end".into()),
                if m.keys.is_empty() {
                    "(rows missing or extra)".to_string()
                } else {
                    m.keys.join(", ")
                }
            );
        }
    }
    let verdict = if ok { "every replica matches" } else { "REPLICAS DIFFER" };
    println!("{verdict}: {} tables, {rows} rows in {:.1}s", results.len(), took.as_secs_f64());
    ok
}

/// Tells every member what was found, and releases the pins. Failures are printed, not fatal:
/// the verdict stands.
async fn report(members: &[Member], lsn: u64, results: &BTreeMap<String, TableResult>) {
    let mismatches = results.values().map(|r| r.mismatches.len() as u64).sum();
    for m in members {
        let diverged_tables = results
            .iter()
            .filter(|(_, r)| r.mismatches.iter().any(|x| x.members.contains(&m.id)))
            .map(|(t, _)| t.clone())
            .collect();
        let report = CheckReport { lsn, mismatches, diverged_tables };
        if let Err(e) = m.client.check_report(&report).await {
            eprintln!("warning: could not report to node {}: {e}", m.label);
        }
        let _ = m.client.checksum_tables(lsn, Duration::ZERO, true).await;
    }
}
