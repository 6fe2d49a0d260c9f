//! `keel bench`: load generators against any Keel (or rqlite) cluster URL, printing figures.
//!
//! `keel bench insert --url http://127.0.0.1:4001 --clients 64 --duration 10s` runs `clients`
//! concurrent loops, each inserting one row per request, for `duration` after a warm-up, and
//! prints throughput, latency percentiles and errors. It is a measuring tool, not a test: it
//! asserts nothing except that the server answers.
//!
//! The client is kept lean so the figures measure the server: over `http://` each client owns
//! one keep-alive HTTP/1.1 connection (hyper's low-level client) and sends pre-built requests;
//! `https://` goes through reqwest (TLS is not what it measures).
//!
//! Everything around the measured loop goes through [`keel_api::Client`]: the setup (on the
//! leader it finds, retried with a request id), the wait for a replica to have the rows, the
//! lag samples, and all of `failover` ([`failover`]) but its writer. The measured loop does not:
//! the client parses every answer into typed results, builds each request (URL, JSON body,
//! request id) afresh and keeps its retry bookkeeping, which costs CPU per request on the
//! machine that also runs the servers, and would be counted as theirs; and a retry inside the
//! client would hide the errors the benchmark exists to count. `docs/benchmarks.md` measured
//! what a per-request client costs (35 → 23 µs per small request when reqwest gave way to the
//! raw connections).

mod failover;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::{SendRequest, handshake};
use hyper::header::{CONTENT_TYPE, HOST};
use hyper_util::rt::TokioIo;
use keel_api::{Level, Statement};
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
    /// Send at most this many requests per second in all (spread evenly over the clients),
    /// instead of each client sending its next request as soon as the last is answered. With
    /// `--lag`, measures replicas' lag at a chosen load rather than at saturation.
    #[arg(long, value_parser = parse_rate)]
    pub rate: Option<f64>,
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
        Workload::Failover => return failover::run(&args).await,
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
    let cluster = keel_api::Client::builder([&base])
        .http(crate::tls::client_builder(args.cacert.as_deref())?)
        .build()?;
    setup(&cluster, args.workload).await?;
    // Over plain HTTP each client owns one keep-alive connection of hyper's low-level client
    // (the figures should measure the server, not reqwest); HTTPS keeps reqwest.
    let direct = DirectTarget::parse(&args.url, &extra)?.map(Arc::new);
    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for c in 0..args.clients {
        let flags = Flags { stop: stop.clone(), measuring: measuring.clone() };
        let plan = ClientPlan::new(args.workload, c);
        let pacer = Pacer::new(args.rate.map(|rate| rate / args.clients as f64));
        tasks.push(match &direct {
            Some(target) => tokio::spawn(direct_client(target.clone(), plan, pacer, flags)),
            None => tokio::spawn(reqwest_client(
                client.clone(),
                execute.clone(),
                query.clone(),
                plan,
                pacer,
                flags,
            )),
        });
    }
    tokio::time::sleep(args.warmup).await;
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    let lag = if args.lag {
        Some(tokio::spawn(sample_lag(cluster.clone(), args.duration)))
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
        "rate": args.rate,
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
            "{:?} clients={}{} {}: {:.0} req/s, p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, {} ok, {} errors",
            args.workload,
            args.clients,
            args.rate.map(|r| format!(" rate={r}/s")).unwrap_or_default(),
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
                "  node {node} apply lag: p50 {:.2} ms / {:.0} entries, p99 {:.2} ms / {:.0} entries ({} samples)",
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

/// Pause after a failed connection before the next attempt, so a dead server is not spun on.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(50);
/// The substring of an answer's body that marks a failed statement.
const ERROR_MARK: &[u8] = b"\"error\"";

/// Flags every client loop watches.
struct Flags {
    /// Set when the clients should finish.
    stop: Arc<AtomicBool>,
    /// Set while requests count towards the figures (after the warm-up).
    measuring: Arc<AtomicBool>,
}

/// What one client sends, with its write bodies serialised once.
struct ClientPlan {
    /// The workload.
    workload: Workload,
    /// The xorshift state that picks the rows to read: repeatable runs, no shared state.
    seed: u64,
    /// Requests made so far (the `mixed` workload writes every tenth).
    n: u64,
    /// The body of one single-row INSERT.
    insert: Bytes,
    /// The body of one `bulk` request.
    bulk: Bytes,
}

/// One request of a [`ClientPlan`].
enum Step {
    /// POST this body to `/db/execute`.
    Write(Bytes),
    /// A point SELECT of this row id through `/db/query`.
    Read(i64),
}

impl ClientPlan {
    /// The plan of client number `c`.
    fn new(workload: Workload, c: usize) -> ClientPlan {
        let row = json!(["INSERT INTO bench(client, payload) VALUES(?, ?)", c, "x".repeat(64)]);
        let insert = serde_json::to_vec(&json!([row])).unwrap_or_default();
        let bulk = serde_json::to_vec(&vec![row; BULK_ROWS]).unwrap_or_default();
        ClientPlan {
            workload,
            seed: 0x9E37_79B9_7F4A_7C15_u64 ^ (c as u64 + 1),
            n: 0,
            insert: Bytes::from(insert),
            bulk: Bytes::from(bulk),
        }
    }

    /// The next request to send.
    fn next(&mut self) -> Step {
        self.n += 1;
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let read = Step::Read((self.seed % READ_ROWS as u64) as i64 + 1);
        match self.workload {
            Workload::Insert | Workload::Failover | Workload::Bootstrap => {
                Step::Write(self.insert.clone())
            }
            Workload::Bulk => Step::Write(self.bulk.clone()),
            Workload::Read => read,
            Workload::Mixed if self.n.is_multiple_of(10) => Step::Write(self.insert.clone()),
            Workload::Mixed => read,
        }
    }
}

/// The JSON body of a point SELECT of row `id` (the shape `serde_json` gives, built cheaply).
fn read_body(id: i64) -> Bytes {
    Bytes::from(format!("[[\"SELECT payload FROM bench_read WHERE id = ?\",{id}]]"))
}

/// The URL of the member at `http_addr` (`host:port`), in the scheme the cluster was given in.
fn leader_url(cluster: &keel_api::Client, http_addr: &str) -> String {
    let given = cluster.nodes_known().swap_remove(0);
    let scheme = given.split_once("://").map_or("http", |(scheme, _)| scheme);
    format!("{scheme}://{http_addr}")
}

/// Parses `--rate`: a positive number of requests per second.
fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(r),
        _ => Err(format!("'{s}' is not a positive number of requests per second")),
    }
}

/// Spaces one client's requests `interval` apart (none when unpaced). The k-th request is sent
/// no earlier than the start plus k intervals; a client that falls behind (the server answers
/// slower than the rate) sends at once and starts its schedule anew, without a burst to catch
/// up.
struct Pacer {
    /// Time between two requests; `None`: no pacing.
    interval: Option<Duration>,
    /// When the next request may go.
    next: Option<tokio::time::Instant>,
}

impl Pacer {
    /// A pacer for `rate` requests per second (`None`: as fast as answers come).
    fn new(rate: Option<f64>) -> Pacer {
        Pacer { interval: rate.map(|r| Duration::from_secs_f64(1.0 / r)), next: None }
    }

    /// Waits until the next request may be sent.
    async fn wait(&mut self) {
        let Some(interval) = self.interval else { return };
        let now = tokio::time::Instant::now();
        let at = match self.next {
            Some(at) if at > now => {
                tokio::time::sleep_until(at).await;
                at
            }
            _ => now,
        };
        self.next = Some(at + interval);
    }
}

/// Whether an answer succeeded: a 2xx status and no statement error in the body.
fn answer_ok(status: hyper::StatusCode, body: &[u8]) -> bool {
    status.is_success() && !body.windows(ERROR_MARK.len()).any(|w| w == ERROR_MARK)
}

/// One client over reqwest (used for `https://` URLs): returns its measured latencies and
/// errors.
async fn reqwest_client(
    client: reqwest::Client,
    execute: String,
    query: String,
    mut plan: ClientPlan,
    mut pacer: Pacer,
    flags: Flags,
) -> (Vec<Duration>, u64) {
    let mut latencies = Vec::new();
    let mut errors = 0u64;
    while !flags.stop.load(Ordering::Relaxed) {
        pacer.wait().await;
        let start = Instant::now();
        let (url, body) = match plan.next() {
            Step::Write(body) => (&execute, body),
            Step::Read(id) => (&query, read_body(id)),
        };
        let request = client.post(url).header(CONTENT_TYPE, "application/json").body(body);
        let ok = match request.send().await {
            Ok(r) => {
                let status = r.status();
                r.bytes().await.is_ok_and(|b| answer_ok(status, &b))
            }
            Err(_) => false,
        };
        if flags.measuring.load(Ordering::Relaxed) {
            if ok {
                latencies.push(start.elapsed());
            } else {
                errors += 1;
            }
        }
    }
    (latencies, errors)
}

/// A plain-HTTP node the clients reach over their own connections, with everything that does
/// not change per request built once.
struct DirectTarget {
    /// `host:port` to connect to.
    addr: String,
    /// `/db/execute` with its query string.
    execute: hyper::Uri,
    /// `/db/query` with its query string.
    query: hyper::Uri,
    /// `Host` and `Content-Type`.
    headers: hyper::HeaderMap,
}

impl DirectTarget {
    /// The target of an `http://` URL (with `extra`, the `&…` query string of every request);
    /// `None` for any other scheme (those go through reqwest).
    fn parse(url: &str, extra: &str) -> anyhow::Result<Option<DirectTarget>> {
        let uri: hyper::Uri = url.parse().with_context(|| format!("--url {url}"))?;
        if uri.scheme_str() != Some("http") {
            return Ok(None);
        }
        let authority = uri.authority().with_context(|| format!("--url {url}: no host"))?;
        let host = authority.host();
        let addr = format!("{host}:{}", authority.port_u16().unwrap_or(80));
        let host_header = match authority.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_string(),
        };
        let prefix = uri.path().trim_end_matches('/');
        let path = |endpoint: &str| -> anyhow::Result<hyper::Uri> {
            format!("{prefix}/db/{endpoint}?{extra}")
                .parse()
                .with_context(|| format!("--url {url} with --params {extra}"))
        };
        let mut headers = hyper::HeaderMap::new();
        headers.insert(HOST, host_header.parse().with_context(|| format!("--url {url}"))?);
        headers.insert(CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
        Ok(Some(DirectTarget { addr, execute: path("execute")?, query: path("query")?, headers }))
    }

    /// A new HTTP/1.1 connection (TCP_NODELAY), driven by a task of its own until dropped.
    async fn connect(&self) -> anyhow::Result<SendRequest<Full<Bytes>>> {
        let stream = tokio::net::TcpStream::connect(&self.addr)
            .await
            .with_context(|| format!("connecting to {}", self.addr))?;
        stream.set_nodelay(true)?;
        let (sender, connection) = handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "bench connection ended with an error");
            }
        });
        Ok(sender)
    }

    /// The request for `step`.
    fn request(&self, step: Step) -> hyper::Request<Full<Bytes>> {
        let (uri, body) = match step {
            Step::Write(body) => (&self.execute, body),
            Step::Read(id) => (&self.query, read_body(id)),
        };
        let mut request = hyper::Request::new(Full::new(body));
        *request.method_mut() = hyper::Method::POST;
        *request.uri_mut() = uri.clone();
        *request.headers_mut() = self.headers.clone();
        request
    }
}

/// Sends `request` on `sender` and reads the whole answer: whether it succeeded (see
/// [`answer_ok`]), or an error if the connection failed.
async fn exchange(
    sender: &mut SendRequest<Full<Bytes>>,
    request: hyper::Request<Full<Bytes>>,
) -> Result<bool, hyper::Error> {
    sender.ready().await?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    Ok(answer_ok(status, &body))
}

/// One client over one keep-alive connection of its own (reconnecting after a failure, which
/// counts as an error): returns its measured latencies and errors.
async fn direct_client(
    target: Arc<DirectTarget>,
    mut plan: ClientPlan,
    mut pacer: Pacer,
    flags: Flags,
) -> (Vec<Duration>, u64) {
    let mut latencies = Vec::new();
    let mut errors = 0u64;
    let mut connection: Option<SendRequest<Full<Bytes>>> = None;
    while !flags.stop.load(Ordering::Relaxed) {
        let sender = match connection.as_mut() {
            Some(sender) => sender,
            None => match target.connect().await {
                Ok(sender) => connection.insert(sender),
                Err(e) => {
                    tracing::debug!(error = %e, "bench connection failed");
                    if flags.measuring.load(Ordering::Relaxed) {
                        errors += 1;
                    }
                    tokio::time::sleep(RECONNECT_BACKOFF).await;
                    continue;
                }
            },
        };
        pacer.wait().await;
        let start = Instant::now();
        let result = exchange(sender, target.request(plan.next())).await;
        let measuring = flags.measuring.load(Ordering::Relaxed);
        match result {
            Ok(true) if measuring => latencies.push(start.elapsed()),
            Ok(_) if measuring => errors += 1,
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(error = %e, "bench connection failed");
                if measuring {
                    errors += 1;
                }
                connection = None;
                tokio::time::sleep(RECONNECT_BACKOFF).await;
            }
        }
    }
    (latencies, errors)
}

/// Creates the tables of `workload` (on the leader) and, for reads, waits until the node
/// given has the rows: reads at `level=none` on a replica must not race the setup.
async fn setup(cluster: &keel_api::Client, workload: Workload) -> anyhow::Result<()> {
    let bench =
        "CREATE TABLE IF NOT EXISTS bench (id INTEGER PRIMARY KEY, client INTEGER, payload TEXT)";
    let statements = match workload {
        Workload::Read | Workload::Mixed => vec![
            Statement::new(bench),
            Statement::new("CREATE TABLE IF NOT EXISTS bench_read (id INTEGER PRIMARY KEY, payload TEXT)"),
            Statement::new(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) INSERT OR IGNORE INTO bench_read SELECT i, printf('%064d', i) FROM n",
            )
            .bind(READ_ROWS),
        ],
        _ => vec![Statement::new(bench)],
    };
    let answer = cluster.execute(statements).await.context("setting up the table failed")?;
    if let Some((_, e)) = answer.first_error() {
        bail!("setting up the table failed: {e}");
    }
    if matches!(workload, Workload::Read | Workload::Mixed) {
        let lsn = answer.lsn.unwrap_or(0);
        let probe = cluster.read(["SELECT 1"]).level(Level::None).min_lsn(lsn);
        probe.timeout(Duration::from_secs(30)).send().await?;
    }
    Ok(())
}

/// Samples the leader's view of every replica's lag for `duration`; per node, percentiles.
async fn sample_lag(
    cluster: keel_api::Client,
    duration: Duration,
) -> std::collections::BTreeMap<String, serde_json::Value> {
    let mut samples: std::collections::BTreeMap<String, (Vec<f64>, Vec<f64>)> = Default::default();
    let end = Instant::now() + duration;
    // The node given at first; the leader once a sample names it.
    let mut sampled = cluster.clone();
    while Instant::now() < end {
        if let Ok(status) = sampled.status().await {
            match &status.replication {
                Some(replicas) => {
                    for (node, r) in replicas {
                        // Microseconds where the leader gives them (sub-millisecond lags).
                        let ms =
                            r.lag_us.map(|us| us as f64 / 1e3).or(r.lag_ms.map(|ms| ms as f64));
                        if let (Some(ms), Some(entries)) = (ms, r.lag_entries) {
                            let e = samples.entry(node.clone()).or_default();
                            e.0.push(ms);
                            e.1.push(entries as f64);
                        }
                    }
                }
                // Not the leader: sample the leader instead.
                None => {
                    let leader = status.node.leader_id;
                    let members = &status.cluster.members;
                    if let Some(m) = members.iter().find(|m| Some(m.id) == leader)
                        && let Ok(node) = cluster.on(&leader_url(&cluster, &m.node.http_addr))
                    {
                        sampled = node;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_target_from_url() {
        let t = DirectTarget::parse("http://127.0.0.1:4701/", "&level=none").unwrap().unwrap();
        assert_eq!(t.addr, "127.0.0.1:4701");
        assert_eq!(t.execute, "/db/execute?&level=none");
        assert_eq!(t.query, "/db/query?&level=none");
        assert_eq!(t.headers[HOST], "127.0.0.1:4701");
        let t = DirectTarget::parse("http://localhost/keel", "").unwrap().unwrap();
        assert_eq!(t.addr, "localhost:80");
        assert_eq!(t.headers[HOST], "localhost");
        assert_eq!(t.execute, "/keel/db/execute?");
        assert!(DirectTarget::parse("https://127.0.0.1:4701", "").unwrap().is_none());
    }

    #[test]
    fn rate_flag() {
        assert_eq!(parse_rate("2500"), Ok(2500.0));
        assert_eq!(parse_rate("0.5"), Ok(0.5));
        for bad in ["0", "-3", "x", "inf", "NaN"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn pacer_spaces_requests() {
        let mut pacer = Pacer::new(Some(100.0));
        let t0 = tokio::time::Instant::now();
        for _ in 0..5 {
            pacer.wait().await;
        }
        // The first goes at once, each later one 10 ms after the one before.
        assert_eq!(t0.elapsed(), Duration::from_millis(40));
        // Behind schedule: the next goes at once, and the schedule starts from there.
        tokio::time::advance(Duration::from_millis(100)).await;
        let t1 = tokio::time::Instant::now();
        pacer.wait().await;
        assert_eq!(t1.elapsed(), Duration::ZERO);
        pacer.wait().await;
        assert_eq!(t1.elapsed(), Duration::from_millis(10));
        let mut unpaced = Pacer::new(None);
        let t2 = tokio::time::Instant::now();
        unpaced.wait().await;
        unpaced.wait().await;
        assert_eq!(t2.elapsed(), Duration::ZERO);
    }

    #[test]
    fn answers() {
        let ok = hyper::StatusCode::OK;
        assert!(answer_ok(ok, br#"{"results":[{"last_insert_id":1}]}"#));
        assert!(!answer_ok(ok, br#"{"results":[{"error":"no such table: t"}]}"#));
        assert!(!answer_ok(hyper::StatusCode::SERVICE_UNAVAILABLE, b"{}"));
        assert_eq!(read_body(7), r#"[["SELECT payload FROM bench_read WHERE id = ?",7]]"#);
        let expected =
            serde_json::to_vec(&json!([["SELECT payload FROM bench_read WHERE id = ?", 7]]));
        assert_eq!(read_body(7), expected.unwrap());
    }
}
